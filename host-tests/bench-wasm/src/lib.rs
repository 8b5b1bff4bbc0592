//! Benchmark entry points over `consentry-core`, so that the redactor, the token
//! verifier and the policy engine can be timed where they run in production: inside a
//! `.wasm`. The same code builds three ways:
//!
//! - natively (`rlib`): the harness benchmark calls [`run`] directly;
//! - for wasm32-wasip1 under wasmtime: the harness benchmark calls the exports
//!   [`bench_alloc`] and [`bench_run`] (request and answer are JSON);
//! - for wasm32-wasip1 inside Envoy (V8): the module is also a proxy-wasm HTTP filter
//!   that answers `POST /bench` (a JSON request as the body) with the JSON answer as a
//!   local reply, so the Envoy benchmark asks V8 the very same questions.
//!
//! Every case times itself with `std::time::Instant` (WASI's monotonic clock, which
//! Envoy and the harness's benchmark host both serve from the real clock), repeating
//! the operation until its time budget is spent, and answers
//! `{"ns_per_op", "ops", "mb_per_s"?}`. Requests:
//!
//! ```json
//! {"kind": "redact",   "size": 65536, "paths": 10, "budget_ms": 300}
//! {"kind": "baseline", "size": 65536, "paths": 10, "budget_ms": 300}
//! {"kind": "verify",   "token": "eyJ…", "issuers": [...], "now": 1800000000, "cached": false, "budget_ms": 300}
//! {"kind": "policy",   "routes": 10, "rules": 10, "token": "eyJ…", "now": 1800000000, "cached": true, "budget_ms": 300}
//! {"kind": "sha256",   "size": 700, "budget_ms": 100}
//! ```
//!
//! This is benchmark code: set-up errors answer `{"error": …}`; nothing here runs in
//! the plugin.

pub mod cases;
#[cfg(not(target_family = "wasm"))]
pub mod policy;
#[cfg(target_family = "wasm")]
mod proxy;
#[cfg(not(target_family = "wasm"))]
pub mod suite;

pub use cases::run;

/// Allocates `len` bytes for a request; the caller writes it and passes it to
/// [`bench_run`], which frees it.
#[unsafe(no_mangle)]
pub extern "C" fn bench_alloc(len: usize) -> *mut u8 {
    let mut v = vec![0u8; len].into_boxed_slice();
    let ptr = v.as_mut_ptr();
    std::mem::forget(v);
    ptr
}

/// Runs the JSON request at `ptr..ptr+len` (from [`bench_alloc`]) and returns the
/// answer as `(pointer << 32) | length`; the answer stays allocated until the next call.
///
/// # Safety
/// `ptr` and `len` must come from one [`bench_alloc`] call, written by the caller.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bench_run(ptr: *mut u8, len: usize) -> u64 {
    // SAFETY: the caller passes what bench_alloc returned, with its length; the
    // allocation was a boxed slice of exactly that length.
    let request = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) };
    let answer = run(&request).into_bytes().into_boxed_slice();
    let out = (answer.as_ptr() as u64) << 32 | answer.len() as u64;
    LAST.with(|l| *l.borrow_mut() = Some(answer));
    out
}

thread_local! {
    /// The last answer, kept alive until the next call reads another.
    static LAST: std::cell::RefCell<Option<Box<[u8]>>> = const { std::cell::RefCell::new(None) };
}
