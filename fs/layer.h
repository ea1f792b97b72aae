/* Layers: one blob, the index of its entries, and the source their bytes
 * come from.
 *
 * Every file read goes through layer_read_entry(), which hands it to the
 * layer's source (struct layer_source_ops).  Sources that decode a tar
 * stream share tar_stream.c and differ only in where the compressed bytes
 * come from (read_blob).
 *
 * Locking: a layer's entries and checkpoints are immutable once built.  The
 * decoder cursors are guarded by layer->lock; sources guard their own state;
 * layer_read_entry() may be called from any thread. */
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
	/* NULL with window_len > 0: the window lies in the windows blob of a
	 * pushed index (windows_blob.h), fetched when a read starts here. */
	unsigned char *window;
	uint64_t window_at;              /* its offset there */
	uint32_t window_stored;          /* and length, compressed */
	unsigned char window_sha256[32]; /* of those stored bytes */
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

/* Bytes [off, off+len) of a file. */
struct file_part {
	uint64_t off, len;
};

struct xattr {
	char *name;
	void *value;
	uint32_t len;
};

struct entry {
	char *path;    /* normalised: no leading "/", no "." or ".." components, "" for root */
	char *link;    /* symlink target or hardlink target path (normalised) */
	uint8_t type;  /* enum entry_type */
	uint32_t mode; /* permission bits including setuid/setgid/sticky */
	uint32_t uid, gid;
	int64_t mtime_sec;
	uint32_t mtime_nsec;
	uint64_t size;
	uint32_t rdev_major, rdev_minor;
	struct xattr *xattrs;
	uint32_t n_xattrs;
	struct extent *extents;
	uint32_t n_extents;
	struct chunk *chunks; /* chunked layers only */
	uint32_t n_chunks;
	bool landmark;          /* before the eStargz prefetch landmark */
	bool prefetch;          /* in the prefetch set: landmark, or in the prefetch list */
	uint32_t prefetch_rank; /* position in a prefetch list (first read first), 0: none */
	/* The parts of the file that list named, ascending; NULL: all of it. */
	struct file_part *prefetch_parts;
	uint32_t n_prefetch_parts;
};

struct cursor;
struct layer;

struct layer_stats {
	uint64_t bytes_fetched, requests, chunk_hits, chunk_misses, bytes_prefetched;
	/* Verified bytes served from memory: the cache disk could not take them. */
	uint64_t bytes_in_memory;
	/* Reads that fetched bytes themselves rather than wait for the
	 * background request that had them. */
	uint64_t reads_ahead_of_prefetch;
	/* Fetched on a guess: the neighbours of a read that had to fetch
	 * (speculate.h), the rest of a file whose head was read. */
	uint64_t bytes_speculated;
};

/* Where a layer's file bytes come from: a local blob decoded through
 * checkpoints (local_blob.c), the spans of a blob fetched against a pushed
 * index (remote_blob.c), or the chunks of an eStargz or zstd:chunked layer
 * (chunk_fetch.c).  Generic code reaches a source only through this table;
 * a NULL operation is one the source has no use for. */
struct layer_source_ops {
	/* Bytes [off, off+len) of the compressed blob, verified: the input of
	 * the tar stream decoder (tar_stream.c).  NULL where files are not
	 * found through a tar stream. */
	int (*read_blob)(struct layer *l, void *buf, size_t len, uint64_t off);
	/* The window of a checkpoint that has none in memory (window_len bytes
	 * into out), verified; called with l->lock held.  NULL: no source of
	 * this kind has such checkpoints. */
	int (*read_window)(struct layer *l, const struct checkpoint *cp, unsigned char *out);
	/* Whether read_window() would find cp's window without a request (in
	 * the cache, fetched ahead); NULL: never. */
	bool (*window_at_hand)(struct layer *l, const struct checkpoint *cp);
	/* Whether the compressed bytes [in, end) are here or a request under
	 * way brings them: decoding them costs no request of its own.  NULL:
	 * never known to be. */
	bool (*blob_coming)(struct layer *l, uint64_t in, uint64_t end);
	/* Brings the compressed bytes [in, end) here, verified, or waits for
	 * the request under way that brings them, without reading them out:
	 * what a decode will read, fetched before it takes l->lock.  NULL:
	 * the source's bytes are always here. */
	int (*bring_blob)(struct layer *l, uint64_t in, uint64_t end);
	/* A file's bytes; [off, off+len) lies within the file. */
	ssize_t (*read_entry)(struct layer *l, const struct entry *e, void *buf, size_t len, uint64_t off);
	/* See layer_prefetch(). */
	int (*prefetch)(struct layer *l, bool only_landmark, const atomic_bool *stop);
	/* Fills the counters this source keeps; they start zeroed. */
	void (*get_stats)(struct layer *l, struct layer_stats *ret);
	void (*start_background)(struct layer *l);
	/* Waits for what start_background() and reads left running. */
	void (*stop_background)(struct layer *l);
	/* Frees the source's state (l->source), before the entries are freed. */
	void (*free)(struct layer *l);
	/* See layer_read_ahead_file(); NULL where reads fetch ahead by
	 * themselves (a chunked layer's chunks beside a miss, elf_guess.h). */
	void (*read_ahead_file)(struct layer *l, const struct entry *e);
	/* See layer_first_read_begins(); NULL: no guess listens. */
	void (*first_read_begins)(struct layer *l, const struct entry *e);
	/* Fetches for several readers at once, each on a connection of its
	 * own: a guess of what is read next can run ahead of the reads
	 * (elf_guess.h).  Not a tar stream decoded through its checkpoints:
	 * there the guess's decodes take turns with the reads' and its
	 * fetches of library ends are larger than the reads' (tools/bench-link,
	 * foreign row, with it: 4.22-4.64 s against 3.96-4.08 s). */
	bool concurrent_reads;
};

