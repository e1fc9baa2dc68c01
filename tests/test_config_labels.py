"""Own labels in the config file (``exporter.config.labels``): every bad name and value refused as one line
naming where it is, all at once; valid ones resolved per account and per image, the image's winning.

Families, not cases: hypothesis places each kind of bad label at the top level, on a target, on an image of
either, and checks the exact line. The JSON schema the chart validates values with says the same about
names as the gate does.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import Config, Labels, TargetConfig, WatchedImage
from exporter.config.errors import ConfigError
from exporter.config.labels import (
    MAX_LABELS,
    MAX_NAME_CHARS,
    MAX_VALUE_CHARS,
    PROMETHEUS_LABELS,
    RESERVED,
    name_problem,
)
from exporter.config.load import config_json_schema, load_config
from exporter.names import EXPORTER_LABELS
from exporter.redaction import register_secret

SECRET = "LabelsTestSecret0123456789abcdef"
CREDENTIALS = {"type": "access_key", "access_key_id": "LTAIlabels", "access_key_secret": SECRET}
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
_PLAIN_KEY_RE = re.compile(r"^[\x21-\x39\x3b-\x5a\x5c\x5e-\x7e]{1,64}$")  # what a location shows of a key

# Where a labels mapping may be: (the path of the mapping, as error lines write it).
PLACES = ("labels", "images[0].labels", "targets[0].labels", "targets[0].images[1].labels")


def document(place: str, labels: Any) -> dict[str, Any]:
    """A valid file with ``labels`` (a mapping, or anything) at ``place`` and nothing else wrong."""
    images = [{"id": "m-first"}, {"id": "m-second"}]
    if place.startswith("targets"):
        target: dict[str, Any] = {
            "account": "acme",
            "regions": [{"region_id": "cn-hangzhou"}],
            "credentials": CREDENTIALS,
            "images": images,
        }
        doc: dict[str, Any] = {"targets": [target]}
        holder = target if place == "targets[0].labels" else target["images"][1]
    else:
        doc = {"credentials": CREDENTIALS, "images": images}
        holder = doc if place == "labels" else images[0]
    holder["labels"] = labels
    return doc


def load(tmp_path: Path, doc: dict[str, Any]) -> tuple[str, Config | None, list[str]]:
    """(path, config or None, error lines) of ``doc`` written as YAML."""
    path = tmp_path / "config.yaml"
    # Escaped: a raw NEL or LS in the stream would be a line break to YAML, not a character of a value.
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=1 << 20))
    try:
        return str(path), load_config(path), []
    except ConfigError as exc:
        for line in exc.errors:
            assert "\n" not in line
            assert SECRET not in line
        return str(path), None, exc.errors


NOT_A_STRING = "a label value must be a string (quote one that YAML reads as a number or true/false)"
MASKED = (
    "the output gate would mask this label value (it holds a credential of this file, or a URL's"
    " user:password@)"
)


def at(place: str, name: str) -> str:
    """Where a line says a label is: its mapping's path and its name (when the name can be shown)."""
    return f"{place}.{name}" if _PLAIN_KEY_RE.fullmatch(name) else f"{place}.<unprintable or long key>"


# --------------------------------------------------------------------------------------------------------
# The families of bad names.

_FIRST = string.ascii_letters + "_"
_REST = string.ascii_letters + string.digits + "_"
GOOD_NAMES = st.builds(lambda a, b: a + b, st.sampled_from(_FIRST), st.text(_REST, max_size=20)).filter(
    lambda n: name_problem(n) is None
)
# Any text but controls, format characters and separators ("$" is the file's ${VAR} interpolation).
GOOD_VALUES = st.text(
    st.characters(blacklist_categories=["Cc", "Cf", "Cs", "Zl", "Zp"], blacklist_characters="$"),
    max_size=MAX_VALUE_CHARS,
)


