"""Fleets of simulated images: generated deterministically from a seed, or loaded from a file.

Fleet file format (YAML or JSON; ``.json`` files are parsed as JSON, anything else as YAML, which
also reads JSON). Either a list of images, or an object with optional ``images`` and ``generate``::

    images:                       # explicit images; keys are the SimImage field names
      - image_id: m-0000000000000000demo
        image_type: VM            # VM | Container (default VM)
        category: Custom          # Custom | Public (default Custom)
        name: gromacs
        version: v2024.1
        status: Available         # any string; Available, Creating, Waiting, UnAvailable, CreateFailed, ...
        size_gib: 40
        create_time: "2024-03-01T08:00:00Z"
        os_tag: Alibaba Cloud Linux 3.2104 LTS 64 bit
        platform: Aliyun
        architecture: x86_64
        regions: {cn-beijing: Available, cn-shanghai: Creating}   # AdditionalRegionsInfo copies
        error: null               # an API error code GetImage always answers for this image
      - image_id: m-0000000000000001demo
        image_type: Container
        registry_url: registry-vpc.cn-hangzhou.aliyuncs.com/ehpc_open/nginx:latest
        registry_username: puller
        registry_password: not-a-real-password
    generate:                     # optional: generated images appended after the explicit ones
      count: 100
      regions: [cn-beijing, cn-shanghai]
      seed: 7

Other SimImage fields (description, app_id, update_time, document_id, document, encoding_mode,
is_acr_registry, is_acr_enterprise, registry_cri_id, weight) are accepted too; unknown keys are errors.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from ehpc_simulator.model import SimImage, image_from_dict

_APPS = (
    "gromacs",
    "lammps",
    "openfoam",
    "wrf",
    "vasp",
    "namd",
    "cp2k",
    "quantum-espresso",
    "blast",
    "relion",
)
_VM_OS = (
    ("Alibaba Cloud Linux 3.2104 LTS 64 bit", "Aliyun"),
    ("CentOS 7.9 64 bit", "CentOS"),
    ("Ubuntu 22.04 64 bit", "Ubuntu"),
    ("Rocky Linux 9.3 64 bit", "Rocky Linux"),
)
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
# Image states of a realistic fleet that are not Available, and replica states of a lagging copy.
_PROBLEM_STATUSES = ("Creating", "Waiting", "UnAvailable", "CreateFailed", "Deprecated")
_LAGGING_REGION_STATUSES = ("Creating", "Waiting", "CreateFailed", "UnAvailable")
_FORCED_ERRORS = ("EcsError", "NotAuthorized", "DbError")


def _image_id(rng: random.Random) -> str:
    return "m-" + "".join(rng.choice(_ALPHABET) for _ in range(20))


def generate_fleet(
    n: int,
    regions: Sequence[str],
    *,
    seed: int = 0,
    container_fraction: float = 0.3,
    public_fraction: float = 0.1,
    problem_fraction: float = 0.08,
    lagging_fraction: float = 0.15,
    error_fraction: float = 0.02,
    home_region: str = "cn-hangzhou",
) -> list[SimImage]:
    """``n`` images with a realistic mix, identical for the same arguments.

    Most images are Available and copied to every one of ``regions`` (the additional regions).
    About ``problem_fraction`` have another status (Creating, CreateFailed, UnAvailable, ...), about
    ``lagging_fraction`` have incomplete replication (a copy still creating or failed, or a region not
    copied at all), and ``round(n * error_fraction)`` images (at least one when ``n >= 20``) answer
    GetImage with a forced error (EcsError, NotAuthorized, DbError in turn).
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not security
    base_time = datetime(2023, 1, 1, tzinfo=UTC)
    n_errors = round(n * error_fraction)
    if n >= 20 and error_fraction > 0:
        n_errors = max(1, n_errors)
    error_at = set(rng.sample(range(n), min(n, n_errors))) if n else set()
    versions: dict[str, int] = {}
    images: list[SimImage] = []
    seen_ids: set[str] = set()
    for k in range(n):
        image_id = _image_id(rng)
        while image_id in seen_ids:
            image_id = _image_id(rng)
        seen_ids.add(image_id)
        app = _APPS[rng.randrange(len(_APPS))]
        # A pool of about n/3 names, so names repeat with several versions (ListImages Mode=Merge).
        name = f"{app}-{rng.randrange(max(1, n // (3 * len(_APPS)) + 1))}"
        versions[name] = versions.get(name, 0) + 1
        version = f"v{versions[name]}.{rng.randrange(10)}"
        created = base_time + timedelta(seconds=rng.randrange(2 * 365 * 86400))
        updated = created + timedelta(seconds=rng.randrange(30 * 86400))
        is_container = rng.random() < container_fraction
        status = "Available"
        if rng.random() < problem_fraction:
            status = rng.choice(_PROBLEM_STATUSES)
        replicas = dict.fromkeys(regions, "Available")
        if regions and rng.random() < lagging_fraction:
            lagging = rng.choice(list(regions))
            if rng.random() < 0.3:
                del replicas[lagging]  # never copied there
            else:
                replicas[lagging] = rng.choice(_LAGGING_REGION_STATUSES)
        image = SimImage(
            image_id=image_id,
            image_type="Container" if is_container else "VM",
            category="Public" if rng.random() < public_fraction else "Custom",
            name=name,
            version=version,
            description=f"{app} image {version} (simulated)",
            app_id=f"app-{rng.getrandbits(40):010x}" if rng.random() < 0.5 else "",
            status=status,
            create_time=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            update_time=updated.strftime("%Y-%m-%dT%H:%M:%SZ"),
            regions=replicas,
            document_id=rng.randrange(1000, 100000),
            weight=rng.randrange(0, 10),
        )
        if is_container:
            image.size_gib = round(rng.uniform(0.2, 8.0), 1)
            image.os_tag, image.platform = "Ubuntu 22.04", "Linux"
            image.architecture = "x86_64"
            image.registry_url = f"registry-vpc.{home_region}.aliyuncs.com/ehpc_open/{app}:{version}"
            image.registry_username = f"puller-{rng.getrandbits(24):06x}"
            image.registry_password = f"sim-registry-pw-{rng.getrandbits(64):016x}"
            image.is_acr_enterprise = rng.random() < 0.3
            image.registry_cri_id = f"cri-{rng.getrandbits(48):012x}" if image.is_acr_enterprise else ""
        else:
            image.size_gib = rng.choice((20, 40, 40, 60, 80, 100))
            image.os_tag, image.platform = _VM_OS[rng.randrange(len(_VM_OS))]
            image.architecture = "arm64" if rng.random() < 0.15 else "x86_64"
        if k in error_at:
            image.error = _FORCED_ERRORS[sorted(error_at).index(k) % len(_FORCED_ERRORS)]
        images.append(image)
    return images


