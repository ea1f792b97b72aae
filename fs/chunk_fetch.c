/* Fetching the chunks of eStargz and zstd:chunked layers: on demand, with
 * the adjacent chunks that follow a miss read ahead, and in the background
 * (the landmark files in the order the workload reads them, then the rest),
 * every chunk verified by the pack store before it is served.  This is the
 * layer source of chunked layers; toc_fetch.c makes them.
 *
 * Trust chain: the manifest is verified by digest; its layer annotation gives
 * the TOC digest; the TOC (verified against it) gives each chunk's digest;
 * each fetched chunk is verified against that before it is cached or served. */
#include "chunk_fetch.h"

#include "demand.h"
#include "index_io.h"
#include "pack.h"
#include "registry.h"
#include "span_job.h"
#include "speculate.h"
#include "toc.h"

#define CHUNK_FETCH_ATTEMPTS 3
/* Background fetches ask for runs of adjacent chunks up to this size. */
#define PREFETCH_BATCH_BYTES (8u << 20)
#define PREFETCH_BATCH_CHUNKS 1024
/* A read that must fetch also takes the adjacent chunks that follow, up to
 * this many compressed bytes: programs read neighbouring files together.
 * On a 20 ms, 100 Mbit/s link (tools/bench-link) the numpy start made 81
 * requests instead of 106 with 512 KiB, and took 6.9 s instead of 7.8 s;
 * 1 and 2 MiB cost more in bytes than they saved in round trips. */
#define READAHEAD_BYTES (512u << 10)
/* ... of which the chunks of other files than the one read take at most
 * this many: with the guesses of the files beside a miss (speculate.c)
 * and of the libraries a program needs (elf_guess.c) going out beside it,
 * what blindly follows a small file in the blob is mostly not read.  On
 * tools/bench-link's numpy start (eStargz, no profile) 30.1 MB were
 * fetched instead of 33.9 MB in as many requests, 3.30-3.38 s against
 * 3.37-3.45 s (alternated); 128 KiB of the whole made 53 requests for
 * 30.1 MB, no faster, and 32 KiB 58 requests. */
#define BESIDE_BYTES (128u << 10)
/* On-demand connections per layer: reads of different chunks fetch at the
 * same time, so that a slow or stalled read never holds up the others. */
#define DEMAND_CLIENTS 4
/* How long a reader waits for a background request that holds its chunk
 * before it fetches the chunk itself.  A request is at most
 * PREFETCH_BATCH_BYTES, well under a second at 100 Mbit/s: past this it is
 * stalled or crawling.  Taking over at once doubled bytes on a busy link
 * (tools/bench-link, profile row: 34.0 MB and 3.36 s against 28.8 MB and
 * 3.06 s). */
#define BACKGROUND_PATIENCE_MS 1500

struct inflight {
	const struct chunk *chunk;
	bool background;     /* claimed by a background fetch no reader took over */
	struct timespec due; /* background: when a reader stops waiting for it */
};

struct remote {
	pthread_mutex_t lock; /* guards the counters, inflight and clients; never held across I/O */
	pthread_cond_t inflight_done, client_free, stores_done;
	/* Threads still fetching or storing the read-ahead part of an
	 * on-demand fetch (fetch_demand). */
	size_t deferred_stores;
	/* The TOC this mount parsed, saved after the mount to toc_index_path
	 * (start_background). */
	char toc_unsaved[DIGEST_SHA256_LEN + 1];
	char *toc_index_path;
	pthread_t toc_saver;
	bool toc_saving;
	/* On-demand reads: each takes a connection that is not busy, making a new
	 * one up to DEMAND_CLIENTS.  New ones are copies of template, which never
	 * fetches, so that no copy reads a client another thread is using. */
	struct registry_client *template;
	struct registry_client *clients[DEMAND_CLIENTS];
	bool client_busy[DEMAND_CLIENTS];
	size_t n_clients;
	struct registry_client *prefetch_client; /* background fetches, so reads never queue behind them */
	struct pack_store pack;
	char digest[72];
	uint64_t bytes_fetched, requests, chunk_hits, chunk_misses, bytes_prefetched;
	uint64_t chunks_taken_over; /* fetched by a reader while a background request had them */
	uint64_t bytes_speculated;  /* fetched as the neighbours of a miss (speculate.h) */
	struct speculation *speculation;
	/* Every chunk of the layer in blob order, for fetching neighbours together. */
	const struct chunk **by_offset;
	size_t n_chunks;
	/* Chunks being fetched right now: a second reader waits for the first
	 * instead of fetching the same bytes again, unless the first is the
	 * background fetch (see chunk_ready()). */
	struct inflight *inflight;
	size_t n_inflight, allocated_inflight;
};

