"""Progress: a bar on a terminal, periodic plain lines with the time left anywhere else."""

from __future__ import annotations

import re

from training.progress import ProgressMeter


def test_without_a_terminal_progress_is_periodic_lines(monkeypatch) -> None:
    monkeypatch.setattr("training.progress.LOG_EVERY_S", 0.0)
    lines: list[str] = []
    meter = ProgressMeter(300, "epoch 3", lines.append, terminal=False)
    meter.update(100)
    meter.update(100)
    meter.close()
    assert len(lines) == 2
    assert re.fullmatch(r"epoch 3: 200/300 img \(67%\), \d+ img/s, \d+(\.\d)?s left", lines[-1])


def test_lines_come_at_most_every_interval_and_only_when_enabled(monkeypatch) -> None:
    lines: list[str] = []
    meter = ProgressMeter(300, "evaluating", lines.append, terminal=False)
    meter.update(100)  # well within LOG_EVERY_S of the start
    silent = ProgressMeter(300, "epoch 1", lines.append, terminal=False, enabled=False)
    monkeypatch.setattr("training.progress.LOG_EVERY_S", 0.0)
    silent.update(100)  # another rank's: rank 0 reports
    assert lines == []
