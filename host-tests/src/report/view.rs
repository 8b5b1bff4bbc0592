//! What the template shows: every section of the page as plain values, laid out and
//! counted here, written by `templates/report.html`.
//!
//! Typing keeps the page safe by construction: whatever came from the log or the
//! stats is a [`Text`] (as shown, a [`Cut`] of one), written only by the template,
//! which escapes every expression; colours, ids and labels are `&'static str`
//! constants of this program, so nothing from a record can reach a `style`
//! attribute, an id or the `<style>` element; numbers are numbers.

use askama::Template;
use consentry_core::audit::{self, AuditKey, FailureReason, VerifyFailure, VerifySummary};

use super::charts::{HBars, HBarsSpec, Timeline, hbars, legend, timeline};
use super::data::{self, Data, EVENTS};
use super::{Cut, Text, date, hhmm, num, pct, plural};

const ALLOW_COLOR: &str = "#3a9d6e";
const DENY_COLOR: &str = "#d64550";

/// How many characters of a value are shown (the rest in a tooltip): in a chip, in a
/// table cell, for an id, for a sentence that quotes values, for the log's name.
pub(super) const CHIP: usize = 24;
const CELL: usize = 120;
const ID: usize = 64;
const SENTENCE: usize = 300;
const NAME: usize = 80;

/// The whole page.
#[derive(Template)]
#[template(path = "report.html")]
pub(super) struct Page {
    pub log_name: Cut,
    pub period: String,
    pub decisions: String,
    pub decisions_plural: &'static str,
    pub badge: Badge,
    pub kpis: Vec<Kpi>,
    pub timeline: Option<Timeline>,
    pub callers: Option<HBars>,
    pub events: Vec<EventCard>,
    pub codes: Vec<CodeRow>,
    pub outcomes: Vec<OutcomeRow>,
    /// Decisions whose record does not say how the stream ended (version 1).
    pub unrecorded: u64,
    pub unrecorded_plural: &'static str,
    pub redactions: Option<HBars>,
    pub fields: Vec<FieldRow>,
    pub reasons: Vec<ReasonRow>,
    pub alerts: Vec<AlertView>,
    pub chains: Vec<ChainRow>,
    pub warnings: Vec<Cut>,
    pub unreadable: Option<String>,
    pub counters: Option<Counters>,
}

pub(super) struct Badge {
    /// `verified`, `failed` or `unverified`: a class and `data-status`.
    pub class: &'static str,
    pub text: Cut,
}

pub(super) struct Kpi {
    pub id: &'static str,
    pub label: &'static str,
    pub value: String,
    pub note: String,
}

pub(super) struct EventCard {
    pub code: &'static str,
    pub label: &'static str,
    pub note: &'static str,
    pub color: &'static str,
    pub count: String,
    pub consents: String,
    pub plural: &'static str,
}

pub(super) struct CodeRow {
    pub code: Cut,
    pub color: &'static str,
    pub status: String,
    pub count: String,
}

pub(super) struct OutcomeRow {
    /// The outcome, or `None` for version 1 records, which do not say.
    pub outcome: Option<Cut>,
    pub color: &'static str,
    pub status: String,
    pub count: String,
    pub share: String,
}

pub(super) struct FieldRow {
    pub field: Cut,
    pub action: Cut,
    pub color: &'static str,
    pub count: String,
}

pub(super) struct ReasonRow {
    pub reason: Cut,
    pub code: Cut,
    pub color: &'static str,
    pub status: String,
    pub count: String,
    pub bar: u64,
    pub share: String,
    pub callers: String,
    pub last: String,
}

pub(super) struct AlertView {
    pub time: String,
    pub alert: Cut,
    /// (`caller` is a word of the template language.)
    pub caller_id: Cut,
    pub code: Cut,
}

pub(super) struct ChainRow {
    pub chain: Cut,
    pub records: String,
    pub key: Cut,
    pub first: Text,
    pub last: Text,
}

pub(super) struct Counters {
    pub rows: Vec<(Cut, Cut)>,
    pub total: String,
}

