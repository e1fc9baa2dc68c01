"""``--web.config.file``: the exporter-toolkit web configuration, read into frozen pydantic models.

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
      http2: true                    # accepted, without effect: the aiohttp server speaks HTTP/1.1
      headers: {X-Frame-Options: deny}
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt hash
    rate_limit: {interval: 1s, burst: 10}

As in the toolkit, unknown and duplicate keys are errors, relative paths are relative to the file's
directory, a null (or, for a text field, empty) value means unset, and an empty file means plain HTTP
without authentication. The file passes the config file's YAML gate (:mod:`exporter.config.yamlfile`) and
its problems the config file's translation (:mod:`exporter.config.errors`): :class:`WebConfigError` holds
every problem at once, one ``<file>:<line>:<column>: <field>: <message>`` line each, in file order, never
a password, a hash or key material. A block's cross-field rules and file references are judged once its
fields are valid. The runtime (TLS context, auth, rate limit) is :mod:`exporter.http.toolkit`.

Refusals decided here, where Python's ssl cannot do what Go's does, or the toolkit is silently lenient:

- ``client_auth_type`` ``RequestClientCert`` and ``RequireAnyClientCert`` (``RequireClientCert``): Python
  cannot ask for a client certificate without verifying it (the toolkit calls those modes insecure). The
  verifying modes need a client CA (Go would fall back to the system roots); ``client_allowed_sans``
  needs ``RequireAndVerifyClientCert``.
- ``cipher_suites``: Go's ``tls.CipherSuites()`` names only (TLS 1.3 names accepted and, as in Go,
  without effect), and not TLS 1.3 names only while TLS 1.2 is allowed. ``curve_preferences``: one curve
  (Python restricts key exchange to exactly one group), not a longer list silently narrowed.
- TLS options without a certificate (the toolkit would serve plain HTTP); headers outside the toolkit's
  allowlist; anything but a bcrypt hash (``$2a$``, ``$2b$``, ``$2y$``, cost 04-31) for a user, or a user
  name with ``:``; a ``rate_limit`` with an ``interval`` (a Go duration, 0 disables) and no ``burst``.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable, Sequence
from typing import Annotated, Any, ClassVar, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from exporter.config import located as errors
from exporter.config import yamlfile
from exporter.config.errors import Loc, Problem, shown
from exporter.redaction import BIDI_CONTROLS, SURROGATE_RE

__all__ = [
    "HttpServerConfig",
    "RateLimit",
    "TlsServerConfig",
    "WebConfigError",
    "WebConfigFile",
    "load",
    "pem_problem",
]

MAX_PEM_BYTES = 4 * 1024 * 1024  # a certificate, a key, a CA bundle (the system one is about 200 kB)
MAX_FILE_BYTES = 1024 * 1024  # 10,000 users or an inline CA bundle fit; the config file's gate allows 32 MB
MAX_NODES = 100_000  # 10,000 users are 20,001 nodes; aliases expanded (the config file's gate allows 2M)
MAX_TEXT_CHARS = 4096  # a path, a SAN, a header value
MAX_USERS = 10_000
MAX_LIST_ITEMS = 1000
MAX_BURST = 1_000_000
MAX_INTERVAL_SECONDS = 366 * 86_400.0

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
_CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}
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
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
# Per PEM field: what it must hold, and the marker that says it does.
_PEM: dict[str, tuple[str, re.Pattern[str]]] = {
    "cert": ("certificate", re.compile("-----BEGIN CERTIFICATE-----")),
    "key": ("private key", re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")),
    "client_ca": ("certificate", re.compile("-----BEGIN CERTIFICATE-----")),
}
# A control character splits an error or log line, a bidi control makes one read differently, a lone
# surrogate cannot be encoded into a path or a header: no name, path or header value has a use for them.
_BAD_CHARS_RE = re.compile(f"[\x00-\x1f\x7f-\x9f\u061c{BIDI_CONTROLS}]|{SURROGATE_RE.pattern}")


class WebConfigError(ValueError):
    """The web config file is invalid; ``errors`` holds one line per problem, each naming file and field."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.errors: list[str] = list(lines)
        super().__init__("\n".join(self.errors))


