//! Envoy's own replies, masked. When Envoy answers itself (a held body over its buffer
//! limit, an upstream that breaks off, times out or cannot be reached, a path it
//! rejects) its text/plain reply names its internals; the shipped configurations'
//! `local_reply_config` turns each into the plugin's problem+json (413
//! `request_too_large`, 5xx `upstream_error`, other 4xx `bad_request`, the status
//! kept). Where the plugin still gets a callback it answers with its own problem
//! instead; where it gets none (Envoy ended the stream under it), its audit record says
//! what the client really got. Either way the client sees a masked problem and not one
//! byte of the upstream's body, and the plugin's own refusals pass the mappers
//! byte for byte.

use std::time::Duration;

use consentry_core::problem::{self, Code};
use consentry_envoy::http::parse_response;
use consentry_envoy::scripted::{Reply, ScriptedUpstream};
use consentry_envoy::{EnvoyBuilder, HttpResponse, RunningEnvoy, send_raw_concurrently};
use consentry_example_service::RunningService;
use serde_json::{Value, json};

use crate::support::*;

/// In every upstream body here: it must never reach a client.
const MARKER: &str = "zqupstreambodymarker";

struct Setup {
    envoy: RunningEnvoy,
    upstream: ScriptedUpstream,
    _consent: RunningService,
}

/// Envoy (`consentry.yaml`, adjusted by `configure`) with `policy` in front of a
/// scripted upstream answering `reply`; the example service is the consent service.
fn setup(
    policy: &Value,
    reply: Reply,
    configure: impl FnOnce(EnvoyBuilder) -> EnvoyBuilder,
) -> Setup {
    let consent = example_service(60);
    let upstream = ScriptedUpstream::start().unwrap();
    upstream.set_default(reply);
    require_prerequisites();
    let builder = consentry_envoy::Envoy::builder()
        .upstream_port(upstream.port())
        .var("CONSENT_PORT", consent.addr().port())
        .plugin_config_json(&policy.to_string());
    let envoy = start(configure(builder));
    Setup {
        envoy,
        upstream,
        _consent: consent,
    }
}

/// The example policy with `limits.max_body_bytes` raised to `bytes`: above Envoy's
/// buffer (4 MiB), so Envoy's limit is the one that bites (the misconfiguration the
/// documentation warns about, and what Envoy does then).
fn policy_with_body_limit(bytes: usize) -> Value {
    let mut policy = example_policy();
    policy["limits"] = json!({"max_body_bytes": bytes});
    policy
}

fn insurer_get(envoy: &RunningEnvoy, path: &str) -> HttpResponse {
    get_with(envoy, path, &sign(&claims("insurer")))
}

/// A masked problem of Envoy's (the mappers'): the plugin's members, its type base,
/// its headers, the request's id, and nothing of the upstream. Returns the id.
fn assert_masked(r: &HttpResponse, status: u16, code: &str) -> String {
    let id = assert_masked_shape(r, status, code);
    let id = id.as_str().unwrap_or_default().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {}", r.text());
    id
}

