"""What the subcommands share: exit codes, loading the config for a command, signals, the stop deadline."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

import structlog

from exporter.config import STOP_TIMEOUT_SECONDS, Config
from exporter.config.load import load_config
from exporter.sharding import ShardingFlags, resolve_sharding

log = structlog.get_logger("ehpc.cli")

if TYPE_CHECKING:
    from exporter.service import ExporterService


EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


# --------------------------------------------------------------------------------------------------------
# Shared helpers.


def flag_overrides(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The config keys the flags (and the sharding environment) set; raises ShardingError.

    Resolved once at start: the same overrides apply to every reload, so flags and environment keep
    winning over the file.
    """
    return {
        "web.listen_address": args.web_listen_address,
        "web.telemetry_path": args.web_telemetry_path,
        "web.config_file": args.web_config_file,
        **sharding_overrides(args, environ),
    }


def sharding_overrides(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``sharding.shards`` / ``sharding.shard`` from --total-shards, --shard, --pod and the environment."""
    flags = ShardingFlags(shard=args.shard, total_shards=args.total_shards, pod=args.pod)
    return dict(resolve_sharding(flags, os.environ if environ is None else environ))


def web_config_problems(path: str) -> list[str]:
    """The problems of the web config file at ``path``, one line each (it is read at start and on reload)."""
    from exporter.http.toolkit import WebConfigError, load_web_security

    try:
        load_web_security(path)
    except WebConfigError as exc:  # one line per problem, each naming the file and the field
        return exc.errors or [f"{path}: invalid web config"]
    except ValueError:  # not expected: whatever else refused the file still names it, quoting nothing
        return [f"{path}: invalid web config"]
    return []


def load_config_files(path: str | None, overrides: Mapping[str, Any]) -> Config:
    """The config file and the web config file it names, validated in one pass; raises ConfigError."""
    return load_config(path, overrides, web_config_check=web_config_problems)


def plural(count: int, noun: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def config_summary(config: Config) -> str:
    """What ``--check-config`` says of a valid config: one line, and with ``targets:`` a line per target
    (its account, static images, discovery and regions)."""
    shard = (
        f", shard {config.sharding.shard} of {config.sharding.shards}" if config.sharding.shards > 1 else ""
    )
    tail = (
        f"refresh every {config.refresh.interval_seconds:g}s{shard}, listen {config.web.listen_address}"
        f"{config.web.telemetry_path}"
    )
    if not config.targets:
        discovery = "discovery on" if config.discovery.enabled else "discovery off"
        return f"{plural(len(config.images), 'image')}, {discovery}, {tail}"
    pairs = plural(len(config.scopes()), "(account, region) pair")
    lines = [f"{plural(len(config.targets), 'target')}, {pairs}, {tail}", "targets:"]
    for target in config.targets:
        refresh = target.refresh.interval_seconds
        own = f", refresh every {refresh:g}s" if refresh != config.refresh.interval_seconds else ""
        lines.append(
            f"  {target.account}: {plural(len(target.images), 'image')},"
            f" discovery {'on' if target.discovery.enabled else 'off'},"
            f" {'region' if len(target.regions) == 1 else 'regions'}"
            f" {', '.join(api.region_id for api in target.regions)}{own}"
        )
    return "\n".join(lines)


def print_errors(errors: Sequence[str], stream: TextIO | None = None) -> None:
    """Each problem on a line of its own, to stderr unless ``stream`` is given."""
    for line in errors:
        print(line, file=stream or sys.stderr)


@contextlib.contextmanager
def signal_handlers(stopping: asyncio.Event, on_reload: Callable[[], None] | None = None) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stopping`` (a second one is only logged); SIGHUP calls ``on_reload``."""
    loop = asyncio.get_running_loop()

    def stop(sig: signal.Signals) -> None:
        log.info("already_stopping" if stopping.is_set() else "stopping", signal=sig.name)
        stopping.set()

    def hup() -> None:
        if on_reload is not None and not stopping.is_set():
            on_reload()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)
    loop.add_signal_handler(signal.SIGHUP, hup)
    try:
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def stop_within_deadline(stop: Callable[[], Awaitable[Any]]) -> int:
    """Run ``stop`` within the one stop deadline (the service's); the exit code says whether it made it."""
    try:
        async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
            await stop()
    except TimeoutError:
        log.error("stop_timeout", seconds=STOP_TIMEOUT_SECONDS)
        return EXIT_FAILURE
    log.info("stopped")
    return EXIT_OK


async def start_service(service: ExporterService) -> bool:
    """Start ``service``; log and clean up on failure (port taken, bad address)."""
    try:
        await service.start()
    except (OSError, ValueError) as exc:
        log.error("start_failed", error=str(exc))
        with contextlib.suppress(Exception):
            await service.stop()
        return False
    return True
