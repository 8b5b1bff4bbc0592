//! Consentry's core: every decision the plugin makes, in plain Rust that knows
//! nothing of proxy-wasm. The adapter in `consentry-filter` moves headers and bodies
//! between the proxy and these functions; tests call them directly.
#![forbid(unsafe_code)]

pub mod audit;
pub mod config;
pub mod exchange;
pub mod host;
pub mod http;
pub mod policy;
pub mod problem;
pub mod ratelimit;
pub mod redact;
pub mod route;
pub mod token;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use exchange::{Event, Filter, Flow, Plugin, ResponseHead};
