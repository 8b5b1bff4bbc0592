//! The fidelity suite: one list of scenarios, run through this harness and through a
//! real Envoy, each asserting the same expected observation on both hosts.
//!
//! A scenario is data: the requests (each selecting a behaviour of the probe filter
//! with `x-probe: <mode>`), what the upstream answers, and what must be observed: the
//! client's response and the probe's reports (`probe|<key>|<json>` log lines). The
//! harness side lives in `host-tests/tests/all/fidelity.rs`, the Envoy side in
//! `envoy/tests/fidelity.rs`; both turn what they saw into an [`Observation`] and call
//! [`check`]. A difference between the hosts is therefore a failure on one side,
//! with the scenario, the expectation and the whole observation in the message.
//!
//! Values that differ by nature (ports, request ids, dates, upstream timings) are
//! compared by shape with the placeholders of [`matches()`].

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};

use crate::abi::LogLevel;
use crate::message::{CalloutAnswer, ClientFault, Request, Response};
use crate::plugin::{Plugin, workspace_root};
use crate::proxy::{Outcome, Proxy, StartError};

/// The command that builds the probe filter; error messages quote it.
pub const PROBE_BUILD_COMMAND: &str =
    "cargo build -p consentry-probe --target wasm32-wasip1 --release";

/// The names the probe runs under, on both hosts (`envoy/configs/probe.yaml`).
pub const PLUGIN_NAME: &str = "probe";
pub const ROOT_ID: &str = "probe_root";
pub const VM_ID: &str = "probe_vm";
/// The probe's plugin configuration (it ignores it).
pub const PLUGIN_CONFIG: &str = "probe-config";
/// The `host` every scenario's request carries.
pub const AUTHORITY: &str = "probe.test";
/// The clusters the Envoy configuration has: the upstream, and `down` (nothing listens).
pub const CLUSTERS: [&str; 2] = ["upstream", "down"];
/// Callouts to the `upstream` cluster use paths under this one.
pub const CALLEE_PATH: &str = "/callee";

/// The release build of the probe (`CARGO_TARGET_DIR` respected).
pub fn probe_wasm_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target
        .join("wasm32-wasip1")
        .join("release")
        .join("consentry_probe.wasm")
}

/// The probe's path, or an error that says how to build it.
pub fn require_probe() -> Result<PathBuf, String> {
    let path = probe_wasm_path();
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "the probe filter is not built at {} — build it with: rustup target add \
             wasm32-wasip1 && {PROBE_BUILD_COMMAND}",
            path.display()
        ))
    }
}

/// One scenario: steps run in order on one fresh host.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    /// The Envoy behaviour it pins, in one line.
    pub pins: &'static str,
    /// What the `upstream` cluster answers to callouts (paths under [`CALLEE_PATH`]).
    pub callee: Option<Response>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub request: Request,
    /// What the upstream answers this step's request.
    pub upstream: Response,
    pub expect: Vec<Expect>,
}

