//! A policy test file: the policy it tests, what every case shares, and the cases.
//! A case is a REQUEST file (`request`, `upstream`, `callouts`, `now`: see
//! [`crate::replay`]) with a `name` and an `expect`ation; tokens and status lists
//! are minted for the case's `now` through `{{token:NAME}}` and
//! `{{status-list:NAME}}` placeholders, so a committed file never expires.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::expect::Expect;
use crate::fixtures::{TokenSpec, fill_tokens};
use crate::mint::{self, MintArgs};
use crate::replay::{Exchange, parse_rfc3339};

/// One test file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// What the file tests, for readers.
    #[serde(default)]
    pub description: Option<String>,
    /// The policy (JSON or YAML), relative to the test file.
    pub policy: String,
    /// The plugin VM's environment (the secrets the policy names).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Every case's `now`, unless the case gives its own (RFC 3339).
    #[serde(default)]
    pub now: Option<String>,
    /// Named tokens for `{{token:NAME}}`; a persona's name works without an entry.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenSpec>,
    /// Named status lists for `{{status-list:NAME}}`; a list id works without an
    /// entry (every status valid).
    #[serde(default)]
    pub status_lists: BTreeMap<String, StatusListSpec>,
    /// Answers to the plugin's outgoing calls in every case (a case's own entries
    /// replace these by key; a case's `null` removes one).
    #[serde(default)]
    pub callouts: Map<String, Value>,
    /// The upstream's answer in cases that give none.
    #[serde(default)]
    pub upstream: Option<Value>,
    pub cases: Vec<CaseSpec>,
}

/// One case, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseSpec {
    pub name: String,
    #[serde(default)]
    pub now: Option<String>,
    /// Named tokens of this case only (over the file's).
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenSpec>,
    pub request: Value,
    #[serde(default)]
    pub upstream: Option<Value>,
    #[serde(default)]
    pub callouts: Map<String, Value>,
    pub expect: Expect,
}

/// A status list minted for the case's `now`: the personas' issuer's list `list`
/// (1024 entries of 2 bits, all valid but those named).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusListSpec {
    /// The list's id (`.../statuslists/ID`); default: the entry's name.
    #[serde(default)]
    pub list: Option<String>,
    /// Indexes of revoked entries (status 1).
    #[serde(default)]
    pub revoked: Vec<u16>,
    /// Indexes of suspended entries (status 2).
    #[serde(default)]
    pub suspended: Vec<u16>,
    /// Seconds the list may be cached (default one hour).
    #[serde(default)]
    pub ttl: Option<u64>,
    /// Issue time relative to the case's `now`, in seconds (negative: in the past).
    #[serde(default)]
    pub issued_offset: i64,
}

/// A loaded test file.
#[derive(Debug, Clone)]
pub struct TestFile {
    /// The file, as named on the command line (or found under a directory named so).
    pub path: PathBuf,
    pub spec: FileSpec,
}

/// The names a directory's test files end with.
pub const TEST_FILE_SUFFIXES: [&str; 3] = [".test.yaml", ".test.yml", ".test.json"];

