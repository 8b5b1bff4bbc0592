//! A proxy made of plugin VMs: one per worker (as Envoy runs one per worker
//! thread) plus the main thread's, all sharing shared data, stats and the log.
//! It drives HTTP streams through the plugin with Envoy's filter-chain rules and
//! runs a virtual clock for timers and outgoing calls.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;

use crate::abi::{Action, LogLevel};
use crate::message::{
    Callout, CalloutAnswer, ClientFault, ClientResponse, HeaderList, Request, Response,
    UpstreamRequest,
};
use crate::plugin::Plugin;
use crate::vm::{
    Access, CallResponseView, Fault, Faults, HostCalls, LocalReplyCall, PluginSettings, StreamHost,
    Trap, Vm,
};
use crate::world::{Clock, LogLine, Metric, World, lock};

mod http;

pub use http::{INLINE_REQUEST_HEADERS, INLINE_RESPONSE_HEADERS};
use http::{
    finalize_headers, hcm_request_headers, http_date, local_reply_headers, merge_inline,
    with_length_check,
};

/// Envoy's `failure_policy` for a crashed VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// The VM stays dead: every later request on that worker gets 503.
    FailClosed,
    /// A fresh VM on the next request, at most about once per second; requests
    /// in between get 503.
    FailReload,
}

/// The upstream service behind the proxy in one exchange.
pub trait Upstream {
    fn respond(&mut self, request: &UpstreamRequest) -> Response;
}

impl Upstream for Response {
    fn respond(&mut self, _request: &UpstreamRequest) -> Response {
        self.clone()
    }
}

impl<F: FnMut(&UpstreamRequest) -> Response> Upstream for F {
    fn respond(&mut self, request: &UpstreamRequest) -> Response {
        self(request)
    }
}

/// How callouts are answered: by authority and path, by a function, or not at all.
pub type CalloutHandler = Box<dyn FnMut(&Callout) -> CalloutAnswer + Send>;

/// Why a proxy did not start.
#[derive(Debug)]
pub enum StartError {
    /// `on_vm_start` or `on_configure` returned false: Envoy refuses the
    /// configuration. The plugin's log says why.
    Rejected { logs: Vec<LogLine> },
    /// The plugin trapped while starting.
    Trapped(Trap),
    /// The module could not be instantiated.
    Load(anyhow::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Rejected { logs } => {
                write!(f, "the plugin refused its configuration")?;
                for l in logs.iter().filter(|l| l.level >= LogLevel::Warn) {
                    write!(f, "\n  {}", l.message)?;
                }
                Ok(())
            }
            StartError::Trapped(t) => write!(f, "the plugin crashed while starting: {t}"),
            StartError::Load(e) => write!(f, "the plugin could not be loaded: {e:#}"),
        }
    }
}

impl std::error::Error for StartError {}

pub struct ProxyBuilder {
    plugin: Arc<Plugin>,
    settings: PluginSettings,
    workers: usize,
    main_thread: bool,
    now: SystemTime,
    seed: u64,
    buffer_limit: usize,
    allow_on_headers_stop_iteration: bool,
    failure_policy: FailurePolicy,
    callouts: CalloutHandler,
    stall_after: Duration,
}

impl ProxyBuilder {
    pub fn config(mut self, config: impl Into<Vec<u8>>) -> Self {
        self.settings.plugin_config = config.into();
        self
    }

    pub fn config_json(self, config: &serde_json::Value) -> Self {
        self.config(config.to_string())
    }

    pub fn vm_config(mut self, config: impl Into<Vec<u8>>) -> Self {
        self.settings.vm_config = config.into();
        self
    }

    /// An environment variable of the VM (`vm_config.environment_variables`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.settings.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Whether to run the main thread's two VMs too (Envoy does; default on).
    pub fn main_thread(mut self, on: bool) -> Self {
        self.main_thread = on;
        self
    }

    pub fn now(mut self, t: SystemTime) -> Self {
        self.now = t;
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Envoy's `per_connection_buffer_limit_bytes` (default 1 MiB).
    pub fn buffer_limit(mut self, bytes: usize) -> Self {
        self.buffer_limit = bytes;
        self
    }

    /// The wasm filter's `allow_on_headers_stop_iteration` (default true, as in
    /// every configuration shipped with the plugin).
    pub fn allow_on_headers_stop_iteration(mut self, on: bool) -> Self {
        self.allow_on_headers_stop_iteration = on;
        self
    }

    pub fn failure_policy(mut self, p: FailurePolicy) -> Self {
        self.failure_policy = p;
        self
    }

    /// Only these clusters exist; `dispatch_http_call` to another is refused.
    pub fn clusters<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Self {
        self.settings.clusters = Some(names.into_iter().map(Into::into).collect());
        self
    }

    pub fn callouts(mut self, f: impl FnMut(&Callout) -> CalloutAnswer + Send + 'static) -> Self {
        self.callouts = Box::new(f);
        self
    }

    /// Answers callouts from a table keyed by `authority + path`; others are
    /// unreachable.
    pub fn callout_table(self, table: HashMap<String, Response>) -> Self {
        self.callouts(
            move |c| match table.get(&format!("{}{}", c.authority, c.path)) {
                Some(r) => CalloutAnswer::now(r.clone()),
                None => CalloutAnswer::Unreachable,
            },
        )
    }

    pub fn names(mut self, plugin_name: &str, root_id: &str, vm_id: &str) -> Self {
        self.settings.plugin_name = plugin_name.to_owned();
        self.settings.root_id = root_id.to_owned();
        self.settings.vm_id = vm_id.to_owned();
        self
    }

    /// Makes a host call fail from the start (the VMs' start and configuration
    /// included); see [`Proxy::inject`] to arm one later.
    pub fn fault(self, fault: Fault) -> Self {
        self.settings.faults.arm(fault);
        self
    }

    /// How long a blocked stream may wait for an event before it counts as
    /// stalled (virtual time).
    pub fn stall_after(mut self, d: Duration) -> Self {
        self.stall_after = d;
        self
    }

    pub fn start(self) -> Result<Proxy, StartError> {
        let world = Arc::new(World::new(Clock::at(self.now), self.seed));
        let settings = Arc::new(self.settings);
        let mut proxy = Proxy {
            plugin: self.plugin,
            world,
            settings,
            workers: Vec::new(),
            buffer_limit: self.buffer_limit,
            allow_on_headers_stop_iteration: self.allow_on_headers_stop_iteration,
            failure_policy: self.failure_policy,
            callouts: self.callouts,
            stall_after: self.stall_after,
            timers: Vec::new(),
            callouts_made: Vec::new(),
            next_worker: 0,
            next_connection: 1,
            next_stream: 1,
            finished: HashMap::new(),
        };
        if self.main_thread {
            // Envoy's main thread runs a VM that checks the configuration and is
            // then dropped (its calls go out, their answers go nowhere), and one
            // that lives on and gets ticks.
            let mut check = proxy.boot("main-validate")?;
            if let Some(vm) = check.vm.as_mut() {
                let calls = std::mem::take(&mut vm.state_mut().dispatched);
                proxy
                    .callouts_made
                    .extend(calls.into_iter().map(|c| c.callout));
            }
            let main = proxy.boot("main")?;
            proxy.workers.push(main);
            proxy.collect_dispatched(proxy.workers.len() - 1);
        }
        for i in 0..self.workers {
            let w = proxy.boot(&format!("worker-{i}"))?;
            proxy.workers.push(w);
            proxy.collect_dispatched(proxy.workers.len() - 1);
        }
        proxy.run_idle();
        Ok(proxy)
    }
}

/// One VM slot: a worker thread's VM, replaced on reload.
struct Worker {
    name: String,
    vm: Option<Vm>,
    serves_requests: bool,
    failed_at: Option<SystemTime>,
    last_reload: Option<SystemTime>,
    next_tick: Option<SystemTime>,
    streams: Vec<StreamRun>,
}

/// A callout's answer due at a time.
struct Timer {
    at: SystemTime,
    worker: usize,
    token: u32,
    view: CallResponseView,
}

/// Where a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    NotSent,
    Held,
    Released,
}

