//! Decisions, table by table: every rule kind and its boundaries.

use serde_json::json;

use super::*;
use crate::http::{Headers, PeerCertificate};
use crate::redact::{self, KeyRing, Limits, RedactContext};
use crate::token::Consent;

const NOW: i64 = 1_795_780_800; // 2026-11-27T12:00:00Z, a Friday

fn consent(purposes: &[&str], domains: &[&str]) -> Consent {
    Consent {
        issuer: "https://consent.example".into(),
        subject: "p-1".into(),
        consent_id: "c-1".into(),
        grantee: Some("insurer-acme".into()),
        purposes: purposes.iter().map(|s| (*s).to_owned()).collect(),
        domains: domains.iter().map(|s| (*s).to_owned()).collect(),
        actions: vec!["read".into()],
        authorization_details: Vec::new(),
        delegations: vec!["p-5".into()],
        issued_at: Some(u64::try_from(NOW - 3600).unwrap()),
        not_before: None,
        expires_at: u64::try_from(NOW + 3600).unwrap(),
        status: None,
        cnf_x5t_s256: None,
        claims: json!({"sub": "p-1", "tier": "gold", "age": 42}),
    }
}

fn policy(rule: serde_json::Value) -> Policy {
    let raw = json!({
        "domains": ["identity", "contact", "clinical", "billing"],
        "purposes": ["claims", "research", "care"],
        "partners": {"insurers": ["insurer-acme", "insurer-bupa"]},
        "routes": [{
            "name": "record",
            "path": "/patients/{id}",
            "response": {"fields": [
                {"path": "$.identity", "domain": "identity"},
                {"path": "$.identity.birth_date", "domain": "identity", "action": {"generalise": "year"}},
                {"path": "$.contact.phone", "domain": "contact", "sensitivity": "high"},
                {"path": "$.clinical", "domain": "clinical", "sensitivity": "special"},
                {"path": "$.billing", "domain": "billing"},
                {"path": "$.id", "domain": "identity", "sensitivity": "low"}
            ]},
            "rules": [rule]
        }]
    });
    Policy::compile(serde_json::from_value(raw).unwrap(), "k1").unwrap_or_else(|e| panic!("{e:?}"))
}

struct Req {
    path: String,
    headers: Headers,
    source: Option<std::net::IpAddr>,
    peer: Option<PeerCertificate>,
    spiffe: Option<String>,
    now: i64,
}

fn req() -> Req {
    Req {
        path: "/patients/p-1".into(),
        headers: Headers::new(),
        source: "10.1.2.3".parse().ok(),
        peer: None,
        spiffe: None,
        now: NOW,
    }
}

fn decide(p: &Policy, c: &Consent, r: &Req) -> Decision {
    let (route, params) = p.route_for("GET", &r.path).expect("route");
    let facts = Facts {
        consent: c,
        method: "GET",
        path: &r.path,
        params: &params,
        query: None,
        headers: &r.headers,
        source_ip: r.source,
        peer: r.peer.as_ref(),
        spiffe_id: r.spiffe.as_deref(),
        now: r.now,
    };
    p.decide(route, &facts)
}

fn allowed(rule: serde_json::Value, c: &Consent, r: &Req) -> bool {
    let p = policy(rule);
    decide(&p, c, r).allow
}

fn base(extra: serde_json::Value) -> serde_json::Value {
    let mut rule = json!({"name": "r", "purposes": ["claims"], "release": ["billing", "identity"]});
    if let (Some(r), Some(e)) = (rule.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            r.insert(k.clone(), v.clone());
        }
    }
    rule
}

#[test]
fn purpose_comes_from_the_header_or_the_only_consented_purpose() {
    let p = policy(base(json!({})));
    let one = consent(&["claims"], &["billing"]);
    assert_eq!(decide(&p, &one, &req()).reason, Reason::Allowed);
    let two = consent(&["claims", "care"], &["billing"]);
    assert_eq!(decide(&p, &two, &req()).reason, Reason::PurposeAmbiguous);
    let mut r = req();
    r.headers.push("x-consent-purpose", "claims");
    assert_eq!(decide(&p, &two, &r).reason, Reason::Allowed);
    let mut r = req();
    r.headers.push("x-consent-purpose", "research");
    assert_eq!(decide(&p, &two, &r).reason, Reason::PurposeNotConsented);
    r.headers.push("x-consent-purpose", "claims");
    assert_eq!(decide(&p, &two, &r).reason, Reason::PurposeMalformed);
}

