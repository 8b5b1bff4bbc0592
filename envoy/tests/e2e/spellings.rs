//! Every way of naming a field, end to end: the example policy with two routes whose
//! fields use an any-depth path (`$..national_id`) and case-insensitive names, in
//! front of a scripted upstream that nests the national id at three depths and
//! writes the SSN in five spellings (escaped, duplicated, with the long s) and one
//! name with U+0000. The same variant runs in the harness in
//! `host-tests/tests/all/spellings.rs`.

use std::time::Duration;

use consentry_envoy::RunningEnvoy;
use consentry_envoy::scripted::{Reply, ScriptedUpstream};
use consentry_example_service::RunningService;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::*;

/// The insurer's conditions on a route classifying by any-depth and case-insensitive
/// paths.
fn export_route(name: &str, path: &str, control_keys: &str) -> Value {
    json!({
        "name": name,
        "path": path,
        "response": {
            "unclassified": "keep",
            "match": "case_insensitive",
            "control_keys": control_keys,
            "fields": [
                {"path": "$..national_id", "domain": "identity", "sensitivity": "special",
                 "action": "hash"},
                {"path": "$.ssn", "domain": "clinical"},
                {"path": "$.name", "domain": "identity", "match": "exact"}
            ]
        },
        "rules": [{"name": "insurer-claims", "purposes": ["claims"], "partners": ["insurers"],
                   "subject": {"is": "id"}, "consent_actions": ["read"],
                   "release": ["billing", "identity"]}]
    })
}

fn policy() -> Value {
    let mut policy = example_policy();
    let routes = policy["routes"].as_array_mut().unwrap();
    routes.push(export_route(
        "patient-export",
        "/patients/{id}/export",
        "remove",
    ));
    routes.push(export_route(
        "patient-strict",
        "/patients/{id}/strict",
        "withhold",
    ));
    policy
}

const UPSTREAM: &str = r#"{"name":"Eleanor","national_id":"999 401 2284","SSN":"111-11-1111","Ssn":"222-22-2222","ſſn":"333-33-3333","s\u017Fn":"444-44-4444","SSN":"555-55-5555","guardians":[{"name":"Marcus","National_ID":"999 401 9999","contact":{"NATIONAL_ID":"999 401 7777","phone":"+44 7700 900871"}}],"ssn\u0000":"666-66-6666","note":"kept"}"#;

const SECRETS: [&str; 9] = [
    "999 401 2284",
    "999 401 9999",
    "999 401 7777",
    "111-11-1111",
    "222-22-2222",
    "333-33-3333",
    "444-44-4444",
    "555-55-5555",
    "666-66-6666",
];

fn hex_sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
    let r = get_with(&s.envoy, "/patients/p-1/export", &token);
    let body = String::from_utf8(r.body.clone()).unwrap();
    assert_eq!(r.status, 200, "{body}");
    let view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        view,
        json!({
            "name": "Eleanor",
            "national_id": hex_sha256("999 401 2284"),
            "guardians": [{"name": "Marcus", "National_ID": hex_sha256("999 401 9999"),
                           "contact": {"NATIONAL_ID": hex_sha256("999 401 7777"),
                                       "phone": "+44 7700 900871"}}],
            "note": "kept"
        }),
        "{body}"
    );
    for secret in SECRETS {
        assert!(!body.contains(secret), "{secret} released in {body}");
    }

    // The strict route withholds the same answer: a member name has U+0000.
    let r = get_with(&s.envoy, "/patients/p-1/strict", &token);
    assert_problem(&r, 502, "unsafe_response");
    let text = String::from_utf8_lossy(&r.body);
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    // Both answers came from the upstream: the plugin decided on what it sent.
    assert_eq!(s.upstream.received().len(), 2);
}
