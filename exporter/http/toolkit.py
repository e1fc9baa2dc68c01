"""The web config at work: the TLS context (reloaded per connection), the SAN check, basic auth, rate limit.

:mod:`exporter.http.webconfig` reads and validates the file; this module applies it (on purpose):

- ``client_auth_type``: ``NoClientCert`` -> ``CERT_NONE``, ``VerifyClientCertIfGiven`` ->
  ``CERT_OPTIONAL``, ``RequireAndVerifyClientCert`` -> ``CERT_REQUIRED``. ``client_allowed_sans`` is
  checked on every request (all paths) against the verified peer certificate's DNS, IP, e-mail and URI
  SANs, a mismatch answering 403: Go rejects at the handshake, Python has no post-verification hook.
- ``min_version`` / ``max_version`` (OpenSSL's security level may still refuse TLS 1.0/1.1),
  ``cipher_suites`` (OpenSSL names), ``curve_preferences`` (``set_ecdh_curve``),
  ``prefer_server_cipher_suites`` (``OP_CIPHER_SERVER_PREFERENCE``) go to the context; ``headers`` are
  added to every response, 401s, 429s and open paths included.
- Basic auth: unknown users are checked against a dummy hash of the same cost, so timing does not reveal
  which users exist; successful checks are cached in memory, keyed by an HMAC-SHA-256 of the pair under a
  per-process random key (no password, no fast unsalted hash of one). bcrypt runs in a worker thread, one
  at a time (as in the toolkit). Missing, malformed or wrong credentials answer 401 with
  ``WWW-Authenticate: Basic realm="ehpc-image-exporter"``.
- ``rate_limit``: a token bucket answering 429; unlike the toolkit not on the open paths (``/healthz``,
  ``/readyz``), which also skip basic auth. The handshake and the SAN check apply to them: that is
  transport security, not a login.

Reloading: the toolkit re-reads everything on each request. Here the certificate, key and client CA
*files* are watched: on each TLS handshake (at most once per ``reload_interval_seconds``) their stat
signatures are compared; on a change a fresh context is built and handed to the connection via
``sni_callback``, so new connections see the new certificate without a restart. A broken new file keeps
the previous context and logs ``tls_reload_failed`` (logger ``ehpc.webconfig``). Users, headers and the
other options are read once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import os
import secrets
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import bcrypt
import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from exporter.config.errors import Problem
from exporter.http import webconfig
from exporter.http.webconfig import TlsServerConfig, WebConfigError, WebConfigFile
from exporter.ratelimit import TokenBucket

__all__ = ["REALM", "WebConfigError", "WebSecurity", "load_web_security"]

log = structlog.get_logger("ehpc.webconfig")

REALM = "ehpc-image-exporter"
DEFAULT_RELOAD_INTERVAL_SECONDS = 1.0
# Successful (user, password) pairs kept; legitimate clients need one entry per user, the cap only
# bounds memory if someone cycles through the 72-byte-truncation equivalents of a known password.
AUTH_CACHE_SIZE = 1024
BCRYPT_MAX_PASSWORD_BYTES = 72


# --------------------------------------------------------------------------------------------- TLS


class _Unusable(Exception):
    """The settings are valid but the files or this OpenSSL cannot make a context of them."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.problem = Problem(("tls_server_config", field), message)


