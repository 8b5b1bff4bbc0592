//! The plugin on every protocol path Envoy offers a client: HTTP/1.1 with a chunked body
//! and trailers, cleartext HTTP/2 (h2c, prior knowledge) and HTTP/2 over TLS (ALPN h2,
//! with a client certificate, `consentry-mtls.yaml`).
//!
//! First the bypasses reported against the plugin: request trailers (and body) that
//! arrive while the request is held for a fetch through the consent service (a JWKS
//! refetch for an unknown `kid`, a status list), and trailers on the body-minimising
//! route. The upstream and the consent service sit behind recording relays
//! ([`tap`]), so each test says exactly what the upstream received: nothing at all for
//! a refused request, only the minimised body for an allowed one; and provenance forged
//! in request trailers, which must not reach the upstream either. Then the product's key
//! scenarios over HTTP/2: the golden views, refusals and withheld answers; an answer the
//! upstream cuts off (never a complete success at the client), and a stream Envoy
//! resets (a failed response at the client, a `reset` audit record).
//!
//! Every scenario gets a fresh Envoy per protocol: nothing (keys, status lists, refetch
//! intervals) carries over from one protocol's run to the next.

mod tap;

use std::thread;
use std::time::{Duration, SystemTime};

use consentry_envoy::RunningEnvoy;
use consentry_envoy::h2::{
    Failure, H2Client, H2Failure, H2Request, H2Response, H2Result, TlsOptions,
};
use consentry_example_service::RunningService;
use consentry_host::mint;
use serde_json::{Value, json};

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

/// `body` in pieces of `size` bytes (splits fall inside keys, strings and numbers).
fn pieces(body: &str, size: usize) -> Vec<Vec<u8>> {
    body.as_bytes().chunks(size).map(<[u8]>::to_vec).collect()
}

/// A request as an attacker sends it: forged provenance headers, the body in small
/// pieces, and trailers that forge provenance too.
fn attack(
    method: &str,
    path: &str,
    token: &str,
    id: &str,
    content_type: &str,
    body: &str,
) -> H2Request {
    let mut r = H2Request::new(method, path)
        .header("authorization", &bearer(token))
        .header("x-request-id", id)
        .header("content-type", content_type);
    for name in FORGED_PROVENANCE {
        r = r.header(name, FORGED);
    }
    r.chunks(pieces(body, 16))
        .trailers(&[("x-checksum", "sha-256=:abc:"), ("x-consent-id", FORGED)])
        .gap(Duration::from_millis(5))
}

/// A claims-search body with fields outside the route's allow-list.
const CLAIMS_SEARCH: &str = r#"{"claim_id":"c-77","national_id":"SECRET-NID-1","invoice_ids":["inv-1","inv-2"],"notes":"SECRET-NOTES-2","period":{"from":"2026-01","to":"2026-03"}}"#;
const CLAIMS_SEARCH_SECRETS: [&str; 2] = ["SECRET-NID-1", "SECRET-NOTES-2"];

fn minimised_claims_search() -> Value {
    json!({"claim_id": "c-77", "invoice_ids": ["inv-1", "inv-2"], "period": {"from": "2026-01", "to": "2026-03"}})
}

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

fn statuslist_fetches(rig: &Rig) -> usize {
    rig.consent
        .requests()
        .iter()
        .filter(|r| r.path() == "/statuslists/1")
        .count()
}

// ── (a) an unknown kid: held for a JWKS refetch while body and trailers arrive ─────

#[test]
fn a_forged_token_held_for_a_key_refetch_gets_401_and_the_upstream_nothing() {
    let _watchdog = watchdog("protocols: forged token", Duration::from_secs(120));
    for proto in ALL {
        let rig = Rig::start(
            proto,
            Setup {
                consent: Behaviour {
                    delay: SLOW,
                    ..Behaviour::default()
                },
                ..Setup::default()
            },
        );
        let id = format!("forged-{proto:?}");
        let r = rig.send(&attack(
            "POST",
            "/echo",
            &forged_token(),
            &id,
            "application/json",
            CLAIMS_SEARCH,
        ));
        let r = complete(r);
        assert_problem(&r.to_http(), 401, "token_invalid");
        rig.assert_one_record(&id, "refused", 401, "token_invalid");
        assert!(
            rig.upstream.raw().is_empty(),
            "{proto:?}: the upstream received:\n{}",
            String::from_utf8_lossy(&rig.upstream.raw())
        );
        // The request was held for the refetch, which went out through the consent
        // service.
        assert!(
            counter(&rig.envoy, "token.refetch") >= 1,
            "{proto:?}: {:#?}",
            counters(&rig.envoy)
        );
        let jwks = rig
            .consent
            .requests()
            .iter()
            .filter(|r| r.path() == "/.well-known/jwks.json")
            .count();
        assert!(
            jwks >= 1,
            "{proto:?}: no JWKS fetch reached the consent service"
        );
        assert!(!rig.envoy.log().contains("Uncaught RuntimeError"));
    }
}

