"""Credential sources, offline: static keys, the default chain, a credentials URI, role chains against the
simulated STS; caching until near the real expiry, one shared fetch, failures held and never cached, a
refused credential dropped, every credential registered as a secret the moment it exists."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from alibabacloud_credentials.utils import auth_util
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import ApiConfig, AssumeRoleConfig, CredentialsConfig
from exporter.credentials import (
    FAILURE_HOLD_SECONDS,
    MAX_HOLD_SECONDS,
    REFRESH_MARGIN_SECONDS,
    CachedCredentialSource,
    Credential,
    build_credential_source,
    refresh_time,
    scrub,
)
from exporter.errors import ApiError
from exporter.logging import mask_secrets
from exporter.openapi.client import EhpcClient
from tests.fixtures.clock import FakeWall
from tests.fixtures.credchain import isolate_default_chain
from tests.fixtures.estate import (
    ALPHA_AK,
    ALPHA_SECRET,
    PROVIDER_ARN,
    READER_ARN,
    SELF_READER_ARN,
    RunningEstate,
)

LEAKY_SECRET = "leaky-secret-9f8e7d"
LEAKY_TOKEN = "leaky-token-CAIS1234"


@pytest.fixture(autouse=True)
def isolated_chain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The library reads its environment once at import: patch those module attributes, not os.environ."""
    isolate_default_chain(monkeypatch, tmp_path)


@dataclass
class CredServer:
    """A credentials-URI endpoint that counts fetches and issues a new key pair each time."""

    url: str = ""
    hits: int = 0
    ttl: timedelta = timedelta(hours=1)
    body: dict[str, Any] | None = None  # overrides the answer when set
    status: int = 200
    issued: list[str] = field(default_factory=list)
    clock: Callable[[], float] = time.time  # what its Expiration is counted from
    release: asyncio.Event | None = None  # when set, each answer waits for it
    waiting: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, _request: web.Request) -> web.Response:
        self.hits += 1
        if self.release is not None:
            self.waiting.set()
            await self.release.wait()
        if self.body is not None:
            return web.json_response(self.body, status=self.status)
        ak = f"STS.key{self.hits}"
        self.issued.append(ak)
        expires = datetime.fromtimestamp(self.clock(), UTC) + self.ttl
        expiration = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
        return web.json_response(
            {
                "Code": "Success",
                "AccessKeyId": ak,
                "AccessKeySecret": f"fetched-secret-{self.hits:04d}",
                "SecurityToken": f"CAISfetched-token-{self.hits:04d}",
                "Expiration": expiration,
            }
        )


@pytest.fixture
async def cred_server() -> AsyncIterator[CredServer]:
    server = CredServer()
    app = web.Application()
    app.router.add_get("/creds", server.handle)
    runner = web.AppRunner(app, access_log=None)  # its access log would quote the URI's query
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}/creds?role=exporter"
    try:
        yield server
    finally:
        await runner.cleanup()


def test_credential_repr_hides_secret_and_token() -> None:
    cred = Credential("LTAIexample", "s3cr3t-value", "tok3n-value")
    text = repr(cred) + str(cred)
    assert "LTAIexample" in text
    assert "s3cr3t-value" not in text
    assert "tok3n-value" not in text


async def test_explicit_access_key_and_sts() -> None:
    ak = build_credential_source(
        CredentialsConfig(type="access_key", access_key_id="id1", access_key_secret="static-secret-000001")
    )
    assert await ak.get() == Credential("id1", "static-secret-000001", None)
    sts = build_credential_source(
        CredentialsConfig(
            type="sts",
            access_key_id="STS.id",
            access_key_secret="static-secret-000002",
            security_token="CAISstatic-token-0002",
        )
    )
    assert await sts.get() == Credential("STS.id", "static-secret-000002", "CAISstatic-token-0002")


