"""A faithful local simulator of the Alibaba Cloud E-HPC Instant API (2023-07-01) for tests and the demo.

See :mod:`exporter.simulator.server` for the API behaviour, :mod:`.admin` for the admin API (``/_sim/``),
:mod:`.scripts` for timed status changes, :mod:`.auth` and :mod:`.acs3` for the signature checks (the
simulator's own, sharing nothing with :mod:`exporter.openapi`), :mod:`.catalogue` for the error codes,
:mod:`.fleet` for the fleet file format and :mod:`.cli` for the command line. :mod:`.estate` plays several
accounts and regions with an STS (:mod:`.sts`, :mod:`.rpcsig`, :mod:`.jwt`, :mod:`.certs`);
docs/simulator-estate.md sums it up.
"""

from exporter.simulator.estate import Estate, EstateEndpoints
from exporter.simulator.fleet import generate_fleet, load_fleet
from exporter.simulator.model import Faults, SimImage
from exporter.simulator.scripts import ScriptStep
from exporter.simulator.server import DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET, Simulator

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
