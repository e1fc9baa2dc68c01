"""The ingestion gate (exporter.models), tested as classes of values over every field that enters a model.

Each test generates a family (a field x a kind of bad value) rather than listing cases, so a new field is
covered by adding its path to ``GET_IMAGE_FIELDS``. The invariant everywhere: an answer either becomes a
model whose every string is valid Unicode, free of control characters, within its bound and free of any
known secret, or it is refused as ``InvalidResponse`` with a message that names the field and never
quotes the value.
"""

from __future__ import annotations

import copy
import json
import timeit
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from exporter.errors import INVALID_RESPONSE, ApiError
from exporter.models import (
    GIB,
    MIN_LEARNED_LENGTH,
    REGION,
    STATUS,
    Image,
    Kind,
    parse_error_body,
    parse_get_image,
    parse_list_images,
    parse_size,
    parse_time,
    registry_url,
)
from exporter.openapi.answers import error_from_response
from exporter.redaction import (
    REDACTED,
    contains_secret,
    generation,
    register_secret,
    registered_secret_count,
)

SECRET = "models-test-secret-3f9c1e7a5b2d4c6e8f0a"


@pytest.fixture(autouse=True)
def _secret() -> None:
    register_secret(SECRET, pin=True)  # inside the registry isolation of conftest


IMAGE_ID = "m-modelstest000000001"
REGIONS = ("cn-beijing", "cn-shanghai")


def good_body() -> dict[str, Any]:
    """A GetImage answer with every field the exporter reads, all plausible."""
    return {
        "RequestId": "04F0F334-1335-436C-A1D7-6C044FE73368",
        "Success": True,
        "TotalCount": 1,
        "Image": {
            "ImageType": "VM",
            "AppId": "app-1",
            "Name": "app-image",
            "Version": "v1.0",
            "Description": "应用测试镜像。",
            "Size": "40 GiB",
            "CreateTime": "2022-12-23T09:51:39Z",
            "Status": "Available",
            "ContainerImageSpec": {
                "RegistryUrl": "registry-vpc.cn-hangzhou.aliyuncs.com/ehpc_open/nginx:latest",
                "IsACRRegistry": True,
                "IsACREnterprise": False,
                "RegistryCriId": "cri-xyz795ygf8k9",
                "OsTag": "",
                "Platform": "",
                "Architecture": "",
            },
            "VMImageSpec": {
                "ImageId": IMAGE_ID,
                "OsTag": "CentOS 7.6 64 bit",
                "Platform": "CentOS",
                "Architecture": "x86_64",
            },
            "DocumentInfo": {"DocumentId": "doc-1", "EncodingMode": "", "Document": ""},
            "AdditionalRegionsInfo": [
                {"Status": "Available", "ImageId": "m-copy1", "RegionId": "cn-beijing"},
                {"Status": "Creating", "ImageId": "m-copy2", "RegionId": "cn-shanghai"},
            ],
        },
    }


# Every string the exporter keeps from a GetImage answer, by path. Size and CreateTime are parsed
# further; RegistryUrl is sanitised; the rest are kept as they are.
GET_IMAGE_FIELDS: tuple[tuple[str | int, ...], ...] = (
    ("Image", "ImageType"),
    ("Image", "AppId"),
    ("Image", "Name"),
    ("Image", "Version"),
    ("Image", "Size"),
    ("Image", "CreateTime"),
    ("Image", "Status"),
    ("Image", "ContainerImageSpec", "RegistryUrl"),
    ("Image", "VMImageSpec", "OsTag"),
    ("Image", "VMImageSpec", "Platform"),
    ("Image", "VMImageSpec", "Architecture"),
    ("Image", "AdditionalRegionsInfo", 0, "RegionId"),
    ("Image", "AdditionalRegionsInfo", 0, "Status"),
)


