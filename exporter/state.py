"""The state file: every image's last good data and history in SQLite, so a restart serves what it knew.

``state: {path: FILE}`` turns it on. After each completed cycle of an (account, region) its images are
written in one transaction (WAL mode, ``synchronous=NORMAL``: a committed save survives the process being
killed; only a power cut can lose the last ones). On start the file is read before the server listens,
so ``/metrics`` answers at once with the last-known data and its honest timestamps, and ``up`` says what
the last call before the restart said. Each refresh loop then continues from its (account, region)'s
restored snapshot as if it were its last cycle's (:meth:`exporter.refresher.Refresher.restore`).

The file is data, never code: it is opened through :class:`exporter.state_db.StateDb` (only this
module's statements run, each within a budget; nothing a trigger or view would do is allowed; values and
growth are bounded), and before anything is read from its tables ``sqlite_master`` must be exactly what
:data:`MIGRATIONS` build (any other table, index, view, trigger or virtual table makes it foreign).

A file that cannot be used never stops the exporter and is never served from:

- missing: created (a first start is no error);
- not a database, or failing ``PRAGMA quick_check`` (**corrupt**), or another program's database, a
  newer schema, any schema object beyond the expected tables, a value longer than any this exporter
  writes, or a statement past its budget (**foreign**): moved aside as ``FILE.<reason>-<UTC time>``
  (with its -wal / -shm), then a new one is created;
- held by another live exporter (**locked**): left alone, since moving it would take it from under that
  process; this one starts cold and retries the file at each save;
- in a directory it cannot create or write in (**unreadable**): this one starts cold and retries at each
  save.

Each is logged and counted once in ``ehpc_state_load_errors_total{reason}``; a failed save (a full disk,
say) is rolled back, logged when a streak starts and counted in ``ehpc_state_save_errors_total``.

Each row passes the ingestion gate's kinds again and the same per-image limits
(:mod:`exporter.state_rows`). A refused row makes that image start cold, is counted in
``ehpc_state_load_errors_total{reason="row"}`` and deleted; the rest of the file loads.

The schema version is ``PRAGMA user_version`` and the file is marked with ``PRAGMA application_id``;
:data:`MIGRATIONS` takes an older file forward one version at a time, inside one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from exporter.config import Config, Scope, WatchedImage
from exporter.exposition.selfmetrics import StateMetrics
from exporter.sharding import in_shard
from exporter.snapshot import DiscoveryStatus, ImageState, Snapshot
from exporter.state_db import Reason, StateDb, Unusable, check_schema, classify, key_bytes
from exporter.state_rows import decode_discovery, decode_row, encode_row, refusal, wall_time

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "StateStore"]

log = structlog.get_logger("ehpc.state")

APPLICATION_ID = 0x45485043  # "EHPC": tells this exporter's files from any other SQLite database
SCHEMA_VERSION = 1
# MIGRATIONS[v] takes a file from version v to v + 1; version 0 is a new, empty file. What they build is
# also the only schema a file may hold (state_db.check_schema): nothing may be added, no other object.
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
# How long close() lets a statement in flight finish before it aborts it.
CLOSE_GRACE_SECONDS = 1.0


def _statements(version: int) -> tuple[str, ...]:
    """Every statement of the migrations up to ``version`` (what a file of that version was built by)."""
    return tuple(s for v in range(version) for s in MIGRATIONS[v])


def _durable(state: ImageState) -> tuple[object, ...]:
    """What the ``state`` column holds: when only the last success moved, the row is not re-encoded."""
    return (state.watched, state.image, state.error, state.history)


@dataclass
class _Loaded:
    """What the start-up read found."""

    snapshots: dict[Scope, Snapshot]
    problem: Unusable | None = None  # the file was moved aside: a cold start
    refused: int = 0  # rows the gate refused
    reasons: tuple[str, ...] = ()  # the first few refusals, each naming the field and why


class StateStore:
    """The state file of one exporter process: read once at start-up, written after every cycle.

    All SQLite work runs on one worker thread, in order; the event loop only awaits it.
    """

    def __init__(
        self, path: str, metrics: StateMetrics, *, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)
        self._metrics = metrics
        self._wall_clock = wall_clock
        self._db: StateDb | None = None
        # Per (account, region), its images' states as last committed (compared by value with the next).
        self._saved: dict[Scope, Mapping[str, ImageState]] = {}
        self._failing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ehpc-state")

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- opening ----------------------------------------------------------------------------------------

    def _open(self) -> StateDb:
        """Open the file, check, create or migrate its schema and hold it; Unusable when it cannot be."""
        try:
            db = StateDb(self.path)
        except (sqlite3.Error, OSError) as exc:
            raise classify(exc) from None
        try:
            # One exporter per file: the lock taken below is kept until the connection closes (the
            # process ends), so a second exporter pointed at the same file sees "locked", not a mix.
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            app_id = db.one("PRAGMA application_id")
            version = db.one("PRAGMA user_version")
            if app_id != APPLICATION_ID and (app_id != 0 or version != 0):
                raise Unusable("foreign", f"application id {app_id:#x} is not this exporter's")
            if version > SCHEMA_VERSION:
                raise Unusable("foreign", f"schema version {version} is newer than this exporter's")
            db.measure()
            # Before anything else reads the file: quick_check evaluates CHECK constraints, and every
            # later statement would run any trigger or view the file brought.
            check_schema(db, _statements(version), version)
            if db.one("PRAGMA quick_check") != "ok":
                raise Unusable("corrupt", "quick_check failed")
            # Only now that the file is known to be ours (or new) is anything written to it.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if version < SCHEMA_VERSION:
                self._migrate(db, version)
                check_schema(db, _statements(SCHEMA_VERSION), SCHEMA_VERSION)
        except BaseException as exc:
            db.close()
            raise classify(exc) from None
        return db

    @staticmethod
    def _migrate(db: StateDb, version: int) -> None:
        db.execute("BEGIN IMMEDIATE")  # also takes the lock now, before anything is read
        try:
            for v in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[v]:
                    db.execute(statement)
            db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error, Unusable):
                db.execute("ROLLBACK")
            raise

    def _move_aside(self, reason: Reason) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        moved = self.path.with_name(f"{self.path.name}.{reason}-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                os.replace(source, f"{moved}{suffix}")
        log.warning("state_moved_aside", reason=reason, path=str(self.path), moved_to=str(moved))

    def _connect(self) -> tuple[StateDb, Unusable | None]:
        """An open connection, having moved a corrupt or foreign file aside (the problem it had, if any)."""
        try:
            return self._open(), None
        except Unusable as problem:
            return self._replace(problem), problem

    def _replace(self, problem: Unusable) -> StateDb:
        """Move a corrupt or foreign file aside and open a new one (re-raise any other problem)."""
        if problem.reason not in ("corrupt", "foreign"):
            raise problem
        try:
            self._move_aside(problem.reason)
        except OSError as exc:
            raise Unusable("unreadable", f"cannot move the {problem.reason} file aside: {exc}") from None
        return self._open()

    # -- load -------------------------------------------------------------------------------------------

    async def load(self, config: Config) -> dict[Scope, Snapshot]:
        """Open the file and rebuild each configured (account, region)'s last snapshot (never raises)."""
        started = time.perf_counter()
        existed = self.path.exists()
        try:
            loaded: _Loaded = await self._run(self._load, config)
        except Exception as exc:  # Unusable, or whatever else: a cold start, never a crash
            self._load_failed(classify(exc))
            return {}
        if loaded.problem is not None:  # moved aside and a new file made: counted, then a cold start
            self._load_failed(loaded.problem)
            return {}
        if loaded.refused:
            self._metrics.load_errors["row"] += loaded.refused
            log.warning(
                "state_rows_refused", path=str(self.path), rows=loaded.refused, first=list(loaded.reasons)
            )
        images = sum(len(s.images) for s in loaded.snapshots.values())
        self._metrics.loaded_images = images
        log.info(
            "state_loaded" if existed else "state_created",
            path=str(self.path),
            images=images,
            targets=len(loaded.snapshots),
            duration_seconds=round(time.perf_counter() - started, 3),
        )
        return loaded.snapshots

    def _load_failed(self, problem: Unusable) -> None:
        self._metrics.load_errors[problem.reason] += 1
        log.error(
            "state_unusable", reason=problem.reason, path=str(self.path), error=problem.detail, start="cold"
        )

    def _load(self, config: Config) -> _Loaded:
        db, problem = self._connect()
        self._db = db
        if problem is not None:
            return _Loaded({}, problem)
        try:
            return self._read(db, config)
        except Exception as exc:  # found while reading (a value past its bound, say): as at opening
            problem = classify(exc)
            self._db = None
            db.close()
            self._db = self._replace(problem)
            return _Loaded({}, problem)

    def _read(self, db: StateDb, config: Config) -> _Loaded:
        """Rebuild each configured (account, region)'s snapshot from the rows, and drop the others."""
        wanted = {c.scope: c for c in config.scopes()}
        statuses: dict[Scope, tuple[float | None, float | None, DiscoveryStatus | None]] = {}
        untyped = False  # a key that is not text: deleted by its type, since it cannot be bound back
        for account, region, refreshed_at, duration, discovery in db.rows("SELECT * FROM scopes"):
            if not (isinstance(account, str) and isinstance(region, str)):
                untyped = True
            elif Scope(account, region) in wanted:
                statuses[Scope(account, region)] = (
                    wall_time(refreshed_at),
                    wall_time(duration),
                    decode_discovery(discovery),
                )
        states: dict[Scope, list[ImageState]] = {s: [] for s in statuses}
        static = {s: {i.image_id: i for i in c.images} for s, c in wanted.items()}
        dropped: list[tuple[str, str, str]] = []
        refused: list[str] = []
        rows = db.rows(
            "SELECT account, region_id, image_id, state, last_success FROM images"
            " LEFT JOIN successes USING (account, region_id, image_id)"
        )
        for account, region, image_id, text, last_success in rows:
            if not (isinstance(account, str) and isinstance(region, str) and isinstance(image_id, str)):
                untyped = True
                refused.append("key: not text")
                continue
            scope = Scope(account, region)
            cfg = wanted.get(scope)
            if cfg is None or scope not in statuses or not _watches(cfg, static[scope], image_id):
                dropped.append((account, region, image_id))
                continue
            try:
                state = decode_row(
                    scope,
                    image_id,
                    text,
                    last_success,
                    max_regions=cfg.limits.max_regions_per_image,
                    configured=image_id in static[scope],
                )
            except ValueError as exc:  # pydantic's ValidationError is one
                refused.append(refusal(exc))
                dropped.append((account, region, image_id))
                continue
            states[scope].append(_kept(cfg, static[scope], state))
        self._forget(db, dropped, set(statuses), untyped)
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
        return _Loaded(out, refused=len(refused), reasons=tuple(dict.fromkeys(refused))[:5])

    def _forget(
        self,
        db: StateDb,
        images: Sequence[tuple[str, str, str]],
        kept: Collection[Scope],
        untyped: bool,
    ) -> None:
        """Drop what left the watched set while the exporter was down, and what the gate refused."""
        db.execute("BEGIN IMMEDIATE")
        try:
            _delete(db, _IMAGE, images)
            if untyped:
                _delete_untyped(db)
            gone = [
                (a, r)
                for a, r in db.execute("SELECT account, region_id FROM scopes")
                if Scope(a, r) not in kept
            ]
            _delete(db, _SCOPE, gone, tables=("scopes", "images", "successes"))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error, Unusable):
                db.execute("ROLLBACK")
            raise

    # -- save -------------------------------------------------------------------------------------------

    async def save(self, snapshot: Snapshot) -> None:
        """Write one (account, region)'s snapshot in one transaction (failures are counted, never raised)."""
        try:
            await self._run(self._save, snapshot)
        except Exception as exc:
            problem = classify(exc)
            self._metrics.save_errors += 1
            (log.debug if self._failing else log.warning)(
                "state_save_failed", path=str(self.path), reason=problem.reason, error=problem.detail
            )
            self._failing = True
            return
        self._metrics.last_save = self._wall_clock()
        if self._failing:
            log.info("state_save_recovered", path=str(self.path))
        self._failing = False

    def _save(self, snapshot: Snapshot) -> None:
        if self._db is None:
            self._db, _ = self._connect()
        db = self._db
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
            full = ((*s.key, encode_row(s)) for s in changed)
            times += [(s.last_success, *s.key) for s in changed]
            d = status.discovery
            discovery = None if d is None else json.dumps([d.up, d.last_success, d.discovered, d.error_code])
            db.measure(len(changed) + len(times) + len(gone))
            db.execute("BEGIN IMMEDIATE")
            try:
                _delete(db, _IMAGE, gone)
                db.executemany("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?)", full, len(changed))
                db.executemany(
                    "INSERT OR REPLACE INTO successes (last_success, account, region_id, image_id)"
                    " VALUES (?, ?, ?, ?)",
                    times,
                    len(times),
                )
                db.execute(
                    "INSERT OR REPLACE INTO scopes VALUES (?, ?, ?, ?, ?)",
                    (scope.account, scope.region_id, status.refreshed_at, status.duration_seconds, discovery),
                )
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error, Unusable):
                    db.execute("ROLLBACK")
                raise
            self._saved[scope] = current

    async def retain(self, scopes: Iterable[Scope]) -> None:
        """Drop every (account, region) not in ``scopes`` from the file (a reload removed them)."""
        keep = set(scopes)

        def drop() -> None:
            for scope in [s for s in self._saved if s not in keep]:
                del self._saved[scope]
            db = self._db
            if db is None:
                return
            rows = db.execute("SELECT account, region_id FROM scopes")
            gone = [
                (a, r)
                for a, r in rows
                if Scope(a, r) not in keep and isinstance(a, str) and isinstance(r, str)
            ]
            db.execute("BEGIN IMMEDIATE")
            try:
                _delete(db, _SCOPE, gone, tables=("scopes", "images", "successes"))
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error, Unusable):
                    db.execute("ROLLBACK")
                raise

        try:
            await self._run(drop)
        except Exception as exc:
            self._metrics.save_errors += 1
            log.warning("state_save_failed", path=str(self.path), error=classify(exc).detail)

    async def close(self) -> None:
        """Close the file (releasing its lock) and the worker thread; a statement still running after
        CLOSE_GRACE_SECONDS is aborted (its transaction rolled back), so nothing can hold up a stop."""
        db, self._db = self._db, None
        if db is not None:
            closing = asyncio.ensure_future(self._run(db.close))
            done, _ = await asyncio.wait({closing}, timeout=CLOSE_GRACE_SECONDS)
            if not done:
                log.warning("state_statement_aborted", path=str(self.path), after_seconds=CLOSE_GRACE_SECONDS)
                db.stop()
                await closing
        self._executor.shutdown(wait=True)


