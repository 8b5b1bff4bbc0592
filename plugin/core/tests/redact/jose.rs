//! Field encryption read back by an independent JOSE implementation (josekit, over
//! OpenSSL): every encrypted field must decrypt with the recipient's private key to
//! the field's exact JSON text.

use consentry_core::redact::{FieldAction, Unclassified};
use josekit::jwe::{self, ECDH_ES};
use josekit::jwk::Jwk;

use crate::{LIMITS, bob, plan, run_with, vectors};

fn decrypt(compact: &str) -> (Vec<u8>, serde_json::Value) {
    let private = vectors("jwe-ecdh-es-p256.json")["recipient_private_jwk"].clone();
    let jwk = Jwk::from_bytes(serde_json::to_vec(&private).unwrap()).unwrap();
    let decrypter = ECDH_ES.decrypter_from_jwk(&jwk).unwrap();
    let (plaintext, header) = jwe::deserialize_compact(compact, &decrypter).unwrap();
    let header: serde_json::Value = serde_json::from_str(&header.to_string()).unwrap();
    (plaintext, header)
}

#[test]
fn josekit_decrypts_every_encrypted_field() {
    let p = plan(
        &[
            ("$.*", FieldAction::Encrypt),
            ("$.list[*]", FieldAction::Encrypt),
        ],
        Unclassified::Keep,
    );
    // A container under `.*` is encrypted whole; `list` has its own rule below.
    let body =
        r#"{"ssn":"123-45-6789","n":120.50,"o":{"k":[1,"é"]},"t":true,"u":"\u00e9\ud83d\ude00"}"#;
    let recipient = bob();
    let out = run_with(&p, body.as_bytes(), LIMITS, Some(&recipient)).unwrap();
    let out: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
    let originals = [
        ("ssn", r#""123-45-6789""#),
        ("n", "120.50"),
        ("o", r#"{"k":[1,"é"]}"#),
        ("t", "true"),
        ("u", r#""\u00e9\ud83d\ude00""#),
    ];
    let mut epks = Vec::new();
    for (key, original) in originals {
        let (plaintext, header) = decrypt(out[key].as_str().unwrap());
        assert_eq!(String::from_utf8(plaintext).unwrap(), original, "{key}");
        assert_eq!(header["alg"], "ECDH-ES");
        assert_eq!(header["enc"], "A256GCM");
        assert_eq!(header["kid"], "bob-enc-1");
        assert_eq!(header["epk"]["crv"], "P-256");
        epks.push(header["epk"].clone());
    }
    assert!(
        epks.windows(2).all(|w| w[0] == w[1]),
        "one ephemeral key per body"
    );
}

#[test]
fn josekit_decrypts_with_party_info() {
    let recipient = bob().with_party_info(b"consentry", b"partner-7");
    let p = plan(&[("$.a", FieldAction::Encrypt)], Unclassified::Keep);
    let out = run_with(&p, br#"{"a":[1,2]}"#, LIMITS, Some(&recipient)).unwrap();
    let out: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
    let (plaintext, header) = decrypt(out["a"].as_str().unwrap());
    assert_eq!(plaintext, b"[1,2]");
    assert_eq!(header["apu"], "Y29uc2VudHJ5");
    assert_eq!(header["apv"], "cGFydG5lci03");
}

#[test]
fn josekit_decrypts_the_deterministic_vector() {
    let v = vectors("jwe-ecdh-es-p256.json");
    let case = &v["cases"]["ECDH-ES/A256GCM"];
    let (plaintext, _) = decrypt(case["compact"].as_str().unwrap());
    assert_eq!(plaintext, case["plaintext"].as_str().unwrap().as_bytes());
}
