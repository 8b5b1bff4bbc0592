//! The component's exports over the `wasi:*` imports: `wasi:http/incoming-handler`
//! (the consent middleware) and `consentry:policy/engine` (the library). Bytes move
//! here; [`crate::proxy`] and the core decide.
//!
//! `wasi:http` 0.2 hands the component one request per `handle` call and runs
//! nothing between calls, so everything is synchronous: the request body is read
//! whole (up to the body limit), the core decides (its outgoing calls for keys and
//! status lists are waited for here, on `wasi:io/poll`), the allowed request goes
//! upstream through `outgoing-handler`, the answer is read whole and redacted, and
//! only then does the client get anything. State (caches, the audit chain) lives
//! in the instance, so a host that reuses instances keeps it between requests.

use std::cell::{Cell, RefCell};
use std::io::Write as _;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use consentry_core::host::{DispatchError, HostError, LogLevel, OutgoingCall};
use consentry_core::http::{Connection, Headers, PeerCertificate};

use crate::bindings::exports::consentry::policy::engine as wit;
use crate::bindings::exports::wasi::http::incoming_handler;
use crate::bindings::wasi::clocks::monotonic_clock;
use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingBody, IncomingRequest, Method, OutgoingBody,
    OutgoingRequest, OutgoingResponse, RequestOptions, ResponseOutparam, Scheme,
};
use crate::bindings::wasi::io::poll;
use crate::bindings::wasi::io::streams::{InputStream, OutputStream, StreamError};
use crate::proxy::{
    Answer, CallAnswer, Forward, Incoming, Pairs, Reply, System, Upstream, Verdict, Vm,
};
use crate::settings::{self, Environment, Origin};

struct Component;

crate::bindings::export!(Component with_types_in crate::bindings);

/// How long the upstream may take to accept a connection, and then to answer
/// (Envoy's default route timeout is 15 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(15);
/// The most a key set or status list may weigh.
const MAX_CALL_BODY: usize = 8 << 20;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

// ── The system the core runs on ─────────────────────────────────────────────

/// An outgoing call in flight.
struct Call {
    token: u32,
    future: FutureIncomingResponse,
}

/// Time, randomness, the log and outgoing calls, over `wasi:*`.
struct WasiSystem {
    env: Environment,
    debug: bool,
    next: u32,
    calls: Vec<Call>,
}

impl WasiSystem {
    fn new(env: Environment) -> Self {
        Self {
            debug: env.debug(),
            env,
            next: 0,
            calls: Vec::new(),
        }
    }
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
        LogLevel::Critical => "critical",
    }
}

impl System for WasiSystem {
    fn now(&self) -> Result<SystemTime, HostError> {
        Ok(SystemTime::now())
    }

