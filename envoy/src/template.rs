//! `{{NAME}}` templates: the Envoy configurations in `envoy/configs/` are YAML with
//! placeholders that the runner fills in. Rendering is strict: a placeholder without a
//! value and a value without a placeholder are both errors, so a template and the code
//! that renders it cannot drift apart silently.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};

/// Placeholder names are upper-case ASCII letters, digits and `_`, starting with a letter.
fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Splits a template into literal text and placeholder names, in order.
fn tokens(template: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) if is_name(&after[..end]) => {
                out.push(Token::Text(&rest[..start]));
                out.push(Token::Placeholder(&after[..end]));
                rest = &after[end + 2..];
            }
            _ => {
                // Not a placeholder (e.g. `{{` in a literal): keep it as text.
                out.push(Token::Text(&rest[..start + 2]));
                rest = after;
            }
        }
    }
    out.push(Token::Text(rest));
    out
}

enum Token<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

/// The names of the placeholders a template uses.
pub fn placeholders(template: &str) -> BTreeSet<String> {
    tokens(template)
        .into_iter()
        .filter_map(|t| match t {
            Token::Placeholder(name) => Some(name.to_owned()),
            Token::Text(_) => None,
        })
        .collect()
}

/// Replaces every `{{NAME}}` with `vars[NAME]`, in one pass (a value is never scanned
/// for placeholders). Errors when a placeholder has no value or a value is unused.
pub fn render(template: &str, vars: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut missing = BTreeSet::new();
    let mut used = BTreeSet::new();
    for token in tokens(template) {
        match token {
            Token::Text(text) => out.push_str(text),
            Token::Placeholder(name) => match vars.get(name) {
                Some(value) => {
                    out.push_str(value);
                    used.insert(name);
                }
                None => {
                    missing.insert(name);
                }
            },
        }
    }
    let unused: Vec<&str> = vars
        .keys()
        .map(String::as_str)
        .filter(|k| !used.contains(k))
        .collect();
    if !missing.is_empty() || !unused.is_empty() {
        let mut problems = Vec::new();
        if !missing.is_empty() {
            let names: Vec<&str> = missing.into_iter().collect();
            problems.push(format!(
                "placeholders without a value: {}",
                names.join(", ")
            ));
        }
        if !unused.is_empty() {
            problems.push(format!(
                "variables the template does not use: {}",
                unused.join(", ")
            ));
        }
        bail!("template does not render: {}", problems.join("; "));
    }
    Ok(out)
}

/// `text` as a double-quoted YAML scalar (with the quotes): JSON string escaping, plus
/// escapes for every character YAML would not keep verbatim (C0/C1 controls, DEL, the
/// Unicode line and paragraph separators, BOM and non-characters), so the value reads
/// back byte for byte whatever it holds — a JSON document, a path with spaces or quotes.
pub fn yaml_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20
                || ('\u{7f}'..='\u{9f}').contains(&c)
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
                ) =>
            {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn renders_every_placeholder_once_without_rescanning_values() {
        let out = render(
            "a {{X}} b {{Y_2}} {{X}}",
            &vars(&[("X", "{{Y_2}}"), ("Y_2", "2")]),
        )
        .unwrap();
        assert_eq!(out, "a {{Y_2}} b 2 {{Y_2}}");
    }

    #[test]
    fn missing_and_unused_are_errors() {
        let err = render("{{A}} {{B}}", &vars(&[("A", "1"), ("C", "3")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("without a value: B"), "{err}");
        assert!(err.contains("does not use: C"), "{err}");
    }

    #[test]
    fn non_placeholders_stay_text() {
        let t = "{{ {{lower}} {{}} {{A";
        assert!(placeholders(t).is_empty());
        assert_eq!(render(t, &BTreeMap::new()).unwrap(), t);
    }

    #[test]
    fn yaml_quote_escapes() {
        assert_eq!(yaml_quote(r#"{"a":"b\n"}"#), r#""{\"a\":\"b\\n\"}""#);
        assert_eq!(
            yaml_quote("x\ny\u{85}\u{2028}é"),
            "\"x\\ny\\u0085\\u2028é\""
        );
    }
}
