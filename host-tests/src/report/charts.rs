//! The charts of the page, laid out as inline SVG: the decisions over time, and the
//! horizontal bar charts (callers, redactions). Coordinates are numbers; names are
//! [`Text`], written by the template like every other value.

use std::collections::BTreeMap;

use super::data::{self, Data};
use super::view::CHIP;
use super::{Cut, Px, Text, date, hhmm, num, plural};

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

pub(super) fn legend<'a>(items: impl Iterator<Item = (&'a str, &'static str)>) -> Vec<LegendItem> {
    items
        .map(|(name, color)| LegendItem {
            name: Text::new(name).cut(CHIP),
            color,
        })
        .collect()
}

pub(super) fn timeline(d: &Data) -> Option<Timeline> {
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
pub(super) type BarInput = (String, Vec<(u64, &'static str, String)>, String);

/// A horizontal bar chart's id, labels and geometry.
pub(super) struct HBarsSpec {
    pub id: &'static str,
    pub label: &'static str,
    pub axis_title: &'static str,
    pub w: f64,
    pub label_width: f64,
    /// How many characters of a row's name fit in `label_width`.
    pub label_chars: usize,
    pub legend: Vec<LegendItem>,
}

pub(super) fn hbars(spec: HBarsSpec, rows: Vec<BarInput>) -> HBars {
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
