//! The fidelity suite on the harness side: every scenario of
//! `consentry_host::fidelity`, run through the probe filter in the wasmtime host. The
//! same scenarios run against a real Envoy in `envoy/tests/fidelity.rs`, with the same
//! expectations, so a harness that is kinder than Envoy fails here.

use consentry_host::Plugin;
use consentry_host::fidelity::{self, check, require_probe, run_on_harness};

fn run(name: &str) {
    let scenario = fidelity::scenario(name);
    let path = require_probe().unwrap_or_else(|e| panic!("{e}"));
    let plugin = Plugin::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
    let observations = run_on_harness(&scenario, plugin).unwrap_or_else(|e| panic!("{e}"));
    let failures: Vec<String> = observations
        .iter()
        .enumerate()
        .filter_map(|(i, obs)| check("harness", &scenario, i, obs).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

macro_rules! scenarios {
    ($($test:ident => $name:literal,)*) => {
        $(
            #[test]
            fn $test() {
                run($name);
            }
        )*

        #[test]
        fn every_scenario_has_a_test() {
            let tested = [$($name),*];
            for s in fidelity::scenarios() {
                assert!(tested.contains(&s.name), "scenario {} has no test here", s.name);
            }
        }
    };
}

scenarios! {
    basic => "basic",
    request_map_gone_after_continue => "request-map-gone-after-continue",
    request_map_kept_while_paused => "request-map-kept-while-paused",
    sdk_panic_is_fail_closed => "sdk-panic-is-fail-closed",
    header_lookups => "header-lookups",
    repeated_request_headers => "repeated-request-headers",
    properties => "properties",
    local_reply_from_request_headers => "local-reply-from-request-headers",
    local_reply_without_content_type => "local-reply-without-content-type",
    local_reply_without_body => "local-reply-without-body",
    local_reply_without_body_with_length => "local-reply-without-body-with-length",
    local_reply_server_and_date => "local-reply-server-and-date",
    local_reply_repeated_headers => "local-reply-repeated-headers",
    local_reply_from_response_body => "local-reply-from-response-body",
    body_accumulates_while_held => "body-accumulates-while-held",
    set_body_keeps_content_length => "set-body-keeps-content-length",
    set_body_with_content_length_removed => "set-body-with-content-length-removed",
    set_body_and_content_length_on_a_chunked_response =>
        "set-body-and-content-length-on-a-chunked-response",
    held_response_over_buffer_limit => "held-response-over-buffer-limit",
    held_request_over_buffer_limit => "held-request-over-buffer-limit",
    callout_to_a_cluster_nothing_listens_on => "callout-to-a-cluster-nothing-listens-on",
    callout_answered => "callout-answered",
    callout_refused_at_dispatch => "callout-refused-at-dispatch",
    shared_data_cas => "shared-data-cas",
    wasi_clocks_and_stdout => "wasi-clocks-and-stdout",
    memory_capped_at_1_gib => "memory-capped-at-1-gib",
    instant_now_works => "instant-now-works",
}
