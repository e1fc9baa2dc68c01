"""Run the real exporter and the simulator as subprocesses on loopback, for the reliability tests.

Every process writes its stdout and stderr to files in a temporary directory (so a test can read every
byte it logged), every wait has a deadline, and every process is stopped by its own pid when the block
ends. The admin helpers talk to the simulator's unauthenticated ``/_sim/`` API with blocking urllib
calls: they are quick loopback calls to another process, so an ``async`` test may call them directly.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from ehpc_simulator import DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET
from tests.exporter_support import SampleKey
from tests.fixtures.http import WaitTimedOut, wait_until
from tests.fixtures.promstack import exporter_command, free_port

__all__ = [
    "DEMO_ACCESS_KEY_ID",
    "DEMO_ACCESS_KEY_SECRET",
    "ExporterProcess",
    "HarnessError",
    "Samples",
    "SimulatorProcess",
    "WaitTimedOut",
    "exporter_config",
    "free_port",
    "http_get",
    "parse_samples",
    "run_cli",
    "start_exporter",
    "start_simulator",
    "wait_until",
]

Samples = dict[SampleKey, float]
STOP_SECONDS = 10.0  # SIGTERM, then SIGKILL after this long


class HarnessError(WaitTimedOut):
    """A process did not start, died, or a wait ran out; the message carries the process's log tail.

    A kind of the shared wait's timeout (``WaitTimedOut``): catching that catches both.
    """


def http_get(
    url: str,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10,
    method: str = "GET",
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request; returns ``(status, headers, body)`` for every status (no exception on 4xx/5xx)."""
    req = urllib.request.Request(url, headers=dict(headers or {}), method=method)  # noqa: S310 (loopback)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:  # noqa: S310
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _json_call(method: str, url: str, payload: Any = None, timeout: float = 10) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(  # noqa: S310 (loopback admin API)
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raise HarnessError(f"{method} {url} -> HTTP {exc.code}: {exc.read()[:500]!r}") from None
    return json.loads(raw) if raw else None


def parse_samples(text: str) -> Samples:
    """Every sample of a text-format exposition: ``(name, labels) -> value``."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, or None when that series is absent."""
    return samples.get((name, frozenset(labels.items())))


def select(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return {lab: v for (n, lab), v in samples.items() if n == name and want <= lab}


# ------------------------------------------------------------------------------------------ processes


@dataclass
class ManagedProcess:
    """A child process whose stdout and stderr go to files; ``stop()`` ends it by its own pid."""

    name: str
    argv: list[str]
    directory: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    returncode: int | None = None

    @property
    def stdout_path(self) -> Path:
        """Where the process's stdout goes (appended across restarts)."""
        return self.directory / f"{self.name}.stdout"

    @property
    def stderr_path(self) -> Path:
        """Where the process's stderr goes (appended across restarts)."""
        return self.directory / f"{self.name}.stderr"

    def start(self) -> None:
        """Start (or restart) the process."""
        if self.alive():
            raise HarnessError(f"{self.name} is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self.popen = subprocess.Popen(
                self.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=self.env
            )
        self.returncode = None

    def alive(self) -> bool:
        """The process was started and has not exited."""
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL it (a crash, from the point of view of whoever talks to it)."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.returncode = self.popen.wait(timeout=STOP_SECONDS)

    def stop(self, timeout: float = STOP_SECONDS) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; returns the exit code."""
        proc = self.popen
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_SECONDS)
        self.returncode = proc.returncode
        return self.returncode

    def output(self) -> str:
        """Everything it wrote so far, stdout then stderr."""
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def tail(self, lines: int = 30) -> str:
        """The last lines of its output, for assertion messages."""
        return "\n".join(self.output().splitlines()[-lines:])

    def check_alive(self) -> None:
        """Fail with the log tail if the process has exited."""
        if self.popen is None or self.popen.poll() is not None:
            rc = None if self.popen is None else self.popen.returncode
            raise HarnessError(f"{self.name} is not running (exit code {rc}):\n{self.tail()}")


@dataclass
class SimulatorProcess(ManagedProcess):
    """``ehpc-image-exporter simulate`` with its admin API helpers."""

    port: int = 0

    @property
    def url(self) -> str:
        """Base URL of the API and of ``/_sim/``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """``127.0.0.1:port``."""
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, within: float = 120) -> None:
        """Wait until the admin API answers."""

        def ready() -> bool:
            self.check_alive()
            with contextlib.suppress(OSError, http.client.HTTPException):
                return http_get(f"{self.url}/_sim/", timeout=2)[0] == 200
            return False

        wait_until(ready, within, f"simulator on {self.address}")

    def admin(self, method: str, path: str, payload: Any = None) -> Any:
        """One admin call (``path`` under ``/_sim/``); returns the decoded JSON answer."""
        return _json_call(method, f"{self.url}/_sim/{path.lstrip('/')}", payload)

    def images(self) -> list[dict[str, Any]]:
        """The images the simulator holds (registry passwords redacted)."""
        return list(self.admin("GET", "images")["images"])

    def patch_image(self, image_id: str, **fields: Any) -> None:
        """Change fields of one image (status, error, regions, ...)."""
        self.admin("PATCH", f"images/{image_id}", fields)

    def set_region(self, image_id: str, region: str, status: str) -> None:
        """Set the status of one image's copy in ``region``."""
        self.admin("PUT", f"images/{image_id}/regions/{region}", {"status": status})

    def delete_image(self, image_id: str) -> None:
        """Remove an image (GetImage then answers ImageNotFound)."""
        self.admin("DELETE", f"images/{image_id}")

    def add_images(self, images: Sequence[Mapping[str, Any]]) -> None:
        """Create or replace images."""
        self.admin("POST", "images", {"images": list(images)})

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Replace every fault setting (absent fields take their defaults)."""
        return dict(self.admin("PUT", "faults", faults))

    def counters(self) -> dict[tuple[str, str, int], int]:
        """``(action, code, http_status) -> answers sent`` since start (or the last reset)."""
        rows = self.admin("GET", "counters")["responses"]
        return {(r["action"], r["code"], int(r["http_status"])): int(r["count"]) for r in rows}


def start_simulator(
    directory: Path, fleet: str | Path, *, port: int | None = None, extra_args: Sequence[str] = ()
) -> SimulatorProcess:
    """Start ``ehpc-image-exporter simulate --fleet FILE`` on ``port`` (free if None); wait for it."""
    port = port or free_port()
    argv = [
        exporter_command(),
        "simulate",
        "--fleet",
        str(fleet),
        "--listen-address",
        f"127.0.0.1:{port}",
        "--log-format",
        "json",
        *extra_args,
    ]
    sim = SimulatorProcess("simulator", argv, directory, port=port)
    sim.start()
    try:
        sim.wait_ready()
    except BaseException:
        sim.stop()
        raise
    return sim


@dataclass
class ExporterProcess(ManagedProcess):
    """``ehpc-image-exporter run --config FILE`` bound to a free loopback port."""

    port: int = 0
    scheme: str = "http"
    config_path: Path | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)  # to trust its certificate

    @property
    def url(self) -> str:
        """Base URL of the exporter."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """``127.0.0.1:port`` for scrape configs."""
        return f"127.0.0.1:{self.port}"

    def get(
        self, path: str = "/metrics", headers: Mapping[str, str] | None = None, timeout: float = 10
    ) -> tuple[int, dict[str, str], bytes]:
        """One GET against the exporter (over TLS with ``ssl_context`` when it serves HTTPS)."""
        return http_get(f"{self.url}{path}", headers, timeout, context=self.ssl_context)

    def metrics_text(self) -> str:
        """The text exposition; fails unless /metrics answers 200."""
        status, _, body = self.get()
        if status != 200:
            raise HarnessError(f"/metrics answered {status}: {body[:300]!r}")
        return body.decode()

    def samples(self) -> Samples:
        """The current samples of /metrics."""
        return parse_samples(self.metrics_text())

    def wait_healthy(self, within: float = 120) -> None:
        """Wait until ``/healthz`` answers 200 (the server is bound)."""

        def healthy() -> bool:
            self.check_alive()
            with contextlib.suppress(OSError, http.client.HTTPException):
                return self.get("/healthz", timeout=2)[0] == 200
            return False

        wait_until(healthy, within, f"exporter healthz on {self.address}")

    def wait_ready(self, within: float = 120) -> None:
        """Wait until ``/readyz`` answers 200 (the first refresh is done)."""

        def ready() -> bool:
            self.check_alive()
            with contextlib.suppress(OSError, http.client.HTTPException):
                return self.get("/readyz", timeout=2)[0] == 200
            return False

        wait_until(ready, within, f"exporter readyz on {self.address}")


def exporter_config(
    sim_url: str,
    images: Sequence[Mapping[str, Any]] = (),
    *,
    interval: float = 1.0,
    access_key_id: str = DEMO_ACCESS_KEY_ID,
    access_key_secret: str = DEMO_ACCESS_KEY_SECRET,
    api: Mapping[str, Any] | None = None,
    refresh: Mapping[str, Any] | None = None,
    credentials: Mapping[str, Any] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A config document pointed at a simulator over HTTP with quick retries (merge ``api``/``refresh``)."""
    api_section: dict[str, Any] = {
        "endpoint": sim_url,
        "protocol": "http",
        "qps": 0,
        "timeout_seconds": 2,
        "connect_timeout_seconds": 2,
        "retry": {"max_attempts": 2, "base_delay_seconds": 0.05, "max_delay_seconds": 0.2},
    }
    api_section.update(api or {})
    refresh_section: dict[str, Any] = {
        "interval_seconds": interval,
        "jitter_ratio": 0,
        "image_timeout_seconds": 10,
    }
    refresh_section.update(refresh or {})
    doc: dict[str, Any] = {
        "api": api_section,
        "credentials": dict(credentials)
        if credentials is not None
        else {"type": "access_key", "access_key_id": access_key_id, "access_key_secret": access_key_secret},
        "images": [dict(i) for i in images],
        "refresh": refresh_section,
    }
    doc.update(sections)
    return doc


def start_exporter(
    directory: Path,
    config: Mapping[str, Any] | str | None,
    *,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    scheme: str = "http",
    ssl_context: ssl.SSLContext | None = None,
    wait: str | None = "ready",
) -> ExporterProcess:
    """Write ``config`` (a document, or raw YAML text) and run the exporter on a free port.

    ``wait`` is ``"ready"`` (first refresh done), ``"healthy"`` (bound) or None (return at once).
    ``env`` replaces the environment (None: inherit ours).
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = [exporter_command(), "run"]
    config_path: Path | None = None
    if config is not None:
        config_path = directory / "config.yaml"
        text = config if isinstance(config, str) else yaml.safe_dump(dict(config), sort_keys=False)
        config_path.write_text(text)
        argv += ["--config", str(config_path)]
    argv += ["--web.listen-address", f"127.0.0.1:{port}", "--log-format", "json", *extra_args]
    exporter = ExporterProcess(
        "exporter",
        argv,
        directory,
        env=dict(env) if env is not None else None,
        port=port,
        scheme=scheme,
        config_path=config_path,
        ssl_context=ssl_context,
    )
    exporter.start()
    try:
        if wait == "ready":
            exporter.wait_ready()
        elif wait == "healthy":
            exporter.wait_healthy()
    except BaseException:
        exporter.stop()
        raise
    return exporter


@dataclass(frozen=True)
class CliResult:
    """What a finished CLI run left behind."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(
    args: Sequence[str], *, timeout: float = 30, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> CliResult:
    """Run ``ehpc-image-exporter ARGS`` to completion (a hang fails the test after ``timeout`` s)."""
    try:
        proc = subprocess.run(
            [exporter_command(), *args],
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"ehpc-image-exporter {' '.join(args)} did not finish within {timeout} s") from exc
    return CliResult(
        proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    )


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment minus Alibaba Cloud credential variables; pass ``HOME=<empty dir>`` too."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ALIBABA_CLOUD_", "ALICLOUD_", "ALIYUN_"))
    }
    env.update(extra)
    return env


