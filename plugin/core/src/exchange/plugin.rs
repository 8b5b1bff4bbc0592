//! The compiled configuration and the worker's caches. Single-threaded, like a
//! proxy-wasm VM, and owned by its [`super::Filter`]: every method takes `&mut self`,
//! so there is one borrow per host callback and none can be taken twice.

use std::collections::HashMap;
use std::time::Duration;

use crate::audit::{self, AuditKey, AuditShipper, AuditTrail};
use crate::config::{Config, ConfigErrors, EnvLookup};
use crate::host::{Host, LogLevel, unix_millis};
use crate::policy::Decision;
use crate::token::{StatusList, TokenCache, Verifier};

use super::fetch::{Calls, Resource};
use super::record::action_name;

/// The prefix of the debug line that explains a decision.
pub const EXPLAIN_MARKER: &str = "consentry-explain ";

/// The compiled configuration and the worker's caches.
pub struct Plugin {
    pub(crate) config: Config,
    pub(crate) verifier: Verifier,
    pub(crate) tokens: TokenCache,
    /// Status lists by uri.
    pub(crate) lists: HashMap<String, StatusList>,
    pub(crate) calls: Calls,
    /// When each issuer's JWKS was last fetched (ms), for the refresh timer.
    pub(crate) jwks_fetched: HashMap<String, u64>,
    /// This worker's audit chain, made at start.
    pub(crate) trail: Option<AuditTrail>,
    pub(crate) shipper: Option<AuditShipper>,
    pub(crate) last_checkpoint_ms: u64,
}

impl Plugin {
    /// Compiles the filter configuration; a refused configuration never runs.
    pub fn from_json(bytes: &[u8], env: EnvLookup<'_>) -> Result<Self, ConfigErrors> {
        Config::from_json(bytes, env).map(Self::new)
    }

    pub fn new(config: Config) -> Self {
        let verifier = Verifier::new(config.issuers.clone())
            .with_max_token_bytes(config.limits.max_token_bytes);
        let tokens = TokenCache::new(config.limits.token_cache_entries)
            .keeping_claims(config.policy.reads_token_claims());
        Self {
            config,
            verifier,
            tokens,
            lists: HashMap::new(),
            calls: Calls::default(),
            jwks_fetched: HashMap::new(),
            trail: None,
            shipper: None,
            last_checkpoint_ms: 0,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Starts what the plugin needs before the first request: this worker's audit
    /// chain and remote keys. Without randomness the chain id comes from the
    /// clock: it must be unique, not secret (the chain's key is what protects it).
    pub fn start(&mut self, host: &mut dyn Host) {
        let now = host.now().map(unix_millis).unwrap_or(0);
        let mut id = [0u8; 8];
        if host.fill_random(&mut id).is_err() {
            id = now.to_le_bytes();
        }
        let key = self
            .config
            .audit_key
            .as_ref()
            .map(|(kid, secret)| AuditKey {
                kid: kid.clone(),
                secret: secret.clone(),
            });
        self.trail = Some(AuditTrail::new(audit::chain_id_from_random(id), key));
        self.shipper = self.config.audit.collector.clone().map(AuditShipper::new);
        self.last_checkpoint_ms = now;
        for issuer in self.remote_issuers() {
            self.fetch(&Resource::Keys { issuer }, host);
        }
    }

    /// The timer: refreshes remote keys when due, forgets calls that never came
    /// back, writes the audit checkpoint and ships records. Returns the resources
    /// whose fetch failed at once (their waiters are decided again).
    pub fn on_tick(&mut self, host: &mut dyn Host) -> Vec<Resource> {
        let Ok(now_t) = host.now() else {
            return Vec::new();
        };
        let now = unix_millis(now_t);
        let mut failed = Vec::new();
        let timeouts: Vec<(u32, u64)> = self
            .calls
            .iter()
            .map(|(token, res, _)| (token, self.timeout_ms(res)))
            .collect();
        for res in self.calls.expire(now, &timeouts) {
            if !self.calls.in_flight(&res) {
                failed.push(res);
            }
        }
        for issuer in self.remote_issuers() {
            let period = self
                .verifier
                .issuer(&issuer)
                .and_then(|i| i.remote_keys.as_ref().map(|r| r.refresh_seconds))
                .unwrap_or(300)
                .saturating_mul(1000);
            let last = self.jwks_fetched.get(&issuer).copied();
            if last.is_none_or(|t| now.saturating_sub(t) >= period) {
                let res = Resource::Keys { issuer };
                if !self.fetch(&res, host) {
                    failed.push(res);
                }
            }
        }
        let every = self.config.audit.checkpoint_seconds.saturating_mul(1000);
        if every > 0 && now.saturating_sub(self.last_checkpoint_ms) >= every {
            self.last_checkpoint_ms = now;
            let line = self
                .trail
                .as_mut()
                .map(|t| t.checkpoint(now_t, Duration::from_millis(every)));
            if let Some(line) = line {
                let _ = self.emit(&line, host);
            }
        }
        self.ship(host);
        failed
    }

    pub(crate) fn remote_issuers(&self) -> Vec<String> {
        self.config
            .issuers
            .iter()
            .filter(|i| i.remote_keys.is_some())
            .map(|i| i.issuer.clone())
            .collect()
    }

    /// A debug line that explains a decision (`consentry explain` reads it): route,
    /// rule, reason, purpose, released domains, and the action for every classified
    /// field. Names only, never a value.
    pub(crate) fn explain(&self, d: &Decision, route_index: usize, host: &mut dyn Host) {
        let policy = &self.config.policy;
        let Some(route) = policy.routes.get(route_index) else {
            return;
        };
        let plan = d
            .rule
            .filter(|_| d.allow)
            .and_then(|k| policy.plan(route_index, k, d.released).ok());
        let fields: Vec<serde_json::Value> = match &plan {
            Some(p) => p
                .rules()
                .iter()
                .zip(route.fields.iter())
                .map(|((_, a), f)| serde_json::json!([f.text, action_name(a)]))
                .collect(),
            None => Vec::new(),
        };
        let line = serde_json::json!({
            "route": route.name,
            "rule": d.rule.and_then(|k| route.rules.get(k)).map(|r| r.name.clone()),
            "decision": if d.allow { "allow" } else { "deny" },
            "reason": d.reason.as_str(),
            "purpose": d.purpose,
            "released": policy.domain_names(d.released),
            "unclassified": match route.unclassified {
                crate::redact::Unclassified::Remove => "remove",
                crate::redact::Unclassified::Keep => "release",
            },
            "fields": fields,
        });
        let _ = host.log(LogLevel::Debug, &format!("{EXPLAIN_MARKER}{line}"));
    }
}
