//! The `consentry` command-line tool end to end: the built binary, run as a policy
//! author or a CI pipeline runs it (`check`, `replay`, `explain`, `mint`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use consentry_host::{Request, mint};
use serde_json::{Value, json};

use crate::support::{
    T0, dev_env_arg, example_policy, repo_file, start_at, stored_record, upstream_record,
};

/// 2026-11-27T12:00:00Z.
const NOW: &str = "2026-11-27T12:00:00Z";

pub(crate) fn consentry(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_consentry"));
    cmd.args(args)
        .current_dir(consentry_host::plugin::workspace_root())
        // Without --env the tool passes this process's CONSENTRY_* variables on.
        .env_remove("CONSENTRY_PSEUDONYM_KEYS")
        .env_remove("CONSENTRY_AUDIT_KEY");
    cmd.output().unwrap()
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub(crate) fn shown(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn check_accepts_the_example_policy_with_its_secret() {
    let env = dev_env_arg();
    let out = consentry(&["check", "policies/example.json", "--env", &env]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let out_text = stdout(&out);
    let mut lines = out_text.lines();
    assert_eq!(lines.next(), Some("policies/example.json: ok"));
    let mode = lines.next().unwrap_or_default();
    assert!(mode.starts_with("response mode hold: "), "{mode}");
    assert!(mode.contains("allow_on_headers_stop_iteration"), "{mode}");
    // The example policy, with its test suite as the routes' examples, draws no
    // warning (policy_suite.rs shows each kind of warning).
    assert_eq!(lines.next(), None, "{}", shown(&out));
}

#[test]
fn check_names_the_json_location_of_every_error_and_exits_1() {
    // Without the secret the policy names.
    let out = consentry(&["check", "policies/example.json"]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    assert!(
        stdout(&out).contains("policies/example.json: $.secrets.pseudonym_keys.env: "),
        "{}",
        shown(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    let env = dev_env_arg();
    // Several mistakes at once: each is reported, with its place.
    let broken = example_policy(|p| {
        p["version"] = json!(2);
        p["routes"][0]["methods"] = json!(["GET", "FETCH"]);
        let rule = &mut p["routes"][0]["rules"][1];
        rule["release"] = json!(["billing", "nowhere"]);
        rule["source_cidrs"] = json!(["10.0.0.1/8"]);
        rule["when"] = json!("claims.client_id ==");
        rule["hours"] = json!({"from": "25:00", "to": "18:00"});
        p["issuers"][0]["algorithms"] = json!(["ES256", "HS256"]);
    });
    let file = write(dir.path(), "broken.json", &broken);
    let out = consentry(&["check", arg(&file), "--env", &env]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    let text = stdout(&out);
    for location in [
        "$.version",
        "$.routes[0].methods[1]",
        "$.routes[0].rules[1].release[1]",
        "$.routes[0].rules[1].source_cidrs[0]",
        "$.routes[0].rules[1].when",
        "$.routes[0].rules[1].hours.from",
        "$.issuers[0].algorithms",
    ] {
        assert!(
            text.lines().any(|l| l.contains(location)),
            "{location} is not named:\n{}",
            shown(&out)
        );
    }
    let prefix = format!("{}: $", file.display());
    for line in text.lines() {
        assert!(
            line.starts_with(&prefix),
            "a line without its location: {line}"
        );
    }
    // Secrets never appear in the errors, even a bad one.
    let out = consentry(&[
        "check",
        "policies/example.json",
        "--env",
        "CONSENTRY_PSEUDONYM_KEYS=dev-1:c2hvcnQtc2VjcmV0",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    assert!(!shown(&out).contains("c2hvcnQtc2VjcmV0"), "{}", shown(&out));

    // A misspelt member.
    let typo = example_policy(|p| p["limts"] = json!({}));
    let file = write(dir.path(), "typo.json", &typo);
    let out = consentry(&["check", arg(&file), "--env", &env]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    assert!(
        stdout(&out).contains(": $.limts: unknown field"),
        "{}",
        shown(&out)
    );
}

/// A configuration that is not even JSON is a configuration with an error: the
/// documented contract is "every error with its location and exit 1" (2 is left for
/// the tool's own failures: a missing file, a bad argument).
#[test]
fn check_reports_a_syntax_error_with_its_line_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "cut.json",
        "{\"version\": 1,\n  \"issuers\": [\n",
    );
    let out = consentry(&["check", arg(&file), "--env", &dev_env_arg()]);
    assert!(shown(&out).contains("line 3"), "{}", shown(&out));
    assert_eq!(
        out.status.code(),
        Some(1),
        "a configuration that does not parse is refused like any other: {}",
        shown(&out)
    );
}

#[test]
fn check_reads_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let env = dev_env_arg();
    let example: Value = serde_json::from_slice(&repo_file("policies/example.json")).unwrap();
    let yaml = to_yaml(&example, 0);
    assert!(yaml.starts_with("version: 1\n"), "{yaml}");
    let file = write(dir.path(), "example.yaml", &yaml);
    let out = consentry(&["check", arg(&file), "--env", &env]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.ends_with("example.yaml: ok"))
    );

    let broken = yaml.replacen("version: 1", "version: 7", 1);
    assert_ne!(broken, yaml);
    let file = write(dir.path(), "broken.yml", &broken);
    let out = consentry(&["check", arg(&file), "--env", &env]);
    assert_eq!(out.status.code(), Some(1), "{}", shown(&out));
    assert!(
        stdout(&out).contains(": $.version: unsupported version 7"),
        "{}",
        shown(&out)
    );
}

/// A JSON document in YAML's block style (mappings and sequences on their own
/// lines, strings double-quoted), as a policy author writes it.
fn to_yaml(v: &Value, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let scalar = |v: &Value| match v {
        Value::String(s) => serde_json::to_string(s).unwrap(),
        other => other.to_string(),
    };
    let mut out = String::new();
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, v) in o {
                let key = serde_json::to_string(k).unwrap();
                let key = if k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    k.clone()
                } else {
                    key
                };
                match v {
                    Value::Object(m) if !m.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n{}", to_yaml(v, indent + 2)));
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n{}", to_yaml(v, indent + 2)));
                    }
                    Value::Object(_) => out.push_str(&format!("{pad}{key}: {{}}\n")),
                    Value::Array(_) => out.push_str(&format!("{pad}{key}: []\n")),
                    s => out.push_str(&format!("{pad}{key}: {}\n", scalar(s))),
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        let inner = to_yaml(item, indent + 2);
                        out.push_str(&format!("{pad}- {}\n", inner.trim_start().trim_end()));
                    }
                    Value::Array(x) if !x.is_empty() => {
                        out.push_str(&format!("{pad}-\n{}", to_yaml(item, indent + 2)));
                    }
                    s => out.push_str(&format!("{pad}- {}\n", scalar(s))),
                }
            }
        }
        s => out.push_str(&format!("{pad}{}\n", scalar(s))),
    }
    out
}

