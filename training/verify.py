"""Export's self-checks; each raises `ExportError` with a one-line reason.

1. The loaded TorchScript module computes what the eager model computes, method by
   method, on real images (the random `elbo`/`iwae` under the same seed).
2. The loaded `score` reproduces the scores the calibration was computed from.
3. The artifact loads and runs in a fresh interpreter where importing `training`
   raises, which is the service's situation: it must never need `training/`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

import app
from training.calibrate import score_images
from training.errors import ExportError
from training.spatial import SpatialVAE

RTOL, ATOL = 1e-4, 1e-4
CHECK_BATCH = 16
ISOLATED_TIMEOUT_S = 300

# Runs first under `python -I -c`: no user site, no PYTHONPATH, no current directory on
# sys.path. The editable install would still find `training`, hence the finder in front.
BLOCK_TRAINING = r"""
import importlib.abc, sys

class BlockTraining(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "training" or name.startswith("training."):
            raise ImportError(f"the service must not import {name}")
        return None

sys.meta_path.insert(0, BlockTraining())
sys.path.insert(0, sys.argv[1])
"""

RUN_ARTIFACT = r"""
from pathlib import Path
import torch
from app.artifact import load_artifact

module, meta = load_artifact(Path(sys.argv[2]))
n, shape = 2, meta.image_shape
x = torch.rand(n, *shape)
mu, logvar = module.encode(x)
outputs = {
    "encode": (mu, (n, meta.latent_dim)),
    "decode": (module.decode(mu), (n, *shape)),
    "elbo": (module.elbo(x, 2), (n,)),
    "iwae": (module.iwae(x, 2), (n,)),
    "score": (module.score(x), (n,)),
    "pixel_nll": (module.pixel_nll(x), (n, *shape)),
}
if hasattr(module, "prior_latents"):
    outputs["prior_latents"] = (module.prior_latents(torch.rand(n), mu), (n, meta.latent_dim))
if hasattr(module, "anomaly_map"):
    outputs["anomaly_map"] = (module.anomaly_map(x), (n, 1, *shape[1:]))
for name, (value, expected) in outputs.items():
    if tuple(value.shape) != expected or not bool(torch.isfinite(value).all()):
        sys.exit(f"{name} returned shape {tuple(value.shape)}, expected finite {expected}")
print("ok")
"""

if TYPE_CHECKING:
    from training.model import AnyVAE


def check_matches_eager(model: AnyVAE, loaded: torch.jit.ScriptModule, images: Tensor) -> None:
    """Every artifact method, scripted vs eager, on the first images of a real batch."""
    x = images[:CHECK_BATCH].cpu()
    u = torch.linspace(0.0, 0.999, len(x))  # every mixture component's share of [0, 1)
    with torch.inference_mode():
        mu = model.encode(x)[0]
        pairs = {
            "encode": (torch.cat(model.encode(x), 1), torch.cat(loaded.encode(x), 1)),
            "decode": (model.decode(mu), loaded.decode(mu)),
            "score": (model.score(x), loaded.score(x)),
            "pixel_nll": (model.pixel_nll(x), loaded.pixel_nll(x)),
            "elbo": (_seeded(model.elbo, x), _seeded(loaded.elbo, x)),
            "iwae": (_seeded(model.iwae, x), _seeded(loaded.iwae, x)),
        }
        if isinstance(model, SpatialVAE):
            pairs["anomaly_map"] = (model.anomaly_map(x), loaded.anomaly_map(x))
        else:
            pairs["prior_latents"] = (model.prior_latents(u, mu), loaded.prior_latents(u, mu))
    for name, (eager, scripted) in pairs.items():
        _require_close(eager, scripted, f"the artifact's {name} differs from the eager model")


def check_scores(loaded: torch.jit.ScriptModule, images: Tensor, expected: Tensor) -> None:
    """The artifact's `score` on the calibration images gives the calibration's scores."""
    scores = score_images(loaded.score, images)  # batched as the calibration was
    _require_close(expected, scores, "the artifact's score does not reproduce its calibration")


def check_isolated(directory: Path) -> None:
    """Load and run the artifact in a fresh `python -I` where `training` is unimportable."""
    try:
        done = run_without_training(RUN_ARTIFACT, str(directory))
    except subprocess.TimeoutExpired:
        raise ExportError(f"loading {directory} in a fresh process timed out") from None
    if done.returncode != 0 or done.stdout.strip() != "ok":
        lines = [line for line in done.stderr.splitlines() if line.strip()] or ["no output"]
        raise ExportError(f"{directory} fails in a process without training: {lines[-1]}")


def run_without_training(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh `python -I` with the repository's `app` importable but not
    `training`; `sys.argv[1]` is the repository root, `sys.argv[2:]` are `args`."""
    repo_root = Path(app.__file__).resolve().parent.parent
    command = [sys.executable, "-I", "-c", BLOCK_TRAINING + code, str(repo_root), *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=ISOLATED_TIMEOUT_S, check=False
    )


def _seeded(method: Callable[[Tensor, int], Tensor], x: Tensor) -> Tensor:
    with torch.random.fork_rng(devices=[]):  # leaves the caller's RNG untouched
        torch.manual_seed(0)
        return method(x, 2)


def _require_close(expected: Tensor, actual: Tensor, message: str) -> None:
    if expected.shape != actual.shape:
        raise ExportError(f"{message}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    if not torch.allclose(actual.to(expected.dtype), expected, rtol=RTOL, atol=ATOL):
        gap = float((actual.to(expected.dtype) - expected).abs().max())
        raise ExportError(f"{message} (max |difference| {gap:.3g})")
