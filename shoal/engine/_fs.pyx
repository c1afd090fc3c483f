# cython: language_level=3
"""Opens beneath a directory that follow no symbolic link: a thin layer over
``src/beneath.c``.

``openat2(2)`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`` where the kernel has it
(Linux 5.6 and later) and no seccomp filter refuses it, else a walk of ``openat(2)`` calls,
one per component, each with ``O_NOFOLLOW``. Either way the kernel resolves every
component of the path itself, so a link swapped in between a check and an open is never
followed: there is no check apart from the open.
"""

import errno
import os
import sys

__all__ = [
    "METHODS", "list_sorted", "method", "open_beneath", "openat2_available",
    "read_items_beneath",
]

_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.errno cimport (
    errno as c_errno, EINTR, EISDIR, EINVAL, EAGAIN, EMFILE, ENFILE, ENOMEM, ESTALE,
)
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdio cimport snprintf
from libc.string cimport memcmp, memset
from libc.stdlib cimport calloc, free, malloc, qsort, realloc
from posix.stat cimport struct_stat, fstat, S_ISREG, S_ISDIR
from posix.unistd cimport close, pread
from posix.fcntl cimport O_RDONLY, O_NONBLOCK, O_CLOEXEC


cdef extern from "<sys/types.h>":
    ctypedef unsigned int mode_t

cdef extern from "<dirent.h>" nogil:
    ctypedef struct DIR
    struct dirent:
        unsigned char d_type
        char d_name[256]
    DIR *fdopendir(int fd)
    void rewinddir(DIR *dirp)
    dirent *readdir(DIR *dirp)
    int closedir(DIR *dirp)
    int DT_DIR, DT_REG, DT_UNKNOWN

cdef extern from "<fcntl.h>" nogil:
    int AT_SYMLINK_NOFOLLOW
    int POSIX_FADV_WILLNEED
    int posix_fadvise(int fd, long long offset, long long length, int advice)
    int fstatat(int dirfd, const char *path, struct_stat *buf, int flags)
    int dup(int fd)

cdef extern from "<string.h>" nogil:
    size_t strlen(const char *s)
    void *memcpy(void *dest, const void *src, size_t n)

cdef extern from *:
    """
    #include <sys/uio.h>
    #ifndef RWF_NOWAIT
    #define RWF_NOWAIT 0x00000008
    #endif
    """
    struct iovec:
        void *iov_base
        size_t iov_len
    int RWF_NOWAIT
    ssize_t preadv2(int fd, const iovec *iov, int iovcnt, long long offset, int flags) nogil

cdef extern from *:
    """
    #include <errno.h>
    static void shoal_clear_errno(void) { errno = 0; }
    """
    void shoal_clear_errno() nogil

cdef extern from "Python.h":
    object PyUnicode_Decode(const char *s, Py_ssize_t size, const char *encoding,
                            const char *errors)
    object PyUnicode_FromStringAndSize(const char *s, Py_ssize_t size)

cdef extern from "beneath.h" nogil:
    int SHOAL_BENEATH_OPENAT2
    int SHOAL_BENEATH_WALK
    int shoal_openat2_probe()
    int shoal_open_beneath(int root_fd, const char *path, int flags, mode_t mode, int method)


#: What ``SHOAL_OPEN_BENEATH`` may name, besides ``auto``.
METHODS = ("openat2", "walk")

cdef int _probed = 0  # 0: not yet; else 1 + the probe's result (0 or -errno)


def openat2_available():
    """True when this process may call ``openat2`` with the resolve flags used here;
    probed once, then cached (false on kernels before 5.6 and under seccomp filters that
    answer ``ENOSYS`` or ``EPERM``)."""
    global _probed
    cdef int rc
    if _probed == 0:
        with nogil:
            rc = shoal_openat2_probe()
        _probed = 1 + rc
    return _probed == 1


