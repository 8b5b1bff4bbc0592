//! The request's way through the plugin, as plain functions of what the proxy saw.
//!
//! ```text
//! request headers ─► token (one, in its place) ─► verify (cache ▸ signature ▸ claims)
//!   ─► revocation (deny-list ▸ status list) ─► binding ─► route ─► policy decision
//!   ─► refuse: masked problem          allow: edits (token and provenance stripped,
//!                                       provenance added, query/headers minimised)
//! response headers ─► hold ─► body complete ─► redact by the decision's plan
//!   ─► fix content-length ─► release   (5xx, unreadable or unexpected ─► masked 502)
//! ```
//!
//! [`Plugin`] holds the compiled configuration and the worker's caches (verified
//! tokens, issuer keys, status lists, plans). It is single-threaded, like a proxy-wasm
//! VM, so its caches use `RefCell`. Keys and status lists are fetched through the
//! proxy; a request that needs one that is not there yet is told to wait
//! ([`RequestAction::Wait`]) and is decided again when it arrives, or refused with 503
//! once `limits.max_wait_ms` has passed.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::audit::{self, AuditEntry, AuditKey, AuditShipper, AuditTrail, FieldReport, Redaction};
use crate::config::{Config, ConfigErrors, EnvLookup};
use crate::host::{Host, LogLevel, OutgoingCall, unix_seconds};
use crate::http::{HeaderEdits, Headers, LocalReply, RequestHead};
use crate::policy::{Decision, Facts, Route, STANDARD_RESPONSE_HEADERS, cidr};
use crate::problem::{self, Code};
use crate::ratelimit::{self, RateKey};
use crate::redact::{self, Plan, RedactContext};
use crate::token::{
    Consent, Peer, StatusList, TokenCache, TokenError, Verifier, spiffe_id_from_pem,
};

/// Something the plugin fetches through the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    /// An issuer's remote JWKS.
    Keys { issuer: String },
    /// A Token Status List.
    StatusList { issuer: String, uri: String },
    /// A batch of audit records on its way to the collector (nothing waits on it).
    AuditBatch,
}

/// What to do with the request once its headers are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestAction {
    /// Refuse: answer with this reply, send nothing upstream.
    Reply(LocalReply),
    /// Send the request upstream after these header edits. With `hold_body`, the
    /// headers wait for the whole request body, which goes through
    /// [`Plugin::on_request_body`] first.
    Forward { edits: HeaderEdits, hold_body: bool },
    /// Pause: decide again when this resource has been fetched (or failed).
    Wait(Resource),
}

/// What to do with the response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseAction {
    /// Hold the headers until the whole body is in and redacted.
    Hold,
    /// Let the response through (after these edits).
    Pass(HeaderEdits),
    /// Replace the upstream's answer with this reply.
    Reply(LocalReply),
}

/// What to do with a body (or its trailers) so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyAction {
    /// Not ours to touch: let it move on unchanged.
    Pass,
    /// Keep buffering; release nothing.
    Buffer,
    /// Release this body in place of the original, with these header edits.
    Release { body: Vec<u8>, headers: HeaderEdits },
    /// Withhold the original; send this reply instead.
    Reply(LocalReply),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The plugin refused; its own reply is on its way back through the filter.
    Refused,
    /// Waiting for the request body, to minimise it.
    RequestBody,
    /// Forwarded; the response will be redacted with the decision's plan.
    Forwarded,
    /// The response is being buffered for redaction.
    Holding,
    /// Nothing more to do for this stream.
    Done,
}

/// What the audit trail and the metrics need to know about one exchange. Never a
/// token, a key or a value: names, codes and ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// The problem code sent, if any.
    pub code: Option<Code>,
    /// Why (internal): a token error, a policy reason, or a response reason.
    pub reason: &'static str,
    pub route: Option<String>,
    pub rule: Option<String>,
    pub purpose: Option<String>,
    pub consent_id: Option<String>,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    /// Whose data the subject read under a delegation (a guardian's ward).
    pub acts_for: Option<String>,
    pub grantee: Option<String>,
    /// The caller as identified before the token: SPIFFE ID, certificate or address.
    pub caller: Option<String>,
    /// Set when this refusal locked the caller out.
    pub lockout: bool,
    /// Values touched per action by the redaction.
    pub report: Option<redact::Report>,
}

/// One HTTP stream's state between its request and its response.
#[derive(Debug, Clone)]
pub struct Exchange {
    request_id: String,
    method_is_head: bool,
    stage: Stage,
    route: Option<usize>,
    plan: Option<Rc<Plan>>,
    request_purpose: Option<String>,
    /// Header edits for a held response, decided when its headers arrived.
    held_response_edits: HeaderEdits,
    outcome: Outcome,
}

/// The compiled configuration and the worker's caches.
pub struct Plugin {
    config: Config,
    verifier: RefCell<Verifier>,
    tokens: RefCell<TokenCache>,
    lists: RefCell<HashMap<String, StatusList>>,
    /// Outgoing calls in flight: token → resource, start (ms).
    calls: RefCell<HashMap<u32, (Resource, u64)>>,
    /// Refreshes nobody waits for, dispatched from the timer: the proxy-wasm SDK
    /// hands a call's answer to the context that made it, and a stream's context
    /// (with the answer) is gone once its request ends. A fetch a request waits
    /// for is dispatched from that request, which lives until the answer unless
    /// its client goes away (then [`Plugin::forget_calls`]).
    wanted: RefCell<Vec<Resource>>,
    /// When each issuer's JWKS was last fetched (ms), for the refresh timer.
    jwks_fetched: RefCell<HashMap<String, u64>>,
    /// When a fetch of each resource last failed (ms): it is not retried within
    /// [`FETCH_BACKOFF_MS`], so requests fail fast instead of refetching in a loop.
    failed: RefCell<HashMap<Resource, u64>>,
    /// This worker's audit chain, made at start.
    trail: RefCell<Option<AuditTrail>>,
    shipper: RefCell<Option<AuditShipper>>,
    last_checkpoint_ms: Cell<u64>,
}

/// Which time a request is being decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// As its headers arrive.
    First,
    /// Again, after a resource it waited for arrived (or failed); it may wait again.
    Again,
    /// Again, after waiting `limits.max_wait_ms`: a missing dependency is now a 503.
    Last,
}

