"""The simulated estate: accounts see only their own images, regions are separate fleets, per-(account,
region) faults and counters, the admin APIs, the file format and ``simulate --estate``."""

from __future__ import annotations

import argparse
import asyncio
import io
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ehpc_simulator.cli import add_simulate_arguments, run_simulate
from ehpc_simulator.estate import Estate
from tests.fixtures.estate import (
    ALPHA_AK,
    ALPHA_HZ_IMAGE,
    ALPHA_SECRET,
    ALPHA_SH_IMAGE,
    BETA_AK,
    BETA_HZ_IMAGE,
    BETA_SECRET,
    HZ,
    READER_ARN,
    SH,
    RunningEstate,
    estate_data,
    region_target,
)
from tests.fixtures.http import wait_until_async
from tests.fixtures.sim import signed_call

EXAMPLE = Path(__file__).resolve().parent.parent / "simulator" / "ehpc_simulator" / "example-estate.yaml"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One aiohttp client session per test."""
    async with aiohttp.ClientSession() as s:
        yield s


async def _get_image(
    session: aiohttp.ClientSession, running: RunningEstate, region: str, image_id: str, ak: str, secret: str
) -> tuple[int, Any]:
    status, _, body = await signed_call(
        session, region_target(running, region, ak, secret), "GetImage", {"ImageId": image_id}
    )
    return status, body


async def test_keys_see_only_their_account(session: aiohttp.ClientSession, estate: RunningEstate) -> None:
    """alpha's key reads alpha's image; beta's image does not exist for it (and vice versa)."""
    status, body = await _get_image(session, estate, HZ, ALPHA_HZ_IMAGE, ALPHA_AK, ALPHA_SECRET)
    assert status == 200, body
    assert body["Image"]["Name"] == "gromacs"
    status, body = await _get_image(session, estate, HZ, BETA_HZ_IMAGE, ALPHA_AK, ALPHA_SECRET)
    assert (status, body["Code"]) == (404, "ImageNotFound")
    status, body = await _get_image(session, estate, HZ, ALPHA_HZ_IMAGE, BETA_AK, BETA_SECRET)
    assert (status, body["Code"]) == (404, "ImageNotFound")
    status, body = await _get_image(session, estate, HZ, BETA_HZ_IMAGE, BETA_AK, BETA_SECRET)
    assert status == 200, body
    alpha, beta = estate.estate.account("alpha"), estate.estate.account("beta")
    assert alpha.region(HZ).counters() == {("GetImage", "Success"): 1, ("GetImage", "ImageNotFound"): 1}
    assert beta.region(HZ).counters() == {("GetImage", "Success"): 1, ("GetImage", "ImageNotFound"): 1}


async def test_unknown_key_and_bad_signature(session: aiohttp.ClientSession, estate: RunningEstate) -> None:
    """Unknown keys are counted by the region's unattributed simulator; known keys by their account."""
    status, body = await _get_image(session, estate, HZ, ALPHA_HZ_IMAGE, "NOBODY", "x")
    assert (status, body["Code"]) == (404, "InvalidAccessKeyId.NotFound")
    assert estate.estate.unattributed(HZ).counters() == {("GetImage", "InvalidAccessKeyId.NotFound"): 1}
    status, body = await _get_image(session, estate, HZ, ALPHA_HZ_IMAGE, ALPHA_AK, "wrong")
    assert (status, body["Code"]) == (400, "SignatureDoesNotMatch")
    assert estate.estate.account("alpha").region(HZ).counters() == {("GetImage", "SignatureDoesNotMatch"): 1}


async def test_regions_are_separate_fleets(session: aiohttp.ClientSession, estate: RunningEstate) -> None:
    """alpha's Shanghai image is not in Hangzhou, and each region's HostId names it."""
    status, body = await _get_image(session, estate, HZ, ALPHA_SH_IMAGE, ALPHA_AK, ALPHA_SECRET)
    assert (status, body["Code"]) == (404, "ImageNotFound")
    assert body["HostId"] == f"ehpcinstant.{HZ}.aliyuncs.com"
    status, body = await _get_image(session, estate, SH, ALPHA_SH_IMAGE, ALPHA_AK, ALPHA_SECRET)
    assert status == 200, body
    assert estate.ep.region_urls[HZ] != estate.ep.region_urls[SH]
    assert estate.estate.account("alpha").region(SH).url == estate.ep.region_urls[SH]


