"""Bad input, as a table: every case has a defined outcome and is recorded in the reliability report.

Outcomes are one of: an exit code with one line naming the field (configuration), a 4xx (HTTP), or a
counted error with the exporter still serving (API answers, credentials, endpoints). Never a traceback
(checked in every process's output) and never a hang (every subprocess call and every socket has a
timeout). Everything runs the real ``ehpc-image-exporter`` as a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from ehpc_simulator.model import SimImage, render_image
from tests.harness import (
    ExporterProcess,
    SimulatorProcess,
    api_counts,
    clean_env,
    exporter_config,
    free_port,
    http_get,
    quick_samples,
    run_cli,
    start_exporter,
    start_simulator,
    wait_until,
)
from tests.reliability import Reliability

pytestmark = pytest.mark.process  # most tests here start real processes (make test-fast skips the file)

VM_ID = "m-badinputvm00000001"
CT_ID = "m-badinputct00000001"
FLEET = {
    "images": [
        {"image_id": VM_ID, "name": "gromacs", "regions": {"cn-beijing": "Available"}},
        {
            "image_id": CT_ID,
            "image_type": "Container",
            "name": "nginx",
            "registry_url": "registry-vpc.cn-hangzhou.aliyuncs.com/ns/nginx:1",
            "registry_username": "puller",
            "registry_password": "bad-input-registry-password-0123456789",
        },
    ]
}
WATCHED: list[dict[str, Any]] = [
    {"id": VM_ID, "additional_regions": ["cn-beijing"]},
    {"id": CT_ID, "type": "Container"},
]


def one_line(text: str, tmp: Path) -> str:
    """``text`` on one line with the temporary directory shown as ``<tmp>`` (for a stable report)."""
    return " ".join(text.replace(str(tmp), "<tmp>").split())


def config_errors(stderr: str) -> list[str]:
    """The ``error`` field of every ``config_invalid`` JSON log line."""
    out = []
    for line in stderr.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("event") == "config_invalid":
                out.append(str(event.get("error", "")))
    return out


# ------------------------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class ConfigCase:
    """A bad configuration: the file (or how to make it), extra flags, and the field the line must name."""

    name: str
    content: str | bytes | None  # None: the path given by `path` is used as is
    names: str  # a fragment the single error line must contain
    flags: tuple[str, ...] = ()
    path: Callable[[Path], Path] | None = None  # builds the config path in the temp dir
    web_config: str | None = None  # content of a --web.config.file, if any
    exit_code: int = 2
    must_not_echo: str | None = None  # a secret-like value the line must not repeat


CONFIG_CASES = [
    ConfigCase("malformed YAML", "api: [unclosed\n", "invalid YAML"),
    ConfigCase("top level is a list", "- images\n- api\n", "top level must be a mapping"),
    ConfigCase("duplicate YAML key", "refresh: {}\nrefresh: {}\n", "duplicate key 'refresh'"),
    ConfigCase("unknown top-level key", "imagez: []\n", "imagez: unknown key (did you mean 'images'?)"),
    ConfigCase("unknown nested key", "api: {regoin_id: cn-hangzhou}\n", "api.regoin_id: unknown key"),
    ConfigCase("wrong type: number", "refresh: {interval_seconds: fast}\n", "refresh.interval_seconds: must"),
    ConfigCase("wrong type: list", "images: m-1\n", "images: must be a list"),
    ConfigCase("wrong type: integer", "api: {max_concurrency: 2.5}\n", "api.max_concurrency: must be"),
    ConfigCase("negative interval", "refresh: {interval_seconds: -5}\n", "refresh.interval_seconds: must be"),
    ConfigCase("invalid region id", "api: {region_id: CN_Hangzhou}\n", "api.region_id: invalid region id"),
    ConfigCase(
        "invalid additional region",
        "images: [{id: m-1, additional_regions: ['mars 1']}]\n",
        "images[0].additional_regions[0]: invalid region id",
    ),
    ConfigCase("duplicate image ids", "images: [{id: m-1}, {id: m-1}]\n", "images[1].id: duplicate image id"),
    ConfigCase(
        "access_key without its secret",
        "credentials: {type: access_key, access_key_id: AKID}\n",
        "credentials.access_key_secret: required for type 'access_key'",
    ),
    ConfigCase("unknown credential type", "credentials: {type: magic}\n", "credentials.type: must be"),
    ConfigCase(
        "unset environment variable",
        "credentials: {type: access_key, access_key_id: AKID, access_key_secret: '${EHPC_TEST_UNSET_VAR}'}\n",
        "environment variable 'EHPC_TEST_UNSET_VAR' is not set",
    ),
    ConfigCase(
        "endpoint with user:password",
        "api: {endpoint: 'http://user:hunter2endpointpw@127.0.0.1:1'}\n",
        "api.endpoint: must not carry credentials",
        must_not_echo="hunter2endpointpw",
    ),
    ConfigCase(
        "secret pasted into a region id",
        "credentials: {type: access_key, access_key_id: AKID, access_key_secret: s3cretpastedtwice}\n"
        "api: {region_id: s3cretpastedtwice}\n",
        "api.region_id: invalid region id",
        must_not_echo="s3cretpastedtwice",
    ),
    ConfigCase(
        "telemetry path /healthz", "web: {telemetry_path: /healthz}\n", "web.telemetry_path: must not"
    ),
    ConfigCase("file does not exist", None, "cannot read config file", path=lambda d: d / "missing.yaml"),
    ConfigCase("file is a directory", None, "cannot read config file", path=lambda d: d),
    ConfigCase("file is not UTF-8", b"images: [\xff\xfe]\n", "not UTF-8"),
    ConfigCase(
        "bad --web.listen-address",
        "images: []\n",
        "command line: web.listen_address: must be host:port",
        flags=("--web.listen-address", "nonsense"),
    ),
    ConfigCase(
        "web config: malformed YAML",
        "images: []\n",
        "web.yml:2:1: invalid YAML",
        web_config="tls_server_config: [unclosed\n",
    ),
    ConfigCase(
        "web config: unknown key",
        "images: []\n",
        "web.yml:1:1: basic_auth_user: unknown key",
        web_config="basic_auth_user: {a: b}\n",
    ),
    ConfigCase(
        "web config: plain-text password",
        "images: []\n",
        "web.yml:1:20: basic_auth_users.prometheus: not a bcrypt hash",
        web_config="basic_auth_users: {prometheus: hunter2plaintextpw}\n",
        must_not_echo="hunter2plaintextpw",
    ),
    ConfigCase(
        "web config: certificate file missing",
        "images: []\n",
        "web.yml:1:21: tls_server_config.cert_file: cannot read",
        web_config="tls_server_config: {cert_file: missing.crt, key: '-----BEGIN PRIVATE KEY-----'}\n",
    ),
    ConfigCase(
        "web config: file does not exist",
        "images: []\n",
        "cannot read the web config file",
        flags=("--web.config.file", "/nonexistent/web.yml"),
    ),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.name for c in CONFIG_CASES])
def test_bad_config(case: ConfigCase, tmp_path: Path, reliability: Reliability) -> None:
    """``run`` refuses the config: exit 2, one ``config_invalid`` line naming the field, no traceback."""
    record = reliability.case("config", case.name, f"exit {case.exit_code}, one line naming '{case.names}'")
    if case.path is not None:
        path = case.path(tmp_path)
    else:
        path = tmp_path / "config.yaml"
        assert case.content is not None
        if isinstance(case.content, bytes):
            path.write_bytes(case.content)
        else:
            path.write_text(case.content)
    flags = list(case.flags)
    if case.web_config is not None:
        (tmp_path / "web.yml").write_text(case.web_config)
        flags += ["--web.config.file", str(tmp_path / "web.yml")]
    if "--web.listen-address" not in flags:
        flags += ["--web.listen-address", f"127.0.0.1:{free_port()}"]
    result = run_cli(["run", "--config", str(path), "--log-format", "json", *flags], timeout=30)
    errors = config_errors(result.stderr)
    output = result.stdout + result.stderr
    line = one_line(errors[0], tmp_path) if len(errors) == 1 else f"{len(errors)} error lines: {errors}"
    echoed = case.must_not_echo is not None and case.must_not_echo in output
    record.observe(
        f"exit {result.returncode}: {line}"
        + ("; ECHOED the secret" if echoed else "")
        + ("; TRACEBACK" if "Traceback" in output else ""),
        result.returncode == case.exit_code
        and len(errors) == 1
        and case.names in errors[0]
        and not echoed
        and "Traceback" not in output,
    )


def test_check_config_prints_plain_lines(tmp_path: Path, reliability: Reliability) -> None:
    """``--check-config`` lists every problem of a file, one plain line each, and exits 2."""
    path = tmp_path / "config.yaml"
    path.write_text("refresh: {interval_seconds: -1}\napi: {region_id: X}\nimages: [{id: a}, {id: a}]\n")
    result = run_cli(["run", "--check-config", "--config", str(path)], timeout=30)
    lines = [one_line(x, tmp_path) for x in result.stderr.splitlines() if x.strip()]
    wanted = ("refresh.interval_seconds", "api.region_id", "images[1].id")
    reliability.check(
        "config",
        "--check-config with three problems",
        "exit 2 and three lines, one per field, in file order",
        f"exit {result.returncode}: {' | '.join(lines)}",
        result.returncode == 2
        and len(lines) == 3
        and all(w in line for w, line in zip(wanted, lines, strict=False))
        and "Traceback" not in result.stderr,
    )


def test_listen_address_in_use(tmp_path: Path, reliability: Reliability) -> None:
    """A port that is already taken: exit 1 with one ``start_failed`` line, no traceback."""
    path = tmp_path / "config.yaml"
    path.write_text("images: []\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            [
                "run",
                "--config",
                str(path),
                "--web.listen-address",
                f"127.0.0.1:{port}",
                "--log-format",
                "json",
            ],
            timeout=30,
        )
    events = [json.loads(x).get("event") for x in result.stderr.splitlines() if x.startswith("{")]
    reliability.check(
        "config",
        "listen address already in use",
        "exit 1, one start_failed line",
        f"exit {result.returncode}: {events.count('start_failed')} start_failed line(s)",
        result.returncode == 1 and events.count("start_failed") == 1 and "Traceback" not in result.stderr,
    )


# ------------------------------------------------------------------------ a running exporter to poke


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    """One simulator for the module."""
    tmp = tmp_path_factory.mktemp("bad-input-sim")
    fleet = tmp / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(FLEET))
    proc = start_simulator(tmp, fleet)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def exporter(sim: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExporterProcess]:
    """One healthy exporter for the HTTP cases."""
    doc = exporter_config(sim.url, WATCHED, interval=60)  # a quiet log between the cases
    proc = start_exporter(tmp_path_factory.mktemp("bad-input-exporter"), doc)
    try:
        yield proc
    finally:
        proc.stop()


def raw_status(port: int, request: bytes, timeout: float = 30) -> int | None:
    """Send raw bytes and read until the server closes; the status code of the answer (None if the
    connection closed without one).

    Every request asks the server to close (or is one it refuses), so the close is the end of its
    handling, and whatever the exporter logs about the request is in its log by then. ``timeout`` only
    bounds a server that never closes.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            while chunk := s.recv(65536):
                data += chunk
    first = data.split(b"\r\n", 1)[0].split()
    return int(first[1]) if len(first) >= 2 and first[1].isdigit() else None


