"""The namespace: Shoal paths, and the mount table that maps them to under-store URIs."""

from __future__ import annotations

import errno
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._metastore import MetaStore

__all__ = [
    "DEFAULT_METADATA_TTL",
    "DEFAULT_READ_AHEAD",
    "MAX_MOUNTS",
    "MAX_PATH_BYTES",
    "MAX_PATH_COMPONENTS",
    "MOUNT_OPTIONS",
    "Mount",
    "TIER_NAMES",
    "WRITE_MODES",
    "MountTable",
    "normalize_path",
    "split_mount_options",
]

_PREFIX = "mounts/"
#: Bytes of a Shoal path (UTF-8) at most, as Linux's PATH_MAX.
MAX_PATH_BYTES = 4096
#: Components of a Shoal path at most.
MAX_PATH_COMPONENTS = 1024
#: Mounts in one mount table at most.
MAX_MOUNTS = 1024
_MOUNT = "/"  # key of a node's mount in the prefix tree (no component holds a "/")


DEFAULT_READ_AHEAD = 4  # pages fetched ahead of a sequential reader
DEFAULT_METADATA_TTL = 60.0

#: Mount options that Shoal itself reads; every other option goes to the under-store.
MOUNT_OPTIONS = ("metadata_ttl", "read_ahead", "replicas", "tier", "pin", "write_mode")
#: What a write under a path does: its close returns once the bytes are durable on the
#: node and the upload follows (``write_back``), once they are in the under-store
#: (``write_through``); bytes never uploaded (``cache_only``); writes refused (``read_only``).
WRITE_MODES = ("write_back", "write_through", "cache_only", "read_only")
#: Tiers a mount (or a policy) may send new pages to.
TIER_NAMES = ("MEM", "SSD", "HDD")


