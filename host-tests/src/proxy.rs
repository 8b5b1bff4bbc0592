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
use crate::vm::{Access, CallResponseView, LocalReplyCall, PluginSettings, StreamHost, Trap, Vm};
use crate::world::{Clock, LogLine, Metric, World, lock};

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

    /// The client resets a stream it began (or gives up waiting): as in Envoy, the
    /// plugin's context gets on_log, on_done and on_delete wherever the stream
    /// was, and nothing more reaches it; calls it dispatched are answered to no one.
    pub fn reset(&mut self, key: StreamKey) -> Outcome {
        let found = self.workers.iter().enumerate().find_map(|(w, worker)| {
            worker
                .streams
                .iter()
                .position(|r| r.key == key.0)
                .map(|i| (w, i))
        });
        if let Some((w, i)) = found
            && self.workers[w].streams[i].phase != Phase::Done
        {
            let context = self.workers[w].streams[i].context;
            let result = match self.workers[w].vm.as_mut() {
                Some(vm) if context != 0 => vm.finish_stream(context),
                _ => Ok(()),
            };
            let run = &mut self.workers[w].streams[i];
            run.trace
                .push("client reset; on_log, on_done, on_delete".into());
            run.result = Some((
                ClientResponse {
                    status: 0,
                    headers: Vec::new(),
                    body: Vec::new(),
                    fault: Some(ClientFault::Reset {
                        reason: "reset by the client".into(),
                    }),
                },
                None,
            ));
            run.phase = Phase::Done;
            match result {
                Ok(()) => self.collect_dispatched(w),
                Err(trap) => self.crash(w, trap),
            }
        }
        self.finish(key)
    }

    /// Runs every stream until none can move without time passing. Returns
    /// whether anything happened.
    pub fn run_idle(&mut self) -> bool {
        let mut any = false;
        loop {
            let mut progressed = false;
            for w in 0..self.workers.len() {
                let mut i = 0;
                while i < self.workers[w].streams.len() {
                    if self.step(w, i) {
                        progressed = true;
                    }
                    let run = &self.workers[w].streams[i];
                    if run.phase == Phase::Done {
                        let run = self.workers[w].streams.remove(i);
                        let outcome = self.outcome_of(run);
                        self.finished.insert(outcome.0, outcome.1);
                    } else {
                        i += 1;
                    }
                }
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

    fn stall_blocked(&mut self) {
        for w in 0..self.workers.len() {
            for run in &mut self.workers[w].streams {
                if run.phase != Phase::Done {
                    let waiting_for = match run.phase {
                        Phase::Request | Phase::Begin => "the request to be continued",
                        _ => "the response to be continued",
                    };
                    let client = ClientResponse {
                        status: 0,
                        headers: Vec::new(),
                        body: Vec::new(),
                        fault: Some(ClientFault::Stalled {
                            waiting_for: waiting_for.to_owned(),
                        }),
                    };
                    run.trace.push(format!("stalled waiting for {waiting_for}"));
                    run.result = Some((client, None));
                    run.phase = Phase::Done;
                }
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
        if let Some(s) = vm.state_mut().streams.get_mut(&id) {
            match action {
                Action::Continue => {
                    s.request_map = Access::Gone;
                    run.req_headers = Side::Released;
                }
                Action::Pause => run.req_headers = Side::Held,
            }
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
        // A held body may have been replaced from another context (a call's answer).
        if let Some(held) = held_body(vm, id, true) {
            run.req_body.buffered = held;
        }
        if take_flag(vm, id, |s| &mut s.continue_request) {
            run.trace.push("continue_stream(request)".into());
            if run.req_headers == Side::Held {
                run.req_headers = Side::Released;
            }
            run.req_body.release();
            set_body(vm, id, None, true);
        }
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
                run.req_headers = Side::Released;
                body.release();
                set_body(vm, id, None, true);
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
            run.req_body.buffered = held_body(vm, id, true).unwrap_or_default();
            if action == Action::Continue {
                if let Some(s) = vm.state_mut().streams.get_mut(&id) {
                    s.request_trailers_map = Access::Gone;
                }
                run.req_headers = Side::Released;
                run.req_body.release();
                set_body(vm, id, None, true);
            }
            return Ok(true);
        }
        let complete = run.req_headers == Side::Released
            && run.req_body.input_done
            && run.req_body.buffered.is_empty();
        if !complete {
            return Ok(false);
        }
        // The request leaves for the upstream.
        let state = vm.state_mut();
        let Some(s) = state.streams.get_mut(&id) else {
            return Ok(false);
        };
        // The router adds its header to the filter's own request map, so a filter
        // that paused the request headers sees it later (and in on_log).
        if !s
            .request_headers
            .iter()
            .any(|(n, _)| n == "x-envoy-expected-rq-timeout-ms")
        {
            s.request_headers
                .push(("x-envoy-expected-rq-timeout-ms".into(), b"15000".to_vec()));
        }
        let upstream_request = upstream_view(&s.request_headers, &run.req_body.released);
        run.trace.push("request sent upstream".into());
        let response = run.upstream.respond(&upstream_request);
        run.upstream_request = Some(upstream_request);
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
        s.response_code = Some(response.status);
        s.response_code_details = Some("via_upstream".into());
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
        if take_flag(vm, id, |s| s.reset_ref()) {
            run.trace.push("stream reset by the plugin".into());
            let client = reset_response(run, vm);
            return finish_run(vm, run, client).map(|()| true);
        }
        if let (Some(held), Some(b)) = (held_body(vm, id, false), run.resp_body.as_mut()) {
            b.buffered = held;
        }
        if take_flag(vm, id, |s| &mut s.continue_response) {
            run.trace.push("continue_stream(response)".into());
            if run.resp_headers == Side::Held {
                run.resp_headers = Side::Released;
            }
            if let Some(b) = run.resp_body.as_mut() {
                b.release();
            }
            set_body(vm, id, None, false);
        }
        let Some(body) = run.resp_body.as_mut() else {
            return Ok(false);
        };
        if run.resp_headers == Side::NotSent {
            let n = count_headers_response(vm, id);
            let eos = body.input_done;
            if let Some(s) = vm.state_mut().streams.get_mut(&id) {
                s.response_map = Access::Open;
            }
            let action = vm.on_response_headers(id, n, eos)?;
            run.trace.push(format!(
                "on_response_headers(n={n}, eos={eos}) -> {action:?}"
            ));
            if vm
                .state()
                .streams
                .get(&id)
                .is_some_and(|s| s.local_reply.is_some())
            {
                return Ok(true);
            }
            match action {
                Action::Continue => {
                    if let Some(s) = vm.state_mut().streams.get_mut(&id) {
                        s.response_map = Access::Gone;
                    }
                    run.resp_headers = Side::Released;
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
                    let mut c = reset_response(run, vm);
                    c.fault = Some(ClientFault::Reset {
                        reason: "response_payload_too_large".into(),
                    });
                    c
                };
                return finish_run(vm, run, client).map(|()| true);
            }
            let Some(body) = run.resp_body.as_mut() else {
                return Ok(false);
            };
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
            if vm
                .state()
                .streams
                .get(&id)
                .is_some_and(|s| s.local_reply.is_some())
            {
                return Ok(true);
            }
            if action == Action::Continue {
                run.resp_headers = Side::Released;
                body.release();
                set_body(vm, id, None, false);
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
            if vm
                .state()
                .streams
                .get(&id)
                .is_some_and(|s| s.local_reply.is_some())
            {
                return Ok(true);
            }
            let held = held_body(vm, id, false).unwrap_or_default();
            if let Some(b) = run.resp_body.as_mut() {
                b.input_done = true;
                b.buffered = held;
                if action == Action::Continue {
                    if let Some(s) = vm.state_mut().streams.get_mut(&id) {
                        s.response_trailers_map = Access::Gone;
                    }
                    run.resp_headers = Side::Released;
                    b.release();
                    set_body(vm, id, None, false);
                }
            }
            return Ok(true);
        }
        let Some(body) = run.resp_body.as_ref() else {
            return Ok(false);
        };
        let complete =
            run.resp_headers == Side::Released && body.input_done && body.buffered.is_empty();
        if !complete {
            return Ok(false);
        }
        let client = client_view(vm, run, &body.released, now);
        finish_run(vm, run, client).map(|()| true)
    }
}

impl StreamHost {
    fn reset_ref(&mut self) -> &mut bool {
        &mut self.reset
    }
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

/// Envoy 1.40's inline request headers, as it lists them at start-up ("request
/// header map"). Its codec joins repeats of these with `,` before any filter sees
/// them; other headers stay separate entries.
pub const INLINE_REQUEST_HEADERS: &[&str] = &[
    ":authority",
    ":method",
    ":path",
    ":protocol",
    ":scheme",
    "accept",
    "accept-encoding",
    "access-control-request-headers",
    "access-control-request-method",
    "access-control-request-private-network",
    "authentication",
    "authorization",
    "cache-control",
    "cdn-loop",
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "expect",
    "grpc-accept-encoding",
    "grpc-timeout",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "keep-alive",
    "origin",
    "pragma",
    "proxy-connection",
    "proxy-status",
    "referer",
    "te",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "via",
    "x-client-trace-id",
    "x-envoy-attempt-count",
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-external-address",
    "x-envoy-force-trace",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-internal",
    "x-envoy-ip-tags",
    "x-envoy-is-timeout-retry",
    "x-envoy-max-retries",
    "x-envoy-original-host",
    "x-envoy-original-path",
    "x-envoy-original-url",
    "x-envoy-retriable-header-names",
    "x-envoy-retriable-status-codes",
    "x-envoy-retry-grpc-on",
    "x-envoy-retry-on",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-stream-duration-ms",
    "x-forwarded-client-cert",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-request-id",
];

/// Envoy 1.40's inline response headers ("response header map" at start-up).
pub const INLINE_RESPONSE_HEADERS: &[&str] = &[
    ":status",
    "access-control-allow-credentials",
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-allow-origin",
    "access-control-allow-private-network",
    "access-control-expose-headers",
    "access-control-max-age",
    "age",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "date",
    "etag",
    "expires",
    "grpc-message",
    "grpc-status",
    "keep-alive",
    "last-modified",
    "location",
    "proxy-connection",
    "proxy-status",
    "server",
    "transfer-encoding",
    "upgrade",
    "vary",
    "via",
    "x-envoy-attempt-count",
    "x-envoy-decorator-operation",
    "x-envoy-degraded",
    "x-envoy-immediate-health-check-fail",
    "x-envoy-ratelimited",
    "x-envoy-upstream-canary",
    "x-envoy-upstream-healthchecked-cluster",
    "x-envoy-upstream-service-time",
    "x-request-id",
];

/// Joins repeated inline headers with `,` into their first occurrence, as Envoy's
/// codec does.
fn merge_inline(headers: HeaderList, inline: &[&str]) -> HeaderList {
    let mut out: HeaderList = Vec::new();
    for (n, v) in headers {
        if inline.contains(&n.as_str())
            && let Some((_, existing)) = out.iter_mut().find(|(m, _)| *m == n)
        {
            existing.push(b',');
            existing.extend_from_slice(&v);
            continue;
        }
        out.push((n, v));
    }
    out
}

/// The request headers as Envoy's connection manager hands them to filters.
fn hcm_request_headers(r: &Request, request_id: &str) -> HeaderList {
    let mut h: HeaderList = Vec::new();
    let mut authority = r.authority.clone();
    let mut extra: HeaderList = Vec::new();
    for (n, v) in &r.headers {
        let n = n.to_ascii_lowercase();
        if n == "host" || n == ":authority" {
            authority = String::from_utf8_lossy(v).into_owned();
        } else {
            extra.push((n, v.clone()));
        }
    }
    if r.http2 {
        h.push((":method".into(), r.method.clone().into_bytes()));
        h.push((":path".into(), r.path.clone().into_bytes()));
        h.push((":scheme".into(), scheme(r).into()));
        h.push((":authority".into(), authority.into_bytes()));
    } else {
        h.push((":authority".into(), authority.into_bytes()));
        h.push((":path".into(), r.path.clone().into_bytes()));
        h.push((":method".into(), r.method.clone().into_bytes()));
        h.push((":scheme".into(), scheme(r).into()));
    }
    let has_id = extra.iter().any(|(n, _)| n == "x-request-id");
    // An HTTP/1.1 client sends `content-length` with its own headers, so Envoy's
    // map has it there, before the headers the connection manager appends.
    if !r.http2 && !r.chunks.is_empty() && !extra.iter().any(|(n, _)| n == "content-length") {
        let len: usize = r.chunks.iter().map(Vec::len).sum();
        extra.push(("content-length".into(), len.to_string().into_bytes()));
    }
    h.extend(merge_inline(extra, INLINE_REQUEST_HEADERS));
    h.push(("x-forwarded-proto".into(), scheme(r).into()));
    if !has_id {
        h.push(("x-request-id".into(), request_id.as_bytes().to_vec()));
    }
    h
}

fn scheme(r: &Request) -> &'static [u8] {
    if r.peer.is_some() { b"https" } else { b"http" }
}

fn upstream_view(headers: &HeaderList, body: &[u8]) -> UpstreamRequest {
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

/// The headers Envoy builds for a local reply: the plugin's, plus
/// `content-length`, plus `content-type: text/plain` for a body without one.
fn local_reply_headers(reply: &LocalReplyCall) -> HeaderList {
    let mut h: HeaderList = merge_inline(reply.headers.clone(), INLINE_RESPONSE_HEADERS);
    h.insert(0, (":status".into(), reply.status.to_string().into_bytes()));
    if reply.body.is_empty() {
        // Without a body Envoy drops any content-length (its codec sends 0).
        h.retain(|(n, _)| n != "content-length");
    } else {
        let len = reply.body.len().to_string().into_bytes();
        match h.iter_mut().find(|(n, _)| n == "content-length") {
            Some((_, v)) => *v = len,
            None => h.push(("content-length".into(), len)),
        }
        if !h.iter().any(|(n, _)| n == "content-type") {
            h.push(("content-type".into(), b"text/plain".to_vec()));
        }
    }
    h
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

/// An IMF-fixdate (`Fri, 27 Nov 2026 08:00:00 GMT`), as Envoy writes `date`.
fn http_date(now: SystemTime) -> Vec<u8> {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
    .into_bytes()
}

/// What the client receives: the response headers as the filter left them,
/// less hop-by-hop headers, with `server: envoy` and a `date`.
fn finalize_headers(mut headers: HeaderList, now: SystemTime) -> (u16, HeaderList) {
    let status = headers
        .iter()
        .find(|(n, _)| n == ":status")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0);
    headers.retain(|(n, _)| {
        !n.starts_with(':')
            && !matches!(
                n.as_str(),
                "connection" | "keep-alive" | "transfer-encoding" | "proxy-connection" | "upgrade"
            )
    });
    // Envoy keeps a `date` it is given and appends its own otherwise; it
    // overwrites `server` where it stands, or appends it after `date`.
    if !headers.iter().any(|(n, _)| n == "date") {
        headers.push(("date".into(), http_date(now)));
    }
    match headers.iter().position(|(n, _)| n == "server") {
        Some(i) => {
            headers[i].1 = b"envoy".to_vec();
            let mut k = 0;
            headers.retain(|(n, _)| {
                let keep = n != "server" || k == i;
                k += 1;
                keep
            });
        }
        None => headers.push(("server".into(), b"envoy".to_vec())),
    }
    (status, headers)
}

/// Compares `content-length` with what was sent, as an HTTP/1.1 client would
/// notice. A response to HEAD, and a 204 or 304, carry no body whatever the
/// length says.
fn with_length_check(mut client: ClientResponse, head: bool) -> ClientResponse {
    if head || client.status == 204 || client.status == 304 {
        return client;
    }
    let declared = client
        .headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
    match declared {
        Some(d) if d != client.body.len() => {
            client.fault = Some(ClientFault::LengthMismatch {
                declared: d,
                sent: client.body.len(),
            });
        }
        Some(_) => {}
        None => {
            if client.body.is_empty() {
                client
                    .headers
                    .push(("content-length".into(), b"0".to_vec()));
            } else {
                client
                    .headers
                    .push(("transfer-encoding".into(), b"chunked".to_vec()));
            }
        }
    }
    client
}

fn client_view(vm: &Vm, run: &StreamRun, body: &[u8], now: SystemTime) -> ClientResponse {
    let id = run.context;
    let headers = vm
        .state()
        .streams
        .get(&id)
        .map(|s| s.response_headers.clone())
        .unwrap_or_default();
    let (status, headers) = finalize_headers(headers, now);
    with_length_check(
        ClientResponse {
            status,
            headers,
            body: body.to_vec(),
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
        fault: None,
    }
}

/// A crash answers 503 with an empty body, or resets a response already begun.
fn crashed_response(run: &StreamRun, now: SystemTime) -> ClientResponse {
    if run.resp_headers == Side::Released {
        ClientResponse {
            status: 0,
            headers: Vec::new(),
            body: run
                .resp_body
                .as_ref()
                .map(|b| b.released.clone())
                .unwrap_or_default(),
            fault: Some(ClientFault::Reset {
                reason: "the plugin crashed after the response headers were sent".into(),
            }),
        }
    } else {
        empty_503(now)
    }
}

fn reset_response(run: &StreamRun, vm: &Vm) -> ClientResponse {
    let mut c = if run.resp_headers == Side::Released {
        let body = run
            .resp_body
            .as_ref()
            .map(|b| b.released.clone())
            .unwrap_or_default();
        client_view(vm, run, &body, SystemTime::UNIX_EPOCH)
    } else {
        ClientResponse {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            fault: None,
        }
    };
    c.fault = Some(ClientFault::Reset {
        reason: "stream reset".into(),
    });
    c
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
