//! The open-banking scenario: `policies/open-banking.json` in front of the example
//! bank (`examples/data/accounts.json`), read by the open-banking personas of
//! `examples/personas.json`, whose consents are RFC 9396 `authorization_details`.
//!
//! - The golden views in `examples/views/open-banking/`, byte for byte. A file is
//!   named `<persona>.<path segments joined by dots>.json`
//!   (`aggregator.accounts.acc-1001.transactions.json` is the aggregator's
//!   `GET /accounts/acc-1001/transactions`); update them on purpose with
//!   `CONSENTRY_UPDATE_VIEWS=1 cargo test -p consentry-host --test all open_banking`.
//! - What each view must never show, checked against the stored data, so an update
//!   cannot bless a leak.
//! - The decisions: an account the consent does not list, an action its entry for that
//!   account does not grant, a purpose, an audience or a consent type it does not have.

use std::collections::BTreeSet;
use std::path::PathBuf;

use consentry_core::problem::Code;
use consentry_example_service::Bank;
use consentry_host::{Outcome, Request, Response, mint};
use serde_json::{Value, json};

use crate::support::{
    T0, assert_problem, at, audit_record, dev_env_arg, repo_file, start_at, token_with, verdict,
};
use crate::views::diff;

const UPDATE: &str =
    "CONSENTRY_UPDATE_VIEWS=1 cargo test -p consentry-host --test all open_banking";

/// Every golden view: persona, path, status.
const VIEWS: [(&str, &str, u16); 7] = [
    ("tpp", "/accounts/acc-1001", 200),
    ("tpp", "/accounts/acc-1001/transactions", 200),
    ("aggregator", "/accounts/acc-1001", 200),
    ("aggregator", "/accounts/acc-1001/transactions", 200),
    ("aggregator", "/accounts/acc-1002/balances", 200),
    ("savings-app", "/accounts/acc-1002/balances", 200),
    ("savings-app", "/accounts/acc-1001/balances", 403),
];

fn policy() -> String {
    String::from_utf8(repo_file("policies/open-banking.json")).unwrap()
}

fn bank() -> Bank {
    Bank::builtin().unwrap()
}

/// The example bank's answer to `GET path`: the bytes the service sends.
fn upstream(path: &str) -> Response {
    let body = bank()
        .resource(path)
        .unwrap_or_else(|| panic!("the bank serves no {path}"));
    Response::json(200, body)
}

/// `<persona>.<path segments>` (the golden file's name without `.json`).
fn stem(persona: &str, path: &str) -> String {
    format!("{persona}{}", path.replace('/', "."))
}

fn views_dir() -> PathBuf {
    consentry_host::plugin::workspace_root().join("examples/views/open-banking")
}

/// `persona` sends `request` (its token added) through the open-banking policy at T0;
/// the bank answers `path` as the example service does.
fn exchange(persona: &str, request: Request, path: &str) -> Outcome {
    let (mut proxy, _service) = start_at(policy(), T0);
    let token = mint::persona_token(persona, at(T0 - 10)).unwrap();
    proxy.send(request.bearer(&token), upstream(path))
}

/// The persona's `GET path`, with the request id its golden file quotes.
fn see(persona: &str, path: &str) -> Outcome {
    let request =
        Request::get(path).header("x-request-id", format!("view-{}", stem(persona, path)));
    exchange(persona, request, path)
}

fn body(persona: &str, path: &str) -> Vec<u8> {
    let out = see(persona, path);
    assert_eq!(out.client.fault, None, "{persona} {path}");
    out.client.body
}

