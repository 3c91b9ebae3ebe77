"""Per-request facts shared by the middleware (which makes them) and the routes.

Stored in the ASGI scope's `state` under `context`, so routes read it as
`request.state.context` and the access log sees what the routes added.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class RequestContext:
    request_id: str
    deadline: float  # time.monotonic() by which the answer is due
    items: int = 0  # images, latents or samples this request asked for
    batch_ids: list[int] = field(default_factory=list)  # the model batches it ran in
    model: str = ""  # the model and version that served it, if any
    version: str = ""

    def remaining(self) -> float:
        return self.deadline - time.monotonic()
