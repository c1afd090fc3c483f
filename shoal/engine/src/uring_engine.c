/* Batched reads, writes and small-file reads over io_uring (liburing 2.3 or later). */
#define _GNU_SOURCE
#include "uring_engine.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include "crc32c.h"

#define DEPTH 256              /* submission queue entries = most requests in flight */
#define FILE_SLOTS 80          /* registered descriptors = most read_files chains in flight */
#define ALIGN 4096u            /* O_DIRECT alignment of address, offset and length */
#define CHUNK (1ull << 30)     /* most bytes per submitted read or write (kernel caps near 2 GiB) */
/* Checked reads go in pieces of at most VERIFY_CHUNK, at most VERIFY_WINDOW bytes of them in
 * flight, so each piece is checksummed right after its copy while still in L2. */
#define VERIFY_CHUNK (256u << 10)
#define VERIFY_WINDOW (2u << 20)
#define MAX_RETRIES 1000       /* EINTR / EAGAIN completions tolerated per request */
#define NOT_DONE INT64_MIN     /* result of a request that has not finished */
#define TMPFS_MAGIC_ 0x01021994 /* statfs f_type of tmpfs (linux/magic.h) */
#define RAMFS_MAGIC_ 0x858458f6 /* and of ramfs */
/* Reads of files in memory up to this size are done in the calling thread (see memory_backed);
 * larger ones go through the ring, whose kernel workers then copy several at once. */
#define MEMORY_READ_MAX (512u << 10)

struct shoal_ring {
    struct io_uring ring;
    int pid;
    unsigned slots;         /* registered file slots, 0 when registration is unsupported */
    int *free_slots;        /* stack of unused slots */
    unsigned nfree;
    struct iovec *iov;      /* two per slot: the destination and one scratch byte */
    unsigned char *scratch; /* one byte per slot, catches a file longer than its buffer */
};

static int ring_setup(struct io_uring *ring, unsigned entries) {
    /* Newer flags first. Deferring task work to the reaping thread (DEFER_TASKRUN) measured
     * slower here: each link of an open-read-close chain is a task-work hop. */
    static const unsigned flag_sets[] = {
        IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN,
        0,
    };
    int ret = -EINVAL;
    for (size_t i = 0; i < sizeof flag_sets / sizeof flag_sets[0]; i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        p.flags = flag_sets[i];
        ret = io_uring_queue_init_params(entries, ring, &p);
        if (ret != -EINVAL) return ret;
    }
    return ret;
}

int shoal_uring_probe(void) {
    struct io_uring ring;
    int ret = ring_setup(&ring, 4);
    if (ret < 0) return ret;
    struct io_uring_probe *probe = io_uring_get_probe_ring(&ring);
    if (!probe) {
        ret = -ENOSYS;
    } else {
        static const int ops[] = {IORING_OP_READ, IORING_OP_WRITE, IORING_OP_READV,
                                  IORING_OP_OPENAT, IORING_OP_CLOSE};
        for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
            if (!io_uring_opcode_supported(probe, ops[i])) ret = -ENOSYS;
        io_uring_free_probe(probe);
    }
    io_uring_queue_exit(&ring);
    return ret;
}

int shoal_ring_open(shoal_ring **out) {
    shoal_ring *r = calloc(1, sizeof *r);
    if (!r) return -ENOMEM;
    int ret = ring_setup(&r->ring, DEPTH);
    if (ret < 0) {
        free(r);
        return ret;
    }
    r->pid = getpid();
    if (io_uring_register_files_sparse(&r->ring, FILE_SLOTS) == 0) {
        r->free_slots = malloc(FILE_SLOTS * sizeof *r->free_slots);
        r->iov = malloc(2 * FILE_SLOTS * sizeof *r->iov);
        r->scratch = malloc(FILE_SLOTS);
        if (!r->free_slots || !r->iov || !r->scratch) {
            shoal_ring_close(r);
            return -ENOMEM;
        }
        r->slots = FILE_SLOTS;
        for (unsigned i = 0; i < FILE_SLOTS; i++) r->free_slots[i] = (int)(FILE_SLOTS - 1 - i);
        r->nfree = FILE_SLOTS;
    }
    *out = r;
    return 0;
}

