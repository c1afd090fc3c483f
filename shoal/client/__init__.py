"""The client library: :class:`Client`, in the user's process."""

from ._client import Client, FileInfo, LoadProgress

__all__ = ["Client", "FileInfo", "LoadProgress"]
