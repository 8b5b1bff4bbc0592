//! `consentry explain`: why a request is allowed or refused, and what each field of
//! the response becomes. It replays the exchange through the real `.wasm` and reads
//! the plugin's own account: its debug line for the decision and its audit record.

use serde::Serialize;
use serde_json::Value;

use crate::replay::Replay;

/// What the plugin decided, as it explained it.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// `allow` or `deny`.
    pub decision: String,
    /// The HTTP status the client got.
    pub status: u16,
    /// The problem code, or `ok`.
    pub code: String,
    /// The plugin's internal reason (`allowed`, `no_rule_matched`, `token_expired`...).
    pub reason: String,
    pub route: Option<String>,
    pub rule: Option<String>,
    pub purpose: Option<String>,
    /// Domains released in clear.
    pub released: Vec<String>,
    /// Every classified field and its action (`release`, `remove`, `mask`...).
    pub plan: Vec<(String, String)>,
    /// What unclassified fields get.
    pub unclassified: Option<String>,
    /// What the redaction did, from the audit record: field, action, count.
    pub applied: Vec<(String, String, u64)>,
}

fn marked<'a>(replay: &'a Replay, marker: &str) -> Option<&'a str> {
    replay
        .logs
        .iter()
        .rev()
        .find_map(|l| l.message.strip_prefix(marker))
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Reads the explanation out of a replay.
pub fn from_replay(replay: &Replay) -> Explanation {
    let debug: Value = marked(replay, consentry_core::exchange::EXPLAIN_MARKER)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null);
    let audit: Value = marked(replay, consentry_core::audit::LOG_MARKER)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(Value::Null);
    let plan = debug["fields"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    Some((
                        p.get(0)?.as_str()?.to_owned(),
                        p.get(1)?.as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut applied = Vec::new();
    for r in audit["released"].as_array().into_iter().flatten() {
        if let (Some(f), Some(n)) = (r["field"].as_str(), r["count"].as_u64()) {
            applied.push((f.to_owned(), "release".to_owned(), n));
        }
    }
    for r in audit["redacted"].as_array().into_iter().flatten() {
        if let (Some(f), Some(a), Some(n)) = (
            r["field"].as_str(),
            r["action"].as_str(),
            r["count"].as_u64(),
        ) {
            applied.push((f.to_owned(), a.to_owned(), n));
        }
    }
    Explanation {
        decision: text(&audit, "decision")
            .or_else(|| text(&debug, "decision"))
            .unwrap_or_else(|| "unknown".into()),
        status: replay.client.status,
        code: text(&audit, "code").unwrap_or_else(|| "unknown".into()),
        reason: text(&audit, "reason")
            .or_else(|| text(&debug, "reason"))
            .unwrap_or_else(|| "unknown".into()),
        route: text(&audit, "route").or_else(|| text(&debug, "route")),
        rule: text(&audit, "rule").or_else(|| text(&debug, "rule")),
        purpose: text(&audit, "purpose").or_else(|| text(&debug, "purpose")),
        released: debug["released"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        plan,
        unclassified: text(&debug, "unclassified"),
        applied,
    }
}

impl Explanation {
    /// The explanation as a person reads it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "decision   {} (status {}, code {})\nreason     {}\nroute      {}\nrule       {}\npurpose    {}\n",
            self.decision,
            self.status,
            self.code,
            self.reason,
            opt(&self.route),
            opt(&self.rule),
            opt(&self.purpose)
        ));
        if !self.released.is_empty() {
            out.push_str(&format!("released   {}\n", self.released.join(", ")));
        }
        if !self.plan.is_empty() {
            out.push_str("\nfield plan\n");
            let width = self.plan.iter().map(|(f, _)| f.len()).max().unwrap_or(0);
            for (f, a) in &self.plan {
                out.push_str(&format!("  {f:width$}  {a}\n"));
            }
            if let Some(u) = &self.unclassified {
                out.push_str(&format!("  {:width$}  {u}\n", "(unclassified)"));
            }
        }
        if !self.applied.is_empty() {
            out.push_str("\nin this response\n");
            for (f, a, n) in &self.applied {
                out.push_str(&format!("  {f}: {a} x{n}\n"));
            }
        }
        out
    }
}
