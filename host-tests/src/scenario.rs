//! The parity suite's scenarios: REQUEST files with the configuration they run
//! under and what the client must observe. The same files run through the
//! harness and through a real Envoy, on both kinds of host ([`HostMode`]); both
//! hosts must meet the expectation and agree with each other on status, the
//! headers that matter, and the body.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow};
use serde::Deserialize;
use serde_json::Value;

use crate::message::HeaderList;
use crate::replay::{Exchange, config_as_json};

/// What the client must observe.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub status: u16,
    /// Headers that must be present with exactly these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers that must not reach the client.
    #[serde(default)]
    pub absent_headers: Vec<String>,
    /// The exact body text.
    #[serde(default)]
    pub body: Option<String>,
    /// The body is a problem+json with this `code` and the standard members.
    #[serde(default)]
    pub problem_code: Option<String>,
    /// Whether the request reached the upstream.
    #[serde(default)]
    pub upstream_called: Option<bool>,
    /// Headers the upstream must not receive.
    #[serde(default)]
    pub upstream_headers_absent: Vec<String>,
    /// Headers the upstream must receive with exactly these values.
    #[serde(default)]
    pub upstream_headers: BTreeMap<String, String>,
    /// The `:path` the upstream must receive.
    #[serde(default)]
    pub upstream_path: Option<String>,
    /// The exact body the upstream must receive.
    #[serde(default)]
    pub upstream_body: Option<String>,
    /// Members of the JSON body with exactly these values (dotted paths, numbers
    /// index arrays: `billing.invoices.0.amount`).
    #[serde(default)]
    pub json: BTreeMap<String, Value>,
    /// Members of the JSON body that must not exist.
    #[serde(default)]
    pub json_absent: Vec<String>,
    /// Members of the JSON body that are strings starting with these prefixes.
    #[serde(default)]
    pub json_prefix: BTreeMap<String, String>,
}

/// What changes on a host that cannot hold response headers (`late_commit`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LateCommitExpect {
    /// The answer is found unsafe only in its body, after its headers left: the
    /// client sees the stream reset, never a complete answer, and none of the body.
    #[serde(default)]
    pub reset: bool,
}

/// The kind of host a scenario runs on, and the response mode it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMode {
    /// `allow_on_headers_stop_iteration: true` and `response_mode: hold`: the
    /// configurations shipped for Envoy.
    Hold,
    /// No flag (Istio's `WasmPlugin`, Envoy Gateway) and `response_mode:
    /// late_commit`.
    LateCommit,
}

impl HostMode {
    pub const ALL: [HostMode; 2] = [HostMode::Hold, HostMode::LateCommit];

    pub fn name(self) -> &'static str {
        match self {
            HostMode::Hold => "hold",
            HostMode::LateCommit => "late_commit",
        }
    }

    /// Whether the host lets the plugin pause response headers.
    pub fn flag(self) -> bool {
        self == HostMode::Hold
    }
}

/// One scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub description: String,
    /// The configuration, relative to the workspace root.
    pub config: String,
    /// Named consent tokens (`{{token:NAME}}` in the request); a persona's name
    /// works without an entry.
    #[serde(default)]
    pub tokens: BTreeMap<String, crate::fixtures::TokenSpec>,
    pub request: Value,
    #[serde(default)]
    pub upstream: Option<Value>,
    pub expect: Expect,
    /// What differs in `late_commit` on a host without the flag; otherwise the
    /// same expectation holds there, but for `content-length` and body digests
    /// (`etag`...), which headers carry only when they wait for the redacted body.
    #[serde(default)]
    pub late_commit: LateCommitExpect,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub file: ScenarioFile,
}

/// What one host showed, reduced to what parity compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub status: u16,
    pub headers: HeaderList,
    pub body: Vec<u8>,
    /// The headers the upstream received, if it was called.
    pub upstream_headers: Option<HeaderList>,
    /// The path and body the upstream received, if it was called.
    pub upstream_path: Option<String>,
    pub upstream_body: Option<Vec<u8>>,
    /// The client saw the stream fail (a reset, a connection closed inside the body)
    /// rather than a complete answer.
    pub reset: bool,
}

