"""Fleets end to end: one exporter, 3 accounts x 2 regions, each account reached another way, against the
simulated estate and its STS (every credential path through the exporter's bounded STS calls).

- ``prod``: a static AccessKey;
- ``staging``: a role assumed (STS AssumeRole, V1-signed) with prod's key;
- ``research``: OIDC (STS AssumeRoleWithOIDC) with a token file, as RRSA on ACK gives it.

And RRSA through the Helm chart: the environment the chart renders, handed to a real exporter process.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ehpc_simulator.estate import Estate
from exporter.config import Scope
from exporter.config.load import load_config
from exporter.service import ExporterService
from tests.exporter_support import samples
from tests.fixtures.http import wait_until_async
from tests.fixtures.promstack import exporter_command, free_port
from tests.helm_render import rendered_config, rendered_env

pytestmark = pytest.mark.process  # most tests here start real processes (make test-fast skips the file)

HZ, SH = "cn-hangzhou", "cn-shanghai"
PROD_ID, STAGING_ID, RESEARCH_ID = "1111111111111111", "2222222222222222", "3333333333333333"
PROD_AK, PROD_SECRET = "E2E-PROD-AK", "e2e-prod-secret-0123456789"
STAGING_ROLE = f"acs:ram::{STAGING_ID}:role/ehpc-image-reader"
RESEARCH_ROLE = f"acs:ram::{RESEARCH_ID}:role/ehpc-image-reader"
PROVIDER_ARN = f"acs:ram::{RESEARCH_ID}:oidc-provider/rrsa"
ISSUER = "https://oidc-ack-cn-hangzhou.oss-cn-hangzhou.aliyuncs.com/e2e"
SHARED_ID = "m-shared000000000000001"  # the same id in every account and region: six distinct images
ACCOUNTS = {"prod": PROD_ID, "staging": STAGING_ID, "research": RESEARCH_ID}


def _images(account: str, region: str) -> list[dict[str, Any]]:
    own = f"m-{account[:4]}{region[-3:]}0000000001"
    return [{"image_id": SHARED_ID, "name": "shared"}, {"image_id": own, "name": f"{account}-{region}"}]


def estate_data() -> dict[str, Any]:
    """Three accounts, two regions, two images in each (account, region)."""
    return {
        "regions": [HZ, SH],
        # Issued credentials expire within a second (the real STS honours DurationSeconds): every
        # refresh fetches anew, so a revoked trust bites at the next cycle, and expiry is exercised.
        "sts_max_ttl_seconds": 1,
        "accounts": [
            {
                "name": "prod",
                "id": PROD_ID,
                "access_keys": {PROD_AK: PROD_SECRET},
                "regions": {r: {"images": _images("prod", r)} for r in (HZ, SH)},
            },
            {
                "name": "staging",
                "id": STAGING_ID,
                "roles": [{"name": "ehpc-image-reader", "trusted_accounts": ["prod"]}],
                "regions": {r: {"images": _images("staging", r)} for r in (HZ, SH)},
            },
            {
                "name": "research",
                "id": RESEARCH_ID,
                "oidc_providers": [{"name": "rrsa", "issuer": ISSUER}],
                "roles": [{"name": "ehpc-image-reader", "trusted_oidc_providers": ["rrsa"]}],
                "regions": {r: {"images": _images("research", r)} for r in (HZ, SH)},
            },
        ],
    }


def exporter_config(urls: Mapping[str, str], sts_host: str, token_file: Path) -> str:
    """The exporter's targets: each account's regions at their simulated endpoints, discovery on."""
    regions = "\n".join(f"      - {{region_id: {r}, endpoint: '{u}'}}" for r, u in urls.items())
    return f"""
api: {{qps: 0, retry: {{max_attempts: 1}}}}
refresh: {{interval_seconds: 3, jitter_ratio: 0}}
web: {{listen_address: "127.0.0.1:0"}}
targets:
  - account: prod
    credentials: {{type: access_key, access_key_id: {PROD_AK}, access_key_secret: {PROD_SECRET}}}
    regions:
{regions}
    discovery: {{enabled: true}}
  - account: staging
    credentials: {{type: access_key, access_key_id: {PROD_AK}, access_key_secret: {PROD_SECRET}}}
    assume_role: {{role_arn: "{STAGING_ROLE}", sts_endpoint: "{sts_host}", duration_seconds: 900}}
    regions:
{regions}
    discovery: {{enabled: true}}
  - account: research
    credentials:
      type: oidc_role_arn
      role_arn: "{RESEARCH_ROLE}"
      oidc_provider_arn: "{PROVIDER_ARN}"
      oidc_token_file: "{token_file}"
      sts_endpoint: "{sts_host}"
    regions:
{regions}
    discovery: {{enabled: true}}