/// [`assert_masked`] without the id, which it returns as it is.
fn assert_masked_shape(r: &HttpResponse, status: u16, code: &str) -> Value {
    let body = assert_problem(r, status, code);
    // Envoy writes the members in its own order; they are the plugin's.
    let mut members: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    members.sort_unstable();
    assert_eq!(
        members,
        ["code", "detail", "request_id", "status", "title", "type"],
        "{body}"
    );
    assert_eq!(body["type"], format!("urn:consentry:problem:{code}"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_no_upstream_bytes(r);
    body["request_id"].clone()
}

fn assert_no_upstream_bytes(r: &HttpResponse) {
    let seen = format!("{:?} {}", r.headers, r.text());
    assert!(
        !seen.contains(MARKER),
        "upstream bytes reached the client: {seen}"
    );
    assert!(
        !seen.contains("upstream connect error") && !seen.contains("reset reason"),
        "{seen}"
    );
}

/// The plugin's own problem for `code`, byte for byte as the plugin makes it: the
/// headers it gives (Envoy adds only `content-length`, `date`, `server` and
/// `connection`) and the body, with the request id the response quotes.
fn assert_plugins_problem(r: &HttpResponse, code: Code, retry_after: Option<u64>) {
    let body = assert_problem(r, code.status(), code.as_str());
    let id = body["request_id"].as_str().unwrap();
    let expected = problem::reply(
        code,
        consentry_core::config::DEFAULT_PROBLEM_TYPE_BASE,
        id,
        retry_after,
    );
    assert_eq!(
        r.text(),
        String::from_utf8_lossy(&expected.body),
        "{code:?}"
    );
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(n, _)| !["content-length", "date", "server", "connection"].contains(&n.as_str()))
        .cloned()
        .collect();
    assert_eq!(headers, expected.headers, "{code:?}");
    assert_no_upstream_bytes(r);
}

/// The decision records once `n` are written, the last one checked: its `outcome`,
/// the `status` the client really got and its `reason`.
fn assert_last_record(
    envoy: &RunningEnvoy,
    n: usize,
    outcome: &str,
    status: u16,
    reason: &str,
) -> Value {
    let records = wait_for_decisions(envoy, n);
    assert_eq!(records.len(), n, "{records:?}");
    let last = &records[n - 1];
    assert_eq!(
        (&last["outcome"], &last["status"], &last["reason"]),
        (&json!(outcome), &json!(status), &json!(reason)),
        "{last}"
    );
    if reason == "proxy_reply" {
        // The record carries the code of the masked reply the client got.
        let code = match status {
            413 => "request_too_large",
            500.. => "upstream_error",
            _ => "bad_request",
        };
        assert_eq!(last["code"], code, "{last}");
    }
    last.clone()
}

fn json_body(len: usize) -> Vec<u8> {
    let mut body =
        format!(r#"{{"id":"p-1","identity":{{"national_id":"{MARKER}"}},"pad":""#).into_bytes();
    body.resize(len - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

/// The plugin holds the response for redaction while a fast upstream writes 16 MiB
/// (chunked: no length to refuse early): Envoy's buffer overflows under the held body,
/// Envoy answers 500 itself and the plugin gets no further callback.
#[test]
fn a_held_response_over_envoys_buffer_is_a_masked_500() {
    let _watchdog = watchdog("response overflow", Duration::from_secs(60));
    let pieces: Vec<Vec<u8>> = json_body(16 << 20)
        .chunks(1 << 20)
        .map(<[u8]>::to_vec)
        .collect();
    let reply = Reply::new(200)
        .header("content-type", "application/json")
        .pieces(pieces)
        .gap(Duration::ZERO);
    let s = setup(&policy_with_body_limit(64 << 20), reply, |b| b);
    let r = insurer_get(&s.envoy, "/patients/p-1");
    let id = assert_masked(&r, 500, "upstream_error");
    // Allowed, then ended under the plugin: withheld, with the status Envoy sent.
    let record = assert_last_record(&s.envoy, 1, "withheld", 500, "proxy_reply");
    assert_eq!(
        record["request_id"], id,
        "the id to quote is the audit record's"
    );
}

/// The upstream sends its headers and half a body, then closes the connection.
#[test]
fn an_upstream_that_breaks_off_mid_body_is_masked() {
    let _watchdog = watchdog("upstream breaks off", Duration::from_secs(60));
    let body = json_body(4096);
    let reply = Reply::new(200)
        .header("content-type", "application/json")
        .pieces([&body[..2048]])
        .break_off();
    let s = setup(&example_policy(), reply, |b| b);
    let r = insurer_get(&s.envoy, "/patients/p-1");
    let id = assert_masked(&r, 502, "upstream_error");
    let record = assert_last_record(&s.envoy, 1, "withheld", 502, "proxy_reply");
    assert_eq!(
        record["request_id"], id,
        "the id to quote is the audit record's"
    );
}

/// The route allows one second. An upstream silent for longer gets Envoy's 504 while
/// the plugin still waits for response headers: the plugin answers it with its own
/// problem. One that sent its headers and stalls mid-body (the plugin holding it) gets
/// Envoy's 504, masked by the mappers.
#[test]
fn a_route_timeout_is_masked() {
    let _watchdog = watchdog("route timeout", Duration::from_secs(60));
    let body = json_body(4096);
    let silent = Reply::new(200)
        .header("content-type", "application/json")
        .header("content-length", &body.len().to_string())
        .body(&body)
        .delay(Duration::from_secs(3));
    let stalled = Reply::new(200)
        .header("content-type", "application/json")
        .pieces([&body[..2048], &body[2048..]])
        .gap(Duration::from_secs(3));
    let s = setup(&example_policy(), silent, |b| b.var("ROUTE_TIMEOUT", "1s"));
    s.upstream.route("/patients/p-1/billing", stalled);

    let r = insurer_get(&s.envoy, "/patients/p-1");
    assert_plugins_problem(&r, Code::UpstreamError, None);
    assert_last_record(&s.envoy, 1, "withheld", 502, "upstream_error");

    let r = insurer_get(&s.envoy, "/patients/p-1/billing");
    let id = assert_masked(&r, 504, "upstream_error");
    let record = assert_last_record(&s.envoy, 2, "withheld", 504, "proxy_reply");
    assert_eq!(
        record["request_id"], id,
        "the id to quote is the audit record's"
    );
}

/// Nothing listens on the upstream's port: Envoy's 503 reaches the plugin, which
/// answers with its own problem.
#[test]
fn an_unreachable_upstream_is_masked() {
    let _watchdog = watchdog("unreachable upstream", Duration::from_secs(60));
    let s = setup(&example_policy(), Reply::new(200), |b| {
        b.upstream_port(consentry_envoy::free_port())
    });
    let r = insurer_get(&s.envoy, "/patients/p-1");
    assert_plugins_problem(&r, Code::UpstreamError, None);
    assert_last_record(&s.envoy, 1, "withheld", 502, "upstream_error");
}

/// A request body held for minimisation grows past Envoy's buffer: Envoy's 413
/// reaches the plugin, which answers with its own problem; the upstream gets nothing.
#[test]
fn a_held_request_over_envoys_buffer_is_masked() {
    let _watchdog = watchdog("request overflow", Duration::from_secs(60));
    let s = setup(&policy_with_body_limit(64 << 20), Reply::new(200), |b| b);
    let body = json!({"claim_id": MARKER, "pad": "x".repeat(6 << 20)}).to_string();
    let token = sign(&claims("insurer"));
    let mut request = format!(
        "POST /echo HTTP/1.1\r\nhost: consentry.test\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body.as_bytes());
    // Envoy answers before it has read the whole body.
    let raw =
        send_raw_concurrently(s.envoy.listen_addr(), request, Duration::from_secs(10)).unwrap();
    let r = parse_response(&raw.bytes, raw.complete, false).unwrap();
    assert_plugins_problem(&r, Code::RequestTooLarge, None);
    assert_last_record(&s.envoy, 1, "withheld", 413, "proxy_reply");
    assert!(s.upstream.received().is_empty());
}

/// A path Envoy rejects before any filter decides (an escaped slash): the mappers
/// mask it; the plugin records the proxy's reply.
#[test]
fn envoys_refusal_before_the_plugin_is_masked() {
    let _watchdog = watchdog("escaped slash", Duration::from_secs(60));
    let s = setup(&example_policy(), Reply::new(200), |b| b);
    let r = insurer_get(&s.envoy, "/patients%2Fp-1");
    // Rejected before Envoy gave the request an id: there is none to quote.
    assert_eq!(assert_masked_shape(&r, 400, "bad_request"), Value::Null);
    let records = wait_for_decisions(&s.envoy, 1);
    assert_eq!(
        (&records[0]["outcome"], &records[0]["status"]),
        (&json!("proxy_reply"), &json!(400)),
        "{}",
        records[0]
    );
    assert!(s.upstream.received().is_empty());
}

/// The plugin's own refusals and withheld answers, 4xx and 5xx, reach the client
/// exactly as the plugin wrote them: the mappers leave them alone.
#[test]
fn the_plugins_own_problems_pass_the_mappers_byte_for_byte() {
    let _watchdog = watchdog("own problems", Duration::from_secs(60));
    let html = format!("<html><body>{MARKER}</body></html>");
    let s = setup(
        &example_policy(),
        Reply::new(500)
            .header("content-type", "text/plain")
            .body(format!("Traceback: {MARKER}")),
        |b| b,
    );
    s.upstream.route(
        "/patients/p-1/billing",
        Reply::new(200)
            .header("content-type", "text/html")
            .header("content-length", &html.len().to_string())
            .body(&html),
    );
    let token = sign(&claims("insurer"));
    assert_plugins_problem(
        &get(&s.envoy, "/patients/p-1", &[]),
        Code::TokenMissing,
        None,
    );
    assert_plugins_problem(
        &get_with(&s.envoy, "/patients/p-1", "not-a-token"),
        Code::TokenInvalid,
        None,
    );
    assert_plugins_problem(
        &get_with(&s.envoy, "/patients/p-2", &token),
        Code::AccessDenied,
        None,
    );
    assert_plugins_problem(
        &get_with(&s.envoy, "/patients/p-1", &token),
        Code::UpstreamError,
        None,
    );
    assert_plugins_problem(
        &get_with(&s.envoy, "/patients/p-1/billing", &token),
        Code::UnsafeResponse,
        None,
    );
    // A 503 of the plugin's own: a status list the consent service does not have.
    let mut c = claims("insurer");
    c.insert(
        "status".into(),
        json!({"status_list": {"idx": 0, "uri": "https://consent.example.com/statuslists/none"}}),
    );
    assert_plugins_problem(
        &get_with(&s.envoy, "/patients/p-1", &sign(&c)),
        Code::DependencyUnavailable,
        None,
    );
}