def request(method: str, target: bytes, headers: bytes = b"") -> bytes:
    """One HTTP/1.1 request that asks the server to close afterwards."""
    return (
        method.encode()
        + b" "
        + target
        + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + headers
        + (b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    )


def poke(
    exporter: ExporterProcess, req: bytes, allowed: set[int], reliability: Reliability, area: str, name: str
) -> None:
    """Send ``req``; the answer must be one of ``allowed``, the log must stay free of tracebacks."""
    expected = "/".join(map(str, sorted(allowed))) + ", no traceback in the log"
    case = reliability.case(area, name, expected)
    before = len(exporter.output())
    status = raw_status(exporter.port, req)  # returns once the server closed: its log lines are written
    traceback = "Traceback" in exporter.output()[before:]
    exporter.check_alive()
    case.observe(
        f"{status}" + (", a TRACEBACK in the log" if traceback else ", no traceback"),
        status in allowed and not traceback,
    )


METHODS = ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "POST"]


@pytest.mark.parametrize("method", METHODS)
def test_odd_methods(exporter: ExporterProcess, method: str, reliability: Reliability) -> None:
    """Methods other than GET/HEAD on /metrics answer 405."""
    poke(exporter, request(method, b"/metrics"), {405}, reliability, "http methods", f"{method} /metrics")


