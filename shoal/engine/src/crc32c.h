/* crc32c (Castagnoli): the fastest kernel the CPU supports, chosen at run time. */
#ifndef SHOAL_CRC32C_H
#define SHOAL_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Kernels, as bits of shoal_crc32c_kernels(). */
#define SHOAL_CRC32C_TABLE 1   /* portable slicing-by-8 */
#define SHOAL_CRC32C_STREAMS 2 /* three SSE4.2 crc32 streams */
#define SHOAL_CRC32C_FOLD 4    /* AVX-512 VPCLMULQDQ folding */

/* Continue a crc32c over buf (crc = 0 to start). Safe to call without the GIL. */
uint32_t shoal_crc32c(uint32_t crc, const void *buf, size_t len);

/* Bit set of the kernels this CPU can run. */
int shoal_crc32c_kernels(void);

/* Continue *crc over buf with one given kernel (for tests); -1 if the CPU lacks it. */
int shoal_crc32c_with(int kernel, uint32_t *crc, const void *buf, size_t len);

/* Copy len bytes from src to dst and return their crc32c, continued from crc: each piece
 * is folded in right after its copy, while it is still in the cache. */
uint32_t shoal_copy_crc32c(uint32_t crc, void *dst, const void *src, size_t len);

/* Guarded copies out of memory that may fault (a mapped file truncated under the mapping).
 * shoal_copy_guard(): install the process's SIGBUS handler, or check that it still is, before
 * each batch; 0, or -1 with errno set. shoal_copy_crc32c_guarded(): shoal_copy_crc32c() into
 * *crc and 0, or -1 when reading src raised SIGBUS (*crc unchanged, dst partly written). */
int shoal_copy_guard(void);
int shoal_copy_crc32c_guarded(uint32_t *crc, void *dst, const void *src, size_t len);

#endif
