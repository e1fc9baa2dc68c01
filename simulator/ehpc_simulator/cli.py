"""Command line of ``ehpc-image-exporter simulate``, ``ehpc-simulator`` and ``python -m ehpc_simulator``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import math
import re
import ssl
import sys
from collections.abc import Callable
from typing import TextIO, TypeVar

from ehpc_simulator.admin import ENDPOINTS as ADMIN_ENDPOINTS
from ehpc_simulator.admin import ESTATE_ENDPOINTS
from ehpc_simulator.catalogue import is_known
from ehpc_simulator.estate import Estate
from ehpc_simulator.fleet import generate_fleet, load_fleet
from ehpc_simulator.model import Faults, SimImage
from ehpc_simulator.scripts import UnknownImageError, load_steps
from ehpc_simulator.server import DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET, Simulator

DEFAULT_LISTEN_ADDRESS = "127.0.0.1:9766"
DEFAULT_REGIONS = "cn-beijing,cn-shanghai"
DEFAULT_IMAGES = 50


_HOST_RE = re.compile(r"^[A-Za-z0-9._-]+$")
N = TypeVar("N", int, float)


def split_host_port(value: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` -> (host, port), an empty host meaning every interface.

    The simulator's own parser (it imports nothing of the exporter); ValueError with a one-line message.
    """
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":") or ":" not in host:
            raise ValueError("must be host:port, with an IPv6 host in brackets like [::1]:9766")
        port_text = rest[1:]
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise ValueError("must be host:port, like ':9766' or '127.0.0.1:9766'")
        if ":" in host:
            raise ValueError("an IPv6 host must be in brackets, like [::1]:9766")
        if host and not _HOST_RE.match(host):
            raise ValueError("invalid host")
    # ASCII digits only, and few of them: int() takes '٣' and raises on 5,000 digits.
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5) or int(port_text) > 65535:
        raise ValueError("port must be a number from 0 to 65535")
    return host, int(port_text)


