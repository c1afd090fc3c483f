/* crc32c (Castagnoli).
 *
 * Three kernels, best first, chosen once at run time:
 *
 * - carry-less multiplication folding (AVX-512 VPCLMULQDQ): the buffer is read as 128-bit
 *   polynomial chunks; a running remainder is "folded" forward over the next chunks with
 *   multiplications by x^n mod P, sixteen chunks per step in four independent registers, and
 *   the last 16 bytes are reduced with the crc32 instruction;
 * - three interleaved SSE4.2 crc32 streams: one crc32 has a latency of three cycles but can
 *   start every cycle, so long buffers are cut into blocks of three lanes checksummed
 *   independently and joined with a "shift" operator (the effect of appending n zero bytes,
 *   linear over GF(2), applied with four 256-entry tables);
 * - a portable slicing-by-8 table kernel.
 *
 * Every constant is derived at start-up from the polynomial.
 *
 * Copies out of mapped files survive the file shrinking under them: see "Guarded copies".
 */
#include "crc32c.h"

#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <string.h>

#define POLY 0x82f63b78u /* Castagnoli, reflected */

/* Lane lengths of the three-stream kernel: long lanes for big buffers, short for the tail. */
#define LONG_LANE 8192
#define SHORT_LANE 256

#define POLY_NORMAL 0x1edc6f41u /* the same polynomial, x^31 in bit 31 (x^32 implicit) */

static uint32_t table[8][256];       /* slicing-by-8 tables of the portable kernel */
static uint32_t shift_long[4][256];  /* append LONG_LANE zero bytes */
static uint32_t shift_short[4][256]; /* append SHORT_LANE zero bytes */
static int hw_present;   /* SSE4.2 crc32 */
static int fold_present; /* AVX-512 with VPCLMULQDQ */
/* Folding constants as (low, high) qword pairs: fold a 128-bit chunk forward by 16, 64 and
 * 256 bytes; and the four lanes of a 512-bit register into one 128-bit chunk. */
static uint64_t fold16[2], fold64[2], fold256[2], fold_lanes[8];
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

/* x^e mod P, with x^d in bit d. */
static uint32_t xpow_mod(unsigned e) {
    uint64_t v = 1;
    while (e--) {
        v <<= 1;
        if (v >> 32) v = (v ^ POLY_NORMAL) & 0xffffffffu;
    }
    return (uint32_t)v;
}

static uint32_t reflect32(uint32_t v) {
    uint32_t r = 0;
    for (int i = 0; i < 32; i++) r |= (v >> i & 1) << (31 - i);
    return r;
}

/* A 128-bit chunk holds the polynomial H x^64 + L in reflected order: H in the low qword.
 * Moving it forward by d bytes multiplies it by x^(8d); carry-less products of reflected
 * operands come out one degree low, so the constants are x^(8d+63) for H and x^(8d-1) for L,
 * reflected into the top half of a qword. */
