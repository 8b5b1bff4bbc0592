//! A scripted HTTP/1.1 upstream for tests: it answers what the test says, records what
//! it received, and stops when dropped.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use consentry_envoy::scripted::{Reply, ScriptedUpstream};
//! let upstream = ScriptedUpstream::start()?;
//! upstream.set_default(Reply::new(200).header("content-type", "application/json").body("{}"));
//! upstream.route("/callee", Reply::new(201).body("from the callee"));
//! // ... point Envoy at upstream.port(), send requests ...
//! for r in upstream.received() {
//!     println!("{} {}", r.method, r.path);
//! }
//! # Ok(()) }
//! ```
//!
//! Each connection is served on its own thread, keep-alive included (Envoy pools its
//! upstream connections). Request bodies are read by `content-length` or chunked
//! framing. A reply is sent with the headers it was given; its body goes out in the
//! pieces it was given, `gap` apart, so the proxy sees them as separate reads: with a
//! `content-length` header the pieces are written raw, without one the body is sent
//! chunked (one HTTP chunk per piece). A reply can also wait before answering
//! ([`Reply::delay`]) or break the connection off mid-body ([`Reply::break_off`]).
//! Every read and write is bounded by a timeout. Only 127.0.0.1 is used.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// How long a connection may sit idle (or a write may block) before it is dropped.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// What the upstream answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// Sent in this order, exactly as given.
    pub headers: Vec<(String, String)>,
    /// The body in pieces, written `gap` apart.
    pub pieces: Vec<Vec<u8>>,
    pub gap: Duration,
    /// How long to wait before answering at all.
    pub delay: Duration,
    /// Break the connection off after the pieces, the body unfinished.
    pub break_off: bool,
}

impl Reply {
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            pieces: Vec::new(),
            gap: Duration::from_millis(150),
            delay: Duration::ZERO,
            break_off: false,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// One piece (no `content-length` is added: without one the body is chunked).
    pub fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.pieces = vec![body.as_ref().to_vec()];
        self
    }

    pub fn pieces<I, B>(mut self, pieces: I) -> Self
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        self.pieces = pieces.into_iter().map(|p| p.as_ref().to_vec()).collect();
        self
    }

    pub fn gap(mut self, gap: Duration) -> Self {
        self.gap = gap;
        self
    }

    /// Waits this long before sending anything (a slow upstream, for timeouts).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Closes the connection after the last piece without finishing the body (no last
    /// chunk; fewer bytes than a `content-length` says): an upstream that breaks off.
    pub fn break_off(mut self) -> Self {
        self.break_off = true;
        self
    }

    fn has_length(&self) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    }
}

/// A request the upstream received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// In the order received, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct Script {
    default: Option<Reply>,
    /// Exact path (without the query) → reply.
    routes: HashMap<String, Reply>,
    received: Vec<Received>,
}

