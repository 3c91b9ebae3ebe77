"""`python -m bench.protocols`: the model repository's per-request cost, and v2 against JSON.

Two comparisons, each between services that run side by side on loopback, measured
in interleaved rounds (A B C, A B C, ...) so that a busy machine slows every one alike:

    layer   /encode x1 at concurrency 64 on the trivial model: this checkout at /encode
            and at /models/{name}/encode, against a checkout from before the repository
            (`--before`, e.g. `git worktree add /tmp/before 538888b`)
    v2      8-image requests on the MNIST model: native JSON (base64 PNG) /encode and
            /anomaly, against the same through the Open Inference Protocol with binary
            tensors (UINT8 [8,28,28,1]) and with JSON tensors

Every service serves one artifact copied without `model_sha256`, which a checkout from
before the checksum refuses. Besides throughput and latency each run records the
service's CPU time per request (from /proc), which a busy machine disturbs far less.
Medians of the rounds go to stdout as a markdown table and all rounds to `--out`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from PIL import Image

from bench import fixtures, load
from bench.payloads import Workload, body
from bench.server import REPO_ROOT, Server, ServerSpec

Target = load.Target


def plain_copy(directory: Path, into: Path) -> Path:
    """The artifact without `model_sha256`, readable by a checkout from before it."""
    shutil.copytree(directory, into, dirs_exist_ok=True)
    metadata = json.loads((into / "model.json").read_text())
    metadata.pop("model_sha256", None)
    (into / "model.json").write_text(json.dumps(metadata))
    return into


def v2_binary(pixels: np.ndarray) -> tuple[bytes, dict[str, str]]:
    tensor = {
        "name": "images",
        "datatype": "UINT8",
        "shape": list(pixels.shape),
        "parameters": {"binary_data_size": pixels.nbytes},
    }
    header = orjson.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}})
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
    return header + pixels.tobytes(), headers


def v2_json(pixels: np.ndarray) -> tuple[bytes, dict[str, str]]:
    tensor = {
        "name": "images",
        "datatype": "UINT8",
        "shape": list(pixels.shape),
        "data": pixels.reshape(-1).tolist(),
    }
    return orjson.dumps({"inputs": [tensor]}), {"content-type": "application/json"}


def pixels_of(content: bytes) -> np.ndarray:
    """The UINT8 [N, H, W, C] tensor of a native JSON body's base64 PNGs."""
    import base64

    images = orjson.loads(content)["images"]
    arrays = [np.array(Image.open(io.BytesIO(base64.b64decode(b)))) for b in images]
    return np.stack([a if a.ndim == 3 else a[..., None] for a in arrays])


Case = tuple[Server, Target]  # the service that answers, and what is sent to it


def measure(case: Case, concurrency: int, seconds: float) -> dict[str, float]:
    """Throughput and latency, and the service's CPU time per request: on a shared machine
    throughput follows whatever else runs, the CPU a request costs much less so."""
    server, target = case
    cpu_before = server.cpu_seconds() or 0.0
    samples = load.run(
        load.closed_loop([target], concurrency=concurrency, max_requests=50_000, seconds=seconds)
    )
    cpu = (server.cpu_seconds() or 0.0) - cpu_before
    latencies = sorted(samples.latencies)
    ok = samples.statuses.get("200", 0)
    assert ok == samples.answered, f"not every answer was 200: {dict(samples.statuses)}"
    return {
        "throughput": round(samples.answered / samples.seconds, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 2),
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 2),
        "server_cpu_ms_per_request": round(1000 * cpu / max(samples.answered, 1), 3),
    }


