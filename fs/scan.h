/* Indexing a layer whose whole blob is local: one pass of the decoder and
 * libarchive over its tar stream (private to fs/). */
#pragma once

#include "layer.h"

/* Builds the index by decoding the whole blob once; the layer reads its
 * files from that blob (local_blob.c).  Takes ownership of blob_fd.  Errors
 * name the layer digest. */
int layer_open_scan(const char *digest, enum layer_compression compression, int blob_fd, struct layer **ret,
		    struct err *err);
/* The same, reading the blob through reading's read_blob (with l->source
 * = source) while it scans: for a blob still arriving, of blob_size bytes
 * when complete.  The layer is a local blob once built. */
int layer_open_scan_through(const char *digest, enum layer_compression compression, int blob_fd, uint64_t blob_size,
			    const struct layer_source_ops *reading, void *source, struct layer **ret, struct err *err);
