//! The policy's decisions through the `.wasm`, table-driven: every rule kind on its
//! edges (purposes, grantees and partner sets, relationship, consented actions,
//! required domains, validity window, consent age, hours of day, source networks,
//! mTLS, SPIFFE identity, `when` expressions), explicit deny, nothing matched, and
//! what an allow releases. Each case states the policy variation (the rules of the
//! example's `patient-record` route), the token, the request and the time, and the
//! status, problem code and internal reason expected; allowed cases say which fields
//! the client sees and which it does not.
//!
//! Then request minimisation (query, headers, JSON body, per purpose) and provenance.

use consentry_host::{Peer, Request, Response, mint};
use serde_json::{Map, Value, json};

use crate::support::{
    T0, example_policy, reason, repo_file, sign_dev, start_at, upstream_record, verdict,
};

const DAY: u64 = 86_400;
/// Friday 2026-11-27 00:00:00Z.
const FRI: u64 = T0 - 12 * 3600;

/// The insurer's allow rule as the example writes it, without its field actions.
fn insurer_rule() -> Value {
    json!({
        "name": "case",
        "purposes": ["claims"],
        "partners": ["insurers"],
        "subject": {"is": "id"},
        "consent_actions": ["read"],
        "release": ["billing", "identity"]
    })
}

/// The insurer's rule with more conditions.
fn insurer_rule_with(extra: Value) -> Value {
    let mut r = insurer_rule();
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    r
}

fn certificate(name: &str) -> String {
    String::from_utf8(repo_file(&format!(
        "plugin/core/tests/fixtures/tokens/certs/{name}"
    )))
    .unwrap()
}

const INSURER_SPIFFE: &str = "spiffe://partner.example/insurer";

/// A TLS peer presenting a fixture certificate (whose one URI SAN is the insurer's
/// SPIFFE ID, unless the file says otherwise); `uri_sans` is what Envoy reports.
fn peer_with(cert: Option<&str>, uri_sans: &[&str]) -> Peer {
    Peer {
        uri_sans: uri_sans.iter().map(|s| (*s).to_owned()).collect(),
        cert_sha256: Some("ab".repeat(32)),
        certificate: cert.map(certificate),
        subject: None,
    }
}

/// One row of the table.
struct Case {
    name: String,
    /// The rules of the `patient-record` route.
    rules: Value,
    persona: &'static str,
    /// Claims set over the persona's (`null` removes one).
    claims: Value,
    /// The JOSE `typ`: `at+jwt` (RFC 9068, which requires `client_id` and `iat`), or
    /// another for a consent outside that profile.
    typ: &'static str,
    /// `iat` relative to `now` (seconds; negative: in the past).
    iat: i64,
    path: String,
    headers: Vec<(String, String)>,
    peer: Option<Peer>,
    source: Option<String>,
    now: u64,
    status: u16,
    code: &'static str,
    reason: &'static str,
    /// Dotted paths the allowed client body must hold, with optional exact values.
    shows: Vec<(&'static str, Option<Value>)>,
    /// Dotted paths it must not hold.
    hides: Vec<&'static str>,
}

fn case(name: impl Into<String>) -> Case {
    Case {
        name: name.into(),
        rules: json!([insurer_rule()]),
        persona: "insurer",
        claims: json!({}),
        typ: mint::CONSENT_TYP,
        iat: -10,
        path: "/patients/p-1".into(),
        headers: Vec::new(),
        peer: None,
        source: None,
        now: T0,
        status: 200,
        code: "",
        reason: "allowed",
        shows: Vec::new(),
        hides: Vec::new(),
    }
}

impl Case {
    fn rules(mut self, rules: Value) -> Self {
        self.rules = rules;
        self
    }
    fn rule(self, extra: Value) -> Self {
        self.rules(json!([insurer_rule_with(extra)]))
    }
    fn persona(mut self, p: &'static str) -> Self {
        self.persona = p;
        self
    }
    fn claims(mut self, c: Value) -> Self {
        self.claims = c;
        self
    }
    /// A plain JWT, outside RFC 9068's profile, so `client_id` or `iat` may be absent.
    fn plain_jwt(mut self) -> Self {
        self.typ = "JWT";
        self
    }
    fn iat(mut self, offset: i64) -> Self {
        self.iat = offset;
        self
    }
    fn path(mut self, p: &str) -> Self {
        self.path = p.to_owned();
        self
    }
    fn header(mut self, n: &str, v: &str) -> Self {
        self.headers.push((n.to_owned(), v.to_owned()));
        self
    }
    fn peer(mut self, p: Peer) -> Self {
        self.peer = Some(p);
        self
    }
    fn from(mut self, address: &str) -> Self {
        self.source = Some(address.to_owned());
        self
    }
    fn at(mut self, now: u64) -> Self {
        self.now = now;
        self
    }
    fn denied(mut self, reason: &'static str) -> Self {
        self.status = 403;
        self.code = "access_denied";
        self.reason = reason;
        self
    }
    fn bad_request(mut self, reason: &'static str) -> Self {
        self.status = 400;
        self.code = "bad_request";
        self.reason = reason;
        self
    }
    fn shows(mut self, path: &'static str) -> Self {
        self.shows.push((path, None));
        self
    }
    fn shows_value(mut self, path: &'static str, v: Value) -> Self {
        self.shows.push((path, Some(v)));
        self
    }
    fn hides(mut self, path: &'static str) -> Self {
        self.hides.push(path);
        self
    }

