/* Open a path beneath a directory without following any symbolic link. */
#ifndef SHOAL_BENEATH_H
#define SHOAL_BENEATH_H

#include <sys/types.h>

/* Methods of shoal_open_beneath. */
#define SHOAL_BENEATH_OPENAT2 1 /* one openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS */
#define SHOAL_BENEATH_WALK 2    /* openat(2) per component, each with O_NOFOLLOW */

/* 0 when openat2 with the resolve flags used here works in this process; -ENOSYS on kernels
 * before 5.6, -EPERM where a seccomp filter refuses it. */
int shoal_openat2_probe(void);

/* Open path (relative, '/'-separated; empty and "." components are skipped, so "." is the
 * directory itself) beneath the directory root_fd, with open flags and mode (used with
 * O_CREAT). No symbolic link is followed, in any component: one yields -ELOOP, or -EXDEV from
 * openat2 for a link that would leave root_fd. An empty path yields -ENOENT; an absolute path
 * or a ".." component -EXDEV. Returns the new descriptor or -errno. OPENAT2 walks instead for
 * a call that openat2 answers with ENOSYS or EPERM (a seccomp filter set up after the probe).
 * Safe to call without the GIL. */
int shoal_open_beneath(int root_fd, const char *path, int flags, mode_t mode, int method);

#endif