void remote_free(struct remote *r)
{
	if (!r)
		return;
	/* Threads still storing read-ahead chunks use r. */
	pthread_mutex_lock(&r->lock);
	while (r->deferred_stores)
		pthread_cond_wait(&r->stores_done, &r->lock);
	pthread_mutex_unlock(&r->lock);
	if (r->toc_saving)
		pthread_join(r->toc_saver, NULL);
	speculation_free(r->speculation);
	for (size_t i = 0; i < r->n_clients; i++)
		registry_client_free(r->clients[i]);
	registry_client_free(r->template);
	registry_client_free(r->prefetch_client);
	pthread_mutex_destroy(&r->lock);
	pthread_cond_destroy(&r->inflight_done);
	pthread_cond_destroy(&r->stores_done);
	pthread_cond_destroy(&r->client_free);
	free(r->inflight);
	free(r->by_offset);
	pack_store_close(&r->pack);
	free(r->toc_index_path);
	free(r);
}

static void chunked_get_stats(struct layer *l, struct layer_stats *ret)
{
	struct remote *rem = l->source;
	pthread_mutex_lock(&rem->lock);
	ret->bytes_fetched = rem->bytes_fetched;
	ret->requests = rem->requests;
	ret->chunk_hits = rem->chunk_hits;
	ret->chunk_misses = rem->chunk_misses;
	ret->bytes_prefetched = rem->bytes_prefetched;
	ret->reads_ahead_of_prefetch = rem->chunks_taken_over;
	ret->bytes_speculated = rem->bytes_speculated;
	pthread_mutex_unlock(&rem->lock);
	pthread_mutex_lock(&rem->pack.lock);
	ret->bytes_in_memory = rem->pack.mem_bytes;
	pthread_mutex_unlock(&rem->pack.lock);
}

/* A connection for an on-demand read, NULL when out of memory; *ret_slot
 * is for client_give_back(). */
static struct registry_client *client_take(struct remote *r, size_t *ret_slot)
{
	pthread_mutex_lock(&r->lock);
	for (;;) {
		for (size_t i = 0; i < r->n_clients; i++)
			if (r->clients[i] && !r->client_busy[i]) {
				r->client_busy[i] = true;
				pthread_mutex_unlock(&r->lock);
				*ret_slot = i;
				return r->clients[i];
			}
		if (r->n_clients < DEMAND_CLIENTS)
			break;
		pthread_cond_wait(&r->client_free, &r->lock);
	}
	/* A new slot, empty (and so passed over) until its copy is made. */
	size_t i = r->n_clients++;
	r->client_busy[i] = true;
	pthread_mutex_unlock(&r->lock);
	struct registry_client *c = registry_client_dup(r->template);
	pthread_mutex_lock(&r->lock);
	r->clients[i] = c;
	r->client_busy[i] = c != NULL;
	pthread_mutex_unlock(&r->lock);
	*ret_slot = i;
	return c;
}

static void client_give_back(struct remote *r, size_t slot)
{
	pthread_mutex_lock(&r->lock);
	r->client_busy[slot] = false;
	pthread_cond_signal(&r->client_free);
	pthread_mutex_unlock(&r->lock);
}

int remote_fetch(struct remote *r, uint64_t off, size_t len, void *buf, struct err *err)
{
	return remote_fetch_streaming(r, off, len, buf, NULL, NULL, err);
}

int remote_fetch_streaming(struct remote *r, uint64_t off, size_t len, void *buf,
			   void (*arrived)(void *ctx, size_t got), void *ctx, struct err *err)
{
	demand_note();
	size_t slot;
	struct registry_client *client = client_take(r, &slot);
	if (!client)
		return err_set(err, ENOMEM, "no connection for a read of layer %s", r->digest);
	int ret = registry_fetch_range_streaming(client, r->digest, off, len, buf, arrived, ctx, err);
	client_give_back(r, slot);
	if (ret == 0) {
		pthread_mutex_lock(&r->lock);
		r->bytes_fetched += len;
		r->requests++;
		pthread_mutex_unlock(&r->lock);
	}
	return ret;
}

/* Set on a speculation worker while it fetches: its background requests
 * count as guesses, not as the prefetch the user asked for. */
static _Thread_local bool speculating;

static void count_prefetched(struct remote *r, uint64_t bytes, uint64_t requests)
{
	pthread_mutex_lock(&r->lock);
	r->bytes_fetched += bytes;
	*(speculating ? &r->bytes_speculated : &r->bytes_prefetched) += bytes;
	r->requests += requests;
	pthread_mutex_unlock(&r->lock);
}

/* A background fetch on a connection of the caller's own, used by that
 * thread only: no lock held while the transfer runs. */
static int fetch_background(struct remote *r, struct registry_client *client, uint64_t off, size_t len, void *buf,
			    struct err *err)
{
	int ret = registry_fetch_range(client, r->digest, off, len, buf, err);
	if (ret == 0)
		count_prefetched(r, len, 1);
	return ret;
}

/* Several ranges on the caller's own connection, as fetch_background,
 * arrived(ctx) told as their bytes come. */
static int fetch_ranges_background(struct remote *r, struct registry_client *client, struct byterange *ranges, size_t n,
				   void (*arrived)(void *ctx), void *ctx, struct err *err)
{
	int requests = registry_fetch_ranges_streaming(client, r->digest, ranges, n, arrived, ctx, err);
	if (requests < 0)
		return requests;
	uint64_t bytes = 0;
	for (size_t i = 0; i < n; i++)
		bytes += ranges[i].len;
	count_prefetched(r, bytes, (uint64_t)requests);
	return 0;
}

