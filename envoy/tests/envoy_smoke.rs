//! End-to-end: a real Envoy 1.40 with the real release `.wasm`, in front of the example
//! upstream service started in-process.
//!
//! Needs `./envoy/install.sh` (or ENVOY_BIN) and the release `.wasm`
//! (`cargo build -p consentry-filter --target wasm32-wasip1 --release`). Without them
//! these tests fail with a message saying so; they never skip.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed step must fail the test"
)]

use std::time::Duration;

use consentry_envoy::{Envoy, HttpResponse, RunningEnvoy, project_root, send, template_names};
use consentry_example_service::RunningService;
use serde_json::Value;

fn example_policy() -> String {
    std::fs::read_to_string(project_root().join("policies/example.json")).unwrap()
}

/// `authorization: Bearer <the insurer persona's consent token, issued now>`.
fn insurer() -> (&'static str, String) {
    let token =
        consentry_host::mint::persona_token("insurer", std::time::SystemTime::now()).unwrap();
    ("authorization", format!("Bearer {token}"))
}

fn upstream() -> RunningService {
    consentry_example_service::spawn("127.0.0.1:0").unwrap()
}

/// Fails (never skips) when Envoy or the .wasm is missing, with the fix in the message.
fn require_prerequisites() {
    if let Err(e) = consentry_envoy::envoy_binary() {
        panic!("{e:#}");
    }
    if let Err(e) = consentry_envoy::wasm_path() {
        panic!("{e:#}");
    }
}

fn start_consentry(service: &RunningService, plugin_config: &str) -> RunningEnvoy {
    require_prerequisites();
    Envoy::builder()
        .upstream_port(service.addr().port())
        .plugin_config_json(plugin_config)
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn get(url: &str, headers: &[(&str, &str)]) -> HttpResponse {
    send("GET", url, headers, None).unwrap_or_else(|e| panic!("{e:#}"))
}

fn assert_problem(response: &HttpResponse, status: u16) -> Value {
    assert_eq!(
        response.status,
        status,
        "headers {:?}, body {}",
        response.headers,
        response.text()
    );
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json"),
        "{:?}",
        response.headers
    );
    assert_eq!(
        response.content_length(),
        Some(response.body.len()),
        "content-length must match the body"
    );
    let body = response.json().unwrap();
    assert_eq!(body["status"], u64::from(status), "{body}");
    assert!(body["code"].is_string(), "{body}");
    body
}

/// The response is the configured redaction of the upstream's record: no
/// `identity.national_id`, no `contact`, everything else there.
/// The insurer's view of the record: billing and identity, not the national id
/// (special category), not clinical data, not the contact details (not consented; the
/// phone masked by the policy's rule).
fn assert_redacted_record(response: &HttpResponse, original: &Value) {
    assert_eq!(
        response.status,
        200,
        "headers {:?}, body {}",
        response.headers,
        response.text()
    );
    let body = response.json().unwrap();
    assert!(body.get("clinical").is_none(), "clinical leaked: {body}");
    assert!(
        body["identity"].get("national_id").is_none(),
        "identity.national_id leaked: {body}"
    );
    assert!(
        body["contact"].get("email").is_none(),
        "contact leaked: {body}"
    );
    assert_eq!(body["contact"]["phone"], "+** **** ***412", "{body}");
    assert_eq!(
        body["identity"]["name"], original["identity"]["name"],
        "{body}"
    );
    assert_eq!(body["billing"], original["billing"], "{body}");
}

