//! An example upstream service for Consentry: a hospital's patient-record API, and a
//! bank's account-information API for the open-banking scenario, speaking HTTP/1.1 and
//! JSON.
//!
//! Envoy with the Consentry plugin sits in front of it in the demo, the
//! end-to-end tests and the benchmarks. It serves the checked-in records as the
//! exact bytes stored, and can be asked to misbehave the ways real upstreams do
//! (chunked bodies, gzip, wrong content types, leaky error pages) so that the
//! plugin's handling of each can be checked. See `examples/README.md`.
//!
//! It also plays the consent service the plugin calls out to: the issuer's JWKS and its
//! Token Status Lists, changeable at run time (`PUT /admin/...`), signed by [`issuer`],
//! which `consentry mint` shares.

pub mod bank;
mod consent;
mod data;
mod http;
pub mod issuer;
pub mod personas;

use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

pub use bank::{BUILTIN_ACCOUNTS_JSON, Bank};
pub use consent::{
    ConsentConfig, ConsentState, DEFAULT_STATUS_BITS, DEFAULT_STATUS_LIST_LEN,
    DEFAULT_STATUS_TTL_SECONDS, MAX_STATUS_LIST_LEN,
};
pub use data::{BUILTIN_PATIENTS_JSON, HISTORY_TARGET_LEN, ServiceState};
pub use http::{DUP_CONTENT_TYPE, SERVER_HEADER, chunk_sizes, router};

/// How long a stopping server waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Serves `state` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, state: ServiceState) -> io::Result<()> {
    serve_with_shutdown(listener, state, std::future::pending()).await
}

/// Serves until `signal` completes, then stops accepting, lets in-flight
/// requests finish and returns; connections still open after a short grace
/// period are dropped, so a client holding a connection cannot block shutdown.
pub async fn serve_with_shutdown<F>(
    listener: TcpListener,
    state: ServiceState,
    signal: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, mut graceful) = watch::channel(false);
    let mut deadline = tx.subscribe();
    tokio::spawn(async move {
        signal.await;
        let _ = tx.send(true);
    });
    // Small body chunks must leave as written, not wait for Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
        let _ = graceful.wait_for(|stop| *stop).await;
    });
    tokio::select! {
        result = server => result,
        () = async move {
            let _ = deadline.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    }
}

/// Binds `addr` (port 0 picks a free port) with a listen backlog large enough
/// for load generators that open many connections at once. Call it inside a
/// tokio runtime (it registers the socket with the runtime, without waiting).
pub fn bind(addr: &str) -> io::Result<TcpListener> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, format!("no address in {addr}"));
    for sa in addr.to_socket_addrs()? {
        let socket = if sa.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(sa).and_then(|()| socket.listen(1024)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A service running on its own thread and tokio runtime, for tests that want
/// a real upstream in-process. Dropping it stops the server and joins the thread.
#[derive(Debug)]
pub struct RunningService {
    addr: SocketAddr,
    stop: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl RunningService {
    /// The bound address (with the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and returns how it ended.
    pub fn stop(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        match self.thread.take().map(JoinHandle::join) {
            None => Ok(()),
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("example service thread panicked")),
        }
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Starts the service with the built-in data on `addr` (e.g. `127.0.0.1:0`) on
/// a dedicated thread with a two-worker runtime, and returns once it accepts
/// connections.
pub fn spawn(addr: &str) -> io::Result<RunningService> {
    spawn_with(addr, ServiceState::builtin()?)
}

/// Like [`spawn`], with the given data.
pub fn spawn_with(addr: &str, state: ServiceState) -> io::Result<RunningService> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("example-service")
        .enable_all()
        .build()?;
    let listener = {
        let _context = runtime.enter();
        bind(addr)?
    };
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("example-service".into())
        .spawn(move || {
            let result = runtime.block_on(serve_with_shutdown(listener, state, async move {
                // A dropped sender also means stop.
                let _ = stopped.wait_for(|stop| *stop).await;
            }));
            runtime.shutdown_timeout(Duration::from_secs(1));
            result
        })?;
    Ok(RunningService {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}
