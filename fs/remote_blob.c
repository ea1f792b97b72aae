/* A layer blob read from the registry in fixed spans, for plain gzip, zstd
 * and tar layers that have a pushed imgfs index.  The index's span table
 * gives the sha256 of every span of the compressed blob: a span is fetched
 * with one Range request, verified, kept in the chunk cache under its
 * digest, and only then decoded.  The decoders above read the blob through
 * remote_blob_read() as they would read a local file. */
#include "remote_blob.h"

#include <fcntl.h>
#include <sys/stat.h>

#include "cache.h"
#include "demand.h"
#include "registry.h"
#include "tar_stream.h"
#include "windows_blob.h"

/* The one a read waits on, the request that continues it before it ends
 * (stream_follow()), and one for a read elsewhere meanwhile. */
#define STREAMS 3

/* An on-demand request: spans [first, end) of one request, each stored as
 * it arrives, [first, next) handled so far (stream_main).  The range stays
 * after the request ends, for stream_follow(). */
struct stream {
	struct remote_blob *rb;
	struct registry_client *client;
	bool busy;
	bool followed;      /* the request after it was asked for */
	size_t follow_from; /* a read of a span from here on asks for it */
	size_t first, next, end;
	unsigned char *buf;
};

struct remote_blob {
	char digest[72];
	uint64_t blob_size;
	uint32_t span_size;
	size_t n_spans;
	unsigned char (*span_digests)[32];
	char *cache_dir;
	/* lock guards the on-demand client, the verified bitmap and the
	 * counters; it is held across a fetch, as reads of one layer are
	 * serialised by the layer's cursor lock anyway. */
	pthread_mutex_t lock;
	struct registry_client *client, *prefetch_client;
	unsigned char *verified;
	uint64_t bytes_fetched, requests, hits, misses, bytes_prefetched;
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
	pthread_cond_t stream_moved; /* a stream's next moved or a stream ended */
	/* The windows blob of an index pushed with its windows apart, in the
	 * index's repository; its own connection, so that a window comes
	 * beside the stream, and one for prefetch. */
	char windows_digest[72];
	uint64_t windows_size;
	struct registry_client *window_client, *window_prefetch_client;
	pthread_mutex_t window_lock; /* guards window_client */
};

static void hex_of(const unsigned char d[32], char out[65])
{
	for (int i = 0; i < 32; i++)
		sprintf(out + 2 * i, "%02x", d[i]);
}

static char *chunk_path(const struct remote_blob *rb, const unsigned char digest[32])
{
	char hex[65];
	hex_of(digest, hex);
	return strdup_printf("%s/chunks/sha256/%s", rb->cache_dir, hex);
}

static char *span_path(const struct remote_blob *rb, size_t i)
{
	return chunk_path(rb, rb->span_digests[i]);
}

static uint64_t span_len(const struct remote_blob *rb, size_t i)
{
	uint64_t start = (uint64_t)i * rb->span_size;
	return rb->blob_size - start < rb->span_size ? rb->blob_size - start : rb->span_size;
}

static bool digest_matches(const void *data, size_t len, const unsigned char want[32])
{
	unsigned char got[32];
	digest_sha256_raw(data, len, got);
	return memcmp(got, want, 32) == 0;
}

/* Opens span i from the cache, verifying it the first time this mount uses
 * it (cached spans are not fsynced: a crash may leave a damaged one). */
static int open_cached_span(struct remote_blob *rb, size_t i)
{
	_cleanup_free_ char *path = span_path(rb, i);
	if (!path)
		return -ENOMEM;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != span_len(rb, i)) {
		close(fd);
		return -ENOENT;
	}
	if (!rb->verified[i]) {
		_cleanup_free_ unsigned char *data = malloc(span_len(rb, i) ? span_len(rb, i) : 1);
		if (!data || read_full_at(fd, data, span_len(rb, i), 0) < 0 ||
		    !digest_matches(data, span_len(rb, i), rb->span_digests[i])) {
			close(fd);
			return -ENOENT;
		}
		rb->verified[i] = 1;
		cache_note_used(fd);
	}
	return fd;
}

/* Puts a verified span into the cache: whole or not at all, no fsync (a
 * span is hashed again the first time a mount uses it). */
static int store_span(const struct remote_blob *rb, size_t i, const void *data, size_t len)
{
	_cleanup_free_ char *path = span_path(rb, i);
	if (!path)
		return -ENOMEM;
	int r = write_file_replace(path, data, len);
	if (r == 0)
		cache_note_stored(len);
	return r;
}

/* A miss also takes the spans after it that the cache lacks, up to this
 * many bytes in all: a decoder reads on from where it started, and over a
 * link with a real round trip a request costs more than 256 KiB. */