void shoal_ring_close(shoal_ring *r) {
    if (!r) return;
    io_uring_queue_exit(&r->ring);
    free(r->free_slots);
    free(r->iov);
    free(r->scratch);
    free(r);
}

int shoal_ring_pid(const shoal_ring *r) { return r->pid; }

static int retryable(int res) { return res == -EINTR || res == -EAGAIN; }

/* Submit what is queued and wait for one completion. 0, or -errno when the ring is unusable. */
static int submit_wait(struct io_uring *ring) {
    for (;;) {
        int ret = io_uring_submit_and_wait(ring, 1);
        if (ret >= 0) return 0;
        if (ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) return ret;
        /* EAGAIN / EBUSY: the kernel is short of resources; completions already posted free
         * them, and the caller reaps those before coming back here. */
        if (ret != -EINTR && io_uring_cq_ready(ring)) return 0;
    }
}

/* ---- reads and writes ------------------------------------------------------------------- */

/* What a batch needs to know of each distinct descriptor it uses. */
struct fd_info {
    int fd;     /* the caller's descriptor, -1 for an empty entry */
    int err;    /* -ESPIPE for pipes, sockets and the like: positional I/O makes no sense there */
    int dfd;    /* the same file opened with O_DIRECT, or -1 */
    int memory; /* a file in memory (tmpfs, ramfs): read here, not through the ring */
};

static int aligned(const shoal_io *io) {
    return io->length && !(((uintptr_t)io->buf | io->offset | io->length) & (ALIGN - 1));
}

/* Reopen a readable descriptor with O_DIRECT; -1 leaves the request to the page cache (file
 * systems without O_DIRECT, descriptors not open for reading, permission changes). */
static int open_direct(int fd) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || (fl & O_ACCMODE) == O_WRONLY) return -1;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    return open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
}

/* tmpfs and ramfs cannot serve a ring read inline (they do not support IOCB_NOWAIT): the ring
 * hands each one to a kernel worker thread and back, which costs more than the copy of a small
 * page. Their data is in memory, so a plain pread in the calling thread never waits on I/O. */
static int memory_backed(int fd) {
    struct statfs sfs;
    if (fstatfs(fd, &sfs) < 0) return 0;
    return (unsigned long)sfs.f_type == TMPFS_MAGIC_ || (unsigned long)sfs.f_type == RAMFS_MAGIC_;
}

static int io_complete(shoal_io *io, int res, int write, int *retries);
static unsigned piece(const shoal_io *io, int write);

/* A read done at once with pread, in the same pieces (and checks) as through the ring. */
static void read_now(shoal_io *io) {
    int retries = 0;
    for (;;) {
        unsigned len = piece(io, 0);
        ssize_t got = pread(io->io_fd, io->buf + io->done, len, (off_t)(io->offset + io->done));
        if (!io_complete(io, got < 0 ? -errno : (int)got, 0, &retries)) return;
    }
}

/* Look at each distinct descriptor once: io_uring reads and writes a pipe or socket at its
 * stream position whatever the offset, where pread and pwrite fail with ESPIPE, so those
 * requests fail here the same way. Reads of files in memory are done here (see memory_backed).
 * With `direct`, aligned requests get an O_DIRECT descriptor, opened once per file. Returns the
 * table (free with close_fd_table), or NULL without memory. */
