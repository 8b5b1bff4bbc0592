//! The filter configuration (`version: 1`): one JSON document with the token's
//! place, the issuers, the policy (domains, purposes, partners, routes), secrets by
//! reference, recipients' public keys, limits and error settings. It is compiled once
//! at load into a validated [`Config`]; a configuration that fails to compile never
//! runs, and every error names its JSON location and the reason.
//!
//! Secret keys never sit in the document: `secrets` names environment variables,
//! which Envoy fills from `vm_config.environment_variables` (the platform's secret
//! store). The compiler reads them through a function it is given.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

use crate::audit;
use crate::policy::{self, Policy, RawPolicy};
use crate::ratelimit;
use crate::redact::{KeyRing, RecipientKey};
use crate::token::{self, Issuer};

/// One reason a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// JSON location, e.g. `$.routes[1].path`.
    pub location: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.reason)
    }
}

/// All the reasons a configuration was refused, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Raw form: exactly what users write.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    version: u32,
    #[serde(default)]
    token: RawToken,
    issuers: Value,
    #[serde(default)]
    secrets: RawSecrets,
    #[serde(default)]
    recipients: BTreeMap<String, Value>,
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default)]
    purposes: Vec<String>,
    #[serde(default)]
    partners: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    purpose: policy::RawPurpose,
    #[serde(default)]
    provenance: policy::RawProvenance,
    routes: Vec<policy::RawRoute>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    errors: RawErrors,
    #[serde(default)]
    rate_limits: RawRateLimits,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    response_mode: ResponseMode,
}