#define SPAN_READAHEAD_BYTES (512u << 10)
/* ... or up to the next checkpoint, when that is further but not beyond
 * this: a read decodes the stream from a checkpoint to the next (2 MiB of
 * tar, or 256 KiB with windows apart; kept decoded in memory,
 * tar_stream.c), so one request takes it all
 * instead of one every 512 KiB.  The bound is for an index whose
 * checkpoints lie far apart (incompressible data is a little over 2 MiB). */
#define SPAN_READAHEAD_MAX_BYTES (4u << 20)

/* What a miss at blob offset off asks for: readahead bytes from there, of
 * which a decoder starting there needs those before decode_end. */
struct reach {
	uint64_t readahead, decode_end;
};

/* A decoder starting at off needs the bytes to the first checkpoint more
 * than a decoder's input piece after it (the first one follows the gzip
 * header, and a decoder at a checkpoint reads on past it), and the piece
 * it reads past that; a miss takes at least SPAN_READAHEAD_BYTES. */
static struct reach miss_reach(const struct layer *l, uint64_t off)
{
	size_t lo = 0, hi = l->n_checkpoints;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (l->checkpoints[mid].in <= off + DECODER_INPUT_PIECE)
			lo = mid + 1;
		else
			hi = mid;
	}
	uint64_t to_next = lo < l->n_checkpoints ? l->checkpoints[lo].in - off + DECODER_INPUT_PIECE : 0;
	struct reach r = { .readahead = to_next, .decode_end = off + to_next };
	if (r.readahead > SPAN_READAHEAD_MAX_BYTES)
		r.readahead = SPAN_READAHEAD_MAX_BYTES;
	else if (r.readahead < SPAN_READAHEAD_BYTES)
		r.readahead = SPAN_READAHEAD_BYTES;
	return r;
}

static bool span_cached(const struct remote_blob *rb, size_t i)
{
	if (rb->verified[i])
		return true;
	_cleanup_free_ char *path = span_path(rb, i);
	struct stat st;
	return path && stat(path, &st) == 0 && (uint64_t)st.st_size == span_len(rb, i);
}

/* How many spans from i on a miss fetches: i and the missing ones after
 * it, until they hold readahead bytes. */
static size_t spans_to_fetch(const struct remote_blob *rb, size_t i, uint64_t readahead, uint64_t *ret_total)
{
	size_t n = 1;
	uint64_t total = span_len(rb, i);
	while (i + n < rb->n_spans && total < readahead && !span_cached(rb, i + n))
		total += span_len(rb, i + n++);
	*ret_total = total;
	return n;
}

/* The transfer's progress: every span now complete is verified and stored
 * (one that fails is left for a reader to fetch again alone).  After a
 * retry got starts over, and what was handled is not handled again. */
static void stream_arrived(void *ctx, size_t got)
{
	struct stream *st = ctx;
	struct remote_blob *rb = st->rb;
	for (;;) {
		pthread_mutex_lock(&rb->lock);
		size_t k = st->next;
		bool complete = k < st->end && (k - st->first) * rb->span_size + span_len(rb, k) <= got;
		pthread_mutex_unlock(&rb->lock);
		if (!complete)
			return;
		const unsigned char *data = st->buf + (k - st->first) * rb->span_size;
		bool ok = digest_matches(data, (size_t)span_len(rb, k), rb->span_digests[k]) &&
			  store_span(rb, k, data, (size_t)span_len(rb, k)) == 0;
		pthread_mutex_lock(&rb->lock);
		if (ok)
			rb->verified[k] = 1;
		rb->bytes_fetched += span_len(rb, k);
		st->next = k + 1;
		pthread_cond_broadcast(&rb->stream_moved);
		pthread_mutex_unlock(&rb->lock);
	}
}

static void *stream_main(void *arg)
{
	struct stream *st = arg;
	struct remote_blob *rb = st->rb;
	uint64_t off = (uint64_t)st->first * rb->span_size, end = (uint64_t)st->end * rb->span_size;
	if (end > rb->blob_size)
		end = rb->blob_size;
	struct err err = { 0 };
	/* A span it did not bring is fetched by its reader. */
	(void)registry_fetch_range_streaming(st->client, rb->digest, off, (size_t)(end - off), st->buf, stream_arrived,
					     st, &err);
	pthread_mutex_lock(&rb->lock);
	st->busy = false;
	free(st->buf);
	st->buf = NULL;
	pthread_cond_broadcast(&rb->stream_moved);
	pthread_mutex_unlock(&rb->lock);
	return NULL;
}

/* The stream under way that brings span i, NULL if none; rb->lock is held. */
static struct stream *stream_bringing(struct remote_blob *rb, size_t i)
{
	for (size_t k = 0; k < STREAMS; k++) {
		struct stream *st = &rb->streams[k];
		if (st->busy && i >= st->first && i < st->end)
			return st;
	}
	return NULL;
}

/* Starts the request for span i and the missing ones after it on a stream
 * of its own; -EBUSY when every stream is under way or none can start.
 * rb->lock is held. */
