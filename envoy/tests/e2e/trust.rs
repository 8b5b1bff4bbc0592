//! The trust boundary: where the client's address comes from. A `source_cidrs` rule,
//! the per-caller limit and the lockout all key on the proxy's `source.address`, which
//! Envoy takes from `x-forwarded-for` unless told whom to trust.
//!
//! - `consentry.yaml` (the edge, `use_remote_address: true`): the address is the TCP
//!   peer (127.0.0.1 here), whatever `x-forwarded-for` says; a client's `x-request-id`
//!   is replaced by Envoy's own.
//! - `consentry-behind-lb.yaml` (`xff_num_trusted_hops: 1`): the address is the last
//!   `x-forwarded-for` entry, the one the load balancer appended (the test client plays
//!   the load balancer); entries before it, the client's own, count for nothing.

use std::time::Duration;

use consentry_envoy::scripted::{Received, Reply, ScriptedUpstream};
use consentry_envoy::{HttpResponse, RunningEnvoy};
use consentry_example_service::RunningService;
use serde_json::{Value, json};

use crate::support::*;

const RECORD: &str =
    r#"{"id":"p-1","resourceType":"Patient","identity":{"name":"Eleanor Whitcombe"}}"#;

/// The example policy with every allow rule of `patient-record` (`/patients/{id}`)
/// limited to `record_from` and every allow rule of `patient-billing`
/// (`/patients/{id}/billing`) to `billing_from`.
fn policy_with_sources(record_from: &str, billing_from: &str) -> Value {
    let mut policy = example_policy();
    for route in policy["routes"].as_array_mut().unwrap() {
        let cidr = match route["name"].as_str() {
            Some("patient-record") => record_from,
            Some("patient-billing") => billing_from,
            _ => continue,
        };
        for rule in route["rules"].as_array_mut().unwrap() {
            if rule["effect"] != "deny" {
                rule["source_cidrs"] = json!([cidr]);
            }
        }
    }
    policy
}

struct Edge {
    envoy: RunningEnvoy,
    upstream: ScriptedUpstream,
    _consent: RunningService,
}

/// Envoy from `template` with `policy`, in front of a scripted upstream that answers a
/// small patient record (the example service is the consent service).
fn edge(template: &str, policy: &Value) -> Edge {
    let consent = example_service(60);
    let upstream = ScriptedUpstream::start().unwrap();
    upstream.set_default(
        Reply::new(200)
            .header("content-type", "application/json")
            .header("content-length", &RECORD.len().to_string())
            .body(RECORD),
    );
    require_prerequisites();
    let envoy = start(
        consentry_envoy::Envoy::builder()
            .template(template)
            .upstream_port(upstream.port())
            .var("CONSENT_PORT", consent.addr().port())
            .plugin_config_json(&policy.to_string()),
    );
    Edge {
        envoy,
        upstream,
        _consent: consent,
    }
}

fn insurer() -> String {
    sign(&claims("insurer"))
}

/// `GET path` with the token and `x-forwarded-for: xff` (none when empty).
fn get_from(envoy: &RunningEnvoy, path: &str, token: Option<&str>, xff: &str) -> HttpResponse {
    let auth = token.map(bearer);
    let mut headers = Vec::new();
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    if !xff.is_empty() {
        headers.push(("x-forwarded-for", xff));
    }
    get(envoy, path, &headers)
}

fn last_received(upstream: &ScriptedUpstream) -> Received {
    upstream
        .received()
        .pop()
        .expect("the upstream received the request")
}

