"""Progress that reads well both in a terminal and in a log file.

On a terminal: a tqdm bar (done, rate, time left) that clears itself when done. Anywhere
else (a log file, a pipe, a CI job), where a bar's carriage returns would be noise: a
plain line through `log` every `LOG_EVERY_S` seconds with done/total, rate and time
left, so that a long epoch or evaluation still shows that it is moving.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from tqdm import tqdm

from training.metrics import format_seconds

Log = Callable[[str], None]
LOG_EVERY_S = 30.0


class ProgressMeter:
    """Progress through `total` units of work (images), shown one of the two ways above."""

    def __init__(
        self,
        total: int,
        what: str,
        log: Log,
        *,
        unit: str = "img",
        enabled: bool = True,
        terminal: bool | None = None,
    ) -> None:
        self.total, self.what, self.unit, self.log = total, what, unit, log
        self.enabled = enabled
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.done = 0
        self.started = self._last_line = time.monotonic()
        self._bar = None
        if enabled and self.terminal:  # counted in units, so tqdm's own rate reads img/s
            self._bar = tqdm(total=total, desc=what, unit=unit, leave=False)

    def update(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif self.enabled and time.monotonic() - self._last_line >= LOG_EVERY_S:
            self._last_line = time.monotonic()
            self.log(self.line())

    def show(self, **figures: str) -> None:
        """Running figures beside the bar (a terminal only: log lines have their own)."""
        if self._bar is not None:
            self._bar.set_postfix(figures)

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.done / max(elapsed, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        share = 100 * self.done / max(self.total, 1)
        return (
            f"{self.what}: {self.done}/{self.total} {self.unit} ({share:.0f}%), "
            f"{rate:.0f} {self.unit}/s, {format_seconds(left)} left"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
