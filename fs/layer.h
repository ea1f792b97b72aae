/* Layers: one blob, its decompressed tar stream, and the index of its entries.
 *
 * The read path every file read goes through is layer_read(): "bytes
 * [off, off+len) of the uncompressed tar stream of layer L".  Today the blob is
 * a verified file in the cache and the bytes come out of it through
 * decompression checkpoints; a lazy source can replace the blob file without
 * changing anything above this interface.
 *
 * Locking: a layer's entries and checkpoints are immutable once built.  The
 * decoder cursors are guarded by layer->lock; layer_read() may be called from
 * any thread. */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "util.h"

enum layer_compression { COMPRESSION_NONE, COMPRESSION_GZIP, COMPRESSION_ZSTD };

/* Where decoding can start without decoding what comes before. */
struct checkpoint {
	uint64_t in;         /* offset in the compressed blob */
	uint64_t out;        /* offset in the uncompressed stream */
	uint8_t bits;        /* gzip: bits of the byte before `in` still to use */
	bool raw;            /* gzip: inside a deflate stream (needs window) */
	uint32_t window_len; /* gzip: bytes of window (at most 32 KiB) */
	unsigned char *window;
};

enum entry_type {
	ENTRY_REG,
	ENTRY_DIR,
	ENTRY_SYMLINK,
	ENTRY_HARDLINK,
	ENTRY_CHR,
	ENTRY_BLK,
	ENTRY_FIFO,
};

/* A run of file bytes: logical [file_off, file_off+len) at stream_off.  More
 * than one only for sparse files; what no extent covers reads as zeros. */
struct extent {
	uint64_t file_off, stream_off, len;
};

/* A piece of a file in a chunked layer (eStargz): its bytes are the output
 * of the gzip member at comp_off (ending before comp_end) from inner_off on,
 * and their sha256 is digest.  Verified chunks are cached by that digest. */
struct chunk {
	uint64_t file_off, size;
	uint64_t comp_off, comp_end, inner_off;
	uint32_t order; /* position among the layer's chunks in blob order */
	bool zeros;     /* zstd:chunked "zeros" chunk: no data, reads as zeros */
	char digest[72];
};

struct xattr {
	char *name;
	void *value;
	uint32_t len;
};

struct entry {
	char *path;           /* normalised: no leading "/", no "." or ".." components, "" for root */
	char *link;           /* symlink target or hardlink target path (normalised) */
	uint8_t type;         /* enum entry_type */
	uint32_t mode;        /* permission bits including setuid/setgid/sticky */
	uint32_t uid, gid;
	int64_t mtime_sec;
	uint32_t mtime_nsec;
	uint64_t size;
	uint32_t rdev_major, rdev_minor;
	struct xattr *xattrs;
	uint32_t n_xattrs;
	struct extent *extents;
	uint32_t n_extents;
	struct chunk *chunks;   /* chunked layers only */
	uint32_t n_chunks;
	bool landmark;          /* before the eStargz prefetch landmark */
	bool prefetch;          /* in the prefetch set: landmark, or in the prefetch list */
	uint32_t prefetch_rank; /* position in a prefetch list (first read first), 0: none */
};

struct cursor;
struct remote;

/* How a layer's file bytes are found: through the tar stream of a local blob,
 * or chunk by chunk from the registry. */
enum layer_format { LAYER_TAR_STREAM, LAYER_CHUNKED };

struct layer {
	char digest[72];
	enum layer_compression compression;
	int blob_fd;
	uint64_t blob_size;
	uint64_t tar_size;   /* uncompressed stream length */
	struct entry *entries;
	size_t n_entries;
	struct checkpoint *checkpoints;
	size_t n_checkpoints;

	enum layer_format format;
	struct remote *remote;  /* LAYER_CHUNKED: fetches and caches chunks */
	/* LAYER_TAR_STREAM without a local blob (blob_fd < 0): the blob's spans,
	 * fetched and verified against a pushed imgfs index. */
	struct remote_blob *remote_blob;
	/* Compressed LAYER_TAR_STREAM: where decoded spans are kept between
	 * mounts ("<dir>/<hex>-<start>-<len>"), so that a warm start reads
	 * files instead of decompressing them again; NULL: not kept. */
	char *decoded_prefix;

