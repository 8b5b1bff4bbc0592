//! The response modes in a real Envoy, on the two kinds of host the deployment
//! manifests (`envoy/deploy/`) amount to:
//!
//! - `consentry-noflag.yaml`: the wasm filter WITHOUT `allow_on_headers_stop_iteration`,
//!   as Istio's `WasmPlugin` and Envoy Gateway's `EnvoyExtensionPolicy` configure it.
//!   There the plugin runs `late_commit`: a protected record comes back redacted without
//!   `content-length`; a body found unsafe after the headers left (invalid JSON, over the
//!   size limit) resets the stream, so the client never sees a complete 200; what the
//!   headers show (an upstream 5xx) is still a clean masked problem.
//! - `consentry.yaml`: WITH the flag (plain Envoy, Istio's `EnvoyFilter` on 1.28+, Envoy
//!   Gateway's `EnvoyPatchPolicy`). There `hold` answers every case with a clean response.
//!
//! And `hold` on a host without the flag stalls: the client gives up (a bounded
//! timeout) having received nothing.
//!
//! Every scenario runs over HTTP/1.1 and over HTTP/2 (h2c): a reset is an unterminated
//! chunked body to the first, a RST_STREAM to the second, and a failure to both.

use std::time::Duration;

use consentry_envoy::h2::{Failure, H2Client, H2Request};
use consentry_envoy::http::parse_response;
use consentry_envoy::scripted::{Reply, ScriptedUpstream};
use consentry_envoy::{HttpResponse, RunningEnvoy, project_root, send, send_raw};
use consentry_example_service::RunningService;
use serde_json::{Value, json};

use crate::support::*;

/// The template of a host without `allow_on_headers_stop_iteration`.
const NO_FLAG: &str = "consentry-noflag.yaml";
/// The template of a host with it.
const WITH_FLAG: &str = "consentry.yaml";

/// How long a client waits for a response that may never come.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(4);

/// The client's protocol to Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    H2c,
}

/// What a client saw of one exchange.
#[derive(Debug)]
enum Seen {
    /// A whole response, framed to its end.
    Complete(HttpResponse),
    /// Response headers, then the stream ended before the response did (HTTP/1.1: the
    /// connection closed inside the chunked body). `error` is the client's report.
    Broken {
        status: u16,
        headers: Vec<(String, String)>,
        received: Vec<u8>,
        error: String,
    },
    /// No whole response before the client's time ran out; `received` is everything
    /// that arrived.
    Stalled { received: Vec<u8> },
}

impl Protocol {
    /// `GET path` with these headers through Envoy's listener.
    fn exchange(self, envoy: &RunningEnvoy, path: &str, headers: &[(&str, &str)]) -> Seen {
        match self {
            Protocol::H2c => {
                let mut request = H2Request::new("GET", path);
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                let client = H2Client::cleartext(envoy.listen_addr()).with_timeout(CLIENT_TIMEOUT);
                match client.send(&request) {
                    Ok(response) => Seen::Complete(response.to_http()),
                    Err(failure) if matches!(failure.failure, Failure::TimedOut(_)) => {
                        Seen::Stalled {
                            received: failure.body,
                        }
                    }
                    Err(failure) if failure.is_reset() => Seen::Broken {
                        status: failure.status.unwrap_or(0),
                        headers: failure.headers.clone(),
                        received: failure.body.clone(),
                        error: failure.to_string(),
                    },
                    Err(failure) => panic!("GET {path} over h2c: {failure}"),
                }
            }
            Protocol::Http1 => {
                let mut request = format!(
                    "GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\nconnection: close\r\n",
                    envoy.listen_port()
                );
                for (name, value) in headers {
                    request.push_str(&format!("{name}: {value}\r\n"));
                }
                request.push_str("\r\n");
                let raw = send_raw(envoy.listen_addr(), request.as_bytes(), CLIENT_TIMEOUT)
                    .unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
                // The same parser `consentry_envoy::send` reports with.
                match parse_response(&raw.bytes, raw.complete, false) {
                    Ok(response) => Seen::Complete(response),
                    Err(_) if !raw.complete => Seen::Stalled {
                        received: raw.bytes,
                    },
                    Err(error) => {
                        let head_end = raw
                            .bytes
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .unwrap_or_else(|| {
                                panic!("GET {path}: closed before any response: {error:#}")
                            });
                        let head = parse_response(&raw.bytes[..head_end + 4], true, true)
                            .unwrap_or_else(|e| panic!("GET {path}: bad response head: {e:#}"));
                        Seen::Broken {
                            status: head.status,
                            headers: head.headers,
                            received: raw.bytes,
                            error: format!("{error:#}"),
                        }
                    }
                }
            }
        }
    }
}

