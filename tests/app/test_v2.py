"""The Open Inference Protocol, proven by clients nobody here wrote: Triton's
`tritonclient.http` and KServe's `InferenceRESTClient`, against a real uvicorn on
loopback serving a repository of two models. Their answers equal the native routes'.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.config import REPO_ROOT

tritonclient = pytest.importorskip("tritonclient.http")
kserve = pytest.importorskip("kserve")

pytestmark = pytest.mark.slow
LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
USER = {"Authorization": "Bearer user-key"}  # copied per call: tritonclient adds to it
ADMIN = {"Authorization": "Bearer admin-key"}


@dataclass
class Server:
    process: subprocess.Popen
    host: str  # 127.0.0.1:port, as tritonclient takes it
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}"


@pytest.fixture(scope="module")
def server(tmp_path_factory, make_artifact) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("v2-repository")
    shutil.copytree(make_artifact(1), root / "alpha" / "1")
    shutil.copytree(make_artifact(3), root / "beta")
    log = root.parent / "v2-uvicorn.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    env |= {
        "VAE_MODEL_REPOSITORY": str(root),
        "VAE_DEFAULT_MODEL": "alpha",
        "VAE_DEVICE": "cpu",
        "VAE_TORCH_THREADS": "1",
        "VAE_MAX_BATCH_SIZE": "8",
        "VAE_API_KEYS": "user-key",
        "VAE_ADMIN_KEYS": "admin-key",
    }
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]
    with log.open("w") as sink:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=sink, stderr=sink)
    deadline = time.monotonic() + 90
    try:
        while not (match := LISTENING.search(log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield Server(process, f"127.0.0.1:{match.group(1)}", log)
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def triton(server):
    client = tritonclient.InferenceServerClient(server.host)
    yield client
    client.close()


@pytest.fixture(scope="module")
def uploads(digit_png) -> list[bytes]:
    return [digit_png(seed) for seed in range(3)]


@pytest.fixture(scope="module")
def pixels(uploads) -> np.ndarray:
    """The uploads as the UINT8 [N, H, W, C] tensor a v2 client sends."""
    return np.stack([np.array(Image.open(io.BytesIO(png)))[..., None] for png in uploads])


def native(server: Server, path: str, **kwargs) -> dict:
    response = httpx.post(server.url + path, headers={**USER}, timeout=30, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def files(uploads: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"{i}.png", png, "image/png")) for i, png in enumerate(uploads)]


def triton_infer(triton, model: str, inputs: dict[str, np.ndarray], *, binary: bool, **kwargs):
    tensors = []
    for name, array in inputs.items():
        datatype = "UINT8" if array.dtype == np.uint8 else "FP32"
        tensor = tritonclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        tensors.append(tensor)
    return triton.infer(model, tensors, headers={**USER}, **kwargs)


def test_triton_sees_a_live_ready_server_and_v2_models_per_verb(triton):
    assert triton.is_server_live() and triton.is_server_ready(headers={**USER})
    metadata = triton.get_server_metadata(headers={**USER})
    assert metadata["name"] == "vae-serve" and "binary_tensor_data" in metadata["extensions"]
    assert triton.is_model_ready("alpha.encode", headers={**USER})
    assert triton.is_model_ready("beta.anomaly", "1", headers={**USER})
    assert not triton.is_model_ready("gamma.encode", headers={**USER})
    encode = triton.get_model_metadata("alpha.encode", headers={**USER})
    assert encode["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 28, 28, 1]}]
    assert [o["name"] for o in encode["outputs"]] == ["mu", "logvar", "z"]
    assert encode["versions"] == ["1"] and encode["platform"] == "pytorch_torchscript"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_triton_encode_equals_the_native_route(triton, server, uploads, pixels, binary):
    result = triton_infer(
        triton, "alpha.encode", {"images": pixels}, binary=binary,
        parameters={"sample": True, "seed": 7},
    )  # fmt: skip
    expected = native(
        server, "/models/alpha/encode", files=files(uploads), data={"sample": "true", "seed": "7"}
    )
    for name in ("mu", "logvar", "z"):
        np.testing.assert_allclose(result.as_numpy(name), expected[name], atol=1e-6)
    assert result.get_response()["parameters"]["seed"] == 7


def test_triton_anomaly_decode_sample_interpolate_equal_the_native_routes(
    triton, server, uploads, pixels
):
    scored = triton_infer(triton, "beta.anomaly", {"images": pixels}, binary=True)
    results = native(server, "/models/beta/anomaly", files=files(uploads))["results"]
    np.testing.assert_allclose(scored.as_numpy("scores"), [r["score"] for r in results], rtol=1e-6)
    assert scored.as_numpy("is_anomaly").tolist() == [r["is_anomaly"] for r in results]
    np.testing.assert_allclose(
        scored.as_numpy("percentiles"), [r["percentile"] for r in results], rtol=1e-5
    )
    latents = np.array([[0.1, -0.2, 0.3, 0.5], [1.0, 0.0, -1.0, 0.5]], dtype=np.float32)
    decoded = triton_infer(triton, "alpha.decode", {"latents": latents}, binary=True)
    arrays = native(server, "/decode", json={"latents": latents.tolist(), "format": "array"})[
        "arrays"
    ]
    np.testing.assert_allclose(decoded.as_numpy("images"), arrays, atol=1e-6)
    sampled = triton.infer("alpha.sample", [], headers={**USER}, parameters={"n": 3, "seed": 11})
    drawn = native(server, "/sample", json={"n": 3, "seed": 11, "format": "array"})
    np.testing.assert_allclose(sampled.as_numpy("latents"), drawn["latents"], atol=1e-6)
    np.testing.assert_allclose(sampled.as_numpy("images"), drawn["arrays"], atol=1e-6)
    ends = {"start": latents[:1], "end": latents[1:]}
    walked = triton_infer(
        triton, "alpha.interpolate", ends, binary=False, parameters={"steps": 4, "method": "slerp"}
    )
    path = native(server, "/interpolate", json={
        "start": {"latent": latents[0].tolist()}, "end": {"latent": latents[1].tolist()},
        "steps": 4, "method": "slerp", "format": "array",
    })  # fmt: skip
    np.testing.assert_allclose(walked.as_numpy("latents"), path["latents"], atol=1e-6)
    np.testing.assert_allclose(walked.as_numpy("images"), path["arrays"], atol=1e-6)


def test_triton_gzip_requests_and_errors(triton, pixels):
    result = triton_infer(
        triton,
        "alpha.encode",
        {"images": pixels},
        binary=True,
        request_compression_algorithm="gzip",
    )
    assert result.as_numpy("mu").shape == (3, 4)
    with pytest.raises(tritonclient.InferenceServerException, match="no model named 'gamma'"):
        triton_infer(triton, "gamma.encode", {"images": pixels}, binary=True)
    with pytest.raises(tritonclient.InferenceServerException, match="UINT8 \\[N,28,28,1\\]"):
        triton_infer(triton, "alpha.encode", {"images": pixels[:, :14]}, binary=True)


def test_v2_errors_are_an_error_string_and_keys_still_hold(server, pixels):
    missing = httpx.post(
        f"{server.url}/v2/models/alpha.encode/infer", content=b"{}", headers={**USER}
    )
    assert missing.status_code == 422 and set(missing.json()) == {"error"}
    assert isinstance(missing.json()["error"], str) and "images" in missing.json()["error"]
    keyless = httpx.post(f"{server.url}/v2/models/alpha.encode/infer", content=b"{}")
    assert keyless.status_code == 401 and isinstance(keyless.json()["error"], str)
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'endpoint="/v2/models/{model_name}/infer",model="alpha"' in metrics


def test_triton_repository_extension_loads_and_unloads_a_model(server):
    admin = tritonclient.InferenceServerClient(server.host)
    try:
        index = {
            (m["name"], m.get("version")): m["state"]
            for m in admin.get_model_repository_index(headers={**ADMIN})
        }
        assert index == {("alpha", "1"): "READY", ("beta", "1"): "READY"}
        with pytest.raises(tritonclient.InferenceServerException, match="admin key"):
            admin.unload_model("beta", headers={**USER})
        admin.unload_model("beta", headers={**ADMIN})
        assert not admin.is_model_ready("beta.encode", headers={**USER})
        index = admin.get_model_repository_index(headers={**ADMIN})
        assert {"name": "beta", "state": "UNAVAILABLE", "reason": "unloaded"} in index
        admin.load_model("beta", headers={**ADMIN})
        assert admin.is_model_ready("beta.encode", headers={**USER})
    finally:
        admin.close()


def test_kserve_rest_client_speaks_v2_and_gets_the_native_answers(server, uploads, pixels):
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def run() -> tuple:
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        try:
            live = await client.is_server_live(server.url, headers={**USER})
            ready = await client.is_server_ready(server.url, headers={**USER})
            model_ready = await client.is_model_ready(server.url, "alpha.anomaly", headers={**USER})
            tensors = InferInput("images", list(pixels.shape), "UINT8")
            tensors.set_data_from_numpy(pixels, binary_data=True)
            request = InferRequest("alpha.anomaly", [tensors], parameters={"heatmap": True})
            binary = await client.infer(server.url, request, "alpha.anomaly", headers={**USER})
            tensors = InferInput("images", list(pixels.shape), "UINT8")
            tensors.set_data_from_numpy(pixels, binary_data=False)
            request = InferRequest("alpha.encode", [tensors])
            as_json = await client.infer(server.url, request, "alpha.encode", headers={**USER})
        finally:
            await client.close()
        return live, ready, model_ready, binary, as_json

    live, ready, model_ready, binary, as_json = asyncio.run(run())
    assert live and ready and model_ready
    outputs = {output.name: output.as_numpy() for output in binary.outputs}
    results = native(server, "/anomaly", files=files(uploads), data={"heatmap": "true"})["results"]
    np.testing.assert_allclose(outputs["scores"], [r["score"] for r in results], rtol=1e-6)
    assert outputs["is_anomaly"].tolist() == [r["is_anomaly"] for r in results]
    assert outputs["heatmap"].shape == (3, 1, 28, 28)
    encoded = {output.name: output.as_numpy() for output in as_json.outputs}
    expected = native(server, "/encode", files=files(uploads))
    np.testing.assert_allclose(encoded["mu"], expected["mu"], atol=1e-6)
    assert as_json.model_name == "alpha.encode"
