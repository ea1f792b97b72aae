/* The saved index of a layer, so that a later mount neither decodes nor
 * parses it again (private to fs/). */
#pragma once

#include "layer.h"

/* Loads a saved index; -ENOENT if there is none or it is stale or damaged.
 * With blob_fd >= 0 the layer reads its files from that blob (and owns it,
 * on success only); with -1 the caller attaches a source. */
int layer_open_saved(const char *digest, enum layer_compression compression, int blob_fd, const char *index_path,
		     struct layer **ret);
int layer_save(const struct layer *l, const char *index_path);
/* The index as a push with a windows blob sends it: l's entries, with
 * checkpoints cps whose windows lie in that blob (windows_blob_build());
 * layer_open_saved() reads it, and the layer's source fetches each window
 * (read_window).  The caller frees *ret. */
int layer_index_windows_apart(const struct layer *l, const struct checkpoint *cps, size_t n_cps, void **ret,
			      size_t *ret_len);
/* A saved index as one zstd frame, as it is pushed; layer_open_saved()
 * reads either form.  -ERANGE when it would expand more than a reader
 * accepts (push it as it is). */
int layer_index_compress(const void *data, size_t len, void **ret, size_t *ret_len);
/* The same for a chunked layer (eStargz, zstd:chunked), in place of its
 * table of contents: stale unless layer digest, TOC digest, compression
 * and blob size all match.  The caller attaches the source, which gives
 * the chunks their order and slots, as after a parse. */
int chunked_layer_open_saved(const char *digest, const char *toc_digest, enum layer_compression compression,
			     uint64_t blob_size, const char *path, struct layer **ret);
int chunked_layer_save(const struct layer *l, const char *toc_digest, const char *path);