#[test]
fn grantees_partner_sets_actions_and_domains() {
    let c = consent(&["claims"], &["billing"]);
    assert!(allowed(base(json!({"partners": ["insurers"]})), &c, &req()));
    assert!(!allowed(base(json!({"grantees": ["lab-1"]})), &c, &req()));
    let mut anonymous = c.clone();
    anonymous.grantee = None;
    assert!(!allowed(
        base(json!({"partners": ["insurers"]})),
        &anonymous,
        &req()
    ));
    assert!(allowed(
        base(json!({"consent_actions": ["read"]})),
        &c,
        &req()
    ));
    assert!(!allowed(
        base(json!({"consent_actions": ["read", "write"]})),
        &c,
        &req()
    ));
    assert!(allowed(
        base(json!({"require_domains": ["billing"]})),
        &c,
        &req()
    ));
    assert!(!allowed(
        base(json!({"require_domains": ["clinical"]})),
        &c,
        &req()
    ));
}

#[test]
fn relationships_to_the_path_subject() {
    let c = consent(&["claims"], &["billing"]);
    let mut own = req();
    own.path = "/patients/p-1".into();
    let mut ward = req();
    ward.path = "/patients/p-5".into();
    let mut stranger = req();
    stranger.path = "/patients/p-9".into();
    let is = base(json!({"subject": {"is": "id"}}));
    let acts = base(json!({"subject": {"acts_for": "id"}}));
    let either = base(json!({"subject": {"is_or_acts_for": "id"}}));
    assert!(allowed(is.clone(), &c, &own) && !allowed(is, &c, &ward));
    assert!(!allowed(acts.clone(), &c, &own) && allowed(acts, &c, &ward));
    assert!(allowed(either.clone(), &c, &own) && allowed(either.clone(), &c, &ward));
    assert!(!allowed(either, &c, &stranger));
}

#[test]
fn validity_windows_on_their_first_and_last_second() {
    let c = consent(&["claims"], &["billing"]);
    let rule =
        base(json!({"valid_from": "2026-11-27T12:00:00Z", "valid_until": "2026-11-27T13:00:00Z"}));
    let at = |t: i64| {
        let mut r = req();
        r.now = t;
        allowed(rule.clone(), &c, &r)
    };
    assert!(!at(NOW - 1));
    assert!(at(NOW));
    assert!(at(NOW + 3599));
    assert!(!at(NOW + 3600));
}

#[test]
fn consent_age_and_hours_of_day() {
    let c = consent(&["claims"], &["billing"]); // issued an hour ago
    assert!(allowed(
        base(json!({"max_consent_age_seconds": 3600})),
        &c,
        &req()
    ));
    assert!(!allowed(
        base(json!({"max_consent_age_seconds": 3599})),
        &c,
        &req()
    ));
    let mut no_iat = c.clone();
    no_iat.issued_at = None;
    assert!(!allowed(
        base(json!({"max_consent_age_seconds": 3600})),
        &no_iat,
        &req()
    ));
    let office = base(json!({"hours": {"from": "09:00", "to": "12:00", "days": ["mon", "fri"]}}));
    let at = |t: i64| {
        let mut r = req();
        r.now = t;
        allowed(office.clone(), &c, &r)
    };
    assert!(!at(NOW), "12:00 is the first second after the window");
    assert!(at(NOW - 1));
    assert!(at(NOW - 3 * 3600));
    assert!(!at(NOW - 3 * 3600 - 1));
    assert!(!at(NOW - 86_400 + 60), "Thursday");
}

#[test]
fn networks_mtls_and_spiffe_identity() {
    let c = consent(&["claims"], &["billing"]);
    let edge = |ip: &str| {
        let mut r = req();
        r.source = ip.parse().ok();
        allowed(base(json!({"source_cidrs": ["10.1.0.0/16"]})), &c, &r)
    };
    assert!(edge("10.1.0.0") && edge("10.1.255.255"));
    assert!(!edge("10.2.0.0") && !edge("10.0.255.255"));
    let mut unknown_source = req();
    unknown_source.source = None;
    assert!(!allowed(
        base(json!({"source_cidrs": ["0.0.0.0/0"]})),
        &c,
        &unknown_source
    ));
    assert!(!allowed(base(json!({"mtls": true})), &c, &req()));
    let mut tls = req();
    tls.peer = Some(PeerCertificate::default());
    tls.spiffe = Some("insurer-acme".into());
    assert!(allowed(
        base(json!({"mtls": true, "caller_is_grantee": true})),
        &c,
        &tls
    ));
    tls.spiffe = Some("spiffe://partner/x".into());
    assert!(!allowed(base(json!({"caller_is_grantee": true})), &c, &tls));
    assert!(allowed(
        base(json!({"spiffe_ids": ["spiffe://partner/x"]})),
        &c,
        &tls
    ));
}

