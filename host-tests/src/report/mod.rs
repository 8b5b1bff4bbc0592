//! `consentry report`: one self-contained static HTML page from an audit log (and,
//! optionally, a dump of Envoy's admin `/stats`), for people to look at.
//!
//! The page has no external assets and no JavaScript: the charts are inline SVG and
//! the styles one `<style>` element, so it opens anywhere, offline, and can be
//! attached to a ticket. It shows requests and refusals over time by problem code, the
//! top callers, consent events (revoked, expired, suspended), how streams ended
//! (format v2's `outcome` and `status`), fields redacted by action, the most frequent
//! refusal reasons, alerts, the chain verification status, and the plugin's counters.
//!
//! Everything in an audit log may be hostile: request ids and callers come from
//! clients, and a tampered log says whatever its author wants (its chain then fails
//! verification, but the page still shows it). So the page is written by a template
//! engine that escapes every expression, askama: its templates are compiled with the
//! program and type-checked, so a misspelt value or a missing section is a build
//! error, not a page that quietly shows less; it costs a proc-macro at build time and
//! nothing at run time (minijinja would parse the template at run time). The values
//! the template sees are typed to keep strings of the log out of places escaping
//! cannot protect (see `view.rs`).

mod charts;
mod data;
mod view;

use std::fmt;
use std::path::Path;

use anyhow::{Context as _, Result};
use askama::Template as _;

use consentry_core::audit::{self, AuditKey};

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
pub fn render(input: &Input<'_>) -> Result<String> {
    let (records, unreadable) = audit_log::records(input.log_text);
    let verification = audit_log::verify_text(input.log_text, input.keys);
    let data = data::Data::collect(&records);
    let stats = input.stats_text.map(parse_stats);
    let page = view::Page::new(
        input.log_name,
        &data,
        &verification,
        input.keys,
        unreadable,
        stats.as_deref(),
    );
    page.render().context("rendering the report")
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
    })?;
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

/// A string of the log or the stats as the page shows it. It reaches the page only
/// through the template, which escapes it (askama's HTML escaper: `&`, `<`, `>`, `"`
/// and `'`, so it is safe in element content and in quoted attributes, SVG's
/// included). Characters that are not text are replaced by U+FFFD first: C0 and C1
/// controls (NUL included), the line and paragraph separators, and the bidirectional
/// controls, which would reorder what a reader sees (a caller that reads backwards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(String);

impl Text {
    pub fn new(s: &str) -> Self {
        Text(
            s.chars()
                .map(|c| if shown_as_is(c) { c } else { '\u{fffd}' })
                .collect(),
        )
    }

    /// At most `max` characters, the last an ellipsis when cut.
    pub fn short(&self, max: usize) -> Text {
        if self.0.chars().count() <= max {
            return self.clone();
        }
        let mut t: String = self.0.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        Text(t)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Cut to at most `max` characters for where it is shown, keeping the whole for a
    /// tooltip: a 100 kB caller must not push a table off the page.
    pub fn cut(self, max: usize) -> Cut {
        let text = self.short(max);
        let full = (text != self).then_some(self);
        Cut { text, full }
    }
}

/// A [`Text`] as shown, and the whole of it when that was cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub text: Text,
    pub full: Option<Text>,
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn shown_as_is(c: char) -> bool {
    !(c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}'
                | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        ))
}

/// An SVG coordinate or length: one decimal.
#[derive(Debug, Clone, Copy)]
pub struct Px(pub f64);

impl fmt::Display for Px {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1}", self.0)
    }
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

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0 %".into();
    }
    let tenths = (part * 1000 + whole / 2) / whole;
    format!("{}.{} %", tenths / 10, tenths % 10)
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn hhmm(ms: u64) -> String {
    audit::format_time(ms).get(11..16).unwrap_or("").to_owned()
}

fn date(ms: u64) -> String {
    audit::format_time(ms).get(..10).unwrap_or("").to_owned()
}

#[cfg(test)]
mod tests {
    use super::charts::{bucket_label, bucket_ms, nice_axis};
    use super::*;

    #[test]
    fn text_that_is_not_text_is_replaced() {
        assert_eq!(
            Text::new("a\u{1b}[31m\0b").as_str(),
            "a\u{fffd}[31m\u{fffd}b"
        );
        assert_eq!(
            Text::new("x\u{2028}y\u{202e}z\u{85}").as_str(),
            "x\u{fffd}y\u{fffd}z\u{fffd}"
        );
        assert_eq!(
            Text::new("spiffe://a.example/é").as_str(),
            "spiffe://a.example/é"
        );
        assert_eq!(Text::new("abcdef").short(4).as_str(), "abc…");
        assert_eq!(Text::new("abcd").short(4).as_str(), "abcd");
        let cut = Text::new("abcdef").cut(4);
        assert_eq!(
            (cut.text.as_str(), cut.full.unwrap().as_str()),
            ("abc…", "abcdef")
        );
        assert_eq!(Text::new("abcd").cut(4).full, None);
    }

    /// The template escapes every expression: nothing may opt out of it, and no
    /// expression may stand inside the `<style>` element, where HTML escaping does
    /// not apply.
    #[test]
    fn the_template_never_writes_unescaped() {
        let template = include_str!("../../templates/report.html");
        for bypass in [
            "|safe",
            "| safe",
            "|escape",
            "|e(",
            "|e ",
            "|e}",
            "autoescape",
        ] {
            assert!(!template.contains(bypass), "{bypass} in the template");
        }
        let style = template
            .split_once("<style>")
            .and_then(|(_, rest)| rest.split_once("</style>"))
            .map(|(style, _)| style)
            .unwrap();
        assert!(!style.contains("{{") && !style.contains("{%"), "{style}");
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
        assert_eq!(Px(12.345).to_string(), "12.3");
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
