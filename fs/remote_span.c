/* A remote blob's spans and windows in the chunk cache: where they lie,
 * how they are checked and kept (see remote_blob_internal.h). */
#include "remote_blob_internal.h"

#include <fcntl.h>
#include <sys/stat.h>

#include "cache.h"
#include "registry.h"
#include "tar_stream.h"
#include "windows_blob.h"

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

uint64_t rb_span_len(const struct remote_blob *rb, size_t i)
{
	uint64_t start = (uint64_t)i * rb->span_size;
	return rb->blob_size - start < rb->span_size ? rb->blob_size - start : rb->span_size;
}

bool rb_digest_matches(const void *data, size_t len, const unsigned char want[32])
{
	unsigned char got[32];
	digest_sha256_raw(data, len, got);
	return memcmp(got, want, 32) == 0;
}

/* Opens span i from the cache, verifying it the first time this mount uses
 * it (cached spans are not fsynced: a crash may leave a damaged one). */
int rb_open_cached_span(struct remote_blob *rb, size_t i)
{
	_cleanup_free_ char *path = span_path(rb, i);
	if (!path)
		return -ENOMEM;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != rb_span_len(rb, i)) {
		close(fd);
		return -ENOENT;
	}
	if (!rb->verified[i]) {
		_cleanup_free_ unsigned char *data = malloc(rb_span_len(rb, i) ? rb_span_len(rb, i) : 1);
		if (!data || read_full_at(fd, data, rb_span_len(rb, i), 0) < 0 ||
		    !rb_digest_matches(data, rb_span_len(rb, i), rb->span_digests[i])) {
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
int rb_store_span(const struct remote_blob *rb, size_t i, const void *data, size_t len)
{
	_cleanup_free_ char *path = span_path(rb, i);
	if (!path)
		return -ENOMEM;
	int r = write_file_replace(path, data, len);
	if (r == 0)
		cache_note_stored(len);
	return r;
}

bool rb_span_cached(const struct remote_blob *rb, size_t i)
{
	if (rb->verified[i])
		return true;
	_cleanup_free_ char *path = span_path(rb, i);
	struct stat st;
	return path && stat(path, &st) == 0 && (uint64_t)st.st_size == rb_span_len(rb, i);
}

/* Bytes fetched ahead of reads, by why; rb->lock is held. */
static void rb_count_purpose_locked(struct remote_blob *rb, enum fetch_purpose purpose, uint64_t bytes)
{
	if (purpose == FETCH_PREFETCH)
		rb->bytes_prefetched += bytes;
	else if (purpose == FETCH_GUESS)
		rb->bytes_guessed += bytes;
}

static uint64_t monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void rb_stream_asked(struct stream *st)
{
	st->asked_ns = monotonic_ns();
	st->first_bytes_ns = 0;
	st->first_got = 0;
}

/* A transfer this long after its first bytes tells the link's rate.  A
 * shorter one can measure a burst (bytes that waited in a buffer), which
 * left one start in six unpaced when samples of 256 KiB counted; but a
 * start whose first guess comes before any long transfer (its reads were
 * 512 KiB each) went unpaced in four launches of eight (the l-for row on
 * tools/bench-link's link: 4.3-4.4 s against 3.9-4.0), so until a long
 * one is seen the best short one stands in. */
#define RATE_SAMPLE_BYTES (1u << 20)
#define RATE_SAMPLE_SHORT_BYTES (256u << 10)

/* The link as the transfers of every blob saw it: the shortest wait for a
 * first byte, and the best rate of a long and of a short transfer; 0 until
 * measured.  A server serves one mount, whose layers come from one
 * registry, and a layer's first guess often comes before any transfer of
 * its own was long enough to measure (a package in a layer of its own). */
static struct {
	pthread_mutex_t lock;
	uint64_t first_byte_ns, bytes_per_s, short_bytes_per_s;
} link_seen = { .lock = PTHREAD_MUTEX_INITIALIZER };

void rb_note_transfer(const struct remote_blob *rb, const struct stream *st)
{
	if (!st->first_bytes_ns)
		return;
	uint64_t wait = st->first_bytes_ns - st->asked_ns;
	uint64_t got = (uint64_t)(st->next - st->first) * rb->span_size, took = monotonic_ns() - st->first_bytes_ns;
	uint64_t sample = got > st->first_got ? got - st->first_got : 0;
	uint64_t rate = sample >= RATE_SAMPLE_SHORT_BYTES && took ? sample * 1000000000u / took : 0;
	pthread_mutex_lock(&link_seen.lock);
	if (!link_seen.first_byte_ns || wait < link_seen.first_byte_ns)
		link_seen.first_byte_ns = wait ? wait : 1;
	/* The best seen is the link's: a transfer that shared it, or waited
	 * for a busy CPU, saw less. */
	uint64_t *best = sample >= RATE_SAMPLE_BYTES ? &link_seen.bytes_per_s : &link_seen.short_bytes_per_s;
	if (rate > *best)
		*best = rate;
	pthread_mutex_unlock(&link_seen.lock);
}

/* On a link with one queue, a miss asked for while a guess's bytes are on
 * the way waits behind them: a guess asks in requests of about what the
 * link carries in half the wait for a first byte, so that a miss waits
 * behind a round trip's worth at most per guess connection (tools/bench-link,
 * foreign row, shaped link: 3.96 s in requests of 128 KiB against 4.32 s
 * in requests of up to 4 MiB, 4.13 s at 256 KiB).  Each request costs a
 * wait for its first byte, though: where a whole request of 4 MiB comes in
 * less than GUESS_SPLIT_AFTER of those waits, a miss behind it loses little
 * and the requests stay whole (on loopback, requests of 128 KiB made the
 * same row 0.04 s slower, and of 0.4 to 1.3 MiB 0.016 s). */
#define GUESS_REQUEST_MIN (128u << 10)
#define GUESS_SPLIT_AFTER 8

uint64_t rb_guess_request_bytes(void)
{
	pthread_mutex_lock(&link_seen.lock);
	uint64_t first_byte_ns = link_seen.first_byte_ns,
		 bytes_per_s = link_seen.bytes_per_s ? link_seen.bytes_per_s : link_seen.short_bytes_per_s;
	pthread_mutex_unlock(&link_seen.lock);
	if (!first_byte_ns || !bytes_per_s ||
	    (uint64_t)SPAN_READAHEAD_MAX_BYTES * 1000000000u / bytes_per_s <= GUESS_SPLIT_AFTER * first_byte_ns)
		return SPAN_READAHEAD_MAX_BYTES;
	uint64_t bytes = bytes_per_s / 2 * first_byte_ns / 1000000000u;
	return bytes < GUESS_REQUEST_MIN          ? GUESS_REQUEST_MIN
	       : bytes > SPAN_READAHEAD_MAX_BYTES ? SPAN_READAHEAD_MAX_BYTES
						  : bytes;
}

/* After a retry got starts over, and what was handled is not handled
 * again. */
void rb_stream_arrived(void *ctx, size_t got)
{
	struct stream *st = ctx;
	struct remote_blob *rb = st->rb;
	for (;;) {
		pthread_mutex_lock(&rb->lock);
		if (got && !st->first_bytes_ns) {
			st->first_bytes_ns = monotonic_ns();
			st->first_got = got;
		}
		size_t k = st->next;
		bool complete = k < st->end && (k - st->first) * rb->span_size + rb_span_len(rb, k) <= got;
		pthread_mutex_unlock(&rb->lock);
		if (!complete)
			return;
		const unsigned char *data = st->buf + (k - st->first) * rb->span_size;
		bool ok = rb_digest_matches(data, (size_t)rb_span_len(rb, k), rb->span_digests[k]) &&
			  rb_store_span(rb, k, data, (size_t)rb_span_len(rb, k)) == 0;
		pthread_mutex_lock(&rb->lock);
		if (ok)
			rb->verified[k] = 1;
		rb->bytes_fetched += rb_span_len(rb, k);
		rb_count_purpose_locked(rb, st->purpose, rb_span_len(rb, k));
		st->next = k + 1;
		pthread_cond_broadcast(&rb->stream_moved);
		pthread_mutex_unlock(&rb->lock);
	}
}

/* The stream under way that brings span i, NULL if none; rb->lock is held. */
struct stream *rb_stream_bringing(struct remote_blob *rb, size_t i)
{
	for (size_t k = 0; k < STREAMS; k++) {
		struct stream *st = &rb->streams[k];
		if (st->busy && i >= st->first && i < st->end)
			return st;
	}
	return NULL;
}

/* The background request under way that brings span i, NULL if none;
 * rb->lock is held. */
const struct stream *rb_background_bringing(const struct remote_blob *rb, size_t i)
{
	for (size_t k = 0; k < BACKGROUND_RUNS; k++)
		if (rb->background[k].busy && i >= rb->background[k].first && i < rb->background[k].end)
			return &rb->background[k];
	return NULL;
}

void rb_count_fetched(struct remote_blob *rb, uint64_t requests, uint64_t bytes, enum fetch_purpose purpose)
{
	pthread_mutex_lock(&rb->lock);
	rb->requests += requests;
	rb->bytes_fetched += bytes;
	rb_count_purpose_locked(rb, purpose, bytes);
	pthread_mutex_unlock(&rb->lock);
}

/* A window from the cache, verified and unpacked into out; -ENOENT when
 * it is not there whole. */
int rb_cached_window(const struct remote_blob *rb, const struct checkpoint *cp, unsigned char *out)
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

bool rb_window_at_hand(const struct remote_blob *rb, const struct checkpoint *cp)
{
	_cleanup_free_ char *path = chunk_path(rb, cp->window_sha256);
	return path && access(path, F_OK) == 0;
}

/* Checks a fetched window, unpacks it into out (when not NULL) and keeps
 * it in the cache. */
int rb_keep_window(struct remote_blob *rb, const struct checkpoint *cp, const unsigned char *stored, unsigned char *out)
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
void rb_keep_windows(struct remote_blob *rb, const struct layer *l, size_t first, const unsigned char *data,
		     uint64_t off, uint64_t len)
{
	for (size_t c = first; c < l->n_checkpoints; c++) {
		const struct checkpoint *cp = &l->checkpoints[c];
		if (cp->window || !cp->window_len)
			continue;
		if (cp->window_at < off || cp->window_at + cp->window_stored > off + len)
			break;
		(void)rb_keep_window(rb, cp, data + (cp->window_at - off), NULL);
	}
}
