"""Named recipes: `--preset NAME` sets these flags; any flag given explicitly wins.

``inspection``, for normal photos of parts, fabrics, cells or scans at their own
resolution, to score uploads for defects (see docs/inspection.md for how it was chosen):

    --architecture spatial   fully convolutional: a latent per 8x8 cell and an anomaly
                             map head, so a 1 px crack at 300 px is still seen
    --image-size 0           work at the data's own resolution (long side at most 512)
    --crop 64, 2 per image   train on random crops: cost does not grow with resolution
    --likelihood gaussian    photos are not black-and-white ink
    --latent-dim 8           latent channels per cell
    --hidden 32,64,64        encoder widths (three halvings: 8x8 cells)
    --batch-size 8           images per step (16 crops)
    --lr 0.002, --warmup-epochs 1, --augment-shift 0 (crops already move)
    --score map              the largest value of the smoothed anomaly map
    --val-fraction 0.2       enough held-out images to choose the map's mix and smoothing on
                             synthetic defects
    --calibration-fraction 0.1  the threshold's own split: 120 of 1,200 images, more
                             than the 99 a 1% false-alarm rate needs
    --iwae-samples 8         the likelihood metrics are a side figure here
    --epochs 60, --max-minutes 14: the whole command within 15 minutes on 2 CPU cores
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "inspection": {
        "architecture": "spatial",
        "image_size": 0,
        "crop": 64,
        "crops_per_image": 2,
        "likelihood": "gaussian",
        "latent_dim": 8,
        "hidden": (32, 64, 64),
        "batch_size": 8,
        "lr": 2e-3,
        "warmup_epochs": 1.0,
        "augment_shift": 0,
        "score": "map",
        "val_fraction": 0.2,
        "calibration_fraction": 0.1,
        "iwae_samples": 8,
        "epochs": 60,
        "max_minutes": 14.0,
    },
}


def preset_values(name: str | None) -> dict[str, Any]:
    """The flag values preset `name` sets (none for None)."""
    if name is None:
        return {}
    return dict(PRESETS[name])
