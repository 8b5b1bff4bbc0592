//! Per-request cost of the plugin in the harness, for the scenarios of the Envoy
//! benchmark (`consentry-bench`): a whole exchange (request headers, decision, response
//! headers, body, audit record) through the release `.wasm` on wasmtime, and the same
//! flow natively (the core's state machine behind its fake host, no wasm).
//!
//! ```text
//! cargo bench -p consentry-host --bench per_request                  # time per request
//! cargo bench -p consentry-host --bench per_request -- --instructions   # + callgrind counts
//! cargo bench -p consentry-host --bench per_request -- --memory [N]     # linear memory over N requests
//! cargo bench -p consentry-host --bench per_request -- --profile NAME   # callgrind profile of the native flow
//! ```
//!
//! Times are medians of rounds and drift with the machine; the instruction counts
//! (`valgrind --tool=callgrind`, counting only inside the measured loop) do not, so they
//! are the figures to watch for regressions. "Cold" sends a token no cache has seen with
//! every request (one signature verification each); "warm" sends the same token again.
//! The table goes to `results/harness-per-request.md` too. Nothing asserts on time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use consentry_core::host::Side;
use consentry_core::http::{Connection, Headers, RequestHead};
use consentry_core::testing::FakeHost;
use consentry_core::{Event, Filter as CoreFilter, Flow, ResponseHead};
use consentry_host::fixtures::{ConsentService, DEV_PSEUDONYM_KEYS};
use consentry_host::{Proxy, Request, Response, mint};
use serde_json::Value;
use support::{Minter, SigAlg};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    Consentry,
    Noop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Bench,
    BenchNoAudit,
    MultiAlg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    Record5k,
    History64k,
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    label: &'static str,
    filter: Filter,
    policy: Policy,
    path: &'static str,
    body: Body,
    alg: SigAlg,
    fresh: bool,
}

const fn s(
    name: &'static str,
    label: &'static str,
    filter: Filter,
    policy: Policy,
    body: Body,
    alg: SigAlg,
    fresh: bool,
) -> Scenario {
    let path = match body {
        Body::None => "/status/204",
        Body::Record5k => "/patients/p-1",
        Body::History64k => "/patients/p-1/history",
    };
    Scenario {
        name,
        label,
        filter,
        policy,
        path,
        body,
        alg,
        fresh,
    }
}

use Body::{History64k, Record5k};
use Filter::{Consentry, Noop};
use SigAlg::{EdDsa, Es256, Rs256};

const SCENARIOS: &[Scenario] = &[
    s(
        "noop-5k",
        "no-op wasm filter, 5 KB body",
        Noop,
        Policy::Bench,
        Record5k,
        Es256,
        false,
    ),
    s(
        "nobody-warm",
        "token + policy, warm",
        Consentry,
        Policy::Bench,
        Body::None,
        Es256,
        false,
    ),
    s(
        "nobody-cold",
        "token + policy, cold",
        Consentry,
        Policy::Bench,
        Body::None,
        Es256,
        true,
    ),
    s(
        "5k-warm",
        "token + policy + 5 KB redaction, warm",
        Consentry,
        Policy::Bench,
        Record5k,
        Es256,
        false,
    ),
    s(
        "5k-cold",
        "token + policy + 5 KB redaction, cold",
        Consentry,
        Policy::Bench,
        Record5k,
        Es256,
        true,
    ),
    s(
        "64k-warm",
        "token + policy + 64 KB redaction, warm",
        Consentry,
        Policy::Bench,
        History64k,
        Es256,
        false,
    ),
    s(
        "5k-warm-no-audit",
        "5 KB redaction, warm, audit log off",
        Consentry,
        Policy::BenchNoAudit,
        Record5k,
        Es256,
        false,
    ),
    s(
        "nobody-warm-no-audit",
        "token + policy, warm, audit log off",
        Consentry,
        Policy::BenchNoAudit,
        Body::None,
        Es256,
        false,
    ),
    s(
        "es256-warm",
        "ES256 token + policy, warm",
        Consentry,
        Policy::MultiAlg,
        Body::None,
        Es256,
        false,
    ),
    s(
        "es256-cold",
        "ES256 token + policy, cold",
        Consentry,
        Policy::MultiAlg,
        Body::None,
        Es256,
        true,
    ),
    s(
        "rs256-warm",
        "RS256 token + policy, warm",
        Consentry,
        Policy::MultiAlg,
        Body::None,
        Rs256,
        false,
    ),
    s(
        "rs256-cold",
        "RS256 token + policy, cold",
        Consentry,
        Policy::MultiAlg,
        Body::None,
        Rs256,
        true,
    ),
    s(
        "eddsa-warm",
        "EdDSA token + policy, warm",
        Consentry,
        Policy::MultiAlg,
        Body::None,
        EdDsa,
        false,
    ),
    s(
        "eddsa-cold",
        "EdDSA token + policy, cold",
        Consentry,
        Policy::MultiAlg,
        Body::None,
        EdDsa,
        true,
    ),
];

