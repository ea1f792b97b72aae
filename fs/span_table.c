/* The span table of a pushed index: see span_table.h. */
#include "span_table.h"

#include "registry.h"
#include "util.h"

#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* "IMGFSSP1", u32 length + layer digest, u64 blob size, u32 span size,
 * u64 span count, 32 bytes of sha256 per span; little-endian. */

#define SPAN_MAGIC "IMGFSSP1"

int span_table_build(int blob_fd, uint64_t blob_size, const char *layer_digest, uint32_t span_size, unsigned char **ret,
		     size_t *ret_len)
{
	size_t n = (size_t)((blob_size + span_size - 1) / span_size);
	size_t digest_len = strlen(layer_digest);
	size_t len = 8 + 4 + digest_len + 8 + 4 + 8 + 32 * n;
	unsigned char *out = malloc(len);
	_cleanup_free_ unsigned char *buf = malloc(span_size);
	if (!out || !buf) {
		free(out);
		return -ENOMEM;
	}
	unsigned char *p = out;
	memcpy(p, SPAN_MAGIC, 8), p += 8;
	uint32_t v32 = htole32((uint32_t)digest_len);
	memcpy(p, &v32, 4), p += 4;
	memcpy(p, layer_digest, digest_len), p += digest_len;
	uint64_t v64 = htole64(blob_size);
	memcpy(p, &v64, 8), p += 8;
	v32 = htole32(span_size);
	memcpy(p, &v32, 4), p += 4;
	v64 = htole64(n);
	memcpy(p, &v64, 8), p += 8;
	for (size_t i = 0; i < n; i++) {
		uint64_t off = (uint64_t)i * span_size;
		size_t l = (size_t)(blob_size - off < span_size ? blob_size - off : span_size);
		if (read_full_at(blob_fd, buf, l, (off_t)off) < 0) {
			free(out);
			return -EIO;
		}
		digest_sha256_raw(buf, l, p);
		p += 32;
	}
	*ret = out;
	*ret_len = len;
	return 0;
}

int span_table_parse(const void *data, size_t len, const char *layer_digest, uint64_t blob_size, struct span_table *ret)
{
	const unsigned char *p = data, *end = p + len;
	size_t digest_len = strlen(layer_digest);
	if (len < 8 + 4 || memcmp(p, SPAN_MAGIC, 8) != 0)
		return -EINVAL;
	p += 8;
	uint32_t v32;
	uint64_t v64;
	memcpy(&v32, p, 4), p += 4;
	if (le32toh(v32) != digest_len || (size_t)(end - p) < digest_len + 8 + 4 + 8 ||
	    memcmp(p, layer_digest, digest_len) != 0)
		return -EINVAL;
	p += digest_len;
	memcpy(&v64, p, 8), p += 8;
	if (le64toh(v64) != blob_size)
		return -EINVAL;
	memcpy(&v32, p, 4), p += 4;
	uint32_t span_size = le32toh(v32);
	memcpy(&v64, p, 8), p += 8;
	uint64_t n = le64toh(v64);
	if (span_size < 4096 || span_size > (64u << 20) || n != (blob_size + span_size - 1) / span_size ||
	    (uint64_t)(end - p) != 32 * n)
		return -EINVAL;
	*ret =
	    (struct span_table){ .blob_size = blob_size, .span_size = span_size, .n_spans = (size_t)n, .digests = p };
	return 0;
}
