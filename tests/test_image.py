"""The container image, built from the repository's Dockerfile by a real engine and run as built.

podman (buildah inside, no daemon) builds ./Dockerfile with chroot isolation, on a private store of its
own. No container registry is reachable, so the base is a STAND-IN: Debian's own packages debootstrapped
and tagged as the Dockerfile's FROM. It has the same Debian release and Python minor version as
python:X.Y.Z-slim-<release>, not the same patch build or layout; each check that relies on it says so.
The host's CA bundle reaches pip as the build secret the pip step mounts, named by the PIP_CERT ARG.

No OCI runtime can start on these machines (crun and runc cannot set rlimits without CAP_SYS_RESOURCE), so
the test does by hand what a runtime does: the read-only `podman image mount`, topped with empty
mountpoints for the files it binds (as an engine creates them), a tmpfs on /tmp, in a private mount
namespace, then chroot as the image's User with exactly the image's Env, executing Entrypoint + Cmd. It
shares the host's network and PID namespaces (no cgroups, seccomp or capability drop): it proves the
filesystem, the user, the environment and the entrypoint, not the isolation. The recipe is section 8 of
the shared docs' real-tools.md.

The image is built once per session (about a minute, mostly debootstrap). Nothing is cached across
sessions: CI runs pytest once on a fresh machine, so a cache would never be hit there.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import http.client
import json
import os
import re
import shlex
import shutil
import ssl
import stat
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from exporter.config import DEFAULT_LISTEN_ADDRESS
from tests.harness import (
    ExporterProcess,
    SimulatorProcess,
    exporter_config,
    free_port,
    http_get,
    parse_samples,
    start_simulator,
)
from tests.test_audit import PROJECT, read_lock

# The first test to use the image pays for the build (about a minute on an idle machine, two when busy).
# One xdist worker builds the image and runs every test that needs it (make test: --dist loadgroup).
pytestmark = [pytest.mark.process, pytest.mark.xdist_group("image"), pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
FLEET = REPO / "simulator" / "ehpc_simulator" / "example-fleet.yaml"
IMAGE_TAG = "localhost/ehpc-image-exporter:test"
# The build secret the Dockerfile's pip step mounts, and where it appears to that step only.
CA_SECRET = "build-ca"
CA_MOUNT = f"/run/secrets/{CA_SECRET}"
# The paths the image gets writable at run time, what the chart must give it and nothing more: /tmp (the
# image's HOME) as a tmpfs. The read-only binds (config, web config) are listed per run.
WRITABLE_PATHS = ("/tmp",)  # noqa: S108 -- container paths, not files this test writes
WEB_DIR = "/etc/ehpc-image-exporter/web"
# Distributions that must never ship: build tools (the base image's Python aside, see the test).
BUILD_TOOLS = {"pip", "setuptools", "wheel", "build", "distribute"}
# Passed as build arguments; --version and ehpc_exporter_build_info must report them.
IMAGE_REVISION = "0123456789abcdef0123456789abcdef01234567"
IMAGE_BUILD_DATE = "2026-12-01T00:00:00Z"


def _tool(name: str) -> str:
    """The absolute path of a host tool the test needs; a missing one fails (CI installs it), never skips."""
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        pytest.fail(
            f"{name} is not installed: `make system-deps` (scripts/install-system-deps.sh) installs it"
        )
    return path


# ------------------------------------------------------------------------------------------ the build


def dockerfile_bases(text: str) -> list[str]:
    """The image of every FROM line, in order (stage names dropped)."""
    return re.findall(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)", text, flags=re.IGNORECASE | re.MULTILINE)


def dockerfile_context_sources(text: str) -> set[str]:
    """What the Dockerfile's COPY lines take from the build context (not `--from=` another stage)."""
    joined = re.sub(r"\\\n", " ", text)
    sources: set[str] = set()
    for args in re.findall(r"^\s*COPY\s+(.*)$", joined, flags=re.IGNORECASE | re.MULTILINE):
        words = shlex.split(args)
        if any(w.startswith("--from") for w in words):
            continue
        sources.update(w.rstrip("/") for w in [w for w in words if not w.startswith("--")][:-1])
    return sources


