"""``shoal secret new FILE``: a secret for a cluster's TCP peers to prove (the cluster
secret, or the admin secret)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os

__all__ = ["register", "write_secret"]


def register(subparsers) -> None:
    """Add ``secret``."""
    p = subparsers.add_parser(
        "secret",
        help="make a secret for cluster or admin authentication",
        description="Secrets that TCP peers prove they hold (challenge-response: a secret "
        "never crosses the network). Give the same cluster secret file to every worker and "
        "client of a cluster (--cluster-secret-file, cluster_secret_file, "
        "SHOAL_CLUSTER_SECRET_FILE); the admin secret file only to the workers and to the "
        "clients that may mount, unmount, free and stop (--admin-secret-file).",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    new = sub.add_parser(
        "new",
        help="write a new random secret to FILE (mode 0600)",
        description="Write 32 random bytes, as 64 hex digits, to FILE, readable by its owner "
        "only (mode 0600). FILE must not exist yet, unless --force.",
    )
    new.add_argument("file", metavar="FILE", help="where to write the secret")
    new.add_argument("--force", action="store_true", help="replace FILE if it exists")
    new.set_defaults(func=_new)


def _new(args: argparse.Namespace) -> int:
    path = write_secret(args.file, force=args.force)
    print(
        f"wrote a new secret to {path} (mode 0600); copy it, keeping the mode, to every "
        "worker and client that should use it"
    )
    return 0


def write_secret(path: str, force: bool = False) -> str:
    """Write a new secret to ``path`` (mode 0600, created afresh); its absolute path.

    Raises ``FileExistsError`` when ``path`` exists and ``force`` is false.
    """
    from ..control.proto import new_secret

    path = os.path.abspath(os.path.expanduser(path))
    if force:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise FileExistsError(
            errno.EEXIST, f"{path} exists; choose another name, or --force to replace it", path
        ) from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, (new_secret() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return path