static struct fd_info *fd_table(shoal_io *ios, size_t n, int direct, int write, size_t *cap_out) {
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    struct fd_info *table = malloc(cap * sizeof *table);
    *cap_out = cap;
    if (!table) return NULL;
    for (size_t i = 0; i < cap; i++) table[i].fd = -1;
    for (size_t i = 0; i < n; i++) {
        shoal_io *io = &ios[i];
        if (!io->length) continue;
        size_t h = ((size_t)io->fd * 0x9e3779b97f4a7c15ull) & (cap - 1);
        while (table[h].fd != -1 && table[h].fd != io->fd) h = (h + 1) & (cap - 1);
        struct fd_info *e = &table[h];
        if (e->fd == -1) {
            e->fd = io->fd;
            e->err = lseek(io->fd, 0, SEEK_CUR) < 0 && errno == ESPIPE ? -ESPIPE : 0;
            e->dfd = -2; /* not opened yet */
            e->memory = !e->err && !write && memory_backed(io->fd);
        }
        if (e->err) {
            io->result = e->err;
            continue;
        }
        if (e->memory && io->length <= MEMORY_READ_MAX) {
            read_now(io);
            continue;
        }
        if (direct && aligned(io)) {
            if (e->dfd == -2) e->dfd = open_direct(io->fd);
            if (e->dfd >= 0) io->io_fd = e->dfd;
        }
    }
    return table;
}

static void close_fd_table(struct fd_info *table, size_t cap) {
    for (size_t i = 0; i < cap; i++)
        if (table[i].fd != -1 && table[i].dfd >= 0) close(table[i].dfd);
    free(table);
}

static int verified(const shoal_io *io, int write) { return io->check && !write; }

static void finish_io(shoal_io *io, int64_t result, int write) {
    io->result = result;
    if (verified(io, write) && result >= 0) io->corrupt = io->crc != io->expected;
}

/* Account one completion; 1 when the request must be submitted again for the rest. */
static int io_complete(shoal_io *io, int res, int write, int *retries) {
    if (retryable(res) && ++*retries < MAX_RETRIES) return 1;
    if (res < 0) {
        if (res == -EINVAL && io->io_fd != io->fd) { /* O_DIRECT refused: page cache instead */
            io->io_fd = io->fd;
            return 1;
        }
        finish_io(io, res, write);
        return 0;
    }
    if (res == 0) { /* end of file; a write that makes no progress is an I/O error */
        finish_io(io, write ? -EIO : (int64_t)io->done, write);
        return 0;
    }
    if (verified(io, write)) io->crc = shoal_crc32c(io->crc, io->buf + io->done, (size_t)res);
    io->done += (uint64_t)res;
    if (io->done < io->length) {
        /* The rest of a short O_DIRECT read may no longer be aligned. */
        if (io->io_fd != io->fd && ((io->offset + io->done) | (io->length - io->done)) & (ALIGN - 1))
            io->io_fd = io->fd;
        return 1;
    }
    finish_io(io, (int64_t)io->done, write);
    return 0;
}

/* Bytes the next submission of a request covers. */
static unsigned piece(const shoal_io *io, int write) {
    uint64_t left = io->length - io->done;
    uint64_t most = verified(io, write) ? VERIFY_CHUNK : CHUNK;
    return (unsigned)(left < most ? left : most);
}

static void prep_io(struct io_uring_sqe *sqe, shoal_io *io, size_t idx, int write, unsigned len) {
    if (write)
        io_uring_prep_write(sqe, io->io_fd, io->buf + io->done, len, io->offset + io->done);
    else
        io_uring_prep_read(sqe, io->io_fd, io->buf + io->done, len, io->offset + io->done);
    io_uring_sqe_set_data64(sqe, idx);
    io->inflight = len;
}

