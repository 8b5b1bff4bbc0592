//! Field paths: `$`, then any of `.name`, `.*`, `[*]`, `["any name"]`.

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

impl PathStep {
    /// True for `.*` and `[*]`.
    pub fn is_wildcard(&self) -> bool {
        !matches!(self, PathStep::Member(_))
    }
}

/// A JSON path such as `$.contact.phone` or `$.records[*].ssn`.
///
/// A path names a location below the document's root (`$` alone is refused: the root
/// is never removed or transformed, only its members and elements are).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath(pub Vec<PathStep>);

/// Why a path's text was refused; the message quotes the path (configuration, never a
/// request's data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError(pub String);

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PathError {}

impl FieldPath {
    /// Parses `$`, then any of `.name`, `.*`, `[*]`, `["any name"]`.
    ///
    /// `.name` takes ASCII letters, digits, `_` and `-`; any other name (spaces, dots,
    /// non-ASCII) uses `["..."]`, which takes any text without `"` or `\`.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        let rest = text
            .strip_prefix('$')
            .ok_or_else(|| PathError(format!("'{text}' must start with '$'")))?;
        let mut steps = Vec::new();
        let mut i = 0;
        while let Some(tail) = rest.get(i..).filter(|t| !t.is_empty()) {
            if let Some(after) = tail.strip_prefix('.') {
                let len = after.find(['.', '[']).unwrap_or(after.len());
                let name = after.get(..len).unwrap_or_default();
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
                i += 1 + len;
            } else if tail.starts_with("[*]") {
                steps.push(PathStep::AnyElement);
                i += 3;
            } else if let Some(quoted) = tail.strip_prefix("[\"") {
                let close = quoted
                    .find("\"]")
                    .ok_or_else(|| PathError(format!("'{text}': unterminated [\"...\"]")))?;
                let name = quoted.get(..close).unwrap_or_default();
                if name.contains(['"', '\\']) {
                    return Err(PathError(format!(
                        "'{text}': quotes and backslashes are not allowed in a member name"
                    )));
                }
                steps.push(PathStep::Member(name.to_owned()));
                i += close + 4;
            } else if tail.starts_with('[') {
                return Err(PathError(format!(
                    "'{text}': after '[' expected '*]' or '\"name\"]'"
                )));
            } else {
                return Err(PathError(format!(
                    "'{text}': expected '.' or '[' at offset {}",
                    i + 1
                )));
            }
        }
        if steps.is_empty() {
            return Err(PathError(format!("'{text}' names the whole document")));
        }
        Ok(Self(steps))
    }
}

impl fmt::Display for FieldPath {
    /// Writes the path back in the syntax [`FieldPath::parse`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$")?;
        for step in &self.0 {
            match step {
                PathStep::AnyMember => f.write_str(".*")?,
                PathStep::AnyElement => f.write_str("[*]")?,
                PathStep::Member(name)
                    if !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
                {
                    write!(f, ".{name}")?
                }
                PathStep::Member(name) => write!(f, "[\"{name}\"]")?,
            }
        }
        Ok(())
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
        assert_eq!(p.to_string(), r#"$.records[*]["e-mail x"].*"#);
        let unicode = FieldPath::parse(r#"$["naïve"]["a.b"]"#).unwrap();
        assert_eq!(
            unicode.0,
            vec![
                PathStep::Member("naïve".into()),
                PathStep::Member("a.b".into())
            ]
        );
    }

    #[test]
    fn malformed_paths_are_refused() {
        for bad in [
            "ssn",
            "$",
            "$.",
            "$..a",
            "$[1]",
            "$.a b",
            r#"$["a"#,
            r#"$["a\"]"#,
            "$[*",
            "$.é",
            "$a",
            "$.a[",
            "$.*x",
        ] {
            assert!(FieldPath::parse(bad).is_err(), "{bad}");
        }
    }
}