/// The plugin's response mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Hold,
    LateCommit,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Hold => "hold",
            Mode::LateCommit => "late_commit",
        }
    }
}

/// One Envoy (a template and a mode) in front of a scripted upstream, the example
/// service answering for the consent service.
struct Host {
    envoy: RunningEnvoy,
    upstream: ScriptedUpstream,
    /// The example service's exact bytes of the 5 KB record `p-1`.
    record: Vec<u8>,
    token: String,
    label: String,
    /// Decision records written before the exchange under way (the edge replaces a
    /// client's x-request-id, so records are told apart by their order).
    records_before: std::cell::Cell<usize>,
    _service: RunningService,
}

fn host(template: &str, mode: Mode) -> Host {
    require_prerequisites();
    let service = example_service(60);
    let record = send(
        "GET",
        &format!("{}/patients/p-1", service.base_url()),
        &[],
        None,
    )
    .unwrap()
    .body;
    assert!(
        (5000..6000).contains(&record.len()),
        "p-1 is the 5 KB record: {} bytes",
        record.len()
    );
    let upstream = ScriptedUpstream::start().unwrap();
    let mut policy = example_policy();
    policy["response_mode"] = json!(mode.name());
    let envoy = start(
        consentry_envoy::Envoy::builder()
            .template(template)
            .upstream_port(upstream.port())
            .var("CONSENT_PORT", service.addr().port())
            .plugin_config_json(&policy.to_string()),
    );
    envoy
        .wait_for_log(
            &format!("response mode {}", mode.name()),
            Duration::from_secs(5),
        )
        .unwrap();
    Host {
        envoy,
        upstream,
        record,
        token: sign(&claims("insurer")),
        label: format!("{template}, {}", mode.name()),
        records_before: std::cell::Cell::new(0),
        _service: service,
    }
}

impl Host {
    /// The insurer reads `p-1`; the upstream answers `reply`.
    fn read(&self, protocol: Protocol, request_id: &str, reply: Reply) -> Seen {
        self.upstream.set_default(reply);
        self.records_before.set(decisions(&self.envoy).len());
        let auth = bearer(&self.token);
        protocol.exchange(
            &self.envoy,
            "/patients/p-1",
            &[("authorization", &auth), ("x-request-id", request_id)],
        )
    }

    /// The audit record of the last exchange, `request_id` (waits for it: records are
    /// written as the stream ends).
    fn record_of(&self, request_id: &str) -> Value {
        let before = self.records_before.get();
        poll(Duration::from_secs(5), Duration::from_millis(20), || {
            let all = decisions(&self.envoy);
            (all.len() > before).then(|| all[before].clone())
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: no audit record for {request_id}:\n{}",
                self.label,
                consentry_envoy::tail(&self.envoy.log(), 40)
            )
        })
    }
}

fn decisions(envoy: &RunningEnvoy) -> Vec<Value> {
    audit_records(envoy)
        .into_iter()
        .filter(|r| r["kind"] == "decision")
        .collect()
}

/// The insurer's golden view of `p-1` (`examples/views/insurer-p-1.json`, the body then
/// one newline).
fn golden_view() -> Vec<u8> {
    std::fs::read(project_root().join("examples/views/insurer-p-1.json")).unwrap()
}

/// The upstream's answers, each named.
fn record_reply(record: &[u8]) -> Reply {
    Reply::new(200)
        .header("content-type", "application/json")
        .header("content-length", &record.len().to_string())
        .body(record)
}

/// The same record without a length, in pieces (chunked), so the plugin sees several
/// body callbacks.
fn record_in_pieces(record: &[u8]) -> Reply {
    Reply::new(200)
        .header("content-type", "application/json")
        .pieces(record.chunks(700))
        .gap(Duration::from_millis(20))
}

