//! Medians, ratios, and the results as a Markdown table, a CSV file and an SVG chart.

use std::fmt::Write as _;

use super::wrk::Measured;
use super::{Group, Role, Row};

/// Every run of one row.
#[derive(Debug, Clone)]
pub struct RowResult {
    pub row: Row,
    /// What one request returned before the runs (status, body bytes).
    pub status: u16,
    pub body_bytes: usize,
    /// One per repetition, at the configured connections.
    pub load: Vec<Measured>,
    /// One per repetition, on one connection (unloaded latency).
    pub single: Vec<Measured>,
}

/// The median of some values (0 for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// A row's medians.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub rps: f64,
    pub rps_min: f64,
    pub rps_max: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub single_p50_ms: f64,
    pub single_p99_ms: f64,
    pub errors: u64,
}

impl RowResult {
    pub fn summary(&self) -> Summary {
        let rps: Vec<f64> = self.load.iter().map(Measured::rps).collect();
        let of = |runs: &[Measured], f: fn(&Measured) -> f64| median(runs.iter().map(f).collect());
        Summary {
            rps: median(rps.clone()),
            rps_min: rps.iter().copied().fold(f64::INFINITY, f64::min),
            rps_max: rps.iter().copied().fold(0.0, f64::max),
            p50_ms: of(&self.load, |m| m.p50_ms),
            p99_ms: of(&self.load, |m| m.p99_ms),
            single_p50_ms: of(&self.single, |m| m.p50_ms),
            single_p99_ms: of(&self.single, |m| m.p99_ms),
            errors: self
                .load
                .iter()
                .chain(&self.single)
                .map(|m| m.status_errors + m.socket_errors)
                .sum(),
        }
    }
}

/// The summary of the row with this role in this group, if there is one.
pub fn find(results: &[RowResult], group: Group, role: Role) -> Option<Summary> {
    results
        .iter()
        .find(|r| r.row.group == group && r.row.role == role)
        .map(RowResult::summary)
}

/// `row`'s requests/s over `peer`'s in the same group: the median of the ratios of
/// each repetition (a repetition runs every row once, close together), which
/// follows the load the shared machine was under better than a ratio of medians.
pub fn paired_ratio(results: &[RowResult], row: &RowResult, peer: Role) -> Option<f64> {
    let peer = results
        .iter()
        .find(|r| r.row.group == row.row.group && r.row.role == peer)?;
    let ratios: Vec<f64> = row
        .load
        .iter()
        .zip(&peer.load)
        .filter(|(_, p)| p.rps() > 0.0)
        .map(|(m, p)| m.rps() / p.rps())
        .collect();
    (!ratios.is_empty()).then(|| median(ratios))
}

fn ratio(results: &[RowResult], row: &RowResult, peer: Role) -> String {
    paired_ratio(results, row, peer).map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×"))
}

