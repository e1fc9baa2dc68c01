"""Rendezvous sharding (exporter.sharding): a partition for any total, stable, minimal movement from N to
N + 1; the StatefulSet pod-name ordinal; the flags and environment, and their errors from the real CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import ShardingConfig
from exporter.sharding import (
    ShardingError,
    ShardingFlags,
    in_shard,
    ordinal_from_pod_name,
    resolve_sharding,
    shard_of,
    weight,
)

REPO = Path(__file__).resolve().parent.parent
EXE = str(REPO / ".venv" / "bin" / "ehpc-image-exporter")

Identity = tuple[str, str, str]

names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)
identities = st.tuples(
    st.sampled_from(["default", "prod", "staging"]), st.sampled_from(["cn-hangzhou", "cn-beijing"]), names
)


def fleet(n: int, salt: str = "") -> list[Identity]:
    """``n`` distinct identities over two accounts and two regions, image ids as E-HPC spells them."""
    return [
        (("prod", "staging")[i % 2], ("cn-hangzhou", "cn-beijing")[i // 2 % 2], f"m-{salt}{i:018d}")
        for i in range(n)
    ]


@settings(max_examples=60, deadline=None)
@given(st.lists(identities, min_size=1, max_size=40, unique=True), st.integers(1, 120))
def test_every_image_is_in_exactly_one_shard(images: list[Identity], total: int) -> None:
    """For any total, in_shard holds for exactly one shard per image, the one shard_of names."""
    for account, region, image_id in images:
        owners = [s for s in range(total) if in_shard(account, region, image_id, ShardingConfig(total, s))]
        assert owners == [shard_of(account, region, image_id, total)]


@settings(max_examples=100, deadline=None)
@given(identities, st.integers(2, 200))
def test_the_shard_is_the_highest_weight(identity: Identity, total: int) -> None:
    """The cached fast path agrees with the definition: argmax of the documented weights."""
    weights = [weight(*identity, s) for s in range(total)]
    assert shard_of(*identity, total) == weights.index(max(weights))


@pytest.mark.process
def test_weights_are_a_documented_function_of_bytes() -> None:
    """BLAKE2b-64 of "account NUL region NUL image NUL" + the shard as 4 big-endian bytes: any host and
    any process (no salted hash()) computes the same, so replicas agree."""
    data = b"prod\0cn-hangzhou\0m-000000000000000001\0" + (3).to_bytes(4, "big")
    expected = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")
    assert weight("prod", "cn-hangzhou", "m-000000000000000001", 3) == expected
    ids = [i for _a, _r, i in fleet(50)]
    code = (
        "import sys; from exporter.sharding import shard_of\n"
        "print([shard_of('prod', 'cn-hangzhou', i, 7) for i in sys.argv[1:]])"
    )
    other = subprocess.run(
        [sys.executable, "-c", code, *ids],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    ).stdout.strip()
    assert other == str([shard_of("prod", "cn-hangzhou", i, 7) for i in ids])


def test_identity_is_account_region_and_image() -> None:
    """The same image id in another account or region is another image: assigned independently."""
    ids = [f"m-{i:018d}" for i in range(300)]
    a = [shard_of("prod", "cn-hangzhou", i, 5) for i in ids]
    b = [shard_of("staging", "cn-hangzhou", i, 5) for i in ids]
    c = [shard_of("prod", "cn-beijing", i, 5) for i in ids]
    assert a != b
    assert a != c
    # Not a shift of one another either: about 4/5 differ between two independent assignments.
    assert sum(x != y for x, y in zip(a, b, strict=True)) > 200


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 10])
def test_growing_by_one_moves_only_to_the_new_shard_and_about_one_in_n_plus_one(n: int) -> None:
    """N -> N + 1: no image moves between old shards; those that move go to shard N, and they are at
    most 1/(N + 1) + 5 % of the fleet (and not none: the new shard gets its share)."""
    images = fleet(600, salt=f"g{n}")
    before = {i: shard_of(*i, n) for i in images}
    after = {i: shard_of(*i, n + 1) for i in images}
    moved = [i for i in images if before[i] != after[i]]
    assert all(after[i] == n for i in moved)  # only to the new shard
    assert [i for i in images if after[i] == n] == moved  # and the new shard has only movers
    assert len(moved) / len(images) <= 1 / (n + 1) + 0.05
    assert len(moved) / len(images) >= 1 / (n + 1) - 0.05


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 60), st.integers(0, 1000))
def test_shrinking_by_one_moves_only_the_removed_shard(n: int, salt: int) -> None:
    """N + 1 -> N: exactly the images of shard N move (to their second-best); the others stay."""
    images = fleet(200, salt=f"s{salt}")
    for image in images:
        big, small = shard_of(*image, n + 1), shard_of(*image, n)
        if big != n:
            assert small == big


@pytest.mark.parametrize("total", [2, 3, 8, 50])
def test_shares_are_even(total: int) -> None:
    """Each shard holds its 1/total of 3,000 images within 25 % (binomial spread is ~5-15 %)."""
    images = fleet(3000, salt=f"e{total}")
    counts = [0] * total
    for image in images:
        counts[shard_of(*image, total)] += 1
    expected = len(images) / total
    assert all(abs(c - expected) <= 0.25 * expected for c in counts), counts


def test_unsharded_keeps_everything() -> None:
    """shards 1 (the default): every image is watched, whatever the shard field says."""
    assert all(in_shard(*i, ShardingConfig()) for i in fleet(100))
    assert all(shard_of(*i, 1) == 0 for i in fleet(100))


@given(st.text(max_size=60))
def test_odd_image_ids_never_raise(image_id: str) -> None:
    """An id an API answer made up (lone surrogates, NUL, any length) still gets a shard."""
    assert 0 <= shard_of("prod", "cn-hangzhou", image_id, 9) < 9


# --------------------------------------------------------------------------------------------------------
# Pod names

statefulset_names = st.from_regex(r"[a-z]([-a-z0-9]{0,40}[a-z0-9])?", fullmatch=True)


@given(statefulset_names, st.integers(0, 10**6))
def test_pod_ordinal_is_the_trailing_number(name: str, ordinal: int) -> None:
    """ "<statefulset>-<n>" gives n, whatever digits and dashes the StatefulSet's own name has."""
    assert ordinal_from_pod_name(f"{name}-{ordinal}") == ordinal


