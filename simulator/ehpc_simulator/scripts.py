"""Timed scripts: status changes the simulator makes by itself at known times, the truth tests compare with.

A script is a list of :class:`ScriptStep`, each due ``after_seconds`` after the script's start (the
simulator's clock when it is scheduled, or an explicit ``start``). A step sets one thing of one image:

- ``{"after_seconds": 60, "image_id": "m-1", "status": "Available"}``: the image's status;
- ``{"after_seconds": 60, "image_id": "m-1", "region": "cn-beijing", "status": "Available"}``: the status
  of its copy in an additional region (the copy is created if absent); ``"status": null`` removes the copy;
- ``{"after_seconds": 60, "image_id": "m-1", "error": "ImageNotFound"}``: the error code GetImage answers
  for the image from then on (``null`` clears it), as ``SimImage.error``.

**Steps are applied lazily**: before the simulator handles any request (an API action or an admin route),
every step whose due time is at or before its clock is applied, in due order (ties in the order they were
scheduled). Nothing runs in the background, so on a fake clock the change is exact: it is visible to a
request made at or after its due time and to none before, and it counts as having happened at its due
time. Python code reading ``Simulator.images`` directly calls :meth:`Scheduler.run_due` first.

Every applied step is recorded (:class:`AppliedStep`: due time, the clock when applied, the value it
replaced); a step whose image was deleted before it came due is recorded with ``result`` ``"no such
image"`` and changes nothing. Limits, so a runaway script is refused rather than grown without end:
:data:`MAX_STEPS_PER_SCRIPT` steps per script, :data:`MAX_PENDING_STEPS` pending in all, and the last
:data:`MAX_APPLIED_RECORDS` applied steps are kept.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from ehpc_simulator.catalogue import is_known
from ehpc_simulator.model import SimImage

__all__ = [
    "KEEP",
    "MAX_APPLIED_RECORDS",
    "MAX_PENDING_STEPS",
    "MAX_STEPS_PER_SCRIPT",
    "AppliedStep",
    "DueStep",
    "Scheduler",
    "ScriptStep",
    "UnknownImageError",
    "field_names",
    "load_steps",
    "steps_from_data",
]

MAX_STEPS_PER_SCRIPT = 1000
MAX_PENDING_STEPS = 10_000
MAX_APPLIED_RECORDS = 10_000
# A day of seconds x 365 x 100: far beyond any test, and small enough that due times stay exact floats.
MAX_AFTER_SECONDS = 100 * 365 * 86400.0
MAX_START = 1e12  # epoch seconds (year 33658): refuses a millisecond timestamp (1.7e12) sent for seconds
_MAX_TEXT = 256  # ids, region ids, statuses and codes are short; a longer one is a mistake
_STEP_FIELDS = frozenset({"after_seconds", "image_id", "region", "status", "error"})


class _Keep(enum.Enum):
    KEEP = "keep"


KEEP: Final = _Keep.KEEP
"""The default of :class:`ScriptStep`'s ``status`` and ``error``: the step leaves that field alone."""


class UnknownImageError(LookupError):
    """A step names an image the simulator does not have (the admin API answers 404)."""


@dataclass(frozen=True, slots=True)
class ScriptStep:
    """One change, ``after_seconds`` after the script's start: exactly one of ``status`` or ``error`` set."""

    after_seconds: float
    image_id: str
    status: str | _Keep | None = KEEP  # None (with ``region``): remove the copy
    region: str | None = None
    error: str | _Keep | None = KEEP  # None: clear the image's error

    def __post_init__(self) -> None:
        problem = _step_problem(self)
        if problem is not None:
            raise ValueError(problem)

    @property
    def field(self) -> str:
        """What the step sets: ``"status"``, ``"region"`` (a copy's status) or ``"error"``."""
        if self.error is not KEEP:
            return "error"
        return "status" if self.region is None else "region"

    @property
    def value(self) -> str | None:
        """The value the step sets (None: remove the copy, or clear the error)."""
        value = self.error if self.error is not KEEP else self.status
        return None if isinstance(value, _Keep) else value

    def to_dict(self) -> dict[str, Any]:
        """The step as the admin API and script files write it."""
        out: dict[str, Any] = {"after_seconds": self.after_seconds, "image_id": self.image_id}
        if self.region is not None:
            out["region"] = self.region
        out["error" if self.field == "error" else "status"] = self.value
        return out