@st.composite
def bad_names(draw: st.DrawFn) -> tuple[str, str, bool]:
    """(name, the message it must get, whether a did-you-mean may follow): each way a name breaks a rule."""
    kinds = ["reserved", "prometheus", "dunder", "char", "end", "digit", "empty", "long"]
    kind = draw(st.sampled_from(kinds))
    if kind == "reserved":
        name = draw(st.sampled_from(EXPORTER_LABELS))
        return name, "is a label the exporter sets itself: choose another name", False
    if kind == "prometheus":
        name = draw(st.sampled_from(PROMETHEUS_LABELS))
        why = f"(this one would arrive renamed 'exported_{name}'): choose another name"
        return name, f"is a label Prometheus sets on every series it scrapes {why}", False
    if kind == "dunder":
        return (
            f"__{draw(GOOD_NAMES)}",
            "label names starting with '__' are reserved for Prometheus' own use",
            True,
        )
    invalid = "invalid label name (letters, digits and '_', not starting with a digit)"
    if kind == "char":
        good = draw(GOOD_NAMES)
        bad = draw(st.characters(blacklist_characters=_REST, blacklist_categories=["Cs"]))
        cut = draw(st.integers(0, len(good)))
        name = good[:cut] + bad + good[cut:]
        if len(name) > MAX_NAME_CHARS:
            return name, f"a label name must be at most {MAX_NAME_CHARS} characters", False
        return name, invalid, True
    if kind == "end":  # a line end after a good name: what a "$" anchor lets through
        return draw(GOOD_NAMES) + draw(st.sampled_from(["\n", "\r\n", "\r", "\x00", " "])), invalid, True
    if kind == "digit":
        return draw(st.sampled_from(string.digits)) + draw(st.text(_REST, max_size=10)), invalid, True
    if kind == "empty":
        return "", "a label name must not be empty", False
    name = draw(GOOD_NAMES) + "x" * draw(st.integers(MAX_NAME_CHARS, 200))
    return name, f"a label name must be at most {MAX_NAME_CHARS} characters", False


@SETTINGS
@given(
    place=st.sampled_from(PLACES),
    bad=bad_names(),
    others=st.dictionaries(GOOD_NAMES, GOOD_VALUES, max_size=3),
)
def test_every_bad_name_is_one_line_naming_where(
    tmp_path: Path, place: str, bad: tuple[str, str, bool], others: dict[str, str]
) -> None:
    """A reserved, ``__``, mis-spelt, empty or over-long name: exactly one line, at its place, saying why;
    a name it probably meant, when suggested, is a valid own label name; the good names beside it are no
    problem."""
    name, message, may_hint = bad
    others.pop(name, None)
    path, config, errors = load(tmp_path, document(place, {**others, name: "hpc"}))
    assert config is None
    assert len(errors) == 1, errors
    head = f"{path}: {at(place, name)}: {message}"
    assert errors[0].startswith(head), errors
    hint = re.fullmatch(r" \(did you mean '([A-Za-z0-9_]+)'\?\)", errors[0].removeprefix(head))
    if errors[0] != head:
        assert may_hint
        assert hint is not None, errors
        assert name_problem(hint.group(1)) is None
        assert hint.group(1) != name


@st.composite
def bad_values(draw: st.DrawFn) -> tuple[Any, str]:
    """(value, the message it must get): each way a value breaks a rule."""
    kind = draw(st.sampled_from(["number", "boolean", "null", "list", "long", "secret", "userinfo"]))
    if kind == "number":
        return draw(st.integers() | st.floats(allow_nan=False)), NOT_A_STRING
    if kind == "boolean":
        return draw(st.booleans()), NOT_A_STRING
    if kind == "null":
        return None, NOT_A_STRING
    if kind == "list":
        return [draw(GOOD_VALUES)], NOT_A_STRING
    if kind == "long":
        long = "v" * draw(st.integers(MAX_VALUE_CHARS + 1, 5000))
        return long, f"a label value must be at most {MAX_VALUE_CHARS} characters"
    if kind == "secret":  # the file's own AccessKey secret, whole or inside
        return draw(st.sampled_from(["", "team-"])) + SECRET + draw(st.sampled_from(["", "-x"])), MASKED
    user = draw(st.text(string.ascii_lowercase, min_size=1, max_size=8))
    return f"https://{user}:pw@registry.example.com/x", MASKED


@SETTINGS
@given(place=st.sampled_from(PLACES), bad=bad_values(), name=GOOD_NAMES)
def test_every_bad_value_is_one_line_naming_where(
    tmp_path: Path, place: str, bad: tuple[Any, str], name: str
) -> None:
    """A value that is no string, too long, or that the output gate would mask: one line at its name,
    never quoting it (the file's secret never appears: load() checks every line)."""
    value, message = bad
    path, config, errors = load(tmp_path, document(place, {name: value}))
    assert config is None
    assert errors == [f"{path}: {place}.{name}: {message}"]


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\u202e", "\u2066", "\u061c"])
@pytest.mark.parametrize("place", PLACES)
def test_control_and_bidi_characters_in_a_value_are_refused(tmp_path: Path, place: str, char: str) -> None:
    """What would split a line or read differently than it says is refused at load (the file's string
    check names the label)."""
    path, config, errors = load(tmp_path, document(place, {"team": f"hpc{char}x"}))
    assert config is None
    assert errors == [f"{path}: {place}.team: must not contain control or bidi characters"]


