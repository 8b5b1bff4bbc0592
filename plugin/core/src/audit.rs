//! The tamper-evident audit trail: one record per decision, hash-chained per VM, and a
//! bounded queue that ships the records to an optional HTTP collector.
//!
//! # Emission
//! Every record is one line of JSON. The plugin writes it to the proxy's log as
//! [`LOG_MARKER`] followed by the record (`consentry-audit {"v":2,...}`), so Envoy's
//! own log carries the trail; `consentry audit verify` finds the records by that marker
//! (see [`extract_record`]). The same record text may also go to a collector through
//! [`AuditShipper`].
//!
//! # A decision record
//! ```text
//! {"v":2,"kind":"decision","chain":"3f0c9a51d2e87b46","seq":2,
//!  "prev":"9c1e…(64 hex)","time":"2026-11-27T12:00:00.123Z",
//!  "request_id":"0f7cb765-86fc-485c-b1a8-6470c46bf45a",
//!  "caller":"spiffe://insurer.example/claims",
//!  "subject":"hmac-sha256:k1:5b1d0c…(32 hex)","acts_for":null,"purpose":"claims",
//!  "consent_id":"c-7781","route":"patient-record","rule":"insurer-read",
//!  "decision":"allow","code":"ok","reason":"rule_matched","outcome":"released","status":200,
//!  "released":[{"field":"$.id","count":1}],
//!  "redacted":[{"field":"$.identity.name","action":"pseudonymise","count":1}],
//!  "alert":null,"alg":"hmac-sha256","kid":"k1","hash":"…(64 hex)"}
//! ```
//! (shown wrapped; a record is always one line). Members:
//! - `v`: the format version, `2` (version 1 records, without `outcome` and `status`,
//!   are still verified). `kind`: `decision` (or `checkpoint`, below).
//! - `chain`: the chain's id, random per VM, made when the VM starts, so each worker's
//!   chain verifies on its own. `seq`: 1, 2, … within the chain. `prev`: the previous
//!   record's `hash` in the chain; for `seq` 1, 64 zeros.
//! - `time`: RFC 3339 UTC with milliseconds, always `YYYY-MM-DDTHH:MM:SS.mmmZ`.
//! - `request_id`, `caller` (the grantee, mTLS identity or source address: whatever the
//!   plugin identified the caller by), `purpose`, `consent_id`, `route` (the route's
//!   name in the policy, never the concrete path), `rule` (the name of the policy rule
//!   that decided):
//!   strings, or `null` when not known.
//! - `subject`: never in clear. `hmac-sha256:<kid>:<hex>` when an audit key is
//!   configured (HMAC-SHA-256 under that key of `consentry-audit-subject`, a zero byte,
//!   and the subject, first 16 bytes in hex), else `sha256:<hex>` (SHA-256 of the same
//!   input). The unkeyed form only keeps the value out of sight: a guessable subject id
//!   can be found by trying candidates, so configure a key.
//! - `acts_for`: when the consent's subject read someone else's data under a
//!   delegation (a guardian for a ward: the rule's `acts_for` / `is_or_acts_for`
//!   relation), that person, pseudonymised like `subject`; else `null`. A
//!   subject-access report for the ward searches both members.
//! - `decision`: `allow` or `deny`; `code`: the problem code the client got, or `ok`;
//!   `reason`: the internal reason (`no_rule_matched`, …), a constant of the plugin.
//! - `outcome`: what really happened to the stream: `released` (the allowed answer
//!   went out, redacted as the record says; the record is written before it goes),
//!   `refused` (the plugin's refusal went out), `withheld` (the plugin's problem, or
//!   the proxy's own reply, went out in place of the upstream's answer), `reset` (no
//!   complete answer reached the client), `proxy_reply` (the proxy answered before the
//!   plugin saw the request). `status`: the status the client got, 0 for none.
//! - `released` / `redacted`: the fields by name (the policy's path, never a value),
//!   with the action taken and how many values it touched, sorted by name then action.
//! - `alert`: `null`, or a named alert such as `lockout`.
//! - `alg`: `hmac-sha256` (keyed; `kid` names the key) or `sha256` (unkeyed; `kid`
//!   is `null`). `hash`: the record's hash in hex, always the last member.
//!
//! A **checkpoint** record (`kind` `checkpoint`) carries only `v`, `kind`, `chain`,
//! `seq`, `prev`, `time`, `interval_s` (the period the plugin promises to emit them at),
//! `alg`, `kid` and `hash`; see "What is not detected".
//!
//! # The canonical form and the hash
//! A record's canonical bytes are the record written as compact JSON (no whitespace
//! anywhere), its members in exactly the order listed above, **without** the `hash`
//! member; numbers in plain decimal; strings escaped minimally and in one way only:
//! `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other characters below U+0020 as `\u00xx`
//! (lowercase hex), everything else as its UTF-8 bytes. The emitted line is the
//! canonical bytes with `,"hash":"<hex>"` inserted before the final `}`. `hash` is
//! HMAC-SHA-256 under the key `kid` (`alg` `hmac-sha256`) or SHA-256 (`alg` `sha256`)
//! of the canonical bytes, in lowercase hex. The verifier parses each record, writes it
//! again in this form and requires the exact input bytes, so a record that differs in
//! any byte from what the plugin wrote (extra whitespace, a duplicate member, another
//! escape) is refused before its hash is even checked.
//!
//! # What verification detects ([`verify`])
//! Every chain in the input is checked on its own, records of several chains may be
//! interleaved; the first bad record is named by its line number, chain and `seq`:
//! - an **altered** record: its bytes are not canonical, or its hash does not match;
//! - a **removed** record: a gap in `seq`, or a chain that does not start at 1;
//! - a **reordered** record: a gap whose missing `seq` appears later in the input;
//! - an **inserted** record: a forged one fails its HMAC (keyed chains), a duplicate
//!   `seq`, or a `prev` that is not the previous record's hash;
//! - a **downgrade**: when keys are given, an unkeyed record is refused (anybody can
//!   compute a SHA-256), and a record keyed with a key that was not given is refused.
//!
//! # What is not detected
//! - **Truncation of a chain's tail**: removing a chain's last records leaves a valid,
//!   shorter chain, and removing a whole chain leaves the others valid. Mitigations:
//!   ship records to a collector off the machine ([`AuditShipper`]), and emit a
//!   [`AuditTrail::checkpoint`] on the timer; the verifier then warns about a chain that
//!   fell silent for more than two intervals before the log ends (a cut tail, or a
//!   worker that stopped: a warning, not a failure).
//! - **An unkeyed chain rewritten from the altered record on**: without a key anybody
//!   can recompute every later hash; the unkeyed chain only catches accidents and
//!   naive edits. Configure an audit key for tamper evidence.
//! - A chain whose first records were cut with log rotation is reported as removed
//!   records: verify whole chains.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::host::OutgoingCall;
use crate::problem::Code;

/// Put before every record in the proxy's log: the contract between the plugin and
/// `consentry audit verify` (`consentry-audit {"v":2,...}`).
pub const LOG_MARKER: &str = "consentry-audit ";

/// The record format's version (`v`). Version 1 records (without `outcome` and
/// `status`) are still read and verified.
pub const FORMAT_VERSION: u64 = 2;

/// `prev` of a chain's first record.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const ALG_HMAC: &str = "hmac-sha256";
const ALG_SHA256: &str = "sha256";
const SUBJECT_DOMAIN: &[u8] = b"consentry-audit-subject\0";

/// The audit HMAC key: chains are keyed with it, subjects pseudonymised under it.
/// It reaches the VM from the proxy's environment, never from the policy; its
/// `Debug` form shows the id only.
#[derive(Clone, PartialEq, Eq)]
pub struct AuditKey {
    pub kid: String,
    pub secret: Vec<u8>,
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Allowed or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// How a stream ended, as far as the client is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The allowed response went to the client, redacted as recorded.
    Released,
    /// The plugin refused the request; its problem went to the client.
    Refused,
    /// The answer was withheld: the plugin's problem (or the proxy's own reply)
    /// went to the client in its place.
    Withheld,
    /// The stream was reset (by the plugin, the client or the upstream): the
    /// client got no complete answer.
    Reset,
    /// The proxy answered before the plugin saw the request (an earlier filter).
    ProxyReply,
}

impl Ending {
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Released => "released",
            Ending::Refused => "refused",
            Ending::Withheld => "withheld",
            Ending::Reset => "reset",
            Ending::ProxyReply => "proxy_reply",
        }
    }
}

/// What was done to a field that was not released in clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Redaction {
    Remove,
    Mask,
    Hash,
    Pseudonymise,
    Generalise,
    Encrypt,
}

impl Redaction {
    pub const ALL: [Redaction; 6] = [
        Redaction::Remove,
        Redaction::Mask,
        Redaction::Hash,
        Redaction::Pseudonymise,
        Redaction::Generalise,
        Redaction::Encrypt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Redaction::Remove => "remove",
            Redaction::Mask => "mask",
            Redaction::Hash => "hash",
            Redaction::Pseudonymise => "pseudonymise",
            Redaction::Generalise => "generalise",
            Redaction::Encrypt => "encrypt",
        }
    }
}

/// A named alert raised with a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Alert {
    /// The caller was just locked out after a burst of refusals.
    Lockout,
}

impl Alert {
    pub fn as_str(self) -> &'static str {
        match self {
            Alert::Lockout => "lockout",
        }
    }
}

