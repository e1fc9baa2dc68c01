"""Shared pytest configuration; fixtures live in tests/fixtures/ and are registered here."""

pytest_plugins = [
    "tests.fixtures.clock",
    "tests.fixtures.promstack",
    "tests.fixtures.sim",
    "tests.fixtures.estate",  # after sim: it imports sim's helpers
    "tests.fixtures.tls",
    "tests.reliability",
]

from collections.abc import Iterator  # noqa: E402 - after pytest_plugins, which pytest reads first

import pytest  # noqa: E402

from exporter.redaction import scoped_secrets  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_secret_registry() -> Iterator[None]:
    """Each test starts and ends with the same registered secrets.

    The registry is process-wide by design (a secret registered once is masked everywhere); in one pytest
    process that would let a test's random secrets (hypothesis generates thousands) mask, and make the
    gate refuse, values in later tests.
    """
    with scoped_secrets():
        yield