#[test]
fn expressions_and_their_errors_never_grant() {
    let c = consent(&["claims"], &["billing"]);
    assert!(allowed(
        base(json!({"when": "claims.tier == 'gold' && purpose == 'claims'"})),
        &c,
        &req()
    ));
    assert!(!allowed(
        base(json!({"when": "claims.tier == 'silver'"})),
        &c,
        &req()
    ));
    // A missing claim is an error: the allow rule does not match ...
    assert!(!allowed(
        base(json!({"when": "claims.missing == 'x'"})),
        &c,
        &req()
    ));
    // ... and a deny rule whose condition errors refuses.
    let p = {
        let raw = json!({
            "domains": ["billing"], "purposes": ["claims"],
            "routes": [{"name": "r", "path": "/patients/{id}",
                "response": {"fields": [{"path": "$.billing", "domain": "billing"}]},
                "rules": [
                    {"name": "deny-broken", "effect": "deny", "when": "claims.missing == 'x'"},
                    {"name": "allow", "purposes": ["claims"], "release": ["billing"]}
                ]}]
        });
        Policy::compile(serde_json::from_value(raw).unwrap(), "k1").unwrap()
    };
    let d = decide(&p, &c, &req());
    assert_eq!(
        (d.allow, d.reason, d.rule),
        (false, Reason::DeniedByRule, Some(0))
    );
}

#[test]
fn explicit_deny_wins_and_nothing_matched_denies() {
    let raw = json!({
        "domains": ["billing"], "purposes": ["claims"],
        "routes": [{"name": "r", "path": "/patients/{id}",
            "response": {"fields": [{"path": "$.billing", "domain": "billing"}]},
            "rules": [
                {"name": "allow", "purposes": ["claims"], "release": ["billing"]},
                {"name": "deny-bupa", "effect": "deny", "grantees": ["insurer-bupa"]}
            ]}]
    });
    let p = Policy::compile(serde_json::from_value(raw).unwrap(), "k1").unwrap();
    let acme = consent(&["claims"], &["billing"]);
    assert!(decide(&p, &acme, &req()).allow);
    let mut bupa = acme.clone();
    bupa.grantee = Some("insurer-bupa".into());
    let d = decide(&p, &bupa, &req());
    assert_eq!(
        (d.allow, d.reason, d.rule),
        (false, Reason::DeniedByRule, Some(1))
    );
    let research = consent(&["research"], &["billing"]);
    assert_eq!(
        decide(&p, &research, &req()).reason,
        Reason::PurposeNotConsented
    );
}

#[test]
fn the_plan_releases_consented_domains_and_applies_actions_to_the_rest() {
    let p = policy(base(
        json!({"actions": {"contact": {"mask": {"keep_last": 4}}}}),
    ));
    // Consent covers billing and contact; the rule releases billing and identity.
    let c = consent(&["claims"], &["billing", "contact"]);
    let d = decide(&p, &c, &req());
    assert!(d.allow);
    assert_eq!(p.domain_names(d.released), vec!["billing"]);
    let plan = p.plan(d.route, d.rule.unwrap(), d.released).unwrap();
    let body = br#"{"id":"p-1","identity":{"name":"Ada","birth_date":"1984-03-12"},"contact":{"phone":"+44 7700 900123"},"clinical":{"dx":"x"},"billing":{"total":120.50},"extra":1}"#;
    let keys = KeyRing::new();
    let mut random = |b: &mut [u8]| b.fill(7);
    let mut cx = RedactContext {
        pseudonym_keys: &keys,
        grantee: Some("insurer-acme"),
        recipient: None,
        random: &mut random,
    };
    let out = redact::redact(
        &plan,
        body,
        Limits {
            max_bytes: 1 << 20,
            max_depth: 64,
        },
        &mut cx,
    )
    .unwrap();
    let text = String::from_utf8(out.body).unwrap();
    // identity not consented: removed, but its birth date is generalised by its own
    // action; contact masked by the rule; clinical removed; billing released in clear;
    // unclassified `extra` removed by the strict default.
    assert_eq!(
        text,
        r#"{"identity":{"birth_date":"1984"},"contact":{"phone":"***********0123"},"billing":{"total":120.50}}"#
    );
    // The same decision reuses the cached plan.
    assert!(Rc::ptr_eq(
        &plan,
        &p.plan(d.route, d.rule.unwrap(), d.released).unwrap()
    ));
}

