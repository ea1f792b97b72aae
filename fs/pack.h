/* The pack store of a chunked layer: its verified chunks, each at its slot
 * in one sparse file, "<cache>/chunks/sha256/<layer hex>.v1.pack" (private
 * to fs/).  One file per chunk made ext4 inode allocation a third of a
 * first start's CPU.  When eviction unlinks the pack, later chunks go to a
 * new one; the old ones stay open for the chunks they hold, so a reader's
 * descriptor is never closed under it.
 *
 * Packs are hashed again on first use, so the cache needs no fsync and no
 * temporary files: a chunk torn by a crash, damaged since, or half written
 * by another daemon (which writes the same verified bytes) is fetched
 * again, never served. */
#pragma once

#include <pthread.h>

#include "layer.h"

/* Packs of one mount, when eviction keeps unlinking them (a cap smaller
 * than what the mount reads); the last one is kept on using beyond that.
 * Unlinked packs hold at most the chunks this mount read, until it ends. */
#define PACK_GENERATIONS 255

/* Verified chunks that could not be written (a full cache disk) are kept in
 * memory instead, least recently used out first, up to this many bytes. */
#define PACK_MEMORY_MAX (64u << 20)

struct mem_chunk {
	uint32_t order;
	unsigned char *data;
	size_t size;
	uint64_t last_use;
};

struct pack_store {
	/* Guards packs, n_packs, verified and the memory chunks; never held across I/O. */
	pthread_mutex_t lock;
	enum layer_compression compression; /* of each chunk's member or frame */
	char *path;
	int packs[PACK_GENERATIONS];
	size_t n_packs;
	uint64_t *slot; /* by chunk order: offset in the pack */
	/* By chunk order: 0, or 1 + the index in packs of the pack in which
	 * this process verified the chunk. */
	uint8_t *verified;
	struct mem_chunk *mem;
	size_t n_mem, allocated_mem, mem_bytes;
	uint64_t mem_clock;
	bool disk_full; /* a write failed: chunks go to memory from then on */
};

/* Opens (or creates) the pack of layer digest; errors name the file. */
int pack_store_open(struct pack_store *ps, const char *cache_dir, const char *digest,
		    enum layer_compression compression, struct err *err);
void pack_store_close(struct pack_store *ps);
/* Numbers the layer's chunks in blob order (by_offset) and gives each its
 * slot, in that order, so that neighbours fetched together are written
 * together; zeros chunks take no room. */
int pack_store_assign(struct pack_store *ps, const struct chunk *const *by_offset, size_t n_chunks);
/* The pack holding the chunk verified by this process, or -1. */
int pack_verified(struct pack_store *ps, const struct chunk *c);
/* The pack in which the chunk is cached and verified, or -ENOENT: a chunk
 * this process has not verified yet is hashed first. */
int pack_lookup(struct pack_store *ps, const struct chunk *c);
/* Decompresses one chunk out of its compressed bytes, verifies it and
 * writes it at its slot, or keeps it in memory when the write fails (a
 * full disk: reads go on, from memory).  -EBADMSG when the bytes do not
 * match. */
int pack_store_chunk(struct pack_store *ps, const struct chunk *c, const unsigned char *comp, size_t comp_len);
/* Copies len bytes at off of a chunk kept in memory; -ENOENT when it is not. */
int pack_read_memory(struct pack_store *ps, const struct chunk *c, void *buf, uint64_t off, size_t len);
bool pack_in_memory(struct pack_store *ps, const struct chunk *c);
/* Whether writes to the pack failed: fetching ahead is then pointless. */
bool pack_disk_full(struct pack_store *ps);
