//! A proxy-wasm filter that reports what its host does, so the same requests can be
//! run through the native harness and through a real Envoy and the reports compared
//! (the fidelity suite in `consentry_host::fidelity`).
//!
//! The request header `x-probe: <mode>` picks a behaviour. Every observation is one
//! info log line `probe|<key>|<json>`, written from whichever callback made it; the
//! last line of a stream is `probe|end|…` from `on_log`. Raw host statuses are read
//! through the `env.proxy_*` imports declared here, where the SDK would hide them (or
//! panic on them).
//!
//! This is test code: it panics on purpose in some modes (that is what they probe),
//! so the workspace's no-panic lints are relaxed for the whole crate.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a probe: some modes crash on purpose, and a failed expectation may trap"
)]

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde_json::{Value, json};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ProbeRoot) });
}}

// Map and buffer numbers of ABI 0.2.1.
const REQUEST: u32 = 0;
const REQUEST_TRAILERS: u32 = 1;
const RESPONSE: u32 = 2;
const CALL_RESPONSE: u32 = 6;
const RESPONSE_BODY: u32 = 1;

/// The host calls, declared with raw statuses.
mod raw {
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        pub fn proxy_get_header_map_value(
            map: u32,
            key: *const u8,
            key_len: usize,
            ret: *mut *mut u8,
            ret_len: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(map: u32, ret: *mut *mut u8, ret_len: *mut usize) -> u32;
        pub fn proxy_get_header_map_size(map: u32, ret: *mut usize) -> u32;
        pub fn proxy_add_header_map_value(
            map: u32,
            key: *const u8,
            key_len: usize,
            value: *const u8,
            value_len: usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map: u32,
            key: *const u8,
            key_len: usize,
            value: *const u8,
            value_len: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(map: u32, key: *const u8, key_len: usize) -> u32;
        pub fn proxy_get_property(
            path: *const u8,
            path_len: usize,
            ret: *mut *mut u8,
            ret_len: *mut usize,
        ) -> u32;
        pub fn proxy_get_shared_data(
            key: *const u8,
            key_len: usize,
            ret: *mut *mut u8,
            ret_len: *mut usize,
            cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key: *const u8,
            key_len: usize,
            value: *const u8,
            value_len: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_set_buffer_bytes(
            buffer: u32,
            start: usize,
            len: usize,
            data: *const u8,
            data_len: usize,
        ) -> u32;
        pub fn proxy_send_local_response(
            status: u32,
            details: *const u8,
            details_len: usize,
            body: *const u8,
            body_len: usize,
            headers: *const u8,
            headers_len: usize,
            grpc_status: i32,
        ) -> u32;
    }

    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        pub fn clock_time_get(id: u32, precision: u64, out: *mut u64) -> u32;
        pub fn random_get(buf: *mut u8, len: usize) -> u32;
        #[allow(clippy::too_many_arguments, reason = "the WASI signature")]
        pub fn path_open(
            fd: u32,
            dirflags: u32,
            path: *const u8,
            path_len: usize,
            oflags: u32,
            rights_base: u64,
            rights_inheriting: u64,
            fdflags: u32,
            fd_out: *mut u32,
        ) -> u32;
    }
}

/// A raw call's result: its status and what came back (None = pointer 0).
struct Got {
    status: u32,
    data: Option<Vec<u8>>,
}

impl Got {
    /// Takes ownership of host-allocated memory (allocated through the SDK's
    /// `proxy_on_memory_allocate`, as the SDK itself does).
    fn new(status: u32, ptr: *mut u8, len: usize) -> Self {
        let data = if ptr.is_null() {
            None
        } else {
            // SAFETY: the host allocated `len` bytes at `ptr` with our allocator and
            // handed them over.
            Some(unsafe { Vec::from_raw_parts(ptr, len, len) })
        };
        Self { status, data }
    }

    fn base(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("s".into(), json!(self.status));
        if self.status == 0 {
            match &self.data {
                None => {
                    m.insert("null".into(), json!(true));
                }
                Some(d) => {
                    m.insert("len".into(), json!(d.len()));
                }
            }
        }
        m
    }

