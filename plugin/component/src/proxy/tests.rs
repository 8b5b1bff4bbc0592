//! The adapter over the core, natively: the example policy, the example service's
//! data and consent service, a fake system whose outgoing calls answer when the
//! adapter waits for them. The component's own tests (the `.wasm` behind
//! `consentry serve`) are in `host-tests/tests/component.rs`.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

use std::time::{Duration, SystemTime};

use consentry_core::host::{DispatchError, HostError, LogLevel, OutgoingCall};
use consentry_core::http::{HeaderEdits, Headers};
use consentry_example_service::ServiceState;
use serde_json::Value;

use super::*;
use crate::settings::Environment;

const CONFIG: &str = include_str!("../../../../policies/example.json");
const DEV_PSEUDONYM_KEYS: &str = "dev-1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
const INSURER_VIEW: &str = include_str!("../../../../examples/views/insurer-p-1.json");

type Answerer = Box<dyn FnMut(&OutgoingCall, SystemTime) -> Option<(u16, Vec<u8>)>>;

/// Time stands still unless the adapter waits; calls answer (or not) when it does.
struct FakeSystem {
    now: SystemTime,
    rng: u64,
    logs: Vec<(LogLevel, String)>,
    next: u32,
    pending: Vec<(u32, OutgoingCall)>,
    made: Vec<OutgoingCall>,
    answer: Answerer,
}

impl FakeSystem {
    fn new(answer: Answerer) -> Self {
        Self {
            now: SystemTime::now(),
            rng: 7,
            logs: Vec::new(),
            next: 0,
            pending: Vec::new(),
            made: Vec::new(),
            answer,
        }
    }

    /// The example consent service: its status list 1, every consent valid.
    fn consent_service() -> Self {
        let service = ServiceState::builtin().unwrap();
        Self::new(Box::new(move |call, now| {
            let iat = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            (call.path == "/statuslists/1").then(|| {
                let token = service
                    .consent()
                    .status_list_token("1", iat)
                    .unwrap()
                    .unwrap();
                (200, token.into_bytes())
            })
        }))
    }

    fn audit_records(&self) -> Vec<Value> {
        self.logs
            .iter()
            .filter_map(|(_, l)| l.strip_prefix(consentry_core::audit::LOG_MARKER))
            .map(|r| serde_json::from_str(r).unwrap())
            .filter(|r: &Value| r["kind"] == "decision")
            .collect()
    }
}

impl System for FakeSystem {
    fn now(&self) -> Result<SystemTime, HostError> {
        Ok(self.now)
    }

    fn fill_random(&mut self, buf: &mut [u8]) -> Result<(), HostError> {
        for b in buf {
            self.rng = self
                .rng
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            *b = (self.rng >> 33) as u8;
        }
        Ok(())
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        self.logs.push((level, message.to_owned()));
    }

    fn debug_enabled(&self) -> bool {
        false
    }

    fn dispatch(&mut self, call: &OutgoingCall) -> Result<u32, DispatchError> {
        self.next += 1;
        self.made.push(call.clone());
        self.pending.push((self.next, call.clone()));
        Ok(self.next)
    }

    fn wait_calls(&mut self, timeout: Duration) -> Vec<CallAnswer> {
        let now = self.now;
        let pending = std::mem::take(&mut self.pending);
        let mut answers = Vec::new();
        for (token, call) in pending {
            match (self.answer)(&call, now) {
                Some((status, body)) => answers.push(CallAnswer {
                    token,
                    status,
                    body,
                }),
                // No answer ever: the call stays in flight.
                None => self.pending.push((token, call)),
            }
        }
        if answers.is_empty() {
            self.now += timeout;
        }
        answers
    }
}

fn env() -> Environment {
    [("CONSENTRY_PSEUDONYM_KEYS", DEV_PSEUDONYM_KEYS)]
        .into_iter()
        .collect()
}

fn vm(sys: FakeSystem) -> Vm<FakeSystem> {
    let (vm, loaded) = Vm::start(CONFIG.as_bytes(), &env(), sys);
    loaded.unwrap();
    vm
}

