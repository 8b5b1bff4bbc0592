//! Deciding a request: the caller, limits and lockout, the consent token, its
//! revocation and binding, the route and the policy; then what the upstream may
//! receive of it (header, query and body minimisation, provenance).

use std::sync::Arc;

use crate::host::{Host, LogLevel, unix_seconds};
use crate::http::{HeaderEdits, Headers, RequestHead};
use crate::policy::{Decision, Facts, Reason, cidr};
use crate::problem::{self, Code};
use crate::ratelimit::{self, RateKey};
use crate::redact::{self, RedactContext};
use crate::token::{Consent, Peer, StatusList, TokenError, spiffe_id_from_pem};

use super::fetch::{Resource, shared_list_key};
use super::machine::{Attempt, Exchange};
use super::plugin::Plugin;
use super::record::Outcome;

/// What to do with a request whose headers are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RequestDecision {
    /// Refuse: answer with the problem for `code`, send nothing upstream.
    Refuse {
        code: Code,
        reason: &'static str,
        retry_after: Option<u64>,
    },
    /// Hold it: decide again when this resource has been fetched (or failed).
    Wait(Resource),
    /// Send it upstream after these header edits; with `minimise_body`, only once
    /// its whole body has been minimised.
    Allow {
        edits: HeaderEdits,
        minimise_body: bool,
    },
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

/// Request headers a client may not send: they claim an identity the proxy
/// establishes (client certificates, forwarded by a front proxy), or ask the
/// upstream to act on another method than the one decided on. Identity headers are
/// removed; a method override is refused.
const IDENTITY_HEADERS: [&str; 5] = [
    "x-forwarded-client-cert",
    "client-cert",
    "client-cert-chain",
    "x-client-cert",
    "x-ssl-client-cert",
];
const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];
/// Conditional and partial requests: the upstream answers whole, so the answer can
/// be redacted, and a 304 cannot tell whether the unredacted body changed.
const CONDITIONAL_HEADERS: [&str; 7] = [
    "if-none-match",
    "if-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
    "range",
    "accept-encoding",
];

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

impl Plugin {
    /// The decision data of a new stream.
    pub(crate) fn new_exchange(&self, head: &RequestHead, request_id: String) -> Exchange {
        Exchange {
            request_id,
            method_is_head: head.method == "HEAD",
            content_type: head
                .headers
                .get_all("content-type")
                .next()
                .map(<[u8]>::to_vec),
            outcome: Outcome {
                caller: caller_identity(head),
                ..Outcome::default()
            },
            ..Exchange::default()
        }
    }

    /// Decides a request. `attempt` says whether it is decided for the first time
    /// (limits and lockouts are applied once) and whether it may still wait.
    pub(crate) fn decide_request(
        &mut self,
        head: &RequestHead,
        ex: &mut Exchange,
        attempt: Attempt,
        host: &mut dyn Host,
    ) -> RequestDecision {
        let decided = (|| {
            if attempt == Attempt::First {
                check_protocol(head)?;
                // The per-caller limit and the lockout see each request once, not
                // each time it is decided again after waiting.
                self.before_token(ex, host)?;
            }
            self.decide(head, host, attempt != Attempt::Last, ex)
        })();
        let (code, reason, retry_after) = match decided {
            Ok(decision) => {
                host.count("consentry.decision.allow", 1);
                return decision;
            }
            Err(Refusal::Wait(res)) => return RequestDecision::Wait(res),
            Err(Refusal::Problem(code, reason)) => (code, reason, None),
            Err(Refusal::Limited(code, reason, after)) => (code, reason, Some(after)),
        };
        self.count_refusal(ex, code, host);
        RequestDecision::Refuse {
            code,
            reason,
            retry_after,
        }
    }

    /// The caller as the limits see it before any token: its mTLS identity, else its
    /// address; requests from nowhere known share one bucket.
    fn caller_key(ex: &Exchange, scope: &'static str) -> RateKey {
        RateKey::new(scope, ex.outcome.caller.as_deref().unwrap_or("unknown"))
    }

    /// Lockout and the per-caller limit, the same for every client, before any
    /// token work.
    fn before_token(&self, ex: &Exchange, host: &mut dyn Host) -> Result<(), Refusal> {
        let limits = &self.config.rate_limits;
        let now = host
            .now()
            .map_err(|_| Refusal::Problem(Code::DependencyUnavailable, "host_clock"))?;
        if limits.lockout.is_some() {
            match ratelimit::locked_until(host, &Self::caller_key(ex, "lockout"), now) {
                Ok(None) => {}
                Ok(Some(l)) => {
                    host.count("consentry.ratelimit.locked_out", 1);
                    return Err(Refusal::Limited(
                        Code::LockedOut,
                        "locked_out",
                        l.retry_after_seconds,
                    ));
                }
                Err(_) => {
                    return Err(Refusal::Problem(
                        Code::DependencyUnavailable,
                        "rate_limit_state",
                    ));
                }
            }
        }
        if let Some(limit) = &limits.caller {
            Self::take(host, &Self::caller_key(ex, "caller"), limit)?;
        }
        Ok(())
    }

