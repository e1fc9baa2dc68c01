"""``--web.config.file``: TLS, mutual TLS, basic auth and response headers in the exporter-toolkit format.

The file has the shape of the Prometheus exporter-toolkit's web configuration
(https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md)::

    tls_server_config:
      cert_file: server.crt          # or `cert:` with the PEM inline (not both)
      key_file: server.key           # or `key:` with the PEM inline (not both)
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: clients-ca.crt # or `client_ca:` with the PEM inline (not both)
      client_allowed_sans: [scraper.example]
      min_version: TLS12             # TLS10 | TLS11 | TLS12 (default) | TLS13
      max_version: TLS13
      cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
      prefer_server_cipher_suites: true
      curve_preferences: [X25519]
    http_server_config:
      http2: true
      headers: {X-Frame-Options: deny}
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt hash
    rate_limit: {interval: 1s, burst: 10}

As in the toolkit, unknown keys (and duplicate keys) are errors, relative paths are relative to the
directory of the web config file, and an empty file means plain HTTP without authentication. Every
error is a :class:`WebConfigError` with one line per problem naming the file and the field; it never
contains a password, a hash or key material.

How each option maps onto Python's :mod:`ssl` (decided here, on purpose):

- ``client_auth_type``: ``NoClientCert`` (default) -> ``CERT_NONE``; ``VerifyClientCertIfGiven`` ->
  ``CERT_OPTIONAL``; ``RequireAndVerifyClientCert`` -> ``CERT_REQUIRED``. The two verifying modes need
  ``client_ca_file`` or ``client_ca`` (Go would fall back to the system roots, which is rarely what
  anyone means for client certificates). ``RequestClientCert`` and ``RequireAnyClientCert`` (alias
  ``RequireClientCert``) are *rejected*: Python's ssl cannot ask for a client certificate without
  verifying it, and the toolkit itself documents those modes as insecure.
- ``client_allowed_sans``: checked on every request (all paths) against the verified peer certificate's
  DNS, IP, e-mail and URI SANs; a mismatch answers 403. Go rejects at the handshake; Python has no
  post-verification hook, so the check sits in the middleware. Requires ``RequireAndVerifyClientCert``.
- ``min_version`` / ``max_version``: mapped to :class:`ssl.TLSVersion` (OpenSSL's security level may
  still refuse TLS 1.0/1.1).
- ``cipher_suites``: Go names are mapped to OpenSSL names for TLS 1.2 and below (every suite of Go's
  ``tls.CipherSuites()``); TLS 1.3 suite names are accepted and, as in Go, have no effect (TLS 1.3 suites
  are not configurable). Names outside that list (including Go's insecure suites) are rejected.
- ``prefer_server_cipher_suites``: toggles ``OP_CIPHER_SERVER_PREFERENCE`` (default true).
- ``curve_preferences``: Python 3.11's ssl can restrict key exchange to exactly *one* group
  (``set_ecdh_curve``), so a list of one curve (``CurveP256``, ``CurveP384``, ``CurveP521``, ``X25519``)
  is applied and a longer list is rejected rather than silently narrowed to its first entry.
- ``http2``: accepted (boolean) and without effect: the aiohttp server speaks HTTP/1.1 only.
- ``headers``: only the toolkit's allowlist may be set (``Content-Security-Policy``, ``X-Frame-Options``
  = deny|sameorigin, ``X-Content-Type-Options`` = nosniff, ``X-XSS-Protection``,
  ``Strict-Transport-Security``); an empty value means unset. They are added to every response, 401s and
  open paths included.
- ``basic_auth_users``: bcrypt hashes (``$2a$``, ``$2b$``, ``$2y$``). Unknown users are checked against a
  dummy hash of the same cost, so timing does not reveal which users exist; successful verifications are
  cached in memory (keyed by an HMAC-SHA-256 of the pair under a per-process random key, so the cache
  holds no password and no fast unsalted hash of one), so repeated scrapes skip bcrypt. bcrypt runs in a
  worker thread, one at a time (as in the toolkit), so the event loop keeps serving. Missing, malformed
  or wrong credentials answer 401 with ``WWW-Authenticate: Basic realm="ehpc-image-exporter"``.
- ``rate_limit``: a token bucket (``interval`` is a Go duration such as ``500ms``; 0 disables) answering
  429; unlike the toolkit it does not apply to the open paths, so health probes are never throttled.

Open paths (``/healthz``, ``/readyz``) skip basic auth and the rate limit. The TLS handshake (client
certificates included) and the SAN check still apply to them: that is transport security, not a login.

Reloading: the toolkit re-reads everything on each request. Here the certificate, key and client CA
*files* are watched: on each TLS handshake (at most once per ``reload_interval_seconds``) their
stat signatures are compared; on a change a fresh context is built and handed to the connection via
``sni_callback`` (``ssl_object.context = new``), so new connections see the new certificate without a
restart. A broken new file keeps the previous context and logs ``tls_reload_failed`` (logger
``ehpc.webconfig``). Users, headers and the other options are read once; load the file again to change
them.

Why one module of over 400 lines: it is the one place that knows the exporter-toolkit file format, from
its strict parsing (every key, every Go duration and cipher name) to the TLS context and the auth
middleware built from it; splitting parse from use would put one format in two places.
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
import re
import secrets
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import bcrypt
import structlog
import yaml
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from exporter.config import yamlfile
from exporter.ratelimit import TokenBucket

__all__ = [
    "REALM",
    "RateLimit",
    "TlsServerConfig",
    "WebConfigError",
    "WebSecurity",
    "load_web_security",
]

log = structlog.get_logger("ehpc.webconfig")

REALM = "ehpc-image-exporter"
DEFAULT_RELOAD_INTERVAL_SECONDS = 1.0
# Successful (user, password) pairs kept; legitimate clients need one entry per user, the cap only
# bounds memory if someone cycles through the 72-byte-truncation equivalents of a known password.
AUTH_CACHE_SIZE = 1024
BCRYPT_MAX_PASSWORD_BYTES = 72

_TOP_KEYS = frozenset({"tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"})
_TLS_KEYS = frozenset(
    {
        "cert",
        "key",
        "client_ca",
        "cert_file",
        "key_file",
        "client_auth_type",
        "client_ca_file",
        "client_allowed_sans",
        "min_version",
        "max_version",
        "cipher_suites",
        "prefer_server_cipher_suites",
        "curve_preferences",
    }
)
_HTTP_KEYS = frozenset({"http2", "headers"})
_RATE_LIMIT_KEYS = frozenset({"interval", "burst"})

_CLIENT_AUTH: dict[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_CLIENT_AUTH_UNSUPPORTED = frozenset({"RequestClientCert", "RequireAnyClientCert", "RequireClientCert"})

_TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

# Go's tls.CipherSuites() (TLS 1.0-1.2 part) -> OpenSSL names.
_GO_CIPHERS: dict[str, str] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
# TLS 1.3 suites: valid names, not configurable (neither in Go nor in Python's ssl).
_GO_TLS13_CIPHERS = frozenset(
    {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
)

_CURVES: dict[str, str] = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
}

# The toolkit's allowlist: lower-case name -> (canonical name, allowed values or None for any).
_HEADERS: dict[str, tuple[str, frozenset[str] | None]] = {
    "strict-transport-security": ("Strict-Transport-Security", None),
    "x-content-type-options": ("X-Content-Type-Options", frozenset({"nosniff"})),
    "x-frame-options": ("X-Frame-Options", frozenset({"deny", "sameorigin"})),
    "x-xss-protection": ("X-XSS-Protection", None),
    "content-security-policy": ("Content-Security-Policy", None),
}

_BCRYPT_RE = re.compile(r"\$2[aby]\$(?P<cost>\d\d)\$[./A-Za-z0-9]{53}")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PEM_CERT = "-----BEGIN CERTIFICATE-----"
_PEM_KEY_RE = re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")


_T = TypeVar("_T")


class WebConfigError(ValueError):
    """The web config file is invalid; ``errors`` holds one line per problem, each naming the file and
    the field (the message is those lines)."""

    def __init__(self, errors: str | Sequence[str]) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True, slots=True)
class TlsServerConfig:
    """The validated ``tls_server_config`` block (paths absolute; inline PEMs never shown in repr)."""

    cert_file: str | None = None
    key_file: str | None = None
    cert_pem: str | None = field(default=None, repr=False)
    key_pem: str | None = field(default=None, repr=False)
    client_ca_file: str | None = None
    client_ca_pem: str | None = field(default=None, repr=False)
    client_auth_type: str = "NoClientCert"
    client_allowed_sans: tuple[str, ...] = ()
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    openssl_ciphers: tuple[str, ...] = ()  # empty: Python's defaults
    prefer_server_cipher_suites: bool = True
    curve: str | None = None  # OpenSSL group name

    @property
    def watched_files(self) -> tuple[str, ...]:
        """The files whose change triggers a reload of the server context."""
        return tuple(p for p in (self.cert_file, self.key_file, self.client_ca_file) if p is not None)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: one request per ``interval_seconds`` on average, bursts of ``burst``."""

    interval_seconds: float
    burst: int


