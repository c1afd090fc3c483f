"""The worker as a process: its pid lock and socket path under ``$SHOAL_HOME``,
:func:`run_worker` (in the foreground, or as a daemon started through a short-lived
launcher), what its TCP peers must prove, its log (rotated, rate-limited),
:func:`wait_ready` and the helpers that tell whether a worker runs.

Nothing here imports the worker's services at module level: a client that starts a worker
loads only this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import gc
import ipaddress
import json
import logging
import logging.handlers
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from .._config import Config, load_config
from .._errors import ShoalError
from .._private import private_dir

__all__ = [
    "LOCK_FILE",
    "LOG_FILE",
    "PID_FILE",
    "SOCKET_FILE",
    "LogRateLimit",
    "WorkerBusyError",
    "WorkerLogHandler",
    "log_tail",
    "process_alive",
    "run_worker",
    "running_pid",
    "socket_path",
    "tune_collector",
    "wait_ready",
]

log = logging.getLogger("shoal.worker")

SOCKET_FILE = "worker.sock"
PID_FILE = "worker.pid"  # locked by the running worker for its lifetime; holds its pid
LOCK_FILE = "worker.lock"  # taken by whoever starts a worker, so that only one does
LOG_FILE = "worker.log"
_SUN_PATH_MAX = 107  # bytes of a Unix socket path, without the NUL
_LOG_BYTES = 16 << 20  # worker.log is rotated past this size ...
_LOG_BACKUPS = 3  # ... keeping worker.log.1 to worker.log.3
_LOG_BURST = 20  # the same message at most this many times ...
_LOG_INTERVAL = 60.0  # ... per this many seconds
_LOG_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
_MAX_NOFILE = 1 << 20  # the descriptor limit a worker raises its soft limit to, at most


class WorkerBusyError(ShoalError, OSError):
    """Another worker already serves this ``$SHOAL_HOME`` (EBUSY)."""


def socket_path(home: str) -> str:
    """The worker's Unix socket under ``home``; ``ValueError`` when too long for one."""
    path = os.path.join(home, SOCKET_FILE)
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ValueError(
            f"socket path {path} is longer than {_SUN_PATH_MAX} bytes, the limit of a Unix "
            "socket; set SHOAL_HOME to a shorter directory"
        )
    return path


