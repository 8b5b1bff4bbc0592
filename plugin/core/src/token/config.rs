//! Issuer configuration: the raw serde form of one entry of the `issuers` array (unknown
//! members refused), and [`compile_issuers`], which turns the array into validated
//! [`Issuer`]s or lists every error with its JSON location.
//!
//! A complete entry, every member shown (the defaults are noted on each field of [`Issuer`]
//! and of the types it holds):
//!
//! ```json
//! {
//!   "issuer": "https://consent.example.com",
//!   "algorithms": ["ES256"],
//!   "audiences": ["https://api.hospital.example"],
//!   "typ": "at+jwt",
//!   "require_rfc9068_claims": true,
//!   "clock_skew_seconds": 60,
//!   "max_lifetime_seconds": 3600,
//!   "required_claims": ["iat", "client_id"],
//!   "keys": {
//!     "inline": {"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "x": "…", "y": "…"}]},
//!     "remote": {"cluster": "consent_service", "authority": "consent.example.com",
//!                "path": "/.well-known/jwks.json", "refresh_seconds": 300,
//!                "timeout_ms": 2000, "min_refetch_interval_seconds": 30}
//!   },
//!   "consent": {"format": "claims", "grantee_claims": ["client_id", "azp"],
//!               "purposes_claim": "purpose", "domains_claim": "data_domains",
//!               "actions_claim": "actions", "delegation_claim": "act"},
//!   "revocation": {
//!     "deny_list": ["consent-123"],
//!     "status_list": {"cluster": "consent_service",
//!                     "uri_prefix": "https://consent.example.com/statuslists/",
//!                     "max_staleness_seconds": 300, "timeout_ms": 2000, "max_bytes": 1048576,
//!                     "require_status_claim": true}
//!   },
//!   "binding": {"require_certificate_binding": false, "require_spiffe_grantee": false}
//! }
//! ```
//!
//! `consent` may instead carry RFC 9396 authorization details:
//! `{"format": "authorization_details", "types": ["health_record_access"], "purpose_field": "purpose"}`.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::Value;

use super::alg::Algorithm;
use super::keys::KeySet;

/// Default clock skew, in seconds.
pub const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 60;
/// Largest clock skew accepted in configuration, in seconds.
pub const MAX_CLOCK_SKEW_SECONDS: u64 = 600;
/// Default maximum token lifetime (`exp - iat`), in seconds: one day.
pub const DEFAULT_MAX_LIFETIME_SECONDS: u64 = 86_400;
/// Default status-list staleness allowance, in seconds.
pub const DEFAULT_MAX_STALENESS_SECONDS: u64 = 300;
/// Default bound on a status-list token and on its decompressed list, in bytes (1 MiB).
pub const DEFAULT_STATUS_LIST_MAX_BYTES: usize = 1024 * 1024;
/// Largest `max_bytes` accepted for a status list (16 MiB).
pub const MAX_STATUS_LIST_MAX_BYTES: usize = 16 * 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Compiled form.

/// One trusted issuer of consent tokens, validated.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Issuer {
    /// The exact `iss` value that selects this issuer. Required.
    /// Example: `"https://consent.example.com"`.
    pub issuer: String,
    /// The algorithms its tokens may use; a token's `alg` must be one of them (and fit the
    /// key). Required, non-empty, from `ES256`, `RS256`, `PS256`, `EdDSA`; `none` and HMAC
    /// are refused. Example: `["ES256"]`.
    pub algorithms: Vec<Algorithm>,
    /// Accepted audiences; a token's `aud` (string or array) must contain one. Required,
    /// non-empty. Example: `["https://api.hospital.example"]`.
    pub audiences: Vec<String>,
    /// Expected JOSE header `typ`, compared case-insensitively with the `application/`
    /// prefix optional. Default: none (any `typ`, or none, except `statuslist+jwt`, which
    /// is never a consent token). Example: `"at+jwt"`.
    pub typ: Option<String>,
    /// For a token whose `typ` is `at+jwt` (RFC 9068, a JWT access token), require every
    /// claim §2.2 makes mandatory ([`super::claims::RFC9068_REQUIRED`]: `client_id` and
    /// `iat` besides those always required). `false` holds such a token only to the
    /// claims every token needs. Default true.
    pub require_rfc9068_claims: bool,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds. Default 60, at most 600.
    pub clock_skew_seconds: u64,
    /// Longest accepted lifetime `exp - iat` (or `exp - nbf` without `iat`), in seconds; a
    /// token with neither `iat` nor `nbf` is refused. Default 86400. Example: `3600`.
    pub max_lifetime_seconds: u64,
    /// Claims that must be present (not null) besides those always required (`iss`, `exp`,
    /// `aud`, `sub`, `jti`). Default: none. Example: `["iat", "client_id"]`.
    pub required_claims: Vec<String>,
    /// Keys written in the configuration (`keys.inline`, a JWKS). Default: none.
    pub inline_keys: KeySet,
    /// Where to fetch the issuer's JWKS through the proxy (`keys.remote`). Default: none.
    /// At least one of `inline` and `remote` is required.
    pub remote_keys: Option<RemoteJwks>,
    /// How consent is carried in the token (`consent`). Default: plain claims with the
    /// default names of [`ConsentFormat::Claims`].
    pub consent: ConsentMapping,
    /// Revocation sources (`revocation`). Default: none.
    pub revocation: Revocation,
    /// Sender-binding requirements (`binding`). Default: nothing required.
    pub binding: Binding,
}