def _refuse_all(title: str, problems: Sequence[tuple[str, str]]) -> None:
    """Raise every problem of a rule at once, each at its own key under the validated value."""
    custom = [(PydanticCustomError("web_config", "{m}", {"m": message}), key) for key, message in problems]
    details = [InitErrorDetails(type=error, loc=(key,), input=None) for error, key in custom]
    if details:
        raise ValidationError.from_exception_data(title, details)


def _plain(value: str) -> str:
    if _BAD_CHARS_RE.search(value):
        raise ValueError("must not contain control or bidi characters")
    return value


def _at_most(count: int) -> BeforeValidator:
    """Refuse a collection longer than ``count`` before its items are validated (and each one reported)."""

    def check(value: Any) -> Any:
        if isinstance(value, list | dict) and len(value) > count:
            raise ValueError(f"must have at most {count} item(s)")
        return value

    return BeforeValidator(check)


def _without_nulls(value: Any) -> Any:
    """A mapping without its null values (unset, as in the toolkit)."""
    return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value


def _one_of(names: Sequence[str], unsupported: frozenset[str] = frozenset()) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value in unsupported:
            raise ValueError(
                f"{value} is not supported: Python's ssl cannot request a client certificate without "
                "verifying it; use RequireAndVerifyClientCert (or VerifyClientCertIfGiven)"
            )
        if value not in names:
            raise ValueError(f"unknown value{shown(value)} (expected one of {', '.join(names)})")
        return value

    return check


def _tls_version(value: Any) -> Any:
    if isinstance(value, str):
        _one_of(list(_TLS_VERSIONS))(value)
        return _TLS_VERSIONS[value]
    raise ValueError("must be a string")


def _cipher(name: str) -> str:
    if name not in _GO_CIPHERS and name not in _GO_TLS13_CIPHERS:
        raise ValueError(f"unknown or insecure cipher suite{shown(name)}")
    return name


def _user(name: str) -> str:
    if not name:
        raise ValueError("a user name must not be empty")
    if ":" in name:
        raise ValueError(f"user name{shown(name)} can not contain ':' (basic auth splits on it)")
    if len(name) > MAX_TEXT_CHARS or _BAD_CHARS_RE.search(name):
        raise ValueError("a user name must be printable text of at most 4096 characters")
    return name


def _bcrypt(hashed: str) -> str:
    # The value is a secret: say what is wrong with it, never what it is.
    match = _BCRYPT_RE.fullmatch(hashed.strip())
    if match is None:
        raise ValueError("not a bcrypt hash (expected $2a$, $2b$ or $2y$, cost, 53 characters)")
    if not 4 <= int(match["cost"]) <= 31:
        raise ValueError("bcrypt cost must be between 04 and 31")
    return hashed.strip()


def _duration(value: Any) -> Any:
    """A Go duration (``500ms``, ``1m30s``) in seconds; 0 (or "0") disables."""
    if (value == 0 and not isinstance(value, bool)) or value == "0":
        return 0.0
    if isinstance(value, str) and len(value) <= 64:
        parts = _DURATION_PART_RE.findall(value)
        if parts and "".join(n + u for n, u in parts) == value:
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
            if seconds > MAX_INTERVAL_SECONDS:
                raise ValueError(f"must be at most {MAX_INTERVAL_SECONDS / 3600:.0f}h")
            return seconds
    raise ValueError("must be a duration such as 500ms, 1s or 1m30s")