struct Body {
    chunks: VecDeque<Vec<u8>>,
    /// HTTP/1.1 delivers end-of-stream as a separate empty callback.
    final_callback_pending: bool,
    /// The last chunk carries end-of-stream (HTTP/2, local replies).
    eos_on_last_chunk: bool,
    trailers: Option<HeaderList>,
    /// The trailers callback ran: the trailers are the plugin's to pass on.
    trailers_delivered: bool,
    buffered: Vec<u8>,
    released: Vec<u8>,
    input_done: bool,
}

impl Body {
    fn new(chunks: Vec<Vec<u8>>, trailers: HeaderList, eos_on_last_chunk: bool) -> Self {
        let has_body = !chunks.is_empty();
        let has_trailers = !trailers.is_empty();
        Self {
            chunks: chunks.into(),
            final_callback_pending: has_body && !eos_on_last_chunk && !has_trailers,
            eos_on_last_chunk,
            trailers: has_trailers.then_some(trailers),
            trailers_delivered: false,
            buffered: Vec::new(),
            released: Vec::new(),
            input_done: !has_body && !has_trailers,
        }
    }

    fn release(&mut self) {
        self.released.append(&mut self.buffered);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Begin,
    Request,
    Response,
    Done,
}

struct StreamRun {
    key: u64,
    context: u32,
    phase: Phase,
    request: Request,
    upstream: Box<dyn Upstream>,
    req_headers: Side,
    req_body: Body,
    resp_headers: Side,
    resp_body: Option<Body>,
    /// The request headers and trailers as they left for the upstream.
    upstream_headers: Option<HeaderList>,
    upstream_trailers: Option<HeaderList>,
    /// The response status and headers, and its trailers, as the client got them.
    client_head: Option<(u16, HeaderList)>,
    client_trailers: Option<HeaderList>,
    upstream_request: Option<UpstreamRequest>,
    /// The response came from a local reply sent on the request path.
    local_reply: bool,
    blocked_since: Option<SystemTime>,
    logs_from: usize,
    callouts_from: usize,
    trace: Vec<String>,
    /// What the client got, and the trap if the plugin crashed; set when done.
    result: Option<(ClientResponse, Option<String>)>,
}

/// Everything observable about one exchange.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub client: ClientResponse,
    /// What the upstream received; `None` when the request never left the proxy.
    pub upstream_request: Option<UpstreamRequest>,
    /// The plugin crashed: the callback and message (the panic text first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trap: Option<String>,
    pub logs: Vec<LogLine>,
    pub callouts_made: Vec<Callout>,
    /// Each callback and what it returned, for diagnosing a failure.
    pub trace: Vec<String>,
    /// What crossed the proxy each way, as it stood when the stream ended.
    #[serde(skip)]
    pub wire: Wire,
    /// The stream's context id in its VM; 0 when the plugin never saw the
    /// stream (the client reset it before its request headers reached the filter).
    #[serde(skip)]
    pub context: u32,
}

/// How the response ended for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEnd {
    /// The whole response arrived (its framing may still be wrong: see
    /// [`ClientFault::LengthMismatch`]).
    Complete,
    /// No complete response: the stream was reset, or the client gave up waiting.
    Reset,
}

/// What has crossed the proxy so far in one stream, each way. Bytes count as
/// received the moment the proxy lets them go, not when the exchange is over, so
/// a test can check after every step what the upstream and the client have seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wire {
    /// The request headers (pseudo-headers first) as the upstream received them;
    /// `None` while the proxy holds them.
    pub upstream_headers: Option<HeaderList>,
    /// Request body bytes the upstream received so far.
    pub upstream_body: Vec<u8>,
    pub upstream_trailers: Option<HeaderList>,
    /// The response status and headers the client received; `None` before.
    pub client_head: Option<(u16, HeaderList)>,
    pub client_body: Vec<u8>,
    pub client_trailers: Option<HeaderList>,
    /// How the response ended; `None` while it runs.
    pub client_end: Option<ClientEnd>,
}

/// A stream started with [`Proxy::begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey(u64);

pub struct Proxy {
    plugin: Arc<Plugin>,
    world: Arc<World>,
    settings: Arc<PluginSettings>,
    workers: Vec<Worker>,
    buffer_limit: usize,
    allow_on_headers_stop_iteration: bool,
    failure_policy: FailurePolicy,
    callouts: CalloutHandler,
    stall_after: Duration,
    timers: Vec<Timer>,
    callouts_made: Vec<Callout>,
    next_worker: usize,
    next_connection: u64,
    next_stream: u64,
    finished: HashMap<u64, Outcome>,
}

const CONNECT_FAILURE: &str = "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
const CALL_TIMEOUT: &str = "upstream request timeout";

impl Proxy {
    pub fn builder(plugin: Arc<Plugin>) -> ProxyBuilder {
        ProxyBuilder {
            plugin,
            settings: PluginSettings {
                plugin_config: Vec::new(),
                vm_config: Vec::new(),
                env: Vec::new(),
                plugin_name: "consentry".into(),
                root_id: "consentry".into(),
                vm_id: "consentry".into(),
                clusters: None,
                cluster_name: "upstream".into(),
                route_name: "default".into(),
                faults: Faults::default(),
                calls: HostCalls::default(),
            },
            workers: 1,
            main_thread: true,
            now: UNIX_EPOCH + Duration::from_secs(1_795_780_800), // 2026-11-27T12:00:00Z
            seed: 0x00c0_2e47,
            buffer_limit: 1024 * 1024,
            allow_on_headers_stop_iteration: true,
            failure_policy: FailurePolicy::FailClosed,
            callouts: Box::new(|_| CalloutAnswer::Unreachable),
            stall_after: Duration::from_secs(60),
        }
    }

    fn boot(&mut self, name: &str) -> Result<Worker, StartError> {
        let vm = Vm::instantiate(
            &self.plugin.engine,
            &self.plugin.module,
            self.world.clone(),
            self.settings.clone(),
            name,
        )
        .map_err(StartError::Load)?;
        let mut worker = Worker {
            name: name.to_owned(),
            vm: Some(vm),
            serves_requests: name.starts_with("worker"),
            failed_at: None,
            last_reload: None,
            next_tick: None,
            streams: Vec::new(),
        };
        let logs_from = lock(&self.world.logs).len();
        let vm = worker
            .vm
            .as_mut()
            .ok_or_else(|| StartError::Load(anyhow::anyhow!("no VM")))?;
        match vm.start_root() {
            Ok(true) => {}
            Ok(false) => {
                let logs = lock(&self.world.logs)[logs_from..].to_vec();
                return Err(StartError::Rejected { logs });
            }
            Err(trap) => return Err(StartError::Trapped(trap)),
        }
        worker.next_tick = vm_tick_period(&worker).map(|p| self.world.clock.now() + p);
        Ok(worker)
    }

    /// Makes a host call fail from now on, in every VM of the proxy (calls are
    /// counted from now for [`Fault::after`]).
    pub fn inject(&self, fault: Fault) {
        self.settings.faults.arm(fault);
    }