static int stream_begin(struct remote_blob *rb, size_t i, const struct reach *reach)
{
	struct stream *st = NULL;
	for (size_t k = 0; k < STREAMS && !st; k++)
		if (!rb->streams[k].busy && rb->streams[k].client)
			st = &rb->streams[k];
	if (!st)
		return -EBUSY;
	uint64_t total;
	size_t n = spans_to_fetch(rb, i, reach->readahead, &total);
	if (!(st->buf = malloc((size_t)total)))
		return -ENOMEM;
	st->first = st->next = i;
	st->end = i + n;
	st->busy = true;
	st->followed = false;
	/* Past the middle, and past what the decoder that missed needs: a
	 * read there is of a decoder going on. */
	size_t needed = (size_t)((reach->decode_end + rb->span_size - 1) / rb->span_size);
	st->follow_from = needed > i + n / 2 ? needed : i + n / 2;
	rb->requests++; /* counted now, its bytes as they come: stats are current */
	if (!start_detached_thread(stream_main, st)) {
		st->busy = false;
		free(st->buf);
		st->buf = NULL;
		return -EBUSY;
	}
	return 0;
}

/* A reader that has come past the middle of a stream's spans, and past
 * those the decoder that missed needed, is going on through the blob (a
 * large file, or the files of a directory in a row): the spans after them
 * are asked for now, while the stream may still bring its own, if a stream
 * is left for a read elsewhere.  Waiting for the reader to miss them left
 * the link idle for a round trip each time: on the shaped link of
 * tools/bench-link the plain image read through an index started in
 * 5.7 s instead of 7.0 s (foreign row).  rb->lock is held. */
static void stream_follow(struct remote_blob *rb, size_t i, uint64_t readahead)
{
	size_t idle = 0;
	struct stream *from = NULL;
	for (size_t k = 0; k < STREAMS; k++) {
		struct stream *st = &rb->streams[k];
		idle += !st->busy && st->client;
		if (i >= st->follow_from && i < st->end && !st->followed)
			from = st;
	}
	if (!from || idle < 2)
		return;
	from->followed = true;
	size_t next = from->end;
	const struct reach onward = { .readahead = readahead, .decode_end = 0 };
	if (next < rb->n_spans && !span_cached(rb, next) && !stream_bringing(rb, next))
		(void)stream_begin(rb, next, &onward);
}

/* A miss at span i: fetches it and the spans after it in one request on a
 * thread of its own, and returns once span i is stored (0) or the request
 * has passed it without (-EAGAIN: fetch it alone).  The decoder works on
 * each span while the next arrives: on the shaped link of tools/bench-link
 * the plain image read through an index started in 8.9 s instead of
 * 10.9 s (with miss_reach(); that alone was no faster).  -EBUSY when
 * every stream is under way (the caller fetches on its own connection).
 * rb->lock is held. */
static int stream_span(struct remote_blob *rb, size_t i, const struct reach *reach)
{
	struct stream *st = stream_bringing(rb, i);
	if (!st) {
		int r = stream_begin(rb, i, reach);
		if (r < 0)
			return r;
		st = stream_bringing(rb, i);
	}
	size_t first = st->first;
	while (st->busy && st->first == first && st->next <= i)
		pthread_cond_wait(&rb->stream_moved, &rb->lock);
	return rb->verified[i] ? 0 : -EAGAIN;
}

/* Fetches span i (and the missing ones after it) on the on-demand
 * connection, verifies each and stores it; rb->lock is held. */
static int fetch_span(struct remote_blob *rb, size_t i, uint64_t readahead)
{
	uint64_t total;
	size_t n = spans_to_fetch(rb, i, readahead, &total);
	_cleanup_free_ unsigned char *data = malloc((size_t)total);
	if (!data)
		return -ENOMEM;
	struct err err = { 0 };
	int r = registry_fetch_range(rb->client, rb->digest, (uint64_t)i * rb->span_size, (size_t)total, data, &err);
	if (r < 0)
		return -EIO;
	rb->bytes_fetched += total;
	rb->requests++;
	size_t len = (size_t)span_len(rb, i);
	/* Never keep or serve bytes the index does not vouch for. */
	if (!digest_matches(data, len, rb->span_digests[i]))
		return -EIO;
	for (size_t k = 1; k < n; k++) {
		const unsigned char *ahead = data + k * (size_t)rb->span_size;
		size_t ahead_len = (size_t)span_len(rb, i + k);
		if (digest_matches(ahead, ahead_len, rb->span_digests[i + k]) &&
		    store_span(rb, i + k, ahead, ahead_len) == 0)
			rb->verified[i + k] = 1;
	}
	if (store_span(rb, i, data, len) < 0) {
		/* The cache disk is full: the span is served from memory. */
		unsigned char *span = malloc(len ? len : 1);
		if (!span)
			return -ENOMEM;
		memcpy(span, data, len);
		free(rb->mem_data);
		rb->mem_data = span;
		rb->mem_span = i;
		rb->bytes_in_memory = len;
		return 0;
	}
	rb->verified[i] = 1;
	return 0;
}

