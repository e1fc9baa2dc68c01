"""The output gate: every string the exporter publishes passes :func:`scrub` on its way out.

The exporter learns secrets as it runs: the config file's AccessKey secrets and STS tokens (pinned for
the life of the process), every credential the alibabacloud-credentials providers fetch, and the registry
user names and passwords that GetImage answers carry. Each is registered here once
(:func:`register_secret`). :func:`scrub` then makes any text safe to show: registered secrets and URL
userinfo become ``[REDACTED]``, lone surrogates become U+FFFD (so no encoder can fail on them), and
control and bidi characters are dropped (so a terminal or a page shows what a person reads). The views
that use it: metric label values (``exporter.exposition``), the landing page (``exporter.http.landing``), the
``check`` command (``exporter.cli``) and every log line (``exporter.logging``).

The ingestion gate (``exporter.models``) refuses answers that carry a registered secret in the first
place; this gate is the second line, for whatever reaches an output by any other way.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

__all__ = [
    "BIDI_CONTROLS",
    "CONTROL_RE",
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "SURROGATE_RE",
    "contains_secret",
    "mask_secrets",
    "register_registry_secret",
    "register_secret",
    "register_secrets",
    "registered_secret_count",
    "scrub",
    "split_userinfo",
]

REDACTED = "[REDACTED]"
# Shorter strings are not masked: masking a two-letter "secret" would shred every line, and no real
# AccessKey secret, STS token or registry password worth the name is that short.
MIN_SECRET_LENGTH = 4
# STS tokens rotate hourly for the life of the process; keep the newest ones, the oldest have expired.
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
SURROGATE_RE = re.compile("[\ud800-\udfff]")

# Registry credentials come from API answers: one per Container image, so thousands in a large fleet,
# registered as the first cycle meets them. They live in their own pool, so that answers cannot evict
# credentials, bounded well above any fleet (a hostile answer inventing them costs memory, not masking).
MAX_REGISTRY_SECRETS = 100_000
# Registry credentials shorter than this are not registered: a four-letter user name ("root") masked
# everywhere would shred names and statuses, and answers carrying it would be refused.
MIN_REGISTRY_SECRET_LENGTH = 6


class _PrefixIndex:
    """Many secrets searched at once, with O(1) registration: each is filed under its first characters.

    One regular expression over every secret would be recompiled for each new one (the first cycle of a
    fleet of 10,000 Container images would compile 10,000 ever longer patterns); this looks up the
    ``MIN_REGISTRY_SECRET_LENGTH``-character window at each position of the text instead.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        # prefix -> secret length -> the secrets (secrets share prefixes: "leakpw..." x 10,000)
        self._buckets: dict[str, dict[int, set[str]]] = {}
        self.size = 0

    def add(self, secret: str) -> None:
        """File ``secret`` (at least ``width`` characters long)."""
        self._buckets.setdefault(secret[: self.width], {}).setdefault(len(secret), set()).add(secret)
        self.size += 1

    def remove(self, secret: str) -> None:
        """Forget ``secret``."""
        key = secret[: self.width]
        by_length = self._buckets.get(key, {})
        same = by_length.get(len(secret), set())
        if secret in same:
            same.discard(secret)
            self.size -= 1
            if not same:
                del by_length[len(secret)]
            if not by_length:
                del self._buckets[key]

    def _match(self, text: str, i: int) -> str | None:
        by_length = self._buckets.get(text[i : i + self.width])
        if by_length is not None:
            for length in sorted(by_length, reverse=True):  # the longest secret wins
                candidate = text[i : i + length]
                if candidate in by_length[length]:
                    return candidate
        return None

    def contains(self, text: str) -> bool:
        """Whether ``text`` contains a filed secret."""
        if not self._buckets or len(text) < self.width:
            return False
        return any(self._match(text, i) is not None for i in range(len(text) - self.width + 1))

    def mask(self, text: str) -> str:
        """``text`` with every filed secret replaced by ``[REDACTED]`` (longest match first)."""
        if not self._buckets or len(text) < self.width:
            return text
        out: list[str] = []
        i = start = 0
        last = len(text) - self.width
        while i <= last:
            secret = self._match(text, i)
            if secret is None:
                i += 1
                continue
            out += (text[start:i], REDACTED)
            i = start = i + len(secret)
        return "".join(out) + text[start:] if out else text