PATHS: list[tuple[str, bytes, set[int]]] = [
    ("../ traversal", b"/../etc/passwd", {404}),
    ("encoded ../ traversal", b"/%2e%2e/%2e%2e/etc/passwd", {404}),
    ("dot segments around /metrics", b"/metrics/../metrics", {404}),
    ("%00 after /metrics", b"/metrics%00", {404}),
    ("%00 alone", b"/%00", {404}),
    ("percent-encoded unicode", b"/%E2%9C%93", {404}),
    ("long path (4,000 bytes)", b"/" + b"a" * 4000, {404}),
    # Past aiohttp's 8190-byte request line, or raw bytes outside ASCII: the request line itself is
    # refused before routing, with 400.
    ("very long path (10,000 bytes)", b"/" + b"a" * 10000, {400}),
    ("raw UTF-8 path", "/métrics".encode(), {400}),
    ("asterisk target", b"*", {400}),
    ("trailing slash", b"/metrics/", {404}),
    ("upper case", b"/METRICS", {404}),
]


@pytest.mark.parametrize("case", PATHS, ids=[p[0] for p in PATHS])
def test_odd_paths(
    exporter: ExporterProcess, case: tuple[str, bytes, set[int]], reliability: Reliability
) -> None:
    """Paths that are not ours answer 404 (400 when the request line is invalid), never 5xx."""
    name, target, allowed = case
    poke(exporter, request("GET", target), allowed, reliability, "http paths", name)