@contextlib.contextmanager
def processes() -> Iterator[list[ManagedProcess]]:
    """Collect processes to stop (in reverse order) when the block ends, whatever happens."""
    started: list[ManagedProcess] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            with contextlib.suppress(Exception):
                proc.stop()


# ----------------------------------------------------------------------------------------- fast parsing

_LINE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def quick_samples(text: str, names: Sequence[str]) -> list[tuple[str, dict[str, str], float]]:
    """The samples of the metrics ``names`` only, from a text exposition (fast on big expositions)."""
    wanted = tuple(names)
    out = []
    for line in text.splitlines():
        if not line.startswith(wanted):
            continue
        m = _LINE_RE.match(line)
        if m is None or m.group(1) not in wanted:
            continue
        labels = dict(_LABEL_RE.findall(m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def api_counts(text: str) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """``ehpc_api_requests_total`` by action and ``ehpc_api_errors_total`` by (action, code)."""
    requests: dict[str, int] = {}
    errors: dict[tuple[str, str], int] = {}
    for name, labels, value in quick_samples(text, ("ehpc_api_requests_total", "ehpc_api_errors_total")):
        if name == "ehpc_api_requests_total":
            requests[labels["action"]] = requests.get(labels["action"], 0) + int(value)
        else:
            key = (labels["action"], labels["code"])
            errors[key] = errors.get(key, 0) + int(value)
    return requests, errors


# ------------------------------------------------------------------------------------------------ leaks


class SecretScanner:
    """Finds known secrets in text.

    ``hex_secrets`` each contain a unique 32-hex-digit core and may be many (every registry password of a
    fleet): the text's hex runs are matched against the cores, so scanning megabytes stays fast.
    ``secrets`` are few and matched as plain substrings.
    """

    _HEX_RUN = re.compile(r"[0-9a-f]{32,}")

    def __init__(self, hex_secrets: Mapping[str, str] = {}, secrets: Mapping[str, str] = {}) -> None:
        self.cores: dict[str, str] = {}
        for secret, kind in hex_secrets.items():
            core = re.search(r"[0-9a-f]{32}", secret)
            if core is None:
                raise ValueError(f"{kind}: no 32-hex-digit core")
            self.cores[core.group(0)] = kind
        self.secrets = {s: kind for s, kind in secrets.items() if s}

    def __len__(self) -> int:
        return len(self.cores) + len(self.secrets)

    def find(self, text: str) -> list[str]:
        """The kinds of every secret found in ``text`` (empty when clean)."""
        found = [kind for secret, kind in self.secrets.items() if secret in text]
        for run in self._HEX_RUN.findall(text):
            if len(run) == 32:
                if run in self.cores:
                    found.append(self.cores[run])
            else:
                found += [kind for core, kind in self.cores.items() if core in run]
        return found
