"""Mounts an operator allows: the URIs a worker mounts, the environment variables and files
its mounts may name as credentials, and the options they may give as literal values.

A worker often runs as root on shared nodes. Without this, whoever may mount could make it
read any of its files (``file:///etc``), fetch any URL it reaches (``http://127.0.0.1:...``),
or send any of its environment variables to a server of their choosing (``endpoint_url``
with ``access_key_env=DB_PASSWORD``), and could store a literal secret in the mount table
under an option name no filter knows. :class:`MountPolicy` refuses each of these before a
store is opened, and again before a mount of the table is used.
"""

from __future__ import annotations

import errno
import fnmatch
import os
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from .._config import DEFAULT_ALLOWED_MOUNTS, DEFAULT_CREDENTIAL_ENV, Config
from ._namespace import MOUNT_OPTIONS, Mount
from .ufs import UnderStore, store_class
from .ufs._options import check_env_name, is_env_option, redact_uri, reject_literal_secrets
from .ufs._registry import split_uri

__all__ = ["HIDDEN", "MountPolicy"]

#: What a listing of the mount table shows instead of a value that could be a secret.
HIDDEN = "<hidden>"

_SHOWN_KEY = 64  # characters of an unknown option's name a message repeats


def _split(uri: object, what: str) -> tuple[str, str]:
    """``(scheme, rest)``: ``uri`` in the form prefixes and URIs are compared in.

    The scheme is lower case; a bare ``/dir`` is ``file``; a ``file:`` URI's rest is its
    path, percent-decoded as the local store decodes it, without empty or ``.``
    components or a trailing ``/``. Raises ``ValueError`` for anything that is not an
    absolute path or a URI, a NUL byte, a ``..`` component (also percent-encoded), and a
    ``file:`` URI that names a host or has a query or fragment; messages show ``uri``
    through :func:`redact_uri` only.
    """
    scheme, rest, shown = split_uri(uri, what)
    if scheme is None:
        return "file", _file_path(uri, what, shown)
    scheme = scheme.lower()
    if scheme == "file":
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{what}: file:// URI names a remote host: {shown!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"{what}: file:// URI must not have a query or fragment: {shown!r}")
        return "file", _file_path(unquote(parts.path), what, shown)
    if any(unquote(name) == ".." for name in rest.split("/")):
        raise ValueError(f"{what} {shown!r} contains a '..' component")
    return scheme, rest


def _file_path(path: str, what: str, shown: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"{what} {shown!r} is not an absolute path")
    names = [name for name in path.split("/") if name not in ("", ".")]
    if ".." in names:
        raise ValueError(f"{what} {shown!r} contains a '..' component")
    return "/" + "/".join(names)


def _within(base: str, path: str) -> bool:
    """True if the normalised absolute ``path`` is ``base`` or lies beneath it."""
    return base == "/" or path == base or path.startswith(base + "/")


def _admits(prefix: tuple[str, str], uri: tuple[str, str]) -> bool:
    """True if the prefix admits the URI (both from :func:`_split`), a whole component
    at a time: ``s3://b/data/`` and ``s3://b/data`` admit ``s3://b/data/x``, never
    ``s3://b/data-2``. An authority with an ``@`` in it (``abfs://c@host``) is admitted
    only by a prefix that names that authority itself."""
    (pscheme, prest), (scheme, rest) = prefix, uri
    if pscheme != scheme:
        return False
    if scheme == "file":
        return _within(prest, rest)
    base = prest.rstrip("/")
    authority = rest.partition("/")[0]
    if "@" in authority and base.partition("/")[0] != authority:
        return False
    return not base or rest.rstrip("/") == base or rest.startswith(base + "/")


def _shown_key(key: str) -> str:
    return repr(key if len(key) <= _SHOWN_KEY else key[:_SHOWN_KEY] + "...")


