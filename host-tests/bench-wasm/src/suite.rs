//! The cases every engine runs (native, wasmtime, V8), and the report that puts their
//! answers side by side. Natively only: it mints the tokens with the example issuer's
//! signing code.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use consentry_example_service::issuer::{
    AUDIENCE, Alg, CONSENT_TYP, DEV_JWKS, ED25519_JWKS, ED25519_KEY_PEM, ED25519_KID, ISSUER,
    SigningKey,
};
use consentry_example_service::personas::Personas;
use serde_json::{Value, json};

/// One question for an engine.
#[derive(Debug, Clone)]
pub struct Case {
    pub id: String,
    pub request: Value,
}

/// Body sizes of the redaction cases.
pub const SIZES: [(&str, usize); 3] = [("1 KB", 1 << 10), ("64 KB", 64 << 10), ("1 MB", 1 << 20)];
/// Numbers of redacted paths.
pub const PATHS: [usize; 3] = [1, 10, 100];
/// Token algorithms.
pub const ALGS: [&str; 4] = ["ES256", "RS256", "PS256", "EdDSA"];
/// Routes × rules of the policy cases.
pub const POLICY_SIZES: [usize; 3] = [1, 10, 100];

fn workspace() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.join("..").join("..")
}

fn fixture(name: &str) -> Result<Vec<u8>, String> {
    let path = workspace()
        .join("plugin/core/tests/fixtures/tokens")
        .join(name);
    std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The issuer every token case uses: ES256 (the development key), RS256 and PS256 (a
/// 2048-bit test key of the core's fixtures), EdDSA (the development Ed25519 key).
fn issuers() -> Result<Value, String> {
    let parse = |t: &str| serde_json::from_str::<Value>(t).map_err(|e| e.to_string());
    let mut keys: Vec<Value> = Vec::new();
    for text in [DEV_JWKS, ED25519_JWKS] {
        keys.extend(parse(text)?["keys"].as_array().cloned().unwrap_or_default());
    }
    let fixtures: Value =
        serde_json::from_slice(&fixture("jwks.json")?).map_err(|e| e.to_string())?;
    keys.extend(
        fixtures["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|k| k["kid"] == "rs2048")
            .cloned(),
    );
    Ok(json!([{
        "issuer": ISSUER,
        "algorithms": ALGS,
        "audiences": [AUDIENCE],
        "keys": {"inline": {"keys": keys}}
    }]))
}

/// The insurer persona's token (without a status-list reference: no revocation here)
/// signed with `alg`, issued at `now`.
fn token(alg: &str, now: u64) -> Result<String, String> {
    let mut claims = Personas::builtin()
        .and_then(|p| p.claims(Some("insurer"), now, 3600))
        .map_err(|e| e.to_string())?;
    claims.remove("status");
    let key = match alg {
        "ES256" => SigningKey::dev(),
        "EdDSA" => SigningKey::from_pem(ED25519_KEY_PEM, Some(ED25519_KID), Some(Alg::EdDSA)),
        "RS256" => SigningKey::from_pem(
            &fixture("keys/rs2048.pem")?,
            Some("rs2048"),
            Some(Alg::RS256),
        ),
        _ => SigningKey::from_pem(
            &fixture("keys/rs2048.pem")?,
            Some("rs2048"),
            Some(Alg::PS256),
        ),
    }
    .map_err(|e| e.to_string())?;
    key.sign(CONSENT_TYP, &Value::Object(claims))
        .map_err(|e| e.to_string())
}

/// Every case, each timed for about `budget_ms`.
pub fn suite(budget_ms: u64) -> Result<Vec<Case>, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let issuers = issuers()?;
    let mut cases = Vec::new();
    for (label, size) in SIZES {
        for paths in PATHS {
            for kind in ["redact", "baseline"] {
                cases.push(Case {
                    id: format!("{kind}/{label}/{paths}"),
                    request: json!({"kind": kind, "size": size, "paths": paths, "budget_ms": budget_ms}),
                });
            }
        }
    }
    for alg in ALGS {
        let t = token(alg, now)?;
        for cached in [false, true] {
            cases.push(Case {
                id: format!("verify/{alg}/{}", if cached { "cached" } else { "cold" }),
                request: json!({"kind": "verify", "issuers": issuers, "token": t, "now": now,
                                "cached": cached, "budget_ms": budget_ms}),
            });
        }
    }
    let es = token("ES256", now)?;
    for n in POLICY_SIZES {
        for cached in [false, true] {
            cases.push(Case {
                id: format!("policy/{n}/{}", if cached { "cached" } else { "cold" }),
                request: json!({"kind": "policy", "routes": n, "rules": n, "issuers": issuers,
                                "token": es, "now": now, "cached": cached, "budget_ms": budget_ms}),
            });
        }
    }
    for size in [es.len(), 1400] {
        cases.push(Case {
            id: format!("sha256/{size}"),
            request: json!({"kind": "sha256", "size": size, "budget_ms": budget_ms / 2}),
        });
    }
    Ok(cases)
}

/// An engine's answers, in the order of the cases.
pub struct Engine<'a> {
    pub name: &'a str,
    pub answers: &'a [Value],
}

fn get<'a>(cases: &[Case], engine: &'a Engine<'_>, id: &str) -> Option<&'a Value> {
    let i = cases.iter().position(|c| c.id == id)?;
    engine.answers.get(i).filter(|a| a.get("error").is_none())
}

fn num(cases: &[Case], engine: &Engine<'_>, id: &str, key: &str) -> Option<f64> {
    get(cases, engine, id).and_then(|a| a[key].as_f64())
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.digits$}"))
}

