//! Exchanges kept as files: the REQUEST format of `consentry replay`, and its
//! output. A REQUEST file describes one client request, what the upstream answers,
//! the answers to the plugin's outgoing calls, and the time; replaying it runs the
//! real `.wasm` and prints what each side saw.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

use crate::message::{
    Callout, CalloutAnswer, ClientResponse, HeaderList, Peer, Request, Response, UpstreamRequest,
};
use crate::plugin::Plugin;
use crate::proxy::{Outcome, Proxy, StartError};
use crate::world::LogLine;

/// A REQUEST file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    pub request: RequestSpec,
    #[serde(default)]
    pub upstream: Option<ResponseSpec>,
    /// Answers to outgoing calls, keyed by `authority + path`; a call without
    /// an entry fails as an unreachable upstream would.
    #[serde(default)]
    pub callouts: BTreeMap<String, ResponseSpec>,
    /// RFC 3339; absent means the current time.
    #[serde(default)]
    pub now: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    #[serde(default = "default_method")]
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub authority: Option<String>,
    /// A value that is an array is sent once per element.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValue>,
    #[serde(default)]
    pub body: Option<Value>,
    #[serde(default)]
    pub chunks: Option<Vec<String>>,
    #[serde(default)]
    pub body_base64: Option<String>,
    /// Trailers, sent after the body (a value that is an array is sent once per
    /// element).
    #[serde(default)]
    pub trailers: BTreeMap<String, HeaderValue>,
    #[serde(default)]
    pub peer: Option<PeerSpec>,
    #[serde(default)]
    pub source_address: Option<String>,
    #[serde(default)]
    pub http2: bool,
}

