"""Hostile config files as families, not cases: whatever hypothesis writes, loading raises ConfigError only,
every line names the file and a field (or a line of it), none repeats a planted secret, and it is fast.

The families: alias bombs of any width and depth (sequences, merge keys, long scalars), huge, tiny and
non-finite numbers in every numeric field, control characters, lone surrogates and very long values in
every string field (both lists enumerated from the schema, so a new field is fuzzed without editing this
file), non-regular files and oversize files. Then the real CLI: the alias bomb refused in under a second
of CPU and under 100 MB, exit 2, one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from unittest import mock

import annotated_types
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import Config, Labels, yamlfile
from exporter.config.errors import file_keys
from exporter.config.load import ConfigError, load_config
from exporter.http.toolkit import load_web_security
from tests.fixtures.promstack import exporter_command

SECRET = "FuzzPlantedSecret0123456789abcdef"
BASE = f"credentials: {{type: access_key, access_key_id: LTAIfuzz, access_key_secret: {SECRET}}}\n"
# CPU seconds per load (the process's, not the wall clock's: a busy machine stretches wall time, not the
# work); the slowest family takes about 0.2 s.
FAST_SECONDS = 3.0
SMALL_BOMB = 50_000  # expanded nodes
FUZZ = settings(
    max_examples=30,
    deadline=None,  # CPU time is asserted per load, with a bound that says what it means
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# After the file: a line:column and/or a field, then the message; or a problem of the whole file.
_WHOLE_FILE = r"the top level must be a mapping|(\d+ )?more problems not shown"
_LINE_RE = r"^{path}(?P<at>:\d+:\d+)?: (?:(?P<where>[^:]+): |(?P<whole>" + _WHOLE_FILE + "))"


# --------------------------------------------------------------------------------------------------------
# The file's fields, read from the config classes (as the file spells them).


@dataclass(frozen=True)
class Leaf:
    """One scalar setting: where it is, its type, and its bounds (None: unbounded on that side)."""

    loc: tuple[str | int, ...]
    kind: type
    ge: float | None = None
    le: float | None = None
    gt: float | None = None
    lt: float | None = None

    @property
    def dotted(self) -> str:
        """The location as error lines write it (``api.retry.max_attempts``, ``images[0].id``)."""
        out = ""
        for part in self.loc:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
        return out


def _leaves(model: type, prefix: tuple[str | int, ...] = ()) -> Iterator[Leaf]:
    for name, field in file_keys(model).items():
        yield from _leaves_of(field.annotation, field.metadata, (*prefix, name))


def _leaves_of(annotation: Any, metadata: list[Any], loc: tuple[str | int, ...]) -> Iterator[Leaf]:
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *extra = get_args(annotation)
        yield from _leaves_of(inner, [*metadata, *extra], loc)
    elif origin in (typing.Union, types.UnionType):
        for arg in get_args(annotation):
            if arg is not type(None):
                yield from _leaves_of(arg, metadata, loc)
    elif origin in (list, tuple):
        yield from _leaves_of(get_args(annotation)[0], [], (*loc, 0))
    elif isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        yield from _leaves(annotation, loc)
    elif annotation is Labels:  # a mapping of names the file chooses: one name stands for any
        yield Leaf((*loc, "fuzz"), str)
    elif origin is Literal or annotation is str:
        yield Leaf(loc, str)
    elif annotation in (int, float):
        bounds: dict[str, float] = {}
        for item in metadata:
            for attr in ("ge", "le", "gt", "lt"):
                if isinstance(item, getattr(annotated_types, attr.capitalize())):
                    bounds[attr] = getattr(item, attr)
            for sub in getattr(item, "metadata", ()):  # a FieldInfo carries its constraints inside
                for attr in ("ge", "le", "gt", "lt"):
                    if isinstance(sub, getattr(annotated_types, attr.capitalize())):
                        bounds[attr] = getattr(sub, attr)
        yield Leaf(loc, annotation, **bounds)


LEAVES = list(_leaves(Config))
NUMERIC = [leaf for leaf in LEAVES if leaf.kind in (int, float)]
STRINGS = [leaf for leaf in LEAVES if leaf.kind is str and leaf.loc != ("credentials", "type")]


def test_the_schema_walk_finds_every_field() -> None:
    """Why: the families below are only as complete as this list; a schema change must not shrink it."""
    numeric = {leaf.dotted for leaf in NUMERIC}
    assert {"api.qps", "refresh.interval_seconds", "limits.max_error_codes", "discovery.max_pages"} <= numeric
    assert len(NUMERIC) >= 18
    unbounded = [
        leaf.dotted
        for leaf in NUMERIC
        if (leaf.le is None and leaf.lt is None) or (leaf.ge is None and leaf.gt is None)
    ]
    assert unbounded == []
    assert {
        "api.region_id",
        "images[0].id",
        "images[0].labels.fuzz",
        "discovery.name_regex",
        "web.listen_address",
        "targets[0].labels.fuzz",
    } <= {leaf.dotted for leaf in STRINGS}
    assert len(STRINGS) >= 25


_HOLE = "FUZZHOLE"


def _document(loc: tuple[str | int, ...], value: str) -> str:
    """A YAML document with ``value`` (YAML scalar text) at ``loc``, and the planted secret in place."""
    credentials = {"type": "access_key", "access_key_id": "LTAIfuzz", "access_key_secret": SECRET}
    doc: dict[str, Any] = {"credentials": credentials}
    if loc[0] == "images":
        doc["images"] = [{"id": "m-fuzz"}]
    if loc[0] == "targets":  # the credentials move into the one target, next to what it requires
        target = {"account": "fuzz", "regions": [{"region_id": "cn-hangzhou"}], "credentials": credentials}
        doc = {"targets": [{**target, "images": [{"id": "m-fuzz"}]}]}
        if "assume_role" in loc:
            doc["targets"][0]["assume_role"] = {"role_arn": "acs:ram::123456789012:role/fuzz"}
    node: Any = doc
    for part, after in itertools.pairwise(loc):
        empty: Any = [] if isinstance(after, int) else {}
        if isinstance(part, int):
            if not node:
                node.append(empty)
            node = node[0]
        else:
            node = node.setdefault(part, empty)
    if isinstance(loc[-1], int):
        node.append(_HOLE)
    else:
        node[loc[-1]] = _HOLE
    text = yaml.safe_dump(doc, default_flow_style=False, width=1 << 20)
    assert text.count(_HOLE) == 1
    return text.replace(_HOLE, value)


# --------------------------------------------------------------------------------------------------------
# The invariants.


def _load(path: Path, env: dict[str, str] | None = None) -> tuple[list[str], float, Any]:
    """Load ``path``; (error lines, CPU seconds, config or None). Anything but ConfigError fails the test."""
    started = time.process_time()
    with mock.patch.dict(os.environ, env or {}):
        try:
            config = load_config(path)
        except ConfigError as exc:
            return exc.errors, time.process_time() - started, None
        except Exception as exc:  # the invariant this file is about
            pytest.fail(f"load_config raised {type(exc).__name__}, not ConfigError: {str(exc)[:300]}")
    return [], time.process_time() - started, config


def _check_lines(lines: list[str], path: Path, *, secrets: tuple[str, ...] = (SECRET,)) -> list[str]:
    """Every line: one line, starting with the file, then a field or a line:column; no secret. Wheres."""
    pattern = re.compile(_LINE_RE.format(path=re.escape(str(path))))
    wheres = []
    for line in lines:
        assert "\n" not in line
        assert "\r" not in line
        assert not _CONTROL.search(line), line[:200]
        for secret in secrets:
            assert secret not in line
        assert len(line) < 500, line[:200]
        match = pattern.match(line)
        assert match is not None, line[:200]
        wheres.append(match.group("at") or match.group("where") or "")  # a line:column, or a field
    return wheres


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


# --------------------------------------------------------------------------------------------------------
# Alias bombs.


@st.composite
def bombs(draw: st.DrawFn) -> tuple[str, bool]:
    """(YAML, over a cap): a laugh of ``width`` aliases per level, ``depth`` levels, placed anywhere."""
    width = draw(st.integers(2, 12))
    depth = draw(st.integers(2, 12))
    style = draw(st.sampled_from(["seq", "map", "merge", "long"]))
    leaf_chars = 100_009 if style == "long" else draw(st.integers(1, 4))
    # Small laughs, or ones past the cap: in between they are legal and cost seconds each to check,
    # which is what the cap allows but would make this test slow.
    while SMALL_BOMB < _expanded(style, width, depth, leaf_chars)[0] <= yamlfile.MAX_EXPANDED_NODES:
        depth += 1
    leaf = '"' + "x" * leaf_chars + '"'
    if style == "long":  # few nodes, many characters: a long scalar used width**depth times
        leaf = '"' + "x" * 100_000 + "${NOPE:-}" + '"'
    lines = [f"l0: &l0 [{', '.join([leaf] * width)}]"]
    for level in range(1, depth + 1):
        prev = f"*l{level - 1}"
        if style == "seq" or style == "long":
            body = f"[{', '.join([prev] * width)}]"
        elif style == "map":
            body = "{" + ", ".join(f"k{i}: {prev}" for i in range(width)) + "}"
        else:  # merge keys: each level merges the previous one and adds width keys
            body = (
                "{<<: "
                + prev.replace("*l0", "{a: 1}")
                + ", "
                + ", ".join(f"m{level}_{i}: {prev}" for i in range(width))
                + "}"
            )
        lines.append(f"l{level}: &l{level} {body}")
    where = draw(st.sampled_from(["top", "images", "vocabulary", "regions", "retry"]))
    last = f"*l{depth}"
    place = {
        "top": f"bomb: {last}",
        "images": f"images: {last}",
        "vocabulary": f"status: {{vocabulary: {last}}}",
        "regions": f"images: [{{id: m-1, additional_regions: {last}}}]",
        "retry": f"api: {{retry: {last}}}",
    }[where]
    nodes, chars = _expanded(style, width, depth, leaf_chars)
    over = nodes > yamlfile.MAX_EXPANDED_NODES or chars > yamlfile.MAX_EXPANDED_CHARS
    return BASE + "x:\n" + "".join(f"  {line}\n" for line in lines) + place + "\n", over


def _expanded(style: str, width: int, depth: int, leaf_chars: int) -> tuple[int, int]:
    """Nodes and scalar characters of the laugh's levels under ``x`` plus its one use, aliases expanded.

    Worked out independently of yamlfile's counter (which is what is under test).
    """
    nodes, chars = [1 + width], [width * leaf_chars]  # l0: a sequence of width scalars
    for level in range(1, depth + 1):
        n, c = nodes[-1], chars[-1]
        if style in ("seq", "long"):
            nodes.append(1 + width * n)
            chars.append(width * c)
        elif style == "map":  # each key is a scalar node too
            nodes.append(1 + width + width * n)
            chars.append(width * (c + len(f"k{width}")))
        else:  # the merge key and its value (the previous level, or {a: 1} for the first), then width pairs
            merged, merged_chars = (3, 2) if level == 1 else (n, c)
            nodes.append(1 + 1 + merged + width + width * n)
            chars.append(2 + merged_chars + width * (len(f"m{level}_{width}") + c))
    return sum(nodes) + nodes[-1], sum(chars) + chars[-1]


@FUZZ
@given(bomb=bombs())
def test_alias_bombs_are_refused_before_they_are_built(tmp_path: Path, bomb: tuple[str, bool]) -> None:
    """Why: interpolation copied every alias (535 bytes took 28 s and 1.1 GB); now they are counted first."""
    text, over = bomb
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    lines, seconds, _ = _load(path)
    assert lines  # 'x' is an unknown key, so even a small laugh is an error: but never a slow one
    _check_lines(lines, path)
    assert seconds < FAST_SECONDS
    if over:
        assert len(lines) == 1
        assert "expands to more than" in lines[0]


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    """A node that contains itself (legal YAML) would make every walk of the config loop for ever."""
    path = tmp_path / "loop.yaml"
    path.write_text(BASE + "images: &a [*a]\n")
    lines, _, _ = _load(path)
    assert _check_lines(lines, path) == [":2:9"]
    assert "images[0]: an alias refers to a node that contains it" in lines[0]
    assert "recursive" in lines[0]


def test_nesting_past_the_limit_is_refused(tmp_path: Path) -> None:
    """Construction recurses per level; 200 levels would be a RecursionError, not a config error."""
    path = tmp_path / "deep.yaml"
    path.write_text(BASE + "api: " + "[" * 200 + "]" * 200 + "\n")
    lines, _, _ = _load(path)
    assert len(lines) == 1
    assert "nests deeper than" in lines[0]
    _check_lines(lines, path)


def test_a_large_real_config_is_well_inside_the_caps() -> None:
    """10,000 images with 50 regions each (the default maximum) passes the gate: the caps are not too low."""
    regions = ", ".join(f"cn-r{i}" for i in range(50))
    text = "images:\n" + "".join(
        f"  - {{id: m-{i:08d}, additional_regions: [{regions}]}}\n" for i in range(10_000)
    )
    assert len(text) < yamlfile.MAX_FILE_BYTES / 4
    node = yaml.compose(text, Loader=yamlfile.StrictLoader)
    assert node is not None
    yamlfile.check_expansion(node, max_nodes=yamlfile.MAX_EXPANDED_NODES // 3)  # a factor 3 to spare


# --------------------------------------------------------------------------------------------------------
# Numbers: every numeric field, from the schema.


def _number_text() -> st.SearchStrategy[str]:
    # Around Python's 4,300-digit conversion limit (past it int() raises), and anywhere up to 6,000.
    big = (st.integers(4290, 4400) | st.integers(20, 6000)).map(lambda n: "9" * n)
    return st.one_of(
        big,
        big.map(lambda s: "-" + s),
        big.map(lambda s: f'"{s}"'),  # a string the schema coerces (as ${VAR} gives)
        st.sampled_from([".inf", "-.inf", ".nan", ".NaN", "1.0e400", '"1e400"', '"nan"', "-0.0"]),
        st.sampled_from(["5.0e-324", "1.0e-300", "-1.0e-300", "1e-300", "0.000001", "0x7fffffffffffffff"]),
        st.floats(allow_nan=False, allow_infinity=False).map(lambda x: f"{x:.6e}"),
        st.integers(-(10**30), 10**30).map(str),
    )


@FUZZ
@given(leaf=st.sampled_from(NUMERIC), text=_number_text())
def test_numbers_out_of_range_are_one_line_naming_the_field(tmp_path: Path, leaf: Leaf, text: str) -> None:
    """Why: 4,301 digits were a traceback (and a reload that still said 1), qps 1e-300 a stalled loop."""
    path = tmp_path / "numbers.yaml"
    path.write_text(_document(leaf.loc, text))
    lines, seconds, config = _load(path)
    assert seconds < FAST_SECONDS
    if lines:
        assert leaf.dotted in _check_lines(lines, path), lines
        return
    value = _runtime_value(config, leaf)  # accepted: then it is finite and inside the schema's bounds
    assert math.isfinite(value)
    assert leaf.ge is None or value >= leaf.ge
    assert leaf.gt is None or value > leaf.gt
    assert leaf.le is None or value <= leaf.le
    assert leaf.lt is None or value < leaf.lt
    if leaf.dotted == "api.qps":
        assert value == 0 or value >= 0.01


def _runtime_value(config: Any, leaf: Leaf) -> float:
    node = config
    loc = leaf.loc
    if loc[:1] == ("targets",) and loc[2] in ("api", "refresh"):
        # A target's overrides live in its resolved regions (api) and refresh, not under their own key.
        node, loc = config.targets[loc[1]], loc[2:]
        if loc[0] == "api":
            node, loc = node.regions[0], loc[1:]
    for part in loc:
        node = node[part] if isinstance(part, int) else getattr(node, part)
    assert isinstance(node, int | float)
    return float(node)


# --------------------------------------------------------------------------------------------------------
# Strings: every string field, from the schema.


@st.composite
def hostile_strings(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    """(YAML scalar, environment): control and bidi characters, lone surrogates (via ${VAR}), huge values."""
    kind = draw(st.sampled_from(["control", "surrogate", "surrogate-escape", "long", "long-env", "secret"]))
    if kind == "control":
        char = draw(st.sampled_from([*range(0x00, 0x20), *range(0x7F, 0xA0), 0x200F, 0x202E, 0x2066]))
        return f'"a{SECRET}\\u{char:04x}b"', {}
    if kind == "surrogate":
        # What a non-UTF-8 byte in the environment becomes (os.environ decodes with surrogateescape).
        return '"${FUZZ_VALUE}"', {"FUZZ_VALUE": "cn-" + chr(draw(st.integers(0xDC80, 0xDCFF)))}
    if kind == "surrogate-escape":  # libyaml refuses the escape itself: an invalid-YAML line
        return f'"\\u{draw(st.integers(0xD800, 0xDFFF)):04x}"', {}
    if kind == "long":
        return '"' + SECRET + "x" * draw(st.integers(16_385, 200_000)) + '"', {}
    if kind == "long-env":  # a short reference to a long variable, many times over
        repeat = draw(st.integers(2, 200))
        return '"' + "${FUZZ_VALUE}" * repeat + '"', {"FUZZ_VALUE": "y" * 100_000}
    return f'"{draw(st.sampled_from(["", "x", "cn-"]))}{SECRET}"', {}  # the secret pasted into a field


@FUZZ
@given(leaf=st.sampled_from(STRINGS), value=hostile_strings())
def test_hostile_strings_are_named_never_echoed(
    tmp_path: Path, leaf: Leaf, value: tuple[str, dict[str, str]]
) -> None:
    """Every string field refuses what would break a log line, a label or a URL, naming only the field."""
    text, env = value
    path = tmp_path / "strings.yaml"
    path.write_text(_document(leaf.loc, text))
    lines, seconds, config = _load(path, env)
    assert seconds < FAST_SECONDS
    wheres = _check_lines(lines, path)
    if "\\x" in text or "\\u" in text or "${" in text or len(text) > 16_000:
        assert config is None, "a control character, a lone surrogate or a huge value was accepted"
        assert leaf.dotted in wheres or any(w.startswith(":") for w in wheres), lines


def test_a_secret_with_regex_metacharacters_is_still_redacted(tmp_path: Path) -> None:
    """Redaction replaces the literal secret, wherever a message might quote it (here a region id)."""
    secret = "cn-a.b"  # also a plausible region id, so only redaction keeps it out of the line
    path = tmp_path / "meta.yaml"
    path.write_text(
        f"credentials: {{type: access_key, access_key_id: x, access_key_secret: '{secret}'}}\n"
        f"images: [{{id: m-1, additional_regions: ['{secret}', '{secret}']}}]\n"
    )
    lines, _, _ = _load(path)
    _check_lines(lines, path, secrets=(secret,))


# --------------------------------------------------------------------------------------------------------
# Files that are not config files.


@contextlib.contextmanager
def fifo_without_writer(tmp_path: Path) -> Iterator[Path]:
    """A FIFO nobody writes to; on the way out a writer opens and closes it, so a stuck reader ends."""
    path = tmp_path / "fifo.yaml"
    os.mkfifo(path)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def _within(seconds: float, call: Callable[[], object]) -> BaseException | None:
    """Run ``call`` in a thread; fail if it has not finished in ``seconds``; return what it raised."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still reading after {seconds} s"
    return outcome[0]