# --------------------------------------------------------------------------------------------- parsing


class _Parser:
    """Turns the YAML document into validated settings, raising one-line WebConfigErrors."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.base_dir = os.path.dirname(os.path.abspath(path))

    def error(self, where: str, problem: str) -> WebConfigError:
        text = f"{self.path}: {where}: {problem}" if where else f"{self.path}: {problem}"
        return WebConfigError(" ".join(text.split()))  # one line whatever an OS/SSL message contained

    def mapping(self, value: Any, where: str, allowed: frozenset[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(where, f"must be a mapping, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.error(where, f"keys must be strings, got {_kind(key)}")
            if key not in allowed:
                raise self.error(
                    f"{where}.{key}" if where else key,
                    f"unknown key (expected one of {', '.join(sorted(allowed))})",
                )
        return value

    def string(self, value: Any, where: str) -> str | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.error(where, f"must be a string, got {_kind(value)}")
        return value

    def boolean(self, value: Any, where: str, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(where, f"must be true or false, got {_kind(value)}")
        return value

    def strings(self, value: Any, where: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(where, "must be a list of strings")
        return tuple(value)

    def file(self, value: Any, where: str) -> str | None:
        name = self.string(value, where)
        return None if name is None else os.path.join(self.base_dir, name)

    def choice(self, value: Any, where: str, choices: Mapping[str, Any], default: str) -> str:
        name = self.string(value, where) or default
        if name not in choices:
            raise self.error(where, f"unknown value {name[:64]!r} (expected one of {', '.join(choices)})")
        return name

    # -- blocks

    def tls(self, raw: Any) -> TlsServerConfig | None:
        block = self.mapping(raw, "tls_server_config", _TLS_KEYS)
        w = "tls_server_config."
        cert_pem = self.string(block.get("cert"), w + "cert")
        key_pem = self.string(block.get("key"), w + "key")
        ca_pem = self.string(block.get("client_ca"), w + "client_ca")
        cert_file = self.file(block.get("cert_file"), w + "cert_file")
        key_file = self.file(block.get("key_file"), w + "key_file")
        ca_file = self.file(block.get("client_ca_file"), w + "client_ca_file")
        auth_raw = self.string(block.get("client_auth_type"), w + "client_auth_type")
        if all(v is None or v == "" or v == [] for v in block.values()):
            return None  # an empty block means plain HTTP, as in the toolkit
        # Stricter than the toolkit, which silently serves HTTP when only e.g. min_version is set: whoever
        # wrote TLS options meant TLS, so a missing certificate is an error below, not a downgrade.
        for inline, path, name in ((cert_pem, cert_file, "cert"), (key_pem, key_file, "key")):
            if inline is not None and path is not None:
                raise self.error(w + name, f"set only one of {name} and {name}_file")
            if inline is None and path is None:
                raise self.error(w + f"{name}_file", f"missing (set {name}_file or {name})")
        if ca_pem is not None and ca_file is not None:
            raise self.error(w + "client_ca", "set only one of client_ca and client_ca_file")

        if auth_raw in _CLIENT_AUTH_UNSUPPORTED:
            raise self.error(
                w + "client_auth_type",
                f"{auth_raw} is not supported: Python's ssl cannot request a client certificate without "
                "verifying it; use RequireAndVerifyClientCert (or VerifyClientCertIfGiven)",
            )
        auth = self.choice(auth_raw, w + "client_auth_type", _CLIENT_AUTH, "NoClientCert")
        has_ca = ca_pem is not None or ca_file is not None
        if has_ca and auth == "NoClientCert":
            raise self.error(
                w + "client_auth_type", "a client CA is set but client_auth_type is NoClientCert"
            )
        if not has_ca and auth != "NoClientCert":
            raise self.error(w + "client_ca_file", f"missing (client_auth_type {auth} needs a client CA)")
        sans = self.strings(block.get("client_allowed_sans"), w + "client_allowed_sans")
        if sans and auth != "RequireAndVerifyClientCert":
            raise self.error(w + "client_allowed_sans", "needs client_auth_type RequireAndVerifyClientCert")

        min_v = _TLS_VERSIONS[
            self.choice(block.get("min_version"), w + "min_version", _TLS_VERSIONS, "TLS12")
        ]
        max_v = _TLS_VERSIONS[
            self.choice(block.get("max_version"), w + "max_version", _TLS_VERSIONS, "TLS13")
        ]
        if min_v > max_v:
            raise self.error(w + "min_version", "is greater than max_version")

        ciphers: list[str] = []
        suites = self.strings(block.get("cipher_suites"), w + "cipher_suites")
        for name in suites:
            if name in _GO_CIPHERS:
                ciphers.append(_GO_CIPHERS[name])
            elif name not in _GO_TLS13_CIPHERS:
                raise self.error(w + "cipher_suites", f"unknown or insecure cipher suite {name[:64]!r}")
        if suites and not ciphers and min_v < ssl.TLSVersion.TLSv1_3:
            raise self.error(
                w + "cipher_suites",
                "lists only TLS 1.3 suites, which leaves TLS 1.2 without any; set min_version: TLS13 instead",
            )

        curves = self.strings(block.get("curve_preferences"), w + "curve_preferences")
        for name in curves:
            if name not in _CURVES:
                raise self.error(
                    w + "curve_preferences",
                    f"unknown curve {name[:64]!r} (expected one of {', '.join(_CURVES)})",
                )
        if len(curves) > 1:
            raise self.error(
                w + "curve_preferences",
                "Python's ssl can restrict key exchange to one curve only; list exactly one",
            )

        return TlsServerConfig(
            cert_file=cert_file,
            key_file=key_file,
            cert_pem=cert_pem,
            key_pem=key_pem,
            client_ca_file=ca_file,
            client_ca_pem=ca_pem,
            client_auth_type=auth,
            client_allowed_sans=sans,
            min_version=min_v,
            max_version=max_v,
            openssl_ciphers=tuple(ciphers),
            prefer_server_cipher_suites=self.boolean(
                block.get("prefer_server_cipher_suites"), w + "prefer_server_cipher_suites", True
            ),
            curve=_CURVES[curves[0]] if curves else None,
        )

    def http(self, raw: Any) -> tuple[bool, dict[str, str]]:
        block = self.mapping(raw, "http_server_config", _HTTP_KEYS)
        http2 = self.boolean(block.get("http2"), "http_server_config.http2", True)
        raw_headers = block.get("headers")
        if raw_headers is None:
            return http2, {}
        if not isinstance(raw_headers, dict):
            raise self.error("http_server_config.headers", f"must be a mapping, got {_kind(raw_headers)}")
        headers: dict[str, str] = {}
        for name, value in raw_headers.items():
            where = f"http_server_config.headers.{name}"
            known = _HEADERS.get(name.lower()) if isinstance(name, str) else None
            if known is None:
                raise self.error(
                    where,
                    "this header can not be configured (allowed: "
                    f"{', '.join(c for c, _ in _HEADERS.values())})",
                )
            canonical, allowed = known
            text = self.string(value, where)
            if text is None:
                continue  # blank means unset, as in the toolkit
            if "\r" in text or "\n" in text:
                raise self.error(where, "must not contain line breaks")
            if allowed is not None and text.lower() not in allowed:
                raise self.error(
                    where, f"invalid value {text[:64]!r} (expected one of {', '.join(sorted(allowed))})"
                )
            if canonical in headers:
                raise self.error(where, "set more than once")
            headers[canonical] = text
        return http2, headers

    def users(self, raw: Any) -> dict[str, bytes]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.error(
                "basic_auth_users", f"must be a mapping of user to bcrypt hash, got {_kind(raw)}"
            )
        users: dict[str, bytes] = {}
        for user, hashed in raw.items():
            if not isinstance(user, str) or not user:
                raise self.error("basic_auth_users", "user names must be non-empty strings")
            where = f"basic_auth_users.{user}"
            if ":" in user:
                raise self.error(where, "a user name can not contain ':' (basic auth splits on it)")
            # The value is a secret: say what is wrong with it, never what it is.
            if not isinstance(hashed, str):
                raise self.error(where, f"must be a bcrypt hash string, got {_kind(hashed)}")
            match = _BCRYPT_RE.fullmatch(hashed.strip())
            if match is None:
                raise self.error(
                    where, "not a bcrypt hash (expected $2a$, $2b$ or $2y$, cost, 53 characters)"
                )
            if not 4 <= int(match["cost"]) <= 31:
                raise self.error(where, "bcrypt cost must be between 04 and 31")
            users[user] = hashed.strip().encode("ascii")
        return users

    def rate_limit(self, raw: Any) -> RateLimit | None:
        block = self.mapping(raw, "rate_limit", _RATE_LIMIT_KEYS)
        if not block:
            return None
        interval = self.duration(block.get("interval"), "rate_limit.interval")
        burst = block.get("burst", 0)
        if not isinstance(burst, int) or isinstance(burst, bool) or burst < 0:
            raise self.error("rate_limit.burst", "must be a non-negative integer")
        if interval == 0:
            return None  # 0 disables the limiter, as in the toolkit
        if burst < 1:
            raise self.error(
                "rate_limit.burst", "must be at least 1 when interval is set (0 blocks everything)"
            )
        return RateLimit(interval_seconds=interval, burst=burst)

    def duration(self, value: Any, where: str) -> float:
        if value is None or value == 0 or value == "0":
            return 0.0
        if isinstance(value, str):
            parts = _DURATION_PART_RE.findall(value)
            if parts and "".join(n + u for n, u in parts) == value:
                return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
        raise self.error(where, "must be a duration such as 500ms, 1s or 1m30s")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# --------------------------------------------------------------------------------------------- TLS


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


def _read_pem(parser: _Parser, path: str, where: str, marker: re.Pattern[str] | str, what: str) -> None:
    """Fail early with a readable message when a file is missing, unreadable or not the right PEM."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError as exc:
        raise parser.error(where, f"cannot read {path!r}: {exc.strerror or type(exc).__name__}") from None
    found = marker.search(text) if isinstance(marker, re.Pattern) else marker in text
    if not found:
        raise parser.error(where, f"{path!r} contains no PEM {what}")


