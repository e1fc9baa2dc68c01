"""Server-side verification of ACS3-HMAC-SHA256 signatures (alibaba-openapi.md §2.8), nonces and STS.

The canonical request and signature come from :mod:`ehpc_simulator.acs3`, the simulator's own.

The order of the checks, and so which error a request with several faults gets:

1. ``Authorization`` missing or not of the V3 shape: ``IncompleteSignature``.
2. SignedHeaders lacks a required header (``acs3.ALWAYS_SIGNED``, plus ``x-acs-security-token``
   when the request has one, plus ``content-type`` when the request has one *and a non-empty body*)
   or names a header the request does not carry: ``IncompleteSignature``. The body condition departs
   from alibaba-openapi.md §2.8 on purpose: the official SDK's async methods send an empty POST with
   an unsigned ``Content-Type: application/octet-stream`` (aiohttp adds it), which the real gateway
   must accept; with a body, the content type decides how parameters are read, so it must be signed.
3. ``x-acs-content-sha256`` differs from the SHA-256 of the body: ``SignatureDoesNotMatch`` (the
   signature covers that header, so the gateway cannot match the body it got).
4. Unknown AccessKeyId (neither in ``access_keys`` nor in the :class:`KeyDirectory`, when given):
   ``InvalidAccessKeyId.NotFound``. For an AccessKeyId issued by
   :meth:`StsStore.issue`: a missing or different ``x-acs-security-token`` is
   ``InvalidSecurityToken.Malformed``, an expired one ``InvalidSecurityToken.Expired``. A token sent
   with a long-term AccessKey is ``InvalidSecurityToken.Malformed`` too (it belongs to no key).
5. ``x-acs-date`` not ``%Y-%m-%dT%H:%M:%SZ``: ``InvalidTimeStamp.Format``; more than 15 minutes from
   the server clock (``date_clock`` when given): ``InvalidTimeStamp.Expired``.
6. Recomputed signature (canonical query from the *decoded* query parameters, ``+`` read as a space,
   re-encoded; see :func:`acs3.decode_query`) differs: ``SignatureDoesNotMatch``.
7. The nonce was seen in the last 31 minutes: ``SignatureNonceUsed``. Only correctly signed
   requests record their nonce, so a forged request cannot burn a legitimate client's nonce.
"""

from __future__ import annotations

import calendar
import collections
import hmac
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from multidict import CIMultiDictProxy

from ehpc_simulator import acs3

DATE_SKEW_SECONDS = 15 * 60
NONCE_WINDOW_SECONDS = 31 * 60
_DATE_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z$")


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """Why a request was refused: the error code, a message detail (never a secret), and the account
    the AccessKey belongs to when that much was established (an estate counts the refusal there)."""

    code: str
    detail: str = ""
    account_id: str | None = None


class NonceStore:
    """Remembers nonces for at least ``window`` seconds with memory bounded by time, not by traffic.

    Two generations of sets: a nonce is looked up in both and added to the current one; every
    ``window`` seconds the current generation becomes the previous one and the oldest is dropped. A
    nonce is thus remembered between ``window`` and ``2 * window`` seconds. If a generation grows past
    ``max_entries`` it rotates early (the replay window shrinks instead of memory growing without bound).
    """

    def __init__(self, window: float = NONCE_WINDOW_SECONDS, max_entries: int = 2_000_000) -> None:
        self.window = window
        self.max_entries = max_entries
        self._current: set[str] = set()
        self._previous: set[str] = set()
        self._rotated_at: float | None = None

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def seen(self, nonce: str, now: float) -> bool:
        """Record ``nonce``; True if it was already recorded within the window."""
        if self._rotated_at is None:
            self._rotated_at = now
        elif now - self._rotated_at >= self.window:
            # After two windows of silence both generations are stale.
            self._previous = self._current if now - self._rotated_at < 2 * self.window else set()
            self._current = set()
            self._rotated_at = now
        if nonce in self._current or nonce in self._previous:
            return True
        if len(self._current) >= self.max_entries:
            self._previous, self._current, self._rotated_at = self._current, set(), now
        self._current.add(nonce)
        return False


@dataclass(frozen=True, slots=True)
class StsCredential:
    """A temporary credential handed out by the simulator."""

    access_key_id: str
    access_key_secret: str
    security_token: str
    expires_at: float  # epoch seconds
    account_id: str | None = None  # the account the credential acts for (None: a lone Simulator's)


