"""The state file (exporter.state): what is saved comes back whole, a restart serves it at once, and a file
that cannot be used starts the exporter cold without losing anything or serving garbage."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import (
    Config,
    DiscoveryConfig,
    LimitsConfig,
    Scope,
    ShardingConfig,
    StatusConfig,
    WatchedImage,
)
from exporter.config.schema import MAX_REGIONS_PER_IMAGE
from exporter.exposition.selfmetrics import StateMetrics
from exporter.history import ImageHistory, ReplicaHistory
from exporter.models import CODE, ID, LABEL, REQUEST_ID, STATUS, URL, Kind, check_text
from exporter.models import REGION as REGION_KIND
from exporter.redaction import contains_secret, registered_secret_count
from exporter.sharding import in_shard
from exporter.snapshot import ImageError, ImageFacts, ImageKey, ImageState, Replica, Snapshot
from exporter.state import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, StateStore
from exporter.state_db import MAX_VALUE_BYTES
from exporter.state_rows import decode_row, encode_row
from tests.harness import (
    ExporterProcess,
    SimulatorProcess,
    exporter_config,
    quick_samples,
    start_exporter,
    start_simulator,
    wait_until,
)
from tests.reliability import Reliability

pytestmark = pytest.mark.process  # most tests here start real processes (make test-fast skips the file)

SCOPE = Scope("default", "cn-hangzhou")
TIME = st.floats(min_value=0, max_value=4e9, allow_nan=False)
# The API's creation times the gate keeps (models.parse_time: 2000-01-01 to 2200-01-01, exclusive here).
CREATED = st.integers(min_value=946_684_800, max_value=7_258_118_399).map(
    lambda t: datetime.fromtimestamp(t, UTC)
)


def gated(kind: Kind, *, min_size: int = 0) -> st.SearchStrategy[str]:
    """Values the ingestion gate lets in unchanged as ``kind`` (what a state file holds)."""
    base = st.text(max_size=40) if kind.pattern is None else st.from_regex(kind.pattern, fullmatch=True)
    return base.filter(lambda v: min_size <= len(v) <= kind.max_length and _passes(v, kind))


def _passes(value: str, kind: Kind) -> bool:
    try:
        return check_text(value, kind) == value
    except ValueError:
        return False


LABEL_T = gated(LABEL)
STATUS_T = st.one_of(st.just(""), gated(STATUS))
REGION = st.sampled_from(["cn-beijing", "cn-shanghai", "ap-southeast-1"])

FACTS = st.builds(
    ImageFacts,
    image_type=gated(STATUS, min_size=1),
    name=LABEL_T,
    version=LABEL_T,
    app_id=LABEL_T,
    status=STATUS_T,
    size_bytes=st.one_of(st.none(), st.integers(min_value=0, max_value=2**62)),
    create_time=st.one_of(st.none(), CREATED),
    os_tag=LABEL_T,
    platform=LABEL_T,
    architecture=LABEL_T,
    # What registry_url leaves of an answer's URL: no userinfo, query or fragment.
    registry_url=gated(URL).filter(lambda u: not ({"@", "?", "#"} & set(u))),
    additional_regions=st.lists(
        st.builds(Replica, REGION, STATUS_T), max_size=3, unique_by=lambda r: r.region_id
    ).map(tuple),
    ignored=st.lists(gated(CODE, min_size=1), max_size=2).map(tuple),
)
HISTORY = st.builds(
    ImageHistory,
    status=STATUS_T,
    since=TIME,
    changes=st.integers(min_value=0, max_value=10**6),
    replicas=st.lists(
        st.builds(ReplicaHistory, REGION, st.one_of(st.none(), STATUS_T), TIME, st.one_of(st.none(), TIME)),
        max_size=3,
        unique_by=lambda r: r.region_id,
    ).map(tuple),
)
STATES = st.builds(
    ImageState,
    watched=st.builds(
        WatchedImage,
        image_id=st.just("m-state0000000000001"),
        image_type=st.sampled_from(["VM", "Container"]),
        image_category=st.sampled_from([None, "Public", "Custom"]),
        additional_region_ids=st.lists(REGION, max_size=3, unique=True).map(tuple),
    ),
    image=st.one_of(st.none(), FACTS),
    last_success=st.one_of(st.none(), TIME),
    error=st.one_of(
        st.none(),
        st.builds(
            ImageError,
            gated(CODE, min_size=1),
            st.integers(0, 599),
            st.one_of(st.none(), gated(REQUEST_ID)),
            TIME,
            st.just(""),  # the reason is not saved (exporter.snapshot.ImageError): none to read back
        ),
    ),
    scope=st.just(SCOPE),
    history=st.one_of(st.none(), HISTORY),
)


@settings(max_examples=300)
@given(STATES)
def test_a_saved_state_reads_back_equal(state: ImageState) -> None:
    """Every field of an image's state survives the row (times, every value the gate lets in, absent
    values): nothing the exporter saves is refused when it is read back."""
    assert decode_row(SCOPE, state.image_id, encode_row(state), state.last_success) == state


def _mutations(row: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A row with one value swapped for something of the wrong kind or out of bounds, or a key added."""
    paths: list[tuple[str, ...]] = []

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                paths.append((*path, key))
                walk(value, (*path, key))

    walk(row, ())
    bad = st.one_of(
        st.integers(min_value=-(2**70), max_value=-1),
        st.just(2**80),
        st.just("x" * 5000),
        st.just([["r"] * 3] * 2000),
        st.booleans(),
        st.dictionaries(st.text(max_size=40), st.text(max_size=40), max_size=2),
        st.just(-1.5),
        st.just(1e300),
    )

    def mutate(path: tuple[str, ...], value: Any) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(json.dumps(row))
        node = out
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return out

    swapped = st.builds(mutate, st.sampled_from(paths), bad)
    added = st.builds(
        lambda extra: {**row, extra: 1}, st.text(min_size=1, max_size=5).filter(lambda k: k not in row)
    )
    return st.one_of(swapped, added)


