/* Decompressing the gzip members and zstd frames that chunked layers keep
 * their chunks and their TOC in (private to fs/). */
#pragma once

#include "layer.h"

#define GZIP_MIN_MEMBER 18 /* header and trailer */

/* The size of a gzip member's output (mod 2^32), from its trailer; len is
 * at least GZIP_MIN_MEMBER. */
uint32_t gzip_isize(const unsigned char *member, size_t len);
/* The common case, a chunk that is one gzip member, in one call of
 * libdeflate.  False when the member is not just the chunk or libdeflate
 * refuses it: zlib takes it then. */
bool gzip_inflate_whole(const unsigned char *comp, size_t comp_len, uint64_t inner_off, unsigned char *out,
			size_t size);
/* Decompresses comp (members or frames, as compression says) and takes
 * size bytes from inner_off on; -EIO when they are not there. */
int chunk_decompress(enum layer_compression compression, const unsigned char *comp, size_t comp_len, uint64_t inner_off,
		     unsigned char *out, size_t size);