@pytest.mark.parametrize(
    "pod",
    [
        "ehpc-image-exporter",
        "ehpc-image-exporter-",
        "-3",
        "3",
        "",
        "exporter-1a",
        "exporter-1 2",
        "exporter--1",
    ],
)
def test_pod_names_without_an_ordinal(pod: str) -> None:
    """A Deployment's pod (random suffix), a bare number, a trailing dash: no ordinal."""
    assert ordinal_from_pod_name(pod) is None


@given(statefulset_names.filter(lambda n: not n[-1].isdigit()))
def test_a_name_without_trailing_digits_has_no_ordinal(name: str) -> None:
    assert ordinal_from_pod_name(name) is None


# --------------------------------------------------------------------------------------------------------
# Flags and environment


def resolve(env: dict[str, str] | None = None, **flags: str) -> dict[str, int]:
    return resolve_sharding(ShardingFlags(**flags), env or {})


@given(st.integers(2, 1000).flatmap(lambda t: st.tuples(st.just(t), st.integers(0, t - 1))))
def test_auto_mode_takes_the_ordinal_from_the_pod_name(case: tuple[int, int]) -> None:
    """--total-shards N (or EHPC_TOTAL_SHARDS) without --shard: the ordinal of --pod, else POD_NAME."""
    total, ordinal = case
    want = {"sharding.shards": total, "sharding.shard": ordinal}
    assert resolve({"POD_NAME": f"ehpc-image-exporter-{ordinal}"}, total_shards=str(total)) == want
    assert resolve({"EHPC_TOTAL_SHARDS": str(total), "POD_NAME": f"x-{ordinal}"}) == want
    assert resolve({"POD_NAME": "other-999999"}, total_shards=str(total), pod=f"sts-{ordinal}") == want
    # The flag wins over the variable.
    assert resolve({"EHPC_TOTAL_SHARDS": "1"}, total_shards=str(total), pod=f"s-{ordinal}") == want


def test_explicit_flags_and_what_is_left_to_the_file() -> None:
    assert resolve(shard="2", total_shards="3") == {"sharding.shards": 3, "sharding.shard": 2}
    assert resolve() == {}  # all from the file
    assert resolve(shard="1") == {"sharding.shard": 1}  # the total from the file (the loader checks)
    assert resolve({"POD_NAME": "exporter-7"}) == {}  # POD_NAME alone asks for nothing
    assert resolve({"POD_NAME": "exporter-7"}, total_shards="1") == {"sharding.shards": 1}
    # POD_NAME never overrides --shard (the downward API sets it for other reasons too).
    assert resolve({"POD_NAME": "exporter-2"}, shard="0", total_shards="3") == {
        "sharding.shards": 3,
        "sharding.shard": 0,
    }
    assert resolve(shard="1", pod="sts-1", total_shards="2") == {"sharding.shards": 2, "sharding.shard": 1}