SPECIAL = ["fifo", "/dev/zero", "directory", "symlink to /dev/zero", "symlink to a fifo", "/dev/null"]


@pytest.mark.parametrize("kind", SPECIAL)
@pytest.mark.parametrize("loader", ["config", "web config"])
def test_non_regular_files_are_refused_without_blocking(tmp_path: Path, kind: str, loader: str) -> None:
    """Why: --config /dev/zero grew until MemoryError and a FIFO with no writer hung for ever."""
    with fifo_without_writer(tmp_path) as fifo:
        path = {
            "fifo": fifo,
            "/dev/zero": Path("/dev/zero"),
            "/dev/null": Path("/dev/null"),
            "directory": tmp_path,
        }.get(kind)
        if path is None:
            path = tmp_path / "link.yaml"
            path.symlink_to(fifo if "fifo" in kind else "/dev/zero")
        if loader == "config":
            error = _within(2, lambda: load_config(path))
            assert isinstance(error, ConfigError)
            assert error.errors == [f"{path}: cannot read config file: {_reason(kind)}"]
        else:
            error = _within(2, lambda: load_web_security(str(path)))
            assert isinstance(error, ValueError)
            assert str(error) == f"{path}: cannot read the web config file: {_reason(kind)}"


def _reason(kind: str) -> str:
    if kind == "directory":
        return "Is a directory"
    return "not a regular file (a FIFO)" if "fifo" in kind else "not a regular file (a character device)"


