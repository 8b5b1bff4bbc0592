//! A proxy in miniature over the core, for hosts that hand the component whole
//! requests and take whole responses (`wasi:http`, the `engine` interface).
//!
//! The core is driven exactly as the proxy-wasm adapter drives it in Envoy:
//! stream created → request headers → body → trailers → (waits for keys and
//! status lists, answered through [`System::wait_calls`]) → response headers → body
//! → trailers → log. This module plays the proxy's part: it holds both messages
//! whole, applies the core's header edits and body replacements to what it holds,
//! and lets a message go only when the core said so (`Flow::Continue`, or a
//! `resume`) after its last event. A reply or a reset of the core's ends the
//! stream; anything the core never released is never sent: the answer is then a
//! reset.
//!
//! Bodies are held whole, up to the configuration's `limits.max_body_bytes`; a
//! longer request is answered by the "proxy" with 413 (which the core masks), a
//! longer response is withheld by the core.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use consentry_core::config::{ConfigError, ConfigErrors};
use consentry_core::exchange::{EXPLAIN_MARKER, Event, Filter, Flow, ResponseHead, TICK};
use consentry_core::host::{
    DispatchError, Host, HostError, LogLevel, MapKind, OutgoingCall, SharedData, SharedDataError,
    Side, unix_millis,
};
use consentry_core::http::{HeaderEdits, Headers, LocalReply, RequestHead};

use crate::settings::Environment;

/// Header pairs as held: lower-case names, raw values, in order.
pub type Pairs = Vec<(String, Vec<u8>)>;

/// How much body the proxy holds when the configuration sets no limit (it is
/// unconfigured and refuses everything anyway).
const DEFAULT_BUFFER_LIMIT: usize = 1 << 20;

/// What the component's surroundings provide: time, randomness, a log, and
/// outgoing calls. The `wasi:*` imports in the component; a fake in tests.
pub trait System {
    fn now(&self) -> Result<SystemTime, HostError>;
    /// Cryptographically secure random bytes, or an error (never anything weaker).
    fn fill_random(&mut self, buf: &mut [u8]) -> Result<(), HostError>;
    fn log(&mut self, level: LogLevel, message: &str);
    fn debug_enabled(&self) -> bool;
    /// Starts an outgoing call; its answer comes from `wait_calls` with the token.
    fn dispatch(&mut self, call: &OutgoingCall) -> Result<u32, DispatchError>;
    /// Waits at most `timeout` for outgoing calls to answer and returns the
    /// answers that came (none when no call is in flight, after the wait).
    fn wait_calls(&mut self, timeout: Duration) -> Vec<CallAnswer>;
}

/// An outgoing call's answer; status 0 when the call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallAnswer {
    pub token: u32,
    pub status: u16,
    pub body: Vec<u8>,
}

/// A request as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// Its headers hold the pseudo-headers too (`:authority`, `:path`,
    /// `:method`, `:scheme`), as in Envoy.
    pub head: RequestHead,
    /// The body, or its first `buffer_limit() + 1` bytes.
    pub body: Vec<u8>,
    /// False when the body went on past what `body` holds.
    pub complete: bool,
    pub trailers: Option<Headers>,
}

impl Incoming {
    /// A request with Envoy's pseudo-headers in front of `headers`.
    pub fn new(
        method: &str,
        path: &str,
        authority: &str,
        scheme: &str,
        headers: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) -> Incoming {
        let mut all = Headers::new();
        all.push(":authority", authority);
        all.push(":path", path);
        all.push(":method", method);
        all.push(":scheme", scheme);
        for (n, v) in headers {
            all.push(n, v);
        }
        Incoming {
            head: RequestHead {
                method: method.to_owned(),
                path: path.to_owned(),
                authority: authority.to_owned(),
                headers: all,
                ..RequestHead::default()
            },
            body: Vec::new(),
            complete: true,
            trailers: None,
        }
    }
}

