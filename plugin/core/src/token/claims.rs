//! Claims validation per issuer, and consent extraction into the typed [`Consent`] the
//! policy receives. Runs only on tokens whose signature has verified.

use serde_json::{Map, Value};

use super::config::{ConsentFormat, Issuer};
use super::error::TokenError;
use super::jws;

/// Claims every consent token must have, whatever the configuration says.
pub const ALWAYS_REQUIRED: [&str; 5] = ["iss", "exp", "aud", "sub", "jti"];

/// The JOSE `typ` of a JWT access token (RFC 9068 §2.1), `application/` prefix optional.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Claims RFC 9068 §2.2 makes mandatory in a JWT access token (`typ` `at+jwt`), required
/// of such a token unless its issuer sets `require_rfc9068_claims` to false.
pub const RFC9068_REQUIRED: [&str; 7] = ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"];

/// Longest status-list URI accepted from a token.
const MAX_STATUS_URI_BYTES: usize = 2048;

/// A verified consent: what the token's issuer says the subject consented to. Handed to
/// the policy; carries personal data (`subject`, `delegations`, `claims`), so it is never
/// logged whole.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Consent {
    /// `iss`: the issuer that signed the token.
    pub issuer: String,
    /// `sub`: the data subject.
    pub subject: String,
    /// `jti`: the consent id (deny-lists and audit records use it).
    pub consent_id: String,
    /// The party the consent is granted to: the first present of the configured grantee
    /// claims (`client_id`, then `azp`, by default).
    pub grantee: Option<String>,
    /// Purposes consented to (union over all authorization details).
    pub purposes: Vec<String>,
    /// Data domains consented to (`datatypes` in authorization details; union).
    pub domains: Vec<String>,
    /// Actions consented to (union over all authorization details).
    pub actions: Vec<String>,
    /// The RFC 9396 entries as written, for policies that need per-entry precision (the
    /// unions above lose which action goes with which data type). Empty in claims format.
    pub authorization_details: Vec<AuthorizationDetail>,
    /// Data subjects the token's subject may act for (guardian access), from the
    /// configured delegation claim.
    pub delegations: Vec<String>,
    /// `iat`, if present.
    pub issued_at: Option<u64>,
    /// `nbf`, if present.
    pub not_before: Option<u64>,
    /// `exp`.
    pub expires_at: u64,
    /// `status.status_list`: where the token's revocation status is published.
    pub status: Option<StatusRef>,
    /// `cnf.x5t#S256`: the SHA-256 of the client certificate the token is bound to.
    pub cnf_x5t_s256: Option<[u8; 32]>,
    /// Every claim, for policy conditions.
    pub claims: Value,
}

/// A reference into a Token Status List (`status.status_list` of the token).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatusRef {
    /// The status list's URI (under the issuer's configured `uri_prefix`).
    pub uri: String,
    /// The token's index in the list.
    pub idx: u64,
}

impl StatusRef {
    /// `(:authority, :path)` of the fetch for this list (the URI's host, and the rest).
    pub fn authority_and_path(&self) -> Option<(&str, &str)> {
        let rest = self.uri.strip_prefix("https://")?;
        let slash = rest.find('/')?;
        Some((rest.get(..slash)?, rest.get(slash..)?))
    }
}

/// One RFC 9396 authorization details entry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuthorizationDetail {
    /// `type`, one of the configured types.
    pub detail_type: String,
    /// `actions`.
    pub actions: Vec<String>,
    /// `datatypes`: the data domains.
    pub datatypes: Vec<String>,
    /// `locations`.
    pub locations: Vec<String>,
    /// `identifier`.
    pub identifier: Option<String>,
    /// The configured purpose field.
    pub purposes: Vec<String>,
}