int shoal_uring_rw(shoal_ring *r, shoal_io *ios, size_t n, int write, int direct) {
    struct io_uring *ring = &r->ring;
    for (size_t i = 0; i < n; i++) {
        ios[i].done = 0;
        ios[i].crc = 0;
        ios[i].result = NOT_DONE;
        ios[i].corrupt = 0;
        ios[i].io_fd = ios[i].fd;
    }
    size_t fcap = 0;
    struct fd_info *fds = fd_table(ios, n, direct && !write, write, &fcap);
    int *retries = calloc(n ? n : 1, sizeof *retries);
    size_t redo[DEPTH];
    size_t nredo = 0, next = 0;
    unsigned inflight = 0;
    int fatal = 0;
    if (!retries || !fds) {
        for (size_t i = 0; i < n; i++) ios[i].result = -ENOMEM;
        n = 0;
    }

    uint64_t verifying = 0; /* bytes of checked reads in flight */
    while (!fatal) {
        /* Continuations first, then new requests, in order. */
        while (inflight < DEPTH && (nredo || next < n)) {
            size_t idx = nredo ? redo[nredo - 1] : next;
            shoal_io *io = &ios[idx];
            if (!nredo && (io->length == 0 || io->result != NOT_DONE)) {
                next++; /* nothing to do (as pread with no bytes), or failed already */
                if (io->result == NOT_DONE) finish_io(io, 0, write);
                continue;
            }
            unsigned len = piece(io, write);
            if (verified(io, write) && verifying && verifying + len > VERIFY_WINDOW) break;
            struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
            if (!sqe) break; /* cannot happen while inflight < DEPTH */
            if (nredo)
                nredo--;
            else
                next++;
            prep_io(sqe, io, idx, write, len);
            if (verified(io, write)) verifying += len;
            inflight++;
        }
        if (!inflight) break;
        fatal = submit_wait(ring);
        if (fatal) break;
        unsigned head, seen = 0;
        struct io_uring_cqe *cqe;
        io_uring_for_each_cqe(ring, head, cqe) {
            size_t idx = (size_t)io_uring_cqe_get_data64(cqe);
            seen++;
            inflight--;
            if (verified(&ios[idx], write)) verifying -= ios[idx].inflight;
            if (io_complete(&ios[idx], cqe->res, write, &retries[idx])) redo[nredo++] = idx;
        }
        io_uring_cq_advance(ring, seen);
    }
    if (fatal) {
        /* Requests not yet finished get the ring's error; any still in the kernel may write to
         * their buffers later, which the caller handles by never releasing them. */
        for (size_t i = 0; i < n; i++)
            if (ios[i].result == NOT_DONE) ios[i].result = fatal;
        if (!inflight) fatal = 0;
    }
    free(retries);
    if (fds) close_fd_table(fds, fcap);
    return fatal;
}

/* ---- whole small files -------------------------------------------------------------------- */

#define OP_OPEN 0
#define OP_READ 1
#define OP_CLOSE 2

/* Files too large for one ring read, or rings without registered descriptors: plain calls. */
static void read_file_sync(shoal_file *f, int dir_fd) {
    int fd;
    do fd = openat(dir_fd, f->path, O_RDONLY | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        f->result = -errno;
        return;
    }
    uint64_t done = 0;
    int64_t result = 0;
    unsigned char extra;
    for (;;) {
        struct iovec iov[2] = {{f->buf + done, f->capacity - done}, {&extra, 1}};
        ssize_t got = preadv(fd, iov, 2, (off_t)done);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            result = -errno;
            break;
        }
        if (got == 0) {
            result = (int64_t)done;
            break;
        }
        done += (uint64_t)got;
        if (done > f->capacity) {
            struct stat st;
            f->too_big = 1;
            f->size = fstat(fd, &st) == 0 ? (int64_t)st.st_size : -1;
            result = -EFBIG;
            break;
        }
    }
    close(fd);
    f->result = result;
}

