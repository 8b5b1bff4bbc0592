//! `example-service`: runs the example upstream on a port until SIGTERM/SIGINT.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use consentry_example_service::ServiceState;

/// The example patient-record service that Consentry is demonstrated and tested against.
#[derive(Parser, Debug)]
#[command(name = "example-service", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port (the line printed at start says which).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: String,
    /// A patients file to serve instead of the built-in examples/data/patients.json.
    #[arg(long)]
    data: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let state = match &args.data {
        Some(path) => {
            ServiceState::load(path).with_context(|| format!("loading {}", path.display()))?
        }
        None => ServiceState::builtin().context("loading the built-in data")?,
    };
    let listener = consentry_example_service::bind(&args.listen)
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    // Scripts wait for exactly this line before sending requests.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{addr}")?;
    stdout.flush()?;
    drop(stdout);
    consentry_example_service::serve_with_shutdown(listener, state, stop_signal())
        .await
        .context("serving")
}

/// Completes on SIGINT or SIGTERM (or when signals cannot be watched, which is
/// better than a server that cannot be stopped gracefully... it still stops on SIGKILL).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
