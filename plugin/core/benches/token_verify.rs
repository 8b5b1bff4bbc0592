//! Consent-token verification cost, natively: `cargo bench -p consentry-core --bench
//! token_verify`. Prints one table (microseconds per token, best of seven rounds) with
//! ratios against Consentry's cold ES256 verification. The in-wasm figures come from the
//! harness, which calls the same entry point (`Verifier::verify`).
// Bench code: a failed unwrap is a broken bench.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Instant;

use consentry_core::token::{KeyMaterial, KeySet, TokenCache, Verifier, compile_issuers};
use jsonwebtoken::{Algorithm as JAlg, DecodingKey, EncodingKey, Header, Validation};
use p256::ecdsa::signature::Verifier as _;
use serde_json::{Value, json};

const ISS: &str = "https://consent.example.com";
const AUD: &str = "https://api.hospital.example";
const NOW: u64 = 1_800_000_000;

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/tokens/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn claims() -> Value {
    json!({
        "iss": ISS, "aud": AUD, "sub": "patient-1", "jti": "consent-1",
        "client_id": "spiffe://partner.example/insurer",
        "iat": NOW - 10, "exp": NOW + 600,
        "purpose": ["treatment"], "data_domains": ["lab_results"], "actions": ["read"]
    })
}

fn mint(alg: JAlg, kid: &str, key_file: &str) -> String {
    let pem = fixture(&format!("keys/{key_file}.pem"));
    let key = match alg {
        JAlg::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        JAlg::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    header.typ = Some("at+jwt".into());
    jsonwebtoken::encode(&header, &claims(), &key).unwrap()
}

/// The best of seven rounds of the mean time per call, in microseconds (the best, since
/// the machine is shared and interference only ever adds time).
fn measure(iterations: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..iterations.div_ceil(10) {
        f();
    }
    (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                f();
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
        })
        .fold(f64::INFINITY, f64::min)
}

fn jwt_validation(alg: JAlg) -> Validation {
    let mut v = Validation::new(alg);
    v.set_audience(&[AUD]);
    v.set_issuer(&[ISS]);
    // jsonwebtoken reads the clock itself; the fixture tokens are minted for NOW.
    v.validate_exp = false;
    v
}

