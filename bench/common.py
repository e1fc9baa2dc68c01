"""Shared pieces of the benchmarks: result records, repetition, fleets, ports and child processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

# The same replication regions everywhere, so every benchmark sees one fleet shape.
REGIONS = ("cn-beijing", "cn-shanghai", "cn-shenzhen", "cn-wulanchabu", "ap-southeast-1")
BENCH_DIR = Path(__file__).resolve().parent
PROFILE_DIR = BENCH_DIR / "profiles"


@dataclass(frozen=True)
class Settings:
    """How big and how long: the quick smoke mode or the full run."""

    quick: bool
    repeats: int
    profile: bool = False


@dataclass
class Result:
    """One measurement: a median over repeats, with its target and whether it was met."""

    name: str
    value: float
    unit: str
    target: str | None = None  # e.g. "<= 1.15"; None for informational rows
    passed: bool | None = None
    detail: str = ""
    samples: list[float] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The JSON record written to results.json."""
        value: float | None = None if math.isnan(self.value) else self.value
        return {
            "name": self.name,
            "value": value,
            "unit": self.unit,
            "target": self.target,
            "pass": self.passed,
            "detail": self.detail,
            "samples": self.samples,
        }


def at_most(name: str, samples: Sequence[float], limit: float, unit: str, detail: str = "") -> Result:
    """A result whose median must not exceed limit."""
    value = statistics.median(samples)
    return Result(name, value, unit, f"<= {limit:g}", value <= limit, detail, list(samples))


def at_least(name: str, samples: Sequence[float], limit: float, unit: str, detail: str = "") -> Result:
    """A result whose median must reach limit."""
    value = statistics.median(samples)
    return Result(name, value, unit, f">= {limit:g}", value >= limit, detail, list(samples))


def info(name: str, samples: Sequence[float], unit: str, detail: str = "") -> Result:
    """An informational result without a target."""
    return Result(name, statistics.median(samples), unit, None, None, detail, list(samples))


def unavailable(name: str, unit: str, target: str | None, why: str) -> Result:
    """A measurement that could not run (a module has not landed yet, or the run failed)."""
    return Result(name, math.nan, unit, target, None if target is None else False, f"not measured: {why}")


def percentile(values: Sequence[float], pct: float) -> float:
    """The pct-th percentile (nearest rank) of values."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def image_id(i: int) -> str:
    """The id of the i-th benchmark image, shaped like a real VM image id."""
    return f"m-bench{i:013d}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def exporter_command() -> list[str]:
    """The command that runs the exporter's CLI from this interpreter's environment."""
    script = Path(sys.executable).parent / "ehpc-image-exporter"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from exporter.cli import main; sys.exit(main())"]


@dataclass(frozen=True)
class Tls:
    """A throwaway CA and a server certificate for 127.0.0.1, as PEM files."""

    ca_file: str
    cert_file: str
    key_file: str

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only the throwaway CA."""
        return ssl.create_default_context(cafile=self.ca_file)


