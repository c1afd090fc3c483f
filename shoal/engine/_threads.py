"""Fallback backend: a thread pool of preadv / pwritev, for hosts without io_uring."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from .._errors import PageCorruptedError
from . import _crc
from ._requests import fd_name, is_aligned

__all__ = ["ThreadsBackend"]


def _direct_fd(fd: int) -> int:
    return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)


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
        read_fd = fd
        try:
            if direct and is_aligned(view, buf_offset, offset, length):
                read_fd = _direct_fd(fd)
            done = 0
            while done < length:
                n = os.preadv(
                    read_fd, [view[buf_offset + done : buf_offset + length]], offset + done
                )
                if n == 0:
                    break
                done += n
        except OSError as exc:
            return OSError(exc.errno, exc.strerror, fd_name(fd))
        finally:
            if read_fd != fd:
                os.close(read_fd)
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
                done += os.pwritev(fd, [view[buf_offset + done : buf_offset + length]], offset + done)
        except OSError as exc:
            return OSError(exc.errno, exc.strerror, fd_name(fd))
        return done

    def _read_file(self, path, view: memoryview, dir_fd: int | None) -> int | BaseException:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            return type(exc)(exc.errno, exc.strerror, os.fsdecode(path))
        try:
            size = os.fstat(fd).st_size
            if size > view.nbytes:
                return ValueError(
                    f"{os.fsdecode(path)}: file of {size} bytes does not fit in a buffer of "
                    f"{view.nbytes} bytes"
                )
            done = 0
            while done < size:
                n = os.preadv(fd, [view[done:size]], done)
                if n == 0:
                    break
                done += n
            return done
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
        return self._run(self._read_one, [(r, direct, c) for r, c in zip(requests, checks)])

    def write_batch(self, requests):
        return self._run(self._write_one, [(r,) for r in requests])

    def read_files(self, paths, views, dir_fd):
        return self._run(self._read_file, [(p, v, dir_fd) for p, v in zip(paths, views)])
