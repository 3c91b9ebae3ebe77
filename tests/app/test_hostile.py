"""Hostile clients against a real uvicorn on loopback: each answer is the right one, and
`/health` stays fast while the worst request the limits allow is in flight.

One server for the module, started as the container starts it (`app.connections`
included) with the service's default limits, except the connection timeouts: short
ones here (`TIMEOUTS`), so that slow clients are refused in well under a second. The
probes, sockets and files the tests share are in `tests.app.hostile_clients`.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
import socket
import struct
import time
import zlib
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from app.images import WEBP_MAX_PIXELS
from tests.app.hostile_clients import (
    answer,
    bmp_rle8,
    closed_count,
    connect,
    error_code,
    files,
    health_while,
    image_file,
    metric,
    open_files,
    png_chunk,
    png_with_chunk,
)
from tests.app.server_process import Server, start_server, stop

pytestmark = pytest.mark.slow

MAX_BODY = 8 * 1024 * 1024  # the default VAE_MAX_BODY_BYTES
MAX_HEAD = 16 * 1024  # the default VAE_MAX_HEAD_BYTES
MAX_PIXELS = 4096 * 4096  # the default VAE_MAX_PIXELS
TIMEOUTS = {"VAE_HEAD_TIMEOUT_S": "0.5", "VAE_BODY_TIMEOUT_S": "1"}
KEEP_ALIVE_S = 1
MAX_CONNECTIONS = 24


@pytest.fixture(scope="module")
def server(artifact_dir, tmp_path_factory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("hostile") / "stderr"
    env = {"VAE_TORCH_THREADS": "1", **TIMEOUTS}
    limits = (
        "--timeout-keep-alive",
        str(KEEP_ALIVE_S),
        "--limit-concurrency",
        str(MAX_CONNECTIONS),
    )
    running = start_server(artifact_dir, log, env, args=limits)
    yield running
    stop(running)


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def test_the_issues_webp_bombs_are_refused_before_decoding(server, client):
    """23 lossless WebPs of 4096x4096 pixels, 702 bytes each: 413 from the header alone."""
    bomb = image_file((4096, 4096), "WEBP", lossless=True)
    assert len(bomb) < 1024
    response, probes = health_while(
        server, lambda: client.post("/encode", files=files([bomb] * 23, "webp"))
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "image_too_large"
    assert "WebP" in response.json()["error"]["message"]
    probes.assert_fast()


# --- decompression and pixel bombs ---------------------------------------------------------
BOMB_SIDE = math.isqrt(MAX_PIXELS) + 1  # one row and column more than the limit allows
BOMBS = {  # small files whose headers promise 4097x4097 pixels (WebP: the issue's test above)
    "PNG": lambda: image_file((BOMB_SIDE, BOMB_SIDE), "PNG"),
    "JPEG": lambda: image_file((BOMB_SIDE, BOMB_SIDE), "JPEG"),
    "GIF": lambda: image_file((BOMB_SIDE, BOMB_SIDE), "GIF"),
    "BMP": lambda: bmp_rle8(BOMB_SIDE, BOMB_SIDE),
    "TIFF": lambda: image_file((BOMB_SIDE, BOMB_SIDE), "TIFF", compression="tiff_adobe_deflate"),
}


@pytest.mark.parametrize("fmt", BOMBS)
def test_a_pixel_bomb_in_every_format_is_refused_from_its_header(server, client, fmt):
    bomb = BOMBS[fmt]()
    assert len(bomb) < MAX_PIXELS // 64 and Image.open(io.BytesIO(bomb)).format == fmt
    response, probes = health_while(
        server, lambda: client.post("/anomaly", files=files([bomb] * 8, fmt.lower()))
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"] == {
        "code": "image_too_large",
        "message": f"files[0] (0.{fmt.lower()}): {BOMB_SIDE}x{BOMB_SIDE} is more than "
        f"{MAX_PIXELS} pixels",
        "request_id": response.headers["x-request-id"],
    }
    probes.assert_fast()


def test_a_header_past_pillows_own_bomb_guard_is_413_too(client):
    """65535x65535 in 73 bytes: Pillow refuses to open it at all; still a 413, not a 500."""
    png = bytearray(image_file((28, 28), "PNG"))
    png[12:33] = png_chunk(b"IHDR", struct.pack(">II", 65535, 65535) + bytes(png[24:29]))[4:]
    response = client.post("/encode", files=files([bytes(png)], "png"))
    assert response.status_code == 413, response.text
    assert response.json()["error"]["message"] == f"files[0] (0.png): more than {MAX_PIXELS} pixels"


@pytest.mark.parametrize(
    ("kind", "after_pixels"),
    [(b"iCCP", False), (b"zTXt", False), (b"zTXt", True)],
    ids=["ICC profile", "text", "text after the pixels"],
)
def test_png_metadata_that_inflates_past_pillows_bound_is_413(client, kind, after_pixels):
    """8 MiB of compressed text or ICC profile in an 8 KB PNG: Pillow stops at 1 MiB."""
    bomb = png_with_chunk(kind, b"k\x00\x00" + zlib.compress(b"\x00" * (8 << 20), 9), after_pixels)
    response = client.post("/encode", files=files([bomb], "png"))
    assert response.status_code == 413, response.text
    assert response.json()["error"]["message"] == (
        "files[0] (0.png): its metadata (PNG text or ICC profile) inflates to more than "
        "1048576 bytes"
    )


@pytest.mark.parametrize(
    "image",
    [
        image_file((64, 64), "PCX"),
        b"P5\n%d %d\n255\n" % (BOMB_SIDE, BOMB_SIDE) + b"\x00" * 64,  # PPM: 4097x4097
    ],
    ids=["PCX", "PPM bomb"],
)
def test_formats_pillow_opens_but_the_service_does_not_are_never_parsed(client, image):
    assert Image.open(io.BytesIO(image)).format in ("PCX", "PPM")
    response = client.post("/encode", files=files([image], "img"))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"] == (
        "files[0] (0.img): not a PNG, JPEG, GIF, BMP, WEBP, TIFF image"
    )


def test_health_stays_fast_while_the_largest_allowed_webps_decode(server, client):
    side = math.isqrt(WEBP_MAX_PIXELS)
    allowed = image_file((side, side), "WEBP", lossless=True)
    response, probes = health_while(
        server, lambda: client.post("/encode", files=files([allowed] * 8, "webp"))
    )
    assert response.status_code == 200, response.text
    assert f"resized {side}x{side}->28x28" in response.json()["conversions"][0]
    probes.assert_fast(at_least=10)


def test_health_stays_fast_while_the_largest_allowed_json_is_read(server, client):
    """~8 MiB of JSON: one base64 PNG of noise (orjson, base64 and Pillow on ~6 MB)."""
    rng = np.random.default_rng(0)
    side = int((MAX_BODY * 0.74 / 3) ** 0.5)  # a noise PNG barely compresses
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    noise = buffer.getvalue()
    body = b'{"images": ["' + base64.b64encode(noise) + b'"]}'
    assert MAX_BODY * 0.95 < len(body) <= MAX_BODY
    headers = {"content-type": "application/json"}
    response, probes = health_while(
        server, lambda: client.post("/anomaly", content=body, headers=headers)
    )
    assert response.status_code == 200, response.text
    probes.assert_fast(at_least=5)


def test_a_json_body_of_numbers_is_refused_before_parsing(server, client):
    """8 MiB of `0,0,0,...` would hold the interpreter lock for ~0.2 s in orjson."""
    body = b'{"latents": [[' + b"0," * (MAX_BODY // 2 - 16) + b"0]]}"
    headers = {"content-type": "application/json"}
    response, probes = health_while(
        server, lambda: client.post("/decode", content=body, headers=headers)
    )
    assert response.status_code == 413, response.text
    assert "values" in response.json()["error"]["message"]
    probes.assert_fast()


# --- multipart parts and clients that hang up ---------------------------------------------
PART_HEAD = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
MULTIPART = {"content-type": "multipart/form-data; boundary=b"}


def streamed_part(size: int) -> Iterator[bytes]:
    """One file part of `size` bytes, sent in 64 KiB chunks with no Content-Length."""
    yield PART_HEAD
    for start in range(0, size, 65536):
        yield b"\x00" * min(65536, size - start)
    yield b"\r\n--b--\r\n"


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "streamed"])
def test_a_file_part_larger_than_the_body_limit_is_413(server, client, declared):
    """Declared: refused from Content-Length, unread; streamed: as soon as the bytes pass."""
    if declared:
        upload = files([b"\x00" * (MAX_BODY + 1)], "png")
        send = lambda: client.post("/encode", files=upload)  # noqa: E731
    else:
        send = lambda: client.post(  # noqa: E731
            "/encode", content=streamed_part(MAX_BODY + 1), headers=MULTIPART
        )
    response, probes = health_while(server, send)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"
    message = response.json()["error"]["message"]
    assert message == f"the request body is larger than {MAX_BODY} bytes"
    probes.assert_fast()


def test_a_form_field_larger_than_a_part_may_be_is_413(client):
    """Options are short text; a field is held in memory, so Starlette caps it at 1 MiB."""
    upload = files([image_file((28, 28), "PNG")], "png")
    response = client.post("/encode", files=upload, data={"seed": "1" * (1024 * 1024 + 1)})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "payload_too_large"
    assert "a form field is larger than 1024 KiB" in response.json()["error"]["message"]


def test_clients_that_hang_up_mid_body_leave_nothing_behind(server, client):
    """Half of a 4 MB upload (past the 1 MiB an upload is held in memory: a temporary file),
    then a close or a reset: each ends as a 499, its socket and file are released."""
    hung_up = 10
    head = b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Length: 4000000\r\n"
    head += b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"

    def ended() -> float:
        return metric(client, "vae_requests_total", endpoint="/encode", status="499")

    before = ended()
    descriptors = open_files(server)

    def hang_up() -> None:
        for reset in [False, True] * (hung_up // 2):
            with connect(server) as sock:
                sock.sendall(head + PART_HEAD + b"\x00" * 2_000_000)
                if reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    _, probes = health_while(server, hang_up)
    probes.assert_fast()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
        ended() < before + hung_up or open_files(server) > descriptors
    ):
        time.sleep(0.05)
    assert ended() == before + hung_up
    assert open_files(server) == descriptors
    assert metric(client, "vae_in_flight_requests") == 0
    served = client.post("/encode", files=files([image_file((28, 28), "PNG")], "png"))
    assert served.status_code == 200, served.text
    assert "Traceback" not in server.stderr()


# --- connections ------------------------------------------------------------------------
def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(server):
    with connect(server) as sock:
        received, seconds = answer(sock)
    assert received == b"" and KEEP_ALIVE_S * 0.8 < seconds < KEEP_ALIVE_S + 2


def test_an_idle_keep_alive_connection_is_closed(server):
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        received, seconds = answer(sock)
    assert received.startswith(b"HTTP/1.1 200") and seconds < KEEP_ALIVE_S + 2


def test_a_head_sent_too_slowly_gets_408(server, client):
    """Slowloris: a byte every 50 ms keeps a connection busy, but not past the head timeout."""
    before = closed_count(client, "head_timeout")
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        sock.settimeout(0.05)
        received = b""
        while not received and time.monotonic() - started < 5:
            sock.sendall(b"X")
            with contextlib.suppress(TimeoutError):
                received = sock.recv(65536)
        answered = time.monotonic() - started
        sock.settimeout(10)
        received += answer(sock)[0]
    assert error_code(received) == (408, "read_timeout")
    assert answered < float(TIMEOUTS["VAE_HEAD_TIMEOUT_S"]) + 1
    assert closed_count(client, "head_timeout") == before + 1


def test_a_huge_header_gets_431_without_being_parsed(server, client):
    """The issue's 100 MB header took 12.5 s; now the server stops reading at 16 KiB."""
    before = closed_count(client, "head_too_large")

    def flood() -> bytes:
        with connect(server) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nX-Flood: ")
            try:
                for _ in range(100 * 16):  # 100 MiB, 64 KiB at a time
                    sock.sendall(b"a" * 65536)
            except OSError:
                pass
            return answer(sock)[0]

    received, probes = health_while(server, flood)
    assert error_code(received) == (431, "head_too_large")
    probes.assert_fast()
    assert closed_count(client, "head_too_large") == before + 1


