/* crc32c.h - CRC-32C (Castagnoli), hardware-accelerated where the CPU has it. */
#ifndef DBM_CRC32C_H
#define DBM_CRC32C_H
#include <stddef.h>
#include <stdint.h>
/* Continues crc over buf; start with crc = 0. */
uint32_t dbm_crc32c(uint32_t crc, const void *buf, size_t len);
#endif
