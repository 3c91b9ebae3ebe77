"""The model side of the service: device, artifact, and the `run(op, batch)` the batcher calls.

Ops, each a batch of rows in and a tuple of per-row outputs out (all float32, on CPU)::

    encode         images (N, C, H, W) -> mu (N, D), logvar (N, D)
    decode         latents (N, D)      -> x_mean (N, C, H, W)
    score          images (N, C, H, W) -> score (N,)
    score_heatmap  images (N, C, H, W) -> score (N,), heat map (N, 1, H, W): the artifact's
                   `anomaly_map` where it has one, else its channel-summed `pixel_nll`
    sample         noise (N, 1 + D)    -> latents (N, D), x_mean (N, C, H, W)

Image ops call the module on at most `PIXEL_BUDGET` pixels at a time: a batch of large
images (an inspection model at 512 px) would otherwise hold activations of gigabytes.
With `batch_invariant` (the default) every call is also padded to the row count that
makes its rows independent of each other (`app.invariance`).

Every batch is padded up to its bucket (`app.buckets`); padded rows are computed and
dropped. The runtime times every call per op and bucket (warm-up measures them all), and
`plan` uses those times to tell the batcher when a batch runs sooner split at a bucket
than padded whole. On CUDA the
rows are staged in pinned host memory, copied without blocking, and the outputs come
back in one device-to-host copy: one synchronisation per batch. On CPU the same code
runs and the copies are no-ops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from app.artifact import ArtifactError, ModelMetadata, load_artifact
from app.buckets import BucketCosts, Buckets
from app.config import Settings
from app.invariance import Invariance, Rows, find_quantum, padded_call

logger = logging.getLogger("vae.runtime")

OPS = ("encode", "decode", "score", "score_heatmap", "sample")
WARMUP_PASSES = 2  # TorchScript's profiling executor optimises a graph after its first runs
SCORE_ROWS = 128  # decoder rows per `score` call: rows x score_samples
PIXEL_BUDGET = 1 << 20  # input pixels per module call of an image op
ROW_BY_ROW_PIXELS = 1 << 14  # from 128x128 on, CPU calls take one image at a time


Op = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


def _heat_map(module: torch.jit.ScriptModule) -> Callable[[torch.Tensor], torch.Tensor]:
    """The artifact's heat map, (N, 1, H, W): `anomaly_map`, else the summed `pixel_nll`."""
    if hasattr(module, "anomaly_map"):
        return module.anomaly_map
    return lambda x: module.pixel_nll(x).sum(dim=1, keepdim=True)


