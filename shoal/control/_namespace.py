"""The namespace: Shoal paths, and the mount table that maps them to under-store URIs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._metastore import MetaStore

__all__ = ["Mount", "MountTable", "normalize_path"]

_PREFIX = "mounts/"


def normalize_path(path: str) -> str:
    """The canonical form of a Shoal path: absolute, ``/``-separated, no empty, ``.`` or
    trailing components.

    Raises ``ValueError`` for anything that is not a str, a relative path, a NUL byte, or a
    ``..`` component (Shoal paths never climb: a mount cannot be escaped).
    """
    if not isinstance(path, str):
        raise ValueError(f"path must be a str, got {type(path).__name__}")
    if "\0" in path:
        raise ValueError(f"path contains a NUL byte: {path!r}")
    if not path.startswith("/"):
        raise ValueError(f"path must be absolute (start with /): {path!r}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"path must not contain '..': {path!r}")
    return "/" + "/".join(parts)


@dataclass(frozen=True)
class Mount:
    """One entry of the mount table: Shoal ``path`` -> under-store ``uri`` with options.

    Options hold no secrets: credentials are passed by reference (names of environment
    variables or a credentials file), which the under-store resolves when it connects.
    """

    path: str
    uri: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def child_uri(self, relative: str) -> str:
        """URI of ``relative`` (no leading ``/``) under this mount."""
        if not relative:
            return self.uri
        return self.uri.rstrip("/") + "/" + relative

    def to_json(self) -> dict:
        return {"path": self.path, "uri": self.uri, "options": dict(self.options)}


class MountTable:
    """Mounts kept in a :class:`MetaStore`; the longest mounted prefix of a path wins.

    ``validate(uri, options)`` is called before a mount is stored and should raise
    ``ValueError`` (or an OSError) for a URI or options it cannot serve.
    """

    def __init__(
        self,
        store: MetaStore,
        validate: Callable[[str, Mapping[str, Any]], None] | None = None,
    ):
        self._store = store
        self._validate = validate
        self._lock = threading.Lock()
        self._mounts: dict[str, Mount] = {}
        self.reload()

    def reload(self) -> None:
        """Read the table again from the MetaStore (another process may have changed it)."""
        mounts = {}
        for _, doc in self._store.scan(_PREFIX):
            mount = Mount(doc["path"], doc["uri"], doc.get("options", {}))
            mounts[mount.path] = mount
        with self._lock:
            self._mounts = mounts

    def mount(self, path: str, uri: str, **options: Any) -> Mount:
        """Mount ``uri`` at ``path``. Raises ``FileExistsError`` if ``path`` is a mount."""
        path = normalize_path(path)
        if not isinstance(uri, str) or not uri:
            raise ValueError(f"mount {path}: the under-store URI must be a non-empty str")
        if self._validate is not None:
            self._validate(uri, options)
        mount = Mount(path, uri, options)
        with self._lock:
            if path in self._mounts:
                raise FileExistsError(f"{path} is already a mount point ({self._mounts[path].uri})")
            self._store.put(_PREFIX + path, mount.to_json())
            self._mounts[path] = mount
        return mount

    def unmount(self, path: str) -> Mount:
        """Remove the mount at exactly ``path``. Raises ``FileNotFoundError`` if none."""
        path = normalize_path(path)
        with self._lock:
            mount = self._mounts.pop(path, None)
            if mount is None:
                raise FileNotFoundError(f"{path} is not a mount point")
            self._store.delete(_PREFIX + path)
        return mount

    def mounts(self) -> list[Mount]:
        """Every mount, sorted by path."""
        with self._lock:
            return [self._mounts[p] for p in sorted(self._mounts)]

    def resolve(self, path: str) -> tuple[Mount, str]:
        """The mount serving ``path`` and the path relative to it (no leading ``/``).

        Raises ``FileNotFoundError`` when no mount covers ``path``.
        """
        path = normalize_path(path)
        with self._lock:
            probe = path
            while True:
                mount = self._mounts.get(probe)
                if mount is not None:
                    return mount, path[len(probe) :].lstrip("/")
                if probe == "/":
                    break
                probe = probe.rsplit("/", 1)[0] or "/"
        raise FileNotFoundError(f"{path} is not under any mount (see `shoal mount ls`)")
