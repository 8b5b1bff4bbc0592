//! The deployment manifests (`envoy/deploy/`) and the OCI image they pull.
//!
//! - Every manifest parses, and validates against the CRD schema of its kind as the
//!   Kubernetes API server would (`envoy/deploy/crds/`, vendored from istio/api and
//!   envoyproxy/gateway): OpenAPI is turned into JSON Schema deliberately (`nullable`,
//!   `x-kubernetes-preserve-unknown-fields`, unknown fields refused as with kubectl's
//!   strict validation), and the CEL rules (`x-kubernetes-validations`) on the paths a
//!   manifest touches are evaluated by Rust equivalents; a rule without one fails.
//! - The plugin configuration inside each is `policies/example.json` in the response
//!   mode its host allows, and passes `consentry check` through the real `.wasm`.
//! - A manifest that runs `hold` sets `allow_on_headers_stop_iteration`; one that runs
//!   `late_commit` does not; none fails open; secrets come from the host.
//! - The EnvoyFilter's Wasm filter is the one `envoy/configs/consentry.yaml` runs.
//! - `consentry package` writes an OCI layout whose every digest, size and media type
//!   holds, and whose layer carries the `.wasm` byte for byte.
//!
//! Needs the plugin's release build:
//! `cargo build -p consentry-filter --target wasm32-wasip1 --release`.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use consentry_host::fixtures::DEV_PSEUDONYM_KEYS;
use consentry_host::oci;
use consentry_host::plugin::{default_wasm_path, workspace_root};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

const PLACEHOLDER_SHA256: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

fn deploy_dir() -> PathBuf {
    workspace_root().join("envoy").join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every YAML document of a file, as JSON values.
fn documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()))
        })
        .collect()
}

/// The manifests: `envoy/deploy/<platform>/*.yaml`, with the response mode each runs.
fn manifests() -> Vec<(PathBuf, &'static str)> {
    let expected = [
        ("istio/wasmplugin.yaml", "late_commit"),
        ("istio/envoyfilter.yaml", "hold"),
        ("envoy-gateway/extension-policy.yaml", "late_commit"),
        ("envoy-gateway/hold.yaml", "hold"),
    ];
    // Every manifest on disk is listed here, so a new one cannot go untested.
    let mut on_disk = BTreeSet::new();
    for platform in ["istio", "envoy-gateway"] {
        for entry in std::fs::read_dir(deploy_dir().join(platform)).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml") || name.ends_with(".yml") {
                on_disk.insert(format!("{platform}/{name}"));
            }
        }
    }
    let listed: BTreeSet<String> = expected.iter().map(|(f, _)| (*f).to_owned()).collect();
    assert_eq!(on_disk, listed, "manifests on disk vs tested here");
    expected
        .into_iter()
        .map(|(f, mode)| (deploy_dir().join(f), mode))
        .collect()
}

// ---------------------------------------------------------------------------------------
// CRD schemas: OpenAPI v3 (Kubernetes structural schema) → JSON Schema, plus what JSON
// Schema cannot say (CEL rules, list-map keys), checked by a walk over the instance.
// ---------------------------------------------------------------------------------------

/// A vendored CRD: its group, kind, version and openAPIV3Schema.
struct Crd {
    file: &'static str,
    group: String,
    kind: String,
    version: String,
    openapi: Value,
}

fn crd(file: &'static str) -> Crd {
    let doc = documents(&deploy_dir().join("crds").join(file))
        .pop()
        .unwrap();
    let version = &doc["spec"]["versions"][0];
    Crd {
        file,
        group: doc["spec"]["group"].as_str().unwrap().to_owned(),
        kind: doc["spec"]["names"]["kind"].as_str().unwrap().to_owned(),
        version: version["name"].as_str().unwrap().to_owned(),
        openapi: version["schema"]["openAPIV3Schema"].clone(),
    }
}

fn crds() -> Vec<Crd> {
    [
        "istio-wasmplugin.yaml",
        "istio-envoyfilter.yaml",
        "envoy-gateway-envoyextensionpolicy.yaml",
        "envoy-gateway-envoypatchpolicy.yaml",
    ]
    .into_iter()
    .map(crd)
    .collect()
}

/// OpenAPI extension keys this conversion knows what to do with; any other `x-` key
/// fails the test, so a new one is handled on purpose.
const KNOWN_EXTENSIONS: &[&str] = &[
    // Unknown fields are kept rather than refused: no additionalProperties: false.
    "x-kubernetes-preserve-unknown-fields",
    // CEL rules and list semantics: checked by `check_extensions`.
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    // Merge strategy only; no effect on what is valid.
    "x-kubernetes-map-type",
    // Always beside an explicit anyOf [integer, string].
    "x-kubernetes-int-or-string",
];

