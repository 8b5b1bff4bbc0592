//! The module as a proxy-wasm HTTP filter: `POST /bench` with a JSON request as the body
//! is answered with [`crate::run`]'s answer (a local reply, nothing goes upstream); every
//! other request passes. Envoy's benchmark loads it with `consentry.yaml` in place of
//! the plugin, so the cases run on Envoy's worker thread, in V8.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            bench: false,
            hold: false,
            log: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    bench: bool,
    /// `x-bench-mode: hold` holds the response headers until the whole body is in and
    /// sets the body again (as Consentry does, without redacting); `log` writes one
    /// info line of 1,400 bytes per request (about an audit record) when it ends.
    hold: bool,
    log: bool,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        self.bench = path == "/bench" && !end_of_stream;
        if let Some(mode) = self.get_http_request_header("x-bench-mode") {
            self.hold = mode.contains("hold");
            self.log = mode.contains("log");
        }
        if self.bench {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !self.bench {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let request = self.get_http_request_body(0, size).unwrap_or_default();
        let answer = if request.starts_with(br#"{"kind":"hostcalls""#) {
            hostcalls(&request)
        } else {
            crate::run(&request)
        };
        self.send_http_response(
            200,
            vec![("content-type", "application/json")],
            Some(answer.as_bytes()),
        );
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        if self.hold && !end_of_stream {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !self.hold {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_response_body(0, size).unwrap_or_default();
        self.set_http_response_body(0, size, &body);
        self.set_http_response_header("content-length", Some(&body.len().to_string()));
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.log {
            proxy_wasm::hostcalls::log(LogLevel::Info, &"x".repeat(1400)).ok();
        }
    }
}

/// `{"kind":"hostcalls","iterations":N}`: what one host call of each kind the plugin
/// makes costs here (V8 to Envoy and back), in nanoseconds, measured on this request's
/// own header map (still readable: the request is paused).
fn hostcalls(request: &[u8]) -> String {
    use std::hint::black_box;
    use std::time::Instant;

    use proxy_wasm::hostcalls as h;
    use proxy_wasm::types::{MapType, MetricType};

    let n: u32 = std::str::from_utf8(request)
        .ok()
        .and_then(|t| t.split("\"iterations\":").nth(1))
        .and_then(|t| t.trim_end_matches('}').trim().parse().ok())
        .unwrap_or(2000);
    let metric = h::define_metric(MetricType::Counter, "bench.hostcalls").unwrap_or(0);
    let mut random = [0u8; 16];
    let time = |f: &mut dyn FnMut()| {
        f();
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        start.elapsed().as_nanos() as f64 / f64::from(n)
    };
    let rows = [
        (
            "get_current_time",
            time(&mut || {
                black_box(h::get_current_time().ok());
            }),
        ),
        (
            "get_log_level",
            time(&mut || {
                black_box(h::get_log_level().ok());
            }),
        ),
        (
            "get_property source.address",
            time(&mut || {
                black_box(h::get_property(vec!["source", "address"]).ok());
            }),
        ),
        (
            "get_header_map_pairs (request)",
            time(&mut || {
                black_box(h::get_map(MapType::HttpRequestHeaders).ok());
            }),
        ),
        (
            "remove_header_map_value (absent)",
            time(&mut || {
                black_box(h::remove_map_value(MapType::HttpRequestHeaders, "x-absent").ok());
            }),
        ),
        (
            "replace_header_map_value",
            time(&mut || {
                black_box(h::set_map_value(MapType::HttpRequestHeaders, "x-bench", Some("1")).ok());
            }),
        ),
        (
            "increment_metric",
            time(&mut || {
                black_box(h::increment_metric(metric, 1).ok());
            }),
        ),
        (
            "log (filtered by level)",
            time(&mut || {
                black_box(h::log(LogLevel::Trace, "bench").ok());
            }),
        ),
        (
            "WASI random_get (16 bytes)",
            time(&mut || {
                black_box(getrandom::fill(&mut random).ok());
            }),
        ),
    ];
    let items: Vec<String> = rows
        .iter()
        .map(|(name, ns)| format!("{{\"call\":\"{name}\",\"ns\":{ns:.1}}}"))
        .collect();
    format!("{{\"hostcalls\":[{}],\"iterations\":{n}}}", items.join(","))
}
