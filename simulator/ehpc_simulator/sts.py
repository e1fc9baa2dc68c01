"""The simulated STS (API 2015-04-01): AssumeRole and AssumeRoleWithOIDC, answered like the cloud.

RPC style: ``GET /`` with every parameter in the query (what the library sends), or ``POST /`` with a
form body. Both actions answer ``{"RequestId", "AssumedRoleUser": {"Arn", "AssumedRoleId"},
"Credentials": {"AccessKeyId", "AccessKeySecret", "SecurityToken", "Expiration"}}``; the credential
acts for the *role's* account, and the estate's region gateways accept it for that account only.
Errors use the common JSON shape with ``HostId`` ``sts.aliyuncs.com``; their codes and statuses are
the one table :data:`ehpc_simulator.catalogue.STS_ERRORS` (plus the gateway's common codes).

Processing order, and so which error a request with several faults gets:

1. ``Action`` missing: ``MissingAction``; not an STS action: ``InvalidAction.NotFound``; ``Version``
   missing: ``MissingVersion``; not ``2015-04-01``: ``InvalidAction.NotFound``.
2. AssumeRole only: the signature (:class:`ehpc_simulator.rpcsig.RpcVerifier`, the same key rules
   as the region gateways: an STS token as base credential must carry its ``SecurityToken``).
3. Parameters: ``MissingParameter.<Name>``; ``RoleArn`` not ``acs:ram::<digits>:role/<name>``:
   ``InvalidParameter.RoleArn`` (OIDC: ``OIDCProviderArn`` not ``acs:ram::<digits>:oidc-provider/<name>``:
   ``InvalidParameter.OIDCProviderArn``); ``RoleSessionName`` not 2-32 of ``[A-Za-z0-9.@_-]``;
   ``DurationSeconds`` not an integer of at least 900: ``InvalidParameter.DurationSeconds``;
   ``ExternalId`` not 2-1224 of ``[A-Za-z0-9=,.@:/_-]`` ([U] pattern); ``Policy`` not a JSON object:
   ``InvalidParameter.PolicyGrammar``.
4. AssumeRoleWithOIDC only: the provider (unknown: ``AuthenticationFail.NoPermission`` "No such OIDC
   Provider registered."), then the token: not an RS256 JWT signed by the provider's key, or no numeric
   ``exp``: ``AuthenticationFail.OIDCToken.Invalid``; ``iss`` differs from the provider's issuer:
   ``.IssuerNotMatch``; no ``aud`` among the provider's client ids: ``.AudienceNotMatch``; ``exp`` past:
   ``.Expired``.
5. The role: unknown ``EntityNotExist.Role`` (role names are case-insensitive, as in RAM); its trust
   policy must admit the caller (AssumeRole: the caller's account, and ``ExternalId`` equal to the
   role's when it has one; OIDC: the provider), and not be revoked (:meth:`RamRole.trusted`), else
   ``NoPermission`` (AssumeRole) / ``AuthenticationFail.NoPermission`` (OIDC).
6. ``DurationSeconds`` above the role's ``max_session_seconds``: ``InvalidParameter.DurationSeconds``.

Lifetimes: the real STS issues credentials valid for ``DurationSeconds``; the simulator does too, unless
the estate's ``sts_max_ttl_seconds`` caps it (a test can so see a credential expire in seconds and watch a
client refresh it). Every answer is counted by (action, code), and every credential issued by role
(:meth:`StsService.sessions`: how many sessions callers started, the number a caching client keeps low).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from ehpc_simulator import jwt
from ehpc_simulator.acs3 import decode_query
from ehpc_simulator.auth import AuthFailure, KeyDirectory, StsCredential, StsStore
from ehpc_simulator.catalogue import (
    STS_ACTIONS,
    STS_API_VERSION,
    STS_HOST_ID,
    STS_NO_SUCH_PROVIDER,
    STS_NO_TRUST,
    STS_PRODUCT,
    sts_message_of,
    sts_status_of,
)
from ehpc_simulator.counts import AnswerCounter
from ehpc_simulator.params import FORM_CONTENT_TYPE
from ehpc_simulator.rpcsig import RpcVerifier

DEFAULT_DURATION_SECONDS = 3600
MIN_DURATION_SECONDS = 900
DEFAULT_MAX_SESSION_SECONDS = 3600  # RAM's MaxSessionDuration default (range 3600..43200)
DEFAULT_CLIENT_IDS = ("sts.aliyuncs.com",)  # what ACK RRSA tokens carry as audience
_ACTION_LABEL_MAX = 64
_ROLE_ARN = re.compile(r"^acs:ram::(\d+):role/([^/\s]+)$")
_PROVIDER_ARN = re.compile(r"^acs:ram::(\d+):oidc-provider/([^/\s]+)$")
_SESSION_NAME = re.compile(r"^[A-Za-z0-9.@_-]{2,32}$")
_EXTERNAL_ID = re.compile(r"^[A-Za-z0-9=,.@:/_-]{2,1224}$")


def role_arn(account_id: str, name: str) -> str:
    """``acs:ram::<account id>:role/<name>``."""
    return f"acs:ram::{account_id}:role/{name}"


def oidc_provider_arn(account_id: str, name: str) -> str:
    """``acs:ram::<account id>:oidc-provider/<name>``."""
    return f"acs:ram::{account_id}:oidc-provider/{name}"


def parse_role_arn(arn: str) -> tuple[str, str] | None:
    """``(account id, role name lower-cased)`` of a role ARN, or None when it is not one."""
    m = _ROLE_ARN.match(arn.strip())
    return (m.group(1), m.group(2).lower()) if m else None


def parse_oidc_provider_arn(arn: str) -> tuple[str, str] | None:
    """``(account id, provider name)`` of an OIDC provider ARN, or None when it is not one."""
    m = _PROVIDER_ARN.match(arn.strip())
    return (m.group(1), m.group(2)) if m else None


@dataclass
class RamRole:
    """A RAM role and its trust policy (who may assume it); mutable so tests can change it at run time."""

    account_id: str
    name: str
    trusted_accounts: set[str] = field(default_factory=set)  # account ids whose keys may AssumeRole
    trusted_oidc_providers: set[str] = field(default_factory=set)  # provider ARNs for AssumeRoleWithOIDC
    external_id: str | None = None  # when set, AssumeRole must send exactly this ExternalId
    max_session_seconds: int = DEFAULT_MAX_SESSION_SECONDS
    trusted: bool = True  # False: the trust policy is revoked, nobody may assume the role

    @property
    def arn(self) -> str:
        """The role's ARN."""
        return role_arn(self.account_id, self.name)

    @property
    def role_id(self) -> str:
        """A stable 18-digit role id, as RAM shows it in ``AssumedRoleId``."""
        digest = hashlib.sha256(f"{self.account_id}/{self.name.lower()}".encode()).digest()
        return str(300_000_000_000_000_000 + int.from_bytes(digest[:8], "big") % 10**17)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description."""
        return {
            "arn": self.arn,
            "trusted": self.trusted,
            "trusted_accounts": sorted(self.trusted_accounts),
            "trusted_oidc_providers": sorted(self.trusted_oidc_providers),
            "external_id": self.external_id,
            "max_session_seconds": self.max_session_seconds,
        }


@dataclass
class OidcProvider:
    """A RAM OIDC identity provider: its issuer, accepted client ids (audiences) and signing key.

    The private key plays the identity provider's (an ACK cluster's service-account issuer): the
    simulator signs tokens with it (:meth:`issue_token`) and the STS verifies them with its public half.
    """

    account_id: str
    name: str
    issuer: str
    client_ids: tuple[str, ...] = DEFAULT_CLIENT_IDS
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), repr=False
    )

    @property
    def arn(self) -> str:
        """The provider's ARN."""
        return oidc_provider_arn(self.account_id, self.name)

    @property
    def kid(self) -> str:
        """The key id written in token headers."""
        return hashlib.sha256(self.arn.encode()).hexdigest()[:16]

    def issue_token(
        self,
        now: float,
        *,
        subject: str,
        audience: str | list[str],
        ttl_seconds: float,
        issuer: str | None = None,
    ) -> str:
        """A JWT this provider signed (``issuer`` overrides ``iss`` to test a mismatch)."""
        claims = {
            "iss": self.issuer if issuer is None else issuer,
            "sub": subject,
            "aud": audience,
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + ttl_seconds),
        }
        return jwt.sign(claims, self.key, self.kid)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (no key material)."""
        return {"arn": self.arn, "issuer": self.issuer, "client_ids": list(self.client_ids)}


class RamDirectory(Protocol):
    """What the STS needs to know of the estate: its roles, OIDC providers, clock and lifetime cap."""

    sts_max_ttl_seconds: float | None

    def clock(self) -> float:
        """Epoch seconds now."""
        ...

    def find_role(self, arn: str) -> RamRole | None:
        """The role an ARN names (case-insensitive name), or None."""
        ...

    def find_oidc_provider(self, arn: str) -> OidcProvider | None:
        """The OIDC provider an ARN names, or None."""
        ...


@dataclass(frozen=True, slots=True)
class _Refusal(Exception):
    """An STS error answer: its code and message detail."""

    code: str
    detail: str = ""


class StsService(AnswerCounter):
    """The STS endpoint: answers, counters, and the credentials it issues into a shared :class:`StsStore`."""

    def __init__(self, ram: RamDirectory, keys: KeyDirectory, store: StsStore) -> None:
        self.ram = ram
        self.store = store
        self.verifier = RpcVerifier(keys, store, clock=self._now)
        self._sessions: dict[str, int] = {}  # role ARN -> credentials issued
        self._last: dict[str, StsCredential] = {}  # role ARN -> the newest credential issued
        super().__init__()

    def sessions(self) -> dict[str, int]:
        """Role ARN -> credentials issued for it (one per successful AssumeRole or AssumeRoleWithOIDC)."""
        return dict(self._sessions)

    def last_issued(self, role_arn: str) -> StsCredential | None:
        """The newest credential issued for the role ``role_arn`` names (as :meth:`sessions` spells it)."""
        return self._last.get(role_arn)

    def reset_counters(self) -> None:
        """Forget every count, the sessions issued included."""
        super().reset_counters()
        self._sessions.clear()

    def _now(self) -> float:
        return self.ram.clock()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """The API on ``GET /`` and ``POST /``."""
        router.add_route("GET", "/", self.handle)
        router.add_route("POST", "/", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        """Answer one STS request."""
        body = await request.read()
        pairs = decode_query(request.rel_url.raw_query_string)
        content_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if body and content_type == FORM_CONTENT_TYPE:
            try:
                pairs += decode_query(body.decode("utf-8"))
            except UnicodeDecodeError:
                pairs.append(("\ufffd", ""))  # undecodable: the signature cannot match
        values = dict(pairs)
        action = values.get("Action", "")[:_ACTION_LABEL_MAX]
        try:
            payload = self._dispatch(request.method, action, pairs, values)
        except _Refusal as refusal:
            return self._error(action, refusal.code, refusal.detail)
        return self._send(action, "Success", 200, payload)

    # ----- answers -----------------------------------------------------------------------------------

    def _send(self, action: str, code: str, status: int, payload: dict[str, Any]) -> web.Response:
        self._count(action, code, status)
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json;charset=utf-8", "x-acs-request-id": payload["RequestId"]}
        return web.Response(status=status, body=body, headers=headers)

    def _error(self, action: str, code: str, detail: str) -> web.Response:
        rid = str(uuid.uuid4()).upper()
        payload = {
            "RequestId": rid,
            "HostId": STS_HOST_ID,
            "Code": code,
            "Message": sts_message_of(code, detail),
            "Recommend": f"https://api.aliyun.com/troubleshoot?q={code}&product={STS_PRODUCT}&requestId={rid}",
        }
        return self._send(action, code, sts_status_of(code), payload)

    # ----- the actions -------------------------------------------------------------------------------

    def _dispatch(
        self, method: str, action: str, pairs: list[tuple[str, str]], values: dict[str, str]
    ) -> dict[str, Any]:
        if not action:
            raise _Refusal("MissingAction", "Action")
        if action not in STS_ACTIONS:
            raise _Refusal("InvalidAction.NotFound")
        if not values.get("Version"):
            raise _Refusal("MissingVersion", "Version")
        if values["Version"] != STS_API_VERSION:
            raise _Refusal("InvalidAction.NotFound", "The version is not supported.")
        if action == "AssumeRole":
            return self._assume_role(method, pairs, values)
        return self._assume_role_with_oidc(values)

    def _common(self, values: dict[str, str], required: tuple[str, ...]) -> tuple[str, int]:
        """Step 3 of the module docstring; returns (session name, requested duration)."""
        for name in required:
            if not values.get(name):
                raise _Refusal(f"MissingParameter.{name}", name)
        if parse_role_arn(values["RoleArn"]) is None:
            raise _Refusal("InvalidParameter.RoleArn")
        if "OIDCProviderArn" in required and parse_oidc_provider_arn(values["OIDCProviderArn"]) is None:
            raise _Refusal("InvalidParameter.OIDCProviderArn")
        session = values["RoleSessionName"]
        if not _SESSION_NAME.match(session):
            raise _Refusal("InvalidParameter.RoleSessionName")
        raw = values.get("DurationSeconds") or str(DEFAULT_DURATION_SECONDS)
        try:
            duration = int(raw)
        except ValueError:
            raise _Refusal("InvalidParameter.DurationSeconds") from None
        if duration < MIN_DURATION_SECONDS:
            raise _Refusal("InvalidParameter.DurationSeconds")
        external_id = values.get("ExternalId")
        if external_id is not None and not _EXTERNAL_ID.match(external_id):
            raise _Refusal("InvalidParameter.ExternalId")
        policy = values.get("Policy")
        if policy is not None:
            try:
                parsed = json.loads(policy)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                raise _Refusal("InvalidParameter.PolicyGrammar")
        return session, duration

    def _role(self, arn: str) -> RamRole:
        role = self.ram.find_role(arn)
        if role is None:
            raise _Refusal("EntityNotExist.Role", arn)
        return role

    def _assume_role(
        self, method: str, pairs: list[tuple[str, str]], values: dict[str, str]
    ) -> dict[str, Any]:
        verified = self.verifier.verify(method, pairs)
        if isinstance(verified, AuthFailure):
            raise _Refusal(verified.code, verified.detail)
        session, duration = self._common(values, ("RoleArn", "RoleSessionName"))
        role = self._role(values["RoleArn"])
        caller = verified.account_id
        if not role.trusted or caller is None or caller not in role.trusted_accounts:
            raise _Refusal("NoPermission")
        if role.external_id is not None and values.get("ExternalId") != role.external_id:
            raise _Refusal("NoPermission")
        return self._issue(role, session, duration)

    def _assume_role_with_oidc(self, values: dict[str, str]) -> dict[str, Any]:
        session, duration = self._common(
            values, ("OIDCProviderArn", "RoleArn", "OIDCToken", "RoleSessionName")
        )
        provider = self.ram.find_oidc_provider(values["OIDCProviderArn"])
        if provider is None:
            raise _Refusal("AuthenticationFail.NoPermission", STS_NO_SUCH_PROVIDER)
        try:
            claims = jwt.verify(values["OIDCToken"], provider.key.public_key())
        except jwt.JwtError:
            raise _Refusal("AuthenticationFail.OIDCToken.Invalid") from None
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise _Refusal("AuthenticationFail.OIDCToken.Invalid")
        if claims.get("iss") != provider.issuer:
            raise _Refusal("AuthenticationFail.OIDCToken.IssuerNotMatch")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(a in provider.client_ids for a in audiences if isinstance(a, str)):
            raise _Refusal("AuthenticationFail.OIDCToken.AudienceNotMatch")
        if exp <= self._now():
            raise _Refusal("AuthenticationFail.OIDCToken.Expired")
        role = self._role(values["RoleArn"])
        if not role.trusted or provider.arn not in role.trusted_oidc_providers:
            raise _Refusal("AuthenticationFail.NoPermission", STS_NO_TRUST)
        return self._issue(role, session, duration)

    def _issue(self, role: RamRole, session: str, duration: int) -> dict[str, Any]:
        if duration > role.max_session_seconds:
            raise _Refusal("InvalidParameter.DurationSeconds")
        ttl: float = duration
        cap = self.ram.sts_max_ttl_seconds
        if cap is not None:
            ttl = min(ttl, cap)
        cred = self.store.issue(ttl, self._now(), role.account_id)
        self._sessions[role.arn] = self._sessions.get(role.arn, 0) + 1
        self._last[role.arn] = cred
        expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cred.expires_at))
        return {
            "RequestId": str(uuid.uuid4()).upper(),
            "AssumedRoleUser": {
                "Arn": f"acs:ram::{role.account_id}:role/{role.name.lower()}/{session}",
                "AssumedRoleId": f"{role.role_id}:{session}",
            },
            "Credentials": {
                "AccessKeyId": cred.access_key_id,
                "AccessKeySecret": cred.access_key_secret,
                "SecurityToken": cred.security_token,
                "Expiration": expiration,
            },
        }
