"""A tampered state file, in process: classes of bad rows and hostile schema objects, generated.

Rows (as ``tests/test_hostile.py`` does for API answers): every field of a stored row x every family of
bad value (too long, control characters, bidi controls, lone surrogates, other shapes, known secrets,
wrong types, out of range, too many regions, a region twice, ids that collide once published), plus
the key columns and the row as a whole. Each family is one file: one row per case among good rows,
read by a real :class:`StateStore`. Every case must be refused: its image is not restored (it starts
cold), its row is gone from the file, and ``load_errors["row"]`` counts exactly the refused rows, while
every good row loads.

Schema objects: triggers of each kind (recursive queries on insert, update and delete, a growth
trigger, INSTEAD OF on a view), views (one in a table's place), extra indexes, virtual tables, altered
tables, planner statistics. Each makes the file foreign: moved aside with its bytes unchanged (so
nothing in it ran), counted, and a new file works. The layers behind that gate are tested with it
switched off: the authorizer alone keeps every trigger and view from running, and the statement budget
with the growth bound alone ends every runaway statement and keeps the file from growing past its bound.

The real-process case (a trigger-laden file neither hangs start-up nor blocks SIGTERM) is in
``tests/test_state.py`` with the other files that cannot be used.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from exporter import state, state_db
from exporter.config import Config, DiscoveryConfig, LimitsConfig, Scope, StatusConfig, WatchedImage
from exporter.config.schema import MAX_REGIONS_PER_IMAGE
from exporter.exposition.selfmetrics import StateMetrics
from exporter.history import ImageHistory, ReplicaHistory
from exporter.models import CODE, ID, LABEL, REGION, REQUEST_ID, STATUS, URL, Kind, check_text
from exporter.redaction import register_secret, scrub
from exporter.snapshot import ImageError, ImageFacts, ImageKey, ImageState, Replica, Snapshot
from exporter.state import StateStore
from exporter.state_rows import decode_row, encode_row

SCOPE = Scope("default", "cn-hangzhou")
ALL_REGIONS = ("cn-beijing", "cn-shanghai")
# Alphanumeric, so that it fits every shape it is planted in; pinned like a config file's secret, by
# family_cases (the suite's autouse fixture forgets it after each test).
SECRET = "StateHostileSecret7f3a9c1e5b"

# ------------------------------------------------------------------------------------------- rows


def good_state(image_id: str) -> ImageState:
    """A state with every field set (so every path of the row exists)."""
    facts = ImageFacts(
        "VM",
        "name",
        "1.0",
        "app",
        "Available",
        10,
        None,
        "CentOS",
        "linux",
        "x86_64",
        "registry.example.com/ns/repo:tag",
        tuple(Replica(r, "Available") for r in ALL_REGIONS),
        ("Image.Size",),
    )
    history = ImageHistory(
        "Available", 1.0, 2, tuple(ReplicaHistory(r, "Available", 1.0, 0.5) for r in ALL_REGIONS)
    )
    error = ImageError("Throttling.User", 400, "04F0F334-1335-436C", 5.0)
    watched = WatchedImage(image_id, "VM", "Custom", ALL_REGIONS)
    return ImageState(watched, facts, 3.0, error, SCOPE, history)


def good_row() -> dict[str, Any]:
    """The stored row of :func:`good_state`, as JSON data."""
    row: dict[str, Any] = json.loads(encode_row(good_state("m-good")))
    row["facts"]["create_time"] = 1_700_000_000.0
    return row


@dataclass(frozen=True)
class RowField:
    """One value of a stored row: where it is, what kind of value the gate takes there."""

    path: tuple[str | int, ...]
    kind: Kind | str  # a gate kind for strings; else "int", "time", "created", "enum"
    nullable: bool = False
    empty_ok: bool = True  # "" passes (an API answer may leave the field out)

    @property
    def name(self) -> str:
        return ".".join(str(p) for p in self.path)


# Every value of a row, once. Adding a field to the row is one line here.
FIELDS: tuple[RowField, ...] = (
    RowField(("watched", "type"), "enum"),
    RowField(("watched", "category"), "enum", nullable=True),
    RowField(("watched", "regions", 0), REGION, empty_ok=False),
    RowField(("facts", "image_type"), STATUS, empty_ok=False),
    RowField(("facts", "name"), LABEL),
    RowField(("facts", "version"), LABEL),
    RowField(("facts", "app_id"), LABEL),
    RowField(("facts", "status"), STATUS),
    RowField(("facts", "size_bytes"), "int", nullable=True),
    RowField(("facts", "create_time"), "created", nullable=True),
    RowField(("facts", "os_tag"), LABEL),
    RowField(("facts", "platform"), LABEL),
    RowField(("facts", "architecture"), LABEL),
    RowField(("facts", "registry_url"), URL),
    RowField(("facts", "regions", 0, 0), REGION, empty_ok=False),
    RowField(("facts", "regions", 0, 1), STATUS),
    RowField(("facts", "ignored", 0), CODE, empty_ok=False),
    RowField(("error", "code"), CODE, empty_ok=False),
    RowField(("error", "http_status"), "int"),
    RowField(("error", "request_id"), REQUEST_ID, nullable=True),
    RowField(("error", "since"), "time"),
    RowField(("history", "status"), STATUS),
    RowField(("history", "since"), "time"),
    RowField(("history", "changes"), "int"),
    RowField(("history", "replicas", 0, 0), REGION, empty_ok=False),
    RowField(("history", "replicas", 0, 1), STATUS, nullable=True),
    RowField(("history", "replicas", 0, 2), "time"),
    RowField(("history", "replicas", 0, 3), "time", nullable=True),
)
STRINGS = tuple(f for f in FIELDS if isinstance(f.kind, Kind))

# A printable value of the right length that is not of the kind's shape (shaped kinds only).
BAD_SHAPES: dict[str, tuple[str, ...]] = {
    ID.name: ("../x", " m-1", "m 1", "-m", "m-1;DROP", "ü-1"),
    REGION.name: ("Mars 1", "CN-HANGZHOU", "cn_hangzhou", "cn-", "hangzhou", "cn--x"),
    STATUS.name: ("Available now!", "1Available", "Avail able", "Status:Ok", "Ávailable"),
    CODE.name: ("Foo Bar!", "1Code", "Code;x", "Throttling/User"),
    REQUEST_ID.name: ("a b", "-abc", "abc.def", "id\\n"),
}


def _long(kind: Kind) -> str:
    """A value of the kind's shape, one character past its bound."""
    if kind is REGION:
        return "cn-" + "a" * (kind.max_length - 2)
    return "a" * (kind.max_length + 1)


