//! The consent endpoints over real HTTP: the JWKS and its replacement, status-list tokens
//! checked with the plugin's own verifier, and statuses set at run time.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use consentry_core::token::{StatusList, TokenError, Verifier, compile_issuers};
use consentry_example_service::issuer::{
    self, AUDIENCE, DEV_JWKS, DEV_KEY_PEM, DEV_KID, ISSUER, NEXT_JWKS, NEXT_KEY_PEM, NEXT_KID,
    ROTATION_JWKS, STATUS_LIST_PREFIX, SigningKey,
};
use consentry_example_service::{ConsentConfig, RunningService, ServiceState, spawn, spawn_with};
use serde_json::{Value, json};

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// One request on a fresh connection (`connection: close`); the reply's body is read by
/// its `content-length` (every consent endpoint sends one).
fn send(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nhost: consent.example.com\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let reply = Reply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    };
    if method != "HEAD"
        && let Some(len) = reply.header("content-length")
    {
        assert_eq!(reply.body.len().to_string(), len, "{method} {target}");
    }
    reply
}

fn get(svc: &RunningService, target: &str) -> Reply {
    send(svc.addr(), "GET", target, b"")
}

fn put(svc: &RunningService, target: &str, body: &str) -> Reply {
    send(svc.addr(), "PUT", target, body.as_bytes())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The example issuer as the plugin would be configured for it, with `jwks` inline.
fn verifier(jwks: &[u8]) -> Verifier {
    let jwks: Value = serde_json::from_slice(jwks).unwrap();
    let entry = json!({
        "issuer": ISSUER,
        "algorithms": ["ES256"],
        "audiences": [AUDIENCE],
        "keys": {"inline": jwks},
        "revocation": {"status_list": {
            "cluster": "consent_service",
            "uri_prefix": STATUS_LIST_PREFIX
        }}
    });
    Verifier::new(compile_issuers(&json!([entry]), "$.issuers").unwrap())
}

/// Fetches list `id` and loads it as the plugin does, with the keys the service serves.
fn fetch_list(svc: &RunningService, id: &str) -> StatusList {
    let jwks = get(svc, "/.well-known/jwks.json").body;
    let r = get(svc, &format!("/statuslists/{id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    verifier(&jwks)
        .load_status_list(ISSUER, &format!("{STATUS_LIST_PREFIX}{id}"), &r.body, now())
        .unwrap()
}

fn error_code(r: &Reply) -> String {
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    v["error"].as_str().unwrap().to_owned()
}

/// The decoded JOSE header and claims of a compact JWS.
fn parts(jwt: &str) -> (Value, Value) {
    let mut it = jwt.split('.');
    let mut next =
        || serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap();
    (next(), next())
}

#[test]
fn the_jwks_is_served_and_replaced_at_run_time() {
    let svc = spawn("127.0.0.1:0").unwrap();
    let r = get(&svc, "/.well-known/jwks.json");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("server"), Some("example-service/1.0"));
    assert_eq!(r.text(), DEV_JWKS);
    let jwks: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], DEV_KID);
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    assert_eq!(jwks["keys"][0]["use"], "sig");
    let h = send(svc.addr(), "HEAD", "/.well-known/jwks.json", b"");
    assert_eq!(
        h.header("content-length").unwrap(),
        r.body.len().to_string()
    );

    // Rotation: the next key is published beside the current one, then alone.
    let r = put(&svc, "/admin/jwks", ROTATION_JWKS);
    assert_eq!(r.status, 204);
    assert_eq!(get(&svc, "/.well-known/jwks.json").text(), ROTATION_JWKS);
    assert_eq!(put(&svc, "/admin/jwks", NEXT_JWKS).status, 204);
    assert_eq!(get(&svc, "/.well-known/jwks.json").text(), NEXT_JWKS);

    // What is not a JWKS is refused and changes nothing...
    for bad in [
        "",
        "nope",
        "[]",
        r#"{"keys":{}}"#,
        r#"{"keys":[{"kid":"k"}]}"#,
    ] {
        let r = put(&svc, "/admin/jwks", bad);
        assert_eq!(
            (r.status, error_code(&r).as_str()),
            (400, "bad_jwks"),
            "{bad}"
        );
    }
    assert_eq!(get(&svc, "/.well-known/jwks.json").text(), NEXT_JWKS);
    // ...unless asked for, to see how the plugin takes a broken document.
    assert_eq!(put(&svc, "/admin/jwks?raw=1", "not json").status, 204);
    assert_eq!(get(&svc, "/.well-known/jwks.json").text(), "not json");

    assert_eq!(
        send(svc.addr(), "POST", "/.well-known/jwks.json", b"").status,
        405
    );
    assert_eq!(get(&svc, "/admin/jwks").status, 405);
}

