//! The proxy-wasm adapter: it implements every callback of the proxy-wasm ABI 0.2.1
//! itself and forwards each to `consentry-core`, which makes every decision.
//!
//! It does not use the proxy-wasm SDK's dispatcher: that dispatcher answers a
//! callback the plugin does not implement with `Continue` (which resumes a paused
//! stream with no decision) and panics on an unexpected status or context id (a
//! panic is a trap). Here every export is written out, an event for a context the
//! plugin does not know gets `Pause`, and no host status is ever unwrapped.
//!
//! Envoy facts this code respects (see the project's host notes): a header map can
//! be read only in its own callback or while that callback is paused, so the request
//! is read once, whole, in `on_request_headers` and kept; repeated headers are read
//! as pairs, never by first-value lookup; header values may hold non-UTF-8 bytes; an
//! outgoing call's answer comes with the root context's id; a paused stream is
//! resumed (or refused) from another context through `proxy_set_effective_context`.
//!
//! The VM's state sits behind one `RefCell`, borrowed once per callback. Should a
//! host ever call back into the VM from inside a host call, the nested callback
//! finds the state borrowed and answers `Pause` (or does nothing): never a trap,
//! never a release.

mod abi;
mod host;

use std::cell::RefCell;
use std::collections::BTreeMap;

use consentry_core::exchange::{Event, Filter, Flow, ResponseHead, TICK};
use consentry_core::host::{Host, LogLevel, Side};
use consentry_core::http::{Connection, Headers, PeerCertificate, RequestHead};

use host::ProxyHost;

/// Everything this VM knows: its plugin instances (root contexts) and which
/// instance each stream belongs to.
#[derive(Default)]
struct Vm {
    roots: BTreeMap<u32, Filter>,
    streams: BTreeMap<u32, u32>,
    host: ProxyHost,
}

thread_local! {
    static VM: RefCell<Vm> = RefCell::new(Vm::default());
}

/// Runs `f` with the VM's state, or returns `busy` if it is already borrowed (a
/// host that called back into the VM from inside a host call).
fn with_vm<T>(busy: T, f: impl FnOnce(&mut Vm) -> T) -> T {
    VM.with(|vm| match vm.try_borrow_mut() {
        Ok(mut vm) => {
            vm.host.begin_callback();
            f(&mut vm)
        }
        Err(_) => busy,
    })
}

/// Runs `f` with the filter a stream belongs to; `Pause` for a stream it does not
/// know (never `Continue`).
fn with_stream(context: u32, f: impl FnOnce(&mut Filter, &mut ProxyHost) -> Flow) -> u32 {
    let flow = with_vm(Flow::Pause, |vm| {
        let Vm {
            roots,
            streams,
            host,
        } = vm;
        match streams.get(&context).and_then(|root| roots.get_mut(root)) {
            Some(filter) => f(filter, host),
            None => Flow::Pause,
        }
    });
    match flow {
        Flow::Continue => abi::CONTINUE,
        Flow::Pause => abi::PAUSE,
    }
}

/// Forwards one stream callback. `side` is the half of the stream it belongs to:
/// when the host will not hand over what the event carries (its header map), the
/// core gets the event as unreadable on that side, and refuses it.
fn event(context: u32, side: Side, read: impl FnOnce() -> Option<Event>) -> u32 {
    with_stream(context, |filter, host| {
        let e = read().unwrap_or(Event::Unreadable(side));
        filter.on_event(context, e, host)
    })
}

// ── Lifecycle ─────────────────────────────────────────────────────────────────

/// The ABI version this plugin speaks.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// Memory the host hands to the plugin (header maps, bodies, properties).
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    abi::allocate(size)
}

#[cfg(target_os = "wasi")]
unsafe extern "C" {
    fn __wasm_call_ctors();
}