def _text(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_TEXT


def _step_problem(step: ScriptStep) -> str | None:
    """The first thing wrong with a step, as ``field: problem``; None when it is sound."""
    after = step.after_seconds
    # Compared, not converted: math.isfinite overflows on a huge int; NaN and infinities fail the range.
    if isinstance(after, bool) or not isinstance(after, int | float) or not 0 <= after <= MAX_AFTER_SECONDS:
        return f"after_seconds: expected a number of seconds from 0 to {MAX_AFTER_SECONDS:.0f}"
    if not _text(step.image_id):
        return f"image_id: expected a non-empty string of at most {_MAX_TEXT} characters"
    if step.region is not None and not _text(step.region):
        return f"region: expected a region id (a non-empty string of at most {_MAX_TEXT} characters)"
    has_status, has_error = step.status is not KEEP, step.error is not KEEP
    if has_status == has_error:
        return "a step sets exactly one of status or error"
    if has_error:
        if step.region is not None:
            return "error: applies to the image, not to a region's copy (drop region)"
        code = step.error
        if code is not None and not (isinstance(code, str) and _text(code)):
            return "error: expected an error code (a string) or null"
        if isinstance(code, str) and not is_known(code):
            return f"error: unknown error code {code!r}"
        return None
    if step.status is None:
        return None if step.region is not None else "status: null removes a region's copy; give region"
    if not _text(step.status):
        return f"status: expected a non-empty string of at most {_MAX_TEXT} characters"
    return None


def steps_from_data(data: Any, where: str = "steps") -> list[ScriptStep]:
    """Validate a JSON/YAML list of step objects; ValueError names the step index and field."""
    if not isinstance(data, list):
        raise ValueError(f"{where}: expected a list of steps")
    if len(data) > MAX_STEPS_PER_SCRIPT:
        raise ValueError(f"{where}: {len(data)} steps, at most {MAX_STEPS_PER_SCRIPT} per script")
    return [_step_from_dict(item, f"{where}[{n}]") for n, item in enumerate(data)]


def load_steps(path: str | Path) -> list[ScriptStep]:
    """Read a script file (YAML, or JSON for ``.json``): a list of steps, or ``{"steps": [...]}``.

    ValueError names the file, the step index and the field.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{p}: {exc}") from None
    if isinstance(data, dict) and set(data) == {"steps"}:
        data = data["steps"]
    try:
        return steps_from_data(data)
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from None


def field_names(names: Iterable[object]) -> str:
    """Field names for a one-line message: quoted (a newline in a key stays escaped), a few, each short."""
    shown = sorted(repr(str(n))[:40] for n in names)
    return ", ".join(shown[:5]) + (f" and {len(shown) - 5} more" if len(shown) > 5 else "")


def _step_from_dict(data: Any, where: str) -> ScriptStep:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected an object")
    unknown = set(data) - _STEP_FIELDS
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {field_names(unknown)}")
    for required in ("after_seconds", "image_id"):
        if required not in data:
            raise ValueError(f"{where}.{required}: required")
    try:
        return ScriptStep(
            after_seconds=data["after_seconds"],
            image_id=data["image_id"],
            status=data.get("status", KEEP),
            region=data.get("region"),
            error=data.get("error", KEEP),
        )
    except ValueError as exc:
        message = str(exc)
        # Field problems read "field: ..."; the others concern the step as a whole.
        joiner = "." if message.split(":", 1)[0] in _STEP_FIELDS else ": "
        raise ValueError(f"{where}{joiner}{message}") from None


@dataclass(frozen=True, slots=True)
class DueStep:
    """A scheduled step and when it is due (epoch seconds on the simulator's clock)."""

    seq: int  # the simulator-wide scheduling order: breaks ties between steps due at the same time
    due_at: float
    step: ScriptStep

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``id``, ``due_at`` and the step's fields."""
        return {"id": self.seq, "due_at": self.due_at, **self.step.to_dict()}


@dataclass(frozen=True, slots=True)
class AppliedStep:
    """A step that came due: when it was due, when the clock first passed it, and what it replaced."""

    due: DueStep
    applied_at: float  # the clock when it was applied (>= due.due_at; the change counts from due_at)
    previous: str | None  # the value before (None: there was no copy, or no error)
    result: str  # "applied", or "no such image" when the image was deleted before the step came due

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the due step's fields plus ``applied_at``, ``previous`` and ``result``."""
        return {
            **self.due.to_dict(),
            "applied_at": self.applied_at,
            "previous": self.previous,
            "result": self.result,
        }


class Scheduler:
    """The pending and applied steps of one simulator, on its clock; see the module docstring."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, DueStep]] = []
        self._seq = itertools.count()
        self._applied: deque[AppliedStep] = deque(maxlen=MAX_APPLIED_RECORDS)

    @property
    def pending(self) -> list[DueStep]:
        """Steps not yet applied, in due order."""
        return [entry[2] for entry in sorted(self._heap)]

    @property
    def applied(self) -> list[AppliedStep]:
        """Applied steps, in the order applied (the last :data:`MAX_APPLIED_RECORDS`)."""
        return list(self._applied)

    def schedule(
        self,
        steps: Iterable[ScriptStep],
        images: Mapping[str, SimImage],
        start: float | None = None,
    ) -> list[DueStep]:
        """Schedule ``steps`` from ``start`` (default: the clock now); all or nothing.

        Raises ValueError for a bad ``start`` or too many steps, and :class:`UnknownImageError` when
        a step names an image not in ``images``; messages name the step (``steps[2].image_id: ...``).
        """
        steps = list(steps)
        if len(steps) > MAX_STEPS_PER_SCRIPT:
            raise ValueError(f"steps: {len(steps)} steps, at most {MAX_STEPS_PER_SCRIPT} per script")
        if len(self._heap) + len(steps) > MAX_PENDING_STEPS:
            raise ValueError(
                f"steps: {len(self._heap)} pending + {len(steps)} new exceeds {MAX_PENDING_STEPS}; "
                "cancel pending steps first"
            )
        if start is None:
            start = self.clock()
        elif isinstance(start, bool) or not isinstance(start, int | float) or not abs(start) <= MAX_START:
            raise ValueError(f"start: expected epoch seconds (a number within +-{MAX_START:.0e})")
        for n, step in enumerate(steps):
            if step.image_id not in images:
                raise UnknownImageError(f"steps[{n}].image_id: no such image {step.image_id!r}")
        due = [DueStep(next(self._seq), start + step.after_seconds, step) for step in steps]
        for item in due:
            heapq.heappush(self._heap, (item.due_at, item.seq, item))
        return due

    def cancel(self) -> list[DueStep]:
        """Drop every pending step; returns them in due order."""
        dropped = self.pending
        self._heap.clear()
        return dropped

    def run_due(self, images: MutableMapping[str, SimImage]) -> list[AppliedStep]:
        """Apply every step due at or before the clock now, in due order; returns what was applied."""
        if not self._heap or self._heap[0][0] > (now := self.clock()):
            return []  # the common case, checked first: every request passes here
        done: list[AppliedStep] = []
        while self._heap and self._heap[0][0] <= now:
            item = heapq.heappop(self._heap)[2]
            record = _apply(item, images, now)
            self._applied.append(record)
            done.append(record)
        return done


def _apply(item: DueStep, images: MutableMapping[str, SimImage], now: float) -> AppliedStep:
    step = item.step
    image = images.get(step.image_id)
    if image is None:
        return AppliedStep(item, now, None, "no such image")
    previous: str | None
    if step.field == "error":
        previous, image.error = image.error, step.value
    elif step.field == "status":
        previous = image.status
        image.status = step.value or ""  # a status step always carries a string (checked on creation)
    else:
        region = step.region or ""
        previous = image.regions.get(region)
        if step.value is None:
            image.regions.pop(region, None)
        else:
            image.regions[region] = step.value
    return AppliedStep(item, now, previous, "applied")