/// The JSON Schema (draft 2020-12) equivalent of a structural OpenAPI v3 schema.
fn to_json_schema(node: &Value, at: &str) -> Value {
    let Some(object) = node.as_object() else {
        panic!("{at}: a schema must be an object, not {node}");
    };
    let mut out = Map::new();
    let mut preserve_unknown = false;
    let mut nullable = false;
    for (key, value) in object {
        match key.as_str() {
            "properties" => {
                let properties = value
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), to_json_schema(v, &format!("{at}.{k}"))))
                    .collect();
                out.insert(key.clone(), Value::Object(properties));
            }
            "items" | "not" => {
                out.insert(key.clone(), to_json_schema(value, &format!("{at}[{key}]")));
            }
            "additionalProperties" if value.is_object() => {
                out.insert(key.clone(), to_json_schema(value, &format!("{at}.*")));
            }
            "allOf" | "anyOf" | "oneOf" => {
                let branches = value
                    .as_array()
                    .unwrap()
                    .iter()
                    .enumerate()
                    .map(|(i, v)| to_json_schema(v, &format!("{at}/{key}/{i}")))
                    .collect();
                out.insert(key.clone(), Value::Array(branches));
            }
            // OpenAPI 3.0's way of allowing null; JSON Schema says it with a type.
            "nullable" => nullable = value == &json!(true),
            "x-kubernetes-preserve-unknown-fields" => preserve_unknown = value == &json!(true),
            "format" => {
                // The API server checks int32 and int64 ranges; other formats are
                // annotations here as there.
                if value == "int32" {
                    out.entry("minimum").or_insert(json!(i32::MIN));
                    out.entry("maximum").or_insert(json!(i32::MAX));
                }
                out.insert(key.clone(), value.clone());
            }
            k if k.starts_with("x-") => {
                assert!(
                    KNOWN_EXTENSIONS.contains(&k),
                    "{at}: OpenAPI extension {k} is not handled by this test"
                );
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    // Kubernetes refuses unknown fields (kubectl's default strict validation) unless
    // the schema keeps them.
    if out.contains_key("properties") && !out.contains_key("additionalProperties") {
        if preserve_unknown {
            out.insert("additionalProperties".into(), json!(true));
        } else {
            out.insert("additionalProperties".into(), json!(false));
        }
    }
    let schema = Value::Object(out);
    if nullable {
        json!({"anyOf": [schema, {"type": "null"}]})
    } else {
        schema
    }
}

/// The schema of a whole object: the CRD's, plus the members every object has (Istio's
/// generated schemas leave `apiVersion`, `kind` and `metadata` out).
fn object_schema(crd: &Crd) -> Value {
    let mut schema = to_json_schema(&crd.openapi, "$");
    let properties = schema["properties"].as_object_mut().unwrap();
    for (name, implicit) in [
        ("apiVersion", json!({"type": "string"})),
        ("kind", json!({"type": "string"})),
        ("metadata", json!({"type": "object"})),
    ] {
        properties.entry(name).or_insert(implicit);
    }
    schema
}

/// Whether `field` is set on an object (CEL's `has(self.field)`).
fn has(v: &Value, field: &str) -> bool {
    v.get(field).is_some_and(|f| !f.is_null())
}

fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or("")
}

fn count(v: &Value, fields: &[&str]) -> usize {
    fields.iter().filter(|f| has(v, f)).count()
}

/// The URL's scheme as CEL's `url(...).getScheme()` reads it ("" when there is none).
fn scheme(url: &str) -> &str {
    match url.split_once("://") {
        Some((scheme, _))
            if scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
        {
            scheme
        }
        _ => "",
    }
}

const ROUTE_KINDS: &[&str] = &["HTTPRoute", "GRPCRoute", "UDPRoute", "TCPRoute", "TLSRoute"];
const EEP_TARGET_KINDS: &[&str] = &[
    "Gateway",
    "ListenerSet",
    "HTTPRoute",
    "GRPCRoute",
    "UDPRoute",
    "TCPRoute",
    "TLSRoute",
];

