//! Field paths: `$`, then any of `.name`, `.*`, `[*]`, `["any name"]`, `..name`,
//! `..["any name"]`.

use std::fmt;

use super::fold::fold;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathStep {
    /// An object member by its (unescaped) name.
    Member(String),
    /// Any member of an object (`.*`).
    AnyMember,
    /// Any element of an array (`[*]`).
    AnyElement,
    /// `..name`: any number of steps (members or elements, none included), then the
    /// member `name`: that member at any depth below, inside objects and arrays.
    Descendant(String),
    /// [`PathStep::Member`] with its name matched case-insensitively (see
    /// [`FieldPath::any_case`]).
    MemberAnyCase(String),
    /// [`PathStep::Descendant`] with its name matched case-insensitively.
    DescendantAnyCase(String),
}

impl PathStep {
    /// True for `.*` and `[*]`.
    pub fn is_wildcard(&self) -> bool {
        matches!(self, PathStep::AnyMember | PathStep::AnyElement)
    }

    /// True for `..name` (in either matching mode).
    pub fn is_descendant(&self) -> bool {
        matches!(
            self,
            PathStep::Descendant(_) | PathStep::DescendantAnyCase(_)
        )
    }

    /// The member name this step matches, if it names one.
    pub fn name(&self) -> Option<&str> {
        match self {
            PathStep::Member(n)
            | PathStep::Descendant(n)
            | PathStep::MemberAnyCase(n)
            | PathStep::DescendantAnyCase(n) => Some(n),
            PathStep::AnyMember | PathStep::AnyElement => None,
        }
    }

    /// True when the name is matched case-insensitively.
    pub fn any_case(&self) -> bool {
        matches!(
            self,
            PathStep::MemberAnyCase(_) | PathStep::DescendantAnyCase(_)
        )
    }
}

/// A JSON path such as `$.contact.phone`, `$.records[*].ssn` or `$..national_id`.
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

/// Names written as `.name` rather than `["name"]`.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl FieldPath {
    /// Parses `$`, then any of `.name`, `.*`, `[*]`, `["any name"]`, `..name`,
    /// `..["any name"]`.
    ///
    /// `.name` takes ASCII letters, digits, `_` and `-`; any other name (spaces, dots,
    /// non-ASCII) uses `["..."]`, which takes any text without `"`, `\` or control
    /// characters (a member whose name has one is never matched by name: see
    /// [`super::ControlKeys`]). `..` must be followed by a name.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        let rest = text
            .strip_prefix('$')
            .ok_or_else(|| PathError(format!("'{text}' must start with '$'")))?;
        let mut steps = Vec::new();
        let mut i = 0;
        while let Some(tail) = rest.get(i..).filter(|t| !t.is_empty()) {
            if let Some(after) = tail.strip_prefix("..") {
                let (name, len) = if after.starts_with("[\"") {
                    let (name, len) = quoted(text, after)?;
                    (name, len)
                } else {
                    let len = after.find(['.', '[']).unwrap_or(after.len());
                    let name = after.get(..len).unwrap_or_default();
                    if !plain_name(name) {
                        return Err(PathError(format!(
                            "'{text}': '..' must be followed by a member name, as in $..name or $..[\"any name\"]"
                        )));
                    }
                    (name.to_owned(), len)
                };
                steps.push(PathStep::Descendant(name));
                i += 2 + len;
            } else if let Some(after) = tail.strip_prefix('.') {
                let len = after.find(['.', '[']).unwrap_or(after.len());
                let name = after.get(..len).unwrap_or_default();
                if name == "*" {
                    steps.push(PathStep::AnyMember);
                } else if plain_name(name) {
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
            } else if tail.starts_with("[\"") {
                let (name, len) = quoted(text, tail)?;
                steps.push(PathStep::Member(name));
                i += len;
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

    /// The same path with every name matched case-insensitively: a member matches
    /// when its name and the path's have the same case fold (see
    /// [`super::fold`]), so `$.ssn` then matches `SSN`, `Ssn` and `ſſn`.
    pub fn any_case(self) -> FieldPath {
        FieldPath(
            self.0
                .into_iter()
                .map(|step| match step {
                    PathStep::Member(n) => PathStep::MemberAnyCase(n),
                    PathStep::Descendant(n) => PathStep::DescendantAnyCase(n),
                    other => other,
                })
                .collect(),
        )
    }

    /// True when the path has a `..name` step.
    pub fn is_any_depth(&self) -> bool {
        self.0.iter().any(PathStep::is_descendant)
    }

    /// True when some step names a member (rather than `.*` or `[*]`).
    pub fn has_name(&self) -> bool {
        self.0.iter().any(|s| s.name().is_some())
    }

    /// True when the two paths match exactly the same locations: the same steps,
    /// names equal (or, where either side matches case-insensitively, equal folds).
    /// Such paths classify every member they match twice.
    pub fn same_locations(&self, other: &FieldPath) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(a, b)| match (a.name(), b.name()) {
                    (None, None) => a == b,
                    (Some(x), Some(y)) if a.is_descendant() == b.is_descendant() => {
                        if a.any_case() || b.any_case() {
                            fold(x) == fold(y)
                        } else {
                            x == y
                        }
                    }
                    _ => false,
                })
    }
}