def _headers(headers: dict[str, str]) -> dict[str, str]:
    """The allowlisted headers under their canonical names, blank ones left out (unset, as in the toolkit)."""
    out: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    allowed_names = ", ".join(c for c, _ in _HEADERS.values())
    for name, value in headers.items():
        known = _HEADERS.get(name.lower())
        if known is None:
            problems.append((name, f"this header can not be configured (allowed: {allowed_names})"))
            continue
        canonical, allowed = known
        if not value:
            continue
        if allowed is not None and value.lower() not in allowed:
            expected = ", ".join(sorted(allowed))
            problems.append((name, f"invalid value{shown(value)} (expected one of {expected})"))
        elif canonical in out:
            problems.append((name, "set more than once"))
        else:
            out[canonical] = value
    _refuse_all("headers", problems)
    return out


PlainText = Annotated[str, Strict(), Field(max_length=MAX_TEXT_CHARS), AfterValidator(_plain)]
Pem = Annotated[str, Strict(), Field(max_length=MAX_PEM_BYTES)]
TlsVersion = Annotated[ssl.TLSVersion, BeforeValidator(_tls_version)]
ClientAuth = Annotated[str, Strict(), AfterValidator(_one_of(list(_CLIENT_AUTH), _CLIENT_AUTH_UNSUPPORTED))]
CipherSuite = Annotated[str, Strict(), AfterValidator(_cipher)]
Curve = Annotated[str, Strict(), AfterValidator(_one_of(list(_CURVES)))]
UserName = Annotated[str, Strict(), AfterValidator(_user)]
BcryptHash = Annotated[str, Strict(), Field(max_length=128), AfterValidator(_bcrypt)]
StrictBool = Annotated[bool, Strict()]
Headers = Annotated[
    dict[str, PlainText], BeforeValidator(_without_nulls), _at_most(20), AfterValidator(_headers)
]
Users = Annotated[dict[UserName, BcryptHash], _at_most(MAX_USERS)]


def pem_problem(path: str, kind: str) -> str | None:
    """Why the file ``path`` cannot be the ``kind`` (cert, key, client_ca) PEM, or None; quotes nothing
    from the file, and a FIFO or a device is refused without blocking (the reader of the YAML gate)."""
    what, marker = _PEM[kind]
    try:
        text = yamlfile.read_bytes(path, max_bytes=MAX_PEM_BYTES).decode("utf-8", "replace")
    except yamlfile.ReadError as exc:
        return f"cannot read {path!r}: {exc.reason}"
    return None if marker.search(text) else f"{path!r} contains no PEM {what}"


