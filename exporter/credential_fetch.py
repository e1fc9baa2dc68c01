"""Credential fetches: STS AssumeRole and AssumeRoleWithOIDC, a credentials URI and ECS instance
metadata, and the one gate every credential passes (:func:`credential_problem`).

Why not the alibabacloud-credentials providers: their HTTP is unbounded (see :mod:`exporter.credential_io`,
which does this module's I/O: threads, the token file, one bounded exchange), and their cache keeps an
answer the exporter then refuses. Here a fetch is one coroutine that the caller's deadline cancels, and
nothing is cached: the caller (:mod:`exporter.credentials`) keeps what passed. The requests are the
library's (the same parameters, the V1 signature from its own helpers), so the real STS and the simulated
one see no difference.

Every failure is a :class:`CredentialFault` whose message names the step and the field, never a value.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import yarl

from exporter.credential_io import CredentialFault, exchange, read_token_file, run_blocking
from exporter.errors import ApiError
from exporter.redaction import MIN_SECRET_CHARS, contains_secret, register_secret

__all__ = [
    "ECS_METADATA_URL",
    "MAX_ACCESS_KEY_ID",
    "MAX_ACCESS_KEY_SECRET",
    "MAX_SECURITY_TOKEN",
    "AssumeRole",
    "AssumeRoleWithOidc",
    "Credential",
    "CredentialFault",
    "CredentialSupply",
    "CredentialsUri",
    "EcsMetadata",
    "Fetched",
    "Provider",
    "credential_problem",
    "gate_answer",
    "run_blocking",  # the credential sources' blocking work too (exporter.credential_io)
    "sts_host",
]

MAX_ACCESS_KEY_ID = 128
MAX_ACCESS_KEY_SECRET = 256
# An STS token is 1-2 KB and travels in one request header, which servers cap near 8 KB.
MAX_SECURITY_TOKEN = 8 * 1024
MAX_ROLE_NAME = 64  # RAM role names: 1-64 of letters, digits, '.', '_' and '-'
ECS_METADATA_URL = "http://100.100.100.200"  # fixed by the platform, like the library's
ECS_TIMEOUT_SECONDS = 1.0  # the library's connect timeout for the metadata service: off ECS, fail fast
ECS_TOKEN_TTL_SECONDS = 21_600
STS_VERSION = "2015-04-01"
DEFAULT_SESSION_NAME = "ehpc-image-exporter"

# Answers of the STS that refuse the *caller's* credential (not the request): the base of a role chain is
# then dropped from its cache, so the next attempt fetches it again.
BASE_REFUSED_CODES = frozenset(
    {
        "InvalidAccessKeyId.NotFound",
        "InvalidAccessKeyId.Inactive",
        "InvalidSecurityToken.Expired",
        "InvalidSecurityToken.Malformed",
        "SignatureDoesNotMatch",
    }
)

_EXPIRATION_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_CODE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,127}")
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_ROLE_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True, slots=True)
class Credential:
    """One AccessKey pair, plus the STS token when the key is temporary; secrets stay out of repr."""

    access_key_id: str
    access_key_secret: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Fetched:
    """A credential that passed the gate, and when it expires (epoch seconds; None: not known)."""

    credential: Credential
    expires_at: float | None = None


class Provider(Protocol):
    """One way to fetch a credential; ``name`` says which in messages (no secret)."""

    name: str

    async def fetch(self) -> Fetched:
        """A fresh credential, or :class:`CredentialFault`; the caller bounds the time."""
        ...


class CredentialSupply(Protocol):
    """The base of a role chain: its current credential, and a way to drop one the STS refused."""

    async def get(self) -> Credential:
        """The current credential (cached by the supplier), or ``ApiError(code="CredentialError")``."""
        ...

    def refused(self, credential: Credential) -> None:
        """Forget ``credential``: the next :meth:`get` fetches anew."""
        ...


# --------------------------------------------------------------------------------------------------------
# The gate: one definition of a usable credential, whoever supplies it.


def _field_problem(name: str, value: object, cap: int, *, required: bool, least: int = 1) -> str | None:
    if value is None or value == "":
        return f"{name} is empty" if required else None
    if not isinstance(value, str):
        return f"{name} is not a string"
    if len(value) > cap:
        return f"{name} is longer than {cap} characters"
    # A secret shorter than any real one is a placeholder or an answer cut short; registered, it would
    # garble every output that uses the word (the same rule as the config file's, MIN_SECRET_CHARS).
    if len(value) < least:
        return f"{name} is shorter than {least} characters: not a real credential"
    # The id and the token travel in HTTP headers and the secret keys an HMAC: a control character (or a
    # lone surrogate, not printable either) cannot be sent, and would split a header line.
    if not value.isprintable():
        return f"{name} has control characters"
    return None


def credential_problem(
    access_key_id: object, secret: object, token: object, *, token_required: bool = False
) -> str | None:
    """What makes a credential unusable (None: nothing): the one rule for configured and fetched keys.

    Each secret field that passes is registered with the output gate at once, before the rest of the
    credential is judged: it exists from this moment, whatever happens to the answer that carried it.
    """
    problems = [
        _field_problem("AccessKeyId", access_key_id, MAX_ACCESS_KEY_ID, required=True),
        _field_problem(
            "AccessKeySecret", secret, MAX_ACCESS_KEY_SECRET, required=True, least=MIN_SECRET_CHARS
        ),
        _field_problem(
            "SecurityToken", token, MAX_SECURITY_TOKEN, required=token_required, least=MIN_SECRET_CHARS
        ),
    ]
    for value, problem in ((secret, problems[1]), (token, problems[2])):
        if problem is None and isinstance(value, str) and value:
            register_secret(value)
    return next((p for p in problems if p is not None), None)


def parse_expiration(value: object, now: float) -> float:
    """``Expiration`` (``%Y-%m-%dT%H:%M:%SZ``, UTC) as epoch seconds; not already past at ``now``."""
    if not isinstance(value, str) or _EXPIRATION_RE.fullmatch(value) is None:
        raise CredentialFault("Expiration is not a UTC time like 2030-01-02T15:04:05Z")
    try:
        at = calendar.timegm(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        raise CredentialFault("Expiration is not a valid date") from None
    # Whole seconds, as the library compares: an answer expiring within the current second still counts.
    if at < int(now):
        raise CredentialFault("Expiration is already past")
    return float(at)


def gate_answer(fields: object, now: float, *, token_required: bool) -> Fetched:
    """The credential of one answer's fields (``AccessKeyId``, ``AccessKeySecret``, ``SecurityToken``,
    ``Expiration``), or :class:`CredentialFault` naming the first field that fails."""
    if not isinstance(fields, dict):
        raise CredentialFault("the credentials are not a JSON object")
    ak, secret, token = fields.get("AccessKeyId"), fields.get("AccessKeySecret"), fields.get("SecurityToken")
    problem = credential_problem(ak, secret, token, token_required=token_required)
    if problem is not None or not isinstance(ak, str) or not isinstance(secret, str):
        raise CredentialFault(problem or "the credentials are malformed")
    expires_at = parse_expiration(fields.get("Expiration"), now)
    return Fetched(Credential(ak, secret, token if isinstance(token, str) and token else None), expires_at)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CredentialFault("the answer is not JSON") from None


def _refusal(status: int, body: bytes) -> tuple[str, str | None]:
    """An error answer as a message (its gated code and request id, never its text), and its code."""
    try:
        doc = _json(body)
    except CredentialFault:
        doc = None
    code = doc.get("Code") if isinstance(doc, dict) else None
    rid = doc.get("RequestId") if isinstance(doc, dict) else None
    # Shaped like a code and a request id, and carrying no secret: an STS that echoes the caller's key in
    # them (as some echo the request) must not put it in a message.
    code = code if isinstance(code, str) and _CODE_RE.fullmatch(code) and not contains_secret(code) else None
    rid = rid if isinstance(rid, str) and _REQUEST_ID_RE.fullmatch(rid) and not contains_secret(rid) else None
    text = f"HTTP {status} {code}" if code else f"HTTP {status} without a readable error code"
    return (f"{text} (request id {rid})" if rid else text), code


def sts_answer(status: int, body: bytes, now: float) -> Fetched:
    """An STS answer (``{"Credentials": {...}}``) through the gate."""
    if status != 200:
        raise CredentialFault(_refusal(status, body)[0])
    doc = _json(body)
    creds = doc.get("Credentials") if isinstance(doc, dict) else None
    if not isinstance(creds, dict):
        raise CredentialFault("the answer has no Credentials object")
    return gate_answer(creds, now, token_required=True)


def uri_answer(status: int, body: bytes, now: float) -> Fetched:
    """A credentials-URI or instance-metadata answer (``{"Code": "Success", "AccessKeyId": ...}``)."""
    if status != 200:
        raise CredentialFault(_refusal(status, body)[0])
    doc = _json(body)
    if not isinstance(doc, dict) or doc.get("Code") != "Success":
        raise CredentialFault("the answer's Code is not Success")
    if "SecurityToken" not in doc:
        raise CredentialFault("SecurityToken is missing")
    return gate_answer(doc, now, token_required=False)


def sts_host(endpoint: str | None, *, region: str | None, vpc: bool) -> str:
    """The STS to call: ``endpoint`` when configured, else the library's rule
    (``sts[-vpc].<region>.aliyuncs.com``, or ``sts.aliyuncs.com`` without a region)."""
    if endpoint:
        return endpoint
    prefix = "sts-vpc" if vpc else "sts"
    return f"{prefix}.{region}.aliyuncs.com" if region else "sts.aliyuncs.com"


def _sts_url(endpoint: str, query: Mapping[str, str]) -> yarl.URL:
    # https unless the endpoint names its scheme (a test STS over http); the query written as the
    # library's HTTP client writes it (urlencode), which is what its signature covers.
    base = endpoint.rstrip("/") if "://" in endpoint else f"https://{endpoint}"
    return yarl.URL(f"{base}/?{urllib.parse.urlencode(query)}", encoded=True)


def _timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


# --------------------------------------------------------------------------------------------------------
# The providers.


@dataclass
class AssumeRole:
    """STS AssumeRole (V1-signed) with the base's credential, as ``RamRoleArnCredentialsProvider`` does."""

    base: CredentialSupply
    role_arn: str
    endpoint: str
    session_name: str = DEFAULT_SESSION_NAME
    duration_seconds: int = 3600
    external_id: str | None = None
    clock: Callable[[], float] = time.time
    name: str = "AssumeRole"
    ca_file: str | None = None  # a private CA of the STS (api.ca_file)

    async def fetch(self) -> Fetched:
        """A credential of the role; a refusal of the base's key drops it from the base's cache."""
        from alibabacloud_credentials.utils import parameter_helper

        try:
            base = await self.base.get()
        except ApiError as exc:  # the base's own CredentialError, its message already says which
            raise CredentialFault(exc.message) from None
        now = self.clock()
        query = {
            "Action": "AssumeRole",
            "Format": "JSON",
            "Version": STS_VERSION,
            "DurationSeconds": str(self.duration_seconds),
            "RoleArn": self.role_arn,
            "RoleSessionName": self.session_name,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureVersion": "1.0",
            "Timestamp": _timestamp(now),
            "SignatureNonce": os.urandom(16).hex(),
            "AccessKeyId": base.access_key_id,
        }
        if self.external_id:
            query["ExternalId"] = self.external_id
        if base.security_token:
            query["SecurityToken"] = base.security_token
        to_sign = parameter_helper.compose_string_to_sign("GET", query)
        query["Signature"] = str(parameter_helper.sign_string(to_sign, base.access_key_secret + "&"))
        status, body = await exchange("GET", _sts_url(self.endpoint, query), ca_file=self.ca_file)
        if status != 200:
            text, code = _refusal(status, body)
            if code in BASE_REFUSED_CODES:
                self.base.refused(base)  # the base's key itself was refused: fetch it anew next time
            raise CredentialFault(text)
        return sts_answer(status, body, self.clock())


