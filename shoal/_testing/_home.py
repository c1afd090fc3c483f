"""A throw-away Shoal home: its own worker, its own cache, never the user's."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping

__all__ = ["TemporaryHome", "remove_home", "remove_mem_tier"]

# Variables kept from the caller's environment: they choose behaviour, not where data goes.
_KEPT = ("SHOAL_DEBUG", "SHOAL_ENGINE")


class TemporaryHome:
    """A temporary ``$SHOAL_HOME`` for the duration of a ``with`` block.

    On entry: a new directory under /tmp (short: it holds the worker's socket) becomes
    ``$SHOAL_HOME``; every other ``SHOAL_*`` variable but ``SHOAL_DEBUG`` and
    ``SHOAL_ENGINE`` is removed (a ``SHOAL_CACHE_DIR`` would point into the user's cache),
    and ``environ`` is added. A :class:`shoal.Client` made inside starts its own worker.

    On exit: the worker (if one was started) is stopped and waited for (killed after 30 s),
    the environment restored, and the home and its MEM tier directory on /dev/shm removed,
    also when stopping the worker failed.

    Parameters
    ----------
    prefix
        Start of the directory's name.
    environ
        Extra variables to set, such as the names of credentials a mount refers to.
    config
        Settings written to ``config.yaml`` in the home. The worker mounts only what
        its ``allowed_mounts`` admits (object stores by default, no ``file://``) and
        lets mounts name only the variables its ``credential_env`` matches (``AWS_*``
        by default): a caller that mounts a directory, or names other variables, gives
        those settings here.
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

            try:
                with open(os.path.join(self.home, "config.yaml"), "w", encoding="utf-8") as f:
                    yaml.safe_dump(self.config, f)
            except BaseException:
                shutil.rmtree(self.home, ignore_errors=True)
                raise
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
        try:
            remove_home(self.home, self.on_stop)
        finally:
            for k, v in self._saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def remove_home(home: str, on_stop: Callable[[str, object], None] | None = None) -> None:
    """Stop the worker of ``home`` (killed after 30 s), then remove the home and its MEM
    tier directory, also when stopping the worker failed.

    ``on_stop`` is called as in :class:`TemporaryHome`.
    """
    try:
        from ..cli._worker import stop_worker

        pid = stop_worker(home, timeout=30.0, force=True)
        if pid is not None and on_stop is not None:
            on_stop("worker", pid)
    finally:
        remove_mem_tier(home)
        shutil.rmtree(home, ignore_errors=True)
        if on_stop is not None:
            on_stop("home", home)


def remove_mem_tier(home: str) -> None:
    """Remove the MEM tier directory of the worker of ``home``, if there is one: it lives
    on /dev/shm, under a name derived from the home, and holds memory until removed."""
    from ..cli._worker import purge_mem_tier

    with contextlib.suppress(OSError):
        purge_mem_tier(home)
