"""The size limits of a config file (exporter.config.schema's MAX_*, measured by bench/limits.py): a file
at each limit loads, one just past it is one located error naming the limit, whatever shape reaches it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import Config
from exporter.config.load import ConfigError, load_config
from exporter.config.schema import (
    MAX_ERROR_CODES,
    MAX_REGIONS_PER_IMAGE,
    MAX_REGIONS_PER_TARGET,
    MAX_SCOPES,
    MAX_TARGETS,
    MAX_WATCHED_IMAGE_REGIONS,
)

KEY = {"type": "access_key", "access_key_id": "LTAI-limits", "access_key_secret": "limits-secret-value"}
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# At the limit, or just past it (by one, or by a few).
PAST = st.sampled_from((0, 0, 1, 1, 2, 7))


def region(i: int) -> str:
    return f"cn-limit{i:03d}"


def target(account: int, regions: int, **extra: Any) -> dict[str, Any]:
    entries = [{"region_id": region(r)} for r in range(regions)]
    return {"account": f"acct-{account}", "credentials": KEY, "regions": entries, **extra}


def load(tmp_path: Path, doc: dict[str, Any]) -> Config | list[str]:
    """The config, or its error lines (each checked to be one line without the secret)."""
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    try:
        return load_config(str(path))
    except ConfigError as exc:
        for line in exc.errors:
            assert "\n" not in line
            assert KEY["access_key_secret"] not in line
            assert line.startswith(f"{path}: ")
        return exc.errors


def judged(tmp_path: Path, doc: dict[str, Any], over: int, needle: str) -> None:
    """At the limit (``over`` 0) the file loads; past it, exactly one line, and it names ``needle``."""
    got = load(tmp_path, doc)
    if over == 0:
        assert isinstance(got, Config), got
    else:
        assert isinstance(got, list), f"{over} past the limit and accepted"
        assert len(got) == 1, got
        assert needle in got[0], got


@FUZZ
@given(over=PAST, data=st.data())
def test_account_region_pairs(tmp_path: Path, over: int, data: st.DataObject) -> None:
    """(account, region) pairs in all, however the targets split them."""
    left, targets = MAX_SCOPES + over, list[dict[str, Any]]()
    while left:
        n = data.draw(st.integers(1, min(left, MAX_REGIONS_PER_TARGET)))
        targets.append(target(len(targets), n))
        left -= n
    if len(targets) > MAX_TARGETS:  # only a split into more targets than allowed: that line is its own
        return
    judged(
        tmp_path,
        {"targets": targets},
        over,
        f"(account, region) pairs in all (the regions of every target); at most {MAX_SCOPES}",
    )


def past_only(got: Config | list[str], over: int, needle: str) -> None:
    """Like :func:`judged`, for a limit as large as MAX_SCOPES: past it, the pairs' line may come too."""
    if over == 0:
        assert isinstance(got, Config), got
        return
    assert isinstance(got, list), f"{over} past the limit and accepted"
    pairs = f"(account, region) pairs in all (the regions of every target); at most {MAX_SCOPES}"
    assert [line for line in got if needle in line], got
    assert all(needle in line or pairs in line for line in got), got


@FUZZ
@given(over=PAST)
def test_regions_of_one_target(tmp_path: Path, over: int) -> None:
    got = load(tmp_path, {"targets": [target(0, MAX_REGIONS_PER_TARGET + over)]})
    past_only(got, over, f"targets[0].regions: must have at most {MAX_REGIONS_PER_TARGET} item(s)")


@FUZZ
@given(over=PAST)
def test_targets(tmp_path: Path, over: int) -> None:
    got = load(tmp_path, {"targets": [target(i, 1) for i in range(MAX_TARGETS + over)]})
    past_only(got, over, f"targets: must have at most {MAX_TARGETS} item(s)")