/// Validates the claims of a token from `issuer` at `now` and extracts its consent.
/// `access_token` says the header's `typ` is `at+jwt` (RFC 9068).
pub(crate) fn validate(
    claims: Map<String, Value>,
    issuer: &Issuer,
    now: u64,
    access_token: bool,
) -> Result<Consent, TokenError> {
    let skew = issuer.clock_skew_seconds;

    // Presence first: a token lacking a required claim is refused as such.
    let profile: &[&str] = if access_token && issuer.require_rfc9068_claims {
        &RFC9068_REQUIRED
    } else {
        &ALWAYS_REQUIRED
    };
    for name in profile
        .iter()
        .copied()
        .chain(issuer.required_claims.iter().map(String::as_str))
    {
        if claims.get(name).is_none_or(Value::is_null) {
            return Err(TokenError::MissingClaim);
        }
    }
    if access_token && issuer.require_rfc9068_claims {
        // RFC 8693 §4.3: the OAuth client the token was issued to, a string.
        required_string(&claims, "client_id")?;
    }

    // Time.
    let exp = numeric_date(claims.get("exp"), Round::Down)?.ok_or(TokenError::MissingClaim)?;
    let nbf = numeric_date(claims.get("nbf"), Round::Up)?;
    let iat = numeric_date(claims.get("iat"), Round::Up)?;
    if now >= exp.saturating_add(skew) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = nbf
        && now.saturating_add(skew) < nbf
    {
        return Err(TokenError::NotYetValid);
    }
    if let Some(iat) = iat
        && iat > now.saturating_add(skew)
    {
        return Err(TokenError::IssuedInFuture);
    }
    let start = match (iat, nbf) {
        (Some(i), Some(n)) => i.min(n),
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => return Err(TokenError::MissingClaim),
    };
    if exp < start {
        return Err(TokenError::InvalidClaim);
    }
    if exp - start > issuer.max_lifetime_seconds {
        return Err(TokenError::LifetimeTooLong);
    }

    // Audience.
    let audiences = strings(claims.get("aud"))?;
    if !audiences
        .iter()
        .any(|a| issuer.audiences.iter().any(|c| c == a))
    {
        return Err(TokenError::AudienceMismatch);
    }

    let subject = required_string(&claims, "sub")?;
    let consent_id = required_string(&claims, "jti")?;
    let iss = required_string(&claims, "iss")?;

    let mapping = &issuer.consent;
    let mut grantee = None;
    for name in &mapping.grantee_claims {
        match claims.get(name) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => {
                grantee = Some(s.clone());
                break;
            }
            Some(_) => return Err(TokenError::InvalidClaim),
        }
    }

    let (purposes, domains, actions, authorization_details) = match &mapping.format {
        ConsentFormat::Claims {
            purposes_claim,
            domains_claim,
            actions_claim,
        } => (
            strings(claims.get(purposes_claim.as_str()))?,
            strings(claims.get(domains_claim.as_str()))?,
            strings(claims.get(actions_claim.as_str()))?,
            Vec::new(),
        ),
        ConsentFormat::AuthorizationDetails {
            types,
            purpose_field,
        } => {
            let details =
                authorization_details(claims.get("authorization_details"), types, purpose_field)?;
            let mut purposes = Vec::new();
            let mut domains = Vec::new();
            let mut actions = Vec::new();
            for d in &details {
                union(&mut purposes, &d.purposes);
                union(&mut domains, &d.datatypes);
                union(&mut actions, &d.actions);
            }
            (purposes, domains, actions, details)
        }
    };

    let delegations = delegations(claims.get(mapping.delegation_claim.as_str()))?;
    let status = status(claims.get("status"), issuer)?;
    let cnf_x5t_s256 = confirmation(claims.get("cnf"))?;

    Ok(Consent {
        issuer: iss,
        subject,
        consent_id,
        grantee,
        purposes,
        domains,
        actions,
        authorization_details,
        delegations,
        issued_at: iat,
        not_before: nbf,
        expires_at: exp,
        status,
        cnf_x5t_s256,
        claims: Value::Object(claims),
    })
}

#[derive(Clone, Copy)]
enum Round {
    Down,
    Up,
}

/// A NumericDate (RFC 7519 §2): a non-negative number of seconds. Fractions are rounded
/// toward the stricter side (`exp` down, `nbf` and `iat` up).
fn numeric_date(v: Option<&Value>, round: Round) -> Result<Option<u64>, TokenError> {
    let n = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n,
        Some(_) => return Err(TokenError::InvalidClaim),
    };
    if let Some(u) = n.as_u64() {
        return Ok(Some(u));
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && (0.0..9.0e15).contains(&f) => {
            let r = match round {
                Round::Down => f.floor(),
                Round::Up => f.ceil(),
            };
            // In range and integral, so the conversion is exact.
            Ok(Some(r as u64))
        }
        _ => Err(TokenError::InvalidClaim),
    }
}

fn required_string(claims: &Map<String, Value>, name: &str) -> Result<String, TokenError> {
    match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None | Some(Value::Null) => Err(TokenError::MissingClaim),
        Some(_) => Err(TokenError::InvalidClaim),
    }
}

/// A claim that is a string or an array of strings; absent means empty.
fn strings(v: Option<&Value>) -> Result<Vec<String>, TokenError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                _ => Err(TokenError::InvalidClaim),
            })
            .collect(),
        Some(_) => Err(TokenError::InvalidClaim),
    }
}

fn union(into: &mut Vec<String>, from: &[String]) {
    for s in from {
        if !into.contains(s) {
            into.push(s.clone());
        }
    }
}