#[test]
fn each_open_banking_view_matches_its_golden_file_byte_for_byte() {
    let update = std::env::var_os("CONSENTRY_UPDATE_VIEWS").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    for (persona, path, status) in VIEWS {
        let out = see(persona, path);
        assert_eq!(
            out.client.status, status,
            "{persona} {path}: {:#?}",
            out.trace
        );
        let mut actual = out.client.body.clone();
        actual.push(b'\n');
        let file = views_dir().join(format!("{}.json", stem(persona, path)));
        if update {
            std::fs::write(&file, &actual).unwrap();
            eprintln!("updated {}", file.display());
            continue;
        }
        match std::fs::read(&file) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => failures.push(format!(
                "{} differs from what the {persona} receives:\n{}",
                file.display(),
                diff(&expected, &actual)
            )),
            Err(e) => failures.push(format!("{}: {e}", file.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nIf the change is intended, review it and update the golden files with\n  {UPDATE}",
        failures.join("\n")
    );

    // Every file there is a view this suite (and the Envoy suite) checks.
    let mut listed: Vec<String> = VIEWS
        .iter()
        .map(|(p, path, _)| format!("{}.json", stem(p, path)))
        .collect();
    listed.sort();
    let mut present: Vec<String> = std::fs::read_dir(views_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    present.sort();
    assert_eq!(present, listed);
}

/// Every string and number of a JSON document, as text (numbers as written).
fn leaves(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => {
            out.insert(s.clone());
        }
        Value::Number(n) => {
            out.insert(n.to_string());
        }
        Value::Array(a) => a.iter().for_each(|x| leaves(x, out)),
        Value::Object(o) => o.values().for_each(|x| leaves(x, out)),
        _ => {}
    }
}

/// The values at `pointers` (JSON pointers, `*` for every array element) of `doc`.
fn values_at(doc: &Value, pointers: &[&str]) -> BTreeSet<String> {
    fn walk(v: &Value, steps: &[&str], out: &mut BTreeSet<String>) {
        match steps.split_first() {
            None => leaves(v, out),
            Some((&"*", rest)) => {
                for item in v.as_array().into_iter().flatten() {
                    walk(item, rest, out);
                }
            }
            Some((step, rest)) => {
                if let Some(next) = v.get(step) {
                    walk(next, rest, out);
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    for p in pointers {
        let steps: Vec<&str> = p.trim_start_matches('/').split('/').collect();
        walk(doc, &steps, &mut out);
    }
    assert!(!out.is_empty(), "nothing at {pointers:?}");
    out
}

/// Asserts that no value of `secrets` is a value of `view`, nor (when six characters
/// or longer) anywhere in its text.
fn never_shows(name: &str, view: &[u8], secrets: &BTreeSet<String>) {
    let doc: Value = serde_json::from_slice(view).unwrap();
    let mut shown = BTreeSet::new();
    leaves(&doc, &mut shown);
    let leaked: Vec<&String> = secrets.intersection(&shown).collect();
    assert!(leaked.is_empty(), "{name} shows {leaked:?}");
    let text = String::from_utf8_lossy(view);
    for s in secrets.iter().filter(|s| s.len() >= 6) {
        assert!(!text.contains(s.as_str()), "{name} contains {s:?}");
    }
}

fn stored(path: &str) -> Value {
    serde_json::from_slice(&bank().resource(path).unwrap()).unwrap()
}

#[test]
fn the_tpp_sees_its_one_account_and_nothing_of_the_holder_but_her_name() {
    let account = body("tpp", "/accounts/acc-1001");
    let owner = ["/owner/customer_id", "/owner/date_of_birth", "/owner/email"];
    let mut secrets = values_at(&stored("/accounts/acc-1001"), &owner);
    secrets.extend(values_at(
        &stored("/accounts/acc-1001"),
        &["/owner/phone", "/owner/address"],
    ));
    never_shows("the TPP's account", &account, &secrets);
    let doc: Value = serde_json::from_slice(&account).unwrap();
    assert_eq!(doc["owner"], json!({"name": "Alice Pemberton"}));
    assert_eq!(doc["identification"]["iban"], "GB52EXMP04007531926819");

    // Purpose account_information releases every transaction field, free text included:
    // the body is the bank's, byte for byte.
    let transactions = body("tpp", "/accounts/acc-1001/transactions");
    assert_eq!(
        transactions,
        bank().transactions("acc-1001").unwrap().to_vec()
    );
}

#[test]
fn the_aggregator_sees_amounts_and_categories_but_no_one_and_no_free_text() {
    let account = body("aggregator", "/accounts/acc-1001");
    let stored_account = stored("/accounts/acc-1001");
    never_shows(
        "the aggregator's account",
        &account,
        &values_at(
            &stored_account,
            &[
                "/owner",
                "/identification/iban",
                "/identification/sort_code",
                "/identification/account_number",
                "/opened_on",
            ],
        ),
    );
    let doc: Value = serde_json::from_slice(&account).unwrap();
    assert_eq!(doc["identification"]["iban"], "******************6819");
    assert_eq!(doc["identification"]["account_number"], "****6819");
    assert_eq!(doc["opened_on"], "2014");

    let view = body("aggregator", "/accounts/acc-1001/transactions");
    let stored_tx = stored("/accounts/acc-1001/transactions");
    let secret = [
        "/transactions/*/reference",
        "/transactions/*/counterparty",
        "/transactions/*/booking_date",
        "/transactions/*/value_date",
        "/transactions/*/balance_after",
    ];
    never_shows(
        "the aggregator's transactions",
        &view,
        &values_at(&stored_tx, &secret),
    );
    let text = String::from_utf8_lossy(&view);
    for hint in [
        "Physio",
        "Aidan",
        "Mia",
        "PEMBERTON",
        "Pemberton",
        "Grocers",
    ] {
        assert!(!text.contains(hint), "{hint}: {text}");
    }
    // Amounts keep the bank's text; dates go to the month, running balances to bands.
    assert!(text.contains("\"amount\": -950.00"), "{text}");
    let doc: Value = serde_json::from_slice(&view).unwrap();
    let tx = doc["transactions"].as_array().unwrap();
    assert_eq!(tx.len(), 10);
    assert_eq!(tx[0]["booking_date"], "2026-11");
    assert_eq!(tx[0]["balance_after"], "3700-3800");
    // Payees are pseudonyms, stable per payee: both Greenleaf Grocers payments share one.
    let names: Vec<&str> = tx
        .iter()
        .map(|t| t["counterparty"]["name"].as_str().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with("ps_dev-1_")),
        "{names:?}"
    );
    assert_eq!(names[2], names[7]);
    assert_eq!(names.iter().collect::<BTreeSet<_>>().len(), 9);

    // Its balances entry covers the savings account, whose balances it gets whole.
    assert_eq!(
        body("aggregator", "/accounts/acc-1002/balances"),
        bank().balances("acc-1002").unwrap().to_vec()
    );
}

#[test]
fn a_refusal_names_nothing_of_the_account() {
    let out = see("savings-app", "/accounts/acc-1001/balances");
    let problem = assert_problem(&out, Code::AccessDenied);
    assert_eq!(
        problem["request_id"],
        "view-savings-app.accounts.acc-1001.balances"
    );
    assert!(out.upstream_request.is_none());
    let stored_balances = stored("/accounts/acc-1001/balances");
    never_shows(
        "the savings app's refusal",
        &out.client.body,
        &values_at(&stored_balances, &["/balances"]),
    );
}

/// `(status, problem code, deciding rule)` of `persona`'s `GET path` (with this
/// purpose header, if any); asserts that only an allowed request reaches the bank.
fn decide(persona: &str, path: &str, purpose: Option<&str>) -> (u16, String, String) {
    let mut request = Request::get(path);
    if let Some(p) = purpose {
        request = request.header("x-consent-purpose", p);
    }
    // A path the bank does not serve is never forwarded; any answer will do.
    let answer = if bank().resource(path).is_some() {
        path
    } else {
        "/accounts/acc-1001"
    };
    let out = exchange(persona, request, answer);
    let (status, code) = verdict(&out);
    assert_eq!(
        out.upstream_request.is_some(),
        status == 200,
        "{persona} {path}"
    );
    let rule = audit_record(&out)["rule"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, code, rule)
}

#[test]
fn only_the_account_and_action_an_entry_grants_are_served() {
    let ok = |rule: &str| (200, String::new(), rule.to_owned());
    let denied = || (403, "access_denied".to_owned(), String::new());
    let cases = [
        (
            "tpp",
            "/accounts/acc-1001/balances",
            ok("account-information"),
        ),
        ("tpp", "/accounts/acc-1002", denied()),
        ("tpp", "/accounts/acc-2001/transactions", denied()),
        // An account id is matched whole, never by prefix or case.
        ("tpp", "/accounts/acc-100", denied()),
        ("tpp", "/accounts/ACC-1001", denied()),
        // The bank's list of every account has no route: no consent covers it.
        ("tpp", "/accounts", denied()),
        ("aggregator", "/accounts/acc-1002", ok("affordability")),
        // The union of its entries has read_balances, but not the entry for acc-1001.
        ("aggregator", "/accounts/acc-1001/balances", denied()),
        ("aggregator", "/accounts/acc-1002/transactions", denied()),
        ("aggregator", "/accounts/acc-2001", denied()),
        (
            "savings-app",
            "/accounts/acc-1002",
            ok("account-information"),
        ),
        ("savings-app", "/accounts/acc-1001", denied()),
        ("savings-app", "/accounts/acc-1001/transactions", denied()),
    ];
    for (persona, path, expected) in cases {
        assert_eq!(decide(persona, path, None), expected, "{persona} {path}");
    }

    // A purpose the policy serves but the consent does not hold.
    assert_eq!(
        decide("tpp", "/accounts/acc-1001", Some("affordability")),
        denied()
    );
    assert_eq!(
        decide("aggregator", "/accounts/acc-1002", Some("affordability")),
        ok("affordability")
    );
}

#[test]
fn a_consent_the_bank_cannot_read_is_refused() {
    let path = "/accounts/acc-1001";
    let send = |token: String| {
        let (mut proxy, _service) = start_at(policy(), T0);
        proxy.send(Request::get(path).bearer(&token), upstream(path))
    };
    let with_details = |details: Value| {
        token_with("tpp", T0 - 10, |c| {
            c.insert("authorization_details".into(), details);
        })
    };
    let entry = |accounts: Value| {
        json!([{"type": "account_information", "accounts": accounts,
                "actions": ["read_accounts"], "datatypes": ["account"],
                "purpose": "account_information"}])
    };

    // A hospital consent (another audience, plain claims).
    let hospital = mint::persona_token("patient", at(T0 - 10)).unwrap();
    assert_eq!(verdict(&send(hospital)), (401, "token_invalid".into()));
    // An entry of a type the issuer is not configured for.
    let payment = json!([{"type": "payment_initiation", "accounts": ["acc-1001"],
                          "actions": ["read_accounts"], "purpose": "account_information"}]);
    assert_eq!(
        verdict(&send(with_details(payment))),
        (401, "token_invalid".into())
    );
    // No authorization_details at all.
    let none = token_with("tpp", T0 - 10, |c| {
        c.remove("authorization_details");
    });
    assert_eq!(verdict(&send(none)), (401, "token_invalid".into()));
    // Accounts missing, or not a list: the condition cannot be evaluated, which never
    // grants.
    for accounts in [Value::Null, json!("acc-1001"), json!([])] {
        assert_eq!(
            verdict(&send(with_details(entry(accounts.clone())))),
            (403, "access_denied".into()),
            "{accounts}"
        );
    }
    assert_eq!(
        verdict(&send(with_details(entry(json!(["acc-2001", "acc-1001"]))))),
        (200, String::new())
    );
}

#[test]
fn consentry_check_accepts_the_open_banking_policy() {
    for file in ["policies/open-banking.json", "policies/open-banking.yaml"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_consentry"))
            .args(["check", file, "--env", &dev_env_arg()])
            .current_dir(consentry_host::plugin::workspace_root())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{file}: {stdout}");
        assert!(stdout.starts_with(&format!("{file}: ok\n")), "{stdout}");
    }
}