    fn fill_random(&mut self, buf: &mut [u8]) -> Result<(), HostError> {
        let len = u64::try_from(buf.len()).map_err(|_| HostError(2))?;
        let bytes = crate::bindings::wasi::random::random::get_random_bytes(len);
        if bytes.len() != buf.len() {
            return Err(HostError(2));
        }
        buf.copy_from_slice(&bytes);
        Ok(())
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        // One write per line, so that records of instances sharing a stderr do not
        // interleave within a line.
        let line = format!("{} {message}\n", level_name(level));
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn debug_enabled(&self) -> bool {
        self.debug
    }

    fn dispatch(&mut self, call: &OutgoingCall) -> Result<u32, DispatchError> {
        let origin = match self.env.cluster(&call.cluster) {
            Ok(origin) => origin,
            Err(reason) => {
                self.log(
                    LogLevel::Warn,
                    &format!("consentry: a call could not start: {reason}"),
                );
                return Err(DispatchError);
            }
        };
        let headers: Pairs = call
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), v.as_bytes().to_vec()))
            .collect();
        let future = send(
            &origin,
            &call.method,
            &call.path,
            &headers,
            &call.body,
            call.timeout,
            call.timeout,
        )
        .map_err(|_| DispatchError)?;
        self.next = self.next.wrapping_add(1).max(1);
        self.calls.push(Call {
            token: self.next,
            future,
        });
        Ok(self.next)
    }

    fn wait_calls(&mut self, timeout: Duration) -> Vec<CallAnswer> {
        let timer = monotonic_clock::subscribe_duration(nanos(timeout));
        if self.calls.is_empty() {
            timer.block();
            return Vec::new();
        }
        {
            let pollables: Vec<_> = self.calls.iter().map(|c| c.future.subscribe()).collect();
            let mut all: Vec<&poll::Pollable> = pollables.iter().collect();
            all.push(&timer);
            poll::poll(&all);
        }
        let mut answers = Vec::new();
        let mut waiting = Vec::new();
        for call in std::mem::take(&mut self.calls) {
            match call.future.get() {
                None => waiting.push(call),
                Some(result) => {
                    let (status, body) = match result {
                        Ok(Ok(response)) => {
                            let status = response.status();
                            match response.consume().ok().map(|b| read_body(b, MAX_CALL_BODY)) {
                                Some(Body::Whole(body, _)) => (status, body),
                                // Too big or broken: a failed fetch.
                                _ => (0, Vec::new()),
                            }
                        }
                        _ => (0, Vec::new()),
                    };
                    answers.push(CallAnswer {
                        token: call.token,
                        status,
                        body,
                    });
                }
            }
        }
        self.calls = waiting;
        answers
    }
}

// ── HTTP plumbing ───────────────────────────────────────────────────────────

/// What a body turned out to be.
enum Body {
    /// All of it, and its trailers.
    Whole(Vec<u8>, Option<Headers>),
    /// Its first `limit + 1` bytes: it is longer than `limit`.
    TooLong(Vec<u8>),
    /// The stream failed before its end.
    Broken,
}

fn read_stream(stream: &InputStream, limit: usize) -> Result<(Vec<u8>, bool), ()> {
    let mut out = Vec::new();
    loop {
        let want = (limit + 1 - out.len()).min(64 * 1024);
        match stream.blocking_read(u64::try_from(want).unwrap_or(u64::MAX)) {
            Ok(chunk) => {
                out.extend_from_slice(&chunk);
                if out.len() > limit {
                    return Ok((out, false));
                }
            }
            Err(StreamError::Closed) => return Ok((out, true)),
            Err(StreamError::LastOperationFailed(_)) => return Err(()),
        }
    }
}

fn read_body(body: IncomingBody, limit: usize) -> Body {
    let Ok(stream) = body.stream() else {
        return Body::Broken;
    };
    let read = read_stream(&stream, limit);
    // The stream is the body's child: it goes first.
    drop(stream);
    match read {
        Err(()) => Body::Broken,
        Ok((bytes, false)) => Body::TooLong(bytes),
        Ok((bytes, true)) => {
            let trailers = IncomingBody::finish(body);
            trailers.subscribe().block();
            match trailers.get() {
                Some(Ok(Ok(t))) => Body::Whole(bytes, t.map(|t| t.entries().into_iter().collect())),
                _ => Body::Broken,
            }
        }
    }
}

fn write_all(body: &OutgoingBody, bytes: &[u8]) -> Result<(), ()> {
    if bytes.is_empty() {
        // Nothing to send, and nothing to flush: a flush can find the exchange over
        // already (the peer answered), which would fail a call that succeeded.
        return Ok(());
    }
    let stream: OutputStream = body.write()?;
    let mut rest = bytes;
    while !rest.is_empty() {
        // As much as the host accepts at once (`blocking-write-and-flush` takes at
        // most 4 KiB per call, which costs a round trip per 4 KiB).
        let permitted = stream.check_write().map_err(|_| ())?;
        if permitted == 0 {
            stream.subscribe().block();
            continue;
        }
        let n = usize::try_from(permitted)
            .unwrap_or(usize::MAX)
            .min(rest.len());
        let (now, later) = rest.split_at(n);
        stream.write(now).map_err(|_| ())?;
        rest = later;
    }
    stream.blocking_flush().map_err(|_| ())
}

