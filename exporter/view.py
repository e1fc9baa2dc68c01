"""One verdict per image: decided once from its state, read by every view of it.

:func:`image_view` turns an image's state (its watched entry, its last good data, its last error) and the
configured healthy sets into an :class:`ImageView`: its health class, its status state set and its
replicas, each with a health class of its own. The metrics (``exporter.exposition``), the landing page
(``exporter.http.landing``), the ``check`` command (``exporter.cli``) and the refresh log line all read it and
never re-derive it, so they cannot disagree about whether an image is healthy.

Every label a view holds (ids, statuses, regions, codes) has passed the output gate
(:func:`exporter.redaction.scrub`), and so has an error's reason (:func:`error_reason`: the message of
the failure, on one line and bounded; shown on the page and by ``check``, never a metric label). The
words are the same everywhere: an image is *missing* only when the API says ``ImageNotFound``; a
requested region with no copy in the answer is *not replicated*; a copy whose status is outside the
healthy set is *not available*.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence
from enum import StrEnum
from typing import NamedTuple

from exporter.config import StatusConfig, copy_available
from exporter.redaction import generation, scrub

__all__ = [
    "HEALTH_ORDER",
    "MAX_REASON_LENGTH",
    "Health",
    "ImageView",
    "ReplicaHealth",
    "ReplicaView",
    "error_reason",
    "image_view",
]

IMAGE_NOT_FOUND = "ImageNotFound"
# The state-set label value used when the API answers an empty Status.
UNKNOWN_STATUS = "Unknown"
# An error's reason as the page and ``check`` show it: one line of at most this many characters.
MAX_REASON_LENGTH = 300
ELLIPSIS = "\u2026"
# What separates words: any whitespace, Unicode's too (other controls are dropped, as the gate does).
_BREAKS_RE = re.compile(r"\s+")
# Messages longer than this are gated each time rather than memoised (a few real ones are 600).
_MEMO_MAX = 2048


class Health(StrEnum):
    """An image's health class."""

    MISSING = "missing"  # the API says the image does not exist (ImageNotFound)
    FAILING = "failing"  # the last GetImage failed for any other reason; last good data is stale
    UNHEALTHY = "unhealthy"  # the status is outside the healthy set
    REPLICATING = "replication incomplete"  # a requested region has no available copy
    HEALTHY = "healthy"


# Worst first: the order of the health board and of ``check``.
HEALTH_ORDER: tuple[Health, ...] = (
    Health.MISSING,
    Health.FAILING,
    Health.UNHEALTHY,
    Health.REPLICATING,
    Health.HEALTHY,
)


class ReplicaHealth(StrEnum):
    """The health of an image's copy in one requested region."""

    AVAILABLE = "available"
    NOT_AVAILABLE = "not available"  # a copy whose status is outside the replication healthy set
    NOT_REPLICATED = "not replicated"  # no copy in the answer (or the image itself is missing)
    UNKNOWN = "unknown"  # the image never answered: nothing is known of its copies


States = tuple[tuple[str, float], ...]  # (status label, 0/1) in exposition order


class ReplicaView(NamedTuple):
    """One requested region of an image, as every view shows it."""

    region: str
    status: str | None  # the copy's status label; None when there is no copy
    health: ReplicaHealth
    states: States  # the state set (all 0 without a copy)


class ImageView(NamedTuple):
    """The verdict on one image: plain values, immutable, compared by value."""

    account: str
    region_id: str  # the region whose endpoint answered for it
    image_id: str
    health: Health
    status: str | None  # the status label of the last good data; None before any
    states: States  # the status state set; empty before any data, all 0 while missing
    available: float | None  # 1/0 for the available gauge; None before any data
    replicas: tuple[ReplicaView, ...]  # the requested regions, sorted
    error_code: str | None  # the code of the last failed GetImage, while failing
    error_since: float | None  # wall time the current failure streak started
    error_reason: str | None = None  # why it failed (error_reason: gated, one line), while failing

    @property
    def healthy(self) -> bool:
        """Healthy: up, a healthy status, and an available copy in every requested region."""
        return self.health is Health.HEALTHY

    @property
    def problems(self) -> list[str]:
        """What is wrong, one short phrase each (empty when healthy)."""
        out: list[str] = []
        if self.health is Health.MISSING:
            out.append("missing (ImageNotFound)")
            return out
        if self.health is Health.FAILING:
            out.append(f"failing: {self.error_code}")
        if self.status is not None and self.available == 0.0:
            out.append(f"status {self.status}")
        out += [f"{r.region} {r.health}" for r in self.replicas if r.health is not ReplicaHealth.AVAILABLE]
        return out


def _invisible(text: str) -> str:
    """``text`` without format characters (zero-width spaces and joiners, soft hyphens, bidi marks):
    they show nothing, so a secret split by one would read whole."""
    if text.isascii():
        return text
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


