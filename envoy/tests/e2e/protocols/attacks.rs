//! The reported bypasses, on every protocol: request body and trailers that arrive while
//! a request is held for a fetch (a JWKS refetch for an unknown `kid`, a status list from
//! a slow consent service), the body-minimising route with trailers, and provenance
//! forged in request trailers.

use std::time::Duration;

use consentry_envoy::h2::H2Request;
use serde_json::{Value, json};

use super::tap::Behaviour;
use super::*;
use crate::support::*;

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

fn minimised_claims_search() -> Value {
    json!({"claim_id": "c-77", "invoice_ids": ["inv-1", "inv-2"], "period": {"from": "2026-01", "to": "2026-03"}})
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
