"""Secrets never leave the exporter, and ``--web.config.file`` really protects the running process.

Leaks: for each way of getting credentials (a static AccessKey, a static STS triple in the config, and
STS credentials fetched through a credentials URI backed by the simulator's ``/_sim/sts``), a real
exporter watches Container images whose registry user names and passwords are unique random strings
(GetImage answers them, as the real API does), under faults, at debug log level, through a SIGHUP
reload. The secrets are also planted where only the gates can stop them: registry URLs carrying their
user name and password, a Container image named after its own registry password (the ingestion gate
masks it in that answer), and an error message that echoes the exporter's own AccessKey secret or STS
token (only the output gate stands between it and the log); with either gate a no-op, this test fails.
Every byte of ``/metrics`` (text and OpenMetrics, plain and gzip), of the landing page, of the
probes and of a 404 page, and the exporter's whole stdout and stderr, are searched for each registry
password and user name, the AccessKey secret, the STS secrets and tokens it was handed, and the
basic-auth password. The fault soak (tests/test_soak.py) runs the same search over a whole soak.

Security wiring: TLS and bcrypt basic auth from ``--web.config.file`` in the real process (the unit
tests in tests/test_toolkit.py cover TLS reload, mTLS and the parser): wrong and missing passwords
answer 401, ``/healthz`` and ``/readyz`` stay open, plain HTTP on the TLS port gets no metrics.
"""

from __future__ import annotations

import base64
import gzip
import json
import signal
import ssl
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from tests.harness import (
    ExporterProcess,
    SecretScanner,
    SimulatorProcess,
    exporter_config,
    http_get,
    processes,
    start_exporter,
    start_simulator,
    wait_until,
)
from tests.reliability import Reliability

