"""The output gate (exporter.redaction): what it masks, how it finds it, and what masking costs.

Families, not cases: secrets are generated (random text, control characters inside, split by controls,
newlines and tabs), and the matcher is checked against a plain reference on generated secret sets and
texts. Costs are ratios measured in the same run (cost per scrub with one secret and with the full
pool; memory before and after 1,000 credential rotations), never wall-clock budgets.
"""

from __future__ import annotations

import gc
import random
import string
import timeit
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import redaction
from exporter.redaction import (
    MAX_SECRETS,
    REDACTED,
    canonical,
    contains_secret,
    generation,
    mask_secrets,
    register_secret,
    register_secrets,
    registered_secret_count,
    restore_secrets,
    scoped_secrets,
    scrub,
    snapshot_secrets,
)

# Secrets are drawn from letters and digits, the text around them from other characters, so a mask
# can never be "rebuilt" from what surrounds it and the check below means what it says.
SECRET_CHARS = string.ascii_letters + string.digits
AROUND = st.text(st.sampled_from(" .,:;=()[]/é漢"), max_size=12)
# Everything scrub drops, and the two it keeps with keep_lines.
CONTROLS = st.sampled_from(["\x00", "\x01", "\x1b", "\x7f", "\x85", "\x9b", "\u202e", "\u2066", "\r"])
LINES = st.sampled_from(["\n", "\t", "\r\n"])


def secrets_of(min_size: int = 4) -> st.SearchStrategy[str]:
    """Secrets as a credential looks: letters and digits."""
    return st.text(st.sampled_from(SECRET_CHARS), min_size=min_size, max_size=60)


@st.composite
def split(draw: st.DrawFn, secret: str, breakers: st.SearchStrategy[str]) -> str:
    """``secret`` with characters from ``breakers`` put in between some of its characters."""
    out = []
    for ch in secret:
        out.append(ch)
        if draw(st.booleans()):
            out.append(draw(breakers))
    return "".join(out)


def shown(text: str) -> str:
    """What a reader sees once lines are joined: no controls, no newlines or tabs."""
    return canonical(text)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), secret=secrets_of(), prefix=AROUND, suffix=AROUND)
def test_a_registered_secret_never_shows_however_it_is_split(
    data: st.DataObject, secret: str, prefix: str, suffix: str
) -> None:
    """Registered as it is (controls and all), echoed whole, with controls inside, or split across lines:
    masked by scrub in both modes and by mask_secrets, and everything around it stays."""
    registered = data.draw(st.one_of(st.just(secret), split(secret, CONTROLS)), label="registered")
    echoed = data.draw(
        st.one_of(
            st.just(secret), split(secret, CONTROLS), split(secret, LINES), split(secret, CONTROLS | LINES)
        ),
        label="echoed",
    )
    with scoped_secrets():
        register_secret(registered)
        text = f"{prefix}{echoed}{suffix}"
        for out in (scrub(text), scrub(text, keep_lines=True), mask_secrets(text)):
            assert secret not in shown(out), repr(out)
            assert REDACTED in out
            assert shown(out).startswith(shown(prefix))
            assert shown(out).endswith(shown(suffix))
        assert contains_secret(text)


@settings(max_examples=100, deadline=None)
@given(secret=secrets_of(), lines=st.lists(AROUND, min_size=1, max_size=5))
def test_keep_lines_keeps_lines_where_nothing_is_masked(secret: str, lines: list[str]) -> None:
    """A traceback stays readable: the newlines and tabs outside masks survive scrub(keep_lines=True)."""
    with scoped_secrets():
        register_secret(secret)
        text = "\n".join([*lines, f"\tkey {secret}"])
        out = scrub(text, keep_lines=True)
        assert out == "\n".join([*lines, f"\tkey {REDACTED}"])


def reference_spans(secrets: set[str], text: str) -> list[tuple[int, int]]:
    """Leftmost, then longest, not overlapping: what one alternation of all secrets, longest first, finds."""
    ordered = sorted(secrets, key=len, reverse=True)
    out, i = [], 0
    while i < len(text):
        hit = next((s for s in ordered if text.startswith(s, i)), None)
        if hit is None:
            i += 1
        else:
            out.append((i, i + len(hit)))
            i += len(hit)
    return out


@settings(max_examples=400, deadline=None)
@given(
    # A small alphabet makes secrets share windows, prefixes and each other: every class of the
    # matcher (short, middle, long), and overlaps between them, are met.
    secrets=st.sets(st.text(st.sampled_from("ab"), min_size=4, max_size=40), min_size=1, max_size=12),
    text=st.text(st.sampled_from("abc"), max_size=200),
)
def test_matcher_finds_what_an_alternation_finds(secrets: set[str], text: str) -> None:
    assert redaction._Matcher(secrets).spans(text) == reference_spans(secrets, text)