#[test]
fn an_allow_that_would_release_nothing_consented_is_refused() {
    let p = policy(base(json!({})));
    let c = consent(&["claims"], &["clinical"]);
    assert_eq!(decide(&p, &c, &req()).reason, Reason::NoConsentedDomain);
}

#[test]
fn special_category_fields_need_a_rule_that_says_so() {
    let c = consent(&["care"], &["clinical"]);
    let normal = policy(json!({"name": "r", "purposes": ["care"], "release": ["clinical"]}));
    let d = decide(&normal, &c, &req());
    let plan = normal.plan(d.route, d.rule.unwrap(), d.released).unwrap();
    assert!(
        plan.rules().iter().any(
            |(p, a)| p == &FieldPath::parse("$.clinical").unwrap() && *a == FieldAction::Remove
        )
    );
    let special = policy(
        json!({"name": "r", "purposes": ["care"], "release": ["clinical"], "max_sensitivity": "special"}),
    );
    let d = decide(&special, &c, &req());
    let plan = special.plan(d.route, d.rule.unwrap(), d.released).unwrap();
    assert!(
        plan.rules()
            .iter()
            .any(|(p, a)| p == &FieldPath::parse("$.clinical").unwrap() && *a == FieldAction::Keep)
    );
}

#[test]
fn configuration_errors_name_their_place() {
    let bad = json!({
        "domains": ["billing", "billing"], "purposes": ["claims"],
        "partners": {"insurers": []},
        "routes": [{"name": "r", "path": "/patients/{id}",
            "response": {"content_types": ["text/html"], "fields": [
                {"path": "billing", "domain": "billing"},
                {"path": "$.x", "domain": "nope"}
            ]},
            "rules": [
                {"name": "a", "purposes": ["claimz"], "release": ["billing", "x"], "subject": {"is": "pid"},
                 "valid_from": "yesterday", "source_cidrs": ["10.0.0.1/8"], "when": "claims.a ==",
                 "hours": {"from": "9:00", "to": "18:00", "days": ["funday"]}, "partners": ["insurers", "labs"]},
                {"name": "a", "effect": "deny"}
            ]},
            {"name": "r2", "path": "/patients/{pid}", "rules": [{"name": "x", "release": []}]}]
    });
    let errs = Policy::compile(serde_json::from_value(bad).unwrap(), "k1").unwrap_err();
    let text: Vec<String> = errs.iter().map(|(a, b)| format!("{a}: {b}")).collect();
    let all = text.join("\n");
    for needle in [
        "$.domains[1]: domain 'billing' is empty or listed twice",
        "$.routes[0].response.content_types[0]: 'text/html' cannot be redacted",
        "$.routes[0].response.fields[0].path: bad field path",
        "$.routes[0].response.fields[1].domain: unknown domain 'nope'",
        "$.routes[0].rules[0].purposes[0]: unknown purpose 'claimz'",
        "$.routes[0].rules[0].release[1]: unknown domain 'x'",
        "$.routes[0].rules[0].subject: 'pid' is not a parameter",
        "$.routes[0].rules[0].valid_from: 'yesterday' is not an RFC 3339 time",
        "$.routes[0].rules[0].source_cidrs[0]: '10.0.0.1/8' has host bits set",
        "$.routes[0].rules[0].when: expression error at offset 11",
        "$.routes[0].rules[0].hours.from: '9:00' is not a time of day",
        "$.routes[0].rules[0].hours.days[0]: 'funday' is not one of",
        "$.routes[0].rules[0].partners[1]: unknown partner set 'labs'",
        "$.routes[0].rules[1].name: rule name 'a' is empty or used twice",
        "$.routes[1].path: route 'r2' is unreachable",
    ] {
        assert!(all.contains(needle), "missing «{needle}» in:\n{all}");
    }
}

