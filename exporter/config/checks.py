"""What a valid config may still get wrong: warnings, and whether this machine can keep its state file.

:func:`config_warnings` lists settings that are valid but probably unintended, one line each and each once
(``--check-config`` prints them, ``run`` and ``check`` log them at start): nothing to watch, plain HTTP to a
remote endpoint, an image timeout longer than the cycle, a region outside the documented E-HPC Instant
regions (:data:`exporter.regions.KNOWN_REGIONS`, with a did-you-mean: regions are added without notice, so
never an error), and an image id that does not look like one. A typo in either otherwise only shows at run
time, as a ``ConnectionError`` or an ``ImageNotFound``.

:func:`state_path_problems` says why ``state.path`` cannot be used here (its directory missing or not
writable): the exporter would start cold and keep nothing, so ``--check-config`` refuses it and ``run``
says so loudly at start.

Lines name the place in the file (``targets[1].regions[0].region_id``) and pass the output gate; a value
is quoted only when short and plain (:func:`exporter.config.errors.shown`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from urllib.parse import urlsplit

from exporter.config.errors import Loc, close_match, format_loc, shown
from exporter.config.model import Config, DiscoveryConfig, Scope, WatchedImage
from exporter.redaction import scrub
from exporter.regions import KNOWN_REGIONS

__all__ = ["IMAGE_ID_RE", "MAX_SHOWN_PER_KIND", "config_warnings", "state_path_problems"]

# What an E-HPC Instant image id looks like. The API reference's examples are "m-2ze74g5mvy4pjg*****" and
# "m-uf60twafjtaart******" (ECS image ids: "m-" and 20 lower-case letters and digits, 5 or 6 of them
# masked), the simulator makes the same shape, and a copy in another region gets an id of that shape too.
# 8 to 32 rather than exactly 20: older ECS ids are shorter, and this is only a warning.
IMAGE_ID_RE = re.compile(r"m-[a-z0-9]{8,32}")  # matched whole
IMAGE_ID_SHAPE = "'m-' and 8 to 32 lower-case letters and digits, like m-2ze74g5mvy4pjg12345"
# Distinct undocumented regions, or odd image ids, listed one line each; the rest are counted in one line.
MAX_SHOWN_PER_KIND = 20
_NOTHING_TO_WATCH = "images: no images to watch and discovery is disabled"


def config_warnings(config: Config) -> list[str]:
    """Valid but probably unintended settings, one line each, each once (printed by --check-config, logged
    at start)."""
    out = [
        *_scope_warnings(config),
        *_grouped(
            _region_places(config),
            lambda region: region not in KNOWN_REGIONS,
            lambda region: f"region{shown(region)} is not a documented E-HPC Instant region{_hint(region)}",
            "regions that are not documented E-HPC Instant regions",
        ),
        *_grouped(
            _image_id_places(config),
            lambda image_id: IMAGE_ID_RE.fullmatch(image_id) is None,
            lambda image_id: (
                f"image id{shown(image_id)} does not look like an E-HPC Instant image id ({IMAGE_ID_SHAPE})"
            ),
            "image ids that do not look like one",
        ),
    ]
    return list(dict.fromkeys(scrub(line) for line in out))


def state_path_problems(config: Config) -> list[str]:
    """Why this machine cannot keep the state file at ``state.path`` (none: it can, or there is none).

    The exporter then starts cold and saves nothing; ``state`` only ever counts and logs it, so a start
    never fails on it, and this is where it is said before the start.
    """
    if config.state is None:
        return []
    path = os.path.abspath(config.state.path)
    directory = os.path.dirname(path)
    cold = "the exporter would start cold and keep no state across restarts"
    if not os.path.exists(directory):
        problem = f"directory {_quoted(directory)} does not exist"
    elif not os.path.isdir(directory):
        problem = f"{_quoted(directory)} is not a directory"
    elif not os.access(directory, os.W_OK | os.X_OK):
        # The -wal and -shm files and moved-aside copies are made beside the file.
        problem = f"directory {_quoted(directory)} is not writable by this user"
    elif os.path.lexists(path) and not os.path.isfile(path):
        problem = f"{_quoted(path)} is not a regular file"
    elif os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        problem = f"{_quoted(path)} is not readable and writable by this user"
    else:
        return []
    return [scrub(f"state.path: {problem}; {cold}")]


def _quoted(path: str) -> str:
    return f"'{path}'"


# --------------------------------------------------------------------------------------------------------
# Per (account, region): said once, for where it holds.


def _of_scope(scope: Config) -> Iterator[str]:
    if not scope.images and not scope.discovery.enabled:
        yield _NOTHING_TO_WATCH
    if scope.api.protocol == "http" and not _is_loopback_endpoint(scope.api.endpoint):
        yield "api.protocol: 'http' sends requests (and any STS token) unencrypted; use it only for testing"
    if scope.refresh.image_timeout_seconds > scope.refresh.interval_seconds:
        yield (
            "refresh.image_timeout_seconds: longer than refresh.interval_seconds, so a slow image can make a"
            " cycle overrun the next one"
        )


def _scope_warnings(config: Config) -> list[str]:
    """Each warning once, for the (account, region) pairs it holds in: unqualified when it holds in every
    one (a setting of the top level, or of every target), else naming the accounts (and regions)."""
    scopes = config.scopes()
    held: dict[str, list[Scope]] = {}
    for scope in scopes:
        for text in _of_scope(scope):
            held.setdefault(text, []).append(scope.scope)
    out = []
    for text, where in held.items():
        everywhere = len(where) == len(scopes)
        if text == _NOTHING_TO_WATCH and everywhere:
            text += "; only the exporter's own metrics are served"
        out.append(text if everywhere else f"{_accounts(config, where)}: {text}")
    return out


def _accounts(config: Config, where: Sequence[Scope]) -> str:
    """``account prod`` or ``accounts prod, staging (cn-shanghai)``: the regions named where a warning
    holds in only some of an account's regions."""
    parts = []
    for target in config.targets:
        regions = [s.region_id for s in where if s.account == target.account]
        if not regions:
            continue
        whole = len(regions) == len(target.regions)
        parts.append(target.account if whole else f"{target.account} ({', '.join(regions)})")
    return f"account{'s' if len(parts) > 1 else ''} {', '.join(parts)}"


