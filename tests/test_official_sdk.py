"""The referee: the official SDK (alibabacloud-ehpcinstant20230701) talks to the simulator.

If the official client signs, sends and parses against the simulator exactly as it would against the
cloud, the simulator's signature checks and answer shapes are faithful where it matters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alibabacloud_credentials.client import Client as CredentialClient
from alibabacloud_credentials.models import Config as CredentialConfig
from alibabacloud_ehpcinstant20230701 import models
from alibabacloud_ehpcinstant20230701.client import Client
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_tea_openapi.exceptions import ClientException, ServerException, ThrottlingException

from exporter.simulator import SimImage
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