def split_mount_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a mount's options into Shoal's own (checked, with defaults) and the store's.

    Shoal's options: ``metadata_ttl`` (seconds a stat or listing is cached, >= 0, default
    60), ``read_ahead`` (pages prefetched ahead of a sequential reader, >= 0, default 4),
    ``replicas`` (workers that hold each chunk in a cluster, an int >= 1 or ``"all"``,
    default 1), ``tier`` (``MEM``, ``SSD`` or ``HDD``: the tier new pages go to, the
    others when it is full or missing; default None, the fastest tier with room) and
    ``pin`` (True: the pages are never evicted, up to the pinned share of each tier;
    default False) and ``write_mode`` (one of :data:`WRITE_MODES`, default
    ``write_back``).
    """
    own: dict[str, Any] = {
        "metadata_ttl": DEFAULT_METADATA_TTL,
        "read_ahead": DEFAULT_READ_AHEAD,
        "replicas": 1,
        "tier": None,
        "pin": False,
        "write_mode": "write_back",
    }
    store = {}
    for key, value in options.items():
        if key not in MOUNT_OPTIONS:
            store[key] = value
            continue
        if key == "metadata_ttl":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"metadata_ttl must be a number of seconds, got {value!r}")
            if not 0 <= value < math.inf:
                raise ValueError(f"metadata_ttl must be a finite number >= 0, got {value}")
        elif key == "pin":
            if not isinstance(value, bool):
                raise ValueError(f"pin must be true or false, got {repr(value)[:64]}")
        elif key == "tier":  # None: the default, the fastest tier with room
            if value is not None and (
                not isinstance(value, str) or value.upper() not in TIER_NAMES
            ):
                shown = repr(value)[:64]
                raise ValueError(f"tier must be one of {', '.join(TIER_NAMES)}, got {shown}")
            value = value.upper() if value is not None else None
        elif key == "write_mode":
            mode = value.strip().lower().replace("-", "_") if isinstance(value, str) else value
            if mode not in WRITE_MODES:
                shown = repr(value)[:64]
                raise ValueError(f"write_mode must be one of {', '.join(WRITE_MODES)}, got {shown}")
            value = mode
        elif key == "replicas":
            if value != "all" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"replicas must be an int >= 1 or 'all', got {value!r}")
            if value != "all" and value < 1:
                raise ValueError(f"replicas must be an int >= 1 or 'all', got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"read_ahead must be an int >= 0 (pages), got {value!r}")
        own[key] = value
    return own, store


def normalize_path(path: str) -> str:
    """The canonical form of a Shoal path: absolute, ``/``-separated, no empty, ``.`` or
    trailing components.

    Raises ``ValueError`` for anything that is not a str, a relative path, a NUL byte, a
    ``..`` component (Shoal paths never climb: a mount cannot be escaped), or a path over
    :data:`MAX_PATH_BYTES` bytes or :data:`MAX_PATH_COMPONENTS` components.
    """
    if (
        type(path) is str
        and path[:1] == "/"
        and path[-1:] != "/"
        and "//" not in path
        and "/." not in path
        and "\0" not in path
        and len(path) <= MAX_PATH_BYTES
        and path.isascii()
        and path.count("/") <= MAX_PATH_COMPONENTS
    ):
        return path  # canonical already: the common case, checked in one pass each
    if not isinstance(path, str):
        raise ValueError(f"path must be a str, got {type(path).__name__}")
    if len(path) > MAX_PATH_BYTES or (
        not path.isascii() and len(path.encode(errors="replace")) > MAX_PATH_BYTES
    ):
        raise ValueError(
            f"path of {len(path.encode(errors='replace'))} bytes is longer than "
            f"{MAX_PATH_BYTES}: {path[:64]!r}..."
        )
    if "\0" in path:
        raise ValueError(f"path contains a NUL byte: {path!r}")
    if not path.isascii() and not _is_text(path):
        raise ValueError(f"path is not UTF-8 text (a name in other bytes?): {path!r}")
    if not path.startswith("/"):
        raise ValueError(f"path must be absolute (start with /): {path!r}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"path must not contain '..': {path!r}")
    if len(parts) > MAX_PATH_COMPONENTS:
        raise ValueError(
            f"path has {len(parts)} components, more than {MAX_PATH_COMPONENTS}: {path[:64]!r}..."
        )
    return "/" + "/".join(parts)


def _is_text(path: str) -> bool:
    """True when ``path`` encodes to UTF-8: no lone surrogate (such as ``surrogateescape``
    makes of bytes that are not UTF-8)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    ``ValueError`` (or an OSError) for a URI or options it cannot serve. The table holds at
    most :data:`MAX_MOUNTS` mounts; :meth:`resolve` takes time linear in the path's length.
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
        self._tree: dict = {}  # component -> subtree; _MOUNT -> the mount there
        self.reload()

    @staticmethod
    def _tree_of(mounts: dict[str, Mount]) -> dict:
        tree: dict = {}
        for path, mount in mounts.items():
            node = tree
            for name in path.split("/")[1:] if path != "/" else ():
                node = node.setdefault(name, {})
            node[_MOUNT] = mount
        return tree

    def reload(self) -> None:
        """Read the table again from the MetaStore (another process may have changed it)."""
        mounts = {}
        for _, doc in self._store.scan(_PREFIX):
            mount = Mount(doc["path"], doc["uri"], doc.get("options", {}))
            mounts[mount.path] = mount
        tree = self._tree_of(mounts)
        with self._lock:
            self._mounts, self._tree = mounts, tree

    def mount(self, path: str, uri: str, **options: Any) -> Mount:
        """Mount ``uri`` at ``path``. Raises ``FileExistsError`` if ``path`` is a mount,
        ``OSError`` (``ENOSPC``) when the table holds :data:`MAX_MOUNTS` already."""
        path = normalize_path(path)
        if not isinstance(uri, str) or not uri:
            raise ValueError(f"mount {path}: the under-store URI must be a non-empty str")
        if self._validate is not None:
            self._validate(uri, options)
        mount = Mount(path, uri, options)
        with self._lock:
            if path in self._mounts:
                raise FileExistsError(f"{path} is already a mount point ({self._mounts[path].uri})")
            if len(self._mounts) >= MAX_MOUNTS:
                raise OSError(
                    errno.ENOSPC,
                    f"mount {path}: the mount table is full ({MAX_MOUNTS} mounts); unmount "
                    "some first",
                )
            self._store.put(_PREFIX + path, mount.to_json())
            self._mounts[path] = mount
            self._tree = self._tree_of(self._mounts)
        return mount

    def unmount(self, path: str) -> Mount:
        """Remove the mount at exactly ``path``. Raises ``FileNotFoundError`` if none."""
        path = normalize_path(path)
        with self._lock:
            mount = self._mounts.pop(path, None)
            if mount is None:
                raise FileNotFoundError(f"{path} is not a mount point")
            self._store.delete(_PREFIX + path)
            self._tree = self._tree_of(self._mounts)
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
        names = path.split("/")[1:] if path != "/" else []
        with self._lock:
            node = self._tree
            found, depth = node.get(_MOUNT), 0
            for i, name in enumerate(names):
                node = node.get(name)
                if node is None:
                    break
                if _MOUNT in node:
                    found, depth = node[_MOUNT], i + 1
        if found is None:
            raise FileNotFoundError(
                errno.ENOENT, f"{path} is not under any mount (see `shoal mount ls`)", path
            )
        return found, "/".join(names[depth:])
