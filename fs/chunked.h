/* Opening eStargz and zstd:chunked layers from their table of contents
 * alone (private to fs/). */
#pragma once

#include "layer.h"

struct registry_client;

/* Opens an eStargz layer: the footer and the TOC are fetched with Range
 * requests and the TOC is verified against toc_digest (from the verified
 * manifest); a TOC saved by an earlier mount is used instead when it
 * matches.  File bytes are fetched later, a chunk at a time, verified and
 * kept in <cache_dir>/chunks.  Takes ownership of both clients: one for
 * reads, one for background prefetch. */
int estargz_open(struct registry_client *client, struct registry_client *prefetch_client, const char *digest,
		 uint64_t blob_size, const char *toc_digest, const char *cache_dir, struct layer **ret,
		 struct err *err);
/* The same for a zstd:chunked layer: position is the manifest-position
 * annotation ("offset:length:uncompressedLength:1") and toc_checksum the
 * sha256 of the compressed TOC; each file chunk is a zstd frame. */
int zstd_chunked_open(struct registry_client *client, struct registry_client *prefetch_client, const char *digest,
		      uint64_t blob_size, const char *position, const char *toc_checksum, const char *cache_dir,
		      struct layer **ret, struct err *err);
/* The eStargz footer (51 or 47 bytes), for estargz_open() and the fuzzers. */
int estargz_parse_footer(const unsigned char *f, size_t n, uint64_t *ret_toc_off);

/* estargz_open() (position NULL) or zstd_chunked_open() (toc_digest the
 * TOC checksum) on a thread of its own, so that the layers of an image
 * fetch their TOCs together, not one round trip after another; at most
 * eight at a time, a registry being one host.  Takes the clients; sets
 * *failed if it fails. */
struct chunked_open;
int chunked_open_start(struct registry_client *client, struct registry_client *prefetch_client, const char *digest,
		       uint64_t blob_size, const char *toc_digest, const char *position, const char *cache_dir,
		       atomic_bool *failed, struct chunked_open **ret);
/* Waits for it and frees it. */
int chunked_open_finish(struct chunked_open *o, struct layer **ret, struct err *err);
