//! Consent-token verification, end to end through the public API: tokens are minted with
//! `jsonwebtoken` (an independent implementation) from the fixture keys in
//! `tests/fixtures/tokens/`, then verified, refused, revoked and bound by Consentry's own
//! code. Every refusal is checked for its exact reason, its client-facing class, and that
//! its text repeats nothing from the token.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use consentry_core::problem::Code;
use consentry_core::token::{
    Consent, ErrorClass, Issuer, KeySet, Peer, StatusList, TokenCache, TokenError, Verifier,
    compile_issuers,
};
use jsonwebtoken::{Algorithm as JAlg, EncodingKey, Header};
use p256::elliptic_curve::PrimeField;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ISS: &str = "https://consent.example.com";
const AUD: &str = "https://api.hospital.example";
const NOW: u64 = 1_800_000_000;
const SKEW: u64 = 60;
const PREFIX: &str = "https://consent.example.com/statuslists/";

// ---------------------------------------------------------------------------------------
// Fixtures and minting.

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/tokens/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn jwks() -> Value {
    serde_json::from_str(&fixture("jwks.json")).unwrap()
}

#[derive(Clone, Copy)]
enum Key {
    EsA,
    EsB,
    Es384,
    Rsa,
    Ed,
}

impl Key {
    fn encoding(self) -> EncodingKey {
        let pem = |n: &str| fixture(&format!("keys/{n}.pem"));
        match self {
            Key::EsA => EncodingKey::from_ec_pem(pem("es256-a").as_bytes()).unwrap(),
            Key::EsB => EncodingKey::from_ec_pem(pem("es256-b").as_bytes()).unwrap(),
            Key::Es384 => EncodingKey::from_ec_pem(pem("es384").as_bytes()).unwrap(),
            Key::Rsa => EncodingKey::from_rsa_pem(pem("rs2048").as_bytes()).unwrap(),
            Key::Ed => EncodingKey::from_ed_pem(pem("ed25519").as_bytes()).unwrap(),
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Signs exact header and payload bytes (jsonwebtoken's `crypto::sign`), so tokens can
/// carry what jsonwebtoken's own `Header` cannot: `crit`, duplicates, odd `alg` values.
fn sign_bytes(key: Key, alg: JAlg, header: &[u8], payload: &[u8]) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key.encoding(), alg).unwrap();
    format!("{input}.{sig}")
}

fn sign_json(key: Key, alg: JAlg, header: &Value, claims: &Value) -> String {
    sign_bytes(
        key,
        alg,
        &serde_json::to_vec(header).unwrap(),
        &serde_json::to_vec(claims).unwrap(),
    )
}

fn claims() -> Value {
    json!({
        "iss": ISS,
        "aud": AUD,
        "sub": "patient-1",
        "jti": "consent-1",
        "client_id": "spiffe://partner.example/insurer",
        "iat": NOW - 10,
        "exp": NOW + 600,
        "purpose": ["treatment"],
        "data_domains": ["lab_results", "medications"],
        "actions": "read"
    })
}

fn es256(claims: &Value) -> String {
    sign_json(
        Key::EsA,
        JAlg::ES256,
        &json!({"alg": "ES256", "kid": "es256-a", "typ": "at+jwt"}),
        claims,
    )
}

fn with(mut base: Value, patch: Value) -> Value {
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn issuer_json() -> Value {
    json!({
        "issuer": ISS,
        "algorithms": ["ES256", "RS256", "PS256", "EdDSA"],
        "audiences": [AUD, "https://other.example"],
        "typ": "at+jwt",
        "clock_skew_seconds": SKEW,
        "max_lifetime_seconds": 3600,
        "keys": {"inline": jwks()},
        "revocation": {
            "deny_list": ["consent-revoked"],
            "status_list": {"cluster": "consent", "uri_prefix": PREFIX}
        }
    })
}

fn compile(entries: Value) -> Vec<Issuer> {
    compile_issuers(&entries, "$.issuers").unwrap()
}

fn verifier_with(issuer: Value) -> Verifier {
    Verifier::new(compile(json!([issuer])))
}

fn verifier() -> Verifier {
    verifier_with(issuer_json())
}

/// The P-256 group order.
fn order_minus(s: &[u8]) -> Vec<u8> {
    let s = p256::Scalar::from_repr(*p256::FieldBytes::from_slice(s)).unwrap();
    (-s).to_bytes().to_vec()
}

/// The same token with its ECDSA `s` replaced by `n - s`: equally valid in JOSE.
fn malleate(token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut sig = B64.decode(sig).unwrap();
    let s = order_minus(&sig[32..]);
    sig[32..].copy_from_slice(&s);
    format!("{input}.{}", b64(&sig))
}

fn replace_signature(token: &str, sig: &[u8]) -> String {
    let (input, _) = token.rsplit_once('.').unwrap();
    format!("{input}.{}", b64(sig))
}

/// Asserts the refusal reason and that its text repeats nothing from the token.
fn refused(v: &Verifier, token: &str, now: u64, expected: TokenError) {
    let err = v
        .verify(token.as_bytes(), now)
        .expect_err(&format!("accepted; expected {expected:?}"));
    assert_eq!(err, expected, "token {token}");
    assert_no_leak(err);
}

fn assert_no_leak(err: TokenError) {
    let text = err.to_string();
    for secret in [
        "patient", "consent-", "es256", "rs2048", "p384", "../", "OR 1", ISS, AUD, "spiffe", "eyJ",
    ] {
        assert!(!text.contains(secret), "{err:?} says {text:?}");
    }
    assert!(text.is_ascii() && text.len() < 80);
}

// ---------------------------------------------------------------------------------------
// Valid tokens, each algorithm, minted by jsonwebtoken.

#[test]
fn tokens_minted_by_jsonwebtoken_verify_for_every_algorithm() {
    let v = verifier();
    for (key, alg, kid) in [
        (Key::EsA, JAlg::ES256, "es256-a"),
        (Key::EsB, JAlg::ES256, "es256-b"),
        (Key::Rsa, JAlg::RS256, "rs2048"),
        (Key::Rsa, JAlg::PS256, "rs2048"),
        (Key::Ed, JAlg::EdDSA, "ed25519"),
    ] {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        header.typ = Some("at+jwt".into());
        let token = jsonwebtoken::encode(&header, &claims(), &key.encoding()).unwrap();
        let consent = v
            .verify(token.as_bytes(), NOW)
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        assert_eq!(consent.subject, "patient-1");
        assert_eq!(consent.consent_id, "consent-1");
    }
}

#[test]
fn many_es256_tokens_verify_whatever_their_s_and_so_do_their_high_s_twins() {
    // Of a signature and its twin, exactly one has s > n/2: both halves are exercised.
    let v = verifier();
    for i in 0..64 {
        let token = es256(&with(claims(), json!({"jti": format!("consent-{i}")})));
        let twin = malleate(&token);
        assert_ne!(token, twin);
        assert!(v.verify(token.as_bytes(), NOW).is_ok(), "token {i}");
        assert!(v.verify(twin.as_bytes(), NOW).is_ok(), "its s/n-s twin {i}");
    }
}

#[test]
fn a_consent_is_extracted_from_plain_claims() {
    let consent = verifier().verify(es256(&claims()).as_bytes(), NOW).unwrap();
    assert_eq!(consent.issuer, ISS);
    assert_eq!(
        consent.grantee.as_deref(),
        Some("spiffe://partner.example/insurer")
    );
    assert_eq!(consent.purposes, ["treatment"]);
    assert_eq!(consent.domains, ["lab_results", "medications"]);
    assert_eq!(consent.actions, ["read"]);
    assert_eq!(consent.issued_at, Some(NOW - 10));
    assert_eq!(consent.expires_at, NOW + 600);
    assert_eq!(consent.status, None);
    assert_eq!(consent.cnf_x5t_s256, None);
    assert!(consent.delegations.is_empty());
    assert_eq!(consent.claims["sub"], "patient-1");
}

#[test]
fn typ_compares_case_insensitively_with_the_optional_application_prefix() {
    let v = verifier();
    for typ in [
        "at+jwt",
        "application/at+jwt",
        "at+JWT",
        "Application/AT+JWT",
    ] {
        let t = sign_json(
            Key::EsA,
            JAlg::ES256,
            &json!({"alg": "ES256", "kid": "es256-a", "typ": typ}),
            &claims(),
        );
        assert!(v.verify(t.as_bytes(), NOW).is_ok(), "{typ}");
    }
    for typ in [
        json!("JWT"),
        json!("application/jwt"),
        json!("statuslist+jwt"),
    ] {
        let t = sign_json(
            Key::EsA,
            JAlg::ES256,
            &json!({"alg": "ES256", "kid": "es256-a", "typ": typ}),
            &claims(),
        );
        refused(&v, &t, NOW, TokenError::WrongType);
    }
    let untyped = sign_json(
        Key::EsA,
        JAlg::ES256,
        &json!({"alg": "ES256", "kid": "es256-a"}),
        &claims(),
    );
    refused(&v, &untyped, NOW, TokenError::WrongType);

    // Without a configured typ, any typ passes, but a status-list token is never a consent.
    let lax = verifier_with(with(issuer_json(), json!({"typ": null})));
    assert!(lax.verify(untyped.as_bytes(), NOW).is_ok());
    let sl = sign_json(
        Key::EsA,
        JAlg::ES256,
        &json!({"alg": "ES256", "kid": "es256-a", "typ": "statuslist+jwt"}),
        &claims(),
    );
    refused(&lax, &sl, NOW, TokenError::WrongType);
}

/// The claims of RFC 9068 §2.2 that not every token needs.
const ACCESS_TOKEN_ONLY: [&str; 2] = ["client_id", "iat"];

#[test]
fn an_at_jwt_token_must_have_every_claim_of_rfc_9068() {
    let v = verifier();
    let at = |typ: &str, claims: &Value| {
        sign_json(
            Key::EsA,
            JAlg::ES256,
            &json!({"alg": "ES256", "kid": "es256-a", "typ": typ}),
            claims,
        )
    };
    // `nbf` keeps the lifetime bounded without `iat`, so only the profile refuses.
    let base = with(claims(), json!({"nbf": NOW - 10}));
    for name in ACCESS_TOKEN_ONLY {
        let lacking = with(base.clone(), json!({ name: null }));
        for typ in ["at+jwt", "application/at+jwt", "AT+JWT"] {
            refused(&v, &at(typ, &lacking), NOW, TokenError::MissingClaim);
        }
    }
    for bad in [json!(7), json!(""), json!(["insurer"])] {
        let t = at("at+jwt", &with(base.clone(), json!({ "client_id": bad })));
        refused(&v, &t, NOW, TokenError::InvalidClaim);
    }

    // Relaxed, the same tokens pass; the claims every token needs are still required.
    let lax = verifier_with(with(
        issuer_json(),
        json!({"require_rfc9068_claims": false}),
    ));
    for name in ACCESS_TOKEN_ONLY {
        let lacking = with(base.clone(), json!({ name: null }));
        assert!(
            lax.verify(at("at+jwt", &lacking).as_bytes(), NOW).is_ok(),
            "{name}"
        );
    }
    let no_sub = with(base.clone(), json!({"sub": null}));
    refused(&lax, &at("at+jwt", &no_sub), NOW, TokenError::MissingClaim);

    // The profile is the token's `typ`, not the issuer's: another type is held only to
    // the claims every token needs.
    let untyped = verifier_with(with(issuer_json(), json!({"typ": null})));
    let lacking = with(base.clone(), json!({"client_id": null, "iat": null}));
    let jwt = at("JWT", &lacking);
    assert!(untyped.verify(jwt.as_bytes(), NOW).is_ok());
    refused(
        &untyped,
        &at("at+jwt", &lacking),
        NOW,
        TokenError::MissingClaim,
    );
}

#[test]
fn a_token_without_kid_is_tried_against_the_keys_that_fit_its_alg() {
    let v = verifier();
    let t = sign_json(
        Key::EsB,
        JAlg::ES256,
        &json!({"alg": "ES256", "typ": "at+jwt"}),
        &claims(),
    );
    assert!(v.verify(t.as_bytes(), NOW).is_ok());
    let t = sign_json(
        Key::Ed,
        JAlg::EdDSA,
        &json!({"alg": "EdDSA", "typ": "at+jwt"}),
        &claims(),
    );
    assert!(v.verify(t.as_bytes(), NOW).is_ok());
    // A key that is not among the issuer's: no candidate verifies.
    let other = sign_json(
        Key::Es384,
        JAlg::ES384,
        &json!({"alg": "ES256", "typ": "at+jwt"}),
        &claims(),
    );
    refused(&v, &other, NOW, TokenError::MalformedSignature);
}

// ---------------------------------------------------------------------------------------
// The corpus of bad tokens.

#[test]
fn alg_none_in_any_letter_case_is_refused() {
    let v = verifier();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = b64(json!({"alg": alg, "kid": "es256-a", "typ": "at+jwt"})
            .to_string()
            .as_bytes());
        let payload = b64(claims().to_string().as_bytes());
        refused(
            &v,
            &format!("{header}.{payload}."),
            NOW,
            TokenError::AlgorithmNotAllowed,
        );
        let with_sig = es256(&claims());
        let sig = with_sig.rsplit_once('.').unwrap().1;
        refused(
            &v,
            &format!("{header}.{payload}.{sig}"),
            NOW,
            TokenError::AlgorithmNotAllowed,
        );
    }
}

#[test]
fn hmac_signed_with_the_public_key_bytes_is_refused() {
    let v = verifier();
    let jwk = jwks()["keys"][0].to_string();
    let pubkey_pem = fixture("jwks.json"); // any public bytes an attacker can read
    for secret in [jwk.as_bytes(), pubkey_pem.as_bytes()] {
        for (name, alg) in [
            ("HS256", JAlg::HS256),
            ("HS384", JAlg::HS384),
            ("HS512", JAlg::HS512),
        ] {
            let header = json!({"alg": name, "kid": "es256-a", "typ": "at+jwt"}).to_string();
            let input = format!(
                "{}.{}",
                b64(header.as_bytes()),
                b64(claims().to_string().as_bytes())
            );
            let sig = jsonwebtoken::crypto::sign(
                input.as_bytes(),
                &EncodingKey::from_secret(secret),
                alg,
            )
            .unwrap();
            refused(
                &v,
                &format!("{input}.{sig}"),
                NOW,
                TokenError::AlgorithmNotAllowed,
            );
        }
    }
    // And HMAC cannot even be configured.
    let errors = compile_issuers(
        &json!([with(issuer_json(), json!({"algorithms": ["HS256"]}))]),
        "$.issuers",
    )
    .unwrap_err();
    assert_eq!(errors[0].0, "$.issuers[0].algorithms[0]");
}

#[test]
fn kids_with_path_or_sql_characters_are_only_ever_compared() {
    let v = verifier();
    for kid in [
        "../../../../etc/passwd",
        "' OR 1=1 --",
        "es256-a\u{0}",
        "es256-a/../es256-a",
        "%2e%2e",
    ] {
        let t = sign_json(
            Key::EsA,
            JAlg::ES256,
            &json!({"alg": "ES256", "kid": kid, "typ": "at+jwt"}),
            &claims(),
        );
        refused(&v, &t, NOW, TokenError::UnknownKid);
        assert!(TokenError::UnknownKid.needs_key_refetch());
    }
}

#[test]
fn headers_that_bring_their_own_keys_or_extensions_are_refused() {
    let v = verifier();
    let jwk = jwks()["keys"][0].clone();
    for (extra, expected) in [
        (
            json!({"jku": "https://evil.example/jwks.json"}),
            TokenError::ForbiddenHeader,
        ),
        (
            json!({"x5u": "https://evil.example/cert.pem"}),
            TokenError::ForbiddenHeader,
        ),
        (json!({"jwk": jwk}), TokenError::ForbiddenHeader),
        (json!({"x5c": ["MIIB"]}), TokenError::ForbiddenHeader),
        (
            json!({"crit": ["exp"], "exp": 1}),
            TokenError::UnsupportedCritical,
        ),
        (
            json!({"crit": ["urn:example:unknown"], "urn:example:unknown": true}),
            TokenError::UnsupportedCritical,
        ),
        (json!({"crit": []}), TokenError::UnsupportedCritical),
    ] {
        let header = with(
            json!({"alg": "ES256", "kid": "es256-a", "typ": "at+jwt"}),
            extra,
        );
        let t = sign_json(Key::EsA, JAlg::ES256, &header, &claims());
        refused(&v, &t, NOW, expected);
    }
}

#[test]
fn keys_of_the_wrong_type_or_curve_are_refused() {
    let v = verifier();
    // A P-384 key (its own signature) presented as ES256.
    let t = sign_json(
        Key::Es384,
        JAlg::ES384,
        &json!({"alg": "ES256", "kid": "p384", "typ": "at+jwt"}),
        &claims(),
    );
    refused(&v, &t, NOW, TokenError::KeyMismatch);
    // ES384 itself is not an algorithm the issuer may use.
    let t = sign_json(
        Key::Es384,
        JAlg::ES384,
        &json!({"alg": "ES384", "kid": "p384", "typ": "at+jwt"}),
        &claims(),
    );
    refused(&v, &t, NOW, TokenError::AlgorithmNotAllowed);
    // RSA kid with ES256, EC kid with RS256, Ed25519 kid with ES256.
    let t = sign_json(
        Key::EsA,
        JAlg::ES256,
        &json!({"alg": "ES256", "kid": "rs2048", "typ": "at+jwt"}),
        &claims(),
    );
    refused(&v, &t, NOW, TokenError::KeyMismatch);
    let t = sign_json(
        Key::Rsa,
        JAlg::RS256,
        &json!({"alg": "RS256", "kid": "es256-a", "typ": "at+jwt"}),
        &claims(),
    );
    refused(&v, &t, NOW, TokenError::KeyMismatch);
    let t = sign_json(
        Key::EsA,
        JAlg::ES256,
        &json!({"alg": "ES256", "kid": "ed25519", "typ": "at+jwt"}),
        &claims(),
    );
    refused(&v, &t, NOW, TokenError::KeyMismatch);
    // An algorithm the issuer does not list, though the key could verify it.
    let es_only = verifier_with(with(issuer_json(), json!({"algorithms": ["ES256"]})));
    let t = sign_json(
        Key::Rsa,
        JAlg::RS256,
        &json!({"alg": "RS256", "kid": "rs2048", "typ": "at+jwt"}),
        &claims(),
    );
    refused(&es_only, &t, NOW, TokenError::AlgorithmNotAllowed);
}

#[test]
fn rsa_keys_below_2048_bits_are_refused_at_load() {
    let err = KeySet::from_jwks(fixture("jwks-rsa1024.json").as_bytes()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "keys[0].n: RSA modulus shorter than 2048 bits"
    );
    let inline: Value = serde_json::from_str(&fixture("jwks-rsa1024.json")).unwrap();
    let errors = compile_issuers(
        &json!([with(issuer_json(), json!({"keys": {"inline": inline}}))]),
        "$.issuers",
    )
    .unwrap_err();
    assert_eq!(errors[0].0, "$.issuers[0].keys.inline.keys[0].n");
}

#[test]
fn malformed_es256_signatures_are_refused() {
    let v = verifier();
    let good = es256(&claims());
    let sig = B64.decode(good.rsplit_once('.').unwrap().1).unwrap();
    let n = order_minus(&[0u8; 31].iter().copied().chain([1]).collect::<Vec<_>>()); // n - 1
    let mut n_bytes = n.clone();
    *n_bytes.last_mut().unwrap() += 1; // n itself
    let one = {
        let mut b = vec![0u8; 32];
        b[31] = 1;
        b
    };
    let cases: Vec<(&str, Vec<u8>, TokenError)> = vec![
        ("r = s = 0", vec![0; 64], TokenError::MalformedSignature),
        (
            "r = 0",
            [vec![0; 32], sig[32..].to_vec()].concat(),
            TokenError::MalformedSignature,
        ),
        (
            "s = 0",
            [sig[..32].to_vec(), vec![0; 32]].concat(),
            TokenError::MalformedSignature,
        ),
        (
            "r = n",
            [n_bytes.clone(), sig[32..].to_vec()].concat(),
            TokenError::MalformedSignature,
        ),
        (
            "s = n",
            [sig[..32].to_vec(), n_bytes.clone()].concat(),
            TokenError::MalformedSignature,
        ),
        (
            "r = s = 0xff..",
            vec![0xff; 64],
            TokenError::MalformedSignature,
        ),
        (
            "r = s = 1",
            [one.clone(), one.clone()].concat(),
            TokenError::BadSignature,
        ),
        (
            "r = n - 1",
            [n.clone(), sig[32..].to_vec()].concat(),
            TokenError::BadSignature,
        ),
        (
            "63 bytes",
            sig[..63].to_vec(),
            TokenError::MalformedSignature,
        ),
        (
            "65 bytes",
            [sig.clone(), vec![0]].concat(),
            TokenError::MalformedSignature,
        ),
        ("DER", der_signature(&sig), TokenError::MalformedSignature),
        (
            "swapped r and s",
            [sig[32..].to_vec(), sig[..32].to_vec()].concat(),
            TokenError::BadSignature,
        ),
        (
            "one bit flipped",
            {
                let mut s = sig.clone();
                s[10] ^= 1;
                s
            },
            TokenError::BadSignature,
        ),
    ];
    for (name, bad, expected) in cases {
        let t = replace_signature(&good, &bad);
        let err = v.verify(t.as_bytes(), NOW).expect_err(name);
        assert_eq!(err, expected, "{name}");
        assert_no_leak(err);
    }
    // An empty signature part.
    refused(
        &v,
        &format!("{}.", good.rsplit_once('.').unwrap().0),
        NOW,
        TokenError::MalformedSignature,
    );
}

/// The ASN.1 DER form of an r‖s signature (what X.509 uses, and JOSE does not).
fn der_signature(sig: &[u8]) -> Vec<u8> {
    fn int(b: &[u8]) -> Vec<u8> {
        let mut v: Vec<u8> = b.iter().copied().skip_while(|x| *x == 0).collect();
        if v.first().is_some_and(|x| *x >= 0x80) {
            v.insert(0, 0);
        }
        [vec![0x02, v.len() as u8], v].concat()
    }
    let body = [int(&sig[..32]), int(&sig[32..])].concat();
    [vec![0x30, body.len() as u8], body].concat()
}

#[test]
fn structurally_bad_tokens_are_refused() {
    let v = verifier();
    let good = es256(&claims());
    let (h, rest) = good.split_once('.').unwrap();
    let (p, s) = rest.split_once('.').unwrap();
    let big = es256(&with(claims(), json!({"padding": "x".repeat(9000)})));
    let bom_token = format!("\u{feff}{good}");
    let bom_payload = sign_bytes(
        Key::EsA,
        JAlg::ES256,
        br#"{"alg":"ES256","kid":"es256-a","typ":"at+jwt"}"#,
        &[b"\xEF\xBB\xBF".as_slice(), claims().to_string().as_bytes()].concat(),
    );
    let json_serialization = json!({"protected": h, "payload": p, "signature": s}).to_string();
    let flattened =
        json!({"protected": h, "payload": p, "signatures": [{"signature": s}]}).to_string();
    let cases: Vec<(&str, String, TokenError)> = vec![
        ("empty", String::new(), TokenError::Missing),
        (
            "truncated in the payload",
            good[..h.len() + 20].to_string(),
            TokenError::Malformed,
        ),
        (
            "truncated signature",
            good[..good.len() - 10].to_string(),
            TokenError::MalformedSignature,
        ),
        (
            "truncated to a bad base64 length",
            good[..good.len() - 1].to_string(),
            TokenError::BadEncoding,
        ),
        ("oversized", big, TokenError::TooLarge),
        (
            "non-base64url byte",
            good.replacen('.', "*.", 1),
            TokenError::Malformed,
        ),
        (
            "standard base64 byte",
            format!("{h}.{}+.{s}", &p[..p.len() - 1]),
            TokenError::BadEncoding,
        ),
        ("padded", format!("{h}=.{p}.{s}"), TokenError::BadEncoding),
        ("whitespace", format!("{h}. {p}.{s}"), TokenError::Malformed),
        (
            "json serialization",
            json_serialization,
            TokenError::Malformed,
        ),
        (
            "general json serialization",
            flattened,
            TokenError::Malformed,
        ),
        (
            "five-part JWE",
            "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.a2V5.aXY.Y2lwaGVy.dGFn".into(),
            TokenError::Encrypted,
        ),
        ("four parts", format!("{good}.x"), TokenError::Malformed),
        ("two parts", format!("{h}.{p}"), TokenError::Malformed),
        ("empty header", format!(".{p}.{s}"), TokenError::Malformed),
        ("empty payload", format!("{h}..{s}"), TokenError::Malformed),
        (
            "byte-order mark before the token",
            bom_token,
            TokenError::Malformed,
        ),
        (
            "byte-order mark in the payload",
            bom_payload,
            TokenError::BadJson,
        ),
        (
            "payload not an object",
            sign_bytes(
                Key::EsA,
                JAlg::ES256,
                br#"{"alg":"ES256","kid":"es256-a","typ":"at+jwt"}"#,
                b"[1,2]",
            ),
            TokenError::BadJson,
        ),
    ];
    for (name, t, expected) in cases {
        let err = v.verify(t.as_bytes(), NOW).expect_err(name);
        assert_eq!(err, expected, "{name}");
        assert_no_leak(err);
    }
}

#[test]
fn duplicate_members_are_refused_at_every_depth() {
    let v = verifier_with(with(
        issuer_json(),
        json!({"consent": {"format": "authorization_details", "types": ["health_record_access"]}}),
    ));
    let header = br#"{"alg":"ES256","kid":"es256-a","typ":"at+jwt"}"#;
    let base = claims().to_string();
    let body = &base[1..base.len() - 1];
    for payload in [
        format!(r#"{{{body},"sub":"patient-2"}}"#),
        format!(r#"{{{body},"\u0073ub":"patient-2"}}"#),
        format!(
            r#"{{{body},"authorization_details":[{{"type":"health_record_access","type":"x"}}]}}"#
        ),
        format!(r#"{{{body},"cnf":{{"x5t#S256":"a","x5t#S256":"b"}}}}"#),
        format!(r#"{{{body},"status":{{"status_list":{{"idx":1,"idx":2,"uri":"u"}}}}}}"#),
    ] {
        let t = sign_bytes(Key::EsA, JAlg::ES256, header, payload.as_bytes());
        refused(&v, &t, NOW, TokenError::DuplicateMember);
    }
    let t = sign_bytes(
        Key::EsA,
        JAlg::ES256,
        br#"{"alg":"ES256","kid":"es256-a","kid":"es256-b","typ":"at+jwt"}"#,
        base.as_bytes(),
    );
    refused(&v, &t, NOW, TokenError::DuplicateMember);
}

#[test]
fn issuer_and_audience_are_checked() {
    let v = verifier();
    refused(
        &v,
        &es256(&with(claims(), json!({"iss": "https://evil.example"}))),
        NOW,
        TokenError::UnknownIssuer,
    );
    refused(
        &v,
        &es256(&with(claims(), json!({"iss": null}))),
        NOW,
        TokenError::MissingClaim,
    );
    refused(
        &v,
        &es256(&with(claims(), json!({"aud": null}))),
        NOW,
        TokenError::MissingClaim,
    );
    refused(
        &v,
        &es256(&with(claims(), json!({"aud": "https://evil.example"}))),
        NOW,
        TokenError::AudienceMismatch,
    );
    refused(
        &v,
        &es256(&with(claims(), json!({"aud": []}))),
        NOW,
        TokenError::AudienceMismatch,
    );
    refused(
        &v,
        &es256(&with(claims(), json!({"aud": [1]}))),
        NOW,
        TokenError::InvalidClaim,
    );
    assert!(
        v.verify(
            es256(&with(
                claims(),
                json!({"aud": ["https://x.example", "https://other.example"]})
            ))
            .as_bytes(),
            NOW
        )
        .is_ok()
    );
    for required in ["sub", "jti", "exp"] {
        refused(
            &v,
            &es256(&with(claims(), json!({required: null}))),
            NOW,
            TokenError::MissingClaim,
        );
    }
    refused(
        &v,
        &es256(&with(claims(), json!({"sub": 7}))),
        NOW,
        TokenError::InvalidClaim,
    );
    let strict = verifier_with(with(
        issuer_json(),
        json!({"required_claims": ["client_id", "purpose"]}),
    ));
    refused(
        &strict,
        &es256(&with(claims(), json!({"client_id": null}))),
        NOW,
        TokenError::MissingClaim,
    );
}

#[test]
fn several_issuers_are_told_apart_by_iss() {
    let second = with(
        issuer_json(),
        json!({"issuer": "https://other-consent.example", "algorithms": ["EdDSA"], "audiences": ["https://api.second.example"]}),
    );
    let v = Verifier::new(compile(json!([issuer_json(), second])));
    let ed_claims = with(
        claims(),
        json!({"iss": "https://other-consent.example", "aud": "https://api.second.example"}),
    );
    let ed = sign_json(
        Key::Ed,
        JAlg::EdDSA,
        &json!({"alg": "EdDSA", "kid": "ed25519", "typ": "at+jwt"}),
        &ed_claims,
    );
    assert_eq!(
        v.verify(ed.as_bytes(), NOW).unwrap().issuer,
        "https://other-consent.example"
    );
    // The second issuer allows only EdDSA, and its audience is its own.
    let es = es256(&ed_claims);
    refused(&v, &es, NOW, TokenError::AlgorithmNotAllowed);
    let wrong_aud = sign_json(
        Key::Ed,
        JAlg::EdDSA,
        &json!({"alg": "EdDSA", "kid": "ed25519", "typ": "at+jwt"}),
        &with(ed_claims, json!({"aud": AUD})),
    );
    refused(&v, &wrong_aud, NOW, TokenError::AudienceMismatch);
}

// ---------------------------------------------------------------------------------------
// Time, to the second.

#[test]
fn exp_one_second_inside_and_outside_the_skew() {
    let v = verifier();
    let exp = NOW + 600;
    let t = es256(&claims());
    assert!(v.verify(t.as_bytes(), exp - 1).is_ok());
    assert!(
        v.verify(t.as_bytes(), exp + SKEW - 1).is_ok(),
        "one second inside the skew"
    );
    refused(&v, &t, exp + SKEW, TokenError::Expired);
    refused(&v, &t, exp + SKEW + 1, TokenError::Expired);
    assert_eq!(TokenError::Expired.class(), ErrorClass::Expired);
    assert_eq!(TokenError::Expired.code(), Code::TokenExpired);
}

#[test]
fn nbf_one_second_inside_and_outside_the_skew() {
    let v = verifier();
    let nbf = NOW + 100;
    let t = es256(&with(claims(), json!({"nbf": nbf, "iat": NOW - 10})));
    assert!(
        v.verify(t.as_bytes(), nbf - SKEW + 1).is_ok(),
        "one second inside the skew"
    );
    assert!(
        v.verify(t.as_bytes(), nbf - SKEW).is_ok(),
        "at the skew's edge"
    );
    refused(&v, &t, nbf - SKEW - 1, TokenError::NotYetValid);
}

#[test]
fn iat_one_second_inside_and_outside_the_skew() {
    let v = verifier();
    let inside = es256(&with(claims(), json!({"iat": NOW + SKEW})));
    assert!(v.verify(inside.as_bytes(), NOW).is_ok());
    let outside = es256(&with(claims(), json!({"iat": NOW + SKEW + 1})));
    refused(&v, &outside, NOW, TokenError::IssuedInFuture);
}

#[test]
fn the_lifetime_is_bounded() {
    let v = verifier(); // max 3600
    let ok = es256(&with(
        claims(),
        json!({"iat": NOW - 100, "exp": NOW - 100 + 3600}),
    ));
    assert!(v.verify(ok.as_bytes(), NOW).is_ok());
    let long = es256(&with(
        claims(),
        json!({"iat": NOW - 100, "exp": NOW - 100 + 3601}),
    ));
    refused(&v, &long, NOW, TokenError::LifetimeTooLong);
    // Without `iat` (allowed only outside RFC 9068's profile), `nbf` bounds the lifetime.
    let lax = verifier_with(with(
        issuer_json(),
        json!({"require_rfc9068_claims": false}),
    ));
    let by_nbf = es256(&with(
        claims(),
        json!({"iat": null, "nbf": NOW - 100, "exp": NOW - 100 + 3601}),
    ));
    refused(&lax, &by_nbf, NOW, TokenError::LifetimeTooLong);
    let unbounded = es256(&with(claims(), json!({"iat": null})));
    refused(&lax, &unbounded, NOW, TokenError::MissingClaim);
    let backwards = es256(&with(claims(), json!({"iat": NOW + 10, "exp": NOW + 5})));
    refused(&v, &backwards, NOW, TokenError::InvalidClaim);
    refused(
        &v,
        &es256(&with(claims(), json!({"exp": "soon"}))),
        NOW,
        TokenError::InvalidClaim,
    );
}

// ---------------------------------------------------------------------------------------
// Consent extraction.

#[test]
fn claim_names_and_grantee_order_are_configurable() {
    let v = verifier_with(with(
        issuer_json(),
        json!({"consent": {"format": "claims", "grantee_claims": ["azp", "client_id"],
               "purposes_claim": "purposes", "domains_claim": "scopes", "actions_claim": "ops",
               "delegation_claim": "guardian_of"}}),
    ));
    let c = v
        .verify(
            es256(&with(claims(), json!({"azp": "app-7", "purposes": "research", "scopes": ["genomics"], "ops": ["read", "export"], "guardian_of": ["child-1", {"sub": "child-2"}]}))).as_bytes(),
            NOW,
        )
        .unwrap();
    assert_eq!(c.grantee.as_deref(), Some("app-7"));
    assert_eq!(c.purposes, ["research"]);
    assert_eq!(c.domains, ["genomics"]);
    assert_eq!(c.actions, ["read", "export"]);
    assert_eq!(c.delegations, ["child-1", "child-2"]);
    let bad = es256(&with(claims(), json!({"purposes": {"a": 1}})));
    refused(&v, &bad, NOW, TokenError::InvalidClaim);
}

#[test]
fn act_in_rfc_8693_form_names_a_delegation() {
    let c = verifier()
        .verify(
            es256(&with(claims(), json!({"act": {"sub": "patient-0"}}))).as_bytes(),
            NOW,
        )
        .unwrap();
    assert_eq!(c.delegations, ["patient-0"]);
}

#[test]
fn authorization_details_are_mapped_and_unknown_types_refused() {
    let v = verifier_with(with(
        issuer_json(),
        json!({"consent": {"format": "authorization_details", "types": ["health_record_access", "billing"], "purpose_field": "purpose"}}),
    ));
    let details = json!([
        {"type": "health_record_access", "actions": ["read"], "datatypes": ["lab_results"],
         "locations": ["https://api.hospital.example"], "identifier": "record-9", "purpose": "treatment"},
        {"type": "billing", "actions": ["read", "write"], "datatypes": ["invoices", "lab_results"], "purpose": ["billing"]}
    ]);
    let c = v
        .verify(
            es256(&with(claims(), json!({"authorization_details": details}))).as_bytes(),
            NOW,
        )
        .unwrap();
    assert_eq!(c.purposes, ["treatment", "billing"]);
    assert_eq!(c.domains, ["lab_results", "invoices"]);
    assert_eq!(c.actions, ["read", "write"]);
    assert_eq!(c.authorization_details.len(), 2);
    assert_eq!(
        c.authorization_details[0].identifier.as_deref(),
        Some("record-9")
    );
    assert_eq!(
        c.authorization_details[0].locations,
        ["https://api.hospital.example"]
    );

    let unknown = json!([{"type": "marketing", "actions": ["read"]}]);
    refused(
        &v,
        &es256(&with(claims(), json!({"authorization_details": unknown}))),
        NOW,
        TokenError::UnknownAuthorizationDetailsType,
    );
    refused(&v, &es256(&claims()), NOW, TokenError::MissingClaim);
    refused(
        &v,
        &es256(&with(
            claims(),
            json!({"authorization_details": {"type": "billing"}}),
        )),
        NOW,
        TokenError::InvalidClaim,
    );
    refused(
        &v,
        &es256(&with(
            claims(),
            json!({"authorization_details": [{"actions": ["read"]}]}),
        )),
        NOW,
        TokenError::InvalidClaim,
    );
}

// ---------------------------------------------------------------------------------------
// Revocation.

#[test]
fn a_deny_listed_consent_is_revoked_even_as_a_high_s_twin() {
    // Tokens without a status reference, so only the deny-list decides.
    let mut cfg = issuer_json();
    cfg["revocation"]["status_list"]["require_status_claim"] = json!(false);
    let v = verifier_with(cfg);
    let t = es256(&with(claims(), json!({"jti": "consent-revoked"})));
    let twin = malleate(&t);
    assert_ne!(t, twin);
    let mut cache = TokenCache::default();
    for token in [&t, &twin] {
        let consent = v.verify_cached(&mut cache, token.as_bytes(), NOW).unwrap();
        assert_eq!(
            v.check_revocation(&consent, None, NOW),
            Err(TokenError::Revoked)
        );
        let err = v
            .check(&mut cache, token.as_bytes(), NOW, &(), &Peer::default())
            .unwrap_err();
        assert_eq!(err, TokenError::Revoked);
        assert_eq!(err.code(), Code::ConsentRevoked);
    }
    assert!(
        v.check(
            &mut cache,
            es256(&claims()).as_bytes(),
            NOW,
            &(),
            &Peer::default()
        )
        .is_ok()
    );
}

fn status_list_jwt(key: Key, kid: &str, claims: Value) -> String {
    sign_json(
        key,
        JAlg::ES256,
        &json!({"alg": "ES256", "kid": kid, "typ": "statuslist+jwt"}),
        &claims,
    )
}

fn list_claims(uri: &str) -> Value {
    // draft-20 §4.2's 2-bit example: 1 2 0 3 0 1 0 1 1 2 3 3
    json!({"iss": ISS, "sub": uri, "iat": NOW - 100, "ttl": 300,
           "status_list": {"bits": 2, "lst": "eNo76fITAAPfAgc"}})
}

#[test]
fn the_status_list_decides_valid_invalid_suspended_and_others() {
    let v = verifier();
    let uri = format!("{PREFIX}7");
    let list = v
        .load_status_list(
            ISS,
            &uri,
            status_list_jwt(Key::EsA, "es256-a", list_claims(&uri)).as_bytes(),
            NOW,
        )
        .unwrap();
    let mut lists = BTreeMap::new();
    lists.insert(uri.clone(), list);
    let mut cache = TokenCache::default();
    for (idx, expected) in [
        (2, Ok(())),
        (0, Err(TokenError::StatusInvalid)),
        (1, Err(TokenError::Suspended)),
        (3, Err(TokenError::StatusUnrecognised)),
        (12, Err(TokenError::StatusIndexOutOfRange)),
    ] {
        let t = es256(&with(
            claims(),
            json!({"jti": format!("c-{idx}"), "status": {"status_list": {"idx": idx, "uri": uri}}}),
        ));
        let got = v
            .check(&mut cache, t.as_bytes(), NOW, &lists, &Peer::default())
            .map(|_| ());
        assert_eq!(got, expected, "idx {idx}");
    }
    assert_eq!(TokenError::Suspended.code(), Code::ConsentSuspended);
    assert_eq!(TokenError::StatusInvalid.code(), Code::ConsentRevoked);

    // No list held, or a list for another URI: fail closed, 503.
    let t = es256(&with(
        claims(),
        json!({"status": {"status_list": {"idx": 2, "uri": uri}}}),
    ));
    let consent = v.verify(t.as_bytes(), NOW).unwrap();
    assert_eq!(
        v.check_revocation(&consent, None, NOW),
        Err(TokenError::StatusListUnavailable)
    );
    let other = StatusList::decode(1, "eNrbuRgAAhcBXQ", 1024).unwrap();
    assert_eq!(
        v.check_revocation(&consent, Some(&other), NOW),
        Err(TokenError::StatusListUnavailable)
    );
    assert_eq!(TokenError::StatusListUnavailable.class().status(), 503);
}

#[test]
fn a_status_list_is_used_until_its_ttl_plus_the_staleness_then_refused() {
    let v = verifier(); // max_staleness 300 by default
    let uri = format!("{PREFIX}7");
    let list = v
        .load_status_list(
            ISS,
            &uri,
            status_list_jwt(Key::EsA, "es256-a", list_claims(&uri)).as_bytes(),
            NOW,
        )
        .unwrap();
    assert_eq!(list.fresh_until(), NOW - 100 + 300);
    let t = es256(&with(
        claims(),
        json!({"exp": NOW + 3000, "status": {"status_list": {"idx": 2, "uri": uri}}}),
    ));
    let consent = v.verify(t.as_bytes(), NOW).unwrap();
    let last = NOW - 100 + 300 + 300;
    assert_eq!(v.check_revocation(&consent, Some(&list), last), Ok(()));
    assert_eq!(
        v.check_revocation(&consent, Some(&list), last + 1),
        Err(TokenError::StatusListUnavailable)
    );
    // exp sooner than iat + ttl wins.
    let short = with(list_claims(&uri), json!({"exp": NOW + 10}));
    let list = v
        .load_status_list(
            ISS,
            &uri,
            status_list_jwt(Key::EsA, "es256-a", short).as_bytes(),
            NOW,
        )
        .unwrap();
    assert_eq!(list.fresh_until(), NOW + 10);
    // A list already too old on arrival is refused.
    let old = with(list_claims(&uri), json!({"iat": NOW - 10_000}));
    let err = v
        .load_status_list(
            ISS,
            &uri,
            status_list_jwt(Key::EsA, "es256-a", old).as_bytes(),
            NOW,
        )
        .unwrap_err();
    assert_eq!(err, TokenError::StatusListInvalid);
}

#[test]
fn status_list_tokens_are_checked_like_tokens() {
    let v = verifier();
    let uri = format!("{PREFIX}7");
    let load = |jwt: String| v.load_status_list(ISS, &uri, jwt.as_bytes(), NOW);
    let good = list_claims(&uri);
    assert!(load(status_list_jwt(Key::EsA, "es256-a", good.clone())).is_ok());
    // wrong typ
    let at = sign_json(
        Key::EsA,
        JAlg::ES256,
        &json!({"alg": "ES256", "kid": "es256-a", "typ": "at+jwt"}),
        &good,
    );
    assert_eq!(load(at), Err(TokenError::WrongType));
    // signed by another key under this kid
    assert_eq!(
        load(status_list_jwt(Key::EsB, "es256-a", good.clone())),
        Err(TokenError::BadSignature)
    );
    // sub is another list, iss another issuer, no iat, iat in the future, bits 3, lst missing
    for patch in [
        json!({"sub": format!("{PREFIX}8")}),
        json!({"iss": "https://evil.example"}),
        json!({"iat": null}),
        json!({"iat": NOW + SKEW + 1}),
        json!({"status_list": {"bits": 3, "lst": "eNo76fITAAPfAgc"}}),
        json!({"status_list": {"bits": 2}}),
    ] {
        let jwt = status_list_jwt(Key::EsA, "es256-a", with(good.clone(), patch.clone()));
        assert_eq!(load(jwt), Err(TokenError::StatusListInvalid), "{patch}");
    }
    // a zip bomb: 64 MiB of zeros compresses to a few KiB, and is cut at max_bytes.
    let bomb = zlib_zeros(64 * 1024 * 1024);
    let jwt = status_list_jwt(
        Key::EsA,
        "es256-a",
        with(good, json!({"status_list": {"bits": 1, "lst": b64(&bomb)}})),
    );
    assert_eq!(load(jwt), Err(TokenError::StatusListTooLarge));
}

/// A zlib stream of `n` zero bytes: about a thousandth of `n`.
fn zlib_zeros(n: usize) -> Vec<u8> {
    miniz_oxide::deflate::compress_to_vec_zlib(&vec![0u8; n], 10)
}

#[test]
fn status_uris_outside_the_configured_prefix_are_refused() {
    let v = verifier();
    for uri in [
        "https://evil.example/statuslists/1",
        "https://consent.example.com/other/1",
        "https://consent.example.com/statuslists/../admin",
        "http://consent.example.com/statuslists/1",
    ] {
        let t = es256(&with(
            claims(),
            json!({"status": {"status_list": {"idx": 0, "uri": uri}}}),
        ));
        refused(&v, &t, NOW, TokenError::StatusUriNotAllowed);
    }
    // An issuer without a status list source cannot accept tokens that reference one.
    let mut cfg = issuer_json();
    cfg["revocation"] = json!({});
    let v = verifier_with(cfg);
    let t = es256(&with(
        claims(),
        json!({"status": {"status_list": {"idx": 0, "uri": format!("{PREFIX}1")}}}),
    ));
    refused(&v, &t, NOW, TokenError::StatusUriNotAllowed);
    let t = es256(&with(
        claims(),
        json!({"status": {"status_list": {"idx": -1, "uri": format!("{PREFIX}1")}}}),
    ));
    refused(&verifier(), &t, NOW, TokenError::InvalidClaim);
}

#[test]
fn an_issuer_with_a_status_list_refuses_tokens_that_reference_none() {
    let v = verifier();
    let mut cache = TokenCache::default();
    // No `status`, or a `status` with another mechanism than a status list: revocation
    // could not be checked, so the token is refused, never waved through.
    for patch in [
        json!({}),
        json!({"status": {"other_mechanism": {"idx": 0}}}),
    ] {
        let t = es256(&with(claims(), patch.clone()));
        let consent = v.verify(t.as_bytes(), NOW).unwrap();
        assert_eq!(consent.status, None);
        let err = v.check_revocation(&consent, None, NOW).unwrap_err();
        assert_eq!(err, TokenError::StatusMissing, "{patch}");
        assert_eq!(err.as_str(), "status_missing");
        assert_eq!(err.code(), Code::TokenInvalid);
        assert_no_leak(err);
        let lists: BTreeMap<String, StatusList> = BTreeMap::new();
        assert_eq!(
            v.check(&mut cache, t.as_bytes(), NOW, &lists, &Peer::default())
                .unwrap_err(),
            TokenError::StatusMissing
        );
    }
    // The deny-list is still consulted first.
    let denied = es256(&with(claims(), json!({"jti": "consent-revoked"})));
    let consent = v.verify(denied.as_bytes(), NOW).unwrap();
    assert_eq!(
        v.check_revocation(&consent, None, NOW),
        Err(TokenError::Revoked)
    );

    // Only where the configuration says so explicitly is such a token accepted.
    let mut cfg = issuer_json();
    cfg["revocation"]["status_list"]["require_status_claim"] = json!(false);
    let lax = verifier_with(cfg);
    let t = es256(&claims());
    let consent = lax.verify(t.as_bytes(), NOW).unwrap();
    assert_eq!(lax.check_revocation(&consent, None, NOW), Ok(()));
    // An issuer without a status list has nothing to check against.
    let mut cfg = issuer_json();
    cfg["revocation"] = json!({});
    let none = verifier_with(cfg);
    assert_eq!(none.check_revocation(&consent, None, NOW), Ok(()));
}

#[test]
fn a_status_list_survives_its_compact_form() {
    let v = verifier();
    let uri = format!("{PREFIX}7");
    let list = v
        .load_status_list(
            ISS,
            &uri,
            status_list_jwt(Key::EsA, "es256-a", list_claims(&uri)).as_bytes(),
            NOW,
        )
        .unwrap();
    let copy = StatusList::from_bytes(&list.to_bytes()).unwrap();
    assert_eq!(copy, list);
    let t = es256(&with(
        claims(),
        json!({"status": {"status_list": {"idx": 1, "uri": uri}}}),
    ));
    let consent = v.verify(t.as_bytes(), NOW).unwrap();
    assert_eq!(
        v.check_revocation(&consent, Some(&copy), NOW),
        Err(TokenError::Suspended)
    );
}

// ---------------------------------------------------------------------------------------
// Sender binding.

fn cert(name: &str) -> String {
    fixture(&format!("certs/{name}.pem"))
}

fn cert_sha256(name: &str) -> [u8; 32] {
    let pem = cert(name);
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    Sha256::digest(der).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_certificate_bound_token_passes_only_with_that_certificate() {
    let v = verifier();
    let digest = cert_sha256("one-uri");
    let bound = es256(&with(claims(), json!({"cnf": {"x5t#S256": b64(&digest)}})));
    let consent = v.verify(bound.as_bytes(), NOW).unwrap();
    assert_eq!(consent.cnf_x5t_s256, Some(digest));

    let right = hex(&digest);
    let wrong = hex(&cert_sha256("two-uris"));
    let pem = cert("one-uri");
    assert_eq!(
        v.check_binding(
            &consent,
            &Peer {
                sha256_hex: Some(&right),
                certificate_pem: None
            }
        ),
        Ok(())
    );
    assert_eq!(
        v.check_binding(
            &consent,
            &Peer {
                sha256_hex: Some(&right.to_uppercase()),
                certificate_pem: None
            }
        ),
        Ok(())
    );
    assert_eq!(
        v.check_binding(
            &consent,
            &Peer {
                sha256_hex: None,
                certificate_pem: Some(&pem)
            }
        ),
        Ok(())
    );
    for peer in [
        Peer {
            sha256_hex: Some(&wrong),
            certificate_pem: None,
        },
        Peer {
            sha256_hex: Some("not hex"),
            certificate_pem: None,
        },
        Peer::default(),
    ] {
        let err = v.check_binding(&consent, &peer).unwrap_err();
        assert_eq!(err, TokenError::Unbound);
        assert_eq!(err.class(), ErrorClass::Unbound);
        assert_eq!(err.code(), Code::TokenUnbound);
    }
    // Bound or not, a token with an unknown confirmation method is refused.
    let dpop = es256(&with(
        claims(),
        json!({"cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}),
    ));
    refused(&v, &dpop, NOW, TokenError::UnsupportedConfirmation);
    let short = es256(&with(
        claims(),
        json!({"cnf": {"x5t#S256": b64(&digest[..31])}}),
    ));
    refused(&v, &short, NOW, TokenError::InvalidClaim);
}

#[test]
fn binding_can_be_required() {
    let v = verifier_with(with(
        issuer_json(),
        json!({"binding": {"require_certificate_binding": true}}),
    ));
    let consent = v.verify(es256(&claims()).as_bytes(), NOW).unwrap();
    let right = hex(&cert_sha256("one-uri"));
    let peer = Peer {
        sha256_hex: Some(&right),
        certificate_pem: None,
    };
    assert_eq!(v.check_binding(&consent, &peer), Err(TokenError::Unbound));
}

#[test]
fn the_spiffe_id_is_the_certificates_one_uri_san_and_must_be_the_grantee() {
    let v = verifier_with(with(
        issuer_json(),
        json!({"binding": {"require_spiffe_grantee": true}}),
    ));
    let consent = v.verify(es256(&claims()).as_bytes(), NOW).unwrap();
    let check = |name: &str| {
        let pem = cert(name);
        v.check_binding(
            &consent,
            &Peer {
                sha256_hex: None,
                certificate_pem: Some(&pem),
            },
        )
    };
    assert_eq!(check("one-uri"), Ok(()));
    assert_eq!(check("dns-and-uri"), Ok(()));
    assert_eq!(check("two-uris"), Err(TokenError::PeerCertificateInvalid));
    assert_eq!(check("dns-only"), Err(TokenError::PeerCertificateInvalid));
    assert_eq!(check("no-san"), Err(TokenError::PeerCertificateInvalid));
    assert_eq!(
        v.check_binding(&consent, &Peer::default()),
        Err(TokenError::Unbound)
    );
    let other = v
        .verify(
            es256(&with(
                claims(),
                json!({"client_id": "spiffe://partner.example/other"}),
            ))
            .as_bytes(),
            NOW,
        )
        .unwrap();
    let pem = cert("one-uri");
    assert_eq!(
        v.check_binding(
            &other,
            &Peer {
                sha256_hex: None,
                certificate_pem: Some(&pem)
            }
        ),
        Err(TokenError::GranteeMismatch)
    );
    assert_eq!(
        consentry_core::token::spiffe_id_from_pem(&cert("dns-and-uri")).unwrap(),
        "spiffe://partner.example/insurer"
    );
}

// ---------------------------------------------------------------------------------------
// Cache, keys at run time.

#[test]
fn the_cache_answers_until_expiry_and_is_keyed_by_a_digest() {
    let v = verifier();
    let mut cache = TokenCache::new(2);
    let t = es256(&claims());
    let a = v.verify_cached(&mut cache, t.as_bytes(), NOW).unwrap();
    let b = v.verify_cached(&mut cache, t.as_bytes(), NOW + 1).unwrap();
    assert!(Arc::ptr_eq(&a, &b), "the second lookup is a hit");
    assert_eq!(cache.stats(), (1, 1));
    let key = TokenCache::key(t.as_bytes());
    assert_eq!(key, <[u8; 32]>::from(Sha256::digest(t.as_bytes())));
    // After exp + skew the entry no longer answers, and verification says expired.
    assert_eq!(
        v.verify_cached(&mut cache, t.as_bytes(), NOW + 600 + SKEW)
            .unwrap_err(),
        TokenError::Expired
    );

    // Bounded: the least recently used entry goes.
    let t1 = es256(&with(claims(), json!({"jti": "c-1"})));
    let t2 = es256(&with(claims(), json!({"jti": "c-2"})));
    let t3 = es256(&with(claims(), json!({"jti": "c-3"})));
    for t in [&t1, &t2, &t1, &t3] {
        v.verify_cached(&mut cache, t.as_bytes(), NOW).unwrap();
    }
    assert_eq!(cache.len(), 2);
    let (hits, misses) = cache.stats();
    v.verify_cached(&mut cache, t1.as_bytes(), NOW).unwrap();
    assert_eq!(
        cache.stats(),
        (hits + 1, misses),
        "t1 was used recently and stayed"
    );
    v.verify_cached(&mut cache, t2.as_bytes(), NOW).unwrap();
    assert_eq!(cache.stats(), (hits + 1, misses + 1), "t2 was evicted");
}

#[test]
fn the_cache_keeps_the_raw_claims_only_when_the_policy_reads_them() {
    let v = verifier();
    let t = es256(&claims());
    let mut keeping = TokenCache::new(4);
    for _ in 0..2 {
        let c = v.verify_cached(&mut keeping, t.as_bytes(), NOW).unwrap();
        assert_eq!(c.claims["sub"], claims()["sub"], "miss, then hit");
    }
    let mut lean = TokenCache::new(4).keeping_claims(false);
    for _ in 0..2 {
        let c = v.verify_cached(&mut lean, t.as_bytes(), NOW).unwrap();
        assert!(c.claims.is_null(), "miss, then hit");
        // The typed consent is whole either way.
        assert_eq!(c.subject, claims()["sub"].as_str().unwrap());
        assert!(!c.purposes.is_empty());
    }
    assert_eq!(lean.stats(), (1, 1));
}

#[test]
fn remote_keys_arrive_at_run_time_and_unknown_kids_refetch_at_a_bounded_rate() {
    let remote_only = with(
        issuer_json(),
        json!({"keys": {"remote": {"cluster": "consent", "path": "/.well-known/jwks.json", "min_refetch_interval_seconds": 30}}}),
    );
    let mut v = verifier_with(remote_only);
    let t = es256(&claims());
    let err = v.verify(t.as_bytes(), NOW).unwrap_err();
    assert_eq!(err, TokenError::KeysUnavailable);
    assert_eq!(err.class(), ErrorClass::Unavailable);
    assert!(err.needs_key_refetch());
    assert_eq!(
        v.unverified_issuer(t.as_bytes()).map(|i| i.issuer.as_str()),
        Some(ISS)
    );
    assert!(v.may_refetch(ISS, NOW));
    assert!(!v.may_refetch(ISS, NOW + 29));
    assert!(v.may_refetch(ISS, NOW + 30));

    let generation = v.key_generation();
    let skipped = v
        .load_remote_jwks(ISS, fixture("jwks.json").as_bytes())
        .unwrap();
    assert!(skipped.is_empty());
    assert_ne!(v.key_generation(), generation);
    assert!(v.verify(t.as_bytes(), NOW).is_ok());

    // The same document again changes nothing, so cached verdicts stay usable.
    let generation = v.key_generation();
    v.load_remote_jwks(ISS, fixture("jwks.json").as_bytes())
        .unwrap();
    assert_eq!(v.key_generation(), generation);

    // A rotation that drops the key: cached verdicts stop answering at once.
    let mut cache = TokenCache::default();
    v.verify_cached(&mut cache, t.as_bytes(), NOW).unwrap();
    let mut rotated = jwks();
    rotated["keys"].as_array_mut().unwrap().remove(0);
    v.load_remote_jwks(ISS, rotated.to_string().as_bytes())
        .unwrap();
    assert_eq!(
        v.verify_cached(&mut cache, t.as_bytes(), NOW).unwrap_err(),
        TokenError::UnknownKid
    );

    // A document that is not a JWKS leaves the keys as they were.
    assert!(v.load_remote_jwks(ISS, b"<html>").is_err());
    assert!(v.verify(es256(&claims()).as_bytes(), NOW).is_err());
    let b = sign_json(
        Key::EsB,
        JAlg::ES256,
        &json!({"alg": "ES256", "kid": "es256-b", "typ": "at+jwt"}),
        &claims(),
    );
    assert!(v.verify(b.as_bytes(), NOW).is_ok());
}

#[test]
fn every_refusal_maps_to_one_masked_class() {
    use TokenError::*;
    for (e, status) in [
        (Missing, 401),
        (BadSignature, 401),
        (UnknownKid, 401),
        (Expired, 401),
        (Revoked, 403),
        (Suspended, 403),
        (Unbound, 401),
        (GranteeMismatch, 401),
        (StatusMissing, 401),
        (KeysUnavailable, 503),
        (StatusListUnavailable, 503),
    ] {
        assert_eq!(e.class().status(), status, "{e:?}");
        assert_eq!(e.class().code().status(), status, "{e:?}");
    }
    assert_eq!(Missing.code(), Code::TokenMissing);
    assert_eq!(UnknownKid.code(), Code::TokenInvalid);
    assert_eq!(StatusMissing.code(), Code::TokenInvalid);
    assert_eq!(Unbound.code(), Code::TokenUnbound);
}

#[test]
fn consent_is_cheap_to_share() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Consent>();
    assert_send_sync::<Verifier>();
}