static void queue_file(shoal_ring *r, shoal_file *f, size_t idx, int dir_fd) {
    struct io_uring *ring = &r->ring;
    int slot = r->free_slots[--r->nfree];
    f->slot = slot;
    f->pending = 3;
    f->open_res = f->read_res = NOT_DONE;
    struct iovec *iov = &r->iov[2 * slot];
    iov[0].iov_base = f->buf;
    iov[0].iov_len = f->capacity;
    iov[1].iov_base = &r->scratch[slot];
    iov[1].iov_len = 1;

    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    io_uring_prep_openat_direct(sqe, dir_fd, f->path, O_RDONLY, 0, (unsigned)slot);
    io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK);
    io_uring_sqe_set_data64(sqe, idx << 2 | OP_OPEN);

    /* One byte more than the buffer holds, so a file that does not fit shows. A short read
     * ends the chain's read: on a regular file it means end of file. The hard link makes the
     * close run whatever the read returned (a short read would otherwise cancel it). */
    sqe = io_uring_get_sqe(ring);
    io_uring_prep_readv(sqe, slot, iov, 2, 0);
    io_uring_sqe_set_flags(sqe, IOSQE_FIXED_FILE | IOSQE_IO_HARDLINK);
    io_uring_sqe_set_data64(sqe, idx << 2 | OP_READ);

    sqe = io_uring_get_sqe(ring);
    io_uring_prep_close_direct(sqe, (unsigned)slot);
    io_uring_sqe_set_data64(sqe, idx << 2 | OP_CLOSE);
}

/* All three completions of a file's chain are in; 1 when the chain must run again. */
static int file_complete(shoal_file *f, int *retries) {
    int64_t res = f->open_res < 0 ? f->open_res : f->read_res;
    if (retryable((int)res) && ++*retries < MAX_RETRIES) return 1;
    if (res < 0) {
        f->result = res; /* the open's error, not the ECANCELED it left on the read */
    } else if ((uint64_t)res > f->capacity) {
        f->too_big = 1;
        f->result = -EFBIG;
    } else {
        f->result = res;
    }
    return 0;
}

int shoal_uring_read_files(shoal_ring *r, shoal_file *files, size_t n, int dir_fd) {
    struct io_uring *ring = &r->ring;
    for (size_t i = 0; i < n; i++) {
        files[i].result = NOT_DONE;
        files[i].pending = 0;
        files[i].too_big = 0;
        files[i].size = -1;
        files[i].slot = -1;
    }
    int *retries = calloc(n ? n : 1, sizeof *retries);
    size_t redo[FILE_SLOTS];
    size_t nredo = 0, next = 0;
    unsigned inflight = 0; /* submission entries without their completion yet */
    int fatal = retries ? 0 : -ENOMEM;

    while (!fatal) {
        while (r->nfree && inflight + 3 <= DEPTH && (nredo || next < n)) {
            size_t idx = nredo ? redo[--nredo] : next++;
            shoal_file *f = &files[idx];
            if (f->capacity >= CHUNK) {
                read_file_sync(f, dir_fd);
                continue;
            }
            queue_file(r, f, idx, dir_fd);
            inflight += 3;
        }
        if (!r->slots)
            for (; next < n; next++) read_file_sync(&files[next], dir_fd);
        if (!inflight) break;
        fatal = submit_wait(ring);
        if (fatal) break;
        unsigned head, seen = 0;
        struct io_uring_cqe *cqe;
        io_uring_for_each_cqe(ring, head, cqe) {
            uint64_t data = io_uring_cqe_get_data64(cqe);
            shoal_file *f = &files[data >> 2];
            seen++;
            inflight--;
            if ((data & 3) == OP_OPEN)
                f->open_res = cqe->res;
            else if ((data & 3) == OP_READ)
                f->read_res = cqe->res;
            /* A failing close after a good read loses nothing; the slot is reused anyway, and
             * opening into an occupied slot replaces its file. */
            if (--f->pending == 0) {
                r->free_slots[r->nfree++] = f->slot;
                if (file_complete(f, &retries[data >> 2])) redo[nredo++] = data >> 2;
            }
        }
        io_uring_cq_advance(ring, seen);
    }
    if (fatal) {
        for (size_t i = 0; i < n; i++)
            if (files[i].result == NOT_DONE) files[i].result = fatal;
        if (!inflight) fatal = 0;
    }
    for (size_t i = 0; i < n; i++) {
        shoal_file *f = &files[i];
        if (f->too_big && f->size < 0) {
            struct stat st;
            if (fstatat(dir_fd, f->path, &st, 0) == 0) f->size = (int64_t)st.st_size;
        }
    }
    free(retries);
    return fatal;
}
