//! A recording TCP relay on 127.0.0.1 in front of a real server (the example service):
//! it keeps every byte Envoy sends through it, so a test can say exactly what the
//! upstream received (nothing at all; which headers, body and trailers), and it can
//! play a slow server (each piece Envoy sends waits `delay` before it goes on) or one
//! that dies mid-answer (the connection is cut a few bytes into a response body).
//!
//! Envoy speaks HTTP/1.1 to its clusters here, so what a tap holds is parsed as
//! HTTP/1.1 requests: `content-length` or chunked bodies, and chunked trailers.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long a relayed connection may sit idle before it is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A request as it arrived on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRequest {
    pub method: String,
    pub target: String,
    /// Names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// `Some` (maybe empty) when the body was chunked: the trailer fields after it.
    pub trailers: Option<Vec<(String, String)>>,
}

impl WireRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

#[derive(Default)]
struct Shared {
    /// Bytes Envoy sent, one entry per connection, in order of arrival.
    wire: Mutex<Vec<Vec<u8>>>,
    sockets: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

pub struct Tap {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a tap treats what passes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// Each piece Envoy sends waits this long before it goes on.
    pub delay: Duration,
    /// Cut the connection this many bytes into the first response's body.
    pub cut_after_body_bytes: Option<usize>,
}

impl Tap {
    pub fn start(target: SocketAddr, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = shared.clone();
            thread::spawn(move || {
                for client in listener.incoming() {
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    relay(client, target, behaviour, &shared);
                }
            })
        };
        Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Everything Envoy sent, all connections together.
    pub fn raw(&self) -> Vec<u8> {
        lock(&self.shared.wire).concat()
    }

    /// Every request Envoy sent, in order of connection, then of arrival.
    pub fn requests(&self) -> Vec<WireRequest> {
        let wire = lock(&self.shared.wire).clone();
        let mut all = Vec::new();
        for bytes in wire {
            all.extend(parse_requests(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{e}; the tap received:\n{}",
                    String::from_utf8_lossy(&bytes)
                )
            }));
        }
        all
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for s in lock(&self.shared.sockets).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

/// Relays one connection: a thread each way.
fn relay(client: TcpStream, target: SocketAddr, behaviour: Behaviour, shared: &Arc<Shared>) {
    let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    for s in [&client, &server] {
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let _ = s.set_write_timeout(Some(IO_TIMEOUT));
        if let Ok(c) = s.try_clone() {
            lock(&shared.sockets).push(c);
        }
    }
    let index = {
        let mut wire = lock(&shared.wire);
        wire.push(Vec::new());
        wire.len() - 1
    };
    let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = shared.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = client_in.read(&mut buf) {
            if n == 0 {
                break;
            }
            lock(&up.wire)[index].extend_from_slice(&buf[..n]);
            if !behaviour.delay.is_zero() {
                thread::sleep(behaviour.delay);
            }
            if server_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = server_out.shutdown(Shutdown::Write);
    });
    let (mut server_in, mut client_out) = (server, client);
    thread::spawn(move || {
        // With a cut: the bytes seen so far, and where the cut falls once the first
        // response's headers have ended.
        let mut seen = Vec::new();
        let mut cut_at = None;
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = server_in.read(&mut buf) {
            if n == 0 {
                break;
            }
            let Some(after) = behaviour.cut_after_body_bytes else {
                if client_out.write_all(&buf[..n]).is_err() {
                    break;
                }
                continue;
            };
            let sent = seen.len();
            seen.extend_from_slice(&buf[..n]);
            if cut_at.is_none() {
                cut_at = find(&seen, b"\r\n\r\n").map(|head| head + 4 + after);
            }
            let end = cut_at.map_or(n, |at: usize| at.saturating_sub(sent).min(n));
            let done = cut_at.is_some_and(|at| sent + end >= at);
            if client_out.write_all(&buf[..end]).is_err() || done {
                break;
            }
        }
        // Both ways end: a cut is an upstream that died mid-answer.
        let _ = client_out.shutdown(Shutdown::Both);
        let _ = server_in.shutdown(Shutdown::Both);
    });
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits a connection's bytes into whole requests; an incomplete one is an error.
pub fn parse_requests(mut bytes: &[u8]) -> Result<Vec<WireRequest>, String> {
    let mut requests = Vec::new();
    while !bytes.is_empty() {
        let end = find(bytes, b"\r\n\r\n").ok_or("a request without the end of its headers")?;
        let head = std::str::from_utf8(&bytes[..end]).map_err(|_| "headers not UTF-8")?;
        bytes = &bytes[end + 4..];
        let mut lines = head.split("\r\n");
        let start = lines.next().unwrap_or_default();
        let mut parts = start.split(' ');
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return Err(format!("bad request line {start:?}"));
        };
        let headers = fields(lines)?;
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let (body, trailers) = if header("transfer-encoding").is_some_and(|v| v.contains("chunked"))
        {
            let (body, trailers, rest) = dechunk(bytes)?;
            bytes = rest;
            (body, Some(trailers))
        } else {
            let len = header("content-length").map_or(Ok(0), |v| v.parse::<usize>());
            let len = len.map_err(|_| "bad content-length")?;
            let body = bytes
                .get(..len)
                .ok_or("a body shorter than its content-length")?;
            bytes = &bytes[len..];
            (body.to_vec(), None)
        };
        requests.push(WireRequest {
            method: method.to_owned(),
            target: target.to_owned(),
            headers,
            body,
            trailers,
        });
    }
    Ok(requests)
}