/// Why a request is not allowed (yet).
enum Refusal {
    Problem(Code, &'static str),
    /// Over a limit: the reply says when to come back.
    Limited(Code, &'static str, u64),
    Wait(Resource),
}

impl From<TokenError> for Refusal {
    fn from(e: TokenError) -> Self {
        Refusal::Problem(e.code(), e.as_str())
    }
}

/// The prefix of the debug line that explains a decision.
pub const EXPLAIN_MARKER: &str = "consentry-explain ";

/// How long after a failed fetch the same resource is not fetched again.
pub const FETCH_BACKOFF_MS: u64 = 1_000;

/// The shared-data key of a status list: one fetch serves every worker.
fn shared_list_key(uri: &str) -> String {
    format!("consentry/status-list/{uri}")
}

fn millis(host: &dyn Host) -> u64 {
    host.now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
            verifier: RefCell::new(verifier),
            tokens: RefCell::new(tokens),
            lists: RefCell::new(HashMap::new()),
            calls: RefCell::new(HashMap::new()),
            wanted: RefCell::new(Vec::new()),
            jwks_fetched: RefCell::new(HashMap::new()),
            failed: RefCell::new(HashMap::new()),
            trail: RefCell::new(None),
            shipper: RefCell::new(None),
            last_checkpoint_ms: Cell::new(0),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Starts what the plugin needs before the first request: this worker's audit
    /// chain and remote keys.
    pub fn start(&self, host: &mut dyn Host) {
        let mut id = [0u8; 8];
        host.fill_random(&mut id);
        let key = self
            .config
            .audit_key
            .as_ref()
            .map(|(kid, secret)| AuditKey {
                kid: kid.clone(),
                secret: secret.clone(),
            });
        *self.trail.borrow_mut() = Some(AuditTrail::new(audit::chain_id_from_random(id), key));
        *self.shipper.borrow_mut() = self.config.audit.collector.clone().map(AuditShipper::new);
        self.last_checkpoint_ms.set(millis(host));
        for issuer in self.remote_issuers() {
            self.fetch(&Resource::Keys { issuer }, host);
        }
    }

    /// Whether refreshes wait for the timer: the proxy should fire it at once
    /// (see [`Plugin::on_tick`]).
    pub fn has_wanted_calls(&self) -> bool {
        !self.wanted.borrow().is_empty()
    }

    /// The stream that dispatched these calls ended before their answers: they
    /// will never arrive. What they fetched is fetched again from the timer, so
    /// other requests waiting for it keep waiting for an answer that will come.
    pub fn forget_calls(&self, tokens: &[u32]) {
        let lost: Vec<Resource> = {
            let mut calls = self.calls.borrow_mut();
            tokens
                .iter()
                .filter_map(|t| calls.remove(t))
                .map(|(res, _)| res)
                .collect()
        };
        for res in lost {
            if !self.in_flight(&res) {
                self.wanted.borrow_mut().push(res);
            }
        }
    }

    /// Dispatches the wanted fetches; must run in the plugin's root context.
    /// Returns the resources whose call could not even be made: their waiters are
    /// decided again (and fail fast while the fetch backs off).
    fn dispatch_wanted(&self, host: &mut dyn Host) -> Vec<Resource> {
        let wanted = std::mem::take(&mut *self.wanted.borrow_mut());
        wanted
            .into_iter()
            .filter(|res| !self.dispatch(res, host))
            .collect()
    }

    /// The timer, in the plugin's root context: dispatches the wanted fetches,
    /// refreshes remote keys when due, and forgets calls that never came back.
    /// Returns the resources whose fetch failed at once (their waiters are
    /// decided again).
    pub fn on_tick(&self, host: &mut dyn Host) -> Vec<Resource> {
        let now = millis(host);
        let stale: Vec<u32> = self
            .calls
            .borrow()
            .iter()
            .filter(|(_, (res, started))| {
                now.saturating_sub(*started) > self.timeout_ms(res) + 1_000
            })
            .map(|(t, _)| *t)
            .collect();
        for token in stale {
            self.calls.borrow_mut().remove(&token);
        }
        for issuer in self.remote_issuers() {
            let period = self
                .verifier
                .borrow()
                .issuer(&issuer)
                .and_then(|i| i.remote_keys.as_ref().map(|r| r.refresh_seconds))
                .unwrap_or(300)
                .saturating_mul(1000);
            let last = self.jwks_fetched.borrow().get(&issuer).copied();
            if last.is_none_or(|t| now.saturating_sub(t) >= period) {
                self.fetch(&Resource::Keys { issuer }, host);
            }
        }
        let failed = self.dispatch_wanted(host);
        let every = self.config.audit.checkpoint_seconds.saturating_mul(1000);
        if every > 0 && now.saturating_sub(self.last_checkpoint_ms.get()) >= every {
            self.last_checkpoint_ms.set(now);
            let line = self
                .trail
                .borrow_mut()
                .as_mut()
                .map(|t| t.checkpoint(host.now(), Duration::from_millis(every)));
            if let Some(line) = line {
                self.emit(&line, host);
            }
        }
        self.ship(host);
        failed
    }

    /// Sends the next batch of audit records, if one is due.
    fn ship(&self, host: &mut dyn Host) {
        let call = self
            .shipper
            .borrow_mut()
            .as_mut()
            .and_then(|s| s.next_batch(host.now()));
        let Some(call) = call else {
            return;
        };
        match host.dispatch(&call) {
            Ok(token) => {
                self.calls
                    .borrow_mut()
                    .insert(token, (Resource::AuditBatch, millis(host)));
            }
            Err(_) => {
                if let Some(s) = self.shipper.borrow_mut().as_mut() {
                    s.on_response(None, host.now());
                }
                host.count("consentry.audit.ship_failed", 1);
            }
        }
    }

    /// Writes one audit line to the proxy log and queues it for the collector.
    fn emit(&self, line: &str, host: &mut dyn Host) {
        if self.config.audit.log {
            host.log(LogLevel::Info, &audit::emission(line));
        }
        if let Some(s) = self.shipper.borrow_mut().as_mut() {
            let before = s.dropped();
            s.push(line, host.now());
            if s.dropped() > before {
                host.count("consentry.audit.dropped", s.dropped() - before);
            }
        }
    }

    fn remote_issuers(&self) -> Vec<String> {
        self.config
            .issuers
            .iter()
            .filter(|i| i.remote_keys.is_some())
            .map(|i| i.issuer.clone())
            .collect()
    }

    fn timeout_ms(&self, res: &Resource) -> u64 {
        let v = self.verifier.borrow();
        match res {
            Resource::Keys { issuer } => v
                .issuer(issuer)
                .and_then(|i| i.remote_keys.as_ref().map(|r| r.timeout_ms)),
            Resource::StatusList { issuer, .. } => v
                .issuer(issuer)
                .and_then(|i| i.revocation.status_list.as_ref().map(|s| s.timeout_ms)),
            Resource::AuditBatch => self
                .config
                .audit
                .collector
                .as_ref()
                .map(|c| u64::try_from(c.timeout.as_millis()).unwrap_or(u64::MAX)),
        }
        .unwrap_or(2_000)
    }

    fn in_flight(&self, res: &Resource) -> bool {
        self.calls.borrow().values().any(|(r, _)| r == res) || self.wanted.borrow().contains(res)
    }

    /// Whether a fetch of `res` failed so recently that it is not tried again yet.
    fn backing_off(&self, res: &Resource, host: &mut dyn Host) -> bool {
        let now = millis(host);
        self.failed
            .borrow()
            .get(res)
            .is_some_and(|t| now.saturating_sub(*t) < FETCH_BACKOFF_MS)
    }

    /// Starts fetching `res` now, from the running context, unless a fetch is
    /// already under way or backing off. Returns whether a fetch is under way.
    fn fetch(&self, res: &Resource, host: &mut dyn Host) -> bool {
        if self.in_flight(res) {
            return true;
        }
        !self.backing_off(res, host) && self.dispatch(res, host)
    }

    /// Queues a refresh of `res` for the timer (see the `wanted` field).
    fn refresh_later(&self, res: &Resource, host: &mut dyn Host) {
        if !self.in_flight(res) && !self.backing_off(res, host) {
            self.wanted.borrow_mut().push(res.clone());
        }
    }

    /// The outgoing call that fetches `res`.
    fn call_for(&self, res: &Resource) -> Option<OutgoingCall> {
        {
            let v = self.verifier.borrow();
            match res {
                Resource::AuditBatch => None,
                Resource::Keys { issuer } => v
                    .issuer(issuer)
                    .and_then(|i| i.remote_keys.as_ref())
                    .map(|r| OutgoingCall {
                        cluster: r.cluster.clone(),
                        method: "GET".into(),
                        authority: r.authority.clone(),
                        path: r.path.clone(),
                        headers: vec![(
                            "accept".into(),
                            "application/jwk-set+json, application/json".into(),
                        )],
                        body: Vec::new(),
                        timeout: Duration::from_millis(r.timeout_ms),
                    }),
                Resource::StatusList { issuer, uri } => {
                    let source = v
                        .issuer(issuer)
                        .and_then(|i| i.revocation.status_list.as_ref());
                    source.and_then(|s| {
                        // The uri is under the configured https prefix (checked when the
                        // token was verified): split it into authority and path.
                        let rest = uri.strip_prefix("https://")?;
                        let (authority, path) = rest.split_once('/')?;
                        Some(OutgoingCall {
                            cluster: s.cluster.clone(),
                            method: "GET".into(),
                            authority: authority.to_owned(),
                            path: format!("/{path}"),
                            headers: vec![("accept".into(), "application/statuslist+jwt".into())],
                            body: Vec::new(),
                            timeout: Duration::from_millis(s.timeout_ms),
                        })
                    })
                }
            }
        }
    }

    /// Dispatches the call for `res`; returns whether it is in flight.
    fn dispatch(&self, res: &Resource, host: &mut dyn Host) -> bool {
        let Some(call) = self.call_for(res) else {
            return false;
        };
        let now = millis(host);
        match host.dispatch(&call) {
            Ok(token) => {
                if let Resource::Keys { issuer } = res {
                    self.jwks_fetched.borrow_mut().insert(issuer.clone(), now);
                }
                self.calls.borrow_mut().insert(token, (res.clone(), now));
                host.count(fetch_metric(res, "started"), 1);
                true
            }
            Err(_) => {
                self.failed.borrow_mut().insert(res.clone(), now);
                host.count(fetch_metric(res, "failed"), 1);
                host.log(
                    LogLevel::Error,
                    &format!(
                        "consentry: cannot call cluster '{}' (is it defined in Envoy?)",
                        call.cluster
                    ),
                );
                false
            }
        }
    }

    /// An outgoing call's answer. Returns the resource it was for (its waiters are
    /// decided again), or `None` for a call the plugin does not know.
    pub fn on_call_response(
        &self,
        token: u32,
        status: u16,
        body: &[u8],
        host: &mut dyn Host,
    ) -> Option<Resource> {
        let (res, _) = self.calls.borrow_mut().remove(&token)?;
        let now_s = u64::try_from(unix_seconds(host.now())).unwrap_or(0);
        if res == Resource::AuditBatch {
            if let Some(s) = self.shipper.borrow_mut().as_mut() {
                s.on_response(Some(status), host.now());
            }
            host.count(
                if (200..300).contains(&status) {
                    "consentry.audit.shipped"
                } else {
                    "consentry.audit.ship_failed"
                },
                1,
            );
            return None;
        }
        if !(200..300).contains(&status) {
            self.failed.borrow_mut().insert(res.clone(), millis(host));
            host.count(fetch_metric(&res, "failed"), 1);
            host.log(
                LogLevel::Warn,
                &format!(
                    "consentry: fetching {} failed with status {status}",
                    describe(&res)
                ),
            );
            return Some(res);
        }
        match &res {
            Resource::AuditBatch => {}
            Resource::Keys { issuer } => {
                let loaded = self.verifier.borrow_mut().load_remote_jwks(issuer, body);
                match loaded {
                    Ok(skipped) => {
                        host.count("consentry.fetch.keys.ok", 1);
                        for e in skipped {
                            host.log(
                                LogLevel::Warn,
                                &format!("consentry: a key of {issuer} was skipped: {e}"),
                            );
                        }
                    }
                    Err(e) => {
                        self.failed.borrow_mut().insert(res.clone(), millis(host));
                        host.count("consentry.fetch.keys.failed", 1);
                        host.log(
                            LogLevel::Warn,
                            &format!("consentry: the JWKS of {issuer} was refused: {e}"),
                        );
                    }
                }
            }
            Resource::StatusList { issuer, uri } => {
                let loaded = self
                    .verifier
                    .borrow()
                    .load_status_list(issuer, uri, body, now_s);
                match loaded {
                    Ok(list) => {
                        host.count("consentry.fetch.status_list.ok", 1);
                        let _ = host.shared_set(&shared_list_key(uri), &list.to_bytes(), None);
                        self.lists.borrow_mut().insert(uri.clone(), list);
                    }
                    Err(e) => {
                        self.failed.borrow_mut().insert(res.clone(), millis(host));
                        host.count("consentry.fetch.status_list.failed", 1);
                        host.log(
                            LogLevel::Warn,
                            &format!("consentry: {} was refused: {}", describe(&res), e.as_str()),
                        );
                    }
                }
            }
        }
        Some(res)
    }

    /// Decides a request. `attempt` says whether it is decided for the first time
    /// (limits and lockouts are applied once) and whether it may still wait.
    pub fn on_request_headers(
        &self,
        head: &RequestHead,
        host: &mut dyn Host,
        attempt: Attempt,
    ) -> (Exchange, RequestAction) {
        let may_wait = attempt != Attempt::Last;
        let request_id = problem::sanitize_request_id(head.headers.get_all("x-request-id").next())
            .unwrap_or_else(|| {
                let mut bytes = [0u8; 16];
                host.fill_random(&mut bytes);
                problem::request_id_from_random(bytes)
            });
        let mut exchange = Exchange {
            request_id,
            method_is_head: head.method == "HEAD",
            stage: Stage::Refused,
            route: None,
            plan: None,
            request_purpose: None,
            held_response_edits: HeaderEdits::default(),
            outcome: Outcome {
                caller: caller_identity(head),
                ..Outcome::default()
            },
        };
        // The per-caller limit and the lockout see each request once, not each time
        // it is decided again after waiting.
        let before = if attempt == Attempt::First {
            self.before_token(&exchange, host)
        } else {
            Ok(())
        };
        let decided = before.and_then(|()| self.decide(head, host, may_wait, &mut exchange));
        let (code, reason, retry_after) = match decided {
            Ok(action) => {
                host.count("consentry.decision.allow", 1);
                return (exchange, action);
            }
            Err(Refusal::Wait(res)) => return (exchange, RequestAction::Wait(res)),
            Err(Refusal::Problem(code, reason)) => (code, reason, None),
            Err(Refusal::Limited(code, reason, after)) => (code, reason, Some(after)),
        };
        exchange.stage = Stage::Refused;
        exchange.outcome.allowed = false;
        exchange.outcome.code = Some(code);
        exchange.outcome.reason = reason;
        host.count(&format!("consentry.decision.deny.{}", code.as_str()), 1);
        self.count_refusal(&mut exchange, code, host);
        let reply = problem::reply(
            code,
            &self.config.problem_type_base,
            &exchange.request_id,
            retry_after,
        );
        (exchange, RequestAction::Reply(reply))
    }

    /// The caller as the limits see it before any token: its mTLS identity, else its
    /// address; requests from nowhere known share one bucket.
    fn caller_key(exchange: &Exchange, scope: &'static str) -> RateKey {
        RateKey::new(
            scope,
            exchange.outcome.caller.as_deref().unwrap_or("unknown"),
        )
    }

    /// Lockout and the per-caller limit, the same for every client, before any
    /// token work.
    fn before_token(&self, exchange: &Exchange, host: &mut dyn Host) -> Result<(), Refusal> {
        let limits = &self.config.rate_limits;
        let now = host.now();
        if limits.lockout.is_some()
            && let Some(l) =
                ratelimit::locked_until(host, &Self::caller_key(exchange, "lockout"), now)
        {
            host.count("consentry.ratelimit.locked_out", 1);
            return Err(Refusal::Limited(
                Code::LockedOut,
                "locked_out",
                l.retry_after_seconds,
            ));
        }
        if let Some(limit) = &limits.caller {
            self.take(host, &Self::caller_key(exchange, "caller"), limit)?;
        }
        Ok(())
    }

    /// Takes one token from a bucket; refuses when there is none.
    fn take(
        &self,
        host: &mut dyn Host,
        key: &RateKey,
        limit: &ratelimit::Limit,
    ) -> Result<(), Refusal> {
        let now = host.now();
        match ratelimit::check(host, key, limit, now) {
            ratelimit::Decision::Allowed => Ok(()),
            ratelimit::Decision::Limited {
                retry_after_seconds,
            } => {
                host.count("consentry.ratelimit.limited", 1);
                Err(Refusal::Limited(
                    Code::RateLimited,
                    "rate_limited",
                    retry_after_seconds,
                ))
            }
            ratelimit::Decision::Unavailable => Err(Refusal::Problem(
                Code::DependencyUnavailable,
                "rate_limit_state",
            )),
        }
    }

    /// A refusal that says the caller is doing something wrong counts towards its
    /// lockout; the refusal that locks it out raises an alert.
    fn count_refusal(&self, exchange: &mut Exchange, code: Code, host: &mut dyn Host) {
        let Some(policy) = self.config.rate_limits.lockout else {
            return;
        };
        let counts = matches!(
            code,
            Code::TokenMissing
                | Code::TokenInvalid
                | Code::TokenExpired
                | Code::TokenAmbiguous
                | Code::ConsentRevoked
                | Code::ConsentSuspended
                | Code::TokenUnbound
                | Code::AccessDenied
                | Code::BadRequest
        );
        if !counts {
            return;
        }
        let now = host.now();
        if ratelimit::record_refusal(host, &Self::caller_key(exchange, "lockout"), &policy, now)
            .is_some()
        {
            exchange.outcome.lockout = true;
            host.count("consentry.ratelimit.lockout", 1);
            host.log(
                LogLevel::Warn,
                "consentry: a caller is locked out after repeated refusals",
            );
        }
    }

    fn decide(
        &self,
        head: &RequestHead,
        host: &mut dyn Host,
        may_wait: bool,
        ex: &mut Exchange,
    ) -> Result<RequestAction, Refusal> {
        let token = self
            .find_token(&head.headers, head.query())
            .map_err(|c| Refusal::Problem(c, "token_location"))?;
        let now_s = u64::try_from(unix_seconds(host.now())).unwrap_or(0);
        let consent = self.consent(token, host, now_s, may_wait)?;
        ex.outcome.consent_id = Some(consent.consent_id.clone());
        ex.outcome.issuer = Some(consent.issuer.clone());
        ex.outcome.subject = Some(consent.subject.clone());
        ex.outcome.grantee.clone_from(&consent.grantee);
        self.revocation(&consent, host, now_s, may_wait)?;
        let peer = head.connection.peer.as_ref();
        let peer_view = Peer {
            sha256_hex: peer.and_then(|p| p.sha256_hex.as_deref()),
            certificate_pem: peer.and_then(|p| p.pem.as_deref()),
        };
        self.verifier.borrow().check_binding(&consent, &peer_view)?;
        let spiffe = peer
            .and_then(|p| p.pem.as_deref())
            .and_then(|pem| spiffe_id_from_pem(pem).ok());

        // After every wait: a request that waited takes its grantee and subject
        // tokens exactly once, here.
        let limits = self.config.rate_limits;
        if let (Some(limit), Some(g)) = (&limits.grantee, &consent.grantee) {
            self.take(host, &RateKey::new("grantee", g), limit)?;
        }
        if let Some(limit) = &limits.subject {
            self.take(host, &RateKey::new("subject", &consent.subject), limit)?;
        }
        let policy = &self.config.policy;
        let url_path = head.url_path();
        let (route_index, params) = policy
            .route_for(&head.method, url_path)
            .ok_or(Refusal::Problem(Code::AccessDenied, "no_route"))?;
        let route = policy
            .routes
            .get(route_index)
            .ok_or(Refusal::Problem(Code::AccessDenied, "no_route"))?;
        ex.route = Some(route_index);
        ex.outcome.route = Some(route.name.clone());
        let facts = Facts {
            consent: &consent,
            method: &head.method,
            path: url_path,
            params: &params,
            query: head.query(),
            headers: &head.headers,
            source_ip: head
                .connection
                .source_address
                .as_deref()
                .and_then(cidr::source_ip),
            peer,
            spiffe_id: spiffe.as_deref(),
            now: i64::try_from(now_s).unwrap_or(i64::MAX),
        };
        let decision: Decision = policy.decide(route_index, &facts);
        ex.outcome.purpose.clone_from(&decision.purpose);
        ex.outcome.rule = decision
            .rule
            .and_then(|k| route.rules.get(k))
            .map(|r| r.name.clone());
        if host.debug_enabled() {
            self.explain(&decision, route_index, host);
        }
        if !decision.allow {
            let code = match decision.reason {
                crate::policy::Reason::PurposeAmbiguous
                | crate::policy::Reason::PurposeMalformed => Code::BadRequest,
                _ => Code::AccessDenied,
            };
            return Err(Refusal::Problem(code, decision.reason.as_str()));
        }
        let rule = decision.rule.unwrap_or(0);
        ex.outcome.acts_for = route
            .rules
            .get(rule)
            .and_then(|r| r.acts_for(&facts))
            .map(str::to_owned);
        let plan = policy
            .plan(route_index, rule, decision.released)
            .map_err(|_| Refusal::Problem(Code::UnsafeResponse, "plan"))?;
        ex.plan = Some(plan);
        ex.outcome.allowed = true;
        ex.outcome.reason = "allowed";
        ex.stage = Stage::Forwarded;

        let mut edits = self.request_edits(head, route_index, decision.purpose.as_deref());
        let prov = &policy.provenance;
        let mut decision_id = [0u8; 16];
        host.fill_random(&mut decision_id);
        edits.set(&prov.consent_id, consent.consent_id.clone());
        if let Some(p) = &decision.purpose {
            edits.set(&prov.purpose, p.clone());
        }
        edits.set(&prov.decision, problem::request_id_from_random(decision_id));
        if let Some(g) = &consent.grantee {
            edits.set(&prov.grantee, g.clone());
        }
        let hold_body = !head.end_of_stream
            && policy
                .request_body_plan(route_index, decision.purpose.as_deref())
                .is_some();
        if hold_body {
            ex.stage = Stage::RequestBody;
            ex.request_purpose.clone_from(&decision.purpose);
        }
        Ok(RequestAction::Forward { edits, hold_body })
    }

    /// A debug line that explains a decision (`consentry explain` reads it): route,
    /// rule, reason, purpose, released domains, and the action for every classified
    /// field. Names only, never a value.
    fn explain(&self, d: &Decision, route_index: usize, host: &mut dyn Host) {
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
        host.log(LogLevel::Debug, &format!("{EXPLAIN_MARKER}{line}"));
    }

    /// Verifies the token, fetching the issuer's keys when it names one not known yet.
    fn consent(
        &self,
        token: &[u8],
        host: &mut dyn Host,
        now: u64,
        may_wait: bool,
    ) -> Result<Arc<Consent>, Refusal> {
        let (result, cache_hit) = {
            let verifier = self.verifier.borrow();
            let mut cache = self.tokens.borrow_mut();
            let (hits, _) = cache.stats();
            let result = verifier.verify_cached(&mut cache, token, now);
            (result, cache.stats().0 > hits)
        };
        match result {
            Ok(c) => {
                host.count(
                    if cache_hit {
                        "consentry.token.cache_hit"
                    } else {
                        "consentry.token.verified"
                    },
                    1,
                );
                Ok(c)
            }
            Err(e) if e.needs_key_refetch() => {
                let issuer = self
                    .verifier
                    .borrow()
                    .unverified_issuer(token)
                    .filter(|i| i.remote_keys.is_some())
                    .map(|i| i.issuer.clone());
                let Some(issuer) = issuer else {
                    return Err(e.into());
                };
                let res = Resource::Keys {
                    issuer: issuer.clone(),
                };
                let no_keys_yet = e == TokenError::KeysUnavailable;
                if self.in_flight(&res) {
                    return if may_wait {
                        Err(Refusal::Wait(res))
                    } else {
                        Err(e.into())
                    };
                }
                if !may_wait {
                    return Err(e.into());
                }
                // An unknown kid may be a key rotated in since the last fetch: one
                // refetch, rate-limited per issuer. No keys at all: fetch again.
                let allowed = no_keys_yet || self.verifier.borrow_mut().may_refetch(&issuer, now);
                if allowed && self.fetch(&res, host) {
                    host.count("consentry.token.refetch", 1);
                    return Err(Refusal::Wait(res));
                }
                Err(e.into())
            }
            Err(e) => {
                host.count(&format!("consentry.token.refused.{}", e.as_str()), 1);
                Err(e.into())
            }
        }
    }

    /// Deny-list and status list. A status list is taken from this worker, else from
    /// the proxy's shared data, else fetched (the request waits).
    fn revocation(
        &self,
        consent: &Consent,
        host: &mut dyn Host,
        now: u64,
        may_wait: bool,
    ) -> Result<(), Refusal> {
        if let Some(status) = &consent.status {
            let uri = &status.uri;
            let staleness = self
                .verifier
                .borrow()
                .issuer(&consent.issuer)
                .and_then(|i| {
                    i.revocation
                        .status_list
                        .as_ref()
                        .map(|s| s.max_staleness_seconds)
                })
                .unwrap_or(0);
            let usable = |l: &StatusList| l.is_usable(now, staleness);
            let local = self.lists.borrow().get(uri).is_some_and(usable);
            if !local
                && let Some((bytes, _)) = host.shared_get(&shared_list_key(uri))
                && let Some(list) =
                    StatusList::from_bytes(&bytes).filter(|l| l.uri() == uri.as_str() && usable(l))
            {
                self.lists.borrow_mut().insert(uri.clone(), list);
            }
            let res = Resource::StatusList {
                issuer: consent.issuer.clone(),
                uri: uri.clone(),
            };
            let present = self.lists.borrow().get(uri).is_some_and(usable);
            if !present {
                if may_wait && self.fetch(&res, host) {
                    return Err(Refusal::Wait(res));
                }
            } else if self
                .lists
                .borrow()
                .get(uri)
                .is_some_and(|l| now >= l.fresh_until())
            {
                // Past its ttl but within the staleness allowed: use it, refresh it.
                self.refresh_later(&res, host);
            }
        }
        let lists = self.lists.borrow();
        let list = consent.status.as_ref().and_then(|s| lists.get(&s.uri));
        self.verifier
            .borrow()
            .check_revocation(consent, list, now)
            .map_err(|e| {
                host.count(&format!("consentry.token.refused.{}", e.as_str()), 1);
                Refusal::from(e)
            })
    }

    /// The token from its configured place: exactly one occurrence, with the
    /// configured scheme, non-empty.
    fn find_token<'h>(&self, headers: &'h Headers, query: Option<&str>) -> Result<&'h [u8], Code> {
        let loc = &self.config.token;
        // A token in a second place (a bearer Authorization header beside a custom
        // token header, or an access_token query parameter, RFC 6750) is ambiguous:
        // refuse rather than pick one.
        let in_query =
            query.is_some_and(|q| q.split('&').any(|kv| query_name(kv) == "access_token"));
        let elsewhere = loc.header != "authorization"
            && headers.get_all("authorization").any(|v| {
                v.len() > 7
                    && v.get(..7)
                        .is_some_and(|s| s.eq_ignore_ascii_case(b"bearer "))
            });
        if in_query || elsewhere {
            return Err(if headers.contains(&loc.header) {
                Code::TokenAmbiguous
            } else {
                Code::TokenMissing
            });
        }
        let value = headers.get_single(&loc.header).map_err(|n| {
            if n == 0 {
                Code::TokenMissing
            } else {
                Code::TokenAmbiguous
            }
        })?;
        let token = match &loc.scheme {
            None => Some(value),
            Some(scheme) => split_scheme(value)
                .filter(|(given, _)| given.eq_ignore_ascii_case(scheme.as_bytes()))
                .map(|(_, rest)| rest),
        };
        // Envoy joins a repeated Authorization header into one value with ','
        // before the plugin sees it; a compact token never contains a comma. A
        // JSON-serialized JWS does: that is one invalid token, not two.
        if value.contains(&b',') {
            return Err(if token.is_some_and(|t| t.starts_with(b"{")) {
                Code::TokenInvalid
            } else {
                Code::TokenAmbiguous
            });
        }
        let token = token.ok_or(Code::TokenMissing)?;
        if token.is_empty() || token.iter().any(|b| !b.is_ascii_graphic()) {
            return Err(Code::TokenInvalid);
        }
        Ok(token)
    }