def _valid(kind: Kind) -> str:
    return {REGION.name: "cn-beijing", CODE.name: "Throttling", REQUEST_ID.name: "ABC-123"}.get(
        kind.name, "Available"
    )


@dataclass(frozen=True)
class Case:
    """One bad row: its name, and how it differs from a good row (its JSON data, its text, or its
    columns)."""

    name: str
    data: Callable[[dict[str, Any]], Any] | None = None  # the row as JSON data
    text: Callable[[str], str | bytes] | None = None  # the row's text (after data)
    image_id: object = None  # the key column, when the case is about it
    last_success: object = 3.0
    rows: int = 1  # rows this case writes (all refused)


def _put(path: tuple[str | int, ...], value: Any) -> Callable[[dict[str, Any]], Any]:
    def put(row: dict[str, Any]) -> Any:
        node: Any = row
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return row

    return put


MARK = "@@BAD@@"


def _raw(path: tuple[str | int, ...], raw: str) -> Case:
    """A value written raw into the JSON text (escapes JSON data cannot carry)."""
    return Case(
        f"{'.'.join(map(str, path))} = {raw}", _put(path, MARK), lambda t: t.replace(f'"{MARK}"', raw)
    )


def fam_too_long(f: RowField) -> list[Case]:
    """One character past the kind's bound."""
    assert isinstance(f.kind, Kind)
    return [Case(f"{f.name} too long", _put(f.path, _long(f.kind)))]


CONTROLS = {
    "NUL": "\x00",
    "BEL": "\x07",
    "ANSI colour": "\x1b[31m",
    "newline": "\n",
    "DEL": "\x7f",
    "C1 NEL": "\x85",
    "C1 CSI": "\x9b",
}
BIDI = {"RLO": "\u202e", "LRI": "\u2066", "RLM": "\u200f", "PDI": "\u2069"}


def _inside(f: RowField, insert: str) -> str:
    assert isinstance(f.kind, Kind)
    base = _valid(f.kind)
    return base[:3] + insert + base[3:]


def fam_controls(f: RowField) -> list[Case]:
    """C0, C1, DEL and ANSI controls inside an otherwise valid value (the gate would strip or refuse
    them; a stored value never has them)."""
    return [Case(f"{f.name} with {n}", _put(f.path, _inside(f, c))) for n, c in CONTROLS.items()]


def fam_bidi(f: RowField) -> list[Case]:
    """Bidi overrides, isolates and marks inside an otherwise valid value."""
    return [Case(f"{f.name} with {n}", _put(f.path, _inside(f, c))) for n, c in BIDI.items()]