#[test]
fn at_the_edge_no_forwarded_header_passes_a_source_cidrs_rule() {
    let _watchdog = watchdog("trust edge cidrs", Duration::from_secs(60));
    // The record only from 10.0.0.0/8, billing only from the loopback peer.
    let e = edge(
        "consentry.yaml",
        &policy_with_sources("10.0.0.0/8", "127.0.0.0/8"),
    );
    let token = insurer();

    for xff in [
        "10.1.2.3",
        "10.1.2.3, 10.4.5.6",
        "192.0.2.1, 10.1.2.3",
        "10.1.2.3,10.1.2.3,10.1.2.3",
    ] {
        let r = get_from(&e.envoy, "/patients/p-1", Some(&token), xff);
        assert_problem(&r, 403, "access_denied");
        assert!(!r.text().contains("Whitcombe"), "{xff}: {}", r.text());
    }
    // Envoy's own header for the external address cannot be forged either.
    let r = get(
        &e.envoy,
        "/patients/p-1",
        &[
            ("authorization", &bearer(&token)),
            ("x-envoy-external-address", "10.1.2.3"),
        ],
    );
    assert_problem(&r, 403, "access_denied");
    assert!(
        e.upstream.received().is_empty(),
        "a refused request reached the upstream"
    );

    // The real peer passes the rule that names it, with or without a forged header.
    // The upstream learns the peer as the external address; Envoy appends to
    // x-forwarded-for (its own address, the peer being loopback) and never makes the
    // forged entry the last.
    for (xff, entries) in [("", 1), ("10.1.2.3", 2)] {
        let r = get_from(&e.envoy, "/patients/p-1/billing", Some(&token), xff);
        assert_eq!(r.status, 200, "{xff:?}: {}", r.text());
        let forwarded = last_received(&e.upstream);
        assert_eq!(
            forwarded.header("x-envoy-external-address"),
            Some("127.0.0.1")
        );
        let chain: Vec<&str> = forwarded
            .header("x-forwarded-for")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .collect();
        assert_eq!(chain.len(), entries, "{chain:?}");
        assert_ne!(chain.last(), Some(&"10.1.2.3"), "{chain:?}");
    }
}

