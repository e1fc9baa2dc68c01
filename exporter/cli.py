"""The ``ehpc-image-exporter`` command line: ``run`` (default), ``check``, ``demo`` and ``simulate``.

Exit codes: 0 success (and a clean stop on SIGTERM/SIGINT); 1 a runtime failure (cannot bind, did not stop
in time, ``check`` found an unhealthy or failing image); 2 invalid configuration or usage. A bad config
never produces a traceback and never binds a port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

import structlog

from exporter import __version__
from exporter.argtypes import bounded
from exporter.buildinfo import BuildInfo
from exporter.config import STOP_TIMEOUT_SECONDS, Config
from exporter.config.load import ConfigError, config_warnings, load_config
from exporter.logging import LEVELS, LOG_FORMATS, configure_logging
from exporter.redaction import scrub
from exporter.view import HEALTH_ORDER, ImageView

if TYPE_CHECKING:
    from exporter.service import ExporterService
    from exporter.snapshot import Snapshot

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "STOP_TIMEOUT_SECONDS", "build_parser", "main"]

PROG = "ehpc-image-exporter"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
# SIGTERM to exit: Kubernetes waits 30 s by default, our promise is 5 s; leave margin inside it.
SUBCOMMANDS = ("run", "check", "demo", "simulate")

log = structlog.get_logger("ehpc.cli")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the hand-wrapped descriptions; show a flag's default when it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.default in (None, False, argparse.SUPPRESS)
            or "default" in text
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


# --------------------------------------------------------------------------------------------------------
# Parser.


def _add_logging_flags(parser: argparse.ArgumentParser, default_level: str = "info") -> None:
    # The dotted spellings are the Prometheus ecosystem's (node_exporter, kube-state-metrics); the
    # dashed ones stay as aliases for existing scripts.
    parser.add_argument(
        "--log.format",
        "--log-format",
        dest="log_format",
        choices=LOG_FORMATS,
        default=None,
        help="log format on stderr: logfmt or json, or console for people (default: console when stderr"
        " is a terminal, else json)",
    )
    parser.add_argument(
        "--log.level",
        "--log-level",
        dest="log_level",
        choices=LEVELS,
        default=default_level,
        help="lowest level that is logged",
    )


def _add_config_flag(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--config.file",
        "--config",
        dest="config",
        metavar="FILE",
        required=required,
        default=None,
        help="YAML config file (see examples/config.yaml)"
        + ("" if required else "; without it the defaults and the flags below are used"),
    )


def _add_web_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--web.listen-address",
        dest="web_listen_address",
        metavar="HOST:PORT",
        default=None,
        help="address to serve metrics on, e.g. ':9765' or '127.0.0.1:9765' (overrides web.listen_address;"
        " default ':9765')",
    )
    parser.add_argument(
        "--web.telemetry-path",
        dest="web_telemetry_path",
        metavar="PATH",
        default=None,
        help="path of the metrics page (overrides web.telemetry_path; default '/metrics')",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="FILE",
        default=None,
        help="exporter-toolkit web config for TLS and basic auth (overrides web.config_file)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (``run`` is inserted when no subcommand is given)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=_HelpFormatter,
        description=(
            "Prometheus exporter for the health and cross-region replication of Alibaba Cloud E-HPC Instant\n"
            "images. Without a subcommand, 'run' is assumed: ehpc-image-exporter --config FILE"
        ),
        epilog="Run '%(prog)s <subcommand> --help' for the flags of each subcommand.",
    )
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", metavar="{run,check,demo,simulate}")

    run = sub.add_parser(
        "run",
        formatter_class=_HelpFormatter,
        help="serve /metrics, refreshing in the background (default)",
        description=(
            "Serve metrics about the configured images, refreshed in the background; scrapes never call\n"
            "the API. SIGHUP reloads the config file (a bad file keeps the running config and sets\n"
            "ehpc_config_last_reload_successful to 0); SIGTERM or SIGINT stops within 5 seconds."
        ),
    )
    _add_config_flag(run, required=False)
    run.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config (and the web config file) and exit: 0 if valid, 2 with one line per"
        " error on stderr otherwise",
    )
    _add_web_flags(run)
    _add_logging_flags(run)
    run.add_argument("--version", action="version", version=version_text())

    check = sub.add_parser(
        "check",
        formatter_class=_HelpFormatter,
        help="refresh once and print a table; exit 1 if any image is unhealthy or failing",
        description=(
            "Call the API once for every watched image and print image, status, replication regions\n"
            "(region:status) and last error. Exit 0 if every image is healthy and every requested region\n"
            "is replicated, 1 if any image is unhealthy, incompletely replicated or failing, 2 if the\n"
            "config is invalid."
        ),
    )
    _add_config_flag(check, required=True)
    check.add_argument(
        "--output", choices=("table", "json"), default="table", help="table for people, json for scripts"
    )
    _add_logging_flags(check, default_level="warning")

    demo = sub.add_parser(
        "demo",
        formatter_class=_HelpFormatter,
        help="run the simulator and the exporter pointed at it, in one process",
        description=(
            "Start the E-HPC Instant simulator with a generated fleet (some images failing, some not fully\n"
            "replicated) and the exporter pointed at it with the demo AccessKey pair over HTTP. Prints\n"
            "both URLs; first metrics within a few seconds. Use port 0 to pick free ports."
        ),
    )
    demo.add_argument(
        "--web.listen-address",
        dest="web_listen_address",
        metavar="HOST:PORT",
        default="127.0.0.1:9765",
        help="the exporter's address",
    )
    demo.add_argument(
        "--simulator.listen-address",
        dest="simulator_listen_address",
        metavar="HOST:PORT",
        default="127.0.0.1:9766",
        help="the simulator's address",
    )
    demo.add_argument(
        "--images",
        type=_positive_int,
        default=24,
        metavar="N",
        help="simulated images (the demo also watches one image that does not exist: N + 1 are watched)",
    )
    demo.add_argument(
        "--interval", type=_positive_float, default=15.0, metavar="SECONDS", help="refresh interval"
    )
    demo.add_argument("--seed", type=int, default=7, help="seed of the generated fleet")
    _add_logging_flags(demo)

    simulate = sub.add_parser(
        "simulate",
        formatter_class=_HelpFormatter,
        help="serve the E-HPC Instant API simulator alone",
        description="Serve the local E-HPC Instant API simulator (signature checks, fault injection,\n"
        "admin API under /_sim/).",
    )
    _add_simulate_flags(simulate)
    for name, subparser in (("run", run), ("check", check), ("demo", demo), ("simulate", simulate)):
        # Each subcommand answers a flag it does not know with its own usage, not the top-level one.
        subparser.set_defaults(subparser=subparser, command=name)
    return parser


def _add_simulate_flags(parser: argparse.ArgumentParser) -> None:
    from exporter.simulator.cli import add_simulate_arguments

    add_simulate_arguments(parser)
    taken = set(parser._option_string_actions)  # the simulator may define its own logging flags
    if not {"--log.format", "--log-format", "--log.level", "--log-level"} & taken:
        _add_logging_flags(parser)


_positive_int = bounded(int, "an integer of at least 1", low=1)
_positive_float = bounded(float, "a number greater than 0", above=True)


def version_text() -> str:
    """What ``--version`` prints, in the Prometheus tools' layout."""
    info = BuildInfo.current()
    return (
        f"{PROG}, version {info.version} (revision: {info.revision})\n"
        f"  build date:     {info.build_date}\n"
        f"  python version: {info.python_version}"
    )


