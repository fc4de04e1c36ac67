/* fusepass.c - see fusepass.h.
 *
 * The protocol parts libfuse 3.14 does not know (Linux's uapi fuse.h, 7.40):
 * FUSE_PASSTHROUGH in the INIT reply's flags2 with max_stack_depth beside it,
 * FOPEN_PASSTHROUGH and backing_id in fuse_open_out (the field libfuse
 * zeroes as padding), and the backing-file ioctls on /dev/fuse. Debian 12's
 * <linux/fuse.h> predates them, so they are declared here.
 *
 * State: p->offered is written by the thread that reads INIT and read by the
 * same thread when it writes INIT's reply; p->init_unique (atomic) is read
 * at every reply, on any thread; p->active is atomic because handlers on
 * every thread read it. why has its own (leaf) lock. */
#include "fusepass.h"

#include <errno.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "log.h"
#include "strutil.h"
#include "sysio.h"

#define INIT_OPCODE 26
#define INIT_EXT (1u << 30)
#define FLAGS2_PASSTHROUGH (1u << (37 - 32)) /* FUSE_PASSTHROUGH */
#define INIT_OUT_FLAGS 12                    /* byte offsets in fuse_init_out */
#define INIT_OUT_FLAGS2 32
#define INIT_OUT_STACK_DEPTH 36
#define OPEN_PASSTHROUGH (1u << 7) /* FOPEN_PASSTHROUGH */

struct backing_map {
    int32_t fd;
    uint32_t flags;
    uint64_t padding;
};
#define IOC_BACKING_OPEN _IOW(229, 1, struct backing_map)
#define IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)

struct open_out { /* fuse_open_out, 7.40 */
    uint64_t fh;
    uint32_t open_flags;
    int32_t backing_id;
};

_Static_assert(sizeof(struct fuse_in_header) == 40, "fuse_in_header");
_Static_assert(sizeof(struct fuse_out_header) == 16, "fuse_out_header");
_Static_assert(sizeof(struct open_out) == sizeof(struct fuse_open_out), "fuse_open_out");
_Static_assert(sizeof(struct fuse_init_out) >= INIT_OUT_STACK_DEPTH + 4, "fuse_init_out");

struct dbm_fusepass {
    int fuse_fd;
    enum dbm_pass_mode mode;
    int offered;              /* the kernel's INIT offered FUSE_PASSTHROUGH */
    uint64_t init_unique;     /* INIT's unique, 0 once answered */
    _Atomic int active;       /* negotiated and not found unusable since */
    struct dbm_stext why;     /* what fuse_passthrough says */
};

static __thread int reply_next; /* backing id for this thread's next OPEN/CREATE reply */

static void set_why(struct dbm_fusepass *p, const char *why) { dbm_stext_set(&p->why, why); }

struct dbm_fusepass *dbm_fusepass_create(int fuse_fd, enum dbm_pass_mode mode)
{
    struct dbm_fusepass *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->fuse_fd = fuse_fd;
    const char *why = "off (the kernel has not sent INIT yet)";
    if (mode == DBM_PASS_OFF) {
        why = "off (-o passthrough=off)";
    } else if (mode == DBM_PASS_WRITEBACK) {
        mode = DBM_PASS_OFF;
        why = "off (the writeback cache is on, and the kernel does not combine the two; -o writeback=off gives "
              "passthrough)";
    } else if (!dbm_have_cap(CAP_SYS_ADMIN)) {
        mode = DBM_PASS_OFF;
        why = "off (registering backing files needs CAP_SYS_ADMIN)";
    }
    p->mode = mode;
    dbm_stext_init(&p->why, why);
    return p;
}

void dbm_fusepass_destroy(struct dbm_fusepass *p)
{
    if (!p)
        return;
    dbm_stext_destroy(&p->why);
    free(p);
}

void dbm_fusepass_saw_request(struct dbm_fusepass *p, const void *buf, size_t len)
{
    struct fuse_in_header ih;
    if (!p || len < sizeof ih)
        return;
    memcpy(&ih, buf, sizeof ih);
    if (ih.opcode != INIT_OPCODE)
        return;
    struct fuse_init_in in;
    memset(&in, 0, sizeof in);
    size_t n = len - sizeof ih < sizeof in ? len - sizeof ih : sizeof in;
    memcpy(&in, (const char *)buf + sizeof ih, n);
    p->offered = (in.flags & INIT_EXT) && n >= offsetof(struct fuse_init_in, flags2) + 4 &&
                 (in.flags2 & FLAGS2_PASSTHROUGH);
    __atomic_store_n(&p->init_unique, ih.unique, __ATOMIC_RELAXED);
}

/* The reply's payload (after the out header) as one contiguous span, if it
 * is one iovec of exactly len bytes. */