/// Headers whose values both hosts must agree on when either sends them.
pub const COMPARED_HEADERS: [&str; 8] = [
    "content-type",
    "content-length",
    "content-encoding",
    "www-authenticate",
    "retry-after",
    "cache-control",
    "x-content-type-options",
    "x-powered-by",
];

impl Scenario {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let file: ScenarioFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a scenario file", path.display()))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let scenario = Self { name, file };
        // Catch a malformed request now rather than in the middle of a run.
        scenario.exchange(std::time::SystemTime::now())?;
        Ok(scenario)
    }

    /// The exchange, with consent tokens issued at `now` in place of its
    /// `{{token:NAME}}` placeholders.
    pub fn exchange(&self, now: std::time::SystemTime) -> Result<Exchange> {
        let mut exchange = serde_json::json!({ "request": self.file.request });
        if let Some(u) = &self.file.upstream {
            exchange["upstream"] = u.clone();
        }
        let text = crate::fixtures::fill_tokens(&exchange.to_string(), &self.file.tokens, now)
            .with_context(|| format!("scenario {}", self.name))?;
        Exchange::from_json(&text).with_context(|| format!("scenario {}", self.name))
    }

    /// Runs the scenario in the harness, with the development secrets and a consent
    /// service answering the plugin's calls.
    pub fn run_in_harness(
        &self,
        plugin: std::sync::Arc<crate::Plugin>,
        root: &Path,
    ) -> Result<crate::Outcome> {
        self.run_in_harness_as(plugin, root, HostMode::Hold)
    }

    /// Runs the scenario in the harness as a host of this kind.
    pub fn run_in_harness_as(
        &self,
        plugin: std::sync::Arc<crate::Plugin>,
        root: &Path,
        mode: HostMode,
    ) -> Result<crate::Outcome> {
        let now = std::time::SystemTime::now();
        let exchange = self.exchange(now)?;
        let config = self.config_json_as(root, mode)?;
        let service = crate::fixtures::ConsentService::new();
        let mut builder = crate::Proxy::builder(plugin)
            .config(config)
            .now(now)
            .allow_on_headers_stop_iteration(mode.flag());
        for (k, v) in crate::fixtures::dev_env() {
            builder = builder.env(&k, &v);
        }
        let mut proxy = builder
            .callouts(move |c| service.answer(c, now))
            .start()
            .map_err(|e| anyhow!("{}: {e}", self.name))?;
        Ok(proxy.send(exchange.client_request()?, exchange.upstream_response()?))
    }

    /// Every scenario in `dir`, in name order.
    pub fn load_dir(dir: &Path) -> Result<Vec<Self>> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        paths.iter().map(|p| Self::load(p)).collect()
    }

    /// The configuration as the JSON text the plugin reads.
    pub fn config_json(&self, root: &Path) -> Result<String> {
        self.config_json_as(root, HostMode::Hold)
    }

    /// The configuration in the response mode this kind of host needs.
    pub fn config_json_as(&self, root: &Path, mode: HostMode) -> Result<String> {
        let path = root.join(&self.file.config);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let json = config_as_json(&self.file.config, &text)?;
        let mut value: Value = serde_json::from_str(&json)?;
        value["response_mode"] = Value::String(mode.name().into());
        Ok(value.to_string())
    }

    /// Checks an observation made on a host of this kind.
    pub fn check_as(&self, mode: HostMode, seen: &Observed) -> Vec<String> {
        match mode {
            HostMode::Hold => {
                let mut fails = self.check(seen);
                if seen.reset {
                    fails.push("the client saw the stream fail".into());
                }
                fails
            }
            HostMode::LateCommit if self.file.late_commit.reset => {
                let mut fails = Vec::new();
                if !seen.reset {
                    fails.push(format!(
                        "late_commit: the client got a complete answer (status {}), \
                         not a reset",
                        seen.status
                    ));
                }
                if let Some(upstream) = self.upstream_body_text() {
                    let received = String::from_utf8_lossy(&seen.body);
                    if received.len() >= 8 && upstream.contains(received.as_ref()) {
                        fails.push("late_commit: upstream bytes reached the client".into());
                    }
                }
                fails
            }
            HostMode::LateCommit => {
                // Headers that go before the body is redacted carry no length and no
                // digest of a body they cannot know.
                let mut late = self.clone();
                let expect = &mut late.file.expect;
                expect.headers.remove("content-length");
                for digest in [
                    "etag",
                    "digest",
                    "content-digest",
                    "repr-digest",
                    "content-md5",
                ] {
                    if expect.headers.remove(digest).is_some() {
                        expect.absent_headers.push(digest.into());
                    }
                }
                let mut fails = late.check(seen);
                if seen.reset {
                    fails.push("late_commit: the client saw the stream fail".into());
                }
                fails
            }
        }
    }

    /// The upstream's body as text, when the scenario gives it as a string.
    fn upstream_body_text(&self) -> Option<String> {
        let body = self.file.upstream.as_ref()?.get("body")?;
        Some(match body {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    /// Checks an observation against the expectation; returns the failures.
    pub fn check(&self, seen: &Observed) -> Vec<String> {
        let e = &self.file.expect;
        let mut fails = Vec::new();
        if seen.status != e.status {
            fails.push(format!("status {} (expected {})", seen.status, e.status));
        }
        for (name, want) in &e.headers {
            match header(&seen.headers, name) {
                Some(v) if v == *want => {}
                got => fails.push(format!("header {name}: {got:?} (expected {want:?})")),
            }
        }
        for name in &e.absent_headers {
            if header(&seen.headers, name).is_some() {
                fails.push(format!("header {name} must not reach the client"));
            }
        }
        if let Some(body) = &e.body
            && seen.body != body.as_bytes()
        {
            fails.push(format!(
                "body {:?} (expected {body:?})",
                String::from_utf8_lossy(&seen.body)
            ));
        }
        if let Some(code) = &e.problem_code {
            fails.extend(check_problem(&seen.body, code, e.status));
        }
        if let Some(called) = e.upstream_called
            && seen.upstream_headers.is_some() != called
        {
            fails.push(format!("upstream called: {} (expected {called})", !called));
        }
        if let Some(up) = &seen.upstream_headers {
            for name in &e.upstream_headers_absent {
                if header(up, name).is_some() {
                    fails.push(format!("the upstream received {name}"));
                }
            }
            for (name, want) in &e.upstream_headers {
                match header(up, name) {
                    Some(v) if v == *want => {}
                    got => fails.push(format!(
                        "the upstream's header {name}: {got:?} (expected {want:?})"
                    )),
                }
            }
        }
        if let Some(want) = &e.upstream_path
            && seen.upstream_path.as_ref() != Some(want)
        {
            fails.push(format!(
                "upstream path {:?} (expected {want:?})",
                seen.upstream_path
            ));
        }
        if let Some(want) = &e.upstream_body
            && seen.upstream_body.as_deref() != Some(want.as_bytes())
        {
            fails.push(format!(
                "upstream body {:?} (expected {want:?})",
                seen.upstream_body.as_deref().map(String::from_utf8_lossy)
            ));
        }
        if !e.json.is_empty() || !e.json_absent.is_empty() || !e.json_prefix.is_empty() {
            match serde_json::from_slice::<Value>(&seen.body) {
                Err(_) => fails.push("the body is not JSON".into()),
                Ok(doc) => {
                    for (path, want) in &e.json {
                        match member(&doc, path) {
                            Some(v) if v == want => {}
                            got => fails.push(format!("body {path}: {got:?} (expected {want})")),
                        }
                    }
                    for path in &e.json_absent {
                        if member(&doc, path).is_some() {
                            fails.push(format!("body {path} must not be there"));
                        }
                    }
                    for (path, prefix) in &e.json_prefix {
                        match member(&doc, path).and_then(Value::as_str) {
                            Some(v) if v.starts_with(prefix.as_str()) => {}
                            got => fails.push(format!(
                                "body {path}: {got:?} (expected a string starting {prefix:?})"
                            )),
                        }
                    }
                }
            }
        }
        fails
    }
}

/// A member by dotted path; numeric segments index arrays.
fn member<'v>(doc: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(doc, |v, seg| match v {
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        Value::Object(o) => o.get(seg),
        _ => None,
    })
}

