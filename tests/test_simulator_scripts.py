"""Timed scripts of the simulator (ehpc_simulator.scripts): due times on a fake clock, seen through the
real signed API; the admin routes, their validation, routing by account in an estate, ``--script``."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ehpc_simulator import SimImage, Simulator
from ehpc_simulator.cli import add_simulate_arguments, run_simulate
from ehpc_simulator.scripts import (
    KEEP,
    MAX_PENDING_STEPS,
    MAX_STEPS_PER_SCRIPT,
    Scheduler,
    ScriptStep,
    UnknownImageError,
    steps_from_data,
)
from tests.fixtures.clock import FakeClock
from tests.fixtures.estate import (
    ALPHA_AK,
    ALPHA_HZ_IMAGE,
    ALPHA_SECRET,
    BETA_AK,
    BETA_HZ_IMAGE,
    BETA_SECRET,
    HZ,
    RunningEstate,
    region_target,
)
from tests.fixtures.http import wait_until_async
from tests.fixtures.sim import SIM_ACCESS_KEY_SECRET, SIM_VM_ID, RunningSimulator, signed_call, sim_images

START = 1_700_000_000.0  # far from real time on purpose: only signing_clock keeps the signatures valid
ASKED = '["cn-beijing","cn-shanghai","cn-hongkong"]'


@dataclass
class Scripted:
    """A served simulator on a fake clock (the exporter's FakeClock), and a client session."""

    running: RunningSimulator
    clock: FakeClock
    session: aiohttp.ClientSession

    @property
    def sim(self) -> Simulator:
        """The simulator."""
        return self.running.sim

    async def image(self, image_id: str = SIM_VM_ID) -> dict[str, Any]:
        """GetImage through the signed API, asking for three regions; the ``Image`` object."""
        status, _, body = await signed_call(
            self.session, self.running, "GetImage", {"ImageId": image_id, "AdditionalRegionIds": ASKED}
        )
        assert status == 200, body
        image: dict[str, Any] = body["Image"]
        return image

    async def copies(self, image_id: str = SIM_VM_ID) -> dict[str, str]:
        """Region -> copy status, as GetImage answers them."""
        return {c["RegionId"]: c["Status"] for c in (await self.image(image_id))["AdditionalRegionsInfo"]}

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One admin request; (status, parsed JSON or None)."""
        kwargs: dict[str, Any] = {} if body is None else {"data": json.dumps(body)}
        async with self.session.request(method, f"{self.running.url}{path}", **kwargs) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text else None

    async def at(self, moment: float) -> None:
        """Move the fake clock to ``moment`` (epoch seconds)."""
        await self.clock.advance(moment - self.clock.now)


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    """The fixtures' small fleet on a fake clock at :data:`START`; signatures checked on real time."""
    clock = FakeClock(start=START)
    sim = Simulator(
        images=sim_images(),
        access_keys={"ak": SIM_ACCESS_KEY_SECRET},
        clock=clock.monotonic,
        signing_clock=time.time,
    )
    async with sim.serve() as url, aiohttp.ClientSession() as session:
        yield Scripted(RunningSimulator(sim, url, "ak", SIM_ACCESS_KEY_SECRET), clock, session)


def region(
    after: float, status: str | None, where: str = "cn-shanghai", image: str = SIM_VM_ID
) -> ScriptStep:
    """A step setting (or, with None, removing) a copy's status."""
    return ScriptStep(after_seconds=after, image_id=image, region=where, status=status)


# ----- due times on a fake clock, through the API -------------------------------------------------------


@pytest.mark.parametrize("after", [0, 0.25, 1, 59.5, 1800, 86400 * 3])
async def test_a_step_is_invisible_before_its_due_time_and_visible_at_and_after(
    scripted: Scripted, after: float
) -> None:
    """Creating -> Available in cn-shanghai: GetImage shows Creating until due_at, Available from it on."""
    (due,) = scripted.sim.schedule([region(after, "Available")])
    assert due.due_at == START + after
    if after > 0:
        await scripted.at(due.due_at - min(0.001, after / 2))
        assert (await scripted.copies())["cn-shanghai"] == "Creating"
        assert scripted.sim.applied_steps == []
    await scripted.at(due.due_at)
    assert (await scripted.copies())["cn-shanghai"] == "Available"
    await scripted.at(due.due_at + 3600)
    assert (await scripted.copies())["cn-shanghai"] == "Available"
    (applied,) = scripted.sim.applied_steps
    # The truth: due at start + after, first seen by the clock exactly then, replacing Creating.
    assert (applied.due.due_at, applied.applied_at, applied.previous, applied.result) == (
        START + after,
        START + after,
        "Creating",
        "applied",
    )


async def test_steps_due_in_the_same_poll_apply_in_due_order_ties_in_posting_order(
    scripted: Scripted,
) -> None:
    """Five image-status steps, posted out of order, all due before one GetImage: the last due wins."""
    steps = [
        ScriptStep(after_seconds=30, image_id=SIM_VM_ID, status="UnAvailable"),  # tie at 30: posted first
        ScriptStep(after_seconds=10, image_id=SIM_VM_ID, status="Creating"),
        ScriptStep(after_seconds=30, image_id=SIM_VM_ID, status="Waiting"),  # tie at 30: posted last, wins
        ScriptStep(after_seconds=20, image_id=SIM_VM_ID, status="CreateFailed"),
        ScriptStep(after_seconds=90, image_id=SIM_VM_ID, status="Deprecated"),  # not due in this poll
    ]
    scripted.sim.schedule(steps)
    await scripted.at(START + 45)
    assert (await scripted.image())["Status"] == "Waiting"
    applied = scripted.sim.applied_steps
    assert [(a.due.due_at - START, a.due.step.value, a.previous) for a in applied] == [
        (10, "Creating", "Available"),
        (20, "CreateFailed", "Creating"),
        (30, "UnAvailable", "CreateFailed"),
        (30, "Waiting", "UnAvailable"),
    ]
    assert all(a.applied_at == START + 45 for a in applied)  # one poll saw them all
    assert [p.step.status for p in scripted.sim.pending_steps] == ["Deprecated"]


async def test_a_region_copy_is_added_changed_and_removed(scripted: Scripted) -> None:
    """cn-hongkong: no copy, then Creating at +60, Available at +600, gone at +900 (status null)."""
    scripted.sim.schedule(
        [
            region(60, "Creating", "cn-hongkong"),
            region(600, "Available", "cn-hongkong"),
            region(900, None, "cn-hongkong"),
        ]
    )
    seen = []
    for moment in (0, 59, 60, 599, 600, 899, 900, 5000):
        await scripted.at(START + moment)
        seen.append((await scripted.copies()).get("cn-hongkong"))
    assert seen == [None, None, "Creating", "Creating", "Available", "Available", None, None]
    # The other copies are untouched.
    assert await scripted.copies() == {"cn-beijing": "Available", "cn-shanghai": "Creating"}
    assert [a.previous for a in scripted.sim.applied_steps] == [None, "Creating", "Available"]


async def test_an_error_step_sets_and_clears_the_images_error(scripted: Scripted) -> None:
    """error: ImageNotFound at +10 makes GetImage fail with it; error: null at +20 heals it."""
    scripted.sim.schedule(
        [
            ScriptStep(after_seconds=10, image_id=SIM_VM_ID, error="ImageNotFound"),
            ScriptStep(after_seconds=20, image_id=SIM_VM_ID, error=None),
        ]
    )
    codes = []
    for moment in (9, 10, 20):
        await scripted.at(START + moment)
        _, _, body = await signed_call(scripted.session, scripted.running, "GetImage", {"ImageId": SIM_VM_ID})
        codes.append(body.get("Code", "Success"))
    assert codes == ["Success", "ImageNotFound", "Success"]


async def test_admin_requests_apply_due_steps_first(scripted: Scripted) -> None:
    """GET /_sim/images/{id} after the due time shows the change with no API call in between."""
    scripted.sim.schedule([ScriptStep(after_seconds=5, image_id=SIM_VM_ID, status="UnAvailable")])
    await scripted.at(START + 5)
    status, body = await scripted.admin("GET", f"/_sim/images/{SIM_VM_ID}")
    assert (status, body["status"]) == (200, "UnAvailable")


async def test_a_step_whose_image_was_deleted_is_recorded_and_changes_nothing(scripted: Scripted) -> None:
    """Deleting the image before the step comes due: the step is recorded as "no such image"."""
    scripted.sim.schedule([region(10, "Available")])
    del scripted.sim.images[SIM_VM_ID]
    await scripted.at(START + 10)
    status, body = await scripted.admin("GET", "/_sim/scripts")
    assert status == 200
    assert [(a["image_id"], a["result"]) for a in body["applied"]] == [(SIM_VM_ID, "no such image")]


async def test_the_signature_check_follows_clock_unless_signing_clock_is_set(scripted: Scripted) -> None:
    """Without signing_clock, the fake clock (years from now) also dates the x-acs-date check."""
    scripted.sim.signing_clock = None
    status, _, body = await signed_call(
        scripted.session, scripted.running, "GetImage", {"ImageId": SIM_VM_ID}
    )
    assert (status, body["Code"]) == (400, "InvalidTimeStamp.Expired")
    scripted.sim.signing_clock = time.time
    status, _, body = await signed_call(
        scripted.session, scripted.running, "GetImage", {"ImageId": SIM_VM_ID}
    )
    assert status == 200, body


# ----- the scheduler against a reference model (no HTTP) -------------------------------------------------

_statuses = st.sampled_from(["Available", "Creating", "Waiting", "UnAvailable", "CreateFailed"])
_step = st.one_of(
    st.builds(ScriptStep, st.integers(0, 100), st.sampled_from(["a", "b"]), status=_statuses),
    st.builds(
        ScriptStep,
        st.integers(0, 100),
        st.sampled_from(["a", "b"]),
        region=st.sampled_from(["r1", "r2"]),
        status=st.one_of(st.none(), _statuses),
    ),
)


def _reference(images: dict[str, SimImage], steps: list[tuple[float, int, ScriptStep]], now: float) -> None:
    """What the images must look like: every step due by ``now``, sorted by (due time, posting order)."""
    for _due, _n, step in sorted(s for s in steps if s[0] <= now):
        image = images[step.image_id]
        if step.region is None:
            assert isinstance(step.status, str)
            image.status = step.status
        elif step.status is None:
            image.regions.pop(step.region, None)
        else:
            assert isinstance(step.status, str)
            image.regions[step.region] = step.status


def _fleet() -> dict[str, SimImage]:
    return {i: SimImage(image_id=i, regions={"r1": "Creating"}) for i in ("a", "b")}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 50), st.lists(_step, max_size=8)), min_size=1, max_size=4),
    st.lists(st.integers(0, 60), min_size=1, max_size=6),
)
def test_scheduler_matches_the_reference_at_every_poll(
    scripts: list[tuple[int, list[ScriptStep]]], polls: list[int]
) -> None:
    """Several scripts started at different times, polled at arbitrary moments (the clock may even go
    back): after each poll the images equal the reference, and the applied record is in due order."""
    now = [0.0]
    scheduler = Scheduler(lambda: now[0])
    images, expected = _fleet(), _fleet()
    posted: list[tuple[float, int, ScriptStep]] = []
    for start, steps in scripts:
        for due in scheduler.schedule(steps, images, start=start):
            posted.append((due.due_at, due.seq, due.step))
    high = 0.0
    for moment in sorted(polls) + polls:
        now[0] = moment
        scheduler.run_due(images)
        high = max(high, moment)
        expected = _fleet()
        _reference(expected, posted, high)  # a step once applied stays applied when the clock goes back
        assert images == expected
    applied = scheduler.applied
    assert [(a.due.due_at, a.due.seq) for a in applied] == sorted((a.due.due_at, a.due.seq) for a in applied)
    assert len(applied) + len(scheduler.pending) == len(posted)
    assert all(a.due.due_at <= a.applied_at for a in applied)


