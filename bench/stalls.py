"""`python -m bench.stalls`: how long each costly step of a request stalls the event loop.

Each step runs in a worker thread, as the service runs it, while this thread wakes every
0.5 ms and records its longest wait: the time the step held the interpreter lock in one
go, which every connection of a real server waits too. Steps that release the lock
(Pillow's PNG decoder, zlib, torch) stall little however long they run; the JSON parser,
orjson, base64 and Pillow's WebP frame copy stall for their whole call. Figures:
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import threading
import time
from collections.abc import Callable

import numpy as np
import orjson
from PIL import Image
from pydantic_core import from_json

from app.artifact import ModelMetadata
from app.config import DEFAULT_MODEL_DIR
from app.images import WEBP_MAX_PIXELS, decode_base64, load_images
from app.render import dumps_in_parts

MIB = 1024 * 1024


def stall_ms(step: Callable[[], object]) -> tuple[float, float]:
    """(total ms, longest wait of this thread in ms) while `step` runs in another thread."""
    done = threading.Event()

    def work() -> None:
        try:
            step()
        finally:
            done.set()

    worker = threading.Thread(target=work)
    started = last = time.perf_counter()
    worst = 0.0
    worker.start()
    while not done.is_set():
        now = time.perf_counter()
        worst, last = max(worst, now - last), now
        time.sleep(0.0005)
    worker.join()
    return 1e3 * (time.perf_counter() - started), 1e3 * worst


def _metadata() -> ModelMetadata:
    """The shipped model's: only its image shape and mode matter here."""
    return ModelMetadata.model_validate_json((DEFAULT_MODEL_DIR / "model.json").read_text())


def _file(side: int, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _decode(data: bytes, metadata: ModelMetadata) -> Callable[[], object]:
    return lambda: load_images([data], metadata, max_pixels=4096 * 4096)


def steps() -> dict[str, Callable[[], object]]:
    metadata = _metadata()
    webp_max = int(WEBP_MAX_PIXELS**0.5)
    webps = {side: _file(side, "WEBP", lossless=True) for side in (1024, webp_max)}
    webp_bomb = _file(4096, "WEBP", lossless=True)
    png = _file(4096, "PNG")
    text = base64.b64encode(np.random.default_rng(0).bytes(6 * MIB)).decode()
    arrays = {"arrays": np.random.default_rng(0).random((256, 1, 28, 28), dtype=np.float32)}
    numbers = b"[" + b"0," * (4 * MIB - 1) + b"0]"
    string = b'["' + b"A" * (8 * MIB) + b'"]'
    return {
        **{f"decode WebP {side}x{side}": _decode(data, metadata) for side, data in webps.items()},
        "Pillow alone: WebP 4096x4096 (refused)": lambda: Image.open(io.BytesIO(webp_bomb)).load(),
        "decode PNG 4096x4096": _decode(png, metadata),
        "JSON parse, 8 MiB string": lambda: from_json(string, allow_inf_nan=False),
        "JSON parse, 8 MiB of 0,0,0 (refused)": lambda: from_json(numbers, allow_inf_nan=False),
        "base64 8 MiB, one call": lambda: base64.b64decode(text, validate=True),
        "base64 8 MiB, decode_base64": lambda: decode_base64(text, "x"),
        "orjson.dumps 256x784 floats, one call": lambda: orjson.dumps(
            arrays, option=orjson.OPT_SERIALIZE_NUMPY
        ),
        "orjson.dumps 256x784 floats, in parts": lambda: dumps_in_parts(arrays),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stalls", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="runs per step")
    args = parser.parse_args()
    print(f"| step | time, ms (median) | longest stall, ms (median / max of {args.repeats}) |")
    print("|---|---:|---:|")
    for name, step in steps().items():
        runs = [stall_ms(step) for _ in range(args.repeats)]
        totals, stalls = [r[0] for r in runs], [r[1] for r in runs]
        median = statistics.median(stalls)
        print(f"| {name} | {statistics.median(totals):.1f} | {median:.1f} / {max(stalls):.1f} |")


if __name__ == "__main__":
    main()
