"""`python -m bench.invariance`: what batch invariance costs (`VAE_BATCH_INVARIANT`).

Two services side by side on loopback serving the shipped MNIST model, one padding every
model call to the row counts that keep rows independent (the default) and one not,
measured in interleaved rounds (A B, A B, ...) with `bench.protocols`' closed loop: one-image
`/encode`, `/anomaly` and `/sample` at concurrency 64 (full batches, the issue's measure)
and at concurrency 1 (every batch a lone row, padded to the quantum: the worst case).
Medians go to stdout as a markdown table and all rounds to `--out`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import orjson

from bench import fixtures
from bench.payloads import Workload, body
from bench.protocols import Case, machine, plain_copy, rounds, table
from bench.server import REPO_ROOT, Server, ServerSpec

ENDPOINTS = ("encode", "anomaly", "sample")


def content(endpoint: str, metadata: Any) -> bytes:
    if endpoint == "sample":
        return orjson.dumps({"n": 1, "seed": 7, "format": "png"})
    return body(Workload(endpoint, 1), metadata)


def compare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    mnist = fixtures.resolve("mnist", args.cache)
    artifact = plain_copy(mnist.directory, work / "mnist")
    env = {"VAE_MODEL_DIR": str(artifact), "VAE_DEVICE": "cpu", "VAE_TORCH_THREADS": "1"}
    specs = {
        setting: ServerSpec(setting, "app.main:app", {**env, "VAE_BATCH_INVARIANT": setting})
        for setting in ("true", "false")
    }
    results: dict[str, Any] = {}
    with (
        Server(specs["true"], work / "on.log") as on,
        Server(specs["false"], work / "off.log") as off,
    ):
        for concurrency in args.concurrency:
            for endpoint in ENDPOINTS:
                cases: dict[str, Case] = {}
                for label, server in (("invariant", on), ("as batched", off)):
                    target = (server.url(f"/{endpoint}"), content(endpoint, mnist.metadata))
                    cases[f"/{endpoint} x1, c={concurrency}, {label}"] = (server, target)
                results.update(rounds(cases, concurrency, args.seconds, args.rounds))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.invariance", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 1])
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "docs" / "bench" / "invariance.json"
    )
    parser.add_argument("--cache", type=Path, default=fixtures.default_cache())
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        results = compare(args, Path(work))
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "rounds": results}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
