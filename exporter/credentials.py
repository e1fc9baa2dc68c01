"""Alibaba Cloud credentials for the API client: the configured source, cached, with deadlines.

The sources the configuration names (a static key, the default chain, a credentials URI, ECS metadata,
AssumeRole, AssumeRoleWithOIDC and role chains of them) are built here; their fetches are
:mod:`exporter.credential_fetch`'s, each bounded in time and size. A fetched credential is kept until
near its real expiry (:func:`refresh_time`), one fetch at a time, each within ``FETCH_DEADLINE_SECONDS``.
Every failure becomes ``ApiError(code="CredentialError", http_status=0)`` with a message scrubbed of
anything that could be a secret; nothing here raises anything else.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import structlog

from exporter.config import AssumeRoleConfig, CredentialsConfig
from exporter.credential_fetch import (
    DEFAULT_SESSION_NAME,
    AssumeRole,
    AssumeRoleWithOidc,
    Credential,
    CredentialFault,
    CredentialsUri,
    EcsMetadata,
    Fetched,
    Provider,
    credential_problem,
    run_blocking,
    sts_host,
)
from exporter.errors import CREDENTIAL_ERROR, ApiError
from exporter.logging import gate_foreign_records, gate_library_text
from exporter.redaction import REDACTED

__all__ = [
    "FETCH_DEADLINE_SECONDS",
    "CachedCredentialSource",
    "Credential",
    "CredentialSource",
    "RefreshObserver",
    "RefusableSource",
    "StaticCredentialSource",
    "build_credential_source",
    "credential_error",
    "describe",
    "refresh_time",
    "scrub",
]

FETCH_DEADLINE_SECONDS = 10.0  # one fetch of a source, every step of its role chain included
FAILURE_HOLD_SECONDS = 5.0  # a failed fetch answers every caller this long, then the next one fetches
REFRESH_MARGIN_SECONDS = 15 * 60  # the library's margin before expiry...
REFRESH_MARGIN_SHARE = 0.25  # ...or this share of the credential's lifetime, whichever is shorter
MAX_HOLD_SECONDS = 3600.0  # never kept longer than this after its fetch, whatever its Expiration says
UNKNOWN_EXPIRY_HOLD_SECONDS = 300.0  # profile files tell no expiry: asked again this often
DEFAULT_DURATION_SECONDS = 3600

_MAX_MESSAGE = 600

log = structlog.get_logger("ehpc.credentials")

# Library messages embed whole response bodies ("... result: {...AccessKeySecret...}"): cut whole.
_BODY_RE = re.compile(
    r"((?:result|response|body)\s*[:=]\s*).*?(?=', '|'\]|\"\]|$)", re.IGNORECASE | re.DOTALL
)


def scrub(message: str) -> str:
    """A library message as a failure's reason: through the gate every library text passes (secrets,
    secret-looking pairs, URL and request queries), response bodies cut, one line, bounded."""
    message = gate_library_text(message)  # before the cut: a secret cut in two would leave its start
    message = _BODY_RE.sub(rf"\1{REDACTED}", message)
    message = " ".join(message.split())
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


def _tame_library_logger() -> None:
    # alibabacloud-credentials attaches its own stderr handler to the "credentials" logger whenever one of
    # its modules is imported, and its warnings quote response bodies: the record gate sends its records,
    # like every library's, through the output gate to the application's handlers only.
    gate_foreign_records()


class RefreshObserver(Protocol):
    """What hears each credential refresh of a source (the account's self-metrics)."""

    def on_refresh(self, expires_at: float | None) -> None:
        """A fetch succeeded; the credential expires at ``expires_at`` (None: not known, a long-term key)."""
        ...

    def on_refresh_failed(self) -> None:
        """A fetch failed (the held credential, if any, is served while it is valid)."""
        ...


@runtime_checkable
class CredentialSource(Protocol):
    """Where the client gets the credential to sign each attempt with."""

    async def get(self) -> Credential:
        """The current credential; raises ``ApiError(code="CredentialError")`` on failure."""
        ...


@runtime_checkable
class RefusableSource(CredentialSource, Protocol):
    """A source that can be told the API refused its credential (then fetched anew, not served again)."""

    def refused(self, credential: Credential) -> None:
        """Forget ``credential`` if it is the one held."""
        ...


def credential_error(message: str) -> ApiError:
    """A ``CredentialError`` with a scrubbed message."""
    return ApiError(code=CREDENTIAL_ERROR, message=scrub(message), http_status=0)


def _refusal(message: str) -> ApiError:
    """A ``CredentialError`` of this module's own words, which name steps, fields and files, never a value.

    Not :func:`scrub`: it reads ``.../token: not found`` as a key and its value, and cuts the reason.
    """
    cut = message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."
    return ApiError(code=CREDENTIAL_ERROR, message=cut, http_status=0)


class StaticCredentialSource:
    """A fixed credential (a configured key, tests, benchmarks); no fetch, nothing to refresh.

    A credential the gate refuses (an empty secret, a control character) never raises here: every
    :meth:`get` does, as a ``CredentialError``, like any other source that cannot give a key.
    """

    def __init__(
        self, credential: Credential, description: str = "static credentials", *, token_required: bool = False
    ) -> None:
        self._problem = credential_problem(
            credential.access_key_id,
            credential.access_key_secret,
            credential.security_token,
            token_required=token_required,
        )
        self._credential = credential
        self.description = description

    async def get(self) -> Credential:
        """Return the fixed credential."""
        if self._problem is not None:
            raise _refusal(f"{self.description}: {self._problem}") from None
        return self._credential

    def refused(self, credential: Credential) -> None:
        """Nothing to fetch again: a refused static key stays refused."""


@dataclass(frozen=True, slots=True)
class _Held:
    """A credential that passed the gate, when to fetch the next, and when it stops being valid."""

    credential: Credential
    refresh_at: float
    expires_at: float


def refresh_time(expires_at: float | None, now: float) -> float:
    """When to fetch again a credential fetched at ``now`` that expires at ``expires_at``.

    The library refreshes 15 minutes before expiry; a session shorter than that (``duration_seconds:
    900``) would be fetched again on every call. Here the margin is the shorter of 15 minutes and a
    quarter of the credential's lifetime, so a 900 s session is kept 675 s and a 3600 s one 2700 s (as
    the library), never longer than an hour (an absurd ``Expiration``), and an unknown expiry (profile
    files) is asked again every five minutes.
    """
    if expires_at is None:
        return now + UNKNOWN_EXPIRY_HOLD_SECONDS
    lifetime = max(0.0, expires_at - now)
    margin = min(REFRESH_MARGIN_SECONDS, REFRESH_MARGIN_SHARE * lifetime)
    return now + min(lifetime - margin, MAX_HOLD_SECONDS)


class CachedCredentialSource:
    """A provider's credential, kept until near its real expiry (:func:`refresh_time`).

    One fetch at a time, shared by every caller that needs it, and each ends within ``deadline``
    seconds whatever the provider meets (the whole role chain included). A caller's own deadline cuts
    its wait without cancelling the fetch the others share. While the held credential is still valid,
    nobody waits: it is served and the refresh runs behind it, so a slow or failing STS costs nothing
    until the credential really expires. A failed fetch answers every caller for ``failure_hold``
    seconds (a failing STS sees one call per hold, not one per image). A credential that fails the gate
    is never held, and one the API refused (:meth:`refused`) is dropped, so the next fetch is a real
    one. Every credential that passes is registered with the output gate.
    """

    def __init__(
        self,
        provider: Provider,
        description: str,
        *,
        clock: Callable[[], float] = time.time,
        deadline: float = FETCH_DEADLINE_SECONDS,
        failure_hold: float = FAILURE_HOLD_SECONDS,
    ) -> None:
        self._provider = provider
        self.description = description
        self._clock = clock
        self._deadline = deadline
        self._failure_hold = failure_hold
        self._held: _Held | None = None
        self._failed: tuple[str, float] | None = None  # why the last fetch failed, until when it answers
        self._inflight: asyncio.Task[_Held] | None = None
        self.fetches = 0  # fetches started (tests and diagnostics)
        # Hears how each fetch ended (the account's ehpc_credentials_* self-metrics); set by the service.
        self.observer: RefreshObserver | None = None
        self._failing = False  # the last fetch failed (logged once per streak)

    async def get(self) -> Credential:
        """The held credential (refreshed behind it when due), or one fetched now, shared with every
        concurrent caller."""
        now = self._clock()
        held = self._held
        if held is not None and now < held.refresh_at:
            return held.credential
        failed = self._failed
        held_back = failed is not None and now < failed[1]
        task = None if held_back else self._fetching()
        if held is not None and now < held.expires_at:
            return held.credential
        if task is None:
            return self._fallback(now, failed[0] if failed is not None else "no credential")
        try:
            return (await asyncio.shield(task)).credential
        except CredentialFault as exc:
            why = str(exc)
        return self._fallback(self._clock(), why)

    def _fetching(self) -> asyncio.Task[_Held]:
        """The fetch in flight, or a new one."""
        task = self._inflight
        if task is None or task.done():
            self.fetches += 1
            task = self._inflight = asyncio.ensure_future(self._fetch())
            task.add_done_callback(_retrieve)
        return task

    async def settled(self) -> None:
        """Return once no fetch is in flight (a refresh running behind the held credential included)."""
        task = self._inflight
        if task is not None:
            await asyncio.wait([task])

    def refused(self, credential: Credential) -> None:
        """Drop ``credential`` if it is the one held: the API refused it, so it is never served again."""
        held = self._held
        if held is not None and held.credential == credential:
            self._held = None

    def _fallback(self, now: float, why: str) -> Credential:
        """The held credential while it is still valid, else the failure as a ``CredentialError``."""
        held = self._held
        if held is not None and now < held.expires_at:
            return held.credential
        raise _refusal(f"{self.description}: {why}") from None

    async def _fetch(self) -> _Held:
        try:
            async with asyncio.timeout(self._deadline):
                fetched = await self._provider.fetch()
            cred = fetched.credential
            problem = credential_problem(cred.access_key_id, cred.access_key_secret, cred.security_token)
            if problem is not None:
                raise CredentialFault(problem)
        except TimeoutError:
            why = f"no credential within {self._deadline:g}s"
        except CredentialFault as exc:
            why = str(exc)
        except Exception as exc:  # a library failure (profile files) or a bug: a CredentialError, not a crash
            why = scrub(f"{type(exc).__name__}: {_exception_message(exc)}")  # library text quotes bodies
        else:
            now = self._clock()
            held = _Held(cred, refresh_time(fetched.expires_at, now), fetched.expires_at or math.inf)
            self._held, self._failed = held, None
            if self._failing:
                self._failing = False
                log.info("credential_refresh_recovered", source=self.description)
            if self.observer is not None:
                self.observer.on_refresh(fetched.expires_at)
            return held
        finally:
            self._inflight = None
        self._failed = (why, self._clock() + self._failure_hold)
        # Once per streak: a refresh behind a still valid credential fails silently otherwise, until the
        # credential expires and every call fails (ehpc_credentials_refresh_errors_total counts each).
        kept = self._held
        valid_until = kept.expires_at if kept is not None and kept.expires_at != math.inf else None
        (log.debug if self._failing else log.warning)(
            "credential_refresh_failed", source=self.description, reason=why, held_until=valid_until
        )
        self._failing = True
        if self.observer is not None:
            self.observer.on_refresh_failed()
        raise CredentialFault(why)


def _retrieve(task: asyncio.Task[_Held]) -> None:
    # A fetch whose every waiter gave up still ends with its failure: read it, so asyncio does not log
    # "exception never retrieved" (with a traceback) for what was already counted.
    if not task.cancelled():
        task.exception()


def _exception_message(exc: BaseException) -> str:
    msg = getattr(exc, "message", None)
    return msg if isinstance(msg, str) and msg else str(exc)


# --------------------------------------------------------------------------------------------------------
# From the configuration to a source.


@dataclass
class _Environment:
    """The default chain's first step: ``ALIBABA_CLOUD_ACCESS_KEY_ID`` / ``_SECRET`` / ``SECURITY_TOKEN``."""

    name: str = "environment"

    async def fetch(self) -> Fetched:
        """The keys the environment held when the library was imported (where the library reads them)."""
        from alibabacloud_credentials.utils import auth_util

        ak, secret = auth_util.environment_access_key_id, auth_util.environment_access_key_secret
        token = auth_util.environment_security_token
        if not ak or not secret:
            raise CredentialFault("ALIBABA_CLOUD_ACCESS_KEY_ID / _SECRET are not set")
        return Fetched(Credential(ak, secret, token or None))


@dataclass
class _LibraryProfile:
    """A profile file read by the library's provider (no expiry known), on the credential threads."""

    name: str
    factory: Callable[[], Any]
    _provider: Any = None

    async def fetch(self) -> Fetched:
        """The profile's credential (the library caches the provider the profile describes)."""
        return await run_blocking(self._fetch)

    def _fetch(self) -> Fetched:
        if self._provider is None:
            self._provider = self.factory()
        cred = self._provider.get_credentials()
        ak, secret = cred.get_access_key_id(), cred.get_access_key_secret()
        token = cred.get_security_token()
        problem = credential_problem(ak, secret, token)
        if problem is not None or not isinstance(ak, str) or not isinstance(secret, str):
            raise CredentialFault(problem or "the profile's credential is malformed")
        return Fetched(Credential(ak, secret, token if isinstance(token, str) and token else None))


@dataclass
class _Chain:
    """The default chain in the library's order; the step that answered keeps answering, as there."""

    steps: list[Provider]
    name: str = "default credential chain"
    _last: Provider | None = None

    async def fetch(self) -> Fetched:
        """The first step's credential that has one."""
        if self._last is not None:
            return await self._last.fetch()
        problems = []
        for step in self.steps:
            try:
                fetched = await step.fetch()
            except CredentialFault as exc:
                problems.append(f"{step.name}: {exc}")
                continue
            except Exception as exc:  # a library failure in a profile step: the chain goes on
                problems.append(scrub(f"{step.name}: {type(exc).__name__}: {_exception_message(exc)}"))
                continue
            self._last = step
            return fetched
        raise CredentialFault(f"unable to load credentials from any step of the chain: {'; '.join(problems)}")


@dataclass
class _Unavailable:
    """A provider the configuration cannot build: each fetch says why."""

    why: str
    name: str = "configuration"

    async def fetch(self) -> Fetched:
        """Always the same failure."""
        raise CredentialFault(self.why)


def _env_flag(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _sts_endpoint(configured: str | None) -> str:
    from alibabacloud_credentials.utils import auth_util

    vpc = _env_flag(auth_util.environment_enable_vpc)
    return sts_host(configured, region=auth_util.environment_sts_region, vpc=vpc)


def _session_name(configured: str | None) -> str:
    return configured or os.environ.get("ALIBABA_CLOUD_ROLE_SESSION_NAME") or DEFAULT_SESSION_NAME


def _oidc(
    cfg: CredentialsConfig, env: Mapping[str, str | None], clock: Callable[[], float], ca_file: str | None
) -> Provider:
    """AssumeRoleWithOIDC for ``cfg``, its missing fields from ``env`` (the ACK RRSA webhook's variables)."""
    role_arn = cfg.role_arn or env.get("ALIBABA_CLOUD_ROLE_ARN")
    provider_arn = cfg.oidc_provider_arn or env.get("ALIBABA_CLOUD_OIDC_PROVIDER_ARN")
    token_file = cfg.oidc_token_file or env.get("ALIBABA_CLOUD_OIDC_TOKEN_FILE")
    if not (role_arn and provider_arn and token_file):
        return _Unavailable("oidc_role_arn needs role_arn, oidc_provider_arn and oidc_token_file")
    return AssumeRoleWithOidc(
        role_arn=role_arn,
        oidc_provider_arn=provider_arn,
        token_file=token_file,
        endpoint=_sts_endpoint(cfg.sts_endpoint),
        session_name=_session_name(cfg.role_session_name or env.get("ALIBABA_CLOUD_ROLE_SESSION_NAME")),
        duration_seconds=cfg.duration_seconds or DEFAULT_DURATION_SECONDS,
        clock=clock,
        ca_file=ca_file,
    )


def _ecs(role_name: str | None, clock: Callable[[], float]) -> Provider:
    from alibabacloud_credentials.utils import auth_util

    if _env_flag(auth_util.environment_ecs_metadata_disabled):
        return _Unavailable("ECS metadata is disabled (ALIBABA_CLOUD_ECS_METADATA_DISABLED)")
    return EcsMetadata(
        role_name=role_name or auth_util.environment_ecs_metadata,
        imds_v1_disabled=_env_flag(auth_util.environment_imds_v1_disabled),
        clock=clock,
    )


def _default_chain(cfg: CredentialsConfig | None, clock: Callable[[], float], ca_file: str | None) -> _Chain:
    """The library's default chain (alibaba-openapi.md 6.1), each network step our bounded one."""
    from alibabacloud_credentials.provider import CLIProfileCredentialsProvider, ProfileCredentialsProvider
    from alibabacloud_credentials.utils import auth_util

    steps: list[Provider] = [_Environment()]
    if auth_util.enable_oidc_credential:
        env = {
            "ALIBABA_CLOUD_ROLE_ARN": auth_util.environment_role_arn,
            "ALIBABA_CLOUD_OIDC_PROVIDER_ARN": auth_util.environment_oidc_provider_arn,
            "ALIBABA_CLOUD_OIDC_TOKEN_FILE": auth_util.environment_oidc_token_file,
            "ALIBABA_CLOUD_ROLE_SESSION_NAME": auth_util.environment_role_session_name,
        }
        rrsa = CredentialsConfig(
            type="oidc_role_arn",
            sts_endpoint=cfg.sts_endpoint if cfg is not None else None,
            duration_seconds=cfg.duration_seconds if cfg is not None else None,
        )
        steps.append(_oidc(rrsa, env, clock, ca_file))
    if not _env_flag(auth_util.environment_cli_profile_disabled):
        steps.append(_LibraryProfile("CLI profile", CLIProfileCredentialsProvider))
    steps.append(_LibraryProfile("credentials file", ProfileCredentialsProvider))
    if not _env_flag(auth_util.environment_ecs_metadata_disabled):
        steps.append(_ecs(None, clock))
    if auth_util.environment_credentials_uri:
        steps.append(CredentialsUri(auth_util.environment_credentials_uri, clock=clock, ca_file=ca_file))
    return _Chain(steps)


def describe(cfg: CredentialsConfig | None, role: AssumeRoleConfig | None = None) -> str:
    """How a credential source is named in messages: its type and the role it assumes (no secret)."""
    chain = cfg is None or cfg.type == "default"
    base = "default credential chain" if chain or cfg is None else f"credentials type {cfg.type}"
    return base if role is None else f"{base}, assuming {role.role_arn}"


def _base(
    cfg: CredentialsConfig | None, clock: Callable[[], float], deadline: float, ca_file: str | None
) -> StaticCredentialSource | CachedCredentialSource:
    """The source ``cfg`` describes, before any ``assume_role``."""
    what = describe(cfg)
    if cfg is None or cfg.type == "default":
        chain = _default_chain(cfg, clock, ca_file)
        return CachedCredentialSource(chain, what, clock=clock, deadline=deadline)
    if cfg.type in ("access_key", "sts"):
        key = Credential(cfg.access_key_id or "", cfg.access_key_secret or "", cfg.security_token or None)
        return StaticCredentialSource(key, what, token_required=cfg.type == "sts")
    provider: Provider
    if cfg.type == "credentials_uri":
        provider = CredentialsUri(cfg.credentials_uri or "", clock=clock, ca_file=ca_file)
    elif cfg.type == "ecs_ram_role":
        provider = _ecs(cfg.role_name, clock)
    elif cfg.type == "oidc_role_arn":
        provider = _oidc(cfg, os.environ, clock, ca_file)
    else:  # ram_role_arn: the configured key (an STS one too) assumes the role
        key = Credential(cfg.access_key_id or "", cfg.access_key_secret or "", cfg.security_token or None)
        provider = AssumeRole(
            base=StaticCredentialSource(key, what),
            role_arn=cfg.role_arn or "",
            endpoint=_sts_endpoint(cfg.sts_endpoint),
            session_name=_session_name(cfg.role_session_name),
            duration_seconds=cfg.duration_seconds or DEFAULT_DURATION_SECONDS,
            external_id=cfg.external_id,
            clock=clock,
            ca_file=ca_file,
        )
    return CachedCredentialSource(provider, what, clock=clock, deadline=deadline)


def build_credential_source(
    cfg: CredentialsConfig | None,
    assume_role: AssumeRoleConfig | None = None,
    *,
    clock: Callable[[], float] = time.time,
    deadline: float = FETCH_DEADLINE_SECONDS,
    ca_file: str | None = None,
) -> StaticCredentialSource | CachedCredentialSource:
    """A source for ``cfg`` (``None`` or type ``default``: the default chain), assuming ``assume_role``
    with it when given; ``clock`` is the wall clock expirations are read against; ``ca_file`` a CA the
    STS and a credentials URI are trusted with besides the system's (the target's ``api.ca_file``).

    Never raises and never fetches: a configuration that cannot give a key is a ``CredentialError`` on
    ``get()``. Each level of a role chain is its own cached source, so the base's credential is
    registered and refreshed on its own, and dropped alone when the STS refuses it.
    """
    _tame_library_logger()
    base = _base(cfg, clock, deadline, ca_file)
    if assume_role is None:
        return base
    provider = AssumeRole(
        base=base,
        role_arn=assume_role.role_arn,
        endpoint=_sts_endpoint(assume_role.sts_endpoint),
        session_name=assume_role.role_session_name,
        duration_seconds=assume_role.duration_seconds,
        external_id=assume_role.external_id,
        clock=clock,
        ca_file=ca_file,
    )
    return CachedCredentialSource(provider, describe(cfg, assume_role), clock=clock, deadline=deadline)
