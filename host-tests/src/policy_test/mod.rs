//! `consentry test`: policy test files run through the real `.wasm`.
//!
//! A test file (`*.test.yaml`, `*.test.yml` or `*.test.json`) names a policy and
//! holds cases; each case is a REQUEST file of `consentry replay` (the request, the
//! upstream's answer, the callouts' answers, the time) with a name and what must come
//! of it. Every case runs in a proxy of its own, so cases run in parallel on a pool of
//! scoped threads sharing the module compiled once. The format is documented in
//! `policies/README.md` ("Testing a policy").

mod diff;
mod expect;
mod file;
mod jsonpath;
mod output;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

pub use expect::{Expect, Failure, GoldenUpdate, UpstreamExpect, audit_record};
pub use file::{CaseSpec, FileSpec, StatusListSpec, TEST_FILE_SUFFIXES, TestFile, read_text_file};
pub use jsonpath::JsonPath;
pub use output::{junit_xml, summary};

use crate::plugin::Plugin;
use crate::proxy::{Proxy, StartError};
use crate::replay::{Replay, config_as_json};

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Cases run at once.
    pub jobs: usize,
    /// Write golden files that differ instead of failing on them.
    pub update: bool,
    /// VM environment variables set over each file's `env`.
    pub env: Vec<(String, String)>,
}

/// What became of one case.
#[derive(Debug)]
pub struct CaseResult {
    pub name: String,
    pub failures: Vec<Failure>,
    /// The decision in one line (from the audit record), shown with failures.
    pub decision: Option<String>,
    /// The golden file written under `--update`, or why it was not.
    pub updated: Option<Result<PathBuf, String>>,
    pub seconds: f64,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// What became of one file: an error that kept its cases from running, or its cases.
#[derive(Debug)]
pub struct FileResult {
    pub path: PathBuf,
    pub error: Option<String>,
    pub cases: Vec<CaseResult>,
}

/// The test files named: files as given, directories searched (recursively) for
/// names ending in one of [`TEST_FILE_SUFFIXES`], in name order.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let before = out.len();
            walk(p, &mut out).with_context(|| format!("reading {}", p.display()))?;
            out[before..].sort();
        } else if p.exists() {
            out.push(p.clone());
        } else {
            bail!("{}: no such file or directory", p.display());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if is_test_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Whether a directory's file is a test file, by its name.
pub fn is_test_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| TEST_FILE_SUFFIXES.iter().any(|s| n.ends_with(s)))
}

/// A file ready to run: loaded, with its policy read and accepted by the plugin.
struct Ready {
    file: TestFile,
    config: Arc<String>,
    env: Vec<(String, String)>,
}

/// Runs every case of `files`; golden files are written (with `update`) once all
/// cases have run.
pub fn run(files: &[PathBuf], plugin: &Arc<Plugin>, options: &Options) -> Vec<FileResult> {
    let mut results = Vec::new();
    let mut ready = Vec::new();
    // Each policy (with its environment) is read and loaded once.
    type Env = Vec<(String, String)>;
    let mut policies: HashMap<(PathBuf, Env), Result<Arc<String>, String>> = HashMap::new();
    for path in files {
        let loaded = TestFile::load(path).map_err(|e| format!("{e:#}"));
        let prepared = loaded.and_then(|file| {
            let env = file_env(&file, &options.env);
            let key = (file.policy_path(), env.clone());
            let config = policies
                .entry(key)
                .or_insert_with(|| load_policy(&file.policy_path(), plugin, &env))
                .clone()?;
            Ok(Ready { file, config, env })
        });
        results.push(FileResult {
            path: path.clone(),
            error: prepared.as_ref().err().cloned(),
            cases: Vec::new(),
        });
        ready.push(prepared.ok());
    }
    let work: Vec<(usize, usize)> = ready
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().map(|r| (i, r.file.spec.cases.len())))
        .flat_map(|(i, n)| (0..n).map(move |c| (i, c)))
        .collect();
    let next = AtomicUsize::new(0);
    let jobs = options.jobs.clamp(1, work.len().max(1));
    type Done = ((usize, usize), CaseResult, Option<GoldenUpdate>);
    let mut done: Vec<Done> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..jobs)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    while let Some(&(f, c)) = work.get(next.fetch_add(1, Ordering::Relaxed)) {
                        if let Some(r) = &ready[f] {
                            let (result, golden) = run_case(r, c, plugin, options.update);
                            mine.push(((f, c), result, golden));
                        }
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    // A worker that panicked took its results with it: those cases fail, never vanish.
    for &(f, c) in &work {
        if !done.iter().any(|(at, _, _)| *at == (f, c)) {
            let name = ready[f]
                .as_ref()
                .and_then(|r| r.file.spec.cases.get(c))
                .map_or_else(String::new, |case| case.name.clone());
            let lost = failed(
                name,
                "the runner lost this case (a panic)".into(),
                Instant::now(),
            );
            done.push(((f, c), lost, None));
        }
    }
    done.sort_by_key(|(at, _, _)| *at);
    // Golden files are written here, one at a time, once every case has read its own.
    for ((f, _), mut case, golden) in done {
        if let Some(g) = golden {
            match std::fs::write(&g.path, &g.bytes) {
                Ok(()) => case.updated = Some(Ok(g.path)),
                Err(e) => case.failures.push(Failure {
                    message: format!("writing {}: {e}", g.path.display()),
                    detail: None,
                }),
            }
        }
        results[f].cases.push(case);
    }
    results
}

