"""The shipped example configs work as documented, against the real simulator."""

from __future__ import annotations

from pathlib import Path

from ehpc_simulator import DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET, generate_fleet
from exporter.config.load import config_warnings, load_config
from exporter.service import ExporterService
from tests.fixtures.sim import SimulatorFactory

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def test_simulator_example_discovers_and_refreshes_the_simulated_fleet(
    simulator_factory: SimulatorFactory,
) -> None:
    """Why: the README sends newcomers to examples/simulator.yaml; its key pair and discovery must work.

    Only the endpoint is overridden (the example names the simulator's default port; the test binds a
    free one), exactly as a user would with a different port.
    """
    fleet = generate_fleet(12, ["cn-beijing", "cn-shanghai"], seed=3)
    keys = {DEMO_ACCESS_KEY_ID: DEMO_ACCESS_KEY_SECRET}
    async with simulator_factory(images=fleet, access_keys=keys) as sim:
        config = load_config(EXAMPLES / "simulator.yaml", {"api.endpoint": sim.url})
        assert config_warnings(config) == []
        snapshot = await ExporterService(config, process_metrics=False).refresh_once()
    assert {k.image_id for k in snapshot.images} == {image.image_id for image in fleet}
    # Every image answered or failed with the error the fleet assigns it; none failed on auth.
    codes = {state.error.code for state in snapshot.images.values() if state.error}
    assert not codes & {"SignatureDoesNotMatch", "InvalidAccessKeyId.NotFound", "IncompleteSignature"}
    assert sum(s.up for s in snapshot.images.values()) >= 9
