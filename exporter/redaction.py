"""The output gate: every string the exporter publishes passes :func:`scrub` on its way out.

The secrets it masks are the exporter's own: the config file's AccessKey secrets and STS tokens (pinned
for the life of the process) and every credential the alibabacloud-credentials providers fetch (the
newest ``MAX_SECRETS``, rotating). Each is registered here once (:func:`register_secret`). :func:`scrub`
then makes any text safe to show: registered secrets and URL userinfo become ``[REDACTED]``, lone
surrogates become U+FFFD (so no encoder can fail on them), and control and bidi characters are dropped
(so a terminal or a page shows what a person reads). Masking looks through those characters: a secret
with a control character inside, or split by one or by a newline, is masked whole. The views that use
it: metric label values (``exporter.exposition``), the landing page (``exporter.http.landing``), the
``check`` command (``exporter.cli``) and every log line (``exporter.logging``).

Values an API answer carries (a registry user name and password) are not registered here: they are
masked within their own answer by the ingestion gate (``exporter.models``), so no answer can change what
another answer, or any other output, shows. That gate also refuses answers that carry a registered
secret in the first place; this gate is the second line, for whatever reaches an output by any other way.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = [
    "BIDI_CONTROLS",
    "CONTROL_RE",
    "MAX_SECRETS",
    "MIN_SECRET_CHARS",
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "SURROGATE_RE",
    "SecretsSnapshot",
    "canonical",
    "contains_secret",
    "generation",
    "mask_secrets",
    "register_secret",
    "register_secrets",
    "registered_secret_count",
    "restore_secrets",
    "scoped_secrets",
    "scrub",
    "snapshot_secrets",
    "split_userinfo",
]

REDACTED = "[REDACTED]"
# Shorter strings are not masked: masking a two-letter "secret" would shred every line, and no real
# AccessKey secret or STS token is that short.
MIN_SECRET_LENGTH = 4
# The shortest AccessKey secret or STS token any credential may carry, configured or fetched. Alibaba
# Cloud's AccessKey secrets are 30 characters, STS secrets longer and STS tokens hundreds; anything under
# 16 is a placeholder ("key", "changeme") or a value cut short, and masking it in every output would
# garble the outputs' own words. Here, at the bottom, so the config and the credential gate share it.
MIN_SECRET_CHARS = 16
# STS tokens rotate for the life of the process; keep the newest ones, the oldest have expired.
# Pinned secrets (the config file's) are never evicted.
MAX_SECRETS = 256

# A URL with a scheme, as it may stand in free text (a log message, a config value shown on a page).
_URL_TOKEN_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# "repo@sha256:<hex>": an "@" that starts an OCI digest ends no userinfo.
_DIGEST_RE = re.compile(r"@[A-Za-z0-9_+.-]+:[0-9a-fA-F]{32,}$")

# C0 and C1 controls, DEL, and the bidi embedding/override/isolate controls (a "Trojan source" label
# would read differently from what it is).
# The one definition of both classes: the ingestion gate (exporter.models) and the config checks
# (exporter.config.schema) build on them too.
BIDI_CONTROLS = "\u200e\u200f\u202a-\u202e\u2066-\u2069"
CONTROL_RE = re.compile(f"[\x00-\x1f\x7f-\x9f{BIDI_CONTROLS}]")
_CONTROL_KEEP_LINES_RE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{BIDI_CONTROLS}]")
_LINES_RE = re.compile("[\t\n]")
SURROGATE_RE = re.compile("[\ud800-\udfff]")

# How the matcher files secrets, by length: (window, step, shortest length). A secret of length L in a
# class is filed under its windows at offsets 0..step-1 (window + step - 1 <= L), so scanning the text
# at every step-th position meets each of its occurrences exactly once.
_CLASSES = ((16, 8, 23), (8, 4, 11), (MIN_SECRET_LENGTH, 1, MIN_SECRET_LENGTH))


def canonical(text: str) -> str:
    """``text`` as the outputs compare it: lone surrogates as U+FFFD, every control character dropped."""
    if SURROGATE_RE.search(text) is not None:
        text = SURROGATE_RE.sub("\ufffd", text)
    if CONTROL_RE.search(text) is not None:
        text = CONTROL_RE.sub("", text)
    return text


# window -> (offset of the window in the secret, secret) for each secret filed under it
_Index = dict[str, tuple[tuple[int, str], ...]]


class _Matcher:
    """Every registered secret, searched at once; updated in place, a few dictionary entries a secret.

    One regular expression over the secrets would be recompiled for each new one (and ``re`` caches
    every compiled pattern: rotating credentials filled that cache with ever-new patterns), and its
    alternation tries each secret at each position. Here each secret is filed under a few fixed-width
    windows of its start (see ``_CLASSES``), and a scan looks up one window every few positions of the
    text: the cost per character is the same however many secrets there are and however long they are
    (real credentials, 30 characters and up, cost one lookup per 8 characters; a secret shorter than
    11 means a lookup at every position, from the first such secret on).

    Changes are made under the registry's lock; a concurrent scan reads each bucket as one tuple, so
    it sees a secret being filed or not, never a torn bucket.
    """

    __slots__ = ("_classes", "_lengths", "min_length")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._classes: tuple[tuple[int, int, _Index], ...] = tuple(
            (width, step, {}) for width, step, _ in _CLASSES
        )
        self._lengths: dict[int, int] = {}  # length -> how many secrets have it
        self.min_length = 0
        for secret in secrets:
            self.add(secret)

    def _windows(self, secret: str) -> Iterator[tuple[_Index, str, int]]:
        for (width, step, index), (_, _, shortest) in zip(self._classes, _CLASSES, strict=True):
            if len(secret) >= shortest:
                for offset in range(step):
                    yield index, secret[offset : offset + width], offset
                return

    def add(self, secret: str) -> None:
        """File ``secret`` (at least ``MIN_SECRET_LENGTH`` long, not filed yet)."""
        for index, window, offset in self._windows(secret):
            index[window] = (*index.get(window, ()), (offset, secret))
        self._lengths[len(secret)] = self._lengths.get(len(secret), 0) + 1
        self.min_length = min(self._lengths)

    def remove(self, secret: str) -> None:
        """Forget ``secret`` (filed before)."""
        for index, window, offset in self._windows(secret):
            rest = tuple(e for e in index.get(window, ()) if e != (offset, secret))
            if rest:
                index[window] = rest
            else:
                index.pop(window, None)
        left = self._lengths.pop(len(secret), 1) - 1
        if left:
            self._lengths[len(secret)] = left
        self.min_length = min(self._lengths, default=0)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where secrets stand in ``text``: leftmost first, the longest at each place, not overlapping."""
        n = len(text)
        if not self.min_length or n < self.min_length:
            return []
        found: list[tuple[int, int]] = []
        for width, step, index in self._classes:
            if not index:
                continue
            get = index.get
            for q in range(0, n - width + 1, step):
                bucket = get(text[q : q + width])
                if bucket is not None:
                    for offset, secret in bucket:
                        p = q - offset
                        if p >= 0 and text.startswith(secret, p):
                            found.append((p, p + len(secret)))
        if len(found) > 1:
            found.sort(key=lambda span: (span[0], -span[1]))
        out: list[tuple[int, int]] = []
        for start, stop in found:
            if not out or start >= out[-1][1]:
                out.append((start, stop))
        return out


