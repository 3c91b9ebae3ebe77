"""`python -m bench.soak` for six seconds, with every timeout and the connection cap scaled
down so that each hostile kind finishes a few times: the report's structure, every
kind answered as the limits say, and nothing wrong with the normal traffic. Nothing is
timed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.soak import REFUSED, main

pytestmark = pytest.mark.slow

SHORT = ["--minutes", "0.1", "--keep-alive", "1", "--max-connections", "64", "--env",
         "VAE_HEAD_TIMEOUT_S=1", "--env", "VAE_BODY_TIMEOUT_S=1"]  # fmt: skip
EXPECTED = {  # each kind's answer; any connection may also meet the cap during a flood
    "slow head": {"408 read_timeout"},
    "idle": {"closed"},
    "slow body": {"408 read_timeout"},
    "huge header": {"431 head_too_large"},
    "pixel bomb": {"413 image_too_large"},
    "oversized": {"413 payload_too_large"},
    "hang-up": {"hung up"},
    "flood": {"held", "closed"},  # held by the server, or closed by its keep-alive timer
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("soak") / "soak.json"
    assert main([*SHORT, "--out", str(out)]) == 0
    return json.loads(Path(out).read_text())


def test_every_normal_request_is_a_200_and_counted_per_minute(report):
    normal = report["normal"]
    assert normal["requests"] > 0 and normal["errors"] == {}
    assert normal["statuses"] == {"200": normal["requests"]}
    assert sum(minute["requests"] for minute in normal["per_minute"]) == normal["requests"]
    assert all(m["p50_ms"] <= m["p99_ms"] for m in normal["per_minute"])


def test_every_hostile_kind_gets_the_answer_its_limit_promises(report):
    assert set(report["hostile"]) == set(EXPECTED)
    for kind, outcomes in report["hostile"].items():
        assert set(outcomes) <= EXPECTED[kind] | {REFUSED}, (kind, outcomes)
        assert set(outcomes) - {REFUSED}, (kind, outcomes)  # it finished at least once
    assert report["hostile"]["flood"][REFUSED] >= 16  # past the cap by FLOOD_PAST_CAP


def test_no_5xx_no_traceback_and_nothing_left_open(report):
    assert report["five_xx"]["failures"] == 0 and report["five_xx"]["refused_connections"] > 0
    server = report["server"]
    assert server["tracebacks"] == 0
    # a leak shows as more; one fewer is seen too (a socket of the start-up closing late)
    assert server["settled"]["open_files"] <= server["before"]["open_files"]
    closed = server["counters"]["connections_closed"]
    assert {"head_timeout", "head_too_large", "too_many_connections"} <= set(closed)
    assert server["counters"]["requests"]["/encode 499"] > 0  # the hang-ups, as the server saw them
    assert len(server["samples"]) >= 2 and server["rss_mb"]["max"] >= server["rss_mb"]["start"]