impl Page {
    pub fn new(
        log_name: &str,
        d: &Data,
        verification: &Result<VerifySummary, VerifyFailure>,
        keys: &[AuditKey],
        unreadable: usize,
        stats: Option<&[(String, String)]>,
    ) -> Self {
        let period = match (d.first, d.last) {
            (Some(f), Some(l)) if date(f) == date(l) => {
                format!("{} {}–{} UTC", date(f), hhmm(f), hhmm(l))
            }
            (Some(f), Some(l)) => format!("{} {} – {} {} UTC", date(f), hhmm(f), date(l), hhmm(l)),
            _ => "no decisions".to_owned(),
        };
        let (chains, warnings) = match verification {
            Ok(s) => (
                s.chains.iter().map(chain_row).collect(),
                s.warnings
                    .iter()
                    .map(|w| Text::new(w).cut(SENTENCE))
                    .collect(),
            ),
            Err(_) => (Vec::new(), Vec::new()),
        };
        Page {
            log_name: Text::new(log_name).cut(NAME),
            period,
            decisions: num(d.total),
            decisions_plural: plural(d.total),
            badge: badge(verification, keys),
            kpis: kpis(d),
            timeline: timeline(d),
            callers: callers(d),
            events: events(d),
            codes: codes(d),
            outcomes: outcomes(d),
            unrecorded: d.without_outcome(),
            unrecorded_plural: plural(d.without_outcome()),
            redactions: redactions(d),
            fields: fields(d),
            reasons: reasons(d),
            alerts: alerts(d),
            chains,
            warnings,
            unreadable: (unreadable > 0).then(|| {
                format!(
                    "{} record line{} could not be read and {} left out of the charts.",
                    num(unreadable as u64),
                    plural(unreadable as u64),
                    if unreadable == 1 { "is" } else { "are" },
                )
            }),
            counters: stats.map(counters),
        }
    }
}

fn kpis(d: &Data) -> Vec<Kpi> {
    let redacted: u64 = d.by_action.values().sum();
    let lockouts = d.alerts.iter().filter(|a| a.alert == "lockout").count() as u64;
    let kpi = |id, label, value, note| Kpi {
        id,
        label,
        value,
        note,
    };
    // Withheld: allowed, yet the client got the plugin's problem (or the proxy's
    // reply) instead of the upstream's answer, or nothing (reset).
    let withheld_note = if d.without_outcome() == d.total && d.total > 0 {
        "not in v1 records".to_owned()
    } else {
        format!("{} reset", num(d.with_outcome("reset")))
    };
    vec![
        kpi("requests", "Decisions", num(d.total), String::new()),
        kpi(
            "allowed",
            "Allowed",
            num(d.allowed),
            pct(d.allowed, d.total),
        ),
        kpi(
            "refused",
            "Refused",
            num(d.refused()),
            pct(d.refused(), d.total),
        ),
        kpi(
            "withheld",
            "Withheld",
            num(d.with_outcome("withheld")),
            withheld_note,
        ),
        kpi(
            "callers",
            "Callers",
            num(d.callers.len() as u64),
            "distinct".into(),
        ),
        kpi(
            "consents",
            "Consents",
            num(d.consents.len() as u64),
            "distinct ids".into(),
        ),
        kpi(
            "redacted",
            "Redacted",
            num(redacted),
            format!("{} released", num(d.released)),
        ),
        kpi(
            "alerts",
            "Lockouts",
            num(lockouts),
            format!("{} alert{}", d.alerts.len(), plural(d.alerts.len() as u64)),
        ),
    ]
}

fn callers(d: &Data) -> Option<HBars> {
    if d.callers.is_empty() {
        return None;
    }
    let mut callers: Vec<_> = d.callers.iter().collect();
    callers.sort_by(|a, b| {
        (b.1.allowed + b.1.refused)
            .cmp(&(a.1.allowed + a.1.refused))
            .then(a.0.cmp(b.0))
    });
    let rows = callers
        .into_iter()
        .take(10)
        .map(|(name, s)| {
            let total = s.allowed + s.refused;
            (
                name.clone(),
                vec![
                    (
                        s.allowed,
                        ALLOW_COLOR,
                        format!("{name}: {} allowed", s.allowed),
                    ),
                    (
                        s.refused,
                        DENY_COLOR,
                        format!("{name}: {} refused", s.refused),
                    ),
                ],
                if s.refused > 0 {
                    format!("{} ({} refused)", num(total), num(s.refused))
                } else {
                    num(total)
                },
            )
        })
        .collect();
    let spec = HBarsSpec {
        id: "chart-callers",
        label: "Top callers",
        axis_title: "Requests",
        w: 650.0,
        label_width: 280.0,
        label_chars: 42,
        legend: legend([("allowed", ALLOW_COLOR), ("refused", DENY_COLOR)].into_iter()),
    };
    Some(hbars(spec, rows))
}

fn redactions(d: &Data) -> Option<HBars> {
    if d.by_action.is_empty() {
        return None;
    }
    let mut actions: Vec<_> = d.by_action.iter().collect();
    actions.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let rows = actions
        .into_iter()
        .map(|(action, count)| {
            (
                action.clone(),
                vec![(
                    *count,
                    data::action_color(action),
                    format!("{action}: {count}"),
                )],
                num(*count),
            )
        })
        .collect();
    let spec = HBarsSpec {
        id: "chart-redactions",
        label: "Fields redacted by action",
        axis_title: "Values",
        w: 350.0,
        label_width: 100.0,
        label_chars: 14,
        legend: Vec::new(),
    };
    Some(hbars(spec, rows))
}

