"""The ``shoal`` command: the worker daemon, mounts, files, cache jobs and reports.

One module per command group (``_worker``, ``_mount``, ``_fs``, ``_load``, ``_report``);
:func:`main` is the console entry point (``shoal``, ``python -m shoal``).
"""

from ._main import build_parser, main

__all__ = ["build_parser", "main"]
