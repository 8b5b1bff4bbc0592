//! Issuer keys: JWKS parsing (RFC 7517/7518/8037), one [`KeySet`] per issuer, lookup by
//! `kid`, and per-key verification state built once when the keys load (the ES256 tables
//! of [`super::es256`], a parsed RSA modulus, a decompressed Ed25519 point).
//!
//! A key set only ever holds public verification keys: a JWK that carries private members
//! (`d`, `p`, `q`, ...) or a symmetric (`oct`) key is refused. Keys of a type or curve this
//! verifier does not implement (P-384, Ed448, ...) and keys marked for encryption (`use:
//! enc`) are kept as *unusable*, so a token naming one is refused as a key mismatch rather
//! than as an unknown `kid` (which would trigger a refetch).

use std::sync::Arc;

use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, Pss, RsaPublicKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::alg::Algorithm;
use super::error::{JwksError, TokenError};
use super::es256::Es256Key;
use super::json::{JsonError, parse_object};
use super::jws;

/// Most keys accepted in one JWKS document.
pub const MAX_KEYS: usize = 64;
/// Largest JWKS document accepted, in bytes.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys a token without `kid` is tried against.
pub const MAX_KIDLESS_CANDIDATES: usize = 4;
/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits.
pub const MAX_RSA_BITS: usize = 4096;
/// RFC 7518 §3.5: PS256's salt is as long as the hash.
const PSS_SALT_BYTES: usize = 32;

/// JWK members that only a private or symmetric key has.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

/// The public key material of one JWK, with its verification state.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum KeyMaterial {
    /// A P-256 point with its precomputed tables (for ES256).
    P256(Es256Key),
    /// An RSA public key of 2048 to 4096 bits (for RS256 and PS256).
    Rsa(Box<RsaPublicKey>),
    /// An Ed25519 point (for EdDSA).
    Ed25519(Box<ed25519_dalek::VerifyingKey>),
    /// A well-formed key this verifier does not implement (another curve or key type).
    Unsupported,
}

/// What the JWK's own `alg` member allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AlgRestriction {
    /// No `alg` member: any algorithm that fits the key type.
    Any,
    /// Exactly this algorithm.
    Only(Algorithm),
    /// An algorithm this verifier does not implement: the key verifies nothing here.
    Other,
}

/// One public key of an issuer.
#[derive(Debug, Clone)]
pub struct Jwk {
    kid: Option<String>,
    alg: AlgRestriction,
    /// False when `use` is not `sig` or `key_ops` lacks `verify`.
    for_verification: bool,
    material: KeyMaterial,
    thumbprint: [u8; 32],
}

impl Jwk {
    /// The key id, if the JWK has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The key material.
    pub fn material(&self) -> &KeyMaterial {
        &self.material
    }

    /// RFC 7638 JWK thumbprint (SHA-256) of the public key; for unsupported keys, a hash
    /// of the whole JWK.
    pub fn thumbprint(&self) -> [u8; 32] {
        self.thumbprint
    }

    /// True when this key may verify a signature made with `alg`: the key type and curve
    /// match, its own `alg` (if any) is `alg`, and it is a verification key.
    pub fn fits(&self, alg: Algorithm) -> bool {
        if !self.for_verification {
            return false;
        }
        match self.alg {
            AlgRestriction::Any => {}
            AlgRestriction::Only(a) if a == alg => {}
            _ => return false,
        }
        matches!(
            (&self.material, alg),
            (KeyMaterial::P256(_), Algorithm::Es256)
                | (KeyMaterial::Rsa(_), Algorithm::Rs256 | Algorithm::Ps256)
                | (KeyMaterial::Ed25519(_), Algorithm::EdDsa)
        )
    }

    /// Verifies `signature` over `message` with `alg`. The entry point the token verifier
    /// uses for every algorithm (and the one the Wycheproof tests drive).
    pub fn verify(
        &self,
        alg: Algorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), TokenError> {
        if !self.fits(alg) {
            return Err(TokenError::KeyMismatch);
        }
        if signature.is_empty() {
            return Err(TokenError::MalformedSignature);
        }
        match (&self.material, alg) {
            (KeyMaterial::P256(key), Algorithm::Es256) => key.verify(message, signature),
            (KeyMaterial::Rsa(key), Algorithm::Rs256) => {
                verify_rsa(key, Pkcs1v15Sign::new::<Sha256>(), message, signature)
            }
            (KeyMaterial::Rsa(key), Algorithm::Ps256) => verify_rsa(
                key,
                Pss::new_with_salt::<Sha256>(PSS_SALT_BYTES),
                message,
                signature,
            ),
            (KeyMaterial::Ed25519(key), Algorithm::EdDsa) => {
                let sig = ed25519_dalek::Signature::from_slice(signature)
                    .map_err(|_| TokenError::MalformedSignature)?;
                key.verify_strict(message, &sig)
                    .map_err(|_| TokenError::BadSignature)
            }
            _ => Err(TokenError::KeyMismatch),
        }
    }
}

