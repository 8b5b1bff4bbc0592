//! `consentry-bench`: wrk through a real Envoy in front of the example service, for bare
//! Envoy, jwt_authn + rbac, the transform filter, a no-op wasm filter and Consentry;
//! prints the table and writes it, a CSV file and an SVG chart to a results folder.
//! See `envoy/BENCHMARKS.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Parser;
use consentry_envoy::bench::{self, AuditTrail, Group, Options, report};

/// wrk through a real Envoy (--concurrency 1, 127.0.0.1) in front of the example
/// service: bare Envoy, jwt_authn + rbac, the transform filter, a no-op wasm filter and
/// Consentry, side by side. Prints the table with ratios and writes bench.md, bench.csv
/// and bench.svg to the results folder.
///
/// Needs wrk (apt-get install -y wrk), Envoy (./envoy/install.sh) and the release builds
/// of the plugin, the no-op filter and the benchmark module; ./envoy/bench.sh does all of
/// it. See envoy/BENCHMARKS.md.
#[derive(Parser, Debug)]
#[command(name = "consentry-bench")]
struct Cli {
    /// The smoke run: the 5 KB group once, 1 s per run, no warm-up (other options
    /// still apply on top)
    #[arg(long)]
    quick: bool,
    /// Repetitions, interleaved [default: 5]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    reps: Option<u32>,
    /// Seconds per measured run under load [default: 6]
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(1..))]
    seconds: Option<u32>,
    /// Seconds per run on one connection, 0 for none [default: 3]
    #[arg(long, value_name = "S")]
    single_seconds: Option<u32>,
    /// Seconds of unmeasured load before each run [default: 1]
    #[arg(long, value_name = "S")]
    warmup: Option<u32>,
    /// wrk connections under load, one wrk thread [default: 32]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    connections: Option<u32>,
    /// Only this group: 5k, nobody or 64k (repeatable)
    #[arg(long, value_name = "G", value_parser = parse_group)]
    group: Vec<Group>,
    /// Only rows whose id contains TEXT (repeatable), e.g. consentry
    #[arg(long, value_name = "TEXT")]
    only: Vec<String>,
    /// The Consentry .wasm [default: the release build]
    #[arg(long, value_name = "PATH")]
    wasm: Option<PathBuf>,
    /// Another Consentry .wasm run beside it (e.g. a build from before a change)
    #[arg(long, value_name = "PATH")]
    compare_wasm: Option<PathBuf>,
    /// Another plugin configuration for the Consentry rows; it must allow the insurer
    /// persona on the same paths [default: policies/example.json with the benchmark's
    /// additions]
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Add rows where the benchmark module does parts of Consentry's work alone
    /// (holding and re-setting the body, one log line per request)
    #[arg(long)]
    decompose: bool,
    /// Where Consentry's audit records go: collector (shipped in batches, the
    /// README's production setting), log (a line in Envoy's log each) or off
    /// [default: collector]
    #[arg(long, value_name = "TRAIL", value_parser = parse_audit)]
    audit: Option<AuditTrail>,
    /// Seconds of each fixed-load latency run (half bare Envoy's capacity, open
    /// loop), 0 for none [default: 10; 1 with --quick]
    #[arg(long, value_name = "S")]
    fixed_seconds: Option<u32>,
    /// An offered load of the fixed-load runs, as a fraction of bare Envoy's
    /// capacity (repeatable) [default: 0.5]
    #[arg(long, value_name = "F", value_parser = parse_fraction)]
    fixed_fraction: Vec<f64>,
    /// Instead: how the cost grows, against the body's size (1 KB to 1 MB) and the
    /// policy's size (routes × rules), bare Envoy beside Consentry at each point;
    /// writes curves.md, curves-body.svg and curves-policy.svg
    #[arg(long, conflicts_with_all = ["group", "only", "compare_wasm", "policy", "decompose", "fixed_seconds", "fixed_fraction"])]
    curves: bool,
    /// Instead: the benchmark module's cases (redactor, verification, policy, host
    /// calls) natively and inside Envoy's V8; writes in-wasm.md
    #[arg(long, conflicts_with_all = ["quick", "reps", "seconds", "single_seconds", "warmup", "connections", "group", "only", "wasm", "compare_wasm", "policy", "decompose", "audit", "fixed_seconds", "fixed_fraction"])]
    in_wasm: bool,
    /// Time per case of --in-wasm, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 300, requires = "in_wasm")]
    budget_ms: u64,
    /// Another build of the benchmark module (--in-wasm)
    #[arg(long, value_name = "PATH", requires = "in_wasm")]
    module: Option<PathBuf>,
    /// Where the results go [default: results/envoy]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|f| *f > 0.0 && *f <= 1.0)
        .ok_or_else(|| format!("a fraction in (0, 1], not {text:?}"))
}