fn main() {
    let jwks: Value = serde_json::from_str(&fixture("jwks.json")).unwrap();
    let issuers = compile_issuers(
        &json!([{
            "issuer": ISS,
            "algorithms": ["ES256", "RS256", "PS256", "EdDSA"],
            "audiences": [AUD],
            "typ": "at+jwt",
            "keys": {"inline": jwks}
        }]),
        "$.issuers",
    )
    .unwrap();
    let verifier = Verifier::new(issuers);
    let keys = verifier.keys(ISS).unwrap().clone();

    let es = mint(JAlg::ES256, "es256-a", "es256-a");
    let rs = mint(JAlg::RS256, "rs2048", "rs2048");
    let ps = mint(JAlg::PS256, "rs2048", "rs2048");
    let ed = mint(JAlg::EdDSA, "ed25519", "ed25519");

    // The ES256 signature alone, three ways.
    let (input, sig_b64) = es.rsplit_once('.').unwrap();
    let sig = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig_b64)
            .unwrap()
    };
    let es_key = keys
        .iter()
        .find_map(|k| match (k.kid(), k.material()) {
            (Some("es256-a"), KeyMaterial::P256(key)) => Some(key.clone()),
            _ => None,
        })
        .unwrap();
    let jwk_a = &jwks["keys"][0];
    let p256_key = {
        use base64::Engine as _;
        let b = |s: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s.as_str().unwrap())
                .unwrap()
        };
        let point = [vec![4u8], b(&jwk_a["x"]), b(&jwk_a["y"])].concat();
        p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap()
    };
    let p256_sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();

    let dec_es =
        DecodingKey::from_ec_components(jwk_a["x"].as_str().unwrap(), jwk_a["y"].as_str().unwrap())
            .unwrap();
    let rsa_jwk = &jwks["keys"][3];
    let dec_rs = DecodingKey::from_rsa_components(
        rsa_jwk["n"].as_str().unwrap(),
        rsa_jwk["e"].as_str().unwrap(),
    )
    .unwrap();
    let dec_ed = DecodingKey::from_ed_components(jwks["keys"][4]["x"].as_str().unwrap()).unwrap();
    let (val_es, val_rs, val_ps, val_ed) = (
        jwt_validation(JAlg::ES256),
        jwt_validation(JAlg::RS256),
        jwt_validation(JAlg::PS256),
        jwt_validation(JAlg::EdDSA),
    );
    for (t, k, v) in [
        (&es, &dec_es, &val_es),
        (&rs, &dec_rs, &val_rs),
        (&ps, &dec_rs, &val_ps),
        (&ed, &dec_ed, &val_ed),
    ] {
        jsonwebtoken::decode::<Value>(t, k, v).unwrap();
    }
    for t in [&es, &rs, &ps, &ed] {
        verifier.verify(t.as_bytes(), NOW).unwrap();
    }

    let mut cache = TokenCache::default();
    verifier
        .verify_cached(&mut cache, es.as_bytes(), NOW)
        .unwrap();

    let jwks_one_ec = json!({"keys": [jwk_a]}).to_string();

    let rows: Vec<(&str, f64)> = vec![
        (
            "ES256 token, Consentry (precomputed tables)",
            measure(2000, || {
                black_box(verifier.verify(black_box(es.as_bytes()), NOW).unwrap());
            }),
        ),
        (
            "ES256 signature only, precomputed tables",
            measure(2000, || {
                es_key
                    .verify(black_box(input.as_bytes()), black_box(&sig))
                    .unwrap();
            }),
        ),
        (
            "ES256 signature only, p256 group law, no tables",
            measure(500, || {
                es_key
                    .verify_without_tables(black_box(input.as_bytes()), black_box(&sig))
                    .unwrap();
            }),
        ),
        (
            "ES256 signature only, p256::ecdsa::VerifyingKey",
            measure(500, || {
                p256_key
                    .verify(black_box(input.as_bytes()), black_box(&p256_sig))
                    .unwrap();
            }),
        ),
        (
            "ES256 token, jsonwebtoken::decode",
            measure(500, || {
                black_box(jsonwebtoken::decode::<Value>(black_box(&es), &dec_es, &val_es).unwrap());
            }),
        ),
        (
            "RS256 token, Consentry",
            measure(2000, || {
                black_box(verifier.verify(black_box(rs.as_bytes()), NOW).unwrap());
            }),
        ),
        (
            "RS256 token, jsonwebtoken::decode",
            measure(2000, || {
                black_box(jsonwebtoken::decode::<Value>(black_box(&rs), &dec_rs, &val_rs).unwrap());
            }),
        ),
        (
            "PS256 token, Consentry",
            measure(2000, || {
                black_box(verifier.verify(black_box(ps.as_bytes()), NOW).unwrap());
            }),
        ),
        (
            "PS256 token, jsonwebtoken::decode",
            measure(2000, || {
                black_box(jsonwebtoken::decode::<Value>(black_box(&ps), &dec_rs, &val_ps).unwrap());
            }),
        ),
        (
            "EdDSA token, Consentry",
            measure(2000, || {
                black_box(verifier.verify(black_box(ed.as_bytes()), NOW).unwrap());
            }),
        ),
        (
            "EdDSA token, jsonwebtoken::decode",
            measure(2000, || {
                black_box(jsonwebtoken::decode::<Value>(black_box(&ed), &dec_ed, &val_ed).unwrap());
            }),
        ),
        (
            "cache hit (ES256 token, SHA-256 of the token + lookup)",
            measure(20_000, || {
                black_box(
                    verifier
                        .verify_cached(&mut cache, black_box(es.as_bytes()), NOW)
                        .unwrap(),
                );
            }),
        ),
        (
            "key load: one P-256 JWK with its table",
            measure(50, || {
                black_box(KeySet::from_jwks(black_box(jwks_one_ec.as_bytes())).unwrap());
            }),
        ),
    ];

    let base = rows[0].1;
    println!();
    println!(
        "| {:<56} | {:>10} | {:>12} |",
        "consent-token verification (native)", "µs/token", "× ES256 cold"
    );
    println!("|{:-<58}|{:->12}|{:->14}|", "", "", "");
    for (name, us) in &rows {
        println!("| {name:<56} | {us:>10.2} | {:>12.2} |", us / base);
    }
    let table_kib = es_key.table_bytes() as f64 / 1024.0;
    println!();
    println!("per-key ES256 table: {table_kib:.0} KiB; the generator's table is built once per VM");
}
