"""Alibaba Cloud credentials for the API client, through alibabacloud-credentials (default chain or explicit).

Every failure of the library (a missing provider, a bad answer from a credentials URI, an unreachable STS)
becomes ``ApiError(code="CredentialError", http_status=0)`` with a message scrubbed of anything that could
be a secret; nothing here raises anything else.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from exporter.config import AssumeRoleConfig, CredentialsConfig
from exporter.logging import gate_foreign_records, register_secrets
from exporter.openapi.errors import CREDENTIAL_ERROR, ApiError

_MAX_MESSAGE = 600

# Library messages embed whole response bodies ("... result: {...AccessKeySecret...}") and URIs whose query
# may carry a token; these patterns cut both out.
_BODY_RE = re.compile(
    r"((?:result|response|body)\s*[:=]\s*).*?(?=', '|'\]|\"\]|$)", re.IGNORECASE | re.DOTALL
)
_SECRET_KV_RE = re.compile(
    r"""(["']?[\w-]*(?:secret|token|password|passwd)[\w-]*["']?\s*[:=]\s*)"""
    r"""("[^"]*"|'[^']*'|[^\s,;}&'"]+)""",
    re.IGNORECASE,
)
_URL_QUERY_RE = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?#'\"]*)\?[^\s#'\"]*", re.IGNORECASE)


def scrub(message: str) -> str:
    """Remove response bodies, secret-looking key/value pairs and URL queries from a library message."""
    message = _BODY_RE.sub(r"\1<redacted>", message)
    message = _URL_QUERY_RE.sub(r"\1?<redacted>", message)
    message = _SECRET_KV_RE.sub(r"\1<redacted>", message)
    message = " ".join(message.split())
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


def _tame_library_logger() -> None:
    # alibabacloud-credentials attaches its own stderr handler to the "credentials" logger whenever one of
    # its modules is imported, and its warnings quote response bodies: the record gate sends its records,
    # like every library's, through the output gate to the application's handlers only.
    gate_foreign_records()


@dataclass(frozen=True, slots=True)
class Credential:
    """One AccessKey pair, plus the STS token when the key is temporary; secrets stay out of repr."""

    access_key_id: str
    access_key_secret: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)


class CredentialSource(Protocol):
    """Where the client gets the credential to sign each attempt with."""

    async def get(self) -> Credential:
        """The current credential; raises ``ApiError(code="CredentialError")`` on failure."""
        ...


def credential_error(message: str) -> ApiError:
    """A ``CredentialError`` with a scrubbed message."""
    return ApiError(code=CREDENTIAL_ERROR, message=scrub(message), http_status=0)


class StaticCredentialSource:
    """A fixed credential (tests, benchmarks); no library involved."""

    def __init__(self, credential: Credential) -> None:
        register_secrets((credential.access_key_secret, credential.security_token))
        self._credential = credential

    async def get(self) -> Credential:
        """Return the fixed credential."""
        return self._credential


class LibraryCredentialSource:
    """Credentials from an alibabacloud-credentials client, which caches and refreshes them.

    The library's refresh guard is a ``threading.Lock`` taken with a blocking 5 s timeout, so two
    coroutines refreshing at once would stall the event loop; an ``asyncio.Lock`` keeps them in line.
    The library client is built on first use, and rebuilt on the next call if building it failed.
    """

    def __init__(self, factory: Callable[[], Any], description: str) -> None:
        self._factory = factory
        self._client: Any = None
        self._lock = asyncio.Lock()
        self._last: Credential | None = None
        self.description = description

    async def get(self) -> Credential:
        """Fetch (normally: read from the library's cache) the current credential."""
        async with self._lock:
            try:
                if self._client is None:
                    self._client = self._factory()
                model = await self._client.get_credential_async()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any library failure is a CredentialError, never a crash
                raise credential_error(
                    f"{self.description}: {type(exc).__name__}: {_exception_message(exc)}"
                ) from None
        ak = getattr(model, "access_key_id", None)
        secret = getattr(model, "access_key_secret", None)
        token = getattr(model, "security_token", None) or None
        if not isinstance(ak, str) or not ak or not isinstance(secret, str) or not secret:
            raise credential_error(f"{self.description}: the provider returned an empty AccessKey")
        if token is not None and not isinstance(token, str):
            raise credential_error(f"{self.description}: the provider returned a malformed security token")
        last = self._last
        # Reuse the previous object while nothing changed: the common case costs no allocation.
        if (
            last is not None
            and last.access_key_id == ak
            and last.access_key_secret == secret
            and last.security_token == token
        ):
            return last
        # They travel in HTTP headers (id and token) or key the HMAC: control characters cannot be sent.
        if not (ak.isprintable() and secret.isprintable() and (token is None or token.isprintable())):
            raise credential_error(f"{self.description}: the provider returned a key with control characters")
        # Fetched secrets rotate (STS): teach the log redactor each new one as it arrives, so it is
        # masked even where a caller embeds it in a message.
        register_secrets((secret, token))
        self._last = Credential(ak, secret, token)
        return self._last


def _exception_message(exc: BaseException) -> str:
    msg = getattr(exc, "message", None)
    return msg if isinstance(msg, str) and msg else str(exc)