def make_tls(directory: Path) -> Tls:
    """Issue a throwaway CA (trustme) and a certificate for 127.0.0.1 and localhost."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    tls = Tls(str(directory / "ca.pem"), str(directory / "server.pem"), str(directory / "server.key"))
    ca.cert_pem.write_to_path(tls.ca_file)
    cert.private_key_pem.write_to_path(tls.key_file)
    cert.cert_chain_pems[0].write_to_path(tls.cert_file)
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(tls.cert_file, append=True)
    return tls


class SimProcess:
    """The simulator in its own process (`python -m bench.simserver`), so it does not share our core."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str, tls: Tls | None) -> None:
        self.proc = proc
        self.url = url
        self.tls = tls
        self._session: aiohttp.ClientSession | None = None

    def _admin(self) -> aiohttp.ClientSession:
        if self._session is None:
            ssl_ctx: ssl.SSLContext | bool = self.tls.client_context() if self.tls else True
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_ctx))
        return self._session

    async def set_faults(self, **faults: Any) -> None:
        """Replace the simulator's fault settings through its admin API."""
        async with self._admin().put(f"{self.url}/_sim/faults", json=faults) as resp:
            resp.raise_for_status()

    async def reset_counters(self) -> None:
        """Zero the simulator's response counters."""
        async with self._admin().post(f"{self.url}/_sim/counters/reset") as resp:
            resp.raise_for_status()

    async def counters(self) -> dict[tuple[str, str], int]:
        """Responses sent so far, by (action, code)."""
        async with self._admin().get(f"{self.url}/_sim/counters") as resp:
            resp.raise_for_status()
            body = await resp.json()
        out: dict[tuple[str, str], int] = {}
        for row in body["responses"]:
            key = (str(row["action"]), str(row["code"]))
            out[key] = out.get(key, 0) + int(row["count"])
        return out

    async def close(self) -> None:
        """Stop the simulator process and the admin session."""
        if self._session is not None:
            await self._session.close()
        await stop_process(self.proc)


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    """SIGTERM the child we started, then SIGKILL it if it does not exit within grace seconds."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def simulator_process(
    images: int,
    *,
    regions: Sequence[str] = REGIONS,
    tls: Tls | None = None,
    **faults: Any,
) -> AsyncIterator[SimProcess]:
    """Start a simulator holding `images` images in a child process and yield a handle to it."""
    cmd = [
        sys.executable,
        "-m",
        "bench.simserver",
        "--images",
        str(images),
        "--regions",
        ",".join(regions),
        "--faults",
        json.dumps(faults),
    ]
    if tls is not None:
        cmd += ["--cert", tls.cert_file, "--key", tls.key_file]
    proc, url = await start_announcing(cmd)
    handle = SimProcess(proc, url, tls)
    try:
        yield handle
    finally:
        await handle.close()


async def start_announcing(
    cmd: Sequence[str], *, quiet: bool = False
) -> tuple[asyncio.subprocess.Process, str]:
    """Start a child that prints {"url": ...} as its first line once it listens; return it and the URL."""
    proc, announced = await start_announcing_json(cmd, quiet=quiet)
    return proc, str(announced["url"])


async def start_announcing_json(
    cmd: Sequence[str], *, quiet: bool = False
) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    """Start a child that prints one JSON object as its first line once it listens; return it and that."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL if quiet else None,
        cwd=str(BENCH_DIR.parent),
        limit=1 << 20,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if not line:
            raise RuntimeError(f"{cmd[2]} exited before serving (rc={await proc.wait()})")
        announced = json.loads(line)
        if not isinstance(announced, dict):
            raise RuntimeError(f"{cmd[2]} announced {announced!r}, not an object")
        return proc, announced
    except BaseException:
        await stop_process(proc)
        raise


@contextlib.asynccontextmanager
async def floor_process(size: int) -> AsyncIterator[str]:
    """A bare aiohttp server answering `size` bytes (bench.floor_server) in a child; yields its URL."""
    proc, url = await start_announcing(
        [sys.executable, "-m", "bench.floor_server", "--bytes", str(size)], quiet=True
    )
    try:
        yield url
    finally:
        await stop_process(proc)


