"""The outputs of a run: `results.json`, `results.md` (tables) and `throughput_p99.png`.

`update_doc` puts the Markdown between the result markers of `docs/benchmarks.md`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from bench.analysis import ENCODE_ONE

START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"
LABELS = {
    "trivial": "service, trivial model",
    "batched": "service (batching)",
    "unbatched": "service, max_batch_size=1",
    "naive": "naive FastAPI",
}
RUN_HEADER = ["config", "workload", "load", "req/s", "rows/s", "p50 ms", "p95 ms", "p99 ms"]
RUN_HEADER += ["errors", "RSS MB", "rows/batch"]
WARM_HEADER = ["config", "start-up s", "first p50 ms", "first p99 ms", "first max ms"]
WARM_HEADER += ["steady p50 ms", "steady p99 ms"]
Row = list[Any]
ANNOTATION: dict[str, Any] = {"textcoords": "offset points", "fontsize": 7}


def write_json(report: dict[str, Any], path: Path) -> None:
    options = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
    path.write_bytes(orjson.dumps(report, option=options) + b"\n")


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _met(target: dict[str, Any]) -> str:
    met = _cell(target["met"])
    return met if target.get("binding", True) else f"{met.strip('*')} (not binding here)"


def _table(header: list[str], rows: list[Row]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"Run {report['started_at']} ({report['seconds']:.0f} s), `{report['command']}`, on "
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; torch {m['torch']}, "
        f"{m.get('cuda') or 'no CUDA'}. Load average before/after: {m['load_before']} / "
        f"{m['load_after']}. Generator: {report['generator']}."
    ]
    if m.get("contended"):
        lines.append("\n**The machine was busy (load average above half its cores) when the run")
        lines.append("started: treat these figures as provisional.**")
    for suite in report["suites"]:
        lines += _suite(suite)
    return "\n".join(lines) + "\n"


def _suite(suite: dict[str, Any]) -> list[str]:
    model, derived = suite["model"], suite["derived"]
    single = derived.get("single_image_ms", {})
    shape = "x".join(map(str, model["image_shape"]))
    lines = [
        "",
        f"### {suite['device']} · {model['name']} ({model['source']}, {model['architecture']}, "
        f"{shape}, latent {model['latent_dim']})",
        "",
        f"One image in process: encode {_cell(single.get('encode'), 2)} ms, decode "
        f"{_cell(single.get('decode'), 2)} ms, score {_cell(single.get('score'), 2)} ms. "
        f"r = {_cell(derived.get('r_ms'), 3)} ms; m = {_cell(derived.get('m_ms'), 3)} ms at "
        f"{_cell(derived.get('rows_per_batch'))} rows per batch; 1/(r+m) = "
        f"{_cell(derived.get('ideal_rps'))} req/s.",
        "",
    ]
    targets = [[t["target"], _cell(t["value"], 3), t["bound"], _met(t)] for t in suite["targets"]]
    lines += _table(["target", "value", "bound", "met"], targets)
    lines += ["", f"Throughput ratios at c={derived['concurrency']}:", ""]
    lines += _table(
        ["workload", "batching / max_batch_size=1", "batching / naive"], _ratios(derived)
    )
    lines += ["", "Runs:", ""]
    lines += _table(
        RUN_HEADER, [_run_row(c, r) for c, s in suite["services"].items() for r in s["runs"]]
    )
    lines += ["", "Start-up, and /encode x1 one at a time right after ready and at the end:", ""]
    lines += _table(WARM_HEADER, [_warm_row(c, s) for c, s in suite["services"].items()])
    if "ceiling" in suite:
        sizes = list(suite["ceiling"]["encode"])
        per_row = [
            [op, *(_cell(table[size]["ms_per_row"], 3) for size in sizes)]
            for op, table in suite["ceiling"].items()
        ]
        lines += ["", "In-process ceiling, ms per row at each batch size:", ""]
        lines += _table(["op", *sizes], per_row)
    soak = suite["services"].get("batched", {}).get("soak")
    if soak and soak["rss_mb"]:
        rss = soak["rss_mb"]
        lines += [
            "",
            f"Soak: {soak['requests']} mixed requests at c={soak['concurrency']} in "
            f"{soak['seconds']} s, statuses {soak['statuses']}, errors {soak['errors'] or 0}; "
            f"RSS {rss['start']} → {rss['end']} MB (max {rss['max']}).",
        ]
    return lines


def _ratios(derived: dict[str, Any]) -> list[Row]:
    unbatched, naive = derived["gain_vs_unbatched"], derived["gain_vs_naive"]
    return [[w, unbatched.get(w), naive.get(w)] for w in sorted(set(unbatched) | set(naive))]


def _run_row(config: str, run: dict[str, Any]) -> Row:
    where = f"c={run['concurrency']}" if run["mode"] == "closed" else f"{run['rate']:g}/s open"
    failed = {s: n for s, n in run["statuses"].items() if not s.startswith("2")}
    failed.update(run["errors"])
    batches: dict[str, Any] = next(iter(run["batches"].values()), {})
    latency, rss = run["latency_ms"], run["rss_mb"]
    return [
        LABELS[config],
        run["workload"],
        where,
        run["throughput"],
        run["rows_per_s"],
        latency["p50"],
        latency["p95"],
        latency["p99"],
        ", ".join(f"{kind}: {n}" for kind, n in failed.items()) or "0",
        f"{_cell(rss.get('before'))} → {_cell(rss.get('after'))}",
        batches.get("rows_per_batch"),
    ]


def _warm_row(config: str, service: dict[str, Any]) -> Row:
    first, steady = service.get("first_requests") or {}, service.get("steady_requests") or {}
    return [
        LABELS[config],
        service["startup_s"],
        first.get("p50"),
        first.get("p99"),
        first.get("max"),
        steady.get("p50"),
        steady.get("p99"),
    ]


def plot(report: dict[str, Any], path: Path) -> None:
    """Throughput against p99 per configuration: the /encode x1 curve, one panel per suite."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    suites = report["suites"]
    figure, axes = plt.subplots(1, len(suites), figsize=(6 * len(suites), 4.5), squeeze=False)
    for axis, suite in zip(axes[0], suites, strict=True):
        for config, service in suite["services"].items():
            _plot_service(axis, LABELS[config], service["runs"])
        ceiling = suite["derived"].get("ceiling_encode_rows_per_s")
        if ceiling:
            axis.axvline(ceiling, linestyle="--", color="grey", label="in-process ceiling")
        axis.set_xscale("log")
        axis.set_yscale("log")
        for scale in (axis.xaxis, axis.yaxis):
            scale.set_major_formatter(ScalarFormatter())
            scale.set_minor_formatter(NullFormatter())
        axis.set_xlabel("throughput, requests/s (/encode, 1 image)")
        axis.set_ylabel("p99 latency, ms")
        axis.set_title(f"{suite['device']} · {suite['model']['name']}", fontsize=10)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _plot_service(axis: Any, label: str, runs: list[dict[str, Any]]) -> None:
    """A line through the closed-loop concurrencies; an x for the open-loop run."""
    encode = [r for r in runs if r["workload"] == ENCODE_ONE and r["latency_ms"]["p99"]]
    closed = sorted((r for r in encode if r["mode"] == "closed"), key=lambda r: r["concurrency"])
    if not closed:
        return
    xs, ys = [r["throughput"] for r in closed], [r["latency_ms"]["p99"] for r in closed]
    color = axis.plot(xs, ys, marker="o", label=label)[0].get_color()
    for run, x, y in zip(closed, xs, ys, strict=True):
        axis.annotate(f"c={run['concurrency']}", (x, y), xytext=(4, 4), **ANNOTATION)
    for run in encode:
        if run["mode"] == "open":
            axis.plot(run["throughput"], run["latency_ms"]["p99"], marker="x", color=color)


def update_doc(doc: Path, table: str) -> None:
    """Replace what lies between the result markers of `doc` with `table`."""
    head, found, rest = doc.read_text().partition(START)
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise ValueError(f"{doc} has no {START} ... {END} markers")
    doc.write_text(f"{head}{START}\n{table}{END}{tail}")
