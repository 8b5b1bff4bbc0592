//! What every scenario of the suite shares: prerequisites, the consent service, policies,
//! tokens, requests, problem checks, counters, bounded waits and a watchdog.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use consentry_envoy::{EnvoyBuilder, HttpResponse, RunningEnvoy, project_root, send};
use consentry_example_service::{ConsentConfig, RunningService, ServiceState};
use consentry_host::mint;
use serde_json::{Map, Value};

/// Fails (never skips) when Envoy or the release `.wasm` is missing, with the command
/// that fixes it.
pub fn require_prerequisites() {
    if let Err(e) = consentry_envoy::envoy_binary() {
        panic!("{e:#}");
    }
    if let Err(e) = consentry_envoy::wasm_path() {
        panic!("{e:#}");
    }
}

/// Aborts the whole test process when a test overruns its bound (a hung Envoy, a
/// request that never ends): Envoy dies with it (parent-death signal). Dropped at the
/// end of the test.
pub struct Watchdog {
    done: Option<mpsc::Sender<()>>,
}

pub fn watchdog(test: &'static str, limit: Duration) -> Watchdog {
    let (done, wait) = mpsc::channel::<()>();
    thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
            eprintln!("{test}: still running after {limit:?}; aborting the test process");
            std::process::abort();
        }
    });
    Watchdog { done: Some(done) }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