int remote_new(struct registry_client *client, struct registry_client *prefetch_client, const char *digest,
	       enum layer_compression compression, const char *cache_dir, struct remote **ret, struct err *err)
{
	struct remote *rem = calloc(1, sizeof(*rem));
	if (!rem) {
		registry_client_free(client);
		registry_client_free(prefetch_client);
		return -ENOMEM;
	}
	pthread_mutex_init(&rem->lock, NULL);
	/* Readers wait for background claims until a monotonic deadline. */
	pthread_condattr_t monotonic;
	pthread_condattr_init(&monotonic);
	pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC);
	pthread_cond_init(&rem->inflight_done, &monotonic);
	pthread_condattr_destroy(&monotonic);
	pthread_cond_init(&rem->stores_done, NULL);
	pthread_cond_init(&rem->client_free, NULL);
	rem->clients[rem->n_clients++] = client;
	rem->prefetch_client = prefetch_client;
	snprintf(rem->digest, sizeof(rem->digest), "%s", digest);
	int r = pack_store_open(&rem->pack, cache_dir, digest, compression, err);
	rem->template = registry_client_dup(client);
	if (r == 0 && !rem->template)
		r = -ENOMEM;
	if (r < 0) {
		remote_free(rem);
		return r;
	}
	*ret = rem;
	return 0;
}

static int cmp_chunk_offset(const void *a, const void *b)
{
	const struct chunk *x = *(const struct chunk *const *)a, *y = *(const struct chunk *const *)b;
	return x->comp_off < y->comp_off ? -1 : x->comp_off > y->comp_off;
}

static bool chunk_bounds_valid(const struct chunk *c)
{
	return c->comp_end > c->comp_off && c->comp_end - c->comp_off <= CHUNK_MAX_SIZE * 2;
}

static bool chunk_claim(struct remote *rem, const struct chunk *c, bool background);
static void chunk_release(struct remote *rem, const struct chunk *c);
static void chunk_release_fetched(struct remote *rem, const struct chunk *c);

/* Chunks are stored by slot, so a chunk is in flight as itself: another
 * with the same digest has its own slot to fill. */
static ssize_t inflight_index(const struct remote *rem, const struct chunk *c)
{
	for (size_t i = 0; i < rem->n_inflight; i++)
		if (rem->inflight[i].chunk == c)
			return (ssize_t)i;
	return -1;
}

/* Marks the chunk as being fetched by the caller; rem->lock is held. */
static bool inflight_add_locked(struct remote *rem, const struct chunk *c, bool background)
{
	if (grow_array((void **)&rem->inflight, &rem->allocated_inflight, rem->n_inflight + 1, sizeof(*rem->inflight)) <
	    0)
		return false;
	struct inflight *in = &rem->inflight[rem->n_inflight++];
	*in = (struct inflight){ c, background, { 0, 0 } };
	if (background)
		deadline_after(CLOCK_MONOTONIC, &in->due, BACKGROUND_PATIENCE_MS);
	return true;
}

/* Fetches, inflates and verifies one chunk into the cache; bg is the
 * background connection to use, NULL for an on-demand read. */
static int chunk_fetch(struct remote *rem, const struct chunk *c, struct registry_client *bg)
{
	if (!chunk_bounds_valid(c))
		return -EIO;
	size_t comp_len = (size_t)(c->comp_end - c->comp_off);
	_cleanup_free_ unsigned char *comp = malloc(comp_len);
	if (!comp)
		return -ENOMEM;
	/* Bytes that do not match may come from a broken connection or proxy as
	 * well as from a bad blob: fetch again before giving up. */
	for (int attempt = 0; attempt < CHUNK_FETCH_ATTEMPTS; attempt++) {
		struct err err = { 0 };
		int fr = bg ? fetch_background(rem, bg, c->comp_off, comp_len, comp, &err)
			    : remote_fetch(rem, c->comp_off, comp_len, comp, &err);
		if (fr < 0)
			return -EIO; /* the client already retried transient errors */
		int r = pack_store_chunk(&rem->pack, c, comp, comp_len);
		if (r != -EBADMSG)
			return r;
	}
	return -EIO;
}

/* Verifies and stores chunks fetched together in comp (from start), or
 * fetches each again alone; releases the claims. */
static void store_batch(struct remote *rem, const struct chunk *const *batch, size_t n, const unsigned char *comp,
			uint64_t start, struct registry_client *bg)
{
	for (size_t i = 0; i < n; i++) {
		if (!comp || pack_store_chunk(&rem->pack, batch[i], comp + (batch[i]->comp_off - start),
					      (size_t)(batch[i]->comp_end - batch[i]->comp_off)) < 0)
			(void)chunk_fetch(rem, batch[i], bg);
		chunk_release_fetched(rem, batch[i]);
	}
}

/* One Range request for a run of adjacent chunks the caller claimed; each is
 * verified on its own, and one that fails is fetched again alone.  Releases
 * the claims. */