fn scenario(name: &str) -> Scenario {
    *SCENARIOS
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
}

fn policy_json(p: Policy) -> Value {
    match p {
        Policy::Bench => support::bench_policy(true),
        Policy::BenchNoAudit => support::bench_policy(false),
        Policy::MultiAlg => support::multi_alg_policy(),
    }
}

fn body_bytes(b: Body) -> Option<Vec<u8>> {
    match b {
        Body::None => None,
        Body::Record5k => Some(support::record_5k()),
        Body::History64k => Some(support::history_64k()),
    }
}

/// The tokens a run sends: `count` fresh ones, or the same one `count` times.
fn tokens(s: &Scenario, minter: &mut Minter, count: usize) -> Vec<String> {
    if s.fresh {
        (0..count).map(|_| minter.token()).collect()
    } else {
        let t = minter.token();
        vec![t; count]
    }
}

/// The expected status of every exchange.
fn expected(s: &Scenario) -> u16 {
    if s.body == Body::None { 204 } else { 200 }
}

// ---------------------------------------------------------------------------------------
// The .wasm in the harness.

fn proxy(s: &Scenario, now: SystemTime) -> Proxy {
    let plugin = match s.filter {
        Consentry => support::consentry_wasm(),
        Noop => support::noop_wasm(),
    };
    let service = ConsentService::new();
    Proxy::builder(plugin)
        .config(policy_json(s.policy).to_string())
        .env("CONSENTRY_PSEUDONYM_KEYS", DEV_PSEUDONYM_KEYS)
        .workers(1)
        .main_thread(false)
        .now(now)
        .callouts(move |c| service.answer(c, now))
        .start()
        .unwrap_or_else(|e| panic!("{}: {e}", s.name))
}

fn exchanges(
    s: &Scenario,
    tokens: Vec<String>,
    body: &Option<Vec<u8>>,
) -> Vec<(Request, Response)> {
    tokens
        .into_iter()
        .map(|t| {
            (
                support::request(s.path, &t),
                support::upstream(body.as_deref()),
            )
        })
        .collect()
}

/// The measured loop through the `.wasm` (callgrind counts inside this function only).
#[inline(never)]
fn consentry_bench_measured_wasm(proxy: &mut Proxy, items: Vec<(Request, Response)>) -> Vec<u16> {
    items
        .into_iter()
        .map(|(req, resp)| proxy.send(req, resp).client.status)
        .collect()
}

// ---------------------------------------------------------------------------------------
// The same flow natively: the core's state machine behind its fake host, no wasm.

struct Native {
    filter: CoreFilter,
    host: FakeHost,
    next_stream: u32,
}

impl Native {
    fn new(s: &Scenario, now: SystemTime) -> Self {
        let config = policy_json(s.policy).to_string();
        let env = |name: &str| {
            (name == "CONSENTRY_PSEUDONYM_KEYS").then(|| DEV_PSEUDONYM_KEYS.to_owned())
        };
        let mut host = FakeHost::new(now);
        host.discard_logs = true;
        let (filter, loaded) = CoreFilter::configure(config.as_bytes(), &env, &mut host);
        loaded.unwrap_or_else(|e| panic!("{}: {:?}", s.name, e.0));
        let mut n = Native {
            filter,
            host,
            next_stream: 2,
        };
        n.answer_calls();
        n
    }

