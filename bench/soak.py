"""`python -m bench.soak`: normal and hostile traffic together, for minutes (issue 12).

One real service, started as the container starts it (`--http app.connections:Protocol`,
`--timeout-keep-alive 5`, `--limit-concurrency 1000`, the default limits and timeouts)
with the shipped `models/mnist`, on loopback. For `--minutes`:

- normal traffic: `/encode` x1 and x8, `/anomaly` x1, `/sample` x1 in a closed loop at
  `--concurrency` (8) on keep-alive connections (`bench.load`);
- hostile traffic, every kind of `bench.hostile` in a loop, several copies at once: slow
  heads, idle connections, slow bodies, huge headers, pixel bombs, oversized bodies,
  hang-ups mid-body, and every `--flood-every` seconds a flood of connections up to the
  cap and 16 past it.

Recorded: every outcome counted per traffic class, the normal requests' p50 and p99 per
minute, the server's RSS and open descriptors every 5 s (from /proc), the connections it
closed (its `/metrics`), tracebacks in its log, and 5xx answers: a 503
`too_many_connections` to a connection past the cap is the limit at work, any other 5xx
is a failure. The raw figures go to `--out` (JSON) and a Markdown summary to stdout.
Figures: docs/benchmarks.md, "The hostile soak".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from app.artifact import ModelMetadata
from app.config import DEFAULT_MODEL_DIR, Settings
from bench import hostile, load
from bench.cli import describe_machine
from bench.payloads import Workload, body
from bench.report import write_json
from bench.results import Latency
from bench.server import REPO_ROOT, Server, ServerSpec

NORMAL = (
    Workload("encode", 1),
    Workload("encode", 8),
    Workload("anomaly", 1),
    Workload("sample", 1),
)
SAMPLE_EVERY_S = 5.0
FLOOD_PAST_CAP = 16
SETTLE_S = 3.0  # after the keep-alive timeout: app.connections' LINGER_S, and a margin
REFUSED = "503 too_many_connections"  # the connection cap's answer: expected in a flood
_COUNTER = re.compile(r"^(vae_\w+_total)\{(.*)\} (\S+)$")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long the traffic runs")
    p.add_argument("--concurrency", type=int, default=8, help="of the normal traffic")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="an artifact folder")
    p.add_argument("--keep-alive", type=int, default=5, help="uvicorn --timeout-keep-alive")
    p.add_argument("--max-connections", type=int, default=1000, help="--limit-concurrency")
    p.add_argument("--flood-every", type=float, default=30.0, help="seconds between floods")
    p.add_argument(
        "--env", action="append", default=[], metavar="VAE_X=value", help="extra service setting"
    )
    p.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "bench" / "soak.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    report = soak(args)
    report["command"] = "python -m bench.soak " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(report, args.out)
    print(markdown(report))
    print(f"wrote {args.out}")
    return 0 if report["five_xx"]["failures"] == 0 else 1


def soak(args: argparse.Namespace) -> dict[str, Any]:
    env = {"VAE_MODEL_DIR": str(args.model), "VAE_DEVICE": "cpu", "VAE_TORCH_THREADS": "1"}
    env |= dict(item.split("=", 1) for item in args.env)
    settings = Settings.model_validate({k.removeprefix("VAE_").lower(): v for k, v in env.items()})
    options = (
        *("--http", "app.connections:Protocol"),
        *("--timeout-keep-alive", str(args.keep_alive)),
        *("--limit-concurrency", str(args.max_connections)),
    )
    metadata = ModelMetadata.model_validate_json((args.model / "model.json").read_text())
    load_before = _load_average()
    with (
        tempfile.TemporaryDirectory() as scratch,
        Server(
            ServerSpec("soak", "app.main:app", env, args=options), Path(scratch) / "server.log"
        ) as server,
    ):
        before = _counters(server)
        baseline = {"rss_mb": server.rss_mb(), "open_files": server.open_files()}
        traffic = Traffic(server, metadata, args, settings)
        load.run(traffic.run(args.minutes * 60))
        server.settle()
        time.sleep(args.keep_alive + SETTLE_S)  # the clients cut off at the end are closed
        settled = {"rss_mb": server.rss_mb(), "open_files": server.open_files()}
        after = _counters(server)
        tracebacks = server.log.read_text(errors="replace").count("Traceback")
    report = traffic.report()
    report["machine"] = describe_machine(load_before[0])
    report["load_average"] = {"before": load_before, "after": _load_average()}
    report["server"] |= {"before": baseline, "settled": settled}
    report["server"]["counters"] = _delta(before, after)
    report["server"]["tracebacks"] = tracebacks
    report["options"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return report


class Traffic:
    """Normal and hostile clients against `server`, and the server sampled as they run."""

    def __init__(
        self, server: Server, metadata: ModelMetadata, args: argparse.Namespace, settings: Settings
    ) -> None:
        self.server, self.args = server, args
        self.targets: list[load.Target] = [
            (server.url(w.path), body(w, metadata, seed=i)) for i, w in enumerate(NORMAL)
        ]
        self.kinds = hostile.kinds(
            settings.head_timeout_s, settings.body_timeout_s, args.keep_alive
        )
        self.outcomes: dict[str, Counter[str]] = {k.name: Counter() for k in self.kinds}
        self.outcomes["flood"] = Counter()
        self.samples: list[dict[str, Any]] = []
        self.normal = load.Samples()
        self.started = 0.0

    async def run(self, seconds: float) -> None:
        self.started = time.perf_counter()
        until = self.started + seconds
        background = [
            asyncio.create_task(self._repeat(kind, until))
            for kind in self.kinds
            for _ in range(kind.parallel)
        ]
        background += [
            asyncio.create_task(self._floods(until)),
            asyncio.create_task(self._sample()),
        ]
        try:
            self.normal = await load.closed_loop(
                self.targets, concurrency=self.args.concurrency, max_requests=10**9, seconds=seconds
            )
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        self._record_sample()

    async def _repeat(self, kind: hostile.Kind, until: float) -> None:
        while time.perf_counter() < until:
            outcome = await kind.play(self.server.port)
            self.outcomes[kind.name][outcome] += 1
            await asyncio.sleep(kind.pause_s)

    async def _floods(self, until: float) -> None:
        period = min(self.args.flood_every, (until - self.started) / 3)
        await asyncio.sleep(period / 2)
        while time.perf_counter() < until:
            count = self.args.max_connections + FLOOD_PAST_CAP
            self.outcomes["flood"].update(await hostile.flood(self.server.port, count))
            await asyncio.sleep(period)

    async def _sample(self) -> None:
        while True:
            self._record_sample()
            await asyncio.sleep(SAMPLE_EVERY_S)

    def _record_sample(self) -> None:
        self.samples.append(
            {
                "s": round(time.perf_counter() - self.started, 1),
                "rss_mb": self.server.rss_mb(),
                "open_files": self.server.open_files(),
            }
        )

    def report(self) -> dict[str, Any]:
        normal = self.normal
        normal_5xx = sum(n for status, n in normal.statuses.items() if status.startswith("5"))
        hostile_5xx = sum(
            n
            for counts in self.outcomes.values()
            for outcome, n in counts.items()
            if outcome.startswith("5") and outcome != REFUSED
        )
        rss = [s["rss_mb"] for s in self.samples if s["rss_mb"] is not None]
        return {
            "seconds": round(normal.seconds, 1),
            "normal": {
                "concurrency": self.args.concurrency,
                "workloads": [w.label for w in NORMAL],
                "requests": normal.answered,
                "statuses": dict(normal.statuses),
                "errors": dict(normal.errors),
                "latency_ms": vars(Latency.of(normal.latencies)),
                "per_minute": self._per_minute(),
            },
            "hostile": {name: dict(c) for name, c in self.outcomes.items()},
            "server": {
                "rss_mb": {"start": rss[0], "max": max(rss), "end": rss[-1]} if rss else {},
                "samples": self.samples,
            },
            "five_xx": {
                "normal": normal_5xx,
                "hostile": hostile_5xx,
                "failures": normal_5xx + hostile_5xx,
                "refused_connections": sum(c[REFUSED] for c in self.outcomes.values()),
            },
        }

    def _per_minute(self) -> list[dict[str, Any]]:
        minutes: dict[int, list[float]] = {}
        for latency, at in zip(self.normal.latencies, self.normal.answered_at, strict=True):
            minutes.setdefault(int((at - self.started) // 60), []).append(latency)
        return [
            {"minute": m + 1, "requests": len(ls), **_percentiles(ls)}
            for m, ls in sorted(minutes.items())
        ]


def _percentiles(latencies: list[float]) -> dict[str, float | None]:
    latency = Latency.of(latencies)
    return {"p50_ms": latency.p50, "p99_ms": latency.p99}


def _counters(server: Server) -> dict[str, float]:
    """Every `vae_*_total{...}` series of the server's /metrics."""
    with contextlib.suppress(httpx.TransportError):
        text = httpx.get(server.url("/metrics"), trust_env=False, timeout=30).text
        return {
            f"{m[1]}{{{m[2]}}}": float(m[3]) for m in map(_COUNTER.match, text.splitlines()) if m
        }
    return {}


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, dict[str, int]]:
    """Counters that moved, grouped: connections closed by reason, requests by status."""
    grouped: dict[str, Counter[str]] = {"connections_closed": Counter(), "requests": Counter()}
    groups: dict[str, tuple[str, Callable[[str], str]]] = {
        "vae_connections_closed_total": (
            "connections_closed",
            lambda labels: _label(labels, "reason"),
        ),
        "vae_requests_total": (
            "requests",
            lambda labels: f"{_label(labels, 'endpoint')} {_label(labels, 'status')}",
        ),
    }
    for key, value in after.items():
        name, labels = key.split("{", 1)
        if name in groups and (moved := value - before.get(key, 0.0)):
            group, label = groups[name]
            grouped[group][label(labels)] += int(moved)
    return {group: dict(counts) for group, counts in grouped.items()}


