/* fusepass.h - FUSE passthrough (Linux 6.9 and later): reads and writes of a
 * file opened this way go from the kernel straight to a backing file of the
 * daemon, with no request at all. Part of the FUSE glue (with fuseuring,
 * fsops and main). libfuse 3.14 predates it, so this module adds it to the
 * INIT reply and to OPEN and CREATE replies as they are written (the session's
 * custom I/O, fuseuring.c, hands every request read and reply written here).
 *
 * Why: a WAL gets one or two writes per page SQLite writes, and most pages
 * are written more than once per transaction; a journal gets three per page;
 * each was a round trip (about 6 us), while commit detection needs only the
 * file as it is when a writer syncs it or ends its transaction (capture.c).
 * bench/README.md has figures.
 *
 * Needs CAP_SYS_ADMIN (the kernel's rule for registering backing files) and
 * a kernel that offers it; otherwise nothing changes and the reason is kept
 * for the status file.
 *
 * Thread safety: all functions may be called from any thread. The mark set
 * by dbm_fusepass_reply_next is per thread: a handler sets it just before it
 * replies, on the thread that replies (fsops replies where it is called). */
#ifndef DBM_FUSEPASS_H
#define DBM_FUSEPASS_H

#include <stddef.h>
#include <sys/uio.h>

struct dbm_sbuf;
struct dbm_fusepass;

/* DBM_PASS_WRITEBACK: off, because the writeback cache is on (fusewb.h) */
enum dbm_pass_mode { DBM_PASS_OFF, DBM_PASS_AUTO, DBM_PASS_WRITEBACK };

/* Before the session loop (the fd is the session's /dev/fuse). NULL only when
 * out of memory. */
struct dbm_fusepass *dbm_fusepass_create(int fuse_fd, enum dbm_pass_mode mode);
void dbm_fusepass_destroy(struct dbm_fusepass *p); /* accepts NULL */

/* The custom I/O's hooks: a request read from /dev/fuse (INIT is noted), and
 * a reply about to be written (INIT's gains the capability; an OPEN or
 * CREATE reply after dbm_fusepass_reply_next gains the backing file). The
 * reply's buffers are changed in place. Both accept p == NULL. */
void dbm_fusepass_saw_request(struct dbm_fusepass *p, const void *buf, size_t len);
void dbm_fusepass_patch_reply(struct dbm_fusepass *p, struct iovec *iov, int count);

/* Registers fd (any file of the daemon) as a backing file: its id (> 0), or
 * -EOPNOTSUPP when passthrough is not in use, or -errno. The kernel keeps its
 * own reference: fd may be closed afterwards. Every open of one inode must
 * use the same id while any is open (the kernel refuses mixed opens). */
int dbm_fusepass_backing_open(struct dbm_fusepass *p, int fd);
void dbm_fusepass_backing_close(struct dbm_fusepass *p, int id);

/* The next OPEN or CREATE reply this thread writes opens the file in
 * passthrough to backing file id. */
void dbm_fusepass_reply_next(int id);

/* Appends the fuse_passthrough line. Accepts NULL (off). */
void dbm_fusepass_report(const struct dbm_fusepass *p, struct dbm_sbuf *b);

#endif
