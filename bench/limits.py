"""The largest configuration the config file allows, served within 1 s and 1 GB.

The shape is read from the limits themselves (:func:`largest`): as many targets as ``MAX_SCOPES`` allows
with ``MAX_REGIONS_PER_TARGET`` regions each, the image budget ``MAX_WATCHED_IMAGE_REGIONS`` spread over
them with ``MAX_REGIONS_PER_IMAGE`` replica regions per image (every image of a target copied to the same
regions: the most replication histograms a target may have), and ``MAX_ERROR_CODES`` codes outside the
catalogue answered by every (account, region), so each one counts every code (the most
``ehpc_api_errors_total`` series the cap lets through). Lowering a limit shrinks this run with it.

Processes: the estate (``bench.estateserver``, every account and region in one child, latency 0, a share
of GetImage answered with the invented codes), the exporter (``ehpc-image-exporter run``, interval 10 s so
a refresh is under way during the load) and wrk scraping ``/metrics`` with ``Accept-Encoding: gzip`` (what
Prometheus sends) by 1, 2 and 4 connections back to back; the gate is 2 (an HA pair scraping at once).
Before the load, the exporter runs until every (account, region) has counted every code. RSS is
psutil's, the largest seen after each run. ``python -m bench.limits --shape T R N G E`` measures another
shape (how the limits were chosen).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gzip
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.common import (
    Result,
    Settings,
    at_most,
    exporter_process,
    free_port,
    info,
    temp_dir,
    unavailable,
)
from bench.estateserver import account_images
from bench.fleet import estate_process
from bench.scrape import WRK_REPORT, scrape_run

P99_LIMIT_MS = 1000.0
RSS_LIMIT_MB = 1024.0
# Back to back, so each is a saturation test: one Prometheus; an HA pair scraping at the same moment (the
# gated row: what a scrape waits for at worst in a normal deployment); and four at once.
SCRAPERS = (1, 2, 4)
GATED_SCRAPERS = 2
INTERVAL_SECONDS = 10.0
ERROR_SHARE = 0.3  # of GetImage answers, spread evenly over the invented codes


@dataclass(frozen=True)
class Shape:
    """One configuration's size: targets x regions, images per (account, region), replicas, codes."""

    targets: int
    regions_per_target: int
    images_per_scope: int
    replicas_per_image: int
    error_codes: int

    @property
    def scopes(self) -> int:
        """(account, region) pairs."""
        return self.targets * self.regions_per_target

    def describe(self) -> str:
        """The shape in words, for the detail column."""
        return (
            f"{self.targets} targets x {self.regions_per_target} regions = {self.scopes} (account, region), "
            f"{self.images_per_scope} images each x (1 + {self.replicas_per_image} replica regions), "
            f"{self.error_codes} invented error codes counted in every (account, region)"
        )