"""


def expected_images() -> set[tuple[str, str, str]]:
    return {(a, r, i["image_id"]) for a in ACCOUNTS for r in (HZ, SH) for i in _images(a, r)}


async def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        assert resp.status == 200
        return samples(await resp.text())


def up_by_image(
    found: Mapping[tuple[str, frozenset[tuple[str, str]]], float],
) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for (name, labels), v in found.items():
        if name == "ehpc_image_up":
            d = dict(labels)
            key = (d["account"], d["region_id"], d["image_id"])
            assert key not in out  # exported once
            out[key] = v
    return out


def account_errors(found: Mapping[tuple[str, frozenset[tuple[str, str]]], float], account: str) -> float:
    return sum(
        v
        for (name, labels), v in found.items()
        if name == "ehpc_api_errors_total" and ("account", account) in labels
    )


def simulator_errors(estate: Estate, account: str, *, sts: bool = True) -> int:
    """What the simulator refused that account: its STS answers (AssumeRole is staging's alone here; left
    out with ``sts=False``) and its gateways' answers in both regions, every code but Success."""
    refused = [
        n
        for (action, code), n in estate.sts_counters().items()
        if action == "AssumeRole" and code != "Success"
    ]
    sts_refused = sum(refused) if account == "staging" and sts else 0
    gateways = sum(
        n
        for r in (HZ, SH)
        for (_a, code), n in estate.account(account).region(r).counters().items()
        if code != "Success"
    )
    return sts_refused + gateways