static void fold_constants(uint64_t out[2], unsigned bytes) {
    out[0] = (uint64_t)reflect32(xpow_mod(8 * bytes + 63)) << 32;
    out[1] = (uint64_t)reflect32(xpow_mod(8 * bytes - 1)) << 32;
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
    fold_constants(fold16, 16);
    fold_constants(fold64, 64);
    fold_constants(fold256, 256);
    for (int lane = 0; lane < 3; lane++) fold_constants(&fold_lanes[2 * lane], 16 * (3 - lane));
    fold_lanes[6] = fold_lanes[7] = 0;
#if defined(__x86_64__)
    hw_present = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    fold_present = hw_present && __builtin_cpu_supports("pclmul") &&
                   __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                   __builtin_cpu_supports("vpclmulqdq");
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

#include <immintrin.h>

#define FOLD_TARGET __attribute__((target("sse4.2,pclmul,avx512f,avx512vl,vpclmulqdq")))
#define FOLD_MIN 512 /* shorter buffers go to the crc32 streams */

/* acc * x^(8d) + next, for four 128-bit lanes at once. */
FOLD_TARGET static inline __m512i fold512(__m512i acc, __m512i k, __m512i next) {
    __m512i lo = _mm512_clmulepi64_epi128(acc, k, 0x00);
    __m512i hi = _mm512_clmulepi64_epi128(acc, k, 0x11);
    return _mm512_ternarylogic_epi64(lo, hi, next, 0x96); /* three-way xor */
}

FOLD_TARGET static inline __m128i fold128(__m128i acc, __m128i k, __m128i next) {
    __m128i lo = _mm_clmulepi64_si128(acc, k, 0x00);
    __m128i hi = _mm_clmulepi64_si128(acc, k, 0x11);
    return _mm_xor_si128(_mm_xor_si128(lo, hi), next);
}

/* The raw register (no inversion) after len >= FOLD_MIN bytes, starting from crc. */
FOLD_TARGET static uint32_t crc_fold(uint32_t crc, const unsigned char *p, size_t len) {
    __m512i k256 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)fold256));
    __m512i k64 = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)fold64));
    __m512i a0 = _mm512_loadu_si512(p), a1 = _mm512_loadu_si512(p + 64);
    __m512i a2 = _mm512_loadu_si512(p + 128), a3 = _mm512_loadu_si512(p + 192);
    /* The register stands for the next four message bytes. */
    a0 = _mm512_xor_si512(a0, _mm512_zextsi128_si512(_mm_cvtsi32_si128((int)crc)));
    p += 256;
    len -= 256;
    while (len >= 256) {
        a0 = fold512(a0, k256, _mm512_loadu_si512(p));
        a1 = fold512(a1, k256, _mm512_loadu_si512(p + 64));
        a2 = fold512(a2, k256, _mm512_loadu_si512(p + 128));
        a3 = fold512(a3, k256, _mm512_loadu_si512(p + 192));
        p += 256;
        len -= 256;
    }
    a1 = fold512(a0, k64, a1);
    a2 = fold512(a1, k64, a2);
    a3 = fold512(a2, k64, a3);
    while (len >= 64) {
        a3 = fold512(a3, k64, _mm512_loadu_si512(p));
        p += 64;
        len -= 64;
    }
    /* Lanes 0-2 move forward by 48, 32 and 16 bytes onto lane 3 (its constants are zero). */
    __m512i lanes = _mm512_loadu_si512(fold_lanes);
    __m512i moved = _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(a3, lanes, 0x00),
                                              _mm512_clmulepi64_epi128(a3, lanes, 0x11),
                                              _mm512_maskz_mov_epi64(0xc0, a3), 0x96);
    __m128i acc = _mm_xor_si128(
        _mm_xor_si128(_mm512_extracti32x4_epi32(moved, 0), _mm512_extracti32x4_epi32(moved, 1)),
        _mm_xor_si128(_mm512_extracti32x4_epi32(moved, 2), _mm512_extracti32x4_epi32(moved, 3)));
    __m128i k16 = _mm_loadu_si128((const __m128i *)fold16);
    while (len >= 16) {
        acc = fold128(acc, k16, _mm_loadu_si128((const __m128i *)p));
        p += 16;
        len -= 16;
    }
    /* The 16 folded bytes are an ordinary message prefix: let crc32 reduce them. */
    uint64_t c = _mm_crc32_u64(0, (uint64_t)_mm_cvtsi128_si64(acc));
    c = _mm_crc32_u64(c, (uint64_t)_mm_extract_epi64(acc, 1));
    while (len >= 8) {
        c = _mm_crc32_u64(c, load64(p));
        p += 8;
        len -= 8;
    }
    while (len--) c = _mm_crc32_u8((uint32_t)c, *p++);
    return (uint32_t)c;
}