def _full_state() -> ImageState:
    facts = ImageFacts(
        "VM",
        "n",
        "1",
        "app",
        "Available",
        10,
        None,
        "os",
        "linux",
        "x86_64",
        "r.example.com/a",
        (Replica("cn-beijing", "Available"),),
    )
    history = ImageHistory("Available", 1.0, 2, (ReplicaHistory("cn-beijing", "Available", 1.0, None),))
    error = ImageError("Throttling.User", 400, "req", 5.0)
    return ImageState(WatchedImage("m-1", "VM", None, ("cn-beijing",)), facts, 3.0, error, SCOPE, history)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_tampered_row_is_refused_whole(data: st.DataObject) -> None:
    """A row with any value of the wrong kind or out of the gate's bounds does not decode: the loader
    drops it (ValueError), it never reaches a snapshot, and nothing else is raised."""
    row = json.loads(encode_row(_full_state()))
    bad = data.draw(_mutations(row))
    try:
        state = decode_row(SCOPE, "m-1", json.dumps(bad), 3.0)
    except ValueError:  # pydantic's ValidationError is one
        return
    # The only mutations that may pass are those a real state could hold (an int where a float goes).
    assert decode_row(SCOPE, "m-1", encode_row(state), state.last_success) == state


def test_a_stored_registry_url_with_userinfo_is_refused_and_teaches_nothing() -> None:
    """A file edited to put credentials into a registry URL: the row is refused (the gate never leaves
    userinfo in a URL), and nothing in it is learned as a secret (which would make answers refused)."""
    row = json.loads(encode_row(_full_state()))
    before = registered_secret_count()
    for url in (
        "https://puller:hunter2hunter2@registry.example.com/ns/repo",
        "registry.example.com/ns/repo?token=abc",
        "registry.example.com/ns/repo#frag",
    ):
        row["facts"]["registry_url"] = url
        with pytest.raises(ValueError, match=r"facts\.registry_url"):
            decode_row(SCOPE, "m-1", json.dumps(row), 3.0)
    assert registered_secret_count() == before
    assert not contains_secret("hunter2hunter2")


# ------------------------------------------------------------------------------------------ processes