def method():
    """Name of the method :func:`open_beneath` uses by default: ``"openat2"`` or ``"walk"``.

    ``SHOAL_OPEN_BENEATH`` chooses one (``auto``, the default, takes ``openat2`` when
    :func:`openat2_available`); naming ``openat2`` where it is unavailable raises
    ``OSError(ENOSYS)``.
    """
    name = os.environ.get("SHOAL_OPEN_BENEATH", "auto").strip().lower() or "auto"
    if name == "auto":
        return "openat2" if openat2_available() else "walk"
    if name not in METHODS:
        raise ValueError(
            f"SHOAL_OPEN_BENEATH={name!r} is not a method; use auto, {' or '.join(METHODS)}"
        )
    if name == "openat2" and not openat2_available():
        raise OSError(
            errno.ENOSYS,
            "openat2 is not available in this process (kernel before 5.6, or refused by "
            "seccomp); set SHOAL_OPEN_BENEATH=walk",
        )
    return name


cdef int _method_code(using, str what) except -1:
    """The C method named by ``using`` (None: :func:`method`'s)."""
    name = method() if using is None else using
    if name == "openat2":
        return SHOAL_BENEATH_OPENAT2
    if name == "walk":
        return SHOAL_BENEATH_WALK
    raise ValueError(f"{what}: using must be one of {METHODS}, got {name!r}")


def open_beneath(int root_fd, path, int flags, int mode=0o600, *, using=None):
    """Open ``path`` beneath the directory ``root_fd`` without following any symbolic link.

    Parameters
    ----------
    root_fd
        Descriptor of a directory (``O_PATH`` is enough); the caller keeps it.
    path
        Relative and ``/``-separated (``str`` or ``bytes``); empty and ``.`` components are
        skipped, so ``"."`` opens the directory itself.
    flags
        ``os.O_*`` flags; ``O_CLOEXEC`` is added. ``openat2`` refuses flags it does not know,
        and any but ``O_DIRECTORY`` and ``O_CLOEXEC`` together with ``O_PATH``.
    mode
        Permissions of a file made with ``O_CREAT`` (the umask applies).
    using
        ``"openat2"`` or ``"walk"``; by default the one :func:`method` names.

    Returns
    -------
    int
        The new descriptor; the caller closes it.

    Raises
    ------
    PermissionError
        ``EACCES`` when any component of the path, the last included, is a symbolic link
        (wherever it points), besides the usual permission errors.
    ValueError
        The path is empty, absolute, or has a NUL byte or a ``..`` component.
    OSError
        Any other failure of the open (``FileNotFoundError``, ``NotADirectoryError`` ...),
        with its errno and ``path``.
    """
    cdef bytes encoded = os.fsencode(path)
    cdef const char *c_path
    cdef int c_method, fd
    cdef int c_flags = flags | os.O_CLOEXEC
    if not encoded:
        raise ValueError("open_beneath: the path is empty")
    if encoded.startswith(b"/"):
        raise ValueError(f"open_beneath: {path!r} is absolute")
    if b"\0" in encoded:
        raise ValueError(f"open_beneath: {path!r} contains a NUL byte")
    if b".." in encoded.split(b"/"):
        raise ValueError(f"open_beneath: {path!r} contains a '..' component")
    c_method = _method_code(using, "open_beneath")
    c_path = encoded
    with nogil:
        fd = shoal_open_beneath(root_fd, c_path, c_flags, <mode_t>mode, c_method)
    if fd >= 0:
        return fd
    if fd == -errno.ELOOP or fd == -errno.EXDEV:
        raise PermissionError(
            errno.EACCES,
            "a symbolic link is in the path (no link is followed beneath the root)",
            os.fsdecode(path),
        )
    raise OSError(-fd, os.strerror(-fd), os.fsdecode(path))


cdef struct _Whole:
    const char *path
    char *buf
    Py_ssize_t size
    long long done
    long long mtime_ns
    long long length
    int error
    int fd
    struct_stat before


# Files opened (and their reads begun by the kernel's readahead) before the first is read:
# their disk reads then overlap, where one file after the other waits a disk's latency for
# each. Measured on 100,000 cold files of 100 bytes: 15,000 files/s one at a time, 80,000
# with a window of 128.
cdef enum:
    _WINDOW = 128