__attribute__((target("sse4.2"))) static uint32_t crc_streams(uint32_t crc,
                                                               const unsigned char *p,
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

static uint32_t crc_best(uint32_t crc, const unsigned char *p, size_t len) {
    if (fold_present && len >= FOLD_MIN) return crc_fold(crc, p, len);
    if (hw_present) return crc_streams(crc, p, len);
    return crc_sw(crc, p, len);
}
#else
static uint32_t crc_best(uint32_t crc, const unsigned char *p, size_t len) {
    return crc_sw(crc, p, len);
}
#endif

uint32_t shoal_crc32c(uint32_t crc, const void *buf, size_t len) {
    pthread_once(&init_once, init);
    return ~crc_best(~crc, buf, len);
}

/* Bytes copied before they are folded into the crc: small enough to stay in L1/L2. */
#define COPY_PIECE (32u << 10)

uint32_t shoal_copy_crc32c(uint32_t crc, void *dst, const void *src, size_t len) {
    pthread_once(&init_once, init);
    unsigned char *d = dst;
    const unsigned char *s = src;
    uint32_t c = ~crc;
    while (len) {
        size_t n = len < COPY_PIECE ? len : COPY_PIECE;
        memcpy(d, s, n);
        c = crc_best(c, d, n);
        d += n;
        s += n;
        len -= n;
    }
    return ~c;
}

/* ------------------------------------------------------------------------ Guarded copies
 *
 * Reading a mapped file past its end raises SIGBUS: a region file truncated under a reader's
 * mapping (or a failing filesystem) would kill the reading process. One process-wide handler
 * turns a SIGBUS inside a guarded copy into the failure of that copy: the copy sigsetjmp()s
 * and marks its thread as guarded, the handler siglongjmp()s back to it. Any other SIGBUS
 * goes on to the handler that was installed before ours (Python's faulthandler, say), or
 * gets the default action, as if ours were not there.
 *
 * Install order: shoal_copy_guard() runs before each batch of guarded copies. It looks at
 * the installed handler (one sigaction call) and, when it is not ours, remembers it as the
 * one to pass other faults on to and installs ours in front of it. A handler installed
 * before ours so keeps its behaviour; one installed after ours (faulthandler.enable() after
 * the first read, signal.signal()) would otherwise see our faults first (faulthandler would
 * report a fatal error for a fault we recover from, then remove itself) or leave a copy
 * unguarded, and goes behind ours at the next batch. Checking at each batch, rather than
 * installing once, is what makes a later handler safe; it costs one system call a batch.
 */

/* Per thread. Initial-exec TLS is a fixed offset from the thread pointer: the handler reads
 * it on any thread without the lazy allocation (malloc) that a shared library's default
 * TLS model may do on a thread's first access. */
struct guard_state {
    sigjmp_buf *volatile resume; /* where this thread's guarded copy resumes; NULL outside */
    volatile int chaining;       /* inside the handler we passed a fault on to */
    void *volatile passed_addr;  /* address of the last fault passed on */
};
static __thread struct guard_state guard __attribute__((tls_model("initial-exec")));

static struct sigaction chained[2]; /* the handler to pass faults on to, double-buffered */
static int chained_slot;            /* which one is current; written under install_lock */
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;

/* What SIGBUS does with no handler: the process ends. Async-signal-safe. */
static void default_action(int sig, const siginfo_t *info) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    /* A fault recurs when its instruction runs again, on return; a sent signal is resent. */
    if (info == NULL || info->si_code <= 0) raise(sig);
}

