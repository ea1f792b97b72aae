/* Decompressing what a chunk's bytes are stored in: gzip members (eStargz)
 * or zstd frames (zstd:chunked). */
#include "chunk_codec.h"

#include <libdeflate.h>
#include <zlib.h>
#include <zstd.h>

/* The size of a gzip member's output (mod 2^32), from its trailer. */
uint32_t gzip_isize(const unsigned char *member, size_t len)
{
	const unsigned char *t = member + len - 4;
	return (uint32_t)t[0] | (uint32_t)t[1] << 8 | (uint32_t)t[2] << 16 | (uint32_t)t[3] << 24;
}

/* The common case, a chunk that is one gzip member, in one call of
 * libdeflate: 2.3 times zlib's speed here, and inflating was most of the
 * daemon's CPU in a lazy start.  False when the member is not just the
 * chunk (its trailer gives its size) or libdeflate refuses it. */
bool gzip_inflate_whole(const unsigned char *comp, size_t comp_len, uint64_t inner_off, unsigned char *out, size_t size)
{
	if (inner_off != 0 || comp_len < GZIP_MIN_MEMBER || size == 0 || gzip_isize(comp, comp_len) != (uint32_t)size)
		return false;
	struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
	if (!d)
		return false;
	size_t in_used = 0, made = 0;
	enum libdeflate_result r = libdeflate_gzip_decompress_ex(d, comp, comp_len, out, size, &in_used, &made);
	libdeflate_free_decompressor(d);
	/* All of comp: a second member behind the first is not this case. */
	return r == LIBDEFLATE_SUCCESS && made == size && in_used == comp_len;
}

/* Decompresses the frame(s) in comp and takes size bytes from inner_off on. */
static int unzstd_chunk(const unsigned char *comp, size_t comp_len, uint64_t inner_off, unsigned char *out, size_t size)
{
	ZSTD_DCtx *d = ZSTD_createDCtx();
	if (!d)
		return -ENOMEM;
	ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, 27);
	unsigned char discard[16384];
	uint64_t skip = inner_off;
	size_t got = 0;
	ZSTD_inBuffer in = { comp, comp_len, 0 };
	int r = 0;
	while (got < size) {
		ZSTD_outBuffer o =
		    skip > 0 ? (ZSTD_outBuffer){ discard, skip < sizeof(discard) ? (size_t)skip : sizeof(discard), 0 }
			     : (ZSTD_outBuffer){ out + got, size - got, 0 };
		size_t zr = ZSTD_decompressStream(d, &o, &in);
		if (ZSTD_isError(zr) || (o.pos == 0 && in.pos == in.size)) {
			r = -EIO;
			break;
		}
		if (skip > 0)
			skip -= o.pos;
		else
			got += o.pos;
	}
	ZSTD_freeDCtx(d);
	return r;
}

/* Inflates the member(s) in comp and takes size bytes from inner_off on. */
static int inflate_chunk(const unsigned char *comp, size_t comp_len, uint64_t inner_off, unsigned char *out,
			 size_t size)
{
	if (gzip_inflate_whole(comp, comp_len, inner_off, out, size))
		return 0;
	z_stream z = { 0 };
	if (inflateInit2(&z, 15 + 32) != Z_OK)
		return -ENOMEM;
	unsigned char discard[16384];
	uint64_t skip = inner_off;
	size_t got = 0;
	z.next_in = (unsigned char *)comp;
	z.avail_in = (uInt)comp_len;
	int r = 0;
	while (got < size) {
		if (skip > 0) {
			z.next_out = discard;
			z.avail_out = (uInt)(skip < sizeof(discard) ? skip : sizeof(discard));
		} else {
			z.next_out = out + got;
			z.avail_out = (uInt)(size - got);
		}
		uInt before = z.avail_out;
		int zr = inflate(&z, Z_NO_FLUSH);
		size_t made = before - z.avail_out;
		if (skip > 0)
			skip -= made;
		else
			got += made;
		if (zr == Z_STREAM_END) {
			if (got == size)
				break;
			/* Small files may share members: go on with the next one. */
			if (z.avail_in == 0 || inflateReset(&z) != Z_OK) {
				r = -EIO;
				break;
			}
			continue;
		}
		if (zr != Z_OK || (made == 0 && z.avail_in == 0)) {
			r = -EIO;
			break;
		}
	}
	inflateEnd(&z);
	return r;
}

int chunk_decompress(enum layer_compression compression, const unsigned char *comp, size_t comp_len, uint64_t inner_off,
		     unsigned char *out, size_t size)
{
	if (compression == COMPRESSION_ZSTD)
		return unzstd_chunk(comp, comp_len, inner_off, out, size);
	return inflate_chunk(comp, comp_len, inner_off, out, size);
}