@dataclass(frozen=True, slots=True)
class SecretsSnapshot:
    """What the registry held at one moment (see :func:`snapshot_secrets`)."""

    pinned: tuple[str, ...]
    rotating: tuple[str, ...]


_lock = threading.Lock()
_pinned: dict[str, None] = {}  # insertion-ordered sets, of canonical secrets
_rotating: dict[str, None] = {}
_matcher = _Matcher()
_generation = 0  # bumped by every change: a memo of gated text keys on it


def generation() -> int:
    """A number that changes whenever the set of masked secrets does (for memos of gated text)."""
    return _generation


def _add(value: str | None, pin: bool) -> None:
    """File one secret (the lock held)."""
    global _generation
    if value is None:
        return
    secret = canonical(value)
    if len(secret) < MIN_SECRET_LENGTH or secret in _pinned or (secret in _rotating and not pin):
        return
    if pin:
        filed = secret in _rotating
        _rotating.pop(secret, None)
        _pinned[secret] = None
        if filed:  # already masked, now kept for good
            return
    else:
        _rotating[secret] = None
        while len(_rotating) > MAX_SECRETS:
            oldest = next(iter(_rotating))
            del _rotating[oldest]
            _matcher.remove(oldest)
    _matcher.add(secret)
    _generation += 1


def register_secret(value: str | None, *, pin: bool = False) -> None:
    """Mask ``value`` wherever it appears in any later output (``None`` and short values are ignored).

    Unpinned secrets (fetched, rotating credentials) are bounded to the newest ``MAX_SECRETS``; ``pin``
    keeps one for the life of the process (the settings loader pins the config file's).
    """
    with _lock:
        _add(value, pin)


def register_secrets(values: Iterable[str | None]) -> None:
    """Register several (rotating) secrets at once."""
    with _lock:
        for value in values:
            _add(value, False)


def registered_secret_count() -> int:
    """How many secrets are currently masked (for tests and diagnostics)."""
    return len(_pinned) + len(_rotating)


def snapshot_secrets() -> SecretsSnapshot:
    """The registered secrets as they are now, for :func:`restore_secrets`."""
    with _lock:
        return SecretsSnapshot(tuple(_pinned), tuple(_rotating))


