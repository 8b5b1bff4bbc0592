//! Routes and response shaping.
//!
//! Besides serving data, the service can misbehave on request (chunked bodies
//! split at awkward places, gzip, wrong or duplicate content types, leaky error
//! pages) so the plugin's handling of each case can be tested end to end.

use std::convert::Infallible;
use std::io::Write;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, HeaderName, HeaderValue, SERVER,
};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, put};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Serialize;

use crate::consent;
use crate::data::{ServiceState, SplitMix};

/// Sent on every response, so tests can check the plugin does not leak it.
pub const SERVER_HEADER: &str = "example-service/1.0";

/// The largest request body `/echo` accepts.
const ECHO_BODY_LIMIT: usize = 16 * 1024 * 1024;

/// The content type that `?dup_ctype=1` adds as a second `content-type` header.
pub const DUP_CONTENT_TYPE: &str = "text/html";

const JSON: &str = "application/json";

/// The service's routes over `state`.
pub fn router(state: ServiceState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/patients", get(patients))
        .route("/patients/{id}", get(patient))
        .route("/patients/{id}/history", get(history))
        .route("/patients/{id}/billing", get(billing))
        .route("/records", get(records))
        .route("/accounts", get(accounts))
        .route("/accounts/{id}", get(account))
        .route("/accounts/{id}/balances", get(balances))
        .route("/accounts/{id}/transactions", get(transactions))
        .route("/status/{code}", any(status))
        .route("/echo", any(echo))
        .route("/echo/{*rest}", any(echo))
        .route("/.well-known/jwks.json", get(consent::jwks))
        .route("/admin/jwks", put(consent::put_jwks))
        .route("/statuslists/{id}", get(consent::status_list))
        .route("/admin/statuslists/{id}/{idx}", put(consent::put_status))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(add_server_header))
        .with_state(state)
}

async fn add_server_header(mut res: Response) -> Response {
    res.headers_mut()
        .insert(SERVER, HeaderValue::from_static(SERVER_HEADER));
    res
}

pub(crate) fn error_json(status: StatusCode, code: &'static str) -> Response {
    let body = format!("{{\"error\":\"{code}\"}}");
    (status, [(CONTENT_TYPE, JSON)], body).into_response()
}

async fn not_found() -> Response {
    error_json(StatusCode::NOT_FOUND, "not_found")
}

async fn method_not_allowed() -> Response {
    error_json(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
}

async fn healthz() -> Response {
    ([(CONTENT_TYPE, "text/plain")], "ok").into_response()
}

/// A request the service refuses with 400 and this error code.
#[derive(Debug)]
struct BadRequest(&'static str);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        error_json(StatusCode::BAD_REQUEST, self.0)
    }
}

/// How a data response is to be delivered, from the query string.
#[derive(Debug, Default)]
struct Delivery {
    chunked: bool,
    gzip: bool,
    ctype: Option<HeaderValue>,
    dup_ctype: bool,
}