impl TestFile {
    /// Reads a test file, YAML or JSON (by its name: `.json` is JSON).
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let value: Value = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).context("not valid JSON")?
        } else {
            serde_norway::from_str(&text).context("not valid YAML")?
        };
        let spec: FileSpec = serde_path_to_error::deserialize(value).map_err(|e| {
            let at = e.path().to_string();
            anyhow!("{}: {}", location(&at), e.into_inner())
        })?;
        let mut seen = std::collections::BTreeSet::new();
        for (i, case) in spec.cases.iter().enumerate() {
            if !seen.insert(case.name.as_str()) {
                bail!("$.cases[{i}].name: '{}' names two cases", case.name);
            }
            case.expect
                .validate()
                .with_context(|| format!("$.cases[{i}].expect"))?;
        }
        if spec.cases.is_empty() {
            bail!("$.cases: no cases");
        }
        Ok(Self {
            path: path.to_path_buf(),
            spec,
        })
    }

    /// The directory relative paths in the file start from.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// The policy's path.
    pub fn policy_path(&self) -> PathBuf {
        self.dir().join(&self.spec.policy)
    }

    /// A path the file names, relative to it.
    pub fn resolve(&self, relative: &str) -> PathBuf {
        self.dir().join(relative)
    }

    /// The case's exchange as JSON, before placeholders are filled: the file's
    /// defaults merged in, `body_file`s read.
    pub fn exchange_value(&self, case: &CaseSpec) -> Result<Value> {
        let mut callouts = self.spec.callouts.clone();
        callouts.extend(case.callouts.clone());
        // A case's `null` takes the file's answer away: that call goes unanswered.
        callouts.retain(|_, answer| !answer.is_null());
        let mut x = Map::new();
        x.insert("request".into(), case.request.clone());
        if let Some(u) = case.upstream.as_ref().or(self.spec.upstream.as_ref()) {
            x.insert("upstream".into(), u.clone());
        }
        if !callouts.is_empty() {
            x.insert("callouts".into(), Value::Object(callouts));
        }
        let mut x = Value::Object(x);
        self.read_body_file(&mut x["request"], "request")?;
        if let Some(u) = x.get_mut("upstream") {
            self.read_body_file(u, "upstream")?;
        }
        if let Some(Value::Object(calls)) = x.get_mut("callouts") {
            for (key, answer) in calls.iter_mut() {
                self.read_body_file(answer, &format!("callouts.{key}"))?;
            }
        }
        Ok(x)
    }

    /// `body_file: PATH` becomes `body: "<the file's text without its final newline>"`.
    fn read_body_file(&self, part: &mut Value, at: &str) -> Result<()> {
        let Some(obj) = part.as_object_mut() else {
            return Ok(());
        };
        let Some(file) = obj.remove("body_file") else {
            return Ok(());
        };
        let Some(file) = file.as_str() else {
            bail!("$.{at}.body_file: expected a path");
        };
        if obj.contains_key("body") || obj.contains_key("chunks") || obj.contains_key("body_base64")
        {
            bail!("$.{at}: give only one of body, body_file, chunks and body_base64");
        }
        let text =
            read_text_file(&self.resolve(file)).with_context(|| format!("$.{at}.body_file"))?;
        obj.insert("body".into(), Value::String(text));
        Ok(())
    }

    /// The case's time: its own `now`, the file's, or the current time.
    pub fn now(&self, case: &CaseSpec) -> Result<SystemTime> {
        match case.now.as_ref().or(self.spec.now.as_ref()) {
            Some(text) => parse_rfc3339(text),
            None => Ok(SystemTime::now()),
        }
    }

    /// The case as an exchange to run: tokens and status lists minted for its time.
    pub fn prepare(&self, case: &CaseSpec) -> Result<Exchange> {
        let now = self.now(case)?;
        let mut x = self.exchange_value(case)?;
        x["now"] = Value::String(rfc3339(now)?);
        let mut tokens = self.spec.tokens.clone();
        tokens.extend(case.tokens.clone());
        let text = fill_tokens(&x.to_string(), &tokens, now)?;
        let text = self.fill_status_lists(&text, now)?;
        Exchange::from_json(&text)
    }

    /// Replaces every `{{status-list:NAME}}` by a status-list token issued at `now`.
    fn fill_status_lists(&self, text: &str, now: SystemTime) -> Result<String> {
        const OPEN: &str = "{{status-list:";
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find(OPEN) {
            out.push_str(&rest[..start]);
            let after = &rest[start + OPEN.len()..];
            let end = after
                .find("}}")
                .ok_or_else(|| anyhow!("an unterminated {{{{status-list:...}}}}"))?;
            let name = &after[..end];
            let spec = self
                .spec
                .status_lists
                .get(name)
                .cloned()
                .unwrap_or_default();
            out.push_str(
                &status_list(name, &spec, now).with_context(|| format!("status list '{name}'"))?,
            );
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// A file's text, without one final newline (so a file ends with a newline like any
/// other text file, and holds the body exactly).
pub fn read_text_file(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.strip_suffix('\n').map(str::to_owned).unwrap_or(text))
}

fn status_list(name: &str, spec: &StatusListSpec, now: SystemTime) -> Result<String> {
    let unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let status = spec
        .revoked
        .iter()
        .map(|i| format!("{i}=1"))
        .chain(spec.suspended.iter().map(|i| format!("{i}=2")))
        .collect();
    let args = MintArgs {
        key: None,
        kid: None,
        alg: None,
        persona: None,
        personas: None,
        claims: None,
        claim: Vec::new(),
        ttl: spec.ttl.unwrap_or(mint::DEFAULT_TTL_SECONDS),
        now: Some(unix.saturating_add_signed(spec.issued_offset).to_string()),
        typ: mint::CONSENT_TYP.to_owned(),
        status_list: Some(spec.list.clone().unwrap_or_else(|| name.to_owned())),
        status,
    };
    args.run()
}

fn rfc3339(t: SystemTime) -> Result<String> {
    Ok(time::OffsetDateTime::from(t).format(&time::format_description::well_known::Rfc3339)?)
}

/// A serde path as a JSON location (`$.cases[2].expect`).
fn location(serde_path: &str) -> String {
    match serde_path {
        "" | "." => "$".into(),
        p if p.starts_with('[') => format!("${p}"),
        p => format!("$.{p}"),
    }
}