def _check_inline(parser: _Parser, pem: str, where: str, marker: re.Pattern[str] | str, what: str) -> None:
    found = marker.search(pem) if isinstance(marker, re.Pattern) else marker in pem
    if not found:
        raise parser.error(where, f"contains no PEM {what}")


def _build_context(parser: _Parser, cfg: TlsServerConfig) -> ssl.SSLContext:
    """A fresh server context from the files as they are now; raises WebConfigError."""
    w = "tls_server_config."
    if cfg.cert_file is not None:
        _read_pem(parser, cfg.cert_file, w + "cert_file", _PEM_CERT, "certificate")
    elif cfg.cert_pem is not None:
        _check_inline(parser, cfg.cert_pem, w + "cert", _PEM_CERT, "certificate")
    if cfg.key_file is not None:
        _read_pem(parser, cfg.key_file, w + "key_file", _PEM_KEY_RE, "private key")
    elif cfg.key_pem is not None:
        _check_inline(parser, cfg.key_pem, w + "key", _PEM_KEY_RE, "private key")
    if cfg.client_ca_file is not None:
        _read_pem(parser, cfg.client_ca_file, w + "client_ca_file", _PEM_CERT, "certificate")
    elif cfg.client_ca_pem is not None:
        _check_inline(parser, cfg.client_ca_pem, w + "client_ca", _PEM_CERT, "certificate")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = cfg.min_version
    ctx.maximum_version = cfg.max_version
    with contextlib.ExitStack() as stack:
        cert = cfg.cert_file or stack.enter_context(_pem_path(cfg.cert_pem or ""))
        key = cfg.key_file or stack.enter_context(_pem_path(cfg.key_pem or ""))
        try:
            ctx.load_cert_chain(cert, key, password=_no_passphrase)
        except (ssl.SSLError, OSError) as exc:
            where = w + ("cert_file" if cfg.cert_file else "cert")
            raise parser.error(where, f"cannot load the certificate and key ({_ssl_reason(exc)})") from None
    if cfg.client_auth_type != "NoClientCert":
        try:
            if cfg.client_ca_file is not None:
                ctx.load_verify_locations(cafile=cfg.client_ca_file)
            else:
                ctx.load_verify_locations(cadata=cfg.client_ca_pem)
        except (ssl.SSLError, OSError, ValueError) as exc:
            where = w + ("client_ca_file" if cfg.client_ca_file else "client_ca")
            raise parser.error(where, f"cannot load the client CA ({_ssl_reason(exc)})") from None
    ctx.verify_mode = _CLIENT_AUTH[cfg.client_auth_type]
    if cfg.openssl_ciphers:
        try:
            ctx.set_ciphers(":".join(cfg.openssl_ciphers))
        except ssl.SSLError as exc:
            raise parser.error(
                w + "cipher_suites", f"not usable with this OpenSSL ({_ssl_reason(exc)})"
            ) from None
    if cfg.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if cfg.curve is not None:
        try:
            ctx.set_ecdh_curve(cfg.curve)
        except (ssl.SSLError, ValueError) as exc:
            raise parser.error(
                w + "curve_preferences", f"not usable with this OpenSSL ({_ssl_reason(exc)})"
            ) from None
    return ctx


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


