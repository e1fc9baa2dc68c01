"""Hostile credential endpoints and token files, by family: every fetch ends within its deadline with a
bounded body, every malformed answer is refused by the one gate (and nothing of it is held), no error
quotes what it was sent, and no credential work runs on the event loop's default pool.

The endpoints are :mod:`tests.hostile_sts` (raw bytes on 127.0.0.1, independent of the simulator); the
sources are the exporter's own, built from config as the service builds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import AssumeRoleConfig, CredentialsConfig
from exporter.credential_fetch import (
    MAX_ACCESS_KEY_ID,
    MAX_ACCESS_KEY_SECRET,
    MAX_SECURITY_TOKEN,
    CredentialFault,
    EcsMetadata,
    gate_answer,
    sts_answer,
)
from exporter.credential_io import MAX_ANSWER_BYTES, MAX_TOKEN_FILE_BYTES, read_token_file
from exporter.credentials import (
    FAILURE_HOLD_SECONDS,
    FETCH_DEADLINE_SECONDS,
    CachedCredentialSource,
    build_credential_source,
)
from exporter.errors import ApiError
from exporter.logging import mask_secrets
from exporter.redaction import MIN_SECRET_CHARS, contains_secret, scrub
from tests.fixtures.clock import FakeWall
from tests.fixtures.estate import OIDC_ROLE_ARN, PROVIDER_ARN, RunningEstate
from tests.hostile_sts import (
    HOSTILE_TOKEN,
    Behaviour,
    HostileSts,
    answer,
    drip,
    endless,
    hang,
    hostile_sts,
    hostile_sts_thread,
    json_answer,
    sts_body,
)

ROLE = "acs:ram::1111111111111111:role/reader"
OIDC_PROVIDER = "acs:ram::1111111111111111:oidc-provider/rrsa"
BASE_AK = "HOSTILE-BASE-AK"
BASE_SECRET = "hostile-base-secret-31337"
BASE_TOKEN = "CAISbasetoken31337"
# An STS key as the base: its secret signs the request and its token travels in the query.
BASE = CredentialsConfig(
    type="sts", access_key_id=BASE_AK, access_key_secret=BASE_SECRET, security_token=BASE_TOKEN
)
# A JWT in shape (the hostile STS checks nothing); a token read from a file is registered as a secret.
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJleHBvcnRlciJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
# The fetch deadline of the families that only a deadline can end (hang, drip); every other case runs
# with the default (FETCH_DEADLINE_SECONDS), so that what ends it is the bound it is about.
DEADLINE = 0.5
WAIT = 30.0  # how long a test waits for an event before it fails: generous, never a measurement


# ----- the gate, alone ------------------------------------------------------------------------------------

NOW = 1_900_000_000.0
GOOD_FIELDS = {
    "AccessKeyId": "STS.good0001",
    "AccessKeySecret": "good-secret-0123456789",
    "SecurityToken": "CAISgood0123456789",
    "Expiration": "2099-01-01T00:00:00Z",
}
CAPS = {
    "AccessKeyId": MAX_ACCESS_KEY_ID,
    "AccessKeySecret": MAX_ACCESS_KEY_SECRET,
    "SecurityToken": MAX_SECURITY_TOKEN,
}
CONTROLS = ["\n", "\r", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\ud800"]

non_strings = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def with_control(base: str) -> st.SearchStrategy[str]:
    """``base`` with one control character (or a lone surrogate) somewhere in it."""
    return st.builds(
        lambda i, c: base[:i] + c + base[i:], st.integers(0, len(base)), st.sampled_from(CONTROLS)
    )


def bad_key_field(name: str) -> st.SearchStrategy[Any]:
    """Every way an id, secret or token can be unusable."""
    cap = CAPS[name]
    bad = st.one_of(
        non_strings.filter(lambda v: v is not None),
        st.just(""),
        st.integers(cap + 1, cap + 3000).map(lambda n: "k" * n),
        with_control(GOOD_FIELDS[name]),
    )
    return bad | short_secret if name in SECRET_FIELDS else bad


SECRET_FIELDS = ("AccessKeySecret", "SecurityToken")
# Any printable character (what str.isprintable accepts but the space): drawn, not filtered, so long
# values cost no rejected examples.
PRINTABLE = st.characters(exclude_categories=("C", "Z"))
# Shorter than any real secret: a placeholder or an answer cut short (the config file's rule too).
short_secret = st.text(
    st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=MIN_SECRET_CHARS - 1
)


past = st.integers(0, int(NOW) - 1).map(lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)))
bad_expiration = st.one_of(
    non_strings,
    st.text(max_size=30).filter(lambda t: len(t) != 20),
    st.sampled_from(
        [
            "2099-02-30T00:00:00Z",
            "2099-13-01T00:00:00Z",
            "2099-01-01T24:00:00Z",
            "2099-01-01 00:00:00Z",
            "2099-01-01T00:00:00+08:00",
            "2099-01-01T00:00:00",
            "\uff12\uff10\uff19\uff19-01-01T00:00:00Z",  # fullwidth digits: \d would take them
            "0000-01-01T00:00:00Z",
        ]
    ),
    past,
)


@dataclass(frozen=True)
class Fields:
    """An answer's credential fields with (at least) one bad one, and the values planted in it."""

    fields: dict[str, Any]
    planted: tuple[str, ...]