/// The scripted upstream; stopped (listener closed, connections shut) on drop.
#[derive(Debug)]
pub struct ScriptedUpstream {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ScriptedUpstream {
    /// Listens on a free port of 127.0.0.1. Until a reply is set, it answers 404.
    pub fn start() -> Result<Self> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding the scripted upstream")?;
        let addr = listener.local_addr()?;
        let script = Arc::new(Mutex::new(Script::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (script, stop, connections) = (script.clone(), stop.clone(), connections.clone());
            thread::Builder::new()
                .name("scripted-upstream".into())
                .spawn(move || accept_loop(&listener, &script, &stop, &connections))?
        };
        Ok(Self {
            addr,
            script,
            stop,
            connections,
            acceptor: Some(acceptor),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The reply for every path without its own route.
    pub fn set_default(&self, reply: Reply) {
        lock(&self.script).default = Some(reply);
    }

    /// The reply for one exact path (the query is ignored).
    pub fn route(&self, path: &str, reply: Reply) {
        lock(&self.script).routes.insert(path.to_owned(), reply);
    }

    /// Every request received so far, in order of arrival.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.script).received.clone()
    }

    /// Forgets the requests received so far.
    pub fn clear_received(&self) {
        lock(&self.script).received.clear();
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for c in lock(&self.connections).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    script: &Arc<Mutex<Script>>,
    stop: &Arc<AtomicBool>,
    connections: &Arc<Mutex<Vec<TcpStream>>>,
) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        if let Ok(clone) = stream.try_clone() {
            lock(connections).push(clone);
        }
        let (script, stop) = (script.clone(), stop.clone());
        let _ = thread::Builder::new()
            .name("scripted-connection".into())
            .spawn(move || {
                let closer = stream.try_clone();
                let _ = serve(stream, &script, &stop);
                // The list above keeps a handle open: close the connection for real.
                if let Ok(c) = closer {
                    let _ = c.shutdown(Shutdown::Both);
                }
            });
    }
}

fn serve(stream: TcpStream, script: &Mutex<Script>, stop: &AtomicBool) -> Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while !stop.load(Ordering::SeqCst) {
        let Some(request) = read_request(&mut reader)? else {
            return Ok(());
        };
        let path_only = request
            .path
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned();
        let reply = {
            let mut s = lock(script);
            s.received.push(request);
            s.routes
                .get(&path_only)
                .or(s.default.as_ref())
                .cloned()
                .unwrap_or_else(|| Reply::new(404).header("content-length", "0"))
        };
        write_reply(&mut writer, &reply)?;
        if reply.break_off {
            // The caller closes the socket for good once this returns.
            return Ok(());
        }
    }
    Ok(())
}

fn read_line(reader: &mut impl BufRead) -> Result<Option<String>> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Ok(None),
        Ok(_) => Ok(Some(line.trim_end_matches(['\r', '\n']).to_owned())),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn read_request(reader: &mut impl BufRead) -> Result<Option<Received>> {
    let Some(start) = read_line(reader)? else {
        return Ok(None);
    };
    let mut parts = start.split(' ');
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        bail!("bad request line {start:?}");
    };
    let mut headers = Vec::new();
    loop {
        let Some(line) = read_line(reader)? else {
            return Ok(None);
        };
        if line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v): &(String, String)| v.clone())
    };
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            let Some(size_line) = read_line(reader)? else {
                bail!("connection closed inside a chunked body");
            };
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("bad chunk size {size_line:?}"))?;
            if size == 0 {
                // Trailers up to the empty line.
                while read_line(reader)?.is_some_and(|l| !l.is_empty()) {}
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body = vec![0; len];
        reader.read_exact(&mut body)?;
    }
    Ok(Some(Received {
        method: method.to_owned(),
        path: path.to_owned(),
        headers,
        body,
    }))
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn write_reply(w: &mut TcpStream, reply: &Reply) -> Result<()> {
    if !reply.delay.is_zero() {
        thread::sleep(reply.delay);
    }
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    for (n, v) in &reply.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    // 1xx, 204 and 304 carry no body and no framing (RFC 9112 §6.3).
    let chunked = !reply.has_length() && !matches!(reply.status, 100..=199 | 204 | 304);
    if chunked {
        head.push_str("transfer-encoding: chunked\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    for (i, piece) in reply.pieces.iter().enumerate() {
        if i > 0 && !reply.gap.is_zero() {
            thread::sleep(reply.gap);
        }
        if chunked {
            if piece.is_empty() {
                continue;
            }
            // One write per chunk: a chunk split over several small writes can wait
            // on delayed acknowledgements at the peer.
            let mut frame = format!("{:x}\r\n", piece.len()).into_bytes();
            frame.extend_from_slice(piece);
            frame.extend_from_slice(b"\r\n");
            w.write_all(&frame)?;
        } else {
            w.write_all(piece)?;
        }
        w.flush()?;
    }
    if chunked && !reply.break_off {
        if !reply.pieces.is_empty() && !reply.gap.is_zero() {
            thread::sleep(reply.gap);
        }
        w.write_all(b"0\r\n\r\n")?;
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn answers_by_route_and_records_requests() {
        let up = ScriptedUpstream::start().unwrap();
        up.set_default(Reply::new(200).header("content-length", "2").body("ok"));
        up.route(
            "/c",
            Reply::new(201).pieces(["ab", "c"]).gap(Duration::ZERO),
        );
        let raw = |req: &[u8]| {
            let mut s = TcpStream::connect(up.addr()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(req).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8(out).unwrap()
        };
        let a = raw(b"POST /x?q HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\n\r\nabc");
        assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
        assert!(a.ends_with("\r\n\r\nok"), "{a}");
        let c = raw(b"GET /c?x=1 HTTP/1.1\r\nhost: h\r\n\r\n");
        assert!(
            c.ends_with("transfer-encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"),
            "{c}"
        );
        up.route(
            "/cut",
            Reply::new(200)
                .pieces(["ab"])
                .gap(Duration::ZERO)
                .break_off(),
        );
        let cut = raw(b"GET /cut HTTP/1.1\r\nhost: h\r\n\r\n");
        assert!(cut.ends_with("chunked\r\n\r\n2\r\nab\r\n"), "{cut}");
        let got = up.received();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].method, "POST");
        assert_eq!(got[0].path, "/x?q");
        assert_eq!(got[0].body, b"abc");
        assert_eq!(got[1].header("HOST"), Some("h"));
    }
}
