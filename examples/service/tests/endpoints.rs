//! Drives the service over real TCP with a minimal HTTP/1.1 client, so what is
//! checked is what a proxy in front of it receives on the wire.
// The whole file is test code, helpers included: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use consentry_example_service::{BUILTIN_PATIENTS_JSON, RunningService, ServiceState, spawn};
use serde_json::Value;

struct Reply {
    status: u16,
    /// Names lower-cased, in wire order.
    headers: Vec<(String, String)>,
    /// The body after undoing chunked transfer encoding.
    body: Vec<u8>,
    /// How many chunks arrived (0 when not chunked).
    chunks: usize,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends one request on a fresh connection (`connection: close`) and reads the
/// whole reply.
fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();

    let end = find(&raw, b"\r\n\r\n").unwrap();
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let rest = &raw[end + 4..];
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
    let mut reply = Reply {
        status,
        headers,
        body: Vec::new(),
        chunks: 0,
    };
    if method == "HEAD" {
        assert!(rest.is_empty(), "HEAD reply has a body");
    } else if reply.header("transfer-encoding") == Some("chunked") {
        let mut rest = rest;
        loop {
            let line_end = find(rest, b"\r\n").unwrap();
            let size_text = std::str::from_utf8(&rest[..line_end]).unwrap();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap(), 16).unwrap();
            rest = &rest[line_end + 2..];
            if size == 0 {
                assert_eq!(rest, b"\r\n", "trailer after the last chunk");
                break;
            }
            reply.body.extend_from_slice(&rest[..size]);
            assert_eq!(&rest[size..size + 2], b"\r\n");
            rest = &rest[size + 2..];
            reply.chunks += 1;
        }
    } else {
        // Without a length (204, 304) the body is whatever precedes the close.
        if let Some(len) = reply.header("content-length") {
            assert_eq!(rest.len().to_string(), len, "body length vs content-length");
        }
        reply.body = rest.to_vec();
    }
    reply
}

fn get(svc: &RunningService, target: &str) -> Reply {
    send(svc.addr(), "GET", target, &[], b"")
}

fn state() -> ServiceState {
    ServiceState::builtin().unwrap()
}

fn assert_json(r: &Reply) {
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("server"), Some("example-service/1.0"));
}

#[test]
fn healthz() {
    let svc = spawn("127.0.0.1:0").unwrap();
    let r = get(&svc, "/healthz");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("server"), Some("example-service/1.0"));
    assert_eq!(r.body, b"ok");
    assert!(svc.base_url().starts_with("http://127.0.0.1:"));
}

#[test]
fn full_records_are_the_stored_bytes() {
    let svc = spawn("127.0.0.1:0").unwrap();
    let st = state();
    for id in st.ids() {
        let r = get(&svc, &format!("/patients/{id}"));
        assert_eq!(r.status, 200, "{id}");
        assert_json(&r);
        assert!(r.header("transfer-encoding").is_none());
        assert_eq!(r.body, st.record(id).unwrap());
        assert!(
            find(BUILTIN_PATIENTS_JSON, &r.body).is_some(),
            "{id} not a slice of the file"
        );
        assert_eq!(r.json()["id"], id.as_str());
    }
    let p1 = get(&svc, "/patients/p-1");
    assert!(
        (4_800..=5_400).contains(&p1.body.len()),
        "{}",
        p1.body.len()
    );
    let text = String::from_utf8(p1.body).unwrap();
    for number in ["120.50", "1e3", "-0.0", "12345678901234567890"] {
        assert!(text.contains(number), "{number}");
    }
}

