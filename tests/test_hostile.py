"""Hostile gateway: classes of odd answers, generated as field x value family, against the running exporter.

The gateway (``tests/hostile_gateway.py``, not the simulator) answers raw bytes. Each family runs one
exporter watching one image per case plus control images: every case image first gets a good answer,
then its hostile one, then the good one again. After the hostile cycle and after the recovery cycle,
every case asserts all of these:

- ``/metrics`` answers 200 and parses (prometheus_client's parser and ``promtool check metrics``);
- the control images kept refreshing (up 1, a success after the hostile answers went out);
- no known secret (AccessKey secret, STS token, the case images' registry passwords and user names) on
  ``/metrics``, the landing page or the exporter's log, no raw control character on ``/metrics`` or the
  page, and no traceback in the log;
- the case's image shows one of the outcomes its family allows: ``invalid`` (up 0, last error
  ``InvalidResponse``, its last good info/status/size/region series kept as they were), ``up``
  (up 1, no last error), ``ignored:<field>`` (up 1, that series absent, counted in
  ``ehpc_api_ignored_values_total``) or ``code:<Code>`` (up 0 with that code, last good data kept);
- after the good answer is back, the image is up 1 with the same series as before the hostile answer.

ListImages cases run the same way in discovery exporters (one per worker, told apart by AccessKey id):
the failing answer is counted under ListImages, the images discovered before stay watched, the static
image keeps refreshing. Rotating error codes check the cap on ``ehpc_api_errors_total`` codes. ``check``
(the one-shot CLI) gets a subset: exit 0 or 1, no traceback, no secret, no raw control character.
Adding a field or a value family is one line in FIELDS / FAMILIES.

Speed: after each switch of answers a SIGHUP (an unchanged config reloaded) starts a cycle at once, and
the test waits on the gateway's own record of what it answered and on the cycle's end timestamp, never
on fixed sleeps; the module runs in about 70 s on the 2-core machine.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import (
    ExporterProcess,
    HarnessError,
    WaitTimedOut,
    exporter_config,
    run_cli,
    start_exporter,
    wait_until,
)
from tests.hostile_gateway import (
    GOOD_CREATE_TS,
    Answer,
    HostileGateway,
    Raw,
    Request,
    Script,
    error_answer,
    good_image,
    good_list_page,
    json_answer,
    list_item,
    with_path,
)
from tests.reliability import Reliability

pytestmark = pytest.mark.process  # most tests here start real processes (make test-fast skips the file)

# ------------------------------------------------------------------------------------------- secrets

AK_ID = "LTAIhostileGatewayKey01"
AK_SECRET = "hostileAkSecret7e1f0c9d5b3a48e2b6f1d0c9a8"
STS_TOKEN = "CAIShostileStsToken4b2e9f7a1c3d5e8f0a2b4c6d"
REG_USER = "hostile-registry-user-5c1e"
REG_PASSWORD = "hostileRegistryPass9a7c5e3b1d2f4a6c"
# The container control's registry credential: in another image's answer it is an ordinary value (no
# answer changes how another is read), so it is no secret to scan for. Of every shape: a region id too.
FOREIGN_USER = "foreign-registry-user-2b8d"
FOREIGN_PASSWORD = "foreign-registry-pass-7d3b9e1f"
URL_PASSWORD = "PASS-hostile-url-3f9d"  # written after 'pa/', 'pa?', 'pa#', 'pa@' in a URL's userinfo
SECRETS = {
    AK_SECRET: "AccessKey secret",
    STS_TOKEN: "STS token",
    REG_USER: "registry user",
    REG_PASSWORD: "registry password",
    URL_PASSWORD: "URL password",
}

# Raw C0 (except \n), DEL, C1, ESC and the bidi controls: none may reach /metrics, the page or check.
CONTROL_RE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
PAGE_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
WELL_FORMED_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[._-][A-Za-z0-9]+)*$")

INTERVAL = 1.0  # the minimum; after each switch a SIGHUP starts a cycle at once (kick)
MAX_ERROR_CODES = 10  # limits.max_error_codes for these exporters (when the config accepts it)
MAX_REGIONS = 50  # limits.max_regions_per_image
MAX_PAGES = 20  # discovery.max_pages
DEFAULT_MAX_ERROR_CODES = 50  # what the exporter uses when the limits section is not accepted
REGIONS = {"cn-beijing": "Available", "cn-shanghai": "Available"}
# Per image: what a failed answer must leave as it was (the last good data).
KEPT = (
    "ehpc_image_info",
    "ehpc_image_status",
    "ehpc_image_available",
    "ehpc_image_size_bytes",
    "ehpc_image_created_timestamp_seconds",
    "ehpc_image_replication_status",
    "ehpc_image_replication_available",
)
IGNORED = "ehpc_api_ignored_values_total"

# ------------------------------------------------------------------------------------ outcome names

INV = "invalid"
UP = "up"


def ign(field_name: str) -> str:
    """The outcome: up 1 without the field's series, counted as an ignored value."""
    return f"ignored:{field_name}"


def code(name: str) -> str:
    """The outcome: up 0 with last error ``name``, last good data kept."""
    return f"code:{name}"


DOWN = "down"  # up 0 with some well-formed code, last good data kept


# ------------------------------------------------------------------------------------------- fields


@dataclass(frozen=True)
class Field:
    """One field of an answer the gateway can poison.

    ``kind``: ``text`` (free text the exporter parses), ``shaped`` (an id, status, region or request id
    of a fixed shape), ``unparsed`` (in the body, not used: anything harmless is fine), ``ignored`` (in
    the body and read by nothing: whatever it holds, the answer stands, unless the body as a whole is not
    JSON), ``size``, ``date``, ``bool``, ``number``; ``label``: the ehpc_image_info label that carries it.
    """

    name: str
    path: tuple[str | int, ...]
    image_type: str = "VM"
    kind: str = "text"
    label: str | None = None
    bad_shape: str | None = None  # a printable value not of the field's shape (shaped fields)
    shape_strict: bool = True  # a bad shape must be InvalidResponse (False: either outcome is fine)


_VM = ("Image", "VMImageSpec")
_CT = ("Image", "ContainerImageSpec")
_CRED = (*_CT, "RegistryCredential")
_REG = ("Image", "AdditionalRegionsInfo", 0)
# Every field of a GetImage 200 body (seed reference), once. Adding a field is one line.
FIELDS: tuple[Field, ...] = (
    # Never kept: a request id only labels log lines, so a bad one is dropped and the answer stands.
    Field("RequestId", ("RequestId",), kind="unparsed"),
    Field("Image.ImageType", ("Image", "ImageType"), kind="shaped", label="image_type", bad_shape="V M!"),
    Field("Image.AppId", ("Image", "AppId"), label="app_id"),
    Field("Image.Name", ("Image", "Name"), label="name"),
    Field("Image.Version", ("Image", "Version"), label="version"),
    # Read by nothing (exporter.models.Image keeps only what is used): a bad value is no reason to lose
    # the answer, so each must leave the image up.
    Field("Image.Description", ("Image", "Description"), kind="ignored"),
    Field("Image.Size", ("Image", "Size"), kind="size"),
    Field("Image.CreateTime", ("Image", "CreateTime"), kind="date"),
    Field("Image.Status", ("Image", "Status"), kind="shaped", bad_shape="Available now!"),
    # Not kept either: the watched id is the identity of the series (the spec only repeats it).
    Field("VMImageSpec.ImageId", (*_VM, "ImageId"), kind="unparsed"),
    Field("VMImageSpec.OsTag", (*_VM, "OsTag"), label="os_tag"),
    Field("VMImageSpec.Platform", (*_VM, "Platform"), label="platform"),
    Field("VMImageSpec.Architecture", (*_VM, "Architecture"), label="architecture"),
    Field("ContainerImageSpec.RegistryUrl", (*_CT, "RegistryUrl"), "Container", label="registry_url"),
    Field("ContainerImageSpec.IsACRRegistry", (*_CT, "IsACRRegistry"), "Container", kind="ignored"),
    Field("ContainerImageSpec.IsACREnterprise", (*_CT, "IsACREnterprise"), "Container", kind="ignored"),
    Field("ContainerImageSpec.RegistryCriId", (*_CT, "RegistryCriId"), "Container", kind="ignored"),
    Field("ContainerImageSpec.OsTag", (*_CT, "OsTag"), "Container", label="os_tag"),
    Field("ContainerImageSpec.Platform", (*_CT, "Platform"), "Container", label="platform"),
    Field("ContainerImageSpec.Architecture", (*_CT, "Architecture"), "Container", label="architecture"),
    Field("RegistryCredential.Server", (*_CRED, "Server"), "Container", kind="unparsed"),
    Field("RegistryCredential.UserName", (*_CRED, "UserName"), "Container", kind="unparsed"),
    Field("RegistryCredential.Password", (*_CRED, "Password"), "Container", kind="unparsed"),
    Field("DocumentInfo.DocumentId", ("Image", "DocumentInfo", "DocumentId"), kind="ignored"),
    Field("DocumentInfo.EncodingMode", ("Image", "DocumentInfo", "EncodingMode"), kind="unparsed"),
    Field("DocumentInfo.Document", ("Image", "DocumentInfo", "Document"), kind="unparsed"),
    Field("AdditionalRegionsInfo.Status", (*_REG, "Status"), kind="shaped", bad_shape="Avail able!"),
    Field("AdditionalRegionsInfo.ImageId", (*_REG, "ImageId"), kind="ignored"),
    Field("AdditionalRegionsInfo.RegionId", (*_REG, "RegionId"), kind="shaped", bad_shape="Mars 1"),
    Field("TotalCount", ("TotalCount",), kind="number"),
)
# The fields of an error body (HTTP 400). Code must be well-formed; Message and RequestId may fail or not.
ERROR_FIELDS: tuple[Field, ...] = (
    Field("error.Code", ("Code",), kind="code", bad_shape="Foo Bar!"),
    Field("error.Message", ("Message",), kind="message"),
    Field("error.RequestId", ("RequestId",), kind="message", bad_shape="<script>alert(1)</script>"),
)