def put(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A copy of ``body`` with ``value`` at ``path``."""
    out = copy.deepcopy(body)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def dotted(path: tuple[Any, ...]) -> str:
    """The location an error message names (``Image.AdditionalRegionsInfo[0].RegionId``)."""
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else key)
    return out


def parse(body: Any) -> Image:
    return parse_get_image(body, IMAGE_ID, REGIONS)


def outcome(body: Any) -> Image | ApiError:
    """The parsed image, or the error the gate refused the answer with."""
    try:
        return parse(body)
    except ApiError as err:
        return err


def image_strings(image: Image) -> Iterator[str]:
    """Every string held by a parsed image, nested replicas included."""
    for f in fields(image):
        value = getattr(image, f.name)
        if isinstance(value, str):
            yield value
        elif isinstance(value, tuple):
            for item in value:
                if isinstance(item, str):
                    yield item
                else:  # a Replica (a named tuple of strings)
                    yield from item


def assert_clean(image: Image) -> None:
    for text in image_strings(image):
        text.encode("utf-8")  # no lone surrogate
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text), repr(text)
        assert not contains_secret(text)
        assert len(text) <= 8192


def test_good_body_parses() -> None:
    image = parse(good_body())
    assert image.name == "app-image"
    assert image.size_bytes == 40 * GIB
    assert [r.region_id for r in image.additional_regions] == list(REGIONS)
    assert image.ignored == ()
    assert_clean(image)


BAD_STRINGS = {
    "lone surrogate": "Bad\udfff",
    "lone high surrogate": "x\ud800y",
    "secret": SECRET,
    "secret inside": f"name-{SECRET}-x",
    "over-long": "a" * 9000,
}


@pytest.mark.parametrize("path", GET_IMAGE_FIELDS, ids=dotted)
@pytest.mark.parametrize("family", sorted(BAD_STRINGS))
def test_every_field_refuses_every_bad_string(path: tuple[Any, ...], family: str) -> None:
    """Each family of bad value, in each field, refuses the answer naming the field but not the value."""
    bad = BAD_STRINGS[family]
    with pytest.raises(ApiError) as err:
        parse(put(good_body(), path, bad))
    assert err.value.code == INVALID_RESPONSE
    assert dotted(path) in err.value.message
    assert bad not in str(err.value)
    assert SECRET not in str(err.value)


# Fields of the answer nothing reads: not read, so no value there refuses the answer (it would lose the
# good data beside it) and none can reach an output. DocumentInfo and ContainerImageSpec's flags included.
UNREAD_FIELDS: tuple[tuple[str | int, ...], ...] = (
    ("Image", "Description"),
    ("Image", "ContainerImageSpec", "IsACRRegistry"),
    ("Image", "ContainerImageSpec", "IsACREnterprise"),
    ("Image", "ContainerImageSpec", "RegistryCriId"),
    ("Image", "DocumentInfo", "DocumentId"),
    ("Image", "DocumentInfo"),
    ("Image", "AdditionalRegionsInfo", 0, "ImageId"),
)
WRONG_TYPES = [42, 1.5, True, ["a"], {"a": 1}]


@pytest.mark.parametrize("path", UNREAD_FIELDS, ids=dotted)
@pytest.mark.parametrize(
    "value",
    [*BAD_STRINGS.values(), *WRONG_TYPES, "Avail\x1bable"],
    ids=[*BAD_STRINGS, *map(repr, WRONG_TYPES), "ESC"],
)
def test_a_field_nothing_reads_never_refuses_the_answer(path: tuple[Any, ...], value: Any) -> None:
    """Every family of bad value, in every field the exporter does not read: the answer reads exactly
    as the good one does, and no part of the value is kept."""
    image = parse(put(good_body(), path, value))
    assert image == parse(good_body())
    assert SECRET not in strings_of(image)


@settings(max_examples=100, deadline=None)
@given(
    path=st.sampled_from(UNREAD_FIELDS),
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(codec=None)),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    ),
)
def test_any_json_in_a_field_nothing_reads_is_ignored(path: tuple[Any, ...], value: Any) -> None:
    """Property: whatever JSON stands in a field nothing reads, the answer reads as the good one."""
    assert parse(put(good_body(), path, value)) == parse(good_body())


@pytest.mark.parametrize("path", GET_IMAGE_FIELDS, ids=dotted)
@pytest.mark.parametrize("value", WRONG_TYPES, ids=repr)
def test_every_field_refuses_wrong_types(path: tuple[Any, ...], value: Any) -> None:
    with pytest.raises(ApiError, match=dotted(path).replace("[", r"\[").replace("]", r"\]")):
        parse(put(good_body(), path, value))


@pytest.mark.parametrize(
    "path",
    [p for p in GET_IMAGE_FIELDS if p[-1] in {"Name", "Version", "AppId", "OsTag", "Description"}],
    ids=dotted,
)
@pytest.mark.parametrize(
    "control", ["\x00", "\x1b[31m", "\x7f", "\x85", "\u202e", "\u2066", "\r\n"], ids=repr
)
def test_controls_are_dropped_from_free_text(path: tuple[Any, ...], control: str) -> None:
    image = parse(put(good_body(), path, f"ab{control}cd"))
    assert_clean(image)
    kept = [t for t in image_strings(image) if t.startswith("ab") and t.endswith("cd")]
    assert kept, "the value without its controls is kept"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("Image", "Status"), "Avail able"),
        (("Image", "Status"), "Available<script>"),
        (("Image", "Status"), "\x1b[31mAvailable"),  # the ESC goes, "[31m" stays and is no status
        (("Image", "ImageType"), "VM;rm"),
        (("Image", "AdditionalRegionsInfo", 0, "RegionId"), "CN-BEIJING"),
        (("Image", "AdditionalRegionsInfo", 0, "RegionId"), "cn_beijing"),
        (("Image", "AdditionalRegionsInfo", 0, "Status"), "Avail/able"),
    ],
    ids=repr,
)
def test_shaped_fields_refuse_other_shapes(path: tuple[Any, ...], value: str) -> None:
    with pytest.raises(ApiError, match="is not a valid"):
        parse(put(good_body(), path, value))


def test_request_id_as_in_the_api_reference_example() -> None:
    """The reference's own example ends its RequestId with a newline: it is cleaned, not refused."""
    image = parse(put(good_body(), ("RequestId",), "04F0F334-1335-436C-A1D7-6C044FE73368\n"))
    assert image.request_id == "04F0F334-1335-436C-A1D7-6C044FE73368"


@pytest.mark.parametrize("rid", [SECRET, "a" * 500, "x\udfff", "<b>", 5])
def test_bad_request_ids_are_dropped_not_refused(rid: Any) -> None:
    """A request id only labels a log line: a bad one is dropped and the answer is still good."""
    assert parse(put(good_body(), ("RequestId",), rid)).request_id == ""


@settings(max_examples=300, deadline=None)
@given(
    path=st.sampled_from(GET_IMAGE_FIELDS),
    value=st.text(st.characters(codec=None, exclude_categories=()), max_size=300),
)
def test_any_text_in_any_field_is_either_clean_or_refused(path: tuple[Any, ...], value: str) -> None:
    """Property: whatever text lands in whatever field, the model is clean or the answer is refused."""
    result = outcome(put(good_body(), path, value))
    if isinstance(result, ApiError):
        assert result.code == INVALID_RESPONSE
        assert dotted(path) in result.message
    else:
        assert_clean(result)


@settings(max_examples=100, deadline=None)
@given(value=st.recursive(st.none() | st.booleans() | st.integers() | st.text(), st.lists, max_leaves=20))
def test_any_json_shape_in_any_field_is_either_clean_or_refused(value: Any) -> None:
    for path in GET_IMAGE_FIELDS:
        result = outcome(put(good_body(), path, value))
        if isinstance(result, ApiError):
            assert result.code == INVALID_RESPONSE
        else:
            assert_clean(result)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("40 GiB", 40 * GIB),
        ("40 gib", 40 * GIB),
        ("40GIB", 40 * GIB),
        ("40 GB", 40 * GIB),
        ("1.5 TiB", round(1.5 * 1024**4)),
        ("1.5 tb", round(1.5 * 1024**4)),
        ("512 MiB", 512 * 1024**2),
        ("100 KiB", 100 * 1024),
        ("2 PiB", 2 * 1024**5),
        ("1024 B", 1024),
        (" 7 GiB ", 7 * GIB),
        ("0 GiB", 0),
        ("", None),
        ("-1 GiB", None),
        ("40", None),
        ("forty GiB", None),
        ("40 XiB", None),
        ("1e3 GiB", None),
        ("9" * 400 + " GiB", None),
        ("99999999999999999 PiB", None),  # beyond int64
    ],
)
def test_size_units(text: str, expected: int | None) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["-1 GiB", "1.5 XiB", "garbage", "   "])
def test_unusable_size_is_ignored_and_reported(text: str) -> None:
    image = parse(put(good_body(), ("Image", "Size"), text))
    assert image.size_bytes is None
    assert image.ignored == ("Image.Size",)


