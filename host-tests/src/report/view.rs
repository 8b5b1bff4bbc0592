//! What the template shows: every section of the page as plain values, laid out and
//! counted here, written by `templates/report.html`.
//!
//! Typing keeps the page safe by construction: whatever came from the log or the
//! stats is a [`Text`] (or a `String` made from one), written only by the template,
//! which escapes every expression; colours, ids and labels are `&'static str`
//! constants of this program, so nothing from a record can reach a `style`
//! attribute, an id or the `<style>` element; numbers are numbers.

use std::collections::BTreeMap;

use askama::Template;
use consentry_core::audit::{self, AuditKey, FailureReason, VerifyFailure, VerifySummary};

use super::data::{self, Data, EVENTS};
use super::{Cut, Px, Text, date, hhmm, num, pct};

const ALLOW_COLOR: &str = "#3a9d6e";
/// How many characters of a value are shown (the rest in a tooltip): in a chip, in a
/// table cell, for an id, for a sentence that quotes values, for the log's name.
const CHIP: usize = 24;
const CELL: usize = 120;
const ID: usize = 64;
const SENTENCE: usize = 300;
const NAME: usize = 80;
const DENY_COLOR: &str = "#d64550";

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

pub(super) struct LegendItem {
    pub name: Cut,
    pub color: &'static str,
}

/// The stacked bars of decisions over time.
pub(super) struct Timeline {
    pub bucket: String,
    pub legend: Vec<LegendItem>,
    pub w: Px,
    pub h: Px,
    pub grid: Vec<GridLine>,
    pub bars: Vec<TimeBar>,
    pub ticks: Vec<TimeTick>,
    pub axis_x: Px,
    pub axis_y: Px,
    pub axis_cy: Px,
    pub dates: String,
}

/// A horizontal line of the vertical axis, with its value.
pub(super) struct GridLine {
    pub class: &'static str,
    pub x1: Px,
    pub x2: Px,
    pub y: Px,
    pub label_x: Px,
    pub label_y: Px,
    pub label: String,
}

pub(super) struct TimeBar {
    pub code: Text,
    pub count: u64,
    pub x: Px,
    pub y: Px,
    pub w: Px,
    pub h: Px,
    pub color: &'static str,
    pub from: String,
    pub to: String,
}

pub(super) struct TimeTick {
    pub x: Px,
    pub y0: Px,
    pub y1: Px,
    pub label_y: Px,
    pub label: String,
}

/// A horizontal bar chart: one row per item, stacked segments, a value label.
pub(super) struct HBars {
    pub id: &'static str,
    pub label: &'static str,
    pub legend: Vec<LegendItem>,
    pub w: Px,
    pub h: Px,
    pub top: Px,
    pub base: Px,
    pub ticks: Vec<AxisTick>,
    pub tick_y: Px,
    pub label_x: Px,
    pub bar_h: Px,
    pub rows: Vec<HBarRow>,
    pub axis_title: &'static str,
    pub axis_x: Px,
    pub axis_y: Px,
}

pub(super) struct AxisTick {
    pub class: &'static str,
    pub x: Px,
    pub label: String,
}

pub(super) struct HBarRow {
    /// The whole name (the label's tooltip) and the name as shown, cut to fit.
    pub full: Text,
    pub shown: Text,
    pub y: Px,
    pub text_y: Px,
    pub segments: Vec<BarSegment>,
    pub value: String,
    pub value_x: Px,
}

pub(super) struct BarSegment {
    pub count: u64,
    pub x: Px,
    pub w: Px,
    pub color: &'static str,
    pub title: Text,
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

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
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

/// A bucket width that gives at most 48 bars over `span_ms`.
pub(super) fn bucket_ms(span_ms: u64) -> u64 {
    const MINUTE: u64 = 60_000;
    let steps = [
        1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10_080,
    ];
    for m in steps {
        if span_ms / (m * MINUTE) < 48 {
            return m * MINUTE;
        }
    }
    let days = span_ms / (48 * 1440 * MINUTE) + 1;
    days * 1440 * MINUTE
}

pub(super) fn bucket_label(width_ms: u64) -> String {
    let minutes = width_ms / 60_000;
    match minutes {
        m if m % 1440 == 0 => format!("{} day{}", m / 1440, plural(m / 1440)),
        m if m % 60 == 0 => format!("{} h", m / 60),
        m => format!("{m} min"),
    }
}

/// A round axis maximum and its tick step for values up to `max`.
pub(super) fn nice_axis(max: u64) -> (u64, u64) {
    let max = max.max(1);
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            let s = step * m;
            if max.div_ceil(s) <= 5 {
                return (max.div_ceil(s) * s, s);
            }
        }
        step *= 10;
    }
}

fn legend<'a>(items: impl Iterator<Item = (&'a str, &'static str)>) -> Vec<LegendItem> {
    items
        .map(|(name, color)| LegendItem {
            name: Text::new(name).cut(CHIP),
            color,
        })
        .collect()
}