# ------------------------------------------------------------------------------------ value families


@dataclass(frozen=True)
class Variant:
    """One hostile value for one field, and the outcomes it may have."""

    name: str
    value: Any
    outcomes: frozenset[str]
    check: Callable[[Observation, CaseSpec], str | None] | None = None  # extra check; a problem or None


def _v(name: str, value: Any, *outcomes: str, check: Any = None) -> Variant:
    return Variant(name, value, frozenset(outcomes), check)


def _parsed(f: Field) -> bool:
    return f.kind not in ("unparsed", "ignored", "number")


def _strict(f: Field) -> tuple[str, ...]:
    """InvalidResponse for a field the exporter reads; the answer standing for one nothing reads; either
    outcome for one it does not keep."""
    if f.kind == "ignored":
        return (UP,)
    if f.kind == "message":
        return (INV, code("InvalidParams"))
    return (INV,) if _parsed(f) else (INV, UP)


def _lenient(f: Field) -> tuple[str, ...]:
    """Outcomes for odd but decodable strings (controls) in a field of a fixed shape."""
    if f.kind in ("text", "ignored"):
        return (UP,)
    if f.kind == "code":
        return (INV,)
    if f.kind == "message":
        return (INV, code("InvalidParams"))
    if f.kind in ("size", "date"):
        return (UP, INV, ign(f.name))
    return (UP, INV)


def fam_surrogates(f: Field) -> list[Variant]:
    """Lone surrogates escaped in the JSON text (``\\udfff``): decodable JSON, not Unicode."""
    if f.kind == "bool":
        return []
    return [
        _v("escaped low surrogate", Raw(b'"Bad\\udfff"'), *_strict(f)),
        _v("escaped high surrogate", Raw(b'"\\ud800x"'), *_strict(f)),
    ]


def fam_invalid_utf8(f: Field) -> list[Variant]:
    """Raw bytes that are not UTF-8 in the field: the body cannot be decoded at all."""
    if f.kind == "bool":
        return []
    # Not UTF-8 (RFC 8259 section 8.1), whatever the field: CESU-8 surrogates too, which Python's
    # json.loads(bytes) would let through ("surrogatepass").
    return [
        _v("raw 0xff byte", Raw(b'"Bad\xff"'), INV),
        _v("raw CESU-8 surrogate", Raw(b'"\xed\xa0\x80"'), INV),
        _v("raw overlong '/'", Raw(b'"\xc0\xaf"'), INV),
    ]


def fam_controls(f: Field) -> list[Variant]:
    """C0, C1, ANSI and bidi controls inside an otherwise plausible value (JSON-escaped where needed)."""
    if f.kind in ("bool", "number"):
        return []
    base = {"size": "40 GiB", "date": "2022-12-23T09:51:39Z", "code": "Foo.Bar"}.get(f.kind, "gromacs")
    if f.kind == "shaped":
        base = "Available" if f.name.endswith("Status") else "cn-beijing" if "Region" in f.name else "abc"
    mid = len(base) // 2
    return [
        _v("C0 controls", base[:mid] + "\x07\x00\x08" + base[mid:], *_lenient(f)),
        _v("C1 controls", base[:mid] + "\x85\x9b" + base[mid:], *_lenient(f)),
        _v("ANSI escape", "\x1b[31m" + base + "\x1b[0m", *_lenient(f)),
        _v("bidi controls", base[:mid] + "\u202e\u2066" + base[mid:], *_lenient(f)),
        _v("newline and CR", base[:mid] + "\r\n" + base[mid:], *_lenient(f)),
    ]


def fam_unicode(f: Field) -> list[Variant]:
    """Valid but unusual Unicode (CJK, emoji): fine in free text, and published as it is."""
    if f.kind != "text":
        return []
    value = "应用测试镜像🚀"
    return [_v("CJK and emoji", value, UP, check=_label_is(f, value))]


def fam_lengths(f: Field) -> list[Variant]:
    """Over-long strings: 10 kB and 1 MB (under the 4 MiB response cap)."""
    if f.kind in ("bool", "number"):
        return []
    return [
        _v("10 kB string", "x" * 10_000, *_strict(f)),
        _v("1 MB string", "y" * 1_000_000, *_strict(f)),
    ]


def fam_types(f: Field) -> list[Variant]:
    """Wrong JSON types where a string (or a boolean) belongs."""
    if f.kind == "number":
        return [_v("string", "1", INV, UP), _v("object", {"n": 1}, INV, UP)]
    if f.kind == "bool":
        return [_v("string 'true'", "true", INV), _v("number 1", 1, INV), _v("array", [], INV)]
    return [
        _v("number", 42, *_strict(f)),
        _v("boolean", True, *_strict(f)),
        _v("array", ["a"], *_strict(f)),
        _v("object", {"a": "b"}, *_strict(f)),
    ]


def fam_nesting(f: Field) -> list[Variant]:
    """``[`` x 200,000: valid JSON that no recursive parser survives."""
    if f.kind in ("bool",):
        return []
    return [_v("200,000 nested arrays", Raw(b"[" * 200_000 + b"]" * 200_000), INV)]


def fam_numbers(f: Field) -> list[Variant]:
    """Huge, negative and non-integer numbers (in number fields, and as numbers in string fields)."""
    if f.kind == "number":
        return [
            _v("400-digit integer", Raw(b"9" * 400), INV, UP),
            _v("negative", -1, INV, UP),
            _v("non-integer", 1.5, INV, UP),
            _v("1e400 (overflows a double)", Raw(b"1e400"), INV, UP),
        ]
    if f.kind in ("text", "shaped", "size", "date", "code", "ignored"):
        return [
            _v("400-digit number", Raw(b"9" * 400), *_strict(f)),
            _v("1e400", Raw(b"-1e400"), *_strict(f)),
        ]
    return []


def _own(f: Field) -> tuple[str, ...]:
    """Outcomes for the answer's own registry credential echoed in one of its fields."""
    if f.kind in ("text", "ignored"):
        return (UP,)  # masked where it stands, or never read
    return (INV,) if _parsed(f) else (UP, INV)  # a shaped value cannot be masked: refused


def _masked_label(f: Field, secret: str) -> Callable[[Observation, CaseSpec], str | None]:
    def check(obs: Observation, case: CaseSpec) -> str | None:
        if f.label is None or f.kind != "text":
            return None
        got = obs.info_label(case.image_id, f.label)
        return None if got == "[REDACTED]" else f"label {f.label}={got!r}, expected it masked"

    return check


def _ordinary(f: Field) -> tuple[str, ...]:
    """Outcomes for a plain well-formed value of every shape (FOREIGN_PASSWORD) in the field."""
    if f.kind in ("size", "date"):
        return (ign(f.name),)
    if f.kind == "code":
        return (code(FOREIGN_PASSWORD),)
    if f.kind == "message":
        return (code("InvalidParams"),)
    if f.name.endswith("RegionId"):
        return (ign("Image.AdditionalRegionsInfo"),)  # a region nobody asked for
    return (UP,)


