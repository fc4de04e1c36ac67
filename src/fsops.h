/* fsops.h - the FUSE glue: low-level operation handlers over the daemon.
 * The only module (with main.c) that sees libfuse. */
#ifndef DBM_FSOPS_H
#define DBM_FSOPS_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

struct dbm_daemon;

/* The largest write (and read) the INIT reply announces: a buffer size. */
#define DBM_FUSE_MAX_WRITE (1u << 20)

/* Creates a session serving d. ready_fd >= 0 gets one byte '0' written and
 * closed when the kernel's INIT has been answered (the mount is usable).
 * Borrows d (it must outlive the session). NULL on failure (logged). */
struct fuse_session *dbm_fs_session_new(struct dbm_daemon *d, struct fuse_args *args, int ready_fd);

#endif