_lock = threading.Lock()
_pinned: dict[str, None] = {}  # insertion-ordered sets
_rotating: dict[str, None] = {}
_registry: dict[str, None] = {}
_registry_index = _PrefixIndex(MIN_REGISTRY_SECRET_LENGTH)
_pattern: re.Pattern[str] | None = None
_generation = 0  # bumped by every registration: a memo of gated text keys on it


def generation() -> int:
    """A number that changes whenever the set of masked secrets does (for memos of gated text)."""
    return _generation


def _recompile() -> None:
    global _pattern, _generation
    _generation += 1
    # The few credentials (the config's, and the fetched ones) in one alternation, longest first so a
    # secret that contains another is masked whole. Escaped literals: it cannot backtrack badly.
    ordered = sorted({*_pinned, *_rotating}, key=len, reverse=True)
    _pattern = re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None


def register_secret(value: str | None, *, pin: bool = False) -> None:
    """Mask ``value`` wherever it appears in any later output (``None`` and short values are ignored).

    Unpinned secrets (fetched, rotating credentials) are bounded to the newest ``MAX_SECRETS``; ``pin``
    keeps one for the life of the process (the settings loader pins the config file's).
    """
    if value is None or len(value) < MIN_SECRET_LENGTH:
        return
    with _lock:
        if value in _pinned or (value in _rotating and not pin):
            return
        if pin:
            _rotating.pop(value, None)
            _pinned[value] = None
        else:
            _rotating[value] = None
            while len(_rotating) > MAX_SECRETS:
                del _rotating[next(iter(_rotating))]
        _recompile()


def register_registry_secret(value: str | None) -> None:
    """Mask a registry user name or password seen in an API answer (bounded pool, newest kept)."""
    global _generation
    if value is None or len(value) < MIN_REGISTRY_SECRET_LENGTH:
        return
    with _lock:
        if value in _registry:
            return
        _generation += 1
        _registry[value] = None
        _registry_index.add(value)
        while len(_registry) > MAX_REGISTRY_SECRETS:
            oldest = next(iter(_registry))
            del _registry[oldest]
            _registry_index.remove(oldest)


def register_secrets(values: Iterable[str | None]) -> None:
    """Register several secrets at once."""
    for value in values:
        register_secret(value)


def registered_secret_count() -> int:
    """How many secrets are currently masked (for tests and diagnostics)."""
    return len(_pinned) + len(_rotating) + len(_registry)


def contains_secret(text: str) -> bool:
    """Whether ``text`` contains a registered secret."""
    pattern = _pattern  # one read: registration swaps the compiled pattern atomically
    return (pattern is not None and pattern.search(text) is not None) or _registry_index.contains(text)


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


def _mask_url(match: re.Match[str]) -> str:
    scheme, userinfo, rest = split_userinfo(match.group(0))
    return f"{scheme}{REDACTED}@{rest}" if userinfo else match.group(0)


def mask_secrets(text: str) -> str:
    """``text`` with every registered secret and every URL userinfo replaced by ``[REDACTED]``."""
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    text = _registry_index.mask(text)
    if "://" in text:
        text = _URL_TOKEN_RE.sub(_mask_url, text)
    return text


def scrub(text: str, *, keep_lines: bool = False) -> str:
    """``text`` made safe for any output: secrets masked, lone surrogates replaced, controls dropped.

    ``keep_lines`` keeps newlines and tabs (a log line's traceback stays readable).
    """
    text = mask_secrets(text)
    if SURROGATE_RE.search(text) is not None:
        text = SURROGATE_RE.sub("\ufffd", text)
    controls = _CONTROL_KEEP_LINES_RE if keep_lines else CONTROL_RE
    if controls.search(text) is not None:
        text = controls.sub("", text)
    return text
