//! The first slice of behaviour, end to end through the `.wasm`.

use consentry_host::{Request, Response};

use crate::support::demo_proxy;

const RECORD: &str = r#"{"id":"p-1","identity":{"name":"Ada","national_id":"AB123"},"contact":{"phone":"1"},"billing":{"policy_number":"X","total":120.50}}"#;

#[test]
fn a_request_without_a_token_gets_a_masked_401() {
    let mut proxy = demo_proxy().start().unwrap();
    let out = proxy.send(Request::get("/patients/p-1"), Response::json(200, RECORD));
    assert_eq!(out.client.status, 401, "{:#?}", out.trace);
    assert_eq!(
        out.client.header("content-type"),
        Some("application/problem+json")
    );
    let body = out.client.json();
    assert_eq!(body["code"], "token_missing");
    assert_eq!(body["status"], 401);
    assert!(
        out.upstream_request.is_none(),
        "nothing may reach the upstream"
    );
}

#[test]
fn an_allowed_route_gets_its_fields_removed_and_a_right_content_length() {
    let mut proxy = demo_proxy().start().unwrap();
    let out = proxy.send(
        Request::get("/patients/p-1").bearer("any"),
        Response::json(200, RECORD),
    );
    assert_eq!(out.client.status, 200, "{:#?}", out.trace);
    assert_eq!(out.client.fault, None);
    assert_eq!(
        out.client.body_text(),
        r#"{"id":"p-1","identity":{"name":"Ada"},"billing":{"total":120.50}}"#
    );
    let upstream = out.upstream_request.unwrap();
    assert_eq!(
        upstream.header("authorization"),
        None,
        "the token stays in the proxy"
    );
}
