"""The referee: the official SDK (alibabacloud-ehpcinstant20230701) talks to the simulator.

If the official client signs, sends and parses against the simulator exactly as it would against the
cloud, the simulator's signature checks and answer shapes are faithful where it matters.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alibabacloud_credentials.client import Client as CredentialClient
from alibabacloud_credentials.models import Config as CredentialConfig
from alibabacloud_ehpcinstant20230701 import models
from alibabacloud_ehpcinstant20230701.client import Client
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_tea_openapi import utils_models as open_api_util_models
from alibabacloud_tea_openapi.exceptions import (
    AlibabaCloudException,
    ClientException,
    ServerException,
    ThrottlingException,
)
from darabonba.runtime import RuntimeOptions

from ehpc_simulator import SimImage, catalogue
from tests.fixtures.sim import RunningSimulator, SimulatorFactory

VM = SimImage(
    image_id="m-uf60twafjtaartsdk001",
    image_type="VM",
    category="Custom",
    name="app-image",
    version="v1.0",
    description="应用测试镜像。",
    app_id="app-0123456789",
    status="Available",
    size_gib=40,
    create_time="2022-12-23T09:51:39Z",
    os_tag="CentOS 7.6 64 bit",
    platform="CentOS",
    architecture="x86_64",
    regions={"cn-beijing": "Available", "cn-shanghai": "Creating"},
    document_id=4242,
    document="IyEvYmluL2Jhc2g=",
    encoding_mode="Base64",
)
CONTAINER = SimImage(
    image_id="m-containersdk0000001",
    image_type="Container",
    category="Public",
    name="nginx",
    version="latest",
    description="nginx",
    app_id="app-c1",
    status="UnAvailable",
    size_gib=0.5,
    create_time="2023-01-02T03:04:05Z",
    os_tag="Ubuntu 22.04",
    platform="Linux",
    architecture="arm64",
    registry_url="registry-vpc.cn-hangzhou.aliyuncs.com/ehpc_open/nginx:latest",
    registry_username="username",
    registry_password="userpassword",
    is_acr_registry=True,
    is_acr_enterprise=True,
    registry_cri_id="cri-xyz795ygf8k9sdk1",
    regions={"cn-beijing": "Waiting"},
    update_time="2023-02-02T03:04:05Z",
    document_id=7,
    weight=3,
)


def fleet() -> list[SimImage]:
    """Fresh copies, so a test may change them."""
    return [SimImage(**{**VM.__dict__, "regions": dict(VM.regions)}), SimImage(**{**CONTAINER.__dict__})]


@pytest.fixture
async def sim(simulator_factory: SimulatorFactory) -> AsyncIterator[RunningSimulator]:
    async with simulator_factory(images=fleet()) as running:
        yield running


@pytest.fixture
async def sim_https(simulator_factory: SimulatorFactory) -> AsyncIterator[RunningSimulator]:
    async with simulator_factory(images=fleet(), tls=True) as running:
        yield running


def sdk_client(running: RunningSimulator, **overrides: Any) -> Client:
    """An official client pointed at the simulator (``ca`` is how the SDK trusts a private CA)."""
    config: dict[str, Any] = {
        "access_key_id": running.access_key_id,
        "access_key_secret": running.access_key_secret,
        "endpoint": running.host,
        "protocol": "https" if running.ca_file else "http",
        "ca": running.ca_file,
        **overrides,
    }
    return Client(open_api_models.Config(**config))


def assert_vm(body: models.GetImageResponseBody) -> None:
    """Every field the seed names, parsed into the SDK's models, for the VM image."""
    assert body.success is True
    assert body.total_count == 1
    assert len(body.request_id) == 36
    image = body.image
    assert (image.image_type, image.app_id, image.name, image.version) == (
        "VM",
        "app-0123456789",
        "app-image",
        "v1.0",
    )
    assert image.description == "应用测试镜像。"
    assert (image.size, image.create_time, image.status) == ("40 GiB", "2022-12-23T09:51:39Z", "Available")
    assert image.container_image_spec is None
    spec = image.vmimage_spec
    assert (spec.image_id, spec.os_tag, spec.platform, spec.architecture) == (
        "m-uf60twafjtaartsdk001",
        "CentOS 7.6 64 bit",
        "CentOS",
        "x86_64",
    )
    doc = image.document_info
    assert (doc.document_id, doc.document, doc.encoding_mode) == ("4242", "IyEvYmluL2Jhc2g=", "Base64")
    regions = [(r.region_id, r.status, r.image_id[:2]) for r in image.additional_regions_info]
    assert regions == [("cn-beijing", "Available", "m-"), ("cn-shanghai", "Creating", "m-")]


