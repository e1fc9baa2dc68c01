"""Measurement 6: sharding. Images moved from N to N + 1 shards (rendezvous vs the old sha1 mod N) and
what assigning an image costs.

`python -m bench.sharding` prints its own table; `python -m bench --only sharding` adds the rows to the
suite's. Movement is counted on 10,000 identities over 2 accounts x 2 regions; the ideal is 1/(N + 1).
Cost is per image, cold (every weight hashed: ``shard_of.__wrapped__``, the first cycle after a start
or a resharding) and cached (every later cycle), for 3, 10 and 100 shards.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import time
from collections.abc import Callable

from bench.common import Result, Settings, at_most, info
from exporter.sharding import shard_of

Identity = tuple[str, str, str]
MAX_N = 8
# 10,000 images x 100 shards, cold, within one second of a cycle (the refresh interval is a minute).
COLD_100_LIMIT_US = 100.0


def identities(n: int) -> list[Identity]:
    """``n`` distinct (account, region, image id) triples."""
    return [
        (("prod", "staging")[i % 2], ("cn-hangzhou", "cn-beijing")[i // 2 % 2], f"m-bench{i:013d}")
        for i in range(n)
    ]


def old_mod(_account: str, _region: str, image_id: str, total: int) -> int:
    """The assignment before rendezvous: ``int(sha1(image_id)) % total``."""
    return int(hashlib.sha1(image_id.encode(), usedforsecurity=False).hexdigest(), 16) % total


def moved_fraction(assign: Callable[[str, str, str, int], int], images: list[Identity], n: int) -> float:
    """The share of ``images`` whose shard differs between ``n`` and ``n + 1`` shards."""
    return sum(assign(*i, n) != assign(*i, n + 1) for i in images) / len(images)


def cost_us(assign: Callable[[str, str, str, int], int], images: list[Identity], total: int) -> float:
    """Microseconds per image for one pass over ``images``."""
    start = time.perf_counter()
    for image in images:
        assign(*image, total)
    return (time.perf_counter() - start) / len(images) * 1e6


def measure(settings: Settings) -> list[Result]:
    """The movement rows (rendezvous with a bound, mod for comparison) and the cost rows."""
    images = identities(2_000 if settings.quick else 10_000)
    out: list[Result] = []
    for n in range(1, MAX_N + 1):
        ideal = 1 / (n + 1)
        out.append(
            at_most(
                f"sharding_moved_{n}_to_{n + 1}",
                [moved_fraction(shard_of.__wrapped__, images, n)],
                round(ideal + 0.05, 3),
                "fraction",
                f"rendezvous; ideal {ideal:.3f}; old sha1 mod: {moved_fraction(old_mod, images, n):.3f}",
            )
        )
    cold = shard_of.__wrapped__
    for total in (3, 10, 100):
        sample = images[:2_000] if total == 100 else images
        runs = [cost_us(cold, sample, total) for _ in range(settings.repeats)]
        detail = f"cold, {len(sample)} images; x10,000 = {statistics.median(runs) * 10_000 / 1e6:.2f} s"
        if total == 100:
            out.append(at_most(f"sharding_cost_{total}_shards", runs, COLD_100_LIMIT_US, "us/image", detail))
        else:
            out.append(info(f"sharding_cost_{total}_shards", runs, "us/image", detail))
    shard_of.cache_clear()
    for image in images:
        shard_of(*image, 100)
    runs = [cost_us(shard_of, images, 100) for _ in range(settings.repeats)]
    out.append(info("sharding_cost_100_shards_cached", runs, "us/image", "every cycle after the first"))
    shard_of.cache_clear()
    return out


async def run(settings: Settings) -> list[Result]:
    """The suite entry (CPU only: run in a thread so the loop of the runner stays responsive)."""
    return await asyncio.to_thread(measure, settings)


def main() -> None:
    """Print the movement table and the cost rows."""
    images = identities(10_000)
    print("N -> N+1   ideal 1/(N+1)   rendezvous   sha1 mod N   (10,000 images moved, fraction)")
    for n in range(1, MAX_N + 1):
        rv, mod = moved_fraction(shard_of.__wrapped__, images, n), moved_fraction(old_mod, images, n)
        print(f"{n:>2} -> {n + 1:<2}   {1 / (n + 1):>13.3f}   {rv:>10.3f}   {mod:>10.3f}")
    print()
    print("shards   cold us/image   cold s per 10,000   cached us/image")
    for total in (3, 10, 100):
        sample = images[:2_000] if total == 100 else images
        cold = statistics.median(cost_us(shard_of.__wrapped__, sample, total) for _ in range(3))
        shard_of.cache_clear()
        for image in images:
            shard_of(*image, total)
        cached = statistics.median(cost_us(shard_of, images, total) for _ in range(3))
        shard_of.cache_clear()
        print(f"{total:>6}   {cold:>13.2f}   {cold * 10_000 / 1e6:>17.3f}   {cached:>15.2f}")


if __name__ == "__main__":
    main()
