"""``python -m ehpc_simulator``: the simulator on its own."""

from ehpc_simulator.cli import main

main()
