/* dbimage.c - see dbimage.h. */
#include <string.h>
#include <sys/types.h>

#include "dbimage.h"

int dbm_dbimage_read_page(const struct dbm_dbimage *img, uint32_t pgno, void *buf)
{
    int rc = img->read_page(img->ctx, pgno, buf);
    if (rc < 0)
        return rc;
    if (pgno == 1 && img->page_size >= 100) {
        unsigned char *p = buf;
        if (p[18] == 2)
            p[18] = 1;
        if (p[19] == 2)
            p[19] = 1;
    }
    return 0;
}

ssize_t dbm_dbimage_pread(const struct dbm_dbimage *img, void *buf, size_t size, uint64_t off, void *scratch)
{
    uint64_t total = (uint64_t)img->page_size * img->db_pages;
    if (off >= total)
        return 0;
    if (size > total - off)
        size = (size_t)(total - off);
    size_t done = 0;
    while (done < size) {
        uint64_t pos = off + done;
        uint32_t pgno = (uint32_t)(pos / img->page_size) + 1;
        size_t in = (size_t)(pos % img->page_size);
        size_t n = img->page_size - in;
        if (n > size - done)
            n = size - done;
        int rc;
        if (in == 0 && n == img->page_size) {
            rc = dbm_dbimage_read_page(img, pgno, (char *)buf + done);
        } else {
            rc = dbm_dbimage_read_page(img, pgno, scratch);
            if (rc == 0)
                memcpy((char *)buf + done, (char *)scratch + in, n);
        }
        if (rc < 0)
            return rc; /* never a short count: a reader would take it for the end */
        done += n;
    }
    return (ssize_t)done;
}
