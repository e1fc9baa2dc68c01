"""An error's reason (exporter.view.error_reason): the message that says why, on the page and in ``check``.

Families, not cases. Any text becomes one line of at most 300 characters with no control, format or
line-break character; a reason that echoes one of the exporter's secrets (an AccessKey secret, an STS
token, an OIDC token) shows nothing of it, whole or split by spaces, newlines, tabs, controls or
zero-width characters, at any length and at any offset (the cut points of every gate it passes
included), and a registry credential in a URL's userinfo shows neither user nor password. Then the same
families through the wire: the simulator answers them as error messages, and the page and ``check``
(table and JSON) show each image's reason, gated. The reason is never a metric label.

Secrets are drawn from one alphabet and the text around them from another that shares no character
with it (nor does ``[REDACTED]`` or the ellipsis), so "no character of the secret's alphabet in the
reason" means no piece of the secret is shown, however small.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import string
import unicodedata
from collections.abc import Iterator
from typing import Any

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ehpc_simulator import SimImage, Simulator
from exporter.cli.check import check_row, print_report
from exporter.config import WatchedImage
from exporter.redaction import CONTROL_RE, REDACTED, register_secret, scoped_secrets
from exporter.service import ExporterService
from exporter.snapshot import ImageError, ImageState, Snapshot
from exporter.view import ELLIPSIS, MAX_REASON_LENGTH, error_reason
from tests.exporter_support import samples, sim_config
from tests.fixtures.sim import RunningSimulator

# The secret's alphabet leaves out the letters of "[REDACTED]" and every character of the text around.
_MASK = set(REDACTED) | {ELLIPSIS}
SECRET_CHARS = "".join(
    c for c in string.ascii_letters + string.digits + "+/=_-." if c not in _MASK and c != "Y"
)
# Around it: the mask's letters, punctuation, accents and CJK, and every kind of break.
WORDS = "REDACT,;:!?()[]{}<>'\"@#%&*é漢ü"
BREAKS = [" ", "\n", "\t", "\r", "\r\n", "\x0b", "\x0c", "\x85", "\u2028", "\u2029", "\xa0", "\u3000"]
CONTROLS = ["\x00", "\x01", "\x1b", "\x7f", "\x9b", "\u202e", "\u2066"]
INVISIBLE = ["\u200b", "\u200d", "\u2060", "\ufeff", "\u00ad"]
SPLITTERS = st.sampled_from([*BREAKS, *CONTROLS, *INVISIBLE])


def around(max_size: int) -> st.SearchStrategy[str]:
    """Text that shares no character with a secret: words, breaks, controls, invisible characters."""
    pieces = st.one_of(st.text(st.sampled_from(WORDS), max_size=12), SPLITTERS)
    return st.lists(pieces, max_size=max_size).map("".join)


# Lengths that put a secret across every cut on its way: the reason's 300, the client's 300 (after
# whitespace is folded), the ingestion gate's 8192; and plain large ones.
OFFSETS = st.one_of(
    st.integers(0, 40),
    st.integers(250, 310),
    st.integers(8100, 8200),
    st.integers(0, 20_000),
)


# Through the wire the whole page and /metrics are searched for pieces of a secret: an alphabet that
# neither ids, times nor numbers use (uppercase, less the mask's letters and the message's "Y").
WIRE_SECRET_CHARS = "".join(c for c in string.ascii_uppercase if c not in _MASK and c != "Y")


def secret_of(kind: str, draw: st.DrawFn, alphabet: str = SECRET_CHARS) -> str:
    """A secret as that kind of credential looks (its length and shape), in ``alphabet``."""
    chars = st.sampled_from(alphabet)
    if kind == "access_key_secret":  # 30 characters
        return draw(st.text(chars, min_size=30, max_size=30))
    if kind == "sts_token":  # "CAIS..." base64, hundreds to over a thousand characters
        return "JIS" + draw(st.text(chars, min_size=300, max_size=1600))
    # an OIDC token: a JWT, three dot-separated parts
    parts = [draw(st.text(chars.filter(lambda c: c != "."), min_size=20, max_size=400)) for _ in range(3)]
    return ".".join(parts)


# What the wire's ingestion gate looks through before it cuts a message: whitespace and controls. A
# secret split by an invisible format character (a zero-width space) is masked by the reason's gate
# when the message reaches it whole (above), not across the cut of the client's 300 characters.
WIRE_SPLITTERS = st.sampled_from([*BREAKS, *CONTROLS])


@st.composite
def split(draw: st.DrawFn, secret: str, splitters: st.SearchStrategy[str] = SPLITTERS) -> str:
    """``secret`` as an echo may carry it: whole, or with splitters between some of its characters."""
    if draw(st.booleans()):
        return secret
    out = []
    for ch in secret:
        out.append(ch)
        if draw(st.integers(0, 20)) == 0:
            out.append(draw(splitters))
    return "".join(out)


@st.composite
def echo(
    draw: st.DrawFn, alphabet: str = SECRET_CHARS, splitters: st.SearchStrategy[str] = SPLITTERS
) -> tuple[str, str]:
    """(secret, a message echoing it somewhere, possibly past every cut)."""
    kind = draw(st.sampled_from(["access_key_secret", "sts_token", "oidc_token"]))
    secret = secret_of(kind, draw, alphabet)
    lead = draw(around(20))
    filler = draw(st.sampled_from(WORDS + " \n\t"))
    prefix = lead + filler * max(0, draw(OFFSETS) - len(lead))
    return secret, prefix + draw(split(secret, splitters)) + draw(around(30))


def secret_chars_in(text: str, alphabet: str = SECRET_CHARS) -> str:
    return "".join(c for c in text if c in alphabet)


# -- the gate -----------------------------------------------------------------------------------------------


def assert_one_bounded_line(reason: str) -> None:
    assert len(reason) <= MAX_REASON_LENGTH
    assert reason == " ".join(reason.split()), "one line: no break but single spaces, none at the ends"
    assert CONTROL_RE.search(reason) is None
    assert not [c for c in reason if unicodedata.category(c) == "Cf"]


MESSAGES = st.text(max_size=3000) | st.builds(
    lambda s, n: s * n, st.text(min_size=1, max_size=50), st.integers(1, 500)
)


@given(MESSAGES)
@settings(max_examples=400)
def test_any_message_is_one_bounded_line(message: str) -> None:
    """Whatever the message: one line, at most 300 characters, cut with an ellipsis, stable gated again."""
    reason = error_reason(message)
    assert_one_bounded_line(reason)
    assert error_reason(reason) == reason  # the view gates it again: nothing changes
    words = " ".join(message.split())
    if words.isascii() and CONTROL_RE.search(message) is None and "://" not in message:
        # A plain message is shown as it is, or cut with an ellipsis.
        cut = words[: MAX_REASON_LENGTH - 1].rstrip() + ELLIPSIS
        assert reason == (words if len(words) <= MAX_REASON_LENGTH else cut)


@given(echo())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])
def test_an_echoed_secret_shows_nothing_of_itself(planted: tuple[str, str]) -> None:
    """AccessKey secrets, STS tokens and OIDC tokens, whole or split, at any offset: not one character."""
    secret, message = planted
    with scoped_secrets():
        register_secret(secret)
        reason = error_reason(message)
    assert_one_bounded_line(reason)
    assert secret_chars_in(reason) == ""


@given(
    user=st.text(st.sampled_from(SECRET_CHARS), min_size=1, max_size=20),
    password=st.text(st.sampled_from(SECRET_CHARS + "/?@:"), min_size=1, max_size=40),
    controls=st.lists(st.sampled_from(CONTROLS), max_size=3),
    before=around(10),
    after=around(10),
)
@settings(max_examples=300)
def test_a_registry_credential_in_a_url_shows_neither_user_nor_password(
    user: str, password: str, controls: list[str], before: str, after: str
) -> None:
    """A URL's userinfo is masked whatever its password holds, controls inside it included."""
    hidden = password[: len(password) // 2] + "".join(controls) + password[len(password) // 2 :]
    url = f"https://{user}:{hidden}@cr.example/ns/repo"
    reason = error_reason(f"{before} <{url}> {after}")
    assert "cr.example/ns/repo" in reason
    assert secret_chars_in(reason.replace("https://", "").replace("cr.example/ns/repo", "")) == ""


def test_a_long_reason_is_cut_after_masking() -> None:
    """A secret across the cut: masked first, so its start is not left (the order is the point)."""
    secret = "K" * 40
    with scoped_secrets():
        register_secret(secret)
        reason = error_reason("x" * 295 + secret + "y" * 100)
    assert reason == "x" * 295 + REDACTED[:4] + ELLIPSIS


# -- through the wire: the page and check --------------------------------------------------------------------


@contextlib.contextmanager
def stdout() -> Iterator[io.StringIO]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        yield out


def image_id(n: int) -> str:
    return f"m-reason-{n}"


async def served(messages: list[str], secrets: list[str]) -> tuple[str, str, dict[str, Any], Snapshot, str]:
    """Each message as the simulator's error for one image: (page, table, json, snapshot, metrics)."""
    images = [
        SimImage(image_id(n), name=f"r{n}", error="NotEnabled", error_detail=m)
        for n, m in enumerate(messages)
    ]
    sim = Simulator(images=images, access_keys={"AK-REASON": "reason-test-secret"})
    async with sim.serve() as url:
        running = RunningSimulator(sim, url, "AK-REASON", "reason-test-secret")
        svc = ExporterService(
            sim_config(running, [WatchedImage(i.image_id) for i in images]), process_metrics=False
        )
        for secret in secrets:
            register_secret(secret)  # as the credential providers do for what they fetch
        await svc.start()
        try:
            snapshot = await svc.refresh_once()
            async with aiohttp.ClientSession() as http:
                async with http.get(svc.url + "/") as resp:
                    page = await resp.text()
                async with http.get(svc.url + "/metrics") as resp:
                    metrics = await resp.text()
        finally:
            await svc.stop()
    with stdout() as table:
        print_report(snapshot, "table")
    with stdout() as doc:
        print_report(snapshot, "json")
    return page, table.getvalue(), json.loads(doc.getvalue()), snapshot, metrics


@given(
    st.lists(echo(WIRE_SECRET_CHARS, WIRE_SPLITTERS), min_size=1, max_size=6),
    st.lists(around(40), max_size=3),
)
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_reasons_reach_the_page_and_check_gated(planted: list[tuple[str, str]], plain: list[str]) -> None:
    """The simulator answers planted echoes and plain odd messages; page, table and JSON show each reason,
    one bounded line, nothing of any secret; /metrics has no reason anywhere."""
    messages = [m for _, m in planted] + plain
    secrets = [s for s, _ in planted]
    with scoped_secrets():
        page, table, doc, snapshot, metrics = asyncio.run(served(messages, secrets))
    rows = {row["image_id"]: row for row in doc["images"]}
    for n in range(len(messages)):
        view = snapshot.views[next(k for k in snapshot.views if k.image_id == image_id(n))]
        reason = view.error_reason
        assert reason is not None
        assert reason.startswith("You have not enabled this service.")
        assert_one_bounded_line(reason)
        shown = reason.removeprefix("You have not enabled this service.")
        assert secret_chars_in(shown, WIRE_SECRET_CHARS) == ""
        assert rows[image_id(n)]["last_error_reason"] == reason
        assert reason in table
        assert check_row(view)["last_error_reason"] == reason
    for secret in secrets:
        windows = {secret[i : i + 8] for i in range(0, len(secret) - 7)}
        for output in (page, table, json.dumps(doc), metrics):
            assert not [w for w in windows if w in output]
    assert "You have not enabled" not in metrics  # never a label


async def test_the_page_shows_the_reason_under_the_code(simulator: RunningSimulator) -> None:
    """One failing image: its row on the board carries the code and, under it, the reason."""
    simulator.sim.images["m-broken"] = SimImage(
        "m-broken", error="NotAuthorized", error_detail="role ehpc-reader"
    )
    svc = ExporterService(sim_config(simulator, ["m-broken"]), process_metrics=False)
    await svc.start()
    try:
        await svc.refresh_once()
        async with aiohttp.ClientSession() as http, http.get(svc.url + "/") as resp:
            page = await resp.text()
        async with aiohttp.ClientSession() as http, http.get(svc.url + "/metrics") as resp:
            found = samples(await resp.text())
    finally:
        await svc.stop()
    assert '<div class="detail reason">No authorization is granted. role ehpc-reader</div>' in page
    assert [dict(labels) for name, labels in found if name == "ehpc_image_last_error_info"] == [
        {"account": "default", "region_id": "cn-hangzhou", "image_id": "m-broken", "code": "NotAuthorized"}
    ]


def test_a_restored_error_has_no_reason_until_the_next_failure() -> None:
    """The state file keeps the code and since, not the reason: a restored failing image shows none."""
    state = ImageState(WatchedImage("m-1"), error=ImageError("EcsError", 406, None, 5.0))
    snapshot = Snapshot.build(
        [state], status=Snapshot().status, refreshed_at=6.0, duration_seconds=0.1, sequence=1
    )
    view = next(iter(snapshot.views.values()))
    assert view.error_code == "EcsError"
    assert view.error_reason is None
    assert check_row(view)["last_error_reason"] is None