/// A 200 whose JSON breaks off: the headers are fine, the body is not.
fn invalid_json() -> Reply {
    Reply::new(200)
        .header("content-type", "application/json")
        .pieces([
            &br#"{"id":"p-1","identity":{"name":"Eleanor Whitcombe","#[..],
            &br#""national_id":"QQ123456C""#[..],
        ])
        .gap(Duration::from_millis(20))
}

/// A valid JSON body of 1.5 MiB, over the plugin's default limit (1 MiB) and under
/// Envoy's buffer limit (4 MiB), chunked: nothing in the headers tells its size.
fn over_the_limit() -> Reply {
    let filler = "Eleanor Whitcombe ".repeat(1536 * 1024 / 18);
    let body = format!(r#"{{"id":"p-1","notes":"{filler}"}}"#);
    Reply::new(200)
        .header("content-type", "application/json")
        .pieces(body.as_bytes().chunks(64 * 1024))
        .gap(Duration::from_millis(2))
}

fn upstream_error() -> Reply {
    Reply::new(503)
        .header("content-type", "application/json")
        .body(r#"{"trace":"db at 10.0.0.7 down","patient":"Eleanor Whitcombe"}"#)
}

/// Nothing of the record's protected values in what the client received.
fn assert_nothing_released(label: &str, received: &[u8]) {
    let text = String::from_utf8_lossy(received);
    for secret in ["Eleanor", "Whitcombe", "QQ123456C", "10.0.0.7"] {
        assert!(
            !text.contains(secret),
            "{label}: {secret:?} reached the client:\n{text}"
        );
    }
}

/// A complete masked problem, with an exact `content-length`.
fn assert_clean_problem(label: &str, seen: Seen, status: u16, code: &str) {
    match seen {
        Seen::Complete(response) => {
            assert_problem(&response, status, code);
            assert_nothing_released(label, &response.body);
        }
        other => panic!("{label}: expected a clean {status} {code}, got {other:?}"),
    }
}

/// A stream that ended after 200 headers without completing: the client reports a
/// failure (HTTP/1.1: an unterminated chunked body; HTTP/2: the stream reset), and
/// nothing of the body arrived.
fn assert_reset(protocol: Protocol, label: &str, seen: Seen) {
    match seen {
        Seen::Broken {
            status,
            headers,
            received,
            error,
        } => {
            assert_eq!(status, 200, "{label}: the headers had gone");
            assert!(
                !headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case("content-length")),
                "{label}: late_commit sends no content-length: {headers:?}"
            );
            match protocol {
                Protocol::Http1 => {
                    assert!(
                        error.contains("chunked"),
                        "{label}: the client must fail on the unterminated chunked body: {error}"
                    );
                    assert!(
                        !received.ends_with(b"0\r\n\r\n"),
                        "{label}: the final chunk must not be sent"
                    );
                }
                Protocol::H2c => assert!(
                    error.contains("reset") || error.contains("GOAWAY"),
                    "{label}: the client must see the stream reset: {error}"
                ),
            }
            assert_nothing_released(label, &received);
        }
        other => panic!("{label}: expected a reset stream after 200 headers, got {other:?}"),
    }
}

/// The whole matrix of answers on one host.
fn serves_and_withholds(protocol: Protocol, template: &str, mode: Mode) {
    let host = host(template, mode);
    let label = |case: &str| format!("{} over {protocol:?}: {case}", host.label);
    let golden = golden_view();

    // The 5 KB record, with its length and in pieces: the golden view, byte for byte.
    for (case, reply) in [
        ("record", record_reply(&host.record)),
        ("record in pieces", record_in_pieces(&host.record)),
    ] {
        let id = format!("lc-{}-{}", mode.name(), case.replace(' ', "-"));
        let Seen::Complete(response) = host.read(protocol, &id, reply) else {
            panic!("{}: the redacted record did not complete", label(case));
        };
        assert_eq!(response.status, 200, "{}: {}", label(case), response.text());
        let mut body = response.body.clone();
        body.push(b'\n');
        assert_eq!(
            String::from_utf8_lossy(&body),
            String::from_utf8_lossy(&golden),
            "{}: the golden view",
            label(case)
        );
        match mode {
            Mode::LateCommit => {
                assert_eq!(
                    response.content_length(),
                    None,
                    "{}: the headers went before the body was redacted",
                    label(case)
                );
                if protocol == Protocol::Http1 {
                    assert!(response.is_chunked(), "{}", label(case));
                }
            }
            Mode::Hold => assert_eq!(
                response.content_length(),
                Some(response.body.len()),
                "{}: held headers carry the redacted length",
                label(case)
            ),
        }
        assert_eq!(
            host.record_of(&id)["outcome"],
            "released",
            "{}",
            label(case)
        );
    }

    // Bodies found unsafe only once they are in.
    for (case, reply) in [
        ("invalid JSON", invalid_json()),
        ("body over the limit", over_the_limit()),
    ] {
        let id = format!("lc-{}-{}", mode.name(), case.replace(' ', "-"));
        let seen = host.read(protocol, &id, reply);
        let record = host.record_of(&id);
        match mode {
            Mode::LateCommit => {
                assert_reset(protocol, &label(case), seen);
                assert_eq!(record["outcome"], "reset", "{}: {record}", label(case));
            }
            Mode::Hold => {
                assert_clean_problem(&label(case), seen, 502, "unsafe_response");
                assert_eq!(record["outcome"], "withheld", "{}: {record}", label(case));
            }
        }
        assert_eq!(
            record["code"],
            "unsafe_response",
            "{}: {record}",
            label(case)
        );
    }

    // What the headers show is refused before anything leaves, in both modes.
    let id = format!("lc-{}-5xx", mode.name());
    let seen = host.read(protocol, &id, upstream_error());
    assert_clean_problem(&label("upstream 5xx"), seen, 502, "upstream_error");
    assert_eq!(
        host.record_of(&id)["code"],
        "upstream_error",
        "{}",
        label("upstream 5xx")
    );
}

#[test]
fn late_commit_without_the_flag_over_http1() {
    let _watchdog = watchdog("late_commit_without_the_flag", Duration::from_secs(90));
    serves_and_withholds(Protocol::Http1, NO_FLAG, Mode::LateCommit);
}

#[test]
fn late_commit_with_the_flag_over_http1() {
    let _watchdog = watchdog("late_commit_with_the_flag", Duration::from_secs(90));
    serves_and_withholds(Protocol::Http1, WITH_FLAG, Mode::LateCommit);
}

#[test]
fn hold_with_the_flag_over_http1() {
    let _watchdog = watchdog("hold_with_the_flag", Duration::from_secs(90));
    serves_and_withholds(Protocol::Http1, WITH_FLAG, Mode::Hold);
}

/// `hold` where the host cannot pause response headers: the response never starts, the
/// client's timeout ends the wait, and not a byte was released.
fn hold_without_the_flag_stalls(protocol: Protocol) {
    let host = host(NO_FLAG, Mode::Hold);
    let seen = host.read(protocol, "hold-noflag", record_reply(&host.record));
    match seen {
        Seen::Stalled { received } => assert!(
            received.is_empty(),
            "a stalled response releases nothing, got {:?}",
            String::from_utf8_lossy(&received)
        ),
        other => panic!("hold without the flag must stall, got {other:?}"),
    }
    // The upstream did answer: the stall is the host's, not the upstream's.
    assert_eq!(host.upstream.received().len(), 1);
    assert!(
        !audit_records(&host.envoy)
            .iter()
            .any(|r| r["outcome"] == "released"),
        "nothing may be recorded as released"
    );
}

#[test]
fn hold_without_the_flag_stalls_over_http1() {
    let _watchdog = watchdog("hold_without_the_flag_stalls", Duration::from_secs(60));
    hold_without_the_flag_stalls(Protocol::Http1);
}

#[test]
fn late_commit_without_the_flag_over_h2c() {
    let _watchdog = watchdog("late_commit_without_the_flag_h2c", Duration::from_secs(90));
    serves_and_withholds(Protocol::H2c, NO_FLAG, Mode::LateCommit);
}

#[test]
fn hold_with_the_flag_over_h2c() {
    let _watchdog = watchdog("hold_with_the_flag_h2c", Duration::from_secs(90));
    serves_and_withholds(Protocol::H2c, WITH_FLAG, Mode::Hold);
}

#[test]
fn hold_without_the_flag_stalls_over_h2c() {
    let _watchdog = watchdog("hold_without_the_flag_stalls_h2c", Duration::from_secs(60));
    hold_without_the_flag_stalls(Protocol::H2c);
}
