//! The parity scenarios (host-tests/scenarios), on the harness side. The Envoy
//! side runs the same files against a real Envoy and compares both hosts.

use consentry_host::plugin::workspace_root;
use consentry_host::scenario::{HostMode, Observed, Scenario, ensure_empty, scenario_dir};

use crate::support::plugin;

#[test]
fn every_scenario_meets_its_expectation_in_the_harness() {
    let scenarios = Scenario::load_dir(&scenario_dir()).unwrap();
    assert!(scenarios.len() >= 10, "the parity suite lost its scenarios");
    let mut failures = Vec::new();
    for mode in HostMode::ALL {
        for s in &scenarios {
            let outcome = s
                .run_in_harness_as(plugin(), &workspace_root(), mode)
                .unwrap();
            assert_eq!(outcome.trap, None, "{}: the plugin crashed", s.name);
            let what = format!("{} ({})", s.name, mode.name());
            if let Err(e) = ensure_empty(&what, s.check_as(mode, &Observed::from(&outcome))) {
                failures.push(format!("{e}\n  trace: {:?}", outcome.trace));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
