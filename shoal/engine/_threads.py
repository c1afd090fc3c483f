"""Fallback backend: a thread pool of preadv / pwritev, for hosts without io_uring."""

from __future__ import annotations

import errno
import fcntl
import os
from concurrent.futures import ThreadPoolExecutor

from .._errors import PageCorruptedError
from . import _crc
from ._requests import ALIGN, fd_name, is_aligned

__all__ = ["ThreadsBackend"]


def _direct_fd(fd: int) -> int | None:
    """The file of ``fd`` reopened with O_DIRECT, or None to read through the page cache
    (file systems without O_DIRECT, descriptors not open for reading, bad descriptors)."""
    try:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
            return None
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return None


class ThreadsBackend:
    """Runs each request of a batch on a pool thread; ``os.preadv`` releases the GIL."""

    name = "threads"

    def __init__(self, workers: int | None = None):
        self._pool = ThreadPoolExecutor(
            max_workers=workers or min(32, 4 * (os.cpu_count() or 1)),
            thread_name_prefix="shoal-io",
        )

    def _read_one(self, req: tuple, direct: bool, expected: int | None) -> int | BaseException:
        fd, offset, length, view, buf_offset, _ = req
        direct_fd = None
        if direct and length and is_aligned(view, buf_offset, offset, length):
            direct_fd = _direct_fd(fd)
        read_fd = fd if direct_fd is None else direct_fd
        try:
            done = 0
            while done < length:
                try:
                    n = os.preadv(
                        read_fd, [view[buf_offset + done : buf_offset + length]], offset + done
                    )
                except OSError as exc:
                    if exc.errno != errno.EINVAL or read_fd == fd:
                        raise
                    read_fd = fd  # O_DIRECT refused: page cache instead
                    continue
                if n == 0:
                    break
                done += n
                if read_fd != fd and ((offset + done) % ALIGN or (length - done) % ALIGN):
                    read_fd = fd  # the rest of a short O_DIRECT read is no longer aligned
        except OSError as exc:
            return OSError(exc.errno, exc.strerror, fd_name(fd))
        finally:
            if direct_fd is not None:
                os.close(direct_fd)
        if expected is not None:
            got = _crc.crc32c(view[buf_offset : buf_offset + done])
            if got != expected:
                return PageCorruptedError(
                    f"crc32c mismatch: {done} bytes at offset {offset} read back as "
                    f"{got:#010x}, expected {expected:#010x}",
                    fd_name(fd),
                )
        return done

    def _write_one(self, req: tuple) -> int | BaseException:
        fd, offset, length, view, buf_offset, _ = req
        done = 0
        try:
            while done < length:
                n = os.pwritev(fd, [view[buf_offset + done : buf_offset + length]], offset + done)
                if n == 0:  # no progress: report it rather than spin
                    return OSError(errno.EIO, os.strerror(errno.EIO), fd_name(fd))
                done += n
        except OSError as exc:
            return OSError(exc.errno, exc.strerror, fd_name(fd))
        return done

    def _read_file(self, path, view: memoryview, dir_fd: int | None) -> int | BaseException:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            return type(exc)(exc.errno, exc.strerror, os.fsdecode(path))
        try:
            # One byte beyond the buffer shows a file that does not fit, without a stat.
            extra = bytearray(1)
            done = 0
            while True:
                n = os.preadv(fd, [view[done:], extra], done)
                if n == 0:
                    return done
                done += n
                if done > view.nbytes:
                    size = os.fstat(fd).st_size
                    size_text = f"{size}" if size > view.nbytes else f"more than {view.nbytes}"
                    return ValueError(
                        f"{os.fsdecode(path)}: file of {size_text} bytes does not fit in a "
                        f"buffer of {view.nbytes} bytes"
                    )
        except OSError as exc:
            return type(exc)(exc.errno, exc.strerror, os.fsdecode(path))
        finally:
            os.close(fd)

    def _run(self, fn, items):
        if len(items) == 1:
            return [fn(*items[0])]
        return list(self._pool.map(lambda args: fn(*args), items))

    def read_batch(self, requests, direct, checksums):
        checks = checksums if checksums is not None else [None] * len(requests)
        return self._run(
            self._read_one, [(r, direct, c) for r, c in zip(requests, checks, strict=True)]
        )

    def write_batch(self, requests):
        return self._run(self._write_one, [(r,) for r in requests])

    def read_files(self, paths, views, dir_fd):
        return self._run(
            self._read_file, [(p, v, dir_fd) for p, v in zip(paths, views, strict=True)]
        )
