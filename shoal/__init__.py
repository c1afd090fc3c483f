"""Shoal: a data orchestration and caching layer for AI training and model serving."""

from ._errors import ShoalError

__all__ = ["ShoalError"]
__version__ = "0.1.0"
