"""Cross-checks facegate's JWS against PyJWT, a standard JOSE implementation.

verify TOKEN PUBLIC_B64URL AUD   -> prints the verified claims as JSON
sign KIND AUD                    -> prints {"token": ..., "public_key": ...} signed by a fresh key
                                    (KIND: consent, command, head, entry)
public PEM_FILE                  -> prints {"public_key": ...} of a private key file (OpenSSL/cryptography)
"""
import base64
import json
import sys
import time
import uuid

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify(token: str, public: str, aud: str) -> None:
    key = Ed25519PublicKey.from_public_bytes(unb64url(public))
    claims = jwt.decode(token, key=key, algorithms=["EdDSA"], audience=aud)
    header = jwt.get_unverified_header(token)
    print(json.dumps({"header": header, "claims": claims}))


def sign(kind: str, aud: str) -> None:
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    now = int(time.time())
    if kind == "consent":
        claims = {"iss": "pyjwt", "sub": "S-py", "jti": str(uuid.uuid4()), "iat": now,
                  "exp": now + 3600, "aud": [aud], "scope": "capture:upload"}
    elif kind == "head":  # a site consent-log head, as docs/PROTOCOL.md signs it
        claims = {"aud": aud, "seq": 5, "base": 2, "iat": now, "exp": now + 86400}
    elif kind == "entry":  # a site consent-log entry, as docs/PROTOCOL.md signs it
        claims = {"jti": str(uuid.uuid4()), "iat": now, "exp": now + 3600, "aud": aud,
                  "cmd": "consent.revoke", "args": {"subject": "S-py"}, "seq": 3}
    else:
        claims = {"jti": str(uuid.uuid4()), "iat": now, "exp": now + 600, "aud": aud,
                  "cmd": "capture.purge", "args": {"subject": "S-py"}}
    token = jwt.encode(claims, private, algorithm="EdDSA", headers={"kid": "py-key"})
    print(json.dumps({"token": token, "public_key": b64url(public)}))


def public(path: str) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    with open(path, "rb") as f:
        key = load_pem_private_key(f.read(), password=None)
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    print(json.dumps({"public_key": b64url(raw)}))


if __name__ == "__main__":
    if sys.argv[1] == "public":
        public(sys.argv[2])
    elif sys.argv[1] == "verify":
        verify(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sign(sys.argv[2], sys.argv[3])