/// The fields of one exchange, by name and action, with how many values each touched.
/// It takes names only: the redactor reports the policy path of what it released or
/// redacted, never the value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldReport {
    released: BTreeMap<String, u64>,
    redacted: BTreeMap<(String, Redaction), u64>,
}

impl FieldReport {
    pub fn new() -> Self {
        Self::default()
    }

    /// `count` values at `field` were released in clear.
    pub fn released(&mut self, field: &str, count: u64) -> &mut Self {
        let n = self.released.entry(field.to_owned()).or_default();
        *n = n.saturating_add(count);
        self
    }

    /// `count` values at `field` were redacted with `action`.
    pub fn redacted(&mut self, field: &str, action: Redaction, count: u64) -> &mut Self {
        let n = self.redacted.entry((field.to_owned(), action)).or_default();
        *n = n.saturating_add(count);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.released.is_empty() && self.redacted.is_empty()
    }
}

/// What one decision record says. Personal data cannot be put in by accident: the
/// subject is hashed inside [`AuditTrail::record`], the reason is a constant of the
/// plugin, and fields are names. `route` must be the route's name, never the path.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    pub time: SystemTime,
    pub request_id: &'a str,
    pub caller: &'a str,
    /// The data subject, pseudonymised before it is written.
    pub subject: Option<&'a str>,
    /// The person the subject acted for under a delegation, pseudonymised too.
    pub acts_for: Option<&'a str>,
    pub purpose: Option<&'a str>,
    pub consent_id: Option<&'a str>,
    pub route: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub decision: Decision,
    /// The problem the client got; `None` writes `ok`.
    pub code: Option<Code>,
    pub reason: &'static str,
    /// How the stream ended for the client, and the status it got (0: none).
    pub ending: Ending,
    pub status: u16,
    pub fields: FieldReport,
    pub alert: Option<Alert>,
}

impl<'a> AuditEntry<'a> {
    /// An entry with only the mandatory parts; set the rest by field.
    pub fn new(
        time: SystemTime,
        request_id: &'a str,
        caller: &'a str,
        decision: Decision,
        code: Option<Code>,
        reason: &'static str,
    ) -> Self {
        Self {
            time,
            request_id,
            caller,
            subject: None,
            acts_for: None,
            purpose: None,
            consent_id: None,
            route: None,
            rule: None,
            decision,
            code,
            reason,
            ending: match decision {
                Decision::Allow => Ending::Released,
                Decision::Deny => Ending::Refused,
            },
            status: 0,
            fields: FieldReport::new(),
            alert: None,
        }
    }
}

/// One VM's chain of records. Not shared between workers: each has its own chain.
#[derive(Debug, Clone)]
pub struct AuditTrail {
    chain: String,
    seq: u64,
    prev: String,
    key: Option<AuditKey>,
}

impl AuditTrail {
    /// A new chain. `chain_id` should be random per VM (see [`chain_id_from_random`]);
    /// with `key` the records are HMAC-keyed and subjects pseudonymised under it.
    pub fn new(chain_id: impl Into<String>, key: Option<AuditKey>) -> Self {
        Self {
            chain: chain_id.into(),
            seq: 0,
            prev: ZERO_HASH.to_owned(),
            key,
        }
    }

    pub fn chain_id(&self) -> &str {
        &self.chain
    }

    /// The `seq` of the last record written (0 before the first).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The `kid` records are keyed with, if any.
    pub fn kid(&self) -> Option<&str> {
        self.key.as_ref().map(|k| k.kid.as_str())
    }

    /// Writes the decision record for `entry`, advancing the chain, and returns the
    /// line to emit (without the [`LOG_MARKER`]; see [`emission`]).
    pub fn record(&mut self, entry: AuditEntry<'_>) -> String {
        let subject = entry
            .subject
            .map(|s| pseudonymise_subject(s, self.key.as_ref()));
        let acts_for = entry
            .acts_for
            .map(|s| pseudonymise_subject(s, self.key.as_ref()));
        let body = Body::Decision(Box::new(DecisionBody {
            request_id: entry.request_id.to_owned(),
            caller: entry.caller.to_owned(),
            subject,
            acts_for,
            purpose: entry.purpose.map(str::to_owned),
            consent_id: entry.consent_id.map(str::to_owned),
            route: entry.route.map(str::to_owned),
            rule: entry.rule.map(str::to_owned),
            decision: entry.decision.as_str().to_owned(),
            code: entry.code.map_or("ok", Code::as_str).to_owned(),
            reason: entry.reason.to_owned(),
            outcome: Some(entry.ending.as_str().to_owned()),
            status: Some(u64::from(entry.status)),
            released: entry
                .fields
                .released
                .into_iter()
                .map(|(field, count)| Released { field, count })
                .collect(),
            redacted: entry
                .fields
                .redacted
                .into_iter()
                .map(|((field, action), count)| Redacted {
                    field,
                    action: action.as_str().to_owned(),
                    count,
                })
                .collect(),
            alert: entry.alert.map(|a| a.as_str().to_owned()),
        }));
        self.append(entry.time, body)
    }

    /// Writes a checkpoint record: proof of life for the chain. Emit one every
    /// `interval` from the timer; the verifier warns about a chain that is silent for
    /// more than two intervals before the log ends.
    pub fn checkpoint(&mut self, now: SystemTime, interval: Duration) -> String {
        self.append(
            now,
            Body::Checkpoint {
                interval_s: interval.as_secs(),
            },
        )
    }

    fn append(&mut self, time: SystemTime, body: Body) -> String {
        self.seq = self.seq.saturating_add(1);
        let record = Record {
            v: FORMAT_VERSION,
            chain: self.chain.clone(),
            seq: self.seq,
            prev: std::mem::take(&mut self.prev),
            time: format_time(unix_millis(time)),
            body,
            alg: if self.key.is_some() {
                ALG_HMAC
            } else {
                ALG_SHA256
            }
            .to_owned(),
            kid: self.key.as_ref().map(|k| k.kid.clone()),
        };
        let canonical = record.canonical();
        let hash = hex(&digest(canonical.as_bytes(), self.key.as_ref()));
        let line = with_hash(&canonical, &hash);
        self.prev = hash;
        line
    }
}

/// A chain id from 8 random bytes (16 hex digits).
pub fn chain_id_from_random(bytes: [u8; 8]) -> String {
    hex(&bytes)
}

/// The text to log for a record line: [`LOG_MARKER`] and the record.
pub fn emission(line: &str) -> String {
    format!("{LOG_MARKER}{line}")
}

/// The record in one line of a log: the line itself when it is a bare JSON object (a
/// collector's file), else what follows [`LOG_MARKER`] (Envoy's log, where the proxy
/// prefixes its own fields). Other lines are not records (`None`). A bare record is
/// taken whole first: its strings (a request id, say) may hold the marker's text.
pub fn extract_record(line: &str) -> Option<&str> {
    let line = line.trim_end_matches(['\r', '\n']);
    let trimmed = line.trim_start();
    if trimmed.starts_with('{') {
        return Some(trimmed);
    }
    let at = line.find(LOG_MARKER)?;
    line.get(at + LOG_MARKER.len()..)
}

/// The pseudonym written for `subject`.
pub fn pseudonymise_subject(subject: &str, key: Option<&AuditKey>) -> String {
    match key {
        Some(key) => {
            let mac = hmac_sha256(&key.secret, &[SUBJECT_DOMAIN, subject.as_bytes()]);
            format!(
                "{ALG_HMAC}:{}:{}",
                key.kid,
                hex(mac.get(..16).unwrap_or(&mac))
            )
        }
        None => {
            let mut h = Sha256::new();
            h.update(SUBJECT_DOMAIN);
            h.update(subject.as_bytes());
            let d: [u8; 32] = h.finalize().into();
            format!("{ALG_SHA256}:{}", hex(d.get(..16).unwrap_or(&d)))
        }
    }
}

// ---------------------------------------------------------------------------------
// The record and its canonical form.

/// A parsed record, as [`verify`] reads it and the report tools show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub v: u64,
    pub chain: String,
    pub seq: u64,
    pub prev: String,
    pub time: String,
    pub body: Body,
    pub alg: String,
    pub kid: Option<String>,
}