static bool span_in_memory(const struct remote_blob *rb, size_t i)
{
	return rb->mem_data && rb->mem_span == i;
}

static int span_fd(struct remote_blob *rb, size_t i, const struct reach *reach)
{
	if (rb->open_fd >= 0 && rb->open_span == i)
		return rb->open_fd;
	int fd = open_cached_span(rb, i);
	if (fd >= 0) {
		rb->hits++;
	} else {
		rb->misses++;
		/* A streamed span may be gone already: a cache smaller than the
		 * request evicts its first spans (--cache-size). */
		int r = stream_span(rb, i, reach);
		if (r == -ENOMEM)
			return r;
		if (r == 0)
			fd = open_cached_span(rb, i);
		if (fd < 0) {
			if ((r = fetch_span(rb, i, reach->readahead)) < 0)
				return r;
			if (span_in_memory(rb, i))
				return -ENOSPC;
			if ((fd = open_cached_span(rb, i)) < 0)
				return fd;
		}
	}
	if (rb->open_fd >= 0)
		close(rb->open_fd);
	rb->open_fd = fd;
	rb->open_span = i;
	return fd;
}

static int remote_blob_read(struct layer *l, void *buf, size_t len, uint64_t off)
{
	struct remote_blob *rb = l->source;
	if (off > rb->blob_size || len > rb->blob_size - off)
		return -EIO;
	demand_note();
	pthread_mutex_lock(&rb->lock);
	int r = 0;
	unsigned char *out = buf;
	while (len > 0 && r == 0) {
		size_t i = (size_t)(off / rb->span_size);
		uint64_t in_span = off - (uint64_t)i * rb->span_size;
		size_t n = (size_t)(span_len(rb, i) - in_span < len ? span_len(rb, i) - in_span : len);
		struct reach reach = miss_reach(l, off);
		int fd = span_in_memory(rb, i) ? -ENOSPC : span_fd(rb, i, &reach);
		if (fd == -ENOSPC && span_in_memory(rb, i))
			memcpy(out, rb->mem_data + in_span, n);
		else if (fd < 0 || read_full_at(fd, out, n, (off_t)in_span) < 0)
			r = -EIO;
		else
			stream_follow(rb, i, reach.readahead);
		out += n;
		off += n;
		len -= n;
	}
	pthread_mutex_unlock(&rb->lock);
	return r;
}

/* Counts what a request brought, ahead of reads when prefetched. */
static void count_fetched(struct remote_blob *rb, uint64_t requests, uint64_t bytes, bool prefetched)
{
	pthread_mutex_lock(&rb->lock);
	rb->requests += requests;
	rb->bytes_fetched += bytes;
	if (prefetched)
		rb->bytes_prefetched += bytes;
	pthread_mutex_unlock(&rb->lock);
}

/* A window from the cache, verified and unpacked into out; -ENOENT when
 * it is not there whole. */
static int cached_window(const struct remote_blob *rb, const struct checkpoint *cp, unsigned char *out)
{
	_cleanup_free_ char *path = chunk_path(rb, cp->window_sha256);
	_cleanup_close_ int fd = path ? open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW) : -1;
	_cleanup_free_ unsigned char *stored = malloc(cp->window_stored);
	if (fd < 0 || !stored || read_full_at(fd, stored, cp->window_stored, 0) < 0 ||
	    window_unpack(cp, stored, cp->window_stored, out) < 0)
		return -ENOENT;
	cache_note_used(fd);
	return 0;
}

/* Checks a fetched window, unpacks it into out (when not NULL) and keeps
 * it in the cache. */
static int keep_window(struct remote_blob *rb, const struct checkpoint *cp, const unsigned char *stored,
		       unsigned char *out)
{
	unsigned char scratch[32768];
	int r = window_unpack(cp, stored, cp->window_stored, out ? out : scratch);
	_cleanup_free_ char *path = r == 0 ? chunk_path(rb, cp->window_sha256) : NULL;
	if (path && write_file_replace(path, stored, cp->window_stored) == 0)
		cache_note_stored(cp->window_stored);
	return r == 0 ? 0 : -EIO;
}

/* Keeps the windows that lie whole in data, the run [off, off+len) of the
 * windows blob, from checkpoint first on (they lie in checkpoint order). */
static void keep_windows(struct remote_blob *rb, const struct layer *l, size_t first, const unsigned char *data,
			 uint64_t off, uint64_t len)
{
	for (size_t c = first; c < l->n_checkpoints; c++) {
		const struct checkpoint *cp = &l->checkpoints[c];
		if (cp->window || !cp->window_len)
			continue;
		if (cp->window_at < off || cp->window_at + cp->window_stored > off + len)
			break;
		(void)keep_window(rb, cp, data + (cp->window_at - off), NULL);
	}
}

