//! One plugin VM, as Envoy runs one per worker thread: a wasmtime instance whose
//! host state lives in its `Store`, with the proxy-wasm imports registered on a
//! `Linker`. Every host call follows Envoy 1.40's observed behaviour, including the
//! unkind parts (a header map is gone once its callback continued; empty values
//! come back as Ok with no data; one CAS counter for all shared data).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use wasmtime::{
    Caller, Engine, Instance, Linker, Memory, Module, Store, StoreLimits, StoreLimitsBuilder,
    TypedFunc,
};

use crate::abi::{self, Action, BufferType, LogLevel, MapType, MetricType, Status};
use crate::message::{Callout, HeaderList, Peer};
use crate::properties;
use crate::world::{LogLine, Metric, World, lock};

/// What the plugin is configured with, as Envoy's filter config carries it.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    pub plugin_config: Vec<u8>,
    pub vm_config: Vec<u8>,
    /// `vm_config.environment_variables`, visible through WASI `environ_get`.
    pub env: Vec<(String, String)>,
    pub plugin_name: String,
    pub root_id: String,
    pub vm_id: String,
    /// Clusters `dispatch_http_call` may name; `None` accepts any name.
    pub clusters: Option<Vec<String>>,
    pub cluster_name: String,
    pub route_name: String,
    /// Host calls made to fail (shared by every VM of the proxy).
    pub faults: Faults,
    /// Host calls made, by name (shared by every VM of the proxy).
    pub calls: HostCalls,
}

/// A host call made to fail, as a host that answers with an unexpected status
/// would: the call does nothing (no out-parameter is written) and returns
/// `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The import's name: `proxy_set_buffer_bytes`, `proxy_log`, WASI's
    /// `random_get`...
    pub call: String,
    /// What it returns: a proxy-wasm status, or a WASI errno for WASI's calls.
    pub status: u32,
    /// Calls that succeed before the first failure.
    pub after: u64,
    /// How many calls fail from then on; `None`: every one.
    pub times: Option<u64>,
}

impl Fault {
    /// `call` fails with `status` from now on, every time.
    pub fn new(call: &str, status: u32) -> Self {
        Self {
            call: call.to_owned(),
            status,
            after: 0,
            times: None,
        }
    }

    /// The first `n` calls succeed.
    pub fn after(mut self, n: u64) -> Self {
        self.after = n;
        self
    }

    /// Only `n` calls fail, then the call works again.
    pub fn times(mut self, n: u64) -> Self {
        self.times = Some(n);
        self
    }
}

/// The faults armed on a proxy, each with the calls it has seen and failed. A
/// handle: clones share the same list.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Mutex<Vec<Armed>>>);

#[derive(Debug)]
struct Armed {
    fault: Fault,
    seen: u64,
    failed: u64,
}

impl Faults {
    /// Arms a fault; calls are counted from now.
    pub fn arm(&self, fault: Fault) {
        lock(&self.0).push(Armed {
            fault,
            seen: 0,
            failed: 0,
        });
    }

    /// Disarms every fault.
    pub fn clear(&self) {
        lock(&self.0).clear();
    }

    /// How many calls of `call` were made to fail so far.
    pub fn failed(&self, call: &str) -> u64 {
        lock(&self.0)
            .iter()
            .filter(|a| a.fault.call == call)
            .map(|a| a.failed)
            .sum()
    }

    /// The status this call of `call` returns instead of working, if it fails.
    fn check(&self, call: &str) -> Option<u32> {
        let mut armed = lock(&self.0);
        let mut status = None;
        for a in armed.iter_mut().filter(|a| a.fault.call == call) {
            let n = a.seen;
            a.seen += 1;
            let f = &a.fault;
            let failing = n >= f.after && f.times.is_none_or(|t| n - f.after < t);
            if failing && status.is_none() {
                a.failed += 1;
                status = Some(f.status);
            }
        }
        status
    }
}

/// Every host call the plugin makes, counted by its import's name: what a
/// request costs in calls into the proxy, pinned by a test so it cannot creep back.
/// A handle: clones share the same counts.
#[derive(Debug, Clone, Default)]
pub struct HostCalls(Arc<Mutex<BTreeMap<&'static str, u64>>>);

impl HostCalls {
    /// The calls made since the last [`take`](Self::take), by name, and starts
    /// counting afresh.
    pub fn take(&self) -> BTreeMap<&'static str, u64> {
        std::mem::take(&mut *lock(&self.0))
    }

    /// The calls made so far, by name.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.0).clone()
    }

    fn note(&self, call: &'static str) {
        *lock(&self.0).entry(call).or_insert(0) += 1;
    }
}

/// Counts the call, then the status an injected fault makes `call` return now,
/// if any. Every import starts with it.
fn injected(c: &Cx<'_>, call: &'static str) -> Option<u32> {
    let settings = &c.data().settings;
    settings.calls.note(call);
    settings.faults.check(call)
}

/// Whether a header map may be touched right now (Envoy's rule: during its own
/// callback, later only if that callback paused, and again in `on_log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Open,
    Gone,
}

/// A local reply the plugin asked for with `proxy_send_local_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReplyCall {
    pub status: u16,
    pub details: String,
    pub body: Vec<u8>,
    pub headers: HeaderList,
}

/// The host's view of one HTTP stream.
#[derive(Debug, Clone)]
pub struct StreamHost {
    pub request_headers: HeaderList,
    pub request_trailers: HeaderList,
    pub response_headers: HeaderList,
    pub response_trailers: HeaderList,
    pub request_map: Access,
    pub response_map: Access,
    pub request_trailers_map: Access,
    pub response_trailers_map: Access,
    /// The body visible to the current body callback.
    pub request_body: Option<Vec<u8>>,
    pub response_body: Option<Vec<u8>>,
    pub local_reply: Option<LocalReplyCall>,
    pub continue_request: bool,
    pub continue_response: bool,
    pub reset: bool,
    pub source_address: String,
    pub destination_address: String,
    pub peer: Option<Peer>,
    pub connection_id: u64,
    pub protocol: &'static str,
    pub request_time_ns: u64,
    pub response_code: Option<u16>,
    pub response_code_details: Option<String>,
}

impl StreamHost {
    pub fn new(request_headers: HeaderList) -> Self {
        Self {
            request_headers,
            request_trailers: Vec::new(),
            response_headers: Vec::new(),
            response_trailers: Vec::new(),
            request_map: Access::Open,
            response_map: Access::Gone,
            request_trailers_map: Access::Gone,
            response_trailers_map: Access::Gone,
            request_body: None,
            response_body: None,
            local_reply: None,
            continue_request: false,
            continue_response: false,
            reset: false,
            source_address: String::new(),
            destination_address: "127.0.0.1:10000".into(),
            peer: None,
            connection_id: 0,
            protocol: "HTTP/1.1",
            request_time_ns: 0,
            response_code: None,
            response_code_details: None,
        }
    }
}

/// An HTTP call dispatched by the plugin and not yet answered.
#[derive(Debug, Clone)]
pub struct PendingCall {
    pub token: u32,
    pub callout: Callout,
}

/// The answer being delivered in `on_http_call_response`.
#[derive(Debug, Clone, Default)]
pub struct CallResponseView {
    pub headers: HeaderList,
    pub body: Vec<u8>,
}

