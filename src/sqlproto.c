/* sqlproto.c - see sqlproto.h.
 *
 * Every multi-byte integer SQLite writes into these headers is big-endian,
 * except the words the WAL checksum runs over: those are read in the byte
 * order named by bit 0 of the WAL magic (1 = big-endian), whatever the host.
 */
#include "sqlproto.h"

#include <errno.h>
#include <string.h>

static const unsigned char db_magic[16] = "SQLite format 3";   /* with its NUL */
static const unsigned char journal_magic[DBM_JOURNAL_MAGIC_LEN] = {
    0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7,
};
#define WAL_MAGIC 0x377f0682u
#define WAL_VERSION 3007000u
#define BASE_MAX 64

static inline uint32_t get_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint32_t get_le32(const unsigned char *p)
{
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

static int is_pow2_between(uint32_t v, uint32_t lo, uint32_t hi)
{
    return v >= lo && v <= hi && (v & (v - 1)) == 0;
}

int dbm_page_size_valid(uint32_t ps)
{
    return is_pow2_between(ps, 512, 65536);
}

/* ---- database header ---- */

int dbm_dbhdr_parse(const void *buf, size_t len, struct dbm_dbhdr *out)
{
    const unsigned char *p = buf;
    uint32_t page_size;

    memset(out, 0, sizeof(*out));
    if (len < 100 || memcmp(p, db_magic, sizeof(db_magic)) != 0)
        return -EINVAL;
    page_size = (uint32_t)p[16] << 8 | p[17];
    if (page_size == 1)
        page_size = 65536;
    if (!dbm_page_size_valid(page_size))
        return -EINVAL;
    /* Versions above 2 are future formats this daemon cannot follow;
     * 21..23 are fixed by the format (payload fractions 64, 32, 32). */
    if (p[18] < 1 || p[18] > 2 || p[19] < 1 || p[19] > 2 || p[21] != 64 || p[22] != 32 ||
        p[23] != 32)
        return -EINVAL;
    out->page_size = page_size;
    out->write_version = p[18];
    out->read_version = p[19];
    out->change_counter = get_be32(p + 24);
    out->db_pages = get_be32(p + 28);
    out->version_valid = get_be32(p + 92);
    return 0;
}

uint32_t dbm_lock_page(uint32_t page_size)
{
    if (page_size == 0)
        return 0;
    return (uint32_t)(DBM_PENDING_BYTE / page_size) + 1;
}

/* ---- rollback journal ---- */

/* SQLite writes two kinds of "not hot" header: 28 zero bytes (PERSIST
 * commit) and, under synchronous=NORMAL/FULL, a fresh header whose magic and
 * nrec are zero until the journal has been synced (the other fields are
 * already set). SQLite's hot-journal test looks at byte 0 only; a zero
 * magic is the form both share. */
int dbm_journal_magic(const void *p)
{
    return memcmp(p, journal_magic, sizeof(journal_magic)) == 0;
}

/* SQLite's writeSuperJournal(): pgno, name, u32 name length, u32 checksum,
 * magic, at the journal's end. The limit is SQLite's path length bound. */
int dbm_journal_names_super(const void *tail, uint64_t jsize)
{
    const unsigned char *p = tail;
    uint32_t len = get_be32(p);
    return jsize >= 20 && dbm_journal_magic(p + 8) && len > 0 && len < 4096 && jsize >= 20 + (uint64_t)len;
}

int dbm_jhdr_parse(const void *buf, size_t len, struct dbm_jhdr *out)
{
    static const unsigned char zero[DBM_JOURNAL_MAGIC_LEN];
    const unsigned char *p = buf;
    int hot;

    memset(out, 0, sizeof(*out));
    if (len < 28)
        return -EINVAL;
    if (memcmp(p, journal_magic, sizeof(journal_magic)) == 0)
        hot = 1;
    else if (memcmp(p, zero, sizeof(zero)) == 0)
        hot = 0;
    else
        return -EINVAL;
    out->nrec = get_be32(p + 8);
    out->nonce = get_be32(p + 12);
    out->orig_pages = get_be32(p + 16);
    out->sector_size = get_be32(p + 20);
    out->page_size = get_be32(p + 24);
    if (!hot)
        return 0;
    /* The limits SQLite's own readJournalHdr() applies. */
    if (!dbm_page_size_valid(out->page_size) ||
        !is_pow2_between(out->sector_size, 32, 65536)) {
        memset(out, 0, sizeof(*out));
        return -EINVAL;
    }
    return 1;
}

/* ---- WAL ---- */

/* Continues the WAL checksum (s1, s2) over len bytes (a multiple of 8):
 * for each pair of 32-bit words x0, x1: s1 += x0 + s2; s2 += x1 + s1. */
static void wal_cksum(int big_endian, const unsigned char *p, size_t len, uint32_t *s1,
                      uint32_t *s2)
{
    uint32_t a = *s1, b = *s2;
    const unsigned char *end = p + len;

    if (big_endian) {
        for (; p < end; p += 8) {
            a += get_be32(p) + b;
            b += get_be32(p + 4) + a;
        }
    } else {
        for (; p < end; p += 8) {
            a += get_le32(p) + b;
            b += get_le32(p + 4) + a;
        }
    }
    *s1 = a;
    *s2 = b;
}

int dbm_walhdr_parse(const void *buf, size_t len, struct dbm_walhdr *out)
{
    const unsigned char *p = buf;
    uint32_t s1 = 0, s2 = 0;

    memset(out, 0, sizeof(*out));
    if (len < DBM_WAL_HDR_SIZE)
        return -EINVAL;
    out->magic = get_be32(p);
    out->version = get_be32(p + 4);
    out->page_size = get_be32(p + 8);
    out->ckpt_seq = get_be32(p + 12);
    out->salt1 = get_be32(p + 16);
    out->salt2 = get_be32(p + 20);
    out->cksum1 = get_be32(p + 24);
    out->cksum2 = get_be32(p + 28);
    out->big_endian_cksum = (int)(out->magic & 1);
    /* The WAL stores 65536 as itself, unlike the database header. */
    if ((out->magic & ~1u) != WAL_MAGIC || out->version != WAL_VERSION ||
        !is_pow2_between(out->page_size, 512, 65536))
        goto invalid;
    wal_cksum(out->big_endian_cksum, p, 24, &s1, &s2);
    if (s1 != out->cksum1 || s2 != out->cksum2)
        goto invalid;
    return 0;

invalid:
    memset(out, 0, sizeof(*out));
    return -EINVAL;
}

void dbm_walck_init(struct dbm_walck *ck, const struct dbm_walhdr *h)
{
    ck->s1 = h->cksum1;
    ck->s2 = h->cksum2;
    ck->big_endian = h->big_endian_cksum;
}

int dbm_walframe_check(const void *buf, uint32_t page_size, const struct dbm_walhdr *h,
                       struct dbm_walck *ck, struct dbm_walframe *out)
{
    return dbm_walframe_check_parts(buf, (const unsigned char *)buf + DBM_WAL_FRAME_HDR_SIZE, page_size, h, ck, out);
}

int dbm_walframe_check_parts(const void *hdr, const void *page, uint32_t page_size, const struct dbm_walhdr *h,
                             struct dbm_walck *ck, struct dbm_walframe *out)
{
    const unsigned char *p = hdr;
    struct dbm_walframe f;
    uint32_t s1 = ck->s1, s2 = ck->s2;

    if (page_size != h->page_size || page_size == 0)
        return -EINVAL;
    f.pgno = get_be32(p);
    f.commit_pages = get_be32(p + 4);
    f.salt1 = get_be32(p + 8);
    f.salt2 = get_be32(p + 12);
    f.cksum1 = get_be32(p + 16);
    f.cksum2 = get_be32(p + 20);
    /* Same tests, same order, as SQLite's walDecodeFrame(). */
    if (f.pgno == 0 || f.salt1 != h->salt1 || f.salt2 != h->salt2)
        return -EINVAL;
    wal_cksum(ck->big_endian, p, 8, &s1, &s2);
    wal_cksum(ck->big_endian, page, page_size, &s1, &s2);
    if (s1 != f.cksum1 || s2 != f.cksum2)
        return -EINVAL;
    ck->s1 = s1;
    ck->s2 = s2;
    *out = f;
    return 0;
}

/* ---- names ---- */

static int is_base_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '.' || c == '-';
}

