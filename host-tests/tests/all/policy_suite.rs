//! `consentry test` and `consentry check`'s warnings, run as a policy author and a CI
//! pipeline run them: the example policy's own suite (`policies/tests/`), a golden
//! view changed under it, `--update`, the JUnit report, and broken or failing files.

use std::path::{Path, PathBuf};

use quick_xml::events::Event;
use quick_xml::{Reader, XmlVersion};

use crate::cli::{arg, consentry, shown, stdout, write};
use crate::support::{dev_env_arg, repo_file};

fn root() -> PathBuf {
    consentry_host::plugin::workspace_root()
}

/// The closing line's counts: `policies: N passed, M failed`.
fn counts(out: &str) -> (usize, usize) {
    let line = out
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("policies: "))
        .unwrap_or_else(|| panic!("no closing line in:\n{out}"));
    let (p, f) = line.split_once(", ").unwrap();
    let n = |s: &str, word: &str| s.strip_suffix(word).unwrap().parse::<usize>().unwrap();
    (n(p, " passed"), n(f, " failed"))
}

/// Each `testcase` of a JUnit report: its name and its failure's message, if any.
type JunitCases = Vec<(String, Option<String>)>;

/// The JUnit report, parsed: the root's `tests` and `failures`, and the cases.
fn junit(path: &Path) -> ((usize, usize), JunitCases) {
    let xml = std::fs::read_to_string(path).unwrap();
    let mut reader = Reader::from_str(&xml);
    let (mut totals, mut cases) = ((0, 0), Vec::new());
    loop {
        match reader.read_event().unwrap() {
            Event::Eof => break,
            Event::Start(e) | Event::Empty(e) => {
                let attr = |name: &str| {
                    e.try_get_attribute(name).unwrap().map(|a| {
                        a.normalized_value(XmlVersion::Explicit1_0)
                            .unwrap()
                            .into_owned()
                    })
                };
                match e.name().as_ref() {
                    "testsuites" => {
                        totals = (
                            attr("tests").unwrap().parse().unwrap(),
                            attr("failures").unwrap().parse().unwrap(),
                        );
                    }
                    "testcase" => cases.push((attr("name").unwrap(), None)),
                    "failure" => cases.last_mut().unwrap().1 = attr("message"),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    (totals, cases)
}

/// A copy of what the suite reads (the policy, its tests, the golden views) in a
/// temporary directory laid out like the repository.
fn copy_of_the_suite() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
            }
        }
    };
    for sub in [
        "policies",
        "policies/tests",
        "policies/tests/golden",
        "policies/tests/upstream",
        "examples/views",
    ] {
        copy(&root().join(sub), &dir.path().join(sub));
    }
    dir
}

#[test]
fn the_example_policys_suite_passes_and_reports_in_junit() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("junit.xml");
    let out = consentry(&["test", "policies/tests", "--junit", arg(&report)]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let (passed, failed) = counts(&stdout(&out));
    assert!(passed >= 30, "{}", shown(&out));
    assert_eq!(failed, 0);
    let (totals, cases) = junit(&report);
    assert_eq!(totals, (passed, 0));
    assert_eq!(cases.len(), passed);
    assert!(cases.iter().all(|(_, failure)| failure.is_none()));
    assert!(
        cases
            .iter()
            .any(|(name, _)| name.starts_with("claims search sends the upstream only")),
        "{cases:?}"
    );
}