def largest() -> Shape:
    """The largest configuration the limits in exporter.config.schema allow."""
    from exporter.config import schema

    regions = min(schema.MAX_REGIONS_PER_TARGET, schema.MAX_SCOPES)
    targets = min(schema.MAX_TARGETS, schema.MAX_SCOPES // regions)
    scopes = targets * regions
    replicas = schema.MAX_REGIONS_PER_IMAGE
    images = schema.MAX_WATCHED_IMAGE_REGIONS // (scopes * (1 + replicas))
    return Shape(targets, regions, images, replicas, schema.MAX_ERROR_CODES)


def account_name(k: int) -> str:
    """The k-th account's name."""
    return f"acct-{k:04d}"


def region_ids(shape: Shape) -> list[str]:
    """The regions every target is watched in (the estate serves each on its own port)."""
    return [f"cn-limit{r:03d}" for r in range(shape.regions_per_target)]


def replica_ids(shape: Shape) -> list[str]:
    """The replica regions of every image (reported per image, not served)."""
    return [f"ap-copy{r:03d}" for r in range(shape.replicas_per_image)]


def codes(shape: Shape) -> list[str]:
    """Error codes outside the exporter's catalogue."""
    return [f"Bench.Invented{c:05d}" for c in range(shape.error_codes)]


def estate_spec(shape: Shape) -> dict[str, Any]:
    """Every target an account with its own key, the same images in each of its regions."""
    rates = {c: ERROR_SHARE / len(codes(shape)) for c in codes(shape)} if shape.error_codes else {}
    accounts = [
        {
            "name": account_name(k),
            "id": f"{200000000000000 + k:015d}",
            "key_id": f"LIMIT-AK-{k}",
            "secret": f"limit-bench-secret-{k:04d}",
            "images": shape.images_per_scope,
            "seed": 3000 + k,
            "replicas": replica_ids(shape),
            "regions": {r: {"error_rates": rates, "seed": 17 + k} for r in region_ids(shape)},
        }
        for k in range(shape.targets)
    ]
    return {"regions": region_ids(shape), "accounts": accounts}


def exporter_doc(shape: Shape, region_urls: dict[str, str], listen: str) -> dict[str, Any]:
    """The exporter config (JSON is YAML): one target per account, every image with its replicas."""
    targets = []
    for k in range(shape.targets):
        images = account_images(shape.images_per_scope, 3000 + k, replica_ids(shape))
        targets.append(
            {
                "account": account_name(k),
                "credentials": {
                    "type": "access_key",
                    "access_key_id": f"LIMIT-AK-{k}",
                    "access_key_secret": f"limit-bench-secret-{k:04d}",
                },
                "regions": [{"region_id": r, "endpoint": region_urls[r]} for r in region_ids(shape)],
                "images": [
                    {
                        "id": i.image_id,
                        "type": "Container" if i.image_type == "Container" else "VM",
                        "additional_regions": replica_ids(shape),
                    }
                    for i in images
                ],
            }
        )
    return {
        "api": {
            "protocol": "http",
            "max_concurrency": 50,
            "timeout_seconds": 30,
            "retry": {"max_attempts": 1},
        },
        "refresh": {"interval_seconds": INTERVAL_SECONDS, "jitter_ratio": 0, "image_timeout_seconds": 120},
        "limits": {"max_error_codes": shape.error_codes, "max_regions_per_image": shape.replicas_per_image},
        "web": {"listen_address": listen},
        "targets": targets,
    }


def family_sizes(text: str) -> dict[str, int]:
    """Samples per family (histogram and counter suffixes folded into the family)."""
    sizes: dict[str, int] = {}
    family = ""
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            family = line.split()[2]
        elif line and not line.startswith("#"):
            sizes[family] = sizes.get(family, 0) + 1
    return sizes


async def fetch(url: str) -> tuple[str, int]:
    """The exposition as text, and its gzip size as served."""
    headers = {"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "gzip"}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(url, headers=headers) as r,
    ):
        r.raise_for_status()
        body = await r.read()
    return gzip.decompress(body).decode(), len(body)


def codes_counted(text: str) -> int:
    """(account, region, code) series of the invented codes with a count above zero."""
    return sum(
        1
        for line in text.splitlines()
        if line.startswith("ehpc_api_errors_total{")
        and "Bench.Invented" in line
        and not line.endswith(" 0.0")
    )


async def wait_codes(url: str, shape: Shape, within: float) -> str:
    """Scrape until every (account, region) counted every invented code for GetImage (or ``within`` ends)."""
    deadline = time.monotonic() + within
    want = shape.scopes * shape.error_codes
    while True:
        text, _ = await fetch(url)
        if codes_counted(text) >= want or time.monotonic() > deadline:
            return text
        await asyncio.sleep(INTERVAL_SECONDS / 2)


async def measure(settings: Settings, shape: Shape) -> list[Result]:
    """Start the estate and the exporter at ``shape``, fill the error counters, then load /metrics."""
    import psutil

    seconds = 3.0 if settings.quick else 10.0
    gz = {"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "gzip"}
    with temp_dir() as tmp:
        script = tmp / "report.lua"
        script.write_text(WRK_REPORT)
        async with estate_process(estate_spec(shape), tmp) as estate:
            port = free_port()
            config = tmp / "exporter.yaml"
            config.write_text(json.dumps(exporter_doc(shape, estate.region_urls, f"127.0.0.1:{port}")))
            start = time.monotonic()
            async with exporter_process(config, port, ready_timeout=1800) as exporter:
                ready = time.monotonic() - start
                url = f"{exporter.url}/metrics"
                text = await wait_codes(url, shape, 60 if settings.quick else 600)
                _, gz_bytes = await fetch(url)
                proc = psutil.Process(exporter.proc.pid)
                runs: dict[int, list[float]] = {c: [] for c in SCRAPERS}
                rss: list[float] = [proc.memory_info().rss / 1e6]
                for _ in range(settings.repeats):
                    for scrapers in SCRAPERS:
                        run = await scrape_run(url, scrapers, seconds, gz, script)
                        runs[scrapers].append(run.p99 * 1000)
                        rss.append(proc.memory_info().rss / 1e6)
    sizes = family_sizes(text)
    samples = sum(sizes.values())
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:4]
    where = shape.describe()
    counted = codes_counted(text)
    results = [
        info("limits_metrics_samples", [float(samples)], "samples", where),
        info(
            "limits_metrics_body_bytes",
            [len(text.encode()) / 1e6],
            "MB",
            f"uncompressed; gzip {gz_bytes / 1e6:.2f} MB",
        ),
        info(
            "limits_largest_families",
            [float(top[0][1])],
            "samples",
            "; ".join(f"{name} {n} ({n / samples:.0%})" for name, n in top)
            + f"; invented codes counted {counted}/{shape.scopes * shape.error_codes}",
        ),
        info("limits_ready_seconds", [ready], "s", "start to /readyz 200 (the first cycle of every target)"),
    ]
    for scrapers in SCRAPERS:
        name = f"limits_metrics_gzip_p99_{scrapers}_scrapers"
        detail = (
            f"{scrapers} wrk connections back to back x {seconds:g} s per run, Accept-Encoding: gzip, "
            f"refresh every {INTERVAL_SECONDS:g} s; median of the runs' p99"
        )
        if scrapers == GATED_SCRAPERS:
            results.append(at_most(name, runs[scrapers], P99_LIMIT_MS, "ms", detail))
        else:
            results.append(info(name, runs[scrapers], "ms", detail))
    results.append(
        at_most("limits_rss", [max(rss)], RSS_LIMIT_MB, "MB", f"the largest RSS seen, of {len(rss)} readings")
    )
    return results


async def run(settings: Settings) -> list[Result]:
    """The largest allowed configuration (under --quick, a tenth of its images)."""
    shape = largest()
    if settings.quick:
        shape = dataclasses.replace(shape, images_per_scope=max(1, shape.images_per_scope // 10))
    try:
        return await measure(settings, shape)
    except Exception as exc:  # report and go on: the other measurements still run
        return [
            unavailable(
                f"limits_metrics_gzip_p99_{GATED_SCRAPERS}_scrapers", "ms", f"<= {P99_LIMIT_MS:g}", repr(exc)
            )
        ]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.limits [--shape T R N G E]``: print this suite's table for one shape."""
    from bench.report import table

    parser = argparse.ArgumentParser(prog="python -m bench.limits", description=__doc__)
    parser.add_argument(
        "--shape", nargs=5, type=int, metavar=("TARGETS", "REGIONS", "IMAGES", "REPLICAS", "CODES")
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    shape = Shape(*args.shape) if args.shape else largest()
    print(shape.describe(), file=sys.stderr)
    results = asyncio.run(measure(Settings(quick=False, repeats=args.repeats), shape))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
