"""The state file's SQLite connection, opened as data: it runs this exporter's statements and nothing else.

:class:`StateDb` turns ``trusted_schema`` off (and, where Python offers ``Connection.setconfig``, 3.12 on,
SQLite's defensive mode with triggers and views disabled); sets an authorizer that lets through only the
actions, pragmas and function :mod:`exporter.state`'s statements take, and nothing a trigger or view
would run (on 3.11 it stands in for disabling them); gives every statement a budget of VM steps, so none
can run for ever, and :meth:`StateDb.stop` aborts one from another thread; bounds any value's length
and how much one save may grow the file; allows no ATTACH. :func:`check_schema` compares
``sqlite_master`` with exactly what the migrations build, before anything else reads the file.

What it cannot use is an :class:`Unusable` with a reason (``ehpc_state_load_errors_total{reason}``).
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "BUDGET_STEPS",
    "BUDGET_STEPS_PER_PAGE",
    "BUDGET_STEPS_PER_ROW",
    "BUSY_TIMEOUT_SECONDS",
    "GROWTH_BYTES_PER_ROW",
    "MAX_GROWTH_BYTES",
    "MAX_VALUE_BYTES",
    "PROGRESS_STEPS",
    "Reason",
    "StateDb",
    "Unusable",
    "check_schema",
    "classify",
    "key_bytes",
]

# How long a save or the start-up read waits for a lock another connection holds.
BUSY_TIMEOUT_SECONDS = 0.2
# Every statement's budget of VM steps: a base (about 0.15 s of work on a 2-core machine), a share per
# 4 KiB of file (a full read costs ~150 steps a page) and per row an executemany writes (~25 each).
# Ten times and more what the store's statements take, so only a statement that would not end
# reaches it. The budget is looked at every PROGRESS_STEPS steps.
BUDGET_STEPS = 10_000_000
BUDGET_STEPS_PER_PAGE = 10_000
BUDGET_STEPS_PER_ROW = 1_000
PROGRESS_STEPS = 1_000
# The longest value SQLite will hold for this file (SQLITE_LIMIT_LENGTH). The largest row the exporter
# writes (1,000 regions, every label at its bound in JSON escapes) is under 0.5 MiB; a longer value
# makes the file foreign rather than filling memory.
MAX_VALUE_BYTES = 1 << 20
# How much one save (or the start-up read's deletes) may grow the file: its own size again or 64 MiB,
# whichever is more, plus 16 KiB for each row the save writes (a row is about 1 KiB; 30 KiB with 50
# regions and every label at its bound). PRAGMA max_page_count, set before each save: past it a
# statement fails as on a full disk, so no statement can take the disk, whatever it would write.
MAX_GROWTH_BYTES = 64 * 1024 * 1024
GROWTH_BYTES_PER_ROW = 16 * 1024

Reason = Literal["corrupt", "foreign", "locked", "unreadable"]


class Unusable(Exception):
    """The file cannot be used as it is (exporter.state's docstring has each reason)."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason: Reason = reason
        self.detail = detail


def classify(exc: BaseException) -> Unusable:
    """What an sqlite3 or OS error says about the file."""
    if isinstance(exc, Unusable):
        return exc
    text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    if "too big" in text:
        return Unusable("foreign", f"a value is longer than any this exporter writes ({text})")
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return Unusable("corrupt", text)  # "file is not a database", "database disk image is malformed"
    if "locked" in text or "busy" in text:
        return Unusable("locked", text)
    if "malformed" in text or "not a database" in text:
        return Unusable("corrupt", text)
    return Unusable("unreadable", text)  # cannot open or write: permissions, a read-only or full disk


# The actions the store's statements take (CREATE TABLE also inserts into sqlite_master and makes the
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
    """SQLITE_OK for what the store's own statements do; SQLITE_DENY for anything else, and for
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


def key_bytes(value: str) -> bytes:
    """A key read from the file, bound back as the very bytes it had (``CAST(? AS TEXT)``)."""
    return value.encode("utf-8", "surrogateescape")


class StateDb:
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
        """Run one statement within its budget; an abort or a refused action says why, as Unusable."""
        steps = self._left = BUDGET_STEPS + BUDGET_STEPS_PER_PAGE * self.pages + BUDGET_STEPS_PER_ROW * rows
        self._overran = False
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if self._overran:
                raise Unusable("foreign", f"a statement ran past its budget of {steps} VM steps") from None
            if self._stopping:
                raise Unusable("unreadable", "the exporter is stopping") from None
            if "not authorized" in str(exc):
                raise Unusable(
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
def _schema(statements: tuple[str, ...]) -> frozenset[tuple[Any, ...]]:
    """``sqlite_master`` as ``statements`` leave a new file: all such a file may hold."""
    conn = sqlite3.connect(":memory:")
    try:
        for statement in statements:
            conn.execute(statement)
        return frozenset(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
    finally:
        conn.close()


def check_schema(db: StateDb, statements: Sequence[str], version: int) -> None:
    """Refuse (foreign) a file whose schema objects are not exactly what ``statements`` (the migrations
    up to ``version``) build."""
    found = list(db.rows("SELECT type, name, tbl_name, sql FROM sqlite_master"))
    expected = _schema(tuple(statements))
    kinds = ("table", "index", "view", "trigger")
    extra = Counter(row[0] if row[0] in kinds else "object" for row in found if row not in expected)
    missing = len(expected - set(found))
    if extra or missing:
        what = [f"{n} unexpected {kind}{'s' if n > 1 else ''}" for kind, n in sorted(extra.items())]
        what += [f"{missing} of its tables missing"] if missing else []
        raise Unusable("foreign", f"the schema is not version {version}'s: {', '.join(what)}")