_IMAGE = "account=CAST(? AS TEXT) AND region_id=CAST(? AS TEXT) AND image_id=CAST(? AS TEXT)"
_SCOPE = "account=CAST(? AS TEXT) AND region_id=CAST(? AS TEXT)"


def _delete(
    db: StateDb, where: str, keys: Iterable[Sequence[str]], *, tables: Sequence[str] = ("images", "successes")
) -> None:
    """Delete the rows with these keys from ``tables``, matching the keys' bytes as the file has them."""
    raw = [tuple(key_bytes(k) for k in key) for key in keys]
    for table in tables:
        db.executemany(f"DELETE FROM {table} WHERE {where}", raw, len(raw))  # noqa: S608 - fixed names


def _delete_untyped(db: StateDb) -> None:
    """Delete the rows whose keys are not text (only a tampered file has them)."""
    untyped = "typeof(account) != 'text' OR typeof(region_id) != 'text'"
    db.execute(f"DELETE FROM scopes WHERE {untyped}")  # noqa: S608 - fixed text
    for table in ("images", "successes"):
        db.execute(f"DELETE FROM {table} WHERE {untyped} OR typeof(image_id) != 'text'")  # noqa: S608


def _watches(config: Config, static: Mapping[str, WatchedImage], image_id: str) -> bool:
    """Whether ``config`` watches a stored image: listed, or discovered while its target discovers, and
    in this replica's shard."""
    listed = image_id in static or config.discovery.enabled
    return listed and in_shard(config.scope.account, config.scope.region_id, image_id, config.sharding)


def _kept(config: Config, static: Mapping[str, WatchedImage], state: ImageState) -> ImageState:
    """``state`` as the current config watches it: the entry of a listed image, or what discovery asks of
    a discovered one, comes from the config (which may have changed while the exporter was down)."""
    stored = state.watched
    image = static.get(state.image_id)
    if image is None:
        d = config.discovery
        if (stored.image_category, stored.additional_region_ids) == (
            d.image_category,
            d.additional_region_ids,
        ):
            image = stored
        else:
            image = WatchedImage(
                stored.image_id, stored.image_type, d.image_category, d.additional_region_ids
            )
    history = state.history
    asked = image.additional_region_ids
    if history is not None and any(r.region_id not in asked for r in history.replicas):
        # Regions no longer asked for have no since-timestamp to show.
        history = history._replace(replicas=tuple(r for r in history.replicas if r.region_id in asked))
    if image is stored and history is state.history:
        return state
    return ImageState(image, state.image, state.last_success, state.error, state.scope, history)
