/* The tar stream of a layer blob: decoders for the three compressions behind
 * one cursor interface, and random access into the uncompressed stream
 * through checkpoints (private to fs/).  Shared by the sources whose files
 * are runs of that stream (local_blob.c, remote_blob.c); the compressed
 * bytes come from the source's read_blob operation. */
#pragma once

#include "layer.h"

/* A decoder reads a blob that is not here (blob_fd < 0) in pieces of this
 * size: up to that much past the end of what it decodes.  Small, so that a
 * read through a remote source fetches little it does not use. */
#define DECODER_INPUT_PIECE (32u << 10)

struct checkpoint_recorder {
	struct checkpoint *checkpoints;
	size_t n, allocated;
	uint64_t span; /* minimum distance between checkpoints */
	/* When set, windows go here instead of into memory: it fills the
	 * slot's window_len and where the window is kept (windows_blob.h). */
	int (*keep_window)(void *ctx, struct checkpoint *slot, const void *window, size_t len);
	void *keep_ctx;
};

static inline bool checkpoint_due(const struct checkpoint_recorder *rec, uint64_t out)
{
	return rec->n == 0 || out - rec->checkpoints[rec->n - 1].out >= rec->span;
}
int checkpoint_add(struct checkpoint_recorder *rec, const struct checkpoint *cp, const void *window, size_t len);

struct cursor *cursor_new(struct layer *l);
void cursor_free(struct cursor *c);
int cursor_seek_checkpoint(struct cursor *c, const struct checkpoint *cp);
/* Returns bytes decoded (0 at the end of the stream) or -errno. */
ssize_t cursor_read(struct cursor *c, void *out, size_t len, struct checkpoint_recorder *rec);
uint64_t cursor_position(const struct cursor *c);

/* Reads exactly len bytes at off of the uncompressed stream. */
int layer_read(struct layer *l, void *buf, size_t len, uint64_t off);
/* The read_entry operation of tar stream sources: through the entry's
 * extents, zero-filling holes. */
ssize_t tar_stream_read_entry(struct layer *l, const struct entry *e, void *buf, size_t len, uint64_t off);
/* Frees the layer's cursors and forgets its decoded spans: part of the
 * free operation of tar stream sources. */
void tar_stream_release(struct layer *l);
/* Waits until the decoded spans queued for the cache are written. */
void decoded_keep_flush(void);
/* The last checkpoint at or before off of the uncompressed stream. */
const struct checkpoint *layer_checkpoint_before(const struct layer *l, uint64_t off);
/* How many of l's checkpoints lie before offset in of the compressed blob
 * (they lie in blob order). */
size_t layer_checkpoints_before_in(const struct layer *l, uint64_t in);
/* The compressed bytes [*ret_in, *ret_end) a decoder reads for the stream
 * bytes [off, off+len). */
void layer_compressed_range(const struct layer *l, uint64_t off, uint64_t len, uint64_t *ret_in, uint64_t *ret_end);
