//! A proxy-wasm HTTP filter that does nothing: every callback returns `Continue` and
//! reads nothing. Loaded like the Consentry plugin (same SDK, same VM settings), it is
//! the benchmarks' ceiling for any wasm plugin: what Envoy spends entering the VM for
//! each callback of a stream, with no work inside.
//!
//! Build: `cargo build -p consentry-noop-filter --target wasm32-wasip1 --release`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

/// The plugin's root context: makes one [`Stream`] per HTTP stream.
struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP stream: the SDK's default callbacks, each of which continues.
struct Stream;

impl Context for Stream {}

impl HttpContext for Stream {}