/// Host state of one VM, kept in its wasmtime `Store`.
pub struct HostState {
    pub world: Arc<World>,
    pub vm_name: String,
    pub settings: Arc<PluginSettings>,
    pub root_id: u32,
    /// The context whose callback is running (0 outside callbacks).
    pub current: u32,
    /// `proxy_set_effective_context`; reset to `current` for every callback.
    pub effective: u32,
    pub streams: HashMap<u32, StreamHost>,
    pub dispatched: Vec<PendingCall>,
    pub next_token: u32,
    pub call_response: Option<CallResponseView>,
    pub tick_period: Option<Duration>,
    /// `proxy_set_tick_period_milliseconds` ran since the proxy last looked: as in
    /// Envoy, the timer restarts then, from any context, at the new period.
    pub tick_restarted: bool,
    pub metric_names: Vec<(String, MetricType)>,
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    /// Set by `proxy_send_local_response`: Envoy then stops iteration whatever
    /// the callback returns.
    pub stop_iteration: bool,
    /// The message of the most recent critical log line (the SDK logs panics so).
    pub last_critical: Option<String>,
    /// Envoy's cap on a VM's linear memory (1 GiB): `memory.grow` past it fails.
    pub limits: StoreLimits,
}

/// The most linear memory Envoy lets one VM have (proxy-wasm-cpp-host's
/// `PROXY_WASM_HOST_MAX_WASM_MEMORY_SIZE_BYTES`).
pub const MAX_MEMORY_BYTES: usize = 1024 * 1024 * 1024;

impl HostState {
    fn log(&mut self, level: LogLevel, message: String) {
        if level == LogLevel::Critical {
            self.last_critical = Some(message.clone());
        }
        self.world.log(LogLine {
            level,
            vm: self.vm_name.clone(),
            context_id: self.effective,
            message,
        });
    }

    fn stream(&mut self) -> Option<&mut StreamHost> {
        self.streams.get_mut(&self.effective)
    }
}

/// `proxy_on_http_call_response(context, token, headers, body size, trailers)`.
type CallResponseFn = TypedFunc<(u32, u32, u32, u32, u32), ()>;

/// The exported plugin functions the host calls.
pub struct Exports {
    on_context_create: TypedFunc<(u32, u32), ()>,
    on_vm_start: TypedFunc<(u32, u32), u32>,
    on_configure: TypedFunc<(u32, u32), u32>,
    on_tick: Option<TypedFunc<u32, ()>>,
    on_request_headers: TypedFunc<(u32, u32, u32), u32>,
    on_request_body: TypedFunc<(u32, u32, u32), u32>,
    on_request_trailers: TypedFunc<(u32, u32), u32>,
    on_response_headers: TypedFunc<(u32, u32, u32), u32>,
    on_response_body: TypedFunc<(u32, u32, u32), u32>,
    on_response_trailers: TypedFunc<(u32, u32), u32>,
    on_http_call_response: Option<CallResponseFn>,
    on_log: TypedFunc<u32, ()>,
    on_done: TypedFunc<u32, u32>,
    on_delete: TypedFunc<u32, ()>,
}

/// A trap: the plugin crashed. Envoy answers the request 503 and, under
/// FAIL_CLOSED, never runs this VM again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trap {
    pub callback: &'static str,
    /// The engine's message, with the plugin's last critical log line (the panic
    /// message) in front when there was one.
    pub message: String,
}

impl std::fmt::Display for Trap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "trap in {}: {}", self.callback, self.message)
    }
}

pub struct Vm {
    pub store: Store<HostState>,
    instance: Instance,
    exports: Exports,
    next_context_id: u32,
}

