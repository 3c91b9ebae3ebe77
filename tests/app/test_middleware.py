"""Request ids, deadlines, access logs, body limits and client disconnects."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from app.middleware import DisconnectCanceller

pytestmark = pytest.mark.anyio


async def test_request_id_is_echoed_or_made(client):
    echoed = await client.get("/health", headers={"X-Request-ID": "trace-42.a:b"})
    assert echoed.headers["x-request-id"] == "trace-42.a:b"
    made = await client.get("/health")
    assert len(made.headers["x-request-id"]) == 32


async def test_unsafe_request_ids_are_replaced(client):
    response = await client.get("/health", headers={"X-Request-ID": 'x"\n{"forged": 1}'})
    assert response.headers["x-request-id"] != 'x"\n{"forged": 1}'
    assert len(response.headers["x-request-id"]) == 32


async def test_error_bodies_carry_the_request_id(client, assert_error):
    response = await client.post("/sample", json={"n": 0}, headers={"X-Request-ID": "r-1"})
    assert_error(response, 422, "out_of_range")
    assert response.json()["error"]["request_id"] == "r-1"


async def test_access_log_is_one_json_line_without_image_data(client, images, log_lines):
    image = images(1)[0]
    await client.post("/anomaly", json={"images": [image, image]}, headers={"X-Request-ID": "l1"})
    lines = [orjson.loads(line) for line in log_lines if '"l1"' in line]
    assert len(lines) == 1
    line = lines[0]
    assert line["endpoint"] == "/anomaly" and line["status"] == 200 and line["items"] == 2
    assert line["method"] == "POST" and line["latency_ms"] > 0 and line["batch_ids"]
    assert image[:40] not in "".join(log_lines)


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5"])
async def test_bad_timeout_header_is_422(client, assert_error, value):
    """On the API; probes read no header (tests/app/test_probes.py)."""
    response = await client.get("/model", headers={"X-Request-Timeout-Ms": value})
    assert_error(response, 422, "invalid_header")


@pytest.mark.parametrize(
    ("value", "status"),
    [("\N{SUPERSCRIPT TWO}".encode("latin-1"), 422), (b"9" * 5000, 200), (b"00005", 200)],
    ids=["a digit int() refuses", "more digits than int() takes", "leading zeros"],
)
async def test_timeout_header_is_parsed_as_ascii_digits(client, value, status):
    """Both of the first two were a 500: `str.isdigit` passed them, then `int` raised."""
    response = await client.get("/model", headers={"X-Request-Timeout-Ms": value})
    assert response.status_code == status, response.text


@pytest.mark.parametrize(
    ("declared", "status"),
    [("\N{SUPERSCRIPT TWO}".encode("latin-1"), 200), (b"9" * 5000, 413)],
    ids=["a digit int() refuses", "more digits than int() takes"],
)
async def test_odd_content_length_is_never_a_500(client, declared, status):
    """Not a number: ignored (the limit on the bytes received still holds); too long: 413."""
    headers = {"content-type": "application/json", "content-length": declared}
    response = await client.post("/sample", content=b"{}", headers=headers)
    assert response.status_code == status, response.text


async def test_timeout_header_can_only_shorten_the_deadline(serve, slow_model, assert_error):
    async with serve(request_timeout_ms=5_000, max_batch_size=1) as client:
        response = await client.post(
            "/sample", json={"n": 20}, headers={"X-Request-Timeout-Ms": "30"}
        )
        assert_error(response, 504, "timeout")
        text = (await client.get("/metrics")).text
        assert 'vae_timeouts_total{endpoint="/sample"} 1.0' in text
        ok = await client.post("/sample", json={"n": 2}, headers={"X-Request-Timeout-Ms": "99999"})
        assert ok.status_code == 200


async def test_declared_body_over_the_limit_is_413_before_reading(serve, assert_error):
    async with serve(max_body_bytes=2048) as client:
        response = await client.post(
            "/encode", content=b"x" * 4096, headers={"content-type": "application/json"}
        )
        assert_error(response, 413, "payload_too_large")


async def test_streamed_body_over_the_limit_is_413(serve, assert_error, images):
    part = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'

    def chunked(first: bytes):  # no Content-Length: the limit must hold on the stream
        async def chunks():
            yield first
            for _ in range(8):
                yield b"x" * 1024

        return chunks()

    async with serve(max_body_bytes=2048) as client:
        for path, media, first in [
            ("/encode", "application/json", b'{"images": ["'),
            ("/decode", "application/json", b'{"latents": [['),
            ("/anomaly", "multipart/form-data; boundary=b", part),
        ]:
            response = await client.post(
                path, content=chunked(first), headers={"content-type": media}
            )
            assert_error(response, 413, "payload_too_large")
        small = await client.post("/encode", json={"images": images(1)})
        assert small.status_code == 200


async def test_client_hang_up_cancels_the_request():
    """After the body, a disconnect cancels the app: its work is never awaited to the end."""
    started, finished = asyncio.Event(), []

    async def app(scope, receive, send):
        await receive()
        started.set()
        await asyncio.sleep(10)
        finished.append(True)

    messages = [{"type": "http.request", "body": b"", "more_body": False}]
    hang_up = asyncio.Event()

    async def receive():
        if messages:
            return messages.pop()
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        raise AssertionError("nobody is listening")

    task = asyncio.ensure_future(DisconnectCanceller(app)({"type": "http"}, receive, send))
    await started.wait()
    hang_up.set()
    from starlette.requests import ClientDisconnect

    with pytest.raises(ClientDisconnect):
        await asyncio.wait_for(task, 2)
    assert finished == []