fn events(d: &Data) -> Vec<EventCard> {
    EVENTS
        .iter()
        .map(|&(code, label, note)| {
            let e = d.events.get(code);
            let consents = e.map_or(0, |e| e.consents.len() as u64);
            EventCard {
                code,
                label,
                note,
                color: data::code_color(code),
                count: num(e.map_or(0, |e| e.count)),
                consents: num(consents),
                plural: plural(consents),
            }
        })
        .collect()
}

fn codes(d: &Data) -> Vec<CodeRow> {
    d.codes_present()
        .into_iter()
        .filter(|c| c != "ok")
        .map(|code| CodeRow {
            color: data::code_color(&code),
            status: data::status_of(&code),
            count: num(d.codes.get(&code).copied().unwrap_or(0)),
            code: Text::new(&code).cut(CHIP),
        })
        .collect()
}

fn outcomes(d: &Data) -> Vec<OutcomeRow> {
    d.outcomes_in_order()
        .into_iter()
        .map(|(key, n)| OutcomeRow {
            outcome: key.outcome.as_deref().map(|o| Text::new(o).cut(CHIP)),
            color: data::outcome_color(key.outcome.as_deref()),
            status: match key.status {
                None => "–".to_owned(),
                Some(0) => "none".to_owned(),
                Some(s) => s.to_string(),
            },
            count: num(n),
            share: pct(n, d.total),
        })
        .collect()
}

fn fields(d: &Data) -> Vec<FieldRow> {
    let mut fields: Vec<_> = d.fields.iter().collect();
    fields.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    fields
        .into_iter()
        .take(10)
        .map(|((field, action), count)| FieldRow {
            field: Text::new(field).cut(CELL),
            action: Text::new(action).cut(CHIP),
            color: data::action_color(action),
            count: num(*count),
        })
        .collect()
}

fn reasons(d: &Data) -> Vec<ReasonRow> {
    let mut reasons: Vec<_> = d.reasons.iter().collect();
    reasons.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
    let refused = d.refused();
    let top = reasons.first().map_or(1, |r| r.1.count).max(1);
    reasons
        .into_iter()
        .take(15)
        .map(|((reason, code), r)| ReasonRow {
            reason: Text::new(reason).cut(CELL),
            code: Text::new(code).cut(CHIP),
            color: data::code_color(code),
            status: data::status_of(code),
            count: num(r.count),
            bar: 120 * r.count / top,
            share: pct(r.count, refused),
            callers: num(r.callers.len() as u64),
            last: format!("{} {}", date(r.last), hhmm(r.last)),
        })
        .collect()
}

fn alerts(d: &Data) -> Vec<AlertView> {
    d.alerts
        .iter()
        .rev()
        .take(12)
        .map(|a| AlertView {
            time: format!("{} {}", date(a.ms), hhmm(a.ms)),
            alert: Text::new(&a.alert).cut(CHIP),
            caller_id: Text::new(&a.caller).cut(CELL),
            code: Text::new(&a.code).cut(CHIP),
        })
        .collect()
}

fn badge(verification: &Result<VerifySummary, VerifyFailure>, keys: &[AuditKey]) -> Badge {
    let (class, text) = match verification {
        Ok(s) if s.records == 0 => ("unverified", "No audit records found".to_owned()),
        Ok(s) => {
            let keyed = s.chains.iter().all(|c| !c.kids.is_empty());
            (
                "verified",
                format!(
                    "Chains verified{}: {} chain{}, {} records",
                    if keyed { " (keyed)" } else { " (unkeyed)" },
                    s.chains.len(),
                    plural(s.chains.len() as u64),
                    num(s.records)
                ),
            )
        }
        Err(f) if keys.is_empty() && matches!(f.reason, FailureReason::UnknownKey(_)) => (
            "unverified",
            "Not verified: the records are keyed; give the audit key with --key".to_owned(),
        ),
        Err(f) => ("failed", format!("Chain verification FAILED: {f}")),
    };
    Badge {
        class,
        text: Text::new(&text).cut(SENTENCE),
    }
}

fn chain_row(c: &audit::ChainSummary) -> ChainRow {
    let key = if c.kids.is_empty() {
        "unkeyed".to_owned()
    } else {
        c.kids.join(", ")
    };
    ChainRow {
        chain: Text::new(&c.chain).cut(ID),
        records: num(c.records),
        key: Text::new(&key).cut(ID),
        first: Text::new(c.first_time.get(11..19).unwrap_or("")),
        last: Text::new(c.last_time.get(11..19).unwrap_or("")),
    }
}

fn counters(stats: &[(String, String)]) -> Counters {
    let rows = stats
        .iter()
        .filter_map(|(n, v)| Some((n.strip_prefix("wasmcustom.")?, v)))
        .filter(|(n, _)| n.starts_with("consentry."))
        .map(|(name, value)| {
            let shown = value.parse::<u64>().map_or_else(|_| value.clone(), num);
            (Text::new(name).cut(CELL), Text::new(&shown).cut(CHIP))
        })
        .collect();
    Counters {
        rows,
        total: num(stats.len() as u64),
    }
}
