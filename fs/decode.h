/* Cursors: sequential decoders over a layer blob (private to fs/). */
#pragma once

#include "layer.h"

struct checkpoint_recorder {
	struct checkpoint *checkpoints;
	size_t n, allocated;
	uint64_t span;     /* minimum distance between checkpoints */
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
void layer_cursors_free(struct layer *l);
/* Forgets the decoded spans of a layer that is going away. */
void layer_spans_drop(const struct layer *l);
/* Waits until the decoded spans queued for the cache are written. */
void decoded_keep_flush(void);
/* The compressed bytes [*ret_in, *ret_end) a decoder reads for the stream
 * bytes [off, off+len). */
void layer_compressed_range(const struct layer *l, uint64_t off, uint64_t len, uint64_t *ret_in, uint64_t *ret_end);
struct layer *layer_alloc(const char *digest, enum layer_compression compression, int blob_fd);

/* estargz.c */
void remote_free(struct remote *r);
/* layer_read_entry() for chunked layers; [off, off+len) lies within the file. */
ssize_t chunked_read_entry(struct layer *l, const struct entry *e, void *buf, size_t len, uint64_t off);
/* The eStargz footer (51 or 47 bytes), for estargz_open() and the fuzzers. */
int estargz_parse_footer(const unsigned char *f, size_t n, uint64_t *ret_toc_off);

/* toc.c */
/* The TOC's own name in the layer, hidden from the tree. */
#define TOC_NAME "stargz.index.json"
/* A bound on one chunk's uncompressed size: what a read holds in memory. */
#define CHUNK_MAX_SIZE (64u << 20)
/* Adds the entries of a TOC JSON (eStargz and zstd:chunked alike) to l. */
int estargz_parse_toc(struct layer *l, const char *json, size_t len, uint64_t toc_off, struct err *err);
