//! The fail-closed invariants under random event orders, through the real `.wasm`.
//!
//! Each case draws from one seed a few streams of the example policy (personas
//! allowed and refused, the claims search whose request is minimised, an upstream
//! that fails or sends invalid JSON, a token whose key must be refetched), how the
//! consent service answers the plugin's calls (at once, within its wait, after it,
//! never, refused, failing), and an order of events: request headers, bodies cut
//! anywhere, trailers, HTTP/1.1 and HTTP/2 end-of-stream conventions, the
//! upstream's headers, bodies and trailers, timers, calls' answers and client
//! resets, with the streams interleaved on one worker. Values planted in the
//! requests and in the upstream's answers (`cnry-…`) must reach nobody the
//! decision does not release them to. After every step the checker (`check.rs`)
//! looks at what has crossed the proxy so far each way and at the audit log.
//!
//! Reproduce a run with `CONSENTRY_MODEL_SEED=<seed>`; `CONSENTRY_MODEL_CASES`
//! sets the number of cases (a failing case is shrunk and printed whole).

mod case;
mod check;
mod run;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::SystemTime;

use consentry_host::{Plugin, UpstreamRequest};

use crate::support::plugin;
use case::{Act, Answer, Case, Fixtures, Kind, StreamSpec, request, response};
use check::{Ending, Invariant};
use run::{run, shrink, start};

/// Cases per run when `CONSENTRY_MODEL_CASES` does not say: split over the
/// tests below, which run in parallel.
const DEFAULT_CASES: u64 = 2400;
const SHARDS: u64 = 4;

/// The fixtures every case shares: tokens, and the reference releases, made
/// once per run with the plugin under test.
fn fixtures() -> &'static Fixtures {
    static FX: OnceLock<Fixtures> = OnceLock::new();
    FX.get_or_init(|| {
        let mut fx = Fixtures::new();
        let plain = |kind| StreamSpec {
            kind,
            http2: false,
            request_cuts: Vec::new(),
            request_trailers: false,
            response_cuts: Vec::new(),
            response_trailers: false,
            response_length: true,
        };
        let mut references = BTreeMap::new();
        for kind in Kind::ALL.into_iter().filter(|k| k.releasable()) {
            let case = Case {
                seed: 0,
                streams: vec![plain(kind)],
                answers: vec![Answer::Early],
                acts: vec![Act::Begin(0)],
            };
            let mut proxy = start(&case, plugin(), &fx);
            let spec = case.streams[0].clone();
            let out = proxy.send(request(&spec, &fx, 0, 0), move |r: &UpstreamRequest| {
                response(&spec, r)
            });
            assert!(
                (200..300).contains(&out.client.status),
                "{kind:?}: {}\n{:#?}",
                out.client.status,
                out.trace
            );
            references.insert(kind, out.client.body);
        }
        fx.references = references;
        fx
    })
}

/// The seed of this run: `CONSENTRY_MODEL_SEED`, else a fresh one (printed, so
/// a failure can be replayed).
fn base_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| match std::env::var("CONSENTRY_MODEL_SEED") {
        Ok(s) => {
            let s = s.trim();
            s.strip_prefix("0x")
                .map_or_else(|| s.parse(), |h| u64::from_str_radix(h, 16))
                .unwrap_or_else(|e| panic!("CONSENTRY_MODEL_SEED={s}: {e}"))
        }
        Err(_) => SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    })
}