fn timeline(d: &Data) -> Option<Timeline> {
    let (first, last) = (d.first?, d.last?);
    let width = bucket_ms(last - first);
    let start = first / width * width;
    let n = usize::try_from((last - start) / width + 1).unwrap_or(1);
    let codes = d.codes_present();
    let mut buckets = vec![BTreeMap::<&str, u64>::new(); n];
    for (ms, code) in &d.decisions {
        let i = usize::try_from((ms - start) / width).unwrap_or(0);
        if let Some(b) = buckets.get_mut(i) {
            *b.entry(code.as_str()).or_default() += 1;
        }
    }
    let (w, h) = (1200.0, 330.0);
    let (left, right, top, bottom) = (64.0, 16.0, 12.0, 52.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let max = buckets
        .iter()
        .map(|b| b.values().sum::<u64>())
        .max()
        .unwrap_or(0);
    let (ymax, ystep) = nice_axis(max);
    let grid = (0..=ymax)
        .step_by(usize::try_from(ystep).unwrap_or(1))
        .map(|v| {
            let y = top + ph - ph * v as f64 / ymax as f64;
            GridLine {
                class: if v == 0 { "axis" } else { "grid" },
                x1: Px(left),
                x2: Px(left + pw),
                y: Px(y),
                label_x: Px(left - 8.0),
                label_y: Px(y + 4.0),
                label: num(v),
            }
        })
        .collect();
    let slot = pw / n as f64;
    let bar = (slot * 0.78).max(1.0);
    let mut bars = Vec::new();
    for (i, b) in buckets.iter().enumerate() {
        let x = left + slot * i as f64 + (slot - bar) / 2.0;
        let mut y = top + ph;
        let t0 = start + width * i as u64;
        for code in &codes {
            let Some(&count) = b.get(code.as_str()) else {
                continue;
            };
            let bh = ph * count as f64 / ymax as f64;
            y -= bh;
            bars.push(TimeBar {
                code: Text::new(code),
                count,
                x: Px(x),
                y: Px(y),
                w: Px(bar),
                h: Px(bh),
                color: data::code_color(code),
                from: hhmm(t0),
                to: hhmm(t0 + width),
            });
        }
    }
    // X labels: at most 12.
    let every = n.div_ceil(12).max(1);
    let multi_day = date(first) != date(last);
    let ticks = (0..n)
        .step_by(every)
        .map(|i| {
            let t0 = start + width * i as u64;
            let x = left + slot * i as f64 + slot / 2.0;
            TimeTick {
                x: Px(x),
                y0: Px(top + ph),
                y1: Px(top + ph + 5.0),
                label_y: Px(top + ph + 19.0),
                label: if multi_day && (i == 0 || hhmm(t0) == "00:00") {
                    format!("{} {}", date(t0).get(5..).unwrap_or(""), hhmm(t0))
                } else {
                    hhmm(t0)
                },
            }
        })
        .collect();
    Some(Timeline {
        bucket: bucket_label(width),
        legend: legend(codes.iter().map(|c| (c.as_str(), data::code_color(c)))),
        w: Px(w),
        h: Px(h),
        grid,
        bars,
        ticks,
        axis_x: Px(left + pw / 2.0),
        axis_y: Px(h - 8.0),
        axis_cy: Px(top + ph / 2.0),
        dates: if multi_day {
            format!("{} to {}", date(first), date(last))
        } else {
            date(first)
        },
    })
}

/// One row of a horizontal bar chart before layout: name, (count, colour, tooltip)
/// segments, value label.
type BarInput = (String, Vec<(u64, &'static str, String)>, String);

struct HBarsSpec {
    id: &'static str,
    label: &'static str,
    axis_title: &'static str,
    w: f64,
    label_width: f64,
    /// How many characters of a row's name fit in `label_width`.
    label_chars: usize,
    legend: Vec<LegendItem>,
}

fn hbars(spec: HBarsSpec, rows: Vec<BarInput>) -> HBars {
    let HBarsSpec {
        id,
        label,
        axis_title,
        w,
        label_width,
        label_chars,
        legend,
    } = spec;
    let row_h = 30.0;
    let (top, bottom, right) = (6.0, 44.0, if w > 500.0 { 110.0 } else { 50.0 });
    let h = top + bottom + row_h * rows.len() as f64;
    let pw = w - label_width - right;
    let max = rows
        .iter()
        .map(|(_, segs, _)| segs.iter().map(|s| s.0).sum::<u64>())
        .max()
        .unwrap_or(0);
    let (xmax, xstep) = nice_axis(max);
    let base = top + row_h * rows.len() as f64;
    let bar_h = row_h - 10.0;
    let ticks = (0..=xmax)
        .step_by(usize::try_from(xstep).unwrap_or(1))
        .map(|v| AxisTick {
            class: if v == 0 { "axis" } else { "grid" },
            x: Px(label_width + pw * v as f64 / xmax as f64),
            label: num(v),
        })
        .collect();
    let rows = rows
        .into_iter()
        .enumerate()
        .map(|(i, (name, segs, value))| {
            let y = top + row_h * i as f64 + 5.0;
            let mut x = label_width;
            let segments = segs
                .into_iter()
                .filter(|(count, _, _)| *count > 0)
                .map(|(count, color, title)| {
                    let bw = pw * count as f64 / xmax as f64;
                    let segment = BarSegment {
                        count,
                        x: Px(x),
                        w: Px(bw),
                        color,
                        title: Text::new(&title),
                    };
                    x += bw;
                    segment
                })
                .collect();
            let full = Text::new(&name);
            HBarRow {
                shown: full.short(label_chars),
                full,
                y: Px(y),
                text_y: Px(y + bar_h / 2.0 + 4.0),
                segments,
                value,
                value_x: Px(x + 6.0),
            }
        })
        .collect();
    HBars {
        id,
        label,
        legend,
        w: Px(w),
        h: Px(h),
        top: Px(top),
        base: Px(base),
        ticks,
        tick_y: Px(base + 16.0),
        label_x: Px(label_width - 10.0),
        bar_h: Px(bar_h),
        rows,
        axis_title,
        axis_x: Px(label_width + pw / 2.0),
        axis_y: Px(h - 6.0),
    }
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