def write_exporter_config(
    directory: Path,
    *,
    sim_url: str,
    images: int,
    listen: str,
    interval_seconds: float,
    max_concurrency: int = 50,
    qps: float = 0,
    regions: Sequence[str] = REGIONS,
    ca_file: str | None = None,
    state_path: Path | None = None,
    discovery: bool = False,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write an exporter config (JSON is YAML) watching `images` images of the simulator."""
    from ehpc_simulator import DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET

    doc: dict[str, Any] = {
        "api": {
            "endpoint": sim_url,
            "protocol": "https" if sim_url.startswith("https") else "http",
            "max_concurrency": max_concurrency,
            "qps": qps,
            "timeout_seconds": 30,
        },
        "credentials": {
            "type": "access_key",
            "access_key_id": DEMO_ACCESS_KEY_ID,
            "access_key_secret": DEMO_ACCESS_KEY_SECRET,
        },
        "images": [
            {"id": image_id(i), "type": "VM", "additional_regions": list(regions)} for i in range(images)
        ],
        "refresh": {"interval_seconds": interval_seconds, "jitter_ratio": 0, "image_timeout_seconds": 120},
        "web": {"listen_address": listen},
    }
    if ca_file:
        doc["api"]["ca_file"] = ca_file
    if state_path is not None:
        doc["state"] = {"path": str(state_path)}
    if metrics is not None:
        doc["metrics"] = metrics
    if discovery:  # the same images, found by ListImages instead of listed one by one
        doc["images"] = []
        doc["discovery"] = {"enabled": True, "additional_regions": list(regions), "page_size": 100}
    path = directory / "exporter.yaml"
    path.write_text(json.dumps(doc))
    return path


class ExporterProcess:
    """`ehpc-image-exporter run --config FILE` in its own process."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the exporter wrote, for error messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def spawn_exporter(
    config: Path, command: Sequence[str] | None = None, *, append: bool = False
) -> asyncio.subprocess.Process:
    """Start ``ehpc-image-exporter run --config FILE`` (or ``command`` instead of the entry point), its
    output in ``exporter.log`` next to the config (appended to with ``append``)."""
    with (config.parent / "exporter.log").open("ab" if append else "wb") as out:
        return await asyncio.create_subprocess_exec(
            *(command or exporter_command()),
            "run",
            "--config",
            str(config),
            "--log-level",
            "warning",
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            cwd=str(BENCH_DIR.parent),
        )


@contextlib.asynccontextmanager
async def exporter_process(
    config: Path, listen_port: int, *, ready_timeout: float = 600, profile_to: Path | None = None
) -> AsyncIterator[ExporterProcess]:
    """Run the exporter on `config` and wait until /readyz says the first refresh is done.

    With profile_to, the exporter runs under pyinstrument (which writes that file when the exporter
    exits on SIGTERM); timings taken meanwhile carry the profiler's overhead.
    """
    log = config.parent / "exporter.log"
    command = None
    if profile_to is not None:
        command = [sys.executable, "-m", "pyinstrument", "-o", str(profile_to), "-m", "exporter"]
    proc = await spawn_exporter(config, command)
    handle = ExporterProcess(proc, f"http://127.0.0.1:{listen_port}", log)
    try:
        await wait_ready(handle, ready_timeout)
        yield handle
    finally:
        # A profiled exporter writes its session on the way out, which takes a while.
        await stop_process(proc, grace=10.0 if profile_to is None else 300.0)
    if profile_to is not None and os.path.exists(profile_to):  # noqa: ASYNC240 - one stat, once
        await render_profile(profile_to)


async def render_profile(session: Path) -> None:
    """Render a saved pyinstrument session as HTML and as text next to it."""
    for suffix in (".html", ".txt"):
        render = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pyinstrument", f"--load={session}", "-o", str(session.with_suffix(suffix))
        )
        await render.wait()


async def wait_ready(exporter: ExporterProcess, within: float) -> None:
    """Poll /readyz until it answers 200 (first refresh complete)."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if exporter.proc.returncode is not None:
                raise RuntimeError(f"exporter exited rc={exporter.proc.returncode}:\n{exporter.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(f"{exporter.url}/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"exporter not ready after {within:.0f}s:\n{exporter.log_tail()}")


@contextlib.contextmanager
def temp_dir() -> Iterator[Path]:
    """A temporary directory as a Path."""
    with tempfile.TemporaryDirectory(prefix="ehpc-bench-") as d:
        yield Path(d)


async def repeat(n: int, fn: Callable[[int], Awaitable[float]]) -> list[float]:
    """Run fn(i) n times in sequence and collect what it returns."""
    return [await fn(i) for i in range(n)]


def save_profile(profiler: Any, name: str) -> None:
    """Write a stopped pyinstrument Profiler as bench/profiles/NAME.html and NAME.txt."""
    profiler_output(name).write_text(profiler.output_html())
    profiler_output(name, ".txt").write_text(profiler.output_text(unicode=True, color=False))


def profiler_output(name: str, suffix: str = ".html") -> Path:
    """Where a pyinstrument profile of `name` is written."""
    PROFILE_DIR.mkdir(exist_ok=True)
    return PROFILE_DIR / f"{name}{suffix}"


def cpu_count() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0))
