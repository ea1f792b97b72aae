/* What remote_blob.c (reads, on demand), remote_prefetch.c (the background
 * fetch of a prefetch list or of the whole blob) and remote_span.c (spans
 * and windows in the cache) share about a remote blob (private to them). */
#pragma once

#include <pthread.h>

#include "remote_blob.h"

/* The most one request for spans asks for. */
#define SPAN_READAHEAD_MAX_BYTES (4u << 20)

/* The one a read waits on, the request that continues it before it ends
 * (stream_follow()), and one for a read elsewhere meanwhile. */
#define STREAMS 3
#define LARGE_FILES_KEPT 8
/* Background requests that reads see at once: one per worker of a
 * prefetch list (remote_prefetch.c); one more would only be unseen. */
#define BACKGROUND_RUNS 4
/* Windows that reads fetch at once.  A start reads its program, users and
 * groups together; more than that rarely miss windows at one time. */
#define WINDOW_CONNECTIONS 3

/* An on-demand request: spans [first, end) of one request, each stored as
 * it arrives, [first, next) handled so far (stream_main).  The range stays
 * after the request ends, for stream_follow(). */
/* What a request is for, which says what its bytes count as. */
enum fetch_purpose {
	FETCH_ON_DEMAND,
	FETCH_PREFETCH, /* the prefetch set, or everything in the background */
	FETCH_GUESS,    /* guessed from what was read (remote_guess.c) */
};

struct stream {
	struct remote_blob *rb;
	struct registry_client *client;
	bool busy;
	bool followed; /* the request after it was asked for */
	enum fetch_purpose purpose;
	size_t follow_from; /* a read of a span from here on asks for it */
	size_t first, next, end;
	unsigned char *buf;
	/* When it was asked for and its first bytes came (0: not yet), and
	 * how many: what the link is like (rb_note_transfer()). */
	uint64_t asked_ns, first_bytes_ns;
	size_t first_got;
};

struct remote_blob {
	char digest[72];
	uint64_t blob_size;
	uint32_t span_size;
	size_t n_spans;
	unsigned char (*span_digests)[32];
	char *cache_dir;
	/* lock guards the verified bitmap, the streams and the counters.
	 * client is for a read that finds every stream busy; one such fetch
	 * at a time (client_busy), made with lock released: the streams'
	 * bytes are handled under it as they arrive. */
	pthread_mutex_t lock;
	struct registry_client *client, *prefetch_client;
	bool client_busy;
	unsigned char *verified;
	uint64_t bytes_fetched, requests, hits, misses, bytes_prefetched, bytes_guessed;
	/* The span last read, kept open: decoders read a span in many pieces. */
	size_t open_span;
	int open_fd;
	/* The last span the cache could not take (a full disk), verified: it
	 * is read from memory instead. */
	size_t mem_span;
	unsigned char *mem_data;
	uint64_t bytes_in_memory;
	/* On-demand fetches under way, each on a connection of its own. */
	struct stream streams[STREAMS];
	/* The background fetch's requests under way (rb_fetch_missing_spans()):
	 * a read of a span one brings waits for it. */
	struct stream background[BACKGROUND_RUNS];
	uint64_t reads_ahead_of_prefetch;
	pthread_cond_t stream_moved; /* a stream's next moved, a stream ended, or client is free */
	/* The windows blob of an index pushed with its windows apart, in the
	 * index's repository; connections of its own, so that a window comes
	 * beside the stream, and one for prefetch.  Reads of different files
	 * fetch their windows at once, each on a connection (a start's
	 * program need not wait behind its users' window); window_lock
	 * guards which connection fetches which window (NULL: free). */
	char windows_digest[72];
	uint64_t windows_size;
	struct registry_client *window_clients[WINDOW_CONNECTIONS], *window_prefetch_client;
	const struct checkpoint *window_fetching[WINDOW_CONNECTIONS];
	pthread_mutex_t window_lock;
	pthread_cond_t window_moved;
	/* The blob ranges of the last large files whose head was read
	 * (remote_blob_read_ahead_file()), in a ring: a read inside one reads
	 * ahead only to its end. */
	struct blob_extent {
		uint64_t in, end;
	} large_files[LARGE_FILES_KEPT];
	size_t large_files_next;
	/* The rest of the file whose head was read last, when no stream was
	 * free for it yet (in == end: none): started when one is. */
	struct blob_extent read_ahead_waiting;
	uint64_t bytes_read_ahead;  /* of files whose head was read */
	struct remote_guess *guess; /* NULL: the layer has no Python package */
};

uint64_t rb_span_len(const struct remote_blob *rb, size_t i);
bool rb_digest_matches(const void *data, size_t len, const unsigned char want[32]);
/* Span i from the cache, verified the first time this mount uses it; -1
 * when it is not there whole.  rb->lock is held. */
