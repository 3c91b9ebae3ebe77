"""The result of a suite: ratios between its configurations, and issue 6's targets.

    r           1 / throughput of the trivial-model service, /encode x1 at concurrency C
    m           the in-process time of the batches the service formed in that run, per row
    efficiency  batched throughput / (1 / (r + m))
    gain        batched / unbatched (or naive) throughput, per workload at concurrency C
    tax         p50 at concurrency 1, batched minus unbatched (ms)

A target is met (True), missed (False) or not measured in this run (None). Issue 6 sets
the framework and start-up targets for the default model; the heavy suite reports them
too (its trivial model decodes 64x64 RGB images) but they do not bind there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.ceiling import model_ms_per_row
from bench.payloads import Workload

ENCODE_ONE = Workload("encode", 1).label  # the workload the targets are read from
HEAVY_GAIN, DEFAULT_GAIN = 4.0, 1.5
DEFAULT_MODEL_ONLY = ("trivial model:", "start-up")  # targets issue 6 sets for the default model
Run = dict[str, Any]
Service = dict[str, Any]


def run_of(service: Service | None, workload: str, concurrency: int) -> Run | None:
    """The closed-loop run of `workload` at `concurrency`, if the service had one."""
    for run in service["runs"] if service else []:
        if (run["workload"], run["concurrency"], run["mode"]) == (workload, concurrency, "closed"):
            return run
    return None


def derive(suite: dict[str, Any], concurrency: int) -> dict[str, Any]:
    services = suite["services"]
    batched, unbatched = services.get("batched"), services.get("unbatched")
    out: dict[str, Any] = {"concurrency": concurrency, **_in_process(suite.get("ceiling"))}
    out.update(_efficiency(suite, concurrency))
    out["gain_vs_unbatched"] = _ratios(batched, unbatched, concurrency)
    out["gain_vs_naive"] = _ratios(batched, services.get("naive"), concurrency)
    out["tax_p50_ms"] = _difference(
        run_of(batched, ENCODE_ONE, 1), run_of(unbatched, ENCODE_ONE, 1)
    )
    if "trivial" in services:
        fast, one = (run_of(services["trivial"], ENCODE_ONE, c) for c in (concurrency, 1))
        out["framework"] = {
            "rps": fast["throughput"] if fast else None,
            "p50_ms_c1": one["latency_ms"]["p50"] if one else None,
        }
    out["startup_s"] = {name: service["startup_s"] for name, service in services.items()}
    out["warmup"] = {name: _warmup(s) for name, s in services.items() if s.get("first_requests")}
    soak = (batched or {}).get("soak")
    if soak and soak["rss_mb"]:
        rss = soak["rss_mb"]
        growth = round(rss["end"] - rss["start"], 1)
        out["soak"] = {
            "requests": soak["requests"],
            "rss_growth_mb": growth,
            "rss_max_mb": rss["max"],
        }
    return out


def _in_process(ceiling: dict[str, Any] | None) -> dict[str, Any]:
    """One-image times of every op, and the encode ceiling at the largest batch."""
    if not ceiling:
        return {}
    single = {op: table["1"]["batch_ms"] for op, table in ceiling.items()}
    single["forward"] = round(single["encode"] + single["decode"], 4)
    largest = max(ceiling["encode"], key=int)
    return {
        "single_image_ms": single,
        "ceiling_encode_rows_per_s": ceiling["encode"][largest]["rows_per_s"],
    }


def _efficiency(suite: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """r, m, the ideal 1 / (r + m) and the batched service's share of it."""
    services, ceiling = suite["services"], suite.get("ceiling") or {}
    fast = run_of(services.get("trivial"), ENCODE_ONE, concurrency)
    ours = run_of(services.get("batched"), ENCODE_ONE, concurrency)
    out: dict[str, Any] = {}
    if fast and fast["throughput"] > 0:
        out["r_ms"] = round(1000 / fast["throughput"], 4)
    if ours and "encode" in ceiling and "encode" in ours["batches"]:
        out["m_ms"] = model_ms_per_row(ceiling["encode"], ours["batches"]["encode"])
        out["rows_per_batch"] = ours["batches"]["encode"]["rows_per_batch"]
    if ours and out.get("r_ms") is not None and out.get("m_ms") is not None:
        ideal = 1000 / (out["r_ms"] + out["m_ms"])
        out["ideal_rps"] = round(ideal, 1)
        out["efficiency"] = round(ours["throughput"] / ideal, 3)
    return out


