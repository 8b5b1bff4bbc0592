//! The VM's linear memory settles: once the token cache is full, more exchanges (each
//! with a token never seen before, or one token again and again) do not grow it. A
//! leak per request would show here long before it shows in production (the benchmark,
//! `cargo bench -p consentry-host --bench per_request -- --memory`, runs 200k).

use consentry_host::{Proxy, Request};
use serde_json::json;

use crate::support::{T0, example_policy, start_at, token_with, upstream_record};

const CACHE_ENTRIES: usize = 32;

fn read_record(proxy: &mut Proxy, token: &str) {
    let out = proxy.send(
        Request::get("/patients/p-1").bearer(token),
        upstream_record("p-1"),
    );
    assert_eq!(out.client.status, 200, "{}", out.client.body_text());
}

#[test]
fn linear_memory_stops_growing_once_the_token_cache_is_full() {
    let config = example_policy(|p| {
        p["limits"]["token_cache_entries"] = json!(CACHE_ENTRIES);
    });
    let (mut proxy, _service) = start_at(config, T0);
    let tokens: Vec<String> = (0..10 * CACHE_ENTRIES)
        .map(|i| {
            token_with("insurer", T0, |claims| {
                claims.insert("nonce".into(), json!(i));
            })
        })
        .collect();
    let (filling, after) = tokens.split_at(3 * CACHE_ENTRIES);

    for t in filling {
        read_record(&mut proxy, t);
    }
    let settled = proxy.worker_memory();
    for t in after {
        read_record(&mut proxy, t);
    }
    assert_eq!(
        proxy.worker_memory(),
        settled,
        "{} more new tokens (the cache holds {CACHE_ENTRIES}) grew the VM's memory",
        after.len()
    );
    for _ in 0..300 {
        read_record(&mut proxy, &tokens[0]);
    }
    assert_eq!(
        proxy.worker_memory(),
        settled,
        "300 requests with one token grew the VM's memory"
    );
}