@pytest.mark.parametrize(
    "text", ["yesterday", "2022-13-45T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"]
)
def test_unusable_time_is_ignored_and_reported(text: str) -> None:
    assert parse_time(text) is None
    image = parse(put(good_body(), ("Image", "CreateTime"), text))
    assert image.create_time is None
    assert image.ignored == ("Image.CreateTime",)


@pytest.mark.parametrize("field", ["Size", "CreateTime"])
def test_empty_size_and_time_are_absent_not_ignored(field: str) -> None:
    """The API reference's example has empty strings: nothing to read is not a mis-read, so not counted."""
    image = parse(put(good_body(), ("Image", field), ""))
    assert (image.size_bytes if field == "Size" else image.create_time) is None
    assert image.ignored == ()


@pytest.mark.parametrize("code", ["Foo\x1bBar", "Foo\nBar", "Foo\u202eBar", "Foo\x85Bar"], ids=repr)
def test_shaped_values_with_controls_are_refused_not_cleaned(code: str) -> None:
    """A code with a control character is no code the API sends: InvalidResponse, not "FooBar"."""
    err = error_from_response("GetImage", 400, json.dumps({"Code": code}).encode(), {})
    assert err.code == INVALID_RESPONSE
    with pytest.raises(ApiError, match="control characters"):
        parse(put(good_body(), ("Image", "Status"), f"Avail{code[3]}able"))


