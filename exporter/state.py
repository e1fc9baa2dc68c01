"""The state file: every image's last good data and history in SQLite, so a restart serves what it knew.

``state: {path: FILE}`` turns it on. After each completed cycle of an (account, region) its images are
written in one transaction (WAL mode, ``synchronous=NORMAL``: a committed save survives the process being
killed; only a power cut can lose the last ones). On start the file is read before the server listens,
so ``/metrics`` answers at once with the last-known data and its honest timestamps, and ``up`` says what
the last call before the restart said. The refresh loops then start as on a cold start.

A file that cannot be used never stops the exporter and is never served from:

- missing: created (a first start is no error);
- not a database, or failing ``PRAGMA quick_check`` (**corrupt**), or another program's database or a
  newer schema (**foreign**): moved aside as ``FILE.<reason>-<UTC time>`` (with its -wal / -shm), then a
  new one is created;
- held by another live exporter (**locked**): left alone, since moving it would take it from under that
  process; this one starts cold and retries the file at each save;
- in a directory it cannot create or write in (**unreadable**): this one starts cold and retries at each
  save.

Each is logged and counted once in ``ehpc_state_load_errors_total{reason}``; a failed save (a full disk,
say) is rolled back, logged when a streak starts and counted in ``ehpc_state_save_errors_total``. Rows
that do not decode are dropped one by one (the same bounds as the API gate; a registry URL passes
:func:`exporter.models.registry_url` again), so a tampered file cannot bring in what the API could not.

The schema version is ``PRAGMA user_version`` and the file is marked with ``PRAGMA application_id``;
:data:`MIGRATIONS` takes an older file forward one version at a time, inside one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exporter.config import Config, Scope, WatchedImage
from exporter.exposition.selfmetrics import StateMetrics
from exporter.history import ImageHistory, ReplicaHistory
from exporter.models import registry_url
from exporter.sharding import in_shard
from exporter.snapshot import DiscoveryStatus, ImageError, ImageFacts, ImageState, Replica, Snapshot

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "StateStore"]

log = structlog.get_logger("ehpc.state")

APPLICATION_ID = 0x45485043  # "EHPC": tells this exporter's files from any other SQLite database
SCHEMA_VERSION = 1
# MIGRATIONS[v] takes a file from version v to v + 1; version 0 is a new, empty file.
MIGRATIONS: Mapping[int, tuple[str, ...]] = {
    0: (
        "CREATE TABLE scopes (account TEXT NOT NULL, region_id TEXT NOT NULL, refreshed_at REAL,"
        " duration_seconds REAL, discovery TEXT, PRIMARY KEY (account, region_id)) WITHOUT ROWID",
        "CREATE TABLE images (account TEXT NOT NULL, region_id TEXT NOT NULL, image_id TEXT NOT NULL,"
        " state TEXT NOT NULL, PRIMARY KEY (account, region_id, image_id)) WITHOUT ROWID",
        # Apart from the rows: every up image's last success moves every cycle, and rewriting its wide
        # row for that rewrote the whole file into the WAL each time (20 MB a cycle at 10,000 images).
        "CREATE TABLE successes (account TEXT NOT NULL, region_id TEXT NOT NULL, image_id TEXT NOT NULL,"
        " last_success REAL, PRIMARY KEY (account, region_id, image_id)) WITHOUT ROWID",
    ),
}
# The tables of SCHEMA_VERSION and their columns: a file that says it is ours but differs is foreign.
LAYOUT: Mapping[str, tuple[str, ...]] = {
    "scopes": ("account", "region_id", "refreshed_at", "duration_seconds", "discovery"),
    "images": ("account", "region_id", "image_id", "state"),
    "successes": ("account", "region_id", "image_id", "last_success"),
}
# How long a save or the start-up read waits for a lock another connection holds.
BUSY_TIMEOUT_SECONDS = 0.2

Reason = Literal["corrupt", "foreign", "locked", "unreadable"]


class _Unusable(Exception):
    """The file cannot be used as it is (see the module docstring for each reason)."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason: Reason = reason
        self.detail = detail


def _classify(exc: BaseException) -> _Unusable:
    """What an sqlite3 or OS error says about the file."""
    if isinstance(exc, _Unusable):
        return exc
    text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return _Unusable("corrupt", text)  # "file is not a database", "database disk image is malformed"
    if "locked" in text or "busy" in text:
        return _Unusable("locked", text)
    if "malformed" in text or "not a database" in text:
        return _Unusable("corrupt", text)
    return _Unusable("unreadable", text)  # cannot open or write: permissions, a read-only or full disk


