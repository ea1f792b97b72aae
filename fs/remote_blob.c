/* A layer blob read from the registry in fixed spans, for plain gzip, zstd
 * and tar layers that have a pushed imgfs index.  The index's span table
 * gives the sha256 of every span of the compressed blob: a span is fetched
 * with one Range request, verified, kept in the chunk cache under its
 * digest, and only then decoded.  The decoders above read the blob through
 * remote_blob_read() as they would read a local file. */
#include "remote_blob_internal.h"

#include "demand.h"
#include "elf_head.h"
#include "registry.h"
#include "tar_stream.h"

/* A library is mapped, and its pages faulted in here and there: what its
 * loading touches (headers, symbols, relocations) is a small part of a
 * large one, which is therefore not read ahead from its head.  numpy's
 * start read 0.3 MB of the 3.3 MB that libopenblas's first 4 MiB of blob
 * brought, and 0.3 MB of liblapack's 2.9 MB; the libraries under 2 MiB of
 * blob read ahead (libcrypto 1.5 MB, numpy's core module 1.3 MB) it read
 * nearly whole (tools/bench-link, foreign row: 3.75-3.85 s and 36.5 MB
 * against 3.93-3.98 s and 39.1 MB with 4 MiB; 1.5 MiB was no better). */
#define LIBRARY_READ_AHEAD_MAX_BYTES (2u << 20)

/* A miss also takes the spans after it that the cache lacks, up to this
 * many bytes in all: a decoder reads on from where it started, and over a
 * link with a real round trip a request costs more than 256 KiB. */
#define SPAN_READAHEAD_BYTES (512u << 10)
/* ... or up to the next checkpoint, when that is further but not beyond
 * SPAN_READAHEAD_MAX_BYTES: a read decodes the stream from a checkpoint to
 * the next (2 MiB of tar, or 256 KiB with windows apart; kept decoded in
 * memory, tar_stream.c), so one request takes it all instead of one every
 * 512 KiB.  The bound is for an index whose checkpoints lie far apart
 * (incompressible data is a little over 2 MiB). */

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
	size_t lo = layer_checkpoints_before_in(l, off + DECODER_INPUT_PIECE + 1);
	uint64_t to_next = lo < l->n_checkpoints ? l->checkpoints[lo].in - off + DECODER_INPUT_PIECE : 0;
	struct reach r = { .readahead = to_next, .decode_end = off + to_next };
	if (r.readahead > SPAN_READAHEAD_MAX_BYTES)
		r.readahead = SPAN_READAHEAD_MAX_BYTES;
	else if (r.readahead < SPAN_READAHEAD_BYTES)
		r.readahead = SPAN_READAHEAD_BYTES;
	return r;
}

/* The end of the large file whose blob range holds off, 0 if none is
 * known; rb->lock is held. */
static uint64_t large_file_end(const struct remote_blob *rb, uint64_t off)
{
	for (size_t k = 0; k < LARGE_FILES_KEPT; k++)
		if (off >= rb->large_files[k].in && off < rb->large_files[k].end)
			return rb->large_files[k].end;
	return 0;
}

/* A miss inside a large file reads ahead to the file's end at most (what
 * follows it is another file, whose reads fetch it), but never less than
 * its decoder needs.  rb->lock is held. */
static void reach_within_file(const struct remote_blob *rb, uint64_t off, struct reach *reach)
{
	uint64_t end = large_file_end(rb, off);
	if (end && off + reach->readahead > end)
		reach->readahead = end > reach->decode_end ? end - off : reach->decode_end - off;
}

/* How many spans from i on a miss fetches: i and the missing ones after
 * it that no other request brings, until they hold readahead bytes (a
 * start reads its users, groups and program at once, and the read of the
 * first span asked for the next 512 KiB again, on the same link). */