    /// Takes one token from a bucket; refuses when there is none.
    fn take(host: &mut dyn Host, key: &RateKey, limit: &ratelimit::Limit) -> Result<(), Refusal> {
        let now = host
            .now()
            .map_err(|_| Refusal::Problem(Code::DependencyUnavailable, "host_clock"))?;
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
    fn count_refusal(&self, ex: &mut Exchange, code: Code, host: &mut dyn Host) {
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
        let Ok(now) = host.now() else {
            return;
        };
        if counts
            && ratelimit::record_refusal(host, &Self::caller_key(ex, "lockout"), &policy, now)
                .is_some()
        {
            ex.outcome.lockout = true;
            host.count("consentry.ratelimit.lockout", 1);
            let _ = host.log(
                LogLevel::Warn,
                "consentry: a caller is locked out after repeated refusals",
            );
        }
    }

    fn decide(
        &mut self,
        head: &RequestHead,
        host: &mut dyn Host,
        may_wait: bool,
        ex: &mut Exchange,
    ) -> Result<RequestDecision, Refusal> {
        let token = self
            .find_token(&head.headers, head.query())
            .map_err(|c| Refusal::Problem(c, "token_location"))?;
        let now_s = host
            .now()
            .map(|t| u64::try_from(unix_seconds(t)).unwrap_or(0))
            .map_err(|_| Refusal::Problem(Code::DependencyUnavailable, "host_clock"))?;
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
        self.verifier.check_binding(&consent, &peer_view)?;
        let spiffe = peer
            .and_then(|p| p.pem.as_deref())
            .and_then(|pem| spiffe_id_from_pem(pem).ok());

        // After every wait: a request that waited takes its grantee and subject
        // tokens exactly once, here.
        let limits = self.config.rate_limits;
        if let (Some(limit), Some(g)) = (&limits.grantee, &consent.grantee) {
            Self::take(host, &RateKey::new("grantee", g), limit)?;
        }
        if let Some(limit) = &limits.subject {
            Self::take(host, &RateKey::new("subject", &consent.subject), limit)?;
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
                Reason::PurposeAmbiguous | Reason::PurposeMalformed => Code::BadRequest,
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

        let mut edits = self.request_edits(head, route_index, decision.purpose.as_deref());
        let prov = &policy.provenance;
        let mut decision_id = [0u8; 16];
        host.fill_random(&mut decision_id)
            .map_err(|_| Refusal::Problem(Code::DependencyUnavailable, "host_random"))?;
        edits.set(&prov.consent_id, consent.consent_id.clone());
        if let Some(p) = &decision.purpose {
            edits.set(&prov.purpose, p.clone());
        }
        edits.set(&prov.decision, problem::request_id_from_random(decision_id));
        if let Some(g) = &consent.grantee {
            edits.set(&prov.grantee, g.clone());
        }
        let minimise_body = policy
            .request_body_plan(route_index, decision.purpose.as_deref())
            .is_some();
        ex.purpose.clone_from(&decision.purpose);
        ex.outcome.allowed = true;
        ex.outcome.reason = "allowed";
        Ok(RequestDecision::Allow {
            edits,
            minimise_body,
        })
    }

    /// Verifies the token, fetching the issuer's keys when it names one not known yet.
    fn consent(
        &mut self,
        token: &[u8],
        host: &mut dyn Host,
        now: u64,
        may_wait: bool,
    ) -> Result<Arc<Consent>, Refusal> {
        let (hits, _) = self.tokens.stats();
        let result = self.verifier.verify_cached(&mut self.tokens, token, now);
        let cache_hit = self.tokens.stats().0 > hits;
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
                let allowed = no_keys_yet || self.verifier.may_refetch(&issuer, now);
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
        &mut self,
        consent: &Consent,
        host: &mut dyn Host,
        now: u64,
        may_wait: bool,
    ) -> Result<(), Refusal> {
        if let Some(status) = &consent.status {
            let uri = &status.uri;
            let staleness = self
                .verifier
                .issuer(&consent.issuer)
                .and_then(|i| {
                    i.revocation
                        .status_list
                        .as_ref()
                        .map(|s| s.max_staleness_seconds)
                })
                .unwrap_or(0);
            let usable = |l: &StatusList| l.is_usable(now, staleness);
            let local = self.lists.get(uri).is_some_and(usable);
            if !local
                && let Ok(Some((bytes, _))) = host.shared_get(&shared_list_key(uri))
                && let Some(list) =
                    StatusList::from_bytes(&bytes).filter(|l| l.uri() == uri.as_str() && usable(l))
            {
                self.lists.insert(uri.clone(), list);
            }
            let res = Resource::StatusList {
                issuer: consent.issuer.clone(),
                uri: uri.clone(),
            };
            match self.lists.get(uri) {
                Some(list) if usable(list) => {
                    if now >= list.fresh_until() {
                        // Past its ttl but within the staleness allowed: use it,
                        // and refresh it for the requests to come.
                        self.fetch(&res, host);
                    }
                }
                _ => {
                    if may_wait && self.fetch(&res, host) {
                        return Err(Refusal::Wait(res));
                    }
                }
            }
        }
        let list = consent.status.as_ref().and_then(|s| self.lists.get(&s.uri));
        self.verifier
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
    /// otherwise); the upstream answers whole, unconditionally and uncompressed so
    /// its answer can be redacted; nobody forges provenance or identity; the purpose
    /// needs only what it needs.
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
            if head.headers.contains(name) && !edits.remove.iter().any(|r| r == name) {
                edits.remove(name);
            }
        };
        if !self.config.token.forward {
            remove(&self.config.token.header);
        }
        for name in CONDITIONAL_HEADERS.into_iter().chain(IDENTITY_HEADERS) {
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
            for (name, _) in head.headers.iter() {
                let keep = name.starts_with(':')
                    || ALWAYS_FORWARDED.contains(&name)
                    || allowed.iter().any(|a| a == name)
                    || name == self.config.token.header && self.config.token.forward;
                if !keep {
                    remove(name);
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

    /// The whole request body: only the fields the purpose needs go upstream. A body
    /// that is not JSON cannot be minimised and is refused.
    pub(crate) fn minimise_request_body(
        &mut self,
        ex: &mut Exchange,
        body: &[u8],
        host: &mut dyn Host,
    ) -> Result<Vec<u8>, (Code, &'static str)> {
        let plan = ex.route.and_then(|r| {
            self.config
                .policy
                .request_body_plan(r, ex.purpose.as_deref())
        });
        let json = ex.content_type.as_deref().is_some_and(is_json_media_type);
        let Some(plan) = plan.filter(|_| json || body.is_empty()) else {
            return Err(self.refuse_after_allow(ex, Code::BadRequest, "request_body_not_json"));
        };
        if body.is_empty() {
            return Ok(Vec::new());
        }
        let limits = redact::Limits {
            max_bytes: self.config.limits.max_body_bytes,
            max_depth: self.config.limits.max_depth,
        };
        let keys = redact::KeyRing::new();
        // Request plans only remove: they never draw randomness.
        let mut no_random = |buf: &mut [u8]| buf.fill(0);
        let mut cx = RedactContext {
            pseudonym_keys: &keys,
            grantee: None,
            recipient: None,
            random: &mut no_random,
        };
        match redact::redact(&plan, body, limits, &mut cx) {
            Ok(out) => {
                if out.report.unclassified_removed > 0 {
                    host.count(
                        "consentry.request.minimised",
                        out.report.unclassified_removed,
                    );
                }
                Ok(out.body)
            }
            Err(redact::RedactError::TooLarge) => {
                Err(self.refuse_after_allow(ex, Code::RequestTooLarge, "request_too_large"))
            }
            Err(_) => Err(self.refuse_after_allow(ex, Code::BadRequest, "request_body_invalid")),
        }
    }

    /// A refusal decided after the request was allowed (its body is unusable).
    fn refuse_after_allow(
        &self,
        ex: &mut Exchange,
        code: Code,
        reason: &'static str,
    ) -> (Code, &'static str) {
        ex.outcome.allowed = false;
        (code, reason)
    }
}

/// Requests the plugin cannot decide on safely whatever the policy says: a
/// protocol upgrade (a tunnel nothing could redact), a method override.
fn check_protocol(head: &RequestHead) -> Result<(), Refusal> {
    let upgrade = head.method.eq_ignore_ascii_case("CONNECT")
        || head.headers.contains("upgrade")
        || head.headers.contains(":protocol")
        || head.headers.get_all("connection").any(|v| {
            v.split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        });
    if upgrade {
        return Err(Refusal::Problem(Code::BadRequest, "upgrade"));
    }
    if METHOD_OVERRIDE_HEADERS
        .iter()
        .any(|name| head.headers.contains(name))
    {
        return Err(Refusal::Problem(Code::BadRequest, "method_override"));
    }
    Ok(())
}

/// `application/json` or `application/*+json`, parameters ignored.
pub(crate) fn is_json_media_type(content_type: &[u8]) -> bool {
    let media = content_type
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii()
        .to_ascii_lowercase();
    media == b"application/json"
        || (media.starts_with(b"application/") && media.ends_with(b"+json"))
}

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

/// Splits `Scheme SP token` (RFC 9110 credentials), tolerating several spaces.
fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    Some((scheme, rest.trim_ascii_start()))
}