/// `{"requests": 20, "seconds": 1, "burst": 40}`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    requests: u32,
    #[serde(default = "one")]
    seconds: u32,
    #[serde(default)]
    burst: Option<u32>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLockout {
    refusals: u32,
    window_seconds: u32,
    lock_seconds: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimits {
    #[serde(default)]
    caller: Option<RawLimit>,
    #[serde(default)]
    grantee: Option<RawLimit>,
    #[serde(default)]
    subject: Option<RawLimit>,
    #[serde(default)]
    lockout: Option<RawLockout>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAudit {
    log: bool,
    checkpoint_seconds: u64,
    collector: Option<RawCollector>,
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            log: true,
            checkpoint_seconds: 300,
            collector: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCollector {
    cluster: String,
    authority: String,
    path: String,
    #[serde(default)]
    max_batch_records: Option<usize>,
    #[serde(default)]
    max_batch_age_ms: Option<u64>,
    #[serde(default)]
    max_queue_records: Option<usize>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawToken {
    header: String,
    scheme: Option<String>,
    forward: bool,
}

impl Default for RawToken {
    fn default() -> Self {
        Self {
            header: "authorization".into(),
            scheme: Some("Bearer".into()),
            forward: false,
        }
    }
}

/// A secret by reference: `{"env": "NAME"}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretRef {
    env: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    #[serde(default)]
    pseudonym_keys: Option<SecretRef>,
    #[serde(default)]
    audit_key: Option<SecretRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_body_bytes: usize,
    max_depth: usize,
    max_token_bytes: usize,
    token_cache_entries: usize,
    max_wait_ms: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
            max_token_bytes: token::DEFAULT_MAX_TOKEN_BYTES,
            token_cache_entries: token::DEFAULT_CACHE_CAPACITY,
            max_wait_ms: 3_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawErrors {
    type_base: String,
    remove_response_headers: Vec<String>,
}

impl Default for RawErrors {
    fn default() -> Self {
        Self {
            type_base: DEFAULT_PROBLEM_TYPE_BASE.into(),
            remove_response_headers: DEFAULT_REMOVED_RESPONSE_HEADERS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------
// Compiled form.

/// 1 MiB. Envoy configs that load the plugin raise Envoy's own buffer limit above
/// this, so the plugin, not Envoy, refuses an oversized body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_DEPTH: usize = 64;
pub const DEFAULT_PROBLEM_TYPE_BASE: &str = "urn:consentry:problem:";
/// Upstream response headers that describe the upstream's internals.
pub const DEFAULT_REMOVED_RESPONSE_HEADERS: [&str; 5] = [
    "server",
    "x-powered-by",
    "x-aspnet-version",
    "x-aspnetmvc-version",
    "x-runtime",
];

/// How the plugin holds a protected response while it redacts the body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseMode {
    /// The response headers wait for the redacted body: `content-length` is exact
    /// and any refusal is a clean masked problem. Needs a host that delivers body
    /// callbacks while headers are paused (Envoy 1.35+ with the wasm filter's
    /// `allow_on_headers_stop_iteration: true`); elsewhere a paused response stalls.
    #[default]
    Hold,
    /// The headers go on (without `content-length` and body digests) once they
    /// show nothing to withhold; the body is still held whole, redacted and then
    /// released. A body found unsafe after the headers left resets the stream, so
    /// a withheld answer never completes as a success. For hosts that cannot hold
    /// response headers: Istio's `WasmPlugin`, Envoy Gateway, Envoy without the flag.
    LateCommit,
}

impl ResponseMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseMode::Hold => "hold",
            ResponseMode::LateCommit => "late_commit",
        }
    }

    /// One line on what the mode means and which hosts it needs.
    pub fn describe(self) -> &'static str {
        match self {
            ResponseMode::Hold => {
                concat!(
                    "response mode hold: response headers wait for the redacted body and ",
                    "every refusal is a clean problem; needs Envoy 1.35+ with the wasm ",
                    "filter's allow_on_headers_stop_iteration: true (elsewhere protected ",
                    "responses stall: use \"response_mode\": \"late_commit\")"
                )
            }
            ResponseMode::LateCommit => {
                concat!(
                    "response mode late_commit: response headers go before the body is ",
                    "redacted (no content-length); a body found unsafe afterwards resets ",
                    "the stream; runs on any proxy-wasm host (Istio, Envoy Gateway)"
                )
            }
        }
    }
}

#[derive(Debug)]
pub struct Config {
    pub token: TokenLocation,
    pub issuers: Vec<Issuer>,
    pub policy: Policy,
    pub pseudonym_keys: KeyRing,
    /// The audit HMAC key (id, secret), when configured.
    pub audit_key: Option<(String, Vec<u8>)>,
    /// Public keys that `encrypt` actions encrypt to, by grantee.
    pub recipients: BTreeMap<String, RecipientKey>,
    pub limits: Limits,
    pub problem_type_base: String,
    pub remove_response_headers: Vec<String>,
    pub rate_limits: RateLimits,
    pub audit: AuditSettings,
    pub response_mode: ResponseMode,
}

/// Token buckets (shared by the proxy's workers) and the lockout after refusals.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateLimits {
    /// Per caller identity (mTLS identity, else source address), before the token.
    pub caller: Option<ratelimit::Limit>,
    /// Per grantee of a verified consent.
    pub grantee: Option<ratelimit::Limit>,
    /// Per data subject of a verified consent.
    pub subject: Option<ratelimit::Limit>,
    pub lockout: Option<ratelimit::LockoutPolicy>,
}

#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Emit one record per decision to the proxy's log.
    pub log: bool,
    /// A checkpoint record this often (0: never), so a silent chain shows.
    pub checkpoint_seconds: u64,
    /// Ship records to an HTTP collector through the proxy.
    pub collector: Option<audit::ShipperConfig>,
}

#[derive(Debug, Clone)]
pub struct TokenLocation {
    /// Lower-case header name.
    pub header: String,
    /// Authentication scheme, compared case-insensitively; `None` = the raw value.
    pub scheme: Option<String>,
    /// Whether the token goes on to the upstream (default: it stays here).
    pub forward: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_depth: usize,
    pub max_token_bytes: usize,
    pub token_cache_entries: usize,
    /// How long a request may wait for keys or a status list before it is refused
    /// with 503.
    pub max_wait_ms: u64,
}

