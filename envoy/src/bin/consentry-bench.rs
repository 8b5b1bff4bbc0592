//! `consentry-bench`: wrk through a real Envoy in front of the example service, for bare
//! Envoy, jwt_authn + rbac, the transform filter, a no-op wasm filter and Consentry;
//! prints the table and writes it, a CSV file and an SVG chart to a results folder.
//! See `envoy/BENCHMARKS.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, anyhow, bail};
use consentry_envoy::bench::{self, Group, Options, report};

const USAGE: &str = "\
usage: consentry-bench [--quick] [--reps N] [--seconds S] [--single-seconds S]
                       [--warmup S] [--connections N] [--group 5k|nobody|64k]...
                       [--only TEXT]... [--wasm PATH] [--compare-wasm PATH] [--policy FILE]
                       [--decompose] [--out DIR]
       consentry-bench --in-wasm [--budget-ms MS] [--module PATH] [--out DIR]

  --quick             the smoke run: the 5 KB group once, 1 s per run, no warm-up
  --reps N            repetitions, interleaved (default 5)
  --seconds S         seconds per measured run under load (default 6)
  --single-seconds S  seconds per run on one connection, 0 for none (default 3)
  --warmup S          seconds of unmeasured load before each run (default 1)
  --connections N     wrk connections under load, one wrk thread (default 32)
  --group G           only this group (repeatable)
  --only TEXT         only rows whose id contains TEXT (repeatable), e.g. consentry
  --wasm PATH         the Consentry .wasm (default: the release build)
  --compare-wasm PATH another Consentry .wasm run beside it (e.g. a build from before a change)
  --out DIR           where bench.md, bench.csv and bench.svg go (default results/envoy)
  --policy FILE       another plugin configuration for the Consentry rows (it must allow
                      the insurer persona on the same paths; default: policies/example.json
                      with the additions described in envoy/BENCHMARKS.md)
  --decompose         add rows where the benchmark module does parts of Consentry's work
                      alone (holding and re-setting the body, one log line per request)
  --in-wasm           instead: the benchmark module's cases (redactor, verification,
                      policy) natively and inside Envoy's V8; writes in-wasm.md
  --budget-ms MS      time per case of --in-wasm (default 300)
  --module PATH       another build of the benchmark module

Needs wrk (apt-get install -y wrk), Envoy (./envoy/install.sh) and the release builds of
the plugin and the no-op filter:
  cargo build --release --target wasm32-wasip1 -p consentry-filter -p consentry-noop-filter";

/// What to run.
enum Mode {
    Load(Options),
    InWasm {
        budget_ms: u64,
        module: Option<PathBuf>,
        out: PathBuf,
    },
}

fn parse(args: &[String]) -> Result<Mode> {
    if args.iter().any(|a| a == "--in-wasm") {
        let mut budget_ms = 300;
        let mut module = None;
        let mut out = Options::full().out;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| anyhow!("{arg} needs a value\n\n{USAGE}"))
            };
            match arg.as_str() {
                "--in-wasm" => {}
                "--budget-ms" => {
                    let v = value()?;
                    budget_ms = v
                        .parse()
                        .map_err(|_| anyhow!("--budget-ms: {v:?} is not a whole number"))?;
                }
                "--module" => module = Some(PathBuf::from(value()?)),
                "--out" => out = PathBuf::from(value()?),
                other => bail!("unknown argument {other:?} for --in-wasm\n\n{USAGE}"),
            }
        }
        return Ok(Mode::InWasm {
            budget_ms,
            module,
            out,
        });
    }
    parse_load(args).map(Mode::Load)
}

fn parse_load(args: &[String]) -> Result<Options> {
    let mut options = if args.iter().any(|a| a == "--quick") {
        Options::quick()
    } else {
        Options::full()
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| anyhow!("{arg} needs a value\n\n{USAGE}"))
        };
        let number = |v: String| -> Result<u32> {
            v.parse()
                .map_err(|_| anyhow!("{arg}: {v:?} is not a whole number"))
        };
        match arg.as_str() {
            "--quick" => {}
            "--reps" => options.repetitions = number(value()?)?.max(1),
            "--seconds" => options.seconds = number(value()?)?.max(1),
            "--single-seconds" => options.single_seconds = number(value()?)?,
            "--warmup" => options.warmup_seconds = number(value()?)?,
            "--connections" => options.connections = number(value()?)?.max(1),
            "--group" => {
                let v = value()?;
                options.groups.push(
                    Group::parse(&v)
                        .ok_or_else(|| anyhow!("--group: 5k, nobody or 64k, not {v:?}"))?,
                );
            }
            "--only" => options.only.push(value()?),
            "--wasm" => options.wasm = Some(PathBuf::from(value()?)),
            "--compare-wasm" => options.compare_wasm = Some(PathBuf::from(value()?)),
            "--out" => options.out = PathBuf::from(value()?),
            "--policy" => options.policy = Some(PathBuf::from(value()?)),
            "--decompose" => options.decompose = true,
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let result = parse(&args).and_then(|mode| match mode {
        Mode::Load(o) => run(&o),
        Mode::InWasm {
            budget_ms,
            module,
            out,
        } => bench::inwasm::run(budget_ms, module, &out).map(|report| {
            println!("{report}");
            println!("written: {}", out.join("in-wasm.md").display());
        }),
    });
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
    for line in bench::targets(&outcome.results) {
        println!("- {line}");
    }
    println!();
    println!(
        "written: {} (bench.md, bench.csv, bench.svg)",
        options.out.display()
    );
    Ok(())
}