struct layer {
	char digest[72];
	enum layer_compression compression;
	int blob_fd; /* the whole blob, verified, in the cache; -1: not here */
	uint64_t blob_size;
	uint64_t tar_size; /* uncompressed stream length */
	struct entry *entries;
	size_t n_entries;
	struct checkpoint *checkpoints;
	size_t n_checkpoints;

	const struct layer_source_ops *ops; /* NULL until a source is attached */
	void *source;
	/* Compressed tar streams of a local blob: where decoded spans are kept
	 * between mounts ("<dir>/<hex>-<start>-<len>"), so that a warm start
	 * reads files instead of decompressing them again; NULL: not kept. */
	char *decoded_prefix;

	pthread_mutex_t lock;
	struct cursor *cursors;
	unsigned cursor_clock;
};

enum prefetch_mode { PREFETCH_NONE, PREFETCH_LANDMARK, PREFETCH_ALL };

/* Media type to compression; -ENOTSUP for media types that are not layers. */
int layer_compression_from_media_type(const char *media_type, enum layer_compression *ret);

struct layer *layer_alloc(const char *digest, enum layer_compression compression, int blob_fd);
/* Stops the source's background work, frees it, then the entries. */
struct layer *layer_free(struct layer *l);

/* A file's parts as a prefetch list line gives them after "\t@":
 * "OFF+LEN,OFF+LEN,...", in bytes, ascending and apart, at most 4096.
 * Anything else is -EINVAL (the line then names the whole file). */
int file_parts_parse(const char *text, struct file_part **ret, uint32_t *ret_n);
/* Whether the prefetch set wants any of bytes [off, off+len) of e. */
bool entry_part_listed(const struct entry *e, uint64_t off, uint64_t len);
/* Reads a file's bytes, zero-filling holes; returns bytes read, 0 past the end. */
ssize_t layer_read_entry(struct layer *l, const struct entry *e, void *buf, size_t len, uint64_t off);
/* The first read of e, at its start, was served: a source that fetches
 * starts fetching the rest of e, which is likely read next, without
 * waiting for it.  Never blocks on I/O. */
void layer_read_ahead_file(struct layer *l, const struct entry *e);
/* The first read of e, at its start, is about to be served: a source that
 * guesses what is read next from what has to be fetched can send its
 * guess with the read's own request instead of a round trip after it.
 * Never blocks on I/O. */
void layer_first_read_begins(struct layer *l, const struct entry *e);
/* Zero counters for a source that keeps none. */
void layer_get_stats(struct layer *l, struct layer_stats *ret);
/* Fetches the layer's contents into the cache: with only_landmark, just
 * the files in the prefetch set.  Uses its own connection, so reads never
 * wait behind it.  Stops early, returning -ECANCELED, once *stop is set;
 * 0 at once for a source with nothing to fetch. */
int layer_prefetch(struct layer *l, bool only_landmark, const atomic_bool *stop);
/* Starts what a layer does in the background once its mount is up (a
 * chunked layer saves the TOC it parsed).  Call it in the process that
 * serves the mount: threads do not survive fork. */
void layer_start_background(struct layer *l);
void layer_stop_background(struct layer *l);

/* What a blob of blob_size bytes may decode to, and so the largest file it
 * may hold (holes of sparse files included): a bound on what an image can
 * make the daemon read, copy up or keep. */
uint64_t layer_size_limit(uint64_t blob_size);

/* Normalises a tar member name; -EINVAL for names that leave the root. */
int path_normalise(const char *name, char **ret);
