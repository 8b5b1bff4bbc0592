//! A case's expectation, and how a run is checked against it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde::Deserialize;
use serde_json::Value;

use super::diff::{body_diff, show};
use super::jsonpath::{JsonPath, same_value};
use crate::message::HeaderList;
use crate::replay::Replay;

/// What the client and the upstream must have seen.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The status the client receives.
    pub status: u16,
    /// The response is a masked problem (`application/problem+json`) with this `code`.
    #[serde(default)]
    pub problem: Option<String>,
    /// Response headers with exactly these values (names in any case).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Response headers that must not be there.
    #[serde(default)]
    pub headers_absent: Vec<String>,
    /// The body: a string is the exact text; anything else is a JSON value the body
    /// must equal (member order and number spelling aside).
    #[serde(default)]
    pub body: Option<Value>,
    /// A golden file (relative to the test file) holding the exact body and one final
    /// newline; `consentry test --update` writes it.
    #[serde(default)]
    pub body_file: Option<String>,
    /// Members of the JSON body with exactly these values (every match of a path with
    /// `[*]` or `.*`, and at least one).
    #[serde(default)]
    pub json: BTreeMap<String, Value>,
    /// Members of the JSON body that must be there.
    #[serde(default)]
    pub present: Vec<String>,
    /// Members of the JSON body that must not be there.
    #[serde(default)]
    pub absent: Vec<String>,
    /// What the upstream received.
    #[serde(default)]
    pub upstream: Option<UpstreamExpect>,
    /// Members of the stream's audit record with these values (`decision`,
    /// `outcome`, `code`, `reason`, `rule`, `route`, `purpose`, ...).
    #[serde(default)]
    pub audit: BTreeMap<String, Value>,
    /// How the client's response broke off, when it must: `reset`, `stalled` or
    /// `length_mismatch`. Without it, any of these fails the case.
    #[serde(default)]
    pub fault: Option<String>,
}

/// What the upstream must have received.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamExpect {
    /// Whether the request reached the upstream at all (default: true when anything
    /// else is expected of it).
    #[serde(default)]
    pub called: Option<bool>,
    #[serde(default)]
    pub method: Option<String>,
    /// The path with its query, as forwarded.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub headers_absent: Vec<String>,
    /// As the client's `body`: a string is exact text, anything else a JSON value.
    #[serde(default)]
    pub body: Option<Value>,
}

/// One unmet expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    /// A diff or other lines that explain it.
    pub detail: Option<String>,
}

impl Failure {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            detail: None,
        }
    }
}

/// A golden file to write (`--update`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldenUpdate {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// The result of checking one run.
#[derive(Debug, Default)]
pub struct Checked {
    pub failures: Vec<Failure>,
    /// Set under `--update` when the golden file differs from the body.
    pub update: Option<GoldenUpdate>,
}

const FAULTS: [&str; 3] = ["reset", "stalled", "length_mismatch"];

impl Expect {
    /// Checks what cannot be checked by types: the paths and the fault's name.
    pub fn validate(&self) -> Result<()> {
        for path in self.json.keys().chain(&self.present).chain(&self.absent) {
            JsonPath::parse(path)?;
        }
        if let Some(f) = &self.fault
            && !FAULTS.contains(&f.as_str())
        {
            bail!("fault: '{f}' is not one of {}", FAULTS.join(", "));
        }
        if self.body.is_some() && self.body_file.is_some() {
            bail!("give body or body_file, not both");
        }
        Ok(())
    }

