"""training.served: a real uvicorn process serving a real inspection artifact, measured on
image files by `python -m training.evaluate served`; the figures checked against
scikit-learn on answers fetched independently."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from tests.app.server_process import Server, start_server, stop
from training.evaluate import main
from training.folders import GOOD, labelled_cases, read_mask, write_set
from training.textures import TextureSet
from vae_client import VAEClient

HEIGHT, WIDTH = 72, 96  # not the model's 48x64: the service resizes, the maps come back


def smooth(count: int, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(count, 1, HEIGHT, WIDTH, generator=generator) * 0.2 + 0.4).mul(255).round()


def inspection_set() -> TextureSet:
    generator = torch.Generator().manual_seed(1)
    defective = smooth(6, generator)
    masks = torch.zeros(6, HEIGHT, WIDTH, dtype=torch.bool)
    for index in range(6):
        top, left = 8 + 7 * index, 10 + 9 * index
        masks[index, top : top + 12, left : left + 14 - index] = True
    defective[:, 0][masks] = 0.0  # dark holes, as `training.defects` draws them
    return TextureSet(
        name="smooth",
        train=smooth(2, generator) / 255,
        normal=smooth(8, generator) / 255,
        defective=defective / 255,
        masks=masks,
        kinds=("hole", "stain") * 3,
        fresh=smooth(0, generator),
    )


@pytest.fixture(scope="module")
def server(
    spatial_artifact_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("served-log") / "uvicorn.log"
    running = start_server(spatial_artifact_dir, log, {"VAE_MAX_BATCH_SIZE": "8"})
    yield running
    stop(running)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    write_set(root, inspection_set())
    return root


def test_the_figures_are_those_of_the_services_own_answers(
    server: Server, labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "served.json"
    argv = ["served", str(labelled), "--url", server.url, "--json", str(out)]
    assert main([*argv, "--concurrency", "3", "--overlays", str(tmp_path / "overlays")]) == 0
    report = json.loads(out.read_text())
    cases = labelled_cases(labelled)
    with VAEClient(server.url) as client:
        answers = [client.anomaly([case.path.read_bytes()], heatmap=True)[0] for case in cases]
    bad = np.array([case.kind != GOOD for case in cases])
    scores = np.array([answer.score for answer in answers])
    flagged = np.array([answer.is_anomaly for answer in answers])
    rows = report["images"]
    assert [(row["path"], row["kind"]) for row in rows] == [(str(c.path), c.kind) for c in cases]
    assert np.allclose([row["score"] for row in rows], scores, rtol=1e-5, atol=1e-6)
    for case in cases:
        with Image.open(tmp_path / "overlays" / case.kind / f"{case.path.stem}.png") as overlay:
            assert overlay.mode == "RGB" and overlay.size == (WIDTH, HEIGHT)
    assert report["image_auroc"] == pytest.approx(roc_auc_score(bad, scores), abs=1e-9)
    for kind in ("hole", "stain"):
        chosen = np.array([case.kind in (GOOD, kind) for case in cases])
        figures = report["kinds"][kind]
        assert figures["images"] == 3
        assert figures["image_auroc"] == pytest.approx(
            roc_auc_score(bad[chosen], scores[chosen]), abs=1e-9
        )
    assert report["recall"] == pytest.approx(flagged[bad].mean())
    assert report["false_alarm_rate"] == pytest.approx(flagged[~bad].mean())
    assert report["good_images"] == 8 and report["defective_images"] == 6

    maps, truth = [], []
    for case, answer in zip(cases, answers, strict=True):
        assert answer.heatmap is not None
        with Image.open(io.BytesIO(answer.heatmap)) as heat:
            assert heat.size == (WIDTH, HEIGHT)  # the upload's size, not the model's
            maps.append(np.asarray(heat.convert("L")).flatten())
        mask = read_mask(case.mask, (WIDTH, HEIGHT)) if case.mask else np.zeros((HEIGHT, WIDTH))
        truth.append(mask.flatten().astype(bool))
    expected_pixel = roc_auc_score(np.concatenate(truth), np.concatenate(maps))
    assert report["pixel_auroc"] == pytest.approx(expected_pixel, abs=1e-9)
    assert report["heatmap_scale"] == answers[0].heatmap_scale == "absolute"
    assert report["model"] == "tiny-spatial"
    promised = report["promised_false_alarm_rate"]
    assert promised is not None and 0 < promised <= 0.1
    table = capsys.readouterr().out
    assert "| **all defects** | 6 |" in table and "of 8 good images" in table


def test_a_file_the_service_refuses_ends_the_run_naming_it(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_set(tmp_path, inspection_set())
    broken = tmp_path / "test" / GOOD / "broken.png"
    broken.write_bytes(b"not an image at all")
    assert main(["served", str(tmp_path), "--url", server.url]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "broken.png" in error and "refused" in error
    assert len(error.strip().splitlines()) == 1


def test_no_service_and_no_folder_are_one_line_errors(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["served", str(labelled), "--url", "http://127.0.0.1:9", "--timeout", "2"]) == 1
    assert "cannot reach the service" in capsys.readouterr().err
    assert main(["served", str(tmp_path / "nowhere")]) == 1
    assert "no such folder" in capsys.readouterr().err