IMAGES = [f"m-statetest{i:09d}" for i in range(12)]
FLEET = {
    "images": [
        {"image_id": image_id, "name": f"img{i}", "regions": {"cn-beijing": "Available"}}
        for i, image_id in enumerate(IMAGES)
    ]
}
WATCHED = [{"id": image_id, "additional_regions": ["cn-beijing"]} for image_id in IMAGES]
TRACKED = (
    "ehpc_image_last_success_timestamp_seconds",
    "ehpc_image_status_since_timestamp_seconds",
    "ehpc_image_replication_since_timestamp_seconds",
    "ehpc_image_status_changes_total",
    "ehpc_image_up",
)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimulatorProcess]:
    fleet = tmp_path / "fleet.json"
    fleet.write_text(json.dumps(FLEET))
    sim = start_simulator(tmp_path / "sim", fleet)
    try:
        yield sim
    finally:
        sim.stop()


def _config(sim: SimulatorProcess, state: Path) -> dict[str, Any]:
    # Generous timeouts: while the simulator stalls answers, a cycle takes the stall, not a timeout.
    return exporter_config(
        sim.url,
        WATCHED,
        api={"timeout_seconds": 60, "retry": {"max_attempts": 1}},
        refresh={"image_timeout_seconds": 60},
        state={"path": str(state)},
    )


def _saved(exporter: ExporterProcess) -> bool:
    """The exporter has saved at least once (its last-save sample exists)."""
    return bool(quick_samples(exporter.metrics_text(), ("ehpc_state_last_save_timestamp_seconds",)))


def _tracked(exporter: ExporterProcess) -> dict[tuple[str, str, str], float]:
    found = quick_samples(exporter.metrics_text(), TRACKED)
    return {(n, labels["image_id"], labels.get("replication_region", "")): v for n, labels, v in found}


def _stalled(sim: SimulatorProcess) -> bool:
    """The simulator holds a GetImage it received after every answer was set to stall."""
    return sim.counters().get(("GetImage", "Timeout", 0), 0) >= 1


def test_kill_9_then_a_warm_start_serves_the_same_history_before_any_refresh(
    sim: SimulatorProcess, tmp_path: Path
) -> None:
    """Killed with SIGKILL while a refresh is stalled, the exporter comes back serving, before any refresh
    of its own can complete, the last-success and since-timestamps it served before, from the state file.
    (How soon after start is a measurement: bench/warmstart.py, WARM_LIMIT_SECONDS.)"""
    state = tmp_path / "state" / "state.db"
    state.parent.mkdir()
    doc = _config(sim, state)
    first = start_exporter(tmp_path / "first", doc)
    try:
        sim.admin("PUT", f"images/{IMAGES[0]}/regions/cn-beijing", {"status": "Creating"})
        sim.admin("PATCH", f"images/{IMAGES[1]}", {"status": "Creating"})
        wait_until(
            lambda: _tracked(first).get(("ehpc_image_status_changes_total", IMAGES[1], "")) == 1,
            15,
            "the status change seen",
        )
        # From now on every GetImage stalls (longer than the test, shorter than the config's timeouts)
        # and is counted as it arrives. One counted means a cycle has begun after the previous one was
        # published and saved (a cycle waits for its predecessor's save), and none can complete: what
        # /metrics shows now is what the file holds.
        sim.admin("PATCH", "faults", {"timeout_rate": 1, "timeout_seconds": 55})
        wait_until(lambda: _stalled(sim), 15, "a GetImage stalled")
        before = _tracked(first)
        first.kill()
    finally:
        first.stop()
    assert len([k for k in before if k[0] == TRACKED[0]]) == len(IMAGES)

    second = start_exporter(tmp_path / "second", doc, wait=None)
    try:

        def served() -> dict[tuple[str, str, str], float] | None:
            second.check_alive()
            try:
                found = _tracked(second)
            except OSError:
                return None
            return found if len([k for k in found if k[0] == TRACKED[0]]) == len(IMAGES) else None

        after = wait_until(served, 30, "the saved images served", interval=0.05)
        text = second.metrics_text()
        ready = second.get("/readyz")
    finally:
        second.stop()
    assert after == before  # up included: no refresh of the second exporter completed
    assert ("ehpc_state_loaded_images", {}, float(len(IMAGES))) in quick_samples(
        text, ("ehpc_state_loaded_images",)
    )
    assert ready[0] == 200


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xffnot sqlite at all" * 100)


