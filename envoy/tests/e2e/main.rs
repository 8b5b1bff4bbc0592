//! End to end against a real Envoy 1.40 with the real release `.wasm`, in front of the
//! example service (which also plays the consent service: keys and status lists that
//! change while Envoy runs):
//!
//! - `rotation`: an issuer rotates its signing key; the plugin refetches on the unknown
//!   `kid` (rate-limited) and accepts the new key without a restart.
//! - `revocation`: a consent revoked, suspended and reinstated through the IETF Token
//!   Status List, as the plugin refetches the list after its `ttl`.
//! - `mtls`: certificate-bound tokens (RFC 8705) and SPIFFE-ID rules over a TLS listener
//!   that requires client certificates (made in the test).
//! - `limits`: rate limits and the lockout, shared by two workers.
//! - `audit`: the hash-chained records in Envoy's log, verified (and tampered with) by the
//!   `consentry` command, and its HTML report.
//! - `stats`: the plugin's counters at the admin `/stats`.
//! - `leaks`: secrets planted everywhere a request or an upstream can put them never
//!   reach a log line, a client or a metric name.
//! - `protocols`: the reported bypasses (request trailers while a request is held for a
//!   fetch, trailers on the minimising route) over HTTP/1.1 with chunked trailers, h2c
//!   and h2 over TLS, and the key scenarios over HTTP/2.
//! - `views`: each persona's view of the example data, through Envoy, is its golden file
//!   in `examples/views/` byte for byte.
//! - `open_banking`: the second scenario (`policies/open-banking.json`, the bank's
//!   accounts): its golden views, whole and chunked, and decisions on
//!   `authorization_details` entries with their audit records.
//! - `late_commit`: the response modes on hosts with and without
//!   `allow_on_headers_stop_iteration` (what the deployment manifests in `envoy/deploy/`
//!   amount to): redacted views, resets for bodies found unsafe late, stalls.
//! - `trust`: where the client's address comes from, at the edge and behind a load
//!   balancer: an `x-forwarded-for` header passes no network rule and escapes no lockout.
//! - `proxy_replies`: Envoy's own replies (buffer overflows, timeouts, an upstream that
//!   breaks off or cannot be reached) reach the client masked, without upstream bytes.
//! - `hygiene`: which headers reach the client and the upstream; method overrides and
//!   protocol upgrades refused.
//! - `spellings`: any-depth and case-insensitive field paths classify a member in every
//!   spelling and at every depth; a name with U+0000 is removed or withholds the answer.
//!
//! Needs `./envoy/install.sh` (or ENVOY_BIN) and the plugin's release build
//! (`cargo build -p consentry-filter --target wasm32-wasip1 --release`); without them
//! every test fails with the command to run. None skips. Each test bounds its time with a
//! watchdog, uses 127.0.0.1 only, and stops what it starts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed step must fail the test"
)]

mod audit;
mod hygiene;
mod late_commit;
mod leaks;
mod limits;
mod mtls;
mod open_banking;
mod protocols;
mod proxy_replies;
mod revocation;
mod rotation;
mod spellings;
mod stats;
mod support;
mod tls;
mod trust;
mod views;
