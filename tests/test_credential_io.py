"""A private CA for the STS and a credentials URI: the target's ``api.ca_file`` reaches every credential
fetch, with nothing in the environment (no ``SSL_CERT_FILE``).

The STS is the simulator's, serving the certificate of the throwaway CA the estate makes itself
(``Estate.serve`` without a context); a credentials URI is an HTTPS server with the test session's own CA.
Each way of fetching a credential is a case of one family, configured from a file as a user writes it:
with the CA configured the credential comes and the API takes it; without it the fetch fails, saying
the certificate is not trusted and where a private CA goes, and no request reaches the STS. A CA file
that is not one is refused by name, before any connection and without blocking.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import trustme
import yarl
from aiohttp import web
from alibabacloud_credentials.utils import auth_util

from ehpc_simulator.estate import Estate, EstateEndpoints
from exporter import credential_io
from exporter.config import Config
from exporter.config.load import load_config
from exporter.credential_io import CredentialFault
from exporter.errors import ApiError
from exporter.openapi.client import EhpcClient
from exporter.service import new_account
from tests.fixtures.credchain import isolate_default_chain
from tests.fixtures.estate import (
    ALPHA_AK,
    ALPHA_SECRET,
    BETA_HZ_IMAGE,
    GAMMA_HZ_IMAGE,
    HZ,
    OIDC_ROLE_ARN,
    PROVIDER_ARN,
    READER_ARN,
    estate_data,
)

WAIT = 30.0  # how long a test waits for an event before it fails: generous, never a measurement


@pytest.fixture(autouse=True)
def nothing_trusted_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CA in the environment, and the library's default chain reads nothing of this machine."""
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    isolate_default_chain(monkeypatch, tmp_path)


@dataclass
class Served:
    """The estate with its own CA, and an HTTPS credentials URI with the session's CA."""

    estate: Estate
    ep: EstateEndpoints
    uri: str
    uri_ca_file: str


@pytest.fixture
async def served(server_ssl_context: ssl.SSLContext, ca_file: str) -> AsyncIterator[Served]:
    """The fixture estate, its STS on the simulator's own throwaway CA; a credentials URI over HTTPS
    serving beta's STS credentials (issued by the estate, so the API takes them)."""
    estate = Estate.from_dict(estate_data())
    async with estate.serve() as ep:
        assert ep.ca_file is not None  # the estate made its certificate

        async def creds(_request: web.Request) -> web.Response:
            url = f"{ep.region_urls[HZ]}/_sim/sts?account=beta&ttl_seconds=900"
            async with aiohttp.ClientSession() as http, http.get(url) as resp:
                issued = await resp.json()
            return web.json_response({"Code": "Success", **issued})

        app = web.Application()
        app.router.add_get("/creds", creds)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl_context)
        await site.start()
        port = runner.addresses[0][1]
        try:
            yield Served(estate, ep, f"https://127.0.0.1:{port}/creds", ca_file)
        finally:
            await runner.cleanup()


@dataclass(frozen=True)
class Way:
    """One way of fetching a credential: the target's account and YAML, the image it may read, whether
    the fetch goes to the STS (else to the credentials URI), and what the environment adds."""

    account: str
    target: Callable[[Served, Path], str]
    image: str
    via_sts: bool = True
    environment: Callable[[Served, Path, pytest.MonkeyPatch], None] | None = None


def _token(served: Served, tmp_path: Path) -> str:
    path = tmp_path / "rrsa-token"
    path.write_text(served.estate.issue_oidc_token(PROVIDER_ARN))
    return str(path)


