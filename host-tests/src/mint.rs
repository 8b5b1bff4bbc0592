//! `consentry mint`: development consent tokens, signed with `jsonwebtoken` (an
//! implementation independent of the plugin's verifier) through the example issuer's
//! signing code ([`consentry_example_service::issuer`]), which the example service also
//! uses for the status lists it serves, so both always agree on keys and encoding.
//!
//! The claims of a minted token, each step overriding the one before (a `null` value
//! removes a claim):
//!
//! 1. `iss` and `aud` of the personas file, `iat` = now, `exp` = now + ttl, a random `jti`;
//! 2. the claims of `--persona` (from `examples/personas.json` unless `--personas`);
//! 3. the object in `--claims FILE`;
//! 4. each `--claim name=value`, in order (`value` is JSON when it parses as JSON,
//!    otherwise a string: `--claim sub=p-3`, `--claim purpose='["research"]'`,
//!    `--claim status=null`).
//!
//! `--status-list ID` mints the issuer's status list `ID` instead (all entries valid but
//! those set with `--status IDX=VALUE`), for the `callouts` of a replay: the personas'
//! tokens reference list `1`, and an issuer with a status list refuses a token without
//! a reference.
//!
//! ```no_run
//! let token = consentry_host::mint::persona_token("insurer", std::time::SystemTime::now())?;
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! The checked-in keys are DEVELOPMENT keys whose private halves are public: a token they
//! sign proves nothing outside tests and demos.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Map, Value};

pub use consentry_example_service::issuer::{
    AUDIENCE, Alg, CONSENT_TYP, DEV_JWKS, DEV_KEY_PEM, DEV_KID, ED25519_JWKS, ED25519_KEY_PEM,
    ED25519_KID, ISSUER, NEXT_JWKS, NEXT_KEY_PEM, NEXT_KID, ROTATION_JWKS, STATUS_LIST_PREFIX,
    SigningKey, encode_status_list,
};

pub use consentry_example_service::personas::{
    DEFAULT_TTL_SECONDS, PERSONAS_JSON, Persona, Personas, overlay, persona_token,
};

/// Parses `name=value`: `value` as JSON if it is JSON, otherwise as a string.
pub fn parse_claim(arg: &str) -> Result<(String, Value)> {
    let (name, value) = arg
        .split_once('=')
        .ok_or_else(|| anyhow!("--claim {arg:?}: expected NAME=VALUE"))?;
    if name.is_empty() {
        bail!("--claim {arg:?}: the claim name is empty");
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::from(value));
    Ok((name.to_owned(), value))
}

/// Parses `--now`: RFC 3339 (`2026-11-27T12:00:00Z`) or unix seconds.
pub fn parse_now(text: &str) -> Result<u64> {
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(secs);
    }
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("--now {text:?}: expected RFC 3339 or unix seconds"))?;
    u64::try_from(t.unix_timestamp()).map_err(|_| anyhow!("--now {text:?}: before 1970"))
}

/// Signs `claims` (a JSON object) as a consent token (`typ: at+jwt`) with a PKCS#8 PEM
/// private key, header `kid` = `kid`.
pub fn sign(claims: &Value, key_pem: &[u8], kid: &str, alg: Alg) -> Result<String> {
    let key = SigningKey::from_pem(key_pem, Some(kid), Some(alg))?;
    Ok(key.sign(CONSENT_TYP, claims)?)
}

/// A status-list token (`typ: statuslist+jwt`, `sub` = `uri`) over `statuses` (one value
/// per entry, each below `2^bits`), issued at `iat` (unix seconds), refetched after `ttl`.
pub fn status_list_token(
    statuses: &[u8],
    bits: u8,
    uri: &str,
    key_pem: &[u8],
    kid: &str,
    iat: u64,
    ttl: u64,
) -> Result<String> {
    let key = SigningKey::from_pem(key_pem, Some(kid), None)?;
    Ok(key.status_list_token(statuses, bits, uri, iat, ttl)?)
}

