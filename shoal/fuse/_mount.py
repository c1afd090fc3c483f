"""Mounting and unmounting: the FUSE process (never the worker), in the foreground or as a
daemon, and the kernel's read-ahead for the mount."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import NoReturn

__all__ = ["is_mounted", "mount", "unmount", "DEFAULT_READ_AHEAD"]

log = logging.getLogger("shoal.fuse")

#: Kernel read-ahead of a mount (``/sys/class/bdi/*/read_ahead_kb``): large sequential reads
#: keep several 1 MiB requests in flight. The kernel's default for FUSE is 128 KiB.
DEFAULT_READ_AHEAD = 8 << 20
_OCTAL = re.compile(r"\\([0-7]{3})")


def _mountinfo() -> list[tuple[str, str, str]]:
    """``(mount point, major:minor, fs type)`` of every mount of this process's namespace."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4])  # \040: space
            out.append((point, fields[2], fields[sep + 1]))
    return out


def _canonical(mountpoint: str) -> str:
    """``mountpoint`` made absolute with its parent's links resolved, never looking at the
    mount point itself (asking a FUSE mount whose process is not answering would hang)."""
    path = os.path.abspath(os.path.expanduser(mountpoint))
    head, tail = os.path.split(path)
    return os.path.join(os.path.realpath(head), tail) if tail else path


def is_mounted(mountpoint: str) -> bool:
    """True when a Shoal FUSE file system is mounted at ``mountpoint``."""
    point = _canonical(mountpoint)
    return any(p == point and t.startswith("fuse.shoal") for p, _, t in _mountinfo())


def _device(mountpoint: str) -> str | None:
    point = _canonical(mountpoint)
    found = [dev for p, dev, t in _mountinfo() if p == point and t.startswith("fuse")]
    return found[-1] if found else None


def set_read_ahead(mountpoint: str, nbytes: int) -> bool:
    """Set the kernel's read-ahead of the FUSE mount at ``mountpoint`` (root only: the
    setting lives in sysfs); True when it was set."""
    dev = _device(mountpoint)
    if dev is None:
        return False
    want = str(max(4, nbytes >> 10))
    try:
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(want)
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb") as f:
            return f.read().strip() == want
    except OSError as exc:
        log.info("kernel read-ahead of %s left as is: %s", mountpoint, exc)
        return False


def _answers(point: str, timeout: float = 5.0) -> bool:
    """True when the file system mounted at ``point`` answers a stat within ``timeout``
    (False for a FUSE mount whose process is gone: "Transport endpoint is not
    connected"). The stat runs in a thread of its own, which a hung mount may keep."""
    result: list[BaseException | None] = []

    def probe() -> None:
        try:
            os.stat(point)
            result.append(None)
        except OSError as exc:
            result.append(exc)

    t = threading.Thread(target=probe, name="shoal-fuse-probe", daemon=True)
    t.start()
    t.join(timeout)
    if not result:
        return True  # hung, not gone: its process still holds it
    exc = result[0]
    return not (isinstance(exc, OSError) and exc.errno == errno.ENOTCONN)