    /// Every host call the plugin made on this proxy, by name.
    pub fn host_calls(&self) -> &HostCalls {
        &self.settings.calls
    }

    /// The faults armed on this proxy: to disarm them, or count the failures.
    pub fn faults(&self) -> &Faults {
        &self.settings.faults
    }

    pub fn clock(&self) -> &Clock {
        &self.world.clock
    }

    pub fn now(&self) -> SystemTime {
        self.world.clock.now()
    }

    /// Every log line so far, from every VM.
    pub fn logs(&self) -> Vec<LogLine> {
        lock(&self.world.logs).clone()
    }

    /// The log lines from the `from`th on (a test that reads the log as it grows).
    pub fn logs_since(&self, from: usize) -> Vec<LogLine> {
        lock(&self.world.logs)
            .get(from..)
            .map(<[LogLine]>::to_vec)
            .unwrap_or_default()
    }

    pub fn metrics(&self) -> HashMap<String, Metric> {
        lock(&self.world.metrics).clone()
    }

    /// A counter's value (0 when never defined).
    pub fn counter(&self, name: &str) -> u64 {
        lock(&self.world.metrics).get(name).map_or(0, |m| m.value)
    }

    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        lock(&self.world.shared).get(key)
    }

    /// Every callout made so far.
    pub fn callouts_made(&self) -> &[Callout] {
        &self.callouts_made
    }

    /// Bytes of linear memory of each serving worker's VM.
    pub fn worker_memory(&mut self) -> Vec<usize> {
        self.workers
            .iter_mut()
            .filter(|w| w.serves_requests)
            .map(|w| w.vm.as_mut().map_or(0, Vm::memory_bytes))
            .collect()
    }

    /// Sends a request to the next worker (round robin) and runs it to the end.
    pub fn send(&mut self, request: Request, upstream: impl Upstream + 'static) -> Outcome {
        let key = self.begin(request, upstream);
        self.finish(key)
    }

    /// Starts a request on the next worker without running it.
    pub fn begin(&mut self, request: Request, upstream: impl Upstream + 'static) -> StreamKey {
        let serving: Vec<usize> = (0..self.workers.len())
            .filter(|i| self.workers[*i].serves_requests)
            .collect();
        let w = serving[self.next_worker % serving.len()];
        self.next_worker += 1;
        self.begin_on(w, request, Box::new(upstream))
    }

    /// Starts a request on worker `n` (0-based among request-serving workers).
    pub fn begin_on_worker(
        &mut self,
        n: usize,
        request: Request,
        upstream: impl Upstream + 'static,
    ) -> StreamKey {
        let serving: Vec<usize> = (0..self.workers.len())
            .filter(|i| self.workers[*i].serves_requests)
            .collect();
        let w = serving[n % serving.len()];
        self.begin_on(w, request, Box::new(upstream))
    }

    fn begin_on(&mut self, w: usize, request: Request, upstream: Box<dyn Upstream>) -> StreamKey {
        let key = self.next_stream;
        self.next_stream += 1;
        let req_body = Body::new(
            request.chunks.clone(),
            request.trailers.clone(),
            request.http2,
        );
        let run = StreamRun {
            key,
            context: 0,
            phase: Phase::Begin,
            request,
            upstream,
            req_headers: Side::NotSent,
            req_body,
            resp_headers: Side::NotSent,
            resp_body: None,
            upstream_headers: None,
            upstream_trailers: None,
            client_head: None,
            client_trailers: None,
            upstream_request: None,
            local_reply: false,
            blocked_since: None,
            logs_from: lock(&self.world.logs).len(),
            callouts_from: self.callouts_made.len(),
            trace: Vec::new(),
            result: None,
        };
        self.workers[w].streams.push(run);
        StreamKey(key)
    }

    /// Runs until the stream is over (advancing the virtual clock to timers and
    /// callout answers as needed) and returns what was observed.
    pub fn finish(&mut self, key: StreamKey) -> Outcome {
        loop {
            if let Some(o) = self.finished.remove(&key.0) {
                return o;
            }
            if self.run_idle() {
                continue;
            }
            if !self.fire_next_timer() {
                self.stall_blocked();
            }
        }
    }

    /// The client resets a stream it began (or gives up waiting), runs the proxy
    /// until that stream is over and returns what was observed.
    pub fn reset(&mut self, key: StreamKey) -> Outcome {
        self.reset_stream(key);
        self.finish(key)
    }

    /// The client resets a stream: as in Envoy, the plugin's context gets
    /// `on_log`, `on_done` and `on_delete` wherever the stream was, and nothing
    /// more reaches it; calls it dispatched are answered to no one. What the
    /// plugin already set in motion happens first (a local reply, a resume), and
    /// a response the client already has whole stays complete.
    pub fn reset_stream(&mut self, key: StreamKey) {
        let Some((w, i)) = self.locate(key) else {
            return;
        };
        self.run_pending(w, i);
        if self.workers[w].streams[i].phase != Phase::Done
            && response_complete(&self.workers[w].streams[i])
        {
            self.step(w, i);
        }
        if self.workers[w].streams[i].phase != Phase::Done {
            let context = self.workers[w].streams[i].context;
            let result = match self.workers[w].vm.as_mut() {
                Some(vm) if context != 0 => vm.finish_stream(context),
                _ => Ok(()),
            };
            let run = &mut self.workers[w].streams[i];
            run.trace
                .push("client reset; on_log, on_done, on_delete".into());
            run.result = Some((reset_response(run, "reset by the client"), None));
            run.phase = Phase::Done;
            match result {
                Ok(()) => self.collect_dispatched(w),
                Err(trap) => self.crash(w, trap),
            }
        }
        self.collect_done(w);
    }

    /// Where stream `key` runs: (worker, index), while it is not collected.
    fn locate(&self, key: StreamKey) -> Option<(usize, usize)> {
        self.workers.iter().enumerate().find_map(|(w, worker)| {
            worker
                .streams
                .iter()
                .position(|r| r.key == key.0)
                .map(|i| (w, i))
        })
    }

    // ── Step by step: a test chooses what happens next ────────────────────────

    /// Streams begun and not over yet, in the order they were begun.
    pub fn open_streams(&self) -> Vec<StreamKey> {
        let mut keys: Vec<u64> = self
            .workers
            .iter()
            .flat_map(|w| w.streams.iter())
            .filter(|r| r.phase != Phase::Done)
            .map(|r| r.key)
            .collect();
        keys.sort_unstable();
        keys.into_iter().map(StreamKey).collect()
    }

    /// What has crossed the proxy so far in a stream, each way (the final view
    /// once it is over, until its outcome is taken with [`Proxy::finish`]).
    pub fn wire(&self, key: StreamKey) -> Option<Wire> {
        match self.locate(key) {
            Some((w, i)) => Some(wire_of(&self.workers[w].streams[i])),
            None => self.finished.get(&key.0).map(|o| o.wire.clone()),
        }
    }

    /// The stream's context id in its VM (the `context_id` of what the plugin logs
    /// for it), once its context exists.
    pub fn context(&self, key: StreamKey) -> Option<u32> {
        let id = match self.locate(key) {
            Some((w, i)) => self.workers[w].streams[i].context,
            None => self.finished.get(&key.0)?.context,
        };
        (id != 0).then_some(id)
    }

    /// Each callback of a stream so far and what it returned.
    pub fn trace(&self, key: StreamKey) -> Vec<String> {
        match self.locate(key) {
            Some((w, i)) => self.workers[w].streams[i].trace.clone(),
            None => self
                .finished
                .get(&key.0)
                .map(|o| o.trace.clone())
                .unwrap_or_default(),
        }
    }

    /// The outcome of a stream that is over, without running anything.
    pub fn outcome(&self, key: StreamKey) -> Option<&Outcome> {
        self.finished.get(&key.0)
    }

    /// Moves one stream by one host callback (or one move of the proxy's own:
    /// the upstream answering, a resumed half going on), if it can move now
    /// without time passing. What the plugin set in motion for other streams
    /// meanwhile happens at once, as in Envoy. Returns whether the stream moved.
    pub fn step_stream(&mut self, key: StreamKey) -> bool {
        let Some((w, i)) = self.locate(key) else {
            return false;
        };
        let moved = self.step(w, i);
        self.settle(w);
        self.collect_done(w);
        moved
    }

    /// When the next timer is due: a worker's tick or a callout's answer.
    pub fn next_timer(&self) -> Option<SystemTime> {
        self.next_event_time()
    }

    /// Fires the earliest timer due at or before `until`, moving the clock to
    /// it; what the plugin did there to its streams happens at once. Returns
    /// whether one fired.
    pub fn fire_next_timer_by(&mut self, until: SystemTime) -> bool {
        let Some(t) = self.next_event_time().filter(|t| *t <= until) else {
            return false;
        };
        if t > self.now() {
            self.world.clock.set(t);
        }
        self.fire_one_due()
    }

    /// Fires one due timer: a tick first, else the earliest callout answer.
    fn fire_one_due(&mut self) -> bool {
        let now = self.now();
        let tick = (0..self.workers.len()).find(|w| {
            let k = &self.workers[*w];
            k.vm.is_some() && k.failed_at.is_none() && k.next_tick.is_some_and(|t| t <= now)
        });
        if let Some(w) = tick {
            self.tick_worker(w);
            self.settle(w);
            self.collect_done(w);
            return true;
        }
        let due = self
            .timers
            .iter()
            .enumerate()
            .filter(|(_, t)| t.at <= now)
            .min_by_key(|(_, t)| t.at)
            .map(|(i, _)| i);
        let Some(i) = due else {
            return false;
        };
        let timer = self.timers.remove(i);
        let w = timer.worker;
        let answered = match self.workers.get_mut(w) {
            Some(k) if k.failed_at.is_none() => {
                k.vm.as_mut()
                    .map(|vm| vm.on_http_call_response(timer.token, timer.view))
            }
            _ => None,
        };
        match answered {
            Some(Ok(())) => self.collect_dispatched(w),
            Some(Err(trap)) => self.crash(w, trap),
            None => return true,
        }
        self.settle(w);
        self.collect_done(w);
        true
    }

    /// Applies what the plugin asked of worker `w`'s streams from outside their
    /// own callbacks: a resumed request leaves, a reset happens, a local reply
    /// runs to its end (Envoy sends it before anything else happens).
    fn settle(&mut self, w: usize) {
        for i in 0..self.workers[w].streams.len() {
            self.run_pending(w, i);
        }
    }

    /// Steps stream `i` of worker `w` while the plugin has left something for the
    /// proxy to do (a flag, a local reply under way); bounded, as a local reply
    /// takes a few callbacks.
    fn run_pending(&mut self, w: usize, i: usize) {
        for _ in 0..8 {
            let run = &self.workers[w].streams[i];
            if run.phase == Phase::Done {
                return;
            }
            let flagged = self.workers[w]
                .vm
                .as_ref()
                .and_then(|vm| vm.state().streams.get(&run.context))
                .is_some_and(|s| {
                    s.local_reply.is_some() || s.continue_request || s.continue_response || s.reset
                });
            let replying = run.local_reply && run.phase == Phase::Response;
            if !(flagged || replying) || !self.step(w, i) {
                return;
            }
        }
    }

    /// Moves finished streams of worker `w` to the finished outcomes.
    fn collect_done(&mut self, w: usize) {
        let mut i = 0;
        while i < self.workers[w].streams.len() {
            if self.workers[w].streams[i].phase == Phase::Done {
                let run = self.workers[w].streams.remove(i);
                let (key, outcome) = self.outcome_of(run);
                self.finished.insert(key, outcome);
            } else {
                i += 1;
            }
        }
    }

    /// Runs every stream until none can move without time passing. Returns
    /// whether anything happened.
    pub fn run_idle(&mut self) -> bool {
        let mut any = false;
        loop {
            let mut progressed = false;
            for w in 0..self.workers.len() {
                for i in 0..self.workers[w].streams.len() {
                    if self.step(w, i) {
                        progressed = true;
                    }
                }
                self.collect_done(w);
            }
            progressed |= self.deliver_due_timers();
            if !progressed {
                return any;
            }
            any = true;
        }
    }

    fn outcome_of(&self, run: StreamRun) -> (u64, Outcome) {
        let logs = lock(&self.world.logs);
        let wire = wire_of(&run);
        let context = run.context;
        let (client, trap) = run.result.unwrap_or_else(|| (empty_503(self.now()), None));
        let outcome = Outcome {
            client,
            upstream_request: run.upstream_request,
            trap,
            logs: logs
                .get(run.logs_from..)
                .map(<[LogLine]>::to_vec)
                .unwrap_or_default(),
            callouts_made: self
                .callouts_made
                .get(run.callouts_from..)
                .map(<[Callout]>::to_vec)
                .unwrap_or_default(),
            trace: run.trace,
            wire,
            context,
        };
        (run.key, outcome)
    }

    /// Moves the clock forward, firing ticks and callout answers on the way.
    pub fn advance(&mut self, d: Duration) {
        let target = self.now() + d;
        loop {
            self.run_idle();
            match self.next_event_time() {
                Some(t) if t <= target => {
                    self.world.clock.set(t.max(self.now()));
                    self.deliver_due_timers();
                }
                _ => break,
            }
        }
        self.world.clock.set(target);
        self.run_idle();
    }

    fn next_event_time(&self) -> Option<SystemTime> {
        let ticks = self
            .workers
            .iter()
            .filter(|w| w.vm.is_some() && w.failed_at.is_none())
            .filter_map(|w| w.next_tick);
        let calls = self.timers.iter().map(|t| t.at);
        ticks.chain(calls).min()
    }

    /// Jumps to the next timer or callout answer, if any, and fires it.
    fn fire_next_timer(&mut self) -> bool {
        let Some(t) = self.next_event_time() else {
            return false;
        };
        let oldest_block = self
            .workers
            .iter()
            .flat_map(|w| w.streams.iter())
            .filter_map(|s| s.blocked_since)
            .min();
        if let Some(since) = oldest_block
            && t > since + self.stall_after
        {
            return false;
        }
        if t > self.now() {
            self.world.clock.set(t);
        }
        self.deliver_due_timers()
    }

    fn deliver_due_timers(&mut self) -> bool {
        let now = self.now();
        let mut any = false;
        for w in 0..self.workers.len() {
            let worker = &self.workers[w];
            if worker.failed_at.is_none() && worker.next_tick.is_some_and(|t| t <= now) {
                any = true;
                self.tick_worker(w);
            }
        }
        let mut i = 0;
        while i < self.timers.len() {
            if self.timers[i].at > now {
                i += 1;
                continue;
            }
            let timer = self.timers.remove(i);
            any = true;
            let w = timer.worker;
            let Some(worker) = self.workers.get_mut(w) else {
                continue;
            };
            if worker.failed_at.is_some() {
                continue;
            }
            let Some(vm) = worker.vm.as_mut() else {
                continue;
            };
            match vm.on_http_call_response(timer.token, timer.view) {
                Ok(()) => self.collect_dispatched(w),
                Err(trap) => self.crash(w, trap),
            }
        }
        any
    }

    /// Fires worker `w`'s tick, then schedules the calls it made.
    fn tick_worker(&mut self, w: usize) {
        let now = self.now();
        let worker = &mut self.workers[w];
        let Some(vm) = worker.vm.as_mut() else {
            return;
        };
        let result = vm.tick();
        worker.next_tick = vm_tick_period(worker).map(|p| now + p);
        match result {
            Ok(()) => self.collect_dispatched(w),
            Err(trap) => self.crash(w, trap),
        }
    }

    /// Takes the calls worker `w`'s VM dispatched and schedules their answers, and
    /// restarts its timer if the plugin set the period.
    fn collect_dispatched(&mut self, w: usize) {
        let now = self.now();
        let Some(worker) = self.workers.get_mut(w) else {
            return;
        };
        let Some(vm) = worker.vm.as_mut() else {
            return;
        };
        if std::mem::take(&mut vm.state_mut().tick_restarted) {
            worker.next_tick = vm.state().tick_period.map(|p| now + p);
        }
        let calls = std::mem::take(&mut vm.state_mut().dispatched);
        for call in calls {
            self.callouts_made.push(call.callout.clone());
            let answer = (self.callouts)(&call.callout);
            let timeout = call.callout.timeout;
            let (at, view) = match answer {
                CalloutAnswer::Respond { response, delay } => {
                    if !timeout.is_zero() && delay >= timeout {
                        (now + timeout, synthetic(504, CALL_TIMEOUT))
                    } else {
                        (now + delay, call_view(&response))
                    }
                }
                CalloutAnswer::Unreachable => (now, synthetic(503, CONNECT_FAILURE)),
                CalloutAnswer::NoAnswer => {
                    if timeout.is_zero() {
                        continue;
                    }
                    (now + timeout, synthetic(504, CALL_TIMEOUT))
                }
            };
            self.timers.push(Timer {
                at,
                worker: w,
                token: call.token,
                view,
            });
        }
    }

    /// Nothing can move any more: every client still waiting gives up. As in
    /// Envoy, the plugin's context then gets `on_log`, `on_done` and `on_delete`.
    fn stall_blocked(&mut self) {
        for w in 0..self.workers.len() {
            let mut trap = None;
            let Worker { vm, streams, .. } = &mut self.workers[w];
            for run in streams.iter_mut() {
                if run.phase == Phase::Done {
                    continue;
                }
                let waiting_for = match run.phase {
                    Phase::Request | Phase::Begin => "the request to be continued",
                    _ => "the response to be continued",
                };
                let mut client = if run.client_head.is_some() {
                    client_view(run)
                } else {
                    no_response()
                };
                client.fault = Some(ClientFault::Stalled {
                    waiting_for: waiting_for.to_owned(),
                });
                run.trace.push(format!("stalled waiting for {waiting_for}"));
                run.result = Some((client, None));
                run.phase = Phase::Done;
                if let Some(vm) = vm.as_mut()
                    && run.context != 0
                    && trap.is_none()
                    && let Err(t) = vm.finish_stream(run.context)
                {
                    trap = Some(t);
                }
            }
            if let Some(t) = trap {
                self.crash(w, t);
            }
        }
        self.run_idle();
    }

    /// Marks a worker's VM as crashed and ends its streams as Envoy does.
    fn crash(&mut self, w: usize, trap: Trap) {
        let now = self.now();
        self.world.log(LogLine {
            level: LogLevel::Critical,
            vm: self.workers[w].name.clone(),
            context_id: 0,
            message: trap.to_string(),
        });
        self.workers[w].failed_at = Some(now);
        let message = trap.to_string();
        for run in &mut self.workers[w].streams {
            if run.phase == Phase::Done {
                continue;
            }
            let client = crashed_response(run, now);
            run.trace.push(format!("VM crashed: {message}"));
            run.result = Some((client, Some(message.clone())));
            run.phase = Phase::Done;
        }
    }

    /// Whether worker `w` can run wasm for a new stream; reloads it under
    /// FAIL_RELOAD when the rate limit allows.
    fn worker_ready(&mut self, w: usize) -> bool {
        if self.workers[w].failed_at.is_none() {
            return true;
        }
        if self.failure_policy == FailurePolicy::FailClosed {
            return false;
        }
        let now = self.now();
        let allowed = self.workers[w]
            .last_reload
            .is_none_or(|t| now.duration_since(t).unwrap_or_default() >= Duration::from_secs(1));
        if !allowed {
            return false;
        }
        let name = self.workers[w].name.clone();
        match self.boot(&name) {
            Ok(mut fresh) => {
                fresh.last_reload = Some(now);
                fresh.streams = std::mem::take(&mut self.workers[w].streams);
                self.workers[w] = fresh;
                true
            }
            Err(_) => {
                self.workers[w].last_reload = Some(now);
                false
            }
        }
    }

    /// Advances stream `i` of worker `w` by one callback (or one decision).
    /// Returns whether it moved.
    fn step(&mut self, w: usize, i: usize) -> bool {
        let phase = self.workers[w].streams[i].phase;
        let r = match phase {
            Phase::Done => return false,
            Phase::Begin => self.step_begin(w, i),
            Phase::Request => self.step_request(w, i),
            Phase::Response => self.step_response(w, i),
        };
        match r {
            Ok(moved) => {
                let now = self.now();
                let run = &mut self.workers[w].streams[i];
                if moved {
                    run.blocked_since = None;
                } else if run.blocked_since.is_none() && run.phase != Phase::Done {
                    run.blocked_since = Some(now);
                }
                if moved {
                    self.collect_dispatched(w);
                }
                moved
            }
            Err(trap) => {
                self.crash(w, trap);
                true
            }
        }
    }

    fn step_begin(&mut self, w: usize, i: usize) -> Result<bool, Trap> {
        if !self.worker_ready(w) {
            // No wasm runs: Envoy answers 503 with an empty body.
            let run = &mut self.workers[w].streams[i];
            run.trace
                .push("VM unavailable: 503 without running the plugin".into());
            let client = empty_503(self.world.clock.now());
            run.result = Some((client, None));
            run.phase = Phase::Done;
            return Ok(true);
        }
        let now_ns = self.world.clock.nanos();
        let connection_id = self.next_connection;
        self.next_connection += 1;
        let request_id = lock(&self.world.random).uuid();
        let worker = &mut self.workers[w];
        let run = &mut worker.streams[i];
        let headers = hcm_request_headers(&run.request, &request_id);
        let mut host = StreamHost::new(headers);
        host.source_address = run.request.source_address.clone();
        host.peer = run.request.peer.clone();
        host.connection_id = connection_id;
        host.protocol = if run.request.http2 {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        };
        host.request_time_ns = now_ns;
        let Some(vm) = worker.vm.as_mut() else {
            return Ok(false);
        };
        let id = vm.new_stream(host)?;
        run.context = id;
        let n = count_headers(vm, id);
        let eos = run.req_body.input_done;
        let action = vm.on_request_headers(id, n, eos)?;
        run.trace.push(format!(
            "on_request_headers(n={n}, eos={eos}) -> {action:?}"
        ));
        run.phase = Phase::Request;
        match action {
            Action::Continue => {
                if let Some(s) = vm.state_mut().streams.get_mut(&id) {
                    s.request_map = Access::Gone;
                }
                release_request_headers(vm, run);
            }
            Action::Pause => run.req_headers = Side::Held,
        }
        Ok(true)
    }

    fn step_request(&mut self, w: usize, i: usize) -> Result<bool, Trap> {
        let limit = self.buffer_limit;
        let allow = self.allow_on_headers_stop_iteration;
        let now = self.now();
        let worker = &mut self.workers[w];
        let Some(vm) = worker.vm.as_mut() else {
            return Ok(false);
        };
        let run = &mut worker.streams[i];
        let id = run.context;
        if let Some(reply) = take_local_reply(vm, id) {
            start_local_reply(vm, run, reply, now);
            return Ok(true);
        }
        if take_flag(vm, id, |s| &mut s.reset) {
            // Reset before any response: the client gets nothing.
            run.trace.push("stream reset by the plugin".into());
            let client = reset_response(run, "stream reset");
            return finish_run(vm, run, client).map(|()| true);
        }
        take_request_continue(vm, run);
        let headers_held = run.req_headers == Side::Held;
        let can_deliver = !headers_held || allow;
        let body = &mut run.req_body;
        if can_deliver && (!body.chunks.is_empty() || body.final_callback_pending) {
            let eos;
            if let Some(chunk) = body.chunks.pop_front() {
                body.buffered.extend_from_slice(&chunk);
                eos = body.eos_on_last_chunk && body.chunks.is_empty() && body.trailers.is_none();
            } else {
                body.final_callback_pending = false;
                eos = true;
            }
            if body.buffered.len() > limit {
                run.trace.push(format!(
                    "request body over the buffer limit ({limit} B): 413"
                ));
                let reply = LocalReplyCall {
                    status: 413,
                    details: "request_payload_too_large".into(),
                    body: b"Payload Too Large".to_vec(),
                    headers: Vec::new(),
                };
                start_local_reply(vm, run, reply, now);
                return Ok(true);
            }
            set_body(vm, id, Some(body.buffered.clone()), true);
            let size = body.buffered.len() as u32;
            let action = vm.on_request_body(id, size, eos)?;
            run.trace.push(format!(
                "on_request_body(size={size}, eos={eos}) -> {action:?}"
            ));
            let body = &mut run.req_body;
            body.buffered = held_body(vm, id, true).unwrap_or_default();
            if eos {
                body.input_done = true;
            }
            if action == Action::Continue {
                release_request(vm, run);
            }
            return Ok(true);
        }
        if can_deliver && let Some(trailers) = body.trailers.take() {
            let n = trailers.len() as u32;
            if let Some(s) = vm.state_mut().streams.get_mut(&id) {
                s.request_trailers = lower_all(trailers);
                s.request_trailers_map = Access::Open;
            }
            // The body held so far is the plugin's to read and replace here.
            let held = run.req_body.buffered.clone();
            set_body(vm, id, Some(held), true);
            let action = vm.on_request_trailers(id, n)?;
            run.trace
                .push(format!("on_request_trailers(n={n}) -> {action:?}"));
            run.req_body.input_done = true;
            run.req_body.trailers_delivered = true;
            run.req_body.buffered = held_body(vm, id, true).unwrap_or_default();
            if action == Action::Continue {
                release_request(vm, run);
            }
            return Ok(true);
        }
        let complete = run.req_headers == Side::Released
            && run.req_body.input_done
            && run.req_body.buffered.is_empty()
            && (!run.req_body.trailers_delivered || run.upstream_trailers.is_some());
        let Some(headers) = run.upstream_headers.as_ref().filter(|_| complete) else {
            return Ok(false);
        };
        // The whole request is with the upstream: it answers.
        let upstream_request = upstream_view(
            headers,
            &run.req_body.released,
            run.upstream_trailers.clone().unwrap_or_default(),
        );
        run.trace.push("request sent upstream".into());
        let response = run.upstream.respond(&upstream_request);
        run.upstream_request = Some(upstream_request);
        let Some(s) = vm.state_mut().streams.get_mut(&id) else {
            return Ok(false);
        };
        let mut headers: HeaderList =
            vec![(":status".into(), response.status.to_string().into_bytes())];
        headers.extend(merge_inline(
            lower_all(response.headers.clone()),
            INLINE_RESPONSE_HEADERS,
        ));
        // An HTTP/1.1 upstream sends a body without content-length chunked, and
        // Envoy leaves `transfer-encoding: chunked` in the map the filter sees.
        if !response.chunks.is_empty()
            && !headers
                .iter()
                .any(|(n, _)| n == "content-length" || n == "transfer-encoding")
        {
            headers.push(("transfer-encoding".into(), b"chunked".to_vec()));
        }
        headers.push(("x-envoy-upstream-service-time".into(), b"1".to_vec()));
        s.response_headers = headers;
        run.resp_body = Some(Body::new(
            response.chunks,
            response.trailers,
            run.request.http2,
        ));
        run.phase = Phase::Response;
        Ok(true)
    }

    fn step_response(&mut self, w: usize, i: usize) -> Result<bool, Trap> {
        let limit = self.buffer_limit;
        let allow = self.allow_on_headers_stop_iteration;
        let now = self.now();
        let worker = &mut self.workers[w];
        let Some(vm) = worker.vm.as_mut() else {
            return Ok(false);
        };
        let run = &mut worker.streams[i];
        let id = run.context;
        if let Some(reply) = take_local_reply(vm, id) {
            if run.client_head.is_some() {
                // Envoy: "Prior headers have already been sent": it resets.
                run.trace.push(format!(
                    "local reply {} after the response headers left: reset",
                    reply.status
                ));
                let client = reset_response(run, "local reply after the headers were sent");
                return finish_run(vm, run, client).map(|()| true);
            }
            // From a response callback: the reply replaces status, headers and
            // body, and the filter sees no new response headers.
            run.trace.push(format!(
                "local reply {} from the response path",
                reply.status
            ));
            if let Some(s) = vm.state_mut().streams.get_mut(&id) {
                s.response_code = Some(reply.status);
                s.response_code_details = Some(reply.details.clone());
            }
            let client = client_from_local_reply(&reply, now);
            return finish_run(vm, run, client).map(|()| true);
        }
        if take_flag(vm, id, |s| &mut s.reset) {
            run.trace.push("stream reset by the plugin".into());
            let client = reset_response(run, "stream reset");
            return finish_run(vm, run, client).map(|()| true);
        }
        take_response_continue(vm, run, now);
        let Some(body) = run.resp_body.as_mut() else {
            return Ok(false);
        };
        if run.resp_headers == Side::NotSent {
            let n = count_headers_response(vm, id);
            let eos = body.input_done;
            let from_upstream = !run.local_reply;
            if let Some(s) = vm.state_mut().streams.get_mut(&id) {
                s.response_map = Access::Open;
                if from_upstream {
                    // Envoy's router notes the upstream's status as its headers
                    // arrive, in the same event that hands them to the filter.
                    s.response_code = status_of(&s.response_headers);
                    s.response_code_details = Some("via_upstream".into());
                }
            }
            let action = vm.on_response_headers(id, n, eos)?;
            run.trace.push(format!(
                "on_response_headers(n={n}, eos={eos}) -> {action:?}"
            ));
            if has_local_reply(vm, id) {
                return Ok(true);
            }
            match action {
                Action::Continue => {
                    if let Some(s) = vm.state_mut().streams.get_mut(&id) {
                        s.response_map = Access::Gone;
                    }
                    release_response_headers(vm, run, now);
                }
                Action::Pause => run.resp_headers = Side::Held,
            }
            return Ok(true);
        }
        let headers_held = run.resp_headers == Side::Held;
        let can_deliver = !headers_held || allow;
        if can_deliver && (!body.chunks.is_empty() || body.final_callback_pending) {
            let eos;
            if let Some(chunk) = body.chunks.pop_front() {
                body.buffered.extend_from_slice(&chunk);
                eos = body.eos_on_last_chunk && body.chunks.is_empty() && body.trailers.is_none();
            } else {
                body.final_callback_pending = false;
                eos = true;
            }
            if body.buffered.len() > limit && !run.local_reply {
                run.trace
                    .push(format!("response body over the buffer limit ({limit} B)"));
                if let Some(s) = vm.state_mut().streams.get_mut(&id) {
                    if headers_held {
                        s.response_code = Some(500);
                    }
                    s.response_code_details = Some("response_payload_too_large".into());
                }
                let client = if headers_held {
                    // Envoy answers 500 itself; the filter hears nothing more.
                    client_from_local_reply(
                        &LocalReplyCall {
                            status: 500,
                            details: "response_payload_too_large".into(),
                            body: b"Internal Server Error".to_vec(),
                            headers: Vec::new(),
                        },
                        now,
                    )
                } else {
                    reset_response(run, "response_payload_too_large")
                };
                return finish_run(vm, run, client).map(|()| true);
            }
            set_body(vm, id, Some(body.buffered.clone()), false);
            let size = body.buffered.len() as u32;
            let action = vm.on_response_body(id, size, eos)?;
            run.trace.push(format!(
                "on_response_body(size={size}, eos={eos}) -> {action:?}"
            ));
            let Some(body) = run.resp_body.as_mut() else {
                return Ok(false);
            };
            body.buffered = held_body(vm, id, false).unwrap_or_default();
            if eos {
                body.input_done = true;
            }
            if has_local_reply(vm, id) {
                return Ok(true);
            }
            if action == Action::Continue {
                release_response(vm, run, now);
            }
            return Ok(true);
        }
        if can_deliver && let Some(trailers) = body.trailers.take() {
            let n = trailers.len() as u32;
            if let Some(s) = vm.state_mut().streams.get_mut(&id) {
                s.response_trailers = lower_all(trailers);
                s.response_trailers_map = Access::Open;
            }
            // The body held so far is the plugin's to read and replace here (the
            // last body callback had no end of stream: trailers end the body).
            let held = body.buffered.clone();
            set_body(vm, id, Some(held), false);
            let action = vm.on_response_trailers(id, n)?;
            run.trace
                .push(format!("on_response_trailers(n={n}) -> {action:?}"));
            if has_local_reply(vm, id) {
                return Ok(true);
            }
            let held = held_body(vm, id, false).unwrap_or_default();
            if let Some(b) = run.resp_body.as_mut() {
                b.input_done = true;
                b.trailers_delivered = true;
                b.buffered = held;
            }
            if action == Action::Continue {
                release_response(vm, run, now);
            }
            return Ok(true);
        }
        if !response_complete(run) {
            return Ok(false);
        }
        let client = client_view(run);
        finish_run(vm, run, client).map(|()| true)
    }
}