/// What a record is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Decision(Box<DecisionBody>),
    Checkpoint { interval_s: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionBody {
    pub request_id: String,
    pub caller: String,
    pub subject: Option<String>,
    pub acts_for: Option<String>,
    pub purpose: Option<String>,
    pub consent_id: Option<String>,
    pub route: Option<String>,
    pub rule: Option<String>,
    pub decision: String,
    pub code: String,
    pub reason: String,
    /// How the stream ended (`released`, `refused`, `withheld`, `reset`,
    /// `proxy_reply`) and the status the client got; `None` in version 1 records.
    pub outcome: Option<String>,
    pub status: Option<u64>,
    pub released: Vec<Released>,
    pub redacted: Vec<Redacted>,
    pub alert: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Released {
    pub field: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redacted {
    pub field: String,
    pub action: String,
    pub count: u64,
}

/// The members every record starts with, to learn its kind.
#[derive(Deserialize)]
struct Head {
    v: u64,
    kind: String,
}

/// A decision record as it is read, in canonical member order.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionWire {
    v: u64,
    kind: String,
    chain: String,
    seq: u64,
    prev: String,
    time: String,
    request_id: String,
    caller: String,
    subject: Option<String>,
    acts_for: Option<String>,
    purpose: Option<String>,
    consent_id: Option<String>,
    route: Option<String>,
    rule: Option<String>,
    decision: String,
    code: String,
    reason: String,
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    status: Option<u64>,
    released: Vec<Released>,
    redacted: Vec<Redacted>,
    alert: Option<String>,
    alg: String,
    kid: Option<String>,
    hash: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointWire {
    v: u64,
    kind: String,
    chain: String,
    seq: u64,
    prev: String,
    time: String,
    interval_s: u64,
    alg: String,
    kid: Option<String>,
    hash: String,
}

impl Record {
    /// Parses one record (the JSON text, without the marker) and returns it with its
    /// `hash`. Only the structure is checked here; [`verify`] checks the rest.
    pub fn parse(json: &str) -> Result<(Record, String), String> {
        let head: Head = serde_json::from_str(json).map_err(|e| e.to_string())?;
        if !(1..=FORMAT_VERSION).contains(&head.v) {
            return Err(format!("unsupported record version {}", head.v));
        }
        match head.kind.as_str() {
            "decision" => {
                let w: DecisionWire = serde_json::from_str(json).map_err(|e| e.to_string())?;
                let _ = w.kind;
                // The version decides the members, so that a parsed record is one that
                // `canonical` writes back byte for byte.
                match (w.v, &w.outcome, w.status) {
                    (1, None, None) | (2.., _, Some(_)) => {}
                    (1, ..) => return Err("a version 1 record has no outcome or status".into()),
                    _ => return Err(format!("a version {} record has a status", w.v)),
                }
                let body = Body::Decision(Box::new(DecisionBody {
                    request_id: w.request_id,
                    caller: w.caller,
                    subject: w.subject,
                    acts_for: w.acts_for,
                    purpose: w.purpose,
                    consent_id: w.consent_id,
                    route: w.route,
                    rule: w.rule,
                    decision: w.decision,
                    code: w.code,
                    reason: w.reason,
                    outcome: w.outcome,
                    status: w.status,
                    released: w.released,
                    redacted: w.redacted,
                    alert: w.alert,
                }));
                let record = Record {
                    v: w.v,
                    chain: w.chain,
                    seq: w.seq,
                    prev: w.prev,
                    time: w.time,
                    body,
                    alg: w.alg,
                    kid: w.kid,
                };
                Ok((record, w.hash))
            }
            "checkpoint" => {
                let w: CheckpointWire = serde_json::from_str(json).map_err(|e| e.to_string())?;
                let _ = w.kind;
                let record = Record {
                    v: w.v,
                    chain: w.chain,
                    seq: w.seq,
                    prev: w.prev,
                    time: w.time,
                    body: Body::Checkpoint {
                        interval_s: w.interval_s,
                    },
                    alg: w.alg,
                    kid: w.kid,
                };
                Ok((record, w.hash))
            }
            other => Err(format!("unknown record kind {}", json_string(other))),
        }
    }

    /// The decision part, for decision records.
    pub fn decision(&self) -> Option<&DecisionBody> {
        match &self.body {
            Body::Decision(d) => Some(d),
            Body::Checkpoint { .. } => None,
        }
    }

    /// The canonical bytes: the record without `hash` (see the module documentation).
    pub fn canonical(&self) -> String {
        // Written straight into one string sized for a typical record: one allocation,
        // no intermediate strings per member or per field entry.
        let fields = match &self.body {
            Body::Decision(d) => d.released.len() + d.redacted.len(),
            Body::Checkpoint { .. } => 0,
        };
        let mut out = String::with_capacity(512 + 64 * fields);
        let mut o = JsonWriter::new(&mut out);
        o.num("v", self.v);
        match &self.body {
            Body::Decision(_) => o.str("kind", "decision"),
            Body::Checkpoint { .. } => o.str("kind", "checkpoint"),
        }
        o.str("chain", &self.chain);
        o.num("seq", self.seq);
        o.str("prev", &self.prev);
        o.str("time", &self.time);
        match &self.body {
            Body::Decision(d) => {
                o.str("request_id", &d.request_id);
                o.str("caller", &d.caller);
                o.opt("subject", d.subject.as_deref());
                o.opt("acts_for", d.acts_for.as_deref());
                o.opt("purpose", d.purpose.as_deref());
                o.opt("consent_id", d.consent_id.as_deref());
                o.opt("route", d.route.as_deref());
                o.opt("rule", d.rule.as_deref());
                o.str("decision", &d.decision);
                o.str("code", &d.code);
                o.str("reason", &d.reason);
                if self.v >= 2 {
                    o.opt("outcome", d.outcome.as_deref());
                    o.num("status", d.status.unwrap_or(0));
                }
                o.objects("released", &d.released, |m, r| {
                    m.str("field", &r.field);
                    m.num("count", r.count);
                });
                o.objects("redacted", &d.redacted, |m, r| {
                    m.str("field", &r.field);
                    m.str("action", &r.action);
                    m.num("count", r.count);
                });
                o.opt("alert", d.alert.as_deref());
            }
            Body::Checkpoint { interval_s } => o.num("interval_s", *interval_s),
        }
        o.str("alg", &self.alg);
        o.opt("kid", self.kid.as_deref());
        o.finish();
        out
    }
}

/// Compact JSON, one object written into a string, members in the order written.
struct JsonWriter<'o> {
    out: &'o mut String,
    /// The object's `{` is written (a member was).
    open: bool,
}

impl<'o> JsonWriter<'o> {
    fn new(out: &'o mut String) -> Self {
        Self { out, open: false }
    }

    fn key(&mut self, name: &str) {
        self.out.push(if self.open { ',' } else { '{' });
        self.open = true;
        push_json_string(self.out, name);
        self.out.push(':');
    }

    fn str(&mut self, name: &str, value: &str) {
        self.key(name);
        push_json_string(self.out, value);
    }

    /// A member whose value is an array of objects, one per item, each written by
    /// `write`.
    fn objects<T>(&mut self, name: &str, items: &[T], write: impl Fn(&mut JsonWriter<'_>, &T)) {
        self.key(name);
        self.out.push('[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let mut m = JsonWriter::new(self.out);
            write(&mut m, item);
            m.finish();
        }
        self.out.push(']');
    }

    fn opt(&mut self, name: &str, value: Option<&str>) {
        match value {
            Some(v) => self.str(name, v),
            None => {
                self.key(name);
                self.out.push_str("null");
            }
        }
    }

    fn num(&mut self, name: &str, value: u64) {
        self.key(name);
        push_decimal(self.out, value);
    }

    /// Closes the object (`{}` when no member was written).
    fn finish(self) {
        if !self.open {
            self.out.push('{');
        }
        self.out.push('}');
    }
}

/// The decimal digits of `n`, without a temporary string.
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

/// A JSON string with the canonical (minimal) escaping. Runs of characters that need
/// no escape (everything but `"`, `\` and controls) are found eight bytes at a time
/// and copied whole.
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut run = 0;
    let mut i = next_escape(bytes, 0);
    while let Some(&b) = bytes.get(i) {
        // `i` is at an ASCII byte, so both slices end on character boundaries.
        out.push_str(s.get(run..i).unwrap_or_default());
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            _ => {
                out.push_str("\\u00");
                out.push(char::from(HEX_DIGITS[usize::from(b >> 4)]));
                out.push(char::from(HEX_DIGITS[usize::from(b & 15)]));
            }
        }
        run = i + 1;
        i = next_escape(bytes, run);
    }
    out.push_str(s.get(run..).unwrap_or_default());
    out.push('"');
}

/// The first byte at or after `from` that a JSON string must escape (`"`, `\\`, or a
/// control character), or `bytes.len()`. Bytes of UTF-8 sequences never match.
fn next_escape(bytes: &[u8], from: usize) -> usize {
    crate::redact::syntax::next_special::<false>(bytes, from)
}

/// An id read from a log, safe to print: as is when it is plain (letters, digits,
/// `-`, `_`, `.`, as chain ids and key ids are), else as a JSON string, so a tampered
/// log cannot put control characters on a terminal.
pub fn shown(id: &str) -> std::borrow::Cow<'_, str> {
    let plain = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if plain {
        std::borrow::Cow::Borrowed(id)
    } else {
        std::borrow::Cow::Owned(json_string(id))
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::new();
    push_json_string(&mut out, s);
    out
}

/// The canonical bytes with the hash member appended.
fn with_hash(canonical: &str, hash: &str) -> String {
    let open = canonical.strip_suffix('}').unwrap_or(canonical);
    format!("{open},\"hash\":\"{hash}\"}}")
}

fn digest(bytes: &[u8], key: Option<&AuditKey>) -> [u8; 32] {
    match key {
        Some(k) => hmac_sha256(&k.secret, &[bytes]),
        None => Sha256::digest(bytes).into(),
    }
}

fn hmac_sha256(secret: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return [0; 32];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(HEX_DIGITS[usize::from(b >> 4)]));
        s.push(char::from(HEX_DIGITS[usize::from(b & 15)]));
    }
    s
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Constant-time comparison of two hex hashes.
fn same_hash(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

// ---------------------------------------------------------------------------------
// Time: RFC 3339 UTC with milliseconds, without a time zone database.

pub use crate::host::unix_millis;

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a Unix time in milliseconds.
pub fn format_time(ms: u64) -> String {
    let days = ms / 86_400_000;
    let rem = ms % 86_400_000;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// The inverse of [`format_time`]: only that exact shape is accepted.
pub fn parse_time(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 24 {
        return None;
    }
    let shape = b"dddd-dd-ddTdd:dd:dd.dddZ";
    for (c, want) in b.iter().zip(shape) {
        let ok = if *want == b'd' {
            c.is_ascii_digit()
        } else {
            c == want
        };
        if !ok {
            return None;
        }
    }
    let num = |range: std::ops::Range<usize>| -> Option<u64> { s.get(range)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if y < 1970 || !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) {
        return None;
    }
    if h > 23 || mi > 59 || se > 59 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    Some(((days * 24 + h) * 60 + mi) * 60_000 + se * 1000 + ms)
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// (year ≥ 1970, month, day) to days since 1970-01-01.
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y % 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

// ---------------------------------------------------------------------------------
// Verification.

/// Every chain verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySummary {
    pub chains: Vec<ChainSummary>,
    /// Records verified (decisions and checkpoints).
    pub records: u64,
    /// Lines of input that were not records (the proxy's other log lines).
    pub other_lines: u64,
    pub first_time: Option<String>,
    pub last_time: Option<String>,
    /// Things that are not failures but deserve a look (a chain that fell silent).
    pub warnings: Vec<String>,
}

/// One verified chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    pub chain: String,
    /// Records in the chain; its last `seq` is the same number.
    pub records: u64,
    pub checkpoints: u64,
    pub first_time: String,
    pub last_time: String,
    /// The key ids its records were keyed with (empty: an unkeyed chain).
    pub kids: Vec<String>,
}

/// The first bad record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    /// 1-based line number in the input.
    pub line: usize,
    pub chain: Option<String>,
    pub seq: Option<u64>,
    pub reason: FailureReason,
}

