/* test_reserve.c - the space reserve: what it holds is the file's size and
 * its allocated blocks; release frees whole MiB and says when none is left;
 * refill and a new target restore it; a reopen finds what the file holds. */
#include "check.h"
#include "reserve.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "strutil.h"

#define MIB (1ull << 20)

/* The reserve file's size, and the bytes allocated to it. */
static void file_state(int dirfd, uint64_t *size, uint64_t *alloc)
{
    struct stat st;
    *size = *alloc = UINT64_MAX;
    if (fstatat(dirfd, "reserve", &st, 0) == 0) {
        *size = (uint64_t)st.st_size;
        *alloc = (uint64_t)st.st_blocks * 512;
    }
}

static void check_report(struct dbm_reserve *r, const char *want)
{
    struct dbm_sbuf b = { 0 };
    dbm_reserve_report(r, &b);
    CHECK(dbm_sbuf_ok(&b) && b.len == strlen(want) && memcmp(b.buf, want, b.len) == 0);
    dbm_sbuf_free(&b);
}

int main(void)
{
    char dir[] = "/tmp/test_reserve.XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY);
    struct dbm_reserve *r = NULL;
    CHECK_EQ_INT(dbm_reserve_open(dirfd, "reserve", &r), 0);
    uint64_t size, alloc;
    file_state(dirfd, &size, &alloc);
    CHECK_EQ_INT(size, 0);
    CHECK_EQ_INT(dbm_reserve_release(r, 1), 0); /* holds nothing */
    CHECK_EQ_INT(dbm_reserve_set_target(r, 3 * MIB - 5), 0); /* rounded up to whole MiB */
    file_state(dirfd, &size, &alloc);
    CHECK_EQ_INT(size, 3 * MIB);
    CHECK(alloc >= 3 * MIB); /* blocks, not a hole */
    check_report(r, "space_reserve: 3145728 of 3145728 bytes\n");
    CHECK_EQ_INT(dbm_reserve_refill(r), 0); /* whole: nothing to do */
    CHECK_EQ_INT(dbm_reserve_release(r, 1), 1); /* a whole MiB */
    file_state(dirfd, &size, &alloc);
    CHECK_EQ_INT(size, 2 * MIB);
    CHECK(alloc < 3 * MIB);
    CHECK_EQ_INT(dbm_reserve_release(r, 5 * MIB), 1); /* what is left */
    file_state(dirfd, &size, &alloc);
    CHECK_EQ_INT(size, 0);
    CHECK_EQ_INT(dbm_reserve_release(r, 1), 0);
    check_report(r, "space_reserve: 0 of 3145728 bytes\n");
    CHECK_EQ_INT(dbm_reserve_refill(r), 0);
    file_state(dirfd, &size, &alloc);
    CHECK_EQ_INT(size, 3 * MIB);
    CHECK_EQ_INT(dbm_reserve_set_target(r, MIB), 0); /* a smaller target gives the rest back */
    file_state(dirfd, &size, &alloc);
    CHECK_EQ_INT(size, MIB);
    dbm_reserve_close(r);
    /* a reopen holds what the file holds; a target of 0 frees it all */
    CHECK_EQ_INT(dbm_reserve_open(dirfd, "reserve", &r), 0);
    check_report(r, "space_reserve: 1048576 of 0 bytes\n");
    CHECK_EQ_INT(dbm_reserve_set_target(r, 0), 0);
    file_state(dirfd, &size, &alloc);
    CHECK_EQ_INT(size, 0);
    dbm_reserve_close(r);
    dbm_reserve_close(NULL);
    CHECK_EQ_INT(dbm_reserve_release(NULL, 1), 0);
    CHECK_EQ_INT(dbm_reserve_refill(NULL), 0);
    check_report(NULL, "space_reserve: off\n");
    unlinkat(dirfd, "reserve", 0);
    close(dirfd);
    rmdir(dir);
    return CHECK_DONE();
}
