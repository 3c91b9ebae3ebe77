"""The parts benchmark: defects on aligned views of one object, as over a fixture.

`python -m training.evaluate parts`. An inspection camera over a fixture sees the same
part in nearly the same place every time: what is normal depends on where in the frame
a patch lies, unlike the texture benchmark's random crops of a surface. Here each
photograph that scikit-image ships inside its wheel (nothing is downloaded) stands for
the part: its central square is scaled to the view, and every view moves it a little,
as a part sits in a fixture, and relights it, as a camera's exposure drifts:

    placement  a shift of up to SHIFT px each way and a turn of up to TURN degrees
               (`--shift` and `--turn` loosen the fixture: up to 32 px and 180 degrees,
               a part laid on a belt any way round)
    lighting   a gain in 1 +- GAIN and an offset in +- OFFSET, then noise of NOISE (sd)

    normal     1,000 views: the training images (600 train, 200 validate, 200 calibrate)
    test       120 new views, and 240 more with one synthetic defect each
               (`training.defects`: scratch, crack, hole, stain, missing, paste, in turn),
               with its pixel mask
    fresh      600 more new views: new normal images exchangeable with the calibration
               images, on which the promised false-alarm rate is measured

The test views come from the same set-up as the training views (the held-out normal
views and the fresh ones measure the same rate here); the texture benchmark's held-out
region is what measures a change of set-up.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from training.defects import KINDS
from training.textures import TextureSet, as_tensor, draw_defects, photograph

GREY = ("coins", "camera")  # a tray of coins: parts on a background; a scene with a figure
COLOUR = ("coffee", "retina")  # a cup on a saucer; a fundus photograph, as a scan is taken
PARTS = GREY + COLOUR
SHIFT = 4  # px at the view's size
TURN = 2.0  # degrees
MAX_SHIFT = 32
MAX_TURN = 180.0
GAIN = 0.1
OFFSET = 0.03
NOISE = 0.01


def part_image(name: str, size: int, shift: int = SHIFT, turn: float = TURN) -> Image.Image:
    """The photograph's central square, scaled so that a view of `size` px, shifted by up
    to `shift` px and turned by up to `turn` degrees, stays inside it (no corner left
    blank by the turn): an 8-bit Pillow image (L or RGB)."""
    pixels = np.round(photograph(name) * 255.0).astype(np.uint8)
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = pixels[top : top + side, left : left + side]
    image = Image.fromarray(square[:, :, 0] if square.shape[2] == 1 else square)
    outer = size + 2 * (shift + _margin(size, turn))
    return image.resize((outer, outer), Image.Resampling.LANCZOS)


def _margin(size: int, turn: float) -> int:
    """Pixels a turn of up to `turn` degrees can blank at the edge of a square of about
    `size` (the corners reach furthest out at 45 degrees)."""
    return math.ceil(size * math.sin(math.radians(min(turn, 45.0)))) + 1


def views(
    part: Image.Image,
    count: int,
    size: int,
    rng: np.random.Generator,
    shift: int = SHIFT,
    turn: float = TURN,
) -> np.ndarray:
    """`count` views (N, size, size, C) of `part` in [0, 1], quantised to 8 bits as
    uploads are: each turned, shifted, relit and noisy by its own draw."""
    margin = (part.width - size) // 2 - shift
    out = []
    for _ in range(count):
        turned = part.rotate(float(rng.uniform(-turn, turn)), Image.Resampling.BICUBIC)
        dx, dy = (int(v) + margin for v in rng.integers(0, 2 * shift + 1, 2))
        crop = np.asarray(turned.crop((dx, dy, dx + size, dy + size)), dtype=np.float32) / 255.0
        crop = crop[:, :, None] if crop.ndim == 2 else crop
        lit = crop * rng.uniform(1 - GAIN, 1 + GAIN) + rng.uniform(-OFFSET, OFFSET)
        lit = lit + rng.normal(0.0, NOISE, lit.shape)
        out.append(np.round(np.clip(lit, 0.0, 1.0) * 255.0) / 255.0)
    return np.stack(out).astype(np.float32)


def build_part_set(
    name: str,
    size: int = 128,
    train: int = 1000,
    normal: int = 120,
    per_kind: int = 40,
    seed: int = 0,
    fresh: int = 600,
    shift: int = SHIFT,
    turn: float = TURN,
) -> TextureSet:
    """Views of part `name` and the defects, in the texture benchmark's layout; `shift`
    (px) and `turn` (degrees) bound each view's placement."""
    if not (0 <= shift <= MAX_SHIFT and 0.0 <= turn <= MAX_TURN):
        raise ValueError(f"a shift is 0 to {MAX_SHIFT} px and a turn 0 to {MAX_TURN:g} degrees")
    rng = np.random.default_rng(seed)
    part = part_image(name, size, shift, turn)
    donor = np.asarray(part, dtype=np.float32) / 255.0  # `paste` takes another place of it

    def draw(count: int) -> np.ndarray:
        return views(part, count, size, rng, shift, turn)

    defective, masks, kinds = draw_defects(draw(per_kind * len(KINDS)), rng, donor)
    return TextureSet(
        name=name,
        train=as_tensor(draw(train)),
        normal=as_tensor(draw(normal)),
        defective=defective,
        masks=masks,
        kinds=kinds,
        fresh=as_tensor(draw(fresh)),
    )