    /// Edits every forwarded request gets: the token stays here (unless configured
    /// otherwise); the upstream answers whole and uncompressed so its answer can be
    /// redacted; nobody forges provenance; the purpose needs only what it needs.
    fn request_edits(
        &self,
        head: &RequestHead,
        route: usize,
        purpose: Option<&str>,
    ) -> HeaderEdits {
        let policy = &self.config.policy;
        let mut edits = HeaderEdits::default();
        // Only headers the request has are removed: each removal is a host call, and
        // removing an absent header changes nothing (the map read at the request's
        // headers is the whole map, and nothing else writes it while it is held).
        let mut remove = |name: &str| {
            if head.headers.contains(name) {
                edits.remove(name);
            }
        };
        if !self.config.token.forward {
            remove(&self.config.token.header);
        }
        for name in ["accept-encoding", "range", "if-range"] {
            remove(name);
        }
        let prov = &policy.provenance;
        for name in [
            &prov.consent_id,
            &prov.purpose,
            &prov.decision,
            &prov.grantee,
            &policy.purpose_header,
        ] {
            remove(name);
        }
        let (query, headers) = policy.minimisation(route, purpose);
        if let Some(allowed) = headers {
            let mut seen: Vec<&str> = Vec::new();
            for (name, _) in head.headers.iter() {
                let keep = name.starts_with(':')
                    || ALWAYS_FORWARDED.contains(&name)
                    || allowed.iter().any(|a| a == name)
                    || name == self.config.token.header && self.config.token.forward;
                if !keep && !seen.contains(&name) {
                    seen.push(name);
                    edits.remove(name);
                }
            }
        }
        if let (Some(allowed), Some(q)) = (query, head.query()) {
            let kept: Vec<&str> = q
                .split('&')
                .filter(|kv| !kv.is_empty() && allowed.iter().any(|a| *a == query_name(kv)))
                .collect();
            let path = if kept.is_empty() {
                head.url_path().to_owned()
            } else {
                format!("{}?{}", head.url_path(), kept.join("&"))
            };
            if path != head.path {
                edits.set(":path", path);
            }
        }
        edits
    }

