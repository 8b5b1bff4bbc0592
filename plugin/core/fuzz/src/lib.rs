//! What several fuzz targets share: an issuer whose Ed25519 key the targets hold, so
//! that fuzzed headers and claims can be signed and reach the checks that come after
//! the signature (a fuzzer cannot forge one).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use consentry_core::token::{Issuer, Verifier, compile_issuers};
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::json;

pub const ISSUER: &str = "https://consent.example.com";
/// A second issuer with the same key, whose consent is RFC 9396 `authorization_details`.
pub const RAR_ISSUER: &str = "https://rar.example.com";
pub const STATUS_PREFIX: &str = "https://consent.example.com/statuslists/";
/// The status list the status-list target asks for.
pub const STATUS_URI: &str = "https://consent.example.com/statuslists/1";
/// The time every target verifies at (2027-01-15).
pub const NOW: u64 = 1_800_000_000;

const SEED: [u8; 32] = [7; 32];

/// Compact JWS of exactly these header and payload bytes, signed with the issuer's key.
pub fn sign(header: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = URL_SAFE_NO_PAD.encode(header);
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(payload));
    let sig = SigningKey::from_bytes(&SEED).sign(out.as_bytes());
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(sig.to_bytes()));
    out.into_bytes()
}

/// `header \n payload`, signed; without a newline the whole input is the payload under
/// an EdDSA access-token header.
pub fn sign_split(data: &[u8]) -> Vec<u8> {
    match data.iter().position(|&b| b == b'\n') {
        Some(at) => sign(&data[..at], &data[at + 1..]),
        None => sign(br#"{"alg":"EdDSA","kid":"fuzz","typ":"at+jwt"}"#, data),
    }
}

/// The issuer's public key as a JWKS.
pub fn jwks() -> serde_json::Value {
    let x = SigningKey::from_bytes(&SEED).verifying_key().to_bytes();
    json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "fuzz", "x": URL_SAFE_NO_PAD.encode(x)}]})
}

/// The issuers that hold the key of [`sign`]: [`ISSUER`], with a deny-list and status
/// lists, and [`RAR_ISSUER`].
pub fn issuers() -> Vec<Issuer> {
    let raw = json!([{
        "issuer": ISSUER,
        "algorithms": ["EdDSA", "ES256"],
        "audiences": ["https://api.example"],
        "typ": "at+jwt",
        "clock_skew_seconds": 60,
        "max_lifetime_seconds": 3600,
        "keys": {"inline": jwks()},
        "revocation": {
            "deny_list": ["revoked"],
            "status_list": {"cluster": "consent", "uri_prefix": STATUS_PREFIX}
        },
        "binding": {"require_certificate_binding": false}
    }, {
        "issuer": RAR_ISSUER,
        "algorithms": ["EdDSA"],
        "audiences": ["https://api.example"],
        "keys": {"inline": jwks()},
        "consent": {"format": "authorization_details", "types": ["health_record_access"],
                    "purpose_field": "purpose"}
    }]);
    match compile_issuers(&raw, "$.issuers") {
        Ok(issuers) => issuers,
        Err(errors) => panic!("the fuzz issuers do not compile: {errors:?}"),
    }
}

/// [`ISSUER`] alone.
pub fn issuer() -> Issuer {
    issuers().swap_remove(0)
}

pub fn verifier() -> Verifier {
    Verifier::new(issuers())
}
