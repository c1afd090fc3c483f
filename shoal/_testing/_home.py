"""A throw-away Shoal home: its own worker, its own cache, never the user's."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping

__all__ = ["TemporaryHome"]

# Variables kept from the caller's environment: they choose behaviour, not where data goes.
_KEPT = ("SHOAL_DEBUG", "SHOAL_ENGINE")


class TemporaryHome:
    """A temporary ``$SHOAL_HOME`` for the duration of a ``with`` block.

    On entry: a new directory under /tmp (short: it holds the worker's socket) becomes
    ``$SHOAL_HOME``; every other ``SHOAL_*`` variable but ``SHOAL_DEBUG`` and
    ``SHOAL_ENGINE`` is removed (a ``SHOAL_CACHE_DIR`` would point into the user's cache),
    and ``environ`` is added. A :class:`shoal.Client` made inside starts its own worker.

    On exit: the worker (if one was started) is stopped and waited for, the environment
    restored, and the home and its MEM tier directory removed.

    Parameters
    ----------
    prefix
        Start of the directory's name.
    environ
        Extra variables to set, such as the names of credentials a mount refers to.
    config
        Settings written to ``config.yaml`` in the home.
    on_stop
        Called with the pid of the worker stopped, and with the home removed.
    """

    def __init__(
        self,
        prefix: str = "shoal-",
        environ: Mapping[str, str] | None = None,
        config: Mapping[str, object] | None = None,
        on_stop: Callable[[str, object], None] | None = None,
    ):
        self.prefix = prefix
        self.environ = dict(environ or {})
        self.config = dict(config or {})
        self.on_stop = on_stop
        self.home = ""
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> str:
        self.home = tempfile.mkdtemp(prefix=self.prefix, dir="/tmp")
        if self.config:
            import yaml

            with open(os.path.join(self.home, "config.yaml"), "w", encoding="utf-8") as f:
                yaml.safe_dump(self.config, f)
        changes: dict[str, str | None] = {
            var: None for var in os.environ if var.startswith("SHOAL_") and var not in _KEPT
        }
        changes.update(self.environ)
        changes["SHOAL_HOME"] = self.home
        self._saved = {k: os.environ.get(k) for k in changes}
        for k, v in changes.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        return self.home

    def __exit__(self, *exc_info) -> None:
        from ..cli._worker import stop_worker

        try:
            pid = stop_worker(self.home, timeout=30.0, force=True)
            if pid is not None and self.on_stop is not None:
                self.on_stop("worker", pid)
        finally:
            for k, v in self._saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            self._remove()

    def _remove(self) -> None:
        from .._config import Config

        # The MEM tier lives on /dev/shm under a name derived from the home.
        with contextlib.suppress(ValueError, OSError):
            mem_dir = Config(home=self.home, capacity=1 << 30, mem_capacity=0).mem_dir
            shutil.rmtree(mem_dir, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)
        if self.on_stop is not None:
            self.on_stop("home", self.home)
