"""Under-store classes by URI scheme, imported only when a store of theirs is opened."""

from __future__ import annotations

import importlib
import re
import threading
from typing import Any

from ._base import UnderStore
from ._options import has_password, redact_uri

__all__ = ["open_store", "register_store", "registered_schemes", "split_uri", "store_class"]

# scheme -> (module, class name, what to install when the import fails)
_known: dict[str, tuple[str, str, str]] = {
    "file": ("shoal.control.ufs._local", "LocalStore", "it is part of shoal"),
    "s3": ("shoal.control.ufs._s3", "S3Store", "pip install boto3"),
}
_classes: dict[str, type[UnderStore]] = {}
_lock = threading.Lock()
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")


def register_store(scheme: str, target: type[UnderStore] | str, *, hint: str = "") -> None:
    """Serve URIs of ``scheme`` with ``target``: an :class:`UnderStore` subclass, or
    ``"package.module:ClassName"`` imported on first use (``hint`` says what to install
    if that import fails). A later registration of the same scheme replaces it."""
    if not isinstance(scheme, str) or not _SCHEME.match(scheme):
        raise ValueError(f"not a URI scheme: {scheme!r}")
    scheme = scheme.lower()
    with _lock:
        if isinstance(target, str):
            module, sep, name = target.partition(":")
            if not sep or not module or not name:
                raise ValueError(
                    f"target must look like 'package.module:ClassName', got {target!r}"
                )
            _known[scheme] = (module, name, hint or f"install the package providing {module}")
            _classes.pop(scheme, None)
        elif isinstance(target, type) and issubclass(target, UnderStore):
            _classes[scheme] = target
        else:
            raise TypeError(
                f"target must be an UnderStore subclass or 'module:Class', got {target!r}"
            )


def registered_schemes() -> list[str]:
    """Schemes served by a registered store (every other fsspec protocol works too)."""
    with _lock:
        return sorted(set(_known) | set(_classes))


def store_class(scheme: str) -> type[UnderStore]:
    """The class serving ``scheme``: a registered one, else :class:`FsspecStore` if fsspec
    knows the protocol.

    Raises
    ------
    ValueError
        Neither Shoal nor fsspec knows the scheme.
    ImportError
        The class's module cannot be imported; the message says what to install.
    """
    scheme = scheme.lower()
    with _lock:
        cls = _classes.get(scheme)
        entry = _known.get(scheme)
    if cls is not None:
        return cls
    if entry is not None:
        module, name, hint = entry
        try:
            cls = getattr(importlib.import_module(module), name)
        except ImportError as exc:
            raise ImportError(f"{scheme}:// stores need {module}: {hint} ({exc})") from exc
        with _lock:
            _classes[scheme] = cls
        return cls
    from fsspec.registry import available_protocols

    if scheme in available_protocols():
        from ._fsspec import FsspecStore

        return FsspecStore
    raise ValueError(
        f"no under-store for scheme {scheme!r}: Shoal serves "
        f"{', '.join(s + '://' for s in registered_schemes())} and absolute paths, "
        "and any protocol fsspec knows (install the fsspec backend that provides it)"
    )


def split_uri(uri: object, what: str = "uri") -> tuple[str | None, str, str]:
    """``(scheme, rest, shown)`` of an under-store URI: the scheme as written (None for a
    bare absolute path), what follows ``://`` (the path itself for an absolute path), and
    the URI as messages may show it (through :func:`redact_uri`).

    Raises ``TypeError`` for a non-str and ``ValueError`` for a NUL byte or for what is
    neither an absolute path nor ``scheme://...``; messages name ``what``.
    """
    if not isinstance(uri, str):
        raise TypeError(f"{what} must be a str, got {type(uri).__name__}")
    shown = redact_uri(uri)
    if "\0" in uri:
        raise ValueError(f"{what} contains a NUL byte: {shown!r}")
    if uri.startswith("/"):
        return None, uri, shown
    scheme, sep, rest = uri.partition("://")
    if not sep or not _SCHEME.match(scheme):
        raise ValueError(
            f"{what} {shown!r} is neither an absolute path nor a URI (scheme://...); "
            "give /abs/dir, file:///abs/dir, s3://bucket/prefix ..."
        )
    return scheme, rest, shown


def open_store(uri: str, **options: Any) -> UnderStore:
    """Open the under-store rooted at ``uri``.

    Parameters
    ----------
    uri
        ``file:///abs/dir`` or ``/abs/dir`` (:class:`LocalStore`), ``s3://bucket/prefix``
        (:class:`S3Store`), or any protocol fsspec knows, such as ``memory://path``
        (:class:`FsspecStore`).
    **options
        Passed to the store's constructor; credentials only by reference (names of
        environment variables or files), never literal secrets.

    Raises
    ------
    ValueError
        A relative path, a malformed URI, a URI with a password in it (credentials go by
        reference), an unknown scheme, or a bad option. Messages show the URI without
        its userinfo.
    ImportError
        The backend's package is missing; the message says what to install.
    """
    scheme, _, shown = split_uri(uri)
    if scheme is None:
        return store_class("file").from_uri(uri, **options)
    if has_password(uri):
        raise ValueError(
            f"{shown!r}: a URI must not carry a password (user:password@); pass it by "
            "reference, as an option naming an environment variable (password_env=...)"
        )
    return store_class(scheme).from_uri(uri, **options)