/* Whether name[0..n) is a database base name. */
static int is_base(const char *name, size_t n)
{
    if (n < 1 || n > BASE_MAX || name[0] == '.')
        return 0;
    if (n < 3 || memcmp(name + n - 3, ".db", 3) != 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!is_base_char(name[i]))
            return 0;
    return 1;
}

static int is_upper_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

/* SQLite 3.x vdbeCommit() names a super-journal "<main db>-mj%06X9%02X":
 * "-mj", six upper-case hex digits, '9', two upper-case hex digits. */
static int is_super_suffix(const char *s)
{
    if (strncmp(s, "-mj", 3) != 0 || strlen(s) != 12 || s[9] != '9')
        return 0;
    for (int i = 3; i < 12; i++)
        if (i != 9 && !is_upper_hex(s[i]))
            return 0;
    return 1;
}

enum dbm_sqlfile dbm_sqlfile_classify(const char *name, char *base, size_t basesz)
{
    static const struct {
        const char *suffix;
        enum dbm_sqlfile kind;
    } kinds[] = {
        { "", DBM_SQLFILE_DB },
        { "-journal", DBM_SQLFILE_JOURNAL },
        { "-wal", DBM_SQLFILE_WAL },
        { "-shm", DBM_SQLFILE_SHM },
    };
    size_t len = strlen(name), n = 0;
    enum dbm_sqlfile kind = DBM_SQLFILE_NONE;

    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        size_t sl = strlen(kinds[i].suffix);
        if (len > sl && strcmp(name + len - sl, kinds[i].suffix) == 0 &&
            is_base(name, len - sl)) {
            kind = kinds[i].kind;
            n = len - sl;
            break;
        }
    }
    if (kind == DBM_SQLFILE_NONE && len > 12 && is_super_suffix(name + len - 12) &&
        is_base(name, len - 12)) {
        kind = DBM_SQLFILE_SUPER;
        n = len - 12;
    }
    if (kind == DBM_SQLFILE_NONE)
        return DBM_SQLFILE_NONE;
    if (base) {
        if (basesz <= n)
            return DBM_SQLFILE_NONE;
        memcpy(base, name, n);
        base[n] = '\0';
    }
    return kind;
}