@st.composite
def bad_fields(draw: st.DrawFn) -> Fields:
    fields: dict[str, Any] = dict(GOOD_FIELDS)
    names = draw(st.lists(st.sampled_from(sorted(GOOD_FIELDS)), min_size=1, max_size=4, unique=True))
    for name in names:
        if draw(st.booleans()):
            del fields[name]
        else:
            fields[name] = draw(bad_expiration if name == "Expiration" else bad_key_field(name))
    planted = tuple(v for v in fields.values() if isinstance(v, str) and len(v) >= 8)
    return Fields(fields, planted)


@settings(max_examples=300, deadline=None)
@given(case=bad_fields())
def test_the_gate_refuses_every_bad_field_and_never_quotes_one(case: Fields) -> None:
    """Missing, mistyped, empty, over-long, control characters, unparseable or past: refused with a
    message naming the field; no value of the answer is in the message."""
    with pytest.raises(CredentialFault) as info:
        gate_answer(case.fields, NOW, token_required=True)
    message = str(info.value)
    assert any(name in message for name in GOOD_FIELDS) or "malformed" in message
    # What the gate writes itself (a field's name, the expected shape) is not a quote of the answer, even
    # when a generated value happens to spell part of it ("Expirati").
    own_words = message.replace("Expiration is not a UTC time like 2030-01-02T15:04:05Z", "")
    for name in GOOD_FIELDS:
        own_words = own_words.replace(name, "")
    for value in case.planted:
        assert value not in own_words


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(SECRET_FIELDS), value=short_secret)
def test_a_secret_too_short_to_be_real_is_refused_and_never_registered(field: str, value: str) -> None:
    """A fetched secret or token shorter than MIN_SECRET_CHARS (a credentials URI answering "key") is
    refused by name, and the output gate never learns it: no later line is garbled by it."""
    fields = {**GOOD_FIELDS, field: value}
    line = f"unknown key_id {value} (did you mean 'access_key_id'?)"
    before = scrub(line)
    with pytest.raises(CredentialFault, match=f"{field} is shorter than {MIN_SECRET_CHARS} characters"):
        gate_answer(fields, NOW, token_required=True)
    assert not contains_secret(value)
    assert scrub(line) == before


@settings(max_examples=300, deadline=None)
@given(
    ak=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=MAX_ACCESS_KEY_ID),
    secret=st.text(PRINTABLE, min_size=MIN_SECRET_CHARS, max_size=MAX_ACCESS_KEY_SECRET),
    token=st.text(PRINTABLE, min_size=MIN_SECRET_CHARS, max_size=200),
    expires=st.integers(int(NOW), 253402300799),
)
def test_the_gate_takes_every_good_credential_as_it_is(
    ak: str, secret: str, token: str, expires: int
) -> None:
    expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
    fields = {"AccessKeyId": ak, "AccessKeySecret": secret, "SecurityToken": token, "Expiration": expiration}
    fetched = gate_answer(fields, NOW, token_required=True)
    assert (fetched.credential.access_key_id, fetched.credential.access_key_secret) == (ak, secret)
    assert fetched.credential.security_token == token
    assert fetched.expires_at == expires


@settings(max_examples=300, deadline=None)
@given(
    status=st.integers(100, 599),
    body=st.one_of(
        st.binary(max_size=300),
        st.builds(
            json.dumps,
            st.recursive(
                st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
                lambda inner: st.one_of(
                    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=12), inner, max_size=4)
                ),
                max_leaves=12,
            ),
        ).map(str.encode),
    ),
)
def test_any_body_is_an_answer_or_a_credential_fault(status: int, body: bytes) -> None:
    """Whatever the STS sends, the gate returns a credential or refuses it; it never raises anything else."""
    with contextlib.suppress(CredentialFault):
        sts_answer(status, body, NOW)


def test_a_body_nested_past_the_parsers_stack_is_refused() -> None:
    with pytest.raises(CredentialFault, match="not JSON"):
        sts_answer(200, b"[" * 100_000, NOW)