def fam_secrets(f: Field) -> list[Variant]:
    """The exporter's own secrets echoed in the field, alone and embedded in other text (refused
    wherever read); a Container answer's own registry credential in its other fields (masked in free
    text, refused in a shaped value); another image's registry credential (an ordinary value here)."""
    if f.kind in ("bool", "number"):
        return []
    out = [
        _v("AccessKey secret", AK_SECRET, *_strict(f)),
        _v("AccessKey secret embedded", f"see {AK_SECRET} here", *_strict(f)),
        _v("STS token", STS_TOKEN, *_strict(f)),
    ]
    if f.image_type == "Container":
        for name, secret in (("Password", REG_PASSWORD), ("UserName", REG_USER)):
            if f.name != f"RegistryCredential.{name}":
                out.append(_v(f"its own registry {name}", secret, *_own(f), check=_masked_label(f, secret)))
    else:
        foreign = _label_is(f, FOREIGN_PASSWORD) if f.kind == "text" else None
        out.append(_v("another image's registry password", FOREIGN_PASSWORD, *_ordinary(f), check=foreign))
    return out


def fam_shapes(f: Field) -> list[Variant]:
    """A printable value not of the field's shape (a region id with a space, a status with '!')."""
    if f.bad_shape is None:
        return []
    if f.kind == "message":
        return [_v("bad shape", f.bad_shape, INV, code("InvalidParams"))]
    return [_v("bad shape", f.bad_shape, *((INV,) if f.shape_strict else (INV, UP)))]


def _label_is(f: Field, value: str) -> Callable[[Observation, CaseSpec], str | None]:
    def check(obs: Observation, case: CaseSpec) -> str | None:
        if f.label is None:
            return None
        got = obs.info_label(case.image_id, f.label)
        return None if got == value else f"label {f.label}={got!r}, expected {value!r}"

    return check


# Value families for string fields. Adding a family is one line.
FAMILIES: dict[str, Callable[[Field], list[Variant]]] = {
    "surrogates": fam_surrogates,
    "invalid utf-8": fam_invalid_utf8,
    "controls": fam_controls,
    "unicode": fam_unicode,
    "lengths": fam_lengths,
    "types": fam_types,
    "nesting": fam_nesting,
    "numbers": fam_numbers,
    "secrets": fam_secrets,
    "shapes": fam_shapes,
}


# -------------------------------------------------------------------------- sizes, dates, regions

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_DECIMAL_ALIASES = {"KB": "KiB", "MB": "MiB", "GB": "GiB", "TB": "TiB", "PB": "PiB"}


def _size_is(expected: int) -> Callable[[Observation, CaseSpec], str | None]:
    def check(obs: Observation, case: CaseSpec) -> str | None:
        got = obs.value("ehpc_image_size_bytes", case.image_id)
        return None if got == expected else f"size {got}, expected {expected}"

    return check


def _created_is(expected: float) -> Callable[[Observation, CaseSpec], str | None]:
    def check(obs: Observation, case: CaseSpec) -> str | None:
        got = obs.value("ehpc_image_created_timestamp_seconds", case.image_id)
        return None if got == expected else f"created {got}, expected {expected}"

    return check


def size_variants() -> list[Variant]:
    """Every unit B..PiB (and KB..PB, the API's binary habit) in any case, with decimals; then garbage."""
    out: list[Variant] = []
    units = [*((u, u) for u in _UNITS), *_DECIMAL_ALIASES.items()]
    for unit, binary in units:
        power = 1024 ** _UNITS.index(binary)
        numbers = ("512",) if binary == "B" else ("1.5", "0.25")
        for spelled in dict.fromkeys((unit, unit.lower(), unit.upper())):
            for number in numbers:
                text = f"{number} {spelled}"
                out.append(_v(repr(text), text, UP, check=_size_is(round(float(number) * power))))
    out.append(_v("'2GiB' without a space", "2GiB", UP, check=_size_is(2 * 1024**3)))
    for garbage in (
        "1.5 TiBs",
        "40 XiB",
        "-1 GiB",
        "GiB",
        "1.5.3 GiB",
        "NaN GiB",
        "inf GiB",
        "forty GiB",
    ):
        out.append(_v(f"unparseable {garbage!r}", garbage, ign("Image.Size")))
    out.append(_v("400-digit size", "9" * 400 + " GiB", INV, ign("Image.Size")))
    # Empty, as in the API reference's example: absent (no size series), not a mis-read to count.
    out.append(_v("empty (absent)", "", UP))
    return out


def date_variants() -> list[Variant]:
    """CreateTime: the same instant written two ways, then malformed dates."""
    out = [
        _v("'Z' suffix", "2022-12-23T09:51:39Z", UP, check=_created_is(GOOD_CREATE_TS)),
        _v("+08:00 offset", "2022-12-23T17:51:39+08:00", UP, check=_created_is(GOOD_CREATE_TS)),
    ]
    for bad in (
        "2022-13-45T99:99:99Z",
        "yesterday",
        "",
        "0000-00-00T00:00:00Z",
        "2022-12-23T09:51:39+25:00",
        "99999-01-01T00:00:00Z",
    ):
        out.append(_v(f"malformed {bad!r}", bad, ign("Image.CreateTime"), INV))
    return out


def _regions_are(expected: dict[str, str]) -> Callable[[Observation, CaseSpec], str | None]:
    def check(obs: Observation, case: CaseSpec) -> str | None:
        got = obs.replicas(case.image_id)
        return None if got == expected else f"replicas {got}, expected {expected}"

    return check


def _entry(region: str, status: str = "Available", image_id: str = "m-x") -> dict[str, str]:
    return {"Status": status, "ImageId": image_id, "RegionId": region}


def region_variants() -> list[Variant]:
    """AdditionalRegionsInfo: duplicates, contradictions, unrequested regions, 1,000 entries, bad shapes."""
    both = [_entry("cn-beijing"), _entry("cn-shanghai")]
    ok = _regions_are(dict(REGIONS))
    field_name = "Image.AdditionalRegionsInfo"
    return [
        _v("identical duplicate", [*both, _entry("cn-beijing")], ign(field_name), check=ok),
        _v("contradictory duplicate", [*both, _entry("cn-beijing", "CreateFailed")], INV),
        _v("unrequested region", [*both, _entry("cn-hongkong")], ign(field_name), check=ok),
        _v("only unrequested regions", [_entry("ap-southeast-1"), _entry("us-west-1")], ign(field_name)),
        _v(
            "1,000 entries",
            [*both, *(_entry(f"xx-region-{i}") for i in range(998))],
            INV,
        ),
        _v(
            f"{MAX_REGIONS + 1} entries", [*both, *(_entry(f"xx-r-{i}") for i in range(MAX_REGIONS - 1))], INV
        ),
        _v("not an array", {"RegionId": "cn-beijing"}, INV),
        _v("entry not an object", ["cn-beijing"], INV),
        _v("empty array", [], UP),
    ]


# ----------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class CaseSpec:
    """One hostile case: an image that first answers ``good``, then ``hostile``, then ``good`` again."""

    family: str
    field: str
    variant: Variant
    image_id: str
    image_type: str
    good: Script
    hostile: Script

    @property
    def id(self) -> str:
        """``field x family: variant``."""
        return f"{self.field} x {self.family}: {self.variant.name}"


def _good_script(image_type: str, user: str = REG_USER, password: str = REG_PASSWORD) -> Script:
    def script(r: Request) -> Answer:
        image_id = r.params.get("ImageId", "")
        return json_answer(
            good_image(image_id, image_type, REGIONS, registry_user=user, registry_password=password)
        )

    return script


def _poisoned(image_type: str, path: tuple[str | int, ...], value: Any) -> Script:
    def script(r: Request) -> Answer:
        image_id = r.params.get("ImageId", "")
        doc = good_image(
            image_id, image_type, REGIONS, registry_user=REG_USER, registry_password=REG_PASSWORD
        )
        return json_answer(with_path(doc, path, value))

    return script


def _error_poisoned(path: tuple[str | int, ...], value: Any) -> Script:
    def script(_r: Request) -> Answer:
        doc: dict[str, Any] = {
            "Code": "InvalidParams",
            "Message": "The parameter is invalid.",
            "RequestId": "R-E",
        }
        return json_answer(with_path(doc, path, value), status=400)

    return script


class _Ids:
    """Distinct, valid image ids (m- and 20 characters) per family."""

    def __init__(self, prefix: str) -> None:
        self.prefix = re.sub(r"[^a-z0-9]", "", prefix.lower())[:8]
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"m-{self.prefix}{self.n:0{18 - len(self.prefix)}d}"