def parse_listen_address(value: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (all interfaces) -> (host, port), as an argparse type."""
    try:
        host, port = split_host_port(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}: {exc}") from None
    return host or "0.0.0.0", port  # noqa: S104 - ":PORT" asks for every interface


def bounded(
    kind: Callable[[str], N], what: str, *, low: float = 0, above: bool = False, high: float = math.inf
) -> Callable[[str], N]:
    """An argparse ``type``: a finite ``kind(text)`` in ``[low, high]`` (``(low, high]`` with ``above``)."""

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (above and value == low) or value > high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def _access_key(value: str) -> tuple[str, str]:
    ak, sep, secret = value.partition(":")
    if not sep or not ak or not secret:
        raise argparse.ArgumentTypeError("expected ID:SECRET")
    return ak, secret


_probability = bounded(float, "a probability between 0 and 1", high=1)
_non_negative = bounded(float, "a non-negative number")
_positive = bounded(float, "a positive number", above=True)
_non_negative_int = bounded(int, "a non-negative integer")


def _error_code(value: str) -> str:
    if not is_known(value):
        raise argparse.ArgumentTypeError(f"unknown error code {value!r}")
    return value


def _error_rate(value: str) -> tuple[str, float]:
    code, sep, p = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError("expected CODE=PROBABILITY, e.g. ServiceUnavailable=0.05")
    return _error_code(code), _probability(p)


def _regions(value: str) -> list[str]:
    return [r.strip() for r in value.split(",") if r.strip()]


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags to ``parser`` (every one documented in ``--help``)."""
    g = parser.add_argument_group(
        "simulator",
        description="Admin API (JSON, unauthenticated, on the same address; "
        "see ehpc_simulator/admin.py): " + "; ".join(ADMIN_ENDPOINTS) + ".",
    )
    g.add_argument(
        "--listen-address",
        default=DEFAULT_LISTEN_ADDRESS,
        type=parse_listen_address,
        metavar="HOST:PORT",
        help=f"Address to serve the API and the unauthenticated /_sim/ admin API on "
        f"(default {DEFAULT_LISTEN_ADDRESS}; keep it on loopback). Port 0 picks a free port.",
    )
    g.add_argument(
        "--access-key",
        action="append",
        type=_access_key,
        default=None,
        metavar="ID:SECRET",
        help=f"An AccessKey pair the API accepts; repeatable. Default: the public demo pair "
        f"{DEMO_ACCESS_KEY_ID}:{DEMO_ACCESS_KEY_SECRET} (demo values, not secrets).",
    )
    g.add_argument(
        "--region-id",
        default="cn-hangzhou",
        metavar="REGION",
        help="Region the endpoint plays: HostId and registry hosts (default cn-hangzhou).",
    )
    g.add_argument(
        "--fleet",
        metavar="FILE",
        help="YAML or JSON fleet file (format: ehpc_simulator/fleet.py; example: "
        "simulator/ehpc_simulator/example-fleet.yaml in the source tree).",
    )
    g.add_argument(
        "--estate",
        metavar="FILE",
        help="YAML or JSON estate file: several accounts x regions and an STS (format: "
        "ehpc_simulator/estate.py; example: simulator/ehpc_simulator/example-estate.yaml). Endpoints: one "
        "port per region, from the --listen-address port on (port, port+1, ... in the file's region order; "
        "port 0: free ports), each serving every account (admin API: /_sim/...?account=NAME); then the "
        "STS over HTTPS on the next port, with its estate admin API (" + "; ".join(ESTATE_ENDPOINTS) + "). "
        "The STS certificate is --tls-cert/--tls-key when given, else a throwaway CA's whose PEM path is "
        "printed. The image, fleet, key and fault flags do not apply (the file sets them).",
    )
    g.add_argument(
        "--script",
        metavar="FILE",
        help="YAML or JSON list of timed steps, due after_seconds from the simulator's start, e.g. "
        '[{"after_seconds": 300, "image_id": "m-...", "region": "cn-beijing", "status": "Available"}] '
        "(format: ehpc_simulator/scripts.py; more through POST /_sim/scripts). Not with --estate.",
    )
    g.add_argument(
        "--images",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help=f"Generate N images with a realistic mix of states (default {DEFAULT_IMAGES} without --fleet, "
        f"0 with it; generated images are added after the fleet file's).",
    )
    g.add_argument(
        "--regions",
        type=_regions,
        default=_regions(DEFAULT_REGIONS),
        metavar="A,B,C",
        help=f"Additional regions generated images are copied to (default {DEFAULT_REGIONS}).",
    )
    g.add_argument(
        "--seed", type=int, default=0, metavar="N", help="Seed of the generated fleet (default 0)."
    )
    g.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain: serve HTTPS (needs --tls-key).")
    g.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert.")
    g.add_argument(
        "--qps-limit",
        type=_positive,
        default=None,
        metavar="QPS",
        help="Server-side request rate limit; excess requests answer Throttling.User (default: none).",
    )
    g.add_argument(
        "--retry-after-ms",
        type=_non_negative_int,
        default=None,
        metavar="MS",
        help="Send x-acs-retry-after: MS with Throttling answers (default: not sent).",
    )
    g.add_argument(
        "--latency-ms", type=_non_negative, default=0.0, metavar="MS", help="Latency added to every answer."
    )
    g.add_argument(
        "--jitter-ms",
        type=_non_negative,
        default=0.0,
        metavar="MS",
        help="Uniform jitter, plus or minus, around --latency-ms (never below 0).",
    )
    g.add_argument(
        "--error-rate",
        action="append",
        type=_error_rate,
        default=None,
        metavar="CODE=P",
        help="Answer API error CODE (at its HTTP status) with probability P; repeatable. "
        "E.g. ServiceUnavailable=0.05, Throttling.User=0.02, NotAuthorized=0.01.",
    )
    g.add_argument(
        "--global-error",
        type=_error_code,
        default=None,
        metavar="CODE",
        help="Answer every GetImage/ListImages with this error code (e.g. NotAuthorized).",
    )
    g.add_argument(
        "--timeout-rate",
        type=_probability,
        default=0.0,
        metavar="P",
        help="Probability of stalling without an answer for --timeout-seconds.",
    )
    g.add_argument(
        "--timeout-seconds",
        type=_non_negative,
        default=30.0,
        metavar="S",
        help="Length of an injected stall; make it longer than the client's timeout (default 30).",
    )
    g.add_argument(
        "--reset-rate",
        type=_probability,
        default=0.0,
        metavar="P",
        help="Probability of resetting the connection.",
    )
    g.add_argument(
        "--malformed-rate",
        type=_probability,
        default=0.0,
        metavar="P",
        help="Probability of a 200 answer whose body is not valid JSON.",
    )
    g.add_argument(
        "--fault-seed", type=int, default=None, metavar="N", help="Seed of the fault draws (default: random)."
    )


def build_simulator(args: argparse.Namespace) -> Simulator:
    """The Simulator the parsed flags describe; ValueError/OSError for a bad fleet file."""
    images: list[SimImage] = load_fleet(args.fleet) if args.fleet else []
    count = args.images if args.images is not None else (0 if args.fleet else DEFAULT_IMAGES)
    generated = generate_fleet(count, args.regions, seed=args.seed, home_region=args.region_id)
    taken = {i.image_id for i in images}
    images += [i for i in generated if i.image_id not in taken]
    faults = Faults(
        error_rates=dict(args.error_rate or []),
        timeout_rate=args.timeout_rate,
        timeout_seconds=args.timeout_seconds,
        reset_rate=args.reset_rate,
        malformed_rate=args.malformed_rate,
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        qps_limit=args.qps_limit,
        retry_after_ms=args.retry_after_ms,
        global_error=args.global_error,
        seed=args.fault_seed,
    )
    keys = dict(args.access_key) if args.access_key else {DEMO_ACCESS_KEY_ID: DEMO_ACCESS_KEY_SECRET}
    return Simulator(images=images, access_keys=keys, faults=faults, region_id=args.region_id)


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if not args.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.tls_cert, args.tls_key)
    return ctx


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def run_simulate(args: argparse.Namespace, *, out: TextIO | None = None) -> None:
    """Serve the simulator the flags describe until cancelled; prints the URL when ready.

    A bad fleet file or TLS file raises ValueError (one line); a busy port raises OSError.
    """
    stream = out if out is not None else sys.stdout
    if getattr(args, "estate", None):
        await _run_estate(args, stream)
        return
    try:
        ssl_context = _ssl_context(args)
        sim = build_simulator(args)
        script = getattr(args, "script", None)
        if script:
            # Scheduled just before the port opens: "from the simulator's start", to a millisecond.
            try:
                sim.schedule(load_steps(script))
            except UnknownImageError as exc:
                raise ValueError(f"{script}: {exc}") from None
    except (ValueError, OSError) as exc:  # ssl.SSLError is an OSError
        # An ordinary exception (not SystemExit), so a caller running this in a task can report it.
        raise ValueError(f"simulate: {exc}") from None
    host, port = args.listen_address
    if not _is_loopback(host):
        print(
            f"warning: the simulator's /_sim/ admin API is unauthenticated and now listens on {host}",
            file=sys.stderr,
        )
    async with sim.serve(host, port, ssl_context=ssl_context) as url:
        key_ids = ", ".join(sim.access_keys)
        print(f"E-HPC Instant simulator listening on {url}", file=stream)
        print(f"  region {sim.region_id}, {len(sim.images)} images, access key id(s): {key_ids}", file=stream)
        if sim.pending_steps:
            print(f"  timed script: {len(sim.pending_steps)} step(s) ({url}/_sim/scripts)", file=stream)
        print(f"  admin API: {url}/_sim/ (STS credentials: {url}/_sim/sts)", file=stream, flush=True)
        await asyncio.Event().wait()


