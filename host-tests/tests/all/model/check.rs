//! The fail-closed invariants, checked against what has crossed the proxy after
//! every step of a case.

use std::collections::BTreeMap;
use std::fmt;

use consentry_core::audit;
use consentry_host::{ClientEnd, Outcome, Proxy, StreamKey, Wire};
use serde_json::Value;

use super::case::{CANARY, Fixtures, Kind, StreamSpec};

/// The invariants, as the model names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// The upstream received something of a request no decision could allow.
    UpstreamWithoutAllow,
    /// The upstream received the token, a forged header, or a field, parameter or
    /// header the purpose does not need.
    UpstreamNotMinimised,
    /// The client received a value the decision does not release.
    ClientLeak,
    /// A released answer differs from what the same exchange releases when every
    /// event comes in the plainest order.
    ReleaseDiffers,
    /// Not exactly one audit record per stream, one written after its answer was
    /// released, or one whose outcome or status is not what the client got.
    Audit,
    /// The plugin trapped.
    Trap,
}

#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: Invariant,
    /// The stream (index in the case), when one is to blame.
    pub stream: Option<usize>,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.stream {
            Some(n) => write!(f, "{:?} (stream {n}): {}", self.invariant, self.detail),
            None => write!(f, "{:?}: {}", self.invariant, self.detail),
        }
    }
}

fn violation(invariant: Invariant, stream: usize, detail: String) -> Result<(), Violation> {
    Err(Violation {
        invariant,
        stream: Some(stream),
        detail,
    })
}

/// How a stream ended, as the client saw it: the audit record's `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ending {
    Released,
    Refused,
    Withheld,
    Reset,
}

impl Ending {
    fn as_str(self) -> &'static str {
        match self {
            Ending::Released => "released",
            Ending::Refused => "refused",
            Ending::Withheld => "withheld",
            Ending::Reset => "reset",
        }
    }
}

/// What the checker knows of each stream, and of the log read so far.
pub struct Checker<'a> {
    fx: &'a Fixtures,
    specs: &'a [StreamSpec],
    logs_read: usize,
    /// Decision records by the context that wrote them (one worker: one id per
    /// stream). Not by request id: a stream whose headers could not be read gets
    /// an id of the plugin's own.
    records: BTreeMap<u32, Vec<Value>>,
    /// Each stream's context, once it has one.
    contexts: BTreeMap<usize, u32>,
    /// Streams whose end was checked, with how they ended.
    pub ended: BTreeMap<usize, Ending>,
}

