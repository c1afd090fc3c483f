/* crc32c: SSE4.2 crc32 instructions where present, a table kernel elsewhere. */
#include "crc32c.h"

#include <string.h>

#define POLY 0x82f63b78u /* Castagnoli, reflected */

static uint32_t table[256];
static int table_ready;

static void build_table(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
        table[n] = c;
    }
    table_ready = 1;
}

static uint32_t crc_sw(uint32_t crc, const unsigned char *p, size_t len) {
    if (!table_ready) build_table();
    while (len--) crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
#include <nmmintrin.h>

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const unsigned char *p,
                                                          size_t len) {
    uint64_t c = crc;
    while (len && ((uintptr_t)p & 7)) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        len--;
    }
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        len -= 8;
    }
    while (len--) c = _mm_crc32_u8((uint32_t)c, *p++);
    return (uint32_t)c;
}

static int have_hw(void) {
    static int probed = -1;
    if (probed < 0) probed = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    return probed;
}
#else
static int have_hw(void) { return 0; }
static uint32_t crc_hw(uint32_t crc, const unsigned char *p, size_t len) {
    return crc_sw(crc, p, len);
}
#endif

uint32_t shoal_crc32c(uint32_t crc, const void *buf, size_t len) {
    const unsigned char *p = buf;
    crc = ~crc;
    crc = have_hw() ? crc_hw(crc, p, len) : crc_sw(crc, p, len);
    return ~crc;
}

int shoal_crc32c_hw(void) { return have_hw(); }
