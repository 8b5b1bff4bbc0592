//! The harness suite: the real `.wasm`, driven through the wasmtime host.
//! One test binary (the `.wasm` is compiled once for all of it).
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod audit_shipping;
mod browser;
mod cli;
mod codes;
mod decisions;
mod faults;
mod fidelity;
mod flows;
mod host_calls;
mod memory;
mod model;
mod modes;
mod open_banking;
mod parity;
mod policy_suite;
mod report;
mod report_hostile;
mod spellings;
mod support;
mod tokens;
mod views;
