"""What the default exposition costs: series per image, no family dropped, nothing dense it does not need.

The default (``metrics.state_sets: current``) is the whole table (``full``) without two kinds of sample:
a state set's samples valued 0, and the since-timestamp of a copy that ``ehpc_image_replication_available``
calls available (the series semantics at the top of :mod:`exporter.exposition.families`). These tests count
it from a real render, and prove that relation for any image state.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ehpc_simulator import SimImage
from exporter.config import DiscoveryConfig, MetricsConfig, StatusConfig, WatchedImage
from exporter.exposition import TABLE, MetricName, render_snapshot
from exporter.exposition import families as families_module
from exporter.exposition.families import build_table
from exporter.history import ImageHistory, observe
from exporter.service import ExporterService
from exporter.snapshot import ImageError, ImageState, Snapshot
from tests.exporter_support import make_image, sim_config
from tests.fixtures.http import wait_until_async
from tests.fixtures.sim import RunningSimulator
from tests.test_exposition import NOW, reference

STATE_SETS = (MetricName.IMAGE_STATUS, MetricName.IMAGE_REPLICATION_STATUS)
SPARSE_SINCE = MetricName.IMAGE_REPLICATION_SINCE
# The families a healthy image with requested regions has no sample of in the default form, and when it
# has one: the families docstring names each (test_conditional_families_are_documented).
CONDITIONAL = {
    MetricName.IMAGE_LAST_ERROR: "only while the image fails",
    MetricName.IMAGE_REPLICATION_SINCE: "only while that copy is not available",
}
FIVE_REGIONS = ("ap-southeast-1", "cn-beijing", "cn-shanghai", "cn-shenzhen", "cn-wulanchabu")
COST_ID = "m-cost00000000000000001"
# The issue's budget: series per image at 5 replication regions in the default form.
BUDGET_AT_5_REGIONS = 20

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_HELP = re.compile(rf"^# HELP (?:{'|'.join((*STATE_SETS, SPARSE_SINCE))}) .*\n", re.MULTILINE)


def _copy_key(labels: str) -> tuple[str, ...]:
    """The (account, region, image, replication region) a sample's label text names."""
    found = dict(_LABEL.findall(labels))
    return tuple(found.get(k, "") for k in ("account", "region_id", "image_id", "replication_region"))


def without_sparse(full: str) -> str:
    """The whole-table exposition ``full`` cut as the default form is documented: no state-set sample
    valued 0, no since-timestamp of a copy ``ehpc_image_replication_available`` calls available, and
    ``ehpc_exposition_series`` (when there) counting what is left. Help lines are left as they are."""
    lines = full.splitlines(keepends=True)
    parsed = [_SAMPLE.match(line.rstrip("\n")) for line in lines]
    available = {
        _copy_key(m.group(2))
        for m in parsed
        if m and m.group(1) == MetricName.IMAGE_REPLICATION_AVAILABLE and float(m.group(3)) == 1.0
    }
    out = []
    for line, m in zip(lines, parsed, strict=True):
        if m and m.group(1) in STATE_SETS and float(m.group(3)) == 0.0:
            continue
        if m and m.group(1) == SPARSE_SINCE and _copy_key(m.group(2)) in available:
            continue
        out.append(line)
    left = "".join(out)
    series = re.compile(r"^(ehpc_exposition_series) (\S+)$", re.MULTILINE)
    if found := series.search(left):
        count = int(float(found.group(2))) - (len(lines) - len(out))
        left = series.sub(rf"\g<1> {count}.0", left)
    return left


def without_sparse_help(text: str) -> str:
    """``text`` without the help lines of the three families whose help says which form it is."""
    return _HELP.sub("", text)


# --------------------------------------------------------------------------------------------------------
# Counted from a real render: the simulator, the refresher, the renderer and /metrics over HTTP.


def per_image(body: str, image_id: str) -> list[str]:
    """The sample lines of ``image_id``."""
    return [line for line in body.splitlines() if f'image_id="{image_id}"' in line and line[0] != "#"]


def family_of(line: str) -> str:
    return re.split(r"[{ ]", line, maxsplit=1)[0]