@contextlib.contextmanager
def _pem_path(pem: str) -> Iterator[str]:
    """A path holding ``pem`` for load_cert_chain (which only takes paths): memfd if possible."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("ehpc-webconfig-pem")
        try:
            os.write(fd, pem.encode())
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    # Fallback: a private directory, removed straight after loading.
    with tempfile.TemporaryDirectory(prefix="ehpc-webconfig-") as tmp:
        file = os.path.join(tmp, "pem")
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(pem)
        yield file


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key and block the server.
    return b""


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def _build_context(cfg: TlsServerConfig) -> ssl.SSLContext:
    """A fresh server context from the files as they are now; raises _Unusable."""
    for kind in ("cert", "key", "client_ca"):
        path = getattr(cfg, f"{kind}_file")
        # Again on every reload: a file swapped for a FIFO must be refused before OpenSSL blocks on it.
        if path is not None and (problem := webconfig.pem_problem(path, kind)) is not None:
            raise _Unusable(f"{kind}_file", problem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = cfg.min_version
    ctx.maximum_version = cfg.max_version
    with contextlib.ExitStack() as stack:
        cert = cfg.cert_file or stack.enter_context(_pem_path(cfg.cert or ""))
        key = cfg.key_file or stack.enter_context(_pem_path(cfg.key or ""))
        try:
            ctx.load_cert_chain(cert, key, password=_no_passphrase)
        except (ssl.SSLError, OSError) as exc:
            field = "cert_file" if cfg.cert_file else "cert"
            raise _Unusable(field, f"cannot load the certificate and key ({_ssl_reason(exc)})") from None
    if cfg.verify_mode != ssl.CERT_NONE:
        try:
            if cfg.client_ca_file is not None:
                ctx.load_verify_locations(cafile=cfg.client_ca_file)
            else:
                ctx.load_verify_locations(cadata=cfg.client_ca)
        except (ssl.SSLError, OSError, ValueError) as exc:
            field = "client_ca_file" if cfg.client_ca_file else "client_ca"
            raise _Unusable(field, f"cannot load the client CA ({_ssl_reason(exc)})") from None
    ctx.verify_mode = cfg.verify_mode
    if cfg.openssl_ciphers:
        try:
            ctx.set_ciphers(":".join(cfg.openssl_ciphers))
        except ssl.SSLError as exc:
            raise _Unusable("cipher_suites", f"not usable with this OpenSSL ({_ssl_reason(exc)})") from None
    if cfg.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if cfg.curve is not None:
        try:
            ctx.set_ecdh_curve(cfg.curve)
        except (ssl.SSLError, ValueError) as exc:
            raise _Unusable(
                "curve_preferences", f"not usable with this OpenSSL ({_ssl_reason(exc)})"
            ) from None
    return ctx


_Signature = tuple[tuple[int, int, int, int] | None, ...]


class _ContextReloader:
    """Keeps the server context current with the certificate files, switching contexts per handshake."""

    def __init__(self, config: WebConfigFile, cfg: TlsServerConfig, interval_seconds: float) -> None:
        self._config = config
        self._cfg = cfg
        self._interval = interval_seconds
        self._lock = threading.Lock()  # handshakes may run on several loops/threads
        self._signature = self._stat()
        # Built from the files; raises _Unusable at load time, which is what makes startup strict.
        self.base = _build_context(cfg)
        self._current = self.base
        self._next_check = time.monotonic() + interval_seconds
        if cfg.watched_files:
            self.base.sni_callback = self._on_client_hello

    def _stat(self) -> _Signature:
        sig: list[tuple[int, int, int, int] | None] = []
        for path in self._cfg.watched_files:
            try:
                st = os.stat(path)
            except OSError:
                sig.append(None)
            else:
                sig.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(sig)

    def current(self) -> ssl.SSLContext:
        """The context new connections should use, reloading it first when the files changed."""
        now = time.monotonic()
        with self._lock:
            if now < self._next_check:
                return self._current
            self._next_check = now + self._interval
            signature = self._stat()
            if signature == self._signature:
                return self._current
            # Remember the signature even on failure: a broken file is reported once, not every second.
            self._signature = signature
            try:
                fresh = _build_context(self._cfg)
            except _Unusable as exc:
                error = str(self._config.refuse([exc.problem]))
                log.error("tls_reload_failed", error=error, files=list(self._cfg.watched_files))
                return self._current
            self._current = fresh
            log.info("tls_reloaded", files=list(self._cfg.watched_files))
            return fresh

    def _on_client_hello(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        # Any exception here would abort the handshake with an opaque alert; keep serving instead.
        try:
            ctx = self.current()
            if ctx is not self.base:
                ssl_object.context = ctx
        except Exception as exc:  # the server must not drop connections over a reload bug
            log.error("tls_reload_failed", error=f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------------------------- auth


def _parse_basic(header: str | None) -> tuple[str, bytes] | None:
    """(user, password bytes) from an ``Authorization: Basic`` header, or None if absent or malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # bad base64, or not UTF-8 (UnicodeDecodeError is a ValueError)
        return None
    user, colon, password = decoded.partition(":")
    if not colon:
        return None
    return user, password.encode("utf-8")


def _san_values(peer: Mapping[str, Any]) -> list[str]:
    names = {"DNS", "IP Address", "email", "URI"}
    return [str(v).strip() for k, v in peer.get("subjectAltName", ()) if k in names]


def _san_matches(value: str, allowed: str) -> bool:
    if value == allowed:
        return True
    # Python prints IPv6 SANs uncompressed ("2001:DB8:0:0:0:0:0:1"); compare addresses, not spellings.
    try:
        return ipaddress.ip_address(value) == ipaddress.ip_address(allowed)
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------- API