def _with_default_subcommand(argv: Sequence[str]) -> list[str]:
    """``ehpc-image-exporter --config x`` means ``ehpc-image-exporter run --config x``."""
    args = list(argv)
    if not args:
        return ["run"]
    if args[0] in SUBCOMMANDS or args[0] in ("-h", "--help", "--version"):
        return args
    return ["run", *args]


# --------------------------------------------------------------------------------------------------------
# Shared helpers.


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "web.listen_address": args.web_listen_address,
        "web.telemetry_path": args.web_telemetry_path,
        "web.config_file": args.web_config_file,
    }


def _web_config_errors(config: Config) -> list[str]:
    """The web config file's problem, if it has one (it is read at start and on reload)."""
    if config.web.config_file is None:
        return []
    from exporter.http.toolkit import load_web_security

    try:
        load_web_security(config.web.config_file)
    except ValueError as exc:  # WebConfigError is a ValueError with a one-line message naming the file
        return [str(exc).splitlines()[0] if str(exc) else f"{config.web.config_file}: invalid web config"]
    return []


def _load(path: str | None, overrides: Mapping[str, Any]) -> Config:
    """The config file and the web config file it names, both validated; raises ConfigError."""
    config = load_config(path, overrides)
    errors = _web_config_errors(config)
    if errors:
        raise ConfigError(errors)
    return config


