//! The Envoy benchmark: wrk through a real Envoy (`--concurrency 1`, 127.0.0.1) in front
//! of the example service, for bare Envoy, Envoy's native token check (jwt_authn + rbac,
//! with and without its cache), Envoy's native JSON body rewriting (the transform
//! filter), a no-op wasm filter, and Consentry, cold and warm. `consentry-bench` runs it;
//! `envoy/BENCHMARKS.md` explains the method and the figures.
//!
//! Every configuration runs in its own Envoy, all started before the first run and kept
//! running (idle) between runs, so repetitions can interleave the configurations: each
//! repetition runs every row once, starting at a different row, and a row's figures are
//! medians over repetitions. One upstream serves every Envoy.

pub mod curves;
pub mod fixed;
pub mod inwasm;
pub mod report;
pub mod tokens;
pub mod wrk;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::{Envoy, RunningEnvoy, project_root, send_with_timeout};
use report::RowResult;
use tokens::Minter;
use wrk::{Load, Measured};

/// The command that builds the no-op filter.
pub const NOOP_BUILD_COMMAND: &str =
    "cargo build -p consentry-noop-filter --target wasm32-wasip1 --release";

/// How the benchmark runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seconds of each measured run under load.
    pub seconds: u32,
    /// Seconds of each run on one connection (0: none).
    pub single_seconds: u32,
    /// Seconds of load before each measured run, not measured (0: none).
    pub warmup_seconds: u32,
    pub repetitions: u32,
    /// wrk's connections for the runs under load (one wrk thread).
    pub connections: u32,
    /// Groups to run (all when empty).
    pub groups: Vec<Group>,
    /// Row ids to run (all when empty); a row runs if its id contains one of these.
    pub only: Vec<String>,
    /// The Consentry `.wasm` (the release build when `None`).
    pub wasm: Option<PathBuf>,
    /// Another Consentry `.wasm` to run beside it (a build from before a change).
    pub compare_wasm: Option<PathBuf>,
    /// Another plugin configuration for the Consentry rows (default: [`bench_policy`]);
    /// it must allow the insurer persona on the same paths.
    pub policy: Option<PathBuf>,
    /// Add the rows that take Consentry's cost apart with the benchmark module.
    pub decompose: bool,
    /// Where Consentry's audit records go (the default: the collector, as the README
    /// recommends for production).
    pub audit: AuditTrail,
    /// Seconds of each fixed-load latency run (0: none).
    pub fixed_seconds: u32,
    /// The offered loads of the fixed-load runs, as fractions of bare Envoy's
    /// capacity measured in the same run.
    pub fixed_fractions: Vec<f64>,
    /// Where the table, the CSV and the chart go.
    pub out: PathBuf,
}

impl Options {
    /// The full run: five repetitions of 6 s under load and 3 s on one connection.
    pub fn full() -> Self {
        Self {
            seconds: 6,
            single_seconds: 3,
            warmup_seconds: 1,
            repetitions: 5,
            connections: 32,
            groups: Vec::new(),
            only: Vec::new(),
            wasm: None,
            compare_wasm: None,
            policy: None,
            decompose: false,
            audit: AuditTrail::Collector,
            fixed_seconds: 10,
            fixed_fractions: vec![0.5],
            out: project_root().join("results").join("envoy"),
        }
    }

    /// The smoke run CI does: the 5 KB group once, a second per run.
    pub fn quick() -> Self {
        Self {
            seconds: 1,
            single_seconds: 1,
            warmup_seconds: 0,
            repetitions: 1,
            fixed_seconds: 1,
            groups: vec![Group::Record5k],
            ..Self::full()
        }
    }
}

/// Where the Consentry rows write their audit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditTrail {
    /// Shipped in batches to a collector (`audit.collector`, `audit.log: false`): the
    /// README's recommendation for production. The example service's
    /// `POST /status/204` plays the collector, through the consent service's cluster.
    Collector,
    /// One line in Envoy's log per record (`audit.log: true`, the default).
    Log,
    /// No trail (to measure what it costs).
    Off,
}