fn default_method() -> String {
    "GET".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseSpec {
    #[serde(default = "default_status")]
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderValue>,
    #[serde(default)]
    pub body: Option<Value>,
    #[serde(default)]
    pub chunks: Option<Vec<String>>,
    #[serde(default)]
    pub body_base64: Option<String>,
    /// Trailers, sent after the body (the upstream only).
    #[serde(default)]
    pub trailers: BTreeMap<String, HeaderValue>,
    /// Answer after this many milliseconds (callouts only).
    #[serde(default)]
    pub delay_ms: u64,
}

fn default_status() -> u16 {
    200
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum HeaderValue {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    #[serde(default)]
    pub uri_san: Option<String>,
    #[serde(default)]
    pub uri_sans: Vec<String>,
    #[serde(default)]
    pub cert_sha256: Option<String>,
    #[serde(default)]
    pub certificate: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
}

/// A body from `body` (JSON: a string is sent as that exact text, anything
/// else as its JSON text), `chunks` (texts sent as separate pieces) or
/// `body_base64` (exact bytes); no pieces means no body.
fn body_chunks(
    body: &Option<Value>,
    chunks: &Option<Vec<String>>,
    body_base64: &Option<String>,
) -> Result<Vec<Vec<u8>>> {
    let given = [body.is_some(), chunks.is_some(), body_base64.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        bail!("give only one of body, chunks and body_base64");
    }
    if let Some(chunks) = chunks {
        return Ok(chunks.iter().map(|c| c.as_bytes().to_vec()).collect());
    }
    if let Some(b64) = body_base64 {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .context("body_base64 is not base64")?;
        return Ok(if bytes.is_empty() {
            vec![]
        } else {
            vec![bytes]
        });
    }
    let bytes = match body {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::String(s)) => s.as_bytes().to_vec(),
        Some(v) => serde_json::to_vec(v)?,
    };
    Ok(if bytes.is_empty() {
        vec![]
    } else {
        vec![bytes]
    })
}

fn header_list(headers: &BTreeMap<String, HeaderValue>) -> HeaderList {
    let mut out = Vec::new();
    for (name, value) in headers {
        match value {
            HeaderValue::One(v) => out.push((name.clone(), v.as_bytes().to_vec())),
            HeaderValue::Many(vs) => {
                out.extend(vs.iter().map(|v| (name.clone(), v.as_bytes().to_vec())));
            }
        }
    }
    out
}

impl Exchange {
    pub fn from_json(text: &str) -> Result<Self> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            anyhow!(
                "{}: {}",
                if path == "." {
                    "$".into()
                } else {
                    format!("$.{path}")
                },
                e.inner()
            )
        })
    }

    pub fn client_request(&self) -> Result<Request> {
        let r = &self.request;
        let mut req = Request::new(&r.method, &r.path);
        if let Some(a) = &r.authority {
            req.authority = a.clone();
        }
        req.headers = header_list(&r.headers);
        req.chunks = body_chunks(&r.body, &r.chunks, &r.body_base64).context("$.request")?;
        req.trailers = header_list(&r.trailers);
        if let Some(p) = &r.peer {
            let mut sans = p.uri_sans.clone();
            if let Some(s) = &p.uri_san {
                sans.insert(0, s.clone());
            }
            req.peer = Some(Peer {
                uri_sans: sans,
                cert_sha256: p.cert_sha256.clone(),
                certificate: p.certificate.clone(),
                subject: p.subject.clone(),
            });
        }
        if let Some(a) = &r.source_address {
            req.source_address = a.clone();
        }
        req.http2 = r.http2;
        Ok(req)
    }

    /// What the upstream answers; without an `upstream` entry it answers 200
    /// with an empty JSON object.
    pub fn upstream_response(&self) -> Result<Response> {
        match &self.upstream {
            None => Ok(Response::json(200, "{}")),
            Some(spec) => response_of(spec).context("$.upstream"),
        }
    }

    /// The answers to outgoing calls, keyed by `authority + path`, with their
    /// delays.
    pub fn callout_answers(&self) -> Result<BTreeMap<String, (Response, Duration)>> {
        let mut table = BTreeMap::new();
        for (key, spec) in &self.callouts {
            if !spec.trailers.is_empty() {
                bail!(
                    "$.callouts.{key}.trailers: a call's answer reaches the plugin without trailers"
                );
            }
            let r = response_of(spec).with_context(|| format!("$.callouts.{key}"))?;
            table.insert(key.clone(), (r, Duration::from_millis(spec.delay_ms)));
        }
        Ok(table)
    }

    pub fn time(&self) -> Result<SystemTime> {
        match &self.now {
            None => Ok(SystemTime::now()),
            Some(text) => parse_rfc3339(text),
        }
    }

    /// Runs the exchange through a fresh proxy with `config`.
    pub fn run(&self, plugin: std::sync::Arc<Plugin>, config: &[u8]) -> Result<Replay, StartError> {
        self.run_with_env(plugin, config, &[])
    }

    /// [`Exchange::run`] with environment variables for the VM (the secrets a
    /// configuration names).
    pub fn run_with_env(
        &self,
        plugin: std::sync::Arc<Plugin>,
        config: &[u8],
        env: &[(String, String)],
    ) -> Result<Replay, StartError> {
        let request = self.client_request().map_err(StartError::Load)?;
        let response = self.upstream_response().map_err(StartError::Load)?;
        let now = self.time().map_err(StartError::Load)?;
        let table = self.callout_answers().map_err(StartError::Load)?;
        let mut builder = Proxy::builder(plugin);
        for (k, v) in env {
            builder = builder.env(k, v);
        }
        let mut proxy = builder
            .config(config.to_vec())
            .now(now)
            .callouts(
                move |c: &Callout| match table.get(&format!("{}{}", c.authority, c.path)) {
                    Some((r, delay)) => CalloutAnswer::Respond {
                        response: r.clone(),
                        delay: *delay,
                    },
                    None => CalloutAnswer::Unreachable,
                },
            )
            .start()?;
        let outcome = proxy.send(request, response);
        Ok(Replay::from(outcome))
    }
}

fn response_of(spec: &ResponseSpec) -> Result<Response> {
    let mut r = Response::new(spec.status);
    r.headers = header_list(&spec.headers);
    r.chunks = body_chunks(&spec.body, &spec.chunks, &spec.body_base64)?;
    r.trailers = header_list(&spec.trailers);
    let has_length = r
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
    // A body with trailers goes chunked, as an HTTP/1.1 upstream sends it.
    if !has_length && spec.chunks.is_none() && r.trailers.is_empty() && !r.chunks.is_empty() {
        let len = r.body_bytes().len();
        r.headers
            .push(("content-length".into(), len.to_string().into_bytes()));
    }
    Ok(r)
}

/// RFC 3339 (`2026-11-27T12:00:00Z`, fractions and offsets allowed).
pub fn parse_rfc3339(text: &str) -> Result<SystemTime> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| {
            format!("'{text}' is not an RFC 3339 time such as 2026-11-27T12:00:00Z")
        })?;
    let nanos = t.unix_timestamp_nanos();
    let nanos = u64::try_from(nanos).map_err(|_| anyhow!("'{text}' is before 1970"))?;
    Ok(UNIX_EPOCH + Duration::from_nanos(nanos))
}

/// What `consentry replay` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replay {
    pub client: ClientResponse,
    pub upstream_request: Option<UpstreamRequest>,
    pub logs: Vec<LogLine>,
    pub callouts_made: Vec<Callout>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trap: Option<String>,
}

