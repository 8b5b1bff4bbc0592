//! Header hygiene end to end. A released response keeps only the protocol's headers
//! (`content-type`, `content-length`, `transfer-encoding`) and its route's allow-list,
//! loses every digest of a body it no longer is, and is marked `cache-control:
//! private, no-store`; a response without a body loses its length. The upstream never
//! gets a conditional or partial request (it answers whole, so the answer can be
//! redacted) nor an identity header a client made up; a method override and a
//! protocol upgrade are refused.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use consentry_envoy::http::parse_response;
use consentry_envoy::scripted::{Reply, ScriptedUpstream};
use consentry_envoy::{EnvoyBuilder, HttpResponse, RunningEnvoy, send_raw};
use consentry_example_service::RunningService;
use serde_json::{Value, json};

use crate::support::*;

const UPSTREAM_DATE: &str = "Sat, 01 Jan 2000 00:00:00 GMT";
const ETAG: &str = "\"zq-etag-1\"";

/// Every header here is one the client must not get (except where the route
/// allow-lists it and the body is unchanged).
const NOISY: [(&str, &str); 13] = [
    ("x-request-id", "zq-upstream-request-id"),
    ("date", UPSTREAM_DATE),
    ("vary", "accept, authorization"),
    ("cache-control", "public, max-age=86400"),
    ("expires", "Fri, 01 Jan 2100 00:00:00 GMT"),
    ("set-cookie", "upstream-session=zqcookie; Path=/"),
    ("content-digest", "sha-256=:zqcontentdigest=:"),
    ("repr-digest", "sha-256=:zqreprdigest=:"),
    ("digest", "SHA-256=zqdigest="),
    ("etag", ETAG),
    ("server", "zq-upstream-server/1.0"),
    ("x-powered-by", "zqframework"),
    ("x-internal-debug", "zqdebug"),
];

/// An upstream answer with every noisy header, `last-modified` (allow-listed
/// everywhere) and this JSON body.
fn noisy_reply(status: u16, body: &str) -> Reply {
    let mut reply = Reply::new(status)
        .header("content-type", "application/json")
        .header("content-length", &body.len().to_string())
        .header("last-modified", UPSTREAM_DATE)
        .body(body);
    for (name, value) in NOISY {
        reply = reply.header(name, value);
    }
    reply
}

struct Setup {
    envoy: RunningEnvoy,
    upstream: ScriptedUpstream,
    _consent: RunningService,
}

/// The example policy, `patient-record` also allow-listing the digest headers (the
/// other routes keep `etag` and `last-modified` only).
fn policy() -> Value {
    let mut policy = example_policy();
    for route in policy["routes"].as_array_mut().unwrap() {
        if route["name"] == "patient-record" {
            route["response"]["headers"] = json!([
                "etag",
                "last-modified",
                "content-digest",
                "repr-digest",
                "digest"
            ]);
        }
    }
    policy
}

fn setup(configure: impl FnOnce(EnvoyBuilder) -> EnvoyBuilder) -> Setup {
    let consent = example_service(60);
    let upstream = ScriptedUpstream::start().unwrap();
    require_prerequisites();
    let builder = consentry_envoy::Envoy::builder()
        .upstream_port(upstream.port())
        .var("CONSENT_PORT", consent.addr().port())
        .plugin_config_json(&policy().to_string());
    let envoy = start(configure(builder));
    Setup {
        envoy,
        upstream,
        _consent: consent,
    }
}

