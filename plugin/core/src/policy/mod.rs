//! The policy: which caller may have which data, for which purpose, and how every
//! response field is released or transformed.
//!
//! A policy names data **domains** and **purposes**, optional **partner** sets, and
//! **routes** (method + path template). Each route classifies its response fields
//! (JSON path → domain, sensitivity, action) and holds **rules**. For a request:
//!
//! 1. The purpose is the request's purpose header, or the consent's only purpose.
//! 2. Every rule of the route is checked: purposes, grantees and partner sets,
//!    relationship (the subject is the path's `{id}`, or holds a delegation to it),
//!    consented actions and domains, validity window, consent age, hours of day,
//!    source networks, mTLS and SPIFFE identity, and an optional expression (`when`).
//!    An expression that cannot be evaluated never grants: it fails an allow rule and
//!    matches a deny rule.
//! 3. Any matching deny rule refuses (explicit deny wins). Otherwise the first
//!    matching allow rule allows; nothing matched refuses.
//! 4. The released domains are the rule's `release` ∩ the consent's domains. A field
//!    is released in clear when its domain is released and its sensitivity is at most
//!    the rule's `max_sensitivity`; otherwise the rule's action for its domain, or the
//!    field's own action (remove by default), applies. Unclassified fields follow the
//!    route's default (remove). The per-field plan is built once per
//!    (route, rule, released domains) and cached.

pub mod cidr;
pub mod clock;
pub mod expr;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use serde::Deserialize;

use crate::http::{Headers, PeerCertificate};
use crate::redact::{
    ControlKeys, FieldAction, FieldPath, Generalisation, HashEncoding, Plan, Unclassified,
};
use crate::route::{Params, PathTemplate};
use crate::token::Consent;
use cidr::Cidr;
use clock::HoursWindow;
use expr::{Env, Expr, Value};

// ---------------------------------------------------------------------------
// Raw form.

/// The policy part of the filter configuration, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub purposes: Vec<String>,
    #[serde(default)]
    pub partners: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub purpose: RawPurpose,
    #[serde(default)]
    pub provenance: RawProvenance,
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPurpose {
    /// The request header that names the purpose of a request.
    pub header: String,
}

