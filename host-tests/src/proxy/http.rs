//! Envoy's HTTP conventions as the proxy applies them around the filter: the
//! request headers its connection manager hands over, the codec's merging of
//! repeated inline headers, local replies' headers, and what the client finally
//! receives (`date`, `server`, hop-by-hop headers gone, framing checked).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::message::{ClientFault, ClientResponse, HeaderList, Request};
use crate::vm::LocalReplyCall;

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
pub(super) fn merge_inline(headers: HeaderList, inline: &[&str]) -> HeaderList {
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
pub(super) fn hcm_request_headers(r: &Request, request_id: &str) -> HeaderList {
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
    // With trailers it can only send the body chunked.
    let framed = extra
        .iter()
        .any(|(n, _)| n == "content-length" || n == "transfer-encoding");
    if !r.http2 && !framed && !r.trailers.is_empty() {
        extra.push(("transfer-encoding".into(), b"chunked".to_vec()));
    } else if !r.http2 && !framed && !r.chunks.is_empty() {
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

/// The headers Envoy builds for a local reply: the plugin's, plus
/// `content-length`, plus `content-type: text/plain` for a body without one.
pub(super) fn local_reply_headers(reply: &LocalReplyCall) -> HeaderList {
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

/// An IMF-fixdate (`Fri, 27 Nov 2026 08:00:00 GMT`), as Envoy writes `date`.
pub(super) fn http_date(now: SystemTime) -> Vec<u8> {
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
pub(super) fn finalize_headers(mut headers: HeaderList, now: SystemTime) -> (u16, HeaderList) {
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
pub(super) fn with_length_check(mut client: ClientResponse, head: bool) -> ClientResponse {
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
