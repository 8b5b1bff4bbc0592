//! `consentry serve`: the Consentry component (`plugin/component`) as an HTTP proxy,
//! run in wasmtime with `wasi:http` (wasmtime-wasi-http), so the same core that
//! runs in Envoy sits in front of a service without a proxy.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use consentry_host::serve::{Log, Options, default_component_path, start};
//! let server = start(
//!     Options {
//!         component: default_component_path(),
//!         config_json: std::fs::read_to_string("policies/example.json")?,
//!         upstream: "http://127.0.0.1:8081".into(),
//!         consent: None,
//!         env: vec![("CONSENTRY_PSEUDONYM_KEYS".into(), consentry_host::fixtures::DEV_PSEUDONYM_KEYS.into())],
//!         workers: 2,
//!         log: Log::Stderr,
//!     },
//!     "127.0.0.1:0",
//! )?;
//! println!("{}", server.base_url());
//! # Ok(()) }
//! ```
//!
//! The component reads its configuration from its environment (documented in
//! `plugin/component/wit/world.wit`): this host sets `CONSENTRY_CONFIG`,
//! `CONSENTRY_UPSTREAM`, and a `CONSENTRY_CLUSTER_<NAME>` for every cluster the
//! configuration names (the consent service's URL), plus the given variables
//! (secrets). The component gets no filesystem and no sockets: its only way out is
//! `wasi:http/outgoing-handler`.
//!
//! Instances are kept and reused, one request at a time each, so their caches
//! (verified tokens, keys, status lists) and their audit chain live on between
//! requests, like an Envoy worker's. Each instance is one worker: its rate limits
//! and audit chain are its own. An instance that traps is dropped, never reused.
//! The component's log lines (audit records among them) go out whole, one line at
//! a time, so records of instances running at once never interleave.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use hyper::server::conn::http1;
use tokio::io::AsyncWrite;
use tokio::sync::oneshot;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use component_settings::{CONFIG_VAR, Origin, UPSTREAM_VAR, cluster_var};

/// The component's own names for its environment, compiled from its source rather
/// than by linking its crate: that crate is a `cdylib`, whose native `rlib` gets a
/// file name without a hash, which another build of it overwrites under the doctests.
#[path = "../../plugin/component/src/settings.rs"]
#[allow(dead_code, reason = "the host uses the names, not the whole module")]
mod component_settings;

use crate::plugin::workspace_root;

/// How the component is built (the tests and the CLI say it when it is missing).
pub const COMPONENT_BUILD_COMMAND: &str = "rustup target add wasm32-wasip2 && (cd plugin/component && cargo component build --release --target wasm32-wasip2)";

/// Idle instances kept for reuse; more requests at once get fresh instances.
const MAX_IDLE: usize = 64;

/// The workspace's release build of the component, or `CONSENTRY_COMPONENT` when set.
pub fn default_component_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CONSENTRY_COMPONENT") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target
        .join("wasm32-wasip2")
        .join("release")
        .join("consentry_component.wasm")
}

/// Where the component's log lines go.
#[derive(Clone)]
pub enum Log {
    /// This process's stderr, a whole line at a time.
    Stderr,
    /// Kept in memory (tests read the audit records here).
    Lines(Arc<Mutex<Vec<String>>>),
}

impl Log {
    fn line(&self, line: &[u8]) {
        match self {
            Log::Stderr => {
                let mut text = line.to_vec();
                text.push(b'\n');
                let _ = std::io::stderr().lock().write_all(&text);
            }
            Log::Lines(lines) => {
                if let Ok(mut lines) = lines.lock() {
                    lines.push(String::from_utf8_lossy(line).into_owned());
                }
            }
        }
    }
}

/// What `serve` runs.
#[derive(Clone)]
pub struct Options {
    /// The component (`consentry_component.wasm`).
    pub component: PathBuf,
    /// The configuration, JSON.
    pub config_json: String,
    /// Where allowed requests go: `http://host:port`.
    pub upstream: String,
    /// Where the configuration's clusters (issuer keys, status lists, audit
    /// collector) are; the upstream when `None`.
    pub consent: Option<String>,
    /// More of the component's environment: secrets, and a cluster's own URL
    /// (`CONSENTRY_CLUSTER_<NAME>`, which wins over `consent`). The configuration and
    /// the upstream always come from the fields above.
    pub env: Vec<(String, String)>,
    /// Threads serving requests.
    pub workers: usize,
    pub log: Log,
}

