"""Typed models of the E-HPC Instant API responses, and the ingestion gate every answer passes.

The gate is :class:`_Reader`: every value the exporter keeps from an answer is read through it, as a
*kind* (:class:`Kind`: an id, a region, a status, a label, ...) that bounds its length and, where the API
has a shape, its characters. A string must be valid Unicode (no lone surrogates); control and bidi
characters are dropped before the shape is checked (the API's own example ends a RequestId with
``\n``); a value that carries one of the exporter's own secrets (``exporter.redaction``) is refused. Any
refusal makes the whole answer an ``InvalidResponse`` naming the field, never quoting the value: the
image keeps its last good data. Numbers are range-checked. Values the exporter merely cannot *use* (an
unparseable size or time, a region nobody asked for, an empty or repeated region entry) do not fail the
answer: they are listed in ``Image.ignored`` so the refresher counts and logs them. Fields nothing reads
are not read at all (:class:`Image`).

Registry credentials (``ContainerImageSpec.RegistryCredential`` and a registry URL's userinfo) are never
kept in a model, so what is not held cannot leak into a label, a log line or a page. What an answer
carries there is learned for that answer only (:func:`learned_secrets`): masked in its free text,
refused in its shaped values, and forgotten with it. Nothing an answer says changes how another
answer is read, or what any other output shows.

Why one module of over 400 lines: the models and the gate they are read through belong together; every
field's kind is declared next to the model field it fills.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, NamedTuple

from pydantic import AfterValidator

from exporter.errors import INVALID_RESPONSE, ApiError
from exporter.redaction import (
    CONTROL_RE,
    REDACTED,
    SURROGATE_RE,
    canonical,
    contains_secret,
    generation,
    mask_secrets,
    split_userinfo,
)

# Sizes as the API writes them ("40 GiB"); any case, decimals, B to PiB, the SI spellings taken as the
# same binary units (the console and API use "GB" and "GiB" interchangeably for 1024^3).
_SIZE_RE = re.compile(r"^\s*(\d{1,18}(?:\.\d{1,9})?)\s*([KMGTP]?)(I?)B\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}
GIB = 1024**3
MAX_SIZE_BYTES = 2**63 - 1  # beyond any image; also the largest value a gauge keeps exactly as int64
# Creation times outside this range are not plausible for an image and are ignored.
_MIN_TIME = datetime(2000, 1, 1, tzinfo=UTC)
_MAX_TIME = datetime(2200, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Kind:
    """What a value of one field may look like: a length bound and, where the API has one, a shape."""

    name: str
    max_length: int
    pattern: re.Pattern[str] | None = None
    # Free text loses its control characters; a shaped value (an id, a code) with one is refused, since
    # "Foo\x1bBar" is no code the API sends and must not be counted as "FooBar".
    strip_controls: bool = True


def _kind(name: str, max_length: int, pattern: str | None = None, *, strip: bool | None = None) -> Kind:
    return Kind(
        name,
        max_length,
        re.compile(pattern) if pattern is not None else None,
        pattern is None if strip is None else strip,
    )


# The shapes are what the API sends (ids like m-uf60twafjtaart1234, codes like Throttling.User, statuses
# like UnAvailable, request ids like 04F0F334-1335-436C-A1D7-6C044FE73368), with room to spare.
ID = _kind("id", 128, r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")
REGION = _kind("region id", 64, r"[a-z]{2,}(?:-[a-z0-9]+)+")
STATUS = _kind("status", 64, r"[A-Za-z][A-Za-z0-9_.-]*")
CODE = _kind("error code", 128, r"[A-Za-z][A-Za-z0-9_.-]*")
# The API reference's own example ends a RequestId with "\n": request ids are cleaned, then shaped.
REQUEST_ID = _kind("request id", 128, r"[A-Za-z0-9][A-Za-z0-9_-]*", strip=True)
LABEL = _kind("label", 256)  # free text published as a label value (name, version, OS tag, ...)
URL = _kind("url", 2048)
TEXT = _kind("text", 8192)  # free text kept but not published (error messages)
SHORT = _kind("value", 64)  # sizes and times, parsed further

# A registry credential is learned (masked in its answer's free text) only from this many characters, as
# outputs show it (controls dropped). Shorter values are words and names more than credentials ("admin",
# "puller"), and masking them would shred the answer's own labels; a mask is then never longer than what
# it hides. Learning reaches no further than the answer: the credential is never exported, so the only
# place the exporter could show it is a field of the same answer echoing it. Were it masked elsewhere,
# any answer could choose words ("Available", "cn-hangzhou") that every other image's answers then lose.
MIN_LEARNED_LENGTH = len(REDACTED)

# Bounds of the numbers ListImages sends (pages of at most a few hundred items).
MAX_COUNT = 10**9
MAX_PAGE_SIZE = 10_000


def parse_size(value: str) -> int | None:
    """``"40 GiB"`` (any unit B..PiB, any case, decimals) to bytes; ``None`` when it is not a size."""
    m = _SIZE_RE.match(value)
    if m is None:
        return None
    size = round(float(m.group(1)) * _UNITS[m.group(2).upper()])
    return size if size <= MAX_SIZE_BYTES else None


def parse_time(value: str) -> datetime | None:
    """ISO 8601 (``2022-12-23T09:51:39Z``) to an aware datetime; ``None`` when empty, malformed or absurd."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return parsed if _MIN_TIME <= parsed <= _MAX_TIME else None