impl From<Outcome> for Replay {
    fn from(o: Outcome) -> Self {
        Self {
            client: o.client,
            upstream_request: o.upstream_request,
            logs: o.logs,
            callouts_made: o.callouts_made,
            trap: o.trap,
        }
    }
}

/// Reads a configuration written in JSON or YAML and returns it as JSON text,
/// the form the plugin reads. YAML is recognised by the file name or, failing
/// JSON, by content.
pub fn config_as_json(name: &str, text: &str) -> Result<String> {
    let yaml_name = name.ends_with(".yaml") || name.ends_with(".yml");
    if !yaml_name && let Ok(v) = serde_json::from_str::<Value>(text) {
        return Ok(v.to_string());
    }
    if !yaml_name {
        // Not JSON: report the JSON error unless it is valid YAML.
        if let Err(json_err) = serde_json::from_str::<Value>(text)
            && serde_norway::from_str::<Value>(text).is_err()
        {
            bail!("{name} is neither valid JSON nor YAML: {json_err}");
        }
    }
    let v: Value =
        serde_norway::from_str(text).with_context(|| format!("{name} is not valid YAML"))?;
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_file_builds_the_exchange() {
        let x = Exchange::from_json(
            r#"{"request":{"method":"POST","path":"/a","headers":{"x-dup":["1","2"],"authorization":"Bearer t"},
                "chunks":["{\"a\":","1}"],"peer":{"uri_san":"spiffe://x","cert_sha256":"ab"}},
               "upstream":{"status":201,"headers":{"content-type":"application/json"},"body":{"k":[1,2]}},
               "callouts":{"c.example/jwks":{"body":"{}","delay_ms":5}},
               "now":"2026-11-27T12:00:00Z"}"#,
        )
        .unwrap();
        let req = x.client_request().unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.chunks, vec![b"{\"a\":".to_vec(), b"1}".to_vec()]);
        assert_eq!(req.headers.iter().filter(|(n, _)| n == "x-dup").count(), 2);
        assert_eq!(req.peer.unwrap().uri_sans, vec!["spiffe://x".to_string()]);
        let resp = x.upstream_response().unwrap();
        assert_eq!(resp.body_bytes(), br#"{"k":[1,2]}"#);
        assert!(
            resp.headers
                .iter()
                .any(|(n, v)| n == "content-length" && v == b"11")
        );
        assert_eq!(
            x.time()
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_795_780_800
        );
    }

    #[test]
    fn a_string_body_is_sent_as_exact_text_and_bad_files_name_the_place() {
        let x = Exchange::from_json(r#"{"request":{"path":"/"},"upstream":{"body":"{not json"}}"#)
            .unwrap();
        assert_eq!(x.upstream_response().unwrap().body_bytes(), b"{not json");
        let e = Exchange::from_json(r#"{"request":{"path":"/","heders":{}}}"#).unwrap_err();
        assert!(e.to_string().contains("heders"), "{e}");
        let e = Exchange::from_json(r#"{"request":{"path":"/"},"now":"yesterday"}"#)
            .unwrap()
            .time()
            .unwrap_err();
        assert!(e.to_string().contains("RFC 3339"), "{e}");
    }

    #[test]
    fn trailers_follow_the_body_on_both_sides() {
        let x = Exchange::from_json(
            r#"{"request":{"method":"POST","path":"/a","body":"{}","trailers":{"x-sum":"1","x-two":["a","b"]}},
               "upstream":{"body":{"k":1},"trailers":{"grpc-status":"0"}}}"#,
        )
        .unwrap();
        let req = x.client_request().unwrap();
        let names: Vec<&str> = req.trailers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-sum", "x-two", "x-two"]);
        let resp = x.upstream_response().unwrap();
        assert_eq!(
            resp.trailers,
            vec![("grpc-status".to_owned(), b"0".to_vec())]
        );
        // Chunked, as an HTTP/1.1 upstream sends a body with trailers.
        assert!(!resp.headers.iter().any(|(n, _)| n == "content-length"));
        let e = Exchange::from_json(
            r#"{"request":{"path":"/"},"callouts":{"a/b":{"trailers":{"x":"1"}}}}"#,
        )
        .unwrap()
        .callout_answers()
        .unwrap_err();
        assert!(e.to_string().contains("$.callouts.a/b.trailers"), "{e}");
    }

    #[test]
    fn yaml_configurations_become_json() {
        let j = config_as_json("p.yaml", "version: 1\nroutes: []\n").unwrap();
        let v: Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v, serde_json::json!({"version": 1, "routes": []}));
        let j = config_as_json("p.json", r#"{"version":1}"#).unwrap();
        assert_eq!(j, r#"{"version":1}"#);
        assert!(config_as_json("p.json", "{").is_err());
    }
}
