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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    /// 2026-11-27T12:00:00Z.
    const NOW: u64 = 1_795_780_800;

    fn claims(jwt: &str) -> Value {
        let payload = jwt.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn load(text: &str) -> Result<(tempfile::TempDir, TestFile)> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("answer.json"), "{\"a\": 1.50}\n").unwrap();
        let path = dir.path().join("t.test.yaml");
        std::fs::write(&path, text).unwrap();
        let file = TestFile::load(&path)?;
        Ok((dir, file))
    }

    #[test]
    fn a_case_becomes_an_exchange_with_its_files_tokens_and_lists() {
        let (_dir, file) = load(
            r#"
policy: p.json
now: 2026-11-27T12:00:00Z
callouts:
  c.example/list: {body: "{{status-list:gone}}"}
  c.example/keys: {body: "{}"}
status_lists:
  gone: {list: "7", revoked: [0], issued_offset: -5}
tokens:
  old: {persona: insurer, issued_offset: -60, claims: {sub: p-9}}
upstream: {body_file: answer.json}
cases:
  - name: one
    request: {path: /x, headers: {authorization: "Bearer {{token:old}}"}}
    callouts: {c.example/keys: null}
    expect: {status: 200}
"#,
        )
        .unwrap();
        let x = file.prepare(&file.spec.cases[0]).unwrap();
        // The file's text without its final newline, exactly.
        assert_eq!(
            x.upstream_response().unwrap().body_bytes(),
            b"{\"a\": 1.50}"
        );
        let token = x.request.headers["authorization"].clone();
        let crate::replay::HeaderValue::One(token) = token else {
            panic!("one value")
        };
        let token = claims(token.strip_prefix("Bearer ").unwrap());
        assert_eq!(token["iat"], NOW - 60);
        assert_eq!(token["sub"], "p-9");
        assert_eq!(token["client_id"], "insurer-acme");
        // The case's null took the file's answer away.
        let calls = x.callout_answers().unwrap();
        assert_eq!(calls.keys().collect::<Vec<_>>(), ["c.example/list"]);
        let list = String::from_utf8(calls["c.example/list"].0.body_bytes()).unwrap();
        let list = claims(&list);
        assert_eq!(list["iat"], NOW - 5);
        assert!(list["sub"].as_str().unwrap().ends_with("/statuslists/7"));
        assert_eq!(
            x.time().unwrap(),
            UNIX_EPOCH + std::time::Duration::from_secs(NOW)
        );
    }

    #[test]
    fn a_bad_file_is_refused_with_its_place() {
        let case = "  - name: a\n    request: {path: /}\n    expect: {status: 200}\n";
        let err = |text: &str| format!("{:#}", load(text).err().unwrap());
        assert!(err(&format!("policy: p\ncases:\n{case}{case}")).contains("$.cases[1].name"));
        assert!(err("policy: p\ncases: []\n").contains("$.cases: no cases"));
        assert!(
            err("policy: p\ncases:\n  - {name: a, request: {}, expect: {status: 200, absent: [x]}}\n")
                .contains("$.cases[0].expect: 'x' must start with '$'")
        );
        assert!(
            err("policy: p\ncases:\n  - {name: a, request: {}, expect: {status: 200}, now: 1}\n")
                .contains("$.cases[0].now")
        );
        let (_dir, file) = load(
            "policy: p\ncases:\n  - {name: a, request: {path: /, body: x, body_file: answer.json}, expect: {status: 200}}\n",
        )
        .unwrap();
        let e = format!("{:#}", file.prepare(&file.spec.cases[0]).unwrap_err());
        assert!(e.contains("$.request: give only one of body"), "{e}");
    }
}
