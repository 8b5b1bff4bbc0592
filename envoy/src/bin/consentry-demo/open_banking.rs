//! `consentry-demo --open-banking` (`./envoy/demo.sh --open-banking`): the second
//! scenario. The same example service (its bank routes), Envoy with
//! `policies/open-banking.json`, the open-banking personas' tokens (consent as RFC 9396
//! `authorization_details`) and curl lines to paste.

use anyhow::Result;

use super::{print_audit_trail, start, wait_then_stop};

/// The personas of `examples/personas.json` whose tokens are for the bank.
const PERSONAS: [&str; 3] = ["tpp", "aggregator", "savings-app"];

pub fn run() -> Result<()> {
    let (upstream, envoy) = start("open-banking.json")?;
    let base = envoy.base_url();
    let service = upstream.base_url();
    let now = std::time::SystemTime::now();
    println!();
    println!("Consentry demo: open banking");
    println!("  Envoy + plugin    {base}   (policy: policies/open-banking.json)");
    println!("  example service   {service}   (the bank's accounts; also the consent service)");
    println!(
        "  Envoy admin       http://127.0.0.1:{}/stats?filter=consentry",
        envoy.admin_port()
    );
    println!();
    println!("Development consent tokens (one hour) of Alice Pemberton (psu-1), consent as");
    println!("RFC 9396 authorization_details (examples/personas.json):");
    for persona in PERSONAS {
        let token = consentry_example_service::personas::persona_token(persona, now)?;
        let var = persona.to_ascii_uppercase().replace('-', "_");
        println!("  export {var}='{token}'");
    }
    let curl = |var: &str, path: &str| {
        println!("  curl -s -H \"authorization: Bearer ${var}\" {base}{path}");
    };
    println!();
    println!("Try:");
    println!("  # the budgeting app (purpose account_information) on the account it may read:");
    println!("  # its details (of the holder only her name) and every transaction whole");
    curl("TPP", "/accounts/acc-1001");
    curl("TPP", "/accounts/acc-1001/transactions");
    println!("  # the aggregator (purpose affordability): IBAN masked to its last 4, payees");
    println!("  # pseudonymised, dates to the month, balances in bands of 100, no references");
    curl("AGGREGATOR", "/accounts/acc-1001");
    curl("AGGREGATOR", "/accounts/acc-1001/transactions");
    println!("  # its second authorization_details entry grants the savings account's balances;");
    println!("  # the first, for acc-1001, does not: refused");
    curl("AGGREGATOR", "/accounts/acc-1002/balances");
    curl("AGGREGATOR", "/accounts/acc-1001/balances");
    println!("  # refused: an account the savings app's consent does not list");
    curl("SAVINGS_APP", "/accounts/acc-1001/balances");
    println!("  # revoke the budgeting app's consent (status list 1, index 5), then ask again");
    println!("  # (the plugin refetches the list within its ttl of 60 s)");
    println!("  curl -s -X PUT --data 1 {service}/admin/statuslists/1/5");
    println!("  # the same transactions straight from the bank, for comparison");
    println!("  curl -s {service}/accounts/acc-1001/transactions");
    println!();
    print_audit_trail(&envoy);
    wait_then_stop(envoy, upstream)
}
