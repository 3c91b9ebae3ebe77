"""Many models and versions through the real app: layout, policy, routes, lifecycle,
polling, safe swaps under load, and fair turns between models."""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from app.runtime import ModelRuntime

pytestmark = pytest.mark.anyio

IMAGE_SEED = 5


def build(root: Path, make_artifact, layout: dict[str, dict[int | None, int]]) -> Path:
    """`{"alpha": {1: seed, 2: seed}, "beta": {None: seed}}`: None is a bare folder."""
    for name, versions in layout.items():
        for version, seed in versions.items():
            where = root / name if version is None else root / name / str(version)
            shutil.copytree(make_artifact(seed), where)
    return root


@pytest.fixture(scope="module")
def repository(tmp_path_factory, make_artifact) -> Path:
    root = tmp_path_factory.mktemp("repository")
    return build(root, make_artifact, {"alpha": {1: 1, 2: 2}, "beta": {None: 3}})


@pytest.fixture(scope="module")
async def client(serve, repository):
    async with serve(model_dir=None, model_repository=repository, default_model="alpha") as client:
        yield client


async def mu(client, path: str, images) -> list[float]:
    """The posterior mean of one fixed image, as `path` answers it."""
    response = await client.post(path, json={"images": images(1, start=IMAGE_SEED)})
    assert response.status_code == 200, response.text
    return response.json()["mu"][0]


async def test_every_model_is_listed_with_the_policys_versions(client):
    body = (await client.get("/models")).json()
    listed = {
        m["name"]: (m["default"], m["state"], [(v["version"], v["state"]) for v in m["versions"]])
        for m in body["models"]
    }
    assert listed == {
        "alpha": (True, "ready", [(2, "ready")]),  # latest:1 of versions 1 and 2
        "beta": (False, "ready", [(1, "ready")]),  # a bare folder is version 1
    }
    version = body["models"][0]["versions"][0]
    assert version["reason"] is None and version["metadata"]["latent_dim"] == 4
    one = (await client.get("/models/beta")).json()
    assert one["name"] == "beta" and one["versions"][0]["metadata"]["device"] == "cpu"


async def test_each_address_serves_its_model_and_the_top_level_the_default(client, images):
    default = await mu(client, "/encode", images)
    assert await mu(client, "/models/alpha/encode", images) == default
    assert await mu(client, "/models/alpha/versions/2/encode", images) == default
    assert await mu(client, "/models/beta/encode", images) != default
    for verb, body in [
        ("decode", {"latents": [[0.0, 0.1, 0.2, 0.3]]}),
        ("sample", {"n": 2, "seed": 1}),
        ("anomaly", {"images": images(1)}),
        ("interpolate", {"start": {"latent": [0] * 4}, "end": {"latent": [1] * 4}, "steps": 3}),
    ]:
        top = await client.post(f"/{verb}", json=body)
        named = await client.post(f"/models/alpha/versions/2/{verb}", json=body)
        assert top.status_code == named.status_code == 200
        assert top.json() == named.json()


async def test_unknown_models_and_versions_are_404(client, assert_error):
    assert_error(await client.post("/models/gamma/sample", json={"n": 1}), 404, "model_not_found")
    assert_error(await client.get("/models/gamma"), 404, "model_not_found")
    for version in (3, 0):
        response = await client.post(f"/models/alpha/versions/{version}/sample", json={"n": 1})
        assert_error(response, 404, "model_not_found")
    assert_error(await client.post("/models/alpha/versions/x/sample", json={}), 404, "not_found")


async def test_a_version_on_disk_but_outside_the_policy_is_not_served(client, assert_error):
    response = await client.post("/models/alpha/versions/1/sample", json={"n": 1})
    assert_error(response, 404, "model_not_found")
    assert "version policy" in response.json()["error"]["message"]


async def test_access_log_and_metrics_name_the_model_and_version(client, log_lines):
    await client.post("/models/beta/sample", json={"n": 1}, headers={"X-Request-ID": "m-1"})
    line = json.loads(next(line for line in log_lines if '"m-1"' in line))
    assert (line["model"], line["version"]) == ("beta", "1")
    text = (await client.get("/metrics")).text
    assert 'vae_batch_rows_count{model="beta",op="decode",version="1"}' in text
    assert 'vae_model_loaded{model="alpha",version="2"} 1.0' in text


