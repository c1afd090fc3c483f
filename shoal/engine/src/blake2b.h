/* BLAKE2b (RFC 7693), unkeyed, for short digests of short messages. */
#ifndef SHOAL_BLAKE2B_H
#define SHOAL_BLAKE2B_H

#include <stddef.h>
#include <stdint.h>

/* Write the outlen-byte (1 to 64) BLAKE2b digest of in[0:inlen] to out. Safe without the
 * GIL. */
void shoal_blake2b(uint8_t *out, size_t outlen, const void *in, size_t inlen);

#endif