/// `policies/example.json`, parsed, for a test to adjust.
pub fn example_policy() -> Value {
    let text = std::fs::read_to_string(project_root().join("policies/example.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The example service (patient records and the consent service), with status-list
/// tokens that live `status_ttl_seconds`.
pub fn example_service(status_ttl_seconds: u64) -> RunningService {
    let mut consent = ConsentConfig::builtin().unwrap();
    consent.status_ttl_seconds = status_ttl_seconds;
    let state = ServiceState::builtin()
        .unwrap()
        .with_consent(consent)
        .unwrap();
    consentry_example_service::spawn_with("127.0.0.1:0", state).unwrap()
}

/// A builder for Envoy with this policy in front of `service` (also the consent
/// service).
pub fn envoy_for(service: &RunningService, policy: &Value) -> EnvoyBuilder {
    require_prerequisites();
    consentry_envoy::Envoy::builder()
        .upstream_port(service.addr().port())
        .plugin_config_json(&policy.to_string())
}

/// Starts Envoy and waits until a worker has loaded the plugin's configuration.
pub fn start(builder: EnvoyBuilder) -> RunningEnvoy {
    let envoy = builder.start().unwrap_or_else(|e| panic!("{e:#}"));
    envoy
        .wait_for_log("consentry: configuration loaded", Duration::from_secs(10))
        .unwrap();
    envoy
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A persona's claims, issued now for ten minutes (`iss`, `aud`, `iat`, `exp`, `jti`,
/// then the persona's own).
pub fn claims(persona: &str) -> Map<String, Value> {
    mint::Personas::builtin()
        .unwrap()
        .claims(Some(persona), unix_now(), 600)
        .unwrap()
}

/// Signed with the development key (`kid` `dev-2026-1`).
pub fn sign(claims: &Map<String, Value>) -> String {
    mint::sign(
        &Value::Object(claims.clone()),
        mint::DEV_KEY_PEM,
        mint::DEV_KID,
        mint::Alg::ES256,
    )
    .unwrap()
}

/// Signed with the next key (`kid` `dev-2026-2`), which the consent service publishes
/// only after `PUT /admin/jwks`.
pub fn sign_next(claims: &Map<String, Value>) -> String {
    mint::sign(
        &Value::Object(claims.clone()),
        mint::NEXT_KEY_PEM,
        mint::NEXT_KID,
        mint::Alg::ES256,
    )
    .unwrap()
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `GET base_url + path` with these headers.
pub fn get(envoy: &RunningEnvoy, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    send("GET", &format!("{}{path}", envoy.base_url()), headers, None)
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
}

/// `GET path` with `authorization: Bearer <token>`.
pub fn get_with(envoy: &RunningEnvoy, path: &str, token: &str) -> HttpResponse {
    get(envoy, path, &[("authorization", &bearer(token))])
}

/// `PUT` on the consent service's admin API; the answer must be 204.
pub fn admin_put(service: &RunningService, path: &str, body: &[u8]) {
    let url = format!("{}{path}", service.base_url());
    let r = send("PUT", &url, &[], Some(body)).unwrap_or_else(|e| panic!("PUT {url}: {e:#}"));
    assert_eq!(r.status, 204, "PUT {url}: {}", r.text());
}

/// The response is a masked problem with this status and code: problem+json, a body
/// that matches its content-length, `status` and `code` as given. Returns the body.
pub fn assert_problem(response: &HttpResponse, status: u16, code: &str) -> Value {
    assert_eq!(
        (response.status, response.header("content-type")),
        (status, Some("application/problem+json")),
        "expected {status} {code}; headers {:?}, body {}",
        response.headers,
        response.text()
    );
    assert_eq!(
        response.content_length(),
        Some(response.body.len()),
        "content-length must match the body"
    );
    let body = response.json().unwrap();
    assert_eq!(body["status"], u64::from(status), "{body}");
    assert_eq!(body["code"], code, "{body}");
    // RFC 6750 §3: every 401 challenges, and a token that was sent and refused, for
    // whatever reason, is an `invalid_token`.
    if status == 401 {
        let challenge = if code == "token_missing" {
            "Bearer"
        } else {
            "Bearer error=\"invalid_token\""
        };
        assert_eq!(
            response.header("www-authenticate"),
            Some(challenge),
            "{code}: {:?}",
            response.headers
        );
    }
    body
}

/// The problem code of a refusal, or `"ok"` for a 2xx answer (for polling).
pub fn outcome(response: &HttpResponse) -> String {
    if (200..300).contains(&response.status) {
        return "ok".to_owned();
    }
    response
        .json()
        .ok()
        .and_then(|b| b["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("status {} {}", response.status, response.text()))
}

/// `Retry-After` in seconds; the response must carry one.
pub fn retry_after(response: &HttpResponse) -> u64 {
    let value = response
        .header("retry-after")
        .unwrap_or_else(|| panic!("no retry-after in {:?}", response.headers));
    value
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("retry-after {value:?} is not a number of seconds"))
}

/// The plugin's counters (`wasmcustom.consentry.*` at the admin `/stats`), by their
/// name after `wasmcustom.consentry.`.
pub fn counters(envoy: &RunningEnvoy) -> BTreeMap<String, u64> {
    envoy
        .stats("wasmcustom.consentry.")
        .unwrap()
        .into_iter()
        .filter_map(|(name, value)| {
            let short = name.strip_prefix("wasmcustom.consentry.")?.to_owned();
            Some((short, value.trim().parse().ok()?))
        })
        .collect()
}

/// One counter, 0 when the plugin has not defined it yet.
pub fn counter(envoy: &RunningEnvoy, name: &str) -> u64 {
    counters(envoy).get(name).copied().unwrap_or(0)
}

/// Calls `probe` every `every` until it gives `Some`, for at most `limit`.
pub fn poll<T>(
    limit: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(every);
    }
}

/// The audit records in Envoy's log so far, parsed, in log order.
pub fn audit_records(envoy: &RunningEnvoy) -> Vec<Value> {
    envoy
        .log()
        .lines()
        .filter_map(|l| {
            let json = l.split_once(consentry_host::audit_log::LOG_MARKER)?.1;
            serde_json::from_str::<Value>(json).ok()
        })
        .collect()
}

/// Waits until Envoy's log holds at least `n` decision records (they are written when a
/// stream ends, just after the client has its answer).
pub fn wait_for_decisions(envoy: &RunningEnvoy, n: usize) -> Vec<Value> {
    let decisions = || {
        audit_records(envoy)
            .into_iter()
            .filter(|r| r["kind"] == "decision")
            .collect::<Vec<_>>()
    };
    poll(Duration::from_secs(5), Duration::from_millis(20), || {
        let d = decisions();
        (d.len() >= n).then_some(d)
    })
    .unwrap_or_else(|| {
        panic!(
            "expected {n} audit decision records, the log has {}:\n{}",
            decisions().len(),
            consentry_envoy::tail(&envoy.log(), 40)
        )
    })
}
