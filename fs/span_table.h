/* The span table of a pushed imgfs index: the sha256 of each fixed-size
 * span of a layer's compressed blob, against which every span fetched from
 * the registry is verified (remote_blob.c) (private to fs/). */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* With checkpoints 256 KiB of output apart (some 80 KiB of gzip), a span
 * of 256 KiB fetched up to that much before where decoding starts. */
#define SPAN_SIZE_DEFAULT (64u << 10)

struct span_table {
	uint64_t blob_size;
	uint32_t span_size;
	size_t n_spans;
	const unsigned char *digests; /* 32 bytes per span, into the parsed buffer */
};

/* Hashes every span of a local blob into a span table (caller frees). */
int span_table_build(int blob_fd, uint64_t blob_size, const char *layer_digest, uint32_t span_size, unsigned char **ret,
		     size_t *ret_len);
/* -EINVAL unless data is a span table for this layer digest and size. */
int span_table_parse(const void *data, size_t len, const char *layer_digest, uint64_t blob_size,
		     struct span_table *ret);