def _summary(config: Config) -> str:
    discovery = "discovery on" if config.discovery.enabled else "discovery off"
    shard = (
        f", shard {config.sharding.shard} of {config.sharding.shards}" if config.sharding.shards > 1 else ""
    )
    count = len(config.images)
    return (
        f"{count} image{'s' if count != 1 else ''}, {discovery}, refresh every"
        f" {config.refresh.interval_seconds:g}s{shard}, listen {config.web.listen_address}"
        f"{config.web.telemetry_path}"
    )


def _print_errors(errors: Sequence[str], stream: TextIO | None = None) -> None:
    for line in errors:
        print(line, file=stream or sys.stderr)


@contextlib.contextmanager
def _signal_handlers(stopping: asyncio.Event, on_reload: Callable[[], None] | None = None) -> Iterator[None]:
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


async def _stop_within_deadline(stop: Callable[[], Awaitable[Any]]) -> int:
    """Run ``stop`` within the one stop deadline (the service's); the exit code says whether it made it."""
    try:
        async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
            await stop()
    except TimeoutError:
        log.error("stop_timeout", seconds=STOP_TIMEOUT_SECONDS)
        return EXIT_FAILURE
    log.info("stopped")
    return EXIT_OK


async def _start(service: ExporterService) -> bool:
    """Start ``service``; log and clean up on failure (port taken, bad address)."""
    try:
        await service.start()
    except (OSError, ValueError) as exc:
        log.error("start_failed", error=str(exc))
        with contextlib.suppress(Exception):
            await service.stop()
        return False
    return True


# --------------------------------------------------------------------------------------------------------
# run


def _cmd_run(args: argparse.Namespace) -> int:
    overrides = _overrides(args)
    if args.check_config:
        try:
            config = _load(args.config, overrides)
        except ConfigError as exc:
            _print_errors(exc.errors)
            return EXIT_CONFIG
        for warning in config_warnings(config):
            print(f"warning: {warning}", file=sys.stderr)
        print(f"config OK: {_summary(config)}")
        return EXIT_OK

    configure_logging(args.log_format, args.log_level)
    try:
        config = _load(args.config, overrides)
    except ConfigError as exc:
        for line in exc.errors:
            log.error("config_invalid", error=line)
        return EXIT_CONFIG
    for warning in config_warnings(config):
        log.warning("config_warning", warning=warning)
    return asyncio.run(_run(config, args.config, overrides))


async def _run(config: Config, path: str | None, overrides: Mapping[str, Any]) -> int:
    from exporter.service import ExporterService

    service = ExporterService(config)
    lock = asyncio.Lock()
    reloads: set[asyncio.Task[None]] = set()
    stopping = asyncio.Event()

    async def reload() -> None:
        async with lock:  # SIGHUPs in a burst apply one after the other, the last file wins
            await _reload(service, path, overrides)

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
    with _signal_handlers(stopping, on_hup):
        if not await _start(service):
            return EXIT_FAILURE
        log.info("started", version=__version__, url=service.url, config=path, **_counts(config))
        await stopping.wait()
        return await _stop_within_deadline(stop)


async def _reload(service: ExporterService, path: str | None, overrides: Mapping[str, Any]) -> None:
    """Re-read the config for SIGHUP; any failure keeps the running config and records the reload as failed.

    A load failure is recorded here; once the file loaded, ``service.reload`` records the outcome (once).
    """
    log.info("config_reloading", config=path)
    try:
        config = await asyncio.to_thread(_load, path, overrides)
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
        return
    try:
        await service.reload(config)
    except Exception as exc:  # recorded by service.reload; the running config stays
        log.error("config_reload_failed", error=f"cannot apply the config ({type(exc).__name__})")
        return
    for warning in config_warnings(config):
        log.warning("config_warning", warning=warning)