@pytest.mark.parametrize(
    "body", [b'{"Code":"Ecs\xed\xa0\x80Error"}', b'{"Code":"EcsError","Message":"\xff"}'], ids=repr
)
def test_bodies_that_are_not_utf8_are_invalid_response(body: bytes) -> None:
    """JSON on the wire is UTF-8: encoded surrogates (CESU-8) or stray bytes make the body unreadable."""
    assert error_from_response("GetImage", 400, body, {}).code == INVALID_RESPONSE


def regions_body(entries: list[dict[str, str]]) -> dict[str, Any]:
    return put(good_body(), ("Image", "AdditionalRegionsInfo"), entries)


def entry(region: str, status: str = "Available") -> dict[str, str]:
    return {"RegionId": region, "ImageId": "m-copy", "Status": status}


def test_only_requested_regions_are_kept() -> None:
    image = parse(regions_body([entry("cn-beijing"), entry("us-west-1"), entry("cn-shanghai")]))
    assert [r.region_id for r in image.additional_regions] == ["cn-beijing", "cn-shanghai"]
    assert image.ignored == ("Image.AdditionalRegionsInfo",)


def test_empty_region_entries_as_in_the_reference_example_are_ignored() -> None:
    image = parse(regions_body([{"Status": "", "ImageId": "", "RegionId": ""}, entry("cn-beijing")]))
    assert [r.region_id for r in image.additional_regions] == ["cn-beijing"]
    assert image.ignored == ("Image.AdditionalRegionsInfo",)


def test_identical_duplicates_merge_and_contradictions_refuse() -> None:
    image = parse(regions_body([entry("cn-beijing"), entry("cn-beijing")]))
    assert len(image.additional_regions) == 1
    assert image.ignored == ("Image.AdditionalRegionsInfo",)
    with pytest.raises(ApiError, match="twice"):
        parse(regions_body([entry("cn-beijing"), entry("cn-beijing", "Creating")]))


@pytest.mark.parametrize(("count", "ok"), [(50, True), (51, False), (1000, False)])
def test_region_entries_are_capped(count: int, ok: bool) -> None:
    body = regions_body([entry(f"cn-r{i}") for i in range(count)])
    if ok:
        assert parse_get_image(body, IMAGE_ID, (), max_regions=50).additional_regions == ()
    else:
        with pytest.raises(ApiError, match="more than 50 entries"):
            parse_get_image(body, IMAGE_ID, (), max_regions=50)


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        (
            "registry-vpc.cn-hangzhou.aliyuncs.com/ehpc_open/nginx:latest",
            "registry-vpc.cn-hangzhou.aliyuncs.com/ehpc_open/nginx:latest",
        ),
        ("https://user:pass@host:5000/ns/repo", "https://host:5000/ns/repo"),
        ("user:p%40ss@host/ns/repo", "host/ns/repo"),
        ("https://user:pa/PASS@reg.example.com/ns/r", "https://reg.example.com/ns/r"),
        ("https://user:pa?ss#x@reg.example.com/ns/r", "https://reg.example.com/ns/r"),
        ("https://us@er:pa@ss@reg.example.com/r", "https://reg.example.com/r"),
        ("user:pass@host:5000", "host:5000"),
        ("host/ns/repo@sha256:" + "a" * 64, "host/ns/repo@sha256:" + "a" * 64),
        ("u:secretpw@host/ns/repo@sha256:" + "b" * 64, "host/ns/repo@sha256:" + "b" * 64),
        ("https://host/repo?token=secret#frag", "https://host/repo"),
        ("", ""),
    ],
)
def test_registry_url(url: str, safe: str) -> None:
    """Userinfo (whatever it holds), query and fragment are stripped; a digest is kept."""
    assert registry_url(url) == safe


