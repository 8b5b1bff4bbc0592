//! Every way of naming a field, through the real `.wasm`: an any-depth path
//! (`$..national_id`) that classifies the member wherever the upstream nests it,
//! case-insensitive names that catch `SSN`, `Ssn` and `ſſn` (also written with `\u`
//! escapes and as duplicates), and member names with control characters, which are
//! never released (removed, or the answer withheld, as the route says).
//!
//! The policy, the upstream's answer and the expected view are
//! `consentry_host::fixtures::spellings`, shared with the Envoy suite.

use consentry_core::problem::Code;
use consentry_host::fixtures::spellings::{
    CONTROL_MEMBER, EXPORT_PATH, SECRETS, STRICT_PATH, UPSTREAM, add_routes, expected_view,
};
use consentry_host::{Outcome, Request, Response, mint};
use serde_json::{Value, json};

use crate::support::{T0, assert_problem, at, example_policy, start_at};

/// The example policy with the scenario's two routes.
pub fn variant_policy() -> String {
    example_policy(add_routes)
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
    let out = insurer_reads(EXPORT_PATH);
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
    let out = insurer_reads(STRICT_PATH);
    assert_problem(&out, Code::UnsafeResponse);
    assert_eq!(crate::support::reason(&out), "control_key");
    for secret in SECRETS {
        assert!(!out.client.body_text().contains(secret));
    }
    // Without the control character the strict route releases the same view.
    let (mut proxy, _service) = start_at(variant_policy(), T0);
    let token = mint::persona_token("insurer", at(T0 - 10)).unwrap();
    let clean = UPSTREAM.replace(CONTROL_MEMBER, "");
    let out = proxy.send(
        Request::get(STRICT_PATH).bearer(&token),
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