@dataclass(frozen=True)
class Podman:
    """podman on a store of its own (root, runroot, tmpdir), so no other run's images or locks are shared."""

    home: Path
    executable: str

    def argv(self, *args: str) -> list[str]:
        """The full command line for `podman ARGS` on this store."""
        return [
            self.executable,
            "--root",
            str(self.home / "root"),
            "--runroot",
            str(self.home / "run"),
            "--tmpdir",
            str(self.home / "tmp"),
            "--storage-driver",
            "overlay",
            "--events-backend",
            "none",
            *args,
        ]

    def env(self) -> dict[str, str]:
        """Our environment with buildah's scratch files kept in the store too."""
        return {**os.environ, "TMPDIR": str(self.home / "tmp")}

    def __call__(self, *args: str, timeout: float = 120, stdin: Any = None) -> str:
        """Run podman; fail with its output unless it exits 0; return its stdout."""
        proc = subprocess.run(
            self.argv(*args),
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {proc.returncode}:\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )
        return proc.stdout


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 sources first, then sources.list)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        m = re.search(r"^URIs:\s*(\S+)", path.read_text(), flags=re.MULTILINE)
        if m:
            return m.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        m = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", legacy.read_text(), flags=re.MULTILINE)
        if m:
            return m.group(1)
    pytest.fail("no Debian mirror in /etc/apt/sources.list(.d): debootstrap needs one")


