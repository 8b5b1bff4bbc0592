"""Consentry's policy engine from Python: an application that is not a proxy asks the
component to decide on a request, sends upstream only what the engine allows, and
gives its client only what the engine releases.

It loads the Consentry component (`consentry_component.wasm`) with wasmtime-py and calls
the `consentry:policy/engine` interface (see `plugin/component/wit/engine.wit`):

    engine = Engine.load(config, env)      # errors come back with their locations
    exchange = engine.decide(request)
    verdict = exchange.verdict()           # refuse(response) | allow(forward)
    response = exchange.respond(upstream)  # redacted, or a masked problem

Issuer keys and status lists are fetched by the component itself, through
`wasi:http` (wasmtime-py provides it), from the consent service given as `--consent`.

    run.sh --component consentry_component.wasm --config policies/example.json \\
        --upstream http://127.0.0.1:8081 --consent http://127.0.0.1:8081 \\
        --header "authorization: Bearer $TOKEN" /patients/p-1

prints what the client receives as one JSON object: {"status", "headers", "body"}
(`--explain` prints the engine's explanation of the decision instead). The secrets
the configuration names come from this process's CONSENTRY_* variables.
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

from wasmtime import Engine, Store, WasiConfig
from wasmtime.component import Component, Linker, Record, Variant

INTERFACE = "consentry:policy/engine@0.1.0"


def record(**fields):
    """A WIT record; field names keep their WIT spelling (`source-address`)."""
    r = Record()
    for name, value in fields.items():
        setattr(r, name.replace("_", "-"), value)
    return r


class Consentry:
    """The component's `engine` interface, bound to one store."""

    def __init__(self, path):
        engine = Engine()
        self.store = Store(engine)
        wasi = WasiConfig()
        wasi.inherit_stderr()  # the audit records
        self.store.set_wasi(wasi)
        self.store.set_wasi_http()
        linker = Linker(engine)
        linker.add_wasip2()
        linker.add_wasi_http()
        self.instance = linker.instantiate(self.store, Component.from_file(engine, path))
        self.iface = self.instance.get_export_index(self.store, INTERFACE)
        if self.iface is None:
            raise SystemExit(f"{path} does not export {INTERFACE}")

    def call(self, name, *args):
        index = self.instance.get_export_index(self.store, name, self.iface)
        func = self.instance.get_func(self.store, index)
        result = func(self.store, *args)
        func.post_return(self.store)
        return result

    def load(self, config, env):
        loaded = self.call("[static]engine.load", config, env)
        if isinstance(loaded, Variant):
            if loaded.tag == "err":
                errors = [f"{e.location}: {e.reason}" for e in loaded.payload]
                raise SystemExit("configuration refused:\n  " + "\n  ".join(errors))
            loaded = loaded.payload
        return loaded


def fetch(upstream, forward):
    """Sends the allowed request upstream, exactly as the engine shaped it."""
    headers = {}
    for name, value in forward.headers:
        # urllib sets these itself; the rest go as the engine left them.
        if name not in ("host", "content-length", "connection"):
            headers[name] = value.decode("latin-1")
    request = urllib.request.Request(
        upstream + forward.path,
        data=forward.body,
        headers=headers,
        method=forward.method,
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as r:
            status, pairs, body = r.status, r.headers.items(), r.read()
    except urllib.error.HTTPError as e:
        status, pairs, body = e.code, e.headers.items(), e.read()
    return record(
        status=status,
        headers=[(n.lower(), v.encode("latin-1")) for n, v in pairs],
        body=body,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="the request's path and query, e.g. /patients/p-1")
    p.add_argument("--component", required=True)
    p.add_argument("--config", required=True, help="the configuration (JSON)")
    p.add_argument("--upstream", required=True, help="http://host:port")
    p.add_argument("--consent", help="where the configuration's clusters are")
    p.add_argument("--method", default="GET")
    p.add_argument("--header", action="append", default=[], help="'name: value'")
    p.add_argument("--body", help="the request body")
    p.add_argument("--explain", action="store_true")
    args = p.parse_args()

    env = [(k, v) for k, v in os.environ.items() if k.startswith("CONSENTRY_")]
    if args.consent:
        env.append(("CONSENTRY_CLUSTER_CONSENT_SERVICE", args.consent))
    consentry = Consentry(args.component)
    with open(args.config, encoding="utf-8") as f:
        engine = consentry.load(f.read(), env)

    headers = []
    for h in args.header:
        name, _, value = h.partition(":")
        headers.append((name.strip().lower(), value.strip().encode("latin-1")))
    request = record(
        method=args.method,
        path=args.path,
        authority="api.hospital.example",
        headers=headers,
        body=None if args.body is None else args.body.encode(),
        source_address=None,
        peer=None,
    )
    if args.explain:
        print(consentry.call("[method]engine.explain", engine, request))
        return

    exchange = consentry.call("[method]engine.decide", engine, request)
    verdict = consentry.call("[method]exchange.verdict", exchange)
    if verdict.tag == "refuse":
        response = verdict.payload
    else:
        upstream = fetch(args.upstream, verdict.payload)
        response = consentry.call("[method]exchange.respond", exchange, upstream)
    exchange.drop(consentry.store)
    json.dump(
        {
            "status": response.status,
            "headers": [[n, v.decode("latin-1")] for n, v in response.headers],
            "body": response.body.decode("utf-8", "replace"),
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
