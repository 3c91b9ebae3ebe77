"""Dynamic batching seen from HTTP: coalescing, invisibility in results, and faults."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from torch import Tensor

from app.artifact import read_metadata, save_artifact
from training.model import VAE, ModelConfig

pytestmark = pytest.mark.anyio

POISON_NAN = 999.0  # decode: a latent whose first value is above this gives NaN
POISON_RAISE = -999.0  # decode: a first value below this makes the model raise


async def metric(client, name: str, **labels: str) -> float:
    text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def test_concurrent_single_image_requests_coalesce(serve, images):
    """32 concurrent one-image /encode calls: fewer than 32 model calls, same answers."""
    async with serve(max_wait_ms=20.0) as client:
        payloads = [{"images": [image]} for image in images(32)]
        alone = [(await client.post("/encode", json=p)).json() for p in payloads]
        before = await metric(client, "vae_batch_rows_count", op="encode")
        together = await asyncio.gather(*(client.post("/encode", json=p) for p in payloads))
        calls = await metric(client, "vae_batch_rows_count", op="encode") - before
    assert calls < 32
    for single, response in zip(alone, together, strict=True):
        assert response.status_code == 200
        assert single["mu"] == response.json()["mu"]  # the same bits: batch invariance
        assert single["logvar"] == response.json()["logvar"]


async def test_batching_is_invisible_in_anomaly_and_decode(client, images):
    anomaly = [{"images": images(n, start=10 * n), "heatmap": n % 2 == 0} for n in (1, 3, 5, 2)]
    decode = [
        {"latents": np.random.default_rng(n).normal(size=(n, 4)).tolist(), "format": "array"}
        for n in (1, 7, 20)
    ]
    requests = [("/anomaly", p) for p in anomaly] + [("/decode", p) for p in decode]
    alone = [(await client.post(path, json=p)).json() for path, p in requests]
    together = await asyncio.gather(*(client.post(path, json=p) for path, p in requests))
    for (path, _), single, response in zip(requests, alone, together, strict=True):
        if path == "/anomaly":
            for a, b in zip(single["results"], response.json()["results"], strict=True):
                assert a["score"] == b["score"]
                assert a["heatmap"] == b["heatmap"] or a["heatmap"] is None is b["heatmap"]
        else:
            assert single["arrays"] == response.json()["arrays"]


async def test_seeded_sample_is_independent_of_its_batch(client):
    request = {"n": 3, "seed": 42, "format": "array"}
    alone = (await client.post("/sample", json=request)).json()
    noise = [{"n": 9, "seed": s, "format": "array"} for s in range(6)]
    responses = await asyncio.gather(*(client.post("/sample", json=p) for p in [*noise, request]))
    assert responses[-1].json()["latents"] == alone["latents"]
    assert responses[-1].json()["arrays"] == alone["arrays"]


async def test_large_request_is_split_across_batches(client):
    response = await client.post("/sample", json={"n": 40, "seed": 1})  # max_batch_size 16
    assert response.status_code == 200 and len(response.json()["images"]) == 40


class PoisonVAE(VAE):
    """The tiny VAE, except that extreme latents make `decode` return NaN or raise."""

    @torch.jit.export
    def decode(self, z: Tensor) -> Tensor:
        if bool((z[:, 0] < -999.0).any()):  # POISON_RAISE (TorchScript reads no globals)
            raise RuntimeError("poisoned batch")
        x = torch.sigmoid(self.decoder(z))
        poisoned = (z[:, 0] > 999.0).view(-1, 1, 1, 1)  # POISON_NAN
        return torch.where(poisoned, torch.full_like(x, float("nan")), x)


@pytest.fixture(scope="module")
def poison_dir(tmp_path_factory, tiny_vae, artifact_dir):
    config = ModelConfig(
        architecture="mlp",
        hidden=(32,),
        latent_dim=4,
        image_size=28,
        score_samples=len(tiny_vae.score_noise),
    )
    model = PoisonVAE(config)
    model.load_state_dict(tiny_vae.state_dict())
    return save_artifact(model, read_metadata(artifact_dir), tmp_path_factory.mktemp("poison"))


async def test_poison_input_fails_only_its_own_request(serve, poison_dir, assert_error):
    async with serve(model_dir=poison_dir, max_wait_ms=50.0) as client:
        good = [{"latents": [[0.1 * i, 0.0, 0.0, 0.0]]} for i in range(6)]
        poison = {"latents": [[POISON_NAN + 1, 0.0, 0.0, 0.0]]}
        responses = await asyncio.gather(
            *(client.post("/decode", json=p) for p in [*good[:3], poison, *good[3:]])
        )
        assert [r.status_code for r in responses] == [200] * 3 + [500] + [200] * 3
        assert_error(responses[3], 500, "non_finite_output")
        request_id = responses[3].headers["x-request-id"]
        assert request_id in responses[3].json()["error"]["message"]


async def test_model_exception_fails_its_batch_and_serving_goes_on(serve, poison_dir, assert_error):
    async with serve(model_dir=poison_dir) as client:
        crash = await client.post("/decode", json={"latents": [[POISON_RAISE - 1, 0, 0, 0]]})
        assert_error(crash, 500, "internal")
        assert crash.headers["x-request-id"] in crash.json()["error"]["message"]
        after = await client.post("/decode", json={"latents": [[0.0, 0.0, 0.0, 0.0]]})
        assert after.status_code == 200
        assert await metric(client, "vae_batch_failures_total", op="decode") == 1
