//! The benchmark module's cases inside Envoy's V8: the module (`host-tests/bench-wasm`)
//! is loaded by `consentry.yaml` in place of the plugin and answers `POST /bench` on the
//! worker thread; the same cases run natively here, and the harness's wasmtime answers
//! (`results/harness-in-wasm.json`, written by `cargo bench -p consentry-host --bench
//! in_wasm`) are shown beside them when present.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use consentry_bench_wasm::suite::{self, Engine};
use serde_json::Value;

use crate::{Envoy, free_port, project_root, send_with_timeout};

/// The command that builds the benchmark module.
pub const BUILD_COMMAND: &str =
    "cargo build -p consentry-bench-wasm --target wasm32-wasip1 --release";

/// The benchmark module's release build.
pub fn module_path() -> Result<PathBuf> {
    let path = crate::wasm_path()?.with_file_name("consentry_bench_wasm.wasm");
    if path.is_file() {
        Ok(path)
    } else {
        bail!(
            "the benchmark module is missing at {}; build it with `{BUILD_COMMAND}`",
            path.display()
        )
    }
}

/// Runs every case natively and in V8, and returns the report (also written to
/// `out/in-wasm.md`).
pub fn run(budget_ms: u64, module: Option<PathBuf>, out: &std::path::Path) -> Result<String> {
    let cases = suite::suite(budget_ms).map_err(|e| anyhow!(e))?;
    let module = match module {
        Some(m) => m,
        None => module_path()?,
    };
    let envoy = Envoy::builder()
        .template("consentry.yaml")
        .wasm(&module)
        .plugin_config_json("{}")
        .upstream_port(free_port())
        .concurrency(1)
        .log_level("warning")
        .start()
        .context("starting Envoy with the benchmark module")?;
    let url = format!("{}/bench", envoy.base_url());
    let mut native = Vec::new();
    let mut v8 = Vec::new();
    for c in &cases {
        let request = c.request.to_string();
        let n: Value = serde_json::from_str(&consentry_bench_wasm::run(request.as_bytes()))?;
        let r = send_with_timeout(
            "POST",
            &url,
            &[("content-type", "application/json")],
            Some(request.as_bytes()),
            Duration::from_secs(120),
        )?;
        let v: Value = r
            .json()
            .with_context(|| format!("{}: V8 answered {}", c.id, r.status))?;
        eprintln!(
            "{:<28} native {:>12} ns   V8 {:>12} ns",
            c.id,
            n["ns_per_op"]
                .as_f64()
                .map_or(format!("{n}"), |x| format!("{x:.0}")),
            v["ns_per_op"]
                .as_f64()
                .map_or(format!("{v}"), |x| format!("{x:.0}")),
        );
        native.push(n);
        v8.push(v);
    }
    // What one host call of each kind costs in V8 (the harness has no such figure:
    // its host calls are Rust functions, not Envoy's).
    let r = send_with_timeout(
        "POST",
        &url,
        &[("content-type", "application/json")],
        Some(br#"{"kind":"hostcalls","iterations":5000}"#),
        Duration::from_secs(120),
    )?;
    let calls: Value = r.json().context("the host-call costs")?;
    drop(envoy);
    let harness = project_root().join("results").join("harness-in-wasm.json");
    let wasmtime: Option<Vec<Value>> = fs::read_to_string(&harness)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .map(|all| cases.iter().map(|c| all[&c.id].clone()).collect());
    let mut engines = vec![Engine {
        name: "native",
        answers: &native,
    }];
    if let Some(w) = &wasmtime {
        engines.push(Engine {
            name: "wasmtime",
            answers: w,
        });
    }
    engines.push(Engine {
        name: "V8",
        answers: &v8,
    });
    let mut report = suite::report(&cases, &engines);
    if wasmtime.is_some() {
        report.push_str(&format!(
            "\n(wasmtime: from {}, an earlier run of the harness benchmark.)\n",
            harness.display()
        ));
    }
    report.push_str("\n### Host calls from the .wasm into Envoy (V8), ns per call\n\n| call | ns |\n|---|---:|\n");
    for c in calls["hostcalls"].as_array().into_iter().flatten() {
        report.push_str(&format!(
            "| {} | {:.0} |\n",
            c["call"].as_str().unwrap_or("?"),
            c["ns"].as_f64().unwrap_or(0.0)
        ));
    }
    fs::create_dir_all(out)?;
    fs::write(out.join("in-wasm.md"), &report)?;
    Ok(report)
}
