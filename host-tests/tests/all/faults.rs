//! Host calls that fail: each failure the proxy can answer a host call with gives
//! the documented refusal, never a trap, and never a byte the decision does not
//! release. A fault is armed on a warm proxy (keys, status list and token cached by
//! a first exchange), so it strikes the request under test.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use consentry_core::problem::Code;
use consentry_host::abi::Status;
use consentry_host::fixtures::ConsentService;
use consentry_host::{Fault, Outcome, Proxy, Request, Response, UpstreamRequest, mint};
use serde_json::Value;

use crate::support::{
    T0, assert_no_leak, assert_problem, at, audit_records, example_policy, proxy_with,
    upstream_record,
};

/// What the insurer must never see of p-1's record: clinical and contact values.
const UNRELEASED: [&str; 3] = [
    "Type 2 diabetes mellitus",
    "Metformin",
    "eleanor.whitcombe@example.com",
];

/// A WASI errno (`EIO`) for WASI calls made to fail.
const EIO: u32 = 29;

const FAILED: u32 = Status::InternalFailure as u32;

/// A proxy with one worker running `config`, warmed by one allowed exchange.
fn warm(config: String) -> Proxy {
    let service = ConsentService::new();
    let mut proxy = proxy_with(config, &service, at(T0))
        .main_thread(false)
        .workers(1)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let first = proxy.send(insurer_read(), upstream_record("p-1"));
    assert_eq!(first.client.status, 200, "{:#?}", first.trace);
    proxy
}

fn example() -> Proxy {
    warm(example_policy(|_| {}))
}

fn insurer_token() -> String {
    mint::persona_token("insurer", at(T0)).unwrap()
}

/// The insurer reads p-1: allowed, billing and identity released.
fn insurer_read() -> Request {
    Request::get("/patients/p-1").bearer(&insurer_token())
}