static void pass_on(int sig, siginfo_t *info, void *context) {
    const struct sigaction *prev = &chained[__atomic_load_n(&chained_slot, __ATOMIC_ACQUIRE)];
    int fault = info != NULL && info->si_code > 0; /* raised by the kernel, not sent */
    int with_info = (prev->sa_flags & SA_SIGINFO) != 0;
    if (!with_info && prev->sa_handler == SIG_IGN) {
        if (fault) default_action(sig, info); /* the kernel does not let a fault be ignored */
        return;
    }
    /* Back in ours from inside the handler we passed the fault to (it put ours back and
     * raised the signal again, as faulthandler does when enabled after us), or the same fault
     * again after it returned (it declined it: a disabled faulthandler returns at once):
     * without the default action the two would pass the fault back and forth forever. */
    if ((!with_info && prev->sa_handler == SIG_DFL) || guard.chaining ||
        (fault && info->si_addr == guard.passed_addr)) {
        default_action(sig, info);
        return;
    }
    sigset_t mask, old;
    mask = prev->sa_mask;
    if (!(prev->sa_flags & SA_NODEFER)) sigaddset(&mask, sig);
    pthread_sigmask(SIG_BLOCK, &mask, &old);
    guard.chaining = 1;
    if (fault) guard.passed_addr = info->si_addr;
    if (with_info)
        prev->sa_sigaction(sig, info, context);
    else
        prev->sa_handler(sig);
    pthread_sigmask(SIG_SETMASK, &old, NULL); /* what it raised while blocked arrives here */
    guard.chaining = 0;
}

/* Only checks a flag and jumps, or passes the signal on. */
static void on_sigbus(int sig, siginfo_t *info, void *context) {
    sigjmp_buf *resume = guard.resume;
    if (resume != NULL && info != NULL && info->si_code > 0) { /* not one sent by kill() */
        guard.resume = NULL;
        siglongjmp(*resume, 1);
    }
    int saved_errno = errno;
    pass_on(sig, info, context);
    errno = saved_errno;
}

int shoal_copy_guard(void) {
    struct sigaction current;
    int rc = 0;
    pthread_once(&init_once, init); /* never inside a guarded copy */
    pthread_mutex_lock(&install_lock);
    if (sigaction(SIGBUS, NULL, &current) < 0) {
        rc = -1;
    } else if (!(current.sa_flags & SA_SIGINFO) || current.sa_sigaction != on_sigbus) {
        int slot = !__atomic_load_n(&chained_slot, __ATOMIC_RELAXED);
        chained[slot] = current;
        __atomic_store_n(&chained_slot, slot, __ATOMIC_RELEASE);
        struct sigaction ours;
        memset(&ours, 0, sizeof ours);
        ours.sa_sigaction = on_sigbus;
        sigemptyset(&ours.sa_mask);
        /* SA_NODEFER: SIGBUS stays unblocked in the handler, so a siglongjmp that does not
         * restore the signal mask (no system call per copy) leaves it as it was. SA_ONSTACK:
         * a thread's alternate stack, where it has one, as faulthandler's handler expects. */
        ours.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        if (sigaction(SIGBUS, &ours, NULL) < 0) rc = -1;
    }
    pthread_mutex_unlock(&install_lock);
    return rc;
}

int shoal_copy_crc32c_guarded(uint32_t *crc, void *dst, const void *src, size_t len) {
    sigjmp_buf resume;
    if (sigsetjmp(resume, 0)) return -1; /* reading src faulted; the handler cleared the flag */
    guard.resume = &resume;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    *crc = shoal_copy_crc32c(*crc, dst, src, len);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    guard.resume = NULL;
    return 0;
}

int shoal_crc32c_kernels(void) {
    pthread_once(&init_once, init);
    return SHOAL_CRC32C_TABLE | (hw_present ? SHOAL_CRC32C_STREAMS : 0) |
           (fold_present ? SHOAL_CRC32C_FOLD : 0);
}

int shoal_crc32c_with(int kernel, uint32_t *crc, const void *buf, size_t len) {
    if (!(shoal_crc32c_kernels() & kernel)) return -1;
    const unsigned char *p = buf;
    uint32_t c = ~*crc;
    switch (kernel) {
    case SHOAL_CRC32C_TABLE:
        c = crc_sw(c, p, len);
        break;
#if defined(__x86_64__)
    case SHOAL_CRC32C_STREAMS:
        c = crc_streams(c, p, len);
        break;
    case SHOAL_CRC32C_FOLD: /* short buffers are finished by the streams, as in crc_best */
        c = len >= FOLD_MIN ? crc_fold(c, p, len) : crc_streams(c, p, len);
        break;
#endif
    default:
        return -1;
    }
    *crc = ~c;
    return 0;
}
