/* test_livewb.c - a rollback transaction's refused write-backs (livewb.c):
 * the kept ranges against a per-byte oracle as writes are refused, written
 * again (splitting ranges), cut by truncations and cleared. */
#include "check.h"
#include "livedb_i.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

#define N 256 /* bytes modelled one by one */

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

int main(void)
{
    struct dbm_livedb l;
    struct base b;
    memset(&l, 0, sizeof l);
    memset(&b, 0, sizeof b);
    l.writeback = 1;
    b.l = &l;
    unsigned char oracle[N] = { 0 };
    int mismatches = 0;
    for (int step = 0; step < 20000; step++) {
        uint64_t off = rng() % N, size = 1 + rng() % 24;
        if (off + size > N)
            size = N - off;
        unsigned kind = (unsigned)(rng() % 10);
        if (kind < 3) { /* refused */
            dbm_wb_txn_write(&b, off, size, -ENOSPC);
            memset(oracle + off, 1, size);
        } else if (kind < 9) { /* written again */
            dbm_wb_txn_write(&b, off, size, 0);
            memset(oracle + off, 0, size);
        } else if (rng() % 4) { /* truncated */
            uint64_t cut = N / 2 + rng() % (N / 2);
            dbm_wb_txn_cut(&b, cut);
            memset(oracle + cut, 0, N - cut);
        } else { /* the transaction ended */
            dbm_wb_txn_clear(&b);
            memset(oracle, 0, N);
        }
        int any = 0;
        for (uint64_t i = 0; i < N; i++) {
            any |= oracle[i];
            if (dbm_wb_txn_lost(&b, i, 1) != oracle[i])
                mismatches++;
        }
        if (dbm_wb_txn_lost(&b, 0, 0) != any || dbm_wb_txn_lost(&b, 0, N) != any)
            mismatches++;
    }
    CHECK_EQ_INT(mismatches, 0);
    /* a write inside a range splits it in two */
    dbm_wb_txn_clear(&b);
    dbm_wb_txn_write(&b, 100, 100, -EIO);
    dbm_wb_txn_write(&b, 140, 20, 0);
    CHECK(dbm_wb_txn_lost(&b, 100, 40) && dbm_wb_txn_lost(&b, 160, 40));
    CHECK(!dbm_wb_txn_lost(&b, 140, 20));
    /* without the writeback cache nothing is kept */
    dbm_wb_txn_clear(&b);
    l.writeback = 0;
    dbm_wb_txn_write(&b, 0, 10, -EIO);
    CHECK(!dbm_wb_txn_lost(&b, 0, 0));
    free(b.wb_refused);
    return CHECK_DONE();
}