async def test_env_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth_util, "environment_access_key_id", "env-id")
    monkeypatch.setattr(auth_util, "environment_access_key_secret", "env-secret-0123456789")
    source = build_credential_source(None)
    assert await source.get() == Credential("env-id", "env-secret-0123456789", None)
    monkeypatch.setattr(auth_util, "environment_security_token", "CAISenv-token-0123456")
    sts_source = build_credential_source(CredentialsConfig(type="default"))
    assert await sts_source.get() == Credential("env-id", "env-secret-0123456789", "CAISenv-token-0123456")


async def test_profile_file_in_chain(tmp_path: Path) -> None:
    (tmp_path / "credentials.ini").write_text(
        "[default]\ntype = access_key\naccess_key_id = ini-id\naccess_key_secret = ini-secret-0123456789\n"
    )
    assert await build_credential_source(None).get() == Credential("ini-id", "ini-secret-0123456789", None)


async def test_empty_chain_is_a_credential_error_not_a_crash() -> None:
    source = build_credential_source(None)
    with pytest.raises(ApiError) as info:
        await source.get()
    err = info.value
    assert err.code == "CredentialError"
    assert err.http_status == 0
    assert "unable to load credentials" in err.message
    assert err.__cause__ is None  # no library exception chained along
    assert err.__suppress_context__


async def test_control_characters_in_a_key_are_a_credential_error() -> None:
    source = build_credential_source(
        CredentialsConfig(
            type="sts",
            access_key_id="id",
            access_key_secret="static-secret-000003",
            security_token="CAIStoken-0003\r\nX: y",
        )
    )
    with pytest.raises(ApiError) as info:
        await source.get()
    assert info.value.code == "CredentialError"
    assert "control characters" in info.value.message


async def test_invalid_explicit_config_is_a_credential_error() -> None:
    source = build_credential_source(CredentialsConfig(type="access_key", access_key_id="only-id"))
    for _ in range(2):  # rebuilt (and failing again) on every call, never raising anything else
        with pytest.raises(ApiError) as info:
            await source.get()
        assert info.value.code == "CredentialError"
        assert "AccessKeySecret is empty" in info.value.message


async def test_credentials_uri_cached_until_near_expiry(cred_server: CredServer) -> None:
    source = build_credential_source(
        CredentialsConfig(type="credentials_uri", credentials_uri=cred_server.url)
    )
    first = await source.get()
    assert first == Credential("STS.key1", "fetched-secret-0001", "CAISfetched-token-0001")
    assert await source.get() is first  # served from the library cache, same object
    assert cred_server.hits == 1


async def test_a_credential_shorter_than_the_margin_is_kept_until_near_its_expiry(
    cred_server: CredServer,
) -> None:
    """Why: a credential valid for less than the library's 15-minute margin was fetched again on every
    call (every GetImage); now it is kept for three quarters of its life, then served while its refresh
    runs (a stalled endpoint costs nothing), never past its expiry."""
    clock = FakeWall()
    cred_server.clock = clock
    cred_server.ttl = timedelta(minutes=10)
    source = build_credential_source(
        CredentialsConfig(type="credentials_uri", credentials_uri=cred_server.url), clock=clock
    )
    first = await source.get()
    for _ in range(449):
        clock.advance(1)
        assert await source.get() is first
    assert cred_server.hits == 1
    # 450 s: a quarter of the 600 s lifetime is left. The refresh starts, behind the credential still
    # served: here the endpoint stalls, and no caller waits for it.
    cred_server.release = asyncio.Event()
    clock.advance(1)
    async with asyncio.timeout(30):
        assert await source.get() is first
        await cred_server.waiting.wait()
        clock.advance(149)
        assert await source.get() is first
        clock.advance(1)  # expired: now callers wait for the refresh in flight
        pending = asyncio.ensure_future(source.get())
        cred_server.release.set()
        assert (await pending).access_key_id == "STS.key2"
    assert cred_server.hits == 2


