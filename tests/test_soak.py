"""Fault soak: a 1,000-image fleet behind a misbehaving API, the exporter as a real subprocess.

The simulator (``ehpc-image-exporter simulate``, a subprocess on a fixed free port) injects, per request,
10 % ServiceUnavailable (503), 5 % Throttling.User with ``x-acs-retry-after``, 2 % timeouts, 1 % malformed
JSON, 1 % connection resets and latency with jitter; about 2 % of the generated fleet also answers a
forced error (EcsError, NotAuthorized, DbError) every time. Halfway through, the simulator is SIGKILLed
and restarted on the same port, and the exporter must recover on its own.

What must hold:

- the exporter never exits, and stops cleanly (exit 0) on SIGTERM at the end; no traceback in its logs;
- ``/metrics`` answers 200 to every scrape of a scraper that runs the whole time (text, OpenMetrics,
  gzip), and no scrape or log line carries a registry password, registry user name or the AccessKey
  secret;
- after every refresh cycle each image is either fresh (``up 1``, last success within that cycle, no
  ``last_error_info``) or marked stale (``up 0`` and exactly one ``last_error_info``);
- ``ehpc_api_errors_total`` by (action, code) equals the simulator's own count of what it answered, and
  the exporter's successes (requests minus errors) equal the simulator's ``Success`` count: nothing lost,
  nothing counted twice.

How the comparison is made exact: the simulator counts every answer before the client can see it (an
injected timeout when the request arrives), the client's timeout (10 s) is far above any answer's time,
and the per-image deadline is longer than all retries, so no attempt is cut short uncounted. Counts are
compared between cycles, which the test starts itself (SIGHUP; the timer's interval is an hour), so
nothing runs between the end of one and the start of the next, however long a cycle takes on a busy
machine: after a cycle ends, the exporter's counters are read, then the simulator's, then the
exporter's again, and they must not have moved in between. The simulator's counters die with it, so
the kill happens right after a quiescent checkpoint, and the second lifetime is compared against the
exporter's counts since then; while it is down the exporter's attempts are refused, which only adds
``ConnectionError``s, so every other code must match exactly and the successes too.

``SOAK_SECONDS`` (default 40) is the time under faults; ``scripts/soak.sh`` runs it for half an hour.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from ehpc_simulator import SimImage, generate_fleet
from tests.harness import (
    ExporterProcess,
    HarnessError,
    SecretScanner,
    SimulatorProcess,
    api_counts,
    exporter_config,
    free_port,
    http_get,
    processes,
    quick_samples,
    start_exporter,
    start_simulator,
)
from tests.reliability import Reliability

pytestmark = pytest.mark.process

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "40"))
FLEET_SIZE = 1000
REGIONS = ["cn-beijing", "cn-shanghai"]
# Cycles are started by the test (see next_checkpoint), not by the timer: after one ends nothing runs
# until the next is asked for, however long a cycle takes on a busy machine.
INTERVAL = 3600.0
# A scrape that gets no answer within this long is a failure: it bounds a hang, it does not judge speed
# (the slowest scrape is recorded for the terminal summary; scrape latency under refreshes is
# bench/scrape.py's).
SCRAPE_TIMEOUT_SECONDS = 60.0
FAULTS: dict[str, Any] = {
    "error_rates": {"ServiceUnavailable": 0.10, "Throttling.User": 0.05},
    "retry_after_ms": 50,
    "timeout_rate": 0.02,
    "timeout_seconds": 30,  # longer than the client's 10 s timeout: the client gives up first
    "malformed_rate": 0.01,
    "reset_rate": 0.01,
    "latency_ms": 10,
    "jitter_ms": 10,
    "seed": 20240501,
}
INJECTED = ("ServiceUnavailable", "Throttling.User", "Timeout", "InvalidResponse", "ConnectionError")
FORCED = ("EcsError", "NotAuthorized", "DbError")  # generate_fleet's images that always fail
REFUSED = "ConnectionError"  # what the exporter sees while the simulator is down
SCRAPE_VARIANTS: tuple[dict[str, str], ...] = (
    {},
    {"Accept": "application/openmetrics-text; version=1.0.0"},
    {"Accept-Encoding": "gzip"},
    {"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"},
)

# The soak's report rows: case -> what must hold.
EXPECTED = {
    "exporter process": "never exits under faults or a simulator crash; exit 0 on SIGTERM; no traceback",
    "scrapes during the soak": "every /metrics scrape (text, OpenMetrics, gzip) answers 200",
    "freshness after every cycle": (
        "each image fresh (up 1, success this cycle) or stale (up 0 + one last_error_info)"
    ),
    "error accounting, first simulator lifetime": (
        "errors by (action, code) and successes equal the simulator's counts"
    ),
    "simulator killed": "every image marked stale with ConnectionError while it is down; /metrics still 200",
    "simulator restarted": "images return to up 1 without an exporter restart",
    "error accounting, second simulator lifetime": (
        "every code and the successes equal the simulator's; extra ConnectionErrors only from refusals"
        " while it was down"
    ),
    "faults stopped": (
        "a clean cycle: every image up 1 except the fleet's forced-error images, which show their code"
    ),
}

Counts = dict[tuple[str, str], int]


def soak_fleet() -> tuple[list[SimImage], dict[str, str]]:
    """The generated fleet with fresh random registry credentials; returns the images and the secrets."""
    images = generate_fleet(FLEET_SIZE, REGIONS, seed=11)
    secrets: dict[str, str] = {}
    for image in images:
        if image.image_type == "Container":
            image.registry_username = f"soakuser{uuid.uuid4().hex}"
            image.registry_password = f"soakpw{uuid.uuid4().hex}"
            secrets[image.registry_username] = "registry user name"
            secrets[image.registry_password] = "registry password"
    return images, secrets


@dataclass(eq=False)  # a Thread must stay hashable
class Scraper(threading.Thread):
    """Scrapes /metrics back to back in every format until stopped; keeps every failure."""

    url: str
    scanner: SecretScanner
    scrapes: int = 0
    bytes_read: int = 0
    failures: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    max_seconds: float = 0.0
    stop_event: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        super().__init__(name="soak-scraper", daemon=True)

    def run(self) -> None:
        """Scrape until ``stop_event`` is set (a short pause between scrapes keeps the CPU for the rest)."""
        n = 0
        while not self.stop_event.is_set():
            headers = SCRAPE_VARIANTS[n % len(SCRAPE_VARIANTS)]
            n += 1
            start = time.monotonic()
            try:
                status, resp_headers, body = http_get(
                    f"{self.url}/metrics", headers, timeout=SCRAPE_TIMEOUT_SECONDS
                )
            except Exception as exc:  # a refused or reset scrape is exactly what this records
                self.failures.append(f"{headers}: {type(exc).__name__}: {exc}")
                continue
            self.max_seconds = max(self.max_seconds, time.monotonic() - start)
            self.scrapes += 1
            if status != 200:
                self.failures.append(f"{headers}: HTTP {status}")
                continue
            if resp_headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            self.bytes_read += len(body)
            text = body.decode()
            if "openmetrics" in headers.get("Accept", "") and not text.endswith("# EOF\n"):
                self.failures.append(f"{headers}: OpenMetrics answer without a final # EOF")
            self.leaks += self.scanner.find(text)
            self.stop_event.wait(0.05)


@dataclass
class Checkpoint:
    """The exporter's state right after one refresh cycle, taken while nothing was in flight."""

    refreshed_at: float
    requests: int
    errors: Counts
    sim: Counts
    up: dict[str, float]
    last_success: dict[str, float]
    last_error: dict[str, list[str]]
    cycle_start: float


