//! A small blocking HTTP/1.1 client over `std::net::TcpStream`, for tests.
//!
//! It shows exactly what a client receives: headers in order and with duplicates, the
//! body as sent (the bytes after the headers up to the end of the connection when the
//! response has a `content-length`, so a wrong `content-length` is visible; decoded when
//! it is chunked, with `transfer-encoding: chunked` left in the headers). Every request
//! sends `connection: close` (unless the caller sets `connection`) and reads until the
//! server closes; once a whole response is in, the client shuts its write side so that
//! Envoy closes at once (it would otherwise wait out its 1 s delayed-close timeout).
//! Every read is bounded: a hang becomes an error, never a stuck test.
//! No redirects are followed, and 4xx/5xx are ordinary responses.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// How long one exchange may take, in all, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the client received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// In the order received, duplicates kept, names as sent (Envoy sends lower case).
    pub headers: Vec<(String, String)>,
    /// The body as received: the bytes after the headers up to the close of the
    /// connection, or the decoded chunks of a chunked body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response body is not JSON: {:?}", self.text()))
    }

    /// Whether the body came with `transfer-encoding: chunked`.
    pub fn is_chunked(&self) -> bool {
        self.header_all("transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    /// The `content-length` header as a number, if present and numeric.
    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Sends one request and reads the whole response, within [`DEFAULT_TIMEOUT`].
///
/// `url` is `http://HOST:PORT/path?query`. A `host` header is added from the URL unless
/// given; `content-length` is added for a body unless `content-length` or
/// `transfer-encoding` is given (then the body is sent exactly as passed). Headers are
/// sent in the order given, duplicates included.
pub fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<HttpResponse> {
    send_with_timeout(method, url, headers, body, DEFAULT_TIMEOUT)
}

/// [`send`] with another overall time limit.
pub fn send_with_timeout(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<HttpResponse> {
    let (authority, target) = split_url(url)?;
    let addr = resolve(authority)?;
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));

    let mut request = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
    if !has("host") {
        request.extend_from_slice(format!("host: {authority}\r\n").as_bytes());
    }
    for (name, value) in headers {
        request.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if !has("connection") {
        request.extend_from_slice(b"connection: close\r\n");
    }
    if let Some(body) = body
        && !has("content-length")
        && !has("transfer-encoding")
    {
        request.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    if let Some(body) = body {
        request.extend_from_slice(body);
    }

    let head = method.eq_ignore_ascii_case("HEAD");
    let raw =
        exchange(addr, &request, timeout, Some(head)).with_context(|| format!("{method} {url}"))?;
    parse_response(&raw.bytes, raw.complete, head).with_context(|| format!("{method} {url}"))
}

/// The bytes a server sent back, and whether it closed the connection (`complete`) or the
/// time ran out first.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub bytes: Vec<u8>,
    pub complete: bool,
}

/// Writes `request` as is and reads until the server closes the connection or `timeout`
/// has passed (then `complete` is false). For requests the [`send`] helper cannot
/// express: malformed framing, pipelining, several requests on one connection.
///
/// Envoy waits up to its `delayed_close_timeout` (1 s by default) for the client to close
/// first after a `connection: close` response, so this takes that long at least.
pub fn send_raw(addr: SocketAddr, request: &[u8], timeout: Duration) -> Result<RawResponse> {
    exchange(addr, request, timeout, None)
}

/// How long to wait for the server to close once a whole response is in.
const DRAIN: Duration = Duration::from_secs(1);

/// Writes `request` and reads the answer. With `head_request` given, once one whole
/// response (by its framing) has arrived, the write side is shut down: the server then
/// closes at once rather than after its delayed-close timeout, and any bytes it sent past
/// the response's end still arrive and are kept.
fn exchange(
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
    head_request: Option<bool>,
) -> Result<RawResponse> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).ok();
    stream.set_write_timeout(Some(timeout))?;
    stream
        .write_all(request)
        .with_context(|| format!("writing the request to {addr}"))?;
    receive(stream, addr, deadline, head_request)
}

