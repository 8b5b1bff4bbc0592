//! The bad-token corpus through the `.wasm`: every token an attacker or a broken
//! issuer could send is refused with the right status and problem code, and the
//! refusal leaks nothing (no token, claim value, key id or internal reason reaches
//! the client). Valid tokens pass: every configured algorithm, the high-S twin of an
//! ES256 signature, RFC 9396 consents, times on the edges of the clock skew.
//!
//! Each refusal is also pinned to its internal reason, read from the audit record the
//! plugin writes (the client never sees it), so a token refused for the wrong reason
//! (a tampered header that only fails because the signature does not match) fails
//! the test.

use std::time::Duration;

use consentry_core::problem::Code;
use consentry_host::{Outcome, Proxy, Request, Response, mint};
use serde_json::{Map, Value, json};

use crate::support::{
    T0, assert_no_leak, assert_problem, b64url, b64url_decode, compact, example_policy,
    hmac_sha256, persona_claims, reason, repo_file, sign_dev, start_at, token_parts,
    upstream_record, verdict,
};

/// The issuer's skew in the example policy.
const SKEW: u64 = 60;

/// The P-256 group order n, big-endian.
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// The insurer's consent (status list 1, index 0: the consent service answers it),
/// issued ten seconds before `now`, valid for an hour.
fn claims_at(now: u64) -> Map<String, Value> {
    persona_claims("insurer", now - 10, 3600)
}

fn insurer_token(now: u64) -> String {
    sign_dev(&claims_at(now))
}

/// A key of the core crate's token fixtures (`plugin/core/tests/fixtures/tokens`).
fn fixture_jwk(kid: &str) -> Value {
    let set: Value =
        serde_json::from_slice(&repo_file("plugin/core/tests/fixtures/tokens/jwks.json")).unwrap();
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("no fixture key {kid}"))
        .clone()
}

fn rsa_pem() -> Vec<u8> {
    repo_file("plugin/core/tests/fixtures/tokens/keys/rs2048.pem")
}

/// The example policy whose issuer also holds a P-384 key (`p384`), an RSA key
/// (`rs2048`) and the Ed25519 development key (`dev-2026-ed`), and allows `algorithms`.
fn policy_with_keys(algorithms: &[&str], edit: impl FnOnce(&mut Value)) -> String {
    let ed: Value = serde_json::from_str(mint::ED25519_JWKS).unwrap();
    example_policy(|p| {
        let issuer = &mut p["issuers"][0];
        issuer["algorithms"] = json!(algorithms);
        let keys = issuer["keys"]["inline"]["keys"].as_array_mut().unwrap();
        keys.push(fixture_jwk("p384"));
        keys.push(fixture_jwk("rs2048"));
        keys.push(ed["keys"][0].clone());
        edit(p);
    })
}

fn get(token: &str) -> Request {
    Request::get("/patients/p-1").bearer(token)
}

/// `n - s` for a 32-byte big-endian `s` below `n`.
fn order_minus(s: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(P256_ORDER[i]) - i16::from(s[i]) - borrow;
        borrow = 0;
        if d < 0 {
            d += 256;
            borrow = 1;
        }
        out[i] = d as u8;
    }
    out
}

fn is_high(s: &[u8]) -> bool {
    // s > n/2 ⇔ 2s > n.
    let mut doubled = [0u8; 33];
    let mut carry = 0u16;
    for i in (0..32).rev() {
        let v = u16::from(s[i]) * 2 + carry;
        doubled[i + 1] = (v & 0xff) as u8;
        carry = v >> 8;
    }
    doubled[0] = carry as u8;
    let mut n = [0u8; 33];
    n[1..].copy_from_slice(&P256_ORDER);
    doubled > n
}

/// The same token with its ECDSA `s` replaced by `n - s`: an equally valid signature.
fn high_s_twin(token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut sig = b64url_decode(sig);
    let twin = order_minus(&sig[32..]);
    sig[32..].copy_from_slice(&twin);
    format!("{input}.{}", b64url(&sig))
}

/// An ECDSA `r ‖ s` signature in ASN.1 DER (`SEQUENCE { INTEGER r, INTEGER s }`), the
/// form X.509 uses and JOSE does not.
fn der_signature(raw: &[u8]) -> Vec<u8> {
    let int = |b: &[u8]| {
        let mut v: Vec<u8> = b.iter().copied().skip_while(|x| *x == 0).collect();
        if v.first().is_none_or(|x| *x >= 0x80) {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, v.len() as u8];
        out.extend(v);
        out
    };
    let body: Vec<u8> = [int(&raw[..32]), int(&raw[32..])].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

fn with_signature(token: &str, sig: &[u8]) -> String {
    let (input, _) = token.rsplit_once('.').unwrap();
    format!("{input}.{}", b64url(sig))
}

/// `token` with its header replaced (its signature kept: the header is tampered).
fn with_header(token: &str, header: &Value) -> String {
    let (_, payload, sig) = token_parts(token);
    compact(header.to_string().as_bytes(), &payload, &sig)
}

/// `token` with its payload replaced by exact bytes (its signature kept).
fn with_payload(token: &str, payload: &[u8]) -> String {
    let (header, _, sig) = token_parts(token);
    compact(&header, payload, &sig)
}

/// One token the plugin must refuse.
struct Bad {
    name: String,
    token: String,
    code: Code,
    /// The internal reason the audit record names.
    reason: &'static str,
    /// Strings of this token that must not reach the client, besides the token and
    /// its parts.
    secrets: Vec<String>,
}

fn bad(name: impl Into<String>, token: String, code: Code, reason: &'static str) -> Bad {
    Bad {
        name: name.into(),
        token,
        code,
        reason,
        secrets: Vec::new(),
    }
}

/// Sends every token of `cases` through `proxy` and checks each refusal; returns the
/// failures, one line each (so one run shows them all).
fn refuse_all(proxy: &mut Proxy, cases: Vec<Bad>) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let out = proxy.send(get(&case.token), upstream_record("p-1"));
        let got = verdict(&out);
        if got != (case.code.status(), case.code.as_str().to_owned()) {
            failures.push(format!(
                "{}: got {got:?}, expected {} {}",
                case.name,
                case.code.status(),
                case.code.as_str()
            ));
            continue;
        }
        let why = reason(&out);
        if why != case.reason {
            failures.push(format!(
                "{}: refused for {why:?}, expected {:?}",
                case.name, case.reason
            ));
        }
        check_masked(&out, &case);
    }
    failures
}

