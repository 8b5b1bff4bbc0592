//! `consentry report`: one self-contained static HTML page from an audit log (and,
//! optionally, a dump of Envoy's admin `/stats`), for people to look at.
//!
//! The page has no external assets and no JavaScript: the charts are inline SVG and
//! the styles one `<style>` element, so it opens anywhere, offline, and can be
//! attached to a ticket. Every string taken from the log or the stats is escaped.
//! It shows requests and refusals over time by problem code, the top callers, consent
//! events (revoked, expired, suspended), fields redacted by action, the most frequent
//! refusal reasons, alerts, the chain verification status, and the plugin's counters.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};

use consentry_core::audit::{self, AuditKey, FailureReason, Record, VerifySummary};

use crate::audit_log;

/// What the page is made from.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// Shown as the source (a file name, not a path of the machine it was made on).
    pub log_name: &'a str,
    pub log_text: &'a str,
    /// Envoy admin `/stats` text (`name: value` lines), if any.
    pub stats_text: Option<&'a str>,
    pub keys: &'a [AuditKey],
}

/// The page.
pub fn render(input: &Input<'_>) -> String {
    let (records, unreadable) = audit_log::records(input.log_text);
    let verification = audit_log::verify_text(input.log_text, input.keys);
    let data = Data::collect(&records);
    let stats = input.stats_text.map(parse_stats).unwrap_or_default();

    let mut page = Page::default();
    page.head(input, &data);
    page.kpis(&data);
    page.timeline(&data);
    page.open_row();
    page.callers(&data, 7);
    page.consent_events(&data, 5);
    page.close_row();
    page.open_row();
    page.codes(&data, 4);
    page.redactions(&data, 4);
    page.redacted_fields(&data, 4);
    page.close_row();
    page.reasons(&data);
    page.open_row();
    page.alerts(&data, 6);
    page.chains(&verification, input.keys, unreadable, 6);
    page.close_row();
    if input.stats_text.is_some() {
        page.counters(&stats);
    }
    page.foot(input);
    page.out
}

/// `consentry report LOG [--stats FILE] -o OUT`: reads the files, writes the page, and
/// returns one line saying what was written.
pub fn write(log: &Path, stats: Option<&Path>, output: &Path, keys: &[AuditKey]) -> Result<String> {
    let log_text = audit_log::read_log(log)?;
    let stats_text = stats
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let log_name = log.file_name().map_or_else(
        || log.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let html = render(&Input {
        log_name: &log_name,
        log_text: &log_text,
        stats_text: stats_text.as_deref(),
        keys,
    });
    std::fs::write(output, &html).with_context(|| format!("writing {}", output.display()))?;
    let chains = match audit_log::verify_text(&log_text, keys) {
        Ok(s) if s.records > 0 => format!("chains verified ({} records)", s.records),
        Ok(_) => "no audit records found".to_owned(),
        Err(f) => format!("chain verification failed: {f}"),
    };
    Ok(format!("wrote {}: {chains}", output.display()))
}

/// `name: value` lines of Envoy's `/stats` text output, in order.
pub fn parse_stats(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(": ")?;
            let name = name.trim();
            (!name.is_empty() && !name.contains(' '))
                .then(|| (name.to_owned(), value.trim().to_owned()))
        })
        .collect()
}

/// Text safe in HTML content and in quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// `1234567` as `1,234,567`.
pub fn num(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The problem codes in the order the page shows them, `ok` first.
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

const ALLOW_COLOR: &str = "#3a9d6e";
const DENY_COLOR: &str = "#d64550";

fn code_color(code: &str) -> &'static str {
    CODE_ORDER
        .iter()
        .find(|(c, _)| *c == code)
        .map_or("#9aa5b1", |(_, color)| color)
}

fn code_rank(code: &str) -> usize {
    CODE_ORDER
        .iter()
        .position(|(c, _)| *c == code)
        .unwrap_or(CODE_ORDER.len())
}

fn action_color(action: &str) -> &'static str {
    ACTION_COLORS
        .iter()
        .find(|(a, _)| *a == action)
        .map_or("#9aa5b1", |(_, color)| color)
}

fn status_of(code: &str) -> String {
    consentry_core::problem::Code::ALL
        .iter()
        .find(|c| c.as_str() == code)
        .map_or_else(
            || {
                if code == "ok" {
                    "2xx".into()
                } else {
                    "?".into()
                }
            },
            |c| c.status().to_string(),
        )
}