fn verify_rsa<S: rsa::traits::SignatureScheme>(
    key: &RsaPublicKey,
    scheme: S,
    message: &[u8],
    signature: &[u8],
) -> Result<(), TokenError> {
    if signature.len() != key.size() {
        return Err(TokenError::MalformedSignature);
    }
    key.verify(scheme, &Sha256::digest(message), signature)
        .map_err(|_| TokenError::BadSignature)
}

/// The keys of one issuer: inline keys from configuration merged with the latest remote
/// JWKS. Cheap to clone (keys are shared).
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Arc<Jwk>>,
}

impl KeySet {
    /// A set with no keys.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Parses a JWKS document strictly: every key must be well-formed (an invalid point, a
    /// short RSA modulus, private members or a duplicate member name anywhere refuses the
    /// whole document). Use this for keys written in configuration.
    pub fn from_jwks(bytes: &[u8]) -> Result<KeySet, JwksError> {
        let (set, mut skipped) = parse_document(bytes, None)?;
        match skipped.is_empty() {
            true => Ok(set),
            false => Err(skipped.swap_remove(0)),
        }
    }

    /// Parses a JWKS document, skipping the keys that are not well-formed and reporting
    /// each as an error beside the set: one bad key published by an issuer does not take
    /// its other keys down. Use this for fetched documents; log the errors.
    pub fn from_jwks_lenient(bytes: &[u8]) -> Result<(KeySet, Vec<JwksError>), JwksError> {
        parse_document(bytes, None)
    }

    /// Like [`KeySet::from_jwks_lenient`], reusing this set's verification state for keys
    /// it already holds (same key material), so a periodic refetch of an unchanged JWKS
    /// builds no table again.
    pub fn refresh(&self, bytes: &[u8]) -> Result<(KeySet, Vec<JwksError>), JwksError> {
        parse_document(bytes, Some(self))
    }

    /// Parses an already-parsed JWKS value strictly, reporting every bad key (for
    /// configuration, where all errors are listed at once).
    pub fn from_jwks_value(value: &Value) -> Result<KeySet, Vec<JwksError>> {
        let Value::Object(obj) = value else {
            return Err(vec![JwksError::new("", "a JWKS must be a JSON object")]);
        };
        let (set, errors) = parse_keys(obj, None).map_err(|e| vec![e])?;
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    /// Number of keys (usable or not).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the set has no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys, in document order (inline keys first after a merge).
    pub fn iter(&self) -> impl Iterator<Item = &Jwk> {
        self.keys.iter().map(|k| k.as_ref())
    }

    /// This set followed by the keys of `other` it does not already hold.
    pub fn merged(&self, other: &KeySet) -> KeySet {
        let mut keys = self.keys.clone();
        for k in &other.keys {
            if !keys.iter().any(|m| same_entry(m, k)) {
                keys.push(k.clone());
            }
        }
        KeySet { keys }
    }

    /// A digest of the whole set (ids, restrictions and key material), to tell whether a
    /// refetch changed anything.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for k in &self.keys {
            h.update(entry_digest(k));
        }
        h.finalize().into()
    }

    /// The keys to try for a token with this `kid` and `alg`, at most
    /// [`MAX_KIDLESS_CANDIDATES`] when the token names no key.
    pub(crate) fn candidates(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<&Jwk>, TokenError> {
        if self.keys.is_empty() {
            return Err(TokenError::KeysUnavailable);
        }
        let found: Vec<&Jwk> = match kid {
            Some(kid) => {
                let named: Vec<&Jwk> = self.iter().filter(|k| k.kid() == Some(kid)).collect();
                if named.is_empty() {
                    return Err(TokenError::UnknownKid);
                }
                named.into_iter().filter(|k| k.fits(alg)).collect()
            }
            None => self
                .iter()
                .filter(|k| k.fits(alg))
                .take(MAX_KIDLESS_CANDIDATES)
                .collect(),
        };
        if found.is_empty() {
            return Err(TokenError::KeyMismatch);
        }
        Ok(found)
    }
}