class StsStore:
    """STS credentials issued by the simulator; expired ones are forgotten a while after expiry."""

    # Kept past expiry so a late request gets InvalidSecurityToken.Expired, not an unknown key.
    GRACE_SECONDS = 24 * 3600
    MAX_ENTRIES = 100_000

    def __init__(self) -> None:
        self._by_ak: collections.OrderedDict[str, StsCredential] = collections.OrderedDict()

    def issue(self, ttl_seconds: float, now: float, account_id: str | None = None) -> StsCredential:
        """A fresh credential valid for ``ttl_seconds``, acting for ``account_id``."""
        cred = StsCredential(
            access_key_id=f"STS.{secrets.token_hex(12)}",
            access_key_secret=secrets.token_urlsafe(24),
            security_token=f"CAIS{secrets.token_urlsafe(48)}",
            expires_at=now + ttl_seconds,
            account_id=account_id,
        )
        self._by_ak[cred.access_key_id] = cred
        self._evict(now)
        return cred

    def get(self, access_key_id: str) -> StsCredential | None:
        """The credential issued under ``access_key_id``, if still remembered."""
        return self._by_ak.get(access_key_id)

    def _evict(self, now: float) -> None:
        while self._by_ak:
            oldest = next(iter(self._by_ak.values()))
            if len(self._by_ak) <= self.MAX_ENTRIES and oldest.expires_at + self.GRACE_SECONDS > now:
                break
            self._by_ak.popitem(last=False)


def parse_timestamp(value: str) -> float | None:
    """Epoch seconds of a ``%Y-%m-%dT%H:%M:%SZ`` date (``x-acs-date``, RPC ``Timestamp``), else None."""
    m = _DATE_RE.match(value)
    if not m:
        return None
    y, mo, d, h, mi, s = (int(g) for g in m.groups())
    try:
        parsed = float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)))
    except (OverflowError, ValueError):
        return None
    # timegm normalises 2023-02-30; a real date must round-trip.
    return parsed if time.gmtime(parsed)[:6] == (y, mo, d, h, mi, s) else None


class _DateCache:
    """Parses ``x-acs-date``; the value changes once a second, so the last answer is remembered."""

    def __init__(self) -> None:
        self._last: tuple[str, float | None] = ("", None)

    def parse(self, value: str) -> float | None:
        if value == self._last[0]:
            return self._last[1]
        parsed = parse_timestamp(value)
        self._last = (value, parsed)
        return parsed


class KeyDirectory:
    """Long-term AccessKeys of several accounts: AccessKeyId -> (account id, secret).

    Holds each account's own key dict (not a copy), so keys added to or removed from an account later
    are seen at once. An AccessKeyId found in two accounts belongs to the first one registered.
    """

    def __init__(self) -> None:
        self._accounts: dict[str, Mapping[str, str]] = {}

    def add_account(self, account_id: str, access_keys: Mapping[str, str]) -> None:
        """Register the (live) key dict of ``account_id``."""
        self._accounts[account_id] = access_keys

    def lookup(self, access_key_id: str) -> tuple[str, str] | None:
        """``(account id, secret)`` of a long-term key, or None."""
        for account_id, keys in self._accounts.items():
            secret = keys.get(access_key_id)
            if secret is not None:
                return account_id, secret
        return None


@dataclass(frozen=True, slots=True)
class KeyMatch:
    """What an AccessKeyId (and the SecurityToken sent with it) resolved to."""

    secret: str
    account_id: str | None
    is_sts: bool


def resolve_key(
    access_key_id: str,
    token: str | None,
    now: float,
    access_keys: Mapping[str, str],
    directory: KeyDirectory | None,
    sts: StsStore,
) -> KeyMatch | AuthFailure:
    """Step 4 of the module docstring, shared by the V3 gateway and the RPC (STS) one."""
    secret = access_keys.get(access_key_id)
    account_id: str | None = None
    if secret is None and directory is not None:
        found = directory.lookup(access_key_id)
        if found is not None:
            account_id, secret = found
    if secret is not None:
        if token is not None:
            return AuthFailure(
                "InvalidSecurityToken.Malformed", "This AccessKey takes no SecurityToken.", account_id
            )
        return KeyMatch(secret, account_id, is_sts=False)
    cred = sts.get(access_key_id)
    if cred is None:
        return AuthFailure("InvalidAccessKeyId.NotFound")
    if token is None or not hmac.compare_digest(token.strip(), cred.security_token):
        return AuthFailure("InvalidSecurityToken.Malformed", account_id=cred.account_id)
    if cred.expires_at <= now:
        return AuthFailure("InvalidSecurityToken.Expired", account_id=cred.account_id)
    return KeyMatch(cred.access_key_secret, cred.account_id, is_sts=True)