/// Decodes `%XX` and `+` in a query component; invalid escapes stay as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(v) = hex {
                    out.push(v);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(name, value)` pairs of a raw query string, decoded.
pub(crate) fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
}

pub(crate) fn flag(v: &str) -> bool {
    matches!(v, "1" | "true" | "yes")
}

impl Delivery {
    /// Reads the delivery options; an unusable one is a 400 response.
    fn from_query(query: Option<&str>) -> Result<Self, BadRequest> {
        let mut d = Self::default();
        for (k, v) in query_pairs(query) {
            match k.as_str() {
                "chunked" => d.chunked = flag(&v),
                "gzip" => d.gzip = flag(&v),
                "dup_ctype" => d.dup_ctype = flag(&v),
                "ctype" => {
                    let value = HeaderValue::from_str(&v).map_err(|_| BadRequest("bad_ctype"))?;
                    d.ctype = Some(value);
                }
                _ => {}
            }
        }
        Ok(d)
    }

    /// Builds the response: `body` as JSON (or the overridden content type),
    /// compressed and/or streamed in small chunks as asked.
    fn respond(&self, status: StatusCode, body: Bytes) -> Response {
        let body = if self.gzip { gzip(&body) } else { body };
        let mut res = Response::new(if self.chunked {
            chunked_body(body)
        } else {
            Body::from(body)
        });
        *res.status_mut() = status;
        let headers = res.headers_mut();
        let ctype = self.ctype.clone().unwrap_or(HeaderValue::from_static(JSON));
        headers.insert(CONTENT_TYPE, ctype);
        if self.dup_ctype {
            headers.append(CONTENT_TYPE, HeaderValue::from_static(DUP_CONTENT_TYPE));
        }
        if self.gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    }
}

/// Gzip with a fixed header (no name, mtime 0), so the bytes are reproducible.
fn gzip(body: &[u8]) -> Bytes {
    let mut enc = GzEncoder::new(Vec::with_capacity(body.len() / 3 + 64), Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(body);
    Bytes::from(enc.finish().unwrap_or_default())
}

/// Splits `body` into chunks of 7–100 bytes at pseudo-random (but reproducible)
/// offsets, so splits fall inside strings, escapes and numbers.
pub fn chunk_sizes(len: usize) -> Vec<usize> {
    let mut rng = SplitMix::new(0x0C4C_0000 ^ len as u64);
    let mut sizes = Vec::with_capacity(len / 50 + 1);
    let mut left = len;
    while left > 0 {
        let n = (7 + rng.below(94)).min(left);
        sizes.push(n);
        left -= n;
    }
    sizes
}

/// A streaming body (sent with `transfer-encoding: chunked`) that hands out one
/// small piece at a time and yields between pieces, pausing ~1 ms every 16th,
/// so a proxy in front sees many separate body callbacks.
fn chunked_body(body: Bytes) -> Body {
    let sizes = chunk_sizes(body.len());
    let stream =
        futures_util::stream::unfold((body, sizes, 0usize), |(body, sizes, i)| async move {
            let size = *sizes.get(i)?;
            if i > 0 {
                if i % 16 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                } else {
                    tokio::task::yield_now().await;
                }
            }
            let mut body = body;
            let piece = body.split_to(size);
            Some((Ok::<_, Infallible>(piece), (body, sizes, i + 1)))
        });
    Body::from_stream(stream)
}

fn data_response(body: Option<Bytes>, query: Option<&str>) -> Response {
    match (Delivery::from_query(query), body) {
        (Err(bad), _) => bad.into_response(),
        (Ok(_), None) => error_json(StatusCode::NOT_FOUND, "not_found"),
        (Ok(d), Some(body)) => d.respond(StatusCode::OK, body),
    }
}

async fn patients(State(s): State<ServiceState>, RawQuery(q): RawQuery) -> Response {
    data_response(Some(s.summaries()), q.as_deref())
}

async fn patient(
    State(s): State<ServiceState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    data_response(s.record(&id), q.as_deref())
}

async fn history(
    State(s): State<ServiceState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    data_response(s.history(&id), q.as_deref())
}

async fn billing(
    State(s): State<ServiceState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    data_response(s.billing(&id), q.as_deref())
}

async fn accounts(State(s): State<ServiceState>, RawQuery(q): RawQuery) -> Response {
    data_response(Some(s.bank().accounts()), q.as_deref())
}

async fn account(
    State(s): State<ServiceState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    data_response(s.bank().account(&id), q.as_deref())
}

async fn balances(
    State(s): State<ServiceState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    data_response(s.bank().balances(&id), q.as_deref())
}

async fn transactions(
    State(s): State<ServiceState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    data_response(s.bank().transactions(&id), q.as_deref())
}

/// The most ids one `/records` request may name.
const MAX_RECORD_IDS: usize = 100;

async fn records(State(s): State<ServiceState>, RawQuery(q): RawQuery) -> Response {
    let Some((_, ids)) = query_pairs(q.as_deref()).find(|(k, _)| k == "ids") else {
        return error_json(StatusCode::BAD_REQUEST, "missing_ids");
    };
    let ids: Vec<&str> = ids.split(',').filter(|id| !id.is_empty()).collect();
    if ids.is_empty() || ids.len() > MAX_RECORD_IDS {
        return error_json(StatusCode::BAD_REQUEST, "bad_ids");
    }
    let body = s.records(ids.iter().copied()).ok();
    data_response(body, q.as_deref())
}

/// An upstream failure page of the kind real services emit by mistake: stack
/// trace, internal host names and personal data. The plugin must mask all of it.
async fn status(Path(code): Path<String>, RawQuery(q): RawQuery) -> Response {
    let Some(status) = code
        .parse::<u16>()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
    else {
        return error_json(StatusCode::NOT_FOUND, "not_found");
    };
    let mut res = if matches!(status.as_u16(), 204 | 205 | 304) {
        let mut res = Response::new(Body::empty());
        *res.status_mut() = status;
        res
    } else {
        let body = format!(
            "{{\"error\":\"db timeout\",\"status\":{},\"stack\":\"at PatientRepo.find (repo.rs:42)\\n  at handlers::patient (main.rs:118)\",\"host\":\"db-7.internal\",\"query\":\"SELECT * FROM patients WHERE id = 'p-1'\",\"patient\":{{\"id\":\"p-1\",\"national_id\":\"999 401 2284\",\"email\":\"eleanor.whitcombe@example.com\"}}}}",
            status.as_u16()
        );
        match Delivery::from_query(q.as_deref()) {
            Ok(d) => d.respond(status, Bytes::from(body)),
            Err(bad) => return bad.into_response(),
        }
    };
    res.headers_mut().insert(
        HeaderName::from_static("x-powered-by"),
        HeaderValue::from_static("axum"),
    );
    res
}

/// What `/echo` saw, in the order it saw it.
#[derive(Serialize)]
struct Echo<'a> {
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    /// `[name, value]` pairs; repeated headers are all kept. Names are lower
    /// case and grouped by name in order of first appearance (the HTTP stack
    /// keeps no finer ordering).
    headers: Vec<[String; 2]>,
    body: String,
}

/// Reflects the request, so tests can check what the plugin forwards upstream.
async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let body = match axum::body::to_bytes(body, ECHO_BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => return error_json(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
    };
    let echo = Echo {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query(),
        headers: headers
            .iter()
            .map(|(n, v)| {
                [
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                ]
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    match serde_json::to_vec(&echo) {
        Ok(json) => ([(CONTENT_TYPE, JSON)], json).into_response(),
        Err(_) => error_json(StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_cover_the_body_in_small_pieces() {
        for len in [0, 1, 6, 7, 100, 5_000, 65_000] {
            let sizes = chunk_sizes(len);
            assert_eq!(sizes.iter().sum::<usize>(), len);
            let (last, rest) = sizes.split_last().unwrap_or((&0, &[]));
            assert!(rest.iter().all(|s| (7..=100).contains(s)));
            assert!(*last <= 100);
        }
        assert!(chunk_sizes(5_000).len() > 50);
    }

    #[test]
    fn query_parsing() {
        let d = Delivery::from_query(Some(
            "chunked=1&gzip=true&ctype=text%2Fhtml%3B+charset%3Dutf-8",
        ))
        .unwrap();
        assert!(d.chunked && d.gzip && !d.dup_ctype);
        assert_eq!(d.ctype.unwrap(), "text/html; charset=utf-8");
        assert!(Delivery::from_query(Some("ctype=a%0Ab")).is_err());
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