    /// Answers every call made so far as the consent service would.
    fn answer_calls(&mut self) {
        let now_s = self.host.now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        for (token, call) in std::mem::take(&mut self.host.calls) {
            let body = if call.path.contains("jwks") {
                mint::DEV_JWKS.as_bytes().to_vec()
            } else {
                let uri = format!("https://{}{}", call.authority, call.path);
                mint::status_list_token(
                    &[0u8; 16],
                    2,
                    &uri,
                    mint::DEV_KEY_PEM,
                    mint::DEV_KID,
                    now_s,
                    3600,
                )
                .unwrap()
                .into_bytes()
            };
            self.filter
                .on_call_response(token, 200, &body, 1, &mut self.host);
        }
    }

    /// One whole exchange; returns the status the client gets.
    fn exchange(&mut self, path: &str, token: &str, body: Option<&[u8]>) -> u16 {
        let id = self.next_stream;
        self.next_stream += 1;
        self.filter.on_stream_created(id);
        let mut headers = Headers::new();
        headers.push(":method", "GET");
        headers.push(":path", path);
        headers.push(":authority", "consentry.test");
        headers.push("authorization", format!("Bearer {token}"));
        headers.push("x-request-id", "5b1c2a6e-3f7d-4c2a-9e1b-7d2f0a9c8e11");
        let head = RequestHead {
            method: "GET".into(),
            path: path.into(),
            authority: "consentry.test".into(),
            headers,
            connection: Connection {
                source_address: Some("127.0.0.1:40000".into()),
                mtls: false,
                peer: None,
            },
            end_of_stream: true,
        };
        self.host.enter(id);
        let mut flow = self
            .filter
            .on_event(id, Event::RequestHeaders(head), &mut self.host);
        if flow == Flow::Pause && self.host.stream(id).replies.is_empty() {
            self.answer_calls();
            self.host.enter(id);
            if self.host.stream(id).resumed.contains(&Side::Request) {
                flow = Flow::Continue;
            }
        }
        let status = if flow == Flow::Continue {
            let mut rh = Headers::new();
            let code = if body.is_some() { 200 } else { 204 };
            rh.push(":status", code.to_string());
            if let Some(b) = body {
                rh.push("content-type", "application/json");
                rh.push("content-length", b.len().to_string());
            }
            let head = ResponseHead {
                status: code,
                headers: rh,
                end_of_stream: body.is_none(),
            };
            let flow = self
                .filter
                .on_event(id, Event::ResponseHeaders(head), &mut self.host);
            match (flow, body) {
                (Flow::Continue, _) => code,
                (Flow::Pause, Some(b)) if self.host.stream(id).replies.is_empty() => {
                    self.host.stream(id).response_body = b.to_vec();
                    let event = Event::ResponseBody {
                        size: b.len(),
                        end_of_stream: true,
                    };
                    match self.filter.on_event(id, event, &mut self.host) {
                        Flow::Continue => {
                            black_box(std::mem::take(&mut self.host.stream(id).response_body));
                            code
                        }
                        Flow::Pause => self.host.stream(id).replies.first().map_or(0, |r| r.status),
                    }
                }
                (Flow::Pause, _) => self.host.stream(id).replies.first().map_or(0, |r| r.status),
            }
        } else {
            self.host
                .stream(id)
                .replies
                .first()
                .map_or(503, |r| r.status)
        };
        self.filter.on_event(id, Event::Log, &mut self.host);
        self.filter.on_delete(id, &mut self.host);
        self.host.streams.remove(&id);
        status
    }
}

/// The measured loop of the native flow (callgrind counts inside this function only).
#[inline(never)]
fn consentry_bench_measured_native(
    native: &mut Native,
    path: &str,
    tokens: &[String],
    body: Option<&[u8]>,
) -> Vec<u16> {
    tokens
        .iter()
        .map(|t| native.exchange(path, t, body))
        .collect()
}

// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Wasm,
    Native,
}

fn engine_name(e: Engine) -> &'static str {
    match e {
        Engine::Wasm => "wasm",
        Engine::Native => "native",
    }
}

/// Requests per measured round.
fn per_round(s: &Scenario, e: Engine) -> usize {
    match (s.fresh, s.alg, e) {
        (true, SigAlg::Rs256, _) => 100,
        (true, _, Engine::Wasm) => 200,
        (true, _, Engine::Native) => 500,
        (false, _, Engine::Wasm) => 1000,
        (false, _, Engine::Native) => 3000,
    }
}

const ROUNDS: usize = 5;
const WARMUP: usize = 20;