/// `keys.remote`: a JWKS fetched through an upstream cluster of the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteJwks {
    /// The proxy's cluster to call. Required. Example: `"consent_service"`.
    pub cluster: String,
    /// `:authority` of the request. Default: the host of `issuer` when it is an https URL
    /// (required otherwise). Example: `"consent.example.com"`.
    pub authority: String,
    /// `:path` of the request, starting with `/`. Required.
    /// Example: `"/.well-known/jwks.json"`.
    pub path: String,
    /// Refresh period, in seconds. Default 300, at least 10.
    pub refresh_seconds: u64,
    /// Timeout of one fetch, in milliseconds. Default 2000, 1 to 60000.
    pub timeout_ms: u64,
    /// Least time between two fetches triggered by unknown `kid`s, in seconds. Default 30,
    /// at least 1.
    pub min_refetch_interval_seconds: u64,
}

/// `consent`: where the consent's parts are in the token.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsentMapping {
    /// The format and its claim names.
    pub format: ConsentFormat,
    /// Claims that name the grantee (the party the consent is granted to), first present
    /// wins. Default `["client_id", "azp"]`.
    pub grantee_claims: Vec<String>,
    /// Claim naming the data subjects the token's subject may act for (guardian access):
    /// a string, an array of strings, an object with `sub` (RFC 8693 `act` form) or an
    /// array of such objects. Default `"act"`.
    pub delegation_claim: String,
}

/// The two ways a consent token carries purposes, data domains and actions.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsentFormat {
    /// `"format": "claims"`: top-level claims, each a string or an array of strings.
    Claims {
        /// Default `"purpose"`.
        purposes_claim: String,
        /// Default `"data_domains"`.
        domains_claim: String,
        /// Default `"actions"`.
        actions_claim: String,
    },
    /// `"format": "authorization_details"`: RFC 9396 `authorization_details`, an array of
    /// objects with `type`, `actions`, `datatypes` (the data domains), `locations`,
    /// `identifier` and the purpose field. An entry of a type not listed is refused.
    AuthorizationDetails {
        /// Accepted `type` values. Required, non-empty. Example: `["health_record_access"]`.
        types: Vec<String>,
        /// Member of each entry that holds its purposes. Default `"purpose"`.
        purpose_field: String,
    },
}

impl Default for ConsentMapping {
    fn default() -> Self {
        Self {
            format: ConsentFormat::Claims {
                purposes_claim: "purpose".into(),
                domains_claim: "data_domains".into(),
                actions_claim: "actions".into(),
            },
            grantee_claims: default_grantee_claims(),
            delegation_claim: default_delegation_claim(),
        }
    }
}

/// `revocation`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Revocation {
    /// Revoked consent ids (`jti` values) of this issuer. Default: none.
    /// Example: `["consent-123"]`.
    pub deny_list: BTreeSet<String>,
    /// Token Status List source. Default: none, and then a token that references a status
    /// list is refused (its status cannot be known).
    pub status_list: Option<StatusListSource>,
}

