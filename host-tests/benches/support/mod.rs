//! What the harness benchmarks share: the benchmark's policies, the bodies, tokens,
//! the plugin builds, and callgrind.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use consentry_host::mint::{self, Alg, CONSENT_TYP, Personas, SigningKey};
use consentry_host::plugin::workspace_root;
use consentry_host::{Plugin, Request, Response};
use serde_json::{Value, json};

/// The persona whose consent every benchmark presents.
pub const PERSONA: &str = "insurer";

pub fn repo_file(path: &str) -> Vec<u8> {
    let full = workspace_root().join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

/// The benchmarks' plugin configuration (`consentry_bench_wasm::policy`); `audit:
/// false` turns the audit log off.
pub fn bench_policy(audit: bool) -> Value {
    let example = std::fs::read_to_string(workspace_root().join("policies/example.json")).unwrap();
    consentry_bench_wasm::policy::bench_policy(&example, audit).unwrap()
}

/// The benchmark policy with an issuer that accepts ES256, RS256 and EdDSA, from inline
/// keys only: the development key (it signs the status lists) and the test keys of the
/// core's token fixtures.
pub fn multi_alg_policy() -> Value {
    let mut policy = bench_policy(true);
    let fixtures: Value =
        serde_json::from_slice(&repo_file("plugin/core/tests/fixtures/tokens/jwks.json")).unwrap();
    let mut keys: Vec<Value> = serde_json::from_str::<Value>(mint::DEV_JWKS).unwrap()["keys"]
        .as_array()
        .unwrap()
        .clone();
    for k in fixtures["keys"].as_array().unwrap() {
        if ["es256-a", "rs2048", "ed25519"].contains(&k["kid"].as_str().unwrap_or("")) {
            keys.push(k.clone());
        }
    }
    let issuer = &mut policy["issuers"][0];
    issuer["algorithms"] = json!(["ES256", "RS256", "EdDSA"]);
    issuer["keys"] = json!({"inline": {"keys": keys}});
    policy
}

/// The signature algorithms the benchmarks compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigAlg {
    Es256,
    Rs256,
    EdDsa,
}

impl SigAlg {
    pub fn name(self) -> &'static str {
        match self {
            SigAlg::Es256 => "ES256",
            SigAlg::Rs256 => "RS256",
            SigAlg::EdDsa => "EdDSA",
        }
    }

    /// The signing key: the development ES256 key, or a core test fixture's key.
    pub fn key(self) -> SigningKey {
        let fixture = |name: &str| {
            repo_file(&format!(
                "plugin/core/tests/fixtures/tokens/keys/{name}.pem"
            ))
        };
        match self {
            SigAlg::Es256 => SigningKey::dev().unwrap(),
            SigAlg::Rs256 => {
                SigningKey::from_pem(&fixture("rs2048"), Some("rs2048"), Some(Alg::RS256)).unwrap()
            }
            SigAlg::EdDsa => {
                SigningKey::from_pem(&fixture("ed25519"), Some("ed25519"), Some(Alg::EdDSA))
                    .unwrap()
            }
        }
    }
}

/// Mints the persona's tokens, each unlike the others (a `nonce` claim).
pub struct Minter {
    key: SigningKey,
    claims: serde_json::Map<String, Value>,
    next: u64,
}

impl Minter {
    pub fn new(alg: SigAlg, now: SystemTime) -> Self {
        Self::starting_at(alg, now, 0)
    }

    /// A minter whose nonces start at `first` (so minters on several threads differ).
    pub fn starting_at(alg: SigAlg, now: SystemTime, first: u64) -> Self {
        let unix = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let claims = Personas::builtin()
            .unwrap()
            .claims(Some(PERSONA), unix, 24 * 3600)
            .unwrap();
        Self {
            key: alg.key(),
            claims,
            next: first,
        }
    }

    pub fn token(&mut self) -> String {
        let mut claims = self.claims.clone();
        claims.insert("nonce".into(), Value::from(self.next));
        self.next += 1;
        self.key.sign(CONSENT_TYP, &Value::Object(claims)).unwrap()
    }
}

/// The example service's bodies, as the exact bytes it serves.
pub fn record_5k() -> Vec<u8> {
    consentry_example_service::ServiceState::builtin()
        .unwrap()
        .record("p-1")
        .unwrap()
        .to_vec()
}

pub fn history_64k() -> Vec<u8> {
    consentry_example_service::ServiceState::builtin()
        .unwrap()
        .history("p-1")
        .unwrap()
        .to_vec()
}

/// What the upstream answers: JSON with a length, or 204 without a body.
pub fn upstream(body: Option<&[u8]>) -> Response {
    match body {
        Some(b) => Response::json(200, b),
        None => Response::new(204),
    }
}

pub fn request(path: &str, token: &str) -> Request {
    Request::get(path).bearer(token)
}

/// The plugin's release build.
pub fn consentry_wasm() -> Arc<Plugin> {
    Plugin::release_build().unwrap_or_else(|e| panic!("{e:#}"))
}

/// The no-op filter's release build (`envoy/noop-filter`).
pub fn noop_wasm_path() -> PathBuf {
    consentry_host::plugin::default_wasm_path().with_file_name("consentry_noop_filter.wasm")
}

pub fn noop_wasm() -> Arc<Plugin> {
    let path = noop_wasm_path();
    Plugin::load(&path).unwrap_or_else(|e| {
        panic!(
            "{e:#}\nbuild it with: cargo build -p consentry-noop-filter --target wasm32-wasip1 --release"
        )
    })
}

/// Whether valgrind can be run.
pub fn have_valgrind() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs this benchmark binary again under callgrind with `args`, counting only inside
/// functions whose name contains `marker`, and returns the instructions counted.
pub fn callgrind(args: &[String], marker: &str, out: &Path) -> u64 {
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--collect-atstart=no",
            &format!("--toggle-collect=*{marker}*"),
            &format!("--callgrind-out-file={}", out.display()),
        ])
        .arg(exe)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "valgrind {args:?} failed: {status}");
    let text = std::fs::read_to_string(out).unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no totals in {}", out.display()))
}

/// The median of some values.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

/// The results folder (`results/` at the workspace root, gitignored).
/// Where the tables go: `results/`, or `$CONSENTRY_RESULTS_DIR` (the smoke runs of the
/// test command write elsewhere, so they never replace measured figures).
pub fn results_dir() -> PathBuf {
    let dir = std::env::var_os("CONSENTRY_RESULTS_DIR")
        .map_or_else(|| workspace_root().join("results"), PathBuf::from);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