class WebSecurity:
    """TLS context and request middleware built from one web config file."""

    def __init__(
        self,
        path: str,
        config: WebConfigFile,
        *,
        reload_interval_seconds: float = DEFAULT_RELOAD_INTERVAL_SECONDS,
    ) -> None:
        self.path = path
        self.tls = config.tls_server_config
        self.headers: Mapping[str, str] = config.http_server_config.headers
        self.http2 = config.http_server_config.http2
        limit = config.rate_limit
        self._users = {user: hashed.encode("ascii") for user, hashed in config.basic_auth_users.items()}
        self._reloader = (
            _ContextReloader(config, self.tls, reload_interval_seconds) if self.tls is not None else None
        )
        # Unknown users are checked against this, at the highest configured cost, so they take as long.
        self._dummy_hash = b""
        if self._users:
            cost = max(int(h[4:6]) for h in self._users.values())
            self._dummy_hash = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))
        self._cache_key = secrets.token_bytes(32)
        self._verified: dict[bytes, None] = {}  # insertion-ordered set of HMACs of good pairs
        self._bcrypt_slot = asyncio.Semaphore(1)  # bcrypt is CPU-bound: one at a time, as the toolkit does
        self._bucket = (  # an interval of 0 disables the limiter, as in the toolkit
            TokenBucket(1.0 / limit.interval, float(limit.burst), time.monotonic())
            if limit is not None and limit.interval > 0
            else None
        )

    def __repr__(self) -> str:
        return (
            f"WebSecurity(path={self.path!r}, tls={self.tls_enabled}, "
            f"basic_auth_users={sorted(self._users)!r}, headers={sorted(self.headers)!r})"
        )

    @property
    def tls_enabled(self) -> bool:
        """Whether the server must serve HTTPS."""
        return self._reloader is not None

    @property
    def basic_auth_enabled(self) -> bool:
        """Whether requests outside the open paths need basic auth credentials."""
        return bool(self._users)

    @property
    def users(self) -> frozenset[str]:
        """The configured basic auth user names (never the hashes)."""
        return frozenset(self._users)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server context (None without TLS); it follows certificate/key/CA file changes by itself."""
        return self._reloader.base if self._reloader is not None else None

    def middleware(self, open_paths: frozenset[str]) -> Middleware:
        """aiohttp middleware: SAN check, rate limit, basic auth (not on ``open_paths``), extra headers."""

        @web.middleware
        async def web_security(request: web.Request, handler: Handler) -> web.StreamResponse:
            try:
                response = await self._guard(request, handler, open_paths)
            except web.HTTPException as exc:
                self._add_headers(exc)
                raise
            self._add_headers(response)
            return response

        return web_security

    def _add_headers(self, response: web.StreamResponse) -> None:
        if self.headers and not response.prepared:
            response.headers.update(self.headers)

    async def _guard(
        self, request: web.Request, handler: Handler, open_paths: frozenset[str]
    ) -> web.StreamResponse:
        if self.tls is not None and self.tls.client_allowed_sans and not self._peer_san_allowed(request):
            return web.Response(status=403, text="Forbidden: client certificate SAN not allowed\n")
        if request.path in open_paths:
            return await handler(request)
        if self._bucket is not None and not self._bucket.allow(time.monotonic()):
            return web.Response(status=429, text="Too Many Requests\n")
        if self._users and not await self.authenticate(request.headers.get(hdrs.AUTHORIZATION)):
            return web.Response(
                status=401,
                text="Unauthorized\n",
                headers={hdrs.WWW_AUTHENTICATE: f'Basic realm="{REALM}"'},
            )
        return await handler(request)

    def _peer_san_allowed(self, request: web.Request) -> bool:
        if self.tls is None:
            return True
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        peer = ssl_object.getpeercert() if ssl_object is not None else None
        if not peer:
            return False
        values = _san_values(peer)
        return any(_san_matches(v, a) for v in values for a in self.tls.client_allowed_sans)

    async def authenticate(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries valid basic auth credentials."""
        if not self._users:
            return True
        creds = _parse_basic(authorization)
        if creds is None:
            return False
        user, password = creds
        user_bytes = user.encode("utf-8")
        # Length-prefixed so no (user, password) split can collide with another.
        key = hmac.new(
            self._cache_key, len(user_bytes).to_bytes(4, "big") + user_bytes + password, hashlib.sha256
        ).digest()
        if key in self._verified:
            return True
        hashed = self._users.get(user)
        too_long = len(password) > BCRYPT_MAX_PASSWORD_BYTES  # bcrypt>=5 raises; Go refuses such passwords
        async with self._bcrypt_slot:
            if key in self._verified:  # a concurrent scrape with the same credentials got here first
                return True
            ok = await asyncio.to_thread(
                bcrypt.checkpw,
                password[:BCRYPT_MAX_PASSWORD_BYTES],
                self._dummy_hash if hashed is None or too_long else hashed,
            )
        if not ok or hashed is None or too_long:
            return False
        self._verified[key] = None
        while len(self._verified) > AUTH_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]
        return True


def load_web_security(
    path: str, *, reload_interval_seconds: float = DEFAULT_RELOAD_INTERVAL_SECONDS
) -> WebSecurity:
    """Read and validate an exporter-toolkit web config file; raises WebConfigError (a ValueError)."""
    config = webconfig.load(path)
    try:
        return WebSecurity(path, config, reload_interval_seconds=reload_interval_seconds)
    except _Unusable as exc:  # a key that does not match its certificate, a cipher this OpenSSL lacks
        raise config.refuse([exc.problem]) from None