class MountPolicy:
    """What a worker mounts, checked before a store is opened and before a mount of the
    table is used.

    :meth:`check` admits a mount when:

    - its URI lies under one of ``allowed_mounts``, compared component by component
      after normalising both (scheme case; a bare ``/dir`` is ``file:///dir``; ``file:``
      paths percent-decoded, with no ``..`` accepted). A ``file:`` URI must also lead
      there once symbolic links are resolved: ``file:///data/`` admits neither
      ``file:///data-other``, nor ``file:///data/../etc``, nor a link under ``/data``
      to ``/etc``;
    - every option naming an environment variable (``*_env``) names one that matches a
      pattern of ``credential_env`` (``fnmatch``, case-sensitive);
    - every option naming a credentials file (the store's
      :attr:`~shoal.control.ufs.UnderStore.credential_file_options`) names one beneath
      ``credential_dir``, also once symbolic links are resolved; none when it is None;
    - every other option is Shoal's own (``metadata_ttl``, ``read_ahead``,
      ``replicas``) or one the store takes as a literal value that cannot be a secret
      (:meth:`~shoal.control.ufs.UnderStore.literal_options`: ``endpoint_url``,
      ``region`` ... for S3, ``fsync`` for a directory, a few per fsspec protocol).

    It raises ``PermissionError`` (``EACCES``) for a URI, variable or file the operator
    does not allow and ``ValueError`` for an option that may not be given literally, or
    a malformed URI or reference. No message repeats a refused value: it names the
    option, and shows URIs through :func:`~shoal.control.ufs._options.redact_uri`.

    Parameters
    ----------
    allowed_mounts
        URI prefixes (``s3://``, ``file:///data/``, ``gs://bucket/``); a bare ``/dir``
        stands for ``file:///dir``.
    credential_env
        Names or ``fnmatch`` patterns of the environment variables mounts may name.
    credential_dir
        The directory beneath which mounts may name credentials files, or None.

    Notes
    -----
    The stores read the referenced variables and files themselves when they connect
    (:func:`~shoal.control.ufs._options.env_value`, the S3 store's credentials file),
    and are not told the policy: the check before each open is enough. A worker opens
    stores only in :meth:`FileResolver.mount` and :meth:`FileResolver.store_of`, both
    of which call :meth:`check` first with the very options the store is then given, so
    every name a store reads is one checked here, and nothing between the check and the
    open can change an option. The one gap is the file system: a symbolic link could be
    swapped in between the check and the open by someone who may write beneath
    ``credential_dir`` (the operator keeps that directory to itself, as it holds
    secrets), or beneath an allowed ``file:`` prefix, for the mount's root only (the
    local store opens everything else beneath that root without following links).
    Clients that read an under-store directly resolve the references in their
    own environment, with their own rights, and need no policy. A store's default
    credentials (the S3 store's default chain of environment, shared files and instance
    metadata, when a mount names none) are the worker's own identity, not a reference,
    and are not restricted here.
    """

    def __init__(
        self,
        allowed_mounts: Iterable[str] = DEFAULT_ALLOWED_MOUNTS,
        credential_env: Iterable[str] = DEFAULT_CREDENTIAL_ENV,
        credential_dir: str | os.PathLike | None = None,
    ):
        self.allowed_mounts = tuple(allowed_mounts)
        self._prefixes = [_split(p, "allowed_mounts prefix") for p in self.allowed_mounts]
        self.credential_env = tuple(credential_env)
        for pattern in self.credential_env:
            if not isinstance(pattern, str) or not pattern:
                raise ValueError("credential_env must hold non-empty names or patterns")
        if credential_dir is not None:
            credential_dir = os.path.normpath(os.path.abspath(os.fspath(credential_dir)))
        self.credential_dir = credential_dir

    @classmethod
    def from_config(cls, config: Config) -> MountPolicy:
        """The policy of ``config``'s ``allowed_mounts``, ``credential_env`` and
        ``credential_dir``."""
        return cls(config.allowed_mounts, config.credential_env, config.credential_dir)

    def __repr__(self) -> str:
        return (
            f"MountPolicy(allowed_mounts={list(self.allowed_mounts)!r}, "
            f"credential_env={list(self.credential_env)!r}, "
            f"credential_dir={self.credential_dir!r})"
        )

    # ----------------------------------------------------------------- checks

    def check(self, uri: str, options: Mapping[str, Any]) -> None:
        """Refuse a mount of ``uri`` with ``options`` that the operator does not allow.

        Raises
        ------
        PermissionError
            ``uri`` lies under no prefix of ``allowed_mounts`` (or, for ``file:``, leads
            out of them through a symbolic link); an option names an environment
            variable that matches no pattern of ``credential_env``, or a file outside
            ``credential_dir``. ``errno`` is ``EACCES``.
        ValueError
            A malformed URI, variable name or path, or an option the store does not take
            as a literal value, or no under-store serves the scheme.
        ImportError
            The store's package is missing (the message says what to install).
        """
        where = _split(uri, "mount URI")
        self._check_uri(uri, where)
        if not isinstance(options, Mapping):
            raise TypeError(f"mount options must be a mapping, got {type(options).__name__}")
        scheme = where[0]
        cls = store_class(scheme)
        literal = cls.literal_options(scheme)
        for key, value in options.items():
            if not isinstance(key, str):
                raise ValueError(f"option names must be str, got {type(key).__name__}")
            if key in MOUNT_OPTIONS:
                continue
            if is_env_option(key):
                self._check_env(key, value)
            elif key in cls.credential_file_options:
                self._check_file(key, value)
            elif key not in literal:
                # An option whose name says it holds a secret gets the message that says
                # how to pass it by reference.
                reject_literal_secrets({key: value}, cls.__name__)
                raise ValueError(
                    f"{cls.__name__}: option {_shown_key(key)} is not one a mount may give "
                    f"as a literal value (those are: {', '.join(sorted(literal)) or 'none'}); "
                    f"a secret goes by reference, as '{key[:_SHOWN_KEY]}_env' naming an "
                    "environment variable of the worker; the value given is not shown"
                )

    def _check_uri(self, uri: str, where: tuple[str, str]) -> None:
        allowed = ", ".join(self.allowed_mounts) or "nothing"
        how = (
            "the operator may add a prefix to allowed_mounts in the worker's config file, "
            "SHOAL_ALLOWED_MOUNTS or `shoal worker --allowed-mount PREFIX`"
        )
        if not any(_admits(prefix, where) for prefix in self._prefixes):
            raise PermissionError(
                errno.EACCES,
                f"{redact_uri(uri)!r} is not under this worker's allowed_mounts ({allowed}); {how}",
            )
        if where[0] != "file":
            return
        real = os.path.realpath(where[1])
        bases = [os.path.realpath(rest) for scheme, rest in self._prefixes if scheme == "file"]
        if not any(_within(base, real) for base in bases):
            raise PermissionError(
                errno.EACCES,
                f"{redact_uri(uri)!r} leads out of this worker's allowed_mounts ({allowed}) "
                f"through a symbolic link; {how}",
            )

    def _check_env(self, key: str, value: object) -> None:
        if value is None:  # the option left unset
            return
        name = check_env_name(value, key)
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.credential_env):
            allowed = ", ".join(self.credential_env) or "none"
            raise PermissionError(
                errno.EACCES,
                f"option {key!r} names an environment variable this worker does not let "
                f"mounts read (its credential_env allows {allowed}; the operator sets it in "
                "the config file, SHOAL_CREDENTIAL_ENV or `shoal worker --credential-env`); "
                "the name given is not shown",
            )

    def _check_file(self, key: str, value: object) -> None:
        if value is None:
            return
        if not isinstance(value, (str, os.PathLike)):
            raise ValueError(f"option {key!r} must be a path, got {type(value).__name__}")
        if self.credential_dir is None:
            raise PermissionError(
                errno.EACCES,
                f"option {key!r} names a credentials file, and this worker takes none: its "
                "credential_dir is not set (the operator sets it in the config file or "
                "SHOAL_CREDENTIAL_DIR)",
            )
        path = os.path.expanduser(os.fspath(value))
        if not isinstance(path, str) or "\0" in path or not os.path.isabs(path):
            raise ValueError(
                f"option {key!r} must be an absolute path; the value given is not shown"
            )
        names = path.split("/")
        if ".." in names:
            raise ValueError(
                f"option {key!r} must not contain a '..' component; the value given is not shown"
            )
        base = self.credential_dir
        if not _within(base, os.path.normpath(path)) or not _within(
            os.path.realpath(base), os.path.realpath(path)
        ):
            raise PermissionError(
                errno.EACCES,
                f"option {key!r} names a file outside this worker's credential_dir {base} "
                "(symbolic links resolved); the path given is not shown",
            )

    # ----------------------------------------------------------------- listings

    def shown(self, mount: Mount) -> Mount:
        """``mount`` fit to show anyone: its URI through ``redact_uri``, and the value of
        every option :meth:`check` would not admit as it is replaced by :data:`HIDDEN`
        (an entry written before the policy, or by another worker, may hold one)."""
        try:
            scheme = _split(mount.uri, "mount URI")[0]
            cls: type[UnderStore] | None = store_class(scheme)
        except (ValueError, TypeError, ImportError):
            scheme, cls = "", None
        options = {
            key: value if self._showable(cls, scheme, key, value) else HIDDEN
            for key, value in mount.options.items()
        }
        return Mount(mount.path, redact_uri(mount.uri), options)

    @staticmethod
    def _showable(cls: type[UnderStore] | None, scheme: str, key: Any, value: Any) -> bool:
        if not isinstance(key, str):
            return False
        if key in MOUNT_OPTIONS:
            return True
        if is_env_option(key):  # the name of a variable, unless a value was pasted there
            try:
                return value is None or check_env_name(value, key) == value
            except ValueError:
                return False
        if cls is None:
            return False
        if key in cls.credential_file_options:
            return value is None or isinstance(value, str)
        return key in cls.literal_options(scheme)
