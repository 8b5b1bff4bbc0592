//! `proxy_get_property` in Envoy's attribute encoding: strings as raw bytes,
//! integers as 8-byte little-endian, booleans as one byte, maps in the pairs
//! encoding. Request attributes vanish once the request headers were continued
//! (and come back in `on_log`), exactly as in Envoy 1.40.

use crate::abi::{Status, encode_pairs};
use crate::vm::{Access, HostState};

fn int(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn text(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Joins repeated headers with `,` as Envoy's `request.headers` does.
fn joined(headers: &[(String, Vec<u8>)], name: &str) -> Option<Vec<u8>> {
    let values: Vec<&[u8]> = headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
        .collect();
    (!values.is_empty()).then(|| values.join(&b","[..]))
}

fn header_map(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut names: Vec<&str> = Vec::new();
    for (n, _) in headers {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    let values: Vec<(String, Vec<u8>)> = names
        .iter()
        .map(|n| ((*n).to_owned(), joined(headers, n).unwrap_or_default()))
        .collect();
    encode_pairs(values.iter().map(|(n, v)| (n.as_str(), v.as_slice())))
}

fn port(address: &str) -> Option<u64> {
    address.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

pub fn get(state: &mut HostState, raw_path: &[u8]) -> Result<Vec<u8>, Status> {
    if raw_path.is_empty() {
        return Err(Status::SerializationFailure);
    }
    if let Some(v) = state.properties.get(raw_path) {
        return Ok(v.clone());
    }
    let tokens: Vec<String> = raw_path
        .split(|b| *b == 0)
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .collect();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let settings = state.settings.clone();
    match tokens.as_slice() {
        ["plugin_name"] => return Ok(text(&settings.plugin_name)),
        ["plugin_root_id"] => return Ok(text(&settings.root_id)),
        ["plugin_vm_id"] => return Ok(text(&settings.vm_id)),
        ["xds", "cluster_name"] => return Ok(text(&settings.cluster_name)),
        ["xds", "route_name"] => return Ok(text(&settings.route_name)),
        ["xds", "listener_direction"] => return Ok(int(0)),
        ["metadata"] => return Ok(Vec::new()),
        ["request"] | ["response"] | ["filter_state"] | ["connection"] | ["source"] => {
            return Err(Status::SerializationFailure);
        }
        _ => {}
    }
    let Some(s) = state.streams.get(&state.effective) else {
        return Err(Status::NotFound);
    };
    let tls = s.peer.is_some();
    let request_readable = s.request_map == Access::Open;
    let headers = &s.request_headers;
    let first = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let path_value = first(":path").unwrap_or_default();
    let path_text = String::from_utf8_lossy(&path_value).into_owned();
    let found = match tokens.as_slice() {
        ["source", "address"] => Some(text(&s.source_address)),
        ["source", "port"] => port(&s.source_address).map(int),
        ["destination", "address"] => Some(text(&s.destination_address)),
        ["destination", "port"] => port(&s.destination_address).map(int),
        ["connection", "id"] => Some(int(s.connection_id)),
        ["connection", "mtls"] => Some(vec![u8::from(tls)]),
        ["connection", "requested_server_name"] => Some(Vec::new()),
        ["connection", "tls_version"] if tls => Some(text("TLSv1.3")),
        ["connection", "uri_san_peer_certificate"] => s
            .peer
            .as_ref()
            .and_then(|p| p.uri_sans.first())
            .map(|u| text(u)),
        ["connection", "sha256_peer_certificate_digest"] => s
            .peer
            .as_ref()
            .and_then(|p| p.cert_sha256.as_deref())
            .map(|d| text(&d.to_ascii_lowercase())),
        ["connection", "peer_certificate"] => s
            .peer
            .as_ref()
            .and_then(|p| p.certificate.as_deref())
            .map(text),
        ["connection", "subject_peer_certificate"] => {
            s.peer.as_ref().and_then(|p| p.subject.as_deref()).map(text)
        }
        ["request", "protocol"] => Some(text(s.protocol)),
        ["request", "time"] => Some(int(s.request_time_ns)),
        ["request", "size"] => Some(int(0)),
        ["request", "headers"] => Some(if request_readable {
            header_map(headers)
        } else {
            encode_pairs(std::iter::empty())
        }),
        ["request", rest @ ..] if !request_readable => {
            let _ = rest;
            None
        }
        ["request", "path"] => Some(path_value.clone()),
        ["request", "url_path"] => Some(text(path_text.split('?').next().unwrap_or_default())),
        ["request", "query"] => path_text.split_once('?').map(|(_, q)| text(q)),
        ["request", "host"] => first(":authority"),
        ["request", "scheme"] => first(":scheme"),
        ["request", "method"] => first(":method"),
        ["request", "id"] => first("x-request-id"),
        ["request", "referer"] => first("referer"),
        ["request", "useragent"] => first("user-agent"),
        // A header-map lookup: `host` is the alias of `:authority`.
        ["request", "headers", name] => match name.to_ascii_lowercase().as_str() {
            "host" => joined(headers, ":authority"),
            lower => joined(headers, lower),
        },
        ["response", "code"] => s.response_code.map(|c| int(u64::from(c))),
        ["response", "code_details"] => s.response_code_details.as_deref().map(text),
        ["response", "flags"] => Some(int(0)),
        ["response", "grpc_status"] => s.response_code.map(|_| int(2)),
        ["response", "headers"] => Some(if s.response_map == Access::Open {
            header_map(&s.response_headers)
        } else {
            encode_pairs(std::iter::empty())
        }),
        ["response", "trailers"] => Some(encode_pairs(std::iter::empty())),
        _ => None,
    };
    found.ok_or(Status::NotFound)
}