static void fetch_batch(struct remote *rem, const struct chunk **batch, size_t n, struct registry_client *bg)
{
	uint64_t start = batch[0]->comp_off, end = batch[n - 1]->comp_end;
	unsigned char *comp = malloc((size_t)(end - start));
	struct err err = { 0 };
	if (comp && (bg ? fetch_background(rem, bg, start, (size_t)(end - start), comp, &err)
			: remote_fetch(rem, start, (size_t)(end - start), comp, &err)) < 0) {
		free(comp);
		comp = NULL;
	}
	store_batch(rem, batch, n, comp, start, bg);
	free(comp);
}

/* A read that must fetch asks for its chunk and the ones after it in one
 * request, made on a thread of its own; each chunk is stored and released
 * as soon as its bytes are in, so that the reader waits only for its own
 * chunk and a reader of the next one only for that (on a 100 Mbit/s link,
 * 512 KiB of read-ahead take 40 ms, as long as the round trip). */
struct demand_fetch {
	struct remote *rem;
	pthread_mutex_t lock;
	pthread_cond_t told;
	int first; /* batch[0]: 0 on its way, 1 stored, -1 failed */
	int refs;
	unsigned char *comp;
	size_t stored; /* batch[0..stored) were handled by demand_arrived() */
	size_t n_failed;
	const struct chunk **failed; /* to fetch again alone, still claimed */
	size_t n;
	const struct chunk *batch[];
};

static void demand_fetch_unref(struct demand_fetch *d)
{
	pthread_mutex_lock(&d->lock);
	bool last = --d->refs == 0;
	pthread_mutex_unlock(&d->lock);
	if (!last)
		return;
	pthread_mutex_destroy(&d->lock);
	pthread_cond_destroy(&d->told);
	free(d->comp);
	free(d->failed);
	free(d);
}

/* The first word counts: once told, later calls change nothing. */
static void demand_fetch_tell(struct demand_fetch *d, int first)
{
	pthread_mutex_lock(&d->lock);
	if (!d->first)
		d->first = first;
	pthread_cond_signal(&d->told);
	pthread_mutex_unlock(&d->lock);
}

/* The transfer's progress: stores every chunk now complete.  The reader
 * releases batch[0]; a chunk that fails its digest keeps its claim until
 * it is fetched again alone.  After a retry, got starts over at 0 and
 * what was stored is not stored again. */
static void demand_arrived(void *ctx, size_t got)
{
	struct demand_fetch *d = ctx;
	uint64_t start = d->batch[0]->comp_off;
	for (; d->stored < d->n && d->batch[d->stored]->comp_end - start <= got; d->stored++) {
		const struct chunk *c = d->batch[d->stored];
		pthread_mutex_lock(&d->rem->lock);
		d->rem->bytes_fetched += c->comp_end - c->comp_off;
		pthread_mutex_unlock(&d->rem->lock);
		int r = pack_store_chunk(&d->rem->pack, c, d->comp + (c->comp_off - start),
					 (size_t)(c->comp_end - c->comp_off));
		if (d->stored == 0) {
			demand_fetch_tell(d, r == 0 ? 1 : -1);
			continue;
		}
		if (r < 0) {
			d->failed[d->n_failed++] = c;
			continue;
		}
		chunk_release_fetched(d->rem, c);
	}
}

static void *demand_fetch_main(void *arg)
{
	struct demand_fetch *d = arg;
	struct remote *rem = d->rem;
	uint64_t start = d->batch[0]->comp_off, len = d->batch[d->n - 1]->comp_end - start;
	size_t slot;
	struct registry_client *client = client_take(rem, &slot);
	if (client) {
		/* Counted now, its bytes as they come: stats are current. */
		pthread_mutex_lock(&rem->lock);
		rem->requests++;
		pthread_mutex_unlock(&rem->lock);
		struct err err = { 0 };
		(void)registry_fetch_range_streaming(client, rem->digest, start, (size_t)len, d->comp, demand_arrived,
						     d, &err);
		client_give_back(rem, slot);
	}
	demand_fetch_tell(d, -1);
	/* What did not come or failed its digest: each alone. */
	size_t from = d->stored ? d->stored : 1;
	store_batch(rem, d->batch + from, d->n - from, NULL, start, NULL);
	store_batch(rem, d->failed, d->n_failed, NULL, start, NULL);
	demand_fetch_unref(d);
	pthread_mutex_lock(&rem->lock);
	if (--rem->deferred_stores == 0)
		pthread_cond_broadcast(&rem->stores_done);
	pthread_mutex_unlock(&rem->lock);
	return NULL;
}