/// Reads an environment variable of the VM (Envoy's
/// `vm_config.environment_variables`).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Config {
    /// Parses and validates a configuration document (JSON). `env` resolves the
    /// secrets' environment variables.
    pub fn from_json(bytes: &[u8], env: EnvLookup<'_>) -> Result<Config, ConfigErrors> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let location = json_location(&e.path().to_string());
            ConfigErrors(vec![ConfigError {
                location,
                reason: strip_position(&e.into_inner().to_string()),
            }])
        })?;
        compile(raw, env)
    }
}

fn json_location(serde_path: &str) -> String {
    if serde_path == "." || serde_path.is_empty() {
        "$".into()
    } else if serde_path.starts_with('[') {
        format!("${serde_path}")
    } else {
        format!("$.{serde_path}")
    }
}

/// serde_json appends " at line X column Y"; the JSON location already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message.get(..i).unwrap_or(message).to_owned(),
        None => message.to_owned(),
    }
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `kid:base64url,kid:base64url`, newest first.
fn key_ring(text: &str) -> Result<KeyRing, String> {
    let mut ring = KeyRing::new();
    for (i, item) in text.split(',').map(str::trim).enumerate() {
        let Some((kid, b64)) = item.split_once(':') else {
            return Err(format!(
                "entry {} is not KEY_ID:BASE64URL_SECRET (entries are separated by ',', newest first)",
                i + 1
            ));
        };
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64.trim_end_matches('='))
            .map_err(|_| format!("entry {} ('{kid}'): the secret is not base64url", i + 1))?;
        ring = ring
            .with_key(kid, &secret)
            .map_err(|e| format!("entry {} ('{kid}'): {e}", i + 1))?;
    }
    Ok(ring)
}