    /// A request body chunk arrived; the whole body so far is `buffered` bytes.
    pub fn on_request_body_progress(
        &self,
        exchange: &mut Exchange,
        buffered: usize,
        host: &mut dyn Host,
    ) -> BodyAction {
        if exchange.stage != Stage::RequestBody {
            return BodyAction::Pass;
        }
        if buffered > self.config.limits.max_body_bytes {
            exchange.stage = Stage::Done;
            return BodyAction::Reply(self.refuse_request(
                exchange,
                Code::RequestTooLarge,
                "request_too_large",
                host,
            ));
        }
        BodyAction::Buffer
    }

    /// The whole request body: only the fields the purpose needs go upstream. A body
    /// that is not JSON cannot be minimised and is refused.
    pub fn on_request_body(
        &self,
        exchange: &mut Exchange,
        content_type: Option<&[u8]>,
        body: &[u8],
        host: &mut dyn Host,
    ) -> BodyAction {
        if exchange.stage != Stage::RequestBody {
            return BodyAction::Pass;
        }
        let plan = exchange.route.and_then(|r| {
            self.config
                .policy
                .request_body_plan(r, exchange.request_purpose.as_deref())
        });
        let json = content_type.is_some_and(|ct| {
            let media = ct
                .split(|b| *b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii()
                .to_ascii_lowercase();
            media == b"application/json"
                || (media.starts_with(b"application/") && media.ends_with(b"+json"))
        });
        let Some(plan) = plan.filter(|_| json || body.is_empty()) else {
            exchange.stage = Stage::Done;
            return BodyAction::Reply(self.refuse_request(
                exchange,
                Code::BadRequest,
                "request_body_not_json",
                host,
            ));
        };
        if body.is_empty() {
            exchange.stage = Stage::Forwarded;
            return BodyAction::Pass;
        }
        let limits = redact::Limits {
            max_bytes: self.config.limits.max_body_bytes,
            max_depth: self.config.limits.max_depth,
        };
        let keys = redact::KeyRing::new();
        let mut random = |buf: &mut [u8]| host.fill_random(buf);
        let mut cx = RedactContext {
            pseudonym_keys: &keys,
            grantee: None,
            recipient: None,
            random: &mut random,
        };
        match redact::redact(&plan, body, limits, &mut cx) {
            Ok(out) => {
                exchange.stage = Stage::Forwarded;
                if out.report.unclassified_removed > 0 {
                    host.count(
                        "consentry.request.minimised",
                        out.report.unclassified_removed,
                    );
                }
                let mut headers = HeaderEdits::default();
                headers.set("content-length", out.body.len().to_string());
                BodyAction::Release {
                    body: out.body,
                    headers,
                }
            }
            Err(redact::RedactError::TooLarge) => {
                exchange.stage = Stage::Done;
                BodyAction::Reply(self.refuse_request(
                    exchange,
                    Code::RequestTooLarge,
                    "request_too_large",
                    host,
                ))
            }
            Err(_) => {
                exchange.stage = Stage::Done;
                BodyAction::Reply(self.refuse_request(
                    exchange,
                    Code::BadRequest,
                    "request_body_invalid",
                    host,
                ))
            }
        }
    }

    /// A refusal decided after the request was allowed (its body is unusable).
    fn refuse_request(
        &self,
        exchange: &mut Exchange,
        code: Code,
        reason: &'static str,
        host: &mut dyn Host,
    ) -> LocalReply {
        exchange.outcome.allowed = false;
        exchange.outcome.code = Some(code);
        exchange.outcome.reason = reason;
        host.count(&format!("consentry.decision.deny.{}", code.as_str()), 1);
        self.problem(code, exchange)
    }

    fn problem(&self, code: Code, exchange: &Exchange) -> LocalReply {
        problem::reply(
            code,
            &self.config.problem_type_base,
            &exchange.request_id,
            None,
        )
    }

    fn withhold(
        &self,
        exchange: &mut Exchange,
        code: Code,
        reason: &'static str,
        host: &mut dyn Host,
    ) -> LocalReply {
        exchange.stage = Stage::Done;
        exchange.outcome.code = Some(code);
        exchange.outcome.reason = reason;
        host.count(&format!("consentry.response.withheld.{reason}"), 1);
        self.problem(code, exchange)
    }

    /// Response headers a released response loses: the configured removals, and
    /// on a route with a header allow-list every header it does not name.
    fn response_edits(&self, route: &Route, headers: &Headers, head_request: bool) -> HeaderEdits {
        let mut edits = HeaderEdits::default();
        // Only headers the response has (see `request_edits`).
        for h in &self.config.remove_response_headers {
            if headers.contains(h) {
                edits.remove(h);
            }
        }
        if let Some(allowed) = &route.response_headers {
            for (name, _) in headers.iter() {
                let kept = name.starts_with(':')
                    || STANDARD_RESPONSE_HEADERS.contains(&name)
                    || allowed.iter().any(|a| a == name);
                if !kept && !edits.remove.iter().any(|r| r == name) {
                    edits.remove(name);
                }
            }
        }
        if head_request {
            // The length of the unredacted body would leak its size.
            edits.remove("content-length");
        }
        edits
    }

    pub fn on_response_headers(
        &self,
        exchange: &mut Exchange,
        status: u16,
        headers: &Headers,
        end_of_stream: bool,
        host: &mut dyn Host,
    ) -> ResponseAction {
        if exchange.stage != Stage::Forwarded {
            // Our own reply, or a stream already handled: let it through as is.
            return ResponseAction::Pass(HeaderEdits::default());
        }
        let Some(route) = exchange
            .route
            .and_then(|r| self.config.policy.routes.get(r))
        else {
            return ResponseAction::Reply(self.withhold(
                exchange,
                Code::UnsafeResponse,
                "no_route",
                host,
            ));
        };
        if status >= 500 || (route.mask_client_errors && (400..500).contains(&status)) {
            return ResponseAction::Reply(self.withhold(
                exchange,
                Code::UpstreamError,
                "upstream_error",
                host,
            ));
        }
        let no_body = exchange.method_is_head
            || status == 204
            || status == 304
            || (100..200).contains(&status)
            || end_of_stream;
        if no_body {
            exchange.stage = Stage::Done;
            return ResponseAction::Pass(self.response_edits(
                route,
                headers,
                exchange.method_is_head,
            ));
        }
        if !(200..300).contains(&status) && !(400..500).contains(&status) {
            // 3xx with a body, or anything odd: nothing to redact it with.
            return ResponseAction::Reply(self.withhold(
                exchange,
                Code::UnsafeResponse,
                "unexpected_status",
                host,
            ));
        }
        if status == 206 {
            return ResponseAction::Reply(self.withhold(
                exchange,
                Code::UnsafeResponse,
                "partial_content",
                host,
            ));
        }
        if let Some(reason) = self.unredactable(headers, &route.content_types) {
            return ResponseAction::Reply(self.withhold(
                exchange,
                Code::UnsafeResponse,
                reason,
                host,
            ));
        }
        exchange.held_response_edits = self.response_edits(route, headers, false);
        exchange.stage = Stage::Holding;
        ResponseAction::Hold
    }

    /// A response whose body cannot be read safely is withheld whole.
    fn unredactable(&self, headers: &Headers, allowed: &[String]) -> Option<&'static str> {
        for encoding in headers.get_all("content-encoding") {
            if !encoding.trim_ascii().eq_ignore_ascii_case(b"identity") {
                return Some("content_encoding");
            }
        }
        // Envoy joins repeated content-type headers with ','.
        let Ok(content_type) = headers.get_single("content-type") else {
            return Some("content_type");
        };
        let media = content_type
            .split(|b| *b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii()
            .to_ascii_lowercase();
        if media.contains(&b',') || !allowed.iter().any(|a| a.as_bytes() == media.as_slice()) {
            return Some("content_type");
        }
        if let Ok(len) = headers.get_single("content-length") {
            let declared = std::str::from_utf8(len)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok());
            if declared.is_none_or(|n| n > self.config.limits.max_body_bytes) {
                return Some("too_large");
            }
        }
        None
    }