def registry_url(url: str) -> str:
    """``url`` without userinfo (learned by :func:`learned_secrets`), query or fragment: what a label
    may show.

    Registry URLs are usually ``host/ns/repo:tag`` without a scheme; a trailing digest is kept (see
    :func:`exporter.redaction.split_userinfo`, which the output gate uses the same way).
    """
    scheme, _userinfo, rest = split_userinfo(url)
    for sep in ("#", "?"):
        rest = rest.split(sep, 1)[0]
    return f"{scheme}{rest}"


class Replica(NamedTuple):
    """One ``AdditionalRegionsInfo`` entry: the image's copy in another region, as the snapshot keeps it
    (the copy's own ``ImageId`` is read by nothing, so it is not read: no value there refuses an answer)."""

    region_id: str
    status: str


@dataclass(frozen=True, slots=True)
class Image:
    """The fields of a GetImage answer the exporter uses (never the registry credential).

    Only what something reads is kept, and only what is kept passes the gate: a value the exporter never
    uses (Description, IsACRRegistry, IsACREnterprise, RegistryCriId, DocumentInfo) cannot harm it, and
    refusing an answer over one would lose good data.
    """

    image_id: str
    image_type: str
    name: str
    version: str
    app_id: str
    status: str
    size_bytes: int | None
    create_time: datetime | None
    os_tag: str
    platform: str
    architecture: str
    registry_url: str
    additional_regions: tuple[Replica, ...]
    request_id: str
    # Fields whose values the exporter could not use and left out (counted and logged by the refresher).
    ignored: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ImageSummary:
    """One item of a ListImages page: what discovery reads (the id, the type, the name to match)."""

    image_id: str
    image_type: str
    name: str


@dataclass(frozen=True, slots=True)
class ImagePage:
    """One page of ListImages."""

    images: tuple[ImageSummary, ...]
    total_count: int
    page_number: int
    page_size: int
    request_id: str


def _invalid(action: str, what: str, request_id: str | None) -> ApiError:
    return ApiError(
        code=INVALID_RESPONSE,
        message=f"{action}: {what}",
        http_status=200,
        request_id=request_id,
        action=action,
    )


def learned_secrets(body: Any) -> tuple[str, ...]:
    """What a GetImage body carries as registry credentials (user name, password, the registry URL's
    userinfo), as free text shows them, at least ``MIN_LEARNED_LENGTH`` long, longest first."""
    image = body.get("Image") if isinstance(body, Mapping) else None
    spec = image.get("ContainerImageSpec") if isinstance(image, Mapping) else None
    if not isinstance(spec, Mapping):
        return ()
    values: list[object] = []
    cred = spec.get("RegistryCredential")
    if isinstance(cred, Mapping):
        values += (cred.get("UserName"), cred.get("Password"))
    url = spec.get("RegistryUrl")
    if isinstance(url, str) and len(url) <= URL.max_length:
        _, userinfo, _ = split_userinfo(canonical(url))
        user, _, password = userinfo.partition(":")
        values += (userinfo, user, password)
    # A value longer than the longest field an answer keeps cannot stand in one.
    found = {canonical(v) for v in values if isinstance(v, str) and len(v) <= TEXT.max_length}
    return tuple(sorted((v for v in found if len(v) >= MIN_LEARNED_LENGTH), key=len, reverse=True))