async def test_get_image_vm_over_http(sim: RunningSimulator) -> None:
    client = sdk_client(sim)
    response = await client.get_image_async(
        models.GetImageRequest(
            image_id=VM.image_id,
            image_type="VM",
            image_category="Custom",
            additional_region_ids=["cn-beijing", "cn-shanghai", "cn-hongkong"],
        )
    )
    assert response.status_code == 200
    assert response.headers["x-acs-request-id"] == response.body.request_id
    assert_vm(response.body)
    assert sim.sim.counters() == {("GetImage", "Success"): 1}


async def test_get_image_container_over_https(sim_https: RunningSimulator) -> None:
    client = sdk_client(sim_https)
    response = await client.get_image_async(
        models.GetImageRequest(
            image_id=CONTAINER.image_id, image_type="Container", additional_region_ids=["cn-beijing"]
        )
    )
    image = response.body.image
    assert (image.image_type, image.app_id, image.name, image.version, image.description) == (
        "Container",
        "app-c1",
        "nginx",
        "latest",
        "nginx",
    )
    assert (image.size, image.create_time, image.status) == ("0.5 GiB", "2023-01-02T03:04:05Z", "UnAvailable")
    assert image.vmimage_spec is None
    spec = image.container_image_spec
    assert spec.registry_url == "registry-vpc.cn-hangzhou.aliyuncs.com/ehpc_open/nginx:latest"
    assert (spec.is_acrregistry, spec.is_acrenterprise, spec.registry_cri_id) == (
        True,
        True,
        "cri-xyz795ygf8k9sdk1",
    )
    assert (spec.os_tag, spec.platform, spec.architecture) == ("Ubuntu 22.04", "Linux", "arm64")
    cred = spec.registry_credential
    assert (cred.server, cred.user_name, cred.password) == (
        "registry-vpc.cn-hangzhou.aliyuncs.com",
        "username",
        "userpassword",
    )
    assert image.document_info.document_id == "7"
    [replica] = image.additional_regions_info
    assert (replica.region_id, replica.image_id, replica.status) == (
        "cn-beijing",
        CONTAINER.image_id,
        "Waiting",
    )


async def test_sync_client_over_https_in_a_thread(sim_https: RunningSimulator) -> None:
    """The SDK's sync path (requests, no Content-Type header) verifies the trustme CA the same way."""
    client = sdk_client(sim_https)
    response = await asyncio.to_thread(
        client.get_image,
        models.GetImageRequest(image_id=VM.image_id, additional_region_ids=["cn-beijing", "cn-shanghai"]),
    )
    assert_vm(response.body)


async def test_https_without_the_ca_is_refused(sim_https: RunningSimulator) -> None:
    """Proof that the HTTPS tests verify the certificate: without ``ca`` the handshake fails."""
    client = sdk_client(sim_https, ca=None)
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        await client.get_image_async(models.GetImageRequest(image_id=VM.image_id))
    assert sim_https.sim.counters() == {}