fn compile(raw: RawConfig, env: EnvLookup<'_>) -> Result<Config, ConfigErrors> {
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut err = |location: String, reason: String| errors.push(ConfigError { location, reason });

    if raw.version != 1 {
        err(
            "$.version".into(),
            format!(
                "unsupported version {}; this plugin reads version 1",
                raw.version
            ),
        );
    }
    let header = raw.token.header.to_ascii_lowercase();
    if header.is_empty() || !header.bytes().all(is_token_char) {
        err(
            "$.token.header".into(),
            "must be an HTTP header name".into(),
        );
    }
    if let Some(s) = &raw.token.scheme
        && (s.is_empty() || !s.bytes().all(is_token_char))
    {
        err(
            "$.token.scheme".into(),
            "must be an authentication scheme such as \"Bearer\"".into(),
        );
    }
    let l = &raw.limits;
    if l.max_body_bytes == 0 {
        err(
            "$.limits.max_body_bytes".into(),
            "must be greater than 0".into(),
        );
    }
    if l.max_depth == 0 || l.max_depth > 512 {
        err(
            "$.limits.max_depth".into(),
            "must be between 1 and 512".into(),
        );
    }
    if l.max_token_bytes < 256 || l.max_token_bytes > 65_536 {
        err(
            "$.limits.max_token_bytes".into(),
            "must be between 256 and 65536".into(),
        );
    }
    if l.token_cache_entries == 0 {
        err(
            "$.limits.token_cache_entries".into(),
            "must be greater than 0".into(),
        );
    }
    if l.max_wait_ms == 0 || l.max_wait_ms > 60_000 {
        err(
            "$.limits.max_wait_ms".into(),
            "must be between 1 and 60000".into(),
        );
    }

    let issuers = match token::compile_issuers(&raw.issuers, "$.issuers") {
        Ok(list) if list.is_empty() => {
            err(
                "$.issuers".into(),
                "list at least one issuer: without one no consent token can be accepted".into(),
            );
            Vec::new()
        }
        Ok(list) => list,
        Err(problems) => {
            for (location, reason) in problems {
                err(location, reason);
            }
            Vec::new()
        }
    };

    let secret = |r: &Option<SecretRef>, at: &str, err: &mut dyn FnMut(String, String)| {
        let r = r.as_ref()?;
        match env(&r.env) {
            Some(v) if !v.trim().is_empty() => Some(v),
            _ => {
                err(
                    format!("$.secrets.{at}.env"),
                    format!(
                        "the environment variable {} is not set for the VM (Envoy: vm_config.environment_variables)",
                        r.env
                    ),
                );
                None
            }
        }
    };
    let pseudonym_keys = match secret(&raw.secrets.pseudonym_keys, "pseudonym_keys", &mut err) {
        Some(text) => match key_ring(&text) {
            Ok(ring) => ring,
            Err(e) => {
                // The message names the entry, never the secret.
                err(
                    "$.secrets.pseudonym_keys.env".into(),
                    format!(
                        "{}: {e}",
                        raw.secrets
                            .pseudonym_keys
                            .as_ref()
                            .map_or("", |r| r.env.as_str())
                    ),
                );
                KeyRing::new()
            }
        },
        None => KeyRing::new(),
    };
    let audit_key = secret(&raw.secrets.audit_key, "audit_key", &mut err).and_then(|text| {
        match key_ring(&text) {
            Ok(ring) => ring.newest().map(|(k, s)| (k.to_owned(), s.to_vec())),
            Err(e) => {
                err("$.secrets.audit_key.env".into(), e);
                None
            }
        }
    });

    let mut recipients = BTreeMap::new();
    for (grantee, jwk) in &raw.recipients {
        match RecipientKey::from_jwk(jwk) {
            Ok(k) => {
                recipients.insert(grantee.clone(), k);
            }
            Err(e) => err(
                format!("$.recipients.{grantee}"),
                format!("not a usable P-256 encryption key: {e}"),
            ),
        }
    }

    let newest = pseudonym_keys
        .newest()
        .map_or(policy::DEFAULT_PSEUDONYM_KEY, |(k, _)| k)
        .to_owned();
    let raw_policy = RawPolicy {
        domains: raw.domains,
        purposes: raw.purposes,
        partners: raw.partners,
        purpose: raw.purpose,
        provenance: raw.provenance,
        routes: raw.routes,
    };
    let policy = match Policy::compile(raw_policy, &newest) {
        Ok(p) => Some(p),
        Err(problems) => {
            for (location, reason) in problems {
                err(location, reason);
            }
            None
        }
    };
    if let Some(p) = &policy {
        for route in &p.routes {
            for (fi, field) in route.fields.iter().enumerate() {
                if let crate::redact::FieldAction::Pseudonymise { key_id } = &field.action
                    && pseudonym_keys.get(key_id).is_none()
                {
                    err(
                        format!("$.routes[{}].response.fields[{fi}].action", route.index),
                        format!(
                            "pseudonymise needs the key '{key_id}': configure $.secrets.pseudonym_keys"
                        ),
                    );
                }
            }
            for (k, rule) in route.rules.iter().enumerate() {
                for a in rule.actions.values() {
                    if let crate::redact::FieldAction::Pseudonymise { key_id } = a
                        && pseudonym_keys.get(key_id).is_none()
                    {
                        err(
                            format!("$.routes[{}].rules[{k}].actions", route.index),
                            format!(
                                "pseudonymise needs the key '{key_id}': configure $.secrets.pseudonym_keys"
                            ),
                        );
                    }
                }
            }
        }
    }
    // Encryption is to the grantee's key: a rule that can encrypt for a grantee
    // with no key would withhold every response it allows.
    if let Some(p) = &policy {
        let is_encrypt = |a: &crate::redact::FieldAction| *a == crate::redact::FieldAction::Encrypt;
        for route in &p.routes {
            let field_encrypts = route.fields.iter().any(|f| is_encrypt(&f.action));
            for (k, rule) in route.rules.iter().enumerate() {
                let rule_encrypts = rule.actions.values().any(is_encrypt)
                    || rule.field_actions.values().any(is_encrypt);
                if rule.effect != policy::Effect::Allow || !(field_encrypts || rule_encrypts) {
                    continue;
                }
                let at = format!("$.routes[{}].rules[{k}]", route.index);
                if rule.grantees.is_empty() && recipients.is_empty() {
                    err(
                        at,
                        "fields are encrypted to the grantee's key, but $.recipients has no key"
                            .into(),
                    );
                } else if let Some(g) = rule.grantees.iter().find(|g| !recipients.contains_key(*g))
                {
                    err(
                        at,
                        format!(
                            "fields are encrypted to the grantee's key, but $.recipients has none for '{g}'"
                        ),
                    );
                }
            }
        }
    }
    let mut removed = Vec::new();
    for (i, h) in raw.errors.remove_response_headers.iter().enumerate() {
        let lower = h.to_ascii_lowercase();
        if lower.is_empty() || !lower.bytes().all(is_token_char) || lower.starts_with(':') {
            err(
                format!("$.errors.remove_response_headers[{i}]"),
                "must be a header name".into(),
            );
        }
        removed.push(lower);
    }

    let mut limit = |raw: &Option<RawLimit>, at: &str| {
        raw.and_then(|l| {
            let made = ratelimit::Limit::new(l.requests, l.seconds, l.burst.unwrap_or(l.requests));
            if made.is_none() {
                err(
                    format!("$.rate_limits.{at}"),
                    "requests, seconds and burst must all be greater than 0".into(),
                );
            }
            made
        })
    };
    let rate_limits = RateLimits {
        caller: limit(&raw.rate_limits.caller, "caller"),
        grantee: limit(&raw.rate_limits.grantee, "grantee"),
        subject: limit(&raw.rate_limits.subject, "subject"),
        lockout: raw.rate_limits.lockout.and_then(|l| {
            if l.refusals == 0 || l.window_seconds == 0 || l.lock_seconds == 0 {
                err(
                    "$.rate_limits.lockout".into(),
                    "refusals, window_seconds and lock_seconds must all be greater than 0".into(),
                );
                return None;
            }
            Some(ratelimit::LockoutPolicy {
                refusals: l.refusals,
                window_seconds: l.window_seconds,
                lock_seconds: l.lock_seconds,
            })
        }),
    };
    let collector = raw.audit.collector.as_ref().map(|c| {
        if c.cluster.is_empty() || c.authority.is_empty() || !c.path.starts_with('/') {
            err(
                "$.audit.collector".into(),
                "needs a cluster, an authority and a path starting with '/'".into(),
            );
        }
        let mut s = audit::ShipperConfig::new(&c.cluster, &c.authority, &c.path);
        let mut at_least_one = |value: Option<usize>, name: &str| {
            if value == Some(0) {
                err(
                    format!("$.audit.collector.{name}"),
                    "must be greater than 0".into(),
                );
            }
            value
        };
        if let Some(n) = at_least_one(c.max_batch_records, "max_batch_records") {
            s.max_batch_records = n;
        }
        if let Some(n) = at_least_one(c.max_queue_records, "max_queue_records") {
            s.max_queue_records = n;
        }
        if let Some(ms) = c.max_batch_age_ms {
            s.max_batch_age = std::time::Duration::from_millis(ms);
        }
        if let Some(ms) = c.timeout_ms {
            if !(1..=60_000).contains(&ms) {
                err(
                    "$.audit.collector.timeout_ms".into(),
                    format!("{ms} is out of range: 1 to 60000 milliseconds"),
                );
            }
            s.timeout = std::time::Duration::from_millis(ms);
        }
        s
    });
    let audit = AuditSettings {
        log: raw.audit.log,
        checkpoint_seconds: raw.audit.checkpoint_seconds,
        collector,
    };

    let (Some(policy), true) = (policy, errors.is_empty()) else {
        return Err(ConfigErrors(errors));
    };
    Ok(Config {
        token: TokenLocation {
            header,
            scheme: raw.token.scheme,
            forward: raw.token.forward,
        },
        issuers,
        policy,
        pseudonym_keys,
        audit_key,
        recipients,
        limits: Limits {
            max_body_bytes: raw.limits.max_body_bytes,
            max_depth: raw.limits.max_depth,
            max_token_bytes: raw.limits.max_token_bytes,
            token_cache_entries: raw.limits.token_cache_entries,
            max_wait_ms: raw.limits.max_wait_ms,
        },
        problem_type_base: raw.errors.type_base,
        remove_response_headers: removed,
        rate_limits,
        audit,
        response_mode: raw.response_mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    fn minimal(extra: &str) -> String {
        format!(
            r#"{{"version":1,
                "issuers":[{{"issuer":"https://consent.example","algorithms":["ES256"],"audiences":["api"],"keys":{{"inline":{JWKS}}}}}],
                "domains":["billing"],"purposes":["claims"],
                "routes":[{{"name":"r","path":"/a/{{id}}","response":{{"fields":[{{"path":"$.b","domain":"billing"}}]}},
                           "rules":[{{"name":"x","purposes":["claims"],"release":["billing"]}}]}}]
                {extra}}}"#
        )
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn errors(json: &str, env: EnvLookup<'_>) -> Vec<String> {
        Config::from_json(json.as_bytes(), env)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn a_minimal_configuration_compiles_with_defaults() {
        let c = Config::from_json(minimal("").as_bytes(), &no_env).unwrap();
        assert_eq!(c.token.header, "authorization");
        assert!(!c.token.forward);
        assert_eq!(c.limits.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(c.issuers.len(), 1);
        assert!(c.policy.route_for("GET", "/a/1").is_some());
        assert!(
            c.remove_response_headers
                .contains(&"x-powered-by".to_owned())
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_location() {
        let e = errors(&minimal(r#","limts":{}"#), &no_env);
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("$.limts: unknown field `limts`"), "{e:?}");
        let e = errors(
            r#"{"version":1,"issuers":[],"routes":[{"name":"r","path":"/a","respnse":{}}]}"#,
            &no_env,
        );
        assert!(
            e[0].starts_with("$.routes[0].respnse: unknown field"),
            "{e:?}"
        );
    }

    #[test]
    fn secrets_come_from_the_environment_and_are_never_echoed() {
        let with_keys = minimal(r#","secrets":{"pseudonym_keys":{"env":"PS_KEYS"}}"#);
        let e = errors(&with_keys, &no_env);
        assert!(e[0].contains("PS_KEYS is not set"), "{e:?}");
        let short = |_: &str| Some("k1:c2hvcnQ".to_owned());
        let e = errors(&with_keys, &short);
        assert!(e[0].contains("entry 1 ('k1')"), "{e:?}");
        assert!(!e[0].contains("c2hvcnQ"), "the secret leaked: {e:?}");
        let good = |_: &str| {
            Some(format!(
                "k2:{},k1:{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([8u8; 32])
            ))
        };
        let c = Config::from_json(with_keys.as_bytes(), &good).unwrap();
        assert_eq!(c.pseudonym_keys.newest().map(|(k, _)| k), Some("k2"));
        assert!(c.pseudonym_keys.get("k1").is_some());
    }

    #[test]
    fn pseudonymising_without_a_key_is_a_load_error() {
        let json = minimal("").replace(
            r#"{"path":"$.b","domain":"billing"}"#,
            r#"{"path":"$.b","domain":"billing","action":"pseudonymise"}"#,
        );
        let e = errors(&json, &no_env);
        assert!(
            e.iter().any(|m| m.contains("pseudonymise needs the key")),
            "{e:?}"
        );
    }

    #[test]
    fn load_errors_found_after_routes_are_ordered_name_the_document_index() {
        // Two routes; the second is more specific and is sorted first.
        let json = minimal("").replace(
            r#""routes":["#,
            r#""routes":[{"name":"s","path":"/a/b/{id}","response":{"fields":[{"path":"$.c","domain":"billing","action":{"pseudonymise":{"key":"k9"}}}]},
                          "rules":[{"name":"y","purposes":["claims"],"release":["billing"]}]},"#,
        );
        let e = errors(&json, &no_env);
        assert!(
            e.iter().any(|m| m.starts_with(
                "$.routes[0].response.fields[0].action: pseudonymise needs the key 'k9'"
            )),
            "{e:?}"
        );
    }

    #[test]
    fn malformed_names_and_impossible_settings_are_refused_at_load() {
        let field = r#"{"path":"$.b","domain":"billing"}"#;
        let with_field = |f: &str| minimal("").replace(field, f);
        let cases = [
            (
                with_field(
                    r#"{"path":"$.b","domain":"billing","action":{"pseudonymise":{"key":"dev 1"}}}"#,
                ),
                "'dev 1' is not a key id",
            ),
            (
                with_field(r#"{"path":"$.b","domain":"billing","action":{"mask":{},"hash":{}}}"#),
                "an action object has exactly one member",
            ),
            (
                minimal("").replace(
                    r#""release":["billing"]"#,
                    r#""release":["billing"],"subject":{"is":"id","acts_for":"id"}"#,
                ),
                "subject has exactly one member",
            ),
            (
                minimal("").replace(
                    r#""rules":"#,
                    r#""request":{"by_purpose":{"claims":{"headers":["X Bad"]}}},"rules":"#,
                ),
                "$.routes[0].request.by_purpose.claims.headers[0]: must be a lower-case header name",
            ),
            (
                minimal("").replace(
                    r#""response":{"#,
                    r#""response":{"content_types":["application/x-ndjson"],"#,
                ),
                "cannot be redacted",
            ),
            (
                minimal("").replace(
                    r#""response":{"#,
                    r#""response":{"content_types":["Application/JSON"],"#,
                ),
                "cannot be redacted",
            ),
            (
                minimal("").replace(
                    r#""release":["billing"]"#,
                    r#""release":["billing"],"hours":{"from":"08:00","to":"18:00","days":[]}"#,
                ),
                "hours.days: no day is listed",
            ),
            (
                minimal(
                    r#","audit":{"collector":{"cluster":"c","authority":"a","path":"/p","timeout_ms":0}}"#,
                ),
                "$.audit.collector.timeout_ms: 0 is out of range",
            ),
            (
                minimal(
                    r#","audit":{"collector":{"cluster":"c","authority":"a","path":"/p","max_batch_records":0}}"#,
                ),
                "$.audit.collector.max_batch_records: must be greater than 0",
            ),
            (
                with_field(
                    r#"{"path":"$.b","domain":"billing"},{"path":"$.c","domain":"contact","action":"encrypt"}"#,
                )
                .replace(r#""domains":["billing"]"#, r#""domains":["billing","contact"]"#),
                "$.recipients has no key",
            ),
        ];
        for (json, needle) in cases {
            let e = errors(&json, &no_env);
            assert!(e.iter().any(|m| m.contains(needle)), "{needle}: {e:?}");
        }
        // The structured JSON types are fine.
        let ok = minimal("").replace(
            r#""response":{"#,
            r#""response":{"content_types":["application/json","application/fhir+json"],"#,
        );
        assert!(Config::from_json(ok.as_bytes(), &no_env).is_ok());
    }

    #[test]
    fn every_section_reports_its_errors_at_once() {
        let json = r#"{"version":2,"token":{"header":"bad header"},"issuers":[{"issuer":"x","algorithms":["none"],"audiences":[]}],
            "domains":["billing"],"purposes":["claims"],"limits":{"max_depth":0},
            "recipients":{"lab":{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}},
            "routes":[{"name":"r","path":"nope","rules":[{"name":"x","release":["billing"]}]}]}"#;
        let e = errors(json, &no_env).join("\n");
        for needle in [
            "$.version: unsupported version 2",
            "$.token.header: must be an HTTP header name",
            "$.issuers[0]",
            "$.limits.max_depth",
            "$.recipients.lab",
            "$.routes[0].path: bad path template",
        ] {
            assert!(e.contains(needle), "missing {needle} in\n{e}");
        }
    }
}