/// Median microseconds per request over ROUNDS rounds (and, through the `.wasm`,
/// the host calls a request makes).
fn time(s: &Scenario, e: Engine) -> Option<(f64, Option<f64>)> {
    if s.filter == Noop && e == Engine::Native {
        return None;
    }
    let mut calls = None;
    let now = SystemTime::now();
    let mut minter = Minter::new(s.alg, now);
    let body = body_bytes(s.body);
    let n = per_round(s, e);
    let want = expected(s);
    let mut samples = Vec::new();
    match e {
        Engine::Wasm => {
            let mut proxy = proxy(s, now);
            let warm = consentry_bench_measured_wasm(
                &mut proxy,
                exchanges(s, tokens(s, &mut minter, WARMUP), &body),
            );
            assert!(warm.iter().all(|c| *c == want), "{}: {warm:?}", s.name);
            proxy.host_calls().take();
            for _ in 0..ROUNDS {
                let items = exchanges(s, tokens(s, &mut minter, n), &body);
                let start = Instant::now();
                let codes = consentry_bench_measured_wasm(&mut proxy, items);
                samples.push(start.elapsed().as_secs_f64() * 1e6 / n as f64);
                assert!(codes.iter().all(|c| *c == want), "{}: {codes:?}", s.name);
            }
            let total: u64 = proxy.host_calls().take().values().sum();
            calls = Some(total as f64 / (ROUNDS * n) as f64);
        }
        Engine::Native => {
            let mut native = Native::new(s, now);
            let warm = tokens(s, &mut minter, WARMUP);
            let codes =
                consentry_bench_measured_native(&mut native, s.path, &warm, body.as_deref());
            assert!(codes.iter().all(|c| *c == want), "{}: {codes:?}", s.name);
            for _ in 0..ROUNDS {
                let t = tokens(s, &mut minter, n);
                let start = Instant::now();
                let codes =
                    consentry_bench_measured_native(&mut native, s.path, &t, body.as_deref());
                samples.push(start.elapsed().as_secs_f64() * 1e6 / n as f64);
                assert!(codes.iter().all(|c| *c == want), "{}: {codes:?}", s.name);
            }
        }
    }
    Some((support::median(samples), calls))
}

/// The child of `--instructions`: one scenario, one engine, `n` measured requests.
fn child(name: &str, engine: &str, n: usize) {
    let s = scenario(name);
    let now = SystemTime::now();
    let mut minter = Minter::new(s.alg, now);
    let body = body_bytes(s.body);
    let want = expected(&s);
    let codes = if engine == "wasm" {
        let mut proxy = proxy(&s, now);
        consentry_bench_measured_wasm(
            &mut proxy,
            exchanges(&s, tokens(&s, &mut minter, WARMUP), &body),
        );
        let items = exchanges(&s, tokens(&s, &mut minter, n), &body);
        consentry_bench_measured_wasm(&mut proxy, items)
    } else {
        let mut native = Native::new(&s, now);
        let warm = tokens(&s, &mut minter, WARMUP);
        consentry_bench_measured_native(&mut native, s.path, &warm, body.as_deref());
        let t = tokens(&s, &mut minter, n);
        consentry_bench_measured_native(&mut native, s.path, &t, body.as_deref())
    };
    assert!(codes.iter().all(|c| *c == want), "{name}: {codes:?}");
}

/// Instructions per request: callgrind counts the measured function of a child run
/// with `n` requests and with `2n`; the difference over `n` cancels the set-up that
/// the measured function does once (first-call costs, the warm-up's leftovers).
fn instructions(s: &Scenario, e: Engine) -> Option<f64> {
    if s.filter == Noop && e == Engine::Native {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let n = if s.fresh { 50 } else { 200 };
    let marker = match e {
        Engine::Wasm => "consentry_bench_measured_wasm",
        Engine::Native => "consentry_bench_measured_native",
    };
    let run = |k: usize| {
        let args = vec![
            "--child".to_owned(),
            s.name.to_owned(),
            engine_name(e).to_owned(),
            k.to_string(),
        ];
        support::callgrind(&args, marker, &dir.path().join(format!("cg.{k}")))
    };
    let one = run(n);
    let two = run(2 * n);
    Some(two.saturating_sub(one) as f64 / n as f64)
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.digits$}"))
}

