"""What may run on the event loop, and the hop off it for everything else.

The loop serves every connection, `/health` included, so no step of a request may hold
it for more than about a millisecond. Each step's cost is bounded before it runs, from
what is already known (bytes, the pixel count in a PNG header, tensor sizes), and
`run` sends whatever may cost more to a worker thread.

A thread only helps where the work releases the interpreter lock: Pillow's codecs,
zlib, torch. orjson, pydantic and base64 hold it for a whole call, so their inputs are
bounded (`app.payloads`) or cut into parts (`app.render`, `app.images`) instead. Pillow's
WebP decoder copies the whole decoded frame while holding it, hence WebP's own pixel
limit (`app.images`). Measurements: docs/benchmarks.md, "The event loop".
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Callable, Sequence
from typing import TypeVar

from anyio import to_thread

T = TypeVar("T")

# Small uploads decode on the loop: a 28x28 PNG takes ~70 us, a thread hop about as much.
# Bytes bound the header parsing (a PNG stuffed with empty chunks costs ~0.4 us a byte),
# pixels the decoding; only PNG says its size at a fixed offset, so only PNG stays here.
INLINE_DECODE_IMAGES = 8
INLINE_DECODE_BYTES = 2 * 1024
INLINE_DECODE_PIXELS = 8 * 32 * 32
INLINE_ENCODE_PIXELS = 4 * 28 * 28  # PNG encoding of model outputs
INLINE_JSON_BYTES = 64 * 1024  # request bodies parsed, and responses written, on the loop

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_HEAD_CHARS = 32  # base64 characters that cover the signature and IHDR's size (24 bytes)


async def run(inline: bool, func: Callable[..., T], *args: object) -> T:
    """`func(*args)` here when `inline`, else in a worker thread."""
    if inline:
        return func(*args)
    return await to_thread.run_sync(func, *args)


def decodes_inline(blobs: Sequence[str | bytes]) -> bool:
    """True when every upload is a small PNG whose header promises few pixels."""
    if len(blobs) > INLINE_DECODE_IMAGES or _upload_bytes(blobs) > INLINE_DECODE_BYTES:
        return False
    pixels = 0
    for blob in blobs:
        size = png_size(_head(blob))
        if size is None:
            return False
        pixels += size[0] * size[1]
    return pixels <= INLINE_DECODE_PIXELS


def png_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR, which the format puts first; None if not a PNG."""
    if len(head) < 24 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _upload_bytes(blobs: Sequence[str | bytes]) -> int:
    return sum(len(blob) * 3 // 4 if isinstance(blob, str) else len(blob) for blob in blobs)


def _head(blob: str | bytes) -> bytes:
    if isinstance(blob, bytes):
        return blob[:24]
    text = blob.partition(",")[2] if blob.startswith("data:") else blob
    try:
        return base64.b64decode(text[:_PNG_HEAD_CHARS])
    except (binascii.Error, ValueError):
        return b""  # the decoder says what is wrong with it