async def test_default_chain_uses_credentials_uri(
    monkeypatch: pytest.MonkeyPatch, cred_server: CredServer
) -> None:
    monkeypatch.setattr(auth_util, "environment_credentials_uri", cred_server.url)
    cred = await build_credential_source(None).get()
    assert cred.access_key_id == "STS.key1"
    assert cred.security_token == "CAISfetched-token-0001"


async def test_concurrent_callers_share_one_fetch(cred_server: CredServer) -> None:
    """Fifty images needing a credential at once make one request, and all get its answer."""
    cred_server.release = asyncio.Event()
    source = build_credential_source(
        CredentialsConfig(type="credentials_uri", credentials_uri=cred_server.url)
    )
    callers = [asyncio.ensure_future(source.get()) for _ in range(50)]
    async with asyncio.timeout(30):
        await cred_server.waiting.wait()
        cred_server.release.set()
        creds = await asyncio.gather(*callers)
    assert cred_server.hits == 1
    assert {c.access_key_id for c in creds} == {"STS.key1"}


async def test_failure_messages_and_logs_never_carry_secrets(
    cred_server: CredServer, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    cred_server.body = {
        "Code": "Failure",
        "AccessKeyId": "STS.leaky",
        "AccessKeySecret": LEAKY_SECRET,
        "SecurityToken": LEAKY_TOKEN,
        "Expiration": "2030-01-01T00:00:00Z",
    }
    uri = cred_server.url + "&signature=" + LEAKY_TOKEN
    clock = FakeWall()
    source = build_credential_source(
        CredentialsConfig(type="credentials_uri", credentials_uri=uri), clock=clock
    )
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ApiError) as info:
            await source.get()
        cred_server.body, cred_server.status = {"Code": "Oops", "AccessKeySecret": LEAKY_SECRET}, 500
        clock.advance(FAILURE_HOLD_SECONDS)  # the failure is held that long, then fetched again
        with pytest.raises(ApiError) as info500:
            await source.get()
    assert cred_server.hits == 2
    for err in (info.value, info500.value):
        assert err.code == "CredentialError"
        assert LEAKY_SECRET not in str(err)
        assert LEAKY_TOKEN not in str(err)
        assert "credentials type credentials_uri" in err.message
    logged = caplog.text + "".join(str(r.exc_info) for r in caplog.records)
    out, errs = capsys.readouterr()
    for text in (logged, out, errs):
        assert LEAKY_SECRET not in text
        assert LEAKY_TOKEN not in text


def test_scrub() -> None:
    msg = (
        "error refreshing credentials from http://h/creds?token=abc,  http_code=500, result: "
        '{"AccessKeySecret": "zzz-secret-0123456789"}'
    )
    out = scrub(msg)
    assert "zzz-secret-0123456789" not in out
    assert "token=abc" not in out
    assert "http_code=500" in out
    assert scrub("AccessKeySecret=zzz, SecurityToken: 'yyy'") == (
        "AccessKeySecret=[REDACTED], SecurityToken: [REDACTED]"
    )
    chain = (
        "chain: ['EnvironmentVariableCredentialsProvider: Environment variable accessKeyId cannot be empty']"
    )
    assert scrub(chain) == chain


async def test_sts_from_simulator_credentials_uri_signs_accepted_requests(simulator: Any) -> None:
    """End to end: /_sim/sts -> library URI provider -> STS-signed GetImage accepted by the simulator."""
    from ehpc_simulator import SimImage

    simulator.sim.images["m-sts1"] = SimImage(image_id="m-sts1", name="sts-image")
    source = build_credential_source(
        CredentialsConfig(type="credentials_uri", credentials_uri=f"{simulator.url.rstrip('/')}/_sim/sts")
    )
    cred = await source.get()
    assert cred.security_token  # STS: the client adds x-acs-accesskey-id and x-acs-security-token
    async with EhpcClient(ApiConfig(endpoint=simulator.url, qps=0), source) as client:
        image = await client.get_image("m-sts1")
    assert image.image_id == "m-sts1"
    assert image.name == "sts-image"
    assert simulator.sim.counters().get(("GetImage", "Success")) == 1


