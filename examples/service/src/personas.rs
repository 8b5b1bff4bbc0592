//! The example callers (`examples/personas.json`) and their development consent
//! tokens: the demo prints them, the tests and `consentry mint` use them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::issuer::{Alg, CONSENT_TYP, DEV_KEY_PEM, DEV_KID, SigningKey};

/// The checked-in personas, `examples/personas.json`.
pub const PERSONAS_JSON: &str = include_str!("../../personas.json");

/// Default lifetime of a minted token, in seconds.
pub const DEFAULT_TTL_SECONDS: u64 = 3600;

/// The example callers and the claims their consent tokens carry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Personas {
    /// `iss` of every token.
    pub issuer: String,
    /// `aud` of every token.
    pub audience: String,
    /// By name.
    pub personas: BTreeMap<String, Persona>,
}

/// One example caller.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persona {
    /// Who this is and what the consent covers.
    pub about: String,
    /// The claims its token carries besides `iss`, `aud`, `iat` and `exp`.
    pub claims: Map<String, Value>,
}

impl Personas {
    /// The checked-in personas.
    pub fn builtin() -> Result<Self> {
        Self::from_json(PERSONAS_JSON).context("examples/personas.json")
    }

    /// Parses a personas file.
    pub fn from_json(text: &str) -> Result<Self> {
        Ok(serde_json::from_str(text)?)
    }

    /// The persona called `name`; the error lists the names there are.
    pub fn get(&self, name: &str) -> Result<&Persona> {
        self.personas.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.personas.keys().map(String::as_str).collect();
            anyhow!("no persona {name:?}; there are: {}", known.join(", "))
        })
    }

    /// The claims of a token minted at `now` (unix seconds) for `ttl` seconds: `iss`,
    /// `aud`, `iat`, `exp`, a random `jti`, then the persona's claims (if any) over them.
    pub fn claims(&self, persona: Option<&str>, now: u64, ttl: u64) -> Result<Map<String, Value>> {
        let mut claims = Map::new();
        claims.insert("iss".into(), Value::from(self.issuer.as_str()));
        claims.insert("aud".into(), Value::from(self.audience.as_str()));
        claims.insert("iat".into(), Value::from(now));
        claims.insert("exp".into(), Value::from(now.saturating_add(ttl)));
        claims.insert("jti".into(), Value::from(random_jti()?));
        if let Some(name) = persona {
            overlay(&mut claims, &self.get(name)?.claims);
        }
        Ok(claims)
    }
}

/// Sets each of `over`'s claims in `claims`; a `null` removes the claim.
pub fn overlay(claims: &mut Map<String, Value>, over: &Map<String, Value>) {
    for (name, value) in over {
        if value.is_null() {
            claims.remove(name);
        } else {
            claims.insert(name.clone(), value.clone());
        }
    }
}

/// A fresh random consent id: `dev-` and 32 hex digits.
fn random_jti() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow!("no randomness for the jti: {e}"))?;
    let mut jti = String::with_capacity(36);
    jti.push_str("dev-");
    for b in bytes {
        let _ = write!(jti, "{b:02x}");
    }
    Ok(jti)
}

fn unix(t: SystemTime) -> Result<u64> {
    Ok(t.duration_since(UNIX_EPOCH)
        .context("time before 1970")?
        .as_secs())
}

/// A consent token for a checked-in persona, issued at `now` for
/// [`DEFAULT_TTL_SECONDS`], signed with the development ES256 key (`kid` `dev-2026-1`).
pub fn persona_token(persona: &str, now: SystemTime) -> Result<String> {
    let claims = Personas::builtin()?.claims(Some(persona), unix(now)?, DEFAULT_TTL_SECONDS)?;
    let key = SigningKey::from_pem(DEV_KEY_PEM, Some(DEV_KID), Some(Alg::ES256))?;
    Ok(key.sign(CONSENT_TYP, &Value::Object(claims))?)
}