#[test]
fn at_the_edge_a_client_request_id_is_replaced() {
    let _watchdog = watchdog("trust request id", Duration::from_secs(60));
    let e = edge("consentry.yaml", &example_policy());
    let chosen = "chosen-by-the-client-0001";
    let refused = get(&e.envoy, "/patients/p-1", &[("x-request-id", chosen)]);
    let body = assert_problem(&refused, 401, "token_missing");
    let id = body["request_id"].as_str().unwrap();
    assert_ne!(id, chosen);
    assert_eq!(id.len(), 36, "Envoy's own UUID: {id}");

    let token = insurer();
    let r = get(
        &e.envoy,
        "/patients/p-1",
        &[("authorization", &bearer(&token)), ("x-request-id", chosen)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let upstream_id = last_received(&e.upstream)
        .header("x-request-id")
        .map(str::to_owned);
    assert!(
        upstream_id.as_deref().is_some_and(|u| u != chosen),
        "{upstream_id:?}"
    );
    let records = wait_for_decisions(&e.envoy, 2);
    assert!(
        records.iter().all(|r| r["request_id"] != chosen),
        "{records:?}"
    );
    assert_eq!(records[0]["request_id"], id);
}

/// Three refusals from the peer lock it out; `x-forwarded-for` changes nothing.
#[test]
fn at_the_edge_no_forwarded_header_escapes_a_lockout() {
    let _watchdog = watchdog("trust edge lockout", Duration::from_secs(60));
    let mut policy = example_policy();
    policy["rate_limits"] =
        json!({"lockout": {"refusals": 3, "window_seconds": 60, "lock_seconds": 60}});
    let e = edge("consentry.yaml", &policy);
    for xff in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
        assert_problem(
            &get_from(&e.envoy, "/patients/p-1", None, xff),
            401,
            "token_missing",
        );
    }
    let token = insurer();
    for xff in ["10.9.9.9", "192.0.2.44", "10.9.9.9, 10.8.8.8", ""] {
        let r = get_from(&e.envoy, "/patients/p-1", Some(&token), xff);
        assert_problem(&r, 403, "locked_out");
        assert!(!r.text().contains("Whitcombe"));
    }
    assert!(e.upstream.received().is_empty());
    // Every record names the same caller: the peer's address, pseudonymised.
    let records = wait_for_decisions(&e.envoy, 7);
    let callers: std::collections::BTreeSet<_> = records
        .iter()
        .map(|r| r["caller"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(callers.len(), 1, "{callers:?}");
    assert!(
        callers.iter().all(|c| c.starts_with("addr:")),
        "{callers:?}"
    );
}

/// Behind the load balancer, its entry (the last) is the client's address: it passes
/// the rule that names it, and what the client wrote before it counts for nothing.
#[test]
fn behind_a_load_balancer_the_policy_sees_the_address_it_appended() {
    let _watchdog = watchdog("trust behind lb", Duration::from_secs(60));
    let e = edge(
        "consentry-behind-lb.yaml",
        &policy_with_sources("10.0.0.0/8", "127.0.0.0/8"),
    );
    let token = insurer();
    for (xff, status) in [
        ("10.1.2.3", 200),
        ("192.0.2.7, 10.1.2.3", 200),
        // The client wrote 10.1.2.3; the load balancer saw 192.0.2.7.
        ("10.1.2.3, 192.0.2.7", 403),
        ("10.1.2.3,10.4.5.6, 192.0.2.7", 403),
        // No entry: the peer (127.0.0.1) is the client.
        ("", 403),
    ] {
        let r = get_from(&e.envoy, "/patients/p-1", Some(&token), xff);
        assert_eq!(r.status, status, "{xff:?}: {}", r.text());
        if status == 403 {
            assert_problem(&r, 403, "access_denied");
        }
    }
    // A request without the header comes from the peer, which the billing rule names.
    let r = get_from(&e.envoy, "/patients/p-1/billing", Some(&token), "");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get_from(&e.envoy, "/patients/p-1/billing", Some(&token), "10.1.2.3");
    assert_problem(&r, 403, "access_denied");

    // Envoy appends after the entry it trusted, and tells the upstream which it was.
    let r = get_from(
        &e.envoy,
        "/patients/p-1",
        Some(&token),
        "192.0.2.7, 10.1.2.3",
    );
    assert_eq!(r.status, 200);
    let forwarded = last_received(&e.upstream);
    let chain: Vec<&str> = forwarded
        .header("x-forwarded-for")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .collect();
    assert_eq!(chain.len(), 3, "{chain:?}");
    assert_eq!(chain[..2], ["192.0.2.7", "10.1.2.3"]);
    assert_eq!(
        forwarded.header("x-envoy-external-address"),
        Some("10.1.2.3")
    );
}

/// Behind the load balancer, a locked-out client stays locked out whatever it writes
/// before the load balancer's entry; another client is not affected.
#[test]
fn behind_a_load_balancer_a_lockout_follows_the_address_it_appended() {
    let _watchdog = watchdog("trust behind lb lockout", Duration::from_secs(60));
    let mut policy = example_policy();
    policy["rate_limits"] =
        json!({"lockout": {"refusals": 3, "window_seconds": 60, "lock_seconds": 60}});
    let e = edge("consentry-behind-lb.yaml", &policy);
    for _ in 0..3 {
        assert_problem(
            &get_from(&e.envoy, "/patients/p-1", None, "10.1.2.3"),
            401,
            "token_missing",
        );
    }
    let token = insurer();
    for xff in [
        "10.1.2.3",
        "10.9.9.9, 10.1.2.3",
        "192.0.2.1,10.9.9.9, 10.1.2.3",
    ] {
        let r = get_from(&e.envoy, "/patients/p-1", Some(&token), xff);
        assert_problem(&r, 403, "locked_out");
    }
    for xff in ["10.1.2.3, 10.9.9.9", "10.9.9.9", ""] {
        let r = get_from(&e.envoy, "/patients/p-1", Some(&token), xff);
        assert_eq!(r.status, 200, "{xff:?}: {}", r.text());
    }
}

/// Every configuration that faces clients draws the boundary; every Consentry one also
/// masks Envoy's own replies (all three mappers, each sparing the plugin's replies).
#[test]
fn every_shipped_configuration_draws_the_trust_boundary() {
    let names = consentry_envoy::template_names().unwrap();
    assert!(
        names.contains(&"consentry-behind-lb.yaml".to_owned()),
        "{names:?}"
    );
    for name in names.iter().filter(|n| *n != "probe.yaml") {
        let text = std::fs::read_to_string(consentry_envoy::configs_dir().join(name)).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert!(lines.contains(&"use_remote_address: true"), "{name}");
        let hops = if name == "consentry-behind-lb.yaml" {
            1
        } else {
            0
        };
        if name.starts_with("consentry") {
            assert!(
                lines.contains(&format!("xff_num_trusted_hops: {hops}").as_str()),
                "{name}"
            );
            assert!(lines.contains(&"local_reply_config:"), "{name}");
            let guards = lines
                .iter()
                .filter(|l| l.contains("!response.code_details.startsWith('consentry.')"))
                .count();
            assert_eq!(guards, 3, "{name}");
            assert_eq!(
                lines
                    .iter()
                    .filter(|l| l.starts_with("content_type: application/problem+json"))
                    .count(),
                3,
                "{name}"
            );
        } else {
            assert!(!text.contains("xff_num_trusted_hops: 1"), "{name}");
        }
    }
}
