"""Object paths inside an under-store: relative to the store's root, ``/``-separated,
never climbing out of it."""

from __future__ import annotations

import os

__all__ = ["is_normal_key", "normalize_key", "normalize_prefix"]


def _check(path: object, what: str) -> str:
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"{what} must be a str, got {type(path).__name__}")
    if "\0" in path:
        raise ValueError(f"{what} contains a NUL byte: {path!r}")
    if path.startswith("/"):
        raise ValueError(
            f"{what} {path!r} is absolute; under-store paths are relative to the store root"
        )
    return path


def _parts(path: str, what: str) -> list[str]:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{what} {path!r} contains a '..' component")
    return parts


def normalize_key(path: object, what: str = "path") -> str:
    """The canonical form of an object path: no empty, ``.`` or trailing components.

    Raises ``TypeError`` for anything but a str (or ``os.PathLike``), ``ValueError`` for a
    NUL byte, a leading ``/``, a ``..`` component or a path that names the root itself.
    """
    if (
        type(path) is str
        and path[:1] not in ("", "/", ".")
        and path[-1] != "/"
        and "//" not in path
        and "/." not in path
        and "\0" not in path
    ):
        return path  # canonical already: no empty, "." or ".." component (the common case)
    path = _check(path, what)
    parts = _parts(path, what)
    if not parts:
        raise ValueError(f"{what} {path!r} is empty: it must name an object under the root")
    return "/".join(parts)


def normalize_prefix(prefix: object, what: str = "prefix") -> str:
    """The canonical form of a listing prefix: like :func:`normalize_key`, but the empty
    prefix is allowed, the last component may be partial (``data/im`` matches
    ``data/img1``) and a trailing ``/`` is kept (``data/`` does not match ``data-1``)."""
    prefix = _check(prefix, what)
    parts = _parts(prefix, what)
    if not parts:
        return ""
    as_dir = prefix.endswith("/") or prefix.endswith("/.") or prefix == "."
    return "/".join(parts) + ("/" if as_dir else "")


def is_normal_key(path: str) -> bool:
    """True if ``path`` is a key in canonical form: a store can name it. Object stores
    may hold keys that are not (``a//b``, ``dir/`` folder markers); listings skip them."""
    try:
        return normalize_key(path) == path
    except ValueError:
        return False