/// The component's environment for `options`.
pub fn component_env(options: &Options) -> Result<Vec<(String, String)>> {
    Origin::parse(&options.upstream).map_err(|e| anyhow!("--upstream: {e}"))?;
    let consent = options.consent.as_deref().unwrap_or(&options.upstream);
    Origin::parse(consent).map_err(|e| anyhow!("--consent: {e}"))?;
    let config: serde_json::Value =
        serde_json::from_str(&options.config_json).context("the configuration is not JSON")?;
    let mut clusters = Vec::new();
    collect_clusters(&config, &mut clusters);
    // The given variables (secrets, a cluster's own URL), then the configuration and
    // the upstream given here, which always win (a stale CONSENTRY_CONFIG in the
    // shell must not replace the file named on the command line), then the consent
    // service for every cluster the variables did not place.
    let mut env: Vec<(String, String)> = Vec::new();
    for (k, v) in &options.env {
        if k != CONFIG_VAR && k != UPSTREAM_VAR {
            env.retain(|(name, _)| name != k);
            env.push((k.clone(), v.clone()));
        }
    }
    env.push((CONFIG_VAR.to_owned(), options.config_json.clone()));
    env.push((UPSTREAM_VAR.to_owned(), options.upstream.clone()));
    for c in clusters {
        let var = cluster_var(&c);
        if !env.iter().any(|(k, _)| *k == var) {
            env.push((var, consent.to_owned()));
        }
    }
    Ok(env)
}

/// Every `cluster` member of the configuration, wherever it sits.
fn collect_clusters(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("cluster", serde_json::Value::String(c)) => out.push(c.clone()),
                    _ => collect_clusters(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_clusters(v, out)),
        _ => {}
    }
}

/// Compiles the component for wasmtime with `wasi:http`.
fn prepare(path: &Path) -> Result<ProxyPre<State>> {
    if !path.exists() {
        bail!(
            "{} is missing; build the component with `{COMPONENT_BUILD_COMMAND}`",
            path.display()
        );
    }
    let mut config = Config::new();
    config.wasm_component_model(true);
    let engine = Engine::new(&config).map_err(anyhow::Error::from)?;
    let component = Component::from_file(&engine, path)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("loading {}", path.display()))?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    let pre = linker
        .instantiate_pre(&component)
        .map_err(anyhow::Error::from)
        .context("the component's imports")?;
    ProxyPre::new(pre)
        .map_err(anyhow::Error::from)
        .context("the component does not export wasi:http/incoming-handler")
}

/// A store's data: WASI (environment, stdio), `wasi:http` and their resources.
struct State {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: Default::default(),
        }
    }
}

/// An instance ready for a request.
struct Worker {
    store: Store<State>,
    proxy: Proxy,
}

struct Shared {
    pre: ProxyPre<State>,
    env: Vec<(String, String)>,
    log: Log,
    idle: Mutex<Vec<Worker>>,
}

impl Shared {
    async fn worker(&self) -> Result<Worker> {
        if let Some(w) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return Ok(w);
        }
        let wasi = WasiCtx::builder()
            .envs(&self.env)
            .stdout(LineStream(self.log.clone()))
            .stderr(LineStream(self.log.clone()))
            .build();
        let mut store = Store::new(
            self.pre.engine(),
            State {
                wasi,
                http: WasiHttpCtx::new(),
                table: ResourceTable::new(),
            },
        );
        let proxy = self.pre.instantiate_async(&mut store).await?;
        Ok(Worker { store, proxy })
    }

    fn give_back(&self, worker: Worker) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(worker);
        }
    }

    /// One request through one instance. An instance that failed is dropped; the
    /// client of a request the component did not answer gets no response (the
    /// connection closes), never anything the component did not release.
    async fn handle(
        self: Arc<Self>,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<HyperOutgoingBody>> {
        let mut worker = self.worker().await?;
        let (sender, receiver) = oneshot::channel();
        let req = worker
            .store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)?;
        let out = worker
            .store
            .data_mut()
            .http()
            .new_response_outparam(sender)?;
        let shared = Arc::clone(&self);
        let task = tokio::task::spawn(async move {
            let result = worker
                .proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut worker.store, req, out)
                .await;
            if result.is_ok() {
                shared.give_back(worker);
            }
            result
        });
        match receiver.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => Err(anyhow!("the component answered with an error: {code:?}")),
            Err(_) => {
                let e = match task.await {
                    Ok(Ok(())) => anyhow!("the component set no response"),
                    Ok(Err(e)) => anyhow!("{e:?}"),
                    Err(e) => e.into(),
                };
                self.log
                    .line(format!("error consentry serve: {e:#}").as_bytes());
                Err(e)
            }
        }
    }
}

