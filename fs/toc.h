/* The table of contents of eStargz and zstd:chunked layers: its JSON into a
 * layer's entries and their chunks (private to fs/). */
#pragma once

#include "layer.h"

/* The TOC's own name in the layer, hidden from the tree. */
#define TOC_NAME "stargz.index.json"
/* A bound on one chunk's uncompressed size: what a read holds in memory. */
#define CHUNK_MAX_SIZE (64u << 20)
/* A bound on a TOC's JSON. */
#define TOC_MAX_SIZE (256u << 20)

/* Adds the entries of a TOC JSON (eStargz and zstd:chunked alike) to l;
 * toc_off, where the TOC starts in the blob, bounds the last chunk. */
int estargz_parse_toc(struct layer *l, const char *json, size_t len, uint64_t toc_off, struct err *err);

/* A TOC parsed as its text arrives, so that a mount need not wait for the
 * parse once the last byte is in.  It takes the shape the eStargz and
 * zstd:chunked writers write ({"version":N,"entries":[...]}); for any
 * other, or text it cannot take, it gives up and the caller parses the
 * whole text with estargz_parse_toc() on a fresh layer.  Nothing in l is
 * to be trusted until the caller has verified the whole text. */
struct toc_feed;
struct toc_feed *toc_feed_new(struct layer *l, uint64_t toc_off);
/* Parses what it can of text[0, len): the text so far, which only grows
 * from one call to the next (it may have moved). */
void toc_feed_text(struct toc_feed *f, const char *text, size_t len);
/* With all of the text: 0 once l holds the TOC as estargz_parse_toc()
 * would have made it, -EAGAIN if the feed gave up, or its error. */
int toc_feed_finish(struct toc_feed *f, const char *text, size_t len, struct err *err);
struct toc_feed *toc_feed_free(struct toc_feed *f);
