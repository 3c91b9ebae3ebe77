"""A service under test: a real uvicorn process on 127.0.0.1 at a free port.

Started the way the Dockerfile starts it (one worker, no uvicorn access log; the service
writes its own), with a clean `VAE_*` environment plus the configuration's own. Start-up
time runs from spawning the process to the first 200 from `/ready`. RSS is read from
`/proc/<pid>/status` of the uvicorn process itself; batch statistics from `/metrics`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
SERIES = re.compile(r"^(vae_batch_(?:rows|model_seconds)_(?:sum|count|bucket))\{(.*)\} (\S+)$")


class ServerError(RuntimeError):
    """The service exited or did not become ready; the message ends with its log's tail."""


@dataclass(frozen=True)
class ServerSpec:
    label: str  # the configuration's name in the report
    app: str  # uvicorn's import string
    env: dict[str, str]
    factory: bool = False  # `app` is a factory (uvicorn --factory)
    cwd: Path = REPO_ROOT  # the checkout whose `app` it serves (another one: a before/after)
    args: tuple[str, ...] = ()  # more uvicorn options (the container's: bench.soak)


class Server:
    """`with Server(spec, log) as server:` runs the service for the block."""

    def __init__(self, spec: ServerSpec, log: Path, ready_timeout: float = 180.0) -> None:
        self.spec = spec
        self.log = log
        self.ready_timeout = ready_timeout
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.startup_s: float | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
        command = [sys.executable, "-m", "uvicorn", self.spec.app, "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--workers", "1", "--no-access-log"]
        command += ["--timeout-graceful-shutdown", "5", "--log-level", "warning"]
        command += ["--factory"] if self.spec.factory else []
        command += self.spec.args
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            started = time.perf_counter()
            self._process = subprocess.Popen(
                command, cwd=self.spec.cwd, env={**env, **self.spec.env}, stdout=log, stderr=log
            )
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        self.startup_s = round(time.perf_counter() - started, 3)
        return self

    def __exit__(self, *exc: object) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def url(self, path: str) -> str:
        return self.base_url + path

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.ready_timeout
        with httpx.Client(trust_env=False, timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise ServerError(f"{self.spec.label} exited at start-up:\n{self.log_tail()}")
                try:
                    if client.get(self.url("/ready")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.01)
        raise ServerError(
            f"{self.spec.label} not ready in {self.ready_timeout} s:\n{self.log_tail()}"
        )

    def settle(self, timeout: float = 120.0) -> None:
        """Wait for an answer from `/ready`: a server that blocks its event loop (the naive
        app) first finishes the requests a generator left behind when it stopped."""
        with contextlib.suppress(httpx.TransportError):
            httpx.get(self.url("/ready"), trust_env=False, timeout=timeout)

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def rss_mb(self) -> float | None:
        """Resident set size of the uvicorn process now, MiB (None if it is gone)."""
        assert self._process is not None
        try:
            status = Path(f"/proc/{self._process.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        return round(int(match.group(1)) / 1024, 1) if match else None

    def open_files(self) -> int | None:
        """File descriptors the uvicorn process holds now: sockets, spooled uploads, logs."""
        assert self._process is not None
        try:
            return len(os.listdir(f"/proc/{self._process.pid}/fd"))
        except OSError:
            return None

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system, every thread) the uvicorn process has used so far."""
        assert self._process is not None
        try:
            fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def batch_metrics(self) -> dict[str, float]:
        """The batch-size and model-time series of `/metrics` (empty if it has none)."""
        try:
            response = httpx.get(self.url("/metrics"), trust_env=False, timeout=10.0)
        except httpx.TransportError:
            return {}
        if response.status_code != 200:
            return {}
        series = {}
        for line in response.text.splitlines():
            if match := SERIES.match(line):
                series[f"{match.group(1)}{{{match.group(2)}}}"] = float(match.group(3))
        return series


def batch_summary(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Per op, over a run: batches, mean rows per batch, rows per bucket, model ms per row."""
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    ops: dict[str, dict[str, Any]] = defaultdict(lambda: {"buckets": {}})
    for key, value in delta.items():
        name, labels = key.split("{", 1)
        label = re.search(r'op="([^"]+)"', labels)
        if label is None:
            continue
        entry = ops[label.group(1)]
        if name == "vae_batch_rows_bucket":
            bound = re.search(r'le="([^"]+)"', labels)
            entry["buckets"][bound.group(1) if bound else "?"] = value  # cumulative
        else:
            entry[name.removeprefix("vae_batch_")] = value
    summary: dict[str, Any] = {}
    for op, entry in ops.items():
        batches, rows = entry.get("rows_count", 0.0), entry.get("rows_sum", 0.0)
        if batches <= 0:
            continue
        summary[op] = {
            "batches": int(batches),
            "rows": int(rows),
            "rows_per_batch": round(rows / batches, 2),
            "batch_sizes": _bucket_counts(entry["buckets"]),
            "server_model_ms_per_row": round(1000 * entry.get("model_seconds_sum", 0.0) / rows, 4),
        }
    return summary


def _bucket_counts(cumulative: dict[str, float]) -> dict[str, int]:
    """Cumulative `le` counts -> batches per bucket (rows in (previous bound, bound])."""
    bounds = sorted((float(le), n) for le, n in cumulative.items() if le != "+Inf")
    counts, previous = {}, 0.0
    for bound, n in bounds:
        if n > previous:
            counts[str(int(bound))] = int(n - previous)
        previous = n
    return counts


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
