//! Response redaction.
//!
//! This first version removes fields from a parsed document; the single-pass
//! redactor over the bytes replaces it (same plan and error types).

use std::fmt;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathStep {
    /// An object member by its (unescaped) name.
    Member(String),
    /// Any member of an object (`.*`).
    AnyMember,
    /// Any element of an array (`[*]`).
    AnyElement,
}

/// A JSON path such as `$.contact.phone` or `$.records[*].ssn`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath(pub Vec<PathStep>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError(pub String);

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FieldPath {
    /// Parses `$`, then any of `.name`, `.*`, `[*]`, `["any name"]`.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        let rest = text
            .strip_prefix('$')
            .ok_or_else(|| PathError(format!("'{text}' must start with '$'")))?;
        let bytes = rest.as_bytes();
        let mut steps = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'.' => {
                    let start = i + 1;
                    let mut end = start;
                    while end < bytes.len() && !matches!(bytes[end], b'.' | b'[') {
                        end += 1;
                    }
                    let name = &rest[start..end];
                    if name == "*" {
                        steps.push(PathStep::AnyMember);
                    } else if !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                    {
                        steps.push(PathStep::Member(name.to_owned()));
                    } else {
                        return Err(PathError(format!(
                            "'{text}': member '{name}' needs the [\"...\"] form"
                        )));
                    }
                    i = end;
                }
                b'[' => {
                    if rest[i..].starts_with("[*]") {
                        steps.push(PathStep::AnyElement);
                        i += 3;
                    } else if rest[i..].starts_with("[\"") {
                        let close = rest[i + 2..].find("\"]").ok_or_else(|| {
                            PathError(format!("'{text}': unterminated [\"...\"]"))
                        })?;
                        let name = &rest[i + 2..i + 2 + close];
                        if name.contains(['"', '\\']) {
                            return Err(PathError(format!(
                                "'{text}': quotes and backslashes are not allowed in a member name"
                            )));
                        }
                        steps.push(PathStep::Member(name.to_owned()));
                        i += close + 4;
                    } else {
                        return Err(PathError(format!(
                            "'{text}': after '[' expected '*]' or '\"name\"]'"
                        )));
                    }
                }
                _ => {
                    return Err(PathError(format!(
                        "'{text}': expected '.' or '[' at offset {}",
                        i + 1
                    )));
                }
            }
        }
        if steps.is_empty() {
            return Err(PathError(format!("'{text}' names the whole document")));
        }
        Ok(Self(steps))
    }
}

/// What to do with the fields of one response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedactionPlan {
    remove: Vec<FieldPath>,
}

/// Why a body could not be redacted; the response is then withheld.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedactError {
    InvalidJson,
    TooDeep,
    TooLarge,
}

impl RedactionPlan {
    pub fn remove_all(paths: Vec<FieldPath>) -> Self {
        Self { remove: paths }
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty()
    }

    /// Redacts a whole JSON body.
    pub fn apply(
        &self,
        body: &[u8],
        max_bytes: usize,
        max_depth: usize,
    ) -> Result<Vec<u8>, RedactError> {
        if body.len() > max_bytes {
            return Err(RedactError::TooLarge);
        }
        let mut doc: serde_json::Value =
            serde_json::from_slice(body).map_err(|_| RedactError::InvalidJson)?;
        if depth(&doc) > max_depth {
            return Err(RedactError::TooDeep);
        }
        for path in &self.remove {
            remove_path(&mut doc, &path.0);
        }
        serde_json::to_vec(&doc).map_err(|_| RedactError::InvalidJson)
    }
}

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn remove_path(v: &mut serde_json::Value, steps: &[PathStep]) {
    let Some((first, rest)) = steps.split_first() else {
        return;
    };
    match (first, v) {
        (PathStep::Member(name), serde_json::Value::Object(o)) => {
            if rest.is_empty() {
                o.shift_remove(name);
            } else if let Some(child) = o.get_mut(name) {
                remove_path(child, rest);
            }
        }
        (PathStep::AnyMember, serde_json::Value::Object(o)) => {
            if rest.is_empty() {
                o.clear();
            } else {
                for child in o.values_mut() {
                    remove_path(child, rest);
                }
            }
        }
        (PathStep::AnyElement, serde_json::Value::Array(a)) => {
            if rest.is_empty() {
                a.clear();
            } else {
                for child in a.iter_mut() {
                    remove_path(child, rest);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_in_all_forms() {
        let p = FieldPath::parse(r#"$.records[*]["e-mail x"].*"#).unwrap();
        assert_eq!(
            p.0,
            vec![
                PathStep::Member("records".into()),
                PathStep::AnyElement,
                PathStep::Member("e-mail x".into()),
                PathStep::AnyMember
            ]
        );
        for bad in ["ssn", "$", "$.", "$..a", "$[1]", "$.a b", r#"$["a"#] {
            assert!(FieldPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn removes_fields_at_any_depth_and_keeps_order() {
        let plan = RedactionPlan::remove_all(vec![
            FieldPath::parse("$.ssn").unwrap(),
            FieldPath::parse("$.items[*].secret").unwrap(),
        ]);
        let out = plan
            .apply(
                br#"{"b":1,"ssn":"x","a":2,"items":[{"secret":1,"k":2},{"k":3}]}"#,
                1 << 20,
                64,
            )
            .unwrap();
        assert_eq!(out, br#"{"b":1,"a":2,"items":[{"k":2},{"k":3}]}"#);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let plan = RedactionPlan::default();
        assert_eq!(plan.apply(b"{", 100, 64), Err(RedactError::InvalidJson));
        assert_eq!(plan.apply(b"[[[1]]]", 100, 2), Err(RedactError::TooDeep));
        assert_eq!(plan.apply(b"[1,2,3]", 3, 64), Err(RedactError::TooLarge));
    }
}
