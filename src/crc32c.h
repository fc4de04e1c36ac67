/* crc32c.h - CRC-32C (Castagnoli), hardware-accelerated where the CPU has it. */
#ifndef DBM_CRC32C_H
#define DBM_CRC32C_H
#include <stddef.h>
#include <stdint.h>
/* Continues crc over buf; start with crc = 0. */
uint32_t dbm_crc32c(uint32_t crc, const void *buf, size_t len);

/* Test-only: the portable slice-by-8 path (same result as dbm_crc32c), and
 * whether dbm_crc32c uses the SSE4.2 instruction on this CPU. */
uint32_t dbm_crc32c_table(uint32_t crc, const void *buf, size_t len);
int dbm_crc32c_has_hw(void);
#endif
