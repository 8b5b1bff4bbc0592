//! Standard vectors for the token verifier, read from `tests/vectors/` (its README names
//! each file's source and licence):
//!
//! - Project Wycheproof: every signature path (ES256 through the precomputed tables and
//!   through p256's generic arithmetic, RS256, PS256, EdDSA) agrees with every `valid` and
//!   `invalid` verdict. The one `acceptable` case (RSA PKCS#1 v1.5 with the DigestInfo's
//!   NULL parameters missing) is refused: JWS RS256 signatures carry the standard encoding,
//!   and a verifier that accepts only that has one encoding to get right.
//! - IETF OAuth Token Status List (draft 20): every encoding decodes to the listed statuses,
//!   and the draft's example Status List Token (high-S) verifies with its key.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use consentry_core::token::{
    Algorithm, KeyMaterial, KeySet, StatusList, TokenError, compile_issuers,
};
use serde_json::{Value, json};

fn vectors(path: &str) -> Value {
    let full = format!("{}/tests/vectors/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

struct Tally {
    valid: usize,
    invalid: usize,
    acceptable: usize,
}

/// Runs every test of a Wycheproof file through `verify(group_jwk, msg, sig)`.
fn run(file: &str, jwk_member: &str, verify: impl Fn(&KeySet, &[u8], &[u8]) -> bool) -> Tally {
    let doc = vectors(&format!("wycheproof/{file}"));
    let mut tally = Tally {
        valid: 0,
        invalid: 0,
        acceptable: 0,
    };
    for group in doc["testGroups"].as_array().unwrap() {
        let jwk = match &group[jwk_member] {
            Value::Null => ec_jwk_from_coordinates(group),
            jwk => jwk.clone(),
        };
        let jwks = json!({"keys": [jwk]});
        let keys = KeySet::from_jwks(jwks.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{file}: group key refused: {e}"));
        for test in group["tests"].as_array().unwrap() {
            let id = &test["tcId"];
            let msg = unhex(test["msg"].as_str().unwrap());
            let sig = unhex(test["sig"].as_str().unwrap());
            let ok = verify(&keys, &msg, &sig);
            match test["result"].as_str().unwrap() {
                "valid" => {
                    assert!(ok, "{file} #{id} is valid: {}", test["comment"]);
                    tally.valid += 1;
                }
                "invalid" => {
                    assert!(!ok, "{file} #{id} is invalid: {}", test["comment"]);
                    tally.invalid += 1;
                }
                _ => {
                    assert!(
                        !ok,
                        "{file} #{id} is acceptable and refused here: {}",
                        test["comment"]
                    );
                    tally.acceptable += 1;
                }
            }
        }
    }
    tally
}

/// Some ECDSA groups give the key only as hex coordinates: build its JWK.
fn ec_jwk_from_coordinates(group: &Value) -> Value {
    let coordinate = |name: &str| {
        let bytes = unhex(group["publicKey"][name].as_str().unwrap());
        let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
        let mut padded = vec![0u8; 32usize.saturating_sub(trimmed.len())];
        padded.extend(trimmed);
        base64_url_encode(&padded)
    };
    json!({"kty": "EC", "crv": "P-256", "x": coordinate("wx"), "y": coordinate("wy")})
}

fn with_one_key(keys: &KeySet, alg: Algorithm, msg: &[u8], sig: &[u8]) -> bool {
    let key = keys.iter().next().unwrap();
    key.verify(alg, msg, sig).is_ok()
}

#[test]
fn wycheproof_ecdsa_p256_p1363_through_the_precomputed_tables() {
    let t = run(
        "ecdsa_secp256r1_sha256_p1363_test.json",
        "publicKeyJwk",
        |k, m, s| with_one_key(k, Algorithm::Es256, m, s),
    );
    assert_eq!((t.valid, t.invalid, t.acceptable), (173, 89, 0));
}

#[test]
fn wycheproof_ecdsa_p256_p1363_through_generic_p256_arithmetic() {
    let t = run(
        "ecdsa_secp256r1_sha256_p1363_test.json",
        "publicKeyJwk",
        |k, m, s| match k.iter().next().unwrap().material() {
            KeyMaterial::P256(key) => key.verify_without_tables(m, s).is_ok(),
            other => panic!("{other:?}"),
        },
    );
    assert_eq!(t.valid + t.invalid, 262);
}

#[test]
fn wycheproof_rsa_pkcs1_v1_5_2048_sha256() {
    let t = run(
        "rsa_signature_2048_sha256_test.json",
        "keyJwk",
        |k, m, s| with_one_key(k, Algorithm::Rs256, m, s),
    );
    assert_eq!((t.valid, t.invalid, t.acceptable), (9, 249, 1));
}

#[test]
fn wycheproof_rsa_pss_2048_sha256_mgf1_salt_32() {
    let t = run(
        "rsa_pss_2048_sha256_mgf1_32_test.json",
        "publicKeyJwk",
        |k, m, s| with_one_key(k, Algorithm::Ps256, m, s),
    );
    assert_eq!((t.valid, t.invalid, t.acceptable), (63, 45, 0));
}

#[test]
fn wycheproof_ed25519() {
    let t = run("ed25519_test.json", "publicKeyJwk", |k, m, s| {
        with_one_key(k, Algorithm::EdDsa, m, s)
    });
    assert_eq!((t.valid, t.invalid, t.acceptable), (88, 63, 0));
}

#[test]
fn wycheproof_keys_verify_nothing_under_another_algorithm() {
    let doc = vectors("wycheproof/rsa_signature_2048_sha256_test.json");
    let group = &doc["testGroups"][0];
    let keys =
        KeySet::from_jwks(json!({"keys": [group["keyJwk"]]}).to_string().as_bytes()).unwrap();
    let test = &group["tests"][0];
    let (msg, sig) = (
        unhex(test["msg"].as_str().unwrap()),
        unhex(test["sig"].as_str().unwrap()),
    );
    let key = keys.iter().next().unwrap();
    assert!(key.verify(Algorithm::Rs256, &msg, &sig).is_ok());
    // The JWK says RS256, so the same key refuses PS256 (and everything else).
    assert_eq!(
        key.verify(Algorithm::Ps256, &msg, &sig),
        Err(TokenError::KeyMismatch)
    );
    assert_eq!(
        key.verify(Algorithm::Es256, &msg, &sig),
        Err(TokenError::KeyMismatch)
    );
}

// ---------------------------------------------------------------------------------------
// Token Status List.

#[test]
fn status_list_encodings_decode_to_the_listed_statuses() {
    let doc = vectors("token-status-list.json");
    let list = doc["vectors"].as_array().unwrap();
    assert_eq!(list.len(), 6);
    for v in list {
        let name = v["name"].as_str().unwrap();
        let bits = v["bits"].as_u64().unwrap();
        let entries = v["entries"].as_u64().unwrap();
        let decoded = StatusList::decode(bits, v["lst"].as_str().unwrap(), 16 * 1024 * 1024)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(decoded.len(), entries, "{name}");
        let nonzero: Vec<(u64, u8)> = v["nonzero"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.as_u64().unwrap() as u8))
            .collect();
        // The file lists at most 64 non-zero statuses; below the last one listed, every
        // other status is 0 (and everywhere, when fewer than 64 are listed).
        let checked_up_to = if nonzero.len() < 64 {
            entries
        } else {
            nonzero.iter().map(|(i, _)| *i).max().unwrap() + 1
        };
        for idx in 0..checked_up_to {
            let expected = nonzero
                .iter()
                .find(|(i, _)| *i == idx)
                .map_or(0, |(_, s)| *s);
            assert_eq!(decoded.value(idx), Some(expected), "{name}[{idx}]");
        }
        for (idx, status) in &nonzero {
            assert_eq!(decoded.value(*idx), Some(*status), "{name}[{idx}]");
            let verdict = decoded.status(*idx);
            match status {
                1 => assert_eq!(verdict, Err(TokenError::StatusInvalid)),
                2 => assert_eq!(verdict, Err(TokenError::Suspended)),
                _ => assert_eq!(verdict, Err(TokenError::StatusUnrecognised)),
            }
        }
        assert_eq!(decoded.value(entries), None, "{name}: one past the end");
        assert_eq!(
            decoded.status(entries),
            Err(TokenError::StatusIndexOutOfRange)
        );
    }
}

#[test]
fn a_status_list_is_inflated_only_up_to_its_cap() {
    let doc = vectors("token-status-list.json");
    let long = &doc["vectors"][0]; // 1 048 576 one-bit statuses: 128 KiB inflated
    let lst = long["lst"].as_str().unwrap();
    assert!(StatusList::decode(1, lst, 128 * 1024).is_ok());
    assert_eq!(
        StatusList::decode(1, lst, 128 * 1024 - 1),
        Err(TokenError::StatusListTooLarge)
    );
}

#[test]
fn the_drafts_status_list_token_verifies_with_its_key_although_high_s() {
    let doc = vectors("token-status-list.json");
    let token = &doc["status_list_token"];
    let jwt = token["jwt"].as_str().unwrap();

    // The signature is high-S: s > n/2.
    let sig = base64_url(jwt.rsplit_once('.').unwrap().1);
    let half_n = unhex("7fffffff800000007fffffffffffffffde737d56d38bcf4279dce5617e3192a8");
    assert!(sig[32..].to_vec() > half_n, "the vector is high-S");

    let issuers = compile_issuers(
        &json!([{
            "issuer": "https://example.com",
            "algorithms": ["ES256"],
            "audiences": ["https://rp.example"],
            "keys": {"inline": {"keys": [token["verifies_with"]]}},
            "revocation": {"status_list": {"cluster": "issuer", "uri_prefix": "https://example.com/statuslists/"}}
        }]),
        "$.issuers",
    )
    .unwrap();
    let issuer = &issuers[0];
    let uri = "https://example.com/statuslists/1";
    let iat = 1_686_920_170;
    let list =
        StatusList::from_jwt(jwt.as_bytes(), issuer, &issuer.inline_keys, uri, iat + 60).unwrap();
    assert_eq!(list.uri(), uri);
    assert_eq!(list.bits(), 1);
    assert_eq!(list.issued_at(), iat);
    assert_eq!(
        list.fresh_until(),
        iat + 43_200,
        "iat + ttl comes before exp"
    );
    let statuses: Vec<u8> = (0..16).map(|i| list.value(i).unwrap()).collect();
    assert_eq!(statuses, [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]);

    // The same token is refused for another URI, and once stale beyond the allowance.
    assert_eq!(
        StatusList::from_jwt(
            jwt.as_bytes(),
            issuer,
            &issuer.inline_keys,
            "https://example.com/statuslists/2",
            iat + 60
        ),
        Err(TokenError::StatusListInvalid)
    );
    assert_eq!(
        StatusList::from_jwt(
            jwt.as_bytes(),
            issuer,
            &issuer.inline_keys,
            uri,
            iat + 43_200 + 300 + 1
        ),
        Err(TokenError::StatusListInvalid)
    );
    // With one signature byte changed, it does not verify.
    let mut bad = sig.clone();
    bad[5] ^= 1;
    let tampered = format!(
        "{}.{}",
        jwt.rsplit_once('.').unwrap().0,
        base64_url_encode(&bad)
    );
    assert_eq!(
        StatusList::from_jwt(
            tampered.as_bytes(),
            issuer,
            &issuer.inline_keys,
            uri,
            iat + 60
        ),
        Err(TokenError::BadSignature)
    );
}

fn base64_url(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

fn base64_url_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}
