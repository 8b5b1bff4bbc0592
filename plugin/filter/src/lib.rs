//! The proxy-wasm adapter. It only moves bytes and headers between the proxy and
//! `consentry-core`, which makes every decision.
//!
//! Envoy facts this code respects (see the project's host notes): a header map can
//! be read only in its own callback or while that callback is paused, so the request
//! is read once, whole, in `on_http_request_headers` and kept; repeated headers are
//! read as pairs, never by first-value lookup; header values may hold non-UTF-8
//! bytes; a replaced body needs `content-length` fixed here; an outgoing call belongs
//! to the root context, and its answer goes to whichever context dispatched it, so
//! both forward answers to the plugin; a paused request is resumed (or refused) from
//! another context through `proxy_set_effective_context`. Host calls that touch maps
//! and bodies go through the `raw` module, which cannot panic: a panic is a trap.

mod host;
mod raw;

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::time::Duration;

use consentry_core::filter::Resource;
use consentry_core::http::{
    Connection, HeaderEdits, Headers, LocalReply, PeerCertificate, RequestHead,
};
use consentry_core::problem::{self, Code};
use consentry_core::{Attempt, BodyAction, Exchange, Plugin, RequestAction, ResponseAction};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

use host::ProxyHost;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        Box::new(Root { id, shared: None })
    });
}}

/// How often the root's timer runs: key refresh, and requests that waited too long.
const TICK: Duration = Duration::from_millis(250);
/// The timer's period while fetches wait for it: they are dispatched from the
/// root context (see `Plugin::has_wanted_calls`), so fire it at once.
const TICK_NOW: Duration = Duration::from_millis(1);

/// A request paused until a resource arrives.
struct Waiter {
    context: u32,
    stream: Weak<RefCell<StreamState>>,
    resource: Resource,
    since_ms: u64,
}

/// What a plugin instance shares with its streams.
struct Shared {
    root: u32,
    plugin: Option<Plugin>,
    waiters: RefCell<Vec<Waiter>>,
    /// The timer was set to fire at once.
    hurried: Cell<bool>,
}

