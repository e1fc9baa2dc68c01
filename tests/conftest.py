"""Shared pytest configuration; fixtures live in tests/fixtures/ and are registered here."""

pytest_plugins = [
    "tests.fixtures.clock",
    "tests.fixtures.http",
    "tests.fixtures.promstack",
    "tests.fixtures.sim",
    "tests.fixtures.estate",  # after sim: it imports sim's helpers
    "tests.fixtures.tls",
    "tests.helm_render",
    "tests.reliability",
]

from collections.abc import Iterator  # noqa: E402 - after pytest_plugins, which pytest reads first

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

from exporter.redaction import scoped_secrets  # noqa: E402

# Hypothesis' per-example deadline (200 ms by default) is a wall-clock budget: on a busy machine a correct
# example misses it. Examples are judged on what they return; a hang is bounded by pytest-timeout.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")


@pytest.fixture(autouse=True)
def _isolated_secret_registry() -> Iterator[None]:
    """Each test starts and ends with the same registered secrets.

    The registry is process-wide by design (a secret registered once is masked everywhere); in one pytest
    process that would let a test's random secrets (hypothesis generates thousands) mask, and make the
    gate refuse, values in later tests.
    """
    with scoped_secrets():
        yield