impl AuditTrail {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "collector" => Some(Self::Collector),
            "log" => Some(Self::Log),
            "off" => Some(Self::Off),
            _ => None,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Collector => "audit records shipped to a collector",
            Self::Log => "audit records in Envoy's log",
            Self::Off => "audit trail off",
        }
    }

    /// The `audit` member of the plugin configuration.
    fn config(self) -> serde_json::Value {
        match self {
            Self::Collector => serde_json::json!({
                "log": false,
                "collector": {
                    "cluster": "consent_service",
                    "authority": "collector.bench",
                    "path": "/status/204"
                }
            }),
            Self::Log => serde_json::json!({"log": true}),
            Self::Off => serde_json::json!({"log": false}),
        }
    }
}

/// A block of rows that fetch the same resource, so their ratios compare like with like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Group {
    /// `GET /patients/p-1`: the 5 KB record.
    Record5k,
    /// `GET /status/204`: no body, so token check and policy only.
    NoBody,
    /// `GET /patients/p-1/history`: the 64 KB record.
    Record64k,
}

impl Group {
    pub fn path(self) -> &'static str {
        match self {
            Group::Record5k => "/patients/p-1",
            Group::NoBody => "/status/204",
            Group::Record64k => "/patients/p-1/history",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Group::Record5k => "GET /patients/p-1 (the 5 KB record)",
            Group::NoBody => "GET /status/204 (no body: token check and policy only)",
            Group::Record64k => "GET /patients/p-1/history (the 64 KB record)",
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Group::Record5k => "5k",
            Group::NoBody => "nobody",
            Group::Record64k => "64k",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Group::Record5k, Group::NoBody, Group::Record64k]
            .into_iter()
            .find(|g| g.slug() == text)
    }
}

/// What a row's Envoy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The router only: the ceiling.
    Bare,
    /// jwt_authn + rbac, without jwt_authn's token cache.
    Jwt,
    /// jwt_authn + rbac with the cache.
    JwtCached,
    /// The transform filter merging over three fields of the body.
    Transform,
    /// A wasm filter that does nothing.
    Noop,
    /// Consentry (the build under test).
    Consentry,
    /// Consentry, the build given with `--compare-wasm`.
    ConsentryBefore,
    /// The benchmark module (`host-tests/bench-wasm`) doing one part of Consentry's
    /// work alone, chosen by the row's `x-bench-mode` header (`--decompose`).
    Probe,
}

/// Whether each request carries the same token or one never seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokens {
    /// One token for every request (caches warm).
    Same,
    /// A fresh token for every request (caches cold).
    Fresh,
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub group: Group,
    pub role: Role,
    pub tokens: Tokens,
    pub label: String,
    pub connections: u32,
    /// `x-bench-mode` for the benchmark module's rows.
    pub probe: Option<&'static str>,
}

