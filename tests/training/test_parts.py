import json

import numpy as np
import pytest
import torch
from PIL import Image

from training import evaluate, texture_report
from training.defects import KINDS
from training.parts import (
    GAIN,
    NOISE,
    OFFSET,
    SHIFT,
    TURN,
    _margin,
    build_part_set,
    part_image,
    views,
)
from training.textures import Result, build_texture_set


@pytest.fixture(scope="module")
def coins():
    return build_part_set("coins", size=32, train=24, normal=12, per_kind=2, fresh=8)


def test_the_set_holds_normal_views_and_one_masked_defect_per_defective_view(coins):
    assert coins.train.shape == (24, 1, 32, 32) and coins.fresh.shape == (8, 1, 32, 32)
    assert coins.normal.shape == (12, 1, 32, 32) and coins.defective.shape == (12, 1, 32, 32)
    assert coins.kinds == KINDS * 2 and coins.masks.shape == (12, 32, 32)
    assert all(mask.any() for mask in coins.masks)
    for x in (coins.train, coins.normal, coins.defective, coins.fresh):
        assert x.min() >= 0.0 and x.max() <= 1.0
        assert torch.equal(torch.round(x * 255) / 255, x)  # 8-bit, as uploads are


def _place_share(x: torch.Tensor) -> float:
    """How much of the images' variance is where in the frame a pixel lies: the variance
    of the mean image across places over the mean variance within an image."""
    return float(x.mean(0).var() / x.var(dim=(1, 2, 3)).mean())


def test_views_are_aligned_unlike_random_crops_and_never_identical(coins):
    flat = coins.train.flatten(1)
    assert len(torch.unique(flat, dim=0)) == len(flat)
    camera = build_part_set("camera", size=32, train=24, normal=2, per_kind=1, fresh=2)
    crops = build_texture_set("brick", size=32, train=24, normal=2, per_kind=1, fresh=2)
    assert _place_share(camera.train) > 0.4 > 10 * _place_share(crops.train)


@pytest.mark.parametrize(("shift", "turn"), [(SHIFT, TURN), (0, 0.0), (8, 30.0), (12, 180.0)])
def test_a_turn_leaves_no_blank_corner_and_the_lighting_stays_in_its_range(shift, turn):
    outer = 32 + 2 * (shift + _margin(32, turn))
    white = Image.new("L", (outer, outer), 200)
    pixels = views(white, 50, 32, np.random.default_rng(0), shift, turn)
    level = 200 / 255
    low = level * (1 - GAIN) - OFFSET - 5 * NOISE
    high = level * (1 + GAIN) + OFFSET + 5 * NOISE
    assert pixels.shape == (50, 32, 32, 1) and low <= pixels.min() and pixels.max() <= high


def test_the_part_is_the_photographs_central_square_with_room_for_every_view():
    part = part_image("coffee", 32)
    assert part.mode == "RGB" and part.width == part.height > 32 + 2 * SHIFT
    assert np.asarray(part).mean() > 10  # the photograph, not a blank


def test_a_loose_part_lies_any_way_round_and_anywhere_in_its_range():
    counts = {"size": 32, "train": 40, "normal": 2, "per_kind": 1, "fresh": 2}
    loose = build_part_set("camera", **counts, shift=8, turn=180)
    fixed = build_part_set("camera", **counts)
    assert loose.train.shape == fixed.train.shape
    assert _place_share(loose.train) < 0.5 * _place_share(fixed.train)


def test_a_placement_out_of_range_is_refused_before_anything_is_drawn():
    for placement in ({"shift": 33}, {"shift": -1}, {"turn": 181.0}, {"turn": -2.0}):
        with pytest.raises(ValueError, match="a shift is 0 to 32 px and a turn 0 to 180"):
            build_part_set("coins", size=32, **placement)


@pytest.mark.parametrize("flag", ["--shift=40", "--turn=200", "--turn=far"])
def test_a_placement_flag_out_of_range_is_a_usage_error(flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["parts", flag])
    assert exit_.value.code == 2 and "expected" in capsys.readouterr().err


def test_the_parts_command_writes_its_own_report_after_each_part(tmp_path, monkeypatch):
    finished: list[str] = []

    def run_texture(name, work_dir, inspection, whole, log, reuse, build):
        assert build.func is evaluate.build_part_set
        assert build.keywords == {"shift": 6, "turn": 90.0}
        result = Result("inspection", 0.9, 0.8, dict.fromkeys(KINDS, 0.5), 0.5, 0.04, 0.01)
        finished.append(name)
        return texture_report.TextureRun(name, [result], 1.0, np.zeros((2, 2, 3), np.uint8))

    written: list[list[str]] = []
    original = texture_report.write_report

    def write_report(runs, *args):
        written.append([run.texture for run in runs])
        return original(runs, *args)

    monkeypatch.setattr(texture_report, "run_texture", run_texture)
    monkeypatch.setattr(evaluate, "write_report", write_report)
    code = evaluate.main(
        [
            "parts",
            "--parts",
            "coins,retina",
            "--epochs",
            "1",
            "--report-dir",
            str(tmp_path),
            "--shift",
            "6",
            "--turn",
            "90",
        ]
    )
    assert code == 0 and finished == ["coins", "retina"]
    assert written == [["coins"], ["coins", "retina"]]
    report = json.loads((tmp_path / "parts.json").read_text())
    assert list(report["parts"]) == ["coins", "retina"] and report["settings"]["parts"]
    assert report["settings"]["shift_px"] == 6 and report["settings"]["turn_degrees"] == 90.0
    table = (tmp_path / "parts.md").read_text()
    assert table.startswith("| part | ") and "false alarms, test views |" in table
    assert (tmp_path / "parts.png").is_file() and not (tmp_path / "textures.md").exists()


def test_an_unknown_part_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["parts", "--parts", "coins,brick"])
    assert exit_.value.code == 2 and "parts are coins" in capsys.readouterr().err
