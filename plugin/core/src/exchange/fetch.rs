//! What the plugin fetches through the proxy (issuer keys, status lists) and the
//! audit batches it ships: the calls in flight, their answers, and the back-off
//! after a failure so that requests fail fast instead of refetching in a loop.
//!
//! A call's answer comes back to the plugin by its token, whichever stream started
//! it; a call that never answers is forgotten on the timer after its timeout, and
//! the requests waiting for it are decided again.

use std::collections::HashMap;
use std::time::Duration;

use crate::host::{Host, LogLevel, OutgoingCall, unix_millis, unix_seconds};

use super::plugin::Plugin;

/// How long after a failed fetch the same resource is not fetched again.
pub const FETCH_BACKOFF_MS: u64 = 1_000;

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

/// The shared-data key of a status list: one fetch serves every worker.
pub(crate) fn shared_list_key(uri: &str) -> String {
    format!("consentry/status-list/{uri}")
}

/// Calls in flight and recent failures.
#[derive(Debug, Default)]
pub(crate) struct Calls {
    /// token → resource, start (ms).
    in_flight: HashMap<u32, (Resource, u64)>,
    /// When a fetch of each resource last failed (ms).
    failed: HashMap<Resource, u64>,
}

impl Calls {
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &Resource, u64)> {
        self.in_flight.iter().map(|(t, (r, s))| (*t, r, *s))
    }

    pub(crate) fn in_flight(&self, res: &Resource) -> bool {
        self.in_flight.values().any(|(r, _)| r == res)
    }

    fn backing_off(&self, res: &Resource, now: u64) -> bool {
        self.failed
            .get(res)
            .is_some_and(|t| now.saturating_sub(*t) < FETCH_BACKOFF_MS)
    }

    /// Forgets calls that outlived their timeout (given per token) by a second;
    /// returns what they were fetching, now counted as failed.
    pub(crate) fn expire(&mut self, now: u64, timeouts: &[(u32, u64)]) -> Vec<Resource> {
        let mut lost = Vec::new();
        for (token, timeout) in timeouts {
            let stale = self
                .in_flight
                .get(token)
                .is_some_and(|(_, started)| now.saturating_sub(*started) > timeout + 1_000);
            if stale && let Some((res, _)) = self.in_flight.remove(token) {
                if res != Resource::AuditBatch {
                    self.failed.insert(res.clone(), now);
                }
                lost.push(res);
            }
        }
        lost
    }
}