async def test_list_images_paging_and_filters(sim: RunningSimulator) -> None:
    client = sdk_client(sim)
    page = (await client.list_images_async(models.ListImagesRequest(page_number=1, page_size=1))).body
    assert (page.success, page.total_count, page.page_number, page.page_size) == (True, 2, 1, 1)
    [item] = page.images
    assert (item.image_id, item.image_type, item.name, item.version) == (
        VM.image_id,
        "VM",
        "app-image",
        "v1.0",
    )
    assert (item.description, item.app_id, item.os_tag) == (
        "应用测试镜像。",
        "app-0123456789",
        "CentOS 7.6 64 bit",
    )
    assert (item.create_time, item.update_time, item.document_id, item.weight) == (
        "2022-12-23T09:51:39Z",
        "2022-12-23T09:51:39Z",
        4242,
        0,
    )
    page2 = (await client.list_images_async(models.ListImagesRequest(page_number=2, page_size=1))).body
    assert [i.image_id for i in page2.images] == [CONTAINER.image_id]
    assert page2.images[0].update_time == "2023-02-02T03:04:05Z"
    filtered = await client.list_images_async(
        models.ListImagesRequest(
            image_type="Container",
            image_category="Public",
            image_ids=[CONTAINER.image_id, VM.image_id],
            image_names=["nginx"],
            mode="Merge",
        )
    )
    assert [i.image_id for i in filtered.body.images] == [CONTAINER.image_id]
    assert sim.sim.counters() == {("ListImages", "Success"): 3}


async def test_wrong_secret_is_signature_does_not_match(sim: RunningSimulator) -> None:
    client = sdk_client(sim, access_key_secret="not-the-secret")
    with pytest.raises(ClientException) as info:
        await client.get_image_async(models.GetImageRequest(image_id=VM.image_id))
    assert info.value.code == "SignatureDoesNotMatch"
    assert info.value.status_code == 400
    assert sim.sim.counters() == {("GetImage", "SignatureDoesNotMatch"): 1}


async def test_error_classes(sim: RunningSimulator) -> None:
    """Seed codes reach the SDK as the exception class their status implies, with code and request id."""
    client = sdk_client(sim)
    request = models.GetImageRequest(image_id=VM.image_id)
    with pytest.raises(ClientException) as client_error:
        await client.get_image_async(models.GetImageRequest(image_id="m-missing"))
    assert (client_error.value.code, client_error.value.status_code) == ("ImageNotFound", 404)

    sim.sim.images[VM.image_id].error = "NotAuthorized"
    with pytest.raises(ClientException) as denied:
        await client.get_image_async(request)
    assert (denied.value.code, denied.value.status_code) == ("NotAuthorized", 407)
    assert denied.value.access_denied_detail["AuthAction"] == "ehpc:GetImage"

    sim.sim.images[VM.image_id].error = "ServiceUnavailable"
    with pytest.raises(ServerException) as server_error:
        await client.get_image_async(request)
    assert (server_error.value.code, server_error.value.status_code) == ("ServiceUnavailable", 503)
    assert len(server_error.value.request_id) == 36

    sim.sim.images[VM.image_id].error = None
    sim.sim.faults.error_rates = {"Throttling.User": 1.0}
    sim.sim.faults.retry_after_ms = 1500
    with pytest.raises(ThrottlingException) as throttled:
        await client.get_image_async(request)
    assert (throttled.value.code, throttled.value.retry_after) == ("Throttling.User", 1500)
    assert sim.sim.counters() == {
        ("GetImage", "ImageNotFound"): 1,
        ("GetImage", "NotAuthorized"): 1,
        ("GetImage", "ServiceUnavailable"): 1,
        ("GetImage", "Throttling.User"): 1,
    }


async def test_static_sts_credentials(sim: RunningSimulator) -> None:
    ak, secret, token = sim.sim.issue_sts()
    client = sdk_client(sim, access_key_id=ak, access_key_secret=secret, security_token=token)
    response = await client.get_image_async(
        models.GetImageRequest(image_id=VM.image_id, additional_region_ids=["cn-beijing", "cn-shanghai"])
    )
    assert_vm(response.body)
    wrong = sdk_client(sim, access_key_id=ak, access_key_secret=secret, security_token=token + "x")
    with pytest.raises(ClientException) as info:
        await wrong.get_image_async(models.GetImageRequest(image_id=VM.image_id))
    assert info.value.code == "InvalidSecurityToken.Malformed"


