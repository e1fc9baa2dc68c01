"""The argument parser: every subcommand and flag, spelled as the Prometheus tools spell them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from exporter.argtypes import bounded
from exporter.buildinfo import BuildInfo

# Not exporter.logging, which loads structlog and aiohttp: building this parser is all that --help and
# --version cost, so it imports only leaves.
from exporter.logformat import LEVELS, LOG_FORMATS

PROG = "ehpc-image-exporter"
# SIGTERM to exit: Kubernetes waits 30 s by default, our promise is 5 s; leave margin inside it.
SUBCOMMANDS = ("run", "check", "demo", "simulate")
SIMULATE_HELP = "serve the E-HPC Instant API simulator alone"
SIMULATE_DESCRIPTION = (
    "Serve the local E-HPC Instant API simulator (signature checks, fault injection,\n"
    "admin API under /_sim/). Needs the simulator: pip install ./simulator\n"
    "(ehpc-image-exporter-simulator)."
)


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


class _VersionAction(argparse.Action):
    """``--version``: the text is made when the flag is given, not each time the parser is built (from a
    checkout it asks git, a process of its own, which ``run`` and ``check`` would otherwise pay for)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        kwargs.setdefault("help", "show program's version number and exit")
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        sys.stdout.write(version_text() + "\n")
        parser.exit()


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


def _add_sharding_flags(parser: argparse.ArgumentParser) -> None:
    # Strings, parsed by exporter.sharding: its errors name the flag, the value and the other side of a
    # conflict (argparse's int would only say "invalid int value").
    parser.add_argument(
        "--shard",
        metavar="N",
        default=None,
        help="this replica's shard, 0 <= N < total (overrides sharding.shard; conflicts with a --pod of"
        " another ordinal)",
    )
    parser.add_argument(
        "--total-shards",
        dest="total_shards",
        metavar="N",
        default=None,
        help="how many shards split the images (overrides sharding.shards; default: env EHPC_TOTAL_SHARDS,"
        " else the config file); above 1 without --shard, the ordinal comes from the pod name",
    )
    parser.add_argument(
        "--pod",
        metavar="NAME",
        default=None,
        help="StatefulSet pod name whose trailing -<n> is the shard (default: env POD_NAME, used when the"
        " total is above 1 and --shard is not given)",
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
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="{run,check,demo,simulate}")

    run = sub.add_parser(
        "run",
        formatter_class=_HelpFormatter,
        help="serve /metrics, refreshing in the background (default)",
        description=(
            "Serve metrics about the configured images, refreshed in the background; scrapes never call\n"
            "the API. SIGHUP (or POST /-/reload with --web.enable-lifecycle) reloads the config file (a\n"
            "bad file keeps the running config and sets ehpc_config_last_reload_successful to 0); SIGTERM\n"
            "or SIGINT stops within 5 seconds. --shard/--total-shards/--pod split the images over\n"
            "replicas (docs/sharding.md)."
        ),
    )
    _add_config_flag(run, required=False)
    run.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config (and the web config file) and exit: 0 if valid, 2 with one line per"
        " error on stderr otherwise (a state.path whose directory is missing or not writable is one);"
        " warnings (an undocumented region, an odd image id) are printed and do not change the exit code",
    )
    _add_web_flags(run)
    run.add_argument(
        "--web.enable-lifecycle",
        dest="web_enable_lifecycle",
        action="store_true",
        help="answer POST /-/reload with a config reload, as SIGHUP does (off: 403, as in Prometheus)",
    )
    _add_sharding_flags(run)
    _add_logging_flags(run)
    run.add_argument("--version", action=_VersionAction)

    check = sub.add_parser(
        "check",
        formatter_class=_HelpFormatter,
        help="refresh once and print a table; exit 1 if any image is unhealthy or failing, or a discovery"
        " failed",
        description=(
            "Call the API once for every watched image and print image, status, replication regions\n"
            "(region:status) and last error. Exit 0 if every image is healthy, every requested region\n"
            "is replicated and every discovery (ListImages) succeeded; 1 if any image is unhealthy,\n"
            "incompletely replicated or failing, or a discovery failed (its images may be unwatched);\n"
            "2 if the config is invalid. With the sharding flags (or in a sharded pod) only that shard's\n"
            "share."
        ),
    )
    _add_config_flag(check, required=True)
    _add_sharding_flags(check)
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
            "both URLs; first metrics within a few seconds. Use port 0 to pick free ports. Needs the\n"
            "simulator: pip install ./simulator (ehpc-image-exporter-simulator), as `make demo` does."
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
        help="simulated images of prod in its home region; each other (account, region) gets a quarter as"
        " many (at least 3), and prod also watches one image that does not exist, in both its regions",
    )
    demo.add_argument(
        "--interval", type=_positive_float, default=15.0, metavar="SECONDS", help="refresh interval"
    )
    demo.add_argument("--seed", type=int, default=7, help="seed of the generated fleet")
    _add_logging_flags(demo)

    # Its flags are the simulator's own: build_simulate_parser() adds them when the command is run, so
    # the other commands never import the simulator (a separate distribution that may be absent).
    sub.add_parser(
        "simulate",
        formatter_class=_HelpFormatter,
        help=SIMULATE_HELP,
        description=SIMULATE_DESCRIPTION,
        add_help=False,
    )
    for name, subparser in (("run", run), ("check", check), ("demo", demo)):
        # Each subcommand answers a flag it does not know with its own usage, not the top-level one.
        subparser.set_defaults(subparser=subparser, command=name)
    return parser


def build_simulate_parser(
    add_arguments: Callable[[argparse.ArgumentParser], None],
) -> argparse.ArgumentParser:
    """The ``simulate`` parser: the simulator's flags (``add_arguments``) and the logging flags."""
    parser = argparse.ArgumentParser(
        prog=f"{PROG} simulate", formatter_class=_HelpFormatter, description=SIMULATE_DESCRIPTION
    )
    add_arguments(parser)
    taken = set(parser._option_string_actions)  # the simulator may define its own logging flags
    if not {"--log.format", "--log-format", "--log.level", "--log-level"} & taken:
        _add_logging_flags(parser)
    return parser


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


def with_default_subcommand(argv: Sequence[str]) -> list[str]:
    """``ehpc-image-exporter --config x`` means ``ehpc-image-exporter run --config x``."""
    args = list(argv)
    if not args:
        return ["run"]
    if args[0] in SUBCOMMANDS or args[0] in ("-h", "--help", "--version"):
        return args
    return ["run", *args]
