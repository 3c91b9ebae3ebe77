"""The factory and the lifespan: nothing loaded at import, and start-up failures in one line."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from asgi_lifespan import LifespanManager

from app.config import REPO_ROOT
from app.main import _app_from_environment, create_app
from app.runtime import StartupError

pytestmark = pytest.mark.anyio


def test_the_module_app_is_built_from_the_environment_without_loading(monkeypatch):
    monkeypatch.setenv("VAE_MODEL_DIR", "/nonexistent")  # loading it would fail
    app = _app_from_environment()
    paths = set(app.openapi()["paths"])
    assert {
        "/encode",
        "/decode",
        "/sample",
        "/interpolate",
        "/anomaly",
        "/model",
        "/health",
        "/ready",
        "/metrics",
    } <= paths


def test_a_bad_setting_exits_with_one_line(monkeypatch, capsys):
    monkeypatch.setenv("VAE_MAX_BATCH_SIZE", "0")
    with pytest.raises(SystemExit) as caught:
        _app_from_environment()
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("invalid configuration: VAE_MAX_BATCH_SIZE:") and err.count("\n") == 1


async def test_what_start_up_loaded_is_frozen_out_of_the_collector(make_settings):
    # a full collection walking torch and the model cost ~45 ms and 15% of the throughput
    gc.unfreeze()
    async with LifespanManager(create_app(make_settings())):
        assert gc.get_freeze_count() > 0


async def test_lifespan_fails_with_a_startup_error(make_settings, tmp_path):
    app = create_app(make_settings(model_dir=tmp_path))
    with pytest.raises(StartupError, match=r"no model\.json"):
        async with LifespanManager(app):
            pass


def broken_artifacts(artifact_dir: Path, root: Path) -> dict[str, tuple[dict[str, str], str]]:
    """name -> (environment, what the one line must say)."""
    corrupt, incompatible = root / "corrupt", root / "incompatible"
    shutil.copytree(artifact_dir, corrupt)
    (corrupt / "model.pt").write_bytes(b"definitely not a TorchScript archive")
    unchecked = json.loads((corrupt / "model.json").read_text())
    del unchecked["model_sha256"]  # as an exporter without the checksum wrote it
    (corrupt / "model.json").write_text(json.dumps(unchecked))
    shutil.copytree(artifact_dir, incompatible)
    metadata = json.loads((incompatible / "model.json").read_text())
    (incompatible / "model.json").write_text(json.dumps({**metadata, "format_version": 99}))
    return {
        "missing": ({"VAE_MODEL_DIR": str(root / "nowhere")}, "no model.json"),
        "corrupt": ({"VAE_MODEL_DIR": str(corrupt)}, "not a loadable TorchScript file"),
        "incompatible": ({"VAE_MODEL_DIR": str(incompatible)}, "format_version 99"),
    }


@pytest.mark.slow
def test_uvicorn_exits_with_one_clear_line(artifact_dir, tmp_path):
    """A real `uvicorn app.main:app` per broken start-up, run side by side."""
    cases = broken_artifacts(artifact_dir, tmp_path)
    base = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]
    processes = {
        name: subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**base, **env},
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name, (env, _) in cases.items()
    }
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=120)
        expected = cases[name][1]
        assert process.returncode != 0, (name, stderr)
        assert "Traceback" not in stderr, (name, stderr)
        assert len([line for line in stderr.splitlines() if expected in line]) == 1, stderr


async def test_cors_is_off_by_default_and_configurable(serve):
    preflight = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
    async with serve() as client:
        response = await client.options("/encode", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    async with serve(cors_origins="https://ui.example") as client:
        response = await client.options("/encode", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://ui.example"
        simple = await client.get("/health", headers={"Origin": "https://ui.example"})
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
