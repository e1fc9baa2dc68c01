"""``run`` (serve; reload on SIGHUP; stop on SIGTERM), ``demo`` and ``simulate``: the long-running ones."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from exporter import __version__
from exporter.cli.parser import PROG, build_simulate_parser
from exporter.config import Config
from exporter.config.load import COMMAND_LINE, ConfigError, config_warnings, state_path_problems
from exporter.logging import configure_logging
from exporter.sharding import ShardingError

if TYPE_CHECKING:
    from exporter.service import ExporterService

from exporter.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    config_summary,
    flag_overrides,
    load_config_files,
    print_errors,
    signal_handlers,
    start_service,
    stop_within_deadline,
)

log = structlog.get_logger("ehpc.cli")

# The simulator is a distribution of its own, installed for the demo and the tests, never in the image.
SIMULATOR_PACKAGE = "ehpc_simulator"
SIMULATOR_MISSING = (
    "the simulator is not installed: from a source checkout, pip install ./simulator"
    " (the ehpc-image-exporter-simulator distribution), or run `make demo`"
)

# --------------------------------------------------------------------------------------------------------
# run


def cmd_run(args: argparse.Namespace) -> int:
    """`run`: load the config, serve until a stop signal; the exit code says why it stopped."""
    try:
        overrides = flag_overrides(args)
    except ShardingError as exc:  # before anything is served: one line naming the flag or variable
        if not args.check_config:
            configure_logging(args.log_format, args.log_level)
            log.error("config_invalid", error=str(exc))
        else:
            print_errors([str(exc)])
        return EXIT_CONFIG
    if args.check_config:
        try:
            config = load_config_files(args.config, overrides)
        except ConfigError as exc:
            print_errors(exc.errors)
            return EXIT_CONFIG
        for warning in config_warnings(config):
            print(f"warning: {warning}", file=sys.stderr)
        # Valid, but this machine cannot keep the state: an error here, where it is checked before a
        # start (the running exporter only logs it and starts cold, a start never fails on it).
        unusable = state_path_problems(config)
        if unusable:
            print_errors([f"{args.config or COMMAND_LINE}: {problem}" for problem in unusable])
            return EXIT_CONFIG
        print(f"config OK: {config_summary(config)}")
        return EXIT_OK

    configure_logging(args.log_format, args.log_level)
    try:
        config = load_config_files(args.config, overrides)
    except ConfigError as exc:
        for line in exc.errors:
            log.error("config_invalid", error=line)
        return EXIT_CONFIG
    for warning in config_warnings(config):
        log.warning("config_warning", warning=warning)
    for problem in state_path_problems(config):
        log.error("state_path_unusable", error=problem)
    return asyncio.run(_run(config, args.config, overrides, lifecycle=args.web_enable_lifecycle))


async def _run(
    config: Config, path: str | None, overrides: Mapping[str, Any], *, lifecycle: bool = False
) -> int:
    from exporter.service import ExporterService

    service = ExporterService(config)
    lock = asyncio.Lock()
    reloads: set[asyncio.Task[str | None]] = set()
    stopping = asyncio.Event()

    async def reload() -> str | None:
        # SIGHUPs and POST /-/reload in a burst apply one after the other, the last file wins.
        async with lock:
            return await reload_config(service, path, overrides)

    if lifecycle:
        service.enable_lifecycle(reload)

    def on_hup() -> None:
        task = asyncio.get_running_loop().create_task(reload())
        reloads.add(task)  # keep a reference until done, or the task may be collected mid-flight
        task.add_done_callback(reloads.discard)

    async def stop() -> None:
        for task in list(reloads):
            task.cancel()
        await asyncio.gather(*reloads, return_exceptions=True)
        await service.stop()

    # Handlers first: a signal that arrives while binding is handled like any other.
    with signal_handlers(stopping, on_hup):
        if not await start_service(service):
            return EXIT_FAILURE
        log.info("started", version=__version__, url=service.url, config=path, **_counts(config))
        await stopping.wait()
        return await stop_within_deadline(stop)


async def reload_config(
    service: ExporterService, path: str | None, overrides: Mapping[str, Any]
) -> str | None:
    """Re-read the config (SIGHUP, POST /-/reload); None if applied, else the reason in one line.

    Any failure keeps the running config and records the reload as failed. A load failure is recorded
    here; once the file loaded, ``service.reload`` records the outcome (once).
    """
    log.info("config_reloading", config=path)
    try:
        config = await asyncio.to_thread(load_config_files, path, overrides)
    except ConfigError as exc:
        errors = exc.errors
    except Exception as exc:  # whatever else the loader raises is still a failed reload, never a silent 1
        # The type only: an exception's text can quote what it choked on, which may be a secret.
        errors = [f"{path or 'command line'}: cannot load the config ({type(exc).__name__})"]
    else:
        errors = []
    if errors:
        for line in errors:
            log.error("config_reload_failed", error=line)
        service.record_reload(False)
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        return f"{errors[0]}{more}"
    try:
        await service.reload(config)
    except Exception as exc:  # recorded by service.reload; the running config stays
        reason = f"cannot apply the config ({type(exc).__name__})"
        log.error("config_reload_failed", error=reason)
        return reason
    for warning in config_warnings(config):
        log.warning("config_warning", warning=warning)
    return None


def _counts(config: Config) -> dict[str, Any]:
    # The configured images only: discovery's are not known before its first run (refresh_done says).
    # Summed over the (account, region) pairs: a target's images are watched in each of its regions.
    scopes = config.scopes()
    return {
        **({"targets": len(config.targets), "scopes": len(scopes)} if config.targets else {}),
        "static_images": sum(len(scope.images) for scope in scopes),
        "discovery": any(scope.discovery.enabled for scope in scopes),
        "interval_seconds": config.refresh.interval_seconds,
    }


# --------------------------------------------------------------------------------------------------------
# demo, simulate


def _simulator_installed(command: str) -> bool:
    """Whether :mod:`exporter.demo` (the one module that imports the simulator) imports; if the simulator
    is not installed, one line on stderr says how to get it."""
    try:
        import exporter.demo  # noqa: F401 - imported for its availability; the callers import its names
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] != SIMULATOR_PACKAGE:
            raise  # something else is missing: a broken install, not the optional simulator
        print(f"{PROG} {command}: {SIMULATOR_MISSING}", file=sys.stderr)
        return False
    return True


def cmd_demo(args: argparse.Namespace) -> int:
    """`demo`: the simulator and an exporter watching it, in one process."""
    if not _simulator_installed("demo"):
        return EXIT_FAILURE
    configure_logging(args.log_format, args.log_level)
    return asyncio.run(_demo(args))


async def _demo(args: argparse.Namespace) -> int:
    from exporter.demo import run_demo

    stopping = asyncio.Event()
    with signal_handlers(stopping):
        async with contextlib.AsyncExitStack() as stack:
            try:
                demo = await stack.enter_async_context(
                    run_demo(
                        listen_address=args.web_listen_address,
                        simulator_listen_address=args.simulator_listen_address,
                        images=args.images,
                        interval_seconds=args.interval,
                        seed=args.seed,
                    )
                )
            except (OSError, ValueError) as exc:  # a port is taken, an address does not parse
                log.error("start_failed", error=str(exc))
                return EXIT_FAILURE
            print(
                f"simulator: {demo.simulator_url}  (admin API: {demo.simulator_url}/_sim/images?account=prod)"
            )
            print(f"exporter:  {demo.metrics_url}")
            print(f"sts:       {demo.sts_url}")
            sys.stdout.flush()
            await stopping.wait()
            return await stop_within_deadline(stack.aclose)
    return EXIT_OK  # pragma: no cover - the with-block always returns


def cmd_simulate(argv: Sequence[str]) -> int:
    """`simulate`: the simulator alone, for a separately started exporter."""
    if not _simulator_installed("simulate"):
        return EXIT_FAILURE
    from exporter.demo import add_simulate_arguments

    args = build_simulate_parser(add_simulate_arguments).parse_args(argv)
    configure_logging(getattr(args, "log_format", None), getattr(args, "log_level", "info"))
    return asyncio.run(_simulate(args))


async def _simulate(args: argparse.Namespace) -> int:
    from exporter.demo import run_simulate

    stopping = asyncio.Event()
    with signal_handlers(stopping):
        task = asyncio.create_task(run_simulate(args))
        waiter = asyncio.create_task(stopping.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task.done():  # it ended on its own: it could not start
            exc = task.exception()
            if exc is not None:
                log.error("start_failed", error=str(exc))
                return EXIT_FAILURE
            return EXIT_OK
        task.cancel()

        async def finish() -> None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

        return await stop_within_deadline(finish)