/// (1) Every configuration in envoy/configs/ renders and passes `envoy --mode validate`.
#[test]
fn every_config_renders_and_validates() {
    require_prerequisites();
    let names = template_names().unwrap();
    assert!(names.contains(&"consentry.yaml".to_owned()), "{names:?}");
    assert!(names.contains(&"bare.yaml".to_owned()), "{names:?}");
    for name in names {
        let text = std::fs::read_to_string(consentry_envoy::configs_dir().join(&name)).unwrap();
        let mut builder = Envoy::builder()
            .template(&name)
            .upstream_port(consentry_envoy::free_port());
        let wanted = consentry_envoy::placeholders(&text);
        if wanted.contains("PLUGIN_CONFIG") {
            builder = builder.plugin_config_json(&example_policy());
        }
        // Extra ports a template needs (e.g. a cluster with nothing listening).
        for extra in wanted.iter().filter(|p| {
            p.ends_with("_PORT")
                && !["LISTEN_PORT", "ADMIN_PORT", "UPSTREAM_PORT"].contains(&p.as_str())
        }) {
            builder = builder.var(extra.as_str(), consentry_envoy::free_port());
        }
        // The probe template loads the host-fidelity probe, not the plugin.
        if name == "probe.yaml" {
            builder = builder
                .wasm(consentry_host::fidelity::require_probe().unwrap_or_else(|e| panic!("{e}")));
        }
        let rendered = builder.render().unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(!rendered.contains("{{"), "{name} left a placeholder");
        consentry_envoy::validate(&rendered).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    }
}

/// (2) Bare Envoy is a transparent proxy: status and body exactly as upstream sent them.
#[test]
fn bare_envoy_proxies_the_exact_upstream_body() {
    require_prerequisites();
    let service = upstream();
    let direct = get(&format!("{}/patients/p-1", service.base_url()), &[]);
    assert_eq!(direct.status, 200);
    assert!(!direct.body.is_empty());

    let envoy = Envoy::builder()
        .template("bare.yaml")
        .upstream_port(service.addr().port())
        .start()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let proxied = get(&format!("{}/patients/p-1", envoy.base_url()), &[]);
    assert_eq!(proxied.status, 200, "{}", proxied.text());
    assert_eq!(proxied.text(), direct.text());
    assert_eq!(proxied.content_length(), Some(proxied.body.len()));
    assert!(envoy.admin_get("/ready").unwrap().contains("LIVE"));
}

/// (3) The demo policy on a real Envoy: refusals are masked problems, and allowed
/// responses are redacted, whatever the upstream's framing.
#[test]
fn consentry_refuses_and_redacts_with_the_example_policy() {
    let service = upstream();
    let direct = get(&format!("{}/patients/p-1", service.base_url()), &[]);
    assert_eq!(direct.status, 200);
    let original = direct.json().unwrap();
    assert!(
        original["identity"]["national_id"].is_string() && original["contact"].is_object(),
        "the upstream record must hold what the policy removes: {original}"
    );

    let envoy = start_consentry(&service, &example_policy());
    envoy
        .wait_for_log("consentry: configuration loaded", Duration::from_secs(5))
        .unwrap();
    let url = |path: &str| format!("{}{}", envoy.base_url(), path);

    // No token: 401 token_missing, and nothing from the upstream.
    let response = get(&url("/patients/p-1"), &[]);
    let problem = assert_problem(&response, 401);
    assert_eq!(problem["code"], "token_missing", "{problem}");
    assert!(!response.text().contains("national_id"));

    let bearer = insurer();
    let bearer = (bearer.0, bearer.1.as_str());
    // A token on a configured route: the redacted record, with a correct content-length.
    let response = get(&url("/patients/p-1"), &[bearer]);
    assert_redacted_record(&response, &original);
    assert_eq!(
        response.content_length(),
        Some(response.body.len()),
        "content-length must be the redacted body's length; headers {:?}",
        response.headers
    );
    let redacted = response.body.clone();

    // A route the policy does not know: 403, whatever the upstream would say.
    for path in ["/patients/p-1/history", "/no/such/route"] {
        let response = get(&url(path), &[bearer]);
        assert_problem(&response, 403);
        assert!(!response.text().contains("policy_number"));
    }

    // The upstream streams the body in chunks: still redacted, the same bytes.
    let response = get(&url("/patients/p-1?chunked=1"), &[bearer]);
    assert_redacted_record(&response, &original);
    assert_eq!(response.text(), String::from_utf8_lossy(&redacted));
    if let Some(length) = response.content_length() {
        assert_eq!(length, response.body.len());
    }

    // A compressed body cannot be redacted: refused with a masked 502, never passed on.
    let response = get(&url("/patients/p-1?gzip=1"), &[bearer]);
    assert_problem(&response, 502);
    assert!(
        response.header("content-encoding").is_none(),
        "{:?}",
        response.headers
    );

    // Envoy is still healthy after all that (no trap closed the VM).
    let response = get(&url("/patients/p-1"), &[bearer]);
    assert_redacted_record(&response, &original);
    assert!(
        !envoy.log().contains("Uncaught RuntimeError"),
        "{}",
        envoy.log()
    );
}

