//! `consentry`: the command-line tool for policy authors and CI pipelines. It runs
//! the real `.wasm` in the wasmtime host, so what it shows is what the proxy does.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use consentry_host::replay::{Exchange, config_as_json};
use consentry_host::{Plugin, Proxy, StartError, plugin::default_wasm_path};

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
    /// Run one exchange (a REQUEST file) through the plugin and print what the
    /// client and the upstream saw, as JSON. Exits 0 whatever the decision.
    Replay {
        config: PathBuf,
        request: PathBuf,
        /// Print indented JSON.
        #[arg(long)]
        pretty: bool,
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

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { config } => {
            let json = read_config(&config)?;
            let started = Proxy::builder(plugin(cli.wasm)?)
                .config(json)
                .main_thread(false)
                .start();
            match started {
                Ok(_) => {
                    println!("{}: ok", config.display());
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
            let replay = exchange.run(plugin(cli.wasm)?, json.as_bytes())?;
            let out = if pretty {
                serde_json::to_string_pretty(&replay)?
            } else {
                serde_json::to_string(&replay)?
            };
            println!("{out}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