/// `consentry mint`: sign a development consent token and print it.
#[derive(Debug, Clone, clap::Args)]
pub struct MintArgs {
    /// PKCS#8 PEM private key to sign with (default: the development key
    /// examples/keys/issuer-es256.pem, kid dev-2026-1).
    #[arg(long, value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// `kid` of the token's header (default: dev-2026-1 with the development key, none
    /// with --key).
    #[arg(long, value_name = "KID")]
    pub kid: Option<String>,
    /// ES256, EdDSA, RS256 or PS256 (default: the key's own: ES256 for EC, EdDSA for
    /// Ed25519, RS256 for RSA).
    #[arg(long, value_name = "ALG")]
    pub alg: Option<Alg>,
    /// Start from this persona's claims.
    #[arg(long, value_name = "NAME")]
    pub persona: Option<String>,
    /// The personas file (default: the checked-in examples/personas.json).
    #[arg(long, value_name = "FILE")]
    pub personas: Option<PathBuf>,
    /// A JSON object of claims set over the persona's.
    #[arg(long, value_name = "FILE")]
    pub claims: Option<PathBuf>,
    /// One claim, NAME=VALUE: VALUE is JSON if it parses as JSON, else a string; `null`
    /// removes the claim. Repeatable; applied last, in order.
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    pub claim: Vec<String>,
    /// Lifetime in seconds: exp = iat + ttl.
    #[arg(long, default_value_t = DEFAULT_TTL_SECONDS)]
    pub ttl: u64,
    /// The issue time, RFC 3339 or unix seconds (default: the current time).
    #[arg(long, value_name = "TIME")]
    pub now: Option<String>,
    /// The JOSE header `typ`.
    #[arg(long, default_value = CONSENT_TYP)]
    pub typ: String,
    /// Sign a status-list token (`statuslist+jwt`) instead: list ID of the personas'
    /// issuer (`<issuer>/statuslists/ID`), 1024 entries of 2 bits, `ttl` = --ttl.
    #[arg(long, value_name = "ID", conflicts_with_all = ["persona", "claims", "claim"])]
    pub status_list: Option<String>,
    /// With --status-list: entry IDX gets VALUE (0 valid, the default; 1 revoked;
    /// 2 suspended). Repeatable.
    #[arg(long = "status", value_name = "IDX=VALUE", requires = "status_list")]
    pub status: Vec<String>,
}

/// Entries of a status list minted by `--status-list`, as the example service makes them.
const STATUS_LIST_LEN: usize = 1024;
/// Bits per entry of a status list minted by `--status-list`.
const STATUS_BITS: u8 = 2;