def _rrsa_environment(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the ACK RRSA webhook sets (read by the library at import: its module attributes)."""
    monkeypatch.setattr(auth_util, "enable_oidc_credential", True)
    monkeypatch.setattr(auth_util, "environment_role_arn", OIDC_ROLE_ARN)
    monkeypatch.setattr(auth_util, "environment_oidc_provider_arn", PROVIDER_ARN)
    monkeypatch.setattr(auth_util, "environment_oidc_token_file", _token(served, tmp_path))
    monkeypatch.setattr(auth_util, "environment_role_session_name", None)


KEY = f"access_key_id: {ALPHA_AK}, access_key_secret: {ALPHA_SECRET}"
WAYS: dict[str, Way] = {
    "credentials ram_role_arn": Way(
        "beta",
        lambda s, _t: (
            f"credentials: {{type: ram_role_arn, {KEY}, role_arn: '{READER_ARN}',"
            f" sts_endpoint: '{s.ep.sts_host}'}}"
        ),
        BETA_HZ_IMAGE,
    ),
    "assume_role": Way(
        "beta",
        lambda s, _t: (
            f"credentials: {{type: access_key, {KEY}}}\n"
            f"    assume_role: {{role_arn: '{READER_ARN}', sts_endpoint: '{s.ep.sts_host}'}}"
        ),
        BETA_HZ_IMAGE,
    ),
    "oidc_role_arn": Way(
        "gamma",
        lambda s, t: (
            f"credentials: {{type: oidc_role_arn, role_arn: '{OIDC_ROLE_ARN}', oidc_provider_arn:"
            f" '{PROVIDER_ARN}', oidc_token_file: '{_token(s, t)}', sts_endpoint: '{s.ep.sts_host}'}}"
        ),
        GAMMA_HZ_IMAGE,
    ),
    "default chain (RRSA)": Way(
        "gamma",
        lambda s, _t: f"credentials: {{type: default, sts_endpoint: '{s.ep.sts_host}'}}",
        GAMMA_HZ_IMAGE,
        environment=_rrsa_environment,
    ),
    "credentials_uri over https": Way(
        "beta",
        lambda s, _t: f"credentials: {{type: credentials_uri, credentials_uri: '{s.uri}'}}",
        BETA_HZ_IMAGE,
        via_sts=False,
    ),
}


def _config(served: Served, way: Way, tmp_path: Path, ca_file: str | None) -> Config:
    """The one-target config file a user writes for ``way``, read by the exporter's own loader."""
    trust = f"\n  ca_file: '{ca_file}'" if ca_file else ""
    path = tmp_path / "config.yaml"
    path.write_text(
        f"api:\n  qps: 0\n  retry: {{max_attempts: 1}}{trust}\n"
        "targets:\n"
        f"  - account: {way.account}\n"
        f"    {way.target(served, tmp_path)}\n"
        f"    regions: [{{region_id: {HZ}, endpoint: '{served.ep.region_urls[HZ]}'}}]\n"
        f"    images: [{{id: {way.image}}}]\n"
    )
    (scope,) = load_config(str(path)).scopes()
    return scope


def _ca_for(served: Served, way: Way) -> str:
    ca = served.ep.ca_file if way.via_sts else served.uri_ca_file
    assert ca is not None
    return ca


@pytest.mark.parametrize("name", sorted(WAYS))
async def test_the_configured_ca_reaches_every_credential_fetch(
    served: Served, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``api.ca_file`` naming the private CA (and nothing in the environment), each way fetches its
    credential, and the API answers the call signed with it."""
    way = WAYS[name]
    if way.environment is not None:
        way.environment(served, tmp_path, monkeypatch)
    config = _config(served, way, tmp_path, _ca_for(served, way))
    account = new_account(config)
    async with asyncio.timeout(WAIT):
        credential = await account.credentials.get()
        assert credential.security_token  # an STS credential, issued for the role or by the URI
        async with EhpcClient(config.api, account.credentials) as client:
            image = await client.get_image(way.image)
    assert image.image_id == way.image
    if way.via_sts:
        assert sum(n for (_action, code), n in served.estate.sts_counters().items() if code == "Success") == 1


@pytest.mark.parametrize("name", sorted(WAYS))
async def test_without_the_ca_the_fetch_says_the_certificate_is_not_trusted(
    served: Served, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same configs without ``api.ca_file``: a CredentialError naming the host and saying where a
    private CA goes; the STS never sees a request (the TLS handshake is refused first)."""
    way = WAYS[name]
    if way.environment is not None:
        way.environment(served, tmp_path, monkeypatch)
    account = new_account(_config(served, way, tmp_path, None))
    async with asyncio.timeout(WAIT):
        with pytest.raises(ApiError) as info:
            await account.credentials.get()
    assert info.value.code == "CredentialError"
    assert "127.0.0.1: its TLS certificate is not trusted (" in info.value.message
    assert "a private CA is trusted with api.ca_file" in info.value.message
    assert served.estate.sts_counters() == {}


def test_the_ca_file_is_part_of_the_account(tmp_path: Path) -> None:
    """Configs differing only in ``api.ca_file`` are distinct credential sources: a reload that changes
    the CA builds the source anew."""
    settings = []
    for name in ("a.pem", "b.pem"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            f"api: {{ca_file: /etc/{name}}}\nimages: [{{id: m-1}}]\n"
            "credentials: {type: access_key, access_key_id: a, access_key_secret: ca-test-secret-0123456}\n"
        )
        (scope,) = load_config(str(path)).scopes()
        settings.append(scope.account_settings)
    assert settings[0] != settings[1]


# ----- a CA file that is not one ------------------------------------------------------------------------


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return str(path)


def _directory(path: Path) -> str:
    path.mkdir()
    return str(path)


def _other_ca(path: Path) -> str:
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


# What the CredentialError says of each: the reader's words after "CA file <path>: ", or (a real CA,
# not the STS's) that the certificate is not trusted.
BAD_CA_FILES: dict[str, tuple[Callable[[Path], str], str]] = {
    "missing": (lambda p: str(p / "nowhere.pem"), "No such file or directory"),
    "directory": (_directory, "Is a directory"),
    "FIFO": (_fifo, "not a regular file (a FIFO)"),
    "/dev/zero": (lambda _p: "/dev/zero", "not a regular file (a character device)"),
    "empty": (lambda p: (p.write_text(""), str(p))[1], "no PEM certificate in it"),
    "not PEM": (lambda p: (p.write_text("hello\n"), str(p))[1], "no PEM certificate in it"),
    "binary": (lambda p: (p.write_bytes(b"\x00\xff" * 64), str(p))[1], "no PEM certificate in it"),
    "a broken PEM": (
        lambda p: (p.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), str(p))[1],
        "no PEM certificate in it",
    ),
    "oversize": (
        lambda p: (p.write_bytes(b"#" * (credential_io.MAX_CA_FILE_BYTES + 1)), str(p))[1],
        f"larger than {credential_io.MAX_CA_FILE_BYTES} bytes",
    ),
    "another CA": (_other_ca, "its TLS certificate is not trusted"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CA_FILES))
async def test_a_ca_file_that_is_not_the_stss_fails_by_name_without_blocking(
    served: Served, kind: str, tmp_path: Path
) -> None:
    """Missing, a directory, a FIFO, a device, empty, not PEM, broken, oversize, or another CA: the
    fetch fails naming the file (or the untrusted certificate), never waits on the file, and the STS
    sees nothing."""
    make, says = BAD_CA_FILES[kind]
    path = make(tmp_path / "ca.pem")
    config = _config(served, WAYS["assume_role"], tmp_path, None)
    account = new_account(_with_ca(config, path))
    async with asyncio.timeout(WAIT):
        with pytest.raises(ApiError) as info:
            await account.credentials.get()
    assert info.value.code == "CredentialError"
    expected = says if kind == "another CA" else f"CA file {path}: {says}"
    assert expected in info.value.message
    assert served.estate.sts_counters() == {}


def _with_ca(config: Config, path: str) -> Config:
    """``config`` with ``api.ca_file`` set past the config gate (a path that is gone by the time of
    the fetch, or a file that changed, is what the fetch itself must refuse)."""
    return dataclasses.replace(config, api=dataclasses.replace(config.api, ca_file=path))


async def test_the_exchange_checks_the_ca_file_before_it_connects() -> None:
    """The trust is built before any connection: a bad CA file fails at once against an address that
    would never answer."""
    fetch: Awaitable[tuple[int, bytes]] = credential_io.exchange(
        "GET", yarl.URL("https://192.0.2.1/"), ca_file="/nonexistent/ca.pem"
    )
    async with asyncio.timeout(WAIT):
        with pytest.raises(CredentialFault, match=r"CA file /nonexistent/ca\.pem: No such file or directory"):
            await fetch
