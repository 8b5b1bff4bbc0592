//! The plugin on every protocol path Envoy offers a client: HTTP/1.1 with a chunked body
//! and trailers, cleartext HTTP/2 (h2c, prior knowledge) and HTTP/2 over TLS (ALPN h2,
//! with a client certificate, `consentry-mtls.yaml`).
//!
//! First the bypasses reported against the plugin ([`attacks`]): request trailers (and body) that
//! arrive while the request is held for a fetch through the consent service (a JWKS
//! refetch for an unknown `kid`, a status list), and trailers on the body-minimising
//! route. The upstream and the consent service sit behind recording relays
//! ([`tap`]), so each test says exactly what the upstream received: nothing at all for
//! a refused request, only the minimised body for an allowed one; and provenance forged
//! in request trailers, which must not reach the upstream either. Then the product's key
//! scenarios over HTTP/2 ([`scenarios`]): the golden views, refusals and withheld answers; an answer the
//! upstream cuts off (never a complete success at the client), and a stream Envoy
//! resets (a failed response at the client, a `reset` audit record).
//!
//! Every scenario gets a fresh Envoy per protocol: nothing (keys, status lists, refetch
//! intervals) carries over from one protocol's run to the next.

mod attacks;
mod scenarios;
mod tap;

use std::thread;
use std::time::Duration;

use consentry_envoy::RunningEnvoy;
use consentry_envoy::h2::{
    Failure, H2Client, H2Failure, H2Request, H2Response, H2Result, TlsOptions,
};
use consentry_example_service::RunningService;
use consentry_host::mint;
use serde_json::Value;

use self::tap::{Behaviour, Tap};
use crate::support::*;
use crate::tls::Pki;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    /// HTTP/1.1, the body chunked, trailers after the last chunk.
    Http1,
    /// Cleartext HTTP/2 with prior knowledge.
    H2c,
    /// HTTP/2 over TLS with a client certificate.
    H2Tls,
}

const ALL: [Proto; 3] = [Proto::Http1, Proto::H2c, Proto::H2Tls];
const HTTP2: [Proto; 2] = [Proto::H2c, Proto::H2Tls];

/// The value of every provenance header (and trailer) a client forges. (The purpose
/// header, `x-consent-purpose`, is also the client's way to ask for a purpose: a
/// forged value there is a purpose nobody consented to, refused as such.)
const FORGED: &str = "forged-by-the-client";
const FORGED_PROVENANCE: [&str; 3] = ["x-consent-id", "x-consent-decision", "x-consent-grantee"];
/// How long the slow consent service holds each request Envoy sends it: far longer
/// than a client takes to send a whole request (well under 100 ms here), so the
/// request's body and trailers arrive while it is held for the fetch.
const SLOW: Duration = Duration::from_millis(600);

/// A client's answer: complete, or a failure with what had arrived.
type Answer = H2Result;

/// The example service behind two recording relays (as the upstream, and as the
/// consent service), and one Envoy that speaks `proto` to its clients.
struct Rig {
    // Dropped first: Envoy stops before what it talks to.
    envoy: RunningEnvoy,
    proto: Proto,
    h2: Option<H2Client>,
    upstream: Tap,
    consent: Tap,
    _service: RunningService,
}

#[derive(Default)]
struct Setup {
    consent: Behaviour,
    upstream: Behaviour,
    /// Entries of status list 1 set to "revoked" before Envoy starts.
    revoked: Vec<usize>,
    policy: Option<Value>,
}

impl Rig {
    fn start(proto: Proto, setup: Setup) -> Self {
        let service = example_service(60);
        for idx in &setup.revoked {
            admin_put(&service, &format!("/admin/statuslists/1/{idx}"), b"1");
        }
        let upstream = Tap::start(service.addr(), setup.upstream);
        let consent = Tap::start(service.addr(), setup.consent);
        let policy = setup.policy.unwrap_or_else(example_policy);
        require_prerequisites();
        let builder = consentry_envoy::Envoy::builder()
            .upstream_port(upstream.port())
            .var("CONSENT_PORT", consent.port())
            // Keep the client's request ids: the records are found by them.
            .var("PRESERVE_REQUEST_ID", "true")
            .plugin_config_json(&policy.to_string());
        let (envoy, h2) = match proto {
            Proto::Http1 => (start(builder), None),
            Proto::H2c => {
                let envoy = start(builder);
                let client = H2Client::cleartext(envoy.listen_addr());
                (envoy, Some(client))
            }
            Proto::H2Tls => {
                let pki = Pki::generate("Consentry protocols CA").unwrap();
                let caller = pki
                    .client("caller", &["spiffe://partner.example/ns/claims/sa/insurer"])
                    .unwrap();
                let dir = tempfile::tempdir().unwrap();
                pki.write_server_files(dir.path()).unwrap();
                let builder = builder
                    .template("consentry-mtls.yaml")
                    .var("TLS_DIR", dir.path().display());
                let envoy = start(builder);
                let options = TlsOptions {
                    ca_pem: &pki.ca.cert_pem,
                    client: Some((&caller.cert_pem, &caller.key_pem)),
                    server_name: "localhost",
                };
                let client = H2Client::tls(envoy.listen_addr(), options).unwrap();
                (envoy, Some(client))
            }
        };
        Self {
            envoy,
            proto,
            h2,
            upstream,
            consent,
            _service: service,
        }
    }