def _is_loopback_endpoint(endpoint: str | None) -> bool:
    if endpoint is None:
        return False
    host = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}").hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


# --------------------------------------------------------------------------------------------------------
# Values written in the file: each odd one once, at the first place it is written.


def _targets(config: Config) -> Iterator[tuple[Loc, Sequence[WatchedImage], DiscoveryConfig]]:
    """The top level of a one-target file, or each target, with what it watches."""
    if not config.targets:
        yield (), config.images, config.discovery
    for i, target in enumerate(config.targets):
        yield ("targets", i), target.images, target.discovery


def _region_places(config: Config) -> Iterator[tuple[Loc, str]]:
    """Every region the file writes, where it writes it."""
    if not config.targets:
        yield ("api", "region_id"), config.api.region_id
    for i, target in enumerate(config.targets):
        for j, api in enumerate(target.regions):
            yield ("targets", i, "regions", j, "region_id"), api.region_id
    for base, images, discovery in _targets(config):
        for k, image in enumerate(images):
            for j, region in enumerate(image.additional_region_ids):
                yield (*base, "images", k, "additional_regions", j), region
        for j, region in enumerate(discovery.additional_region_ids):
            yield (*base, "discovery", "additional_regions", j), region


def _image_id_places(config: Config) -> Iterator[tuple[Loc, str]]:
    """Every image id the file writes, where it writes it."""
    for base, images, discovery in _targets(config):
        for k, image in enumerate(images):
            yield (*base, "images", k, "id"), image.image_id
        for j, image_id in enumerate(discovery.image_ids):
            yield (*base, "discovery", "ids", j), image_id


def _grouped(
    places: Iterator[tuple[Loc, str]], odd: Callable[[str], bool], describe: Callable[[str], str], kind: str
) -> list[str]:
    """One line per distinct odd value (at the first place it is written, with how many more places
    write it), the first MAX_SHOWN_PER_KIND of them, then one line counting the rest."""
    first: dict[str, tuple[Loc, int]] = {}
    for loc, value in places:
        if odd(value):
            at, more = first.get(value, (loc, -1))
            first[value] = (at, more + 1)
    out = []
    for value, (loc, more) in list(first.items())[:MAX_SHOWN_PER_KIND]:
        also = f" (also in {more} more place{'s' if more != 1 else ''})" if more else ""
        out.append(f"{format_loc(loc)}: {describe(value)}{also}")
    if len(first) > MAX_SHOWN_PER_KIND:
        out.append(f"{len(first) - MAX_SHOWN_PER_KIND} more {kind} not shown")
    return out


def _hint(region: str) -> str:
    close = close_match(region, KNOWN_REGIONS)
    return f" (did you mean '{close[0]}'?)" if close else ""
