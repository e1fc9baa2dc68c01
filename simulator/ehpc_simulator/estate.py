"""A simulated estate: several accounts and regions of E-HPC Instant, and the STS that lets keys become roles.

Endpoints (:meth:`Estate.serve`): **one port per region**. Each region's gateway listens on its own
port (http by default), serves every account, checks the ACS3 signature once against the shared key
directory (every account's long-term AccessKeys, and the STS credentials the estate's STS issued, each
acting for one account), then hands the request to that account's simulator of that region
(:class:`ehpc_simulator.server.Simulator`: its images, faults and counters). A key of account A asking
for an image only account B has gets ``ImageNotFound`` (it does not exist in A's account); an unknown
key ``InvalidAccessKeyId.NotFound``; an expired STS credential ``InvalidSecurityToken.Expired``.
Refusals of keys no account owns are counted by the region's :meth:`Estate.unattributed` simulator.
The STS (:mod:`ehpc_simulator.sts`) has a port of its own and speaks HTTPS only (the credentials
library forces ``https`` for STS); without an ``sts_ssl_context`` the estate makes a throwaway CA
(:mod:`ehpc_simulator.certs`) whose PEM is ``EstateEndpoints.ca_file``.

Admin API (unauthenticated JSON, as :mod:`ehpc_simulator.admin`): each region port serves the
single-simulator admin routes (``/_sim/images``, ``/_sim/faults``, ``/_sim/scripts``, ``/_sim/sts``...)
for the account named by ``?account=<name or id>`` (optional when the estate has one account), plus
``GET /_sim/accounts``. The STS port serves the estate's own
(:data:`ehpc_simulator.admin.ESTATE_ENDPOINTS`).

Estate file (YAML or JSON; ``.json`` read as JSON, anything else as YAML), read by the frozen pydantic
models of :mod:`ehpc_simulator.estate_file`, which report every problem at once, one line each naming the
file, the line and column, and the field::

    regions: [cn-hangzhou, cn-shanghai]   # every account has every region (empty unless given below)
    sts_max_ttl_seconds: null             # cap on issued credential lifetimes, seconds (default: none;
                                          # the real STS honours DurationSeconds)
    accounts:
      - name: prod                        # unique; admin ?account= and Estate.account() take it or the id
        id: "1111111111111111"            # 12-16 digits, unique
        access_keys: {PROD-AK: prod-secret}   # long-term AccessKeys, id -> secret
        oidc_providers:
          - name: ack-rrsa
            issuer: https://oidc-ack-cn-hangzhou.oss-cn-hangzhou.aliyuncs.com/c0ffee
            client_ids: [sts.aliyuncs.com]    # accepted audiences (default: sts.aliyuncs.com)
        roles:
          - name: ehpc-reader             # case-insensitive, as in RAM
            trusted_accounts: [prod]      # names or ids whose keys may AssumeRole (default: the role's own
                                          # account, unless trusted_oidc_providers is given)
            trusted_oidc_providers: []    # provider names of this account, or provider ARNs
            external_id: null             # when set, AssumeRole must send this ExternalId
            max_session_seconds: 3600     # RAM's MaxSessionDuration: DurationSeconds above it is refused
        regions:
          cn-hangzhou:
            images: [...]                 # the fleet format of ehpc_simulator/fleet.py (images, generate)
            faults: {latency_ms: 20}      # Faults fields, as the admin API's PUT /_sim/faults takes them
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ehpc_simulator import admin, estate_file
from ehpc_simulator.auth import KeyDirectory, StsStore, Verifier
from ehpc_simulator.certs import make_local_tls
from ehpc_simulator.estate_file import ACCOUNT_ID, RAM_NAME, RAM_NAME_RULE, EstateFile
from ehpc_simulator.server import Simulator, serve_app
from ehpc_simulator.sts import (
    DEFAULT_CLIENT_IDS,
    DEFAULT_MAX_SESSION_SECONDS,
    OidcProvider,
    RamRole,
    StsService,
    parse_oidc_provider_arn,
    parse_role_arn,
)

DEFAULT_SUBJECT = "system:serviceaccount:monitoring:ehpc-image-exporter"
DEFAULT_AUDIENCE = "sts.aliyuncs.com"


class Account:
    """One account of the estate: its AccessKeys, RAM roles, OIDC providers and per-region simulators."""

    def __init__(self, estate: Estate, account_id: str, name: str, access_keys: Mapping[str, str]) -> None:
        self.id = account_id
        self.name = name
        self.access_keys: dict[str, str] = dict(access_keys)  # live: the gateways and the STS read it
        self.roles: dict[str, RamRole] = {}  # by lower-cased name
        self.oidc_providers: dict[str, OidcProvider] = {}
        self._regions: dict[str, Simulator] = {}
        for region_id in estate.regions:
            # One key dict and one clock for the whole estate, whichever door a request comes through.
            sim = Simulator(
                access_keys={},
                region_id=region_id,
                account_id=account_id,
                sts=estate.credentials,
                clock=estate.now,
                signing_clock=estate.signing_now,
            )
            sim.verifier.access_keys = self.access_keys
            self._regions[region_id] = sim

    def region(self, region_id: str) -> Simulator:
        """This account's simulator of ``region_id`` (its images, faults, counters)."""
        try:
            return self._regions[region_id]
        except KeyError:
            raise KeyError(f"account {self.name}: no region {region_id!r}") from None

    @property
    def regions(self) -> dict[str, Simulator]:
        """Region id -> simulator (a copy of the mapping)."""
        return dict(self._regions)

    def add_role(
        self,
        name: str,
        *,
        trusted_accounts: Iterable[str] = (),
        trusted_oidc_providers: Iterable[str] = (),
        external_id: str | None = None,
        max_session_seconds: int = DEFAULT_MAX_SESSION_SECONDS,
    ) -> RamRole:
        """Create a role trusting account ids and provider ARNs (the estate file also takes names)."""
        if not RAM_NAME.match(name):
            raise ValueError(f"role name {name!r}: {RAM_NAME_RULE}")
        if name.lower() in self.roles:
            raise ValueError(f"role {name!r} exists already in account {self.name}")
        role = RamRole(
            account_id=self.id,
            name=name,
            trusted_accounts=set(trusted_accounts),
            trusted_oidc_providers=set(trusted_oidc_providers),
            external_id=external_id,
            max_session_seconds=max_session_seconds,
        )
        self.roles[name.lower()] = role
        return role

    def add_oidc_provider(
        self, name: str, *, issuer: str, client_ids: Sequence[str] = DEFAULT_CLIENT_IDS
    ) -> OidcProvider:
        """Create an OIDC provider (with a fresh RSA signing key)."""
        if not RAM_NAME.match(name):
            raise ValueError(f"OIDC provider name {name!r}: {RAM_NAME_RULE}")
        if name in self.oidc_providers:
            raise ValueError(f"OIDC provider {name!r} exists already in account {self.name}")
        provider = OidcProvider(account_id=self.id, name=name, issuer=issuer, client_ids=tuple(client_ids))
        self.oidc_providers[name] = provider
        return provider

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (AccessKey ids only, never secrets)."""
        return {
            "name": self.name,
            "id": self.id,
            "access_key_ids": sorted(self.access_keys),
            "roles": [r.to_dict() for r in self.roles.values()],
            "oidc_providers": [p.to_dict() for p in self.oidc_providers.values()],
            "regions": sorted(self._regions),
        }


@dataclass(frozen=True, slots=True)
class EstateEndpoints:
    """Where a served estate listens."""

    region_urls: dict[str, str]  # region id -> "http://127.0.0.1:PORT"
    sts_url: str  # "https://127.0.0.1:PORT"
    ca_file: str | None  # the throwaway CA's PEM when the estate made the STS certificate, else None

    @property
    def sts_host(self) -> str:
        """``host:port`` of the STS, as alibabacloud-credentials takes ``sts_endpoint``."""
        return self.sts_url.split("://", 1)[1]

    def region_host(self, region_id: str) -> str:
        """``host:port`` of a region's gateway, as the official SDK takes ``endpoint``."""
        return self.region_urls[region_id].split("://", 1)[1]


