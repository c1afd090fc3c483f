"""``shoal worker`` (in the foreground), ``shoal up`` and ``shoal down`` (the daemon)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import shutil
import signal
import sys
import time

from .._units import format_size
from ._common import describe_error, format_duration, seconds_arg, size_arg
from ._workers import ETCD_CREDENTIAL_FLAGS, add_etcd_credential_options

__all__ = ["register", "stop_worker"]

# Flag -> Config field; every one is also a SHOAL_* variable or a key of config.yaml.
_CONFIG_FLAGS = (
    "home",
    "cache_dir",
    "capacity",
    "mem_capacity",
    "metadata_cache",
    "page_size",
    "listen",
    "metrics_listen",
    "host_id",
    "etcd",
    "membership_file",
    "cluster_secret_file",
    "admin_secret_file",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "allowed_mounts",
    "credential_env",
    "credential_dir",
    *ETCD_CREDENTIAL_FLAGS,
)


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    files = parser.add_argument_group("files")
    files.add_argument(
        "--home",
        metavar="DIR",
        help="state directory: socket, index, mounts, log ($SHOAL_HOME, default ~/.shoal)",
    )
    files.add_argument(
        "--config",
        metavar="FILE",
        help="YAML settings file (default: HOME/config.yaml when it exists)",
    )
    cache = parser.add_argument_group("cache")
    cache.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="directory of the SSD tier ($SHOAL_CACHE_DIR, default HOME/cache)",
    )
    cache.add_argument(
        "--capacity",
        type=size_arg,
        metavar="SIZE",
        help="bytes of the SSD tier, e.g. 200GiB ($SHOAL_CAPACITY, default 20%% of the free "
        "disk, at most 100 GiB)",
    )
    cache.add_argument(
        "--mem-capacity",
        type=size_arg,
        metavar="SIZE",
        help="bytes of the MEM tier on /dev/shm, 0 to disable ($SHOAL_MEM_CAPACITY, "
        "default 10%% of RAM)",
    )
    cache.add_argument(
        "--metadata-cache",
        type=size_arg,
        metavar="SIZE",
        help="memory of the cache of file metadata, e.g. 512MiB ($SHOAL_METADATA_CACHE, "
        "default 128MiB)",
    )
    cache.add_argument(
        "--page-size",
        type=size_arg,
        metavar="SIZE",
        help="storage page size, a multiple of 4 KiB ($SHOAL_PAGE_SIZE, default 4MiB)",
    )
    node = parser.add_argument_group("cluster")
    node.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="TCP endpoint for other nodes ($SHOAL_LISTEN; none on a single node)",
    )
    node.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics over HTTP at http://HOST:PORT/metrics "
        "($SHOAL_METRICS_LISTEN; port 0: any free one, shown by `shoal report`)",
    )
    node.add_argument(
        "--host-id",
        metavar="ID",
        help="this node's identity ($SHOAL_HOST_ID, default the hostname)",
    )
    node.add_argument(
        "--etcd",
        metavar="URL",
        help="etcd endpoint for cluster membership ($SHOAL_ETCD; none on a single node)",
    )
    node.add_argument(
        "--membership-file",
        metavar="FILE",
        help="YAML/JSON list of the cluster's workers, for a cluster without etcd "
        "($SHOAL_MEMBERSHIP_FILE)",
    )
    security = parser.add_argument_group(
        "security",
        "TCP peers (workers, clients) prove a shared secret before any op; make one with "
        "`shoal secret new FILE` and give the same file, mode 0600, to every worker and "
        "client. Required when --listen is not a loopback address. The --etcd-* flags "
        "give what etcd wants to see, by reference: a user and its password file, or a "
        "client certificate.",
    )
    security.add_argument(
        "--cluster-secret-file",
        metavar="FILE",
        help="the cluster's secret, proved by every TCP peer ($SHOAL_CLUSTER_SECRET_FILE)",
    )
    security.add_argument(
        "--admin-secret-file",
        metavar="FILE",
        help="a second secret: TCP clients that prove it may mount, unmount, free, write job "
        "records and stop the worker ($SHOAL_ADMIN_SECRET_FILE; without it only the "
        "worker's own user, on its host, may)",
    )
    security.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="PEM certificate (chain) of the worker: TLS on its TCP port ($SHOAL_TLS_CERT)",
    )
    security.add_argument(
        "--tls-key", metavar="FILE", help="PEM private key of --tls-cert ($SHOAL_TLS_KEY)"
    )
    security.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="PEM CA certificates that clients check workers' certificates against ($SHOAL_TLS_CA)",
    )
    security.add_argument(
        "--allowed-mount",
        dest="allowed_mounts",
        action="append",
        metavar="PREFIX",
        help="a URI prefix the worker may mount, e.g. s3:// or file:///data/; repeat for more "
        "($SHOAL_ALLOWED_MOUNTS, comma-separated; default: object stores only)",
    )
    security.add_argument(
        "--credential-env",
        dest="credential_env",
        action="append",
        metavar="NAME",
        help="an environment variable (or fnmatch pattern) mounts may name as credentials; "
        "repeat for more ($SHOAL_CREDENTIAL_ENV; default AWS_*)",
    )
    security.add_argument(
        "--credential-dir",
        metavar="DIR",
        help="the directory under which mounts may name credential files "
        "($SHOAL_CREDENTIAL_DIR; default: none)",
    )
    add_etcd_credential_options(security)


def _config(args: argparse.Namespace):
    from .._config import load_config

    overrides = {name: getattr(args, name) for name in _CONFIG_FLAGS}
    return load_config(args.config, **overrides)


def register(subparsers) -> None:
    """Add ``worker``, ``up`` and ``down``."""
    p = subparsers.add_parser(
        "worker",
        help="run the worker in the foreground; drain or undrain a cluster's worker",
        description="Run this node's worker in the foreground until SIGTERM or Ctrl-C. "
        "Settings come from defaults, HOME/config.yaml (or --config), SHOAL_* variables "
        "and these flags, later ones winning. `shoal worker drain ID` takes worker ID of "
        "the cluster (see `shoal workers`) out of placement, `undrain ID` puts it back.",
    )
    p.add_argument(
        "action", nargs="?", choices=("drain", "undrain"), help="act on a cluster's worker"
    )
    p.add_argument("worker_id", nargs="?", metavar="ID", help="the worker to drain or undrain")
    _add_config_options(p)
    p.set_defaults(func=_worker)

    p = subparsers.add_parser(
        "up",
        help="start the worker daemon",
        description="Start this node's worker as a daemon (logging to HOME/worker.log) and "
        "wait until it accepts connections. Does nothing when one already runs.",
    )
    _add_config_options(p)
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for the daemon to answer (default 60)",
    )
    p.set_defaults(func=_up)

    p = subparsers.add_parser(
        "down",
        help="stop the worker daemon",
        description="Wait until the worker of HOME has uploaded the files still pending "
        "(written in write_back mode), progress on stderr, then stop it (SIGTERM) and wait "
        "until it has exited. The cache and the mounts stay for the next start; with "
        "--purge, the MEM tier (RAM on /dev/shm) is removed too.",
    )
    group = p.add_argument_group("worker")
    group.add_argument(
        "--home",
        metavar="DIR",
        help="Shoal home of the worker ($SHOAL_HOME, default ~/.shoal)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds to wait for the worker to exit (default 30)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="kill the worker (SIGKILL) if it has not exited within the timeout",
    )
    uploads = p.add_argument_group("pending uploads")
    uploads.add_argument(
        "--no-wait",
        action="store_true",
        help="stop the worker without waiting for its pending uploads",
    )
    uploads.add_argument(
        "--upload-timeout",
        type=seconds_arg,
        metavar="S",
        help="give up after S seconds of waiting for the uploads, leaving the worker running "
        "(exit status 1; default: no limit)",
    )
    uploads.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.add_argument(
        "--purge",
        action="store_true",
        help="also remove the MEM tier from /dev/shm, freeing the memory it holds (its "
        "pages are fetched again after the next start); the disk tiers, the index and the "
        "mounts stay",
    )
    p.set_defaults(func=_down)


def _worker(args: argparse.Namespace) -> int:
    from ..control._daemon import run_worker, tune_collector

    if args.action is not None:
        from ._workers import drain

        if args.worker_id is None:
            raise ValueError(f"shoal worker {args.action}: give the worker's ID")
        return drain(args)
    if args.worker_id is not None:
        raise ValueError(f"unexpected argument {args.worker_id!r}; did you mean `drain ID`?")
    config = _config(args)
    root = logging.getLogger()
    if not root.handlers:
        from ..control._daemon import LogRateLimit

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
        )
        handler.addFilter(LogRateLimit(handler))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    tune_collector()
    run_worker(config, foreground=True)
    return 0


def _up(args: argparse.Namespace) -> int:
    from ..control._daemon import LOG_FILE, run_worker, running_pid

    config = _config(args)
    pid = running_pid(config.home)
    if pid is not None:
        shown = f"pid {pid}" if pid > 0 else "pid unknown"
        print(f"worker already running ({shown}), home {config.home}")
        return 0
    start = time.monotonic()
    pid = run_worker(config, foreground=False, timeout=args.timeout)
    print(
        f"worker started (pid {pid}) in {format_duration(time.monotonic() - start)}, "
        f"home {config.home}, log {os.path.join(config.home, LOG_FILE)}"
    )
    return 0


def _down(args: argparse.Namespace) -> int:
    from .._config import default_home

    home = os.path.abspath(os.path.expanduser(args.home)) if args.home else default_home()
    if not args.no_wait:
        _upload_pending(home, args)
    pid = stop_worker(home, timeout=args.timeout, force=args.force)
    if pid is None:
        print(f"no worker running, home {home}")
    else:
        print(f"worker stopped (pid {pid}), home {home}")
    if args.purge:
        removed = purge_mem_tier(home)
        print(f"MEM tier {removed} removed" if removed else "no MEM tier to remove")
    return 0


def _upload_pending(home: str, args: argparse.Namespace) -> None:
    """Wait until the running worker of ``home`` (if any) has uploaded what it holds for
    its under-stores, saying how much that is first; nothing when nothing is pending."""
    import dataclasses

    from .._config import load_config
    from ..client import Client
    from ..control._daemon import running_pid
    from ._persist import progress_bar, wait_for_uploads
    from ._report import files_phrase

    pid = running_pid(home)
    if pid is None or pid <= 0:
        return  # nothing to ask: stop_worker says what it finds
    # This node's worker over its socket, even in a cluster; never start one.
    config = dataclasses.replace(load_config(home=home), etcd=None, membership_file=None)
    with Client(config, start_worker=False) as client:
        try:
            client.wait_persisted(timeout=0)
            return
        except TimeoutError:
            wb = client.report()["writeback"]
        except ConnectionError:
            return  # exiting already
        print(
            f"worker (pid {pid}) has {files_phrase(wb['dirty_files'])} "
            f"({format_size(wb['dirty_bytes'])}) to upload; waiting",
            flush=True,
        )
        start = time.monotonic()
        try:
            files, size = wait_for_uploads(client, None, args.upload_timeout, progress_bar(args))
        except TimeoutError as exc:
            raise TimeoutError(
                errno.ETIMEDOUT,
                f"{describe_error(exc)}; the worker keeps running (`shoal down --no-wait` "
                "stops it with its uploads pending)",
            ) from None
    print(
        f"uploaded {files_phrase(files)} ({format_size(size)}) in "
        f"{format_duration(time.monotonic() - start)}"
    )


def purge_mem_tier(home: str) -> str | None:
    """Remove the MEM tier directory of the worker of ``home`` (it lives on /dev/shm, under
    a name derived from the home, and holds memory until removed); the path removed, or
    None when there was none. Call it with the worker stopped."""
    from .._config import mem_dir_of

    mem_dir = mem_dir_of(os.path.abspath(os.path.expanduser(home)))
    if os.path.islink(mem_dir):
        os.unlink(mem_dir)  # never followed: not ours to empty
        return mem_dir
    if not os.path.isdir(mem_dir):
        return None
    shutil.rmtree(mem_dir)
    return mem_dir


def stop_worker(home: str, timeout: float = 30.0, force: bool = False) -> int | None:
    """Stop the worker serving ``home`` and wait until it has exited.

    Parameters
    ----------
    home
        The worker's Shoal home.
    timeout
        Seconds to wait after SIGTERM.
    force
        Send SIGKILL when the worker is still there after ``timeout``.

    Returns
    -------
    int or None
        The stopped worker's pid; None when no worker was running.

    Raises
    ------
    TimeoutError
        The worker is still running after ``timeout`` (and ``force`` is false).
    ProcessLookupError
        The pid file is locked but names no process (it cannot be signalled).
    """
    from ..control._daemon import LOG_FILE, running_pid

    pid = running_pid(home)
    if pid is None:
        return None
    if pid <= 0:
        raise ProcessLookupError(
            errno.ESRCH, f"a worker holds the lock of {home} but its pid is not recorded"
        )
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_gone(home, pid, timeout):
        return pid
    if not force:
        raise TimeoutError(
            errno.ETIMEDOUT,
            f"worker (pid {pid}) did not exit within {timeout:g} s of SIGTERM; see "
            f"{os.path.join(home, LOG_FILE)}, or use `shoal down --force`",
        )
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_gone(home, pid, 10.0):
        raise TimeoutError(errno.ETIMEDOUT, f"worker (pid {pid}) survived SIGKILL")
    return pid


def _wait_gone(home: str, pid: int, timeout: float) -> bool:
    from ..control._daemon import process_alive, running_pid

    deadline = time.monotonic() + timeout
    delay = 0.01
    while process_alive(pid) or running_pid(home) == pid:
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return True