@SETTINGS
@given(place=st.sampled_from(PLACES), count=st.integers(MAX_LABELS + 1, 40))
def test_too_many_labels_on_one_target_or_image(tmp_path: Path, place: str, count: int) -> None:
    """More than MAX_LABELS on one mapping: one line at the mapping, judged before its names."""
    labels = {f"l{i}": "v" for i in range(count)} | {"__bad": "v"}
    path, config, errors = load(tmp_path, document(place, labels))
    assert config is None
    assert errors == [f"{path}: {place}: has {count + 1} labels; at most {MAX_LABELS}"]


@SETTINGS
@given(split=st.integers(1, MAX_LABELS), extra=st.integers(1, MAX_LABELS), targets=st.booleans())
def test_too_many_distinct_names_in_the_file(tmp_path: Path, split: int, extra: int, targets: bool) -> None:
    """Each mapping within its bound, but more than MAX_LABELS names together: one line, where the file
    first names one too many."""
    first = {f"a{i}": "v" for i in range(split)}
    second = {f"b{i}": "v" for i in range(min(MAX_LABELS, MAX_LABELS - split + extra))}
    place = "targets[0].labels" if targets else "labels"
    doc = document(place, first)
    image = "targets[0].images[1].labels" if targets else "images[1].labels"
    holder = doc["targets"][0]["images"][1] if targets else doc["images"][1]
    holder["labels"] = second
    path, config, errors = load(tmp_path, doc)
    assert config is None
    total = split + len(second)
    assert errors == [
        f"{path}: {image}: brings the file to {total} distinct label names; at most {MAX_LABELS} in all,"
        " since every labelled series carries every name"
    ]


def test_every_problem_at_once_in_file_order(tmp_path: Path) -> None:
    """Bad names and values in several places, and another section's mistake: all reported, in order."""
    doc = document("targets[0].labels", {"team": "hpc", "account": "x", "env": 3})
    target = doc["targets"][0]
    target["images"][0]["labels"] = {"team-name": "db", "__x": "y"}
    target["refresh"] = {"interval": 5}
    path, config, errors = load(tmp_path, doc)
    assert config is None
    assert errors == [
        f"{path}: targets[0].images[0].labels.team-name: invalid label name (letters, digits and '_', not"
        " starting with a digit) (did you mean 'team_name'?)",
        f"{path}: targets[0].images[0].labels.__x: label names starting with '__' are reserved for"
        " Prometheus' own use (did you mean 'x'?)",
        f"{path}: targets[0].labels.account: is a label the exporter sets itself: choose another name",
        f"{path}: targets[0].labels.env: {NOT_A_STRING}",
        f"{path}: targets[0].refresh.interval: unknown key (did you mean 'interval_seconds'?)",
    ]


def test_top_level_labels_belong_to_a_target_with_targets(tmp_path: Path) -> None:
    """With ``targets:``, the one-target ``labels`` is refused like the other one-target sections."""
    doc = document("targets[0].labels", {"team": "hpc"})
    doc["labels"] = {"team": "db"}
    path, config, errors = load(tmp_path, doc)
    assert config is None
    assert errors == [
        f"{path}: labels: belongs inside a target when 'targets' is set (each target has its own)"
    ]


@pytest.mark.parametrize("value", ["[team]", "hpc", "3", "{team: {a: b}}"])
def test_labels_must_be_a_mapping_of_strings(tmp_path: Path, value: str) -> None:
    """A list or a scalar where the mapping belongs: one line at ``labels``; a nested mapping: at its name."""
    path = tmp_path / "config.yaml"
    path.write_text(f"labels: {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    expected = (
        f"{path}: labels.team: {NOT_A_STRING}"
        if value.startswith("{")
        else f"{path}: labels: must be a mapping of label names to values, like {{team: hpc}}"
    )
    assert caught.value.errors == [expected]


# --------------------------------------------------------------------------------------------------------
# Valid labels: what each account and image gets.


