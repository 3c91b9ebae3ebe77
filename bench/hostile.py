"""The hostile clients of the soak (`bench.soak`), on raw asyncio streams.

Each kind plays one client from connect to its end and says what it saw: the answer's
status and error code (`"408 read_timeout"`), `closed` (the server closed without an
answer), `reset`, `refused` (no connection), `timeout` (nothing within the kind's
patience) or `hung up` (the client left on purpose, mid-body). Every kind is bounded by
its patience; a soak runs several copies of each in a loop (`Kind.parallel`).

    slow head     a request head, then a byte a second          408 (VAE_HEAD_TIMEOUT_S)
    idle          connects and sends nothing                    closed (--timeout-keep-alive)
    slow body     a head and 100 of 1,000 body bytes, then quiet 408 (VAE_BODY_TIMEOUT_S)
    huge header   one 1 MiB header value                        431 at 16 KiB
    pixel bomb    8 files whose headers promise 4097x4097 px    413 (PNG, JPEG, GIF, TIFF, WebP)
    oversized     a declared 9 MiB body, of which 64 KiB sent   413 from Content-Length
    hang-up       half of a 2 MB upload, then a reset           hung up (the server logs 499)
    flood         `count` connections at once, held 2 s         503 past --limit-concurrency
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import re
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from PIL import Image

HOST = "127.0.0.1"
BOMB_SIDE = 4097  # one row and column past the default VAE_MAX_PIXELS (4096 x 4096)
BOMB_FORMATS = ("PNG", "JPEG", "GIF", "TIFF", "WEBP")
_CODE = re.compile(rb'"code":"([a-z_]+)"')
Send = Callable[[asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True)
class Kind:
    name: str
    play: Callable[[int], Awaitable[str]]  # port -> outcome
    parallel: int  # copies that run at once
    pause_s: float  # between one copy's clients


async def talk(port: int, send: Send, patience: float) -> str:
    """Connect, run `send` while reading the first answer; the answer's status and code."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return "refused"
    sender = asyncio.create_task(_quietly(send, writer))
    try:
        async with asyncio.timeout(patience):
            return await read_answer(reader)
    except TimeoutError:
        return "timeout"
    except ConnectionError:
        return "reset"
    finally:
        sender.cancel()
        writer.close()


async def read_answer(reader: asyncio.StreamReader) -> str:
    """`"<status> <code>"` of one response (`closed` if the server closes first)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return "closed"
    status = head.split(b" ", 2)[1].decode()
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    body = await reader.readexactly(int(length.group(1))) if length else b""
    code = _CODE.search(body)
    return f"{status} {code.group(1).decode()}" if code else status


async def _quietly(send: Send, writer: asyncio.StreamWriter) -> None:
    """A client's writes: the server may close first, which is the point. (`send` is
    called here, in the task: a task cancelled before it starts leaves no coroutine
    that was never awaited.)"""
    with contextlib.suppress(ConnectionError, OSError):
        await send(writer)


def _head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: soak", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def multipart(blobs: list[bytes], suffix: str, boundary: str = "soak") -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
        f'filename="{i}.{suffix}"\r\n\r\n'.encode()
        + blob
        + b"\r\n"
        for i, blob in enumerate(blobs)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def _upload_head(length: int) -> bytes:
    headers = {"Content-Type": "multipart/form-data; boundary=soak", "Content-Length": str(length)}
    return _head("POST", "/encode", headers)


def bombs() -> list[bytes]:
    """One small file per format whose header promises BOMB_SIDE x BOMB_SIDE pixels."""
    made = []
    for fmt in BOMB_FORMATS:
        buffer = io.BytesIO()
        options: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
        options |= {"compression": "tiff_adobe_deflate"} if fmt == "TIFF" else {}
        Image.new("L", (BOMB_SIDE, BOMB_SIDE)).save(buffer, format=fmt, **options)
        made.append(buffer.getvalue())
    return made


def kinds(head_timeout_s: float, body_timeout_s: float, keep_alive_s: float) -> list[Kind]:
    """Every kind but the flood, each with the patience its limit implies."""
    bodies = itertools.cycle(multipart([bomb] * 8, "img") for bomb in bombs())

    async def slow_head(writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /health HTTP/1.1\r\nHost: soak\r\n")
        while True:
            await asyncio.sleep(1.0)
            writer.write(b"X")

    async def slow_body(writer: asyncio.StreamWriter) -> None:
        writer.write(_upload_head(1000) + multipart([b"\x00" * 900], "png")[:100])

    async def huge_header(writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /health HTTP/1.1\r\nHost: soak\r\nX-Flood: ")
        for _ in range(16):
            writer.write(b"a" * 65536)
            await writer.drain()

    async def bomb(writer: asyncio.StreamWriter) -> None:
        body = next(bodies)
        writer.write(_upload_head(len(body)) + body)

    async def oversized(writer: asyncio.StreamWriter) -> None:
        writer.write(_upload_head(9 * 1024 * 1024) + b"\x00" * 65536)

    async def nothing(writer: asyncio.StreamWriter) -> None:
        pass

    def kind(name: str, send: Send, patience: float, parallel: int, pause_s: float) -> Kind:
        return Kind(name, lambda port: talk(port, send, patience), parallel, pause_s)

    return [
        kind("slow head", slow_head, head_timeout_s + 5, 4, 0.5),
        kind("idle", nothing, keep_alive_s + 5, 8, 0.5),
        kind("slow body", slow_body, body_timeout_s + 5, 4, 0.5),
        kind("huge header", huge_header, 10, 1, 0.5),
        kind("pixel bomb", bomb, 30, 1, 0.5),
        kind("oversized", oversized, 30, 1, 0.5),
        Kind("hang-up", hang_up, 1, 0.5),
    ]


async def hang_up(port: int) -> str:
    """Half of a 2 MB upload (past the 1 MiB an upload is held in memory), then a reset."""
    try:
        _, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return "refused"
    with contextlib.suppress(ConnectionError, OSError):
        part = multipart([b"\x00" * 2_000_000], "png")
        writer.write(_upload_head(len(part)) + part[: len(part) // 2])
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
    return "hung up"


async def flood(port: int, count: int, hold_s: float = 2.0) -> list[str]:
    """`count` connections at once, each waiting `hold_s` for an answer: `503 ...` past the
    cap, `held` for those the server kept, then all closed."""

    async def one() -> str:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            return "refused"
        try:
            async with asyncio.timeout(hold_s):
                return await read_answer(reader)
        except TimeoutError:
            return "held"
        except ConnectionError:
            return "reset"
        finally:
            writer.close()

    return list(await asyncio.gather(*(one() for _ in range(count))))
