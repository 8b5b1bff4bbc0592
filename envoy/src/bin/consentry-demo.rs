//! The demo: the example service, a real Envoy with the plugin in front of it, and
//! curl lines to paste. Started by `./envoy/demo.sh`; stops on Ctrl-C.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use consentry_envoy::{Envoy, free_port, project_root};

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

fn main() -> Result<()> {
    let policy = project_root().join("policies").join("demo.json");
    let upstream = consentry_example_service::spawn(&format!("127.0.0.1:{}", port_near(8081)))
        .context("starting the example service")?;
    let envoy = Envoy::builder()
        .upstream_port(upstream.addr().port())
        .plugin_config_file(&policy)
        .var("LISTEN_PORT", port_near(10000))
        .var("ADMIN_PORT", port_near(9901))
        .start()
        .context("starting Envoy")?;
    let base = envoy.base_url();
    println!();
    println!("Consentry demo");
    println!("  Envoy + plugin   {base}  (policy: policies/demo.json)");
    println!("  example service  {}", upstream.base_url());
    println!(
        "  Envoy admin      http://127.0.0.1:{}/stats?filter=consentry",
        envoy.admin_port()
    );
    println!();
    println!("Try:");
    println!("  # no consent token: a masked 401 problem");
    println!("  curl -s {base}/patients/p-1");
    println!("  # with a token: the record without national_id, contact and policy_number");
    println!("  curl -s -H 'authorization: Bearer demo' {base}/patients/p-1");
    println!("  # the same record straight from the service, for comparison");
    println!("  curl -s {}/patients/p-1", upstream.base_url());
    println!("  # a route the policy does not name: 403");
    println!("  curl -s -H 'authorization: Bearer demo' {base}/patients/p-1/billing");
    println!("  # an upstream failure: its leaky body is replaced by a masked 502");
    println!("  curl -si -H 'authorization: Bearer demo' '{base}/patients/p-1?gzip=1'");
    println!();
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
    println!("\nstopping");
    drop(envoy);
    drop(upstream);
    Ok(())
}
