//! Every problem code the plugin has, produced through the `.wasm` at least once, each
//! answered with exactly the masked problem: its status, `application/problem+json`,
//! `cache-control: no-store`, `type`, `title`, `detail`, `request_id` and nothing
//! else, `Retry-After` where the code promises one, and never a header of the
//! upstream's. Then every way an upstream answer can be unredactable, each withheld
//! whole with `unsafe_response`.

use std::collections::BTreeSet;

use consentry_core::problem::Code;
use consentry_host::{Outcome, Proxy, Request, Response};
use serde_json::json;

use crate::support::{
    T0, assert_no_leak, assert_problem, example_policy, persona_claims, reason, sign_dev, start_at,
    stored_record, upstream_record, verdict,
};

/// The insurer's consent (its status list answered by the consent service).
fn insurer() -> String {
    sign_dev(&persona_claims("insurer", T0 - 10, 3600))
}

/// The insurer reading p-1.
fn read(token: &str) -> Request {
    Request::get("/patients/p-1").bearer(token)
}

/// Headers an upstream uses to describe itself.
fn leaky(r: Response) -> Response {
    r.header("server", "example-service/1.0")
        .header("x-powered-by", "axum")
        .header("x-aspnet-version", "4.0.30319")
        .header("x-runtime", "0.0123")
}

/// What an upstream's error page holds.
const LEAKY_ERROR: &str = r#"{"error":"NullPointerException at db.internal:5432","query":"SELECT * FROM patients WHERE national_id='999 401 2284'"}"#;

const UPSTREAM_SECRETS: [&str; 7] = [
    "example-service",
    "axum",
    "4.0.30319",
    "x-powered-by",
    "db.internal",
    "999 401 2284",
    "Whitcombe",
];

