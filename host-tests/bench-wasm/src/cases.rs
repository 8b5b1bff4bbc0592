//! The benchmark cases. Each builds its inputs, then repeats one operation until its
//! time budget is spent and reports the time per operation.

use std::hint::black_box;
use std::time::{Duration, Instant};

use consentry_core::config::Config;
use consentry_core::http::Headers;
use consentry_core::policy::Facts;
use consentry_core::redact::{
    FieldAction, FieldPath, KeyRing, Limits, Plan, RedactContext, Unclassified, redact,
};
use consentry_core::token::{TokenCache, Verifier, compile_issuers};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Runs one JSON request (see the crate documentation) and returns the JSON answer.
pub fn run(request: &[u8]) -> String {
    let answer = serde_json::from_slice::<Value>(request)
        .map_err(|e| format!("the request is not JSON: {e}"))
        .and_then(|v| case(&v));
    match answer {
        Ok(v) => v.to_string(),
        Err(e) => json!({ "error": e }).to_string(),
    }
}

fn case(v: &Value) -> Result<Value, String> {
    let budget = Duration::from_millis(v["budget_ms"].as_u64().unwrap_or(300));
    let num = |k: &str| {
        v[k].as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(format!("{k}: a number is needed"))
    };
    let text = |k: &str| v[k].as_str().ok_or(format!("{k}: a string is needed"));
    match text("kind")? {
        "redact" => redact_case(num("size")?, num("paths")?, budget, false),
        "baseline" => redact_case(num("size")?, num("paths")?, budget, true),
        "verify" => verify_case(
            &v["issuers"],
            text("token")?,
            v["now"].as_u64().unwrap_or(0),
            v["cached"].as_bool().unwrap_or(false),
            budget,
        ),
        "policy" => policy_case(
            num("routes")?,
            num("rules")?,
            &v["issuers"],
            text("token")?,
            v["now"].as_u64().unwrap_or(0),
            v["cached"].as_bool().unwrap_or(false),
            budget,
        ),
        "sha256" => {
            let data = vec![0x5au8; num("size")?];
            let (ns, ops) = timed(budget, || Sha256::digest(black_box(&data))[0] as usize);
            Ok(json!({"ns_per_op": ns, "ops": ops, "mb_per_s": data.len() as f64 / ns * 1e3}))
        }
        other => Err(format!("unknown kind {other:?}")),
    }
}

/// Calls `f` once untimed, then repeatedly until `budget` has passed (at least three
/// times); nanoseconds per call and the number of timed calls.
fn timed(budget: Duration, mut f: impl FnMut() -> usize) -> (f64, u64) {
    black_box(f());
    let start = Instant::now();
    let mut n = 0u64;
    while n < 3 || start.elapsed() < budget {
        black_box(f());
        n += 1;
    }
    (start.elapsed().as_nanos() as f64 / n as f64, n)
}

// ---------------------------------------------------------------------------------
// Redaction: the core's redactor against serde_json parse-modify-serialize, on the
// bodies and paths of the core's own benchmark (`plugin/core/benches/redact.rs`).

#[path = "../../../plugin/core/benches/support/records.rs"]
mod records;

use records::FIELDS;
pub use records::body;

const LIMITS: Limits = Limits {
    max_bytes: 64 << 20,
    max_depth: 64,
};

/// `count` field names under `$.records[*]`: the record's own fields first, then
/// names no record has (a large policy).
fn field_names(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            FIELDS
                .get(i)
                .map_or_else(|| format!("absent{i}"), |f| (*f).to_owned())
        })
        .collect()
}

fn redact_case(
    size: usize,
    paths: usize,
    budget: Duration,
    baseline: bool,
) -> Result<Value, String> {
    let body = body(size);
    let names = field_names(paths);
    let (ns, ops) = if baseline {
        timed(budget, || serde_remove(&body, &names))
    } else {
        let mut rules = Vec::new();
        for n in &names {
            let path = FieldPath::parse(&format!("$.records[*].{n}")).map_err(|e| e.to_string())?;
            rules.push((path, FieldAction::Remove));
        }
        let plan = Plan::build(rules, Unclassified::Keep).map_err(|e| e.to_string())?;
        let keys = KeyRing::new();
        let run = || {
            let mut random = |buf: &mut [u8]| buf.fill(7);
            let mut cx = RedactContext {
                pseudonym_keys: &keys,
                grantee: None,
                recipient: None,
                random: &mut random,
            };
            redact(&plan, black_box(&body), LIMITS, &mut cx).map_or(0, |r| r.body.len())
        };
        if run() == 0 {
            return Err("the redactor refused the body".into());
        }
        timed(budget, run)
    };
    Ok(json!({
        "ns_per_op": ns,
        "ops": ops,
        "bytes": body.len(),
        "mb_per_s": body.len() as f64 / ns * 1e3,
    }))
}

/// The baseline: parse into a `Value`, remove the fields from every record, serialise.
pub fn serde_remove(body: &[u8], names: &[String]) -> usize {
    let Ok(mut doc) = serde_json::from_slice::<Value>(black_box(body)) else {
        return 0;
    };
    if let Some(records) = doc.get_mut("records").and_then(Value::as_array_mut) {
        for record in records {
            if let Some(obj) = record.as_object_mut() {
                for n in names {
                    obj.shift_remove(n);
                }
            }
        }
    }
    serde_json::to_vec(&doc).map_or(0, |v| v.len())
}

// ---------------------------------------------------------------------------------
// Token verification.

