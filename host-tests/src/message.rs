//! The messages a test sends and receives: the client's request, the upstream's
//! answer, what the client finally got, and outgoing calls with their answers.

use std::time::Duration;

use serde::Serialize;

/// Header pairs in order; names as given (the host lower-cases them on entry).
pub type HeaderList = Vec<(String, Vec<u8>)>;

/// The TLS client certificate of a connection (mTLS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// URI SANs in certificate order; Envoy reports only the first.
    pub uri_sans: Vec<String>,
    /// SHA-256 of the DER certificate, lower-case hex.
    pub cert_sha256: Option<String>,
    /// The certificate in PEM.
    pub certificate: Option<String>,
    /// RFC 2253 subject, as Envoy formats it.
    pub subject: Option<String>,
}

/// A request as the client sends it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub authority: String,
    pub headers: HeaderList,
    /// The body in the pieces the proxy receives it in; empty = no body.
    pub chunks: Vec<Vec<u8>>,
    pub trailers: HeaderList,
    pub peer: Option<Peer>,
    pub source_address: String,
    /// HTTP/2 carries end-of-stream on the last data frame; HTTP/1.1 (the default)
    /// ends the body with a separate empty callback, as Envoy's codec does.
    pub http2: bool,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            authority: "consentry.test".to_owned(),
            headers: Vec::new(),
            chunks: Vec::new(),
            trailers: Vec::new(),
            peer: None,
            source_address: "127.0.0.1:40000".to_owned(),
            http2: false,
        }
    }

    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    pub fn post(path: &str) -> Self {
        Self::new("POST", path)
    }

    /// Adds a header; calling it twice with one name sends the header twice.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }

    pub fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        let body = body.as_ref();
        self.chunks = if body.is_empty() {
            Vec::new()
        } else {
            vec![body.to_vec()]
        };
        self
    }

    pub fn chunks<I, B>(mut self, chunks: I) -> Self
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        self.chunks = chunks.into_iter().map(|c| c.as_ref().to_vec()).collect();
        self
    }

    pub fn trailer(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.trailers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    pub fn peer(mut self, peer: Peer) -> Self {
        self.peer = Some(peer);
        self
    }

    pub fn from_address(mut self, address: &str) -> Self {
        self.source_address = address.to_owned();
        self
    }

    pub fn http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    /// The headers as text, for a network client that sends this request to a real
    /// host (bytes that are not UTF-8 replaced).
    pub fn text_headers(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }
}

/// A response: what an upstream answers, or what a callout returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderList,
    pub chunks: Vec<Vec<u8>>,
    pub trailers: HeaderList,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            chunks: Vec::new(),
            trailers: Vec::new(),
        }
    }

    /// A JSON answer with `content-type` and a correct `content-length`.
    pub fn json(status: u16, body: impl AsRef<[u8]>) -> Self {
        Self::new(status)
            .header("content-type", "application/json")
            .body_with_length(body)
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body without touching headers.
    pub fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        let body = body.as_ref();
        self.chunks = if body.is_empty() {
            Vec::new()
        } else {
            vec![body.to_vec()]
        };
        self
    }

    /// Sets the body and a matching `content-length`.
    pub fn body_with_length(self, body: impl AsRef<[u8]>) -> Self {
        let len = body.as_ref().len();
        self.body(body).header("content-length", len.to_string())
    }

    /// Sends the body in these pieces, without `content-length` (chunked).
    pub fn chunks<I, B>(mut self, chunks: I) -> Self
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        self.chunks = chunks.into_iter().map(|c| c.as_ref().to_vec()).collect();
        self
    }

    pub fn trailer(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.trailers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    pub fn body_bytes(&self) -> Vec<u8> {
        self.chunks.concat()
    }
}

/// What the upstream received, after the plugin's edits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamRequest {
    pub method: String,
    pub path: String,
    pub authority: String,
    /// Regular headers in order (no pseudo-headers).
    #[serde(serialize_with = "crate::message::ser_headers")]
    pub headers: HeaderList,
    #[serde(serialize_with = "crate::message::ser_body")]
    pub body: Vec<u8>,
    /// Request trailers the upstream received (none: no trailers, or all removed).
    #[serde(
        serialize_with = "crate::message::ser_headers",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub trailers: HeaderList,
}

impl UpstreamRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        first(&self.headers, name)
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        all(&self.headers, name)
    }
}

/// How a client's response went wrong at the transport level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ClientFault {
    /// Nothing came back: the stream waited for an event that never happens
    /// (Envoy leaves the client hanging until it gives up).
    Stalled { waiting_for: String },
    /// `content-length` promised more or less than was sent: an HTTP/1.1 client
    /// hangs or reads garbage.
    LengthMismatch { declared: usize, sent: usize },
    /// The stream was reset after the headers were sent.
    Reset { reason: String },
}

/// What the client received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientResponse {
    /// 0 when nothing was received.
    pub status: u16,
    #[serde(serialize_with = "crate::message::ser_headers")]
    pub headers: HeaderList,
    #[serde(serialize_with = "crate::message::ser_body")]
    pub body: Vec<u8>,
    /// Response trailers the client received after the body.
    #[serde(
        serialize_with = "crate::message::ser_headers",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub trailers: HeaderList,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<ClientFault>,
}

impl ClientResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        first(&self.headers, name)
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        all(&self.headers, name)
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body in the message when it is not.
    /// (A test helper: a failed expectation is a panic.)
    #[allow(clippy::panic)]
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_slice(&self.body) {
            Ok(v) => v,
            Err(e) => {
                let text = self.body_text();
                let shown: String = text.chars().take(400).collect();
                panic!("client body is not JSON ({e}): {shown}")
            }
        }
    }
}

fn first<'a>(headers: &'a HeaderList, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

fn all<'a>(headers: &'a HeaderList, name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
        .collect()
}

/// An HTTP call the plugin made through the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Callout {
    pub cluster: String,
    pub method: String,
    pub path: String,
    pub authority: String,
    #[serde(serialize_with = "crate::message::ser_headers")]
    pub headers: HeaderList,
    #[serde(serialize_with = "crate::message::ser_body")]
    pub body: Vec<u8>,
    #[serde(serialize_with = "ser_duration_ms")]
    pub timeout: Duration,
}

fn ser_duration_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_millis())
}

/// How the "network" answers a callout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutAnswer {
    /// The cluster answers after `delay`.
    Respond { response: Response, delay: Duration },
    /// Connection refused: Envoy answers 503 with its own text body.
    Unreachable,
    /// Nothing answers: Envoy answers 504 when the call's timeout expires (never,
    /// for a timeout of 0).
    NoAnswer,
}

impl CalloutAnswer {
    pub fn now(response: Response) -> Self {
        Self::Respond {
            response,
            delay: Duration::ZERO,
        }
    }
}

pub(crate) fn ser_headers<S: serde::Serializer>(h: &HeaderList, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(h.len()))?;
    for (n, v) in h {
        seq.serialize_element(&(n, String::from_utf8_lossy(v)))?;
    }
    seq.end()
}

pub(crate) fn ser_body<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}
