"""The real command line: every flag documented; every user error one line, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from app.artifact import METADATA_FILE, MODEL_FILE
from training.checkpoint import BEST, LAST
from training.config import TrainConfig
from training.pipeline import METRICS_FILE


def write_corrupt(tmp: Path) -> Path:
    (tmp / "corrupt.npz").write_bytes(b"PK\x03\x04 this is not really a zip archive")
    return tmp / "corrupt.npz"


def write_labelled(tmp: Path) -> Path:
    np.savez(tmp / "labelled.npz", images=np.zeros((8, 28, 28), np.uint8), labels=np.zeros(8, int))
    return tmp / "labelled.npz"


ERRORS: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "missing path": (lambda tmp: ["--data", str(tmp / "nowhere")], "error: dataset not found"),
    "corrupt file": (lambda tmp: ["--data", str(write_corrupt(tmp))], "not a readable .npz"),
    "empty class filter": (
        lambda tmp: ["--data", str(write_labelled(tmp)), "--classes", "3"],
        "--classes 3 matches no image",
    ),
    "image size": (lambda tmp: ["--image-size", "300"], "--image-size must be in [28, 128]"),
    "too few to calibrate": (
        lambda tmp: ["--data", str(write_labelled(tmp))],
        "the calibration split has 1 image(s); a false-alarm rate of 0.1 needs at least 9",
    ),
    "two threshold flags": (
        lambda tmp: ["--false-alarm-rate", "0.02", "--threshold-quantile", "0.98"],
        "not allowed with argument",
    ),
    "bad flag": (lambda tmp: ["--epochs", "many"], "argument --epochs: invalid int value"),
}


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, tiny_flags) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every case below through `python -m training`, run side by side to save time."""
    tmp = tmp_path_factory.mktemp("cli")
    argvs = {"help": ["--help"]}
    for name, (make_args, _) in ERRORS.items():
        argvs[name] = [*make_args(tmp), *tiny_flags, "--out", str(tmp / "model")]

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "training", *args]
        return subprocess.run(command, capture_output=True, text=True, cwd=tmp, timeout=120)

    with ThreadPoolExecutor(max_workers=2) as pool:  # the CI box has two cores
        done = dict(zip(argvs, pool.map(run, argvs.values()), strict=True))
    assert not (tmp / "model").exists()
    return done


def test_help_documents_every_flag(cli_runs) -> None:
    help_run = cli_runs["help"]
    assert help_run.returncode == 0
    for field in fields(TrainConfig):
        assert f"--{field.name.replace('_', '-')}" in help_run.stdout, field.name
    assert "(default: 32,64,64)" in " ".join(help_run.stdout.split())  # the recipe's defaults


@pytest.mark.parametrize("case", list(ERRORS))
def test_user_errors_end_with_one_line_and_nonzero_exit(cli_runs, case: str) -> None:
    done = cli_runs[case]
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert ERRORS[case][1] in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_a_cli_run_writes_artifact_checkpoints_and_metrics(trained_run) -> None:
    assert {p.name for p in trained_run.artifact.iterdir()} == {MODEL_FILE, METADATA_FILE}
    runs = trained_run.config.checkpoint_path
    assert (runs / LAST).is_file() and (runs / BEST).is_file()
    metrics = json.loads((runs / METRICS_FILE).read_text())
    assert metrics["epochs_trained"] == 2 and metrics["train_images"] == len(trained_run.data.train)