# ----- validation ----------------------------------------------------------------------------------------

_GOOD = {"after_seconds": 60, "image_id": SIM_VM_ID, "region": "cn-beijing", "status": "Available"}
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
# (field, a bad value, the words the message must hold)
_BAD_FIELDS = [
    ("after_seconds", -1, "after_seconds"),
    ("after_seconds", -0.001, "after_seconds"),
    ("after_seconds", True, "after_seconds"),
    ("after_seconds", "60", "after_seconds"),
    ("after_seconds", None, "after_seconds"),
    ("after_seconds", float("nan"), "after_seconds"),
    ("after_seconds", float("inf"), "after_seconds"),
    ("after_seconds", 10**400, "after_seconds"),
    ("image_id", "", "image_id"),
    ("image_id", 7, "image_id"),
    ("image_id", "x" * 257, "image_id"),
    ("region", "", "region"),
    ("region", ["cn-beijing"], "region"),
    ("status", 3, "status"),
    ("status", "", "status"),
    ("colour", "red", "unknown field(s) 'colour'"),
    ("a\nb", "red", "unknown field(s) 'a\\nb'"),
]


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 30),
    st.integers(0, 30),
    st.sampled_from(_BAD_FIELDS),
)
def test_a_bad_field_is_named_with_its_step_index(size: int, index: int, bad: tuple[str, Any, str]) -> None:
    """Among good steps, one bad field: ValueError ``steps[<index>]...<field>``, whatever the neighbours."""
    index = min(index, size)
    field, value, words = bad
    data: list[Any] = [dict(_GOOD) for _ in range(size + 1)]
    data[index][field] = value
    with pytest.raises(ValueError, match=r"^steps\[(\d+)\]") as info:
        steps_from_data(data)
    message = str(info.value)
    assert message.startswith(f"steps[{index}]")
    assert words in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("step", "words"),
    [
        ({"after_seconds": 1, "image_id": SIM_VM_ID}, "exactly one of status or error"),
        ({"after_seconds": 1, "image_id": SIM_VM_ID, "status": "A", "error": None}, "exactly one"),
        ({"after_seconds": 1, "image_id": SIM_VM_ID, "status": None}, "status: null removes a region"),
        ({"after_seconds": 1, "image_id": SIM_VM_ID, "region": "r", "error": None}, "error: applies to"),
        ({"after_seconds": 1, "image_id": SIM_VM_ID, "error": "NoSuchCode"}, "unknown error code"),
        ({"image_id": SIM_VM_ID, "status": "A"}, "after_seconds: required"),
        ({"after_seconds": 1, "status": "A"}, "image_id: required"),
        ("not an object", "expected an object"),
    ],
)
def test_step_shape_errors(step: Any, words: str) -> None:
    """Whole-step problems name the step too."""
    with pytest.raises(ValueError, match=r"^steps\[1\]") as info:
        steps_from_data([dict(_GOOD), step])
    assert words in str(info.value)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_arbitrary_json_is_refused_cleanly_or_accepted(data: Any) -> None:
    """Any JSON value as the steps: accepted, or a one-line ValueError/UnknownImageError; never a crash."""
    scheduler = Scheduler(lambda: START)
    problem = ""
    try:
        steps = steps_from_data(data)
        scheduler.schedule(steps, {SIM_VM_ID: SimImage(image_id=SIM_VM_ID)})
    except (ValueError, UnknownImageError) as exc:
        problem = str(exc) or "(empty message)"
    if problem:
        assert "\n" not in problem
        assert problem.startswith("steps")
    else:
        assert isinstance(data, list)
        assert len(scheduler.pending) == len(data)