fn authorization_details(
    v: Option<&Value>,
    types: &[String],
    purpose_field: &str,
) -> Result<Vec<AuthorizationDetail>, TokenError> {
    let entries = match v {
        None | Some(Value::Null) => return Err(TokenError::MissingClaim),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(TokenError::InvalidClaim),
    };
    entries
        .iter()
        .map(|entry| {
            let Value::Object(obj) = entry else {
                return Err(TokenError::InvalidClaim);
            };
            let detail_type = match obj.get("type") {
                Some(Value::String(t)) => t.clone(),
                _ => return Err(TokenError::InvalidClaim),
            };
            if !types.contains(&detail_type) {
                return Err(TokenError::UnknownAuthorizationDetailsType);
            }
            let identifier = match obj.get("identifier") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(TokenError::InvalidClaim),
            };
            Ok(AuthorizationDetail {
                detail_type,
                actions: strings(obj.get("actions"))?,
                datatypes: strings(obj.get("datatypes"))?,
                locations: strings(obj.get("locations"))?,
                identifier,
                purposes: strings(obj.get(purpose_field))?,
            })
        })
        .collect()
}

/// Delegations: a string, an array of strings, an object with `sub`, or an array of them.
fn delegations(v: Option<&Value>) -> Result<Vec<String>, TokenError> {
    fn one(v: &Value) -> Result<String, TokenError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Object(o) => match o.get("sub") {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(TokenError::InvalidClaim),
            },
            _ => Err(TokenError::InvalidClaim),
        }
    }
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(one).collect(),
        Some(other) => Ok(vec![one(other)?]),
    }
}

/// `status.status_list` `{idx, uri}`, with the URI confined to the configured prefix.
/// Other status mechanisms under `status` are ignored.
fn status(v: Option<&Value>, issuer: &Issuer) -> Result<Option<StatusRef>, TokenError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(TokenError::InvalidClaim),
    };
    let list = match obj.get("status_list") {
        None => return Ok(None),
        Some(Value::Object(l)) => l,
        Some(_) => return Err(TokenError::InvalidClaim),
    };
    let idx = list
        .get("idx")
        .and_then(Value::as_u64)
        .ok_or(TokenError::InvalidClaim)?;
    let uri = match list.get("uri") {
        Some(Value::String(u)) => u.clone(),
        _ => return Err(TokenError::InvalidClaim),
    };
    let Some(source) = &issuer.revocation.status_list else {
        return Err(TokenError::StatusUriNotAllowed);
    };
    if !status_uri_allowed(&uri, &source.uri_prefix) {
        return Err(TokenError::StatusUriNotAllowed);
    }
    Ok(Some(StatusRef { uri, idx }))
}

/// The URI is under the prefix and cannot leave it: no dot segments, query, fragment,
/// backslash, user info, percent-encoding or control characters.
fn status_uri_allowed(uri: &str, prefix: &str) -> bool {
    uri.len() <= MAX_STATUS_URI_BYTES
        && uri.len() > prefix.len()
        && uri.starts_with(prefix)
        && uri
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/:".contains(&b))
        && !uri.split('/').any(|seg| seg == "." || seg == "..")
}

/// `cnf`: only `x5t#S256` (RFC 8705) is understood; any other confirmation method makes
/// the token unusable here, since its binding could not be checked.
fn confirmation(v: Option<&Value>) -> Result<Option<[u8; 32]>, TokenError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(TokenError::InvalidClaim),
    };
    if obj.keys().any(|k| k != "x5t#S256") {
        return Err(TokenError::UnsupportedConfirmation);
    }
    match obj.get("x5t#S256") {
        Some(Value::String(s)) => {
            let bytes = jws::decode(s.as_bytes()).map_err(|_| TokenError::InvalidClaim)?;
            let digest: [u8; 32] = bytes.try_into().map_err(|_| TokenError::InvalidClaim)?;
            Ok(Some(digest))
        }
        _ => Err(TokenError::InvalidClaim),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_dates_round_toward_the_stricter_side() {
        let v = serde_json::json!(100.5);
        assert_eq!(numeric_date(Some(&v), Round::Down), Ok(Some(100)));
        assert_eq!(numeric_date(Some(&v), Round::Up), Ok(Some(101)));
        for bad in [
            serde_json::json!(-1),
            serde_json::json!("100"),
            serde_json::json!(1e300),
        ] {
            assert_eq!(
                numeric_date(Some(&bad), Round::Down),
                Err(TokenError::InvalidClaim)
            );
        }
    }

    #[test]
    fn status_uris_stay_under_their_prefix() {
        let p = "https://consent.example.com/statuslists/";
        assert!(status_uri_allowed(
            "https://consent.example.com/statuslists/1",
            p
        ));
        for bad in [
            "https://consent.example.com/statuslists/",
            "https://consent.example.com/other/1",
            "https://consent.example.com/statuslists/../admin",
            "https://consent.example.com/statuslists/1?x=1",
            "https://consent.example.com/statuslists/1#f",
            "https://consent.example.com/statuslists/%2e%2e/admin",
            "https://evil.example/statuslists/1",
        ] {
            assert!(!status_uri_allowed(bad, p), "{bad}");
        }
    }

    #[test]
    fn authority_and_path_split_the_uri() {
        let r = StatusRef {
            uri: "https://consent.example.com/statuslists/1".into(),
            idx: 0,
        };
        assert_eq!(
            r.authority_and_path(),
            Some(("consent.example.com", "/statuslists/1"))
        );
    }
}
