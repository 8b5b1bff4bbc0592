//! Shipping the audit trail to a collector (`audit.collector`): records are batched
//! and POSTed to the collector's cluster through `dispatch_http_call` as soon as a
//! batch is full or on the plugin's timer once its oldest record is old enough,
//! retried with a growing backoff while the collector answers 503 or nothing,
//! and counted as dropped when the bounded queue overflows. The harness plays the
//! collector; the virtual clock plays time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consentry_core::audit;
use consentry_host::fixtures::{ConsentService, dev_env};
use consentry_host::{Callout, CalloutAnswer, Proxy, Request, Response};
use serde_json::json;
use serde_json::value::RawValue;

use crate::support::{T0, at, example_policy, persona_claims, plugin, sign_dev, upstream_record};

const COLLECTOR: &str = "audit.example";

/// How the collector answers one batch.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Status(u16),
    /// Nothing comes back (Envoy answers 504 when the call times out).
    Nothing,
    /// Connection refused (Envoy answers 503).
    Refused,
}

/// The collector: answers from a script (then 200), and keeps what it received.
#[derive(Clone, Default)]
struct Collector {
    script: Arc<Mutex<VecDeque<Answer>>>,
    received: Arc<Mutex<Vec<Callout>>>,
}

impl Collector {
    fn answering(script: &[Answer]) -> Self {
        let c = Self::default();
        c.script.lock().unwrap().extend(script.iter().copied());
        c
    }

    fn calls(&self) -> Vec<Callout> {
        self.received.lock().unwrap().clone()
    }

    fn answer(&self, call: &Callout) -> CalloutAnswer {
        self.received.lock().unwrap().push(call.clone());
        match self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Answer::Status(200))
        {
            Answer::Status(s) => CalloutAnswer::now(Response::new(s)),
            Answer::Nothing => CalloutAnswer::NoAnswer,
            Answer::Refused => CalloutAnswer::Unreachable,
        }
    }
}

/// The example policy shipping to the collector; no checkpoints (only decisions).
fn shipping(max_batch: usize, max_age_ms: u64, max_queue: usize) -> String {
    example_policy(|p| {
        p["audit"] = json!({
            "checkpoint_seconds": 0,
            "collector": {
                "cluster": "audit_collector",
                "authority": COLLECTOR,
                "path": "/v1/records",
                "max_batch_records": max_batch,
                "max_batch_age_ms": max_age_ms,
                "max_queue_records": max_queue,
                "timeout_ms": 500
            }
        });
    })
}

fn start(config: String, collector: &Collector) -> Proxy {
    let service = ConsentService::new();
    let collector = collector.clone();
    let now = at(T0);
    let mut b = Proxy::builder(plugin()).config(config).now(now);
    for (k, v) in dev_env() {
        b = b.env(&k, &v);
    }
    b.callouts(move |c| {
        if c.authority == COLLECTOR {
            collector.answer(c)
        } else {
            service.answer(c, now)
        }
    })
    .start()
    .unwrap_or_else(|e| panic!("{e}"))
}

/// One allowed request (one decision record).
fn decide(proxy: &mut Proxy) {
    let c = persona_claims("insurer", T0 - 10, 3600);
    let out = proxy.send(
        Request::get("/patients/p-1").bearer(&sign_dev(&c)),
        upstream_record("p-1"),
    );
    assert_eq!(out.client.status, 200, "{:#?}", out.trace);
}

/// The records of one shipped batch, exactly as sent.
fn records(call: &Callout) -> Vec<String> {
    let batch: Vec<Box<RawValue>> = serde_json::from_slice(&call.body).unwrap_or_else(|e| {
        panic!(
            "not a JSON array ({e}): {}",
            String::from_utf8_lossy(&call.body)
        )
    });
    batch.iter().map(|r| r.get().to_owned()).collect()
}

/// The decision records in the proxy's log, as written.
fn logged(proxy: &Proxy) -> Vec<String> {
    proxy
        .logs()
        .iter()
        .filter_map(|l| audit::extract_record(&l.message).map(str::to_owned))
        .collect()
}