static void *payload(struct iovec *iov, int count, size_t len)
{
    if (count != 2 || iov[1].iov_len != len)
        return NULL;
    return iov[1].iov_base;
}

static void patch_init(struct dbm_fusepass *p, struct iovec *iov, int count)
{
    __atomic_store_n(&p->init_unique, 0, __ATOMIC_RELAXED);
    if (p->mode == DBM_PASS_OFF)
        return;
    if (!p->offered) {
        set_why(p, "off (this kernel does not offer it: Linux 6.9 or later with CONFIG_FUSE_PASSTHROUGH)");
        return;
    }
    uint8_t *out = count == 2 && iov[1].iov_len >= INIT_OUT_STACK_DEPTH + 4 ? iov[1].iov_base : NULL;
    if (!out) {
        set_why(p, "off (libfuse's INIT reply has no room for it)");
        return;
    }
    /* CAP_SYS_ADMIN is the kernel's check at each registration: the first
     * one tells (dbm_fusepass_backing_open) */
    uint32_t flags, flags2, depth = 1; /* backing files are on a plain filesystem */
    memcpy(&flags, out + INIT_OUT_FLAGS, 4);
    memcpy(&flags2, out + INIT_OUT_FLAGS2, 4);
    flags |= INIT_EXT;
    flags2 |= FLAGS2_PASSTHROUGH;
    memcpy(out + INIT_OUT_FLAGS, &flags, 4);
    memcpy(out + INIT_OUT_FLAGS2, &flags2, 4);
    memcpy(out + INIT_OUT_STACK_DEPTH, &depth, 4);
    __atomic_store_n(&p->active, 1, __ATOMIC_RELEASE);
    set_why(p, "on (WAL and journal files: reads and writes go straight to the backing files)");
}

void dbm_fusepass_patch_reply(struct dbm_fusepass *p, struct iovec *iov, int count)
{
    int id = reply_next;
    reply_next = 0;
    if (!p || count < 1 || iov[0].iov_len != sizeof(struct fuse_out_header))
        return;
    const struct fuse_out_header *oh = iov[0].iov_base;
    uint64_t init = __atomic_load_n(&p->init_unique, __ATOMIC_RELAXED);
    if (init && oh->unique == init) {
        if (oh->error == 0)
            patch_init(p, iov, count);
        return;
    }
    if (!id || oh->error != 0)
        return;
    /* fuse_reply_open sends fuse_open_out; fuse_reply_create, fuse_entry_out then fuse_open_out */
    uint8_t *o = payload(iov, count, sizeof(struct open_out));
    if (!o && (o = payload(iov, count, sizeof(struct fuse_entry_out) + sizeof(struct open_out))))
        o += sizeof(struct fuse_entry_out);
    if (!o) {
        dbm_err("passthrough: an open reply of unexpected shape; the file is opened through the daemon");
        return;
    }
    struct open_out oo;
    memcpy(&oo, o, sizeof oo);
    oo.open_flags |= OPEN_PASSTHROUGH;
    oo.backing_id = id;
    memcpy(o, &oo, sizeof oo);
}

int dbm_fusepass_backing_open(struct dbm_fusepass *p, int fd)
{
    if (!p || !__atomic_load_n(&p->active, __ATOMIC_ACQUIRE))
        return -EOPNOTSUPP;
    struct backing_map m = { .fd = fd };
    int id = ioctl(p->fuse_fd, IOC_BACKING_OPEN, &m);
    if (id > 0)
        return id;
    int e = id < 0 ? errno : EIO;
    if (e == EPERM || e == ENOTTY || e == EOPNOTSUPP) {
        /* not for this daemon at all: say so once and stop trying */
        if (__atomic_exchange_n(&p->active, 0, __ATOMIC_ACQ_REL)) {
            char why[160];
            snprintf(why, sizeof why, "off (registering a backing file: %s%s)", strerror(e),
                     e == EPERM ? "; it needs CAP_SYS_ADMIN" : "");
            set_why(p, why);
            dbm_warn("passthrough: %s; WAL and journal files are served through the daemon", why);
        }
        return -EOPNOTSUPP;
    }
    return -e;
}

void dbm_fusepass_backing_close(struct dbm_fusepass *p, int id)
{
    uint32_t v = (uint32_t)id;
    if (p && id > 0 && ioctl(p->fuse_fd, IOC_BACKING_CLOSE, &v) < 0)
        dbm_warn("passthrough: cannot release backing file %d: %s", id, strerror(errno));
}

void dbm_fusepass_reply_next(int id) { reply_next = id; }

void dbm_fusepass_report(const struct dbm_fusepass *p, struct dbm_sbuf *b)
{
    dbm_stext_kv(b, "fuse_passthrough", p ? &p->why : NULL);
}