impl Default for RawPurpose {
    fn default() -> Self {
        Self {
            header: "x-consent-purpose".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProvenance {
    pub consent_id: String,
    pub purpose: String,
    pub decision: String,
    pub grantee: String,
}

impl Default for RawProvenance {
    fn default() -> Self {
        Self {
            consent_id: "x-consent-id".into(),
            purpose: "x-consent-purpose".into(),
            decision: "x-consent-decision".into(),
            grantee: "x-consent-grantee".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    pub path: String,
    #[serde(default)]
    pub response: RawResponse,
    #[serde(default)]
    pub request: RawRequest,
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

fn default_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawResponse {
    pub content_types: Vec<String>,
    pub unclassified: RawUnclassified,
    /// How the fields' member names are matched, unless a field says otherwise.
    #[serde(rename = "match")]
    pub matching: RawMatch,
    /// What happens to members whose names contain control characters.
    pub control_keys: RawControlKeys,
    pub fields: Vec<RawField>,
    /// Replace 4xx bodies from the upstream with a masked problem too.
    pub mask_client_errors: bool,
    /// Response headers the client may receive besides the protocol's own
    /// ([`PROTOCOL_RESPONSE_HEADERS`]); absent or empty, no other header passes.
    pub headers: Option<Vec<String>>,
}

/// Response headers the protocol needs, kept whatever a route's `response.headers`
/// allow-list says (`content-length` is rewritten for the released body).
pub const PROTOCOL_RESPONSE_HEADERS: [&str; 3] =
    ["content-type", "content-length", "transfer-encoding"];

impl Default for RawResponse {
    fn default() -> Self {
        Self {
            content_types: vec!["application/json".into()],
            unclassified: RawUnclassified::Remove,
            matching: RawMatch::Exact,
            control_keys: RawControlKeys::Remove,
            fields: Vec::new(),
            mask_client_errors: false,
            headers: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawUnclassified {
    #[default]
    Remove,
    Keep,
}

/// How a field path's member names are matched.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawMatch {
    /// The unescaped name, exactly.
    #[default]
    Exact,
    /// Every spelling with the same Unicode simple case fold (`SSN`, `Ssn`, `ſſn` for
    /// `ssn`), as consumers that bind names case-insensitively read them.
    CaseInsensitive,
}

/// What the redactor does with a member whose name contains a control character.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawControlKeys {
    /// Remove the member.
    #[default]
    Remove,
    /// Withhold the whole response (502 `unsafe_response`).
    Withhold,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawField {
    pub path: String,
    /// How the path's names are matched; the route's `response.match` by default.
    #[serde(default, rename = "match")]
    pub matching: Option<RawMatch>,
    /// The data domain; required unless the field is `public`.
    #[serde(default)]
    pub domain: Option<String>,
    /// Not personal data (a record type, a timestamp): released to every allowed
    /// request, whatever the consent covers.
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub sensitivity: Sensitivity,
    #[serde(default)]
    pub action: RawAction,
}

/// How sensitive a field is; rules release fields up to their `max_sensitivity`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Sensitivity {
    Low,
    #[default]
    Medium,
    High,
    /// Special categories (GDPR art. 9: health, genetics, beliefs): released only by
    /// rules that say `max_sensitivity: special`.
    Special,
}

/// What happens to a field that is not released in clear. Written as a name
/// (`"remove"`, `"mask"`, `"hash"`, `"pseudonymise"`, `"encrypt"`, with defaults) or
/// as an object with options (`{"mask": {"keep_last": 4}}`, `{"generalise": "year"}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RawAction {
    #[default]
    Remove,
    Mask {
        keep_first: usize,
        keep_last: usize,
        char: char,
        keep_separators: bool,
    },
    Hash {
        encoding: RawEncoding,
    },
    Pseudonymise {
        key: Option<String>,
    },
    Generalise(RawGeneralise),
    Encrypt,
}

/// The object form of [`RawAction`].
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RawActionObject {
    Remove {},
    Mask {
        #[serde(default)]
        keep_first: usize,
        #[serde(default = "four")]
        keep_last: usize,
        #[serde(default = "star")]
        char: char,
        #[serde(default)]
        keep_separators: bool,
    },
    Hash {
        #[serde(default)]
        encoding: RawEncoding,
    },
    Pseudonymise {
        #[serde(default)]
        key: Option<String>,
    },
    Generalise(RawGeneralise),
    Encrypt {},
}

impl<'de> Deserialize<'de> for RawAction {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawAction;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an action: \"remove\", \"mask\", \"hash\", \"pseudonymise\", \"encrypt\", or an object such as {\"generalise\": \"year\"}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawAction, E> {
                Ok(match v {
                    "remove" => RawAction::Remove,
                    "mask" => RawAction::Mask {
                        keep_first: 0,
                        keep_last: four(),
                        char: star(),
                        keep_separators: false,
                    },
                    "hash" => RawAction::Hash {
                        encoding: RawEncoding::Hex,
                    },
                    "pseudonymise" | "pseudonymize" => RawAction::Pseudonymise { key: None },
                    "encrypt" => RawAction::Encrypt,
                    "generalise" | "generalize" => {
                        return Err(E::custom(
                            "generalise needs a form: {\"generalise\": \"year\"}, \"year_month\" or {\"bucket\": 10}",
                        ));
                    }
                    other => {
                        return Err(E::custom(format!(
                            "unknown action '{other}'; use remove, mask, hash, pseudonymise, generalise or encrypt"
                        )));
                    }
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawAction, A::Error> {
                let o: RawActionObject =
                    one_member(map, "an action object", "{\"mask\": {\"keep_last\": 4}}")?;
                Ok(match o {
                    RawActionObject::Remove {} => RawAction::Remove,
                    RawActionObject::Mask {
                        keep_first,
                        keep_last,
                        char,
                        keep_separators,
                    } => RawAction::Mask {
                        keep_first,
                        keep_last,
                        char,
                        keep_separators,
                    },
                    RawActionObject::Hash { encoding } => RawAction::Hash { encoding },
                    RawActionObject::Pseudonymise { key } => RawAction::Pseudonymise { key },
                    RawActionObject::Generalise(g) => RawAction::Generalise(g),
                    RawActionObject::Encrypt {} => RawAction::Encrypt,
                })
            }
        }
        d.deserialize_any(V)
    }
}

fn four() -> usize {
    4
}

fn star() -> char {
    '*'
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawEncoding {
    #[default]
    Hex,
    Base64url,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RawGeneralise {
    Year,
    YearMonth,
    Bucket(u64),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRequest {
    /// Query parameters the upstream may receive; `None` keeps all.
    pub query: Option<Vec<String>>,
    /// Request headers the upstream may receive besides the standard ones; `None`
    /// keeps all.
    pub headers: Option<Vec<String>>,
    /// JSON body fields (paths) the upstream may receive; the rest of a JSON
    /// request body is removed. `None` forwards bodies untouched.
    pub body: Option<Vec<String>>,
    /// Per purpose, replaces `query`, `headers` and `body` for requests of that
    /// purpose.
    pub by_purpose: BTreeMap<String, RawRequestPart>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRequestPart {
    pub query: Option<Vec<String>>,
    pub headers: Option<Vec<String>>,
    pub body: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    #[serde(default)]
    pub effect: Effect,
    #[serde(default)]
    pub purposes: Vec<String>,
    #[serde(default)]
    pub grantees: Vec<String>,
    #[serde(default)]
    pub partners: Vec<String>,
    #[serde(default)]
    pub subject: Option<RawSubject>,
    #[serde(default)]
    pub consent_actions: Vec<String>,
    #[serde(default)]
    pub require_domains: Vec<String>,
    #[serde(default)]
    pub release: Vec<String>,
    #[serde(default)]
    pub max_sensitivity: Option<Sensitivity>,
    #[serde(default)]
    pub actions: BTreeMap<String, RawAction>,
    #[serde(default)]
    pub valid_from: Option<String>,
    #[serde(default)]
    pub valid_until: Option<String>,
    #[serde(default)]
    pub max_consent_age_seconds: Option<u64>,
    #[serde(default)]
    pub hours: Option<RawHours>,
    #[serde(default)]
    pub source_cidrs: Vec<String>,
    #[serde(default)]
    pub mtls: bool,
    #[serde(default)]
    pub spiffe_ids: Vec<String>,
    #[serde(default)]
    pub caller_is_grantee: bool,
    #[serde(default)]
    pub when: Option<String>,
}

/// Reads an externally tagged enum written as an object of exactly one member;
/// serde's own error for a second member ("trailing comma") would not say what
/// is wrong. Reading through the map itself keeps error locations inside it.
fn one_member<'de, T: Deserialize<'de>, A: serde::de::MapAccess<'de>>(
    mut map: A,
    what: &str,
    example: &str,
) -> Result<T, A::Error> {
    use serde::de::Error;
    let value = T::deserialize(serde::de::value::MapAccessDeserializer::new(&mut map))?;
    if let Some(extra) = map.next_key::<String>()? {
        return Err(A::Error::custom(format!(
            "{what} has exactly one member, such as {example}; '{extra}' is a second one"
        )));
    }
    Ok(value)
}

/// Relationship between the consent's subject and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawSubject {
    /// The consent's subject is the path parameter of this name.
    Is(String),
    /// The subject is the parameter, or holds a delegation (guardian, `act`) to it.
    IsOrActsFor(String),
    /// The subject holds a delegation to the parameter (and is not it).
    ActsFor(String),
}

/// The serde shape of [`RawSubject`].
#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RawSubjectObject {
    Is(String),
    IsOrActsFor(String),
    ActsFor(String),
}

impl<'de> Deserialize<'de> for RawSubject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawSubject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a relation such as {\"is\": \"id\"}, {\"is_or_acts_for\": \"id\"} or {\"acts_for\": \"id\"}")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawSubject, A::Error> {
                let o: RawSubjectObject = one_member(map, "subject", "{\"is\": \"id\"}")?;
                Ok(match o {
                    RawSubjectObject::Is(p) => RawSubject::Is(p),
                    RawSubjectObject::IsOrActsFor(p) => RawSubject::IsOrActsFor(p),
                    RawSubjectObject::ActsFor(p) => RawSubject::ActsFor(p),
                })
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHours {
    pub from: String,
    pub to: String,
    #[serde(default = "utc")]
    pub utc_offset: String,
    #[serde(default = "all_days")]
    pub days: Vec<String>,
}

fn utc() -> String {
    "+00:00".into()
}

fn all_days() -> Vec<String> {
    clock::WEEKDAYS.iter().map(|d| (*d).to_owned()).collect()
}

// ---------------------------------------------------------------------------
// Compiled form.

/// A set of domains as bits, by index in the policy's domain list.
pub type DomainSet = u64;

#[derive(Debug)]
pub struct Policy {
    pub domains: Vec<String>,
    pub purposes: Vec<String>,
    pub purpose_header: String,
    pub provenance: RawProvenance,
    pub routes: Vec<Route>,
    plans: RefCell<HashMap<(usize, usize, DomainSet), Rc<Plan>>>,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    /// The route's position in the document (routes are kept most specific
    /// first), so load errors found after sorting still name `$.routes[i]`.
    pub index: usize,
    pub methods: Vec<String>,
    pub template: PathTemplate,
    pub content_types: Vec<String>,
    pub unclassified: Unclassified,
    pub control_keys: ControlKeys,
    pub fields: Vec<Field>,
    pub mask_client_errors: bool,
    /// Response headers allowed besides the standard ones; `None` allows all.
    pub response_headers: Option<Vec<String>>,
    pub request: RequestMinimisation,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
pub struct Field {
    pub text: String,
    pub path: FieldPath,
    /// Index in the policy's domains; unused for public fields.
    pub domain: usize,
    pub public: bool,
    pub sensitivity: Sensitivity,
    pub action: FieldAction,
}

/// What of a request the upstream may receive: query parameters and headers by
/// name (`None` keeps all), for every purpose or for one.
#[derive(Debug, Clone, Default)]
pub struct RequestMinimisation {
    pub query: Option<Vec<String>>,
    pub headers: Option<Vec<String>>,
    pub body: Option<Rc<Plan>>,
    pub by_purpose: BTreeMap<String, RawRequestPart>,
    pub body_by_purpose: BTreeMap<String, Rc<Plan>>,
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub effect: Effect,
    pub purposes: Vec<String>,
    pub grantees: Vec<String>,
    pub subject: Option<RawSubject>,
    pub consent_actions: Vec<String>,
    pub require_domains: DomainSet,
    pub release: DomainSet,
    pub max_sensitivity: Sensitivity,
    /// Actions for fields not released in clear, by domain.
    pub actions: HashMap<usize, FieldAction>,
    /// Actions by classified field path; they beat the domain's.
    pub field_actions: HashMap<String, FieldAction>,
    pub valid_from: Option<i64>,
    pub valid_until: Option<i64>,
    pub max_consent_age: Option<u64>,
    pub hours: Option<HoursWindow>,
    pub source_cidrs: Vec<Cidr>,
    pub mtls: bool,
    pub spiffe_ids: Vec<String>,
    pub caller_is_grantee: bool,
    pub when: Option<Expr>,
}

/// The names an expression may use.
pub const EXPRESSION_VARIABLES: [&str; 6] =
    ["consent", "claims", "request", "caller", "purpose", "now"];

/// A configuration error: JSON location and reason.
pub type Problem = (String, String);

/// The default pseudonymisation key id when a field does not name one.
pub const DEFAULT_PSEUDONYM_KEY: &str = "default";

fn action(raw: &RawAction, newest_key: &str) -> Result<FieldAction, String> {
    Ok(match raw {
        RawAction::Remove => FieldAction::Remove,
        RawAction::Mask {
            keep_first,
            keep_last,
            char,
            keep_separators,
        } => FieldAction::Mask {
            keep_first: *keep_first,
            keep_last: *keep_last,
            mask_char: *char,
            keep_separators: *keep_separators,
        },
        RawAction::Hash { encoding } => FieldAction::Hash {
            encoding: match encoding {
                RawEncoding::Hex => HashEncoding::Hex,
                RawEncoding::Base64url => HashEncoding::Base64Url,
            },
        },
        RawAction::Pseudonymise { key: Some(k) } if !crate::redact::valid_key_id(k) => {
            return Err(format!(
                "'{k}' is not a key id: 1 to 64 letters, digits, '.', '_' or '-'"
            ));
        }
        RawAction::Pseudonymise { key } => FieldAction::Pseudonymise {
            key_id: key.clone().unwrap_or_else(|| newest_key.to_owned()),
        },
        RawAction::Generalise(g) => FieldAction::Generalise(match g {
            RawGeneralise::Year => Generalisation::DateToYear,
            RawGeneralise::YearMonth => Generalisation::DateToYearMonth,
            RawGeneralise::Bucket(0) => return Err("a bucket width must be greater than 0".into()),
            RawGeneralise::Bucket(w) => Generalisation::NumberBucket { width: *w },
        }),
        RawAction::Encrypt => FieldAction::Encrypt,
    })
}

const KNOWN_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// `application/json` or a structured `+json` type: one JSON document the
/// redactor can read (not `application/x-ndjson`, a stream of documents).
fn is_json_media_type(s: &str) -> bool {
    let Some(subtype) = s.strip_prefix("application/") else {
        return false;
    };
    let plain = |t: &str| {
        !t.is_empty()
            && t.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            })
    };
    subtype == "json" || subtype.strip_suffix("+json").is_some_and(plain)
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Policy {
    /// Whether a rule condition reads the token's raw `claims`. When none does, the
    /// token cache need not keep them (most of a cached entry's size).
    pub fn reads_token_claims(&self) -> bool {
        self.routes
            .iter()
            .flat_map(|r| &r.rules)
            .any(|rule| rule.when.as_ref().is_some_and(|e| e.reads("claims")))
    }

    /// Compiles the policy. `newest_key` is the id of the newest pseudonymisation
    /// key (fields that pseudonymise without naming a key use it).
    pub fn compile(raw: RawPolicy, newest_key: &str) -> Result<Policy, Vec<Problem>> {
        let mut errs: Vec<Problem> = Vec::new();
        let mut err = |at: String, why: String| errs.push((at, why));

        let mut domains: Vec<String> = Vec::new();
        for (i, d) in raw.domains.iter().enumerate() {
            if d.is_empty() || domains.contains(d) {
                err(
                    format!("$.domains[{i}]"),
                    format!("domain '{d}' is empty or listed twice"),
                );
            }
            domains.push(d.clone());
        }
        if domains.len() > 64 {
            err("$.domains".into(), "at most 64 domains".into());
        }
        for (i, p) in raw.purposes.iter().enumerate() {
            if p.is_empty() || raw.purposes[..i].contains(p) {
                err(
                    format!("$.purposes[{i}]"),
                    format!("purpose '{p}' is empty or listed twice"),
                );
            }
        }
        let header = raw.purpose.header.to_ascii_lowercase();
        if !is_header_name(&header) {
            err(
                "$.purpose.header".into(),
                "must be a lower-case header name".into(),
            );
        }
        for (name, value) in [
            ("consent_id", &raw.provenance.consent_id),
            ("purpose", &raw.provenance.purpose),
            ("decision", &raw.provenance.decision),
            ("grantee", &raw.provenance.grantee),
        ] {
            if !is_header_name(value) {
                err(
                    format!("$.provenance.{name}"),
                    "must be a lower-case header name".into(),
                );
            }
        }
        let domain_index = |d: &str| domains.iter().position(|x| x == d);
        let mut routes: Vec<Route> = Vec::new();
        for (ri, r) in raw.routes.into_iter().enumerate() {
            let at = |s: &str| format!("$.routes[{ri}].{s}");
            if r.name.is_empty() {
                err(at("name"), "must not be empty".into());
            } else if routes.iter().any(|o| o.name == r.name) {
                err(at("name"), format!("route name '{}' is used twice", r.name));
            }
            if r.methods.is_empty() {
                err(at("methods"), "must list at least one method".into());
            }
            for (j, m) in r.methods.iter().enumerate() {
                if !KNOWN_METHODS.contains(&m.as_str()) {
                    err(
                        format!("$.routes[{ri}].methods[{j}]"),
                        format!(
                            "unknown method '{m}'; use one of {}",
                            KNOWN_METHODS.join(", ")
                        ),
                    );
                }
            }
            let template = match PathTemplate::parse(&r.path) {
                Ok(t) => Some(t),
                Err(e) => {
                    err(at("path"), format!("bad path template: {e}"));
                    None
                }
            };
            for (j, ct) in r.response.content_types.iter().enumerate() {
                if !is_json_media_type(ct) {
                    err(
                        format!("$.routes[{ri}].response.content_types[{j}]"),
                        format!(
                            "'{ct}' cannot be redacted: only lower-case JSON media types (application/json, application/*+json), without parameters"
                        ),
                    );
                }
            }
            let mut fields = Vec::new();
            for (fi, f) in r.response.fields.iter().enumerate() {
                let fat = |s: &str| format!("$.routes[{ri}].response.fields[{fi}].{s}");
                let any_case =
                    f.matching.unwrap_or(r.response.matching) == RawMatch::CaseInsensitive;
                let path = match FieldPath::parse(&f.path) {
                    Ok(p) if f.matching == Some(RawMatch::CaseInsensitive) && !p.has_name() => {
                        err(
                            fat("match"),
                            format!(
                                "'{}' names no member: there is no name to match case-insensitively",
                                f.path
                            ),
                        );
                        None
                    }
                    Ok(p) if any_case => Some(p.any_case()),
                    Ok(p) => Some(p),
                    Err(e) => {
                        err(fat("path"), format!("bad field path: {e}"));
                        None
                    }
                };
                let domain = match (&f.domain, f.public) {
                    (Some(d), false) => {
                        let i = domain_index(d);
                        if i.is_none() {
                            err(
                                fat("domain"),
                                format!("unknown domain '{d}'; declare it in $.domains"),
                            );
                        }
                        i
                    }
                    (None, true) => Some(0),
                    (Some(_), true) => {
                        err(
                            fat("public"),
                            "a public field has no domain: drop one of them".into(),
                        );
                        None
                    }
                    (None, false) => {
                        err(
                            fat("domain"),
                            "a field needs a domain (or \"public\": true for data that is not personal)".into(),
                        );
                        None
                    }
                };
                let act = match action(&f.action, newest_key) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        err(fat("action"), e);
                        None
                    }
                };
                if let (Some(path), Some(domain), Some(action)) = (path, domain, act) {
                    if let Some(o) = fields
                        .iter()
                        .find(|o: &&Field| o.path.same_locations(&path))
                    {
                        let how = if o.text == f.path {
                            String::new()
                        } else {
                            format!(" (as '{}', under case-insensitive matching)", o.text)
                        };
                        err(
                            fat("path"),
                            format!("'{}' is classified twice{how}", f.path),
                        );
                    }
                    fields.push(Field {
                        text: f.path.clone(),
                        path,
                        domain,
                        public: f.public,
                        sensitivity: f.sensitivity,
                        action,
                    });
                }
            }
            let mut rules = Vec::new();
            for (k, rule) in r.rules.iter().enumerate() {
                let rat = |s: &str| format!("$.routes[{ri}].rules[{k}].{s}");
                if rule.name.is_empty() || r.rules[..k].iter().any(|o| o.name == rule.name) {
                    err(
                        rat("name"),
                        format!("rule name '{}' is empty or used twice", rule.name),
                    );
                }
                for (j, p) in rule.purposes.iter().enumerate() {
                    if !raw.purposes.contains(p) {
                        err(
                            format!("$.routes[{ri}].rules[{k}].purposes[{j}]"),
                            format!("unknown purpose '{p}'; declare it in $.purposes"),
                        );
                    }
                }
                let mut grantees = rule.grantees.clone();
                for (j, p) in rule.partners.iter().enumerate() {
                    match raw.partners.get(p) {
                        Some(set) => grantees.extend(set.iter().cloned()),
                        None => err(
                            format!("$.routes[{ri}].rules[{k}].partners[{j}]"),
                            format!("unknown partner set '{p}'; declare it in $.partners"),
                        ),
                    }
                }
                if !rule.partners.is_empty() && grantees.is_empty() {
                    err(
                        rat("partners"),
                        "the partner sets are empty: the rule could never match".into(),
                    );
                }
                if let Some(s) = &rule.subject {
                    let (RawSubject::Is(p) | RawSubject::IsOrActsFor(p) | RawSubject::ActsFor(p)) =
                        s;
                    let known = template
                        .as_ref()
                        .is_some_and(|t| t.param_names().any(|n| n == p));
                    if !known {
                        err(
                            rat("subject"),
                            format!("'{p}' is not a parameter of the path {}", r.path),
                        );
                    }
                }
                let mut set = |list: &[String], what: &str| -> DomainSet {
                    let mut bits = 0;
                    for (j, d) in list.iter().enumerate() {
                        match domain_index(d) {
                            Some(i) => bits |= 1u64 << i,
                            None => err(
                                format!("$.routes[{ri}].rules[{k}].{what}[{j}]"),
                                format!("unknown domain '{d}'; declare it in $.domains"),
                            ),
                        }
                    }
                    bits
                };
                let require_domains = set(&rule.require_domains, "require_domains");
                let release = set(&rule.release, "release");
                let mut actions = HashMap::new();
                let mut field_actions = HashMap::new();
                for (d, a) in &rule.actions {
                    if d.starts_with('$') {
                        // A field path: it must be one the route classifies.
                        match (
                            fields.iter().any(|f: &Field| f.text == *d),
                            action(a, newest_key),
                        ) {
                            (true, Ok(a)) => {
                                field_actions.insert(d.clone(), a);
                            }
                            (false, _) => err(
                                format!("$.routes[{ri}].rules[{k}].actions[\"{d}\"]"),
                                format!("'{d}' is not a field this route classifies"),
                            ),
                            (_, Err(e)) => {
                                err(format!("$.routes[{ri}].rules[{k}].actions[\"{d}\"]"), e)
                            }
                        }
                        continue;
                    }
                    match (domain_index(d), action(a, newest_key)) {
                        (Some(i), Ok(a)) => {
                            actions.insert(i, a);
                        }
                        (None, _) => err(
                            format!("$.routes[{ri}].rules[{k}].actions.{d}"),
                            format!("unknown domain '{d}'"),
                        ),
                        (_, Err(e)) => err(format!("$.routes[{ri}].rules[{k}].actions.{d}"), e),
                    }
                }
                let mut instant = |v: &Option<String>, what: &str| {
                    v.as_ref().and_then(|t| match clock::parse_rfc3339(t) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            err(rat(what), e);
                            None
                        }
                    })
                };
                let valid_from = instant(&rule.valid_from, "valid_from");
                let valid_until = instant(&rule.valid_until, "valid_until");
                if let (Some(a), Some(b)) = (valid_from, valid_until)
                    && a >= b
                {
                    err(rat("valid_until"), "must be after valid_from".into());
                }
                let hours = rule.hours.as_ref().and_then(|h| {
                    let from = clock::parse_hhmm(&h.from)
                        .map_err(|e| err(rat("hours.from"), e))
                        .ok();
                    let to = clock::parse_hhmm(&h.to)
                        .map_err(|e| err(rat("hours.to"), e))
                        .ok();
                    let offset = clock::parse_offset(&h.utc_offset)
                        .map_err(|e| err(rat("hours.utc_offset"), e))
                        .ok();
                    let mut days = 0u8;
                    if h.days.is_empty() {
                        err(
                            rat("hours.days"),
                            "no day is listed: the rule could never match".into(),
                        );
                    }
                    for (j, d) in h.days.iter().enumerate() {
                        match clock::WEEKDAYS
                            .iter()
                            .position(|w| *w == d.to_ascii_lowercase())
                        {
                            Some(i) => days |= 1 << i,
                            None => err(
                                rat(&format!("hours.days[{j}]")),
                                format!("'{d}' is not one of {}", clock::WEEKDAYS.join(", ")),
                            ),
                        }
                    }
                    Some(HoursWindow {
                        from_minute: from?,
                        to_minute: to?,
                        offset_seconds: offset?,
                        days,
                    })
                });
                let mut cidrs = Vec::new();
                for (j, c) in rule.source_cidrs.iter().enumerate() {
                    match Cidr::parse(c) {
                        Ok(c) => cidrs.push(c),
                        Err(e) => err(format!("$.routes[{ri}].rules[{k}].source_cidrs[{j}]"), e),
                    }
                }
                let when = rule.when.as_ref().and_then(|w| {
                    Expr::compile(w, &EXPRESSION_VARIABLES)
                        .map_err(|e| {
                            err(
                                rat("when"),
                                format!("expression error at offset {}: {}", e.offset, e.message),
                            )
                        })
                        .ok()
                });
                if rule.effect == Effect::Allow && rule.release.is_empty() && !fields.is_empty() {
                    err(
                        rat("release"),
                        "an allow rule must release at least one domain (list the domains it may read)".into(),
                    );
                }
                rules.push(Rule {
                    name: rule.name.clone(),
                    effect: rule.effect,
                    purposes: rule.purposes.clone(),
                    grantees,
                    subject: rule.subject.clone(),
                    consent_actions: rule.consent_actions.clone(),
                    require_domains,
                    release,
                    max_sensitivity: rule.max_sensitivity.unwrap_or(Sensitivity::High),
                    actions,
                    field_actions,
                    valid_from,
                    valid_until,
                    max_consent_age: rule.max_consent_age_seconds,
                    hours,
                    source_cidrs: cidrs,
                    mtls: rule.mtls,
                    spiffe_ids: rule.spiffe_ids.clone(),
                    caller_is_grantee: rule.caller_is_grantee,
                    when,
                });
            }
            if r.rules.is_empty() {
                err(
                    at("rules"),
                    "a route without rules refuses every request; add a rule or remove the route"
                        .into(),
                );
            }
            let check_names =
                |list: &Option<Vec<String>>, what: &str, errs: &mut dyn FnMut(String, String)| {
                    for (j, h) in list.iter().flatten().enumerate() {
                        if what == "headers" && !is_header_name(h) {
                            errs(
                                format!("$.routes[{ri}].request.{what}[{j}]"),
                                "must be a lower-case header name".into(),
                            );
                        }
                    }
                };
            check_names(&r.request.headers, "headers", &mut err);
            for (p, part) in &r.request.by_purpose {
                for (j, h) in part.headers.iter().flatten().enumerate() {
                    if !is_header_name(h) {
                        err(
                            format!("$.routes[{ri}].request.by_purpose.{p}.headers[{j}]"),
                            "must be a lower-case header name".into(),
                        );
                    }
                }
            }
            for (j, h) in r.response.headers.iter().flatten().enumerate() {
                if !is_header_name(h) {
                    err(
                        format!("$.routes[{ri}].response.headers[{j}]"),
                        "must be a lower-case header name".into(),
                    );
                }
            }
            let body_plan = |paths: &[String], at: String, err: &mut dyn FnMut(String, String)| {
                let mut rules = Vec::new();
                for (j, text) in paths.iter().enumerate() {
                    match FieldPath::parse(text) {
                        Ok(p) => rules.push((p, FieldAction::Keep)),
                        Err(e) => err(format!("{at}[{j}]"), format!("bad field path: {e}")),
                    }
                }
                match Plan::build(rules, Unclassified::Remove) {
                    Ok(plan) => Some(Rc::new(plan)),
                    Err(e) => {
                        err(at, format!("the body plan cannot be built: {e}"));
                        None
                    }
                }
            };
            let body = r
                .request
                .body
                .as_ref()
                .and_then(|paths| body_plan(paths, at("request.body"), &mut err));
            let mut by_purpose = BTreeMap::new();
            let mut body_by_purpose = BTreeMap::new();
            for (p, part) in &r.request.by_purpose {
                if !raw.purposes.contains(p) {
                    err(
                        at(&format!("request.by_purpose.{p}")),
                        format!("unknown purpose '{p}'"),
                    );
                }
                if let Some(paths) = &part.body
                    && let Some(plan) =
                        body_plan(paths, at(&format!("request.by_purpose.{p}.body")), &mut err)
                {
                    body_by_purpose.insert(p.clone(), plan);
                }
                by_purpose.insert(p.clone(), part.clone());
            }
            if let Some(template) = template {
                for other in &routes {
                    let shares_method = other.methods.iter().any(|m| r.methods.contains(m));
                    if shares_method && other.template.same_shape(&template) {
                        err(
                            at("path"),
                            format!(
                                "route '{}' is unreachable: route '{}' has the same path shape and method",
                                r.name, other.name
                            ),
                        );
                    }
                }
                routes.push(Route {
                    name: r.name,
                    index: ri,
                    methods: r.methods,
                    template,
                    content_types: r.response.content_types,
                    unclassified: match r.response.unclassified {
                        RawUnclassified::Remove => Unclassified::Remove,
                        RawUnclassified::Keep => Unclassified::Keep,
                    },
                    control_keys: match r.response.control_keys {
                        RawControlKeys::Remove => ControlKeys::Remove,
                        RawControlKeys::Withhold => ControlKeys::Withhold,
                    },
                    fields,
                    mask_client_errors: r.response.mask_client_errors,
                    response_headers: r.response.headers,
                    request: RequestMinimisation {
                        query: r.request.query,
                        headers: r.request.headers,
                        body,
                        by_purpose,
                        body_by_purpose,
                    },
                    rules,
                });
            }
        }
        // Most specific first; the sort is stable so equal shapes keep file order.
        routes.sort_by_key(|r| std::cmp::Reverse(r.template.specificity()));
        if !errs.is_empty() {
            return Err(errs);
        }
        let mut policy = Policy {
            domains,
            purposes: raw.purposes,
            purpose_header: header,
            provenance: raw.provenance,
            routes,
            plans: RefCell::new(HashMap::new()),
        };
        // Build every plan an allow rule can produce for its full release once now,
        // so a plan the redactor refuses is a load error, not a request error.
        let mut plan_errors = Vec::new();
        for (ri, route) in policy.routes.iter().enumerate() {
            for (k, rule) in route.rules.iter().enumerate() {
                if rule.effect == Effect::Allow
                    && let Err(e) = policy.build_plan(ri, k, rule.release)
                {
                    plan_errors.push((
                        format!("$.routes[{}].rules[{k}]", route.index),
                        format!("the field plan cannot be built: {e}"),
                    ));
                }
            }
        }
        if !plan_errors.is_empty() {
            return Err(plan_errors);
        }
        policy.plans.get_mut().clear();
        Ok(policy)
    }

    /// The route for a request, most specific first, with its path parameters.
    pub fn route_for(&self, method: &str, path: &str) -> Option<(usize, Params)> {
        self.routes.iter().enumerate().find_map(|(i, r)| {
            if !r.methods.iter().any(|m| m == method) {
                return None;
            }
            r.template.matches(path).map(|p| (i, p))
        })
    }

    /// The redaction plan for a decision, built once and cached.
    pub fn plan(&self, route: usize, rule: usize, released: DomainSet) -> Result<Rc<Plan>, String> {
        if let Some(p) = self.plans.borrow().get(&(route, rule, released)) {
            return Ok(p.clone());
        }
        let plan = Rc::new(self.build_plan(route, rule, released)?);
        let mut cache = self.plans.borrow_mut();
        if cache.len() >= 4096 {
            cache.clear();
        }
        cache.insert((route, rule, released), plan.clone());
        Ok(plan)
    }

    fn build_plan(&self, route: usize, rule: usize, released: DomainSet) -> Result<Plan, String> {
        let r = self.routes.get(route).ok_or("no such route")?;
        let entries = self
            .field_actions(route, rule, released)?
            .into_iter()
            .map(|(f, a)| (f.path.clone(), a))
            .collect();
        Plan::build(entries, r.unclassified)
            .map(|p| p.with_control_keys(r.control_keys))
            .map_err(|e| e.to_string())
    }

    /// What each classified field of a route becomes under one of its rules when the
    /// consent covers `released` (of the rule's `release`): `Keep` for a field
    /// released in clear, else the first of the rule's action for the field's path,
    /// the rule's action for its domain, the field's own action. The plan of a
    /// decision is built from these; `consentry check` reads them too.
    pub fn field_actions(
        &self,
        route: usize,
        rule: usize,
        released: DomainSet,
    ) -> Result<Vec<(&Field, FieldAction)>, String> {
        let r = self.routes.get(route).ok_or("no such route")?;
        let rule = r.rules.get(rule).ok_or("no such rule")?;
        Ok(r.fields
            .iter()
            .map(|f| {
                let in_clear = f.public
                    || (released & (1u64 << f.domain) != 0
                        && f.sensitivity <= rule.max_sensitivity);
                let a = if in_clear {
                    FieldAction::Keep
                } else {
                    rule.field_actions
                        .get(&f.text)
                        .or_else(|| rule.actions.get(&f.domain))
                        .cloned()
                        .unwrap_or_else(|| f.action.clone())
                };
                (f, a)
            })
            .collect())
    }

    /// Decides one request.
    pub fn decide(&self, route_index: usize, facts: &Facts<'_>) -> Decision {
        let deny = |reason: Reason| Decision {
            allow: false,
            reason,
            route: route_index,
            rule: None,
            purpose: None,
            released: 0,
        };
        let Some(route) = self.routes.get(route_index) else {
            return deny(Reason::NoRoute);
        };
        let purpose = match self.purpose(facts) {
            Ok(p) => p,
            Err(reason) => return deny(reason),
        };
        let consented = self.consented_domains(facts.consent);
        let mut allowed: Option<usize> = None;
        for (k, rule) in route.rules.iter().enumerate() {
            let matched = rule_matches(rule, facts, &purpose, consented);
            match rule.effect {
                // An error in a deny rule counts as a match: errors never grant.
                Effect::Deny if matched != Some(false) => {
                    return Decision {
                        rule: Some(k),
                        purpose: Some(purpose),
                        ..deny(Reason::DeniedByRule)
                    };
                }
                Effect::Allow if matched == Some(true) && allowed.is_none() => allowed = Some(k),
                _ => {}
            }
        }
        let Some(k) = allowed else {
            return Decision {
                purpose: Some(purpose),
                ..deny(Reason::NoRuleMatched)
            };
        };
        let rule = &route.rules[k];
        let released = rule.release & consented;
        if released == 0 && !route.fields.is_empty() {
            return Decision {
                rule: Some(k),
                purpose: Some(purpose),
                ..deny(Reason::NoConsentedDomain)
            };
        }
        Decision {
            allow: true,
            reason: Reason::Allowed,
            route: route_index,
            rule: Some(k),
            purpose: Some(purpose),
            released,
        }
    }

    /// The purpose of a request: its purpose header (one, declared, consented), or
    /// the consent's only purpose.
    fn purpose(&self, facts: &Facts<'_>) -> Result<String, Reason> {
        match facts.headers.get_single(&self.purpose_header) {
            Ok(v) => {
                let p = std::str::from_utf8(v)
                    .map_err(|_| Reason::PurposeMalformed)?
                    .trim();
                if !self.purposes.iter().any(|x| x == p)
                    || !facts.consent.purposes.iter().any(|x| x == p)
                {
                    return Err(Reason::PurposeNotConsented);
                }
                Ok(p.to_owned())
            }
            Err(0) => match facts.consent.purposes.as_slice() {
                [only] if self.purposes.contains(only) => Ok(only.clone()),
                [_] => Err(Reason::PurposeNotConsented),
                [] => Err(Reason::PurposeNotConsented),
                _ => Err(Reason::PurposeAmbiguous),
            },
            Err(_) => Err(Reason::PurposeMalformed),
        }
    }

    fn consented_domains(&self, consent: &Consent) -> DomainSet {
        let mut bits = 0;
        for d in &consent.domains {
            if let Some(i) = self.domains.iter().position(|x| x == d) {
                bits |= 1u64 << i;
            }
        }
        bits
    }

    /// Names of the domains in a set, for explanations and audit records.
    pub fn domain_names(&self, set: DomainSet) -> Vec<&str> {
        self.domains
            .iter()
            .enumerate()
            .filter(|(i, _)| set & (1u64 << i) != 0)
            .map(|(_, d)| d.as_str())
            .collect()
    }

    /// The plan that minimises a JSON request body for a purpose, if the route has one.
    pub fn request_body_plan(&self, route: usize, purpose: Option<&str>) -> Option<Rc<Plan>> {
        let r = self.routes.get(route)?;
        purpose
            .and_then(|p| r.request.body_by_purpose.get(p))
            .or(r.request.body.as_ref())
            .cloned()
    }

    /// Query parameters and headers the upstream may receive for a purpose.
    pub fn minimisation(
        &self,
        route: usize,
        purpose: Option<&str>,
    ) -> (Option<&[String]>, Option<&[String]>) {
        let Some(r) = self.routes.get(route) else {
            return (None, None);
        };
        let specific = purpose.and_then(|p| r.request.by_purpose.get(p));
        let query = specific
            .and_then(|p| p.query.as_deref())
            .or(r.request.query.as_deref());
        let headers = specific
            .and_then(|p| p.headers.as_deref())
            .or(r.request.headers.as_deref());
        (query, headers)
    }
}

/// `Some(true)` matched, `Some(false)` did not, `None` could not be evaluated.
fn rule_matches(
    rule: &Rule,
    facts: &Facts<'_>,
    purpose: &str,
    consented: DomainSet,
) -> Option<bool> {
    let c = facts.consent;
    let checks = [
        rule.purposes.is_empty() || rule.purposes.iter().any(|p| p == purpose),
        rule.grantees.is_empty()
            || c.grantee
                .as_ref()
                .is_some_and(|g| rule.grantees.contains(g)),
        rule.consent_actions.iter().all(|a| c.actions.contains(a)),
        rule.require_domains & consented == rule.require_domains,
        rule.valid_from.is_none_or(|t| facts.now >= t),
        rule.valid_until.is_none_or(|t| facts.now < t),
        rule.max_consent_age.is_none_or(|max| {
            c.issued_at.is_some_and(|iat| {
                let age = facts
                    .now
                    .saturating_sub(i64::try_from(iat).unwrap_or(i64::MAX));
                age >= 0 && age.unsigned_abs() <= max
            })
        }),
        rule.hours.as_ref().is_none_or(|h| h.contains(facts.now)),
        rule.source_cidrs.is_empty()
            || facts
                .source_ip
                .is_some_and(|ip| rule.source_cidrs.iter().any(|n| n.contains(ip))),
        !rule.mtls || facts.peer.is_some(),
        rule.spiffe_ids.is_empty()
            || facts
                .spiffe_id
                .is_some_and(|s| rule.spiffe_ids.iter().any(|x| x == s)),
        !rule.caller_is_grantee
            || (facts.spiffe_id.is_some() && facts.spiffe_id == c.grantee.as_deref()),
        subject_matches(rule.subject.as_ref(), facts),
    ];
    if checks.iter().any(|ok| !ok) {
        return Some(false);
    }
    match &rule.when {
        None => Some(true),
        Some(e) => e.eval_bool(&ExprEnv { facts, purpose }).ok(),
    }
}

fn subject_matches(subject: Option<&RawSubject>, facts: &Facts<'_>) -> bool {
    let Some(s) = subject else {
        return true;
    };
    let param = |name: &str| {
        facts
            .params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let c = facts.consent;
    match s {
        RawSubject::Is(p) => param(p).is_some_and(|v| v == c.subject),
        RawSubject::ActsFor(p) => {
            param(p).is_some_and(|v| v != c.subject && c.delegations.iter().any(|d| d == v))
        }
        RawSubject::IsOrActsFor(p) => {
            param(p).is_some_and(|v| v == c.subject || c.delegations.iter().any(|d| d == v))
        }
    }
}

impl Rule {
    /// The person whose data the consent's subject reads under a delegation when
    /// this rule matched: the path parameter of its `acts_for` / `is_or_acts_for`
    /// relation, if that is not the subject.
    pub fn acts_for<'f>(&self, facts: &Facts<'f>) -> Option<&'f str> {
        let Some(RawSubject::ActsFor(p) | RawSubject::IsOrActsFor(p)) = &self.subject else {
            return None;
        };
        facts
            .params
            .iter()
            .find(|(n, _)| n == p)
            .map(|(_, v)| v.as_str())
            .filter(|v| *v != facts.consent.subject)
    }
}

/// Why a request was allowed or refused (internal; the client sees only the code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Allowed,
    NoRoute,
    NoRuleMatched,
    DeniedByRule,
    PurposeAmbiguous,
    PurposeMalformed,
    PurposeNotConsented,
    NoConsentedDomain,
}

impl Reason {
    /// Stable names for audit records and explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::NoRoute => "no_route",
            Reason::NoRuleMatched => "no_rule_matched",
            Reason::DeniedByRule => "denied_by_rule",
            Reason::PurposeAmbiguous => "purpose_ambiguous",
            Reason::PurposeMalformed => "purpose_malformed",
            Reason::PurposeNotConsented => "purpose_not_consented",
            Reason::NoConsentedDomain => "no_consented_domain",
        }
    }
}

