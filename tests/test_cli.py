"""The installed console script, run for real as a subprocess: flags, exit codes, lifecycle (SIGTERM,
SIGHUP reload), ``check`` against the simulator, and the one-process ``demo`` scraped and linted by
promtool."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from unittest import mock

import aiohttp
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

import exporter.cli.run as cli_run
from ehpc_simulator.model import Faults
from exporter import __version__
from exporter.cli import EXIT_FAILURE, EXIT_OK, build_parser
from exporter.cli import main as cli_main
from exporter.cli.common import stop_within_deadline
from exporter.cli.parser import build_simulate_parser
from exporter.config import STOP_TIMEOUT_SECONDS, Config
from exporter.demo import add_simulate_arguments
from exporter.logging import reset_logging
from exporter.service import ExporterService
from tests.exporter_support import captured_events, samples, value
from tests.fixtures.sim import SIM_CONTAINER_ID, SIM_VM_FAILED_ID, SIM_VM_ID, RunningSimulator
from tests.fixtures.virtual_time import run_virtual

pytestmark = pytest.mark.process  # most tests here start real processes (make test-fast skips the file)

REPO = Path(__file__).resolve().parent.parent
EXE = str(REPO / ".venv" / "bin" / "ehpc-image-exporter")
SECRET = "CliTestSecretThatMustNeverBePrinted"

# Waits on a child's exit are bounded by this only to catch a hang: whether a stop kept to its deadline
# is the child's own verdict (exit 0 and a last "stopped" line, or "stop_timeout" and exit 1).
STOP_HANG_BOUND = 60.0

# The child must not pick up credentials or a terminal from whoever runs the tests.
CHILD_ENV = {k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_CLOUD_")} | {
    "PYTHONUNBUFFERED": "1"
}


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def sim_config(sim: RunningSimulator, images: list[str], *, interval: float = 60, extra: str = "") -> str:
    """A config for the simulator fixture (its AccessKey pair, HTTP, fast retries)."""
    kinds = {i: "Container" if i == SIM_CONTAINER_ID else "VM" for i in images}
    entries = "\n".join(
        f"  - {{id: {i}, type: {t}, additional_regions: [cn-beijing]}}" for i, t in kinds.items()
    )
    return (
        f"api: {{endpoint: '{sim.url}', protocol: http,"
        " retry: {max_attempts: 2, base_delay_seconds: 0.01}}\n"
        f"credentials: {{type: access_key, access_key_id: {sim.access_key_id},"
        f" access_key_secret: {sim.access_key_secret}}}\n"
        f"images:\n{entries}\n"
        f"refresh: {{interval_seconds: {interval}, jitter_ratio: 0}}\n{extra}"
    )


@contextlib.contextmanager
def listening_socket() -> Iterator[int]:
    """A port that is taken for as long as the block runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


class Proc:
    """A running CLI process whose stdout and stderr lines are collected in the background."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = asyncio.Condition()
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._pump(proc.stdout, self.out)),
            asyncio.create_task(self._pump(proc.stderr, self.err)),
        ]

    async def _pump(self, stream: asyncio.StreamReader, into: list[str]) -> None:
        async for raw in stream:
            into.append(raw.decode().rstrip("\n"))
            async with self._changed:
                self._changed.notify_all()

    async def wait_line(self, lines: list[str], pattern: str, within: float = 60) -> re.Match[str]:
        """The first line of ``lines`` (self.out or self.err) matching ``pattern``."""

        def find() -> re.Match[str] | None:
            for line in lines:
                if m := re.search(pattern, line):
                    return m
            return None

        async with asyncio.timeout(within), self._changed:
            while (found := find()) is None:
                if self.proc.returncode is not None:
                    raise AssertionError(f"exited {self.proc.returncode} first; stderr: {self.err[-5:]}")
                # Woken by a new line; the short timeout notices the process exiting without one.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.5)
            return found

    async def exit_code(self, within: float) -> int:
        """Wait for the exit (failing after ``within`` seconds) and for the output to be read."""
        rc = await asyncio.wait_for(self.proc.wait(), within)
        await asyncio.gather(*self._readers)
        return rc

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@contextlib.asynccontextmanager
async def cli(*args: str) -> AsyncIterator[Proc]:
    proc = await asyncio.create_subprocess_exec(
        EXE, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=CHILD_ENV
    )
    running = Proc(proc)
    try:
        yield running
    finally:
        running.kill()
        await proc.wait()


async def run_cli(*args: str) -> tuple[int, str, str]:
    """Run to completion (30 s at most): (exit code, stdout, stderr)."""
    async with cli(*args) as p:
        rc = await p.exit_code(within=30)
        return rc, "\n".join(p.out), "\n".join(p.err)


def log_events(lines: list[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in lines if line.startswith("{")]


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        return await resp.text()


async def wait_metric(url: str, pattern: str, within: float = 60) -> str:
    """Scrape until a line matches ``pattern``; returns that exposition."""
    deadline = time.monotonic() + within
    last = ""
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            last = await scrape(url)
            if re.search(pattern, last, re.MULTILINE):
                return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"no line matching {pattern!r} within {within}s; last scrape:\n{last[:2000]}")


# --------------------------------------------------------------------------------------------------------
# Flags and help


def _head() -> list[str]:
    """This checkout's HEAD: full hash and commit date."""
    return subprocess.run(
        ["git", "log", "-1", "--format=%H %cI"], capture_output=True, text=True, check=True
    ).stdout.split()


async def test_version() -> None:
    """Version, revision (this checkout's HEAD), build date and Python, as Prometheus tools print them."""
    head = _head()
    expected = (
        f"ehpc-image-exporter, version {__version__} (revision: {head[0]})\n"
        f"  build date:     {head[1]}\n"
        f"  python version: {platform.python_version()}"
    )
    for args in (["--version"], ["run", "--version"]):
        rc, out, err = await run_cli(*args)
        assert (rc, out, err) == (0, expected, "")