/// `revocation.status_list`: where status-list tokens are fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatusListSource {
    /// The proxy's cluster to call. Required. Example: `"consent_service"`.
    pub cluster: String,
    /// A token's `status.status_list.uri` must start with this https URL, which must name
    /// a host and a path (so a token cannot steer the fetch elsewhere). Required.
    /// Example: `"https://consent.example.com/statuslists/"`.
    pub uri_prefix: String,
    /// How long past its `exp` or `iat + ttl` (whichever is sooner) a list is still used,
    /// in seconds. Default 300.
    pub max_staleness_seconds: u64,
    /// Timeout of one fetch, in milliseconds. Default 2000, 1 to 60000.
    pub timeout_ms: u64,
    /// Bound on the status-list token and on the decompressed list, in bytes.
    /// Default 1048576, at most 16777216.
    pub max_bytes: usize,
    /// Refuse a token of this issuer that has no `status.status_list` reference: its
    /// revocation could not be checked. `false` accepts such tokens unchecked (only the
    /// deny-list applies to them). Default true.
    pub require_status_claim: bool,
}

/// `binding`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Binding {
    /// Refuse tokens without `cnf.x5t#S256` (RFC 8705). A token that has one is always
    /// checked against the peer certificate, whatever this says. Default false.
    pub require_certificate_binding: bool,
    /// Require the peer certificate's one URI SAN (its SPIFFE ID) to equal the token's
    /// grantee. Default false.
    pub require_spiffe_grantee: bool,
}

// ---------------------------------------------------------------------------------------
// Raw form: exactly what users write.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: String,
    algorithms: Vec<String>,
    audiences: Vec<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default = "default_true")]
    require_rfc9068_claims: bool,
    #[serde(default = "default_skew")]
    clock_skew_seconds: u64,
    #[serde(default = "default_max_lifetime")]
    max_lifetime_seconds: u64,
    #[serde(default)]
    required_claims: Vec<String>,
    keys: RawKeys,
    #[serde(default)]
    consent: RawConsent,
    #[serde(default)]
    revocation: RawRevocation,
    #[serde(default)]
    binding: RawBinding,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    #[serde(default)]
    inline: Option<Value>,
    #[serde(default)]
    remote: Option<RawRemote>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    cluster: String,
    #[serde(default)]
    authority: Option<String>,
    path: String,
    #[serde(default = "default_refresh")]
    refresh_seconds: u64,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default = "default_min_refetch")]
    min_refetch_interval_seconds: u64,
}

/// `consent`, flat: which members apply depends on `format` (checked when compiling, so a
/// member of the other format is refused with its location). A flat struct also keeps the
/// .wasm smaller than an internally tagged enum would.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsent {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    grantee_claims: Option<Vec<String>>,
    #[serde(default)]
    delegation_claim: Option<String>,
    // format "claims"
    #[serde(default)]
    purposes_claim: Option<String>,
    #[serde(default)]
    domains_claim: Option<String>,
    #[serde(default)]
    actions_claim: Option<String>,
    // format "authorization_details"
    #[serde(default)]
    types: Option<Vec<String>>,
    #[serde(default)]
    purpose_field: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevocation {
    #[serde(default)]
    deny_list: Vec<String>,
    #[serde(default)]
    status_list: Option<RawStatusList>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatusList {
    cluster: String,
    uri_prefix: String,
    #[serde(default = "default_staleness")]
    max_staleness_seconds: u64,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default = "default_status_max_bytes")]
    max_bytes: usize,
    #[serde(default = "default_true")]
    require_status_claim: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBinding {
    #[serde(default)]
    require_certificate_binding: bool,
    #[serde(default)]
    require_spiffe_grantee: bool,
}

fn default_true() -> bool {
    true
}
fn default_skew() -> u64 {
    DEFAULT_CLOCK_SKEW_SECONDS
}
fn default_max_lifetime() -> u64 {
    DEFAULT_MAX_LIFETIME_SECONDS
}
fn default_refresh() -> u64 {
    300
}
fn default_timeout() -> u64 {
    2000
}
fn default_min_refetch() -> u64 {
    30
}
fn default_staleness() -> u64 {
    DEFAULT_MAX_STALENESS_SECONDS
}
fn default_status_max_bytes() -> usize {
    DEFAULT_STATUS_LIST_MAX_BYTES
}
fn default_grantee_claims() -> Vec<String> {
    vec!["client_id".into(), "azp".into()]
}
fn default_purposes_claim() -> String {
    "purpose".into()
}
fn default_domains_claim() -> String {
    "data_domains".into()
}
fn default_actions_claim() -> String {
    "actions".into()
}
fn default_delegation_claim() -> String {
    "act".into()
}

// ---------------------------------------------------------------------------------------
// Compilation.