/// One scenario per code: how to make the plugin answer with it.
fn produce(code: Code) -> Outcome {
    let plain = || start_at(example_policy(|_| {}), T0).0;
    match code {
        Code::TokenMissing => plain().send(Request::get("/patients/p-1"), upstream_record("p-1")),
        Code::TokenInvalid => plain().send(read("not.a.token"), upstream_record("p-1")),
        Code::TokenExpired => {
            let c = persona_claims("insurer", T0 - 7200, 3600);
            plain().send(read(&sign_dev(&c)), upstream_record("p-1"))
        }
        Code::TokenAmbiguous => {
            let t = insurer();
            plain().send(
                Request::get(&format!("/patients/p-1?access_token={t}")).bearer(&t),
                upstream_record("p-1"),
            )
        }
        Code::ConsentRevoked => {
            let config = example_policy(|p| {
                p["issuers"][0]["revocation"]["deny_list"] = json!(["consent-insurer-acme-p-1"]);
            });
            start_at(config, T0)
                .0
                .send(read(&insurer()), upstream_record("p-1"))
        }
        Code::ConsentSuspended => {
            let (mut proxy, service) = start_at(example_policy(|_| {}), T0);
            service.set_status("1", 0, 2);
            proxy.send(read(&insurer()), upstream_record("p-1"))
        }
        Code::TokenUnbound => {
            let mut c = persona_claims("insurer", T0 - 10, 3600);
            c.insert(
                "cnf".into(),
                json!({"x5t#S256": crate::support::b64url(&[0xab; 32])}),
            );
            plain().send(read(&sign_dev(&c)), upstream_record("p-1"))
        }
        Code::AccessDenied => plain().send(
            Request::get("/patients/p-2").bearer(&insurer()),
            upstream_record("p-2"),
        ),
        Code::BadRequest => {
            let mut c = persona_claims("insurer", T0 - 10, 3600);
            c.insert("purpose".into(), json!(["claims", "research"]));
            plain().send(read(&sign_dev(&c)), upstream_record("p-1"))
        }
        Code::RequestTooLarge => {
            let config = example_policy(|p| p["limits"] = json!({"max_body_bytes": 1024}));
            let body = format!(r#"{{"claim_id":"CLM-1","notes":"{}"}}"#, "x".repeat(2000));
            start_at(config, T0).0.send(
                Request::post("/echo")
                    .bearer(&insurer())
                    .header("content-type", "application/json")
                    .body(body),
                Response::json(200, "{}"),
            )
        }
        Code::RateLimited => {
            let config = example_policy(|p| {
                p["rate_limits"] = json!({"caller": {"requests": 1, "seconds": 60, "burst": 1}});
            });
            let mut proxy = start_at(config, T0).0;
            let t = insurer();
            assert_eq!(
                proxy.send(read(&t), upstream_record("p-1")).client.status,
                200
            );
            proxy.send(read(&t), upstream_record("p-1"))
        }
        Code::LockedOut => {
            let config = example_policy(|p| {
                p["rate_limits"] =
                    json!({"lockout": {"refusals": 1, "window_seconds": 60, "lock_seconds": 120}});
            });
            let mut proxy = start_at(config, T0).0;
            assert_eq!(
                proxy
                    .send(read("not.a.token"), upstream_record("p-1"))
                    .client
                    .status,
                401
            );
            proxy.send(read(&insurer()), upstream_record("p-1"))
        }
        Code::UpstreamError => {
            plain().send(read(&insurer()), leaky(Response::json(500, LEAKY_ERROR)))
        }
        Code::UnsafeResponse => plain().send(
            read(&insurer()),
            leaky(Response::json(200, stored_record("p-1")).header("content-encoding", "br")),
        ),
        Code::DependencyUnavailable => {
            let (mut proxy, service) = start_at(example_policy(|_| {}), T0);
            service.set_down(true);
            proxy.send(read(&insurer()), upstream_record("p-1"))
        }
        other => panic!("no scenario produces {other:?}: add one"),
    }
}

#[test]
fn every_problem_code_is_produced_with_the_exact_masked_shape() {
    let mut produced = BTreeSet::new();
    for code in Code::ALL {
        let out = produce(code);
        let body = assert_problem(&out, code);
        assert_no_leak(&out, &UPSTREAM_SECRETS);
        assert_no_leak(&out, &["consent-insurer-acme-p-1", "insurer-acme", "p-1"]);
        if matches!(code, Code::UpstreamError | Code::UnsafeResponse) {
            assert!(
                out.upstream_request.is_some(),
                "{code:?}: the upstream answered"
            );
        } else {
            assert!(
                out.upstream_request.is_none(),
                "{code:?}: nothing went upstream"
            );
        }
        match code {
            Code::RateLimited => assert_eq!(out.client.header("retry-after"), Some("60")),
            Code::LockedOut => assert_eq!(out.client.header("retry-after"), Some("120")),
            _ => {}
        }
        produced.insert(body["code"].as_str().unwrap().to_owned());
    }
    let all: BTreeSet<String> = Code::ALL.iter().map(|c| c.as_str().to_owned()).collect();
    assert_eq!(produced, all);
}

#[test]
fn the_request_id_is_the_proxys_when_safe_and_fresh_otherwise() {
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    let with_id = |id: &str| Request::get("/patients/p-1").header("x-request-id", id);
    let safe = "req-0f7cb765.86fc_485c";
    let out = proxy.send(with_id(safe), upstream_record("p-1"));
    assert_eq!(assert_problem(&out, Code::TokenMissing)["request_id"], safe);

    let is_fresh_uuid = |id: &str| {
        let b = id.as_bytes();
        id.len() == 36
            && [8, 13, 18, 23].iter().all(|i| b[*i] == b'-')
            && b[14] == b'4'
            && matches!(b[19], b'8' | b'9' | b'a' | b'b')
            && id.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit())
    };
    for unsafe_id in [
        "<script>alert(1)</script>",
        "short",
        "req\"}, \"code\": \"ok",
        &"a".repeat(65),
        "ids with spaces in them",
    ] {
        let out = proxy.send(with_id(unsafe_id), upstream_record("p-1"));
        let body = assert_problem(&out, Code::TokenMissing);
        let id = body["request_id"].as_str().unwrap();
        assert!(is_fresh_uuid(id), "{unsafe_id:?} gave {id:?}");
        assert_no_leak(&out, &[unsafe_id, "script"]);
    }
    // The proxy's own x-request-id (Envoy adds one) is echoed: quoting it to support
    // finds the request in the proxy's logs too.
    let out = proxy.send(Request::get("/patients/p-1"), upstream_record("p-1"));
    let id = assert_problem(&out, Code::TokenMissing)["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let audit = crate::support::audit_record(&out);
    assert_eq!(audit["request_id"], id.as_str());
}

#[test]
fn upstream_headers_that_describe_the_upstream_never_reach_the_client() {
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    let t = insurer();
    let ok = proxy.send(read(&t), leaky(upstream_record("p-1")));
    assert_eq!(ok.client.status, 200, "{:#?}", ok.trace);
    assert_eq!(ok.client.header("server"), Some("envoy"));
    for h in ["x-powered-by", "x-aspnet-version", "x-runtime"] {
        assert_eq!(ok.client.header(h), None, "{h} reached the client");
    }
    assert_eq!(
        ok.client.header("content-length"),
        Some(ok.client.body.len().to_string().as_str())
    );
    assert_eq!(ok.client.fault, None);

    // A HEAD answer says nothing of the unredacted length.
    let head = proxy.send(
        Request::new("HEAD", "/patients/p-1").bearer(&t),
        leaky(upstream_record("p-1")).body(""),
    );
    assert_eq!(head.client.status, 200, "{:#?}", head.trace);
    let full_length = stored_record("p-1").len().to_string();
    assert_ne!(
        head.client.header("content-length"),
        Some(full_length.as_str())
    );
    assert_eq!(head.client.header("x-powered-by"), None);

    // Error pages: 5xx are masked; 4xx pass unless the route masks them.
    for status in [500, 502, 503, 504] {
        let out = proxy.send(read(&t), leaky(Response::json(status, LEAKY_ERROR)));
        assert_problem(&out, Code::UpstreamError);
        assert_no_leak(&out, &UPSTREAM_SECRETS);
    }
    let masked = example_policy(|p| {
        p["routes"][0]["response"]["mask_client_errors"] = json!(true);
    });
    let (mut proxy, _service) = start_at(masked, T0);
    let out = proxy.send(read(&t), leaky(Response::json(404, LEAKY_ERROR)));
    assert_problem(&out, Code::UpstreamError);
    assert_no_leak(&out, &UPSTREAM_SECRETS);
}

/// The insurer reads p-1 and the upstream answers `response`: returns the outcome,
/// checked to be a withheld response that released nothing of the upstream's.
fn withheld(proxy: &mut Proxy, what: &str, response: Response, why: &str) -> Option<String> {
    let out = proxy.send(read(&insurer()), leaky(response));
    if verdict(&out) != (502, "unsafe_response".to_owned()) || reason(&out) != why {
        return Some(format!(
            "{what}: got {:?} for {:?}, expected unsafe_response for {why:?}",
            verdict(&out),
            reason(&out)
        ));
    }
    assert_problem(&out, Code::UnsafeResponse);
    assert_no_leak(&out, &UPSTREAM_SECRETS);
    assert_no_leak(&out, &["BRH-0041187", "Severn", "padding"]);
    None
}

fn nested(depth: usize) -> String {
    format!(
        r#"{{"id":"p-1","identity":{{"name":"Eleanor Whitcombe"}},"x":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

#[test]
fn every_unredactable_answer_is_withheld_whole() {
    const LIMIT: usize = 4096;
    let config = example_policy(|p| p["limits"] = json!({"max_body_bytes": LIMIT}));
    let (mut proxy, _service) = start_at(config, T0);
    let json_ct = || Response::new(200).header("content-type", "application/json");
    // A record under the limit (the stored p-1 is over it).
    let record = r#"{"id":"p-1","identity":{"name":"Eleanor Whitcombe","mrn":"BRH-0041187","national_id":"999 401 2284"},"billing":{"insurer":"Severn Mutual Health"}}"#.to_owned();
    // A body of exactly `len` bytes, of a record with an unclassified padding field.
    let sized = |len: usize| {
        let head = r#"{"id":"p-1","identity":{"name":"Eleanor Whitcombe"},"padding":""#;
        let pad = len - head.len() - 2;
        format!("{head}{}\"}}", "p".repeat(pad))
    };
    assert_eq!(sized(LIMIT + 1).len(), LIMIT + 1);

    let cases: Vec<(&str, Response, &str)> = vec![
        (
            "gzip content-encoding",
            Response::json(200, &record).header("content-encoding", "gzip"),
            "content_encoding",
        ),
        (
            "identity, then gzip content-encoding",
            Response::json(200, &record)
                .header("content-encoding", "identity")
                .header("content-encoding", "gzip"),
            "content_encoding",
        ),
        (
            "two content types",
            Response::json(200, &record).header("content-type", "text/html"),
            "content_type",
        ),
        (
            "text/html",
            Response::new(200)
                .header("content-type", "text/html; charset=utf-8")
                .body_with_length(&record),
            "content_type",
        ),
        (
            "no content type",
            Response::new(200).body_with_length(&record),
            "content_type",
        ),
        (
            "invalid JSON",
            Response::json(200, &record[..record.len() - 1]),
            "invalid_json",
        ),
        (
            "invalid UTF-8",
            Response::json(
                200,
                [
                    br#"{"id":"p-1","identity":{"name":"Eleanor Whitcombe "#.as_slice(),
                    b"\xff\xfe\"}}",
                ]
                .concat(),
            ),
            "invalid_text",
        ),
        (
            "a byte-order mark",
            Response::json(
                200,
                [b"\xEF\xBB\xBF".as_slice(), record.as_bytes()].concat(),
            ),
            "invalid_text",
        ),
        (
            "nesting one past limits.max_depth",
            Response::json(200, nested(64)),
            "too_deep",
        ),
        (
            "a body over limits.max_body_bytes, declared by content-length",
            Response::json(200, sized(LIMIT + 1)),
            "too_large",
        ),
        (
            "a content-length that is not a number",
            Response::new(200)
                .header("content-type", "application/json")
                .header("content-length", "lots")
                .body(&record),
            "too_large",
        ),
        (
            "a chunked body over limits.max_body_bytes",
            json_ct().chunks(sized(LIMIT + 1).as_bytes().chunks(1000)),
            "too_large",
        ),
        (
            "206 partial content",
            Response::new(206)
                .header("content-type", "application/json")
                .header("content-range", "bytes 0-99/5000")
                .body_with_length(&record[..100]),
            "partial_content",
        ),
        (
            "a redirect with a body",
            Response::new(302)
                .header("content-type", "application/json")
                .header("location", "https://db.internal/patients/p-1")
                .body_with_length(&record),
            "unexpected_status",
        ),
    ];
    let failures: Vec<String> = cases
        .into_iter()
        .filter_map(|(what, r, why)| withheld(&mut proxy, what, r, why))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // On the edges, the same answers pass: identity encoding, a parameter on the
    // content type, nesting at the limit, a body of exactly the limit (declared or
    // chunked).
    let t = insurer();
    for (what, r) in [
        (
            "identity encoding",
            Response::json(200, &record).header("content-encoding", "identity"),
        ),
        (
            "a charset parameter",
            Response::new(200)
                .header("content-type", "application/json; charset=utf-8")
                .body_with_length(&record),
        ),
        (
            "nesting at limits.max_depth",
            Response::json(200, nested(63)),
        ),
        (
            "a body of exactly the limit",
            Response::json(200, sized(LIMIT)),
        ),
        (
            "a chunked body of exactly the limit",
            json_ct().chunks(sized(LIMIT).as_bytes().chunks(1000)),
        ),
        (
            // Trailers end the body: it is redacted there, the trailers dropped.
            "trailers after a held body",
            Response::json(200, &record).trailer("x-checksum", "abc"),
        ),
    ] {
        let out = proxy.send(read(&t), r);
        assert_eq!(out.client.status, 200, "{what}: {:#?}", out.trace);
        assert_eq!(out.client.fault, None, "{what}");
        let body = out.client.json();
        assert_eq!(body["identity"]["name"], "Eleanor Whitcombe", "{what}");
        assert!(
            body.get("padding").is_none() && body.get("x").is_none(),
            "{what}"
        );
    }
}

#[test]
fn a_refusal_made_on_the_body_is_the_same_masked_problem() {
    // The request body is over the limit only after its headers were allowed.
    let config = example_policy(|p| p["limits"] = json!({"max_body_bytes": 1024}));
    let (mut proxy, _service) = start_at(config, T0);
    let chunked = Request::post("/echo")
        .bearer(&insurer())
        .header("content-type", "application/json")
        .chunks([
            br#"{"claim_id":"CLM-1","notes":""#.to_vec(),
            vec![b'x'; 600],
            vec![b'x'; 600],
            br#""}"#.to_vec(),
        ])
        .http2();
    let out = proxy.send(chunked, Response::json(200, "{}"));
    assert_problem(&out, Code::RequestTooLarge);
    assert!(out.upstream_request.is_none());
    assert_eq!(reason(&out), "request_too_large");
    let audit = crate::support::audit_record(&out);
    assert_eq!(audit["decision"], "deny");
    assert_eq!(audit["code"], "request_too_large");

    // Upstream-side refusals record what happened, too.
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    let out = proxy.send(read(&insurer()), Response::json(200, "{nope"));
    assert_problem(&out, Code::UnsafeResponse);
    let audit = crate::support::audit_record(&out);
    assert_eq!(audit["code"], "unsafe_response");
    assert_eq!(audit["reason"], "invalid_json");
}
