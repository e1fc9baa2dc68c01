"""The I/O of a credential fetch, bounded: a few daemon threads of its own for blocking work, the OIDC
token file, and one HTTP exchange with a capped body and the configured trust (``api.ca_file``).

Why not the alibabacloud-credentials providers' own HTTP: it has no bound on a body and no overall
deadline (a read timeout per socket read, which a server sending a byte every few seconds never trips),
and its token file read runs on the event loop's default thread pool (a FIFO holds one of its threads for
ever). Here an exchange is one coroutine that the caller's deadline cancels, every body is read up to
``MAX_ANSWER_BYTES``, and every file read and name lookup runs on this module's threads
(:func:`run_blocking`). What the bytes mean (the credential gate, the STS and the providers) is
:mod:`exporter.credential_fetch`'s.

Every failure is a :class:`CredentialFault` whose message names the step and the host or file, never a
value.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import threading
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from exporter import files
from exporter.redaction import register_secret

__all__ = [
    "MAX_ANSWER_BYTES",
    "MAX_CA_FILE_BYTES",
    "MAX_TOKEN_FILE_BYTES",
    "POOL_WORKERS",
    "CredentialFault",
    "exchange",
    "read_token_bytes",
    "read_token_file",
    "run_blocking",
]

T = TypeVar("T")

MAX_ANSWER_BYTES = 64 * 1024  # an STS answer is about 2 KB; a credentials-URI or metadata answer less
MAX_TOKEN_FILE_BYTES = 16 * 1024  # a projected service-account token (a JWT) is about 1 KB
MAX_CA_FILE_BYTES = 4 * 1024 * 1024  # a whole public CA bundle is about 250 KB
POOL_WORKERS = 4
_JWT_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class CredentialFault(Exception):
    """A credential could not be had; the message names the step and the field, never a value."""


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


def read_token_bytes(path: str) -> bytes:
    """The raw content of an OIDC token file, at most ``MAX_TOKEN_FILE_BYTES`` (the shared reader,
    :func:`exporter.files.read_bytes`); blocking: :func:`read_token_file` runs it on this module's threads."""
    return files.read_bytes(path, max_bytes=MAX_TOKEN_FILE_BYTES)


async def read_token_file(path: str) -> str:
    """The OIDC token in ``path`` (a JWT), registered as a secret the moment it is read."""
    try:
        raw = await run_blocking(read_token_bytes, path)
    except files.ReadError as exc:
        raise CredentialFault(f"OIDC token file {path}: {exc.reason}") from None
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


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """The trust of the library's HTTP client (the system's, which honours SSL_CERT_FILE, plus certifi's),
    and the configured CA (``api.ca_file``) added to it; blocking (files), so run on our threads."""
    context = ssl.create_default_context()
    try:
        import certifi

        context.load_verify_locations(certifi.where())
    except (ImportError, OSError):
        pass
    if ca_file:
        # Through the one bounded reader (a FIFO or a device named here cannot hold a thread), then as
        # PEM text: load_verify_locations(cafile=...) would open the path itself.
        try:
            pem = files.read_bytes(ca_file, max_bytes=MAX_CA_FILE_BYTES).decode("ascii")
            context.load_verify_locations(cadata=pem)
        except files.ReadError as exc:
            raise CredentialFault(f"CA file {ca_file}: {exc.reason}") from None
        except (UnicodeDecodeError, ssl.SSLError, ValueError):
            raise CredentialFault(f"CA file {ca_file}: no PEM certificate in it") from None
    return context


def _proxy(url: yarl.URL) -> str | None:
    """The proxy the environment names for ``url`` (HTTPS_PROXY / HTTP_PROXY, NO_PROXY), as the library."""
    host = url.host or ""
    if urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(url.scheme)


async def exchange(
    method: str,
    url: yarl.URL,
    headers: Mapping[str, str] | None = None,
    *,
    connect_timeout: float | None = None,
    use_proxy: bool = True,
    ca_file: str | None = None,
) -> tuple[int, bytes]:
    """One request: its status and body (at most ``MAX_ANSWER_BYTES``); no overall deadline of its own,
    the caller's cancels it. ``ca_file``: a CA trusted besides the system's, for an https URL. Transport
    failures are :class:`CredentialFault` naming the host only (the query may carry a token)."""
    host = url.host or "?"
    secure = url.scheme == "https"
    ssl_context: ssl.SSLContext | bool = await run_blocking(_ssl_context, ca_file) if secure else False
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
    except aiohttp.ClientConnectorCertificateError as exc:
        why = getattr(exc.certificate_error, "verify_message", None) or type(exc.certificate_error).__name__
        hint = "" if ca_file else "; a private CA is trusted with api.ca_file"
        raise CredentialFault(f"{host}: its TLS certificate is not trusted ({why}{hint})") from None
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
