"""The simulated estate: accounts see only their own images, regions are separate fleets, per-(account,
region) faults and counters, the admin APIs, the file format and ``simulate --estate``."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ehpc_simulator import estate_file
from ehpc_simulator.cli import add_simulate_arguments, run_simulate
from ehpc_simulator.estate import Estate
from ehpc_simulator.estate_file import EstateFileError
from tests.fixtures.estate import (
    ALPHA_AK,
    ALPHA_HZ_IMAGE,
    ALPHA_ID,
    ALPHA_SECRET,
    ALPHA_SH_IMAGE,
    BETA_AK,
    BETA_HZ_IMAGE,
    BETA_ID,
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


def _broken(*changes: tuple[list[Any], Any]) -> dict[str, Any]:
    """The fixture estate with each ``(path, value)`` set (``KeyError``: the key removed)."""
    data = estate_data()
    for path, value in changes:
        node: Any = data
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return data


# (path, bad value, the start of its error line): one per kind of rule, at distinct places of the file.
BAD_FIELDS: list[tuple[list[Any], Any, str]] = [
    (["regions"], [HZ, SH, HZ], "regions: duplicate region id"),
    (["accounts", 0, "id"], "12", "accounts[0].id: a string of 12-16 digits"),
    (["accounts", 1, "name"], "alpha", "accounts[1].name: 'alpha' is taken by account alpha"),
    (["accounts", 2, "id"], BETA_ID, f"accounts[2].id: '{BETA_ID}' is taken by account"),
    (["accounts", 0, "colour"], "red", "accounts[0].colour: unknown field"),
    (
        ["accounts", 2, "acess_keys"],
        {},
        "accounts[2].acess_keys: unknown field (did you mean 'access_keys'?)",
    ),
    (
        ["accounts", 1, "roles", 0, "trusted_accounts"],
        ["nobody"],
        "accounts[1].roles[0].trusted_accounts[0]: no account 'nobody'",
    ),
    (
        ["accounts", 2, "roles", 0, "trusted_oidc_providers"],
        ["x"],
        "accounts[2].roles[0].trusted_oidc_providers[0]: no OIDC provider 'x'",
    ),
    (
        ["accounts", 1, "roles", 1, "max_session_seconds"],
        60,
        "accounts[1].roles[1].max_session_seconds: must",
    ),
    (["accounts", 1, "roles", 2, "name"], "a/b", "accounts[1].roles[2].name: 1-64 of letters"),
    (["accounts", 2, "roles", 1, "name"], "OIDC-Reader", "accounts[2].roles[1].name: 'OIDC-Reader' exists"),
    (["accounts", 0, "regions", "eu-west-1"], {}, "accounts[0].regions.eu-west-1: not one of the estate's"),
    (
        ["accounts", 0, "regions", HZ, "faults"],
        {"latency_ms": -1},
        "accounts[0].regions.cn-hangzhou.faults.latency_ms: expected a non-negative number",
    ),
    (
        ["accounts", 0, "regions", SH, "images", 0, "image_id"],
        "",
        "accounts[0].regions.cn-shanghai.images[0].image_id: a non-empty string",
    ),
    (
        ["accounts", 1, "access_keys"],
        {ALPHA_AK: "other"},
        f"accounts[1].access_keys.{ALPHA_AK}: belongs to account alpha",
    ),
    (
        ["accounts", 2, "oidc_providers", 0, "issuer"],
        KeyError,
        "accounts[2].oidc_providers[0].issuer: required",
    ),
    (["sts_max_ttl_seconds"], 0, "sts_max_ttl_seconds: must be greater than 0"),
    (
        ["accounts", 1, "regions", HZ, "generate"],
        {"count": True},
        f"accounts[1].regions.{HZ}.generate.count: must",
    ),
]


ALONE: list[tuple[list[Any], Any, str]] = [
    (["regions"], [], "regions: must not be empty"),  # a region key is then judged against no list
    (["accounts"], [], "accounts: must not be empty"),
    (["accounts", 0], None, "accounts[0]: must be a mapping"),
]


@pytest.mark.parametrize(
    ("path", "value", "line"), BAD_FIELDS + ALONE, ids=[w for *_, w in BAD_FIELDS + ALONE]
)
def test_bad_estate_fields_name_the_field(path: list[Any], value: Any, line: str) -> None:
    """Each problem is one line that starts with the path of the bad field."""
    with pytest.raises(ValueError, match=re.escape(line)) as caught:
        Estate.from_dict(_broken((path, value)))
    assert [x for x in str(caught.value).splitlines() if x.startswith(line)]


@settings(max_examples=60)
@given(st.sets(st.sampled_from(range(len(BAD_FIELDS))), min_size=2))
def test_every_problem_reported_at_once(picked: set[int]) -> None:
    """Any mix of bad fields: each is named on a line of its own, in one error, in file order."""
    chosen = [BAD_FIELDS[n] for n in sorted(picked)]
    with pytest.raises(EstateFileError) as caught:
        Estate.from_dict(_broken(*((path, value) for path, value, _ in chosen)))
    lines = caught.value.lines
    for *_, line in chosen:
        assert [x for x in lines if x.startswith(line)], (line, lines)
    assert len(lines) == len(set(lines))  # each problem once


@settings(max_examples=30)
@given(st.sets(st.sampled_from(range(len(BAD_FIELDS))), min_size=1))
def test_a_yaml_file_points_at_each_problem(
    tmp_path_factory: pytest.TempPathFactory, picked: set[int]
) -> None:
    """``file:line:column:`` of every problem: the key the field is written under (the nearest
    written parent of a missing one), or the list item."""
    chosen = [BAD_FIELDS[n] for n in sorted(picked)]
    data = _broken(*((path, value) for path, value, _ in chosen))
    path = tmp_path_factory.mktemp("estate") / "estate.yaml"
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    path.write_text(text)
    with pytest.raises(EstateFileError) as caught:
        Estate.load(path)
    rows = text.splitlines()
    for *_, expected in chosen:
        found = [x for x in caught.value.lines if x.split(": ", 1)[-1].startswith(expected)]
        assert found, (expected, caught.value.lines)
        where = re.match(rf"{re.escape(str(path))}:(\d+):(\d+): ", found[0])
        assert where, found[0]
        row, column = int(where[1]) - 1, int(where[2]) - 1
        at = rows[row][column:]
        field = expected.split(": ", 1)[0]
        last = re.findall(r"[^.\[\]]+|\[\d+\]", field)[-1]
        if last.startswith("["):
            continue  # a list item: its text is the value, checked by the key cases
        written = f"{last}:" in text
        assert at.startswith(f"{last}:") if written else at, (found[0], rows[row])


def test_an_unknown_field_suggests_the_known_one() -> None:
    """A misspelt key of a role, a provider, a region entry, or the top level: the known key is named."""
    misspelt = _broken(
        (["accounts", 1, "roles", 0, "trusted_acounts"], []),
        (["accounts", 2, "oidc_providers", 0, "client_id"], []),
        (["accounts", 0, "regions", HZ, "fault"], {}),
        (["sts_max_ttl"], 1),
    )
    with pytest.raises(EstateFileError) as caught:
        Estate.from_dict(misspelt)
    assert caught.value.lines == [  # in file order: the top-level key was added last
        f"accounts[0].regions.{HZ}.fault: unknown field (did you mean 'faults'?)",
        "accounts[1].roles[0].trusted_acounts: unknown field (did you mean 'trusted_accounts'?)",
        "accounts[2].oidc_providers[0].client_id: unknown field (did you mean 'client_ids'?)",
        "sts_max_ttl: unknown field (did you mean 'sts_max_ttl_seconds'?)",
    ]


def test_no_secret_in_an_error() -> None:
    """An AccessKey secret put where a name belongs, or as a name that clashes, is never quoted."""
    secret = "s3cr3t-value-never-shown"
    bad = _broken(
        (["accounts", 0, "name"], 12345),
        (["accounts", 1, "access_keys"], {BETA_AK: 7}),
        (["accounts", 2, "roles", 0, "max_session_seconds"], secret),
        (["accounts", 2, "id"], secret),
    )
    with pytest.raises(EstateFileError) as caught:
        Estate.from_dict(bad)
    assert secret not in str(caught.value)
    named = [line.split(": ", 1)[0] for line in caught.value.lines]
    for field in ("accounts[0].name", f"accounts[1].access_keys.{BETA_AK}", "accounts[2].id"):
        assert field in named
    assert "accounts[2].roles[0].max_session_seconds" in named


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
    assert example.account("prod").region(SH).faults.latency_ms == 30


def test_the_validated_file_is_frozen() -> None:
    """What the reader returns cannot be changed on the way to the estate."""
    spec = estate_file.read(estate_data())
    with pytest.raises(ValidationError):
        spec.accounts[0].name = "other"
    assert Estate.from_file(spec).describe() == Estate.from_dict(estate_data()).describe()


def test_unreadable_estate_file(tmp_path: Path) -> None:
    """A missing or unparsable file names itself (a YAML one where it breaks)."""
    with pytest.raises(ValueError, match=r"nope\.yaml"):
        Estate.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        Estate.load(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("regions: [cn-hangzhou\naccounts: []\n")
    with pytest.raises(EstateFileError, match=rf"^{re.escape(str(broken))}:\d+:\d+: not valid YAML"):
        Estate.load(broken)
    as_json = tmp_path / "estate.json"
    as_json.write_text(json.dumps(_broken((["accounts", 0, "id"], "1"), (["sts_max_ttl_seconds"], -1))))
    with pytest.raises(EstateFileError) as caught:
        Estate.load(as_json)
    assert caught.value.lines == [
        f"{as_json}: accounts[0].id: a string of 12-16 digits",
        # a trust naming the id that failed cannot find it: reported too, at the trust
        f"{as_json}: accounts[1].roles[1].trusted_accounts[0]: no account '{ALPHA_ID}'",
        f"{as_json}: sts_max_ttl_seconds: must be greater than 0",
    ]


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
