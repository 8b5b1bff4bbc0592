//! The audit trail as an operator meets it: Envoy's own log, checked by the `consentry`
//! command (`audit verify`, `report`). An untouched log verifies; a record altered or
//! removed in it is found, by its line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use consentry_envoy::process::run_bounded;
use consentry_envoy::project_root;

use crate::support::*;

/// The `consentry` binary of this workspace, built once for the suite with the same
/// cargo that runs the tests (a no-op when `cargo test --workspace` built it already).
fn consentry_binary() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = Command::new(cargo);
            build
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "consentry-host",
                    "--bin",
                    "consentry",
                ])
                .current_dir(project_root())
                .stdin(Stdio::null());
            let status = run_bounded(build, Duration::from_secs(600)).map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!(
                    "`cargo build -p consentry-host --bin consentry` failed ({status})"
                ));
            }
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| project_root().join("target"), |d| project_root().join(d));
            let bin = target.join("debug").join("consentry");
            if bin.is_file() {
                Ok(bin)
            } else {
                Err(format!("no binary at {}", bin.display()))
            }
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `consentry ARGS`, bounded.
fn consentry(args: &[&Path]) -> Output {
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut command = Command::new(consentry_binary());
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.reopen().unwrap())
        .stderr(err.reopen().unwrap());
    let status = run_bounded(command, Duration::from_secs(60)).unwrap();
    Output {
        status,
        stdout: std::fs::read(out.path()).unwrap(),
        stderr: std::fs::read(err.path()).unwrap(),
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn verify(log: &Path) -> Output {
    consentry(&[Path::new("audit"), Path::new("verify"), log])
}

/// The 1-based numbers of the lines that hold decision records.
fn record_lines(log: &str) -> Vec<usize> {
    log.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(r#"consentry-audit {"v":2,"kind":"decision""#))
        .map(|(i, _)| i + 1)
        .collect()
}

fn without_line(log: &str, n: usize) -> String {
    log.lines()
        .enumerate()
        .filter(|(i, _)| i + 1 != n)
        .map(|(_, l)| format!("{l}\n"))
        .collect()
}

#[test]
fn envoys_log_verifies_and_tampering_is_found_by_line() {
    let _watchdog = watchdog("audit", Duration::from_secs(300));
    let service = example_service(60);
    let envoy = start(envoy_for(&service, &example_policy()));

    // A mix of decisions: allowed, refused for every kind of reason.
    let insurer = sign(&claims("insurer"));
    let mix: Vec<(&str, Option<String>, u16)> = vec![
        ("/patients/p-1", Some(insurer.clone()), 200),
        ("/patients/p-1", None, 401),
        ("/patients/p-2", Some(insurer.clone()), 403),
        ("/patients/p-1", Some(sign(&claims("stranger"))), 403),
        ("/patients/p-2", Some(sign(&claims("research-lab"))), 200),
        ("/patients/p-1", Some("garbage".to_owned()), 401),
        ("/patients/p-1/billing", Some(insurer.clone()), 200),
        ("/patients/p-1", Some(sign(&claims("patient"))), 200),
    ];
    for (path, token, status) in &mix {
        let r = match token {
            Some(t) => get_with(&envoy, path, t),
            None => get(&envoy, path, &[]),
        };
        assert_eq!(r.status, *status, "{path}: {}", r.text());
    }
    let records = wait_for_decisions(&envoy, mix.len());
    assert_eq!(records.len(), mix.len());

    let dir = tempfile::tempdir().unwrap();
    let log_text = envoy.log();
    let log = dir.path().join("envoy.log");
    std::fs::write(&log, &log_text).unwrap();

    // Untouched: exit 0, one chain with every record.
    let o = verify(&log);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("ok: 1 chain, {} records", mix.len())),
        "{}",
        text(&o)
    );
    let lib = consentry_host::audit_log::verify_file(&log, &[]).unwrap();
    assert!(lib.ok, "{}", lib.text);

    let lines = record_lines(&log_text);
    assert_eq!(lines.len(), mix.len());

    // One record altered: a refusal turned into an allow. Exit 1, naming its line.
    let altered_at = lines[1];
    let altered: String = log_text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i + 1 == altered_at {
                assert!(l.contains(r#""decision":"deny""#), "{l}");
                format!(
                    "{}\n",
                    l.replace(r#""decision":"deny""#, r#""decision":"allow""#)
                )
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let altered_log = dir.path().join("altered.log");
    std::fs::write(&altered_log, altered).unwrap();
    let o = verify(&altered_log);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("line {altered_at}: ")),
        "the altered record is on line {altered_at}: {}",
        text(&o)
    );
    let lib = consentry_host::audit_log::verify_file(&altered_log, &[]).unwrap();
    assert!(
        !lib.ok && lib.text.contains(&format!("line {altered_at}: ")),
        "{}",
        lib.text
    );

    // One record removed from the middle: the gap shows at the next record, whose line
    // is one less once the line is gone.
    let removed_at = lines[3];
    let next = lines[4] - 1;
    let removed_log = dir.path().join("removed.log");
    std::fs::write(&removed_log, without_line(&log_text, removed_at)).unwrap();
    let o = verify(&removed_log);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("line {next}: ")),
        "the record after the removed one is on line {next}: {}",
        text(&o)
    );
    let lib = consentry_host::audit_log::verify_file(&removed_log, &[]).unwrap();
    assert!(
        !lib.ok && lib.text.contains(&format!("line {next}: ")),
        "{}",
        lib.text
    );

    // The dashboard from the log and the /stats dump.
    let stats = dir.path().join("stats.txt");
    std::fs::write(&stats, envoy.admin_get("/stats").unwrap()).unwrap();
    let html = dir.path().join("report.html");
    let o = consentry(&[
        Path::new("report"),
        &log,
        Path::new("--stats"),
        &stats,
        Path::new("-o"),
        &html,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("chains verified ({} records)", mix.len())),
        "{}",
        text(&o)
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.starts_with("<!DOCTYPE html>"),
        "{}",
        &page[..page.len().min(200)]
    );
    for needle in [
        "Consentry audit report",
        "access_denied",
        "token_missing",
        // The counters table, from the /stats dump.
        "<td class=\"mono\">consentry.decision.allow</td>",
    ] {
        assert!(page.contains(needle), "the report lacks {needle}");
    }
}

