"""The gateway's half of ACS3-HMAC-SHA256 (OpenAPI V3): rebuild the canonical request and its signature.

Written from alibaba-openapi.md §2.1-§2.3 and §2.8 on purpose without :mod:`exporter.openapi.signing`:
the simulator checks the exporter's client, so sharing its code would hide a bug both made. The
official SDK is the referee of both (tests/test_official_sdk.py, tests/test_simulator_independence.py).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote_plus

SCHEME = "ACS3-HMAC-SHA256"
# §2.2: host and these x-acs-* headers must always be among SignedHeaders.
ALWAYS_SIGNED = frozenset(
    {"host", "x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256"}
)
# §2.8 step 1, verbatim: no spaces after the commas, lower-case hex signature.
_AUTHORIZATION = re.compile(
    r"^ACS3-HMAC-SHA256 Credential=([^,]+),SignedHeaders=([^,]+),Signature=([0-9a-f]{64})$"
)
# §2.1: RFC 3986 unreserved characters stay; every other UTF-8 byte becomes %XX (upper-case hex).
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


@dataclass(frozen=True, slots=True)
class Authorization:
    """The three parts of an ``Authorization: ACS3-HMAC-SHA256 ...`` header."""

    access_key_id: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> Authorization | None:
    """Split the header into its parts; None when it is not the V3 shape of §2.3."""
    m = _AUTHORIZATION.match(value)
    if m is None:
        return None
    return Authorization(m.group(1), tuple(m.group(2).split(";")), m.group(3))


def rfc3986(text: str) -> str:
    """Percent-encode ``text`` the way the gateway canonicalises it (§2.1)."""
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in text.encode("utf-8"))


def decode_query(raw: str) -> list[tuple[str, str]]:
    """The parameters of a raw query string, as received.

    ``+`` is a space: the official SDK writes its query with ``urlencode`` (space as ``+``) while it
    signs the space as ``%20``, so the gateway must read the wire form-style. A name without ``=`` has
    the empty value (§2.2: "a parameter with no value becomes ``k=``").
    """
    pairs = []
    for piece in raw.split("&"):
        if piece:
            name, _, value = piece.partition("=")
            pairs.append((unquote_plus(name), unquote_plus(value)))
    return pairs


def canonical_query_string(pairs: Iterable[tuple[str, str]]) -> str:
    """§2.2 CanonicalQueryString: ``pe(k)=pe(v)`` joined with ``&``, sorted by name in byte order.

    Sorted on the decoded (name, value), not on the encoded ``k=v`` text: ``=`` would otherwise sort
    ``a-b=`` before ``a=``, and the SDK sorts names.
    """
    return "&".join(f"{rfc3986(k)}={rfc3986(v)}" for k, v in sorted(pairs, key=_utf8_order))


def _utf8_order(pair: tuple[str, str]) -> tuple[bytes, bytes]:
    return pair[0].encode("utf-8"), pair[1].encode("utf-8")


def payload_hash(body: bytes) -> str:
    """§2.2 HashedRequestPayload: lower-case hex SHA-256 of the exact body bytes."""
    return hashlib.sha256(body).hexdigest()


def canonical_request(
    method: str,
    path: str,
    query: str,
    signed: Iterable[str],
    values: Mapping[str, str],
    hashed_payload: str,
) -> str:
    """§2.2 CanonicalRequest from the received values of the signed headers (lower-case names)."""
    names = sorted(set(signed))
    headers = "".join(f"{name}:{values[name].strip()}\n" for name in names)
    return "\n".join((method.upper(), path, query, headers, ";".join(names), hashed_payload))


def string_to_sign(canonical: str) -> str:
    """§2.3 StringToSign: the scheme, a newline and the hex SHA-256 of the canonical request."""
    return f"{SCHEME}\n{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}"


def expected_signature(secret: str, to_sign: str) -> str:
    """§2.3 Signature: hex HMAC-SHA256 keyed by the raw AccessKey secret (V3 adds no ``&``)."""
    return hmac.new(secret.encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
