/* Opens beneath a directory that follow no symbolic link: openat2(2) where the kernel has it,
 * else a walk of openat(2) calls, one per component, each with O_NOFOLLOW. */
#define _GNU_SOURCE
#include "beneath.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437 /* its number on every architecture but alpha */
#endif

/* From linux/openat2.h, which older headers lack. */
struct shoal_open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};
#define SHOAL_RESOLVE_NO_SYMLINKS 0x04
#define SHOAL_RESOLVE_BENEATH 0x08

static int sys_openat2(int dir_fd, const char *path, int flags, mode_t mode) {
    struct shoal_open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (uint64_t)(unsigned)flags;
    /* openat2 refuses a mode without O_CREAT or O_TMPFILE. */
    if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE)
        how.mode = mode;
    how.resolve = SHOAL_RESOLVE_BENEATH | SHOAL_RESOLVE_NO_SYMLINKS;
    long fd = syscall(SYS_openat2, dir_fd, path, &how, sizeof how);
    return fd < 0 ? -errno : (int)fd;
}

int shoal_openat2_probe(void) {
    int fd = sys_openat2(AT_FDCWD, ".", O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
    if (fd >= 0) {
        close(fd);
        return 0;
    }
    /* Only a missing or refused system call says openat2 cannot be used; ENOENT (a removed
     * working directory) or EACCES means the call itself ran. */
    return fd == -ENOSYS || fd == -EPERM ? fd : 0;
}

/* An O_PATH descriptor of name beneath dir_fd, not followed: -ELOOP when it is a symbolic
 * link, -ENOTDIR when dir is set and it is not a directory. Its fstat says which it is, so a
 * link swapped in or out meanwhile cannot make the answer wrong. */
static int open_step(int dir_fd, const char *name, int dir) {
    int fd = openat(dir_fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    int err = 0;
    if (fstat(fd, &st) < 0)
        err = -errno;
    else if (S_ISLNK(st.st_mode))
        err = -ELOOP;
    else if (dir && !S_ISDIR(st.st_mode))
        err = -ENOTDIR;
    if (err < 0) {
        close(fd);
        return err;
    }
    return fd;
}

/* The next component of a path cut in place at cursor, skipping empty and "." ones; NULL at
 * the end. */
static char *next_component(char **cursor) {
    while (*cursor) {
        char *name = *cursor;
        char *slash = strchr(name, '/');
        if (slash)
            *slash = '\0';
        *cursor = slash ? slash + 1 : NULL;
        if (name[0] != '\0' && strcmp(name, ".") != 0)
            return name;
    }
    return NULL;
}

static int has_dotdot(const char *path) {
    for (const char *p = path; (p = strstr(p, "..")) != NULL; p += 2)
        if ((p == path || p[-1] == '/') && (p[2] == '/' || p[2] == '\0'))
            return 1;
    return 0;
}

static int walk(int root_fd, const char *path, int flags, mode_t mode) {
    static char dot[] = ".";
    size_t len = strlen(path);
    if (len >= PATH_MAX)
        return -ENAMETOOLONG;
    char buf[PATH_MAX];
    memcpy(buf, path, len + 1);

    int dir_fd = root_fd; /* not ours to close while it is root_fd */
    int err;
    char *cursor = buf;
    char *name = next_component(&cursor);
    if (name == NULL)
        name = dot;
    for (char *following; (following = next_component(&cursor)) != NULL; name = following) {
        int next = open_step(dir_fd, name, 1);
        if (next < 0) {
            err = next;
            goto out;
        }
        if (dir_fd != root_fd)
            close(dir_fd);
        dir_fd = next;
    }

    if (flags & (O_PATH | O_DIRECTORY)) {
        /* O_PATH | O_NOFOLLOW would open a link itself, and O_DIRECTORY | O_NOFOLLOW answers
         * ENOTDIR for one: look at what the name is first. */
        err = open_step(dir_fd, name, flags & O_DIRECTORY);
        if (err >= 0 && !(flags & O_PATH)) {
            int step = err;
            err = openat(step, ".", flags, mode);
            if (err < 0)
                err = -errno;
            close(step);
        }
    } else {
        /* With O_NOFOLLOW, ELOOP says the name is a link. */
        err = openat(dir_fd, name, flags | O_NOFOLLOW, mode);
        if (err < 0)
            err = -errno;
    }
out:
    if (dir_fd != root_fd)
        close(dir_fd);
    return err;
}

int shoal_open_beneath(int root_fd, const char *path, int flags, mode_t mode, int method) {
    if (path[0] == '\0')
        return -ENOENT;
    if (path[0] == '/' || has_dotdot(path))
        return -EXDEV;
    if (method == SHOAL_BENEATH_OPENAT2) {
        /* Without O_NOFOLLOW, RESOLVE_NO_SYMLINKS refuses a link in the last component too
         * (with O_PATH | O_NOFOLLOW it would open the link itself). */
        int fd = sys_openat2(root_fd, path, flags & ~O_NOFOLLOW, mode);
        /* A seccomp filter set up after the probe: walk instead. */
        if (fd != -ENOSYS && fd != -EPERM)
            return fd;
    }
    return walk(root_fd, path, flags, mode);
}