class _Gateway:
    """One region's API endpoint for every account: verify once, then the owning account's simulator."""

    def __init__(self, estate: Estate, region_id: str) -> None:
        self.estate = estate
        self.region_id = region_id
        self.verifier = Verifier(
            {}, estate.credentials, clock=estate.now, directory=estate.keys, date_clock=estate.signing_now
        )
        self.unattributed = Simulator(
            access_keys={}, region_id=region_id, sts=estate.credentials, clock=estate.now
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("POST", "/", self.api)
        app.router.add_route("GET", "/", self.api)
        admin.add_routes(app.router, resolve=self.admin_target)
        app.router.add_get("/_sim/accounts", self.accounts)
        for account in self.estate.accounts:
            account.region(self.region_id).attach(app)
        self.unattributed.attach(app)
        return app

    async def api(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        raw_query = request.rel_url.raw_query_string
        verified = self.verifier.verify(request.method, "/", raw_query, request.headers, body)
        account_id = verified.account_id
        # A refused request whose key no account owns has no account to be counted in.
        sim = self.unattributed
        if account_id is not None:
            sim = self.estate.account(account_id).region(self.region_id)
        return await sim.answer(request, body, verified)

    def admin_target(self, request: web.Request) -> Simulator:
        wanted = request.query.get("account")
        if wanted is None:
            if len(self.estate.accounts) == 1:
                return self.estate.accounts[0].region(self.region_id)
            names = ", ".join(a.name for a in self.estate.accounts)
            raise admin.bad_request(f"account: required, one of {names}")
        try:
            return self.estate.account(wanted).region(self.region_id)
        except KeyError:
            raise admin.not_found(f"no such account {wanted!r}") from None

    async def accounts(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"region_id": self.region_id, "accounts": self.estate.describe()["accounts"]}
        )


class Estate:
    """Accounts x regions of simulated E-HPC Instant, plus the STS; see the module docstring."""

    def __init__(
        self,
        regions: Sequence[str],
        *,
        sts_max_ttl_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
        signing_clock: Callable[[], float] | None = None,
    ) -> None:
        if not regions or len(set(regions)) != len(regions):
            raise ValueError("regions: a non-empty list of distinct region ids is required")
        self.regions: tuple[str, ...] = tuple(regions)
        # Caps issued lifetimes (None: DurationSeconds as asked); change it at any time.
        self.sts_max_ttl_seconds = sts_max_ttl_seconds
        self.clock = clock  # epoch seconds; replace it (e.g. a fake clock) at any time
        # When set, the signature timestamp checks read it instead of clock (see Simulator.signing_clock).
        self.signing_clock = signing_clock
        self.credentials = StsStore()
        self.keys = KeyDirectory()
        self.accounts: list[Account] = []
        self.sts = StsService(self, self.keys, self.credentials)
        self.sts.verifier.date_clock = self.signing_now
        self._gateways = {r: _Gateway(self, r) for r in self.regions}

    def now(self) -> float:
        """The estate's clock, read now (a stable callable for verifiers, whatever ``clock`` becomes)."""
        return self.clock()

    def signing_now(self) -> float:
        """The clock the signature timestamp checks read: ``signing_clock``, else ``clock``."""
        return (self.signing_clock or self.clock)()

    # ----- building ---------------------------------------------------------------------------------

    def add_account(
        self, account_id: str, name: str, access_keys: Mapping[str, str] | None = None
    ) -> Account:
        """Create an account (every estate region gets an empty simulator for it)."""
        if not ACCOUNT_ID.match(account_id):
            raise ValueError(f"account id {account_id!r}: 12-16 digits")
        if not name:
            raise ValueError("account name: required")
        for other in self.accounts:
            if account_id in (other.id, other.name) or name in (other.id, other.name):
                raise ValueError(f"account {name} ({account_id}): id or name taken by {other.name}")
        account = Account(self, account_id, name, access_keys or {})
        self.accounts.append(account)
        self.keys.add_account(account_id, account.access_keys)
        return account

    @classmethod
    def from_dict(cls, data: Any, *, clock: Callable[[], float] = time.time) -> Estate:
        """An estate from parsed file data (module docstring); EstateFileError (a ValueError) names
        every bad field."""
        return cls.from_file(estate_file.read(data), clock=clock)

    @classmethod
    def load(cls, path: str | Path, *, clock: Callable[[], float] = time.time) -> Estate:
        """Read an estate file (YAML, or JSON for ``.json``); EstateFileError (a ValueError) names the
        file, and every bad field with its line and column."""
        return cls.from_file(estate_file.load(path), clock=clock)

    @classmethod
    def from_file(cls, spec: EstateFile, *, clock: Callable[[], float] = time.time) -> Estate:
        """The estate a validated file describes (its rules hold, so building it cannot fail)."""
        estate = cls(spec.regions, sts_max_ttl_seconds=spec.sts_max_ttl_seconds, clock=clock)
        built = [(estate.add_account(a.id, a.name, a.access_keys), a) for a in spec.accounts]
        for account, given in built:
            for p in given.oidc_providers:
                account.add_oidc_provider(p.name, issuer=p.issuer, client_ids=p.client_ids)
        # Trusts once every account and provider exists: a role may name one later in the file.
        for account, given in built:
            for role in given.roles:
                providers = [
                    account.oidc_providers[ref].arn if ref in account.oidc_providers else ref
                    for ref in role.trusted_oidc_providers
                ]
                trusted = role.trusted_accounts
                if trusted is None:
                    trusted = () if providers else (account.id,)
                account.add_role(
                    role.name,
                    trusted_accounts=[estate.account(ref).id for ref in trusted],
                    trusted_oidc_providers=providers,
                    external_id=role.external_id,
                    max_session_seconds=role.max_session_seconds,
                )
            for region_id, region in given.regions.items():
                sim = account.region(region_id)
                sim.images.update((image.image_id, image) for image in region.fleet)
                if region.faults is not None:
                    sim.faults = region.faults
        return estate

    # ----- looking up -------------------------------------------------------------------------------

    def account(self, name_or_id: str) -> Account:
        """The account with this name or id; KeyError if none."""
        for account in self.accounts:
            if name_or_id in (account.id, account.name):
                return account
        raise KeyError(f"no account {name_or_id!r}")

    def find_role(self, arn: str) -> RamRole | None:
        """The role an ARN names (case-insensitive name), or None."""
        parsed = parse_role_arn(arn)
        if parsed is None:
            return None
        try:
            return self.account(parsed[0]).roles.get(parsed[1])
        except KeyError:
            return None

    def find_oidc_provider(self, arn: str) -> OidcProvider | None:
        """The OIDC provider an ARN names, or None."""
        parsed = parse_oidc_provider_arn(arn)
        if parsed is None:
            return None
        try:
            return self.account(parsed[0]).oidc_providers.get(parsed[1])
        except KeyError:
            return None

    def oidc_provider(self, arn_or_name: str) -> OidcProvider:
        """An OIDC provider by ARN, or by name when exactly one account has one of that name."""
        found = self.find_oidc_provider(arn_or_name)
        if found is not None:
            return found
        named = [a.oidc_providers[arn_or_name] for a in self.accounts if arn_or_name in a.oidc_providers]
        if len(named) != 1:
            raise KeyError(f"no single OIDC provider {arn_or_name!r} ({len(named)} found)")
        return named[0]

    def unattributed(self, region_id: str) -> Simulator:
        """The simulator counting a region's refusals of keys no account owns."""
        return self._gateways[region_id].unattributed

    def describe(self) -> dict[str, Any]:
        """JSON-ready view of the estate (no secrets)."""
        return {
            "regions": list(self.regions),
            "sts_max_ttl_seconds": self.sts_max_ttl_seconds,
            "accounts": [a.to_dict() for a in self.accounts],
        }

    # ----- runtime controls -------------------------------------------------------------------------

    def set_trust(self, role_arn: str, trusted: bool) -> RamRole:
        """Revoke (False) or restore (True) a role's trust policy; KeyError for an unknown role."""
        role = self.find_role(role_arn)
        if role is None:
            raise KeyError(f"no role {role_arn!r}")
        role.trusted = trusted
        return role

    def issue_oidc_token(
        self,
        provider_arn_or_name: str,
        *,
        subject: str = DEFAULT_SUBJECT,
        audience: str | list[str] = DEFAULT_AUDIENCE,
        ttl_seconds: float = 3600,
        issuer: str | None = None,
    ) -> str:
        """A JWT signed by the provider's key that the STS accepts (``issuer`` overrides ``iss``)."""
        provider = self.oidc_provider(provider_arn_or_name)
        return provider.issue_token(
            self.now(), subject=subject, audience=audience, ttl_seconds=ttl_seconds, issuer=issuer
        )

    def sts_counters(self) -> dict[tuple[str, str], int]:
        """(action, code) -> STS answers sent."""
        return self.sts.counters()

    # ----- serving ----------------------------------------------------------------------------------

    def sts_app(self) -> web.Application:
        """The STS application: the API on ``/`` and the estate admin API on ``/_sim/``."""
        app = web.Application()
        self.sts.add_routes(app.router)
        admin.add_estate_routes(app.router, self)
        return app

    def region_app(self, region_id: str) -> web.Application:
        """A region gateway's application (API and per-account admin API)."""
        return self._gateways[region_id].app()

    @contextlib.asynccontextmanager
    async def serve(
        self,
        host: str = "127.0.0.1",
        *,
        region_ports: Mapping[str, int] | None = None,
        sts_port: int = 0,
        sts_ssl_context: Any | None = None,
        region_ssl_context: Any | None = None,
    ) -> AsyncIterator[EstateEndpoints]:
        """Serve every region gateway (a port each; 0 or absent: a free one) and the STS (HTTPS)."""
        ports = dict(region_ports or {})
        async with contextlib.AsyncExitStack() as stack:
            ca_file = None
            if sts_ssl_context is None:
                tls_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="ehpc-sim-tls-"))
                local = make_local_tls(tls_dir)
                sts_ssl_context, ca_file = local.server_context, local.ca_file
            region_urls: dict[str, str] = {}
            for region_id in self.regions:
                url = await stack.enter_async_context(
                    serve_app(self.region_app(region_id), host, ports.get(region_id, 0), region_ssl_context)
                )
                region_urls[region_id] = url
            sts_url = await stack.enter_async_context(
                serve_app(self.sts_app(), host, sts_port, sts_ssl_context)
            )
            for account in self.accounts:
                for region_id, sim in account.regions.items():
                    sim.url = region_urls[region_id]
            try:
                yield EstateEndpoints(region_urls=region_urls, sts_url=sts_url, ca_file=ca_file)
            finally:
                for account in self.accounts:
                    for sim in account.regions.values():
                        sim.url = None
