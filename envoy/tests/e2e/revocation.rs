//! Revocation through the IETF Token Status List, for real: the consent service changes
//! entries of list 1 while Envoy runs, and the plugin, which refetches the list once its
//! `ttl` is over, refuses, then serves again.

use std::time::Duration;

use consentry_envoy::RunningEnvoy;

use crate::support::*;

/// The `ttl` of the status-list tokens the consent service signs.
const TTL_SECONDS: u64 = 1;
/// How long a change may take to show: the ttl, the second it is counted in, the
/// refetch (started by the first request after the ttl, which is still decided with the
/// old list, then a few milliseconds), and slack for a loaded machine.
const SETTLE: Duration = Duration::from_secs(TTL_SECONDS + 3);

/// Sends `GET path` with `token` until its outcome is `wanted` (a problem code, or
/// "ok"), within [`SETTLE`]; every answer on the way must be the `old` outcome.
fn until(envoy: &RunningEnvoy, path: &str, token: &str, old: &str, wanted: &str) {
    let mut seen: Vec<String> = Vec::new();
    let got = poll(SETTLE, Duration::from_millis(100), || {
        let o = outcome(&get_with(envoy, path, token));
        seen.push(o.clone());
        (o == wanted).then_some(())
    });
    seen.dedup();
    assert!(
        got.is_some(),
        "{path}: no {wanted} within {SETTLE:?} after the status changed; outcomes in order: \
         {seen:?}; counters: {:#?}",
        counters(envoy)
    );
    assert!(
        seen[..seen.len() - 1].iter().all(|o| o == old),
        "{path}: only {old} may come before {wanted}: {seen:?}"
    );
}

/// From valid to revoked (the insurer, index 0) and from valid to suspended (the
/// patient, index 2): refused within the ttl and a refetch, and it stays so.
#[test]
fn a_withdrawn_consent_is_refused_within_the_status_lists_ttl() {
    let _watchdog = watchdog("revocation", Duration::from_secs(60));
    let service = example_service(TTL_SECONDS);
    let envoy = start(envoy_for(&service, &example_policy()));
    let insurer = sign(&claims("insurer"));
    let patient = sign(&claims("patient"));
    for token in [&insurer, &patient] {
        let r = get_with(&envoy, "/patients/p-1", token);
        assert_eq!(r.status, 200, "{}", r.text());
    }

    admin_put(&service, "/admin/statuslists/1/0", b"1");
    admin_put(&service, "/admin/statuslists/1/2", b"2");
    until(&envoy, "/patients/p-1", &insurer, "ok", "consent_revoked");
    until(&envoy, "/patients/p-1", &patient, "ok", "consent_suspended");
    for _ in 0..3 {
        let r = get_with(&envoy, "/patients/p-1", &insurer);
        assert_problem(&r, 403, "consent_revoked");
        assert!(!r.text().contains("Whitcombe"), "{}", r.text());
        assert_problem(
            &get_with(&envoy, "/patients/p-1", &patient),
            403,
            "consent_suspended",
        );
    }
    // Another consent on the same list was never touched.
    let r = get_with(&envoy, "/patients/p-2", &sign(&claims("research-lab")));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!envoy.log().contains("Uncaught RuntimeError"));
}

/// The whole life of one consent: revoked (1), then suspended (2), then valid again
/// (0), each seen within the ttl and a refetch.
#[test]
fn revoked_suspended_and_reinstated_through_the_status_list() {
    let _watchdog = watchdog("revocation life", Duration::from_secs(60));
    let service = example_service(TTL_SECONDS);
    let envoy = start(envoy_for(&service, &example_policy()));
    let token = sign(&claims("insurer"));
    let path = "/patients/p-1";
    assert_eq!(get_with(&envoy, path, &token).status, 200);

    admin_put(&service, "/admin/statuslists/1/0", b"1");
    until(&envoy, path, &token, "ok", "consent_revoked");

    admin_put(&service, "/admin/statuslists/1/0", b"2");
    until(&envoy, path, &token, "consent_revoked", "consent_suspended");
    assert_problem(&get_with(&envoy, path, &token), 403, "consent_suspended");

    admin_put(&service, "/admin/statuslists/1/0", b"0");
    until(&envoy, path, &token, "consent_suspended", "ok");
    let r = get_with(&envoy, path, &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json().unwrap()["identity"].get("national_id").is_none());
}

