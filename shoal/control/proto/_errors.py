"""Errors across the wire: a worker's exception becomes ``{"type", "errno", "message",
"filename"}`` in an answer, and the client raises the same class again.

Only the classes listed here cross the wire; any other exception becomes the nearest listed
class in its MRO (an unexpected one becomes ``OSError(EIO)`` naming its type), so a peer
can never make the client instantiate arbitrary classes.
"""

from __future__ import annotations

import errno
from typing import Any

from ..._errors import (
    PageCorruptedError,
    PageNotFoundError,
    ShoalError,
    StaleLocationError,
    TierFullError,
)
from ..ufs._errors import (
    ObjectChangedError,
    StoreConnectionError,
    StoreServerError,
    StoreTimeoutError,
    ThrottledError,
)
from ._frames import ProtocolError

__all__ = ["decode_error", "encode_error"]

# Shoal's errors that take (message, filename).
_SHOAL_MESSAGE_FIRST = (
    PageCorruptedError,
    PageNotFoundError,
    StaleLocationError,
    TierFullError,
    ObjectChangedError,
    StoreServerError,
    StoreTimeoutError,
    ThrottledError,
)
_BUILTIN_OS = (
    OSError,
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    ConnectionError,
    ConnectionRefusedError,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    TimeoutError,
    InterruptedError,
    BlockingIOError,
)
_PLAIN = (ValueError, TypeError, NotImplementedError, ShoalError)

#: Classes that cross the wire, by name.
WIRE_TYPES: dict[str, type[BaseException]] = {
    cls.__name__: cls
    for cls in (*_SHOAL_MESSAGE_FIRST, StoreConnectionError, ProtocolError, *_BUILTIN_OS, *_PLAIN)
}


def encode_error(exc: BaseException) -> dict[str, Any]:
    """The wire form of ``exc``: its nearest listed class, errno, message and filename."""
    # ShoalError last: a Shoal error that also is a builtin OSError keeps its errno class.
    mro = [c for c in type(exc).__mro__ if c is not ShoalError] + [ShoalError]
    for cls in mro:
        if WIRE_TYPES.get(cls.__name__) is cls and isinstance(exc, cls):
            break
    else:
        return {
            "type": "OSError",
            "errno": errno.EIO,
            "message": f"worker error: {type(exc).__name__}: {exc}",
            "filename": None,
        }
    if isinstance(exc, OSError):
        message = exc.strerror if exc.strerror is not None else str(exc)
        filename = exc.filename if isinstance(exc.filename, str) else None
        code = exc.errno if isinstance(exc.errno, int) else None
        return {"type": cls.__name__, "errno": code, "message": message, "filename": filename}
    return {"type": cls.__name__, "errno": None, "message": str(exc), "filename": None}


def decode_error(doc: Any) -> BaseException:
    """The exception that ``doc`` (from :func:`encode_error`) describes."""
    if not isinstance(doc, dict):
        return ProtocolError(f"malformed error from the peer: {doc!r}")
    cls = WIRE_TYPES.get(doc.get("type"))
    message = doc.get("message")
    message = message if isinstance(message, str) else repr(message)
    code = doc.get("errno")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    filename = doc.get("filename")
    filename = filename if isinstance(filename, str) else None
    if cls is None:
        return OSError(code or errno.EIO, f"{doc.get('type')!r}: {message}", filename)
    if cls in _SHOAL_MESSAGE_FIRST:
        return cls(message, filename)
    if cls is StoreConnectionError:
        return cls(code or errno.ECONNREFUSED, message, filename)
    if cls is ProtocolError:
        return cls(message)
    if issubclass(cls, OSError):
        if code is None:
            return cls(message)
        return cls(code, message) if filename is None else cls(code, message, filename)
    return cls(message)
