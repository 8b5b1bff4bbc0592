//! The component (`plugin/component`, wasi:http) behind `consentry serve`: the
//! product's scenarios and golden views, held to the same expectations the Envoy
//! suites hold the proxy-wasm plugin to, and compared with the proxy-wasm build
//! run in the harness (which the Envoy parity suite compares with Envoy).
//!
//! Needs the component's release build (`serve::COMPONENT_BUILD_COMMAND`) and the
//! plugin's; without them the tests fail with the command to run. They never skip.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test code: a failed step must fail the test"
)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use consentry_envoy::scripted::{Reply, ScriptedUpstream};
use consentry_envoy::{HttpResponse, send};
use consentry_example_service::RunningService;
use consentry_host::fixtures::dev_env;
use consentry_host::plugin::workspace_root;
use consentry_host::scenario::{Observed, ReceivedRequest, Scenario, differences, scenario_dir};
use consentry_host::serve::{self, Log, Options, Running};
use consentry_host::{Plugin, Response, audit_log, mint};
use serde_json::Value;

/// `consentry serve` in front of `upstream`, the consent service at `consent`,
/// its log kept in memory.
fn serve(config_json: &str, upstream: &str, consent: &str) -> (Running, Arc<Mutex<Vec<String>>>) {
    let component = serve::default_component_path();
    assert!(
        component.exists(),
        "{} is missing; build it with `{}`",
        component.display(),
        serve::COMPONENT_BUILD_COMMAND
    );
    let lines = Arc::new(Mutex::new(Vec::new()));
    let server = serve::start(
        Options {
            component,
            config_json: config_json.to_owned(),
            upstream: upstream.to_owned(),
            consent: Some(consent.to_owned()),
            env: dev_env(),
            workers: 2,
            log: Log::Lines(Arc::clone(&lines)),
        },
        "127.0.0.1:0",
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    (server, lines)
}

fn example_policy() -> String {
    std::fs::read_to_string(workspace_root().join("policies/example.json")).unwrap()
}

fn example_service() -> RunningService {
    consentry_example_service::spawn("127.0.0.1:0").unwrap()
}

fn get(server: &Running, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    send(
        "GET",
        &format!("{}{path}", server.base_url()),
        headers,
        None,
    )
    .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
}

fn token(persona: &str) -> String {
    format!(
        "Bearer {}",
        mint::persona_token(persona, SystemTime::now()).unwrap()
    )
}

fn problem_code(r: &HttpResponse) -> String {
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    v["code"].as_str().unwrap().to_owned()
}

fn reply_of(r: &Response) -> Reply {
    let mut reply = Reply::new(r.status)
        .pieces(&r.chunks)
        .gap(Duration::from_millis(2));
    for (n, v) in &r.headers {
        reply = reply.header(n, &String::from_utf8_lossy(v));
    }
    reply
}

/// The scenario as `consentry serve` must meet it. Envoy puts its own `server` header
/// in place of the upstream's (which the plugin removes); `consentry serve` adds none,
/// so there the upstream's must simply be gone.
fn proxy_neutral(s: &Scenario) -> Scenario {
    let mut s = s.clone();
    if s.file.expect.headers.remove("server").is_some() {
        s.file.expect.absent_headers.push("server".into());
    }
    s
}

#[test]
fn every_scenario_behaves_the_same_behind_consentry_serve_and_in_the_harness() {
    let scenarios = Scenario::load_dir(&scenario_dir()).unwrap();
    assert!(!scenarios.is_empty());
    let plugin = Plugin::release_build().unwrap_or_else(|e| panic!("{e:#}"));
    let root = workspace_root();
    let mut by_config: BTreeMap<String, Vec<&Scenario>> = BTreeMap::new();
    for s in &scenarios {
        by_config.entry(s.file.config.clone()).or_default().push(s);
    }
    let consent = example_service();
    let mut failures = Vec::new();
    for (config, group) in by_config {
        let upstream = ScriptedUpstream::start().unwrap();
        let json = group[0].config_json(&root).unwrap();
        let (server, lines) = serve(
            &json,
            &format!("http://127.0.0.1:{}", upstream.port()),
            &consent.base_url(),
        );
        for s in group {
            let exchange = s.exchange(SystemTime::now()).unwrap();
            let request = exchange.client_request().unwrap();
            upstream.clear_received();
            upstream.set_default(reply_of(&exchange.upstream_response().unwrap()));
            let headers = request.text_headers();
            let header_refs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let body = request.chunks.concat();
            let got = send(
                &request.method,
                &format!("{}{}", server.base_url(), request.path),
                &header_refs,
                (!body.is_empty()).then_some(body.as_slice()),
            )
            .unwrap_or_else(|e| panic!("{}: {e:#}", s.name));
            let received = upstream.received();
            // `send` returned a whole answer; a broken one is an error above.
            let in_component = Observed::from_network(
                got.status,
                &got.headers,
                &got.body,
                received.first().map(|r| ReceivedRequest {
                    path: &r.path,
                    headers: &r.headers,
                    body: &r.body,
                }),
                false,
            );
            for f in proxy_neutral(s).check(&in_component) {
                failures.push(format!("{} (component): {f}", s.name));
            }
            let in_harness = Observed::from(&s.run_in_harness(plugin.clone(), &root).unwrap());
            for d in differences("component", &in_component, "harness", &in_harness) {
                failures.push(format!("{}: {d}", s.name));
            }
        }
        drop(server);
        let log = lines.lock().unwrap().join("\n");
        // Every exchange left a record, and the records form valid chains.
        let summary = audit_log::verify_text(&log, &[])
            .unwrap_or_else(|f| panic!("{config}: the audit chain is broken: {f}\n{log}"));
        assert!(summary.records > 0, "{config}: no audit records:\n{log}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn each_personas_view_behind_consentry_serve_is_its_golden_file_byte_for_byte() {
    let dir = workspace_root().join("examples").join("views");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no golden views in {}", dir.display());
    // The example service is the upstream and the consent service (keys, status lists).
    let service = example_service();
    let (server, _) = serve(&example_policy(), &service.base_url(), &service.base_url());
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let (persona, patient) = name
            .rsplit_once("-p-")
            .map(|(persona, n)| (persona.to_owned(), format!("p-{n}")))
            .unwrap();
        let golden = std::fs::read(path).unwrap();
        let expected_status = serde_json::from_slice::<Value>(&golden)
            .ok()
            .and_then(|v| v["status"].as_u64())
            .map_or(200, |s| u16::try_from(s).unwrap());
        let request_id = format!("view-{persona}-{patient}");
        let r = get(
            &server,
            &format!("/patients/{patient}"),
            &[
                ("authorization", &token(&persona)),
                ("x-request-id", &request_id),
            ],
        );
        let mut actual = r.body.clone();
        actual.push(b'\n');
        if r.status != expected_status || actual != golden {
            failures.push(format!(
                "examples/views/{name}.json: the component answered {} with\n{}\nthe golden file has\n{}",
                r.status,
                String::from_utf8_lossy(&actual),
                String::from_utf8_lossy(&golden)
            ));
        }
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str()),
            "{name}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_example_services_own_answers_are_minimised_redacted_or_withheld() {
    let service = example_service();
    let (server, _) = serve(&example_policy(), &service.base_url(), &service.base_url());
    let insurer = token("insurer");

    // Claims search: the example service echoes what it received, so the client sees
    // what reached the upstream: only the purpose's query parameters and fields.
    let body = br#"{"claim_id":"CLM-1","national_id":"999 401 2284","notes":"free text"}"#;
    let r = send(
        "POST",
        &format!("{}/echo?from=2026-01-01&national_id=999", server.base_url()),
        &[
            ("authorization", &insurer),
            ("content-type", "application/json"),
            ("x-consent-purpose", "claims"),
        ],
        Some(body),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    assert!(
        !text.contains("999 401 2284") && !text.contains("national_id=999"),
        "{text}"
    );
    assert!(
        !text.contains("free text") && !text.contains("Bearer"),
        "{text}"
    );

    // Answers that cannot be redacted safely are withheld whole.
    for (path, code) in [
        ("/patients/p-1?gzip=1", "unsafe_response"),
        ("/patients/p-1?ctype=text/html", "unsafe_response"),
    ] {
        let r = get(&server, path, &[("authorization", &insurer)]);
        assert_eq!(
            (r.status, problem_code(&r)),
            (502, code.to_owned()),
            "{path}"
        );
        assert!(!r.text().contains("Whitcombe"), "{path}");
    }
}

#[test]
fn an_upstream_that_cannot_be_reached_is_a_masked_502() {
    let service = example_service();
    // A port nobody listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (server, _) = serve(
        &example_policy(),
        &format!("http://127.0.0.1:{port}"),
        &service.base_url(),
    );
    let r = get(
        &server,
        "/patients/p-1",
        &[("authorization", &token("patient"))],
    );
    assert_eq!(
        (r.status, problem_code(&r)),
        (502, "upstream_error".to_owned())
    );
}

#[test]
fn a_revoked_consent_is_refused_from_the_status_list_fetched_through_wasi_http() {
    let service = example_service();
    // The insurer's consent is entry 0 of status list 1; 1 is revoked.
    let set = send(
        "PUT",
        &format!("{}/admin/statuslists/1/0", service.base_url()),
        &[],
        Some(b"1"),
    )
    .unwrap();
    assert!(set.status < 300, "{}", set.text());
    let (server, lines) = serve(&example_policy(), &service.base_url(), &service.base_url());
    let r = get(
        &server,
        "/patients/p-1",
        &[("authorization", &token("insurer"))],
    );
    assert_eq!(
        (r.status, problem_code(&r)),
        (403, "consent_revoked".to_owned())
    );
    // Another consent on the same list is still valid.
    let r = get(
        &server,
        "/patients/p-1",
        &[("authorization", &token("patient"))],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    drop(server);
    let log = lines.lock().unwrap().join("\n");
    assert!(log.contains("\"code\":\"consent_revoked\""), "{log}");
}

#[test]
fn without_a_usable_configuration_every_request_is_refused_and_the_log_says_where() {
    let service = example_service();
    let mut config: Value = serde_json::from_str(&example_policy()).unwrap();
    config["routes"][0]["path"] = Value::String("patients/{id}".into());
    let (server, lines) = serve(
        &config.to_string(),
        &service.base_url(),
        &service.base_url(),
    );
    let r = get(
        &server,
        "/patients/p-1",
        &[("authorization", &token("patient"))],
    );
    assert_eq!(
        (r.status, problem_code(&r)),
        (503, "dependency_unavailable".to_owned())
    );
    drop(server);
    let log = lines.lock().unwrap().join("\n");
    assert!(
        log.contains("consentry: configuration refused: $.routes[0].path"),
        "{log}"
    );
}

/// Runs the Python example (`plugin/component/examples/python/run.sh`, which makes
/// its own virtual environment with the pinned wasmtime-py on first use); its
/// stdout. Bounded in time; the child is killed when it overruns.
fn python_host(args: &[&str]) -> String {
    use std::process::{Command, Stdio};
    let root = workspace_root();
    let component = serve::default_component_path();
    assert!(
        component.exists(),
        "{} is missing; build it with `{}`",
        component.display(),
        serve::COMPONENT_BUILD_COMMAND
    );
    let mut child = Command::new(root.join("plugin/component/examples/python/run.sh"))
        .arg("--component")
        .arg(&component)
        .arg("--config")
        .arg(root.join("policies/example.json"))
        .args(args)
        .envs(dev_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first run installs wasmtime-py from PyPI.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the Python host did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the Python host failed:\n{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_engine_called_from_python_decides_and_redacts_as_the_proxy_does() {
    let service = example_service();
    let url = service.base_url();
    let common = ["--upstream", url.as_str(), "--consent", url.as_str()];

    // Allowed: the engine fetches the status list itself (wasi:http in wasmtime-py),
    // Python forwards the request, and the redacted answer is the golden view.
    let insurer = format!("authorization: {}", token("insurer"));
    let id = "x-request-id: view-insurer-p-1";
    let mut args = common.to_vec();
    args.extend(["--header", &insurer, "--header", id, "/patients/p-1"]);
    let client: Value = serde_json::from_str(&python_host(&args)).unwrap();
    assert_eq!(client["status"], 200, "{client}");
    let golden =
        std::fs::read_to_string(workspace_root().join("examples/views/insurer-p-1.json")).unwrap();
    assert_eq!(format!("{}\n", client["body"].as_str().unwrap()), golden);

    // Refused: nothing goes upstream, and the answer is the masked problem.
    let mut args = common.to_vec();
    args.push("/patients/p-1");
    let client: Value = serde_json::from_str(&python_host(&args)).unwrap();
    assert_eq!(client["status"], 401, "{client}");
    let problem: Value = serde_json::from_str(client["body"].as_str().unwrap()).unwrap();
    assert_eq!(problem["code"], "token_missing");

    // Explained: the route, the rule and what each field becomes.
    let stranger = format!("authorization: {}", token("stranger"));
    let mut args = common.to_vec();
    args.extend(["--explain", "--header", &stranger, "/patients/p-1"]);
    let explained: Value = serde_json::from_str(&python_host(&args)).unwrap();
    assert_eq!(explained["decision"], "deny", "{explained}");
    assert_eq!(explained["code"], "access_denied", "{explained}");
    assert_eq!(explained["route"], "patient-record", "{explained}");
}

/// Stops the child when dropped, so a failed assertion never leaves it running.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_serve_command_prints_where_it_listens_and_serves_the_component() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let service = example_service();
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_consentry"))
            .arg("serve")
            .arg(workspace_root().join("policies/example.json"))
            .args(["--upstream", &service.base_url(), "--listen", "127.0.0.1:0"])
            .arg("--component")
            .arg(serve::default_component_path())
            .args(dev_env().iter().map(|(k, v)| format!("--env={k}={v}")))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    // The first line says where; a reader thread bounds the wait.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("consentry serve printed nothing");
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let r = send(
        "GET",
        &format!("{base}/patients/p-1"),
        &[("authorization", &token("insurer"))],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(body["clinical"].is_null() && body["identity"]["national_id"].is_null());
    let r = send("GET", &format!("{base}/patients/p-1"), &[], None).unwrap();
    assert_eq!(
        (r.status, problem_code(&r)),
        (401, "token_missing".to_owned())
    );
}
