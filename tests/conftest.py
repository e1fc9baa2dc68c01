"""Shared pytest configuration; fixtures live in tests/fixtures/ and are registered here."""

pytest_plugins = [
    "tests.fixtures.promstack",
    "tests.fixtures.sim",
    "tests.fixtures.tls",
    "tests.reliability",
]