def check_text(
    value: str,
    kind: Kind,
    prepare: Callable[[str], str] | None = None,
    learned: Sequence[str] = (),
) -> str:
    """``value`` with controls dropped if it is a valid ``kind``; else :class:`_Refused` says why not.

    ``prepare`` runs once the value is known to be bounded valid Unicode, before its shape and its
    secrets are checked (a registry URL loses its userinfo there). ``learned``: the answer's own
    registry credentials (:func:`learned_secrets`), masked in free text and refused in a shaped value,
    which a mask would break.
    """
    if len(value) > kind.max_length:
        raise _Refused(f"is longer than {kind.max_length} characters")
    if not value.isascii() and SURROGATE_RE.search(value) is not None:
        raise _Refused("is not valid Unicode (lone surrogate)")
    if CONTROL_RE.search(value) is not None:
        if not kind.strip_controls:
            raise _Refused(f"is not a valid {kind.name} (control characters)")
        value = CONTROL_RE.sub("", value)
    if value and kind.pattern is not None and kind.pattern.fullmatch(value) is None:
        raise _Refused(f"is not a valid {kind.name}")
    if prepare is not None:
        value = prepare(value)
    if contains_secret(value):
        raise _Refused("carries a credential")
    if learned and value:
        if kind.pattern is None:
            for secret in learned:  # at most five, longest first
                if secret in value:
                    value = value.replace(secret, REDACTED)
        elif any(secret in value for secret in learned):
            raise _Refused("carries the answer's registry credential")
    return value


class _Refused(ValueError):
    """A value the ingestion gate does not let in; the message says why, never what it was."""


def unchanged(kind: Kind) -> Callable[[str], str]:
    """A validator for a value this gate let in before (read back from a file): ``value`` if the gate,
    reading it as ``kind``, leaves it exactly as it is; a ValueError saying why not (never quoting it)."""

    # A file repeats the same statuses, regions and labels for every image: each distinct value is
    # checked once while the set of known secrets stays the same (bounded; a new secret re-checks all).
    passed: dict[str, int] = {}

    def check(value: str) -> str:
        known = generation()
        if passed.get(value) == known:
            return value
        if check_text(value, kind) != value:
            raise _Refused(f"is not a valid {kind.name} (control characters)")
        if len(passed) >= _PASSED_MAX:
            passed.clear()
        passed[value] = known
        return value

    return check


_PASSED_MAX = 4096


# The kinds as pydantic types, for files that hold what the gate let in (the state file's rows): one
# definition of each kind's bounds, whichever way a value comes in.
GatedId = Annotated[str, AfterValidator(unchanged(ID))]
GatedRegion = Annotated[str, AfterValidator(unchanged(REGION))]
GatedStatus = Annotated[str, AfterValidator(unchanged(STATUS))]
GatedCode = Annotated[str, AfterValidator(unchanged(CODE))]
GatedRequestId = Annotated[str, AfterValidator(unchanged(REQUEST_ID))]
GatedLabel = Annotated[str, AfterValidator(unchanged(LABEL))]
GatedUrl = Annotated[str, AfterValidator(unchanged(URL))]
GatedText = Annotated[str, AfterValidator(unchanged(TEXT))]


