"""Logging: the configured output (JSON or console, level, UTC timestamps) and, above all, that no secret
survives into a log line whichever way a caller hands it over."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import re
import signal
import socket
import string
import uuid
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from exporter import redaction as elog
from exporter.logging import (
    LOG_FORMATS,
    REDACTED,
    LogFormat,
    configure_logging,
    mask_secrets,
    redact,
    register_secret,
    reset_logging,
)
from exporter.redaction import canonical, scoped_secrets
from tests.fixtures.estate import (
    ALPHA_AK,
    ALPHA_HZ_IMAGE,
    ALPHA_SECRET,
    BETA_HZ_IMAGE,
    HZ,
    READER_ARN,
    SELF_READER_ARN,
    RunningEstate,
)
from tests.fixtures.http import wait_until_async
from tests.fixtures.promstack import exporter_command, free_port

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


# ------------------------------------------------------------------------------ third-party loggers

LIBRARY_LOGGER = "credentials"  # where alibabacloud-credentials logs
SECRET_CHARS = string.ascii_letters + string.digits
CONTROLS = st.sampled_from(["\x00", "\x01", "\x1b", "\x7f", "\x85", "\u202e", "\r"])
BREAKS = st.sampled_from(["\n", "\t", "\r\n", "\n\t"])
CONSOLE_LINE = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z \[(info|warning|error)\s*\] ")
LOGFMT_PAIR = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)(?:\s+|$)')


@st.composite
def broken(draw: st.DrawFn, secret: str, breakers: st.SearchStrategy[str]) -> str:
    """``secret`` with characters of ``breakers`` put between some of its characters."""
    return "".join(ch + (draw(breakers) if draw(st.booleans()) else "") for ch in secret)


def attach_like_the_library() -> list[logging.Handler]:
    """What each of alibabacloud-credentials' provider modules does on import (three of them): its
    logger at INFO and a StreamHandler of its own, writing to the stderr of the moment."""
    importlib.import_module("alibabacloud_credentials.provider")  # the real attach, at import
    lib = logging.getLogger(LIBRARY_LOGGER)
    added: list[logging.Handler] = [logging.StreamHandler() for _ in range(3)]
    for handler in added:
        lib.setLevel(logging.INFO)
        lib.addHandler(handler)
    return added


def parse_logfmt(line: str) -> dict[str, str]:
    """One logfmt line as key -> value (unquoted, unescaped); AssertionError if it is not logfmt."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(line):
        m = LOGFMT_PAIR.match(line, pos)
        assert m is not None, f"not logfmt at {pos}: {line!r}"
        value = m.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1), value[1:-1])
        out[m.group(1)] = value
        pos = m.end()
    return out


def records_of(fmt: str, err: str, marker: str) -> list[str]:
    """The text of each record carrying ``marker``; every JSON or logfmt line must parse, and every
    console line naming the marker must start like one of the renderer's records."""
    texts = []
    for line in err.splitlines():
        if fmt == "json":
            record = json.loads(line)
            text = json.dumps(record, ensure_ascii=False) + "".join(str(v) for v in record.values())
        elif fmt == "logfmt":
            record = parse_logfmt(line)
            text = line + "".join(record.values())
        elif marker in line:
            assert CONSOLE_LINE.match(line), line
            record, text = {"logger": LIBRARY_LOGGER}, line
        else:
            continue  # a console record's following lines: its traceback, a line break it kept
        if marker in text:
            assert record["logger"] == LIBRARY_LOGGER, line
            texts.append(text)
    return texts


