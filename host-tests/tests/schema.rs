//! The policy schema (`policies/consentry.schema.json`) against the plugin.
//!
//! The schema is for editors and CI lint; the plugin is the authority. So every broken
//! document below must be refused by both, and at the same JSON location: the schema
//! reports an error there (or inside it, where the plugin names the enclosing object of
//! a check over several members), and one of the plugin's refusal lines starts with it.
//! Every valid variation must pass both. The shipped policies (`example` and
//! `open-banking`, each in JSON and YAML) must validate and each pair be one document.
//!
//! Needs the plugin's release build:
//! `cargo build -p consentry-filter --target wasm32-wasip1 --release`.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, OnceLock};

use consentry_host::plugin::workspace_root;
use consentry_host::replay::config_as_json;
use consentry_host::{Plugin, Proxy, StartError, fixtures};
use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use jsonschema::{ValidationError, Validator};
use serde_json::{Value, json};

/// An audit key for the variations that configure one (`KEY_ID:BASE64URL`, 32 bytes).
const AUDIT_KEYS: &str = "audit-1:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8";

/// The refusal prefix of the plugin's log lines.
const REFUSED: &str = "consentry: configuration refused: ";

fn repo_text(path: &str) -> String {
    let full = workspace_root().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA
        .get_or_init(|| serde_json::from_str(&repo_text("policies/consentry.schema.json")).unwrap())
}

fn validator() -> &'static Validator {
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        jsonschema::validator_for(schema()).unwrap_or_else(|e| panic!("the schema: {e}"))
    })
}

fn plugin() -> Arc<Plugin> {
    Plugin::release_build().unwrap_or_else(|e| panic!("{e:#}"))
}

fn example() -> Value {
    serde_json::from_str(&repo_text("policies/example.json")).unwrap()
}

/// Starts the plugin with `doc` and the development secrets: `Ok`, or the JSON
/// locations its refusal lines name.
fn plugin_verdict(doc: &Value) -> Result<(), Vec<String>> {
    let started = Proxy::builder(plugin())
        .config(doc.to_string())
        .env("CONSENTRY_PSEUDONYM_KEYS", fixtures::DEV_PSEUDONYM_KEYS)
        .env("CONSENTRY_AUDIT_KEY", AUDIT_KEYS)
        .workers(1)
        .main_thread(false)
        .start();
    match started {
        Ok(_) => Ok(()),
        Err(StartError::Rejected { logs }) => {
            let refusals: Vec<String> = logs
                .iter()
                .filter_map(|l| l.message.strip_prefix(REFUSED))
                .map(str::to_owned)
                .collect();
            assert!(!refusals.is_empty(), "refused without a reason: {logs:?}");
            Err(refusals)
        }
        Err(e) => panic!("the plugin did not start cleanly: {e}"),
    }
}

/// `$.a[0].b` from a JSON pointer location.
fn dollar(location: &jsonschema::paths::Location) -> String {
    let mut out = String::from("$");
    for segment in location.segments() {
        match segment {
            LocationSegment::Index(i) => out.push_str(&format!("[{i}]")),
            LocationSegment::Property(p) => {
                out.push('.');
                out.push_str(&p);
            }
        }
    }
    out
}

/// The locations one schema error stands for: its own, and for a missing or an unknown
/// member the member's; an error of `oneOf`/`anyOf` also stands for its branches' errors.
fn candidates(error: &ValidationError<'_>, out: &mut Vec<String>) {
    let at = dollar(error.instance_path());
    match error.kind() {
        ValidationErrorKind::Required { property } => {
            out.push(format!("{at}.{}", property.as_str().unwrap_or_default()));
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            out.extend(unexpected.iter().map(|u| format!("{at}.{u}")));
        }
        ValidationErrorKind::OneOfNotValid { context } | ValidationErrorKind::AnyOf { context } => {
            for branch in context {
                for e in branch {
                    candidates(e, out);
                }
            }
        }
        _ => {}
    }
    out.push(at);
}

fn schema_errors(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for e in validator().iter_errors(doc) {
        candidates(&e, &mut out);
    }
    out
}

/// The plugin writes map keys that are field paths as `actions["$.a"]` in some
/// messages and as `actions.$.a` in others; compare them in the second form.
fn normalise(location: &str) -> String {
    location.replace("[\"", ".").replace("\"]", "")
}

