"""The ``shoal`` command as a user runs it, in a subprocess, for the tests of commands:
its output on success, its one line of error on failure."""

from __future__ import annotations

import os
import subprocess
import sys

from shoal_cluster import REPO


def shoal(*argv: str) -> subprocess.CompletedProcess:
    """``shoal argv`` in a subprocess (the worker of ``$SHOAL_HOME``), no debug output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    env.pop("SHOAL_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "shoal", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def ok(*argv: str) -> str:
    """The output of ``shoal argv``, which must succeed."""
    proc = shoal(*argv)
    assert proc.returncode == 0, (argv, proc.stderr)
    return proc.stdout


def error(code: int, *argv: str) -> str:
    """The one line of error of ``shoal argv``, which exits with ``code``."""
    proc = shoal(*argv)
    assert proc.returncode == code, (argv, proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    if code == 2:  # argparse: usage, then the error
        return lines[-1]
    assert len(lines) == 1 and lines[0].startswith("shoal: error: "), proc.stderr
    return lines[0][len("shoal: error: ") :]