fn refs(v: &Value, field: &str) -> Vec<Value> {
    v.get(field)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Each CEL rule of the vendored schemas that a manifest here reaches, exactly as the
/// schema writes it, with its meaning in Rust.
fn cel(rule: &str, v: &Value) -> Option<bool> {
    Some(match rule {
        // Istio WasmPlugin
        "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1" => {
            count(v, &["selector", "targetRef", "targetRefs"]) <= 1
        }
        "isURL(self) ? (url(self).getScheme() in [\"\", \"http\", \"https\", \"oci\", \"file\"]) : (isURL(\"http://\" + self) &&\nurl(\"http://\" + self).getScheme() in [\"\", \"http\", \"https\", \"oci\", \"file\"])" => {
            ["", "http", "https", "oci", "file"].contains(&scheme(v.as_str()?))
        }
        "!self.contains(\"*\")" => !v.as_str()?.contains('*'),
        "self.all(key, !key.contains(\"*\"))" => v.as_object()?.keys().all(|k| !k.contains('*')),
        "self.all(key, key.size() != 0)" => v.as_object()?.keys().all(|k| !k.is_empty()),
        "(has(self.valueFrom) ? self.valueFrom : \"\") != \"HOST\" || !has(self.value)" => {
            text(v, "valueFrom") != "HOST" || !has(v, "value")
        }
        "self.size() == 0" => v.as_str()?.is_empty(),
        // Istio EnvoyFilter
        "(has(self.workloadSelector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1" => {
            count(v, &["workloadSelector", "targetRefs"]) <= 1
        }
        "has(self.context) ? ((self.context == \"WAYPOINT\") ? has(self.waypoint) : !has(self.waypoint)) : !has(self.waypoint)" => {
            if has(v, "context") && text(v, "context") == "WAYPOINT" {
                has(v, "waypoint")
            } else {
                !has(v, "waypoint")
            }
        }
        // Envoy Gateway EnvoyExtensionPolicy
        "(has(self.targetRef) && !has(self.targetRefs)) || (!has(self.targetRef) && has(self.targetRefs)) || (has(self.targetSelectors) && self.targetSelectors.size() > 0) " => {
            (has(v, "targetRef") != has(v, "targetRefs")) || !refs(v, "targetSelectors").is_empty()
        }
        "has(self.targetRef) ? self.targetRef.group == 'gateway.networking.k8s.io' : true" => {
            !has(v, "targetRef") || text(&v["targetRef"], "group") == "gateway.networking.k8s.io"
        }
        "has(self.targetRef) ? self.targetRef.kind in ['Gateway', 'ListenerSet', 'HTTPRoute', 'GRPCRoute', 'UDPRoute', 'TCPRoute', 'TLSRoute'] : true" => {
            !has(v, "targetRef") || EEP_TARGET_KINDS.contains(&text(&v["targetRef"], "kind"))
        }
        "has(self.targetRefs) ? self.targetRefs.all(ref, ref.group == 'gateway.networking.k8s.io') : true " => {
            refs(v, "targetRefs")
                .iter()
                .all(|r| text(r, "group") == "gateway.networking.k8s.io")
        }
        "has(self.targetRefs) ? self.targetRefs.all(ref, ref.kind in ['Gateway', 'ListenerSet', 'HTTPRoute', 'GRPCRoute', 'UDPRoute', 'TCPRoute', 'TLSRoute']) : true " => {
            refs(v, "targetRefs")
                .iter()
                .all(|r| EEP_TARGET_KINDS.contains(&text(r, "kind")))
        }
        "!has(self.mergeType) || ((!has(self.targetRef) || self.targetRef.kind in ['HTTPRoute', 'GRPCRoute', 'UDPRoute', 'TCPRoute', 'TLSRoute']) && (!has(self.targetRefs) || self.targetRefs.all(ref, ref.kind in ['HTTPRoute', 'GRPCRoute', 'UDPRoute', 'TCPRoute', 'TLSRoute'])) && (!has(self.targetSelectors) || self.targetSelectors.all(sel, sel.kind in ['HTTPRoute', 'GRPCRoute', 'UDPRoute', 'TCPRoute', 'TLSRoute'])))" =>
        {
            let route = |r: &Value| ROUTE_KINDS.contains(&text(r, "kind"));
            !has(v, "mergeType")
                || ((!has(v, "targetRef") || route(&v["targetRef"]))
                    && refs(v, "targetRefs").iter().all(route)
                    && refs(v, "targetSelectors").iter().all(route))
        }
        "self.type == 'HTTP' ? has(self.http) : !has(self.http)" => {
            (text(v, "type") == "HTTP") == has(v, "http")
        }
        "self.type == 'Image' ? has(self.image) : !has(self.image)" => {
            (text(v, "type") == "Image") == has(v, "image")
        }
        // Envoy Gateway EnvoyPatchPolicy
        "(has(self.targetRef) && (!has(self.targetRefs) || size(self.targetRefs) == 0)) || (!has(self.targetRef) && has(self.targetRefs) && size(self.targetRefs) > 0)" =>
        {
            let many = refs(v, "targetRefs").len();
            (has(v, "targetRef") && many == 0) || (!has(v, "targetRef") && many > 0)
        }
        _ => return None,
    })
}

/// What JSON Schema cannot check: the CEL rules and list-map keys on every node of the
/// instance the schema reaches.
fn check_extensions(schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let text = rule["rule"].as_str().unwrap();
        match cel(text, v) {
            Some(true) => {}
            Some(false) => errors.push(format!("{at}: {}", rule["message"])),
            None => errors.push(format!(
                "{at}: no Rust equivalent for the CEL rule {text:?} (add one to `cel`)"
            )),
        }
    }
    if let Some(items) = v.as_array() {
        match schema["x-kubernetes-list-type"].as_str() {
            Some("map") => {
                let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap())
                    .collect();
                let mut seen = BTreeSet::new();
                for item in items {
                    let key: Vec<String> = keys.iter().map(|k| item[*k].to_string()).collect();
                    if !seen.insert(key.clone()) {
                        errors.push(format!("{at}: duplicate list-map key {key:?}"));
                    }
                }
            }
            Some("set") => {
                let mut seen = BTreeSet::new();
                for item in items {
                    if !seen.insert(item.to_string()) {
                        errors.push(format!("{at}: duplicate set item {item}"));
                    }
                }
            }
            _ => {}
        }
        for (i, item) in items.iter().enumerate() {
            check_extensions(&schema["items"], item, &format!("{at}[{i}]"), errors);
        }
    }
    if let Some(members) = v.as_object() {
        for (name, value) in members {
            let sub = match schema["properties"].get(name) {
                Some(sub) => sub,
                None if schema["additionalProperties"].is_object() => {
                    &schema["additionalProperties"]
                }
                None => continue,
            };
            check_extensions(sub, value, &format!("{at}.{name}"), errors);
        }
    }
}

