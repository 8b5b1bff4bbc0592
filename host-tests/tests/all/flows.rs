//! The plugin's flows through the `.wasm`: keys that arrive late or rotate, consents
//! revoked through the status list, dependencies that fail, sender binding, limits,
//! and the audit trail.

use std::time::{Duration, SystemTime};

use consentry_core::audit;
use consentry_core::problem::Code;
use consentry_host::fixtures::{CONSENT_AUTHORITY, ConsentService};
use consentry_host::{Callout, CalloutAnswer, Outcome, Peer, Proxy, Request, Response, mint};
use serde_json::{Value, json};

use crate::support::{assert_problem, example_policy, plugin, proxy_with, record};

fn insurer_token(now: SystemTime) -> String {
    mint::persona_token("insurer", now).unwrap()
}

fn record_p1() -> Response {
    Response::json(200, record("p-1"))
}

fn code(out: &Outcome) -> String {
    out.client.json()["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The example policy with the issuer's keys only remote (no inline JWKS).
fn remote_keys_only() -> String {
    example_policy(|p| {
        p["issuers"][0]["keys"]
            .as_object_mut()
            .unwrap()
            .remove("inline");
    })
}

#[test]
fn a_request_that_arrives_before_the_keys_waits_and_then_proceeds() {
    let service = ConsentService::new();
    let now = SystemTime::now();
    let answers = service.clone();
    // The consent service answers the JWKS a second late (the fetch times out at two).
    let mut proxy = Proxy::builder(plugin())
        .config(remote_keys_only())
        .env(
            "CONSENTRY_PSEUDONYM_KEYS",
            consentry_host::fixtures::DEV_PSEUDONYM_KEYS,
        )
        .now(now)
        .callouts(move |c: &Callout| match answers.answer(c, now) {
            CalloutAnswer::Respond { response, .. } if c.path.contains("jwks") => {
                CalloutAnswer::Respond {
                    response,
                    delay: Duration::from_secs(1),
                }
            }
            other => other,
        })
        .start()
        .unwrap();
    let out = proxy.send(
        Request::get("/patients/p-1").bearer(&insurer_token(now)),
        record_p1(),
    );
    assert_eq!(out.client.status, 200, "{:#?}", out.trace);
    assert!(
        out.trace
            .iter()
            .any(|t| t.contains("continue_stream(request)")),
        "the request waited and was resumed: {:#?}",
        out.trace
    );
}

#[test]
fn keys_that_never_come_fail_closed_with_503_after_the_bounded_wait() {
    let now = SystemTime::now();
    let mut proxy = Proxy::builder(plugin())
        .config(remote_keys_only())
        .env(
            "CONSENTRY_PSEUDONYM_KEYS",
            consentry_host::fixtures::DEV_PSEUDONYM_KEYS,
        )
        .now(now)
        .callouts(|_| CalloutAnswer::NoAnswer)
        .start()
        .unwrap();
    let out = proxy.send(
        Request::get("/patients/p-1").bearer(&insurer_token(now)),
        record_p1(),
    );
    assert_eq!(out.client.status, 503, "{:#?}", out.trace);
    assert_eq!(code(&out), "dependency_unavailable");
    assert!(out.upstream_request.is_none());
}

#[test]
fn a_rotated_key_is_fetched_on_first_sight_without_a_restart() {
    let (service, now) = (ConsentService::new(), SystemTime::now());
    let mut proxy = proxy_with(example_policy(|_| {}), &service, now)
        .start()
        .unwrap();
    // The issuer rotates: its JWKS now has the next key, and a token signed with it arrives.
    service.set_jwks(mint::ROTATION_JWKS);
    let claims = mint::Personas::builtin()
        .unwrap()
        .claims(Some("insurer"), unix(now), 3600)
        .unwrap();
    let token = mint::sign(
        &Value::Object(claims),
        mint::NEXT_KEY_PEM,
        mint::NEXT_KID,
        mint::Alg::ES256,
    )
    .unwrap();
    let before = service
        .calls()
        .iter()
        .filter(|c| c.ends_with("jwks.json"))
        .count();
    let out = proxy.send(Request::get("/patients/p-1").bearer(&token), record_p1());
    assert_eq!(out.client.status, 200, "{:#?}", out.trace);
    let after = service
        .calls()
        .iter()
        .filter(|c| c.ends_with("jwks.json"))
        .count();
    assert_eq!(after, before + 1, "exactly one refetch for the unknown kid");
    // A kid nobody knows is refused, and a second refetch is rate-limited.
    let forged = mint::sign(
        &json!({"iss": mint::ISSUER, "aud": mint::AUDIENCE, "sub": "p-1", "jti": "x", "iat": unix(now), "exp": unix(now) + 600}),
        mint::NEXT_KEY_PEM,
        "nobody-knows",
        mint::Alg::ES256,
    )
    .unwrap();
    let out = proxy.send(Request::get("/patients/p-1").bearer(&forged), record_p1());
    assert_eq!(
        (out.client.status, code(&out).as_str()),
        (401, "token_invalid")
    );
    let last = service
        .calls()
        .iter()
        .filter(|c| c.ends_with("jwks.json"))
        .count();
    assert_eq!(
        last, after,
        "unknown kids refetch at most once per interval (30 s)"
    );
    proxy.advance(Duration::from_secs(31));
    let out = proxy.send(Request::get("/patients/p-1").bearer(&forged), record_p1());
    assert_eq!(out.client.status, 401);
    let later = service
        .calls()
        .iter()
        .filter(|c| c.ends_with("jwks.json"))
        .count();
    assert_eq!(later, last + 1, "after the interval, one more refetch");
}

#[test]
fn a_revoked_consent_is_refused_once_the_status_list_is_refetched() {
    let (service, now) = (ConsentService::new(), SystemTime::now());
    let mut proxy = proxy_with(example_policy(|_| {}), &service, now)
        .start()
        .unwrap();
    let token = insurer_token(now);
    let ok = proxy.send(Request::get("/patients/p-1").bearer(&token), record_p1());
    assert_eq!(ok.client.status, 200, "{:#?}", ok.trace);
    // The data subject withdraws consent: index 0 of list 1 becomes INVALID.
    service.set_status("1", 0, 1);
    // Within the list's ttl the cached list still answers.
    let still = proxy.send(Request::get("/patients/p-1").bearer(&token), record_p1());
    assert_eq!(still.client.status, 200);
    // Past its ttl (60 s) the list is refreshed: the refresh starts with the first
    // request, and the one after sees the revocation.
    proxy.advance(Duration::from_secs(61));
    let _ = proxy.send(Request::get("/patients/p-1").bearer(&token), record_p1());
    // The refresh is fetched in the background, from the plugin's timer.
    proxy.advance(Duration::from_millis(50));
    let refused = proxy.send(Request::get("/patients/p-1").bearer(&token), record_p1());
    assert_eq!(
        (refused.client.status, code(&refused).as_str()),
        (403, "consent_revoked")
    );
    // A suspended consent has its own code.
    service.set_status("1", 0, 2);
    proxy.advance(Duration::from_secs(61));
    let _ = proxy.send(Request::get("/patients/p-1").bearer(&token), record_p1());
    // The refresh is fetched in the background, from the plugin's timer.
    proxy.advance(Duration::from_millis(50));
    let suspended = proxy.send(Request::get("/patients/p-1").bearer(&token), record_p1());
    assert_eq!(
        (suspended.client.status, code(&suspended).as_str()),
        (403, "consent_suspended")
    );
}

#[test]
fn a_refresh_started_by_a_refused_request_still_completes() {
    let (service, now) = (ConsentService::new(), SystemTime::now());
    let mut proxy = proxy_with(example_policy(|_| {}), &service, now)
        .start()
        .unwrap();
    let token = insurer_token(now);
    let ok = proxy.send(Request::get("/patients/p-1").bearer(&token), record_p1());
    assert_eq!(ok.client.status, 200, "{:#?}", ok.trace);
    service.set_status("1", 0, 1);
    proxy.advance(Duration::from_secs(61));
    // Past the ttl, a request the policy refuses (another patient) is the one that
    // starts the refresh; its stream ends at once, and the refresh must not end
    // with it (a call's answer goes to the context that made the call).
    let other = proxy.send(Request::get("/patients/p-2").bearer(&token), record_p1());
    assert_eq!(
        (other.client.status, code(&other).as_str()),
        (403, "access_denied")
    );
    proxy.advance(Duration::from_millis(50));
    let lists = |s: &ConsentService| {
        s.calls()
            .iter()
            .filter(|c| c.contains("/statuslists/"))
            .count()
    };
    assert_eq!(lists(&service), 2, "the refresh went out");
    let refused = proxy.send(Request::get("/patients/p-1").bearer(&token), record_p1());
    assert_eq!(
        (refused.client.status, code(&refused).as_str()),
        (403, "consent_revoked")
    );
}

#[test]
fn a_client_that_gives_up_while_waiting_does_not_strand_the_others() {
    let (service, now) = (ConsentService::new(), SystemTime::now());
    let slow = service.clone();
    let mut proxy = proxy_with(example_policy(|_| {}), &service, now)
        .callouts(move |c| match slow.answer(c, now) {
            CalloutAnswer::Respond { response, .. } if c.path.starts_with("/statuslists/") => {
                CalloutAnswer::Respond {
                    response,
                    delay: Duration::from_millis(200),
                }
            }
            other => other,
        })
        .start()
        .unwrap();
    let token = insurer_token(now);
    // The first request fetches the status list and waits; the second waits for
    // the same fetch; then the first client goes away. The call belongs to the
    // plugin, not to the stream that made it, so its answer still comes.
    let first = proxy.begin(Request::get("/patients/p-1").bearer(&token), record_p1());
    proxy.advance(Duration::from_millis(20));
    let second = proxy.begin(Request::get("/patients/p-1").bearer(&token), record_p1());
    proxy.advance(Duration::from_millis(20));
    let gone = proxy.reset(first);
    assert_eq!(gone.client.status, 0);
    let out = proxy.finish(second);
    assert_eq!(out.client.status, 200, "{:#?}", out.trace);
    let lists = service
        .calls()
        .iter()
        .filter(|c| c.contains("/statuslists/"))
        .count();
    assert_eq!(lists, 1, "one fetch served both, though its starter left");
}

#[test]
fn a_status_list_that_cannot_be_fetched_fails_closed() {
    let (service, now) = (ConsentService::new(), SystemTime::now());
    service.set_down(true);
    let mut proxy = proxy_with(example_policy(|_| {}), &service, now)
        .start()
        .unwrap();
    let out = proxy.send(
        Request::get("/patients/p-1").bearer(&insurer_token(now)),
        record_p1(),
    );
    assert_eq!(
        (out.client.status, code(&out).as_str()),
        (503, "dependency_unavailable")
    );
    assert!(out.upstream_request.is_none());
    // Past the list's ttl plus the allowed staleness, a list that cannot be refreshed
    // stops answering too.
    service.set_down(false);
    // A failed fetch is not retried for a second (requests fail fast meanwhile).
    proxy.advance(Duration::from_secs(2));
    let ok = proxy.send(
        Request::get("/patients/p-1").bearer(&insurer_token(now)),
        record_p1(),
    );
    assert_eq!(ok.client.status, 200, "{:#?}", ok.trace);
    service.set_down(true);
    proxy.advance(Duration::from_secs(60 + 300 + 1));
    let stale = proxy.send(
        Request::get("/patients/p-1").bearer(&insurer_token(proxy.now())),
        record_p1(),
    );
    assert_eq!(
        (stale.client.status, code(&stale).as_str()),
        (503, "dependency_unavailable")
    );
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

fn bound_token(now: SystemTime, cert_sha256: &[u8; 32]) -> String {
    use base64::Engine as _;
    let mut claims = mint::Personas::builtin()
        .unwrap()
        .claims(Some("insurer"), unix(now), 3600)
        .unwrap();
    claims.insert(
        "cnf".into(),
        json!({"x5t#S256": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cert_sha256)}),
    );
    mint::sign(
        &Value::Object(claims),
        mint::DEV_KEY_PEM,
        mint::DEV_KID,
        mint::Alg::ES256,
    )
    .unwrap()
}

#[test]
fn a_certificate_bound_token_passes_only_from_its_certificate() {
    let (service, now) = (ConsentService::new(), SystemTime::now());
    let mut proxy = proxy_with(example_policy(|_| {}), &service, now)
        .start()
        .unwrap();
    let digest = [0xab_u8; 32];
    let token = bound_token(now, &digest);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let peer = |h: &str| Peer {
        uri_sans: vec!["spiffe://partner.example/insurer".into()],
        cert_sha256: Some(h.to_owned()),
        certificate: None,
        subject: None,
    };
    let ok = proxy.send(
        Request::get("/patients/p-1")
            .bearer(&token)
            .peer(peer(&hex)),
        record_p1(),
    );
    assert_eq!(ok.client.status, 200, "{:#?}", ok.trace);
    let other = proxy.send(
        Request::get("/patients/p-1")
            .bearer(&token)
            .peer(peer(&"cd".repeat(32))),
        record_p1(),
    );
    let plain = proxy.send(Request::get("/patients/p-1").bearer(&token), record_p1());
    // RFC 8705 §3: another certificate, or none, is an invalid token (401), with the
    // same challenge as any other; the body does not say why.
    for unbound in [&other, &plain] {
        let body = assert_problem(unbound, Code::TokenUnbound);
        assert_eq!(body["status"], 401);
        assert_eq!(
            unbound.client.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\"")
        );
        assert_eq!(crate::support::reason(unbound), "unbound");
        assert!(unbound.upstream_request.is_none());
    }
}

#[test]
fn a_burst_gets_429_with_retry_after_then_the_bucket_refills() {
    let (service, now) = (ConsentService::new(), SystemTime::now());
    let config = example_policy(|p| {
        p["rate_limits"] = json!({"caller": {"requests": 2, "seconds": 1, "burst": 3}});
    });
    let mut proxy = proxy_with(config, &service, now)
        .workers(2)
        .start()
        .unwrap();
    let token = insurer_token(now);
    let statuses: Vec<u16> = (0..5)
        .map(|_| {
            proxy
                .send(Request::get("/patients/p-1").bearer(&token), record_p1())
                .client
                .status
        })
        .collect();
    // Three in the burst, shared by both workers, then refused.
    assert_eq!(
        statuses,
        vec![200, 200, 200, 429, 429],
        "across two workers"
    );
    let limited = proxy.send(Request::get("/patients/p-1").bearer(&token), record_p1());
    assert_eq!(code(&limited), "rate_limited");
    assert_eq!(limited.client.header("retry-after"), Some("1"));
    proxy.advance(Duration::from_millis(500));
    let again = proxy.send(Request::get("/patients/p-1").bearer(&token), record_p1());
    assert_eq!(
        again.client.status, 200,
        "one token came back after 1/rate seconds"
    );
}

#[test]
fn repeated_refusals_lock_a_caller_out_for_a_while_with_an_audit_alert() {
    let (service, now) = (ConsentService::new(), SystemTime::now());
    let config = example_policy(|p| {
        p["rate_limits"] =
            json!({"lockout": {"refusals": 3, "window_seconds": 60, "lock_seconds": 120}});
    });
    let mut proxy = proxy_with(config, &service, now).start().unwrap();
    let attacker = || {
        Request::get("/patients/p-1")
            .from_address("192.0.2.66:5555")
            .bearer("not-a-token")
    };
    for _ in 0..3 {
        assert_eq!(proxy.send(attacker(), record_p1()).client.status, 401);
    }
    let locked = proxy.send(attacker(), record_p1());
    assert_eq!(
        (locked.client.status, code(&locked).as_str()),
        (403, "locked_out")
    );
    assert_eq!(locked.client.header("retry-after"), Some("120"));
    // Someone else is not affected.
    let other = proxy.send(
        Request::get("/patients/p-1").bearer(&insurer_token(now)),
        record_p1(),
    );
    assert_eq!(other.client.status, 200);
    let alerts = proxy
        .logs()
        .iter()
        .filter_map(|l| audit::extract_record(&l.message).map(str::to_owned))
        .filter(|r| r.contains("\"alert\":\"lockout\""))
        .count();
    assert_eq!(alerts, 1, "one audit alert when the lockout starts");
    // After the lockout the caller may try again.
    proxy.advance(Duration::from_secs(121));
    let released = proxy.send(
        Request::get("/patients/p-1")
            .from_address("192.0.2.66:5555")
            .bearer(&insurer_token(proxy.now())),
        record_p1(),
    );
    assert_eq!(released.client.status, 200, "{:#?}", released.trace);
}

#[test]
fn every_decision_leaves_one_chained_audit_record_that_verifies() {
    let (service, now) = (ConsentService::new(), SystemTime::now());
    let mut proxy = proxy_with(example_policy(|_| {}), &service, now)
        .workers(2)
        .start()
        .unwrap();
    let token = insurer_token(now);
    for path in [
        "/patients/p-1",
        "/patients/p-2",
        "/nowhere",
        "/patients/p-1",
    ] {
        proxy.send(Request::get(path).bearer(&token), record_p1());
    }
    proxy.send(Request::get("/patients/p-1"), record_p1());
    let lines: Vec<String> = proxy
        .logs()
        .iter()
        .filter_map(|l| audit::extract_record(&l.message).map(str::to_owned))
        .collect();
    let decisions: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("\"kind\":\"decision\""))
        .collect();
    assert_eq!(decisions.len(), 5, "{lines:#?}");
    let summary = audit::verify(lines.iter().map(String::as_str), &[]).unwrap();
    assert_eq!(summary.chains.len(), 2, "one chain per worker");
    // Never a token, a national id or a name in a record.
    let national_id = "999 401 2284";
    for l in &lines {
        assert!(
            !l.contains(&token) && !l.contains(national_id) && !l.contains("Whitcombe"),
            "{l}"
        );
    }
    let allowed = decisions
        .iter()
        .find(|l| l.contains("\"decision\":\"allow\""))
        .unwrap();
    assert!(
        allowed.contains("\"$.identity.national_id\""),
        "fields are named: {allowed}"
    );
    // Altering one record is detected.
    let mut tampered = lines.clone();
    tampered[1] = tampered[1].replace("\"reason\":\"", "\"reason\":\"x");
    assert_ne!(tampered[1], lines[1]);
    assert!(audit::verify(tampered.iter().map(String::as_str), &[]).is_err());
    let removed: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| l.as_str())
        .collect();
    assert!(audit::verify(removed, &[]).is_err());
}

#[test]
fn metrics_count_decisions_fetches_and_redactions() {
    let (service, now) = (ConsentService::new(), SystemTime::now());
    let mut proxy = proxy_with(example_policy(|_| {}), &service, now)
        .start()
        .unwrap();
    let token = insurer_token(now);
    proxy.send(Request::get("/patients/p-1").bearer(&token), record_p1());
    proxy.send(Request::get("/patients/p-1").bearer(&token), record_p1());
    proxy.send(Request::get("/patients/p-1"), record_p1());
    assert_eq!(proxy.counter("consentry.decision.allow"), 2);
    assert_eq!(proxy.counter("consentry.decision.deny.token_missing"), 1);
    assert!(proxy.counter("consentry.fetch.status_list.ok") >= 1);
    assert!(proxy.counter("consentry.redacted.removed") >= 2);
    let _ = CONSENT_AUTHORITY;
}