# --------------------------------------------------------------------------------------------------
# Rows: what one image's state is stored as, and the bounded schema it is read back through.

_Text = Annotated[str, Field(max_length=4096)]
_Time = Annotated[float, Field(allow_inf_nan=False, ge=0, le=1e11)]
_ListMax = 1000


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _WatchedRow(_Row):
    type: Literal["VM", "Container"]
    category: Literal["Public", "Custom"] | None
    regions: Annotated[list[_Text], Field(max_length=_ListMax)]


class _FactsRow(_Row):
    image_type: _Text
    name: _Text
    version: _Text
    app_id: _Text
    status: _Text
    size_bytes: Annotated[int, Field(ge=0, le=2**63 - 1)] | None
    create_time: _Time | None
    os_tag: _Text
    platform: _Text
    architecture: _Text
    registry_url: _Text
    regions: Annotated[list[tuple[_Text, _Text]], Field(max_length=_ListMax)]
    ignored: Annotated[list[_Text], Field(max_length=_ListMax)]


class _ErrorRow(_Row):
    code: _Text
    http_status: Annotated[int, Field(ge=0, le=999)]
    request_id: _Text | None
    since: _Time


class _HistoryRow(_Row):
    status: _Text
    since: _Time
    changes: Annotated[int, Field(ge=0, le=2**53)]
    replicas: Annotated[list[tuple[_Text, _Text | None, _Time, _Time | None]], Field(max_length=_ListMax)]


class _StateRow(_Row):
    watched: _WatchedRow
    facts: _FactsRow | None
    error: _ErrorRow | None
    history: _HistoryRow | None


class _DiscoveryRow(_Row):
    up: bool
    last_success: _Time | None
    discovered: Annotated[int, Field(ge=0, le=10**9)]
    error_code: _Text | None


def _encode(state: ImageState) -> str:
    """The ``state`` column of one image: everything but the last success, which has its own."""
    w, f, e, h = state.watched, state.image, state.error, state.history
    row: dict[str, Any] = {
        "watched": {
            "type": w.image_type,
            "category": w.image_category,
            "regions": list(w.additional_region_ids),
        },
        "facts": None,
        "error": None
        if e is None
        else {
            "code": e.code,
            "http_status": e.http_status,
            "request_id": e.request_id,
            "since": e.since,
        },
        "history": None
        if h is None
        else {
            "status": h.status,
            "since": h.since,
            "changes": h.changes,
            "replicas": [list(r) for r in h.replicas],
        },
    }
    if f is not None:
        row["facts"] = {
            "image_type": f.image_type,
            "name": f.name,
            "version": f.version,
            "app_id": f.app_id,
            "status": f.status,
            "size_bytes": f.size_bytes,
            "create_time": None if f.create_time is None else f.create_time.timestamp(),
            "os_tag": f.os_tag,
            "platform": f.platform,
            "architecture": f.architecture,
            "registry_url": f.registry_url,
            "regions": [list(r) for r in f.additional_regions],
            "ignored": list(f.ignored),
        }
    return json.dumps(row, separators=(",", ":"), allow_nan=False)


def _decode(scope: Scope, image_id: str, text: str, last_success: object) -> ImageState:
    """One stored image (ValidationError or ValueError when it does not decode within the bounds)."""
    row = _StateRow.model_validate_json(text)
    if last_success is not None and not (
        isinstance(last_success, float) and math.isfinite(last_success) and 0 <= last_success <= 1e11
    ):
        raise ValueError("last_success is not a time")
    w = row.watched
    watched = WatchedImage(image_id, w.type, w.category, tuple(w.regions))
    facts = None
    if row.facts is not None:
        f = row.facts
        facts = ImageFacts(
            image_type=f.image_type,
            name=f.name,
            version=f.version,
            app_id=f.app_id,
            status=f.status,
            size_bytes=f.size_bytes,
            create_time=None if f.create_time is None else datetime.fromtimestamp(f.create_time, UTC),
            os_tag=f.os_tag,
            platform=f.platform,
            architecture=f.architecture,
            registry_url=registry_url(f.registry_url),  # the ingestion gate's userinfo rule, again
            additional_regions=tuple(Replica(r, s) for r, s in f.regions),
            ignored=tuple(f.ignored),
        )
    e = row.error
    error = None if e is None else ImageError(e.code, e.http_status, e.request_id, e.since)
    h = row.history
    history = None
    if h is not None:
        history = ImageHistory(h.status, h.since, h.changes, tuple(ReplicaHistory(*r) for r in h.replicas))
    return ImageState(watched, facts, last_success, error, scope, history)