/// The demo's way: Envoy logs to a file the caller names (`log_file`, as the demo's
/// `target/demo/envoy.log`), and the two commands the demo prints read that very file
/// while Envoy runs, and still after it has stopped.
#[test]
fn the_demos_log_file_is_what_its_audit_commands_read() {
    let _watchdog = watchdog("audit-log-file", Duration::from_secs(300));
    let service = example_service(60);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("demo").join("envoy.log");
    let envoy = start(envoy_for(&service, &example_policy()).log_file(&log));
    assert_eq!(envoy.log_path(), log);
    let insurer = sign(&claims("insurer"));
    assert_eq!(get_with(&envoy, "/patients/p-1", &insurer).status, 200);
    assert_eq!(get(&envoy, "/patients/p-1", &[]).status, 401);
    wait_for_decisions(&envoy, 2);

    let o = verify(&log);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("ok: 1 chain, 2 records"), "{}", text(&o));
    let stats = dir.path().join("stats.txt");
    std::fs::write(&stats, envoy.admin_get("/stats").unwrap()).unwrap();
    let html = dir.path().join("report.html");
    let o = consentry(&[
        Path::new("report"),
        &log,
        Path::new("--stats"),
        &stats,
        Path::new("-o"),
        &html,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("token_missing"),
        "the report lacks the refusal"
    );

    drop(envoy);
    let o = verify(&log);
    assert!(o.status.success(), "the log outlives Envoy: {}", text(&o));
}
