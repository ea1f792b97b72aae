/* The background fetch of a remote blob: the spans and windows of the
 * files a prefetch list names, or of the whole blob (see remote_blob.h). */
#include "remote_blob_internal.h"

#include "demand.h"
#include "registry.h"
#include "tar_stream.h"

/* Whether span i is cached, or a request under way brings it: fetching
 * it too would only send its bytes twice. */
static bool span_present(struct remote_blob *rb, size_t i)
{
	pthread_mutex_lock(&rb->lock);
	bool coming = rb_stream_bringing(rb, i) || rb_background_bringing(rb, i);
	int fd = coming ? -1 : rb_open_cached_span(rb, i);
	pthread_mutex_unlock(&rb->lock);
	if (fd >= 0)
		close(fd);
	return coming || fd >= 0;
}

/* One request for spans [i, i+run), each verified and stored as it
 * arrives, in a slot of rb->background while it lasts: a read of one of
 * them waits for it rather than fetch it again.  On a link whose
 * connections take turns the reads outran the prefetch of a profile and
 * fetched its spans a second time (tools/bench-link, for-prof row on a
 * fair link: 41.9 MB instead of 33.5 MB). */
static void fetch_run(struct remote_blob *rb, struct registry_client *client, size_t i, size_t run, uint64_t len,
		      enum fetch_purpose purpose)
{
	unsigned char *buf = malloc((size_t)len);
	if (!buf)
		return;
	struct stream unseen, *st = &unseen;
	pthread_mutex_lock(&rb->lock);
	for (size_t k = 0; k < BACKGROUND_RUNS && st == &unseen; k++)
		if (!rb->background[k].busy)
			st = &rb->background[k];
	*st = (struct stream){
		.rb = rb, .busy = true, .purpose = purpose, .first = i, .next = i, .end = i + run, .buf = buf
	};
	rb_stream_asked(st);
	rb->requests++;
	pthread_mutex_unlock(&rb->lock);
	struct err err = { 0 };
	(void)registry_fetch_range_streaming(client, rb->digest, (uint64_t)i * rb->span_size, (size_t)len, buf,
					     rb_stream_arrived, st, &err);
	pthread_mutex_lock(&rb->lock);
	rb_note_transfer(rb, st);
	st->busy = false;
	st->buf = NULL;
	pthread_cond_broadcast(&rb->stream_moved);
	pthread_mutex_unlock(&rb->lock);
	free(buf);
}

/* Fetches the spans of [off, end) that are not cached, each run of missing
 * spans (up to SPAN_READAHEAD_MAX_BYTES, a guess's up to what
 * rb_guess_request_bytes() says) in one request: a request per span cost a
 * round trip per 256 KiB.  With yield, each run waits until
 * on-demand reads pause. */
static int prefetch_spans(struct remote_blob *rb, struct registry_client *client, uint64_t off, uint64_t end,
			  enum fetch_purpose purpose, const atomic_bool *stop, bool yield)
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
		uint64_t len = rb_span_len(rb, i);
		uint64_t most = purpose == FETCH_GUESS ? rb_guess_request_bytes() : SPAN_READAHEAD_MAX_BYTES;
		while (i + run <= last && len + rb_span_len(rb, i + run) <= most && !span_present(rb, i + run))
			len += rb_span_len(rb, i + run++);
		/* The connection is ours alone; the lock only covers the
		 * bookkeeping, so on-demand reads never wait behind this fetch
		 * for long.  Two fetches of one span store the same bytes. */
		if (yield)
			demand_wait_quiet(stop);
		fetch_run(rb, client, i, run, len, purpose);
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
#define LISTED_WORKERS BACKGROUND_RUNS

void rb_connections_done(struct fetch_connections *c)
{
	for (size_t i = 1; i < LISTED_WORKERS; i++)
		c->blob[i] = registry_client_free(c->blob[i]);
}

struct listed_runs {
	struct remote_blob *rb;
	const struct blob_range *runs;
	size_t n;
	atomic_size_t next; /* the first run no worker took yet */
	enum fetch_purpose purpose;
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
		if (prefetch_spans(job->rb, w->client, job->runs[i].in, job->runs[i].end, job->purpose, job->stop,
				   false) < 0)
			break;
	return NULL;
}