async def test_policy_all_and_a_model_list_limit(serve, repository, images):
    async with serve(
        model_dir=None, model_repository=repository, default_model="alpha", version_policy="all"
    ) as client:
        first = await mu(client, "/models/alpha/versions/1/encode", images)
        second = await mu(client, "/models/alpha/versions/2/encode", images)
        assert first != second and await mu(client, "/models/alpha/encode", images) == second
    async with serve(
        model_dir=None, model_repository=repository, default_model="beta", models="beta"
    ) as client:
        listed = {m["name"]: m["state"] for m in (await client.get("/models")).json()["models"]}
        assert listed == {"alpha": "unavailable", "beta": "ready"}
        response = await client.post("/models/alpha/sample", json={"n": 1})
        assert (
            response.status_code == 503 and response.json()["error"]["code"] == "model_unavailable"
        )


async def test_management_routes_need_an_admin_key_and_are_off_without_one(
    client, serve, repository, assert_error, images
):
    assert_error(await client.post("/models/beta/unload"), 404, "not_found")
    keys = {"api_keys": "user-key", "admin_keys": "root-key"}
    async with serve(
        model_dir=None, model_repository=repository, default_model="alpha", **keys
    ) as admin:
        user, root = {"X-API-Key": "user-key"}, {"Authorization": "Bearer root-key"}
        assert_error(await admin.post("/models/beta/unload", headers=user), 401, "unauthorized")
        assert_error(await admin.post("/models/beta/unload"), 401, "unauthorized")
        unloaded = await admin.post("/models/beta/unload", headers=root)
        assert unloaded.status_code == 200 and unloaded.json()["versions"] == []
        response = await admin.post("/models/beta/sample", json={"n": 1}, headers=user)
        assert_error(response, 503, "model_unavailable")
        loaded = await admin.post("/models/beta/load", headers=root)
        assert [v["state"] for v in loaded.json()["versions"]] == ["ready"]
        assert (
            await admin.post("/models/beta/encode", json={"images": images(1)}, headers=user)
        ).status_code == 200
        assert_error(await admin.post("/models/gamma/load", headers=root), 404, "model_not_found")
        shutil.copytree(repository / "beta", repository / "gamma")  # it arrives later
        try:
            late = await admin.post("/models/gamma/load", headers=root)
            assert [v["state"] for v in late.json()["versions"]] == ["ready"]
            assert (await admin.post("/models/gamma/unload", headers=root)).status_code == 200
        finally:
            shutil.rmtree(repository / "gamma")


async def wait_for(client, condition, timeout: float = 20.0) -> dict:
    """Poll GET /models until `condition({name: [(version, state), ...]})` holds."""
    deadline = time.monotonic() + timeout
    while True:
        body = (await client.get("/models")).json()
        states = {
            m["name"]: [(v["version"], v["state"]) for v in m["versions"]] for m in body["models"]
        }
        if condition(states):
            return body
        assert time.monotonic() < deadline, states
        await asyncio.sleep(0.02)


async def test_a_new_version_is_swapped_in_under_load_exactly_once(
    serve, tmp_path, make_artifact, images
):
    """Four clients keep asking while version 2 is polled in and version 1 removed: every
    request is answered 200, and each client's answers switch from 1 to 2 exactly once."""
    root = build(tmp_path, make_artifact, {"alpha": {1: 1}})
    async with serve(
        model_dir=None, model_repository=root, default_model="alpha", poll_s=0.05
    ) as client:
        old = await mu(client, "/encode", images)
        answers: list[list[list[float]]] = [[] for _ in range(4)]
        statuses: list[int] = []
        stop = asyncio.Event()

        async def keep_asking(mine: list[list[float]]) -> None:
            while not stop.is_set():
                response = await client.post(
                    "/encode", json={"images": images(1, start=IMAGE_SEED)}
                )
                statuses.append(response.status_code)
                if response.status_code == 200:
                    mine.append(response.json()["mu"][0])

        clients = [asyncio.create_task(keep_asking(mine)) for mine in answers]
        await asyncio.sleep(0.2)
        shutil.copytree(make_artifact(2), root / "alpha" / "2")  # model.json's checksum guards
        await wait_for(client, lambda states: states["alpha"] == [(2, "ready")])
        shutil.rmtree(root / "alpha" / "1")
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*clients)
        new = await mu(client, "/encode", images)
    assert not np.allclose(new, old, atol=1e-3) and set(statuses) == {200}
    for mine in answers:  # the same answer up to float rounding in batches of other sizes
        which = ["old" if np.allclose(m, old, atol=1e-5) else "new" for m in mine]
        assert all(
            np.allclose(m, new, atol=1e-5) for m, w in zip(mine, which, strict=True) if w == "new"
        )
        switch = which.index("new")
        assert switch > 0 and which == ["old"] * switch + ["new"] * (len(which) - switch), which


