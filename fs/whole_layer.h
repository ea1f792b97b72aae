/* Plain layers that have no index anywhere: fetched whole into the cache,
 * every such layer of an image at once, each on a connection of its own and
 * indexed while its bytes arrive rather than after (private to fs/). */
#pragma once

#include "layer.h"
#include "registry.h"

#include <stdatomic.h>

/* Opens the cached blob, fetching and verifying it first if it is missing.
 * A cached one is hashed again unless its stamp shows it unchanged since it
 * was (cache_stamp_valid()): a changed blob is fetched again, never used. */
int blob_cache_fetch(struct registry_client *client, const char *cache_dir, const struct descriptor *d, int *ret_fd,
		     bool *ret_cached, struct err *err);

struct whole_layer;
/* Starts opening the layer of d on a thread of its own: from the cache and
 * its saved index where they are, else fetched through a duplicate of client
 * and scanned as it streams.  progress (may be NULL) is told of a cached
 * blob that must be indexed.  *cancel is shared by the layers of one image:
 * a layer that fails sets it, and once it is set the others give their
 * transfers up (-ECANCELED) rather than fetch what cannot be used. */
int whole_layer_start(const struct registry_client *client, const char *cache_dir, const struct descriptor *d,
		      enum layer_compression compression, void (*progress)(const char *line), atomic_bool *cancel,
		      struct whole_layer **ret);
/* Waits for it and frees it: *ret is the layer, reading its verified blob
 * from the cache; *ret_fetched says whether that blob came over the network.
 * Errors name the layer. */
int whole_layer_finish(struct whole_layer *w, struct layer **ret, bool *ret_fetched, struct err *err);