/* The window a decoder starts from at cp.  The decoder reads the bytes
 * after cp next: their request goes out first, on the stream's
 * connection, so that both arrive after one round trip, not two.  The
 * windows of the checkpoints whose bytes that request brings come along
 * (they lie next to each other): a later read that starts at one of them
 * then makes no request at all. */
static int remote_blob_read_window(struct layer *l, const struct checkpoint *cp, unsigned char *out)
{
	struct remote_blob *rb = l->source;
	/* remote_blob_attach() checked that every window lies in the blob. */
	if (!rb->window_client)
		return -EIO;
	if (cached_window(rb, cp, out) == 0)
		return 0;
	uint64_t from = cp->bits ? cp->in - 1 : cp->in;
	struct reach reach = miss_reach(l, from);
	pthread_mutex_lock(&rb->lock);
	size_t i = (size_t)(from / rb->span_size);
	if (!span_cached(rb, i) && !span_in_memory(rb, i) && !stream_bringing(rb, i))
		(void)stream_begin(rb, i, &reach);
	pthread_mutex_unlock(&rb->lock);
	size_t first = (size_t)(cp - l->checkpoints), last = first;
	uint64_t len = cp->window_stored;
	while (last + 1 < l->n_checkpoints) {
		const struct checkpoint *next = &l->checkpoints[last + 1];
		if (next->in >= from + reach.readahead || next->window || !next->window_len ||
		    next->window_at != cp->window_at + len)
			break;
		len += next->window_stored;
		last++;
	}
	_cleanup_free_ unsigned char *stored = malloc((size_t)len);
	if (!stored)
		return -ENOMEM;
	struct err err = { 0 };
	pthread_mutex_lock(&rb->window_lock);
	int r = registry_fetch_range(rb->window_client, rb->windows_digest, cp->window_at, (size_t)len, stored, &err);
	pthread_mutex_unlock(&rb->window_lock);
	if (r < 0)
		return -EIO;
	count_fetched(rb, 1, len, false);
	keep_windows(rb, l, first + 1, stored, cp->window_at, len);
	return keep_window(rb, cp, stored, out);
}

static bool span_present(struct remote_blob *rb, size_t i)
{
	pthread_mutex_lock(&rb->lock);
	int fd = open_cached_span(rb, i);
	pthread_mutex_unlock(&rb->lock);
	if (fd >= 0)
		close(fd);
	return fd >= 0;
}

/* Fetches the spans of [off, end) that are not cached, each run of missing
 * spans (up to SPAN_READAHEAD_MAX_BYTES) in one request: a request per
 * span cost a round trip per 256 KiB.  With yield, each run waits until
 * on-demand reads pause. */
static int prefetch_spans(struct remote_blob *rb, struct registry_client *client, uint64_t off, uint64_t end,
			  const atomic_bool *stop, bool yield)
{
	if (end > rb->blob_size)
		end = rb->blob_size;
	if (off >= end)
		return 0;
	size_t last = (size_t)((end - 1) / rb->span_size);
	for (size_t i = (size_t)(off / rb->span_size); i <= last;) {
		if (atomic_load(stop))
			return -ECANCELED;
		if (span_present(rb, i)) {
			i++;
			continue;
		}
		size_t run = 1;
		uint64_t len = span_len(rb, i);
		while (i + run <= last && len + span_len(rb, i + run) <= SPAN_READAHEAD_MAX_BYTES &&
		       !span_present(rb, i + run))
			len += span_len(rb, i + run++);
		/* The connection is ours alone; the lock only covers the
		 * bookkeeping, so on-demand reads never wait behind this fetch
		 * for long.  Two fetches of one span store the same bytes. */
		if (yield)
			demand_wait_quiet(stop);
		_cleanup_free_ unsigned char *data = malloc((size_t)len);
		struct err err = { 0 };
		if (data && registry_fetch_range(client, rb->digest, (uint64_t)i * rb->span_size, (size_t)len, data,
						 &err) == 0) {
			count_fetched(rb, 1, len, true);
			for (size_t k = 0, at = 0; k < run; at += span_len(rb, i + k), k++)
				if (digest_matches(data + at, span_len(rb, i + k), rb->span_digests[i + k]))
					(void)store_span(rb, i + k, data + at, span_len(rb, i + k));
		}
		i += run;
	}
	return 0;
}

struct blob_range {
	uint64_t in, end;
	const struct checkpoint *from, *to; /* where decoding it starts, and the last it crosses */
	uint32_t rank;                      /* the first file listed there, by its rank */
};

static int by_start(const void *a, const void *b)
{
	const struct blob_range *x = a, *y = b;
	return x->in < y->in ? -1 : x->in > y->in;
}