/// The insurer searches claims: allowed, the body minimised.
fn claims_search() -> Request {
    Request::post("/echo?from=1&secret=canary-query")
        .bearer(&insurer_token())
        .header("content-type", "application/json")
        .body(r#"{"claim_id":"C-1","diagnosis":"canary-diagnosis"}"#)
}

fn echo(request: &UpstreamRequest) -> Response {
    Response::json(200, format!(r#"{{"body":{}}}"#, request.body.len()))
}

/// The decision records of one exchange.
fn records(out: &Outcome) -> Vec<Value> {
    audit_records(&out.logs)
        .into_iter()
        .filter(|r| r["kind"] == "decision")
        .collect()
}

/// Exactly one record, with this outcome and the status the client got.
fn one_record(out: &Outcome, outcome: &str) -> Value {
    let records = records(out);
    assert_eq!(records.len(), 1, "{records:#?}\n{:#?}", out.trace);
    let r = records[0].clone();
    assert_eq!(r["outcome"], outcome, "{r}");
    assert_eq!(r["status"], out.client.status, "{r}");
    r
}

/// The masked problem for `code`. A 503 for a failing host may say when to come
/// back (`retry-after`); everything else is as every problem reply is.
fn problem(out: &Outcome, code: Code) {
    let mut out = out.clone();
    if code == Code::DependencyUnavailable {
        out.client.headers.retain(|(n, v)| {
            n != "retry-after" || v.is_empty() || !v.iter().all(u8::is_ascii_digit)
        });
    }
    assert_problem(&out, code);
}

/// Refused before anything went upstream, with the problem for `code`, and no trap.
fn refused(out: &Outcome, code: Code) -> Value {
    assert!(out.trap.is_none(), "{:?}", out.trap);
    assert!(out.upstream_request.is_none(), "{:#?}", out.trace);
    problem(out, code);
    one_record(out, "refused")
}

/// Withheld after the upstream answered: the problem for `code`, nothing of the
/// answer, and no trap.
fn withheld(out: &Outcome, code: Code) -> Value {
    assert!(out.trap.is_none(), "{:?}", out.trap);
    problem(out, code);
    assert_no_leak(out, &UNRELEASED);
    one_record(out, "withheld")
}

// ── Randomness ────────────────────────────────────────────────────────────────

#[test]
fn no_randomness_refuses_an_allowed_request_with_503() {
    let mut proxy = example();
    proxy.inject(Fault::new("random_get", EIO));
    let out = proxy.send(insurer_read(), upstream_record("p-1"));
    let record = refused(&out, Code::DependencyUnavailable);
    assert_eq!(record["reason"], "host_random");
    assert!(proxy.faults().failed("random_get") > 0);
    // A refusal needs no randomness: it is answered as usual.
    let out = proxy.send(Request::get("/patients/p-1"), upstream_record("p-1"));
    refused(&out, Code::TokenMissing);
}

#[test]
fn no_randomness_from_the_start_refuses_the_configuration_without_a_trap() {
    let service = ConsentService::new();
    let started = proxy_with(example_policy(|_| {}), &service, at(T0))
        .main_thread(false)
        .workers(1)
        .fault(Fault::new("random_get", EIO))
        .start();
    match started {
        Ok(mut proxy) => {
            let out = proxy.send(insurer_read(), upstream_record("p-1"));
            assert!(out.trap.is_none(), "{:?}", out.trap);
            problem(&out, Code::DependencyUnavailable);
            assert!(out.upstream_request.is_none());
        }
        Err(e) => assert!(
            matches!(e, consentry_host::StartError::Rejected { .. }),
            "the plugin must refuse its configuration, not crash: {e}"
        ),
    }
}

// ── Shared data: rate-limit state ─────────────────────────────────────────────

fn rate_limited() -> Proxy {
    warm(example_policy(|p| {
        p["rate_limits"] = serde_json::json!({"caller": {"requests": 100, "burst": 100}});
    }))
}

#[test]
fn unreadable_rate_limit_state_refuses_with_503() {
    let mut proxy = rate_limited();
    proxy.inject(Fault::new("proxy_get_shared_data", FAILED));
    let out = proxy.send(insurer_read(), upstream_record("p-1"));
    let record = refused(&out, Code::DependencyUnavailable);
    assert_eq!(record["reason"], "rate_limit_state");
}

#[test]
fn unwritable_rate_limit_state_refuses_with_503() {
    let mut proxy = rate_limited();
    proxy.inject(Fault::new("proxy_set_shared_data", FAILED));
    let out = proxy.send(insurer_read(), upstream_record("p-1"));
    let record = refused(&out, Code::DependencyUnavailable);
    assert_eq!(record["reason"], "rate_limit_state");
}

// ── Header maps ───────────────────────────────────────────────────────────────

#[test]
fn unreadable_request_headers_refuse_with_503() {
    let mut proxy = example();
    proxy.inject(Fault::new("proxy_get_header_map_pairs", FAILED).times(1));
    let out = proxy.send(insurer_read(), upstream_record("p-1"));
    refused(&out, Code::DependencyUnavailable);
}

#[test]
fn an_unreadable_connection_property_refuses_with_503() {
    let mut proxy = example();
    proxy.inject(Fault::new("proxy_get_property", FAILED).times(1));
    let out = proxy.send(insurer_read(), upstream_record("p-1"));
    refused(&out, Code::DependencyUnavailable);
}

#[test]
fn unreadable_response_headers_withhold_the_answer() {
    let mut proxy = example();
    let answered = Arc::new(AtomicBool::new(false));
    let flag = answered.clone();
    let key = proxy.begin(insurer_read(), move |_: &UpstreamRequest| {
        flag.store(true, Ordering::SeqCst);
        upstream_record("p-1")
    });
    // Up to the moment the upstream has answered, before the response headers.
    while !answered.load(Ordering::SeqCst) {
        assert!(proxy.step_stream(key), "{:#?}", proxy.wire(key));
    }
    proxy.inject(Fault::new("proxy_get_header_map_pairs", FAILED).times(1));
    let out = proxy.finish(key);
    assert_eq!(proxy.faults().failed("proxy_get_header_map_pairs"), 1);
    withheld(&out, Code::UnsafeResponse);
}

#[test]
fn header_edits_the_host_refuses_refuse_the_request() {
    for call in [
        "proxy_remove_header_map_value",
        "proxy_replace_header_map_value",
    ] {
        let mut proxy = example();
        proxy.inject(Fault::new(call, FAILED));
        let out = proxy.send(insurer_read(), upstream_record("p-1"));
        let record = refused(&out, Code::DependencyUnavailable);
        assert_eq!(record["reason"], "host_call", "{call}");
    }
}

// ── Bodies ────────────────────────────────────────────────────────────────────

#[test]
fn a_redacted_body_the_host_will_not_take_is_withheld() {
    let mut proxy = example();
    proxy.inject(Fault::new("proxy_set_buffer_bytes", FAILED));
    let out = proxy.send(insurer_read(), upstream_record("p-1"));
    assert!(out.trap.is_none(), "{:?}", out.trap);
    problem(&out, Code::UnsafeResponse);
    assert_no_leak(&out, &UNRELEASED);
    // One record, saying what the client got: not a `released` one written
    // before the host refused the body, and another after.
    one_record(&out, "withheld");
}

#[test]
fn a_response_body_the_host_will_not_hand_over_is_withheld() {
    let mut proxy = example();
    proxy.inject(Fault::new("proxy_get_buffer_bytes", FAILED));
    let out = proxy.send(insurer_read(), upstream_record("p-1"));
    let record = withheld(&out, Code::UnsafeResponse);
    assert_eq!(record["reason"], "body_unreadable");
}

#[test]
fn a_minimised_request_body_the_host_will_not_take_is_refused() {
    let mut proxy = example();
    proxy.inject(Fault::new("proxy_set_buffer_bytes", FAILED));
    let out = proxy.send(claims_search(), echo);
    let record = refused(&out, Code::DependencyUnavailable);
    assert_eq!(record["reason"], "host_call");
}

// ── Replies, resets, resumes ──────────────────────────────────────────────────

#[test]
fn a_refusal_the_host_will_not_send_resets_the_stream() {
    let mut proxy = example();
    proxy.inject(Fault::new("proxy_send_local_response", FAILED));
    let out = proxy.send(Request::get("/patients/p-1"), upstream_record("p-1"));
    assert!(out.trap.is_none(), "{:?}", out.trap);
    assert!(out.upstream_request.is_none());
    assert_eq!(out.client.status, 0, "{:#?}", out.trace);
    assert!(matches!(
        out.client.fault,
        Some(consentry_host::ClientFault::Reset { .. })
    ));
    one_record(&out, "reset");
}

#[test]
fn a_refusal_the_host_will_neither_send_nor_reset_stays_held_until_the_client_leaves() {
    let mut proxy = example();
    proxy.inject(Fault::new("proxy_send_local_response", FAILED));
    proxy.inject(Fault::new("proxy_close_stream", FAILED));
    let out = proxy.send(Request::get("/patients/p-1"), upstream_record("p-1"));
    assert!(out.trap.is_none(), "{:?}", out.trap);
    assert!(out.upstream_request.is_none());
    assert!(
        matches!(
            out.client.fault,
            Some(consentry_host::ClientFault::Stalled { .. })
        ),
        "{:#?}",
        out.client
    );
    one_record(&out, "reset");
}

#[test]
fn a_withheld_answer_the_host_will_not_replace_resets_the_stream() {
    let mut proxy = example();
    proxy.inject(Fault::new("proxy_send_local_response", FAILED));
    let out = proxy.send(
        insurer_read(),
        Response::json(500, r#"{"trace":"Type 2 diabetes mellitus"}"#),
    );
    assert!(out.trap.is_none(), "{:?}", out.trap);
    assert_eq!(out.client.status, 0, "{:#?}", out.trace);
    assert_no_leak(&out, &UNRELEASED);
    one_record(&out, "reset");
}

#[test]
fn a_request_the_host_will_not_resume_is_refused() {
    // A cold proxy: the request waits for the status list and is resumed from
    // the call's answer, in another context.
    let service = ConsentService::new();
    let mut proxy = proxy_with(example_policy(|_| {}), &service, at(T0))
        .main_thread(false)
        .workers(1)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    proxy.inject(Fault::new("proxy_continue_stream", FAILED));
    let out = proxy.send(insurer_read(), upstream_record("p-1"));
    assert!(proxy.faults().failed("proxy_continue_stream") > 0);
    let record = refused(&out, Code::DependencyUnavailable);
    assert_eq!(record["reason"], "host_call");
}

// ── The log (the audit trail) ─────────────────────────────────────────────────

#[test]
fn an_audit_record_the_log_will_not_take_withholds_the_answer() {
    let mut proxy = example();
    // The first line is the decision's explanation (the harness logs at trace
    // level); the second is the audit record.
    proxy.inject(Fault::new("proxy_log", FAILED).after(1).times(1));
    let out = proxy.send(insurer_read(), upstream_record("p-1"));
    assert!(out.trap.is_none(), "{:?}", out.trap);
    problem(&out, Code::DependencyUnavailable);
    assert_no_leak(&out, &UNRELEASED);
    // The log works again by the end of the stream: the record says what happened.
    let record = one_record(&out, "withheld");
    assert_eq!(record["reason"], "audit");
}

#[test]
fn without_a_log_refusals_still_go_out() {
    let mut proxy = example();
    proxy.inject(Fault::new("proxy_log", FAILED));
    let out = proxy.send(Request::get("/patients/p-1"), upstream_record("p-1"));
    assert!(out.trap.is_none(), "{:?}", out.trap);
    problem(&out, Code::TokenMissing);
    let out = proxy.send(insurer_read(), upstream_record("p-1"));
    assert!(out.trap.is_none(), "{:?}", out.trap);
    problem(&out, Code::DependencyUnavailable);
    assert_no_leak(&out, &UNRELEASED);
    assert!(records(&out).is_empty());
}

// ── Clock and calls ───────────────────────────────────────────────────────────

#[test]
fn no_clock_refuses_with_503() {
    let mut proxy = example();
    proxy.inject(Fault::new("proxy_get_current_time_nanoseconds", FAILED));
    let out = proxy.send(insurer_read(), upstream_record("p-1"));
    assert!(out.trap.is_none(), "{:?}", out.trap);
    assert!(out.upstream_request.is_none());
    problem(&out, Code::DependencyUnavailable);
}

#[test]
fn a_fetch_the_host_will_not_dispatch_refuses_with_503() {
    let mut proxy = example();
    proxy.advance(std::time::Duration::from_secs(60 + 300 + 1));
    proxy.inject(Fault::new("proxy_http_call", Status::BadArgument as u32));
    let token = mint::persona_token("insurer", proxy.now()).unwrap();
    let out = proxy.send(
        Request::get("/patients/p-1").bearer(&token),
        upstream_record("p-1"),
    );
    refused(&out, Code::DependencyUnavailable);
}

// ── Every call, failing for good ──────────────────────────────────────────────

/// Every host call the plugin makes on a request's way, made to fail for good in
/// turn: whatever the plugin then answers, it never traps, the upstream never gets
/// the token or a field the purpose does not need, and the client never gets a
/// value the decision does not release.
#[test]
fn any_host_call_failing_never_traps_or_leaks() {
    let calls = [
        "proxy_log",
        "proxy_get_log_level",
        "proxy_get_current_time_nanoseconds",
        "proxy_get_buffer_bytes",
        "proxy_set_buffer_bytes",
        "proxy_get_header_map_pairs",
        "proxy_replace_header_map_value",
        "proxy_remove_header_map_value",
        "proxy_get_property",
        "proxy_get_shared_data",
        "proxy_set_shared_data",
        "proxy_continue_stream",
        "proxy_close_stream",
        "proxy_send_local_response",
        "proxy_http_call",
        "proxy_set_effective_context",
        "proxy_define_metric",
        "proxy_increment_metric",
        "random_get",
        "clock_time_get",
    ];
    for call in calls {
        let status = if call.contains("proxy_") { FAILED } else { EIO };
        let mut proxy = example();
        proxy.inject(Fault::new(call, status));
        let read = proxy.send(insurer_read(), upstream_record("p-1"));
        let search = proxy.send(claims_search(), echo);
        for out in [&read, &search] {
            assert!(out.trap.is_none(), "{call}: {:?}", out.trap);
            assert_no_leak(out, &UNRELEASED);
            if let Some(up) = &out.upstream_request {
                let seen = format!("{up:?}");
                assert!(!seen.contains("canary"), "{call}: {seen}");
                assert!(up.header("authorization").is_none(), "{call}: {seen}");
            }
            if out.client.status == 200 {
                assert!(records(out).len() == 1, "{call}: {:#?}", out.logs);
            }
        }
    }
}
