"""A faithful local simulator of the Alibaba Cloud E-HPC Instant API (2023-07-01) for tests and the demo.

A distribution of its own (``ehpc-image-exporter-simulator``, simulator/ in the exporter's repository)
that imports nothing of the exporter: it referees the exporter's protocol code, so it must not share it
(an import-linter contract in the repository's pyproject.toml checks this).

See :mod:`ehpc_simulator.server` for the API behaviour, :mod:`.admin` for the admin API (``/_sim/``),
:mod:`.scripts` for timed status changes, :mod:`.auth` and :mod:`.acs3` for the signature checks (the
simulator's own, sharing nothing with :mod:`exporter.openapi`), :mod:`.catalogue` for the error codes,
:mod:`.fleet` for the fleet file format and :mod:`.cli` for the command line. :mod:`.estate` plays several
accounts and regions with an STS (:mod:`.sts`, :mod:`.rpcsig`, :mod:`.jwt`, :mod:`.certs`);
docs/simulator-estate.md sums it up. :mod:`.demo` is the estate of ``ehpc-image-exporter demo``.
"""

from ehpc_simulator.estate import Estate, EstateEndpoints
from ehpc_simulator.fleet import generate_fleet, load_fleet
from ehpc_simulator.model import Faults, SimImage
from ehpc_simulator.scripts import ScriptStep
from ehpc_simulator.server import DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET, Simulator

__all__ = [
    "DEMO_ACCESS_KEY_ID",
    "DEMO_ACCESS_KEY_SECRET",
    "Estate",
    "EstateEndpoints",
    "Faults",
    "ScriptStep",
    "SimImage",
    "Simulator",
    "generate_fleet",
    "load_fleet",
]
