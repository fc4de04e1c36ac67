/* test_crc32c.c - CRC-32C: published vectors, chaining, hardware path == table path. */
#include "check.h"
#include "crc32c.h"

#include <stdint.h>
#include <string.h>

/* Small deterministic generator so a failure is reproducible. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Bit-at-a-time reference, independent of both implementations. */
static uint32_t crc_ref(uint32_t crc, const unsigned char *p, size_t len)
{
    crc = ~crc;
    while (len--) {
        crc ^= *p++;
        for (int i = 0; i < 8; i++)
            crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
    }
    return ~crc;
}

static void test_vectors(void)
{
    unsigned char buf[48];

    CHECK_EQ_INT(dbm_crc32c(0, "123456789", 9), 0xE3069283u);
    CHECK_EQ_INT(dbm_crc32c_table(0, "123456789", 9), 0xE3069283u);
    CHECK_EQ_INT(dbm_crc32c(0, "", 0), 0);
    CHECK_EQ_INT(dbm_crc32c(0, "a", 1), 0xC1D04330u);

    /* RFC 3720 (iSCSI) appendix B.4. */
    memset(buf, 0, 32);
    CHECK_EQ_INT(dbm_crc32c(0, buf, 32), 0x8A9136AAu);
    CHECK_EQ_INT(dbm_crc32c_table(0, buf, 32), 0x8A9136AAu);
    memset(buf, 0xff, 32);
    CHECK_EQ_INT(dbm_crc32c(0, buf, 32), 0x62A8AB43u);
    CHECK_EQ_INT(dbm_crc32c_table(0, buf, 32), 0x62A8AB43u);
    for (int i = 0; i < 32; i++)
        buf[i] = (unsigned char)i;
    CHECK_EQ_INT(dbm_crc32c(0, buf, 32), 0x46DD794Eu);
    for (int i = 0; i < 32; i++)
        buf[i] = (unsigned char)(31 - i);
    CHECK_EQ_INT(dbm_crc32c(0, buf, 32), 0x113FDB5Cu);
    static const unsigned char iscsi_read[48] = {
        0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
        0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    };
    CHECK_EQ_INT(dbm_crc32c(0, iscsi_read, 48), 0xD9963A56u);
    CHECK_EQ_INT(dbm_crc32c_table(0, iscsi_read, 48), 0xD9963A56u);
}

/* crc(a||b) == crc(crc(a), b) at every split of a buffer that crosses the
 * hardware path's block sizes. */
static void test_chaining(void)
{
    enum { N = 4096 + 77 };
    static unsigned char buf[N];
    int bad_hw = 0, bad_tab = 0;

    for (size_t i = 0; i < N; i++)
        buf[i] = (unsigned char)rng();
    uint32_t whole = crc_ref(0, buf, N);
    CHECK_EQ_INT(dbm_crc32c(0, buf, N), whole);
    for (size_t cut = 0; cut <= N; cut++) {
        if (dbm_crc32c(dbm_crc32c(0, buf, cut), buf + cut, N - cut) != whole)
            bad_hw++;
        if (dbm_crc32c_table(dbm_crc32c_table(0, buf, cut), buf + cut, N - cut) != whole)
            bad_tab++;
    }
    CHECK_EQ_INT(bad_hw, 0);
    CHECK_EQ_INT(bad_tab, 0);
}

/* Random lengths (0 .. 64 KiB, biased to the interesting small and
 * page-sized ones), random alignments, random seeds: all paths agree. */
static void test_random(void)
{
    enum { MAX = 65536 + 64 };
    static unsigned char buf[MAX];
    int bad = 0, bad_ref = 0;
    static const size_t sizes[] = { 0, 1, 7, 8, 9, 15, 16, 503, 504, 505, 511, 512, 1024,
                                    4079, 4080, 4081, 4096, 4097, 8192, 12239, 65536 };

    for (size_t i = 0; i < MAX; i++)
        buf[i] = (unsigned char)rng();
    for (int iter = 0; iter < 3000; iter++) {
        size_t off = rng() % 64, len;
        uint32_t seed = (iter & 1) ? (uint32_t)rng() : 0;
        if (iter < (int)(sizeof(sizes) / sizeof(sizes[0])))
            len = sizes[iter];
        else if (iter % 3 == 0)
            len = rng() % 65537;
        else
            len = rng() % 9000;
        uint32_t hw = dbm_crc32c(seed, buf + off, len);
        if (hw != dbm_crc32c_table(seed, buf + off, len))
            bad++;
        if (iter % 16 == 0 && hw != crc_ref(seed, buf + off, len))
            bad_ref++;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(bad_ref, 0);
}

int main(void)
{
    fprintf(stderr, "crc32c: hardware path %s\n",
            dbm_crc32c_has_hw() ? "in use (SSE4.2)" : "not available: table path only");
    test_vectors();
    test_chaining();
    test_random();
    return CHECK_DONE();
}
