//! Throughput of `redact` against a serde_json parse-modify-serialize baseline
//! (`serde_json::Value` with `preserve_order` and `arbitrary_precision`, the same
//! paths removed or replaced, `to_vec`), in one run on one machine.
//!
//! `cargo bench -p consentry-core --bench redact` prints a table; nothing asserts
//! on time. Three mixes of actions: every path removes; every other path replaces
//! its value with a SHA-256 hash (both sides then spend much of their time in
//! SHA-256); or every path removes and the removed containers (`address`, `tags`,
//! `visits`) also have a rule below them that matches nothing, so the pass descends
//! into them as shells and prunes them when they close empty (same output as the
//! plain removal). Beyond the ten fields a record has, paths name fields that do not
//! occur (a large policy). Two more rows time the same removals written as any-depth
//! paths (`$..ssn`: every container is then walked, not skipped) and as upper-case
//! names matched case-insensitively (`$.records[*].SSN`: every key misses the exact
//! lookup and is folded); both give the same output as the plain removal.
//! `BENCH_MS` sets the time per measurement (default 400; 0 runs each case four times,
//! a fixed amount of work to count instructions of); `BENCH_MIXES` (comma-separated)
//! keeps only those rows (`remove,remove+hash,remove+prune` are the rows that existed
//! before any-depth and case-insensitive paths).

// A benchmark binary: setup failures may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use consentry_core::redact::{
    FieldAction, FieldPath, HashEncoding, KeyRing, Limits, Plan, RedactContext, Unclassified,
    redact,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

#[path = "support/records.rs"]
mod records;

use records::{FIELDS, body};

const LIMITS: Limits = Limits {
    max_bytes: 64 << 20,
    max_depth: 64,
};

/// `count` rules on `$.records[*].<field>`: the record's fields first, then absent ones.
fn rules(count: usize, hash: bool) -> Vec<(Vec<String>, FieldAction)> {
    (0..count)
        .map(|i| {
            let field = FIELDS
                .get(i)
                .map_or_else(|| format!("absent{i}"), |f| (*f).to_owned());
            let action = if i % 2 == 0 || !hash {
                FieldAction::Remove
            } else {
                FieldAction::Hash {
                    encoding: HashEncoding::Hex,
                }
            };
            (vec!["records".to_owned(), "*".to_owned(), field], action)
        })
        .collect()
}

/// How the benchmark writes each rule's path.
#[derive(Clone, Copy, PartialEq)]
enum Form {
    /// `$.records[*].ssn`
    Explicit,
    /// `$..ssn`
    AnyDepth,
    /// `$.records[*].SSN`, matched case-insensitively.
    AnyCase,
}

/// The rules as a plan; with `shells`, each removed container also gets a hash rule
/// on a member no record has, which makes it a shell.
fn plan(rules: &[(Vec<String>, FieldAction)], shells: bool) -> Plan {
    plan_in(rules, shells, Form::Explicit)
}

fn plan_in(rules: &[(Vec<String>, FieldAction)], shells: bool, form: Form) -> Plan {
    let mut parsed = Vec::new();
    for (steps, action) in rules {
        let text = format!("$.{}[*].{}", steps[0], steps[2]);
        let path = match form {
            Form::Explicit => FieldPath::parse(&text).unwrap(),
            Form::AnyDepth => FieldPath::parse(&format!("$..{}", steps[2])).unwrap(),
            Form::AnyCase => {
                FieldPath::parse(&text.to_uppercase().replacen("$.RECORDS", "$.records", 1))
                    .unwrap()
                    .any_case()
            }
        };
        parsed.push((path, action.clone()));
        let below = match steps[2].as_str() {
            "address" => ".absent",
            "tags" | "visits" => "[*].absent",
            _ => continue,
        };
        if shells && *action == FieldAction::Remove {
            let hash = FieldAction::Hash {
                encoding: HashEncoding::Hex,
            };
            parsed.push((FieldPath::parse(&format!("{text}{below}")).unwrap(), hash));
        }
    }
    Plan::build(parsed, Unclassified::Keep).unwrap()
}