def test_longest_secret_masked_whole_and_inside_a_url() -> None:
    register_secret("overlapping")
    register_secret("overlapping-and-longer")
    assert scrub("x overlapping-and-longer y overlapping") == f"x {REDACTED} y {REDACTED}"
    assert scrub("https://u:overlapping@host/p") == f"https://{REDACTED}@host/p"
    assert scrub("see https://user:pw@host/p") == f"see https://{REDACTED}@host/p"


def test_short_and_none_values_are_not_registered() -> None:
    before = registered_secret_count()
    for value in (None, "", "abc", "ab\x00\x01c"):  # the last is three characters once shown
        register_secret(value)
    assert registered_secret_count() == before
    assert scrub("abc") == "abc"


def test_rotating_secrets_are_bounded_and_pinned_ones_stay() -> None:
    register_secret("pinned-config-secret", pin=True)
    before = registered_secret_count()
    register_secrets(f"rotating-token-{i:04d}" for i in range(MAX_SECRETS + 5))
    assert registered_secret_count() == before + MAX_SECRETS
    assert scrub("pinned-config-secret") == REDACTED
    assert scrub("rotating-token-0000") == "rotating-token-0000"  # the oldest were dropped
    assert scrub(f"<rotating-token-{MAX_SECRETS + 4:04d}>") == f"<{REDACTED}>"


def test_snapshot_restore_and_scope() -> None:
    """The registry's public reset: what a scope registers is gone after it, and the generation moves
    so memos of gated text are remade."""
    register_secret("kept-before-the-scope")
    saved = snapshot_secrets()
    with scoped_secrets():
        register_secret("only-inside-the-scope", pin=True)
        assert scrub("only-inside-the-scope") == REDACTED
        inside = generation()
    assert generation() != inside
    assert scrub("only-inside-the-scope") == "only-inside-the-scope"
    assert scrub("kept-before-the-scope") == REDACTED
    assert snapshot_secrets() == saved
    register_secret("registered-after-the-snapshot")
    restore_secrets(saved)
    assert scrub("registered-after-the-snapshot") == "registered-after-the-snapshot"


def _rotation(rng: random.Random) -> list[str]:
    """One STS rotation: an AccessKey secret and a security token, of realistic and varied lengths."""
    secret = "".join(rng.choices(SECRET_CHARS, k=30))
    token = "CAIS" + "".join(rng.choices(SECRET_CHARS + "+/=", k=rng.randint(200, 1200)))
    return [secret, token]


def test_memory_is_flat_over_1000_rotations() -> None:
    """Registering 1,000 rotations' credentials grows nothing past the pool's bound: no index entry, no
    compiled pattern (re caches every pattern it compiles) outlives the secrets it was made for."""
    rng = random.Random(7)
    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(MAX_SECRETS):  # the pool full, as after a few days of rotations
            register_secrets(_rotation(rng))
        scrub("a line to mask, with a token CAIS in it")
        gc.collect()
        full = tracemalloc.get_traced_memory()[0]
        for _ in range(1000):
            register_secrets(_rotation(rng))
            scrub("a line to mask, with a token CAIS in it")
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # The full pool (256 rotations' secrets, filed under their windows) is the reference: 1,000 more
    # rotations replace it, they do not add to it (1,000 kept would be about four times as much).
    assert full > 100_000  # the reference really holds the pool
    assert after < 1.5 * full, (full, after)


LINE = "refresh_done account=prod region=cn-hangzhou images=120 ok=118 failed=2 duration=1.234 " * 4


def _cost(text: str) -> float:
    """Seconds per scrub of ``text`` (best of several runs: the machine's load only adds)."""
    return min(timeit.repeat(lambda: scrub(text, keep_lines=True), number=300, repeat=7)) / 300


def test_cost_per_scrub_is_flat_in_the_number_and_lengths_of_secrets() -> None:
    """The cost per scrub of one line, with a few secrets and then with the full rotating pool plus
    pinned secrets of every length, changes by a small factor at most (a regular expression over all
    secrets, tried at each position, grows with them).

    Two baselines: real credentials only (30 characters and up, the cheapest scan), and one secret of
    each length class of the matcher (a 4-character secret needs a look at every position, so the scan
    costs more from the first one on, and then no more however many follow).
    """
    rng = random.Random(11)
    register_secret("config-secret-" + "".join(rng.choices(SECRET_CHARS, k=16)), pin=True)
    one = _cost(LINE)
    for _ in range(1000):
        register_secrets(_rotation(rng))
    rotated = _cost(LINE)
    for length in (4, 11, 23):
        register_secret("".join(rng.choices(SECRET_CHARS, k=length)), pin=True)
    classes = _cost(LINE)
    for length in range(4, 300):
        register_secret("".join(rng.choices(SECRET_CHARS, k=length)), pin=True)
    for _ in range(1000):
        register_secrets(_rotation(rng))
    assert registered_secret_count() >= MAX_SECRETS + 296
    every = _cost(LINE)
    assert scrub(LINE) == LINE  # nothing masked: the cost is the search's
    assert rotated < 3 * one, (one, rotated)
    assert every < 3 * classes, (classes, every)
