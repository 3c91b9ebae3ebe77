"""`--max-minutes`: one clock for the whole command, and the schedules that follow it.

The budget covers everything `python -m training` does once it starts: loading,
training, evaluation, calibration and export. Training stops early enough to leave the
rest their time: the evaluation's estimated cost (from the per-epoch validation pass,
which runs the same decoder over the same images), at most `EVAL_SHARE` of the budget,
plus a reserve for calibration, scripting and the export's checks (`export_reserve`). The
evaluation then fits itself into what is left (`training.metrics.plan_evaluation`).

`Pace` says where a run stands on its schedules, as a fraction in [0, 1]: the larger of
the steps taken over the steps of `--epochs`, and (under a budget) the training time
used over the training time allowed. The cosine learning rate and the KL warm-up are
functions of it, so a run that the budget cuts short still anneals its learning rate
and completes its warm-up. The clock is read at sync points only, about every
`SYNC_SECONDS` (counted in steps) and at the end of each epoch, and extrapolated by
steps in between. Under
torchrun rank 0 reads it and broadcasts it: every rank uses the same fraction at every
step, so the replicas stay identical, and the stop decision costs one broadcast per
sync point instead of a collective per step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from training.distributed import ALONE, World

EVAL_SHARE = 0.25  # of the budget, at most, held back for the evaluation
EXPORT_RESERVE_S = 4.0  # calibration, TorchScript, and the export's own checks
EXPORT_SHARE = 0.5
AFTER_SHARE = 0.5  # at most, held back for the evaluation and the work after it
SYNC_SECONDS = 10.0  # between sync points: what a stop may overrun by
MAX_SYNC_STEPS = 1000


@dataclass
class Budget:
    """The command's time limit; unbounded when `minutes` is None."""

    minutes: float | None
    started: float = field(default_factory=lambda: time.monotonic())
    # seconds from the process's start to the first use of the budget, mostly importing
    # torch, which the export's fresh-interpreter check does once more
    startup: float = 0.0

    @property
    def bounded(self) -> bool:
        return self.minutes is not None

    @property
    def seconds(self) -> float:
        return math.inf if self.minutes is None else 60.0 * self.minutes

    @property
    def deadline(self) -> float:
        return self.started + self.seconds

    def left(self) -> float:
        """Seconds until the deadline (inf when unbounded; negative once past it)."""
        return self.deadline - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def training_deadline(self, eval_seconds: float | None, after_seconds: float = 0.0) -> float:
        """When training must stop to leave the evaluation (estimated to take
        `eval_seconds`, unknown before the first epoch), the work after it that cannot be
        scaled down (`after_seconds`: calibration, a spatial model's choice of its map)
        and the export their time. The evaluation adapts to what it is left, so its share
        is capped; the rest is not, but training keeps at least half of the budget."""
        if not self.bounded:
            return math.inf
        cap = EVAL_SHARE * self.seconds
        reserve = cap if eval_seconds is None else min(cap, eval_seconds)
        reserve = min(reserve + after_seconds, AFTER_SHARE * self.seconds)
        return self.deadline - reserve - self.export_reserve()

    def export_reserve(self) -> float:
        """Seconds held back for calibration and export: what the evaluation may not use.
        The export starts a fresh interpreter, so a slow start (a busy machine) means a
        slow export; at most half the budget."""
        return min(EXPORT_RESERVE_S + 1.5 * self.startup, EXPORT_SHARE * self.seconds)


def kl_warmup(step: int, warmup_steps: int) -> float:
    """Linear KL warm-up from ~0 to 1 over `warmup_steps` optimizer steps."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


class Pace:
    """The schedules' clock: a fraction of the run, agreed by every rank (see above)."""

    def __init__(
        self,
        total_steps: int,
        warmup_steps: int,
        budget: Budget,
        start_fraction: float = 0.0,
        first_step: int = 0,
        world: World = ALONE,
    ) -> None:
        self.total_steps = max(1, total_steps)
        self.warmup_steps = warmup_steps
        self.budget = budget
        self.world = world
        self.start_fraction = start_fraction  # a resumed run's, from its checkpoint
        self.started = time.monotonic()
        self.stop_at = budget.training_deadline(None)
        self.stopped = False
        self.timed_fraction = 0.0  # of the time allowed, at the last sync point
        self._rate = 0.0  # timed fraction per step, over the last sync interval
        self._synced_step, self._synced_at = first_step, self.started
        self._next_sync = first_step + 1  # the first step's time sets the interval

    def fraction(self, step: int) -> float:
        """How far the run is along its schedules at `step`, in [0, 1]."""
        by_steps = step / self.total_steps
        timed = min(1.0, self.timed_fraction + (step - self._synced_step) * self._rate)
        resumed = self.start_fraction + (1.0 - self.start_fraction) * timed
        return min(1.0, max(by_steps, resumed, self.start_fraction))

    def kl_weight(self, step: int) -> float:
        """The KL warm-up factor: by steps, or as far along as the run's time is."""
        by_steps = kl_warmup(step, self.warmup_steps)
        if self.warmup_steps <= 0 or not self.budget.bounded:
            return by_steps
        share = self.warmup_steps / self.total_steps  # of the run spent warming up
        return min(1.0, max(by_steps, self.fraction(step) / share))

    def seconds_left(self) -> float:
        """Until training must stop for the budget (inf without one)."""
        return self.stop_at - time.monotonic()

    def set_eval_estimate(self, seconds: float, after_seconds: float = 0.0) -> None:
        """Move the training deadline once the evaluation's cost (and what must follow
        it) is known."""
        self.stop_at = self.budget.training_deadline(seconds, after_seconds)

    def sync(self, step: int) -> bool:
        """A sync point: read the clock (rank 0), agree on it; True when training must stop.

        Rank 0 also sets the next sync point, `SYNC_SECONDS` of steps ahead by the step
        time it measures, so every rank syncs at the same steps however fast they run.
        """
        if not self.budget.bounded:  # every rank knows all there is to know already
            return False
        now = time.monotonic()
        allowed = max(self.stop_at - self.started, 1e-9)
        timed = min(1.0, (now - self.started) / allowed)
        steps = step - self._synced_step
        rate, interval = 0.0, 1.0
        if steps > 0:
            rate = (timed - self.timed_fraction) / steps
            step_seconds = max((now - self._synced_at) / steps, 1e-9)
            interval = min(MAX_SYNC_STEPS, max(1.0, SYNC_SECONDS / step_seconds))
        vote, timed, rate, interval = self.world.from_main(
            [float(now >= self.stop_at), timed, rate, interval]
        )
        self.timed_fraction, self._rate = timed, rate
        self._synced_step, self._synced_at = step, now
        self._next_sync = step + round(interval)
        self.stopped = self.stopped or vote > 0
        return self.stopped

    def due(self, step: int) -> bool:
        """Whether `step` is a sync point within an epoch (epochs end with one anyway)."""
        return self.budget.bounded and step >= self._next_sync
