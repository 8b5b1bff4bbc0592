//! The numbers of the page, counted from the records of a log. Strings are kept as
//! the log has them; they become [`Text`](super::Text) only on their way to the page.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use consentry_core::audit::{self, Record};

/// The problem codes in the order the page shows them, `ok` first, with colours.
const CODE_ORDER: [(&str, &str); 16] = [
    ("ok", "#3a9d6e"),
    ("token_missing", "#f0b429"),
    ("token_invalid", "#e07b39"),
    ("token_expired", "#c8553d"),
    ("token_ambiguous", "#b08968"),
    ("consent_revoked", "#8e5cc2"),
    ("consent_suspended", "#c39bdf"),
    ("token_unbound", "#5c6bc0"),
    ("access_denied", "#d64550"),
    ("bad_request", "#8d99ae"),
    ("request_too_large", "#6c7a89"),
    ("rate_limited", "#2f7fc1"),
    ("locked_out", "#1d4e89"),
    ("upstream_error", "#7b8794"),
    ("unsafe_response", "#3e4c59"),
    ("dependency_unavailable", "#a6b0bb"),
];

const ACTION_COLORS: [(&str, &str); 6] = [
    ("remove", "#d64550"),
    ("mask", "#e07b39"),
    ("hash", "#f0b429"),
    ("pseudonymise", "#8e5cc2"),
    ("generalise", "#2f7fc1"),
    ("encrypt", "#3a9d6e"),
];

/// The outcomes of format v2 in the order the page shows them, with colours.
const OUTCOME_ORDER: [(&str, &str); 5] = [
    ("released", "#3a9d6e"),
    ("refused", "#d64550"),
    ("withheld", "#e07b39"),
    ("reset", "#3e4c59"),
    ("proxy_reply", "#7b8794"),
];

/// The colour of anything the page does not know (a value of a newer plugin, or of a
/// tampered log: its chain fails verification, but the page still shows it).
pub(super) const OTHER_COLOR: &str = "#9aa5b1";

/// The refusals that mean the consent ended: code, label, note.
pub(super) const EVENTS: [(&str, &str, &str); 3] = [
    (
        "consent_revoked",
        "Revoked",
        "consent withdrawn by the subject or issuer",
    ),
    (
        "token_expired",
        "Expired",
        "consent token past its lifetime",
    ),
    (
        "consent_suspended",
        "Suspended",
        "consent suspended by the issuer",
    ),
];

fn lookup(table: &[(&str, &'static str)], key: &str) -> &'static str {
    table
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(OTHER_COLOR, |(_, color)| color)
}

fn rank(table: &[(&str, &str)], key: &str) -> usize {
    table
        .iter()
        .position(|(k, _)| *k == key)
        .unwrap_or(table.len())
}

pub(super) fn code_color(code: &str) -> &'static str {
    lookup(&CODE_ORDER, code)
}

pub(super) fn action_color(action: &str) -> &'static str {
    lookup(&ACTION_COLORS, action)
}

/// The colour of an outcome; `None` (a version 1 record) is the lightest grey.
pub(super) fn outcome_color(outcome: Option<&str>) -> &'static str {
    outcome.map_or("#cbd2d9", |o| lookup(&OUTCOME_ORDER, o))
}

/// The HTTP status a problem code is sent with (`2xx` for `ok`, `?` when unknown).
pub(super) fn status_of(code: &str) -> String {
    consentry_core::problem::Code::ALL
        .iter()
        .find(|c| c.as_str() == code)
        .map_or_else(
            || if code == "ok" { "2xx" } else { "?" }.to_owned(),
            |c| c.status().to_string(),
        )
}

#[derive(Default)]
pub(super) struct CallerStats {
    pub allowed: u64,
    pub refused: u64,
}

#[derive(Default)]
pub(super) struct ReasonStats {
    pub count: u64,
    pub callers: BTreeSet<String>,
    pub last: u64,
}

#[derive(Default)]
pub(super) struct ConsentEvent {
    pub count: u64,
    pub consents: BTreeSet<String>,
}

pub(super) struct AlertRow {
    pub ms: u64,
    pub alert: String,
    pub caller: String,
    pub code: String,
}

/// An outcome and the status the client got; both `None` in version 1 records.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct OutcomeKey {
    pub outcome: Option<String>,
    pub status: Option<u64>,
}

