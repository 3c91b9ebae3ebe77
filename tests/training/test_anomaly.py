"""The anomaly protocol: the rank AUROC, the report, and a tiny one-class run."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import get_args

import pytest
import torch

from training.anomaly import AnomalyReport, auroc, run_anomaly
from training.evaluate import digit_list, main, score_kinds
from training.model import ScoreKind

from .conftest import bars


def brute_force_auroc(normal: list[float], anomalous: list[float]) -> float:
    pairs = list(itertools.product(normal, anomalous))
    return sum(1.0 if a > n else 0.5 if a == n else 0.0 for n, a in pairs) / len(pairs)


def test_auroc_of_known_cases() -> None:
    t = torch.tensor
    assert auroc(t([1.0, 2.0, 3.0]), t([4.0, 5.0])) == 1.0
    assert auroc(t([4.0, 5.0]), t([1.0, 2.0, 3.0])) == 0.0
    assert auroc(t([2.0, 2.0]), t([2.0, 2.0, 2.0])) == 0.5
    assert auroc(t([1.0, 2.0, 3.0]), t([2.0, 4.0])) == pytest.approx(0.75)  # 4.5 of 6 pairs


def test_auroc_equals_the_pairwise_count_with_ties() -> None:
    generator = torch.Generator().manual_seed(0)
    normal = torch.randint(0, 10, (57,), generator=generator).double()
    anomalous = torch.randint(3, 14, (41,), generator=generator).double()
    expected = brute_force_auroc(normal.tolist(), anomalous.tolist())
    assert auroc(normal, anomalous) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError):
        auroc(normal, torch.tensor([]))


def test_report_table_mean_and_worst() -> None:
    report = AnomalyReport(
        ("iwae", "recon"), {0: {"iwae": 0.9, "recon": 0.8}, 1: {"iwae": 1.0, "recon": 0.6}}
    )
    assert report.mean() == pytest.approx({"iwae": 0.95, "recon": 0.7})
    assert report.worst() == {"iwae": 0.9, "recon": 0.6}
    lines = report.markdown().splitlines()
    assert lines[0] == "| digit | AUROC iwae | AUROC recon |"
    assert lines[2] == "| 0 | 90.0 | 80.0 |"
    assert lines[-2:] == ["| **mean** | 95.0 | 70.0 |", "| **min** | 90.0 | 60.0 |"]
    assert json.loads(json.dumps(report.to_dict()))["auroc"]["1"]["recon"] == 0.6


def test_one_class_protocol_separates_bars(tiny_config, tmp_path: Path) -> None:
    lines: list[str] = []
    report = run_anomaly(
        dataclasses.replace(tiny_config, epochs=6, calibration_fraction=0.2),
        bars(192),  # a digit: 48 to train, 10 to validate, 19 to calibrate, 19 to test
        digits=(0, 1),
        kinds=get_args(ScoreKind),  # every kind the model offers
        work_dir=tmp_path / "anomaly",
        log=lines.append,
        isolated_check=False,
    )
    assert set(report.auroc) == {0, 1}
    assert all(0.0 <= value <= 1.0 for row in report.auroc.values() for value in row.values())
    plain = {k: v for k, v in report.mean().items() if k in ("iwae", "nelbo", "recon")}
    assert min(plain.values()) > 0.9  # bars in opposite halves: an easy pair
    assert (tmp_path / "anomaly" / "digit-1" / "model" / "model.pt").is_file()
    assert any(line.startswith("digit 1: ") and " iwae " in line for line in lines)
    for alarms in report.false_alarms.values():
        assert [a.requested for a in alarms] == [0.1, 0.05]
        assert all(a.calibration_count == 19 and a.held_out == 19 for a in alarms)
        assert alarms[0].expected == pytest.approx(2 / 20)  # k = ceil(20 * 0.9) = 18
        assert alarms[1].flagged <= alarms[0].flagged  # a higher threshold flags fewer
    assert "| digit | calibration images | expected at 10.0% (90%) |" in report.markdown()


def test_anomaly_command_writes_table_and_json(trained_run, tmp_path: Path, capsys) -> None:
    data = trained_run.argv[trained_run.argv.index("--data") + 1]
    flags = [f for f in trained_run.argv if f not in ("--name", "tiny")][2:]
    flags = flags[: flags.index("--checkpoint-dir")]
    work = tmp_path / "protocol"
    argv = ["anomaly", "--data", data, "--digits", "1", "--scores", "recon,iwae", *flags]
    argv += ["--calibration-fraction", "0.25"]
    assert main([*argv, "--work-dir", str(work)]) == 0
    assert "| 1 |" in capsys.readouterr().out
    report = json.loads((work / "anomaly.json").read_text())
    assert report["kinds"] == ["recon", "iwae"] and set(report["auroc"]) == {"1"}
    assert report["false_alarms"]["1"][0]["requested"] == 0.1
    assert report["mean_false_alarms"][0]["measured"] == report["false_alarms"]["1"][0]["measured"]
    assert (work / "anomaly.md").read_text().startswith("| digit |")


def test_artifact_command_measures_an_exported_model(trained_run, tmp_path: Path) -> None:
    data = trained_run.argv[trained_run.argv.index("--data") + 1]
    out = tmp_path / "metrics.json"
    argv = ["artifact", str(trained_run.artifact), "--data", data, "--iwae-samples", "16"]
    assert main([*argv, "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["images"] == len(trained_run.data.val)
    assert metrics["iwae_nll"] <= metrics["nelbo"]
    assert 0.0 <= metrics["flagged_fraction"] <= 0.2


def test_digit_and_score_lists_parse() -> None:
    assert digit_list("0-9") == tuple(range(10))
    assert digit_list("3") == (3,) and digit_list("0,2,5") == (0, 2, 5)
    assert score_kinds("nelbo,iwae") == ("nelbo", "iwae")
