"""`python -m bench`: build the fixtures, run every suite, write the reports.

The defaults are the full comparison of issue 6 in about five minutes on a 2-core CPU;
see `docs/benchmarks.md` for the method and longer runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from bench import analysis, fixtures, report, wrk
from bench.payloads import ENDPOINTS
from bench.suite import CONFIGS, Options, Suite

REPO_ROOT = Path(__file__).resolve().parents[1]
WITH_WRK = "wrk (closed loop); aiohttp (open loop, one-at-a-time requests, soak)"


def _names(allowed: tuple[str, ...] | None = None):  # type: ignore[no-untyped-def]
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = [n for n in names if allowed is not None and n not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {unknown}; choose from {', '.join(allowed or ())}"
            )
        return names

    return parse


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _rates(text: str) -> tuple[float, ...]:
    """Comma-separated requests per second; 0 (or nothing) runs no open loop."""
    return tuple(rate for part in text.split(",") if part.strip() and (rate := float(part)) > 0)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="The benchmark of issue 6; see docs/benchmarks.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    models = "mnist (models/mnist, or a stand-in), heavy, trivial, or artifact folders"
    p.add_argument("--models", type=_names(), default=("mnist", "heavy"), help=models)
    p.add_argument("--configs", type=_names(CONFIGS), default=CONFIGS, help=", ".join(CONFIGS))
    p.add_argument("--endpoints", type=_names(ENDPOINTS), default=ENDPOINTS, help="to load")
    p.add_argument("--devices", default="auto", help="auto (cpu, and cuda when present) or a list")
    p.add_argument("--seconds", type=float, default=2.0, help="per run")
    p.add_argument("--requests", type=int, default=20_000, help="per run, at most")
    p.add_argument("--concurrency", type=int, default=64, help="of every endpoint's runs")
    p.add_argument("--curve", type=_ints, default=(1, 8, 64), help="/encode x1 concurrencies")
    p.add_argument("--multi", type=int, default=8, help="items per multi-image request; 0: none")
    rate = (
        "open-loop /encode x1 rates, req/s, comma-separated; default: a quarter and three "
        "quarters of what the batched service served at --concurrency; 0: none"
    )
    p.add_argument("--rate", type=_rates, default=None, help=rate)
    p.add_argument("--first-requests", type=int, default=100, help="one at a time after ready")
    p.add_argument("--soak-requests", type=int, default=2_000, help="issue 6 asks for 100000")
    p.add_argument("--soak-seconds", type=float, default=15.0, help="the soak's time bound")
    p.add_argument(
        "--torch-threads", type=int, default=1, help="VAE_TORCH_THREADS and the ceiling's"
    )
    p.add_argument("--max-batch-size", type=int, default=64, help="VAE_MAX_BATCH_SIZE (batching)")
    p.add_argument(
        "--env", action="append", default=[], metavar="VAE_X=value", help="extra service setting"
    )
    closed = "closed-loop generator; auto: wrk when installed"
    p.add_argument("--generator", choices=("auto", "wrk", "aiohttp"), default="auto", help=closed)
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk -t")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "bench", help="output folder")
    p.add_argument(
        "--update-doc", action="store_true", help="write the tables into docs/benchmarks.md"
    )
    p.add_argument("--no-plot", action="store_true", help="skip throughput_p99.png")
    p.add_argument(
        "--cache-dir", type=Path, default=fixtures.default_cache(), help="fixtures, logs"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    use_wrk = _generator(args.generator)
    options = _options(args, use_wrk)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)  # the ceiling runs in this process
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "generator": WITH_WRK if use_wrk else "aiohttp",
        "options": {k: v for k, v in vars(args).items() if k not in ("out", "cache_dir")},
        "suites": [],
    }
    for device in _devices(args.devices):
        for name in args.models:
            subject = fixtures.resolve(name, args.cache_dir)
            print(f"{device} · {subject.name} ({subject.directory})", flush=True)
            suite = Suite(subject, device, options, args.cache_dir).run()
            suite["derived"] = analysis.derive(suite, args.concurrency)
            suite["targets"] = analysis.targets(subject.name, suite["derived"])
            results["suites"].append(suite)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["machine"] = describe_machine(load_before)
    _write(results, args)
    return 0


def _options(args: argparse.Namespace, use_wrk: bool) -> Options:
    return Options(
        configs=args.configs, endpoints=args.endpoints, concurrency=args.concurrency,
        curve=args.curve, multi=args.multi, seconds=args.seconds, max_requests=args.requests,
        rates=args.rate, first_requests=args.first_requests, soak_requests=args.soak_requests,
        soak_seconds=args.soak_seconds, torch_threads=args.torch_threads,
        max_batch_size=args.max_batch_size, use_wrk=use_wrk, wrk_threads=args.wrk_threads,
        service_env=dict(item.split("=", 1) for item in args.env),
    )  # fmt: skip


def _generator(choice: str) -> bool:
    found = wrk.available()
    if choice == "wrk" and not found:
        raise SystemExit("--generator wrk: wrk is not installed (apt-get install wrk)")
    if choice == "auto" and not found:
        print("wrk not found: closed-loop runs use aiohttp, which takes CPU from the server")
    return choice != "aiohttp" and found is not None


def _devices(text: str) -> list[str]:
    if text == "auto":
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    return [part.strip() for part in text.split(",") if part.strip()]


def describe_machine(load_before: float) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    kb = next(
        (int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal")), 0
    )
    cores = os.cpu_count() or 1
    return {
        "cpu": cpu,
        "cores": cores,
        "memory_gb": round(kb / 1024**2, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "contended": load_before > cores / 2,
    }


def _write(results: dict[str, Any], args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_json(results, args.out / "results.json")
    table = report.markdown(results)
    (args.out / "results.md").write_text(table)
    if not args.no_plot:
        report.plot(results, args.out / "throughput_p99.png")
    if args.update_doc:
        report.update_doc(REPO_ROOT / "docs" / "benchmarks.md", table)
    print(
        f"wrote {args.out}/results.json, results.md"
        + ("" if args.no_plot else ", throughput_p99.png")
    )
