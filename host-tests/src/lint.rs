//! `consentry check`'s warnings: policies the plugin accepts but that are likely
//! wrong. They read the policy as the plugin compiles it (the core's own compiler,
//! natively) and, for the field paths, the route's **examples**: the upstream answers
//! (2xx, JSON) of the test cases written for the policy whose request the route
//! matches.
//!
//! - a classified path that none of its route's examples contains (a misspelt path
//!   classifies nothing, and the member it meant falls to the unclassified default);
//! - `unclassified: keep` on a route with fields of high or special sensitivity (a
//!   member the upstream adds later goes out in clear);
//! - a field released in clear inside a wider path the same rule removes (the nearer
//!   classification wins: the author who removed the container probably meant all of
//!   it);
//! - an issuer with a status list whose `require_status_claim` is `false` (its tokens
//!   without a status reference can never be revoked).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use consentry_core::config::Config;
use consentry_core::policy::{Effect, Field, Sensitivity};
use consentry_core::redact::{FieldAction, FieldPath, PathStep, Unclassified};
use serde_json::Value;

use crate::policy_test::{TestFile, discover};
use crate::replay::Exchange;

/// One warning: where in the policy, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// A JSON location in the policy (`$.routes[0].response.fields[3].path`).
    pub location: String,
    pub text: String,
}

/// An upstream answer of a test case: an example of what a route returns.
#[derive(Debug, Clone)]
pub struct Example {
    pub method: String,
    /// The request path (a query is ignored).
    pub path: String,
    pub body: Value,
}

/// The examples of the test files under `paths` (files or directories) that test the
/// policy at `policy`. Files that do not load are passed over: `consentry test`
/// reports them.
pub fn examples(policy: &Path, paths: &[PathBuf]) -> Vec<Example> {
    let Ok(policy) = policy.canonicalize() else {
        return Vec::new();
    };
    let files = discover(paths).unwrap_or_default();
    let mut out = Vec::new();
    for path in files {
        let Ok(file) = TestFile::load(&path) else {
            continue;
        };
        if file.policy_path().canonicalize().ok().as_ref() != Some(&policy) {
            continue;
        }
        for case in &file.spec.cases {
            if let Some(example) = example_of(&file, case) {
                out.push(example);
            }
        }
    }
    out
}

fn example_of(file: &TestFile, case: &crate::policy_test::CaseSpec) -> Option<Example> {
    // Placeholders stay unfilled: they are in header values, not in the answer.
    let x = file.exchange_value(case).ok()?;
    let exchange = Exchange::from_json(&x.to_string()).ok()?;
    let request = exchange.client_request().ok()?;
    let answer = exchange.upstream_response().ok()?;
    if !(200..300).contains(&answer.status) {
        return None;
    }
    let body = serde_json::from_slice(&answer.body_bytes()).ok()?;
    let path = request
        .path
        .split_once('?')
        .map_or(request.path.as_str(), |(p, _)| p);
    Some(Example {
        method: request.method.clone(),
        path: path.to_owned(),
        body,
    })
}

/// The warnings for a policy: `doc` as written, `config` as compiled.
pub fn warnings(doc: &Value, config: &Config, examples: &[Example]) -> Vec<Warning> {
    let mut out = status_claim_warnings(doc);
    let policy = &config.policy;
    let mut by_route: BTreeMap<usize, Vec<&Value>> = BTreeMap::new();
    for e in examples {
        if let Some((r, _)) = policy.route_for(&e.method, &e.path) {
            by_route.entry(r).or_default().push(&e.body);
        }
    }
    let mut routes: Vec<(usize, &consentry_core::policy::Route)> =
        policy.routes.iter().enumerate().collect();
    routes.sort_by_key(|(_, r)| r.index);
    for (position, route) in routes {
        let fields_doc = &doc["routes"][route.index]["response"]["fields"];
        let field_at = |f: &Field| {
            let j = fields_doc
                .as_array()
                .and_then(|a| a.iter().position(|x| x["path"] == f.text.as_str()));
            match j {
                Some(j) => format!("$.routes[{}].response.fields[{j}].path", route.index),
                None => format!("$.routes[{}].response.fields", route.index),
            }
        };
        if let Some(bodies) = by_route.get(&position) {
            for f in &route.fields {
                if !bodies.iter().any(|b| occurs(&f.path.0, b)) {
                    out.push(Warning {
                        location: field_at(f),
                        text: format!(
                            "'{}' is in none of this route's {} example responses (the \
                             upstream answers of its test cases): a misspelt path classifies \
                             nothing",
                            f.text,
                            bodies.len()
                        ),
                    });
                }
            }
        }
        if route.unclassified == Unclassified::Keep {
            let sensitive: Vec<&str> = route
                .fields
                .iter()
                .filter(|f| !f.public && f.sensitivity >= Sensitivity::High)
                .map(|f| f.text.as_str())
                .collect();
            if !sensitive.is_empty() {
                out.push(Warning {
                    location: format!("$.routes[{}].response.unclassified", route.index),
                    text: format!(
                        "keep releases every member this route does not classify, on a route \
                         with sensitive fields ({}): a member the upstream adds later goes out \
                         in clear; the strict default, remove, releases only what is classified",
                        sensitive.join(", ")
                    ),
                });
            }
        }
        for (field, (container, rules)) in released_inside_removed(policy, position, route) {
            out.push(Warning {
                location: field_at(field),
                text: format!(
                    "'{}' is released in clear inside '{container}', which {}: the nearer \
                     classification wins, so it goes out while the rest of '{container}' \
                     does not",
                    field.text,
                    match rules.as_slice() {
                        [one] => format!("rule {one} removes"),
                        many => format!("rules {} remove", many.join(", ")),
                    }
                ),
            });
        }
    }
    out
}