@pytest.mark.parametrize(
    ("env", "flags", "message"),
    [
        (
            {},
            {"shard": "3", "total_shards": "3"},
            "--shard 3: the ordinal must be less than the total (--total-shards 3)",
        ),
        (
            {"EHPC_TOTAL_SHARDS": "2"},
            {"shard": "5"},
            "--shard 5: the ordinal must be less than the total (EHPC_TOTAL_SHARDS=2)",
        ),
        (
            {"POD_NAME": "ehpc-image-exporter-4"},
            {"total_shards": "3"},
            "POD_NAME 'ehpc-image-exporter-4' (ordinal 4): the ordinal must be less than the total"
            " (--total-shards 3)",
        ),
        (
            {"POD_NAME": "ehpc-image-exporter-7d9f8-x2kq"},
            {"total_shards": "3"},
            "POD_NAME 'ehpc-image-exporter-7d9f8-x2kq': no StatefulSet ordinal (a trailing -<n>)",
        ),
        (
            {},
            {"total_shards": "3", "pod": "exporter"},
            "--pod 'exporter': no StatefulSet ordinal (a trailing -<n>)",
        ),
        (
            {},
            {"shard": "1", "pod": "exporter-2", "total_shards": "3"},
            "--shard 1 conflicts with --pod 'exporter-2' (ordinal 2)",
        ),
        (
            {},
            {"total_shards": "3"},
            "--total-shards 3: needs the ordinal too: --shard N, or a StatefulSet pod name (--pod, POD_NAME)",
        ),
        ({}, {"total_shards": "three"}, "--total-shards 'three': must be an integer"),
        ({}, {"shard": "1.5"}, "--shard '1.5': must be an integer"),
        ({"EHPC_TOTAL_SHARDS": "0x3"}, {}, "EHPC_TOTAL_SHARDS '0x3': must be an integer"),
        ({}, {"total_shards": "0"}, "--total-shards 0: must be between 1 and 1000"),
        ({}, {"shard": "-1"}, "--shard -1: must be between 0 and 999"),
        ({}, {"total_shards": "1001"}, "--total-shards 1001: must be between 1 and 1000"),
    ],
)  # fmt: skip
def test_flag_and_environment_errors_name_what_and_where(
    env: dict[str, str], flags: dict[str, str], message: str
) -> None:
    with pytest.raises(ShardingError) as info:
        resolve(env, **flags)
    assert str(info.value) == message


@given(st.text(max_size=200).filter(lambda t: not t.strip().isascii() or not t.strip().isdigit()))
def test_any_non_integer_is_a_clear_error(text: str) -> None:
    """Whatever the text (control characters, other scripts' digits, huge), one bounded line naming the
    flag, never a crash or an echo of a long value."""
    for flags in (ShardingFlags(shard=text), ShardingFlags(total_shards=text)):
        with pytest.raises(ShardingError) as info:
            resolve_sharding(flags, {})
        line = str(info.value)
        assert line.startswith(("--shard ", "--total-shards "))
        assert "\n" not in line
        assert len(line) < 200


# --------------------------------------------------------------------------------------------------------
# The real CLI: exit 2 before serving, one line naming the flag or variable


def _cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent("""\
        credentials: {type: access_key, access_key_id: AK, access_key_secret: CliShardSecretNeverShown}
        images: [{id: m-000000000000000001}]
        sharding: {shards: 2, shard: 1}
    """)
    )
    child = {k: v for k, v in os.environ.items() if k not in ("POD_NAME", "EHPC_TOTAL_SHARDS")}
    return subprocess.run(
        [EXE, *args, "--config", str(config), "--web.listen-address", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**child, **(env or {})},
        check=False,
    )


@pytest.mark.process
@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--shard", "3", "--total-shards", "3"], {}, "--shard 3: the ordinal must be less than the total"),
        (["--total-shards", "3"], {"POD_NAME": "ehpc-image-exporter"}, "POD_NAME 'ehpc-image-exporter': no"),
        (["--shard", "x"], {}, "--shard 'x': must be an integer"),
        ([], {"EHPC_TOTAL_SHARDS": "many"}, "EHPC_TOTAL_SHARDS 'many': must be an integer"),
        (["--shard", "0", "--pod", "e-1", "--total-shards", "2"], {}, "--shard 0 conflicts with --pod 'e-1'"),
        (["--shard", "2"], {}, "command line: sharding.shard: must be less than sharding.shards (2)"),
    ],
)
def test_cli_refuses_bad_sharding_with_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    """Both ``run --check-config`` (stderr line) and ``run`` (log line, before binding) exit 2."""
    checked = _cli(tmp_path, "run", "--check-config", *args, env=env)
    assert checked.returncode == 2, checked.stderr
    assert message in checked.stderr
    assert "Traceback" not in checked.stderr
    served = _cli(tmp_path, "run", "--log.format", "json", *args, env=env)
    assert served.returncode == 2
    assert message in served.stderr
    assert '"config_invalid"' in served.stderr
    assert "web_listening" not in served.stderr
    assert "CliShardSecretNeverShown" not in served.stderr + checked.stderr


@pytest.mark.process
def test_check_config_shows_the_resolved_shard(tmp_path: Path) -> None:
    """Flags and environment win over the file (which says shard 1 of 2)."""
    out = _cli(tmp_path, "run", "--check-config", "--total-shards", "5", env={"POD_NAME": "sts-3"})
    assert out.returncode == 0, out.stderr
    assert "shard 3 of 5" in out.stdout
    out = _cli(tmp_path, "run", "--check-config")
    assert "shard 1 of 2" in out.stdout
