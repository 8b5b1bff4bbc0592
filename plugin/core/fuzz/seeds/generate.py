#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs (seeds/<target>/), deterministically.

Run from anywhere with Python 3 and `cryptography` (for the Ed25519 key the fuzz
issuer holds, src/lib.rs); the repository's fixtures and policy are read as they are.
Rerun it when an input format changes.
"""
import base64, hashlib, hmac, json, os, shutil, struct, zlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

HERE = Path(__file__).resolve().parent
CORE = HERE.parent.parent
REPO = CORE.parent.parent
NOW = 1_800_000_000
ISSUER = "https://consent.example.com"
RAR = "https://rar.example.com"
STATUS_URI = "https://consent.example.com/statuslists/1"
KEY = Ed25519PrivateKey.from_private_bytes(bytes([7] * 32))


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def compact(v) -> bytes:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode()


def sign(header: bytes, payload: bytes) -> bytes:
    head = f"{b64(header)}.{b64(payload)}"
    return f"{head}.{b64(KEY.sign(head.encode()))}".encode()


def write(target: str, files: dict):
    d = HERE / target
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for name, data in files.items():
        (d / name).write_bytes(data)


AT = compact({"alg": "EdDSA", "kid": "fuzz", "typ": "at+jwt"})
CLAIMS = {
    "iss": ISSUER, "aud": "https://api.example", "sub": "p-1", "jti": "c-1",
    "client_id": "spiffe://partner.example/insurer", "iat": NOW - 10, "exp": NOW + 600,
    "purpose": ["treatment"], "data_domains": ["lab_results"], "actions": "read",
    "act": {"sub": "p-2"},
    "status": {"status_list": {"idx": 3, "uri": STATUS_URI}},
    "cnf": {"x5t#S256": b64(bytes(32))},
}
RAR_CLAIMS = {
    "iss": RAR, "aud": ["https://api.example"], "sub": "p-1", "jti": "c-2", "nbf": NOW - 5,
    "exp": NOW + 60, "azp": "lab",
    "authorization_details": [{"type": "health_record_access", "actions": ["read"],
                               "datatypes": ["labs"], "identifier": "p-1",
                               "locations": ["https://api.example"], "purpose": "research"}],
}

write("jws", {
    "signed-valid": b"\x00" + sign(AT, compact(CLAIMS)),
    "signed-rar": b"\x00" + sign(AT, compact(RAR_CLAIMS)),
    "signed-revoked": b"\x00" + sign(AT, compact({**CLAIMS, "jti": "revoked"})),
    "jwe-shape": b"\x00" + b"a.b.c.d.e",
    "json-serialization": b'\x00{"payload":"e30","signatures":[]}',
    "claims": b"\x01" + AT + b"\n" + compact(CLAIMS),
    "claims-rar": b"\x01" + AT + b"\n" + compact(RAR_CLAIMS),
    "claims-duplicate": b"\x01" + AT + b'\n{"sub":"a","sub":"b"}',
    "header-crit": b"\x01" + b'{"alg":"EdDSA","crit":["b64"],"b64":false}\n{}',
})

fixtures = CORE / "tests/fixtures/tokens"
keys = REPO / "examples/keys"
write("jwks", {
    "fixtures": compact(json.loads((fixtures / "jwks.json").read_text())),
    "rsa1024": compact(json.loads((fixtures / "jwks-rsa1024.json").read_text())),
    "rotation": compact(json.loads((keys / "jwks-rotation.json").read_text())),
    "ed25519": compact(json.loads((keys / "jwks-ed25519.json").read_text())),
    "private-member": b'{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AA","d":"AA"}]}',
    "empty": b'{"keys":[]}',
})

policy = json.loads((REPO / "policies/example.json").read_text())
jwks = json.loads((keys / "jwks.json").read_text())
minimal = {
    "version": 1,
    "issuers": [{"issuer": "https://consent.example", "algorithms": ["ES256"],
                 "audiences": ["api"], "keys": {"inline": jwks}}],
    "domains": ["billing"], "purposes": ["claims"],
    "routes": [{"name": "r", "path": "/a/{id}",
                "response": {"fields": [{"path": "$.b", "domain": "billing"}]},
                "rules": [{"name": "x", "purposes": ["claims"], "release": ["billing"],
                           "when": "consent.subject == request.params.id"}]}],
}
write("config", {"example": compact(policy), "minimal": compact(minimal)})

write("expr", {f"{i:02}": e.encode() for i, e in enumerate([
    "'claims' in consent.purposes",
    "consent.subject == request.params.id || consent.subject in consent.delegations",
    "now - consent.issued_at <= 3600 && size(consent.purposes) >= 1",
    "consent.purposes.exists(p, p.startsWith('tr')) ? claims.n > 2.0 : false",
    "has(claims.act) && claims.act.sub != null && int('12') + 1 == 13",
    "claims.tags.all(t, size(t) == 1) && claims.tags.exists_one(t, t == 'a')",
    "string(claims.nested.deep[1][1][0]).lowerAscii().contains('4')",
    "[1, 2] + [3] == [1, 2, 3] && -(-1) == 1 && !false && 'a' + \"b\" == 'ab'",
    "request.headers['x-a'] == '1' && caller.ip.endsWith('.1') && purpose == 'treatment'",
    "claims.big > 9007199254740992 && claims.tags[0] < 'b'",
])})


def status_lst(statuses, bits):
    packed = bytearray((len(statuses) * bits + 7) // 8)
    for i, s in enumerate(statuses):
        packed[i * bits // 8] |= s << (i * bits % 8)
    return b64(zlib.compress(bytes(packed), 9))


vectors = json.loads((CORE / "tests/vectors/token-status-list.json").read_text())
status = {}
for v in vectors["vectors"]:
    if len(v["lst"]) < 2000:
        bits = v["bits"]
        status[f"decode-{bits}-{len(status)}"] = bytes([4 * bits]) + v["lst"].encode()
stored = (b"CSL1" + bytes([2]) + struct.pack(">QQH", NOW - 10, NOW + 300, len(STATUS_URI))
          + STATUS_URI.encode() + bytes([0b11100100, 0, 1]))
status["stored"] = b"\x01" + stored
for name, lst in [("one-bit", status_lst([0, 1, 0, 0, 1, 0, 0, 0, 1], 1)),
                  ("eight-bit", status_lst([0, 1, 2, 3, 255], 8))]:
    bits = 1 if name == "one-bit" else 8
    claims = {"sub": STATUS_URI, "iss": ISSUER, "iat": NOW - 10, "ttl": 300, "exp": NOW + 600,
              "status_list": {"bits": bits, "lst": lst}}
    status[f"jwt-{name}"] = b"\x02" + compact(claims)
write("status_list", status)

pems = {}
for cert in sorted((fixtures / "certs").glob("*.pem")):
    text = cert.read_bytes()
    pems[f"pem-{cert.stem}"] = b"\x00" + text
    body = b"".join(text.split(b"-----")[2].split())
    pems[f"der-{cert.stem}"] = b"\x01" + base64.b64decode(body)
pems["hex-digest"] = b"\x00" + hashlib.sha256(b"x").hexdigest().encode()
write("pem", pems)


def canonical_decision(chain, seq, prev, time, code, kid):
    return compact({
        "v": 2, "kind": "decision", "chain": chain, "seq": seq, "prev": prev, "time": time,
        "request_id": f"req-{seq}", "caller": "spiffe://insurer.example/claims",
        "subject": "sha256:" + "ab" * 16, "acts_for": None, "purpose": "claims",
        "consent_id": "c-7781", "route": "GET /patients/{id}", "rule": "insurer-read",
        "decision": "allow" if code == "ok" else "deny", "code": code, "reason": "rule_matched",
        "outcome": "released" if code == "ok" else "refused", "status": 200 if code == "ok" else 403,
        "released": [{"field": "$.id", "count": 1}],
        "redacted": [{"field": "$.name", "action": "pseudonymise", "count": 1}],
        "alert": None, "alg": "hmac-sha256" if kid else "sha256", "kid": kid,
    })


def chain(keyed: bool) -> bytes:
    prev, lines = "0" * 64, [b"[info] envoy started"]
    for seq in (1, 2, 3):
        time = f"2026-11-27T12:00:0{seq}.123Z"
        if seq == 3:
            text = compact({"v": 2, "kind": "checkpoint", "chain": "3f0c9a51d2e87b46",
                            "seq": 3, "prev": prev, "time": time, "interval_s": 60,
                            "alg": "hmac-sha256" if keyed else "sha256",
                            "kid": "k1" if keyed else None})
        else:
            text = canonical_decision("3f0c9a51d2e87b46", seq, prev, time,
                                      "ok" if seq == 1 else "consent_denied", "k1" if keyed else None)
        digest = (hmac.new(bytes([7] * 32), text, "sha256") if keyed else hashlib.sha256(text)).hexdigest()
        lines.append(b"[info] consentry-audit " + text[:-1] + f',"hash":"{digest}"}}'.encode())
        prev = digest
    return b"\n".join(lines) + b"\n"


write("audit", {
    "log-unkeyed": b"\x00" + chain(False),
    "log-keyed": b"\x00" + chain(True),
    "write-plain": b"\x01" + b"\x00".join(s.encode() for s in [
        "12", "3f0c9a51d2e87b46", "req-1", "spiffe://insurer.example/claims", "p-1", "p-2",
        "claims", "c-1", "GET /patients/{id}", "rule", "$.id", "$.name"]),
    "write-escapes": b"\x03" + "\x00".join(["9", 'c"h\\n', "\u2028", "\x7f\x01", "é", "",
                                            "\ud7ff", "a\tb", "{}", "[\"]", "$.a", "$.b"]).encode(),
})

# 12 rule bytes, then the options: any-depth rules (12 bits), control characters
# withheld (bit 4 of the second), case-insensitive rules (the third).
redact = {}
for name in ("insurer-p-1", "guardian-p-5"):
    body = (REPO / "examples/views" / f"{name}.json").read_bytes()
    redact[name] = bytes(range(0x21, 0x2d)) + b"\x00\x00\x00" + body
redact["deep"] = b"\x41" * 12 + b"\x00\x00\x00" + b'{"a":[{"b":{"ssn":"123-45-6789","\\u00e9":[1,2.5e3,null,true]}}]}'
spellings = '{"SSN":1,"\\u017Fsn":2,"a":[{"B":{"ssn":3,"\u00c9":4}},{"ssn\\u0000":5}],"\\u212a":{"\x7f":6}}'.encode()
redact["spellings"] = bytes([0x4a, 0x26, 0x89, 0x55, 0x0e, 0x21]) + bytes(6) + b"\x15\x00\x0f" + spellings
redact["spellings-withheld"] = bytes([0x4b, 0x0a]) + bytes(10) + b"\xff\x1f\xff" + spellings
write("redact", redact)
