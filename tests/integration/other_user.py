"""Running a program as another Unix user (``nobody``) for the tests that check what such
a user can and cannot do; each helper skips the test, saying why, where that is
impossible (no root, no such user, no setpriv nor su, no Python that user may run)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys

import pytest

OTHER = "nobody"


def runner() -> list[str]:
    """The command prefix that runs a program as ``OTHER``, or a skip."""
    if os.geteuid() != 0:
        pytest.skip("running a process as another user needs root")
    try:
        pwd.getpwnam(OTHER)
    except KeyError:
        pytest.skip(f"no user {OTHER!r} on this machine")
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [
            setpriv,
            f"--reuid={OTHER}",
            f"--regid={pwd.getpwnam(OTHER).pw_gid}",
            "--clear-groups",
        ]
    su = shutil.which("su")
    if su:
        return [su, "-s", "/bin/sh", OTHER, "-c", '"$0" "$@"', "--"]
    pytest.skip("neither setpriv nor su is installed")


def python_for(runner: list[str]) -> str:
    """A Python interpreter ``OTHER`` may run (this one may sit in a private directory)."""
    candidates = [os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"]
    for python in dict.fromkeys(candidates):
        probe = subprocess.run(
            [*runner, python, "-I", "-c", "pass"], cwd="/", capture_output=True, check=False
        )
        if probe.returncode == 0:
            return python
    pytest.skip(f"no Python interpreter that {OTHER} may run")