HEADERS: list[tuple[str, bytes, set[int]]] = [
    ("huge header (70 KB)", b"X-Big: " + b"a" * 70_000 + b"\r\n", {400, 431}),
    ("500 headers", b"".join(b"X-H%d: v\r\n" % i for i in range(500)), {400, 431}),
    ("control bytes in Accept", b"Accept: \x00\x01\r\n", {400}),
    ("bad Accept q", b"Accept: application/openmetrics-text; q=abc\r\n", {200}),
    ("garbage Accept", b"Accept: */*;;;, garbage\r\n", {200}),
    ("unknown OpenMetrics version", b"Accept: application/openmetrics-text; version=9.9.9\r\n", {200}),
    ("bad Accept-Encoding q", b"Accept-Encoding: gzip;q=x\r\n", {200}),
    ("only unsupported encodings", b"Accept-Encoding: br, zstd\r\n", {200}),
    ("identity refused", b"Accept-Encoding: identity;q=0, *;q=0\r\n", {200, 406}),
    ("latin-1 byte in Accept-Encoding", b"Accept-Encoding: \xff\r\n", {200, 400}),
    ("bad Transfer-Encoding", b"Transfer-Encoding: chunked, foo\r\n", {400}),
    ("negative Content-Length", b"Content-Length: -1\r\n", {400}),
]


@pytest.mark.parametrize("case", HEADERS, ids=[h[0] for h in HEADERS])
def test_odd_headers(
    exporter: ExporterProcess, case: tuple[str, bytes, set[int]], reliability: Reliability
) -> None:
    """Odd headers answer 200 or a 4xx, never a 5xx, never a traceback."""
    name, header, allowed = case
    req = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + b"Connection: close\r\n\r\n"
    poke(exporter, req, allowed, reliability, "http headers", name)