def rounds(
    cases: dict[str, Case], concurrency: int, seconds: float, count: int
) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {label: [] for label in cases}
    for round_number in range(count):
        for label, target in cases.items():
            results[label].append(measure(target, concurrency, seconds))
            print(f"  round {round_number + 1} {label}: {results[label][-1]}", flush=True)
    return results


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def table(results: dict[str, list[dict[str, float]]]) -> str:
    lines = [
        "| case | server CPU ms / request | req/s | p50 ms | p99 ms | CPU ms per round |",
        "|---|---|---|---|---|---|",
    ]
    for label, runs in results.items():
        each = ", ".join(f"{run['server_cpu_ms_per_request']:.2f}" for run in runs)
        lines.append(
            f"| {label} | {median(runs, 'server_cpu_ms_per_request'):.2f} | "
            f"{median(runs, 'throughput'):.0f} | {median(runs, 'p50_ms'):.1f} | "
            f"{median(runs, 'p99_ms'):.1f} | {each} |"
        )
    return "\n".join(lines)


def layer(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    trivial = fixtures.trivial_for(fixtures.Shape.of(fixtures.MNIST_STANDIN), args.cache)
    artifact = plain_copy(trivial.directory, work / "trivial")
    env = {"VAE_MODEL_DIR": str(artifact), "VAE_DEVICE": "cpu", "VAE_TORCH_THREADS": "1"}
    content = body(Workload("encode", 1), trivial.metadata)
    before = ServerSpec("before", "app.main:app", env, cwd=args.before)
    after = ServerSpec("after", "app.main:app", env)
    with Server(before, work / "before.log") as old, Server(after, work / "after.log") as new:
        cases: dict[str, Case] = {
            "before the repository: /encode": (old, (old.url("/encode"), content)),
            "repository: /encode": (new, (new.url("/encode"), content)),
            "repository: /models/trivial/encode": (
                new,
                (new.url("/models/trivial/encode"), content),
            ),
        }
        return rounds(cases, args.concurrency, args.seconds, args.rounds)


def protocols(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    mnist = fixtures.resolve("mnist", args.cache)
    artifact = plain_copy(mnist.directory, work / "mnist")
    env = {"VAE_MODEL_DIR": str(artifact), "VAE_DEVICE": "cpu", "VAE_TORCH_THREADS": "1"}
    cases: dict[str, Case] = {}
    with Server(ServerSpec("v2", "app.main:app", env), work / "v2.log") as server:
        for endpoint in ("encode", "anomaly"):
            content = body(Workload(endpoint, 8), mnist.metadata)
            pixels = pixels_of(content)
            url = server.url(f"/v2/models/mnist.{endpoint}/infer")
            binary, binary_headers = v2_binary(pixels)
            tensors, json_headers = v2_json(pixels)
            cases[f"native JSON /{endpoint} x8"] = (server, (server.url(f"/{endpoint}"), content))
            cases[f"v2 binary mnist.{endpoint} x8"] = (server, (url, binary, binary_headers))
            cases[f"v2 JSON mnist.{endpoint} x8"] = (server, (url, tensors, json_headers))
        return rounds(cases, args.v2_concurrency, args.seconds, args.rounds)


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    names = (
        re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        if cpuinfo.exists()
        else []
    )
    return {
        "cpu": names[0] if names else platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "niceness": os.nice(0),
        "load_before": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.protocols", description=__doc__)
    parser.add_argument("--before", type=Path, help="a checkout from before the repository")
    parser.add_argument("--seconds", type=float, default=3.0, help="per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64, help="of the layer runs")
    parser.add_argument("--v2-concurrency", type=int, default=16, help="of the v2 runs")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "bench" / "protocols.json")
    parser.add_argument("--cache", type=Path, default=fixtures.default_cache())
    parser.add_argument("--no-v2", action="store_true", help="only the layer comparison")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "command": " ".join(["python -m bench.protocols", *(argv or sys.argv[1:])]),
        "machine": machine(),
    }
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        if args.before is not None:
            print("layer: the repository's per-request cost", flush=True)
            report["layer"] = layer(args, work)
            print(table(report["layer"]))
        if not args.no_v2:
            print("v2: binary and JSON tensors against native JSON, 8 images", flush=True)
            report["v2"] = protocols(args, work)
            print(table(report["v2"]))
    report["machine"]["load_after"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
