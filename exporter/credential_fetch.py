"""Bounded credential fetches: STS AssumeRole and AssumeRoleWithOIDC, a credentials URI, ECS instance
metadata and the OIDC token file, and the one gate every credential passes (:func:`credential_problem`).

Why not the alibabacloud-credentials providers' own HTTP: it has no bound on a body and no overall
deadline (a read timeout per socket read, which a server sending a byte every few seconds never trips),
its token file read runs on the event loop's default thread pool (a FIFO holds one of its threads for
ever), and its cache keeps an answer the exporter then refuses. Here a fetch is one coroutine that the
caller's deadline cancels, every body is read up to a cap, every file read and name lookup runs on this
module's own few daemon threads (:func:`run_blocking`), and nothing is cached: the caller
(:mod:`exporter.credentials`) keeps what passed. The requests are the library's (the same parameters,
the V1 signature from its own helpers), so the real STS and the simulated one see no difference.

Every failure is a :class:`CredentialFault` whose message names the step and the field, never a value.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import os
import re
import socket
import ssl
import stat
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from exporter.config.yamlfile import file_kind
from exporter.errors import ApiError
from exporter.redaction import contains_secret, register_secret

__all__ = [
    "ECS_METADATA_URL",
    "MAX_ACCESS_KEY_ID",
    "MAX_ACCESS_KEY_SECRET",
    "MAX_ANSWER_BYTES",
    "MAX_SECURITY_TOKEN",
    "MAX_TOKEN_FILE_BYTES",
    "POOL_WORKERS",
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
    "read_token_file",
    "run_blocking",
    "sts_host",
]

T = TypeVar("T")

MAX_ANSWER_BYTES = 64 * 1024  # an STS answer is about 2 KB; a credentials-URI or metadata answer less
MAX_TOKEN_FILE_BYTES = 16 * 1024  # a projected service-account token (a JWT) is about 1 KB
MAX_ACCESS_KEY_ID = 128
MAX_ACCESS_KEY_SECRET = 256
# An STS token is 1-2 KB and travels in one request header, which servers cap near 8 KB.
MAX_SECURITY_TOKEN = 8 * 1024
MAX_ROLE_NAME = 64  # RAM role names: 1-64 of letters, digits, '.', '_' and '-'
POOL_WORKERS = 4
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
_JWT_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class CredentialFault(Exception):
    """A credential could not be had; the message names the step and the field, never a value."""


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


def _field_problem(name: str, value: object, cap: int, *, required: bool) -> str | None:
    if value is None or value == "":
        return f"{name} is empty" if required else None
    if not isinstance(value, str):
        return f"{name} is not a string"
    if len(value) > cap:
        return f"{name} is longer than {cap} characters"
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
        _field_problem("AccessKeySecret", secret, MAX_ACCESS_KEY_SECRET, required=True),
        _field_problem("SecurityToken", token, MAX_SECURITY_TOKEN, required=token_required),
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


# --------------------------------------------------------------------------------------------------------
# Blocking work on a few daemon threads of our own.

_slots = threading.BoundedSemaphore(POOL_WORKERS)


async def run_blocking(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on one of at most ``POOL_WORKERS`` daemon threads; awaiting it can be cancelled.

    Not the event loop's default pool, which serves gzip, reloads and the state file: a stuck read here
    (a hung network mount) holds one of these threads, never one of those. Daemon threads: a stuck one
    never holds up the process's exit (``check`` returns). When all are held, the call fails at once.
    """
    if not _slots.acquire(blocking=False):
        raise CredentialFault(f"all {POOL_WORKERS} credential worker threads are busy (a read is stuck)")
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():  # the caller gave up (its deadline)
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting coroutine, whatever it is
            error = exc
        finally:
            _slots.release()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="ehpc-credentials", daemon=True).start()
    return await future