/// Advances in small steps until the collector has had `n` calls; returns how long
/// that took. Panics after `limit`.
fn until_calls(proxy: &mut Proxy, collector: &Collector, n: usize, limit: Duration) -> Duration {
    let step = Duration::from_millis(10);
    let mut waited = Duration::ZERO;
    while collector.calls().len() < n {
        assert!(
            waited <= limit,
            "{} collector calls after {waited:?}, expected {n}",
            collector.calls().len()
        );
        proxy.advance(step);
        waited += step;
    }
    waited
}

#[test]
fn records_are_batched_to_the_collector() {
    let collector = Collector::default();
    let mut proxy = start(shipping(2, 1000, 100), &collector);
    decide(&mut proxy);
    assert!(
        collector.calls().is_empty(),
        "a batch waits until it is full"
    );
    // A full batch goes at once, with the record that filled it.
    decide(&mut proxy);
    assert_eq!(collector.calls().len(), 1);
    let call = &collector.calls()[0];
    assert_eq!(call.cluster, "audit_collector");
    assert_eq!(call.method, "POST");
    assert_eq!(
        (call.authority.as_str(), call.path.as_str()),
        (COLLECTOR, "/v1/records")
    );
    assert!(
        call.headers
            .iter()
            .any(|(n, v)| n == "content-type" && v.as_slice() == b"application/json"),
        "{:?}",
        call.headers
    );
    let shipped = records(call);
    assert_eq!(
        shipped,
        logged(&proxy),
        "the batch is the log's records, byte for byte"
    );
    let summary = audit::verify(shipped.iter().map(String::as_str), &[]).unwrap();
    assert_eq!(summary.chains.len(), 1);
    assert_eq!(proxy.counter("consentry.audit.shipped"), 1);

    // A batch that is not full waits for its oldest record to be a second old, and
    // goes on the timer.
    decide(&mut proxy);
    proxy.advance(Duration::from_millis(700));
    assert_eq!(collector.calls().len(), 1, "not full, not old enough");
    let waited = until_calls(&mut proxy, &collector, 2, Duration::from_millis(600));
    assert!(waited <= Duration::from_millis(560), "{waited:?}");
    let last = records(&collector.calls()[1]);
    assert_eq!(last.len(), 1);
    assert_eq!(last[0], logged(&proxy)[2]);
    assert_eq!(proxy.counter("consentry.audit.shipped"), 2);
    assert_eq!(proxy.counter("consentry.audit.dropped"), 0);
}

#[test]
fn a_failed_batch_is_retried_with_a_growing_backoff() {
    let collector = Collector::answering(&[
        Answer::Status(503),
        Answer::Nothing,
        Answer::Refused,
        Answer::Status(200),
    ]);
    let mut proxy = start(shipping(2, 1000, 100), &collector);
    decide(&mut proxy);
    decide(&mut proxy);
    until_calls(&mut proxy, &collector, 1, Duration::from_millis(300));
    let batch = records(&collector.calls()[0]);
    assert_eq!(batch.len(), 2);

    // 503: retried after a second (give or take a tick), not before.
    let first_retry = until_calls(&mut proxy, &collector, 2, Duration::from_secs(3));
    assert!(
        first_retry >= Duration::from_millis(1000) && first_retry <= Duration::from_millis(1260),
        "{first_retry:?}"
    );
    // No answer: the call times out after 500 ms; the next retry waits two seconds.
    let second_retry = until_calls(&mut proxy, &collector, 3, Duration::from_secs(5));
    assert!(
        second_retry >= Duration::from_millis(2500) && second_retry <= Duration::from_millis(2760),
        "{second_retry:?}"
    );
    // Refused: four seconds.
    let third_retry = until_calls(&mut proxy, &collector, 4, Duration::from_secs(8));
    assert!(
        third_retry >= Duration::from_millis(4000) && third_retry <= Duration::from_millis(4260),
        "{third_retry:?}"
    );
    for call in &collector.calls() {
        assert_eq!(records(call), batch, "the same records, in the same order");
    }
    assert_eq!(proxy.counter("consentry.audit.ship_failed"), 3);
    assert_eq!(proxy.counter("consentry.audit.shipped"), 1);
    // Delivered: no more calls.
    proxy.advance(Duration::from_secs(10));
    assert_eq!(collector.calls().len(), 4);
    assert_eq!(proxy.counter("consentry.audit.dropped"), 0);
}