async def test_fetched_sts_secrets_are_masked_in_logs(simulator: Any) -> None:
    """Why: STS secrets rotate at run time; the redactor must learn each one as it is fetched."""
    from exporter.logging import mask_secrets

    source = build_credential_source(
        CredentialsConfig(type="credentials_uri", credentials_uri=f"{simulator.url.rstrip('/')}/_sim/sts")
    )
    cred = await source.get()
    assert cred.security_token
    assert cred.security_token not in mask_secrets(f"token={cred.security_token}")
    assert cred.access_key_secret not in mask_secrets(f"oops {cred.access_key_secret} leaked")


async def test_a_role_chain_whose_base_has_no_key_says_which() -> None:
    source = build_credential_source(
        CredentialsConfig(type="access_key", access_key_id="only-id"),
        AssumeRoleConfig("acs:ram::1111111111111111:role/reader", sts_endpoint="127.0.0.1:9"),
    )
    with pytest.raises(ApiError) as info:
        await source.get()
    assert info.value.message == (
        "credentials type access_key, assuming acs:ram::1111111111111111:role/reader: "
        "credentials type access_key: AccessKeySecret is empty"
    )


# ----- when to fetch again --------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(
    lifetime=st.floats(min_value=0, max_value=10 * 43_200, allow_nan=False),
    now=st.floats(min_value=0, max_value=4e9, allow_nan=False),
)
def test_refresh_time_is_before_expiry_by_a_share_of_the_lifetime(lifetime: float, now: float) -> None:
    """Any lifetime: the next fetch comes before expiry by min(15 min, a quarter of the life), never
    more than an hour after this one; sessions of an hour or more keep the library's 15 minutes."""
    at = refresh_time(now + lifetime, now)
    kept = at - now
    assert kept >= -1e-6
    assert kept <= min(lifetime - min(REFRESH_MARGIN_SECONDS, lifetime / 4), MAX_HOLD_SECONDS) + 1e-6
    assert kept >= min(0.75 * lifetime, lifetime - REFRESH_MARGIN_SECONDS, MAX_HOLD_SECONDS) - 1e-6


def test_refresh_time_of_the_schemas_shortest_session_and_the_default() -> None:
    assert refresh_time(900.0, 0.0) == 675.0
    assert refresh_time(3600.0, 0.0) == 2700.0
    assert refresh_time(43_200.0, 0.0) == MAX_HOLD_SECONDS
    assert refresh_time(None, 0.0) == 300.0


