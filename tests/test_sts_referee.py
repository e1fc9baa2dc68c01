"""The referee for the simulated STS: alibabacloud-credentials' own providers get tokens from it over HTTPS,
and the official E-HPC Instant SDK reads the assumed account's images with them.

TLS trust: the providers' async path is Tea's ``TeaCore.async_do_action``
(.venv/lib/python3.11/site-packages/Tea/core.py), which builds ``ssl.create_default_context(
ssl.Purpose.SERVER_AUTH)`` and then adds ``certifi.where()`` with ``load_verify_locations``. The default
context loads OpenSSL's default verify paths, which honour the ``SSL_CERT_FILE`` environment variable,
read when the context is made; so setting it to the test CA (per test, with monkeypatch) is enough, and
certifi's roots stay trusted too. (Verified in that source for Tea 0.4.3.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from alibabacloud_credentials.client import Client as CredentialClient
from alibabacloud_credentials.exceptions import CredentialException
from alibabacloud_credentials.provider.oidc import OIDCRoleArnCredentialsProvider
from alibabacloud_credentials.provider.ram_role_arn import RamRoleArnCredentialsProvider
from alibabacloud_ehpcinstant20230701 import models
from alibabacloud_ehpcinstant20230701.client import Client
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_tea_openapi.exceptions import ClientException

from tests.fixtures.estate import (
    ALPHA_AK,
    ALPHA_HZ_IMAGE,
    ALPHA_SECRET,
    BETA_HZ_IMAGE,
    GAMMA_HZ_IMAGE,
    HZ,
    OIDC_ROLE_ARN,
    PROVIDER_ARN,
    READER_ARN,
    SELF_READER_ARN,
    RunningEstate,
)


@pytest.fixture(autouse=True)
def trust_the_test_ca(monkeypatch: pytest.MonkeyPatch, ca_file: str) -> None:
    """Tea's async HTTP trusts SSL_CERT_FILE (module docstring)."""
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)


def sdk(
    running: RunningEstate, provider: RamRoleArnCredentialsProvider | OIDCRoleArnCredentialsProvider
) -> Client:
    """The official client on the Hangzhou gateway, signing with what ``provider`` hands out."""
    credential = CredentialClient(provider=provider)
    return Client(
        open_api_models.Config(credential=credential, endpoint=running.ep.region_host(HZ), protocol="http")
    )


def role_provider(running: RunningEstate, role_arn: str = READER_ARN) -> RamRoleArnCredentialsProvider:
    """RamRoleArnCredentialsProvider from alpha's static key, pointed at the simulated STS."""
    return RamRoleArnCredentialsProvider(
        access_key_id=ALPHA_AK,
        access_key_secret=ALPHA_SECRET,
        role_arn=role_arn,
        role_session_name="ehpc-image-exporter",
        sts_endpoint=running.ep.sts_host,
    )


async def test_ram_role_arn_provider(estate: RunningEstate) -> None:
    """alpha's key assumes beta's role; GetImage then sees beta's images only."""
    client = sdk(estate, role_provider(estate))
    response = await client.get_image_async(models.GetImageRequest(image_id=BETA_HZ_IMAGE))
    assert response.body.image.name == "wrf"
    with pytest.raises(ClientException) as info:
        await client.get_image_async(models.GetImageRequest(image_id=ALPHA_HZ_IMAGE))
    assert info.value.code == "ImageNotFound"
    # The provider caches: one AssumeRole for both calls (the credential is valid for an hour).
    assert estate.estate.sts_counters() == {("AssumeRole", "Success"): 1}
    assert estate.estate.account("beta").region(HZ).counters() == {
        ("GetImage", "Success"): 1,
        ("GetImage", "ImageNotFound"): 1,
    }


async def test_short_lifetime_makes_the_provider_refresh(estate: RunningEstate) -> None:
    """A credential expiring within 15 minutes is used once and fetched again before the next call."""
    estate.estate.sts_max_ttl_seconds = 60
    client = sdk(estate, role_provider(estate))
    for _ in range(3):
        await client.get_image_async(models.GetImageRequest(image_id=BETA_HZ_IMAGE))
    assert estate.estate.sts_counters() == {("AssumeRole", "Success"): 3}


async def test_provider_refusal_is_a_credential_exception(estate: RunningEstate) -> None:
    """A role that does not trust alpha: the library raises CredentialException carrying NoPermission."""
    provider = role_provider(estate, SELF_READER_ARN)
    with pytest.raises(CredentialException, match="NoPermission"):
        await provider.get_credentials_async()
    assert estate.estate.sts_counters() == {("AssumeRole", "NoPermission"): 1}


async def test_oidc_role_arn_provider(estate: RunningEstate, tmp_path: Path) -> None:
    """A token file with a JWT of gamma's provider: AssumeRoleWithOIDC, then gamma's images only."""
    token_file = tmp_path / "token"
    token_file.write_text(estate.estate.issue_oidc_token(PROVIDER_ARN))
    provider = OIDCRoleArnCredentialsProvider(
        role_arn=OIDC_ROLE_ARN,
        oidc_provider_arn=PROVIDER_ARN,
        oidc_token_file_path=str(token_file),
        role_session_name="ehpc-image-exporter",
        sts_endpoint=estate.ep.sts_host,
    )
    client = sdk(estate, provider)
    response = await client.get_image_async(models.GetImageRequest(image_id=GAMMA_HZ_IMAGE))
    assert response.body.image.name == "relion"
    with pytest.raises(ClientException) as info:
        await client.get_image_async(models.GetImageRequest(image_id=BETA_HZ_IMAGE))
    assert info.value.code == "ImageNotFound"
    assert estate.estate.sts_counters() == {("AssumeRoleWithOIDC", "Success"): 1}


async def test_oidc_expired_token_file(estate: RunningEstate, tmp_path: Path) -> None:
    """An expired JWT in the token file: the library reports the STS's Expired code."""
    token_file = tmp_path / "token"
    token_file.write_text(estate.estate.issue_oidc_token(PROVIDER_ARN, ttl_seconds=-1))
    provider = OIDCRoleArnCredentialsProvider(
        role_arn=OIDC_ROLE_ARN,
        oidc_provider_arn=PROVIDER_ARN,
        oidc_token_file_path=str(token_file),
        sts_endpoint=estate.ep.sts_host,
    )
    with pytest.raises(CredentialException, match=r"AuthenticationFail\.OIDCToken\.Expired"):
        await provider.get_credentials_async()
