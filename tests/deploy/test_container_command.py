"""The container's start command, run here: the image's CMD and ENV, the repository as /srv.

No Docker engine exists here, so the test plays the image: it reads CMD, HEALTHCHECK and the
runtime stage's ENV from the Dockerfile, maps the image's paths onto this checkout (WORKDIR
is laid out like the repository root; /opt/venv is this interpreter's environment), and runs
the command as it stands. HOST and PORT are overridden as `docker run -e` would, to stay on
loopback and on a free port; VAE_TORCH_THREADS=1 spares the two-core CI machine.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.deploy.dockerfile import ROOT, Dockerfile

pytestmark = pytest.mark.slow

IMAGE_VENV_BIN = "/opt/venv/bin"
START_TIMEOUT_S = 90.0


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    env: dict[str, str]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def container_env(dockerfile: Dockerfile, port: int) -> dict[str, str]:
    """The runtime stage's ENV with the image's paths mapped onto this checkout."""
    workdir = dockerfile.runtime.last("WORKDIR").rstrip("/")
    venv_bin = str(Path(sys.executable).parent)
    env = {key: value for key, value in os.environ.items() if not key.startswith("VAE_")}
    for key, value in dockerfile.runtime.env().items():
        value = value.replace(IMAGE_VENV_BIN, venv_bin)
        env[key] = str(ROOT) + value[len(workdir) :] if value.startswith(workdir + "/") else value
    env.update(HOST="127.0.0.1", PORT=str(port), VAE_TORCH_THREADS="1")
    return env


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(
                f"the start command exited ({server.process.returncode}):\n{server.output()}"
            )
        try:
            if httpx.get(f"{server.url}/ready", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"not ready after {START_TIMEOUT_S:.0f}s:\n{server.output()}")


@pytest.fixture(scope="module")
def server(dockerfile: Dockerfile, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if importlib.util.find_spec("app.main") is None:
        pytest.skip("app.main does not exist yet")
    if not (ROOT / "models" / "mnist" / "model.pt").is_file():
        pytest.skip("models/mnist/model.pt does not exist yet")
    command = [*dockerfile.runtime.all("ENTRYPOINT"), *dockerfile.runtime.exec_form("CMD")]
    port = free_port()
    env = container_env(dockerfile, port)
    log = tmp_path_factory.mktemp("container") / "output.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = Server(process, f"http://127.0.0.1:{port}", env, log)
    try:
        wait_ready(running)
        yield running
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # its own group: workers go too
            process.wait(timeout=10)


def test_start_command_serves_ready_and_health(server: Server) -> None:
    assert httpx.get(f"{server.url}/ready", timeout=5.0).status_code == 200
    assert httpx.get(f"{server.url}/health", timeout=5.0).status_code == 200


def test_healthcheck_command_passes_against_it(server: Server, dockerfile: Dockerfile) -> None:
    command = dockerfile.runtime.exec_form("HEALTHCHECK")
    result = subprocess.run(command, env=server.env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_sigterm_drains_and_exits_cleanly(server: Server) -> None:
    drain = float(server.env["VAE_DRAIN_TIMEOUT_S"])
    server.process.send_signal(signal.SIGTERM)  # `exec` made uvicorn the process itself
    try:
        code = server.process.wait(timeout=2 * drain + 10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {2 * drain + 10:.0f}s after SIGTERM:\n{server.output()}")
    # uvicorn re-raises the signal once its shutdown is done, so the status says SIGTERM
    assert code in (0, -signal.SIGTERM), server.output()
    assert "Application shutdown complete" in server.output()