/// The report: the redactor against the baseline (MB/s), token verification and policy
/// decisions (µs), SHA-256, one column per engine.
pub fn report(cases: &[Case], engines: &[Engine<'_>]) -> String {
    let names: Vec<&str> = engines.iter().map(|e| e.name).collect();
    let mut out = String::new();
    let cols = |f: &dyn Fn(&Engine<'_>) -> String| -> String {
        engines.iter().map(f).collect::<Vec<_>>().join(" | ")
    };
    let header = |what: &str| -> String {
        names
            .iter()
            .map(|n| format!("{what} {n}"))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let rule = |n: usize| vec!["---:"; n].join("|");

    let _ = writeln!(
        out,
        "### Redactor against serde_json parse-modify-serialize (MB/s)\n"
    );
    let _ = writeln!(
        out,
        "| body | paths | {} | {} | {} |",
        header("redactor"),
        header("serde_json"),
        header("×")
    );
    let _ = writeln!(out, "|---|---:|{}|", rule(3 * engines.len()));
    for (label, _) in SIZES {
        for paths in PATHS {
            let ours =
                |e: &Engine<'_>| num(cases, e, &format!("redact/{label}/{paths}"), "mb_per_s");
            let base =
                |e: &Engine<'_>| num(cases, e, &format!("baseline/{label}/{paths}"), "mb_per_s");
            let _ = writeln!(
                out,
                "| {label} | {paths} | {} | {} | {} |",
                cols(&|e| cell(ours(e), 1)),
                cols(&|e| cell(base(e), 1)),
                cols(&|e| match (ours(e), base(e)) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.1}×", a / b),
                    _ => "–".to_owned(),
                }),
            );
        }
    }

    let _ = writeln!(out, "\n### Token verification (µs per token)\n");
    let _ = writeln!(
        out,
        "| algorithm | | {} | {} |",
        header("µs"),
        header("× ES256 cold")
    );
    let _ = writeln!(out, "|---|---|{}|", rule(2 * engines.len()));
    for alg in ALGS {
        for warmth in ["cold", "cached"] {
            let us = |e: &Engine<'_>| {
                num(cases, e, &format!("verify/{alg}/{warmth}"), "ns_per_op").map(|n| n / 1e3)
            };
            let base =
                |e: &Engine<'_>| num(cases, e, "verify/ES256/cold", "ns_per_op").map(|n| n / 1e3);
            let _ = writeln!(
                out,
                "| {alg} | {} | {} | {} |",
                if warmth == "cold" {
                    "cold (full verification)"
                } else {
                    "cached (SHA-256 of the token + lookup)"
                },
                cols(&|e| cell(us(e), 2)),
                cols(&|e| match (us(e), base(e)) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                    _ => "–".to_owned(),
                }),
            );
        }
    }

    let _ = writeln!(
        out,
        "\n### Policy decision: route match + rules + field plan (µs per request)\n"
    );
    let _ = writeln!(out, "| routes × rules | plan | {} |", header("µs"));
    let _ = writeln!(out, "|---|---|{}|", rule(engines.len()));
    for n in POLICY_SIZES {
        for warmth in ["cold", "cached"] {
            let _ = writeln!(
                out,
                "| {n} × {n} | {} | {} |",
                if warmth == "cold" {
                    "built (first request after load)"
                } else {
                    "cached"
                },
                cols(&|e| cell(
                    num(cases, e, &format!("policy/{n}/{warmth}"), "ns_per_op").map(|v| v / 1e3),
                    2
                )),
            );
        }
    }

    let _ = writeln!(out, "\n### SHA-256 (µs per digest)\n");
    let _ = writeln!(out, "| bytes | {} |", header("µs"));
    let _ = writeln!(out, "|---:|{}|", rule(engines.len()));
    for c in cases.iter().filter(|c| c.id.starts_with("sha256/")) {
        let size = c.id.trim_start_matches("sha256/");
        let _ = writeln!(
            out,
            "| {size} | {} |",
            cols(&|e| cell(num(cases, e, &c.id, "ns_per_op").map(|v| v / 1e3), 2))
        );
    }
    out
}
