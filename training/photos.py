"""`python -m training.photos DIR`: an RGB image set cut from the photos inside scikit-image.

Random square crops of four of scikit-image's test photographs (the astronaut, the
coffee cup, Chelsea the cat, the rocket), each photo's crops in its own integer-named
subfolder, so that they load labelled: ``DIR/0/0000.png``, ... . It is the README's
"your own photos" example, reproducible anywhere: the photos ship inside the
scikit-image wheel, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from training.cli import run_cli
from training.errors import DataError
from training.flags import Parser

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
ZOOM = 3  # a photo is scaled so that its short side is ZOOM crops long


def photo(name: str) -> Image.Image:
    """One of scikit-image's bundled photographs, as an RGB Pillow image."""
    try:
        from skimage import data  # the 'train' extra; the service never needs it
    except ImportError:
        raise DataError("the photo set needs scikit-image: pip install -e '.[train]'") from None
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def build_photo_set(out: Path, count: int, size: int, seed: int = 0) -> Path:
    """`count` crops of `size` x `size` px, spread evenly over `PHOTOS`, under `out`."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(PHOTOS):
        source = photo(name)
        scale = ZOOM * size / min(source.size)
        source = source.resize(
            (round(source.width * scale), round(source.height * scale)), Image.Resampling.LANCZOS
        )
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count // len(PHOTOS) + (label < count % len(PHOTOS))):
            left = int(rng.integers(0, source.width - size + 1))
            top = int(rng.integers(0, source.height - size + 1))
            crop = source.crop((left, top, left + size, top + size))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop.save(folder / f"{index:04d}.png")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(
        prog="python -m training.photos",
        description="Write labelled RGB crops of scikit-image's bundled photos into a folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("out", help="the folder to fill, e.g. photos/")
    parser.add_argument("--count", type=int, default=3000, help="crops in all")
    parser.add_argument("--size", type=int, default=64, help="side of each crop, px")
    parser.add_argument("--seed", type=int, default=0, help="seeds the crop positions")
    args = parser.parse_args(argv)
    if args.count < len(PHOTOS) or args.size < 8:
        parser.error(f"--count must be at least {len(PHOTOS)} and --size at least 8")
    return run_cli(
        lambda: print(
            f"photos: {build_photo_set(Path(args.out), args.count, args.size, args.seed)}"
        )
    )


if __name__ == "__main__":
    sys.exit(main())
