"""Which replica watches which image: rendezvous (highest-random-weight) hashing, as kube-state-metrics.

Every image (its identity: account, region id, image id; the same id in two accounts is two images)
gives each shard ``0 .. total-1`` a weight, the first 8 bytes of BLAKE2b over the identity and the
shard number (:func:`weight`); the image belongs to the shard with the highest weight. The weights are
pure functions of bytes (never Python's salted ``hash()``), so every process on every host agrees.

Movement: going from ``N`` shards to ``N + 1`` adds one weight per image and changes nothing else, so
an image moves only if the new shard's weight beats the ``N`` old ones, which happens for about
``1 / (N + 1)`` of the images, and those all move *to the new shard*: no image moves between the old
shards. Going back from ``N + 1`` to ``N`` moves exactly the new shard's images, each to its
second-best old shard. The old ``sha1(image_id) mod N`` moved about ``N / (N + 1)`` of the images
(``bench/sharding.py`` prints both).

Cost: ``total`` hashes per image on first sight, then a cached answer (:func:`shard_of` keeps the
assignments of the last :data:`CACHE_SIZE` identities), so a refresh cycle of a steady fleet pays a
dictionary lookup per image.

The ordinal of a StatefulSet pod is the trailing ``-<n>`` of its name (:func:`ordinal_from_pod_name`);
how the command line turns flags and environment into a :class:`~exporter.config.ShardingConfig` is
:func:`resolve_sharding`.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from exporter.config import ShardingConfig

__all__ = [
    "CACHE_SIZE",
    "MAX_TOTAL_SHARDS",
    "POD_NAME_ENV",
    "TOTAL_SHARDS_ENV",
    "ShardingError",
    "ShardingFlags",
    "in_shard",
    "ordinal_from_pod_name",
    "resolve_sharding",
    "shard_of",
    "weight",
]

# The bounds of the config schema (sharding.shards 1..1000, sharding.shard 0..999).
MAX_TOTAL_SHARDS = 1000
# Identities whose shard is remembered: a fleet well past the 10,000 images the exporter is sized for.
CACHE_SIZE = 1 << 17
POD_NAME_ENV = "POD_NAME"
TOTAL_SHARDS_ENV = "EHPC_TOTAL_SHARDS"

# A StatefulSet pod is "<statefulset name>-<ordinal>"; the name part may itself contain digits and dashes.
_DIGITS = re.compile(r"^-?[0-9]{1,9}$", re.ASCII)
_POD_ORDINAL = re.compile(r"^.*[^-]-([0-9]{1,9})$", re.ASCII)


def _identity(account: str, region_id: str, image_id: str) -> bytes:
    # NUL cannot occur in a validated account or region, so no two identities share these bytes;
    # surrogatepass: an id an API answer made up must still hash, never raise.
    return f"{account}\0{region_id}\0{image_id}\0".encode("utf-8", "surrogatepass")


def weight(account: str, region_id: str, image_id: str, shard: int) -> int:
    """The 64-bit rendezvous weight of one image for one shard (stable across processes and hosts)."""
    data = _identity(account, region_id, image_id) + shard.to_bytes(4, "big")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


@functools.lru_cache(maxsize=CACHE_SIZE)
def shard_of(account: str, region_id: str, image_id: str, total: int) -> int:
    """The shard of ``total`` that watches an image: the one with the highest weight (ties: the lowest)."""
    if total <= 1:
        return 0
    base = hashlib.blake2b(_identity(account, region_id, image_id), digest_size=8)
    best, best_weight = 0, -1
    for shard in range(total):
        h = base.copy()  # the identity is hashed once; each shard only adds its 4 bytes
        h.update(shard.to_bytes(4, "big"))
        w = int.from_bytes(h.digest(), "big")
        if w > best_weight:
            best, best_weight = shard, w
    return best


def in_shard(account: str, region_id: str, image_id: str, sharding: ShardingConfig) -> bool:
    """Whether the replica of ``sharding`` watches the image."""
    return sharding.shards <= 1 or shard_of(account, region_id, image_id, sharding.shards) == sharding.shard


def ordinal_from_pod_name(name: str) -> int | None:
    """The StatefulSet ordinal of a pod name (``ehpc-image-exporter-2`` -> 2), or None if it has none."""
    match = _POD_ORDINAL.match(name.strip())
    return int(match.group(1)) if match else None


class ShardingError(ValueError):
    """A sharding flag or environment variable that cannot be used; the message names it and its value."""


@dataclass(frozen=True, slots=True)
class ShardingFlags:
    """What the command line said about sharding (None: not given)."""

    shard: str | None = None
    total_shards: str | None = None
    pod: str | None = None


def _integer(text: str, where: str, low: int, high: int) -> int:
    # Plain ASCII digits only: int() would also take "1_0", "+3" and other scripts' digits.
    digits = text.strip()
    if not _DIGITS.match(digits):
        raise ShardingError(f"{where} {_shown(text)}: must be an integer")
    value = int(digits)
    if not low <= value <= high:
        raise ShardingError(f"{where} {value}: must be between {low} and {high}")
    return value


def resolve_sharding(flags: ShardingFlags, environ: Mapping[str, str]) -> dict[str, int]:
    """The config overrides (``sharding.shards``, ``sharding.shard``) the flags and environment ask for.

    The total comes from ``--total-shards``, else ``EHPC_TOTAL_SHARDS``; the ordinal from ``--shard``,
    else from the trailing ``-<n>`` of ``--pod``, else (automatic mode: a total above 1 from the flag
    or the variable) of ``POD_NAME``. What is not given is left to the config file, except that a
    total above 1 from the command line needs an ordinal from it too (a file's ``shard`` written for
    another total is a duplicate waiting to happen). ``POD_NAME`` never overrides ``--shard`` (the
    downward API sets it in many pods for other reasons); an explicit ``--pod`` that disagrees with
    ``--shard`` is an error. Raises ShardingError naming the flag or variable and its value.
    """
    total: int | None = None
    total_from = ""
    if flags.total_shards is not None:
        total = _integer(flags.total_shards, "--total-shards", 1, MAX_TOTAL_SHARDS)
        total_from = f"--total-shards {total}"
    elif environ.get(TOTAL_SHARDS_ENV, "").strip():
        total = _integer(environ[TOTAL_SHARDS_ENV], TOTAL_SHARDS_ENV, 1, MAX_TOTAL_SHARDS)
        total_from = f"{TOTAL_SHARDS_ENV}={total}"
    shard: int | None = None
    shard_from = ""
    if flags.shard is not None:
        shard = _integer(flags.shard, "--shard", 0, MAX_TOTAL_SHARDS - 1)
        shard_from = f"--shard {shard}"
    pod, pod_from = flags.pod, "--pod"
    if pod is None and shard is None and total is not None and total > 1:
        pod, pod_from = environ.get(POD_NAME_ENV) or None, POD_NAME_ENV
    if pod is not None:
        ordinal = ordinal_from_pod_name(pod)
        shown = f"{pod_from} {_shown(pod)}"
        if ordinal is None:
            raise ShardingError(f"{shown}: no StatefulSet ordinal (a trailing -<n>)")
        if shard is not None and ordinal != shard:
            raise ShardingError(f"{shard_from} conflicts with {shown} (ordinal {ordinal})")
        if shard is None:
            shard, shard_from = ordinal, f"{shown} (ordinal {ordinal})"
    if total is not None and total > 1 and shard is None:
        raise ShardingError(
            f"{total_from}: needs the ordinal too: --shard N, or a StatefulSet pod name"
            f" (--pod, {POD_NAME_ENV})"
        )
    if total is not None and shard is not None and shard >= total:
        raise ShardingError(f"{shard_from}: the ordinal must be less than the total ({total_from})")
    out: dict[str, int] = {}
    if total is not None:
        out["sharding.shards"] = total
    if shard is not None:
        out["sharding.shard"] = shard
    return out


def _shown(text: str) -> str:
    """``text`` quoted for an error line, cut short and with control characters escaped."""
    return repr(text) if len(text) <= 80 else f"{text[:80]!r}..."