def _read_regular_file(path: str, cap: int) -> bytes:
    """At most ``cap`` bytes of the regular file at ``path``; anything else is refused before a read.

    Opened non-blocking, so a FIFO without a writer cannot hold the open; then only a regular file is
    read (a FIFO, a device such as /dev/zero, a directory or a socket is refused by its type), and never
    more than ``cap`` + 1 bytes, whatever its size says (it may grow while read).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CredentialFault(f"is not a regular file ({file_kind(mode)})")
        chunks: list[bytes] = []
        size = 0
        while size <= cap:
            chunk = os.read(fd, cap + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > cap:
            raise CredentialFault(f"is larger than {cap} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


async def read_token_file(path: str) -> str:
    """The OIDC token in ``path`` (a JWT), registered as a secret the moment it is read."""
    try:
        raw = await run_blocking(_read_regular_file, path, MAX_TOKEN_FILE_BYTES)
    except CredentialFault as exc:
        raise CredentialFault(f"OIDC token file {path}: {exc}") from None
    except FileNotFoundError:
        raise CredentialFault(f"OIDC token file {path}: not found") from None
    except PermissionError:
        raise CredentialFault(f"OIDC token file {path}: permission denied") from None
    except OSError as exc:
        raise CredentialFault(f"OIDC token file {path}: cannot be read ({exc.strerror or 'error'})") from None
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise CredentialFault(f"OIDC token file {path}: not a JWT (non-ASCII bytes)") from None
    if _JWT_RE.fullmatch(token) is None:
        raise CredentialFault(f"OIDC token file {path}: not a JWT")
    register_secret(token)
    return token


# --------------------------------------------------------------------------------------------------------
# HTTP: one short-lived session per fetch, a capped body, lookups on our threads.


class _PoolResolver(AbstractResolver):
    """Name lookups on :func:`run_blocking`'s threads (aiohttp's own resolver uses the default pool)."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        infos = await run_blocking(
            socket.getaddrinfo, host, port, family, socket.SOCK_STREAM, 0, socket.AI_ADDRCONFIG
        )
        return [
            ResolveResult(
                hostname=host,
                host=str(address[0]),
                port=int(address[1]),
                family=fam,
                proto=proto,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for fam, _type, proto, _name, address in infos
            if fam in (socket.AF_INET, socket.AF_INET6)
        ]

    async def close(self) -> None:
        """Nothing to release."""


def _ssl_context() -> ssl.SSLContext:
    # The trust of the library's HTTP client: the system's (which honours SSL_CERT_FILE) plus certifi's.
    context = ssl.create_default_context()
    try:
        import certifi

        context.load_verify_locations(certifi.where())
    except (ImportError, OSError):
        pass
    return context


def _proxy(url: yarl.URL) -> str | None:
    """The proxy the environment names for ``url`` (HTTPS_PROXY / HTTP_PROXY, NO_PROXY), as the library."""
    host = url.host or ""
    if urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(url.scheme)


async def _exchange(
    method: str,
    url: yarl.URL,
    headers: Mapping[str, str] | None = None,
    *,
    connect_timeout: float | None = None,
    use_proxy: bool = True,
) -> tuple[int, bytes]:
    """One request: its status and body (at most ``MAX_ANSWER_BYTES``); no overall deadline of its own,
    the caller's cancels it. Transport failures are :class:`CredentialFault` naming the host only (the
    query may carry a token)."""
    host = url.host or "?"
    ssl_context: ssl.SSLContext | bool = await run_blocking(_ssl_context) if url.scheme == "https" else False
    connector = aiohttp.TCPConnector(ssl=ssl_context, resolver=_PoolResolver(), force_close=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                auto_decompress=False,  # the cap is the wire size: no compressed bomb
                skip_auto_headers=("Accept-Encoding",),
            ) as session,
            session.request(
                method,
                url,
                headers=dict(headers or {}),
                allow_redirects=False,
                proxy=_proxy(url) if use_proxy else None,
            ) as resp,
        ):
            return resp.status, await _bounded_body(resp)
    except CredentialFault:
        raise
    except TimeoutError:  # aiohttp's connect timeout (the caller's deadline cancels instead)
        raise CredentialFault(f"{host}: no connection within {connect_timeout or 0:g}s") from None
    except aiohttp.ClientConnectorError as exc:
        raise CredentialFault(f"{host}: cannot connect ({exc.os_error.strerror or 'refused'})") from None
    except aiohttp.ClientPayloadError:
        raise CredentialFault(f"{host}: truncated answer") from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        raise CredentialFault(f"{host}: {type(exc).__name__}") from None


async def _bounded_body(resp: aiohttp.ClientResponse) -> bytes:
    length = resp.content_length
    if length is not None and length > MAX_ANSWER_BYTES:
        resp.close()
        raise CredentialFault(
            f"{resp.url.host}: answer larger than {MAX_ANSWER_BYTES} bytes ({length} announced)"
        )
    buf = bytearray()
    while chunk := await resp.content.readany():
        buf += chunk
        if len(buf) > MAX_ANSWER_BYTES:
            resp.close()  # drop the connection rather than drain the rest
            raise CredentialFault(f"{resp.url.host}: answer larger than {MAX_ANSWER_BYTES} bytes")
    return bytes(buf)


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
        status, body = await _exchange("GET", _sts_url(self.endpoint, query))
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
        status, body = await _exchange("GET", _sts_url(self.endpoint, query))
        return sts_answer(status, body, self.clock())


@dataclass
class CredentialsUri:
    """``GET <uri>`` answering the library's JSON (``{"Code": "Success", "AccessKeyId": ...}``)."""

    uri: str
    clock: Callable[[], float] = time.time
    name: str = "credentials URI"

    async def fetch(self) -> Fetched:
        """The credential the URI serves now."""
        try:
            url = yarl.URL(self.uri)
        except ValueError:
            raise CredentialFault("the credentials URI is not a URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise CredentialFault("the credentials URI is not an http(s) URL")
        status, body = await _exchange("GET", url)
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
        return await _exchange("GET", url, headers, connect_timeout=ECS_TIMEOUT_SECONDS, use_proxy=False)

    async def _token(self, base: yarl.URL) -> str | None:
        try:
            status, body = await _exchange(
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