fn names(r: &HttpResponse) -> BTreeSet<String> {
    r.headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// What every released answer has: Envoy's own `date`, `server` and `connection`, the
/// plugin's cache and sniffing headers, and `last-modified` (allow-listed).
const RELEASED: [&str; 6] = [
    "cache-control",
    "x-content-type-options",
    "last-modified",
    "date",
    "server",
    "connection",
];

/// The headers every released answer carries, with the values they must have.
fn assert_released_headers(r: &HttpResponse) {
    assert_eq!(
        r.header_all("cache-control"),
        ["private, no-store"],
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("server"), Some("envoy"));
    assert_ne!(r.header("date"), Some(UPSTREAM_DATE), "Envoy's own date");
    assert_eq!(r.header("last-modified"), Some(UPSTREAM_DATE));
    let seen = format!("{:?}", r.headers);
    assert!(
        !seen.contains("zq"),
        "an upstream header reached the client: {seen}"
    );
}

#[test]
fn a_released_answer_keeps_only_the_protocols_and_the_routes_headers() {
    let _watchdog = watchdog("response headers", Duration::from_secs(60));
    let s = setup(|b| b);
    let token = sign(&claims("insurer"));
    let with_body = |extra: &[&str]| {
        let mut all: Vec<&str> = RELEASED.to_vec();
        all.extend(["content-type", "content-length"]);
        all.extend(extra);
        set(&all)
    };

    // Redacted (an unclassified member goes): no digest of the upstream's body, though
    // the route allow-lists them all.
    let redacted = r#"{"id":"p-1","resourceType":"Patient","internal_note":"zqnote"}"#;
    s.upstream.set_default(noisy_reply(200, redacted));
    let r = get_with(&s.envoy, "/patients/p-1", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), r#"{"id":"p-1","resourceType":"Patient"}"#);
    assert_eq!(names(&r), with_body(&[]), "{:?}", r.headers);
    assert_released_headers(&r);
    assert_eq!(r.content_length(), Some(r.body.len()));

    // Unchanged: the allow-listed digests and etag describe it still, and go with it.
    let unchanged = r#"{"id":"p-1","resourceType":"Patient"}"#;
    s.upstream.set_default(noisy_reply(200, unchanged));
    let r = get_with(&s.envoy, "/patients/p-1", &token);
    assert_eq!(r.text(), unchanged);
    assert_eq!(
        names(&r),
        with_body(&["etag", "content-digest", "repr-digest", "digest"]),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("etag"), Some(ETAG));
    assert_eq!(
        r.header("content-digest"),
        Some("sha-256=:zqcontentdigest=:")
    );
    assert_eq!(r.header_all("cache-control"), ["private, no-store"]);

    // Unchanged on a route that allow-lists etag alone: the digests still go.
    s.upstream.set_default(noisy_reply(200, r#"{"id":"p-1"}"#));
    let r = get_with(&s.envoy, "/patients/p-1/billing", &token);
    assert_eq!((r.status, r.text()), (200, r#"{"id":"p-1"}"#.to_owned()));
    assert_eq!(names(&r), with_body(&["etag"]), "{:?}", r.headers);
    assert_eq!(r.header("etag"), Some(ETAG));

    // HEAD: no body goes, so nothing may describe the upstream's, its length included.
    s.upstream.set_default(noisy_reply(200, unchanged));
    let r = consentry_envoy::send(
        "HEAD",
        &format!("{}/patients/p-1", s.envoy.base_url()),
        &[("authorization", &bearer(&token))],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    // Without a length Envoy frames the (empty) answer chunked: a protocol header.
    let mut head_names = names(&r);
    head_names.remove("transfer-encoding");
    assert_eq!(
        head_names,
        set(&[&RELEASED[..], &["content-type"]].concat()),
        "{:?}",
        r.headers
    );
    assert_released_headers(&r);
}

/// A conditional request reaches the upstream unconditional; when the upstream
/// answers 304 anyway, the client gets no length (and no validator) of a body it never
/// saw.
#[test]
fn a_304_carries_no_content_length() {
    let _watchdog = watchdog("304", Duration::from_secs(60));
    let s = setup(|b| b);
    let mut reply = Reply::new(304)
        .header("content-length", "1234")
        .header("last-modified", UPSTREAM_DATE);
    for (name, value) in NOISY {
        reply = reply.header(name, value);
    }
    s.upstream.set_default(reply);
    let token = sign(&claims("insurer"));
    let r = get(
        &s.envoy,
        "/patients/p-1",
        &[
            ("authorization", &bearer(&token)),
            ("if-none-match", ETAG),
            ("if-modified-since", UPSTREAM_DATE),
        ],
    );
    assert_eq!(r.status, 304, "{:?} {}", r.headers, r.text());
    assert!(r.body.is_empty());
    assert_eq!(names(&r), set(&RELEASED), "{:?}", r.headers);
    assert_released_headers(&r);
    let sent = s.upstream.received().pop().unwrap();
    assert_eq!(sent.header("if-none-match"), None);
    assert_eq!(sent.header("if-modified-since"), None);
}

#[test]
fn conditional_and_identity_request_headers_never_reach_the_upstream() {
    let _watchdog = watchdog("request headers", Duration::from_secs(60));
    let s = setup(|b| b);
    s.upstream
        .set_default(noisy_reply(200, r#"{"id":"p-1","resourceType":"Patient"}"#));
    let token = sign(&claims("insurer"));
    let stripped = [
        ("if-none-match", ETAG),
        ("if-match", ETAG),
        ("if-modified-since", UPSTREAM_DATE),
        ("if-unmodified-since", UPSTREAM_DATE),
        ("if-range", ETAG),
        ("range", "bytes=0-9"),
        ("accept-encoding", "gzip"),
        (
            "x-forwarded-client-cert",
            "By=spiffe://zq.example/upstream;URI=spiffe://zq.example/admin",
        ),
        ("client-cert", ":zqclientcert=:"),
        ("client-cert-chain", ":zqclientcertchain=:"),
        ("x-client-cert", "zqxclientcert"),
        ("x-ssl-client-cert", "zqsslclientcert"),
    ];
    let auth = bearer(&token);
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend(stripped);
    let r = get(&s.envoy, "/patients/p-1", &headers);
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = s.upstream.received().pop().unwrap();
    for (name, _) in stripped {
        assert_eq!(sent.header(name), None, "the upstream received {name}");
    }
    let seen = format!("{:?}", sent.headers);
    assert!(!seen.contains("zq") && !seen.contains(ETAG), "{seen}");
}

#[test]
fn a_method_override_is_refused_with_a_masked_400() {
    let _watchdog = watchdog("method override", Duration::from_secs(60));
    let s = setup(|b| b);
    s.upstream
        .set_default(noisy_reply(200, r#"{"id":"p-1","resourceType":"Patient"}"#));
    let token = sign(&claims("insurer"));
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        let r = get(
            &s.envoy,
            "/patients/p-1",
            &[("authorization", &bearer(&token)), (name, "DELETE")],
        );
        assert_problem(&r, 400, "bad_request");
    }
    assert!(s.upstream.received().is_empty());
}

/// `GET /patients/p-1` asking to switch to websocket; the status line of every
/// response received (a 101 would be followed by anything at all).
fn websocket_upgrade(addr: SocketAddr, token: &str) -> (Vec<String>, HttpResponse) {
    let request = format!(
        "GET /patients/p-1 HTTP/1.1\r\nhost: consentry.test\r\nauthorization: Bearer {token}\r\n\
         connection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let raw = send_raw(addr, request.as_bytes(), Duration::from_secs(5)).unwrap();
    let text = String::from_utf8_lossy(&raw.bytes).into_owned();
    let status_lines = text
        .split("\r\n")
        .filter(|l| l.starts_with("HTTP/"))
        .map(str::to_owned)
        .collect();
    let response = parse_response(&raw.bytes, raw.complete, false).unwrap();
    (status_lines, response)
}

/// The upstream would switch protocols; the client never sees it, whether Envoy
/// refuses the upgrade itself (no `upgrade_configs`, the shipped configuration) or lets
/// it through to the plugin (a configuration that allows websocket).
#[test]
fn a_websocket_upgrade_on_a_protected_route_never_switches_protocols() {
    let _watchdog = watchdog("upgrade", Duration::from_secs(60));
    let switch = Reply::new(101)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    let token = sign(&claims("insurer"));

    let s = setup(|b| b);
    s.upstream.set_default(switch.clone());
    let (lines, r) = websocket_upgrade(s.envoy.listen_addr(), &token);
    assert_eq!(lines.len(), 1, "{lines:?}");
    // Envoy's own refusal (403, `upgrade_failed`), masked by the mappers.
    assert_problem(&r, 403, "bad_request");
    assert!(s.upstream.received().is_empty());
    drop(s);

    let template =
        std::fs::read_to_string(consentry_envoy::configs_dir().join("consentry.yaml")).unwrap();
    let codec = "          codec_type: AUTO\n";
    assert_eq!(template.matches(codec).count(), 1);
    let upgrades = template.replace(
        codec,
        &format!("{codec}          upgrade_configs: [{{upgrade_type: websocket}}]\n"),
    );
    let s = setup(|b| b.template_text(upgrades));
    s.upstream.set_default(switch);
    let (lines, r) = websocket_upgrade(s.envoy.listen_addr(), &token);
    assert_eq!(lines.len(), 1, "{lines:?}");
    // The plugin's refusal.
    assert_problem(&r, 400, "bad_request");
    assert!(s.upstream.received().is_empty());
}
