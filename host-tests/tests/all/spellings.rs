//! Every way of naming a field, through the real `.wasm`: an any-depth path
//! (`$..national_id`) that classifies the member wherever the upstream nests it,
//! case-insensitive names that catch `SSN`, `Ssn` and `ſſn` (also written with `\u`
//! escapes and as duplicates), and member names with control characters, which are
//! never released (removed, or the answer withheld, as the route says).
//!
//! The policy is the example's with two routes added for the insurer; the same variant
//! runs in a real Envoy in `envoy/tests/e2e/spellings.rs`.

use consentry_core::problem::Code;
use consentry_host::{Outcome, Request, Response, mint};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{T0, assert_problem, at, example_policy, start_at};

/// The insurer's conditions (as in the example's `patient-record` route) on a route
/// that classifies by any-depth and case-insensitive paths.
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

/// The example policy with `/patients/{id}/export` (control characters removed) and
/// `/patients/{id}/strict` (withheld).
pub fn variant_policy() -> String {
    example_policy(|p| {
        let routes = p["routes"].as_array_mut().unwrap();
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
    })
}

/// What the upstream sends: the national id at three depths and in two spellings,
/// the SSN in five spellings (one a duplicate, one escaped), and a name with U+0000.
pub const UPSTREAM: &str = r#"{"name":"Eleanor","national_id":"999 401 2284","SSN":"111-11-1111","Ssn":"222-22-2222","ſſn":"333-33-3333","s\u017Fn":"444-44-4444","SSN":"555-55-5555","guardians":[{"name":"Marcus","National_ID":"999 401 9999","contact":{"NATIONAL_ID":"999 401 7777","phone":"+44 7700 900871"}}],"ssn\u0000":"666-66-6666","note":"kept"}"#;

/// Every value the insurer may never see in clear.
pub const SECRETS: [&str; 9] = [
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

/// The insurer's view of [`UPSTREAM`] on the export route.
pub fn expected_view() -> Value {
    json!({
        "name": "Eleanor",
        "national_id": hex_sha256("999 401 2284"),
        "guardians": [{"name": "Marcus", "National_ID": hex_sha256("999 401 9999"),
                       "contact": {"NATIONAL_ID": hex_sha256("999 401 7777"),
                                   "phone": "+44 7700 900871"}}],
        "note": "kept"
    })
}

fn insurer_reads(path: &str) -> Outcome {
    let (mut proxy, _service) = start_at(variant_policy(), T0);
    let token = mint::persona_token("insurer", at(T0 - 10)).unwrap();
    proxy.send(
        Request::get(path).bearer(&token),
        Response::json(200, UPSTREAM),
    )
}

#[test]
fn any_depth_and_case_insensitive_paths_classify_every_spelling() {
    let out = insurer_reads("/patients/p-1/export");
    assert_eq!(out.client.status, 200, "{}", out.client.body_text());
    let body = out.client.body_text();
    let view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view, expected_view(), "{body}");
    for secret in SECRETS {
        assert!(!body.contains(secret), "{secret} released in {body}");
    }
    // The bytes nothing touched are the upstream's own.
    assert!(
        body.starts_with(r#"{"name":"Eleanor","national_id":""#),
        "{body}"
    );
    assert!(body.ends_with(r#","note":"kept"}"#), "{body}");
}

#[test]
fn a_name_with_a_control_character_can_withhold_the_answer() {
    let out = insurer_reads("/patients/p-1/strict");
    assert_problem(&out, Code::UnsafeResponse);
    assert_eq!(crate::support::reason(&out), "control_key");
    for secret in SECRETS {
        assert!(!out.client.body_text().contains(secret));
    }
    // Without the control character the strict route releases the same view.
    let (mut proxy, _service) = start_at(variant_policy(), T0);
    let token = mint::persona_token("insurer", at(T0 - 10)).unwrap();
    let clean = UPSTREAM.replace(r#""ssn\u0000":"666-66-6666","#, "");
    let out = proxy.send(
        Request::get("/patients/p-1/strict").bearer(&token),
        Response::json(200, clean),
    );
    assert_eq!(out.client.status, 200, "{}", out.client.body_text());
    let view: Value = serde_json::from_str(&out.client.body_text()).unwrap();
    assert_eq!(view, expected_view());
}

#[test]
fn the_check_command_accepts_the_variant_and_names_bad_matching() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("variant.json");
    std::fs::write(&good, variant_policy()).unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        example_policy(|p| {
            let fields = p["routes"][1]["response"]["fields"].as_array_mut().unwrap();
            fields.push(json!({"path": "$.*", "domain": "identity", "match": "case_insensitive"}));
            fields.push(json!({"path": "$..*", "domain": "identity"}));
        }),
    )
    .unwrap();
    let check = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_consentry"))
            .arg("check")
            .arg(path)
            .arg("--env")
            .arg(crate::support::dev_env_arg())
            .output()
            .unwrap()
    };
    let ok = check(&good);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = check(&bad);
    assert_eq!(refused.status.code(), Some(1));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        text.contains("'$.*' names no member: there is no name to match case-insensitively"),
        "{text}"
    );
    assert!(
        text.contains("'..' must be followed by a member name"),
        "{text}"
    );
}
