/* The layer source of a plain layer read from the registry span by span,
 * each span verified against the span table of a pushed imgfs index, and
 * decoded as a tar stream (private to fs/). */
#pragma once

#include <stdatomic.h>

#include "layer.h"
#include "span_table.h"

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