def _counts(config: Config) -> dict[str, Any]:
    # The configured images only: discovery's are not known before its first run (refresh_done says).
    return {
        "static_images": len(config.images),
        "discovery": config.discovery.enabled,
        "interval_seconds": config.refresh.interval_seconds,
    }


# --------------------------------------------------------------------------------------------------------
# check


def _cmd_check(args: argparse.Namespace) -> int:
    configure_logging(args.log_format, args.log_level)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _print_errors(exc.errors)
        return EXIT_CONFIG
    snapshot = asyncio.run(_refresh_once(config))
    rows = [_gated(_check_row(view)) for view in snapshot.views.values()]
    discovery = snapshot.discovery
    if args.output == "json":
        doc: dict[str, Any] = {"images": rows}
        if discovery is not None:
            doc["discovery"] = _gated(
                {"up": discovery.up, "discovered": discovery.discovered, "error": discovery.error_code}
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


def _check_row(view: ImageView) -> dict[str, Any]:
    """One image's verdict as ``check`` prints it (the same verdict the metrics and the page show)."""
    return {
        "image_id": view.image_id,
        "health": str(view.health),
        "status": view.status,
        "regions": {r.region: r.status if r.status is not None else str(r.health) for r in view.replicas},
        "last_error": view.error_code,
        "ok": view.healthy,
        "problems": view.problems,
    }


def _print_table(rows: Sequence[Mapping[str, Any]], snapshot: Snapshot) -> None:
    header = ("IMAGE", "HEALTH", "STATUS", "REGIONS", "LAST ERROR")
    table = [header]
    rank = {str(h): i for i, h in enumerate(HEALTH_ORDER)}
    for row in sorted(rows, key=lambda r: (rank[r["health"]], r["image_id"])):
        regions = " ".join(f"{r}:{s}" for r, s in row["regions"].items()) or "-"
        table.append(
            (row["image_id"], row["health"], row["status"] or "-", regions, row["last_error"] or "-")
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
    counts = ", ".join(f"{n} {h}" for h, n in snapshot.health_counts().items())
    print(f"{len(rows)} images: {counts}")
    discovery = snapshot.discovery
    if discovery is not None and not discovery.up:
        print(f"discovery FAILED ({scrub(discovery.error_code or '?')}): kept {discovery.discovered} images")
    elif discovery is not None:
        print(f"discovery ok: {discovery.discovered} images")


# --------------------------------------------------------------------------------------------------------
# demo, simulate


def _cmd_demo(args: argparse.Namespace) -> int:
    configure_logging(args.log_format, args.log_level)
    return asyncio.run(_demo(args))


async def _demo(args: argparse.Namespace) -> int:
    from exporter.demo import run_demo

    stopping = asyncio.Event()
    with _signal_handlers(stopping):
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
            print(f"simulator: {demo.simulator_url}  (admin API: {demo.simulator_url}/_sim/images)")
            print(f"exporter:  {demo.metrics_url}")
            sys.stdout.flush()
            await stopping.wait()
            return await _stop_within_deadline(stack.aclose)
    return EXIT_OK  # pragma: no cover - the with-block always returns


def _cmd_simulate(args: argparse.Namespace) -> int:
    configure_logging(getattr(args, "log_format", None), getattr(args, "log_level", "info"))
    return asyncio.run(_simulate(args))


async def _simulate(args: argparse.Namespace) -> int:
    from exporter.simulator.cli import run_simulate

    stopping = asyncio.Event()
    with _signal_handlers(stopping):
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

        return await _stop_within_deadline(finish)


# --------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand, return its code."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(_with_default_subcommand(sys.argv[1:] if argv is None else argv))
    if unknown:
        args.subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": _cmd_run,
        "check": _cmd_check,
        "demo": _cmd_demo,
        "simulate": _cmd_simulate,
    }
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down, or before the loop started
        return 130