fn fmt_k(v: Option<f64>) -> String {
    v.map_or("–".to_owned(), |v| format!("{:.0} k", v / 1000.0))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        child(&args[1], &args[2], args[3].parse().unwrap());
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--memory") {
        let n = args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        memory(n);
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--profile") {
        profile(args.get(i + 1).map_or("5k-warm", String::as_str));
        return;
    }
    let counting = args.iter().any(|a| a == "--instructions");
    if counting && !support::have_valgrind() {
        eprintln!("--instructions needs valgrind (apt-get install -y valgrind)");
        std::process::exit(1);
    }
    let filter: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let chosen: Vec<Scenario> = SCENARIOS
        .iter()
        .filter(|s| filter.is_empty() || filter.iter().any(|f| s.name.contains(f.as_str())))
        .copied()
        .collect();

    struct Line {
        s: Scenario,
        wasm_us: Option<f64>,
        native_us: Option<f64>,
        wasm_ins: Option<f64>,
        native_ins: Option<f64>,
        calls: Option<f64>,
    }
    let mut lines = Vec::new();
    for s in &chosen {
        eprint!("{:<20}", s.name);
        let wasm = time(s, Engine::Wasm);
        let wasm_us = wasm.map(|(us, _)| us);
        let calls = wasm.and_then(|(_, c)| c);
        let native_us = time(s, Engine::Native).map(|(us, _)| us);
        let (wasm_ins, native_ins) = if counting {
            (
                instructions(s, Engine::Wasm),
                instructions(s, Engine::Native),
            )
        } else {
            (None, None)
        };
        eprintln!(
            " wasm {} µs, native {} µs, {} / {} instructions",
            fmt_opt(wasm_us, 1),
            fmt_opt(native_us, 1),
            fmt_k(wasm_ins),
            fmt_k(native_ins)
        );
        lines.push(Line {
            s: *s,
            wasm_us,
            native_us,
            wasm_ins,
            native_ins,
            calls,
        });
    }

    let find = |name: &str| lines.iter().find(|l| l.s.name == name);
    let noop = find("noop-5k");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | harness (wasmtime) µs/request | native µs/request | instructions/request, harness | … minus the no-op filter's | instructions/request, native | host calls/request | × same-warmth ES256 (harness) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for l in &lines {
        let over_noop = match (l.wasm_ins, noop.and_then(|n| n.wasm_ins)) {
            (Some(a), Some(b)) if l.s.filter == Consentry => Some(a - b),
            _ => None,
        };
        // RS256 and EdDSA against ES256 at the same warmth, by instructions when
        // counted, else by time.
        let versus = if l.s.policy == Policy::MultiAlg && l.s.alg != SigAlg::Es256 {
            let base = find(if l.s.fresh {
                "es256-cold"
            } else {
                "es256-warm"
            });
            match (
                l.wasm_ins,
                base.and_then(|b| b.wasm_ins),
                l.wasm_us,
                base.and_then(|b| b.wasm_us),
            ) {
                (Some(a), Some(b), _, _) => format!("{:.2}×", a / b),
                (None, _, Some(a), Some(b)) => format!("{:.2}× (time)", a / b),
                _ => "–".to_owned(),
            }
        } else {
            "–".to_owned()
        };
        let _ = writeln!(
            out,
            "| {} ({}) | {} | {} | {} | {} | {} | {} | {} |",
            l.s.label,
            l.s.name,
            fmt_opt(l.wasm_us, 1),
            fmt_opt(l.native_us, 1),
            fmt_k(l.wasm_ins),
            fmt_k(over_noop),
            fmt_k(l.native_ins),
            fmt_opt(l.calls, 1),
            versus
        );
    }
    // Each phase as the difference of two scenarios that differ by it alone.
    let phases: [(&str, &str, &str); 4] = [
        (
            "token + policy + request edits (warm), response headers only",
            "nobody-warm-no-audit",
            "noop-5k",
        ),
        (
            "audit record (hash chain, JSON, its host calls)",
            "nobody-warm",
            "nobody-warm-no-audit",
        ),
        (
            "response held, 5 KB redacted, body host calls",
            "5k-warm-no-audit",
            "nobody-warm-no-audit",
        ),
        (
            "token check alone, cold − warm (one ES256 verification)",
            "5k-cold",
            "5k-warm",
        ),
    ];
    let mut table = String::new();
    for (what, with, without) in phases {
        let (Some(a), Some(b)) = (find(with), find(without)) else {
            continue;
        };
        let diff = |x: Option<f64>, y: Option<f64>| x.zip(y).map(|(x, y)| x - y);
        let _ = writeln!(
            table,
            "| {what} | {with} − {without} | {} | {} | {} | {} |",
            fmt_opt(diff(a.wasm_us, b.wasm_us), 1),
            fmt_k(diff(a.wasm_ins, b.wasm_ins)),
            fmt_k(diff(a.native_ins, b.native_ins)),
            fmt_opt(diff(a.calls, b.calls), 1),
        );
    }
    if !table.is_empty() {
        let _ = writeln!(
            out,
            "\nPer phase (the difference of two scenarios):\n\n| phase | scenarios | harness µs | instructions, harness | instructions, native | host calls |\n|---|---|---:|---:|---:|---:|\n{table}"
        );
    }
    println!();
    print!("{out}");
    let path = support::results_dir().join("harness-per-request.md");
    std::fs::write(&path, &out).unwrap();
    println!("\nwritten: {}", path.display());
}