// ── (b) a status list being fetched from a slow consent service ─────────────────────

#[test]
fn requests_held_for_a_slow_status_list_are_still_checked_for_revocation() {
    let _watchdog = watchdog("protocols: slow status list", Duration::from_secs(120));
    let golden =
        std::fs::read(consentry_envoy::project_root().join("examples/views/insurer-p-1.json"))
            .unwrap();
    for proto in ALL {
        // The insurer's consent (entry 0) is revoked; a renewed one (entry 4) is valid.
        let rig = Rig::start(
            proto,
            Setup {
                consent: Behaviour {
                    delay: SLOW,
                    ..Behaviour::default()
                },
                revoked: vec![0],
                ..Setup::default()
            },
        );
        let revoked = sign(&claims("insurer"));
        let mut renewed = claims("insurer");
        renewed.insert("jti".into(), "consent-insurer-acme-p-1-renewed".into());
        renewed["status"]["status_list"]["idx"] = 4.into();
        let renewed = sign(&renewed);
        let (revoked_id, valid_id) = (format!("revoked-{proto:?}"), format!("renewed-{proto:?}"));
        let answers = rig.send_all(&[
            attack(
                "POST",
                "/echo",
                &revoked,
                &revoked_id,
                "application/json",
                CLAIMS_SEARCH,
            ),
            attack(
                "GET",
                "/patients/p-1",
                &renewed,
                &valid_id,
                "application/json",
                "{\"page\":1}",
            ),
        ]);
        let [refused, served] = [&answers[0], &answers[1]].map(|a| complete(a.clone()));
        assert_problem(&refused.to_http(), 403, "consent_revoked");
        assert_eq!(served.status, 200, "{proto:?}: {}", text(&served));
        let mut view = served.body.clone();
        view.push(b'\n');
        assert!(
            view == golden,
            "{proto:?}: the insurer's view differs from its golden file:\n{}",
            text(&served)
        );
        assert_eq!(served.to_http().content_length(), Some(served.body.len()));

        rig.assert_one_record(&revoked_id, "refused", 403, "consent_revoked");
        rig.assert_one_record(&valid_id, "released", 200, "ok");
        // One fetch served both; only the valid request went upstream, with the
        // plugin's provenance and nothing the client forged.
        assert_eq!(statuslist_fetches(&rig), 1, "{proto:?}");
        let received = rig.upstream.requests();
        assert_eq!(received.len(), 1, "{proto:?}: {received:#?}");
        assert_eq!(received[0].path(), "/patients/p-1");
        assert_eq!(
            received[0].header("x-consent-id"),
            Some("consent-insurer-acme-p-1-renewed")
        );
        rig.assert_upstream_clean(&CLAIMS_SEARCH_SECRETS);
    }
}

// ── (c) the body-minimising route, with trailers ─────────────────────────────────────

/// Response headers a client may see on the claims-search route: the route's
/// allow-list, what the protocol needs, and what Envoy adds after the filter.
const RESPONSE_HEADERS: [&str; 10] = [
    "content-type",
    "content-length",
    "transfer-encoding",
    "etag",
    "last-modified",
    // The plugin's own, on every answer it releases.
    "cache-control",
    "x-content-type-options",
    "date",
    "server",
    "connection",
];