    fn send(&self, request: &H2Request) -> Answer {
        self.send_all(std::slice::from_ref(request)).remove(0)
    }

    /// At once: concurrent streams of one HTTP/2 connection, or one HTTP/1.1
    /// connection each.
    fn send_all(&self, requests: &[H2Request]) -> Vec<Answer> {
        if let Some(client) = &self.h2 {
            return client.send_concurrently(requests);
        }
        let base = self.envoy.base_url();
        thread::scope(|s| {
            let sent: Vec<_> = requests
                .iter()
                .map(|r| s.spawn(|| send_http1(&base, r)))
                .collect();
            sent.into_iter().map(|t| t.join().unwrap()).collect()
        })
    }

    /// The audit records of `request_id`, once its stream has surely ended: a later
    /// request's record is in the log.
    fn records_of(&self, request_id: &str) -> Vec<Value> {
        let sentinel = format!("{request_id}-then");
        let r = complete(
            self.send(&H2Request::new("GET", "/patients/p-1").header("x-request-id", &sentinel)),
        );
        assert_eq!(r.status, 401, "the sentinel request: {}", text(&r));
        let records = poll(Duration::from_secs(5), Duration::from_millis(20), || {
            let all = audit_records(&self.envoy);
            all.iter()
                .any(|r| r["request_id"] == sentinel.as_str())
                .then_some(all)
        })
        .unwrap_or_else(|| panic!("no audit record for {sentinel}"));
        records
            .into_iter()
            .filter(|r| r["request_id"] == request_id)
            .collect()
    }

    /// Exactly one record for `request_id`, with this outcome, status and code.
    fn assert_one_record(&self, request_id: &str, outcome: &str, status: u16, code: &str) {
        let records = self.records_of(request_id);
        assert_eq!(
            records.len(),
            1,
            "{:?} {request_id}: {records:#?}",
            self.proto
        );
        let r = &records[0];
        assert_eq!(
            (
                r["kind"].as_str(),
                r["outcome"].as_str(),
                r["status"].as_u64(),
                r["code"].as_str()
            ),
            (
                Some("decision"),
                Some(outcome),
                Some(u64::from(status)),
                Some(code)
            ),
            "{:?} {request_id}: {r}",
            self.proto
        );
    }

    /// No header the upstream received carries a value the client forged, and none
    /// of `secrets` reached it at all.
    fn assert_upstream_clean(&self, secrets: &[&str]) {
        let raw = String::from_utf8_lossy(&self.upstream.raw()).into_owned();
        for s in secrets {
            assert!(
                !raw.contains(s),
                "{:?}: {s:?} reached the upstream:\n{raw}",
                self.proto
            );
        }
        for r in self.upstream.requests() {
            assert!(
                r.headers.iter().all(|(_, v)| !v.contains(FORGED)),
                "{:?}: a forged header reached the upstream: {:?}",
                self.proto,
                r.headers
            );
        }
    }
}

/// HTTP/1.1: a body (or trailers) goes chunked, one HTTP chunk per chunk, trailers
/// after the last. A connection that ends before a whole response is a failure (the
/// HTTP/1.1 form of a reset).
fn send_http1(base: &str, r: &H2Request) -> Answer {
    let mut headers: Vec<(&str, &str)> = r
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let mut body = None;
    if !r.chunks.is_empty() || r.trailers.is_some() {
        headers.push(("transfer-encoding", "chunked"));
        let mut wire = Vec::new();
        for chunk in r.chunks.iter().filter(|c| !c.is_empty()) {
            wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n");
        for (n, v) in r.trailers.iter().flatten() {
            wire.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        body = Some(wire);
    }
    match consentry_envoy::send(
        &r.method,
        &format!("{base}{}", r.path),
        &headers,
        body.as_deref(),
    ) {
        Ok(h) => Ok(H2Response {
            status: h.status,
            headers: h.headers,
            body: h.body,
            trailers: None,
        }),
        Err(e) => Err(H2Failure {
            failure: match format!("{e:#}") {
                e if e.contains("timed out") => {
                    Failure::TimedOut(consentry_envoy::http::DEFAULT_TIMEOUT)
                }
                e => Failure::ConnectionLost(e),
            },
            status: None,
            headers: Vec::new(),
            body: Vec::new(),
        }),
    }
}

fn complete(answer: Answer) -> H2Response {
    answer.unwrap_or_else(|f| panic!("no complete response: {f}"))
}

fn text(r: &H2Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// A claims-search body with fields outside the route's allow-list.
const CLAIMS_SEARCH: &str = r#"{"claim_id":"c-77","national_id":"SECRET-NID-1","invoice_ids":["inv-1","inv-2"],"notes":"SECRET-NOTES-2","period":{"from":"2026-01","to":"2026-03"}}"#;
const CLAIMS_SEARCH_SECRETS: [&str; 2] = ["SECRET-NID-1", "SECRET-NOTES-2"];

/// A token in the issuer's name, signed with a key the issuer never published, under a
/// `kid` nobody knows: the plugin refetches the issuer's JWKS before refusing it.
fn forged_token() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    mint::sign(
        &Value::Object(claims("insurer")),
        key.serialize_pem().as_bytes(),
        "attacker-2026",
        mint::Alg::ES256,
    )
    .unwrap()
}