/* The runs in the order of their files' first reads (the list's order),
 * taken by up to LISTED_WORKERS workers, each on one of c's connections. */
static int prefetch_runs(struct remote_blob *rb, const struct blob_range *runs, size_t n, struct fetch_connections *c,
			 enum fetch_purpose purpose, const atomic_bool *stop)
{
	struct listed_runs job = { .rb = rb, .runs = runs, .n = n, .purpose = purpose, .stop = stop };
	struct listed_worker workers[LISTED_WORKERS];
	size_t n_workers = 0;
	for (; n_workers < LISTED_WORKERS && n_workers < n; n_workers++) {
		if (!c->blob[n_workers] && (!n_workers || !(c->blob[n_workers] = registry_client_dup(c->blob[0]))))
			break;
		workers[n_workers] = (struct listed_worker){ .job = &job, .client = c->blob[n_workers] };
	}
	for (size_t i = 0; i < n_workers; i++)
		background_job_start(&workers[i].thread, listed_worker_main, &workers[i]);
	for (size_t i = 0; i < n_workers; i++)
		background_job_join(&workers[i].thread);
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
static int prefetch_windows(struct layer *l, const struct blob_range *ranges, size_t n, struct registry_client *client,
			    enum fetch_purpose purpose, const atomic_bool *stop)
{
	struct remote_blob *rb = l->source;
	if (!client)
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
			while (a <= b &&
			       (l->checkpoints[a].window || !l->checkpoints[a].window_len ||
				l->checkpoints[a].window_at < done || rb_window_at_hand(rb, &l->checkpoints[a])))
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
		int requests = k ? registry_fetch_ranges(client, rb->windows_digest, want, k, &err) : 0;
		if (requests < 0)
			continue; /* the reads fetch their windows themselves */
		rb_count_fetched(rb, (uint64_t)requests, total, purpose);
		for (size_t j = 0; j < k; j++)
			rb_keep_windows(rb, l, first_cp[j], want[j].buf, want[j].off, want[j].len);
	}
	return 0;
}

/* Parts of files to fetch, as blob ranges. */
struct range_list {
	struct blob_range *v;
	size_t n, cap;
};

/* Adds the blob range that decoding [from, to) of e's extent x reads. */
static int range_list_add(const struct layer *l, struct range_list *rl, const struct extent *x, uint64_t from,
			  uint64_t to, uint32_t rank)
{
	if (from >= to)
		return 0;
	if (rl->n == rl->cap) {
		size_t cap = rl->cap ? 2 * rl->cap : 256;
		struct blob_range *more = realloc(rl->v, cap * sizeof(*more));
		if (!more)
			return -ENOMEM;
		rl->v = more;
		rl->cap = cap;
	}
	struct blob_range *r = &rl->v[rl->n++];
	uint64_t at = x->stream_off + (from - x->file_off);
	layer_compressed_range(l, at, to - from, &r->in, &r->end);
	r->from = layer_checkpoint_before(l, at);
	r->to = layer_checkpoint_before(l, at + (to - from) - 1);
	r->rank = rank;
	return 0;
}

/* Fetches the ranges, merged into few long requests, their windows first,
 * in the order of their ranks; those in the blob's first budget bytes of
 * them (in blob order) only. */
static int fetch_range_list(struct layer *l, struct range_list *rl, uint64_t budget, struct fetch_connections *c,
			    enum fetch_purpose purpose, const atomic_bool *stop, uint64_t *ret_bytes)
{
	struct blob_range *ranges = rl->v;
	size_t n = rl->n;
	*ret_bytes = 0;
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
		return 0;
	uint64_t total = 0;
	size_t n_kept = 0;
	for (; n_kept < n_merged && total + (ranges[n_kept].end - ranges[n_kept].in) <= budget; n_kept++)
		total += ranges[n_kept].end - ranges[n_kept].in;
	*ret_bytes = total;
	int r = prefetch_windows(l, ranges, n_kept, c->windows, purpose, stop);
	if (r != -ECANCELED) {
		qsort(ranges, n_kept, sizeof(*ranges), by_rank);
		r = prefetch_runs(l->source, ranges, n_kept, c, purpose, stop);
	}
	return r == -ECANCELED ? r : 0;
}