/// A resumed request (`continue_stream`, from its own callback or another
/// context) goes on with everything held so far. A held body may have been
/// replaced meanwhile (from a call's answer): what the host holds is what goes.
fn take_request_continue(vm: &mut Vm, run: &mut StreamRun) {
    let id = run.context;
    if let Some(held) = held_body(vm, id, true) {
        run.req_body.buffered = held;
    }
    if take_flag(vm, id, |s| &mut s.continue_request) {
        run.trace.push("continue_stream(request)".into());
        release_request(vm, run);
    }
}

fn take_response_continue(vm: &mut Vm, run: &mut StreamRun, now: SystemTime) {
    let id = run.context;
    if let (Some(held), Some(b)) = (held_body(vm, id, false), run.resp_body.as_mut()) {
        b.buffered = held;
    }
    if take_flag(vm, id, |s| &mut s.continue_response) {
        run.trace.push("continue_stream(response)".into());
        release_response(vm, run, now);
    }
}

/// The request's headers leave for the upstream (once): the router adds its
/// timeout header to the filter's map as it takes them, so a filter that paused
/// them sees it later (and in `on_log`), and the upstream gets the map as it is
/// now; edits after this reach nobody.
fn release_request_headers(vm: &mut Vm, run: &mut StreamRun) {
    run.req_headers = Side::Released;
    if run.upstream_headers.is_some() {
        return;
    }
    let Some(s) = vm.state_mut().streams.get_mut(&run.context) else {
        return;
    };
    if !s
        .request_headers
        .iter()
        .any(|(n, _)| n == "x-envoy-expected-rq-timeout-ms")
    {
        s.request_headers
            .push(("x-envoy-expected-rq-timeout-ms".into(), b"15000".to_vec()));
    }
    run.upstream_headers = Some(s.request_headers.clone());
}