def _truncated(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,)] * 200)
    conn.commit()
    conn.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _zeroed_header(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    data = bytearray(path.read_bytes())
    data[:100] = bytes(100)
    path.write_bytes(bytes(data))


def _another_program(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()


def _newer_schema(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.execute("CREATE TABLE future (x)")
    conn.commit()
    conn.close()


def _our_mark_other_tables(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    conn.execute("CREATE TABLE images (account TEXT, region_id TEXT, image_id TEXT, state TEXT, last REAL)")
    conn.commit()
    conn.close()


RECURSE = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)"


def _trigger_laden(path: Path) -> None:
    """This exporter's mark, version and tables, and what would hang start-up (a view in the place of
    a table, read before the server listens), every save (an endless insert trigger, a delete trigger)
    and fill the disk (a growth trigger), had any of it run."""
    conn = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    conn.executescript(
        "CREATE TABLE marks (x);"
        " DROP TABLE scopes;"
        " CREATE VIEW scopes (account, region_id, refreshed_at, duration_seconds, discovery) AS"
        " RECURSE SELECT x, x, x, x, x FROM c;"
        " CREATE TRIGGER spin AFTER INSERT ON successes BEGIN INSERT INTO marks RECURSE SELECT x FROM c; END;"
        " CREATE TRIGGER stall BEFORE DELETE ON images BEGIN SELECT (RECURSE SELECT count(*) FROM c); END;"
        " CREATE TRIGGER grow AFTER INSERT ON images BEGIN"
        " INSERT INTO marks SELECT zeroblob(100000) FROM (RECURSE SELECT x FROM c); END;".replace(
            "RECURSE", RECURSE
        )
    )
    conn.commit()
    conn.close()


BAD_FILES: list[tuple[str, str, Callable[[Path], None]]] = [
    ("not a database", "corrupt", _garbage),
    ("truncated database", "corrupt", _truncated),
    ("zeroed header", "corrupt", _zeroed_header),
    ("another program's database", "foreign", _another_program),
    ("newer schema version", "foreign", _newer_schema),
    ("our mark on other tables", "foreign", _our_mark_other_tables),
    ("triggers and views (endless, growing, a view in a table's place)", "foreign", _trigger_laden),
]
REASONS = ("corrupt", "foreign", "locked", "unreadable", "row")


def _load_errors(exporter: ExporterProcess) -> dict[str, float]:
    found = quick_samples(exporter.metrics_text(), ("ehpc_state_load_errors_total",))
    return {labels["reason"]: v for _, labels, v in found}


def _save_errors(exporter: ExporterProcess) -> float:
    found = quick_samples(exporter.metrics_text(), ("ehpc_state_save_errors_total",))
    return found[0][2] if found else 0.0


def _rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM images").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize(("name", "reason", "make"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_an_unusable_file_is_moved_aside_counted_and_the_start_is_cold(
    name: str,
    reason: str,
    make: Callable[[Path], None],
    sim: SimulatorProcess,
    tmp_path: Path,
    reliability: Reliability,
) -> None:
    """Corrupt and foreign files: moved aside with their bytes unchanged, counted by reason, a new file
    made; the exporter serves fresh data, saves into the new file and stops on SIGTERM (exit 0). A file
    whose triggers and views would hang start-up or a save is one of them: none of it runs."""
    record = reliability.case(
        "state file",
        name,
        f"moved aside unchanged; counted {reason}; cold start serving; saves into a new file",
    )
    state = tmp_path / "state" / "state.db"
    state.parent.mkdir()
    make(state)
    original = state.read_bytes()
    exporter = start_exporter(tmp_path / "exporter", _config(sim, state))
    try:
        wait_until(lambda: _saved(exporter), 10, "a save")
        errors = _load_errors(exporter)
        log = exporter.output()
    finally:
        rc = exporter.stop()
    moved = [p for p in state.parent.iterdir() if p.name.startswith(f"state.db.{reason}-")]
    unchanged = len(moved) == 1 and moved[0].read_bytes() == original
    counted = errors == {r: (1.0 if r == reason else 0.0) for r in REASONS}
    rows = _rows(state)
    record.observe(
        f"{'moved aside unchanged' if unchanged else f'moved: {[p.name for p in moved]}'}; load errors"
        f" {errors}; {rows} images saved; exit {rc}" + ("; TRACEBACK" if "Traceback" in log else ""),
        unchanged and counted and rows == len(IMAGES) and rc == 0 and "Traceback" not in log,
    )


def test_a_file_held_by_another_exporter_is_left_alone(
    sim: SimulatorProcess, tmp_path: Path, reliability: Reliability
) -> None:
    """A second exporter on the same file: counted as locked, the file neither moved nor written, the
    exporter serves cold, and saves count errors until the first lets go; then they work."""
    record = reliability.case(
        "state file",
        "held by another process",
        "left in place; counted locked; serving cold; saves fail while held, work once released",
    )
    state = tmp_path / "state.db"
    holder = sqlite3.connect(state, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    exporter = start_exporter(tmp_path / "exporter", _config(sim, state))
    try:
        wait_until(lambda: _save_errors(exporter) >= 1, 10, "a failed save")
        errors = _load_errors(exporter)
        moved = [p.name for p in tmp_path.iterdir() if p.name.startswith("state.db.")]
        holder.execute("ROLLBACK")
        holder.close()
        wait_until(lambda: _saved(exporter), 10, "a save after the release")
        log = exporter.output()
    finally:
        rc = exporter.stop()
    rows = _rows(state)
    record.observe(
        f"load errors {errors}; moved {moved}; saves failed then worked; {rows} images saved; exit {rc}",
        errors["locked"] == 1 and not moved and rows == len(IMAGES) and rc == 0 and "Traceback" not in log,
    )


@contextlib.contextmanager
def _tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``where`` (the test runs as root, as CI does; mount failing fails the test)."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True, timeout=10)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True, timeout=10)


@pytest.mark.parametrize("case", ["read-only directory", "directory that does not exist"])
def test_a_directory_it_cannot_write_starts_cold_and_counts(
    case: str, sim: SimulatorProcess, tmp_path: Path, reliability: Reliability
) -> None:
    """Nowhere to write: counted unreadable, the exporter serves fresh data, every save is counted."""
    record = reliability.case(
        "state file", case, "counted unreadable; serving cold; every save counted as failed; exit 0"
    )
    with contextlib.ExitStack() as stack:
        if case == "read-only directory":
            where = stack.enter_context(_tmpfs(tmp_path / "ro", "ro,size=1m"))
        else:
            where = tmp_path / "missing"
        exporter = start_exporter(tmp_path / "exporter", _config(sim, where / "state.db"))
        try:
            wait_until(lambda: _save_errors(exporter) >= 2, 10, "failed saves")
            errors = _load_errors(exporter)
            up = quick_samples(exporter.metrics_text(), ("ehpc_image_up",))
            log = exporter.output()
        finally:
            rc = exporter.stop()
    serving = len(up) == len(IMAGES) and all(v == 1 for _, _, v in up)
    record.observe(
        f"load errors {errors}; {len(up)} images served, all up: {serving}; exit {rc}",
        errors["unreadable"] == 1 and serving and rc == 0 and "Traceback" not in log,
    )


def test_a_full_disk_fails_saves_keeps_the_file_whole_and_recovers(
    sim: SimulatorProcess, tmp_path: Path, reliability: Reliability
) -> None:
    """The disk fills after the first save: saves fail and are counted, serving goes on, the file keeps its
    last committed content; with space back, saves work again."""
    record = reliability.case(
        "state file",
        "disk full",
        "saves counted as failed; serving on; file consistent; saves resume with space",
    )
    with _tmpfs(tmp_path / "small", "size=256k") as where:
        state = where / "state.db"
        exporter = start_exporter(tmp_path / "exporter", _config(sim, state))
        try:
            wait_until(lambda: _saved(exporter), 10, "a first save")
            filler = where / "filler"
            with contextlib.suppress(OSError), filler.open("wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            wait_until(lambda: _save_errors(exporter) >= 1, 20, "a failed save")
            refreshed = quick_samples(
                exporter.metrics_text(), ("ehpc_refresh_last_success_timestamp_seconds",)
            )
            filler.unlink()
            failed = _save_errors(exporter)
            last = quick_samples(exporter.metrics_text(), ("ehpc_state_last_save_timestamp_seconds",))[0][2]
            wait_until(
                lambda: (
                    quick_samples(exporter.metrics_text(), ("ehpc_state_last_save_timestamp_seconds",))[0][2]
                    > last
                ),
                10,
                "a save after space came back",
            )
            log = exporter.output()
        finally:
            rc = exporter.stop()
        conn = sqlite3.connect(state)
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        rows = conn.execute("SELECT count(*) FROM images").fetchone()[0]
        conn.close()
    record.observe(
        f"{failed:g} failed saves counted; serving on ({len(refreshed)} refresh series); integrity {check};"
        f" {rows} images; saves resumed; exit {rc}",
        failed >= 1 and check == "ok" and rows == len(IMAGES) and rc == 0 and "Traceback" not in log,
    )


# ------------------------------------------------------------------------------------------ the store


def _cfg(images: list[str], *, discovery: bool = False) -> Config:
    return Config(
        images=tuple(WatchedImage(i, additional_region_ids=("cn-beijing",)) for i in images),
        discovery=DiscoveryConfig(enabled=discovery),
    )


def _snapshot(images: list[str], at: float, scope: Scope = SCOPE) -> Snapshot:
    state = _full_state()
    states = [
        ImageState(
            WatchedImage(i, additional_region_ids=("cn-beijing",)),
            state.image,
            at,
            None,
            scope,
            state.history,
        )
        for i in images
    ]
    return Snapshot.build(
        states, status=StatusConfig(), refreshed_at=at, duration_seconds=1.5, sequence=3, scope=scope
    )


async def test_what_left_the_watched_set_is_dropped_from_the_file(tmp_path: Path) -> None:
    """A restart with a smaller watched set loads only what is still watched and deletes the rest from the
    file; discovered images stay only while discovery is on."""
    path = tmp_path / "state.db"
    store = StateStore(str(path), StateMetrics())
    assert await store.load(_cfg(["m-a", "m-b", "m-c"])) == {}
    await store.save(_snapshot(["m-a", "m-b", "m-c", "m-found"], 100.0))
    await store.close()
    assert _rows(path) == 4

    store = StateStore(str(path), StateMetrics())
    loaded = await store.load(_cfg(["m-a", "m-b"], discovery=True))
    await store.close()
    # m-c left the static list but discovery is on: it stays as a discovered image, as m-found does.
    assert sorted(k.image_id for k in loaded[SCOPE].images) == ["m-a", "m-b", "m-c", "m-found"]
    status = loaded[SCOPE].scopes[SCOPE]
    assert (status.refreshed_at, status.duration_seconds, status.restored) == (100.0, 1.5, True)

    store = StateStore(str(path), StateMetrics())
    loaded = await store.load(_cfg(["m-a"]))
    await store.close()
    assert [k.image_id for k in loaded[SCOPE].images] == ["m-a"]
    assert _rows(path) == 1
    # A region the config no longer asks for keeps no since-timestamp.
    store = StateStore(str(path), StateMetrics())
    loaded = await store.load(Config(images=(WatchedImage("m-a"),)))
    await store.close()
    history = loaded[SCOPE].images[ImageKey("default", "cn-hangzhou", "m-a")].history
    assert history is not None
    assert history.replicas == ()


async def test_saves_keep_only_the_latest_and_a_reload_drops_removed_targets(tmp_path: Path) -> None:
    """Each save replaces its (account, region)'s rows (a last-success-only change included); retain drops
    a removed (account, region) whole."""
    path = tmp_path / "state.db"
    other = Scope("prod", "cn-shanghai")
    metrics = StateMetrics()
    store = StateStore(str(path), metrics)
    await store.load(_cfg(["m-a", "m-b"]))
    await store.save(_snapshot(["m-a", "m-b"], 100.0))
    await store.save(_snapshot(["m-a", "m-b"], 160.0))  # only the last successes moved
    await store.save(_snapshot(["m-a"], 220.0))
    await store.save(_snapshot(["m-x"], 220.0, other))
    assert metrics.save_errors == 0
    await store.retain([SCOPE])
    await store.close()
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT account, region_id, image_id, last_success FROM images"
        " JOIN successes USING (account, region_id, image_id)"
    ).fetchall()
    assert conn.execute("SELECT count(*) FROM successes").fetchone()[0] == 1
    conn.close()
    assert rows == [("default", "cn-hangzhou", "m-a", 220.0)]
    store = StateStore(str(path), StateMetrics())
    loaded = await store.load(_cfg(["m-a"]))
    await store.close()
    assert loaded[SCOPE].images[ImageKey("default", "cn-hangzhou", "m-a")].last_success == 220.0


async def test_images_of_other_shards_are_not_loaded(tmp_path: Path) -> None:
    """A replica restarted with a different shard loads only the images its shard now watches."""
    path = tmp_path / "state.db"
    ids = [f"m-shard{i:03d}" for i in range(30)]
    store = StateStore(str(path), StateMetrics())
    await store.load(_cfg(ids))
    await store.save(_snapshot(ids, 100.0))
    await store.close()
    sharding = ShardingConfig(shards=3, shard=1)
    store = StateStore(str(path), StateMetrics())
    loaded = await store.load(replace(_cfg(ids), sharding=sharding))
    await store.close()
    mine = sorted(i for i in ids if in_shard(SCOPE.account, SCOPE.region_id, i, sharding))
    assert 0 < len(mine) < len(ids)
    assert sorted(k.image_id for k in loaded[SCOPE].images) == mine


async def test_the_largest_row_the_exporter_writes_is_saved_and_read_back(tmp_path: Path) -> None:
    """Every bound at its maximum (1,000 regions of the longest shape, every label, status and URL at
    its length bound in characters JSON escapes as 12 bytes): the row stays under the file's value
    bound (MAX_VALUE_BYTES), is saved and comes back equal."""
    regions = tuple(f"cn-{i:04d}" + "a" * (REGION_KIND.max_length - 8) for i in range(MAX_REGIONS_PER_IMAGE))
    wide = "\U0001f600"  # a character outside the BMP: "\ud83d\ude00" in JSON
    status = "S" * STATUS.max_length
    label = wide * LABEL.max_length
    facts = ImageFacts(
        image_type=status,
        name=label,
        version=label,
        app_id=label,
        status=status,
        size_bytes=2**62,
        create_time=datetime(2199, 12, 31, tzinfo=UTC),
        os_tag=label,
        platform=label,
        architecture=label,
        registry_url=wide * URL.max_length,
        additional_regions=tuple(Replica(r, status) for r in regions),
        ignored=tuple("Image.Field" + "x" * (CODE.max_length - 11) for _ in range(16)),
    )
    history = ImageHistory(status, 1.0, 2**53, tuple(ReplicaHistory(r, status, 1e11, 1e11) for r in regions))
    error = ImageError("C" * CODE.max_length, 599, "R" * REQUEST_ID.max_length, 1e11)
    watched = WatchedImage("m-" + "a" * (ID.max_length - 2), "Container", "Custom", regions)
    state = ImageState(watched, facts, 1e11, error, SCOPE, history)
    size = len(encode_row(state).encode())
    assert size < MAX_VALUE_BYTES, size
    config = Config(images=(watched,), limits=LimitsConfig(max_regions_per_image=MAX_REGIONS_PER_IMAGE))
    path = tmp_path / "state.db"
    store = StateStore(str(path), StateMetrics())
    await store.load(config)
    await store.save(
        Snapshot.build(
            [state], status=StatusConfig(), refreshed_at=1.0, duration_seconds=1.0, sequence=1, scope=SCOPE
        )
    )
    await store.close()
    metrics = StateMetrics()
    store = StateStore(str(path), metrics)
    loaded = await store.load(config)
    await store.close()
    assert metrics.save_errors == 0
    assert loaded[SCOPE].images[state.key] == state