fn header(headers: &HeaderList, name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

fn check_problem(body: &[u8], code: &str, status: u16) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return vec![format!(
            "body is not problem+json: {:?}",
            String::from_utf8_lossy(body)
        )];
    };
    let mut fails = Vec::new();
    if v["code"] != code {
        fails.push(format!("problem code {} (expected {code})", v["code"]));
    }
    if v["status"] != status {
        fails.push(format!(
            "problem status {} (expected {status})",
            v["status"]
        ));
    }
    for member in ["type", "title", "detail", "request_id"] {
        if !v[member].is_string() {
            fails.push(format!("problem member {member} missing"));
        }
    }
    fails
}

/// The body with a problem's `request_id` blanked: ids differ between hosts.
pub fn normalised_body(body: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(body) {
        Ok(mut v) if v.get("request_id").is_some() => {
            v["request_id"] = Value::String("<request-id>".into());
            v.to_string().into_bytes()
        }
        _ => body.to_vec(),
    }
}

/// Where two hosts disagree, in words.
pub fn differences(a_name: &str, a: &Observed, b_name: &str, b: &Observed) -> Vec<String> {
    let mut diffs = Vec::new();
    if a.reset || b.reset {
        // A failed stream has no answer to compare: both hosts must have failed it.
        if a.reset != b.reset {
            diffs.push(format!(
                "stream failed: {a_name} {} vs {b_name} {}",
                a.reset, b.reset
            ));
        }
        return diffs;
    }
    if a.status != b.status {
        diffs.push(format!(
            "status: {a_name} {} vs {b_name} {}",
            a.status, b.status
        ));
    }
    for name in COMPARED_HEADERS {
        let (x, y) = (header(&a.headers, name), header(&b.headers, name));
        if x != y {
            diffs.push(format!("header {name}: {a_name} {x:?} vs {b_name} {y:?}"));
        }
    }
    let (x, y) = (normalised_body(&a.body), normalised_body(&b.body));
    if x != y {
        diffs.push(format!(
            "body: {a_name} {:?} vs {b_name} {:?}",
            String::from_utf8_lossy(&x),
            String::from_utf8_lossy(&y)
        ));
    }
    if a.upstream_headers.is_some() != b.upstream_headers.is_some() {
        diffs.push(format!(
            "upstream called: {a_name} {} vs {b_name} {}",
            a.upstream_headers.is_some(),
            b.upstream_headers.is_some()
        ));
    }
    diffs
}