/// The outcome of [`Policy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    pub reason: Reason,
    pub route: usize,
    pub rule: Option<usize>,
    pub purpose: Option<String>,
    pub released: DomainSet,
}

/// What the policy may look at for one request.
pub struct Facts<'a> {
    pub consent: &'a Consent,
    pub method: &'a str,
    pub path: &'a str,
    pub params: &'a Params,
    pub query: Option<&'a str>,
    pub headers: &'a Headers,
    pub source_ip: Option<std::net::IpAddr>,
    pub peer: Option<&'a PeerCertificate>,
    /// The caller's verified SPIFFE ID (the certificate's one URI SAN).
    pub spiffe_id: Option<&'a str>,
    /// Unix seconds.
    pub now: i64,
}

struct ExprEnv<'f, 'a> {
    facts: &'f Facts<'a>,
    purpose: &'f str,
}

fn strs<'v>(items: &'v [String]) -> Value<'v> {
    Value::List(
        items
            .iter()
            .map(|s| Value::Str(s.as_str().into()))
            .collect(),
    )
}

fn opt_str(s: Option<&str>) -> Value<'_> {
    s.map_or(Value::Null, |s| Value::Str(s.into()))
}

impl Env for ExprEnv<'_, '_> {
    fn variable(&self, name: &str) -> Option<Value<'_>> {
        let f = self.facts;
        let c = f.consent;
        let int = |v: Option<u64>| {
            v.and_then(|v| i64::try_from(v).ok())
                .map_or(Value::Null, Value::Int)
        };
        Some(match name {
            "consent" => Value::Map(vec![
                ("subject".into(), Value::Str(c.subject.as_str().into())),
                ("grantee".into(), opt_str(c.grantee.as_deref())),
                (
                    "consent_id".into(),
                    Value::Str(c.consent_id.as_str().into()),
                ),
                ("issuer".into(), Value::Str(c.issuer.as_str().into())),
                ("purposes".into(), strs(&c.purposes)),
                ("domains".into(), strs(&c.domains)),
                ("actions".into(), strs(&c.actions)),
                ("delegations".into(), strs(&c.delegations)),
                ("issued_at".into(), int(c.issued_at)),
                ("expires_at".into(), int(Some(c.expires_at))),
            ]),
            "claims" => Value::from_json(&c.claims),
            "request" => {
                let params = f
                    .params
                    .iter()
                    .map(|(k, v)| (k.as_str().into(), Value::Str(v.as_str().into())))
                    .collect();
                let query = f
                    .query
                    .unwrap_or_default()
                    .split('&')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        (k.into(), Value::Str(v.into()))
                    })
                    .collect();
                let mut headers: Vec<(std::borrow::Cow<'_, str>, Value<'_>)> = Vec::new();
                for (n, v) in f.headers.iter() {
                    if n.starts_with(':') {
                        continue;
                    }
                    let v = String::from_utf8_lossy(v);
                    match headers.iter_mut().find(|(k, _)| k == n) {
                        Some((_, Value::Str(existing))) => {
                            *existing = format!("{existing},{v}").into();
                        }
                        _ => headers.push((n.into(), Value::Str(v))),
                    }
                }
                Value::Map(vec![
                    ("method".into(), Value::Str(f.method.into())),
                    ("path".into(), Value::Str(f.path.into())),
                    ("params".into(), Value::Map(params)),
                    ("query".into(), Value::Map(query)),
                    ("headers".into(), Value::Map(headers)),
                    (
                        "source".into(),
                        f.source_ip
                            .map_or(Value::Null, |ip| Value::Str(ip.to_string().into())),
                    ),
                    ("time".into(), Value::Int(f.now)),
                ])
            }
            "caller" => Value::Map(vec![
                ("mtls".into(), Value::Bool(f.peer.is_some())),
                ("spiffe_id".into(), opt_str(f.spiffe_id)),
                (
                    "cert_sha256".into(),
                    opt_str(f.peer.and_then(|p| p.sha256_hex.as_deref())),
                ),
            ]),
            "purpose" => Value::Str(self.purpose.into()),
            "now" => Value::Int(f.now),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests;