def test_python_steps_are_checked_on_creation() -> None:
    """ScriptStep itself refuses what the file format refuses (the message names the field)."""
    with pytest.raises(ValueError, match=r"^after_seconds:"):
        ScriptStep(after_seconds=-5, image_id="m", status="Available")
    with pytest.raises(ValueError, match="exactly one"):
        ScriptStep(after_seconds=5, image_id="m")
    assert ScriptStep(after_seconds=5, image_id="m", status="A").error is KEEP


def test_the_caps() -> None:
    """More than MAX_STEPS_PER_SCRIPT in one script, or more than MAX_PENDING_STEPS pending, is refused."""
    with pytest.raises(ValueError, match=rf"at most {MAX_STEPS_PER_SCRIPT} per script"):
        steps_from_data([dict(_GOOD)] * (MAX_STEPS_PER_SCRIPT + 1))
    steps_from_data([dict(_GOOD)] * MAX_STEPS_PER_SCRIPT)
    scheduler = Scheduler(lambda: START)
    images = {"m": SimImage(image_id="m")}
    one = [ScriptStep(after_seconds=1, image_id="m", status="A")] * MAX_STEPS_PER_SCRIPT
    for _ in range(MAX_PENDING_STEPS // MAX_STEPS_PER_SCRIPT):
        scheduler.schedule(one, images)
    with pytest.raises(ValueError, match="cancel pending steps first"):
        scheduler.schedule(one[:1], images)
    assert len(scheduler.pending) == MAX_PENDING_STEPS


# ----- the admin API -------------------------------------------------------------------------------------


async def test_post_get_delete_scripts(scripted: Scripted) -> None:
    """POST answers 201 with ids and due times; GET lists pending and applied; DELETE cancels the rest."""
    steps = [
        {"after_seconds": 100, "image_id": SIM_VM_ID, "region": "cn-shanghai", "status": "Available"},
        {"after_seconds": 200, "image_id": SIM_VM_ID, "status": "UnAvailable"},
    ]
    status, body = await scripted.admin("POST", "/_sim/scripts", {"steps": steps})
    assert status == 201, body
    assert [(s["due_at"], s["after_seconds"]) for s in body["scheduled"]] == [
        (START + 100, 100),
        (START + 200, 200),
    ]
    assert len({s["id"] for s in body["scheduled"]}) == 2
    await scripted.at(START + 150)
    status, body = await scripted.admin("GET", "/_sim/scripts")
    assert status == 200
    assert body["now"] == START + 150
    assert [a["status"] for a in body["applied"]] == ["Available"]
    first = body["applied"][0]
    assert (first["due_at"], first["applied_at"], first["previous"], first["result"]) == (
        START + 100,
        START + 150,
        "Creating",
        "applied",
    )
    assert [p["status"] for p in body["pending"]] == ["UnAvailable"]
    status, body = await scripted.admin("DELETE", "/_sim/scripts")
    assert (status, [c["status"] for c in body["cancelled"]]) == (200, ["UnAvailable"])
    await scripted.at(START + 1000)
    assert (await scripted.image())["Status"] == "Available"  # the cancelled step never applied
    status, body = await scripted.admin("GET", "/_sim/scripts")
    assert (body["pending"], len(body["applied"])) == ([], 1)


async def test_post_with_an_explicit_start(scripted: Scripted) -> None:
    """``start`` anchors the steps elsewhere than now; a start in the past makes them due at once."""
    status, body = await scripted.admin(
        "POST", "/_sim/scripts", {"start": START - 50, "steps": [{**_GOOD, "after_seconds": 20}]}
    )
    assert (status, body["scheduled"][0]["due_at"]) == (201, START - 30)
    assert (await scripted.copies())["cn-beijing"] == "Available"
    assert scripted.sim.applied_steps[0].applied_at == START


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"steps": [_GOOD, {**_GOOD, "after_seconds": -1}]}, 400, "steps[1].after_seconds"),
        ({"steps": [{**_GOOD, "colour": 1}]}, 400, "steps[0]: unknown field(s) 'colour'"),
        ({"steps": [{**_GOOD, "image_id": "m-nope"}]}, 404, "steps[0].image_id: no such image 'm-nope'"),
        ({"steps": [_GOOD] * (MAX_STEPS_PER_SCRIPT + 1)}, 400, f"at most {MAX_STEPS_PER_SCRIPT}"),
        ({"steps": {"0": _GOOD}}, 400, "steps: expected a list"),
        ({"steps": [_GOOD], "start": "now"}, 400, "start: expected epoch seconds"),
        ({"steps": [_GOOD], "start": 1.7e12}, 400, "start: expected epoch seconds"),
        ({"steps": [_GOOD], "when": 1}, 400, "unknown field(s) 'when'"),
        ({}, 400, "steps: required"),
        ([_GOOD], 400, "expected {"),
    ],
)
async def test_post_refusals(scripted: Scripted, body: Any, status: int, words: str) -> None:
    """Bad posts: 400 (404 for an unknown image), one line naming the step and field; nothing scheduled."""
    got, answer = await scripted.admin("POST", "/_sim/scripts", body)
    assert (got, set(answer)) == (status, {"error"})
    assert words in answer["error"]
    assert "\n" not in answer["error"]
    assert scripted.sim.pending_steps == []


