//! `consentry`: the command-line tool for policy authors and CI pipelines. It runs
//! the real `.wasm` in the wasmtime host, so what it shows is what the proxy does.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use consentry_host::replay::{Exchange, config_as_json};
use consentry_host::{
    Plugin, Proxy, StartError, audit_log, plugin::default_wasm_path, policy_test, report, serve,
};

#[derive(Parser)]
#[command(
    name = "consentry",
    version,
    about = "Test Consentry policies against the real plugin"
)]
struct Cli {
    /// The plugin to run (default: the workspace's release build, or $CONSENTRY_WASM).
    #[arg(long, global = true, value_name = "PATH")]
    wasm: Option<PathBuf>,
    /// An environment variable of the plugin's VM (Envoy's
    /// vm_config.environment_variables), e.g. the secrets a configuration names.
    /// Repeatable. Without any, the CONSENTRY_* variables of this process are passed
    /// (but to `test`: a test file sets its own, and these are set over them).
    #[arg(long = "env", global = true, value_name = "NAME=VALUE")]
    env: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration (JSON or YAML): exit 0, or print each error with its
    /// location and exit 1. A valid one may still get warnings (`warning: FILE:
    /// LOCATION: why`) for what is legal but likely wrong; they do not change the exit.
    Check {
        /// The filter configuration.
        config: PathBuf,
        /// Test files (or directories of them) whose upstream answers are the routes'
        /// example responses, for the field-path warnings (repeatable; default: the
        /// `tests` directory beside CONFIG, when there is one).
        #[arg(long = "examples", value_name = "PATH")]
        examples: Vec<PathBuf>,
    },
    /// Run policy test files (`*.test.yaml`, `*.test.yml`, `*.test.json`; directories
    /// are searched) through the plugin, in parallel: a summary with a diff for each
    /// failure; exit 1 when any case fails.
    Test {
        /// Test files and directories.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Also write a JUnit XML report here.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Rewrite the golden files (`body_file`) of cases that pass otherwise.
        #[arg(long)]
        update: bool,
        /// Cases run at once (default: the number of CPUs).
        #[arg(long, short = 'j', value_name = "N")]
        jobs: Option<usize>,
    },
    /// Explain the decision for one request (a REQUEST file): allowed or refused, the
    /// rule that matched, the reason, and what every field of the response becomes.
    Explain {
        config: PathBuf,
        request: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run one exchange (a REQUEST file) through the plugin and print what the
    /// client and the upstream saw, as JSON. Exits 0 whatever the decision.
    Replay {
        config: PathBuf,
        request: PathBuf,
        /// Print indented JSON.
        #[arg(long)]
        pretty: bool,
    },
    /// Sign a development consent token and print it (compact JWT).
    Mint(consentry_host::mint::MintArgs),
    /// Work with the plugin's audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Write the plugin (the --wasm build) as an OCI image for Istio and Envoy Gateway:
    /// an OCI image layout directory to push with `oras cp --from-oci-layout DIR:TAG
    /// REGISTRY/REPO:TAG` (or skopeo, crane). Prints the manifest digest, the value of
    /// the deployment manifests' `sha256` fields (without its `sha256:` prefix).
    Package {
        /// The directory to write (must not exist, or be empty).
        #[arg(long = "oci", value_name = "DIR")]
        oci: PathBuf,
        /// The tag named in the layout's index.json.
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        tag: String,
    },
    /// Serve the Consentry component (plugin/component, wasi:http) in front of an
    /// upstream: every request is decided, forwarded and redacted as in Envoy.
    /// Audit records go to stderr.
    Serve {
        /// The configuration (JSON or YAML).
        config: PathBuf,
        /// Where allowed requests go: http://host:port.
        #[arg(long, value_name = "URL")]
        upstream: String,
        /// Where the configuration's clusters are (issuer keys, status lists);
        /// the upstream when not given.
        #[arg(long, value_name = "URL")]
        consent: Option<String>,
        /// The address to listen on (HTTP/1.1).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: String,
        /// The component (default: the workspace's release build, or
        /// $CONSENTRY_COMPONENT).
        #[arg(long, value_name = "PATH")]
        component: Option<PathBuf>,
        /// Threads serving requests.
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
    /// Write a self-contained HTML dashboard from an audit log (and Envoy's /stats).
    Report {
        /// The audit log: Envoy's log, or bare JSON records one per line.
        log: PathBuf,
        /// A dump of Envoy's admin /stats (text: `name: value` lines).
        #[arg(long, value_name = "FILE")]
        stats: Option<PathBuf>,
        /// Where to write the page.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        /// An audit key to verify keyed chains with (repeatable).
        #[arg(long = "key", value_name = "KID=BASE64")]
        keys: Vec<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify every hash chain in an audit log: exit 0 with a summary, or exit 1
    /// naming the first bad record.
    Verify {
        /// The audit log: Envoy's log, or bare JSON records one per line.
        log: PathBuf,
        /// An audit key (repeatable); given keys require every record to be keyed.
        #[arg(long = "key", value_name = "KID=BASE64")]
        keys: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("consentry: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn read_config(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    config_as_json(&path.display().to_string(), &text)
}

fn plugin(wasm: Option<PathBuf>) -> Result<std::sync::Arc<Plugin>> {
    Plugin::load(&wasm.unwrap_or_else(default_wasm_path))
}

/// The `--env` pairs given. (`consentry test` takes no variables from this process:
/// each test file sets its own, so a run is the same on every machine.)
fn vm_env_given(given: &[String]) -> Result<Vec<(String, String)>> {
    given
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--env {kv}: expected NAME=VALUE"))
        })
        .collect()
}

/// The warnings for an accepted configuration; none when the core cannot compile it
/// natively (the plugin, which accepted it, is the authority).
fn lint(
    config: &Path,
    json: &str,
    env: &[(String, String)],
    examples: &[PathBuf],
) -> Result<Vec<consentry_host::lint::Warning>> {
    if let Some(missing) = examples.iter().find(|p| !p.exists()) {
        anyhow::bail!(
            "--examples {}: no such file or directory",
            missing.display()
        );
    }
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let (Ok(doc), Ok(compiled)) = (
        serde_json::from_str(json),
        consentry_core::config::Config::from_json(json.as_bytes(), &lookup),
    ) else {
        return Ok(Vec::new());
    };
    let beside = config.parent().unwrap_or(Path::new(".")).join("tests");
    let paths = if examples.is_empty() && beside.is_dir() {
        vec![beside]
    } else {
        examples.to_vec()
    };
    let examples = consentry_host::lint::examples(config, &paths);
    Ok(consentry_host::lint::warnings(&doc, &compiled, &examples))
}

/// The VM's environment: `--env` pairs, or this process's CONSENTRY_* variables.
fn vm_env(given: &[String]) -> Result<Vec<(String, String)>> {
    if given.is_empty() {
        return Ok(std::env::vars()
            .filter(|(k, _)| k.starts_with("CONSENTRY_"))
            .collect());
    }
    vm_env_given(given)
}

fn run(cli: Cli) -> Result<ExitCode> {
    let env = vm_env(&cli.env)?;
    match cli.command {
        Command::Check { config, examples } => {
            // A path that is not there is an error, not a silent lack of examples.
            if let Some(missing) = examples.iter().find(|p| !p.exists()) {
                anyhow::bail!(
                    "--examples {}: no such file or directory",
                    missing.display()
                );
            }
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("reading {}", config.display()))?;
            // A document that does not parse is a refused configuration (exit 1),
            // like one the plugin refuses; 2 is for the tool's own failures.
            let json = match config_as_json(&config.display().to_string(), &text) {
                Ok(json) => json,
                Err(e) => {
                    println!("{e:#}");
                    return Ok(ExitCode::from(1));
                }
            };
            let mut builder = Proxy::builder(plugin(cli.wasm)?)
                .config(json.clone())
                .main_thread(false);
            for (k, v) in &env {
                builder = builder.env(k, v);
            }
            let started = builder.start();
            match started {
                Ok(proxy) => {
                    println!("{}: ok", config.display());
                    // The plugin says which response mode it runs in, and what that
                    // asks of the host.
                    const LOADED: &str = "consentry: configuration loaded; ";
                    if let Some(mode) = proxy
                        .logs()
                        .iter()
                        .find_map(|l| l.message.strip_prefix(LOADED).map(str::to_owned))
                    {
                        println!("{mode}");
                    }
                    for w in lint(&config, &json, &env, &examples)? {
                        println!("warning: {}: {}: {}", config.display(), w.location, w.text);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(StartError::Rejected { logs }) => {
                    const PREFIX: &str = "consentry: configuration refused: ";
                    let mut any = false;
                    for line in logs {
                        if let Some(reason) = line.message.strip_prefix(PREFIX) {
                            println!("{}: {reason}", config.display());
                            any = true;
                        }
                    }
                    if !any {
                        println!("{}: refused by the plugin", config.display());
                    }
                    Ok(ExitCode::from(1))
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Test {
            paths,
            junit,
            update,
            jobs,
        } => {
            let files = policy_test::discover(&paths)?;
            if files.is_empty() {
                anyhow::bail!(
                    "no test files (names ending in {}) under {}",
                    policy_test::TEST_FILE_SUFFIXES.join(", "),
                    paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let options = policy_test::Options {
                jobs: jobs.unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
                }),
                update,
                env: vm_env_given(&cli.env)?,
            };
            let results = policy_test::run(&files, &plugin(cli.wasm)?, &options);
            print!("{}", policy_test::summary(&results));
            if let Some(path) = junit {
                std::fs::write(&path, policy_test::junit_xml(&results)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let all_passed = results
                .iter()
                .all(|f| f.error.is_none() && f.cases.iter().all(|c| c.passed()));
            Ok(if all_passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Replay {
            config,
            request,
            pretty,
        } => {
            let json = read_config(&config)?;
            let text = std::fs::read_to_string(&request)
                .with_context(|| format!("reading {}", request.display()))?;
            let exchange = Exchange::from_json(&text)
                .with_context(|| format!("{} is not a valid REQUEST file", request.display()))?;
            let replay = exchange.run_with_env(plugin(cli.wasm)?, json.as_bytes(), &env)?;
            let out = if pretty {
                serde_json::to_string_pretty(&replay)?
            } else {
                serde_json::to_string(&replay)?
            };
            println!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain {
            config,
            request,
            json,
        } => {
            let config_json = read_config(&config)?;
            let text = std::fs::read_to_string(&request)
                .with_context(|| format!("reading {}", request.display()))?;
            let exchange = Exchange::from_json(&text)
                .with_context(|| format!("{} is not a valid REQUEST file", request.display()))?;
            let replay = exchange.run_with_env(plugin(cli.wasm)?, config_json.as_bytes(), &env)?;
            let explanation = consentry_host::explain::from_replay(&replay);
            if json {
                println!("{}", serde_json::to_string_pretty(&explanation)?);
            } else {
                print!("{}", explanation.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            config,
            upstream,
            consent,
            listen,
            component,
            workers,
        } => {
            let options = serve::Options {
                component: component.unwrap_or_else(serve::default_component_path),
                config_json: read_config(&config)?,
                upstream,
                consent,
                env,
                workers,
                log: serve::Log::Stderr,
            };
            let server = serve::start(options, &listen)?;
            // Scripts wait for this line.
            println!("listening on {}", server.base_url());
            std::io::Write::flush(&mut std::io::stdout())?;
            server.wait()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Mint(args) => {
            println!("{}", args.run()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::Verify { log, keys },
        } => {
            let verdict = audit_log::verify_file(&log, &audit_log::parse_keys(&keys)?)?;
            print!("{}", verdict.text);
            Ok(if verdict.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Package { oci, tag } => {
            let path = cli.wasm.unwrap_or_else(default_wasm_path);
            let wasm = std::fs::read(&path)
                .with_context(|| format!("reading the plugin {}", path.display()))?;
            let packaged = consentry_host::oci::write_layout(&oci, &wasm, &tag)
                .with_context(|| format!("writing {}", oci.display()))?;
            println!("{}", packaged.manifest_digest);
            eprintln!(
                "wrote {} (tag {}); push it, e.g. `oras cp --from-oci-layout {}:{} \
                 REGISTRY/consentry:{}`, and pin sha256: {} in the manifests",
                oci.display(),
                packaged.tag,
                oci.display(),
                packaged.tag,
                packaged.tag,
                packaged.sha256_hex()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            log,
            stats,
            output,
            keys,
        } => {
            let keys = audit_log::parse_keys(&keys)?;
            let written = report::write(&log, stats.as_deref(), &output, &keys)?;
            println!("{written}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
