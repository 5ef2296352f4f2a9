#!/usr/bin/env python3
"""Writes the seed corpora of the text fuzz targets (token, sidecar, config,
wire) into fuzz/corpus/<target>/. The keys are those of fuzz/src/lib.rs
(Ed25519 seeds 32 x 0x01 for fleet-1 and 32 x 0x02 for consent-1). Needs
Python 3 with the `cryptography` package. The sanitize seeds are real
images (testkit synthetic captures, tests/fixtures), committed as files."""
import base64, hashlib, json, os, pathlib
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

HERE = pathlib.Path(__file__).resolve().parent
NOW = 1_800_000_000
FLEET = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
CONSENT = Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def js(o):
    return json.dumps(o, separators=(",", ":")).encode()


def token(claims, key, kid):
    head = b64(js({"alg": "EdDSA", "kid": kid}))
    body = b64(js(claims))
    sig = key.sign(f"{head}.{body}".encode())
    return f"{head}.{body}.{b64(sig)}"


def write(target, name, data):
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


consent = {"iss": "hr", "sub": "S-123", "jti": "c-1", "iat": NOW - 10,
           "exp": NOW + 86_400, "aud": "lobby", "scope": "capture:upload"}
consent_tok = token(consent, CONSENT, "consent-1")


def cmd(name, args, **extra):
    c = {"jti": f"j-{name}", "iat": NOW - 5, "exp": NOW + 600,
         "aud": "lobby/term-01", "cmd": name, "args": args}
    c.update(extra)
    return c


commands = {
    "grant": cmd("consent.grant", {"token": consent_tok}),
    "grant-seq": dict(cmd("consent.grant", {"token": consent_tok}, seq=3), aud="lobby"),
    "revoke": cmd("consent.revoke", {"subject": "S-123"}),
    "purge": cmd("capture.purge", {"subject": "S-123"}),
    "purge-all": cmd("capture.purge", {"all": True}),
    "status": cmd("status", {}),
    "seen": dict(cmd("status", {}), jti="seen"),
}
head = {"aud": "lobby", "seq": 5, "base": 1, "iat": NOW - 5, "exp": NOW + 3600}

# Raw tokens (flags 0x00 command, 0x01 consent, 0x02 head).
for name, c in commands.items():
    write("token", f"cmd-{name}", b"\x00" + token(c, FLEET, "fleet-1").encode())
write("token", "consent", b"\x01" + consent_tok.encode())
write("token", "consent-list-aud", b"\x01" + token(
    dict(consent, aud=["lobby/term-01", "other"], nbf=NOW - 1), CONSENT, "consent-1").encode())
write("token", "head", b"\x02" + token(head, FLEET, "fleet-1").encode())
# Claims signed by the target (0x04 fleet key, 0x0C consent key).
for name, c in commands.items():
    write("token", f"signed-cmd-{name}", b"\x04" + js(c))
write("token", "signed-consent", b"\x0d" + js(consent))
write("token", "signed-head", b"\x06" + js(head))
# Own header (0x10), own now (0x20).
write("token", "signed-header-cmd", b"\x14" + js({"alg": "EdDSA", "kid": "fleet-1", "typ": "JWT"})
      + b"\xff" + js(commands["revoke"]))
write("token", "now-cmd", b"\x24" + (NOW + 30).to_bytes(8, "little", signed=True) + js(commands["purge"]))

# Sidecars.
write("sidecar", "full", js({"subject": "S-123", "captured_at": "2026-11-28T10:22:00Z", "camera": "cam-1"}))
write("sidecar", "no-subject", js({"captured_at": "2026-11-28T10:22:00.123+01:00", "camera": "door.2"}))
write("sidecar", "null-subject", b'{"subject":null,"captured_at":"2026-11-28T10:22:00Z","camera":"c"}')

# Config: the example file, a minimal one, one with environment overrides.
example = (HERE.parent / "config" / "facegate.example.toml").read_bytes()
write("config", "example", example)
minimal = b'''site_id = "lobby"
device_id = "term-01"
[mqtt]
host = "broker"
ca_file = "ca.pem"
cert_file = "device.pem"
key_file = "pkcs11:token=t;object=k?pin-source=file:/etc/pin"
pkcs11_module = "/usr/lib/softhsm/libsofthsm2.so"
[[trust]]
kid = "c"
role = "consent"
public_key = "HlUcpubr33dzSLpH73nq1RnpLeGr2xK9c2aBBA6nkdc"
'''
write("config", "minimal", minimal)
write("config", "env", minimal + b"\0MQTT__PORT=1883\nCAPTURE__MAX_WIDTH=2k\nTRUST__0__KID=x\nLOG__LEVEL=debug\n")

# Wire messages (selector 0 envelope, 1 reply, 2 status; 0xFF separates messages).
image = bytes(range(256)) * 4
def envelope(**kw):
    e = {"v": 1, "capture_id": "cfa369e6-2f2a-8a83-84c8-e32086f564bb", "site": "lobby",
         "device": "term-01", "subject": "S-123", "consent_id": "c-1",
         "captured_at": "2026-11-28T10:22:00Z", "camera": "cam-1",
         "content_type": "image/jpeg", "sha256": hashlib.sha256(image).hexdigest(),
         "image": base64.b64encode(image).decode()}
    e.update(kw)
    return js(e)
write("wire", "envelope-whole", b"\x00" + envelope())
parts = [envelope(image=base64.b64encode(image[i * 512:(i + 1) * 512]).decode(), part=i, parts=2)
         for i in (1, 0)]
write("wire", "envelope-parts", b"\x00" + b"\xff".join(parts + parts[:1]))
write("wire", "reply-ok", b"\x01" + b'{"v":1,"jti":"e8","cmd":"consent.grant","ok":true,'
      b'"result":{"consent_id":"c-1","subject":"S-123","expires_at":"2026-12-28T10:21:54Z","new":true}}')
write("wire", "reply-err", b"\x01" + b'{"v":1,"jti":"cb","cmd":"capture.purge","ok":false,'
      b'"error":{"code":"bad_args","message":"bad arguments"}}')
write("wire", "reply-receipt", b"\x01" + b'{"v":1,"jti":"r","cmd":"consent.revoke","ok":true,"result":'
      b'{"subject":"S-123","purged":2,"in_flight":["05ec183c-0cda-8af0-9010-f63b17ea8aa9"],'
      b'"purged_at":"2026-11-28T10:22:12Z","consents_remaining":0}}')
write("wire", "status-online", b"\x02" + b'{"v":1,"state":"online","version":"0.1.0","ts":"2026-11-28T10:22:03Z",'
      b'"outbox":{"captures":0,"bytes":0,"oldest_age_s":0,"quarantined":0},"consent":{"active":1},'
      b'"counters":{"accepted":1,"dropped_no_consent":0,"rejected_bad_input":0,"uploaded":1,'
      b'"purged":0,"rejected_quota":0,"upload_retries":0,"commands_refused":0,"commands_ignored":0},'
      b'"uplink":{"connected":true,"in_flight":0,"session_lost":0},'
      b'"consent_log":{"in_sync":true,"applied":5,"head":5,"missing":[],"head_age_s":42}}')
write("wire", "status-offline", b"\x02" + b'{"v":1,"state":"offline"}')
