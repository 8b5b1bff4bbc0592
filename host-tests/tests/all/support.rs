//! Shared fixtures for the harness suite.

use std::sync::Arc;
use std::time::SystemTime;

use consentry_host::fixtures::{ConsentService, dev_env};
use consentry_host::{Plugin, Proxy, ProxyBuilder};

/// The release build of the plugin; the error says how to build it.
pub fn plugin() -> Arc<Plugin> {
    match Plugin::release_build() {
        Ok(p) => p,
        Err(e) => panic!("{e:#}"),
    }
}

pub fn repo_file(path: &str) -> Vec<u8> {
    let full = consentry_host::plugin::workspace_root().join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

/// The example policy as JSON, with `edit` applied (to try a variation).
pub fn example_policy(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value =
        serde_json::from_slice(&repo_file("policies/example.json")).unwrap();
    edit(&mut v);
    v.to_string()
}

/// A proxy with `config`, the development secrets, and `service` answering the
/// plugin's calls, its clock at `now`.
pub fn proxy_with(config: String, service: &ConsentService, now: SystemTime) -> ProxyBuilder {
    let mut b = Proxy::builder(plugin()).config(config).now(now);
    for (k, v) in dev_env() {
        b = b.env(&k, &v);
    }
    let service = service.clone();
    b.callouts(move |c| service.answer(c, now))
}

/// One patient record of the example data, as exact text.
pub fn record(id: &str) -> String {
    let all: Vec<serde_json::Value> =
        serde_json::from_slice(&repo_file("examples/data/patients.json")).unwrap();
    let r = all
        .into_iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no patient {id}"));
    serde_json::to_string(&r).unwrap()
}