async def scrape(svc: ExporterService) -> str:
    async with aiohttp.ClientSession() as http, http.get(svc.url + "/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


@pytest.mark.parametrize("regions", [1, 5])
@pytest.mark.parametrize("state_sets", ["current", "full"])
async def test_series_per_healthy_image_and_no_family_dropped(
    simulator: RunningSimulator, regions: int, state_sets: str
) -> None:
    """A healthy image replicated to ``regions`` regions: the default costs 10 series plus 2 per region
    (20 at 5, the budget), ``full`` 15 plus 8 (55 at 5); every family of the table has a sample but the
    documented conditional ones, and those appear when their condition holds (a copy in flight, a failure);
    a deleted image then has no state-set sample in the default form (every status at 0 in ``full``)."""
    requested = FIVE_REGIONS[:regions]
    simulator.sim.images[COST_ID] = SimImage(
        COST_ID, name="cost", regions=dict.fromkeys(requested, "Available")
    )
    discovery = DiscoveryConfig(enabled=True, image_ids=(COST_ID,), additional_region_ids=requested)
    # Listed as well as discovered (one image): once deleted, discovery no longer finds it, the list keeps it.
    config = sim_config(
        simulator, [WatchedImage(COST_ID, additional_region_ids=requested)], discovery=discovery
    )
    if state_sets != MetricsConfig().state_sets:
        config = replace(config, metrics=MetricsConfig(state_sets=state_sets))  # type: ignore[arg-type]
    svc = ExporterService(config, process_metrics=False)
    await svc.start()
    try:
        await wait_until_async(lambda: svc.ready)
        body = await scrape(svc)
        lines = per_image(body, COST_ID)
        expected = 10 + 2 * regions if state_sets == "current" else 15 + 8 * regions
        assert len(lines) == expected, lines
        if state_sets == "current" and regions == 5:
            assert len(lines) <= BUDGET_AT_5_REGIONS
        present = {family_of(line) for line in body.splitlines() if line and line[0] != "#"}
        absent = {spec.name for spec in TABLE.specs} - present
        assert absent == (set(CONDITIONAL) if state_sets == "current" else {MetricName.IMAGE_LAST_ERROR})

        # A copy in flight: its since-timestamp appears, for that copy only; the others' stay out.
        simulator.sim.images[COST_ID].regions[requested[0]] = "Creating"
        await svc.refresh_once()
        since = [line for line in per_image(await scrape(svc), COST_ID) if family_of(line) == SPARSE_SINCE]
        assert len(since) == (1 if state_sets == "current" else regions)
        assert any(f'replication_region="{requested[0]}"' in line for line in since)

        # Failing: the error family appears, the last good data stays.
        simulator.sim.images[COST_ID].error = "Throttling.User"
        await svc.refresh_once()
        failing = {family_of(line) for line in per_image(await scrape(svc), COST_ID)}
        assert MetricName.IMAGE_LAST_ERROR in failing
        assert MetricName.IMAGE_STATUS in failing

        # Deleted: no all-0 state set in the default form.
        del simulator.sim.images[COST_ID]
        await svc.refresh_once()
        gone = per_image(await scrape(svc), COST_ID)
        assert 'code="ImageNotFound"' in " ".join(gone)
        state_set_lines = [line for line in gone if family_of(line) in STATE_SETS]
        if state_sets == "current":
            assert state_set_lines == []
        else:
            assert state_set_lines
            assert all(line.endswith(" 0.0") for line in state_set_lines)
        assert any(
            line.startswith(f"{MetricName.IMAGE_AVAILABLE}{{") and line.endswith(" 0.0") for line in gone
        )
    finally:
        await svc.stop()


def test_conditional_families_are_documented() -> None:
    """Each family a healthy image may lack is named with its condition in the series semantics of the
    families module and in the README's cardinality paragraph, in the same words."""
    doc = families_module.__doc__ or ""
    semantics = " ".join(doc.split("Series semantics", 1)[1].split("History (", 1)[0].split())
    readme = Path(families_module.__file__).parents[2] / "README.md"
    metrics_section = " ".join(readme.read_text().split("## Metrics", 1)[1].split("## ", 1)[0].split())
    for name, when in CONDITIONAL.items():
        assert f"``{name.removeprefix('ehpc_image_')}`` ({when})" in semantics, name
        assert f"`{name}` ({when})" in metrics_section, name


# --------------------------------------------------------------------------------------------------------
# For any image state: default = full minus the 0-valued state-set samples and the documented sparse ones.

POOL = ("cn-beijing", "cn-shanghai", "eu-central-1")
IMAGE_STATUSES = st.sampled_from(
    ("Available", "Creating", "Waiting", "UnAvailable", "CreateFailed", "Deprecated", "Frozen", "")
)
COPY_STATUSES = st.sampled_from(("Available", "Creating", "UnAvailable", "CreateFailed", "Frozen", ""))
ERRORS = st.sampled_from(
    (None, ImageError("ImageNotFound", 404), ImageError("Timeout", 0), ImageError("Throttling.User", 400))
)
REGION_SETS = st.lists(st.sampled_from(POOL), unique=True, max_size=len(POOL)).map(tuple)
HEALTHY = StatusConfig().replication_healthy


@st.composite
def histories(draw: st.DrawFn, status: str) -> ImageHistory:
    """What one to three successful answers left, as the refresher observes them; the regions asked for
    may have changed between answers (a reload), so they need not be today's."""
    history: ImageHistory | None = None
    for at in range(draw(st.integers(min_value=1, max_value=3))):
        copies = draw(st.dictionaries(st.sampled_from(POOL), COPY_STATUSES))
        asked = draw(REGION_SETS)
        history, _ = observe(
            history, draw(IMAGE_STATUSES) if at else status, copies, asked, HEALTHY, NOW + at
        )
    assert history is not None
    return history


@st.composite
def image_states(draw: st.DrawFn, image_id: str) -> ImageState:
    """Any state an image can be in: never answered, answered (healthy, unhealthy, replicating, odd
    statuses), failing with its last good data, missing with or without it, with or without history."""
    requested = draw(REGION_SETS)
    error = draw(ERRORS)
    if draw(st.booleans()) or error is None:
        status = draw(IMAGE_STATUSES)
        copies = draw(st.dictionaries(st.sampled_from(POOL), COPY_STATUSES))
        facts = make_image(image_id, status=status, regions=list(copies.items()))
        history = draw(st.none() | histories(status))
        return ImageState(
            WatchedImage(image_id, additional_region_ids=requested), facts, NOW, error, history=history
        )
    return ImageState(WatchedImage(image_id, additional_region_ids=requested), None, None, error)


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    count = draw(st.integers(min_value=1, max_value=4))
    states = [draw(image_states(f"m-prop{i}")) for i in range(count)]
    return Snapshot.build(states, status=StatusConfig(), refreshed_at=NOW, duration_seconds=1.0, sequence=1)


DEFAULT = build_table(MetricsConfig())
FULL = build_table(MetricsConfig(state_sets="full"))


@settings(max_examples=300, deadline=None)
@given(snapshot=snapshots())
def test_default_is_full_without_zeros_and_available_copies_since(snapshot: Snapshot) -> None:
    """Line for line, in order: the default exposition is the full one minus the state sets' samples valued
    0 and minus the since-timestamps of available copies; nothing else differs but three help texts. The
    fast renderer equals the reference collector on the default table too, history included."""
    default = render_snapshot(snapshot, DEFAULT).text
    full = render_snapshot(snapshot, FULL).text
    assert default == reference(snapshot, DEFAULT)[0]
    assert without_sparse_help(default.decode()) == without_sparse_help(without_sparse(full.decode()))
    assert len(_HELP.findall(default.decode())) == len(_HELP.findall(full.decode())) == 3


@settings(max_examples=200, deadline=None)
@given(snapshot=snapshots())
def test_no_state_set_sample_is_zero_and_a_missing_image_has_none(snapshot: Snapshot) -> None:
    """In the default form no state-set sample is 0, and a missing (ImageNotFound) image has none at all:
    no status is current for it. Its availability gauges still say 0, so the alerts fire."""
    lines = render_snapshot(snapshot, DEFAULT).text.decode().splitlines()
    state_sets = [m for line in lines if (m := _SAMPLE.match(line)) and m.group(1) in STATE_SETS]
    assert all(float(m.group(3)) == 1.0 for m in state_sets)
    for key, state in snapshot.images.items():
        if state.error is not None and state.error.code == "ImageNotFound":
            mine = [m for m in state_sets if _copy_key(m.group(2))[2] == key.image_id]
            assert mine == [], key
            assert f'{MetricName.IMAGE_AVAILABLE}{{account="default",image_id="{key.image_id}",' in "\n".join(
                lines
            )