int rb_open_cached_span(struct remote_blob *rb, size_t i);
/* The progress of a stream's transfer (registry_fetch_range_streaming()):
 * every span now complete is verified and stored (one that fails is left
 * for a reader to fetch again alone). */
void rb_stream_arrived(void *ctx, size_t got);
/* Marks st asked for now; rb->lock is held. */
void rb_stream_asked(struct stream *st);
/* Learns the link from st's transfer, which has ended; rb->lock is held. */
void rb_note_transfer(const struct remote_blob *rb, const struct stream *st);
/* How large a guess's requests are: see rb_guess_request_bytes() in
 * remote_span.c. */
uint64_t rb_guess_request_bytes(void);
/* The on-demand stream, or the background request, under way that brings
 * span i; NULL if none.  rb->lock is held. */
struct stream *rb_stream_bringing(struct remote_blob *rb, size_t i);
const struct stream *rb_background_bringing(const struct remote_blob *rb, size_t i);
/* Whether span i is verified or in the cache whole (not checked yet). */
bool rb_span_cached(const struct remote_blob *rb, size_t i);
/* Keeps a verified span in the cache. */
int rb_store_span(const struct remote_blob *rb, size_t i, const void *data, size_t len);
/* Counts what a request brought, and as what. */
void rb_count_fetched(struct remote_blob *rb, uint64_t requests, uint64_t bytes, enum fetch_purpose purpose);
/* A window from the cache, verified and unpacked into out; -ENOENT when it
 * is not there whole. */
int rb_cached_window(const struct remote_blob *rb, const struct checkpoint *cp, unsigned char *out);
/* Whether the cache has cp's window (not checked yet). */
bool rb_window_at_hand(const struct remote_blob *rb, const struct checkpoint *cp);
/* Checks a fetched window, unpacks it into out (when not NULL) and keeps
 * it in the cache. */
int rb_keep_window(struct remote_blob *rb, const struct checkpoint *cp, const unsigned char *stored,
		   unsigned char *out);
/* Keeps the windows that lie whole in data, the run [off, off+len) of the
 * windows blob, from checkpoint first on. */
void rb_keep_windows(struct remote_blob *rb, const struct layer *l, size_t first, const unsigned char *data,
		     uint64_t off, uint64_t len);
/* The connections of a background fetch: the blob's (blob[0] given, the
 * others copies of it made when a fetch has work for them, kept for the
 * next: a connection opened costs a round trip, two with TLS) and the
 * windows blob's (NULL: none). */
struct fetch_connections {
	struct registry_client *blob[BACKGROUND_RUNS];
	struct registry_client *windows;
};
/* Frees the copies (not blob[0], not windows). */
void rb_connections_done(struct fetch_connections *c);
/* Fetches files[0, n) in the background as a prefetch list's (their
 * spans and windows, in few long requests on c's connections, in their
 * order), each up to its first head bytes, up to budget bytes of the blob
 * in all; *ret_bytes: the blob's bytes it went for (what was cached among
 * them included). */
int rb_prefetch_files(struct layer *l, const struct entry *const *files, size_t n, uint64_t head, uint64_t budget,
		      struct fetch_connections *c, const atomic_bool *stop, uint64_t *ret_bytes);
/* The package guess (remote_guess.c), with connections copied from
 * client and window_client (NULL: no windows apart); *ret is NULL for a
 * layer with neither a Python package nor windows apart. */
struct remote_guess;
int remote_guess_new(struct layer *l, const struct registry_client *client, const struct registry_client *window_client,
		     struct remote_guess **ret);
/* The first read of e is about to be served: when e is the first module of
 * its package read and not in the prefetch set, the package is fetched in
 * the background (speculate.h says why).  Never blocks on I/O. */
void remote_guess_note(struct remote_guess *g, const struct entry *e);
/* e is read on from its head up to offset end of the blob
 * (remote_blob_read_ahead_file()): the windows of the checkpoints it
 * crosses before there are fetched in the background, since a mapped file
 * is faulted in at places no window was fetched for.  Never blocks on I/O. */
void remote_guess_windows(struct remote_guess *g, const struct entry *e, uint64_t end);
/* Fetches the windows kept apart that the cache lacks of the checkpoints
 * e's bytes cross before offset end of the blob, on client. */
int rb_prefetch_file_windows(struct layer *l, const struct entry *e, uint64_t end, struct registry_client *client,
			     const atomic_bool *stop);
/* Stops the guess (a request under way ends first) and frees it. */
void remote_guess_free(struct remote_guess *g);
/* The layer source's prefetch operation (layer_prefetch()). */
int remote_blob_prefetch(struct layer *l, bool only_landmark, const atomic_bool *stop);