def fleet_from_data(data: Any, where: str = "fleet") -> list[SimImage]:
    """Images from already-parsed fleet data (see the module docstring)."""
    if isinstance(data, list):
        data = {"images": data}
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a list of images or an object with images/generate")
    unknown = sorted(set(data) - {"images", "generate"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    raw_images = data.get("images") or []
    if not isinstance(raw_images, list):
        raise ValueError(f"{where}.images: expected a list")
    images = [image_from_dict(d, f"{where}.images[{n}]") for n, d in enumerate(raw_images)]
    gen = data.get("generate")
    if gen is not None:
        if not isinstance(gen, dict):
            raise ValueError(f"{where}.generate: expected an object")
        extra = sorted(set(gen) - {"count", "regions", "seed"})
        if extra:
            raise ValueError(f"{where}.generate: unknown key(s) {', '.join(map(str, extra))}")
        count, regions, seed = gen.get("count", 0), gen.get("regions", []), gen.get("seed", 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{where}.generate.count: expected a non-negative integer")
        if not isinstance(regions, list) or not all(isinstance(r, str) for r in regions):
            raise ValueError(f"{where}.generate.regions: expected a list of region ids")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"{where}.generate.seed: expected an integer")
        images.extend(generate_fleet(count, regions, seed=seed))
    ids = [i.image_id for i in images]
    if len(set(ids)) != len(ids):
        dup = next(i for n, i in enumerate(ids) if i in ids[:n])
        raise ValueError(f"{where}: duplicate image_id {dup}")
    return images


def load_fleet(path: str | Path) -> list[SimImage]:
    """Read a fleet file (YAML or JSON, format in the module docstring); ValueError names the problem."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(
            f"{p}: not valid {'JSON' if p.suffix.lower() == '.json' else 'YAML'}: {exc}"
        ) from None
    return fleet_from_data(data, str(p))