@functools.lru_cache(maxsize=1024)
def _reason(message: str, _secrets: int) -> str:
    text = scrub(_invisible(message), keep_lines=True)  # a secret whole, or split by a newline or tab
    # Then every run of whitespace as a newline, which the gate looks through when it matches secrets: a
    # secret split by a space (a control character the ingestion gate made one) is masked whole too.
    text = scrub(_BREAKS_RE.sub("\n", text), keep_lines=True)
    text = " ".join(text.split())
    if len(text) <= MAX_REASON_LENGTH:
        return text
    # Cut after masking, never before: a secret cut in two would leave its start unmasked.
    return text[: MAX_REASON_LENGTH - 1].rstrip() + ELLIPSIS


def error_reason(message: str) -> str:
    """An error's message as every view shows it: through the output gate, one line, at most
    ``MAX_REASON_LENGTH`` characters (a longer one cut, ending with an ellipsis)."""
    if len(message) > _MEMO_MAX:
        return _reason.__wrapped__(message, 0)
    return _reason(message, generation())


def status_label(status: str) -> str:
    """The ``status`` label value for an API status: itself through the output gate, or ``Unknown``."""
    return scrub(status) if status else UNKNOWN_STATUS


@functools.lru_cache(maxsize=4096)
def state_set(current: str | None, vocabulary: tuple[str, ...]) -> States:
    """The vocabulary with ``current`` at 1 (appended when unknown); all 0 when ``current`` is None.

    Memoised: every image with the same status shares one tuple (60,000 state sets at 10,000 images x 5
    regions are a handful of distinct values), which is both the memory and most of the time of a view.
    The bound keeps statuses an API invents from growing it.
    """
    states = [(s, 1.0 if s == current else 0.0) for s in vocabulary]
    if current is not None and current not in vocabulary:
        states.append((current, 1.0))
    return tuple(states)


@functools.lru_cache(maxsize=4096)
def _replica_view(
    region: str, copy: str | None, unknown: bool, config: StatusConfig, _secrets: int
) -> ReplicaView:
    """One requested region's view: shared by every image whose copy there is in the same state.

    ``_secrets`` is the output gate's generation: a secret registered later is masked in new views.
    """
    vocabulary = config.vocabulary
    name = scrub(region)
    if unknown:
        return ReplicaView(name, None, ReplicaHealth.UNKNOWN, state_set(None, vocabulary))
    if copy is None:
        return ReplicaView(name, None, ReplicaHealth.NOT_REPLICATED, state_set(None, vocabulary))
    label = status_label(copy)
    available = copy_available(copy, config.replication_healthy)
    health = ReplicaHealth.AVAILABLE if available else ReplicaHealth.NOT_AVAILABLE
    return ReplicaView(name, label, health, state_set(label, vocabulary))


def image_view(
    key: tuple[str, str, str],
    requested_regions: Sequence[str],
    status: str | None,
    replicas: Sequence[tuple[str, str]],
    error: tuple[str, float] | None,
    config: StatusConfig,
    reason: str = "",
) -> ImageView:
    """The verdict on one image, ``key`` = (account, region, image id).

    ``status`` and ``replicas`` (region, status) are the last good data (``None`` / empty before any);
    ``error`` is ``(code, since)`` while the last GetImage failed, and ``reason`` its message.
    """
    vocabulary = config.vocabulary
    missing = error is not None and error[0] == IMAGE_NOT_FOUND
    seen = dict(replicas)
    unknown = status is None and not missing
    secrets = generation()
    views = tuple(
        _replica_view(region, None if missing else seen.get(region), unknown, config, secrets)
        for region in sorted(set(requested_regions))
    )
    label = status_label(status) if status is not None else None
    states: States = ()
    available: float | None = None
    if missing:
        states, available = state_set(None, vocabulary), 0.0
    elif status is not None:
        states = state_set(label, vocabulary)
        available = 1.0 if status in config.healthy else 0.0
    if missing:
        health = Health.MISSING
    elif error is not None:
        health = Health.FAILING
    elif status is None or available == 0.0:
        health = Health.UNHEALTHY
    elif any(r.health is not ReplicaHealth.AVAILABLE for r in views):
        health = Health.REPLICATING
    else:
        health = Health.HEALTHY
    account, region_id, image_id = key
    return ImageView(
        account=scrub(account),
        region_id=scrub(region_id),
        image_id=scrub(image_id),
        health=health,
        status=label,
        states=states,
        available=available,
        replicas=views,
        error_code=scrub(error[0]) if error is not None else None,
        error_since=error[1] if error is not None else None,
        error_reason=(error_reason(reason) or None) if error is not None else None,
    )