fn same_entry(a: &Jwk, b: &Jwk) -> bool {
    entry_digest(a) == entry_digest(b)
}

fn entry_digest(k: &Jwk) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(k.thumbprint);
    match &k.kid {
        Some(kid) => {
            h.update([1]);
            h.update((kid.len() as u64).to_be_bytes());
            h.update(kid.as_bytes());
        }
        None => h.update([0]),
    }
    h.update(match k.alg {
        AlgRestriction::Any => [0, 0],
        AlgRestriction::Only(a) => [1, a as u8],
        AlgRestriction::Other => [2, 0],
    });
    h.update([u8::from(k.for_verification)]);
    h.finalize().into()
}

fn parse_document(
    bytes: &[u8],
    previous: Option<&KeySet>,
) -> Result<(KeySet, Vec<JwksError>), JwksError> {
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(JwksError::new(
            "",
            "the JWKS document exceeds the size limit",
        ));
    }
    let obj = parse_object(bytes).map_err(|e| match e {
        JsonError::Invalid => JwksError::new("", "not a JSON object"),
        JsonError::Duplicate => JwksError::new("", "a JSON object repeats a member name"),
    })?;
    parse_keys(&obj, previous)
}

fn parse_keys(
    obj: &Map<String, Value>,
    previous: Option<&KeySet>,
) -> Result<(KeySet, Vec<JwksError>), JwksError> {
    let Some(Value::Array(entries)) = obj.get("keys") else {
        return Err(JwksError::new("keys", "must be an array of JWKs"));
    };
    if entries.len() > MAX_KEYS {
        return Err(JwksError::new("keys", "too many keys"));
    }
    let mut keys = Vec::with_capacity(entries.len());
    let mut errors = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match parse_jwk(entry, previous) {
            Ok(k) => keys.push(Arc::new(k)),
            Err((field, reason)) => {
                let location = match field {
                    "" => format!("keys[{i}]"),
                    f => format!("keys[{i}].{f}"),
                };
                errors.push(JwksError::new(location, reason));
            }
        }
    }
    Ok((KeySet { keys }, errors))
}

type FieldError = (&'static str, &'static str);

fn parse_jwk(value: &Value, previous: Option<&KeySet>) -> Result<Jwk, FieldError> {
    let Value::Object(jwk) = value else {
        return Err(("", "must be a JSON object"));
    };
    if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m)) {
        return Err((
            m,
            "private or secret key material does not belong in a key set",
        ));
    }
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(s)) if s.len() <= jws::MAX_KID_BYTES => Some(s.clone()),
        Some(Value::String(_)) => return Err(("kid", "is too long")),
        Some(_) => return Err(("kid", "must be a string")),
    };
    let alg = match jwk.get("alg") {
        None => AlgRestriction::Any,
        Some(Value::String(s)) => match Algorithm::from_jose(s) {
            Some(a) => AlgRestriction::Only(a),
            None => AlgRestriction::Other,
        },
        Some(_) => return Err(("alg", "must be a string")),
    };
    let use_ok = match jwk.get("use") {
        None => true,
        Some(Value::String(s)) => s == "sig",
        Some(_) => return Err(("use", "must be a string")),
    };
    let ops_ok = match jwk.get("key_ops") {
        None => true,
        Some(Value::Array(ops)) => {
            if ops.iter().any(|o| !o.is_string()) {
                return Err(("key_ops", "must be an array of strings"));
            }
            ops.iter().any(|o| o.as_str() == Some("verify"))
        }
        Some(_) => return Err(("key_ops", "must be an array of strings")),
    };
    let kty = match jwk.get("kty") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(("kty", "must be a string")),
        None => return Err(("kty", "is required")),
    };
    let (material, thumbprint) = match kty {
        "EC" => parse_ec(jwk, previous)?,
        "RSA" => parse_rsa(jwk, previous)?,
        "OKP" => parse_okp(jwk, previous)?,
        "oct" => return Err(("kty", "symmetric keys are never verification keys")),
        _ => (KeyMaterial::Unsupported, whole_jwk_digest(jwk)),
    };
    Ok(Jwk {
        kid,
        alg,
        for_verification: use_ok && ops_ok,
        material,
        thumbprint,
    })
}

