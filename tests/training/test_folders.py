"""training.folders: labelled sets written and read back in the MVTec AD layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.errors import TrainingError
from training.evaluate import main
from training.folders import GOOD, labelled_cases, read_mask, write_set
from training.textures import TextureSet


def tiny_set(channels: int = 1, size: int = 24) -> TextureSet:
    generator = torch.Generator().manual_seed(0)

    def images(count: int) -> torch.Tensor:
        pixels = torch.rand(count, channels, size, size, generator=generator)
        return (pixels * 255).round() / 255

    masks = torch.zeros(4, size, size, dtype=torch.bool)
    masks[0, 2:6, 3:9] = True
    masks[1, 10:12, :] = True
    masks[2, 5:20, 5:7] = True
    masks[3, 0:3, 0:3] = True
    return TextureSet(
        name="tiny",
        train=images(5),
        normal=images(3),
        defective=images(4),
        masks=masks,
        kinds=("scratch", "hole", "scratch", "hole"),
        fresh=images(0),
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_a_written_set_reads_back_pixel_for_pixel(tmp_path: Path, channels: int) -> None:
    data = tiny_set(channels)
    counts = write_set(tmp_path, data)
    assert counts == {"train/good": 5, "test/good": 3, "test/scratch": 2, "test/hole": 2}
    cases = labelled_cases(tmp_path)
    assert [case.kind for case in cases] == [GOOD] * 3 + ["hole"] * 2 + ["scratch"] * 2
    assert all((case.mask is None) == (case.kind == GOOD) for case in cases)
    first_scratch = next(case for case in cases if case.kind == "scratch")
    with Image.open(first_scratch.path) as image:
        pixels = np.asarray(image, dtype=np.float32) / 255
        assert image.mode == ("L" if channels == 1 else "RGB")
    expected = data.defective[0].permute(1, 2, 0).numpy().squeeze(-1 if channels == 1 else None)
    assert np.array_equal(pixels, expected)
    assert first_scratch.mask is not None
    assert np.array_equal(read_mask(first_scratch.mask, (24, 24)), data.masks[0].numpy())


def test_a_mask_is_read_at_the_size_asked_for(tmp_path: Path) -> None:
    mask = np.zeros((10, 20), dtype=np.uint8)
    mask[:, 10:] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    read = read_mask(tmp_path / "m.png", (40, 20))
    assert read.shape == (20, 40) and read[:, 20:].all() and not read[:, :20].any()


def test_writing_refuses_a_folder_that_holds_a_set(tmp_path: Path) -> None:
    write_set(tmp_path, tiny_set())
    with pytest.raises(TrainingError, match="already holds a set"):
        write_set(tmp_path, tiny_set())


def test_reading_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no test/good folder"):
        labelled_cases(tmp_path)
    (tmp_path / "test" / GOOD).mkdir(parents=True)
    with pytest.raises(TrainingError, match="no images"):
        labelled_cases(tmp_path)
    Image.new("L", (8, 8)).save(tmp_path / "test" / GOOD / "a.png")
    with pytest.raises(TrainingError, match="no defective images"):
        labelled_cases(tmp_path)


def test_a_defect_without_a_mask_is_kept_without_one(tmp_path: Path) -> None:
    write_set(tmp_path, tiny_set())
    (tmp_path / "ground_truth" / "hole" / "hole_0000_mask.png").unlink()
    cases = [case for case in labelled_cases(tmp_path) if case.kind == "hole"]
    assert [case.mask is None for case in cases] == [True, False]


def test_write_set_command_writes_a_built_in_part(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["write-set", str(tmp_path / "coins"), "--source", "coins", "--size", "48"]
    argv += ["--train", "4", "--normal", "2", "--per-kind", "1", "--turn", "180"]
    assert main(argv) == 0
    cases = labelled_cases(tmp_path / "coins")
    assert len(cases) == 2 + 6 and all(case.mask for case in cases if case.kind != GOOD)
    assert len(list((tmp_path / "coins" / "train" / GOOD).iterdir())) == 4
    with Image.open(cases[0].path) as image:
        assert image.size == (48, 48) and image.mode == "L"
    assert "train/good: 4 images" in capsys.readouterr().out
    assert main(argv) == 1
    assert "already holds a set" in capsys.readouterr().err