fn token(persona: &str) -> String {
    consentry_example_service::personas::persona_token(persona, SystemTime::now()).unwrap()
}

fn get(path: &str, headers: &[(&str, &str)]) -> Incoming {
    Incoming::new(
        "GET",
        path,
        "api.hospital.example",
        "http",
        headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec())),
    )
}

fn header<'a>(pairs: &'a Pairs, name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

fn json_response(status: u16, body: &[u8]) -> Upstream {
    Upstream::Response {
        status,
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: body.to_vec(),
        complete: true,
        trailers: None,
    }
}

fn sent(answer: Answer) -> Reply {
    match answer {
        Answer::Send(r) => r,
        Answer::Reset => panic!("the stream was reset"),
    }
}

fn refused(verdict: Verdict) -> Reply {
    match verdict {
        Verdict::Answer(a) => sent(a),
        Verdict::Forward(f) => panic!("forwarded: {f:?}"),
    }
}

fn problem_code(reply: &Reply) -> String {
    assert_eq!(
        header(&reply.headers, "content-type"),
        Some("application/problem+json")
    );
    assert_eq!(
        header(&reply.headers, "content-length"),
        Some(reply.body.len().to_string().as_str())
    );
    let v: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(v["status"], reply.status);
    v["code"].as_str().unwrap().to_owned()
}

#[test]
fn edits_remove_every_repeat_then_set_one_value() {
    let mut pairs: Pairs = vec![
        ("a".into(), b"1".to_vec()),
        ("b".into(), b"2".to_vec()),
        ("a".into(), b"3".to_vec()),
    ];
    let mut edits = HeaderEdits::default();
    edits.remove("A");
    edits.set("B", "4");
    edits.set("c", "5");
    apply_edits(&mut pairs, &edits);
    assert_eq!(
        pairs,
        vec![("b".into(), b"4".to_vec()), ("c".into(), b"5".to_vec())]
    );
}

#[test]
fn a_request_without_a_token_is_refused_and_nothing_goes_upstream() {
    let mut vm = vm(FakeSystem::consent_service());
    let (id, verdict) = vm.request(get("/patients/p-1", &[("x-request-id", "r-1")]));
    let reply = refused(verdict);
    assert_eq!(reply.status, 401);
    assert_eq!(problem_code(&reply), "token_missing");
    assert_eq!(header(&reply.headers, "www-authenticate"), Some("Bearer"));
    // Whatever comes afterwards cannot replace the refusal.
    let again = sent(vm.respond(id, json_response(200, b"{\"id\":\"p-1\"}")));
    assert_eq!(again, reply);
    vm.close(id);
    assert_eq!(vm.open_streams(), 0);
    let records = vm.system().audit_records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["code"], "token_missing");
}

#[test]
fn the_insurers_view_waits_for_the_status_list_and_is_the_golden_file() {
    let mut vm = vm(FakeSystem::consent_service());
    let bearer = format!("Bearer {}", token("insurer"));
    let (id, verdict) = vm.request(get(
        "/patients/p-1",
        &[("authorization", &bearer), ("x-consent-id", "forged")],
    ));
    let Verdict::Forward(forward) = verdict else {
        panic!("refused: {verdict:?}");
    };
    assert!(
        vm.system()
            .made
            .iter()
            .any(|c| c.cluster == "consent_service" && c.path == "/statuslists/1"),
        "the status list was fetched through the consent service's cluster"
    );
    assert_eq!(forward.method, "GET");
    assert_eq!(forward.path, "/patients/p-1");
    assert_eq!(header(&forward.headers, "authorization"), None);
    assert_eq!(
        header(&forward.headers, "x-consent-id"),
        Some("consent-insurer-acme-p-1")
    );
    assert_eq!(
        header(&forward.headers, "x-consent-purpose"),
        Some("claims")
    );
    assert!(forward.headers.iter().all(|(n, _)| !n.starts_with(':')));

    let record = ServiceState::builtin().unwrap().record("p-1").unwrap();
    let reply = sent(vm.respond(id, json_response(200, &record)));
    vm.close(id);
    assert_eq!(reply.status, 200);
    let mut body = reply.body.clone();
    body.push(b'\n');
    assert_eq!(String::from_utf8(body).unwrap(), INSURER_VIEW);
    assert_eq!(
        header(&reply.headers, "content-length"),
        Some(reply.body.len().to_string().as_str())
    );
    assert_eq!(
        header(&reply.headers, "cache-control"),
        Some("private, no-store")
    );
    let records = vm.system().audit_records();
    assert_eq!(records.len(), 1, "one record per stream");
    assert_eq!(records[0]["decision"], "allow");
    assert_eq!(vm.open_streams(), 0);
}