    /// Runs the case in a fresh proxy; returns what went wrong, if anything.
    fn run(self) -> Option<String> {
        let rules = self.rules.clone();
        let config = example_policy(|p| {
            let route = p["routes"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .find(|r| r["name"] == "patient-record")
                .unwrap();
            route["rules"] = rules;
        });
        let (mut proxy, _service) = start_at(config, self.now);
        let iat = self.now.saturating_add_signed(self.iat);
        let mut claims = crate::support::persona_claims(self.persona, iat, 3600);
        let extra: Map<String, Value> = self.claims.as_object().unwrap().clone();
        mint::overlay(&mut claims, &extra);
        let token = mint::SigningKey::dev()
            .unwrap()
            .sign(self.typ, &Value::Object(claims))
            .unwrap();
        let mut req = Request::get(&self.path).bearer(&token);
        for (n, v) in &self.headers {
            req = req.header(n, v);
        }
        if let Some(p) = self.peer.clone() {
            req = req.peer(p);
        }
        if let Some(a) = &self.source {
            req = req.from_address(a);
        }
        let id = self
            .path
            .trim_start_matches("/patients/")
            .split('/')
            .next()
            .unwrap_or("p-1")
            .to_owned();
        let upstream = if ["p-1", "p-2", "p-4", "p-5"].contains(&id.as_str()) {
            upstream_record(&id)
        } else {
            Response::json(200, format!(r#"{{"id":"{id}"}}"#))
        };
        let out = proxy.send(req, upstream);
        let got = verdict(&out);
        let why = reason(&out);
        let want = (self.status, self.code.to_owned());
        if got != want || why != self.reason {
            return Some(format!(
                "{}: got {got:?} for {why:?}, expected {want:?} for {:?}",
                self.name, self.reason
            ));
        }
        if self.status != 200 {
            if out.upstream_request.is_some() {
                return Some(format!(
                    "{}: a refused request reached the upstream",
                    self.name
                ));
            }
            return None;
        }
        let body = out.client.json();
        for (path, value) in &self.shows {
            match (member(&body, path), value) {
                (None, _) => return Some(format!("{}: {path} is not released", self.name)),
                (Some(v), Some(want)) if v != want => {
                    return Some(format!("{}: {path} is {v}, expected {want}", self.name));
                }
                _ => {}
            }
        }
        for path in &self.hides {
            if let Some(v) = member(&body, path) {
                return Some(format!("{}: {path} is released ({v})", self.name));
            }
        }
        None
    }
}

/// A member by dotted path; numeric segments index arrays.
fn member<'v>(doc: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(doc, |v, seg| match v {
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        Value::Object(o) => o.get(seg),
        _ => None,
    })
}

fn run_all(cases: Vec<Case>) {
    let n = cases.len();
    let failures: Vec<String> = cases.into_iter().filter_map(Case::run).collect();
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn purposes_come_from_the_header_or_the_consents_only_purpose() {
    run_all(vec![
        case("no header: the consent's only purpose"),
        case("the header names the consented purpose").header("x-consent-purpose", "claims"),
        case("the header's value is trimmed").header("x-consent-purpose", " claims "),
        case("the header names a purpose the consent lacks")
            .header("x-consent-purpose", "research")
            .denied("purpose_not_consented"),
        case("the header names a consented but undeclared purpose")
            .claims(json!({"purpose": ["claims", "marketing"]}))
            .header("x-consent-purpose", "marketing")
            .denied("purpose_not_consented"),
        case("two consented purposes and no header")
            .claims(json!({"purpose": ["claims", "research"]}))
            .bad_request("purpose_ambiguous"),
        case("two consented purposes, the header picks one")
            .claims(json!({"purpose": ["claims", "research"]}))
            .header("x-consent-purpose", "claims"),
        case("the header sent twice")
            .header("x-consent-purpose", "claims")
            .header("x-consent-purpose", "claims")
            .bad_request("purpose_malformed"),
        case("the consent's only purpose is not declared by the policy")
            .claims(json!({"purpose": ["marketing"]}))
            .denied("purpose_not_consented"),
        case("the consent names no purpose")
            .claims(json!({"purpose": null}))
            .denied("purpose_not_consented"),
        case("a rule for another purpose")
            .rule(json!({"purposes": ["research"]}))
            .claims(json!({"purpose": ["claims", "research"]}))
            .header("x-consent-purpose", "claims")
            .denied("no_rule_matched"),
    ]);
}

#[test]
fn grantees_and_partner_sets() {
    let suspended_first = json!([
        {"name": "suspended-partners", "effect": "deny", "partners": ["suspended"]},
        insurer_rule_with(json!({"partners": ["insurers", "suspended"]}))
    ]);
    run_all(vec![
        case("a grantee listed by name")
            .rule(json!({"partners": [], "grantees": ["insurer-acme"]})),
        case("another grantee listed by name")
            .rule(json!({"partners": [], "grantees": ["insurer-other"]}))
            .denied("no_rule_matched"),
        case("a grantee outside the partner set")
            .claims(json!({"client_id": "lab-ucl"}))
            .denied("no_rule_matched"),
        case("a grantee in one of two partner sets")
            .rule(json!({"partners": ["research_labs", "insurers"]})),
        case("a grantee named by azp when client_id is absent")
            .plain_jwt()
            .claims(json!({"client_id": null, "azp": "insurer-acme"})),
        case("no grantee claim at all")
            .plain_jwt()
            .claims(json!({"client_id": null}))
            .denied("no_rule_matched"),
        case("a suspended partner, also in an allowed set")
            .rules(suspended_first.clone())
            .claims(json!({"client_id": "insurer-suspended"}))
            .denied("denied_by_rule"),
        case("the suspension does not touch others").rules(suspended_first),
    ]);
}

#[test]
fn relationship_between_the_subject_and_the_path() {
    let guardian = |subject: Value| {
        json!([{
            "name": "case",
            "purposes": ["access"],
            "partners": ["patient_apps"],
            "subject": subject,
            "release": ["identity", "contact", "clinical", "billing"]
        }])
    };
    run_all(vec![
        case("is: the subject's own record"),
        case("is: another subject's record")
            .path("/patients/p-2")
            .denied("no_rule_matched"),
        case("acts_for: the ward's record")
            .persona("guardian")
            .rules(guardian(json!({"acts_for": "id"})))
            .path("/patients/p-5")
            .shows_value("identity.name.given", json!("Maya")),
        case("acts_for: not the guardian's own record")
            .persona("guardian")
            .rules(guardian(json!({"acts_for": "id"})))
            .path("/patients/p-4")
            .denied("no_rule_matched"),
        case("acts_for: not a stranger's record")
            .persona("guardian")
            .rules(guardian(json!({"acts_for": "id"})))
            .path("/patients/p-1")
            .denied("no_rule_matched"),
        case("acts_for: every delegation of an array counts")
            .persona("guardian")
            .claims(json!({"act": [{"sub": "p-1"}, {"sub": "p-5"}]}))
            .rules(guardian(json!({"acts_for": "id"})))
            .path("/patients/p-1"),
        case("is_or_acts_for: the guardian's own record")
            .persona("guardian")
            .rules(guardian(json!({"is_or_acts_for": "id"})))
            .path("/patients/p-4"),
        case("is_or_acts_for: the ward's record")
            .persona("guardian")
            .rules(guardian(json!({"is_or_acts_for": "id"})))
            .path("/patients/p-5"),
        case("is_or_acts_for: a stranger's record")
            .persona("guardian")
            .rules(guardian(json!({"is_or_acts_for": "id"})))
            .path("/patients/p-2")
            .denied("no_rule_matched"),
    ]);
}

#[test]
fn consented_actions_and_required_domains() {
    run_all(vec![
        case("the consent allows the action"),
        case("the consent allows another action")
            .claims(json!({"actions": ["write"]}))
            .denied("no_rule_matched"),
        case("the consent names no action")
            .claims(json!({"actions": null}))
            .denied("no_rule_matched"),
        case("the rule needs two actions, the consent has one")
            .rule(json!({"consent_actions": ["read", "export"]}))
            .denied("no_rule_matched"),
        case("the rule needs two actions, the consent has both")
            .rule(json!({"consent_actions": ["read", "export"]}))
            .claims(json!({"actions": ["export", "read"]})),
        case("a required domain consented").rule(json!({"require_domains": ["billing"]})),
        case("a required domain not consented")
            .rule(json!({"require_domains": ["billing"]}))
            .claims(json!({"data_domains": ["identity"]}))
            .denied("no_rule_matched"),
        case("two required domains, one consented")
            .rule(json!({"require_domains": ["billing", "contact"]}))
            .denied("no_rule_matched"),
    ]);
}

#[test]
fn the_validity_window_on_its_first_and_last_second() {
    let window =
        json!({"valid_from": "2026-11-27T12:00:00Z", "valid_until": "2026-11-27T13:00:00Z"});
    let offset = json!({"valid_from": "2026-11-27T13:00:00+01:00"});
    run_all(vec![
        case("the first second").rule(window.clone()).at(T0),
        case("one second before")
            .rule(window.clone())
            .at(T0 - 1)
            .denied("no_rule_matched"),
        case("the last second").rule(window.clone()).at(T0 + 3599),
        case("the end, exclusive")
            .rule(window)
            .at(T0 + 3600)
            .denied("no_rule_matched"),
        case("a start written with an offset")
            .rule(offset.clone())
            .at(T0),
        case("one second before a start written with an offset")
            .rule(offset)
            .at(T0 - 1)
            .denied("no_rule_matched"),
    ]);
}

#[test]
fn the_consent_age_on_its_edge() {
    let max = json!({"max_consent_age_seconds": 3600});
    run_all(vec![
        case("issued exactly the maximum age ago")
            .rule(max.clone())
            .iat(-3600),
        case("issued one second earlier")
            .rule(max.clone())
            .iat(-3601)
            .denied("no_rule_matched"),
        case("no iat: the age cannot be known")
            .rule(max)
            .plain_jwt()
            .claims(json!({"iat": null, "nbf": T0 - 10}))
            .denied("no_rule_matched"),
    ]);
}

#[test]
fn hours_of_day_with_a_utc_offset_and_days() {
    let office = json!({"hours": {"from": "08:00", "to": "18:00", "utc_offset": "+01:00",
                                  "days": ["mon", "tue", "wed", "thu", "fri"]}});
    let fridays = json!({"hours": {"from": "00:00", "to": "24:00", "utc_offset": "+01:00",
                                   "days": ["fri"]}});
    let night = json!({"hours": {"from": "22:00", "to": "06:00", "utc_offset": "-05:00",
                                 "days": ["fri"]}});
    let h = 3600;
    run_all(vec![
        // Office hours in UTC+1: 07:00Z to 17:00Z on weekdays.
        case("office: Friday 08:00 local")
            .rule(office.clone())
            .at(FRI + 7 * h),
        case("office: Friday 07:59:59 local")
            .rule(office.clone())
            .at(FRI + 7 * h - 1)
            .denied("no_rule_matched"),
        case("office: Friday 17:59:59 local")
            .rule(office.clone())
            .at(FRI + 17 * h - 1),
        case("office: Friday 18:00 local, the end is exclusive")
            .rule(office.clone())
            .at(FRI + 17 * h)
            .denied("no_rule_matched"),
        case("office: Saturday 10:00 local")
            .rule(office.clone())
            .at(FRI + DAY + 9 * h)
            .denied("no_rule_matched"),
        case("office: Monday 08:00 local")
            .rule(office)
            .at(FRI + 3 * DAY + 7 * h),
        // The offset moves the day: Friday in UTC+1 is Thursday 23:00Z to Friday 23:00Z.
        case("Fridays: Thursday 23:59:59 local")
            .rule(fridays.clone())
            .at(FRI - h - 1)
            .denied("no_rule_matched"),
        case("Fridays: Friday 00:00 local, still Thursday in UTC")
            .rule(fridays.clone())
            .at(FRI - h),
        case("Fridays: Friday 23:59:59 local")
            .rule(fridays.clone())
            .at(FRI + 23 * h - 1),
        case("Fridays: Saturday 00:00 local, still Friday in UTC")
            .rule(fridays)
            .at(FRI + 23 * h)
            .denied("no_rule_matched"),
        // Friday nights in UTC-5 (22:00 to 06:00 local): Saturday 03:00Z to 11:00Z.
        case("night: Friday 21:59:59 local")
            .rule(night.clone())
            .at(FRI + DAY + 3 * h - 1)
            .denied("no_rule_matched"),
        case("night: Friday 22:00 local")
            .rule(night.clone())
            .at(FRI + DAY + 3 * h),
        case("night: Saturday 05:59:59 local, the night that began on Friday")
            .rule(night.clone())
            .at(FRI + DAY + 11 * h - 1),
        case("night: Saturday 06:00 local")
            .rule(night.clone())
            .at(FRI + DAY + 11 * h)
            .denied("no_rule_matched"),
        case("night: Thursday 23:00 local, a night that began on Thursday")
            .rule(night)
            .at(FRI + 4 * h)
            .denied("no_rule_matched"),
    ]);
}

#[test]
fn source_networks_on_their_edges_in_ipv4_and_ipv6() {
    let nets = json!({"source_cidrs": ["10.1.0.0/16", "2001:db8::/32", "192.0.2.7/32"]});
    let row = |addr: &str, allowed: bool| {
        let c = case(format!("from {addr}")).rule(nets.clone()).from(addr);
        if allowed {
            c
        } else {
            c.denied("no_rule_matched")
        }
    };
    run_all(vec![
        row("10.1.0.0:5000", true),
        row("10.1.255.255:5000", true),
        row("10.0.255.255:5000", false),
        row("10.2.0.0:5000", false),
        row("192.0.2.7:443", true),
        row("192.0.2.8:443", false),
        row("192.0.2.6:443", false),
        row("[2001:db8::1]:443", true),
        row("[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:443", true),
        row("[2001:db7:ffff:ffff:ffff:ffff:ffff:ffff]:443", false),
        row("[2001:db9::]:443", false),
        row("[::ffff:10.1.2.3]:443", true),
        row("[::ffff:10.2.0.1]:443", false),
        row("[::1]:443", false),
    ]);
}

#[test]
fn mtls_spiffe_ids_and_the_caller_as_grantee() {
    let as_spiffe = json!({"client_id": INSURER_SPIFFE});
    let grantee_rule =
        json!({"partners": [], "grantees": [INSURER_SPIFFE], "caller_is_grantee": true});
    run_all(vec![
        case("mtls: no client certificate")
            .rule(json!({"mtls": true}))
            .denied("no_rule_matched"),
        case("mtls: a client certificate")
            .rule(json!({"mtls": true}))
            .peer(peer_with(None, &[])),
        case("spiffe: the certificate's one URI SAN is listed")
            .rule(json!({"spiffe_ids": [INSURER_SPIFFE]}))
            .peer(peer_with(Some("one-uri.pem"), &[INSURER_SPIFFE])),
        case("spiffe: a DNS SAN beside the one URI SAN")
            .rule(json!({"spiffe_ids": [INSURER_SPIFFE]}))
            .peer(peer_with(Some("dns-and-uri.pem"), &[INSURER_SPIFFE])),
        case("spiffe: another identity is listed")
            .rule(json!({"spiffe_ids": ["spiffe://partner.example/other"]}))
            .peer(peer_with(Some("one-uri.pem"), &[INSURER_SPIFFE]))
            .denied("no_rule_matched"),
        case("spiffe: the proxy names a URI SAN but gives no certificate")
            .rule(json!({"spiffe_ids": [INSURER_SPIFFE]}))
            .peer(peer_with(None, &[INSURER_SPIFFE]))
            .denied("no_rule_matched"),
        case("spiffe: two URI SANs, the first listed (Envoy reports only the first)")
            .rule(json!({"spiffe_ids": [INSURER_SPIFFE]}))
            .peer(peer_with(Some("two-uris.pem"), &[INSURER_SPIFFE]))
            .denied("no_rule_matched"),
        case("spiffe: a certificate without a URI SAN")
            .rule(json!({"spiffe_ids": [INSURER_SPIFFE]}))
            .peer(peer_with(Some("dns-only.pem"), &[INSURER_SPIFFE]))
            .denied("no_rule_matched"),
        case("spiffe: no client certificate")
            .rule(json!({"spiffe_ids": [INSURER_SPIFFE]}))
            .denied("no_rule_matched"),
        case("caller_is_grantee: the certificate is the grantee's")
            .rule(grantee_rule.clone())
            .claims(as_spiffe.clone())
            .peer(peer_with(Some("one-uri.pem"), &[INSURER_SPIFFE])),
        case("caller_is_grantee: no client certificate")
            .rule(grantee_rule.clone())
            .claims(as_spiffe.clone())
            .denied("no_rule_matched"),
        case("caller_is_grantee: the proxy's URI SAN alone does not count")
            .rule(grantee_rule)
            .claims(as_spiffe)
            .peer(peer_with(None, &[INSURER_SPIFFE]))
            .denied("no_rule_matched"),
        case("caller_is_grantee: a grantee that is not the caller")
            .rule(json!({"caller_is_grantee": true}))
            .peer(peer_with(Some("one-uri.pem"), &[INSURER_SPIFFE]))
            .denied("no_rule_matched"),
    ]);
}

#[test]
fn when_expressions_grant_only_when_they_evaluate_to_true() {
    let when = |expr: &str| json!({"when": expr});
    let deny_when = |expr: &str| {
        json!([
            insurer_rule(),
            {"name": "deny-when", "effect": "deny", "when": expr}
        ])
    };
    run_all(vec![
        case("a string function").rule(when("claims.client_id.startsWith('insurer-')")),
        case("false")
            .rule(when("claims.client_id == 'someone-else'"))
            .denied("no_rule_matched"),
        case("consent, purpose and path parameters").rule(when(
            "'billing' in consent.domains && purpose == 'claims' && request.params.id == consent.subject",
        )),
        case("a request header")
            .rule(when("request.headers['x-tier'] == 'gold'"))
            .header("x-tier", "gold"),
        case("a missing request header is an error, which never grants")
            .rule(when("request.headers['x-tier'] == 'gold'"))
            .denied("no_rule_matched"),
        case("a missing claim is an error, which never grants")
            .rule(when("claims.no_such_claim == 'x'"))
            .denied("no_rule_matched"),
        case("a type error never grants")
            .rule(when("claims.client_id + 1 == 2"))
            .denied("no_rule_matched"),
        case("|| absorbs an error on its right")
            .rule(when("int(claims.iat) > 0 || claims.no_such_claim == 'x'")),
        case("the source address")
            .rule(when("request.source.startsWith('10.')"))
            .from("10.1.2.3:4000"),
        case("the caller without mTLS")
            .rule(when("!caller.mtls && caller.spiffe_id == null && size(consent.delegations) == 0")),
        case("the time, on its edge").rule(when("now >= 1795780800")).at(T0),
        case("the time, one second early")
            .rule(when("now >= 1795780800"))
            .at(T0 - 1)
            .denied("no_rule_matched"),
        case("a list comprehension").rule(when(
            "consent.domains.exists(d, d == 'billing') && consent.actions.all(a, a == 'read')",
        )),
        case("a deny rule whose condition errs counts as matched")
            .rules(deny_when("claims.no_such_claim == 'x'"))
            .denied("denied_by_rule"),
        case("a deny rule whose condition is false")
            .rules(deny_when("claims.client_id == 'nobody'")),
        case("a deny rule whose && short-circuits before the error")
            .rules(deny_when("false && claims.no_such_claim == 'x'")),
        case("a deny rule whose condition is true")
            .rules(deny_when("request.method == 'GET'"))
            .denied("denied_by_rule"),
    ]);
}

#[test]
fn explicit_deny_wins_and_nothing_matched_denies() {
    let deny = json!({"name": "no-insurers", "effect": "deny", "grantees": ["insurer-acme"]});
    let research_only = json!([{
        "name": "research", "purposes": ["research"], "partners": ["research_labs"],
        "subject": {"is": "id"}, "release": ["clinical"]
    }]);
    run_all(vec![
        case("a deny after the matching allow")
            .rules(json!([insurer_rule(), deny.clone()]))
            .denied("denied_by_rule"),
        case("a deny before the matching allow")
            .rules(json!([deny, insurer_rule()]))
            .denied("denied_by_rule"),
        case("only a rule for others")
            .rules(research_only)
            .denied("no_rule_matched"),
        case("an allow that releases no consented domain")
            .rule(json!({"release": ["clinical"]}))
            .denied("no_consented_domain"),
        case("a route the request does not match")
            .path("/patients/p-1/notes")
            .denied("no_route"),
    ]);
}

#[test]
fn an_allow_releases_the_consented_domains_up_to_the_rules_sensitivity() {
    run_all(vec![
        case("high by default: billing and identity, nothing special")
            .shows_value("identity.name.family", json!("Whitcombe"))
            .shows_value("identity.mrn", json!("BRH-0041187"))
            .shows_value("billing.policy_number", json!("SMH-5521-88374-02"))
            .shows("billing.invoices.0.transaction_ref")
            .shows_value("id", json!("p-1"))
            .shows_value("updated_at", json!("2026-11-01T10:00:00Z"))
            .hides("identity.national_id")
            .hides("clinical")
            .hides("contact"),
        case("special releases the special-category field")
            .rule(json!({"max_sensitivity": "special"}))
            .shows_value("identity.national_id", json!("999 401 2284"))
            .hides("clinical"),
        case("medium keeps high fields back")
            .rule(json!({"max_sensitivity": "medium"}))
            .shows_value("identity.gender", json!("female"))
            .shows_value("billing.insurer", json!("Severn Mutual Health"))
            .hides("identity.name")
            .hides("identity.mrn")
            .hides("billing.policy_number")
            .hides("billing.invoices.0.transaction_ref")
            .shows("billing.invoices.0.amount"),
        case("a field action applies where the field is not released")
            .rule(json!({"max_sensitivity": "medium",
                         "actions": {"$.identity.mrn": {"mask": {"keep_last": 4}}}}))
            .shows_value("identity.mrn", json!("*******1187")),
        case("a domain action applies to the domain's held-back fields")
            .rule(json!({"max_sensitivity": "medium", "actions": {"identity": "pseudonymise"}}))
            .shows("identity.mrn")
            .shows_value("identity.gender", json!("female")),
        case("only the consented part of the release")
            .claims(json!({"data_domains": ["billing"]}))
            .shows("billing.insurer")
            .hides("identity"),
        case("the policy's partner set with a special release, to the patient")
            .persona("patient")
            .rule(json!({"purposes": ["access"], "partners": ["patient_apps"],
                         "release": ["identity", "contact", "clinical", "billing"],
                         "max_sensitivity": "special"}))
            .shows_value("clinical.conditions.0.code", json!("44054006"))
            .shows_value("contact.phone", json!("+44 7700 900412")),
    ]);
}

#[test]
fn the_request_is_minimised_for_its_purpose() {
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    let token = sign_dev(&crate::support::persona_claims("insurer", T0 - 10, 3600));
    let body = r#"{"claim_id":"CLM-1","invoice_ids":["inv-1"],"national_id":"999 401 2284","period":{"from":"2026-01"},"notes":"free text"}"#;
    let search = || {
        Request::post("/echo?from=2026-01-01&to=2026-12-31&debug=1&national_id=999")
            .bearer(&token)
            .header("content-type", "application/json")
            .header("x-claim-reference", "CLM-1")
            .header("x-internal-trace", "keep-out")
            .header("cookie", "sid=abc")
            .body(body)
    };
    let echo = Response::json(200, r#"{"method":"POST"}"#);
    let out = proxy.send(search(), echo.clone());
    assert_eq!(out.client.status, 200, "{:#?}", out.trace);
    let up = out.upstream_request.unwrap();
    assert_eq!(up.path, "/echo?from=2026-01-01&to=2026-12-31");
    let sent = r#"{"claim_id":"CLM-1","invoice_ids":["inv-1"],"period":{"from":"2026-01"}}"#;
    assert_eq!(String::from_utf8(up.body.clone()).unwrap(), sent);
    assert_eq!(
        up.header("content-length"),
        Some(sent.len().to_string().as_str())
    );
    assert_eq!(up.header("x-claim-reference"), Some("CLM-1"));
    assert_eq!(up.header("content-type"), Some("application/json"));
    for gone in ["x-internal-trace", "cookie", "authorization"] {
        assert_eq!(up.header(gone), None, "{gone} reached the upstream");
    }

    // Per purpose: the claims purpose gets less than the route's default.
    let narrow = example_policy(|p| {
        let echo = p["routes"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|r| r["name"] == "claims-search")
            .unwrap();
        echo["request"]["by_purpose"] =
            json!({"claims": {"query": ["from"], "headers": [], "body": ["$.claim_id"]}});
    });
    let (mut proxy, _service) = start_at(narrow, T0);
    let out = proxy.send(search(), echo.clone());
    assert_eq!(out.client.status, 200, "{:#?}", out.trace);
    let up = out.upstream_request.unwrap();
    assert_eq!(up.path, "/echo?from=2026-01-01");
    assert_eq!(String::from_utf8_lossy(&up.body), r#"{"claim_id":"CLM-1"}"#);
    assert_eq!(up.header("x-claim-reference"), None);

    // A body that cannot be minimised is refused, not forwarded whole.
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    for (what, content_type, text) in [
        ("plain text", "text/plain", "claim_id=CLM-1&national_id=999"),
        ("invalid JSON", "application/json", "{\"claim_id\":"),
    ] {
        let out = proxy.send(
            Request::post("/echo")
                .bearer(&token)
                .header("content-type", content_type)
                .body(text),
            echo.clone(),
        );
        assert_eq!(
            verdict(&out),
            (400, "bad_request".to_owned()),
            "{what}: {:#?}",
            out.trace
        );
        assert!(out.upstream_request.is_none(), "{what}");
    }
    // JSON that is not an object keeps nothing the route does not name.
    let out = proxy.send(
        Request::post("/echo")
            .bearer(&token)
            .header("content-type", "application/json")
            .body(r#"[{"national_id":"999 401 2284"}]"#),
        echo,
    );
    assert_eq!(out.client.status, 200, "{:#?}", out.trace);
    assert_eq!(out.upstream_request.unwrap().body, b"[]");
}

#[test]
fn provenance_sent_by_the_client_is_replaced() {
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    let token = sign_dev(&crate::support::persona_claims("insurer", T0 - 10, 3600));
    let forged = Request::get("/patients/p-1")
        .bearer(&token)
        .header("x-consent-id", "forged-1")
        .header("x-consent-id", "forged-2")
        .header("x-consent-grantee", "someone-else")
        .header("x-consent-decision", "forged")
        .header("x-consent-decision", "forged-again")
        .header("x-consent-purpose", "claims");
    let out = proxy.send(forged, upstream_record("p-1"));
    assert_eq!(out.client.status, 200, "{:#?}", out.trace);
    let up = out.upstream_request.unwrap();
    assert_eq!(up.header_all("x-consent-id"), ["consent-insurer-acme-p-1"]);
    assert_eq!(up.header_all("x-consent-grantee"), ["insurer-acme"]);
    assert_eq!(up.header_all("x-consent-purpose"), ["claims"]);
    let decision = up.header_all("x-consent-decision");
    assert_eq!(decision.len(), 1);
    assert!(
        decision[0].len() == 36 && !decision[0].contains("forged"),
        "{decision:?}"
    );

    // Renamed provenance headers are protected the same way.
    let renamed = example_policy(|p| {
        p["provenance"] = json!({"consent_id": "x-prov-consent", "purpose": "x-prov-purpose",
                                 "decision": "x-prov-decision", "grantee": "x-prov-grantee"});
    });
    let (mut proxy, _service) = start_at(renamed, T0);
    let out = proxy.send(
        Request::get("/patients/p-1")
            .bearer(&token)
            .header("x-prov-consent", "forged")
            .header("x-prov-grantee", "forged")
            .header("x-prov-purpose", "forged")
            .header("x-prov-decision", "forged"),
        upstream_record("p-1"),
    );
    assert_eq!(out.client.status, 200);
    let up = out.upstream_request.unwrap();
    assert_eq!(
        up.header_all("x-prov-consent"),
        ["consent-insurer-acme-p-1"]
    );
    assert_eq!(up.header_all("x-prov-grantee"), ["insurer-acme"]);
    assert_eq!(up.header_all("x-prov-purpose"), ["claims"]);
    assert_eq!(up.header_all("x-prov-decision").len(), 1);
    assert_ne!(up.header("x-prov-decision"), Some("forged"));
}

/// A guardian's token names the guardian as `sub` and the ward in `act`; the record
/// read is the ward's. The audit trail must say whose data was read (pseudonymised),
/// or a subject-access report for the ward cannot find this access.
#[test]
fn delegated_access_is_audited_against_the_person_whose_record_was_read() {
    let (mut proxy, _service) = start_at(example_policy(|_| {}), T0);
    let token = mint::persona_token("guardian", crate::support::at(T0 - 10)).unwrap();
    let out = proxy.send(
        Request::get("/patients/p-5").bearer(&token),
        upstream_record("p-5"),
    );
    assert_eq!(out.client.status, 200, "{:#?}", out.trace);
    let record = crate::support::audit_record(&out);
    assert_eq!(record["rule"], "guardian");
    let ward = consentry_core::audit::pseudonymise_subject("p-5", None);
    let guardian = consentry_core::audit::pseudonymise_subject("p-4", None);
    assert!(
        record.to_string().contains(&ward),
        "the audit record names only the guardian ({guardian}) as its subject, never the \
         ward whose record was released ({ward}): {record}"
    );
}