class _Reader:
    """Typed, gated access to a JSON object: every mismatch or refusal becomes ``InvalidResponse``."""

    def __init__(
        self, action: str, obj: Any, where: str, request_id: str | None, learned: Sequence[str] = ()
    ) -> None:
        if not isinstance(obj, Mapping):
            raise _invalid(action, f"{where or 'body'} is not an object", request_id)
        self.action, self.obj, self.where, self.request_id = action, obj, where, request_id
        self.learned = learned  # the answer's own registry credentials (see check_text)

    def path(self, key: str) -> str:
        """The dotted location of ``key`` in the body (what error messages name)."""
        return f"{self.where}.{key}" if self.where else key

    def text(self, key: str, kind: Kind, prepare: Callable[[str], str] | None = None) -> str:
        """A string field through the gate ("" when absent); see :func:`check_text` for ``prepare``."""
        value = self.obj.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise _invalid(self.action, f"{self.path(key)} is not a string", self.request_id)
        try:
            return check_text(value, kind, prepare, self.learned)
        except _Refused as exc:
            raise _invalid(self.action, f"{self.path(key)} {exc}", self.request_id) from None

    def flag(self, key: str) -> bool | None:
        """A boolean field (``None`` when absent)."""
        value = self.obj.get(key)
        if value is None or isinstance(value, bool):
            return value
        raise _invalid(self.action, f"{self.path(key)} is not a boolean", self.request_id)

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        """An integer field within ``[low, high]`` (``default`` when absent)."""
        value = self.obj.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise _invalid(self.action, f"{self.path(key)} is not an integer", self.request_id)
        if not low <= value <= high:
            raise _invalid(self.action, f"{self.path(key)} is out of range [{low}, {high}]", self.request_id)
        return value

    def child(self, key: str, *, required: bool = False) -> _Reader | None:
        """A nested object (``None`` when absent unless ``required``)."""
        value = self.obj.get(key)
        if value is None:
            if required:
                raise _invalid(self.action, f"{self.path(key)} is missing", self.request_id)
            return None
        return _Reader(self.action, value, self.path(key), self.request_id, self.learned)

    def children(self, key: str, limit: int) -> list[_Reader]:
        """A nested array of objects, of at most ``limit`` entries."""
        value = self.obj.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise _invalid(self.action, f"{self.path(key)} is not an array", self.request_id)
        if len(value) > limit:
            raise _invalid(self.action, f"{self.path(key)} has more than {limit} entries", self.request_id)
        return [
            _Reader(self.action, v, f"{self.path(key)}[{i}]", self.request_id, self.learned)
            for i, v in enumerate(value)
        ]


def gated_request_id(value: object, learned: Sequence[str] = ()) -> str | None:
    """A request id that passes the gate, or ``None`` (a bad one is dropped: it only labels a log line)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return check_text(value, REQUEST_ID, learned=learned) or None
    except _Refused:
        return None


def _regions(img: _Reader, requested: Sequence[str], limit: int, ignored: list[str]) -> tuple[Replica, ...]:
    """The requested regions' copies: unrequested, empty and identical repeated entries are ignored."""
    field = img.path("AdditionalRegionsInfo")
    wanted = set(requested)
    out: dict[str, Replica] = {}
    for r in img.children("AdditionalRegionsInfo", limit):
        replica = Replica(r.text("RegionId", REGION), r.text("Status", STATUS))
        seen = out.get(replica.region_id)
        if not replica.region_id or replica.region_id not in wanted or seen == replica:
            ignored.append(field)
        elif seen is not None:
            raise _invalid(img.action, f"{field} lists region {replica.region_id} twice", img.request_id)
        else:
            out[replica.region_id] = replica
    return tuple(out[k] for k in sorted(out))