def test_not_http_at_all(exporter: ExporterProcess, reliability: Reliability) -> None:
    """A TLS ClientHello (or any binary) on the plain-HTTP port: 400 or a closed connection, no traceback."""
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64))
    case = reliability.case("http headers", "TLS handshake on the HTTP port", "400 or closed, no traceback")
    before = len(exporter.output())
    status = raw_status(exporter.port, hello)
    traceback = "Traceback" in exporter.output()[before:]
    case.observe(
        f"{status if status is not None else 'closed'}, {'a TRACEBACK' if traceback else 'no traceback'}",
        status in (400, None) and not traceback,
    )


def scrape_seconds(exporter: ExporterProcess) -> float:
    """Seconds one full /metrics scrape takes (fails unless 200; the 30 s timeout only bounds a hang)."""
    start = time.monotonic()
    status, _, _ = exporter.get("/metrics", timeout=30)
    assert status == 200
    return time.monotonic() - start


def open_and_unanswered(s: socket.socket) -> bool:
    """The server has neither answered nor closed this connection (nothing to read, no EOF)."""
    s.settimeout(0)  # a socket with a timeout would wait for data before its recv
    try:
        s.recv(1, socket.MSG_PEEK)  # data (an answer) or b"" (closed)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def test_slowloris(exporter: ExporterProcess, reliability: Reliability) -> None:
    """50 clients trickling headers and 10 that never read their answer: other scrapes are still answered.

    The proof is the order of events, not a latency: every scrape is answered while the 50 trickling
    requests are still open and unanswered, so no scrape waited for them (a server serving one
    connection at a time would answer none). How long the scrapes took, against scrapes of the same
    exporter before the slow clients came, is recorded in the terminal summary, never judged.
    """
    case = reliability.case(
        "slow clients",
        "50 half-sent requests + 10 clients not reading",
        "every other scrape 200 while all 50 half-sent requests are still open and unanswered",
    )
    reference = max(scrape_seconds(exporter) for _ in range(5))
    held: list[socket.socket] = []
    try:
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", exporter.port), timeout=30)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            held.append(s)
        for _ in range(10):
            s = socket.create_connection(("127.0.0.1", exporter.port), timeout=30)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            held.append(s)
        times = []
        for i in range(10):
            for s in held[:50]:  # keep trickling, one byte each round
                with contextlib.suppress(OSError):
                    s.sendall(b"a")
            times.append(scrape_seconds(exporter))
            if i % 3 == 0:
                times.append(scrape_seconds(exporter))
        still_held = sum(open_and_unanswered(s) for s in held[:50])
    finally:
        for s in held:
            s.close()
    exporter.check_alive()
    reliability.measure(
        "slow clients",
        "slowest scrape while 60 slow clients hold connections, over the slowest of 5 before",
        max(times) / reference,
        "x",
    )
    case.observe(
        f"{len(times)} scrapes 200; {'all 50' if still_held == 50 else f'only {still_held} of 50'}"
        " half-sent requests still open and unanswered after the last",
        len(times) == 14 and still_held == 50,
    )


# --------------------------------------------------------------------------- credentials and endpoints


def wait_first_error(exporter: ExporterProcess, within: float = 20) -> dict[str, Any]:
    """After the first refresh: the error counters and each image's up and last error code."""

    def done() -> dict[str, Any] | None:
        exporter.check_alive()
        text = exporter.metrics_text()
        found = quick_samples(text, ("ehpc_image_up", "ehpc_image_last_error_info"))
        up = {labels["image_id"]: v for n, labels, v in found if n == "ehpc_image_up"}
        if not up:
            return None
        codes = {labels["image_id"]: labels["code"] for n, labels, v in found if n.endswith("info") and v}
        _, errors = api_counts(text)
        return {"up": up, "codes": codes, "errors": {k: v for k, v in errors.items() if v}}

    return dict(wait_until(done, within, "first refresh"))


@dataclass(frozen=True)
class RuntimeCase:
    """An exporter that starts but cannot reach or authenticate to the API."""

    name: str
    area: str
    code: str  # the error code every image must show and the counter must count
    build: Callable[[SimulatorProcess, Path], tuple[dict[str, Any], dict[str, str] | None]]