def _durable(state: ImageState) -> tuple[object, ...]:
    """What the ``state`` column holds: when only the last success moved, the row is not re-encoded."""
    return (state.watched, state.image, state.error, state.history)


# --------------------------------------------------------------------------------------------------
# The store.


class StateStore:
    """The state file of one exporter process: read once at start-up, written after every cycle.

    All SQLite work runs on one worker thread, in order; the event loop only awaits it.
    """

    def __init__(
        self, path: str, metrics: StateMetrics, *, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)
        self._metrics = metrics
        self._clock = wall_clock
        self._conn: sqlite3.Connection | None = None
        # Per (account, region), its images' states as last committed (compared by value with the next).
        self._saved: dict[Scope, Mapping[str, ImageState]] = {}
        self._failing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ehpc-state")

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- opening ----------------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        """Open the file, create or migrate its schema and hold it; _Unusable when that cannot be done."""
        try:
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
            )
        except (sqlite3.Error, OSError) as exc:
            raise _classify(exc) from None
        try:
            # One exporter per file: the lock taken below is kept until the connection closes (the
            # process ends), so a second exporter pointed at the same file sees "locked", not a mix.
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id != APPLICATION_ID and (app_id != 0 or version != 0 or tables):
                raise _Unusable("foreign", f"application id {app_id:#x} is not this exporter's")
            if version > SCHEMA_VERSION:
                raise _Unusable("foreign", f"schema version {version} is newer than this exporter's")
            if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise _Unusable("corrupt", "quick_check failed")
            if version == SCHEMA_VERSION:
                _check_layout(conn)
            # Only now that the file is known to be ours (or new) is anything written to it.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._migrate(conn, version)
            if version < SCHEMA_VERSION:  # what the migrations built must be the layout too
                _check_layout(conn)
        except BaseException as exc:
            conn.close()
            raise _classify(exc) from None
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection, version: int) -> None:
        conn.execute("BEGIN IMMEDIATE")  # also takes the lock now, before anything is read
        try:
            for v in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[v]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _move_aside(self, reason: Reason) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        moved = self.path.with_name(f"{self.path.name}.{reason}-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                os.replace(source, f"{moved}{suffix}")
        log.warning("state_moved_aside", reason=reason, path=str(self.path), moved_to=str(moved))

    def _connect(self) -> tuple[sqlite3.Connection, _Unusable | None]:
        """An open connection, having moved a corrupt or foreign file aside (the problem it had, if any)."""
        try:
            return self._open(), None
        except _Unusable as problem:
            if problem.reason not in ("corrupt", "foreign"):
                raise
            try:
                self._move_aside(problem.reason)
            except OSError as exc:
                raise _Unusable("unreadable", f"cannot move the {problem.reason} file aside: {exc}") from None
            return self._open(), problem

    # -- load -------------------------------------------------------------------------------------------

    async def load(self, config: Config) -> dict[Scope, Snapshot]:
        """Open the file and rebuild each configured (account, region)'s last snapshot (never raises)."""
        started = time.perf_counter()
        existed = self.path.exists()
        try:
            loaded: dict[Scope, Snapshot]
            problem: _Unusable | None
            loaded, problem = await self._run(self._load, config)
        except Exception as exc:  # _Unusable, or whatever else: a cold start, never a crash
            self._load_failed(_classify(exc))
            return {}
        if problem is not None:  # moved aside and a new file made: counted, then a cold start
            self._load_failed(problem)
            return {}
        images = sum(len(s.images) for s in loaded.values())
        self._metrics.loaded_images = images
        log.info(
            "state_loaded" if existed else "state_created",
            path=str(self.path),
            images=images,
            targets=len(loaded),
            duration_seconds=round(time.perf_counter() - started, 3),
        )
        return loaded

    def _load_failed(self, problem: _Unusable) -> None:
        self._metrics.load_errors[problem.reason] += 1
        log.error(
            "state_unusable", reason=problem.reason, path=str(self.path), error=problem.detail, start="cold"
        )

    def _load(self, config: Config) -> tuple[dict[Scope, Snapshot], _Unusable | None]:
        conn, problem = self._connect()
        self._conn = conn
        if problem is not None:
            return {}, problem
        wanted = {c.scope: c for c in config.scopes()}
        statuses: dict[Scope, tuple[float | None, float | None, DiscoveryStatus | None]] = {}
        for account, region, refreshed_at, duration, discovery in conn.execute("SELECT * FROM scopes"):
            scope = Scope(str(account), str(region))
            if scope in wanted:
                statuses[scope] = (_time(refreshed_at), _time(duration), _discovery(discovery))
        states: dict[Scope, list[ImageState]] = {s: [] for s in statuses}
        static = {s: {i.image_id: i for i in c.images} for s, c in wanted.items()}
        dropped: list[tuple[str, str, str]] = []
        bad = 0
        rows = conn.execute(
            "SELECT account, region_id, image_id, state, last_success FROM images"
            " LEFT JOIN successes USING (account, region_id, image_id)"
        )
        for account, region, image_id, text, last_success in rows:
            scope = Scope(str(account), str(region))
            cfg = wanted.get(scope)
            state = None
            if cfg is not None and scope in statuses and isinstance(image_id, str) and isinstance(text, str):
                try:
                    state = _kept(cfg, static[scope], _decode(scope, image_id, text, last_success))
                except (ValidationError, ValueError):
                    bad += 1
            if state is None:
                dropped.append((str(account), str(region), str(image_id)))
            else:
                states[scope].append(state)
        if bad:
            log.warning("state_rows_dropped", path=str(self.path), rows=bad, reason="do not decode")
        self._forget(conn, dropped, [s for s in statuses], wanted)
        out: dict[Scope, Snapshot] = {}
        for scope, (refreshed_at, duration, discovery) in statuses.items():
            cfg = wanted[scope]
            out[scope] = Snapshot.build(
                states[scope],
                status=cfg.status,
                refreshed_at=refreshed_at,
                duration_seconds=duration,
                sequence=0,
                discovery=discovery if cfg.discovery.enabled else None,
                scope=scope,
                restored=True,
            )
            self._saved[scope] = {s.image_id: s for s in states[scope]}
        return out, None

    def _forget(
        self,
        conn: sqlite3.Connection,
        images: Sequence[tuple[str, str, str]],
        kept: Sequence[Scope],
        wanted: Mapping[Scope, Config],
    ) -> None:
        """Drop what left the watched set while the exporter was down: images, and whole scopes."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            _delete(conn, "account=? AND region_id=? AND image_id=?", images)
            for account, region in conn.execute("SELECT account, region_id FROM scopes").fetchall():
                if Scope(str(account), str(region)) not in wanted or Scope(account, region) not in kept:
                    conn.execute("DELETE FROM scopes WHERE account=? AND region_id=?", (account, region))
                    _delete(conn, "account=? AND region_id=?", [(account, region)])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- save -------------------------------------------------------------------------------------------

    async def save(self, snapshot: Snapshot) -> None:
        """Write one (account, region)'s snapshot in one transaction (failures are counted, never raised)."""
        try:
            await self._run(self._save, snapshot)
        except Exception as exc:
            problem = _classify(exc)
            self._metrics.save_errors += 1
            (log.debug if self._failing else log.warning)(
                "state_save_failed", path=str(self.path), reason=problem.reason, error=problem.detail
            )
            self._failing = True
            return
        self._metrics.last_save = self._clock()
        if self._failing:
            log.info("state_save_recovered", path=str(self.path))
        self._failing = False

    def _save(self, snapshot: Snapshot) -> None:
        if self._conn is None:
            self._conn, _ = self._connect()
        conn = self._conn
        for scope, status in snapshot.scopes.items():
            saved = self._saved.get(scope, {})
            current = {k.image_id: s for k, s in snapshot.images.items() if k[:2] == scope}
            gone = [(scope.account, scope.region_id, i) for i in saved if i not in current]
            changed: list[ImageState] = []
            times = []
            for image_id, state in current.items():
                old = saved.get(image_id)
                if old is not None and (old is state or _durable(old) == _durable(state)):
                    if old.last_success != state.last_success:
                        times.append((state.last_success, scope.account, scope.region_id, image_id))
                else:
                    changed.append(state)
            # Encoded row by row as SQLite takes them: ten thousand encoded rows held at once would
            # raise the process's high-water mark for good (freed memory mostly stays resident).
            full = ((*s.key, _encode(s)) for s in changed)
            times += [(s.last_success, *s.key) for s in changed]
            d = status.discovery
            discovery = None if d is None else json.dumps([d.up, d.last_success, d.discovered, d.error_code])
            conn.execute("BEGIN IMMEDIATE")
            try:
                _delete(conn, "account=? AND region_id=? AND image_id=?", gone)
                conn.executemany("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?)", full)
                conn.executemany(
                    "INSERT OR REPLACE INTO successes (last_success, account, region_id, image_id)"
                    " VALUES (?, ?, ?, ?)",
                    times,
                )
                conn.execute(
                    "INSERT OR REPLACE INTO scopes VALUES (?, ?, ?, ?, ?)",
                    (scope.account, scope.region_id, status.refreshed_at, status.duration_seconds, discovery),
                )
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            self._saved[scope] = current

    async def retain(self, scopes: Iterable[Scope]) -> None:
        """Drop every (account, region) not in ``scopes`` from the file (a reload removed them)."""
        keep = set(scopes)

        def drop() -> None:
            for scope in [s for s in self._saved if s not in keep]:
                del self._saved[scope]
            conn = self._conn
            if conn is None:
                return
            rows = conn.execute("SELECT account, region_id FROM scopes").fetchall()
            gone = [r for r in rows if Scope(str(r[0]), str(r[1])) not in keep]
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("DELETE FROM scopes WHERE account=? AND region_id=?", gone)
                _delete(conn, "account=? AND region_id=?", gone)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

        try:
            await self._run(drop)
        except Exception as exc:
            self._metrics.save_errors += 1
            log.warning("state_save_failed", path=str(self.path), error=_classify(exc).detail)

    async def close(self) -> None:
        """Close the file (releasing its lock) and the worker thread."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._run(conn.close)
        self._executor.shutdown(wait=True)


def _check_layout(conn: sqlite3.Connection) -> None:
    """Refuse a file marked as ours whose tables are not :data:`LAYOUT` (foreign: moved aside)."""
    for table, columns in LAYOUT.items():
        found = tuple(r[1] for r in conn.execute(f"PRAGMA table_info({table})"))
        if found != columns:
            raise _Unusable("foreign", f"table {table} is not schema version {SCHEMA_VERSION}'s")


def _delete(conn: sqlite3.Connection, where: str, rows: Iterable[Sequence[object]]) -> None:
    """Delete the matching images from both image tables."""
    rows = list(rows)
    for table in ("images", "successes"):
        conn.executemany(f"DELETE FROM {table} WHERE {where}", rows)  # noqa: S608 - two fixed names


def _time(value: object) -> float | None:
    """A stored wall time, or None when it is none or not one."""
    if isinstance(value, float) and math.isfinite(value) and 0 <= value <= 1e11:
        return value
    return None


def _discovery(text: object) -> DiscoveryStatus | None:
    if not isinstance(text, str):
        return None
    try:
        up, last_success, discovered, error_code = json.loads(text)
        row = _DiscoveryRow(up=up, last_success=last_success, discovered=discovered, error_code=error_code)
    except (ValueError, TypeError, ValidationError):
        return None
    return DiscoveryStatus(row.up, row.last_success, row.discovered, row.error_code)


def _kept(config: Config, static: Mapping[str, WatchedImage], state: ImageState) -> ImageState | None:
    """``state`` as the current config watches it, or None when it left the watched set.

    A static image takes its entry from the config (which may have changed while the exporter was down);
    any other stored image was discovered and stays only while its (account, region) discovers.
    """
    image_id = state.image_id
    if not in_shard(state.scope.account, state.scope.region_id, image_id, config.sharding):
        return None
    image = static.get(image_id)
    if image is None:
        return state if config.discovery.enabled else None
    history = state.history
    if history is not None:  # regions no longer asked for have no since-timestamp to show
        asked = set(image.additional_region_ids)
        history = history._replace(replicas=tuple(r for r in history.replicas if r.region_id in asked))
    return ImageState(image, state.image, state.last_success, state.error, state.scope, history)