cdef void _open_whole(int root_fd, _Whole *w, int c_method) noexcept nogil:
    """Open and stat one file, and read it at once if the page cache holds its bytes
    (``RWF_NOWAIT``); else ask the kernel to start reading them (``POSIX_FADV_WILLNEED``:
    the I/O starts, nothing waits for it; asked of every file, cached or not, it cost a
    third of the speed of warm reads). ``w.fd`` is -1 after an error."""
    cdef ssize_t n
    cdef iovec iov
    w.fd = shoal_open_beneath(root_fd, w.path, O_RDONLY | O_NONBLOCK | O_CLOEXEC, 0, c_method)
    if w.fd < 0:
        w.error = -w.fd
        w.fd = -1
        return
    if fstat(w.fd, &w.before) != 0:
        w.error = c_errno
    elif S_ISDIR(w.before.st_mode):
        w.error = EISDIR
    elif not S_ISREG(w.before.st_mode):
        w.error = EINVAL
    if w.error:
        close(w.fd)
        w.fd = -1
        return
    w.done = 0
    if w.size == 0 or w.before.st_size == 0:
        return
    iov.iov_base = w.buf
    iov.iov_len = w.size
    n = preadv2(w.fd, &iov, 1, 0, RWF_NOWAIT)
    if n > 0:
        w.done = n
    if w.done < w.size and w.done < w.before.st_size:  # only advice: a failure changes nothing
        posix_fadvise(w.fd, w.done, min(<long long>w.size, <long long>w.before.st_size) - w.done,
                      POSIX_FADV_WILLNEED)


cdef void _finish_whole(_Whole *w, int rounds) noexcept nogil:
    """Read an opened file to the end of its buffer (or of the file) and stat it again:
    the bytes of one version of the file, read again while a writer changes it in place.
    Closes it."""
    cdef struct_stat after
    cdef ssize_t n
    while w.error == 0:
        while w.done < w.size:
            n = pread(w.fd, w.buf + w.done, w.size - w.done, w.done)
            if n < 0:
                if c_errno == EINTR:
                    continue
                w.error = c_errno
                break
            if n == 0:
                break
            w.done += n
        if w.error:
            break
        if fstat(w.fd, &after) != 0:
            w.error = c_errno
            break
        if (after.st_mtim.tv_sec == w.before.st_mtim.tv_sec
                and after.st_mtim.tv_nsec == w.before.st_mtim.tv_nsec
                and after.st_size == w.before.st_size):
            w.mtime_ns = (<long long>w.before.st_mtim.tv_sec * 1000000000
                          + w.before.st_mtim.tv_nsec)
            w.length = w.before.st_size
            break
        rounds -= 1
        if rounds <= 0:
            w.error = EAGAIN  # it kept changing while it was read
            break
        w.before = after
        w.done = 0
    close(w.fd)
    w.fd = -1


cdef void _read_wholes(int root_fd, _Whole *items, Py_ssize_t count, int c_method,
                       int rounds) noexcept nogil:
    """Read every file of ``items`` not already failed, in order, the next ones opened
    while it waits for one: at most ``_WINDOW`` open at a time, so that the disk always has
    the next files' reads asked of it (a window opened, then read, then the next opened,
    leaves it idle while each window opens). Opening waits when the process is out of
    descriptors (with one file open at least: it retries once that one is read), so a
    batch never fails for its own size."""
    cdef Py_ssize_t done = 0, ahead = 0, open_now = 0
    while done < count:
        while ahead < count and open_now < _WINDOW:
            if items[ahead].error == 0:
                _open_whole(root_fd, &items[ahead], c_method)
                if items[ahead].fd < 0 and open_now and (items[ahead].error == EMFILE
                                                         or items[ahead].error == ENFILE):
                    items[ahead].error = 0
                    break
                if items[ahead].fd >= 0:
                    open_now += 1
            ahead += 1
        if items[done].fd >= 0:
            _finish_whole(&items[done], rounds)
            open_now -= 1
        done += 1