/// The workspace's scenario directory.
pub fn scenario_dir() -> PathBuf {
    crate::plugin::workspace_root()
        .join("host-tests")
        .join("scenarios")
}

/// The request an upstream received, as a network test's upstream records it.
pub struct ReceivedRequest<'a> {
    pub path: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl Observed {
    /// What a client saw over the network (text header values), and the first
    /// request the upstream received, if it was called.
    pub fn from_network(
        status: u16,
        headers: &[(String, String)],
        body: &[u8],
        upstream: Option<ReceivedRequest<'_>>,
        reset: bool,
    ) -> Self {
        let bytes = |headers: &[(String, String)]| -> HeaderList {
            headers
                .iter()
                .map(|(n, v)| (n.clone(), v.as_bytes().to_vec()))
                .collect()
        };
        Self {
            status,
            headers: bytes(headers),
            body: body.to_vec(),
            upstream_headers: upstream.as_ref().map(|r| bytes(r.headers)),
            upstream_path: upstream.as_ref().map(|r| r.path.to_owned()),
            upstream_body: upstream.as_ref().map(|r| r.body.to_vec()),
            reset,
        }
    }
}

impl From<&crate::proxy::Outcome> for Observed {
    fn from(o: &crate::proxy::Outcome) -> Self {
        Self {
            status: o.client.status,
            headers: o.client.headers.clone(),
            body: o.client.body.clone(),
            upstream_headers: o.upstream_request.as_ref().map(|u| u.headers.clone()),
            upstream_path: o.upstream_request.as_ref().map(|u| u.path.clone()),
            upstream_body: o.upstream_request.as_ref().map(|u| u.body.clone()),
            reset: matches!(
                o.client.fault,
                Some(crate::message::ClientFault::Reset { .. })
            ),
        }
    }
}

/// Fails with every problem found, one per line.
pub fn ensure_empty(what: &str, problems: Vec<String>) -> Result<()> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("{what}:\n  {}", problems.join("\n  ")))
    }
}