fn parse_audit(text: &str) -> Result<AuditTrail, String> {
    AuditTrail::parse(text).ok_or_else(|| format!("collector, log or off, not {text:?}"))
}

fn parse_group(text: &str) -> Result<Group, String> {
    Group::parse(text).ok_or_else(|| format!("5k, nobody or 64k, not {text:?}"))
}

impl Cli {
    /// The load run's options: the quick or the full defaults, then what was given.
    fn options(self) -> Options {
        let mut o = if self.quick {
            Options::quick()
        } else {
            Options::full()
        };
        o.repetitions = self.reps.unwrap_or(o.repetitions);
        o.seconds = self.seconds.unwrap_or(o.seconds);
        o.single_seconds = self.single_seconds.unwrap_or(o.single_seconds);
        o.warmup_seconds = self.warmup.unwrap_or(o.warmup_seconds);
        o.connections = self.connections.unwrap_or(o.connections);
        if !self.group.is_empty() {
            o.groups = self.group;
        }
        o.only = self.only;
        o.wasm = self.wasm;
        o.compare_wasm = self.compare_wasm;
        o.policy = self.policy;
        o.decompose = self.decompose;
        o.audit = self.audit.unwrap_or(o.audit);
        o.fixed_seconds = self.fixed_seconds.unwrap_or(o.fixed_seconds);
        if !self.fixed_fraction.is_empty() {
            o.fixed_fractions = self.fixed_fraction;
        }
        if let Some(out) = self.out {
            o.out = out;
        }
        o
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = if cli.in_wasm {
        let out = cli.out.clone().unwrap_or_else(|| Options::full().out);
        bench::inwasm::run(cli.budget_ms, cli.module.clone(), &out).map(|report| {
            println!("{report}");
            println!("written: {}", out.join("in-wasm.md").display());
        })
    } else if cli.curves {
        let options = cli.options();
        bench::curves::run(&options).map(|curves| {
            println!("{}", bench::curves::tables(&curves));
            println!(
                "written: {} (curves.md, curves-body.svg, curves-policy.svg)",
                options.out.display()
            );
        })
    } else {
        run(&cli.options())
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("consentry-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &Options) -> Result<()> {
    let outcome = bench::run(options).context("the benchmark failed")?;
    println!();
    println!("# Consentry through Envoy");
    println!();
    println!("{}", outcome.header);
    println!(
        "load average {} before, {} after; {:.0} s",
        outcome.load_before,
        outcome.load_after,
        outcome.elapsed.as_secs_f64()
    );
    println!();
    print!("{}", report::table(&outcome.results));
    println!();
    if !outcome.fixed.is_empty() {
        print!("{}", bench::fixed_table(&outcome.fixed));
        println!();
    }
    for line in bench::targets(&outcome.results, &outcome.fixed) {
        println!("- {line}");
    }
    println!();
    println!(
        "written: {} (bench.md, bench.csv, bench.svg)",
        options.out.display()
    );
    Ok(())
}
