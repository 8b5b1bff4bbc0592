//! The state machine driven through the fake host: the decisions it reaches, and
//! that no event order lets a request or a byte move without one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::{Event, Filter, Flow, ResponseHead};
use crate::host::{MapKind, Side};
use crate::http::{Connection, Headers, RequestHead};
use crate::testing::FakeHost;

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://consent.example.com";
const AUD: &str = "https://api.hospital.example";

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/tokens/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn late(mut config: Value) -> Value {
    config["response_mode"] = json!("late_commit");
    config
}

fn config(remote_keys: bool) -> Value {
    let jwks: Value = serde_json::from_str(&fixture("jwks.json")).unwrap();
    let keys = if remote_keys {
        json!({"remote": {"cluster": "consent_service", "authority": "consent.example.com",
                          "path": "/jwks.json", "refresh_seconds": 300}})
    } else {
        json!({"inline": jwks})
    };
    json!({
        "version": 1,
        "token": {"header": "authorization", "scheme": "Bearer"},
        "issuers": [{"issuer": ISS, "algorithms": ["ES256"], "audiences": [AUD], "keys": keys}],
        "domains": ["identity", "billing"],
        "purposes": ["claims"],
        "partners": {"insurers": ["insurer-acme"]},
        "routes": [
            {"name": "record", "path": "/patients/{id}",
             "response": {"fields": [
                {"path": "$.id", "public": true},
                {"path": "$.name", "domain": "identity"},
                {"path": "$.ssn", "domain": "identity", "sensitivity": "special"}]},
             "rules": [{"name": "insurer", "purposes": ["claims"], "partners": ["insurers"],
                        "subject": {"is": "id"}, "release": ["identity"]}]},
            {"name": "search", "methods": ["POST"], "path": "/search",
             "request": {"body": ["$.claim_id"]},
             "response": {"fields": [{"path": "$.ok", "public": true}]},
             "rules": [{"name": "insurer", "purposes": ["claims"], "partners": ["insurers"],
                        "release": ["identity"]}]}
        ]
    })
}