/// A `["name"]` at the start of `tail`: the name and the length of the step.
fn quoted(text: &str, tail: &str) -> Result<(String, usize), PathError> {
    let quoted = tail.get(2..).unwrap_or_default();
    let close = quoted
        .find("\"]")
        .ok_or_else(|| PathError(format!("'{text}': unterminated [\"...\"]")))?;
    let name = quoted.get(..close).unwrap_or_default();
    if name.contains(['"', '\\']) {
        return Err(PathError(format!(
            "'{text}': quotes and backslashes are not allowed in a member name"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(PathError(format!(
            "'{text}': control characters are not allowed in a member name"
        )));
    }
    Ok((name.to_owned(), close + 4))
}

impl fmt::Display for FieldPath {
    /// Writes the path back in the syntax [`FieldPath::parse`] reads. (Case-insensitive
    /// matching is configured beside the path, and not written.)
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$")?;
        for step in &self.0 {
            match step {
                PathStep::AnyMember => f.write_str(".*")?,
                PathStep::AnyElement => f.write_str("[*]")?,
                PathStep::Member(name) | PathStep::MemberAnyCase(name) if plain_name(name) => {
                    write!(f, ".{name}")?
                }
                PathStep::Member(name) | PathStep::MemberAnyCase(name) => {
                    write!(f, "[\"{name}\"]")?
                }
                PathStep::Descendant(name) | PathStep::DescendantAnyCase(name)
                    if plain_name(name) =>
                {
                    write!(f, "..{name}")?
                }
                PathStep::Descendant(name) | PathStep::DescendantAnyCase(name) => {
                    write!(f, "..[\"{name}\"]")?
                }
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
    fn any_depth_paths_parse_and_print_back() {
        let p = FieldPath::parse(r#"$..ssn.a..["x y"][*]"#).unwrap();
        assert_eq!(
            p.0,
            vec![
                PathStep::Descendant("ssn".into()),
                PathStep::Member("a".into()),
                PathStep::Descendant("x y".into()),
                PathStep::AnyElement
            ]
        );
        assert!(p.is_any_depth() && p.has_name());
        assert_eq!(p.to_string(), r#"$..ssn.a..["x y"][*]"#);
        assert!(!FieldPath::parse("$.a[*]").unwrap().is_any_depth());
        assert!(!FieldPath::parse("$.*[*]").unwrap().has_name());
    }

    #[test]
    fn same_locations_compares_folds_where_a_side_ignores_case() {
        let p = |t: &str| FieldPath::parse(t).unwrap();
        assert!(p("$.SSN").any_case().same_locations(&p(r#"$["ſſn"]"#)));
        assert!(p("$.ssn").same_locations(&p("$.Ssn").any_case()));
        assert!(!p("$.ssn").same_locations(&p("$.Ssn")));
        assert!(!p("$..ssn").same_locations(&p("$.ssn")));
        assert!(p("$..a[*]").same_locations(&p("$..a[*]")));
        assert!(!p("$.*").same_locations(&p("$[*]")));
    }

    #[test]
    fn malformed_paths_are_refused() {
        for bad in [
            "ssn",
            "$",
            "$.",
            "$..",
            "$..*",
            "$..[*]",
            "$...a",
            "$.a..",
            "$[\"a\u{1}\"]",
            "$..[\"\u{0}\"]",
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