/* As fetch_batch for an on-demand read of batch[0]. */
static void fetch_demand(struct remote *rem, const struct chunk **batch, size_t n)
{
	struct demand_fetch *d = n > 1 ? calloc(1, sizeof(*d) + n * sizeof(d->batch[0])) : NULL;
	if (d && (!(d->comp = malloc((size_t)(batch[n - 1]->comp_end - batch[0]->comp_off))) ||
		  !(d->failed = calloc(n, sizeof(*d->failed))))) {
		free(d->comp);
		free(d);
		d = NULL;
	}
	if (!d) {
		fetch_batch(rem, batch, n, NULL);
		return;
	}
	d->rem = rem;
	d->n = n;
	d->refs = 2;
	memcpy(d->batch, batch, n * sizeof(batch[0]));
	pthread_mutex_init(&d->lock, NULL);
	pthread_cond_init(&d->told, NULL);
	pthread_mutex_lock(&rem->lock);
	rem->deferred_stores++;
	pthread_mutex_unlock(&rem->lock);
	if (!start_detached_thread(demand_fetch_main, d)) {
		pthread_mutex_lock(&rem->lock);
		rem->deferred_stores--;
		pthread_mutex_unlock(&rem->lock);
		d->refs = 1;
		demand_fetch_unref(d);
		fetch_batch(rem, batch, n, NULL);
		return;
	}
	pthread_mutex_lock(&d->lock);
	while (!d->first)
		pthread_cond_wait(&d->told, &d->lock);
	bool stored = d->first > 0;
	pthread_mutex_unlock(&d->lock);
	demand_fetch_unref(d);
	/* The request failed, or its bytes failed the digest, before the rest
	 * came: this chunk alone, tried again. */
	if (!stored)
		(void)chunk_fetch(rem, batch[0], NULL);
	chunk_release_fetched(rem, batch[0]);
}

/* Makes sure the chunk is in the cache, verified; returns the pack that
 * holds it, which stays open as long as rem.  Concurrent requests for one
 * chunk fetch it once.  Lock order: rem->lock is never held across
 * pack_lookup(). */
static int chunk_ready(struct remote *rem, const struct entry *e, const struct chunk *c, bool *ret_fetched)
{
	int fd;
	for (;;) {
		fd = pack_lookup(&rem->pack, c);
		if (fd >= 0) {
			pthread_mutex_lock(&rem->lock);
			rem->chunk_hits++;
			pthread_mutex_unlock(&rem->lock);
			return fd;
		}
		pthread_mutex_lock(&rem->lock);
		ssize_t i = inflight_index(rem, c);
		if (i < 0)
			break; /* ours to fetch; still locked */
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		bool overdue =
		    rem->inflight[i].background &&
		    (now.tv_sec > rem->inflight[i].due.tv_sec ||
		     (now.tv_sec == rem->inflight[i].due.tv_sec && now.tv_nsec >= rem->inflight[i].due.tv_nsec));
		if (overdue) {
			/* A background request that is late is stalled or crawling:
			 * the reader fetches the chunk itself; readers after it wait
			 * for it, and the background copy, the same verified bytes,
			 * lands on top. */
			rem->inflight[i].background = false;
			rem->chunks_taken_over++;
			pthread_mutex_unlock(&rem->lock);
			int r = chunk_fetch(rem, c, NULL);
			pthread_mutex_lock(&rem->lock);
			rem->chunk_misses++;
			pthread_cond_broadcast(&rem->inflight_done);
			pthread_mutex_unlock(&rem->lock);
			fd = r < 0 ? -1 : pack_verified(&rem->pack, c);
			return fd < 0 ? -EIO : fd;
		}
		/* The table may move while we wait: the deadline is copied. */
		struct timespec due = rem->inflight[i].due;
		if (rem->inflight[i].background)
			(void)pthread_cond_timedwait(&rem->inflight_done, &rem->lock, &due);
		else
			pthread_cond_wait(&rem->inflight_done, &rem->lock);
		pthread_mutex_unlock(&rem->lock);
		/* Whoever we waited for has cached it, failed, or is late: look again. */
	}
	bool claimed = inflight_add_locked(rem, c, false);
	pthread_mutex_unlock(&rem->lock);
	if (!claimed)
		return -ENOMEM;
	bool first_miss = !*ret_fetched;
	*ret_fetched = true;
	if (!chunk_bounds_valid(c)) {
		chunk_release(rem, c);
		return -EIO;
	}
	const struct chunk *batch[64] = { c };
	size_t n = 1;
	uint64_t extra = 0, beside = 0;
	bool past_file = false;
	for (size_t k = (size_t)c->order + 1; k < rem->n_chunks && n < ARRAY_SIZE(batch); k++) {
		const struct chunk *next = rem->by_offset[k];
		uint64_t len = next->comp_end - next->comp_off;
		/* A file's chunks lie in order: one at offset 0 starts another. */
		past_file = past_file || next->file_off == 0;
		beside += past_file ? len : 0;
		if (next->comp_off != batch[n - 1]->comp_end || !chunk_bounds_valid(next) ||
		    extra + len > READAHEAD_BYTES || beside > BESIDE_BYTES || !chunk_claim(rem, next, false))
			break;
		batch[n++] = next;
		extra += len;
	}
	/* The guess goes out with the miss, not a round trip after it. */
	if (first_miss)
		speculation_note_miss(rem->speculation, e);
	fetch_demand(rem, batch, n);
	fd = pack_verified(&rem->pack, c);
	return fd < 0 ? -EIO : fd;
}

/* Claims the chunk for fetching unless it is cached or being fetched. */
static bool chunk_claim(struct remote *rem, const struct chunk *c, bool background)
{
	if (pack_lookup(&rem->pack, c) >= 0 || pack_in_memory(&rem->pack, c))
		return false;
	pthread_mutex_lock(&rem->lock);
	bool claimed = inflight_index(rem, c) < 0 && inflight_add_locked(rem, c, background);
	pthread_mutex_unlock(&rem->lock);
	return claimed;
}