/// A route of `fields` with one rule releasing `identity`, compiled.
fn compile_fields(response: serde_json::Value) -> Result<Policy, Vec<(String, String)>> {
    let raw = json!({
        "domains": ["identity", "special"], "purposes": ["claims"],
        "routes": [{"name": "r", "path": "/patients/{id}", "response": response,
            "rules": [{"name": "a", "purposes": ["claims"], "release": ["identity"]}]}]
    });
    Policy::compile(serde_json::from_value(raw).unwrap(), "k1")
}

fn redact_with(p: &Policy, released: DomainSet, body: &str) -> Result<String, redact::RedactError> {
    let plan = p.plan(0, 0, released).unwrap();
    let keys = KeyRing::new();
    let mut random = |b: &mut [u8]| b.fill(7);
    let mut cx = RedactContext {
        pseudonym_keys: &keys,
        grantee: None,
        recipient: None,
        random: &mut random,
    };
    let limits = Limits {
        max_bytes: 1 << 20,
        max_depth: 64,
    };
    redact::redact(&plan, body.as_bytes(), limits, &mut cx)
        .map(|r| String::from_utf8(r.body).unwrap())
}

#[test]
fn any_depth_and_case_insensitive_fields_reach_the_plan() {
    let p = compile_fields(json!({"unclassified": "keep", "fields": [
        {"path": "$..national_id", "domain": "special"},
        {"path": "$.patient.national_id", "domain": "identity"},
        {"path": "$.ssn", "domain": "special", "match": "case_insensitive"}
    ]}))
    .unwrap();
    let body = r#"{"patient":{"national_id":1},"x":[{"national_id":2}],"SSN":3,"ſſn":4,"Ssn2":5}"#;
    // identity released: the explicit path beats `$..national_id` where it names it.
    assert_eq!(
        redact_with(&p, 0b01, body).unwrap(),
        r#"{"patient":{"national_id":1},"x":[{}],"Ssn2":5}"#
    );
    // Route-wide case-insensitive matching, a field going back to exact.
    let p = compile_fields(
        json!({"unclassified": "keep", "match": "case_insensitive", "fields": [
            {"path": "$.ssn", "domain": "special"},
            {"path": "$.Name", "domain": "special", "match": "exact"}
        ]}),
    )
    .unwrap();
    assert_eq!(
        redact_with(&p, 0b01, r#"{"SSN":1,"name":2,"Name":3}"#).unwrap(),
        r#"{"name":2}"#
    );
}

#[test]
fn control_characters_in_names_follow_the_route() {
    let body = r#"{"a\u0000":1,"b":2}"#;
    let remove = compile_fields(json!({"unclassified": "keep"})).unwrap();
    assert_eq!(redact_with(&remove, 0b01, body).unwrap(), r#"{"b":2}"#);
    let withhold =
        compile_fields(json!({"unclassified": "keep", "control_keys": "withhold"})).unwrap();
    assert_eq!(
        redact_with(&withhold, 0b01, body),
        Err(redact::RedactError::ControlKey { offset: 1 })
    );
}

#[test]
fn matching_errors_name_their_place() {
    let errs = compile_fields(json!({"fields": [
        {"path": "$.*[*]", "domain": "identity", "match": "case_insensitive"},
        {"path": "$.SSN", "domain": "identity", "match": "case_insensitive"},
        {"path": "$[\"ſsn\"]", "domain": "special", "match": "case_insensitive"},
        {"path": "$..*", "domain": "identity"},
        {"path": "$.ssn", "domain": "identity"}
    ]}))
    .unwrap_err();
    let all: Vec<String> = errs.iter().map(|(a, b)| format!("{a}: {b}")).collect();
    let all = all.join("\n");
    for needle in [
        "$.routes[0].response.fields[0].match: '$.*[*]' names no member",
        "$.routes[0].response.fields[2].path: '$[\"ſsn\"]' is classified twice (as '$.SSN', under case-insensitive matching)",
        "$.routes[0].response.fields[3].path: bad field path: '$..*': '..' must be followed by a member name",
        "$.routes[0].response.fields[4].path: '$.ssn' is classified twice (as '$.SSN'",
    ] {
        assert!(all.contains(needle), "missing «{needle}» in:\n{all}");
    }
}
