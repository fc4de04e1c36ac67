/* btcount.h - row counts of SQLite b-trees without SQL: every page's kind and
 * cell count is noted while the pages stream past (in page order, as an
 * export hashes them), and a tree is then summed from its root by reading
 * only its interior pages. Gives what SELECT count(*) gives: the cells of the
 * leaves of a table b-tree, or of all pages of an index b-tree (a WITHOUT
 * ROWID table).
 *
 * Memory: 2 bytes per page of the database, refused (-E2BIG) beyond
 * DBM_BTCOUNT_MAX_PAGES pages, where callers count with SQL instead. */
#ifndef DBM_BTCOUNT_H
#define DBM_BTCOUNT_H
#include <stddef.h>
#include <stdint.h>

#define DBM_BTCOUNT_MAX_PAGES (1u << 25) /* 64 MiB of notes: 128 GiB at 4 KiB pages */

struct dbm_btcount {
    uint16_t *note;      /* owned: per page (index pgno - 1): kind << 14 | cells */
    uint32_t npages, page_size;
};

/* 0, -E2BIG (too many pages to note) or -ENOMEM. */
int dbm_btcount_init(struct dbm_btcount *bc, uint32_t npages, uint32_t page_size);
void dbm_btcount_free(struct dbm_btcount *bc);

/* Notes the whole pages in data (len a multiple of page_size), the first of
 * which is first_pgno. Pages beyond npages are ignored. */
void dbm_btcount_feed(struct dbm_btcount *bc, uint32_t first_pgno, const void *data, size_t len);

/* Reads page pgno (page_size bytes, verified) into buf: 0 or -errno. */
typedef int (*dbm_btcount_read)(void *arg, uint32_t pgno, void *buf);

/* Rows of the tree rooted at root, every page of which has been fed. buf:
 * page_size bytes of scratch for read. 0; -EINVAL (and a log line naming
 * the page) if the tree is not a valid b-tree; read's error; -ENOMEM. */
int dbm_btcount_rows(const struct dbm_btcount *bc, uint32_t root, dbm_btcount_read read, void *arg,
                     void *buf, uint64_t *rows);

#endif
