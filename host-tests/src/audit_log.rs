//! Audit logs on disk: what `consentry audit verify` and `consentry report` read.
//!
//! A log is Envoy's own log (the plugin's records are the lines that carry
//! [`LOG_MARKER`], `... wasm log consentry ...: consentry-audit {"v":2,...}`), or a
//! file of bare JSON records, one per line; other lines are skipped. The record
//! format, its canonical form and what verification detects are documented in
//! [`consentry_core::audit`].

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use consentry_core::audit::{self, AuditKey, Record, VerifyFailure, VerifySummary, shown};

pub use consentry_core::audit::LOG_MARKER;

/// An audit key from the command line: `KID=BASE64` (standard or URL-safe
/// alphabet, padded or not).
pub fn parse_key(spec: &str) -> Result<AuditKey> {
    let Some((kid, b64)) = spec.split_once('=') else {
        bail!("a key is KID=BASE64, e.g. k1=c2VjcmV0LWtleS1ieXRlcw");
    };
    if kid.is_empty() {
        bail!("the key id before '=' is empty");
    }
    let b64 = b64.trim().trim_end_matches('=');
    let secret = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(b64)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b64))
        .with_context(|| format!("the secret of key {kid} is not base64"))?;
    if secret.is_empty() {
        bail!("the secret of key {kid} is empty");
    }
    Ok(AuditKey {
        kid: kid.to_owned(),
        secret,
    })
}

/// Every key of a command line.
pub fn parse_keys(specs: &[String]) -> Result<Vec<AuditKey>> {
    specs.iter().map(|s| parse_key(s)).collect()
}

/// Reads a log file (lossily: a log may hold bytes that are not UTF-8 outside the
/// records; inside a record they change its bytes, and verification says so).
pub fn read_log(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Verifies every chain in a log's text.
pub fn verify_text(text: &str, keys: &[AuditKey]) -> Result<VerifySummary, VerifyFailure> {
    audit::verify(text.lines(), keys)
}

/// The records of a log that parse, with their 1-based line numbers. Unreadable
/// records are left out (verification reports them); this is for reporting.
pub fn records(text: &str) -> (Vec<(usize, Record)>, usize) {
    let mut out = Vec::new();
    let mut unreadable = 0;
    for (i, line) in text.lines().enumerate() {
        let Some(json) = audit::extract_record(line) else {
            continue;
        };
        match Record::parse(json) {
            Ok((record, _hash)) => out.push((i + 1, record)),
            Err(_) => unreadable += 1,
        }
    }
    (out, unreadable)
}

/// What `consentry audit verify` prints, and whether it succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub text: String,
}

/// `consentry audit verify LOG [--key KID=BASE64]...`: a summary (ok), or the first
/// bad record; a log without any record is not ok either (the wrong file, or a proxy
/// that does not log its records).
pub fn verify_file(log: &Path, keys: &[AuditKey]) -> Result<Verdict> {
    let text = read_log(log)?;
    let name = log.display();
    Ok(match verify_text(&text, keys) {
        Ok(summary) if summary.records == 0 => Verdict {
            ok: false,
            text: format!(
                "{name}: no audit records found (lines with '{}' or bare JSON records)\n",
                LOG_MARKER.trim_end()
            ),
        },
        Ok(summary) => Verdict {
            ok: true,
            text: format!("{name}: {}", describe(&summary)),
        },
        Err(failure) => Verdict {
            ok: false,
            text: format!("{name}: {failure}\n{}", hint(&failure)),
        },
    })
}

/// The summary of a verified log, several lines.
pub fn describe(s: &VerifySummary) -> String {
    let mut out = format!(
        "ok: {} chain{}, {} record{}, {} to {}\n",
        s.chains.len(),
        plural(s.chains.len() as u64),
        s.records,
        plural(s.records),
        s.first_time.as_deref().unwrap_or("-"),
        s.last_time.as_deref().unwrap_or("-"),
    );
    for c in &s.chains {
        let keyed = if c.kids.is_empty() {
            "unkeyed (SHA-256)".to_owned()
        } else {
            let kids: Vec<_> = c.kids.iter().map(|k| shown(k)).collect();
            format!("keyed with {}", kids.join(", "))
        };
        let checkpoints = if c.checkpoints > 0 {
            format!(" ({} checkpoint{})", c.checkpoints, plural(c.checkpoints))
        } else {
            String::new()
        };
        out.push_str(&format!(
            "  chain {}: {} record{}{checkpoints}, {keyed}, {} to {}\n",
            shown(&c.chain),
            c.records,
            plural(c.records),
            c.first_time,
            c.last_time
        ));
    }
    if s.chains.iter().any(|c| c.kids.is_empty()) {
        out.push_str(
            "note: unkeyed chains detect accidents and naive edits only; configure an audit key for tamper evidence\n",
        );
    }
    for w in &s.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}

fn hint(failure: &VerifyFailure) -> String {
    match &failure.reason {
        audit::FailureReason::UnknownKey(kid) => {
            format!(
                "hint: pass the audit key with --key {}=BASE64\n",
                shown(kid)
            )
        }
        _ => String::new(),
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}