async def test_a_corrupt_new_version_leaves_the_old_one_serving(
    serve, tmp_path, make_artifact, images, log_lines
):
    root = build(tmp_path, make_artifact, {"alpha": {1: 1}})
    async with serve(
        model_dir=None, model_repository=root, default_model="alpha", poll_s=0.05
    ) as client:
        before = await mu(client, "/encode", images)
        broken = root / "alpha" / "2"
        shutil.copytree(make_artifact(2), broken)
        metadata = json.loads((broken / "model.json").read_text())
        del metadata["model_sha256"]  # complete, as far as anyone can tell, and corrupt
        (broken / "model.pt").write_bytes(b"not TorchScript")
        (broken / "model.json").write_text(json.dumps(metadata))
        body = await wait_for(client, lambda s: (2, "failed") in s["alpha"])
        versions = body["models"][0]["versions"]
        assert [(v["version"], v["state"]) for v in versions] == [(1, "ready"), (2, "failed")]
        assert "not a loadable TorchScript file" in versions[1]["reason"]
        assert await mu(client, "/encode", images) == before
        text = (await client.get("/metrics")).text
        assert 'vae_model_load_failures_total{model="alpha",version="2"} 1.0' in text
        await asyncio.sleep(0.2)  # later polls do not retry the same broken files
        assert (
            'vae_model_load_failures_total{model="alpha",version="2"} 1.0'
            in (await client.get("/metrics")).text
        )
    failures = [json.loads(line) for line in log_lines if "model load failed" in line]
    assert len(failures) == 1 and failures[0]["version"] == 2


@pytest.fixture
def batch_time(monkeypatch) -> float:
    """Every model call takes 20 ms more: long enough to see whose turn it is."""
    seconds, run = 0.02, ModelRuntime.run

    def slow_run(self, op, batch):
        time.sleep(seconds)
        return run(self, op, batch)

    monkeypatch.setattr(ModelRuntime, "run", slow_run)
    return seconds


async def test_a_flooded_model_does_not_hold_up_another(serve, repository, batch_time):
    """beta is flooded with 24 full batches (about 0.5 s of model time); alpha's
    requests meanwhile wait for the batch in the worker, not for the flood."""
    async with serve(model_dir=None, model_repository=repository, default_model="alpha") as client:

        async def alpha_p50() -> float:
            seconds = []
            for seed in range(7):
                started = time.perf_counter()
                response = await client.post(
                    "/sample", json={"n": 1, "seed": seed, "format": "array"}
                )
                seconds.append(time.perf_counter() - started)
                assert response.status_code == 200
            return statistics.median(seconds)

        idle = await alpha_p50()
        flood = [
            asyncio.ensure_future(
                client.post("/models/beta/sample", json={"n": 16, "seed": i, "format": "array"})
            )
            for i in range(24)
        ]
        await asyncio.sleep(0.05)
        flooded = await alpha_p50()
        assert not all(task.done() for task in flood)  # alpha was measured inside the flood
        assert {response.status_code for response in await asyncio.gather(*flood)} == {200}
    # fair turns: alpha waits for at most the batch in the worker (one batch time, plus
    # a loaded machine's noise); first come, first served it would wait out the flood,
    # about 24 batch times
    assert flooded - idle < 5 * batch_time, (idle, flooded)


async def test_a_changed_version_is_reloaded_in_place(serve, tmp_path, make_artifact, images):
    """The same version number with new files (moved into place): the new load replaces
    the old one once ready; the listing never shows two ready loads for long."""
    root = build(tmp_path, make_artifact, {"alpha": {1: 1}})
    async with serve(
        model_dir=None, model_repository=root, default_model="alpha", poll_s=0.05
    ) as client:
        before = await mu(client, "/encode", images)
        staged = tmp_path / "staged"
        shutil.copytree(make_artifact(2), staged)
        (root / "alpha" / "1").rename(tmp_path / "old")
        staged.rename(root / "alpha" / "1")
        deadline = time.monotonic() + 20
        while np.allclose(await mu(client, "/encode", images), before, atol=1e-5):
            assert time.monotonic() < deadline, "the changed version was not reloaded"
            await asyncio.sleep(0.02)
        await wait_for(client, lambda states: states["alpha"] == [(1, "ready")])