@FUZZ
@given(over=PAST)
def test_error_codes(tmp_path: Path, over: int) -> None:
    doc = {"limits": {"max_error_codes": MAX_ERROR_CODES + over}}
    judged(tmp_path, doc, over, f"limits.max_error_codes: must be at most {MAX_ERROR_CODES}")


@FUZZ
@given(over=PAST)
def test_regions_per_image(tmp_path: Path, over: int) -> None:
    doc = {"limits": {"max_regions_per_image": MAX_REGIONS_PER_IMAGE + over}}
    judged(tmp_path, doc, over, f"limits.max_regions_per_image: must be at most {MAX_REGIONS_PER_IMAGE}")


@FUZZ
@given(over=PAST, data=st.data(), in_targets=st.booleans())
def test_distinct_additional_regions_of_one_target(
    tmp_path: Path, over: int, data: st.DataObject, in_targets: bool
) -> None:
    """Each image within its own bound, but together (and with discovery) naming too many regions."""
    wanted = [f"ap-copy{i:03d}" for i in range(MAX_REGIONS_PER_IMAGE + over)]
    images: list[dict[str, Any]] = []
    left = list(wanted)
    discovery_regions = data.draw(st.integers(0, min(len(left), 5)))
    discovery = {"enabled": False, "additional_regions": left[:discovery_regions]}
    left = left[discovery_regions:]
    while left:
        n = data.draw(st.integers(1, min(len(left), MAX_REGIONS_PER_IMAGE)))
        again = data.draw(st.lists(st.sampled_from(wanted), max_size=3, unique=True))  # repeats count once
        regions = list(dict.fromkeys([*left[:n], *again]))[:MAX_REGIONS_PER_IMAGE]
        images.append({"id": f"m-{len(images):08d}", "additional_regions": regions})
        left = left[n:]
    body: dict[str, Any] = {"images": images, "discovery": discovery}
    doc = {"targets": [{**target(0, 1), **body}]} if in_targets else {"credentials": KEY, **body}
    judged(
        tmp_path,
        doc,
        over,
        f"distinct additional regions together with discovery; at most {MAX_REGIONS_PER_IMAGE}",
    )


@FUZZ
@given(over=PAST, data=st.data(), in_targets=st.booleans(), shards=st.sampled_from((1, 1, 2, 3)))
def test_watched_image_regions(
    tmp_path: Path, over: int, data: st.DataObject, in_targets: bool, shards: int
) -> None:
    """Static images (each once plus once per additional region) and what discovery may find
    (page_size x max_pages, times its regions), in all the target's regions, summed; an even share of it
    per replica when sharded."""
    budget = MAX_WATCHED_IMAGE_REGIONS * shards
    divisors = [r for r in (1, 2, 4, 5, 8) if budget % r == 0]
    regions = data.draw(st.sampled_from(divisors)) if in_targets else 1
    per_region = budget // regions + over  # past the limit by `over` in every region
    copies = data.draw(st.integers(0, 4))
    page_size = data.draw(st.integers(-(-(budget + 7) // 100_000), 100))  # max_pages <= 100,000
    slack = data.draw(st.integers(0, 2000))
    pages = max(0, per_region - slack) // (page_size * (1 + copies))
    left = per_region - page_size * pages * (1 + copies)
    images: list[dict[str, Any]] = []
    while left:
        n = min(left - 1, data.draw(st.integers(0, 20)))
        images.append({"id": f"m-{len(images):08d}", "additional_regions": [f"ap-copy{i}" for i in range(n)]})
        left -= 1 + n
    discovery: dict[str, Any] = {"enabled": pages > 0, "page_size": page_size, "max_pages": max(1, pages)}
    discovery["additional_regions"] = [f"ap-copy{i}" for i in range(copies)]
    body: dict[str, Any] = {"images": images, "discovery": discovery}
    doc: dict[str, Any] = (
        {"targets": [{**target(0, regions), **body}]} if in_targets else {"credentials": KEY, **body}
    )
    doc["sharding"] = {"shards": shards, "shard": shards - 1}
    judged(tmp_path, doc, over, "image-regions in all")