impl Plugin {
    pub(crate) fn timeout_ms(&self, res: &Resource) -> u64 {
        let v = &self.verifier;
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

    pub(crate) fn in_flight(&self, res: &Resource) -> bool {
        self.calls.in_flight(res)
    }

    /// Starts fetching `res` unless a fetch is under way or backing off. Returns
    /// whether a fetch is under way.
    pub(crate) fn fetch(&mut self, res: &Resource, host: &mut dyn Host) -> bool {
        if self.calls.in_flight(res) {
            return true;
        }
        let Ok(now) = host.now().map(unix_millis) else {
            return false;
        };
        !self.calls.backing_off(res, now) && self.dispatch(res, now, host)
    }

    /// The outgoing call that fetches `res`.
    fn call_for(&self, res: &Resource) -> Option<OutgoingCall> {
        let v = &self.verifier;
        match res {
            Resource::AuditBatch => None,
            Resource::Keys { issuer } => {
                v.issuer(issuer)
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
                    })
            }
            Resource::StatusList { issuer, uri } => {
                let source = v
                    .issuer(issuer)
                    .and_then(|i| i.revocation.status_list.as_ref())?;
                // The uri is under the configured https prefix (checked when the
                // token was verified): split it into authority and path.
                let rest = uri.strip_prefix("https://")?;
                let (authority, path) = rest.split_once('/')?;
                Some(OutgoingCall {
                    cluster: source.cluster.clone(),
                    method: "GET".into(),
                    authority: authority.to_owned(),
                    path: format!("/{path}"),
                    headers: vec![("accept".into(), "application/statuslist+jwt".into())],
                    body: Vec::new(),
                    timeout: Duration::from_millis(source.timeout_ms),
                })
            }
        }
    }

    /// Dispatches the call for `res`; returns whether it is in flight.
    fn dispatch(&mut self, res: &Resource, now: u64, host: &mut dyn Host) -> bool {
        let Some(call) = self.call_for(res) else {
            return false;
        };
        match host.dispatch(&call) {
            Ok(token) => {
                if let Resource::Keys { issuer } = res {
                    self.jwks_fetched.insert(issuer.clone(), now);
                }
                self.calls.in_flight.insert(token, (res.clone(), now));
                host.count(fetch_metric(res, "started"), 1);
                true
            }
            Err(_) => {
                self.calls.failed.insert(res.clone(), now);
                host.count(fetch_metric(res, "failed"), 1);
                let _ = host.log(
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

    /// Sends the next batch of audit records, if one is due.
    pub(crate) fn ship(&mut self, host: &mut dyn Host) {
        let Ok(now) = host.now() else {
            return;
        };
        let call = self.shipper.as_mut().and_then(|s| s.next_batch(now));
        let Some(call) = call else {
            return;
        };
        match host.dispatch(&call) {
            Ok(token) => {
                self.calls
                    .in_flight
                    .insert(token, (Resource::AuditBatch, unix_millis(now)));
            }
            Err(_) => {
                if let Some(s) = self.shipper.as_mut() {
                    s.on_response(None, now);
                }
                host.count("consentry.audit.ship_failed", 1);
            }
        }
    }

    /// An outgoing call's answer. Returns the resource it was for (its waiters are
    /// decided again), or `None` for a call nobody waits for or does not know.
    pub fn on_call_response(
        &mut self,
        token: u32,
        status: u16,
        body: &[u8],
        host: &mut dyn Host,
    ) -> Option<Resource> {
        let (res, _) = self.calls.in_flight.remove(&token)?;
        let now = host.now().ok();
        let now_ms = now.map_or(0, unix_millis);
        if res == Resource::AuditBatch {
            if let (Some(s), Some(now)) = (self.shipper.as_mut(), now) {
                s.on_response(Some(status), now);
            }
            host.count(
                if (200..300).contains(&status) {
                    "consentry.audit.shipped"
                } else {
                    "consentry.audit.ship_failed"
                },
                1,
            );
            // A full batch that waited for this one goes now, not at the next tick.
            self.ship(host);
            return None;
        }
        if !(200..300).contains(&status) || now.is_none() {
            self.calls.failed.insert(res.clone(), now_ms);
            host.count(fetch_metric(&res, "failed"), 1);
            let _ = host.log(
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
            Resource::Keys { issuer } => match self.verifier.load_remote_jwks(issuer, body) {
                Ok(skipped) => {
                    host.count("consentry.fetch.keys.ok", 1);
                    for e in skipped {
                        let _ = host.log(
                            LogLevel::Warn,
                            &format!("consentry: a key of {issuer} was skipped: {e}"),
                        );
                    }
                }
                Err(e) => {
                    self.calls.failed.insert(res.clone(), now_ms);
                    host.count("consentry.fetch.keys.failed", 1);
                    let _ = host.log(
                        LogLevel::Warn,
                        &format!("consentry: the JWKS of {issuer} was refused: {e}"),
                    );
                }
            },
            Resource::StatusList { issuer, uri } => {
                let now_s = u64::try_from(now.map_or(0, unix_seconds)).unwrap_or(0);
                match self.verifier.load_status_list(issuer, uri, body, now_s) {
                    Ok(list) => {
                        host.count("consentry.fetch.status_list.ok", 1);
                        // Best effort: this worker keeps its copy either way.
                        let _ = host.shared_set(&shared_list_key(uri), &list.to_bytes(), None);
                        self.lists.insert(uri.clone(), list);
                    }
                    Err(e) => {
                        self.calls.failed.insert(res.clone(), now_ms);
                        host.count("consentry.fetch.status_list.failed", 1);
                        let _ = host.log(
                            LogLevel::Warn,
                            &format!("consentry: {} was refused: {}", describe(&res), e.as_str()),
                        );
                    }
                }
            }
        }
        Some(res)
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

fn describe(res: &Resource) -> String {
    match res {
        Resource::Keys { issuer } => format!("the keys of {issuer}"),
        // The uri comes from a token: it is never written to the log.
        Resource::StatusList { issuer, .. } => format!("a status list of {issuer}"),
        Resource::AuditBatch => "audit records".to_owned(),
    }
}
