/* sysio.h - the syscalls whose failures matter (durability, full disk), routed
 * through one table so tests can inject EIO/ENOSPC. All return like the libc
 * call (-1 and errno). Production code calls dbm_sys.X(...). */
#ifndef DBM_SYSIO_H
#define DBM_SYSIO_H
#include <stdint.h>
#include <sys/types.h>

struct dbm_sysio {
    ssize_t (*pwrite)(int fd, const void *buf, size_t n, off_t off);
    ssize_t (*pread)(int fd, void *buf, size_t n, off_t off);
    int (*fsync)(int fd);
    int (*fdatasync)(int fd);
    int (*ftruncate)(int fd, off_t len);
    int (*rename)(const char *from, const char *to);
    int (*fallocate)(int fd, int mode, off_t off, off_t len);
};

extern struct dbm_sysio dbm_sys;

/* Restores the real syscalls (tests call it after injecting). */
void dbm_sysio_reset(void);

/* Writes all n bytes at off, retrying short writes and EINTR. 0 or -errno. */
int dbm_pwrite_all(int fd, const void *buf, size_t n, off_t off);
/* Reads up to n bytes at off, retrying short reads and EINTR until EOF.
 * Returns the byte count (short only at EOF) or -errno. */
ssize_t dbm_pread_all(int fd, void *buf, size_t n, off_t off);

/* The size of the file open on fd (which must be used with positional I/O
 * only: this moves its offset). 0 or -errno.
 * Why not fstat: a stat marks the file's timestamps as seen (Linux 6.13+
 * multigrain timestamps), so its next write takes a fine-grained time, which
 * moves the timestamp floor for every file of the system; each store append
 * then changes the segment's mtime, and on ext4 without a journal its
 * fdatasync writes the inode too: a third device write per WAL commit
 * (~80 us, bench/README.md). lseek reads the size without that. */
int dbm_fd_size(int fd, uint64_t *size);

/* Whether this thread has capability cap (linux/capability.h) in its
 * effective set. */
int dbm_have_cap(int cap);

#endif