def _subcommands() -> dict[str, list[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    choices: dict[str, object] = getattr(sub, "choices", {})
    out = {"": [s for a in parser._actions for s in a.option_strings]}
    # simulate's flags are the simulator's, added when the command runs (its stub here has none).
    choices = {**choices, "simulate": build_simulate_parser(add_simulate_arguments)}
    for name, subparser in choices.items():
        assert hasattr(subparser, "_actions")
        actions = subparser._actions
        for action in actions:
            assert action.help, f"{name}: {action.option_strings} has no help text"
        out[name] = [s for a in actions for s in a.option_strings]
    return out


@pytest.mark.parametrize("command", ["", "run", "check", "demo", "simulate"])
async def test_help_documents_every_flag(command: str) -> None:
    """Every flag of every subcommand is in its --help, with a help text (checked on the parser)."""
    flags = _subcommands()[command]
    rc, out, err = await run_cli(*([command] if command else []), "--help")
    assert rc == 0
    assert err == ""
    for flag in flags:
        assert re.search(rf"(^|[\s\[,]){re.escape(flag)}\b", out), f"{flag} missing from {command} --help"
    if command == "run":
        for flag in ("--config", "--check-config", "--web.listen-address", "--web.telemetry-path",
                     "--web.config.file", "--log-format", "--log-level", "--version"):  # fmt: skip
            assert flag in flags
    if command == "demo":
        assert {"--web.listen-address", "--simulator.listen-address", "--images", "--interval"} <= set(flags)
    if command == "simulate":
        assert {"--listen-address", "--fleet", "--estate", "--error-rate", "--log.format"} <= set(flags)


# What a command that does no work must not load: each costs tens of milliseconds of CPU at every start
# (structlog, aiohttp, pydantic, the service and what it wires), which --version and --help used to pay.
HEAVY = ("aiohttp", "structlog", "pydantic", "prometheus_client", "yaml", "re2", "alibabacloud_credentials")
WIRED = ("exporter.service", "exporter.refresher", "exporter.openapi", "exporter.exposition", "exporter.http")
LIGHT_COMMANDS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "--version": (["--version"], HEAVY + WIRED),
    "run --version": (["run", "--version"], HEAVY + WIRED),
    "--help": (["--help"], HEAVY + WIRED),
    "check --help": (["check", "--help"], HEAVY + WIRED),
    "a usage error": (["--no-such-flag"], HEAVY + WIRED),
    # Reading a config needs pydantic, YAML and the logging setup, not the network or the renderer.
    "run --check-config": (
        ["run", "--check-config", "--config", "examples/simulator.yaml"],
        ("aiohttp", "prometheus_client", "alibabacloud_credentials", *WIRED),
    ),
}
_LOADED = """
import sys
from exporter.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("LOADED", *sorted(sys.modules))
"""


@pytest.mark.parametrize("name", sorted(LIGHT_COMMANDS))
def test_commands_that_do_no_work_load_nothing_heavy(name: str) -> None:
    """--version, --help, a usage error and --check-config import only what they use (the command line
    imports each command when it runs): none of the heavy libraries or the wiring it names is loaded."""
    argv, forbidden = LIGHT_COMMANDS[name]
    proc = subprocess.run(
        [sys.executable, "-c", _LOADED, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=CHILD_ENV,
        cwd=Path(__file__).resolve().parent.parent,
        check=False,
    )
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("LOADED ")]
    loaded = set(line.split()[1:])
    assert "exporter.cli.parser" in loaded
    found = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden))
    assert found == [], f"{name} loaded {found[:10]}"


async def test_python_dash_m_is_the_same_cli() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", "--version", stdout=asyncio.subprocess.PIPE, env=CHILD_ENV
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert out.decode().startswith(f"ehpc-image-exporter, version {__version__} (revision: ")


async def test_prometheus_flag_spellings_and_their_aliases(
    tmp_path: Path, simulator: RunningSimulator
) -> None:
    """--config.file, --log.level, --log.format (logfmt|json) as node_exporter users type them; the old
    spellings still work."""
    path = write(tmp_path, sim_config(simulator, [SIM_CONTAINER_ID]))
    rc, _out, err = await run_cli(
        "check", "--config.file", path, "--log.level", "info", "--log.format", "logfmt"
    )
    assert rc == 0, err
    lines = [line for line in err.splitlines() if line]
    assert any(" event=refresh_done " in line for line in lines), err
    assert all(line.startswith("timestamp=") and " level=" in line for line in lines), err  # logfmt
    rc, _out, err = await run_cli("check", "--config", path, "--log-level", "info", "--log-format", "json")
    assert rc == 0, err
    assert any(json.loads(line)["event"] == "refresh_done" for line in err.splitlines() if line)


async def test_unknown_flag_answers_with_its_subcommand_usage() -> None:
    """A flag the subcommand does not take is reported with that subcommand's usage, exit 2."""
    rc, _out, err = await run_cli("check", "--config.file", "x.yaml", "--web.listen-address", ":1")
    assert rc == 2
    assert err.startswith("usage: ehpc-image-exporter check ")
    assert "unrecognized arguments: --web.listen-address :1" in err


async def test_unknown_flag_is_a_usage_error() -> None:
    rc, _out, err = await run_cli("--no-such-flag")
    assert rc == 2
    assert "unrecognized arguments: --no-such-flag" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------------------
# --check-config and bad configs


