"""The ``ehpc-image-exporter`` command line: ``run`` (default), ``check``, ``demo`` and ``simulate``.

Exit codes: 0 success (and a clean stop on SIGTERM/SIGINT); 1 a runtime failure (cannot bind, did not stop
in time, ``check`` found an unhealthy or failing image); 2 invalid configuration or usage. A bad config
never produces a traceback and never binds a port.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from exporter.cli.check import cmd_check
from exporter.cli.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from exporter.cli.parser import build_parser, with_default_subcommand
from exporter.cli.run import cmd_demo, cmd_run, cmd_simulate
from exporter.config import STOP_TIMEOUT_SECONDS

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "STOP_TIMEOUT_SECONDS", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand, return its code."""
    arguments = with_default_subcommand(sys.argv[1:] if argv is None else argv)
    if arguments[0] == "simulate":  # the simulator's own flags, parsed only when it is asked for
        return cmd_simulate(arguments[1:])
    parser = build_parser()
    args, unknown = parser.parse_known_args(arguments)
    if unknown:
        args.subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": cmd_run,
        "check": cmd_check,
        "demo": cmd_demo,
    }
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down, or before the loop started
        return 130