#[test]
fn a_batch_the_collector_refuses_for_good_is_not_retried() {
    let collector = Collector::answering(&[Answer::Status(400)]);
    let mut proxy = start(shipping(2, 1000, 100), &collector);
    decide(&mut proxy);
    decide(&mut proxy);
    until_calls(&mut proxy, &collector, 1, Duration::from_millis(300));
    proxy.advance(Duration::from_secs(10));
    assert_eq!(collector.calls().len(), 1, "a 400 is final");
    // Later records still go.
    decide(&mut proxy);
    decide(&mut proxy);
    until_calls(&mut proxy, &collector, 2, Duration::from_millis(300));
    assert_eq!(records(&collector.calls()[1]), logged(&proxy)[2..]);
}

#[test]
fn records_beyond_the_queue_are_dropped_oldest_first_and_counted() {
    let collector = Collector::default();
    // Batches of ten or a minute old: five records wait, and the queue holds three.
    let mut proxy = start(shipping(10, 60_000, 3), &collector);
    for _ in 0..5 {
        decide(&mut proxy);
    }
    assert_eq!(proxy.counter("consentry.audit.dropped"), 2);
    // The log keeps every record; the collector gets the newest three.
    let all = logged(&proxy);
    assert_eq!(all.len(), 5);
    until_calls(&mut proxy, &collector, 1, Duration::from_secs(61));
    assert_eq!(records(&collector.calls()[0]), all[2..]);
    assert_eq!(proxy.counter("consentry.audit.shipped"), 1);
}

#[test]
fn while_the_collector_is_down_the_queue_stays_bounded() {
    // Every answer fails: records keep coming, the queue never grows past its bound,
    // the overflow is counted, and the batch in flight comes back to the front.
    let collector = Collector::answering(&[Answer::Status(503); 50]);
    let mut proxy = start(shipping(2, 100, 4), &collector);
    for _ in 0..10 {
        decide(&mut proxy);
        proxy.advance(Duration::from_millis(300));
    }
    let dropped = proxy.counter("consentry.audit.dropped");
    assert!(dropped >= 4, "dropped {dropped}");
    assert!(proxy.counter("consentry.audit.ship_failed") >= 2);
    // Once the collector answers, what is left is delivered: the newest records.
    collector.script.lock().unwrap().clear();
    proxy.advance(Duration::from_secs(120));
    let delivered: Vec<String> = collector.calls().iter().flat_map(records).collect();
    let all = logged(&proxy);
    assert!(
        delivered.contains(all.last().unwrap()),
        "the newest record arrives"
    );
    let unique: std::collections::BTreeSet<&String> = delivered.iter().collect();
    assert!(
        all.len() as u64 - dropped <= unique.len() as u64,
        "every record not dropped is delivered: {} of {}, {dropped} dropped",
        unique.len(),
        all.len()
    );
}

#[test]
fn a_collector_cluster_the_proxy_lacks_is_counted_and_retried() {
    let collector = Collector::default();
    let service = ConsentService::new();
    let now = at(T0);
    let mut b = Proxy::builder(plugin())
        .config(shipping(1, 1000, 100))
        .now(now)
        .clusters(["consent_service"]);
    for (k, v) in dev_env() {
        b = b.env(&k, &v);
    }
    let mut proxy = b
        .callouts(move |c| service.answer(c, now))
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    decide(&mut proxy);
    proxy.advance(Duration::from_secs(4));
    // Refused at dispatch: counted each time it is tried (at 0, 1 and 3 seconds).
    assert_eq!(proxy.counter("consentry.audit.ship_failed"), 3);
    assert_eq!(proxy.counter("consentry.audit.shipped"), 0);
    assert!(collector.calls().is_empty());
}

#[test]
fn a_busy_worker_ships_every_record_without_waiting_for_the_timer() {
    // Batches of ten, a queue of fifty: five hundred decisions in the same instant
    // (no tick runs) all reach the collector, none is dropped.
    let collector = Collector::default();
    let mut proxy = start(shipping(10, 60_000, 50), &collector);
    for _ in 0..500 {
        decide(&mut proxy);
    }
    let shipped: Vec<String> = collector.calls().iter().flat_map(records).collect();
    assert_eq!(shipped.len(), 500);
    assert_eq!(shipped, logged(&proxy), "every record, in order");
    assert_eq!(proxy.counter("consentry.audit.dropped"), 0);
    assert_eq!(proxy.counter("consentry.audit.shipped"), 50);
}