_Signature = tuple[tuple[int, int, int, int] | None, ...]


class _ContextReloader:
    """Keeps the server context current with the certificate files, switching contexts per handshake."""

    def __init__(self, parser: _Parser, cfg: TlsServerConfig, interval_seconds: float) -> None:
        self._parser = parser
        self._cfg = cfg
        self._interval = interval_seconds
        self._lock = threading.Lock()  # handshakes may run on several loops/threads
        self._signature = self._stat()
        # Built from the files; raises WebConfigError at load time, which is what makes startup strict.
        self.base = _build_context(parser, cfg)
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
                fresh = _build_context(self._parser, self._cfg)
            except WebConfigError as exc:
                log.error("tls_reload_failed", error=str(exc), files=list(self._cfg.watched_files))
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
        *,
        tls: TlsServerConfig | None = None,
        users: Mapping[str, bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        http2: bool = True,
        rate_limit: RateLimit | None = None,
        reload_interval_seconds: float = DEFAULT_RELOAD_INTERVAL_SECONDS,
    ) -> None:
        self.path = path
        self.tls = tls
        self.headers: Mapping[str, str] = dict(headers or {})
        self.http2 = http2
        self.rate_limit = rate_limit
        self._users: dict[str, bytes] = dict(users or {})
        self._reloader = (
            _ContextReloader(_Parser(path), tls, reload_interval_seconds) if tls is not None else None
        )
        # Unknown users are checked against this, at the highest configured cost, so they take as long.
        self._dummy_hash = b""
        if self._users:
            cost = max(int(h[4:6]) for h in self._users.values())
            self._dummy_hash = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))
        self._cache_key = secrets.token_bytes(32)
        self._verified: dict[bytes, None] = {}  # insertion-ordered set of HMACs of good pairs
        self._bcrypt_slot = asyncio.Semaphore(1)  # bcrypt is CPU-bound: one at a time, as the toolkit does
        self._bucket = (
            TokenBucket(1.0 / rate_limit.interval_seconds, float(rate_limit.burst), time.monotonic())
            if rate_limit is not None
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
    parser = _Parser(path)
    try:
        # The same gate as the config file: a regular file of bounded size, read without blocking.
        text = yamlfile.read_bytes(path).decode("utf-8")
    except yamlfile.ReadError as exc:
        raise parser.error("", f"cannot read the web config file: {exc.reason}") from None
    except UnicodeDecodeError:
        raise parser.error("", "the web config file is not UTF-8") from None
    try:
        document = yamlfile.load(text)
    except yaml.MarkedYAMLError as exc:
        # Only the problem and its position: the context snippet could show a key or a hash. The
        # problems yamlfile writes itself (duplicate key, alias bomb, nesting) quote nothing else.
        mark = exc.problem_mark
        position = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        own = isinstance(exc, yamlfile.ExpansionError) or "duplicate key" in (exc.problem or "")
        problem = exc.problem if own and exc.problem else "invalid YAML"
        raise parser.error("", f"{problem}{position}") from None
    except yaml.YAMLError:
        raise parser.error("", "invalid YAML") from None
    top = parser.mapping(document, "", _TOP_KEYS)
    # Every section is checked, and every problem reported at once (as the main config does): fixing a
    # file one error per restart is what a mature loader spares its users.
    problems: list[str] = []

    def checked(parse: Callable[[Any], _T], key: str) -> _T | None:
        try:
            return parse(top.get(key))
        except WebConfigError as exc:
            problems.extend(exc.errors)
            return None

    tls = checked(parser.tls, "tls_server_config")
    http = checked(parser.http, "http_server_config")
    users = checked(parser.users, "basic_auth_users")
    rate_limit = checked(parser.rate_limit, "rate_limit")
    if problems or http is None or users is None:
        raise WebConfigError(problems)
    http2, headers = http
    return WebSecurity(
        path,
        tls=tls,
        users=users,
        headers=headers,
        http2=http2,
        rate_limit=rate_limit,
        reload_interval_seconds=reload_interval_seconds,
    )