/// The refetch of a list past its ttl is started by whichever request needs the list
/// then; that request is decided at once with the list it has. When that decision is a
/// refusal, the stream ends at once, and the refetch must still complete: the next
/// request is decided with the new list.
#[test]
fn a_status_list_refetch_started_by_a_refused_request_completes() {
    let _watchdog = watchdog("refetch from a refusal", Duration::from_secs(60));
    let service = example_service(TTL_SECONDS);
    let envoy = start(envoy_for(&service, &example_policy()));
    let token = sign(&claims("insurer"));
    assert_eq!(get_with(&envoy, "/patients/p-1", &token).status, 200);
    let fetched = counter(&envoy, "fetch.status_list.ok");

    admin_put(&service, "/admin/statuslists/1/0", b"1");
    // Past the ttl (counted in whole seconds), a request that passes the revocation
    // check with the old list and is then refused by the policy (another patient)
    // starts the refetch.
    std::thread::sleep(Duration::from_millis(TTL_SECONDS * 1000 + 1100));
    let started = counter(&envoy, "fetch.status_list.started");
    assert_problem(
        &get_with(&envoy, "/patients/p-2", &token),
        403,
        "access_denied",
    );
    // The refetch goes out from the plugin's timer, a moment after the refusal.
    let refetching = poll(Duration::from_secs(2), Duration::from_millis(20), || {
        (counter(&envoy, "fetch.status_list.started") == started + 1).then_some(())
    });
    assert!(
        refetching.is_some(),
        "the request past the ttl must start a refetch; counters: {:#?}",
        counters(&envoy)
    );
    // The consent service answers in milliseconds.
    let done = poll(Duration::from_secs(2), Duration::from_millis(50), || {
        (counter(&envoy, "fetch.status_list.ok") > fetched).then_some(())
    });
    assert!(
        done.is_some(),
        "the refetch started by the refused request never completed (its answer went to \
         a stream that had ended); counters: {:#?}",
        counters(&envoy)
    );
    assert_problem(
        &get_with(&envoy, "/patients/p-1", &token),
        403,
        "consent_revoked",
    );
}

/// An issuer that publishes status lists vouches for a consent's status only through
/// one: a token that references none is refused (401 `token_invalid`, its reason
/// `status_missing` in the audit trail and the counters), not waved through. Only an
/// issuer configured with `require_status_claim: false` accepts it.
#[test]
fn a_token_without_a_status_reference_is_refused_unless_its_issuer_allows_it() {
    let _watchdog = watchdog("no status reference", Duration::from_secs(60));
    const LAX_ISSUER: &str = "https://lax.consent.example.com";
    let mut policy = example_policy();
    let mut lax = policy["issuers"][0].clone();
    lax["issuer"] = LAX_ISSUER.into();
    lax["revocation"]["status_list"]["require_status_claim"] = false.into();
    policy["issuers"].as_array_mut().unwrap().push(lax);
    let service = example_service(60);
    let envoy = start(envoy_for(&service, &policy));

    let mut unlisted = claims("insurer");
    unlisted.remove("status");
    let r = get_with(&envoy, "/patients/p-1", &sign(&unlisted));
    assert_problem(&r, 401, "token_invalid");
    assert!(!r.text().contains("Whitcombe"), "{}", r.text());
    let record = wait_for_decisions(&envoy, 1).pop().unwrap();
    assert_eq!(
        (record["code"].as_str(), record["reason"].as_str()),
        (Some("token_invalid"), Some("status_missing")),
        "{record}"
    );
    assert_eq!(counter(&envoy, "token.refused.status_missing"), 1);
    assert_eq!(counter(&envoy, "fetch.status_list.started"), 0);

    // The same consent with its reference passes; from the lax issuer, without one too.
    let r = get_with(&envoy, "/patients/p-1", &sign(&claims("insurer")));
    assert_eq!(r.status, 200, "{}", r.text());
    unlisted.insert("iss".into(), LAX_ISSUER.into());
    let r = get_with(&envoy, "/patients/p-1", &sign(&unlisted));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(counter(&envoy, "token.refused.status_missing"), 1);
}