fn fields<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Vec<(String, String)>, String> {
    lines
        .map(|line| {
            let (n, v) = line
                .split_once(':')
                .ok_or_else(|| format!("bad field line {line:?}"))?;
            Ok((n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect()
}

type Dechunked<'a> = (Vec<u8>, Vec<(String, String)>, &'a [u8]);

/// A chunked body, its trailers, and the bytes after it.
fn dechunk(mut bytes: &[u8]) -> Result<Dechunked<'_>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = find(bytes, b"\r\n").ok_or("an incomplete chunk size line")?;
        let line = std::str::from_utf8(&bytes[..line_end]).map_err(|_| "chunk size")?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {line:?}"))?;
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            break;
        }
        let chunk = bytes.get(..size).ok_or("an incomplete chunk")?;
        body.extend_from_slice(chunk);
        bytes = bytes.get(size + 2..).ok_or("an incomplete chunk")?;
    }
    // Trailer fields up to an empty line.
    let end = if bytes.starts_with(b"\r\n") {
        0
    } else {
        find(bytes, b"\r\n\r\n").ok_or("incomplete trailers")? + 2
    };
    let text = std::str::from_utf8(&bytes[..end]).map_err(|_| "trailers not UTF-8")?;
    let trailers = fields(text.split("\r\n").filter(|l| !l.is_empty()))?;
    Ok((body, trailers, &bytes[end + 2..]))
}

#[test]
fn parses_length_and_chunked_requests_with_trailers() {
    let wire = b"POST /a?x HTTP/1.1\r\nHost: h\r\ncontent-length: 3\r\n\r\nabc\
GET /b HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n2\r\nde\r\n1;e=1\r\nf\r\n0\r\nX-Sum: 1\r\n\r\n\
GET /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
    let r = parse_requests(wire).unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!((r[0].path(), r[0].header("host")), ("/a", Some("h")));
    assert_eq!(
        (r[0].body.as_slice(), &r[0].trailers),
        (b"abc".as_slice(), &None)
    );
    assert_eq!(r[1].body, b"def");
    assert_eq!(r[1].trailers, Some(vec![("x-sum".into(), "1".into())]));
    assert_eq!(r[2].trailers, Some(vec![]));
    assert!(parse_requests(b"GET / HTTP/1.1\r\ncontent-length: 5\r\n\r\nab").is_err());
}