/// Like [`send_raw`], but the request is written from another thread while the answer
/// is read: for a server that answers before it has read the whole request (413 for a
/// body over its limit) and then stops reading or closes. A write that fails then is
/// not an error; what the server answered is. The write side is shut once the whole
/// response is in.
pub fn send_raw_concurrently(
    addr: SocketAddr,
    request: Vec<u8>,
    timeout: Duration,
) -> Result<RawResponse> {
    let deadline = Instant::now() + timeout;
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).ok();
    let mut writer = stream.try_clone()?;
    writer.set_write_timeout(Some(timeout))?;
    let written = thread::Builder::new()
        .name("http-request-writer".into())
        .spawn(move || writer.write_all(&request).is_ok())?;
    let shutter = stream.try_clone()?;
    let raw = receive(stream, addr, deadline, Some(false));
    // Unblocks a write the server no longer reads.
    let _ = shutter.shutdown(Shutdown::Both);
    let _ = written.join();
    raw
}

/// Reads the answer on `stream` until the server closes or `deadline` passes.
fn receive(
    mut stream: TcpStream,
    addr: SocketAddr,
    mut deadline: Instant,
    head_request: Option<bool>,
) -> Result<RawResponse> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let mut draining = false;
    loop {
        if !draining
            && let Some(head) = head_request
            && whole_response(&bytes, head)
        {
            draining = true;
            let _ = stream.shutdown(Shutdown::Write);
            deadline = deadline.min(Instant::now() + DRAIN);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(RawResponse {
                bytes,
                complete: false,
            });
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => {
                return Ok(RawResponse {
                    bytes,
                    complete: true,
                });
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(RawResponse {
                    bytes,
                    complete: false,
                });
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset after a response still leaves what was received to judge.
            Err(e) if e.kind() == ErrorKind::ConnectionReset && !bytes.is_empty() => {
                return Ok(RawResponse {
                    bytes,
                    complete: true,
                });
            }
            Err(e) => return Err(e).with_context(|| format!("reading from {addr}")),
        }
    }
}

/// Whether `raw` holds one whole final response, by its framing (cheap enough to call
/// after every read: a chunked body is decoded only once it ends like a last chunk).
fn whole_response(raw: &[u8], head_request: bool) -> bool {
    let mut rest = raw;
    loop {
        let Some(end) = find(rest, b"\r\n\r\n") else {
            return false;
        };
        let Ok(head) = std::str::from_utf8(&rest[..end]) else {
            return false;
        };
        let body = &rest[end + 4..];
        let Some(Ok(status)) = head.split(' ').nth(1).map(str::parse::<u16>) else {
            return false;
        };
        if (100..200).contains(&status) {
            rest = body;
            continue;
        }
        if head_request || status == 204 || status == 304 {
            return true;
        }
        let mut length = None;
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let name = name.trim();
            if name.eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
            {
                return body.ends_with(b"\r\n\r\n") && decode_chunked(body).is_ok();
            }
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
        // Without a length the body ends when the connection does.
        return length.is_some_and(|len| body.len() >= len);
    }
}

/// Parses what [`send_raw`] received. Interim (1xx) responses are skipped. When the
/// connection was not closed in time (`complete` false) the response is accepted only if
/// its framing (content-length or chunked) says it is whole; otherwise the error tells
/// what was received.
pub fn parse_response(raw: &[u8], complete: bool, head_request: bool) -> Result<HttpResponse> {
    let mut rest = raw;
    loop {
        let Some(end) = find(rest, b"\r\n\r\n") else {
            bail!(
                "{} before the end of the response headers; received {} bytes: {:?}",
                if complete {
                    "connection closed"
                } else {
                    "timed out"
                },
                raw.len(),
                String::from_utf8_lossy(&raw[..raw.len().min(512)])
            );
        };
        let head = std::str::from_utf8(&rest[..end]).context("response headers are not UTF-8")?;
        let body = &rest[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = parse_status_line(status_line)?;
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| anyhow!("malformed header line {line:?}"))?;
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        if (100..200).contains(&status) {
            rest = body;
            continue;
        }
        let response = HttpResponse {
            status,
            headers,
            body: Vec::new(),
        };
        let no_body = head_request || status == 204 || status == 304;
        let body = if response.is_chunked() && !no_body {
            match decode_chunked(body) {
                Ok(decoded) => decoded,
                Err(e) if complete => return Err(e.context("malformed chunked body")),
                Err(e) => {
                    return Err(e.context(format!(
                        "timed out inside a chunked body after {} bytes",
                        body.len()
                    )));
                }
            }
        } else {
            if !complete {
                let whole = match response.content_length() {
                    _ if no_body => body.is_empty(),
                    Some(len) => body.len() >= len,
                    None => false,
                };
                if !whole {
                    bail!(
                        "timed out: status {status}, content-length {:?}, received {} body bytes \
                         and the connection stayed open",
                        response.header("content-length"),
                        body.len()
                    );
                }
            }
            body.to_vec()
        };
        return Ok(HttpResponse { body, ..response });
    }
}