#[test]
fn the_minimising_route_sends_only_the_minimised_body_and_no_trailers() {
    let _watchdog = watchdog("protocols: minimised body", Duration::from_secs(120));
    for proto in ALL {
        let rig = Rig::start(proto, Setup::default());
        let token = sign(&claims("insurer"));
        let id = format!("minimised-{proto:?}");
        let r = complete(rig.send(&attack(
            "POST",
            "/echo?from=2026-01&debug=1",
            &token,
            &id,
            "application/json",
            CLAIMS_SEARCH,
        )));
        assert_eq!(r.status, 200, "{proto:?}: {}", text(&r));
        for (name, _) in &r.headers {
            assert!(
                RESPONSE_HEADERS.contains(&name.to_ascii_lowercase().as_str()),
                "{proto:?}: {name} reached the client: {:?}",
                r.headers
            );
        }
        // The upstream's own `server` and `cache-control` do not show.
        assert_eq!(r.header("server"), Some("envoy"), "{proto:?}");
        assert_eq!(
            r.header("cache-control"),
            Some("private, no-store"),
            "{proto:?}"
        );
        assert!(r.trailers.is_none(), "{proto:?}: {:?}", r.trailers);
        // The echo is what the upstream saw: the minimised body.
        let echo: Value = serde_json::from_slice(&r.body).unwrap();
        let echoed: Value = serde_json::from_str(echo["body"].as_str().unwrap()).unwrap();
        assert_eq!(echoed, minimised_claims_search(), "{proto:?}");

        let received = rig.upstream.requests();
        assert_eq!(received.len(), 1, "{proto:?}: {received:#?}");
        let up = &received[0];
        assert_eq!(
            (up.method.as_str(), up.target.as_str()),
            ("POST", "/echo?from=2026-01")
        );
        let body: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(body, minimised_claims_search(), "{proto:?}");
        assert!(
            up.trailers.as_ref().is_none_or(Vec::is_empty),
            "{proto:?}: trailers went upstream: {:?}",
            up.trailers
        );
        assert_eq!(up.header("x-consent-id"), Some("consent-insurer-acme-p-1"));
        rig.assert_upstream_clean(&CLAIMS_SEARCH_SECRETS);
        rig.assert_one_record(&id, "released", 200, "ok");

        // A body that is not JSON cannot be minimised: refused, and nothing goes up.
        let id = format!("text-{proto:?}");
        let r = complete(rig.send(&attack(
            "POST",
            "/echo",
            &token,
            &id,
            "text/plain",
            "claim c-77 SECRET-NID-1",
        )));
        assert_problem(&r.to_http(), 400, "bad_request");
        assert_eq!(rig.upstream.requests().len(), 1, "{proto:?}");
        rig.assert_one_record(&id, "refused", 400, "bad_request");
        rig.assert_upstream_clean(&CLAIMS_SEARCH_SECRETS);
    }
}

// ── forged provenance in request trailers ───────────────────────────────────────────