async def _run_estate(args: argparse.Namespace, stream: TextIO) -> None:
    """``--estate``: serve the file's regions and STS until cancelled; prints every endpoint when ready."""
    try:
        if getattr(args, "script", None):
            # Which account's region a step meant is not in the step; the admin API takes ?account=.
            raise ValueError("--script: not with --estate; POST /_sim/scripts?account=NAME to a region port")
        ssl_context = _ssl_context(args)
        estate = Estate.load(args.estate)
    except (ValueError, OSError) as exc:
        # One line per problem (an estate file reports them all), each saying which command it is from.
        raise ValueError("\n".join(f"simulate: {line}" for line in str(exc).splitlines())) from None
    host, port = args.listen_address
    if not _is_loopback(host):
        print(
            f"warning: the simulator's /_sim/ admin API is unauthenticated and now listens on {host}",
            file=sys.stderr,
        )
    ports = {r: port + n if port else 0 for n, r in enumerate(estate.regions)}
    sts_port = port + len(estate.regions) if port else 0
    async with estate.serve(host, region_ports=ports, sts_port=sts_port, sts_ssl_context=ssl_context) as ep:
        print(f"E-HPC Instant estate simulator: {len(estate.accounts)} account(s)", file=stream)
        for region_id, url in ep.region_urls.items():
            print(f"  region {region_id}: {url} (admin API: {url}/_sim/?account=NAME)", file=stream)
        print(f"  STS: {ep.sts_url} (admin API: {ep.sts_url}/_sim/)", file=stream)
        if ep.ca_file:
            print(f"  STS CA certificate: {ep.ca_file}", file=stream)
        for account in estate.accounts:
            keys = ", ".join(account.access_keys) or "none"
            roles = ", ".join(r.arn for r in account.roles.values()) or "none"
            print(f"  account {account.name} ({account.id}): access keys {keys}; roles {roles}", file=stream)
        stream.flush()
        await asyncio.Event().wait()


def main(argv: list[str] | None = None, prog: str = "python -m ehpc_simulator") -> None:
    """Run the simulator alone (``python -m ehpc_simulator``, ``ehpc-simulator``)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    add_simulate_arguments(parser)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        try:
            asyncio.run(run_simulate(args))
        except (ValueError, OSError) as exc:
            parser.exit(1, f"{exc}\n")


def console() -> None:
    """The ``ehpc-simulator`` console script."""
    main(prog="ehpc-simulator")