# ----- hostile answers end to end, by family ----------------------------------------------------------


@pytest.fixture(scope="module")
def threaded_sts() -> Iterator[HostileSts]:
    with hostile_sts_thread(json_answer(sts_body())) as sts:
        yield sts


@dataclass(frozen=True)
class Hostile:
    """One hostile answer and what it plants (values that no message may quote)."""

    status: int
    body: bytes
    planted: tuple[str, ...]


def _body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


@st.composite
def hostile_answers(draw: st.DrawFn) -> Hostile:
    kind = draw(st.sampled_from(["fields", "document", "bytes", "error"]))
    if kind == "fields":
        case = draw(bad_fields())
        return Hostile(200, _body({"RequestId": "R1", "Credentials": case.fields}), case.planted)
    if kind == "document":
        doc = draw(
            st.one_of(
                non_strings,
                st.text(max_size=20),
                st.just({"RequestId": "R1"}),
                non_strings.map(lambda v: {"Credentials": v}),
                st.just({"Credentials": [GOOD_FIELDS]}),
            )
        )
        return Hostile(200, _body(doc), ())
    if kind == "bytes":
        raw = draw(st.one_of(st.binary(max_size=200), st.just(b"\xff\xfe{}"), st.just(b'{"Credentials": ')))
        return Hostile(200, raw, ())
    # An error answer that echoes the caller's secret and token (the token was in the query it sent).
    echo = draw(st.sampled_from([BASE_SECRET, BASE_TOKEN]))
    code = draw(st.sampled_from(["NoPermission", "InvalidParameter", f"Bad{echo}", "", "x y"]))
    status = draw(st.integers(400, 599))
    doc = {"Code": code, "Message": f"you sent {echo} and {BASE_AK}", "RequestId": echo, "Recommend": echo}
    return Hostile(status, _body(doc), (echo,))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=hostile_answers())
def test_hostile_sts_answers_are_refused_never_held_and_never_quoted(
    threaded_sts: HostileSts, case: Hostile
) -> None:
    """Each family of hostile answer through a real role chain (static key -> AssumeRole over HTTP):
    a CredentialError without any planted value, nothing held, and the next good answer is used."""
    clock = FakeWall()
    source = build_credential_source(
        BASE, AssumeRoleConfig(role_arn=ROLE, sts_endpoint=threaded_sts.url), clock=clock
    )
    before = len(threaded_sts.requests)

    async def run() -> None:
        threaded_sts.behaviour = answer(case.status, case.body)
        with pytest.raises(ApiError) as info:
            await source.get()
        error = info.value
        assert error.code == "CredentialError"
        for value in case.planted:
            assert value not in str(error)
        threaded_sts.behaviour = json_answer(sts_body(access_key_id="STS.recovered"))
        clock.advance(FAILURE_HOLD_SECONDS)
        assert (await source.get()).access_key_id == "STS.recovered"

    asyncio.run(run())
    assert len(threaded_sts.requests) == before + 2


# ----- transports: hang, drip, oversize, endless, for every kind of endpoint ----------------------------


def _sts_answer_bytes() -> bytes:
    body = _body(sts_body())
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def _both_shapes(token: str) -> dict[str, Any]:
    """An answer an STS client and a credentials-URI client both read as a credential with ``token``."""
    doc = sts_body(token=token)
    return {"Code": "Success", **doc["Credentials"], **doc}