fn is_problem(head: &(u16, Vec<(String, Vec<u8>)>)) -> bool {
    head.1
        .iter()
        .any(|(n, v)| n == "content-type" && v == b"application/problem+json")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Everything of a header list as one text, for searching.
fn flat(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in headers {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

/// The headers a minimised request may carry upstream: framing, tracing and ids,
/// the route's allow-list, and the plugin's own provenance.
const MINIMISED_HEADERS: [&str; 16] = [
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
    "x-claim-reference",
    "x-consent-id",
    "x-consent-purpose",
    "x-consent-decision",
    "x-consent-grantee",
];

impl<'a> Checker<'a> {
    pub fn new(fx: &'a Fixtures, specs: &'a [StreamSpec]) -> Self {
        Self {
            fx,
            specs,
            logs_read: 0,
            records: BTreeMap::new(),
            contexts: BTreeMap::new(),
            ended: BTreeMap::new(),
        }
    }

    /// Checks every invariant for every stream begun so far; returns every
    /// violation found.
    pub fn check(&mut self, proxy: &Proxy, keys: &[Option<StreamKey>]) -> Vec<Violation> {
        let mut found: Vec<Violation> = self.read_logs(proxy).err().into_iter().collect();
        for (n, key) in keys.iter().enumerate() {
            let Some(key) = key else { continue };
            let Some(wire) = proxy.wire(*key) else {
                continue;
            };
            if let Some(context) = proxy.context(*key) {
                self.contexts.insert(n, context);
            }
            found.extend(self.upstream(n, &wire).err());
            found.extend(self.client(n, &wire).err());
            found.extend(self.audit_so_far(n, &wire).err());
            if let Some(out) = proxy.outcome(*key)
                && !self.ended.contains_key(&n)
            {
                found.extend(self.end(n, out));
            }
        }
        found
    }

    fn read_logs(&mut self, proxy: &Proxy) -> Result<(), Violation> {
        let logs = proxy.logs_since(self.logs_read);
        self.logs_read += logs.len();
        for line in &logs {
            if line.context_id == 0 && line.message.starts_with("trap in ") {
                return Err(Violation {
                    invariant: Invariant::Trap,
                    stream: None,
                    detail: line.message.clone(),
                });
            }
            let Some(text) = audit::extract_record(&line.message) else {
                continue;
            };
            let Ok(record) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if record["kind"] != "decision" {
                continue;
            }
            self.records
                .entry(line.context_id)
                .or_default()
                .push(record);
        }
        Ok(())
    }

    fn records(&self, n: usize) -> &[Value] {
        self.contexts
            .get(&n)
            .and_then(|c| self.records.get(c))
            .map_or(&[], Vec::as_slice)
    }

    /// Invariant 1: nothing of a request before an allow, then only the
    /// minimised request.
    fn upstream(&self, n: usize, wire: &Wire) -> Result<(), Violation> {
        let kind = self.specs[n].kind;
        let received = wire.upstream_headers.is_some()
            || !wire.upstream_body.is_empty()
            || wire.upstream_trailers.is_some();
        if !received {
            return Ok(());
        }
        if !kind.may_allow() {
            return violation(
                Invariant::UpstreamWithoutAllow,
                n,
                format!("{kind:?} reached the upstream: {wire:?}"),
            );
        }
        let headers = wire.upstream_headers.as_deref().unwrap_or_default();
        let mut seen = flat(headers);
        seen.extend_from_slice(&wire.upstream_body);
        seen.extend_from_slice(&flat(wire.upstream_trailers.as_deref().unwrap_or_default()));
        let token = self.fx.tokens.get(&kind).map(String::as_bytes);
        for needle in [Some(CANARY.as_bytes()), token].into_iter().flatten() {
            if contains(&seen, needle) {
                return violation(
                    Invariant::UpstreamNotMinimised,
                    n,
                    format!(
                        "the upstream received {:?}:\n{}",
                        String::from_utf8_lossy(&needle[..needle.len().min(24)]),
                        String::from_utf8_lossy(&seen)
                    ),
                );
            }
        }
        if matches!(kind, Kind::ClaimsSearch) {
            for (name, _) in headers.iter().filter(|(n, _)| !n.starts_with(':')) {
                if !MINIMISED_HEADERS.contains(&name.as_str()) {
                    return violation(
                        Invariant::UpstreamNotMinimised,
                        n,
                        format!("header {name} is not needed for the purpose"),
                    );
                }
            }
            let path = headers
                .iter()
                .find(|(n, _)| n == ":path")
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            let query = path.split_once('?').map_or("", |(_, q)| q);
            if query
                .split('&')
                .any(|kv| !kv.is_empty() && !kv.starts_with("from=") && !kv.starts_with("to="))
            {
                return violation(
                    Invariant::UpstreamNotMinimised,
                    n,
                    format!("query not minimised: {path}"),
                );
            }
        }
        Ok(())
    }

    /// Invariant 2: no value the decision does not release, in any byte the
    /// client has received so far.
    fn client(&self, n: usize, wire: &Wire) -> Result<(), Violation> {
        let mut seen = wire
            .client_head
            .as_ref()
            .map(|(_, h)| flat(h))
            .unwrap_or_default();
        seen.extend_from_slice(&wire.client_body);
        seen.extend_from_slice(&flat(wire.client_trailers.as_deref().unwrap_or_default()));
        if let Some(at) = seen
            .windows(CANARY.len())
            .position(|w| w == CANARY.as_bytes())
        {
            let shown = String::from_utf8_lossy(&seen[at..(at + 40).min(seen.len())]).into_owned();
            return violation(
                Invariant::ClientLeak,
                n,
                format!("the client received {shown:?}"),
            );
        }
        Ok(())
    }

    /// Invariant 3 while the stream runs: at most one record, and an answer from
    /// the upstream reaches the client only once its record is written.
    fn audit_so_far(&self, n: usize, wire: &Wire) -> Result<(), Violation> {
        let records = self.records(n);
        if records.len() > 1 {
            return violation(
                Invariant::Audit,
                n,
                format!("{} records for one stream: {records:#?}", records.len()),
            );
        }
        let released = wire.client_head.as_ref().is_some_and(|h| !is_problem(h))
            && wire.upstream_headers.is_some();
        if released && !records.iter().any(|r| r["outcome"] == "released") {
            return violation(
                Invariant::Audit,
                n,
                format!("an answer reached the client with no record of its release: {records:?}"),
            );
        }
        Ok(())
    }

    /// The stream is over: exactly one record, telling what the client got, and
    /// a released answer exactly as the plainest order releases it.
    fn end(&mut self, n: usize, out: &Outcome) -> Vec<Violation> {
        let mut found = Vec::new();
        let mut fail = |invariant, detail| {
            found.push(Violation {
                invariant,
                stream: Some(n),
                detail,
            });
        };
        if let Some(trap) = &out.trap {
            fail(Invariant::Trap, trap.clone());
        }
        let wire = &out.wire;
        let ending = match (&wire.client_end, &wire.client_head) {
            (Some(ClientEnd::Complete), Some(head)) if is_problem(head) => {
                if wire.upstream_headers.is_some() {
                    Ending::Withheld
                } else {
                    Ending::Refused
                }
            }
            (Some(ClientEnd::Complete), Some(_)) => Ending::Released,
            _ => Ending::Reset,
        };
        self.ended.insert(n, ending);
        let status = match ending {
            Ending::Reset => 0,
            _ => wire.client_head.as_ref().map_or(0, |h| h.0),
        };
        match self.records(n) {
            // Reset before its headers reached the filter: nothing to record.
            [] if out.context == 0 => {}
            [record] => {
                if record["v"] != 2
                    || record["outcome"] != ending.as_str()
                    || record["status"] != status
                {
                    fail(
                        Invariant::Audit,
                        format!(
                            "the client got {} with status {status}, the record says {} with {}: {record}",
                            ending.as_str(),
                            record["outcome"],
                            record["status"]
                        ),
                    );
                }
                let decision = match ending {
                    Ending::Released | Ending::Withheld => Some("allow"),
                    Ending::Refused => Some("deny"),
                    Ending::Reset => None,
                };
                if decision.is_some_and(|d| record["decision"] != d) {
                    fail(
                        Invariant::Audit,
                        format!("{} with decision {}", ending.as_str(), record["decision"]),
                    );
                }
            }
            records => fail(
                Invariant::Audit,
                format!(
                    "{} records when the stream ended ({}): {records:#?}",
                    records.len(),
                    ending.as_str()
                ),
            ),
        }
        let kind = self.specs[n].kind;
        if ending == Ending::Released
            && let Some(reference) = self.fx.references.get(&kind)
            && &wire.client_body != reference
        {
            fail(
                Invariant::ReleaseDiffers,
                format!(
                    "released {:?}\nexpected {:?}",
                    String::from_utf8_lossy(&wire.client_body),
                    String::from_utf8_lossy(reference)
                ),
            );
        }
        if ending == Ending::Released
            && kind == Kind::ClaimsSearch
            && let Some(up) = &out.upstream_request
        {
            let body: Value = serde_json::from_slice(&up.body).unwrap_or(Value::Null);
            let allowed = ["claim_id", "invoice_ids", "period"];
            if !body
                .as_object()
                .is_some_and(|o| o.keys().all(|k| allowed.contains(&k.as_str())))
            {
                fail(
                    Invariant::UpstreamNotMinimised,
                    format!("the upstream's body is not minimised: {body}"),
                );
            }
        }
        found
    }
}