ACCESS_KEY_ID = "leak-test-access-key"
AUTH_USER = "prometheus"
PAGES: tuple[tuple[str, dict[str, str]], ...] = (
    ("/metrics", {}),
    ("/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}),
    ("/metrics", {"Accept-Encoding": "gzip"}),
    ("/metrics", {"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"}),
    ("/", {}),
    ("/healthz", {}),
    ("/readyz", {}),
    ("/no-such-page", {}),
)

pytestmark = pytest.mark.process  # most tests here start real processes (make test-fast skips the file)


def basic(user: str, password: str) -> dict[str, str]:
    """An Authorization header."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def leak_fleet(containers: int = 12, vms: int = 4) -> tuple[dict[str, Any], dict[str, str]]:
    """A fleet of Container images with random registry credentials (and a few VMs); and those secrets."""
    images: list[dict[str, Any]] = []
    secrets: dict[str, str] = {}
    for i in range(containers):
        user, password = f"leakuser{uuid.uuid4().hex}", f"leakpw{uuid.uuid4().hex}"
        secrets[user], secrets[password] = "registry user name", "registry password"
        images.append(
            {
                "image_id": f"m-leakct{i:012d}",
                "image_type": "Container",
                "name": f"app-{i}",
                "registry_url": f"registry-vpc.cn-hangzhou.aliyuncs.com/ns/app-{i}:v1",
                "registry_username": user,
                "registry_password": password,
                "regions": {"cn-beijing": "Available"},
            }
        )
        if i % 4 == 1:  # a registry URL with userinfo: the gates must strip and mask it
            images[-1]["registry_url"] = f"https://{user}:{password}@registry.example.com/ns/app-{i}:v1"
    images += [{"image_id": f"m-leakvm{i:012d}", "name": f"vm-{i}"} for i in range(vms)]
    images[0]["error"] = "NoPermission"  # an error body with AccessDeniedDetail goes through the logs too
    # Named after its own registry password: the ingestion gate masks it in that answer.
    images[3]["name"] = images[3]["registry_password"]
    return {"images": images}, secrets


ECHO_IMAGE = "m-leakvm000000000000"  # its error message echoes the exporter's own secret


class StsRecorder:
    """A credentials URI serving STS credentials from the simulator's ``/_sim/sts``, remembering each."""

    def __init__(self, sim_url: str, ttl_seconds: int) -> None:
        self.issued: list[dict[str, Any]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = f"{sim_url}/_sim/sts?ttl_seconds={ttl_seconds}"
                with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (loopback)
                    body = resp.read()
                recorder.issued.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/sts"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StsRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def web_config(directory: Path, cert_files: tuple[str, str], password: str) -> Path:
    """TLS with the test server certificate and one bcrypt user (cost 10, as htpasswd -B writes)."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
    path = directory / "web-config.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "tls_server_config": {"cert_file": cert_files[0], "key_file": cert_files[1]},
                "basic_auth_users": {AUTH_USER: hashed},
            }
        )
    )
    return path


def read_everything(exporter: ExporterProcess, headers: dict[str, str]) -> list[str]:
    """Every page of ``PAGES`` (gzip undone); each must answer (200, or 404 for the missing page)."""
    bodies = []
    for path, extra in PAGES:
        status, resp_headers, body = exporter.get(path, {**headers, **extra})
        assert status == (404 if path == "/no-such-page" else 200), (path, extra, status)
        if resp_headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        bodies.append(body.decode())
    return bodies


@pytest.fixture
def leak_sim(tmp_path: Path) -> Iterator[tuple[SimulatorProcess, str, dict[str, Any], dict[str, str]]]:
    """A simulator with a random AccessKey secret and the leak fleet, under mild faults."""
    fleet, secrets = leak_fleet()
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet))
    secret = f"leaksecret{uuid.uuid4().hex}"
    sim = start_simulator(tmp_path / "sim", path, extra_args=["--access-key", f"{ACCESS_KEY_ID}:{secret}"])
    try:
        sim.set_faults(error_rates={"ServiceUnavailable": 0.1}, malformed_rate=0.05, seed=7)
        yield sim, secret, fleet, secrets
    finally:
        sim.stop()


MODES = ("access_key", "sts", "credentials_uri")


@pytest.mark.parametrize("mode", MODES)
def test_no_secret_leaves_the_exporter(
    mode: str,
    leak_sim: tuple[SimulatorProcess, str, dict[str, Any], dict[str, str]],
    tmp_path: Path,
    server_cert_files: tuple[str, str],
    client_ssl_context: ssl.SSLContext,
    reliability: Reliability,
) -> None:
    """No registry credential, AccessKey secret, STS secret or token, or web password, anywhere it writes."""
    sim, ak_secret, fleet, registry_secrets = leak_sim
    kinds = (
        "registry passwords and user names, "
        + {
            "access_key": "the AccessKey secret",
            "sts": "the STS secret and token",
            "credentials_uri": "every STS secret and token fetched, the basic-auth password",
        }[mode]
    )
    case = reliability.case(
        "leaks",
        f"{mode}: /metrics (text, OpenMetrics, gzip), pages and the whole log at debug level",
        f"none of: {kinds}",
    )
    plain: dict[str, str] = {}
    watched = [
        {"id": i["image_id"], "type": i.get("image_type", "VM"), "additional_regions": ["cn-beijing"]}
        for i in fleet["images"]
    ]
    auth: dict[str, str] = {}
    extra_args = ["--log-level", "debug"]
    scheme, context = "http", None
    with processes() as procs, StsRecorder(sim.url, ttl_seconds=3600) as recorder:
        if mode == "access_key":
            creds: dict[str, Any] = {
                "type": "access_key",
                "access_key_id": ACCESS_KEY_ID,
                "access_key_secret": ak_secret,
            }
            plain[ak_secret] = "AccessKey secret"
            echo = ak_secret
        elif mode == "sts":
            sts = sim.admin("GET", "sts?ttl_seconds=3600")
            creds = {
                "type": "sts",
                "access_key_id": sts["AccessKeyId"],
                "access_key_secret": sts["AccessKeySecret"],
                "security_token": sts["SecurityToken"],
            }
            plain[sts["AccessKeySecret"]] = "STS secret"
            plain[sts["SecurityToken"]] = "STS token"
            echo = sts["SecurityToken"]
        else:
            creds = {"type": "credentials_uri", "credentials_uri": recorder.url}
            password = f"webpw{uuid.uuid4().hex}"
            plain[password] = "basic-auth password"
            auth = basic(AUTH_USER, password)
            extra_args += ["--web.config.file", str(web_config(tmp_path, server_cert_files, password))]
            scheme, context = "https", client_ssl_context
        doc = exporter_config(sim.url, watched, interval=1, credentials=creds)
        exporter = start_exporter(
            tmp_path / "exporter", doc, extra_args=extra_args, scheme=scheme, ssl_context=context
        )
        procs.append(exporter)
        if mode == "credentials_uri":
            echo = recorder.issued[-1]["SecurityToken"]  # what the exporter fetched and now holds
        # A gateway that echoes the exporter's own secret in an error message, which is logged.
        sim.patch_image(ECHO_IMAGE, error="InvalidParams", error_detail=f"key={echo}")
        wait_until(lambda: "key=" in exporter.output(), 15, "the echoing error answered and logged")
        bodies = read_everything(exporter, auth)
        # A reload re-reads the file with its secrets and rebuilds nothing that may print them.
        assert exporter.popen is not None
        exporter.popen.send_signal(signal.SIGHUP)
        wait_until(lambda: "config_reloaded" in exporter.output(), 15, "reload after SIGHUP")
        first_cycles = exporter.output().count("refresh_done")
        wait_until(lambda: exporter.output().count("refresh_done") >= first_cycles + 3, 20, "3 more cycles")
        bodies += read_everything(exporter, auth)
        rc = exporter.stop()
        log = exporter.output()
        for issued in recorder.issued:
            plain[issued["AccessKeySecret"]] = "STS secret (credentials URI)"
            plain[issued["SecurityToken"]] = "STS token (credentials URI)"

    # The credentials were really used, and the registry secrets really went through the exporter.
    containers_up = sum(
        1
        for body in bodies[:1]
        for line in body.splitlines()
        if line.startswith('ehpc_image_up{account="default",image_id="m-leakct') and line.endswith(" 1.0")
    )
    assert containers_up >= 5, bodies[0][:2000]
    # The planted secrets really reached the exporter: the echo was answered and logged (masked), and
    # the image named after its own registry password was read with that name masked (its info series
    # keeps the last good answer's labels, whatever the injected faults did since).
    assert "key=[REDACTED]" in log
    masked = f'image_id="{fleet["images"][3]["image_id"]}"'
    assert any(
        line.startswith("ehpc_image_info{") and masked in line and 'name="[REDACTED]"' in line
        for body in bodies
        for line in body.splitlines()
    ), "the image named after its registry password is not published with the name masked"
    assert mode != "credentials_uri" or recorder.issued, "the credentials URI was never asked"
    assert rc == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    scanner = SecretScanner(registry_secrets, plain)
    # Positive controls: the scanner does find each kind of secret when it is there.
    for secret in [next(iter(registry_secrets)), *plain]:
        assert scanner.find(f"x={secret};"), secret
    found = sorted({kind for text in [*bodies, log] for kind in scanner.find(text)})
    case.observe(
        f"none found in {len(bodies)} pages and the whole log" if not found else f"FOUND: {found}",
        not found,
    )


def test_web_config_protects_the_real_process(
    leak_sim: tuple[SimulatorProcess, str, dict[str, Any], dict[str, str]],
    tmp_path: Path,
    server_cert_files: tuple[str, str],
    client_ssl_context: ssl.SSLContext,
    reliability: Reliability,
) -> None:
    """TLS and bcrypt basic auth from --web.config.file, end to end in the real exporter process."""
    sim, ak_secret, _fleet, _secrets = leak_sim
    password = f"webpw{uuid.uuid4().hex}"
    doc = exporter_config(
        sim.url, [{"id": "m-leakvm000000000000"}], access_key_id=ACCESS_KEY_ID, access_key_secret=ak_secret
    )
    flag = ["--web.config.file", str(web_config(tmp_path, server_cert_files, password))]
    exporter = start_exporter(
        tmp_path / "exporter", doc, extra_args=flag, scheme="https", ssl_context=client_ssl_context
    )
    try:
        checks: list[tuple[str, str, dict[str, str], int]] = [
            ("/metrics with the right password", "/metrics", basic(AUTH_USER, password), 200),
            ("/metrics without credentials", "/metrics", {}, 401),
            ("/metrics with a wrong password", "/metrics", basic(AUTH_USER, "not-the-password"), 401),
            ("/metrics as an unknown user", "/metrics", basic("mallory", password), 401),
            (
                "/metrics with a malformed Authorization header",
                "/metrics",
                {"Authorization": "Basic %%%"},
                401,
            ),
            ("landing page without credentials", "/", {}, 401),
            ("/healthz without credentials", "/healthz", {}, 200),
            ("/readyz without credentials", "/readyz", {}, 200),
        ]
        for name, path, headers, expected in checks:
            status, resp_headers, _ = exporter.get(path, headers)
            challenge = resp_headers.get("WWW-Authenticate", "")
            ok = status == expected and (expected != 401 or challenge.startswith("Basic "))
            reliability.check(
                "security",
                f"TLS + basic auth: {name}",
                f"{expected}" + (" with a Basic challenge" if expected == 401 else ""),
                f"{status}" + (" with a Basic challenge" if challenge.startswith("Basic ") else ""),
                ok,
            )
        # Plain HTTP on the TLS port: no metrics (the server answers 400 or drops the connection).
        try:
            plain_status: int | str = http_get(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5)[0]
        except OSError:
            plain_status = "dropped connection"
        reliability.check(
            "security",
            "plain HTTP to the TLS port",
            "no 200 (a 400 or a dropped connection)",
            f"{plain_status}",
            plain_status != 200,
        )
        # A client that does not trust the exporter's CA refuses the handshake.
        try:
            untrusted: int | str = http_get(
                f"{exporter.url}/healthz", timeout=5, context=ssl.create_default_context()
            )[0]
        except OSError as exc:
            untrusted = "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in str(exc) else str(exc)
        reliability.check(
            "security",
            "client without the CA",
            "certificate verify failed",
            f"{untrusted}",
            untrusted == "certificate verify failed",
        )
    finally:
        rc = exporter.stop()
    log = exporter.output()
    reliability.check(
        "security",
        "TLS + basic auth: the password in the logs",
        "absent; exit 0; no traceback",
        f"{'PRESENT' if password in log else 'absent'}; exit {rc}; "
        + ("a TRACEBACK" if "Traceback" in log else "no traceback"),
        password not in log and rc == 0 and "Traceback" not in log,
    )