def read_items_beneath(int root_fd, list items, *, using=None, int rounds=3):
    """Read small files beneath the directory ``root_fd`` (no symbolic link followed, as
    :func:`open_beneath` opens them) each into its buffer, from their start, with the GIL
    released once for the whole batch: ``items``, ``(path, buffer, version)`` each, each
    file of one version: ``version`` is the one it must have, ``"<st_mtime_ns>-<st_size>"``,
    or None (any). A file written in place while it is read is read again (``rounds``
    times at most); a buffer shorter than its file is filled.

    Returns per item the bytes read (0 or more), or a negative errno: ``-ESTALE`` for a
    file of another version, ``-EINVAL`` for an item this call does not take (a path that
    is not a plain relative str beneath the root, a buffer that is not writable and
    contiguous, a version that is neither str nor None) or a file that is not a regular
    one, ``-EISDIR``, ``-EAGAIN`` (it kept changing), or the open's or read's own
    (``-ELOOP`` or ``-EXDEV`` for a link). A store's batch of small files, checked and
    read with no Python per item."""
    cdef Py_ssize_t count = len(items), i, got = 0, vlen, n
    cdef _Whole *wholes
    cdef Py_buffer *views
    cdef bint *held
    cdef int c_method = _method_code(using, "read_items_beneath")
    cdef const char *want
    cdef char have[48]
    wholes = <_Whole *>calloc(count or 1, sizeof(_Whole))
    views = <Py_buffer *>calloc(count or 1, sizeof(Py_buffer))
    held = <bint *>calloc(count or 1, sizeof(bint))
    encoded = [None] * count  # alive while the GIL is let go
    try:
        if wholes == NULL or views == NULL or held == NULL:
            raise MemoryError()
        for i in range(count):
            wholes[i].fd = -1
            wholes[i].error = EINVAL
            item = items[i]
            if type(item) is not tuple or len(<tuple>item) != 3:
                continue
            path, buf, version = <tuple>item
            if type(path) is not str or (version is not None and type(version) is not str):
                continue
            e = (<str>path).encode(_FS_ENCODING, _FS_ERRORS)
            if not e or e.startswith(b"/") or b"\0" in e or (
                    b".." in e and b".." in e.split(b"/")):
                continue
            try:
                PyObject_GetBuffer(buf, &views[i], PyBUF_WRITABLE)
            except (BufferError, TypeError):
                continue
            held[i] = True
            got += 1
            encoded[i] = e
            wholes[i].error = 0
            wholes[i].path = <bytes>e
            wholes[i].buf = <char *>views[i].buf
            wholes[i].size = views[i].len
        with nogil:
            _read_wholes(root_fd, wholes, count, c_method, rounds)
        out = [None] * count
        for i in range(count):
            if wholes[i].error:
                out[i] = -wholes[i].error
                continue
            version = (<tuple>items[i])[2]
            if version is not None:
                want = PyUnicode_AsUTF8AndSize(version, &vlen)
                n = snprintf(have, sizeof(have), "%lld-%lld", wholes[i].mtime_ns,
                             wholes[i].length)
                if n != vlen or memcmp(have, want, n) != 0:
                    out[i] = -ESTALE
                    continue
            out[i] = wholes[i].done
        return out
    finally:
        if views != NULL and held != NULL:
            for i in range(count):
                if held[i]:
                    PyBuffer_Release(&views[i])
        free(wholes)
        free(views)
        free(held)


cdef struct _Listed:
    # One entry of a directory as ``list_sorted`` gathers it with the GIL released: its
    # name is ``length`` bytes at ``at`` of the names gathered (``name`` once all are).
    const char *name
    size_t at
    size_t length
    bint is_dir
    long long size
    long long mtime_sec
    long long mtime_nsec


cdef struct _Listing:
    _Listed *entries
    size_t count, room
    char *names
    size_t used, names_room
    int err


cdef int _gather(DIR *d, int dir_fd, _Listing *out) noexcept nogil:
    """Every regular file and directory of ``d`` into ``out`` (stat'd with no link
    followed); entries gone by the time they are looked at are left out. 0, or an errno
    (``out.err`` too) when reading the directory or growing ``out`` failed."""
    cdef dirent *e
    cdef struct_stat st
    cdef const char *name
    cdef size_t length
    cdef void *grown
    while True:
        shoal_clear_errno()
        e = readdir(d)
        if e == NULL:
            out.err = c_errno
            return out.err
        name = e.d_name
        if name[0] == 46 and (name[1] == 0 or (name[1] == 46 and name[2] == 0)):
            continue  # . and ..
        if e.d_type != DT_REG and e.d_type != DT_DIR and e.d_type != DT_UNKNOWN:
            continue  # a link, a device, a pipe, a socket
        if fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0:
            continue  # gone since it was listed
        if not S_ISREG(st.st_mode) and not S_ISDIR(st.st_mode):
            continue
        length = strlen(name)
        if out.count == out.room:
            grown = realloc(out.entries, (2 * out.room + 64) * sizeof(_Listed))
            if grown == NULL:
                out.err = ENOMEM
                return out.err
            out.entries, out.room = <_Listed *>grown, 2 * out.room + 64
        if out.used + length > out.names_room:
            grown = realloc(out.names, 2 * out.names_room + length + 4096)
            if grown == NULL:
                out.err = ENOMEM
                return out.err
            out.names, out.names_room = <char *>grown, 2 * out.names_room + length + 4096
        memcpy(out.names + out.used, name, length)
        out.entries[out.count].at = out.used
        out.entries[out.count].length = length
        out.entries[out.count].is_dir = S_ISDIR(st.st_mode)
        out.entries[out.count].size = st.st_size
        out.entries[out.count].mtime_sec = st.st_mtim.tv_sec
        out.entries[out.count].mtime_nsec = st.st_mtim.tv_nsec
        out.used += length
        out.count += 1