def test_too_many_header_lines_get_431(server):
    lines = b"".join(b"X-%d: 1\r\n" % i for i in range(101))
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\n" + lines + b"\r\n")
        received, _ = answer(sock)
    assert error_code(received) == (431, "head_too_large")
    assert b"more than 100 header lines" in received


def test_a_head_just_under_the_limit_is_served(server):
    padding = b"a" * (MAX_HEAD - 200)
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + padding + b"\r\n\r\n")
        received, _ = answer(sock)
    assert received.startswith(b"HTTP/1.1 200")


def test_a_body_that_stops_halfway_gets_408_and_the_connection_closes(server):
    with connect(server) as sock:
        head = b"POST /sample HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(head + b"Content-Length: 20\r\n\r\n" + b'{"n":')
        received, seconds = answer(sock)
    assert error_code(received) == (408, "read_timeout")
    assert b"x-request-id" in received.lower() and b"connection: close" in received.lower()
    assert seconds < float(TIMEOUTS["VAE_BODY_TIMEOUT_S"]) + 1.5


def test_an_unread_body_that_stops_halfway_is_cut_off(server, client):
    """/health answers without reading the body; the connection closes at the body timeout."""
    before = closed_count(client, "body_timeout")
    closed = False
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
        sock.settimeout(0.2)
        while not closed and time.monotonic() - started < 10:
            try:  # keep sending, slowly: the keep-alive timer never gets to close it
                sock.sendall(b"d")
                with contextlib.suppress(TimeoutError):
                    closed = sock.recv(65536) == b""
            except OSError:
                closed = True
        seconds = time.monotonic() - started
    assert closed and seconds < float(TIMEOUTS["VAE_BODY_TIMEOUT_S"]) + 3
    assert closed_count(client, "body_timeout") == before + 1


def test_pipelined_requests_are_answered_in_order(server):
    requests = [
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-ID: r%d\r\n\r\n" % i for i in range(5)
    ]
    with connect(server) as sock:
        sock.sendall(b"".join(requests))
        received, _ = answer(sock)  # closed by the idle timeout after the last answer
    assert received.count(b"HTTP/1.1 200") == 5
    ids = [received.index(b"x-request-id: r%d" % i) for i in range(5)]
    assert ids == sorted(ids)


def test_connections_beyond_the_cap_get_503_and_those_open_are_served(server, client):
    """uvicorn's own check refused every request on every connection at the cap: a flood of
    idle connections shut out the clients already connected."""
    before = closed_count(client, "too_many_connections")
    upload = files([image_file((28, 28), "PNG")], "png")
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS + 2):
            held.append(connect(server))
        time.sleep(0.1)
        served = client.post("/encode", files=upload)  # on its connection, open 0.1 s ago
        assert served.status_code == 200, served.text
        with connect(server) as sock:
            received, _ = answer(sock)
        assert error_code(received) == (503, "too_many_connections")
        assert b"retry-after: 1" in received.lower()
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)  # the server sees them go
    assert client.get("/health").status_code == 200
    assert closed_count(client, "too_many_connections") >= before + 3
