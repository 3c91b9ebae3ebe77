"""What stays on the event loop: small PNGs decode there, everything else in a thread."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
from PIL import Image

from app import offload

pytestmark = pytest.mark.anyio


def file(size: tuple[int, int], fmt: str = "PNG", mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format=fmt)
    return buffer.getvalue()


def test_a_few_small_pngs_decode_inline(digit_png, b64):
    assert offload.decodes_inline([digit_png(i) for i in range(offload.INLINE_DECODE_IMAGES)])
    assert offload.decodes_inline([b64(digit_png(1)), "data:image/png;base64," + b64(digit_png(2))])


@pytest.mark.parametrize(
    "blobs",
    [
        [file((28, 28))] * (offload.INLINE_DECODE_IMAGES + 1),  # too many
        [file((28, 28), "WEBP")],  # only PNG says its size up front
        [file((4096, 4096), mode="1")],  # a 2 KB PNG that promises 16.7M pixels
        [file((100, 100))],  # small bytes, but more pixels than the budget
        [np.random.default_rng(0).bytes(offload.INLINE_DECODE_BYTES + 1)],  # too many bytes
        [b"not an image"],
        ["%%% not base64"],
    ],
    ids=["count", "webp", "bomb", "pixels", "bytes", "garbage", "bad-base64"],
)
def test_anything_else_decodes_in_a_thread(blobs):
    assert not offload.decodes_inline(blobs)


def test_png_size_reads_the_header():
    assert offload.png_size(file((40, 30))[:24]) == (40, 30)
    assert offload.png_size(file((40, 30), "GIF")[:24]) is None
    assert offload.png_size(b"\x89PNG") is None


async def test_run_stays_on_the_loop_only_when_inline():
    loop_thread = threading.current_thread()
    assert await offload.run(True, threading.current_thread) is loop_thread
    assert await offload.run(False, threading.current_thread) is not loop_thread
    assert await offload.run(False, sum, [1, 2]) == 3


def test_base64_head_is_enough_for_the_header(digit_png):
    text = base64.b64encode(digit_png(3)).decode()
    assert offload.png_size(offload._head(text)) == (28, 28)