def _header(headers: CIMultiDictProxy[str], name: str) -> str | None:
    values = headers.getall(name, None)
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    # Repeated headers are signed joined by "," after sorting (alibaba-openapi.md §2.2).
    return ",".join(sorted(v.strip() for v in values))


@dataclass(frozen=True, slots=True)
class Verified:
    """A request whose signature checked out."""

    access_key_id: str
    is_sts: bool
    account_id: str | None = None  # the account the key belongs to (None: a lone Simulator's key)


class Verifier:
    """Checks requests against the known AccessKeys and the STS credentials the simulator issued."""

    def __init__(
        self,
        access_keys: Mapping[str, str],
        sts: StsStore,
        *,
        clock: Callable[[], float] = time.time,
        nonces: NonceStore | None = None,
        directory: KeyDirectory | None = None,
        date_clock: Callable[[], float] | None = None,
    ) -> None:
        self.access_keys = dict(access_keys)
        self.directory = directory
        self.sts = sts
        self.clock = clock
        # The x-acs-date skew check alone reads date_clock when given (the clock clients sign with).
        self.date_clock = date_clock
        self.nonces = nonces if nonces is not None else NonceStore()
        self._dates = _DateCache()

    def verify(
        self, method: str, path: str, raw_query: str, headers: CIMultiDictProxy[str], body: bytes
    ) -> Verified | AuthFailure:
        """Verify one request; see the module docstring for the order of the checks."""
        auth = headers.get("Authorization")
        if auth is None:
            return AuthFailure("IncompleteSignature", "The Authorization header is missing.")
        parsed = acs3.parse_authorization(auth.strip())
        if parsed is None:
            return AuthFailure("IncompleteSignature", f"The Authorization header is not {acs3.SCHEME}.")
        access_key_id, signed = parsed.access_key_id, parsed.signed_headers
        signed_set = set(signed)
        required = set(acs3.ALWAYS_SIGNED)
        if "content-type" in headers and body:
            # Only with a body: the official SDK's async path (aiohttp) adds an unsigned
            # "Content-Type: application/octet-stream" to its empty POSTs, and the cloud accepts it.
            required.add("content-type")
        if "x-acs-security-token" in headers:
            required.add("x-acs-security-token")
        missing = sorted(required - signed_set)
        if missing:
            return AuthFailure("IncompleteSignature", f"SignedHeaders lacks {';'.join(missing)}.")
        values: dict[str, str] = {}
        for name in signed_set:
            if name != name.lower() or not name:
                return AuthFailure("IncompleteSignature", "SignedHeaders must be lower-case names.")
            value = _header(headers, name)
            if value is None:
                return AuthFailure("IncompleteSignature", f"The signed header {name} is missing.")
            values[name] = value

        payload_hash = acs3.payload_hash(body)
        if values["x-acs-content-sha256"].strip() != payload_hash:
            return AuthFailure("SignatureDoesNotMatch", "x-acs-content-sha256 does not match the body.")

        now = self.clock()
        match = resolve_key(
            access_key_id,
            headers.get("x-acs-security-token"),
            now,
            self.access_keys,
            self.directory,
            self.sts,
        )
        if isinstance(match, AuthFailure):
            return match
        secret, account = match.secret, match.account_id

        date = self._dates.parse(values["x-acs-date"].strip())
        if date is None:
            return AuthFailure("InvalidTimeStamp.Format", account_id=account)
        signed_now = now if self.date_clock is None else self.date_clock()
        if abs(signed_now - date) > DATE_SKEW_SECONDS:
            return AuthFailure("InvalidTimeStamp.Expired", account_id=account)

        query = acs3.canonical_query_string(acs3.decode_query(raw_query))
        canonical = acs3.canonical_request(method, path, query, signed, values, payload_hash)
        to_sign = acs3.string_to_sign(canonical)
        if not hmac.compare_digest(acs3.expected_signature(secret, to_sign), parsed.signature):
            return AuthFailure("SignatureDoesNotMatch", f"server string to sign is:{to_sign}", account)

        if self.nonces.seen(values["x-acs-signature-nonce"].strip(), now):
            return AuthFailure("SignatureNonceUsed", account_id=account)
        return Verified(access_key_id=access_key_id, is_sts=match.is_sts, account_id=account)