def parse_get_image(
    body: Any, requested_id: str, requested_regions: Sequence[str] = (), *, max_regions: int = 50
) -> Image:
    """Parse a GetImage 200 body through the gate; any value it refuses raises ``InvalidResponse``.

    Only ``requested_regions`` are kept of ``AdditionalRegionsInfo``; an answer with more than
    ``max_regions`` entries is refused.
    """
    learned = learned_secrets(body)
    rid = gated_request_id(body.get("RequestId") if isinstance(body, Mapping) else None, learned)
    root = _Reader("GetImage", body, "", rid, learned)
    if root.flag("Success") is False:
        raise _invalid("GetImage", "Success is false", rid)
    img = root.child("Image", required=True)
    assert img is not None  # required=True raised otherwise
    vm = img.child("VMImageSpec")
    ct = img.child("ContainerImageSpec")
    registry = ct.text("RegistryUrl", URL, registry_url) if ct is not None else ""
    spec = vm if vm is not None else ct
    ignored: list[str] = []
    regions = _regions(img, requested_regions, max_regions, ignored)
    image_type = img.text("ImageType", STATUS)
    if not image_type:
        raise _invalid("GetImage", "Image.ImageType is missing", rid)
    # An empty Size or CreateTime (as in the API reference's example) is absent, not a mis-read: only
    # a value that is there and cannot be read is counted.
    size_text = img.text("Size", SHORT)
    size = parse_size(size_text)
    if size is None and size_text:
        ignored.append("Image.Size")
    time_text = img.text("CreateTime", SHORT)
    created = parse_time(time_text)
    if created is None and time_text:
        ignored.append("Image.CreateTime")
    return Image(
        # The watched id is the identity of the series; the VM spec repeats it for VM images.
        image_id=requested_id or (vm.text("ImageId", ID) if vm is not None else ""),
        image_type=image_type,
        name=img.text("Name", LABEL),
        version=img.text("Version", LABEL),
        app_id=img.text("AppId", LABEL),
        status=img.text("Status", STATUS),
        size_bytes=size,
        create_time=created,
        os_tag=spec.text("OsTag", LABEL) if spec is not None else "",
        platform=spec.text("Platform", LABEL) if spec is not None else "",
        architecture=spec.text("Architecture", LABEL) if spec is not None else "",
        registry_url=registry,
        additional_regions=regions,
        request_id=rid or "",
        ignored=tuple(dict.fromkeys(ignored)),
    )


def parse_list_images(body: Any, *, max_items: int = MAX_PAGE_SIZE) -> ImagePage:
    """Parse one ListImages 200 body through the gate."""
    rid = gated_request_id(body.get("RequestId") if isinstance(body, Mapping) else None)
    root = _Reader("ListImages", body, "", rid)
    if root.flag("Success") is False:
        raise _invalid("ListImages", "Success is false", rid)
    items = tuple(
        ImageSummary(
            image_id=i.text("ImageId", ID),
            image_type=i.text("ImageType", STATUS),
            name=i.text("Name", LABEL),
        )
        for i in root.children("Images", max_items)
    )
    return ImagePage(
        images=items,
        total_count=root.integer("TotalCount", len(items), 0, MAX_COUNT),
        page_number=root.integer("PageNumber", 1, 0, MAX_COUNT),
        page_size=root.integer("PageSize", 20, 0, MAX_PAGE_SIZE),
        request_id=rid or "",
    )


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """The gated fields of a non-2xx answer's JSON error body."""

    code: str | None  # None: no usable code (absent, or refused by the gate)
    message: str
    request_id: str | None
    refused: str | None = None  # why the code was refused, naming the field


_BREAKS_RE = re.compile(r"\s+")


def parse_error_body(body: Any) -> ErrorBody:
    """The error body's code (gated: a bad code means no code), message (cleaned) and request id."""
    if not isinstance(body, Mapping):
        return ErrorBody(None, "", None)
    raw_message = body.get("Message")
    message = ""
    if isinstance(raw_message, str):
        # The message reaches logs, the page and check (an error's reason); cleaned and cut rather than
        # refused, so a real error with an odd message keeps its code. The exporter's own secrets are
        # masked before the cut (a secret cut in two would leave its start for no gate to know), looked
        # for through every break: whitespace runs become newlines, which masking looks through, and
        # spaces again below.
        masked = mask_secrets(_BREAKS_RE.sub("\n", raw_message))[: TEXT.max_length]
        message = SURROGATE_RE.sub("\ufffd", CONTROL_RE.sub(" ", masked))
    request_id = gated_request_id(body.get("RequestId"))
    code = body.get("Code")
    if not isinstance(code, str) or not code:
        return ErrorBody(None, message, request_id)
    try:
        return ErrorBody(check_text(code, CODE) or None, message, request_id)
    except _Refused as exc:
        return ErrorBody(None, message, request_id, refused=f"Code {exc}")