/// One filter instance (one per plugin configuration per worker).
struct Root {
    id: u32,
    shared: Option<Rc<Shared>>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Some(shared) = &self.shared {
            shared.on_call_response(token, body_size, self.id);
        }
        // Calls made now belong to this root context and outlive every stream.
        host::take_dispatched();
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let mut host = ProxyHost;
        let bytes = raw::buffer(BufferType::PluginConfiguration, 0, usize::MAX).unwrap_or_default();
        let env = |name: &str| std::env::var(name).ok();
        match Plugin::from_json(&bytes, &env) {
            Ok(plugin) => {
                plugin.start(&mut host);
                host::take_dispatched();
                self.shared = Some(Rc::new(Shared {
                    root: self.id,
                    plugin: Some(plugin),
                    waiters: RefCell::new(Vec::new()),
                    hurried: Cell::new(false),
                }));
                let _ = proxy_wasm::hostcalls::set_tick_period(TICK);
                host.info("consentry: configuration loaded");
                true
            }
            Err(errors) => {
                // The previous configuration (if any) is dropped too: the plugin never
                // runs half-configured, and unconfigured it refuses everything.
                self.shared = Some(Rc::new(Shared {
                    root: self.id,
                    plugin: None,
                    waiters: RefCell::new(Vec::new()),
                    hurried: Cell::new(false),
                }));
                for e in &errors.0 {
                    host.error(&format!("consentry: configuration refused: {e}"));
                }
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(shared) = &self.shared {
            shared.on_tick();
        }
        host::take_dispatched();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone().unwrap_or_else(|| {
            Rc::new(Shared {
                root: self.id,
                plugin: None,
                waiters: RefCell::new(Vec::new()),
                hurried: Cell::new(false),
            })
        });
        Some(Box::new(Stream {
            id: context_id,
            shared,
            state: Rc::new(RefCell::new(StreamState::default())),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A stream's state, shared with the waiter list while it waits.
#[derive(Default)]
struct StreamState {
    /// Shared, so that deciding (again, after a wait) reads it without a copy.
    head: Option<Rc<RequestHead>>,
    exchange: Option<Exchange>,
    /// The request body ended while the stream was waiting for a decision.
    body_ended_while_waiting: bool,
    /// Calls this stream's callbacks dispatched: their answers come back to this
    /// context, so they are lost if it ends first.
    calls: Vec<u32>,
}

/// One HTTP stream.
struct Stream {
    id: u32,
    shared: Rc<Shared>,
    state: Rc<RefCell<StreamState>>,
}

impl Context for Stream {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        self.shared.on_call_response(token, body_size, self.id);
        self.keep_dispatched();
    }

    fn on_done(&mut self) -> bool {
        // Calls still unanswered die with this context: forget them, so the
        // requests waiting for them fetch again instead of waiting in vain.
        let calls = std::mem::take(&mut self.state.borrow_mut().calls);
        if let Some(plugin) = self.shared.plugin.as_ref() {
            plugin.forget_calls(&calls);
            self.shared.hurry_if_wanted(plugin);
        }
        true
    }
}

impl Stream {
    fn keep_dispatched(&self) {
        self.state
            .borrow_mut()
            .calls
            .extend(host::take_dispatched());
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let head = read_request_head(end_of_stream);
        self.state.borrow_mut().head = Some(Rc::new(head));
        let next = self.shared.decide(self.id, &self.state, Attempt::First);
        self.keep_dispatched();
        match next {
            Next::Continue => Action::Continue,
            Next::Pause => Action::Pause,
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(plugin) = self.shared.plugin.as_ref() else {
            return Action::Pause;
        };
        let mut state = self.state.borrow_mut();
        let Some(exchange) = state.exchange.as_mut() else {
            // Still deciding: keep the body here until the decision.
            if end_of_stream {
                state.body_ended_while_waiting = true;
            }
            return Action::Pause;
        };
        let mut host = ProxyHost;
        let mut action = plugin.on_request_body_progress(exchange, body_size, &mut host);
        if end_of_stream && action == BodyAction::Buffer {
            let body = raw::buffer(BufferType::HttpRequestBody, 0, body_size).unwrap_or_default();
            let content_type = state
                .head
                .as_ref()
                .and_then(|h| h.headers.get_all("content-type").next().map(<[u8]>::to_vec));
            let Some(exchange) = state.exchange.as_mut() else {
                return Action::Pause;
            };
            action = plugin.on_request_body(exchange, content_type.as_deref(), &body, &mut host);
        }
        match action {
            BodyAction::Pass => Action::Continue,
            BodyAction::Buffer => Action::Pause,
            BodyAction::Release { body, headers } => {
                raw::set_buffer(BufferType::HttpRequestBody, 0, body_size, &body);
                apply(MapType::HttpRequestHeaders, &headers);
                Action::Continue
            }
            BodyAction::Reply(reply) => {
                send_reply(&reply);
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(plugin) = self.shared.plugin.as_ref() else {
            return Action::Continue;
        };
        let mut state = self.state.borrow_mut();
        let Some(exchange) = state.exchange.as_mut() else {
            return Action::Continue;
        };
        let headers: Headers = raw::header_pairs(MapType::HttpResponseHeaders)
            .into_iter()
            .collect();
        let status = headers
            .get_str(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        match plugin.on_response_headers(exchange, status, &headers, end_of_stream, &mut ProxyHost)
        {
            ResponseAction::Hold => Action::Pause,
            ResponseAction::Pass(edits) => {
                apply(MapType::HttpResponseHeaders, &edits);
                Action::Continue
            }
            ResponseAction::Reply(reply) => {
                send_reply(&reply);
                Action::Pause
            }
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(plugin) = self.shared.plugin.as_ref() else {
            return Action::Continue;
        };
        let mut state = self.state.borrow_mut();
        let Some(exchange) = state.exchange.as_mut() else {
            return Action::Continue;
        };
        let mut host = ProxyHost;
        let mut action = plugin.on_response_body_progress(exchange, body_size, &mut host);
        if end_of_stream && action == BodyAction::Buffer {
            let body = raw::buffer(BufferType::HttpResponseBody, 0, body_size).unwrap_or_default();
            action = plugin.on_response_body(exchange, &body, &mut host);
        }
        match action {
            BodyAction::Pass => Action::Continue,
            BodyAction::Buffer => Action::Pause,
            BodyAction::Release { body, headers } => {
                if raw::set_buffer(BufferType::HttpResponseBody, 0, body_size, &body) {
                    apply(MapType::HttpResponseHeaders, &headers);
                    Action::Continue
                } else {
                    // The host would not take the redacted body: release nothing.
                    send_reply(&problem::reply(
                        Code::UnsafeResponse,
                        &plugin.config().problem_type_base,
                        exchange.request_id(),
                        None,
                    ));
                    Action::Pause
                }
            }
            BodyAction::Reply(reply) => {
                send_reply(&reply);
                Action::Pause
            }
        }
    }

    fn on_log(&mut self) {
        let (Some(plugin), Some(exchange)) = (
            self.shared.plugin.as_ref(),
            // The stream is over: the exchange is taken, not copied.
            self.state.borrow_mut().exchange.take(),
        ) else {
            return;
        };
        plugin.finish(&exchange, &mut ProxyHost);
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        let Some(plugin) = self.shared.plugin.as_ref() else {
            return Action::Continue;
        };
        let mut state = self.state.borrow_mut();
        let Some(exchange) = state.exchange.as_mut() else {
            return Action::Continue;
        };
        match plugin.on_response_trailers(exchange, &mut ProxyHost) {
            BodyAction::Reply(reply) => {
                send_reply(&reply);
                Action::Pause
            }
            _ => Action::Continue,
        }
    }
}

/// What the stream does once a decision step is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// The request may move on now.
    Continue,
    /// It stays paused: refused, waiting, or holding its body.
    Pause,
}

impl Shared {
    /// Decides (or decides again) the request of `context`, which is paused in its
    /// request headers, and acts on the decision from whatever context runs now.
    fn decide(&self, context: u32, state: &Rc<RefCell<StreamState>>, attempt: Attempt) -> Next {
        let mut host = ProxyHost;
        let Some(plugin) = self.plugin.as_ref() else {
            // Unconfigured (the configuration was refused): refuse everything.
            let mut random = [0u8; 16];
            consentry_core::host::Host::fill_random(&mut host, &mut random);
            send_reply(&problem::reply(
                Code::DependencyUnavailable,
                consentry_core::config::DEFAULT_PROBLEM_TYPE_BASE,
                &problem::request_id_from_random(random),
                None,
            ));
            return Next::Pause;
        };
        let Some(head) = state.borrow().head.clone() else {
            return Next::Pause;
        };
        let (exchange, action) = plugin.on_request_headers(&head, &mut host, attempt);
        self.hurry_if_wanted(plugin);
        match action {
            RequestAction::Wait(resource) => {
                let since_ms = now_ms();
                self.waiters.borrow_mut().push(Waiter {
                    context,
                    stream: Rc::downgrade(state),
                    resource,
                    since_ms,
                });
                Next::Pause
            }
            RequestAction::Reply(reply) => {
                state.borrow_mut().exchange = Some(exchange);
                send_reply(&reply);
                Next::Pause
            }
            RequestAction::Forward { edits, hold_body } => {
                apply(MapType::HttpRequestHeaders, &edits);
                let ended = state.borrow().body_ended_while_waiting;
                state.borrow_mut().exchange = Some(exchange);
                if hold_body && ended {
                    // The whole body arrived while the request waited, and it cannot be
                    // minimised from here: refuse rather than forward it whole.
                    let reply = problem::reply(
                        Code::DependencyUnavailable,
                        &plugin.config().problem_type_base,
                        state
                            .borrow()
                            .exchange
                            .as_ref()
                            .map_or("", |e| e.request_id()),
                        Some(1),
                    );
                    send_reply(&reply);
                    Next::Pause
                } else if !hold_body || head.end_of_stream {
                    Next::Continue
                } else {
                    // The body is still to come: its callbacks minimise it, then continue.
                    Next::Pause
                }
            }
        }
    }

    /// An outgoing call's answer, delivered to the context that made it.
    fn on_call_response(&self, token: u32, body_size: usize, current: u32) {
        let Some(plugin) = self.plugin.as_ref() else {
            return;
        };
        let headers: Headers = raw::header_pairs(MapType::HttpCallResponseHeaders)
            .into_iter()
            .collect();
        let status = headers
            .get_str(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        let body = raw::buffer(BufferType::HttpCallResponseBody, 0, body_size).unwrap_or_default();
        if let Some(resource) = plugin.on_call_response(token, status, &body, &mut ProxyHost) {
            self.wake(|w| w.resource == resource, Attempt::Again, current);
        }
    }

    /// The timer: the plugin's own work, then requests that waited too long are
    /// decided without waiting any more (a missing dependency is then a 503).
    fn on_tick(&self) {
        let Some(plugin) = self.plugin.as_ref() else {
            return;
        };
        if self.hurried.replace(false) {
            let _ = proxy_wasm::hostcalls::set_tick_period(TICK);
        }
        let failed = plugin.on_tick(&mut ProxyHost);
        for resource in failed {
            self.wake(|w| w.resource == resource, Attempt::Again, self.root);
        }
        self.hurry_if_wanted(plugin);
        let limit = plugin.config().limits.max_wait_ms;
        let now = now_ms();
        self.wake(
            |w| now.saturating_sub(w.since_ms) >= limit,
            Attempt::Last,
            self.root,
        );
    }

    /// Fires the timer at once when fetches wait for it. A context's timer is its
    /// root's, whichever context sets it.
    fn hurry_if_wanted(&self, plugin: &Plugin) {
        if plugin.has_wanted_calls() && !self.hurried.replace(true) {
            let _ = proxy_wasm::hostcalls::set_tick_period(TICK_NOW);
        }
    }

    /// Decides again the waiters `pick` selects, each in its own context, then
    /// returns to `current`.
    fn wake(&self, pick: impl Fn(&Waiter) -> bool, attempt: Attempt, current: u32) {
        let ready: Vec<Waiter> = {
            let mut waiters = self.waiters.borrow_mut();
            let (ready, rest): (Vec<_>, Vec<_>) = waiters.drain(..).partition(|w| pick(w));
            *waiters = rest;
            ready
        };
        for w in ready {
            let Some(state) = w.stream.upgrade() else {
                continue;
            };
            if !raw::set_effective_context(w.context) {
                continue;
            }
            let before = self.waiters.borrow().len();
            if self.decide(w.context, &state, attempt) == Next::Continue {
                raw::continue_request();
            }
            // Waiting again keeps the original start, so the bound holds overall.
            if let Some(again) = self.waiters.borrow_mut().get_mut(before) {
                again.since_ms = w.since_ms;
            }
        }
        raw::set_effective_context(current);
    }
}

fn now_ms() -> u64 {
    proxy_wasm::hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn read_request_head(end_of_stream: bool) -> RequestHead {
    let headers: Headers = raw::header_pairs(MapType::HttpRequestHeaders)
        .into_iter()
        .collect();
    let pseudo = |name: &str| headers.get_str(name).unwrap_or_default().to_owned();
    RequestHead {
        method: pseudo(":method"),
        path: pseudo(":path"),
        authority: pseudo(":authority"),
        connection: read_connection(),
        end_of_stream,
        headers,
    }
}

fn read_connection() -> Connection {
    let text = |path: &[&str]| raw::property(path).and_then(|b| String::from_utf8(b).ok());
    let mtls = raw::property(&["connection", "mtls"]).is_some_and(|b| b.first() == Some(&1));
    let peer = mtls.then(|| PeerCertificate {
        uri_san: text(&["connection", "uri_san_peer_certificate"]),
        sha256_hex: text(&["connection", "sha256_peer_certificate_digest"]),
        pem: text(&["connection", "peer_certificate"]),
    });
    Connection {
        source_address: text(&["source", "address"]),
        mtls,
        peer,
    }
}

/// Applies header edits to a map the plugin may still write.
fn apply(map: MapType, edits: &HeaderEdits) {
    for name in &edits.remove {
        raw::remove_header(map, name);
    }
    for (name, value) in &edits.set {
        raw::set_header(map, name, value);
    }
}

fn send_reply(reply: &LocalReply) {
    raw::send_local_response(reply.status, reply.details, &reply.headers, &reply.body);
}
