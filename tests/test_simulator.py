"""The E-HPC Instant simulator, driven by raw aiohttp requests signed with exporter.openapi.signing."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
import yarl

from exporter.openapi.signing import canonical_query, sign
from exporter.simulator import SimImage
from tests.fixtures.sim import (
    SIM_CONTAINER_ID,
    SIM_REGISTRY_PASSWORD,
    SIM_VM_FAILED_ID,
    SIM_VM_ID,
    RunningSimulator,
    acs_date,
    signed_call,
)

JSON_CT = "application/json;charset=utf-8"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def assert_error_shape(
    status: int, headers: dict[str, str], body: dict[str, object], code: str, http: int
) -> None:
    """An error answer looks like the real gateway's (alibaba-openapi.md §4.1)."""
    assert (status, body.get("Code")) == (http, code), body
    assert headers["Content-Type"] == JSON_CT
    assert headers["x-acs-request-id"] == body["RequestId"]
    assert set(body) >= {"RequestId", "HostId", "Code", "Message", "Recommend"}
    assert body["HostId"] == "ehpcinstant.cn-hangzhou.aliyuncs.com"
    assert isinstance(body["Message"], str)
    assert body["Message"]
    assert f"q={code}&" in str(body["Recommend"])


# ----- success shapes ---------------------------------------------------------------------------------


async def test_get_image_vm_shape(simulator: RunningSimulator, session: aiohttp.ClientSession) -> None:
    """A VM image answers every documented field, VMImageSpec only, and the asked regions it has."""
    status, headers, body = await signed_call(
        session,
        simulator,
        "GetImage",
        {
            "ImageId": SIM_VM_ID,
            "ImageType": "VM",
            "AdditionalRegionIds": '["cn-beijing","cn-shanghai","us-west-1"]',
        },
    )
    assert status == 200
    assert headers["Content-Type"] == JSON_CT
    assert headers["x-acs-request-id"] == body["RequestId"]
    assert body["Success"] is True
    assert body["TotalCount"] == 1
    image = body["Image"]
    assert "ContainerImageSpec" not in image
    regions = image.pop("AdditionalRegionsInfo")
    vm_spec = image.pop("VMImageSpec")
    assert image == {
        "ImageType": "VM",
        "AppId": "",
        "Name": "gromacs",
        "Version": "v2024.1",
        "Description": "GROMACS test image",
        "Size": "40 GiB",
        "CreateTime": "2024-03-01T08:00:00Z",
        "Status": "Available",
        "DocumentInfo": {"DocumentId": "1001", "EncodingMode": "", "Document": ""},
    }
    assert vm_spec == {
        "ImageId": SIM_VM_ID,
        "OsTag": "Alibaba Cloud Linux 3.2104 LTS 64 bit",
        "Platform": "Aliyun",
        "Architecture": "x86_64",
    }
    # us-west-1 holds no copy: left out, not invented with an empty status.
    assert [(r["RegionId"], r["Status"]) for r in regions] == [
        ("cn-beijing", "Available"),
        ("cn-shanghai", "Creating"),
    ]
    assert all(r["ImageId"].startswith("m-") and r["ImageId"] != SIM_VM_ID for r in regions)


