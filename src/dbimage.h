/* dbimage.h - a database as of one transaction: what every snapshot reader
 * (read-only views, row counts, exports) reads from. Pages come from the
 * page store and are checksum-verified there; a failing page is -EIO.
 *
 * Snapshot images are presented in rollback-journal format: page 1's file
 * format bytes (offsets 18 and 19) read as 1 even when the database ran in
 * WAL mode, so a view or an exported file opens read-only anywhere without
 * -wal or -shm files. dbm_dbimage_read_page applies that. */
#ifndef DBM_DBIMAGE_H
#define DBM_DBIMAGE_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define DBM_DBIMAGE_NAME_MAX 64

struct dbm_dbimage {
    char name[DBM_DBIMAGE_NAME_MAX + 1]; /* "erp.db" */
    uint32_t page_size;
    uint32_t db_pages;                   /* size = page_size * db_pages */
    uint64_t txid;                       /* the transaction it is as of */
    uint64_t commit_ns;                  /* that transaction's commit time */
    uint64_t timeline;
    /* Reads page pgno (1..db_pages) into buf (page_size bytes): 0 or -errno. */
    int (*read_page)(void *ctx, uint32_t pgno, void *buf);
    void *ctx;
};

/* Reads through img->read_page and applies the rollback-format rewrite of
 * page 1. 0 or -errno. */
int dbm_dbimage_read_page(const struct dbm_dbimage *img, uint32_t pgno, void *buf);
/* Reads size bytes at off (any alignment) into buf; short only past the end.
 * Returns bytes read or -errno (a page that fails fails the whole read: a
 * short count would pass for the end of the file). scratch: page_size bytes
 * of caller memory. */
ssize_t dbm_dbimage_pread(const struct dbm_dbimage *img, void *buf, size_t size, uint64_t off, void *scratch);

#endif