impl MintArgs {
    /// The claims the token will carry.
    pub fn claims(&self) -> Result<Value> {
        let personas = match &self.personas {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Personas::from_json(&text).with_context(|| format!("{}", path.display()))?
            }
            None => Personas::builtin()?,
        };
        let mut claims = personas.claims(self.persona.as_deref(), self.now()?, self.ttl)?;
        if let Some(path) = &self.claims {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let Value::Object(extra) = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?
            else {
                bail!("{} must hold a JSON object of claims", path.display());
            };
            overlay(&mut claims, &extra);
        }
        for arg in &self.claim {
            let (name, value) = parse_claim(arg)?;
            overlay(&mut claims, &Map::from_iter([(name, value)]));
        }
        Ok(Value::Object(claims))
    }

    /// `--now`, or the current time, in unix seconds.
    fn now(&self) -> Result<u64> {
        match &self.now {
            Some(text) => parse_now(text),
            None => Ok(SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .context("time before 1970")?
                .as_secs()),
        }
    }

    /// The personas file's issuer.
    fn issuer(&self) -> Result<String> {
        Ok(match &self.personas {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Personas::from_json(&text)
                    .with_context(|| format!("{}", path.display()))?
                    .issuer
            }
            None => Personas::builtin()?.issuer,
        })
    }

    /// The status-list token of `--status-list ID`.
    fn status_list_token(&self, id: &str, key: &SigningKey) -> Result<String> {
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            || id.contains("..")
        {
            bail!("--status-list {id:?}: expected a list id such as 1 (letters, digits, - _ .)");
        }
        let mut statuses = [0u8; STATUS_LIST_LEN];
        for arg in &self.status {
            let parsed = arg
                .split_once('=')
                .and_then(|(i, v)| Some((i.parse::<usize>().ok()?, v.parse::<u8>().ok()?)));
            let entry = parsed
                .filter(|(_, v)| *v < 1 << STATUS_BITS)
                .and_then(|(i, v)| Some((statuses.get_mut(i)?, v)));
            let Some((entry, value)) = entry else {
                bail!("--status {arg:?}: expected IDX=VALUE, IDX below 1024, VALUE 0 to 3");
            };
            *entry = value;
        }
        let uri = format!("{}/statuslists/{id}", self.issuer()?.trim_end_matches('/'));
        Ok(key.status_list_token(&statuses, STATUS_BITS, &uri, self.now()?, self.ttl)?)
    }

    /// The signed token.
    pub fn run(&self) -> Result<String> {
        let key = match &self.key {
            Some(path) => {
                let pem =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                SigningKey::from_pem(&pem, self.kid.as_deref(), self.alg)
                    .with_context(|| format!("{}", path.display()))?
            }
            None => SigningKey::from_pem(
                DEV_KEY_PEM,
                Some(self.kid.as_deref().unwrap_or(DEV_KID)),
                self.alg,
            )?,
        };
        if let Some(id) = &self.status_list {
            return self.status_list_token(id, &key);
        }
        Ok(key.sign(&self.typ, &self.claims()?)?)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser as _;
    use consentry_core::token::{
        Consent, KeySet, StatusList, TokenError, Verifier, compile_issuers,
    };
    use serde_json::json;

    use super::*;

    /// 2026-11-27T12:00:00Z.
    const NOW: u64 = 1_795_780_800;

    /// The example issuer as a plugin configuration would declare it: the consent mapping
    /// left at its defaults, which the personas' claim names follow.
    fn verifier_with(algorithms: &[&str], jwks: &str) -> Verifier {
        let jwks: Value = serde_json::from_str(jwks).unwrap();
        let entry = json!({
            "issuer": ISSUER,
            "algorithms": algorithms,
            "audiences": [AUDIENCE],
            "typ": "at+jwt",
            "required_claims": ["iat", "client_id"],
            "keys": {"inline": jwks},
            "consent": {
                "format": "claims",
                "grantee_claims": ["client_id", "azp"],
                "purposes_claim": "purpose",
                "domains_claim": "data_domains",
                "actions_claim": "actions",
                "delegation_claim": "act"
            },
            "revocation": {"status_list": {
                "cluster": "consent_service",
                "uri_prefix": STATUS_LIST_PREFIX
            }}
        });
        Verifier::new(compile_issuers(&json!([entry]), "$.issuers").unwrap())
    }

    fn verifier() -> Verifier {
        verifier_with(&["ES256"], DEV_JWKS)
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn verify(token: &str) -> Consent {
        verifier().verify(token.as_bytes(), NOW + 5).unwrap()
    }

    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    /// The hospital's personas: consent as plain claims, for the personas file's audience.
    const HOSPITAL: [&str; 5] = ["guardian", "insurer", "patient", "research-lab", "stranger"];

    /// The open-banking personas: consent as RFC 9396 `authorization_details`, for the
    /// bank's audience.
    const BANK: [&str; 3] = ["aggregator", "savings-app", "tpp"];

    /// The example issuer as `policies/open-banking.json` declares it.
    fn bank_verifier() -> Verifier {
        let entry = json!({
            "issuer": ISSUER,
            "algorithms": ["ES256"],
            "audiences": ["https://api.bank.example"],
            "keys": {"inline": serde_json::from_str::<Value>(DEV_JWKS).unwrap()},
            "consent": {"format": "authorization_details", "types": ["account_information"]},
            "revocation": {"status_list": {
                "cluster": "consent_service",
                "uri_prefix": STATUS_LIST_PREFIX
            }}
        });
        Verifier::new(compile_issuers(&json!([entry]), "$.issuers").unwrap())
    }

    #[test]
    fn every_persona_mints_a_token_the_plugin_accepts() {
        let personas = Personas::builtin().unwrap();
        let mut names: Vec<&str> = HOSPITAL.iter().chain(&BANK).copied().collect();
        names.sort_unstable();
        assert_eq!(personas.personas.keys().collect::<Vec<_>>(), names);
        for name in HOSPITAL {
            let c = verify(&persona_token(name, at(NOW)).unwrap());
            assert_eq!(c.issuer, ISSUER, "{name}");
            assert_eq!(c.issued_at, Some(NOW));
            assert_eq!(c.expires_at, NOW + DEFAULT_TTL_SECONDS);
            assert_eq!(c.actions, ["read"], "{name}");
            assert!(c.consent_id.starts_with("consent-"), "{name}");
        }

        let c = verify(&persona_token("insurer", at(NOW)).unwrap());
        assert_eq!(c.subject, "p-1");
        assert_eq!(c.grantee.as_deref(), Some("insurer-acme"));
        assert_eq!(c.consent_id, "consent-insurer-acme-p-1");
        assert_eq!(strs(&c.purposes), ["claims"]);
        assert_eq!(strs(&c.domains), ["billing", "identity"]);
        let status = c.status.unwrap();
        assert_eq!(status.uri, format!("{STATUS_LIST_PREFIX}1"));
        assert_eq!(status.idx, 0);

        let c = verify(&persona_token("research-lab", at(NOW)).unwrap());
        assert_eq!(
            (c.subject.as_str(), c.grantee.as_deref()),
            ("p-2", Some("lab-ucl"))
        );
        assert_eq!(strs(&c.purposes), ["research"]);
        assert_eq!(strs(&c.domains), ["clinical", "identity"]);

        let c = verify(&persona_token("patient", at(NOW)).unwrap());
        assert_eq!(
            (c.subject.as_str(), c.grantee.as_deref()),
            ("p-1", Some("patient-app"))
        );
        assert_eq!(strs(&c.purposes), ["access"]);
        assert_eq!(
            strs(&c.domains),
            ["identity", "contact", "clinical", "billing"]
        );
        assert!(c.delegations.is_empty());

        let c = verify(&persona_token("guardian", at(NOW)).unwrap());
        assert_eq!(
            (c.subject.as_str(), c.grantee.as_deref()),
            ("p-4", Some("patient-app"))
        );
        assert_eq!(c.delegations, ["p-5"]);
        assert_eq!(c.status.unwrap().idx, 3);

        let c = verify(&persona_token("stranger", at(NOW)).unwrap());
        assert_eq!(c.grantee.as_deref(), Some("marketing-co"));
        assert_eq!(strs(&c.purposes), ["marketing"]);
        assert_eq!(strs(&c.domains), ["contact"]);
        assert_eq!(c.status.unwrap().idx, 4);
    }

    #[test]
    fn the_open_banking_personas_consent_through_authorization_details() {
        let v = bank_verifier();
        let consent = |name: &str| {
            v.verify(persona_token(name, at(NOW)).unwrap().as_bytes(), NOW + 5)
                .unwrap()
        };
        let accounts = |c: &Consent| -> Vec<Value> {
            c.claims["authorization_details"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["accounts"].clone())
                .collect()
        };
        for (i, name) in BANK.iter().enumerate() {
            let c = consent(name);
            assert_eq!(c.subject, "psu-1", "{name}");
            assert_eq!(c.expires_at, NOW + DEFAULT_TTL_SECONDS);
            assert!(c.consent_id.starts_with("consent-"), "{name}");
            assert_eq!(c.status.unwrap().idx, 5 + [1, 2, 0][i], "{name}");
            // A bank consent is no use at the hospital: another audience.
            let token = persona_token(name, at(NOW)).unwrap();
            assert_eq!(
                verifier().verify(token.as_bytes(), NOW + 5),
                Err(TokenError::AudienceMismatch),
                "{name}"
            );
        }

        let c = consent("tpp");
        assert_eq!(c.grantee.as_deref(), Some("tpp-pennywise"));
        assert_eq!(strs(&c.purposes), ["account_information"]);
        assert_eq!(strs(&c.domains), ["account", "balances", "transactions"]);
        assert_eq!(accounts(&c), [json!(["acc-1001"])]);

        let c = consent("aggregator");
        assert_eq!(c.grantee.as_deref(), Some("agg-ledgerline"));
        assert_eq!(strs(&c.purposes), ["affordability"]);
        // The unions lose which action goes with which account; the entries keep it.
        assert_eq!(
            strs(&c.actions),
            ["read_accounts", "read_transactions", "read_balances"]
        );
        assert_eq!(c.authorization_details.len(), 2);
        assert_eq!(accounts(&c), [json!(["acc-1001"]), json!(["acc-1002"])]);

        let c = consent("savings-app");
        assert_eq!(c.grantee.as_deref(), Some("tpp-stashbox"));
        assert_eq!(accounts(&c), [json!(["acc-1002"])]);
    }

    #[test]
    fn minted_tokens_expire_and_unknown_personas_are_named() {
        let token = persona_token("insurer", at(NOW)).unwrap();
        assert_eq!(
            verifier().verify(token.as_bytes(), NOW + DEFAULT_TTL_SECONDS + 61),
            Err(TokenError::Expired)
        );
        let err = persona_token("nobody", at(NOW)).unwrap_err().to_string();
        assert!(err.contains("insurer") && err.contains("nobody"), "{err}");
    }

    #[test]
    fn the_rotation_and_eddsa_keys_verify_against_their_jwks() {
        let claims = Value::Object(
            Personas::builtin()
                .unwrap()
                .claims(Some("patient"), NOW, 600)
                .unwrap(),
        );
        let next = sign(&claims, NEXT_KEY_PEM, NEXT_KID, Alg::ES256).unwrap();
        // Before the rotation, the plugin does not know dev-2026-2; during it, it knows both.
        assert!(verifier().verify(next.as_bytes(), NOW).is_err());
        let rotating = verifier_with(&["ES256"], ROTATION_JWKS);
        rotating.verify(next.as_bytes(), NOW).unwrap();
        let old = sign(&claims, DEV_KEY_PEM, DEV_KID, Alg::ES256).unwrap();
        rotating.verify(old.as_bytes(), NOW).unwrap();
        // After it, tokens of the old key are refused.
        let after = verifier_with(&["ES256"], NEXT_JWKS);
        assert!(after.verify(old.as_bytes(), NOW).is_err());

        let ed = sign(&claims, ED25519_KEY_PEM, ED25519_KID, Alg::EdDSA).unwrap();
        verifier_with(&["EdDSA"], ED25519_JWKS)
            .verify(ed.as_bytes(), NOW)
            .unwrap();
        assert!(sign(&claims, ED25519_KEY_PEM, ED25519_KID, Alg::ES256).is_err());
    }

    #[test]
    fn status_list_tokens_decode_with_the_plugins_loader() {
        let uri = format!("{STATUS_LIST_PREFIX}1");
        let mut statuses = vec![0u8; 1000];
        statuses[0] = 1;
        statuses[3] = 2;
        statuses[999] = 3;
        let jwt = status_list_token(&statuses, 2, &uri, DEV_KEY_PEM, DEV_KID, NOW, 60).unwrap();
        let v = verifier();
        let list = v
            .load_status_list(ISSUER, &uri, jwt.as_bytes(), NOW + 1)
            .unwrap();
        assert_eq!((list.bits(), list.len()), (2, 1000));
        assert_eq!((list.issued_at(), list.fresh_until()), (NOW, NOW + 60));
        assert_eq!(list.status(0), Err(TokenError::StatusInvalid));
        assert_eq!(list.status(1), Ok(()));
        assert_eq!(list.status(3), Err(TokenError::Suspended));
        assert_eq!(list.status(999), Err(TokenError::StatusUnrecognised));
        assert_eq!(list.status(1000), Err(TokenError::StatusIndexOutOfRange));
        // A list fetched for another URI, or a consent token in its place, is refused.
        assert!(
            v.load_status_list(
                ISSUER,
                &format!("{STATUS_LIST_PREFIX}2"),
                jwt.as_bytes(),
                NOW
            )
            .is_err()
        );
        let consent = persona_token("insurer", at(NOW)).unwrap();
        assert!(
            v.load_status_list(ISSUER, &uri, consent.as_bytes(), NOW)
                .is_err()
        );

        // The insurer's consent (index 0) is revoked by this list, the patient's is not.
        let c = v
            .verify(persona_token("insurer", at(NOW)).unwrap().as_bytes(), NOW)
            .unwrap();
        assert_eq!(
            v.check_revocation(&c, Some(&list), NOW),
            Err(TokenError::StatusInvalid)
        );
        let c = v
            .verify(persona_token("patient", at(NOW)).unwrap().as_bytes(), NOW)
            .unwrap();
        assert_eq!(v.check_revocation(&c, Some(&list), NOW), Ok(()));

        // 1 bit per entry packs as the draft's example does.
        let draft = [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1];
        let decoded = StatusList::decode(1, &encode_status_list(&draft, 1).unwrap(), 1024).unwrap();
        let got: Vec<u8> = (0..16).map(|i| decoded.value(i).unwrap()).collect();
        assert_eq!(got, draft);
    }

    #[test]
    fn the_status_list_vectors_decode_to_what_we_encode() {
        // draft-ietf-oauth-status-list, 2 bits: "eNo76fITAAPfAgc" holds these 12 statuses.
        let statuses = [1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3];
        let ours = StatusList::decode(2, &encode_status_list(&statuses, 2).unwrap(), 1024).unwrap();
        let theirs = StatusList::decode(2, "eNo76fITAAPfAgc", 1024).unwrap();
        for i in 0..12 {
            assert_eq!(ours.value(i), theirs.value(i), "{i}");
        }
        assert_eq!(ours.to_bytes(), theirs.to_bytes());
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        mint: MintArgs,
    }

    fn cli(args: &[&str]) -> MintArgs {
        Cli::try_parse_from(std::iter::once("mint").chain(args.iter().copied()))
            .unwrap()
            .mint
    }

    #[test]
    fn the_command_line_builds_the_claims_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let extra = dir.path().join("claims.json");
        std::fs::write(
            &extra,
            r#"{"purpose": ["research"], "azp": "x", "actions": null}"#,
        )
        .unwrap();
        let args = cli(&[
            "--persona",
            "insurer",
            "--now",
            "2026-11-27T12:00:00Z",
            "--ttl",
            "600",
            "--claims",
            extra.to_str().unwrap(),
            "--claim",
            "sub=p-3",
            "--claim",
            "data_domains=[\"clinical\"]",
            "--claim",
            "azp=null",
            "--claim",
            "n=5",
        ]);
        let claims = args.claims().unwrap();
        assert_eq!(claims["iat"], NOW);
        assert_eq!(claims["exp"], NOW + 600);
        assert_eq!(claims["sub"], "p-3");
        assert_eq!(claims["purpose"], json!(["research"]));
        assert_eq!(claims["data_domains"], json!(["clinical"]));
        assert_eq!(claims["n"], 5);
        assert_eq!(claims["jti"], "consent-insurer-acme-p-1");
        assert!(claims.get("azp").is_none() && claims.get("actions").is_none());

        let c = verify(&args.run().unwrap());
        assert_eq!(c.subject, "p-3");
        assert_eq!(strs(&c.purposes), ["research"]);

        // Without a persona: a random jti, and the key and kid given.
        let args = cli(&[
            "--key",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/keys/issuer-es256.pem"
            ),
            "--kid",
            "dev-2026-1",
            "--claim",
            "sub=p-6",
            "--claim",
            "client_id=x",
            "--now",
            &NOW.to_string(),
        ]);
        let token = args.run().unwrap();
        let c = verify(&token);
        assert!(c.consent_id.starts_with("dev-") && c.consent_id.len() == 36);
        assert_ne!(c.consent_id, verify(&args.run().unwrap()).consent_id);

        // An EdDSA key is recognised without --alg.
        let args = cli(&[
            "--key",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/keys/issuer-ed25519.pem"
            ),
            "--kid",
            "dev-2026-ed",
            "--persona",
            "patient",
            "--now",
            &NOW.to_string(),
        ]);
        verifier_with(&["EdDSA"], ED25519_JWKS)
            .verify(args.run().unwrap().as_bytes(), NOW)
            .unwrap();
    }

    #[test]
    fn a_status_list_minted_here_decides_the_personas_tokens() {
        let v = verifier();
        let args = cli(&[
            "--status-list",
            "1",
            "--status",
            "0=1",
            "--status",
            "2=2",
            "--now",
            &NOW.to_string(),
            "--ttl",
            "600",
        ]);
        let uri = format!("{STATUS_LIST_PREFIX}1");
        let list = v
            .load_status_list(ISSUER, &uri, args.run().unwrap().as_bytes(), NOW)
            .unwrap();
        assert_eq!(list.fresh_until(), NOW + 600);
        for (persona, expected) in [
            ("insurer", Err(TokenError::StatusInvalid)),
            ("research-lab", Ok(())),
            ("patient", Err(TokenError::Suspended)),
        ] {
            let c = verify(&persona_token(persona, at(NOW)).unwrap());
            assert_eq!(
                v.check_revocation(&c, Some(&list), NOW),
                expected,
                "{persona}"
            );
        }

        for bad in [
            vec!["--status-list", "../1"],
            vec!["--status-list", ""],
            vec!["--status-list", "1", "--status", "1024=1"],
            vec!["--status-list", "1", "--status", "0=4"],
            vec!["--status-list", "1", "--status", "0"],
        ] {
            assert!(cli(&bad).run().is_err(), "{bad:?}");
        }
        assert!(Cli::try_parse_from(["mint", "--status", "0=1"]).is_err());
        assert!(
            Cli::try_parse_from(["mint", "--status-list", "1", "--persona", "insurer"]).is_err()
        );
    }

    #[test]
    fn bad_arguments_are_explained() {
        assert!(parse_claim("novalue").is_err());
        assert!(parse_claim("=1").is_err());
        assert_eq!(parse_claim("a=b=c").unwrap(), ("a".into(), json!("b=c")));
        assert_eq!(parse_claim("a=").unwrap(), ("a".into(), json!("")));
        assert!(parse_now("yesterday").is_err());
        assert_eq!(parse_now("1970-01-01T00:01:00Z").unwrap(), 60);
        assert!(Cli::try_parse_from(["mint", "--alg", "HS256"]).is_err());
        assert!(Cli::try_parse_from(["mint", "--alg", "none"]).is_err());
        let err = cli(&["--alg", "EdDSA"]).run().unwrap_err();
        assert!(format!("{err:#}").contains("EdDSA"), "{err:#}");
        let err = cli(&["--key", "/nonexistent.pem"]).run().unwrap_err();
        assert!(format!("{err:#}").contains("nonexistent"));
    }

    #[test]
    fn the_checked_in_jwks_match_the_private_keys() {
        // Each checked-in JWKS verifies what its private key signs, and only that.
        for (pem, kid, alg, jwks, name) in [
            (DEV_KEY_PEM, DEV_KID, Alg::ES256, DEV_JWKS, "ES256"),
            (NEXT_KEY_PEM, NEXT_KID, Alg::ES256, NEXT_JWKS, "ES256"),
            (
                ED25519_KEY_PEM,
                ED25519_KID,
                Alg::EdDSA,
                ED25519_JWKS,
                "EdDSA",
            ),
        ] {
            let set = KeySet::from_jwks(jwks.as_bytes()).unwrap();
            assert_eq!(set.len(), 1);
            assert_eq!(set.iter().next().unwrap().kid(), Some(kid));
            let claims = Value::Object(
                Personas::builtin()
                    .unwrap()
                    .claims(Some("patient"), NOW, 60)
                    .unwrap(),
            );
            verifier_with(&[name], jwks)
                .verify(sign(&claims, pem, kid, alg).unwrap().as_bytes(), NOW)
                .unwrap();
        }
    }
}
