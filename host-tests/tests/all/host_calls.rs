//! What a warm request costs in calls into the proxy. Each host call crosses from the
//! VM into Envoy and back (and a value it returns is copied into memory the plugin
//! allocates for it). These tests pin the exact calls of the common exchanges, by
//! name: a change that adds one fails here, and one that removes one updates the pin.
//! `envoy/BENCHMARKS.md` measures what the calls cost in Envoy (little, next to the
//! plugin's own computation).

use std::collections::BTreeMap;

use consentry_host::{Outcome, Proxy, Request, Response};

use crate::support::{T0, example_policy, start_at, token_with, upstream_record};

/// The calls of the second of two identical exchanges (the first warms the token
/// cache, fetches the status list and defines the counters).
fn warm_calls(proxy: &mut Proxy, request: &Request, upstream: &Response) -> (Outcome, Calls) {
    let first = proxy.send(request.clone(), upstream.clone());
    assert!(first.client.status < 300, "{:#?}", first.trace);
    proxy.host_calls().take();
    let out = proxy.send(request.clone(), upstream.clone());
    let calls = proxy.host_calls().take();
    (out, Calls(calls))
}

/// Host calls by import name, printed one a line when a pin fails.
#[derive(PartialEq, Eq)]
struct Calls(BTreeMap<&'static str, u64>);

impl std::fmt::Debug for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: u64 = self.0.values().sum();
        writeln!(f, "{total} host calls:")?;
        for (name, n) in &self.0 {
            writeln!(f, "  {name}: {n}")?;
        }
        Ok(())
    }
}

/// The audit record's line, and the decision's explanation: the harness's proxy
/// runs at trace level, where the plugin explains every decision in a debug line
/// (Envoy at its usual info level gets the audit line alone).
const LOGS: (&str, u64) = ("proxy_log", 2);

fn calls(pairs: &[(&'static str, u64)]) -> Calls {
    Calls(pairs.iter().copied().collect())
}

fn insurer() -> Request {
    Request::get("/patients/p-1").bearer(&token_with("insurer", T0, |_| {}))
}

#[test]
fn a_warm_redacted_answer_makes_exactly_these_host_calls() {
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    let (out, calls_made) = warm_calls(&mut proxy, &insurer(), &upstream_record("p-1"));
    assert_eq!(out.client.status, 200, "{:#?}", out.trace);
    // Request headers: the map, the connection (2 properties), the clock, one
    // random decision id; the token removed, four provenance headers set. Response
    // headers: the map, held. Body: the body, the clock, the upstream headers the
    // route does not allow removed (six here), three set, the body set, the audit
    // record. Counters: allow, cache hit, two redaction actions.
    let expected = calls(&[
        ("proxy_get_header_map_pairs", 2),
        ("proxy_get_property", 2),
        ("proxy_get_current_time_nanoseconds", 2),
        ("random_get", 1),
        ("proxy_remove_header_map_value", 7),
        ("proxy_replace_header_map_value", 7),
        ("proxy_get_buffer_bytes", 1),
        ("proxy_set_buffer_bytes", 1),
        ("proxy_increment_metric", 4),
        LOGS,
    ]);
    assert_eq!(calls_made, expected, "{:#?}", out.trace);
}

#[test]
fn a_warm_answer_without_a_body_makes_exactly_these_host_calls() {
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    let (out, calls_made) = warm_calls(&mut proxy, &insurer(), &Response::new(204));
    assert_eq!(out.client.status, 204, "{:#?}", out.trace);
    let expected = calls(&[
        ("proxy_get_header_map_pairs", 2),
        ("proxy_get_property", 2),
        ("proxy_get_current_time_nanoseconds", 2),
        ("random_get", 1),
        ("proxy_remove_header_map_value", 2),
        ("proxy_replace_header_map_value", 6),
        ("proxy_increment_metric", 2),
        LOGS,
    ]);
    assert_eq!(calls_made, expected, "{:#?}", out.trace);
}

#[test]
fn a_warm_refusal_makes_exactly_these_host_calls() {
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    let refused = Request::get("/patients/p-2").bearer(&token_with("insurer", T0, |_| {}));
    let first = proxy.send(refused.clone(), upstream_record("p-2"));
    assert_eq!(first.client.status, 403, "{:#?}", first.trace);
    proxy.host_calls().take();
    let out = proxy.send(refused, upstream_record("p-2"));
    let calls_made = Calls(proxy.host_calls().take());
    assert_eq!(out.client.status, 403, "{:#?}", out.trace);
    // The refusal is recorded at the stream's end, in a callback of its own: a
    // second clock read.
    let expected = calls(&[
        ("proxy_get_header_map_pairs", 2),
        ("proxy_get_property", 2),
        ("proxy_get_current_time_nanoseconds", 2),
        ("proxy_send_local_response", 1),
        ("proxy_increment_metric", 2),
        LOGS,
    ]);
    assert_eq!(calls_made, expected, "{:#?}", out.trace);
}
