/* A layer blob read from the registry span by span, each span verified
 * against the span table of a pushed imgfs index (private to fs/). */
#pragma once

#include <stdatomic.h>

#include "layer.h"

#define SPAN_SIZE_DEFAULT (256u << 10)

struct span_table {
	uint64_t blob_size;
	uint32_t span_size;
	size_t n_spans;
	const unsigned char *digests; /* 32 bytes per span, into the parsed buffer */
};

/* Hashes every span of a local blob into a span table (caller frees). */
int span_table_build(int blob_fd, uint64_t blob_size, const char *layer_digest, uint32_t span_size,
		     unsigned char **ret, size_t *ret_len);
/* -EINVAL unless data is a span table for this layer digest and size. */
int span_table_parse(const void *data, size_t len, const char *layer_digest, uint64_t blob_size,
		     struct span_table *ret);

struct registry_client;
struct remote_blob;

/* Takes ownership of both clients: one for reads, one for prefetch. */
int remote_blob_open(struct registry_client *client, struct registry_client *prefetch_client, const char *digest,
		     uint64_t blob_size, const char *cache_dir, const struct span_table *spans, struct remote_blob **ret);
struct remote_blob *remote_blob_free(struct remote_blob *rb);
/* Exactly len bytes at off of the blob, verified; -EIO otherwise. */
int remote_blob_read(struct remote_blob *rb, void *buf, size_t len, uint64_t off);
/* Fetches every span not cached yet; -ECANCELED once *stop is set. */
int remote_blob_prefetch(struct remote_blob *rb, const atomic_bool *stop);
/* The same for the spans that hold blob bytes [off, end). */
int remote_blob_prefetch_range(struct remote_blob *rb, uint64_t off, uint64_t end, const atomic_bool *stop);
/* Adds this blob's counters to s. */
void remote_blob_stats(struct remote_blob *rb, struct layer_stats *s);