impl Vm {
    /// Instantiates the module and runs its start function (`_initialize`, or
    /// `_start`), as Envoy does; then creates the root context.
    pub fn instantiate(
        engine: &Engine,
        module: &Module,
        world: Arc<World>,
        settings: Arc<PluginSettings>,
        vm_name: &str,
    ) -> Result<Self> {
        let mut linker: Linker<HostState> = Linker::new(engine);
        register_imports(&mut linker).map_err(anyhow::Error::from)?;
        let state = HostState {
            world,
            vm_name: vm_name.to_owned(),
            settings,
            root_id: 1,
            current: 0,
            effective: 0,
            streams: HashMap::new(),
            dispatched: Vec::new(),
            next_token: 0,
            call_response: None,
            tick_period: None,
            tick_restarted: false,
            metric_names: Vec::new(),
            properties: HashMap::new(),
            stop_iteration: false,
            last_critical: None,
            limits: StoreLimitsBuilder::new()
                .memory_size(MAX_MEMORY_BYTES)
                .build(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        let instance = linker
            .instantiate(&mut store, module)
            .map_err(anyhow::Error::from)
            .context("instantiating the plugin (a missing import means the plugin needs a host call Envoy does not offer)")?;
        for start in ["_initialize", "_start"] {
            if let Ok(f) = instance.get_typed_func::<(), ()>(&mut store, start) {
                f.call(&mut store, ())
                    .map_err(anyhow::Error::from)
                    .with_context(|| format!("{start} failed"))?;
                break;
            }
        }
        let exports = Exports::load(&instance, &mut store)?;
        Ok(Self {
            store,
            instance,
            exports,
            next_context_id: 2,
        })
    }

    pub fn root_id(&self) -> u32 {
        self.store.data().root_id
    }

    pub fn state(&self) -> &HostState {
        self.store.data()
    }

    pub fn state_mut(&mut self) -> &mut HostState {
        self.store.data_mut()
    }

    /// Creates the root context, then `on_vm_start` and `on_configure`, in
    /// Envoy's order. Returns whether both said yes.
    pub fn start_root(&mut self) -> Result<bool, Trap> {
        let root = self.root_id();
        let vm_len = self.state().settings.vm_config.len() as u32;
        let cfg_len = self.state().settings.plugin_config.len() as u32;
        self.call("proxy_on_context_create", root, |e, s| {
            e.on_context_create.call(s, (root, 0))
        })?;
        let started = self.call("proxy_on_vm_start", root, |e, s| {
            e.on_vm_start.call(s, (root, vm_len))
        })?;
        if started == 0 {
            return Ok(false);
        }
        let configured = self.call("proxy_on_configure", root, |e, s| {
            e.on_configure.call(s, (root, cfg_len))
        })?;
        Ok(configured != 0)
    }

    pub fn tick(&mut self) -> Result<(), Trap> {
        let root = self.root_id();
        let Some(f) = self.exports.on_tick.clone() else {
            return Ok(());
        };
        self.call("proxy_on_tick", root, |_, s| f.call(s, root))
    }

    /// Creates a stream context and its host view.
    pub fn new_stream(&mut self, host: StreamHost) -> Result<u32, Trap> {
        let id = self.next_context_id;
        self.next_context_id += 1;
        self.state_mut().streams.insert(id, host);
        let root = self.root_id();
        self.call("proxy_on_context_create", id, |e, s| {
            e.on_context_create.call(s, (id, root))
        })?;
        Ok(id)
    }

    pub fn on_request_headers(&mut self, id: u32, n: u32, eos: bool) -> Result<Action, Trap> {
        self.call_action("proxy_on_request_headers", id, |e, s| {
            e.on_request_headers.call(s, (id, n, eos as u32))
        })
    }

    pub fn on_request_body(&mut self, id: u32, size: u32, eos: bool) -> Result<Action, Trap> {
        self.call_action("proxy_on_request_body", id, |e, s| {
            e.on_request_body.call(s, (id, size, eos as u32))
        })
    }

    pub fn on_request_trailers(&mut self, id: u32, n: u32) -> Result<Action, Trap> {
        self.call_action("proxy_on_request_trailers", id, |e, s| {
            e.on_request_trailers.call(s, (id, n))
        })
    }

    pub fn on_response_headers(&mut self, id: u32, n: u32, eos: bool) -> Result<Action, Trap> {
        self.call_action("proxy_on_response_headers", id, |e, s| {
            e.on_response_headers.call(s, (id, n, eos as u32))
        })
    }

    pub fn on_response_body(&mut self, id: u32, size: u32, eos: bool) -> Result<Action, Trap> {
        self.call_action("proxy_on_response_body", id, |e, s| {
            e.on_response_body.call(s, (id, size, eos as u32))
        })
    }

    pub fn on_response_trailers(&mut self, id: u32, n: u32) -> Result<Action, Trap> {
        self.call_action("proxy_on_response_trailers", id, |e, s| {
            e.on_response_trailers.call(s, (id, n))
        })
    }

    /// Delivers a callout's answer. As in Envoy, calls belong to the root context,
    /// so the root id is passed whichever context dispatched the call.
    pub fn on_http_call_response(
        &mut self,
        token: u32,
        view: CallResponseView,
    ) -> Result<(), Trap> {
        let Some(f) = self.exports.on_http_call_response.clone() else {
            return Ok(());
        };
        let root = self.root_id();
        let n = view.headers.len() as u32;
        let size = view.body.len() as u32;
        self.state_mut().call_response = Some(view);
        let r = self.call("proxy_on_http_call_response", root, |_, s| {
            f.call(s, (root, token, n, size, 0))
        });
        self.state_mut().call_response = None;
        r
    }

    /// `on_log`, then `on_done` and `on_delete`; the stream's host view goes last.
    pub fn finish_stream(&mut self, id: u32) -> Result<(), Trap> {
        if let Some(s) = self.state_mut().streams.get_mut(&id) {
            s.request_map = Access::Open;
            s.response_map = Access::Open;
        }
        let r = self
            .call("proxy_on_log", id, |e, s| e.on_log.call(s, id))
            .and_then(|()| self.call("proxy_on_done", id, |e, s| e.on_done.call(s, id)))
            .and_then(|_| self.call("proxy_on_delete", id, |e, s| e.on_delete.call(s, id)));
        self.state_mut().streams.remove(&id);
        r
    }

    fn call_action(
        &mut self,
        name: &'static str,
        id: u32,
        f: impl FnOnce(&Exports, &mut Store<HostState>) -> wasmtime::Result<u32>,
    ) -> Result<Action, Trap> {
        self.state_mut().stop_iteration = false;
        let raw = self.call(name, id, f)?;
        let action = Action::from_i32(raw as i32);
        if std::mem::take(&mut self.state_mut().stop_iteration) {
            return Ok(Action::Pause);
        }
        Ok(action)
    }

    fn call<T>(
        &mut self,
        name: &'static str,
        context: u32,
        f: impl FnOnce(&Exports, &mut Store<HostState>) -> wasmtime::Result<T>,
    ) -> Result<T, Trap> {
        {
            let s = self.store.data_mut();
            s.current = context;
            s.effective = context;
            s.last_critical = None;
        }
        let r = f(&self.exports, &mut self.store);
        let s = self.store.data_mut();
        s.current = 0;
        s.effective = 0;
        r.map_err(|e| {
            let engine = format!("{e:#}");
            let message = match s.last_critical.take() {
                Some(panic) => format!("{panic} ({engine})"),
                None => engine,
            };
            Trap {
                callback: name,
                message,
            }
        })
    }

    /// Bytes of linear memory the VM has now (for leak checks).
    pub fn memory_bytes(&mut self) -> usize {
        match self.memory() {
            Some(m) => m.data_size(&self.store),
            None => 0,
        }
    }

    fn memory(&mut self) -> Option<Memory> {
        self.instance.get_memory(&mut self.store, "memory")
    }
}

impl Exports {
    fn load(instance: &Instance, store: &mut Store<HostState>) -> Result<Self> {
        macro_rules! f {
            ($name:literal) => {
                instance
                    .get_typed_func(&mut *store, $name)
                    .map_err(anyhow::Error::from)
                    .with_context(|| format!("the plugin does not export {}", $name))?
            };
        }
        Ok(Self {
            on_context_create: f!("proxy_on_context_create"),
            on_vm_start: f!("proxy_on_vm_start"),
            on_configure: f!("proxy_on_configure"),
            on_tick: instance.get_typed_func(&mut *store, "proxy_on_tick").ok(),
            on_request_headers: f!("proxy_on_request_headers"),
            on_request_body: f!("proxy_on_request_body"),
            on_request_trailers: f!("proxy_on_request_trailers"),
            on_response_headers: f!("proxy_on_response_headers"),
            on_response_body: f!("proxy_on_response_body"),
            on_response_trailers: f!("proxy_on_response_trailers"),
            on_http_call_response: instance
                .get_typed_func(&mut *store, "proxy_on_http_call_response")
                .ok(),
            on_log: f!("proxy_on_log"),
            on_done: f!("proxy_on_done"),
            on_delete: f!("proxy_on_delete"),
        })
    }
}

// ---------------------------------------------------------------------------
// Guest memory, bounds-checked.

type Cx<'a> = Caller<'a, HostState>;

fn memory(caller: &mut Cx<'_>) -> Option<Memory> {
    caller.get_export("memory").and_then(|e| e.into_memory())
}

fn read(caller: &mut Cx<'_>, ptr: u32, len: u32) -> Result<Vec<u8>, Status> {
    let mem = memory(caller).ok_or(Status::InvalidMemoryAccess)?;
    let start = ptr as usize;
    let end = start
        .checked_add(len as usize)
        .ok_or(Status::InvalidMemoryAccess)?;
    mem.data(&*caller)
        .get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess)
}

fn read_str(caller: &mut Cx<'_>, ptr: u32, len: u32) -> Result<String, Status> {
    read(caller, ptr, len).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn write(caller: &mut Cx<'_>, ptr: u32, bytes: &[u8]) -> Result<(), Status> {
    let mem = memory(caller).ok_or(Status::InvalidMemoryAccess)?;
    let start = ptr as usize;
    let end = start
        .checked_add(bytes.len())
        .ok_or(Status::InvalidMemoryAccess)?;
    mem.data_mut(&mut *caller)
        .get_mut(start..end)
        .ok_or(Status::InvalidMemoryAccess)?
        .copy_from_slice(bytes);
    Ok(())
}

fn write_u32(caller: &mut Cx<'_>, ptr: u32, v: u32) -> Result<(), Status> {
    write(caller, ptr, &v.to_le_bytes())
}

/// Copies `bytes` into memory the plugin allocates and writes (pointer, size) to
/// the return slots. Empty values allocate nothing: pointer 0, size 0.
fn give(
    caller: &mut Cx<'_>,
    bytes: &[u8],
    ret_ptr: u32,
    ret_len: u32,
) -> wasmtime::Result<Result<(), Status>> {
    if bytes.is_empty() {
        return Ok(write_u32(caller, ret_ptr, 0).and_then(|()| write_u32(caller, ret_len, 0)));
    }
    let alloc = caller
        .get_export("proxy_on_memory_allocate")
        .or_else(|| caller.get_export("malloc"))
        .and_then(|e| e.into_func())
        .ok_or_else(|| wasmtime::format_err!("the plugin exports no allocator"))?
        .typed::<u32, u32>(&*caller)?;
    let ptr = alloc.call(&mut *caller, bytes.len() as u32)?;
    if ptr == 0 {
        return Ok(Err(Status::InvalidMemoryAccess));
    }
    Ok(write(caller, ptr, bytes)
        .and_then(|()| write_u32(caller, ret_ptr, ptr))
        .and_then(|()| write_u32(caller, ret_len, bytes.len() as u32)))
}

fn code(r: Result<(), Status>) -> u32 {
    match r {
        Ok(()) => Status::Ok.code(),
        Err(s) => s.code(),
    }
}

// ---------------------------------------------------------------------------
// Header maps.

enum MapRef {
    Missing(Status),
    Map(Vec<(String, Vec<u8>)>),
}

fn map_for_read(state: &mut HostState, t: MapType) -> MapRef {
    if t == MapType::CallResponseHeaders {
        return match &state.call_response {
            Some(v) => MapRef::Map(v.headers.clone()),
            None => MapRef::Missing(Status::BadArgument),
        };
    }
    if t == MapType::CallResponseTrailers {
        return match &state.call_response {
            Some(_) => MapRef::Map(Vec::new()),
            None => MapRef::Missing(Status::BadArgument),
        };
    }
    let Some(s) = state.stream() else {
        return MapRef::Missing(Status::BadArgument);
    };
    match t {
        MapType::RequestHeaders if s.request_map == Access::Open => {
            MapRef::Map(s.request_headers.clone())
        }
        MapType::ResponseHeaders if s.response_map == Access::Open => {
            MapRef::Map(s.response_headers.clone())
        }
        MapType::RequestTrailers if s.request_trailers_map == Access::Open => {
            MapRef::Map(s.request_trailers.clone())
        }
        MapType::ResponseTrailers if s.response_trailers_map == Access::Open => {
            MapRef::Map(s.response_trailers.clone())
        }
        _ => MapRef::Missing(Status::BadArgument),
    }
}

fn map_for_write(state: &mut HostState, t: MapType) -> Result<&mut HeaderList, Status> {
    let s = state.stream().ok_or(Status::BadArgument)?;
    match t {
        MapType::RequestHeaders if s.request_map == Access::Open => Ok(&mut s.request_headers),
        MapType::ResponseHeaders if s.response_map == Access::Open => Ok(&mut s.response_headers),
        MapType::RequestTrailers if s.request_trailers_map == Access::Open => {
            Ok(&mut s.request_trailers)
        }
        MapType::ResponseTrailers if s.response_trailers_map == Access::Open => {
            Ok(&mut s.response_trailers)
        }
        _ => Err(Status::BadArgument),
    }
}

fn lower(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// `host` is Envoy's alias of `:authority`.
fn canonical(name: &str) -> String {
    let n = lower(name);
    if n == "host" { ":authority".into() } else { n }
}

// ---------------------------------------------------------------------------
// Buffers.

fn buffer(state: &mut HostState, t: BufferType) -> Option<Vec<u8>> {
    match t {
        BufferType::VmConfiguration => Some(state.settings.vm_config.clone()),
        BufferType::PluginConfiguration => Some(state.settings.plugin_config.clone()),
        BufferType::CallResponseBody => state.call_response.as_ref().map(|v| v.body.clone()),
        BufferType::RequestBody => state.stream().and_then(|s| s.request_body.clone()),
        BufferType::ResponseBody => state.stream().and_then(|s| s.response_body.clone()),
        _ => None,
    }
}

fn buffer_mut(state: &mut HostState, t: BufferType) -> Option<&mut Vec<u8>> {
    match t {
        BufferType::RequestBody => state.stream().and_then(|s| s.request_body.as_mut()),
        BufferType::ResponseBody => state.stream().and_then(|s| s.response_body.as_mut()),
        _ => None,
    }
}

/// Envoy's `Buffer::copyFrom`: prepend at 0 with length 0, replace from 0 when
/// length covers the buffer, append at or past the end; anything else is refused.
fn splice(buf: &mut Vec<u8>, start: usize, length: usize, data: &[u8]) -> Status {
    if start == 0 {
        if length == 0 {
            let mut v = data.to_vec();
            v.extend_from_slice(buf);
            *buf = v;
            Status::Ok
        } else if length >= buf.len() {
            *buf = data.to_vec();
            Status::Ok
        } else {
            Status::BadArgument
        }
    } else if start >= buf.len() {
        buf.extend_from_slice(data);
        Status::Ok
    } else {
        Status::BadArgument
    }
}

// ---------------------------------------------------------------------------
// Imports.

fn register_imports(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    register_proxy(l)?;
    register_wasi(l)?;
    Ok(())
}

#[allow(clippy::too_many_lines)]
fn register_proxy(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let env = "env";

    l.func_wrap(
        env,
        "proxy_log",
        |mut c: Cx<'_>, level: u32, ptr: u32, len: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_log") {
                return s;
            }
            let Some(level) = LogLevel::from_u32(level) else {
                return Status::BadArgument.code();
            };
            match read_str(&mut c, ptr, len) {
                Ok(msg) => {
                    c.data_mut().log(level, msg);
                    Status::Ok.code()
                }
                Err(s) => s.code(),
            }
        },
    )?;

    l.func_wrap(
        env,
        "proxy_get_log_level",
        |mut c: Cx<'_>, ret: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_get_log_level") {
                return s;
            }
            code(write_u32(&mut c, ret, 0))
        },
    )?;

    l.func_wrap(
        env,
        "proxy_get_current_time_nanoseconds",
        |mut c: Cx<'_>, ret: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_get_current_time_nanoseconds") {
                return s;
            }
            let now = c.data().world.clock.nanos();
            code(write(&mut c, ret, &now.to_le_bytes()))
        },
    )?;

    l.func_wrap(
        env,
        "proxy_set_tick_period_milliseconds",
        |mut c: Cx<'_>, ms: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_set_tick_period_milliseconds") {
                return s;
            }
            let s = c.data_mut();
            s.tick_period = (ms > 0).then(|| Duration::from_millis(u64::from(ms)));
            s.tick_restarted = true;
            Status::Ok.code()
        },
    )?;

    l.func_wrap(
        env,
        "proxy_get_buffer_bytes",
        |mut c: Cx<'_>,
         t: u32,
         start: u32,
         max: u32,
         ret_ptr: u32,
         ret_len: u32|
         -> wasmtime::Result<u32> {
            if let Some(s) = injected(&c, "proxy_get_buffer_bytes") {
                return Ok(s);
            }
            let Some(t) = BufferType::from_u32(t) else {
                return Ok(Status::BadArgument.code());
            };
            let Some(buf) = buffer(c.data_mut(), t) else {
                return Ok(Status::NotFound.code());
            };
            let (start, max) = (start as usize, max as usize);
            if start.checked_add(max).is_none() {
                return Ok(Status::BadArgument.code());
            }
            let end = start.saturating_add(max).min(buf.len());
            let slice = if start >= end {
                &[][..]
            } else {
                &buf[start..end]
            };
            Ok(code(give(&mut c, slice, ret_ptr, ret_len)?))
        },
    )?;

    l.func_wrap(
        env,
        "proxy_get_buffer_status",
        |mut c: Cx<'_>, t: u32, len_ptr: u32, flags_ptr: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_get_buffer_status") {
                return s;
            }
            let Some(t) = BufferType::from_u32(t) else {
                return Status::BadArgument.code();
            };
            let Some(buf) = buffer(c.data_mut(), t) else {
                return Status::NotFound.code();
            };
            code(
                write_u32(&mut c, len_ptr, buf.len() as u32)
                    .and_then(|()| write_u32(&mut c, flags_ptr, 0)),
            )
        },
    )?;

    l.func_wrap(
        env,
        "proxy_set_buffer_bytes",
        |mut c: Cx<'_>, t: u32, start: u32, len: u32, data: u32, size: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_set_buffer_bytes") {
                return s;
            }
            let Some(t) = BufferType::from_u32(t) else {
                return Status::BadArgument.code();
            };
            let data = match read(&mut c, data, size) {
                Ok(d) => d,
                Err(s) => return s.code(),
            };
            match buffer_mut(c.data_mut(), t) {
                Some(buf) => splice(buf, start as usize, len as usize, &data).code(),
                None => Status::NotFound.code(),
            }
        },
    )?;

    l.func_wrap(
        env,
        "proxy_get_header_map_pairs",
        |mut c: Cx<'_>, t: u32, ret_ptr: u32, ret_len: u32| -> wasmtime::Result<u32> {
            if let Some(s) = injected(&c, "proxy_get_header_map_pairs") {
                return Ok(s);
            }
            let Some(t) = MapType::from_u32(t) else {
                return Ok(Status::BadArgument.code());
            };
            // A gone map reads as an empty one here, where get and size refuse.
            let pairs = match map_for_read(c.data_mut(), t) {
                MapRef::Map(m) => m,
                MapRef::Missing(_) => Vec::new(),
            };
            if pairs.is_empty() {
                return Ok(code(give(&mut c, &[], ret_ptr, ret_len)?));
            }
            let bytes = abi::encode_pairs(pairs.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
            Ok(code(give(&mut c, &bytes, ret_ptr, ret_len)?))
        },
    )?;

    l.func_wrap(
        env,
        "proxy_set_header_map_pairs",
        |mut c: Cx<'_>, t: u32, ptr: u32, len: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_set_header_map_pairs") {
                return s;
            }
            let Some(t) = MapType::from_u32(t) else {
                return Status::BadArgument.code();
            };
            let bytes = match read(&mut c, ptr, len) {
                Ok(b) => b,
                Err(s) => return s.code(),
            };
            let pairs: HeaderList = abi::decode_pairs(&bytes)
                .into_iter()
                .map(|(n, v)| (canonical(&n), v))
                .collect();
            match map_for_write(c.data_mut(), t) {
                Ok(m) => {
                    *m = pairs;
                    Status::Ok.code()
                }
                Err(s) => s.code(),
            }
        },
    )?;

    l.func_wrap(
        env,
        "proxy_get_header_map_value",
        |mut c: Cx<'_>,
         t: u32,
         kp: u32,
         kl: u32,
         ret_ptr: u32,
         ret_len: u32|
         -> wasmtime::Result<u32> {
            if let Some(s) = injected(&c, "proxy_get_header_map_value") {
                return Ok(s);
            }
            let Some(t) = MapType::from_u32(t) else {
                return Ok(Status::BadArgument.code());
            };
            let key = match read_str(&mut c, kp, kl) {
                Ok(k) => canonical(&k),
                Err(s) => return Ok(s.code()),
            };
            let map = match map_for_read(c.data_mut(), t) {
                MapRef::Map(m) => m,
                MapRef::Missing(s) => return Ok(s.code()),
            };
            // The first value only, never joined.
            match map.iter().find(|(n, _)| !key.is_empty() && *n == key) {
                Some((_, v)) => Ok(code(give(&mut c, v, ret_ptr, ret_len)?)),
                None => Ok(Status::NotFound.code()),
            }
        },
    )?;

    l.func_wrap(
        env,
        "proxy_get_header_map_size",
        |mut c: Cx<'_>, t: u32, ret: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_get_header_map_size") {
                return s;
            }
            let Some(t) = MapType::from_u32(t) else {
                return Status::BadArgument.code();
            };
            if t == MapType::CallResponseHeaders {
                return Status::BadArgument.code();
            }
            match map_for_read(c.data_mut(), t) {
                // Envoy counts bytes of names and values, not entries.
                MapRef::Map(m) => {
                    let bytes: usize = m.iter().map(|(n, v)| n.len() + v.len()).sum();
                    code(write_u32(&mut c, ret, bytes as u32))
                }
                MapRef::Missing(s) => s.code(),
            }
        },
    )?;

    l.func_wrap(
        env,
        "proxy_add_header_map_value",
        |mut c: Cx<'_>, t: u32, kp: u32, kl: u32, vp: u32, vl: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_add_header_map_value") {
                return s;
            }
            let Some(t) = MapType::from_u32(t) else {
                return Status::BadArgument.code();
            };
            let (key, value) = match (read_str(&mut c, kp, kl), read(&mut c, vp, vl)) {
                (Ok(k), Ok(v)) => (canonical(&k), v),
                _ => return Status::InvalidMemoryAccess.code(),
            };
            match map_for_write(c.data_mut(), t) {
                Ok(m) => {
                    m.push((key, value));
                    Status::Ok.code()
                }
                Err(s) => s.code(),
            }
        },
    )?;

    l.func_wrap(
        env,
        "proxy_replace_header_map_value",
        |mut c: Cx<'_>, t: u32, kp: u32, kl: u32, vp: u32, vl: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_replace_header_map_value") {
                return s;
            }
            let Some(t) = MapType::from_u32(t) else {
                return Status::BadArgument.code();
            };
            let (key, value) = match (read_str(&mut c, kp, kl), read(&mut c, vp, vl)) {
                (Ok(k), Ok(v)) => (canonical(&k), v),
                _ => return Status::InvalidMemoryAccess.code(),
            };
            match map_for_write(c.data_mut(), t) {
                Ok(m) => {
                    // Replaces every occurrence with one value; adds when missing.
                    match m.iter().position(|(n, _)| *n == key) {
                        Some(i) => {
                            m[i].1 = value;
                            let mut k = 0;
                            m.retain(|(n, _)| {
                                let keep = *n != key || k == i;
                                k += 1;
                                keep
                            });
                        }
                        None => m.push((key, value)),
                    }
                    Status::Ok.code()
                }
                Err(s) => s.code(),
            }
        },
    )?;

    l.func_wrap(
        env,
        "proxy_remove_header_map_value",
        |mut c: Cx<'_>, t: u32, kp: u32, kl: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_remove_header_map_value") {
                return s;
            }
            let Some(t) = MapType::from_u32(t) else {
                return Status::BadArgument.code();
            };
            let key = match read_str(&mut c, kp, kl) {
                Ok(k) => canonical(&k),
                Err(s) => return s.code(),
            };
            match map_for_write(c.data_mut(), t) {
                Ok(m) => {
                    m.retain(|(n, _)| *n != key);
                    Status::Ok.code()
                }
                Err(s) => s.code(),
            }
        },
    )?;

    l.func_wrap(
        env,
        "proxy_get_property",
        |mut c: Cx<'_>, pp: u32, pl: u32, ret_ptr: u32, ret_len: u32| -> wasmtime::Result<u32> {
            if let Some(s) = injected(&c, "proxy_get_property") {
                return Ok(s);
            }
            let path = match read(&mut c, pp, pl) {
                Ok(p) => p,
                Err(s) => return Ok(s.code()),
            };
            match properties::get(c.data_mut(), &path) {
                Ok(value) => Ok(code(give(&mut c, &value, ret_ptr, ret_len)?)),
                Err(s) => Ok(s.code()),
            }
        },
    )?;

    l.func_wrap(
        env,
        "proxy_set_property",
        |mut c: Cx<'_>, pp: u32, pl: u32, vp: u32, vl: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_set_property") {
                return s;
            }
            match (read(&mut c, pp, pl), read(&mut c, vp, vl)) {
                (Ok(p), Ok(v)) => {
                    c.data_mut().properties.insert(p, v);
                    Status::Ok.code()
                }
                _ => Status::InvalidMemoryAccess.code(),
            }
        },
    )?;

    l.func_wrap(
        env,
        "proxy_get_shared_data",
        |mut c: Cx<'_>,
         kp: u32,
         kl: u32,
         ret_ptr: u32,
         ret_len: u32,
         cas_ptr: u32|
         -> wasmtime::Result<u32> {
            if let Some(s) = injected(&c, "proxy_get_shared_data") {
                return Ok(s);
            }
            let key = match read_str(&mut c, kp, kl) {
                Ok(k) => k,
                Err(s) => return Ok(s.code()),
            };
            let found = lock(&c.data().world.shared).get(&key);
            match found {
                // Missing: NotFound, and the cas slot is left as it was.
                None => Ok(Status::NotFound.code()),
                Some((value, cas)) => {
                    if let Err(s) = give(&mut c, &value, ret_ptr, ret_len)? {
                        return Ok(s.code());
                    }
                    Ok(code(write_u32(&mut c, cas_ptr, cas)))
                }
            }
        },
    )?;

    l.func_wrap(
        env,
        "proxy_set_shared_data",
        |mut c: Cx<'_>, kp: u32, kl: u32, vp: u32, vl: u32, cas: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_set_shared_data") {
                return s;
            }
            let key = match read_str(&mut c, kp, kl) {
                Ok(k) => k,
                Err(s) => return s.code(),
            };
            let value = if vp == 0 && vl == 0 {
                Vec::new()
            } else {
                match read(&mut c, vp, vl) {
                    Ok(v) => v,
                    Err(s) => return s.code(),
                }
            };
            lock(&c.data().world.shared).set(&key, &value, cas).code()
        },
    )?;

    // Shared queues: accepted and never ready (the plugin does not use them).
    l.func_wrap(
        env,
        "proxy_register_shared_queue",
        |mut c: Cx<'_>, _p: u32, _l: u32, ret: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_register_shared_queue") {
                return s;
            }
            code(write_u32(&mut c, ret, 1))
        },
    )?;
    l.func_wrap(
        env,
        "proxy_resolve_shared_queue",
        |c: Cx<'_>, _a: u32, _b: u32, _d: u32, _e: u32, _ret: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_resolve_shared_queue") {
                return s;
            }
            Status::NotFound.code()
        },
    )?;
    l.func_wrap(
        env,
        "proxy_dequeue_shared_queue",
        |c: Cx<'_>, _t: u32, _p: u32, _l: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_dequeue_shared_queue") {
                return s;
            }
            Status::Empty.code()
        },
    )?;
    l.func_wrap(
        env,
        "proxy_enqueue_shared_queue",
        |c: Cx<'_>, _t: u32, _p: u32, _l: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_enqueue_shared_queue") {
                return s;
            }
            Status::NotFound.code()
        },
    )?;

    l.func_wrap(
        env,
        "proxy_continue_stream",
        |mut c: Cx<'_>, t: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_continue_stream") {
                return s;
            }
            let Some(s) = c.data_mut().stream() else {
                return Status::BadArgument.code();
            };
            match t {
                0 => s.continue_request = true,
                1 => s.continue_response = true,
                _ => return Status::BadArgument.code(),
            }
            Status::Ok.code()
        },
    )?;
    // ABI 0.1 names, still offered by Envoy.
    l.func_wrap(env, "proxy_continue_request", |mut c: Cx<'_>| -> u32 {
        if let Some(s) = injected(&c, "proxy_continue_request") {
            return s;
        }
        match c.data_mut().stream() {
            Some(s) => {
                s.continue_request = true;
                Status::Ok.code()
            }
            None => Status::BadArgument.code(),
        }
    })?;
    l.func_wrap(env, "proxy_continue_response", |mut c: Cx<'_>| -> u32 {
        if let Some(s) = injected(&c, "proxy_continue_response") {
            return s;
        }
        match c.data_mut().stream() {
            Some(s) => {
                s.continue_response = true;
                Status::Ok.code()
            }
            None => Status::BadArgument.code(),
        }
    })?;

    l.func_wrap(env, "proxy_close_stream", |mut c: Cx<'_>, t: u32| -> u32 {
        if let Some(s) = injected(&c, "proxy_close_stream") {
            return s;
        }
        if t > 3 {
            return Status::BadArgument.code();
        }
        match c.data_mut().stream() {
            Some(s) => {
                s.reset = true;
                Status::Ok.code()
            }
            None => Status::BadArgument.code(),
        }
    })?;

    l.func_wrap(
        env,
        "proxy_send_local_response",
        |mut c: Cx<'_>,
         status: u32,
         dp: u32,
         dl: u32,
         bp: u32,
         bl: u32,
         hp: u32,
         hl: u32,
         _grpc: i32|
         -> u32 {
            if let Some(s) = injected(&c, "proxy_send_local_response") {
                return s;
            }
            let (details, body, headers) = match (
                read_str(&mut c, dp, dl),
                read(&mut c, bp, bl),
                read(&mut c, hp, hl),
            ) {
                (Ok(d), Ok(b), Ok(h)) => (d, b, h),
                _ => return Status::InvalidMemoryAccess.code(),
            };
            let headers = abi::decode_pairs(&headers)
                .into_iter()
                .map(|(n, v)| (lower(&n), v))
                .collect();
            let state = c.data_mut();
            let Some(s) = state.stream() else {
                return Status::BadArgument.code();
            };
            s.local_reply = Some(LocalReplyCall {
                status: u16::try_from(status).unwrap_or(500),
                details,
                body,
                headers,
            });
            state.stop_iteration = true;
            Status::Ok.code()
        },
    )?;

    l.func_wrap(env, "proxy_clear_route_cache", |c: Cx<'_>| -> u32 {
        if let Some(s) = injected(&c, "proxy_clear_route_cache") {
            return s;
        }
        Status::Ok.code()
    })?;

    l.func_wrap(
        env,
        "proxy_http_call",
        |mut c: Cx<'_>,
         up: u32,
         ul: u32,
         hp: u32,
         hl: u32,
         bp: u32,
         bl: u32,
         tp: u32,
         tl: u32,
         timeout: u32,
         token_ptr: u32|
         -> u32 {
            if let Some(s) = injected(&c, "proxy_http_call") {
                return s;
            }
            let parts = (
                read_str(&mut c, up, ul),
                read(&mut c, hp, hl),
                read(&mut c, bp, bl),
                read(&mut c, tp, tl),
            );
            let (cluster, headers, body) = match parts {
                (Ok(u), Ok(h), Ok(b), Ok(_)) => (u, abi::decode_pairs(&h), b),
                _ => return Status::InvalidMemoryAccess.code(),
            };
            if write_u32(&mut c, token_ptr, 0).is_err() {
                return Status::InvalidMemoryAccess.code();
            }
            let known = match &c.data().settings.clusters {
                None => !cluster.is_empty(),
                Some(list) => list.contains(&cluster),
            };
            let pseudo = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            };
            let (Some(method), Some(path), Some(authority)) =
                (pseudo(":method"), pseudo(":path"), pseudo(":authority"))
            else {
                return Status::BadArgument.code();
            };
            if !known {
                return Status::BadArgument.code();
            }
            let regular: HeaderList = headers
                .into_iter()
                .filter(|(n, _)| !n.starts_with(':'))
                .collect();
            let state = c.data_mut();
            state.next_token += 4;
            let token = state.next_token;
            state.dispatched.push(PendingCall {
                token,
                callout: Callout {
                    cluster,
                    method,
                    path,
                    authority,
                    headers: regular,
                    body,
                    timeout: Duration::from_millis(u64::from(timeout)),
                },
            });
            code(write_u32(&mut c, token_ptr, token))
        },
    )?;

    l.func_wrap(
        env,
        "proxy_define_metric",
        |mut c: Cx<'_>, t: u32, np: u32, nl: u32, ret: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_define_metric") {
                return s;
            }
            let Some(kind) = MetricType::from_u32(t) else {
                return Status::BadArgument.code();
            };
            let name = match read_str(&mut c, np, nl) {
                Ok(n) => n,
                Err(s) => return s.code(),
            };
            let state = c.data_mut();
            lock(&state.world.metrics)
                .entry(name.clone())
                .or_insert(Metric { kind, value: 0 });
            let id = match state.metric_names.iter().position(|(n, _)| *n == name) {
                Some(i) => i as u32 + 1,
                None => {
                    state.metric_names.push((name, kind));
                    state.metric_names.len() as u32
                }
            };
            code(write_u32(&mut c, ret, id))
        },
    )?;

    l.func_wrap(
        env,
        "proxy_increment_metric",
        |mut c: Cx<'_>, id: u32, offset: i64| -> u32 {
            if let Some(s) = injected(&c, "proxy_increment_metric") {
                return s;
            }
            with_metric(c.data_mut(), id, |m| {
                if m.kind == MetricType::Counter && offset < 0 {
                    return Status::BadArgument;
                }
                m.value = m.value.wrapping_add_signed(offset);
                Status::Ok
            })
        },
    )?;

    l.func_wrap(
        env,
        "proxy_record_metric",
        |mut c: Cx<'_>, id: u32, value: u64| -> u32 {
            if let Some(s) = injected(&c, "proxy_record_metric") {
                return s;
            }
            with_metric(c.data_mut(), id, |m| {
                m.value = value;
                Status::Ok
            })
        },
    )?;

    l.func_wrap(
        env,
        "proxy_get_metric",
        |mut c: Cx<'_>, id: u32, ret: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_get_metric") {
                return s;
            }
            let mut value = 0;
            let s = with_metric(c.data_mut(), id, |m| {
                value = m.value;
                Status::Ok
            });
            if s != Status::Ok.code() {
                return s;
            }
            code(write(&mut c, ret, &value.to_le_bytes()))
        },
    )?;

    l.func_wrap(
        env,
        "proxy_set_effective_context",
        |mut c: Cx<'_>, id: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_set_effective_context") {
                return s;
            }
            let s = c.data_mut();
            if id == s.root_id || s.streams.contains_key(&id) {
                s.effective = id;
                Status::Ok.code()
            } else {
                Status::BadArgument.code()
            }
        },
    )?;

    l.func_wrap(env, "proxy_done", |c: Cx<'_>| -> u32 {
        if let Some(s) = injected(&c, "proxy_done") {
            return s;
        }
        Status::Ok.code()
    })?;

    l.func_wrap(
        env,
        "proxy_call_foreign_function",
        |c: Cx<'_>, _a: u32, _b: u32, _d: u32, _e: u32, _f: u32, _g: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_call_foreign_function") {
                return s;
            }
            Status::NotFound.code()
        },
    )?;

    l.func_wrap(
        env,
        "proxy_get_status",
        |mut c: Cx<'_>, code_ptr: u32, ret_ptr: u32, ret_len: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_get_status") {
                return s;
            }
            code(
                write_u32(&mut c, code_ptr, 0)
                    .and_then(|()| write_u32(&mut c, ret_ptr, 0))
                    .and_then(|()| write_u32(&mut c, ret_len, 0)),
            )
        },
    )?;

    // gRPC: no gRPC services are configured, so every call is refused up front.
    l.func_wrap(
        env,
        "proxy_grpc_call",
        |c: Cx<'_>,
         _a: u32,
         _b: u32,
         _d: u32,
         _e: u32,
         _f: u32,
         _g: u32,
         _h: u32,
         _i: u32,
         _j: u32,
         _k: u32,
         _m: u32,
         _n: u32|
         -> u32 {
            if let Some(s) = injected(&c, "proxy_grpc_call") {
                return s;
            }
            Status::BadArgument.code()
        },
    )?;
    l.func_wrap(
        env,
        "proxy_grpc_stream",
        |c: Cx<'_>,
         _a: u32,
         _b: u32,
         _d: u32,
         _e: u32,
         _f: u32,
         _g: u32,
         _h: u32,
         _i: u32,
         _j: u32|
         -> u32 {
            if let Some(s) = injected(&c, "proxy_grpc_stream") {
                return s;
            }
            Status::BadArgument.code()
        },
    )?;
    l.func_wrap(
        env,
        "proxy_grpc_send",
        |c: Cx<'_>, _a: u32, _b: u32, _d: u32, _e: u32| -> u32 {
            if let Some(s) = injected(&c, "proxy_grpc_send") {
                return s;
            }
            Status::NotFound.code()
        },
    )?;
    l.func_wrap(env, "proxy_grpc_cancel", |c: Cx<'_>, _a: u32| -> u32 {
        if let Some(s) = injected(&c, "proxy_grpc_cancel") {
            return s;
        }
        Status::NotFound.code()
    })?;
    l.func_wrap(env, "proxy_grpc_close", |c: Cx<'_>, _a: u32| -> u32 {
        if let Some(s) = injected(&c, "proxy_grpc_close") {
            return s;
        }
        Status::NotFound.code()
    })?;
    Ok(())
}

