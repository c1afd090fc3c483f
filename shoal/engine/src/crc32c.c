/* crc32c (Castagnoli).
 *
 * On x86-64 with SSE4.2 the crc32 instruction does the work. One crc32 has a latency of three
 * cycles but the CPU can start one per cycle, so a single serial stream leaves two thirds of
 * the unit idle. Long buffers are therefore cut into blocks of three lanes that are checksummed
 * as three independent streams, and the lane results are joined with a "shift" operator: the
 * effect of appending n zero bytes to a crc register, which is linear over GF(2) and so can be
 * applied with four 256-entry tables (one per byte of the register). Elsewhere a slicing-by-8
 * table kernel is used.
 */
#include "crc32c.h"

#include <pthread.h>
#include <string.h>

#define POLY 0x82f63b78u /* Castagnoli, reflected */

/* Lane lengths of the three-stream kernel: long lanes for big buffers, short for the tail. */
#define LONG_LANE 8192
#define SHORT_LANE 256

static uint32_t table[8][256];       /* slicing-by-8 tables of the portable kernel */
static uint32_t shift_long[4][256];  /* append LONG_LANE zero bytes */
static uint32_t shift_short[4][256]; /* append SHORT_LANE zero bytes */
static int hw_present;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* Raw register update (no pre/post inversion), one byte at a time. */
static uint32_t crc_bytes(uint32_t crc, const unsigned char *p, size_t len) {
    while (len--) crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

static uint32_t crc_sw(uint32_t crc, const unsigned char *p, size_t len) {
    while (len && ((uintptr_t)p & 7)) {
        crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        len--;
    }
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        v ^= crc; /* little-endian: the register meets the first four bytes */
        crc = table[7][v & 0xff] ^ table[6][(v >> 8) & 0xff] ^ table[5][(v >> 16) & 0xff] ^
              table[4][(v >> 24) & 0xff] ^ table[3][(v >> 32) & 0xff] ^
              table[2][(v >> 40) & 0xff] ^ table[1][(v >> 48) & 0xff] ^ table[0][v >> 56];
        p += 8;
        len -= 8;
    }
    return crc_bytes(crc, p, len);
}

/* Fill op so that the shift by n zero bytes of a register r is the xor of op[k][byte k of r]. */
static void build_shift(uint32_t op[4][256], size_t n) {
    uint32_t basis[32];
    for (int bit = 0; bit < 32; bit++) {
        uint32_t r = 1u << bit;
        for (size_t i = 0; i < n; i++) r = table[0][r & 0xff] ^ (r >> 8);
        basis[bit] = r;
    }
    for (int k = 0; k < 4; k++) {
        for (uint32_t v = 0; v < 256; v++) {
            uint32_t out = 0;
            for (int b = 0; b < 8; b++)
                if (v >> b & 1) out ^= basis[8 * k + b];
            op[k][v] = out;
        }
    }
}

static inline uint32_t shift(const uint32_t op[4][256], uint32_t r) {
    return op[0][r & 0xff] ^ op[1][(r >> 8) & 0xff] ^ op[2][(r >> 16) & 0xff] ^ op[3][r >> 24];
}

static void init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
        table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int s = 1; s < 8; s++) table[s][n] = table[0][table[s - 1][n] & 0xff] ^ (table[s - 1][n] >> 8);
    build_shift(shift_long, LONG_LANE);
    build_shift(shift_short, SHORT_LANE);
#if defined(__x86_64__)
    hw_present = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#endif
}

#if defined(__x86_64__)
#include <nmmintrin.h>

static inline uint64_t load64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Three interleaved streams over lanes of `lane` bytes each, while 3 * lane bytes remain. */
__attribute__((target("sse4.2"))) static inline uint64_t crc_3way(uint64_t c0,
                                                                   const unsigned char **pp,
                                                                   size_t *plen, size_t lane,
                                                                   const uint32_t op[4][256]) {
    const unsigned char *p = *pp;
    size_t len = *plen;
    while (len >= 3 * lane) {
        uint64_t c1 = 0, c2 = 0;
        const unsigned char *end = p + lane;
        do {
            c0 = _mm_crc32_u64(c0, load64(p));
            c1 = _mm_crc32_u64(c1, load64(p + lane));
            c2 = _mm_crc32_u64(c2, load64(p + 2 * lane));
            p += 8;
        } while (p < end);
        c0 = shift(op, shift(op, (uint32_t)c0) ^ (uint32_t)c1) ^ (uint32_t)c2;
        p += 2 * lane;
        len -= 3 * lane;
    }
    *pp = p;
    *plen = len;
    return c0;
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const unsigned char *p,
                                                          size_t len) {
    uint64_t c = crc;
    while (len && ((uintptr_t)p & 7)) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        len--;
    }
    c = crc_3way(c, &p, &len, LONG_LANE, shift_long);
    c = crc_3way(c, &p, &len, SHORT_LANE, shift_short);
    while (len >= 8) {
        c = _mm_crc32_u64(c, load64(p));
        p += 8;
        len -= 8;
    }
    while (len--) c = _mm_crc32_u8((uint32_t)c, *p++);
    return (uint32_t)c;
}
#else
static uint32_t crc_hw(uint32_t crc, const unsigned char *p, size_t len) {
    return crc_sw(crc, p, len);
}
#endif

uint32_t shoal_crc32c(uint32_t crc, const void *buf, size_t len) {
    pthread_once(&init_once, init);
    crc = ~crc;
    crc = hw_present ? crc_hw(crc, buf, len) : crc_sw(crc, buf, len);
    return ~crc;
}

uint32_t shoal_crc32c_portable(uint32_t crc, const void *buf, size_t len) {
    pthread_once(&init_once, init);
    return ~crc_sw(~crc, buf, len);
}

int shoal_crc32c_hw(void) {
    pthread_once(&init_once, init);
    return hw_present;
}