fn verify_case(
    issuers: &Value,
    token: &str,
    now: u64,
    cached: bool,
    budget: Duration,
) -> Result<Value, String> {
    let issuers = compile_issuers(issuers, "$.issuers").map_err(|e| format!("{e:?}"))?;
    let verifier = Verifier::new(issuers);
    verifier
        .verify(token.as_bytes(), now)
        .map_err(|e| format!("the token does not verify: {}", e.as_str()))?;
    let (ns, ops) = if cached {
        let mut cache = TokenCache::default();
        timed(budget, || {
            verifier
                .verify_cached(&mut cache, black_box(token.as_bytes()), now)
                .map_or(0, |c| c.subject.len())
        })
    } else {
        timed(budget, || {
            verifier
                .verify(black_box(token.as_bytes()), now)
                .map_or(0, |c| c.subject.len())
        })
    };
    Ok(json!({"ns_per_op": ns, "ops": ops}))
}

// ---------------------------------------------------------------------------------
// Policy decisions: route match, rule evaluation, and the field plan.

/// A configuration with `routes` routes of the example record's fields, each with
/// `rules` rules of which only the last one allows the insurer persona.
pub fn policy_config(routes: usize, rules: usize, issuers: &Value) -> Value {
    let fields = json!([
        {"path": "$.id", "public": true},
        {"path": "$.resourceType", "public": true},
        {"path": "$.updated_at", "public": true},
        {"path": "$.identity.name", "domain": "identity", "sensitivity": "high"},
        {"path": "$.identity.birth_date", "domain": "identity", "sensitivity": "high"},
        {"path": "$.identity.gender", "domain": "identity"},
        {"path": "$.identity.national_id", "domain": "identity", "sensitivity": "special"},
        {"path": "$.identity.mrn", "domain": "identity", "sensitivity": "high"},
        {"path": "$.guardians", "domain": "identity", "sensitivity": "high"},
        {"path": "$.contact", "domain": "contact", "sensitivity": "high"},
        {"path": "$.contact.phone", "domain": "contact", "sensitivity": "high"},
        {"path": "$.clinical", "domain": "clinical", "sensitivity": "special"},
        {"path": "$.billing", "domain": "billing"},
        {"path": "$.billing.policy_number", "domain": "billing", "sensitivity": "high"},
        {"path": "$.billing.invoices[*].transaction_ref", "domain": "billing", "sensitivity": "high"}
    ]);
    let route = |r: usize| {
        let mut list: Vec<Value> = (1..rules)
            .map(|k| {
                json!({
                    "name": format!("research-{k}"),
                    "purposes": ["research"],
                    "partners": ["research_labs"],
                    "subject": {"is": "id"},
                    "consent_actions": ["read"],
                    "release": ["clinical"]
                })
            })
            .collect();
        list.push(json!({
            "name": "insurer-claims",
            "purposes": ["claims"],
            "partners": ["insurers"],
            "subject": {"is": "id"},
            "consent_actions": ["read"],
            "release": ["billing", "identity"],
            "actions": {"$.contact.phone": {"mask": {"keep_last": 3, "keep_separators": true}}}
        }));
        json!({
            "name": format!("route-{r}"),
            "methods": ["GET"],
            "path": format!("/r{r}/patients/{{id}}"),
            "response": {"fields": fields.clone()},
            "rules": list
        })
    };
    json!({
        "version": 1,
        "token": {"header": "authorization", "scheme": "Bearer"},
        "issuers": issuers,
        "domains": ["identity", "contact", "clinical", "billing"],
        "purposes": ["claims", "research", "access"],
        "partners": {"insurers": ["insurer-acme"], "research_labs": ["lab-ucl"]},
        "audit": {"log": false},
        "routes": (0..routes).map(route).collect::<Vec<_>>()
    })
}

fn policy_case(
    routes: usize,
    rules: usize,
    issuers: &Value,
    token: &str,
    now: u64,
    cached: bool,
    budget: Duration,
) -> Result<Value, String> {
    let text = policy_config(routes, rules, issuers).to_string();
    let env = |_: &str| None;
    let compile = || Config::from_json(text.as_bytes(), &env).map_err(|e| e.to_string());
    let mut config = compile()?;
    let consent = Verifier::new(config.issuers.clone())
        .verify(token.as_bytes(), now)
        .map_err(|e| format!("the token does not verify: {}", e.as_str()))?;
    let headers = Headers::new();
    let paths: Vec<String> = (0..routes).map(|r| format!("/r{r}/patients/p-1")).collect();
    // One decision: route match, rules, plan (built, or taken from the cache).
    let decide = |config: &Config, path: &str| -> Result<usize, String> {
        let policy = &config.policy;
        let (ri, params) = policy.route_for("GET", path).ok_or("no route")?;
        let facts = Facts {
            consent: &consent,
            method: "GET",
            path,
            params: &params,
            query: None,
            headers: &headers,
            source_ip: None,
            peer: None,
            spiffe_id: None,
            now: i64::try_from(now).unwrap_or(i64::MAX),
        };
        let d = policy.decide(ri, &facts);
        if !d.allow {
            return Err(format!("refused: {}", d.reason.as_str()));
        }
        let plan = policy.plan(ri, d.rule.unwrap_or(0), d.released)?;
        Ok(plan.rules().len())
    };
    for p in &paths {
        decide(&config, p)?;
    }
    let start = Instant::now();
    let mut ops = 0u64;
    let mut spent = Duration::ZERO;
    while ops < 3 || start.elapsed() < budget {
        if !cached {
            // A fresh configuration: every plan is built again at its first decision.
            config = compile()?;
        }
        let t = Instant::now();
        for p in &paths {
            black_box(decide(&config, black_box(p))?);
        }
        spent += t.elapsed();
        ops += paths.len() as u64;
    }
    Ok(json!({"ns_per_op": spent.as_nanos() as f64 / ops as f64, "ops": ops}))
}