def fam_surrogates(f: RowField) -> list[Case]:
    """Lone surrogates, as JSON escapes (valid JSON, not Unicode)."""
    return [_raw(f.path, r'"Bad\udfff"'), _raw(f.path, r'"\ud800x"')]


def fam_shapes(f: RowField) -> list[Case]:
    """Printable values that are not of the kind's shape (free text has none)."""
    assert isinstance(f.kind, Kind)
    return [Case(f"{f.name} = {v!r}", _put(f.path, v)) for v in BAD_SHAPES.get(f.kind.name, ())]


def fam_secrets(f: RowField) -> list[Case]:
    """A value carrying a secret the exporter knows (the gate refuses it anywhere)."""
    assert isinstance(f.kind, Kind)
    value = {REGION.name: "cn-" + SECRET.lower(), ID.name: "m-" + SECRET}.get(f.kind.name, SECRET)
    register_secret(value, pin=True)
    return [Case(f"{f.name} with a known secret", _put(f.path, value))]


def fam_types(f: RowField) -> list[Case]:
    """A JSON value of another type (strict: no coercion), null where none is allowed, and "" where the
    value may not be empty."""
    values: list[Any] = [7, True, 1.5, [], {}]
    if isinstance(f.kind, Kind):
        values += [] if f.empty_ok else [""]
    elif f.kind in ("int", "time", "created"):
        values = ["7", True, [], {}]
        values += [1.5] if f.kind == "int" else []
    else:  # an enum
        values = ["vm", "Public\x00", 1, True, ""]
    values += [] if f.nullable else [None]
    return [Case(f"{f.name} = {v!r}", _put(f.path, v)) for v in values]


def fam_ranges(f: RowField) -> list[Case]:
    """Numbers outside their range, and the non-numbers JSON parsers let through."""
    if isinstance(f.kind, Kind) or f.kind == "enum":
        return []
    ranges: dict[str, list[Any]] = {
        "int": [-1, 2**63, 2**80],
        "time": [-1.0, 1e12, 1e300, -0.5],
        "created": [0.0, 946_684_799.0, 7_258_118_401.0, 1e11, -1.0],
    }
    values = ranges[f.kind]
    if f.name == "error.http_status":
        values = [-1, 1000, 2**63]
    cases = [Case(f"{f.name} = {v!r}"[:80], _put(f.path, v)) for v in values]
    raws = ("NaN", "Infinity", "-Infinity", "1e99999", "9" * 5000)
    return [*cases, *(_raw(f.path, raw) for raw in raws)]


FAMILIES: dict[str, Callable[[RowField], list[Case]]] = {
    "too long": fam_too_long,
    "controls": fam_controls,
    "bidi": fam_bidi,
    "lone surrogates": fam_surrogates,
    "shapes": fam_shapes,
    "known secrets": fam_secrets,
    "wrong types": fam_types,
    "ranges": fam_ranges,
}
STRING_FAMILIES = ("too long", "controls", "bidi", "lone surrogates", "shapes", "known secrets")
MAX_REGIONS = LimitsConfig().max_regions_per_image


def _regions(n: int) -> list[str]:
    return [f"cn-region{i}" for i in range(n)]


def list_cases() -> list[Case]:
    """Lists past the per-image limit or the static cap, a region twice (its series would be published
    twice: ids that collide), too many ignored fields."""
    out: list[Case] = []
    over = _regions(MAX_REGIONS + 1)
    capped = _regions(MAX_REGIONS_PER_IMAGE + 1)
    for where, one in (
        (("watched", "regions"), lambda r: r),
        (("facts", "regions"), lambda r: [r, "Available"]),
        (("history", "replicas"), lambda r: [r, "Available", 1.0, None]),
    ):
        name = ".".join(where)
        out += [
            Case(f"{name}: {MAX_REGIONS + 1} regions", _put(where, [one(r) for r in over])),
            Case(f"{name}: {len(capped)} regions", _put(where, [one(r) for r in capped])),
            Case(f"{name}: a region twice", _put(where, [one("cn-beijing"), one("cn-beijing")])),
        ]
    out.append(Case("facts.ignored: 17 fields", _put(("facts", "ignored"), ["Image.Size"] * 17)))
    return out