def test_oversize_files_are_refused_by_their_size(tmp_path: Path) -> None:
    """A sparse file just over the cap is refused from its size, without reading 32 MB."""
    path = tmp_path / "huge.yaml"
    with path.open("wb") as handle:
        handle.truncate(yamlfile.MAX_FILE_BYTES + 1)
    error = _within(2, lambda: load_config(path))
    assert isinstance(error, ConfigError)
    assert error.errors == [f"{path}: cannot read config file: larger than {yamlfile.MAX_FILE_BYTES} bytes"]
    at_cap = tmp_path / "at-cap.yaml"
    at_cap.write_bytes(b"# " + b"x" * 1000 + b"\n")
    assert yamlfile.read_bytes(str(at_cap), max_bytes=1003) == at_cap.read_bytes()
    with pytest.raises(yamlfile.ReadError, match="larger than 1002 bytes"):
        yamlfile.read_bytes(str(at_cap), max_bytes=1002)


def test_a_file_whose_size_lies_is_cut_at_the_cap() -> None:
    """/proc files say 0 bytes and then deliver more: the read itself stops at the cap."""
    with pytest.raises(yamlfile.ReadError, match="larger than 100 bytes"):
        yamlfile.read_bytes("/proc/self/maps", max_bytes=100)


@FUZZ
@given(data=st.binary(max_size=2000))
def test_arbitrary_bytes_give_config_errors_only(tmp_path: Path, data: bytes) -> None:
    """Random bytes (mostly not YAML, often not UTF-8): ConfigError with clean lines, or a config."""
    path = tmp_path / "bytes.yaml"
    path.write_bytes(data)
    lines, seconds, _ = _load(path)
    assert seconds < FAST_SECONDS
    _check_lines(lines, path)