/// Why a record is bad.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureReason {
    /// Not an audit record of a known version and shape.
    Malformed(String),
    /// Parsed, but its bytes are not what the plugin writes.
    NotCanonical,
    /// The record's hash does not match its content.
    HashMismatch,
    /// Keyed with a key id that was not given.
    UnknownKey(String),
    /// Unkeyed, while keys were given, so keyed records are required.
    Unkeyed,
    /// `prev` is not the hash of the chain's previous record.
    PrevMismatch { previous_seq: u64 },
    /// The `seq` already appeared in this chain.
    Duplicate { first_line: usize, identical: bool },
    /// Records `from..=to` of the chain are not in the input before this one.
    Missing { from: u64, to: u64 },
    /// Record `expected` should come here; it appears later, at `line`.
    Reordered { expected: u64, line: usize },
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::Malformed(why) => write!(f, "not a valid audit record ({why})"),
            FailureReason::NotCanonical => {
                f.write_str("record is not in canonical form (record altered)")
            }
            FailureReason::HashMismatch => {
                f.write_str("hash does not match (record altered, or forged without the key)")
            }
            FailureReason::UnknownKey(kid) => write!(
                f,
                "keyed with key {}, which was not given (cannot be verified)",
                json_string(kid)
            ),
            FailureReason::Unkeyed => f.write_str(
                "record is not keyed but keyed records are required (forged or downgraded record)",
            ),
            FailureReason::PrevMismatch { previous_seq } => write!(
                f,
                "prev does not match the hash of seq {previous_seq} (record inserted or replaced)"
            ),
            FailureReason::Duplicate {
                first_line,
                identical: true,
            } => write!(f, "duplicate of line {first_line} (record replayed)"),
            FailureReason::Duplicate {
                first_line,
                identical: false,
            } => write!(f, "seq already used at line {first_line} (record inserted)"),
            FailureReason::Missing { from, to } if from == to => {
                write!(
                    f,
                    "seq {from} is missing before this record (record removed)"
                )
            }
            FailureReason::Missing { from, to } => write!(
                f,
                "seq {from} to {to} are missing before this record (records removed)"
            ),
            FailureReason::Reordered { expected, line } => write!(
                f,
                "seq {expected} should come before this record but is at line {line} (records reordered)"
            ),
        }
    }
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        if let Some(chain) = &self.chain {
            write!(f, "chain {} ", shown(chain))?;
        }
        if let Some(seq) = self.seq {
            write!(f, "seq {seq}")?;
        }
        if self.chain.is_some() || self.seq.is_some() {
            f.write_str(": ")?;
        }
        write!(f, "{}", self.reason)
    }
}

impl std::error::Error for VerifyFailure {}

struct Parsed {
    line: usize,
    text: String,
    result: Result<(Record, String), String>,
}

#[derive(Default)]
struct ChainState {
    last_seq: u64,
    last_hash: String,
    seen: HashMap<u64, (usize, String)>,
    checkpoints: u64,
    interval_s: Option<u64>,
    first_time: String,
    last_time: String,
    kids: Vec<String>,
}

/// Verifies every chain in `lines` (a log: records are found with [`extract_record`],
/// other lines are skipped). `keys` empty: records must be unkeyed (SHA-256); keys
/// given: every record must be keyed with one of them. Returns the first bad record.
pub fn verify<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    keys: &[AuditKey],
) -> Result<VerifySummary, VerifyFailure> {
    // First pass: parse every record, and index (chain, seq) to tell a reordered
    // record (it is later in the input) from a removed one.
    let mut parsed = Vec::new();
    let mut other_lines = 0u64;
    let mut index: HashMap<(String, u64), usize> = HashMap::new();
    for (i, line) in lines.into_iter().enumerate() {
        let Some(text) = extract_record(line) else {
            other_lines += 1;
            continue;
        };
        let result = Record::parse(text);
        if let Ok((r, _)) = &result {
            index.entry((r.chain.clone(), r.seq)).or_insert(i + 1);
        }
        parsed.push(Parsed {
            line: i + 1,
            text: text.to_owned(),
            result,
        });
    }

    let mut chains: Vec<(String, ChainState)> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut records = 0u64;
    for p in parsed {
        let fail = |chain: Option<&str>, seq: Option<u64>, reason| VerifyFailure {
            line: p.line,
            chain: chain.map(str::to_owned),
            seq,
            reason,
        };
        let (record, hash) = match p.result {
            Ok(ok) => ok,
            Err(why) => return Err(fail(None, None, FailureReason::Malformed(why))),
        };
        let (chain, seq) = (Some(record.chain.as_str()), Some(record.seq));
        if parse_time(&record.time).is_none() {
            let why = format!(
                "time {} is not YYYY-MM-DDTHH:MM:SS.mmmZ",
                json_string(&record.time)
            );
            return Err(fail(chain, seq, FailureReason::Malformed(why)));
        }
        if !is_hex64(&hash) || !is_hex64(&record.prev) {
            let why = "hash and prev must be 64 lowercase hex digits".to_owned();
            return Err(fail(chain, seq, FailureReason::Malformed(why)));
        }
        let canonical = record.canonical();
        if with_hash(&canonical, &hash) != p.text.trim_end() {
            return Err(fail(chain, seq, FailureReason::NotCanonical));
        }
        let key = match (record.alg.as_str(), record.kid.as_deref()) {
            (ALG_HMAC, Some(kid)) => match keys.iter().find(|k| k.kid == kid) {
                Some(k) => Some(k),
                None => return Err(fail(chain, seq, FailureReason::UnknownKey(kid.to_owned()))),
            },
            (ALG_SHA256, None) if keys.is_empty() => None,
            (ALG_SHA256, None) => return Err(fail(chain, seq, FailureReason::Unkeyed)),
            (alg, _) => {
                let why = format!("unknown alg {} or kid", json_string(alg));
                return Err(fail(chain, seq, FailureReason::Malformed(why)));
            }
        };
        if !same_hash(&hex(&digest(canonical.as_bytes(), key)), &hash) {
            return Err(fail(chain, seq, FailureReason::HashMismatch));
        }

        let slot = *by_id.entry(record.chain.clone()).or_insert_with(|| {
            chains.push((
                record.chain.clone(),
                ChainState {
                    last_hash: ZERO_HASH.to_owned(),
                    first_time: record.time.clone(),
                    ..ChainState::default()
                },
            ));
            chains.len() - 1
        });
        let Some((_, state)) = chains.get_mut(slot) else {
            continue;
        };
        if let Some((first_line, first_hash)) = state.seen.get(&record.seq) {
            let identical = *first_hash == hash;
            let reason = FailureReason::Duplicate {
                first_line: *first_line,
                identical,
            };
            return Err(fail(chain, seq, reason));
        }
        let expected = state.last_seq.saturating_add(1);
        if record.seq != expected {
            let later = index.get(&(record.chain.clone(), expected)).copied();
            let reason = match later {
                Some(line) if line > p.line => FailureReason::Reordered { expected, line },
                _ if record.seq > expected => FailureReason::Missing {
                    from: expected,
                    to: record.seq - 1,
                },
                _ => FailureReason::Reordered {
                    expected,
                    line: later.unwrap_or(0),
                },
            };
            return Err(fail(chain, seq, reason));
        }
        if record.prev != state.last_hash {
            let reason = FailureReason::PrevMismatch {
                previous_seq: state.last_seq,
            };
            return Err(fail(chain, seq, reason));
        }
        state.last_seq = record.seq;
        state.seen.insert(record.seq, (p.line, hash.clone()));
        state.last_hash = hash;
        state.last_time = record.time.clone();
        if let Some(kid) = &record.kid
            && !state.kids.contains(kid)
        {
            state.kids.push(kid.clone());
        }
        if let Body::Checkpoint { interval_s } = record.body {
            state.checkpoints += 1;
            state.interval_s = Some(interval_s);
        }
        records += 1;
    }

    let first_time = chains.iter().map(|(_, c)| c.first_time.clone()).min();
    let last_time = chains.iter().map(|(_, c)| c.last_time.clone()).max();
    let end = last_time.as_deref().and_then(parse_time).unwrap_or(0);
    let mut warnings = Vec::new();
    for (id, c) in &chains {
        let (Some(interval), Some(last)) = (c.interval_s, parse_time(&c.last_time)) else {
            continue;
        };
        let silent = end.saturating_sub(last);
        if silent > interval.saturating_mul(2000) {
            warnings.push(format!(
                "chain {}: last record at {} but the log goes on until {}; checkpoints are due every {interval} s, so its tail may have been cut (or its worker stopped)",
                shown(id),
                c.last_time,
                last_time.as_deref().unwrap_or_default()
            ));
        }
    }
    Ok(VerifySummary {
        chains: chains
            .into_iter()
            .map(|(chain, c)| ChainSummary {
                chain,
                records: c.last_seq,
                checkpoints: c.checkpoints,
                first_time: c.first_time,
                last_time: c.last_time,
                kids: c.kids,
            })
            .collect(),
        records,
        other_lines,
        first_time,
        last_time,
        warnings,
    })
}

