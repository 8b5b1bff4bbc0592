//! The parity suite on the Envoy side: every scenario in `host-tests/scenarios`, run
//! through the real `.wasm` in a real Envoy in front of an upstream that answers what
//! the scenario says, on both kinds of host: with `allow_on_headers_stop_iteration`
//! in `hold` mode (`consentry.yaml`), and without it in `late_commit` mode
//! (`consentry-noflag.yaml`, what Istio and Envoy Gateway amount to). Each must meet
//! its expectation here, and Envoy and the harness must agree on status, the headers
//! that matter, and the body (or both see the stream fail).
//!
//! Needs `./envoy/install.sh` (or ENVOY_BIN) and the plugin's release build; without
//! them the test fails with the command to run. It never skips.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code: a failed step must fail the test"
)]

use std::collections::BTreeMap;

use consentry_envoy::scripted::{Reply, ScriptedUpstream};
use consentry_envoy::{Envoy, send};
use consentry_host::plugin::workspace_root;
use consentry_host::scenario::{
    HostMode, Observed, ReceivedRequest, Scenario, differences, scenario_dir,
};
use consentry_host::{Plugin, Response};

fn reply_of(r: &Response) -> Reply {
    // Pieces a little apart, so that Envoy sees several body chunks, but not so far
    // apart that a body of hundreds of pieces takes long.
    let mut reply = Reply::new(r.status)
        .pieces(&r.chunks)
        .gap(std::time::Duration::from_millis(2));
    for (n, v) in &r.headers {
        reply = reply.header(n, &String::from_utf8_lossy(v));
    }
    reply
}

#[test]
fn every_scenario_behaves_the_same_in_envoy_and_in_the_harness() {
    let scenarios = Scenario::load_dir(&scenario_dir()).unwrap();
    assert!(!scenarios.is_empty());
    let plugin = Plugin::release_build().unwrap_or_else(|e| panic!("{e:#}"));
    let root = workspace_root();

    // One Envoy per configuration, shared by the scenarios that use it.
    let mut by_config: BTreeMap<String, Vec<&Scenario>> = BTreeMap::new();
    for s in &scenarios {
        by_config.entry(s.file.config.clone()).or_default().push(s);
    }
    let mut failures = Vec::new();
    // The consent service (keys, status lists) is the example service.
    let consent = consentry_example_service::spawn("127.0.0.1:0").unwrap();
    for mode in HostMode::ALL {
        for (config, group) in &by_config {
            let found = run_group(mode, config, group, &plugin, &root, consent.addr().port());
            failures.extend(found);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The scenarios of one configuration on one kind of host, in one Envoy.
fn run_group(
    mode: HostMode,
    config: &str,
    group: &[&Scenario],
    plugin: &std::sync::Arc<Plugin>,
    root: &std::path::Path,
    consent_port: u16,
) -> Vec<String> {
    let mut failures = Vec::new();
    {
        let upstream = ScriptedUpstream::start().unwrap();
        let json = group[0].config_json_as(root, mode).unwrap();
        let template = if mode.flag() {
            "consentry.yaml"
        } else {
            "consentry-noflag.yaml"
        };
        let envoy = Envoy::builder()
            .template(template)
            .upstream_port(upstream.port())
            .var("CONSENT_PORT", consent_port)
            .plugin_config_json(&json)
            .start()
            .unwrap_or_else(|e| panic!("{config} ({}): {e:#}", mode.name()));
        for s in group {
            let label = format!("{} ({})", s.name, mode.name());
            let exchange = s.exchange(std::time::SystemTime::now()).unwrap();
            let request = exchange.client_request().unwrap();
            let response = exchange.upstream_response().unwrap();
            upstream.clear_received();
            upstream.set_default(reply_of(&response));
            let headers = request.text_headers();
            let header_refs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let body = request.chunks.concat();
            let url = format!("{}{}", envoy.base_url(), request.path);
            let sent = send(
                &request.method,
                &url,
                &header_refs,
                (!body.is_empty()).then_some(body.as_slice()),
            );
            let received = upstream.received();
            // A stream that failed (late commit's reset) is a failed response to the
            // client: it has no status or body to compare.
            let (got, reset) = match sent {
                Ok(got) => (got, false),
                Err(e) if mode == HostMode::LateCommit => {
                    let failed = consentry_envoy::HttpResponse {
                        status: 0,
                        headers: Vec::new(),
                        body: format!("{e:#}").into_bytes(),
                    };
                    (failed, true)
                }
                Err(e) => panic!("{label}: {e:#}"),
            };
            let in_envoy = Observed::from_network(
                got.status,
                &got.headers,
                &got.body,
                received.first().map(|r| ReceivedRequest {
                    path: &r.path,
                    headers: &r.headers,
                    body: &r.body,
                }),
                reset,
            );
            for f in s.check_as(mode, &in_envoy) {
                failures.push(format!("{label} (Envoy): {f}"));
            }
            let outcome = s.run_in_harness_as(plugin.clone(), root, mode).unwrap();
            let in_harness = Observed::from(&outcome);
            for d in differences("Envoy", &in_envoy, "harness", &in_harness) {
                failures.push(format!("{label}: {d}"));
            }
        }
        let log = envoy.log();
        assert!(
            !log.contains("wasm trap") && !log.contains("panicked"),
            "{config} ({}): the plugin crashed in Envoy:\n{}",
            mode.name(),
            consentry_envoy::tail(&log, 40)
        );
    }
    failures
}