def _refused_port() -> int:
    return free_port()  # nothing listens there once the probe socket is closed


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port that accepts connections and never answers (the backlog does the accepting)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]


def _default_chain(sim: SimulatorProcess, tmp: Path) -> tuple[dict[str, Any], dict[str, str] | None]:
    doc = exporter_config(sim.url, WATCHED)
    del doc["credentials"]
    home = tmp / "home"
    home.mkdir()
    # No variables, no profile files, and no ECS metadata probe (100.100.100.200 is not ours to call).
    return doc, clean_env(HOME=str(home), ALIBABA_CLOUD_ECS_METADATA_DISABLED="true")


RUNTIME_CASES = [
    RuntimeCase("default chain finds nothing", "credentials", "CredentialError", _default_chain),
    RuntimeCase(
        "credentials URI answers something else",
        "credentials",
        "CredentialError",
        lambda sim, _tmp: (
            exporter_config(
                sim.url,
                WATCHED,
                credentials={"type": "credentials_uri", "credentials_uri": f"{sim.url}/_sim/"},
            ),
            None,
        ),
    ),
    RuntimeCase(
        "credentials URI unreachable",
        "credentials",
        "CredentialError",
        lambda sim, _tmp: (
            exporter_config(
                sim.url,
                WATCHED,
                credentials={
                    "type": "credentials_uri",
                    "credentials_uri": f"http://127.0.0.1:{_refused_port()}/",
                },
            ),
            None,
        ),
    ),
    RuntimeCase(
        "wrong AccessKey secret",
        "credentials",
        "SignatureDoesNotMatch",
        lambda sim, _tmp: (
            exporter_config(sim.url, WATCHED, access_key_secret="wrong-secret-0123456789"),
            None,
        ),
    ),
    RuntimeCase(
        "unknown AccessKey id",
        "credentials",
        "InvalidAccessKeyId.NotFound",
        lambda sim, _tmp: (exporter_config(sim.url, WATCHED, access_key_id="LTAI-unknown-key-id"), None),
    ),
    RuntimeCase(
        "STS token the API does not know",
        "credentials",
        "InvalidAccessKeyId.NotFound",
        lambda sim, _tmp: (
            exporter_config(
                sim.url,
                WATCHED,
                credentials={
                    "type": "sts",
                    "access_key_id": "STS.madeup0123456789",
                    "access_key_secret": "madeup-secret-0123456789",
                    "security_token": "CAISmadeuptoken0123456789",
                },
            ),
            None,
        ),
    ),
    RuntimeCase(
        "endpoint refuses connections",
        "api input",
        "ConnectionError",
        lambda sim, _tmp: (exporter_config(f"http://127.0.0.1:{_refused_port()}", WATCHED), None),
    ),
    RuntimeCase(
        "https to a plain-HTTP endpoint",
        "api input",
        "ConnectionError",
        lambda sim, _tmp: (
            exporter_config(sim.url.replace("http://", "https://"), WATCHED, api={"protocol": "https"}),
            None,
        ),
    ),
]


@pytest.mark.parametrize("case", RUNTIME_CASES, ids=[c.name for c in RUNTIME_CASES])
def test_runtime_failure_is_counted(
    case: RuntimeCase, sim: SimulatorProcess, tmp_path: Path, reliability: Reliability
) -> None:
    """The exporter runs, serves, and counts the failure by code on every image; no traceback."""
    record = reliability.case(
        case.area,
        case.name,
        f"exporter serves; counted {case.code}; every image up 0 with last_error_info code {case.code}",
    )
    doc, env = case.build(sim, tmp_path)
    exporter = start_exporter(tmp_path / "exporter", doc, env=env, wait="healthy")
    try:
        state = wait_first_error(exporter)
        counted = sum(n for (_a, code), n in state["errors"].items() if code == case.code)
        others = sorted({code for (_a, code) in state["errors"]} - {case.code})
        images_ok = all(v == 0 for v in state["up"].values()) and set(state["codes"].values()) == {case.code}
        ready = exporter.get("/readyz")[0]
        log = exporter.output()
    finally:
        rc = exporter.stop()
    record.observe(
        f"serving (readyz {ready}); {case.code} counted"
        + (f", also {others}" if others else "")
        + ("; every image up 0 with that code" if images_ok else f"; images: {state['codes']}")
        + f"; exit {rc} on SIGTERM"
        + ("; TRACEBACK in the log" if "Traceback" in log else ""),
        counted > 0 and not others and images_ok and ready == 200 and rc == 0 and "Traceback" not in log,
    )