def _unmount_command(point: str, lazy: bool) -> list[str]:
    """fusermount3 (which a user may run on their own mounts), else umount."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is not None:
        return [tool, "-u", *(["-z"] if lazy else []), point]
    return ["umount", *(["-l"] if lazy else []), point]


def _lazy_unmount(point: str) -> None:
    subprocess.run(_unmount_command(point, lazy=True), capture_output=True, timeout=30)


def _check_mountpoint(mountpoint: str) -> str:
    point = _canonical(mountpoint)
    if is_mounted(point):
        if _answers(point):
            raise OSError(errno.EBUSY, "Shoal is mounted there already", point)
        # Its process is gone ("Transport endpoint is not connected"): mount anew.
        log.warning("replacing the dead Shoal mount at %s", point)
        _lazy_unmount(point)
    if not os.path.lexists(point):
        raise FileNotFoundError(errno.ENOENT, "mount point does not exist", point)
    if not os.path.isdir(point):
        raise NotADirectoryError(errno.ENOTDIR, "mount point is not a directory", point)
    if is_mounted(point) or os.path.ismount(point):
        raise OSError(errno.EBUSY, "something is already mounted there", point)
    return point


def _options(allow_other: bool, read_only: bool = True) -> set[str]:
    import pyfuse3

    options = set(pyfuse3.default_options) | {"fsname=shoal", "subtype=shoal"}
    if read_only:
        options.add("ro")
    if allow_other:
        options.add("allow_other")
    return options


def _serve(
    point: str,
    make_client: Callable[[], object],
    *,
    allow_other: bool,
    threads: int,
    read_ahead: int,
    ready: Callable[[], None] | None = None,
) -> None:
    """Mount at ``point`` and answer requests until unmounted or told to stop (SIGTERM,
    SIGINT); always unmounts before it returns."""
    import pyfuse3
    import trio

    from ._ops import ShoalOperations

    client = make_client()
    ops = ShoalOperations(client, threads=threads)
    pyfuse3.init(ops, point, _options(allow_other))
    try:

        async def tune() -> None:
            # The kernel sets the mount's read-ahead from the INIT reply: set ours after it.
            for _ in range(50):
                await trio.sleep(0.02)
                if await trio.to_thread.run_sync(set_read_ahead, point, read_ahead):
                    return

        async def main() -> None:
            async with trio.open_nursery() as nursery:

                async def on_signals() -> None:
                    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                        async for _ in signals:
                            pyfuse3.terminate()
                            return

                nursery.start_soon(on_signals)
                if read_ahead:
                    nursery.start_soon(tune)
                if ready is not None:
                    ready()
                await pyfuse3.main(min_tasks=2, max_tasks=max(8, 2 * threads))
                nursery.cancel_scope.cancel()

        trio.run(main)
    finally:
        # Unmounted from outside (fusermount3 -u), the session is over already.
        with contextlib.suppress(Exception):
            pyfuse3.close(unmount=is_mounted(point))
        with contextlib.suppress(Exception):
            client.close()


def mount(
    mountpoint: str,
    make_client: Callable[[], object],
    *,
    foreground: bool = False,
    allow_other: bool = False,
    threads: int = 16,
    read_ahead: int = DEFAULT_READ_AHEAD,
    log_file: str | None = None,
    ready_timeout: float = 60.0,
    restart: bool = True,
) -> int:
    """Mount Shoal's namespace at ``mountpoint``.

    Parameters
    ----------
    mountpoint
        An existing directory where nothing is mounted.
    make_client
        Makes the :class:`shoal.Client` the mount reads through, in the process that
        serves it (after the fork, when it runs as a daemon).
    foreground
        Serve in this process until unmounted (or SIGTERM / SIGINT); else start a daemon
        and return once the mount answers.
    allow_other
        Let users other than the mounting one read it (``user_allow_other`` in
        ``/etc/fuse.conf`` when not root).
    threads
        Requests served at once.
    read_ahead
        The kernel's read-ahead for the mount, in bytes (set when running as root).
    log_file
        Where a daemon writes its log (default: discarded).
    restart
        When the process serving the mount dies, take its dead mount down and mount again
        from a new one (a daemon only; files open in the dead mount stay unreadable).

    Returns
    -------
    int
        The pid of the process serving the mount (a daemon: its supervisor, which
        ``shoal fuse umount`` and SIGTERM end).

    Raises
    ------
    FileNotFoundError, NotADirectoryError, OSError(EBUSY)
        A bad mount point.
    OSError
        The mount failed (the daemon's own error message in it).
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    if isinstance(read_ahead, bool) or not isinstance(read_ahead, int) or read_ahead < 0:
        raise ValueError(f"read_ahead must be a number of bytes >= 0, got {read_ahead!r}")
    point = _check_mountpoint(mountpoint)
    if not os.path.exists("/dev/fuse"):
        raise FileNotFoundError(errno.ENOENT, "no FUSE device (is the fuse module loaded?)",
                                "/dev/fuse")  # fmt: skip
    if foreground:
        _serve(point, make_client, allow_other=allow_other, threads=threads,
               read_ahead=read_ahead)  # fmt: skip
        return os.getpid()

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon: a supervisor, and the process serving the mount under it
        os.close(r)

        def daemon() -> int:
            os.setsid()
            os.chdir("/")  # keep no directory of the caller's busy
            _detach(log_file)
            serve = {"allow_other": allow_other, "threads": threads, "read_ahead": read_ahead}
            return _supervise(point, make_client, w, restart, serve)

        _child(daemon, w)
    os.close(w)
    answer = _read_answer(r, ready_timeout)
    if answer != "ok":
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise OSError(errno.EIO, f"mount at {point} failed: {answer or 'no answer'}")
    return pid


#: Tries in a row at mounting again, after the process serving a mount died, before the
#: supervisor gives up; and the longest wait between two.
MAX_RESTARTS = 5
MAX_BACKOFF = 30.0


def _supervise(point: str, make_client, notify: int, restart: bool, serve: dict) -> int:
    """Serve the mount from a child process; when that process dies (killed, crashed),
    take its dead mount down and mount again from a new one, so that the mount point
    never stays "Transport endpoint is not connected". The first mount's outcome is
    written to ``notify``. SIGTERM / SIGINT unmount and end it. Returns the exit status."""
    state = {"child": 0, "stopping": False}

    def on_stop(signum, frame) -> None:
        state["stopping"] = True
        if state["child"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(state["child"], signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    failures, backoff, first = 0, 0.5, True
    while True:
        ready_r, ready_w = os.pipe()
        child = os.fork()
        if child == 0:  # the process serving the mount
            os.close(ready_r)
            _child(functools.partial(_server, point, make_client, ready_w, serve), ready_w)
        state["child"] = child
        os.close(ready_w)
        answer = _read_answer(ready_r, 60.0)
        if first:
            first = False
            os.write(notify, f"{answer}\n".encode())
            os.close(notify)
            if answer != "ok":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
                return 1
        _, status = os.waitpid(child, 0)
        state["child"] = 0
        if state["stopping"] or (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            return 0  # told to stop, or unmounted (fusermount3 -u): done
        if answer == "ok":  # it served, then died: start counting again
            failures, backoff = 0, 0.5
        failures += 1
        if not restart or failures > MAX_RESTARTS:
            log.error("the process serving %s died (status %#x); not mounting again", point,
                      status)  # fmt: skip
            if is_mounted(point):
                _lazy_unmount(point)
            return 1
        log.warning("the process serving %s died (status %#x); mounting again in %.1f s",
                    point, status, backoff)  # fmt: skip
        if is_mounted(point):
            _lazy_unmount(point)
        time.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF)
        if state["stopping"]:
            return 0


def _server(point: str, make_client, ready_fd: int, serve: dict) -> int:
    """The process serving the mount, under its supervisor: ``ok`` on ``ready_fd`` once
    mounted."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _serve(point, make_client, ready=functools.partial(os.write, ready_fd, b"ok\n"), **serve)
    return 0


def _child(body: Callable[[], int], report: int) -> NoReturn:
    """End a forked process with ``body()``'s status; a failure is written to ``report``
    (where the parent waits for ``ok``) and logged, with status 1."""
    code = 1
    try:
        code = body()
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(report, f"error {type(exc).__name__}: {exc}\n".encode()[:4000])
        log.exception("shoal fuse: %s", exc)
    finally:
        os._exit(code)


def _read_answer(fd: int, timeout: float) -> str:
    import select

    deadline = time.monotonic() + timeout
    data = b""
    try:
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return "the mount did not answer in time"
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data.decode(errors="replace").strip()


def _detach(log_file: str | None) -> None:
    """Standard streams to ``log_file`` (or /dev/null), logging there too."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    out = null
    if log_file is not None:
        out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.dup2(out, 1)
    os.dup2(out, 2)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )


def unmount(mountpoint: str, *, lazy: bool = False, timeout: float = 10.0) -> None:
    """Unmount the Shoal FUSE mount at ``mountpoint``; its daemon then exits.

    Raises
    ------
    OSError(EINVAL)
        Nothing of Shoal is mounted there.
    OSError(EBUSY)
        A process still uses the mount (``lazy`` detaches it now, unmounting once unused).
    """
    point = _canonical(mountpoint)
    if not is_mounted(point):
        raise OSError(errno.EINVAL, "no Shoal FUSE mount there", point)
    cmd = _unmount_command(point, lazy)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        text = message[-1] if message else f"{cmd[0]} exited with {done.returncode}"
        code = errno.EBUSY if "busy" in text.lower() else errno.EIO
        raise OSError(code, text, point)
    deadline = time.monotonic() + timeout
    while not lazy and is_mounted(point) and time.monotonic() < deadline:
        time.sleep(0.02)