static int by_rank(const void *a, const void *b)
{
	const struct blob_range *x = a, *y = b;
	return x->rank != y->rank ? (x->rank < y->rank ? -1 : 1) : by_start(a, b);
}

/* Workers that fetch a prefetch list's runs, each on a connection of its
 * own: one after another, each run cost a round trip before the next
 * began, and the workload overtook them. */
#define LISTED_WORKERS 4

struct listed_runs {
	struct remote_blob *rb;
	const struct blob_range *runs;
	size_t n;
	atomic_size_t next; /* the first run no worker took yet */
	const atomic_bool *stop;
};

struct listed_worker {
	struct listed_runs *job;
	struct registry_client *client;
	struct background_job thread;
};

static void *listed_worker_main(void *arg)
{
	struct listed_worker *w = arg;
	struct listed_runs *job = w->job;
	for (size_t i; (i = atomic_fetch_add(&job->next, 1)) < job->n;)
		if (prefetch_spans(job->rb, w->client, job->runs[i].in, job->runs[i].end, job->stop, false) < 0)
			break;
	return NULL;
}

/* The runs in the order of their files' first reads (the list's order),
 * taken by up to LISTED_WORKERS workers: the prefetch connection and
 * copies of it. */
static int prefetch_runs(struct remote_blob *rb, const struct blob_range *runs, size_t n, const atomic_bool *stop)
{
	struct listed_runs job = { .rb = rb, .runs = runs, .n = n, .stop = stop };
	struct listed_worker workers[LISTED_WORKERS] = { { .job = &job, .client = rb->prefetch_client } };
	size_t n_workers = 1;
	for (; n_workers < LISTED_WORKERS && n_workers < n; n_workers++) {
		workers[n_workers] =
		    (struct listed_worker){ .job = &job, .client = registry_client_dup(rb->prefetch_client) };
		if (!workers[n_workers].client)
			break;
	}
	for (size_t i = 0; i < n_workers; i++)
		background_job_start(&workers[i].thread, listed_worker_main, &workers[i]);
	for (size_t i = 0; i < n_workers; i++) {
		background_job_join(&workers[i].thread);
		if (i > 0)
			registry_client_free(workers[i].client);
	}
	return atomic_load(stop) ? -ECANCELED : 0;
}

/* Ranges closer than this are fetched as one: the gap costs less than the
 * round trip of another request on a real link. */
#define PREFETCH_MERGE_GAP (256u << 10)

/* Runs of windows one request asks for at most: each is a range of its
 * Range header. */
#define WINDOWS_PER_REQUEST 256

/* The windows of the checkpoints in the merged ranges (a read in the
 * middle of a listed part starts at the checkpoint before it), one range
 * of the windows blob each, a few requests of many ranges, before the
 * spans: reading a prefetched file then makes no request of its own. */
static int prefetch_windows(struct layer *l, const struct blob_range *ranges, size_t n, const atomic_bool *stop)
{
	struct remote_blob *rb = l->source;
	if (!rb->window_prefetch_client)
		return 0;
	_cleanup_free_ struct byterange *want = calloc(WINDOWS_PER_REQUEST, sizeof(*want));
	_cleanup_free_ size_t *first_cp = calloc(WINDOWS_PER_REQUEST, sizeof(*first_cp));
	if (!want || !first_cp)
		return -ENOMEM;
	uint64_t done = 0; /* the windows blob up to here is asked for already */
	for (size_t i = 0; i < n;) {
		size_t k = 0;
		for (; i < n && k < WINDOWS_PER_REQUEST; i++) {
			size_t a = (size_t)(ranges[i].from - l->checkpoints),
			       b = (size_t)(ranges[i].to - l->checkpoints);
			while (a <= b && (l->checkpoints[a].window || !l->checkpoints[a].window_len ||
					  l->checkpoints[a].window_at < done))
				a++;
			if (a > b)
				continue;
			const struct checkpoint *last = &l->checkpoints[b];
			first_cp[k] = a;
			want[k++] = (struct byterange){ .off = l->checkpoints[a].window_at,
							.len = last->window_at + last->window_stored -
							       l->checkpoints[a].window_at };
			done = last->window_at + last->window_stored;
		}
		if (atomic_load(stop))
			return -ECANCELED;
		size_t total = 0;
		for (size_t j = 0; j < k; j++)
			total += want[j].len;
		_cleanup_free_ unsigned char *buf = malloc(total ? total : 1);
		if (!buf)
			return -ENOMEM;
		for (size_t j = 0, at = 0; j < k; at += want[j++].len)
			want[j].buf = buf + at;
		struct err err = { 0 };
		int requests =
		    k ? registry_fetch_ranges(rb->window_prefetch_client, rb->windows_digest, want, k, &err) : 0;
		if (requests < 0)
			continue; /* the reads fetch their windows themselves */
		count_fetched(rb, (uint64_t)requests, total, true);
		for (size_t j = 0; j < k; j++)
			keep_windows(rb, l, first_cp[j], want[j].buf, want[j].off, want[j].len);
	}
	return 0;
}