    /// A body chunk arrived and the whole body so far is `buffered` bytes long.
    pub fn on_response_body_progress(
        &self,
        exchange: &mut Exchange,
        buffered: usize,
        host: &mut dyn Host,
    ) -> BodyAction {
        if exchange.stage != Stage::Holding {
            return BodyAction::Pass;
        }
        if buffered > self.config.limits.max_body_bytes {
            return BodyAction::Reply(self.withhold(
                exchange,
                Code::UnsafeResponse,
                "too_large",
                host,
            ));
        }
        BodyAction::Buffer
    }

    /// The whole body is in: redact it, or withhold the response.
    pub fn on_response_body(
        &self,
        exchange: &mut Exchange,
        body: &[u8],
        host: &mut dyn Host,
    ) -> BodyAction {
        if exchange.stage != Stage::Holding {
            return BodyAction::Pass;
        }
        let Some(plan) = exchange.plan.clone() else {
            return BodyAction::Reply(self.withhold(
                exchange,
                Code::UnsafeResponse,
                "no_plan",
                host,
            ));
        };
        let limits = redact::Limits {
            max_bytes: self.config.limits.max_body_bytes,
            max_depth: self.config.limits.max_depth,
        };
        let grantee = exchange.outcome.grantee.clone();
        let recipient = grantee.as_ref().and_then(|g| self.config.recipients.get(g));
        let mut random = |buf: &mut [u8]| host.fill_random(buf);
        let mut cx = RedactContext {
            pseudonym_keys: &self.config.pseudonym_keys,
            grantee: grantee.as_deref(),
            recipient,
            random: &mut random,
        };
        match redact::redact(&plan, body, limits, &mut cx) {
            Ok(out) => {
                exchange.stage = Stage::Done;
                count_report(&out.report, host);
                exchange.outcome.report = Some(out.report);
                let mut headers = std::mem::take(&mut exchange.held_response_edits);
                headers.set("content-length", out.body.len().to_string());
                BodyAction::Release {
                    body: out.body,
                    headers,
                }
            }
            Err(e) => {
                let reason = match e {
                    redact::RedactError::TooLarge => "too_large",
                    redact::RedactError::TooDeep => "too_deep",
                    redact::RedactError::MissingKey => "missing_key",
                    redact::RedactError::InvalidUtf8 { .. }
                    | redact::RedactError::ByteOrderMark => "invalid_text",
                    _ => "invalid_json",
                };
                BodyAction::Reply(self.withhold(exchange, Code::UnsafeResponse, reason, host))
            }
        }
    }