@FUZZ
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=30,
    ),
    section=st.sampled_from([*file_keys(Config), "other"]),
)
def test_arbitrary_structures_in_any_section_give_config_errors_only(
    tmp_path: Path, value: Any, section: str
) -> None:
    """Any YAML structure (dumped by PyYAML, so it is valid YAML) in any section: a config or clean lines."""
    path = tmp_path / "structure.yaml"
    path.write_text(BASE + yaml.safe_dump({section: value}, allow_unicode=False))
    lines, seconds, _ = _load(path)
    assert seconds < FAST_SECONDS
    _check_lines(lines, path)


# --------------------------------------------------------------------------------------------------------
# The real CLI.


# Runs the CLI and writes its exit code, wall and CPU seconds and peak RSS (kB) to argv[1]. A launcher,
# because Linux counts the RSS a child had before exec (a fork of this 300 MB pytest) in its ru_maxrss:
# forked from this small process instead, the CLI's peak is its own.
_LAUNCHER = """
import resource, subprocess, sys, time
started = time.monotonic()
try:
    rc = subprocess.run(sys.argv[3:], stdin=subprocess.DEVNULL, timeout=float(sys.argv[2])).returncode
except subprocess.TimeoutExpired:
    rc = -1
wall = time.monotonic() - started
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as out:
    out.write(f"{rc} {wall} {usage.ru_utime + usage.ru_stime} {usage.ru_maxrss}")
"""