/// `--memory N`: N exchanges of the 5 KB record, each with a fresh token (so the token
/// cache fills and evicts), then N with one token; the VM's linear memory along the way.
fn memory(n: usize) {
    let s = scenario("5k-cold");
    let now = SystemTime::now();
    let body = body_bytes(s.body);
    let mut proxy = proxy(&s, now);
    println!("minting {n} tokens…");
    let tokens = mint_parallel(n);
    println!(
        "| phase | requests | linear memory (bytes) |\n|---|---:|---:|\n| after start | 0 | {} |",
        proxy.worker_memory()[0]
    );
    let checkpoints = [1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 75_000, n];
    let mut done = 0;
    let start = Instant::now();
    for (i, t) in tokens.into_iter().enumerate() {
        let out = proxy.send(
            support::request(s.path, &t),
            support::upstream(body.as_deref()),
        );
        assert_eq!(out.client.status, 200);
        done = i + 1;
        if checkpoints.contains(&done) {
            println!(
                "| fresh token each | {done} | {} |",
                proxy.worker_memory()[0]
            );
        }
    }
    let same = Minter::new(SigAlg::Es256, now).token();
    for i in 0..n {
        let out = proxy.send(
            support::request(s.path, &same),
            support::upstream(body.as_deref()),
        );
        assert_eq!(out.client.status, 200);
        if checkpoints.contains(&(i + 1)) {
            println!(
                "| one token | {} | {} |",
                done + i + 1,
                proxy.worker_memory()[0]
            );
        }
    }
    println!(
        "\n{} exchanges in {:.1} s",
        2 * n,
        start.elapsed().as_secs_f64()
    );
}

/// Fresh ES256 tokens, minted on every core.
fn mint_parallel(n: usize) -> Vec<String> {
    let workers = std::thread::available_parallelism().map_or(1, |v| v.get());
    let now = SystemTime::now();
    let per = n.div_ceil(workers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                scope.spawn(move || {
                    let first = (w * per) as u64;
                    let mut m = Minter::starting_at(SigAlg::Es256, now, first);
                    let k = per.min(n.saturating_sub(w * per));
                    (0..k).map(|_| m.token()).collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// `--profile NAME`: the native flow of a scenario under callgrind, and the functions
/// that take the most instructions (exclusive), from callgrind_annotate.
fn profile(name: &str) {
    let s = scenario(name);
    let dir = std::env::temp_dir().join(format!("consentry-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("callgrind.out");
    let n = if s.fresh { 100 } else { 500 };
    let args = vec![
        "--child".to_owned(),
        s.name.to_owned(),
        "native".to_owned(),
        n.to_string(),
    ];
    let total = support::callgrind(&args, "consentry_bench_measured_native", &out);
    println!(
        "{name}: {:.0} instructions per request (native, {n} requests)\n",
        total as f64 / n as f64
    );
    let annotate = std::process::Command::new("callgrind_annotate")
        .args(["--inclusive=no", "--threshold=99"])
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&annotate.stdout);
    for line in text
        .lines()
        .skip_while(|l| !l.contains("file:function"))
        .take(40)
    {
        println!("{line}");
    }
    println!("\nfull profile: {}", out.display());
}
