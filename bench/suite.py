"""One suite: one model on one device, every configuration, measured back to back.

Configurations (`Options.configs`)::

    ceiling     the TorchScript artifact called in process at the service's batch sizes
    trivial     the service with the trivial model of the same shape: r, its own cost
    batched     the service as configured (dynamic batching)
    unbatched   the same service with VAE_MAX_BATCH_SIZE=1
    naive       bench/naive_app.py: the model called inside each request, one at a time

Each service is started fresh; then, in order: the first requests after ready (c=1),
the /encode x1 curve over `curve` concurrencies, every endpoint at `concurrency` with
one and `multi` items, open-loop /encode x1 runs at `rates`, the same c=1 requests
again (the steady state the first ones compare with), and for `batched` a soak of mixed
requests sampling RSS. Closed-loop runs use wrk when it is installed; the rest use aiohttp.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.buckets import Buckets
from bench import ceiling
from bench.fixtures import Shape, Subject, trivial_for
from bench.payloads import ENDPOINTS, Workload
from bench.results import RunResult
from bench.runs import Runner
from bench.server import Server, ServerSpec

SERVICE = "app.main:app"
NAIVE = "bench.naive_app:from_environment"
CONFIGS = ("ceiling", "trivial", "batched", "unbatched", "naive")
ENCODE_ONE = Workload("encode", 1)
OPEN_LOADS = (0.25, 0.75)  # open-loop rates, as shares of the batched c=64 throughput


@dataclass(frozen=True)
class Options:
    configs: tuple[str, ...] = CONFIGS
    endpoints: tuple[str, ...] = ENDPOINTS
    concurrency: int = 64
    curve: tuple[int, ...] = (1, 8, 64)  # /encode x1 concurrencies
    multi: int = 8  # items in a multi-image request (0: single only)
    seconds: float = 2.0  # per run
    max_requests: int = 20_000  # per run
    rates: tuple[float, ...] | None = None  # open loop req/s; None: OPEN_LOADS of batched
    first_requests: int = 100
    soak_requests: int = 2_000
    soak_seconds: float = 15.0
    torch_threads: int = 1
    max_batch_size: int = 64
    service_env: dict[str, str] = field(default_factory=dict)  # extra VAE_* for every service
    use_wrk: bool = True
    wrk_threads: int = 1

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The service's buckets with default warm-up sizes: powers of two and the max."""
        return Buckets.up_to(self.max_batch_size).sizes

    @property
    def item_counts(self) -> list[int]:
        """Items per request of every workload: one, and `multi` unless it is 0."""
        return sorted({1, self.multi} - {0})


class Suite:
    def __init__(self, subject: Subject, device: str, options: Options, cache: Path) -> None:
        self.subject, self.device, self.options, self.cache = subject, device, options, cache
        self.logs = cache / "logs" / f"{device}-{subject.name}"
        self.rates = options.rates

    def run(self) -> dict[str, Any]:
        opts = self.options
        result: dict[str, Any] = {"device": self.device, "model": self.describe(), "services": {}}
        if "ceiling" in opts.configs:
            print(f"  ceiling: in process at batch sizes {list(opts.batch_sizes)}", flush=True)
            budget = min(0.3, opts.seconds / 8)  # per batch size and op
            result["ceiling"] = ceiling.measure(self.subject, self.device, opts.batch_sizes, budget)
        for config in ("trivial", "batched", "unbatched", "naive"):
            if config in opts.configs:
                result["services"][config] = self.service(config)
        return result

    def describe(self) -> dict[str, Any]:
        meta = self.subject.metadata
        return {
            "name": self.subject.name,
            "source": self.subject.source,
            "directory": str(self.subject.directory),
            "architecture": meta.architecture,
            "image_shape": list(meta.image_shape),
            "latent_dim": meta.latent_dim,
            "calibration_score": f"{meta.calibration.score}/{meta.calibration.score_samples}",
        }

    def spec(self, config: str) -> ServerSpec:
        opts = self.options
        directory = self.subject.directory
        if config == "trivial":
            directory = trivial_for(Shape.of(self.subject.metadata), self.cache).directory
        env = {
            "VAE_MODEL_DIR": str(directory),
            "VAE_DEVICE": self.device,
            "VAE_TORCH_THREADS": str(opts.torch_threads),
            "VAE_MAX_BATCH_SIZE": "1" if config == "unbatched" else str(opts.max_batch_size),
            **opts.service_env,
        }
        if config == "naive":
            env["VAE_WARMUP_BATCH_SIZES"] = ",".join(str(n) for n in opts.item_counts)
            return ServerSpec(config, NAIVE, env, factory=True)
        return ServerSpec(config, SERVICE, env)

    def workloads(self, config: str) -> list[tuple[Workload, int]]:
        """(workload, concurrency) of every closed-loop run of `config`, in order."""
        opts = self.options
        curve = sorted({*opts.curve, opts.concurrency})
        if config == "trivial":
            return [(ENCODE_ONE, c) for c in sorted({1, opts.concurrency})]
        runs = [(ENCODE_ONE, c) for c in curve]
        for endpoint in opts.endpoints:
            for items in opts.item_counts:
                if (endpoint, items) != ("encode", 1):
                    runs.append((Workload(endpoint, items), opts.concurrency))
        return runs

    def service(self, config: str) -> dict[str, Any]:
        opts = self.options
        print(f"  {config}: starting", flush=True)
        with Server(self.spec(config), self.logs / f"{config}.log") as server:
            runner = Runner(
                server, self.subject.metadata, seconds=opts.seconds,
                max_requests=opts.max_requests, use_wrk=opts.use_wrk, wrk_threads=opts.wrk_threads,
            )  # fmt: skip
            out: dict[str, Any] = {"startup_s": server.startup_s, "rss_ready_mb": server.rss_mb()}
            out["first_requests"] = runner.sequential(ENCODE_ONE, opts.first_requests)
            runs = [runner.closed(workload, c) for workload, c in self.workloads(config)]
            if config == "batched" and self.rates is None:
                self.rates = _open_rates(runs, opts.concurrency)
            if config != "trivial":
                runs += [runner.open(ENCODE_ONE, rate) for rate in self.rates or ()]
            out["runs"] = [dataclasses.asdict(run) for run in runs]
            out["steady_requests"] = runner.sequential(ENCODE_ONE, opts.first_requests)
            if config == "batched" and opts.soak_requests:
                mixed = [
                    Workload(endpoint, items)
                    for endpoint in opts.endpoints
                    for items in opts.item_counts
                ]
                out["soak"] = runner.soak(mixed, opts.soak_requests, opts.soak_seconds)
            out["rss_end_mb"] = server.rss_mb()
        return out


def _open_rates(runs: list[RunResult], concurrency: int) -> tuple[float, ...]:
    """The open-loop rates: `OPEN_LOADS` of what the batched service served at
    `concurrency`, the same for every configuration: a light load, and one that the
    batched service carries and the others may not."""
    served = [
        r.throughput
        for r in runs
        if r.workload == ENCODE_ONE.label and r.concurrency == concurrency
    ]
    return tuple(round(max(served[0] * load, 1.0), 1) for load in OPEN_LOADS) if served else ()
