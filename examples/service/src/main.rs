//! `example-service`: runs the example upstream on a port until SIGTERM/SIGINT.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use consentry_example_service::issuer::{Alg, SigningKey};
use consentry_example_service::{Bank, ConsentConfig, ServiceState};

/// The example patient-record and bank-account service that Consentry is demonstrated
/// and tested against.
#[derive(Parser, Debug)]
#[command(name = "example-service", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port (the line printed at start says which).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: String,
    /// A patients file to serve instead of the built-in examples/data/patients.json.
    #[arg(long)]
    data: Option<PathBuf>,
    /// An accounts file to serve instead of the built-in examples/data/accounts.json.
    #[arg(long, value_name = "FILE")]
    accounts: Option<PathBuf>,
    /// The JWKS to serve at /.well-known/jwks.json at start (default: the development
    /// examples/keys/jwks.json); PUT /admin/jwks replaces it at run time.
    #[arg(long, value_name = "FILE")]
    jwks: Option<PathBuf>,
    /// PKCS#8 PEM private key that signs the status lists (default: the development key
    /// examples/keys/issuer-es256.pem, kid dev-2026-1).
    #[arg(long, value_name = "PEM", requires = "signing_kid")]
    signing_key: Option<PathBuf>,
    /// `kid` of --signing-key.
    #[arg(long, value_name = "KID")]
    signing_kid: Option<String>,
    /// Algorithm of --signing-key (default: the key's own: ES256, EdDSA or RS256).
    #[arg(long, value_name = "ALG")]
    signing_alg: Option<Alg>,
    /// Bits per status in the status lists: 1, 2, 4 or 8.
    #[arg(long, default_value_t = consentry_example_service::DEFAULT_STATUS_BITS)]
    status_bits: u8,
    /// `ttl` of the status-list tokens, in seconds.
    #[arg(long, default_value_t = consentry_example_service::DEFAULT_STATUS_TTL_SECONDS)]
    status_ttl: u64,
    /// Entries of each status list (all valid at start).
    #[arg(long, default_value_t = consentry_example_service::DEFAULT_STATUS_LIST_LEN)]
    status_list_len: usize,
    /// A status list's URI (the `sub` of its token) is this plus its id.
    #[arg(long, default_value = consentry_example_service::issuer::STATUS_LIST_PREFIX)]
    status_uri_prefix: String,
}

/// The consent endpoints' configuration from the command line.
fn consent_config(args: &Args) -> anyhow::Result<ConsentConfig> {
    let mut config = ConsentConfig::builtin().context("loading the development key")?;
    if let Some(path) = &args.jwks {
        let jwks = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        config.jwks = jwks.into();
    }
    if let Some(path) = &args.signing_key {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        config.signing_key =
            SigningKey::from_pem(&pem, args.signing_kid.as_deref(), args.signing_alg)
                .with_context(|| format!("loading {}", path.display()))?;
    }
    config.status_bits = args.status_bits;
    config.status_ttl_seconds = args.status_ttl;
    config.status_list_len = args.status_list_len;
    config.status_uri_prefix = args.status_uri_prefix.clone();
    Ok(config)
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
    let state = match &args.accounts {
        Some(path) => state
            .with_bank(Bank::load(path).with_context(|| format!("loading {}", path.display()))?),
        None => state,
    };
    let state = state
        .with_consent(consent_config(&args)?)
        .context("configuring the consent endpoints")?;
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
