//! The plugin configuration both benchmarks run (the Envoy one and the harness one), so
//! that their figures describe the same work.

use serde_json::{Value, json};

/// The example policy (`policies/example.json`, given as text) plus what the
/// benchmarks ask of it: the insurer's rule also on the 64 KB history route (the
/// example releases the history to the patient and the research lab only), and a route
/// for `GET /status/{code}` with no response fields, so that a request without a body
/// measures the token check and the policy alone. `audit: false` turns the audit log
/// off. The error names what the example lacks.
pub fn bench_policy(example: &str, audit: bool) -> Result<Value, String> {
    let mut policy: Value =
        serde_json::from_str(example).map_err(|e| format!("the example policy: {e}"))?;
    let routes = policy
        .get_mut("routes")
        .and_then(Value::as_array_mut)
        .ok_or("the example policy has no routes")?;
    let insurer = routes
        .iter()
        .find(|r| r["name"] == "patient-record")
        .and_then(|r| r["rules"].as_array())
        .and_then(|rules| rules.iter().find(|r| r["name"] == "insurer-claims"))
        .cloned()
        .ok_or("the example policy has no insurer-claims rule on patient-record")?;
    let history = routes
        .iter_mut()
        .find(|r| r["name"] == "patient-history")
        .and_then(|r| r.get_mut("rules"))
        .and_then(Value::as_array_mut)
        .ok_or("the example policy has no patient-history route")?;
    if !history.iter().any(|r| r["name"] == "insurer-claims") {
        history.insert(1.min(history.len()), insurer);
    }
    routes.push(json!({
        "name": "bench-no-body",
        "methods": ["GET"],
        "path": "/status/{code}",
        "rules": [{
            "name": "insurer-claims",
            "purposes": ["claims"],
            "partners": ["insurers"],
            "consent_actions": ["read"],
            "release": ["billing"]
        }]
    }));
    if !audit {
        policy["audit"] = json!({"log": false});
    }
    Ok(policy)
}