def test_endpoint_that_never_answers(tmp_path: Path, reliability: Reliability) -> None:
    """An endpoint that accepts the connection and stays silent: Timeout is counted, the exporter serves."""
    record = reliability.case(
        "api input",
        "endpoint accepts but never answers",
        "exporter serves; counted Timeout; every image up 0 with last_error_info code Timeout",
    )
    with silent_listener() as port:
        doc = exporter_config(f"http://127.0.0.1:{port}", WATCHED, api={"timeout_seconds": 0.5})
        exporter = start_exporter(tmp_path / "exporter", doc, wait="healthy")
        try:
            state = wait_first_error(exporter)
            log = exporter.output()
        finally:
            rc = exporter.stop()
    counted = sum(n for (_a, code), n in state["errors"].items() if code == "Timeout")
    images_ok = set(state["codes"].values()) == {"Timeout"} and all(v == 0 for v in state["up"].values())
    record.observe(
        f"Timeout counted; {'every image up 0 with that code' if images_ok else state['codes']}; exit {rc}",
        counted > 0 and images_ok and rc == 0 and "Traceback" not in log,
    )


# ---------------------------------------------------------------------------- malformed API answers

CAP = 65_536  # api.max_response_bytes for this test (the minimum allowed is 1024)


def _ok_body(image_id: str) -> bytes:
    image = render_image(SimImage(image_id=image_id, name="control"), None)
    return json.dumps({"RequestId": "R-OK", "Success": True, "Image": image}).encode()


# image id -> (what it answers, status, headers, body, or "chunked"/"truncated" handling)
BAD_ANSWERS: dict[str, tuple[str, int, str, bytes]] = {
    "m-badhtml00000000001": ("200 with an HTML page", 200, "text/html", b"<html><body>oops</body></html>"),
    "m-badgateway00000001": ("502 with an HTML error page", 502, "text/html", b"<html>Bad Gateway</html>"),
    # Over the cap, valid in every other way (a good answer, then whitespace JSON allows): only the size
    # cap can make these InvalidResponse, so removing the cap fails them.
    "m-badoversized000001": (
        f"200 with a valid JSON answer padded over the {CAP}-byte cap (Content-Length)",
        200,
        "application/json",
        _ok_body("m-badoversized000001") + b" " * (4 * CAP),
    ),
    "m-badchunked00000001": (
        f"200 chunked, a valid JSON answer padded over the {CAP}-byte cap, no Content-Length",
        200,
        "chunked",
        _ok_body("m-badchunked00000001") + b" " * (4 * CAP),
    ),
    "m-badtruncated000001": ("200 with a body cut short", 200, "truncated", b'{"RequestId":"R","Succ'),
    "m-badshape0000000001": (
        "200 JSON without Image",
        200,
        "application/json",
        b'{"RequestId":"R","Success":true}',
    ),
    "m-badarray0000000001": ("200 JSON array", 200, "application/json", b"[]"),
    "m-badempty0000000001": ("200 with an empty body", 200, "application/json", b""),
    "m-badnotutf800000001": ("200 with bytes that are not UTF-8", 200, "application/json", b"\xff\xfe{\x00"),
}
CONTROL_ID = "m-goodcontrol0000001"