def id_cases() -> list[Case]:
    """The image id column (a discovered image's: the ID kind): bounds, controls, shapes, secrets, ids
    the output gate would publish as another (two colliding ones), and keys that are not text."""
    out = [
        Case("image_id too long", image_id="m-" + "a" * ID.max_length),
        Case("image_id empty", image_id=""),
        Case("image_id with a known secret", image_id="m-" + SECRET),
        *(Case(f"image_id with {n}", image_id=f"m-a{c}b") for n, c in {**CONTROLS, **BIDI}.items()),
        *(Case(f"image_id = {v!r}", image_id=v) for v in BAD_SHAPES[ID.name]),
        Case("image_id with URL userinfo", image_id="registry://puller:secretpw@host/x"),
        # Two ids that differ only in what the output gate masks: both would be published as one.
        Case("colliding image ids (a)", image_id="h://alice:pw1@x"),
        Case("colliding image ids (b)", image_id="h://bob:pw2@x"),
        Case("image_id as a blob", image_id=b"m-blob"),
        Case("image_id not UTF-8", image_id=("BYTES", b"m-\xff\xfe")),
    ]
    return out


def row_cases() -> list[Case]:
    """The row as a whole, and its last-success column."""
    row_texts: dict[str, Callable[[str], str | bytes]] = {
        "not JSON": lambda _: "not json at all",
        "JSON array": lambda _: "[]",
        "JSON null": lambda _: "null",
        "truncated": lambda t: t[: len(t) // 2],
        "nested 100,000 deep": lambda _: "[" * 100_000 + "]" * 100_000,
        "an integer of 10,000 digits": lambda t: t.replace('"changes": 2', '"changes": ' + "9" * 10_000),
        "not UTF-8": lambda t: t.encode()[:10] + b"\xff\xfe" + t.encode()[10:],
        "as a blob": lambda t: t.encode(),
    }
    out = [Case(f"state {n}", text=fn) for n, fn in row_texts.items()]
    row = good_row()
    out += [Case(f"{key} missing", _without_key(key)) for key in ("watched", "facts", "error", "history")]
    for key in ("", "watched", "facts", "error", "history"):
        where = (key, "extra") if key else ("extra",)
        out.append(Case(f"extra key in {key or 'the row'}", _put(where, 1)))
    out += [Case(f"facts.{k} missing", _without(("facts", k))) for k in row["facts"]]
    out += [
        Case(f"last_success = {v!r}", last_success=v)
        for v in ("soon", -1.0, 1e12, b"\x00", float("inf"), float("-inf"))
    ]
    return out


def _without_key(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: {k: v for k, v in row.items() if k != key}


def _without(path: tuple[str, str]) -> Callable[[dict[str, Any]], Any]:
    def drop(row: dict[str, Any]) -> Any:
        del row[path[0]][path[1]]
        return row

    return drop


def family_cases(family: str) -> list[Case]:
    """Every case of one family, over every field it applies to."""
    register_secret(SECRET, pin=True)
    if family == "lists":
        return list_cases()
    if family == "image ids":
        return id_cases()
    if family == "rows":
        return row_cases()
    fields = STRINGS if family in STRING_FAMILIES else FIELDS
    return [c for f in fields for c in FAMILIES[family](f)]


ALL_FAMILIES = (*FAMILIES, "lists", "image ids", "rows")
GOOD = [f"m-good{i:04d}" for i in range(5)]
CONFIG = Config(
    images=(),
    discovery=DiscoveryConfig(enabled=True, image_category="Custom", additional_region_ids=ALL_REGIONS),
)


def _snapshot(ids: list[str], at: float = 100.0) -> Snapshot:
    states = [good_state(i) for i in ids]
    return Snapshot.build(
        states, status=StatusConfig(), refreshed_at=at, duration_seconds=1.0, sequence=1, scope=SCOPE
    )


async def _file_with(path: Path, ids: list[str]) -> None:
    """A state file written by a real store, holding ``ids``."""
    store = StateStore(str(path), StateMetrics())
    await store.load(CONFIG)
    await store.save(_snapshot(ids))
    await store.close()


def _plant(path: Path, cases: list[Case]) -> dict[str, str]:
    """Write each case's row into the file with plain sqlite3 (as anyone could); case id -> name."""
    template = json.dumps(good_row())
    conn = sqlite3.connect(path)
    names: dict[str, str] = {}
    try:
        for n, case in enumerate(cases):
            image_id: object = case.image_id if case.image_id is not None else f"m-case{n:05d}"
            data = case.data(json.loads(template)) if case.data is not None else json.loads(template)
            text: str | bytes = json.dumps(data)
            if case.text is not None:
                text = case.text(json.dumps(data))
            key_sql, key = "?", image_id
            if isinstance(image_id, tuple):  # bytes stored as TEXT that is not UTF-8
                key_sql, key = "CAST(? AS TEXT)", image_id[1]
            text_sql = "CAST(? AS TEXT)" if isinstance(text, bytes) and "blob" not in case.name else "?"
            conn.execute(
                f"INSERT INTO images VALUES (?, ?, {key_sql}, {text_sql})",  # noqa: S608 - fixed fragments
                (SCOPE.account, SCOPE.region_id, key, text),
            )
            conn.execute(
                f"INSERT INTO successes VALUES (?, ?, {key_sql}, ?)",  # noqa: S608 - fixed fragments
                (SCOPE.account, SCOPE.region_id, key, case.last_success),
            )
            differs = text != template or case.image_id is not None or case.last_success != 3.0
            assert differs, f"case {case.name!r} writes a good row"
            names[repr(image_id)] = case.name
        conn.commit()
    finally:
        conn.close()
    return names


def _image_ids(path: Path) -> list[bytes]:
    conn = sqlite3.connect(path)
    conn.text_factory = bytes
    try:
        return [r[0] for r in conn.execute("SELECT image_id FROM images")]
    finally:
        conn.close()


@pytest.mark.parametrize("family", ALL_FAMILIES)
async def test_every_bad_row_is_refused_counted_and_the_rest_loads(family: str, tmp_path: Path) -> None:
    """Each case of the family is refused: its image is not restored (it starts cold), its row is
    deleted, and load_errors["row"] counts exactly the refused rows; every good row loads as saved."""
    cases = family_cases(family)
    assert cases
    path = tmp_path / "state.db"
    await _file_with(path, GOOD)
    names = _plant(path, cases)
    metrics = StateMetrics()
    store = StateStore(str(path), metrics)
    loaded = await store.load(CONFIG)
    await store.close()
    restored = {k.image_id for k in loaded[SCOPE].images} if SCOPE in loaded else set()
    assert restored == set(GOOD), [names.get(repr(i), i) for i in sorted(restored - set(GOOD))]
    for image_id in GOOD:
        assert loaded[SCOPE].images[ImageKey(*SCOPE, image_id)] == good_state(image_id)
    assert metrics.load_errors == {
        "corrupt": 0,
        "foreign": 0,
        "locked": 0,
        "unreadable": 0,
        "row": len(cases),
    }
    left = {i.decode("utf-8", "replace") if isinstance(i, bytes) else i for i in _image_ids(path)}
    assert left == set(GOOD), sorted(map(str, left - set(GOOD)))[:10]


async def test_a_listed_id_the_config_gate_let_in_loads_whatever_its_shape(tmp_path: Path) -> None:
    """Ids from the config file passed the config's own gate: a listed id outside the API's id shape
    (an underscore first) is restored, where the same id found by discovery would be refused."""
    odd = "_m_listed"
    path = tmp_path / "state.db"
    config = Config(images=(WatchedImage(odd, "VM", "Custom", ALL_REGIONS),))
    store = StateStore(str(path), StateMetrics())
    await store.load(config)
    await store.save(_snapshot([odd]))
    await store.close()
    metrics = StateMetrics()
    store = StateStore(str(path), metrics)
    loaded = await store.load(config)
    await store.close()
    assert list(loaded[SCOPE].images) == [ImageKey(*SCOPE, odd)]
    assert metrics.load_errors["row"] == 0
    with pytest.raises(ValueError, match="image_id"):
        decode_row(SCOPE, odd, encode_row(good_state(odd)), 3.0)


async def test_the_region_limit_is_the_configs(tmp_path: Path) -> None:
    """limits.max_regions_per_image bounds a restored image as it bounds an answer: a row with 3 regions
    loads under a limit of 3 and is refused under 2."""
    state_3 = good_state("m-three")
    regions = ("cn-beijing", "cn-shanghai", "cn-hangzhou")
    state_3 = ImageState(
        WatchedImage("m-three", "VM", "Custom", regions), state_3.image, 3.0, None, SCOPE, state_3.history
    )
    text = encode_row(state_3)
    assert decode_row(SCOPE, "m-three", text, 3.0, max_regions=3).watched.additional_region_ids == regions
    with pytest.raises(ValueError, match="max_regions_per_image"):
        decode_row(SCOPE, "m-three", text, 3.0, max_regions=2)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(field=st.sampled_from(STRINGS), value=st.text(max_size=300))
def test_any_text_in_any_string_field_is_refused_or_as_the_gate_leaves_it(
    field: RowField, value: str
) -> None:
    """Whatever text a field holds, the row is refused or that value comes back as the gate would have
    left it (so a restored value is never one the API gate would not have let in)."""
    assert isinstance(field.kind, Kind)
    row = _put(field.path, value)(good_row())
    try:
        restored = decode_row(SCOPE, "m-any", json.dumps(row), 3.0)
    except ValueError:
        return
    assert check_text(value, field.kind) == value
    assert restored.image is not None


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(value=st.text(max_size=200))
@example("h://alice:pw1@x")
@example("m-a\u202eb")
def test_any_discovered_id_is_refused_or_published_as_itself(value: str) -> None:
    """A discovered image id comes back only if the gate lets it in unchanged and the output gate
    leaves it as it is: no two restored ids are published as one."""
    try:
        decode_row(SCOPE, value, encode_row(good_state("m-x")), 3.0)
    except ValueError:
        return
    assert check_text(value, ID) == value
    assert scrub(value) == value
    assert value


# ------------------------------------------------------------------------------------ schema objects

RECURSE = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)"
# Each: SQL run on a good file. Adding a kind of object is one line.
_HOSTILE: dict[str, str] = {
    "insert trigger, recursive query": (
        "CREATE TRIGGER t AFTER INSERT ON successes BEGIN"
        " INSERT INTO marks WITH_RECURSIVE SELECT x FROM c; END"
    ),
    "insert trigger, recursive scalar query": (
        "CREATE TRIGGER t BEFORE INSERT ON images BEGIN SELECT (WITH_RECURSIVE SELECT count(*) FROM c); END"
    ),
    "update trigger": (
        "CREATE TRIGGER t AFTER UPDATE ON scopes BEGIN INSERT INTO marks WITH_RECURSIVE SELECT x FROM c; END"
    ),
    "delete trigger, recursive query": (
        "CREATE TRIGGER t BEFORE DELETE ON images BEGIN INSERT INTO marks WITH_RECURSIVE SELECT x FROM c; END"
    ),
    "growth trigger": (
        "CREATE TRIGGER t AFTER INSERT ON successes BEGIN"
        " INSERT INTO marks SELECT zeroblob(100000) FROM (WITH_RECURSIVE SELECT x FROM c); END"
    ),
    "trigger inserting into the images": (
        "CREATE TRIGGER t AFTER INSERT ON successes BEGIN"
        " INSERT OR REPLACE INTO images VALUES (new.account, new.region_id, 'm-planted', '{}'); END"
    ),
    "view, recursive query": "CREATE VIEW v AS WITH_RECURSIVE SELECT x FROM c",
    "view in a table's place": (
        "DROP TABLE scopes;"
        " CREATE VIEW scopes (account, region_id, refreshed_at, duration_seconds, discovery) AS"
        " WITH_RECURSIVE SELECT x, x, x, x, x FROM c"
    ),
    "INSTEAD OF trigger on a view in a table's place": (
        "DROP TABLE scopes;"
        " CREATE VIEW scopes (account, region_id, refreshed_at, duration_seconds, discovery)"
        " AS SELECT 'default', 'cn-hangzhou', 1.0, 1.0, NULL;"
        " CREATE TRIGGER t INSTEAD OF INSERT ON scopes BEGIN INSERT INTO marks VALUES (1); END"
    ),
    "extra index": "CREATE INDEX i ON images (state)",
    "expression index": "CREATE INDEX i ON images (length(state), upper(state))",
    "partial index": "CREATE INDEX i ON images (account) WHERE state LIKE '%a%b%c%d%e%f%'",
    "virtual table (fts5)": "CREATE VIRTUAL TABLE v USING fts5 (a)",
    "virtual table in a table's place (fts5)": (
        "DROP TABLE images; CREATE VIRTUAL TABLE images USING fts5 (account, region_id, image_id, state)"
    ),
    "virtual table (rtree)": "CREATE VIRTUAL TABLE v USING rtree (id, x0, x1)",
    "extra table": "CREATE TABLE extra (x)",
    "extra column": "ALTER TABLE images ADD COLUMN extra TEXT",
    "generated column": "ALTER TABLE scopes ADD COLUMN g AS (length(discovery) * 2) VIRTUAL",
    # quick_check evaluates CHECK constraints: this one builds a 100 MB string for every row.
    "CHECK constraint": (
        "DROP TABLE successes; CREATE TABLE successes (account TEXT NOT NULL, region_id TEXT NOT NULL,"
        " image_id TEXT NOT NULL, last_success REAL"
        " CHECK (length(printf('%.*c', 100000000, 'x')) > 0),"
        " PRIMARY KEY (account, region_id, image_id)) WITHOUT ROWID"
    ),
    "a table missing": "DROP TABLE successes",
    "planner statistics (ANALYZE)": "ANALYZE",
}
# WITH_RECURSIVE stands for an endless recursive query, spelled out once.
HOSTILE_SCHEMA = {name: sql.replace("WITH_RECURSIVE", RECURSE) for name, sql in _HOSTILE.items()}

RUNAWAY = (
    "insert trigger, recursive query",
    "insert trigger, recursive scalar query",
    "delete trigger, recursive query",
    "growth trigger",
    "view in a table's place",
)


async def _hostile_file(path: Path, sql: str) -> None:
    await _file_with(path, GOOD)
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE marks (x)")  # what a trigger writes, if one ever runs
        conn.executescript(sql)
        conn.commit()
    finally:
        conn.close()


def _moved(directory: Path) -> list[Path]:
    """The files moved aside as foreign."""
    return [p for p in directory.iterdir() if p.name.startswith("state.db.foreign-")]


def _marks(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM marks").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("name", list(HOSTILE_SCHEMA))
async def test_any_schema_object_beyond_the_tables_makes_the_file_foreign(name: str, tmp_path: Path) -> None:
    """Checked before anything is read: the file is moved aside with its bytes unchanged (nothing in it
    ran), counted as foreign, and a new file takes the saves."""
    path = tmp_path / "state.db"
    await _hostile_file(path, HOSTILE_SCHEMA[name])
    before = path.read_bytes()
    metrics = StateMetrics()
    store = StateStore(str(path), metrics)
    loaded = await store.load(CONFIG)
    await store.save(_snapshot(GOOD, 200.0))
    await store.close()
    moved = _moved(tmp_path)
    assert loaded == {}
    assert metrics.load_errors == {"corrupt": 0, "foreign": 1, "locked": 0, "unreadable": 0, "row": 0}
    assert len(moved) == 1
    assert moved[0].read_bytes() == before
    assert metrics.save_errors == 0
    assert sorted(i.decode() for i in _image_ids(path)) == GOOD


async def test_a_file_found_foreign_at_a_save_is_moved_aside_too(tmp_path: Path) -> None:
    """A file held by another process at start-up and given a trigger before it let go: the first save
    that opens it checks it like the start-up read does."""
    path = tmp_path / "state.db"
    await _file_with(path, GOOD)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    metrics = StateMetrics()
    store = StateStore(str(path), metrics)
    assert await store.load(CONFIG) == {}
    holder.execute("CREATE TABLE marks (x)")
    holder.execute(HOSTILE_SCHEMA["insert trigger, recursive query"])
    holder.execute("COMMIT")
    holder.close()
    await store.save(_snapshot(GOOD, 200.0))
    await store.close()
    moved = _moved(tmp_path)
    assert metrics.load_errors["locked"] == 1
    assert metrics.save_errors == 0
    assert len(moved) == 1
    assert _marks(moved[0]) == 0


# ------------------------------------------------------------------------- the layers behind the gate


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every connection the store opens (a spy on the real constructor), stopped at the end so that a
    layer that failed to end a statement cannot leave a thread running past the test."""
    made: list[Any] = []
    original = state_db.StateDb.__init__

    def spy(self: Any, path: Path) -> None:
        made.append(self)
        original(self, path)

    monkeypatch.setattr(state_db.StateDb, "__init__", spy)
    yield made
    for db in made:
        db.stop()


async def _load_and_save(path: Path, connections: list[Any]) -> list[str]:
    """Start-up read, one save and close, as the service does; why the file or the save failed, if it
    did. A layer that lets a statement run on fails the test after a generous bound instead of hanging
    it."""
    store = StateStore(str(path), StateMetrics())

    async def run() -> None:
        await store.load(CONFIG)
        # One image gone (deleted), one new (inserted), the others' last successes moved (replaced).
        await store.save(_snapshot([*GOOD[1:], "m-new"], 200.0))
        await store.close()

    with structlog.testing.capture_logs() as logs:
        try:
            await asyncio.wait_for(run(), timeout=60)
        except TimeoutError:
            for db in connections:
                db.stop()
            pytest.fail("a statement ran on: the layer did not end it")
    return [str(e["error"]) for e in logs if e["event"] in ("state_unusable", "state_save_failed")]


TRIGGERS_AND_VIEWS = [n for n in HOSTILE_SCHEMA if "trigger" in n or "view" in n]
# Objects no statement of the store touches (it never updates, never reads another view): they must
# simply never run.
INERT = ("update trigger", "view, recursive query")
AUTHORIZER_REFUSAL = "a statement would run a trigger, a view or a foreign action"


@pytest.mark.parametrize("name", TRIGGERS_AND_VIEWS)
async def test_the_authorizer_alone_keeps_every_trigger_and_view_from_running(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connections: list[Any]
) -> None:
    """With the schema check switched off, nothing a trigger or view would do is authorized: the read
    or the save fails (counted), and the trigger never wrote anything."""
    monkeypatch.setattr(state, "check_schema", lambda db, statements, version: None)
    path = tmp_path / "state.db"
    await _hostile_file(path, HOSTILE_SCHEMA[name])
    errors = await _load_and_save(path, connections)
    moved = _moved(tmp_path)
    used = moved[0] if moved else path
    assert _marks(used) == 0
    assert b"m-planted" not in _image_ids(used)
    if name not in INERT:
        assert errors, "the file was used as if it held no trigger or view"
        assert all(e == AUTHORIZER_REFUSAL or "is a view" in e for e in errors), errors


@pytest.mark.parametrize("name", RUNAWAY)
async def test_the_budget_and_the_growth_bound_alone_end_every_runaway_statement(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connections: list[Any]
) -> None:
    """With the schema check and the authorizer switched off, a trigger or view that would run for ever
    or fill the disk is ended: by the statement's budget of VM steps, or by the growth bound (lowered
    here to 4 MiB), and the file and its WAL never grew past that bound."""
    monkeypatch.setattr(state, "check_schema", lambda db, statements, version: None)
    monkeypatch.setattr(state_db, "_authorize", lambda *args: sqlite3.SQLITE_OK)
    monkeypatch.setattr(state_db, "MAX_GROWTH_BYTES", 4 * 1024 * 1024)
    path = tmp_path / "state.db"
    await _hostile_file(path, HOSTILE_SCHEMA[name])
    size = path.stat().st_size
    largest = 0
    original = state_db.StateDb.execute

    def watch(self: Any, sql: str, params: Any = ()) -> Any:
        nonlocal largest
        largest = max(
            largest, sum(p.stat().st_size for p in tmp_path.iterdir() if p.name.startswith("state.db"))
        )
        return original(self, sql, params)

    monkeypatch.setattr(state_db.StateDb, "execute", watch)
    errors = await _load_and_save(path, connections)
    assert errors, "the runaway statement was not ended"
    assert any("ran past its budget" in e or "disk is full" in e for e in errors), errors
    rows_written = len(GOOD) + 1
    bound = size + 2 * (4 * 1024 * 1024 + rows_written * state_db.GROWTH_BYTES_PER_ROW)
    assert largest <= bound, f"the file grew to {largest} bytes, past {bound}"


async def test_closing_aborts_a_statement_that_would_not_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connections: list[Any]
) -> None:
    """With every other layer switched off (and the budget out of reach), a save stuck in a trigger's
    endless query does not hold up a stop: close() aborts it after its grace, the save is counted as
    failed, and the file stays whole."""
    monkeypatch.setattr(state, "check_schema", lambda db, statements, version: None)
    monkeypatch.setattr(state_db, "_authorize", lambda *args: sqlite3.SQLITE_OK)
    monkeypatch.setattr(state_db, "BUDGET_STEPS", 10**18)
    monkeypatch.setattr(state, "CLOSE_GRACE_SECONDS", 0.05)
    running = threading.Event()
    original = state_db.StateDb._progress

    def spy(self: Any) -> int:
        running.set()
        return original(self)

    monkeypatch.setattr(state_db.StateDb, "_progress", spy)
    path = tmp_path / "state.db"
    await _hostile_file(path, HOSTILE_SCHEMA["insert trigger, recursive scalar query"])
    metrics = StateMetrics()
    store = StateStore(str(path), metrics)
    await store.load(CONFIG)
    running.clear()
    saving = asyncio.ensure_future(store.save(_snapshot([*GOOD, "m-new"], 200.0)))
    assert await asyncio.to_thread(running.wait, 60), "the save's statement never ran"
    try:
        await asyncio.wait_for(store.close(), timeout=60)
    except TimeoutError:
        pytest.fail("close() waited on the statement instead of aborting it")
    await saving
    assert metrics.save_errors == 1
    assert sorted(i.decode() for i in _image_ids(path)) == GOOD


async def test_a_value_longer_than_any_the_exporter_writes_makes_the_file_foreign(tmp_path: Path) -> None:
    """A row past MAX_VALUE_BYTES is never read into memory: SQLite refuses the value, and the file
    (which this exporter cannot have written) is moved aside as foreign."""
    path = tmp_path / "state.db"
    await _file_with(path, GOOD)
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO images VALUES (?, ?, ?, ?)",
        (*SCOPE, "m-huge", "x" * (state_db.MAX_VALUE_BYTES + 1)),
    )
    conn.commit()
    conn.close()
    metrics = StateMetrics()
    store = StateStore(str(path), metrics)
    assert await store.load(CONFIG) == {}
    await store.close()
    assert metrics.load_errors["foreign"] == 1
    assert len(_moved(tmp_path)) == 1