    /// Checks a run. `dir` is the test file's directory (for `body_file`); with
    /// `update`, a differing golden file is returned to be written rather than failed.
    pub fn check(&self, run: &Replay, dir: &Path, update: bool) -> Checked {
        let mut out = Checked::default();
        let f = &mut out.failures;
        let client = &run.client;
        if let Some(trap) = &run.trap {
            f.push(Failure::new(format!("the plugin trapped: {trap}")));
        }
        if client.status != self.status {
            let code = problem_code(&client.body)
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            f.push(Failure::new(format!(
                "status: expected {}, got {}{code}",
                self.status, client.status
            )));
        }
        let fault = client.fault.as_ref().map(fault_name);
        if fault != self.fault.as_deref() {
            f.push(Failure::new(format!(
                "fault: expected {}, got {}",
                self.fault.as_deref().unwrap_or("none"),
                client
                    .fault
                    .as_ref()
                    .map_or("none".to_owned(), |x| format!("{x:?}"))
            )));
        }
        if let Some(code) = &self.problem {
            f.extend(check_problem(&client.headers, &client.body, code));
        }
        check_headers(
            f,
            "header",
            &client.headers,
            &self.headers,
            &self.headers_absent,
        );
        if let Some(want) = &self.body {
            f.extend(check_body("body", want, &client.body));
        }
        if let Some(file) = &self.body_file {
            let path = dir.join(file);
            let mut actual = client.body.clone();
            actual.push(b'\n');
            let golden = std::fs::read(&path);
            if matches!(&golden, Ok(g) if *g == actual) {
                // As expected.
            } else if update {
                out.update = Some(GoldenUpdate {
                    path,
                    bytes: actual,
                });
            } else {
                out.failures.push(match golden {
                    Ok(golden) => Failure {
                        message: format!("body differs from {file}"),
                        detail: Some(body_diff(
                            strip_newline(&golden),
                            &client.body,
                            file,
                            "received",
                        )),
                    },
                    Err(e) => Failure::new(format!("{file}: {e} (run with --update to write it)")),
                });
            }
        }
        let f = &mut out.failures;
        if !self.json.is_empty() || !self.present.is_empty() || !self.absent.is_empty() {
            match serde_json::from_slice::<Value>(&client.body) {
                Ok(doc) => f.extend(self.check_members(&doc)),
                Err(e) => f.push(Failure::new(format!(
                    "the body is not JSON ({e}), so no member can be checked"
                ))),
            }
        }
        if let Some(up) = &self.upstream {
            f.extend(up.check(run));
        }
        if !self.audit.is_empty() {
            f.extend(check_audit(&self.audit, run));
        }
        out
    }

    fn check_members(&self, doc: &Value) -> Vec<Failure> {
        let mut f = Vec::new();
        let find = |p: &str| JsonPath::parse(p).map(|p| p.find(doc)).unwrap_or_default();
        for (path, want) in &self.json {
            let found = find(path);
            if found.is_empty() {
                f.push(Failure::new(format!(
                    "{path}: expected {}, missing",
                    show(want)
                )));
            } else if let Some(other) = found.iter().find(|v| !same_value(v, want)) {
                f.push(Failure::new(format!(
                    "{path}: expected {}, got {}",
                    show(want),
                    show(other)
                )));
            }
        }
        for path in &self.present {
            if find(path).is_empty() {
                f.push(Failure::new(format!("{path}: expected present, missing")));
            }
        }
        for path in &self.absent {
            if let Some(v) = find(path).first() {
                f.push(Failure::new(format!(
                    "{path}: expected absent, found {}",
                    show(v)
                )));
            }
        }
        f
    }
}

impl UpstreamExpect {
    fn check(&self, run: &Replay) -> Vec<Failure> {
        let mut f = Vec::new();
        let wants_more = self.method.is_some()
            || self.path.is_some()
            || self.body.is_some()
            || !self.headers.is_empty()
            || !self.headers_absent.is_empty();
        let called = self.called.unwrap_or(wants_more);
        let Some(up) = &run.upstream_request else {
            if called {
                f.push(Failure::new(
                    "upstream: expected the request to reach it, but it never left the proxy",
                ));
            }
            return f;
        };
        if !called {
            f.push(Failure::new(format!(
                "upstream: expected no request, but it received {} {}",
                up.method, up.path
            )));
            return f;
        }
        if let Some(m) = &self.method
            && *m != up.method
        {
            f.push(Failure::new(format!(
                "upstream method: expected {m}, got {}",
                up.method
            )));
        }
        if let Some(p) = &self.path
            && *p != up.path
        {
            f.push(Failure::new(format!(
                "upstream path: expected {p}, got {}",
                up.path
            )));
        }
        check_headers(
            &mut f,
            "upstream header",
            &up.headers,
            &self.headers,
            &self.headers_absent,
        );
        if let Some(want) = &self.body {
            f.extend(check_body("upstream body", want, &up.body));
        }
        f
    }
}