def refresh_timestamp(text: str) -> float | None:
    """``ehpc_refresh_last_success_timestamp_seconds`` of an exposition, if it has one yet."""
    found = quick_samples(text, ("ehpc_refresh_last_success_timestamp_seconds",))
    return found[0][2] if found else None


def sim_counts(sim: SimulatorProcess) -> Counts:
    """The simulator's answers by (action, code)."""
    out: Counts = {}
    for (action, code, _status), n in sim.counters().items():
        out[action, code] = out.get((action, code), 0) + n
    return out


def next_checkpoint(exporter: ExporterProcess, sim: SimulatorProcess | None, after: float) -> Checkpoint:
    """Start a cycle unless one ended after ``after`` already, wait for it to end, and return a
    quiescent checkpoint of it.

    A cycle is started by SIGHUP: a reload (of the same file) starts the next cycle at once. So the
    moment after it ends is quiet by construction, whatever a cycle takes; counters that still moved
    while the simulator was read (never expected) make it start and wait for another.
    """
    deadline = time.monotonic() + 300  # bounds a hang only
    started = False
    while time.monotonic() < deadline:
        exporter.check_alive()
        text = exporter.metrics_text()
        ts = refresh_timestamp(text)
        if ts is None or ts <= after:
            if not started and exporter.popen is not None:
                exporter.popen.send_signal(signal.SIGHUP)
                started = True
            time.sleep(0.2)
            continue
        requests_a, errors_a = api_counts(text)
        if sim is None:
            return build_checkpoint(text, ts, sum(requests_a.values()), errors_a, {})
        sim_now = sim_counts(sim) if sim is not None else {}
        requests_b, errors_b = api_counts(exporter.metrics_text())
        if (requests_a, errors_a) != (requests_b, errors_b):
            after, started = ts, False  # not quiet: start and wait for another cycle
            continue
        return build_checkpoint(text, ts, sum(requests_a.values()), errors_a, sim_now)
    raise HarnessError(f"no quiescent refresh cycle after {after} within the deadline:\n{exporter.tail()}")