async def test_sts_from_the_credentials_uri(sim: RunningSimulator) -> None:
    """alibabacloud-credentials fetches STS credentials from /_sim/sts; the SDK signs with them."""
    credential = CredentialClient(
        CredentialConfig(type="credentials_uri", credentials_uri=f"{sim.url}/_sim/sts")
    )
    client = Client(open_api_models.Config(credential=credential, endpoint=sim.host, protocol="http"))
    response = await client.get_image_async(
        models.GetImageRequest(image_id=VM.image_id, additional_region_ids=["cn-beijing", "cn-shanghai"])
    )
    assert_vm(response.body)
    fetched = await credential.get_credential_async()
    assert fetched.access_key_id.startswith("STS.")
    assert fetched.security_token
    assert sim.sim.counters() == {("GetImage", "Success"): 1}


# ----- every code the simulator answers, as the SDK sees it ------------------------------------------

# Transcribed here, not imported from simulator/ehpc_simulator/catalogue.py, so a wrong status in the
# simulator's table fails: the seed's "Error codes" table (GetImage-api-reference.txt), the gateway
# table (alibaba-openapi.md §4.2) and the AddImage codes (§4.3).
SEED = {
    "InvalidParams": 400,
    "NotEnabled": 400,
    "ImageNotFound": 404,
    "ServiceUnavailable": 503,
    "EcsError": 406,
    "AliyunError": 406,
    "DbError": 406,
    "NotAuthorized": 407,
}
GATEWAY = {
    "Throttling": 400,
    "Throttling.User": 400,
    "Throttling.Api": 400,
    "ServiceUnavailable": 503,
    "InternalError": 500,
    "InvalidAccessKeyId.NotFound": 404,
    "InvalidAccessKeyId.Inactive": 400,
    "SignatureDoesNotMatch": 400,
    "IncompleteSignature": 400,
    "SignatureNonceUsed": 400,
    "InvalidTimeStamp.Expired": 400,
    "InvalidTimeStamp.Format": 400,
    "MissingParameter": 400,
    "InvalidApi.NotFound": 404,
    "InvalidAction.NotFound": 404,
    "Forbidden.RAM": 403,
    "NoPermission": 403,
    "InvalidSecurityToken.Expired": 400,
    "InvalidSecurityToken.Malformed": 400,
}
ADD_IMAGE = {"ImageAlreadyExists": 400, "InDebt": 400, "ImageInUse": 403}
EXPECTED_STATUSES = {**SEED, **GATEWAY, **ADD_IMAGE}


def test_the_expectations_cover_the_simulators_table() -> None:
    """A code added to the simulator's table needs its documented status here too."""
    assert set(catalogue.STATUSES) == set(EXPECTED_STATUSES)


def _sdk_class(http: int) -> type:
    """alibaba-openapi.md §4.4: without x-acs-retry-after, 4xx is ClientException and 5xx ServerException."""
    cls: type = ClientException if http < 500 else ServerException
    return cls


@pytest.mark.parametrize(("code", "http"), sorted(EXPECTED_STATUSES.items()))
async def test_every_code_reaches_the_sdk_with_its_status(
    sim: RunningSimulator, code: str, http: int
) -> None:
    """Each code the simulator can be told to answer, on both actions, as the SDK parses it."""
    sim.sim.faults.global_error = code
    client = sdk_client(sim)
    for call in (
        client.get_image_async(models.GetImageRequest(image_id=VM.image_id)),
        client.list_images_async(models.ListImagesRequest()),
    ):
        with pytest.raises(AlibabaCloudException) as info:
            await call
        error: Any = info.value
        assert (type(error), error.code, error.status_code) == (_sdk_class(http), code, http)


async def test_every_seed_code_per_image(sim: RunningSimulator) -> None:
    """The seed's codes set on one image (the GetImage path of SimImage.error)."""
    client = sdk_client(sim)
    for code, http in SEED.items():
        sim.sim.images[VM.image_id].error = code
        with pytest.raises(AlibabaCloudException) as info:
            await client.get_image_async(models.GetImageRequest(image_id=VM.image_id))
        error: Any = info.value
        assert (type(error), error.code, error.status_code) == (_sdk_class(http), code, http)
    assert sim.sim.counters() == {("GetImage", code): 1 for code in SEED}


async def _sdk_error(call: Any) -> tuple[type, str, int]:
    with pytest.raises(AlibabaCloudException) as info:
        await call
    error: Any = info.value
    return type(error), error.code, error.status_code