fn fault_name(fault: &crate::message::ClientFault) -> &'static str {
    match fault {
        crate::message::ClientFault::Stalled { .. } => "stalled",
        crate::message::ClientFault::LengthMismatch { .. } => "length_mismatch",
        crate::message::ClientFault::Reset { .. } => "reset",
    }
}

fn strip_newline(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\n").unwrap_or(b)
}

fn header(headers: &HeaderList, name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

fn check_headers(
    f: &mut Vec<Failure>,
    what: &str,
    seen: &HeaderList,
    want: &BTreeMap<String, String>,
    absent: &[String],
) {
    for (name, value) in want {
        match header(seen, name) {
            Some(v) if v == *value => {}
            Some(v) => f.push(Failure::new(format!(
                "{what} {name}: expected {value:?}, got {v:?}"
            ))),
            None => f.push(Failure::new(format!(
                "{what} {name}: expected {value:?}, missing"
            ))),
        }
    }
    for name in absent {
        if let Some(v) = header(seen, name) {
            f.push(Failure::new(format!(
                "{what} {name}: expected absent, got {v:?}"
            )));
        }
    }
}

/// A string is the exact text; any other value is compared as JSON.
fn check_body(what: &str, want: &Value, got: &[u8]) -> Option<Failure> {
    let (equal, expected) = match want {
        Value::String(text) => (got == text.as_bytes(), text.as_bytes().to_vec()),
        value => (
            serde_json::from_slice::<Value>(got).is_ok_and(|v| same_value(&v, value)),
            serde_json::to_vec(value).unwrap_or_default(),
        ),
    };
    (!equal).then(|| Failure {
        message: format!("{what} differs"),
        detail: Some(body_diff(&expected, got, "expected", "received")),
    })
}

fn problem_code(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("code")?.as_str().map(str::to_owned)
}

fn check_problem(headers: &HeaderList, body: &[u8], code: &str) -> Vec<Failure> {
    let mut f = Vec::new();
    let ct = header(headers, "content-type").unwrap_or_default();
    if !ct.starts_with("application/problem+json") {
        f.push(Failure::new(format!(
            "problem: expected content-type application/problem+json, got {ct:?}"
        )));
    }
    match problem_code(body) {
        Some(c) if c == code => {}
        Some(c) => f.push(Failure::new(format!(
            "problem code: expected {code}, got {c}"
        ))),
        None => f.push(Failure::new(format!(
            "problem code: expected {code}, but the body has no code: {}",
            show(&Value::String(String::from_utf8_lossy(body).into_owned()))
        ))),
    }
    f
}

/// The stream's decision record, from the logs.
pub fn audit_record(run: &Replay) -> Option<Value> {
    run.logs.iter().find_map(|l| {
        let text = l.message.strip_prefix(consentry_core::audit::LOG_MARKER)?;
        let v: Value = serde_json::from_str(text).ok()?;
        (v["kind"] == "decision").then_some(v)
    })
}

fn check_audit(want: &BTreeMap<String, Value>, run: &Replay) -> Vec<Failure> {
    let Some(record) = audit_record(run) else {
        return vec![Failure::new("audit: no decision record was written")];
    };
    want.iter()
        .filter_map(|(member, value)| match record.get(member) {
            Some(got) if same_value(got, value) => None,
            Some(got) => Some(Failure::new(format!(
                "audit {member}: expected {}, got {}",
                show(value),
                show(got)
            ))),
            None => Some(Failure::new(format!(
                "audit {member}: the record has no such member"
            ))),
        })
        .collect()
}
