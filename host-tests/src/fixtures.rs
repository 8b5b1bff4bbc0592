//! What tests and replays need around the plugin: the development secrets, a fake
//! consent service that answers the plugin's outgoing calls (the issuer's JWKS and its
//! status lists) as the example service does, and consent tokens for the checked-in
//! personas put into requests through `{{token:NAME}}` placeholders.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::message::{Callout, CalloutAnswer, Response};
use crate::mint;
use crate::world::lock;

pub mod spellings;

/// A development pseudonymisation key (`KEY_ID:BASE64URL`), the same the Envoy
/// configurations of the demo and the tests pass. Never a production key.
pub const DEV_PSEUDONYM_KEYS: &str = "dev-1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// The VM environment the example policy expects.
pub fn dev_env() -> Vec<(String, String)> {
    vec![("CONSENTRY_PSEUDONYM_KEYS".into(), DEV_PSEUDONYM_KEYS.into())]
}

/// The authority the example issuer's outgoing calls carry.
pub const CONSENT_AUTHORITY: &str = "consent.example.com";

/// A consent service in the harness: it serves a JWKS and status lists (2 bits per
/// entry, all valid until set), signed with the development key, and counts what it
/// was asked. Cloning shares the state, so a test keeps a handle while the proxy owns
/// the callout function.
#[derive(Clone)]
pub struct ConsentService {
    state: Arc<Mutex<ServiceState>>,
}

struct ServiceState {
    jwks: Vec<u8>,
    lists: BTreeMap<String, Vec<u8>>,
    ttl: u64,
    calls: Vec<String>,
    down: bool,
}

impl Default for ConsentService {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsentService {
    pub fn new() -> Self {
        let mut lists = BTreeMap::new();
        lists.insert("1".to_owned(), vec![0u8; 16]);
        Self {
            state: Arc::new(Mutex::new(ServiceState {
                jwks: mint::DEV_JWKS.as_bytes().to_vec(),
                lists,
                ttl: 60,
                calls: Vec::new(),
                down: false,
            })),
        }
    }

    /// Serves this JWKS from now on (key rotation).
    pub fn set_jwks(&self, jwks: &str) {
        lock(&self.state).jwks = jwks.as_bytes().to_vec();
    }

    /// Sets entry `idx` of list `id` (0 valid, 1 revoked, 2 suspended).
    pub fn set_status(&self, id: &str, idx: usize, status: u8) {
        let mut s = lock(&self.state);
        let list = s.lists.entry(id.to_owned()).or_default();
        if list.len() <= idx {
            list.resize(idx + 1, 0);
        }
        list[idx] = status;
    }

    /// The `ttl` the status-list tokens carry.
    pub fn set_ttl(&self, seconds: u64) {
        lock(&self.state).ttl = seconds;
    }

    /// While down, every call fails as an unreachable upstream does.
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
    }

    /// `authority + path` of every call answered so far.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.state).calls.clone()
    }

    /// The answer to one callout, at `now`.
    pub fn answer(&self, call: &Callout, now: SystemTime) -> CalloutAnswer {
        let mut s = lock(&self.state);
        s.calls.push(format!("{}{}", call.authority, call.path));
        if s.down || call.authority != CONSENT_AUTHORITY {
            return CalloutAnswer::Unreachable;
        }
        if call.path == "/.well-known/jwks.json" {
            return CalloutAnswer::now(
                Response::new(200)
                    .header("content-type", "application/jwk-set+json")
                    .body_with_length(&s.jwks),
            );
        }
        if let Some(id) = call.path.strip_prefix("/statuslists/")
            && let Some(statuses) = s.lists.get(id)
        {
            let iat = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let uri = format!("https://{CONSENT_AUTHORITY}/statuslists/{id}");
            return match mint::status_list_token(
                statuses,
                2,
                &uri,
                mint::DEV_KEY_PEM,
                mint::DEV_KID,
                iat,
                s.ttl,
            ) {
                Ok(jwt) => CalloutAnswer::now(
                    Response::new(200)
                        .header("content-type", "application/statuslist+jwt")
                        .body_with_length(jwt),
                ),
                Err(_) => CalloutAnswer::now(Response::new(500)),
            };
        }
        CalloutAnswer::now(Response::new(404).body_with_length("not found"))
    }
}

/// A named token a scenario uses: a persona's claims with some changed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    pub persona: String,
    /// Claims set over the persona's; `null` removes one.
    #[serde(default)]
    pub claims: Map<String, Value>,
    /// Lifetime in seconds (default one hour).
    #[serde(default)]
    pub ttl: Option<u64>,
    /// Issue time relative to now, in seconds (negative: in the past).
    #[serde(default)]
    pub issued_offset: i64,
}

/// Replaces every `{{token:NAME}}` in `text` by a consent token issued at `now`: NAME
/// is a key of `specs`, or a persona.
pub fn fill_tokens(
    text: &str,
    specs: &BTreeMap<String, TokenSpec>,
    now: SystemTime,
) -> Result<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{token:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 8..];
        let end = after
            .find("}}")
            .ok_or_else(|| anyhow!("an unterminated {{{{token:...}}}}"))?;
        let name = &after[..end];
        out.push_str(&token_for(name, specs, now)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn token_for(name: &str, specs: &BTreeMap<String, TokenSpec>, now: SystemTime) -> Result<String> {
    let unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let Some(spec) = specs.get(name) else {
        return mint::persona_token(name, now).with_context(|| format!("token '{name}'"));
    };
    let iat = unix.saturating_add_signed(spec.issued_offset);
    let personas = mint::Personas::builtin()?;
    let mut claims = personas.claims(
        Some(&spec.persona),
        iat,
        spec.ttl.unwrap_or(mint::DEFAULT_TTL_SECONDS),
    )?;
    mint::overlay(&mut claims, &spec.claims);
    mint::sign(
        &Value::Object(claims),
        mint::DEV_KEY_PEM,
        mint::DEV_KID,
        mint::Alg::ES256,
    )
    .with_context(|| format!("token '{name}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_tokens() {
        let mut specs = BTreeMap::new();
        specs.insert(
            "no-status".to_owned(),
            TokenSpec {
                persona: "insurer".into(),
                claims: serde_json::from_str(r#"{"status": null}"#).unwrap(),
                ttl: None,
                issued_offset: 0,
            },
        );
        let text = fill_tokens(
            "Bearer {{token:insurer}} and {{token:no-status}}",
            &specs,
            SystemTime::now(),
        )
        .unwrap();
        let parts: Vec<&str> = text.split(' ').collect();
        assert_eq!(parts[1].split('.').count(), 3);
        assert_eq!(parts[3].split('.').count(), 3);
        assert!(fill_tokens("{{token:nobody}}", &specs, SystemTime::now()).is_err());
        assert!(fill_tokens("{{token:insurer", &specs, SystemTime::now()).is_err());
    }
}