/// `12345.6` → `12,346`.
pub fn thousands(v: f64) -> String {
    let n = v.round() as u64;
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

/// The results table in Markdown: per row the median requests/s (and its spread), the
/// latency under load and on one connection, and the ratios within its group.
pub fn table(results: &[RowResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | body | req/s (median) | min–max | p50 ms | p99 ms | 1 conn p50 ms | 1 conn p99 ms | p99 over bare (1 conn) | × bare | × jwt+rbac cached | × jwt+rbac | × transform | errors |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut group = None;
    for r in results {
        if group != Some(r.row.group) {
            group = Some(r.row.group);
            let _ = writeln!(
                out,
                "| **{}** | | | | | | | | | | | | | |",
                r.row.group.title()
            );
        }
        let s = r.summary();
        let g = r.row.group;
        let bare = find(results, g, Role::Bare);
        let added = bare.map_or("–".to_owned(), |b| {
            if r.single.is_empty() {
                "–".to_owned()
            } else {
                format!("{:+.3}", s.single_p99_ms - b.single_p99_ms)
            }
        });
        let single = |v: f64| {
            if r.single.is_empty() {
                "–".to_owned()
            } else {
                format!("{v:.3}")
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {}–{} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.row.label,
            r.body_bytes,
            thousands(s.rps),
            thousands(s.rps_min),
            thousands(s.rps_max),
            s.p50_ms,
            s.p99_ms,
            single(s.single_p50_ms),
            single(s.single_p99_ms),
            added,
            ratio(results, r, Role::Bare),
            ratio(results, r, Role::JwtCached),
            ratio(results, r, Role::Jwt),
            ratio(results, r, Role::Transform),
            s.errors,
        );
    }
    out
}

/// One line per run: row, repetition, kind, and what wrk measured.
pub fn csv(results: &[RowResult]) -> String {
    let mut out = String::from(
        "group,scenario,repetition,connections,requests,seconds,rps,p50_ms,p90_ms,p99_ms,max_ms,status_errors,socket_errors\n",
    );
    for r in results {
        for (kind, runs) in [("load", &r.load), ("single", &r.single)] {
            for (i, m) in runs.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{:.3},{:.1},{:.3},{:.3},{:.3},{:.3},{},{}",
                    r.row.group.slug(),
                    r.row.id,
                    i + 1,
                    if kind == "load" {
                        r.row.connections.to_string()
                    } else {
                        "1".to_owned()
                    },
                    m.requests,
                    m.seconds,
                    m.rps(),
                    m.p50_ms,
                    m.p90_ms,
                    m.p99_ms,
                    m.max_ms,
                    m.status_errors,
                    m.socket_errors
                );
            }
        }
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal bar chart of the median requests/s, one block per group, each bar
/// labelled with its value and its ratio to bare Envoy in the same group.
pub fn svg(results: &[RowResult], title: &str) -> String {
    const LABEL_W: f64 = 360.0;
    const BAR_W: f64 = 520.0;
    const ROW_H: f64 = 22.0;
    const HEAD_H: f64 = 30.0;
    let max = results
        .iter()
        .map(|r| r.summary().rps)
        .fold(1.0_f64, f64::max);
    let mut groups: Vec<Group> = Vec::new();
    for r in results {
        if !groups.contains(&r.row.group) {
            groups.push(r.row.group);
        }
    }
    let height = 50.0 + groups.len() as f64 * HEAD_H + results.len() as f64 * ROW_H + 20.0;
    let width = LABEL_W + BAR_W + 200.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="24" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let mut y = 40.0;
    for g in groups {
        y += HEAD_H;
        let _ = writeln!(
            out,
            r#"<text x="10" y="{:.0}" font-weight="bold">{}</text>"#,
            y - 8.0,
            escape(g.title())
        );
        let bare = find(results, g, Role::Bare);
        for r in results.iter().filter(|r| r.row.group == g) {
            let s = r.summary();
            let w = (s.rps / max * BAR_W).max(1.0);
            let colour = match r.row.role {
                Role::Bare => "#8c8c8c",
                Role::Jwt | Role::JwtCached => "#5b8fd9",
                Role::Transform => "#d98c5b",
                Role::Noop => "#a0a0d0",
                Role::Consentry => "#3a9a5b",
                Role::ConsentryBefore => "#b5d6b9",
                Role::Probe => "#d9c85b",
            };
            let ratio = bare
                .filter(|b| b.rps > 0.0)
                .map(|b| format!(" ({:.2}× bare)", s.rps / b.rps))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                r#"<text x="{:.0}" y="{:.0}" text-anchor="end">{}</text><rect x="{LABEL_W:.0}" y="{:.0}" width="{w:.1}" height="{:.0}" fill="{colour}"/><text x="{:.0}" y="{:.0}">{} req/s{}</text>"#,
                LABEL_W - 8.0,
                y + 15.0,
                escape(&r.row.label),
                y + 3.0,
                ROW_H - 6.0,
                LABEL_W + w + 6.0,
                y + 15.0,
                thousands(s.rps),
                escape(&ratio)
            );
            y += ROW_H;
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_numbers() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