fn required_b64(jwk: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, FieldError> {
    match jwk.get(name) {
        Some(Value::String(s)) => jws::decode(s.as_bytes()).map_err(|_| (name, "is not base64url")),
        Some(_) => Err((name, "must be a base64url string")),
        None => Err((name, "is required")),
    }
}

fn crv(jwk: &Map<String, Value>) -> Result<&str, FieldError> {
    match jwk.get("crv") {
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(_) => Err(("crv", "must be a string")),
        None => Err(("crv", "is required")),
    }
}

/// Reuses the verification state of a key `previous` already holds with this thumbprint.
fn reuse(previous: Option<&KeySet>, thumbprint: &[u8; 32]) -> Option<KeyMaterial> {
    previous?
        .iter()
        .find(|k| &k.thumbprint == thumbprint)
        .map(|k| k.material.clone())
}

fn parse_ec(
    jwk: &Map<String, Value>,
    previous: Option<&KeySet>,
) -> Result<(KeyMaterial, [u8; 32]), FieldError> {
    if crv(jwk)? != "P-256" {
        return Ok((KeyMaterial::Unsupported, whole_jwk_digest(jwk)));
    }
    let x: [u8; 32] = required_b64(jwk, "x")?
        .try_into()
        .map_err(|_| ("x", "must be 32 bytes for P-256"))?;
    let y: [u8; 32] = required_b64(jwk, "y")?
        .try_into()
        .map_err(|_| ("y", "must be 32 bytes for P-256"))?;
    let thumbprint = thumbprint(&format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        jws::encode(&x),
        jws::encode(&y)
    ));
    if let Some(m @ KeyMaterial::P256(_)) = reuse(previous, &thumbprint) {
        return Ok((m, thumbprint));
    }
    let key = Es256Key::from_coordinates(&x, &y).ok_or(("x", "not a point on P-256"))?;
    Ok((KeyMaterial::P256(key), thumbprint))
}

fn parse_rsa(
    jwk: &Map<String, Value>,
    previous: Option<&KeySet>,
) -> Result<(KeyMaterial, [u8; 32]), FieldError> {
    let n = strip_leading_zeros(required_b64(jwk, "n")?);
    let e = strip_leading_zeros(required_b64(jwk, "e")?);
    let thumbprint = thumbprint(&format!(
        r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
        jws::encode(&e),
        jws::encode(&n)
    ));
    if let Some(m @ KeyMaterial::Rsa(_)) = reuse(previous, &thumbprint) {
        return Ok((m, thumbprint));
    }
    let n = BigUint::from_bytes_be(&n);
    let bits = n.bits();
    if bits < MIN_RSA_BITS {
        return Err(("n", "RSA modulus shorter than 2048 bits"));
    }
    if bits > MAX_RSA_BITS {
        return Err(("n", "RSA modulus longer than 4096 bits"));
    }
    let odd = e.last().is_some_and(|b| b & 1 == 1);
    let e = BigUint::from_bytes_be(&e);
    if e.bits() > 32 || e < BigUint::from(3u32) || !odd {
        return Err((
            "e",
            "RSA exponent must be odd, at least 3 and at most 32 bits",
        ));
    }
    let key = RsaPublicKey::new(n, e).map_err(|_| ("n", "not a valid RSA public key"))?;
    Ok((KeyMaterial::Rsa(Box::new(key)), thumbprint))
}

fn parse_okp(
    jwk: &Map<String, Value>,
    previous: Option<&KeySet>,
) -> Result<(KeyMaterial, [u8; 32]), FieldError> {
    if crv(jwk)? != "Ed25519" {
        return Ok((KeyMaterial::Unsupported, whole_jwk_digest(jwk)));
    }
    let x: [u8; 32] = required_b64(jwk, "x")?
        .try_into()
        .map_err(|_| ("x", "must be 32 bytes for Ed25519"))?;
    let thumbprint = thumbprint(&format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        jws::encode(&x)
    ));
    if let Some(m @ KeyMaterial::Ed25519(_)) = reuse(previous, &thumbprint) {
        return Ok((m, thumbprint));
    }
    let key = ed25519_dalek::VerifyingKey::from_bytes(&x)
        .map_err(|_| ("x", "not a valid Ed25519 point"))?;
    if key.is_weak() {
        return Err(("x", "a small-order Ed25519 point is not a key"));
    }
    Ok((KeyMaterial::Ed25519(Box::new(key)), thumbprint))
}

fn strip_leading_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