/* A plain layer's landmarks come from a prefetch list: the spans the
 * decoder will read for each listed file, or for the parts listed, merged
 * into few long requests. */
static int prefetch_listed(struct layer *l, const atomic_bool *stop)
{
	struct blob_range *ranges = NULL;
	size_t n = 0, cap = 0;
	for (size_t i = 0; i < l->n_entries; i++) {
		const struct entry *e = &l->entries[i];
		uint32_t n_parts = e->prefetch_parts ? e->n_prefetch_parts : 1;
		for (uint32_t k = 0; e->prefetch && k < e->n_extents; k++) {
			const struct extent *x = &e->extents[k];
			for (uint32_t p = 0; p < n_parts; p++) {
				uint64_t from = x->file_off, to = x->file_off + x->len;
				if (e->prefetch_parts) {
					const struct file_part *part = &e->prefetch_parts[p];
					from = part->off > from ? part->off : from;
					to = part->off + part->len < to ? part->off + part->len : to;
				}
				if (from >= to)
					continue;
				if (n == cap) {
					struct blob_range *more =
					    realloc(ranges, (cap = cap ? 2 * cap : 256) * sizeof(*more));
					if (!more) {
						free(ranges);
						return -ENOMEM;
					}
					ranges = more;
				}
				uint64_t at = x->stream_off + (from - x->file_off);
				layer_compressed_range(l, at, to - from, &ranges[n].in, &ranges[n].end);
				ranges[n].from = layer_checkpoint_before(l, at);
				ranges[n].to = layer_checkpoint_before(l, at + (to - from) - 1);
				ranges[n].rank = e->prefetch_rank ? e->prefetch_rank : UINT32_MAX;
				n++;
			}
		}
	}
	if (n > 1)
		qsort(ranges, n, sizeof(*ranges), by_start);
	size_t n_merged = 0;
	for (size_t i = 0; i < n;) {
		struct blob_range merged = ranges[i++];
		while (i < n && ranges[i].in <= merged.end + PREFETCH_MERGE_GAP) {
			if (ranges[i].end > merged.end)
				merged.end = ranges[i].end;
			if (ranges[i].rank < merged.rank)
				merged.rank = ranges[i].rank;
			if (ranges[i].to > merged.to)
				merged.to = ranges[i].to;
			i++;
		}
		ranges[n_merged++] = merged;
	}
	if (n_merged == 0)
		return 0; /* ranges is NULL: nothing of this layer is listed */
	int r = prefetch_windows(l, ranges, n_merged, stop);
	if (r != -ECANCELED) {
		qsort(ranges, n_merged, sizeof(*ranges), by_rank);
		r = prefetch_runs(l->source, ranges, n_merged, stop);
	}
	free(ranges);
	return r == -ECANCELED ? r : 0;
}

/* Every window kept apart that the cache lacks, in runs of up to
 * SPAN_READAHEAD_MAX_BYTES of the windows blob (they lie there in
 * checkpoint order), each run once on-demand reads pause. */
static int prefetch_all_windows(struct layer *l, const atomic_bool *stop)
{
	struct remote_blob *rb = l->source;
	unsigned char scratch[32768];
	for (size_t i = 0; rb->window_prefetch_client && i < l->n_checkpoints;) {
		const struct checkpoint *first = &l->checkpoints[i];
		if (first->window || !first->window_len || cached_window(rb, first, scratch) == 0) {
			i++;
			continue;
		}
		size_t run = 1;
		uint64_t len = first->window_stored;
		for (; i + run < l->n_checkpoints; run++) {
			const struct checkpoint *next = &l->checkpoints[i + run];
			if (next->window || !next->window_len || next->window_at != first->window_at + len ||
			    len + next->window_stored > SPAN_READAHEAD_MAX_BYTES ||
			    cached_window(rb, next, scratch) == 0)
				break;
			len += next->window_stored;
		}
		demand_wait_quiet(stop);
		if (atomic_load(stop))
			return -ECANCELED;
		_cleanup_free_ unsigned char *data = malloc((size_t)len);
		struct err err = { 0 };
		if (data && registry_fetch_range(rb->window_prefetch_client, rb->windows_digest, first->window_at, len,
						 data, &err) == 0) {
			count_fetched(rb, 1, len, true);
			keep_windows(rb, l, i, data, first->window_at, len);
		}
		i += run;
	}
	return 0;
}

static int remote_blob_prefetch(struct layer *l, bool only_landmark, const atomic_bool *stop)
{
	struct remote_blob *rb = l->source;
	if (only_landmark)
		return prefetch_listed(l, stop);
	int r = prefetch_all_windows(l, stop);
	return r < 0 ? r : prefetch_spans(rb, rb->prefetch_client, 0, rb->blob_size, stop, true);
}