/// The VM environment of a file: its `env`, then the command line's.
fn file_env(file: &TestFile, given: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = file
        .spec
        .env
        .iter()
        .filter(|(k, _)| !given.iter().any(|(g, _)| g == *k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend(given.iter().cloned());
    env
}

/// Reads a policy and has the plugin load it once: a refused policy fails its
/// files before any case runs, with the plugin's reasons.
fn load_policy(
    path: &Path,
    plugin: &Arc<Plugin>,
    env: &[(String, String)],
) -> Result<Arc<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the policy {}: {e}", path.display()))?;
    let json = config_as_json(&path.display().to_string(), &text).map_err(|e| format!("{e:#}"))?;
    let mut builder = Proxy::builder(plugin.clone())
        .config(json.clone())
        .main_thread(false);
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    match builder.start() {
        Ok(_) => Ok(Arc::new(json)),
        Err(StartError::Rejected { logs }) => {
            const PREFIX: &str = "consentry: configuration refused: ";
            let reasons: Vec<String> = logs
                .iter()
                .filter_map(|l| l.message.strip_prefix(PREFIX))
                .map(|r| format!("\n  {r}"))
                .collect();
            Err(format!(
                "the plugin refuses the policy {}:{}",
                path.display(),
                reasons.concat()
            ))
        }
        Err(e) => Err(format!("starting the plugin: {e}")),
    }
}

/// Runs one case; returns its result and the golden file to write, if any.
fn run_case(
    ready: &Ready,
    index: usize,
    plugin: &Arc<Plugin>,
    update: bool,
) -> (CaseResult, Option<GoldenUpdate>) {
    let started = Instant::now();
    let file = &ready.file;
    let Some(case) = file.spec.cases.get(index) else {
        return (failed(String::new(), "no such case".into(), started), None);
    };
    let exchange = match file.prepare(case) {
        Ok(x) => x,
        Err(e) => {
            let message = case_error(index, &format!("{e:#}"));
            return (failed(case.name.clone(), message, started), None);
        }
    };
    let run: Replay =
        match exchange.run_with_env(plugin.clone(), ready.config.as_bytes(), &ready.env) {
            Ok(r) => r,
            Err(e) => {
                let message = format!("running the case: {e}");
                return (failed(case.name.clone(), message, started), None);
            }
        };
    let checked = case.expect.check(&run, file.dir(), update);
    // A golden file is blessed only when the case passes otherwise.
    let (golden, updated) = match checked.update {
        Some(g) if checked.failures.is_empty() => (Some(g), None),
        Some(g) => (
            None,
            Some(Err(format!(
                "{} not updated: the case fails on other expectations",
                g.path.display()
            ))),
        ),
        None => (None, None),
    };
    let result = CaseResult {
        name: case.name.clone(),
        failures: checked.failures,
        decision: audit_record(&run).map(|r| decision_line(&r)),
        updated,
        seconds: started.elapsed().as_secs_f64(),
    };
    (result, golden)
}

/// An error of the case's exchange, located in the file (`$.cases[2].request...`),
/// without serde_json's position in the text the file became.
fn case_error(index: usize, message: &str) -> String {
    let message = match message.rfind(" at line ") {
        Some(i) if message[i..].contains(" column ") => &message[..i],
        _ => message,
    };
    match message.strip_prefix('$') {
        Some(rest) => format!("$.cases[{index}]{rest}"),
        None => message.to_owned(),
    }
}

fn failed(name: String, message: String, started: Instant) -> CaseResult {
    CaseResult {
        name,
        failures: vec![Failure {
            message,
            detail: None,
        }],
        decision: None,
        updated: None,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// `deny access_denied (no_rule_matched), route GET /patients/{id}, rule -, refused`.
fn decision_line(record: &serde_json::Value) -> String {
    let s = |k: &str| record[k].as_str().unwrap_or("-").to_owned();
    format!(
        "{} {} ({}), route {}, rule {}, {}",
        s("decision"),
        s("code"),
        s("reason"),
        s("route"),
        s("rule"),
        s("outcome")
    )
}
