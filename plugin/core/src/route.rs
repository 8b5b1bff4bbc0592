//! Path templates such as `/patients/{id}/records`: parsed once at load, matched
//! segment by segment on every request.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A compiled path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
}

/// Why a template was refused at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Path parameters captured by a match, in template order.
pub type Params = Vec<(String, String)>;

impl PathTemplate {
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let Some(rest) = template.strip_prefix('/') else {
            return Err(TemplateError("must start with '/'".into()));
        };
        if template.contains(['?', '#']) {
            return Err(TemplateError("must not contain a query or fragment".into()));
        }
        let mut segments = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        if rest.is_empty() {
            return Ok(Self { segments });
        }
        for (i, raw) in rest.split('/').enumerate() {
            if raw.is_empty() {
                return Err(TemplateError(format!("segment {} is empty", i + 1)));
            }
            if let Some(name) = raw.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                let valid = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid {
                    return Err(TemplateError(format!(
                        "parameter '{{{name}}}' must be a non-empty name of letters, digits and '_'"
                    )));
                }
                if names.contains(&name) {
                    return Err(TemplateError(format!("parameter '{name}' appears twice")));
                }
                names.push(name);
                segments.push(Segment::Param(name.to_owned()));
            } else if raw.contains(['{', '}']) {
                return Err(TemplateError(format!(
                    "segment '{raw}' mixes text and a parameter; a parameter must be a whole segment"
                )));
            } else {
                segments.push(Segment::Literal(raw.to_owned()));
            }
        }
        Ok(Self { segments })
    }

    /// Matches a request path (without query). A trailing slash, an empty segment,
    /// `.` or `..`, or a percent-encoded `/` never match: the proxy normalises paths,
    /// and anything it left unusual is refused rather than guessed at.
    pub fn matches(&self, path: &str) -> Option<Params> {
        let rest = path.strip_prefix('/')?;
        let mut params = Vec::new();
        let mut parts = if rest.is_empty() {
            None
        } else {
            Some(rest.split('/'))
        };
        for segment in &self.segments {
            let part = parts.as_mut()?.next()?;
            if part.is_empty() || part == "." || part == ".." {
                return None;
            }
            match segment {
                Segment::Literal(lit) => {
                    if part != lit {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    let lower = part.to_ascii_lowercase();
                    if lower.contains("%2f") || lower.contains("%5c") {
                        return None;
                    }
                    params.push((name.clone(), part.to_owned()));
                }
            }
        }
        match parts.as_mut().and_then(Iterator::next) {
            Some(_) => None,
            None => Some(params),
        }
    }

    /// The names of the template's parameters, in order.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(name) => Some(name.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Literal segments count more than parameters: `/a/me` beats `/a/{id}`.
    pub fn specificity(&self) -> (usize, usize) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        (self.segments.len(), literals)
    }

    /// True when some path matches both templates, segment by segment.
    pub fn overlaps(&self, other: &PathTemplate) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|pair| match pair {
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    _ => true,
                })
    }

    /// Whether the two templates have literals in exactly the same positions.
    pub fn same_shape(&self, other: &PathTemplate) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|pair| match pair {
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    (Segment::Param(_), Segment::Param(_)) => true,
                    _ => false,
                })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> PathTemplate {
        PathTemplate::parse(s).unwrap()
    }

    #[test]
    fn parameters_capture_whole_segments() {
        let p = t("/patients/{id}/records");
        assert_eq!(
            p.matches("/patients/p-1/records"),
            Some(vec![("id".into(), "p-1".into())])
        );
        assert_eq!(p.matches("/patients/p-1/records/"), None);
        assert_eq!(p.matches("/patients//records"), None);
        assert_eq!(p.matches("/patients/p-1"), None);
        assert_eq!(p.matches("/patients/p-1/records/x"), None);
        assert_eq!(p.matches("/patients/../records"), None);
        assert_eq!(p.matches("/patients/a%2Fb/records"), None);
        assert_eq!(t("/").matches("/"), Some(vec![]));
        assert_eq!(t("/").matches("/x"), None);
    }

    #[test]
    fn bad_templates_say_why() {
        for bad in [
            "patients",
            "/a//b",
            "/a/{}",
            "/a/{id}/{id}",
            "/a/x{id}",
            "/a?x",
            "/a/{i-d}",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn overlap_and_specificity() {
        assert!(t("/a/{id}").overlaps(&t("/a/me")));
        assert!(!t("/a/{id}").overlaps(&t("/b/me")));
        assert!(t("/a/me").specificity() > t("/a/{id}").specificity());
        assert!(t("/a/{x}").same_shape(&t("/a/{y}")));
        assert!(!t("/a/{x}").same_shape(&t("/a/me")));
    }
}