/// What the upstream may receive of an allowed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub method: String,
    /// Path and query after minimisation.
    pub path: String,
    /// Without pseudo-headers.
    pub headers: Pairs,
    pub body: Vec<u8>,
}

/// A whole response for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Pairs,
    pub body: Vec<u8>,
}

/// How a stream ends for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Send(Reply),
    /// The client gets no answer: the connection is reset.
    Reset,
}

/// The decision on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Forward(Forward),
    Answer(Answer),
}

/// What came back from the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    Response {
        status: u16,
        headers: Pairs,
        /// The body, or its first `buffer_limit() + 1` bytes.
        body: Vec<u8>,
        /// False when the body went on past what `body` holds.
        complete: bool,
        trailers: Option<Headers>,
    },
    /// No response: the proxy answers itself (503), as Envoy does, and the core
    /// masks that.
    Failed,
}

/// What the proxy holds of one stream, and what the core did to it.
#[derive(Debug, Default)]
struct StreamBuf {
    request_headers: Pairs,
    request_body: Vec<u8>,
    request_trailers: Pairs,
    response_headers: Pairs,
    response_body: Vec<u8>,
    response_trailers: Pairs,
    reply: Option<LocalReply>,
    reset: bool,
    /// The request may go: the core continued its last event, or resumed it.
    request_released: bool,
    response_resumed: bool,
    /// `response.code` and `response.code_details`, as Envoy reports them.
    status: u16,
    code_details: &'static str,
    method_is_head: bool,
}

impl StreamBuf {
    fn headers(&mut self, map: MapKind) -> &mut Pairs {
        match map {
            MapKind::RequestHeaders => &mut self.request_headers,
            MapKind::RequestTrailers => &mut self.request_trailers,
            MapKind::ResponseHeaders => &mut self.response_headers,
            MapKind::ResponseTrailers => &mut self.response_trailers,
        }
    }

    fn body(&mut self, side: Side) -> &mut Vec<u8> {
        match side {
            Side::Request => &mut self.request_body,
            Side::Response => &mut self.response_body,
        }
    }

    /// How the stream ended, if the core ended it (a reset wins over a reply).
    fn ended(&self) -> Option<Answer> {
        if self.reset {
            return Some(Answer::Reset);
        }
        self.reply.as_ref().map(|r| Answer::Send(local(r)))
    }
}

/// Removals, then settings (each replaces every value of its name).
pub fn apply_edits(pairs: &mut Pairs, edits: &HeaderEdits) {
    for name in &edits.remove {
        pairs.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }
    for (name, value) in &edits.set {
        pairs.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        pairs.push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
    }
}

/// A local reply as the client receives it: with its length, as Envoy sends it.
fn local(reply: &LocalReply) -> Reply {
    let mut headers: Pairs = reply
        .headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.as_bytes().to_vec()))
        .collect();
    headers.push((
        "content-length".into(),
        reply.body.len().to_string().into_bytes(),
    ));
    Reply {
        status: reply.status,
        headers,
        body: reply.body.clone(),
    }
}

fn without_pseudo(pairs: &Pairs) -> Pairs {
    pairs
        .iter()
        .filter(|(n, _)| !n.starts_with(':'))
        .cloned()
        .collect()
}

/// The core's host: the streams the proxy holds, the shared data and counters of
/// this instance, and the [`System`] for everything else.
pub struct ProxyHost<S> {
    pub sys: S,
    shared: HashMap<String, (Vec<u8>, u32)>,
    cas: u32,
    counters: BTreeMap<String, u64>,
    current: u32,
    streams: HashMap<u32, StreamBuf>,
    /// Lines logged while an explanation is being taken.
    capture: Option<Vec<String>>,
}

impl<S: System> ProxyHost<S> {
    fn new(sys: S) -> Self {
        Self {
            sys,
            shared: HashMap::new(),
            cas: 0,
            counters: BTreeMap::new(),
            current: 0,
            streams: HashMap::new(),
            capture: None,
        }
    }

