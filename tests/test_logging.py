"""Logging: the configured output (JSON or console, level, UTC timestamps) and, above all, that no secret
survives into a log line whichever way a caller hands it over."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest
import structlog
from structlog.testing import capture_logs

from exporter import redaction as elog
from exporter.logging import REDACTED, configure_logging, mask_secrets, redact, register_secret, reset_logging

SECRET = "LogTestSecretValue-9f8e7d6c5b4a"
TOKEN = "CAIS-LogTestStsToken-0123456789abcdef"


class Holder:
    """An arbitrary object whose repr would carry a secret."""

    def __repr__(self) -> str:
        return f"Holder(key={SECRET})"


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    register_secret(SECRET)
    register_secret(TOKEN)
    yield
    reset_logging()


def emit_everything(log: structlog.typing.FilteringBoundLogger) -> None:
    """Hand the secret over in every way a careless caller might."""
    log.info("as_field", access_key_secret=SECRET, Security_Token=TOKEN, AUTHORIZATION="ACS3 x")
    log.info(
        "nested", config={"credentials": {"key": SECRET, "Password": "hunter2-long"}}, items=[{"t": TOKEN}]
    )
    log.info(f"embedded {SECRET} in the message", detail=f"prefix-{TOKEN}-suffix")
    log.info("in_a_list", values=["ok", SECRET, ("tuple", TOKEN)])
    log.info("in_an_object", obj=Holder(), url="https://user:hunter2-long@sts.example.com/x")
    try:
        raise RuntimeError(f"request failed with key {SECRET}")
    except RuntimeError:
        log.exception("with_traceback")
    logging.getLogger("aiohttp.client").error("stdlib says %s and %s", SECRET, TOKEN)


def test_redact_processor_with_capture_logs() -> None:
    """structlog.testing.capture_logs with the redaction processor: every route is masked."""
    with capture_logs(processors=[redact]) as entries:
        log = structlog.get_logger("ehpc.test")
        log.info("as_field", access_key_secret=SECRET, Security_Token=TOKEN, credentials_uri="http://x")
        log.info("nested", config={"credentials": {"key": SECRET}}, items=[{"password": "p"}, [TOKEN]])
        log.info(f"embedded {SECRET} in the message", detail=f"prefix-{TOKEN}-suffix", count=3)
        log.info("object", obj=Holder(), flag=True, none=None)
    assert entries[0]["access_key_secret"] == REDACTED
    assert entries[0]["Security_Token"] == REDACTED
    assert entries[0]["credentials_uri"] == REDACTED  # the key says "credential": over-redacting is fine
    assert entries[1]["config"] == {"credentials": REDACTED}
    assert entries[1]["items"] == [{"password": REDACTED}, [REDACTED]]
    assert entries[2]["event"] == f"embedded {REDACTED} in the message"
    assert entries[2]["detail"] == f"prefix-{REDACTED}-suffix"
    assert entries[2]["count"] == 3
    assert entries[3]["obj"] == f"Holder(key={REDACTED})"
    assert entries[3]["flag"] is True
    assert entries[3]["none"] is None
    assert SECRET not in repr(entries)
    assert TOKEN not in repr(entries)


def test_real_json_output_never_contains_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    """The configured production pipeline (JSON on stderr), structlog and stdlib records alike."""
    configure_logging("json", "info")
    emit_everything(structlog.get_logger("ehpc.test"))
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 7
    records = [json.loads(line) for line in lines]
    for record in records:
        assert list(record)[:2] == ["timestamp", "level"]
        stamp = datetime.fromisoformat(record["timestamp"])
        assert stamp.utcoffset() is not None
        assert stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert SECRET not in captured.err
    assert TOKEN not in captured.err
    assert "hunter2-long" not in captured.err
    assert records[0]["logger"] == "ehpc.test"
    assert records[0]["access_key_secret"] == REDACTED
    assert records[2]["event"] == f"embedded {REDACTED} in the message"
    assert records[4]["url"] == f"https://{REDACTED}@sts.example.com/x"  # the whole userinfo goes
    assert "RuntimeError: request failed with key [REDACTED]" in records[5]["exception"]
    assert records[6] == records[6] | {"logger": "aiohttp.client", "level": "error"}
    assert records[6]["event"] == f"stdlib says {REDACTED} and {REDACTED}"


def test_console_output_never_contains_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("console", "debug")
    emit_everything(structlog.get_logger("ehpc.test"))
    err = capsys.readouterr().err
    assert "as_field" in err
    assert "with_traceback" in err
    assert not err.lstrip().startswith("{")
    assert SECRET not in err
    assert TOKEN not in err


def test_default_format_is_json_when_not_a_tty(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(None, "info")
    structlog.get_logger("ehpc.x").info("hello", n=1)
    record = json.loads(capsys.readouterr().err)
    assert record["event"] == "hello"
    assert record["n"] == 1


def test_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "warning")
    log = structlog.get_logger("ehpc.x")
    log.debug("d")
    log.info("i")
    log.warning("w")
    logging.getLogger("aiohttp.server").info("stdlib info")
    logging.getLogger("aiohttp.server").warning("stdlib warning")
    events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert events == ["w", "stdlib warning"]


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("json", "loud")


def test_configuring_twice_does_not_duplicate_stdlib_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "info")
    configure_logging("json", "info")
    logging.getLogger("x").warning("once")
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_register_secret_ignores_none_and_short_values_and_is_bounded() -> None:
    """Rotating secrets are bounded (oldest dropped); pinned ones (the config file's) stay."""
    register_secret("pinned-config-secret", pin=True)
    before = elog.registered_secret_count()
    register_secret(None)
    register_secret("")
    register_secret("abc")
    assert elog.registered_secret_count() == before
    assert mask_secrets("abc") == "abc"
    for i in range(elog.MAX_SECRETS + 5):
        register_secret(f"rotating-token-{i:04d}")
    assert elog.registered_secret_count() <= elog.MAX_SECRETS + before
    assert mask_secrets("pinned-config-secret") == REDACTED
    assert mask_secrets("rotating-token-0000") == "rotating-token-0000"  # the oldest were dropped
    last = f"rotating-token-{elog.MAX_SECRETS + 4:04d}"
    assert mask_secrets(f"<{last}>") == f"<{REDACTED}>"


def test_longest_secret_masked_whole() -> None:
    register_secret("overlapping")
    register_secret("overlapping-and-longer")
    assert mask_secrets("x overlapping-and-longer y") == f"x {REDACTED} y"