fn ours(plan: &Plan, body: &[u8]) -> usize {
    redacted(plan, body).len()
}

#[inline(never)]
fn redacted(plan: &Plan, body: &[u8]) -> Vec<u8> {
    let keys = KeyRing::new();
    let mut random = |buf: &mut [u8]| buf.fill(7);
    let mut cx = RedactContext {
        pseudonym_keys: &keys,
        grantee: None,
        recipient: None,
        random: &mut random,
    };
    redact(plan, body, LIMITS, &mut cx).unwrap().body
}

/// The baseline: parse into a `Value`, walk each path, remove or replace, serialise.
fn baseline(rules: &[(Vec<String>, FieldAction)], body: &[u8]) -> usize {
    let mut doc: Value = serde_json::from_slice(body).unwrap();
    for (steps, action) in rules {
        let Some(records) = doc.get_mut(&steps[0]).and_then(Value::as_array_mut) else {
            continue;
        };
        for record in records {
            let Some(obj) = record.as_object_mut() else {
                continue;
            };
            match action {
                FieldAction::Remove => {
                    obj.shift_remove(&steps[2]);
                }
                _ => {
                    if let Some(v) = obj.get_mut(&steps[2]) {
                        let text = match &*v {
                            Value::String(s) => s.clone().into_bytes(),
                            other => serde_json::to_vec(other).unwrap(),
                        };
                        const HEX: &[u8; 16] = b"0123456789abcdef";
                        let mut hex = String::with_capacity(64);
                        for b in Sha256::digest(&text) {
                            hex.push(HEX[usize::from(b >> 4)] as char);
                            hex.push(HEX[usize::from(b & 15)] as char);
                        }
                        *v = Value::String(hex);
                    }
                }
            }
        }
    }
    serde_json::to_vec(&doc).unwrap().len()
}

/// Bytes per second over enough repetitions to take `budget`.
fn throughput(bytes: usize, budget: Duration, mut f: impl FnMut() -> usize) -> f64 {
    black_box(f());
    let start = Instant::now();
    let mut runs = 0u64;
    while start.elapsed() < budget || runs < 3 {
        black_box(f());
        runs += 1;
    }
    (bytes as f64 * runs as f64) / start.elapsed().as_secs_f64()
}

fn main() {
    let budget = Duration::from_millis(
        std::env::var("BENCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(400),
    );
    let mixes = std::env::var("BENCH_MIXES").ok();
    println!(
        "{:>8} {:>6} {:>12} {:>14} {:>14} {:>7}",
        "body", "paths", "actions", "redact MB/s", "serde MB/s", "ratio"
    );
    for (label, size) in [("1 KB", 1 << 10), ("64 KB", 64 << 10), ("1 MB", 1 << 20)] {
        let body = body(size);
        for count in [1, 10, 100] {
            for (mix, hash, shells, form) in [
                ("remove", false, false, Form::Explicit),
                ("remove+hash", true, false, Form::Explicit),
                ("remove+prune", false, true, Form::Explicit),
                ("..remove", false, false, Form::AnyDepth),
                ("CI remove", false, false, Form::AnyCase),
            ] {
                if count == 1 && (hash || shells) {
                    continue; // one path (`ssn`): the remove row is the only one
                }
                if mixes
                    .as_ref()
                    .is_some_and(|m| !m.split(',').any(|x| x == mix))
                {
                    continue;
                }
                let rules = rules(count, hash);
                let plan = plan_in(&rules, shells, form);
                // Shells and other forms: the same output as the plain removal.
                let plain = self::plan(&rules, false);
                assert_eq!(redacted(&plan, &body), redacted(&plain, &body));
                let a = throughput(body.len(), budget, || ours(&plan, &body));
                let b = throughput(body.len(), budget, || baseline(&rules, &body));
                println!(
                    "{label:>8} {count:>6} {mix:>12} {:>14.1} {:>14.1} {:>6.1}x",
                    a / 1e6,
                    b / 1e6,
                    a / b
                );
            }
        }
    }
}