/// One expected part of an [`Observation`]. Patterns are JSON with the placeholders
/// of [`matches()`].
#[derive(Debug, Clone)]
pub enum Expect {
    /// The status the client received (0: none).
    Status(u16),
    /// The first value of a response header at the client.
    Header(&'static str, &'static str),
    HeaderAbsent(&'static str),
    /// The client's body, as text (a pattern string).
    Body(&'static str),
    /// The client's body length.
    BodyLen(usize),
    /// How the response went wrong at the transport level (None: it did not).
    Fault(Option<Fault>),
    /// The first report with this key matches.
    Record(&'static str, Value),
    /// No report with this key.
    NoRecord(&'static str),
    /// The `cb` reports (the callbacks and what they returned), exactly, in order.
    Callbacks(Vec<&'static str>),
    /// No wasm code ran for this request: no reports at all.
    NoRecords,
    /// How many requests reached the upstream service.
    UpstreamCount(usize),
    /// Every value of a header the upstream received (in order; empty: absent).
    UpstreamHeader(&'static str, Vec<&'static str>),
    UpstreamBody(&'static str),
    /// A callout received by the `upstream` cluster: method, path, authority.
    Callout(&'static str, &'static str, &'static str),
    /// A plugin log line that is not a report, by Envoy's level name and text.
    Log(&'static str, &'static str),
    /// The client's header names, exactly, in order.
    HeaderNames(Vec<&'static str>),
}

/// How a client's response broke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Fault {
    /// `content-length` promised `declared` bytes, `received` came, and then the
    /// connection stayed open (the client hangs) or closed.
    LengthMismatch { declared: usize, received: usize },
    /// The stream was reset after the headers were sent.
    Reset,
    /// Nothing came back in time.
    Stalled,
}

/// A request a service behind the proxy received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authority: String,
    /// Regular headers in order, without `host`.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// Everything one request showed, on either host.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Observation {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub fault: Option<Fault>,
    /// The probe's reports in order: (key, value).
    pub records: Vec<(String, Value)>,
    /// Other plugin log lines: (Envoy's level name, message).
    pub logs: Vec<(String, String)>,
    /// Requests that reached the upstream service.
    pub upstream: Vec<Seen>,
    /// Callouts that reached the `upstream` cluster.
    pub callouts: Vec<Seen>,
}

impl Observation {
    /// Files a plugin log message: a report (`probe|key|json`) or another line.
    pub fn add_log(&mut self, level: &str, message: &str) {
        if let Some(rest) = message.strip_prefix("probe|")
            && let Some((key, json)) = rest.split_once('|')
        {
            let value = serde_json::from_str(json).unwrap_or_else(|_| json!(json));
            self.records.push((key.to_owned(), value));
        } else {
            self.logs.push((level.to_owned(), message.to_owned()));
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn record(&self, key: &str) -> Option<&Value> {
        self.records.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// Envoy's name for a log level (`warning`, not `warn`).
pub fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warning",
        LogLevel::Error => "error",
        LogLevel::Critical => "critical",
    }
}

fn shape_ok(shape: &str, s: &str) -> Option<bool> {
    let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    Some(match shape {
        "<any>" => true,
        "<uuid>" => {
            s.len() == 36
                && s.char_indices().all(|(i, c)| match i {
                    8 | 13 | 18 | 23 => c == '-',
                    _ => hex(c),
                })
        }
        "<ip:port>" => s.rsplit_once(':').is_some_and(|(ip, port)| {
            ip.parse::<std::net::Ipv4Addr>().is_ok() && port.parse::<u16>().is_ok_and(|p| p > 0)
        }),
        "<digits>" => !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()),
        "<hex8>" => s.len() == 16 && s.chars().all(hex),
        // `Fri, 27 Nov 2026 08:00:00 GMT`
        "<http-date>" => s.len() == 29 && s.ends_with(" GMT") && s.as_bytes().get(3) == Some(&b','),
        _ => return None,
    })
}

/// Whether `actual` fits `pattern`: equal JSON, except that a pattern string that is
/// one of these placeholders matches by shape: `<any>` (any value), `<uuid>`,
/// `<ip:port>`, `<digits>`, `<hex8>` (8 bytes in hex), `<http-date>`. Objects must
/// have the same keys; arrays the same length.
pub fn matches(pattern: &Value, actual: &Value) -> bool {
    match (pattern, actual) {
        (Value::String(p), _) if p == "<any>" => true,
        (Value::String(p), Value::String(a)) => shape_ok(p, a).unwrap_or(p == a),
        (Value::Array(p), Value::Array(a)) => {
            p.len() == a.len() && p.iter().zip(a).all(|(p, a)| matches(p, a))
        }
        (Value::Object(p), Value::Object(a)) => {
            p.len() == a.len()
                && p.iter()
                    .all(|(k, pv)| a.get(k).is_some_and(|av| matches(pv, av)))
        }
        _ => pattern == actual,
    }
}

fn text_matches(pattern: &str, actual: &str) -> bool {
    matches(&json!(pattern), &json!(actual))
}

/// Checks one step's observation against its expectations. The error names the
/// host, the scenario, the step and every failed expectation, and shows the whole
/// observation.
pub fn check(
    host: &str,
    scenario: &Scenario,
    step: usize,
    obs: &Observation,
) -> Result<(), String> {
    let Some(s) = scenario.steps.get(step) else {
        return Err(format!("scenario {} has no step {step}", scenario.name));
    };
    let mut failures = Vec::new();
    for e in &s.expect {
        if let Some(f) = failure(e, obs) {
            failures.push(f);
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    let shown = serde_json::to_string_pretty(obs).unwrap_or_default();
    Err(format!(
        "[{host}] scenario `{}` step {} ({}):\n  - {}\nobservation on {host}:\n{shown}",
        scenario.name,
        step + 1,
        scenario.pins,
        failures.join("\n  - ")
    ))
}

fn failure(e: &Expect, obs: &Observation) -> Option<String> {
    let fail = |what: String| Some(what);
    match e {
        Expect::Status(code) => {
            (obs.status != *code).then(|| format!("status: expected {code}, got {}", obs.status))
        }
        Expect::Header(name, pattern) => match obs.header(name) {
            Some(v) if text_matches(pattern, v) => None,
            got => fail(format!("header {name}: expected {pattern:?}, got {got:?}")),
        },
        Expect::HeaderAbsent(name) => obs
            .header(name)
            .map(|v| format!("header {name}: expected none, got {v:?}")),
        Expect::Body(pattern) => (!text_matches(pattern, &obs.body))
            .then(|| format!("body: expected {pattern:?}, got {:?}", obs.body)),
        Expect::BodyLen(n) => (obs.body.len() != *n)
            .then(|| format!("body length: expected {n}, got {}", obs.body.len())),
        Expect::Fault(f) => {
            (obs.fault != *f).then(|| format!("fault: expected {f:?}, got {:?}", obs.fault))
        }
        Expect::Record(key, pattern) => match obs.record(key) {
            Some(v) if matches(pattern, v) => None,
            Some(v) => fail(format!("report `{key}`: expected {pattern}, got {v}")),
            None => fail(format!("report `{key}`: expected {pattern}, got none")),
        },
        Expect::NoRecord(key) => obs
            .record(key)
            .map(|v| format!("report `{key}`: expected none, got {v}")),
        Expect::Callbacks(list) => {
            let got: Vec<String> = obs
                .records
                .iter()
                .filter(|(k, _)| k == "cb")
                .map(|(_, v)| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect();
            (got != *list).then(|| format!("callbacks: expected {list:#?}, got {got:#?}"))
        }
        Expect::NoRecords => (!obs.records.is_empty())
            .then(|| format!("expected no wasm to run, got {} reports", obs.records.len())),
        Expect::UpstreamCount(n) => (obs.upstream.len() != *n).then(|| {
            format!(
                "requests at the upstream: expected {n}, got {}",
                obs.upstream.len()
            )
        }),
        Expect::UpstreamHeader(name, values) => {
            let Some(seen) = obs.upstream.first() else {
                return fail(format!(
                    "upstream header {name}: no request reached the upstream"
                ));
            };
            let got: Vec<&str> = seen
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect();
            let ok = got.len() == values.len()
                && values.iter().zip(&got).all(|(p, a)| text_matches(p, a));
            (!ok).then(|| format!("upstream header {name}: expected {values:?}, got {got:?}"))
        }
        Expect::UpstreamBody(pattern) => match obs.upstream.first() {
            Some(seen) if text_matches(pattern, &seen.body) => None,
            got => fail(format!(
                "upstream body: expected {pattern:?}, got {:?}",
                got.map(|s| &s.body)
            )),
        },
        Expect::Callout(method, path, authority) => {
            let found = obs
                .callouts
                .iter()
                .any(|c| c.method == *method && c.path == *path && c.authority == *authority);
            (!found).then(|| {
                format!(
                    "callout {method} {authority}{path}: not among {:?}",
                    obs.callouts
                )
            })
        }
        Expect::HeaderNames(names) => {
            let got: Vec<&str> = obs.headers.iter().map(|(n, _)| n.as_str()).collect();
            (got != *names).then(|| format!("header names: expected {names:?}, got {got:?}"))
        }
        Expect::Log(level, message) => {
            let found = obs
                .logs
                .iter()
                .any(|(l, m)| l == level && text_matches(message, m));
            (!found).then(|| format!("log line [{level}] {message:?}: not among {:?}", obs.logs))
        }
    }
}

// ---------------------------------------------------------------------------
// The harness side.

/// Runs every step of a scenario on a fresh harness proxy (one worker, the
/// clusters of [`CLUSTERS`]) and observes each.
pub fn run_on_harness(
    scenario: &Scenario,
    plugin: Arc<Plugin>,
) -> Result<Vec<Observation>, StartError> {
    let callee = scenario.callee.clone();
    let mut proxy = Proxy::builder(plugin)
        .config(PLUGIN_CONFIG)
        .names(PLUGIN_NAME, ROOT_ID, VM_ID)
        .clusters(CLUSTERS)
        .workers(1)
        .callouts(move |c| match c.cluster.as_str() {
            "upstream" => CalloutAnswer::now(
                callee
                    .clone()
                    .unwrap_or_else(|| Response::new(404).header("content-length", "0")),
            ),
            _ => CalloutAnswer::Unreachable,
        })
        .start()?;
    Ok(scenario
        .steps
        .iter()
        .map(|s| observe_outcome(&proxy.send(s.request.clone(), s.upstream.clone())))
        .collect())
}

/// What a harness [`Outcome`] shows, as an [`Observation`].
pub fn observe_outcome(out: &Outcome) -> Observation {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut obs = Observation {
        status: out.client.status,
        headers: out
            .client
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), text(v)))
            .collect(),
        body: text(&out.client.body),
        fault: out.client.fault.as_ref().map(|f| match f {
            ClientFault::LengthMismatch { declared, sent } => Fault::LengthMismatch {
                declared: *declared,
                received: *sent,
            },
            ClientFault::Reset { .. } => Fault::Reset,
            ClientFault::Stalled { .. } => Fault::Stalled,
        }),
        ..Observation::default()
    };
    for line in &out.logs {
        // The harness's own line about a crash is not the plugin's.
        if line.context_id == 0 && line.message.starts_with("trap in ") {
            continue;
        }
        obs.add_log(level_name(line.level), &line.message);
    }
    if let Some(u) = &out.upstream_request {
        obs.upstream.push(Seen {
            method: u.method.clone(),
            path: u.path.clone(),
            authority: u.authority.clone(),
            headers: u
                .headers
                .iter()
                .filter(|(n, _)| n != "host")
                .map(|(n, v)| (n.clone(), text(v)))
                .collect(),
            body: text(&u.body),
        });
    }
    for c in out.callouts_made.iter().filter(|c| c.cluster == "upstream") {
        obs.callouts.push(Seen {
            method: c.method.clone(),
            path: c.path.clone(),
            authority: c.authority.clone(),
            headers: c
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), text(v)))
                .collect(),
            body: text(&c.body),
        });
    }
    obs
}

// ---------------------------------------------------------------------------
// The scenarios.

/// A request for the probe: `host: probe.test`, then `x-probe: <mode>`.
pub fn probe_request(method: &str, path: &str, mode: &str) -> Request {
    Request::new(method, path)
        .header("host", AUTHORITY)
        .header("x-probe", mode)
}

fn ok_json(body: &str) -> Response {
    Response::json(200, body)
}

fn step(request: Request, upstream: Response, expect: Vec<Expect>) -> Step {
    Step {
        request,
        upstream,
        expect,
    }
}

fn rec(key: &'static str, pattern: Value) -> Expect {
    Expect::Record(key, pattern)
}

/// Ok with a text value.
fn ok_text(v: &str) -> Value {
    json!({"s": 0, "len": v.len(), "v": v})
}

/// Ok with a value matched by shape (`<uuid>` …) whose length is known.
fn ok_shape(len: usize, shape: &str) -> Value {
    json!({"s": 0, "len": len, "v": shape})
}

/// Ok with an 8-byte little-endian integer whose value differs by nature.
fn ok_int() -> Value {
    json!({"s": 0, "len": 8, "hex": "<hex8>"})
}

fn ok_hex(hex: &str) -> Value {
    json!({"s": 0, "len": hex.len() / 2, "hex": hex})
}

/// Ok with pointer 0: Envoy allocates nothing for an empty value.
fn ok_empty() -> Value {
    json!({"s": 0, "null": true})
}

fn status(s: u32) -> Value {
    json!({"s": s})
}

const NOT_FOUND: u32 = 1;
const BAD_ARGUMENT: u32 = 2;
const SERIALIZATION_FAILURE: u32 = 3;
const CAS_MISMATCH: u32 = 8;

fn upstream_body_of(len: usize) -> String {
    let filler = "x".repeat(len.saturating_sub(10));
    format!("{{\"pad\":\"{filler}\"}}")
}

/// Every scenario, in the order the README lists them.
#[allow(clippy::too_many_lines)]
pub fn scenarios() -> Vec<Scenario> {
    let record_body = upstream_body_of(40);
    let big = upstream_body_of(1_500_000);
    vec![
        Scenario {
            name: "basic",
            pins: "what the filter, the upstream and the client see when the filter does nothing",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/basic", "basic"),
                ok_json(r#"{"ok":true}"#),
                vec![
                    Expect::Status(200),
                    Expect::Body(r#"{"ok":true}"#),
                    Expect::Callbacks(vec![
                        "req_headers n=7 eos=true -> C",
                        "resp_headers n=4 eos=false",
                        "resp_headers -> C",
                        "resp_body 11 eos=false -> C",
                        "resp_body 0 eos=true -> C",
                        "log",
                    ]),
                    rec(
                        "resp_headers pairs",
                        json!({"s": 0, "len": "<any>", "pairs": [
                            [":status", "200"],
                            ["content-type", "application/json"],
                            ["content-length", "11"],
                            ["x-envoy-upstream-service-time", "<digits>"],
                        ]}),
                    ),
                    Expect::Header("content-type", "application/json"),
                    Expect::Header("content-length", "11"),
                    Expect::Header("server", "envoy"),
                    Expect::Header("date", "<http-date>"),
                    Expect::Header("x-envoy-upstream-service-time", "<digits>"),
                    Expect::HeaderNames(vec![
                        "content-type",
                        "content-length",
                        "x-envoy-upstream-service-time",
                        "date",
                        "server",
                    ]),
                    Expect::UpstreamCount(1),
                    Expect::UpstreamHeader("x-probe", vec!["basic"]),
                    Expect::UpstreamHeader("x-forwarded-proto", vec!["http"]),
                    Expect::UpstreamHeader("x-request-id", vec!["<uuid>"]),
                    Expect::UpstreamHeader("x-envoy-expected-rq-timeout-ms", vec!["15000"]),
                ],
            )],
        },
        Scenario {
            name: "request-map-gone-after-continue",
            pins: "after request headers returned Continue the request map is gone: get and \
                   size BadArgument, pairs Ok empty, request.* NotFound; readable again in on_log",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/gone?q=1", "req-gone"),
                ok_json(r#"{"ok":true}"#),
                vec![
                    Expect::Status(200),
                    Expect::Body(r#"{"ok":true}"#),
                    rec("resp_headers request get :path", status(BAD_ARGUMENT)),
                    rec("resp_headers request pairs", ok_empty()),
                    rec("resp_headers request size", status(BAD_ARGUMENT)),
                    rec("resp_headers prop request.path", status(NOT_FOUND)),
                    rec("resp_headers prop request.headers", ok_hex("00000000")),
                    rec("resp_headers response get :status", ok_text("200")),
                    rec("resp_body request get :path", status(BAD_ARGUMENT)),
                    rec("resp_body response get :status", status(BAD_ARGUMENT)),
                    rec(
                        "resp_body response add/replace/remove",
                        json!([BAD_ARGUMENT, BAD_ARGUMENT, BAD_ARGUMENT]),
                    ),
                    rec("log request get :path", ok_text("/gone?q=1")),
                    rec("log prop request.path", ok_text("/gone?q=1")),
                    rec("log response get :status", ok_text("200")),
                    rec("log prop response.code", ok_hex("c800000000000000")),
                ],
            )],
        },
        Scenario {
            name: "request-map-kept-while-paused",
            pins: "request headers that returned Pause and were resumed stay readable in the \
                   response phase; HTTP/1.1 ends a body with a separate eos callback",
            callee: None,
            steps: vec![step(
                probe_request("POST", "/paused", "req-paused").body("hello"),
                ok_json(r#"{"ok":true}"#),
                vec![
                    Expect::Status(200),
                    Expect::Callbacks(vec![
                        "req_headers n=8 eos=false -> P",
                        "req_body 5 eos=false -> P",
                        "req_body 5 eos=true -> C",
                        "resp_headers n=4 eos=false",
                        "resp_headers -> C",
                        "resp_body 11 eos=false -> C",
                        "resp_body 0 eos=true -> C",
                        "log",
                    ]),
                    rec("req body", json!("hello")),
                    rec("req body get :path", ok_text("/paused")),
                    rec("resp_headers request get :path", ok_text("/paused")),
                    rec("resp_headers prop request.path", ok_text("/paused")),
                    rec(
                        "resp_headers request pairs",
                        json!({"s": 0, "len": "<any>", "pairs": [
                            [":authority", AUTHORITY],
                            [":path", "/paused"],
                            [":method", "POST"],
                            [":scheme", "http"],
                            ["x-probe", "req-paused"],
                            ["content-length", "5"],
                            ["x-forwarded-proto", "http"],
                            ["x-request-id", "<uuid>"],
                            ["x-envoy-expected-rq-timeout-ms", "15000"],
                        ]}),
                    ),
                    Expect::UpstreamBody("hello"),
                    Expect::UpstreamHeader("content-length", vec!["5"]),
                ],
            )],
        },
        Scenario {
            name: "sdk-panic-is-fail-closed",
            pins: "the SDK's get_http_request_header in the response phase panics (BadArgument); \
                   the trap gives an empty 503 and, under FAIL_CLOSED, every later request on \
                   that VM gets 503 without running wasm",
            callee: None,
            steps: vec![
                step(
                    probe_request("GET", "/panic", "sdk-panic"),
                    ok_json(r#"{"ok":true}"#),
                    vec![
                        Expect::Status(503),
                        Expect::Body(""),
                        Expect::Header("content-length", "0"),
                        Expect::HeaderNames(vec!["date", "server", "content-length"]),
                        Expect::Callbacks(vec![
                            "req_headers n=7 eos=true -> C",
                            "resp_headers n=4 eos=false",
                        ]),
                        Expect::NoRecord("sdk get :path"),
                        Expect::NoRecord("end"),
                        Expect::Log("critical", "<any>"),
                        Expect::UpstreamCount(1),
                    ],
                ),
                step(
                    probe_request("GET", "/after", "basic"),
                    ok_json(r#"{"ok":true}"#),
                    vec![
                        Expect::Status(503),
                        Expect::Body(""),
                        Expect::Header("content-length", "0"),
                        Expect::NoRecords,
                        Expect::UpstreamCount(0),
                    ],
                ),
            ],
        },
        Scenario {
            name: "repeated-request-headers",
            pins: "Envoy's codec joins repeated inline headers (authorization, accept-encoding, \
                   content-type, ...) with ',' before any filter sees them; others stay separate",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/rep", "headers")
                    .header("authorization", "Bearer a")
                    .header("authorization", "Bearer b")
                    .header("accept-encoding", "gzip")
                    .header("accept-encoding", "br")
                    .header("cache-control", "no-cache")
                    .header("cache-control", "no-store")
                    .header("x-forwarded-for", "192.0.2.1")
                    .header("x-forwarded-for", "192.0.2.2")
                    .header("referer", "http://a/")
                    .header("referer", "http://b/")
                    .header("origin", "http://a")
                    .header("origin", "http://b")
                    .header("user-agent", "ua1")
                    .header("user-agent", "ua2")
                    .header("x-custom", "1")
                    .header("x-custom", "2"),
                ok_json("{}"),
                vec![
                    Expect::Status(200),
                    rec(
                        "pairs",
                        json!({"s": 0, "len": "<any>", "pairs": [
                            [":authority", AUTHORITY],
                            [":path", "/rep"],
                            [":method", "GET"],
                            [":scheme", "http"],
                            ["x-probe", "headers"],
                            ["authorization", "Bearer a,Bearer b"],
                            ["accept-encoding", "gzip,br"],
                            ["cache-control", "no-cache,no-store"],
                            ["x-forwarded-for", "192.0.2.1,192.0.2.2"],
                            ["referer", "http://a/,http://b/"],
                            ["origin", "http://a,http://b"],
                            ["user-agent", "ua1,ua2"],
                            ["x-custom", "1"],
                            ["x-custom", "2"],
                            ["x-forwarded-proto", "http"],
                            ["x-request-id", "<uuid>"],
                        ]}),
                    ),
                ],
            )],
        },
        Scenario {
            name: "header-lookups",
            pins: "first value of a repeated header, case-insensitive names, host = :authority, \
                   size = bytes of names and values, HTTP/1.1 pairs order, add/replace/remove",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/hdrs?x=1", "headers")
                    .header("x-dup", "one")
                    .header("x-dup", "two")
                    .header("X-Mixed-Case", "V")
                    .header("x-empty", ""),
                ok_json("{}"),
                vec![
                    Expect::Status(200),
                    rec(
                        "pairs",
                        json!({"s": 0, "len": "<any>", "pairs": [
                            [":authority", AUTHORITY],
                            [":path", "/hdrs?x=1"],
                            [":method", "GET"],
                            [":scheme", "http"],
                            ["x-probe", "headers"],
                            ["x-dup", "one"],
                            ["x-dup", "two"],
                            ["x-mixed-case", "V"],
                            ["x-empty", ""],
                            ["x-forwarded-proto", "http"],
                            ["x-request-id", "<uuid>"],
                        ]}),
                    ),
                    rec("get x-dup", ok_text("one")),
                    rec("get X-Dup", ok_text("one")),
                    rec("get host", ok_text(AUTHORITY)),
                    rec("get :authority", ok_text(AUTHORITY)),
                    rec("get :path", ok_text("/hdrs?x=1")),
                    rec("get :method", ok_text("GET")),
                    rec("get :scheme", ok_text("http")),
                    rec("get x-forwarded-proto", ok_text("http")),
                    rec("get x-request-id", ok_shape(36, "<uuid>")),
                    rec("get x-empty", ok_empty()),
                    rec("get x-mixed-case", ok_text("V")),
                    rec("get missing-header", status(NOT_FOUND)),
                    rec("get ", status(NOT_FOUND)),
                    rec("get content-length", status(NOT_FOUND)),
                    rec("size", json!({"s": 0, "size": 174, "pairs_bytes": 174})),
                    rec("add x-added 1, 2", json!([0, 0])),
                    rec("get x-added", ok_text("1")),
                    rec("remove not-there", json!(0)),
                    rec("replace not-there", json!(0)),
                    rec("get not-there", ok_text("r")),
                    rec("replace x-dup", json!(0)),
                    rec("pairs x-dup", json!(["3"])),
                    rec("trailers size", status(BAD_ARGUMENT)),
                    rec("trailers pairs", ok_empty()),
                    rec("response get :status", status(BAD_ARGUMENT)),
                    rec("response size", status(BAD_ARGUMENT)),
                    Expect::UpstreamHeader("x-added", vec!["1", "2"]),
                    Expect::UpstreamHeader("x-dup", vec!["3"]),
                    Expect::UpstreamHeader("not-there", vec!["r"]),
                    Expect::UpstreamHeader("x-mixed-case", vec!["V"]),
                ],
            )],
        },
        Scenario {
            name: "properties",
            pins: "property encodings (text, 8-byte LE ints, 1-byte bools, pairs maps), \
                   statuses for objects, unknown names and top-level names that 1.40 dropped, \
                   request properties gone after Continue",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/props/a/b?q=1&r=2", "props")
                    .header("x-dup", "one")
                    .header("x-dup", "two")
                    .header("referer", "http://ref.example/")
                    .header("user-agent", "probe-agent"),
                ok_json("{}"),
                vec![
                    Expect::Status(200),
                    rec("prop request.path", ok_text("/props/a/b?q=1&r=2")),
                    rec("prop request.url_path", ok_text("/props/a/b")),
                    rec("prop request.host", ok_text(AUTHORITY)),
                    rec("prop request.scheme", ok_text("http")),
                    rec("prop request.method", ok_text("GET")),
                    rec("prop request.id", ok_shape(36, "<uuid>")),
                    rec("prop request.protocol", ok_text("HTTP/1.1")),
                    rec("prop request.query", ok_text("q=1&r=2")),
                    rec("prop request.referer", ok_text("http://ref.example/")),
                    rec("prop request.useragent", ok_text("probe-agent")),
                    rec("prop request.headers.x-dup", ok_text("one,two")),
                    rec("prop request.headers.host", ok_text(AUTHORITY)),
                    rec("prop request.nonexistent", status(NOT_FOUND)),
                    rec("prop request", status(SERIALIZATION_FAILURE)),
                    rec("prop ", status(SERIALIZATION_FAILURE)),
                    rec("prop nonexistent", status(NOT_FOUND)),
                    rec("prop node", status(NOT_FOUND)),
                    rec("prop cluster_name", status(NOT_FOUND)),
                    rec("prop route_name", status(NOT_FOUND)),
                    rec("prop xds.cluster_name", ok_text("upstream")),
                    rec("prop xds.route_name", ok_text("default")),
                    rec("prop metadata", ok_empty()),
                    rec("prop filter_state", status(SERIALIZATION_FAILURE)),
                    rec(
                        "prop source.address",
                        json!({"s": 0, "len": "<any>", "v": "<ip:port>"}),
                    ),
                    rec(
                        "prop destination.address",
                        json!({"s": 0, "len": "<any>", "v": "<ip:port>"}),
                    ),
                    rec("prop connection.requested_server_name", ok_empty()),
                    rec("prop connection.tls_version", status(NOT_FOUND)),
                    rec(
                        "prop connection.uri_san_peer_certificate",
                        status(NOT_FOUND),
                    ),
                    rec(
                        "prop connection.sha256_peer_certificate_digest",
                        status(NOT_FOUND),
                    ),
                    rec(
                        "prop connection.subject_peer_certificate",
                        status(NOT_FOUND),
                    ),
                    rec("prop plugin_name", ok_text(PLUGIN_NAME)),
                    rec("prop plugin_root_id", ok_text(ROOT_ID)),
                    rec("prop plugin_vm_id", ok_text(VM_ID)),
                    rec("prop response.code", status(NOT_FOUND)),
                    rec("prop response.code_details", status(NOT_FOUND)),
                    rec("prop response.grpc_status", status(NOT_FOUND)),
                    rec("prop upstream.address", status(NOT_FOUND)),
                    rec("prop source.port", ok_int()),
                    rec("prop destination.port", ok_int()),
                    rec("prop connection.mtls", ok_hex("00")),
                    rec("prop connection.id", ok_int()),
                    rec("prop request.size", ok_hex("0000000000000000")),
                    rec("prop response.flags", ok_hex("0000000000000000")),
                    rec("prop response.headers", ok_hex("00000000")),
                    rec("prop xds.listener_direction", ok_hex("0000000000000000")),
                    rec("prop upstream.port", status(NOT_FOUND)),
                    rec(
                        "prop request.headers",
                        json!({"s": 0, "len": "<any>", "pairs": [
                            [":authority", AUTHORITY],
                            [":method", "GET"],
                            [":path", "/props/a/b?q=1&r=2"],
                            [":scheme", "http"],
                            ["referer", "http://ref.example/"],
                            ["user-agent", "probe-agent"],
                            ["x-dup", "one,two"],
                            ["x-forwarded-proto", "http"],
                            ["x-probe", "props"],
                            ["x-request-id", "<uuid>"],
                        ]}),
                    ),
                    rec(
                        "prop request.time",
                        json!({"s": 0, "len": 8, "within_60s_of_now": true}),
                    ),
                    rec("source.port = port of source.address", json!(true)),
                    rec("resp prop request.path", status(NOT_FOUND)),
                    rec("resp prop request.method", status(NOT_FOUND)),
                    rec("resp prop request.id", status(NOT_FOUND)),
                    rec("resp prop request.headers.x-probe", status(NOT_FOUND)),
                    rec("resp prop request.protocol", ok_text("HTTP/1.1")),
                    rec(
                        "resp prop source.address",
                        json!({"s": 0, "len": "<any>", "v": "<ip:port>"}),
                    ),
                    rec("resp prop response.code_details", ok_text("via_upstream")),
                    rec("resp prop plugin_name", ok_text(PLUGIN_NAME)),
                    rec("resp prop response.code", ok_hex("c800000000000000")),
                    rec("resp prop response.grpc_status", ok_hex("0200000000000000")),
                    rec("resp prop response.flags", ok_hex("0000000000000000")),
                    rec("resp prop request.headers", ok_hex("00000000")),
                    rec(
                        "resp prop response.headers",
                        json!({"s": 0, "len": "<any>", "pairs": [
                            [":status", "200"],
                            ["content-length", "2"],
                            ["content-type", "application/json"],
                            ["x-envoy-upstream-service-time", "<digits>"],
                        ]}),
                    ),
                    rec("log request get :path", ok_text("/props/a/b?q=1&r=2")),
                    rec("log prop request.path", ok_text("/props/a/b?q=1&r=2")),
                    rec("log prop response.code", ok_hex("c800000000000000")),
                ],
            )],
        },
        Scenario {
            name: "local-reply-from-request-headers",
            pins: "a local reply sent on the request path runs the filter's own response \
                   callbacks: :status, the given headers, content-length; one body callback \
                   with eos; date and server added for the client",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/local", "local"),
                ok_json("{}"),
                vec![
                    Expect::Status(403),
                    Expect::Body(r#"{"denied":true}"#),
                    Expect::Header("content-type", "application/json"),
                    Expect::Header("x-local", "1"),
                    Expect::Header("content-length", "15"),
                    Expect::Header("server", "envoy"),
                    Expect::Header("date", "<http-date>"),
                    Expect::HeaderNames(vec![
                        "content-type",
                        "x-local",
                        "content-length",
                        "date",
                        "server",
                    ]),
                    rec("send_local", json!(0)),
                    Expect::Callbacks(vec![
                        "req_headers n=7 eos=true -> P",
                        "resp_headers n=4 eos=false",
                        "resp_headers -> C",
                        "resp_body 15 eos=true -> C",
                        "log",
                    ]),
                    rec(
                        "resp_headers pairs",
                        json!({"s": 0, "len": "<any>", "pairs": [
                            [":status", "403"],
                            ["content-type", "application/json"],
                            ["x-local", "1"],
                            ["content-length", "15"],
                        ]}),
                    ),
                    rec("resp_body bytes", json!(r#"{"denied":true}"#)),
                    rec("log prop response.code", ok_hex("9301000000000000")),
                    rec("log prop response.code_details", ok_empty()),
                    Expect::UpstreamCount(0),
                ],
            )],
        },
        Scenario {
            name: "local-reply-without-content-type",
            pins: "a local reply with a body and no content-type gets content-type: text/plain \
                   after content-length; details reach response.code_details",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/local", "local-noct"),
                ok_json("{}"),
                vec![
                    Expect::Status(403),
                    Expect::Header("content-type", "text/plain"),
                    Expect::Header("content-length", "32"),
                    Expect::BodyLen(32),
                    rec(
                        "resp_headers pairs",
                        json!({"s": 0, "len": "<any>", "pairs": [
                            [":status", "403"],
                            ["x-local", "1"],
                            ["content-length", "32"],
                            ["content-type", "text/plain"],
                        ]}),
                    ),
                    rec("log prop response.code_details", ok_text("probe_details")),
                ],
            )],
        },
        Scenario {
            name: "local-reply-without-body",
            pins: "a local reply without a body: the filter sees :status only with eos=true and \
                   no body callback; the client gets content-length: 0",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/local", "local-nobody"),
                ok_json("{}"),
                vec![
                    Expect::Status(403),
                    Expect::Body(""),
                    Expect::Header("content-length", "0"),
                    Expect::HeaderAbsent("content-type"),
                    Expect::HeaderNames(vec!["date", "server", "content-length"]),
                    Expect::Callbacks(vec![
                        "req_headers n=7 eos=true -> P",
                        "resp_headers n=1 eos=true",
                        "resp_headers -> C",
                        "log",
                    ]),
                    rec(
                        "resp_headers pairs",
                        json!({"s": 0, "len": "<any>", "pairs": [[":status", "403"]]}),
                    ),
                ],
            )],
        },
        Scenario {
            name: "local-reply-without-body-with-length",
            pins: "a content-length given by the plugin for a local reply without a body is \
                   dropped: the filter sees :status only, the client gets content-length: 0",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/local", "local-nobody-cl"),
                ok_json("{}"),
                vec![
                    Expect::Status(403),
                    rec(
                        "resp_headers pairs",
                        json!({"s": 0, "len": "<any>", "pairs": [[":status", "403"]]}),
                    ),
                    Expect::Header("content-length", "0"),
                    Expect::Fault(None),
                ],
            )],
        },
        Scenario {
            name: "local-reply-server-and-date",
            pins: "a plugin's server header is overwritten by Envoy, its date kept, its \
                   content-length recomputed in place",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/local", "local-srvdate"),
                ok_json("{}"),
                vec![
                    Expect::Status(200),
                    Expect::Header("server", "envoy"),
                    Expect::Header("date", "probe-date"),
                    Expect::Header("content-length", "31"),
                    Expect::Header("content-type", "text/x-probe"),
                    Expect::HeaderNames(vec!["server", "date", "content-length", "content-type"]),
                    rec(
                        "resp_headers pairs",
                        json!({"s": 0, "len": "<any>", "pairs": [
                            [":status", "200"],
                            ["server", "probe-server"],
                            ["date", "probe-date"],
                            ["content-length", "31"],
                            ["content-type", "text/x-probe"],
                        ]}),
                    ),
                ],
            )],
        },
        Scenario {
            name: "local-reply-repeated-headers",
            pins: "repeated content-type in a local reply is merged with ',', other repeated \
                   headers stay separate",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/local", "local-dup"),
                ok_json("{}"),
                vec![
                    Expect::Status(403),
                    Expect::Header("content-type", "application/json,text/plain"),
                    rec(
                        "resp_headers pairs",
                        json!({"s": 0, "len": "<any>", "pairs": [
                            [":status", "403"],
                            ["content-type", "application/json,text/plain"],
                            ["x-m", "a"],
                            ["x-m", "b"],
                            ["content-length", "2"],
                        ]}),
                    ),
                ],
            )],
        },
        Scenario {
            name: "local-reply-from-response-body",
            pins: "a local reply sent from a response callback replaces status, headers and \
                   body, and runs no new response-headers callback",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/late", "local-from-resp"),
                ok_json(r#"{"ok":true}"#).header("x-upstream", "1"),
                vec![
                    Expect::Status(451),
                    Expect::Body("replaced-by-send\n"),
                    Expect::Header("content-type", "text/plain"),
                    Expect::Header("x-sent", "1"),
                    Expect::Header("content-length", "17"),
                    Expect::HeaderAbsent("x-upstream"),
                    Expect::HeaderAbsent("x-envoy-upstream-service-time"),
                    Expect::Callbacks(vec![
                        "req_headers n=7 eos=true -> C",
                        "resp_headers n=5 eos=false",
                        "resp_headers -> P",
                        "resp_body 11 eos=false -> P",
                        "resp_body 11 eos=true -> P",
                        "log",
                    ]),
                    rec("log prop response.code", ok_hex("c301000000000000")),
                    rec("log prop response.code_details", ok_empty()),
                ],
            )],
        },
        Scenario {
            name: "body-accumulates-while-held",
            pins: "with the response headers paused, each body callback's size is the \
                   accumulated body and get_buffer_bytes returns all of it",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/chunks", "body-buf"),
                Response::new(200)
                    .header("content-type", "application/json")
                    .chunks([r#"{"a":"#, "1,", r#""b":2}"#]),
                vec![
                    Expect::Status(200),
                    Expect::Body(r#"{"a":1,"b":2}"#),
                    Expect::Header("transfer-encoding", "chunked"),
                    Expect::Callbacks(vec![
                        "req_headers n=7 eos=true -> C",
                        "resp_headers n=4 eos=false",
                        "resp_headers -> P",
                        "resp_body 5 eos=false -> P",
                        "resp_body 7 eos=false -> P",
                        "resp_body 13 eos=false -> P",
                        "resp_body 13 eos=true -> C",
                        "log",
                    ]),
                    rec(
                        "resp_headers pairs",
                        json!({"s": 0, "len": "<any>", "pairs": [
                            [":status", "200"],
                            ["content-type", "application/json"],
                            ["transfer-encoding", "chunked"],
                            ["x-envoy-upstream-service-time", "<digits>"],
                        ]}),
                    ),
                    rec("resp_body bytes", json!(r#"{"a":"#)),
                ],
            )],
        },
        Scenario {
            name: "set-body-keeps-content-length",
            pins: "set_buffer_bytes does not fix content-length: the client gets the old \
                   length and fewer bytes, and hangs",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/set", "body-set"),
                ok_json(&record_body),
                vec![
                    Expect::Status(200),
                    Expect::Header("content-length", "40"),
                    rec("set_buffer_bytes", json!(0)),
                    rec("resp_body after set", json!("replaced-by-probe")),
                    Expect::Fault(Some(Fault::LengthMismatch {
                        declared: 40,
                        received: 17,
                    })),
                ],
            )],
        },
        Scenario {
            name: "set-body-with-content-length-removed",
            pins: "with content-length removed (response headers still held) the replaced \
                   body goes out chunked, and late header changes still reach the client",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/set", "body-setfix"),
                ok_json(&record_body),
                vec![
                    Expect::Status(200),
                    Expect::Body("replaced-by-probe"),
                    Expect::Fault(None),
                    Expect::HeaderAbsent("content-length"),
                    Expect::Header("transfer-encoding", "chunked"),
                    Expect::Header("x-late", "1"),
                    rec("remove content-length, replace x-late", json!([0, 0])),
                ],
            )],
        },
        Scenario {
            name: "set-body-and-content-length-on-a-chunked-response",
            pins: "content-length set on a chunked upstream response (whose map still says \
                   transfer-encoding: chunked) wins: the client gets a plain length",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/set", "body-setcl"),
                Response::new(200)
                    .header("content-type", "application/json")
                    .chunks([r#"{"a":"#, r#"1}"#]),
                vec![
                    Expect::Status(200),
                    rec("replace content-length", json!(0)),
                    Expect::Body("replaced-by-probe"),
                    Expect::Fault(None),
                    Expect::Header("content-length", "17"),
                    Expect::HeaderNames(vec![
                        "content-type",
                        "x-envoy-upstream-service-time",
                        "content-length",
                        "date",
                        "server",
                    ]),
                ],
            )],
        },
        Scenario {
            name: "held-response-over-buffer-limit",
            pins: "a held response over Envoy's 1 MiB buffer limit becomes Envoy's own 500 \
                   text/plain `Internal Server Error`",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/big", "hold"),
                ok_json(&big),
                vec![
                    Expect::Status(500),
                    Expect::Body("Internal Server Error"),
                    Expect::Header("content-type", "text/plain"),
                    Expect::Header("content-length", "21"),
                    rec("log prop response.code", ok_hex("f401000000000000")),
                    rec(
                        "log prop response.code_details",
                        ok_text("response_payload_too_large"),
                    ),
                ],
            )],
        },
        Scenario {
            name: "held-request-over-buffer-limit",
            pins: "a held request over Envoy's 1 MiB buffer limit becomes Envoy's own 413 \
                   `Payload Too Large`, which runs the filter's response callbacks",
            callee: None,
            steps: vec![step(
                probe_request("POST", "/upload", "req-hold").body(vec![b'x'; 1_500_000]),
                ok_json("{}"),
                vec![
                    Expect::Status(413),
                    Expect::Body("Payload Too Large"),
                    Expect::Header("content-type", "text/plain"),
                    Expect::UpstreamCount(0),
                    rec(
                        "resp_headers pairs",
                        json!({"s": 0, "len": "<any>", "pairs": [
                            [":status", "413"],
                            ["content-length", "17"],
                            ["content-type", "text/plain"],
                        ]}),
                    ),
                    rec("log prop response.code", ok_hex("9d01000000000000")),
                    rec(
                        "log prop response.code_details",
                        ok_text("request_payload_too_large"),
                    ),
                ],
            )],
        },
        Scenario {
            name: "callout-to-a-cluster-nothing-listens-on",
            pins: "a call to an unreachable cluster is answered in the callback with Envoy's \
                   503 (:status, content-length, content-type text/plain, text body); tokens \
                   start at 4",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/call", "call-down"),
                ok_json("{}"),
                vec![
                    Expect::Status(200),
                    rec("dispatch", json!({"s": 0, "token": 4})),
                    Expect::Callbacks(vec![
                        "req_headers n=7 eos=true -> P",
                        "call_response token=4 headers=3 body=98 trailers=0",
                        "resp_headers n=4 eos=false",
                        "resp_headers -> C",
                        "resp_body 2 eos=false -> C",
                        "resp_body 0 eos=true -> C",
                        "log",
                    ]),
                    rec(
                        "call headers",
                        json!({"s": 0, "len": "<any>", "pairs": [
                            [":status", "503"],
                            ["content-length", "98"],
                            ["content-type", "text/plain"],
                        ]}),
                    ),
                    rec(
                        "call body",
                        json!(
                            "upstream connect error or disconnect/reset before headers. \
                             reset reason: remote connection failure"
                        ),
                    ),
                    rec("call headers size", status(BAD_ARGUMENT)),
                    rec("call trailers", ok_empty()),
                    Expect::UpstreamCount(1),
                ],
            )],
        },
        Scenario {
            name: "callout-answered",
            pins: "a call's answer: :status first, the callee's headers in order, \
                   x-envoy-upstream-service-time last; the callee sees the call's :authority",
            callee: Some(
                Response::new(201)
                    .header("content-type", "text/plain")
                    .header("x-callee", "yes")
                    .body_with_length("callee body"),
            ),
            steps: vec![step(
                probe_request("GET", "/call", "call-ok"),
                ok_json("{}"),
                vec![
                    Expect::Status(200),
                    rec("dispatch", json!({"s": 0, "token": 4})),
                    rec(
                        "call headers",
                        json!({"s": 0, "len": "<any>", "pairs": [
                            [":status", "201"],
                            ["content-type", "text/plain"],
                            ["x-callee", "yes"],
                            ["content-length", "11"],
                            ["x-envoy-upstream-service-time", "<digits>"],
                        ]}),
                    ),
                    rec("call body", json!("callee body")),
                    Expect::Callout("GET", "/callee?x=1", "callee.local"),
                ],
            )],
        },
        Scenario {
            name: "callout-refused-at-dispatch",
            pins: "an unknown cluster or a missing :authority, :path or :method is BadArgument \
                   at dispatch, with no callback",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/call", "call-bad"),
                ok_json("{}"),
                vec![
                    Expect::Status(200),
                    rec("dispatch unknown cluster", status(BAD_ARGUMENT)),
                    rec("dispatch without :authority", status(BAD_ARGUMENT)),
                    rec("dispatch without :path", status(BAD_ARGUMENT)),
                    rec("dispatch without :method", status(BAD_ARGUMENT)),
                ],
            )],
        },
        Scenario {
            name: "shared-data-cas",
            pins: "shared data: NotFound leaves cas unwritten, one CAS counter for all keys \
                   from 1, stale cas is CasMismatch, cas on a missing key is Ok, empty values \
                   read back Ok with pointer 0",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/shared", "shared"),
                ok_json("{}"),
                vec![
                    rec("1 get missing", json!({"s": 1, "cas": "unwritten"})),
                    rec("2 set v1 cas 0", json!(0)),
                    rec("3 get", json!({"s": 0, "len": 2, "v": "v1", "cas": 1})),
                    rec("4 set v2 cas 1", json!(0)),
                    rec("5 get", json!({"s": 0, "len": 2, "v": "v2", "cas": 2})),
                    rec("6 set v3 stale cas 1", json!(CAS_MISMATCH)),
                    rec("7 get", json!({"s": 0, "len": 2, "v": "v2", "cas": 2})),
                    rec("8 set v4 cas 0", json!(0)),
                    rec("9 get", json!({"s": 0, "len": 2, "v": "v4", "cas": 3})),
                    rec("10 set missing key cas 12345", json!(0)),
                    rec(
                        "11 get other",
                        json!({"s": 0, "len": 1, "v": "x", "cas": 4}),
                    ),
                    rec("12 set null value", json!(0)),
                    rec("13 get null value", json!({"s": 0, "null": true, "cas": 5})),
                    rec("14 set empty slice", json!(0)),
                    rec(
                        "15 get empty slice",
                        json!({"s": 0, "null": true, "cas": 6}),
                    ),
                    rec("16 get empty key", json!({"s": 1, "cas": "unwritten"})),
                    rec("17 set empty key", json!(0)),
                    rec(
                        "18 get empty key",
                        json!({"s": 0, "len": 1, "v": "e", "cas": 7}),
                    ),
                ],
            )],
        },
        Scenario {
            name: "wasi-clocks-and-stdout",
            pins: "WASI: the realtime and monotonic clocks work, CPU clocks are ENOTSUP, \
                   random_get takes at most 64 KiB, path_open is ENOENT, stdout and stderr \
                   become info and error log lines less one trailing newline",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/wasi", "wasi"),
                ok_json("{}"),
                vec![
                    Expect::Status(200),
                    rec("clock monotonic", json!({"errno": 0})),
                    rec("clock process_cputime", json!({"errno": 58})),
                    rec("random_get 0, 64 KiB, 64 KiB + 1", json!([0, 0, 28])),
                    rec("path_open", json!({"errno": 44})),
                    rec(
                        "clock realtime",
                        json!({"errno": 0, "within_60s_of_host_time": true}),
                    ),
                    rec("SystemTime::now", json!(true)),
                    Expect::Log("info", "probe-stdout line"),
                    Expect::Log("error", "probe-stderr line"),
                    Expect::Log("info", ""),
                ],
            )],
        },
        Scenario {
            name: "memory-capped-at-1-gib",
            pins: "a VM's linear memory cannot grow past 1 GiB: memory.grow fails (an \
                   allocation there is an out-of-memory trap)",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/memory", "memory"),
                ok_json("{}"),
                vec![
                    Expect::Status(200),
                    rec("grow 1 GiB", json!("failed")),
                    rec("grow 1 page", json!("ok")),
                ],
            )],
        },
        Scenario {
            name: "instant-now-works",
            pins: "std::time::Instant::now() works: Envoy 1.40 serves WASI's monotonic clock",
            callee: None,
            steps: vec![step(
                probe_request("GET", "/instant", "wasi-instant"),
                ok_json("{}"),
                vec![
                    Expect::Status(200),
                    rec("Instant::now", json!({"later_not_before_earlier": true})),
                    Expect::UpstreamCount(1),
                ],
            )],
        },
    ]
}

