/* crc32c.c - see crc32c.h.
 *
 * Two implementations of the same function over the reflected polynomial
 * 0x82F63B78, both working on the raw register (the caller's crc is inverted
 * on entry and on exit, so calls chain):
 *
 * - crc_hw: the SSE4.2 crc32 instruction. One instruction has a latency of
 *   three cycles and a throughput of one, so a single dependency chain wastes
 *   two thirds of the unit. Long buffers are cut into three equal blocks
 *   whose crcs run as three independent chains, then joined by "shifting"
 *   the first register over the length of the next block (a linear map on
 *   32 bits, applied with four 256-entry tables). The block sizes are chosen
 *   so a 4 KiB page is one triple plus 16 bytes.
 * - crc_table: slice-by-8 tables, for CPUs without SSE4.2 (and for tests).
 *
 * The tables are built once, on the first call, under pthread_once.
 */
#include "crc32c.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <nmmintrin.h>
#define CRC_HAVE_HW_PATH 1
#else
#define CRC_HAVE_HW_PATH 0
#endif

#define CRC_POLY 0x82F63B78u
/* 3 * 1360 = 4080: one triple covers a 4 KiB page, 16 bytes are left. */
#define CRC_LONG 1360
/* 3 * 168 = 504: the same for 512-byte pages and the tail of big buffers. */
#define CRC_SHORT 168

static uint32_t crc_tab[8][256];     /* slice-by-8 */
static uint32_t crc_long[4][256];    /* shifts a register over CRC_LONG zero bytes */
static uint32_t crc_short[4][256];   /* same over CRC_SHORT zero bytes */
static int crc_use_hw;
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static inline uint64_t load_le64(const unsigned char *p)
{
    uint64_t v;

    memcpy(&v, p, sizeof(v));
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* Builds op[k][b] = the register after feeding n zero bytes to a register
 * whose only non-zero byte is b at byte k. The map is linear, so the shift
 * of any register is the xor of its four bytes' entries. */
static void crc_build_shift(uint32_t op[4][256], size_t n)
{
    uint32_t col[32];

    for (int bit = 0; bit < 32; bit++) {
        uint32_t v = 1u << bit;
        for (size_t i = 0; i < n; i++)
            v = crc_tab[0][v & 0xff] ^ (v >> 8);
        col[bit] = v;
    }
    for (int k = 0; k < 4; k++) {
        for (int b = 0; b < 256; b++) {
            uint32_t v = 0;
            for (int j = 0; j < 8; j++)
                if (b & (1 << j))
                    v ^= col[8 * k + j];
            op[k][b] = v;
        }
    }
}

static void crc32c_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int j = 0; j < 8; j++)
            c = (c & 1) ? (c >> 1) ^ CRC_POLY : c >> 1;
        crc_tab[0][i] = c;
    }
    for (int k = 1; k < 8; k++)
        for (int i = 0; i < 256; i++)
            crc_tab[k][i] = crc_tab[0][crc_tab[k - 1][i] & 0xff] ^ (crc_tab[k - 1][i] >> 8);
    crc_build_shift(crc_long, CRC_LONG);
    crc_build_shift(crc_short, CRC_SHORT);
#if CRC_HAVE_HW_PATH
    __builtin_cpu_init();
    crc_use_hw = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t crc_table(uint32_t crc, const unsigned char *p, size_t len)
{
    while (len && ((uintptr_t)p & 7)) {
        crc = crc_tab[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        len--;
    }
    while (len >= 8) {
        uint64_t w = load_le64(p) ^ crc;
        crc = crc_tab[7][w & 0xff] ^ crc_tab[6][(w >> 8) & 0xff] ^
              crc_tab[5][(w >> 16) & 0xff] ^ crc_tab[4][(w >> 24) & 0xff] ^
              crc_tab[3][(w >> 32) & 0xff] ^ crc_tab[2][(w >> 40) & 0xff] ^
              crc_tab[1][(w >> 48) & 0xff] ^ crc_tab[0][w >> 56];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = crc_tab[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if CRC_HAVE_HW_PATH
static inline uint32_t crc_shift(const uint32_t op[4][256], uint32_t crc)
{
    return op[0][crc & 0xff] ^ op[1][(crc >> 8) & 0xff] ^ op[2][(crc >> 16) & 0xff] ^
           op[3][crc >> 24];
}

/* Runs as many triples of blk-byte blocks as fit; returns the register. */
__attribute__((target("sse4.2"))) static inline uint32_t
crc_hw_triples(uint32_t crc, const unsigned char **pp, size_t *lenp, size_t blk,
               const uint32_t op[4][256])
{
    const unsigned char *p = *pp;
    size_t len = *lenp;

    while (len >= 3 * blk) {
        uint64_t c0 = crc, c1 = 0, c2 = 0;
        const unsigned char *end = p + blk;
        do {
            c0 = _mm_crc32_u64(c0, load_le64(p));
            c1 = _mm_crc32_u64(c1, load_le64(p + blk));
            c2 = _mm_crc32_u64(c2, load_le64(p + 2 * blk));
            p += 8;
        } while (p < end);
        crc = crc_shift(op, (uint32_t)c0) ^ (uint32_t)c1;
        crc = crc_shift(op, crc) ^ (uint32_t)c2;
        p += 2 * blk;
        len -= 3 * blk;
    }
    *pp = p;
    *lenp = len;
    return crc;
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const unsigned char *p,
                                                        size_t len)
{
    uint64_t c;

    while (len && ((uintptr_t)p & 7)) {
        crc = _mm_crc32_u8(crc, *p++);
        len--;
    }
    crc = crc_hw_triples(crc, &p, &len, CRC_LONG, crc_long);
    crc = crc_hw_triples(crc, &p, &len, CRC_SHORT, crc_short);
    c = crc;
    while (len >= 8) {
        c = _mm_crc32_u64(c, load_le64(p));
        p += 8;
        len -= 8;
    }
    crc = (uint32_t)c;
    while (len--)
        crc = _mm_crc32_u8(crc, *p++);
    return crc;
}
#endif

uint32_t dbm_crc32c(uint32_t crc, const void *buf, size_t len)
{
    pthread_once(&crc_once, crc32c_init);
#if CRC_HAVE_HW_PATH
    if (crc_use_hw)
        return ~crc_hw(~crc, buf, len);
#endif
    return ~crc_table(~crc, buf, len);
}

uint32_t dbm_crc32c_table(uint32_t crc, const void *buf, size_t len)
{
    pthread_once(&crc_once, crc32c_init);
    return ~crc_table(~crc, buf, len);
}

int dbm_crc32c_has_hw(void)
{
    pthread_once(&crc_once, crc32c_init);
    return crc_use_hw;
}