/// Everything of the request held so far goes on: headers, body, trailers.
fn release_request(vm: &mut Vm, run: &mut StreamRun) {
    release_request_headers(vm, run);
    run.req_body.release();
    set_body(vm, run.context, None, true);
    if run.req_body.trailers_delivered
        && run.upstream_trailers.is_none()
        && let Some(s) = vm.state_mut().streams.get_mut(&run.context)
    {
        s.request_trailers_map = Access::Gone;
        run.upstream_trailers = Some(s.request_trailers.clone());
    }
}

/// The response's status and headers leave for the client (once), as the
/// filter left them, with Envoy's `date` and `server`.
fn release_response_headers(vm: &Vm, run: &mut StreamRun, now: SystemTime) {
    run.resp_headers = Side::Released;
    if run.client_head.is_some() {
        return;
    }
    let headers = vm
        .state()
        .streams
        .get(&run.context)
        .map(|s| s.response_headers.clone())
        .unwrap_or_default();
    run.client_head = Some(finalize_headers(headers, now));
}

/// Everything of the response held so far goes on: headers, body, trailers.
fn release_response(vm: &mut Vm, run: &mut StreamRun, now: SystemTime) {
    release_response_headers(vm, run, now);
    let Some(b) = run.resp_body.as_mut() else {
        return;
    };
    b.release();
    let delivered = b.trailers_delivered;
    set_body(vm, run.context, None, false);
    if delivered
        && run.client_trailers.is_none()
        && let Some(s) = vm.state_mut().streams.get_mut(&run.context)
    {
        s.response_trailers_map = Access::Gone;
        run.client_trailers = Some(s.response_trailers.clone());
    }
}

