"""A real `uvicorn app.main:app` process on loopback, for the tests whose behaviour lives in
the server: signals, sockets, connection limits, the event loop under hostile input.

The server picks its own port and runs the tiny test artifact; a launcher can slow every
model call by a fixed sleep (`TEST_MODEL_DELAY_S`, patched in the child only) so that
bursts stay in flight long enough to observe. Every wait is bounded; `stop` kills.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from app.config import REPO_ROOT

LAUNCHER = """
import os, sys, time
import uvicorn
from app.runtime import ModelRuntime

delay, run = float(os.environ.get("TEST_MODEL_DELAY_S", "0")), ModelRuntime.run

def slow_run(self, op, batch):
    time.sleep(delay)
    return run(self, op, batch)

if delay:
    ModelRuntime.run = slow_run
sys.argv = ["uvicorn", "app.main:app", *sys.argv[1:]]
uvicorn.main()
"""
LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stderr(self) -> str:
        return self.log.read_text()


def start_server(
    artifact_dir: Path | None,
    log: Path,
    env: dict[str, str],
    drain_s: int = 10,
    args: tuple[str, ...] = (),
) -> Server:
    """`uvicorn app.main:app` on 127.0.0.1 at a port of its choosing, with the container's
    options (`app.connections` included) and `args` added; `artifact_dir` None serves what the
    settings in `env` name."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    command = [
        sys.executable,
        "-c",
        LAUNCHER,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-access-log",
        "--timeout-graceful-shutdown",
        str(drain_s),
        "--http",
        "app.connections:Protocol",
        *args,
    ]
    environment = {
        **base,
        **({} if artifact_dir is None else {"VAE_MODEL_DIR": str(artifact_dir)}),
        "VAE_DEVICE": "cpu",
        "VAE_DRAIN_TIMEOUT_S": str(drain_s),
        **env,
    }
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=sink
        )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        if match := LISTENING.search(log.read_text()):
            return Server(process, f"http://127.0.0.1:{match.group(1)}", log)
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"uvicorn did not start:\n{log.read_text()}")


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.kill()
    server.process.wait(timeout=10)