#[test]
fn a_status_list_is_a_token_the_plugin_loads() {
    let svc = spawn("127.0.0.1:0").unwrap();
    let before = now();
    let r = get(&svc, "/statuslists/1");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/statuslist+jwt"));
    let (header, claims) = parts(r.text());
    assert_eq!(
        header,
        json!({"typ": "statuslist+jwt", "alg": "ES256", "kid": DEV_KID})
    );
    assert_eq!(claims["sub"], "https://consent.example.com/statuslists/1");
    assert_eq!(claims["ttl"], 60);
    assert_eq!(claims["status_list"]["bits"], 2);
    let iat = claims["iat"].as_u64().unwrap();
    assert!((before..=now()).contains(&iat));
    assert!(claims["exp"].as_u64().unwrap() > iat + 60);

    let list = fetch_list(&svc, "1");
    assert_eq!((list.bits(), list.len()), (2, 1024));
    assert_eq!(list.fresh_until(), list.issued_at() + 60);
    assert!((0..1024).all(|i| list.status(i).is_ok()));

    // The list of another URI is refused, and so is an unknown list.
    let jwks = get(&svc, "/.well-known/jwks.json").body;
    assert!(
        verifier(&jwks)
            .load_status_list(ISSUER, &format!("{STATUS_LIST_PREFIX}2"), &r.body, now())
            .is_err()
    );
    let r = get(&svc, "/statuslists/2");
    assert_eq!((r.status, error_code(&r).as_str()), (404, "not_found"));
}

#[test]
fn consents_are_revoked_suspended_and_restored_for_real() {
    let svc = spawn("127.0.0.1:0").unwrap();
    // A consent token pointing at index 5 of list 1, signed with the development key.
    let t = now();
    let token = issuer::sign(
        &json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "p-1", "jti": "consent-1",
            "client_id": "insurer-acme", "iat": t, "exp": t + 600,
            "status": {"status_list": {"idx": 5, "uri": format!("{STATUS_LIST_PREFIX}1")}}
        }),
        DEV_KEY_PEM,
        Some(DEV_KID),
        None,
    )
    .unwrap();
    let v = verifier(DEV_JWKS.as_bytes());
    let consent = v.verify(token.as_bytes(), t).unwrap();
    let check =
        |svc: &RunningService| v.check_revocation(&consent, Some(&fetch_list(svc, "1")), now());
    assert_eq!(check(&svc), Ok(()));

    assert_eq!(put(&svc, "/admin/statuslists/1/5", "1").status, 204);
    assert_eq!(check(&svc), Err(TokenError::StatusInvalid));
    assert_eq!(put(&svc, "/admin/statuslists/1/5", "2\n").status, 204);
    assert_eq!(check(&svc), Err(TokenError::Suspended));
    assert_eq!(put(&svc, "/admin/statuslists/1/5", "0").status, 204);
    assert_eq!(check(&svc), Ok(()));
    // Its neighbours were never touched.
    let list = fetch_list(&svc, "1");
    assert!(
        (0..1024)
            .filter(|i| *i != 5)
            .all(|i| list.value(i) == Some(0))
    );
}

