//! Running a case: a fresh proxy, the case's acts, then every stream to its end,
//! the checker after every step; and shrinking a case that fails.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use consentry_host::fixtures::{ConsentService, dev_env};
use consentry_host::{
    CalloutAnswer, Fault, Plugin, Proxy, Response, StreamKey, UpstreamRequest, mint,
};

use super::case::{
    Act, Answer, Case, FAULTY_CALLS, Fixtures, Kind, PATIENCE, StreamSpec, request, response,
};
use super::check::{Checker, Ending, Invariant, Violation};
use crate::support::{T0, at};

/// A proxy for a case: one worker, the model's policy, the consent service
/// (publishing the rotated key too) answering as the case says.
pub fn start(case: &Case, plugin: Arc<Plugin>, fx: &Fixtures) -> Proxy {
    let service = ConsentService::new();
    service.set_jwks(mint::ROTATION_JWKS);
    let answers = case.answers.clone();
    let mut made = 0usize;
    let mut builder = Proxy::builder(plugin)
        .config(fx.config.clone())
        .now(at(T0))
        .main_thread(false)
        .workers(1);
    for (k, v) in dev_env() {
        builder = builder.env(&k, &v);
    }
    builder
        .callouts(move |c| {
            let answer = answers
                .get(made % answers.len().max(1))
                .copied()
                .unwrap_or(Answer::Early);
            made += 1;
            match (answer, service.answer(c, at(T0))) {
                (_, CalloutAnswer::Unreachable) | (Answer::Unreachable, _) => {
                    CalloutAnswer::Unreachable
                }
                (Answer::Early, served) => served,
                (
                    Answer::Within(ms) | Answer::Late(ms),
                    CalloutAnswer::Respond { response, .. },
                ) => CalloutAnswer::Respond {
                    response,
                    delay: Duration::from_millis(ms),
                },
                (Answer::Never, _) => CalloutAnswer::NoAnswer,
                (Answer::ServerError, _) => CalloutAnswer::now(Response::new(500)),
                (_, served) => served,
            }
        })
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// What a case did: how each stream ended, and how many steps it took.
pub struct Summary {
    pub endings: Vec<(Kind, Ending)>,
    pub steps: usize,
}

/// A case's first violation (or every one, with `keep_going`), and a transcript
/// of what happened up to it.
pub struct Failure {
    pub violations: Vec<Violation>,
    pub transcript: Vec<String>,
}

/// Runs a case: its acts, then until every stream is over (each stream that can
/// move moves; else the next timer fires; a client that waited `PATIENCE`
/// without anything moving gives up), checking after every step.
pub fn run(
    case: &Case,
    plugin: Arc<Plugin>,
    fx: &Fixtures,
    keep_going: bool,
) -> Result<Summary, Failure> {
    let mut proxy = start(case, plugin, fx);
    let mut keys: Vec<Option<StreamKey>> = vec![None; case.streams.len()];
    let mut checker = Checker::new(fx, &case.streams);
    let mut found: Vec<Violation> = Vec::new();
    let mut seen: BTreeSet<(Option<usize>, Invariant)> = BTreeSet::new();
    let mut steps = 0usize;
    let mut transcript: Vec<String> = Vec::new();
    // Checks, and says whether to stop here.
    let mut verify = |proxy: &Proxy, keys: &[Option<StreamKey>], what: String| {
        steps += 1;
        transcript.push(what);
        for v in checker.check(proxy, keys) {
            if seen.insert((v.stream, v.invariant)) {
                found.push(v);
            }
        }
        !found.is_empty() && !keep_going
    };
    let mut stopped = false;
    for act in &case.acts {
        let what = format!("{act:?} at +{}ms", since_t0(proxy.now()));
        match *act {
            Act::Begin(n) => {
                if let Some(slot) = keys.get_mut(n).filter(|k| k.is_none()) {
                    let spec = case.streams[n].clone();
                    let req = request(&spec, fx, case.seed, n);
                    *slot = Some(proxy.begin(req, move |r: &UpstreamRequest| response(&spec, r)));
                }
            }
            Act::Step(n) => {
                if let Some(Some(key)) = keys.get(n) {
                    proxy.step_stream(*key);
                }
            }
            Act::Advance(ms) => {
                let target = proxy.now() + Duration::from_millis(ms);
                while proxy.fire_next_timer_by(target) {
                    let what = format!("timer at +{}ms", since_t0(proxy.now()));
                    if verify(&proxy, &keys, what) {
                        stopped = true;
                        break;
                    }
                }
                if proxy.now() < target {
                    proxy.clock().set(target);
                }
            }
            Act::Reset(n) => {
                if let Some(Some(key)) = keys.get(n) {
                    proxy.reset_stream(*key);
                }
            }
            Act::Fault { call, times } => {
                if let Some((name, status)) = FAULTY_CALLS.get(call) {
                    proxy.inject(Fault::new(name, *status).times(times));
                }
            }
        }
        if stopped || verify(&proxy, &keys, what) {
            stopped = true;
            break;
        }
    }
    let mut idle_since = proxy.now();
    while !stopped && !checker_done(&proxy, &keys) {
        let open: Vec<StreamKey> = keys
            .iter()
            .flatten()
            .copied()
            .filter(|k| proxy.outcome(*k).is_none())
            .collect();
        let what;
        if let Some(k) = open.iter().find(|k| proxy.step_stream(**k)) {
            what = format!("drain: step {k:?}");
            idle_since = proxy.now();
        } else if proxy.now() >= idle_since + PATIENCE {
            for k in &open {
                proxy.reset_stream(*k);
            }
            what = "drain: the clients give up".to_owned();
        } else {
            let until = proxy
                .next_timer()
                .map_or(idle_since + PATIENCE, |t| t.min(idle_since + PATIENCE));
            if !proxy.fire_next_timer_by(until) && proxy.now() < until {
                proxy.clock().set(until);
            }
            what = format!("drain: timer at +{}ms", since_t0(proxy.now()));
        }
        stopped = verify(&proxy, &keys, what);
    }
    if !found.is_empty() {
        for (n, key) in keys.iter().enumerate() {
            if let Some(key) = key {
                transcript.push(format!("stream {n}: {:#?}", proxy.trace(*key)));
            }
        }
        return Err(Failure {
            violations: found,
            transcript,
        });
    }
    let endings = checker
        .ended
        .iter()
        .map(|(n, e)| (case.streams[*n].kind, *e))
        .collect();
    Ok(Summary { endings, steps })
}

/// Every stream begun is over and checked.
fn checker_done(proxy: &Proxy, keys: &[Option<StreamKey>]) -> bool {
    keys.iter().flatten().all(|k| proxy.outcome(*k).is_some())
}

fn since_t0(t: SystemTime) -> u128 {
    t.duration_since(at(T0)).unwrap_or_default().as_millis()
}

/// Shrinks a failing case: drops runs of acts, then streams' cuts and trailers,
/// while the same invariant still fails. Bounded: the result is printed whole
/// either way.
pub fn shrink(case: &Case, invariant: Invariant, plugin: &Arc<Plugin>, fx: &Fixtures) -> Case {
    let mut best = case.clone();
    let mut budget = 400;
    let still_fails = |c: &Case, budget: &mut i32| {
        *budget -= 1;
        matches!(run(c, plugin.clone(), fx, false), Err(f) if f.violations[0].invariant == invariant)
    };
    let mut chunk = best.acts.len().div_ceil(2);
    while chunk >= 1 && budget > 0 {
        let mut i = 0;
        let mut progressed = false;
        while i < best.acts.len() && budget > 0 {
            let mut candidate = best.clone();
            candidate
                .acts
                .drain(i..(i + chunk).min(candidate.acts.len()));
            if still_fails(&candidate, &mut budget) {
                best = candidate;
                progressed = true;
            } else {
                i += chunk;
            }
        }
        if !progressed {
            chunk /= 2;
        }
    }
    for n in 0..best.streams.len() {
        for simplify in [
            |s: &mut StreamSpec| s.request_cuts.clear(),
            |s: &mut StreamSpec| s.response_cuts.clear(),
            |s: &mut StreamSpec| s.request_trailers = false,
            |s: &mut StreamSpec| s.response_trailers = false,
        ] {
            let mut candidate = best.clone();
            simplify(&mut candidate.streams[n]);
            if budget > 0 && still_fails(&candidate, &mut budget) {
                best = candidate;
            }
        }
    }
    best
}