def _body_drip(every: float) -> Behaviour:
    """Headers at once, then the body a byte at a time."""
    body = _body(sts_body())

    async def behave(request: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        await drip(body, every)(request, reader, writer)

    return behave


TRANSPORTS: dict[str, tuple[Callable[[], Behaviour], float, str]] = {
    # behaviour, the fetch deadline, what the error says
    "hang": (hang, DEADLINE, f"no credential within {DEADLINE:g}s"),
    "drip the whole answer": (
        lambda: drip(_sts_answer_bytes(), 0.05),
        DEADLINE,
        f"no credential within {DEADLINE:g}s",
    ),
    "drip the body": (lambda: _body_drip(0.05), DEADLINE, f"no credential within {DEADLINE:g}s"),
    "announce 100 MB": (
        lambda: answer(200, b"{}", [("Content-Length", str(100 * 1024 * 1024))]),
        FETCH_DEADLINE_SECONDS,
        f"answer larger than {MAX_ANSWER_BYTES} bytes ({100 * 1024 * 1024} announced)",
    ),
    "endless chunks": (endless, FETCH_DEADLINE_SECONDS, f"answer larger than {MAX_ANSWER_BYTES} bytes"),
    "huge token": (
        lambda: json_answer(_both_shapes("C" * 20_000)),
        FETCH_DEADLINE_SECONDS,
        "SecurityToken is longer than",
    ),
}


def _source(
    kind: str, url: str, token_file: Path, deadline: float = FETCH_DEADLINE_SECONDS
) -> CachedCredentialSource:
    """The exporter's source of ``kind`` pointed at ``url``."""
    if kind == "ECS metadata":  # the platform's address is fixed; only the test moves it
        provider = EcsMetadata(role_name="reader", base_url=url)
        return CachedCredentialSource(provider, "ECS metadata", deadline=deadline)
    configs = {
        "AssumeRole": (BASE, AssumeRoleConfig(role_arn=ROLE, sts_endpoint=url)),
        "AssumeRoleWithOIDC": (
            CredentialsConfig(
                type="oidc_role_arn",
                role_arn=ROLE,
                oidc_provider_arn=OIDC_PROVIDER,
                oidc_token_file=str(token_file),
                sts_endpoint=url,
            ),
            None,
        ),
        "credentials URI": (CredentialsConfig(type="credentials_uri", credentials_uri=f"{url}/creds"), None),
    }
    cfg, role = configs[kind]
    source = build_credential_source(cfg, role, deadline=deadline)
    assert isinstance(source, CachedCredentialSource)
    return source


KINDS = ["AssumeRole", "AssumeRoleWithOIDC", "credentials URI", "ECS metadata"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_every_fetch_ends_within_its_deadline_and_its_size_bound(
    kind: str, transport: str, tmp_path: Path
) -> None:
    """A server that never answers, answers a byte at a time, announces or streams more than the cap, or
    hides a huge token: a CredentialError saying which, and the connection is dropped."""
    behaviour, deadline, says = TRANSPORTS[transport]
    token_file = tmp_path / "token"
    token_file.write_text(JWT)
    async with hostile_sts(behaviour()) as sts:
        source = _source(kind, sts.url, token_file, deadline)
        async with asyncio.timeout(WAIT):
            with pytest.raises(ApiError) as info:
                await source.get()
            assert info.value.code == "CredentialError"
            assert says in info.value.message
            if transport not in ("huge token", "announce 100 MB"):
                await sts.hung_up.wait()  # the exporter let go of the connection


@pytest.mark.parametrize("where", ["Code", "RequestId", "Message", "Recommend"])
async def test_an_sts_echoing_the_oidc_token_never_gets_it_into_a_message(tmp_path: Path, where: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(JWT)
    doc = {"Code": "AuthenticationFail.OIDCToken.Invalid", "RequestId": "R1", where: f"Bad{JWT}"}
    async with hostile_sts(json_answer(doc, status=401)) as sts:
        with pytest.raises(ApiError) as info:
            await _source("AssumeRoleWithOIDC", sts.url, token_file).get()
    assert JWT not in str(info.value)
    assert "HTTP 401" in info.value.message


async def test_the_sts_is_given_a_token_read_now_and_masked(tmp_path: Path) -> None:
    """AssumeRoleWithOIDC sends the file's token (stripped of its newline) and it is masked from then on."""
    token_file = tmp_path / "token"
    token_file.write_text(JWT + "\n")
    async with hostile_sts(json_answer(sts_body())) as sts:
        source = _source("AssumeRoleWithOIDC", sts.url, token_file)
        cred = await source.get()
    assert cred.security_token == HOSTILE_TOKEN
    assert sts.requests[0].query["OIDCToken"] == JWT
    assert mask_secrets(f"token={JWT}") == "token=[REDACTED]"


# ----- token files ------------------------------------------------------------------------------------------


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return str(path)


def _fifo_held_open(path: Path) -> str:
    os.mkfifo(path)
    # A writer that holds it open and never writes: a blocking read would wait for ever.
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    _held.append(fd)
    return str(path)


_held: list[int] = []


def _oversize(path: Path) -> str:
    path.write_bytes(b"a" * (MAX_TOKEN_FILE_BYTES + 1))
    return str(path)


def _sparse_terabyte(path: Path) -> str:
    with path.open("wb") as f:
        f.truncate(1 << 40)  # sparse: costs nothing on disk, a read would cost everything
    return str(path)


def _socket(path: Path) -> str:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    _held.append(s.detach())
    return str(path)


def _loop(path: Path) -> str:
    path.symlink_to(path)
    return str(path)


def _under_a_file(path: Path) -> str:
    path.write_text(JWT)
    return str(path / "token")


def _directory(path: Path) -> str:
    path.mkdir()
    return str(path)


# What the message says after "OIDC token file <path>: ": the shared reader's words (exporter.files),
# the same a config file gets.
TOKEN_FILES: dict[str, tuple[Callable[[Path], str], str]] = {
    "FIFO": (_fifo, "not a regular file (a FIFO)"),
    "FIFO held open by a silent writer": (_fifo_held_open, "not a regular file (a FIFO)"),
    "/dev/zero": (lambda _p: "/dev/zero", "not a regular file (a character device)"),
    "/dev/urandom": (lambda _p: "/dev/urandom", "not a regular file (a character device)"),
    "directory": (_directory, "Is a directory"),
    "socket": (_socket, "not a regular file (a socket)"),
    "oversize": (_oversize, f"larger than {MAX_TOKEN_FILE_BYTES} bytes"),
    "sparse terabyte": (_sparse_terabyte, f"larger than {MAX_TOKEN_FILE_BYTES} bytes"),
    "missing": (lambda p: str(p / "nowhere"), "No such file or directory"),
    "symlink loop": (_loop, "Too many levels of symbolic links"),
    "under a regular file": (_under_a_file, "Not a directory"),
    "empty": (lambda p: (p.write_text(""), str(p))[1], "not a JWT"),
}


@pytest.fixture(autouse=True)
def _close_held() -> Iterator[None]:
    yield
    while _held:
        os.close(_held.pop())


@pytest.mark.parametrize("kind", sorted(TOKEN_FILES))
async def test_a_token_file_that_is_not_a_small_regular_file_is_refused_without_a_read(
    kind: str, tmp_path: Path
) -> None:
    """FIFOs, devices, directories, sockets, oversize, missing, loops: a CredentialError
    naming the file, before any read that could block or any byte reaches the STS."""
    make, says = TOKEN_FILES[kind]
    path = make(tmp_path / "token")
    async with hostile_sts(json_answer(sts_body())) as sts:
        source = _source("AssumeRoleWithOIDC", sts.url, Path(path))
        async with asyncio.timeout(WAIT):
            with pytest.raises(ApiError) as info:
                await source.get()
    assert info.value.code == "CredentialError"
    assert f"OIDC token file {path}: {says}" in info.value.message
    assert sts.requests == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    content=st.one_of(
        st.binary(max_size=400),
        st.builds(lambda a, b, c: f"{a}.{b}.{c}".encode(), *(st.text("ab_-9", max_size=20),) * 3),
        st.builds(
            lambda ws, t: ws + t + ws, st.sampled_from([b"", b"\n", b" \t\r\n"]), st.just(JWT.encode())
        ),
    )
)
def test_token_file_contents_are_a_jwt_or_refused(tmp_path: Path, content: bytes) -> None:
    """Any bytes: the token is the stripped ASCII content when it has a JWT's three parts, else refused."""
    path = tmp_path / "token"
    path.write_bytes(content)
    text = content.decode("ascii").strip() if content.isascii() else ""
    expected = text if re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*", text) else None
    if expected is None:
        with pytest.raises(CredentialFault, match=re.escape(str(path))):
            asyncio.run(read_token_file(str(path)))
    else:
        assert asyncio.run(read_token_file(str(path))) == expected


# ----- no credential work on the loop's default pool --------------------------------------------------------


class RecordingExecutor(ThreadPoolExecutor):
    """The loop's default pool, counting what is handed to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.submitted: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.submitted.append(getattr(fn, "__qualname__", repr(fn)))
        return super().submit(fn, *args, **kwargs)


async def test_no_credential_work_runs_on_the_default_pool(
    estate: RunningEstate, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Why: the library read the token file on the loop's default pool, which gzip, reloads and the state
    file share, so a FIFO there held one of its threads for ever. A whole RRSA fetch over HTTPS, by host
    name (a DNS lookup, a TLS context with the configured CA, a token file read): nothing reaches the
    default pool."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(estate.estate.issue_oidc_token(PROVIDER_ARN))
    port = estate.ep.sts_host.rsplit(":", 1)[1]
    recorder = RecordingExecutor()
    asyncio.get_running_loop().set_default_executor(recorder)
    source = build_credential_source(
        CredentialsConfig(
            type="oidc_role_arn",
            role_arn=OIDC_ROLE_ARN,
            oidc_provider_arn=PROVIDER_ARN,
            oidc_token_file=str(token_file),
            sts_endpoint=f"localhost:{port}",
        ),
        ca_file=estate.ca_file,
    )
    cred = await source.get()
    assert cred.security_token
    assert estate.estate.sts_counters() == {("AssumeRoleWithOIDC", "Success"): 1}
    assert recorder.submitted == []
