"""What the hostile-client tests share: raw sockets, answers read to the end, `/health`
probed from its own connection while a hostile request runs, and image files.

`/health` is probed on a thread while the hostile request runs, so that a stalled event
loop shows up as slow probes (the issue's 23 WebP bombs made them wait 5 s). Raw sockets
play the clients that no HTTP library would be.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import httpx
from PIL import Image

from tests.app.server_process import Server

T = TypeVar("T")
HEALTH_P99_S = 0.050


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def answer(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started, received = time.monotonic(), b""
    while chunk := sock.recv(65536):
        received += chunk
    return received, time.monotonic() - started


def error_code(response: bytes) -> tuple[int, str]:
    """(status, error code) of the first response in `response`."""
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(
        next(
            v
            for k, _, v in (line.partition(b": ") for line in head.split(b"\r\n"))
            if k.lower() == b"content-length"
        )
    )
    return status, json.loads(body[:length])["error"]["code"]


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """The sum of `/metrics`' series `name` over those carrying every one of `labels`."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.partition("{")[0] == name and all(label in series for label in wanted):
            total += float(value)
    return total


def closed_count(client: httpx.Client, reason: str) -> float:
    return metric(client, "vae_connections_closed_total", reason=reason)


def open_files(server: Server) -> int:
    """File descriptors the server process holds: sockets, spooled uploads, logs."""
    return len(os.listdir(f"/proc/{server.process.pid}/fd"))


@dataclass
class Probes:
    """/health latencies while a hostile request ran, and on the same machine just before."""

    during: list[float]
    idle: list[float]

    @staticmethod
    def p99(latencies: list[float]) -> float:
        ordered = sorted(latencies)
        return ordered[int(0.99 * (len(ordered) - 1))]

    def assert_fast(self, at_least: int = 1) -> None:
        """p99 under 50 ms more than this machine's idle p99 (~1 ms when quiet): a shared,
        loaded machine slows every probe, a blocked event loop only those during."""
        during, idle = self.p99(self.during), self.p99(self.idle)
        assert len(self.during) >= at_least, (len(self.during), during)
        assert during < HEALTH_P99_S + idle, f"p99 {during * 1e3:.1f} ms, idle {idle * 1e3:.1f} ms"


def probe(client: httpx.Client, latencies: list[float], until: Callable[[], bool]) -> None:
    """/health every 2 ms, at least once, until `until()`."""
    while True:
        started = time.perf_counter()
        assert client.get("/health").status_code == 200
        latencies.append(time.perf_counter() - started)
        if until():
            return
        time.sleep(0.002)


def health_while(server: Server, hostile: Callable[[], T]) -> tuple[T, Probes]:
    """Probe /health for 0.5 s, then run `hostile` on a thread and probe until it returns."""
    probes = Probes([], [])
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=server.url, timeout=10) as client:
        idle_until = time.monotonic() + 0.5
        probe(client, probes.idle, lambda: time.monotonic() > idle_until)
        running = pool.submit(hostile)
        probe(client, probes.during, running.done)
        return running.result(), probes


def image_file(size: tuple[int, int], fmt: str, mode: str = "L", **options) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def files(blobs: list[bytes], suffix: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [
        ("files", (f"{i}.{suffix}", blob, "application/octet-stream"))
        for i, blob in enumerate(blobs)
    ]


def bmp_rle8(width: int, height: int) -> bytes:
    """An 8-bit run-length BMP of black rows, 2 bytes per 255 pixels: Pillow writes BMP
    only uncompressed, where a file's size is its pixel count."""
    row = b"\xff\x00" * (width // 255) + bytes([width % 255, 0]) + b"\x00\x00"  # runs, end of row
    runs = row * height + b"\x00\x01"  # end of bitmap
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(runs), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    head = b"BM" + struct.pack("<IHHI", offset + len(runs), 0, 0, offset)
    return head + info + palette + runs


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_chunk(kind: bytes, data: bytes, after_pixels: bool = False) -> bytes:
    """A 28x28 PNG with one more chunk, after its header (which ends at byte 33) or just
    before its end (the last 12 bytes)."""
    png = image_file((28, 28), "PNG")
    at = len(png) - 12 if after_pixels else 33
    return png[:at] + png_chunk(kind, data) + png[at:]