/// Every way `doc` falls short of its CRD, as the API server would say it.
fn crd_errors(doc: &Value, crd: &Crd) -> Vec<String> {
    let mut errors = Vec::new();
    let api_version = format!("{}/{}", crd.group, crd.version);
    if doc["apiVersion"] != api_version.as_str() {
        errors.push(format!(
            "apiVersion {} is not {api_version}",
            doc["apiVersion"]
        ));
    }
    // metadata is validated by the API server as ObjectMeta: a DNS-1123 name.
    let name = doc["metadata"]["name"].as_str().unwrap_or("");
    let dns1123 = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !dns1123 {
        errors.push(format!(
            "metadata.name {name:?} is not a DNS-1123 subdomain"
        ));
    }
    let schema = object_schema(crd);
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{}: the converted schema: {e}", crd.file));
    errors.extend(
        validator
            .iter_errors(doc)
            .map(|e| format!("{}: {e}", e.instance_path())),
    );
    check_extensions(&crd.openapi, doc, "$", &mut errors);
    errors
}

fn crd_for<'a>(doc: &Value, crds: &'a [Crd]) -> &'a Crd {
    let kind = doc["kind"].as_str().unwrap_or_default();
    crds.iter()
        .find(|c| c.kind == kind)
        .unwrap_or_else(|| panic!("no vendored CRD for kind {kind:?}"))
}