/// (4) A refused plugin configuration: Envoy 1.40 refuses to start (exit code 1; with
/// FAIL_CLOSED a plugin whose configuration callback fails cannot be created), and the
/// plugin's error names the JSON location. `envoy --mode validate` refuses it too,
/// because validation runs the plugin's configuration callback.
#[test]
fn a_refused_plugin_configuration_stops_envoy_from_starting() {
    require_prerequisites();
    let service = upstream();

    let mut bad_route = serde_json::from_str::<Value>(&example_policy()).unwrap();
    bad_route["routes"][1]["path"] = Value::from("patients/{id}/history");
    let mut no_issuers = serde_json::from_str::<Value>(&example_policy()).unwrap();
    no_issuers["issuers"] = Value::from(Vec::<Value>::new());
    let no_issuers = no_issuers.to_string();
    let bad_route = bad_route.to_string();
    let cases: [(&str, &str); 4] = [
        (r#"{"version": 2}"#, "consentry: configuration refused: $: "),
        (
            r#"{"version": 2, "issuers": [], "routes": []}"#,
            "consentry: configuration refused: $.version: unsupported version 2",
        ),
        (
            &no_issuers,
            "consentry: configuration refused: $.issuers: list at least one issuer",
        ),
        (
            &bad_route,
            "consentry: configuration refused: $.routes[1].path: ",
        ),
    ];
    for (config, expected) in cases {
        let builder = Envoy::builder()
            .upstream_port(service.addr().port())
            .plugin_config_json(config);
        let failure = builder
            .start_expecting_failure()
            .unwrap_or_else(|e| panic!("{config}: {e:#}"));
        assert_eq!(failure.exit_code, Some(1), "{}", failure.log);
        let refusal = failure
            .log
            .lines()
            .find(|l| l.contains("consentry: configuration refused:"))
            .unwrap_or_else(|| panic!("no refusal in the log:\n{}", failure.log));
        assert!(refusal.contains("[error]"), "{refusal}");
        assert!(refusal.contains(expected), "{refusal}");
        assert!(
            failure
                .log
                .contains("Unable to create Wasm plugin consentry"),
            "{}",
            failure.log
        );

        let rendered = builder.render().unwrap();
        let err = consentry_envoy::validate(&rendered)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{err}");
    }
}

/// The runner itself: an Envoy that cannot start is an error quoting Envoy's log, and
/// template mistakes are caught before Envoy runs.
#[test]
fn the_runner_reports_why_envoy_did_not_start() {
    require_prerequisites();
    let broken = "admin:\n  address:\n    socket_address: {address: 127.0.0.1, port_value: {{ADMIN_PORT}}}\n\
                  static_resources:\n  listeners:\n  - name: x\n    address:\n      socket_address: \
                  {address: 127.0.0.1, port_value: {{LISTEN_PORT}}}\n    no_such_field: 1\n";
    let err = format!(
        "{:#}",
        Envoy::builder().template_text(broken).start().unwrap_err()
    );
    assert!(err.contains("Envoy exited before it was ready"), "{err}");
    assert!(err.contains("no_such_field"), "{err}");

    // The plugin configuration given to a template without the wasm filter is a mistake.
    let err = format!(
        "{:#}",
        Envoy::builder()
            .template("bare.yaml")
            .upstream_port(1)
            .plugin_config_json("{}")
            .render()
            .unwrap_err()
    );
    assert!(err.contains("does not use: PLUGIN_CONFIG"), "{err}");

    // The default template needs a plugin configuration.
    let err = format!(
        "{:#}",
        Envoy::builder().upstream_port(1).render().unwrap_err()
    );
    assert!(err.contains("plugin_config_json"), "{err}");
}
