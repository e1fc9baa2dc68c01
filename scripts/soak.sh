#!/usr/bin/env bash
# Release check: the fault soak (and the leak checks) for much longer than `make test` runs it.
#
#   scripts/soak.sh [SECONDS]        default 1800 (half an hour under faults)
#
# Writes soak-report.md (the reliability report of this run; not committed) and
# soak-measurements.json (exact numbers) in the current directory. Exit status is pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-1800}"
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "usage: $0 [SECONDS]" >&2; exit 2; }
# pytest-timeout: the soak plus generous room for start-up, the simulator restart and the clean cycles.
export SOAK_SECONDS="$seconds"
export RELIABILITY_REPORT="${RELIABILITY_REPORT:-soak-report.md}"
export RELIABILITY_MEASUREMENTS="${RELIABILITY_MEASUREMENTS:-soak-measurements.json}"
exec .venv/bin/pytest -q -p no:cacheprovider --timeout "$((seconds + 600))" tests/test_soak.py tests/test_leaks.py