async def test_faults_are_per_account_and_region(
    session: aiohttp.ClientSession, estate: RunningEstate
) -> None:
    """A fault set on alpha's Hangzhou touches neither alpha's Shanghai nor beta's Hangzhou."""
    estate.estate.account("alpha").region(HZ).faults.global_error = "ServiceUnavailable"
    status, body = await _get_image(session, estate, HZ, ALPHA_HZ_IMAGE, ALPHA_AK, ALPHA_SECRET)
    assert (status, body["Code"]) == (503, "ServiceUnavailable")
    assert (await _get_image(session, estate, SH, ALPHA_SH_IMAGE, ALPHA_AK, ALPHA_SECRET))[0] == 200
    assert (await _get_image(session, estate, HZ, BETA_HZ_IMAGE, BETA_AK, BETA_SECRET))[0] == 200


async def test_region_admin_selects_the_account(
    session: aiohttp.ClientSession, estate: RunningEstate
) -> None:
    """/_sim/... on a region port acts on ?account=; it is required with several accounts."""
    base = estate.ep.region_urls[HZ]
    async with session.get(f"{base}/_sim/images?account=beta") as r:
        assert [i["image_id"] for i in (await r.json())["images"]] == [BETA_HZ_IMAGE]
    async with session.get(f"{base}/_sim/images") as r:
        assert r.status == 400
    async with session.get(f"{base}/_sim/images?account=nobody") as r:
        assert r.status == 404
    async with session.patch(
        f"{base}/_sim/faults?account=alpha", json={"global_error": "InternalError"}
    ) as r:
        assert r.status == 200
    assert estate.estate.account("alpha").region(HZ).faults.global_error == "InternalError"
    assert estate.estate.account("alpha").region(SH).faults.global_error is None
    async with session.get(f"{base}/_sim/sts?account=beta&ttl_seconds=900") as r:
        cred = await r.json()
    status, _, body = await signed_call(
        session,
        region_target(estate, HZ, cred["AccessKeyId"], cred["AccessKeySecret"]),
        "GetImage",
        {"ImageId": BETA_HZ_IMAGE},
        security_token=cred["SecurityToken"],
    )
    assert status == 200, body
    async with session.get(f"{base}/_sim/accounts") as r:
        listed = await r.json()
    assert [a["name"] for a in listed["accounts"]] == ["alpha", "beta", "gamma"]
    assert ALPHA_SECRET not in str(listed)


async def test_sts_admin(session: aiohttp.ClientSession, estate: RunningEstate) -> None:
    """The STS port's admin API: estate view without secrets, OIDC tokens, counters."""
    base = f"{estate.ep.sts_url}/_sim"
    ssl = estate.client_ssl
    async with session.get(f"{base}/estate", ssl=ssl) as r:
        described = await r.json()
    assert described["regions"] == [HZ, SH]
    assert BETA_SECRET not in str(described)
    async with session.post(f"{base}/oidc/token", json={"provider": "rrsa", "ttl_seconds": 60}, ssl=ssl) as r:
        token = (await r.json())["token"]
    assert token.count(".") == 2
    async with session.post(f"{base}/oidc/token", json={"provider": "nope"}, ssl=ssl) as r:
        assert r.status == 404
    async with session.put(
        f"{base}/trust", json={"role_arn": READER_ARN.replace("reader", "x"), "trusted": True}, ssl=ssl
    ) as r:
        assert r.status == 404
    async with session.get(f"{base}/sts/counters", ssl=ssl) as r:
        assert (await r.json()) == {"responses": []}
    async with session.get(f"{base}/", ssl=ssl) as r:
        assert "PUT /_sim/trust" in (await r.json())["endpoints"]


# ----- the file format ----------------------------------------------------------------------------------


def _broken(path: list[Any], value: Any) -> dict[str, Any]:
    data = estate_data()
    node: Any = data
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