#[test]
fn unknown_things_are_json_404s() {
    let svc = spawn("127.0.0.1:0").unwrap();
    for target in [
        "/patients/p-99",
        "/patients/p-99/history",
        "/patients/p-99/billing",
        "/nope",
        "/status/abc",
        "/status/99",
        "/records?ids=p-1,p-99",
    ] {
        let r = get(&svc, target);
        assert_eq!(r.status, 404, "{target}");
        assert_json(&r);
        assert_eq!(r.body, br#"{"error":"not_found"}"#, "{target}");
    }
    let r = send(svc.addr(), "DELETE", "/patients/p-1", &[], b"");
    assert_eq!(r.status, 405);
    assert_json(&r);
    let r = get(&svc, "/records");
    assert_eq!(r.status, 400);
    assert_json(&r);
}

#[test]
fn summaries_billing_and_record_lists() {
    let svc = spawn("127.0.0.1:0").unwrap();
    let st = state();

    let r = get(&svc, "/patients");
    assert_eq!(r.status, 200);
    assert_json(&r);
    let v = r.json();
    let list = v["patients"].as_array().unwrap();
    assert_eq!(list.len(), st.ids().len());
    assert_eq!(list[0]["id"], "p-1");
    assert_eq!(list[0]["identity"]["name"]["family"], "Whitcombe");
    let keys: Vec<&String> = list[0].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 3);

    let r = get(&svc, "/patients/p-1/billing");
    assert_eq!(r.status, 200);
    assert_json(&r);
    let record: Value = serde_json::from_slice(&st.record("p-1").unwrap()).unwrap();
    assert_eq!(
        r.json(),
        serde_json::json!({"id": "p-1", "billing": record["billing"]})
    );
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.contains("120.50") && text.contains("12345678901234567890"));

    let r = get(&svc, "/records?ids=p-1,p-5");
    assert_eq!(r.status, 200);
    assert_json(&r);
    let mut want = b"{\"records\":[".to_vec();
    want.extend_from_slice(&st.record("p-1").unwrap());
    want.push(b',');
    want.extend_from_slice(&st.record("p-5").unwrap());
    want.extend_from_slice(b"]}");
    assert_eq!(r.body, want);
    assert_eq!(r.json()["records"][1]["guardians"][0], "p-4");
}

#[test]
fn bank_accounts_balances_and_transactions_are_the_stored_bytes() {
    let svc = spawn("127.0.0.1:0").unwrap();
    let bank = state().bank().clone();
    for path in [
        "/accounts",
        "/accounts/acc-1001",
        "/accounts/acc-1001/balances",
        "/accounts/acc-1001/transactions",
        "/accounts/acc-2001/transactions",
    ] {
        let r = get(&svc, path);
        assert_eq!(r.status, 200, "{path}");
        assert_json(&r);
        assert_eq!(r.body, bank.resource(path).unwrap().to_vec(), "{path}");
    }
    let r = get(&svc, "/accounts/acc-1001/transactions");
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.starts_with("{\"account_id\":\"acc-1001\",\"transactions\":["));
    assert!(text.contains("\"amount\": -950.00"));

    for path in [
        "/accounts/acc-9",
        "/accounts/acc-9/balances",
        "/accounts/acc-1001/x",
    ] {
        let r = get(&svc, path);
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (404, Some("not_found"))
        );
    }
    let r = get(&svc, "/accounts/acc-1001/transactions?chunked=1");
    assert_eq!(r.body, bank.transactions("acc-1001").unwrap().to_vec());
    assert!(r.chunks > 10, "{}", r.chunks);
}

#[test]
fn history_is_the_64_kb_record() {
    let svc = spawn("127.0.0.1:0").unwrap();
    let r = get(&svc, "/patients/p-1/history");
    assert_eq!(r.status, 200);
    assert_json(&r);
    assert_eq!(r.body.len(), 65_340);
    assert_eq!(r.body, state().history("p-1").unwrap());
    assert!(r.json()["clinical"]["encounters"].as_array().unwrap().len() > 100);
}

#[test]
fn head_has_the_get_length_and_no_body() {
    let svc = spawn("127.0.0.1:0").unwrap();
    for target in [
        "/patients",
        "/patients/p-1",
        "/patients/p-1/history",
        "/patients/p-1/billing",
        "/records?ids=p-2",
        "/status/500",
        "/patients/p-1?gzip=1",
    ] {
        let g = get(&svc, target);
        let h = send(svc.addr(), "HEAD", target, &[], b"");
        assert_eq!(h.status, g.status, "{target}");
        assert_eq!(
            h.header("content-length").unwrap(),
            g.body.len().to_string(),
            "{target}"
        );
        assert_eq!(h.header("content-type"), g.header("content-type"));
    }
}