fn case_count() -> u64 {
    std::env::var("CONSENTRY_MODEL_CASES")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// Runs this shard's cases (case `i` has seed `base + i`); a failure is shrunk
/// and printed with the seed to replay it.
fn run_shard(shard: u64, faults: bool) -> BTreeMap<Ending, usize> {
    let fx = fixtures();
    let plugin = plugin();
    let base = base_seed();
    let mut endings: BTreeMap<Ending, usize> = BTreeMap::new();
    let mut steps = 0;
    let cases = case_count();
    let mut ran = 0;
    for i in (shard..cases).step_by(SHARDS as usize) {
        let seed = base.wrapping_add(i);
        let case = Case::generate_with(seed, faults);
        match run(&case, plugin.clone(), fx, false) {
            Ok(s) => {
                steps += s.steps;
                for (_, e) in s.endings {
                    *endings.entry(e).or_default() += 1;
                }
            }
            Err(f) => {
                let invariant = f.violations[0].invariant;
                let small = shrink(&case, invariant, &plugin, fx);
                let shown = match run(&small, plugin.clone(), fx, false) {
                    Err(g) => g,
                    Ok(_) => f,
                };
                panic!(
                    "model: {}\nreplay with CONSENTRY_MODEL_SEED={seed} CONSENTRY_MODEL_CASES=1 \
                     (host faults: {faults})\n\
                     the case, shrunk from {} acts:\n{small:#?}\nwhat happened:\n{}",
                    shown.violations[0],
                    case.acts.len(),
                    shown.transcript.join("\n"),
                );
            }
        }
        ran += 1;
    }
    eprintln!(
        "model shard {shard}: seed {base}, {ran} cases, {steps} checked steps, endings {endings:?}"
    );
    endings
}

/// Every ending happens somewhere in a shard, so the invariants are not held
/// vacuously (a plugin that refused everything would have no releases).
fn assert_varied(endings: &BTreeMap<Ending, usize>) {
    if case_count() < 400 {
        return;
    }
    for e in [
        Ending::Released,
        Ending::Refused,
        Ending::Withheld,
        Ending::Reset,
    ] {
        assert!(
            endings.get(&e).copied().unwrap_or(0) > 0,
            "no stream ended {e:?}: {endings:?}"
        );
    }
}

#[test]
fn model_invariants_hold_under_random_event_orders_0() {
    assert_varied(&run_shard(0, false));
}

#[test]
fn model_invariants_hold_under_random_event_orders_1() {
    assert_varied(&run_shard(1, false));
}

#[test]
fn model_invariants_hold_under_random_event_orders_2() {
    assert_varied(&run_shard(2, false));
}

#[test]
fn model_invariants_hold_under_random_event_orders_3() {
    assert_varied(&run_shard(3, false));
}

/// The same with host calls failing now and then: whatever a failure makes the
/// plugin do, no invariant gives way.
#[test]
fn model_invariants_hold_when_host_calls_fail() {
    // The seeds of shard 0, drawn with faults: other cases.
    assert_varied(&run_shard(0, true));
}

// ── Cases the model found, kept ───────────────────────────────────────────────

/// One stream of `kind` in the plainest form, its trailers as given.
fn plain(kind: Kind, http2: bool, request_trailers: bool) -> StreamSpec {
    StreamSpec {
        kind,
        http2,
        request_cuts: Vec::new(),
        request_trailers,
        response_cuts: Vec::new(),
        response_trailers: false,
        response_length: true,
    }
}

fn assert_holds(case: &Case) {
    if let Err(f) = run(case, plugin(), fixtures(), false) {
        panic!(
            "{}\n{case:#?}\n{}",
            f.violations[0],
            f.transcript.join("\n")
        );
    }
}

#[test]
fn a_client_that_leaves_while_its_answer_is_held_is_recorded_as_reset() {
    // The request waits for the status list, goes upstream when it comes, and
    // the answer's headers are held; then the client goes away. Envoy's router
    // noted the upstream's 200 as the response code: the client still got nothing.
    assert_holds(&Case {
        seed: 1,
        streams: vec![plain(Kind::PatientRecord, false, false)],
        answers: vec![Answer::Early],
        acts: vec![
            Act::Begin(0),
            Act::Step(0),
            Act::Advance(0),
            Act::Step(0),
            Act::Reset(0),
        ],
    });
}

#[test]
fn provenance_forged_in_request_trailers_never_reaches_the_upstream() {
    // HTTP/2 headers, then trailers naming `x-consent-id`, on a route that does
    // not minimise the request.
    assert_holds(&Case {
        seed: 2,
        streams: vec![plain(Kind::PatientRecord, true, true)],
        answers: vec![Answer::Early],
        acts: vec![Act::Begin(0)],
    });
}

// ── The checker catches a broken filter ───────────────────────────────────────

/// A filter in WebAssembly text that decides nothing: each callback answers
/// `ANSWER` (Continue, or hold until end of stream and then continue).
const BROKEN_FILTER: &str = r#"(module
  (memory (export "memory") 17)
  (global $heap (mut i32) (i32.const 65536))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "_initialize"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func $answer (param $eos i32) (result i32) ANSWER)
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $answer (local.get 2)))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
    (call $answer (local.get 2)))
  (func (export "proxy_on_request_trailers") (param i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (call $answer (local.get 2)))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32)
    (call $answer (local.get 2)))
  (func (export "proxy_on_response_trailers") (param i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32)))"#;

/// The invariants the model finds broken by a filter, over a few cases.
fn broken_by(answer: &str) -> BTreeSet<Invariant> {
    let text = BROKEN_FILTER.replace("ANSWER", answer);
    let filter = Plugin::from_bytes("broken-filter.wat", text.as_bytes()).unwrap();
    let fx = fixtures();
    let mut broken = BTreeSet::new();
    for seed in 0..40 {
        if let Err(f) = run(&Case::generate(seed), filter.clone(), fx, true) {
            broken.extend(f.violations.iter().map(|v| v.invariant));
        }
    }
    broken
}

fn assert_caught(broken: &BTreeSet<Invariant>) {
    for invariant in [
        Invariant::UpstreamWithoutAllow,
        Invariant::UpstreamNotMinimised,
        Invariant::ClientLeak,
        Invariant::ReleaseDiffers,
        Invariant::Audit,
    ] {
        assert!(
            broken.contains(&invariant),
            "the model did not catch {invariant:?}: {broken:?}"
        );
    }
}

#[test]
fn the_model_catches_a_filter_that_lets_everything_through() {
    assert_caught(&broken_by("(i32.const 0)"));
}

#[test]
fn the_model_catches_a_filter_that_holds_each_half_whole_then_lets_it_through() {
    // Pause until end of stream, then Continue: the response is held whole, as
    // the plugin holds it, but nothing is decided or redacted.
    assert_caught(&broken_by(
        "(select (i32.const 0) (i32.const 1) (local.get $eos))",
    ));
}