fn fields(pairs: &Pairs) -> Fields {
    let fields = Fields::new();
    for (name, value) in pairs {
        // Hop-by-hop headers (`host`, `connection`, ...) are the host's to set: it
        // refuses them, and they are left out.
        let _ = fields.append(name, value);
    }
    fields
}

fn method(name: &str) -> Method {
    match name {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_owned()),
    }
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.clone(),
    }
}

/// Starts a request to `origin` and writes its body.
fn send(
    origin: &Origin,
    method_name: &str,
    path: &str,
    headers: &Pairs,
    body: &[u8],
    first_byte: Duration,
    between_bytes: Duration,
) -> Result<FutureIncomingResponse, ()> {
    let request = OutgoingRequest::new(fields(headers));
    request.set_method(&method(method_name))?;
    request.set_scheme(Some(&match origin.scheme {
        settings::Scheme::Http => Scheme::Http,
        settings::Scheme::Https => Scheme::Https,
    }))?;
    request.set_authority(Some(&origin.authority))?;
    request.set_path_with_query(Some(path))?;
    let outgoing = request.body()?;
    let options = RequestOptions::new();
    let _ = options.set_connect_timeout(Some(nanos(CONNECT_TIMEOUT.min(first_byte))));
    let _ = options.set_first_byte_timeout(Some(nanos(first_byte)));
    let _ = options.set_between_bytes_timeout(Some(nanos(between_bytes)));
    // The request starts before its body is written: the body goes through a
    // bounded channel that only the sending request drains.
    let future = outgoing_handler::handle(request, Some(options)).map_err(|_| ())?;
    write_all(&outgoing, body)?;
    OutgoingBody::finish(outgoing, None).map_err(|_| ())?;
    Ok(future)
}

/// The allowed request to the upstream, and its answer read whole.
fn forward(origin: &Origin, f: &Forward, limit: usize) -> Upstream {
    let Ok(future) = send(
        origin,
        &f.method,
        &f.path,
        &f.headers,
        &f.body,
        UPSTREAM_TIMEOUT,
        UPSTREAM_TIMEOUT,
    ) else {
        return Upstream::Failed;
    };
    future.subscribe().block();
    let Some(Ok(Ok(response))) = future.get() else {
        return Upstream::Failed;
    };
    let status = response.status();
    let headers: Pairs = response.headers().entries();
    let Ok(body) = response.consume() else {
        return Upstream::Failed;
    };
    match read_body(body, limit) {
        Body::Whole(body, trailers) => Upstream::Response {
            status,
            headers,
            body,
            complete: true,
            trailers,
        },
        Body::TooLong(body) => Upstream::Response {
            status,
            headers,
            body,
            complete: false,
            trailers: None,
        },
        // An upstream that broke off mid-answer answered nothing usable.
        Body::Broken => Upstream::Failed,
    }
}