#[test]
fn every_manifest_validates_against_its_crd() {
    let crds = crds();
    let mut failures = Vec::new();
    let mut kinds = BTreeSet::new();
    for (path, _) in manifests() {
        for doc in documents(&path) {
            let crd = crd_for(&doc, &crds);
            kinds.insert(crd.kind.clone());
            for e in crd_errors(&doc, crd) {
                failures.push(format!("{}: {}: {e}", path.display(), crd.kind));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "EnvoyExtensionPolicy",
            "EnvoyFilter",
            "EnvoyPatchPolicy",
            "WasmPlugin"
        ],
        "every vendored CRD is used"
    );
}

/// The validation is not vacuous: broken copies of the manifests are refused, each
/// for its own reason (JSON Schema, strict fields, nullable, CEL, list-map keys).
#[test]
fn the_crd_checks_refuse_broken_manifests() {
    let crds = crds();
    let wasmplugin = documents(&deploy_dir().join("istio/wasmplugin.yaml")).remove(0);
    let envoyfilter = documents(&deploy_dir().join("istio/envoyfilter.yaml")).remove(0);
    let extension = documents(&deploy_dir().join("envoy-gateway/extension-policy.yaml")).remove(0);
    let patch = documents(&deploy_dir().join("envoy-gateway/hold.yaml")).remove(1);
    type Edit = fn(&mut Value);
    let cases: Vec<(&str, &Value, Edit, &str)> = vec![
        (
            "an unknown field",
            &wasmplugin,
            |d| d["spec"]["failOpen"] = json!(true),
            "failOpen",
        ),
        (
            "a bad enum",
            &wasmplugin,
            |d| d["spec"]["failStrategy"] = json!("FAIL_SOMETIMES"),
            "FAIL_SOMETIMES",
        ),
        (
            "a bad digest",
            &wasmplugin,
            |d| d["spec"]["sha256"] = json!("sha256:abc"),
            "sha256",
        ),
        (
            "a missing url",
            &wasmplugin,
            |d| {
                d["spec"].as_object_mut().unwrap().remove("url");
            },
            "url",
        ),
        (
            "a url scheme",
            &wasmplugin,
            |d| d["spec"]["url"] = json!("ftp://x/y"),
            "url must have schema",
        ),
        (
            "selector and targetRefs",
            &wasmplugin,
            |d| d["spec"]["targetRefs"] = json!([{"kind": "Gateway", "name": "g"}]),
            "only one of targetRefs or selector",
        ),
        (
            "an inline value beside HOST",
            &wasmplugin,
            |d| d["spec"]["vmConfig"]["env"][0]["value"] = json!("k"),
            "value may only be set",
        ),
        (
            "a repeated env name",
            &wasmplugin,
            |d| {
                let e = d["spec"]["vmConfig"]["env"][0].clone();
                d["spec"]["vmConfig"]["env"].as_array_mut().unwrap().push(e);
            },
            "duplicate list-map key",
        ),
        (
            "a null priority is allowed",
            &wasmplugin,
            |d| d["spec"]["priority"] = json!(null),
            "",
        ),
        (
            "a string priority",
            &wasmplugin,
            |d| d["spec"]["priority"] = json!("1"),
            "priority",
        ),
        (
            "a wrong apiVersion",
            &wasmplugin,
            |d| d["apiVersion"] = json!("extensions.istio.io/v1"),
            "apiVersion",
        ),
        (
            "a bad name",
            &wasmplugin,
            |d| d["metadata"]["name"] = json!("Consentry"),
            "DNS-1123",
        ),
        (
            "a bad applyTo",
            &envoyfilter,
            |d| d["spec"]["configPatches"][0]["applyTo"] = json!("WASM"),
            "WASM",
        ),
        (
            "two matches",
            &envoyfilter,
            |d| d["spec"]["configPatches"][1]["match"]["cluster"] = json!({"name": "x"}),
            "configPatches/1/match",
        ),
        (
            "a waypoint outside WAYPOINT",
            &envoyfilter,
            |d| d["spec"]["configPatches"][0]["match"]["waypoint"] = json!({}),
            "waypointMatch",
        ),
        (
            "an unknown patch member",
            &envoyfilter,
            |d| d["spec"]["configPatches"][0]["patch"]["values"] = json!({}),
            "values",
        ),
        (
            "a wasm without code",
            &extension,
            |d| {
                d["spec"]["wasm"][0].as_object_mut().unwrap().remove("code");
            },
            "code",
        ),
        (
            "an Image without image",
            &extension,
            |d| d["spec"]["wasm"][0]["code"]["type"] = json!("HTTP"),
            "If type is HTTP",
        ),
        (
            "a target of another group",
            &extension,
            |d| d["spec"]["targetRefs"][0]["group"] = json!("example.com"),
            "targetRefs[*].group",
        ),
        (
            "no target at all",
            &extension,
            |d| {
                d["spec"].as_object_mut().unwrap().remove("targetRefs");
            },
            "either targetRef or targetRefs",
        ),
        (
            "failOpen as a string",
            &extension,
            |d| d["spec"]["wasm"][0]["failOpen"] = json!("false"),
            "failOpen",
        ),
        (
            "both targetRef and targetRefs",
            &patch,
            |d| d["spec"]["targetRefs"] = json!([d["spec"]["targetRef"].clone()]),
            "exactly one of targetRef or targetRefs",
        ),
        (
            "an unknown op",
            &patch,
            |d| d["spec"]["jsonPatches"][0]["operation"]["op"] = json!("merge"),
            "merge",
        ),
        (
            "a priority beyond int32",
            &patch,
            |d| d["spec"]["priority"] = json!(1_u64 << 31),
            "priority",
        ),
    ];
    for (what, original, edit, expected) in cases {
        let mut doc = original.clone();
        edit(&mut doc);
        let errors = crd_errors(&doc, crd_for(&doc, &crds));
        if expected.is_empty() {
            assert!(errors.is_empty(), "{what}: {errors:#?}");
        } else {
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "{what}: expected an error mentioning {expected:?}, got {errors:#?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The plugin configuration and the Wasm filter each manifest amounts to.
// ---------------------------------------------------------------------------------------

/// What one manifest gives the proxy: the plugin configuration (JSON), and how the
/// filter is set up around it.
struct Deployment {
    config: Value,
    /// `allow_on_headers_stop_iteration` as the manifest (or its patch) sets it.
    flag: bool,
    fails_closed: bool,
    /// The VM environment variables taken from the host.
    host_env: Vec<String>,
    sha256: Vec<String>,
}

fn deployment(path: &Path) -> Deployment {
    let docs = documents(path);
    let mut out = Deployment {
        config: Value::Null,
        flag: false,
        fails_closed: false,
        host_env: Vec::new(),
        sha256: Vec::new(),
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let mut patched_filters = Vec::new();
    for doc in &docs {
        let spec = &doc["spec"];
        match doc["kind"].as_str().unwrap() {
            "WasmPlugin" => {
                out.config = spec["pluginConfig"].clone();
                out.fails_closed = spec["failStrategy"] == "FAIL_CLOSE";
                for env in spec["vmConfig"]["env"].as_array().unwrap() {
                    assert_eq!(
                        env["valueFrom"], "HOST",
                        "{env}: secrets come from the host"
                    );
                    assert!(env.get("value").is_none(), "{env}");
                    out.host_env.push(env["name"].as_str().unwrap().to_owned());
                }
                out.sha256.push(spec["sha256"].as_str().unwrap().to_owned());
            }
            "EnvoyFilter" => {
                let wasm = envoyfilter_wasm(doc);
                let config = &wasm["config"];
                out.config =
                    serde_json::from_str(config["configuration"]["value"].as_str().unwrap())
                        .unwrap();
                out.flag = config["allow_on_headers_stop_iteration"] == true;
                out.fails_closed =
                    config["failure_policy"] == "FAIL_CLOSED" && config.get("fail_open").is_none();
                let vm = &config["vm_config"];
                assert!(
                    vm["environment_variables"].get("key_values").is_none(),
                    "no secret inline"
                );
                out.host_env = strings(&vm["environment_variables"]["host_env_keys"]);
                out.sha256
                    .push(vm["code"]["remote"]["sha256"].as_str().unwrap().to_owned());
            }
            "EnvoyExtensionPolicy" => {
                let wasm = &spec["wasm"].as_array().unwrap()[..];
                assert_eq!(wasm.len(), 1, "one Wasm extension");
                out.config = wasm[0]["config"].clone();
                // Explicit, not left to the default.
                out.fails_closed = wasm[0]["failOpen"] == false;
                out.host_env = strings(&wasm[0]["env"]["hostKeys"]);
                out.sha256.push(
                    wasm[0]["code"]["image"]["sha256"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
                patched_filters.push(format!(
                    "envoy.filters.http.wasm/envoyextensionpolicy/{}/{}/wasm/0",
                    doc["metadata"]["namespace"].as_str().unwrap(),
                    doc["metadata"]["name"].as_str().unwrap()
                ));
            }
            "EnvoyPatchPolicy" => {
                for patch in spec["jsonPatches"].as_array().unwrap() {
                    let op = &patch["operation"];
                    if op["path"] == "/allow_on_headers_stop_iteration"
                        && op["op"] == "add"
                        && op["value"] == true
                    {
                        let json_path = op["jsonPath"].as_str().unwrap();
                        assert!(
                            patched_filters
                                .iter()
                                .any(|f| json_path.contains(&format!("@.name=='{f}'"))),
                            "{}: the patch must name the filter of the extension policy \
                             before it ({patched_filters:?}): {json_path}",
                            path.display()
                        );
                        assert!(json_path.ends_with(".typed_config.config"), "{json_path}");
                        out.flag = true;
                    }
                }
            }
            other => panic!("{}: unexpected kind {other}", path.display()),
        }
    }
    out
}

/// The Wasm filter configuration (typed_config) the EnvoyFilter adds as an extension
/// config, after checking that its HTTP filter takes exactly that one.
fn envoyfilter_wasm(doc: &Value) -> Value {
    let patches = doc["spec"]["configPatches"].as_array().unwrap();
    let extension = patches
        .iter()
        .find(|p| p["applyTo"] == "EXTENSION_CONFIG")
        .expect("an EXTENSION_CONFIG patch");
    assert_eq!(extension["patch"]["operation"], "ADD");
    let name = &extension["patch"]["value"]["name"];
    let filter = patches
        .iter()
        .find(|p| p["applyTo"] == "HTTP_FILTER")
        .expect("an HTTP_FILTER patch");
    let discovery = &filter["patch"]["value"]["config_discovery"];
    assert_eq!(
        &filter["patch"]["value"]["name"], name,
        "the filter takes that config"
    );
    assert_eq!(discovery["type_urls"], json!([WASM_TYPE]));
    assert!(
        discovery.get("default_config").is_none()
            && discovery
                .get("apply_default_config_without_warming")
                .is_none(),
        "no default config: without the plugin's config the listener waits (fail closed)"
    );
    assert_eq!(
        filter["match"]["context"], extension["match"]["context"],
        "both patches reach the same proxies"
    );
    let typed = extension["patch"]["value"]["typed_config"].clone();
    assert_eq!(typed["@type"], WASM_TYPE);
    typed
}

/// `policies/example.json` in this response mode, its consent service reached
/// through the cluster the host names for it.
fn example_in(mode: &str, cluster: &str) -> Value {
    let mut example: Value =
        serde_json::from_str(&read(&workspace_root().join("policies/example.json"))).unwrap();
    example["response_mode"] = json!(mode);
    for issuer in example["issuers"].as_array_mut().unwrap() {
        issuer["keys"]["remote"]["cluster"] = json!(cluster);
        issuer["revocation"]["status_list"]["cluster"] = json!(cluster);
    }
    example
}

/// The cluster of the consent service on each host: Istio names a `ServiceEntry`'s
/// cluster after its host and port; Envoy Gateway's names are its own (the
/// manifests keep the example's, to be adapted).
fn consent_cluster(path: &Path) -> &'static str {
    if path.components().any(|c| c.as_os_str() == "istio") {
        "outbound|443||consent.example.com"
    } else {
        "consent_service"
    }
}

/// The secrets a configuration names (`secrets.*.env`).
fn named_secrets(config: &Value) -> Vec<String> {
    let mut out: Vec<String> = config["secrets"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, s)| s["env"].as_str().map(str::to_owned))
        .collect();
    out.sort();
    out
}

fn consentry(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_consentry"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn each_manifest_runs_the_example_policy_in_the_mode_its_host_allows() {
    let dir = tempfile::tempdir().unwrap();
    for (path, mode) in manifests() {
        let name = path.display().to_string();
        let d = deployment(&path);
        assert_eq!(
            d.config,
            example_in(mode, consent_cluster(&path)),
            "{name}: example.json in {mode}"
        );
        assert!(d.fails_closed, "{name}: must fail closed");
        assert_eq!(
            d.flag,
            mode == "hold",
            "{name}: hold needs allow_on_headers_stop_iteration; late_commit must not \
             depend on it"
        );
        let mut host_env = d.host_env.clone();
        host_env.sort();
        assert_eq!(
            host_env,
            named_secrets(&d.config),
            "{name}: every secret from the host"
        );
        assert!(!d.sha256.is_empty());
        for sha in &d.sha256 {
            assert_eq!(
                sha, PLACEHOLDER_SHA256,
                "{name}: the documented placeholder"
            );
        }
        let text = read(&path);
        assert!(
            !text.contains("FAIL_OPEN") || text.contains("never FAIL_OPEN"),
            "{name}"
        );
        assert!(!text.contains("failOpen: true"), "{name}");

        // `consentry check` through the real .wasm, with the secrets the host provides.
        let config_file = dir.path().join("config.json");
        std::fs::write(&config_file, d.config.to_string()).unwrap();
        let out = consentry(&[
            "check",
            config_file.to_str().unwrap(),
            "--env",
            &format!("CONSENTRY_PSEUDONYM_KEYS={DEV_PSEUDONYM_KEYS}"),
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: consentry check failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("response mode {mode}:"))),
            "{name}: {stdout}"
        );
    }
}

/// A template of `envoy/configs/`, its placeholders filled with dummies, parsed.
fn template(name: &str) -> Value {
    let mut text = read(&workspace_root().join("envoy/configs").join(name));
    while let Some(start) = text.find("{{") {
        let end = start + text[start..].find("}}").unwrap() + 2;
        text.replace_range(start..end, "\"placeholder\"");
    }
    serde_norway::from_str(&text).unwrap()
}

/// The Wasm filter's typed_config in a template.
fn template_wasm(name: &str) -> Value {
    let config = template(name);
    let filters = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["http_filters"]
        .as_array()
        .unwrap()
        .clone();
    filters
        .into_iter()
        .find(|f| f["name"] == "envoy.filters.http.wasm")
        .unwrap()["typed_config"]
        .clone()
}

/// What differs by where a filter runs, not by what it is: where the code and the
/// secrets come from, and the plugin configuration (compared on its own).
fn without_placement(mut wasm: Value) -> Value {
    let config = wasm["config"].as_object_mut().unwrap();
    config["configuration"]
        .as_object_mut()
        .unwrap()
        .remove("value");
    let vm = config["vm_config"].as_object_mut().unwrap();
    vm.remove("code");
    vm.remove("environment_variables");
    wasm
}

#[test]
fn the_envoyfilter_runs_the_wasm_filter_of_the_envoy_templates() {
    let from_template = template_wasm("consentry.yaml");
    let doc = documents(&deploy_dir().join("istio/envoyfilter.yaml")).remove(0);
    let from_manifest = envoyfilter_wasm(&doc);
    assert_eq!(
        without_placement(from_manifest.clone()),
        without_placement(from_template.clone()),
        "the EnvoyFilter's Wasm filter is consentry.yaml's (flag and failure policy included)"
    );
    let template_env: Vec<&String> = from_template["config"]["vm_config"]["environment_variables"]
        ["key_values"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        from_manifest["config"]["vm_config"]["environment_variables"]["host_env_keys"],
        json!(template_env),
        "the same secrets, from the host"
    );

    // The template without the flag (the late_commit manifests' host) differs from
    // consentry.yaml by the flag alone.
    let mut with_flag = template_wasm("consentry.yaml");
    assert_eq!(
        with_flag["config"]
            .as_object_mut()
            .unwrap()
            .remove("allow_on_headers_stop_iteration"),
        Some(json!(true))
    );
    assert_eq!(template_wasm("consentry-noflag.yaml"), with_flag);
    // And nothing else differs: the trust boundary, the masked local replies and
    // the limits are the same.
    let strip = |name: &str| -> String {
        let text = read(&workspace_root().join("envoy/configs").join(name));
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter(|l| !l.contains("allow_on_headers_stop_iteration"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip("consentry-noflag.yaml"), strip("consentry.yaml"));
}

// ---------------------------------------------------------------------------------------
// The OCI image.
// ---------------------------------------------------------------------------------------

fn sha256_of(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A blob of the layout, checked against its descriptor: the file is named by its
/// digest, hashes to it, and has its size.
fn blob(
    layout: &Path,
    descriptor: &Value,
    media_type: &str,
    used: &mut BTreeSet<String>,
) -> Vec<u8> {
    assert_eq!(descriptor["mediaType"], media_type, "{descriptor}");
    let digest = descriptor["digest"].as_str().unwrap();
    let hex = digest.strip_prefix("sha256:").unwrap();
    let bytes = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
    assert_eq!(sha256_of(&bytes), digest, "blob content vs its digest");
    assert_eq!(descriptor["size"], bytes.len(), "{descriptor}");
    used.insert(hex.to_owned());
    bytes
}

#[test]
fn consentry_package_writes_the_wasm_as_an_oci_image_istio_and_envoy_gateway_pull() {
    let wasm_path = default_wasm_path();
    let wasm = std::fs::read(&wasm_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build it with `{}`",
            wasm_path.display(),
            consentry_host::BUILD_COMMAND
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("image");
    let out = consentry(&[
        "package",
        "--oci",
        layout.to_str().unwrap(),
        "--tag",
        "1.2.3",
        "--wasm",
        wasm_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let layout_file: Value =
        serde_json::from_slice(&std::fs::read(layout.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(layout_file, json!({"imageLayoutVersion": "1.0.0"}));
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], oci::INDEX_MEDIA_TYPE);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["annotations"][oci::REF_NAME], "1.2.3");
    assert_eq!(
        manifests[0]["digest"],
        printed.as_str(),
        "the digest printed"
    );

    let mut used = BTreeSet::new();
    let manifest_bytes = blob(&layout, &manifests[0], oci::MANIFEST_MEDIA_TYPE, &mut used);
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], oci::MANIFEST_MEDIA_TYPE);
    assert_eq!(manifest["annotations"][oci::VARIANT_ANNOTATION], "compat");
    let config: Value = serde_json::from_slice(&blob(
        &layout,
        &manifest["config"],
        oci::CONFIG_MEDIA_TYPE,
        &mut used,
    ))
    .unwrap();
    // Istio's and Envoy Gateway's fetchers take the compat image's one tar+gzip layer
    // and look for plugin.wasm in it.
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "exactly one layer");
    let layer = blob(&layout, &layers[0], oci::LAYER_MEDIA_TYPE, &mut used);
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&layer[..])
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(
        config["rootfs"],
        json!({"type": "layers", "diff_ids": [sha256_of(&tar)]})
    );
    assert_eq!(
        (config["architecture"].as_str(), config["os"].as_str()),
        (Some("wasm"), Some("wasip1"))
    );
    let mut archive = tar::Archive::new(&tar[..]);
    let mut entries = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        entries.push((name, bytes));
    }
    assert_eq!(entries.len(), 1, "one file in the layer");
    assert_eq!(entries[0].0, oci::PLUGIN_FILE);
    assert!(
        entries[0].1 == wasm,
        "the layer holds the .wasm byte for byte"
    );

    // Nothing else in the layout.
    let on_disk: BTreeSet<String> = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(on_disk, used, "every blob is referenced, and only those");

    // Reproducible: the same .wasm gives the same digest a manifest can pin.
    let again = oci::write_layout(&dir.path().join("again"), &wasm, "1.2.3").unwrap();
    assert_eq!(again.manifest_digest, printed);
    // And a different .wasm another one.
    let mut other = wasm.clone();
    other.extend_from_slice(&[0, 1, 2]);
    let other = oci::write_layout(&dir.path().join("other"), &other, "1.2.3").unwrap();
    assert_ne!(other.manifest_digest, printed);
}
