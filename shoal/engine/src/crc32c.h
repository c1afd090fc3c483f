/* crc32c (Castagnoli), hardware-accelerated with SSE4.2 where the CPU has it. */
#ifndef SHOAL_CRC32C_H
#define SHOAL_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Continue a crc32c over buf (crc = 0 to start). Safe to call without the GIL. */
uint32_t shoal_crc32c(uint32_t crc, const void *buf, size_t len);

/* The same with the portable table kernel, whatever the CPU (for tests). */
uint32_t shoal_crc32c_portable(uint32_t crc, const void *buf, size_t len);

/* 1 when the SSE4.2 kernel is in use, 0 for the portable table kernel. */
int shoal_crc32c_hw(void);

#endif