/// The rows, group by group, in the order of the table.
pub fn rows(options: &Options) -> Vec<Row> {
    let mut rows = Vec::new();
    let compare = options.compare_wasm.is_some();
    for group in [Group::Record5k, Group::NoBody, Group::Record64k] {
        let add = |rows: &mut Vec<Row>, role: Role, tokens: Tokens, label: &str| {
            let name = match role {
                Role::Bare => "bare",
                Role::Jwt => "jwt-rbac",
                Role::JwtCached => "jwt-rbac-cached",
                Role::Transform => "transform",
                Role::Noop => "noop-wasm",
                Role::Consentry => "consentry",
                Role::ConsentryBefore => "consentry-before",
                Role::Probe => "probe",
            };
            let suffix = match (role, tokens) {
                (Role::Consentry | Role::ConsentryBefore, Tokens::Same) => "-warm",
                (Role::Consentry | Role::ConsentryBefore, Tokens::Fresh) => "-cold",
                _ => "",
            };
            rows.push(Row {
                id: format!("{}/{name}{suffix}", group.slug()),
                group,
                role,
                tokens,
                label: label.to_owned(),
                connections: options.connections,
                probe: None,
            });
        };
        let redaction = match group {
            Group::NoBody => "token + policy",
            _ => "token + policy + redaction",
        };
        add(
            &mut rows,
            Role::Bare,
            Tokens::Same,
            "bare Envoy (router only)",
        );
        if group != Group::Record64k {
            add(
                &mut rows,
                Role::Jwt,
                Tokens::Same,
                "jwt_authn + rbac, no cache",
            );
        }
        add(
            &mut rows,
            Role::JwtCached,
            Tokens::Same,
            "jwt_authn + rbac, cached",
        );
        if group != Group::NoBody {
            add(
                &mut rows,
                Role::Transform,
                Tokens::Same,
                "transform filter (MERGE 3 fields)",
            );
        }
        add(&mut rows, Role::Noop, Tokens::Same, "no-op wasm filter");
        add(
            &mut rows,
            Role::Consentry,
            Tokens::Same,
            &format!("Consentry: {redaction}, warm"),
        );
        if compare {
            add(
                &mut rows,
                Role::ConsentryBefore,
                Tokens::Same,
                &format!("Consentry before: {redaction}, warm"),
            );
        }
        if options.decompose && group != Group::Record64k {
            let probes: &[(&str, &str, &str)] = if group == Group::NoBody {
                &[("log", "log", "wasm filter: one 1.4 KB log line per request")]
            } else {
                &[
                    ("hold", "hold", "wasm filter: holds and re-sets the body"),
                    (
                        "hold-log",
                        "hold,log",
                        "wasm filter: holds, re-sets, logs 1.4 KB",
                    ),
                ]
            };
            for (suffix, mode, label) in probes {
                rows.push(Row {
                    id: format!("{}/probe-{suffix}", group.slug()),
                    group,
                    role: Role::Probe,
                    tokens: Tokens::Same,
                    label: (*label).to_owned(),
                    connections: options.connections,
                    probe: Some(mode),
                });
            }
        }
        if group != Group::Record64k {
            add(
                &mut rows,
                Role::Consentry,
                Tokens::Fresh,
                &format!("Consentry: {redaction}, cold (new token each)"),
            );
            if compare {
                add(
                    &mut rows,
                    Role::ConsentryBefore,
                    Tokens::Fresh,
                    &format!("Consentry before: {redaction}, cold"),
                );
            }
        }
    }
    rows.retain(|r| {
        (options.groups.is_empty() || options.groups.contains(&r.group))
            && (options.only.is_empty() || options.only.iter().any(|o| r.id.contains(o.as_str())))
    });
    rows
}