/// `require_status_claim: false` beside a status list.
fn status_claim_warnings(doc: &Value) -> Vec<Warning> {
    let Some(issuers) = doc["issuers"].as_array() else {
        return Vec::new();
    };
    issuers
        .iter()
        .enumerate()
        .filter(|(_, i)| i["revocation"]["status_list"]["require_status_claim"] == false)
        .map(|(n, _)| Warning {
            location: format!("$.issuers[{n}].revocation.status_list.require_status_claim"),
            text: "false accepts a token without a status reference from an issuer that \
                   publishes status lists: such a consent can never be revoked"
                .into(),
        })
        .collect()
}

/// Fields some allow rule releases in clear inside a wider classified path the same
/// rule removes (with the consent covering all the rule releases): each with that
/// path and the rules.
fn released_inside_removed<'p>(
    policy: &'p consentry_core::policy::Policy,
    position: usize,
    route: &'p consentry_core::policy::Route,
) -> Vec<(&'p Field, (String, Vec<String>))> {
    let mut found: BTreeMap<(String, String), (&Field, Vec<String>)> = BTreeMap::new();
    for (k, rule) in route.rules.iter().enumerate() {
        if rule.effect != Effect::Allow {
            continue;
        }
        let Ok(actions) = policy.field_actions(position, k, rule.release) else {
            continue;
        };
        for (inner, a) in &actions {
            if *a != FieldAction::Keep {
                continue;
            }
            for (outer, b) in &actions {
                if *b == FieldAction::Remove && covers(&outer.path, &inner.path) {
                    found
                        .entry((inner.text.clone(), outer.text.clone()))
                        .or_insert((inner, Vec::new()))
                        .1
                        .push(rule.name.clone());
                }
            }
        }
    }
    found
        .into_iter()
        .map(|((_, outer), (field, rules))| (field, (outer, rules)))
        .collect()
}

/// Whether `outer` names a container of what `inner` names (strictly above it).
fn covers(outer: &FieldPath, inner: &FieldPath) -> bool {
    outer.0.len() < inner.0.len()
        && outer.0.iter().zip(&inner.0).all(|(o, i)| {
            o == i || (matches!(o, PathStep::AnyMember) && matches!(i, PathStep::Member(_)))
        })
}

/// Whether some member or element of `doc` is at `steps`. Steps this check does not
/// know count as found: a warning must never be wrong.
fn occurs(steps: &[PathStep], doc: &Value) -> bool {
    let Some((step, rest)) = steps.split_first() else {
        return true;
    };
    if let PathStep::Member(name) = step {
        doc.get(name.as_str()).is_some_and(|v| occurs(rest, v))
    } else if matches!(step, PathStep::AnyMember) {
        doc.as_object()
            .is_some_and(|o| o.values().any(|v| occurs(rest, v)))
    } else if matches!(step, PathStep::AnyElement) {
        doc.as_array()
            .is_some_and(|a| a.iter().any(|v| occurs(rest, v)))
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(p: &str) -> FieldPath {
        FieldPath::parse(p).unwrap()
    }

    #[test]
    fn paths_occur_through_members_wildcards_and_arrays() {
        let doc = json!({"billing": {"invoices": [{"id": 1}, {"id": 2, "ref": 9}]}});
        assert!(occurs(&path("$.billing.invoices[*].ref").0, &doc));
        assert!(occurs(&path("$.*.invoices").0, &doc));
        assert!(!occurs(&path("$.billing.invoices[*].refs").0, &doc));
        assert!(!occurs(&path("$.billing[*]").0, &doc));
        // `get` on an array by a name finds nothing.
        assert!(!occurs(&path("$.billing.invoices.id").0, &doc));
    }

    #[test]
    fn a_container_covers_what_is_below_it_only() {
        assert!(covers(&path("$.contact"), &path("$.contact.phone")));
        assert!(covers(&path("$.*"), &path("$.contact.phone")));
        assert!(covers(&path("$.a[*]"), &path("$.a[*].b")));
        assert!(!covers(&path("$.contact"), &path("$.contact")));
        assert!(!covers(&path("$.contact.phone"), &path("$.contact")));
        assert!(!covers(&path("$.contacts"), &path("$.contact.phone")));
        assert!(!covers(&path("$.a.x"), &path("$.a.*.y")));
    }
}
