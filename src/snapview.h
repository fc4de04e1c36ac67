/* snapview.h - SQLite over a historical database image (dbimage.h), through
 * a read-only VFS of our own: no file is materialised. The only module besides
 * the catalog that sees sqlite3. */
#ifndef DBM_SNAPVIEW_H
#define DBM_SNAPVIEW_H
#include <stddef.h>
#include <stdint.h>

struct dbm_dbimage;

struct dbm_table_count {
    char *name;     /* table name (owned by the array) */
    uint64_t rows;
    uint32_t root;  /* its root page, as sqlite_schema says (0 if out of range) */
};

/* Opens img read-only with SQLite and counts the rows of every table in
 * sqlite_schema (type 'table', including sqlite_sequence and sqlite_stat*,
 * excluding virtual tables), sorted by name (memcmp order). *out is a new
 * array of *n entries: free with dbm_table_counts_free. -EIO if a page fails
 * its checksum, -EINVAL if the image is not a valid database (message logged). */
int dbm_snapview_table_counts(const struct dbm_dbimage *img, struct dbm_table_count **out, size_t *n);
void dbm_table_counts_free(struct dbm_table_count *v, size_t n);

/* Counts the rows of the tree at root without SQL: 0 and *rows, -ENOTSUP to
 * have SQL count them, or another -errno that fails the count. */
typedef int (*dbm_rows_at_root)(void *arg, uint32_t root, uint64_t *rows);
/* dbm_snapview_table_counts, asking fast(arg, root, &rows) first for each
 * table (SQL still lists the tables and counts those fast declines). */
int dbm_snapview_table_counts_by(const struct dbm_dbimage *img, dbm_rows_at_root fast, void *arg,
                                 struct dbm_table_count **out, size_t *n);

/* Runs PRAGMA integrity_check on img: 0 if "ok", -EINVAL (and the first
 * message in msg) otherwise, -EIO on a checksum failure. */
int dbm_snapview_integrity(const struct dbm_dbimage *img, char *msg, size_t msgsz);

#endif
