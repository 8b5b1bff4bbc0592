//! The audit record of a stream, written exactly once: before an allowed answer is
//! released (no record, no release), or when the stream is over for every other
//! ending, with the status the client really got.

use crate::audit::{self, AuditEntry, AuditKey, FieldReport, Redaction};
use crate::host::{Host, HostError, LogLevel};
use crate::problem::Code;
use crate::redact;

use super::machine::Exchange;
use super::plugin::Plugin;

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
    /// The status of the answer the plugin released (0 before one is).
    pub status: u16,
    /// The status of a reply the proxy made itself and the plugin masked.
    pub proxy_status: Option<u16>,
}

/// How a stream ended, as the state machine knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Released,
    Refused,
    Withheld,
    Reset,
    ProxyReply,
    /// The stream ended while the plugin was still deciding or holding: the host
    /// says what the client got (a reply of the proxy's own, or nothing).
    Unfinished,
}

impl Plugin {
    /// Writes `ex`'s record to the trail (and the log, and the collector's queue).
    /// An error means the record could not be written: nothing may be released.
    pub(crate) fn record(
        &mut self,
        ex: &Exchange,
        ending: Ending,
        host: &mut dyn Host,
    ) -> Result<(), HostError> {
        let o = &ex.outcome;
        // The plugin's own replies carry the status it sent; for the rest, the proxy
        // says what the client got.
        let sent = |host: &mut dyn Host| match o.status {
            0 => final_status(host),
            status => status,
        };
        let (ending, status, by_proxy) = match ending {
            Ending::Released => (audit::Ending::Released, o.status, false),
            Ending::Refused => (audit::Ending::Refused, sent(host), false),
            Ending::Withheld => (audit::Ending::Withheld, sent(host), false),
            Ending::Reset => (audit::Ending::Reset, 0, false),
            // A stream the plugin never saw a request of: a reply of the proxy's
            // own, or (no status) a client that left before its request came.
            Ending::ProxyReply => match final_status(host) {
                0 => (audit::Ending::Reset, 0, false),
                status => (audit::Ending::ProxyReply, status, true),
            },
            // Ended while the plugin decided or held: the proxy's own reply went
            // out (its buffer limit, a timeout, an upstream that broke off), or the
            // client got nothing (it left, or the stream was reset).
            Ending::Unfinished => match proxy_replied(host) {
                Some(status) => (audit::Ending::Withheld, status, true),
                None => (audit::Ending::Reset, 0, false),
            },
        };
        let mut fields = FieldReport::new();
        if ending == audit::Ending::Released {
            self.report_fields(ex, &mut fields);
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
        let now = host.now()?;
        let reason = if by_proxy {
            "proxy_reply"
        } else if o.reason.is_empty() {
            if o.allowed { "allowed" } else { "no_decision" }
        } else {
            o.reason
        };
        let decision = if o.allowed {
            audit::Decision::Allow
        } else {
            audit::Decision::Deny
        };
        // An allowed request whose answer was replaced carries the problem it got;
        // one the proxy answered itself, the code its masked reply carries.
        let code = match ending {
            audit::Ending::Released => None,
            _ if by_proxy && status >= 400 => Some(proxy_code(status)),
            _ => o.code,
        };
        let mut entry = AuditEntry::new(now, &ex.request_id, &caller, decision, code, reason);
        entry.ending = ending;
        entry.status = status;
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
        let Some(trail) = self.trail.as_mut() else {
            return Ok(());
        };
        let line = trail.record(entry);
        self.emit(&line, host)
    }

    /// The fields the redaction touched, by the policy's names (never values).
    fn report_fields(&self, ex: &Exchange, fields: &mut FieldReport) {
        let route = ex.route.and_then(|r| self.config.policy.routes.get(r));
        let (Some(report), Some(plan), Some(route)) = (&ex.outcome.report, &ex.plan, route) else {
            return;
        };
        // The plan's rules are the route's fields, in order (`Policy::plan`): the
        // names are read from the configuration here, never copied per request.
        for (i, ((_, action), field)) in plan.rules().iter().zip(&route.fields).enumerate() {
            let n = report.rules.get(i).map_or(0, |c| c.matched);
            if n == 0 {
                continue;
            }
            match redaction_of(action) {
                None => {
                    fields.released(&field.text, n);
                }
                Some(r) => {
                    fields.redacted(&field.text, r, n);
                }
            }
        }
    }

    /// Writes one audit line to the proxy log and queues it for the collector. A
    /// line the log refused is an error (unless the collector takes it).
    pub(crate) fn emit(&mut self, line: &str, host: &mut dyn Host) -> Result<(), HostError> {
        let mut written = Ok(());
        if self.config.audit.log {
            written = host.log(LogLevel::Info, &audit::emission(line));
        }
        if let Some(s) = self.shipper.as_mut() {
            let before = s.dropped();
            let now = host.now()?;
            s.push(line, now);
            if s.dropped() > before {
                host.count("consentry.audit.dropped", s.dropped() - before);
            }
            if !self.config.audit.log {
                written = Ok(());
            }
            // A full batch goes at once: shipping only on the timer would cap the
            // trail at one batch a tick, and a busy worker would drop records.
            self.ship(host);
        }
        if written.is_err() {
            host.count("consentry.audit.write_failed", 1);
        }
        written
    }
}

/// The status the client got, as the proxy reports it at the end of the stream.
fn final_status(host: &mut dyn Host) -> u16 {
    host.property(&["response", "code"])
        .ok()
        .flatten()
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(i64::from_le_bytes)
        .and_then(|n| u16::try_from(n).ok())
        .unwrap_or(0)
}

/// The status of a reply the proxy made itself, when it says it made one: response
/// code details that name a local reply (not the upstream's answer, not a client
/// that went away).
fn proxy_replied(host: &mut dyn Host) -> Option<u16> {
    let details = host
        .property(&["response", "code_details"])
        .ok()
        .flatten()?;
    let local =
        !details.is_empty() && details != b"via_upstream" && !details.starts_with(b"downstream");
    let status = final_status(host);
    (local && status > 0).then_some(status)
}

/// The problem code the proxy's own masked replies carry (the `local_reply_config`
/// of the shipped Envoy configurations maps them so).
fn proxy_code(status: u16) -> Code {
    match status {
        413 => Code::RequestTooLarge,
        500.. => Code::UpstreamError,
        _ => Code::BadRequest,
    }
}

/// Counters for what a redaction did.
pub(crate) fn count_report(r: &redact::Report, host: &mut dyn Host) {
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
    if r.control_keys_removed > 0 {
        host.count("consentry.redacted.control_keys", r.control_keys_removed);
    }
}

/// The audit's name for what an action did; `None` for a release in clear.
fn redaction_of(action: &redact::FieldAction) -> Option<Redaction> {
    Some(match action {
        redact::FieldAction::Keep => return None,
        redact::FieldAction::Remove => Redaction::Remove,
        redact::FieldAction::Mask { .. } => Redaction::Mask,
        redact::FieldAction::Hash { .. } => Redaction::Hash,
        redact::FieldAction::Pseudonymise { .. } => Redaction::Pseudonymise,
        redact::FieldAction::Generalise(_) => Redaction::Generalise,
        redact::FieldAction::Encrypt => Redaction::Encrypt,
    })
}

/// The explanation's name for an action.
pub(crate) fn action_name(a: &redact::FieldAction) -> &'static str {
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