def _library_config(cfg: CredentialsConfig) -> Any:
    from alibabacloud_credentials.models import Config as LibConfig

    common: dict[str, Any] = {"type": cfg.type}
    if cfg.type in ("access_key", "sts", "ram_role_arn"):
        common.update(access_key_id=cfg.access_key_id, access_key_secret=cfg.access_key_secret)
    if cfg.type in ("sts", "ram_role_arn"):
        common["security_token"] = cfg.security_token
    if cfg.type == "credentials_uri":
        common["credentials_uri"] = cfg.credentials_uri
    if cfg.type == "ecs_ram_role":
        common["role_name"] = cfg.role_name
    if cfg.type in ("ram_role_arn", "oidc_role_arn"):
        common.update(
            role_arn=cfg.role_arn,
            role_session_name=cfg.role_session_name,
            sts_endpoint=cfg.sts_endpoint,
            role_session_expiration=cfg.duration_seconds,
        )
    if cfg.type == "ram_role_arn":
        common["external_id"] = cfg.external_id
    if cfg.type == "oidc_role_arn":
        # Read here rather than by the library, which reads the environment once, when first imported.
        common.update(
            role_arn=cfg.role_arn or os.environ.get("ALIBABA_CLOUD_ROLE_ARN"),
            oidc_provider_arn=cfg.oidc_provider_arn or os.environ.get("ALIBABA_CLOUD_OIDC_PROVIDER_ARN"),
            oidc_token_file_path=cfg.oidc_token_file or os.environ.get("ALIBABA_CLOUD_OIDC_TOKEN_FILE"),
        )
    return LibConfig(**common)


def _rrsa_environment() -> CredentialsConfig | None:
    """The RRSA credentials the ACK webhook's environment describes, if the default chain would use them.

    The chain's second step (after AccessKey variables, which still win) is AssumeRoleWithOIDC at
    ``sts.aliyuncs.com`` or ``sts[-vpc].<ALIBABA_CLOUD_STS_REGION>.aliyuncs.com``; it takes no other
    endpoint, so a configured ``sts_endpoint`` means building that step ourselves.
    """
    env = os.environ
    if env.get("ALIBABA_CLOUD_ACCESS_KEY_ID") and env.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET"):
        return None
    names = ("ALIBABA_CLOUD_ROLE_ARN", "ALIBABA_CLOUD_OIDC_PROVIDER_ARN", "ALIBABA_CLOUD_OIDC_TOKEN_FILE")
    if not all(env.get(n) for n in names):
        return None
    return CredentialsConfig(
        type="oidc_role_arn", role_session_name=env.get("ALIBABA_CLOUD_ROLE_SESSION_NAME")
    )


def _provider(cfg: CredentialsConfig | None) -> Any:
    """The alibabacloud-credentials provider for ``cfg`` (``None``/``default``: the default chain)."""
    from alibabacloud_credentials.client import Client
    from alibabacloud_credentials.provider import DefaultCredentialsProvider

    if cfg is None or cfg.type == "default":
        rrsa = _rrsa_environment() if cfg is not None and cfg.sts_endpoint else None
        if rrsa is None:
            return DefaultCredentialsProvider()
        cfg = CredentialsConfig(
            type="oidc_role_arn",
            role_session_name=rrsa.role_session_name,
            sts_endpoint=cfg.sts_endpoint if cfg is not None else None,
            duration_seconds=cfg.duration_seconds if cfg is not None else None,
        )
    return Client(_library_config(cfg)).cloud_credential.provider


def _assumed(base: Any, role: AssumeRoleConfig) -> Any:
    """``role`` assumed (STS AssumeRole, refreshed before expiry by the library) with ``base``'s keys."""
    from alibabacloud_credentials.provider import RamRoleArnCredentialsProvider

    return RamRoleArnCredentialsProvider(
        credentials_provider=base,
        role_arn=role.role_arn,
        role_session_name=role.role_session_name,
        duration_seconds=role.duration_seconds,
        external_id=role.external_id,
        sts_endpoint=role.sts_endpoint,
    )


def describe(cfg: CredentialsConfig | None, role: AssumeRoleConfig | None = None) -> str:
    """How a credential source is named in messages: its type and the role it assumes (no secret)."""
    chain = cfg is None or cfg.type == "default"
    base = "default credential chain" if chain or cfg is None else f"credentials type {cfg.type}"
    return base if role is None else f"{base}, assuming {role.role_arn}"


def build_credential_source(
    cfg: CredentialsConfig | None, assume_role: AssumeRoleConfig | None = None
) -> CredentialSource:
    """A source for ``cfg`` (``None`` or type ``default``: the library's default chain), assuming
    ``assume_role`` with it when given.

    Never raises: a configuration the library rejects surfaces as ``CredentialError`` on ``get()``.
    """
    _tame_library_logger()

    def client() -> Any:
        from alibabacloud_credentials.client import Client

        base = _provider(cfg)
        return Client(provider=base if assume_role is None else _assumed(base, assume_role))

    return LibraryCredentialSource(client, describe(cfg, assume_role))