def _run_measured(args: list[str], timeout: float = 30) -> tuple[int, str, float, float, int]:
    """Run the CLI; (exit code, output, wall seconds, CPU seconds, peak RSS in kB) of the CLI alone."""
    with tempfile.NamedTemporaryFile("r", suffix=".usage") as usage:
        result = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, usage.name, str(timeout), exporter_command(), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_CLOUD_")},
            timeout=timeout + 30,
            check=False,
        )
        rc, wall, cpu, rss_kb = usage.read().split()
    assert int(rc) != -1, f"did not finish within {timeout} s"
    return int(rc), result.stdout.decode(errors="replace"), float(wall), float(cpu), int(rss_kb)


BILLION_LAUGHS = (
    "\n".join(
        ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        + [f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    )
    + "\n"
)


@pytest.mark.process
def test_cli_refuses_the_alias_bomb_fast_and_small(tmp_path: Path) -> None:
    """Why: main took 28 s and 1.1 GB; now exit 2 and one line, under 1 s of CPU and 100 MB peak RSS.

    CPU time rather than wall time: the machine is shared, and CPU time is what the bomb costs.
    """
    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS)
    rc, output, _, cpu, rss_kb = _run_measured(["--check-config", "--config", str(path)])
    assert rc == 2
    assert output.splitlines() == [f"{path}:7:4: g: expands to more than 2000000 nodes (through aliases)"]
    assert cpu < 1.0, f"{cpu:.2f} s of CPU"
    assert rss_kb < 100 * 1024, f"peak RSS {rss_kb} kB"
    # No wall-clock bound: the launcher's timeout is the hang guard (rc -1); the CPU bound is the claim.


@pytest.mark.process
def test_cli_refuses_a_huge_integer_in_one_line(tmp_path: Path) -> None:
    """Why: 4,301 digits were a ValueError traceback out of the YAML constructor."""
    path = tmp_path / "huge-int.yaml"
    path.write_text(f"api: {{max_concurrency: {'9' * 4301}}}\n")
    rc, output, _, _, _ = _run_measured(["--check-config", "--config", str(path)])
    assert (rc, output.splitlines()) == (
        2,
        [f"{path}: api.max_concurrency: number too large (4301 characters)"],
    )


@pytest.mark.process
def test_cli_refuses_dev_zero_and_a_fifo_at_once(tmp_path: Path) -> None:
    """Why: /dev/zero grew until MemoryError and a FIFO with no writer never returned."""
    with fifo_without_writer(tmp_path) as fifo:
        for path, kind in ((Path("/dev/zero"), "a character device"), (fifo, "a FIFO")):
            rc, output, _, _, _ = _run_measured(["--check-config", "--config", str(path)], timeout=60)
            assert (rc, output.splitlines()) == (
                2,
                [f"{path}: cannot read config file: not a regular file ({kind})"],
            )  # within the launcher's timeout, a hang guard only: a FIFO read would block for ever
