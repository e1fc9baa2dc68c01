"""ACS3-HMAC-SHA256 (OpenAPI V3) request signing for the client (the simulator checks with its own code)."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote

ALGORITHM = "ACS3-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# The headers the gateway insists on seeing in SignedHeaders (alibaba-openapi.md §2.2).
REQUIRED_SIGNED_HEADERS = frozenset(
    {"host", "x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256"}
)
AUTHORIZATION_RE = re.compile(
    r"^ACS3-HMAC-SHA256 Credential=([^,]+),SignedHeaders=([^,]+),Signature=([0-9a-f]{64})$"
)


def percent_encode(value: str) -> str:
    """RFC 3986 encoding as Alibaba signs it: unreserved characters kept, everything else %XX."""
    return quote(value, safe="~")


def canonical_query(params: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """Sorted, percent-encoded query string; also the exact bytes the client puts on the wire."""
    items = params.items() if isinstance(params, Mapping) else params
    encoded = sorted((percent_encode(k), percent_encode(v)) for k, v in items)
    return "&".join(f"{k}={v}" for k, v in encoded)


def sha256_hex(body: bytes) -> str:
    """Lower-case hex SHA-256, the HashedRequestPayload of the canonical request."""
    return hashlib.sha256(body).hexdigest()


def canonical_request(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    signed_headers: Iterable[str],
    payload_hash: str,
) -> str:
    """Build the canonical request; ``headers`` must be keyed by lower-case name."""
    names = sorted({n.lower() for n in signed_headers})
    canon_headers = "".join(f"{n}:{headers[n].strip()}\n" for n in names)
    return f"{method.upper()}\n{path}\n{query}\n{canon_headers}\n{';'.join(names)}\n{payload_hash}"


def signature(secret: str, canonical: str) -> str:
    """HMAC-SHA256 of the string to sign, keyed by the raw AccessKey secret (no trailing ``&``)."""
    string_to_sign = f"{ALGORITHM}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    return hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def sign(
    *,
    method: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    access_key_id: str,
    access_key_secret: str,
    path: str = "/",
) -> dict[str, str]:
    """Return ``headers`` plus ``x-acs-content-sha256`` and ``Authorization``, signing every header given.

    ``query`` is the already-canonical query string (see :func:`canonical_query`), which the caller
    must send byte for byte.
    """
    payload_hash = sha256_hex(body)
    lowered = {k.lower(): str(v) for k, v in headers.items()}
    lowered["x-acs-content-sha256"] = payload_hash
    lowered.pop("authorization", None)
    names = sorted(lowered)
    sig = signature(access_key_secret, canonical_request(method, path, query, lowered, names, payload_hash))
    lowered["authorization"] = (
        f"{ALGORITHM} Credential={access_key_id},SignedHeaders={';'.join(names)},Signature={sig}"
    )
    return lowered