@SETTINGS
@given(
    target=st.dictionaries(GOOD_NAMES, GOOD_VALUES, max_size=4),
    own=st.dictionaries(GOOD_NAMES, GOOD_VALUES, max_size=4),
    targets=st.booleans(),
)
def test_valid_labels_load_and_resolve(
    tmp_path: Path, target: dict[str, str], own: dict[str, str], targets: bool
) -> None:
    """Any valid names and values load as written; an image gets its target's with its own on top, an
    image without labels of its own (or a discovered one) its target's, "" where a name is unset."""
    place = "targets[0].labels" if targets else "labels"
    doc = document(place, target)
    (doc["targets"][0] if targets else doc)["images"][1]["labels"] = own
    _path, config, errors = load(tmp_path, doc)
    assert errors == []
    assert config is not None
    account = "acme" if targets else "default"
    scope = config.scopes()[0]
    assert scope.labels == Labels(target)
    assert scope.images[1].labels == Labels(own)
    resolved = config.own_labels()
    assert resolved.names == tuple(sorted({*target, *own}))
    merged = {**target, **own}
    assert resolved.image(account, "m-second") == tuple(merged.get(n, "") for n in resolved.names)
    for image_id in ("m-first", "m-discovered"):
        assert resolved.image(account, image_id) == tuple(target.get(n, "") for n in resolved.names)
    assert resolved.account(account) == tuple(target.get(n, "") for n in resolved.names)
    assert resolved.account("another") == ("",) * len(resolved.names)


def test_own_labels_across_targets_and_regions() -> None:
    """Each account its target's labels in every region; equal configs resolve equal, a changed value not."""
    base = TargetConfig("a", labels=Labels({"team": "hpc"}), images=(WatchedImage("m-1"),))
    other = TargetConfig(
        "b", labels=Labels({"env": "prod"}), images=(WatchedImage("m-1", labels=Labels({"env": ""})),)
    )
    config = Config(targets=(base, other))
    resolved = config.own_labels()
    assert resolved.names == ("env", "team")
    assert resolved.image("a", "m-1") == ("", "hpc")
    assert resolved.image("b", "m-1") == ("", "")  # its own empty value leaves env off
    assert resolved.account("b") == ("prod", "")
    assert resolved == Config(targets=(base, other)).own_labels()
    changed = Config(targets=(base, TargetConfig("b", labels=Labels({"env": "dev"}))))
    assert resolved != changed.own_labels()
    assert Config().own_labels().names == ()


def test_values_pass_the_output_gate_when_read() -> None:
    """A value that holds a credential registered after the config was loaded is masked when read."""
    config = Config(labels=Labels({"team": "late-token-0123456789"}))
    resolved = config.own_labels()
    assert resolved.account("default") == ("late-token-0123456789",)
    register_secret("token-0123456789")
    assert resolved.account("default") == ("late-[REDACTED]",)
    assert resolved.by_gated_account() == {"default": ("late-[REDACTED]",)}


# --------------------------------------------------------------------------------------------------------
# The JSON schema (editors, the Helm chart) agrees with the gate on names.


def _labels_schema() -> dict[str, Any]:
    schema = config_json_schema()
    return {"$defs": schema["$defs"], **schema["$defs"]["Labels"]}


@SETTINGS
@given(name=GOOD_NAMES | bad_names().map(lambda b: b[0]) | st.sampled_from(sorted(RESERVED)))
def test_json_schema_judges_names_as_the_gate_does(name: str) -> None:
    """A name the schema admits is one the gate admits, and the other way round."""
    validator = jsonschema.Draft202012Validator(_labels_schema())
    assert validator.is_valid({name: "v"}) == (name_problem(name) is None), name


def test_json_schema_bounds_count_and_values() -> None:
    """Count and value length are bounded in the schema too (what YAML types allow, strings only)."""
    validator = jsonschema.Draft202012Validator(_labels_schema())
    assert validator.is_valid({f"l{i}": "v" for i in range(MAX_LABELS)})
    assert not validator.is_valid({f"l{i}": "v" for i in range(MAX_LABELS + 1)})
    assert not validator.is_valid({"team": "v" * (MAX_VALUE_CHARS + 1)})
    assert not validator.is_valid({"team": 3})
    assert (
        json.dumps(config_json_schema()["properties"]["labels"])
        == '{"$ref": "#/$defs/Labels", "default": {}}'
    )
