"""`python -m bench [--quick] [--only NAME ...] [--profile]`: run the benchmarks and print one table.

The full run writes bench/results.json and the generated block of bench/RESULTS.md; a quick run
writes nothing unless --json is given, so smoke checks never overwrite the committed results. --merge
records the rows of a partial run (--only) in bench/results.json, each naming its run, and keeps the
others. A run that measured the series suite (not --quick) rewrites the README's table of series and
bytes per mode.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from bench import (
    adaptive,
    credentials,
    fleet,
    limits,
    memory,
    refresh,
    scrape,
    sdk,
    series,
    sharding,
    warmstart,
)
from bench.common import BENCH_DIR, Result, Settings
from bench.report import machine, machine_md, merge_json, table, update_results_md, write_json

SUITES: dict[str, Callable[[Settings], Awaitable[list[Result]]]] = {
    "refresh": refresh.run,
    "sdk": sdk.run,
    "scrape": scrape.run,
    "memory": memory.run,
    "fleet": fleet.run,
    "adaptive": adaptive.run,
    "warmstart": warmstart.run,
    "sharding": sharding.run,
    "credentials": credentials.run,
    "limits": limits.run,
    "series": series.run,
}


async def run_all(settings: Settings, only: Sequence[str]) -> list[Result]:
    """Run the chosen suites one after another (never in parallel: they would share the 2 cores)."""
    results: list[Result] = []
    for name, suite in SUITES.items():
        if only and name not in only:
            continue
        start = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        got = await suite(settings)
        print(f"  {name}: {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
        results += got
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; the exit status is 0 even when a target is missed (the table says so)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small fleets, 3 repeats: a smoke check")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement (median taken)")
    parser.add_argument("--only", nargs="*", choices=sorted(SUITES), default=[], help="run only these")
    parser.add_argument("--profile", action="store_true", help="also write pyinstrument profiles")
    parser.add_argument("--json", type=Path, help="write results here (default: bench/results.json, full)")
    parser.add_argument("--no-write", action="store_true", help="print only, write no files")
    parser.add_argument(
        "--merge", action="store_true", help="record this run's rows in bench/results.json, keep the others"
    )
    args = parser.parse_args(argv)
    settings = Settings(quick=args.quick, repeats=max(3, args.repeats), profile=args.profile)
    from exporter.logging import configure_logging

    configure_logging("console", "warning")  # the in-process refreshes would log every cycle at info
    start = time.perf_counter()
    results = asyncio.run(run_all(settings, args.only))
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    m = machine(command.strip(), time.perf_counter() - start)
    print(machine_md(m))
    print()
    print(table(results))
    full = not args.quick and not args.only and not args.profile  # profiled timings carry overhead
    if not args.no_write:
        json_path = args.json or (BENCH_DIR / "results.json" if full else None)
        if json_path is not None:
            write_json(json_path, results, m)
        if full:
            update_results_md(BENCH_DIR / "RESULTS.md", results, m)
        if args.merge and not full and not args.quick and not args.profile:
            merge_json(BENCH_DIR / "results.json", results, m)
        if not args.quick and not args.profile:
            series.update_readme(results, m["command"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