def restore_secrets(snapshot: SecretsSnapshot) -> None:
    """Make the registry hold exactly what ``snapshot`` held (tests: one test's secrets stay its own)."""
    global _matcher, _generation
    with _lock:
        _pinned.clear()
        _pinned.update(dict.fromkeys(snapshot.pinned))
        _rotating.clear()
        _rotating.update(dict.fromkeys(snapshot.rotating))
        # Built aside and swapped in with one assignment: a concurrent scrub sees the old set or the new.
        _matcher = _Matcher([*_pinned, *_rotating])
        _generation += 1


@contextmanager
def scoped_secrets() -> Iterator[None]:
    """Secrets registered inside the block are forgotten at its end (the ones before it stay)."""
    saved = snapshot_secrets()
    try:
        yield
    finally:
        restore_secrets(saved)


def contains_secret(text: str) -> bool:
    """Whether ``text`` contains a registered secret (controls inside it or around it ignored)."""
    return bool(_matcher.spans(canonical(text)))


def split_userinfo(url: str) -> tuple[str, str, str]:
    """``(scheme, userinfo, rest)`` of a URL, the scheme optional (registry URLs usually have none).

    The userinfo ends at the last ``@`` that does not start a trailing digest: a password may hold
    ``/``, ``?`` or ``@``, which registry clients accept unencoded, so cutting more is the safe side.
    """
    match = _SCHEME_RE.match(url)
    scheme = match.group(0) if match else ""
    rest = url[len(scheme) :]
    digest = _DIGEST_RE.search(rest)
    tail = digest.group(0) if digest else ""
    userinfo, at, host = rest[: len(rest) - len(tail)].rpartition("@")
    return (scheme, userinfo, host + tail) if at else (scheme, "", rest)


def _userinfo_spans(text: str) -> list[tuple[int, int]]:
    out = []
    for match in _URL_TOKEN_RE.finditer(text):
        scheme, userinfo, _rest = split_userinfo(match.group(0))
        if userinfo:
            start = match.start() + len(scheme)
            out.append((start, start + len(userinfo)))
    return out


def _looked_through(text: str, ignorable: re.Pattern[str]) -> list[tuple[int, int]]:
    """Secret spans in ``text``, found in it with ``ignorable`` characters taken out."""
    kept_at: list[int] = []  # where each kept run starts, in the text without them
    text_at: list[int] = []  # and in the text
    runs: list[str] = []
    pos = length = 0
    for match in ignorable.finditer(text):
        if match.start() > pos:
            kept_at.append(length)
            text_at.append(pos)
            runs.append(text[pos : match.start()])
            length += match.start() - pos
        pos = match.end()
    if pos < len(text):
        kept_at.append(length)
        text_at.append(pos)
        runs.append(text[pos:])

    def place(k: int) -> int:
        run = bisect.bisect_right(kept_at, k) - 1
        return text_at[run] + k - kept_at[run]

    return [(place(start), place(stop - 1) + 1) for start, stop in _matcher.spans("".join(runs))]


def _masked(text: str, ignorable: re.Pattern[str] | None) -> str:
    """``text`` with secrets and URL userinfo replaced; characters ``ignorable`` matches are looked
    through when finding secrets (one split by them is still found) and kept where nothing is masked."""
    if ignorable is not None and ignorable.search(text) is not None:
        spans = _looked_through(text, ignorable)
    else:
        spans = _matcher.spans(text)
    if "://" in text:
        spans = sorted([*spans, *_userinfo_spans(text)])
    if not spans:
        return text
    out: list[str] = []
    done = 0
    for start, stop in spans:
        if start < done:  # a secret inside a URL's userinfo: one mask for both
            done = max(done, stop)
            continue
        out += (text[done:start], REDACTED)
        done = stop
    out.append(text[done:])
    return "".join(out)


def mask_secrets(text: str) -> str:
    """``text`` with every registered secret and every URL userinfo replaced by ``[REDACTED]``.

    Controls stay where nothing is masked, but a secret with control characters inside, or split by
    them, is found; lone surrogates become U+FFFD (as secrets are registered).
    """
    if SURROGATE_RE.search(text) is not None:
        text = SURROGATE_RE.sub("\ufffd", text)  # one code point for one: positions stay
    return _masked(text, CONTROL_RE)


def scrub(text: str, *, keep_lines: bool = False) -> str:
    """``text`` made safe for any output: secrets masked, lone surrogates replaced, controls dropped.

    ``keep_lines`` keeps newlines and tabs (a log line's traceback stays readable); a secret split by
    them is masked all the same. Controls are dropped before masking, so none can hide a secret.
    """
    if SURROGATE_RE.search(text) is not None:
        text = SURROGATE_RE.sub("\ufffd", text)
    controls = _CONTROL_KEEP_LINES_RE if keep_lines else CONTROL_RE
    if controls.search(text) is not None:
        text = controls.sub("", text)
    return _masked(text, _LINES_RE if keep_lines else None)