@settings(max_examples=90, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    fmt=st.sampled_from(LOG_FORMATS),
    secret=st.text(st.sampled_from(SECRET_CHARS), min_size=12, max_size=48),
    unregistered=st.text(st.sampled_from(SECRET_CHARS), min_size=12, max_size=48),
)
def test_library_lines_are_gated_once_in_the_configured_format(
    capsys: pytest.CaptureFixture[str], data: st.DataObject, fmt: LogFormat, secret: str, unregistered: str
) -> None:
    """The credentials library's own logger, with its handlers attached the way it attaches them (after
    logging is configured, as a lazy import does): a registered secret echoed whole, with controls
    inside or split across lines, and an unregistered one quoted in a response body or a URL's query,
    in a message and in a traceback. Each record is one line, in the configured format, once; neither
    secret is in the output, however the output is read (lines joined, escapes undone)."""
    registered = data.draw(st.one_of(st.just(secret), broken(secret, CONTROLS)), label="registered")
    echoed = data.draw(
        st.one_of(st.just(secret), broken(secret, CONTROLS), broken(secret, BREAKS | CONTROLS)),
        label="echoed",
    )
    marker = f"m{uuid.uuid4().hex[:8]}"
    with scoped_secrets():
        register_secret(registered)  # credentials are registered the moment they exist
        configure_logging(fmt, "info")
        added = attach_like_the_library()
        lib = logging.getLogger(LIBRARY_LOGGER)
        try:
            capsys.readouterr()
            lib.warning("Refresh credentials failed %s, cached value is %s", marker, echoed)
            try:
                raise RuntimeError(f"error refreshing credentials, result: {echoed}")
            except RuntimeError:
                lib.exception("refresh %s failed", marker)
            lib.warning('%s result: {"AccessKeySecret": "%s", "Code": "Failure"}', marker, unregistered)
            lib.warning("%s from http://sts.example.com/creds?SecurityToken=%s&x=1", marker, unregistered)
            lib.info("%s an info line, at the configured level", marker)
            err = capsys.readouterr().err
        finally:
            for handler in added:
                lib.removeHandler(handler)
            reset_logging()
    texts = records_of(fmt, err, marker)
    assert len(texts) == 5, err  # once each: no line from the library's own handlers
    for text in [err, canonical(err), *texts, *map(canonical, texts)]:
        assert secret not in text
        assert unregistered not in text


def test_configured_level_holds_for_a_library_that_sets_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    """The library sets its logger to INFO; at the configured warning level its info lines stay out."""
    configure_logging("json", "warning")
    added = attach_like_the_library()
    lib = logging.getLogger(LIBRARY_LOGGER)
    try:
        lib.info("library info")
        lib.warning("library warning")
    finally:
        for handler in added:
            lib.removeHandler(handler)
    events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert events == ["library warning"]


class Collector(logging.Handler):
    """A handler that keeps the records it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep ``record``."""
        self.records.append(record)


def test_every_logger_is_gated_before_any_handler(capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever logger, whatever handler: a handler of the application's (here a second one on the root,
    as pytest's own capture is) only ever sees the gated record, arguments merged, traceback as text."""
    configure_logging("json", "info")
    collector = Collector()
    logging.getLogger().addHandler(collector)
    own = logging.StreamHandler()
    deep = logging.getLogger("some.library.deep")
    deep.addHandler(own)
    deep.propagate = False  # a library that keeps its records to itself
    try:
        try:
            raise ValueError(f"secret={SECRET}")
        except ValueError:
            deep.error("failed with %s", SECRET, exc_info=True)
    finally:
        logging.getLogger().removeHandler(collector)
        deep.removeHandler(own)
        deep.propagate = True
    (record,) = collector.records
    assert record.getMessage() == f"failed with {REDACTED}"
    assert record.args == ()
    assert record.exc_info is None
    assert record.exc_text is not None
    assert "ValueError: secret=[REDACTED]" in record.exc_text
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["exception"] == record.exc_text


# ------------------------------------------------------------------------------ signed requests, warnings

SIGNATURE_CHARS = string.ascii_letters + string.digits + "%"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(LOG_FORMATS),
    signature=st.text(st.sampled_from(SIGNATURE_CHARS), min_size=20, max_size=44),
    token=st.text(st.sampled_from(SECRET_CHARS), min_size=24, max_size=60),
    path=st.sampled_from(["/", "/v1/assume-role", "/sts/"]),
    order=st.permutations(
        ["Action=AssumeRole", "AccessKeyId=LTAI5tX", "Signature", "SecurityToken", "Format=JSON"]
    ),
)
def test_a_signed_request_a_library_quotes_is_cut(
    capsys: pytest.CaptureFixture[str],
    fmt: LogFormat,
    signature: str,
    token: str,
    path: str,
    order: list[str],
) -> None:
    """urllib3 quotes the request it gave up on without its host ("Max retries exceeded with url:
    /?Action=AssumeRole&...&Signature=..."), and alibabacloud-credentials logs that message and its
    traceback. A signed request that never reached STS can be replayed by whoever reads the line until its
    timestamp runs out: its query is cut, whatever the parameters' order, in every format."""
    values = {"Signature": signature, "SecurityToken": token}
    query = "&".join(f"{p}={values[p]}" if p in values else p for p in order)
    message = (
        "HTTPSConnectionPool(host='sts.aliyuncs.com', port=443): Max retries exceeded with url:"
        f" {path}?{query} (Caused by ProxyError('Unable to connect to proxy'))"
    )
    marker = f"m{uuid.uuid4().hex[:8]}"
    configure_logging(fmt, "info")
    lib = logging.getLogger(LIBRARY_LOGGER)
    try:
        capsys.readouterr()
        lib.warning("Refresh credentials failed %s, cached value is None, error: %s", marker, message)
        try:
            raise ConnectionError(message)
        except ConnectionError:
            lib.exception("%s", marker)
        err = capsys.readouterr().err
    finally:
        reset_logging()
    texts = records_of(fmt, err, marker)
    assert len(texts) == 2, err
    for text in [err, *texts]:
        assert signature not in text
        assert token not in text
    # What it says stays readable, in the message and in the traceback.
    assert f"url: {path}?{REDACTED}" in texts[0]
    assert err.count(f"url: {path}?{REDACTED}") == 2
    assert err.count("sts.aliyuncs.com") == 2


