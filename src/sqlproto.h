/* sqlproto.h - what SQLite writes into a database's files, decoded.
 *
 * Pure functions over byte buffers: no I/O, no allocation except where said.
 * Formats from sqlite.org "Database File Format" and "WAL-mode File Format";
 * see ../shared/docs/sqlite-file-protocol.md.
 */
#ifndef DBM_SQLPROTO_H
#define DBM_SQLPROTO_H

#include <stddef.h>
#include <stdint.h>

/* ---- database header (first 100 bytes of page 1) ---- */
struct dbm_dbhdr {
    uint32_t page_size;     /* decoded (1 -> 65536); 0 if invalid */
    uint8_t write_version;  /* 1 rollback, 2 WAL */
    uint8_t read_version;
    uint32_t change_counter;
    uint32_t db_pages;      /* in-header size; valid if version_valid == change_counter */
    uint32_t version_valid;
};
/* 0 if buf (len >= 100) holds a valid SQLite 3 header, -EINVAL otherwise. */
int dbm_dbhdr_parse(const void *buf, size_t len, struct dbm_dbhdr *out);

/* 1 if ps is a page size SQLite can have: a power of two from 512 to 65536. */
int dbm_page_size_valid(uint32_t ps);

/* The page that holds byte 0x40000000 for this page size (never written). */
uint32_t dbm_lock_page(uint32_t page_size);

/* ---- rollback journal ---- */
#define DBM_JOURNAL_MAGIC_LEN 8
struct dbm_jhdr {
    uint32_t nrec;        /* page records in this segment (0xffffffff: compute from size) */
    uint32_t nonce;
    uint32_t orig_pages;  /* database size before the transaction */
    uint32_t sector_size;
    uint32_t page_size;
};
/* 1 if buf (len >= 28) starts with a valid journal header (hot journal
 * candidate), 0 if the header is zeroed/absent (committed or empty),
 * -EINVAL if it is neither (garbage). */
int dbm_jhdr_parse(const void *buf, size_t len, struct dbm_jhdr *out);
/* 1 if p (DBM_JOURNAL_MAGIC_LEN bytes) is the journal magic. */
int dbm_journal_magic(const void *p);
/* tail: a journal's last 16 bytes; jsize: its size. 1 if they close a
 * super-journal record (name length, checksum, magic): the journal belongs
 * to a transaction over several databases. */
int dbm_journal_names_super(const void *tail, uint64_t jsize);

/* ---- WAL ---- */
#define DBM_WAL_HDR_SIZE 32
#define DBM_WAL_FRAME_HDR_SIZE 24
struct dbm_walhdr {
    uint32_t magic;       /* 0x377f0682 or 0x377f0683 */
    uint32_t version;     /* 3007000 */
    uint32_t page_size;
    uint32_t ckpt_seq;
    uint32_t salt1, salt2;
    uint32_t cksum1, cksum2;
    int big_endian_cksum; /* magic & 1 */
};
/* 0 if buf (>= 32 bytes) is a valid WAL header (checksum verified). */
int dbm_walhdr_parse(const void *buf, size_t len, struct dbm_walhdr *out);

struct dbm_walframe {
    uint32_t pgno;
    uint32_t commit_pages;  /* non-zero on a commit frame: db size after commit */
    uint32_t salt1, salt2;
    uint32_t cksum1, cksum2;
};

/* Running checksum state of a WAL, seeded from its header. */
struct dbm_walck {
    uint32_t s1, s2;
    int big_endian;
};
void dbm_walck_init(struct dbm_walck *ck, const struct dbm_walhdr *h);

/* Validates one frame (24-byte header + page_size bytes of page at buf)
 * against the header's salts and the running checksum; on success updates
 * *ck to the frame's checksum and fills *out, returns 0. Returns -EINVAL
 * (ck untouched) if the salts or checksum do not match: the frame is not
 * part of the current WAL generation. */
int dbm_walframe_check(const void *buf, uint32_t page_size, const struct dbm_walhdr *h,
                       struct dbm_walck *ck, struct dbm_walframe *out);
/* The same, with the frame's header and page in separate buffers (as SQLite
 * writes them: the header, then the page). */
int dbm_walframe_check_parts(const void *hdr, const void *page, uint32_t page_size, const struct dbm_walhdr *h,
                             struct dbm_walck *ck, struct dbm_walframe *out);

/* Offset of frame i (0-based) in the WAL file. */
static inline uint64_t dbm_wal_frame_off(uint32_t page_size, uint64_t i)
{
    return DBM_WAL_HDR_SIZE + i * (uint64_t)(DBM_WAL_FRAME_HDR_SIZE + page_size);
}

/* ---- lock bytes (database file) ---- */
#define DBM_PENDING_BYTE 0x40000000ULL
#define DBM_RESERVED_BYTE (DBM_PENDING_BYTE + 1)
#define DBM_SHARED_FIRST (DBM_PENDING_BYTE + 2)
#define DBM_SHARED_SIZE 510
/* -shm lock bytes (WAL mode) */
#define DBM_SHM_WRITE_LOCK 120
#define DBM_SHM_CKPT_LOCK 121
#define DBM_SHM_RECOVER_LOCK 122
#define DBM_SHM_READ_FIRST 123 /* READ0..READ4: a reader's mark */
#define DBM_SHM_READ_LAST 127
#define DBM_SHM_DMS_LOCK 128

/* ---- names ---- */
enum dbm_sqlfile {
    DBM_SQLFILE_NONE = 0, /* not a name allowed in db/ */
    DBM_SQLFILE_DB,       /* <name>.db */
    DBM_SQLFILE_JOURNAL,  /* <name>.db-journal */
    DBM_SQLFILE_WAL,      /* <name>.db-wal */
    DBM_SQLFILE_SHM,      /* <name>.db-shm */
    DBM_SQLFILE_SUPER,    /* <name>.db-mjXXXXXXX9XX super-journal */
};
/* Classifies a file name in db/. On success writes the database's base
 * name ("erp.db") into base (size basesz) and returns the kind; returns
 * DBM_SQLFILE_NONE for anything else. Base names: 1..64 chars of
 * [A-Za-z0-9_.-], not starting with '.', ending in ".db". */
enum dbm_sqlfile dbm_sqlfile_classify(const char *name, char *base, size_t basesz);

#endif