class BadApi:
    """A fake E-HPC endpoint answering each image id with one kind of broken answer; counts its answers."""

    def __init__(self) -> None:
        self.answered: dict[str, int] = {}
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                image_id = parse_qs(urlsplit(self.path).query).get("ImageId", [""])[0]
                with api._lock:
                    api.answered[image_id] = api.answered.get(image_id, 0) + 1
                if image_id == CONTROL_ID:
                    self._send(200, "application/json", _ok_body(image_id))
                    return
                _what, status, kind, body = BAD_ANSWERS[image_id]
                if kind == "chunked":
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(body), 8192):
                        piece = body[i : i + 8192]
                        with contextlib.suppress(OSError):
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    with contextlib.suppress(OSError):
                        self.wfile.write(b"0\r\n\r\n")
                elif kind == "truncated":
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body) + 1000))
                    self.end_headers()
                    self.wfile.write(body)
                    self.close_connection = True
                else:
                    self._send(status, kind, body)

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("x-acs-request-id", "R-FAKE")
                self.end_headers()
                with contextlib.suppress(OSError):  # the client may hang up on an oversized body
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> BadApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def test_malformed_api_answers(tmp_path: Path, reliability: Reliability) -> None:
    """Non-JSON, oversized, truncated and wrongly shaped answers: each counted once as InvalidResponse."""
    cases = {
        image_id: reliability.case(
            "api input",
            f"GetImage answers {what}",
            "counted InvalidResponse once per answer; image up 0 with last_error_info InvalidResponse",
        )
        for image_id, (what, *_rest) in BAD_ANSWERS.items()
    }
    watched: list[dict[str, Any]] = [{"id": i} for i in [*BAD_ANSWERS, CONTROL_ID]]
    with BadApi() as api:
        doc = exporter_config(
            api.url,
            watched,
            interval=3600,  # one cycle: the counts are final once it is done
            api={"max_response_bytes": CAP, "retry": {"max_attempts": 1}},
        )
        exporter = start_exporter(tmp_path / "exporter", doc)
        try:
            text = exporter.metrics_text()
            answered = dict(api.answered)
            log = exporter.output()
        finally:
            rc = exporter.stop()
    found = quick_samples(text, ("ehpc_image_up", "ehpc_image_last_error_info"))
    up = {labels["image_id"]: v for n, labels, v in found if n == "ehpc_image_up"}
    codes = {labels["image_id"]: labels["code"] for n, labels, v in found if n.endswith("info") and v}
    _, errors = api_counts(text)
    counted = errors.get(("GetImage", "InvalidResponse"), 0)
    bad_answers = sum(n for i, n in answered.items() if i != CONTROL_ID)
    results = []
    for image_id, case in cases.items():
        ok = (
            up.get(image_id) == 0 and codes.get(image_id) == "InvalidResponse" and answered.get(image_id) == 1
        )
        results.append(
            case.observe(
                f"image up {up.get(image_id):g}, last_error_info {codes.get(image_id)}; counted"
                if image_id in up
                else "image absent from /metrics",
                ok,
                fail=False,
            )
        )
    reliability.check(
        "api input",
        "malformed answers in total",
        "ehpc_api_errors_total{code=InvalidResponse} equals the broken answers sent; a good image beside"
        " them stays up; exit 0, no traceback",
        f"counter {'equals' if counted == bad_answers else f'{counted} != {bad_answers}'} the answers sent;"
        f" control up {up.get(CONTROL_ID, -1):g}; exit {rc}" + ("; TRACEBACK" if "Traceback" in log else ""),
        counted == bad_answers and up.get(CONTROL_ID) == 1 and rc == 0 and "Traceback" not in log,
    )
    assert all(results), [c.message for c in cases.values() if not c.record.ok]


def test_exporter_survived_the_module(exporter: ExporterProcess, reliability: Reliability) -> None:
    """After every HTTP case above, the shared exporter still serves and its log has no traceback."""
    status, _, _ = http_get(f"{exporter.url}/metrics")
    log = exporter.output()
    reliability.check(
        "http headers",
        "after all odd requests",
        "exporter still serves 200; no traceback in its whole log",
        f"{status}; {'a TRACEBACK' if 'Traceback' in log else 'no traceback'}",
        status == 200 and "Traceback" not in log,
    )
