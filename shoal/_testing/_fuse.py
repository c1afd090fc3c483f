"""``shoal fuse mount`` run as a user runs it, for the demo, the benchmarks and the tests:
a process of its own, always unmounted and waited for."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

from ..fuse import is_mounted, unmount

__all__ = ["fuse_mounted"]


@contextlib.contextmanager
def fuse_mounted(mountpoint: str, log: str, *options: str) -> Iterator[int]:
    """Mount Shoal (the worker of ``$SHOAL_HOME``) at ``mountpoint`` with ``shoal fuse
    mount`` and ``options``, logging to ``log``; yields the pid of the process serving it.

    On exit the mount is unmounted (lazily, so open files cannot hold it) and its process
    waited for; one still alive 10 s later is killed, and ``OSError`` says so.

    Raises
    ------
    OSError
        The mount failed (with the command's own message).
    """
    os.makedirs(mountpoint, exist_ok=True)
    cmd = [sys.executable, "-m", "shoal", "fuse", "mount", mountpoint, "--log", log, *options]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise OSError(f"shoal fuse mount failed: {done.stderr.strip()}")
    pid = int(done.stdout.rsplit("pid ", 1)[1].rstrip(")\n"))
    try:
        yield pid
    finally:
        if is_mounted(mountpoint):
            unmount(mountpoint, lazy=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                raise OSError(f"the FUSE process {pid} outlived its unmount and was killed")
            time.sleep(0.02)