async def test_three_accounts_two_regions_isolated_and_healing(
    server_ssl_context: ssl.SSLContext, ca_file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every image once with its account and region; a revoked role fails that account alone, counted
    exactly as the simulator refused it; restoring the trust heals it without a restart."""
    # The exporter calls STS over https with the system's trust, which honours SSL_CERT_FILE.
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    estate = Estate.from_dict(estate_data())
    async with estate.serve(sts_ssl_context=server_ssl_context) as ep:
        token = tmp_path / "token"
        token.write_text(estate.issue_oidc_token("rrsa", ttl_seconds=3600))
        path = tmp_path / "config.yaml"
        path.write_text(exporter_config(ep.region_urls, ep.sts_host, token))
        svc = ExporterService(load_config(path), process_metrics=False)
        await svc.start()
        try:
            await wait_until_async(lambda: svc.ready, within=20, what="every (account, region) refreshed")
            # One-second tokens can expire between the exporter's check and the gateway's (a cycle then
            # fails with InvalidSecurityToken.Expired and the next one fetches anew): wait for a whole one.
            everything_up = dict.fromkeys(expected_images(), 1.0)
            await wait_until_async(
                lambda: up_by_image(samples(svc.rendered.text)) == everything_up, within=20, what="all up"
            )
            found = await scrape(svc.url)
            assert up_by_image(found) == everything_up
            assert account_errors(found, "prod") == 0

            # Revoke between cycles (none in flight; the last token has expired by the next one).
            staging = [Scope("staging", HZ), Scope("staging", SH)]
            ends = {s: svc.snapshot.scopes[s].refreshed_at for s in staging}
            await wait_until_async(
                lambda: all(svc.snapshot.scopes[s].refreshed_at != ends[s] for s in staging), within=10
            )
            estate.set_trust(STAGING_ROLE, False)
            revoked_at = {s: status.refreshed_at for s, status in svc.snapshot.scopes.items()}

            def staging_down() -> bool:
                ups = up_by_image(samples(svc.rendered.text))
                return all(v == 0 for (a, _r, _i), v in ups.items() if a == "staging")

            await wait_until_async(staging_down, within=15, what="staging failing")
            # The others stay fresh: each of their scopes completes a cycle after the revocation (its loop
            # runs on its own clock, so it may end a moment after staging's).
            others = [s for s in svc.snapshot.scopes if s.account != "staging"]

            def others_refreshed() -> bool:
                scopes = svc.snapshot.scopes
                return all((scopes[s].refreshed_at or 0) > (revoked_at[s] or 0) for s in others)

            await wait_until_async(others_refreshed, within=10, what="every other account refreshed")
            found = await scrape(svc.url)
            ups = up_by_image(found)
            assert {k for k, v in ups.items() if v == 1} == {
                k for k in expected_images() if k[0] != "staging"
            }
            codes = {
                dict(labels)["code"]
                for (name, labels), v in found.items()
                if name == "ehpc_api_errors_total" and ("account", "staging") in labels and v > 0
            }
            # Refused at STS (CredentialError); or, when the exporter served its last token once more after
            # a failed refresh, refused at the gateway as expired. Nothing else.
            assert "CredentialError" in codes
            assert codes <= {"CredentialError", "InvalidSecurityToken.Expired"}

            # Restored: the same process heals.
            estate.set_trust(STAGING_ROLE, True)
            await wait_until_async(
                lambda: all(v == 1 for v in up_by_image(samples(svc.rendered.text)).values()),
                within=15,
                what="staging healed",
            )
        finally:
            await svc.stop()
        # Quiet now: the exporter's count of staging's errors is the simulator's own. One refused AssumeRole
        # answers every attempt that shared its fetch or came within the failure hold, so each STS refusal
        # is at least one CredentialError; every other error is exactly one refusal at a gateway.
        found = samples(svc.metrics.render(False))
        credential = sum(
            v
            for (name, labels), v in found.items()
            if name == "ehpc_api_errors_total"
            and {("account", "staging"), ("code", "CredentialError")} <= labels
        )
        sts_refusals = simulator_errors(estate, "staging") - simulator_errors(estate, "staging", sts=False)
        assert credential >= sts_refusals > 0
        assert account_errors(found, "staging") - credential == simulator_errors(estate, "staging", sts=False)
        assert account_errors(found, "prod") == simulator_errors(estate, "prod") == 0


async def test_rrsa_environment_rendered_by_the_chart_runs_the_exporter(
    server_ssl_context: ssl.SSLContext, ca_file: str, tmp_path: Path
) -> None:
    """The env the chart's rrsa.* values render (the ACK webhook's variables and token mount), given to
    a real exporter process with the chart's config, reaches our STS through the default chain and
    watches the role's account."""
    estate = Estate.from_dict(estate_data())
    async with estate.serve(sts_ssl_context=server_ssl_context) as ep:
        token_dir = tmp_path / "rrsa-tokens"
        token_dir.mkdir()
        (token_dir / "token").write_text(estate.issue_oidc_token("rrsa", ttl_seconds=3600))
        values = {
            "rrsa": {
                "enabled": True,
                "roleArn": RESEARCH_ROLE,
                "oidcProviderArn": PROVIDER_ARN,
                "stsEndpoint": ep.sts_host,
            },
            # The chart's state file lives on a pod volume this local run does not have.
            "state": {"enabled": False},
            "config": {
                "api": {"region_id": HZ, "endpoint": ep.region_urls[HZ], "retry": {"max_attempts": 1}},
                "discovery": {"enabled": True},
                "refresh": {"interval_seconds": 5},
            },
        }
        env = rendered_env(
            values, mounts={"/var/run/secrets/ack.alibabacloud.com/rrsa-tokens": str(token_dir)}
        )
        assert env["ALIBABA_CLOUD_ROLE_ARN"] == RESEARCH_ROLE
        assert env["ALIBABA_CLOUD_OIDC_PROVIDER_ARN"] == PROVIDER_ARN
        assert Path(env["ALIBABA_CLOUD_OIDC_TOKEN_FILE"]) == token_dir / "token"
        config = tmp_path / "config.yaml"
        config.write_text(rendered_config(values))
        # The process environment: the rendered env, no AccessKey, no CLI profile or IMDS to fall back on.
        keep = {k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_CLOUD_")}
        child_env = {
            **keep,
            **env,
            "HOME": str(tmp_path),
            "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
            "ALIBABA_CLOUD_CLI_PROFILE_DISABLED": "true",
            "SSL_CERT_FILE": ca_file,
        }
        port = free_port()
        log = (tmp_path / "exporter.log").open("wb")
        # The event loop serves the estate, so the process is awaited, never waited on synchronously.
        proc = await asyncio.create_subprocess_exec(
            exporter_command(),
            "run",
            "--config",
            str(config),
            "--web.listen-address",
            f"127.0.0.1:{port}",
            env=child_env,
            stdout=log,
            stderr=log,
        )
        expected = {(("default", HZ, i["image_id"])): 1.0 for i in _images("research", HZ)}
        try:

            async def watching() -> bool:
                try:
                    return up_by_image(await scrape(f"http://127.0.0.1:{port}")) == expected
                except aiohttp.ClientError:
                    return False

            deadline = asyncio.get_running_loop().time() + 120  # bounds a hang only
            while not await watching():
                if proc.returncode is not None:
                    raise AssertionError((tmp_path / "exporter.log").read_text()[-2000:])
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError("the research account's images were not up within 120 s")
                await asyncio.sleep(0.1)
            assert estate.sts_counters().get(("AssumeRoleWithOIDC", "Success"), 0) >= 1
        finally:
            proc.terminate()
            await proc.wait()
            log.close()
