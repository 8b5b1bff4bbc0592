//! The two response modes on the two kinds of host: Envoy with
//! `allow_on_headers_stop_iteration` (response headers can wait for the body) and
//! hosts without it (Istio's `WasmPlugin`, Envoy Gateway), where a paused response
//! stalls. `hold` needs the flag; `late_commit` runs on both, and a body it finds
//! unsafe after the headers left ends in a reset, never in a complete answer.

use consentry_host::{ClientFault, Outcome, Proxy, Request, Response};
use serde_json::json;

use crate::support::{
    T0, at, audit_record, example_policy, proxy_with, repo_file, token_with, upstream_record,
};

fn proxy(mode: &str, flag: bool) -> Proxy {
    let config = example_policy(|p| p["response_mode"] = json!(mode));
    let service = consentry_host::fixtures::ConsentService::new();
    proxy_with(config, &service, at(T0))
        .allow_on_headers_stop_iteration(flag)
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn insurer_read(proxy: &mut Proxy, upstream: Response) -> Outcome {
    let token = token_with("insurer", T0 - 60, |_| {});
    proxy.send(Request::get("/patients/p-1").bearer(&token), upstream)
}

fn golden(file: &str) -> serde_json::Value {
    serde_json::from_slice(&repo_file(&format!("examples/views/{file}"))).unwrap()
}

#[test]
fn late_commit_serves_the_same_view_with_and_without_the_flag() {
    for flag in [true, false] {
        let mut p = proxy("late_commit", flag);
        let out = insurer_read(&mut p, upstream_record("p-1"));
        assert_eq!(out.client.status, 200, "flag {flag}: {:#?}", out.trace);
        assert_eq!(out.client.fault, None, "flag {flag}");
        assert_eq!(
            out.client.json(),
            golden("insurer-p-1.json"),
            "flag {flag}: the same redacted view as in hold mode"
        );
        assert_eq!(
            out.client.header("content-length"),
            None,
            "flag {flag}: the length went before the body was redacted"
        );
        assert_eq!(audit_record(&out)["outcome"], "released", "flag {flag}");
    }
}

#[test]
fn hold_serves_the_view_with_the_flag_and_stalls_without_it() {
    let mut p = proxy("hold", true);
    let out = insurer_read(&mut p, upstream_record("p-1"));
    assert_eq!(out.client.json(), golden("insurer-p-1.json"));
    assert!(out.client.header("content-length").is_some());

    let mut p = proxy("hold", false);
    let out = insurer_read(&mut p, upstream_record("p-1"));
    assert!(
        matches!(out.client.fault, Some(ClientFault::Stalled { .. })),
        "without the flag a held response stalls: {:?}",
        out.client
    );
    assert!(
        !String::from_utf8_lossy(&out.client.body).contains("Whitcombe"),
        "and releases nothing"
    );
}

#[test]
fn late_commit_resets_a_body_found_unsafe_after_the_headers_left() {
    for flag in [true, false] {
        for (what, body) in [
            (
                "invalid JSON",
                br#"{"id":"p-1","identity":{"name":"Eleanor""#.to_vec(),
            ),
            ("a body of the wrong nesting", "[".repeat(200).into_bytes()),
        ] {
            let mut p = proxy("late_commit", flag);
            let out = insurer_read(&mut p, Response::json(200, body));
            assert!(
                matches!(out.client.fault, Some(ClientFault::Reset { .. })),
                "{what}, flag {flag}: the client sees a failed response: {:?}",
                out.client
            );
            assert!(
                !String::from_utf8_lossy(&out.client.body).contains("Eleanor"),
                "{what}, flag {flag}: nothing of the body went"
            );
            assert_eq!(
                audit_record(&out)["outcome"],
                "reset",
                "{what}, flag {flag}"
            );
        }
    }
}

#[test]
fn late_commit_still_answers_what_the_headers_show_with_a_clean_problem() {
    for flag in [true, false] {
        let mut p = proxy("late_commit", flag);
        for (upstream, status, code) in [
            (
                Response::json(503, r#"{"trace":"db down"}"#),
                502,
                "upstream_error",
            ),
            (
                Response::json(200, r#"{"id":"p-1"}"#).header("content-encoding", "gzip"),
                502,
                "unsafe_response",
            ),
            (
                Response::new(200)
                    .header("content-type", "text/html")
                    .body_with_length("<p>Eleanor</p>"),
                502,
                "unsafe_response",
            ),
        ] {
            let out = insurer_read(&mut p, upstream);
            assert_eq!(out.client.status, status, "flag {flag}: {:?}", out.client);
            assert_eq!(out.client.json()["code"], code, "flag {flag}");
            assert_eq!(out.client.fault, None, "flag {flag}: a clean answer");
        }
    }
}

#[test]
fn late_commit_minimises_a_request_body_behind_headers_that_already_went() {
    for flag in [true, false] {
        let mut p = proxy("late_commit", flag);
        let token = token_with("insurer", T0 - 60, |_| {});
        let request = Request::post("/echo")
            .bearer(&token)
            .header("content-type", "application/json")
            .chunks([
                br#"{"claim_id":"CLM-1","#.to_vec(),
                br#""diagnosis":"secret","period":"2026-Q3"}"#.to_vec(),
            ]);
        let out = p.send(request, Response::json(200, r#"{"ok":true}"#));
        let up = out.upstream_request.expect("the request went upstream");
        assert_eq!(
            String::from_utf8_lossy(&up.body),
            r#"{"claim_id":"CLM-1","period":"2026-Q3"}"#,
            "flag {flag}"
        );
        assert!(up.header("content-length").is_none(), "flag {flag}");
    }
}

#[test]
fn head_304_trailers_and_the_body_limit_behave_alike_in_both_modes() {
    let token = token_with("insurer", T0 - 60, |_| {});
    for (mode, flag) in [
        ("hold", true),
        ("late_commit", true),
        ("late_commit", false),
    ] {
        let label = format!("{mode}, flag {flag}");
        // HEAD: headers only, and no length of a body the client does not get.
        let mut p = proxy(mode, flag);
        let head = Request::new("HEAD", "/patients/p-1").bearer(&token);
        let out = p.send(head, upstream_record("p-1"));
        assert_eq!(out.client.status, 200, "{label}");
        assert_eq!(out.client.header("content-length"), None, "{label}: HEAD");
        assert!(out.client.body.is_empty(), "{label}: HEAD");

        // A 304 (the plugin strips conditional requests, but an upstream may still
        // send one): no length, no etag of the unredacted body.
        let not_modified = Response::new(304)
            .header("etag", "\"v7\"")
            .header("content-length", "4242");
        let out = insurer_read(&mut p, not_modified);
        assert_eq!(out.client.status, 304, "{label}");
        assert_eq!(out.client.header("content-length"), None, "{label}: 304");
        assert_eq!(out.client.header("etag"), None, "{label}: 304");

        // Trailers end the body: it is redacted there and goes without them.
        let with_trailers = upstream_record("p-1").trailer("x-checksum", "abc");
        let out = insurer_read(&mut p, with_trailers);
        assert_eq!(out.client.status, 200, "{label}: {:#?}", out.trace);
        assert_eq!(out.client.fault, None, "{label}");
        assert_eq!(out.client.json(), golden("insurer-p-1.json"), "{label}");
        assert!(
            out.client.trailers.is_empty(),
            "{label}: {:?}",
            out.client.trailers
        );

        // A body over limits.max_body_bytes, with no length to warn: withheld whole
        // (hold), or reset after the headers (late_commit); never released.
        let config = example_policy(|p| {
            p["response_mode"] = json!(mode);
            p["limits"] = json!({"max_body_bytes": 4096});
        });
        let service = consentry_host::fixtures::ConsentService::new();
        let mut small = proxy_with(config, &service, at(T0))
            .allow_on_headers_stop_iteration(flag)
            .start()
            .unwrap();
        let big = format!(r#"{{"id":"p-1","notes":"{}"}}"#, "Whitcombe ".repeat(600));
        let chunked = Response::new(200)
            .header("content-type", "application/json")
            .chunks(big.as_bytes().chunks(1000));
        let out = insurer_read(&mut small, chunked);
        assert!(
            !String::from_utf8_lossy(&out.client.body).contains("Whitcombe"),
            "{label}: nothing of an oversized body"
        );
        match mode {
            "hold" => assert_eq!(out.client.status, 502, "{label}"),
            _ => assert!(
                matches!(out.client.fault, Some(ClientFault::Reset { .. })),
                "{label}: {:?}",
                out.client
            ),
        }
    }
}