/// The client has the whole response: headers, the body to its end, and the
/// trailers if there were any.
fn response_complete(run: &StreamRun) -> bool {
    let Some(b) = run.resp_body.as_ref() else {
        return false;
    };
    run.resp_headers == Side::Released
        && b.input_done
        && b.buffered.is_empty()
        && (!b.trailers_delivered || run.client_trailers.is_some())
}

fn status_of(headers: &HeaderList) -> Option<u16> {
    headers
        .iter()
        .find(|(n, _)| n == ":status")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
}

fn has_local_reply(vm: &Vm, id: u32) -> bool {
    vm.state()
        .streams
        .get(&id)
        .is_some_and(|s| s.local_reply.is_some())
}

/// What has crossed so far: from the stream's snapshots while it runs, from what
/// the client finally got once it is over.
fn wire_of(run: &StreamRun) -> Wire {
    let mut wire = Wire {
        upstream_headers: run.upstream_headers.clone(),
        upstream_body: run.req_body.released.clone(),
        upstream_trailers: run.upstream_trailers.clone(),
        client_head: run.client_head.clone(),
        client_body: run
            .resp_body
            .as_ref()
            .map(|b| b.released.clone())
            .unwrap_or_default(),
        client_trailers: run.client_trailers.clone(),
        client_end: None,
    };
    if let Some((c, _)) = &run.result {
        let received = c.status != 0;
        wire.client_head = received.then(|| (c.status, c.headers.clone()));
        wire.client_body.clone_from(&c.body);
        wire.client_trailers = (received && !c.trailers.is_empty()).then(|| c.trailers.clone());
        wire.client_end = Some(match c.fault {
            Some(ClientFault::Reset { .. } | ClientFault::Stalled { .. }) => ClientEnd::Reset,
            Some(ClientFault::LengthMismatch { .. }) | None => ClientEnd::Complete,
        });
    }
    wire
}

