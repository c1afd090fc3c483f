/* Batched reads, writes and small-file reads over io_uring. Every function here is safe to call
 * without the GIL; a ring belongs to one thread at a time. */
#ifndef SHOAL_URING_ENGINE_H
#define SHOAL_URING_ENGINE_H

#include <stddef.h>
#include <stdint.h>

typedef struct shoal_ring shoal_ring;

/* 0 when this process can set up an io_uring with every operation the engine uses, else -errno. */
int shoal_uring_probe(void);

/* Create a ring; 0 or -errno. */
int shoal_ring_open(shoal_ring **out);

/* Tear a ring down (also fine in a forked child that inherited it). */
void shoal_ring_close(shoal_ring *ring);

/* Process that created the ring: a forked child must make its own. */
int shoal_ring_pid(const shoal_ring *ring);

/* One read or write. The caller fills the inputs; the engine fills the outputs. */
typedef struct {
    int fd;
    int check;          /* compare the crc32c of the bytes read with `expected` */
    uint64_t offset;    /* file offset */
    uint64_t length;
    unsigned char *buf; /* destination (read) or source (write) of `length` bytes */
    uint32_t expected;
    /* outputs */
    int64_t result; /* bytes transferred (fewer than length at end of file), or -errno */
    uint32_t crc;   /* crc32c of the bytes read, when `check` */
    int corrupt;    /* crc32c differs from `expected` */
    /* engine state */
    uint64_t done;
    unsigned inflight; /* bytes of the submission in flight */
    int io_fd;
} shoal_io;

/* Run a batch of reads (write = 0) or writes (write = 1) to completion. With `direct`, reads
 * whose buffer address, file offset and length are 4 KiB aligned use O_DIRECT.
 * Returns 0, or -errno when the ring failed and requests may still be in flight: the buffers
 * must then never be freed, and the ring must not be used again. */
int shoal_uring_rw(shoal_ring *ring, shoal_io *ios, size_t n, int write, int direct);

/* One whole-file read. */
typedef struct {
    const char *path;
    unsigned char *buf;
    uint64_t capacity; /* buffer size */
    /* outputs */
    int64_t result; /* file size, or -errno */
    int too_big;    /* file larger than the buffer; `size` holds its size, or -1 if unknown */
    int64_t size;
    /* engine state */
    int64_t open_res;
    int64_t read_res;
    int pending;
    int slot;
} shoal_file;

/* Read whole files (relative paths against dir_fd, AT_FDCWD for none): open, read and close
 * linked in the ring. Returns as shoal_uring_rw. */
int shoal_uring_read_files(shoal_ring *ring, shoal_file *files, size_t n, int dir_fd);

#endif