	pthread_mutex_t lock;
	struct cursor *cursors;
	unsigned cursor_clock;
};

struct layer_stats {
	uint64_t bytes_fetched, requests, chunk_hits, chunk_misses, bytes_prefetched;
};

enum prefetch_mode { PREFETCH_NONE, PREFETCH_LANDMARK, PREFETCH_ALL };

/* Media type to compression; -ENOTSUP for media types that are not layers. */
int layer_compression_from_media_type(const char *media_type, enum layer_compression *ret);

/* Builds the index by decoding the whole blob once.  The layer takes
 * ownership of blob_fd.  Errors name the layer digest. */
int layer_open_scan(const char *digest, enum layer_compression compression, int blob_fd, struct layer **ret,
		    struct err *err);
/* Loads a saved index; -ENOENT if there is none or it is stale or damaged.
 * Takes ownership of blob_fd only on success. */
int layer_open_saved(const char *digest, enum layer_compression compression, int blob_fd,
		     const char *index_path, struct layer **ret);
int layer_save(const struct layer *l, const char *index_path);
/* The same for a chunked layer (eStargz, zstd:chunked), in place of its
 * table of contents: stale unless layer digest, TOC digest, compression
 * and blob size all match.  The chunks get their order and slots from the
 * caller, as after a parse. */
int chunked_layer_open_saved(const char *digest, const char *toc_digest, enum layer_compression compression,
			     uint64_t blob_size, const char *path, struct layer **ret);
int chunked_layer_save(const struct layer *l, const char *toc_digest, const char *path);
struct layer *layer_free(struct layer *l);

/* Reads exactly len bytes at off of the uncompressed stream. */
int layer_read(struct layer *l, void *buf, size_t len, uint64_t off);
/* Reads a file's bytes through its extents, zero-filling holes; returns bytes read. */
ssize_t layer_read_entry(struct layer *l, const struct entry *e, void *buf, size_t len, uint64_t off);

/* Opens an eStargz layer from its table of contents alone: the footer and
 * the TOC are fetched with Range requests and the TOC is verified against
 * toc_digest (from the verified manifest).  File bytes are fetched later, a
 * chunk at a time, verified and kept in <cache_dir>/chunks.  Takes
 * ownership of both clients: one for reads, one for background prefetch. */
struct registry_client;
int estargz_open(struct registry_client *client, struct registry_client *prefetch_client, const char *digest,
		 uint64_t blob_size, const char *toc_digest, const char *cache_dir, struct layer **ret, struct err *err);
/* The same for a zstd:chunked layer: position is the manifest-position
 * annotation ("offset:length:uncompressedLength:1") and toc_checksum the
 * sha256 of the compressed TOC; each file chunk is a zstd frame. */
int zstd_chunked_open(struct registry_client *client, struct registry_client *prefetch_client, const char *digest,
		      uint64_t blob_size, const char *position, const char *toc_checksum, const char *cache_dir,
		      struct layer **ret, struct err *err);
void layer_get_stats(struct layer *l, struct layer_stats *ret);
/* Fetches the layer's chunks into the cache: with only_landmark, just the
 * files before the prefetch landmark.  Uses its own connection, so reads
 * never wait behind it.  Stops early, returning -ECANCELED, once *stop is set. */
int layer_prefetch(struct layer *l, bool only_landmark, const atomic_bool *stop);
/* Starts what a layer does in the background once its mount is up: a
 * chunked layer saves the TOC it parsed.  Call it in the process that
 * serves the mount (threads do not survive fork). */
void layer_start_background(struct layer *l);

/* The workload and the background fetch of whole layers share the
 * registry's time, and on a small machine the CPU: each read of a lazy
 * layer notes itself, served from the cache or not, and the background
 * fetch waits until none came for a moment (fs/demand.c), so that it never
 * slows the start it is there to help.  Landmark prefetching does not
 * wait: the start needs those files. */
void demand_note(void);
/* Returns once no read came for 200 ms, or when *stop is set. */
void demand_wait_quiet(const atomic_bool *stop);

/* Normalises a tar member name; -EINVAL for names that leave the root. */
int path_normalise(const char *name, char **ret);