/// A configuration error: the JSON location (e.g. `$.issuers[0].algorithms[1]`) and the
/// reason. Reasons never quote key material.
pub type IssuerConfigError = (String, String);

/// Compiles the `issuers` array found at JSON location `at` (e.g. `$.issuers`). Every
/// entry is checked, and every error is returned with its location, in document order.
pub fn compile_issuers(raw: &Value, at: &str) -> Result<Vec<Issuer>, Vec<IssuerConfigError>> {
    let Value::Array(entries) = raw else {
        return Err(vec![(at.to_owned(), "must be an array of issuers".into())]);
    };
    let mut errors = Vec::new();
    let mut issuers = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let here = format!("{at}[{i}]");
        match serde_path_to_error::deserialize::<_, RawIssuer>(entry) {
            Ok(raw) => {
                if let Some(issuer) = compile_issuer(raw, &here, &mut errors) {
                    issuers.push(issuer);
                }
            }
            Err(e) => {
                let path = e.path().to_string();
                let location = match path.as_str() {
                    "" | "." => here,
                    p if p.starts_with('[') => format!("{here}{p}"),
                    p => format!("{here}.{p}"),
                };
                errors.push((location, e.into_inner().to_string()));
            }
        }
    }
    let mut seen = BTreeSet::new();
    for (i, issuer) in issuers.iter().enumerate() {
        if !seen.insert(issuer.issuer.as_str()) {
            errors.push((
                format!("{at}[{i}].issuer"),
                "the same issuer is configured twice".into(),
            ));
        }
    }
    if errors.is_empty() {
        Ok(issuers)
    } else {
        Err(errors)
    }
}