// ---------------------------------------------------------------------------------
// Shipping to a collector.

/// Where and how the records are shipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipperConfig {
    /// The proxy's upstream cluster that reaches the collector.
    pub cluster: String,
    pub authority: String,
    pub path: String,
    /// Extra request headers (e.g. a tenant id). Not for secrets kept in the policy.
    pub headers: Vec<(String, String)>,
    /// A batch is sent when it has this many records, …
    pub max_batch_records: usize,
    /// … or its body would reach this many bytes, …
    pub max_batch_bytes: usize,
    /// … or its oldest record has waited this long.
    pub max_batch_age: Duration,
    /// The queue never holds more records than this; the oldest are dropped first.
    pub max_queue_records: usize,
    /// The queue never holds more bytes of records than this.
    pub max_queue_bytes: usize,
    pub timeout: Duration,
    /// The first retry waits this long; each failure doubles it up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl ShipperConfig {
    /// Defaults: batches of at most 100 records, 256 KiB or 5 s of age; a queue of at
    /// most 10 000 records and 4 MiB; a 5 s timeout; retries after 1 s, 2 s, … 60 s.
    pub fn new(
        cluster: impl Into<String>,
        authority: impl Into<String>,
        path: impl Into<String>,
    ) -> Self {
        Self {
            cluster: cluster.into(),
            authority: authority.into(),
            path: path.into(),
            headers: Vec::new(),
            max_batch_records: 100,
            max_batch_bytes: 256 * 1024,
            max_batch_age: Duration::from_secs(5),
            max_queue_records: 10_000,
            max_queue_bytes: 4 * 1024 * 1024,
            timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// The shipping queue, as a pure state machine. The plugin's timer code calls
/// [`push`](Self::push) for every record, [`next_batch`](Self::next_batch) on each
/// tick (and dispatches the call it returns with `Host::dispatch`), and
/// [`on_response`](Self::on_response) with the collector's answer (`None` for a
/// timeout, a reset or a refused dispatch). One batch is in flight at a time.
///
/// - 2xx: the batch is shipped. 408, 429, 5xx and no answer: the batch goes back to
///   the front of the queue and is retried after an exponential backoff. Any other
///   status means the collector will never take it: the batch is dropped and counted
///   in [`rejected`](Self::rejected).
/// - Memory is bounded: the queue keeps at most `max_queue_records` records and
///   `max_queue_bytes` bytes, plus the batch in flight; when full, the oldest records
///   are dropped first and counted in [`dropped`](Self::dropped).
/// - A batch that gets no answer within twice its timeout counts as failed, so a lost
///   callback cannot stall shipping.
#[derive(Debug, Clone)]
pub struct AuditShipper {
    config: ShipperConfig,
    queue: VecDeque<(String, u64)>,
    queued_bytes: usize,
    in_flight: Vec<(String, u64)>,
    in_flight_since: u64,
    backoff_ms: u64,
    retry_at: u64,
    dropped: u64,
    rejected: u64,
    shipped: u64,
}

impl AuditShipper {
    pub fn new(config: ShipperConfig) -> Self {
        Self {
            config,
            queue: VecDeque::new(),
            queued_bytes: 0,
            in_flight: Vec::new(),
            in_flight_since: 0,
            backoff_ms: 0,
            retry_at: 0,
            dropped: 0,
            rejected: 0,
            shipped: 0,
        }
    }

    /// Queues one record line (without the log marker). A line larger than the whole
    /// queue is dropped at once (it would otherwise push every other record out).
    pub fn push(&mut self, line: &str, now: SystemTime) {
        if line.len() > self.config.max_queue_bytes {
            self.dropped += 1;
            return;
        }
        self.queued_bytes += line.len();
        self.queue.push_back((line.to_owned(), unix_millis(now)));
        self.trim();
    }

    fn trim(&mut self) {
        while self.queue.len() > self.config.max_queue_records
            || self.queued_bytes > self.config.max_queue_bytes
        {
            let Some((old, _)) = self.queue.pop_front() else {
                break;
            };
            self.queued_bytes -= old.len();
            self.dropped += 1;
        }
    }

    /// The next batch to send, if one is due: none while one is in flight or during a
    /// backoff; otherwise when the queue holds a full batch or its oldest record is
    /// `max_batch_age` old (a retry goes as soon as its backoff is over).
    pub fn next_batch(&mut self, now: SystemTime) -> Option<OutgoingCall> {
        let now_ms = unix_millis(now);
        if !self.in_flight.is_empty() {
            let deadline = self
                .in_flight_since
                .saturating_add(millis(self.config.timeout).saturating_mul(2));
            if now_ms < deadline {
                return None;
            }
            self.on_response(None, now);
        }
        if now_ms < self.retry_at {
            return None;
        }
        let (_, oldest) = self.queue.front()?;
        let full = self.queue.len() >= self.config.max_batch_records
            || self.queued_bytes + self.queue.len() + 1 >= self.config.max_batch_bytes;
        let old = now_ms.saturating_sub(*oldest) >= millis(self.config.max_batch_age);
        if !(full || old || self.backoff_ms > 0) {
            return None;
        }
        let mut body = String::from("[");
        while let Some((line, _)) = self.queue.front() {
            let grows = line.len() + 1;
            let has_one = !self.in_flight.is_empty();
            if has_one
                && (self.in_flight.len() >= self.config.max_batch_records
                    || body.len() + grows + 1 > self.config.max_batch_bytes)
            {
                break;
            }
            let Some((line, at)) = self.queue.pop_front() else {
                break;
            };
            self.queued_bytes -= line.len();
            if has_one {
                body.push(',');
            }
            body.push_str(&line);
            self.in_flight.push((line, at));
        }
        body.push(']');
        self.in_flight_since = now_ms;
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        headers.extend(self.config.headers.iter().cloned());
        Some(OutgoingCall {
            cluster: self.config.cluster.clone(),
            method: "POST".to_owned(),
            authority: self.config.authority.clone(),
            path: self.config.path.clone(),
            headers,
            body: body.into_bytes(),
            timeout: self.config.timeout,
        })
    }

    /// The collector's answer to the batch in flight (`None`: no answer).
    pub fn on_response(&mut self, status: Option<u16>, now: SystemTime) {
        if self.in_flight.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.in_flight);
        match status {
            Some(200..=299) => {
                self.shipped += batch.len() as u64;
                self.backoff_ms = 0;
                self.retry_at = 0;
            }
            None | Some(408 | 429 | 500..=599) => {
                for (line, at) in batch.into_iter().rev() {
                    self.queued_bytes += line.len();
                    self.queue.push_front((line, at));
                }
                self.trim();
                let initial = millis(self.config.backoff_initial).max(1);
                self.backoff_ms = if self.backoff_ms == 0 {
                    initial
                } else {
                    self.backoff_ms
                        .saturating_mul(2)
                        .min(millis(self.config.backoff_max).max(initial))
                };
                self.retry_at = unix_millis(now).saturating_add(self.backoff_ms);
            }
            Some(_) => {
                self.rejected += batch.len() as u64;
                self.backoff_ms = 0;
                self.retry_at = 0;
            }
        }
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Records the collector refused for good (a 4xx other than 408/429).
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Records the collector accepted.
    pub fn shipped(&self) -> u64 {
        self.shipped
    }

    /// Records waiting (not counting the batch in flight).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The current retry delay (zero when the last batch went through).
    pub fn backoff(&self) -> Duration {
        Duration::from_millis(self.backoff_ms)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_795_780_800_000; // 2026-11-27T12:00:00.000Z

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn key(kid: &str, secret: &[u8]) -> AuditKey {
        AuditKey {
            kid: kid.into(),
            secret: secret.to_vec(),
        }
    }

    fn k1() -> AuditKey {
        key("k1", b"audit-secret-one-32-bytes-long!!")
    }

    fn entry(ms: u64, n: u64) -> AuditEntry<'static> {
        let deny = n.is_multiple_of(3);
        let mut e = AuditEntry::new(
            at(ms),
            "0f7cb765-86fc-485c-b1a8-6470c46bf45a",
            "spiffe://insurer.example/claims",
            if deny {
                Decision::Deny
            } else {
                Decision::Allow
            },
            deny.then_some(Code::AccessDenied),
            if deny {
                "no_rule_matched"
            } else {
                "rule_matched"
            },
        );
        e.status = if deny { 403 } else { 200 };
        e.subject = Some("patient-0042");
        e.purpose = Some("claims");
        e.consent_id = Some("c-7781");
        e.route = Some("GET /patients/{id}");
        if !deny {
            e.rule = Some("insurer-read");
            e.fields
                .released("$.id", 1)
                .redacted("$.identity.name", Redaction::Pseudonymise, 1)
                .redacted("$.visits[*].diagnosis", Redaction::Remove, 3);
        }
        e
    }

    /// `n` records of one chain, 1 s apart.
    fn chain(id: &str, key: Option<AuditKey>, n: u64) -> Vec<String> {
        let mut t = AuditTrail::new(id, key);
        (1..=n).map(|i| t.record(entry(T0 + i * 1000, i))).collect()
    }

    fn refs(lines: &[String]) -> Vec<&str> {
        lines.iter().map(String::as_str).collect()
    }

    fn failure(lines: &[String], keys: &[AuditKey]) -> VerifyFailure {
        match verify(refs(lines), keys) {
            Ok(s) => panic!("verified, but should not: {s:?}"),
            Err(f) => f,
        }
    }

    #[test]
    fn a_record_is_one_canonical_line_in_the_documented_member_order() {
        let mut t = AuditTrail::new("3f0c9a51d2e87b46", Some(k1()));
        let line = t.record(entry(T0 + 123, 1));
        let canonical = concat!(
            r#"{"v":2,"kind":"decision","chain":"3f0c9a51d2e87b46","seq":1,"#,
            r#""prev":"0000000000000000000000000000000000000000000000000000000000000000","#,
            r#""time":"2026-11-27T12:00:00.123Z","#,
            r#""request_id":"0f7cb765-86fc-485c-b1a8-6470c46bf45a","#,
            r#""caller":"spiffe://insurer.example/claims","#,
            r#""subject":"hmac-sha256:k1:SUBJECT","acts_for":null,"purpose":"claims","#,
            r#""consent_id":"c-7781","route":"GET /patients/{id}","rule":"insurer-read","#,
            r#""decision":"allow","code":"ok","reason":"rule_matched","#,
            r#""outcome":"released","status":200,"#,
            r#""released":[{"field":"$.id","count":1}],"#,
            r#""redacted":[{"field":"$.identity.name","action":"pseudonymise","count":1},"#,
            r#"{"field":"$.visits[*].diagnosis","action":"remove","count":3}],"#,
            r#""alert":null,"alg":"hmac-sha256","kid":"k1"}"#
        );
        // The subject pseudonym: HMAC-SHA-256 under the key, computed independently.
        let mut mac = Hmac::<Sha256>::new_from_slice(&k1().secret).unwrap();
        mac.update(b"consentry-audit-subject\0patient-0042");
        let subject = hex(&mac.finalize().into_bytes()[..16]);
        let canonical = canonical.replace("SUBJECT", &subject);
        // The hash: HMAC-SHA-256 of exactly the canonical bytes.
        let mut mac = Hmac::<Sha256>::new_from_slice(&k1().secret).unwrap();
        mac.update(canonical.as_bytes());
        let hash = hex(&mac.finalize().into_bytes());
        let expected = format!(
            "{},\"hash\":\"{hash}\"}}",
            canonical.strip_suffix('}').unwrap()
        );
        assert_eq!(line, expected);
        assert!(!line.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["seq"], 1);
        assert_eq!(t.seq(), 1);
    }

    #[test]
    fn version_1_records_still_verify_and_cannot_be_upgraded_silently() {
        // A version 1 record: no `outcome`, no `status`.
        let mut r = Record::parse(&chain("aaaa", None, 1)[0]).unwrap().0;
        r.v = 1;
        if let Body::Decision(d) = &mut r.body {
            d.outcome = None;
            d.status = None;
        }
        let canonical = r.canonical();
        assert!(!canonical.contains("outcome"), "{canonical}");
        let line = with_hash(&canonical, &hex(&Sha256::digest(canonical.as_bytes())));
        assert_eq!(verify([line.as_str()], &[]).unwrap().records, 1);
        // The same bytes claiming version 2 lack its members.
        let forged = line.replacen("{\"v\":1,", "{\"v\":2,", 1);
        assert!(matches!(
            failure(&[forged], &[]).reason,
            FailureReason::Malformed(why) if why.contains("version 2 record has a status")
        ));
    }

    #[test]
    fn a_parsed_record_is_one_its_canonical_form_writes_back() {
        // Found by the `audit` fuzz target: a version 1 record carrying version 2's
        // members parsed, and its canonical form silently dropped them.
        let line = &chain("aaaa", None, 1)[0];
        let v1 = line.replacen("{\"v\":2,", "{\"v\":1,", 1);
        let e = Record::parse(&v1).unwrap_err();
        assert!(e.contains("version 1 record has no outcome"), "{e}");
        let no_status = line.replacen("\"status\":200,", "", 1);
        let e = Record::parse(&no_status).unwrap_err();
        assert!(e.contains("version 2 record has a status"), "{e}");
        let null_status = line.replacen("\"status\":200,", "\"status\":null,", 1);
        assert!(Record::parse(&null_status).is_err());
        for line in chain("aaaa", Some(k1()), 3) {
            let (record, hash) = Record::parse(&line).unwrap();
            assert_eq!(with_hash(&record.canonical(), &hash), line);
        }
    }

    #[test]
    fn a_record_whose_strings_hold_the_marker_verifies_bare_and_in_a_log() {
        // Found by the `audit` fuzz target: a bare record (a collector's file) whose
        // request id held the marker's text was cut at the marker and refused.
        let mut e = entry(T0, 1);
        e.request_id = "x consentry-audit {\"v\":2}";
        let line = AuditTrail::new("aaaa", None).record(e);
        for text in [
            line.clone(),
            emission(&line),
            format!("[info] {}", emission(&line)),
        ] {
            assert_eq!(extract_record(&text), Some(line.as_str()), "{text}");
            assert_eq!(verify([text.as_str()], &[]).unwrap().records, 1);
        }
    }

    #[test]
    fn records_link_to_the_previous_hash_and_unkeyed_chains_use_sha256() {
        let lines = chain("c0ffee", None, 3);
        let (r1, h1) = Record::parse(&lines[0]).unwrap();
        let (r2, _) = Record::parse(&lines[1]).unwrap();
        assert_eq!(r1.prev, ZERO_HASH);
        assert_eq!(r2.prev, h1);
        assert_eq!(r1.alg, "sha256");
        assert_eq!(r1.kid, None);
        assert_eq!(h1, hex(&Sha256::digest(r1.canonical().as_bytes())));
        let subject = r1.decision().unwrap().subject.clone().unwrap();
        assert!(subject.starts_with("sha256:"), "{subject}");
        assert_eq!(subject.len(), "sha256:".len() + 32);
    }

    #[test]
    fn no_personal_value_or_key_reaches_a_record() {
        let secret = b"audit-secret-one-32-bytes-long!!";
        for k in [None, Some(k1())] {
            for line in chain("c", k, 4) {
                assert!(!line.contains("patient-0042"), "{line}");
                assert!(!line.contains(std::str::from_utf8(secret).unwrap()));
            }
        }
        assert!(!format!("{:?}", k1()).contains("audit-secret"));
        // The pseudonym is stable for a key and differs between keys.
        let a = pseudonymise_subject("patient-0042", Some(&k1()));
        let b = pseudonymise_subject("patient-0042", Some(&key("k2", b"other")));
        assert_eq!(a, pseudonymise_subject("patient-0042", Some(&k1())));
        assert_ne!(a[15..], b[15..]);
    }

    #[test]
    fn json_strings_are_escaped_minimally_wherever_the_escape_falls() {
        // The reference: one character at a time, the canonical escapes.
        fn reference(s: &str) -> String {
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\u{8}' => out.push_str("\\b"),
                    '\u{c}' => out.push_str("\\f"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        }
        let tricky = "a\"b\\c\u{1}\u{1f}\u{7f}é😀\n\r\t\u{8}\u{c}z";
        for lead in 0..12 {
            for tail in 0..12 {
                let s = format!("{}{tricky}{}", "x".repeat(lead), "é".repeat(tail));
                let mut out = String::new();
                push_json_string(&mut out, &s);
                assert_eq!(out, reference(&s), "{s:?}");
            }
        }
    }

    #[test]
    fn strings_are_escaped_so_a_record_stays_one_line_and_verifies() {
        let mut t = AuditTrail::new("c", None);
        let mut e = entry(T0, 1);
        e.caller = "evil\"\\\n\r\t\u{1}\u{7f}<b>é\u{2028}";
        let line = t.record(e);
        assert!(!line.contains('\n') && !line.contains('\r'));
        assert!(line.contains(r#""caller":"evil\"\\\n\r\t\u0001"#), "{line}");
        // serde_json writes the same bytes for the string.
        let (r, _) = Record::parse(&line).unwrap();
        let caller = &r.decision().unwrap().caller;
        assert_eq!(caller, "evil\"\\\n\r\t\u{1}\u{7f}<b>é\u{2028}");
        assert!(line.contains(&serde_json::to_string(caller).unwrap()));
        assert!(verify([line.as_str()], &[]).is_ok());
    }

    #[test]
    fn interleaved_chains_in_an_envoy_log_verify_with_a_summary() {
        let a = chain("aaaa", Some(k1()), 4);
        let b = chain("bbbb", Some(k1()), 3);
        let mut log = vec!["[2026-11-27 12:00:00.000][1][info][main] starting".to_owned()];
        for (i, record) in a.iter().enumerate() {
            log.push(format!(
                "[2026-11-27 12:00:0{i}.000][20966][info][wasm] [source/extensions/common/wasm/context.cc:1151] wasm log consentry consentry consentry: {}",
                emission(record)
            ));
            if let Some(r) = b.get(i) {
                log.push(r.clone());
            }
        }
        log.push(String::new());
        let s = verify(refs(&log), &[k1()]).unwrap();
        assert_eq!(s.records, 7);
        assert_eq!(s.other_lines, 2);
        assert_eq!(s.chains.len(), 2);
        assert_eq!(s.chains[0].chain, "aaaa");
        assert_eq!(s.chains[0].records, 4);
        assert_eq!(s.chains[0].kids, vec!["k1".to_owned()]);
        assert_eq!(s.chains[1].records, 3);
        assert_eq!(s.first_time.as_deref(), Some("2026-11-27T12:00:01.000Z"));
        assert_eq!(s.last_time.as_deref(), Some("2026-11-27T12:00:04.000Z"));
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn an_altered_record_is_named_by_line_chain_and_seq() {
        let mut lines = chain("aaaa", Some(k1()), 5);
        lines[2] = lines[2].replace("\"decision\":\"deny\"", "\"decision\":\"allow\"");
        let f = failure(&lines, &[k1()]);
        assert_eq!(f.line, 3);
        assert_eq!(f.chain.as_deref(), Some("aaaa"));
        assert_eq!(f.seq, Some(3));
        assert_eq!(f.reason, FailureReason::HashMismatch);
        assert_eq!(
            f.to_string(),
            "line 3: chain aaaa seq 3: hash does not match (record altered, or forged without the key)"
        );
    }

    #[test]
    fn bytes_that_are_not_canonical_are_refused_before_the_hash() {
        let mut lines = chain("aaaa", Some(k1()), 2);
        lines[1] = lines[1].replacen("\"seq\":2", "\"seq\": 2", 1);
        assert_eq!(failure(&lines, &[k1()]).reason, FailureReason::NotCanonical);
        let mut lines = chain("aaaa", Some(k1()), 2);
        lines[1] = lines[1].replacen("\"caller\":\"spiffe", "\"caller\":\"\\u0073piffe", 1);
        assert_eq!(failure(&lines, &[k1()]).reason, FailureReason::NotCanonical);
        let mut lines = chain("aaaa", Some(k1()), 2);
        lines[1] = lines[1].replacen("{\"v\":2,", "{\"v\":2,\"v\":2,", 1);
        assert!(matches!(
            failure(&lines, &[k1()]).reason,
            FailureReason::Malformed(_)
        ));
    }

    #[test]
    fn an_unkeyed_chain_rewritten_at_one_record_breaks_at_the_next() {
        let mut lines = chain("aaaa", None, 4);
        let (mut r, _) = Record::parse(&lines[1]).unwrap();
        if let Body::Decision(d) = &mut r.body {
            d.caller = "someone-else".into();
        }
        let canonical = r.canonical();
        lines[1] = with_hash(&canonical, &hex(&Sha256::digest(canonical.as_bytes())));
        let f = failure(&lines, &[]);
        assert_eq!((f.line, f.seq), (3, Some(3)));
        assert_eq!(f.reason, FailureReason::PrevMismatch { previous_seq: 2 });
    }

    #[test]
    fn a_removed_record_is_a_gap() {
        let mut lines = chain("aaaa", Some(k1()), 6);
        lines.remove(2);
        lines.remove(2);
        let f = failure(&lines, &[k1()]);
        assert_eq!((f.line, f.seq), (3, Some(5)));
        assert_eq!(f.reason, FailureReason::Missing { from: 3, to: 4 });
        assert_eq!(
            f.to_string(),
            "line 3: chain aaaa seq 5: seq 3 to 4 are missing before this record (records removed)"
        );
    }

    #[test]
    fn a_chain_that_does_not_start_at_one_lost_its_head() {
        let lines = chain("aaaa", Some(k1()), 4);
        let f = failure(&lines[2..], &[k1()]);
        assert_eq!((f.line, f.seq), (1, Some(3)));
        assert_eq!(f.reason, FailureReason::Missing { from: 1, to: 2 });
    }

    #[test]
    fn a_reordered_record_names_where_the_missing_one_is() {
        let mut lines = chain("aaaa", Some(k1()), 5);
        lines.swap(1, 3);
        let f = failure(&lines, &[k1()]);
        assert_eq!((f.line, f.seq), (2, Some(4)));
        assert_eq!(
            f.reason,
            FailureReason::Reordered {
                expected: 2,
                line: 4
            }
        );
    }

    #[test]
    fn an_inserted_record_is_caught_forged_or_replayed() {
        // Forged by someone with another key under the same kid.
        let forger = key("k1", b"guessed");
        let mut t = AuditTrail::new("aaaa", Some(forger));
        let forged: Vec<_> = (1..=3).map(|i| t.record(entry(T0 + i, i))).collect();
        let mut lines = chain("aaaa", Some(k1()), 3);
        lines.insert(3, forged[2].replace("\"seq\":3", "\"seq\":4"));
        let f = failure(&lines, &[k1()]);
        assert_eq!((f.line, f.reason), (4, FailureReason::HashMismatch));

        // A genuine record replayed.
        let mut lines = chain("aaaa", Some(k1()), 3);
        lines.push(lines[1].clone());
        let f = failure(&lines, &[k1()]);
        assert_eq!(f.line, 4);
        assert_eq!(
            f.reason,
            FailureReason::Duplicate {
                first_line: 2,
                identical: true
            }
        );

        // An unkeyed chain: a forged record that reuses a seq.
        let mut lines = chain("aaaa", None, 3);
        let mut t = AuditTrail::new("aaaa", None);
        t.record(entry(T0, 1));
        lines.insert(2, t.record(entry(T0, 7)));
        let f = failure(&lines, &[]);
        assert_eq!(f.line, 3);
        assert_eq!(
            f.reason,
            FailureReason::Duplicate {
                first_line: 2,
                identical: false
            }
        );
    }

    #[test]
    fn keys_given_means_every_record_must_be_keyed_by_one_of_them() {
        let mut lines = chain("aaaa", Some(k1()), 2);
        lines.extend(chain("bbbb", None, 1));
        let f = failure(&lines, &[k1()]);
        assert_eq!((f.line, f.reason), (3, FailureReason::Unkeyed));
        let lines = chain("aaaa", Some(k1()), 2);
        assert_eq!(
            failure(&lines, &[]).reason,
            FailureReason::UnknownKey("k1".into())
        );
        assert_eq!(
            failure(&lines, &[key("k2", b"x")]).reason,
            FailureReason::UnknownKey("k1".into())
        );
    }

    #[test]
    fn chains_keyed_with_rotated_keys_verify_with_all_keys() {
        let k2 = key("k2", b"the next key");
        let mut lines = chain("old", Some(k1()), 3);
        lines.extend(chain("new", Some(k2.clone()), 3));
        let s = verify(refs(&lines), &[k2, k1()]).unwrap();
        assert_eq!(s.chains.len(), 2);
        assert_eq!(s.chains[1].kids, vec!["k2".to_owned()]);
    }

    #[test]
    fn a_garbled_record_is_malformed_and_other_lines_are_skipped() {
        let lines = vec![
            "plain text".to_owned(),
            "x consentry-audit {\"v\":1,\"kind\":\"decision\"".to_owned(),
        ];
        let f = failure(&lines, &[]);
        assert_eq!((f.line, f.chain.as_deref(), f.seq), (2, None, None));
        assert!(
            f.to_string()
                .starts_with("line 2: not a valid audit record (")
        );
        let lines = vec![emission(r#"{"v":3,"kind":"decision"}"#)];
        assert!(failure(&lines, &[]).to_string().contains("version 3"));
        assert_eq!(verify(["", "text"], &[]).unwrap().records, 0);
    }

    #[test]
    fn removing_a_chains_tail_is_not_detected_but_checkpoints_make_it_visible() {
        // The limitation, pinned: a cut tail leaves a valid, shorter chain.
        let lines = chain("aaaa", Some(k1()), 5);
        assert!(verify(refs(&lines[..3]), &[k1()]).is_ok());

        // With checkpoints every 60 s, a chain silent for long while another goes on
        // is reported (as a warning).
        let interval = Duration::from_secs(60);
        let (mut a, mut b) = (
            AuditTrail::new("aaaa", Some(k1())),
            AuditTrail::new("bbbb", Some(k1())),
        );
        let mut log = Vec::new();
        for m in 0..10u64 {
            let now = T0 + m * 60_000;
            if m < 4 {
                log.push(a.checkpoint(at(now), interval));
            }
            log.push(b.checkpoint(at(now), interval));
        }
        let s = verify(refs(&log), &[k1()]).unwrap();
        assert_eq!(s.chains[0].checkpoints, 4);
        assert_eq!(s.warnings.len(), 1);
        assert!(s.warnings[0].starts_with("chain aaaa: last record at 2026-11-27T12:03:00.000Z"));
        // Within two intervals: no warning.
        assert!(
            verify(refs(&log[..9]), &[k1()])
                .unwrap()
                .warnings
                .is_empty()
        );
    }

    #[test]
    fn time_is_rfc3339_utc_with_millis() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(T0 + 123), "2026-11-27T12:00:00.123Z");
        assert_eq!(format_time(1_709_164_799_999), "2024-02-28T23:59:59.999Z");
        assert_eq!(format_time(1_709_164_800_000), "2024-02-29T00:00:00.000Z");
        assert_eq!(format_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            unix_millis(SystemTime::UNIX_EPOCH - Duration::from_secs(1)),
            0
        );
        for bad in [
            "2026-11-27T12:00:00Z",
            "2026-11-27T12:00:00.123+00:00",
            "2026-02-29T00:00:00.000Z",
            "2026-13-01T00:00:00.000Z",
            "2026-11-27T24:00:00.000Z",
            "1969-12-31T23:59:59.999Z",
            "2026-11-27 12:00:00.000Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn time_round_trips(ms in 0u64..253_402_300_800_000) {
            proptest::prop_assert_eq!(parse_time(&format_time(ms)), Some(ms));
        }

        #[test]
        fn any_caller_text_round_trips_through_the_canonical_form(caller in ".*") {
            let mut t = AuditTrail::new("c", None);
            let mut e = entry(T0, 1);
            e.caller = &caller;
            let line = t.record(e);
            proptest::prop_assert!(verify([line.as_str()], &[]).is_ok());
        }
    }

    // ---- shipping ----

    fn shipper() -> AuditShipper {
        let mut c = ShipperConfig::new("collector", "audit.example", "/v1/records");
        c.max_batch_records = 3;
        c.max_batch_bytes = 1000;
        c.max_batch_age = Duration::from_secs(5);
        c.max_queue_records = 5;
        c.max_queue_bytes = 10_000;
        c.backoff_initial = Duration::from_secs(1);
        c.backoff_max = Duration::from_secs(4);
        AuditShipper::new(c)
    }

    fn body(call: &OutgoingCall) -> Vec<String> {
        let v: Vec<serde_json::Value> = serde_json::from_slice(&call.body).unwrap();
        v.iter().map(|r| r["n"].to_string()).collect()
    }

    fn rec(n: u32) -> String {
        format!("{{\"n\":{n}}}")
    }

    #[test]
    fn a_full_batch_goes_at_once_as_a_json_array_post() {
        let mut s = shipper();
        s.push(&rec(1), at(T0));
        s.push(&rec(2), at(T0));
        assert_eq!(s.next_batch(at(T0)), None, "not full, not old");
        s.push(&rec(3), at(T0));
        s.push(&rec(4), at(T0));
        let call = s.next_batch(at(T0)).unwrap();
        assert_eq!(call.method, "POST");
        assert_eq!(call.cluster, "collector");
        assert_eq!(
            (call.authority.as_str(), call.path.as_str()),
            ("audit.example", "/v1/records")
        );
        assert!(
            call.headers
                .contains(&("content-type".into(), "application/json".into()))
        );
        assert_eq!(call.body, b"[{\"n\":1},{\"n\":2},{\"n\":3}]");
        assert_eq!((s.in_flight(), s.queued()), (3, 1));
        assert_eq!(s.next_batch(at(T0 + 9_000)), None, "one batch in flight");
        s.on_response(Some(204), at(T0));
        assert_eq!(s.shipped(), 3);
    }

    #[test]
    fn a_partial_batch_goes_when_its_oldest_record_is_old_enough() {
        let mut s = shipper();
        s.push(&rec(1), at(T0));
        s.push(&rec(2), at(T0 + 4000));
        assert_eq!(s.next_batch(at(T0 + 4999)), None);
        let call = s.next_batch(at(T0 + 5000)).unwrap();
        assert_eq!(body(&call), ["1", "2"]);
    }

    #[test]
    fn a_batch_stops_before_its_byte_limit_but_always_takes_one_record() {
        let mut s = shipper();
        let big = format!("{{\"n\":1,\"pad\":\"{}\"}}", "x".repeat(600));
        s.push(&big, at(T0));
        s.push(
            &format!("{{\"n\":2,\"pad\":\"{}\"}}", "x".repeat(600)),
            at(T0),
        );
        let call = s.next_batch(at(T0)).unwrap();
        assert_eq!(body(&call), ["1"]);
        s.on_response(Some(200), at(T0));
        let mut s = shipper();
        let huge = format!("{{\"n\":9,\"pad\":\"{}\"}}", "x".repeat(5000));
        s.push(&huge, at(T0));
        assert_eq!(body(&s.next_batch(at(T0)).unwrap()), ["9"]);
    }

    #[test]
    fn failures_retry_with_exponential_backoff_in_order() {
        let mut s = shipper();
        for n in 1..=3 {
            s.push(&rec(n), at(T0));
        }
        s.next_batch(at(T0)).unwrap();
        s.on_response(Some(503), at(T0));
        assert_eq!((s.queued(), s.backoff()), (3, Duration::from_secs(1)));
        assert_eq!(s.next_batch(at(T0 + 999)), None);
        let call = s.next_batch(at(T0 + 1000)).unwrap();
        assert_eq!(body(&call), ["1", "2", "3"], "same records, same order");
        s.on_response(None, at(T0 + 1000)); // timeout
        assert_eq!(s.backoff(), Duration::from_secs(2));
        s.next_batch(at(T0 + 3000)).unwrap();
        s.on_response(Some(429), at(T0 + 3000));
        assert_eq!(s.backoff(), Duration::from_secs(4));
        s.next_batch(at(T0 + 7000)).unwrap();
        s.on_response(Some(500), at(T0 + 7000));
        assert_eq!(s.backoff(), Duration::from_secs(4), "capped");
        s.next_batch(at(T0 + 11_000)).unwrap();
        s.on_response(Some(200), at(T0 + 11_000));
        assert_eq!(
            (s.shipped(), s.backoff(), s.dropped()),
            (3, Duration::ZERO, 0)
        );
    }

    #[test]
    fn a_batch_the_collector_refuses_for_good_is_dropped_and_counted() {
        let mut s = shipper();
        for n in 1..=3 {
            s.push(&rec(n), at(T0));
        }
        s.next_batch(at(T0)).unwrap();
        s.on_response(Some(400), at(T0));
        assert_eq!((s.rejected(), s.queued(), s.in_flight()), (3, 0, 0));
        assert_eq!(s.backoff(), Duration::ZERO);
    }

    #[test]
    fn the_queue_is_bounded_and_drops_the_oldest_first() {
        let mut s = shipper();
        for n in 1..=8 {
            s.push(&rec(n), at(T0));
        }
        assert_eq!((s.queued(), s.dropped()), (5, 3));
        let call = s.next_batch(at(T0)).unwrap();
        assert_eq!(body(&call), ["4", "5", "6"]);
        // While the batch is out, the queue fills again; a failed batch comes back to
        // the front and the oldest beyond the bound are dropped.
        for n in 9..=12 {
            s.push(&rec(n), at(T0));
        }
        assert_eq!((s.queued(), s.dropped()), (5, 4));
        s.on_response(Some(502), at(T0));
        assert_eq!((s.queued(), s.dropped()), (5, 7));
        let call = s.next_batch(at(T0 + 1000)).unwrap();
        assert_eq!(body(&call), ["8", "9", "10"]);

        let mut c = ShipperConfig::new("c", "a", "/");
        c.max_queue_bytes = 20;
        let mut s = AuditShipper::new(c);
        s.push(&rec(1), at(T0)); // 7 bytes
        s.push(&rec(2), at(T0));
        s.push(&rec(3), at(T0));
        assert_eq!((s.queued(), s.dropped()), (2, 1));
        s.push(
            &format!("{{\"n\":4,\"pad\":\"{}\"}}", "x".repeat(20)),
            at(T0),
        );
        assert_eq!(
            (s.queued(), s.dropped()),
            (2, 2),
            "too large alone: only it is dropped"
        );
    }

    #[test]
    fn a_batch_without_an_answer_counts_as_failed_after_twice_the_timeout() {
        let mut s = shipper();
        for n in 1..=3 {
            s.push(&rec(n), at(T0));
        }
        s.next_batch(at(T0)).unwrap();
        assert_eq!(s.next_batch(at(T0 + 9_999)), None);
        assert_eq!(s.next_batch(at(T0 + 10_000)), None, "backing off");
        assert_eq!(s.backoff(), Duration::from_secs(1));
        assert_eq!(
            body(&s.next_batch(at(T0 + 11_000)).unwrap()),
            ["1", "2", "3"]
        );
        // A late answer to nothing changes nothing.
        let mut idle = shipper();
        idle.on_response(Some(200), at(T0));
        assert_eq!(idle.shipped(), 0);
    }
}
