//! Rate limits and the lockout after repeated refusals, with two workers: the plugin
//! keeps its buckets and lockouts in the proxy's shared data, so the limits hold for the
//! caller whichever worker its connection lands on. (Per-worker state would let twice as
//! many requests through.) The caller here is the client's address, 127.0.0.1.

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

/// The distinct audit chains (one per worker VM) among these records.
fn chains(records: &[Value]) -> BTreeSet<String> {
    records
        .iter()
        .filter_map(|r| r["chain"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_burst_is_limited_across_workers_and_the_bucket_refills() {
    let _watchdog = watchdog("rate limit", Duration::from_secs(60));
    const BURST: usize = 4;
    const SENT: usize = 16;
    let service = example_service(60);
    let mut policy = example_policy();
    // 4 at once, then one every 2 s.
    policy["rate_limits"] = json!({"caller": {"requests": 1, "seconds": 2, "burst": BURST}});
    let envoy = start(envoy_for(&service, &policy).concurrency(2));
    let token = sign(&claims("insurer"));

    let started = Instant::now();
    let answers: Vec<_> = (0..SENT)
        .map(|_| get_with(&envoy, "/patients/p-1", &token))
        .collect();
    let elapsed = started.elapsed();
    let allowed = answers.iter().filter(|r| r.status == 200).count();
    // The bucket refills one request per 2 s; the burst normally takes far less.
    let refilled = (elapsed.as_secs_f64() / 2.0).floor() as usize;
    assert!(
        (BURST..=BURST + refilled).contains(&allowed),
        "{allowed} of {SENT} allowed in {elapsed:?}; the shared bucket holds {BURST}: {:?}",
        answers.iter().map(outcome).collect::<Vec<_>>()
    );
    let mut wait = 0;
    for r in answers.iter().filter(|r| r.status != 200) {
        assert_problem(r, 429, "rate_limited");
        wait = retry_after(r);
        assert!((1..=2).contains(&wait), "retry-after {wait}");
        assert!(!r.text().contains("Whitcombe"));
    }
    assert_eq!(
        counter(&envoy, "ratelimit.limited"),
        (SENT - allowed) as u64
    );

    // Both workers decided some of these requests (each has its own audit chain), and
    // still no more than the one bucket's worth got through.
    let records = wait_for_decisions(&envoy, SENT);
    assert_eq!(
        chains(&records).len(),
        2,
        "the burst should have reached both workers"
    );

    // After Retry-After, the bucket has a request again, and only one.
    thread::sleep(Duration::from_secs(wait) + Duration::from_millis(100));
    let r = get_with(&envoy, "/patients/p-1", &token);
    assert_eq!(r.status, 200, "the bucket must have refilled: {}", r.text());
    assert_problem(
        &get_with(&envoy, "/patients/p-1", &token),
        429,
        "rate_limited",
    );
}

#[test]
fn repeated_refusals_lock_the_caller_out_across_workers_for_a_while() {
    let _watchdog = watchdog("lockout", Duration::from_secs(60));
    const LOCK_SECONDS: u64 = 2;
    let service = example_service(60);
    let mut policy = example_policy();
    policy["rate_limits"] = json!({
        "lockout": {"refusals": 3, "window_seconds": 30, "lock_seconds": LOCK_SECONDS}
    });
    let envoy = start(envoy_for(&service, &policy).concurrency(2));
    let token = sign(&claims("insurer"));
    assert_eq!(get_with(&envoy, "/patients/p-1", &token).status, 200);

    // Three refusals that are the caller's fault: the third locks it out.
    assert_problem(&get(&envoy, "/patients/p-1", &[]), 401, "token_missing");
    assert_problem(
        &get_with(&envoy, "/patients/p-1", "not-a-token"),
        401,
        "token_invalid",
    );
    assert_problem(
        &get_with(&envoy, "/patients/p-2", &token),
        403,
        "access_denied",
    );
    let locked_at = Instant::now();

    // Locked out: even a valid consent is refused, on whichever worker, with the time
    // to wait.
    for _ in 0..6 {
        let r = get_with(&envoy, "/patients/p-1", &token);
        assert_problem(&r, 403, "locked_out");
        let wait = retry_after(&r);
        assert!((1..=LOCK_SECONDS).contains(&wait), "retry-after {wait}");
        assert!(!r.text().contains("Whitcombe"));
    }

    // One audit record raises the alert: the refusal that locked the caller out.
    envoy
        .wait_for_log(r#""alert":"lockout""#, Duration::from_secs(5))
        .unwrap();
    let records = wait_for_decisions(&envoy, 10);
    let alerts: Vec<&Value> = records.iter().filter(|r| r["alert"] == "lockout").collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["code"], "access_denied", "{}", alerts[0]);
    assert_eq!(
        records.iter().filter(|r| r["code"] == "locked_out").count(),
        6
    );
    assert_eq!(counter(&envoy, "ratelimit.lockout"), 1);
    assert_eq!(counter(&envoy, "ratelimit.locked_out"), 6);
    assert!(
        envoy
            .log()
            .contains("consentry: a caller is locked out after repeated refusals")
    );

    // After the lock, the caller is served again (and not before it ends).
    let served = poll(
        Duration::from_secs(LOCK_SECONDS + 3),
        Duration::from_millis(100),
        || {
            let r = get_with(&envoy, "/patients/p-1", &token);
            (r.status == 200).then(Instant::now)
        },
    )
    .expect("the caller is still locked out long after lock_seconds");
    let locked_for = served - locked_at;
    assert!(
        locked_for >= Duration::from_millis(LOCK_SECONDS * 1000 - 200),
        "served again after only {locked_for:?}"
    );
    assert!(!envoy.log().contains("Uncaught RuntimeError"));

    // Each worker's records form its own chain; interleaved in one log, both verify.
    let summary = consentry_host::audit_log::verify_text(&envoy.log(), &[])
        .unwrap_or_else(|f| panic!("the audit chains of two workers do not verify: {f}"));
    assert!(summary.records >= 11, "{} records", summary.records);
}
