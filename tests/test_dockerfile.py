"""The container image, checked without a Docker engine.

There is no Docker daemon on the build machines, so these tests read the Dockerfile itself: hadolint lints
it, a small parser checks the runtime stage's hardening, and the builder stage's own COPY and RUN steps are
replayed in a fresh directory tree (with the build context filtered by .dockerignore, as Docker would).
The venv that the runtime stage would copy is then run for real: `--version`, the demo serving /healthz and
/metrics, the image's own HEALTHCHECK command, and proof that it holds runtime dependencies only and writes
nothing at runtime.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
HADOLINT = Path(sys.executable).parent / "hadolint"


# ----------------------------------------------------------------------------------------------- parser


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with its (continuation-joined) argument text."""

    cmd: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, or None for shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list)
        assert all(isinstance(v, str) for v in value)
        return value


@dataclass
class Stage:
    """A build stage: its base image, its `AS` name and its instructions."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, cmd: str) -> list[Instruction]:
        """Every instruction of this kind, in order."""
        return [i for i in self.instructions if i.cmd == cmd]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions: comments dropped, `\\` continuations joined."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for lineno, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continuation are skipped by Docker too
        if not buf:
            start = lineno
        if stripped.endswith("\\"):
            buf.append(stripped[:-1])
            continue
        buf.append(stripped)
        joined = " ".join(part.strip() for part in buf if part.strip())
        cmd, _, args = joined.partition(" ")
        out.append(Instruction(cmd.upper(), args.strip(), start))
        buf = []
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def split_stages(instructions: list[Instruction]) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults (before the first FROM) and the stages in order."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.cmd == "FROM":
            words = ins.args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert ins.cmd == "ARG", f"line {ins.line}: only ARG may precede FROM"
            key, _, value = ins.args.partition("=")
            global_args[key] = value.strip('"')
        else:
            stages[-1].instructions.append(ins)
    return global_args, stages


def expand(text: str, env: dict[str, str]) -> str:
    """Docker-style `$VAR` / `${VAR}` substitution (unknown names become empty)."""
    return re.sub(
        r"\$(?:\{(\w+)\}|(\w+))",
        lambda m: env.get(m.group(1) or m.group(2), ""),
        text,
    )


def key_values(args: str, env: dict[str, str]) -> dict[str, str]:
    """The `KEY=value ...` pairs of an ENV or LABEL instruction (quotes honoured)."""
    pairs: dict[str, str] = {}
    for word in shlex.split(args):
        key, sep, value = word.partition("=")
        assert sep, f"legacy `ENV key value` form is not used here: {args!r}"
        pairs[key] = expand(value, {**env, **pairs})
    return pairs


# ------------------------------------------------------------------------------------------ .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Translate one .dockerignore pattern (Go filepath.Match plus `**`) to a regex."""
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out = out[:-2] + "(?:.*/)?"
                i += 1
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i)
            out += "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]"
            i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


def load_dockerignore(path: Path) -> list[tuple[bool, re.Pattern[str], str]]:
    """(is_exception, regex, cleaned pattern) for every rule, in file order."""
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = str(PurePosixPath(line.removeprefix("!").strip().lstrip("/")))
        rules.append((negate, _pattern_regex(pattern), pattern))
    return rules