/// The answer to the client. A reset is an error in place of a response: the
/// client gets no answer, never a partial one.
fn answer_client(out: ResponseOutparam, answer: Answer, head: bool) {
    let reply = match answer {
        Answer::Send(reply) => reply,
        Answer::Reset => {
            ResponseOutparam::set(
                out,
                Err(ErrorCode::InternalError(Some(
                    "consentry: stream reset".into(),
                ))),
            );
            return;
        }
    };
    let response = OutgoingResponse::new(fields(&reply.headers));
    if response.set_status_code(reply.status).is_err() {
        ResponseOutparam::set(out, Err(ErrorCode::InternalError(None)));
        return;
    }
    let Ok(body) = response.body() else {
        ResponseOutparam::set(out, Err(ErrorCode::InternalError(None)));
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    if head {
        // A HEAD answer keeps the length of the body it does not carry.
        let _ = OutgoingBody::finish(body, None);
        return;
    }
    if write_all(&body, &reply.body).is_ok() {
        let _ = OutgoingBody::finish(body, None);
    }
    // A body not written whole is dropped unfinished: the host aborts it.
}

// ── wasi:http/incoming-handler ──────────────────────────────────────────────

/// The middleware's state in this instance: the VM and where allowed requests go.
struct Middleware {
    vm: Vm<WasiSystem>,
    upstream: Option<Origin>,
}

thread_local! {
    static MIDDLEWARE: RefCell<Option<Middleware>> = const { RefCell::new(None) };
}

/// Reads the environment once, at the instance's first request.
fn boot() -> Middleware {
    let env: Environment = std::env::vars().collect();
    let sys = WasiSystem::new(env.clone());
    let config = env.get(settings::CONFIG_VAR).map(str::to_owned);
    let upstream = env.get(settings::UPSTREAM_VAR).map(Origin::parse);
    match (config, upstream) {
        (Some(config), Some(Ok(origin))) => {
            let (vm, _) = Vm::start(config.as_bytes(), &env, sys);
            Middleware {
                vm,
                upstream: Some(origin),
            }
        }
        (config, upstream) => {
            let reason = if config.is_none() {
                format!(
                    "{} is not set (the configuration, JSON)",
                    settings::CONFIG_VAR
                )
            } else {
                match upstream {
                    Some(Err(e)) => format!("{}: {e}", settings::UPSTREAM_VAR),
                    _ => format!(
                        "{} is not set (where allowed requests go)",
                        settings::UPSTREAM_VAR
                    ),
                }
            };
            Middleware {
                vm: Vm::refusing(&crate::proxy::setting_error("$", reason), sys),
                upstream: None,
            }
        }
    }
}

fn serve(m: &mut Middleware, request: IncomingRequest, out: ResponseOutparam) {
    let method = method_name(&request.method());
    let path = request.path_with_query().unwrap_or_else(|| "/".into());
    let authority = request.authority().unwrap_or_default();
    let scheme = match request.scheme() {
        Some(Scheme::Https) => "https".to_owned(),
        Some(Scheme::Other(s)) => s,
        Some(Scheme::Http) | None => "http".to_owned(),
    };
    let headers = request.headers().entries();
    let limit = m.vm.buffer_limit();
    let body = match request.consume() {
        Ok(body) => read_body(body, limit),
        Err(()) => Body::Broken,
    };
    drop(request);
    let mut incoming = Incoming::new(&method, &path, &authority, &scheme, headers);
    match body {
        Body::Whole(body, trailers) => {
            incoming.body = body;
            incoming.trailers = trailers;
        }
        Body::TooLong(body) => {
            incoming.body = body;
            incoming.complete = false;
        }
        // The client broke off its request: nothing to decide, nobody to answer.
        Body::Broken => return answer_client(out, Answer::Reset, false),
    }
    let (id, verdict) = m.vm.request(incoming);
    let answer = match verdict {
        Verdict::Answer(answer) => answer,
        Verdict::Forward(f) => {
            let upstream = match &m.upstream {
                Some(origin) => forward(origin, &f, limit),
                None => Upstream::Failed,
            };
            m.vm.respond(id, upstream)
        }
    };
    answer_client(out, answer, method == "HEAD");
    m.vm.close(id);
    // Keys or lists that arrived meanwhile are taken in now, not at the next request.
    m.vm.poll();
}

impl incoming_handler::Guest for Component {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        MIDDLEWARE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut slot) => {
                let m = slot.get_or_insert_with(boot);
                serve(m, request, out);
            }
            // Re-entered (never in wasi:http 0.2): refuse rather than trap.
            Err(_) => answer_client(out, Answer::Reset, false),
        });
    }
}

// ── consentry:policy/engine ─────────────────────────────────────────────────

type SharedVm = Rc<RefCell<Vm<WasiSystem>>>;

struct Engine {
    vm: SharedVm,
}

struct Exchange {
    vm: SharedVm,
    id: u32,
    verdict: wit::Verdict,
    answered: Cell<bool>,
}

