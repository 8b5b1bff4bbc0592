//! Key rotation without a restart: the issuer signs with its next key before the plugin
//! has ever seen it; the plugin refetches the JWKS on the unknown `kid` (at most once per
//! `min_refetch_interval_seconds`) and accepts the token once the consent service
//! publishes the key.

use std::thread;
use std::time::{Duration, Instant};

use consentry_host::mint;

use crate::support::*;

/// Long enough that two requests a few milliseconds apart always fall in one interval
/// (the plugin counts it in whole seconds), short enough to keep the test fast.
const MIN_REFETCH_SECONDS: u64 = 2;

#[test]
fn a_token_signed_with_the_next_key_is_accepted_once_the_issuer_publishes_it() {
    let _watchdog = watchdog("rotation", Duration::from_secs(60));
    let service = example_service(60);
    let mut policy = example_policy();
    policy["issuers"][0]["keys"]["remote"]["min_refetch_interval_seconds"] =
        MIN_REFETCH_SECONDS.into();
    let envoy = start(envoy_for(&service, &policy));

    // The current key works (and the status list is in).
    let current = sign(&claims("insurer"));
    let r = get_with(&envoy, "/patients/p-1", &current);
    assert_eq!(r.status, 200, "{}", r.text());

    // Signed with dev-2026-2, which the consent service does not serve yet: the unknown
    // kid makes the plugin refetch the JWKS once, and the key is still not there.
    let next = sign_next(&claims("insurer"));
    let refetches = counter(&envoy, "token.refetch");
    let r = get_with(&envoy, "/patients/p-1", &next);
    let refused_at = Instant::now();
    assert_problem(&r, 401, "token_invalid");
    assert_eq!(
        counter(&envoy, "token.refetch"),
        refetches + 1,
        "an unknown kid must trigger one JWKS refetch"
    );

    // Right away again: still refused, and no second fetch (rate-limited).
    let r = get_with(&envoy, "/patients/p-1", &next);
    assert_problem(&r, 401, "token_invalid");
    assert_eq!(
        counter(&envoy, "token.refetch"),
        refetches + 1,
        "a refetch within min_refetch_interval_seconds must not happen"
    );

    // The issuer publishes the rotation set (both keys). Once the refetch interval has
    // passed, the very next request refetches and is accepted: no restart, no reload.
    admin_put(&service, "/admin/jwks", mint::ROTATION_JWKS.as_bytes());
    let ready = refused_at + Duration::from_secs(MIN_REFETCH_SECONDS) + Duration::from_millis(50);
    thread::sleep(ready.saturating_duration_since(Instant::now()));
    let r = get_with(&envoy, "/patients/p-1", &next);
    assert_eq!(
        r.status,
        200,
        "the next key must be accepted after the refetch: {}",
        r.text()
    );
    assert_eq!(counter(&envoy, "token.refetch"), refetches + 2);
    let body = r.json().unwrap();
    assert!(body["identity"].get("national_id").is_none(), "{body}");

    // Tokens of the current key still pass (the rotation set holds both).
    let r = get_with(&envoy, "/patients/p-1", &sign(&claims("insurer")));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!envoy.log().contains("Uncaught RuntimeError"));
}
