"""The tiny part of JWT (RFC 7519) the simulated OIDC providers need: RS256 compact tokens, signed, checked.

Only what ACK RRSA service-account tokens use: a JOSE header ``{"alg": "RS256", "typ": "JWT", "kid": ...}``,
base64url without padding, RSASSA-PKCS1-v1_5 over SHA-256 (RFC 7518 §3.3). Claims are returned as
parsed; checking ``iss``/``aud``/``exp`` against a provider is the STS's job (:mod:`.sts`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ALGORITHM = "RS256"


class JwtError(Exception):
    """The token is not a well-formed RS256 JWT, or its signature does not verify."""


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise JwtError("bad base64url") from None


def _json(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def sign(claims: Mapping[str, Any], key: rsa.RSAPrivateKey, kid: str) -> str:
    """The compact RS256 JWT of ``claims``."""
    header = {"alg": ALGORITHM, "kid": kid, "typ": "JWT"}
    signing_input = f"{b64url(_json(header))}.{b64url(_json(claims))}"
    sig = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(sig)}"


def verify(token: str, key: rsa.RSAPublicKey) -> dict[str, Any]:
    """The claims of ``token`` if it is an RS256 JWT signed by ``key``; JwtError otherwise."""
    parts = token.strip().split(".")
    if len(parts) != 3 or not all(parts):
        raise JwtError("not a compact JWS")
    try:
        header = json.loads(_unb64url(parts[0]))
        claims = json.loads(_unb64url(parts[1]))
    except (ValueError, UnicodeDecodeError):
        raise JwtError("header or claims are not JSON") from None
    if not isinstance(header, dict) or header.get("alg") != ALGORITHM:
        # Refusing every other alg (notably "none" and HS256) is what keeps a public key a verifier.
        raise JwtError(f"alg must be {ALGORITHM}")
    if not isinstance(claims, dict):
        raise JwtError("claims are not an object")
    try:
        key.verify(
            _unb64url(parts[2]), f"{parts[0]}.{parts[1]}".encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
        )
    except (InvalidSignature, UnicodeEncodeError):
        raise JwtError("signature does not verify") from None
    return claims