    fn stream(&mut self) -> Result<&mut StreamBuf, HostError> {
        self.streams.get_mut(&self.current).ok_or(HostError(2))
    }
}

impl<S: System> SharedData for ProxyHost<S> {
    fn shared_get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        Ok(self.shared.get(key).cloned())
    }

    fn shared_set(
        &mut self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError> {
        // As in proxy-wasm, a CAS of 0 writes unconditionally.
        if let (Some(cas), Some((_, current))) = (cas.filter(|c| *c != 0), self.shared.get(key))
            && cas != *current
        {
            return Err(SharedDataError::CasMismatch);
        }
        self.cas = self.cas.wrapping_add(1).max(1);
        self.shared
            .insert(key.to_owned(), (value.to_vec(), self.cas));
        Ok(())
    }
}

impl<S: System> Host for ProxyHost<S> {
    fn now(&self) -> Result<SystemTime, HostError> {
        self.sys.now()
    }

    fn fill_random(&mut self, buf: &mut [u8]) -> Result<(), HostError> {
        self.sys.fill_random(buf)
    }

    fn log(&mut self, level: LogLevel, message: &str) -> Result<(), HostError> {
        if let Some(lines) = &mut self.capture {
            lines.push(message.to_owned());
        }
        if level >= LogLevel::Info || self.sys.debug_enabled() {
            self.sys.log(level, message);
        }
        Ok(())
    }

    fn debug_enabled(&mut self) -> bool {
        self.capture.is_some() || self.sys.debug_enabled()
    }

    fn count(&mut self, name: &str, delta: u64) {
        let c = self.counters.entry(name.to_owned()).or_insert(0);
        *c = c.saturating_add(delta);
    }

    fn dispatch(&mut self, call: &OutgoingCall) -> Result<u32, DispatchError> {
        self.sys.dispatch(call)
    }

    fn switch_to(&mut self, context: u32) -> Result<(), HostError> {
        if !self.streams.contains_key(&context) {
            return Err(HostError(2));
        }
        self.current = context;
        Ok(())
    }

    fn body(&mut self, side: Side, size: usize) -> Result<Vec<u8>, HostError> {
        let body = self.stream()?.body(side);
        Ok(body
            .get(..size.min(body.len()))
            .unwrap_or_default()
            .to_vec())
    }

    fn set_body(&mut self, side: Side, size: usize, body: &[u8]) -> Result<(), HostError> {
        let target = self.stream()?.body(side);
        let end = size.min(target.len());
        target.splice(..end, body.iter().copied());
        Ok(())
    }

    fn property(&mut self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        let s = self.stream()?;
        Ok(match path {
            ["response", "code"] if s.status != 0 => {
                Some(u64::from(s.status).to_le_bytes().to_vec())
            }
            ["response", "code_details"] if !s.code_details.is_empty() => {
                Some(s.code_details.as_bytes().to_vec())
            }
            // No TLS peer and no address the component could trust.
            _ => None,
        })
    }

    fn edit_headers(&mut self, map: MapKind, edits: &HeaderEdits) -> Result<(), HostError> {
        apply_edits(self.stream()?.headers(map), edits);
        Ok(())
    }

    fn send_reply(&mut self, reply: &LocalReply) -> Result<(), HostError> {
        let s = self.stream()?;
        if s.reply.is_some() {
            // One answer per stream; the core resets the stream instead.
            return Err(HostError(2));
        }
        s.reply = Some(reply.clone());
        Ok(())
    }

    fn resume(&mut self, side: Side) -> Result<(), HostError> {
        let s = self.stream()?;
        match side {
            Side::Request => s.request_released = true,
            Side::Response => s.response_resumed = true,
        }
        Ok(())
    }

    fn reset(&mut self) -> Result<(), HostError> {
        self.stream()?.reset = true;
        Ok(())
    }
}