#[derive(Default)]
pub(super) struct Data {
    pub total: u64,
    pub allowed: u64,
    pub checkpoints: u64,
    pub first: Option<u64>,
    pub last: Option<u64>,
    /// (time, code) of every decision.
    pub decisions: Vec<(u64, String)>,
    pub callers: HashMap<String, CallerStats>,
    pub consents: BTreeSet<String>,
    pub events: BTreeMap<&'static str, ConsentEvent>,
    pub by_action: BTreeMap<String, u64>,
    pub fields: HashMap<(String, String), u64>,
    pub released: u64,
    pub reasons: HashMap<(String, String), ReasonStats>,
    pub codes: BTreeMap<String, u64>,
    pub alerts: Vec<AlertRow>,
    pub outcomes: HashMap<OutcomeKey, u64>,
}

impl Data {
    pub fn collect(records: &[(usize, Record)]) -> Self {
        let mut d = Data::default();
        for (code, _, _) in EVENTS {
            d.events.insert(code, ConsentEvent::default());
        }
        for (_, r) in records {
            let Some(ms) = audit::parse_time(&r.time) else {
                continue;
            };
            let Some(dec) = r.decision() else {
                d.checkpoints += 1;
                continue;
            };
            d.total += 1;
            d.first = Some(d.first.map_or(ms, |f| f.min(ms)));
            d.last = Some(d.last.map_or(ms, |l| l.max(ms)));
            d.decisions.push((ms, dec.code.clone()));
            *d.codes.entry(dec.code.clone()).or_default() += 1;
            *d.outcomes
                .entry(OutcomeKey {
                    outcome: dec.outcome.clone(),
                    status: dec.status,
                })
                .or_default() += 1;
            let allowed = dec.decision == "allow";
            let caller = d.callers.entry(dec.caller.clone()).or_default();
            if allowed {
                d.allowed += 1;
                caller.allowed += 1;
            } else {
                caller.refused += 1;
                let reason = d
                    .reasons
                    .entry((dec.reason.clone(), dec.code.clone()))
                    .or_default();
                reason.count += 1;
                reason.callers.insert(dec.caller.clone());
                reason.last = reason.last.max(ms);
            }
            if let Some(consent) = &dec.consent_id {
                d.consents.insert(consent.clone());
            }
            if let Some(event) = d.events.get_mut(dec.code.as_str()) {
                event.count += 1;
                if let Some(consent) = &dec.consent_id {
                    event.consents.insert(consent.clone());
                }
            }
            for f in &dec.redacted {
                *d.by_action.entry(f.action.clone()).or_default() += f.count;
                *d.fields
                    .entry((f.field.clone(), f.action.clone()))
                    .or_default() += f.count;
            }
            d.released += dec.released.iter().map(|f| f.count).sum::<u64>();
            if let Some(alert) = &dec.alert {
                d.alerts.push(AlertRow {
                    ms,
                    alert: alert.clone(),
                    caller: dec.caller.clone(),
                    code: dec.code.clone(),
                });
            }
        }
        d.alerts.sort_by_key(|a| a.ms);
        d
    }

    pub fn refused(&self) -> u64 {
        self.total - self.allowed
    }

    /// Codes present, in display order.
    pub fn codes_present(&self) -> Vec<String> {
        let mut codes: Vec<String> = self.codes.keys().cloned().collect();
        codes.sort_by(|a, b| {
            rank(&CODE_ORDER, a)
                .cmp(&rank(&CODE_ORDER, b))
                .then(a.cmp(b))
        });
        codes
    }

    /// Decisions with this outcome.
    pub fn with_outcome(&self, outcome: &str) -> u64 {
        self.outcomes
            .iter()
            .filter(|(k, _)| k.outcome.as_deref() == Some(outcome))
            .map(|(_, n)| n)
            .sum()
    }

    /// Decisions whose record does not say how the stream ended (version 1).
    pub fn without_outcome(&self) -> u64 {
        self.outcomes
            .iter()
            .filter(|(k, _)| k.outcome.is_none())
            .map(|(_, n)| n)
            .sum()
    }

    /// (outcome, status) with their counts: known outcomes in order, then unknown
    /// ones by name, then records without one; by status within an outcome.
    pub fn outcomes_in_order(&self) -> Vec<(&OutcomeKey, u64)> {
        let mut rows: Vec<_> = self.outcomes.iter().map(|(k, n)| (k, *n)).collect();
        rows.sort_by(|(a, _), (b, _)| {
            let place = |k: &OutcomeKey| match &k.outcome {
                Some(o) => (rank(&OUTCOME_ORDER, o), Some(o.clone())),
                None => (usize::MAX, None),
            };
            place(a).cmp(&place(b)).then(a.status.cmp(&b.status))
        });
        rows
    }
}
