//! The harness suite: the real `.wasm`, driven through the wasmtime host.
//! One test binary (the `.wasm` is compiled once for all of it).
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod fidelity;
mod parity;
mod support;
mod thin_slice;
