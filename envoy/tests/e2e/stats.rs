//! The plugin's counters at Envoy's admin `/stats`, counted request by request: decisions
//! by outcome and problem code, status-list fetches, redactions by action, rate-limit
//! refusals.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[test]
fn the_admin_stats_count_decisions_fetches_redactions_and_limits() {
    let _watchdog = watchdog("stats", Duration::from_secs(60));
    const BURST: u64 = 7;
    let service = example_service(60);
    let mut policy = example_policy();
    // Seven requests, then (practically) none: one a minute.
    policy["rate_limits"] = json!({"caller": {"requests": 1, "seconds": 60, "burst": BURST}});
    let envoy = start(envoy_for(&service, &policy));
    let insurer = sign(&claims("insurer"));

    // One insurer read: what one redaction of the record counts.
    assert_eq!(get_with(&envoy, "/patients/p-1", &insurer).status, 200);
    let one = counters(&envoy);
    let removed_per_read = one.get("redacted.removed").copied().unwrap_or(0);
    assert!(removed_per_read > 0, "{one:?}");
    assert_eq!(one.get("redacted.masked"), Some(&1), "the phone: {one:?}");

    // Six more decisions, then two over the limit.
    assert_eq!(get_with(&envoy, "/patients/p-1", &insurer).status, 200);
    assert_eq!(get(&envoy, "/patients/p-1", &[]).status, 401);
    assert_eq!(get_with(&envoy, "/patients/p-1", "x.y.z").status, 401);
    assert_eq!(
        get_with(&envoy, "/patients/p-1", &sign(&claims("stranger"))).status,
        403
    );
    assert_eq!(get_with(&envoy, "/patients/p-2", &insurer).status, 403);
    let before_research = counters(&envoy);
    assert_eq!(
        before_research.get("redacted.removed").copied(),
        Some(2 * removed_per_read),
        "two insurer reads remove twice what one does: {before_research:#?}"
    );
    let research = get_with(&envoy, "/patients/p-2", &sign(&claims("research-lab")));
    assert_eq!(research.status, 200, "{}", research.text());
    for _ in 0..2 {
        assert_problem(
            &get_with(&envoy, "/patients/p-1", &insurer),
            429,
            "rate_limited",
        );
    }
    wait_for_decisions(&envoy, 9);

    let c = counters(&envoy);
    let want = |name: &str, n: u64| {
        assert_eq!(
            c.get(name).copied().unwrap_or(0),
            n,
            "wasmcustom.consentry.{name}; all: {c:#?}"
        );
    };
    want("decision.allow", 3);
    want("decision.deny.token_missing", 1);
    want("decision.deny.token_invalid", 1);
    want("decision.deny.access_denied", 2);
    want("decision.deny.rate_limited", 2);
    want("ratelimit.limited", 2);
    // One list, fetched once (its ttl is a minute) by the one worker.
    want("fetch.status_list.ok", 1);
    want("fetch.status_list.failed", 0);
    // Two insurer reads: the phone masked twice; the research read masks nothing, but
    // pseudonymises the identity and generalises the birth date to its year.
    want("redacted.masked", 2);
    want("redacted.generalised", 1);
    assert!(
        c.get("redacted.pseudonymised").copied().unwrap_or(0) >= 1,
        "the research read pseudonymises the identity: {c:#?}"
    );
    assert!(
        c["redacted.removed"] > 2 * removed_per_read,
        "the research read removes the national id and more: {c:#?}"
    );

    // The same numbers in the raw text, under their full names.
    let text = envoy.admin_get("/stats?filter=consentry").unwrap();
    for line in [
        "wasmcustom.consentry.decision.allow: 3",
        "wasmcustom.consentry.decision.deny.access_denied: 2",
        "wasmcustom.consentry.fetch.status_list.ok: 1",
        "wasmcustom.consentry.redacted.masked: 2",
        "wasmcustom.consentry.ratelimit.limited: 2",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
}