cdef int _by_name(const void *a, const void *b) noexcept nogil:
    """Entries in the order of their names' bytes: the order of their str (UTF-8 keeps
    the order of code points)."""
    cdef const _Listed *x = <const _Listed *>a
    cdef const _Listed *y = <const _Listed *>b
    cdef int c = memcmp(x.name, y.name, x.length if x.length < y.length else y.length)
    if c:
        return c
    return (x.length > y.length) - (x.length < y.length)


def list_sorted(int dir_fd, str rel, make, str skip=""):
    """The entries of the open directory ``dir_fd`` (read from its start; the descriptor
    stays open, its read position moved), in name order: ``(files, dirs, odd)``.

    ``files`` holds ``make(rel + name, size, version, mtime)`` of each regular file whose
    name does not start with ``skip`` (``version`` is ``"<st_mtime_ns>-<st_size>"``,
    ``mtime`` in seconds as ``os.stat`` gives it), ``dirs`` the names of its
    subdirectories, and ``odd`` counts the names left out because the file system's
    encoding does not decode them (bytes that are not UTF-8, where it is UTF-8). Links and
    other kinds are left out, as are entries gone by the time they are looked at.

    One ``readdir`` and one ``fstatat`` (no link followed) per entry, gathered and sorted
    with the GIL released once for the whole directory. Raises ``OSError`` when the
    directory cannot be read."""
    cdef int fd
    cdef DIR *d
    cdef _Listing got
    cdef Py_ssize_t k, odd = 0
    cdef _Listed *e
    cdef char version[48]
    cdef int n
    cdef bytes encoding = _FS_ENCODING.encode()
    cdef bytes head = skip.encode(_FS_ENCODING, _FS_ERRORS)
    cdef const char *c_encoding = encoding
    cdef const char *c_head = head
    cdef size_t head_len = len(head)
    files, dirs = [], []
    memset(&got, 0, sizeof(got))
    fd = dup(dir_fd)
    if fd < 0:
        err = c_errno
        raise OSError(err, os.strerror(err))
    d = fdopendir(fd)
    if d == NULL:
        err = c_errno
        close(fd)
        raise OSError(err, os.strerror(err))
    try:
        with nogil:
            rewinddir(d)
            _gather(d, dir_fd, &got)
            for k in range(<Py_ssize_t>got.count):
                got.entries[k].name = got.names + got.entries[k].at
            if got.count:
                qsort(got.entries, got.count, sizeof(_Listed), _by_name)
        if got.err:
            raise OSError(got.err, os.strerror(got.err))
        for k in range(<Py_ssize_t>got.count):
            e = &got.entries[k]
            if not e.is_dir and head_len and e.length >= head_len and (
                    memcmp(e.name, c_head, head_len) == 0):
                continue
            try:
                name = PyUnicode_Decode(e.name, <Py_ssize_t>e.length, c_encoding, "strict")
            except UnicodeDecodeError:
                odd += 1
                continue
            if e.is_dir:
                dirs.append(name)
                continue
            n = snprintf(version, sizeof(version), "%lld-%lld",
                         e.mtime_sec * 1000000000 + e.mtime_nsec, e.size)
            files.append(make(
                rel + name,
                e.size,
                PyUnicode_FromStringAndSize(version, n),
                <double>e.mtime_sec + <double>e.mtime_nsec * 1e-9,
            ))
        return files, dirs, odd
    finally:
        closedir(d)
        free(got.entries)
        free(got.names)