/// A REQUEST file: the insurer (or nobody) reads p-1 at NOW; the consent service
/// answers the status list.
fn request_file(dir: &Path, token: Option<&str>) -> PathBuf {
    let mut headers = json!({"x-request-id": "cli-replay-0001"});
    if let Some(t) = token {
        headers["authorization"] = json!(format!("Bearer {t}"));
    }
    let list = mint::status_list_token(
        &[0u8; 16],
        2,
        "https://consent.example.com/statuslists/1",
        mint::DEV_KEY_PEM,
        mint::DEV_KID,
        T0,
        3600,
    )
    .unwrap();
    let exchange = json!({
        "request": {"method": "GET", "path": "/patients/p-1", "headers": headers},
        "upstream": {
            "status": 200,
            "headers": {"content-type": "application/json", "x-powered-by": "axum"},
            "body": String::from_utf8(stored_record("p-1")).unwrap()
        },
        "callouts": {
            "consent.example.com/statuslists/1": {
                "status": 200,
                "headers": {"content-type": "application/statuslist+jwt"},
                "body": list
            }
        },
        "now": NOW
    });
    let name = if token.is_some() {
        "insurer.json"
    } else {
        "nobody.json"
    };
    write(dir, name, &exchange.to_string())
}

fn insurer_token() -> String {
    mint::persona_token("insurer", crate::support::at(T0 - 10)).unwrap()
}