/// The module's start: WASI's constructors (environment, stdio), as a reactor.
#[cfg(target_os = "wasi")]
#[unsafe(no_mangle)]
pub extern "C" fn _initialize() {
    // SAFETY: the linker's constructor function, run once before anything else.
    unsafe { __wasm_call_ctors() }
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_context_create(context: u32, parent: u32) {
    with_vm((), |vm| {
        if parent == 0 {
            vm.roots.insert(context, Filter::unconfigured());
        } else if let Some(filter) = vm.roots.get_mut(&parent) {
            filter.on_stream_created(context);
            vm.streams.insert(context, parent);
        }
    });
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_vm_start(_root: u32, _vm_configuration_size: usize) -> u32 {
    1
}

/// Compiles the plugin configuration. A refused one is logged with every error
/// and its place; the proxy then refuses the filter, and this instance refuses
/// every request meanwhile.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_configure(root: u32, size: usize) -> u32 {
    with_vm(0, |vm| {
        // Without randomness no request id, decision id or field encryption key can
        // be made, and the first hash map of the configuration would trap: refuse it
        // now, cleanly (this instance then refuses every request).
        if getrandom::fill(&mut [0u8; 16]).is_err() {
            let _ = vm.host.log(
                LogLevel::Error,
                "consentry: configuration refused: the host gives no randomness",
            );
            return 0;
        }
        vm.host.refresh_log_level();
        let bytes = abi::buffer(abi::PLUGIN_CONFIGURATION, size).unwrap_or_default();
        let env = |name: &str| std::env::var(name).ok();
        let (filter, loaded) = Filter::configure(&bytes, &env, &mut vm.host);
        vm.roots.insert(root, filter);
        match loaded {
            Ok(()) => {
                let period = u32::try_from(TICK.as_millis()).unwrap_or(u32::MAX);
                if abi::set_tick_period_ms(period).is_err() {
                    let _ = vm.host.log(
                        LogLevel::Error,
                        "consentry: the timer could not be set: waits are not bounded",
                    );
                }
                let mode = vm
                    .roots
                    .get(&root)
                    .and_then(Filter::plugin)
                    .map_or("", |p| p.config().response_mode.describe());
                let _ = vm.host.log(
                    LogLevel::Info,
                    &format!("consentry: configuration loaded; {mode}"),
                );
                1
            }
            Err(_) => 0,
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_tick(root: u32) {
    with_vm((), |vm| {
        vm.host.refresh_log_level();
        if let Some(filter) = vm.roots.get_mut(&root) {
            filter.on_tick(root, &mut vm.host);
        }
    });
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_done(context: u32) -> u32 {
    with_vm(1, |vm| {
        if let Some(filter) = vm.streams.get(&context).and_then(|r| vm.roots.get_mut(r)) {
            u32::from(filter.on_done(context))
        } else {
            1
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_log(context: u32) {
    event(context, Side::Response, || Some(Event::Log));
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_delete(context: u32) {
    with_vm((), |vm| {
        if let Some(root) = vm.streams.remove(&context) {
            if let Some(filter) = vm.roots.get_mut(&root) {
                filter.on_delete(context, &mut vm.host);
            }
        } else {
            vm.roots.remove(&context);
        }
    });
}

// ── HTTP streams ──────────────────────────────────────────────────────────────

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_headers(context: u32, _headers: usize, eos: u32) -> u32 {
    event(context, Side::Request, || {
        read_request_head(eos != 0).map(Event::RequestHeaders)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_body(context: u32, size: usize, eos: u32) -> u32 {
    event(context, Side::Request, || {
        Some(Event::RequestBody {
            size,
            end_of_stream: eos != 0,
        })
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_trailers(context: u32, _trailers: usize) -> u32 {
    event(context, Side::Request, || {
        read_headers(abi::REQUEST_TRAILERS).map(Event::RequestTrailers)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_metadata(context: u32, _elements: usize) -> u32 {
    event(context, Side::Request, || {
        Some(Event::Metadata(Side::Request))
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_response_headers(context: u32, _headers: usize, eos: u32) -> u32 {
    event(context, Side::Response, || {
        let headers = read_headers(abi::RESPONSE_HEADERS)?;
        let status = headers
            .get_str(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        Some(Event::ResponseHeaders(ResponseHead {
            status,
            headers,
            end_of_stream: eos != 0,
        }))
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_response_body(context: u32, size: usize, eos: u32) -> u32 {
    event(context, Side::Response, || {
        Some(Event::ResponseBody {
            size,
            end_of_stream: eos != 0,
        })
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_response_trailers(context: u32, _trailers: usize) -> u32 {
    event(context, Side::Response, || {
        read_headers(abi::RESPONSE_TRAILERS).map(Event::ResponseTrailers)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_response_metadata(context: u32, _elements: usize) -> u32 {
    event(context, Side::Response, || {
        Some(Event::Metadata(Side::Response))
    })
}

/// An outgoing call's answer. Envoy passes the root context's id; a host that
/// passes the dispatching stream's is followed to that stream's root.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_http_call_response(
    context: u32,
    token: u32,
    _headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    with_vm((), |vm| {
        let root = vm.streams.get(&context).copied().unwrap_or(context);
        let Some(filter) = vm.roots.get_mut(&root) else {
            return;
        };
        // An answer that cannot be read is a failed fetch (status 0).
        let status = read_headers(abi::CALL_RESPONSE_HEADERS)
            .and_then(|h| h.get_str(":status").and_then(|s| s.parse::<u16>().ok()))
            .unwrap_or(0);
        let body = abi::buffer(abi::CALL_RESPONSE_BODY, body_size).unwrap_or_default();
        filter.on_call_response(token, status, &body, context, &mut vm.host);
    });
}

// ── Callbacks this plugin has no use for, answered on purpose ─────────────────

/// Loaded as a network filter by mistake: no byte moves (the plugin decides on
/// HTTP requests only).
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_new_connection(_context: u32) -> u32 {
    abi::PAUSE
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_downstream_data(_context: u32, _size: usize, _eos: u32) -> u32 {
    abi::PAUSE
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_upstream_data(_context: u32, _size: usize, _eos: u32) -> u32 {
    abi::PAUSE
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_downstream_connection_close(_context: u32, _peer: u32) {}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_upstream_connection_close(_context: u32, _peer: u32) {}

/// The plugin registers no shared queue, calls no gRPC service and offers no
/// foreign function: these never carry anything it waits for.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_queue_ready(_root: u32, _queue: u32) {}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_grpc_receive_initial_metadata(_c: u32, _token: u32, _n: u32) {}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_grpc_receive(_c: u32, _token: u32, _size: usize) {}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_grpc_receive_trailing_metadata(_c: u32, _token: u32, _n: u32) {}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_grpc_close(_c: u32, _token: u32, _status: u32) {}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_foreign_function(_root: u32, _function: u32, _size: usize) {}

// ── Reading what the host holds ───────────────────────────────────────────────

fn read_headers(map: u32) -> Option<Headers> {
    abi::header_pairs(map)
        .ok()
        .map(|pairs| pairs.into_iter().collect())
}

fn read_request_head(end_of_stream: bool) -> Option<RequestHead> {
    let headers = read_headers(abi::REQUEST_HEADERS)?;
    let pseudo = |name: &str| headers.get_str(name).unwrap_or_default().to_owned();
    Some(RequestHead {
        method: pseudo(":method"),
        path: pseudo(":path"),
        authority: pseudo(":authority"),
        connection: read_connection()?,
        end_of_stream,
        headers,
    })
}

/// The connection as the proxy saw it (never from a header). A property the host
/// fails to read (other than an absent one) makes the request unreadable.
fn read_connection() -> Option<Connection> {
    let text = |path: &[&str]| -> Option<Option<String>> {
        match abi::property(path) {
            Ok(Some(b)) if !b.is_empty() => Some(String::from_utf8(b).ok()),
            Ok(_) => Some(None),
            Err(_) => None,
        }
    };
    let mtls = match abi::property(&["connection", "mtls"]) {
        Ok(Some(b)) => b.first() == Some(&1),
        Ok(None) => false,
        Err(_) => return None,
    };
    let peer = if mtls {
        Some(PeerCertificate {
            uri_san: text(&["connection", "uri_san_peer_certificate"])?,
            sha256_hex: text(&["connection", "sha256_peer_certificate_digest"])?,
            pem: text(&["connection", "peer_certificate"])?,
        })
    } else {
        None
    };
    Some(Connection {
        source_address: text(&["source", "address"])?,
        mtls,
        peer,
    })
}