@settings(max_examples=60, deadline=None)
@given(
    signature=st.text(st.sampled_from(SIGNATURE_CHARS), min_size=20, max_size=44),
    path=st.sampled_from(["/", "/v1/assume-role"]),
    prefix=st.sampled_from(["credentials file: RetryError: ", "", "("]),
)
def test_a_signed_request_is_cut_from_a_credential_failure_s_reason(
    signature: str, path: str, prefix: str
) -> None:
    """The same message as a failed credential's reason (``image_refresh_failed``'s ``reason``, the
    health board's and ``check``'s): the request's query is cut there too, the words around it kept; a
    path that merely ends a question is left alone."""
    from exporter.credentials import scrub as scrub_reason

    message = (
        f"{prefix}HTTPSConnectionPool(host='sts.aliyuncs.com', port=443): Max retries exceeded with url:"
        f" {path}?Action=AssumeRole&AccessKeyId=LTAI5tX&Signature={signature} (Caused by ProxyError)"
    )
    reason = scrub_reason(message)
    assert signature not in reason
    assert f"url: {path}?[REDACTED] (Caused by ProxyError)" in reason
    assert scrub_reason("and/or? left alone") == "and/or? left alone"
    # A query is cut whatever it holds (an opaque token has no "="), in the reason as in a log record.
    assert scrub_reason(f"url: {path}?{signature}") == f"url: {path}?[REDACTED]"