#[test]
fn without_the_status_list_the_request_is_refused_once_the_wait_is_over() {
    let mut vm = vm(FakeSystem::new(Box::new(|_, _| None)));
    let bearer = format!("Bearer {}", token("insurer"));
    let (id, verdict) = vm.request(get("/patients/p-1", &[("authorization", &bearer)]));
    let reply = refused(verdict);
    vm.close(id);
    assert_eq!(reply.status, 503);
    assert_eq!(problem_code(&reply), "dependency_unavailable");
}

#[test]
fn request_minimisation_sends_only_what_the_purpose_needs() {
    let mut vm = vm(FakeSystem::consent_service());
    let bearer = format!("Bearer {}", token("insurer"));
    let mut incoming = Incoming::new(
        "POST",
        "/echo?from=2026-01-01&to=2026-12-31&debug=1&national_id=999",
        "api.hospital.example",
        "http",
        [
            ("authorization", bearer.as_str()),
            ("content-type", "application/json"),
            ("x-claim-reference", "CLM-1"),
            ("x-internal-trace", "keep-out"),
            ("x-consent-purpose", "claims"),
        ]
        .map(|(n, v)| (n.to_owned(), v.as_bytes().to_vec())),
    );
    incoming.body = br#"{"claim_id":"CLM-1","invoice_ids":["inv-1"],"national_id":"999 401 2284","period":{"from":"2026-01"},"notes":"free text"}"#.to_vec();
    let (id, verdict) = vm.request(incoming);
    vm.close(id);
    let Verdict::Forward(forward) = verdict else {
        panic!("refused: {verdict:?}");
    };
    assert_eq!(forward.path, "/echo?from=2026-01-01&to=2026-12-31");
    assert_eq!(
        String::from_utf8(forward.body.clone()).unwrap(),
        r#"{"claim_id":"CLM-1","invoice_ids":["inv-1"],"period":{"from":"2026-01"}}"#
    );
    assert_eq!(
        header(&forward.headers, "content-length"),
        Some(forward.body.len().to_string().as_str())
    );
    assert_eq!(header(&forward.headers, "x-internal-trace"), None);
    assert_eq!(header(&forward.headers, "x-claim-reference"), Some("CLM-1"));
}

#[test]
fn answers_that_cannot_be_redacted_are_withheld() {
    let bearer = format!("Bearer {}", token("insurer"));
    let cases = [
        (
            json_response(500, b"{\"trace\":\"at db.query\"}"),
            502,
            "upstream_error",
        ),
        (
            json_response(200, b"{\"id\":\"p-1\",\"identity\":{"),
            502,
            "unsafe_response",
        ),
        (Upstream::Failed, 502, "upstream_error"),
    ];
    for (upstream, status, code) in cases {
        let mut vm = vm(FakeSystem::consent_service());
        let (id, verdict) = vm.request(get("/patients/p-1", &[("authorization", &bearer)]));
        assert!(matches!(verdict, Verdict::Forward(_)), "{verdict:?}");
        let reply = sent(vm.respond(id, upstream));
        vm.close(id);
        assert_eq!(
            (reply.status, problem_code(&reply)),
            (status, code.to_owned())
        );
        assert!(!String::from_utf8_lossy(&reply.body).contains("db.query"));
    }
}

