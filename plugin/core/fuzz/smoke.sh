#!/usr/bin/env bash
# Runs every fuzz target for a short, bounded time on stable Rust and fails on any crash,
# timeout or out-of-memory. Installs the pinned cargo-fuzz when it is missing.
#
#   plugin/core/fuzz/smoke.sh                # every target, FUZZ_SECONDS (15) each
#   FUZZ_SECONDS=180 plugin/core/fuzz/smoke.sh jws expr
#
# Stable Rust: libFuzzer's coverage instrumentation needs no nightly flag; only the
# sanitizers do, so targets are built with `--sanitizer none` (the core is
# `#![forbid(unsafe_code)]`; panics, overflows, hangs and memory blow-ups are what is
# hunted). Each run starts from the committed seeds (seeds/<target>/, read-only) and
# grows corpus/<target>/ (ignored by git); a crash lands in artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
SECONDS_EACH="${FUZZ_SECONDS:-15}"

if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

dict_for() {
    case "$1" in
        expr) echo fuzz/dicts/expr.dict ;;
        pem) echo fuzz/dicts/pem.dict ;;
        audit) echo fuzz/dicts/audit.dict ;;
        jws | status_list) echo fuzz/dicts/token.dict ;;
        *) echo fuzz/dicts/json.dict ;;
    esac
}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

# One build of every target (release, with debug assertions and overflow checks).
cargo fuzz build --sanitizer none

failed=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" fuzz/artifacts
    log="fuzz/artifacts/$t.log"
    printf '%-12s ' "$t"
    # -timeout: one input taking 10 s is a hang; -rss_limit_mb: 2 GiB is a blow-up.
    seeds=()
    [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
    if cargo fuzz run --sanitizer none "$t" "fuzz/corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
        -dict="$(dict_for "$t")" -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^#[0-9]+.*DONE' "$log" | tail -n 1 | sed -E 's/^#([0-9]+)\s+DONE\s+/\1 runs, /'
    else
        echo "FAILED (log: plugin/core/$log)"
        grep -E -A1 'panicked at' "$log" | head -n 4 | sed 's/^/    /'
        grep -E 'SUMMARY|Test unit written' "$log" | head -n 4 | sed 's/^/    /'
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz smoke: crashes in ${failed[*]}" >&2
    exit 1
fi
echo "fuzz smoke: ${#targets[@]} targets, ${SECONDS_EACH} s each, no crash"