    /// `{"s": status}`, plus `"v"` (text) and `"len"`, or `"null": true` for Ok with
    /// pointer 0.
    fn text(&self) -> Value {
        let mut m = self.base();
        if let Some(d) = &self.data {
            m.insert("v".into(), json!(String::from_utf8_lossy(d)));
        }
        Value::Object(m)
    }

    /// As [`Got::text`] with the value in hex.
    fn hex(&self) -> Value {
        let mut m = self.base();
        if let Some(d) = &self.data {
            m.insert("hex".into(), json!(hex(d)));
        }
        Value::Object(m)
    }

    /// As [`Got::text`] with the value decoded as proxy-wasm pairs, sorted by name.
    fn map(&self) -> Value {
        let mut m = self.base();
        if let Some(d) = &self.data {
            let mut pairs = decode_pairs(d);
            pairs.sort();
            m.insert("pairs".into(), pairs_json(&pairs));
        }
        Value::Object(m)
    }

    fn bytes(&self) -> &[u8] {
        self.data.as_deref().unwrap_or_default()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn le_u64(b: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(b).ok().map(u64::from_le_bytes)
}

fn decode_pairs(b: &[u8]) -> Vec<(String, String)> {
    let word = |at: usize| -> usize {
        b.get(at..at + 4)
            .map_or(0, |w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize)
    };
    let count = word(0);
    let mut p = 4 + count * 8;
    let mut out = Vec::new();
    for i in 0..count {
        let (nl, vl) = (word(4 + i * 8), word(8 + i * 8));
        let name = b.get(p..p + nl).unwrap_or_default();
        p += nl + 1;
        let value = b.get(p..p + vl).unwrap_or_default();
        p += vl + 1;
        out.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    out
}

fn encode_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (n, v) in pairs {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

fn pairs_json(pairs: &[(String, String)]) -> Value {
    Value::Array(pairs.iter().map(|(n, v)| json!([n, v])).collect())
}

fn get_value(map: u32, key: &str) -> Got {
    let (mut ptr, mut len) = (std::ptr::null_mut(), 0);
    // SAFETY: valid pointers to the key and to the two return slots.
    let s = unsafe {
        raw::proxy_get_header_map_value(map, key.as_ptr(), key.len(), &mut ptr, &mut len)
    };
    Got::new(s, ptr, len)
}

fn get_pairs(map: u32) -> Got {
    let (mut ptr, mut len) = (std::ptr::null_mut(), 0);
    // SAFETY: valid return slots.
    let s = unsafe { raw::proxy_get_header_map_pairs(map, &mut ptr, &mut len) };
    Got::new(s, ptr, len)
}

/// The pairs as `{"s", "pairs": [[name, value], …]}` in the host's order.
fn pairs_report(map: u32) -> Value {
    let g = get_pairs(map);
    let pairs = decode_pairs(g.bytes());
    let mut v = g.base();
    v.insert("pairs".into(), pairs_json(&pairs));
    Value::Object(v)
}

fn get_size(map: u32) -> Value {
    let mut size = 0usize;
    // SAFETY: a valid return slot.
    let s = unsafe { raw::proxy_get_header_map_size(map, &mut size) };
    if s == 0 {
        json!({"s": s, "size": size})
    } else {
        json!({"s": s})
    }
}

fn add_value(map: u32, key: &str, value: &str) -> u32 {
    // SAFETY: valid pointers and lengths.
    unsafe {
        raw::proxy_add_header_map_value(map, key.as_ptr(), key.len(), value.as_ptr(), value.len())
    }
}

fn replace_value(map: u32, key: &str, value: &str) -> u32 {
    // SAFETY: valid pointers and lengths.
    unsafe {
        raw::proxy_replace_header_map_value(
            map,
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
        )
    }
}

fn remove_value(map: u32, key: &str) -> u32 {
    // SAFETY: valid pointer and length.
    unsafe { raw::proxy_remove_header_map_value(map, key.as_ptr(), key.len()) }
}

/// A property by its dotted name (`request.path`); `""` is the empty path.
fn property(name: &str) -> Got {
    let path: Vec<u8> = name.split('.').collect::<Vec<_>>().join("\0").into_bytes();
    let (mut ptr, mut len) = (std::ptr::null_mut(), 0);
    // SAFETY: valid pointers.
    let s = unsafe { raw::proxy_get_property(path.as_ptr(), path.len(), &mut ptr, &mut len) };
    Got::new(s, ptr, len)
}

fn send_local(status: u32, details: &str, body: &[u8], headers: &[(&str, &str)]) -> u32 {
    let h = encode_pairs(headers);
    // SAFETY: valid pointers and lengths.
    unsafe {
        raw::proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            h.as_ptr(),
            h.len(),
            -1,
        )
    }
}

/// `memory.grow` on memory 0: the previous size in pages, or `usize::MAX`.
#[cfg(target_arch = "wasm32")]
fn memory_grow(pages: usize) -> usize {
    core::arch::wasm32::memory_grow::<0>(pages)
}

/// (The probe only runs as wasm; a native build exists for workspace-wide checks.)
#[cfg(not(target_arch = "wasm32"))]
fn memory_grow(_pages: usize) -> usize {
    usize::MAX
}

/// Reports one observation.
fn rec(key: &str, value: Value) {
    let _ = hostcalls::log(LogLevel::Info, &format!("probe|{key}|{value}"));
}

fn now_ns() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

struct ProbeRoot;

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe {
            mode: String::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Probe {
    mode: String,
}

fn act(a: Action) -> &'static str {
    match a {
        Action::Continue => "C",
        _ => "P",
    }
}

impl Probe {
    fn headers_mode(&self) {
        let pairs = pairs_report(REQUEST);
        rec("pairs", pairs.clone());
        for name in [
            "x-dup",
            "X-Dup",
            "host",
            ":authority",
            ":path",
            ":method",
            ":scheme",
            "x-forwarded-proto",
            "x-request-id",
            "x-empty",
            "x-mixed-case",
            "missing-header",
            "",
            "content-length",
        ] {
            rec(&format!("get {name}"), get_value(REQUEST, name).text());
        }
        let sum: usize = decode_pairs(get_pairs(REQUEST).bytes())
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum();
        let mut size = get_size(REQUEST);
        size["pairs_bytes"] = json!(sum);
        rec("size", size);
        rec(
            "add x-added 1, 2",
            json!([
                add_value(REQUEST, "x-added", "1"),
                add_value(REQUEST, "x-added", "2")
            ]),
        );
        rec("get x-added", get_value(REQUEST, "x-added").text());
        rec(
            "remove not-there",
            json!(remove_value(REQUEST, "not-there")),
        );
        rec(
            "replace not-there",
            json!(replace_value(REQUEST, "not-there", "r")),
        );
        rec("get not-there", get_value(REQUEST, "not-there").text());
        rec("replace x-dup", json!(replace_value(REQUEST, "x-dup", "3")));
        rec("pairs x-dup", {
            let all: Vec<String> = decode_pairs(get_pairs(REQUEST).bytes())
                .into_iter()
                .filter(|(n, _)| n == "x-dup")
                .map(|(_, v)| v)
                .collect();
            json!(all)
        });
        rec("trailers size", get_size(REQUEST_TRAILERS));
        rec("trailers pairs", get_pairs(REQUEST_TRAILERS).text());
        rec(
            "response get :status",
            get_value(RESPONSE, ":status").text(),
        );
        rec("response size", get_size(RESPONSE));
    }

    fn props_request(&self) {
        for name in [
            "request.path",
            "request.url_path",
            "request.host",
            "request.scheme",
            "request.method",
            "request.id",
            "request.protocol",
            "request.query",
            "request.referer",
            "request.useragent",
            "request.headers.x-dup",
            "request.headers.host",
            "request.nonexistent",
            "request",
            "",
            "nonexistent",
            "node",
            "cluster_name",
            "route_name",
            "xds.cluster_name",
            "xds.route_name",
            "metadata",
            "filter_state",
            "source.address",
            "destination.address",
            "connection.requested_server_name",
            "connection.tls_version",
            "connection.uri_san_peer_certificate",
            "connection.sha256_peer_certificate_digest",
            "connection.subject_peer_certificate",
            "plugin_name",
            "plugin_root_id",
            "plugin_vm_id",
            "response.code",
            "response.code_details",
            "response.grpc_status",
            "upstream.address",
        ] {
            rec(&format!("prop {name}"), property(name).text());
        }
        for name in [
            "source.port",
            "destination.port",
            "connection.mtls",
            "connection.id",
            "request.size",
            "response.flags",
            "response.headers",
            "xds.listener_direction",
            "upstream.port",
        ] {
            rec(&format!("prop {name}"), property(name).hex());
        }
        rec("prop request.headers", property("request.headers").map());
        let time = property("request.time");
        let t = le_u64(time.bytes()).unwrap_or(0);
        let now = now_ns();
        rec(
            "prop request.time",
            json!({"s": time.status, "len": time.bytes().len(),
                   "within_60s_of_now": t.abs_diff(now) < 60_000_000_000}),
        );
        let address = property("source.address");
        let port = property("source.port");
        let text_port = String::from_utf8_lossy(address.bytes())
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u64>().ok());
        rec(
            "source.port = port of source.address",
            json!(text_port.is_some() && text_port == le_u64(port.bytes())),
        );
    }

    fn props_response(&self) {
        for name in [
            "request.path",
            "request.method",
            "request.id",
            "request.headers.x-probe",
            "request.protocol",
            "source.address",
            "response.code_details",
            "plugin_name",
        ] {
            rec(&format!("resp prop {name}"), property(name).text());
        }
        for name in ["response.code", "response.grpc_status", "response.flags"] {
            rec(&format!("resp prop {name}"), property(name).hex());
        }
        rec(
            "resp prop request.headers",
            property("request.headers").hex(),
        );
        rec(
            "resp prop response.headers",
            property("response.headers").map(),
        );
    }

    fn gone_checks(&self, phase: &str) {
        rec(
            &format!("{phase} request get :path"),
            get_value(REQUEST, ":path").text(),
        );
        rec(&format!("{phase} request pairs"), get_pairs(REQUEST).text());
        rec(&format!("{phase} request size"), get_size(REQUEST));
        rec(
            &format!("{phase} prop request.path"),
            property("request.path").text(),
        );
        rec(
            &format!("{phase} prop request.headers"),
            property("request.headers").hex(),
        );
    }

    fn dispatch(&self, cluster: &str, headers: Vec<(&str, &str)>) -> Value {
        match self.dispatch_http_call(cluster, headers, None, vec![], Duration::from_secs(1)) {
            Ok(token) => json!({"s": 0, "token": token}),
            Err(s) => json!({"s": s as u32}),
        }
    }

    fn shared_mode(&self) {
        const UNWRITTEN: u32 = 0xdead_beef;
        let get = |key: &str| -> Value {
            let (mut ptr, mut len, mut cas) = (std::ptr::null_mut(), 0usize, UNWRITTEN);
            // SAFETY: valid pointers.
            let s = unsafe {
                raw::proxy_get_shared_data(key.as_ptr(), key.len(), &mut ptr, &mut len, &mut cas)
            };
            let mut v = Got::new(s, ptr, len).text();
            v["cas"] = if cas == UNWRITTEN {
                json!("unwritten")
            } else {
                json!(cas)
            };
            v
        };
        let set = |key: &str, value: Option<&[u8]>, cas: u32| -> u32 {
            let (ptr, len) = value.map_or((std::ptr::null(), 0), |v| (v.as_ptr(), v.len()));
            // SAFETY: valid pointers (or null with length 0).
            unsafe { raw::proxy_set_shared_data(key.as_ptr(), key.len(), ptr, len, cas) }
        };
        rec("1 get missing", get("probe-k"));
        rec("2 set v1 cas 0", json!(set("probe-k", Some(b"v1"), 0)));
        rec("3 get", get("probe-k"));
        rec("4 set v2 cas 1", json!(set("probe-k", Some(b"v2"), 1)));
        rec("5 get", get("probe-k"));
        rec(
            "6 set v3 stale cas 1",
            json!(set("probe-k", Some(b"v3"), 1)),
        );
        rec("7 get", get("probe-k"));
        rec("8 set v4 cas 0", json!(set("probe-k", Some(b"v4"), 0)));
        rec("9 get", get("probe-k"));
        rec(
            "10 set missing key cas 12345",
            json!(set("probe-other", Some(b"x"), 12345)),
        );
        rec("11 get other", get("probe-other"));
        rec("12 set null value", json!(set("probe-null", None, 0)));
        rec("13 get null value", get("probe-null"));
        rec(
            "14 set empty slice",
            json!(set("probe-empty", Some(b""), 0)),
        );
        rec("15 get empty slice", get("probe-empty"));
        rec("16 get empty key", get(""));
        rec("17 set empty key", json!(set("", Some(b"e"), 0)));
        rec("18 get empty key", get(""));
    }

    fn wasi_mode(&self) {
        let mut out = 0u64;
        // SAFETY: a valid return slot.
        let mono = unsafe { raw::clock_time_get(1, 1, &mut out) };
        rec("clock monotonic", json!({"errno": mono}));
        let mut real = 0u64;
        // SAFETY: a valid return slot.
        let errno = unsafe { raw::clock_time_get(0, 1, &mut real) };
        rec(
            "clock realtime",
            json!({"errno": errno, "within_60s_of_host_time": real.abs_diff(now_ns()) < 60_000_000_000}),
        );
        let mut cpu = 0u64;
        // SAFETY: a valid return slot.
        let errno = unsafe { raw::clock_time_get(2, 1, &mut cpu) };
        rec("clock process_cputime", json!({"errno": errno}));
        let mut buf = vec![0u8; 64 * 1024 + 1];
        let random: Vec<u32> = [0, 64 * 1024, 64 * 1024 + 1]
            .into_iter()
            // SAFETY: `buf` holds at least `len` bytes.
            .map(|len| unsafe { raw::random_get(buf.as_mut_ptr(), len) })
            .collect();
        rec("random_get 0, 64 KiB, 64 KiB + 1", json!(random));
        let mut fd = 0u32;
        let path = b"etc/passwd";
        // SAFETY: valid pointers.
        let errno = unsafe { raw::path_open(3, 0, path.as_ptr(), path.len(), 0, 0, 0, 0, &mut fd) };
        rec("path_open", json!({"errno": errno}));
        println!("probe-stdout line");
        eprintln!("probe-stderr line");
        println!();
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let t = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        rec(
            "SystemTime::now",
            json!(t.abs_diff(now_ns()) < 60_000_000_000),
        );
    }
}

impl Context for Probe {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    ) {
        rec(
            "cb",
            json!(format!(
                "call_response token={token_id} headers={num_headers} body={body_size} trailers={num_trailers}"
            )),
        );
        rec("call headers", pairs_report(CALL_RESPONSE));
        rec(
            "call body",
            json!(String::from_utf8_lossy(
                &self
                    .get_http_call_response_body(0, body_size)
                    .unwrap_or_default()
            )),
        );
        rec("call headers size", get_size(CALL_RESPONSE));
        rec("call trailers", get_pairs(7).text());
        self.resume_http_request();
    }
}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.mode = self
            .get_http_request_headers()
            .into_iter()
            .find(|(n, _)| n == "x-probe")
            .map(|(_, v)| v)
            .unwrap_or_default();
        let action = match self.mode.as_str() {
            "headers" => {
                self.headers_mode();
                Action::Continue
            }
            "props" => {
                self.props_request();
                Action::Continue
            }
            "req-paused" | "req-hold" => Action::Pause,
            "local" => {
                let s = send_local(
                    403,
                    "",
                    br#"{"denied":true}"#,
                    &[("content-type", "application/json"), ("x-local", "1")],
                );
                rec("send_local", json!(s));
                Action::Pause
            }
            "local-noct" => {
                let s = send_local(
                    403,
                    "probe_details",
                    b"thirty-two bytes of plain body!!",
                    &[("x-local", "1")],
                );
                rec("send_local", json!(s));
                Action::Pause
            }
            "local-nobody" => {
                rec("send_local", json!(send_local(403, "", b"", &[])));
                Action::Pause
            }
            "local-nobody-cl" => {
                let s = send_local(403, "", b"", &[("content-length", "5")]);
                rec("send_local", json!(s));
                Action::Pause
            }
            "local-srvdate" => {
                let s = send_local(
                    200,
                    "",
                    b"thirty-one bytes of plain body!",
                    &[
                        ("server", "probe-server"),
                        ("date", "probe-date"),
                        ("content-length", "5"),
                        ("content-type", "text/x-probe"),
                    ],
                );
                rec("send_local", json!(s));
                Action::Pause
            }
            "local-dup" => {
                let s = send_local(
                    403,
                    "",
                    b"{}",
                    &[
                        ("content-type", "application/json"),
                        ("content-type", "text/plain"),
                        ("x-m", "a"),
                        ("x-m", "b"),
                    ],
                );
                rec("send_local", json!(s));
                Action::Pause
            }
            "call-bad" => {
                rec(
                    "dispatch unknown cluster",
                    self.dispatch(
                        "nosuch",
                        vec![
                            (":method", "GET"),
                            (":path", "/callee"),
                            (":authority", "callee.local"),
                        ],
                    ),
                );
                rec(
                    "dispatch without :authority",
                    self.dispatch("upstream", vec![(":method", "GET"), (":path", "/callee")]),
                );
                rec(
                    "dispatch without :path",
                    self.dispatch(
                        "upstream",
                        vec![(":method", "GET"), (":authority", "callee.local")],
                    ),
                );
                rec(
                    "dispatch without :method",
                    self.dispatch(
                        "upstream",
                        vec![(":path", "/callee"), (":authority", "callee.local")],
                    ),
                );
                Action::Continue
            }
            "call-down" | "call-ok" => {
                let cluster = if self.mode == "call-down" {
                    "down"
                } else {
                    "upstream"
                };
                let first = self.dispatch(
                    cluster,
                    vec![
                        (":method", "GET"),
                        (":path", "/callee?x=1"),
                        (":authority", "callee.local"),
                        ("x-probe-call", "1"),
                    ],
                );
                rec("dispatch", first);
                Action::Pause
            }
            "shared" => {
                self.shared_mode();
                Action::Continue
            }
            "wasi" => {
                self.wasi_mode();
                Action::Continue
            }
            "memory" => {
                let grow = |pages: usize| {
                    let r = memory_grow(pages);
                    if r == usize::MAX { "failed" } else { "ok" }
                };
                // 1 GiB more than there is: past Envoy's cap on a VM's memory.
                rec("grow 1 GiB", json!(grow(16 * 1024)));
                rec("grow 1 page", json!(grow(1)));
                Action::Continue
            }
            "wasi-instant" => {
                let a = std::time::Instant::now();
                let b = std::time::Instant::now();
                rec("Instant::now", json!({"later_not_before_earlier": b >= a}));
                Action::Continue
            }
            _ => Action::Continue,
        };
        rec(
            "cb",
            json!(format!(
                "req_headers n={num_headers} eos={end_of_stream} -> {}",
                act(action)
            )),
        );
        action
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let action = match self.mode.as_str() {
            "req-paused" | "req-hold" => {
                if end_of_stream {
                    Action::Continue
                } else {
                    Action::Pause
                }
            }
            _ => Action::Continue,
        };
        if self.mode == "req-paused" {
            rec(
                "req body",
                json!(String::from_utf8_lossy(
                    &self.get_http_request_body(0, body_size).unwrap_or_default()
                )),
            );
            rec("req body get :path", get_value(REQUEST, ":path").text());
        }
        let shown = if self.mode == "req-hold" && !end_of_stream {
            // Envoy's read sizes differ by nature; only the pattern is compared.
            "*".to_owned()
        } else {
            body_size.to_string()
        };
        rec(
            "cb",
            json!(format!(
                "req_body {shown} eos={end_of_stream} -> {}",
                act(action)
            )),
        );
        action
    }