// ---------------------------------------------------------------------------------
// The numbers.

#[derive(Default)]
struct CallerStats {
    allowed: u64,
    refused: u64,
}

#[derive(Default)]
struct ReasonStats {
    count: u64,
    callers: BTreeSet<String>,
    last: u64,
}

#[derive(Default)]
struct ConsentEvent {
    count: u64,
    consents: BTreeSet<String>,
}

struct AlertRow {
    ms: u64,
    alert: String,
    caller: String,
    code: String,
}

#[derive(Default)]
struct Data {
    total: u64,
    allowed: u64,
    checkpoints: u64,
    first: Option<u64>,
    last: Option<u64>,
    /// (time, code) of every decision.
    decisions: Vec<(u64, String)>,
    callers: HashMap<String, CallerStats>,
    consents: BTreeSet<String>,
    events: BTreeMap<&'static str, ConsentEvent>,
    by_action: BTreeMap<String, u64>,
    fields: HashMap<(String, String), u64>,
    released: u64,
    reasons: HashMap<(String, String), ReasonStats>,
    codes: BTreeMap<String, u64>,
    alerts: Vec<AlertRow>,
}

const EVENTS: [(&str, &str, &str); 3] = [
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

impl Data {
    fn collect(records: &[(usize, Record)]) -> Self {
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

    fn refused(&self) -> u64 {
        self.total - self.allowed
    }

    /// Codes present, in display order.
    fn codes_present(&self) -> Vec<String> {
        let mut codes: Vec<String> = self.codes.keys().cloned().collect();
        codes.sort_by(|a, b| code_rank(a).cmp(&code_rank(b)).then(a.cmp(b)));
        codes
    }
}

/// A bucket width that gives at most 48 bars over `span_ms`.
fn bucket_ms(span_ms: u64) -> u64 {
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

fn bucket_label(width_ms: u64) -> String {
    let minutes = width_ms / 60_000;
    match minutes {
        m if m % 1440 == 0 => format!("{} day{}", m / 1440, if m == 1440 { "" } else { "s" }),
        m if m % 60 == 0 => format!("{} h", m / 60),
        m => format!("{m} min"),
    }
}

/// A round axis maximum and its tick step for values up to `max`.
fn nice_axis(max: u64) -> (u64, u64) {
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

fn hhmm(ms: u64) -> String {
    audit::format_time(ms).get(11..16).unwrap_or("").to_owned()
}

fn date(ms: u64) -> String {
    audit::format_time(ms).get(..10).unwrap_or("").to_owned()
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0 %".into();
    }
    let tenths = (part * 1000 + whole / 2) / whole;
    format!("{}.{} %", tenths / 10, tenths % 10)
}

// ---------------------------------------------------------------------------------
// The page.

/// One bar segment: its value, colour and tooltip.
type Segment = (u64, &'static str, String);
/// One row of a horizontal bar chart: its label, segments and value label.
type BarRow = (String, Vec<Segment>, String);

#[derive(Default)]
struct Page {
    out: String,
}

const STYLE: &str = r#"
:root{--ink:#1f2933;--muted:#616e7c;--line:#e4e7eb;--bg:#f3f5f8;--card:#fff;--navy:#102a43}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",sans-serif}
header{background:var(--navy);color:#f0f4f8;padding:28px 0 30px}
.wrap{max-width:1280px;margin:0 auto;padding:0 40px}
header h1{margin:0;font-size:26px;font-weight:650;letter-spacing:-.01em}
header .sub{margin-top:4px;color:#9fb3c8;font-size:14px}
header .top{display:flex;justify-content:space-between;align-items:flex-start;gap:24px}
.badge{display:inline-block;padding:6px 12px;border-radius:8px;font-size:13px;font-weight:600;max-width:560px}
.badge.verified{background:#e3f9e5;color:#0e5814}
.badge.failed{background:#ffe3e3;color:#8a041a}
.badge.unverified{background:#fff3c4;color:#7c5e10}
main.wrap{padding-top:24px;padding-bottom:48px}
.kpis{display:grid;grid-template-columns:repeat(7,1fr);gap:14px;margin-bottom:20px}
.kpi{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px;box-shadow:0 1px 2px rgba(16,42,67,.05)}
.kpi .value{font-size:26px;font-weight:650;font-variant-numeric:tabular-nums;line-height:1.2}
.kpi .label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.05em}
.kpi .note{color:var(--muted);font-size:12px}
.row{display:grid;grid-template-columns:repeat(12,1fr);gap:20px;margin-bottom:20px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 20px;box-shadow:0 1px 2px rgba(16,42,67,.05);margin-bottom:20px;min-width:0}
.row .card{margin-bottom:0}
.span4{grid-column:span 4}.span5{grid-column:span 5}.span6{grid-column:span 6}.span7{grid-column:span 7}
h2{font-size:16px;margin:0 0 2px;font-weight:650}
.hint{color:var(--muted);font-size:13px;margin:0 0 12px}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;font-size:13px;margin:0 0 8px;color:#3e4c59}
.swatch{display:inline-block;width:11px;height:11px;border-radius:3px;margin-right:6px;vertical-align:-1px}
svg{display:block;width:100%;height:auto}
svg text{font-family:inherit;font-size:12px;fill:#52606d}
svg .axis-title{font-size:12px;fill:#3e4c59;font-weight:600}
svg .grid{stroke:#e4e7eb;stroke-width:1}
svg .axis{stroke:#9aa5b1;stroke-width:1}
svg .value{fill:#1f2933;font-size:12px}
table{width:100%;border-collapse:collapse;font-size:14px}
th{text-align:left;color:var(--muted);font-weight:600;font-size:12px;text-transform:uppercase;letter-spacing:.04em;border-bottom:1px solid var(--line);padding:6px 8px}
td{border-bottom:1px solid #eef0f3;padding:6px 8px;font-variant-numeric:tabular-nums;vertical-align:middle}
tr:last-child td{border-bottom:0}
.num{text-align:right;white-space:nowrap}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;font-size:13px;overflow-wrap:anywhere}
.chip{display:inline-block;padding:1px 9px;border-radius:999px;font-size:12px;font-weight:600;color:#fff;white-space:nowrap}
.share{display:inline-block;height:8px;border-radius:4px;background:#d64550;vertical-align:middle;margin-right:8px}
.events{display:grid;grid-template-columns:repeat(3,1fr);gap:12px}
.event{border-radius:8px;padding:12px 14px;background:#f7f5fb;border-left:4px solid #8e5cc2}
.event .value{font-size:24px;font-weight:650;font-variant-numeric:tabular-nums}
.event .label{font-weight:600}
.event .note{color:var(--muted);font-size:12px}
.empty{color:var(--muted);font-style:italic;padding:12px 0}
footer{color:var(--muted);font-size:12px;padding:0 0 32px}
"#;

impl Page {
    fn open_row(&mut self) {
        self.out.push_str("<div class=\"row\">\n");
    }

    fn close_row(&mut self) {
        self.out.push_str("</div>\n");
    }

    fn head(&mut self, input: &Input<'_>, d: &Data) {
        let period = match (d.first, d.last) {
            (Some(f), Some(l)) if date(f) == date(l) => {
                format!("{} {}–{} UTC", date(f), hhmm(f), hhmm(l))
            }
            (Some(f), Some(l)) => format!("{} {} – {} {} UTC", date(f), hhmm(f), date(l), hhmm(l)),
            _ => "no decisions".to_owned(),
        };
        let _ = write!(
            self.out,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>Consentry audit report: {name}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
             <header><div class=\"wrap\"><div class=\"top\"><div><h1>Consentry audit report</h1>\
             <div class=\"sub\">{name} · {period} · {n} decision{s}</div></div>\
             <!--STATUS--></div></div></header>\n<main class=\"wrap\">\n",
            name = esc(input.log_name),
            period = esc(&period),
            n = num(d.total),
            s = if d.total == 1 { "" } else { "s" },
        );
    }

    fn kpis(&mut self, d: &Data) {
        let redacted: u64 = d.by_action.values().sum();
        let lockouts = d.alerts.iter().filter(|a| a.alert == "lockout").count() as u64;
        let cards = [
            ("requests", "Decisions", num(d.total), String::new()),
            (
                "allowed",
                "Allowed",
                num(d.allowed),
                pct(d.allowed, d.total),
            ),
            (
                "refused",
                "Refused",
                num(d.refused()),
                pct(d.refused(), d.total),
            ),
            (
                "callers",
                "Callers",
                num(d.callers.len() as u64),
                "distinct".into(),
            ),
            (
                "consents",
                "Consents",
                num(d.consents.len() as u64),
                "distinct ids".into(),
            ),
            (
                "redacted",
                "Values redacted",
                num(redacted),
                format!("{} released", num(d.released)),
            ),
            (
                "alerts",
                "Lockouts",
                num(lockouts),
                format!(
                    "{} alert{}",
                    d.alerts.len(),
                    if d.alerts.len() == 1 { "" } else { "s" }
                ),
            ),
        ];
        self.out.push_str("<section class=\"kpis\">\n");
        for (id, label, value, note) in cards {
            let _ = writeln!(
                self.out,
                "<div class=\"kpi\" id=\"kpi-{id}\"><div class=\"label\">{}</div><div class=\"value\">{}</div><div class=\"note\">{}</div></div>",
                esc(label),
                esc(&value),
                esc(&note)
            );
        }
        self.out.push_str("</section>\n");
    }

    fn timeline(&mut self, d: &Data) {
        self.out.push_str(
            "<section class=\"card\" id=\"timeline\">\n<h2>Requests and refusals over time</h2>\n",
        );
        let (Some(first), Some(last)) = (d.first, d.last) else {
            self.out
                .push_str("<p class=\"empty\">No decisions in this log.</p></section>\n");
            return;
        };
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
        let _ = writeln!(
            self.out,
            "<p class=\"hint\">Decisions per {} by problem code (<code>ok</code>: allowed), stacked.</p>",
            bucket_label(width)
        );
        self.legend(codes.iter().map(|c| (c.as_str(), code_color(c))));

        let (w, h) = (1200.0, 330.0);
        let (left, right, top, bottom) = (64.0, 16.0, 12.0, 52.0);
        let (pw, ph) = (w - left - right, h - top - bottom);
        let max = buckets
            .iter()
            .map(|b| b.values().sum::<u64>())
            .max()
            .unwrap_or(0);
        let (ymax, ystep) = nice_axis(max);
        let _ = writeln!(
            self.out,
            "<svg id=\"chart-timeline\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"Decisions over time by problem code\">"
        );
        self.y_grid(left, top, pw, ph, ymax, ystep);
        let slot = pw / n as f64;
        let bar = (slot * 0.78).max(1.0);
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
                let _ = writeln!(
                    self.out,
                    "<rect class=\"bar\" data-code=\"{code}\" data-count=\"{count}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{bh:.1}\" fill=\"{color}\"><title>{from}–{to} UTC · {code}: {count}</title></rect>",
                    code = esc(code),
                    color = code_color(code),
                    from = hhmm(t0),
                    to = hhmm(t0 + width),
                );
            }
        }
        // X labels: at most 12.
        let every = n.div_ceil(12).max(1);
        let multi_day = date(first) != date(last);
        for i in (0..n).step_by(every) {
            let t0 = start + width * i as u64;
            let x = left + slot * i as f64 + slot / 2.0;
            let label = if multi_day && (i == 0 || hhmm(t0) == "00:00") {
                format!("{} {}", date(t0).get(5..).unwrap_or(""), hhmm(t0))
            } else {
                hhmm(t0)
            };
            let _ = writeln!(
                self.out,
                "<line class=\"axis\" x1=\"{x:.1}\" y1=\"{y0:.1}\" x2=\"{x:.1}\" y2=\"{y1:.1}\"/><text x=\"{x:.1}\" y=\"{ty:.1}\" text-anchor=\"middle\">{label}</text>",
                y0 = top + ph,
                y1 = top + ph + 5.0,
                ty = top + ph + 19.0,
            );
        }
        let _ = writeln!(
            self.out,
            "<text class=\"axis-title\" x=\"{cx:.1}\" y=\"{by:.1}\" text-anchor=\"middle\">Time (UTC, {date})</text>\
             <text class=\"axis-title\" transform=\"translate(16 {cy:.1}) rotate(-90)\" text-anchor=\"middle\">Requests per {bucket}</text>\n</svg>\n</section>",
            cx = left + pw / 2.0,
            by = h - 8.0,
            cy = top + ph / 2.0,
            date = if multi_day {
                format!("{} to {}", date(first), date(last))
            } else {
                date(first)
            },
            bucket = bucket_label(width),
        );
    }

    fn legend<'a>(&mut self, items: impl Iterator<Item = (&'a str, &'a str)>) {
        self.out.push_str("<div class=\"legend\">");
        for (name, color) in items {
            let _ = write!(
                self.out,
                "<span><i class=\"swatch\" style=\"background:{color}\"></i>{}</span>",
                esc(name)
            );
        }
        self.out.push_str("</div>\n");
    }

    /// Horizontal grid lines and value labels of a vertical axis.
    fn y_grid(&mut self, left: f64, top: f64, pw: f64, ph: f64, ymax: u64, ystep: u64) {
        let mut v = 0;
        while v <= ymax {
            let y = top + ph - ph * v as f64 / ymax as f64;
            let class = if v == 0 { "axis" } else { "grid" };
            let _ = writeln!(
                self.out,
                "<line class=\"{class}\" x1=\"{left:.1}\" y1=\"{y:.1}\" x2=\"{x2:.1}\" y2=\"{y:.1}\"/><text x=\"{tx:.1}\" y=\"{ty:.1}\" text-anchor=\"end\">{label}</text>",
                x2 = left + pw,
                tx = left - 8.0,
                ty = y + 4.0,
                label = num(v),
            );
            v += ystep;
        }
    }

    /// A horizontal bar chart: one row per item, stacked segments, a value label.
    fn hbars(
        &mut self,
        id: &str,
        label: &str,
        axis_title: &str,
        w: f64,
        label_width: f64,
        rows: &[BarRow],
    ) {
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
        let _ = writeln!(
            self.out,
            "<svg id=\"{id}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{}\">",
            esc(label)
        );
        let base = top + row_h * rows.len() as f64;
        let mut v = 0;
        while v <= xmax {
            let x = label_width + pw * v as f64 / xmax as f64;
            let class = if v == 0 { "axis" } else { "grid" };
            let _ = writeln!(
                self.out,
                "<line class=\"{class}\" x1=\"{x:.1}\" y1=\"{top:.1}\" x2=\"{x:.1}\" y2=\"{base:.1}\"/><text x=\"{x:.1}\" y=\"{ty:.1}\" text-anchor=\"middle\">{}</text>",
                num(v),
                ty = base + 16.0,
            );
            v += xstep;
        }
        for (i, (name, segs, value)) in rows.iter().enumerate() {
            let y = top + row_h * i as f64 + 5.0;
            let bh = row_h - 10.0;
            let _ = writeln!(
                self.out,
                "<text x=\"{tx:.1}\" y=\"{ty:.1}\" text-anchor=\"end\"><title>{full}</title>{shown}</text>",
                tx = label_width - 10.0,
                ty = y + bh / 2.0 + 4.0,
                full = esc(name),
                shown = esc(&short(name, 44)),
            );
            let mut x = label_width;
            for (count, color, title) in segs {
                if *count == 0 {
                    continue;
                }
                let bw = pw * *count as f64 / xmax as f64;
                let _ = writeln!(
                    self.out,
                    "<rect class=\"bar\" data-count=\"{count}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{bh:.1}\" fill=\"{color}\" rx=\"2\"><title>{}</title></rect>",
                    esc(title)
                );
                x += bw;
            }
            let _ = writeln!(
                self.out,
                "<text class=\"value\" x=\"{vx:.1}\" y=\"{ty:.1}\">{}</text>",
                esc(value),
                vx = x + 6.0,
                ty = y + bh / 2.0 + 4.0,
            );
        }
        let _ = writeln!(
            self.out,
            "<text class=\"axis-title\" x=\"{cx:.1}\" y=\"{ty:.1}\" text-anchor=\"middle\">{}</text>\n</svg>",
            esc(axis_title),
            cx = label_width + pw / 2.0,
            ty = h - 6.0,
        );
    }

    fn callers(&mut self, d: &Data, span: u8) {
        let _ = writeln!(
            self.out,
            "<section class=\"card span{span}\" id=\"callers\">\n<h2>Top callers</h2>\n<p class=\"hint\">Decisions per caller (the grantee, mTLS identity or address the plugin identified), top 10.</p>"
        );
        if d.callers.is_empty() {
            self.out
                .push_str("<p class=\"empty\">No callers.</p></section>\n");
            return;
        }
        self.legend([("allowed", ALLOW_COLOR), ("refused", DENY_COLOR)].into_iter());
        let mut callers: Vec<_> = d.callers.iter().collect();
        callers.sort_by(|a, b| {
            (b.1.allowed + b.1.refused)
                .cmp(&(a.1.allowed + a.1.refused))
                .then(a.0.cmp(b.0))
        });
        let rows: Vec<_> = callers
            .iter()
            .take(10)
            .map(|(name, s)| {
                let total = s.allowed + s.refused;
                (
                    (*name).clone(),
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
        self.hbars(
            "chart-callers",
            "Top callers",
            "Requests",
            650.0,
            280.0,
            &rows,
        );
        self.out.push_str("</section>\n");
    }

    fn consent_events(&mut self, d: &Data, span: u8) {
        let _ = writeln!(
            self.out,
            "<section class=\"card span{span}\" id=\"consent-events\">\n<h2>Consent events</h2>\n<p class=\"hint\">Requests refused because the consent ended, and how many distinct consents that was.</p>\n<div class=\"events\">"
        );
        for (code, label, note) in EVENTS {
            let e = d.events.get(code);
            let count = e.map_or(0, |e| e.count);
            let consents = e.map_or(0, |e| e.consents.len() as u64);
            let _ = writeln!(
                self.out,
                "<div class=\"event\" id=\"event-{code}\" style=\"border-left-color:{color}\"><div class=\"label\">{label}</div><div class=\"value\">{}</div><div class=\"note\">{} consent{} · {}</div><div class=\"note\"><code>{code}</code></div></div>",
                num(count),
                num(consents),
                if consents == 1 { "" } else { "s" },
                esc(note),
                color = code_color(code),
            );
        }
        self.out.push_str("</div>\n</section>\n");
    }

    fn codes(&mut self, d: &Data, span: u8) {
        let _ = writeln!(
            self.out,
            "<section class=\"card span{span}\" id=\"codes\">\n<h2>Refusals by problem code</h2>\n<p class=\"hint\">What callers were told, with the HTTP status.</p>"
        );
        let refused: Vec<_> = d
            .codes_present()
            .into_iter()
            .filter(|c| c != "ok")
            .collect();
        if refused.is_empty() {
            self.out.push_str("<p class=\"empty\">No refusals.</p>\n");
        } else {
            self.out.push_str("<table id=\"table-codes\"><thead><tr><th>Problem code</th><th class=\"num\">Status</th><th class=\"num\">Requests</th></tr></thead><tbody>\n");
            for code in refused {
                let count = d.codes.get(&code).copied().unwrap_or(0);
                let _ = writeln!(
                    self.out,
                    "<tr><td><span class=\"chip\" style=\"background:{}\">{}</span></td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                    code_color(&code),
                    esc(&code),
                    esc(&status_of(&code)),
                    num(count)
                );
            }
            self.out.push_str("</tbody></table>\n");
        }
        self.out.push_str("</section>\n");
    }

    fn redactions(&mut self, d: &Data, span: u8) {
        let _ = writeln!(
            self.out,
            "<section class=\"card span{span}\" id=\"redactions\">\n<h2>Fields redacted by action</h2>\n<p class=\"hint\">Values withheld or transformed in responses, by the action the policy applied.</p>"
        );
        if d.by_action.is_empty() {
            self.out
                .push_str("<p class=\"empty\">Nothing was redacted.</p></section>\n");
            return;
        }
        let mut actions: Vec<_> = d.by_action.iter().collect();
        actions.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let rows: Vec<_> = actions
            .iter()
            .map(|(action, count)| {
                (
                    (*action).clone(),
                    vec![(**count, action_color(action), format!("{action}: {count}"))],
                    num(**count),
                )
            })
            .collect();
        self.hbars(
            "chart-redactions",
            "Fields redacted by action",
            "Values",
            350.0,
            100.0,
            &rows,
        );
        self.out.push_str("</section>\n");
    }

    fn redacted_fields(&mut self, d: &Data, span: u8) {
        let _ = writeln!(
            self.out,
            "<section class=\"card span{span}\" id=\"redacted-fields\">\n<h2>Most redacted fields</h2>\n<p class=\"hint\">By the policy's field path; records never hold the values.</p>"
        );
        if d.fields.is_empty() {
            self.out
                .push_str("<p class=\"empty\">Nothing was redacted.</p></section>\n");
            return;
        }
        let mut fields: Vec<_> = d.fields.iter().collect();
        fields.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        self.out.push_str("<table id=\"table-fields\"><thead><tr><th>Field</th><th>Action</th><th class=\"num\">Values</th></tr></thead><tbody>\n");
        for ((field, action), count) in fields.into_iter().take(10) {
            let _ = writeln!(
                self.out,
                "<tr><td class=\"mono\">{}</td><td><span class=\"chip\" style=\"background:{}\">{}</span></td><td class=\"num\">{}</td></tr>",
                esc(field),
                action_color(action),
                esc(action),
                num(*count)
            );
        }
        self.out.push_str("</tbody></table>\n</section>\n");
    }

    fn reasons(&mut self, d: &Data) {
        self.out.push_str("<section class=\"card\" id=\"reasons\">\n<h2>Most frequent refusal reasons</h2>\n<p class=\"hint\">The plugin's internal reason for each refusal (never sent to the caller), with the problem code the caller got.</p>\n");
        if d.reasons.is_empty() {
            self.out
                .push_str("<p class=\"empty\">No refusals.</p></section>\n");
            return;
        }
        let mut reasons: Vec<_> = d.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        let refused = d.refused();
        let top = reasons.first().map_or(1, |r| r.1.count).max(1);
        self.out.push_str("<table id=\"table-reasons\"><thead><tr><th>Reason</th><th>Code</th><th class=\"num\">Status</th><th class=\"num\">Refusals</th><th>Share of refusals</th><th class=\"num\">Callers</th><th class=\"num\">Last seen (UTC)</th></tr></thead><tbody>\n");
        for ((reason, code), r) in reasons.into_iter().take(15) {
            let bar = 120 * r.count / top;
            let _ = writeln!(
                self.out,
                "<tr><td class=\"mono\">{}</td><td><span class=\"chip\" style=\"background:{}\">{}</span></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td><span class=\"share\" style=\"width:{bar}px;background:{}\"></span>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                esc(reason),
                code_color(code),
                esc(code),
                esc(&status_of(code)),
                num(r.count),
                code_color(code),
                pct(r.count, refused),
                num(r.callers.len() as u64),
                esc(&format!("{} {}", date(r.last), hhmm(r.last))),
            );
        }
        self.out.push_str("</tbody></table>\n</section>\n");
    }

    fn alerts(&mut self, d: &Data, span: u8) {
        let _ = writeln!(
            self.out,
            "<section class=\"card span{span}\" id=\"alerts\">\n<h2>Alerts</h2>\n<p class=\"hint\">Raised with a decision, e.g. a caller locked out after a burst of refusals.</p>"
        );
        if d.alerts.is_empty() {
            self.out
                .push_str("<p class=\"empty\">No alerts.</p></section>\n");
            return;
        }
        self.out.push_str("<table id=\"table-alerts\"><thead><tr><th>Time (UTC)</th><th>Alert</th><th>Caller</th><th>Code</th></tr></thead><tbody>\n");
        for a in d.alerts.iter().rev().take(12) {
            let _ = writeln!(
                self.out,
                "<tr><td class=\"num\">{}</td><td><span class=\"chip\" style=\"background:#1d4e89\">{}</span></td><td class=\"mono\">{}</td><td class=\"mono\">{}</td></tr>",
                esc(&format!("{} {}", date(a.ms), hhmm(a.ms))),
                esc(&a.alert),
                esc(&a.caller),
                esc(&a.code),
            );
        }
        self.out.push_str("</tbody></table>\n</section>\n");
    }

    fn chains(
        &mut self,
        verification: &Result<VerifySummary, audit::VerifyFailure>,
        keys: &[AuditKey],
        unreadable: usize,
        span: u8,
    ) {
        let (class, badge) = match verification {
            Ok(s) if s.records == 0 => ("unverified", "No audit records found".to_owned()),
            Ok(s) => {
                let keyed = s.chains.iter().all(|c| !c.kids.is_empty());
                (
                    "verified",
                    format!(
                        "Chains verified{}: {} chain{}, {} records",
                        if keyed { " (keyed)" } else { " (unkeyed)" },
                        s.chains.len(),
                        if s.chains.len() == 1 { "" } else { "s" },
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
        let status = format!(
            "<div class=\"badge {class}\" id=\"chain-status\" data-status=\"{class}\">{}</div>",
            esc(&badge)
        );
        self.out = self.out.replacen("<!--STATUS-->", &status, 1);
        let status = format!("<span class=\"badge {class}\">{}</span>", esc(&badge));

        let _ = writeln!(
            self.out,
            "<section class=\"card span{span}\" id=\"chains\">\n<h2>Chain verification</h2>\n<p class=\"hint\">Each worker of the proxy writes its own hash chain; a removed, altered, reordered or inserted record breaks it. A chain's missing tail cannot be detected.</p>"
        );
        let _ = writeln!(self.out, "<p>{status}</p>");
        match verification {
            Ok(s) if !s.chains.is_empty() => {
                self.out.push_str("<table id=\"table-chains\"><thead><tr><th>Chain</th><th class=\"num\">Records</th><th>Key</th><th class=\"num\">First</th><th class=\"num\">Last</th></tr></thead><tbody>\n");
                for c in &s.chains {
                    let key = if c.kids.is_empty() {
                        "unkeyed".to_owned()
                    } else {
                        c.kids.join(", ")
                    };
                    let _ = writeln!(
                        self.out,
                        "<tr><td class=\"mono\">{}</td><td class=\"num\">{}</td><td class=\"mono\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                        esc(&c.chain),
                        num(c.records),
                        esc(&key),
                        esc(c.first_time.get(11..19).unwrap_or("")),
                        esc(c.last_time.get(11..19).unwrap_or("")),
                    );
                }
                self.out.push_str("</tbody></table>\n");
                for w in &s.warnings {
                    let _ = writeln!(self.out, "<p class=\"hint\">Warning: {}</p>", esc(w));
                }
            }
            _ => {}
        }
        if unreadable > 0 {
            let _ = writeln!(
                self.out,
                "<p class=\"hint\">{} record line{} could not be read and {} left out of the charts.</p>",
                num(unreadable as u64),
                if unreadable == 1 { "" } else { "s" },
                if unreadable == 1 { "is" } else { "are" },
            );
        }
        self.out.push_str("</section>\n");
    }

    fn counters(&mut self, stats: &[(String, String)]) {
        self.out.push_str("<section class=\"card\" id=\"counters\">\n<h2>Proxy counters</h2>\n<p class=\"hint\">The plugin's counters from Envoy's admin <code>/stats</code> (<code>wasmcustom.consentry.*</code>).</p>\n");
        let ours: Vec<_> = stats
            .iter()
            .filter_map(|(n, v)| Some((n.strip_prefix("wasmcustom.")?, v)))
            .filter(|(n, _)| n.starts_with("consentry."))
            .collect();
        if ours.is_empty() {
            let _ = writeln!(
                self.out,
                "<p class=\"empty\">No Consentry counters among the {} stats.</p></section>",
                num(stats.len() as u64)
            );
            return;
        }
        self.out.push_str("<table id=\"table-counters\"><thead><tr><th>Counter</th><th class=\"num\">Value</th></tr></thead><tbody>\n");
        for (name, value) in ours {
            let shown = value.parse::<u64>().map_or_else(|_| value.clone(), num);
            let _ = writeln!(
                self.out,
                "<tr><td class=\"mono\">{}</td><td class=\"num\">{}</td></tr>",
                esc(name),
                esc(&shown)
            );
        }
        self.out.push_str("</tbody></table>\n</section>\n");
    }

    fn foot(&mut self, input: &Input<'_>) {
        let _ = write!(
            self.out,
            "</main>\n<footer><div class=\"wrap\">Made by <code>consentry report</code> from {}. Audit records hold no personal values: subjects are pseudonymised and fields are named, never shown.</div></footer>\n</body>\n</html>\n",
            esc(input.log_name)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_text_and_attributes() {
        assert_eq!(
            esc("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
        assert_eq!(esc("a\u{1b}[31m"), "a\u{fffd}[31m");
    }

    #[test]
    fn numbers_axes_and_buckets_are_round() {
        assert_eq!(num(0), "0");
        assert_eq!(num(999), "999");
        assert_eq!(num(1000), "1,000");
        assert_eq!(num(1_234_567), "1,234,567");
        assert_eq!(nice_axis(0), (1, 1));
        assert_eq!(nice_axis(7), (8, 2));
        assert_eq!(nice_axis(43), (50, 10));
        assert_eq!(nice_axis(230), (250, 50));
        assert_eq!(bucket_ms(4 * 3_600_000), 10 * 60_000);
        assert_eq!(bucket_ms(30 * 60_000), 60_000);
        assert_eq!(bucket_label(10 * 60_000), "10 min");
        assert_eq!(bucket_label(2 * 3_600_000), "2 h");
        assert_eq!(pct(1, 3), "33.3 %");
    }

    #[test]
    fn stats_lines_are_name_colon_value() {
        let s = parse_stats(
            "wasmcustom.consentry.decision.allow: 12\ncluster.x.upstream_rq_total: 3\nnot a stat\nhistogram: P0(nan,1)\n",
        );
        assert_eq!(s.len(), 3);
        assert_eq!(
            s[0],
            ("wasmcustom.consentry.decision.allow".into(), "12".into())
        );
    }
}