/// One component instance's plugin: its filter (configuration and caches) and
/// the streams it holds.
pub struct Vm<S: System> {
    filter: Filter,
    host: ProxyHost<S>,
    next_stream: u32,
    last_tick_ms: u64,
}

impl<S: System> Vm<S> {
    /// Compiles the configuration. A refused one is logged error by error and
    /// leaves a VM that refuses every request with 503.
    pub fn start(config: &[u8], env: &Environment, sys: S) -> (Self, Result<(), ConfigErrors>) {
        let mut host = ProxyHost::new(sys);
        let lookup = |name: &str| env.lookup(name);
        let (filter, loaded) = Filter::configure(config, &lookup, &mut host);
        if loaded.is_ok() {
            let mode = filter
                .plugin()
                .map_or("", |p| p.config().response_mode.describe());
            let _ = host.log(
                LogLevel::Info,
                &format!("consentry: configuration loaded; {mode}"),
            );
        }
        (Self::with(filter, host), loaded)
    }

    /// A VM that refuses every request (503), for a component that has no usable
    /// configuration; `errors` are logged the way a refused configuration's are.
    pub fn refusing(errors: &ConfigErrors, sys: S) -> Self {
        let mut host = ProxyHost::new(sys);
        for e in &errors.0 {
            let _ = host.log(
                LogLevel::Error,
                &format!("consentry: configuration refused: {e}"),
            );
        }
        Self::with(Filter::unconfigured(), host)
    }

    fn with(filter: Filter, host: ProxyHost<S>) -> Self {
        Self {
            filter,
            host,
            next_stream: 1,
            last_tick_ms: 0,
        }
    }

    pub fn system(&mut self) -> &mut S {
        &mut self.host.sys
    }

    /// How many body bytes the proxy holds of a message.
    pub fn buffer_limit(&self) -> usize {
        self.filter
            .plugin()
            .map_or(DEFAULT_BUFFER_LIMIT, |p| p.config().limits.max_body_bytes)
    }

    /// The counters the core keeps (Envoy's stats), by name.
    pub fn counters(&self) -> &BTreeMap<String, u64> {
        &self.host.counters
    }

    /// Streams still held (for leak checks).
    pub fn open_streams(&self) -> usize {
        self.host.streams.len()
    }

    fn event(&mut self, id: u32, event: Event) -> Flow {
        self.host.current = id;
        self.filter.on_event(id, event, &mut self.host)
    }

    fn ended(&self, id: u32) -> Option<Answer> {
        match self.host.streams.get(&id) {
            Some(s) => s.ended(),
            None => Some(Answer::Reset),
        }
    }

    fn buf(&mut self, id: u32) -> Option<&mut StreamBuf> {
        self.host.streams.get_mut(&id)
    }

    fn now_ms(&self) -> u64 {
        self.host.sys.now().map(unix_millis).unwrap_or(0)
    }

