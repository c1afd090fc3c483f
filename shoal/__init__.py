"""Shoal: a data orchestration and caching layer for AI training and model serving."""

from typing import Any

from ._errors import ShoalError

__all__ = ["Client", "ShoalError"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The client pulls in the engine and the control plane: loaded on first use only.
    if name == "Client":
        from .client import Client

        globals()["Client"] = Client
        return Client
    raise AttributeError(f"module 'shoal' has no attribute {name!r}")