fn token() -> String {
    let claims = json!({
        "iss": ISS, "aud": AUD, "sub": "p-1", "jti": "c-1", "client_id": "insurer-acme",
        "iat": NOW - 10, "exp": NOW + 600, "purpose": ["claims"],
        "data_domains": ["identity"], "actions": ["read"]
    });
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("es256-a".into());
    let key = EncodingKey::from_ec_pem(fixture("keys/es256-a.pem").as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

struct Rig {
    filter: Filter,
    host: FakeHost,
    next: u32,
}

impl Rig {
    fn new(config: &Value) -> Rig {
        let mut host = FakeHost::new(SystemTime::UNIX_EPOCH + Duration::from_secs(NOW));
        let env = |_: &str| None;
        let (filter, loaded) = Filter::configure(config.to_string().as_bytes(), &env, &mut host);
        loaded.unwrap();
        Rig {
            filter,
            host,
            next: 2,
        }
    }

    fn stream(&mut self) -> u32 {
        let id = self.next;
        self.next += 1;
        self.filter.on_stream_created(id);
        id
    }

    fn on(&mut self, id: u32, event: Event) -> Flow {
        self.host.enter(id);
        self.filter.on_event(id, event, &mut self.host)
    }

    /// The audit records written so far, parsed.
    fn records(&self) -> Vec<Value> {
        self.host
            .logs
            .iter()
            .filter_map(|(_, l)| crate::audit::extract_record(l))
            .map(|r| serde_json::from_str(r).unwrap())
            .collect()
    }
}

fn request(method: &str, path: &str, token: Option<&str>, eos: bool) -> Event {
    let mut headers = Headers::new();
    headers.push(":method", method);
    headers.push(":path", path);
    headers.push(":authority", "api.test");
    headers.push("x-request-id", "rid-1");
    if let Some(t) = token {
        headers.push("authorization", format!("Bearer {t}"));
    }
    if method == "POST" {
        headers.push("content-type", "application/json");
    }
    Event::RequestHeaders(RequestHead {
        method: method.into(),
        path: path.into(),
        authority: "api.test".into(),
        headers,
        connection: Connection {
            source_address: Some("127.0.0.1:5000".into()),
            mtls: false,
            peer: None,
        },
        end_of_stream: eos,
    })
}

fn response(status: u16, eos: bool) -> Event {
    let mut headers = Headers::new();
    headers.push(":status", status.to_string());
    headers.push("content-type", "application/json");
    headers.push("etag", "\"abc\"");
    headers.push("x-internal", "1");
    Event::ResponseHeaders(ResponseHead {
        status,
        headers,
        end_of_stream: eos,
    })
}

const RECORD: &str = r#"{"id":"p-1","name":"Eleanor","ssn":"123-45-6789","extra":1}"#;

#[test]
fn an_allowed_record_is_held_redacted_recorded_then_released() {
    let mut rig = Rig::new(&config(false));
    let id = rig.stream();
    let t = token();
    assert_eq!(
        rig.on(id, request("GET", "/patients/p-1", Some(&t), true)),
        Flow::Continue
    );
    let edits = &rig.host.stream(id).edits[0];
    assert_eq!(edits.0, MapKind::RequestHeaders);
    assert!(edits.1.remove.contains(&"authorization".to_owned()));
    assert!(
        edits
            .1
            .set
            .iter()
            .any(|(n, v)| n == "x-consent-id" && v == "c-1")
    );

    assert_eq!(rig.on(id, response(200, false)), Flow::Pause);
    rig.host.stream(id).response_body = RECORD.as_bytes()[..20].to_vec();
    let flow = rig.on(
        id,
        Event::ResponseBody {
            size: 20,
            end_of_stream: false,
        },
    );
    assert_eq!(flow, Flow::Pause, "a chunk is held");
    rig.host.stream(id).response_body = RECORD.as_bytes().to_vec();
    assert!(rig.records().is_empty(), "no record before the whole body");
    let flow = rig.on(
        id,
        Event::ResponseBody {
            size: RECORD.len(),
            end_of_stream: true,
        },
    );
    assert_eq!(flow, Flow::Continue);
    let s = rig.host.stream(id);
    assert_eq!(s.response_body, br#"{"id":"p-1","name":"Eleanor"}"#);
    let (map, edits) = s.edits.last().unwrap().clone();
    assert_eq!(map, MapKind::ResponseHeaders);
    assert!(edits.set.contains(&("content-length".into(), "29".into())));
    assert!(
        edits.remove.contains(&"etag".into()),
        "the body changed: no etag of the old one"
    );
    assert!(edits.remove.contains(&"x-internal".into()));
    assert!(
        edits
            .set
            .contains(&("cache-control".into(), "private, no-store".into()))
    );
    let records = rig.records();
    assert_eq!(records.len(), 1, "the record is written before the release");
    assert_eq!(records[0]["outcome"], "released");
    assert_eq!(records[0]["status"], 200);
    rig.on(id, Event::Log);
    assert_eq!(rig.records().len(), 1, "exactly one record per stream");
}

#[test]
fn request_trailers_while_a_key_is_fetched_keep_the_request_paused() {
    let mut rig = Rig::new(&config(true));
    // The fetch made at start is still in flight: the request waits.
    let id = rig.stream();
    let t = token();
    assert_eq!(
        rig.on(id, request("GET", "/patients/p-1", Some(&t), false)),
        Flow::Pause
    );
    assert_eq!(
        rig.on(
            id,
            Event::RequestBody {
                size: 3,
                end_of_stream: false
            }
        ),
        Flow::Pause
    );
    assert_eq!(
        rig.on(id, Event::RequestTrailers(Headers::new())),
        Flow::Pause
    );
    assert_eq!(rig.on(id, Event::Metadata(Side::Request)), Flow::Pause);
    assert!(rig.host.stream(id).resumed.is_empty());
    // The key arrives: the request is decided and resumed from the root context.
    let (token_id, _) = rig.host.calls[0].clone();
    let jwks = fixture("jwks.json");
    rig.filter
        .on_call_response(token_id, 200, jwks.as_bytes(), 1, &mut rig.host);
    assert_eq!(rig.host.stream(id).resumed, vec![Side::Request]);
    assert_eq!(rig.host.current, 1, "back in the root context");
}

#[test]
fn a_forged_token_waiting_for_keys_is_refused_when_they_say_no() {
    let mut rig = Rig::new(&config(true));
    let id = rig.stream();
    let forged = token().replace("eyJ", "eyK");
    assert_eq!(
        rig.on(id, request("GET", "/patients/p-1", Some(&forged), true)),
        Flow::Pause
    );
    let (token_id, _) = rig.host.calls[0].clone();
    rig.filter.on_call_response(
        token_id,
        200,
        fixture("jwks.json").as_bytes(),
        1,
        &mut rig.host,
    );
    let s = rig.host.stream(id);
    assert!(s.resumed.is_empty());
    assert_eq!(s.replies.len(), 1);
    assert_eq!(s.replies[0].status, 401);
}

#[test]
fn a_minimised_body_that_ends_with_trailers_is_minimised_and_the_trailers_dropped() {
    let mut rig = Rig::new(&config(false));
    let id = rig.stream();
    let t = token();
    assert_eq!(
        rig.on(id, request("POST", "/search", Some(&t), false)),
        Flow::Pause
    );
    let body = br#"{"claim_id":"c-9","ssn":"123"}"#;
    rig.host.stream(id).request_body = body.to_vec();
    assert_eq!(
        rig.on(
            id,
            Event::RequestBody {
                size: body.len(),
                end_of_stream: false
            }
        ),
        Flow::Pause
    );
    let mut trailers = Headers::new();
    trailers.push("x-checksum", "1");
    assert_eq!(rig.on(id, Event::RequestTrailers(trailers)), Flow::Continue);
    let s = rig.host.stream(id);
    assert_eq!(s.request_body, br#"{"claim_id":"c-9"}"#);
    assert!(
        s.edits
            .iter()
            .any(|(m, e)| *m == MapKind::RequestTrailers
                && e.remove == vec!["x-checksum".to_owned()])
    );
}

#[test]
fn an_envoy_reply_while_deciding_is_masked_and_recorded_as_withheld() {
    let mut rig = Rig::new(&config(true));
    let id = rig.stream();
    let t = token();
    rig.on(id, request("GET", "/patients/p-1", Some(&t), false));
    rig.host.stream(id).properties.insert(
        "response.code_details".into(),
        b"request_payload_too_large".to_vec(),
    );
    let mut headers = Headers::new();
    headers.push(":status", "413");
    headers.push("content-type", "text/plain");
    let flow = rig.on(
        id,
        Event::ResponseHeaders(ResponseHead {
            status: 413,
            headers,
            end_of_stream: false,
        }),
    );
    assert_eq!(flow, Flow::Pause);
    let reply = rig.host.stream(id).replies[0].clone();
    assert_eq!(reply.status, 413);
    assert_eq!(reply.details, "consentry.request_too_large");
    rig.host
        .stream(id)
        .properties
        .insert("response.code".into(), 413i64.to_le_bytes().to_vec());
    rig.on(id, Event::Log);
    let records = rig.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["outcome"], "withheld");
    assert_eq!(records[0]["status"], 413);
}

#[test]
fn without_randomness_the_request_is_refused_never_served_with_weaker_ids() {
    let mut rig = Rig::new(&config(false));
    rig.host.fail.random = true;
    let id = rig.stream();
    let t = token();
    let mut head = request("GET", "/patients/p-1", Some(&t), true);
    if let Event::RequestHeaders(h) = &mut head {
        h.headers = h
            .headers
            .iter()
            .filter(|(n, _)| *n != "x-request-id")
            .collect();
    }
    assert_eq!(rig.on(id, head), Flow::Pause);
    let s = rig.host.stream(id);
    assert_eq!(s.replies[0].status, 503);
}

#[test]
fn a_host_that_refuses_the_reply_gets_the_stream_reset() {
    let mut rig = Rig::new(&config(false));
    rig.host.fail.reply = true;
    let id = rig.stream();
    assert_eq!(
        rig.on(id, request("GET", "/patients/p-1", None, true)),
        Flow::Pause
    );
    assert_eq!(rig.host.stream(id).resets, 1);
    rig.on(id, Event::Log);
    assert_eq!(rig.records()[0]["outcome"], "reset");
}

#[test]
fn a_record_that_cannot_be_written_withholds_the_answer() {
    let mut rig = Rig::new(&config(false));
    let id = rig.stream();
    let t = token();
    rig.on(id, request("GET", "/patients/p-1", Some(&t), true));
    rig.on(id, response(200, false));
    rig.host.stream(id).response_body = RECORD.as_bytes().to_vec();
    rig.host.fail.log = true;
    let flow = rig.on(
        id,
        Event::ResponseBody {
            size: RECORD.len(),
            end_of_stream: true,
        },
    );
    assert_eq!(flow, Flow::Pause);
    // The held response is replaced whole by the problem: nothing of it goes.
    let s = rig.host.stream(id);
    assert_eq!(s.replies.len(), 1);
    assert_eq!(s.replies[0].status, 503);
    assert_eq!(s.replies[0].details, "consentry.dependency_unavailable");
}

#[test]
fn upgrades_and_method_overrides_are_refused() {
    let mut rig = Rig::new(&config(false));
    let t = token();
    for (name, value) in [
        ("upgrade", "websocket"),
        ("x-http-method-override", "DELETE"),
    ] {
        let id = rig.stream();
        let mut head = request("GET", "/patients/p-1", Some(&t), true);
        if let Event::RequestHeaders(h) = &mut head {
            h.headers.push(name, value);
        }
        assert_eq!(rig.on(id, head), Flow::Pause, "{name}");
        assert_eq!(rig.host.stream(id).replies[0].status, 400, "{name}");
    }
}

/// Every event, in every order: the request moves on only once it is allowed, and
/// the response only as the redacted body; nothing in between defaults to Continue.
#[test]
fn random_event_orders_never_release_without_a_decision() {
    use proptest::prelude::*;
    let events = prop::collection::vec(0u8..9, 1..14);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(400));
    runner
        .run(
            &(events, any::<bool>(), any::<bool>()),
            |(order, valid, remote)| {
                let mut rig = Rig::new(&config(remote));
                let id = rig.stream();
                let t = if valid { token() } else { "x.y.z".into() };
                let mut allowed = false;
                let mut sent_upstream = false;
                // Only a request that went upstream can have the upstream's answer (with
                // the canary); any other response is the proxy's or the plugin's own.
                let body_for = |sent: bool| -> Vec<u8> {
                    if sent {
                        RECORD.as_bytes().to_vec()
                    } else {
                        b"Payload Too Large".to_vec()
                    }
                };
                for e in order {
                    let event = match e {
                        0 => request("GET", "/patients/p-1", Some(&t), false),
                        1 => Event::RequestBody {
                            size: 2,
                            end_of_stream: false,
                        },
                        2 => Event::RequestBody {
                            size: 2,
                            end_of_stream: true,
                        },
                        3 => Event::RequestTrailers(Headers::new()),
                        4 => response(if sent_upstream { 200 } else { 413 }, false),
                        5 | 6 => {
                            // Once the plugin replied, the response is its reply (the
                            // host replaces the upstream's with it).
                            let reply = rig.host.stream(id).replies.last().map(|r| r.body.clone());
                            let body = reply.unwrap_or_else(|| body_for(sent_upstream));
                            let size = body.len();
                            rig.host.stream(id).response_body = body;
                            Event::ResponseBody {
                                size,
                                end_of_stream: e == 6,
                            }
                        }
                        7 => Event::ResponseTrailers(Headers::new()),
                        _ => {
                            if let Some((tok, _)) = rig.host.calls.first().cloned() {
                                let jwks = fixture("jwks.json");
                                rig.filter.on_call_response(
                                    tok,
                                    200,
                                    jwks.as_bytes(),
                                    1,
                                    &mut rig.host,
                                );
                            }
                            sent_upstream |= !rig.host.stream(id).resumed.is_empty();
                            continue;
                        }
                    };
                    let is_response = matches!(
                        event,
                        Event::ResponseHeaders(_)
                            | Event::ResponseBody { .. }
                            | Event::ResponseTrailers(_)
                    );
                    let flow = rig.on(id, event);
                    allowed |= rig
                        .host
                        .stream(id)
                        .edits
                        .iter()
                        .any(|(_, e)| e.set.iter().any(|(n, _)| n == "x-consent-decision"));
                    if flow == Flow::Continue && !is_response {
                        prop_assert!(valid && allowed, "a request moved without an allow");
                        sent_upstream = true;
                    }
                    // What the host holds when a response callback continues is what
                    // goes to the client.
                    if flow == Flow::Continue && is_response {
                        let body = &rig.host.stream(id).response_body;
                        prop_assert!(
                            !body.windows(11).any(|w| w == b"123-45-6789"),
                            "the ssn reached the client"
                        );
                    }
                }
                rig.on(id, Event::Log);
                prop_assert_eq!(rig.records().len(), 1, "exactly one record");
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn late_commit_lets_the_headers_go_and_holds_the_body() {
    let mut rig = Rig::new(&late(config(false)));
    let id = rig.stream();
    let t = token();
    assert_eq!(
        rig.on(id, request("GET", "/patients/p-1", Some(&t), true)),
        Flow::Continue
    );
    let mut headers = Headers::new();
    headers.push(":status", "200");
    headers.push("content-type", "application/json");
    headers.push("content-length", RECORD.len().to_string());
    headers.push("etag", "\"abc\"");
    let head = Event::ResponseHeaders(ResponseHead {
        status: 200,
        headers,
        end_of_stream: false,
    });
    assert_eq!(rig.on(id, head), Flow::Continue, "the headers go at once");
    let (_, edits) = rig.host.stream(id).edits.last().unwrap().clone();
    assert!(edits.remove.contains(&"content-length".into()));
    assert!(edits.remove.contains(&"etag".into()));
    rig.host.stream(id).response_body = RECORD.as_bytes().to_vec();
    let edits_before = rig.host.stream(id).edits.len();
    assert_eq!(
        rig.on(
            id,
            Event::ResponseBody {
                size: 10,
                end_of_stream: false
            }
        ),
        Flow::Pause,
        "the body is held"
    );
    let flow = rig.on(
        id,
        Event::ResponseBody {
            size: RECORD.len(),
            end_of_stream: true,
        },
    );
    assert_eq!(flow, Flow::Continue);
    let s = rig.host.stream(id);
    assert_eq!(s.response_body, br#"{"id":"p-1","name":"Eleanor"}"#);
    assert_eq!(s.edits.len(), edits_before, "no header edit once they left");
    assert_eq!(rig.records()[0]["outcome"], "released");
}

#[test]
fn late_commit_resets_a_body_found_unsafe_after_the_headers_left() {
    let mut rig = Rig::new(&late(config(false)));
    let id = rig.stream();
    let t = token();
    rig.on(id, request("GET", "/patients/p-1", Some(&t), true));
    assert_eq!(rig.on(id, response(200, false)), Flow::Continue);
    rig.host.stream(id).response_body = br#"{"id":"p-1","ssn":"123-45-6789""#.to_vec();
    let flow = rig.on(
        id,
        Event::ResponseBody {
            size: 31,
            end_of_stream: true,
        },
    );
    assert_eq!(flow, Flow::Pause);
    let s = rig.host.stream(id);
    assert_eq!(s.resets, 1, "reset, never a complete answer");
    assert!(
        s.replies.is_empty(),
        "a reply cannot replace headers that left"
    );
    rig.on(id, Event::Log);
    assert_eq!(rig.records()[0]["outcome"], "reset");
}

#[test]
fn late_commit_minimises_a_request_body_behind_headers_that_left() {
    let mut rig = Rig::new(&late(config(false)));
    let id = rig.stream();
    let t = token();
    assert_eq!(
        rig.on(id, request("POST", "/search", Some(&t), false)),
        Flow::Continue
    );
    let (_, edits) = rig.host.stream(id).edits[0].clone();
    let body = br#"{"claim_id":"c-9","ssn":"123"}"#;
    rig.host.stream(id).request_body = body.to_vec();
    let flow = rig.on(
        id,
        Event::RequestBody {
            size: body.len(),
            end_of_stream: true,
        },
    );
    assert_eq!(flow, Flow::Continue);
    let s = rig.host.stream(id);
    assert_eq!(s.request_body, br#"{"claim_id":"c-9"}"#);
    assert_eq!(s.edits.len(), 1, "no header edit once they left: {edits:?}");
}

#[test]
fn request_trailers_never_reach_the_upstream_whatever_the_route() {
    // A route that does not minimise its body: the trailers are dropped all the same
    // (they could carry forged provenance or identity).
    let mut rig = Rig::new(&config(false));
    let id = rig.stream();
    let t = token();
    assert_eq!(
        rig.on(id, request("GET", "/patients/p-1", Some(&t), false)),
        Flow::Continue
    );
    let mut trailers = Headers::new();
    trailers.push("x-consent-id", "forged");
    trailers.push("x-forwarded-client-cert", "forged");
    assert_eq!(rig.on(id, Event::RequestTrailers(trailers)), Flow::Continue);
    let (map, edits) = rig.host.stream(id).edits.last().unwrap().clone();
    assert_eq!(map, MapKind::RequestTrailers);
    assert_eq!(
        edits.remove,
        vec!["x-consent-id", "x-forwarded-client-cert"]
    );

    // While the decision waits, they are dropped in their own callback.
    let mut rig = Rig::new(&config(true));
    let id = rig.stream();
    rig.on(id, request("GET", "/patients/p-1", Some(&t), false));
    let mut trailers = Headers::new();
    trailers.push("x-consent-grantee", "forged");
    assert_eq!(rig.on(id, Event::RequestTrailers(trailers)), Flow::Pause);
    let (map, _) = rig.host.stream(id).edits.last().unwrap().clone();
    assert_eq!(map, MapKind::RequestTrailers);

    // A host that will not drop them: nothing goes.
    let mut rig = Rig::new(&config(false));
    let id = rig.stream();
    rig.on(id, request("GET", "/patients/p-1", Some(&t), false));
    rig.host.fail.edit = true;
    let mut trailers = Headers::new();
    trailers.push("x-consent-id", "forged");
    assert_eq!(rig.on(id, Event::RequestTrailers(trailers)), Flow::Pause);
    assert_eq!(rig.host.stream(id).replies[0].status, 502);
}
