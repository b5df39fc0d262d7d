/*
 * faultfs: an LD_PRELOAD shim that makes file I/O under one directory fail on a countdown, so
 * the tests can see what Custodian does when the disk fails: RocksDB (C++) and the object
 * backend's local files (Rust std) both reach the kernel through these libc calls.
 *
 * Environment:
 *   FAULTFS_DIR     only descriptors whose path starts with this prefix are affected
 *   FAULTFS_ARM     a path; nothing is counted until this file exists (start-up runs clean)
 *   FAULTFS_AFTER   how many affected operations succeed once armed before the first fault
 *   FAULTFS_MODE    eio | enospc | short (short: every armed write transfers half, as POSIX
 *                   allows; callers must loop)
 *   FAULTFS_OPS     write | sync | all: which operations count (default all)
 *   FAULTFS_STICKY  1: every operation after the first fault fails too (a dead disk);
 *                   otherwise exactly one operation fails
 *   FAULTFS_LOG     a file that gets one line per injected fault
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum { OP_WRITE = 1, OP_SYNC = 2 };

static long remaining = -1;
static int armed;
static int fired;

static int env_ops(void) {
    const char *ops = getenv("FAULTFS_OPS");
    if (ops == NULL || strcmp(ops, "all") == 0) return OP_WRITE | OP_SYNC;
    if (strcmp(ops, "write") == 0) return OP_WRITE;
    if (strcmp(ops, "sync") == 0) return OP_SYNC;
    return 0;
}

static int in_scope(int fd) {
    const char *dir = getenv("FAULTFS_DIR");
    if (dir == NULL || *dir == 0) return 0;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = 0;
    return strncmp(path, dir, strlen(dir)) == 0;
}

static void note(const char *what, int fd) {
    const char *log = getenv("FAULTFS_LOG");
    if (log == NULL) return;
    static int (*real_open)(const char *, int, ...);
    static ssize_t (*real_write)(int, const void *, size_t);
    if (!real_open) real_open = dlsym(RTLD_NEXT, "open");
    if (!real_write) real_write = dlsym(RTLD_NEXT, "write");
    int out = real_open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (out < 0) return;
    char link[64], path[4096], line[4300];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    path[n > 0 ? n : 0] = 0;
    int len = snprintf(line, sizeof line, "%s %s\n", what, path);
    real_write(out, line, (size_t)len);
    close(out);
}

/* 0: proceed; 1: inject the mode's fault. */
static int decide(int fd, int op) {
    if (!(env_ops() & op) || !in_scope(fd)) return 0;
    if (!__atomic_load_n(&armed, __ATOMIC_SEQ_CST)) {
        const char *arm = getenv("FAULTFS_ARM");
        struct stat st;
        if (arm == NULL || stat(arm, &st) != 0) return 0;
        const char *after = getenv("FAULTFS_AFTER");
        __atomic_store_n(&remaining, after ? atol(after) : 0, __ATOMIC_SEQ_CST);
        __atomic_store_n(&armed, 1, __ATOMIC_SEQ_CST);
    }
    if (__atomic_sub_fetch(&remaining, 1, __ATOMIC_SEQ_CST) >= 0) return 0;
    const char *mode = getenv("FAULTFS_MODE");
    if (mode != NULL && strcmp(mode, "short") == 0) return 1;
    const char *sticky = getenv("FAULTFS_STICKY");
    if (sticky != NULL && strcmp(sticky, "1") == 0) return 1;
    return __atomic_exchange_n(&fired, 1, __ATOMIC_SEQ_CST) == 0;
}

static int fault_errno(void) {
    const char *mode = getenv("FAULTFS_MODE");
    return (mode != NULL && strcmp(mode, "enospc") == 0) ? ENOSPC : EIO;
}

static int short_mode(void) {
    const char *mode = getenv("FAULTFS_MODE");
    return mode != NULL && strcmp(mode, "short") == 0;
}

typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
typedef int (*sync_fn)(int);
typedef int (*fallocate_fn)(int, int, off_t, off_t);

#define REAL(name, type) \
    static type real_##name; \
    if (!real_##name) real_##name = (type)dlsym(RTLD_NEXT, #name)

ssize_t write(int fd, const void *buf, size_t count) {
    REAL(write, write_fn);
    if (decide(fd, OP_WRITE)) {
        if (short_mode() && count > 1) return real_write(fd, buf, count / 2);
        if (!short_mode()) { note("write", fd); errno = fault_errno(); return -1; }
    }
    return real_write(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    REAL(pwrite, pwrite_fn);
    if (decide(fd, OP_WRITE)) {
        if (short_mode() && count > 1) return real_pwrite(fd, buf, count / 2, offset);
        if (!short_mode()) { note("pwrite", fd); errno = fault_errno(); return -1; }
    }
    return real_pwrite(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    REAL(pwrite64, pwrite_fn);
    if (decide(fd, OP_WRITE)) {
        if (short_mode() && count > 1) return real_pwrite64(fd, buf, count / 2, offset);
        if (!short_mode()) { note("pwrite64", fd); errno = fault_errno(); return -1; }
    }
    return real_pwrite64(fd, buf, count, offset);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    REAL(writev, writev_fn);
    if (decide(fd, OP_WRITE)) {
        /* A short writev: only the first buffer (or half of it). */
        if (short_mode() && iovcnt > 0 && iov[0].iov_len > 1) {
            REAL(write, write_fn);
            return real_write(fd, iov[0].iov_base, iov[0].iov_len / 2);
        }
        if (!short_mode()) { note("writev", fd); errno = fault_errno(); return -1; }
    }
    return real_writev(fd, iov, iovcnt);
}

int fsync(int fd) {
    REAL(fsync, sync_fn);
    if (!short_mode() && decide(fd, OP_SYNC)) { note("fsync", fd); errno = fault_errno(); return -1; }
    return real_fsync(fd);
}

int syncfs(int fd) {
    REAL(syncfs, sync_fn);
    if (!short_mode() && decide(fd, OP_SYNC)) { note("syncfs", fd); errno = fault_errno(); return -1; }
    return real_syncfs(fd);
}

int fdatasync(int fd) {
    REAL(fdatasync, sync_fn);
    if (!short_mode() && decide(fd, OP_SYNC)) { note("fdatasync", fd); errno = fault_errno(); return -1; }
    return real_fdatasync(fd);
}

int fallocate(int fd, int mode, off_t offset, off_t len) {
    REAL(fallocate, fallocate_fn);
    if (!short_mode() && decide(fd, OP_WRITE)) { note("fallocate", fd); errno = fault_errno(); return -1; }
    return real_fallocate(fd, mode, offset, len);
}
