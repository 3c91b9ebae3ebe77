"""The Dockerfile, checked without a Docker engine: hadolint, .dockerignore, its promises."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.deploy.dockerfile import DOCKERFILE, ROOT, Dockerfile


def hadolint(binary: str, path: Path) -> subprocess.CompletedProcess[str]:
    # --failure-threshold warning: stricter than "errors only"; info findings are printed
    command = [binary, "--no-color", "--failure-threshold", "warning", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_hadolint_finds_nothing(tool: Callable[[str], str]) -> None:
    result = hadolint(tool("hadolint"), DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_on_an_error(tool: Callable[[str], str], tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nWORKDIR relative/path\n")  # DL3000, an error
    result = hadolint(tool("hadolint"), bad)
    assert result.returncode != 0 and "DL3000" in result.stdout


def test_runtime_is_the_default_target_and_runs_as_non_root(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.runtime
    assert runtime.base.startswith("python:3.11") and runtime.base.endswith("-slim")
    uid, _, gid = runtime.user().partition(":")
    assert uid.isdigit() and int(uid) > 0, "numeric, so Kubernetes' runAsNonRoot can verify it"
    assert gid.isdigit() and int(gid) > 0


def test_torch_is_the_cpu_build_unless_a_build_argument_says_otherwise(
    dockerfile: Dockerfile,
) -> None:
    deps = dockerfile.stage("deps")
    assert deps.args()["TORCH_INDEX"] == "cpu"
    install = next(run for run in deps.all("RUN") if "torch==" in run)
    assert "--index-url" in install and "download.pytorch.org/whl/${TORCH_INDEX}" in install


def test_the_default_model_is_baked_in_at_vae_model_dir(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.runtime
    workdir = runtime.last("WORKDIR")
    model_dir = runtime.env()["VAE_MODEL_DIR"]
    copies = [args.split() for args in runtime.all("COPY") if "--from" not in args]
    assert ["models/mnist", "./models/mnist"] in copies
    assert model_dir == f"{workdir}/models/mnist"


def test_cmd_is_the_documented_uvicorn_command(dockerfile: Dockerfile) -> None:
    shell, flag, script = dockerfile.runtime.exec_form("CMD")
    assert (shell, flag) == ("sh", "-c")
    assert script.startswith("exec uvicorn app.main:app "), "exec: uvicorn must be PID 1"
    for option in ("--host", "--port", "--workers", "--timeout-graceful-shutdown"):
        assert re.search(rf"{option} \S+", script), option
    # every phase of a connection bounded: app.connections, uvicorn's idle timeout and cap
    assert "--http app.connections:Protocol" in script
    for option in ("--timeout-keep-alive", "--limit-concurrency"):
        assert re.search(rf"{option} \S+", script), option


def test_make_run_is_the_container_command(dockerfile: Dockerfile) -> None:
    """The options of the Makefile's `run` are the CMD's, with the Makefile's own names."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe
    run = recipe.group(1).replace("\\\n", " ")
    cmd = dockerfile.runtime.exec_form("CMD")[2]
    options = re.compile(r"(--[a-z-]+)")
    assert set(options.findall(run)) == set(options.findall(cmd))


def test_healthcheck_asks_health_with_python(dockerfile: Dockerfile) -> None:
    command = dockerfile.runtime.exec_form("HEALTHCHECK")
    assert command[:2] == ["python", "-c"] and "/health" in command[2]


def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (excludes, regex), in order; the last rule matching a path wins."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        rules.append((not negated, re.compile(regex.replace(r"\?", "[^/]"))))
    return rules


def _ignored(path: str) -> bool:
    """Docker's rule: a pattern matching a path or any of its parent folders applies to it."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for excludes, pattern in _ignore_rules():
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            ignored = excludes
    return ignored


def test_dockerignore_keeps_what_copy_needs(dockerfile: Dockerfile) -> None:
    sources = [
        args.split()[0]
        for stage in dockerfile.stages
        for args in stage.all("COPY")
        if "--from" not in args
    ]
    for source in sources:
        for path in [source] + [str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py")]:
            assert not _ignored(path), f"{path} is copied by the Dockerfile but ignored"


@pytest.mark.parametrize(
    "path",
    [".venv/bin/python", ".git/HEAD", "runs/mnist/last.pt", "tests/conftest.py",
     "app/__pycache__/main.cpython-311.pyc", "models/other/model.pt", ".pytest_cache/v"],
)  # fmt: skip
def test_dockerignore_keeps_the_context_small(path: str) -> None:
    assert _ignored(path)


def test_torch_version_matches_the_makefile_pin(dockerfile: Dockerfile) -> None:
    pin = re.search(r"^TORCH \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert pin, "the Makefile pins torch as `TORCH ?= torch==X.Y.Z`"
    assert dockerfile.stage("deps").args()["TORCH_VERSION"] == pin.group(1)