async def test_check_config_ok(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        credentials: {{type: access_key, access_key_id: LTAI, access_key_secret: {SECRET}}}
        images: [{{id: m-2ze74g5mvy4pjg00001}}, {{id: m-2ze74g5mvy4pjg00002}}]
        refresh: {{interval_seconds: 30}}
        """,
    )
    rc, out, err = await run_cli("--check-config", "--config", path, "--web.listen-address", "127.0.0.1:9999")
    assert (rc, out, err) == (
        0,
        "config OK: 2 images, discovery off, refresh every 30s, listen 127.0.0.1:9999/metrics",
        "",
    )


async def test_check_config_prints_warnings_and_still_passes(tmp_path: Path) -> None:
    rc, out, err = await run_cli("--check-config", "--config", write(tmp_path, "web: {}\n"))
    assert rc == 0
    assert out.startswith("config OK: 0 images")
    assert err == (
        "warning: images: no images to watch and discovery is disabled; only the exporter's own metrics are"
        " served"
    )


async def test_check_config_bad_prints_one_line_per_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        credentials: {{type: sts, access_key_id: LTAI, access_key_secret: {SECRET}}}
        images: [{{id: m-1}}, {{id: m-1}}]
        refresh: {{interval_seconds: -1}}
        bogus: 1
        """,
    )
    rc, out, err = await run_cli("run", "--check-config", "--config", path)
    assert rc == 2
    assert out == ""
    assert err.splitlines() == [
        f"{path}: credentials.security_token: required for type 'sts'",
        f"{path}: images[1].id: duplicate image id 'm-1' (also images[0])",
        f"{path}: refresh.interval_seconds: must be at least 1",
        f"{path}: bogus: unknown key",
    ]
    assert SECRET not in err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "{p}: cannot read config file: No such file or directory"),
        ("api: [unclosed\n", "{p}:2:1: invalid YAML: did not find expected ',' or ']'"),
    ],
)
async def test_check_config_unreadable_or_malformed(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    path = str(tmp_path / "c.yaml") if content is None else write(tmp_path, content, "c.yaml")
    rc, _out, err = await run_cli("--check-config", "--config", path)
    assert rc == 2
    assert err.splitlines()[0].startswith(expected.format(p=path))
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err


async def test_check_config_bad_flag_value_and_bad_web_config(tmp_path: Path) -> None:
    rc, _out, err = await run_cli("--check-config", "--web.telemetry-path", "/healthz")
    assert rc == 2
    assert err == "command line: web.telemetry_path: must not be '/healthz', which the exporter serves itself"
    web = write(tmp_path, "basic_auth_users: {prometheus: not-a-bcrypt-hash}\nnope: 1\n", "web.yml")
    rc, _out, err = await run_cli("--check-config", "--web.config.file", web)
    assert rc == 2
    assert len(err.splitlines()) == 2  # every problem at once: the hash and the unknown key
    assert web in err
    assert "not-a-bcrypt-hash" not in err
    assert "Traceback" not in err


async def test_check_config_reports_the_config_and_the_web_config_at_once(tmp_path: Path) -> None:
    """Why: the web config file was read only once the config file was valid, so fixing one file showed
    the other's problems only on the next run. Now one run prints both, in the order of the file."""
    web = write(tmp_path, "basic_auth_users: {prometheus: not-a-bcrypt-hash}\n", "web.yml")
    rc, _out, alone = await run_cli("--check-config", "--web.config.file", web)
    assert rc == 2
    assert alone.splitlines()
    path = write(tmp_path, "refresh: {interval_seconds: -1}\nmetrics: {include: [ehpc_nope]}\n")
    rc, _out, err = await run_cli("--check-config", "--config", path, "--web.config.file", web)
    assert rc == 2
    assert err.splitlines() == [
        f"{path}: refresh.interval_seconds: must be at least 1",
        f"{path}: metrics.include[0]: entry 'ehpc_nope' matches no metric family",
        *alone.splitlines(),  # web.config_file comes from the flag: after the file's own keys
    ]


async def test_run_with_bad_config_exits_before_binding(tmp_path: Path) -> None:
    """The listen port is taken: had the exporter tried to serve, it would fail to bind instead."""
    path = write(
        tmp_path, f"credentials: {{type: access_key, access_key_secret: {SECRET}}}\nimages: [{{}}]\n"
    )
    with listening_socket() as port:
        rc, out, err = await run_cli("--config", path, "--web.listen-address", f"127.0.0.1:{port}")
    assert rc == 2
    assert out == ""
    events = log_events(err.splitlines())
    assert [e["event"] for e in events] == ["config_invalid", "config_invalid"]
    assert [e["error"] for e in events] == [
        f"{path}: credentials.access_key_id: required for type 'access_key'",
        f"{path}: images[0].id: required",
    ]
    assert SECRET not in err
    assert "Traceback" not in err


async def test_run_port_in_use_exits_1(tmp_path: Path) -> None:
    with listening_socket() as port:
        rc, _out, err = await run_cli("--web.listen-address", f"127.0.0.1:{port}", "--log-level", "warning")
    assert rc == 1
    events = log_events(err.splitlines())
    assert [e["event"] for e in events if e["level"] == "error"] == ["start_failed"]
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------------------
# --check-config: typos (warnings, exit code unchanged), the state directory, the targets summary. In
# process: the command line is what is under test, not the process boundary.

MULTI_ACCOUNT_ENV = {
    "MONITORING_ACCESS_KEY_ID": "LTAI5tExampleKeyId000000",
    "MONITORING_ACCESS_KEY_SECRET": "ExampleSecretOf30Characters000",
    "ALIBABA_CLOUD_ROLE_ARN": "acs:ram::111111111111:role/rrsa",
    "ALIBABA_CLOUD_OIDC_PROVIDER_ARN": "acs:ram::111111111111:oidc-provider/ack-rrsa",
    "ALIBABA_CLOUD_OIDC_TOKEN_FILE": "/var/run/secrets/tokens/oidc-token",
}


def main_in_process(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``ehpc-image-exporter ARGV`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = cli_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out.rstrip("\n"), err.rstrip("\n")


def test_check_config_prints_each_target(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why: examples/multi-account.yaml, three targets with discovery on, printed "config OK: 0 images,
    discovery off" (the top level's, which a file with targets does not use)."""
    for name, val in MULTI_ACCOUNT_ENV.items():
        monkeypatch.setenv(name, val)
    rc, out, err = main_in_process(
        capsys, "--check-config", "--config", str(REPO / "examples" / "multi-account.yaml")
    )
    assert (rc, err) == (0, "")
    assert out.splitlines() == [
        "config OK: 3 targets, 4 (account, region) pairs, refresh every 60s, listen :9765/metrics",
        "targets:",
        "  monitoring: 0 images, discovery on, region cn-hangzhou",
        "  prod: 1 image, discovery on, regions cn-hangzhou, cn-shanghai",
        "  research: 0 images, discovery on, region cn-beijing, refresh every 120s",
    ]


def test_check_config_warns_about_typos_and_still_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Why: ``region_id: cn-hangzou`` and ``id: not-an-image`` passed and then failed at run time. Now each
    is a warning on stderr naming the place; regions get added, so the exit code stays 0."""
    path = write(tmp_path, "api: {region_id: cn-hangzou}\nimages: [{id: not-an-image}]\n")
    rc, out, err = main_in_process(capsys, "--check-config", "--config", path)
    assert rc == 0
    assert err.splitlines() == [
        "warning: api.region_id: region 'cn-hangzou' is not a documented E-HPC Instant region (did you mean"
        " 'cn-hangzhou'?)",
        "warning: images[0].id: image id 'not-an-image' does not look like an E-HPC Instant image id ('m-'"
        " and 8 to 32 lower-case letters and digits, like m-2ze74g5mvy4pjg12345)",
    ]
    assert out == "config OK: 1 image, discovery off, refresh every 60s, listen :9765/metrics"


def test_check_config_refuses_a_state_directory_it_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Why: a state.path in a missing directory passed, and the exporter then started cold. The file is
    valid, but this machine cannot keep its state: exit 2, one line naming the file, the key and why."""
    missing = tmp_path / "no-such-dir"
    path = write(tmp_path, f"images: [{{id: m-2ze74g5mvy4pjg12345}}]\nstate: {{path: {missing}/state.db}}\n")
    rc, out, err = main_in_process(capsys, "--check-config", "--config", path)
    assert (rc, out) == (2, "")
    assert err == (
        f"{path}: state.path: directory '{missing}' does not exist; the exporter would start cold and keep no"
        " state across restarts"
    )
    missing.mkdir()
    rc, out, err = main_in_process(capsys, "--check-config", "--config", path)
    assert (rc, err) == (0, "")


def test_run_logs_each_warning_once_and_the_state_directory_as_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Why: a warning about a top-level setting was logged once per (account, region), four times for
    four, and a missing state directory only as the store's own "unusable" line. At the start of ``run``
    (here one whose port is taken, so it ends there) each warning is one line, and the state directory
    one error saying what is wrong."""
    regions = (
        "[{region_id: cn-hangzhou, endpoint: 'ehpc.example.com:80'},"
        " {region_id: cn-shanghai, endpoint: 'ehpc.example.com:81'}]"
    )
    path = write(
        tmp_path,
        f"""
        api: {{protocol: http}}
        refresh: {{interval_seconds: 5, image_timeout_seconds: 6}}
        state: {{path: {tmp_path}/gone/state.db}}
        targets:
          - {{account: a, regions: {regions}, images: [{{id: m-2ze74g5mvy4pjg12345}}]}}
          - {{account: b, regions: {regions}, images: [{{id: m-2ze74g5mvy4pjg12345}}]}}
        """,
    )
    try:
        with listening_socket() as port:
            rc, _out, err = main_in_process(
                capsys,
                "run",
                "--config",
                path,
                "--web.listen-address",
                f"127.0.0.1:{port}",
                "--log.format",
                "json",
            )
    finally:
        reset_logging()
    assert rc == EXIT_FAILURE
    events = log_events(err.splitlines())
    assert [e["warning"] for e in events if e["event"] == "config_warning"] == [
        "api.protocol: 'http' sends requests (and any STS token) unencrypted; use it only for testing",
        "refresh.image_timeout_seconds: longer than refresh.interval_seconds, so a slow image can make a"
        " cycle overrun the next one",
    ]
    assert [e["error"] for e in events if e["event"] == "state_path_unusable"] == [
        f"state.path: directory '{tmp_path}/gone' does not exist; the exporter would start cold and keep no"
        " state across restarts"
    ]


def test_check_help_says_a_failed_discovery_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """Why: ``check`` exits 1 when a discovery fails (its images may be unwatched); the help did not say."""
    texts = {}
    for argv in (("check", "--help"), ("--help",)):
        with pytest.raises(SystemExit):
            cli_main(list(argv))
        texts[argv] = " ".join(capsys.readouterr().out.split())
    assert (
        "1 if any image is unhealthy, incompletely replicated or failing, or a discovery failed"
        in texts["check", "--help"]
    )
    assert "exit 1 if any image is unhealthy or failing, or a discovery failed" in texts["--help",]


async def test_check_counts_one_image_as_one_image(
    tmp_path: Path, simulator: RunningSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """Why: the table ended with "1 images". The real verdicts of one image, printed as ``check`` does."""
    from exporter.cli.check import _print_table, check_row
    from exporter.config.load import load_config

    path = write(
        tmp_path,
        sim_config(
            simulator, [SIM_CONTAINER_ID], extra=f"discovery: {{enabled: true, ids: [{SIM_CONTAINER_ID}]}}\n"
        ),
    )
    snapshot = await ExporterService(load_config(path), process_metrics=False).refresh_once()
    capsys.readouterr()
    _print_table([check_row(view) for view in snapshot.views.values()], snapshot)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [
        "1 image: 0 missing, 0 failing, 0 unhealthy, 0 replication incomplete, 1 healthy",
        "discovery ok: 1 image",
    ]


# --------------------------------------------------------------------------------------------------------
# run: serving, SIGHUP reload, SIGTERM


async def test_run_reload_on_sighup_and_stop_on_sigterm(tmp_path: Path, simulator: RunningSimulator) -> None:
    """A bad reload keeps serving the old config and shows 0; a good one applies and shows 1."""
    path = write(tmp_path, sim_config(simulator, [SIM_VM_ID], interval=1))
    async with cli("--config", path, "--web.listen-address", "127.0.0.1:0") as p:
        started = await p.wait_line(p.err, r'"event": "started"')
        url = json.loads(started.string)["url"] + "/metrics"
        await wait_metric(
            url, rf'^ehpc_image_up{{account="default",image_id="{SIM_VM_ID}",region_id="cn-hangzhou"}} 1'
        )
        await wait_metric(url, r"^ehpc_config_last_reload_successful 1")

        write(tmp_path, "images: [{id: m-1}, {id: m-1}]\n")
        p.proc.send_signal(signal.SIGHUP)
        await p.wait_line(p.err, r'"event": "config_reload_failed"')
        text = await wait_metric(url, r"^ehpc_config_last_reload_successful 0")
        assert (
            f'ehpc_image_up{{account="default",image_id="{SIM_VM_ID}",region_id="cn-hangzhou"}} 1' in text
        )  # still the old config, still serving
        failures = [e for e in log_events(p.err) if e["event"] == "config_reload_failed"]
        assert [e["error"] for e in failures] == [
            f"{path}: images[1].id: duplicate image id 'm-1' (also images[0])"
        ]

        write(tmp_path, sim_config(simulator, [SIM_VM_ID, SIM_CONTAINER_ID], interval=1))
        p.proc.send_signal(signal.SIGHUP)
        text = await wait_metric(url, r"^ehpc_config_last_reload_successful 1")
        await wait_metric(
            url,
            rf'^ehpc_image_up{{account="default",image_id="{SIM_CONTAINER_ID}",region_id="cn-hangzhou"}} 1',
        )

        p.proc.send_signal(signal.SIGTERM)
        # Within its stop deadline: a process that misses it logs stop_timeout and exits 1 by itself
        # (that rule: test_a_stop_past_the_deadline_exits_1_at_the_deadline, on virtual time).
        assert await p.exit_code(within=STOP_HANG_BOUND) == 0
        assert simulator.access_key_secret not in "\n".join(p.err)
        assert "Traceback" not in "\n".join(p.err)
        assert [e["event"] for e in log_events(p.err)][-1] == "stopped"


@settings(max_examples=100, deadline=None)
@given(takes=st.floats(0, 100_000, allow_nan=False))
def test_a_stop_past_the_deadline_exits_1_at_the_deadline(takes: float) -> None:
    """Why: "stops within 5 s" is the process's own promise, kept by stop_within_deadline: a stop that
    finishes in time exits 0 with "stopped" when it finishes; one that would take longer (a request
    stuck, a disk full) is given up at STOP_TIMEOUT_SECONDS with "stop_timeout" and exit 1. On virtual
    time, so the deadline is checked exactly, however busy the machine is."""
    assume(abs(takes - STOP_TIMEOUT_SECONDS) > 1e-6)  # the boundary itself is a tie

    async def stop() -> tuple[int, float, list[str]]:
        loop = asyncio.get_running_loop()
        with captured_events("stopped", "stop_timeout") as events:
            start = loop.time()
            rc = await stop_within_deadline(lambda: asyncio.sleep(takes))
            took = loop.time() - start
        return rc, took, [e["event"] for e in events]

    rc, took, events = run_virtual(stop())
    assert STOP_TIMEOUT_SECONDS < 5  # the documented promise, with room for the interpreter's exit
    if takes < STOP_TIMEOUT_SECONDS:
        assert (rc, events) == (EXIT_OK, ["stopped"])
        assert took == pytest.approx(takes, abs=1e-9)
    else:
        assert (rc, events) == (EXIT_FAILURE, ["stop_timeout"])
        assert took == pytest.approx(STOP_TIMEOUT_SECONDS, abs=1e-9)


async def post(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.post(url, headers=headers) as resp:
        return resp.status, await resp.text()


async def test_lifecycle_reload_is_off_by_default(tmp_path: Path, simulator: RunningSimulator) -> None:
    """Without --web.enable-lifecycle: 403 with Prometheus' line, and the config is not re-read."""
    path = write(tmp_path, sim_config(simulator, [SIM_VM_ID], interval=1))
    async with cli("--config", path, "--web.listen-address", "127.0.0.1:0", "--log.format", "json") as p:
        started = await p.wait_line(p.err, r'"event": "started"')
        base = json.loads(started.string)["url"]
        assert await post(f"{base}/-/reload") == (403, "Lifecycle API is not enabled.\n")
        async with aiohttp.ClientSession() as session, session.get(f"{base}/-/reload") as resp:
            assert resp.status == 405
        assert not [e for e in log_events(p.err) if e["event"] == "config_reloading"]


async def test_lifecycle_reload_applies_or_answers_500(tmp_path: Path, simulator: RunningSimulator) -> None:
    """POST /-/reload: 200 and the new image list in /metrics; a broken file 500 with the one-line
    reason, the running config kept and ehpc_config_last_reload_successful 0; GET is 405."""
    path = write(tmp_path, sim_config(simulator, [SIM_VM_ID], interval=60))
    args = ("--config", path, "--web.listen-address", "127.0.0.1:0", "--log.format", "json")
    async with cli(*args, "--web.enable-lifecycle") as p:
        started = await p.wait_line(p.err, r'"event": "started"')
        base = json.loads(started.string)["url"]
        url = f"{base}/metrics"
        vm = rf'^ehpc_image_up{{account="default",image_id="{SIM_VM_ID}",region_id="cn-hangzhou"}} 1'
        ct = rf'^ehpc_image_up{{account="default",image_id="{SIM_CONTAINER_ID}",region_id="cn-hangzhou"}} 1'
        await wait_metric(url, vm)
        async with aiohttp.ClientSession() as session, session.get(f"{base}/-/reload") as resp:
            assert resp.status == 405

        write(tmp_path, sim_config(simulator, [SIM_CONTAINER_ID], interval=60))
        assert await post(f"{base}/-/reload") == (200, "config reloaded\n")
        # The interval is a minute: only the reload's own cycle can show the new list this soon.
        text = await wait_metric(url, ct)
        assert SIM_VM_ID not in text

        write(tmp_path, "images: [{id: m-1}, {id: m-1}]\n")
        status, body = await post(f"{base}/-/reload")
        assert (status, body) == (
            500,
            f"failed to reload config: {path}: images[1].id: duplicate image id 'm-1' (also images[0])\n",
        )
        text = await scrape(url)
        assert re.search(r"^ehpc_config_last_reload_successful 0", text, re.MULTILINE)
        assert re.search(ct, text, re.MULTILINE)  # still the running config

        creds = f"credentials: {{type: access_key, access_key_id: A, access_key_secret: {SECRET}}}\n"
        write(tmp_path, creds + "images: [{id: m-1}]\nrefresh: {interval_seconds: 0}\napi: {qps: -1}\n")
        status, body = await post(f"{base}/-/reload")
        assert status == 500
        assert body.count("\n") == 1
        assert "more problems)" in body
        assert SECRET not in body
        assert SECRET not in "\n".join(p.err)


async def test_lifecycle_reloads_serialize_with_sighup(tmp_path: Path, simulator: RunningSimulator) -> None:
    """A burst of POSTs and SIGHUPs: every one answered, one reload at a time (each logged whole)."""
    path = write(tmp_path, sim_config(simulator, [SIM_VM_ID], interval=60))
    args = ("--config", path, "--web.listen-address", "127.0.0.1:0", "--log.format", "json")
    async with cli(*args, "--web.enable-lifecycle") as p:
        started = await p.wait_line(p.err, r'"event": "started"')
        base = json.loads(started.string)["url"]
        p.proc.send_signal(signal.SIGHUP)
        answers = await asyncio.gather(*(post(f"{base}/-/reload") for _ in range(5)))
        p.proc.send_signal(signal.SIGHUP)
        assert answers == [(200, "config reloaded\n")] * 5
        await events_named(p, "config_reloaded", 7)
        events = [e["event"] for e in log_events(p.err) if str(e["event"]).startswith("config_reload")]
        # Serialized: each reloading is followed by its reloaded before the next one starts.
        assert events == ["config_reloading", "config_reloaded"] * 7


async def test_lifecycle_reload_is_behind_basic_auth(tmp_path: Path, simulator: RunningSimulator) -> None:
    """With a web config's basic auth, POST /-/reload without credentials is 401 and reloads nothing."""
    import bcrypt

    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    web = write(tmp_path, f"basic_auth_users: {{prom: '{hashed}'}}\n", "web.yaml")
    path = write(tmp_path, sim_config(simulator, [SIM_VM_ID], interval=60))
    args = ("--config", path, "--web.listen-address", "127.0.0.1:0", "--log.format", "json")
    async with cli(*args, "--web.enable-lifecycle", "--web.config.file", web) as p:
        started = await p.wait_line(p.err, r'"event": "started"')
        base = json.loads(started.string)["url"]
        status, _ = await post(f"{base}/-/reload")
        assert status == 401
        assert not [e for e in log_events(p.err) if e["event"] == "config_reloading"]
        assert await post(f"{base}/-/reload", {"Authorization": aiohttp.encode_basic_auth("prom", "pw")}) == (
            200,
            "config reloaded\n",
        )


BOMB = "bomb:\n" + "".join(  # about 350 bytes expanding to 9**9 strings (a 535-byte one took 28 s, 1.1 GB)
    f"  {name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
)


async def events_named(p: Proc, event: str, count: int, within: float = 60) -> list[dict[str, object]]:
    """Wait until at least ``count`` log events named ``event`` were written (``within`` bounds a hang);
    exact counts are checked once the process has exited and all its output is read."""
    deadline = time.monotonic() + within
    while len(found := [e for e in log_events(p.err) if e["event"] == event]) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(found)} {event} events, not {count}; stderr: {p.err[-5:]}")
        await asyncio.sleep(0.05)
    return found


async def test_reload_of_a_hostile_file_shows_0_fast_and_success_once(
    tmp_path: Path, simulator: RunningSimulator
) -> None:
    """Why: a 4,301-digit integer escaped the reload as a ValueError (the metric stayed 1) and an alias
    bomb froze it; a good reload was recorded and logged twice. Now: 0 at once, one line, and 1 once."""
    good = sim_config(simulator, [SIM_VM_ID], interval=1)
    path = write(tmp_path, good)
    async with cli("--config", path, "--web.listen-address", "127.0.0.1:0") as p:
        started = await p.wait_line(p.err, r'"event": "started"')
        url = json.loads(started.string)["url"] + "/metrics"
        await wait_metric(url, r"^ehpc_config_last_reload_successful 1")
        hostile = {
            "huge integer": (
                f"limits: {{max_error_codes: {'9' * 4301}}}\n",
                re.escape(f"{path}: limits.max_error_codes: number too large (4301 characters)"),
            ),
            "alias bomb": (BOMB, re.escape(path) + r":\d+:\d+: bomb\.g: expands to more than 2000000 nodes"),
        }
        for reloads, (addition, expected) in enumerate(hostile.values(), start=1):
            write(tmp_path, good + addition)
            p.proc.send_signal(signal.SIGHUP)
            # Refused by its bound (the line names it), not after expanding it: that is what keeps the
            # reload quick, whatever the machine's speed.
            failures = await events_named(p, "config_reload_failed", reloads)
            assert re.match(expected, str(failures[-1]["error"])), failures[-1]
            text = await wait_metric(url, r"^ehpc_config_last_reload_successful 0")
            assert (
                f'ehpc_image_up{{account="default",image_id="{SIM_VM_ID}",region_id="cn-hangzhou"}} 1' in text
            )  # the old config still serves

            write(tmp_path, good)
            p.proc.send_signal(signal.SIGHUP)
            await wait_metric(url, r"^ehpc_config_last_reload_successful 1")
            await events_named(p, "config_reloaded", reloads)
        p.proc.send_signal(signal.SIGTERM)
        assert await p.exit_code(within=STOP_HANG_BOUND) == 0
        # All its output is read now: one line per reload, none twice.
        events = [e["event"] for e in log_events(p.err)]
        assert (events.count("config_reload_failed"), events.count("config_reloaded")) == (2, 2)
        assert "Traceback" not in "\n".join(p.err)
        assert simulator.access_key_secret not in "\n".join(p.err)


async def test_reload_records_a_failure_whatever_the_loader_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why: only ConfigError was caught, so any other exception left the metric at 1 (and a traceback).

    The line names the file and the exception's type, never its text (which may quote a secret).
    """
    svc = ExporterService(Config(), process_metrics=False)  # not started: a reload only swaps the config

    def explode(path: str | None, overrides: object) -> Config:
        raise ValueError("invalid literal for int(): 'NotToBeEchoed'")

    monkeypatch.setattr(cli_run, "load_config_files", explode)
    with capture_logs() as logs:
        await cli_run.reload_config(svc, str(tmp_path / "c.yaml"), {})
    assert value(samples(svc.render_self(False)), "ehpc_config_last_reload_successful") == 0
    errors = [e["error"] for e in logs if e["event"] == "config_reload_failed"]
    assert errors == [f"{tmp_path / 'c.yaml'}: cannot load the config (ValueError)"]
    assert "NotToBeEchoed" not in str(logs)


async def test_a_good_reload_is_recorded_and_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One reload, one ``record_reload(True)`` and one ``config_reloaded`` line (there were two of each)."""
    svc = ExporterService(Config(), process_metrics=False)
    outcomes: list[bool] = []
    real = svc.metrics.record_reload

    def spy(ok: bool, at: float) -> None:
        outcomes.append(ok)
        real(ok, at)

    monkeypatch.setattr(svc.metrics, "record_reload", spy)  # a spy around the real method
    path = write(tmp_path, "images: [{id: m-1}]\n")
    with capture_logs() as logs:
        await cli_run.reload_config(svc, path, {})
    assert outcomes == [True]
    assert [e["event"] for e in logs].count("config_reloaded") == 1
    assert svc.config.images[0].image_id == "m-1"


async def test_run_stops_on_sigint(simulator: RunningSimulator, tmp_path: Path) -> None:
    path = write(tmp_path, sim_config(simulator, [SIM_VM_ID]))
    async with cli("--config", path, "--web.listen-address", "127.0.0.1:0", "--log-format", "console") as p:
        await p.wait_line(p.err, r"started")
        p.proc.send_signal(signal.SIGINT)
        assert await p.exit_code(within=STOP_HANG_BOUND) == 0  # made its stop deadline (else exit 1)
        assert not any(line.startswith("{") for line in p.err)  # --log-format console honoured


# --------------------------------------------------------------------------------------------------------
# check


HOME = ["default", "cn-hangzhou"]  # the account and region of a config without targets
ECS_ERROR = "An error occurred while calling the ECS API operation."  # the simulator's message: the reason


async def test_check_exits_1_on_failing_or_unhealthy_images(
    tmp_path: Path, simulator: RunningSimulator
) -> None:
    simulator.sim.images[SIM_VM_ID].error = "EcsError"
    path = write(tmp_path, sim_config(simulator, [SIM_VM_ID, SIM_VM_FAILED_ID, SIM_CONTAINER_ID]))
    rc, out, err = await run_cli("check", "--config", path)
    assert rc == 1
    lines = [re.split(r"\s{2,}", line) for line in out.splitlines()]
    assert lines == [  # worst first
        ["ACCOUNT", "REGION", "IMAGE", "HEALTH", "STATUS", "REGIONS", "LAST ERROR", "REASON"],
        [*HOME, SIM_VM_ID, "failing", "-", "cn-beijing:unknown", "EcsError", ECS_ERROR],
        [*HOME, SIM_VM_FAILED_ID, "unhealthy", "CreateFailed", "cn-beijing:CreateFailed", "-", "-"],
        [*HOME, SIM_CONTAINER_ID, "healthy", "Available", "cn-beijing:Available", "-", "-"],
        ["3 images: 0 missing, 1 failing, 1 unhealthy, 0 replication incomplete, 1 healthy"],
    ]
    assert simulator.access_key_secret not in out + err


async def test_check_exits_0_when_all_healthy(tmp_path: Path, simulator: RunningSimulator) -> None:
    path = write(tmp_path, sim_config(simulator, [SIM_CONTAINER_ID]))
    rc, out, _err = await run_cli("check", "--config", path, "--output", "json")
    assert rc == 0
    assert json.loads(out) == {
        "images": [
            {
                "account": "default",
                "region_id": "cn-hangzhou",
                "image_id": SIM_CONTAINER_ID,
                "health": "healthy",
                "status": "Available",
                "regions": {"cn-beijing": "Available"},
                "last_error": None,
                "last_error_reason": None,
                "ok": True,
                "problems": [],
            }
        ]
    }


async def test_check_incomplete_replication_is_unhealthy(tmp_path: Path, simulator: RunningSimulator) -> None:
    """Asking for a region the image was never copied to fails the check."""
    path = write(
        tmp_path,
        sim_config(simulator, []).replace("images:\n", f"images: [{{id: {SIM_CONTAINER_ID}, type: Container,"
                                          " additional_regions: [cn-beijing, cn-shanghai]}]\n"),
    )  # fmt: skip
    rc, out, _err = await run_cli("check", "--config", path, "--output", "json")
    assert rc == 1
    row = json.loads(out)["images"][0]
    assert row["regions"] == {"cn-beijing": "Available", "cn-shanghai": "not replicated"}
    assert row["health"] == "replication incomplete"
    assert row["problems"] == ["cn-shanghai not replicated"]


async def test_check_fails_when_discovery_fails(tmp_path: Path, simulator: RunningSimulator) -> None:
    """A failed discovery is never "0 images: all ok": check says so and exits 1, in both outputs."""
    path = write(tmp_path, sim_config(simulator, [SIM_CONTAINER_ID], extra="discovery: {enabled: true}\n"))
    simulator.sim.faults = Faults(action_errors={"ListImages": "NoPermission"})  # GetImage still works
    rc, out, _err = await run_cli("check", "--config", path)
    assert rc == 1
    denied = "You are not authorized to do this operation. Action: ehpc:"  # the simulator leaves it empty
    assert f"discovery FAILED (NoPermission: {denied}): kept 0 images" in out
    rc, out, _err = await run_cli("check", "--config", path, "--output", "json")
    assert rc == 1
    assert json.loads(out)["discovery"] == {
        "up": False,
        "discovered": 0,
        "error": "NoPermission",
        "reason": denied,
    }
    simulator.sim.faults = Faults()  # the same config with discovery working passes
    rc, out, _err = await run_cli("check", "--config", path)
    assert "discovery ok" in out


async def test_check_bad_config_exits_2(tmp_path: Path) -> None:
    rc, out, err = await run_cli("check", "--config", write(tmp_path, "images: 3\n"))
    assert (rc, out) == (2, "")
    assert err.endswith("config.yaml: images: must be a list")


# --------------------------------------------------------------------------------------------------------
# without the simulator (a separate distribution): demo and simulate say in one line how to get it


@contextlib.contextmanager
def _simulator_not_installed() -> Iterator[None]:
    """As if ehpc-image-exporter-simulator were not installed: every import of ehpc_simulator fails."""
    loaded = [name for name in sys.modules if name.partition(".")[0] == "ehpc_simulator"]
    with mock.patch.dict(sys.modules, dict.fromkeys([*loaded, "ehpc_simulator"])):
        sys.modules.pop("exporter.demo", None)  # so the seam is imported afresh, and fails
        yield


def _main_without_simulator(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with _simulator_not_installed(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(argv)
    return rc, out.getvalue(), err.getvalue()


def _assert_says_how_to_get_it(command: str, rc: int, out: str, err: str) -> None:
    assert (rc, out) == (1, "")
    assert err.splitlines() == [f"ehpc-image-exporter {command}: {cli_run.SIMULATOR_MISSING}"]
    assert "pip install ./simulator" in err


_SIMULATE_TOKENS = ["--help", "-h", "--fleet", "x.yaml", "--estate", "--listen-address", "127.0.0.1:0",
                    "--error-rate", "Nope=2", "--log.format", "json", "--bogus", "--", "-"]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(argv=st.lists(st.one_of(st.sampled_from(_SIMULATE_TOKENS), st.text(max_size=12)), max_size=6))
def test_simulate_without_the_simulator_says_how_to_get_it(argv: list[str]) -> None:
    """Whatever follows `simulate` (help, valid or invalid flags): exit 1, one line on stderr, nothing
    else; the flags are the simulator's, so nothing is parsed without it."""
    _assert_says_how_to_get_it("simulate", *_main_without_simulator(["simulate", *argv]))


_DEMO_FLAGS = st.sampled_from(
    [
        ("--images", st.integers(1, 500).map(str)),
        ("--interval", st.floats(0.1, 60).map(str)),
        ("--seed", st.integers(-5, 5).map(str)),
        ("--web.listen-address", st.just("127.0.0.1:0")),
        ("--simulator.listen-address", st.sampled_from(["127.0.0.1:0", ":0", "[::1]:0"])),
        ("--log.level", st.sampled_from(["debug", "info", "error"])),
    ]
).flatmap(lambda flag: flag[1].map(lambda value: [flag[0], value]))


@settings(max_examples=40, deadline=None)
@given(flags=st.lists(_DEMO_FLAGS, max_size=4))
def test_demo_without_the_simulator_says_how_to_get_it(flags: list[list[str]]) -> None:
    """Any valid demo command line: exit 1 with one line, before logging is set up or a port is bound."""
    argv = ["demo", *(part for flag in flags for part in flag)]
    _assert_says_how_to_get_it("demo", *_main_without_simulator(argv))


def test_a_broken_install_is_not_reported_as_the_missing_simulator() -> None:
    """Only the simulator's absence gets the one line; any other missing module is an error."""
    with mock.patch.dict(sys.modules, {"exporter.demo": None}), pytest.raises(ModuleNotFoundError):
        cli_main(["simulate"])


@pytest.mark.parametrize("argv", [["simulate", "--fleet", "x.yaml"], ["demo", "--images", "3"]])
def test_the_process_without_the_simulator_exits_1_with_one_line(argv: list[str]) -> None:
    """The console entry point in a fresh interpreter whose imports of ehpc_simulator fail."""
    blocked = (
        "import sys; sys.modules['ehpc_simulator'] = None; from exporter.cli import main; "
        "raise SystemExit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", blocked, *argv], capture_output=True, text=True, env=CHILD_ENV, timeout=60
    )
    _assert_says_how_to_get_it(argv[0], proc.returncode, proc.stdout, proc.stderr)


# --------------------------------------------------------------------------------------------------------
# demo


async def test_demo_serves_metrics_promtool_clean_and_stops_on_sigterm(tmp_path: Path) -> None:
    """The one-process demo: both URLs printed, ehpc_image_up soon, promtool has no complaint."""
    async with cli(
        "demo", "--web.listen-address", "127.0.0.1:0", "--simulator.listen-address", "127.0.0.1:0",
        "--images", "12", "--interval", "2",
    ) as p:  # fmt: skip
        sim = await p.wait_line(p.out, r"^simulator: (http://127\.0\.0\.1:\d+)")
        exp = await p.wait_line(p.out, r"^exporter:  (http://127\.0\.0\.1:\d+/metrics)$")
        up = r'^ehpc_image_up\{account="%s",image_id="m-[a-z0-9]+",region_id="cn-(hangzhou|shanghai)"\} 1'
        # Every account of the small estate, each reached its own way (key, assumed role, OIDC).
        for account in ("prod", "staging", "research"):
            text = await wait_metric(exp.group(1), up % account, within=30)
        # The demo fleet always shows a failing image and the watched-but-deleted one.
        missing = (
            r'^ehpc_image_last_error_info\{account="prod",code="ImageNotFound",image_id="m-0000deleted0000demo",'
            r'region_id="cn-hangzhou"\} 1'
        )
        text = await wait_metric(exp.group(1), missing, within=30)
        assert re.search(
            r'^ehpc_image_up\{account="prod",image_id="m-[a-z0-9]+",region_id="[a-z-]+"\} 0',
            text,
            re.MULTILINE,
        )
        images = json.loads(await scrape(sim.group(1) + "/_sim/images?account=prod"))
        assert images  # the simulator's admin API answers on the printed URL

        metrics_file = tmp_path / "metrics.prom"
        metrics_file.write_text(text)
        promtool = await asyncio.create_subprocess_exec(
            "promtool", "check", "metrics", stdin=open(metrics_file, "rb"),  # noqa: ASYNC230, SIM115
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        pout, perr = await promtool.communicate()
        assert (promtool.returncode, pout, perr) == (0, b"", b"")

        p.proc.send_signal(signal.SIGTERM)
        assert await p.exit_code(within=STOP_HANG_BOUND) == 0  # made its stop deadline (else exit 1)
        assert [e["event"] for e in log_events(p.err)][-1] == "stopped"
        assert "Traceback" not in "\n".join(p.err)


async def test_demo_port_taken_exits_1() -> None:
    with listening_socket() as port:
        rc, out, err = await run_cli(
            "demo", "--simulator.listen-address", f"127.0.0.1:{port}", "--web.listen-address", "127.0.0.1:0"
        )
    assert rc == 1
    assert out == ""
    assert [e["event"] for e in log_events(err.splitlines()) if e["level"] == "error"] == ["start_failed"]


@pytest.mark.parametrize("images", [3, 12])
async def test_demo_logs_as_many_images_as_it_watches(images: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why: the demo logged 55 images while 56 were watched: the deleted image is watched in both of
    prod's regions, and was counted once. The count logged is the one a refresh watches."""
    from exporter.demo import run_demo

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)  # the demo points it at its STS's CA; put it back
    with capture_logs() as logs:
        async with run_demo(
            listen_address="127.0.0.1:0", simulator_listen_address="127.0.0.1:0", images=images
        ) as demo:
            snapshot = await demo.service.refresh_once()
    (started,) = [e for e in logs if e["event"] == "demo_started"]
    assert started["images"] == len(snapshot.views)


def test_demo_fleet_always_has_something_to_show() -> None:
    """Even a tiny demo fleet has a failing image and incomplete replication."""
    from ehpc_simulator.demo import DEMO_REGIONS, demo_fleet

    for n in (3, 5, 24):
        fleet = demo_fleet(n, seed=1)
        assert len(fleet) == n
        assert any(image.error for image in fleet)
        assert any(
            set(image.regions.values()) != {"Available"} or len(image.regions) < len(DEMO_REGIONS)
            for image in fleet
        )


def test_demo_evolve_finishes_copies_then_starts_new_ones() -> None:
    import random

    from ehpc_simulator import SimImage
    from ehpc_simulator.demo import evolve

    fleet = [
        SimImage("m-a", regions={"cn-beijing": "Creating"}),
        SimImage("m-b", regions={"cn-beijing": "Available"}),
    ]
    rng = random.Random(0)
    assert evolve(fleet, rng) == "m-a cn-beijing Available"
    change = evolve(fleet, rng)
    assert change is not None
    assert change.endswith("cn-beijing Creating")
    assert sorted(i.regions["cn-beijing"] for i in fleet) == ["Available", "Creating"]
