"""The simulator's command line: flags parse into a Simulator, and run_simulate serves it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import re
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

import ehpc_simulator as simulator_pkg
from ehpc_simulator import DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET, Faults
from ehpc_simulator.admin import ENDPOINTS as ADMIN_ENDPOINTS
from ehpc_simulator.cli import add_simulate_arguments, build_simulator, parse_listen_address, run_simulate
from tests.fixtures.http import wait_until_async
from tests.fixtures.sim import RunningSimulator, signed_call

EXAMPLE_FLEET = str(Path(simulator_pkg.__file__).parent / "example-fleet.yaml")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_simulate_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults() -> None:
    args = parse()
    assert args.listen_address == ("127.0.0.1", 9766)
    sim = build_simulator(args)
    assert sim.access_keys == {DEMO_ACCESS_KEY_ID: DEMO_ACCESS_KEY_SECRET}
    assert len(sim.images) == 50
    assert sim.faults == Faults()
    assert sim.region_id == "cn-hangzhou"


def test_help_lists_the_admin_api() -> None:
    """--help names every admin endpoint (the same list GET /_sim/ answers), DELETE /_sim/faults included."""
    parser = argparse.ArgumentParser()
    add_simulate_arguments(parser)
    text = " ".join(parser.format_help().split())  # argparse wraps lines anywhere
    for endpoint in ADMIN_ENDPOINTS:
        assert endpoint in text
    assert "GET|PUT|PATCH|DELETE /_sim/faults" in text


def test_every_flag() -> None:
    args = parse(
        "--listen-address", "[::1]:0",
        "--access-key", "ak1:s1", "--access-key", "ak2:s:2",
        "--fleet", EXAMPLE_FLEET, "--images", "3", "--regions", "cn-beijing, ap-southeast-1", "--seed", "4",
        "--qps-limit", "50", "--latency-ms", "100", "--jitter-ms", "20",
        "--error-rate", "ServiceUnavailable=0.05", "--error-rate", "Throttling.User=0.1",
        "--timeout-rate", "0.01", "--timeout-seconds", "5",
        "--reset-rate", "0.02", "--malformed-rate", "0.03", "--retry-after-ms", "300",
        "--region-id", "cn-shanghai", "--global-error", "NotEnabled", "--fault-seed", "9",
    )  # fmt: skip
    assert args.listen_address == ("::1", 0)
    sim = build_simulator(args)
    assert sim.access_keys == {"ak1": "s1", "ak2": "s:2"}
    assert len(sim.images) == 8 + 3
    generated = list(sim.images.values())[-3:]
    assert all(set(i.regions) <= {"cn-beijing", "ap-southeast-1"} for i in generated)
    assert sim.faults == Faults(
        error_rates={"ServiceUnavailable": 0.05, "Throttling.User": 0.1},
        timeout_rate=0.01,
        timeout_seconds=5,
        reset_rate=0.02,
        malformed_rate=0.03,
        latency_ms=100,
        jitter_ms=20,
        qps_limit=50,
        retry_after_ms=300,
        global_error="NotEnabled",
        seed=9,
    )
    assert sim.host_id == "ehpcinstant.cn-shanghai.aliyuncs.com"


@pytest.mark.parametrize(
    "argv",
    [
        ["--access-key", "no-secret"],
        ["--error-rate", "NoSuchCode=0.1"],
        ["--error-rate", "DbError=1.5"],
        ["--timeout-rate", "-0.1"],
        ["--listen-address", "9766"],
        ["--qps-limit", "0"],
        ["--images", "-1"],
    ],
)
def test_bad_flags(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_listen_address_forms() -> None:
    assert parse_listen_address(":9766") == ("0.0.0.0", 9766)  # noqa: S104 - the value under test
    assert parse_listen_address("localhost:1") == ("localhost", 1)


async def test_bad_fleet_and_tls_files(tmp_path: Path, server_cert_files: tuple[str, str]) -> None:
    (tmp_path / "f.yaml").write_text("- image_id: m-1\n  colour: red\n")
    with pytest.raises(ValueError, match=r"simulate: .*colour"):
        await run_simulate(parse("--fleet", str(tmp_path / "f.yaml")))
    with pytest.raises(ValueError, match="--tls-cert and --tls-key go together"):
        await run_simulate(parse("--tls-cert", str(tmp_path / "f.yaml")))
    cert, key = server_cert_files
    with pytest.raises(ValueError, match="simulate: "):
        await run_simulate(parse("--tls-cert", key, "--tls-key", cert))  # swapped: not a certificate


@pytest.mark.process
def test_module_entry_point_reports_bad_files(tmp_path: Path) -> None:
    """``python -m ehpc_simulator`` with a missing fleet exits 1 with a one-line message."""
    proc = subprocess.run(
        [sys.executable, "-m", "ehpc_simulator", "--fleet", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("simulate: ")
    assert "missing.yaml" in proc.stderr


@contextlib.asynccontextmanager
async def running(*argv: str) -> AsyncIterator[str]:
    """run_simulate in a task; yields the URL it printed, cancels it afterwards."""
    out = io.StringIO()
    task = asyncio.create_task(run_simulate(parse("--listen-address", "127.0.0.1:0", *argv), out=out))
    try:
        # Bounds a hang only: starting takes as long as the machine lets it.
        await wait_until_async(lambda: "listening on" in out.getvalue() or task.done(), 60, "the URL line")
        m = re.search(r"listening on (\S+)", out.getvalue())
        assert m, out.getvalue()
        yield m.group(1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_run_simulate_serves_until_cancelled() -> None:
    async with running("--fleet", EXAMPLE_FLEET, "--access-key", "ak:sk", "--error-rate", "DbError=1") as url:
        assert url.startswith("http://127.0.0.1:")
        sim = RunningSimulator(sim=None, url=url, access_key_id="ak", access_key_secret="sk")  # type: ignore[arg-type]
        async with aiohttp.ClientSession() as s:
            status, _, body = await signed_call(s, sim, "GetImage", {"ImageId": "m-bp1exampleavail00001"})
            assert (status, body["Code"]) == (406, "DbError")
            async with s.get(f"{url}/_sim/counters") as resp:
                assert (await resp.json())["responses"][0]["code"] == "DbError"


async def test_run_simulate_https(server_cert_files: tuple[str, str], ca_file: str) -> None:
    cert, key = server_cert_files
    async with running("--tls-cert", cert, "--tls-key", key, "--images", "2") as url:
        assert url.startswith("https://")
        ctx = ssl.create_default_context(cafile=ca_file)
        async with aiohttp.ClientSession() as s, s.get(f"{url}/_sim/images", ssl=ctx) as resp:
            assert len((await resp.json())["images"]) == 2


async def test_startup_output_has_no_secret() -> None:
    out = io.StringIO()
    task = asyncio.create_task(
        run_simulate(parse("--listen-address", "127.0.0.1:0", "--images", "1"), out=out)
    )
    await wait_until_async(lambda: "admin API" in out.getvalue() or task.done(), 60, "the admin API line")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    text = out.getvalue()
    assert DEMO_ACCESS_KEY_ID in text
    assert DEMO_ACCESS_KEY_SECRET not in text