async def test_post_refuses_a_body_that_is_not_json(scripted: Scripted) -> None:
    """Not JSON at all: 400."""
    async with scripted.session.post(f"{scripted.running.url}/_sim/scripts", data=b"{steps") as resp:
        assert (resp.status, await resp.json()) == (400, {"error": "the body is not JSON"})


async def test_the_index_lists_the_scripts_routes(scripted: Scripted) -> None:
    """GET /_sim/ names the new routes."""
    _, body = await scripted.admin("GET", "/_sim/")
    assert "GET|POST|DELETE /_sim/scripts" in body["endpoints"]


# ----- the estate ----------------------------------------------------------------------------------------


async def test_estate_scripts_route_by_account(estate: RunningEstate) -> None:
    """A script posted with ?account=beta changes beta's image only; alpha's scripts and images stay as they
    were; an image of another account is 404; the estate's clock dates the steps."""
    url = estate.ep.region_urls[HZ]
    now = estate.clock()
    step = {"after_seconds": 60, "image_id": BETA_HZ_IMAGE, "status": "UnAvailable"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/_sim/scripts?account=beta", json={"steps": [step]}) as resp:
            assert resp.status == 201
            (due,) = (await resp.json())["scheduled"]
            assert now <= due["due_at"] - 60 <= estate.clock()
        async with session.post(f"{url}/_sim/scripts?account=alpha", json={"steps": [step]}) as resp:
            assert resp.status == 404  # beta's image does not exist in alpha's account
        async with session.post(f"{url}/_sim/scripts", json={"steps": [step]}) as resp:
            assert resp.status == 400  # several accounts: ?account= is required
        async with session.get(f"{url}/_sim/scripts?account=alpha") as resp:
            assert (await resp.json())["pending"] == []

        async def status_of(image_id: str, ak: str, secret: str) -> str:
            _, _, body = await signed_call(
                session, region_target(estate, HZ, ak, secret), "GetImage", {"ImageId": image_id}
            )
            return str(body["Image"]["Status"])

        assert await status_of(BETA_HZ_IMAGE, BETA_AK, BETA_SECRET) == "Available"
        estate.clock.advance(61)
        assert await status_of(BETA_HZ_IMAGE, BETA_AK, BETA_SECRET) == "UnAvailable"
        assert await status_of(ALPHA_HZ_IMAGE, ALPHA_AK, ALPHA_SECRET) == "Available"
    beta = estate.estate.account("beta").region(HZ)
    assert [a.due.due_at for a in beta.applied_steps] == [due["due_at"]]


# ----- simulate --script -----------------------------------------------------------------------------------


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_simulate_arguments(parser)
    return parser.parse_args(list(argv))


async def test_simulate_script_file_is_scheduled_from_the_start(tmp_path: Path) -> None:
    """``--script FILE`` (YAML): its steps are pending once the simulator prints its URL."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("images:\n  - {image_id: m-one, regions: {cn-beijing: Creating}}\n")
    script = tmp_path / "script.yaml"
    script.write_text(
        "- {after_seconds: 600, image_id: m-one, region: cn-beijing, status: Available}\n"
        "- {after_seconds: 900, image_id: m-one, status: Deprecated}\n"
    )
    args = _parse("--fleet", str(fleet), "--script", str(script), "--listen-address", "127.0.0.1:0")
    out = io.StringIO()
    before = time.time()
    task = asyncio.create_task(run_simulate(args, out=out))
    try:
        await wait_until_async(lambda: "admin API" in out.getvalue() or task.done(), 60, "the admin API line")
        assert "timed script: 2 step(s)" in out.getvalue()
        url = out.getvalue().split("listening on ", 1)[1].split()[0]
        async with aiohttp.ClientSession() as session, session.get(f"{url}/_sim/scripts") as resp:
            pending = (await resp.json())["pending"]
        assert [p["after_seconds"] for p in pending] == [600, 900]
        assert before + 600 <= pending[0]["due_at"] <= time.time() + 600
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("- {after_seconds: -1, image_id: m-one, status: A}\n", "steps[0].after_seconds"),
        ("- {after_seconds: 1, image_id: m-two, status: A}\n", "steps[0].image_id: no such image 'm-two'"),
        ("steps: [{after_seconds: 1, image_id: m-one}]\n", "steps[0]: a step sets exactly one"),
        ("{not: [yaml\n", "script.yaml"),
    ],
)
async def test_simulate_script_file_errors_name_the_file_and_step(
    tmp_path: Path, text: str, words: str
) -> None:
    """A bad script file stops ``simulate`` with one ValueError line naming the file and the step."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("images:\n  - {image_id: m-one}\n")
    script = tmp_path / "script.yaml"
    script.write_text(text)
    args = _parse("--fleet", str(fleet), "--script", str(script), "--listen-address", "127.0.0.1:0")
    with pytest.raises(ValueError, match=r"^simulate: ") as info:
        await run_simulate(args, out=io.StringIO())
    assert str(script) in str(info.value)
    assert words in str(info.value)


async def test_simulate_script_is_refused_with_an_estate(tmp_path: Path) -> None:
    """--script with --estate: a clear refusal (a step names no account)."""
    args = _parse("--estate", "x.yaml", "--script", "y.yaml")
    with pytest.raises(ValueError, match="--script: not with --estate"):
        await run_simulate(args, out=io.StringIO())