    /// The core's timer, at most every [`TICK`].
    fn tick(&mut self, current: u32) {
        let now = self.now_ms();
        let every = u64::try_from(TICK.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(self.last_tick_ms) >= every {
            self.last_tick_ms = now;
            self.filter.on_tick(current, &mut self.host);
        }
    }

    /// Decides a request: the stream is opened, and stays open until [`Vm::close`].
    pub fn request(&mut self, incoming: Incoming) -> (u32, Verdict) {
        let Incoming {
            mut head,
            body,
            complete,
            trailers,
        } = incoming;
        let id = self.next_stream.wrapping_add(1).max(2);
        self.next_stream = id;
        self.filter.on_stream_created(id);
        let trailers = trailers.filter(|t| !t.is_empty());
        let body_size = body.len();
        self.host.streams.insert(
            id,
            StreamBuf {
                request_headers: head
                    .headers
                    .iter()
                    .map(|(n, v)| (n.to_owned(), v.to_vec()))
                    .collect(),
                request_body: body,
                request_trailers: trailers
                    .as_ref()
                    .map(|t| t.iter().map(|(n, v)| (n.to_owned(), v.to_vec())).collect())
                    .unwrap_or_default(),
                method_is_head: head.method == "HEAD",
                ..StreamBuf::default()
            },
        );
        self.host.current = id;
        self.tick(id);
        let method = head.method.clone();
        let path = head.path.clone();

        head.end_of_stream = complete && body_size == 0 && trailers.is_none();
        let headers_end = head.end_of_stream;
        let mut flow = self.event(id, Event::RequestHeaders(head));
        if !headers_end && self.ended(id).is_none() {
            if body_size > 0 || trailers.is_none() {
                flow = self.event(
                    id,
                    Event::RequestBody {
                        size: body_size,
                        end_of_stream: complete && trailers.is_none(),
                    },
                );
            }
            if let Some(t) = trailers.filter(|_| complete)
                && self.ended(id).is_none()
            {
                flow = self.event(id, Event::RequestTrailers(t));
            }
        }
        if let Some(s) = self.buf(id) {
            s.request_released = flow == Flow::Continue;
        }
        if !complete && self.ended(id).is_none() {
            // More body than the proxy holds: it answers 413 itself, as Envoy does
            // at its buffer limit, and the core masks that.
            return (
                id,
                Verdict::Answer(self.proxy_reply(id, 413, "request_payload_too_large")),
            );
        }
        self.settle(id);
        if let Some(answer) = self.ended(id) {
            return (id, Verdict::Answer(answer));
        }
        let Some(s) = self.buf(id) else {
            return (id, Verdict::Answer(Answer::Reset));
        };
        if !s.request_released {
            // The core never let it go (cannot happen after `settle`): nothing goes.
            s.reset = true;
            return (id, Verdict::Answer(Answer::Reset));
        }
        let path = s
            .request_headers
            .iter()
            .find(|(n, _)| n == ":path")
            .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
            .unwrap_or(path);
        (
            id,
            Verdict::Forward(Forward {
                method,
                path,
                headers: without_pseudo(&s.request_headers),
                body: std::mem::take(&mut s.request_body),
            }),
        )
    }

    /// Waits until the core has decided the request: answers to its outgoing
    /// calls and its timer are delivered meanwhile. The core bounds every wait
    /// (`limits.max_wait_ms`); behind it, the proxy's own stream timeout.
    fn settle(&mut self, id: u32) {
        let max_wait = self
            .filter
            .plugin()
            .map_or(0, |p| p.config().limits.max_wait_ms);
        let tick = u64::try_from(TICK.as_millis()).unwrap_or(u64::MAX);
        let limit = max_wait.saturating_add(4 * tick);
        // Bounded by rounds too: a clock that does not move cannot make it spin.
        let rounds = 4 * (limit / tick + 2);
        let start = self.now_ms();
        for _ in 0..rounds {
            match self.host.streams.get(&id) {
                Some(s) if s.reply.is_none() && !s.reset && !s.request_released => {}
                _ => return,
            }
            let waited = self.now_ms().saturating_sub(start);
            if waited >= limit {
                break;
            }
            let step = Duration::from_millis(tick.min(limit - waited));
            for answer in self.host.sys.wait_calls(step) {
                self.filter.on_call_response(
                    answer.token,
                    answer.status,
                    &answer.body,
                    id,
                    &mut self.host,
                );
            }
            self.host.current = id;
            self.tick(id);
        }
        if self.ended(id).is_none() && !self.buf(id).is_some_and(|s| s.request_released) {
            // The proxy's stream timeout: its own 504, masked by the core.
            self.proxy_reply(id, 504, "stream_idle_timeout");
        }
    }

    /// The proxy answers the stream itself (its buffer limit, a timeout, an
    /// upstream it could not reach). The response passes through the core like
    /// any other; the core masks it.
    fn proxy_reply(&mut self, id: u32, status: u16, details: &'static str) -> Answer {
        let Some(s) = self.buf(id) else {
            return Answer::Reset;
        };
        s.status = status;
        s.code_details = details;
        s.response_headers = vec![
            (":status".into(), status.to_string().into_bytes()),
            ("content-type".into(), b"text/plain".to_vec()),
        ];
        s.response_body = details.as_bytes().to_vec();
        let headers: Headers = s.response_headers.iter().cloned().collect();
        let flow = self.event(
            id,
            Event::ResponseHeaders(ResponseHead {
                status,
                headers,
                end_of_stream: false,
            }),
        );
        if let Some(answer) = self.ended(id) {
            return answer;
        }
        let size = self.buf(id).map_or(0, |s| s.response_body.len());
        let body_flow = self.event(
            id,
            Event::ResponseBody {
                size,
                end_of_stream: true,
            },
        );
        if let Some(answer) = self.ended(id) {
            return answer;
        }
        self.released_response(id, flow == Flow::Continue && body_flow == Flow::Continue)
    }

    /// The upstream's answer through the core: what the client receives.
    pub fn respond(&mut self, id: u32, upstream: Upstream) -> Answer {
        if let Some(answer) = self.ended(id) {
            return answer;
        }
        if !self.buf(id).is_some_and(|s| s.request_released) {
            return self.reset(id);
        }
        self.host.current = id;
        let (status, headers, body, complete, trailers) = match upstream {
            Upstream::Failed => {
                return self.proxy_reply(
                    id,
                    503,
                    "upstream_reset_before_response_started{connection_failure}",
                );
            }
            Upstream::Response {
                status,
                headers,
                body,
                complete,
                trailers,
            } => (status, headers, body, complete, trailers),
        };
        let trailers = trailers.filter(|t| !t.is_empty());
        let mut held: Pairs = vec![(":status".into(), status.to_string().into_bytes())];
        held.extend(
            headers
                .into_iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v)),
        );
        let size = body.len();
        let end_with_headers = complete && size == 0 && trailers.is_none();
        let head = ResponseHead {
            status,
            headers: held.iter().cloned().collect(),
            end_of_stream: end_with_headers,
        };
        if let Some(s) = self.buf(id) {
            s.status = status;
            s.code_details = "via_upstream";
            s.response_headers = held;
            s.response_body = body;
            s.response_trailers = trailers
                .as_ref()
                .map(|t| t.iter().map(|(n, v)| (n.to_owned(), v.to_vec())).collect())
                .unwrap_or_default();
        }
        let mut flow = self.event(id, Event::ResponseHeaders(head));
        if !end_with_headers && self.ended(id).is_none() {
            if size > 0 || trailers.is_none() || !complete {
                flow = self.event(
                    id,
                    Event::ResponseBody {
                        size,
                        end_of_stream: complete && trailers.is_none(),
                    },
                );
            }
            if !complete && self.ended(id).is_none() {
                // More body than the proxy holds, and the core did not withhold
                // it: what it has not seen cannot go.
                return self.reset(id);
            }
            if let Some(t) = trailers
                && self.ended(id).is_none()
            {
                flow = self.event(id, Event::ResponseTrailers(t));
            }
        }
        if let Some(answer) = self.ended(id) {
            return answer;
        }
        self.released_response(id, flow == Flow::Continue)
    }

    /// The held response, as the core left it, if it let it go; else a reset.
    fn released_response(&mut self, id: u32, continued: bool) -> Answer {
        let Some(s) = self.buf(id) else {
            return Answer::Reset;
        };
        if !(continued || s.response_resumed) {
            return self.reset(id);
        }
        let body = if s.method_is_head {
            Vec::new()
        } else {
            std::mem::take(&mut s.response_body)
        };
        Answer::Send(Reply {
            status: s.status,
            headers: without_pseudo(&s.response_headers),
            body,
        })
    }

    fn reset(&mut self, id: u32) -> Answer {
        if let Some(s) = self.buf(id) {
            s.reset = true;
        }
        Answer::Reset
    }

    /// The stream is over: its audit record is written (if the core has not yet),
    /// and the proxy forgets it.
    pub fn close(&mut self, id: u32) {
        if !self.host.streams.contains_key(&id) {
            return;
        }
        self.event(id, Event::Log);
        self.filter.on_delete(id, &mut self.host);
        self.host.streams.remove(&id);
    }

    /// Why a request is allowed or refused (see `explain` in `wit/engine.wit`).
    /// The request is decided for real and its stream closed.
    pub fn explain(&mut self, incoming: Incoming) -> serde_json::Value {
        self.host.capture = Some(Vec::new());
        let (id, verdict) = self.request(incoming);
        self.close(id);
        let lines = self.host.capture.take().unwrap_or_default();
        explanation(&verdict, &lines)
    }

    /// The masked problem for an answer the adapter itself cannot give (a reset
    /// that a library host must turn into a response, an exchange answered twice).
    pub fn masked(&mut self) -> Reply {
        let mut id = [0u8; 16];
        let request_id = match self.host.sys.fill_random(&mut id) {
            Ok(()) => consentry_core::problem::request_id_from_random(id),
            Err(_) => String::new(),
        };
        let base = self
            .filter
            .plugin()
            .map_or(consentry_core::config::DEFAULT_PROBLEM_TYPE_BASE, |p| {
                p.config().problem_type_base.as_str()
            });
        local(&consentry_core::problem::reply(
            consentry_core::problem::Code::UnsafeResponse,
            base,
            &request_id,
            None,
        ))
    }

    /// Delivers whatever outgoing calls have answered, without waiting.
    pub fn poll(&mut self) {
        for answer in self.host.sys.wait_calls(Duration::ZERO) {
            self.filter.on_call_response(
                answer.token,
                answer.status,
                &answer.body,
                0,
                &mut self.host,
            );
        }
    }
}