fn compile_issuer(raw: RawIssuer, at: &str, errors: &mut Vec<IssuerConfigError>) -> Option<Issuer> {
    let before = errors.len();
    let mut err = |location: String, reason: &str| errors.push((location, reason.to_owned()));

    if raw.issuer.is_empty() {
        err(format!("{at}.issuer"), "must not be empty");
    }

    let mut algorithms = Vec::new();
    if raw.algorithms.is_empty() {
        err(
            format!("{at}.algorithms"),
            "must list at least one algorithm",
        );
    }
    for (i, name) in raw.algorithms.iter().enumerate() {
        let location = format!("{at}.algorithms[{i}]");
        match Algorithm::from_jose(name) {
            Some(a) if algorithms.contains(&a) => err(location, "is listed twice"),
            Some(a) => algorithms.push(a),
            None if name.eq_ignore_ascii_case("none") => {
                err(location, "unsigned tokens (`none`) are never accepted")
            }
            None if name.len() >= 2
                && name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("HS")) =>
            {
                err(
                    location,
                    "HMAC algorithms are never accepted: a public key is not a shared secret",
                )
            }
            None => err(
                location,
                "unsupported algorithm; expected one of ES256, RS256, PS256, EdDSA",
            ),
        }
    }

    if raw.audiences.is_empty() {
        err(format!("{at}.audiences"), "must list at least one audience");
    }
    for (i, a) in raw.audiences.iter().enumerate() {
        if a.is_empty() {
            err(format!("{at}.audiences[{i}]"), "must not be empty");
        }
    }
    if raw.typ.as_deref() == Some("") {
        err(format!("{at}.typ"), "must not be empty");
    }
    if raw.clock_skew_seconds > MAX_CLOCK_SKEW_SECONDS {
        err(format!("{at}.clock_skew_seconds"), "must be at most 600");
    }
    if raw.max_lifetime_seconds == 0 {
        err(format!("{at}.max_lifetime_seconds"), "must be at least 1");
    }
    for (i, c) in raw.required_claims.iter().enumerate() {
        if c.is_empty() {
            err(format!("{at}.required_claims[{i}]"), "must not be empty");
        }
    }

    // keys
    let inline_keys = match &raw.keys.inline {
        None => KeySet::empty(),
        Some(v) => match KeySet::from_jwks_value(v) {
            Ok(set) => set,
            Err(list) => {
                for e in list {
                    let location = if e.location.is_empty() {
                        format!("{at}.keys.inline")
                    } else {
                        format!("{at}.keys.inline.{}", e.location)
                    };
                    err(location, e.reason);
                }
                KeySet::empty()
            }
        },
    };
    if raw.keys.inline.is_none() && raw.keys.remote.is_none() {
        err(
            format!("{at}.keys"),
            "needs `inline` keys, a `remote` JWKS, or both",
        );
    }
    if raw.keys.inline.is_some()
        && raw.keys.remote.is_none()
        && !inline_keys.is_empty()
        && !inline_keys
            .iter()
            .any(|k| algorithms.iter().any(|a| k.fits(*a)))
    {
        err(
            format!("{at}.keys.inline"),
            "no key can verify any of the configured algorithms",
        );
    }
    let remote_keys = raw.keys.remote.map(|r| {
        let here = format!("{at}.keys.remote");
        if r.cluster.is_empty() {
            err(format!("{here}.cluster"), "must not be empty");
        }
        if !r.path.starts_with('/') {
            err(format!("{here}.path"), "must start with `/`");
        }
        let authority = match r.authority {
            Some(a) if !a.is_empty() => a,
            Some(_) => {
                err(format!("{here}.authority"), "must not be empty");
                String::new()
            }
            None => match https_host(&raw.issuer) {
                Some(h) => h.to_owned(),
                None => {
                    err(
                        format!("{here}.authority"),
                        "is required when `issuer` is not an https URL",
                    );
                    String::new()
                }
            },
        };
        if r.refresh_seconds < 10 {
            err(format!("{here}.refresh_seconds"), "must be at least 10");
        }
        if !(1..=60_000).contains(&r.timeout_ms) {
            err(format!("{here}.timeout_ms"), "must be between 1 and 60000");
        }
        if r.min_refetch_interval_seconds == 0 {
            err(
                format!("{here}.min_refetch_interval_seconds"),
                "must be at least 1",
            );
        }
        RemoteJwks {
            cluster: r.cluster,
            authority,
            path: r.path,
            refresh_seconds: r.refresh_seconds,
            timeout_ms: r.timeout_ms,
            min_refetch_interval_seconds: r.min_refetch_interval_seconds,
        }
    });

    // consent
    let consent = {
        let c = raw.consent;
        let here = format!("{at}.consent");
        let grantee_claims = c.grantee_claims.unwrap_or_else(default_grantee_claims);
        check_names(&grantee_claims, &format!("{here}.grantee_claims"), &mut err);
        let delegation_claim = claim_name(
            c.delegation_claim,
            default_delegation_claim,
            format!("{here}.delegation_claim"),
            &mut err,
        );
        let format = match c.format.as_deref() {
            None | Some("claims") => {
                for (member, present) in [
                    ("types", c.types.is_some()),
                    ("purpose_field", c.purpose_field.is_some()),
                ] {
                    if present {
                        err(
                            format!("{here}.{member}"),
                            "applies only to format `authorization_details`",
                        );
                    }
                }
                ConsentFormat::Claims {
                    purposes_claim: claim_name(
                        c.purposes_claim,
                        default_purposes_claim,
                        format!("{here}.purposes_claim"),
                        &mut err,
                    ),
                    domains_claim: claim_name(
                        c.domains_claim,
                        default_domains_claim,
                        format!("{here}.domains_claim"),
                        &mut err,
                    ),
                    actions_claim: claim_name(
                        c.actions_claim,
                        default_actions_claim,
                        format!("{here}.actions_claim"),
                        &mut err,
                    ),
                }
            }
            Some("authorization_details") => {
                for (member, present) in [
                    ("purposes_claim", c.purposes_claim.is_some()),
                    ("domains_claim", c.domains_claim.is_some()),
                    ("actions_claim", c.actions_claim.is_some()),
                ] {
                    if present {
                        err(
                            format!("{here}.{member}"),
                            "applies only to format `claims`",
                        );
                    }
                }
                let types = c.types.unwrap_or_default();
                if types.is_empty() {
                    err(format!("{here}.types"), "must list at least one type");
                }
                for (i, t) in types.iter().enumerate() {
                    if t.is_empty() {
                        err(format!("{here}.types[{i}]"), "must not be empty");
                    }
                }
                ConsentFormat::AuthorizationDetails {
                    types,
                    purpose_field: claim_name(
                        c.purpose_field,
                        default_purposes_claim,
                        format!("{here}.purpose_field"),
                        &mut err,
                    ),
                }
            }
            Some(_) => {
                err(
                    format!("{here}.format"),
                    "unknown format; expected `claims` or `authorization_details`",
                );
                ConsentFormat::Claims {
                    purposes_claim: String::new(),
                    domains_claim: String::new(),
                    actions_claim: String::new(),
                }
            }
        };
        ConsentMapping {
            format,
            grantee_claims,
            delegation_claim,
        }
    };

    // revocation
    for (i, id) in raw.revocation.deny_list.iter().enumerate() {
        if id.is_empty() {
            err(
                format!("{at}.revocation.deny_list[{i}]"),
                "must not be empty",
            );
        }
    }
    let status_list = raw.revocation.status_list.map(|s| {
        let here = format!("{at}.revocation.status_list");
        if s.cluster.is_empty() {
            err(format!("{here}.cluster"), "must not be empty");
        }
        if !is_safe_prefix(&s.uri_prefix) {
            err(
                format!("{here}.uri_prefix"),
                "must be an https URL with a host and a path, e.g. https://issuer.example/statuslists/",
            );
        }
        if !(1..=60_000).contains(&s.timeout_ms) {
            err(format!("{here}.timeout_ms"), "must be between 1 and 60000");
        }
        if !(1024..=MAX_STATUS_LIST_MAX_BYTES).contains(&s.max_bytes) {
            err(format!("{here}.max_bytes"), "must be between 1024 and 16777216");
        }
        StatusListSource {
            cluster: s.cluster,
            uri_prefix: s.uri_prefix,
            max_staleness_seconds: s.max_staleness_seconds,
            timeout_ms: s.timeout_ms,
            max_bytes: s.max_bytes,
            require_status_claim: s.require_status_claim,
        }
    });

    if errors.len() > before {
        return None;
    }
    Some(Issuer {
        issuer: raw.issuer,
        algorithms,
        audiences: raw.audiences,
        typ: raw.typ,
        require_rfc9068_claims: raw.require_rfc9068_claims,
        clock_skew_seconds: raw.clock_skew_seconds,
        max_lifetime_seconds: raw.max_lifetime_seconds,
        required_claims: raw.required_claims,
        inline_keys,
        remote_keys,
        consent,
        revocation: Revocation {
            deny_list: raw.revocation.deny_list.into_iter().collect(),
            status_list,
        },
        binding: Binding {
            require_certificate_binding: raw.binding.require_certificate_binding,
            require_spiffe_grantee: raw.binding.require_spiffe_grantee,
        },
    })
}

