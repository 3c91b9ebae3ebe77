"""Issue 6's targets from a suite's derived figures: which are met, and which bind."""

from __future__ import annotations

from bench.analysis import targets
from bench.report import _met

DERIVED = {
    "concurrency": 64,
    "efficiency": 0.9,
    "gain_vs_unbatched": {"/encode x1": 3.0},
    "tax_p50_ms": 0.1,
    "framework": {"rps": 1500.0, "p50_ms_c1": 1.2},
    "startup_s": {"batched": 9.0},
    "warmup": {"batched": {"p50_ratio": 1.0, "p99_ratio": 1.0}},
    "soak": {"requests": 100, "rss_growth_mb": 1.0},
    "single_image_ms": {"encode": 6.0},
}


DEFAULT_ONLY = {
    "trivial model: req/s at c=64",
    "trivial model: p50 at c=1, ms",
    "start-up to ready, s",
}


def by_name(subject: str) -> dict[str, dict]:
    return {row["target"]: row for row in targets(subject, DERIVED)}


def test_the_heavy_fixture_needs_a_4x_gain_and_the_default_model_1_5x():
    assert by_name("mnist")["batching gain at c=64, /encode x1"]["met"] is True
    assert by_name("heavy")["batching gain at c=64, /encode x1"]["met"] is False
    assert by_name("heavy")["fixture: one-image encode in process, ms"]["met"] is True


def test_framework_and_start_up_bind_for_the_default_model_only():
    mnist, heavy = by_name("mnist"), by_name("heavy")
    for name in DEFAULT_ONLY:
        assert mnist[name]["binding"] and not heavy[name]["binding"]
        assert heavy[name]["met"] is False
    assert _met(mnist["start-up to ready, s"]) == "**no**"
    assert _met(heavy["start-up to ready, s"]) == "no (not binding here)"
    binding = {name for name, row in heavy.items() if row["binding"]}
    assert binding == set(heavy) - DEFAULT_ONLY