@settings(max_examples=200, deadline=None)
@given(
    # A user name ends at the first ":" of the userinfo, so it has none; a password may hold anything.
    user=st.text(st.characters(exclude_characters="@:", exclude_categories=["Cs"]), min_size=6, max_size=20),
    password=st.text(st.characters(exclude_characters="@", exclude_categories=["Cs"]), min_size=6),
    scheme=st.sampled_from(["", "https://", "http://"]),
)
def test_registry_userinfo_never_survives(user: str, password: str, scheme: str) -> None:
    """Property: no user name or password, whatever its characters, reaches the sanitised URL."""
    safe = registry_url(f"{scheme}{user}:{password}@reg.example.com/ns/repo:1")
    assert safe == f"{scheme}reg.example.com/ns/repo:1"


# ------------------------------------------------------------------------------------ learned secrets
# A registry credential an answer carries is learned for that answer only: masked in its free text,
# refused in its shaped values, and nothing else. No answer changes how another is read.

FREE_TEXT = tuple(p for p in GET_IMAGE_FIELDS if p[-1] not in {"ImageType", "Status", "Size", "CreateTime"})
FREE_TEXT = tuple(p for p in FREE_TEXT if "AdditionalRegionsInfo" not in p)


def shape(kind: Kind) -> str:
    """The regular expression of a shaped kind."""
    assert kind.pattern is not None
    return kind.pattern.pattern


SHAPED: dict[tuple[str | int, ...], str] = {
    ("Image", "ImageType"): shape(STATUS),
    ("Image", "Status"): shape(STATUS),
    ("Image", "AdditionalRegionsInfo", 0, "Status"): shape(STATUS),
    ("Image", "AdditionalRegionsInfo", 0, "RegionId"): shape(REGION),
}
CREDENTIAL = ("Image", "ContainerImageSpec", "RegistryCredential")
URL_PATH = ("Image", "ContainerImageSpec", "RegistryUrl")
SOURCES = ("UserName", "Password", "userinfo")
# A credential as registries hand them out: letters, digits and a few marks (none that ends a URL's path).
CREDENTIAL_TEXT = st.text(
    st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!*~"),
    min_size=MIN_LEARNED_LENGTH,
    max_size=60,
)


def carrying(body: dict[str, Any], source: str, value: str) -> dict[str, Any]:
    """``body`` whose registry credential (user name, password or registry URL userinfo) is ``value``."""
    if source == "userinfo":
        return put(body, URL_PATH, f"https://puller:{value}@reg.example.com/ns/app:1")
    return put(body, CREDENTIAL, {"UserName": "puller", "Password": "pw"} | {source: value})


def strings_of(image: Image) -> str:
    return "\n".join(image_strings(image))


@settings(max_examples=300, deadline=None)
@given(
    credential=CREDENTIAL_TEXT,
    source=st.sampled_from(SOURCES),
    path=st.sampled_from(FREE_TEXT),
    around=st.tuples(st.sampled_from(["", "app ", "x-"]), st.sampled_from(["", " v2", "-y"])),
    controls=st.sampled_from(["", "\x00", "\u202e", "\r\n"]),
)
def test_an_answers_credential_is_masked_in_its_own_free_text(
    credential: str, source: str, path: tuple[Any, ...], around: tuple[str, str], controls: str
) -> None:
    """Echoed whole, embedded, or with controls inside, in any free-text field of the same answer: that
    value is masked, the answer stands, and nothing is registered for other answers or outputs."""
    # A credential the answer already carries in a shaped value (a region id such as "cn-beijing") makes
    # the answer refused: that is the next test's family, not this one's.
    assume(credential not in json.dumps(good_body()))
    before = (registered_secret_count(), generation())
    half = len(credential) // 2
    echo = f"{around[0]}{credential[:half]}{controls}{credential[half:]}{around[1]}"
    if path == URL_PATH:
        echo = f"reg.example.com/{echo}/r:1"
    body = carrying(put(good_body(), path, echo), source, credential)
    if source == "userinfo" and path == URL_PATH:
        body = put(body, path, f"https://puller:{credential}@{echo}")
    image = parse(body)
    assert credential not in strings_of(image)
    assert REDACTED in strings_of(image)
    assert_clean(image)
    assert (registered_secret_count(), generation()) == before
    assert not contains_secret(credential)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), path=st.sampled_from(sorted(SHAPED, key=dotted)), source=st.sampled_from(SOURCES))
