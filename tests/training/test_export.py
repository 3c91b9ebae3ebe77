"""The exported artifact: scripted == eager, complete metadata, and it loads without `training`."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from app.artifact import FORMAT_VERSION, METADATA_FILE, MODEL_FILE, ModelMetadata, load_artifact
from training import verify
from training.calibrate import calibrate, score_images
from training.config import TrainConfig
from training.errors import ExportError
from training.export import build_metadata, export_artifact
from training.model import VAE, ModelConfig
from training.pipeline import METRICS_FILE


def test_the_artifact_computes_what_the_eager_model_computes(trained_run) -> None:
    module, _ = load_artifact(trained_run.artifact)
    model, x = trained_run.model, trained_run.data.val.images
    with torch.inference_mode():
        mu, logvar = model.encode(x)
        pairs = [
            (module.encode(x)[0], mu),
            (module.encode(x)[1], logvar),
            (module.decode(mu), model.decode(mu)),
            (module.score(x), model.score(x)),
            (module.pixel_nll(x), model.pixel_nll(x)),
        ]
        for method in ("elbo", "iwae"):
            torch.manual_seed(3)
            scripted = getattr(module, method)(x, 5)
            torch.manual_seed(3)
            pairs.append((scripted, getattr(model, method)(x, 5)))
    for scripted, eager in pairs:
        assert scripted.shape == eager.shape
        assert torch.allclose(scripted, eager, rtol=1e-5, atol=1e-5)


def test_model_json_has_every_metadata_field(trained_run) -> None:
    raw = json.loads((trained_run.artifact / METADATA_FILE).read_text())
    assert set(raw) == set(ModelMetadata.model_fields)
    assert all(value not in (None, "", {}, []) for value in raw.values())
    meta = ModelMetadata.model_validate(raw)
    config, data = trained_run.config, trained_run.data
    assert meta.format_version == FORMAT_VERSION and meta.name == "tiny"
    assert meta.image_shape == (1, 28, 28) and meta.latent_dim == 4
    assert (meta.likelihood, meta.architecture) == ("bernoulli", "mlp")
    assert meta.preprocessing.color_mode == "L"
    assert meta.calibration.count == len(data.calibration)
    assert meta.calibration.score == TrainConfig().score
    assert meta.calibration.method == "split-conformal"
    assert meta.calibration.false_alarm_rate == config.false_alarm_rate
    assert {"val_nelbo", "val_iwae_nll", "best_epoch", "train_images"} <= set(meta.metrics)
    assert meta.metrics["val_iwae_nll"] <= meta.metrics["val_nelbo"]
    assert TrainConfig.from_dict(meta.training) == config
    assert ModelConfig.from_dict(meta.training["model_config"]) == config.model_config(1)
    assert meta.data_fingerprint == data.fingerprint
    assert meta.torch_version == torch.__version__
    assert datetime.now(UTC) - meta.created_at < timedelta(hours=1)
    assert set((trained_run.artifact).iterdir()) == {
        trained_run.artifact / MODEL_FILE,
        trained_run.artifact / METADATA_FILE,
    }


def test_metrics_file_matches_model_json(trained_run) -> None:
    written = json.loads((trained_run.config.checkpoint_path / METRICS_FILE).read_text())
    _, meta = load_artifact(trained_run.artifact)
    assert written == {"name": "tiny", **meta.metrics}


def test_calibration_was_computed_with_the_artifacts_own_score(trained_run) -> None:
    module, meta = load_artifact(trained_run.artifact)
    scores = score_images(module.score, trained_run.data.calibration.images)
    rate = meta.calibration.false_alarm_rate
    again = calibrate(scores, trained_run.config.model_config(1), rate)
    assert again.quantiles == pytest.approx(meta.calibration.quantiles, rel=1e-5)
    assert again.threshold == pytest.approx(meta.calibration.threshold, rel=1e-5)


def test_the_artifact_runs_where_training_cannot_be_imported(trained_run) -> None:
    verify.check_isolated(trained_run.artifact)  # raises on failure
    blocked = verify.run_without_training("import training")
    assert blocked.returncode != 0
    assert "must not import training" in blocked.stderr


def test_a_broken_artifact_fails_the_isolated_check(trained_run, tmp_path: Path) -> None:
    broken = shutil.copytree(trained_run.artifact, tmp_path / "broken")
    (broken / MODEL_FILE).write_bytes(b"not torchscript")
    with pytest.raises(ExportError, match="fails in a process without training") as raised:
        verify.check_isolated(broken)
    assert "\n" not in str(raised.value)


def test_a_scripted_module_that_differs_is_caught(trained_run) -> None:
    module, _ = load_artifact(trained_run.artifact)
    other = VAE(trained_run.config.model_config(1)).eval()  # fresh weights
    with pytest.raises(ExportError, match="differs from the eager model"):
        verify.check_matches_eager(other, module, trained_run.data.val.images)


def test_a_conv_rgb_gaussian_model_exports(tmp_path: Path) -> None:
    config = TrainConfig(
        architecture="conv", hidden=(4, 8), dense=16, latent_dim=3, channels=3,
        likelihood="gaussian", score="nelbo", score_samples=2, name="rgb",
    )  # fmt: skip
    model_config = config.model_config(channels=3)
    torch.manual_seed(0)
    model = VAE(model_config).eval()
    images = torch.rand(20, 3, 28, 28)
    scores = score_images(model.score, images)
    calibration = calibrate(scores, model_config, 0.1)
    metadata = build_metadata(config, model_config, calibration, {"val_nelbo": 1.0}, "0" * 64)
    out = export_artifact(
        model,
        metadata,
        tmp_path / "rgb",
        calibration_images=images,
        calibration_scores=scores,
        isolated_check=False,
    )
    module, meta = load_artifact(out)
    assert meta.preprocessing.color_mode == "RGB" and meta.image_shape == (3, 28, 28)
    assert meta.likelihood == "gaussian" and meta.calibration.score == "nelbo"
    assert module.decode(torch.zeros(2, 3)).shape == (2, 3, 28, 28)
    assert module.pixel_nll(images[:2]).shape == (2, 3, 28, 28)
