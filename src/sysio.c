/* sysio.c - see sysio.h. */
#include "sysio.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

static const struct dbm_sysio real = {
    .pwrite = pwrite,
    .pread = pread,
    .fsync = fsync,
    .fdatasync = fdatasync,
    .ftruncate = ftruncate,
    .rename = rename,
    .fallocate = fallocate,
};

struct dbm_sysio dbm_sys = {
    .pwrite = pwrite,
    .pread = pread,
    .fsync = fsync,
    .fdatasync = fdatasync,
    .ftruncate = ftruncate,
    .rename = rename,
    .fallocate = fallocate,
};

void dbm_sysio_reset(void) { dbm_sys = real; }

int dbm_pwrite_all(int fd, const void *buf, size_t n, off_t off)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = dbm_sys.pwrite(fd, p, n, off);
        if (w < 0) {
            int e = errno;
            if (e == EINTR)
                continue;
            return -e;
        }
        if (w == 0)
            return -EIO;
        p += w;
        n -= (size_t)w;
        off += w;
    }
    return 0;
}

int dbm_fd_size(int fd, uint64_t *size)
{
    off_t end = lseek(fd, 0, SEEK_END);
    if (end < 0)
        return -errno;
    *size = (uint64_t)end;
    return 0;
}

ssize_t dbm_pread_all(int fd, void *buf, size_t n, off_t off)
{
    char *p = buf;
    size_t got = 0;
    while (got < n) {
        ssize_t r = dbm_sys.pread(fd, p + got, n - got, off + (off_t)got);
        if (r < 0) {
            int e = errno;
            if (e == EINTR)
                continue;
            return -e;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

int dbm_have_cap(int cap)
{
    struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
    struct __user_cap_data_struct d[2];
    if (cap < 0 || cap >= 64 || syscall(SYS_capget, &h, d) < 0)
        return 0;
    return (d[cap / 32].effective >> (cap % 32)) & 1;
}
