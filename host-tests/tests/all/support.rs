//! Shared fixtures for the harness suite.

use std::sync::Arc;

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

/// A proxy with the demo policy.
pub fn demo_proxy() -> ProxyBuilder {
    Proxy::builder(plugin()).config(repo_file("policies/demo.json"))
}