static void chunk_release(struct remote *rem, const struct chunk *c)
{
	pthread_mutex_lock(&rem->lock);
	ssize_t i = inflight_index(rem, c);
	if (i >= 0)
		rem->inflight[i] = rem->inflight[--rem->n_inflight];
	pthread_cond_broadcast(&rem->inflight_done);
	pthread_mutex_unlock(&rem->lock);
}

/* A claimed chunk that had to be fetched is in (or failed for good):
 * counted as a miss, and released. */
static void chunk_release_fetched(struct remote *rem, const struct chunk *c)
{
	pthread_mutex_lock(&rem->lock);
	rem->chunk_misses++;
	pthread_mutex_unlock(&rem->lock);
	chunk_release(rem, c);
}

/* The background fetch: the chunks of these files (in blob order) in
 * requests of adjacent chunks, on client, each after reads paused.  It
 * waits before it claims a request's chunks, not after: a reader that
 * wants a claimed chunk waits for its fetch, and a fetch that waited for
 * reads to pause would have held that reader for as long. */
static int fetch_entries(struct remote *rem, const struct entry *const *v, size_t n_entries,
			 struct registry_client *client, const atomic_bool *stop)
{
	const struct chunk *batch[PREFETCH_BATCH_CHUNKS];
	size_t n = 0;
	uint64_t batch_bytes = 0;
	for (size_t i = 0; i < n_entries; i++) {
		const struct entry *e = v[i];
		for (uint32_t k = 0; k < e->n_chunks; k++) {
			const struct chunk *c = &e->chunks[k];
			if (atomic_load(stop)) {
				if (n)
					fetch_batch(rem, batch, n, client);
				return -ECANCELED;
			}
			/* Chunks come in blob order; a gap or a full batch ends the run. */
			bool contiguous = n > 0 && batch[n - 1]->comp_end == c->comp_off;
			if (n > 0 && (!contiguous || n == PREFETCH_BATCH_CHUNKS ||
				      batch_bytes + (c->comp_end - c->comp_off) > PREFETCH_BATCH_BYTES)) {
				fetch_batch(rem, batch, n, client);
				n = 0;
				batch_bytes = 0;
			}
			if (n == 0)
				demand_wait_quiet(stop);
			/* The cache disk is full: what is fetched ahead could only
			 * push what reads need out of memory. */
			if (pack_disk_full(&rem->pack)) {
				if (n)
					fetch_batch(rem, batch, n, client);
				return 0;
			}
			if (!chunk_bounds_valid(c) || !chunk_claim(rem, c, true))
				continue;
			batch[n++] = c;
			batch_bytes += c->comp_end - c->comp_off;
		}
	}
	if (n)
		fetch_batch(rem, batch, n, client);
	return 0;
}

#define LANDMARK_WORKERS 4

/* A job's request under way: its chunks are stored as their bytes come in,
 * so that a reader waiting for one of them waits for it, not for the whole
 * request (a guess of a package's modules is several MB, a quarter of a
 * second on a 100 Mbit/s link). */
struct job_arrival {
	struct remote *rem;
	const struct span_job *j;
	const struct byterange *ranges;
	const size_t *range_of;
	bool handled[JOB_CHUNKS]; /* stored, or failed its digest */
	bool failed[JOB_CHUNKS];  /* still claimed, to fetch again alone */
};

static void job_arrived(void *ctx)
{
	struct job_arrival *a = ctx;
	const struct span_job *j = a->j;
	for (size_t s = 0; s < j->n_spans; s++) {
		const struct byterange *r = &a->ranges[a->range_of[s]];
		for (size_t k = j->first[s]; k < span_job_end(j, s); k++) {
			const struct chunk *c = j->chunks[k];
			if (a->handled[k])
				continue;
			if (c->comp_end - r->off > r->got)
				break;
			a->handled[k] = true;
			if (pack_store_chunk(&a->rem->pack, c, r->buf + (c->comp_off - r->off),
					     (size_t)(c->comp_end - c->comp_off)) < 0) {
				a->failed[k] = true;
				continue;
			}
			chunk_release_fetched(a->rem, c);
		}
	}
}

/* Fetches the job's claimed chunks and releases them. */
static void fetch_job(struct remote *rem, struct span_job *j, struct registry_client *client)
{
	struct byterange ranges[JOB_SPANS];
	size_t range_of[JOB_SPANS], n_ranges = 0, total = 0;
	bool apart = span_job_plan(j, ranges, range_of, &n_ranges, &total);
	unsigned char *buf = apart ? malloc(total) : NULL;
	for (size_t k = 0, used = 0; buf && k < n_ranges; used += ranges[k++].len)
		ranges[k].buf = buf + used;
	struct job_arrival *arrival = buf ? calloc(1, sizeof(*arrival)) : NULL;
	if (arrival) {
		*arrival = (struct job_arrival){ .rem = rem, .j = j, .ranges = ranges, .range_of = range_of };
		struct err err = { 0 };
		(void)fetch_ranges_background(rem, client, ranges, n_ranges, job_arrived, arrival, &err);
	}
	/* What did not come, or failed its digest: a span that got nothing in
	 * one request again, the rest chunk by chunk. */
	for (size_t s = 0; s < j->n_spans; s++) {
		const struct chunk **span = &j->chunks[j->first[s]];
		size_t n = span_job_end(j, s) - j->first[s], left = 0;
		const struct chunk *leftover[JOB_CHUNKS];
		for (size_t k = j->first[s]; k < j->first[s] + n; k++)
			if (!arrival || !arrival->handled[k] || arrival->failed[k])
				leftover[left++] = j->chunks[k];
		if (left == n)
			fetch_batch(rem, span, n, client);
		else
			store_batch(rem, leftover, left, NULL, 0, client);
	}
	free(arrival);
	free(buf);
	j->n_chunks = j->n_spans = 0;
	j->bytes = 0;
}