@dataclass
class AssumeRoleWithOidc:
    """STS AssumeRoleWithOIDC with the token in ``token_file``, as ``OIDCRoleArnCredentialsProvider``."""

    role_arn: str
    oidc_provider_arn: str
    token_file: str
    endpoint: str
    session_name: str = DEFAULT_SESSION_NAME
    duration_seconds: int = 3600
    clock: Callable[[], float] = time.time
    name: str = "AssumeRoleWithOIDC"
    ca_file: str | None = None  # a private CA of the STS (api.ca_file)

    async def fetch(self) -> Fetched:
        """A credential of the role for the token read now (tokens rotate on disk)."""
        token = await read_token_file(self.token_file)
        query = {
            "Action": "AssumeRoleWithOIDC",
            "Format": "JSON",
            "Version": STS_VERSION,
            "DurationSeconds": str(self.duration_seconds),
            "RoleArn": self.role_arn,
            "OIDCProviderArn": self.oidc_provider_arn,
            "OIDCToken": token,
            "RoleSessionName": self.session_name,
            "Timestamp": _timestamp(self.clock()),
        }
        status, body = await exchange("GET", _sts_url(self.endpoint, query), ca_file=self.ca_file)
        return sts_answer(status, body, self.clock())


@dataclass
class CredentialsUri:
    """``GET <uri>`` answering the library's JSON (``{"Code": "Success", "AccessKeyId": ...}``)."""

    uri: str
    clock: Callable[[], float] = time.time
    name: str = "credentials URI"
    ca_file: str | None = None  # a private CA of an https URI (api.ca_file)

    async def fetch(self) -> Fetched:
        """The credential the URI serves now."""
        try:
            url = yarl.URL(self.uri)
        except ValueError:
            raise CredentialFault("the credentials URI is not a URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise CredentialFault("the credentials URI is not an http(s) URL")
        status, body = await exchange("GET", url, ca_file=self.ca_file)
        return uri_answer(status, body, self.clock())


@dataclass
class EcsMetadata:
    """The ECS instance's RAM role credential from the metadata service (IMDSv2 token when it gives one)."""

    role_name: str | None = None
    imds_v1_disabled: bool = False
    base_url: str = ECS_METADATA_URL
    clock: Callable[[], float] = time.time
    name: str = "ECS metadata"

    async def fetch(self) -> Fetched:
        """Token, role name (unless configured), then the role's credential; each request bounded."""
        base = yarl.URL(self.base_url)
        headers: dict[str, str] = {}
        token = await self._token(base)
        if token is not None:
            headers["X-aliyun-ecs-metadata-token"] = token
        role = self.role_name or await self._role(base, headers)
        status, body = await self._get(base / "latest/meta-data/ram/security-credentials" / role, headers)
        return uri_answer(status, body, self.clock())

    async def _get(self, url: yarl.URL, headers: Mapping[str, str]) -> tuple[int, bytes]:
        return await exchange("GET", url, headers, connect_timeout=ECS_TIMEOUT_SECONDS, use_proxy=False)

    async def _token(self, base: yarl.URL) -> str | None:
        try:
            status, body = await exchange(
                "PUT",
                base / "latest/api/token",
                {"X-aliyun-ecs-metadata-token-ttl-seconds": str(ECS_TOKEN_TTL_SECONDS)},
                connect_timeout=ECS_TIMEOUT_SECONDS,
                use_proxy=False,
            )
            if status != 200:
                raise CredentialFault(f"metadata token: HTTP {status}")
            token = body.decode("ascii").strip()
            if not token or not token.isprintable() or len(token) > MAX_SECURITY_TOKEN:
                raise CredentialFault("metadata token: not a token")
        except (CredentialFault, UnicodeDecodeError):
            if self.imds_v1_disabled:
                raise
            return None  # IMDSv1, as the library falls back
        register_secret(token)
        return token

    async def _role(self, base: yarl.URL, headers: Mapping[str, str]) -> str:
        status, body = await self._get(base / "latest/meta-data/ram/security-credentials/", headers)
        if status != 200:
            raise CredentialFault(f"role name: HTTP {status}")
        try:
            role = body.decode("ascii").strip()
        except UnicodeDecodeError:
            role = ""
        if _ROLE_NAME_RE.fullmatch(role) is None:
            raise CredentialFault("role name: the metadata service named no RAM role")
        return role