def field_cases(family: str) -> list[CaseSpec]:
    """The cases of one string-field value family over every field (success and error bodies)."""
    ids = _Ids("h" + family)
    out = []
    for f in FIELDS:
        for variant in FAMILIES[family](f):
            out.append(
                CaseSpec(
                    family,
                    f.name,
                    variant,
                    ids(),
                    f.image_type,
                    _good_script(f.image_type),
                    _poisoned(f.image_type, f.path, variant.value),
                )
            )
    for f in ERROR_FIELDS:
        for variant in FAMILIES[family](f):
            out.append(
                CaseSpec(
                    family,
                    f.name,
                    variant,
                    ids(),
                    "VM",
                    _good_script("VM"),
                    _error_poisoned(f.path, variant.value),
                )
            )
    return out


def special_cases(family: str) -> list[CaseSpec]:
    """Sizes, dates, regions, error codes and x-acs-request-id: one field, many values."""
    ids = _Ids("s" + family)
    specs: list[tuple[str, Variant, Script]] = []
    if family == "sizes":
        specs = [("Image.Size", v, _poisoned("VM", ("Image", "Size"), v.value)) for v in size_variants()]
    elif family == "dates":
        specs = [
            ("Image.CreateTime", v, _poisoned("VM", ("Image", "CreateTime"), v.value))
            for v in date_variants()
        ]
    elif family == "regions":
        specs = [
            ("Image.AdditionalRegionsInfo", v, _poisoned("VM", ("Image", "AdditionalRegionsInfo"), v.value))
            for v in region_variants()
        ]
    elif family == "error codes":
        for value, outcomes in (
            ("Foo.Bar", (code("Foo.Bar"),)),
            ("DbError", (code("DbError"),)),
            ("", (INV,)),
            ("Foo Bar!", (INV,)),
            ("A" * 256, (INV,)),
        ):
            variant = Variant(f"code {value[:20]!r}", value, frozenset(outcomes))
            specs.append(("error.Code", variant, _error_poisoned(("Code",), value)))
        variant = Variant("HTTP 503 with a JSON array", [], frozenset({INV}))
        specs.append(("error body", variant, _const(json_answer([], 503))))
    elif family == "registry urls":
        path = (*_CT, "RegistryUrl")
        for name, value in (
            ("userinfo, '/' in the password", f"https://user:pa/{URL_PASSWORD}@reg.example.com/ns/r"),
            ("userinfo, no scheme", f"user:pa/{URL_PASSWORD}@reg.example.com/ns/r:1"),
            ("userinfo, '?' in the password", f"https://user:pa?{URL_PASSWORD}@reg.example.com/ns/r"),
            ("userinfo, '#' in the password", f"https://user:pa#{URL_PASSWORD}@reg.example.com/ns/r"),
            ("userinfo, '@' in the password", f"https://user:pa@{URL_PASSWORD}@reg.example.com/ns/r"),
            ("percent-encoded password", f"https://user:pa%2F{URL_PASSWORD}@reg.example.com/ns/r"),
            ("the registry password in the path", f"reg.example.com/{REG_PASSWORD}/r:1"),
        ):
            # Either refused or published without the password (the secret scan checks every output).
            variant = Variant(name, value, frozenset({UP, INV}), _no_userinfo)
            specs.append(("ContainerImageSpec.RegistryUrl", variant, _poisoned("Container", path, value)))
        digest = "reg.example.com/ns/r@sha256:" + "ab" * 32
        variant = Variant("digest reference", digest, frozenset({UP}), _label_is(_URL_FIELD, digest))
        specs.append(("ContainerImageSpec.RegistryUrl", variant, _poisoned("Container", path, digest)))
    elif family == "request-id header":
        for name, value in (
            ("AccessKey secret", AK_SECRET),
            ("STS token", STS_TOKEN),
            ("another image's registry password", FOREIGN_PASSWORD),
            ("ANSI escape", "\x1b[31mR-1\x1b[0m"),
            ("1 kB", "r" * 1000),
        ):
            for status, body, label in (
                (502, b"<html>Bad Gateway</html>", "HTML 502"),
                (400, b'{"Code":"InvalidParams","Message":"m"}', "JSON 400 without RequestId"),
            ):
                answer = Answer(
                    status, body, (("Content-Type", "application/json"), ("x-acs-request-id", value))
                )
                specs.append(
                    (
                        "x-acs-request-id",
                        Variant(f"{name}, {label}", value, frozenset({DOWN})),
                        _const(answer),
                    )
                )
    image_type = "Container" if family == "registry urls" else "VM"
    return [CaseSpec(family, f, v, ids(), image_type, _good_script(image_type), s) for f, v, s in specs]


_URL_FIELD = Field("ContainerImageSpec.RegistryUrl", (*_CT, "RegistryUrl"), "Container", label="registry_url")


def _no_userinfo(obs: Observation, case: CaseSpec) -> str | None:
    """The published registry URL carries no userinfo (nothing before an '@' in the authority)."""
    url = obs.info_label(case.image_id, "registry_url") or ""
    authority = url.split("://", 1)[-1].split("/", 1)[0]
    return f"registry_url label {url!r} keeps userinfo" if "@" in authority or ":pa" in url else None


def _const(answer: Answer) -> Script:
    return lambda _r: answer


FIELD_FAMILIES = tuple(FAMILIES)
SPECIAL_FAMILIES = ("sizes", "dates", "regions", "registry urls", "error codes", "request-id header")


def cases_of(family: str) -> list[CaseSpec]:
    """Every case of one family."""
    return field_cases(family) if family in FAMILIES else special_cases(family)


# ----------------------------------------------------------------------------------- observation


