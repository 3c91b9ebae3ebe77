from dataclasses import replace

import numpy as np
import pytest
import torch

from app.artifact import read_metadata
from app.preprocessing import preprocessing_for
from training import texture_report
from training.checkpoint import LAST
from training.defects import KINDS
from training.textures import (
    Result,
    Scores,
    brightness_baseline,
    build_texture_set,
    measure,
    model_input,
    pca_baseline,
    photograph,
    pixel_auroc,
)


@pytest.fixture(scope="module")
def brick():
    return build_texture_set("brick", size=32, train=24, normal=12, per_kind=2, fresh=8)


def test_the_set_holds_normal_crops_and_one_masked_defect_per_defective_crop(brick):
    assert brick.train.shape == (24, 1, 32, 32)
    assert brick.normal.shape == (12, 1, 32, 32)
    assert brick.defective.shape == (2 * len(KINDS), 1, 32, 32)
    assert brick.masks.shape == (2 * len(KINDS), 32, 32) and bool(brick.masks.any(dim=(1, 2)).all())
    assert sorted(set(brick.kinds)) == sorted(KINDS)
    on_8_bits = brick.defective * 255
    assert torch.equal(on_8_bits, on_8_bits.round())  # as an 8-bit upload would hold them


def rows_of(crop: np.ndarray, photo: np.ndarray) -> list[int]:
    """The top rows at which the 32x32 `crop` lies in `photo`."""
    candidates = np.ones(photo[:-31, :-31].shape, dtype=bool)
    for dy, dx in ((0, 0), (0, 31), (31, 0), (31, 31)):  # four pixels rule out most places
        window = photo[dy : dy + photo.shape[0] - 31, dx : dx + photo.shape[1] - 31]
        candidates &= np.abs(window - crop[dy, dx]) <= 1 / 255
    return [
        row
        for row, col in zip(*np.nonzero(candidates), strict=True)
        if np.allclose(photo[row : row + 32, col : col + 32], crop, atol=1 / 255)
    ]


def test_no_test_crop_comes_from_the_training_region_and_every_fresh_one_does(brick):
    photo = photograph("brick")[:, :, 0]
    split = round(photo.shape[0] * 5 / 8)
    for crop in brick.normal[:4, 0].numpy():
        rows = rows_of(crop, photo)
        assert rows and min(rows) >= split
    for crop in brick.fresh[:4, 0].numpy():
        rows = rows_of(crop, photo)
        assert rows and max(rows) + 32 <= split
    assert not any(torch.equal(fresh, train) for fresh in brick.fresh for train in brick.train)


def test_the_pixel_auroc_of_the_mask_itself_is_one_and_of_its_opposite_zero(brick):
    mask = brick.masks.float()
    empty = torch.zeros_like(brick.normal[:, 0])
    assert pixel_auroc(empty, mask, brick.masks) == 1.0
    assert pixel_auroc(empty + 1, 1 - mask, brick.masks) == 0.0


def test_a_perfect_detector_measures_perfect_figures(brick):
    scores = Scores(
        normal=torch.zeros(len(brick.normal)),
        defective=torch.ones(len(brick.defective)),
        normal_maps=torch.zeros_like(brick.normal[:, 0]),
        defective_maps=brick.masks.float(),
        threshold=0.5,
        fresh=torch.tensor([0.0, 0.0, 0.0, 1.0]),
    )
    result = measure("oracle", scores, brick)
    assert result.image_auroc == result.pixel_auroc == 1.0
    assert result.recall == 1.0 and result.false_alarm_rate == 0.0
    assert result.fresh_false_alarm_rate == 0.25
    assert set(result.per_kind) == set(KINDS)


@pytest.mark.parametrize("baseline", [brightness_baseline, pca_baseline])
def test_the_baselines_score_every_image_and_pixel(brick, baseline):
    scores = baseline(brick)
    assert scores.normal.shape == (12,) and scores.defective.shape == (2 * len(KINDS),)
    assert scores.defective_maps.shape == brick.masks.shape
    assert 0.0 <= measure("baseline", scores, brick).image_auroc <= 1.0


def test_model_input_resizes_through_the_services_preprocessing(brick):
    resized = model_input(brick.normal[:2], preprocessing_for(1), (16, 16))
    assert resized.shape == (2, 1, 16, 16)


def test_reuse_resumes_the_finished_run_and_exports_it_again(brick, tiny_config):
    config = replace(tiny_config, data="brick", epochs=1, image_size=28)
    config = replace(config, calibration_fraction=0.4, false_alarm_rate=0.2).validate()
    first: list[str] = []
    texture_report._fit(config, brick, first.append, False, reuse="resume", resize=True)
    assert any(line.startswith("epoch 1/1") for line in first)
    (config.artifact_path / "model.json").unlink()
    again: list[str] = []
    module, metadata = texture_report._fit(
        config, brick, again.append, False, reuse="resume", resize=True
    )
    assert again[0] == f"resuming {config.checkpoint_path / LAST}"
    assert not any(line.startswith("epoch ") for line in again)  # nothing left to train
    assert metadata == read_metadata(config.artifact_path) and hasattr(module, "score")
    again.clear()
    texture_report._fit(config, brick, again.append, False, reuse="artifact", resize=True)
    assert again == [f"reusing {config.artifact_path}"]


def test_the_report_gives_both_false_alarm_rates_and_their_means():
    def run(texture: str, fresh: float) -> texture_report.TextureRun:
        result = Result("inspection", 0.9, 0.8, dict.fromkeys(KINDS, 0.5), 0.5, 0.04, fresh)
        return texture_report.TextureRun(texture, [result], 1.0, np.zeros((1, 1, 3), np.uint8))

    lines = texture_report.markdown([run("brick", 0.01), run("grass", 0.02)]).splitlines()
    assert "false alarms, fresh | false alarms, held-out region |" in lines[6]
    assert lines[-3].endswith("| 50.0% | 1.0% | 4.0% |")
    assert lines[-1] == "| **mean** |" + " |" * len(KINDS) + " **50.0%** | **1.5%** | **4.0%** |"