#[test]
fn bodies_longer_than_the_proxy_holds_never_pass() {
    let bearer = format!("Bearer {}", token("insurer"));
    let mut vm = vm(FakeSystem::consent_service());
    let limit = vm.buffer_limit();

    let mut incoming = get("/patients/p-1", &[("authorization", &bearer)]);
    incoming.body = vec![b' '; limit + 1];
    incoming.complete = false;
    let (id, verdict) = vm.request(incoming);
    vm.close(id);
    let reply = refused(verdict);
    assert_eq!(
        (reply.status, problem_code(&reply)),
        (413, "request_too_large".to_owned())
    );

    let (id, verdict) = vm.request(get("/patients/p-1", &[("authorization", &bearer)]));
    assert!(matches!(verdict, Verdict::Forward(_)));
    let answer = vm.respond(
        id,
        Upstream::Response {
            status: 200,
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: vec![b' '; limit + 1],
            complete: false,
            trailers: None,
        },
    );
    vm.close(id);
    let reply = sent(answer);
    assert_eq!(
        (reply.status, problem_code(&reply)),
        (502, "unsafe_response".to_owned())
    );
}

#[test]
fn response_trailers_end_the_body_and_never_reach_the_client() {
    let bearer = format!("Bearer {}", token("insurer"));
    let mut vm = vm(FakeSystem::consent_service());
    let (id, _) = vm.request(get("/patients/p-1", &[("authorization", &bearer)]));
    let trailers: Headers = [("x-secret-trailer", "999 401 2284")].into_iter().collect();
    let answer = vm.respond(
        id,
        Upstream::Response {
            status: 200,
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: br#"{"id":"p-1"}"#.to_vec(),
            complete: true,
            trailers: Some(trailers),
        },
    );
    vm.close(id);
    let reply = sent(answer);
    assert_eq!(reply.status, 200);
    assert!(reply.headers.iter().all(|(n, _)| n != "x-secret-trailer"));
}

#[test]
fn an_unusable_configuration_refuses_every_request() {
    let errors = setting_error("$", "CONSENTRY_CONFIG is not set");
    let mut vm = Vm::refusing(&errors, FakeSystem::consent_service());
    let (id, verdict) = vm.request(get("/patients/p-1", &[]));
    vm.close(id);
    let reply = refused(verdict);
    assert_eq!(
        (reply.status, problem_code(&reply)),
        (503, "dependency_unavailable".to_owned())
    );
    assert!(
        vm.system()
            .logs
            .iter()
            .any(|(l, m)| *l == LogLevel::Error && m.contains("CONSENTRY_CONFIG is not set"))
    );

    let (_, loaded) = Vm::start(br#"{"version":1}"#, &env(), FakeSystem::consent_service());
    let errors = loaded.unwrap_err();
    assert!(
        errors.0.iter().all(|e| e.location.starts_with('$')),
        "{errors}"
    );
}

#[test]
fn an_explanation_names_the_route_the_rule_and_every_fields_action() {
    let mut vm = vm(FakeSystem::consent_service());
    let bearer = format!("Bearer {}", token("insurer"));
    let allowed = vm.explain(get("/patients/p-1", &[("authorization", &bearer)]));
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["code"], "ok");
    assert_eq!(allowed["route"], "patient-record");
    assert_eq!(allowed["purpose"], "claims");
    let fields = allowed["fields"].as_array().unwrap();
    assert!(
        fields
            .iter()
            .any(|f| f[0] == "$.clinical" && f[1] == "remove"),
        "{fields:?}"
    );

    let refused = vm.explain(get("/patients/p-1", &[]));
    assert_eq!(refused["decision"], "deny");
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["code"], "token_missing");
    assert!(refused.get("route").is_none());
    // Explaining decides for real: one record each, and nothing left open.
    assert_eq!(vm.system().audit_records().len(), 2);
    assert_eq!(vm.open_streams(), 0);
}
