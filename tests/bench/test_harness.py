"""The benchmark harness end to end, at a toy size: it runs and reports, nothing is timed.

A few dozen requests against a real uvicorn process serving the trivial fixture, with
the aiohttp generator (wrk's runs last whole seconds); then the naive baseline app in
process, and the documentation hook. No assertion here is about speed.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager

from app.artifact import read_metadata
from bench import payloads
from bench.cli import main
from bench.naive_app import create_naive_app
from bench.report import END, START, update_doc

RUN_FIELDS = {"workload", "mode", "generator", "concurrency", "rate", "requests", "ok",
              "seconds", "throughput", "rows_per_s", "latency_ms", "statuses", "errors",
              "rss_mb", "batches"}  # fmt: skip
TINY_RUN = ["--models", "trivial", "--configs", "ceiling,trivial,batched", "--endpoints",
            "encode,anomaly", "--multi", "2", "--curve", "1", "--concurrency", "4", "--seconds",
            "0.5", "--requests", "24", "--first-requests", "5", "--soak-requests", "16",
            "--max-batch-size", "4", "--generator", "aiohttp"]  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out, cache = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("cache")
    assert main([*TINY_RUN, "--out", str(out), "--cache-dir", str(cache)]) == 0
    return json.loads((out / "results.json").read_text()), out


@pytest.mark.slow
def test_a_tiny_run_writes_json_markdown_and_a_plot(report):
    results, out = report
    assert set(results) >= {"started_at", "command", "generator", "machine", "suites", "seconds"}
    (suite,) = results["suites"]
    assert set(suite) == {"device", "model", "ceiling", "services", "derived", "targets"}
    assert set(suite["ceiling"]) == {"encode", "decode", "score"}
    assert set(suite["ceiling"]["encode"]) == {"1", "2", "4"}
    assert "| target | value | bound | met |" in (out / "results.md").read_text()
    assert (out / "throughput_p99.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_every_run_reports_throughput_percentiles_statuses_and_rss(report):
    services = report[0]["suites"][0]["services"]
    assert set(services) == {"trivial", "batched"}
    batched = services["batched"]
    workloads = {(run["workload"], run["mode"]) for run in batched["runs"]}
    assert workloads == {("/encode x1", "closed"), ("/encode x2", "closed"),
                         ("/anomaly x1", "closed"), ("/anomaly x2", "closed"),
                         ("/encode x1", "open")}  # fmt: skip
    for run in batched["runs"] + services["trivial"]["runs"]:
        assert set(run) == RUN_FIELDS
        assert set(run["latency_ms"]) == {"p50", "p95", "p99", "mean", "max"}
        assert run["statuses"] == {"200": run["requests"]} and run["requests"] > 0
        assert set(run["rss_mb"]) == {"before", "after"}
    rates = [run["rate"] for run in batched["runs"] if run["mode"] == "open"]
    assert len(rates) == 2 and rates[0] < rates[1]  # a light load and a heavy one
    assert batched["runs"][0]["batches"]["encode"]["rows"] > 0
    assert batched["soak"]["statuses"] == {"200": 16}
    assert batched["first_requests"]["requests"] == 5


@pytest.mark.slow
def test_the_derived_ratios_and_targets_are_filled_in(report):
    suite = report[0]["suites"][0]
    derived = suite["derived"]
    assert {"r_ms", "m_ms", "efficiency", "startup_s", "warmup", "soak"} <= set(derived)
    assert set(derived["startup_s"]) == {"trivial", "batched"}
    rows = {target["target"]: target for target in suite["targets"]}
    efficiency = rows["efficiency at c=4, /encode x1"]
    assert efficiency["value"] == derived["efficiency"]
    assert efficiency["met"] == (derived["efficiency"] >= 0.75)


@pytest.mark.anyio
async def test_the_naive_app_answers_in_the_service_wire_format(artifact_dir):
    app = create_naive_app(artifact_dir, warmup_sizes=(1, 2))
    async with LifespanManager(app) as manager:
        images = partial(
            payloads.images, metadata=read_metadata(artifact_dir), rng=np.random.default_rng(0)
        )
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://naive") as client:
            encoded = await client.post("/encode", json={"images": images(2)})
            sampled = await client.post("/sample", json={"n": 3})
            scored = await client.post("/anomaly", json={"images": images(1)})
    assert encoded.status_code == sampled.status_code == scored.status_code == 200
    assert len(encoded.json()["mu"]) == 2
    assert len(sampled.json()["images"]) == 3
    assert set(scored.json()["results"][0]) >= {"score", "threshold", "is_anomaly", "percentile"}


def test_update_doc_replaces_only_what_lies_between_the_markers(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Before\n{START}\nold\n{END}\nAfter\n")
    update_doc(doc, "| new |\n")
    assert doc.read_text() == f"# Before\n{START}\n| new |\n{END}\nAfter\n"
