"""Start-up, readiness and draining: the flags `/ready` and the drain gate read, the
signal hook, and the one-line report of a failed start-up.

uvicorn on SIGTERM closes its listening socket, lets in-flight requests finish, and only
then runs the lifespan's shutdown. To make draining visible from the first moment (so
a load balancer's /ready probe fails and requests that still slip in get a clean 503),
`drain_on_signals` puts a hook in front of the server's own handler: it flips the flags,
then hands the signal on unchanged.

A start-up that fails for a known reason (`StartupError`: no artifact, wrong format,
no such device) must end the server with one line, not a traceback: Starlette reports
a failed lifespan with the formatted traceback, which `StartupFailureReporter`
replaces with the reason the lifespan recorded.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Lifecycle:
    """Shared by the lifespan (writer), the drain gate and `/ready` (readers)."""

    def __init__(self) -> None:
        self.ready = False  # model loaded, warmed up, batcher accepting
        self.draining = False  # shutting down: refuse new work
        self.startup_failure: str | None = None  # the one-line reason start-up failed

    def mark_ready(self) -> None:
        self.ready = True

    def begin_drain(self) -> None:
        self.draining = True
        self.ready = False


@contextmanager
def drain_on_signals(lifecycle: Lifecycle) -> Iterator[None]:
    """While inside, SIGTERM and SIGINT start the drain, then reach the previous handler.

    Only signals some server already handles (a Python callable) are hooked, so the
    process's default behaviour never changes; off the main thread nothing is hooked.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    hooks = {
        sig: _chain(lifecycle, handler) for sig, handler in previous.items() if callable(handler)
    }
    for sig, hook in hooks.items():
        signal.signal(sig, hook)
    try:
        yield
    finally:
        for sig, hook in hooks.items():
            if signal.getsignal(sig) is hook:  # leave alone whatever replaced us since
                signal.signal(sig, previous[sig])


def _chain(
    lifecycle: Lifecycle, handler: Callable[[int, FrameType | None], Any]
) -> Callable[[int, FrameType | None], None]:
    def hook(sig: int, frame: FrameType | None) -> None:
        lifecycle.begin_drain()
        handler(sig, frame)

    return hook


class StartupFailureReporter:
    """ASGI middleware: a failed start-up is reported as its recorded one-line reason."""

    def __init__(self, app: ASGIApp, *, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_reason(message: Message) -> None:
            reason = self.lifecycle.startup_failure
            if message["type"] == "lifespan.startup.failed" and reason:
                message = {**message, "message": reason}
            await send(message)

        await self.app(scope, receive, send_reason)