/// The component's stdout and stderr: whole lines to the [`Log`].
struct LineStream(Log);

impl IsTerminal for LineStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LineStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            log: self.0.clone(),
            buf: Vec::new(),
        })
    }
}

struct LineWriter {
    log: Log,
    buf: Vec<u8>,
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.buf.extend_from_slice(data);
        while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            self.log.line(&line[..end]);
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            self.log.line(&rest);
        }
        Poll::Ready(Ok(()))
    }
}

/// A running server; dropping it stops it.
pub struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves until the process ends.
    pub fn wait(mut self) -> Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow!("the server thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Compiles the component and serves it on `listen` (HTTP/1.1) on its own thread.
pub fn start(options: Options, listen: &str) -> Result<Running> {
    let env = component_env(&options)?;
    let pre = prepare(&options.component)?;
    let listener =
        std::net::TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        pre,
        env,
        log: options.log.clone(),
        idle: Mutex::new(Vec::new()),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.workers.max(1))
        .enable_all()
        .build()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("consentry-serve".into())
        .spawn(move || {
            let served = runtime.block_on(accept(listener, shared, stopped));
            runtime.shutdown_timeout(Duration::from_secs(1));
            served
        })?;
    Ok(Running {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

async fn accept(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = &mut stopped => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        tokio::task::spawn(async move {
            let service = hyper::service::service_fn(move |req| Arc::clone(&shared).handle(req));
            // A connection that breaks is the client's business; nothing to report.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn options(env: &[(&str, &str)]) -> Options {
        Options {
            component: PathBuf::new(),
            config_json: r#"{"issuers":[{"keys":{"remote":{"cluster":"consent_service"}},
                "revocation":{"status_list":{"cluster":"lists"}}}]}"#
                .into(),
            upstream: "http://127.0.0.1:1".into(),
            consent: Some("http://127.0.0.1:2".into()),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            workers: 1,
            log: Log::Stderr,
        }
    }

    fn get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        let mut values = env
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        let first = values.next();
        assert!(values.next().is_none(), "{name} is set twice");
        first
    }

    #[test]
    fn every_cluster_goes_to_the_consent_service_unless_the_environment_places_it() {
        let env = component_env(&options(&[
            ("CONSENTRY_PSEUDONYM_KEYS", "k"),
            ("CONSENTRY_CLUSTER_LISTS", "http://127.0.0.1:3"),
        ]))
        .unwrap();
        assert_eq!(get(&env, "CONSENTRY_PSEUDONYM_KEYS"), Some("k"));
        assert_eq!(
            get(&env, "CONSENTRY_CLUSTER_CONSENT_SERVICE"),
            Some("http://127.0.0.1:2")
        );
        assert_eq!(
            get(&env, "CONSENTRY_CLUSTER_LISTS"),
            Some("http://127.0.0.1:3")
        );
        assert_eq!(get(&env, UPSTREAM_VAR), Some("http://127.0.0.1:1"));
    }

    #[test]
    fn the_configuration_and_upstream_given_win_over_stale_variables() {
        let env = component_env(&options(&[
            (CONFIG_VAR, "{}"),
            (UPSTREAM_VAR, "http://127.0.0.1:9"),
        ]))
        .unwrap();
        assert!(get(&env, CONFIG_VAR).unwrap().contains("consent_service"));
        assert_eq!(get(&env, UPSTREAM_VAR), Some("http://127.0.0.1:1"));
    }

    #[test]
    fn urls_that_are_not_origins_are_refused_before_anything_starts() {
        let mut o = options(&[]);
        o.upstream = "http://127.0.0.1:1/base".into();
        assert!(component_env(&o).is_err());
        let mut o = options(&[]);
        o.consent = Some("127.0.0.1:2".into());
        assert!(component_env(&o).is_err());
    }
}