fn parse_status_line(line: &str) -> Result<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x status line: {line:?}");
    }
    parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("no status code in {line:?}"))
}

/// Decodes a chunked body; errors when it is malformed or incomplete.
fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or_else(|| anyhow!("incomplete chunk size line"))?;
        let line = std::str::from_utf8(&data[..line_end]).context("chunk size is not text")?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {line:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            // Trailers (ignored) end with an empty line.
            if data.starts_with(b"\r\n") || find(data, b"\r\n\r\n").is_some() {
                return Ok(out);
            }
            bail!("incomplete chunked trailer section");
        }
        if data.len() < size + 2 {
            bail!("incomplete chunk: {} of {} bytes", data.len(), size);
        }
        out.extend_from_slice(&data[..size]);
        if &data[size..size + 2] != b"\r\n" {
            bail!("chunk of {size} bytes not followed by CRLF");
        }
        data = &data[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `http://authority/path?query` → (authority, "/path?query").
fn split_url(url: &str) -> Result<(&str, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("only http:// URLs are supported, not {url:?}"))?;
    Ok(match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
        // `http://host?x` asks for "/?x".
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    })
}

fn resolve(authority: &str) -> Result<SocketAddr> {
    authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority:?}"))?
        .next()
        .ok_or_else(|| anyhow!("{authority:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_response_keeping_extra_bytes() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: 1\r\nx-a: 2\r\n\r\nabc";
        let r = parse_response(raw, true, false).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header_all("X-A"), vec!["1", "2"]);
        assert_eq!(r.body, b"abc");
        assert_eq!(r.content_length(), Some(2));
    }

    #[test]
    fn decodes_chunked_and_skips_interim() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let r = parse_response(raw, true, false).unwrap();
        assert!(r.is_chunked());
        assert_eq!(r.body, b"abcde");
    }

    #[test]
    fn an_open_connection_short_of_its_content_length_is_an_error() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc";
        let err = parse_response(raw, false, false).unwrap_err().to_string();
        assert!(err.contains("timed out"), "{err}");
        assert!(parse_response(raw, true, false).is_ok());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-le", true, false).is_err());
    }

    #[test]
    fn knows_when_a_response_is_whole() {
        let cl = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nab";
        assert!(!whole_response(cl, false));
        assert!(whole_response(&[&cl[..], b"c"].concat(), false));
        assert!(whole_response(cl, true));
        let chunked = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n";
        assert!(!whole_response(chunked, false));
        assert!(whole_response(
            &[&chunked[..], b"0\r\n\r\n"].concat(),
            false
        ));
        assert!(!whole_response(b"HTTP/1.1 200 OK\r\n\r\nabc", false));
        assert!(whole_response(b"HTTP/1.1 204 No Content\r\n\r\n", false));
    }

    #[test]
    fn splits_urls() {
        assert_eq!(
            split_url("http://h:1/a?b").unwrap(),
            ("h:1", "/a?b".to_owned())
        );
        assert_eq!(
            split_url("http://h:1?b").unwrap(),
            ("h:1", "/?b".to_owned())
        );
        assert_eq!(split_url("http://h:1").unwrap(), ("h:1", "/".to_owned()));
        assert!(split_url("https://h").is_err());
    }
}
