/* The table of contents of eStargz and zstd:chunked layers: its JSON into a
 * layer's entries and their chunks (private to fs/). */
#pragma once

#include "layer.h"

/* The TOC's own name in the layer, hidden from the tree. */
#define TOC_NAME "stargz.index.json"
/* A bound on one chunk's uncompressed size: what a read holds in memory. */
#define CHUNK_MAX_SIZE (64u << 20)

/* Adds the entries of a TOC JSON (eStargz and zstd:chunked alike) to l;
 * toc_off, where the TOC starts in the blob, bounds the last chunk. */
int estargz_parse_toc(struct layer *l, const char *json, size_t len, uint64_t toc_off, struct err *err);