#[test]
fn status_lists_are_created_and_grown_by_setting_a_status() {
    let svc = spawn("127.0.0.1:0").unwrap();
    assert_eq!(get(&svc, "/statuslists/ward-7").status, 404);
    assert_eq!(put(&svc, "/admin/statuslists/ward-7/3", "1").status, 204);
    let list = fetch_list(&svc, "ward-7");
    assert_eq!(list.len(), 1024);
    assert_eq!(list.status(3), Err(TokenError::StatusInvalid));
    assert_eq!(put(&svc, "/admin/statuslists/ward-7/5000", "2").status, 204);
    let list = fetch_list(&svc, "ward-7");
    assert!(list.len() >= 5001);
    assert_eq!(list.status(5000), Err(TokenError::Suspended));
    assert_eq!(list.status(3), Err(TokenError::StatusInvalid));
}

#[test]
fn bad_status_updates_are_refused() {
    let svc = spawn("127.0.0.1:0").unwrap();
    for (target, body, code) in [
        ("/admin/statuslists/1/x", "1", "bad_index"),
        ("/admin/statuslists/1/-1", "1", "bad_index"),
        ("/admin/statuslists/1/1048576", "1", "bad_index"),
        ("/admin/statuslists/1/0", "", "bad_status"),
        ("/admin/statuslists/1/0", "revoked", "bad_status"),
        ("/admin/statuslists/1/0", "256", "bad_status"),
        ("/admin/statuslists/1/0", "4", "status_too_large"),
        ("/admin/statuslists/a%2Fb/0", "1", "bad_list_id"),
    ] {
        let r = put(&svc, target, body);
        assert_eq!(
            (r.status, error_code(&r).as_str()),
            (400, code),
            "{target} {body:?}"
        );
    }
    // 3 fits in two bits: a value the plugin does not recognise, refused there.
    assert_eq!(put(&svc, "/admin/statuslists/1/9", "3").status, 204);
    assert_eq!(
        fetch_list(&svc, "1").status(9),
        Err(TokenError::StatusUnrecognised)
    );
    assert_eq!(get(&svc, "/admin/statuslists/1/0").status, 405);
}

#[test]
fn bits_ttl_and_the_signing_key_are_configurable() {
    let mut config = ConsentConfig::builtin().unwrap();
    config.status_bits = 1;
    config.status_ttl_seconds = 5;
    config.status_list_len = 16;
    config.signing_key = SigningKey::from_pem(NEXT_KEY_PEM, Some(NEXT_KID), None).unwrap();
    config.jwks = NEXT_JWKS.as_bytes().to_vec().into();
    let state = ServiceState::builtin()
        .unwrap()
        .with_consent(config)
        .unwrap();
    let svc = spawn_with("127.0.0.1:0", state).unwrap();

    let r = get(&svc, "/statuslists/1");
    let (header, claims) = parts(r.text());
    assert_eq!(header["kid"], NEXT_KID);
    assert_eq!(
        (
            claims["ttl"].as_u64(),
            claims["status_list"]["bits"].as_u64()
        ),
        (Some(5), Some(1))
    );
    let list = fetch_list(&svc, "1");
    assert_eq!((list.bits(), list.len()), (1, 16));
    assert_eq!(list.fresh_until(), list.issued_at() + 5);

    // One bit holds valid and revoked only.
    assert_eq!(put(&svc, "/admin/statuslists/1/2", "1").status, 204);
    let r = put(&svc, "/admin/statuslists/1/2", "2");
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (400, "status_too_large")
    );
    assert_eq!(
        fetch_list(&svc, "1").status(2),
        Err(TokenError::StatusInvalid)
    );

    // The lists are signed with dev-2026-2: the development JWKS does not verify them.
    let body = get(&svc, "/statuslists/1").body;
    assert!(
        verifier(DEV_JWKS.as_bytes())
            .load_status_list(ISSUER, &format!("{STATUS_LIST_PREFIX}1"), &body, now())
            .is_err()
    );
}