def _ratios(ours: Service | None, theirs: Service | None, concurrency: int) -> dict[str, float]:
    """Throughput of ours over theirs, per workload both ran at `concurrency`."""
    ratios = {}
    for run in ours["runs"] if ours and theirs else []:
        other = run_of(theirs, run["workload"], concurrency)
        same = run["concurrency"] == concurrency and run["mode"] == "closed"
        if same and other and other["throughput"] > 0:
            ratios[run["workload"]] = round(run["throughput"] / other["throughput"], 2)
    return ratios


def _difference(ours: Run | None, theirs: Run | None) -> float | None:
    """p50 of ours minus p50 of theirs, ms."""
    if not ours or not theirs:
        return None
    a, b = ours["latency_ms"]["p50"], theirs["latency_ms"]["p50"]
    return None if a is None or b is None else round(a - b, 3)


def _warmup(service: Service) -> dict[str, Any]:
    first, steady = service["first_requests"], service.get("steady_requests") or {}
    ratio = {}
    for key in ("p50", "p99"):
        if first.get(key) and steady.get(key):
            ratio[f"{key}_ratio"] = round(first[key] / steady[key], 2)
    return {"first": first, "steady": steady, **ratio}


def targets(subject: str, derived: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 6's targets for this suite: what, the value measured, the bound, met."""
    c = derived["concurrency"]
    gain = HEAVY_GAIN if subject == "heavy" else DEFAULT_GAIN
    framework = derived.get("framework") or {}
    warm = (derived.get("warmup") or {}).get("batched", {})
    soak = derived.get("soak") or {}
    rows: list[tuple[str, float | None, str, Callable[[float], bool]]] = [
        (f"efficiency at c={c}, /encode x1", derived.get("efficiency"), ">= 0.75",
         lambda v: v >= 0.75),
        (f"batching gain at c={c}, /encode x1", derived["gain_vs_unbatched"].get(ENCODE_ONE),
         f">= {gain}", lambda v: v >= gain),
        ("batching tax: p50 at c=1, ms", derived.get("tax_p50_ms"), "<= 0.5", lambda v: v <= 0.5),
        (f"trivial model: req/s at c={c}", framework.get("rps"), ">= 2000", lambda v: v >= 2000),
        ("trivial model: p50 at c=1, ms", framework.get("p50_ms_c1"), "<= 1", lambda v: v <= 1),
        ("start-up to ready, s", derived["startup_s"].get("batched"), "<= 5", lambda v: v <= 5),
        ("first requests p50 / steady p50", warm.get("p50_ratio"), "<= 1.2", lambda v: v <= 1.2),
        ("first requests p99 / steady p99", warm.get("p99_ratio"), "<= 1.5", lambda v: v <= 1.5),
        (f"RSS growth over {soak.get('requests', 0)} mixed requests, MB",
         soak.get("rss_growth_mb"), "<= 50", lambda v: v <= 50),
    ]  # fmt: skip
    if subject == "heavy":
        single = (derived.get("single_image_ms") or {}).get("encode")
        rows.append(("fixture: one-image encode in process, ms", single, ">= 5", lambda v: v >= 5))
    return [
        {
            "target": name,
            "value": value,
            "bound": bound,
            "met": None if value is None else check(value),
            "binding": subject != "heavy" or not name.startswith(DEFAULT_MODEL_ONLY),
        }
        for name, value, bound, check in rows
    ]
