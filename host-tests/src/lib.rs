//! A native proxy-wasm host on wasmtime that runs the plugin's `.wasm` as Envoy
//! 1.40 does, so the plugin and its policies are tested without a proxy.
//!
//! ```no_run
//! use consentry_host::{Plugin, Proxy, Request, Response};
//! let mut proxy = Proxy::builder(Plugin::release_build()?)
//!     .config(std::fs::read("policies/example.json")?)
//!     .env("CONSENTRY_PSEUDONYM_KEYS", consentry_host::fixtures::DEV_PSEUDONYM_KEYS)
//!     .start()?;
//! let out = proxy.send(Request::get("/patients/p-1"), Response::json(200, "{}"));
//! assert_eq!(out.client.status, 401);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Where Envoy's behaviour is surprising, the host imitates it (see the
//! project's Envoy host notes): it must never be kinder than Envoy, or a plugin
//! that works only here would pass.

pub mod abi;
pub mod audit_log;
pub mod explain;
pub mod fidelity;
pub mod fixtures;
pub mod lint;
pub mod message;
pub mod mint;
pub mod oci;
pub mod plugin;
pub mod policy_test;
pub mod properties;
pub mod proxy;
pub mod replay;
pub mod report;
pub mod scenario;
pub mod serve;
pub mod vm;
pub mod world;

pub use message::{
    Callout, CalloutAnswer, ClientFault, ClientResponse, Peer, Request, Response, UpstreamRequest,
};
pub use plugin::{BUILD_COMMAND, Plugin};
pub use proxy::{
    ClientEnd, FailurePolicy, Outcome, Proxy, ProxyBuilder, StartError, StreamKey, Upstream, Wire,
};
pub use vm::{Fault, Faults, HostCalls};
pub use world::LogLine;