    /// Trailers ended the body before any end-of-stream body callback: a held
    /// response is withheld rather than released without its redaction.
    pub fn on_response_trailers(&self, exchange: &mut Exchange, host: &mut dyn Host) -> BodyAction {
        if exchange.stage != Stage::Holding {
            return BodyAction::Pass;
        }
        BodyAction::Reply(self.withhold(exchange, Code::UnsafeResponse, "trailers", host))
    }

    /// The stream is over: one audit record for its decision, in this worker's chain.
    /// A stream that never got a decision (the client left while it waited) leaves
    /// no record: nothing was decided and nothing was sent.
    pub fn finish(&self, exchange: &Exchange, host: &mut dyn Host) {
        let o = &exchange.outcome;
        if !o.allowed && o.code.is_none() {
            return;
        }
        let mut fields = FieldReport::new();
        let route = exchange
            .route
            .and_then(|r| self.config.policy.routes.get(r));
        if let (Some(report), Some(plan), Some(route)) = (&o.report, &exchange.plan, route) {
            // The plan's rules are the route's fields, in order (`Policy::plan`): the
            // names are read from the configuration here, never copied per request.
            for (i, ((_, action), field)) in plan.rules().iter().zip(&route.fields).enumerate() {
                let n = report.rules.get(i).map_or(0, |c| c.matched);
                if n == 0 {
                    continue;
                }
                match redaction_of(action_name(action)) {
                    None => {
                        fields.released(&field.text, n);
                    }
                    Some(r) => {
                        fields.redacted(&field.text, r, n);
                    }
                }
            }
        }
        let key = self
            .config
            .audit_key
            .as_ref()
            .map(|(kid, secret)| AuditKey {
                kid: kid.clone(),
                secret: secret.clone(),
            });
        // The caller as the audit shows it: the grantee, the mTLS identity, or the
        // source address pseudonymised (an address is personal data).
        let caller = match (&o.grantee, &o.caller) {
            (Some(g), _) => g.clone(),
            (None, Some(c)) if c.starts_with("spiffe://") || c.starts_with("cert:") => c.clone(),
            (None, Some(ip)) => format!("addr:{}", audit::pseudonymise_subject(ip, key.as_ref())),
            (None, None) => "unknown".into(),
        };
        let mut entry = AuditEntry::new(
            host.now(),
            &exchange.request_id,
            &caller,
            if o.allowed {
                audit::Decision::Allow
            } else {
                audit::Decision::Deny
            },
            o.code,
            if o.reason.is_empty() {
                "allowed"
            } else {
                o.reason
            },
        );
        entry.subject = o.subject.as_deref();
        entry.acts_for = o.acts_for.as_deref();
        entry.purpose = o.purpose.as_deref();
        entry.consent_id = o.consent_id.as_deref();
        entry.route = o.route.as_deref();
        entry.rule = o.rule.as_deref();
        entry.fields = fields;
        if o.lockout {
            entry.alert = Some(audit::Alert::Lockout);
        }
        let line = self.trail.borrow_mut().as_mut().map(|t| t.record(entry));
        if let Some(line) = line {
            self.emit(&line, host);
        }
    }
}

