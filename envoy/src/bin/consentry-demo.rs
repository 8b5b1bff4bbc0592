//! The demo: the example service, a real Envoy with the plugin in front of it, and
//! curl lines to paste. Started by `./envoy/demo.sh`; stops on Ctrl-C.
//! `--open-banking` runs the second scenario instead (`consentry-demo/open_banking.rs`).

#[path = "consentry-demo/open_banking.rs"]
mod open_banking;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use consentry_envoy::{Envoy, RunningEnvoy, free_port, project_root};
use consentry_example_service::RunningService;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// A preferred port when it is free, another one otherwise.
fn port_near(preferred: u16) -> u16 {
    match std::net::TcpListener::bind(("127.0.0.1", preferred)) {
        Ok(_) => preferred,
        Err(_) => free_port(),
    }
}

/// Where the demo's Envoy logs, relative to the repository: a stable place, so the
/// demo can name the commands that read the audit trail in it.
const LOG: &str = "target/demo/envoy.log";

/// The dashboard `consentry report` draws from the log, relative to the repository.
const REPORT: &str = "target/demo/report.html";

fn main() -> Result<()> {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("--open-banking") => return open_banking::run(),
        Some(other) => {
            anyhow::bail!("unknown argument {other}; usage: consentry-demo [--open-banking]")
        }
    }
    let (upstream, envoy) = start("example.json")?;
    let base = envoy.base_url();
    let now = std::time::SystemTime::now();
    let token = |persona: &str| consentry_example_service::personas::persona_token(persona, now);
    let service = upstream.base_url();
    println!();
    println!("Consentry demo");
    println!("  Envoy + plugin    {base}   (policy: policies/example.json)");
    println!("  example service   {service}   (also the consent service: keys, status lists)");
    println!(
        "  Envoy admin       http://127.0.0.1:{}/stats?filter=consentry",
        envoy.admin_port()
    );
    println!();
    println!("Development consent tokens (one hour), one per persona of examples/personas.json:");
    for persona in ["insurer", "research-lab", "patient", "guardian", "stranger"] {
        let var = persona.to_ascii_uppercase().replace('-', "_");
        println!("  export {var}='{}'", token(persona)?);
    }
    println!();
    println!("Try:");
    println!("  # no consent token: a masked 401 problem");
    println!("  curl -s {base}/patients/p-1");
    println!(
        "  # the insurer (purpose claims): billing and identity, no national id, no clinical data"
    );
    println!("  curl -s -H \"authorization: Bearer $INSURER\" {base}/patients/p-1");
    println!("  # the research lab: clinical data, identity pseudonymised, birth year only");
    println!("  curl -s -H \"authorization: Bearer $RESEARCH_LAB\" {base}/patients/p-2");
    println!("  # the patient reads their own record; a guardian reads the minor's record");
    println!("  curl -s -H \"authorization: Bearer $PATIENT\" {base}/patients/p-1");
    println!("  curl -s -H \"authorization: Bearer $GUARDIAN\" {base}/patients/p-5");
    println!("  # refused: someone else's record, and a purpose the policy does not serve");
    println!("  curl -s -H \"authorization: Bearer $INSURER\" {base}/patients/p-2");
    println!("  curl -s -H \"authorization: Bearer $STRANGER\" {base}/patients/p-1");
    println!("  # revoke the insurer's consent (status list 1, index 0), then ask again (the");
    println!("  # plugin refetches the list within its ttl of 60 s)");
    println!("  curl -s -X PUT --data 1 {service}/admin/statuslists/1/0");
    println!("  # Envoy's own refusal (an escaped slash) is masked the same way");
    println!("  curl -s {base}/patients%2Fp-1");
    println!("  # the same record straight from the service, for comparison");
    println!("  curl -s {service}/patients/p-1");
    println!("  # the plugin's counters, at Envoy's admin endpoint");
    println!(
        "  curl -s 'http://127.0.0.1:{}/stats?filter=consentry'",
        envoy.admin_port()
    );
    println!();
    print_audit_trail(&envoy);
    wait_then_stop(envoy, upstream)
}

/// The example service (which also plays the consent service) and Envoy with the
/// plugin and `policies/<policy>`, logging to [`LOG`].
fn start(policy: &str) -> Result<(RunningService, RunningEnvoy)> {
    let root = project_root();
    let upstream = consentry_example_service::spawn(&format!("127.0.0.1:{}", port_near(8081)))
        .context("starting the example service")?;
    let envoy = Envoy::builder()
        .upstream_port(upstream.addr().port())
        .plugin_config_file(root.join("policies").join(policy))
        .var("LISTEN_PORT", port_near(10000))
        .var("ADMIN_PORT", port_near(9901))
        .log_file(root.join(LOG))
        .start()
        .context("starting Envoy")?;
    Ok((upstream, envoy))
}

/// Where the audit trail is, and the two commands that verify it and draw its
/// dashboard.
fn print_audit_trail(envoy: &RunningEnvoy) {
    println!("The audit trail: each decision above is a hash-chained record in Envoy's log,");
    println!("  {}", envoy.log_path().display());
    println!(
        "Verify the chain, then draw the dashboard of the decisions you caused (in {}):",
        project_root().display()
    );
    println!("  cargo run -q -p consentry-host --bin consentry -- audit verify {LOG}");
    println!(
        "  cargo run -q -p consentry-host --bin consentry -- report {LOG} --stats <(curl -s \
         http://127.0.0.1:{}/stats) -o {REPORT}",
        envoy.admin_port()
    );
    println!();
}

/// Runs until Ctrl-C, then stops Envoy and the service (the log stays).
fn wait_then_stop(envoy: RunningEnvoy, upstream: RunningService) -> Result<()> {
    println!("Press Ctrl-C to stop.");
    // SAFETY: installing a handler that only stores to an atomic, which is
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\nstopping; Envoy's log stays in {LOG}");
    drop(envoy);
    drop(upstream);
    Ok(())
}
