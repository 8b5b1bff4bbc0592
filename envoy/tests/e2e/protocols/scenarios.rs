//! The product's key scenarios over HTTP/2 (h2c and h2 over TLS): the golden views,
//! refusals and withheld answers with their codes, an answer the upstream cuts off, and a
//! stream Envoy resets.

use std::time::{Duration, SystemTime};

use consentry_envoy::h2::H2Request;
use consentry_host::mint;
use serde_json::{Value, json};

use super::tap::Behaviour;
use super::*;
use crate::support::*;

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
        // Envoy answered itself (the upstream broke off): the record carries the
        // code of the masked reply its local_reply_config makes of it.
        rig.assert_one_record(&id, "withheld", 502, "upstream_error");
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