async def test_verification_failures_the_sdk_provokes(sim: RunningSimulator) -> None:
    """Codes the simulator reaches on its own (not injected), from requests the SDK really signs."""
    request = models.GetImageRequest(image_id=VM.image_id)
    unknown = sdk_client(sim, access_key_id="LTAI-not-known")
    assert await _sdk_error(unknown.get_image_async(request)) == (
        ClientException,
        "InvalidAccessKeyId.NotFound",
        404,
    )
    ak, secret, token = sim.sim.issue_sts(ttl_seconds=-1)
    expired = sdk_client(sim, access_key_id=ak, access_key_secret=secret, security_token=token)
    assert await _sdk_error(expired.get_image_async(request)) == (
        ClientException,
        "InvalidSecurityToken.Expired",
        400,
    )
    sim.sim.verifier.clock = lambda: time.time() + 16 * 60  # the SDK's x-acs-date is now 16 minutes old
    assert await _sdk_error(sdk_client(sim).get_image_async(request)) == (
        ClientException,
        "InvalidTimeStamp.Expired",
        400,
    )
    sim.sim.verifier.clock = time.time
    for action, version in (("DeleteImage", "2023-07-01"), ("GetImage", "2022-01-01")):
        params = open_api_util_models.Params(
            action=action,
            version=version,
            protocol="HTTP",
            pathname="/",
            method="POST",
            auth_type="AK",
            style="RPC",
            req_body_type="formData",
            body_type="json",
        )
        call = sdk_client(sim).call_api_async(
            params, open_api_util_models.OpenApiRequest(query={"ImageId": VM.image_id}), RuntimeOptions()
        )
        assert await _sdk_error(call) == (ClientException, "InvalidAction.NotFound", 404)
    sim.sim.faults.qps_limit = 0.001  # one token, then throttled; no x-acs-retry-after configured
    client = sdk_client(sim)
    await client.get_image_async(request)
    assert await _sdk_error(client.get_image_async(request)) == (ClientException, "Throttling.User", 400)


# Every class of character the percent-encoding rules treat differently (alibaba-openapi.md §2.1), and
# "+", which the SDK's urlencode puts on the wire for a space.
TRICKY = "a b+c*d~e/f&g=h%i;j,k:l'm\"n\u00e9\u4e2d\U0001f600"


async def test_tricky_characters_verify_and_round_trip(sim: RunningSimulator) -> None:
    """The SDK signs them one way and sends them another; the simulator verifies the signature and
    reads back exactly the values the SDK was given (async and sync SDK paths)."""
    sim.sim.images["m-tricky"] = SimImage(image_id="m-tricky", name=TRICKY)
    client = sdk_client(sim)
    with pytest.raises(ClientException) as info:  # verified, then not found: not SignatureDoesNotMatch
        await client.get_image_async(models.GetImageRequest(image_id=f"m-{TRICKY}"))
    assert info.value.code == "ImageNotFound"
    for listing in (
        await client.list_images_async(models.ListImagesRequest(image_names=[TRICKY, "other"])),
        await asyncio.to_thread(client.list_images, models.ListImagesRequest(image_names=[TRICKY])),
    ):
        assert [i.name for i in listing.body.images] == [TRICKY]
    assert sim.sim.counters() == {("GetImage", "ImageNotFound"): 1, ("ListImages", "Success"): 2}


async def test_form_body_parameters_from_the_sdk(sim: RunningSimulator) -> None:
    """With body parameters the SDK sends a signed form body (reqBodyType formData); the simulator
    verifies its hash and content type and reads the parameters from it."""
    params = open_api_util_models.Params(
        action="GetImage",
        version="2023-07-01",
        protocol="HTTP",
        pathname="/",
        method="POST",
        auth_type="AK",
        style="RPC",
        req_body_type="formData",
        body_type="json",
    )
    body = {"ImageId": VM.image_id, "AdditionalRegionIds": '["cn-beijing","cn-shanghai"]'}
    answer = await sdk_client(sim).call_api_async(
        params, open_api_util_models.OpenApiRequest(body=body), RuntimeOptions()
    )
    assert_vm(models.GetImageResponse().from_map(answer).body)