fn vm_tick_period(worker: &Worker) -> Option<Duration> {
    worker.vm.as_ref().and_then(|vm| vm.state().tick_period)
}

fn lower_all(headers: HeaderList) -> HeaderList {
    headers
        .into_iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v))
        .collect()
}

fn upstream_view(headers: &HeaderList, body: &[u8], trailers: HeaderList) -> UpstreamRequest {
    let pseudo = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let regular: HeaderList = headers
        .iter()
        .filter(|(n, _)| !n.starts_with(':'))
        .cloned()
        .collect();
    UpstreamRequest {
        method: pseudo(":method"),
        path: pseudo(":path"),
        authority: pseudo(":authority"),
        headers: regular,
        body: body.to_vec(),
        trailers,
    }
}

fn count_headers(vm: &Vm, id: u32) -> u32 {
    vm.state()
        .streams
        .get(&id)
        .map_or(0, |s| s.request_headers.len() as u32)
}

fn count_headers_response(vm: &Vm, id: u32) -> u32 {
    vm.state()
        .streams
        .get(&id)
        .map_or(0, |s| s.response_headers.len() as u32)
}

fn take_local_reply(vm: &mut Vm, id: u32) -> Option<LocalReplyCall> {
    vm.state_mut()
        .streams
        .get_mut(&id)
        .and_then(|s| s.local_reply.take())
}

