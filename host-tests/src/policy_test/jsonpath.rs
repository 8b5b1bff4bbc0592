//! The paths a test's expectations name members of a JSON body by: the policy's field
//! path syntax (`$.contact.phone`, `$.billing.invoices[*].transaction_ref`,
//! `$["e-mail"]`, `.*`), plus array indexes (`$.billing.invoices[0].amount`) and `$`
//! alone for the whole document.

use anyhow::{Result, bail};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Member(String),
    AnyMember,
    AnyElement,
    Index(usize),
}

/// A parsed expectation path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath(Vec<Step>);

impl JsonPath {
    pub fn parse(text: &str) -> Result<Self> {
        let Some(mut rest) = text.strip_prefix('$') else {
            bail!("'{text}' must start with '$'");
        };
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let len = after.find(['.', '[']).unwrap_or(after.len());
                let name = &after[..len];
                match name {
                    "" => bail!("'{text}': an empty member name after '.'"),
                    "*" => steps.push(Step::AnyMember),
                    _ => steps.push(Step::Member(name.to_owned())),
                }
                rest = &after[len..];
            } else if let Some(after) = rest.strip_prefix("[\"") {
                let Some(close) = after.find("\"]") else {
                    bail!("'{text}': unterminated [\"...\"]");
                };
                steps.push(Step::Member(after[..close].to_owned()));
                rest = &after[close + 2..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let Some(close) = after.find(']') else {
                    bail!("'{text}': unterminated [...]");
                };
                let inside = &after[..close];
                if inside == "*" {
                    steps.push(Step::AnyElement);
                } else if let Ok(i) = inside.parse::<usize>() {
                    steps.push(Step::Index(i));
                } else {
                    bail!("'{text}': expected [*], [N] or [\"name\"], found [{inside}]");
                }
                rest = &after[close + 1..];
            } else {
                bail!(
                    "'{text}': expected '.' or '[' after '{}'",
                    &text[..text.len() - rest.len()]
                );
            }
        }
        Ok(Self(steps))
    }

    /// Every value at this path in `doc` (none when it is not there).
    pub fn find<'v>(&self, doc: &'v Value) -> Vec<&'v Value> {
        let mut here = vec![doc];
        for step in &self.0 {
            let mut next = Vec::new();
            for v in here {
                match (step, v) {
                    (Step::Member(name), Value::Object(o)) => next.extend(o.get(name)),
                    (Step::AnyMember, Value::Object(o)) => next.extend(o.values()),
                    (Step::AnyElement, Value::Array(a)) => next.extend(a.iter()),
                    (Step::Index(i), Value::Array(a)) => next.extend(a.get(*i)),
                    _ => {}
                }
            }
            here = next;
        }
        here
    }
}

/// JSON equality with numbers compared by value: `120.50`, `120.5` and `1.205e2`
/// are one number. (The core keeps every number's text, so plain `==` would tell
/// them apart, and a test author's YAML `120.50` arrives as `120.5`.)
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || decimal(&x.to_string()).is_some_and(|d| decimal(&y.to_string()) == Some(d))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_value(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

/// A JSON number's exact value: sign, significant digits, exponent of the last digit
/// (zero is `(false, "", 0)`).
fn decimal(text: &str) -> Option<(bool, String, i64)> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exp) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let trimmed = digits.trim_start_matches('0');
    let kept = trimmed.trim_end_matches('0');
    if kept.is_empty() {
        return Some((false, String::new(), 0));
    }
    let dropped = i64::try_from(trimmed.len() - kept.len()).ok()?;
    let frac_len = i64::try_from(frac.len()).ok()?;
    Some((negative, kept.to_owned(), exp - frac_len + dropped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_are_equal_by_value_whatever_their_spelling() {
        let n = |t: &str| serde_json::from_str::<Value>(t).unwrap();
        assert!(same_value(&n("120.50"), &n("120.5")));
        assert!(same_value(&n("1e3"), &n("1000")));
        assert!(same_value(&n("1.205E2"), &n("120.5")));
        assert!(same_value(&n("-0.0"), &n("0")));
        assert!(same_value(
            &n(r#"{"a":[1.0,{"b":2}]}"#),
            &n(r#"{"a":[1,{"b":2.00}]}"#)
        ));
        assert!(!same_value(
            &n("98765432109876543210"),
            &n("98765432109876543211")
        ));
        assert!(!same_value(&n("-1"), &n("1")));
        assert!(!same_value(&n("10"), &n("1")));
        assert!(!same_value(&n(r#"{"a":1}"#), &n(r#"{"a":1,"b":2}"#)));
        assert!(!same_value(&n(r#""1""#), &n("1")));
    }

    #[test]
    fn paths_find_members_elements_and_wildcards() {
        let doc = json!({"a": {"b": [{"c": 1}, {"c": 2}, {"d": 3}]}, "e-mail x": true});
        let find = |p: &str| JsonPath::parse(p).unwrap().find(&doc);
        assert_eq!(find("$.a.b[*].c"), vec![&json!(1), &json!(2)]);
        assert_eq!(find("$.a.b[2].d"), vec![&json!(3)]);
        assert_eq!(find("$[\"e-mail x\"]"), vec![&json!(true)]);
        assert_eq!(find("$.*.b[0].c"), vec![&json!(1)]);
        assert_eq!(find("$"), vec![&doc]);
        assert!(find("$.a.b[5]").is_empty());
        assert!(find("$.a.c").is_empty());
        for bad in ["a.b", "$.", "$[x]", "$[\"a", "$a", "$.a[1"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
    }
}
