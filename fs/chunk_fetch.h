/* The layer source of chunked layers (eStargz, zstd:chunked): the chunks a
 * TOC lists, fetched from the registry with Range requests, verified, kept
 * in the layer's pack (private to fs/; toc_fetch.c is its one user). */
#pragma once

#include "layer.h"

struct registry_client;
struct remote;

/* The connections and the pack of layer digest.  Takes ownership of both
 * clients, one for reads and one for the background fetch, even on
 * failure.  Errors name the pack file. */
int remote_new(struct registry_client *client, struct registry_client *prefetch_client, const char *digest,
	       enum layer_compression compression, const char *cache_dir, struct remote **ret, struct err *err);
void remote_free(struct remote *r);
/* Bytes [off, off+len) of the blob, as they come: for the footer and the
 * TOC, which the caller verifies. */
int remote_fetch(struct remote *r, uint64_t off, size_t len, void *buf, struct err *err);
/* As remote_fetch, calling arrived as registry_fetch_range_streaming() does. */
int remote_fetch_streaming(struct remote *r, uint64_t off, size_t len, void *buf,
			   void (*arrived)(void *ctx, size_t got), void *ctx, struct err *err);
/* Makes l read its chunks through rem, which l owns from then on (on
 * failure the caller keeps both).  With toc_to_save, the layer's
 * start_background saves the parsed TOC to toc_index_path under that TOC
 * digest. */
int chunked_attach(struct layer *l, struct remote *rem, const char *toc_to_save, const char *toc_index_path);