# ----- STS sessions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("duration", [900, 3600])
async def test_sts_calls_per_session(
    estate: RunningEstate, monkeypatch: pytest.MonkeyPatch, duration: int
) -> None:
    """Why: ``duration_seconds: 900`` is inside the library's 15-minute margin, so every GetImage made an
    AssumeRole (467 calls in 90 s). A get every 15 s for four sessions, on the STS's own clock: at most
    two AssumeRoles per session, and every credential handed out is one the STS still holds valid."""
    monkeypatch.setenv("SSL_CERT_FILE", estate.ca_file)
    source = build_credential_source(
        CredentialsConfig(type="access_key", access_key_id=ALPHA_AK, access_key_secret=ALPHA_SECRET),
        AssumeRoleConfig(READER_ARN, duration_seconds=duration, sts_endpoint=estate.ep.sts_host),
        clock=estate.clock,
    )
    assert isinstance(source, CachedCredentialSource)
    sessions, step = 4, 15
    for _ in range(sessions * duration // step):
        cred = await source.get()
        issued = estate.estate.sts.store.get(cred.access_key_id)
        assert issued is not None
        assert issued.expires_at > estate.clock()
        await source.settled()  # a refresh it started behind the credential lands before time moves on
        estate.clock.advance(step)
    calls = estate.estate.sts.sessions()[READER_ARN]
    print(f"duration {duration}: {calls} AssumeRole for {sessions} sessions")
    assert calls <= 2 * sessions
    assert estate.estate.sts_counters() == {("AssumeRole", "Success"): calls}


# ----- failures: held, never cached, a valid credential kept ----------------------------------------------


async def test_a_failed_fetch_is_held_then_fetched_again(cred_server: CredServer) -> None:
    """A failing endpoint is asked once per hold, not once per caller; after it, the next get fetches."""
    clock = FakeWall()
    cred_server.clock = clock
    cred_server.body, cred_server.status = {"Code": "ServiceUnavailable"}, 503
    source = build_credential_source(
        CredentialsConfig(type="credentials_uri", credentials_uri=cred_server.url), clock=clock
    )
    for _ in range(20):
        with pytest.raises(ApiError, match="HTTP 503 ServiceUnavailable"):
            await source.get()
        clock.advance(FAILURE_HOLD_SECONDS / 40)
    assert cred_server.hits == 1
    cred_server.body = None
    clock.advance(FAILURE_HOLD_SECONDS / 2)
    assert (await source.get()).access_key_id == "STS.key2"
    assert cred_server.hits == 2


BAD_ANSWERS: list[tuple[str, dict[str, Any]]] = [
    ("expiration garbage", {"Expiration": "tomorrow"}),
    ("expired", {"Expiration": "2001-01-01T00:00:00Z"}),
    ("token with a newline", {"SecurityToken": "CAIS\nInjected: header"}),
    ("huge token", {"SecurityToken": "C" * 9000}),
    ("secret not a string", {"AccessKeySecret": 12345}),
    ("no key id", {"AccessKeyId": None}),
]


@pytest.mark.parametrize("change", [c for _, c in BAD_ANSWERS], ids=[n for n, _ in BAD_ANSWERS])
async def test_a_refused_answer_is_never_held(cred_server: CredServer, change: dict[str, Any]) -> None:
    """Why: the library cached an answer the exporter then refused, so one malformed answer broke the
    target until a restart. Refused, nothing is held: once the endpoint answers well, it is used."""
    clock = FakeWall()
    cred_server.clock = clock
    good = {
        "Code": "Success",
        "AccessKeyId": "STS.poison",
        "AccessKeySecret": "poison-secret-0123",
        "SecurityToken": "CAISpoison0123-abcdef",
        "Expiration": "2099-01-01T00:00:00Z",
    }
    cred_server.body = {**good, **change}
    source = build_credential_source(
        CredentialsConfig(type="credentials_uri", credentials_uri=cred_server.url), clock=clock
    )
    with pytest.raises(ApiError) as info:
        await source.get()
    assert info.value.code == "CredentialError"
    cred_server.body = None
    clock.advance(FAILURE_HOLD_SECONDS)
    assert (await source.get()).access_key_id == "STS.key2"


async def test_a_valid_credential_is_served_while_a_refresh_fails_and_never_past_its_expiry(
    cred_server: CredServer,
) -> None:
    clock = FakeWall()
    cred_server.clock = clock
    source = build_credential_source(
        CredentialsConfig(type="credentials_uri", credentials_uri=cred_server.url), clock=clock
    )
    first = await source.get()  # valid for an hour, refreshed after 45 minutes
    clock.advance(2700)
    cred_server.body, cred_server.status = {"Code": "InternalError"}, 500
    assert await source.get() is first
    clock.advance(899)
    assert await source.get() is first
    clock.advance(1)  # expired
    with pytest.raises(ApiError, match="HTTP 500 InternalError"):
        await source.get()


async def test_a_key_the_api_refuses_is_dropped_and_fetched_anew(
    cred_server: CredServer, simulator: Any
) -> None:
    """A credential the gateway answers InvalidAccessKeyId.NotFound for is not signed with again: the next
    attempt fetches a new one (here the endpoint's keys are unknown to the simulator, so each is refused)."""
    from ehpc_simulator import SimImage

    simulator.sim.images["m-refused"] = SimImage(image_id="m-refused", name="refused")
    source = build_credential_source(
        CredentialsConfig(type="credentials_uri", credentials_uri=cred_server.url)
    )
    async with EhpcClient(ApiConfig(endpoint=simulator.url, qps=0), source) as client:
        for _ in range(3):
            with pytest.raises(ApiError, match=r"InvalidAccessKeyId\.NotFound"):
                await client.get_image("m-refused")
    assert cred_server.issued == ["STS.key1", "STS.key2", "STS.key3"]


# ----- every credential is a secret from the moment it exists ---------------------------------------------


def test_configured_keys_are_masked_from_the_start() -> None:
    build_credential_source(
        CredentialsConfig(
            type="sts",
            access_key_id="STS.cfg",
            access_key_secret="cfg-secret-4711-abcdef",
            security_token="CAIScfg-tok-4711-abcdef",
        )
    )
    assert mask_secrets("cfg-secret-4711-abcdef CAIScfg-tok-4711-abcdef") == "[REDACTED] [REDACTED]"


async def test_a_refused_answers_secret_and_token_are_masked_all_the_same(cred_server: CredServer) -> None:
    """The answer is refused (its Expiration is past), but its secret and token existed: both are masked."""
    cred_server.body = {
        "Code": "Success",
        "AccessKeyId": "STS.late",
        "AccessKeySecret": "late-secret-5150-abcdef",
        "SecurityToken": "CAISlate5150-abcdef",
        "Expiration": "2001-01-01T00:00:00Z",
    }
    source = build_credential_source(
        CredentialsConfig(type="credentials_uri", credentials_uri=cred_server.url)
    )
    with pytest.raises(ApiError, match="Expiration is already past"):
        await source.get()
    assert mask_secrets("late-secret-5150-abcdef/CAISlate5150-abcdef") == "[REDACTED]/[REDACTED]"


async def test_every_step_of_a_role_chain_and_the_oidc_token_are_masked(
    estate: RunningEstate, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """alpha's key assumes beta's reader role, whose credential assumes beta's self-reader role: the
    intermediate (reader) credential is as secret as the last. An OIDC token is masked once read."""
    monkeypatch.setenv("SSL_CERT_FILE", estate.ca_file)
    chain = build_credential_source(
        CredentialsConfig(
            type="ram_role_arn",
            access_key_id=ALPHA_AK,
            access_key_secret=ALPHA_SECRET,
            role_arn=READER_ARN,
            sts_endpoint=estate.ep.sts_host,
        ),
        AssumeRoleConfig(SELF_READER_ARN, sts_endpoint=estate.ep.sts_host),
    )
    final = await chain.get()
    middle = estate.estate.sts.last_issued(READER_ARN)
    last = estate.estate.sts.last_issued(SELF_READER_ARN)
    assert middle is not None
    assert last is not None
    assert final.access_key_id == last.access_key_id
    for secret in (
        middle.access_key_secret,
        middle.security_token,
        last.access_key_secret,
        last.security_token,
    ):
        assert mask_secrets(f"<{secret}>") == "<[REDACTED]>"

    token = estate.estate.issue_oidc_token(PROVIDER_ARN)
    (tmp_path / "token").write_text(token + "\n")
    oidc = build_credential_source(
        CredentialsConfig(
            type="oidc_role_arn",
            role_arn=SELF_READER_ARN,  # not trusting the provider: refused, but the token was read
            oidc_provider_arn=PROVIDER_ARN,
            oidc_token_file=str(tmp_path / "token"),
            sts_endpoint=estate.ep.sts_host,
        )
    )
    with pytest.raises(ApiError, match=r"AuthenticationFail\.NoPermission"):
        await oidc.get()
    assert mask_secrets(token) == "[REDACTED]"