/// The explanation of a decision, from the lines the core logged for it: its
/// debug line (route, rule, plan) and its audit record (code and reason).
fn explanation(verdict: &Verdict, lines: &[String]) -> serde_json::Value {
    use serde_json::{Value, json};
    let marked = |marker: &str| -> Value {
        lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix(marker))
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null)
    };
    let debug = marked(EXPLAIN_MARKER);
    let record = marked(consentry_core::audit::LOG_MARKER);
    let (decision, status) = match verdict {
        Verdict::Forward(_) => ("allow", Value::Null),
        Verdict::Answer(Answer::Send(r)) => ("deny", json!(r.status)),
        Verdict::Answer(Answer::Reset) => ("deny", Value::Null),
    };
    let mut out = json!({
        "decision": decision,
        "status": status,
        "code": record.get("code").cloned().unwrap_or(Value::Null),
        "reason": record.get("reason").cloned().unwrap_or(Value::Null),
    });
    if let (Some(out), Some(debug)) = (out.as_object_mut(), debug.as_object()) {
        for key in [
            "route",
            "rule",
            "purpose",
            "released",
            "unclassified",
            "fields",
        ] {
            if let Some(v) = debug.get(key) {
                out.insert(key.to_owned(), v.clone());
            }
        }
        if decision == "allow" {
            // The request's own decision, not the record of a stream closed unanswered.
            out.insert("code".into(), json!("ok"));
            if let Some(r) = debug.get("reason") {
                out.insert("reason".into(), r.clone());
            }
        }
    }
    out
}

/// A configuration error that is not the document's (a missing variable).
pub fn setting_error(location: &str, reason: impl Into<String>) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        location: location.to_owned(),
        reason: reason.into(),
    }])
}

#[cfg(test)]
mod tests;