/* A plain layer's landmarks come from a prefetch list: the spans the
 * decoder will read for each listed file, or for the parts listed. */
static int prefetch_listed(struct layer *l, const atomic_bool *stop)
{
	struct remote_blob *rb = l->source;
	struct range_list rl = { 0 };
	int r = 0;
	for (size_t i = 0; i < l->n_entries && r == 0; i++) {
		const struct entry *e = &l->entries[i];
		uint32_t n_parts = e->prefetch_parts ? e->n_prefetch_parts : 1;
		uint32_t rank = e->prefetch_rank ? e->prefetch_rank : UINT32_MAX;
		for (uint32_t k = 0; e->prefetch && k < e->n_extents && r == 0; k++) {
			const struct extent *x = &e->extents[k];
			for (uint32_t p = 0; p < n_parts && r == 0; p++) {
				uint64_t from = x->file_off, to = x->file_off + x->len;
				if (e->prefetch_parts) {
					const struct file_part *part = &e->prefetch_parts[p];
					from = part->off > from ? part->off : from;
					to = part->off + part->len < to ? part->off + part->len : to;
				}
				r = range_list_add(l, &rl, x, from, to, rank);
			}
		}
	}
	uint64_t bytes;
	struct fetch_connections c = { .blob = { rb->prefetch_client }, .windows = rb->window_prefetch_client };
	if (r == 0)
		r = fetch_range_list(l, &rl, UINT64_MAX, &c, FETCH_PREFETCH, stop, &bytes);
	rb_connections_done(&c);
	free(rl.v);
	return r;
}

int rb_prefetch_file_windows(struct layer *l, const struct entry *e, uint64_t end, struct registry_client *client,
			     const atomic_bool *stop)
{
	if (e->n_extents == 0 || l->n_checkpoints == 0)
		return 0;
	struct blob_range r = { .from = layer_checkpoint_before(l, e->extents[0].stream_off) };
	/* The last checkpoint before end, if it is not before the first. */
	size_t before_end = layer_checkpoints_before_in(l, end);
	r.to = before_end > (size_t)(r.from - l->checkpoints) ? &l->checkpoints[before_end - 1] : r.from;
	return prefetch_windows(l, &r, 1, client, FETCH_GUESS, stop);
}

int rb_prefetch_files(struct layer *l, const struct entry *const *files, size_t n, uint64_t head, uint64_t budget,
		      struct fetch_connections *c, const atomic_bool *stop, uint64_t *ret_bytes)
{
	*ret_bytes = 0;
	struct range_list rl = { 0 };
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++)
		for (uint32_t k = 0; k < files[i]->n_extents && r == 0; k++) {
			const struct extent *x = &files[i]->extents[k];
			uint64_t to = x->file_off + x->len < head ? x->file_off + x->len : head;
			r = range_list_add(l, &rl, x, x->file_off, to, (uint32_t)i);
		}
	if (r == 0)
		r = fetch_range_list(l, &rl, budget, c, FETCH_GUESS, stop, ret_bytes);
	free(rl.v);
	return r;
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
		if (first->window || !first->window_len || rb_cached_window(rb, first, scratch) == 0) {
			i++;
			continue;
		}
		size_t run = 1;
		uint64_t len = first->window_stored;
		for (; i + run < l->n_checkpoints; run++) {
			const struct checkpoint *next = &l->checkpoints[i + run];
			if (next->window || !next->window_len || next->window_at != first->window_at + len ||
			    len + next->window_stored > SPAN_READAHEAD_MAX_BYTES ||
			    rb_cached_window(rb, next, scratch) == 0)
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
			rb_count_fetched(rb, 1, len, FETCH_PREFETCH);
			rb_keep_windows(rb, l, i, data, first->window_at, len);
		}
		i += run;
	}
	return 0;
}

int remote_blob_prefetch(struct layer *l, bool only_landmark, const atomic_bool *stop)
{
	struct remote_blob *rb = l->source;
	if (only_landmark)
		return prefetch_listed(l, stop);
	int r = prefetch_all_windows(l, stop);
	return r < 0 ? r : prefetch_spans(rb, rb->prefetch_client, 0, rb->blob_size, FETCH_PREFETCH, stop, true);
}
