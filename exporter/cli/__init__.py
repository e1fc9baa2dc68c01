"""The ``ehpc-image-exporter`` command line: ``run`` (default), ``check``, ``demo`` and ``simulate``.

Exit codes: 0 success (and a clean stop on SIGTERM/SIGINT); 1 a runtime failure (cannot bind, did not stop
in time, ``check`` found an unhealthy or failing image); 2 invalid configuration or usage. A bad config
never produces a traceback and never binds a port.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from exporter.cli.parser import build_parser, with_default_subcommand

if TYPE_CHECKING:
    from exporter.cli.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
    from exporter.config import STOP_TIMEOUT_SECONDS

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "STOP_TIMEOUT_SECONDS", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand, return its code."""
    # Each command imports what it runs, when it runs: --version, --help and a usage error cost the
    # parser alone (leaves only), and run --check-config the config without the service, the client or
    # the renderer. Importing every command up front cost about 0.4 s of CPU before any work.
    arguments = with_default_subcommand(sys.argv[1:] if argv is None else argv)
    if arguments[0] == "simulate":  # the simulator's own flags, parsed only when it is asked for
        from exporter.cli.run import cmd_simulate

        return cmd_simulate(arguments[1:])
    parser = build_parser()
    args, unknown = parser.parse_known_args(arguments)
    if unknown:
        args.subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    command: Callable[[argparse.Namespace], int]
    if args.command == "check":
        from exporter.cli.check import cmd_check as command
    elif args.command == "demo":
        from exporter.cli.run import cmd_demo as command
    else:
        from exporter.cli.run import cmd_run as command
    try:
        return command(args)
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down, or before the loop started
        return 130


def __getattr__(name: str) -> int | float:
    """The exit codes and the stop deadline, imported when first asked for (see :func:`main`)."""
    if name in ("EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK"):
        from exporter.cli import common

        value: int = getattr(common, name)
        return value
    if name == "STOP_TIMEOUT_SECONDS":
        from exporter.config import STOP_TIMEOUT_SECONDS

        return STOP_TIMEOUT_SECONDS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