fn count_report(r: &redact::Report, host: &mut dyn Host) {
    let a = &r.actions;
    for (name, n) in [
        ("removed", a.removed),
        ("masked", a.masked),
        ("hashed", a.hashed),
        ("pseudonymised", a.pseudonymised),
        ("generalised", a.generalised),
        ("encrypted", a.encrypted),
        ("fallback_removed", a.fallback_removed),
    ] {
        if n > 0 {
            host.count(&format!("consentry.redacted.{name}"), n);
        }
    }
    if r.unclassified_removed > 0 {
        host.count("consentry.redacted.unclassified", r.unclassified_removed);
    }
}

fn fetch_metric(res: &Resource, what: &str) -> &'static str {
    match (res, what) {
        (Resource::Keys { .. }, "started") => "consentry.fetch.keys.started",
        (Resource::Keys { .. }, _) => "consentry.fetch.keys.failed",
        (Resource::StatusList { .. }, "started") => "consentry.fetch.status_list.started",
        (Resource::StatusList { .. }, _) => "consentry.fetch.status_list.failed",
        (Resource::AuditBatch, _) => "consentry.audit.ship_failed",
    }
}

/// A query parameter's name as the upstream reads it: form-decoded (RFC 6750
/// names `access_token` so), so `%61ccess_token` is `access_token` too.
fn query_name(kv: &str) -> std::borrow::Cow<'_, str> {
    let raw = kv.split_once('=').map_or(kv, |(k, _)| k);
    if !raw.contains(['%', '+']) {
        return raw.into();
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned().into()
}

