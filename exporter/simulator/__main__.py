"""``python -m exporter.simulator``: the simulator on its own."""

from exporter.simulator.cli import main

main()
