//! How the component's configuration and secrets reach it: the environment
//! (`wasi:cli/environment` for the HTTP proxy, the `env` list of `engine.load` for
//! the library). Names and formats are documented in `wit/world.wit`.

use std::collections::BTreeMap;

/// The configuration document (JSON).
pub const CONFIG_VAR: &str = "CONSENTRY_CONFIG";
/// Where allowed requests go.
pub const UPSTREAM_VAR: &str = "CONSENTRY_UPSTREAM";
/// Prefix of the variables that say where a cluster's calls go.
pub const CLUSTER_PREFIX: &str = "CONSENTRY_CLUSTER_";
/// `debug` logs each decision's explanation.
pub const LOG_VAR: &str = "CONSENTRY_LOG";

/// The environment, read once: a configuration never sees it change under it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment(BTreeMap<String, String>);

impl Environment {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The lookup the core resolves secrets with.
    pub fn lookup(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }

    /// Where calls to `cluster` go; `Err` says why there is no usable origin.
    pub fn cluster(&self, cluster: &str) -> Result<Origin, String> {
        let var = cluster_var(cluster);
        let url = self
            .get(&var)
            .ok_or_else(|| format!("{var} is not set (where calls to cluster {cluster:?} go)"))?;
        Origin::parse(url).map_err(|e| format!("{var}: {e}"))
    }

    /// Whether decisions are explained in the log.
    pub fn debug(&self) -> bool {
        self.get(LOG_VAR)
            .is_some_and(|v| v.eq_ignore_ascii_case("debug"))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Environment {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// The variable that names a cluster's origin: `consent_service` →
/// `CONSENTRY_CLUSTER_CONSENT_SERVICE` (letters upper-cased, anything but a letter
/// or a digit becomes `_`).
pub fn cluster_var(cluster: &str) -> String {
    let name: String = cluster
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{CLUSTER_PREFIX}{name}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A scheme and an authority: where requests are sent. Paths are the request's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: Scheme,
    /// `host` or `host:port`.
    pub authority: String,
}

impl Origin {
    /// `http://host:port` or `https://host`; a trailing `/` is allowed, a path,
    /// query, fragment or user info is not (it would be silently dropped).
    pub fn parse(url: &str) -> Result<Origin, String> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else {
            return Err(format!("{url:?} is not an http:// or https:// URL"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        if authority.contains(['/', '?', '#', '@']) || authority.contains(char::is_whitespace) {
            return Err(format!(
                "{url:?} must be scheme://host[:port] without a path, query or user"
            ));
        }
        Ok(Origin {
            scheme,
            authority: authority.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_is_found_under_its_upper_cased_name() {
        assert_eq!(
            cluster_var("consent_service"),
            "CONSENTRY_CLUSTER_CONSENT_SERVICE"
        );
        assert_eq!(cluster_var("keys.v2-eu"), "CONSENTRY_CLUSTER_KEYS_V2_EU");
        let env: Environment = [("CONSENTRY_CLUSTER_CONSENT_SERVICE", "http://127.0.0.1:9/")]
            .into_iter()
            .collect();
        assert_eq!(
            env.cluster("consent_service"),
            Ok(Origin {
                scheme: Scheme::Http,
                authority: "127.0.0.1:9".into()
            })
        );
        assert!(
            env.cluster("other")
                .is_err_and(|e| e.contains("CONSENTRY_CLUSTER_OTHER"))
        );
    }

    #[test]
    fn an_origin_is_a_scheme_and_an_authority_only() {
        let o = Origin::parse("https://api.example:8443").unwrap();
        assert_eq!(
            (o.scheme, o.authority.as_str()),
            (Scheme::Https, "api.example:8443")
        );
        for bad in [
            "127.0.0.1:8080",
            "ftp://x",
            "http://",
            "http://host/base",
            "http://host?x=1",
            "http://user@host",
            "http://ho st",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_logging_is_asked_for_by_name() {
        let on: Environment = [(LOG_VAR, "DEBUG")].into_iter().collect();
        let off: Environment = [(LOG_VAR, "info")].into_iter().collect();
        assert!(on.debug());
        assert!(!off.debug());
        assert!(!Environment::default().debug());
    }
}
