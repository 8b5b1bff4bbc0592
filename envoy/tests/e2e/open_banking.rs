//! The open-banking scenario through a real Envoy: `policies/open-banking.json` in front
//! of the example service's bank routes. Each golden view of
//! `examples/views/open-banking/` (`<persona>.<path segments joined by dots>.json`) must
//! be what the persona receives, byte for byte, whether the bank sends its body whole or
//! in many small chunks; the decisions that hang on a consent's
//! `authorization_details` entries are checked here as Envoy runs them, with their audit
//! records.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use consentry_envoy::{RunningEnvoy, project_root};

use crate::support::*;

fn open_banking_policy() -> Value {
    let path = project_root().join("policies/open-banking.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn token(persona: &str) -> String {
    consentry_host::mint::persona_token(persona, SystemTime::now()).unwrap()
}

/// The body the client got, with its own request id put back where the plugin quoted
/// Envoy's (Envoy replaces a client's `x-request-id` at the edge), plus one newline: the
/// form of a golden file.
fn as_golden(r: &consentry_envoy::HttpResponse, request_id: &str) -> Vec<u8> {
    let quoted = r
        .json()
        .ok()
        .and_then(|b| b["request_id"].as_str().map(str::to_owned));
    let mut body = match quoted {
        Some(id) => {
            assert_ne!(id, request_id, "the client chose the request id");
            r.text()
                .replacen(
                    &format!(r#""request_id":"{id}""#),
                    &format!(r#""request_id":"{request_id}""#),
                    1,
                )
                .into_bytes()
        }
        None => r.body.clone(),
    };
    body.push(b'\n');
    body
}

fn read(envoy: &RunningEnvoy, persona: &str, path: &str, request_id: &str) -> Vec<u8> {
    let r = get(
        envoy,
        path,
        &[
            ("authorization", &bearer(&token(persona))),
            ("x-request-id", request_id),
        ],
    );
    if r.status == 200 {
        assert_eq!(r.content_length(), Some(r.body.len()), "{persona} {path}");
    }
    as_golden(&r, request_id)
}

#[test]
fn each_open_banking_view_through_envoy_is_its_golden_file_byte_for_byte() {
    let _watchdog = watchdog("open_banking views", Duration::from_secs(90));
    let dir = project_root().join("examples/views/open-banking");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 7, "{files:?}");

    let service = example_service(60);
    let envoy = start(envoy_for(&service, &open_banking_policy()));
    let mut failures = Vec::new();
    for file in &files {
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        let (persona, rest) = stem
            .split_once('.')
            .unwrap_or_else(|| panic!("{stem}: not <persona>.<path>.json"));
        let path = format!("/{}", rest.replace('.', "/"));
        let golden = std::fs::read(file).unwrap();
        let request_id = format!("view-{stem}");
        // Whole, then in 7-100 byte chunks split inside strings and numbers.
        for target in [path.clone(), format!("{path}?chunked=1")] {
            let actual = read(&envoy, persona, &target, &request_id);
            if actual != golden {
                failures.push(format!(
                    "examples/views/open-banking/{stem}.json: {persona} GET {target} got\n{}\nthe golden file has\n{}",
                    String::from_utf8_lossy(&actual),
                    String::from_utf8_lossy(&golden)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn an_entry_grants_its_own_accounts_and_actions_only_and_the_audit_says_which_rule() {
    let _watchdog = watchdog("open_banking decisions", Duration::from_secs(60));
    let service = example_service(60);
    let envoy = start(envoy_for(&service, &open_banking_policy()));
    let aggregator = token("aggregator");

    let r = get_with(&envoy, "/accounts/acc-1001/transactions", &aggregator);
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    assert!(text.contains("\"booking_date\": \"2026-11\""), "{text}");
    assert!(
        !text.contains("reference") && !text.contains("Greenleaf"),
        "{text}"
    );

    // Its entries grant read_balances for acc-1002 only, and nothing of acc-2001.
    for path in ["/accounts/acc-1001/balances", "/accounts/acc-2001"] {
        let r = get_with(&envoy, path, &aggregator);
        let problem = assert_problem(&r, 403, "access_denied");
        assert!(!r.text().contains("acc-"), "{path}: {problem}");
    }
    // The bank's list of every account is behind no route.
    assert_problem(
        &get_with(&envoy, "/accounts", &token("tpp")),
        403,
        "access_denied",
    );

    // One record per decision (workers may log them in either order).
    let decisions = wait_for_decisions(&envoy, 4);
    let (allowed, refused): (Vec<&Value>, Vec<&Value>) =
        decisions.iter().partition(|d| d["decision"] == "allow");
    let s = |d: &Value, k: &str| d[k].as_str().unwrap_or_default().to_owned();
    assert_eq!(allowed.len(), 1, "{decisions:#?}");
    assert_eq!(
        ["route", "rule", "purpose"].map(|k| s(allowed[0], k)),
        ["transactions", "affordability", "affordability"]
    );
    assert_eq!(refused.len(), 3, "{decisions:#?}");
    for d in refused {
        assert_eq!(s(d, "code"), "access_denied", "{d}");
    }
}
