"""The gateway's half of the RPC signature ("V2": SignatureVersion 1.0, HMAC-SHA1; alibaba-openapi.md §3).

``StringToSign = METHOD & pe("/") & pe(canonical query)`` where the canonical query is every parameter
but ``Signature``, sorted by name, written ``pe(k)=pe(v)`` and joined by ``&``; the signature is
``base64(HMAC-SHA1(secret + "&", StringToSign))``. ``pe`` is RFC 3986 percent-encoding
(:func:`ehpc_simulator.acs3.rfc3986`, the simulator's own).

One known divergence of the clients, not of this module: alibabacloud-credentials 1.0.12 encodes with
``quote_plus``, which writes a space as ``+`` where RFC 3986 writes ``%20``; their signatures agree for
every value without a space (tests/test_rpcsig.py), and the parameters the STS providers send carry none.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ehpc_simulator.acs3 import rfc3986
from ehpc_simulator.auth import (
    DATE_SKEW_SECONDS,
    AuthFailure,
    KeyDirectory,
    NonceStore,
    StsStore,
    parse_timestamp,
    resolve_key,
)

SIGNATURE_METHOD = "HMAC-SHA1"
SIGNATURE_VERSION = "1.0"


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """The sorted, percent-encoded ``k=v&...`` of every parameter except ``Signature``."""
    pairs = sorted((rfc3986(k), rfc3986(v)) for k, v in params if k != "Signature")
    return "&".join(f"{k}={v}" for k, v in pairs)


def string_to_sign(method: str, params: Iterable[tuple[str, str]]) -> str:
    """``METHOD&%2F&pe(canonical query)``."""
    return f"{method.upper()}&{rfc3986('/')}&{rfc3986(canonical_query(params))}"


def signature(secret: str, to_sign: str) -> str:
    """``base64(HMAC-SHA1(secret + "&", to_sign))``."""
    digest = hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


# The common parameters a signed RPC request must carry, in the order their absence is reported.
REQUIRED = ("AccessKeyId", "Signature", "SignatureMethod", "SignatureVersion", "SignatureNonce", "Timestamp")


@dataclass(frozen=True, slots=True)
class RpcVerified:
    """An RPC request whose signature checked out: the caller's key and account."""

    access_key_id: str
    account_id: str | None
    is_sts: bool


class RpcVerifier:
    """Checks RPC-signed requests against long-term keys (a :class:`KeyDirectory`) and issued STS tokens.

    The order of the checks mirrors :class:`ehpc_simulator.auth.Verifier`'s:

    1. A missing common parameter (:data:`REQUIRED`): ``Missing<Name>``, e.g. ``MissingSignatureNonce``
       (the gateway's ``Missing{Param}`` shape, alibaba-openapi.md §4.2).
    2. ``SignatureMethod`` other than ``HMAC-SHA1`` or ``SignatureVersion`` other than ``1.0``:
       ``IncompleteSignature`` (the request does not conform to the signature standard; [U] code).
    3. The AccessKeyId and ``SecurityToken``: exactly the V3 gateway's rules
       (:func:`ehpc_simulator.auth.resolve_key`): ``InvalidAccessKeyId.NotFound``,
       ``InvalidSecurityToken.Malformed`` / ``.Expired``.
    4. ``Timestamp`` not ``%Y-%m-%dT%H:%M:%SZ``: ``InvalidTimeStamp.Format``; more than 15 minutes from
       the server clock (``date_clock`` when given): ``InvalidTimeStamp.Expired``.
    5. Recomputed signature differs: ``SignatureDoesNotMatch``.
    6. Nonce seen in the last 31 minutes: ``SignatureNonceUsed`` (only signed requests record theirs).
    """

    def __init__(
        self,
        directory: KeyDirectory,
        sts: StsStore,
        *,
        clock: Callable[[], float] = time.time,
        nonces: NonceStore | None = None,
        date_clock: Callable[[], float] | None = None,
    ) -> None:
        self.directory = directory
        self.sts = sts
        self.clock = clock
        # The Timestamp skew check alone reads date_clock when given (the clock clients sign with).
        self.date_clock = date_clock
        self.nonces = nonces if nonces is not None else NonceStore()

    def verify(self, method: str, params: Sequence[tuple[str, str]]) -> RpcVerified | AuthFailure:
        """Verify one request given its decoded parameters (query and form, as received)."""
        values = dict(params)
        for name in REQUIRED:
            if not values.get(name):
                return AuthFailure(f"Missing{name}", name)
        if values["SignatureMethod"] != SIGNATURE_METHOD or values["SignatureVersion"] != SIGNATURE_VERSION:
            return AuthFailure("IncompleteSignature", f"Expected {SIGNATURE_METHOD} {SIGNATURE_VERSION}.")
        now = self.clock()
        ak = values["AccessKeyId"]
        match = resolve_key(ak, values.get("SecurityToken"), now, {}, self.directory, self.sts)
        if isinstance(match, AuthFailure):
            return match
        account = match.account_id
        stamp = parse_timestamp(values["Timestamp"])
        if stamp is None:
            return AuthFailure("InvalidTimeStamp.Format", account_id=account)
        signed_now = now if self.date_clock is None else self.date_clock()
        if abs(signed_now - stamp) > DATE_SKEW_SECONDS:
            return AuthFailure("InvalidTimeStamp.Expired", account_id=account)
        to_sign = string_to_sign(method, params)
        if not hmac.compare_digest(signature(match.secret, to_sign), values["Signature"]):
            return AuthFailure("SignatureDoesNotMatch", f"server string to sign is:{to_sign}", account)
        if self.nonces.seen(values["SignatureNonce"], now):
            return AuthFailure("SignatureNonceUsed", account_id=account)
        return RpcVerified(access_key_id=ak, account_id=account, is_sts=match.is_sts)