static void remote_blob_stats(struct layer *l, struct layer_stats *s)
{
	struct remote_blob *rb = l->source;
	pthread_mutex_lock(&rb->lock);
	s->bytes_fetched = rb->bytes_fetched;
	s->requests = rb->requests;
	s->chunk_hits = rb->hits;
	s->chunk_misses = rb->misses;
	s->bytes_prefetched = rb->bytes_prefetched;
	s->bytes_in_memory = rb->bytes_in_memory;
	pthread_mutex_unlock(&rb->lock);
}

static void remote_blob_free(struct remote_blob *rb)
{
	if (!rb)
		return;
	/* A stream's thread uses rb until it has said it is done. */
	pthread_mutex_lock(&rb->lock);
	for (size_t k = 0; k < STREAMS; k++)
		while (rb->streams[k].busy)
			pthread_cond_wait(&rb->stream_moved, &rb->lock);
	pthread_mutex_unlock(&rb->lock);
	for (size_t k = 0; k < STREAMS; k++)
		registry_client_free(rb->streams[k].client);
	registry_client_free(rb->window_client);
	registry_client_free(rb->window_prefetch_client);
	pthread_mutex_destroy(&rb->window_lock);
	if (rb->open_fd >= 0)
		close(rb->open_fd);
	free(rb->mem_data);
	registry_client_free(rb->client);
	registry_client_free(rb->prefetch_client);
	free(rb->span_digests);
	free(rb->verified);
	free(rb->cache_dir);
	pthread_mutex_destroy(&rb->lock);
	pthread_cond_destroy(&rb->stream_moved);
	free(rb);
}

static void remote_blob_layer_free(struct layer *l)
{
	tar_stream_release(l);
	remote_blob_free(l->source);
	l->source = NULL;
}

static const struct layer_source_ops remote_blob_ops = {
	.read_blob = remote_blob_read,
	.read_window = remote_blob_read_window,
	.read_entry = tar_stream_read_entry,
	.prefetch = remote_blob_prefetch,
	.get_stats = remote_blob_stats,
	.free = remote_blob_layer_free,
};

int remote_blob_attach(struct layer *l, struct registry_client *client, struct registry_client *prefetch_client,
		       const char *cache_dir, const struct span_table *spans, const struct windows_blob_ref *windows)
{
	const char *digest = l->digest;
	uint64_t blob_size = l->blob_size;
	if (spans->blob_size != blob_size || spans->span_size == 0 ||
	    spans->n_spans != (blob_size + spans->span_size - 1) / spans->span_size)
		return -EINVAL;
	for (size_t i = 0; i < l->n_checkpoints; i++) {
		const struct checkpoint *cp = &l->checkpoints[i];
		if (!cp->window && cp->window_len &&
		    (!windows || cp->window_at > windows->size || cp->window_stored > windows->size - cp->window_at))
			return -EBADMSG;
	}
	struct remote_blob *rb = calloc(1, sizeof(*rb));
	if (!rb)
		return -ENOMEM;
	pthread_mutex_init(&rb->lock, NULL);
	pthread_mutex_init(&rb->window_lock, NULL);
	pthread_cond_init(&rb->stream_moved, NULL);
	snprintf(rb->digest, sizeof(rb->digest), "%s", digest);
	rb->blob_size = blob_size;
	rb->span_size = spans->span_size;
	rb->n_spans = spans->n_spans;
	rb->open_fd = -1;
	rb->span_digests = malloc(spans->n_spans * 32 + 1);
	rb->verified = calloc(spans->n_spans + 1, 1);
	rb->cache_dir = strdup(cache_dir);
	_cleanup_free_ char *chunks = strdup_printf("%s/chunks/sha256", cache_dir);
	if (!rb->span_digests || !rb->verified || !rb->cache_dir || !chunks || mkdir_parents(chunks, 0700) < 0) {
		remote_blob_free(rb);
		return -ENOMEM;
	}
	memcpy(rb->span_digests, spans->digests, spans->n_spans * 32);
	rb->client = client;
	/* Without them, misses are fetched whole on the one connection. */
	for (size_t k = 0; k < STREAMS; k++) {
		rb->streams[k].rb = rb;
		rb->streams[k].client = registry_client_dup(client);
	}
	rb->prefetch_client = prefetch_client;
	if (windows) {
		snprintf(rb->windows_digest, sizeof(rb->windows_digest), "%s", windows->digest);
		rb->windows_size = windows->size;
		rb->window_client = windows->client;
		/* Without it, the prefetch leaves windows to the reads. */
		rb->window_prefetch_client = registry_client_dup(windows->client);
	}
	l->source = rb;
	l->ops = &remote_blob_ops;
	return 0;
}