/// `schema_at` is `at`, or a location inside it.
fn within(schema_at: &str, at: &str) -> bool {
    schema_at == at
        || schema_at
            .strip_prefix(at)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

// ---------------------------------------------------------------------------------------
// Documents built from the example by small edits.

/// An edit of the example: JSON pointer → new value (`None` removes the member).
struct Case {
    name: &'static str,
    at: &'static str,
    edits: Vec<(&'static str, Option<Value>)>,
}

fn case(name: &'static str, at: &'static str) -> Case {
    Case {
        name,
        at,
        edits: Vec::new(),
    }
}

impl Case {
    fn set(mut self, pointer: &'static str, value: Value) -> Self {
        self.edits.push((pointer, Some(value)));
        self
    }

    fn remove(mut self, pointer: &'static str) -> Self {
        self.edits.push((pointer, None));
        self
    }

    fn document(&self) -> Value {
        let mut doc = example();
        for (pointer, value) in &self.edits {
            let (parent, last) = pointer.rsplit_once('/').unwrap();
            let target = doc
                .pointer_mut(parent)
                .unwrap_or_else(|| panic!("{}: no {parent} in the example", self.name));
            match (target, value) {
                (Value::Object(map), Some(v)) => {
                    map.insert(last.to_owned(), v.clone());
                }
                (Value::Object(map), None) => {
                    map.remove(last);
                }
                (Value::Array(items), Some(v)) => match last.parse::<usize>().unwrap() {
                    i if i == items.len() => items.push(v.clone()),
                    i => items[i] = v.clone(),
                },
                (Value::Array(items), None) => {
                    items.remove(last.parse::<usize>().unwrap());
                }
                _ => panic!("{}: {parent} is not a container", self.name),
            }
        }
        doc
    }
}

fn broken() -> Vec<Case> {
    vec![
        // The top level.
        case("version 2", "$.version").set("/version", json!(2)),
        case("version as text", "$.version").set("/version", json!("1")),
        case("an unknown response mode", "$.response_mode")
            .set("/response_mode", json!("stream")),
        case("routes missing", "$").remove("/routes"),
        case("issuers missing", "$").remove("/issuers"),
        case("an unknown top-level member", "$.limts").set("/limts", json!({})),
        case("a token header that is not a header name", "$.token.header")
            .set("/token/header", json!("bad header")),
        case("an empty token scheme", "$.token.scheme").set("/token/scheme", json!("")),
        case("token.forward as text", "$.token.forward").set("/token/forward", json!("no")),
        case("no issuer", "$.issuers").set("/issuers", json!([])),
        case("issuers as an object", "$.issuers").set("/issuers", json!({})),
        // Issuers.
        case("alg none", "$.issuers[0].algorithms[1]")
            .set("/issuers/0/algorithms", json!(["ES256", "none"])),
        case("alg HS256", "$.issuers[0].algorithms[0]")
            .set("/issuers/0/algorithms", json!(["HS256"])),
        case("no algorithm", "$.issuers[0].algorithms").set("/issuers/0/algorithms", json!([])),
        case("no audience", "$.issuers[0].audiences").set("/issuers/0/audiences", json!([])),
        case("an empty audience", "$.issuers[0].audiences[0]")
            .set("/issuers/0/audiences", json!([""])),
        case("an empty issuer", "$.issuers[0].issuer").set("/issuers/0/issuer", json!("")),
        case("an unknown issuer member", "$.issuers[0].clustr")
            .set("/issuers/0/clustr", json!("x")),
        case("clock skew over 600", "$.issuers[0].clock_skew_seconds")
            .set("/issuers/0/clock_skew_seconds", json!(601)),
        case("a zero lifetime", "$.issuers[0].max_lifetime_seconds")
            .set("/issuers/0/max_lifetime_seconds", json!(0)),
        case("an empty typ", "$.issuers[0].typ").set("/issuers/0/typ", json!("")),
        case("no keys at all", "$.issuers[0].keys").set("/issuers/0/keys", json!({})),
        case("keys missing", "$.issuers[0]").remove("/issuers/0/keys"),
        case(
            "an unknown remote member",
            "$.issuers[0].keys.remote.clustr",
        )
        .set("/issuers/0/keys/remote/clustr", json!("x")),
        case("a remote path without /", "$.issuers[0].keys.remote.path")
            .set("/issuers/0/keys/remote/path", json!("jwks.json")),
        case(
            "a refresh under 10 s",
            "$.issuers[0].keys.remote.refresh_seconds",
        )
        .set("/issuers/0/keys/remote/refresh_seconds", json!(5)),
        case("a zero timeout", "$.issuers[0].keys.remote.timeout_ms")
            .set("/issuers/0/keys/remote/timeout_ms", json!(0)),
        case(
            "no authority for an issuer that is not an https URL",
            "$.issuers[0].keys.remote.authority",
        )
        .set("/issuers/0/issuer", json!("consent-service"))
        .remove("/issuers/0/keys/remote/authority"),
        case("a private key inline", "$.issuers[0].keys.inline.keys[0].d")
            .set("/issuers/0/keys/inline/keys/0/d", json!("AAAA")),
        case(
            "a symmetric key inline",
            "$.issuers[0].keys.inline.keys[0].kty",
        )
        .set("/issuers/0/keys/inline/keys/0/kty", json!("oct")),
        case("an unknown consent format", "$.issuers[0].consent.format")
            .set("/issuers/0/consent", json!({"format": "jwt"})),
        case(
            "a claims member in authorization details",
            "$.issuers[0].consent.purposes_claim",
        )
        .set(
            "/issuers/0/consent",
            json!({"format": "authorization_details", "types": ["t"], "purposes_claim": "p"}),
        ),
        case(
            "authorization details without types",
            "$.issuers[0].consent.types",
        )
        .set(
            "/issuers/0/consent",
            json!({"format": "authorization_details"}),
        ),
        case("types in the claims format", "$.issuers[0].consent.types")
            .set("/issuers/0/consent", json!({"types": ["t"]})),
        case("no grantee claim", "$.issuers[0].consent.grantee_claims")
            .set("/issuers/0/consent", json!({"grantee_claims": []})),
        case(
            "an empty deny-list entry",
            "$.issuers[0].revocation.deny_list[0]",
        )
        .set("/issuers/0/revocation/deny_list", json!([""])),
        case(
            "a status-list prefix without a path",
            "$.issuers[0].revocation.status_list.uri_prefix",
        )
        .set(
            "/issuers/0/revocation/status_list/uri_prefix",
            json!("https://evil"),
        ),
        case(
            "a status-list prefix with ..",
            "$.issuers[0].revocation.status_list.uri_prefix",
        )
        .set(
            "/issuers/0/revocation/status_list/uri_prefix",
            json!("https://consent.example.com/../lists/"),
        ),
        case(
            "a tiny status-list bound",
            "$.issuers[0].revocation.status_list.max_bytes",
        )
        .set("/issuers/0/revocation/status_list/max_bytes", json!(10)),
        case(
            "a status requirement that is not a boolean",
            "$.issuers[0].revocation.status_list.require_status_claim",
        )
        .set(
            "/issuers/0/revocation/status_list/require_status_claim",
            json!("yes"),
        ),
        case(
            "an RFC 9068 requirement that is not a boolean",
            "$.issuers[0].require_rfc9068_claims",
        )
        .set("/issuers/0/require_rfc9068_claims", json!(1)),
        case(
            "an unknown binding member",
            "$.issuers[0].binding.require_mtls",
        )
        .set("/issuers/0/binding", json!({"require_mtls": true})),
        // Secrets and recipients.
        case("a secret by value", "$.secrets.pseudonym_keys.value")
            .set("/secrets/pseudonym_keys", json!({"value": "k1:AAAA"})),
        case("a recipient that is not a JWK", "$.recipients.lab-ucl")
            .set("/recipients", json!({"lab-ucl": "x"})),
        case("a recipient on P-384", "$.recipients.lab-ucl").set(
            "/recipients",
            json!({"lab-ucl": {"kty": "EC", "crv": "P-384", "kid": "k", "x": "AA", "y": "AA"}}),
        ),
        // Vocabulary.
        case("an empty domain", "$.domains[4]").set("/domains/4", json!("")),
        case("an empty purpose", "$.purposes[3]").set("/purposes/3", json!("")),
        case("a partner set that is not a list", "$.partners.insurers")
            .set("/partners/insurers", json!("insurer-acme")),
        case("a purpose header with a space", "$.purpose.header")
            .set("/purpose", json!({"header": "x consent purpose"})),
        case("an upper-case provenance header", "$.provenance.decision")
            .set("/provenance", json!({"decision": "X-Decision"})),
        // Routes.
        case("an unknown method", "$.routes[0].methods[0]")
            .set("/routes/0/methods", json!(["FETCH"])),
        case("no method", "$.routes[0].methods").set("/routes/0/methods", json!([])),
        case("a relative path", "$.routes[0].path").set("/routes/0/path", json!("patients/{id}")),
        case("a parameter inside a segment", "$.routes[0].path")
            .set("/routes/0/path", json!("/patients/id-{id}")),
        case("a query in the path", "$.routes[0].path")
            .set("/routes/0/path", json!("/patients/{id}?full=1")),
        case("no rules", "$.routes[0].rules").set("/routes/0/rules", json!([])),
        case("rules missing", "$.routes[0].rules").remove("/routes/0/rules"),
        case("a route without a name", "$.routes[0]").remove("/routes/0/name"),
        case("an unknown route member", "$.routes[0].respnse").set("/routes/0/respnse", json!({})),
        case(
            "an HTML content type",
            "$.routes[0].response.content_types[0]",
        )
        .set("/routes/0/response/content_types", json!(["text/html"])),
        case(
            "an unknown unclassified default",
            "$.routes[0].response.unclassified",
        )
        .set("/routes/0/response/unclassified", json!("drop")),
        case("an unknown matching mode", "$.routes[0].response.match")
            .set("/routes/0/response/match", json!("ignore_case")),
        case(
            "an unknown control-character treatment",
            "$.routes[0].response.control_keys",
        )
        .set("/routes/0/response/control_keys", json!("drop")),
        case(
            "an unknown field matching mode",
            "$.routes[0].response.fields[3].match",
        )
        .set("/routes/0/response/fields/3/match", json!("CaseInsensitive")),
        case(
            "an any-depth step without a name",
            "$.routes[0].response.fields[3].path",
        )
        .set("/routes/0/response/fields/3/path", json!("$..*")),
        case(
            "a control character in a field name",
            "$.routes[0].response.fields[3].path",
        )
        .set("/routes/0/response/fields/3/path", json!("$[\"a\u{1}\"]")),
        case(
            "an upper-case response header",
            "$.routes[0].response.headers[0]",
        )
        .set("/routes/0/response/headers", json!(["ETag"])),
        case(
            "a field path without $",
            "$.routes[0].response.fields[3].path",
        )
        .set("/routes/0/response/fields/3/path", json!("identity.name")),
        case(
            "a field path with a space",
            "$.routes[0].response.fields[3].path",
        )
        .set(
            "/routes/0/response/fields/3/path",
            json!("$.identity.full name"),
        ),
        case(
            "the whole document as a field",
            "$.routes[0].response.fields[3].path",
        )
        .set("/routes/0/response/fields/3/path", json!("$")),
        case(
            "a public field with a domain",
            "$.routes[0].response.fields[0].public",
        )
        .set("/routes/0/response/fields/0/domain", json!("identity")),
        case(
            "a field without a domain",
            "$.routes[0].response.fields[3].domain",
        )
        .remove("/routes/0/response/fields/3/domain"),
        case(
            "an unknown sensitivity",
            "$.routes[0].response.fields[3].sensitivity",
        )
        .set("/routes/0/response/fields/3/sensitivity", json!("secret")),
        case(
            "an unknown field member",
            "$.routes[0].response.fields[3].redact",
        )
        .set("/routes/0/response/fields/3/redact", json!(true)),
        // Actions, on a field and in rules.
        case("an unknown action", FIELD_AT_ACTION).set(FIELD_ACTION, json!("blur")),
        case("generalise without a form", FIELD_AT_ACTION).set(FIELD_ACTION, json!("generalise")),
        case("an action as a number", FIELD_AT_ACTION).set(FIELD_ACTION, json!(3)),
        case("an empty action object", FIELD_AT_ACTION).set(FIELD_ACTION, json!({})),
        case(
            "a generalisation to the decade",
            "$.routes[0].response.fields[3].action.generalise",
        )
        .set(FIELD_ACTION, json!({"generalise": "decade"})),
        case("a bucket of width 0", FIELD_AT_ACTION)
            .set(FIELD_ACTION, json!({"generalise": {"bucket": 0}})),
        case(
            "an unknown mask option",
            "$.routes[0].response.fields[3].action.mask.keep_lst",
        )
        .set(FIELD_ACTION, json!({"mask": {"keep_lst": 3}})),
        case(
            "a two-character mask",
            "$.routes[0].response.fields[3].action.mask.char",
        )
        .set(FIELD_ACTION, json!({"mask": {"char": "ab"}})),
        case(
            "a negative keep_last",
            "$.routes[0].response.fields[3].action.mask.keep_last",
        )
        .set(FIELD_ACTION, json!({"mask": {"keep_last": -1}})),
        case(
            "mask options as null",
            "$.routes[0].response.fields[3].action.mask",
        )
        .set(FIELD_ACTION, json!({"mask": null})),
        case(
            "an unknown hash encoding",
            "$.routes[0].response.fields[3].action.hash.encoding",
        )
        .set(FIELD_ACTION, json!({"hash": {"encoding": "base32"}})),
        case(
            "the American spelling in the object form",
            "$.routes[0].response.fields[3].action.pseudonymize",
        )
        .set(FIELD_ACTION, json!({"pseudonymize": {}})),
        case(
            "a bad action in a rule",
            "$.routes[0].rules[2].actions.identity",
        )
        .set("/routes/0/rules/2/actions/identity", json!("blur")),
        case(
            "a bad action for a field path in a rule",
            "$.routes[0].rules[2].actions.$.identity.birth_date.generalise",
        )
        .set(
            "/routes/0/rules/2/actions/$.identity.birth_date",
            json!({"generalise": "decade"}),
        ),
        // Rules.
        case("an unknown effect", "$.routes[0].rules[0].effect")
            .set("/routes/0/rules/0/effect", json!("permit")),
        case("a rule without a name", "$.routes[0].rules[1]").remove("/routes/0/rules/1/name"),
        case("an empty rule name", "$.routes[0].rules[1].name")
            .set("/routes/0/rules/1/name", json!("")),
        case("an unknown rule member", "$.routes[0].rules[1].purpose")
            .set("/routes/0/rules/1/purpose", json!("claims")),
        case("two subject relations", "$.routes[0].rules[1].subject").set(
            "/routes/0/rules/1/subject",
            json!({"is": "id", "acts_for": "id"}),
        ),
        case(
            "an unknown subject relation",
            "$.routes[0].rules[1].subject",
        )
        .set("/routes/0/rules/1/subject", json!({"owns": "id"})),
        case(
            "an unknown max_sensitivity",
            "$.routes[0].rules[1].max_sensitivity",
        )
        .set("/routes/0/rules/1/max_sensitivity", json!("top")),
        case("purposes as text", "$.routes[0].rules[1].purposes")
            .set("/routes/0/rules/1/purposes", json!("claims")),
        case(
            "a date that is not RFC 3339",
            "$.routes[0].rules[1].valid_from",
        )
        .set("/routes/0/rules/1/valid_from", json!("tomorrow")),
        case(
            "a date without an offset",
            "$.routes[0].rules[1].valid_until",
        )
        .set(
            "/routes/0/rules/1/valid_until",
            json!("2027-01-01T00:00:00"),
        ),
        case(
            "hours without a leading zero",
            "$.routes[0].rules[1].hours.from",
        )
        .set(
            "/routes/0/rules/1/hours",
            json!({"from": "8:00", "to": "18:00"}),
        ),
        case("hours past midnight", "$.routes[0].rules[1].hours.to").set(
            "/routes/0/rules/1/hours",
            json!({"from": "08:00", "to": "24:30"}),
        ),
        case(
            "an offset over 14 hours",
            "$.routes[0].rules[1].hours.utc_offset",
        )
        .set(
            "/routes/0/rules/1/hours",
            json!({"from": "08:00", "to": "18:00", "utc_offset": "+15:00"}),
        ),
        case("a weekday spelt out", "$.routes[0].rules[1].hours.days[0]").set(
            "/routes/0/rules/1/hours",
            json!({"from": "08:00", "to": "18:00", "days": ["monday"]}),
        ),
        case("hours without an end", "$.routes[0].rules[1].hours")
            .set("/routes/0/rules/1/hours", json!({"from": "08:00"})),
        case(
            "a network that is not one",
            "$.routes[0].rules[1].source_cidrs[0]",
        )
        .set("/routes/0/rules/1/source_cidrs", json!(["ten/8"])),
        case(
            "a negative consent age",
            "$.routes[0].rules[1].max_consent_age_seconds",
        )
        .set("/routes/0/rules/1/max_consent_age_seconds", json!(-1)),
        case("mtls as text", "$.routes[0].rules[1].mtls")
            .set("/routes/0/rules/1/mtls", json!("yes")),
        case("a condition that is not text", "$.routes[0].rules[1].when")
            .set("/routes/0/rules/1/when", json!(true)),
        case(
            "a condition longer than 4096 bytes",
            "$.routes[0].rules[1].when",
        )
        .set(
            "/routes/0/rules/1/when",
            json!(format!("true{}", " ".repeat(4096))),
        ),
        // Request minimisation.
        case(
            "an upper-case request header",
            "$.routes[3].request.headers[0]",
        )
        .set("/routes/3/request/headers", json!(["X-Claim-Reference"])),
        case("a body path without $", "$.routes[3].request.body[0]")
            .set("/routes/3/request/body", json!(["claim_id"])),
        case("query as text", "$.routes[3].request.query")
            .set("/routes/3/request/query", json!("from")),
        case(
            "an unknown by_purpose member",
            "$.routes[3].request.by_purpose.claims.params",
        )
        .set(
            "/routes/3/request/by_purpose",
            json!({"claims": {"params": []}}),
        ),
        case("an unknown request member", "$.routes[3].request.path")
            .set("/routes/3/request/path", json!("/x")),
        // Limits, errors, rate limits, audit.
        case("a zero body limit", "$.limits.max_body_bytes")
            .set("/limits", json!({"max_body_bytes": 0})),
        case("a body limit beyond 32 bits", "$.limits.max_body_bytes")
            .set("/limits", json!({"max_body_bytes": 5_000_000_000_u64})),
        case("a zero depth", "$.limits.max_depth").set("/limits", json!({"max_depth": 0})),
        case("a negative depth", "$.limits.max_depth").set("/limits", json!({"max_depth": -1})),
        case("a depth over 512", "$.limits.max_depth").set("/limits", json!({"max_depth": 513})),
        case("a token limit under 256", "$.limits.max_token_bytes")
            .set("/limits", json!({"max_token_bytes": 100})),
        case("no token cache", "$.limits.token_cache_entries")
            .set("/limits", json!({"token_cache_entries": 0})),
        case("a wait over a minute", "$.limits.max_wait_ms")
            .set("/limits", json!({"max_wait_ms": 60_001})),
        case("an unknown limit", "$.limits.max_header_bytes")
            .set("/limits", json!({"max_header_bytes": 1})),
        case(
            "a pseudo-header to remove",
            "$.errors.remove_response_headers[0]",
        )
        .set("/errors", json!({"remove_response_headers": [":status"]})),
        case("a zero rate", "$.rate_limits.caller")
            .set("/rate_limits", json!({"caller": {"requests": 0}})),
        case("a zero burst", "$.rate_limits.subject").set(
            "/rate_limits",
            json!({"subject": {"requests": 5, "burst": 0}}),
        ),
        case("a rate without requests", "$.rate_limits.grantee")
            .set("/rate_limits", json!({"grantee": {"seconds": 1}})),
        case("a lockout without its length", "$.rate_limits.lockout").set(
            "/rate_limits",
            json!({"lockout": {"refusals": 5, "window_seconds": 60}}),
        ),
        case("a zero lockout window", "$.rate_limits.lockout").set(
            "/rate_limits",
            json!({"lockout": {"refusals": 5, "window_seconds": 0, "lock_seconds": 60}}),
        ),
        case("an unknown rate limit", "$.rate_limits.route")
            .set("/rate_limits", json!({"route": {"requests": 1}})),
        case("audit.log as text", "$.audit.log").set("/audit", json!({"log": "yes"})),
        case("a collector path without /", "$.audit.collector").set(
            "/audit",
            json!({"collector": {"cluster": "c", "authority": "a", "path": "records"}}),
        ),
        case("a collector without a cluster", "$.audit.collector").set(
            "/audit",
            json!({"collector": {"authority": "a", "path": "/r"}}),
        ),
        case("an empty collector cluster", "$.audit.collector").set(
            "/audit",
            json!({"collector": {"cluster": "", "authority": "a", "path": "/r"}}),
        ),
        case("a zero collector timeout", "$.audit.collector.timeout_ms").set(
            "/audit",
            json!({"collector": {"cluster": "c", "authority": "a", "path": "/r", "timeout_ms": 0}}),
        ),
        case("an empty collector batch", "$.audit.collector.max_batch_records").set(
            "/audit",
            json!({"collector": {"cluster": "c", "authority": "a", "path": "/r", "max_batch_records": 0}}),
        ),
        // Mistakes the plugin once took silently or reported poorly.
        case("a key id with a space", "$.routes[0].response.fields[3].action")
            .set("/routes/0/response/fields/3/action", json!({"pseudonymise": {"key": "dev 1"}})),
        case("an action object with two members", "$.routes[0].response.fields[3].action")
            .set("/routes/0/response/fields/3/action", json!({"mask": {}, "hash": {}})),
        case("a subject with two relations", "$.routes[0].rules[1].subject")
            .set("/routes/0/rules/1/subject", json!({"is": "id", "acts_for": "id"})),
        case(
            "a by-purpose header that is not a header name",
            "$.routes[3].request.by_purpose.claims.headers[0]",
        )
        .set("/routes/3/request/by_purpose", json!({"claims": {"headers": ["X Bad"]}})),
        case("a JSON stream media type", "$.routes[0].response.content_types[0]")
            .set("/routes/0/response/content_types", json!(["application/x-ndjson"])),
        case("no weekday at all", "$.routes[0].rules[1].hours.days").set(
            "/routes/0/rules/1/hours",
            json!({"from": "08:00", "to": "18:00", "days": []}),
        ),
    ]
}

const FIELD_ACTION: &str = "/routes/0/response/fields/3/action";
const FIELD_AT_ACTION: &str = "$.routes[0].response.fields[3].action";

#[test]
fn the_schema_is_a_valid_draft_2020_12_schema() {
    let s = schema();
    assert_eq!(
        s["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "the schema says which draft it is"
    );
    if let Err(e) = jsonschema::meta::validate(s) {
        panic!(
            "the schema is not a valid JSON Schema: {e} at {}",
            e.instance_path()
        );
    }
    validator();
    // Editors show descriptions: every member of every object the schema describes has one.
    let mut missing = Vec::new();
    undescribed(s, "#", &mut missing);
    assert!(
        missing.is_empty(),
        "members without a description: {missing:#?}"
    );
}

/// Members of `properties` with neither a description nor a `$ref` to a described
/// definition (JWK members are the JWK specification's, not ours).
fn undescribed(node: &Value, at: &str, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties")
                && !at.ends_with("Jwk")
            {
                for (name, p) in props {
                    let described = p.get("description").is_some()
                        || p.get("$ref").is_some()
                        || *p == Value::Bool(false);
                    if !described {
                        out.push(format!("{at}/properties/{name}"));
                    }
                }
            }
            // Conditions (`if`, `not`) and their consequences restate members
            // described where they are declared.
            for (k, v) in map {
                if !matches!(k.as_str(), "if" | "then" | "else" | "not") {
                    undescribed(v, &format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                undescribed(v, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_shipped_policies_validate_in_json_and_in_yaml_and_each_pair_is_one_document() {
    for name in ["example", "open-banking"] {
        let json_doc: Value =
            serde_json::from_str(&repo_text(&format!("policies/{name}.json"))).unwrap();
        let errors: Vec<String> = validator()
            .iter_errors(&json_doc)
            .map(|e| format!("{}: {e}", dollar(e.instance_path())))
            .collect();
        assert!(errors.is_empty(), "{name}.json: {errors:#?}");

        let yaml_name = format!("{name}.yaml");
        let yaml =
            config_as_json(&yaml_name, &repo_text(&format!("policies/{yaml_name}"))).unwrap();
        let yaml_doc: Value = serde_json::from_str(&yaml).unwrap();
        let errors: Vec<String> = validator()
            .iter_errors(&yaml_doc)
            .map(|e| format!("{}: {e}", dollar(e.instance_path())))
            .collect();
        assert!(errors.is_empty(), "{yaml_name}: {errors:#?}");
        assert_eq!(
            yaml_doc, json_doc,
            "{yaml_name} and {name}.json must be the same document"
        );

        assert_eq!(plugin_verdict(&json_doc), Ok(()), "{name}.json");
        assert_eq!(plugin_verdict(&yaml_doc), Ok(()), "{yaml_name}");
    }
}

#[test]
fn broken_documents_are_refused_by_the_schema_and_the_plugin_at_the_same_location() {
    let cases = broken();
    let mut failures = Vec::new();
    for c in &cases {
        let doc = c.document();
        let at = normalise(c.at);
        let schema_at = schema_errors(&doc);
        if !schema_at.iter().any(|s| within(&normalise(s), &at)) {
            failures.push(format!(
                "{}: the schema does not refuse it at {at} (its errors: {schema_at:?})",
                c.name
            ));
        }
        match plugin_verdict(&doc) {
            Ok(()) => failures.push(format!("{}: the plugin accepts it", c.name)),
            Err(refusals) => {
                // The place itself, or a member inside it (more precise still).
                let named = refusals.iter().any(|r| {
                    normalise(r).strip_prefix(&at).is_some_and(|rest| {
                        rest.starts_with(": ") || rest.starts_with('.') || rest.starts_with('[')
                    })
                });
                if !named {
                    failures.push(format!(
                        "{}: the plugin does not name {at}: {refusals:?}",
                        c.name
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} broken documents:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Valid variations: every action form, every rule kind, every section.

/// A P-256 public key (the example issuer's verification key, reused here as an
/// encryption key: any point on the curve will do for loading).
fn recipient() -> Value {
    json!({
        "kty": "EC", "crv": "P-256", "kid": "lab-ucl-2026", "use": "enc", "alg": "ECDH-ES",
        "x": "CwLyNVpU0VFnybB-tfo3rJYTxSY7WFHNGECKTX4XPm8",
        "y": "m4BQpn1OxEhryE0HINaKI1gGZeO7DLsZpk1KaylJt_o"
    })
}

fn action_forms() -> Vec<Value> {
    vec![
        json!("remove"),
        json!("mask"),
        json!("hash"),
        json!("pseudonymise"),
        json!("pseudonymize"),
        json!("encrypt"),
        json!({"remove": {}}),
        json!({"mask": {}}),
        json!({"mask": {"keep_first": 1, "keep_last": 2, "char": "•", "keep_separators": true}}),
        json!({"hash": {}}),
        json!({"hash": {"encoding": "hex"}}),
        json!({"hash": {"encoding": "base64url"}}),
        json!({"pseudonymise": {}}),
        json!({"pseudonymise": {"key": "dev-1"}}),
        json!({"generalise": "year"}),
        json!({"generalise": "year_month"}),
        json!({"generalise": {"bucket": 10}}),
        json!({"encrypt": {}}),
    ]
}

fn valid() -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = Vec::new();
    let mut variant = |name: String, edit: &dyn Fn(&mut Value)| {
        let mut doc = example();
        edit(&mut doc);
        out.push((name, doc));
    };

    // Every action form, as a field's own action and as a rule's, by domain and by path.
    // Encryption needs a key for every grantee a rule that encrypts may serve.
    let recipients = || {
        json!({
            "lab-ucl": recipient(), "insurer-acme": recipient(), "patient-app": recipient()
        })
    };
    for a in action_forms() {
        variant(format!("field action {a}"), &|d| {
            d["routes"][0]["response"]["fields"][3]["action"] = a.clone();
            d["recipients"] = recipients();
        });
        variant(format!("rule action by domain {a}"), &|d| {
            d["routes"][0]["rules"][2]["actions"]["identity"] = a.clone();
            d["recipients"] = recipients();
        });
        variant(format!("rule action by path {a}"), &|d| {
            d["routes"][0]["rules"][1]["actions"]["$.contact.phone"] = a.clone();
            d["recipients"] = recipients();
        });
    }

    // Every rule condition, alone and all at once.
    let conditions: Vec<(&str, Value)> = vec![
        ("effect", json!("allow")),
        ("purposes", json!(["claims"])),
        ("grantees", json!(["insurer-acme", "insurer-bupa"])),
        ("partners", json!(["insurers"])),
        ("subject", json!({"is": "id"})),
        ("subject", json!({"acts_for": "id"})),
        ("subject", json!({"is_or_acts_for": "id"})),
        ("consent_actions", json!(["read"])),
        ("require_domains", json!(["billing"])),
        ("release", json!(["billing", "identity"])),
        ("max_sensitivity", json!("low")),
        ("max_sensitivity", json!("medium")),
        ("max_sensitivity", json!("high")),
        ("max_sensitivity", json!("special")),
        ("valid_from", json!("2026-01-01T00:00:00Z")),
        ("valid_until", json!("2027-01-01T00:00:00.5+01:00")),
        ("max_consent_age_seconds", json!(2_592_000)),
        ("hours", json!({"from": "08:00", "to": "18:00"})),
        (
            "hours",
            json!({"from": "22:00", "to": "06:00", "utc_offset": "-05:30", "days": ["fri", "Sat"]}),
        ),
        (
            "source_cidrs",
            json!(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1"]),
        ),
        ("mtls", json!(true)),
        ("spiffe_ids", json!(["spiffe://insurer.example/claims"])),
        ("caller_is_grantee", json!(true)),
        (
            "when",
            json!("'claims' in consent.purposes && request.method == 'GET'"),
        ),
        (
            "when",
            json!(
                "has(claims.act) ? claims.act.sub == request.params.id : consent.subject == request.params.id"
            ),
        ),
        (
            "when",
            json!(
                "consent.domains.exists(d, d.startsWith('bill')) && size(request.query) <= 2 && now - consent.issued_at < 3600"
            ),
        ),
        (
            "when",
            json!(
                "caller.mtls || request.headers['x-channel'].lowerAscii() == 'batch' || purpose != 'claims'"
            ),
        ),
    ];
    for (key, value) in &conditions {
        variant(format!("rule {key} {value}"), &|d| {
            d["routes"][0]["rules"][1][*key] = value.clone();
        });
    }
    variant("a rule with every condition".into(), &|d| {
        let rule = &mut d["routes"][0]["rules"][1];
        for (key, value) in &conditions {
            rule[*key] = value.clone();
        }
    });
    variant("a deny rule with a condition".into(), &|d| {
        d["routes"][0]["rules"][0] = json!({
            "name": "no-night-batch", "effect": "deny",
            "hours": {"from": "23:00", "to": "05:00", "utc_offset": "+01:00"},
            "when": "request.query.batch == 'true'"
        });
    });

    for mode in ["hold", "late_commit"] {
        variant(format!("response_mode {mode}"), &|d| {
            d["response_mode"] = json!(mode);
        });
    }

    // The other sections, with every member set.
    variant("every top-level section".into(), &|d| {
        d["token"] = json!({"header": "X-Consent-Token", "scheme": null, "forward": true});
        d["secrets"]["audit_key"] = json!({"env": "CONSENTRY_AUDIT_KEY"});
        d["recipients"] = json!({"lab-ucl": recipient()});
        d["purpose"] = json!({"header": "X-Purpose"});
        d["provenance"] = json!({
            "consent_id": "x-c-id", "purpose": "x-c-purpose",
            "decision": "x-c-decision", "grantee": "x-c-grantee"
        });
        d["limits"] = json!({
            "max_body_bytes": 4_194_304, "max_depth": 512, "max_token_bytes": 65_536,
            "token_cache_entries": 1, "max_wait_ms": 60_000
        });
        d["errors"] = json!({
            "type_base": "https://errors.hospital.example/consent/",
            "remove_response_headers": ["Server", "x-powered-by"]
        });
        d["rate_limits"] = json!({
            "caller": {"requests": 20},
            "grantee": {"requests": 30, "seconds": 60, "burst": 10},
            "subject": {"requests": 5, "seconds": 1, "burst": 5},
            "lockout": {"refusals": 10, "window_seconds": 60, "lock_seconds": 300}
        });
        d["audit"] = json!({
            "log": false, "checkpoint_seconds": 0,
            "collector": {
                "cluster": "audit_collector", "authority": "audit.internal.example",
                "path": "/v1/records", "max_batch_records": 50, "max_batch_age_ms": 1000,
                "max_queue_records": 5000, "timeout_ms": 2000
            }
        });
    });
    variant("an issuer with every member".into(), &|d| {
        d["issuers"][0] = json!({
            "issuer": "https://consent.example.com",
            "algorithms": ["ES256", "RS256", "PS256", "EdDSA"],
            "audiences": ["https://api.hospital.example", "hospital"],
            "typ": "at+jwt",
            "require_rfc9068_claims": false,
            "clock_skew_seconds": 600,
            "max_lifetime_seconds": 3600,
            "required_claims": ["iat", "client_id"],
            "keys": {
                "inline": d["issuers"][0]["keys"]["inline"].clone(),
                "remote": {
                    "cluster": "consent_service", "authority": "consent.example.com",
                    "path": "/.well-known/jwks.json", "refresh_seconds": 10,
                    "timeout_ms": 60_000, "min_refetch_interval_seconds": 1
                }
            },
            "consent": {
                "format": "claims", "grantee_claims": ["azp"], "purposes_claim": "purposes",
                "domains_claim": "domains", "actions_claim": "acts", "delegation_claim": "may_act"
            },
            "revocation": {
                "deny_list": ["consent-123"],
                "status_list": {
                    "cluster": "consent_service",
                    "uri_prefix": "https://consent.example.com/statuslists/",
                    "max_staleness_seconds": 0, "timeout_ms": 1, "max_bytes": 16_777_216,
                    "require_status_claim": false
                }
            },
            "binding": {"require_certificate_binding": true, "require_spiffe_grantee": true}
        });
    });
    variant(
        "a second issuer: authorization details, remote keys only".into(),
        &|d| {
            let second = json!({
                "issuer": "https://consent.other.example/",
                "algorithms": ["EdDSA"],
                "audiences": ["https://api.hospital.example"],
                "keys": {"remote": {"cluster": "other_consent", "path": "/jwks"}},
                "consent": {
                    "format": "authorization_details", "types": ["health_record_access"],
                    "purpose_field": "purposes", "grantee_claims": ["client_id"]
                }
            });
            d["issuers"].as_array_mut().unwrap().push(second);
        },
    );
    variant("a route with every member".into(), &|d| {
        d["routes"].as_array_mut().unwrap().push(json!({
            "name": "lab-results",
            "methods": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            "path": "/labs/{lab}/results/{id}",
            "response": {
                "content_types": ["application/json", "application/fhir+json"],
                "unclassified": "keep",
                "match": "case_insensitive",
                "control_keys": "withhold",
                "mask_client_errors": true,
                "headers": ["etag"],
                "fields": [
                    {"path": "$.id", "public": true},
                    {"path": "$.subject", "domain": "identity", "sensitivity": "low"},
                    {"path": "$.results[*].value", "domain": "clinical", "sensitivity": "special",
                     "action": {"generalise": {"bucket": 5}}},
                    {"path": "$[\"lab notes\"].*", "domain": "clinical", "public": false},
                    {"path": "$..national_id", "domain": "identity", "match": "exact"},
                    {"path": "$..[\"ſsn\"].digits", "domain": "identity"}
                ]
            },
            "request": {
                "query": ["from"], "headers": ["x-lab"], "body": ["$.filter"],
                "by_purpose": {
                    "research": {"query": [], "headers": [], "body": ["$.filter.code"]},
                    "access": {"query": ["from", "to"]}
                }
            },
            "rules": [{"name": "lab-read", "release": ["clinical"], "subject": {"is": "id"}}]
        }));
    });
    variant("the root path and a route without fields".into(), &|d| {
        d["routes"].as_array_mut().unwrap().push(json!({
            "name": "root", "path": "/",
            "rules": [{"name": "any-consent"}]
        }));
    });
    variant("the minimal document".into(), &|d| {
        let issuer = json!({
            "issuer": "https://consent.example.com",
            "algorithms": ["ES256"],
            "audiences": ["https://api.hospital.example"],
            "keys": {"remote": {"cluster": "consent_service", "path": "/.well-known/jwks.json"}}
        });
        *d = json!({"version": 1, "issuers": [issuer], "routes": []});
    });
    variant("the example in YAML".into(), &|d| {
        let yaml = config_as_json("example.yaml", &repo_text("policies/example.yaml")).unwrap();
        *d = serde_json::from_str(&yaml).unwrap();
    });
    out
}

#[test]
fn valid_variations_are_accepted_by_the_schema_and_the_plugin() {
    let variations = valid();
    let mut failures = Vec::new();
    for (name, doc) in &variations {
        let errors: Vec<String> = validator()
            .iter_errors(doc)
            .map(|e| format!("{}: {e}", dollar(e.instance_path())))
            .collect();
        if !errors.is_empty() {
            failures.push(format!("{name}: the schema refuses it: {errors:?}"));
        }
        if let Err(refusals) = plugin_verdict(doc) {
            failures.push(format!("{name}: the plugin refuses it: {refusals:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} variations:\n{}",
        failures.len(),
        variations.len(),
        failures.join("\n")
    );
}

#[test]
fn the_schema_states_the_plugins_defaults() {
    // A few defaults the documentation promises, read from the schema itself.
    let s = schema();
    let p = &s["properties"];
    assert_eq!(
        p["token"]["properties"]["header"]["default"],
        "authorization"
    );
    assert_eq!(p["token"]["properties"]["scheme"]["default"], "Bearer");
    assert_eq!(
        p["limits"]["properties"]["max_body_bytes"]["default"],
        1_048_576
    );
    assert_eq!(p["limits"]["properties"]["max_depth"]["default"], 64);
    assert_eq!(
        p["limits"]["properties"]["max_token_bytes"]["default"],
        8192
    );
    assert_eq!(
        p["purpose"]["properties"]["header"]["default"],
        "x-consent-purpose"
    );
    let d = &s["$defs"];
    assert_eq!(
        d["route"]["properties"]["methods"]["default"],
        json!(["GET", "HEAD"])
    );
    assert_eq!(
        d["rule"]["properties"]["max_sensitivity"]["default"],
        "high"
    );
    assert_eq!(d["field"]["properties"]["sensitivity"]["default"], "medium");
    assert_eq!(
        d["response"]["properties"]["unclassified"]["default"],
        "remove"
    );
    assert_eq!(d["response"]["properties"]["match"]["default"], "exact");
    assert_eq!(
        d["response"]["properties"]["control_keys"]["default"],
        "remove"
    );
    assert_eq!(d["action"]["default"], "remove");
    // Revocation and RFC 9068's claims are checked unless switched off.
    assert_eq!(
        d["statusListSource"]["properties"]["require_status_claim"]["default"],
        true
    );
    assert_eq!(
        d["issuer"]["properties"]["require_rfc9068_claims"]["default"],
        true
    );
}
