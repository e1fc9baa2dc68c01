"""``check``: one refresh, a table (or JSON) of every verdict, worst first; the exit code for CI and cron."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from exporter.config import Config
from exporter.config.load import ConfigError, config_warnings, load_config
from exporter.logging import configure_logging
from exporter.redaction import scrub
from exporter.sharding import ShardingError
from exporter.view import HEALTH_ORDER, ImageView

if TYPE_CHECKING:
    from exporter.snapshot import Snapshot

from exporter.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    plural,
    print_errors,
    sharding_overrides,
)

log = structlog.get_logger("ehpc.cli")

# --------------------------------------------------------------------------------------------------------
# check


def cmd_check(args: argparse.Namespace) -> int:
    """The `check` command: one refresh, each image's verdict printed, the exit code saying how it went."""
    configure_logging(args.log_format, args.log_level)
    try:
        config = load_config(args.config, sharding_overrides(args))
    except ShardingError as exc:
        print_errors([str(exc)])
        return EXIT_CONFIG
    except ConfigError as exc:
        print_errors(exc.errors)
        return EXIT_CONFIG
    for warning in config_warnings(config):  # a typo'd region fails below as a ConnectionError: say why
        log.warning("config_warning", warning=warning)
    snapshot = asyncio.run(_refresh_once(config))
    return print_report(snapshot, args.output)


def print_report(snapshot: Snapshot, output: str) -> int:
    """Print every verdict of ``snapshot`` as ``check`` does (``output``: table or json); its exit code."""
    rows = [_gated(check_row(view)) for view in snapshot.views.values()]
    discovery = snapshot.discovery
    if output == "json":
        doc: dict[str, Any] = {"images": rows}
        if discovery is not None:
            doc["discovery"] = _gated(
                {
                    "up": discovery.up,
                    "discovered": discovery.discovered,
                    "error": discovery.error_code,
                    "reason": discovery.reason or None,
                }
            )
        print(json.dumps(doc, indent=2))
    else:
        _print_table(rows, snapshot)
    # Not healthy: any image that is not, or a discovery that failed (its images may be unwatched).
    bad = [row for row in rows if not row["ok"]]
    return EXIT_FAILURE if bad or snapshot.discovery_failed else EXIT_OK


async def _refresh_once(config: Config) -> Snapshot:
    from exporter.service import ExporterService

    service = ExporterService(config)
    try:
        return await service.refresh_once()
    finally:
        await service.stop()


def _gated(value: Any) -> Any:
    """``value`` with every string, keys included, through the output gate (what ``check`` prints)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {_gated(k): _gated(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_gated(v) for v in value]
    return value


def check_row(view: ImageView) -> dict[str, Any]:
    """One image's verdict as ``check`` prints it (the same verdict the metrics and the page show)."""
    return {
        "account": view.account,
        "region_id": view.region_id,
        "image_id": view.image_id,
        "health": str(view.health),
        "status": view.status,
        "regions": {r.region: r.status if r.status is not None else str(r.health) for r in view.replicas},
        "last_error": view.error_code,
        "last_error_reason": view.error_reason,  # the message that says why (gated, one line)
        "ok": view.healthy,
        "problems": view.problems,
    }


def _print_table(rows: Sequence[Mapping[str, Any]], snapshot: Snapshot) -> None:
    # The reason last: up to 300 characters, it is never padded and never pushes another column.
    header = ("ACCOUNT", "REGION", "IMAGE", "HEALTH", "STATUS", "REGIONS", "LAST ERROR", "REASON")
    table = [header]
    rank = {str(h): i for i, h in enumerate(HEALTH_ORDER)}
    for row in sorted(rows, key=lambda r: (rank[r["health"]], r["account"], r["region_id"], r["image_id"])):
        regions = " ".join(f"{r}:{s}" for r, s in row["regions"].items()) or "-"
        table.append(
            (
                row["account"],
                row["region_id"],
                row["image_id"],
                row["health"],
                row["status"] or "-",
                regions,
                row["last_error"] or "-",
                row["last_error_reason"] or "-",
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
    counts = ", ".join(f"{n} {h}" for h, n in snapshot.health_counts().items())
    print(f"{plural(len(rows), 'image')}: {counts}")
    for scope, status in snapshot.scopes.items():
        discovery = status.discovery
        where = f"{scrub(scope.account)}/{scrub(scope.region_id)}: " if len(snapshot.scopes) > 1 else ""
        if discovery is not None and not discovery.up:
            code = scrub(discovery.error_code or "?")
            why = f": {scrub(discovery.reason)}" if discovery.reason else ""
            print(f"{where}discovery FAILED ({code}{why}): kept {plural(discovery.discovered, 'image')}")
        elif discovery is not None:
            print(f"{where}discovery ok: {plural(discovery.discovered, 'image')}")