def is_excluded(rel: str, rules: list[tuple[bool, re.Pattern[str], str]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories wins."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex, _ in rules:
        if any(regex.match(p) for p in prefixes):
            excluded = not negate
    return excluded


def build_context(repo: Path, dest: Path) -> list[str]:
    """Copy the files of `repo` that .dockerignore lets through to `dest`; returns their relative paths."""
    rules = load_dockerignore(repo / ".dockerignore")
    exceptions = [p for negate, _, p in rules if negate]
    kept: list[str] = []
    for dirpath, dirnames, filenames in os.walk(repo):
        rel_dir = Path(dirpath).relative_to(repo).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        # Prune excluded directories no exception pattern can reach into (the walk would be slow in .venv).
        dirnames[:] = [
            d
            for d in dirnames
            if not is_excluded(rel_dir + d, rules) or any(e.startswith(rel_dir + d) for e in exceptions)
        ]
        for name in filenames:
            rel = rel_dir + name
            if not is_excluded(rel, rules):
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(repo / rel, target)
                kept.append(rel)
    return kept


# ------------------------------------------------------------------------------------------------ replay


@dataclass
class ReplayResult:
    """Where the replayed builder stage put things, mapped onto the host."""

    root: Path
    artifacts: dict[str, Path]  # container path the runtime stage copies -> host path
    context_files: list[str]


def host_path(root: Path, container_path: str) -> Path:
    """The host location standing in for an absolute container path."""
    return root / container_path.lstrip("/")


def replay_builder(stage: Stage, copied_paths: list[str], context: Path, root: Path) -> dict[str, Path]:
    """Run the builder stage's WORKDIR/ENV/ARG/COPY/RUN steps with container paths mapped under `root`.

    Container paths rewritten in RUN commands are the stage's WORKDIRs and the paths the runtime stage copies
    out of it; everything else (the interpreter, /tmp, /dev) is the host's, standing in for the base image.
    """
    shim = root / ".shim"
    shim.mkdir(parents=True)
    # The base image's `python`: this machine's interpreter of the same minor version (checked elsewhere).
    (shim / "python").symlink_to(sys._base_executable)  # type: ignore[attr-defined]
    (shim / "python3").symlink_to(sys._base_executable)  # type: ignore[attr-defined]

    workdirs = [i.args for i in stage.all("WORKDIR")]
    prefixes = sorted({*workdirs, *copied_paths}, key=len, reverse=True)
    assert all(p.startswith("/") for p in prefixes), prefixes
    rewrite = re.compile("|".join(rf"(?<![\w/.-]){re.escape(p)}(?![\w.-])" for p in prefixes))

    env: dict[str, str] = {"PATH": f"{shim}:/usr/local/bin:/usr/bin:/bin"}
    workdir = "/"
    for ins in stage.instructions:
        if ins.cmd == "WORKDIR":
            workdir = str(PurePosixPath(workdir) / expand(ins.args, env))
            host_path(root, workdir).mkdir(parents=True, exist_ok=True)
        elif ins.cmd == "ARG":
            key, _, value = ins.args.partition("=")
            env.setdefault(key, value.strip('"'))
        elif ins.cmd == "ENV":
            env.update(
                {
                    k: rewrite.sub(lambda m: str(host_path(root, m.group(0))), v)
                    for k, v in key_values(ins.args, env).items()
                }
            )
        elif ins.cmd == "COPY":
            words = shlex.split(expand(ins.args, env))
            assert not any(w.startswith("--from") for w in words), "builder copies from the context only"
            *sources, dest = [w for w in words if not w.startswith("--")]
            dest_abs = str(PurePosixPath(workdir) / dest)
            target = host_path(root, dest_abs)
            for src in sources:
                origin = context / src
                assert origin.exists(), f"line {ins.line}: {src} is not in the build context (.dockerignore?)"
                if origin.is_dir():
                    shutil.copytree(origin, target, dirs_exist_ok=True)
                else:
                    into_dir = dest.endswith("/") or len(sources) > 1
                    (target if into_dir else target.parent).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target / origin.name if into_dir else target)
        elif ins.cmd == "RUN":
            assert ins.exec_form() is None, "RUN steps are shell form"
            command = rewrite.sub(lambda m: str(host_path(root, m.group(0))), ins.args)
            run_env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONHOME"}}
            run_env.update(env)
            run_env["HOME"] = str(root / ".home")
            proc = subprocess.run(
                ["/bin/sh", "-c", command],
                cwd=host_path(root, workdir),
                env=run_env,
                capture_output=True,
                text=True,
                timeout=240,
                check=False,
            )
            assert proc.returncode == 0, f"line {ins.line}: {command}\n{proc.stdout}\n{proc.stderr}"
        else:
            raise AssertionError(f"line {ins.line}: the replay does not know {ins.cmd} in the builder stage")
    return {p: host_path(root, p) for p in copied_paths}


# ------------------------------------------------------------------------------------------------ fixtures


@dataclass(frozen=True)
class Parsed:
    """The Dockerfile, parsed once."""

    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def builder(self) -> Stage:
        """The stage the runtime stage copies from."""
        name = self.runtime_copies()[0][0]
        return next(s for s in self.stages if s.name == name)

    @property
    def runtime(self) -> Stage:
        """The last stage: what the image is."""
        return self.stages[-1]

    def runtime_copies(self) -> list[tuple[str, str, str]]:
        """(from-stage, source, destination) of every `COPY --from=` in the runtime stage."""
        out = []
        for ins in self.runtime.all("COPY"):
            words = shlex.split(ins.args)
            frm = [w.split("=", 1)[1] for w in words if w.startswith("--from=")]
            rest = [w for w in words if not w.startswith("--")]
            assert frm, f"line {ins.line}: the runtime stage copies from the builder only"
            assert len(rest) == 2, f"line {ins.line}: one source per COPY --from"
            out.append((frm[0], rest[0], rest[1]))
        return out

    def runtime_env(self) -> dict[str, str]:
        """The runtime stage's ENV, with its ARG defaults expanded."""
        env: dict[str, str] = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
        for ins in self.runtime.instructions:
            if ins.cmd == "ARG":
                key, _, value = ins.args.partition("=")
                env.setdefault(key, value.strip('"'))
            elif ins.cmd == "ENV":
                env.update(key_values(ins.args, env))
        return env


@pytest.fixture(scope="module")
def parsed() -> Parsed:
    """The repository's Dockerfile, parsed."""
    return Parsed(*split_stages(parse_dockerfile(DOCKERFILE.read_text())))


@pytest.fixture(scope="module")
def replay(parsed: Parsed, tmp_path_factory: pytest.TempPathFactory) -> ReplayResult:
    """The builder stage replayed once for the module (a real `pip install` of the repo: about 15 s)."""
    base = tmp_path_factory.mktemp("image")
    context = base / "context"
    context_files = build_context(REPO, context)
    copies = parsed.runtime_copies()
    assert {frm for frm, _, _ in copies} == {parsed.builder.name}
    artifacts = replay_builder(parsed.builder, [src for _, src, _ in copies], context, base / "root")
    return ReplayResult(base / "root", artifacts, context_files)


def _venv(parsed: Parsed, replay: ReplayResult) -> Path:
    """The host path of the venv the runtime stage copies (the COPY whose source holds bin/python)."""
    for _, src, dest in parsed.runtime_copies():
        path = replay.artifacts[src]
        if (path / "bin" / "python").exists():
            assert src == dest, "the venv must keep its build path: its scripts' shebangs point there"
            return path
    raise AssertionError("the runtime stage copies no venv from the builder")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 -- loopback test URL
        return int(resp.status), resp.read().decode()


# ---------------------------------------------------------------------------------------------- the tests


def test_hadolint_is_clean() -> None:
    """hadolint (every rule, info level included) finds nothing."""
    proc = subprocess.run(
        [str(HADOLINT), "--no-color", "-f", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == []


def test_dockerfile_parser_reads_continuations_and_exec_form() -> None:
    """The parser this module relies on joins continuations, skips comments and reads exec form."""
    text = 'FROM a:1 AS b\n# c\nRUN x \\\n  # inside\n  && y\nCMD ["p", "q"]\nENV A=1 B="two words"\n'
    args, stages = split_stages(parse_dockerfile(text))
    assert args == {}
    assert stages[0].name == "b"
    assert [(i.cmd, i.args) for i in stages[0].instructions][:1] == [("RUN", "x && y")]
    assert stages[0].all("CMD")[0].exec_form() == ["p", "q"]
    assert key_values(stages[0].all("ENV")[0].args, {}) == {"A": "1", "B": "two words"}


def test_dockerignore_matching_follows_docker_rules(tmp_path: Path) -> None:
    """Last match wins, parents count, `**` spans directories, `!` re-includes."""
    (tmp_path / ".dockerignore").write_text("*\n!keep/\n**/__pycache__\n!keep/**/x.pyc\n")
    rules = load_dockerignore(tmp_path / ".dockerignore")
    assert is_excluded("secret.env", rules)
    assert not is_excluded("keep/a.py", rules)
    assert is_excluded("keep/__pycache__/a.pyc", rules)
    assert not is_excluded("keep/__pycache__/x.pyc", rules)


def test_base_images_are_pinned_and_identical(parsed: Parsed) -> None:
    """Both stages use one exact python:X.Y.Z-slim-<debian> tag whose minor version the replay matches."""
    bases = {s.base for s in parsed.stages}
    assert len(bases) == 1, bases
    (base,) = bases
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?", base)
    assert match, f"base image {base!r} is not pinned to an exact slim tag"
    assert (int(match[1]), int(match[2])) == sys.version_info[:2], "the replay needs the same minor Python"
    assert len(parsed.stages) == 2
    assert parsed.builder is parsed.stages[0]


def test_runtime_stage_is_hardened(parsed: Parsed) -> None:
    """Runtime stage: no RUN, numeric non-root USER, exec-form entrypoint, probe, port, OCI labels."""
    rt = parsed.runtime
    assert rt.all("RUN") == [], "the runtime stage only copies the venv; no package manager runs there"
    users = rt.all("USER")
    assert users
    assert users[-1].args == "65532:65532"
    assert users[-1].line > max(i.line for i in rt.all("COPY")), "USER comes after the files are in place"

    assert rt.all("ENTRYPOINT")[-1].exec_form() == ["ehpc-image-exporter"]
    cmd = rt.all("CMD")[-1].exec_form()
    assert cmd == ["run", "--config", "/etc/ehpc-image-exporter/config.yaml"]
    assert [i.args for i in rt.all("EXPOSE")] == ["9765"]

    env = parsed.runtime_env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == "/tmp", "HOME must point at the one writable mount"  # noqa: S108 -- the image's path
    assert env["PATH"].split(":")[0] == f"{_venv_dest(parsed)}/bin"

    labels: dict[str, str] = {}
    for ins in rt.all("LABEL"):
        labels.update(key_values(ins.args, env))
    for key in ("title", "description", "source", "licenses", "version"):
        assert f"org.opencontainers.image.{key}" in labels, key
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert labels["org.opencontainers.image.version"] == project["version"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    assert labels["org.opencontainers.image.title"] == project["name"]

    probe = rt.all("HEALTHCHECK")[-1].args
    assert "CMD [" in probe, "HEALTHCHECK uses exec form"
    assert "/healthz" in probe


def _venv_dest(parsed: Parsed) -> str:
    """The container path of the copied venv (the COPY whose destination PATH starts with)."""
    copies = parsed.runtime_copies()
    assert len(copies) == 1, "the runtime stage copies exactly one thing: the venv"
    return copies[0][2]


def test_build_context_is_minimal(replay: ReplayResult) -> None:
    """.dockerignore lets through the package and its metadata only: no tests, venv, git or caches."""
    tops = {f.split("/")[0] for f in replay.context_files}
    assert tops == {"pyproject.toml", "README.md", "requirements.lock", "exporter"}, tops
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in replay.context_files)


def test_image_venv_holds_runtime_dependencies_only(parsed: Parsed, replay: ReplayResult) -> None:
    """The venv is exactly the closure of the project's runtime requirements: no test/bench tool, no pip."""
    venv = _venv(parsed, replay)
    (site,) = venv.glob("lib/python*/site-packages")
    installed = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions(path=[str(site)])}

    closure: set[str] = set()
    todo = ["ehpc-image-exporter"]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in closure:
            continue
        closure.add(name)
        assert name in installed, f"{name} is required but not installed"
        for spec in installed[name].requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    assert set(installed) == closure, f"not needed at runtime: {sorted(set(installed) - closure)}"
    # The image ships exactly the audited pins of requirements.lock (tests/test_audit.py).
    locked = {
        canonicalize_name(name): version
        for name, _, version in (
            line.split("#", 1)[0].strip().partition("==")
            for line in (REPO / "requirements.lock").read_text().splitlines()
        )
        if name
    }
    shipped = {name: dist.version for name, dist in installed.items() if name != "ehpc-image-exporter"}
    assert shipped == locked

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    runtime = {canonicalize_name(Requirement(r).name) for r in pyproject["project"]["dependencies"]}
    dev_only = {
        canonicalize_name(Requirement(r).name)
        for group in pyproject["dependency-groups"].values()
        for r in group
        if isinstance(r, str)
    } - runtime
    assert {"pytest", "alibabacloud-ehpcinstant20230701", "helm-python-sdk"} <= dev_only
    assert not dev_only & set(installed), sorted(dev_only & set(installed))
    assert not {"pip", "setuptools"} & set(installed)


def test_image_venv_answers_version(parsed: Parsed, replay: ReplayResult) -> None:
    """The entrypoint installed in the venv runs and reports the project version."""
    venv = _venv(parsed, replay)
    entry = rt_entrypoint(parsed)
    proc = subprocess.run(
        [str(venv / "bin" / entry), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert version in proc.stdout + proc.stderr


def rt_entrypoint(parsed: Parsed) -> str:
    """The ENTRYPOINT executable name (looked up on the runtime PATH, i.e. the venv's bin)."""
    form = parsed.runtime.all("ENTRYPOINT")[-1].exec_form()
    assert form
    return form[0]


@pytest.fixture
def demo(parsed: Parsed, replay: ReplayResult, tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """The image venv's exporter running `demo` on loopback with the runtime stage's environment."""
    venv = _venv(parsed, replay)
    web, sim = _free_port(), _free_port()
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    env = {
        k: v.replace(_venv_dest(parsed), str(venv)) if k == "PATH" else v
        for k, v in parsed.runtime_env().items()
    }
    env["HOME"] = str(home)  # the container's /tmp
    args = [
        str(venv / "bin" / rt_entrypoint(parsed)),
        "demo",
        "--web.listen-address",
        f"127.0.0.1:{web}",
        "--simulator.listen-address",
        f"127.0.0.1:{sim}",
    ]
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{web}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if _get(base + "/healthz")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "the demo did not come up within 20 s"
            time.sleep(0.1)
        yield base, home, cwd
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()}


def test_image_venv_serves_and_writes_nothing(
    parsed: Parsed, replay: ReplayResult, demo: tuple[str, Path, Path]
) -> None:
    """The copied venv serves /healthz, /readyz and /metrics and touches no file: fit for a read-only root."""
    base, home, cwd = demo
    venv = _venv(parsed, replay)
    before = _tree(venv)

    deadline = time.monotonic() + 20
    while True:
        try:
            if _get(base + "/readyz")[0] == 200:
                break
        except urllib.error.HTTPError:
            pass
        assert time.monotonic() < deadline, "/readyz never turned 200"
        time.sleep(0.1)
    status, body = _get(base + "/metrics")
    assert status == 200
    assert "ehpc_exporter_build_info" in body
    assert "ehpc_image_up" in body

    assert _tree(venv) == before, "the runtime wrote into the venv (bytecode?)"
    assert list(home.iterdir()) == [], "the runtime wrote into $HOME"
    assert list(cwd.iterdir()) == [], "the runtime wrote into its working directory"


def test_healthcheck_command_probes_healthz(
    parsed: Parsed, replay: ReplayResult, demo: tuple[str, Path, Path]
) -> None:
    """The image's own HEALTHCHECK command succeeds against a live exporter and fails against none."""
    base, _, _ = demo
    venv = _venv(parsed, replay)
    args = parsed.runtime.all("HEALTHCHECK")[-1].args
    form = json.loads(args[args.index("CMD") + 3 :].strip())
    assert isinstance(form, list)
    assert form[0] == "python", "the probe uses the venv's interpreter (no curl in slim images)"
    command = [str(venv / "bin" / "python"), *form[1:]]
    env = {**parsed.runtime_env(), "HOME": "/nonexistent"}

    ok = subprocess.run(
        command,
        env={**env, "HEALTHCHECK_URL": base + "/healthz"},
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    dead = f"http://127.0.0.1:{_free_port()}/healthz"
    bad = subprocess.run(
        command, env={**env, "HEALTHCHECK_URL": dead}, capture_output=True, timeout=10, check=False
    )
    assert bad.returncode != 0