def _label(labels: str, name: str) -> str:
    match = re.search(rf'{name}="([^"]*)"', labels)
    return match.group(1) if match else "?"


def _load_average() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def markdown(report: dict[str, Any]) -> str:
    normal, server = report["normal"], report["server"]
    lines = [
        f"Soak of {report['seconds']:g} s: {normal['requests']} normal requests at concurrency "
        f"{normal['concurrency']} ({', '.join(normal['workloads'])}); load average (1, 5, 15 "
        f"min) before {report['load_average']['before']}, after {report['load_average']['after']}.",
        "",
        "| traffic | outcomes |",
        "|---|---|",
        f"| normal | {_outcomes(normal['statuses'] | normal['errors'])} |",
        *(f"| {name} | {_outcomes(c)} |" for name, c in report["hostile"].items()),
        "",
        "| minute | normal requests | p50 ms | p99 ms |",
        "|---:|---:|---:|---:|",
        *(
            f"| {m['minute']} | {m['requests']} | {m['p50_ms']} | {m['p99_ms']} |"
            for m in normal["per_minute"]
        ),
        "",
        f"Server RSS MB start / max / end: {server['rss_mb'].get('start')} / "
        f"{server['rss_mb'].get('max')} / {server['rss_mb'].get('end')} "
        f"({server['settled']['rss_mb']} settled); open descriptors "
        f"{server['before']['open_files']} before, "
        f"{server['settled']['open_files']} settled; tracebacks in its log: "
        f"{server['tracebacks']}.",
        f"Connections the server closed: {_outcomes(server['counters']['connections_closed'])}.",
        f"5xx other than the connection cap's: {report['five_xx']['failures']}; connections "
        f"refused at the cap: {report['five_xx']['refused_connections']}.",
    ]
    return "\n".join(lines)


def _outcomes(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "-"


if __name__ == "__main__":
    sys.exit(main())