fn with_metric(state: &mut HostState, id: u32, f: impl FnOnce(&mut Metric) -> Status) -> u32 {
    let Some((name, _)) = (id as usize)
        .checked_sub(1)
        .and_then(|i| state.metric_names.get(i))
    else {
        return Status::NotFound.code();
    };
    let name = name.clone();
    let mut metrics = lock(&state.world.metrics);
    match metrics.get_mut(&name) {
        Some(m) => f(m).code(),
        None => Status::NotFound.code(),
    }
}

/// The WASI subset Envoy offers, with Envoy's answers: stdout/stderr go to the
/// log, the realtime and monotonic clocks exist (the CPU-time ones do not),
/// randomness comes from the host (at most 64 KiB a call), and the
/// environment is `vm_config.environment_variables`.
fn register_wasi(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let w = "wasi_snapshot_preview1";
    const ESUCCESS: u32 = 0;
    const EBADF: u32 = 8;
    const EFAULT: u32 = 21;
    const ENOSYS: u32 = 52;
    const ENOTSUP: u32 = 58;
    const EINVAL: u32 = 28;
    const ENOENT: u32 = 44;
    const RANDOM_GET_MAX: u32 = 64 * 1024;

    l.func_wrap(
        w,
        "fd_write",
        |mut c: Cx<'_>, fd: u32, iovs: u32, n: u32, written: u32| -> u32 {
            if let Some(s) = injected(&c, "fd_write") {
                return s;
            }
            let level = match fd {
                1 => LogLevel::Info,
                2 => LogLevel::Error,
                _ => return EBADF,
            };
            let mut text = Vec::new();
            for i in 0..n {
                let Ok(iov) = read(&mut c, iovs + i * 8, 8) else {
                    return EFAULT;
                };
                let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                match read(&mut c, ptr, len) {
                    Ok(b) => text.extend_from_slice(&b),
                    Err(_) => return EFAULT,
                }
            }
            let total = text.len() as u32;
            // One trailing newline goes; a write of just "\n" logs an empty line.
            if text.last() == Some(&b'\n') {
                text.pop();
            }
            if total != 0 {
                c.data_mut()
                    .log(level, String::from_utf8_lossy(&text).into_owned());
            }
            if write_u32(&mut c, written, total).is_err() {
                return EFAULT;
            }
            ESUCCESS
        },
    )?;
    l.func_wrap(
        w,
        "fd_read",
        |c: Cx<'_>, _a: u32, _b: u32, _d: u32, _e: u32| -> u32 {
            if let Some(s) = injected(&c, "fd_read") {
                return s;
            }
            ENOSYS
        },
    )?;
    l.func_wrap(
        w,
        "fd_seek",
        |c: Cx<'_>, _a: u32, _b: i64, _d: u32, _e: u32| -> u32 {
            if let Some(s) = injected(&c, "fd_seek") {
                return s;
            }
            ESUCCESS
        },
    )?;
    l.func_wrap(w, "fd_close", |c: Cx<'_>, _a: u32| -> u32 {
        if let Some(s) = injected(&c, "fd_close") {
            return s;
        }
        ESUCCESS
    })?;
    l.func_wrap(
        w,
        "fd_fdstat_get",
        |mut c: Cx<'_>, fd: u32, out: u32| -> u32 {
            if let Some(s) = injected(&c, "fd_fdstat_get") {
                return s;
            }
            if fd != 1 && fd != 2 {
                return EBADF;
            }
            let mut stat = [0u8; 24];
            stat[8] = 64;
            match write(&mut c, out, &stat) {
                Ok(()) => ESUCCESS,
                Err(_) => EFAULT,
            }
        },
    )?;
    l.func_wrap(w, "fd_prestat_get", |c: Cx<'_>, _a: u32, _b: u32| -> u32 {
        if let Some(s) = injected(&c, "fd_prestat_get") {
            return s;
        }
        EBADF
    })?;
    l.func_wrap(
        w,
        "fd_prestat_dir_name",
        |c: Cx<'_>, _a: u32, _b: u32, _d: u32| -> u32 {
            if let Some(s) = injected(&c, "fd_prestat_dir_name") {
                return s;
            }
            ENOSYS
        },
    )?;
    l.func_wrap(
        w,
        "environ_sizes_get",
        |mut c: Cx<'_>, count: u32, size: u32| -> u32 {
            if let Some(s) = injected(&c, "environ_sizes_get") {
                return s;
            }
            let env = c.data().settings.env.clone();
            let bytes: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            match write_u32(&mut c, count, env.len() as u32)
                .and_then(|()| write_u32(&mut c, size, bytes as u32))
            {
                Ok(()) => ESUCCESS,
                Err(_) => EFAULT,
            }
        },
    )?;
    l.func_wrap(
        w,
        "environ_get",
        |mut c: Cx<'_>, mut array: u32, mut buf: u32| -> u32 {
            if let Some(s) = injected(&c, "environ_get") {
                return s;
            }
            let env = c.data().settings.env.clone();
            for (k, v) in env {
                let entry = format!("{k}={v}\0");
                if write_u32(&mut c, array, buf).is_err()
                    || write(&mut c, buf, entry.as_bytes()).is_err()
                {
                    return EFAULT;
                }
                buf += entry.len() as u32;
                array += 4;
            }
            ESUCCESS
        },
    )?;
    l.func_wrap(
        w,
        "args_sizes_get",
        |mut c: Cx<'_>, argc: u32, size: u32| -> u32 {
            if let Some(s) = injected(&c, "args_sizes_get") {
                return s;
            }
            match write_u32(&mut c, argc, 0).and_then(|()| write_u32(&mut c, size, 0)) {
                Ok(()) => ESUCCESS,
                Err(_) => EFAULT,
            }
        },
    )?;
    l.func_wrap(w, "args_get", |c: Cx<'_>, _a: u32, _b: u32| -> u32 {
        if let Some(s) = injected(&c, "args_get") {
            return s;
        }
        ESUCCESS
    })?;
    l.func_wrap(
        w,
        "clock_time_get",
        |mut c: Cx<'_>, id: u32, _precision: u64, out: u32| -> u32 {
            if let Some(s) = injected(&c, "clock_time_get") {
                return s;
            }
            // Envoy has the realtime and the monotonic clock (Rust's
            // `Instant::now` works); the CPU-time clocks get ENOTSUP.
            let now = match id {
                0 => c.data().world.clock.nanos(),
                1 => c.data().world.clock.monotonic_nanos(),
                _ => return ENOTSUP,
            };
            match write(&mut c, out, &now.to_le_bytes()) {
                Ok(()) => ESUCCESS,
                Err(_) => EFAULT,
            }
        },
    )?;
    l.func_wrap(
        w,
        "random_get",
        |mut c: Cx<'_>, ptr: u32, len: u32| -> u32 {
            if let Some(s) = injected(&c, "random_get") {
                return s;
            }
            // Envoy refuses more than 64 KiB at once (as WebCrypto does).
            if len > RANDOM_GET_MAX {
                return EINVAL;
            }
            if len == 0 {
                return ESUCCESS;
            }
            let mut bytes = vec![0u8; len as usize];
            lock(&c.data().world.random).fill(&mut bytes);
            match write(&mut c, ptr, &bytes) {
                Ok(()) => ESUCCESS,
                Err(_) => EFAULT,
            }
        },
    )?;
    l.func_wrap(w, "proc_exit", |mut c: Cx<'_>, _code: u32| {
        c.data_mut()
            .log(LogLevel::Error, "wasi_unstable proc_exit".to_owned());
    })?;
    l.func_wrap(w, "sched_yield", |c: Cx<'_>| -> u32 {
        if let Some(s) = injected(&c, "sched_yield") {
            return s;
        }
        ESUCCESS
    })?;
    l.func_wrap(
        w,
        "poll_oneoff",
        |c: Cx<'_>, _a: u32, _b: u32, _d: u32, _e: u32| -> u32 {
            if let Some(s) = injected(&c, "poll_oneoff") {
                return s;
            }
            ENOSYS
        },
    )?;
    l.func_wrap(
        w,
        "path_open",
        |c: Cx<'_>,
         _a: u32,
         _b: u32,
         _d: u32,
         _e: u32,
         _f: u32,
         _g: i64,
         _h: i64,
         _i: u32,
         _j: u32|
         -> u32 {
            if let Some(s) = injected(&c, "path_open") {
                return s;
            }
            ENOENT
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_fails_the_calls_it_names_after_n_for_m_times() {
        let faults = Faults::default();
        faults.arm(Fault::new("proxy_log", 10).after(1).times(2));
        let seen: Vec<Option<u32>> = (0..5).map(|_| faults.check("proxy_log")).collect();
        assert_eq!(seen, [None, Some(10), Some(10), None, None]);
        assert_eq!(faults.check("proxy_get_property"), None);
        assert_eq!(faults.failed("proxy_log"), 2);
        faults.arm(Fault::new("random_get", 29));
        assert!((0..3).all(|_| faults.check("random_get") == Some(29)));
        faults.clear();
        assert_eq!(faults.check("random_get"), None);
    }

    #[test]
    fn splice_follows_envoys_copy_from() {
        let mut b = b"hello".to_vec();
        assert_eq!(splice(&mut b, 0, 5, b"bye"), Status::Ok);
        assert_eq!(b, b"bye");
        assert_eq!(splice(&mut b, 0, 0, b">"), Status::Ok);
        assert_eq!(b, b">bye");
        assert_eq!(splice(&mut b, 4, 0, b"!"), Status::Ok);
        assert_eq!(b, b">bye!");
        assert_eq!(splice(&mut b, 1, 2, b"x"), Status::BadArgument);
        assert_eq!(splice(&mut b, 0, 2, b"x"), Status::BadArgument);
    }
}