def build_checkpoint(text: str, ts: float, requests: int, errors: Counts, sim: Counts) -> Checkpoint:
    """Per-image state and counters of one exposition."""
    up: dict[str, float] = {}
    last_success: dict[str, float] = {}
    last_error: dict[str, list[str]] = {}
    duration = 0.0
    names = (
        "ehpc_image_up",
        "ehpc_image_last_success_timestamp_seconds",
        "ehpc_image_last_error_info",
        "ehpc_refresh_duration_seconds",
    )
    for name, labels, value in quick_samples(text, names):
        if name == "ehpc_refresh_duration_seconds":
            duration = value
        elif name == "ehpc_image_up":
            up[labels["image_id"]] = value
        elif name == "ehpc_image_last_success_timestamp_seconds":
            last_success[labels["image_id"]] = value
        elif value == 1:
            last_error.setdefault(labels["image_id"], []).append(labels["code"])
    return Checkpoint(ts, requests, errors, sim, up, last_success, last_error, ts - duration)


def freshness_violations(cp: Checkpoint, watched: list[str]) -> list[str]:
    """Images neither fresh nor marked stale in this checkpoint."""
    bad = []
    for image_id in watched:
        up = cp.up.get(image_id)
        errors = cp.last_error.get(image_id, [])
        if up == 1:
            # 1 ms of slack: both timestamps are wall-clock floats rendered with limited precision.
            if cp.last_success.get(image_id, 0) < cp.cycle_start - 0.001 or errors:
                bad.append(
                    f"{image_id}: up 1 but last success {cp.last_success.get(image_id)} / errors {errors}"
                )
        elif up == 0:
            if len(errors) != 1:
                bad.append(f"{image_id}: up 0 with last_error_info {errors}")
        else:
            bad.append(f"{image_id}: up is {up}")
    return bad


def accounting_mismatches(
    requests: int, errors: Counts, sim: Counts, *, refused_allowed: bool
) -> tuple[list[str], int]:
    """Differences between the exporter's counts and the simulator's; also how many were refused.

    With ``refused_allowed`` the exporter may have extra ``ConnectionError``s (attempts refused while the
    simulator was down); every other code and the successes must still match exactly.
    """
    problems = []
    codes = {k for k, n in errors.items() if n} | {k for k in sim if k[1] != "Success"}
    for key in sorted(codes):
        mine, theirs = errors.get(key, 0), sim.get(key, 0)
        if key[1] == REFUSED and refused_allowed:
            if mine < theirs:
                problems.append(f"{key}: exporter {mine} < simulator {theirs}")
        elif mine != theirs:
            problems.append(f"{key}: exporter {mine} != simulator {theirs}")
    successes = requests - sum(errors.values())
    sim_successes = sum(n for (_a, code), n in sim.items() if code == "Success")
    if successes != sim_successes:
        problems.append(f"successes: exporter {successes} != simulator {sim_successes}")
    refused = sum(errors.get(k, 0) for k in errors if k[1] == REFUSED) - sum(
        n for k, n in sim.items() if k[1] == REFUSED
    )
    return problems, refused


def minus(a: Counts, b: Counts) -> Counts:
    """``a - b`` per key."""
    return {k: a.get(k, 0) - b.get(k, 0) for k in set(a) | set(b)}


