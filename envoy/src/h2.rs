//! A small HTTP/2 client for tests, on the `h2` crate: prior-knowledge cleartext h2c, or
//! h2 over TLS (ALPN `h2`, rustls on ring) with an optional client certificate.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use consentry_envoy::h2::{H2Client, H2Request};
//! let client = H2Client::cleartext("127.0.0.1:10000".parse()?);
//! let request = H2Request::new("POST", "/echo")
//!     .header("content-type", "application/json")
//!     .chunks([&b"{\"claim_id\":"[..], b"\"c-1\"}"])
//!     .trailers(&[("x-checksum", "1")]);
//! match client.send(&request) {
//!     Ok(r) => println!("{} {}", r.status, String::from_utf8_lossy(&r.body)),
//!     Err(failed) => println!("no complete answer: {failed}"),
//! }
//! # Ok(()) }
//! ```
//!
//! A request goes out as HEADERS, one DATA frame per chunk (`gap` apart), then the
//! trailers if given; END_STREAM is on the last of them. A response is [`H2Response`]
//! only when the server ended its stream (END_STREAM on its last DATA or trailers); a
//! RST_STREAM, a GOAWAY, a dropped connection or the time limit before that is an
//! [`H2Failure`] holding what had arrived, so a cut-off answer can never pass for a
//! complete one. A server that answers before the request is all sent (a refusal)
//! still gives a complete response: the unsent rest does not matter then.
//!
//! Every call runs on its own single-threaded runtime with its own connection, closed at
//! the end, and is bounded by the client's timeout as a whole (connection, handshakes
//! and exchange). Only the addresses given are contacted.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::h2::client::SendRequest;
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::http::HttpResponse;

/// How long one call may take, in all, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A request: headers, a body in chunks, optional trailers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2Request {
    pub method: String,
    /// The `:path`, query included.
    pub path: String,
    /// Sent in this order (names lower-cased, as HTTP/2 requires).
    pub headers: Vec<(String, String)>,
    /// One DATA frame each; empty chunks are sent as empty frames.
    pub chunks: Vec<Vec<u8>>,
    /// `Some` sends a trailing HEADERS frame (even an empty one) after the body.
    pub trailers: Option<Vec<(String, String)>>,
    /// The pause before each chunk after the first, and before the trailers.
    pub gap: Duration,
}

impl H2Request {
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            chunks: Vec::new(),
            trailers: None,
            gap: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The body as one chunk.
    pub fn body(self, body: impl AsRef<[u8]>) -> Self {
        self.chunks([body])
    }

    pub fn chunks<I, B>(mut self, chunks: I) -> Self
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        self.chunks = chunks.into_iter().map(|c| c.as_ref().to_vec()).collect();
        self
    }

    pub fn trailers(mut self, trailers: &[(&str, &str)]) -> Self {
        let pairs = trailers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()));
        self.trailers = Some(pairs.collect());
        self
    }

    pub fn gap(mut self, gap: Duration) -> Self {
        self.gap = gap;
        self
    }
}

/// A complete response: the server ended its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2Response {
    pub status: u16,
    /// In the order received, without pseudo-headers.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The trailers, if the server sent any.
    pub trailers: Option<Vec<(String, String)>>,
}

impl H2Response {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        first(&self.headers, name)
    }

    /// The same answer as the HTTP/1.1 client's type (trailers left out), for the
    /// helpers that judge one.
    pub fn to_http(&self) -> HttpResponse {
        HttpResponse {
            status: self.status,
            headers: self.headers.clone(),
            body: self.body.clone(),
        }
    }
}

/// Why there is no complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The server reset the stream (RST_STREAM with this error code).
    Reset(u32),
    /// The server ended the connection (GOAWAY with this error code) before the
    /// stream ended.
    GoAway(u32),
    /// The connection broke or closed before the stream ended.
    ConnectionLost(String),
    /// The time limit passed first.
    TimedOut(Duration),
    /// No connection: TCP, TLS or the HTTP/2 handshake failed.
    Connect(String),
    /// Anything else the `h2` crate refused (a malformed request, a protocol error).
    Protocol(String),
}

/// No complete response, and what had arrived before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2Failure {
    pub failure: Failure,
    /// The status and headers, if they had arrived.
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    /// The body bytes received before the failure.
    pub body: Vec<u8>,
}

impl H2Failure {
    /// The answer was cut off by the server or the connection (a reset, a GOAWAY, a
    /// drop), rather than never started or timed out.
    pub fn is_reset(&self) -> bool {
        matches!(
            self.failure,
            Failure::Reset(_) | Failure::GoAway(_) | Failure::ConnectionLost(_)
        )
    }
}

impl fmt::Display for H2Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            Failure::Reset(code) => write!(f, "stream reset by the server (error code {code})")?,
            Failure::GoAway(code) => write!(f, "GOAWAY from the server (error code {code})")?,
            Failure::ConnectionLost(e) => write!(f, "connection lost: {e}")?,
            Failure::TimedOut(limit) => write!(f, "no complete response within {limit:?}")?,
            Failure::Connect(e) => write!(f, "cannot connect: {e}")?,
            Failure::Protocol(e) => write!(f, "HTTP/2 error: {e}")?,
        }
        match self.status {
            Some(status) => write!(
                f,
                "; received status {status}, headers {:?}, {} body bytes",
                self.headers,
                self.body.len()
            ),
            None => write!(f, "; no response headers received"),
        }
    }
}