/// The refusal is the exact masked problem and holds nothing of the token.
fn check_masked(out: &Outcome, case: &Bad) {
    assert_problem(out, case.code);
    let mut secrets: Vec<String> = vec![case.token.clone()];
    secrets.extend(
        case.token
            .split('.')
            .filter(|p| p.len() > 8)
            .map(str::to_owned),
    );
    secrets.extend(case.secrets.iter().cloned());
    // Claim values of the insurer's consent, and internal reasons other than the code.
    for s in [
        "consent-insurer-acme-p-1",
        "insurer-acme",
        "https://api.hospital.example",
        "https://consent.example.com",
        mint::DEV_KID,
        "signature",
        "algorithm",
        "kid",
    ] {
        secrets.push(s.to_owned());
    }
    if !case.code.as_str().contains(case.reason) {
        secrets.push(case.reason.to_owned());
    }
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    assert_no_leak(out, &refs);
}

#[test]
fn the_harness_digest_matches_the_standard_vectors() {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(
        hex(&crate::support::sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    // RFC 4231, test case 2.
    assert_eq!(
        hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(order_minus(&order_minus(&[7u8; 32])), [7u8; 32]);
}

#[test]
fn tokens_with_forbidden_algorithms_headers_and_keys_are_refused_and_leak_nothing() {
    let (mut proxy, _service) = start_at(policy_with_keys(&["ES256"], |_| {}), T0);
    let good = insurer_token(T0);
    let (_, payload, sig) = token_parts(&good);
    let mut cases = Vec::new();

    // `alg: none` in every letter case, with no signature and with the real one.
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "at+jwt"});
        let unsigned = format!(
            "{}.{}.",
            b64url(header.to_string().as_bytes()),
            b64url(&payload)
        );
        cases.push(bad(
            format!("alg {alg}, unsigned"),
            unsigned,
            Code::TokenInvalid,
            "algorithm_not_allowed",
        ));
        cases.push(bad(
            format!("alg {alg}, with the real signature"),
            compact(header.to_string().as_bytes(), &payload, &sig),
            Code::TokenInvalid,
            "algorithm_not_allowed",
        ));
    }

    // HS256 "signed" with the issuer's public key as the HMAC secret: the classic
    // algorithm-confusion attack, with each form of the public key an attacker has.
    let jwks: Value = serde_json::from_str(mint::DEV_JWKS).unwrap();
    let jwk = jwks["keys"][0].clone();
    let mut point = vec![4u8];
    point.extend(b64url_decode(jwk["x"].as_str().unwrap()));
    point.extend(b64url_decode(jwk["y"].as_str().unwrap()));
    for (form, secret) in [
        ("the JWK", jwk.to_string().into_bytes()),
        ("the JWKS document", mint::DEV_JWKS.as_bytes().to_vec()),
        ("the SEC1 point", point),
    ] {
        let header = json!({"alg": "HS256", "kid": mint::DEV_KID, "typ": "at+jwt"});
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(&payload)
        );
        let mac = hmac_sha256(&secret, input.as_bytes());
        cases.push(bad(
            format!("HS256 keyed with {form}"),
            format!("{input}.{}", b64url(&mac)),
            Code::TokenInvalid,
            "algorithm_not_allowed",
        ));
    }

    // A kid that would be a path or SQL in a naive key store, each signed by the
    // real key: the kid is only ever compared, so it names no key.
    for kid in [
        "../../../../etc/passwd",
        "..\\..\\keys\\issuer.pem",
        "/dev/null",
        "' OR '1'='1",
        "dev-2026-1'; DROP TABLE keys; --",
        "dev-2026-1/../dev-2026-1",
        "%2e%2e%2fjwks.json",
        "dev-2026-1\u{0000}",
    ] {
        let t = mint::sign(
            &Value::Object(claims_at(T0)),
            mint::DEV_KEY_PEM,
            kid,
            mint::Alg::ES256,
        )
        .unwrap();
        let mut case = bad(format!("kid {kid:?}"), t, Code::TokenInvalid, "unknown_kid");
        case.secrets.push(kid.to_owned());
        cases.push(case);
    }

    // Headers that bring their own key or point to one elsewhere.
    let attacker_jwk = json!({"kty": "EC", "crv": "P-256", "x": jwk["x"], "y": jwk["y"]});
    for (member, value) in [
        ("jku", json!("https://attacker.example/jwks.json")),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("jwk", attacker_jwk),
        ("x5c", json!(["MIIBszCCAVmgAwIBAgIUQ"])),
    ] {
        let mut header = json!({"alg": "ES256", "kid": mint::DEV_KID, "typ": "at+jwt"});
        header[member] = value;
        let mut case = bad(
            format!("header {member}"),
            with_header(&good, &header),
            Code::TokenInvalid,
            "forbidden_header",
        );
        case.secrets.push("attacker.example".into());
        cases.push(case);
    }

    // Critical extensions this verifier does not understand.
    for header in [
        json!({"alg": "ES256", "kid": mint::DEV_KID, "typ": "at+jwt", "crit": ["x-unknown"], "x-unknown": true}),
        json!({"alg": "ES256", "kid": mint::DEV_KID, "typ": "at+jwt", "crit": ["exp"], "exp": 1}),
        json!({"alg": "ES256", "kid": mint::DEV_KID, "typ": "at+jwt", "b64": false, "crit": ["b64"]}),
    ] {
        cases.push(bad(
            format!("header {header}"),
            with_header(&good, &header),
            Code::TokenInvalid,
            "unsupported_critical",
        ));
    }

    // An ES256 token whose kid names the issuer's P-384 key (the wrong curve).
    let p384 = mint::sign(
        &Value::Object(claims_at(T0)),
        mint::DEV_KEY_PEM,
        "p384",
        mint::Alg::ES256,
    )
    .unwrap();
    cases.push(bad(
        "ES256 with a P-384 key",
        p384,
        Code::TokenInvalid,
        "key_mismatch",
    ));

    // An EdDSA token, correctly signed with a key the issuer holds, but the issuer
    // allows only ES256.
    let ed = mint::sign(
        &Value::Object(claims_at(T0)),
        mint::ED25519_KEY_PEM,
        mint::ED25519_KID,
        mint::Alg::EdDSA,
    )
    .unwrap();
    cases.push(bad(
        "EdDSA where only ES256 is allowed",
        ed,
        Code::TokenInvalid,
        "algorithm_not_allowed",
    ));

    // Another kind of JWT from the same issuer and key: a status-list token, and a
    // consent's claims under the status-list type.
    let list = mint::status_list_token(
        &[0u8; 16],
        2,
        "https://consent.example.com/statuslists/1",
        mint::DEV_KEY_PEM,
        mint::DEV_KID,
        T0,
        60,
    )
    .unwrap();
    cases.push(bad(
        "a status-list token",
        list,
        Code::TokenInvalid,
        "missing_claim",
    ));
    let typed = mint::SigningKey::dev()
        .unwrap()
        .sign("statuslist+jwt", &Value::Object(claims_at(T0)))
        .unwrap();
    cases.push(bad(
        "consent claims typed statuslist+jwt",
        typed,
        Code::TokenInvalid,
        "wrong_type",
    ));

    // The JWE compact form (five parts).
    let jwe_header = json!({"alg": "RSA-OAEP-256", "enc": "A256GCM", "typ": "at+jwt"});
    cases.push(bad(
        "a five-part JWE",
        format!(
            "{}.{}.{}.{}.{}",
            b64url(jwe_header.to_string().as_bytes()),
            b64url(&[7u8; 256]),
            b64url(&[1u8; 12]),
            b64url(&payload),
            b64url(&[2u8; 16])
        ),
        Code::TokenInvalid,
        "encrypted",
    ));

    let failures = refuse_all(&mut proxy, cases);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn malformed_signatures_and_encodings_are_refused() {
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    let good = insurer_token(T0);
    let other = insurer_token(T0 - 1);
    let (_, payload, sig) = token_parts(&good);
    let (h, p, s) = {
        let parts: Vec<&str> = good.split('.').collect();
        (
            parts[0].to_owned(),
            parts[1].to_owned(),
            parts[2].to_owned(),
        )
    };
    let mut n = P256_ORDER.to_vec();
    n.extend_from_slice(&sig[32..]);
    let mut s_is_n = sig[..32].to_vec();
    s_is_n.extend_from_slice(&P256_ORDER);
    let mut flipped = sig.clone();
    flipped[40] ^= 1;
    let mut r_zero = vec![0u8; 32];
    r_zero.extend_from_slice(&sig[32..]);
    let mut s_zero = sig[..32].to_vec();
    s_zero.extend_from_slice(&[0u8; 32]);
    let cases = vec![
        bad(
            "r = s = 0",
            with_signature(&good, &[0u8; 64]),
            Code::TokenInvalid,
            "malformed_signature",
        ),
        bad(
            "r = 0",
            with_signature(&good, &r_zero),
            Code::TokenInvalid,
            "malformed_signature",
        ),
        bad(
            "s = 0",
            with_signature(&good, &s_zero),
            Code::TokenInvalid,
            "malformed_signature",
        ),
        bad(
            "r = n",
            with_signature(&good, &n),
            Code::TokenInvalid,
            "malformed_signature",
        ),
        bad(
            "s = n",
            with_signature(&good, &s_is_n),
            Code::TokenInvalid,
            "malformed_signature",
        ),
        bad(
            "r = s = 2^256 - 1",
            with_signature(&good, &[0xff; 64]),
            Code::TokenInvalid,
            "malformed_signature",
        ),
        bad(
            "a DER-encoded signature",
            with_signature(&good, &der_signature(&sig)),
            Code::TokenInvalid,
            "malformed_signature",
        ),
        bad(
            "63 signature bytes",
            with_signature(&good, &sig[..63]),
            Code::TokenInvalid,
            "malformed_signature",
        ),
        bad(
            "65 signature bytes",
            with_signature(&good, &[sig.as_slice(), &[0]].concat()),
            Code::TokenInvalid,
            "malformed_signature",
        ),
        bad(
            "an empty signature",
            format!("{h}.{p}."),
            Code::TokenInvalid,
            "malformed_signature",
        ),
        bad(
            "one bit of the signature flipped",
            with_signature(&good, &flipped),
            Code::TokenInvalid,
            "bad_signature",
        ),
        bad(
            "another token's signature",
            with_signature(&good, &token_parts(&other).2),
            Code::TokenInvalid,
            "bad_signature",
        ),
        bad(
            "truncated: no signature part",
            format!("{h}.{p}"),
            Code::TokenInvalid,
            "malformed",
        ),
        bad(
            "truncated inside the signature",
            good[..good.len() - 2].to_owned(),
            Code::TokenInvalid,
            "malformed_signature",
        ),
        bad(
            "truncated inside the payload",
            format!("{h}.{}", &p[..p.len() / 2]),
            Code::TokenInvalid,
            "malformed",
        ),
        bad(
            "standard base64 (+ and /) in the signature",
            format!("{h}.{p}.{}", s.replace('-', "+").replace('_', "/") + "+/"),
            Code::TokenInvalid,
            "bad_encoding",
        ),
        bad(
            "padded base64",
            format!("{h}.{p}.{s}=="),
            Code::TokenInvalid,
            "bad_encoding",
        ),
        bad(
            "a character outside base64url",
            format!("{h}.{p}*.{s}"),
            Code::TokenInvalid,
            "malformed",
        ),
        bad(
            "a space inside the token",
            format!("{h}.{p} .{s}"),
            Code::TokenInvalid,
            "token_location",
        ),
        bad(
            "a byte-order mark before the token",
            format!("\u{feff}{good}"),
            Code::TokenInvalid,
            "token_location",
        ),
        bad(
            "a byte-order mark before the payload JSON",
            with_payload(&good, &[b"\xEF\xBB\xBF".as_slice(), &payload].concat()),
            Code::TokenInvalid,
            "bad_json",
        ),
        bad(
            "a payload that is not JSON",
            with_payload(&good, b"not json"),
            Code::TokenInvalid,
            "bad_json",
        ),
        bad(
            "a header that is a JSON array",
            compact(b"[\"ES256\"]", &payload, &sig),
            Code::TokenInvalid,
            "bad_json",
        ),
        bad(
            "a header repeating alg",
            compact(
                br#"{"alg":"ES256","typ":"at+jwt","kid":"dev-2026-1","alg":"none"}"#,
                &payload,
                &sig,
            ),
            Code::TokenInvalid,
            "duplicate_member",
        ),
        bad(
            "claims repeating sub",
            with_payload(
                &good,
                &[&payload[..payload.len() - 1], br#","sub":"p-2"}"#].concat(),
            ),
            Code::TokenInvalid,
            "duplicate_member",
        ),
        bad(
            "claims repeating sub behind a \\u escape",
            with_payload(
                &good,
                &[&payload[..payload.len() - 1], br#","\u0073ub":"p-2"}"#].concat(),
            ),
            Code::TokenInvalid,
            "duplicate_member",
        ),
        bad(
            "a nested JWT (cty JWT)",
            with_header(
                &good,
                &json!({"alg": "ES256", "kid": mint::DEV_KID, "typ": "at+jwt", "cty": "JWT"}),
            ),
            Code::TokenInvalid,
            "bad_header",
        ),
    ];
    let failures = refuse_all(&mut proxy, cases);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A JSON (non-compact) JWS serialization is one malformed token, not two tokens: it
/// must be refused as `token_invalid` (401), like every other unacceptable token.
#[test]
fn a_json_serialized_token_is_invalid_not_ambiguous() {
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    let good = insurer_token(T0);
    let parts: Vec<&str> = good.split('.').collect();
    let flattened = json!({"protected": parts[0], "payload": parts[1], "signature": parts[2]});
    let general = json!({"payload": parts[1], "signatures": [{"protected": parts[0], "signature": parts[2]}]});
    let mut failures = Vec::new();
    for (name, serialized) in [("flattened", flattened), ("general", general)] {
        let out = proxy.send(get(&serialized.to_string()), upstream_record("p-1"));
        if verdict(&out) != (401, "token_invalid".to_owned()) {
            failures.push(format!(
                "the {name} JSON serialization: got {:?} ({}), expected 401 token_invalid",
                verdict(&out),
                reason(&out)
            ));
        }
        assert!(out.upstream_request.is_none());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn an_oversized_token_is_refused_and_one_at_the_limit_passes() {
    // A token padded with a harmless claim to a known length.
    let padded = |len: usize| {
        let mut c = claims_at(T0);
        c.insert("note".into(), Value::from("x".repeat(len)));
        sign_dev(&c)
    };
    let token = padded(700);
    let limit = token.len();
    let config = |max: usize| example_policy(|p| p["limits"] = json!({"max_token_bytes": max}));

    let (mut proxy, _service) = start_at(config(limit), T0);
    let out = proxy.send(get(&token), upstream_record("p-1"));
    assert_eq!(
        out.client.status, 200,
        "exactly at the limit: {:#?}",
        out.trace
    );

    let (mut proxy, _service) = start_at(config(limit - 1), T0);
    let out = proxy.send(get(&token), upstream_record("p-1"));
    let case = bad(
        "one byte over",
        token.clone(),
        Code::TokenInvalid,
        "too_large",
    );
    assert_eq!(verdict(&out), (401, "token_invalid".to_owned()));
    assert_eq!(reason(&out), "too_large");
    check_masked(&out, &case);
    assert!(out.upstream_request.is_none());
}

/// Claims changed from the insurer's valid consent, at the harness time T0.
fn claims_case(edit: impl FnOnce(&mut Map<String, Value>)) -> String {
    let mut c = claims_at(T0);
    edit(&mut c);
    sign_dev(&c)
}

#[test]
fn times_audiences_and_issuers_on_their_edges() {
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    // (what, token, expected status and code, internal reason of a refusal)
    fn set(k: &'static str, v: Value) -> impl FnOnce(&mut Map<String, Value>) {
        move |c| {
            c.insert(k.to_owned(), v);
        }
    }
    // An `exp` with an `iat` ten minutes before it.
    fn expiring(exp: u64) -> impl FnOnce(&mut Map<String, Value>) {
        move |c| {
            c.insert("iat".into(), json!(exp - 600));
            c.insert("exp".into(), json!(exp));
        }
    }
    let cases: Vec<(&str, String, (u16, &str), &str)> = vec![
        (
            "exp one second inside the skew",
            claims_case(expiring(T0 - SKEW + 1)),
            (200, ""),
            "allowed",
        ),
        (
            "exp at the skew",
            claims_case(expiring(T0 - SKEW)),
            (401, "token_expired"),
            "expired",
        ),
        (
            "exp one second outside the skew",
            claims_case(expiring(T0 - SKEW - 1)),
            (401, "token_expired"),
            "expired",
        ),
        (
            "nbf at the skew",
            claims_case(set("nbf", json!(T0 + SKEW))),
            (200, ""),
            "allowed",
        ),
        (
            "nbf one second outside the skew",
            claims_case(set("nbf", json!(T0 + SKEW + 1))),
            (401, "token_invalid"),
            "not_yet_valid",
        ),
        (
            "iat at the skew",
            claims_case(set("iat", json!(T0 + SKEW))),
            (200, ""),
            "allowed",
        ),
        (
            "iat one second outside the skew",
            claims_case(set("iat", json!(T0 + SKEW + 1))),
            (401, "token_invalid"),
            "issued_in_future",
        ),
        (
            "a lifetime of exactly the maximum",
            claims_case(|c| {
                c.insert("iat".into(), json!(T0 - 10));
                c.insert("exp".into(), json!(T0 - 10 + 86_400));
            }),
            (200, ""),
            "allowed",
        ),
        (
            "a lifetime one second over the maximum",
            claims_case(|c| {
                c.insert("iat".into(), json!(T0 - 10));
                c.insert("exp".into(), json!(T0 - 10 + 86_401));
            }),
            (401, "token_invalid"),
            "lifetime_too_long",
        ),
        (
            "exp missing",
            claims_case(|c| {
                c.remove("exp");
            }),
            (401, "token_invalid"),
            "missing_claim",
        ),
        (
            "exp as a string",
            claims_case(set("exp", json!((T0 + 600).to_string()))),
            (401, "token_invalid"),
            "invalid_claim",
        ),
        (
            "aud missing",
            claims_case(|c| {
                c.remove("aud");
            }),
            (401, "token_invalid"),
            "missing_claim",
        ),
        (
            "aud another API",
            claims_case(set("aud", json!("https://api.other.example"))),
            (401, "token_invalid"),
            "audience_mismatch",
        ),
        (
            "aud an array holding this API",
            claims_case(set(
                "aud",
                json!(["https://api.other.example", mint::AUDIENCE]),
            )),
            (200, ""),
            "allowed",
        ),
        (
            "aud an array of others",
            claims_case(set("aud", json!(["https://api.other.example"]))),
            (401, "token_invalid"),
            "audience_mismatch",
        ),
        (
            "aud holding a number",
            claims_case(set("aud", json!([1]))),
            (401, "token_invalid"),
            "invalid_claim",
        ),
        (
            "another issuer",
            claims_case(set("iss", json!("https://attacker.example"))),
            (401, "token_invalid"),
            "unknown_issuer",
        ),
        (
            "the issuer with a trailing slash",
            claims_case(set("iss", json!("https://consent.example.com/"))),
            (401, "token_invalid"),
            "unknown_issuer",
        ),
        (
            "iss missing",
            claims_case(|c| {
                c.remove("iss");
            }),
            (401, "token_invalid"),
            "missing_claim",
        ),
        (
            "sub missing",
            claims_case(|c| {
                c.remove("sub");
            }),
            (401, "token_invalid"),
            "missing_claim",
        ),
        (
            "jti missing",
            claims_case(|c| {
                c.remove("jti");
            }),
            (401, "token_invalid"),
            "missing_claim",
        ),
    ];
    let mut failures = Vec::new();
    for (what, token, (status, code), why) in cases {
        let out = proxy.send(get(&token), upstream_record("p-1"));
        let got = verdict(&out);
        if got != (status, code.to_owned()) || reason(&out) != why {
            failures.push(format!(
                "{what}: got {got:?} for {:?}, expected ({status}, {code:?}) for {why:?}",
                reason(&out)
            ));
            continue;
        }
        if status != 200 {
            let code = if code == "token_expired" {
                Code::TokenExpired
            } else {
                Code::TokenInvalid
            };
            check_masked(&out, &bad(what, token, code, why));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn an_expired_token_gets_the_invalid_token_challenge() {
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    let expired = claims_case(|c| {
        c.insert("iat".into(), json!(T0 - 7200));
        c.insert("exp".into(), json!(T0 - 3600));
    });
    let out = proxy.send(get(&expired), upstream_record("p-1"));
    assert_problem(&out, Code::TokenExpired);
    assert_eq!(
        out.client.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    let garbage = proxy.send(get("not-a-token"), upstream_record("p-1"));
    assert_problem(&garbage, Code::TokenInvalid);
    assert_eq!(
        garbage.client.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    let none = proxy.send(Request::get("/patients/p-1"), upstream_record("p-1"));
    assert_problem(&none, Code::TokenMissing);
    assert_eq!(none.client.header("www-authenticate"), Some("Bearer"));
}

#[test]
fn a_token_in_the_query_beside_the_header_is_ambiguous() {
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    let token = insurer_token(T0);
    let both = proxy.send(
        Request::get(&format!("/patients/p-1?access_token={token}")).bearer(&token),
        upstream_record("p-1"),
    );
    assert_problem(&both, Code::TokenAmbiguous);
    assert_no_leak(&both, &[&token]);
    assert_eq!(reason(&both), "token_location");
    // A query token alone is not where this configuration takes tokens from.
    let query_only = proxy.send(
        Request::get(&format!("/patients/p-1?access_token={token}")),
        upstream_record("p-1"),
    );
    assert_problem(&query_only, Code::TokenMissing);
    // Two Authorization headers (Envoy joins them with ',').
    let twice = proxy.send(
        get(&token).header("authorization", format!("Bearer {token}")),
        upstream_record("p-1"),
    );
    assert_problem(&twice, Code::TokenAmbiguous);
    assert_no_leak(&twice, &[&token]);
}

#[test]
fn valid_tokens_pass_including_the_high_s_twin_and_a_kidless_token() {
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    // A token whose s is low, so that its twin is high.
    let low = (0..64)
        .map(|i| insurer_token(T0 - i))
        .find(|t| !is_high(&token_parts(t).2[32..]))
        .unwrap();
    let twin = high_s_twin(&low);
    assert!(is_high(&token_parts(&twin).2[32..]));
    assert_ne!(twin, low);
    let kidless = mint::SigningKey::from_pem(mint::DEV_KEY_PEM, None, Some(mint::Alg::ES256))
        .unwrap()
        .sign(mint::CONSENT_TYP, &Value::Object(claims_at(T0)))
        .unwrap();
    for (what, token) in [("low S", low), ("high S", twin), ("no kid", kidless)] {
        let out = proxy.send(get(&token), upstream_record("p-1"));
        assert_eq!(out.client.status, 200, "{what}: {:#?}", out.trace);
        assert_eq!(out.client.json()["id"], "p-1", "{what}");
    }
}

#[test]
fn rs256_ps256_and_eddsa_tokens_pass_when_the_issuer_allows_them() {
    let (mut proxy, _service) = start_at(
        policy_with_keys(&["ES256", "RS256", "PS256", "EdDSA"], |_| {}),
        T0,
    );
    let claims = Value::Object(claims_at(T0));
    let rsa = rsa_pem();
    for (what, pem, kid, alg) in [
        ("RS256", rsa.as_slice(), "rs2048", mint::Alg::RS256),
        ("PS256", rsa.as_slice(), "rs2048", mint::Alg::PS256),
        (
            "EdDSA",
            mint::ED25519_KEY_PEM,
            mint::ED25519_KID,
            mint::Alg::EdDSA,
        ),
        ("ES256", mint::DEV_KEY_PEM, mint::DEV_KID, mint::Alg::ES256),
    ] {
        let token = mint::sign(&claims, pem, kid, alg).unwrap();
        let out = proxy.send(get(&token), upstream_record("p-1"));
        assert_eq!(out.client.status, 200, "{what}: {:#?}", out.trace);
        assert_eq!(out.client.json()["identity"]["name"]["family"], "Whitcombe");
        // The signature of one algorithm does not pass as another's.
        let (_, payload, sig) = token_parts(&token);
        let other = if alg == mint::Alg::RS256 {
            "PS256"
        } else {
            "RS256"
        };
        let relabelled = compact(
            json!({"alg": other, "kid": kid, "typ": "at+jwt"})
                .to_string()
                .as_bytes(),
            &payload,
            &sig,
        );
        let out = proxy.send(get(&relabelled), upstream_record("p-1"));
        assert_eq!(
            verdict(&out),
            (401, "token_invalid".to_owned()),
            "{what} as {other}"
        );
    }
}

#[test]
fn rfc_9396_authorization_details_carry_the_consent_when_mapped() {
    let config = example_policy(|p| {
        p["issuers"][0]["consent"] = json!({
            "format": "authorization_details",
            "types": ["health_record_access"],
            "purpose_field": "purpose"
        });
    });
    let (mut proxy, _service) = start_at(config, T0);
    let details = |datatypes: Value, kind: &str| {
        claims_case(|c| {
            for k in ["purpose", "data_domains", "actions"] {
                c.remove(k);
            }
            c.insert(
                "authorization_details".into(),
                json!([{
                    "type": kind,
                    "actions": ["read"],
                    "datatypes": datatypes,
                    "locations": ["https://api.hospital.example"],
                    "purpose": ["claims"]
                }]),
            );
        })
    };
    let both = proxy.send(
        get(&details(
            json!(["billing", "identity"]),
            "health_record_access",
        )),
        upstream_record("p-1"),
    );
    assert_eq!(both.client.status, 200, "{:#?}", both.trace);
    let body = both.client.json();
    assert_eq!(body["identity"]["name"]["family"], "Whitcombe");
    assert_eq!(body["billing"]["insurer"], "Severn Mutual Health");

    // Only billing consented: identity is not released.
    let billing = proxy.send(
        get(&details(json!(["billing"]), "health_record_access")),
        upstream_record("p-1"),
    );
    assert_eq!(billing.client.status, 200);
    let body = billing.client.json();
    assert!(body.get("identity").is_none(), "{body}");
    assert_eq!(body["billing"]["insurer"], "Severn Mutual Health");

    // An entry of a type the issuer does not accept refuses the token.
    let foreign = proxy.send(
        get(&details(json!(["billing"]), "payment_initiation")),
        upstream_record("p-1"),
    );
    assert_problem(&foreign, Code::TokenInvalid);
    assert_eq!(reason(&foreign), "unknown_authorization_details_type");
    assert_no_leak(&foreign, &["payment_initiation"]);

    // Plain claims without authorization_details are not a consent under this mapping.
    let plain = proxy.send(get(&insurer_token(T0)), upstream_record("p-1"));
    assert_problem(&plain, Code::TokenInvalid);
    assert_eq!(reason(&plain), "missing_claim");
}

#[test]
fn the_token_never_reaches_the_upstream_unless_forwarding_is_configured() {
    let token = insurer_token(T0);
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    let out = proxy.send(get(&token), upstream_record("p-1"));
    assert_eq!(out.client.status, 200);
    let up = out.upstream_request.unwrap();
    assert_eq!(up.header("authorization"), None);
    for (name, value) in &up.headers {
        assert!(
            !String::from_utf8_lossy(value).contains(&token[..40]),
            "the upstream received the token in {name}"
        );
    }
    assert!(!up.path.contains(&token[..40]));

    let (mut proxy, _service) =
        start_at(example_policy(|p| p["token"]["forward"] = json!(true)), T0);
    let out = proxy.send(get(&token), upstream_record("p-1"));
    assert_eq!(out.client.status, 200);
    let up = out.upstream_request.unwrap();
    assert_eq!(
        up.header_all("authorization"),
        vec![format!("Bearer {token}").as_str()]
    );
    // Also on a route that minimises the request's headers.
    let out = proxy.send(
        Request::post("/echo")
            .bearer(&token)
            .header("content-type", "application/json")
            .body(r#"{"claim_id":"CLM-1"}"#),
        Response::json(200, "{}"),
    );
    assert_eq!(out.client.status, 200, "{:#?}", out.trace);
    let up = out.upstream_request.unwrap();
    assert_eq!(
        up.header_all("authorization"),
        vec![format!("Bearer {token}").as_str()]
    );
}

#[test]
fn a_second_identical_request_is_a_cache_hit_and_revocation_is_still_checked() {
    let (mut proxy, service) = start_at(example_policy(|_| {}), T0);
    // The insurer's consent references index 0 of status list 1.
    let token = sign_dev(&persona_claims("insurer", T0 - 10, 3600));
    let first = proxy.send(get(&token), upstream_record("p-1"));
    assert_eq!(first.client.status, 200, "{:#?}", first.trace);
    let second = proxy.send(get(&token), upstream_record("p-1"));
    assert_eq!(second.client.status, 200);
    assert_eq!(second.client.body, first.client.body);

    // The consent is withdrawn; once the list is refetched (its ttl is 60 s: a request
    // past it starts the refresh), the cached token is refused: the cache skips
    // signature and claims, never revocation.
    service.set_status("1", 0, 1);
    proxy.advance(Duration::from_secs(61));
    let _refreshing = proxy.send(get(&token), upstream_record("p-1"));
    proxy.advance(Duration::from_secs(1));
    let revoked = proxy.send(get(&token), upstream_record("p-1"));
    assert_problem(&revoked, Code::ConsentRevoked);
    assert_no_leak(&revoked, &["consent-insurer-acme-p-1", &token]);

    // The metrics tell a cache hit from a verification (DESIGN: "counters for ...
    // cache hits"): the token was verified once and then served from the cache, at
    // least once per repeated request.
    let hits = proxy.counter("consentry.token.cache_hit");
    assert!(
        hits >= 3,
        "consentry.token.cache_hit is {hits}: no counter of verified-token cache hits \
         (consentry.token.verified counts {} for one token, every request alike)",
        proxy.counter("consentry.token.verified")
    );
}

#[test]
fn a_deny_listed_consent_is_refused_even_as_a_high_s_twin() {
    let config = example_policy(|p| {
        p["issuers"][0]["revocation"]["deny_list"] = json!(["consent-insurer-acme-p-1"]);
    });
    let (mut proxy, _service) = start_at(config, T0);
    let token = insurer_token(T0);
    for t in [token.clone(), high_s_twin(&token)] {
        let out = proxy.send(get(&t), Response::json(200, "{}"));
        assert_problem(&out, Code::ConsentRevoked);
        assert_eq!(reason(&out), "revoked");
        assert_no_leak(&out, &["consent-insurer-acme-p-1"]);
    }
}

/// RFC 6750 §2.3 form-encodes the query parameter's name, so `access%5Ftoken` is an
/// `access_token` to any resource server that decodes its query: a token there beside
/// the header token is just as ambiguous, and must not reach the upstream.
#[test]
fn a_token_in_the_query_under_an_encoded_name_is_ambiguous_too() {
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    let token = insurer_token(T0);
    let mut failures = Vec::new();
    for name in ["access%5Ftoken", "access%5ftoken", "%61ccess_token"] {
        let out = proxy.send(
            Request::get(&format!("/patients/p-1?{name}={token}")).bearer(&token),
            upstream_record("p-1"),
        );
        if verdict(&out) != (400, "token_ambiguous".to_owned()) {
            failures.push(format!(
                "?{name}=TOKEN beside the header: got {:?}{}",
                verdict(&out),
                match &out.upstream_request {
                    Some(up) if up.path.contains(&token) =>
                        ", and the upstream received the token in its query",
                    _ => "",
                }
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_token_is_taken_only_from_its_configured_place_and_scheme() {
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    let token = insurer_token(T0);
    let with = |value: String| Request::get("/patients/p-1").header("authorization", value);
    for (value, status) in [
        (format!("bearer {token}"), 200),
        (format!("BEARER {token}"), 200),
        (format!("Bearer   {token}"), 200),
        (format!("Basic {token}"), 401),
        (format!("Bearer{token}"), 401),
        (format!("DPoP {token}"), 401),
    ] {
        let out = proxy.send(with(value.clone()), upstream_record("p-1"));
        assert_eq!(out.client.status, status, "{value:.20}");
        if status == 401 {
            assert_problem(&out, Code::TokenMissing);
            assert_no_leak(&out, &[&token]);
        }
    }

    // A token header of its own, without a scheme.
    let custom =
        example_policy(|p| p["token"] = json!({"header": "x-consent-token", "scheme": null}));
    let (mut proxy, _service) = start_at(custom, T0);
    let ok = proxy.send(
        Request::get("/patients/p-1").header("x-consent-token", &token),
        upstream_record("p-1"),
    );
    assert_eq!(ok.client.status, 200, "{:#?}", ok.trace);
    assert_eq!(ok.upstream_request.unwrap().header("x-consent-token"), None);
    // A bearer token in Authorization besides it is a second token.
    let both = proxy.send(
        Request::get("/patients/p-1")
            .header("x-consent-token", &token)
            .bearer(&token),
        upstream_record("p-1"),
    );
    assert_problem(&both, Code::TokenAmbiguous);
    // A bearer token in Authorization alone is not where this configuration looks.
    let elsewhere = proxy.send(get(&token), upstream_record("p-1"));
    assert_problem(&elsewhere, Code::TokenMissing);
    // Other Authorization schemes (to the upstream's own auth) are not tokens.
    let basic = proxy.send(
        Request::get("/patients/p-1")
            .header("x-consent-token", &token)
            .header("authorization", "Basic dXNlcjpwYXNz"),
        upstream_record("p-1"),
    );
    assert_eq!(basic.client.status, 200);
    assert_eq!(
        basic.upstream_request.unwrap().header("authorization"),
        Some("Basic dXNlcjpwYXNz")
    );
}

#[test]
fn a_condition_on_raw_claims_still_holds_when_the_token_comes_from_the_cache() {
    // A policy whose conditions read `claims` keeps them in the token cache (one that
    // does not drops them, to keep entries small): the second request is a cache hit
    // and must be decided exactly as the first.
    let config = example_policy(|p| {
        let routes = p["routes"].as_array_mut().unwrap();
        let record = routes
            .iter_mut()
            .find(|r| r["name"] == "patient-record")
            .unwrap();
        for rule in record["rules"].as_array_mut().unwrap() {
            if rule["name"] == "insurer-claims" {
                rule["when"] = json!("claims.client_id.startsWith('insurer-')");
            }
        }
    });
    let (mut proxy, _service) = start_at(config, T0);
    let token = sign_dev(&persona_claims("insurer", T0 - 10, 3600));
    let first = proxy.send(get(&token), upstream_record("p-1"));
    assert_eq!(first.client.status, 200, "{:#?}", first.trace);
    let hits = proxy.counter("consentry.token.cache_hit");
    let second = proxy.send(get(&token), upstream_record("p-1"));
    assert_eq!(second.client.status, 200, "{:#?}", second.trace);
    assert_eq!(second.client.body, first.client.body);
    assert_eq!(proxy.counter("consentry.token.cache_hit"), hits + 1);
}

/// An issuer that publishes status lists vouches for a consent's status only through
/// one: a token that references none cannot have its revocation checked, so it is
/// refused (masked as `token_invalid`, reason `status_missing`, counted), not waved
/// through, unless the configuration says so explicitly.
#[test]
fn a_token_without_a_status_reference_is_refused_unless_the_issuer_allows_it() {
    let (mut proxy, service) = start_at(example_policy(|_| {}), T0);
    let cases = [
        ("no status claim", None),
        (
            "a status of another mechanism",
            Some(json!({"other_mechanism": {"idx": 0}})),
        ),
    ];
    for (what, status) in &cases {
        let token = claims_case(|c| match status {
            None => {
                c.remove("status");
            }
            Some(s) => {
                c.insert("status".into(), s.clone());
            }
        });
        let case = bad(*what, token, Code::TokenInvalid, "status_missing");
        let failures = refuse_all(&mut proxy, vec![case]);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
    assert_eq!(
        proxy.counter("consentry.token.refused.status_missing"),
        cases.len() as u64
    );
    assert!(
        !service.calls().iter().any(|c| c.contains("/statuslists/")),
        "no list is fetched for a token that names none: {:?}",
        service.calls()
    );

    let relaxed = example_policy(|p| {
        p["issuers"][0]["revocation"]["status_list"]["require_status_claim"] = json!(false);
    });
    let (mut proxy, _service) = start_at(relaxed, T0);
    let token = claims_case(|c| {
        c.remove("status");
    });
    let out = proxy.send(get(&token), upstream_record("p-1"));
    assert_eq!(verdict(&out), (200, String::new()), "{:#?}", out.trace);
    // A token that does reference a list is still checked against it.
    let revoked_config = example_policy(|p| {
        p["issuers"][0]["revocation"]["status_list"]["require_status_claim"] = json!(false);
    });
    let (mut proxy, service) = start_at(revoked_config, T0);
    service.set_status("1", 0, 1);
    let out = proxy.send(get(&insurer_token(T0)), upstream_record("p-1"));
    assert_problem(&out, Code::ConsentRevoked);
}

/// A token typed `at+jwt` is a JWT access token (RFC 9068): it must carry every claim
/// of §2.2, `client_id` and `iat` among them (an `azp` does not stand in for
/// `client_id`), unless the issuer relaxes the profile.
#[test]
fn an_at_jwt_token_needs_every_claim_of_rfc_9068_unless_relaxed() {
    // The insurer's consent naming its client by `azp` only, and one bounded by `nbf`
    // instead of `iat`: acceptable outside the profile.
    let by_azp = || {
        claims_case(|c| {
            c.remove("client_id");
            c.insert("azp".into(), json!("insurer-acme"));
        })
    };
    let by_nbf = || {
        claims_case(|c| {
            c.remove("iat");
            c.insert("nbf".into(), json!(T0 - 10));
        })
    };
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    let failures = refuse_all(
        &mut proxy,
        vec![
            bad(
                "at+jwt without client_id",
                by_azp(),
                Code::TokenInvalid,
                "missing_claim",
            ),
            bad(
                "at+jwt without iat",
                by_nbf(),
                Code::TokenInvalid,
                "missing_claim",
            ),
            bad(
                "at+jwt with a numeric client_id",
                claims_case(|c| {
                    c.insert("client_id".into(), json!(7));
                }),
                Code::TokenInvalid,
                "invalid_claim",
            ),
        ],
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The profile follows the token's `typ`: a plain JWT is held to the claims every
    // token needs.
    let key = mint::SigningKey::dev().unwrap();
    let mut claims = claims_at(T0);
    claims.remove("client_id");
    claims.insert("azp".into(), json!("insurer-acme"));
    let jwt = key.sign("JWT", &Value::Object(claims)).unwrap();
    let out = proxy.send(get(&jwt), upstream_record("p-1"));
    assert_eq!(verdict(&out), (200, String::new()), "{:#?}", out.trace);

    let relaxed = example_policy(|p| p["issuers"][0]["require_rfc9068_claims"] = json!(false));
    let (mut proxy, _service) = start_at(relaxed, T0);
    for (what, token) in [("by azp", by_azp()), ("by nbf", by_nbf())] {
        let out = proxy.send(get(&token), upstream_record("p-1"));
        assert_eq!(
            verdict(&out),
            (200, String::new()),
            "{what}: {:#?}",
            out.trace
        );
    }
}