def build_stand_in_base(podman: Podman, base: str, workdir: Path) -> None:
    """Debootstrap a STAND-IN for `python:X.Y.Z-slim-<release>` and tag it as `base`.

    Same Debian release and Python minor as the real base, from Debian's packages: python3.X in /usr/bin
    (linked from /usr/local/bin, where the real base keeps it), no pip outside a venv, Debian's own CA
    bundle. Its config sets what the real base's does that matters here: PATH, LANG and CMD.
    """
    m = re.fullmatch(
        r"(?:docker\.io/(?:library/)?)?python:(\d+\.\d+)\.\d+-slim-([a-z]+)(@sha256:[0-9a-f]{64})?", base
    )
    assert m, f"the stand-in can only imitate python:X.Y.Z-slim-<debian release>, not {base!r}"
    minor, release = m.group(1), m.group(2)
    rootfs = workdir / "rootfs"
    packages = f"python{minor},python{minor}-venv,python3-distutils,ca-certificates"
    proc = subprocess.run(
        [
            _tool("debootstrap"),
            "--variant=minbase",
            f"--include={packages}",
            release,
            str(rootfs),
            apt_mirror(),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"debootstrap failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    for name in ("python", "python3"):
        (rootfs / "usr/local/bin" / name).symlink_to(f"/usr/bin/python{minor}")
    tag = base.split("@", 1)[0]
    if "/" not in tag.split(":", 1)[0]:
        tag = f"docker.io/library/{tag}"
    with subprocess.Popen([_tool("tar"), "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
        podman(
            "import",
            "--change",
            "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change",
            "ENV LANG=C.UTF-8",
            "--change",
            'CMD ["python3"]',
            "-",
            tag,
            stdin=tar.stdout,
            timeout=300,
        )
    assert tar.returncode == 0, "tar of the stand-in rootfs failed"
    shutil.rmtree(rootfs)


@dataclass(frozen=True)
class BuildCa:
    """The CA bundle handed to the build: the host's, plus a canary certificate made for this run only.

    The canary makes "the CA is nowhere in the image" checkable on any machine, even one whose bundle is
    the same as Debian's. The host's certificates that the base does not ship itself (here the
    TLS-intercepting proxy's CA) must not end up in the image either.
    """

    bundle: Path
    host_bundle: Path
    canary_pem: bytes


def host_ca_bundle() -> Path:
    """The CA bundle this host's pip trusts: PIP_CERT, else the system bundle."""
    for candidate in (
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        ssl.get_default_verify_paths().openssl_cafile,
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    pytest.fail("no CA bundle on this host for pip inside the build")


def pem_blocks(data: bytes) -> list[bytes]:
    """The PEM certificates in a bundle, each normalised to its base64 body without line breaks."""
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", data, flags=re.DOTALL)
    return [re.sub(rb"\s+", b"", b) for b in blocks]


def cert_needles(body: bytes) -> list[bytes]:
    """Byte strings any copy of a certificate would contain: a 64-column PEM line and a DER chunk."""
    der = base64.b64decode(body)
    middle = (len(body) // 2) // 64 * 64
    return [body[middle : middle + 64], der[-48:]]


@dataclass
class BuiltImage:
    """The image as built: its inspected metadata, read-only mount, build numbers and build CA."""

    podman: Podman
    tag: str
    base: str
    inspect: dict[str, Any]
    base_inspect: dict[str, Any]
    mount: Path
    build_seconds: float
    stand_in_seconds: float
    ca: BuildCa

    @property
    def config(self) -> dict[str, Any]:
        """The image config (User, Env, Entrypoint, Cmd, ...)."""
        cfg = self.inspect["Config"]
        assert isinstance(cfg, dict)
        return cfg

    @property
    def env(self) -> dict[str, str]:
        """The image's Env, as a process environment."""
        return dict(e.split("=", 1) for e in self.config.get("Env") or [])

    @property
    def user(self) -> str:
        """The declared User (`uid[:gid]`)."""
        user = self.config.get("User") or ""
        assert isinstance(user, str)
        return user

    @property
    def uid_gid(self) -> tuple[int, int]:
        """The numeric UID and GID of User (the image must declare numbers: runAsNonRoot checks them)."""
        m = re.fullmatch(r"(\d+)(?::(\d+))?", self.user)
        assert m, f"User {self.user!r} is not numeric uid[:gid]"
        return int(m.group(1)), int(m.group(2) or m.group(1))

    @property
    def entrypoint(self) -> list[str]:
        """Entrypoint, exec form."""
        return list(self.config.get("Entrypoint") or [])

    @property
    def cmd(self) -> list[str]:
        """Cmd, exec form."""
        return list(self.config.get("Cmd") or [])

    @property
    def healthcheck(self) -> dict[str, Any]:
        """The HEALTHCHECK (docker format keeps it; podman shows it beside Config)."""
        check = self.inspect.get("Healthcheck") or self.config.get("Healthcheck")
        assert isinstance(check, dict), "the image has no HEALTHCHECK"
        return check


_IMAGE_KEY = pytest.StashKey[BuiltImage | BaseException]()


def built_image(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """The image, built on first use and shared by every test of the session (tests/test_helm.py too).

    Kept in the config's stash rather than behind one session fixture, so that the modules that import
    this get the same build instead of one each; the store is removed when the session ends.
    """
    found = config.stash.get(_IMAGE_KEY, None)
    if isinstance(found, BaseException):
        # One failed build fails every test that needs the image, without rebuilding for each of them.
        first_line = (str(found) or type(found).__name__).splitlines()[0]
        raise AssertionError(f"the image build failed (the first error has the details): {first_line}")
    if found is not None:
        return found
    stack = contextlib.ExitStack()
    config.add_cleanup(stack.close)
    try:
        image = stack.enter_context(_build(config, tmp_path_factory))
    except BaseException as exc:
        config.stash[_IMAGE_KEY] = exc
        raise
    config.stash[_IMAGE_KEY] = image
    return image


@contextlib.contextmanager
def _build(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltImage]:
    workdir = tmp_path_factory.mktemp("image")
    # Not under pytest's basetemp: podman refuses a runroot longer than 50 characters, and an xdist
    # worker's basetemp (/tmp/pytest-of-root/pytest-N/popen-gwN/...) is longer than that.
    home = Path(tempfile.mkdtemp(prefix="ehpc-podman-"))
    for sub in ("root", "run", "tmp"):
        (home / sub).mkdir()
    podman = Podman(home, _tool("podman"))
    _tool("debootstrap")
    try:
        text = DOCKERFILE.read_text()
        bases = set(dockerfile_bases(text))
        assert len(bases) == 1, f"every stage must use the one pinned base, not {sorted(bases)}"
        (base,) = bases

        started = time.monotonic()
        build_stand_in_base(podman, base, workdir)
        stand_in_seconds = time.monotonic() - started

        host_bundle = host_ca_bundle()
        canary = trustme.CA().cert_pem.bytes()
        bundle = workdir / "build-ca.pem"
        bundle.write_bytes(host_bundle.read_bytes().rstrip(b"\n") + b"\n" + canary)
        ca = BuildCa(bundle, host_bundle, canary)

        started = time.monotonic()
        podman(
            "build",
            "--isolation=chroot",
            "--pull=never",
            "--network=host",
            "--format=docker",  # OCI image configs have no HEALTHCHECK
            "--secret",
            f"id={CA_SECRET},src={bundle}",
            "--build-arg",
            f"PIP_CERT={CA_MOUNT}",
            "--build-arg",
            f"REVISION={IMAGE_REVISION}",
            "--build-arg",
            f"BUILD_DATE={IMAGE_BUILD_DATE}",
            "--file",
            str(DOCKERFILE),
            "--tag",
            IMAGE_TAG,
            str(REPO),
            timeout=300,
        )
        build_seconds = time.monotonic() - started
        inspect = json.loads(podman("image", "inspect", IMAGE_TAG))[0]
        base_inspect = json.loads(podman("image", "inspect", base))[0]
        mount = Path(podman("image", "mount", IMAGE_TAG).strip())
        image = BuiltImage(
            podman,
            IMAGE_TAG,
            base,
            inspect,
            base_inspect,
            mount,
            build_seconds,
            stand_in_seconds,
            ca,
        )
        _announce(
            config,
            f"image {IMAGE_TAG}: stand-in base {stand_in_seconds:.1f} s, build {build_seconds:.1f} s, "
            f"size {inspect['Size'] / 1e6:.1f} MB (stand-in base {base_inspect['Size'] / 1e6:.1f} MB, "
            f"the Dockerfile's own layers {(inspect['Size'] - base_inspect['Size']) / 1e6:.1f} MB)",
        )
        yield image
    finally:
        subprocess.run(
            podman.argv("image", "unmount", "--all"), capture_output=True, env=podman.env(), check=False
        )
        _unmount_below(home)
        shutil.rmtree(home, ignore_errors=True)


def _announce(config: pytest.Config, line: str) -> None:
    """Print one line to the terminal even while output is captured (the CI log keeps the numbers)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n[test_image] {line}", flush=True)


def _unmount_below(path: Path) -> None:
    """Unmount whatever podman left mounted under `path` (deepest first), so it can be removed."""
    mounts = [
        line.split()[1]
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if line.split()[1].startswith(str(path) + "/")
    ]
    for target in sorted(mounts, key=len, reverse=True):
        subprocess.run([_tool("umount"), "-l", target], capture_output=True, check=False)


@pytest.fixture(scope="session")
def image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """The repository's Dockerfile, built by podman on the stand-in base."""
    return built_image(request.config, tmp_path_factory)


# ------------------------------------------------------------------------------------------ the runs


@dataclass
class Container:
    """One run of the image: its read-only mount plus mountpoints, a tmpfs /tmp, binds, chroot as User.

    Relies on the stand-in for the interpreter: the venv's python links to the base's /usr/local/bin/python,
    which in the stand-in is Debian's python3.X (the real base's is its own build of the same minor).
    """

    image: BuiltImage
    directory: Path
    binds: Mapping[str, Path] = field(default_factory=dict)  # container path -> host file or directory

    def argv(self, command: Sequence[str]) -> list[str]:
        """unshare + mounts + chroot, then `command` resolved on the image's PATH (as a runtime does)."""
        stub, root = self.directory / "mountpoints", self.directory / "root"
        stub.mkdir(parents=True)
        stub.chmod(stat.S_IMODE(self.image.mount.stat().st_mode))  # the merged "/" takes this mode
        root.mkdir()
        # The top layer holds only the empty mountpoints an engine would create; its directories carry the
        # modes of the image's own, because an overlay takes a merged directory's mode from the top layer.
        for target, source in self.binds.items():
            point = stub / target.lstrip("/")
            for parent in reversed(point.relative_to(stub).parents):
                here = stub / parent
                here.mkdir(exist_ok=True)
                image_dir = self.image.mount / parent
                here.chmod(stat.S_IMODE(image_dir.stat().st_mode) if image_dir.is_dir() else 0o755)
            if source.is_dir():
                point.mkdir()
            else:
                point.touch()
        q = shlex.quote
        lower = f"{stub}:{self.image.mount}"
        script = [
            "set -e",
            f"mount -t overlay overlay -o ro,lowerdir={q(lower)} {q(str(root))}",
            *[f"mount -t tmpfs -o mode=1777 tmpfs {q(str(root) + path)}" for path in WRITABLE_PATHS],
            *[f"mount --bind -o ro {q(str(src))} {q(str(root) + dst)}" for dst, src in self.binds.items()],
            f'exec {q(_tool("chroot"))} --userspec={q(self.image.user)} {q(str(root))} "$@"',
        ]
        return [
            _tool("unshare"),
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            "\n".join(script),
            "-",
            *command,
        ]


def exec_in(
    pid: int,
    image: BuiltImage,
    command: Sequence[str],
    *,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """Run `command` inside a running container's root (what `podman exec` would do), with the image's Env."""
    return subprocess.run(
        [_tool("chroot"), f"--userspec={user or image.user}", f"/proc/{pid}/root", *command],
        env={**image.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_in_image(
    image: BuiltImage,
    directory: Path,
    config: Mapping[str, Any],
    *,
    extra_args: Sequence[str] = (),
    binds: Mapping[str, Path] | None = None,
    scheme: str = "http",
    ssl_context: ssl.SSLContext | None = None,
) -> ExporterProcess:
    """The image's Entrypoint + Cmd with `config` mounted where Cmd reads it, on a free loopback port.

    The chroot shares the host's network, so the listen address moves off the image's default :9765 (both
    to stay on loopback and to let concurrent runs coexist); argparse lets the later flag win.
    """
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / "config.yaml"
    config_file.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    config_file.chmod(0o644)  # read by the image's User through the bind
    cmd = image.cmd
    assert "--config" in cmd, f"Cmd {cmd} names no config file"
    config_path = cmd[cmd.index("--config") + 1]
    port = free_port()
    command = [*image.entrypoint, *cmd, "--web.listen-address", f"127.0.0.1:{port}", *extra_args]
    container = Container(image, directory / "container", {config_path: config_file, **(binds or {})})
    exporter = ExporterProcess(
        "image",
        container.argv(command),
        directory,
        env=image.env,
        port=port,
        scheme=scheme,
        config_path=config_file,
        ssl_context=ssl_context,
    )
    exporter.start()
    try:
        exporter.wait_ready()
    except BaseException:
        exporter.stop()
        raise
    return exporter


@pytest.fixture(scope="module")
def fleet_simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    """The simulator (on the host, from the test venv) serving the example fleet."""
    sim = start_simulator(tmp_path_factory.mktemp("sim"), FLEET)
    yield sim
    sim.stop()


def fleet_config(sim: SimulatorProcess) -> dict[str, Any]:
    """An exporter config watching every image of the simulator's fleet."""
    return exporter_config(sim.url, [{"id": i["image_id"]} for i in sim.images()])


@pytest.fixture(scope="module")
def running(
    image: BuiltImage, fleet_simulator: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExporterProcess]:
    """The image running against the simulator, ready (its first refresh done)."""
    exporter = start_in_image(image, tmp_path_factory.mktemp("run"), fleet_config(fleet_simulator))
    yield exporter
    exporter.stop()


def _pid(exporter: ExporterProcess) -> int:
    """The container's process: unshare, sh and chroot all exec, so it is the exporter itself."""
    assert exporter.popen is not None
    exporter.check_alive()
    return exporter.popen.pid


# ------------------------------------------------------------------------------------------ the tests


def test_image_declares_a_numeric_non_root_user_and_a_single_venv_layer(image: BuiltImage) -> None:
    """User is numeric and not root; one layer (the venv) on the base, no RUN; port, probe, HOME, labels."""
    uid, gid = image.uid_gid
    assert uid != 0
    assert gid != 0
    base_layers = image.base_inspect["RootFS"]["Layers"]
    layers = image.inspect["RootFS"]["Layers"]
    assert layers[: len(base_layers)] == base_layers
    assert len(layers) == len(base_layers) + 1, "the runtime stage must add one layer: the venv it copies"
    runs = [
        h["created_by"] for h in image.inspect["History"] if "#(nop)" not in h.get("created_by", "#(nop)")
    ]
    assert runs == [], f"the runtime stage runs commands: {runs}"
    port = DEFAULT_LISTEN_ADDRESS.rsplit(":", 1)[1]
    assert set(image.config["ExposedPorts"]) == {f"{port}/tcp"}, "EXPOSE the port Cmd listens on"
    assert f"127.0.0.1:{port}/healthz" in " ".join(image.healthcheck["Test"]), "probe that port by default"
    assert image.env["HOME"] in WRITABLE_PATHS, "HOME must be a writable mount"
    assert image.env.get("PYTHONDONTWRITEBYTECODE") == "1"

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    labels = image.config["Labels"]
    assert labels["org.opencontainers.image.title"] == project["name"]
    assert labels["org.opencontainers.image.version"] == project["version"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]


def test_build_context_is_only_what_the_dockerfile_copies(image: BuiltImage, tmp_path: Path) -> None:
    """podman's own .dockerignore handling lets through exactly the Dockerfile's COPY sources, no caches.

    A probe build (`COPY . /ctx` onto the base, with the repository as its context) lists what the real
    engine sends; tests, .venv, .git, fixtures and secrets must not be in it.
    """
    probe = tmp_path / "probe.Dockerfile"
    probe.write_text(f"FROM {image.base}\nCOPY . /ctx\n")
    image.podman(
        "build",
        "--isolation=chroot",
        "--pull=never",
        "-f",
        str(probe),
        "-t",
        "localhost/context-probe",
        str(REPO),
    )
    mount = Path(image.podman("image", "mount", "localhost/context-probe").strip())
    try:
        files = [
            p.relative_to(mount / "ctx").as_posix() for p in (mount / "ctx").rglob("*") if not p.is_dir()
        ]
    finally:
        image.podman("image", "unmount", "localhost/context-probe")
    assert {f.split("/")[0] for f in files} == dockerfile_context_sources(DOCKERFILE.read_text())
    assert [f for f in files if "__pycache__" in f or f.endswith((".pyc", ".pyo"))] == []


def test_build_ca_never_reaches_the_image(image: BuiltImage) -> None:
    """The CA passed for the build (host bundle + canary) is in no file of the image, its Env or history."""
    base_mount = Path(image.podman("image", "mount", image.base).strip())
    try:
        base_bundle = (base_mount / "etc/ssl/certs/ca-certificates.crt").read_bytes()
    finally:
        image.podman("image", "unmount", image.base)
    # The stand-in ships Debian's bundle: the host's certificates beyond it (a proxy's CA) and the canary
    # are what the build was given and the image must not keep.
    base_certs = set(pem_blocks(base_bundle))
    secret_certs = [c for c in pem_blocks(image.ca.host_bundle.read_bytes()) if c not in base_certs]
    secret_certs += pem_blocks(image.ca.canary_pem)
    needles = [n for cert in secret_certs for n in cert_needles(cert)]

    found: list[str] = []
    for dirpath, _, filenames in os.walk(image.mount):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            data = path.read_bytes()
            if any(n in data for n in needles):
                found.append(str(path.relative_to(image.mount)))
    assert found == [], f"the build CA ended up in the image: {found}"
    assert not (image.mount / CA_MOUNT.lstrip("/")).exists()
    metadata = json.dumps(image.inspect)
    assert "PIP_CERT" not in metadata
    assert CA_MOUNT not in metadata


def test_image_serves_the_simulators_fleet(
    running: ExporterProcess, fleet_simulator: SimulatorProcess
) -> None:
    """Run as built (User, Env, Entrypoint + Cmd), it refreshes every fleet image and serves them."""
    samples = parse_samples(running.metrics_text())
    up = {dict(labels)["image_id"]: v for (name, labels), v in samples.items() if name == "ehpc_image_up"}
    assert set(up) == {i["image_id"] for i in fleet_simulator.images()}
    assert any(v == 1 for v in up.values())
    assert [v for (name, _), v in samples.items() if name == "ehpc_exporter_build_info"] == [1]


def test_healthcheck_command_succeeds_against_it(image: BuiltImage, running: ExporterProcess) -> None:
    """The image's own HEALTHCHECK, run inside the container, passes against it and fails on a dead port."""
    check = image.healthcheck
    test = check["Test"]
    assert test[0] in ("CMD", "CMD-SHELL"), test
    command = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
    timeout = check["Timeout"] / 1e9  # nanoseconds
    pid = _pid(running)
    ok = exec_in(pid, image, command, env={"HEALTHCHECK_URL": f"{running.url}/healthz"}, timeout=timeout)
    assert ok.returncode == 0, ok.stderr
    dead = f"http://127.0.0.1:{free_port()}/healthz"
    bad = exec_in(pid, image, command, env={"HEALTHCHECK_URL": dead}, timeout=timeout)
    assert bad.returncode != 0


WRITE_PROBE = """
import errno, json, os, sys
out = {}
for d in sys.argv[1:]:
    try:
        with open(os.path.join(d, ".write-probe"), "w"):
            pass
        os.unlink(os.path.join(d, ".write-probe"))
        out[d] = 0
    except OSError as e:
        out[d] = e.errno
print(json.dumps(out))
"""


def test_root_filesystem_is_read_only_and_never_needed(image: BuiltImage, running: ExporterProcess) -> None:
    """Every write to the root filesystem fails with EROFS (even as root); the running exporter made none.

    The exporter got this far (ready, serving) on a root where no write can succeed, and left its one
    writable path, /tmp, empty.
    """
    pid = _pid(running)
    for path in WRITABLE_PATHS:
        assert os.listdir(f"/proc/{pid}/root{path}") == [], f"the exporter wrote into {path}"
    dirs = ["/", "/etc", "/usr", "/usr/local/bin", image.env["PATH"].split(":")[0], *WRITABLE_PATHS]
    as_root = exec_in(pid, image, ["python", "-c", WRITE_PROBE, *dirs], user="0:0")
    assert as_root.returncode == 0, as_root.stderr
    results = json.loads(as_root.stdout)
    assert {d: results[d] for d in dirs if d not in WRITABLE_PATHS} == {
        d: errno.EROFS for d in dirs if d not in WRITABLE_PATHS
    }
    as_user = exec_in(pid, image, ["python", "-c", WRITE_PROBE, *WRITABLE_PATHS])
    assert json.loads(as_user.stdout) == dict.fromkeys(WRITABLE_PATHS, 0), "the tmpfs must be writable"
    running.check_alive()
    assert "Read-only file system" not in running.output()


LIST_DISTRIBUTIONS = """
import json, sys
from importlib import metadata
print(json.dumps({"prefix": sys.prefix, "sys_path": sys.path, "dists": [
    {"name": d.metadata["Name"], "version": d.version, "requires": d.requires or []}
    for d in metadata.distributions()
]}))
"""


def test_installed_distributions_are_the_lock_closure(image: BuiltImage, running: ExporterProcess) -> None:
    """The image's Python sees exactly requirements.lock's closure: no test, bench or build tool.

    Relies on the stand-in for one thing: the real python:slim base keeps its own pip, setuptools and
    wheel in /usr/local, outside the venv and off the venv interpreter's sys.path; the stand-in has none.
    The check here is the venv's and the entrypoint interpreter's view, which the stand-in does not change.
    """
    pid = _pid(running)
    proc = exec_in(pid, image, ["python", "-c", LIST_DISTRIBUTIONS])
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    # Only the venv's site-packages: the base's own (where the real base keeps its pip) is not on the path.
    site_dirs = [p for p in listing["sys_path"] if p.endswith(("site-packages", "dist-packages"))]
    assert site_dirs, listing["sys_path"]
    assert all(p.startswith(listing["prefix"] + "/") for p in site_dirs), site_dirs
    assert listing["prefix"] == str(Path(image.env["PATH"].split(":")[0]).parent), "not the venv's Python"
    installed = {canonicalize_name(d["name"]): d for d in listing["dists"]}
    assert len(installed) == len(listing["dists"]), "a distribution is installed twice"

    closure: set[str] = set()
    todo = [PROJECT]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in closure:
            continue
        closure.add(name)
        assert name in installed, f"{name} is required but not installed in the image"
        for spec in installed[name]["requires"]:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    assert set(installed) == closure, f"not needed at runtime: {sorted(set(installed) - closure)}"
    shipped = {n: d["version"] for n, d in installed.items() if n != canonicalize_name(PROJECT)}
    assert shipped == {canonicalize_name(k): v for k, v in read_lock().items()}

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    runtime = {canonicalize_name(Requirement(r).name) for r in pyproject["project"]["dependencies"]}
    dev_only = {
        canonicalize_name(Requirement(r).name)
        for group in pyproject["dependency-groups"].values()
        for r in group
        if isinstance(r, str)
    } - runtime
    assert {"pytest", "hypothesis", "pyinstrument"} <= dev_only
    assert not (dev_only | BUILD_TOOLS) & set(installed)
    venv_bin = Path(f"/proc/{pid}/root") / image.env["PATH"].split(":")[0].lstrip("/")
    tools = {p.name for p in venv_bin.iterdir()} & {"pip", "pip3", "pytest", "ruff", "mypy", "hypothesis"}
    assert tools == set(), f"tools in the venv's bin: {tools}"


def test_version_answers(image: BuiltImage, tmp_path: Path) -> None:
    """The Entrypoint with `--version`, run as built, prints the version and the build's revision and date."""
    container = Container(image, tmp_path / "container")
    proc = subprocess.run(
        container.argv([*image.entrypoint, "--version"]),
        env=image.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    lines = proc.stdout.splitlines()
    assert lines[0] == f"ehpc-image-exporter, version {version} (revision: {IMAGE_REVISION})"
    assert lines[1].split() == ["build", "date:", IMAGE_BUILD_DATE]


def test_the_image_carries_no_simulator_and_no_oracle(image: BuiltImage, tmp_path: Path) -> None:
    """No simulator package, module or /_sim/ route and no test oracle among the image's files; the
    entrypoint's `simulate` and `demo` exit 1 with the one line that says how to get the simulator."""
    route = re.compile(r"""(?:add_\w+|web\.\w+)\(\s*["']/_sim""")

    def simulator_or_oracle(path: Path, parts: tuple[str, ...]) -> bool:
        if "ehpc_simulator" in path.name:
            return True
        if "exporter" not in parts:
            return False
        return (
            "simulator" in parts
            or path.name == "reference.py"
            or (path.suffix == ".py" and route.search(path.read_text(errors="replace")) is not None)
        )

    found = [
        "/".join(parts)
        for path in image.mount.rglob("*")
        if simulator_or_oracle(path, parts := path.relative_to(image.mount).parts)
    ]
    assert found == []
    assert list(image.mount.rglob("exporter/demo.py")), "the walk did not reach the package"
    for n, command in enumerate(("simulate", "demo")):
        container = Container(image, tmp_path / f"container-{n}")
        proc = subprocess.run(
            container.argv([*image.entrypoint, command]),
            env=image.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (proc.returncode, proc.stdout) == (1, ""), proc.stderr
        (line,) = proc.stderr.splitlines()
        assert line.startswith(f"ehpc-image-exporter {command}: the simulator is not installed")
        assert "pip install ./simulator" in line


def test_tls_serves_with_a_mounted_web_config(
    image: BuiltImage,
    fleet_simulator: SimulatorProcess,
    server_cert_files: tuple[str, str],
    client_ssl_context: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    """With --web.config.file mounted read-only where the chart mounts it, it serves HTTPS and only HTTPS."""
    web = tmp_path / "web"
    web.mkdir()
    cert, key = server_cert_files
    shutil.copy(cert, web / "server.crt")
    shutil.copy(key, web / "server.key")
    (web / "web-config.yml").write_text(
        yaml.safe_dump({"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"}})
    )
    web.chmod(0o755)
    for f in web.iterdir():
        f.chmod(0o644)  # the image's User reads them through the bind (a Secret volume is 0644 too)
    exporter = start_in_image(
        image,
        tmp_path / "run",
        fleet_config(fleet_simulator),
        extra_args=["--web.config.file", f"{WEB_DIR}/web-config.yml"],
        binds={WEB_DIR: web},
        scheme="https",
        ssl_context=client_ssl_context,
    )
    try:
        status, _, body = exporter.get("/metrics")
        assert status == 200
        assert b"ehpc_image_up" in body
        with pytest.raises((OSError, http.client.HTTPException)):
            http_get(f"http://{exporter.address}/healthz", timeout=5)
    finally:
        exporter.stop()
