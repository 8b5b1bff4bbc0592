//! `consentry`: the command-line tool for policy authors and CI pipelines. It runs
//! the real `.wasm` in the wasmtime host, so what it shows is what the proxy does.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use consentry_host::replay::{Exchange, config_as_json};
use consentry_host::{
    Plugin, Proxy, StartError, audit_log, plugin::default_wasm_path, report, serve,
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
    /// Repeatable. Without any, the CONSENTRY_* variables of this process are passed.
    #[arg(long = "env", global = true, value_name = "NAME=VALUE")]
    env: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration (JSON or YAML): exit 0, or print each error with its
    /// location and exit 1.
    Check {
        /// The filter configuration.
        config: PathBuf,
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

/// The VM's environment: `--env` pairs, or this process's CONSENTRY_* variables.
fn vm_env(given: &[String]) -> Result<Vec<(String, String)>> {
    if given.is_empty() {
        return Ok(std::env::vars()
            .filter(|(k, _)| k.starts_with("CONSENTRY_"))
            .collect());
    }
    given
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--env {kv}: expected NAME=VALUE"))
        })
        .collect()
}

fn run(cli: Cli) -> Result<ExitCode> {
    let env = vm_env(&cli.env)?;
    match cli.command {
        Command::Check { config } => {
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
                .config(json)
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
