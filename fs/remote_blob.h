/* The layer source of a plain layer read from the registry span by span,
 * each span verified against the span table of a pushed imgfs index, and
 * decoded as a tar stream (private to fs/). */
#pragma once

#include <stdatomic.h>

#include "layer.h"

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

struct registry_client;

/* The blob of an index's windows kept apart (windows_blob.h), and a
 * client of the repository that holds it (the index's, which may not be
 * the image's). */
struct windows_blob_ref {
	const char *digest;
	uint64_t size;
	struct registry_client *client;
};

/* Makes l (opened from a saved index without a local blob) read its blob
 * span by span from the registry, and the windows its checkpoints keep
 * apart from windows (NULL: none; -EBADMSG when a checkpoint's window lies
 * outside it).  Takes ownership of the clients, one for reads, one for
 * prefetch and the windows', on success only. */
int remote_blob_attach(struct layer *l, struct registry_client *client, struct registry_client *prefetch_client,
		       const char *cache_dir, const struct span_table *spans, const struct windows_blob_ref *windows);