/// The scenario with this name; panics with the list when there is none.
#[allow(clippy::panic)]
pub fn scenario(name: &str) -> Scenario {
    let all = scenarios();
    let names: Vec<&str> = all.iter().map(|s| s.name).collect();
    match all.iter().find(|s| s.name == name) {
        Some(s) => s.clone(),
        None => panic!("no fidelity scenario named {name:?}; there are {names:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_match_by_shape() {
        assert!(matches(
            &json!({"v": "<uuid>", "n": 1}),
            &json!({"v": "0f7cb765-86fc-485c-b1a8-6470c46bf45a", "n": 1})
        ));
        assert!(!matches(
            &json!({"v": "<uuid>"}),
            &json!({"v": "x", "w": 1})
        ));
        assert!(matches(&json!("<ip:port>"), &json!("127.0.0.1:48744")));
        assert!(!matches(&json!("<ip:port>"), &json!("127.0.0.1")));
        assert!(matches(
            &json!("<http-date>"),
            &json!("Fri, 27 Nov 2026 20:41:48 GMT")
        ));
        assert!(matches(&json!("<hex8>"), &json!("68be000000000000")));
        assert!(matches(&json!(["<any>", "<digits>"]), &json!([{}, "12"])));
        assert!(!matches(&json!(["<digits>"]), &json!(["1a"])));
    }

    #[test]
    fn scenario_names_are_unique() {
        let all = scenarios();
        let mut names: Vec<&str> = all.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
    }
}