fn take_flag(vm: &mut Vm, id: u32, f: impl FnOnce(&mut StreamHost) -> &mut bool) -> bool {
    vm.state_mut()
        .streams
        .get_mut(&id)
        .is_some_and(|s| std::mem::take(f(s)))
}

/// Shows `body` to the next body callback (`Some`), or takes back what the
/// plugin left there (`None`).
/// The body the host holds for the plugin (a held body stays readable and
/// replaceable from any context, as in Envoy, until the stream moves on).
fn held_body(vm: &Vm, id: u32, request: bool) -> Option<Vec<u8>> {
    let s = vm.state().streams.get(&id)?;
    if request {
        s.request_body.clone()
    } else {
        s.response_body.clone()
    }
}

fn set_body(vm: &mut Vm, id: u32, body: Option<Vec<u8>>, request: bool) -> Option<Vec<u8>> {
    let s = vm.state_mut().streams.get_mut(&id)?;
    let slot = if request {
        &mut s.request_body
    } else {
        &mut s.response_body
    };
    match body {
        Some(b) => {
            *slot = Some(b);
            None
        }
        None => slot.take(),
    }
}

/// A local reply sent on the request path: it travels back through the filter's
/// response callbacks, headers first, then the whole body in one callback with
/// end of stream.
fn start_local_reply(vm: &mut Vm, run: &mut StreamRun, reply: LocalReplyCall, _now: SystemTime) {
    run.trace.push(format!(
        "local reply {} from the request path",
        reply.status
    ));
    let id = run.context;
    if let Some(s) = vm.state_mut().streams.get_mut(&id) {
        s.response_headers = local_reply_headers(&reply);
        s.response_code = Some(reply.status);
        s.response_code_details = Some(reply.details.clone());
        s.request_body = None;
    }
    let chunks = if reply.body.is_empty() {
        Vec::new()
    } else {
        vec![reply.body]
    };
    run.resp_body = Some(Body::new(chunks, Vec::new(), true));
    run.resp_headers = Side::NotSent;
    run.local_reply = true;
    run.phase = Phase::Response;
}

/// What the client has of the response: what was released, with its framing
/// checked as an HTTP/1.1 client would.
fn client_view(run: &StreamRun) -> ClientResponse {
    let (status, headers) = run.client_head.clone().unwrap_or_default();
    let body = run
        .resp_body
        .as_ref()
        .map(|b| b.released.clone())
        .unwrap_or_default();
    with_length_check(
        ClientResponse {
            status,
            headers,
            body,
            trailers: run.client_trailers.clone().unwrap_or_default(),
            fault: None,
        },
        run.request.method == "HEAD",
    )
}

fn client_from_local_reply(reply: &LocalReplyCall, now: SystemTime) -> ClientResponse {
    let (status, headers) = finalize_headers(local_reply_headers(reply), now);
    with_length_check(
        ClientResponse {
            status,
            headers,
            body: reply.body.clone(),
            trailers: Vec::new(),
            fault: None,
        },
        false,
    )
}

fn empty_503(now: SystemTime) -> ClientResponse {
    ClientResponse {
        status: 503,
        headers: vec![
            ("date".into(), http_date(now)),
            ("server".into(), b"envoy".to_vec()),
            ("content-length".into(), b"0".to_vec()),
        ],
        body: Vec::new(),
        trailers: Vec::new(),
        fault: None,
    }
}

/// A crash answers 503 with an empty body, or resets a response already begun.
fn crashed_response(run: &StreamRun, now: SystemTime) -> ClientResponse {
    if run.client_head.is_some() {
        reset_response(
            run,
            "the plugin crashed after the response headers were sent",
        )
    } else {
        empty_503(now)
    }
}

/// A reset stream: the client keeps what it received, and no complete answer.
fn reset_response(run: &StreamRun, reason: &str) -> ClientResponse {
    let mut c = if run.client_head.is_some() {
        client_view(run)
    } else {
        no_response()
    };
    c.fault = Some(ClientFault::Reset {
        reason: reason.to_owned(),
    });
    c
}

fn no_response() -> ClientResponse {
    ClientResponse {
        status: 0,
        headers: Vec::new(),
        body: Vec::new(),
        trailers: Vec::new(),
        fault: None,
    }
}

fn finish_run(vm: &mut Vm, run: &mut StreamRun, client: ClientResponse) -> Result<(), Trap> {
    vm.finish_stream(run.context)?;
    run.trace.push("on_log, on_done, on_delete".into());
    run.result = Some((client, None));
    run.phase = Phase::Done;
    Ok(())
}

fn call_view(r: &Response) -> CallResponseView {
    let mut headers: HeaderList = vec![(":status".into(), r.status.to_string().into_bytes())];
    headers.extend(merge_inline(
        lower_all(r.headers.clone()),
        INLINE_RESPONSE_HEADERS,
    ));
    headers.push(("x-envoy-upstream-service-time".into(), b"1".to_vec()));
    CallResponseView {
        headers,
        body: r.body_bytes(),
    }
}

/// Envoy's own answer to a call that failed: text body, three headers.
fn synthetic(status: u16, text: &str) -> CallResponseView {
    CallResponseView {
        headers: vec![
            (":status".into(), status.to_string().into_bytes()),
            ("content-length".into(), text.len().to_string().into_bytes()),
            ("content-type".into(), b"text/plain".to_vec()),
        ],
        body: text.as_bytes().to_vec(),
    }
}
