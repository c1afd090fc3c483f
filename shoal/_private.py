"""Private directories and files: everything Shoal creates is its user's alone (0700
directories, 0600 files, whatever the umask), opened without following links, and an
existing one is used only if this process's user owns it and no one else may write it.

The page store keeps its tiers and index this way, and the worker its home (socket, pid
file, mount table, log): cached pages may hold any data the worker reads.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat

__all__ = [
    "check_private",
    "open_failure",
    "open_private_dir",
    "open_private_file",
    "open_private_path",
    "private_dir",
    "refusal",
]

_DIR_MODE, _FILE_MODE = 0o700, 0o600
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITERS = ((stat.S_IWGRP, "its group"), (stat.S_IWOTH, "others"))


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def refusal(path: str, what: str, why: str, fix: str) -> PermissionError:
    return PermissionError(errno.EPERM, f"{what} {why}: {fix}", path)


def check_private(fd: int, path: str, what: str, directory: bool) -> None:
    """Check that ``fd`` is a directory (or a regular file) of this process's effective
    user that no one else may write, then narrow its mode to 0700 (0600) if it is wider:
    stores of earlier versions were 0755 with 0644 files."""
    st = os.fstat(fd)
    mode = _DIR_MODE if directory else _FILE_MODE
    if not (stat.S_ISDIR if directory else stat.S_ISREG)(st.st_mode):
        kind = "a directory" if directory else "a regular file"
        raise refusal(path, what, f"is not {kind}", "remove it")
    euid = os.geteuid()
    if st.st_uid != euid:
        raise refusal(
            path,
            what,
            f"is owned by {_user(st.st_uid)}, not by {_user(euid)} that runs the page store",
            f"remove it (the page store then creates it afresh), or chown it to uid {euid} "
            "if its contents can be trusted",
        )
    writers = [who for bit, who in _WRITERS if st.st_mode & bit]
    if writers:
        raise refusal(
            path,
            what,
            f"is writable by {' and '.join(writers)} (mode {stat.S_IMODE(st.st_mode):04o}), "
            "who could have changed cached pages",
            f"remove it (the page store then creates it afresh), or chmod it to {mode:04o} "
            "if its contents can be trusted",
        )
    if stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)


def open_failure(exc: OSError, dir_fd: int, name: str, path: str, what: str) -> OSError:
    """The error to raise for ``name`` under ``dir_fd`` that could not be opened: a
    PermissionError for a symbolic link or a non-directory where a directory belongs,
    else ``exc`` with the full path."""
    try:
        is_link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        is_link = False
    if is_link:
        return refusal(
            path,
            what,
            "is a symbolic link, which the page store does not follow",
            "remove the link (and configure the path it points to, if that is meant)",
        )
    if exc.errno == errno.ENOTDIR:
        return refusal(path, what, "is not a directory", "remove it")
    if exc.errno == errno.EISDIR:
        return refusal(path, what, "is not a regular file", "remove it")
    return OSError(exc.errno, f"{what}: {exc.strerror}", path)


def open_private_dir(dir_fd: int, name: str, path: str, what: str) -> int:
    """Create (0700) or open the directory ``name`` under ``dir_fd``, without following a
    link, and return a descriptor of it once :func:`check_private` passed."""
    try:
        os.mkdir(name, _DIR_MODE, dir_fd=dir_fd)
    except FileExistsError:
        pass
    except OSError as exc:
        raise OSError(exc.errno, f"{what}: {exc.strerror}", path) from None
    try:
        fd = os.open(name, _OPEN_DIR, dir_fd=dir_fd)
    except OSError as exc:
        raise open_failure(exc, dir_fd, name, path, what) from None
    return _checked(fd, path, what, directory=True)


def open_private_file(dir_fd: int, name: str, path: str, what: str, flags: int) -> int:
    """Open (creating it 0600 when ``flags`` has O_CREAT) the file ``name`` under
    ``dir_fd`` without following a link, and return its descriptor once
    :func:`check_private` passed."""
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, _FILE_MODE, dir_fd=dir_fd)
    except OSError as exc:
        raise open_failure(exc, dir_fd, name, path, what) from None
    return _checked(fd, path, what, directory=False)


def _checked(fd: int, path: str, what: str, directory: bool) -> int:
    """``fd`` once :func:`check_private` passed on it; closed when it did not."""
    try:
        check_private(fd, path, what, directory=directory)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_parent(path: str) -> int:
    """A descriptor of the directory ``path``, links followed (the operator's own path),
    its missing levels created 0700 one by one (``os.makedirs`` would give them the
    umask's mode)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        parent, name = os.path.split(path)
        if parent == path:
            raise
    parent_fd = _open_parent(parent)
    try:
        try:
            os.mkdir(name, _DIR_MODE, dir_fd=parent_fd)
        except FileExistsError:  # made by someone else meanwhile: not ours to change
            return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent_fd)
        fd = os.open(name, _OPEN_DIR, dir_fd=parent_fd)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
    finally:
        os.close(parent_fd)
    try:
        os.fchmod(fd, _DIR_MODE)  # the umask may have narrowed it
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_private_path(path: str, what: str) -> int:
    """Create or open a directory of the store (a tier or the index), missing parents
    made 0700, and return a descriptor of it once :func:`check_private` passed."""
    parent, name = os.path.split(path)
    parent_fd = _open_parent(parent)
    try:
        return open_private_dir(parent_fd, name, path, what)
    finally:
        os.close(parent_fd)


def private_dir(path: str, what: str) -> None:
    """Make sure the directory ``path`` exists (created 0700, missing parents too) and is
    private (see :func:`check_private`); ``PermissionError`` saying why otherwise."""
    os.close(open_private_path(path, what))
