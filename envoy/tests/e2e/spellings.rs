//! Every way of naming a field, end to end: the example policy with two routes whose
//! fields use an any-depth path (`$..national_id`) and case-insensitive names, in
//! front of a scripted upstream that nests the national id at three depths and
//! writes the SSN in five spellings (escaped, duplicated, with the long s) and one
//! name with U+0000. The scenario is
//! `consentry_host::fixtures::spellings`, shared with the harness suite.

use std::time::Duration;

use consentry_envoy::RunningEnvoy;
use consentry_envoy::scripted::{Reply, ScriptedUpstream};
use consentry_example_service::RunningService;
use consentry_host::fixtures::spellings::{
    EXPORT_PATH, SECRETS, STRICT_PATH, UPSTREAM, add_routes, expected_view,
};
use serde_json::Value;

use crate::support::*;

fn policy() -> Value {
    let mut policy = example_policy();
    add_routes(&mut policy);
    policy
}

fn reply(body: &str) -> Reply {
    Reply::new(200)
        .header("content-type", "application/json")
        .header("content-length", &body.len().to_string())
        .body(body)
}

struct Setup {
    envoy: RunningEnvoy,
    upstream: ScriptedUpstream,
    _consent: RunningService,
}

fn setup() -> Setup {
    let consent = example_service(60);
    let upstream = ScriptedUpstream::start().unwrap();
    require_prerequisites();
    let builder = consentry_envoy::Envoy::builder()
        .upstream_port(upstream.port())
        .var("CONSENT_PORT", consent.addr().port())
        .plugin_config_json(&policy().to_string());
    Setup {
        envoy: start(builder),
        upstream,
        _consent: consent,
    }
}

#[test]
fn any_depth_and_case_insensitive_paths_classify_every_spelling() {
    let _watchdog = watchdog("spellings", Duration::from_secs(60));
    let s = setup();
    let token = sign(&claims("insurer"));

    s.upstream.set_default(reply(UPSTREAM));
    let r = get_with(&s.envoy, EXPORT_PATH, &token);
    let body = String::from_utf8(r.body.clone()).unwrap();
    assert_eq!(r.status, 200, "{body}");
    let view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view, expected_view(), "{body}");
    for secret in SECRETS {
        assert!(!body.contains(secret), "{secret} released in {body}");
    }

    // The strict route withholds the same answer: a member name has U+0000.
    let r = get_with(&s.envoy, STRICT_PATH, &token);
    assert_problem(&r, 502, "unsafe_response");
    let text = String::from_utf8_lossy(&r.body);
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    // Both answers came from the upstream: the plugin decided on what it sent.
    assert_eq!(s.upstream.received().len(), 2);
}