    fn on_http_response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        rec(
            "cb",
            json!(format!("resp_headers n={num_headers} eos={end_of_stream}")),
        );
        let action = match self.mode.as_str() {
            "req-gone" => {
                self.gone_checks("resp_headers");
                rec(
                    "resp_headers response get :status",
                    get_value(RESPONSE, ":status").text(),
                );
                Action::Continue
            }
            "req-paused" => {
                rec(
                    "resp_headers request get :path",
                    get_value(REQUEST, ":path").text(),
                );
                rec("resp_headers request size", get_size(REQUEST));
                rec(
                    "resp_headers prop request.path",
                    property("request.path").text(),
                );
                rec("resp_headers request pairs", pairs_report(REQUEST));
                Action::Continue
            }
            "sdk-panic" => {
                let path = self.get_http_request_header(":path");
                rec("sdk get :path", json!(path));
                Action::Continue
            }
            "props" => {
                self.props_response();
                Action::Continue
            }
            "body-buf" | "body-set" | "body-setfix" | "body-setcl" | "hold" | "local-from-resp" => {
                rec("resp_headers pairs", pairs_report(RESPONSE));
                Action::Pause
            }
            "local" | "local-noct" | "local-nobody" | "local-nobody-cl" | "local-srvdate"
            | "local-dup" | "req-hold" | "call-down" | "call-ok" | "basic" => {
                rec("resp_headers pairs", pairs_report(RESPONSE));
                Action::Continue
            }
            _ => Action::Continue,
        };
        rec("cb", json!(format!("resp_headers -> {}", act(action))));
        action
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let body = || {
            String::from_utf8_lossy(
                &self
                    .get_http_response_body(0, body_size)
                    .unwrap_or_default(),
            )
            .into_owned()
        };
        let held = |eos: bool| if eos { Action::Continue } else { Action::Pause };
        let action = match self.mode.as_str() {
            "req-gone" => {
                self.gone_checks("resp_body");
                rec(
                    "resp_body response get :status",
                    get_value(RESPONSE, ":status").text(),
                );
                rec(
                    "resp_body response add/replace/remove",
                    json!([
                        add_value(RESPONSE, "x-late", "1"),
                        replace_value(RESPONSE, "x-late", "2"),
                        remove_value(RESPONSE, "x-late")
                    ]),
                );
                Action::Continue
            }
            "body-buf" => {
                rec("resp_body bytes", json!(body()));
                held(end_of_stream)
            }
            "hold" => held(end_of_stream),
            "body-set" | "body-setfix" | "body-setcl" if end_of_stream => {
                let new = b"replaced-by-probe";
                // SAFETY: valid pointer and length.
                let s = unsafe {
                    raw::proxy_set_buffer_bytes(
                        RESPONSE_BODY,
                        0,
                        body_size,
                        new.as_ptr(),
                        new.len(),
                    )
                };
                rec("set_buffer_bytes", json!(s));
                rec("resp_body after set", json!(body()));
                if self.mode == "body-setfix" {
                    rec(
                        "remove content-length, replace x-late",
                        json!([
                            remove_value(RESPONSE, "content-length"),
                            replace_value(RESPONSE, "x-late", "1")
                        ]),
                    );
                }
                if self.mode == "body-setcl" {
                    rec(
                        "replace content-length",
                        json!(replace_value(
                            RESPONSE,
                            "content-length",
                            &new.len().to_string()
                        )),
                    );
                }
                Action::Continue
            }
            "body-set" | "body-setfix" | "body-setcl" => Action::Pause,
            "local-from-resp" if end_of_stream => {
                let s = send_local(
                    451,
                    "",
                    b"replaced-by-send\n",
                    &[("content-type", "text/plain"), ("x-sent", "1")],
                );
                rec("send_local", json!(s));
                Action::Pause
            }
            "local-from-resp" => Action::Pause,
            m if m.starts_with("local") => {
                rec("resp_body bytes", json!(body()));
                Action::Continue
            }
            _ => Action::Continue,
        };
        let shown = if self.mode == "hold" {
            "*".to_owned()
        } else {
            body_size.to_string()
        };
        rec(
            "cb",
            json!(format!(
                "resp_body {shown} eos={end_of_stream} -> {}",
                act(action)
            )),
        );
        action
    }

    fn on_log(&mut self) {
        rec("cb", json!("log"));
        match self.mode.as_str() {
            "req-gone" | "props" => {
                rec("log request get :path", get_value(REQUEST, ":path").text());
                rec("log prop request.path", property("request.path").text());
                rec(
                    "log response get :status",
                    get_value(RESPONSE, ":status").text(),
                );
                rec("log prop response.code", property("response.code").hex());
            }
            m if m.starts_with("local") || m == "req-hold" || m == "hold" => {
                rec("log prop response.code", property("response.code").hex());
                rec(
                    "log prop response.code_details",
                    property("response.code_details").text(),
                );
            }
            _ => {}
        }
        rec("end", json!(self.mode));
    }
}