fn describe(res: &Resource) -> String {
    match res {
        Resource::Keys { issuer } => format!("the keys of {issuer}"),
        // The uri comes from a token: it is never written to the log.
        Resource::StatusList { issuer, .. } => format!("a status list of {issuer}"),
        Resource::AuditBatch => "audit records".to_owned(),
    }
}

/// The audit's name for what an action did; `None` for a release in clear.
fn redaction_of(action: &str) -> Option<Redaction> {
    Some(match action {
        "release" => return None,
        "mask" => Redaction::Mask,
        "hash" => Redaction::Hash,
        "pseudonymise" => Redaction::Pseudonymise,
        "generalise" => Redaction::Generalise,
        "encrypt" => Redaction::Encrypt,
        _ => Redaction::Remove,
    })
}

fn action_name(a: &redact::FieldAction) -> &'static str {
    match a {
        redact::FieldAction::Keep => "release",
        redact::FieldAction::Remove => "remove",
        redact::FieldAction::Mask { .. } => "mask",
        redact::FieldAction::Hash { .. } => "hash",
        redact::FieldAction::Pseudonymise { .. } => "pseudonymise",
        redact::FieldAction::Generalise(_) => "generalise",
        redact::FieldAction::Encrypt => "encrypt",
    }
}

/// Request headers a minimising route always forwards (framing, tracing, ids).
const ALWAYS_FORWARDED: [&str; 12] = [
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "accept",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-envoy-expected-rq-timeout-ms",
    "traceparent",
    "tracestate",
    "te",
];

/// Who is calling, before any token: the mTLS identity, else the source address.
fn caller_identity(head: &RequestHead) -> Option<String> {
    let c = &head.connection;
    if let Some(p) = &c.peer {
        if let Some(san) = &p.uri_san {
            return Some(san.clone());
        }
        if let Some(h) = &p.sha256_hex {
            return Some(format!("cert:{h}"));
        }
    }
    c.source_address
        .as_deref()
        .and_then(cidr::source_ip)
        .map(|ip| ip.to_string())
}

impl Exchange {
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// True while the response must not move before the body is redacted.
    pub fn is_holding(&self) -> bool {
        self.stage == Stage::Holding
    }

    /// True while the request body is held for minimisation.
    pub fn holds_request_body(&self) -> bool {
        self.stage == Stage::RequestBody
    }

    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }
}

/// Splits `Scheme SP token` (RFC 9110 credentials), tolerating several spaces.
fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    Some((scheme, rest.trim_ascii_start()))
}
