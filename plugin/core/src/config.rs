//! The filter configuration: raw serde types that mirror the JSON (unknown keys
//! refused), compiled once at load into a validated [`Config`]. A configuration that
//! fails to compile never runs; every error names its JSON location and the reason.

use std::fmt;

use serde::Deserialize;

use crate::redact::{FieldPath, RedactionPlan};
use crate::route::PathTemplate;

/// One reason a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// JSON location, e.g. `$.routes[1].path`.
    pub location: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.reason)
    }
}

/// All the reasons a configuration was refused, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Raw form: exactly what users write.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    version: u32,
    #[serde(default)]
    token: RawToken,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    errors: RawErrors,
    routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawToken {
    header: String,
    scheme: Option<String>,
}

impl Default for RawToken {
    fn default() -> Self {
        Self {
            header: "authorization".into(),
            scheme: Some("Bearer".into()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_body_bytes: usize,
    max_depth: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawErrors {
    type_base: String,
}

impl Default for RawErrors {
    fn default() -> Self {
        Self {
            type_base: DEFAULT_PROBLEM_TYPE_BASE.into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    #[serde(default = "default_methods")]
    methods: Vec<String>,
    path: String,
    #[serde(default)]
    response: RawResponse,
}

fn default_methods() -> Vec<String> {
    vec!["GET".into()]
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResponse {
    #[serde(default)]
    remove: Vec<String>,
}

// ---------------------------------------------------------------------------
// Compiled form: what the plugin runs.

/// 1 MiB: Envoy's default per-connection buffer limit. Envoy configs that load the
/// plugin raise Envoy's limit above this so the plugin, not Envoy, refuses first.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_DEPTH: usize = 64;
pub const DEFAULT_PROBLEM_TYPE_BASE: &str = "urn:consentry:problem:";

#[derive(Debug, Clone)]
pub struct Config {
    pub token: TokenLocation,
    pub limits: Limits,
    pub problem_type_base: String,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone)]
pub struct TokenLocation {
    /// Lower-case header name.
    pub header: String,
    /// Authentication scheme, compared case-insensitively; `None` = the raw value.
    pub scheme: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_depth: usize,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub methods: Vec<String>,
    pub template: PathTemplate,
    pub plan: RedactionPlan,
}

const KNOWN_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

impl Config {
    /// Parses and validates a configuration document (JSON).
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigErrors> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let location = json_location(&e.path().to_string());
            ConfigErrors(vec![ConfigError {
                location,
                reason: strip_position(&e.into_inner().to_string()),
            }])
        })?;
        compile(raw)
    }

    /// The route for a request, most specific first.
    pub fn route_for(&self, method: &str, path: &str) -> Option<(&Route, crate::route::Params)> {
        self.routes.iter().find_map(|r| {
            if !r.methods.iter().any(|m| m == method) {
                return None;
            }
            r.template.matches(path).map(|params| (r, params))
        })
    }
}

fn json_location(serde_path: &str) -> String {
    if serde_path == "." || serde_path.is_empty() {
        "$".into()
    } else if serde_path.starts_with('[') {
        format!("${serde_path}")
    } else {
        format!("$.{serde_path}")
    }
}

/// serde_json appends " at line X column Y"; the JSON location already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn compile(raw: RawConfig) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut err = |location: String, reason: String| errors.push(ConfigError { location, reason });

    if raw.version != 1 {
        err(
            "$.version".into(),
            format!(
                "unsupported version {}; this plugin reads version 1",
                raw.version
            ),
        );
    }

    let header = raw.token.header.to_ascii_lowercase();
    if header.is_empty() || !header.bytes().all(is_token_char) {
        err(
            "$.token.header".into(),
            "must be an HTTP header name".into(),
        );
    }
    if let Some(s) = &raw.token.scheme
        && (s.is_empty() || !s.bytes().all(is_token_char))
    {
        err(
            "$.token.scheme".into(),
            "must be an authentication scheme such as \"Bearer\"".into(),
        );
    }
    if raw.limits.max_body_bytes == 0 {
        err(
            "$.limits.max_body_bytes".into(),
            "must be greater than 0".into(),
        );
    }
    if raw.limits.max_depth == 0 || raw.limits.max_depth > 512 {
        err(
            "$.limits.max_depth".into(),
            "must be between 1 and 512".into(),
        );
    }

    let mut routes: Vec<Route> = Vec::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let at = |field: &str| format!("$.routes[{i}].{field}");
        if r.name.is_empty() {
            err(at("name"), "must not be empty".into());
        } else if routes.iter().any(|o| o.name == r.name) {
            err(at("name"), format!("route name '{}' is used twice", r.name));
        }
        if r.methods.is_empty() {
            err(at("methods"), "must list at least one method".into());
        }
        for (j, m) in r.methods.iter().enumerate() {
            if !KNOWN_METHODS.contains(&m.as_str()) {
                err(
                    format!("$.routes[{i}].methods[{j}]"),
                    format!(
                        "unknown method '{m}'; use one of {}",
                        KNOWN_METHODS.join(", ")
                    ),
                );
            }
        }
        let template = match PathTemplate::parse(&r.path) {
            Ok(t) => Some(t),
            Err(e) => {
                err(at("path"), format!("bad path template: {e}"));
                None
            }
        };
        let mut paths = Vec::new();
        for (j, p) in r.response.remove.iter().enumerate() {
            match FieldPath::parse(p) {
                Ok(fp) => paths.push(fp),
                Err(e) => err(
                    format!("$.routes[{i}].response.remove[{j}]"),
                    format!("bad field path: {e}"),
                ),
            }
        }
        if let Some(template) = template {
            for other in &routes {
                let shares_method = other.methods.iter().any(|m| r.methods.contains(m));
                if shares_method && other.template.same_shape(&template) {
                    err(
                        at("path"),
                        format!(
                            "route '{}' is unreachable: route '{}' has the same path shape and method",
                            r.name, other.name
                        ),
                    );
                }
            }
            routes.push(Route {
                name: r.name,
                methods: r.methods,
                template,
                plan: RedactionPlan::remove_all(paths),
            });
        }
    }
    // Most specific first; the sort is stable so equal templates keep file order.
    routes.sort_by_key(|r| std::cmp::Reverse(r.template.specificity()));

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Config {
        token: TokenLocation {
            header,
            scheme: raw.token.scheme,
        },
        limits: Limits {
            max_body_bytes: raw.limits.max_body_bytes,
            max_depth: raw.limits.max_depth,
        },
        problem_type_base: raw.errors.type_base,
        routes,
    })
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(json: &str) -> Vec<String> {
        Config::from_json(json.as_bytes())
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn a_minimal_configuration_compiles_with_defaults() {
        let c = Config::from_json(br#"{"version":1,"routes":[{"name":"r","path":"/a/{id}"}]}"#)
            .unwrap();
        assert_eq!(c.token.header, "authorization");
        assert_eq!(c.limits.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert!(c.route_for("GET", "/a/1").is_some());
        assert!(c.route_for("POST", "/a/1").is_none());
    }

    #[test]
    fn unknown_keys_are_refused_with_their_location() {
        let e = errors(r#"{"version":1,"routes":[{"name":"r","path":"/a","respnse":{}}]}"#);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("$.routes[0].respnse: unknown field `respnse`"),
            "{e:?}"
        );
    }

    #[test]
    fn every_semantic_error_is_reported_with_its_place() {
        let e = errors(
            r#"{"version":2,"routes":[
                {"name":"a","path":"no-slash"},
                {"name":"b","path":"/x/{id}","methods":["GET","FETCH"],"response":{"remove":["ssn"]}},
                {"name":"b","path":"/x/{other}"}
            ]}"#,
        );
        let joined = e.join("\n");
        assert!(
            joined.contains("$.version: unsupported version 2"),
            "{joined}"
        );
        assert!(
            joined.contains("$.routes[0].path: bad path template"),
            "{joined}"
        );
        assert!(
            joined.contains("$.routes[1].methods[1]: unknown method 'FETCH'"),
            "{joined}"
        );
        assert!(
            joined.contains("$.routes[1].response.remove[0]: bad field path"),
            "{joined}"
        );
        assert!(
            joined.contains("$.routes[2].name: route name 'b' is used twice"),
            "{joined}"
        );
        assert!(
            joined.contains("$.routes[2].path: route 'b' is unreachable"),
            "{joined}"
        );
    }

    #[test]
    fn broken_json_is_refused() {
        let e = errors(r#"{"version":1,"routes":["#);
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn literal_routes_win_over_parameters() {
        let c = Config::from_json(
            br#"{"version":1,"routes":[{"name":"any","path":"/p/{id}"},{"name":"me","path":"/p/me"}]}"#,
        )
        .unwrap();
        assert_eq!(c.route_for("GET", "/p/me").unwrap().0.name, "me");
        assert_eq!(c.route_for("GET", "/p/7").unwrap().0.name, "any");
    }
}