def test_an_answers_credential_in_its_own_shaped_value_is_refused(
    data: st.DataObject, path: tuple[Any, ...], source: str
) -> None:
    """A shaped value (a status, a region, an id) cannot be masked without breaking its shape: an answer
    whose shaped value carries its own credential is refused, naming the field."""
    credential = data.draw(
        st.from_regex(SHAPED[path], fullmatch=True).filter(lambda v: MIN_LEARNED_LENGTH <= len(v) <= 60),
        label="credential",
    )
    with pytest.raises(ApiError, match="registry credential") as err:
        parse(carrying(put(good_body(), path, credential), source, credential))
    assert dotted(path) in err.value.message
    assert credential not in str(err.value)


@settings(max_examples=100, deadline=None)
@given(
    credential=st.text(st.sampled_from("abcdefgh"), min_size=1, max_size=MIN_LEARNED_LENGTH - 1),
    source=st.sampled_from(SOURCES),
)
def test_weak_credentials_are_not_learned(credential: str, source: str) -> None:
    """A credential shorter than MIN_LEARNED_LENGTH masks nothing: the answer's own names stay whole."""
    name = f"app-{credential}-image"
    image = parse(carrying(put(good_body(), ("Image", "Name"), name), source, credential))
    assert image.name == name


def _answer_values() -> list[str]:
    """Every string of a normal answer, and the parts of its longer ones: what an attacker would name."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str) and node:
            out.extend({node, *node.split(), *node.split("/"), *node.split("-")})

    walk(good_body())
    return sorted(set(out))


ORDINARY = st.sampled_from(_answer_values())


@settings(max_examples=300, deadline=None)
@given(
    user=ORDINARY | CREDENTIAL_TEXT,
    password=ORDINARY | CREDENTIAL_TEXT,
    userinfo=st.none() | ORDINARY,
    echo=st.sampled_from(["", "Name", "Version"]),
    image_id=st.sampled_from([IMAGE_ID, "m-otherimage0000000002"]),
)
def test_what_one_answer_carries_never_changes_another(
    user: str, password: str, userinfo: str | None, echo: str, image_id: str
) -> None:
    """The denial of service class: an answer whose registry credentials are ordinary words of normal
    answers (a status, a region, an id, a name), whatever becomes of that answer, leaves every later
    answer, of the same image or another, read exactly as before; nothing is registered."""
    baseline = parse_get_image(good_body(), image_id, REGIONS)
    before = (registered_secret_count(), generation())
    hostile = put(good_body(), CREDENTIAL, {"UserName": user, "Password": password})
    if userinfo is not None:
        hostile = put(hostile, URL_PATH, f"{userinfo}:{password}@registry.example.com/ns/app:1")
    if echo:
        hostile = put(hostile, ("Image", echo), f"about {password}")
    outcome(hostile)  # masked, refused or accepted: only this answer's business
    assert parse_get_image(good_body(), image_id, REGIONS) == baseline
    assert (registered_secret_count(), generation()) == before


def _parse_cost(body: dict[str, Any]) -> float:
    """Seconds per parse of ``body`` (best of several runs: the machine's load only adds)."""
    return min(timeit.repeat(lambda: parse(body), number=200, repeat=7)) / 200


@settings(max_examples=4, deadline=None)
@given(
    lengths=st.lists(st.integers(MIN_LEARNED_LENGTH, 3000), min_size=300, max_size=500, unique=True),
    stem=st.sampled_from(["registry-vpc.cn-hangzhou", "Available", "cn-beijing", "m-copy", "CentOS 7"]),
)
def test_planted_credentials_of_many_lengths_cost_later_answers_nothing(
    lengths: list[int], stem: str
) -> None:
    """Hundreds of answers planting credentials of distinct lengths, all starting like text of normal
    answers: each is read, and afterwards a normal answer costs what it cost before (a ratio measured in
    this run) and reads the same. (What a planted answer costs itself grows with the length of what it
    carries, as any answer's does: comparing it with a normal answer measured the body's size, not the
    learning, and went red by itself on a busy machine.)"""
    normal = good_body()
    baseline = parse(normal)
    base_cost = _parse_cost(normal)
    planted = [carrying(normal, "Password", (stem * 3000)[:n]) for n in lengths]
    for body in planted:
        outcome(body)
    assert parse(normal) == baseline
    assert _parse_cost(normal) < 3 * base_cost


# ------------------------------------------------------------------------------------------- ListImages

LIST_FIELDS = ("ImageId", "ImageType", "Name")  # what discovery reads of an item
LIST_UNREAD = ("Version", "Description", "AppId", "OsTag", "CreateTime", "UpdateTime")


def list_body(**item: Any) -> dict[str, Any]:
    base = {"ImageId": "m-a", "ImageType": "VM", "Name": "a"}
    return {"RequestId": "R", "TotalCount": 1, "PageNumber": 1, "PageSize": 50, "Images": [base | item]}


@pytest.mark.parametrize("field", LIST_FIELDS)
@pytest.mark.parametrize("family", sorted(BAD_STRINGS))
def test_list_items_refuse_bad_strings(field: str, family: str) -> None:
    with pytest.raises(ApiError, match=rf"Images\[0\]\.{field}"):
        parse_list_images(list_body(**{field: BAD_STRINGS[family]}))


@pytest.mark.parametrize("field", LIST_UNREAD)
@pytest.mark.parametrize(
    "value", [*BAD_STRINGS.values(), *WRONG_TYPES], ids=[*BAD_STRINGS, *map(repr, WRONG_TYPES)]
)
def test_list_item_fields_nothing_reads_are_ignored(field: str, value: Any) -> None:
    """A bad value in an item field discovery does not read leaves the page as the good one."""
    assert parse_list_images(list_body(**{field: value})) == parse_list_images(list_body())


@pytest.mark.parametrize("field", ["TotalCount", "PageNumber", "PageSize"])
@pytest.mark.parametrize("value", [-1, 10**12, 10**400, 1.5, "5", True])
def test_list_numbers_are_range_checked(field: str, value: Any) -> None:
    with pytest.raises(ApiError, match=field):
        parse_list_images(list_body() | {field: value})


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "code",
    ["Bad\udfff", SECRET, f"X{SECRET}", "a" * 200, "Not a code", "<script>", "9Lives", "Code\x1b[2J"],
    ids=repr,
)
def test_error_codes_that_fail_the_gate_are_invalid_response(code: str) -> None:
    body = json.dumps({"Code": code, "Message": "m", "RequestId": "R"}).encode()
    err = error_from_response("GetImage", 400, body, {})
    assert err.code == INVALID_RESPONSE
    assert err.http_status == 400
    assert "Code" in err.message
    assert code not in str(err)


@pytest.mark.parametrize("code", ["Throttling.User", "InvalidAccessKeyId.NotFound", "Forbidden.RAM", "X_Y-1"])
def test_well_formed_new_codes_are_kept(code: str) -> None:
    err = error_from_response("GetImage", 400, json.dumps({"Code": code}).encode(), {})
    assert err.code == code


@pytest.mark.parametrize(
    "body",
    [b"[" * 200_000, b'{"Code":' * 100_000, b'{"Code": 1' + b"0" * 5000 + b"}", b"\xff\xfe", b"null"],
    ids=["deep array", "deep object", "huge int", "bad utf-8", "null"],
)
def test_unparseable_error_bodies_are_invalid_response(body: bytes) -> None:
    assert error_from_response("GetImage", 500, body, {}).code == INVALID_RESPONSE


def test_error_message_is_cleaned_not_refused() -> None:
    parsed = parse_error_body({"Code": "EcsError", "Message": "a\x1b[2Jb\udfff", "RequestId": SECRET})
    assert parsed.code == "EcsError"
    assert parsed.request_id is None
    assert "\x1b" not in parsed.message
    parsed.message.encode("utf-8")