/// Trailers are header fields that come after the body: a client that cannot forge
/// a provenance or identity header must not forge it as a trailer either. Checked on
/// the route that does not minimise the body (the trailers would otherwise pass as
/// they came), for a request held for the status list and for one decided at once.
#[test]
fn forged_provenance_in_request_trailers_never_reaches_the_upstream() {
    let _watchdog = watchdog("protocols: forged trailers", Duration::from_secs(120));
    let mut leaks = Vec::new();
    for proto in ALL {
        let rig = Rig::start(
            proto,
            Setup {
                consent: Behaviour {
                    delay: SLOW,
                    ..Behaviour::default()
                },
                ..Setup::default()
            },
        );
        let token = sign(&claims("insurer"));
        for when in ["held", "at-once"] {
            let id = format!("trailers-{when}-{proto:?}");
            let request = H2Request::new("GET", "/patients/p-1")
                .header("authorization", &bearer(&token))
                .header("x-request-id", &id)
                .body("{}")
                .trailers(&[
                    ("x-consent-id", FORGED),
                    ("x-consent-grantee", FORGED),
                    ("x-forwarded-client-cert", FORGED),
                ]);
            let r = complete(rig.send(&request));
            assert_eq!(r.status, 200, "{proto:?} {when}: {}", text(&r));
            rig.assert_one_record(&id, "released", 200, "ok");
        }
        let received = rig.upstream.requests();
        assert_eq!(received.len(), 2, "{proto:?}: {received:#?}");
        for r in &received {
            let forged: Vec<_> = r
                .trailers
                .iter()
                .flatten()
                .filter(|(_, v)| v.contains(FORGED))
                .collect();
            if !forged.is_empty() {
                leaks.push(format!(
                    "{}: {forged:?}",
                    r.header("x-request-id").unwrap_or_default()
                ));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "forged trailers reached the upstream:\n{}",
        leaks.join("\n")
    );
}

// ── the product's key scenarios over HTTP/2 ──────────────────────────────────────────

#[test]
fn each_personas_golden_view_over_h2c_and_h2_over_tls() {
    let _watchdog = watchdog("protocols: views", Duration::from_secs(120));
    let dir = consentry_envoy::project_root()
        .join("examples")
        .join("views");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "golden views in {}: {files:?}",
        dir.display()
    );
    let mut requests = Vec::new();
    for path in &files {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let (persona, n) = name.rsplit_once("-p-").unwrap();
        let token = mint::persona_token(persona, SystemTime::now()).unwrap();
        requests.push(
            H2Request::new("GET", &format!("/patients/p-{n}"))
                .header("authorization", &bearer(&token))
                .header("x-request-id", &format!("view-{persona}-p-{n}")),
        );
    }
    for proto in HTTP2 {
        let rig = Rig::start(proto, Setup::default());
        // All at once, as concurrent streams of one connection.
        let answers = rig.send_all(&requests);
        for (path, answer) in files.iter().zip(answers) {
            let r = complete(answer);
            let golden = std::fs::read(path).unwrap();
            let status = serde_json::from_slice::<Value>(&golden).unwrap()["status"]
                .as_u64()
                .unwrap_or(200);
            let mut view = r.body.clone();
            view.push(b'\n');
            assert!(
                u64::from(r.status) == status && view == golden,
                "{proto:?} {}: got {} with\n{}",
                path.display(),
                r.status,
                text(&r)
            );
            assert_eq!(
                r.to_http().content_length(),
                Some(r.body.len()),
                "{proto:?} {}",
                path.display()
            );
        }
    }
}

/// The example policy and a route to the example service's failure pages, open to
/// insurers.
fn policy_with_failures() -> Value {
    let mut policy = example_policy();
    let routes = policy["routes"].as_array_mut().unwrap();
    let mut status = routes
        .iter()
        .find(|r| r["name"] == "patient-billing")
        .unwrap()
        .clone();
    status["name"] = "failure-page".into();
    status["path"] = "/status/{code}".into();
    status["rules"] = json!([{
        "name": "insurers",
        "purposes": ["claims"],
        "partners": ["insurers"],
        "consent_actions": ["read"],
        "release": ["billing"]
    }]);
    routes.push(status);
    policy
}

#[test]
fn refusals_and_withheld_answers_keep_their_codes_over_h2c_and_h2_over_tls() {
    let _watchdog = watchdog("protocols: refusals", Duration::from_secs(120));
    let insurer = sign(&claims("insurer"));
    let mut expired = claims("insurer");
    expired.insert("exp".into(), (unix_now() - 600).into());
    expired.insert("iat".into(), (unix_now() - 1200).into());
    let expired = sign(&expired);
    let get = |path: &str, token: Option<&str>| {
        let r = H2Request::new("GET", path);
        match token {
            Some(t) => r.header("authorization", &bearer(t)),
            None => r,
        }
    };
    let cases: Vec<(&str, H2Request, u16, &str)> = vec![
        ("no token", get("/patients/p-1", None), 401, "token_missing"),
        (
            "not a token",
            get("/patients/p-1", Some("not.a.jwt")),
            401,
            "token_invalid",
        ),
        (
            "forged",
            get("/patients/p-1", Some(&forged_token())),
            401,
            "token_invalid",
        ),
        (
            "expired",
            get("/patients/p-1", Some(&expired)),
            401,
            "token_expired",
        ),
        (
            "another patient",
            get("/patients/p-2", Some(&insurer)),
            403,
            "access_denied",
        ),
        (
            "upstream 500",
            get("/status/500", Some(&insurer)),
            502,
            "upstream_error",
        ),
        (
            "upstream 503",
            get("/status/503", Some(&insurer)),
            502,
            "upstream_error",
        ),
        (
            "html",
            get("/patients/p-1?ctype=text/html", Some(&insurer)),
            502,
            "unsafe_response",
        ),
        (
            "gzip",
            get("/patients/p-1?gzip=1", Some(&insurer)),
            502,
            "unsafe_response",
        ),
    ];
    let requests: Vec<H2Request> = cases.iter().map(|c| c.1.clone()).collect();
    for proto in HTTP2 {
        let rig = Rig::start(
            proto,
            Setup {
                policy: Some(policy_with_failures()),
                ..Setup::default()
            },
        );
        // The status list is in before the burst.
        assert_eq!(
            complete(rig.send(&get("/patients/p-1", Some(&insurer)))).status,
            200
        );
        let answers = rig.send_all(&requests);
        for ((name, _, status, code), answer) in cases.iter().zip(answers) {
            let r = complete(answer);
            let body = assert_problem(&r.to_http(), *status, code);
            // The upstream's failure page (a stack trace, a host name, a national id)
            // and its data never show.
            for leak in ["db-7.internal", "999 401 2284", "Whitcombe", "axum"] {
                assert!(
                    !text(&r).contains(leak) && !format!("{:?}", r.headers).contains(leak),
                    "{proto:?} {name}: {body}"
                );
            }
        }
        assert!(!rig.envoy.log().contains("Uncaught RuntimeError"));
    }
}

/// An upstream that dies a few bytes into its answer, after its headers: the plugin
/// holds them, so what the client gets is Envoy's own 502 (sent straight to the
/// client, past the filters) or a failed response; never a byte of the upstream's
/// body, and never a complete success. The audit record says it was withheld.
#[test]
fn an_answer_the_upstream_cuts_off_never_completes_as_a_success() {
    let _watchdog = watchdog("protocols: cut off", Duration::from_secs(120));
    for proto in ALL {
        let rig = Rig::start(
            proto,
            Setup {
                upstream: Behaviour {
                    cut_after_body_bytes: Some(40),
                    ..Behaviour::default()
                },
                ..Setup::default()
            },
        );
        let id = format!("cut-off-{proto:?}");
        let request = H2Request::new("GET", "/patients/p-1")
            .header("authorization", &bearer(&sign(&claims("insurer"))))
            .header("x-request-id", &id);
        let received = match rig.send(&request) {
            Ok(r) => {
                assert_eq!(r.status, 502, "{proto:?}: {}", text(&r));
                r.body
            }
            Err(f) => {
                assert!(f.is_reset(), "{proto:?}: {f}");
                f.body
            }
        };
        let received = String::from_utf8_lossy(&received);
        for upstream_byte in ["resourceType", "p-1", "Whitcombe"] {
            assert!(!received.contains(upstream_byte), "{proto:?}: {received}");
        }
        assert!(
            !rig.upstream.raw().is_empty(),
            "{proto:?}: the upstream was never asked"
        );
        rig.assert_one_record(&id, "withheld", 502, "ok");
    }
}

/// A stream Envoy itself resets (an HTTP/2 request whose body is shorter than its
/// `content-length`: a protocol error) reaches the client as a failed response, the
/// held request never reaches the upstream, and the audit record says `reset`.
#[test]
fn a_stream_envoy_resets_is_a_failed_response_and_a_reset_record() {
    let _watchdog = watchdog("protocols: reset", Duration::from_secs(120));
    for proto in HTTP2 {
        let rig = Rig::start(proto, Setup::default());
        let token = sign(&claims("insurer"));
        // The status list is in: the next request is decided at once, and held for
        // its body (the route minimises it).
        assert_eq!(
            complete(rig.send(
                &H2Request::new("GET", "/patients/p-1").header("authorization", &bearer(&token))
            ))
            .status,
            200
        );
        let id = format!("short-body-{proto:?}");
        let request = H2Request::new("POST", "/echo")
            .header("authorization", &bearer(&token))
            .header("x-request-id", &id)
            .header("content-type", "application/json")
            .header("content-length", "1000")
            .body(CLAIMS_SEARCH);
        let failed = rig.send(&request).unwrap_err();
        assert!(failed.is_reset(), "{proto:?}: {failed}");
        assert_eq!(
            rig.upstream.requests().len(),
            1,
            "{proto:?}: only the first request went up"
        );
        let records = rig.records_of(&id);
        assert_eq!(records.len(), 1, "{proto:?}: {records:#?}");
        assert_eq!(
            (
                records[0]["outcome"].as_str(),
                records[0]["status"].as_u64()
            ),
            (Some("reset"), Some(0)),
            "{proto:?}: {}",
            records[0]
        );
    }
}