/* Files whose chunks are fetched in the background in the order listed, by
 * one or more workers, each file up to per_file and all of them up to
 * budget (compressed bytes claimed: what is cached or in flight is free). */
struct list_job {
	struct remote *rem;
	const struct entry **entries;
	size_t n;
	uint64_t per_file, budget;
	pthread_mutex_t lock; /* over the fields below */
	size_t next;          /* the first entry no worker took yet */
	uint32_t next_chunk;  /* and its first chunk no worker took */
	uint64_t file_taken, taken;
	const atomic_bool *stop;
};

/* Listed files by their rank; the image's own landmarks (rank 0) in blob order. */
static int by_rank(const void *a, const void *b)
{
	const struct entry *x = *(const struct entry *const *)a, *y = *(const struct entry *const *)b;
	if (x->prefetch_rank != y->prefetch_rank)
		return x->prefetch_rank < y->prefetch_rank ? -1 : 1;
	return x < y ? -1 : x > y;
}

/* Fills sj with the next chunks in line, up to its limits.  A worker takes
 * consecutive files: where they lie together in the blob (an image laid
 * out for its workload), they make one range. */
static void take_chunks(struct list_job *job, struct span_job *sj)
{
	pthread_mutex_lock(&job->lock);
	for (; job->next < job->n && !atomic_load(job->stop); job->next++, job->next_chunk = 0, job->file_taken = 0) {
		const struct entry *e = job->entries[job->next];
		for (; job->next_chunk < e->n_chunks; job->next_chunk++) {
			const struct chunk *c = &e->chunks[job->next_chunk];
			if (!chunk_bounds_valid(c))
				continue;
			uint64_t len = c->comp_end - c->comp_off;
			if (job->taken + len > job->budget) {
				job->next = job->n;
				goto full;
			}
			if (job->file_taken + len > job->per_file)
				break;
			if (!entry_part_listed(e, c->file_off, c->size))
				continue;
			if (!span_job_has_room(sj, c))
				goto full;
			if (chunk_claim(job->rem, c, true)) {
				span_job_add(sj, c);
				job->file_taken += len;
				job->taken += len;
			}
		}
	}
full:
	pthread_mutex_unlock(&job->lock);
}

static void list_work(struct list_job *job, struct registry_client *client)
{
	struct span_job *sj = calloc(1, sizeof(*sj));
	if (!sj)
		return;
	for (;;) {
		take_chunks(job, sj);
		if (!sj->n_chunks)
			break;
		fetch_job(job->rem, sj, client);
	}
	free(sj);
}

static void *landmark_thread(void *arg)
{
	struct list_job *job = arg;
	struct registry_client *client = registry_client_dup(job->rem->template);
	if (client)
		list_work(job, client);
	registry_client_free(client);
	return NULL;
}

