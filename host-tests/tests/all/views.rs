//! The golden views: what each persona of `examples/personas.json` receives for the
//! example data through the example policy, kept in `examples/views/` and compared
//! byte for byte. A change of the plugin or the policy that changes what anyone
//! sees fails here, with a diff, until the files are updated on purpose:
//!
//! ```sh
//! CONSENTRY_UPDATE_VIEWS=1 cargo test -p consentry-host --test all views
//! ```
//!
//! Besides the exact bytes, each view is checked against the source record for what
//! its persona must never see (the insurer no clinical value, the research lab no
//! name or national id...), so an updated golden file cannot bless a leak.

use std::collections::BTreeSet;
use std::path::PathBuf;

use consentry_host::{Outcome, Request, mint};
use serde_json::Value;

use crate::support::{T0, at, example_policy, start_at, stored_record, upstream_record};

/// The command that rewrites the golden files, quoted when they differ.
const UPDATE: &str = "CONSENTRY_UPDATE_VIEWS=1 cargo test -p consentry-host --test all views";

struct View {
    persona: &'static str,
    patient: &'static str,
    /// The golden file, under `examples/views/`.
    file: &'static str,
    status: u16,
}

const VIEWS: [View; 5] = [
    View {
        persona: "insurer",
        patient: "p-1",
        file: "insurer-p-1.json",
        status: 200,
    },
    View {
        persona: "research-lab",
        patient: "p-2",
        file: "research-lab-p-2.json",
        status: 200,
    },
    View {
        persona: "patient",
        patient: "p-1",
        file: "patient-p-1.json",
        status: 200,
    },
    View {
        persona: "guardian",
        patient: "p-5",
        file: "guardian-p-5.json",
        status: 200,
    },
    View {
        persona: "stranger",
        patient: "p-1",
        file: "stranger-p-1.json",
        status: 403,
    },
];

fn views_dir() -> PathBuf {
    consentry_host::plugin::workspace_root()
        .join("examples")
        .join("views")
}

/// The persona reads the patient's record through the example policy, at T0, with a
/// fixed request id (so a refusal's body is stable too).
fn see(view: &View) -> Outcome {
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    let token = mint::persona_token(view.persona, at(T0 - 10)).unwrap();
    proxy.send(
        Request::get(&format!("/patients/{}", view.patient))
            .bearer(&token)
            .header(
                "x-request-id",
                format!("view-{}-{}", view.persona, view.patient),
            ),
        upstream_record(view.patient),
    )
}

/// Every string and number of a JSON document, as text.
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

/// The values under `paths` (top-level members, or `member.child`) of the patient's
/// stored record that appear nowhere else in it (a date shared by a clinical visit and
/// an invoice is not a clinical secret).
fn secrets_of(patient: &str, paths: &[&str]) -> BTreeSet<String> {
    let record: Value = serde_json::from_slice(&stored_record(patient)).unwrap();
    let mut secret = BTreeSet::new();
    let mut elsewhere = BTreeSet::new();
    for (k, v) in record.as_object().unwrap() {
        let children: Vec<(String, &Value)> = match v {
            Value::Object(inner) => inner
                .iter()
                .map(|(ik, iv)| (format!("{k}.{ik}"), iv))
                .collect(),
            other => vec![(k.clone(), other)],
        };
        for (here, value) in children {
            let hidden = paths.iter().any(|p| *p == k.as_str() || *p == here);
            leaves(value, if hidden { &mut secret } else { &mut elsewhere });
        }
    }
    secret.retain(|s| !elsewhere.contains(s));
    secret
}

/// Asserts that none of `secrets` is a value in `view` (its strings and numbers).
fn never_shows(name: &str, view: &[u8], secrets: &BTreeSet<String>) {
    assert!(!secrets.is_empty(), "{name}: nothing to look for");
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

/// A line diff of the two documents, pretty-printed.
pub(crate) fn diff(expected: &[u8], actual: &[u8]) -> String {
    let pretty = |b: &[u8]| match serde_json::from_slice::<Value>(b) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    };
    let (a, b) = (pretty(expected), pretty(actual));
    if a == b {
        return format!(
            "the bytes differ but the JSON values are equal (member order, number text or \
             whitespace changed)\n- {}\n+ {}",
            String::from_utf8_lossy(expected),
            String::from_utf8_lossy(actual)
        );
    }
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    // Longest common subsequence, then the edit script.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        }
    }
    out
}

#[test]
fn each_personas_view_matches_its_golden_file_byte_for_byte() {
    let update = std::env::var_os("CONSENTRY_UPDATE_VIEWS").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    for view in &VIEWS {
        let out = see(view);
        assert_eq!(
            out.client.status, view.status,
            "{}: {:#?}",
            view.file, out.trace
        );
        assert_eq!(out.client.fault, None, "{}", view.file);
        // The file is the body the client receives, plus one final newline.
        let mut actual = out.client.body.clone();
        actual.push(b'\n');
        let path = views_dir().join(view.file);
        if update {
            std::fs::create_dir_all(views_dir()).unwrap();
            std::fs::write(&path, &actual).unwrap();
            eprintln!("updated {}", path.display());
            continue;
        }
        match std::fs::read(&path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => failures.push(format!(
                "examples/views/{} differs from what the {} receives:\n{}",
                view.file,
                view.persona,
                diff(&expected, &actual)
            )),
            Err(e) => failures.push(format!("examples/views/{}: {e}", view.file)),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nIf the change is intended, review it and update the golden files with\n  {UPDATE}",
        failures.join("\n")
    );
}

#[test]
fn no_view_holds_a_value_its_persona_must_not_see() {
    let body = |i: usize| see(&VIEWS[i]).client.body;

    // The insurer: billing and identity, nothing clinical, no contact, no national id.
    let insurer = body(0);
    never_shows(
        "the insurer's view",
        &insurer,
        &secrets_of("p-1", &["clinical", "contact", "identity.national_id"]),
    );
    let text = String::from_utf8_lossy(&insurer);
    assert!(!text.contains("999 401 2284") && !text.contains("44054006"));

    // The research lab: clinical data, identity only pseudonymised, nothing else.
    let research = body(1);
    never_shows(
        "the research lab's view",
        &research,
        &secrets_of("p-2", &["identity", "contact", "billing", "guardians"]),
    );
    let doc: Value = serde_json::from_slice(&research).unwrap();
    assert_eq!(doc["identity"]["birth_date"], "1971");
    for field in ["mrn", "gender"] {
        let v = doc["identity"][field].as_str().unwrap_or_default();
        assert!(v.starts_with("ps_dev-1_"), "{field}: {v}");
    }

    // The patient sees their whole record, byte for byte as stored.
    assert_eq!(body(2), stored_record("p-1"));

    // The guardian sees the ward's whole record, and nothing of their own.
    let guardian = body(3);
    assert_eq!(guardian, stored_record("p-5"));
    let ward: Value = serde_json::from_slice(&guardian).unwrap();
    let mut ward_values = BTreeSet::new();
    leaves(&ward, &mut ward_values);
    let mut own = secrets_of("p-4", &["identity", "clinical", "billing"]);
    own.retain(|v| !ward_values.contains(v));
    never_shows("the guardian's view", &guardian, &own);

    // The stranger's refusal names nothing of the record.
    let stranger = body(4);
    never_shows(
        "the stranger's refusal",
        &stranger,
        &secrets_of("p-1", &["identity", "contact", "clinical", "billing"]),
    );
    let doc: Value = serde_json::from_slice(&stranger).unwrap();
    assert_eq!(doc["code"], "access_denied");
    assert_eq!(doc["request_id"], "view-stranger-p-1");
}
