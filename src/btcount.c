/* btcount.c - see btcount.h.
 *
 * SQLite's b-tree page (fileformat2.html, "B-tree Pages"): the header starts
 * at byte 100 on page 1 and at 0 elsewhere; byte 0 is the kind (2 interior
 * index, 5 interior table, 10 leaf index, 13 leaf table), bytes 3-4 the
 * cell count (big-endian); interior pages have the right-most child at
 * bytes 8-11 and a 12-byte header, leaves an 8-byte one; the cell pointer
 * array (2 bytes each, offsets into the page) follows the header, and an
 * interior cell starts with its 4-byte left child.
 *
 * A note keeps the kind in its top two bits and the cell count (at most
 * 65536 / 4 cells fit a page, so 14 bits do) in the rest. Leaves are summed
 * from their notes; interior pages are read again, since their children are
 * not noted. The walk checks every child against the tree's kind and the
 * page count, and visits at most npages pages, so a damaged image ends in
 * -EINVAL, never a loop or a read out of bounds. */
#include "btcount.h"

#include <errno.h>
#include <stdlib.h>

#include "log.h"
#include "strutil.h"

enum { NOTE_OTHER = 0, NOTE_TABLE_LEAF = 1, NOTE_INDEX_LEAF = 2, NOTE_INTERIOR = 3 };
#define NOTE(kind, cells) ((uint16_t)((kind) << 14 | ((cells) & 0x3fff)))
#define NOTE_KIND(n) ((n) >> 14)
#define NOTE_CELLS(n) ((n) & 0x3fffu)

static uint32_t be16(const unsigned char *p)
{
    return (uint32_t)p[0] << 8 | p[1];
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint32_t hdr_off(uint32_t pgno)
{
    return pgno == 1 ? 100 : 0;
}

int dbm_btcount_init(struct dbm_btcount *bc, uint32_t npages, uint32_t page_size)
{
    bc->note = NULL;
    bc->npages = npages;
    bc->page_size = page_size;
    if (npages > DBM_BTCOUNT_MAX_PAGES)
        return -E2BIG;
    bc->note = calloc(npages ? npages : 1, sizeof(*bc->note));
    return bc->note ? 0 : -ENOMEM;
}

void dbm_btcount_free(struct dbm_btcount *bc)
{
    free(bc->note);
    bc->note = NULL;
}

void dbm_btcount_feed(struct dbm_btcount *bc, uint32_t first_pgno, const void *data, size_t len)
{
    const unsigned char *p = data;

    for (size_t off = 0; off + bc->page_size <= len; off += bc->page_size) {
        uint32_t pgno = first_pgno + (uint32_t)(off / bc->page_size);
        if (pgno == 0 || pgno > bc->npages)
            continue;
        const unsigned char *h = p + off + hdr_off(pgno);
        uint32_t cells = be16(h + 3), kind;
        switch (h[0]) {
        case 13: kind = NOTE_TABLE_LEAF; break;
        case 10: kind = NOTE_INDEX_LEAF; break;
        case 2: case 5: kind = NOTE_INTERIOR; break;
        default: kind = NOTE_OTHER; break;
        }
        if (cells > 0x3fff) /* more than a page holds: not a b-tree page */
            kind = NOTE_OTHER;
        bc->note[pgno - 1] = NOTE(kind, kind == NOTE_OTHER ? 0 : cells);
    }
}

static int bad(uint32_t root, uint32_t pgno, const char *why)
{
    dbm_err("btcount: tree at page %u: page %u %s", root, pgno, why);
    return -EINVAL;
}

int dbm_btcount_rows(const struct dbm_btcount *bc, uint32_t root, dbm_btcount_read read, void *arg,
                     void *buf, uint64_t *rows)
{
    uint32_t *stack = NULL;
    size_t n = 0, cap = 0;
    uint64_t sum = 0, visited = 0;
    int index = -1; /* unknown until the root is read: 0 table tree, 1 index tree */
    int rc = 0;

    if (root == 0 || root > bc->npages)
        return bad(root, root, "is not a page of the database");
    if (dbm_grow((void **)&stack, &cap, 1, sizeof(*stack)) < 0)
        return -ENOMEM;
    stack[n++] = root;
    while (rc == 0 && n > 0) {
        uint32_t pgno = stack[--n];
        uint16_t note = bc->note[pgno - 1];
        if (++visited > bc->npages) {
            rc = bad(root, pgno, "is reached twice (the tree has a cycle)");
            break;
        }
        switch (NOTE_KIND(note)) {
        case NOTE_TABLE_LEAF:
        case NOTE_INDEX_LEAF:
            if (index < 0)
                index = NOTE_KIND(note) == NOTE_INDEX_LEAF;
            if (index != (NOTE_KIND(note) == NOTE_INDEX_LEAF)) {
                rc = bad(root, pgno, "is a leaf of another kind of tree");
                break;
            }
            sum += NOTE_CELLS(note);
            continue;
        case NOTE_OTHER:
            rc = bad(root, pgno, "is not a b-tree page");
            continue;
        default:
            break;
        }
        if (rc)
            break;
        /* An interior page: read it for its children. */
        rc = read(arg, pgno, buf);
        if (rc < 0)
            break;
        const unsigned char *pg = buf, *h = pg + hdr_off(pgno);
        uint32_t cells = be16(h + 3);
        int is_index = h[0] == 2;
        if ((h[0] != 2 && h[0] != 5) || cells != NOTE_CELLS(note)) {
            rc = bad(root, pgno, "changed since it was noted");
            break;
        }
        if (index < 0)
            index = is_index;
        if (index != is_index || hdr_off(pgno) + 12 + 2 * (size_t)cells > bc->page_size) {
            rc = bad(root, pgno, index != is_index ? "is an interior page of another kind of tree"
                                                   : "has more cells than fit the page");
            break;
        }
        if (is_index)
            sum += cells; /* an index tree's interior cells are rows too */
        if (dbm_grow((void **)&stack, &cap, n + cells + 1, sizeof(*stack)) < 0) {
            rc = -ENOMEM;
            break;
        }
        for (uint32_t i = 0; i <= cells && rc == 0; i++) {
            uint32_t child;
            if (i == cells) {
                child = be32(h + 8);
            } else {
                uint32_t ptr = be16(h + 12 + 2 * i);
                if ((size_t)ptr + 4 > bc->page_size) {
                    rc = bad(root, pgno, "has a cell pointer beyond the page");
                    break;
                }
                child = be32(pg + ptr);
            }
            if (child == 0 || child > bc->npages)
                rc = bad(root, pgno, "has a child beyond the database");
            else
                stack[n++] = child;
        }
    }
    free(stack);
    if (rc == 0)
        *rows = sum;
    return rc;
}