/// The benchmarks' plugin configuration (`consentry_bench_wasm::policy`): the example
/// policy with the insurer's rule on the history route and a route without a body.
pub fn bench_policy(audit: AuditTrail) -> Result<String> {
    let path = project_root().join("policies").join("example.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut policy =
        consentry_bench_wasm::policy::bench_policy(&text, true).map_err(|e| anyhow!(e))?;
    policy["audit"] = audit.config();
    Ok(policy.to_string())
}

/// The no-op filter's release build; the error gives the build command.
pub fn noop_wasm_path() -> Result<PathBuf> {
    let consentry = crate::wasm_path()?;
    let path = consentry.with_file_name("consentry_noop_filter.wasm");
    if path.is_file() {
        Ok(path)
    } else {
        bail!(
            "the no-op filter is missing at {}; build it with `{NOOP_BUILD_COMMAND}`",
            path.display()
        )
    }
}

/// Starts the Envoy of one role in front of the upstream at `upstream_port`.
fn start(role: Role, upstream_port: u16, options: &Options, policy: &str) -> Result<RunningEnvoy> {
    let builder = Envoy::builder()
        .upstream_port(upstream_port)
        .concurrency(1)
        .log_level("info");
    let consentry = |wasm: Option<&Path>| -> Result<_> {
        let wasm = match wasm {
            Some(w) => w.to_path_buf(),
            None => crate::wasm_path()?,
        };
        Ok(builder
            .clone()
            .template("consentry.yaml")
            .wasm(wasm)
            .plugin_config_json(policy))
    };
    let builder = match role {
        Role::Bare => builder.clone().template("bare.yaml"),
        Role::Jwt => builder.clone().template("bench-jwt.yaml"),
        Role::JwtCached => builder.clone().template("bench-jwt-cached.yaml"),
        Role::Transform => builder.clone().template("bench-transform.yaml"),
        // The no-op filter, loaded by exactly the configuration that loads Consentry
        // (it ignores the plugin configuration it is given).
        Role::Noop => consentry(Some(&noop_wasm_path()?))?,
        Role::Consentry => consentry(options.wasm.as_deref())?,
        Role::ConsentryBefore => consentry(options.compare_wasm.as_deref())?,
        // The benchmark module, loaded like Consentry; it ignores the configuration.
        Role::Probe => consentry(Some(&inwasm::module_path()?))?,
    };
    builder
        .start()
        .with_context(|| format!("starting the Envoy for {role:?}"))
}

/// What the machine is and how busy it was.
pub fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

/// The 1-, 5- and 15-minute load averages.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// `envoy --version`, shortened to the version and build.
fn envoy_version() -> String {
    crate::envoy_binary()
        .ok()
        .and_then(|bin| {
            std::process::Command::new(bin)
                .arg("--version")
                .output()
                .ok()
        })
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            text.split("version:")
                .nth(1)
                .unwrap_or(&text)
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Everything the report says about a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub results: Vec<RowResult>,
    /// The fixed-load latency runs.
    pub fixed: Vec<FixedRow>,
    pub header: String,
    pub started: String,
    pub load_before: String,
    pub load_after: String,
    pub elapsed: Duration,
}

/// Runs the benchmark and writes the results into `options.out`.
pub fn run(options: &Options) -> Result<Outcome> {
    let rows = rows(options);
    if rows.is_empty() {
        bail!("no benchmark row matches the selection");
    }
    let wrk_bin = wrk::binary()?;
    let started_at = Instant::now();
    let load_before = load_average();
    let started = utc_now();
    let scratch = tempfile::Builder::new()
        .prefix("consentry-bench-")
        .tempdir()?;
    let (static_script, fresh_script) = wrk::write_scripts(scratch.path())?;
    let policy = match &options.policy {
        Some(path) => {
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => bench_policy(options.audit)?,
    };
    let minter = Minter::new()?;
    let token = minter.token()?;

    let upstream =
        consentry_example_service::spawn("127.0.0.1:0").context("starting the example service")?;
    let mut envoys: BTreeMap<Role, RunningEnvoy> = BTreeMap::new();
    for row in &rows {
        if let std::collections::btree_map::Entry::Vacant(slot) = envoys.entry(row.role) {
            eprintln!("starting Envoy: {:?}", row.role);
            slot.insert(start(row.role, upstream.addr().port(), options, &policy)?);
        }
    }

    // One request per row first: the expected answer, and the body size it serves (this
    // also lets Consentry fetch its status list before anything is measured).
    let mut results: Vec<RowResult> = Vec::new();
    for row in &rows {
        let envoy = envoys
            .get(&row.role)
            .ok_or_else(|| anyhow!("no Envoy for {:?}", row.role))?;
        let url = format!("{}{}", envoy.base_url(), row.group.path());
        let auth = format!("Bearer {token}");
        let expected = if row.group == Group::NoBody { 204 } else { 200 };
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(mode) = row.probe {
            headers.push(("x-bench-mode", mode));
        }
        let mut answer = None;
        for _ in 0..50 {
            let r = send_with_timeout("GET", &url, &headers, None, Duration::from_secs(10))?;
            if r.status == expected {
                answer = Some(r);
                break;
            }
            // Consentry may still be fetching what it needs (a 503 meanwhile).
            std::thread::sleep(Duration::from_millis(100));
            answer = Some(r);
        }
        let answer = answer.ok_or_else(|| anyhow!("no answer from {url}"))?;
        if answer.status != expected {
            bail!(
                "{}: GET {} answered {} instead of {expected}: {}",
                row.id,
                row.group.path(),
                answer.status,
                answer.text()
            );
        }
        results.push(RowResult {
            row: row.clone(),
            status: answer.status,
            body_bytes: answer.body.len(),
            load: Vec::new(),
            single: Vec::new(),
        });
    }

    // Requests per second each cold row last managed, to mint enough tokens.
    let mut last_rps: BTreeMap<(String, u32), f64> = BTreeMap::new();
    let token_file = scratch.path().join("tokens.txt");
    let header = format!("Authorization: Bearer {token}");
    let n = results.len();
    for rep in 0..options.repetitions {
        let first = (rep as usize * n.div_ceil(options.repetitions.max(1) as usize)) % n;
        for k in 0..n {
            let i = (first + k) % n;
            let row = results[i].row.clone();
            let envoy = envoys
                .get(&row.role)
                .ok_or_else(|| anyhow!("no Envoy for {:?}", row.role))?;
            let url = format!("{}{}", envoy.base_url(), row.group.path());
            let mut one = |connections: u32, seconds: u32| -> Result<Measured> {
                let fresh = row.tokens == Tokens::Fresh;
                if fresh {
                    let guess = if connections == 1 { 4_000.0 } else { 15_000.0 };
                    let rps = last_rps
                        .get(&(row.id.clone(), connections))
                        .copied()
                        .unwrap_or(guess);
                    let count = (rps * 1.5 * f64::from(seconds)) as usize + 500;
                    minter.write_fresh(count, &token_file)?;
                }
                let load = Load {
                    url: &url,
                    connections,
                    seconds,
                    script: if fresh { &fresh_script } else { &static_script },
                    token_file: fresh.then_some(token_file.as_path()),
                    headers: {
                        let mut h = Vec::new();
                        if !fresh {
                            h.push(header.clone());
                        }
                        if let Some(mode) = row.probe {
                            h.push(format!("x-bench-mode: {mode}"));
                        }
                        h
                    },
                };
                let m = wrk::run(&wrk_bin, &load, scratch.path())?;
                if fresh {
                    last_rps.insert((row.id.clone(), connections), m.rps().max(1.0));
                }
                Ok(m)
            };
            if options.warmup_seconds > 0 {
                one(row.connections, options.warmup_seconds)?;
            }
            let m = one(row.connections, options.seconds)?;
            eprintln!(
                "[{}/{}] {:<34} {:>9} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms{}",
                rep + 1,
                options.repetitions,
                row.id,
                report::thousands(m.rps()),
                m.p50_ms,
                m.p99_ms,
                errors_note(&m)
            );
            results[i].load.push(m);
            if options.single_seconds > 0 {
                let s = one(1, options.single_seconds)?;
                eprintln!(
                    "[{}/{}] {:<34} 1 connection: p50 {:.3} ms  p99 {:.3} ms{}",
                    rep + 1,
                    options.repetitions,
                    row.id,
                    s.p50_ms,
                    s.p99_ms,
                    errors_note(&s)
                );
                results[i].single.push(s);
            }
        }
    }
    let fixed = if options.fixed_seconds > 0 {
        fixed_load(options, &envoys, &results, &header)?
    } else {
        Vec::new()
    };
    drop(envoys);
    drop(upstream);

    let header = format!(
        "Envoy {} (--concurrency 1), {}, wrk -t1 -c{} (and -c1), {} × {} s under load + {} s on one connection per row, {} s warm-up; fixed load {} s per run, open loop, {FIXED_CONNECTIONS} connections; Consentry: {}; {}",
        envoy_version(),
        wrk::version(&wrk_bin),
        options.connections,
        options.repetitions,
        options.seconds,
        options.single_seconds,
        options.warmup_seconds,
        options.fixed_seconds,
        options.audit.describe(),
        machine(),
    );
    let outcome = Outcome {
        results,
        fixed,
        header,
        started,
        load_before,
        load_after: load_average(),
        elapsed: started_at.elapsed(),
    };
    write_results(options, &outcome)?;
    Ok(outcome)
}

/// One configuration at a fixed offered load, over the repetitions.
#[derive(Debug, Clone)]
pub struct FixedRow {
    pub group: Group,
    pub role: Role,
    /// The offered load as a fraction of bare Envoy's capacity in this run.
    pub fraction: f64,
    /// Requests per second offered.
    pub rate: f64,
    pub p50_ms: Vec<f64>,
    pub p99_ms: Vec<f64>,
    pub achieved: Vec<f64>,
    pub errors: u64,
}

/// The connections of a fixed-load run: enough that one slow answer does not hold
/// the requests due after it (their wait still counts, from their due time).
const FIXED_CONNECTIONS: usize = 16;

/// Latency at a fixed offered load of half bare Envoy's capacity (as wrk measured
/// it in this run), for bare Envoy and warm Consentry, interleaved over the
/// repetitions: p50 and p99 from each request's due time ([`fixed`]).
fn fixed_load(
    options: &Options,
    envoys: &BTreeMap<Role, RunningEnvoy>,
    results: &[RowResult],
    auth: &str,
) -> Result<Vec<FixedRow>> {
    let mut rows: Vec<FixedRow> = Vec::new();
    for group in [Group::Record5k, Group::NoBody] {
        let Some(bare) = report::find(results, group, Role::Bare) else {
            continue;
        };
        let consentry_warm = results.iter().any(|r| {
            r.row.group == group && r.row.role == Role::Consentry && r.row.tokens == Tokens::Same
        });
        if !consentry_warm {
            continue;
        }
        for (&fraction, role) in options
            .fixed_fractions
            .iter()
            .flat_map(|f| [(f, Role::Bare), (f, Role::Consentry)])
        {
            rows.push(FixedRow {
                group,
                role,
                fraction,
                rate: (bare.rps * fraction).round(),
                p50_ms: Vec::new(),
                p99_ms: Vec::new(),
                achieved: Vec::new(),
                errors: 0,
            });
        }
    }
    for rep in 0..options.repetitions {
        for k in 0..rows.len() {
            // Alternate which configuration of a pair goes first.
            let i = if rep % 2 == 0 { k } else { k ^ 1 };
            let Some(row) = rows.get_mut(i) else {
                continue;
            };
            let envoy = envoys
                .get(&row.role)
                .ok_or_else(|| anyhow!("no Envoy for {:?}", row.role))?;
            let plan = fixed::Plan {
                addr: envoy.listen_addr(),
                path: row.group.path().to_owned(),
                headers: vec![auth.to_owned()],
                rate: row.rate,
                duration: Duration::from_secs(u64::from(options.fixed_seconds)),
                connections: FIXED_CONNECTIONS,
                expect_status: if row.group == Group::NoBody { 204 } else { 200 },
            };
            let l = fixed::run(&plan)?;
            eprintln!(
                "[{}/{}] fixed {:>6} req/s {:<6} {:<10} p50 {:.3} ms  p99 {:.3} ms  ({} req/s done, {} errors)",
                rep + 1,
                options.repetitions,
                report::thousands(row.rate),
                row.group.slug(),
                format!("{:?}", row.role),
                l.quantile_ms(0.5),
                l.quantile_ms(0.99),
                report::thousands(l.achieved()),
                l.errors
            );
            row.p50_ms.push(l.quantile_ms(0.5));
            row.p99_ms.push(l.quantile_ms(0.99));
            row.achieved.push(l.achieved());
            row.errors += l.errors;
        }
    }
    Ok(rows)
}

/// The fixed-load table: each configuration's p50 and p99 (medians over the
/// repetitions) and what Consentry adds over bare Envoy.
pub fn fixed_table(rows: &[FixedRow]) -> String {
    use report::median;
    let mut t = String::from(
        "| fixed load | offered req/s | p50 ms | p99 ms | p50 added ms | p99 added ms | errors |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let bare = rows
            .iter()
            .find(|r| r.group == row.group && r.fraction == row.fraction && r.role == Role::Bare);
        let (p50, p99) = (median(row.p50_ms.clone()), median(row.p99_ms.clone()));
        let added = |f: &dyn Fn(&FixedRow) -> f64| match (row.role, bare) {
            (Role::Consentry, Some(b)) => format!("{:+.3}", f(row) - f(b)),
            _ => "–".to_owned(),
        };
        t.push_str(&format!(
            "| {} {}, {:.0}% of bare's capacity | {} | {:.3} | {:.3} | {} | {} | {} |\n",
            row.group.slug(),
            if row.role == Role::Bare {
                "bare Envoy"
            } else {
                "Consentry, warm"
            },
            row.fraction * 100.0,
            report::thousands(row.rate),
            p50,
            p99,
            added(&|r| median(r.p50_ms.clone())),
            added(&|r| median(r.p99_ms.clone())),
            row.errors
        ));
    }
    t
}

fn errors_note(m: &Measured) -> String {
    if m.status_errors + m.socket_errors > 0 {
        format!(
            "  ({} error statuses, {} socket errors)",
            m.status_errors, m.socket_errors
        )
    } else {
        String::new()
    }
}

/// The goals the benchmark is held to, each measured beside its goal, as lines of
/// text (measured, never asserted: the machine is shared and drifts).
pub fn targets(results: &[RowResult], fixed: &[FixedRow]) -> Vec<String> {
    let mut lines = Vec::new();
    let check = |ok: bool| if ok { "met" } else { "NOT met" };
    let consentry = |group: Group, tokens: Tokens| {
        results
            .iter()
            .find(|r| {
                r.row.group == group && r.row.role == Role::Consentry && r.row.tokens == tokens
            })
            .map(RowResult::summary)
    };
    let mut ratio = |what: &str, group: Group, tokens: Tokens, peer: Role, goal: f64| {
        let row = results.iter().find(|r| {
            r.row.group == group && r.row.role == Role::Consentry && r.row.tokens == tokens
        });
        if let Some(r) = row.and_then(|row| report::paired_ratio(results, row, peer)) {
            lines.push(format!(
                "{what}: {r:.2} × (goal ≥ {goal} ×: {})",
                check(r >= goal)
            ));
        }
    };
    ratio(
        "warm, 5 KB record, × bare Envoy",
        Group::Record5k,
        Tokens::Same,
        Role::Bare,
        0.50,
    );
    ratio(
        "warm, no body, × bare Envoy",
        Group::NoBody,
        Tokens::Same,
        Role::Bare,
        0.65,
    );
    ratio(
        "cold (new ES256 token each), 5 KB, × bare Envoy",
        Group::Record5k,
        Tokens::Fresh,
        Role::Bare,
        0.25,
    );
    ratio(
        "warm, 64 KB record, × the transform filter",
        Group::Record64k,
        Tokens::Same,
        Role::Transform,
        10.0,
    );
    ratio(
        "warm, 5 KB record, × jwt_authn + rbac with its cache",
        Group::Record5k,
        Tokens::Same,
        Role::JwtCached,
        1.0,
    );
    for f in fixed.iter().filter(|r| r.role == Role::Bare) {
        let group = f.group;
        let row = |role| {
            fixed
                .iter()
                .find(|r| r.group == group && r.fraction == f.fraction && r.role == role)
        };
        if let (Some(b), Some(c)) = (row(Role::Bare), row(Role::Consentry)) {
            let m = |v: &Vec<f64>| report::median(v.clone());
            let p50 = m(&c.p50_ms) - m(&b.p50_ms);
            let p99 = m(&c.p99_ms) - m(&b.p99_ms);
            lines.push(format!(
                "added latency at a fixed load of {} req/s ({:.0}% of bare's capacity, {}): p50 {p50:+.3} ms, p99 {p99:+.3} ms (goal p99 ≤ 0.3 ms at 50%: {})",
                report::thousands(b.rate),
                b.fraction * 100.0,
                group.slug(),
                check(p99 <= 0.3)
            ));
        }
    }
    if let (Some(c), Some(w)) = (
        consentry(Group::Record5k, Tokens::Fresh),
        consentry(Group::Record5k, Tokens::Same),
    ) && c.single_p50_ms > 0.0
        && w.single_p50_ms > 0.0
    {
        lines.push(format!(
            "cold − warm on one connection (p50): {:.0} µs per request (one ES256 verification in V8, plus the cache insert)",
            (c.single_p50_ms - w.single_p50_ms) * 1000.0
        ));
    }
    lines
}

/// Writes `bench.md`, `bench.csv` and `bench.svg` into `options.out`.
fn write_results(options: &Options, outcome: &Outcome) -> Result<()> {
    fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let mut md = String::new();
    md.push_str("# Consentry through Envoy: wrk results\n\n");
    md.push_str(&format!(
        "Run at {} for {:.0} s. {}.\n\nLoad average (1, 5, 15 min): {} before, {} after.\n\n",
        outcome.started,
        outcome.elapsed.as_secs_f64(),
        outcome.header,
        outcome.load_before,
        outcome.load_after
    ));
    md.push_str(&report::table(&outcome.results));
    md.push('\n');
    if !outcome.fixed.is_empty() {
        md.push_str(&fixed_table(&outcome.fixed));
        md.push('\n');
    }
    for line in targets(&outcome.results, &outcome.fixed) {
        md.push_str(&format!("- {line}\n"));
    }
    fs::write(options.out.join("bench.md"), md)?;
    fs::write(options.out.join("bench.csv"), report::csv(&outcome.results))?;
    fs::write(
        options.out.join("bench.svg"),
        report::svg(
            &outcome.results,
            "Consentry through Envoy: requests/s (median), wrk -t1 -c32",
        ),
    )?;
    Ok(())
}

/// The current time in UTC, `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