@dataclass
class Observation:
    """One look at the exporter: /metrics, the landing page, and what they parse to."""

    status: int
    text: str
    page: str
    problems: list[str] = field(default_factory=list)  # exposition-level problems found
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def value(self, name: str, image_id: str) -> float | None:
        """The value of ``name{image_id=...}``, or None."""
        for n, labels, v in self.samples:
            if n == name and labels.get("image_id") == image_id:
                return v
        return None

    def series(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        """Every series of ``name`` whose labels include ``labels``."""
        return [
            (lab, v)
            for n, lab, v in self.samples
            if n == name and all(lab.get(k) == val for k, val in labels.items())
        ]

    def kept(self, image_id: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """The image's last-good-data series."""
        return {
            (n, frozenset(lab.items())): v
            for n, lab, v in self.samples
            if n in KEPT and lab.get("image_id") == image_id
        }

    def error_codes(self, image_id: str) -> list[str]:
        """The codes of the image's last_error_info series."""
        return [lab["code"] for lab, v in self.series("ehpc_image_last_error_info", image_id=image_id) if v]

    def info_label(self, image_id: str, label: str) -> str | None:
        """One label of the image's ehpc_image_info."""
        found = self.series("ehpc_image_info", image_id=image_id)
        return found[0][0].get(label) if found else None

    def replicas(self, image_id: str) -> dict[str, str]:
        """region -> the status whose state-set series is 1."""
        return {
            lab["replication_region"]: lab["status"]
            for lab, v in self.series("ehpc_image_replication_status", image_id=image_id)
            if v == 1
        }

    def counter(self, name: str, **labels: str) -> float:
        """The sum of a counter's series whose labels include ``labels``."""
        return sum(v for lab, v in self.series(name, **labels))


_PROMTOOL_PROBLEM = re.compile(r"^(.*?)(?:\s+\d+(?:\.\d+)?)?$")


def promtool_problems(text: str) -> tuple[int, set[str]]:
    """``promtool check metrics``: its exit code and its messages (parse errors and lint problems)."""
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30, check=False
    )
    lines = (proc.stdout + proc.stderr).decode(errors="replace").splitlines()
    return proc.returncode, {line.strip() for line in lines if line.strip()}


def observe(exporter: ExporterProcess, baseline_lint: set[str] | None = None) -> Observation:
    """Scrape /metrics and / once, and check the exposition itself."""
    try:
        status, _, body = exporter.get("/metrics", timeout=15)
    except OSError as exc:
        return Observation(0, "", "", [f"/metrics: {type(exc).__name__}: {exc}"])
    try:
        _, _, page_body = exporter.get("/", timeout=15)
        page = page_body.decode("utf-8", errors="replace")
    except OSError as exc:
        page = f"(landing page failed: {exc})"
    obs = Observation(status, "", page)
    if status != 200:
        obs.problems.append(f"/metrics answered {status}: {body[:200]!r}")
        return obs
    try:
        obs.text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        obs.problems.append(f"/metrics is not UTF-8: {exc}")
        obs.text = body.decode("utf-8", errors="replace")
    try:
        for family in text_string_to_metric_families(obs.text):
            for s in family.samples:
                obs.samples.append((s.name, dict(s.labels), s.value))
    except Exception as exc:  # the parser raises ValueError and friends on a broken exposition
        obs.problems.append(f"prometheus_client parser: {type(exc).__name__}: {str(exc)[:200]}")
    rc, messages = promtool_problems(obs.text)
    if baseline_lint is not None and (new := messages - baseline_lint):
        obs.problems.append(f"promtool check metrics (exit {rc}): {sorted(new)[:3]}")
    for where, text, pattern in (("/metrics", obs.text, CONTROL_RE), ("landing page", page, PAGE_CONTROL_RE)):
        if m := pattern.search(text):
            obs.problems.append(f"raw control character {m.group(0)!r} on {where}")
        if found := [kind for s, kind in SECRETS.items() if s in text]:
            obs.problems.append(f"secret on {where}: {sorted(set(found))}")
    return obs


def kick(exporter: ExporterProcess) -> None:
    """SIGHUP: the exporter reloads its (unchanged) config and starts a refresh cycle at once."""
    if exporter.popen is not None and exporter.popen.poll() is None:
        exporter.popen.send_signal(signal.SIGHUP)


def refreshed_at(exporter: ExporterProcess) -> float:
    """``ehpc_refresh_last_success_timestamp_seconds``, or 0 when /metrics does not answer 200."""
    with contextlib.suppress(OSError):
        status, _, body = exporter.get("/metrics", timeout=10)
        if status == 200:
            m = re.search(rb"^ehpc_refresh_last_success_timestamp_seconds(?:\{[^}]*\})? (\S+)$", body, re.M)
            if m:
                return float(m.group(1))
    return 0.0


# -------------------------------------------------------------------------------------- the runs


class Switch:
    """Per image: good or hostile answers; one script in the gateway for each image."""

    def __init__(self, gateway: HostileGateway, cases: Sequence[CaseSpec]) -> None:
        self.hostile = False
        self.gateway = gateway
        self.cases = cases
        for case in cases:
            gateway.get_image[case.image_id] = self._script(case)

    def _script(self, case: CaseSpec) -> Script:
        return lambda r: case.hostile(r) if self.hostile else case.good(r)

    def flip(self, hostile: bool, exporter: ExporterProcess, rounds: int = 1) -> None:
        """Switch every case, then wait until each image had ``rounds`` answers of the new kind and a
        cycle ended after the last of them (or 20 s pass: then the observation says what is wrong)."""
        self.hostile = hostile
        # Read after the switch: every answer counted from here on came from the new script.
        before = {c.image_id: self.gateway.served(c.image_id)[0] for c in self.cases}
        kick(exporter)

        def seen() -> bool:
            return all(self.gateway.served(i)[0] >= n + rounds for i, n in before.items())

        with contextlib.suppress(WaitTimedOut):
            wait_until(seen, 20, "every case image answered", 0.05)
            last = max(self.gateway.served(i)[1] for i in before)
            wait_until(lambda: refreshed_at(exporter) > last, 10, "a cycle ending after the answers", 0.05)


@dataclass
class Verdict:
    """One case's result."""

    case: CaseSpec
    problems: list[str]


def outcome_problem(
    outcome: str, obs: Observation, base: Observation, case: CaseSpec, ignored: float
) -> str | None:
    """Why ``obs`` is not ``outcome`` for the case's image (None when it is)."""
    up = obs.value("ehpc_image_up", case.image_id)
    codes = obs.error_codes(case.image_id)
    kept_same = obs.kept(case.image_id) == base.kept(case.image_id)
    state = f"up {up}, last_error {codes or 'none'}, last good data {'kept' if kept_same else 'CHANGED'}"
    if outcome == UP:
        return None if up == 1 and not codes else state
    if outcome.startswith("ignored:"):
        series = {
            "Image.Size": "ehpc_image_size_bytes",
            "Image.CreateTime": "ehpc_image_created_timestamp_seconds",
        }
        name = series.get(outcome.split(":", 1)[1])
        absent = name is None or obs.value(name, case.image_id) is None
        if up == 1 and not codes and absent and ignored >= 1:
            return None
        return f"{state}; series {'absent' if absent else 'present'}; {IGNORED} +{ignored:g}"
    if outcome.startswith("code:") or outcome in (INV, DOWN):
        want = "InvalidResponse" if outcome == INV else outcome.split(":", 1)[1] if outcome != DOWN else None
        code_ok = (
            codes == [want] if want else len(codes) == 1 and WELL_FORMED_CODE.match(codes[0]) is not None
        )
        return None if up == 0 and code_ok and kept_same else state
    raise AssertionError(f"unknown outcome {outcome}")


def log_problems(log: str) -> list[str]:
    """Secrets and tracebacks in the exporter's log (JSON lines: the event and the exception's last line)."""
    problems = []
    if found := sorted({kind for s, kind in SECRETS.items() if s in log}):
        problems.append(f"secret in the log: {found}")
    events = []
    for line in log.splitlines():
        if "Traceback" not in line:
            continue
        try:
            event = json.loads(line)
            last = str(event.get("exception", "")).strip().splitlines()[-1:]
            events.append(f"{event.get('event')}: {last[0] if last else '?'}"[:160])
        except (ValueError, AttributeError):
            events.append(line[:160])
    if events:
        problems.append(f"traceback in the log ({len(events)}x), e.g. {sorted(set(events))[:2]}")
    return problems


def verdicts(
    cases: Sequence[CaseSpec], base: Observation, hostile: Observation, recovered: Observation, log: str
) -> tuple[list[str], list[Verdict]]:
    """Every case judged against every invariant: (family-wide problems, one verdict per case)."""
    out = []
    global_problems = [f"hostile cycle: {p}" for p in hostile.problems]
    global_problems += [f"recovery: {p}" for p in recovered.problems]
    global_problems += log_problems(log)
    for obs, when in ((hostile, "hostile cycle"), (recovered, "recovery")):
        codes = {lab["code"] for lab, _ in obs.series("ehpc_api_errors_total")}
        if bad := sorted(c for c in codes if not WELL_FORMED_CODE.match(c)):
            global_problems.append(f"{when}: malformed code labels {[c[:40] for c in bad][:3]}")
        for control in (CONTROL_VM, CONTROL_CT):
            if obs.samples and obs.value("ehpc_image_up", control) != 1:
                global_problems.append(f"{when}: control image {control} not up")
        last = obs.value("ehpc_image_last_success_timestamp_seconds", CONTROL_VM) or 0
        before = base.value("ehpc_image_last_success_timestamp_seconds", CONTROL_VM) or 0
        if obs.samples and last <= before:
            global_problems.append(f"{when}: control image did not refresh")
    ignored: dict[str, float] = {}
    for lab, value in hostile.series(IGNORED, action="GetImage"):
        earlier = sum(bv for blab, bv in base.series(IGNORED, action="GetImage") if blab == lab)
        ignored[lab.get("field", "")] = ignored.get(lab.get("field", ""), 0) + value - earlier
    invalid_cases = 0
    for case in cases:
        problems: list[str] = []
        if not hostile.samples:
            problems.append("hostile cycle: no samples")
        else:
            tried = []
            matched = None
            for outcome in sorted(case.variant.outcomes):
                field_name = outcome.split(":", 1)[1] if outcome.startswith("ignored:") else ""
                problem = outcome_problem(outcome, hostile, base, case, ignored.get(field_name, 0))
                if problem is None:
                    matched = outcome
                    break
                tried.append(problem)
            if matched is None:
                problems.append(f"expected {' or '.join(sorted(case.variant.outcomes))}; observed {tried[0]}")
            elif case.variant.check is not None and (extra := case.variant.check(hostile, case)):
                problems.append(extra)
            if matched == INV:
                invalid_cases += 1
        if recovered.samples:
            up = recovered.value("ehpc_image_up", case.image_id)
            if up != 1 or recovered.error_codes(case.image_id):
                problems.append(f"recovery: up {up}, last_error {recovered.error_codes(case.image_id)}")
            elif recovered.kept(case.image_id) != base.kept(case.image_id):
                problems.append("recovery: series differ from before the hostile answer")
        else:
            problems.append("recovery: no samples")
        out.append(Verdict(case, problems))
    counted = hostile.counter(
        "ehpc_api_errors_total", action="GetImage", code="InvalidResponse"
    ) - base.counter("ehpc_api_errors_total", action="GetImage", code="InvalidResponse")
    if hostile.samples and counted < invalid_cases:
        global_problems.append(
            f"InvalidResponse counted {counted:g} times for {invalid_cases} invalid answers"
        )
    return global_problems, out


CONTROL_VM = "m-control000000000vm"
CONTROL_CT = "m-control000000000ct"
CONTROLS = [
    {"id": CONTROL_VM, "additional_regions": list(REGIONS)},
    {"id": CONTROL_CT, "type": "Container", "additional_regions": list(REGIONS)},
]


@dataclass
class Limits:
    """Whether the config accepts the trust-boundary keys (limits.*, discovery.max_pages)."""

    accepted: bool
    detail: str

    def sections(self) -> dict[str, Any]:
        """The config sections to add."""
        if not self.accepted:
            return {}
        return {"limits": {"max_error_codes": MAX_ERROR_CODES, "max_regions_per_image": MAX_REGIONS}}

    @property
    def max_error_codes(self) -> int:
        """The cap the exporter runs with."""
        return MAX_ERROR_CODES if self.accepted else DEFAULT_MAX_ERROR_CODES


def _config(
    gateway: HostileGateway,
    images: list[dict[str, Any]],
    limits: Limits,
    *,
    access_key_id: str = AK_ID,
    discovery: dict[str, Any] | None = None,
    interval: float = INTERVAL,
) -> dict[str, Any]:
    sections: dict[str, Any] = limits.sections()
    if discovery is not None:
        sections["discovery"] = {k: v for k, v in discovery.items() if limits.accepted or k != "max_pages"}
    return exporter_config(
        gateway.url,
        images,
        interval=interval,
        api={"retry": {"max_attempts": 1}, "timeout_seconds": 5},
        refresh={"image_timeout_seconds": 5},
        credentials={
            "type": "sts",
            "access_key_id": access_key_id,
            "access_key_secret": AK_SECRET,
            "security_token": STS_TOKEN,
        },
        **sections,
    )


@pytest.fixture(scope="module")
def gateway() -> Iterator[HostileGateway]:
    """One hostile gateway for the module; controls answer good (the container one with its own
    registry credential, FOREIGN_*)."""
    with HostileGateway() as gw:
        gw.get_image[CONTROL_VM] = _good_script("VM")
        gw.get_image[CONTROL_CT] = _good_script("Container", FOREIGN_USER, FOREIGN_PASSWORD)
        yield gw


@pytest.fixture(scope="module")
def limits(tmp_path_factory: pytest.TempPathFactory) -> Limits:
    """Probe once whether the config accepts limits.* and discovery.max_pages (and record it)."""
    path = tmp_path_factory.mktemp("limits") / "config.yaml"
    doc = exporter_config(
        "http://127.0.0.1:1",
        [{"id": CONTROL_VM}],
        limits={"max_error_codes": MAX_ERROR_CODES, "max_regions_per_image": MAX_REGIONS},
        discovery={"enabled": True, "max_pages": MAX_PAGES},
    )
    path.write_text(yaml.safe_dump(doc))
    result = run_cli(["run", "--config", str(path), "--check-config"])
    line = " ".join((result.stdout + result.stderr).replace(str(path), "<tmp>").split())[:200]
    return Limits(
        result.returncode == 0, f"exit {result.returncode}" + (f": {line}" if result.returncode else "")
    )


def test_trust_boundary_config_keys(limits: Limits, reliability: Reliability) -> None:
    """limits.max_error_codes, limits.max_regions_per_image and discovery.max_pages are config keys."""
    reliability.check(
        "hostile answers",
        "config keys limits.max_error_codes, limits.max_regions_per_image, discovery.max_pages",
        "accepted by --check-config (exit 0)",
        limits.detail,
        limits.accepted,
    )


def run_family(
    gateway: HostileGateway, cases: list[CaseSpec], directory: Path, limits: Limits, rounds: int = 1
) -> tuple[Observation, Observation, Observation, str]:
    """One exporter over the family's cases: good, hostile, good; the three observations and the log."""
    switch = Switch(gateway, cases)
    images = [
        *CONTROLS,
        *({"id": c.image_id, "type": c.image_type, "additional_regions": list(REGIONS)} for c in cases),
    ]
    exporter = start_exporter(directory, _config(gateway, images, limits))
    try:
        base = observe(exporter)
        if base.problems or not base.samples:
            raise HarnessError(f"before any hostile answer: {base.problems}\n{exporter.tail()}")
        # Lint messages of the good exposition are the baseline; hostile data must not add any.
        _, lint = promtool_problems(base.text)
        not_up = [c.id for c in cases if base.value("ehpc_image_up", c.image_id) != 1]
        if not_up:
            raise HarnessError(
                f"good answers not up before the hostile ones: {not_up[:5]}\n{exporter.tail()}"
            )
        switch.flip(True, exporter, rounds)
        hostile = observe(exporter, lint)
        switch.flip(False, exporter)
        recovered = observe(exporter, lint)
        exporter.check_alive()
    finally:
        rc = exporter.stop()
    log = exporter.output()
    if rc != 0:
        recovered.problems.append(f"exit {rc} on SIGTERM")
    return base, hostile, recovered, log


def _family_table(family: str, cases: Sequence[CaseSpec]) -> str:
    fields = sorted({c.field for c in cases})
    return f"{len(cases)} cases over {len(fields)} field(s)"


# What every case of a family asserts (the report's intro spells it out once).
EVERY_CASE = "every invariant for every case, then recovery"


def record_family(reliability: Reliability, family: str, judged: tuple[list[str], Sequence[Verdict]]) -> None:
    """One report row per family; the failure lists every failing case (field x variant: what broke)."""
    shared, results = judged
    failed = [v for v in results if v.problems]
    fields = sorted({v.case.field for v in results})
    case = reliability.case(
        "hostile answers",
        f"{family}: {len(results)} cases over {len(fields)} field(s)",
        EVERY_CASE,
    )
    parts = []
    if shared:
        parts.append(f"family-wide: {shared[0][:160]}")
    if failed:
        parts.append(
            f"{len(failed)} of {len(results)} cases failed, e.g. {failed[0].case.id[:80]!r}:"
            f" {failed[0].problems[0][:160]}"
        )
    if not case.observe("; ".join(parts) or "every case held", not parts, fail=False):
        lines = [f"family-wide: {p[:400]}" for p in shared]
        lines += [f"{v.case.id}: {'; '.join(v.problems)[:400]}" for v in failed]
        pytest.fail(
            f"{family}: {len(shared)} family-wide problem(s), {len(failed)} of {len(results)} cases failed:\n"
            + "\n".join(lines[:80]),
            pytrace=False,
        )


@pytest.mark.parametrize("family", [*FIELD_FAMILIES, *SPECIAL_FAMILIES])
def test_hostile_getimage(
    family: str, gateway: HostileGateway, limits: Limits, tmp_path: Path, reliability: Reliability
) -> None:
    """Every case of one family against a running exporter: all invariants, then recovery."""
    cases = cases_of(family)
    assert cases, family
    base, hostile, recovered, log = run_family(gateway, cases, tmp_path / "exporter", limits)
    record_family(reliability, family, verdicts(cases, base, hostile, recovered, log))


# ---------------------------------------------------------------------------------- rotating codes


def _rotating(k: int) -> Script:
    """A new error code on every answer."""
    return lambda r: error_answer(f"Rotating{k}.Code{r.count}", status=400)


def test_rotating_error_codes(
    gateway: HostileGateway, limits: Limits, tmp_path: Path, reliability: Reliability
) -> None:
    """Ever new error codes: ehpc_api_errors_total stays bounded; catalogue codes keep their own series."""
    n_images = 20
    ids = _Ids("rot")
    cases = [
        CaseSpec(
            "rotating codes",
            "error.Code",
            _v(f"rotating {k}", None),
            ids(),
            "VM",
            _good_script("VM"),
            _rotating(k),
        )
        for k in range(n_images)
    ]
    db_case = CaseSpec(
        "rotating codes",
        "error.Code",
        _v("DbError", None),
        ids(),
        "VM",
        _good_script("VM"),
        _const(error_answer("DbError", status=406)),
    )
    cap = limits.max_error_codes
    # Enough answers for cap + 10 new codes, and at least two rounds: DbError comes after the overflow.
    rounds = max(2, math.ceil((cap + 10) / n_images))
    switch = Switch(gateway, [*cases, db_case])
    images: list[dict[str, Any]] = [*CONTROLS, *({"id": c.image_id} for c in switch.cases)]
    exporter = start_exporter(tmp_path / "exporter", _config(gateway, images, limits))
    try:
        # The codes of a good exposition are the catalogue (pre-registered); every other one is new.
        base = observe(exporter)
        good_answers = sum(gateway.served(c.image_id)[0] for c in cases)
        switch.flip(True, exporter, rounds)
        obs = observe(exporter, set())
        sent = sum(gateway.served(c.image_id)[0] for c in cases) - good_answers
    finally:
        rc = exporter.stop()
    log = exporter.output()
    catalogue = {lab["code"] for lab, _ in base.series("ehpc_api_errors_total")}
    codes = {lab["code"] for lab, _ in obs.series("ehpc_api_errors_total", action="GetImage")}
    new = sorted(codes - catalogue)

    def grew(code_name: str) -> float:
        return obs.counter("ehpc_api_errors_total", action="GetImage", code=code_name) - base.counter(
            "ehpc_api_errors_total", action="GetImage", code=code_name
        )

    overflow, db = grew("OtherError"), grew("DbError")
    ok = (
        obs.status == 200
        and not obs.problems
        and len(new) <= cap
        and overflow >= 1
        and db >= rounds
        and obs.value("ehpc_image_up", CONTROL_VM) == 1
        and not log_problems(log)
        and rc == 0
    )
    # Worded so that a run that holds always reads the same (the counts vary with timing).
    observed = (
        f"/metrics 200; at most {cap} new code labels, the rest counted as OtherError; every DbError"
        " counted as DbError; control up; exit 0"
        if ok
        else f"/metrics {obs.status}; {len(new)} new code labels for {sent} rotating answers;"
        f" OtherError +{overflow:g}; DbError +{db:g} of {rounds}; control up"
        f" {obs.value('ehpc_image_up', CONTROL_VM)}; exit {rc}"
        + "".join(f"; {p[:120]}" for p in [*obs.problems, *log_problems(log)])
    )
    reliability.check(
        "hostile answers",
        f"rotating error codes: {n_images} images, a new code on every answer",
        f"at most limits.max_error_codes ({cap}) new codes as labels, the rest under OtherError; DbError"
        " keeps its own series; controls up",
        observed,
        ok,
    )


# ---------------------------------------------------------------------------------------- ListImages


@dataclass(frozen=True)
class ListCase:
    """A ListImages script and what discovery must do with it."""

    id: str
    script: Callable[[Request, list[str]], Answer]  # (request, the good ids) -> answer
    must_fail: bool  # the discovery must fail (counted under ListImages); else either is fine
    counted_as: str = "InvalidResponse"
    must_pass: bool = False  # the discovery must not fail (a value in a field nothing reads)


LIST_FIELDS = ("ImageId", "ImageType", "Name")  # what discovery reads of an item
# Read by nothing (exporter.models.ImageSummary keeps what discovery reads): whatever they hold, the page
# stands, unless the body as a whole cannot be read.
LIST_UNREAD = ("Version", "Description", "AppId", "OsTag", "CreateTime", "UpdateTime")
BODY_BREAKERS = ("raw 0xff byte", "nesting")
LIST_VALUES: tuple[tuple[str, Any, bool], ...] = (
    # (variant, value, must fail: True for everything that is not decodable, too long, of the wrong type
    #  or a secret; controls may be stripped)
    ("escaped surrogate", Raw(b'"Bad\\udfff"'), True),
    ("raw 0xff byte", Raw(b'"Bad\xff"'), True),
    ("ANSI escape", "\x1b[31mx\x1b[0m", False),
    ("10 kB string", "x" * 10_000, True),
    ("number", 42, True),
    ("nesting", Raw(b"[" * 200_000 + b"]" * 200_000), True),
    ("AccessKey secret", AK_SECRET, True),
    ("STS token", STS_TOKEN, True),
)


def _page(r: Request, good: list[str]) -> dict[str, Any]:
    page = int(r.params.get("PageNumber", "1") or 1)
    size = int(r.params.get("PageSize", "2") or 2)
    return good_list_page(good, page, size)


def _item_poisoned(field_name: str, value: Any) -> Callable[[Request, list[str]], Answer]:
    def script(r: Request, good: list[str]) -> Answer:
        doc = _page(r, good)
        if doc["Images"]:
            doc["Images"][0][field_name] = value
        return json_answer(doc)

    return script


def _paging_poisoned(field_name: str, value: Any) -> Callable[[Request, list[str]], Answer]:
    def script(r: Request, good: list[str]) -> Answer:
        doc = _page(r, good)
        doc[field_name] = value
        return json_answer(doc)

    return script


def _alternating(r: Request, good: list[str]) -> Answer:
    page = int(r.params.get("PageNumber", "1") or 1)
    items = [list_item(good[0])] if page % 2 else [list_item(good[1])]
    return json_answer(
        {
            "RequestId": "R-ALT",
            "Success": True,
            "TotalCount": 10**9,
            "PageNumber": page,
            "PageSize": 1,
            "Images": items,
        }
    )


def _never_ending(r: Request, good: list[str]) -> Answer:
    page = int(r.params.get("PageNumber", "1") or 1)
    items = [list_item(f"m-endless{page:011d}")]
    return json_answer(
        {
            "RequestId": "R-END",
            "Success": True,
            "TotalCount": 10**9,
            "PageNumber": page,
            "PageSize": 1,
            "Images": items,
        }
    )


def _same_page(r: Request, good: list[str]) -> Answer:
    doc = good_list_page(good, 1, 2, total=100)
    return json_answer(doc)


def _aba(r: Request, good: list[str]) -> Answer:
    page = int(r.params.get("PageNumber", "1") or 1)
    ids = {1: good[0], 2: good[1]}.get(page, good[0])  # page 3 repeats page 1
    return json_answer(
        {
            "RequestId": "R-ABA",
            "Success": True,
            "TotalCount": 4,
            "PageNumber": page,
            "PageSize": 1,
            "Images": [list_item(ids)],
        }
    )


def list_cases() -> list[ListCase]:
    """ListImages items x value families, then paging fields and paging behaviours."""
    out = [
        ListCase(f"Images[].{f} x {name}", _item_poisoned(f, value), must_fail)
        for f in LIST_FIELDS
        for name, value, must_fail in LIST_VALUES
    ]
    out += [
        ListCase(
            f"Images[].{f} x {name}",
            _item_poisoned(f, value),
            must_fail=name in BODY_BREAKERS,
            must_pass=name not in BODY_BREAKERS,
        )
        for f in LIST_UNREAD
        for name, value, _ in LIST_VALUES
    ]
    for f, value, name, must_fail in (
        ("TotalCount", Raw(b"9" * 400), "400-digit", True),
        ("TotalCount", -1, "negative", True),
        ("TotalCount", 1.5, "non-integer", True),
        ("TotalCount", "3", "string", True),
        ("PageNumber", "1", "string", True),
        ("PageSize", 0, "zero", False),
        ("PageSize", -1, "negative", False),
        ("PageSize", 10**12, "10^12", False),
        ("Images", {"ImageId": "m-x"}, "an object", True),
        # A request id is never kept: a bad one is dropped and the page stands (no secret shows).
        ("RequestId", AK_SECRET, "the AccessKey secret", False),
        ("RequestId", Raw(b'"Bad\\udfff"'), "an escaped surrogate", False),
    ):
        out.append(ListCase(f"{f} x {name}", _paging_poisoned(f, value), must_fail))
    out += [
        ListCase("paging: pages alternate A,B,A,B, TotalCount 10^9", _alternating, True),
        ListCase("paging: a page repeats one two pages back (A,B,A)", _aba, True),
        ListCase("paging: the same page whatever PageNumber, TotalCount 100", _same_page, True),
        ListCase("paging: never ends (new items every page, TotalCount 10^9)", _never_ending, True),
    ]
    return out


LIST_WORKERS = 4


def _list_worker(
    gateway: HostileGateway, worker: int, cases: Sequence[ListCase], directory: Path, limits: Limits
) -> tuple[list[str], list[tuple[ListCase, list[str]]]]:
    """One discovery exporter running ``cases`` one after the other: (its log's problems, per case)."""
    akid = f"LTAIhostileList{worker:02d}"
    good = [f"m-disc{worker:02d}{k:012d}" for k in range(3)]
    current: list[Callable[[Request, list[str]], Answer] | None] = [None]

    def script(r: Request) -> Answer:
        chosen = current[0]
        return chosen(r, good) if chosen is not None else json_answer(_page(r, good))

    gateway.list_images[akid] = script
    key = f"ListImages:{akid}"
    doc = _config(
        gateway,
        [{"id": CONTROL_VM}],
        limits,
        access_key_id=akid,
        discovery={"enabled": True, "page_size": 2, "max_pages": MAX_PAGES},
    )
    doc["refresh"]["image_timeout_seconds"] = 3
    exporter = start_exporter(directory, doc)
    results: list[tuple[ListCase, list[str]]] = []

    def settle() -> Observation:
        """Two kicked cycles: the one in flight ends, then a whole discovery under the current script."""
        with contextlib.suppress(WaitTimedOut):
            t = time.time()
            kick(exporter)
            wait_until(lambda: refreshed_at(exporter) > t, 15, "the cycle in flight", 0.05)
            t = time.time()
            kick(exporter)
            wait_until(
                lambda: (last := gateway.served(key)[1]) > t and refreshed_at(exporter) > last,
                15,
                "a whole discovery under the current script",
                0.05,
            )
        return observe(exporter)

    try:
        base = settle()
        for case in cases:
            problems: list[str] = []
            before = base
            current[0] = case.script
            hostile = settle()
            current[0] = None
            recovered = settle()
            for obs, when in ((hostile, "hostile"), (recovered, "recovery")):
                problems += [f"{when}: {p}" for p in obs.problems]
                watched = {lab["image_id"] for lab, _ in obs.series("ehpc_image_up")}
                if obs.samples and watched != {CONTROL_VM, *good}:
                    problems.append(
                        f"{when}: watched {sorted(watched)[:5]}, expected the static and discovered images"
                    )
                if obs.samples and obs.value("ehpc_image_up", CONTROL_VM) != 1:
                    problems.append(f"{when}: static image not up")

            def delta(obs: Observation, code_name: str, ref: Observation) -> float:
                return obs.counter(
                    "ehpc_api_errors_total", action="ListImages", code=code_name
                ) - ref.counter("ehpc_api_errors_total", action="ListImages", code=code_name)

            failed = {
                lab["code"]
                for lab, v in hostile.series("ehpc_api_errors_total", action="ListImages")
                if v
                > sum(
                    bv for bl, bv in before.series("ehpc_api_errors_total", action="ListImages") if bl == lab
                )
            }
            if hostile.samples and case.must_fail and failed != {case.counted_as}:
                problems.append(
                    f"hostile: ListImages failures counted as {sorted(failed) or 'nothing'},"
                    f" expected {case.counted_as}"
                )
            if hostile.samples and case.must_pass and failed:
                problems.append(f"hostile: ListImages failed ({sorted(failed)}) over a field nothing reads")
            if hostile.samples and not case.must_fail and failed - {"InvalidResponse"}:
                problems.append(f"hostile: ListImages failures counted as {sorted(failed)}")
            # The cycle in flight when the good answer came back may still count one failure.
            if recovered.samples and delta(recovered, "InvalidResponse", hostile) > 1:
                problems.append("recovery: ListImages still failing")
            results.append((case, problems))
            base = recovered
    finally:
        rc = exporter.stop()
    log = exporter.output()
    shared = [f"worker {worker}: {p}" for p in log_problems(log)]
    if rc != 0:
        shared.append(f"worker {worker}: exit {rc}")
    return shared, results


def test_hostile_list_images(
    gateway: HostileGateway, limits: Limits, tmp_path: Path, reliability: Reliability
) -> None:
    """ListImages items and paging: a failing discovery is counted, keeps what it had, stops the runaway."""
    cases = list_cases()
    shards = [cases[w::LIST_WORKERS] for w in range(LIST_WORKERS)]
    with ThreadPoolExecutor(LIST_WORKERS) as pool:
        futures = [
            pool.submit(_list_worker, gateway, w, shard, tmp_path / f"worker{w}", limits)
            for w, shard in enumerate(shards)
        ]
        done = [f.result() for f in futures]
    shared = [p for worker_shared, _ in done for p in worker_shared]
    results = [r for _, worker_results in done for r in worker_results]
    failed = [(c, p) for c, p in results if p]
    case = reliability.case(
        "hostile answers",
        f"ListImages: {len(results)} cases (items x {len(LIST_VALUES)} values, paging fields,"
        " runaway paging)",
        "a failing page fails discovery, counted InvalidResponse under ListImages (never Timeout); the images"
        " discovered before stay watched; the static image keeps refreshing; no secret, control character"
        " or traceback; recovery",
    )
    parts = [f"family-wide: {shared[0][:160]}"] if shared else []
    if failed:
        parts.append(
            f"{len(failed)} of {len(results)} cases failed, e.g. {failed[0][0].id!r}: {failed[0][1][0][:160]}"
        )
    if not case.observe("; ".join(parts) or "every case held", not parts, fail=False):
        lines = [f"family-wide: {p[:300]}" for p in shared]
        lines += [f"{c.id}: {'; '.join(p)[:300]}" for c, p in failed]
        pytest.fail(
            f"ListImages: {len(shared)} family-wide problem(s), {len(failed)} of {len(results)} cases"
            " failed:\n" + "\n".join(lines[:80]),
            pytrace=False,
        )


# ------------------------------------------------------------------------------------------- check


def test_check_over_hostile_gateway(
    gateway: HostileGateway, limits: Limits, tmp_path: Path, reliability: Reliability
) -> None:
    """``check`` (table and JSON) over a sample of every family: exit 0/1, no traceback, secret or control."""
    sample: list[CaseSpec] = []
    for family in [*FIELD_FAMILIES, *SPECIAL_FAMILIES]:
        by_field: dict[str, CaseSpec] = {}
        for c in cases_of(family):
            by_field.setdefault(c.field, c)
        picked = [
            by_field[f]
            for f in ("Image.Name", "Image.Status", "RequestId", "error.Code", "error.RequestId")
            if f in by_field
        ]
        sample += picked or list(by_field.values())[:3]
    ids = _Ids("chk")
    images: list[dict[str, Any]] = [
        {"id": CONTROL_CT, "type": "Container", "additional_regions": list(REGIONS)}
    ]
    for c in sample:
        image_id = ids()
        gateway.get_image[image_id] = c.hostile
        images.append({"id": image_id, "type": c.image_type, "additional_regions": list(REGIONS)})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_config(gateway, images, limits)))
    problems = []
    for output in ("table", "json"):
        result = run_cli(
            ["check", "--config", str(path), "--output", output, "--log-format", "json"], timeout=60
        )
        where = f"check --output {output}"
        if result.returncode not in (0, 1):
            problems.append(f"{where}: exit {result.returncode}")
        if "Traceback" in result.stdout + result.stderr:
            problems.append(f"{where}: traceback")
        if found := sorted({kind for s, kind in SECRETS.items() if s in result.stdout + result.stderr}):
            problems.append(f"{where}: secret {found}")
        if m := CONTROL_RE.search(result.stdout):
            problems.append(f"{where}: raw control character {m.group(0)!r} in stdout")
        if output == "json":
            try:
                json.loads(result.stdout)
            except ValueError as exc:
                problems.append(f"{where}: stdout is not JSON ({exc})")
    reliability.check(
        "hostile answers",
        f"check over {len(sample)} hostile answers (one per family and field sampled), table and JSON",
        "exit 0 or 1; no traceback; no secret and no raw control character in its output; JSON parses",
        "held" if not problems else "; ".join(problems)[:300],
        not problems,
    )


# ------------------------------------------------------------------------------------ the gateway


def test_gateway_answers_raw_bytes() -> None:
    """The harness itself: a poisoned field reaches the wire byte for byte, the rest stays valid JSON."""
    gw = HostileGateway()
    gw.get_image["m-1"] = _poisoned("VM", ("Image", "Name"), Raw(b'"Bad\xff"'))
    answer = gw.answer("/?ImageId=m-1", "GetImage", {})
    assert b'"Name":"Bad\xff"' in answer.body
    good = gw.answer("/?ImageId=m-2", "GetImage", {})
    assert json.loads(good.body)["Image"]["VMImageSpec"]["ImageId"] == "m-2"
    assert gw.served("m-1")[0] == 1
    gw.server.server_close()


def test_families_cover_every_field() -> None:
    """Each string field has at least the surrogate, UTF-8, control, length, type and secret families."""
    for f in FIELDS:
        if f.kind in ("bool", "number"):
            continue
        for family in ("surrogates", "invalid utf-8", "controls", "lengths", "types", "nesting", "secrets"):
            assert FAMILIES[family](f), (f.name, family)
