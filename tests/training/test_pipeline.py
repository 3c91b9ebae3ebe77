"""What a run says before it starts: its data, the labels it found per class, its outputs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from training.pipeline import describe_run, prepare_data


def write_folder(root: Path, labelled: bool) -> Path:
    for index in range(12):
        folder = root / (str(index % 3) if labelled else "misc")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.full((28, 28, 3), 20 * index, np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def test_a_run_names_its_labels_per_class_and_its_outputs(tmp_path, tiny_config) -> None:
    config = replace(tiny_config, data=str(write_folder(tmp_path / "photos", labelled=True)))
    lines = describe_run(config, prepare_data(config))
    assert lines[0] == f"data: {config.data}, 12 images at 28x28 RGB"
    assert lines[1] == "labels from the subfolder names, images per class: 0: 4, 1: 4, 2: 4"
    assert lines[2] == (
        f"outputs: checkpoints and metrics.json in {config.checkpoint_path}/, "
        f"the artifact in {config.artifact_path}/"
    )
    kept = replace(config, classes=(1,))
    assert describe_run(kept, prepare_data(kept))[1].startswith(
        "labels from the subfolder names (kept"
    )


def test_a_folder_without_labels_says_how_to_label_it(tmp_path, tiny_config) -> None:
    config = replace(tiny_config, data=str(write_folder(tmp_path / "photos", labelled=False)))
    assert "integer-named subfolder" in describe_run(config, prepare_data(config))[1]
