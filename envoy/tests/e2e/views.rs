//! The golden views of `examples/views/` through a real Envoy: what each persona receives
//! for the example data through the example policy must be the golden file byte for
//! byte (the body, then one newline), as the harness suite requires of the `.wasm` run
//! natively. A file is named `<persona>-<patient>.json`; its request is
//! `GET /patients/<patient>` with the persona's token and
//! `x-request-id: view-<persona>-<patient>` (so a refusal's body is stable too). At the
//! edge Envoy replaces a client's `x-request-id` with its own: a refusal must quote
//! Envoy's, and is compared with the golden file with the client's put back.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use consentry_envoy::project_root;

use crate::support::*;

#[test]
fn each_personas_view_through_envoy_is_its_golden_file_byte_for_byte() {
    let _watchdog = watchdog("views", Duration::from_secs(60));
    let dir = project_root().join("examples").join("views");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no golden views in {}", dir.display());

    let service = example_service(60);
    let envoy = start(envoy_for(&service, &example_policy()));
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let (persona, patient) = name
            .rsplit_once("-p-")
            .map(|(persona, n)| (persona.to_owned(), format!("p-{n}")))
            .unwrap_or_else(|| panic!("{name}: not <persona>-<patient>.json"));
        let golden = std::fs::read(path).unwrap();
        let expected_status = serde_json::from_slice::<Value>(&golden)
            .ok()
            .and_then(|v| v["status"].as_u64())
            .map_or(200, |s| u16::try_from(s).unwrap());
        let token = consentry_host::mint::persona_token(&persona, SystemTime::now()).unwrap();
        let request_id = format!("view-{persona}-{patient}");
        let r = get(
            &envoy,
            &format!("/patients/{patient}"),
            &[
                ("authorization", &bearer(&token)),
                ("x-request-id", &request_id),
            ],
        );
        let mut actual = r.body.clone();
        let quoted = r
            .json()
            .ok()
            .and_then(|b| b["request_id"].as_str().map(str::to_owned));
        if let Some(id) = quoted {
            assert_ne!(id, request_id, "{name}: the client chose the request id");
            actual = r
                .text()
                .replacen(
                    &format!(r#""request_id":"{id}""#),
                    &format!(r#""request_id":"{request_id}""#),
                    1,
                )
                .into_bytes();
        }
        actual.push(b'\n');
        if r.status != expected_status || actual != golden {
            failures.push(format!(
                "examples/views/{name}.json: Envoy answered {} with\n{}\nthe golden file has\n{}",
                r.status,
                String::from_utf8_lossy(&actual),
                String::from_utf8_lossy(&golden)
            ));
        }
        if expected_status == 200 {
            assert_eq!(r.content_length(), Some(r.body.len()), "{name}");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