def test_fault_soak(tmp_path: Path, reliability: Reliability) -> None:
    """Faults, a simulator crash and restart: no crash, every scrape 200, fresh-or-stale, exact accounting."""
    images, registry_secrets = soak_fleet()
    access_key_id, access_key_secret = "soak-access-key", f"soaksecret{uuid.uuid4().hex}"
    scanner = SecretScanner({**registry_secrets, access_key_secret: "AccessKey secret"})
    fleet = tmp_path / "fleet.json"
    fleet.write_text(json.dumps({"images": [asdict(i) for i in images]}))
    watched = sorted(i.image_id for i in images)
    forced = {i.image_id: i.error for i in images if i.error}
    assert set(forced.values()) == set(FORCED)
    config = exporter_config(
        "http://127.0.0.1:0",  # replaced below once the simulator's port is known
        [{"id": i.image_id, "type": i.image_type, "additional_regions": REGIONS} for i in images],
        interval=INTERVAL,
        access_key_id=access_key_id,
        access_key_secret=access_key_secret,
        api={
            # Far above any answer's time on a busy machine: an answer the simulator counted must never
            # reach a client that already gave up (it would count a Timeout the simulator never sent).
            "timeout_seconds": 10,
            "connect_timeout_seconds": 10,
            "max_concurrency": 50,
            "retry": {
                "max_attempts": 3,
                "base_delay_seconds": 0.05,
                "max_delay_seconds": 0.2,
                "max_elapsed_seconds": 60,  # above 3 attempts of 10 s: no attempt is cut by the deadline
            },
        },
        refresh={"image_timeout_seconds": 120},  # longer than every retry: no attempt is cut off uncounted
    )
    sim_port = free_port()
    sim_args = ["--access-key", f"{access_key_id}:{access_key_secret}"]
    cases = {name: reliability.case("soak", name, expected) for name, expected in EXPECTED.items()}
    leak_case = reliability.case(
        "leaks",
        "soak: every scrape and the exporter's whole log",
        "no registry password, registry user name or AccessKey secret",
    )

    with processes() as procs:
        sim = start_simulator(tmp_path / "sim", fleet, port=sim_port, extra_args=sim_args)
        procs.append(sim)
        sim.set_faults(**FAULTS)
        config["api"]["endpoint"] = sim.url
        exporter = start_exporter(tmp_path / "exporter", config)
        procs.append(exporter)
        pid = exporter.popen.pid if exporter.popen else None
        scraper = Scraper(exporter.url, scanner)
        scraper.start()
        violations: list[str] = []
        checkpoints = 0
        try:
            # Lifetime 1 of the simulator: faults for half the soak, a checkpoint after every cycle.
            started = time.monotonic()
            cp = next_checkpoint(exporter, sim, 0)
            while True:
                checkpoints += 1
                violations += freshness_violations(cp, watched)
                problems, _ = accounting_mismatches(cp.requests, cp.errors, cp.sim, refused_allowed=False)
                if problems or time.monotonic() - started >= SOAK_SECONDS / 2:
                    break
                cp = next_checkpoint(exporter, sim, cp.refreshed_at)
            seen = sorted(code for code in INJECTED + FORCED if cp.sim.get(("GetImage", code), 0) > 0)
            cases["error accounting, first simulator lifetime"].observe(
                f"equal for every code ({', '.join(seen)}) and for successes"
                if not problems
                else f"mismatch: {'; '.join(problems)}",
                not problems and len(seen) == len(INJECTED + FORCED),
            )

            # Kill it right after a quiescent checkpoint, so its counters are all in `cp`.
            sim.kill()
            killed_at = time.time()
            base_requests, base_errors = cp.requests, cp.errors
            down = next_checkpoint(exporter, None, cp.refreshed_at)
            while down.cycle_start < killed_at:  # that cycle began while the simulator still answered
                down = next_checkpoint(exporter, None, down.refreshed_at)
            down_bad = [i for i in watched if down.up.get(i) != 0 or down.last_error.get(i) != [REFUSED]]
            down_violations = freshness_violations(down, watched)
            cases["simulator killed"].observe(
                "every image up 0 with last_error_info code ConnectionError; /metrics 200"
                if not down_bad and not down_violations
                else f"{len(down_bad)} images not marked stale with ConnectionError, e.g. {down_bad[:3]}",
                not down_bad and not down_violations,
            )

            sim.start()
            sim.wait_ready()
            sim.set_faults(**FAULTS)
            restarted, restarted_at = time.monotonic(), time.time()
            cp = next_checkpoint(exporter, sim, down.refreshed_at)
            # The first cycle that began after the restart (on a busy machine the restart can take longer
            # than the gap to the next cycle, which then begins while the simulator is still down).
            while cp.cycle_start < restarted_at:
                checkpoints += 1
                violations += freshness_violations(cp, watched)
                cp = next_checkpoint(exporter, sim, cp.refreshed_at)
            recovered = sum(1 for i in watched if cp.up.get(i) == 1)
            same_pid = exporter.popen is not None and exporter.popen.pid == pid and exporter.alive()
            cases["simulator restarted"].observe(
                f"{'most' if recovered >= 0.9 * FLEET_SIZE else 'too few'} images up 1 again at the first"
                f" cycle after the restart; {'same' if same_pid else 'DIFFERENT'} exporter process",
                recovered >= 0.9 * FLEET_SIZE and same_pid,
            )

            # Lifetime 2: the same faults for the other half.
            while True:
                checkpoints += 1
                violations += freshness_violations(cp, watched)
                problems, refused = accounting_mismatches(
                    cp.requests - base_requests, minus(cp.errors, base_errors), cp.sim, refused_allowed=True
                )
                if problems or time.monotonic() - restarted >= SOAK_SECONDS / 2:
                    break
                cp = next_checkpoint(exporter, sim, cp.refreshed_at)

            # Faults off: one clean cycle, then the final exact comparison.
            sim.set_faults()
            cp = next_checkpoint(exporter, sim, cp.refreshed_at)
            cp = next_checkpoint(exporter, sim, cp.refreshed_at)  # the first may have begun under faults
            checkpoints += 1
            violations += freshness_violations(cp, watched)
            problems, refused = accounting_mismatches(
                cp.requests - base_requests, minus(cp.errors, base_errors), cp.sim, refused_allowed=True
            )
            cases["error accounting, second simulator lifetime"].observe(
                "every code and the successes equal; the extra ConnectionErrors are the refusals while it was"
                " down"
                if not problems and refused > 0
                else f"mismatch: {'; '.join(problems) or f'refused {refused}'}",
                not problems and refused > 0,
            )
            not_clean = [
                i
                for i in watched
                if (cp.up.get(i), cp.last_error.get(i, [None])[0])
                != ((0, forced[i]) if i in forced else (1, None))
            ]
            cases["faults stopped"].observe(
                f"clean cycle: all up 1 but the {len(forced)} forced-error images, each with its code"
                if not not_clean
                else f"{len(not_clean)} images not as expected, e.g. {not_clean[:3]}",
                not not_clean,
            )
            cases["freshness after every cycle"].observe(
                "held at every checkpoint"
                if not violations
                else f"{len(violations)} violations: {violations[:3]}",
                not violations and checkpoints >= 4,
            )
        finally:
            scraper.stop_event.set()
            scraper.join(timeout=30)
        cases["scrapes during the soak"].observe(
            "every scrape answered 200"
            if not scraper.failures and scraper.scrapes >= 20
            else f"{len(scraper.failures)} failed of {scraper.scrapes}: {scraper.failures[:3]}",
            not scraper.failures and scraper.scrapes >= 20,
        )
        # Recorded, never judged: how long a scrape takes depends on how busy the machine is.
        reliability.measure(
            "soak", "slowest /metrics scrape (1,000 images, under faults)", scraper.max_seconds * 1000, "ms"
        )
        alive = exporter.alive() and exporter.popen is not None and exporter.popen.pid == pid
        rc = exporter.stop()
        log = exporter.output()
        cases["exporter process"].observe(
            f"{'ran throughout' if alive else 'DIED'}; exit {rc} on SIGTERM;"
            f" {'a traceback' if 'Traceback' in log else 'no traceback'} in its log",
            alive and rc == 0 and "Traceback" not in log,
        )
        leaks = scraper.leaks + scanner.find(log)
        leak_case.observe(
            "none found" if not leaks else f"found: {sorted(set(leaks))}",
            not leaks and len(scanner) > 100 and scraper.bytes_read > 0,
        )
        # The logs stay in tmp_path (pytest keeps the last runs) for a look after a failure.
        (tmp_path / "soak-summary.yaml").write_text(
            yaml.safe_dump({"scrapes": scraper.scrapes, "checkpoints": checkpoints, "refused": refused})
        )