class _In(BaseModel):
    """A block of the file: frozen, unknown keys refused, null (and for ``_BLANK`` fields '') unset."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    _BLANK: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _unset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {k: v for k, v in data.items() if v is not None and not (k in cls._BLANK and v == "")}


class TlsServerConfig(_In):
    """``tls_server_config``: file names resolved next to the web config file, inline PEMs never in repr."""

    _BLANK: ClassVar = frozenset(("cert", "key", "client_ca", "cert_file", "key_file", "client_ca_file"))
    _BLANK |= {"client_auth_type", "min_version", "max_version"}
    cert_file: PlainText | None = None
    key_file: PlainText | None = None
    client_ca_file: PlainText | None = None
    cert: Pem | None = Field(default=None, repr=False)
    key: Pem | None = Field(default=None, repr=False)
    client_ca: Pem | None = Field(default=None, repr=False)
    client_auth_type: ClientAuth = "NoClientCert"
    client_allowed_sans: Annotated[tuple[PlainText, ...], _at_most(MAX_LIST_ITEMS)] = ()
    min_version: TlsVersion = ssl.TLSVersion.TLSv1_2
    max_version: TlsVersion = ssl.TLSVersion.TLSv1_3
    cipher_suites: Annotated[tuple[CipherSuite, ...], _at_most(MAX_LIST_ITEMS)] = ()
    prefer_server_cipher_suites: StrictBool = True
    curve_preferences: Annotated[tuple[Curve, ...], _at_most(MAX_LIST_ITEMS)] = ()

    @field_validator("cert_file", "key_file", "client_ca_file")
    @classmethod
    def _resolve(cls, name: str | None, info: ValidationInfo) -> str | None:
        base = (info.context or {}).get("base_dir", ".")
        return None if name is None else os.path.join(os.path.abspath(base), name)

    @model_validator(mode="after")
    def _rules(self) -> Self:
        problems: list[tuple[str, str]] = []
        for name in ("cert", "key", "client_ca"):
            inline, path = getattr(self, name), getattr(self, f"{name}_file")
            if inline is not None and path is not None:
                problems.append((name, f"set only one of {name} and {name}_file"))
            elif inline is None and path is None and name != "client_ca":
                problems.append((f"{name}_file", f"missing (set {name}_file or {name})"))
            elif path is not None and (problem := pem_problem(path, name)) is not None:
                problems.append((f"{name}_file", problem))
            elif inline is not None and not _PEM[name][1].search(inline):
                problems.append((name, f"contains no PEM {_PEM[name][0]}"))
        auth, has_ca = self.client_auth_type, self.client_ca is not None or self.client_ca_file is not None
        if has_ca and auth == "NoClientCert":
            problems.append(("client_auth_type", "a client CA is set but client_auth_type is NoClientCert"))
        if not has_ca and auth != "NoClientCert":
            problems.append(("client_ca_file", f"missing (client_auth_type {auth} needs a client CA)"))
        if self.client_allowed_sans and auth != "RequireAndVerifyClientCert":
            problems.append(("client_allowed_sans", "needs client_auth_type RequireAndVerifyClientCert"))
        if self.min_version > self.max_version:
            problems.append(("min_version", "is greater than max_version"))
        if self.cipher_suites and not self.openssl_ciphers and self.min_version < ssl.TLSVersion.TLSv1_3:
            only13 = "lists only TLS 1.3 suites, which leaves TLS 1.2 without any; set min_version: TLS13"
            problems.append(("cipher_suites", only13))
        if len(self.curve_preferences) > 1:
            problems.append(("curve_preferences", "list one: Python's ssl restricts key exchange to one"))
        _refuse_all("tls_server_config", problems)
        return self

    @property
    def verify_mode(self) -> ssl.VerifyMode:
        """Whether the handshake asks for (and verifies) a client certificate."""
        return _CLIENT_AUTH[self.client_auth_type]

    @property
    def openssl_ciphers(self) -> tuple[str, ...]:
        """The TLS 1.2-and-below suites by OpenSSL name (empty: Python's defaults)."""
        return tuple(_GO_CIPHERS[name] for name in self.cipher_suites if name in _GO_CIPHERS)

    @property
    def curve(self) -> str | None:
        """The one key-exchange group by OpenSSL name, if restricted."""
        return _CURVES[self.curve_preferences[0]] if self.curve_preferences else None

    @property
    def watched_files(self) -> tuple[str, ...]:
        """The files whose change triggers a reload of the server context."""
        return tuple(p for p in (self.cert_file, self.key_file, self.client_ca_file) if p is not None)


class HttpServerConfig(_In):
    """``http_server_config``: ``http2`` (accepted, without effect) and the allowlisted response headers."""

    http2: StrictBool = True
    headers: Headers = Field(default_factory=dict)


class RateLimit(_In):
    """``rate_limit``: one request per ``interval`` seconds on average, bursts of ``burst`` (0 disables)."""

    interval: Annotated[float, BeforeValidator(_duration)] = 0.0
    burst: Annotated[int, Strict(), Field(ge=0, le=MAX_BURST)] = 0

    @model_validator(mode="after")
    def _rules(self) -> Self:
        if self.interval > 0 and self.burst < 1:
            _refuse_all("rate_limit", [("burst", "must be at least 1 when interval is set (0 blocks all)")])
        return self


def _blank_tls(block: Any) -> Any:
    """A block of known keys with nothing set means plain HTTP, as in the toolkit."""
    if isinstance(block, dict) and all(
        k in TlsServerConfig.model_fields and v in (None, "", []) for k, v in block.items()
    ):
        return None
    return block


class WebConfigFile(_In):
    """The whole web config file, validated; :meth:`refuse` reports later problems (a key that does not
    match its certificate) located in the same file."""

    tls_server_config: Annotated[TlsServerConfig | None, BeforeValidator(_blank_tls)] = None
    http_server_config: HttpServerConfig = Field(default_factory=HttpServerConfig)
    basic_auth_users: Users = Field(default_factory=dict, repr=False)
    rate_limit: RateLimit | None = None
    _path: str = PrivateAttr(default="")
    _text: str = PrivateAttr(default="")

    def refuse(self, problems: Sequence[Problem]) -> WebConfigError:
        """The error for problems found after validation, located in the file this was read from."""
        secrets = list(self.basic_auth_users.values())
        if self.tls_server_config is not None and self.tls_server_config.key is not None:
            secrets.append(self.tls_server_config.key)
        return _refusal(self._path, self._text, None, problems, secrets)


def _strings(value: Any, loc: Loc, early: list[Problem]) -> Any:
    """Keys as strings (YAML allows numbers and booleans), integers too long for any setting refused."""
    if isinstance(value, yamlfile.OversizedInt):
        early.append(Problem(loc, f"number too large ({value.chars} characters)"))
        return None
    if isinstance(value, dict):
        return {str(k): _strings(v, (*loc, str(k)), early) for k, v in value.items()}
    if isinstance(value, list):
        return [_strings(v, (*loc, i), early) for i, v in enumerate(value)]
    return value


def _secrets(raw: Any) -> list[str]:
    """The hashes and inline keys the raw document holds: no line may print them, wherever they sit."""
    out = []
    if isinstance(raw, dict):
        users, tls = raw.get("basic_auth_users"), raw.get("tls_server_config")
        out += list(users.values()) if isinstance(users, dict) else []
        out += [tls.get("key")] if isinstance(tls, dict) else []
    return [s.strip() for s in out if isinstance(s, str) and len(s.strip()) >= 8]


def _refusal(
    path: str, text: str, raw: Any, problems: Sequence[Problem], secrets: Sequence[str]
) -> WebConfigError:
    where = errors.locator(text) if text else None
    lines = []
    for problem in errors.ordered(problems, raw)[: errors.MAX_PROBLEMS]:
        position = where(problem.at if problem.at is not None else problem.loc) if where else None
        # Belt and braces: a hash or key pasted where a header value or a user name belongs.
        line = _BCRYPT_RE.sub("[REDACTED]", errors.render(path, problem, position))
        for secret in secrets:
            line = line.replace(secret, "[REDACTED]")
        lines.append(line)
    if len(problems) > errors.MAX_PROBLEMS:
        lines.append(f"{path}: {len(problems) - errors.MAX_PROBLEMS} more problems not shown")
    return WebConfigError(lines)


def load(path: str) -> WebConfigFile:
    """Read and validate a web config file; raises WebConfigError with every problem of it."""
    try:
        # The same gate as the config file: a regular file of bounded size, read without blocking.
        text = yamlfile.read_bytes(path, max_bytes=MAX_FILE_BYTES).decode("utf-8")
    except yamlfile.ReadError as exc:
        raise WebConfigError([f"{path}: cannot read the web config file: {exc.reason}"]) from None
    except UnicodeDecodeError:
        raise WebConfigError([f"{path}: cannot read the web config file: not UTF-8 text"]) from None
    try:
        document = yamlfile.load(text, max_nodes=MAX_NODES)
    except yaml.YAMLError as exc:
        raise WebConfigError([errors.yaml_error(path, exc)]) from None
    early: list[Problem] = []
    raw = _strings({} if document is None else document, (), early)
    problems = list(early)
    context = {"base_dir": os.path.dirname(os.path.abspath(path))}
    try:
        config = WebConfigFile.model_validate(raw, context=context)
    except ValidationError as exc:
        seen = {p.loc for p in early}  # a value refused early is that field's one line
        problems += [p for p in errors.collect(exc, WebConfigFile) if p.loc not in seen]
    if problems:
        raise _refusal(path, text, raw, problems, _secrets(raw))
    config._path, config._text = path, text
    return config