async def test_get_image_without_regions_has_no_regions_info(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    _, _, body = await signed_call(session, simulator, "GetImage", {"ImageId": SIM_VM_FAILED_ID})
    assert body["Image"]["Status"] == "CreateFailed"
    assert "AdditionalRegionsInfo" not in body["Image"]


async def test_get_image_container_shape(simulator: RunningSimulator, session: aiohttp.ClientSession) -> None:
    """Container images carry ContainerImageSpec with the registry credential, as the real API does."""
    status, _, body = await signed_call(
        session, simulator, "GetImage", {"ImageId": SIM_CONTAINER_ID, "ImageType": "Container"}
    )
    assert status == 200
    image = body["Image"]
    assert "VMImageSpec" not in image
    assert image["Size"] == "0.5 GiB"
    assert image["ContainerImageSpec"] == {
        "RegistryUrl": "registry-vpc.cn-hangzhou.aliyuncs.com/ehpc_open/nginx:latest",
        "IsACRRegistry": True,
        "IsACREnterprise": True,
        "RegistryCriId": "cri-xyz795ygf8k9abcd",
        "RegistryCredential": {
            "Server": "registry-vpc.cn-hangzhou.aliyuncs.com",
            "UserName": "puller",
            "Password": SIM_REGISTRY_PASSWORD,
        },
        "OsTag": "Ubuntu 22.04",
        "Platform": "Linux",
        "Architecture": "x86_64",
    }


async def test_get_image_type_or_category_mismatch_is_not_found(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    for params in (
        {"ImageId": SIM_CONTAINER_ID, "ImageType": "VM"},
        {"ImageId": SIM_VM_ID, "ImageCategory": "Public"},
        {"ImageId": "m-doesnotexist"},
    ):
        status, headers, body = await signed_call(session, simulator, "GetImage", params)
        assert_error_shape(status, headers, body, "ImageNotFound", 404)


async def test_form_body_parameters(simulator: RunningSimulator, session: aiohttp.ClientSession) -> None:
    """Parameters in a signed form body (vector B of §2.6) are accepted like query parameters."""
    status, _, body = await signed_call(
        session,
        simulator,
        "GetImage",
        {"ImageId": SIM_VM_ID, "AdditionalRegionIds": '["cn-beijing"]'},
        form=True,
    )
    assert status == 200, body
    assert body["Image"]["AdditionalRegionsInfo"][0]["RegionId"] == "cn-beijing"


async def test_query_and_form_are_merged(simulator: RunningSimulator, session: aiohttp.ClientSession) -> None:
    """Query and form parameters merge (the form wins); only the query goes into the canonical query."""
    query = canonical_query({"ImageId": "m-overridden", "ImageType": "VM"})
    body = canonical_query({"ImageId": SIM_VM_ID}).encode()
    headers = {
        "host": simulator.host,
        "x-acs-action": "GetImage",
        "x-acs-version": "2023-07-01",
        "x-acs-date": acs_date(),
        "x-acs-signature-nonce": uuid.uuid4().hex,
        "content-type": "application/x-www-form-urlencoded",
    }
    signed = sign(
        method="POST",
        query=query,
        headers=headers,
        body=body,
        access_key_id=simulator.access_key_id,
        access_key_secret=simulator.access_key_secret,
    )
    url = yarl.URL(f"{simulator.url}/?{query}", encoded=True)
    async with session.post(url, data=body, headers=signed) as resp:
        answer = await resp.json()
    assert resp.status == 200, answer
    assert answer["Image"]["VMImageSpec"]["ImageId"] == SIM_VM_ID


async def test_https(simulator_https: RunningSimulator, session: aiohttp.ClientSession) -> None:
    """The simulator serves TLS with the trustme certificate; a client trusting the CA gets through."""
    assert simulator_https.url.startswith("https://127.0.0.1:")
    assert simulator_https.ca_file is not None
    ctx = ssl.create_default_context(cafile=simulator_https.ca_file)
    status, _, body = await signed_call(
        session, simulator_https, "GetImage", {"ImageId": SIM_VM_ID}, ssl_context=ctx
    )
    assert status == 200, body
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await signed_call(session, simulator_https, "GetImage", {"ImageId": SIM_VM_ID})


# ----- signature failures -----------------------------------------------------------------------------


async def test_wrong_secret_is_signature_does_not_match(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    status, headers, body = await signed_call(
        session, simulator, "GetImage", {"ImageId": SIM_VM_ID}, access_key_secret="wrong-secret"
    )
    assert_error_shape(status, headers, body, "SignatureDoesNotMatch", 400)
    assert "server string to sign is:ACS3-HMAC-SHA256\n" in body["Message"]
    assert simulator.access_key_secret not in body["Message"]


async def test_unknown_access_key(simulator: RunningSimulator, session: aiohttp.ClientSession) -> None:
    status, headers, body = await signed_call(
        session, simulator, "GetImage", {"ImageId": SIM_VM_ID}, access_key_id="no-such-key"
    )
    assert_error_shape(status, headers, body, "InvalidAccessKeyId.NotFound", 404)


async def test_reused_nonce(simulator: RunningSimulator, session: aiohttp.ClientSession) -> None:
    nonce = uuid.uuid4().hex
    first = await signed_call(session, simulator, "GetImage", {"ImageId": SIM_VM_ID}, nonce=nonce)
    assert first[0] == 200
    status, headers, body = await signed_call(
        session, simulator, "GetImage", {"ImageId": SIM_VM_ID}, nonce=nonce
    )
    assert_error_shape(status, headers, body, "SignatureNonceUsed", 400)


async def test_forged_request_does_not_burn_a_nonce(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """Only correctly signed requests record their nonce."""
    nonce = uuid.uuid4().hex
    bad = await signed_call(
        session, simulator, "GetImage", {"ImageId": SIM_VM_ID}, nonce=nonce, access_key_secret="x"
    )
    assert bad[2]["Code"] == "SignatureDoesNotMatch"
    good = await signed_call(session, simulator, "GetImage", {"ImageId": SIM_VM_ID}, nonce=nonce)
    assert good[0] == 200


@pytest.mark.parametrize(
    ("date", "code"),
    [
        (acs_date(datetime.now(UTC) - timedelta(minutes=16)), "InvalidTimeStamp.Expired"),
        (acs_date(datetime.now(UTC) + timedelta(minutes=16)), "InvalidTimeStamp.Expired"),
        ("2023-10-26 10:22:32", "InvalidTimeStamp.Format"),
        ("2023-02-30T10:22:32Z", "InvalidTimeStamp.Format"),
        ("yesterday", "InvalidTimeStamp.Format"),
    ],
)
async def test_bad_dates(
    simulator: RunningSimulator, session: aiohttp.ClientSession, date: str, code: str
) -> None:
    status, headers, body = await signed_call(
        session, simulator, "GetImage", {"ImageId": SIM_VM_ID}, date=date
    )
    assert_error_shape(status, headers, body, code, 400)


async def test_date_within_skew_is_accepted(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    date = acs_date(datetime.now(UTC) - timedelta(minutes=14))
    status, _, _ = await signed_call(session, simulator, "GetImage", {"ImageId": SIM_VM_ID}, date=date)
    assert status == 200


async def test_body_hash_mismatch(simulator: RunningSimulator, session: aiohttp.ClientSession) -> None:
    """A body that differs from the signed x-acs-content-sha256 is SignatureDoesNotMatch."""
    body = canonical_query({"ImageId": SIM_VM_ID}).encode()
    headers = {
        "host": simulator.host,
        "x-acs-action": "GetImage",
        "x-acs-version": "2023-07-01",
        "x-acs-date": acs_date(),
        "x-acs-signature-nonce": uuid.uuid4().hex,
        "content-type": "application/x-www-form-urlencoded",
    }
    signed = sign(
        method="POST",
        query="",
        headers=headers,
        body=body,
        access_key_id=simulator.access_key_id,
        access_key_secret=simulator.access_key_secret,
    )
    async with session.post(f"{simulator.url}/", data=body + b"&ImageType=VM", headers=signed) as resp:
        answer = await resp.json(content_type=None)
        assert_error_shape(resp.status, dict(resp.headers), answer, "SignatureDoesNotMatch", 400)


async def _raw_post(
    session: aiohttp.ClientSession, running: RunningSimulator, headers: dict[str, str], query: str = ""
) -> tuple[int, dict[str, str], dict[str, object]]:
    url = yarl.URL(f"{running.url}/?{query}" if query else f"{running.url}/", encoded=True)
    async with session.post(url, headers=headers, skip_auto_headers=["Content-Type"]) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


def _signed_headers(running: RunningSimulator, query: str = "", **extra: str) -> dict[str, str]:
    headers = {
        "host": running.host,
        "x-acs-action": "GetImage",
        "x-acs-version": "2023-07-01",
        "x-acs-date": acs_date(),
        "x-acs-signature-nonce": uuid.uuid4().hex,
        **extra,
    }
    return sign(
        method="POST",
        query=query,
        headers=headers,
        body=b"",
        access_key_id=running.access_key_id,
        access_key_secret=running.access_key_secret,
    )


async def test_incomplete_signatures(simulator: RunningSimulator, session: aiohttp.ClientSession) -> None:
    """Missing/garbled Authorization, an unsigned required header, a listed header not sent."""
    query = canonical_query({"ImageId": SIM_VM_ID})
    good = _signed_headers(simulator, query)

    no_auth = {k: v for k, v in good.items() if k != "authorization"}
    garbled = {**good, "authorization": good["authorization"].replace("Credential=", "Cred=")}
    upper_hex = {**good, "authorization": good["authorization"][:-64] + good["authorization"][-64:].upper()}
    # Sign everything but x-acs-date: the gateway insists on it being signed.
    unsigned_date = dict(good)
    unsigned_date["authorization"] = good["authorization"].replace("x-acs-date;", "")
    # SignedHeaders lists a header the request does not carry.
    extra_listed = _signed_headers(simulator, query, **{"x-acs-extra": "1"})
    del extra_listed["x-acs-extra"]
    # A content-type sent but not signed.
    unsigned_ct = {**good, "content-type": "application/json"}
    for headers in (no_auth, garbled, upper_hex, unsigned_date, extra_listed, unsigned_ct):
        status, resp_headers, body = await _raw_post(session, simulator, headers, query)
        assert_error_shape(status, resp_headers, body, "IncompleteSignature", 400)


async def test_tampered_query_is_signature_does_not_match(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    query = canonical_query({"ImageId": SIM_VM_ID})
    headers = _signed_headers(simulator, query)
    status, resp_headers, body = await _raw_post(
        session, simulator, headers, canonical_query({"ImageId": SIM_VM_FAILED_ID})
    )
    assert_error_shape(status, resp_headers, body, "SignatureDoesNotMatch", 400)


async def test_query_is_canonicalised_from_decoded_values(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    """Unsorted, differently escaped query bytes verify: the server signs the decoded parameters."""
    params = {"ImageId": SIM_VM_ID, "AdditionalRegionIds": '["cn-beijing"]'}
    headers = _signed_headers(simulator, canonical_query(params))
    wire = f"ImageId={SIM_VM_ID}&AdditionalRegionIds=%5b%22cn-beijing%22%5d"  # lower-case hex, unsorted
    status, _, body = await _raw_post(session, simulator, headers, wire)
    assert status == 200, body


async def test_unknown_action_and_wrong_version(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    status, headers, body = await signed_call(session, simulator, "DeleteImage", {"ImageId": SIM_VM_ID})
    assert_error_shape(status, headers, body, "InvalidAction.NotFound", 404)
    status, headers, body = await signed_call(
        session, simulator, "GetImage", {"ImageId": SIM_VM_ID}, version="2022-01-01"
    )
    assert_error_shape(status, headers, body, "InvalidAction.NotFound", 404)
    assert simulator.sim.counters() == {
        ("DeleteImage", "InvalidAction.NotFound"): 1,
        ("GetImage", "InvalidAction.NotFound"): 1,
    }


# ----- STS --------------------------------------------------------------------------------------------


async def test_sts_credentials(simulator: RunningSimulator, session: aiohttp.ClientSession) -> None:
    ak, secret, token = simulator.sim.issue_sts()
    ok = await signed_call(
        session,
        simulator,
        "GetImage",
        {"ImageId": SIM_VM_ID},
        security_token=token,
        access_key_id=ak,
        access_key_secret=secret,
    )
    assert ok[0] == 200, ok[2]
    # The token is required and must be the one issued with that AccessKey.
    for bad_token in (None, "CAIS-not-the-token"):
        status, headers, body = await signed_call(
            session,
            simulator,
            "GetImage",
            {"ImageId": SIM_VM_ID},
            security_token=bad_token,
            access_key_id=ak,
            access_key_secret=secret,
        )
        assert_error_shape(status, headers, body, "InvalidSecurityToken.Malformed", 400)
    # A token sent with a long-term AccessKey belongs to no key.
    status, headers, body = await signed_call(
        session, simulator, "GetImage", {"ImageId": SIM_VM_ID}, security_token=token
    )
    assert_error_shape(status, headers, body, "InvalidSecurityToken.Malformed", 400)


async def test_sts_expired(simulator: RunningSimulator, session: aiohttp.ClientSession) -> None:
    ak, secret, token = simulator.sim.issue_sts(ttl_seconds=-1)
    status, headers, body = await signed_call(
        session,
        simulator,
        "GetImage",
        {"ImageId": SIM_VM_ID},
        access_key_id=ak,
        access_key_secret=secret,
        security_token=token,
    )
    assert_error_shape(status, headers, body, "InvalidSecurityToken.Expired", 400)


async def test_per_image_error_and_not_found_counted(
    simulator: RunningSimulator, session: aiohttp.ClientSession
) -> None:
    simulator.sim.images["m-broken"] = SimImage(image_id="m-broken", error="NotAuthorized")
    status, headers, body = await signed_call(session, simulator, "GetImage", {"ImageId": "m-broken"})
    assert_error_shape(status, headers, body, "NotAuthorized", 407)
    assert body["AccessDeniedDetail"]["AuthAction"] == "ehpc:GetImage"
    assert simulator.sim.counters() == {("GetImage", "NotAuthorized"): 1}