fn wit_response(reply: Reply) -> wit::Response {
    wit::Response {
        status: reply.status,
        headers: reply.headers,
        body: reply.body,
    }
}

fn incoming(request: wit::Request, limit: usize) -> Incoming {
    let wit::Request {
        method,
        path,
        authority,
        headers,
        body,
        source_address,
        peer,
    } = request;
    let mut incoming = Incoming::new(&method, &path, &authority, "https", headers);
    incoming.head.connection = Connection {
        source_address,
        mtls: peer.is_some(),
        peer: peer.map(|p| PeerCertificate {
            uri_san: p.uri_san,
            sha256_hex: p.cert_sha256,
            pem: p.certificate,
        }),
    };
    if let Some(mut body) = body {
        if body.len() > limit {
            body.truncate(limit + 1);
            incoming.complete = false;
        }
        incoming.body = body;
    }
    incoming
}

impl wit::Guest for Component {
    type Engine = Engine;
    type Exchange = Exchange;
}

impl wit::GuestEngine for Engine {
    fn load(
        config: String,
        env: Vec<(String, String)>,
    ) -> Result<wit::Engine, Vec<wit::ConfigError>> {
        let env: Environment = env.into_iter().collect();
        let sys = WasiSystem::new(env.clone());
        let (vm, loaded) = Vm::start(config.as_bytes(), &env, sys);
        match loaded {
            Ok(()) => Ok(wit::Engine::new(Engine {
                vm: Rc::new(RefCell::new(vm)),
            })),
            Err(errors) => Err(errors
                .0
                .into_iter()
                .map(|e| wit::ConfigError {
                    location: e.location,
                    reason: e.reason,
                })
                .collect()),
        }
    }

    fn decide(&self, request: wit::Request) -> wit::Exchange {
        let mut vm = self.vm.borrow_mut();
        let limit = vm.buffer_limit();
        let (id, verdict) = vm.request(incoming(request, limit));
        let verdict = match verdict {
            Verdict::Forward(f) => wit::Verdict::Allow(wit::Forward {
                method: f.method,
                path: f.path,
                headers: f.headers,
                body: (!f.body.is_empty()).then_some(f.body),
            }),
            Verdict::Answer(Answer::Send(reply)) => wit::Verdict::Refuse(wit_response(reply)),
            Verdict::Answer(Answer::Reset) => wit::Verdict::Refuse(wit_response(vm.masked())),
        };
        drop(vm);
        wit::Exchange::new(Exchange {
            vm: Rc::clone(&self.vm),
            id,
            verdict,
            answered: Cell::new(false),
        })
    }

    fn explain(&self, request: wit::Request) -> String {
        let mut vm = self.vm.borrow_mut();
        let limit = vm.buffer_limit();
        vm.explain(incoming(request, limit)).to_string()
    }
}

impl wit::GuestExchange for Exchange {
    fn verdict(&self) -> wit::Verdict {
        self.verdict.clone()
    }

    fn respond(&self, upstream: wit::Response) -> wit::Response {
        let mut vm = self.vm.borrow_mut();
        if self.answered.replace(true) {
            return wit_response(vm.masked());
        }
        if let wit::Verdict::Refuse(refusal) = &self.verdict {
            vm.close(self.id);
            return refusal.clone();
        }
        let limit = vm.buffer_limit();
        let wit::Response {
            status,
            headers,
            mut body,
        } = upstream;
        let complete = body.len() <= limit;
        body.truncate(limit + 1);
        let answer = vm.respond(
            self.id,
            Upstream::Response {
                status,
                headers,
                body,
                complete,
                trailers: None,
            },
        );
        vm.close(self.id);
        match answer {
            Answer::Send(reply) => wit_response(reply),
            // Nothing was sent yet: the library's host can still send a problem.
            Answer::Reset => wit_response(vm.masked()),
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Ok(mut vm) = self.vm.try_borrow_mut() {
            vm.close(self.id);
        }
    }
}