#[test]
fn a_changed_golden_view_fails_with_a_diff_until_update_rewrites_it() {
    let dir = copy_of_the_suite();
    let view = dir.path().join("examples/views/insurer-p-1.json");
    let original = std::fs::read_to_string(&view).unwrap();
    let changed = original.replace("\"mrn\": \"BRH-0041187\"", "\"mrn\": \"BRH-0041188\"");
    assert_ne!(changed, original);
    std::fs::write(&view, &changed).unwrap();
    let tests = dir.path().join("policies/tests");
    let report = dir.path().join("junit.xml");

    let out = consentry(&["test", arg(&tests), "--junit", arg(&report)]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let text = stdout(&out);
    let (passed, failed) = counts(&text);
    assert_eq!(failed, 1, "{text}");
    // The failing case, what differs, and the two lines of the diff.
    let case = "reads p-1's record - billing and identity, the phone masked, nothing clinical";
    assert!(text.contains(&format!("  FAIL  {case}\n")), "{text}");
    assert!(
        text.contains("body differs from ../../examples/views/insurer-p-1.json"),
        "{text}"
    );
    assert!(
        text.contains("--- ../../examples/views/insurer-p-1.json\n")
            && text.contains("+++ received\n"),
        "{text}"
    );
    assert!(text.contains("-    \"mrn\": \"BRH-0041188\""), "{text}");
    assert!(text.contains("+    \"mrn\": \"BRH-0041187\""), "{text}");
    assert!(text.contains("(the decision: allow ok"), "{text}");
    assert!(
        text.contains("failures:\n") && text.contains(&format!("insurer.test.yaml: {case}")),
        "{text}"
    );
    let (totals, cases) = junit(&report);
    assert_eq!(totals, (passed + 1, 1));
    let failure = cases.iter().find(|(n, _)| n == case).unwrap().1.clone();
    assert_eq!(
        failure.as_deref(),
        Some("body differs from ../../examples/views/insurer-p-1.json")
    );

    // --update puts back what the client receives, and says so.
    let out = consentry(&["test", arg(&tests), "--update"]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(stdout(&out).contains("(updated "), "{}", shown(&out));
    assert_eq!(std::fs::read_to_string(&view).unwrap(), original);
    let out = consentry(&["test", arg(&tests)]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(!stdout(&out).contains("(updated "), "{}", shown(&out));
}

#[test]
fn failed_expectations_say_what_was_expected_and_what_came() {
    let dir = tempfile::tempdir().unwrap();
    let policy = root().join("policies/example.json");
    let record = root().join("policies/tests/upstream/patient-p-1.json");
    let file = write(
        dir.path(),
        "wrong.test.yaml",
        &format!(
            r#"policy: {policy}
env: {{CONSENTRY_PSEUDONYM_KEYS: "{keys}"}}
now: 2026-11-27T12:00:00Z
callouts:
  consent.example.com/statuslists/1: {{body: "{{{{status-list:1}}}}"}}
cases:
  - name: the insurer is expected to see clinical data
    request:
      path: /patients/p-1
      headers: {{authorization: "Bearer {{{{token:insurer}}}}"}}
    upstream:
      headers: {{content-type: application/json}}
      body_file: {record}
    expect:
      status: 200
      headers: {{etag: "v1"}}
      present: [$.clinical]
      absent: [$.identity.name]
      json:
        $.billing.invoices[0].amount: 120.5
        $.id: p-2
      audit: {{rule: research}}
  - name: a refusal is expected to be allowed
    request:
      path: /patients/p-2
      headers: {{authorization: "Bearer {{{{token:insurer}}}}"}}
    expect:
      status: 200
      upstream: {{path: /patients/p-2}}
"#,
            policy = policy.display(),
            keys = dev_env_arg().split_once('=').unwrap().1,
            record = record.display(),
        ),
    );
    let out = consentry(&["test", arg(&file)]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let text = stdout(&out);
    for line in [
        "header etag: expected \"v1\", missing",
        "$.clinical: expected present, missing",
        "$.identity.name: expected absent, found {\"given\":\"Eleanor\",\"family\":\"Whitcombe\"}",
        "$.id: expected \"p-2\", got \"p-1\"",
        "audit rule: expected \"research\", got \"insurer-claims\"",
        "status: expected 200, got 403 (access_denied)",
        "upstream: expected the request to reach it, but it never left the proxy",
        "policies: 0 passed, 2 failed",
    ] {
        assert!(text.contains(line), "{line:?} not in:\n{text}");
    }
    // 120.5 is the stored 120.50: numbers compare by value.
    assert!(!text.contains("invoices[0].amount"), "{text}");
}

#[test]
fn a_broken_test_file_names_the_place_and_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "typo.test.yaml",
        "policy: ../nowhere.json\ncases:\n  - name: x\n    request: {path: /}\n    expect: {stauts: 200}\n",
    );
    write(
        dir.path(),
        "no-policy.test.json",
        r#"{"policy": "missing.json", "cases": [{"name": "x", "request": {"path": "/"}, "expect": {"status": 200}}]}"#,
    );
    // Not a test file by its name: left alone.
    write(dir.path(), "notes.yaml", "not: a test");
    let out = consentry(&["test", arg(dir.path())]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let text = stdout(&out);
    assert!(
        text.contains("ERROR $.cases[0].expect.stauts: unknown field `stauts`"),
        "{text}"
    );
    assert!(text.contains("ERROR reading the policy "), "{text}");
    assert!(!text.contains("notes.yaml"), "{text}");
    assert_eq!(counts(&text), (0, 2));

    let empty = tempfile::tempdir().unwrap();
    let out = consentry(&["test", arg(empty.path())]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(shown(&out).contains("no test files"), "{}", shown(&out));
}

#[test]
fn check_warns_of_what_is_legal_but_likely_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let mut policy: serde_json::Value =
        serde_json::from_slice(&repo_file("policies/example.json")).unwrap();
    policy["issuers"][0]["revocation"]["status_list"]["require_status_claim"] = false.into();
    let record = &mut policy["routes"][0]["response"];
    record["unclassified"] = "keep".into();
    let fields = record["fields"].as_array_mut().unwrap();
    // A misspelt path, and a member released inside the contact the rules remove.
    fields.push(serde_json::json!({"path": "$.identity.nationalid", "domain": "identity"}));
    fields.push(serde_json::json!({"path": "$.contact.email", "public": true}));
    let config = write(dir.path(), "policy.json", &policy.to_string());
    // The routes' examples: the upstream answers of the cases of a test file in
    // `tests/` beside the policy (p-5 is a minor: only her record has guardians).
    let upstream = |id: &str| root().join(format!("policies/tests/upstream/patient-{id}.json"));
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    write(
        &dir.path().join("tests"),
        "examples.test.yaml",
        &format!(
            "policy: ../policy.json\ncases:\n\
             - name: p-1\n  request: {{path: /patients/p-1}}\n  upstream: {{body_file: {}}}\n  expect: {{status: 401}}\n\
             - name: p-5\n  request: {{path: /patients/p-5}}\n  upstream: {{body_file: {}}}\n  expect: {{status: 401}}\n",
            upstream("p-1").display(),
            upstream("p-5").display()
        ),
    );
    let out = consentry(&["check", arg(&config), "--env", &dev_env_arg()]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].ends_with("policy.json: ok"), "{text}");
    assert!(lines[1].starts_with("response mode hold"), "{text}");
    let warning = |location: &str| {
        let prefix = format!("warning: {}: {location}: ", config.display());
        lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no warning at {location} in:\n{text}"))
    };
    assert!(
        warning("$.issuers[0].revocation.status_list.require_status_claim")
            .contains("can never be revoked")
    );
    assert!(warning("$.routes[0].response.unclassified").contains("$.identity.national_id"));
    assert!(
        warning("$.routes[0].response.fields[15].path")
            .starts_with("'$.identity.nationalid' is in none of this route's 2 example")
    );
    let inside = warning("$.routes[0].response.fields[16].path");
    assert!(
        inside.starts_with("'$.contact.email' is released in clear inside '$.contact'"),
        "{inside}"
    );
    assert!(
        inside.contains("rules insurer-claims, research"),
        "{inside}"
    );
    assert_eq!(lines.len(), 6, "{text}");

    // Without examples, the path warning has nothing to go by.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = consentry(&[
        "check",
        arg(&config),
        "--env",
        &dev_env_arg(),
        "--examples",
        arg(elsewhere.path()),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert_eq!(stdout(&out).lines().count(), 5, "{}", shown(&out));
    // A path that is not there is an error, not a silent lack of examples.
    let nowhere = elsewhere.path().join("nowhere");
    let out = consentry(&["check", arg(&config), "--examples", arg(&nowhere)]);
    assert_eq!(out.status.code(), Some(2), "{}", shown(&out));
    assert!(shown(&out).contains("no such file"), "{}", shown(&out));
}

/// The suite's upstream answers are the example service's bytes, so its golden views
/// are what the demo and the Envoy tests show.
#[test]
fn the_suites_upstream_answers_are_the_example_services_bytes() {
    let service = consentry_example_service::ServiceState::builtin().unwrap();
    let file = |name: &str| {
        consentry_host::policy_test::read_text_file(
            &root().join("policies/tests/upstream").join(name),
        )
        .unwrap()
    };
    for id in ["p-1", "p-2", "p-4", "p-5"] {
        let stored = service.record(id).unwrap();
        assert_eq!(
            file(&format!("patient-{id}.json")).as_bytes(),
            &stored[..],
            "{id}"
        );
    }
    let billing = service.billing("p-1").unwrap();
    assert_eq!(file("billing-p-1.json").as_bytes(), &billing[..]);

    // And the bank's, for the open-banking suite.
    let bank = consentry_example_service::Bank::builtin().unwrap();
    for path in [
        "/accounts/acc-1001",
        "/accounts/acc-1001/balances",
        "/accounts/acc-1001/transactions",
        "/accounts/acc-1002/balances",
    ] {
        let name = format!(
            "{}.json",
            path.trim_start_matches("/accounts/").replace('/', "-")
        );
        let text = consentry_host::policy_test::read_text_file(
            &root()
                .join("policies/tests/open-banking/upstream")
                .join(&name),
        )
        .unwrap();
        assert_eq!(text.as_bytes(), &bank.resource(path).unwrap()[..], "{path}");
    }
}
