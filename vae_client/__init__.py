"""A typed Python client for the vae-serve HTTP API::

    from vae_client import VAEClient

    with VAEClient("http://localhost:8000") as vae:
        digits = vae.sample(4, seed=1).pil()

The clients are in `client`, what they return in `results`, what they raise in `errors`.
"""

from vae_client.client import AsyncVAEClient, VAEClient
from vae_client.errors import (
    AuthenticationError,
    ClientError,
    OverloadedError,
    ServerError,
    ServerTimeoutError,
    VAEError,
)
from vae_client.results import AnomalyResult, Encoding, Images, ModelInfo

__all__ = [
    "AnomalyResult",
    "AsyncVAEClient",
    "AuthenticationError",
    "ClientError",
    "Encoding",
    "Images",
    "ModelInfo",
    "OverloadedError",
    "ServerError",
    "ServerTimeoutError",
    "VAEClient",
    "VAEError",
]
