"""Error answers become typed exceptions carrying the service's code, message and request id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from vae_client import (
    AsyncVAEClient,
    AuthenticationError,
    ClientError,
    OverloadedError,
    ServerError,
    ServerTimeoutError,
    VAEClient,
    VAEError,
)

pytestmark = pytest.mark.anyio


def error(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"error": {"code": code, "message": f"{code} happened", "request_id": "body-id"}}
    return httpx.Response(status, json=body, headers=headers)


def raised(answer: httpx.Response) -> VAEError:
    transport = httpx.MockTransport(lambda request: answer)
    with (
        VAEClient("http://vae.test", transport=transport) as client,
        pytest.raises(VAEError) as info,
    ):
        client.decode([[0.0]])
    return info.value


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (422, "latent_size_mismatch", ClientError),
        (413, "too_many_images", ClientError),
        (401, "unauthorized", AuthenticationError),
        (503, "queue_full", OverloadedError),
        (504, "timeout", ServerTimeoutError),
        (500, "non_finite_output", ServerError),
    ],
)
def test_status_picks_the_exception_and_the_body_fills_it(
    status: int, code: str, kind: type[VAEError]
) -> None:
    exc = raised(error(status, code))
    assert type(exc) is kind
    assert (exc.status, exc.code, exc.message) == (status, code, f"{code} happened")
    assert exc.request_id == "body-id"
    assert str(exc) == f"{status} {code}: {code} happened"


def test_tree_groups_client_and_server_faults() -> None:
    assert issubclass(AuthenticationError, ClientError)
    assert issubclass(OverloadedError, ServerError) and issubclass(ServerTimeoutError, ServerError)
    assert not issubclass(ClientError, ServerError)


def test_request_id_header_wins_over_the_body() -> None:
    assert raised(error(422, "invalid_image", {"X-Request-ID": "hdr-id"})).request_id == "hdr-id"


def test_overloaded_carries_retry_after_in_seconds() -> None:
    exc = raised(error(503, "queue_full", {"Retry-After": "5"}))
    assert isinstance(exc, OverloadedError) and exc.retry_after == 5.0


def test_retry_after_as_an_http_date() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    exc = raised(error(503, "shutting_down", {"Retry-After": when}))
    assert isinstance(exc, OverloadedError) and exc.retry_after is not None
    assert 25 <= exc.retry_after <= 30


def test_overloaded_without_retry_after() -> None:
    exc = raised(error(503, "not_ready"))
    assert isinstance(exc, OverloadedError) and exc.retry_after is None


def test_an_answer_without_the_error_body_still_raises_typed() -> None:
    exc = raised(httpx.Response(502, text="<html>502 Bad Gateway</html>"))
    assert type(exc) is ServerError
    assert (exc.code, exc.message, exc.request_id) == (
        "http_502", "<html>502 Bad Gateway</html>", None,
    )  # fmt: skip
    empty = raised(httpx.Response(404))
    assert (empty.code, empty.message) == ("http_404", "Not Found")


async def test_async_client_raises_the_same() -> None:
    transport = httpx.MockTransport(lambda request: error(401, "unauthorized"))
    async with AsyncVAEClient("http://vae.test", transport=transport) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.sample(1)
    assert info.value.code == "unauthorized"