fn thumbprint(canonical: &str) -> [u8; 32] {
    Sha256::digest(canonical.as_bytes()).into()
}

fn whole_jwk_digest(jwk: &Map<String, Value>) -> [u8; 32] {
    Sha256::digest(Value::Object(jwk.clone()).to_string().as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7638 §3.1's example key and thumbprint.
    const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    #[test]
    fn rsa_thumbprint_matches_rfc_7638() {
        let doc = format!(
            r#"{{"keys":[{{"kty":"RSA","n":"{RFC7638_N}","e":"AQAB","alg":"RS256","kid":"2011-04-29"}}]}}"#
        );
        let set = KeySet::from_jwks(doc.as_bytes()).unwrap();
        let k = set.iter().next().unwrap();
        assert_eq!(
            jws::encode(&k.thumbprint()),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert!(k.fits(Algorithm::Rs256));
        assert!(
            !k.fits(Algorithm::Ps256),
            "the JWK's alg restricts it to RS256"
        );
    }

    #[test]
    fn candidates_follow_kid_then_fit() {
        let doc = format!(
            r#"{{"keys":[{{"kty":"RSA","n":"{RFC7638_N}","e":"AQAB","kid":"r"}},
                 {{"kty":"EC","crv":"P-384","kid":"p384","x":"AA","y":"AA"}},
                 {{"kty":"RSA","n":"{RFC7638_N}","e":"AQAB","kid":"enc","use":"enc"}}]}}"#
        );
        let set = KeySet::from_jwks(doc.as_bytes()).unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(
            set.candidates(Some("r"), Algorithm::Ps256).unwrap().len(),
            1
        );
        assert_eq!(
            set.candidates(Some("x"), Algorithm::Es256).unwrap_err(),
            TokenError::UnknownKid
        );
        assert_eq!(
            set.candidates(Some("p384"), Algorithm::Es256).unwrap_err(),
            TokenError::KeyMismatch
        );
        assert_eq!(
            set.candidates(Some("enc"), Algorithm::Rs256).unwrap_err(),
            TokenError::KeyMismatch
        );
        assert_eq!(set.candidates(None, Algorithm::Rs256).unwrap().len(), 1);
        assert_eq!(
            set.candidates(None, Algorithm::Es256).unwrap_err(),
            TokenError::KeyMismatch
        );
        assert_eq!(
            KeySet::empty()
                .candidates(None, Algorithm::Es256)
                .unwrap_err(),
            TokenError::KeysUnavailable
        );
    }

    #[test]
    fn bad_keys_are_named_by_location_without_values() {
        let cases = [
            (
                r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#,
                "keys[0].x: must be 32 bytes for P-256",
            ),
            (
                r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#,
                "keys[0].x: not a point on P-256",
            ),
            (
                r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#,
                "keys[0].k: private or secret key material does not belong in a key set",
            ),
            (
                r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#,
                "keys[0].n: RSA modulus shorter than 2048 bits",
            ),
            (
                r#"{"keys":[{"crv":"Ed25519","x":"AA"}]}"#,
                "keys[0].kty: is required",
            ),
            (r#"{"keys":{}}"#, "keys: must be an array of JWKs"),
            (
                r#"{"keys":[],"keys":[]}"#,
                "a JSON object repeats a member name",
            ),
            ("[]", "not a JSON object"),
        ];
        for (doc, expected) in cases {
            assert_eq!(
                KeySet::from_jwks(doc.as_bytes()).unwrap_err().to_string(),
                expected
            );
        }
    }

    #[test]
    fn lenient_parsing_keeps_the_good_keys() {
        let doc = format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}},{{"kty":"RSA","n":"{RFC7638_N}","e":"AQAB"}}]}}"#
        );
        let (set, errors) = KeySet::from_jwks_lenient(doc.as_bytes()).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(errors.len(), 1);
        assert!(KeySet::from_jwks(doc.as_bytes()).is_err());
    }

    #[test]
    fn refresh_and_merge_keep_one_entry_per_key() {
        let doc = format!(r#"{{"keys":[{{"kty":"RSA","n":"{RFC7638_N}","e":"AQAB","kid":"r"}}]}}"#);
        let a = KeySet::from_jwks(doc.as_bytes()).unwrap();
        let (b, errs) = a.refresh(doc.as_bytes()).unwrap();
        assert!(errs.is_empty());
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.merged(&b).len(), 1);
        assert_ne!(a.fingerprint(), KeySet::empty().fingerprint());
    }
}
