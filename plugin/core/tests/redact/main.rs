//! Redaction through the public API: airtightness cases, refusals named by their
//! failure, field encryption checked by an independent JOSE implementation, and
//! property tests against a reference implementation.

// A test binary: its helpers may fail loudly (clippy's test allowances only cover
// `#[test]` functions themselves).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cases;
#[cfg(not(target_family = "wasm"))]
mod jose;
mod paths;
mod props;
mod refusals;

use consentry_core::redact::{
    FieldAction, FieldPath, KeyRing, Limits, Plan, RecipientKey, RedactContext, RedactError,
    Redacted, Unclassified, redact,
};

pub const LIMITS: Limits = Limits {
    max_bytes: 1 << 20,
    max_depth: 64,
};

/// A 32-byte pseudonymisation secret for key id `k1`.
pub const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

pub fn plan(rules: &[(&str, FieldAction)], unclassified: Unclassified) -> Plan {
    Plan::build(
        rules
            .iter()
            .map(|(p, a)| (FieldPath::parse(p).unwrap(), a.clone()))
            .collect(),
        unclassified,
    )
    .unwrap()
}

pub fn keys() -> KeyRing {
    KeyRing::new().with_key("k1", SECRET).unwrap()
}

/// A deterministic stand-in for a random source (a counter through SHA-256).
pub fn test_random() -> impl FnMut(&mut [u8]) {
    use sha2::{Digest, Sha256};
    let mut counter = 0u64;
    move |buf: &mut [u8]| {
        for chunk in buf.chunks_mut(32) {
            counter += 1;
            let block = Sha256::digest(counter.to_be_bytes());
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }
}

/// Redacts with the test key ring, no grantee and an optional recipient.
pub fn run_with(
    plan: &Plan,
    body: &[u8],
    limits: Limits,
    recipient: Option<&RecipientKey>,
) -> Result<Redacted, RedactError> {
    let keys = keys();
    let mut random = test_random();
    let mut cx = RedactContext {
        pseudonym_keys: &keys,
        grantee: None,
        recipient,
        random: &mut random,
    };
    redact(plan, body, limits, &mut cx)
}

/// The redacted body as text.
pub fn run(plan: &Plan, body: &str) -> Result<String, RedactError> {
    run_with(plan, body.as_bytes(), LIMITS, None).map(|r| String::from_utf8(r.body).unwrap())
}

/// Removes `paths`, keeps everything else.
pub fn remove(paths: &[&str], body: &str) -> String {
    let rules: Vec<_> = paths.iter().map(|p| (*p, FieldAction::Remove)).collect();
    let out = run(&plan(&rules, Unclassified::Keep), body).unwrap();
    serde_json::from_str::<serde_json::Value>(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
    out
}

/// A file of public test vectors (`tests/vectors/`, sources in its README).
pub fn vectors(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// Bob's public key from the JWE vectors (his private key decrypts in the tests).
pub fn bob() -> RecipientKey {
    let mut jwk = vectors("jwe-ecdh-es-p256.json")["recipient_private_jwk"].clone();
    jwk.as_object_mut().unwrap().remove("d");
    RecipientKey::from_jwk(&jwk).unwrap()
}
