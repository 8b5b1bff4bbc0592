//! Consent tokens for the benchmark: the insurer persona's, signed with the development
//! key. A warm run sends one token again and again; a cold run needs a token that no
//! cache has seen for every request, so tokens are minted in bulk (on every core, before
//! the run, while nothing is measured), each with its own `nonce` claim so that no two
//! are alike.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use consentry_example_service::issuer::{CONSENT_TYP, SigningKey};
use consentry_example_service::personas::{DEFAULT_TTL_SECONDS, Personas};
use serde_json::{Map, Value};

/// The persona whose consent the benchmark presents.
pub const PERSONA: &str = "insurer";

/// Mints tokens with distinct nonces (a counter shared by every batch of a run).
pub struct Minter {
    key: SigningKey,
    claims: Map<String, Value>,
    next: AtomicU64,
}

impl Minter {
    /// The insurer's claims, issued now for the default lifetime (an hour).
    pub fn new() -> Result<Self> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| anyhow!("the clock is before 1970"))?
            .as_secs();
        let claims = Personas::builtin()?.claims(Some(PERSONA), now, DEFAULT_TTL_SECONDS)?;
        Ok(Self {
            key: SigningKey::dev().context("loading the development signing key")?,
            claims,
            next: AtomicU64::new(0),
        })
    }

    /// One token, unlike any other this minter makes.
    pub fn token(&self) -> Result<String> {
        let mut claims = self.claims.clone();
        let nonce = self.next.fetch_add(1, Ordering::Relaxed);
        claims.insert("nonce".into(), Value::from(nonce));
        Ok(self.key.sign(CONSENT_TYP, &Value::Object(claims))?)
    }

    /// Writes `count` fresh tokens to `path`, one a line, minting on every core.
    pub fn write_fresh(&self, count: usize, path: &Path) -> Result<()> {
        let workers = thread::available_parallelism().map_or(1, |n| n.get());
        let per = count.div_ceil(workers);
        let batches: Vec<Result<Vec<String>>> = thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    let n = per.min(count.saturating_sub(w * per));
                    s.spawn(move || (0..n).map(|_| self.token()).collect())
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("a minting thread failed")))
                })
                .collect()
        });
        let mut out = std::io::BufWriter::new(fs::File::create(path)?);
        for batch in batches {
            for token in batch? {
                out.write_all(token.as_bytes())?;
                out.write_all(b"\n")?;
            }
        }
        out.flush()?;
        Ok(())
    }
}