def _lock_pid_file(home: str) -> int:
    fd = os.open(os.path.join(home, PID_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    # running_pid() holds a shared lock for a moment: only a lock held for a while is a worker.
    for attempt in range(20):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt == 19:
                other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise WorkerBusyError(
                    errno.EBUSY, f"another worker (pid {other}) already serves {home}"
                ) from None
            time.sleep(0.01)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def running_pid(home: str) -> int | None:
    """The pid of the worker serving ``home``, or None when no worker holds its lock."""
    path = os.path.join(home, PID_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _serve(
    config: Config, stop: threading.Event, on_locked: Callable[[], None] | None = None
) -> None:
    from .. import engine
    from ._membership import load_worker_id
    from ._server import Server, ServerLimits
    from ._worker import Worker

    private_dir(config.home, "Shoal home")
    sock_path = socket_path(config.home)
    security = server_security(config)
    _raise_descriptor_limit()
    lock_fd = _lock_pid_file(config.home)
    if on_locked is not None:
        on_locked()
    try:
        worker = Worker(config, meta_store=_cluster_meta_store(config))
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sock_path)  # left by a worker that died: we hold the lock now
            worker.worker_id = load_worker_id(config.home)  # in hello from the first client
            server = Server(
                worker.handlers(),
                sock_path,
                on_stop=stop.set,
                listen=config.listen,
                on_request=worker.count_request,
                security=security,
                limits=ServerLimits(
                    max_connections=config.max_connections,
                    max_connections_per_peer=config.max_connections_per_peer,
                    idle_timeout=config.idle_timeout,
                    send_timeout=config.send_timeout,
                ),
            )
            # Before the first client: its report names the endpoint.
            metrics = None
            if config.metrics_listen is not None:
                from ._metrics import MetricsServer

                metrics = MetricsServer(config.metrics_listen, worker.report)
                worker.metrics_address = metrics.address
                log.info("worker %d serves metrics on http://%s/metrics", os.getpid(),
                         metrics.address)  # fmt: skip
            try:
                server.start(
                    before_accepting=lambda: log.info(
                        "worker %d serving %s (engine %s, tiers %s)",
                        os.getpid(),
                        sock_path,
                        engine.backend(),
                        ", ".join(f"{t.name} {t.capacity} B at {t.path}" for t in config.tiers()),
                    )
                )
            except BaseException:
                if metrics is not None:
                    metrics.close()
                raise
            try:
                registration = _join_cluster(config, worker, server.address, sock_path)
            except BaseException:
                if metrics is not None:
                    metrics.close()
                server.stop()
                raise
            if server.address is not None:
                log.info(
                    "worker %s listening on %s (%s%s)",
                    worker.worker_id,
                    server.address,
                    "peers prove the cluster secret"
                    if security.cluster_secret is not None
                    else "no cluster secret: loopback only",
                    ", TLS" if security.tls is not None else "",
                )
            try:
                while not stop.wait(0.5):
                    pass
            finally:
                log.info("worker %d stopping", os.getpid())
                if registration is not None:
                    registration.close()  # leave placement before refusing requests
                if metrics is not None:
                    metrics.close()
                server.stop()
        finally:
            worker.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sock_path)
    finally:
        os.close(lock_fd)
    log.info("worker %d stopped", os.getpid())


def _cluster_meta_store(config: Config):
    """The cluster's shared MetaStore (in etcd), or None for the node's own."""
    if config.etcd is None:
        return None
    from ._etcd import EtcdCredentials, EtcdMetaStore

    return EtcdMetaStore(config.etcd, credentials=EtcdCredentials.from_config(config))


def server_security(config: Config):
    """What the worker's TCP peers must prove, from ``config`` (secrets read, TLS loaded).

    Raises
    ------
    ValueError
        ``listen`` is not a loopback address and there is no ``cluster_secret_file``; an
        admin secret without a cluster secret; a secret file that is empty or too short.
    PermissionError
        A secret file open to its group or others.
    """
    from ._server import ServerSecurity, tls_server_context
    from .proto import load_secret

    cluster = admin = tls = None
    if config.cluster_secret_file is not None:
        cluster = load_secret(config.cluster_secret_file, "cluster_secret_file")
    if config.admin_secret_file is not None:
        admin = load_secret(config.admin_secret_file, "admin_secret_file")
        if cluster is None:
            raise ValueError(
                "admin_secret_file needs cluster_secret_file: the admin proof is part of the "
                "cluster handshake"
            )
        if admin == cluster:
            raise ValueError("admin_secret_file must hold another secret than cluster_secret_file")
    if config.listen is not None and cluster is None and not _loopback(config.listen):
        raise ValueError(
            f"listen {config.listen} is reachable from other hosts, and the worker has no "
            "cluster secret to tell its peers by: make one with `shoal secret new FILE`, "
            "give the same file (mode 0600) to every worker and client of the cluster, and "
            "start the worker with --cluster-secret-file FILE (cluster_secret_file in "
            "config.yaml, or SHOAL_CLUSTER_SECRET_FILE)"
        )
    if config.listen is not None and config.tls_cert is not None:
        tls = tls_server_context(config.tls_cert, config.tls_key)
    return ServerSecurity(cluster, admin, tls)


def _loopback(listen: str) -> bool:
    """True if every address ``HOST`` of ``HOST:PORT`` names is a loopback address."""
    host = listen.rpartition(":")[0].strip("[]")
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    try:
        return bool(infos) and all(
            ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos
        )
    except ValueError:
        return False


def _raise_descriptor_limit() -> None:
    """Raise the soft limit on open descriptors to the hard one: each connection holds
    one, and connections past the limit are what the worker must survive, not cause."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = _MAX_NOFILE if hard == resource.RLIM_INFINITY else min(hard, _MAX_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _advertised(address: str | None) -> str | None:
    """The address other hosts reach a TCP endpoint at (a wildcard bind names this host)."""
    if address is None:
        return None
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "[::]", ""):
        host = socket.getfqdn()
    return f"{host}:{port}"


def _join_cluster(config: Config, worker, address: str | None, sock_path: str):
    """Give the worker its stable id and, with etcd, register it (the registration is
    returned, to be closed before the server stops); a static membership file is checked
    to list it."""
    from ._membership import WorkerRegistration, load_static_members

    worker.in_cluster = config.etcd is not None or config.membership_file is not None
    if config.membership_file is not None:
        members = load_static_members(config.membership_file)
        mine = [m for m in members if m.address == address or m.address == config.listen]
        if not mine:
            mine = [m for m in members if m.host_id == config.host_id]
        if len(mine) != 1:
            raise ValueError(
                f"membership file {config.membership_file}: no single worker with address "
                f"{config.listen} or host id {config.host_id!r}"
            )
        worker.worker_id = mine[0].id
        return None
    if config.etcd is None:
        return None
    if address is None:
        raise ValueError("a worker in an etcd cluster needs listen (HOST:PORT) set")
    from ._etcd import EtcdCredentials
    from ._membership import local_worker_info

    info = local_worker_info(config, address=_advertised(address), socket_path=sock_path)
    registration = WorkerRegistration(
        config.etcd,
        info,
        used_bytes=worker.usage.used_bytes,
        credentials=EtcdCredentials.from_config(config),
    )

    def health() -> dict:
        return {
            "worker_id": registration.info.id,
            "etcd": registration.endpoint,
            "state": registration.info.state.value,
            "registered": registration.healthy,
            "last_error": registration.last_error,
        }

    worker.cluster_health = health
    log.info("worker %s registered in etcd at %s", info.id, registration.endpoint)
    return registration


def run_worker(config: Config | None = None, foreground: bool = True, timeout: float = 60.0):
    """Run the worker of ``config.home`` (the loaded configuration by default).

    Parameters
    ----------
    config
        Settings; :func:`~shoal._config.load_config` when None.
    foreground
        True: serve in this process until SIGTERM or SIGINT (or a ``stop`` request), then
        shut down cleanly (stop accepting, abort requests in flight, close the page store
        and the mount table, remove the socket) and return None. False: start a detached
        daemon (a session of its own, output appended to ``$SHOAL_HOME/worker.log``), wait
        until it accepts connections and return its pid.
    timeout
        Seconds to wait for a daemon to accept connections.

    Raises
    ------
    WorkerBusyError
        Another worker already serves this home (foreground).
    ConnectionError
        The daemon exited or did not answer in time; the message points at the log.
    """
    config = config if config is not None else load_config()
    if not foreground:
        return _start_daemon(config, timeout)
    _run_foreground(config)
    return None


def _run_foreground(config: Config, on_locked: Callable[[], None] | None = None) -> None:
    """Serve until SIGTERM, SIGINT or ``stop``; ``on_locked`` runs once this process is
    the home's worker (it holds the pid lock)."""
    stop = threading.Event()
    old = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            old[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        _serve(config, stop, on_locked)
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


# The daemon: a short-lived launcher starts it in a session of its own and exits, so the
# daemon is nobody's child (no zombie in the process that asked for it).
_LAUNCHER = """
import os, subprocess, sys
home, log, code, cfg = sys.argv[1:5]
with os.fdopen(os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as out:
    p = subprocess.Popen([sys.executable, "-c", code, cfg], stdin=subprocess.DEVNULL,
                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                         close_fds=True, cwd="/")
print(p.pid, flush=True)
"""
_DAEMON = "from shoal.control._daemon import _daemon_main; _daemon_main()"


#: The cyclic collector's thresholds in a worker's own process. Python's default (700
#: container allocations between young collections) runs the full collection over and over
#: while a load adds hundreds of thousands of cached files to the heap: with it, 40% of a
#: load of small files went to the collector. A young generation of 50,000 keeps young
#: collections cheap and rare; full ones still wait for the heap to grow by a quarter.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_collector() -> None:
    """Set :data:`GC_THRESHOLDS`: for a process that does nothing but serve as a worker
    (the daemon, ``shoal worker --foreground``); a worker run inside another program leaves
    that program's collector alone."""
    gc.set_threshold(*GC_THRESHOLDS)


def _daemon_main() -> None:
    """Entry point of the daemon process: the configuration comes as JSON in argv[1]."""
    os.umask(0o077)  # whatever the worker creates is its own user's alone
    tune_collector()
    # stderr first (worker.log, appended by the launcher); the rotated log once this
    # process is the home's worker, so that a second one never rotates the first's log.
    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)
    threading.excepthook = _log_thread_exception
    try:
        config = Config(**json.loads(sys.argv[1]))
        _run_foreground(config, on_locked=lambda: _log_to_file(config.home))
    except WorkerBusyError as exc:
        log.error("%s", exc.strerror)
        sys.exit(1)
    except OSError as exc:  # the machine's answer (an address in use, a path refused)
        log.error("worker failed: %s", exc.strerror if exc.strerror and not exc.filename else exc)
        sys.exit(1)
    except BaseException:
        log.exception("worker failed")
        sys.exit(1)


def _log_to_file(home: str) -> None:
    """Send the process's log, and its stdout and stderr, to ``home``'s worker.log."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.addHandler(WorkerLogHandler(os.path.join(home, LOG_FILE), redirect=True))
    root.setLevel(logging.INFO)


def _log_thread_exception(args) -> None:
    if args.exc_type is SystemExit:
        return
    log.error(
        "thread %s failed",
        getattr(args.thread, "name", "?"),
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


class LogRateLimit(logging.Filter):
    """Lets the same message (logger, level and format string) through at most ``burst``
    times per ``interval`` seconds; the first record after an interval in which some were
    dropped is preceded by one line saying how many.

    Parameters
    ----------
    handler
        The handler this filter is attached to (it writes the summary lines).
    burst, interval
        Records of one message let through per interval.
    clock
        Seconds, monotonic.
    """

    _MAX_KEYS = 4096

    def __init__(
        self,
        handler: logging.Handler,
        burst: int = _LOG_BURST,
        interval: float = _LOG_INTERVAL,
        clock=time.monotonic,
    ):
        super().__init__()
        self._handler = handler
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple, list] = {}  # key -> [start, let through, dropped, template]

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "shoal_summary", False):
            return True
        now = self._clock()
        template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        key = (record.name, record.levelno, template)
        with self._lock:
            summaries = self._expire(now)
            window = self._windows.get(key)
            if window is None:
                if len(self._windows) >= self._MAX_KEYS:
                    self._windows.clear()  # many distinct messages: start counting afresh
                window = self._windows[key] = [now, 0, 0, template]
            keep = window[1] < self.burst
            window[1 if keep else 2] += 1
        for name, levelno, text, dropped in summaries:
            summary = logging.LogRecord(
                name,
                max(levelno, logging.WARNING),
                __file__,
                0,
                "%d more messages like %r were dropped in the last %.0f s",
                (dropped, text[:200], self.interval),
                None,
            )
            summary.shoal_summary = True
            self._handler.handle(summary)
        return keep

    def _expire(self, now: float) -> list[tuple]:
        """Forget the windows that ended; the summaries of those that dropped records."""
        out = []
        for key, (start, _, dropped, template) in list(self._windows.items()):
            if now - start >= self.interval:
                del self._windows[key]
                if dropped:
                    out.append((key[0], key[1], template, dropped))
        return out


class WorkerLogHandler(logging.handlers.RotatingFileHandler):
    """The worker's log file: rotated past 16 MiB (three old files kept), rate-limited
    (:class:`LogRateLimit`).

    With ``redirect``, the process's stdout and stderr (tracebacks of dying threads, native
    code's messages) go to the current file too, and follow it when it is rotated.
    """

    def __init__(
        self,
        path: str,
        max_bytes: int = _LOG_BYTES,
        backups: int = _LOG_BACKUPS,
        redirect: bool = False,
        rate_limit: LogRateLimit | None = None,
    ):
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._redirect = redirect
        self.setFormatter(logging.Formatter(_LOG_FORMAT))
        self.addFilter(rate_limit if rate_limit is not None else LogRateLimit(self))
        self._point_std_streams()

    def doRollover(self) -> None:  # noqa: N802 (logging's name)
        super().doRollover()
        self._point_std_streams()

    def _point_std_streams(self) -> None:
        if not self._redirect or self.stream is None:
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stream.flush()
                os.dup2(self.stream.fileno(), stream.fileno())


def _start_daemon(config: Config, timeout: float) -> int:
    private_dir(config.home, "Shoal home")
    socket_path(config.home)  # fail early on a home too long for a socket
    log_path = os.path.join(config.home, LOG_FILE)
    env = dict(os.environ)
    # The daemon must import this same shoal, installed or not.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    cfg = json.dumps(dataclasses.asdict(config))
    out = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, config.home, log_path, _DAEMON, cfg],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0 or not out.stdout.strip().isdigit():
        raise ConnectionError(
            errno.ECHILD,
            f"could not launch the worker daemon: {out.stderr.decode(errors='replace')[-2000:]}",
        )
    pid = int(out.stdout)
    wait_ready(config.home, pid, timeout)
    return pid


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


def log_tail(home: str, lines: int = 20) -> str:
    """The last lines of the worker's log, for error messages."""
    try:
        with open(os.path.join(home, LOG_FILE), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(home: str, pid: int | None, timeout: float) -> None:
    """Wait until the worker of ``home`` accepts connections.

    Raises ``ConnectionError`` naming the log when process ``pid`` exits first or the
    timeout passes.
    """
    path = socket_path(home)
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
                return
            except (FileNotFoundError, ConnectionRefusedError):
                pass
        logfile = os.path.join(home, LOG_FILE)
        if pid is not None and not process_alive(pid):
            raise ConnectionError(
                errno.ECONNREFUSED,
                f"the Shoal worker (pid {pid}) exited during start-up; see {logfile}:\n"
                + log_tail(home),
            )
        if time.monotonic() > deadline:
            raise ConnectionError(
                errno.ETIMEDOUT,
                f"the Shoal worker did not answer on {path} within {timeout:.0f} s; see {logfile}",
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