static size_t spans_to_fetch(struct remote_blob *rb, size_t i, uint64_t readahead, uint64_t *ret_total)
{
	size_t n = 1;
	uint64_t total = rb_span_len(rb, i);
	while (i + n < rb->n_spans && total < readahead && !rb_span_cached(rb, i + n) &&
	       !rb_background_bringing(rb, i + n) && !rb_stream_bringing(rb, i + n))
		total += rb_span_len(rb, i + n++);
	*ret_total = total;
	return n;
}

static void read_ahead_waiting_begin(struct remote_blob *rb);

static void *stream_main(void *arg)
{
	struct stream *st = arg;
	struct remote_blob *rb = st->rb;
	uint64_t off = (uint64_t)st->first * rb->span_size, end = (uint64_t)st->end * rb->span_size;
	if (end > rb->blob_size)
		end = rb->blob_size;
	struct err err = { 0 };
	/* A span it did not bring is fetched by its reader. */
	(void)registry_fetch_range_streaming(st->client, rb->digest, off, (size_t)(end - off), st->buf,
					     rb_stream_arrived, st, &err);
	pthread_mutex_lock(&rb->lock);
	rb_note_transfer(rb, st);
	st->busy = false;
	free(st->buf);
	st->buf = NULL;
	pthread_cond_broadcast(&rb->stream_moved);
	read_ahead_waiting_begin(rb);
	pthread_mutex_unlock(&rb->lock);
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
	rb_stream_asked(st);
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

/* Whether a stream can start on a guess with one more left free for a
 * read elsewhere; rb->lock is held. */
static bool stream_to_spare(const struct remote_blob *rb)
{
	size_t idle = 0;
	for (size_t k = 0; k < STREAMS; k++)
		idle += !rb->streams[k].busy && rb->streams[k].client;
	return idle >= 2;
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
	struct stream *from = NULL;
	for (size_t k = 0; k < STREAMS; k++) {
		struct stream *st = &rb->streams[k];
		if (i >= st->follow_from && i < st->end && !st->followed)
			from = st;
	}
	if (!from || !stream_to_spare(rb))
		return;
	from->followed = true;
	uint64_t file_end = large_file_end(rb, (uint64_t)from->first * rb->span_size);
	if (file_end && (uint64_t)from->end * rb->span_size >= file_end)
		return; /* what follows is another file */
	size_t next = from->end;
	const struct reach onward = { .readahead = readahead, .decode_end = 0 };
	if (next < rb->n_spans && !rb_span_cached(rb, next) && !rb_stream_bringing(rb, next))
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
	struct stream *st = rb_stream_bringing(rb, i);
	if (!st) {
		int r = stream_begin(rb, i, reach);
		if (r < 0)
			return r;
		st = rb_stream_bringing(rb, i);
	}
	size_t first = st->first;
	while (st->busy && st->first == first && st->next <= i)
		pthread_cond_wait(&rb->stream_moved, &rb->lock);
	return rb->verified[i] ? 0 : -EAGAIN;
}

static bool span_in_memory(const struct remote_blob *rb, size_t i)
{
	return rb->mem_data && rb->mem_span == i;
}

/* Fetches span i (and the missing ones after it) on the on-demand
 * connection, verifies each and stores it; rb->lock is held, and let go
 * while the bytes come.  0 also when another fetch brought span i
 * meanwhile. */
static int fetch_span(struct remote_blob *rb, size_t i, uint64_t readahead)
{
	if (rb->client_busy) {
		while (rb->client_busy)
			pthread_cond_wait(&rb->stream_moved, &rb->lock);
		if (span_in_memory(rb, i))
			return 0;
		int fd = rb_open_cached_span(rb, i);
		if (fd >= 0) {
			close(fd);
			return 0;
		}
	}
	uint64_t total;
	size_t n = spans_to_fetch(rb, i, readahead, &total);
	_cleanup_free_ unsigned char *data = malloc((size_t)total);
	if (!data)
		return -ENOMEM;
	struct err err = { 0 };
	rb->client_busy = true;
	pthread_mutex_unlock(&rb->lock);
	int r = registry_fetch_range(rb->client, rb->digest, (uint64_t)i * rb->span_size, (size_t)total, data, &err);
	pthread_mutex_lock(&rb->lock);
	rb->client_busy = false;
	pthread_cond_broadcast(&rb->stream_moved);
	if (r < 0)
		return -EIO;
	rb->bytes_fetched += total;
	rb->requests++;
	size_t len = (size_t)rb_span_len(rb, i);
	/* Never keep or serve bytes the index does not vouch for. */
	if (!rb_digest_matches(data, len, rb->span_digests[i]))
		return -EIO;
	for (size_t k = 1; k < n; k++) {
		const unsigned char *ahead = data + k * (size_t)rb->span_size;
		size_t ahead_len = (size_t)rb_span_len(rb, i + k);
		if (rb_digest_matches(ahead, ahead_len, rb->span_digests[i + k]) &&
		    rb_store_span(rb, i + k, ahead, ahead_len) == 0)
			rb->verified[i + k] = 1;
	}
	if (rb_store_span(rb, i, data, len) < 0) {
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

/* The first span from the one holding blob offset in on, before stop,
 * that is neither here nor coming; stop if none.  rb->lock is held. */
static size_t first_span_missing(struct remote_blob *rb, uint64_t in, size_t stop)
{
	size_t i = (size_t)(in / rb->span_size);
	while (i < stop && (rb_span_cached(rb, i) || rb_stream_bringing(rb, i)))
		i++;
	return i;
}

/* Starts the read-ahead of the file whose head was read last, when a
 * stream is free for it with one more left for a read elsewhere: a start
 * reads its users, groups and program at once, and their reads held two
 * of the three streams when the program's head was read, so its rest came
 * a fault and a round trip at a time (tools/bench-link, l-for row).
 * rb->lock is held. */
static void read_ahead_waiting_begin(struct remote_blob *rb)
{
	struct blob_extent want = rb->read_ahead_waiting;
	if (want.end <= want.in || !stream_to_spare(rb))
		return;
	rb->read_ahead_waiting = (struct blob_extent){ 0, 0 };
	size_t stop = (size_t)((want.end - 1) / rb->span_size) + 1, i = first_span_missing(rb, want.in, stop);
	const struct reach rest = { .readahead = (uint64_t)(stop - i) * rb->span_size, .decode_end = 0 };
	if (i < stop && stream_begin(rb, i, &rest) == 0) {
		struct stream *st = rb_stream_bringing(rb, i);
		rb->bytes_read_ahead += st ? (uint64_t)(st->end - st->first) * rb->span_size : 0;
	}
}

/* The head of e was read: a program, a library the loader maps or a data
 * file is read on from there, and a miss at a time costs a round trip
 * each (tools/bench-link's numpy start read python3.11, libcrypto and
 * numpy's core module in 8 to 15 requests each, one after another).  The
 * rest of the file, up to SPAN_READAHEAD_MAX_BYTES of the blob, goes out
 * in one request, on a stream of its own once one more stays free for a
 * read elsewhere (not for a large library), and the windows
 * of the checkpoints it crosses on the guess's connection: a program or
 * library is mapped and faulted in here and there, and each fault at a
 * checkpoint whose window nothing fetched was a round trip of its own
 * (python3.11's start made two, liblapack's and libcrypto's one each).
 * Files of the prefetch list are left to the prefetch. */
static void remote_blob_read_ahead_file(struct layer *l, const struct entry *e)
{
	struct remote_blob *rb = l->source;
	if (e->n_extents == 0 || e->prefetch)
		return;
	const struct extent *first = &e->extents[0], *last = &e->extents[e->n_extents - 1];
	uint64_t in, end;
	layer_compressed_range(l, first->stream_off, last->stream_off + last->len - first->stream_off, &in, &end);
	if (end <= in)
		return;
	pthread_mutex_lock(&rb->lock);
	if (end - in > SPAN_READAHEAD_BYTES)
		rb->large_files[rb->large_files_next++ % LARGE_FILES_KEPT] = (struct blob_extent){ in, end };
	if (end - in > LIBRARY_READ_AHEAD_MAX_BYTES && elf_name_is_library(path_base_name(e->path))) {
		pthread_mutex_unlock(&rb->lock);
		return;
	}
	if (end - in > SPAN_READAHEAD_MAX_BYTES)
		end = in + SPAN_READAHEAD_MAX_BYTES;
	size_t stop = (size_t)((end - 1) / rb->span_size) + 1;
	if (first_span_missing(rb, in, stop) == stop) {
		pthread_mutex_unlock(&rb->lock);
		return;
	}
	rb->read_ahead_waiting = (struct blob_extent){ in, end };
	read_ahead_waiting_begin(rb);
	pthread_mutex_unlock(&rb->lock);
	/* A data file is read through: its decoder needs no window. */
	if (elf_may_be_object(e->mode, e->path))
		remote_guess_windows(rb->guess, e, end);
}

/* The guess goes out beside the read's request, not a round trip after. */
static void remote_blob_first_read_begins(struct layer *l, const struct entry *e)
{
	remote_guess_note(((struct remote_blob *)l->source)->guess, e);
}

/* How long a read waits for a background request that brings its span
 * before it fetches the span itself: a request is at most 4 MiB, under a
 * second even when the prefetch's workers share a 100 Mbit/s link; past
 * this it is stalled or crawling (as chunk_fetch.c's). */
#define BACKGROUND_PATIENCE_MS 1500

/* Waits for the background request that brings span i, if one does; true
 * once it has passed span i.  rb->lock is held. */
static bool background_brought(struct remote_blob *rb, size_t i)
{
	struct timespec due;
	deadline_after(CLOCK_REALTIME, &due, BACKGROUND_PATIENCE_MS);
	bool waited = false;
	for (;;) {
		const struct stream *bg = rb_background_bringing(rb, i);
		if (!bg || bg->next > i)
			return bg || waited;
		waited = true;
		if (pthread_cond_timedwait(&rb->stream_moved, &rb->lock, &due) == ETIMEDOUT) {
			rb->reads_ahead_of_prefetch++;
			return false;
		}
	}
}

static int span_fd(struct remote_blob *rb, size_t i, const struct reach *reach)
{
	if (rb->open_fd >= 0 && rb->open_span == i)
		return rb->open_fd;
	int fd = rb_open_cached_span(rb, i);
	if (fd < 0 && background_brought(rb, i))
		fd = rb_open_cached_span(rb, i);
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
			fd = rb_open_cached_span(rb, i);
		if (fd < 0) {
			if ((r = fetch_span(rb, i, reach->readahead)) < 0)
				return r;
			if (span_in_memory(rb, i))
				return -ENOSPC;
			if ((fd = rb_open_cached_span(rb, i)) < 0)
				return fd;
		}
	}
	if (rb->open_fd >= 0)
		close(rb->open_fd);
	rb->open_fd = fd;
	rb->open_span = i;
	return fd;
}

/* Bytes [off, off+len) of the blob into out, or only here (in the cache,
 * verified) when out is NULL. */
static int blob_bytes(struct layer *l, unsigned char *out, size_t len, uint64_t off)
{
	struct remote_blob *rb = l->source;
	if (off > rb->blob_size || len > rb->blob_size - off)
		return -EIO;
	demand_note();
	pthread_mutex_lock(&rb->lock);
	int r = 0;
	while (len > 0 && r == 0) {
		size_t i = (size_t)(off / rb->span_size);
		uint64_t in_span = off - (uint64_t)i * rb->span_size;
		size_t n = (size_t)(rb_span_len(rb, i) - in_span < len ? rb_span_len(rb, i) - in_span : len);
		struct reach reach = miss_reach(l, off);
		reach_within_file(rb, off, &reach);
		int fd = span_in_memory(rb, i) ? -ENOSPC : span_fd(rb, i, &reach);
		if (fd == -ENOSPC && span_in_memory(rb, i)) {
			if (out)
				memcpy(out, rb->mem_data + in_span, n);
		} else if (fd < 0 || (out && read_full_at(fd, out, n, (off_t)in_span) < 0))
			r = -EIO;
		else
			stream_follow(rb, i, reach.readahead);
		if (out)
			out += n;
		off += n;
		len -= n;
	}
	pthread_mutex_unlock(&rb->lock);
	return r;
}

static int remote_blob_read(struct layer *l, void *buf, size_t len, uint64_t off)
{
	return blob_bytes(l, buf, len, off);
}

static int remote_blob_bring(struct layer *l, uint64_t in, uint64_t end)
{
	return in <= end ? blob_bytes(l, NULL, (size_t)(end - in), in) : -EIO;
}

/* The window a decoder starts from at cp.  The decoder reads the bytes
 * after cp next: their request goes out first, on the stream's
 * connection, so that both arrive after one round trip, not two.  Only
 * cp's own window is fetched: a later read at a checkpoint whose bytes
 * that request brings decodes on from cp instead (tar_stream.c), which
 * costs milliseconds where the windows of a miss's read-ahead were about
 * 50 KB each time on the link (tools/bench-link, foreign row: 2 MB of
 * 41.8, 0.2 s). */
static bool remote_blob_window_at_hand(struct layer *l, const struct checkpoint *cp)
{
	return rb_window_at_hand(l->source, cp);
}

static bool remote_blob_bytes_coming(struct layer *l, uint64_t in, uint64_t end)
{
	struct remote_blob *rb = l->source;
	pthread_mutex_lock(&rb->lock);
	bool coming = true;
	for (size_t i = (size_t)(in / rb->span_size); coming && i < rb->n_spans && (uint64_t)i * rb->span_size < end;
	     i++)
		coming = span_in_memory(rb, i) || rb_stream_bringing(rb, i) || rb_background_bringing(rb, i) ||
			 rb_span_cached(rb, i);
	pthread_mutex_unlock(&rb->lock);
	return coming;
}

/* A window connection for cp, marked as fetching it: its index; -EAGAIN
 * after a wait, in which another reader may have brought cp (look in the
 * cache again first). */
static int window_connection_take(struct remote_blob *rb, const struct checkpoint *cp)
{
	pthread_mutex_lock(&rb->window_lock);
	bool coming = false;
	int taken = -1;
	for (int k = 0; k < WINDOW_CONNECTIONS; k++) {
		if (rb->window_fetching[k] == cp)
			coming = true;
		else if (!rb->window_fetching[k] && rb->window_clients[k] && taken < 0)
			taken = k;
	}
	if (!coming && taken >= 0) {
		rb->window_fetching[taken] = cp;
	} else {
		pthread_cond_wait(&rb->window_moved, &rb->window_lock);
		taken = -EAGAIN;
	}
	pthread_mutex_unlock(&rb->window_lock);
	return taken;
}

static void window_connection_give(struct remote_blob *rb, int k)
{
	pthread_mutex_lock(&rb->window_lock);
	rb->window_fetching[k] = NULL;
	pthread_cond_broadcast(&rb->window_moved);
	pthread_mutex_unlock(&rb->window_lock);
}

static int remote_blob_read_window(struct layer *l, const struct checkpoint *cp, unsigned char *out)
{
	struct remote_blob *rb = l->source;
	/* remote_blob_attach() checked that every window lies in the blob. */
	if (!rb->window_clients[0])
		return -EIO;
	if (rb_cached_window(rb, cp, out) == 0)
		return 0;
	uint64_t from = cp->bits ? cp->in - 1 : cp->in;
	struct reach reach = miss_reach(l, from);
	pthread_mutex_lock(&rb->lock);
	size_t i = (size_t)(from / rb->span_size);
	if (!rb_span_cached(rb, i) && !span_in_memory(rb, i) && !rb_stream_bringing(rb, i))
		(void)stream_begin(rb, i, &reach);
	pthread_mutex_unlock(&rb->lock);
	_cleanup_free_ unsigned char *stored = malloc(cp->window_stored);
	if (!stored)
		return -ENOMEM;
	int k;
	while ((k = window_connection_take(rb, cp)) < 0)
		if (rb_cached_window(rb, cp, out) == 0)
			return 0;
	struct err err = { 0 };
	int r = registry_fetch_range(rb->window_clients[k], rb->windows_digest, cp->window_at, cp->window_stored,
				     stored, &err);
	if (r < 0)
		r = -EIO;
	else {
		rb_count_fetched(rb, 1, cp->window_stored, FETCH_ON_DEMAND);
		r = rb_keep_window(rb, cp, stored, out);
	}
	/* Given back once the window is in the cache, where a reader that
	 * waited for it looks. */
	window_connection_give(rb, k);
	return r;
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
	s->bytes_speculated = rb->bytes_read_ahead + rb->bytes_guessed;
	s->reads_ahead_of_prefetch = rb->reads_ahead_of_prefetch;
	pthread_mutex_unlock(&rb->lock);
}

static void remote_blob_free(struct remote_blob *rb)
{
	if (!rb)
		return;
	remote_guess_free(rb->guess);
	/* A stream's thread uses rb until it has said it is done; one that
	 * ends starts no read-ahead from now on. */
	pthread_mutex_lock(&rb->lock);
	rb->read_ahead_waiting = (struct blob_extent){ 0, 0 };
	for (size_t k = 0; k < STREAMS; k++)
		while (rb->streams[k].busy)
			pthread_cond_wait(&rb->stream_moved, &rb->lock);
	for (size_t k = 0; k < BACKGROUND_RUNS; k++)
		while (rb->background[k].busy)
			pthread_cond_wait(&rb->stream_moved, &rb->lock);
	pthread_mutex_unlock(&rb->lock);
	for (size_t k = 0; k < STREAMS; k++)
		registry_client_free(rb->streams[k].client);
	for (size_t k = 0; k < WINDOW_CONNECTIONS; k++)
		registry_client_free(rb->window_clients[k]);
	registry_client_free(rb->window_prefetch_client);
	pthread_mutex_destroy(&rb->window_lock);
	pthread_cond_destroy(&rb->window_moved);
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
	.window_at_hand = remote_blob_window_at_hand,
	.blob_coming = remote_blob_bytes_coming,
	.bring_blob = remote_blob_bring,
	.read_entry = tar_stream_read_entry,
	.prefetch = remote_blob_prefetch,
	.get_stats = remote_blob_stats,
	.free = remote_blob_layer_free,
	.read_ahead_file = remote_blob_read_ahead_file,
	.first_read_begins = remote_blob_first_read_begins,
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
	pthread_cond_init(&rb->window_moved, NULL);
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
		rb->window_clients[0] = windows->client;
		/* Without them, windows come one at a time. */
		for (size_t k = 1; k < WINDOW_CONNECTIONS; k++)
			rb->window_clients[k] = registry_client_dup(windows->client);
		/* Without it, the prefetch leaves windows to the reads. */
		rb->window_prefetch_client = registry_client_dup(windows->client);
	}
	/* Without it, reads of a package's modules fetch them one by one. */
	(void)remote_guess_new(l, prefetch_client, windows ? windows->client : NULL, &rb->guess);
	l->source = rb;
	l->ops = &remote_blob_ops;
	return 0;
}
