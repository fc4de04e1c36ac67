/* test_lockmgr.c - POSIX byte-range locks against a per-byte oracle, then the
 * edge cases by hand: splitting, merging, EOF, release, the SQLite protocol. */
#include "check.h"
#include "lockmgr.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>

/* The oracle models bytes 0..63 one by one; cell 64 stands for every byte
 * from 64 to DBM_LOCK_EOF (operations end at <= 63 or at EOF, so those bytes
 * always share one state). */
#define NCELLS 65
#define TAIL 64
#define NOWNERS 4

/* Cell states; F_RDLCK is 0 on Linux, so the oracle has its own codes. */
enum { C_NONE = 0, C_RD, C_WR };
static short oracle[NOWNERS][NCELLS];

static short cell_of(short type)
{
    return type == F_RDLCK ? C_RD : type == F_WRLCK ? C_WR : C_NONE;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static uint64_t owner_id(int o)
{
    return 0x1000u + (uint64_t)o * 7u; /* not 0..n, to catch index/owner mixups */
}

static pid_t owner_pid(int o)
{
    return (pid_t)(100 + o);
}

static uint64_t cell_start(int c)
{
    return (uint64_t)c;
}

static uint64_t cell_end(int c)
{
    return c == TAIL ? DBM_LOCK_EOF : (uint64_t)c;
}

/* Does a held cell state conflict with a wanted lock type? */
static int conflicts(short held, short want)
{
    return held == C_WR ? 1 : held == C_RD ? want == F_WRLCK : 0;
}

/* Would owner o's lock of type on cells [a, b] conflict in the oracle? */
static int oracle_conflict(int o, short type, int a, int b)
{
    for (int p = 0; p < NOWNERS; p++) {
        if (p == o)
            continue;
        for (int c = a; c <= b; c++)
            if (conflicts(oracle[p][c], type))
                return 1;
    }
    return 0;
}

static int oracle_set(int o, short type, int a, int b)
{
    if (type != F_UNLCK && oracle_conflict(o, type, a, b))
        return -EAGAIN;
    for (int c = a; c <= b; c++)
        oracle[o][c] = cell_of(type);
    return 0;
}

static int owner_index(uint64_t owner)
{
    for (int o = 0; o < NOWNERS; o++)
        if (owner_id(o) == owner)
            return o;
    return -1;
}

/* The table holds exactly the oracle's locks: ranges of one owner are
 * disjoint, merged (no two adjacent ranges of one owner and type) and
 * cover what the oracle says. */
static void check_table(const struct dbm_locktab *t)
{
    short seen[NOWNERS][NCELLS];
    memset(seen, 0, sizeof seen);
    int bad = 0;
    for (size_t i = 0; i < t->n; i++) {
        const struct dbm_lock *l = &t->v[i];
        int o = owner_index(l->owner);
        if (o < 0 || l->start > l->end || (l->type != F_RDLCK && l->type != F_WRLCK) ||
            (l->end != DBM_LOCK_EOF && l->end >= TAIL) || l->start > TAIL || l->pid != owner_pid(o)) {
            bad++;
            continue;
        }
        int a = (int)l->start, b = l->end == DBM_LOCK_EOF ? TAIL : (int)l->end;
        for (int c = a; c <= b; c++) {
            if (seen[o][c])
                bad++; /* overlapping ranges of one owner */
            seen[o][c] = cell_of(l->type);
        }
        for (size_t j = 0; j < t->n; j++) {
            const struct dbm_lock *m = &t->v[j];
            if (j != i && m->owner == l->owner && m->type == l->type && l->end != DBM_LOCK_EOF &&
                l->end + 1 == m->start)
                bad++; /* adjacent ranges left unmerged */
        }
    }
    CHECK_EQ_INT(bad, 0);
    CHECK(memcmp(seen, oracle, sizeof seen) == 0);
}

/* Every per-byte test answer and held_at answer agrees with the oracle. */
static void check_answers(const struct dbm_locktab *t)
{
    int mismatches = 0;
    for (int c = 0; c < NCELLS; c++) {
        int any = 0, anyw = 0;
        for (int o = 0; o < NOWNERS; o++) {
            any |= oracle[o][c] != 0;
            anyw |= oracle[o][c] == C_WR;
            for (int k = 0; k < 2; k++) {
                short type = k ? F_WRLCK : F_RDLCK;
                struct dbm_lock cf;
                memset(&cf, 0, sizeof cf);
                int got = dbm_lock_test(t, owner_id(o), type, cell_start(c), cell_end(c), &cf);
                int want = oracle_conflict(o, type, c, c);
                if (got != want)
                    mismatches++;
                if (got) {
                    /* the reported lock is real, someone else's, covers c and conflicts */
                    int p = owner_index(cf.owner);
                    if (p < 0 || p == o || cf.start > cell_start(c) || cf.end < cell_start(c) ||
                        !conflicts(cell_of(cf.type), type) || oracle[p][c] != cell_of(cf.type) || cf.pid != owner_pid(p))
                        mismatches++;
                }
            }
        }
        if (dbm_lock_held_at(t, F_RDLCK, cell_start(c)) != any || dbm_lock_held_at(t, F_WRLCK, cell_start(c)) != anyw)
            mismatches++;
        if (c == TAIL && (dbm_lock_held_at(t, F_RDLCK, DBM_LOCK_EOF) != any ||
                          dbm_lock_held_at(t, F_RDLCK, 1u << 30) != any ||
                          dbm_lock_held_at(t, F_WRLCK, DBM_LOCK_EOF - 1) != anyw))
            mismatches++;
    }
    /* random multi-byte test ranges */
    for (int i = 0; i < 40; i++) {
        int a = (int)(rng() % NCELLS), b = a + (int)(rng() % (uint64_t)(NCELLS - a));
        int o = (int)(rng() % NOWNERS);
        int holds = 0;
        for (int c = a; c <= b; c++)
            holds |= oracle[o][c] != C_NONE;
        if (dbm_lock_owner_holds(t, owner_id(o), (uint64_t)a, b == TAIL ? DBM_LOCK_EOF : (uint64_t)b) != holds)
            mismatches++;
        short type = rng() & 1 ? F_WRLCK : F_RDLCK;
        uint64_t end = b == TAIL ? DBM_LOCK_EOF : (uint64_t)b;
        if (dbm_lock_test(t, owner_id(o), type, (uint64_t)a, end, NULL) != oracle_conflict(o, type, a, b))
            mismatches++;
    }
    CHECK_EQ_INT(mismatches, 0);
}

static void test_random(void)
{
    struct dbm_locktab t = { 0 };
    memset(oracle, 0, sizeof oracle);
    int agreed = 0, eagain = 0, total = 0;
    for (int round = 0; round < 6000; round++) {
        int o = (int)(rng() % NOWNERS);
        uint64_t r = rng() % 10;
        short type = r < 4 ? F_RDLCK : r < 7 ? F_WRLCK : F_UNLCK;
        int a = (int)(rng() % NCELLS), b;
        /* mostly short ranges so locks fragment; sometimes to EOF */
        if (a == TAIL || rng() % 8 == 0)
            b = TAIL;
        else
            b = a + (int)(rng() % (uint64_t)(rng() % 4 == 0 ? TAIL - a : (TAIL - a < 6 ? TAIL - a : 6)));
        uint64_t end = b == TAIL ? DBM_LOCK_EOF : (uint64_t)b;
        int want = oracle_set(o, type, a, b);
        int got = dbm_lock_set(&t, owner_id(o), owner_pid(o), type, (uint64_t)a, end);
        total++;
        if (got == want)
            agreed++;
        else
            fprintf(stderr, "  round %d: owner %d type %d [%d,%d]: got %d want %d\n", round, o, type, a, b, got, want);
        eagain += want == -EAGAIN;
        if (round % 7 == 0 || got != want) {
            check_table(&t);
            check_answers(&t);
        }
        if (got != want)
            break;
        if (rng() % 500 == 0) {
            /* an owner closes its file: all its locks go */
            int q = (int)(rng() % NOWNERS);
            size_t ranges = 0;
            for (size_t i = 0; i < t.n; i++)
                ranges += t.v[i].owner == owner_id(q);
            CHECK_EQ_INT(dbm_lock_release_owner(&t, owner_id(q)), ranges);
            memset(oracle[q], 0, sizeof oracle[q]);
            check_table(&t);
        }
    }
    CHECK_EQ_INT(agreed, total);
    CHECK(eagain > total / 20); /* the mix really exercises conflicts */
    check_table(&t);
    check_answers(&t);
    dbm_locktab_free(&t);
    CHECK(t.v == NULL && t.n == 0);
}

static size_t count_owner(const struct dbm_locktab *t, uint64_t owner)
{
    size_t n = 0;
    for (size_t i = 0; i < t->n; i++)
        n += t->v[i].owner == owner;
    return n;
}

/* The one lock of owner covering off, or NULL. */
static const struct dbm_lock *find(const struct dbm_locktab *t, uint64_t owner, uint64_t off)
{
    for (size_t i = 0; i < t->n; i++)
        if (t->v[i].owner == owner && t->v[i].start <= off && off <= t->v[i].end)
            return &t->v[i];
    return NULL;
}

static int has(const struct dbm_locktab *t, uint64_t owner, short type, uint64_t start, uint64_t end)
{
    const struct dbm_lock *l = find(t, owner, start);
    return l && l->type == type && l->start == start && l->end == end;
}

static void test_split_merge(void)
{
    struct dbm_locktab t = { 0 };
    CHECK_EQ_INT(dbm_lock_set(&t, 1, 10, F_RDLCK, 0, 9), 0);
    CHECK_EQ_INT(dbm_lock_set(&t, 1, 10, F_RDLCK, 10, 19), 0);
    CHECK_EQ_INT(count_owner(&t, 1), 1);
    CHECK(has(&t, 1, F_RDLCK, 0, 19));
    CHECK_EQ_INT(dbm_lock_set(&t, 1, 10, F_RDLCK, 30, 39), 0);
    CHECK_EQ_INT(count_owner(&t, 1), 2);
    CHECK_EQ_INT(dbm_lock_set(&t, 1, 10, F_RDLCK, 20, 29), 0); /* fills the gap: both sides merge */
    CHECK_EQ_INT(count_owner(&t, 1), 1);
    CHECK(has(&t, 1, F_RDLCK, 0, 39));
    CHECK_EQ_INT(dbm_lock_set(&t, 1, 10, F_RDLCK, 5, 15), 0); /* inside: no change */
    CHECK_EQ_INT(count_owner(&t, 1), 1);
    CHECK(has(&t, 1, F_RDLCK, 0, 39));

    /* unlock the middle: split in two */
    CHECK_EQ_INT(dbm_lock_set(&t, 1, 10, F_UNLCK, 10, 19), 0);
    CHECK_EQ_INT(count_owner(&t, 1), 2);
    CHECK(has(&t, 1, F_RDLCK, 0, 9));
    CHECK(has(&t, 1, F_RDLCK, 20, 39));
    CHECK(find(&t, 1, 15) == NULL);

    /* convert one byte: three pieces, then back: one */
    CHECK_EQ_INT(dbm_lock_set(&t, 1, 10, F_WRLCK, 5, 5), 0);
    CHECK_EQ_INT(count_owner(&t, 1), 4);
    CHECK(has(&t, 1, F_RDLCK, 0, 4));
    CHECK(has(&t, 1, F_WRLCK, 5, 5));
    CHECK(has(&t, 1, F_RDLCK, 6, 9));
    CHECK_EQ_INT(dbm_lock_set(&t, 1, 10, F_RDLCK, 5, 5), 0);
    CHECK_EQ_INT(count_owner(&t, 1), 2);
    CHECK(has(&t, 1, F_RDLCK, 0, 9));

    /* different types side by side do not merge */
    CHECK_EQ_INT(dbm_lock_set(&t, 1, 10, F_WRLCK, 10, 19), 0);
    CHECK_EQ_INT(count_owner(&t, 1), 3);
    CHECK(has(&t, 1, F_WRLCK, 10, 19));
    /* an upgrade over everything: one write lock */
    CHECK_EQ_INT(dbm_lock_set(&t, 1, 10, F_WRLCK, 0, 39), 0);
    CHECK_EQ_INT(count_owner(&t, 1), 1);
    CHECK(has(&t, 1, F_WRLCK, 0, 39));

    /* another owner: conflicts, and a refused request changes nothing */
    CHECK_EQ_INT(dbm_lock_set(&t, 2, 20, F_RDLCK, 39, 45), -EAGAIN);
    CHECK_EQ_INT(count_owner(&t, 2), 0);
    CHECK_EQ_INT(dbm_lock_set(&t, 2, 20, F_RDLCK, 40, 45), 0);
    CHECK(has(&t, 2, F_RDLCK, 40, 45));
    /* adjacent ranges of different owners never merge */
    CHECK(has(&t, 1, F_WRLCK, 0, 39));
    /* unlocking what you do not hold is fine and touches nobody else */
    CHECK_EQ_INT(dbm_lock_set(&t, 2, 20, F_UNLCK, 0, 39), 0);
    CHECK(has(&t, 1, F_WRLCK, 0, 39));
    /* start > end */
    CHECK_EQ_INT(dbm_lock_set(&t, 2, 20, F_RDLCK, 9, 8), -EINVAL);
    CHECK_EQ_INT(count_owner(&t, 2), 1);

    struct dbm_lock cf;
    CHECK_EQ_INT(dbm_lock_test(&t, 2, F_RDLCK, 30, 30, &cf), 1);
    CHECK(cf.owner == 1 && cf.pid == 10 && cf.type == F_WRLCK && cf.start == 0 && cf.end == 39);
    CHECK_EQ_INT(dbm_lock_test(&t, 1, F_WRLCK, 40, 40, &cf), 1);
    CHECK(cf.owner == 2 && cf.pid == 20 && cf.type == F_RDLCK);
    CHECK_EQ_INT(dbm_lock_test(&t, 3, F_RDLCK, 40, 45, NULL), 0);
    CHECK_EQ_INT(dbm_lock_test(&t, 1, F_WRLCK, 0, 39, NULL), 0); /* your own locks never conflict */

    /* release_owner */
    CHECK_EQ_INT(dbm_lock_set(&t, 2, 20, F_WRLCK, 100, 109), 0);
    CHECK_EQ_INT(dbm_lock_set(&t, 2, 20, F_RDLCK, 200, 209), 0);
    CHECK_EQ_INT(dbm_lock_release_owner(&t, 2), 3);
    CHECK_EQ_INT(count_owner(&t, 2), 0);
    CHECK_EQ_INT(dbm_lock_release_owner(&t, 2), 0);
    CHECK_EQ_INT(dbm_lock_release_owner(&t, 99), 0);
    CHECK(has(&t, 1, F_WRLCK, 0, 39));
    CHECK_EQ_INT(t.n, 1);
    CHECK_EQ_INT(dbm_lock_release_owner(&t, 1), 1);
    CHECK_EQ_INT(t.n, 0);
    dbm_locktab_free(&t);
}

static void test_eof(void)
{
    struct dbm_locktab t = { 0 };
    CHECK_EQ_INT(dbm_lock_set(&t, 1, 10, F_RDLCK, 100, DBM_LOCK_EOF), 0);
    CHECK_EQ_INT(dbm_lock_test(&t, 2, F_WRLCK, DBM_LOCK_EOF, DBM_LOCK_EOF, NULL), 1);
    CHECK_EQ_INT(dbm_lock_test(&t, 2, F_WRLCK, 0, 99, NULL), 0);
    CHECK_EQ_INT(dbm_lock_set(&t, 1, 10, F_UNLCK, 200, DBM_LOCK_EOF), 0);
    CHECK(has(&t, 1, F_RDLCK, 100, 199));
    CHECK_EQ_INT(dbm_lock_test(&t, 2, F_WRLCK, 200, DBM_LOCK_EOF, NULL), 0);
    CHECK_EQ_INT(dbm_lock_set(&t, 1, 10, F_RDLCK, 200, DBM_LOCK_EOF), 0);
    CHECK_EQ_INT(t.n, 1);
    CHECK(has(&t, 1, F_RDLCK, 100, DBM_LOCK_EOF));
    /* the last byte alone */
    CHECK_EQ_INT(dbm_lock_set(&t, 1, 10, F_WRLCK, DBM_LOCK_EOF, DBM_LOCK_EOF), 0);
    CHECK_EQ_INT(t.n, 2);
    CHECK(has(&t, 1, F_RDLCK, 100, DBM_LOCK_EOF - 1));
    CHECK(has(&t, 1, F_WRLCK, DBM_LOCK_EOF, DBM_LOCK_EOF));
    CHECK_EQ_INT(dbm_lock_held_at(&t, F_WRLCK, DBM_LOCK_EOF), 1);
    CHECK_EQ_INT(dbm_lock_held_at(&t, F_WRLCK, DBM_LOCK_EOF - 1), 0);
    CHECK_EQ_INT(dbm_lock_held_at(&t, F_RDLCK, DBM_LOCK_EOF - 1), 1);
    CHECK_EQ_INT(dbm_lock_held_at(&t, F_RDLCK, 99), 0);
    CHECK_EQ_INT(dbm_lock_set(&t, 1, 10, F_RDLCK, DBM_LOCK_EOF, DBM_LOCK_EOF), 0);
    CHECK_EQ_INT(t.n, 1);
    CHECK(has(&t, 1, F_RDLCK, 100, DBM_LOCK_EOF));
    /* whole-file unlock from 0 */
    CHECK_EQ_INT(dbm_lock_set(&t, 1, 10, F_UNLCK, 0, DBM_LOCK_EOF), 0);
    CHECK_EQ_INT(t.n, 0);
    /* a whole-file write lock excludes everybody */
    CHECK_EQ_INT(dbm_lock_set(&t, 1, 10, F_WRLCK, 0, DBM_LOCK_EOF), 0);
    CHECK_EQ_INT(dbm_lock_set(&t, 2, 20, F_RDLCK, 0, 0), -EAGAIN);
    CHECK_EQ_INT(dbm_lock_set(&t, 2, 20, F_RDLCK, DBM_LOCK_EOF, DBM_LOCK_EOF), -EAGAIN);
    CHECK_EQ_INT(dbm_lock_set(&t, 1, 10, F_UNLCK, 0, 0), 0);
    CHECK(has(&t, 1, F_WRLCK, 1, DBM_LOCK_EOF));
    CHECK_EQ_INT(dbm_lock_set(&t, 2, 20, F_RDLCK, 0, 0), 0);
    dbm_locktab_free(&t);
}

/* SQLite's unix VFS: PENDING byte, RESERVED byte, then 510 SHARED bytes. */
#define PENDING_BYTE 0x40000000ULL
#define RESERVED_BYTE (PENDING_BYTE + 1)
#define SHARED_FIRST (PENDING_BYTE + 2)
#define SHARED_LAST (SHARED_FIRST + 510 - 1)

/* SHARED as os_unix.c takes it: read PENDING, read the range, drop PENDING. */
static int sqlite_shared(struct dbm_locktab *t, uint64_t owner)
{
    int rc = dbm_lock_set(t, owner, (pid_t)owner, F_RDLCK, PENDING_BYTE, PENDING_BYTE);
    if (rc < 0)
        return rc;
    rc = dbm_lock_set(t, owner, (pid_t)owner, F_RDLCK, SHARED_FIRST, SHARED_LAST);
    dbm_lock_set(t, owner, (pid_t)owner, F_UNLCK, PENDING_BYTE, PENDING_BYTE);
    return rc;
}

static void test_sqlite(void)
{
    struct dbm_locktab t = { 0 };
    const uint64_t A = 1, B = 2, C = 3;

    CHECK_EQ_INT(sqlite_shared(&t, A), 0);
    CHECK_EQ_INT(sqlite_shared(&t, B), 0);
    CHECK_EQ_INT(dbm_lock_held_at(&t, F_RDLCK, PENDING_BYTE), 0);
    CHECK_EQ_INT(dbm_lock_held_at(&t, F_RDLCK, SHARED_FIRST), 1);
    CHECK_EQ_INT(dbm_lock_held_at(&t, F_RDLCK, SHARED_LAST), 1);
    CHECK_EQ_INT(dbm_lock_held_at(&t, F_RDLCK, SHARED_LAST + 1), 0);
    CHECK_EQ_INT(dbm_lock_held_at(&t, F_WRLCK, SHARED_FIRST), 0);

    /* RESERVED: one writer at a time */
    CHECK_EQ_INT(dbm_lock_set(&t, A, 1, F_WRLCK, RESERVED_BYTE, RESERVED_BYTE), 0);
    CHECK_EQ_INT(dbm_lock_set(&t, B, 2, F_WRLCK, RESERVED_BYTE, RESERVED_BYTE), -EAGAIN);
    CHECK_EQ_INT(dbm_lock_held_at(&t, F_WRLCK, RESERVED_BYTE), 1);
    /* readers still come in while A is only RESERVED */
    CHECK_EQ_INT(sqlite_shared(&t, C), 0);
    CHECK_EQ_INT(dbm_lock_set(&t, C, 3, F_UNLCK, 0, DBM_LOCK_EOF), 0);

    /* PENDING then EXCLUSIVE: blocked while B reads */
    CHECK_EQ_INT(dbm_lock_set(&t, A, 1, F_WRLCK, PENDING_BYTE, PENDING_BYTE), 0);
    CHECK_EQ_INT(dbm_lock_set(&t, A, 1, F_WRLCK, SHARED_FIRST, SHARED_LAST), -EAGAIN);
    struct dbm_lock cf;
    CHECK_EQ_INT(dbm_lock_test(&t, A, F_WRLCK, SHARED_FIRST, SHARED_LAST, &cf), 1);
    CHECK(cf.owner == B && cf.type == F_RDLCK);
    /* A's refused request left its SHARED lock intact */
    CHECK(has(&t, A, F_RDLCK, SHARED_FIRST, SHARED_LAST));
    /* new readers are kept out by PENDING */
    CHECK_EQ_INT(sqlite_shared(&t, C), -EAGAIN);
    CHECK_EQ_INT(count_owner(&t, C), 0);

    /* B finishes: A gets EXCLUSIVE */
    CHECK_EQ_INT(dbm_lock_set(&t, B, 2, F_UNLCK, 0, DBM_LOCK_EOF), 0);
    CHECK_EQ_INT(count_owner(&t, B), 0);
    CHECK_EQ_INT(dbm_lock_set(&t, A, 1, F_WRLCK, SHARED_FIRST, SHARED_LAST), 0);
    CHECK_EQ_INT(dbm_lock_held_at(&t, F_WRLCK, SHARED_FIRST + 100), 1);
    /* PENDING, RESERVED and SHARED are adjacent write locks now: one range */
    CHECK_EQ_INT(count_owner(&t, A), 1);
    CHECK(has(&t, A, F_WRLCK, PENDING_BYTE, SHARED_LAST));
    CHECK_EQ_INT(sqlite_shared(&t, B), -EAGAIN);
    CHECK_EQ_INT(dbm_lock_set(&t, B, 2, F_RDLCK, SHARED_FIRST + 7, SHARED_FIRST + 7), -EAGAIN);

    /* commit done: back to SHARED (unixUnlock to SHARED_LOCK) */
    CHECK_EQ_INT(dbm_lock_set(&t, A, 1, F_RDLCK, SHARED_FIRST, SHARED_LAST), 0);
    CHECK_EQ_INT(dbm_lock_set(&t, A, 1, F_UNLCK, PENDING_BYTE, RESERVED_BYTE), 0);
    CHECK_EQ_INT(count_owner(&t, A), 1);
    CHECK(has(&t, A, F_RDLCK, SHARED_FIRST, SHARED_LAST));
    CHECK_EQ_INT(dbm_lock_held_at(&t, F_WRLCK, SHARED_FIRST), 0);
    CHECK_EQ_INT(sqlite_shared(&t, B), 0);
    CHECK_EQ_INT(dbm_lock_set(&t, B, 2, F_WRLCK, RESERVED_BYTE, RESERVED_BYTE), 0);

    /* A's connection closes */
    CHECK_EQ_INT(dbm_lock_release_owner(&t, A), 1);
    CHECK_EQ_INT(dbm_lock_set(&t, B, 2, F_WRLCK, PENDING_BYTE, PENDING_BYTE), 0);
    CHECK_EQ_INT(dbm_lock_set(&t, B, 2, F_WRLCK, SHARED_FIRST, SHARED_LAST), 0);
    CHECK_EQ_INT(dbm_lock_release_owner(&t, B), 1);
    CHECK_EQ_INT(t.n, 0);
    CHECK_EQ_INT(dbm_lock_held_at(&t, F_RDLCK, SHARED_FIRST), 0);
    dbm_locktab_free(&t);
    dbm_locktab_free(&t); /* twice is harmless */
}

int main(void)
{
    test_random();
    test_split_merge();
    test_eof();
    test_sqlite();
    return CHECK_DONE();
}