static int chunked_prefetch(struct layer *l, bool only_landmark, const atomic_bool *stop)
{
	struct remote *rem = l->source;
	_cleanup_free_ const struct entry **v = calloc(l->n_entries ? l->n_entries : 1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	size_t n = 0;
	for (size_t i = 0; i < l->n_entries; i++)
		if (!only_landmark || l->entries[i].prefetch)
			v[n++] = &l->entries[i];
	if (!only_landmark)
		return fetch_entries(rem, v, n, rem->prefetch_client, stop);
	/* The workload needs them in the order it read them, soon: in that
	 * order, on several connections. */
	qsort(v, n, sizeof(*v), by_rank);
	struct list_job job = {
		.rem = rem, .entries = v, .n = n, .per_file = UINT64_MAX, .budget = UINT64_MAX, .stop = stop
	};
	pthread_mutex_init(&job.lock, NULL);
	pthread_t threads[LANDMARK_WORKERS - 1];
	size_t started = 0;
	for (; started < ARRAY_SIZE(threads) && n > started + 1; started++)
		if (pthread_create(&threads[started], NULL, landmark_thread, &job) != 0)
			break;
	list_work(&job, rem->prefetch_client);
	for (size_t i = 0; i < started; i++)
		pthread_join(threads[i], NULL);
	pthread_mutex_destroy(&job.lock);
	return atomic_load(stop) ? -ECANCELED : 0;
}

static struct registry_client *speculation_client(void *ctx)
{
	const struct remote *rem = ctx;
	return registry_client_dup(rem->template);
}

static uint64_t speculation_fetch(void *ctx, const struct entry **files, size_t n, uint64_t per_file, uint64_t budget,
				  struct registry_client *client, const atomic_bool *stop)
{
	struct list_job job = {
		.rem = ctx, .entries = files, .n = n, .per_file = per_file, .budget = budget, .stop = stop
	};
	pthread_mutex_init(&job.lock, NULL);
	speculating = true;
	list_work(&job, client);
	speculating = false;
	pthread_mutex_destroy(&job.lock);
	return job.taken;
}

static ssize_t chunked_read_entry(struct layer *l, const struct entry *e, void *buf, size_t len, uint64_t off)
{
	struct remote *rem = l->source;
	demand_note();
	bool fetched = false;
	for (uint32_t i = 0; i < e->n_chunks; i++) {
		const struct chunk *c = &e->chunks[i];
		uint64_t start = off > c->file_off ? off : c->file_off;
		uint64_t end = off + len < c->file_off + c->size ? off + len : c->file_off + c->size;
		if (start >= end)
			continue;
		if (c->zeros) {
			memset((char *)buf + (start - off), 0, (size_t)(end - start));
			continue;
		}
		char *dst = (char *)buf + (start - off);
		/* A chunk the full cache disk could not take is served from memory. */
		if (pack_read_memory(&rem->pack, c, dst, start - c->file_off, (size_t)(end - start)) == 0)
			continue;
		int fd = chunk_ready(rem, e, c, &fetched);
		if (fd < 0) {
			if (pack_read_memory(&rem->pack, c, dst, start - c->file_off, (size_t)(end - start)) == 0)
				continue;
			return fd;
		}
		int r = read_full_at(fd, dst, (size_t)(end - start),
				     (off_t)(rem->pack.slot[c->order] + (start - c->file_off)));
		if (r < 0)
			return -EIO;
	}
	return (ssize_t)len;
}

static void *toc_save_main(void *arg)
{
	const struct layer *l = arg;
	const struct remote *rem = l->source;
	/* An optimisation: a failure costs the next mount a parse, no more. */
	(void)chunked_layer_save(l, rem->toc_unsaved, rem->toc_index_path);
	return NULL;
}

/* Saving a large TOC takes longer than the rest of a mount after the
 * parse: it is done on a thread, which stop_background joins. */
static void chunked_start_background(struct layer *l)
{
	struct remote *rem = l->source;
	if (rem->toc_unsaved[0] && !rem->toc_saving)
		rem->toc_saving = pthread_create(&rem->toc_saver, NULL, toc_save_main, l) == 0;
	speculation_start(rem->speculation);
}

/* The threads storing read-ahead chunks use rem, its connections too (a
 * chunk that fails to store is fetched again), and the TOC saver reads the
 * entries. */
static void chunked_stop_background(struct layer *l)
{
	struct remote *rem = l->source;
	pthread_mutex_lock(&rem->lock);
	while (rem->deferred_stores)
		pthread_cond_wait(&rem->stores_done, &rem->lock);
	pthread_mutex_unlock(&rem->lock);
	if (rem->toc_saving)
		pthread_join(rem->toc_saver, NULL);
	rem->toc_saving = false;
	speculation_stop(rem->speculation);
}

static void chunked_free(struct layer *l)
{
	remote_free(l->source);
	l->source = NULL;
}

static void chunked_first_read_begins(struct layer *l, const struct entry *e)
{
	speculation_note_first_read(((struct remote *)l->source)->speculation, e);
}

static const struct layer_source_ops chunked_ops = {
	.read_entry = chunked_read_entry,
	.prefetch = chunked_prefetch,
	.get_stats = chunked_get_stats,
	.start_background = chunked_start_background,
	.stop_background = chunked_stop_background,
	.free = chunked_free,
	.first_read_begins = chunked_first_read_begins,
	.concurrent_reads = true,
};

int chunked_attach(struct layer *l, struct remote *rem, const char *toc_to_save, const char *toc_index_path)
{
	/* Blob order, for fetching a chunk together with the ones after it. */
	for (size_t i = 0; i < l->n_entries; i++)
		rem->n_chunks += l->entries[i].n_chunks;
	rem->by_offset = calloc(rem->n_chunks ? rem->n_chunks : 1, sizeof(*rem->by_offset));
	if (!rem->by_offset)
		return -ENOMEM;
	size_t k = 0;
	for (size_t i = 0; i < l->n_entries; i++)
		for (uint32_t j = 0; j < l->entries[i].n_chunks; j++)
			rem->by_offset[k++] = &l->entries[i].chunks[j];
	qsort(rem->by_offset, rem->n_chunks, sizeof(*rem->by_offset), cmp_chunk_offset);
	if (pack_store_assign(&rem->pack, rem->by_offset, rem->n_chunks) < 0)
		return -ENOMEM;
	const struct speculation_ops ops = { .ctx = rem, .new_client = speculation_client, .fetch = speculation_fetch };
	int r = speculation_new(l, &ops, &rem->speculation);
	if (r < 0)
		return r;
	if (toc_to_save) {
		if (!(rem->toc_index_path = strdup(toc_index_path)))
			return -ENOMEM;
		snprintf(rem->toc_unsaved, sizeof(rem->toc_unsaved), "%s", toc_to_save);
	}
	l->source = rem;
	l->ops = &chunked_ops;
	return 0;
}
