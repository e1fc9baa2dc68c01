"""The E-HPC Instant simulator, driven by raw aiohttp requests signed with exporter.openapi.signing."""

from __future__ import annotations

import json
import ssl
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import yarl

import ehpc_simulator as simulator_pkg
from ehpc_simulator import Faults, SimImage, generate_fleet, load_fleet
from ehpc_simulator.auth import NonceStore
from ehpc_simulator.model import faults_from_dict
from exporter.openapi.signing import canonical_query, sign
from tests.fixtures.sim import (
    SIM_CONTAINER_ID,
    SIM_REGISTRY_PASSWORD,
    SIM_VM_FAILED_ID,
    SIM_VM_ID,
    RunningSimulator,
    SimulatorFactory,
    acs_date,
    signed_call,
)

JSON_CT = "application/json;charset=utf-8"


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


async def test_get_image_vm_shape(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    """A VM image answers every documented field, VMImageSpec only, and the asked regions it has."""
    status, headers, body = await signed_call(
        http,
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
    simulator: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    _, _, body = await signed_call(http, simulator, "GetImage", {"ImageId": SIM_VM_FAILED_ID})
    assert body["Image"]["Status"] == "CreateFailed"
    assert "AdditionalRegionsInfo" not in body["Image"]


async def test_get_image_container_shape(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    """Container images carry ContainerImageSpec with the registry credential, as the real API does."""
    status, _, body = await signed_call(
        http, simulator, "GetImage", {"ImageId": SIM_CONTAINER_ID, "ImageType": "Container"}
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
    simulator: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    for params in (
        {"ImageId": SIM_CONTAINER_ID, "ImageType": "VM"},
        {"ImageId": SIM_VM_ID, "ImageCategory": "Public"},
        {"ImageId": "m-doesnotexist"},
    ):
        status, headers, body = await signed_call(http, simulator, "GetImage", params)
        assert_error_shape(status, headers, body, "ImageNotFound", 404)


async def test_form_body_parameters(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    """Parameters in a signed form body (vector B of §2.6) are accepted like query parameters."""
    status, _, body = await signed_call(
        http,
        simulator,
        "GetImage",
        {"ImageId": SIM_VM_ID, "AdditionalRegionIds": '["cn-beijing"]'},
        form=True,
    )
    assert status == 200, body
    assert body["Image"]["AdditionalRegionsInfo"][0]["RegionId"] == "cn-beijing"


async def test_query_and_form_are_merged(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
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
    async with http.post(url, data=body, headers=signed) as resp:
        answer = await resp.json()
    assert resp.status == 200, answer
    assert answer["Image"]["VMImageSpec"]["ImageId"] == SIM_VM_ID


async def test_https(simulator_https: RunningSimulator, http: aiohttp.ClientSession) -> None:
    """The simulator serves TLS with the trustme certificate; a client trusting the CA gets through."""
    assert simulator_https.url.startswith("https://127.0.0.1:")
    assert simulator_https.ca_file is not None
    ctx = ssl.create_default_context(cafile=simulator_https.ca_file)
    status, _, body = await signed_call(
        http, simulator_https, "GetImage", {"ImageId": SIM_VM_ID}, ssl_context=ctx
    )
    assert status == 200, body
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await signed_call(http, simulator_https, "GetImage", {"ImageId": SIM_VM_ID})


# ----- signature failures -----------------------------------------------------------------------------


async def test_wrong_secret_is_signature_does_not_match(
    simulator: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    status, headers, body = await signed_call(
        http, simulator, "GetImage", {"ImageId": SIM_VM_ID}, access_key_secret="wrong-secret"
    )
    assert_error_shape(status, headers, body, "SignatureDoesNotMatch", 400)
    assert "server string to sign is:ACS3-HMAC-SHA256\n" in body["Message"]
    assert simulator.access_key_secret not in body["Message"]


async def test_unknown_access_key(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    status, headers, body = await signed_call(
        http, simulator, "GetImage", {"ImageId": SIM_VM_ID}, access_key_id="no-such-key"
    )
    assert_error_shape(status, headers, body, "InvalidAccessKeyId.NotFound", 404)


async def test_reused_nonce(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    nonce = uuid.uuid4().hex
    first = await signed_call(http, simulator, "GetImage", {"ImageId": SIM_VM_ID}, nonce=nonce)
    assert first[0] == 200
    status, headers, body = await signed_call(
        http, simulator, "GetImage", {"ImageId": SIM_VM_ID}, nonce=nonce
    )
    assert_error_shape(status, headers, body, "SignatureNonceUsed", 400)


async def test_forged_request_does_not_burn_a_nonce(
    simulator: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    """Only correctly signed requests record their nonce."""
    nonce = uuid.uuid4().hex
    bad = await signed_call(
        http, simulator, "GetImage", {"ImageId": SIM_VM_ID}, nonce=nonce, access_key_secret="x"
    )
    assert bad[2]["Code"] == "SignatureDoesNotMatch"
    good = await signed_call(http, simulator, "GetImage", {"ImageId": SIM_VM_ID}, nonce=nonce)
    assert good[0] == 200


@pytest.mark.parametrize(
    ("date", "code"),
    [
        # Skewed dates are minutes relative to the moment the test runs, not to collection time (a long
        # suite would otherwise bring a "16 minutes ahead" date back within the window).
        (-16, "InvalidTimeStamp.Expired"),
        (16, "InvalidTimeStamp.Expired"),
        ("2023-10-26 10:22:32", "InvalidTimeStamp.Format"),
        ("2023-02-30T10:22:32Z", "InvalidTimeStamp.Format"),
        ("yesterday", "InvalidTimeStamp.Format"),
    ],
)
async def test_bad_dates(
    simulator: RunningSimulator, http: aiohttp.ClientSession, date: str | int, code: str
) -> None:
    if isinstance(date, int):
        date = acs_date(datetime.now(UTC) + timedelta(minutes=date))
    status, headers, body = await signed_call(http, simulator, "GetImage", {"ImageId": SIM_VM_ID}, date=date)
    assert_error_shape(status, headers, body, code, 400)


async def test_date_within_skew_is_accepted(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    date = acs_date(datetime.now(UTC) - timedelta(minutes=14))
    status, _, _ = await signed_call(http, simulator, "GetImage", {"ImageId": SIM_VM_ID}, date=date)
    assert status == 200


async def test_body_hash_mismatch(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
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
    async with http.post(f"{simulator.url}/", data=body + b"&ImageType=VM", headers=signed) as resp:
        answer = await resp.json(content_type=None)
        assert_error_shape(resp.status, dict(resp.headers), answer, "SignatureDoesNotMatch", 400)


async def _raw_post(
    http: aiohttp.ClientSession, running: RunningSimulator, headers: dict[str, str], query: str = ""
) -> tuple[int, dict[str, str], dict[str, object]]:
    url = yarl.URL(f"{running.url}/?{query}" if query else f"{running.url}/", encoded=True)
    async with http.post(url, headers=headers, skip_auto_headers=["Content-Type"]) as resp:
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


async def test_incomplete_signatures(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
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
    for headers in (no_auth, garbled, upper_hex, unsigned_date, extra_listed):
        status, resp_headers, body = await _raw_post(http, simulator, headers, query)
        assert_error_shape(status, resp_headers, body, "IncompleteSignature", 400)


async def test_unsigned_content_type(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    """With a body the content type must be signed; on an empty POST an unsigned one is tolerated,
    because the official SDK's async path sends exactly that (aiohttp's application/octet-stream)."""
    query = canonical_query({"ImageId": SIM_VM_ID})
    url = yarl.URL(f"{simulator.url}/?{query}", encoded=True)
    async with http.post(url, headers=_signed_headers(simulator, query)) as resp:  # aiohttp adds it
        assert resp.status == 200, await resp.text()
    body = canonical_query({"ImageType": "VM"}).encode()
    headers = {
        "host": simulator.host,
        "x-acs-action": "GetImage",
        "x-acs-version": "2023-07-01",
        "x-acs-date": acs_date(),
        "x-acs-signature-nonce": uuid.uuid4().hex,
    }
    signed = sign(
        method="POST",
        query=query,
        headers=headers,
        body=body,
        access_key_id=simulator.access_key_id,
        access_key_secret=simulator.access_key_secret,
    )
    signed["content-type"] = "application/x-www-form-urlencoded"
    async with http.post(url, data=body, headers=signed) as resp:
        answer = await resp.json(content_type=None)
        assert_error_shape(resp.status, dict(resp.headers), answer, "IncompleteSignature", 400)


async def test_tampered_query_is_signature_does_not_match(
    simulator: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    query = canonical_query({"ImageId": SIM_VM_ID})
    headers = _signed_headers(simulator, query)
    status, resp_headers, body = await _raw_post(
        http, simulator, headers, canonical_query({"ImageId": SIM_VM_FAILED_ID})
    )
    assert_error_shape(status, resp_headers, body, "SignatureDoesNotMatch", 400)


async def test_query_is_canonicalised_from_decoded_values(
    simulator: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    """Unsorted, differently escaped query bytes verify: the server signs the decoded parameters."""
    params = {"ImageId": SIM_VM_ID, "AdditionalRegionIds": '["cn-beijing"]'}
    headers = _signed_headers(simulator, canonical_query(params))
    wire = f"ImageId={SIM_VM_ID}&AdditionalRegionIds=%5b%22cn-beijing%22%5d"  # lower-case hex, unsorted
    status, _, body = await _raw_post(http, simulator, headers, wire)
    assert status == 200, body


async def test_unknown_action_and_wrong_version(
    simulator: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    status, headers, body = await signed_call(http, simulator, "DeleteImage", {"ImageId": SIM_VM_ID})
    assert_error_shape(status, headers, body, "InvalidAction.NotFound", 404)
    status, headers, body = await signed_call(
        http, simulator, "GetImage", {"ImageId": SIM_VM_ID}, version="2022-01-01"
    )
    assert_error_shape(status, headers, body, "InvalidAction.NotFound", 404)
    assert simulator.sim.counters() == {
        ("DeleteImage", "InvalidAction.NotFound"): 1,
        ("GetImage", "InvalidAction.NotFound"): 1,
    }


# ----- STS --------------------------------------------------------------------------------------------


async def test_sts_credentials(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    ak, secret, token = simulator.sim.issue_sts()
    ok = await signed_call(
        http,
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
            http,
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
        http, simulator, "GetImage", {"ImageId": SIM_VM_ID}, security_token=token
    )
    assert_error_shape(status, headers, body, "InvalidSecurityToken.Malformed", 400)


async def test_sts_expired(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    ak, secret, token = simulator.sim.issue_sts(ttl_seconds=-1)
    status, headers, body = await signed_call(
        http,
        simulator,
        "GetImage",
        {"ImageId": SIM_VM_ID},
        access_key_id=ak,
        access_key_secret=secret,
        security_token=token,
    )
    assert_error_shape(status, headers, body, "InvalidSecurityToken.Expired", 400)


async def test_per_image_error_and_not_found_counted(
    simulator: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    simulator.sim.images["m-broken"] = SimImage(image_id="m-broken", error="NotAuthorized")
    status, headers, body = await signed_call(http, simulator, "GetImage", {"ImageId": "m-broken"})
    assert_error_shape(status, headers, body, "NotAuthorized", 407)
    assert body["AccessDeniedDetail"]["AuthAction"] == "ehpc:GetImage"
    assert simulator.sim.counters() == {("GetImage", "NotAuthorized"): 1}


# ----- seed error codes, fault injection, throttling --------------------------------------------------

SEED_STATUSES = {
    "InvalidParams": 400,
    "NotEnabled": 400,
    "ImageNotFound": 404,
    "ServiceUnavailable": 503,
    "EcsError": 406,
    "AliyunError": 406,
    "DbError": 406,
    "NotAuthorized": 407,
}


@pytest.mark.parametrize(("code", "http_status"), sorted(SEED_STATUSES.items()))
async def test_seed_code_per_image(
    simulator: RunningSimulator, http: aiohttp.ClientSession, code: str, http_status: int
) -> None:
    simulator.sim.images[SIM_VM_ID].error = code
    status, headers, body = await signed_call(http, simulator, "GetImage", {"ImageId": SIM_VM_ID})
    assert_error_shape(status, headers, body, code, http_status)
    assert ("AccessDeniedDetail" in body) == (code == "NotAuthorized")
    # Other images are unaffected.
    ok = await signed_call(http, simulator, "GetImage", {"ImageId": SIM_CONTAINER_ID})
    assert ok[0] == 200


@pytest.mark.parametrize(
    ("code", "http_status"),
    [*sorted(SEED_STATUSES.items()), ("Throttling.Api", 400), ("InternalError", 500), ("Forbidden.RAM", 403)],
)
async def test_code_by_fault_injection(
    simulator: RunningSimulator, http: aiohttp.ClientSession, code: str, http_status: int
) -> None:
    """error_rates at 1 answers the code on every business call, GetImage and ListImages alike."""
    simulator.sim.faults.error_rates = {code: 1.0}
    for action, params in (("GetImage", {"ImageId": SIM_VM_ID}), ("ListImages", {})):
        status, headers, body = await signed_call(http, simulator, action, params)
        assert_error_shape(status, headers, body, code, http_status)
    assert simulator.sim.counters() == {("GetImage", code): 1, ("ListImages", code): 1}


async def test_global_error(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    simulator.sim.faults.global_error = "NotEnabled"
    status, headers, body = await signed_call(http, simulator, "ListImages", {})
    assert_error_shape(status, headers, body, "NotEnabled", 400)


async def test_action_errors(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    """One action always fails while the other works (discovery down, GetImage up)."""
    simulator.sim.faults.action_errors = {"ListImages": "InternalError"}
    status, headers, body = await signed_call(http, simulator, "ListImages", {})
    assert_error_shape(status, headers, body, "InternalError", 500)
    status, _headers, _body = await signed_call(http, simulator, "GetImage", {"ImageId": SIM_VM_ID})
    assert status == 200
    with pytest.raises(ValueError, match="action"):
        faults_from_dict({"action_errors": {"AddImage": "InternalError"}})
    with pytest.raises(ValueError, match="action"):
        faults_from_dict({"action_errors": {"ListImages": "NoSuchCode"}})


async def test_invalid_params(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    cases = [
        ("GetImage", {}),
        ("GetImage", {"ImageId": SIM_VM_ID, "AdditionalRegionIds": "cn-beijing"}),
        ("GetImage", {"ImageId": SIM_VM_ID, "AdditionalRegionIds": "[1]"}),
        ("GetImage", {"ImageId": SIM_VM_ID, "ImageType": "Bare"}),
        ("ListImages", {"PageSize": "101"}),
        ("ListImages", {"PageSize": "0"}),
        ("ListImages", {"PageNumber": "x"}),
        ("ListImages", {"Mode": "All"}),
        ("ListImages", {"ImageIds": '{"a":1}'}),
    ]
    for action, params in cases:
        status, headers, body = await signed_call(http, simulator, action, params)
        assert_error_shape(status, headers, body, "InvalidParams", 400)


async def test_qps_limit_throttles_with_retry_after(
    simulator: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    simulator.sim.faults.qps_limit = 2
    simulator.sim.faults.retry_after_ms = 250
    results = [await signed_call(http, simulator, "GetImage", {"ImageId": SIM_VM_ID}) for _ in range(5)]
    codes = [r[2].get("Code", "Success") for r in results]
    # A burst of max(1, qps) = 2 passes, the rest of a burst this fast is throttled.
    assert codes[:2] == ["Success", "Success"]
    assert set(codes[2:]) == {"Throttling.User"}
    for status, headers, body in results[2:]:
        assert_error_shape(status, headers, body, "Throttling.User", 400)
        assert headers["x-acs-retry-after"] == "250"
    assert "x-acs-retry-after" not in results[0][1]
    assert simulator.sim.counters() == {("GetImage", "Success"): 2, ("GetImage", "Throttling.User"): 3}


async def test_injected_throttling_without_retry_after(
    simulator: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    simulator.sim.faults.error_rates = {"Throttling": 1.0}
    _, headers, body = await signed_call(http, simulator, "GetImage", {"ImageId": SIM_VM_ID})
    assert body["Code"] == "Throttling"
    assert "x-acs-retry-after" not in headers


async def test_reset_seen_by_a_real_client(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    simulator.sim.faults.reset_rate = 1.0
    with pytest.raises(aiohttp.ClientConnectionError):
        await signed_call(http, simulator, "GetImage", {"ImageId": SIM_VM_ID})
    # The connection pool recovers: the next call (no faults) gets through on a fresh connection.
    simulator.sim.faults.reset_rate = 0
    ok = await signed_call(http, simulator, "GetImage", {"ImageId": SIM_VM_ID})
    assert ok[0] == 200
    assert simulator.sim.counters() == {("GetImage", "ConnectionError"): 1, ("GetImage", "Success"): 1}
    assert {r["code"]: r["http_status"] for r in simulator.sim.counter_rows()}["ConnectionError"] == 0


async def test_reset_over_tls(simulator_https: RunningSimulator, http: aiohttp.ClientSession) -> None:
    simulator_https.sim.faults.reset_rate = 1.0
    ctx = ssl.create_default_context(cafile=simulator_https.ca_file)
    with pytest.raises(aiohttp.ClientConnectionError):
        await signed_call(http, simulator_https, "GetImage", {"ImageId": SIM_VM_ID}, ssl_context=ctx)
    assert simulator_https.sim.counters() == {("GetImage", "ConnectionError"): 1}


async def test_timeout_seen_by_a_real_client(simulator: RunningSimulator) -> None:
    """The stall outlasts the client's timeout; it is counted at once, and shutdown does not wait for it."""
    simulator.sim.faults.timeout_rate = 1.0
    simulator.sim.faults.timeout_seconds = 30
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as s:
        with pytest.raises(TimeoutError):
            await signed_call(s, simulator, "GetImage", {"ImageId": SIM_VM_ID})
    assert simulator.sim.counters() == {("GetImage", "Timeout"): 1}


async def test_timeout_ends_without_an_answer(
    simulator: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    """A client waiting longer than timeout_seconds gets the connection dropped, never an answer."""
    simulator.sim.faults.timeout_rate = 1.0
    simulator.sim.faults.timeout_seconds = 0.2
    with pytest.raises(aiohttp.ClientConnectionError):
        await signed_call(http, simulator, "GetImage", {"ImageId": SIM_VM_ID})


async def test_malformed_body(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    simulator.sim.faults.malformed_rate = 1.0
    query = canonical_query({"ImageId": SIM_VM_ID})
    status, resp_headers, text = await _raw_text(http, simulator, _signed_headers(simulator, query), query)
    assert status == 200
    assert resp_headers["Content-Type"] == JSON_CT
    assert resp_headers["x-acs-request-id"]
    with pytest.raises(ValueError, match=r"Unterminated|Expecting"):
        json.loads(text)
    assert simulator.sim.counter_rows() == [
        {"action": "GetImage", "code": "InvalidResponse", "http_status": 200, "count": 1}
    ]


async def _raw_text(
    http: aiohttp.ClientSession, running: RunningSimulator, headers: dict[str, str], query: str
) -> tuple[int, dict[str, str], str]:
    url = yarl.URL(f"{running.url}/?{query}", encoded=True)
    async with http.post(url, headers=headers, skip_auto_headers=["Content-Type"]) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def test_fault_mix_counters_exact(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    """With a mix of faults, the counters equal exactly what a client observed, call by call."""
    simulator.sim.faults = Faults(
        error_rates={"ServiceUnavailable": 0.2, "Throttling.User": 0.1},
        reset_rate=0.1,
        malformed_rate=0.1,
        seed=42,
    )
    seen: Counter[tuple[str, str]] = Counter()
    for n in range(60):
        action, params = ("ListImages", {}) if n % 3 == 0 else ("GetImage", {"ImageId": SIM_VM_ID})
        query = canonical_query(params)
        headers = _signed_headers(simulator, query, **{"x-acs-action": action})
        try:
            _, _, text = await _raw_text(http, simulator, headers, query)
        except aiohttp.ClientConnectionError:
            seen[action, "ConnectionError"] += 1
            continue
        try:
            code = json.loads(text).get("Code", "Success")
        except ValueError:
            code = "InvalidResponse"
        seen[action, code] += 1
    assert len(seen) >= 6  # every fault kind happened for at least one action
    assert simulator.sim.counters() == dict(seen)


async def test_fault_draws_are_reproducible_with_a_seed(
    simulator: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    async def run() -> list[str]:
        simulator.sim.faults = Faults(error_rates={"DbError": 0.5}, seed=7)
        out = []
        for _ in range(12):
            _, _, body = await signed_call(http, simulator, "GetImage", {"ImageId": SIM_VM_ID})
            out.append(body.get("Code", "Success"))
        return out

    first = await run()
    assert set(first) == {"Success", "DbError"}
    assert await run() == first


async def test_latency_with_jitter(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    simulator.sim.faults.latency_ms = 100
    simulator.sim.faults.jitter_ms = 40
    durations = []
    for _ in range(4):
        start = time.monotonic()
        status, _, _ = await signed_call(http, simulator, "GetImage", {"ImageId": SIM_VM_ID})
        durations.append(time.monotonic() - start)
        assert status == 200
    # At least the latency less the jitter (a busy machine only adds), and the jitter varies it. No upper
    # bound: on a busy machine it would judge the machine, not the simulator.
    assert min(durations) >= 0.058
    assert max(durations) - min(durations) > 0.001  # jitter varies the delay


# ----- ListImages -------------------------------------------------------------------------------------


async def test_list_images_paging(simulator_factory: SimulatorFactory, http: aiohttp.ClientSession) -> None:
    fleet = generate_fleet(45, ["cn-beijing"], seed=3)
    async with simulator_factory(images=fleet) as running:
        collected: list[str] = []
        page = 1
        while True:
            status, headers, body = await signed_call(
                http, running, "ListImages", {"PageNumber": str(page), "PageSize": "20"}
            )
            assert status == 200
            assert headers["x-acs-request-id"] == body["RequestId"]
            assert (body["Success"], body["TotalCount"], body["PageNumber"], body["PageSize"]) == (
                True,
                45,
                page,
                20,
            )
            collected += [i["ImageId"] for i in body["Images"]]
            if page * body["PageSize"] >= body["TotalCount"]:
                break
            page += 1
        assert page == 3
        assert collected == [i.image_id for i in fleet]
        item = body["Images"][-1]
        last = fleet[-1]
        assert item == {
            "ImageId": last.image_id,
            "ImageType": last.image_type,
            "Name": last.name,
            "Version": last.version,
            "Description": last.description,
            "AppId": last.app_id,
            "OsTag": last.os_tag,
            "CreateTime": last.create_time,
            "UpdateTime": last.update_time,
            "DocumentId": last.document_id,
            "Weight": last.weight,
        }
        # Defaults: page 1 of 20; past the end: an empty page with the same total.
        _, _, body = await signed_call(http, running, "ListImages", {})
        assert (body["PageNumber"], body["PageSize"], len(body["Images"])) == (1, 20, 20)
        _, _, body = await signed_call(http, running, "ListImages", {"PageNumber": "9"})
        assert (body["TotalCount"], body["Images"]) == (45, [])


async def test_list_images_filters(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    async def ids(**params: str) -> list[str]:
        status, _, body = await signed_call(http, simulator, "ListImages", params)
        assert status == 200, body
        assert body["TotalCount"] == len(body["Images"])
        return [i["ImageId"] for i in body["Images"]]

    assert await ids() == [SIM_VM_ID, SIM_VM_FAILED_ID, SIM_CONTAINER_ID]
    assert await ids(ImageType="Container") == [SIM_CONTAINER_ID]
    assert await ids(ImageType="VM", ImageCategory="Custom") == [SIM_VM_ID, SIM_VM_FAILED_ID]
    assert await ids(ImageCategory="Public") == []
    assert await ids(ImageIds=json.dumps([SIM_CONTAINER_ID, "m-unknown", SIM_VM_ID])) == [
        SIM_CONTAINER_ID,
        SIM_VM_ID,
    ]
    assert await ids(ImageNames='["lammps","nginx"]') == [SIM_VM_FAILED_ID, SIM_CONTAINER_ID]
    assert await ids(ImageIds=json.dumps([SIM_VM_ID, SIM_CONTAINER_ID]), ImageNames='["nginx"]') == [
        SIM_CONTAINER_ID
    ]
    # Images added or removed show up at once (the indexes follow the image table).
    simulator.sim.images["m-new"] = SimImage(image_id="m-new", name="nginx", version="v2", category="Public")
    assert await ids(ImageCategory="Public") == ["m-new"]
    del simulator.sim.images[SIM_VM_ID]
    assert await ids(ImageType="VM") == [SIM_VM_FAILED_ID, "m-new"]


async def test_list_images_merge_mode(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    images = simulator.sim.images
    images["m-g2"] = SimImage(
        image_id="m-g2", name="gromacs", version="v2025.1", create_time="2025-01-01T00:00:00Z"
    )
    images["m-g0"] = SimImage(
        image_id="m-g0", name="gromacs", version="v2023.1", create_time="2023-01-01T00:00:00Z"
    )
    _, _, body = await signed_call(http, simulator, "ListImages", {"Mode": "Merge", "ImageType": "VM"})
    assert [i["ImageId"] for i in body["Images"]] == ["m-g2", SIM_VM_FAILED_ID]
    _, _, body = await signed_call(
        http, simulator, "ListImages", {"Mode": "List", "ImageNames": '["gromacs"]'}
    )
    assert [i["ImageId"] for i in body["Images"]] == [SIM_VM_ID, "m-g2", "m-g0"]


# ----- counters and admin API -------------------------------------------------------------------------


async def test_every_answer_counted_once(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    await signed_call(http, simulator, "GetImage", {"ImageId": SIM_VM_ID})
    await signed_call(http, simulator, "GetImage", {"ImageId": SIM_VM_ID})
    await signed_call(http, simulator, "GetImage", {"ImageId": "m-nope"})
    await signed_call(http, simulator, "ListImages", {}, access_key_secret="bad")
    await signed_call(http, simulator, "ListImages", {})
    assert simulator.sim.counters() == {
        ("GetImage", "Success"): 2,
        ("GetImage", "ImageNotFound"): 1,
        ("ListImages", "SignatureDoesNotMatch"): 1,
        ("ListImages", "Success"): 1,
    }
    async with http.get(f"{simulator.url}/_sim/counters") as resp:
        rows = (await resp.json())["responses"]
    assert rows == [
        {"action": "GetImage", "code": "ImageNotFound", "http_status": 404, "count": 1},
        {"action": "GetImage", "code": "Success", "http_status": 200, "count": 2},
        {"action": "ListImages", "code": "SignatureDoesNotMatch", "http_status": 400, "count": 1},
        {"action": "ListImages", "code": "Success", "http_status": 200, "count": 1},
    ]
    async with http.post(f"{simulator.url}/_sim/counters/reset") as resp:
        assert resp.status == 200
    assert simulator.sim.counters() == {}


async def test_admin_images(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    base = f"{simulator.url}/_sim/images"
    async with http.get(base) as resp:
        listed = (await resp.json())["images"]
    assert [i["image_id"] for i in listed] == [SIM_VM_ID, SIM_VM_FAILED_ID, SIM_CONTAINER_ID]
    assert SIM_REGISTRY_PASSWORD not in json.dumps(listed)
    assert listed[2]["registry_password"] == "<redacted>"

    new = {
        "image_id": "m-admin",
        "name": "wrf",
        "create_time": "2024-06-01T00:00:00Z",
        "regions": {"cn-beijing": "Waiting"},
    }
    async with http.post(base, json=new) as resp:
        assert resp.status == 201
    async with http.patch(f"{base}/m-admin", json={"status": "CreateFailed", "error": "EcsError"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "CreateFailed"
    assert simulator.sim.images["m-admin"].error == "EcsError"
    async with http.put(f"{base}/m-admin/regions/cn-shanghai", json={"status": "Available"}) as resp:
        assert resp.status == 200
    async with http.delete(f"{base}/m-admin/regions/cn-beijing") as resp:
        assert resp.status == 204
    assert simulator.sim.images["m-admin"].regions == {"cn-shanghai": "Available"}
    async with http.patch(f"{base}/m-admin", json={"error": None}) as resp:
        assert resp.status == 200
    status, _, body = await signed_call(
        http, simulator, "GetImage", {"ImageId": "m-admin", "AdditionalRegionIds": '["cn-shanghai"]'}
    )
    assert status == 200
    assert body["Image"]["Status"] == "CreateFailed"
    assert body["Image"]["AdditionalRegionsInfo"][0]["Status"] == "Available"

    for method, url, payload in (
        ("PATCH", f"{base}/m-admin", {"size_gib": "big"}),
        ("PATCH", f"{base}/m-admin", {"colour": "red"}),
        ("POST", base, {"name": "no id"}),
        ("PUT", f"{base}/m-admin/regions/cn-beijing", {"state": "x"}),
    ):
        async with http.request(method, url, json=payload) as resp:
            assert resp.status == 400, (method, url, payload)
            assert (await resp.json())["error"]
    async with http.get(f"{base}/m-missing") as resp:
        assert resp.status == 404
    async with http.delete(f"{base}/m-admin") as resp:
        assert resp.status == 204
    assert "m-admin" not in simulator.sim.images
    assert simulator.sim.counters() == {("GetImage", "Success"): 1}  # admin calls are not API answers


async def test_admin_faults(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    url = f"{simulator.url}/_sim/faults"
    async with http.put(url, json={"error_rates": {"DbError": 1}, "latency_ms": 5}) as resp:
        assert resp.status == 200
        assert (await resp.json())["error_rates"] == {"DbError": 1.0}
    async with http.patch(url, json={"retry_after_ms": 100}) as resp:
        faults = await resp.json()
    assert (faults["latency_ms"], faults["retry_after_ms"], faults["error_rates"]) == (
        5,
        100,
        {"DbError": 1.0},
    )
    _, _, body = await signed_call(http, simulator, "GetImage", {"ImageId": SIM_VM_ID})
    assert body["Code"] == "DbError"
    async with http.put(url, json={}) as resp:  # PUT replaces: back to no faults
        assert (await resp.json()) == Faults().to_dict()
    for bad in ({"error_rates": {"NoSuchCode": 0.1}}, {"timeout_rate": 2}, {"qps_limit": 0}, {"bogus": 1}):
        async with http.put(url, json=bad) as resp:
            assert resp.status == 400, bad
    async with http.get(url) as resp:
        assert (await resp.json()) == Faults().to_dict()


async def test_admin_delete_faults_resets_them(
    simulator: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    """DELETE /_sim/faults is "no faults": every setting back to its default, like PUT {}."""
    url = f"{simulator.url}/_sim/faults"
    async with http.put(url, json={"global_error": "DbError", "latency_ms": 5, "qps_limit": 10}) as resp:
        assert resp.status == 200
    _, _, body = await signed_call(http, simulator, "GetImage", {"ImageId": SIM_VM_ID})
    assert body["Code"] == "DbError"
    async with http.delete(url) as resp:
        assert resp.status == 200
        assert (await resp.json()) == Faults().to_dict()
    assert simulator.sim.faults == Faults()
    status, _, body = await signed_call(http, simulator, "GetImage", {"ImageId": SIM_VM_ID})
    assert status == 200, body


async def test_admin_sts_credentials_uri(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{simulator.url}/_sim/sts?ttl_seconds=900") as resp:
        assert resp.status == 200
        creds = await resp.json()
    assert creds["Code"] == "Success"
    expiration = datetime.strptime(creds["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(minutes=14) < expiration - datetime.now(UTC) <= timedelta(minutes=15)
    status, _, body = await signed_call(
        http,
        simulator,
        "GetImage",
        {"ImageId": SIM_VM_ID},
        access_key_id=creds["AccessKeyId"],
        access_key_secret=creds["AccessKeySecret"],
        security_token=creds["SecurityToken"],
    )
    assert status == 200, body


async def test_admin_index(simulator: RunningSimulator, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{simulator.url}/_sim/") as resp:
        endpoints = (await resp.json())["endpoints"]
    assert "GET /_sim/counters" in endpoints
    assert "GET|PUT|PATCH|DELETE /_sim/faults" in endpoints


async def test_list_images_follow_every_table_mutator(
    simulator: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    """The cached ListImages selections notice each way of changing sim.images, not only [] and del."""

    async def ids() -> list[str]:
        _, _, body = await signed_call(http, simulator, "ListImages", {"PageSize": "100"})
        by_name = await signed_call(http, simulator, "ListImages", {"ImageNames": '["n"]'})
        assert [i["ImageId"] for i in by_name[2]["Images"]] == [
            i["ImageId"] for i in body["Images"] if i["Name"] == "n"
        ]
        return [i["ImageId"] for i in body["Images"]]

    images = simulator.sim.images
    images.clear()
    assert await ids() == []
    images.update({"m-a": SimImage("m-a", name="n")}, **{"m-b": SimImage("m-b")})
    assert await ids() == ["m-a", "m-b"]
    images.setdefault("m-c", SimImage("m-c", name="n"))
    assert await ids() == ["m-a", "m-b", "m-c"]
    images |= {"m-d": SimImage("m-d")}
    assert await ids() == ["m-a", "m-b", "m-c", "m-d"]
    images.pop("m-a")
    assert await ids() == ["m-b", "m-c", "m-d"]
    assert images.popitem()[0] == "m-d"  # the last one, as dict.popitem
    assert await ids() == ["m-b", "m-c"]
    images["m-b"] = SimImage("m-b", name="n")  # replaced under the same id: the name index follows
    assert await ids() == ["m-b", "m-c"]
    del images["m-c"]
    assert await ids() == ["m-b"]


# ----- units: nonce store, fleets ---------------------------------------------------------------------


def test_nonce_store_window_and_bound() -> None:
    store = NonceStore(window=31 * 60, max_entries=1000)
    assert not store.seen("a", 0)
    assert store.seen("a", 30 * 60)
    assert store.seen("a", 31 * 60 + 1)  # rotated to the previous generation: still remembered
    assert not store.seen("b", 31 * 60 + 2)
    assert not store.seen("a", 62 * 60 + 2)  # two windows later: forgotten
    assert store.seen("b", 62 * 60 + 3)
    assert not store.seen("c", 10_000 * 60)
    assert len(store) == 1  # a long silence drops both generations
    small = NonceStore(window=60, max_entries=10)
    for n in range(1000):
        small.seen(str(n), 1.0)
    assert len(small) <= 20


def test_generate_fleet_is_deterministic_and_mixed() -> None:
    a = generate_fleet(200, ["cn-beijing", "cn-shanghai"], seed=5)
    b = generate_fleet(200, ["cn-beijing", "cn-shanghai"], seed=5)
    assert a == b
    assert generate_fleet(200, ["cn-beijing"], seed=6) != a
    assert len({i.image_id for i in a}) == 200
    types = Counter(i.image_type for i in a)
    assert 30 < types["Container"] < 90
    statuses = Counter(i.status for i in a)
    assert 150 < statuses["Available"] < 200
    assert {"CreateFailed", "UnAvailable", "Creating"} & set(statuses)
    assert any(set(i.regions.values()) - {"Available"} for i in a)
    assert any(len(i.regions) < 2 for i in a)
    errors = [i.error for i in a if i.error]
    assert 1 <= len(errors) <= 6
    assert all(i.registry_password for i in a if i.image_type == "Container")
    assert all(not i.registry_url for i in a if i.image_type == "VM")


def test_load_fleet_yaml_json_and_errors(tmp_path: Path) -> None:
    example = load_fleet(Path(simulator_pkg.__file__).parent / "example-fleet.yaml")
    assert len(example) > 5
    assert any(i.image_type == "Container" for i in example)
    (tmp_path / "f.json").write_text(json.dumps({"images": [{"image_id": "m-1", "status": "Creating"}]}))
    assert load_fleet(tmp_path / "f.json") == [SimImage(image_id="m-1", status="Creating")]
    (tmp_path / "f.yaml").write_text("- image_id: m-2\n  create_time: 2024-01-02T03:04:05Z\n")
    assert load_fleet(tmp_path / "f.yaml")[0].create_time == "2024-01-02T03:04:05Z"
    (tmp_path / "g.yaml").write_text("generate: {count: 4, regions: [cn-beijing], seed: 1}\n")
    assert load_fleet(tmp_path / "g.yaml") == generate_fleet(4, ["cn-beijing"], seed=1)
    for text, message in (
        ("- image_id: m-1\n- image_id: m-1\n", "duplicate image_id m-1"),
        ("- image_id: m-1\n  colour: red\n", r"images\[0\]: unknown field\(s\) colour"),
        ("- image_id: m-1\n  image_type: Bare\n", r"images\[0\].image_type"),
        ("images: [\n", "not valid YAML"),
    ):
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(ValueError, match=message):
            load_fleet(tmp_path / "bad.yaml")