fn pairs(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .unwrap_or_else(|| panic!("headers are not a list: {v}"))
        .iter()
        .map(|p| {
            let p = p.as_array().unwrap_or_else(|| panic!("not a pair: {p}"));
            assert_eq!(p.len(), 2, "not a [name, value] pair: {p:?}");
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn replay_prints_both_sides_and_exits_0_for_a_refusal_too() {
    let dir = tempfile::tempdir().unwrap();
    let env = dev_env_arg();
    let token = insurer_token();
    let file = request_file(dir.path(), Some(&token));
    let out = consentry(&["replay", "policies/example.json", arg(&file), "--env", &env]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let r: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["callouts_made", "client", "logs", "upstream_request"]
    );
    assert_eq!(r["client"]["status"], 200);
    let client_headers = pairs(&r["client"]["headers"]);
    assert!(client_headers.contains(&("content-type".into(), "application/json".into())));
    assert!(!client_headers.iter().any(|(n, _)| n == "x-powered-by"));
    let body: Value = serde_json::from_str(r["client"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["identity"]["name"]["family"], "Whitcombe");
    assert!(body.get("clinical").is_none());
    let up = &r["upstream_request"];
    assert_eq!(
        (up["method"].as_str(), up["path"].as_str()),
        (Some("GET"), Some("/patients/p-1"))
    );
    let up_headers = pairs(&up["headers"]);
    assert!(up_headers.contains(&("x-consent-id".into(), "consent-insurer-acme-p-1".into())));
    assert!(!up_headers.iter().any(|(n, _)| n == "authorization"));
    assert!(
        r["callouts_made"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["authority"] == "consent.example.com" && c["path"] == "/statuslists/1"),
        "{}",
        r["callouts_made"]
    );
    let logs = r["logs"].as_array().unwrap();
    assert!(
        logs.iter().any(|l| l["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("consentry-audit ")),
        "the audit record is among the logs"
    );
    assert!(!stdout(&out).contains(&token), "the token is not echoed");

    // A refusal is a valid outcome: exit 0, the upstream never asked.
    let file = request_file(dir.path(), None);
    let out = consentry(&["replay", "policies/example.json", arg(&file), "--env", &env]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let r: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(r["client"]["status"], 401);
    assert_eq!(r["upstream_request"], Value::Null);
    let problem: Value = serde_json::from_str(r["client"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(problem["code"], "token_missing");
    assert_eq!(problem["request_id"], "cli-replay-0001");
}

#[test]
fn replay_delivers_trailers_after_the_body_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let env = dev_env_arg();
    let list = mint::status_list_token(
        &[0u8; 16],
        2,
        "https://consent.example.com/statuslists/1",
        mint::DEV_KEY_PEM,
        mint::DEV_KID,
        T0,
        3600,
    )
    .unwrap();
    // The claims search, its body in two pieces and ended by trailers (no empty
    // end-of-stream callback): the plugin minimises it when the trailers come,
    // and the upstream gets no trailer nobody allowed. The upstream's own
    // trailers do not reach the client either.
    let exchange = json!({
        "request": {
            "method": "POST", "path": "/echo?from=2026-01",
            "headers": {
                "authorization": format!("Bearer {}", insurer_token()),
                "content-type": "application/json"
            },
            "chunks": ["{\"claim_id\":\"C-1\",", "\"diagnosis\":\"E11\"}"],
            "trailers": {"x-checksum": "c0ffee"}
        },
        "upstream": {
            "headers": {"content-type": "application/json"},
            "body": {"method": "POST", "body": {"claim_id": "C-1"}},
            "trailers": {"x-backend-trace": "db-7"}
        },
        "callouts": {
            "consent.example.com/statuslists/1": {
                "headers": {"content-type": "application/statuslist+jwt"},
                "body": list
            }
        },
        "now": NOW
    });
    let file = write(dir.path(), "trailers.json", &exchange.to_string());
    let out = consentry(&["replay", "policies/example.json", arg(&file), "--env", &env]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let r: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let up = &r["upstream_request"];
    assert_eq!(up["body"], r#"{"claim_id":"C-1"}"#, "{r:#}");
    assert!(up.get("trailers").is_none(), "{up:#}");
    assert_eq!(r["client"]["status"], 200, "{r:#}");
    assert!(r["client"].get("trailers").is_none(), "{r:#}");
    assert!(!stdout(&out).contains("db-7") && !stdout(&out).contains("c0ffee"));
}

#[test]
fn explain_gives_the_decision_rule_reason_and_field_plan() {
    let dir = tempfile::tempdir().unwrap();
    let env = dev_env_arg();
    let file = request_file(dir.path(), Some(&insurer_token()));
    let out = consentry(&[
        "explain",
        "policies/example.json",
        arg(&file),
        "--json",
        "--env",
        &env,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let e: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(e["decision"], "allow");
    assert_eq!(e["status"], 200);
    assert_eq!(e["code"], "ok");
    assert_eq!(e["reason"], "allowed");
    assert_eq!(e["route"], "patient-record");
    assert_eq!(e["rule"], "insurer-claims");
    assert_eq!(e["purpose"], "claims");
    assert_eq!(e["released"], json!(["identity", "billing"]));
    let plan: Vec<(String, String)> = e["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
        .collect();
    for (field, action) in [
        ("$.identity.name", "release"),
        ("$.identity.national_id", "remove"),
        ("$.contact.phone", "mask"),
        ("$.clinical", "remove"),
        ("$.billing.policy_number", "release"),
    ] {
        assert!(
            plan.contains(&(field.into(), action.into())),
            "{field} {action} not in {plan:?}"
        );
    }
    assert_eq!(e["unclassified"], "remove");

    let text = consentry(&[
        "explain",
        "policies/example.json",
        arg(&file),
        "--env",
        &env,
    ]);
    assert_eq!(text.status.code(), Some(0), "{}", shown(&text));
    let t = stdout(&text);
    for needle in [
        "decision   allow (status 200, code ok)",
        "reason     allowed",
        "rule       insurer-claims",
        "field plan",
        "$.identity.national_id",
    ] {
        assert!(t.contains(needle), "{needle} missing from:\n{t}");
    }

    // A refusal is explained too.
    let stranger = mint::persona_token("stranger", crate::support::at(T0 - 10)).unwrap();
    let file = request_file(dir.path(), Some(&stranger));
    let out = consentry(&[
        "explain",
        "policies/example.json",
        arg(&file),
        "--json",
        "--env",
        &env,
    ]);
    let e: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        (
            e["decision"].as_str(),
            e["code"].as_str(),
            e["reason"].as_str()
        ),
        (
            Some("deny"),
            Some("access_denied"),
            Some("purpose_not_consented")
        ),
        "{e}"
    );
}

#[test]
fn mint_makes_tokens_the_plugin_accepts() {
    let out = consentry(&["mint", "--persona", "insurer", "--now", NOW]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let token = stdout(&out).trim().to_owned();
    assert_eq!(token.split('.').count(), 3);
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    let ok = proxy.send(
        Request::get("/patients/p-1").bearer(&token),
        upstream_record("p-1"),
    );
    assert_eq!(ok.client.status, 200, "{:#?}", ok.trace);
    // Claims given on the command line are what the plugin decides on.
    let out = consentry(&[
        "mint",
        "--persona",
        "insurer",
        "--claim",
        "sub=p-2",
        "--now",
        NOW,
    ]);
    let other = stdout(&out).trim().to_owned();
    let refused = proxy.send(
        Request::get("/patients/p-1").bearer(&other),
        upstream_record("p-1"),
    );
    assert_eq!(refused.client.status, 403);
    // The lifetime given is the token's: past it the plugin refuses it.
    let out = consentry(&[
        "mint",
        "--persona",
        "insurer",
        "--ttl",
        "60",
        "--now",
        "2026-11-27T11:55:00Z",
    ]);
    let short = stdout(&out).trim().to_owned();
    let expired = proxy.send(
        Request::get("/patients/p-1").bearer(&short),
        upstream_record("p-1"),
    );
    assert_eq!(expired.client.status, 401);

    // The Ed25519 development key, for an issuer that allows EdDSA.
    let out = consentry(&[
        "mint",
        "--key",
        "examples/keys/issuer-ed25519.pem",
        "--kid",
        mint::ED25519_KID,
        "--persona",
        "insurer",
        "--now",
        NOW,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
    let ed = stdout(&out).trim().to_owned();
    let ed_jwks: Value = serde_json::from_str(mint::ED25519_JWKS).unwrap();
    let config = example_policy(|p| {
        p["issuers"][0]["algorithms"] = json!(["ES256", "EdDSA"]);
        p["issuers"][0]["keys"]["inline"]["keys"]
            .as_array_mut()
            .unwrap()
            .push(ed_jwks["keys"][0].clone());
    });
    let (mut proxy, _service) = start_at(config, T0);
    let ok = proxy.send(
        Request::get("/patients/p-1").bearer(&ed),
        upstream_record("p-1"),
    );
    assert_eq!(ok.client.status, 200, "{:#?}", ok.trace);

    // An unknown persona is an error that lists the known ones.
    let out = consentry(&["mint", "--persona", "nobody"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("insurer"), "{}", shown(&out));
}

/// The example issuer publishes status lists, so its consent tokens reference one and
/// a replay must answer the plugin's call for it: `mint --status-list` makes that
/// answer, with the statuses given.
#[test]
fn a_minted_status_list_answers_the_replays_call_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let env = dev_env_arg();
    let minted = |args: &[&str]| {
        let out = consentry(args);
        assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
        stdout(&out).trim().to_owned()
    };
    let token = minted(&["mint", "--persona", "insurer", "--now", NOW]);
    for (statuses, expected) in [
        (&[][..], (200, None)),
        (&["--status", "0=1"][..], (403, Some("consent_revoked"))),
        (&["--status", "0=2"][..], (403, Some("consent_suspended"))),
    ] {
        let mut args = vec!["mint", "--status-list", "1", "--now", NOW];
        args.extend_from_slice(statuses);
        let list = minted(&args);
        let file = request_file(dir.path(), Some(&token));
        let mut exchange: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        exchange["callouts"]["consent.example.com/statuslists/1"]["body"] = json!(list);
        std::fs::write(&file, exchange.to_string()).unwrap();
        let out = consentry(&["replay", "policies/example.json", arg(&file), "--env", &env]);
        assert_eq!(out.status.code(), Some(0), "{}", shown(&out));
        let r: Value = serde_json::from_str(&stdout(&out)).unwrap();
        let body: Value = serde_json::from_str(r["client"]["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            (r["client"]["status"].as_u64(), body["code"].as_str()),
            (Some(expected.0), expected.1),
            "{statuses:?}: {}",
            r["client"]
        );
    }
}