#[test]
fn chunked_really_arrives_in_many_chunks() {
    let svc = spawn("127.0.0.1:0").unwrap();
    let st = state();
    let r = get(&svc, "/patients/p-1?chunked=1");
    assert_eq!(r.status, 200);
    assert_json(&r);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert!(r.header("content-length").is_none());
    assert_eq!(r.body, st.record("p-1").unwrap());
    assert!(r.chunks >= 50, "{} chunks", r.chunks);

    let r = get(&svc, "/patients/p-1/history?chunked=1");
    assert_eq!(r.body, st.history("p-1").unwrap());
    assert!(r.chunks > 600, "{} chunks", r.chunks);

    for target in [
        "/patients?chunked=1",
        "/patients/p-2/billing?chunked=1",
        "/records?ids=p-1,p-2&chunked=1",
    ] {
        let r = get(&svc, target);
        assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{target}");
        assert_eq!(
            r.body,
            get(&svc, target.split_once("chunked").unwrap().0).body
        );
    }
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn gzip_decodes_to_the_same_bytes() {
    let svc = spawn("127.0.0.1:0").unwrap();
    let st = state();
    let r = get(&svc, "/patients/p-1?gzip=1");
    assert_eq!(r.status, 200);
    assert_json(&r);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(r.body.len() < st.record("p-1").unwrap().len());
    assert_eq!(gunzip(&r.body), st.record("p-1").unwrap());

    let r = get(&svc, "/patients/p-3/history?gzip=1&chunked=1");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(gunzip(&r.body), st.history("p-3").unwrap());
}

#[test]
fn content_type_overrides() {
    let svc = spawn("127.0.0.1:0").unwrap();
    let r = get(&svc, "/patients/p-1?ctype=text/html");
    assert_eq!(r.all("content-type"), ["text/html"]);
    assert_eq!(r.body, state().record("p-1").unwrap());

    let r = get(
        &svc,
        "/patients/p-1?ctype=text%2Fplain%3B%20charset%3Dutf-8",
    );
    assert_eq!(r.all("content-type"), ["text/plain; charset=utf-8"]);

    let r = get(&svc, "/patients/p-1?dup_ctype=1");
    assert_eq!(r.all("content-type"), ["application/json", "text/html"]);

    let r = get(&svc, "/patients/p-1?ctype=%0A");
    assert_eq!(r.status, 400);
}

#[test]
fn status_pages_leak_internals() {
    let svc = spawn("127.0.0.1:0").unwrap();
    for code in [500u16, 502, 503, 404, 403, 200] {
        let r = get(&svc, &format!("/status/{code}"));
        assert_eq!(r.status, code);
        assert_json(&r);
        assert_eq!(r.header("x-powered-by"), Some("axum"));
        let v = r.json();
        assert_eq!(v["status"], code);
        assert_eq!(v["host"], "db-7.internal");
        assert!(v["stack"].as_str().unwrap().contains("repo.rs:42"));
        assert!(v["patient"]["national_id"].is_string());
    }
    let r = send(svc.addr(), "POST", "/status/503", &[], b"{}");
    assert_eq!(r.status, 503);
    let r = get(&svc, "/status/204");
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    let r = get(&svc, "/status/500?chunked=1");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.json()["error"], "db timeout");
}

#[test]
fn echo_reflects_the_request() {
    let svc = spawn("127.0.0.1:0").unwrap();
    let body = "{\"purpose\":\"treatment\",\"caf\u{e9}\":1.50}";
    let r = send(
        svc.addr(),
        "POST",
        "/echo/some/path?a=1&a=2",
        &[
            ("x-dup", "one"),
            ("content-type", "application/json"),
            ("x-dup", "two"),
            ("X-Mixed-Case", "v"),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_json(&r);
    let v = r.json();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/echo/some/path");
    assert_eq!(v["query"], "a=1&a=2");
    assert_eq!(v["body"], body);
    let headers: Vec<(String, String)> = v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let dups: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "x-dup")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(dups, ["one", "two"]);
    assert!(headers.contains(&("x-mixed-case".into(), "v".into())));
    assert!(headers.contains(&("content-length".into(), body.len().to_string())));

    for method in ["GET", "PUT"] {
        let r = send(
            svc.addr(),
            method,
            "/echo",
            &[],
            if method == "PUT" { b"x" } else { b"" },
        );
        let v = r.json();
        assert_eq!(v["method"], method);
        assert_eq!(v["path"], "/echo");
        assert_eq!(v["query"], Value::Null);
        assert_eq!(v["body"], if method == "PUT" { "x" } else { "" });
    }

    // Invalid UTF-8 comes back lossily, not as an error.
    let r = send(svc.addr(), "POST", "/echo", &[], b"\xff{}");
    assert_eq!(r.json()["body"], "\u{fffd}{}");
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let svc = spawn("127.0.0.1:0").unwrap();
    let mut s = TcpStream::connect(svc.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\nGET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2);
}

#[test]
fn drop_stops_the_server_even_with_an_idle_connection_open() {
    let svc = spawn("127.0.0.1:0").unwrap();
    let addr = svc.addr();
    let _idle = TcpStream::connect(addr).unwrap();
    let started = std::time::Instant::now();
    svc.stop().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(TcpStream::connect(addr).is_err());
}