impl std::error::Error for H2Failure {}

/// What a call returns for each request.
pub type H2Result = std::result::Result<H2Response, H2Failure>;

/// TLS settings: the CA that signed the server's certificate, an optional client
/// certificate and key (PEM), and the name the server's certificate must carry.
#[derive(Debug, Clone, Copy)]
pub struct TlsOptions<'a> {
    pub ca_pem: &'a str,
    /// (certificate chain, private key), PEM.
    pub client: Option<(&'a str, &'a str)>,
    pub server_name: &'a str,
}

#[derive(Clone)]
struct Tls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

/// An HTTP/2 client for one address.
#[derive(Clone)]
pub struct H2Client {
    addr: SocketAddr,
    tls: Option<Tls>,
    authority: String,
    timeout: Duration,
}

impl fmt::Debug for H2Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Client")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .field("authority", &self.authority)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl H2Client {
    /// Cleartext HTTP/2 with prior knowledge (h2c, no upgrade); `:authority` is the
    /// address.
    pub fn cleartext(addr: SocketAddr) -> Self {
        Self {
            addr,
            tls: None,
            authority: addr.to_string(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// HTTP/2 over TLS: ALPN offers only `h2` (a server that picks anything else is a
    /// connection error); `:authority` is `server_name:port`.
    pub fn tls(addr: SocketAddr, options: TlsOptions<'_>) -> Result<Self> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(options.ca_pem.as_bytes()) {
            roots.add(cert.context("the CA's PEM")?)?;
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots);
        let mut config = match options.client {
            Some((cert_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .context("the client certificate's PEM")?;
                let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                    .context("the client key's PEM")?;
                builder.with_client_auth_cert(chain, key)?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let name = ServerName::try_from(options.server_name.to_owned())
            .with_context(|| format!("server name {:?}", options.server_name))?;
        Ok(Self {
            addr,
            tls: Some(Tls {
                config: Arc::new(config),
                name,
            }),
            authority: format!("{}:{}", options.server_name, addr.port()),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Another overall time limit for each call.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Another `:authority`.
    pub fn with_authority(mut self, authority: &str) -> Self {
        self.authority = authority.to_owned();
        self
    }

    /// One request on a fresh connection.
    pub fn send(&self, request: &H2Request) -> H2Result {
        let mut results = self.send_concurrently(std::slice::from_ref(request));
        results.pop().unwrap_or_else(|| {
            Err(failure(Failure::Protocol(
                "no result for the request".into(),
            )))
        })
    }

    /// These requests as concurrent streams of one fresh connection, all started at
    /// once; the results in the same order.
    pub fn send_concurrently(&self, requests: &[H2Request]) -> Vec<H2Result> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let runtime = match runtime {
            Ok(r) => r,
            Err(e) => {
                let f = failure(Failure::Connect(format!("no runtime: {e}")));
                return requests.iter().map(|_| Err(f.clone())).collect();
            }
        };
        // Dropping the runtime at the end cancels the connection task: the
        // connection closes with the call.
        runtime.block_on(self.run(requests))
    }

    async fn run(&self, requests: &[H2Request]) -> Vec<H2Result> {
        let deadline = Instant::now() + self.timeout;
        let connected = tokio::time::timeout_at(deadline, self.connect()).await;
        let sender = match connected {
            Ok(Ok(sender)) => sender,
            Ok(Err(f)) => return requests.iter().map(|_| Err(failure(f.clone()))).collect(),
            Err(_) => {
                let f = Failure::TimedOut(self.timeout);
                return requests.iter().map(|_| Err(failure(f.clone()))).collect();
            }
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let tasks: Vec<_> = requests
            .iter()
            .map(|request| {
                let uri = format!("{scheme}://{}{}", self.authority, request.path);
                let (sender, request) = (sender.clone(), request.clone());
                tokio::spawn(exchange(sender, uri, request, deadline, self.timeout))
            })
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(
                task.await.unwrap_or_else(|e| {
                    Err(failure(Failure::Protocol(format!("stream task: {e}"))))
                }),
            );
        }
        results
    }

    async fn connect(&self) -> std::result::Result<SendRequest<Bytes>, Failure> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| Failure::Connect(format!("{}: {e}", self.addr)))?;
        tcp.set_nodelay(true).ok();
        let Some(tls) = &self.tls else {
            return handshake(tcp).await;
        };
        let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
            .connect(tls.name.clone(), tcp)
            .await
            .map_err(|e| Failure::Connect(format!("TLS handshake: {e}")))?;
        let alpn = stream.get_ref().1.alpn_protocol();
        if alpn != Some(b"h2".as_slice()) {
            return Err(Failure::Connect(format!(
                "the server did not choose h2 in ALPN (it chose {:?})",
                alpn.map(String::from_utf8_lossy)
            )));
        }
        handshake(stream).await
    }
}

/// The HTTP/2 handshake; the connection is driven by a task of its own.
async fn handshake<T>(io: T) -> std::result::Result<SendRequest<Bytes>, Failure>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = ::h2::client::handshake(io)
        .await
        .map_err(|e| Failure::Connect(format!("HTTP/2 handshake: {e}")))?;
    tokio::spawn(async move {
        // Its errors reach every open stream, which reports them.
        let _ = connection.await;
    });
    Ok(sender)
}

fn failure(failure: Failure) -> H2Failure {
    H2Failure {
        failure,
        status: None,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

fn classify(e: &::h2::Error) -> Failure {
    let code = e.reason().map_or(0, u32::from);
    if e.is_reset() {
        Failure::Reset(code)
    } else if e.is_go_away() {
        Failure::GoAway(code)
    } else if e.is_io() {
        Failure::ConnectionLost(e.to_string())
    } else {
        Failure::Protocol(e.to_string())
    }
}

/// What a stream has received so far.
#[derive(Default)]
struct Received {
    status: Option<u16>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Option<Vec<(String, String)>>,
}

async fn exchange(
    sender: SendRequest<Bytes>,
    uri: String,
    request: H2Request,
    deadline: Instant,
    limit: Duration,
) -> H2Result {
    let mut got = Received::default();
    let outcome = tokio::time::timeout_at(deadline, stream(sender, &uri, &request, &mut got)).await;
    let fail = |failure, got: Received| H2Failure {
        failure,
        status: got.status,
        headers: got.headers,
        body: got.body,
    };
    match (outcome, got.status) {
        (Ok(Ok(())), Some(status)) => Ok(H2Response {
            status,
            headers: got.headers,
            body: got.body,
            trailers: got.trailers,
        }),
        (Ok(Ok(())), None) => Err(fail(Failure::Protocol("no status".into()), got)),
        (Ok(Err(f)), _) => Err(fail(f, got)),
        (Err(_), _) => Err(fail(Failure::TimedOut(limit), got)),
    }
}

/// Sends the request and receives the response at the same time (a server may
/// answer before the request is all sent); the response alone decides.
async fn stream(
    sender: SendRequest<Bytes>,
    uri: &str,
    request: &H2Request,
    got: &mut Received,
) -> std::result::Result<(), Failure> {
    let mut sender = sender.ready().await.map_err(|e| classify(&e))?;
    let head = head(uri, request).map_err(|e| Failure::Protocol(format!("{e:#}")))?;
    let trailers = match &request.trailers {
        Some(pairs) => Some(header_map(pairs).map_err(|e| Failure::Protocol(format!("{e:#}")))?),
        None => None,
    };
    let ends_with_headers = request.chunks.is_empty() && trailers.is_none();
    let (response, mut body_out) = sender
        .send_request(head, ends_with_headers)
        .map_err(|e| classify(&e))?;

    let sending = async move {
        let last = request.chunks.len();
        for (i, chunk) in request.chunks.iter().enumerate() {
            if i > 0 && !request.gap.is_zero() {
                tokio::time::sleep(request.gap).await;
            }
            let end = i + 1 == last && trailers.is_none();
            body_out.send_data(Bytes::from(chunk.clone()), end)?;
        }
        if let Some(trailers) = trailers {
            if !request.gap.is_zero() {
                tokio::time::sleep(request.gap).await;
            }
            body_out.send_trailers(trailers)?;
        }
        Ok::<_, ::h2::Error>(())
    };
    let receiving = async {
        let response = response.await.map_err(|e| classify(&e))?;
        got.status = Some(response.status().as_u16());
        got.headers = pairs(response.headers());
        let mut body = response.into_body();
        while let Some(data) = body.data().await {
            let data = data.map_err(|e| classify(&e))?;
            let _ = body.flow_control().release_capacity(data.len());
            got.body.extend_from_slice(&data);
        }
        got.trailers = body
            .trailers()
            .await
            .map_err(|e| classify(&e))?
            .map(|t| pairs(&t));
        Ok(())
    };
    // A refusal may come before the request is all sent; then sending fails and
    // does not matter.
    let (_sent, received) = tokio::join!(sending, receiving);
    received
}

fn head(uri: &str, request: &H2Request) -> Result<http::Request<()>> {
    let mut builder = http::Request::builder()
        .method(request.method.as_str())
        .uri(uri)
        .version(http::Version::HTTP_2);
    if let Some(headers) = builder.headers_mut() {
        *headers = header_map(&request.headers)?;
    }
    builder
        .body(())
        .map_err(|e| anyhow!("request {} {}: {e}", request.method, request.path))
}

fn header_map(pairs: &[(String, String)]) -> Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            bail!("bad header name {name:?}");
        };
        let Ok(value) = HeaderValue::from_str(value) else {
            bail!("bad value for header {name}");
        };
        map.append(name, value);
    }
    Ok(map)
}

fn pairs(map: &HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(n, v)| {
            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (n.as_str().to_owned(), value)
        })
        .collect()
}

fn first<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests;