def test_python_warnings_are_records_in_the_configured_format(capsys: pytest.CaptureFixture[str]) -> None:
    """A library's ``warnings.warn`` (a DeprecationWarning, urllib3's) was a plain-text line on stderr,
    outside the format and the gate: it is one record of ``py.warnings``, gated like any other."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        configure_logging("json", "info")
        try:
            capsys.readouterr()
            warnings.warn(f"call with {SECRET} is deprecated", DeprecationWarning, stacklevel=1)
        finally:
            reset_logging()
    (line,) = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert (record["logger"], record["level"]) == ("py.warnings", "warning")
    assert f"DeprecationWarning: call with {REDACTED} is deprecated" in record["event"]
    assert SECRET not in line


# ------------------------------------------------------------------------------ the real library, for real

PROFILE_AK = "LTAI5tProfileKeyForLogTest"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound and released: a connection to it is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.process
async def test_a_real_exporter_writes_every_line_once_in_json(estate: RunningEstate, tmp_path: Path) -> None:
    """Why: with ``--log.format json``, alibabacloud-credentials wrote plain-text lines to stderr, each
    three times (a handler of its own per module), which broke log parsers.

    The real exporter and the real library, in their own process: one account reaches its credentials
    through the default chain's credentials file (a ram_role_arn profile, so the library's own provider
    calls STS, and fails: the proxy it is sent through refuses), one assumes a role the estate's STS
    refuses it, one works. Every stderr line is one JSON record; the library's records are there, each
    once; nothing quotes the profile's or the key's secret, or the signed request the library gave up on.
    """
    profile_secret = f"ProfileSecret{uuid.uuid4().hex}"
    profile = tmp_path / "credentials.ini"
    profile.write_text(
        "[default]\ntype = ram_role_arn\n"
        f"access_key_id = {PROFILE_AK}\naccess_key_secret = {profile_secret}\n"
        f"role_arn = {READER_ARN}\nrole_session_name = log-test\n"
    )
    hz = estate.ep.region_urls[HZ]
    region = f"[{{region_id: {HZ}, endpoint: '{hz}'}}]"
    key = f"{{type: access_key, access_key_id: {ALPHA_AK}, access_key_secret: {ALPHA_SECRET}}}"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
api: {{qps: 0, timeout_seconds: 5, retry: {{max_attempts: 1}}}}
refresh: {{interval_seconds: 2, jitter_ratio: 0}}
web: {{listen_address: "127.0.0.1:{free_port()}"}}
targets:
  - account: library
    regions: {region}
    images: [{{id: {ALPHA_HZ_IMAGE}}}]
  - account: refused
    credentials: {key}
    assume_role: {{role_arn: "{SELF_READER_ARN}", sts_endpoint: "{estate.ep.sts_host}"}}
    regions: {region}
    images: [{{id: {BETA_HZ_IMAGE}}}]
  - account: alpha
    credentials: {key}
    regions: {region}
    images: [{{id: {ALPHA_HZ_IMAGE}}}]
"""
    )
    proxy = f"http://127.0.0.1:{_closed_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIBABA_CLOUD_")} | {
        "HOME": str(tmp_path),  # no profile of whoever runs the tests
        "ALIBABA_CLOUD_CREDENTIALS_FILE": str(profile),
        "ALIBABA_CLOUD_CLI_PROFILE_DISABLED": "true",
        "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
        "HTTPS_PROXY": proxy,  # the library's STS call goes nowhere beyond this machine, and fails
        "https_proxy": proxy,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "SSL_CERT_FILE": estate.ca_file,  # the estate's STS, over HTTPS
        "PYTHONUNBUFFERED": "1",
    }
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as err_file:
        proc = await asyncio.create_subprocess_exec(
            exporter_command(), "run", "--config", str(config), "--log.format", "json",
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=err_file,
        )  # fmt: skip
        try:

            def seen() -> bool:
                assert proc.returncode is None, stderr.read_text()[-3000:]
                text = stderr.read_text()
                return text.count("Refresh credentials failed") >= 2 and '"account": "refused"' in text

            await wait_until_async(
                seen, within=60, what="two library failures and the refused role", interval=0.1
            )
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(60):
                rc = await proc.wait()
    assert rc == 0
    text = stderr.read_text()
    records = [json.loads(line) for line in text.splitlines()]  # every line: one JSON record
    library = [r for r in records if r["logger"] == LIBRARY_LOGGER]
    warned = [r for r in library if r["event"].startswith("Refresh credentials failed")]
    assert len(warned) >= 2
    # Each failure is a warning and the exception after it, once each: never the same line again.
    assert len(library) == 2 * len(warned)
    lines = [json.dumps(r, sort_keys=True) for r in library]
    assert len(set(lines)) == len(lines)
    refused = [r for r in records if r.get("account") == "refused" and r["event"] == "image_refresh_failed"]
    assert refused
    assert all(r["code"] == "CredentialError" for r in refused)
    assert any(r.get("account") == "alpha" and r["event"] == "refresh_done" for r in records)
    for secret in (profile_secret, ALPHA_SECRET):
        assert secret not in text
    assert re.search(r"[?&]Signature=", text) is None, "a signed request is quoted"
