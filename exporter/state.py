"""The state file: every image's last good data and history in SQLite, so a restart serves what it knew.

``state: {path: FILE}`` turns it on. After each completed cycle of an (account, region) its images are
written in one transaction (WAL mode, ``synchronous=NORMAL``: a committed save survives the process being
killed; only a power cut can lose the last ones). On start the file is read before the server listens,
so ``/metrics`` answers at once with the last-known data and its honest timestamps, and ``up`` says what
the last call before the restart said. The refresh loops then start as on a cold start.

The file is data, never code. It is opened through :class:`_Db`: ``trusted_schema`` off (and SQLite's
defensive mode with triggers and views disabled where Python offers ``setconfig``, 3.12 on); an
authorizer that lets through only the actions this module's own statements take and nothing a trigger
or view would run; a budget of VM steps on every statement (so no statement can run for ever, and
:meth:`StateStore.close` aborts one that still runs); a bound on the length of any value. Before anything
is read from its tables, ``sqlite_master`` must be exactly what :data:`MIGRATIONS` build: any other
table, index, view, trigger or virtual table makes the file foreign.

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

Each row passes the ingestion gate's kinds again (:mod:`exporter.models`: ids, regions, statuses, codes,
labels, URLs, each exactly as the gate leaves it) and the same per-image limits
(``limits.max_regions_per_image``); an image id the output gate would change (and so could collide with
another) is refused. A refused row makes that image start cold, is counted in
``ehpc_state_load_errors_total{reason="row"}`` and deleted; the rest of the file loads.

The schema version is ``PRAGMA user_version`` and the file is marked with ``PRAGMA application_id``;
:data:`MIGRATIONS` takes an older file forward one version at a time, inside one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import structlog
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from exporter.config import Config, LimitsConfig, Scope, WatchedImage
from exporter.config.schema import MAX_REGIONS_PER_IMAGE
from exporter.exposition.selfmetrics import StateMetrics
from exporter.history import ImageHistory, ReplicaHistory
from exporter.models import (
    CODE,
    ID,
    MAX_SIZE_BYTES,
    REGION,
    STATUS,
    GatedLabel,
    GatedRequestId,
    GatedStatus,
    GatedUrl,
    parse_time,
    unchanged,
)
from exporter.redaction import scrub, split_userinfo
from exporter.sharding import in_shard
from exporter.snapshot import DiscoveryStatus, ImageError, ImageFacts, ImageState, Replica, Snapshot

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "StateStore"]

log = structlog.get_logger("ehpc.state")

APPLICATION_ID = 0x45485043  # "EHPC": tells this exporter's files from any other SQLite database
SCHEMA_VERSION = 1
# MIGRATIONS[v] takes a file from version v to v + 1; version 0 is a new, empty file. What they build is
# also the only schema a file may hold (_schema): nothing else may be added to it, and no other object.
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
# How long a save or the start-up read waits for a lock another connection holds.
BUSY_TIMEOUT_SECONDS = 0.2
# Every statement's budget of VM steps: a base (about 0.15 s of work on a 2-core machine), a share per
# 4 KiB of file (a full read costs ~150 steps a page) and per row an executemany writes (~25 each).
# Ten times and more what this module's statements take, so only a statement that would not end
# reaches it. The budget is looked at every PROGRESS_STEPS steps.
BUDGET_STEPS = 10_000_000
BUDGET_STEPS_PER_PAGE = 10_000
BUDGET_STEPS_PER_ROW = 1_000
PROGRESS_STEPS = 1_000
# The longest value SQLite will hold for this file (SQLITE_LIMIT_LENGTH). The largest row this exporter
# writes (1,000 regions, every label at its bound in JSON escapes) is under 0.5 MiB; a longer value
# makes the file foreign rather than filling memory.
MAX_VALUE_BYTES = 1 << 20
# How much one save (or the start-up read's deletes) may grow the file: its own size again or 64 MiB,
# whichever is more, plus 16 KiB for each row the save writes (a row is about 1 KiB; 30 KiB with 50
# regions and every label at its bound). PRAGMA max_page_count, set before each save: past it a
# statement fails as on a full disk, so no statement can take the disk, whatever it would write.
MAX_GROWTH_BYTES = 64 * 1024 * 1024
GROWTH_BYTES_PER_ROW = 16 * 1024
# How long close() lets a statement in flight finish before it aborts it.
CLOSE_GRACE_SECONDS = 1.0

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
    if "too big" in text:
        return _Unusable("foreign", f"a value is longer than any this exporter writes ({text})")
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return _Unusable("corrupt", text)  # "file is not a database", "database disk image is malformed"
    if "locked" in text or "busy" in text:
        return _Unusable("locked", text)
    if "malformed" in text or "not a database" in text:
        return _Unusable("corrupt", text)
    return _Unusable("unreadable", text)  # cannot open or write: permissions, a read-only or full disk


# --------------------------------------------------------------------------------------------------
# The connection: only this module's statements, each within its budget.

# The actions this module's statements take (CREATE TABLE also inserts into sqlite_master and makes the
# primary key's index), the pragmas and the one function they use.
_ACTIONS = frozenset(
    {
        sqlite3.SQLITE_SELECT,
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_INSERT,
        sqlite3.SQLITE_UPDATE,
        sqlite3.SQLITE_DELETE,
        sqlite3.SQLITE_TRANSACTION,
        sqlite3.SQLITE_CREATE_TABLE,
        sqlite3.SQLITE_CREATE_INDEX,
    }
)
_PRAGMAS = frozenset(
    {
        "trusted_schema",
        "locking_mode",
        "application_id",
        "user_version",
        "page_count",
        "page_size",
        "quick_check",
        "journal_mode",
        "synchronous",
        "max_page_count",
    }
)
_FUNCTIONS = frozenset({"typeof"})


def _authorize(action: int, arg1: str | None, arg2: str | None, _db: str | None, source: str | None) -> int:
    """SQLITE_OK for what this module's own statements do; SQLITE_DENY for anything else, and for
    everything a trigger or view would do (``source`` names one; this schema has none)."""
    if source is not None:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA:
        allowed = arg1 in _PRAGMAS
    elif action == sqlite3.SQLITE_FUNCTION:
        allowed = arg2 in _FUNCTIONS
    else:
        allowed = action in _ACTIONS
    return sqlite3.SQLITE_OK if allowed else sqlite3.SQLITE_DENY


def _text(raw: bytes) -> str:
    """A TEXT value as a str even when it is not UTF-8 (lone surrogates, which the row gate refuses)."""
    return raw.decode("utf-8", "surrogateescape")


def _key(value: str) -> bytes:
    """A key read from the file, bound back as the very bytes it had (``CAST(? AS TEXT)``)."""
    return value.encode("utf-8", "surrogateescape")


class _Db:
    """The state file's one connection, opened defensively (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
        )
        self.conn = conn
        self.pages = 0  # the file's size in 4 KiB pages, for the budgets
        self._left = 0
        self._overran = False
        self._stopping = False
        try:
            setconfig = getattr(conn, "setconfig", None)
            if setconfig is not None:  # Python >= 3.12; on 3.11 the authorizer stands in for these
                for option, on in (
                    ("SQLITE_DBCONFIG_DEFENSIVE", True),
                    ("SQLITE_DBCONFIG_TRUSTED_SCHEMA", False),
                    ("SQLITE_DBCONFIG_ENABLE_TRIGGER", False),
                    ("SQLITE_DBCONFIG_ENABLE_VIEW", False),
                ):
                    setconfig(getattr(sqlite3, option), on)
            conn.set_authorizer(_authorize)
            conn.set_progress_handler(self._progress, PROGRESS_STEPS)
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
            conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
            conn.text_factory = _text
            self.execute("PRAGMA trusted_schema=OFF")
        except BaseException:
            conn.close()
            raise

    def _progress(self) -> int:
        self._left -= PROGRESS_STEPS
        if self._left < 0:
            self._overran = True
        return 1 if self._stopping or self._overran else 0

    @contextlib.contextmanager
    def _budget(self, rows: int = 0) -> Iterator[None]:
        """Run one statement within its budget; an abort or a refused action says why, as _Unusable."""
        steps = self._left = BUDGET_STEPS + BUDGET_STEPS_PER_PAGE * self.pages + BUDGET_STEPS_PER_ROW * rows
        self._overran = False
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if self._overran:
                raise _Unusable("foreign", f"a statement ran past its budget of {steps} VM steps") from None
            if self._stopping:
                raise _Unusable("unreadable", "the exporter is stopping") from None
            if "not authorized" in str(exc):
                raise _Unusable(
                    "foreign", "a statement would run a trigger, a view or a foreign action"
                ) from None
            raise

    def execute(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        """Run one statement; its rows."""
        with self._budget():
            return self.conn.execute(sql, params).fetchall()

    def one(self, sql: str) -> Any:
        """The first column of the first row of one statement (a pragma's value)."""
        return self.execute(sql)[0][0]

    def rows(self, sql: str) -> Iterator[Any]:
        """One statement's rows, one at a time (the caller runs no other statement meanwhile)."""
        with self._budget():
            yield from self.conn.execute(sql)

    def executemany(self, sql: str, rows: Iterable[Sequence[object]], count: int) -> None:
        """Run one statement for each of ``count`` rows, within one budget that grows with them."""
        with self._budget(count):
            self.conn.executemany(sql, rows)

    def measure(self, rows: int = 0) -> None:
        """Note the file's size, which the budgets grow with, and bound its growth from here for a
        save of ``rows`` rows."""
        count, size = self.one("PRAGMA page_count"), self.one("PRAGMA page_size")
        self.pages = count * size // 4096
        growth = max(count, MAX_GROWTH_BYTES // size) + rows * (GROWTH_BYTES_PER_ROW // size + 1)
        self.execute(f"PRAGMA max_page_count={count + growth}")

    def stop(self) -> None:
        """Abort the running statement and every later one (called from another thread)."""
        self._stopping = True
        with contextlib.suppress(sqlite3.ProgrammingError):  # closed meanwhile: nothing runs
            self.conn.interrupt()

    def close(self) -> None:
        """Close the connection (releasing the file's lock)."""
        self.conn.close()


@functools.cache
def _schema(version: int) -> frozenset[tuple[Any, ...]]:
    """``sqlite_master`` as :data:`MIGRATIONS` leave a new file at ``version``: all a file may hold."""
    conn = sqlite3.connect(":memory:")
    try:
        for v in range(version):
            for statement in MIGRATIONS[v]:
                conn.execute(statement)
        return frozenset(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
    finally:
        conn.close()


def _check_schema(db: _Db, version: int) -> None:
    """Refuse (foreign) a file whose schema objects are not exactly those of ``version``."""
    found = list(db.rows("SELECT type, name, tbl_name, sql FROM sqlite_master"))
    expected = _schema(version)
    kinds = ("table", "index", "view", "trigger")
    extra = Counter(row[0] if row[0] in kinds else "object" for row in found if row not in expected)
    missing = len(expected - set(found))
    if extra or missing:
        what = [f"{n} unexpected {kind}{'s' if n > 1 else ''}" for kind, n in sorted(extra.items())]
        what += [f"{missing} of its tables missing"] if missing else []
        raise _Unusable("foreign", f"the schema is not version {version}'s: {', '.join(what)}")


# --------------------------------------------------------------------------------------------------
# Rows: what one image's state is stored as, read back through the ingestion gate's kinds.

_Time = Annotated[float, Field(allow_inf_nan=False, ge=0, le=1e11)]
# Non-empty kinds: the length bound first, so pydantic checks it before the gate's own validator.
_Region = Annotated[str, Field(min_length=1), AfterValidator(unchanged(REGION))]
_Code = Annotated[str, Field(min_length=1), AfterValidator(unchanged(CODE))]
_MAX_REGIONS = LimitsConfig().max_regions_per_image  # the default limit
MAX_IGNORED = 16  # the gate names at most a few fields it could not use (Size, CreateTime, regions)


def _created(value: float) -> float:
    """A creation time the gate would have kept (:func:`exporter.models.parse_time`'s range)."""
    if parse_time(datetime.fromtimestamp(value, UTC).isoformat()) is None:
        raise ValueError("is not a plausible creation time")
    return value


def _bare(url: str) -> str:
    """A registry URL as :func:`exporter.models.registry_url` leaves it: no userinfo, query or fragment.

    Checked, not cleaned: cleaning would register the userinfo as secrets, and what a tampered row
    holds must not become a secret that makes answers refused.
    """
    if split_userinfo(url)[1] or "?" in url or "#" in url:
        raise ValueError("is not a registry URL as the gate leaves it (userinfo, query or fragment)")
    return url


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _WatchedRow(_Row):
    type: Literal["VM", "Container"]
    category: Literal["Public", "Custom"] | None
    regions: Annotated[list[_Region], Field(max_length=MAX_REGIONS_PER_IMAGE)]


class _FactsRow(_Row):
    image_type: Annotated[str, Field(min_length=1), AfterValidator(unchanged(STATUS))]
    name: GatedLabel
    version: GatedLabel
    app_id: GatedLabel
    status: GatedStatus
    size_bytes: Annotated[int, Field(ge=0, le=MAX_SIZE_BYTES)] | None
    create_time: Annotated[_Time, AfterValidator(_created)] | None
    os_tag: GatedLabel
    platform: GatedLabel
    architecture: GatedLabel
    registry_url: Annotated[GatedUrl, AfterValidator(_bare)]
    regions: Annotated[list[tuple[_Region, GatedStatus]], Field(max_length=MAX_REGIONS_PER_IMAGE)]
    ignored: Annotated[list[_Code], Field(max_length=MAX_IGNORED)]  # field names: the code shape


class _ErrorRow(_Row):
    code: _Code
    http_status: Annotated[int, Field(ge=0, le=999)]
    request_id: GatedRequestId | None
    since: _Time


class _HistoryRow(_Row):
    status: GatedStatus
    since: _Time
    changes: Annotated[int, Field(ge=0, le=2**53)]
    replicas: Annotated[
        list[tuple[_Region, GatedStatus | None, _Time, _Time | None]], Field(max_length=MAX_REGIONS_PER_IMAGE)
    ]


class _StateRow(_Row):
    watched: _WatchedRow
    facts: _FactsRow | None
    error: _ErrorRow | None
    history: _HistoryRow | None


class _DiscoveryRow(_Row):
    up: bool
    last_success: _Time | None
    discovered: Annotated[int, Field(ge=0, le=10**9)]
    error_code: _Code | None


class _RowRefused(ValueError):
    """A stored row the gate does not let in; the message names the field and why, never the value."""


def _why(exc: ValueError) -> str:
    """Where and why a row was refused, in one line that never quotes the row."""
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
        return f"{'.'.join(str(p) for p in first['loc']) or 'state'}: {first['msg']}"
    return str(exc)


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


_gated_id_kind = unchanged(ID)


def _gated_id(image_id: str) -> None:
    """Refuse an image id the ingestion gate would not let in, or that the output gate would change:
    two such ids could be published as one (a URL's userinfo, say, is masked to the same text)."""
    try:
        _gated_id_kind(image_id)
    except ValueError as exc:
        raise _RowRefused(f"image_id {exc}") from None
    if not image_id:
        raise _RowRefused("image_id is empty")
    if scrub(image_id) != image_id:
        raise _RowRefused("image_id would be published as another value (it could collide with another id)")


def _decode(
    scope: Scope,
    image_id: str,
    text: object,
    last_success: object,
    *,
    max_regions: int = _MAX_REGIONS,
    configured: bool = False,
) -> ImageState:
    """One stored image through the gate's kinds and limits; a ValueError (``_RowRefused`` or pydantic's
    ValidationError) when it does not pass. ``configured``: the id is one the config file lists, which
    passed the config file's own gate."""
    if not configured:
        _gated_id(image_id)
    if not isinstance(text, str):
        raise _RowRefused("state is not text")
    row = _StateRow.model_validate_json(text)
    last = _time(last_success)
    if last_success is not None and last is None:
        raise _RowRefused("last_success is not a time")
    w, f, e, h = row.watched, row.facts, row.error, row.history
    for where, regions in (
        ("watched.regions", w.regions),
        ("facts.regions", [r for r, _ in f.regions] if f is not None else ()),
        ("history.replicas", [r[0] for r in h.replicas] if h is not None else ()),
    ):
        if len(regions) > max_regions:
            raise _RowRefused(f"{where}: more than {max_regions} entries (limits.max_regions_per_image)")
        if len(set(regions)) != len(regions):  # the region's series would be published twice
            raise _RowRefused(f"{where}: a region is listed twice")
    watched = WatchedImage(image_id, w.type, w.category, tuple(w.regions))
    facts = None
    if f is not None:
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
            registry_url=f.registry_url,
            additional_regions=tuple(Replica(r, s) for r, s in f.regions),
            ignored=tuple(f.ignored),
        )
    error = None if e is None else ImageError(e.code, e.http_status, e.request_id, e.since)
    history = None
    if h is not None:
        history = ImageHistory(h.status, h.since, h.changes, tuple(ReplicaHistory(*r) for r in h.replicas))
    return ImageState(watched, facts, last, error, scope, history)


def _durable(state: ImageState) -> tuple[object, ...]:
    """What the ``state`` column holds: when only the last success moved, the row is not re-encoded."""
    return (state.watched, state.image, state.error, state.history)


# --------------------------------------------------------------------------------------------------
# The store.


@dataclass
class _Loaded:
    """What the start-up read found."""

    snapshots: dict[Scope, Snapshot]
    problem: _Unusable | None = None  # the file was moved aside: a cold start
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
        self._clock = wall_clock
        self._db: _Db | None = None
        # Per (account, region), its images' states as last committed (compared by value with the next).
        self._saved: dict[Scope, Mapping[str, ImageState]] = {}
        self._failing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ehpc-state")

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- opening ----------------------------------------------------------------------------------------

    def _open(self) -> _Db:
        """Open the file, check, create or migrate its schema and hold it; _Unusable when it cannot be."""
        try:
            db = _Db(self.path)
        except (sqlite3.Error, OSError) as exc:
            raise _classify(exc) from None
        try:
            # One exporter per file: the lock taken below is kept until the connection closes (the
            # process ends), so a second exporter pointed at the same file sees "locked", not a mix.
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            app_id = db.one("PRAGMA application_id")
            version = db.one("PRAGMA user_version")
            if app_id != APPLICATION_ID and (app_id != 0 or version != 0):
                raise _Unusable("foreign", f"application id {app_id:#x} is not this exporter's")
            if version > SCHEMA_VERSION:
                raise _Unusable("foreign", f"schema version {version} is newer than this exporter's")
            db.measure()
            # Before anything else reads the file: quick_check evaluates CHECK constraints, and every
            # later statement would run any trigger or view the file brought.
            _check_schema(db, version)
            if db.one("PRAGMA quick_check") != "ok":
                raise _Unusable("corrupt", "quick_check failed")
            # Only now that the file is known to be ours (or new) is anything written to it.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if version < SCHEMA_VERSION:
                self._migrate(db, version)
                _check_schema(db, SCHEMA_VERSION)
        except BaseException as exc:
            db.close()
            raise _classify(exc) from None
        return db

    @staticmethod
    def _migrate(db: _Db, version: int) -> None:
        db.execute("BEGIN IMMEDIATE")  # also takes the lock now, before anything is read
        try:
            for v in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[v]:
                    db.execute(statement)
            db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error, _Unusable):
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

    def _connect(self) -> tuple[_Db, _Unusable | None]:
        """An open connection, having moved a corrupt or foreign file aside (the problem it had, if any)."""
        try:
            return self._open(), None
        except _Unusable as problem:
            return self._replace(problem), problem

    def _replace(self, problem: _Unusable) -> _Db:
        """Move a corrupt or foreign file aside and open a new one (re-raise any other problem)."""
        if problem.reason not in ("corrupt", "foreign"):
            raise problem
        try:
            self._move_aside(problem.reason)
        except OSError as exc:
            raise _Unusable("unreadable", f"cannot move the {problem.reason} file aside: {exc}") from None
        return self._open()

    # -- load -------------------------------------------------------------------------------------------

    async def load(self, config: Config) -> dict[Scope, Snapshot]:
        """Open the file and rebuild each configured (account, region)'s last snapshot (never raises)."""
        started = time.perf_counter()
        existed = self.path.exists()
        try:
            loaded: _Loaded = await self._run(self._load, config)
        except Exception as exc:  # _Unusable, or whatever else: a cold start, never a crash
            self._load_failed(_classify(exc))
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

    def _load_failed(self, problem: _Unusable) -> None:
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
            problem = _classify(exc)
            self._db = None
            db.close()
            self._db = self._replace(problem)
            return _Loaded({}, problem)

    def _read(self, db: _Db, config: Config) -> _Loaded:
        """Rebuild each configured (account, region)'s snapshot from the rows, and drop the others."""
        wanted = {c.scope: c for c in config.scopes()}
        statuses: dict[Scope, tuple[float | None, float | None, DiscoveryStatus | None]] = {}
        untyped = False  # a key that is not text: deleted by its type, since it cannot be bound back
        for account, region, refreshed_at, duration, discovery in db.rows("SELECT * FROM scopes"):
            if not (isinstance(account, str) and isinstance(region, str)):
                untyped = True
            elif Scope(account, region) in wanted:
                statuses[Scope(account, region)] = (
                    _time(refreshed_at),
                    _time(duration),
                    _discovery(discovery),
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
                state = _decode(
                    scope,
                    image_id,
                    text,
                    last_success,
                    max_regions=cfg.limits.max_regions_per_image,
                    configured=image_id in static[scope],
                )
            except ValueError as exc:  # pydantic's ValidationError is one
                refused.append(_why(exc))
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
        db: _Db,
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
            with contextlib.suppress(sqlite3.Error, _Unusable):
                db.execute("ROLLBACK")
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
            full = ((*s.key, _encode(s)) for s in changed)
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
                with contextlib.suppress(sqlite3.Error, _Unusable):
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
                with contextlib.suppress(sqlite3.Error, _Unusable):
                    db.execute("ROLLBACK")
                raise

        try:
            await self._run(drop)
        except Exception as exc:
            self._metrics.save_errors += 1
            log.warning("state_save_failed", path=str(self.path), error=_classify(exc).detail)

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
    db: _Db, where: str, keys: Iterable[Sequence[str]], *, tables: Sequence[str] = ("images", "successes")
) -> None:
    """Delete the rows with these keys from ``tables``, matching the keys' bytes as the file has them."""
    raw = [tuple(_key(k) for k in key) for key in keys]
    for table in tables:
        db.executemany(f"DELETE FROM {table} WHERE {where}", raw, len(raw))  # noqa: S608 - fixed names


def _delete_untyped(db: _Db) -> None:
    """Delete the rows whose keys are not text (only a tampered file has them)."""
    untyped = "typeof(account) != 'text' OR typeof(region_id) != 'text'"
    db.execute(f"DELETE FROM scopes WHERE {untyped}")  # noqa: S608 - fixed text
    for table in ("images", "successes"):
        db.execute(f"DELETE FROM {table} WHERE {untyped} OR typeof(image_id) != 'text'")  # noqa: S608


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
