//! The diffs a failed case shows: unified, line by line, of the pretty-printed JSON
//! when the values differ (a one-line body diffed as text shows nothing useful), of
//! the exact text when only the bytes do.

use serde_json::Value;
use similar::TextDiff;

use super::jsonpath::same_value;

/// A unified diff from `expected` to `actual`, headed with their names.
pub fn body_diff(expected: &[u8], actual: &[u8], expected_name: &str, actual_name: &str) -> String {
    let as_json = |b: &[u8]| serde_json::from_slice::<Value>(b).ok();
    let (a, b, note) = match (as_json(expected), as_json(actual)) {
        (Some(x), Some(y)) if !same_value(&x, &y) => (pretty(&x), pretty(&y), ""),
        (Some(_), Some(_)) => (
            text(expected),
            text(actual),
            "the JSON values are equal; the bytes differ (member order, number spelling or \
             whitespace)\n",
        ),
        _ => (text(expected), text(actual), ""),
    };
    let diff = TextDiff::from_lines(&a, &b);
    let unified = diff
        .unified_diff()
        .context_radius(3)
        .header(expected_name, actual_name)
        .to_string();
    format!("{note}{unified}")
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

fn text(b: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(b).into_owned();
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// A value in one line, cut after 120 characters.
pub fn show(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_member_shows_as_its_own_line() {
        let d = body_diff(
            br#"{"a":1,"b":{"c":"x"}}"#,
            br#"{"a":1,"b":{"c":"y"}}"#,
            "golden.json",
            "received",
        );
        assert!(d.contains("--- golden.json\n+++ received\n"), "{d}");
        assert!(d.contains("-    \"c\": \"x\"\n"), "{d}");
        assert!(d.contains("+    \"c\": \"y\"\n"), "{d}");
        assert!(!d.contains("-  \"a\""), "{d}");
    }

    #[test]
    fn equal_values_in_other_bytes_say_so() {
        let d = body_diff(b"{\"n\":1.50}", b"{\"n\":1.5}", "a", "b");
        assert!(d.starts_with("the JSON values are equal"), "{d}");
        assert!(d.contains("-{\"n\":1.50}"), "{d}");
        let d = body_diff(b"not json", b"other", "a", "b");
        assert!(d.contains("-not json\n+other\n"), "{d}");
    }
}