def _chunked(call: Op, size: int) -> Op:
    """`call` on at most `size` rows at a time, the outputs joined."""

    def run(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = [call(part) for part in x.split(size)]
        if len(parts) == 1:
            return parts[0]
        return tuple(torch.cat(outputs) for outputs in zip(*parts, strict=True))

    return run


def rows_per_call(metadata: ModelMetadata, device: torch.device) -> int:
    """Images per module call: as many as `PIXEL_BUDGET` holds; one at a time for large
    images on CPU, where a batch of them runs no faster than its images one by one and a
    single shape is batch invariant by construction."""
    pixels = metadata.height * metadata.width
    if device.type == "cpu" and pixels >= ROW_BY_ROW_PIXELS:
        return 1
    return max(1, PIXEL_BUDGET // pixels)


def _calls(
    module: torch.jit.ScriptModule, metadata: ModelMetadata, device: torch.device
) -> dict[str, tuple[Op, int]]:
    """Each op as one module call on a chunk of rows, and the most rows a chunk holds."""
    per_call = rows_per_call(metadata, device)
    # `score` runs the decoder on rows x score_samples: past ~128 decoder rows a bigger
    # call only spills activations out of cache (per-image cost 6.5 ms at batch 8,
    # 12.7 ms at 64 unchunked), so it is called in chunks
    score_chunk = max(1, min(per_call, SCORE_ROWS // metadata.calibration.score_samples))
    heat = _heat_map(module)

    def score_heatmap(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = heat(x)
        if metadata.calibrated_map:  # its score is the map's peak: one pass, not two
            return maps.flatten(1).amax(1), maps
        return module.score(x), maps

    def sample(noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        u, eps = noise[:, 0], noise[:, 1:]  # see app.latents.prior_noise
        z = module.prior_latents(u, eps) if hasattr(module, "prior_latents") else eps
        return z, module.decode(z)

    heat_chunk = per_call if metadata.calibrated_map else score_chunk
    return {
        "encode": (lambda x: tuple(module.encode(x)), per_call),
        "decode": (lambda z: (module.decode(z),), per_call),
        "score": (lambda x: (module.score(x),), score_chunk),
        "score_heatmap": (score_heatmap, heat_chunk),
        "sample": (sample, per_call),
    }


class StartupError(Exception):
    """The service cannot start; the message is the one line an operator reads."""


def pick_device(requested: str) -> torch.device:
    """`auto` is CUDA when present; an explicit CUDA device must exist."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise StartupError(f"VAE_DEVICE={requested} but CUDA is not available")
        if (device.index or 0) >= torch.cuda.device_count():
            raise StartupError(
                f"VAE_DEVICE={requested} but there are only "
                f"{torch.cuda.device_count()} CUDA devices"
            )
    return device


class ModelRuntime:
    """The loaded artifact on its device, and the batched ops the worker thread runs."""

    def __init__(
        self,
        module: torch.jit.ScriptModule,
        metadata: ModelMetadata,
        device: torch.device,
        buckets: Buckets,
        batch_invariant: bool = False,
    ) -> None:
        self.module = module
        self.metadata = metadata
        self.device = device
        self.buckets = buckets
        self.costs = BucketCosts(buckets)
        self._staging: dict[tuple[int, ...], torch.Tensor] = {}
        calls = _calls(module, metadata, device)
        self.invariance = (
            self._check_invariance(calls) if batch_invariant else Invariance(dict.fromkeys(OPS))
        )
        self._ops: dict[str, Op] = {
            op: _chunked(padded_call(call, self.invariance.quantum(op)), size)
            for op, (call, size) in calls.items()
        }

    def _check_invariance(self, calls: dict[str, tuple[Op, int]]) -> Invariance:
        with torch.inference_mode():
            return Invariance(
                {
                    op: find_quantum(call, self._probe_rows(op), self.buckets.sizes, size)
                    for op, (call, size) in calls.items()
                }
            )

    def _probe_rows(self, op: str) -> Rows:
        """Random input rows of `op` on the model's device, in the range real inputs take."""
        shape, device = self.row_shape(op), self.device

        def rows(count: int, generator: torch.Generator) -> torch.Tensor:
            if op in ("decode", "sample"):
                values = torch.randn((count, *shape), generator=generator)
                if op == "sample":  # the first column is uniform: see app.latents.prior_noise
                    values[:, 0] = torch.rand(count, generator=generator)
            else:
                values = torch.rand((count, *shape), generator=generator)
            return values.to(device)

        return rows

    @classmethod
    def load(cls, directory: Path, settings: Settings) -> ModelRuntime:
        """Pick the device, set threads, load the artifact; `StartupError` on any failure."""
        device = pick_device(settings.device)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        try:
            module, metadata = load_artifact(directory, device)
        except ArtifactError as exc:
            raise StartupError(f"cannot load the model artifact: {exc}") from None
        runtime = cls(module, metadata, device, settings.buckets, settings.batch_invariant)
        fields: dict[str, object] = {
            "model": metadata.name,
            "device": str(device),
            "dir": str(directory),
        }
        if settings.batch_invariant:
            fields["batch_invariant"] = runtime.invariance.holds
            fields["row_quanta"] = runtime.invariance.quanta
        logger.info("model loaded", extra={"fields": fields})
        if settings.batch_invariant and not runtime.invariance.holds:
            logger.warning("batch invariance not found", extra={"fields": fields})
        return runtime

    @property
    def latent_dim(self) -> int:
        return self.metadata.latent_dim

    def row_shape(self, op: str) -> tuple[int, ...]:
        """The shape of one input row of `op`."""
        if op == "sample":
            return (1 + self.latent_dim,)
        return (self.latent_dim,) if op == "decode" else self.metadata.image_shape

    def run(self, op: str, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The batcher's `RunFn`: `batch` (B, ...) on CPU -> per-row outputs on CPU."""
        rows = batch.shape[0]
        started = time.perf_counter()
        with torch.inference_mode():
            staged = self._stage(batch)
            outputs = self._to_host(self._ops[op](staged), rows, staged)
        self.costs.record(op, staged.shape[0], time.perf_counter() - started)
        return outputs

    def plan(self, op: str, available: int) -> int:
        """The batcher's `PlanFn`: how many of `available` queued rows the next batch takes."""
        return self.costs.plan(op, available)

    def _stage(self, batch: torch.Tensor) -> torch.Tensor:
        """Copy `batch` into a reusable (pinned, on CUDA) buffer of bucket size, then to device.

        Reusing the buffer is safe: one worker thread runs batches one after another, and
        `_to_host` waits for the device before the next batch can overwrite it.
        """
        rows = batch.shape[0]
        shape = (self.buckets.of(rows), *batch.shape[1:])
        buffer = self._staging.get(shape)
        if buffer is None:
            pin = self.device.type == "cuda"
            buffer = torch.zeros(shape, dtype=torch.float32, pin_memory=pin)
            self._staging[shape] = buffer
        buffer[:rows].copy_(batch)
        return buffer.to(self.device, non_blocking=True)

    def _to_host(
        self, outputs: tuple[torch.Tensor, ...], rows: int, staged: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Drop padded rows; on CUDA bring all outputs back in one copy (the batch's sync)."""
        kept = [output[:rows] for output in outputs]
        if self.device.type == "cpu":  # an output that aliases the staging buffer (an
            # identity method) would change under its caller when the next batch is staged
            buffer = staged.untyped_storage().data_ptr()
            return tuple(
                output.clone() if output.untyped_storage().data_ptr() == buffer else output
                for output in kept
            )
        flat = torch.cat([output.reshape(rows, -1) for output in kept], dim=1).cpu()
        widths = [output[0].numel() for output in kept]
        parts = flat.split(widths, dim=1)
        return tuple(part.reshape(output.shape) for part, output in zip(parts, kept, strict=True))

    def warmup_batches(self) -> list[tuple[str, torch.Tensor]]:
        """(op, rows) for every op at every bucket, each `WARMUP_PASSES` times."""
        batches = []
        for op in OPS:
            for size in self.buckets.sizes:
                rows = torch.full((size, *self.row_shape(op)), 0.5)
                batches += [(op, rows)] * WARMUP_PASSES
        return batches


async def warm_up(submit: Callable, runtime: ModelRuntime) -> float:
    """Run every op at every bucket through `submit` (the batcher); returns seconds taken.

    Going through the batcher warms the worker thread that serves traffic (on CUDA its
    library handles are per thread). A failure here is an incompatible artifact.
    """
    started = time.perf_counter()
    for op, rows in runtime.warmup_batches():
        try:
            await submit(op, rows)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StartupError(
                f"the model failed its warm-up ({op} at batch size {len(rows)}): {reason}"
            ) from None
    return time.perf_counter() - started