/// A configured claim name, or its default when absent; an empty one is an error.
fn claim_name(
    value: Option<String>,
    default: fn() -> String,
    location: String,
    err: &mut impl FnMut(String, &str),
) -> String {
    match value {
        Some(v) if v.is_empty() => {
            err(location, "must not be empty");
            v
        }
        Some(v) => v,
        None => default(),
    }
}

fn check_names(names: &[String], at: &str, err: &mut impl FnMut(String, &str)) {
    if names.is_empty() {
        err(at.to_owned(), "must list at least one claim name");
    }
    for (i, n) in names.iter().enumerate() {
        if n.is_empty() {
            err(format!("{at}[{i}]"), "must not be empty");
        }
    }
}

/// The host (authority) of an `https://host/...` URL.
pub(crate) fn https_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("https://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty() && !host.contains('@')).then_some(host)
}

/// An https URL with a host, then a path: `https://host/...`.
fn is_safe_prefix(prefix: &str) -> bool {
    let Some(rest) = prefix.strip_prefix("https://") else {
        return false;
    };
    match rest.find('/') {
        Some(i) => {
            https_host(prefix).is_some_and(|h| h.len() == i)
                && !prefix.contains(['?', '#', '\\', ' '])
                && !prefix.contains("..")
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn minimal() -> Value {
        json!({
            "issuer": "https://consent.example.com",
            "algorithms": ["ES256"],
            "audiences": ["https://api.example"],
            "keys": {"remote": {"cluster": "consent", "path": "/jwks"}}
        })
    }

    #[test]
    fn a_minimal_entry_gets_the_documented_defaults() {
        let issuers = compile_issuers(&json!([minimal()]), "$.issuers").unwrap();
        let i = &issuers[0];
        assert_eq!(i.clock_skew_seconds, 60);
        assert_eq!(i.max_lifetime_seconds, 86_400);
        assert_eq!(i.consent, ConsentMapping::default());
        let r = i.remote_keys.as_ref().unwrap();
        assert_eq!(r.authority, "consent.example.com");
        assert_eq!(
            (
                r.refresh_seconds,
                r.timeout_ms,
                r.min_refetch_interval_seconds
            ),
            (300, 2000, 30)
        );
        assert_eq!(i.binding, Binding::default());
        assert!(i.require_rfc9068_claims);
    }

    #[test]
    fn revocation_and_rfc_9068_checks_are_on_unless_switched_off() {
        let mut entry = minimal();
        entry["revocation"] =
            json!({"status_list": {"cluster": "c", "uri_prefix": "https://c.example/s/"}});
        let on = &compile_issuers(&json!([entry.clone()]), "$.issuers").unwrap()[0];
        assert!(on.require_rfc9068_claims);
        assert!(
            on.revocation
                .status_list
                .as_ref()
                .unwrap()
                .require_status_claim
        );

        entry["revocation"]["status_list"]["require_status_claim"] = json!(false);
        entry["require_rfc9068_claims"] = json!(false);
        let off = &compile_issuers(&json!([entry.clone()]), "$.issuers").unwrap()[0];
        assert!(!off.require_rfc9068_claims);
        assert!(
            !off.revocation
                .status_list
                .as_ref()
                .unwrap()
                .require_status_claim
        );

        entry["revocation"]["status_list"]["require_status_claim"] = json!("no");
        let errors = compile_issuers(&json!([entry]), "$.issuers").unwrap_err();
        assert_eq!(
            errors[0].0,
            "$.issuers[0].revocation.status_list.require_status_claim"
        );
    }

    #[test]
    fn errors_name_their_locations() {
        let mut bad = minimal();
        bad["algorithms"] = json!(["ES256", "none", "HS256", "ES384", "ES256"]);
        bad["audiences"] = json!([]);
        bad["keys"] = json!({});
        bad["revocation"] = json!({"status_list": {"cluster": "c", "uri_prefix": "https://evil"}});
        let errors = compile_issuers(&json!([minimal(), bad]), "$.issuers").unwrap_err();
        let locations: Vec<&str> = errors.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            locations,
            [
                "$.issuers[1].algorithms[1]",
                "$.issuers[1].algorithms[2]",
                "$.issuers[1].algorithms[3]",
                "$.issuers[1].algorithms[4]",
                "$.issuers[1].audiences",
                "$.issuers[1].keys",
                "$.issuers[1].revocation.status_list.uri_prefix",
            ]
        );
        assert!(errors[1].1.contains("HMAC"));
    }

    #[test]
    fn unknown_members_are_refused_with_their_location() {
        let mut bad = minimal();
        bad["keys"]["remote"]["clustr"] = json!("x");
        let errors = compile_issuers(&json!([bad]), "$.issuers").unwrap_err();
        assert_eq!(errors[0].0, "$.issuers[0].keys.remote.clustr");
        let mut bad = minimal();
        bad["consent"] =
            json!({"format": "authorization_details", "types": ["t"], "purposes_claim": "p"});
        let errors = compile_issuers(&json!([bad]), "$.issuers").unwrap_err();
        assert!(
            errors[0].0.starts_with("$.issuers[0].consent"),
            "{errors:?}"
        );
        let mut bad = minimal();
        bad["algorithms"] = json!(["ES256", 7]);
        let errors = compile_issuers(&json!([bad]), "$.issuers").unwrap_err();
        assert_eq!(errors[0].0, "$.issuers[0].algorithms[1]");
    }

    #[test]
    fn inline_key_errors_point_into_the_jwks() {
        let mut bad = minimal();
        bad["keys"] =
            json!({"inline": {"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}});
        let errors = compile_issuers(&json!([bad]), "$.issuers").unwrap_err();
        assert_eq!(errors[0].0, "$.issuers[0].keys.inline.keys[0].x");
    }

    #[test]
    fn the_same_issuer_twice_is_refused() {
        let errors = compile_issuers(&json!([minimal(), minimal()]), "$.issuers").unwrap_err();
        assert_eq!(errors[0].0, "$.issuers[1].issuer");
    }

    #[test]
    fn status_list_prefixes_must_pin_a_host_and_a_path() {
        assert!(is_safe_prefix("https://consent.example.com/statuslists/"));
        assert!(is_safe_prefix("https://consent.example.com/"));
        for bad in [
            "https://consent.example.com",
            "http://consent.example.com/s/",
            "https://user@consent.example.com/s/",
            "https:///s/",
            "https://consent.example.com/../s/",
            "https://consent.example.com/s?x=",
        ] {
            assert!(!is_safe_prefix(bad), "{bad}");
        }
    }
}