BAD_FILES = [
    (_broken(["regions"], []), "regions:"),
    (_broken(["accounts", 0, "id"], "12"), "accounts[0].id:"),
    (_broken(["accounts", 1, "id"], "1111111111111111"), "accounts[1]:"),
    (_broken(["accounts", 0, "colour"], "red"), "accounts[0]: unknown field(s) colour"),
    (
        _broken(["accounts", 1, "roles", 0, "trusted_accounts"], ["nobody"]),
        "accounts[1].roles[0].trusted_accounts[0]",
    ),
    (
        _broken(["accounts", 2, "roles", 0, "trusted_oidc_providers"], ["x"]),
        "accounts[2].roles[0].trusted_oidc_providers[0]",
    ),
    (
        _broken(["accounts", 1, "roles", 0, "max_session_seconds"], 60),
        "accounts[1].roles[0].max_session_seconds",
    ),
    (_broken(["accounts", 1, "roles", 0, "name"], "a/b"), "accounts[1].roles[0].name"),
    (_broken(["accounts", 0, "regions", "eu-west-1"], {}), "accounts[0].regions.eu-west-1"),
    (
        _broken(["accounts", 0, "regions", HZ, "faults"], {"latency_ms": -1}),
        "accounts[0].regions.cn-hangzhou.faults.latency_ms",
    ),
    (
        _broken(["accounts", 0, "regions", HZ, "images", 0, "image_id"], ""),
        "accounts[0].regions.cn-hangzhou.images[0]",
    ),
    (_broken(["accounts", 1, "access_keys"], {ALPHA_AK: "other"}), "accounts[1].access_keys"),
    (
        _broken(["accounts", 2, "oidc_providers", 0, "issuer"], KeyError),
        "accounts[2].oidc_providers[0].issuer",
    ),
    (_broken(["sts_max_ttl_seconds"], 0), "sts_max_ttl_seconds"),
]


@pytest.mark.parametrize(("data", "where"), BAD_FILES, ids=[w for _, w in BAD_FILES])
def test_bad_estate_files_name_the_field(data: dict[str, Any], where: str) -> None:
    """Each error message starts with the path of the bad field."""
    with pytest.raises(ValueError, match=re.escape(where)):
        Estate.from_dict(data)


def test_example_estate_loads() -> None:
    """The shipped example: 3 accounts x 2 regions, reached by key, role and OIDC."""
    example = Estate.load(EXAMPLE)
    assert [a.name for a in example.accounts] == ["prod", "staging", "research"]
    assert example.regions == (HZ, SH)
    assert example.account("prod").access_keys
    staging_role = next(iter(example.account("staging").roles.values()))
    assert staging_role.trusted_accounts == {example.account("prod").id}
    research_role = next(iter(example.account("research").roles.values()))
    assert research_role.trusted_oidc_providers == {
        p.arn for p in example.account("research").oidc_providers.values()
    }
    assert len(example.account("staging").region(SH).images) == 5


def test_unreadable_estate_file(tmp_path: Path) -> None:
    """A missing or unparsable file names itself."""
    with pytest.raises(ValueError, match=r"nope\.yaml"):
        Estate.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match=r"bad\.json"):
        Estate.load(bad)


# ----- simulate --estate -----------------------------------------------------------------------------------


async def test_simulate_estate_cli_serves(session: aiohttp.ClientSession) -> None:
    """``simulate --estate FILE`` prints every endpoint; the region and STS ports answer."""
    parser = argparse.ArgumentParser()
    add_simulate_arguments(parser)
    args = parser.parse_args(["--estate", str(EXAMPLE), "--listen-address", "127.0.0.1:0"])
    out = io.StringIO()
    task = asyncio.create_task(run_simulate(args, out=out))
    try:
        await wait_until_async(
            lambda: (
                ("CA certificate" in out.getvalue() and "account research" in out.getvalue()) or task.done()
            ),
            60,
            "the estate's address lines",
        )
        text = out.getvalue()
        regions = dict(re.findall(r"region (\S+): (http://\S+) ", text))
        assert set(regions) == {HZ, SH}
        sts_url = re.search(r"STS: (https://\S+) ", text)
        ca = re.search(r"STS CA certificate: (\S+)", text)
        assert sts_url
        assert ca
        assert "demo-prod-secret" not in text
        async with session.get(f"{regions[HZ]}/_sim/images?account=prod") as r:
            assert r.status == 200
        ctx = ssl.create_default_context(cafile=ca.group(1))
        async with session.get(f"{sts_url.group(1)}/_sim/estate", ssl=ctx) as r:
            assert r.status == 200
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
