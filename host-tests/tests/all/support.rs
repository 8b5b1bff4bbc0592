//! Shared fixtures for the harness suite.

use std::sync::Arc;
use std::time::SystemTime;

use consentry_host::fixtures::{ConsentService, dev_env};
use consentry_host::{Plugin, Proxy, ProxyBuilder};

/// The release build of the plugin; the error says how to build it.
pub fn plugin() -> Arc<Plugin> {
    match Plugin::release_build() {
        Ok(p) => p,
        Err(e) => panic!("{e:#}"),
    }
}

pub fn repo_file(path: &str) -> Vec<u8> {
    let full = consentry_host::plugin::workspace_root().join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

/// The example policy as JSON, with `edit` applied (to try a variation).
pub fn example_policy(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value =
        serde_json::from_slice(&repo_file("policies/example.json")).unwrap();
    edit(&mut v);
    v.to_string()
}

/// A proxy with `config`, the development secrets, and `service` answering the
/// plugin's calls, its clock at `now`.
pub fn proxy_with(config: String, service: &ConsentService, now: SystemTime) -> ProxyBuilder {
    let mut b = Proxy::builder(plugin()).config(config).now(now);
    for (k, v) in dev_env() {
        b = b.env(&k, &v);
    }
    let service = service.clone();
    b.callouts(move |c| service.answer(c, now))
}

/// One patient record of the example data, as exact text.
pub fn record(id: &str) -> String {
    let all: Vec<serde_json::Value> =
        serde_json::from_slice(&repo_file("examples/data/patients.json")).unwrap();
    let r = all
        .into_iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no patient {id}"));
    serde_json::to_string(&r).unwrap()
}

// ---------------------------------------------------------------------------
// Time, tokens, upstream answers and problem checks for the token, decision,
// code, view, CLI and audit-shipping suites.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use consentry_core::problem::Code;
use consentry_host::fixtures::DEV_PSEUDONYM_KEYS;
use consentry_host::{LogLine, Outcome, Response, mint};
use serde_json::{Map, Value};

/// 2026-11-27T12:00:00Z, a Friday: the time most scenarios run at.
pub const T0: u64 = 1_795_780_800;

/// The instant `unix` seconds after the epoch.
pub fn at(unix: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(unix)
}

/// A persona's claims (`examples/personas.json`), issued at `iat` for `ttl` seconds.
pub fn persona_claims(persona: &str, iat: u64, ttl: u64) -> Map<String, Value> {
    mint::Personas::builtin()
        .unwrap()
        .claims(Some(persona), iat, ttl)
        .unwrap()
}

/// Claims signed with the development key (ES256, `kid` dev-2026-1).
pub fn sign_dev(claims: &Map<String, Value>) -> String {
    mint::sign(
        &Value::Object(claims.clone()),
        mint::DEV_KEY_PEM,
        mint::DEV_KID,
        mint::Alg::ES256,
    )
    .unwrap()
}

/// A token of `persona` issued at `iat` (valid for an hour), its claims changed by
/// `edit` first.
pub fn token_with(persona: &str, iat: u64, edit: impl FnOnce(&mut Map<String, Value>)) -> String {
    let mut claims = persona_claims(persona, iat, 3600);
    edit(&mut claims);
    sign_dev(&claims)
}

/// A proxy running `config` at `now` (unix seconds) with the development secrets,
/// and the consent service that answers its calls (kept to change it later).
pub fn start_at(config: String, now: u64) -> (Proxy, ConsentService) {
    let service = ConsentService::new();
    let proxy = proxy_with(config, &service, at(now))
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    (proxy, service)
}

/// The example service's answer to `GET /patients/{id}`: the stored bytes, exactly.
pub fn upstream_record(id: &str) -> Response {
    Response::json(200, stored_record(id))
}

/// The stored bytes of one record, as the example service sends them.
pub fn stored_record(id: &str) -> Vec<u8> {
    consentry_example_service::ServiceState::builtin()
        .unwrap()
        .record(id)
        .unwrap_or_else(|| panic!("no patient {id}"))
        .to_vec()
}

/// The problem `code` of a refusal ("" when the body is not a problem).
pub fn problem_code(out: &Outcome) -> String {
    serde_json::from_slice::<Value>(&out.client.body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `(status, code)` of what the client got, for table comparisons.
pub fn verdict(out: &Outcome) -> (u16, String) {
    (out.client.status, problem_code(out))
}

/// Asserts that the client got exactly the masked problem for `code`: its status,
/// exactly the problem headers (and Envoy's `content-length`, `date`, `server`),
/// and a body of exactly six members. Returns the body.
pub fn assert_problem(out: &Outcome, code: Code) -> Value {
    let c = &out.client;
    let context = format!(
        "{code:?}: {} {:?}\n{:#?}",
        c.status,
        c.body_text(),
        out.trace
    );
    assert_eq!(c.status, code.status(), "{context}");
    assert_eq!(c.fault, None, "{context}");
    assert_eq!(
        c.header("content-type"),
        Some("application/problem+json"),
        "{context}"
    );
    assert_eq!(c.header("cache-control"), Some("no-store"), "{context}");
    assert_eq!(
        c.header("x-content-type-options"),
        Some("nosniff"),
        "{context}"
    );
    assert_eq!(c.header("server"), Some("envoy"), "{context}");
    let expected_auth = match code {
        Code::TokenMissing => Some("Bearer"),
        Code::TokenInvalid | Code::TokenExpired | Code::TokenUnbound => {
            Some("Bearer error=\"invalid_token\"")
        }
        _ => None,
    };
    assert_eq!(c.header("www-authenticate"), expected_auth, "{context}");
    let retry = matches!(code, Code::RateLimited | Code::LockedOut);
    match c.header("retry-after") {
        Some(v) => assert!(
            retry && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()),
            "unexpected retry-after {v:?}: {context}"
        ),
        None => assert!(!retry, "no retry-after: {context}"),
    }
    let mut allowed = vec![
        "content-type",
        "cache-control",
        "x-content-type-options",
        "content-length",
        "date",
        "server",
    ];
    if expected_auth.is_some() {
        allowed.push("www-authenticate");
    }
    if retry {
        allowed.push("retry-after");
    }
    for (name, value) in &c.headers {
        assert!(
            allowed.contains(&name.as_str()),
            "header {name}: {:?} is not part of a problem reply: {context}",
            String::from_utf8_lossy(value)
        );
    }
    assert_eq!(
        c.header("content-length"),
        Some(c.body.len().to_string().as_str()),
        "{context}"
    );
    let body: Value =
        serde_json::from_slice(&c.body).unwrap_or_else(|e| panic!("not JSON ({e}): {context}"));
    let members = body.as_object().unwrap();
    let mut names: Vec<&str> = members.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["code", "detail", "request_id", "status", "title", "type"],
        "{context}"
    );
    assert_eq!(
        body["type"],
        format!("urn:consentry:problem:{}", code.as_str()),
        "{context}"
    );
    assert_eq!(body["code"], code.as_str(), "{context}");
    assert_eq!(body["status"], code.status(), "{context}");
    assert_eq!(body["title"], code.title(), "{context}");
    assert_eq!(body["detail"], code.detail(), "{context}");
    let id = body["request_id"].as_str().unwrap_or_default();
    assert!(
        (8..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
        "request_id {id:?}: {context}"
    );
    assert!(
        out.upstream_request.is_none() || c.status >= 500,
        "{context}"
    );
    body
}

/// Asserts that nothing of `secrets` appears in what the client got (headers or
/// body, in any letter case).
pub fn assert_no_leak(out: &Outcome, secrets: &[&str]) {
    let mut seen = out.client.body_text().to_ascii_lowercase();
    for (n, v) in &out.client.headers {
        seen.push('\n');
        seen.push_str(&n.to_ascii_lowercase());
        seen.push_str(": ");
        seen.push_str(&String::from_utf8_lossy(v).to_ascii_lowercase());
    }
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        assert!(
            !seen.contains(&s.to_ascii_lowercase()),
            "the client saw {s:?}:\n{seen}"
        );
    }
}

/// The audit record of the one decision an exchange made, parsed.
pub fn audit_record(out: &Outcome) -> Value {
    let records = audit_records(&out.logs);
    let decisions: Vec<&Value> = records.iter().filter(|r| r["kind"] == "decision").collect();
    assert_eq!(decisions.len(), 1, "{:#?}", out.logs);
    decisions[0].clone()
}

/// Every audit record in these log lines, parsed, in order.
pub fn audit_records(logs: &[LogLine]) -> Vec<Value> {
    logs.iter()
        .filter_map(|l| consentry_core::audit::extract_record(&l.message))
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

/// The plugin's internal reason for an exchange's decision (from its audit record;
/// never shown to the client).
pub fn reason(out: &Outcome) -> String {
    audit_record(out)["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The development pseudonymisation keys as `consentry --env` takes them.
pub fn dev_env_arg() -> String {
    format!("CONSENTRY_PSEUDONYM_KEYS={DEV_PSEUDONYM_KEYS}")
}

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn b64url_decode(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).unwrap()
}

/// The three parts of a compact token, decoded.
pub fn token_parts(token: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    (
        b64url_decode(parts[0]),
        b64url_decode(parts[1]),
        b64url_decode(parts[2]),
    )
}

/// A compact token from raw header, payload and signature bytes.
pub fn compact(header: &[u8], payload: &[u8], signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64url(header),
        b64url(payload),
        b64url(signature)
    )
}

/// SHA-256 (FIPS 180-4), for HMAC tokens an attacker would forge; the harness crate
/// has no digest dependency of its own.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (o, word) in out.chunks_mut(4).zip(h) {
        o.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// HMAC-SHA-256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha256(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x36)
        .chain(msg.iter().copied())
        .collect();
    let inner = sha256(&inner);
    let outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).chain(inner).collect();
    sha256(&outer)
}
