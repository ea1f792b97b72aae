/* A plain layer with no index is fetched whole.  The tar stream is scanned
 * while the blob arrives (the decoder reads the part of the temporary file
 * already written and waits for the rest), so the index is ready when the
 * last byte is; and every such layer of an image is fetched at once, each
 * on its own connection.  Nothing is served from a layer before its blob is
 * verified: the scan only learns where the files are.  If the fetch had to
 * start over, what the scan read may not be what was verified, and the
 * verified blob is scanned again. */
#include "whole_layer.h"

#include "cache.h"
#include "index_io.h"
#include "scan.h"

#include <fcntl.h>
#include <sys/stat.h>

/* Enough to fill a link that one connection does not fill, without making
 * a registry that limits clients per host refuse some of them. */
#define CONCURRENT_FETCHES 4

/* Whether the blob open on fd holds the bytes of digest, hashing it. */
static bool blob_matches(int fd, const char *digest)
{
	enum { CHUNK = 1 << 20 };
	struct digester *d = digester_new();
	_cleanup_free_ unsigned char *buf = malloc(CHUNK);
	bool ok = d && buf;
	for (off_t off = 0; ok;) {
		ssize_t n = pread(fd, buf, CHUNK, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			ok = n == 0;
			break;
		}
		digester_update(d, buf, (size_t)n);
		off += n;
	}
	char actual[DIGEST_SHA256_LEN + 1];
	if (ok)
		digester_final(d, actual);
	digester_free(d);
	return ok && strcmp(actual, digest) == 0;
}

/* The cached blob of d if it is there and intact; -1 if not. */
static int cached_blob_open(const char *cache_dir, const struct descriptor *d, const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -1;
	struct stat st;
	bool usable = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == d->size;
	if (usable && !cache_stamp_valid(cache_dir, d->digest, fd)) {
		usable = blob_matches(fd, d->digest);
		if (usable)
			cache_stamp(cache_dir, d->digest, fd);
	}
	if (!usable) {
		close(fd);
		return -1;
	}
	cache_note_used(fd);
	return fd;
}

/* A blob being fetched into the temporary file tmp_fd, and how far it got. */
struct arrival {
	struct registry_client *client;
	const char *cache_dir, *path, *tmp;
	const struct descriptor *d;
	int tmp_fd;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint64_t written;
	unsigned restarts; /* times the fetch started the file over */
	bool done;
	int result;
	int final_fd; /* the blob, verified, under its name in the cache */
	struct err err;
};

static void arrived(void *ctx, uint64_t written)
{
	struct arrival *a = ctx;
	pthread_mutex_lock(&a->lock);
	if (written < a->written)
		a->restarts++;
	a->written = written;
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->lock);
}

/* Fetches the blob into tmp, verifies it and renames it into place. */
static int fetch_into_cache(struct arrival *a)
{
	int r = registry_fetch_blob_streaming(a->client, a->d->digest, a->d->size, a->tmp_fd, arrived, a, &a->err);
	if (r == 0 && fsync(a->tmp_fd) < 0)
		r = err_set(&a->err, errno, "cannot sync %s into the cache: %s", a->d->digest, strerror(errno));
	if (r == 0 && rename(a->tmp, a->path) < 0)
		r = err_set(&a->err, errno, "cannot store %s in the cache: %s", a->d->digest, strerror(errno));
	if (r < 0) {
		unlink(a->tmp);
		return r;
	}
	cache_note_stored((uint64_t)a->d->size);
	a->final_fd = open(a->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (a->final_fd < 0)
		return err_set(&a->err, errno, "cannot open %s in the cache: %s", a->d->digest, strerror(errno));
	cache_stamp(a->cache_dir, a->d->digest, a->final_fd);
	return 0;
}

static void *fetch_main(void *arg)
{
	struct arrival *a = arg;
	int r = fetch_into_cache(a);
	pthread_mutex_lock(&a->lock);
	a->result = r;
	a->done = true;
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->lock);
	return NULL;
}

/* Opens tmp beside path for a blob to be fetched into. */
static int arrival_init(struct arrival *a, struct registry_client *client, const char *cache_dir,
			const struct descriptor *d, const char *path, char *tmp, struct err *err)
{
	*a = (struct arrival){
		.client = client, .cache_dir = cache_dir, .path = path, .tmp = tmp, .d = d, .final_fd = -1
	};
	a->tmp_fd = mkostemp(tmp, O_CLOEXEC);
	if (a->tmp_fd < 0)
		return err_set(err, errno, "cannot create a file in the cache \"%s\": %s", cache_dir, strerror(errno));
	pthread_mutex_init(&a->lock, NULL);
	pthread_cond_init(&a->cond, NULL);
	return 0;
}

static void arrival_done(struct arrival *a)
{
	close(a->tmp_fd);
	pthread_mutex_destroy(&a->lock);
	pthread_cond_destroy(&a->cond);
}

int blob_cache_fetch(struct registry_client *client, const char *cache_dir, const struct descriptor *d, int *ret_fd,
		     bool *ret_cached, struct err *err)
{
	_cleanup_free_ char *path = cache_path(cache_dir, "blobs", d->digest);
	if (!path)
		return -ENOMEM;
	*ret_cached = false;
	if ((*ret_fd = cached_blob_open(cache_dir, d, path)) >= 0) {
		*ret_cached = true;
		return 0;
	}
	_cleanup_free_ char *tmp = strdup_printf("%s.part.XXXXXX", path);
	if (!tmp)
		return -ENOMEM;
	struct arrival a;
	int r = arrival_init(&a, client, cache_dir, d, path, tmp, err);
	if (r < 0)
		return r;
	r = fetch_into_cache(&a);
	if (r < 0 && err)
		*err = a.err;
	*ret_fd = a.final_fd;
	arrival_done(&a);
	return r;
}

/* While it scans, the layer reads the temporary file up to what arrived. */
static int arriving_read_blob(struct layer *l, void *buf, size_t len, uint64_t off)
{
	struct arrival *a = l->source;
	pthread_mutex_lock(&a->lock);
	while (!a->done && a->restarts == 0 && a->written < off + len)
		pthread_cond_wait(&a->cond, &a->lock);
	int r = a->restarts ? -ESTALE : a->written >= off + len ? 0 : a->result < 0 ? a->result : -EIO;
	pthread_mutex_unlock(&a->lock);
	return r < 0 ? r : read_full_at(l->blob_fd, buf, len, (off_t)off);
}

static const struct layer_source_ops arriving_ops = { .read_blob = arriving_read_blob };

/* Turns for CONCURRENT_FETCHES fetches, shared by every image opened. */
static struct turns fetch_turns = TURNS_INIT(CONCURRENT_FETCHES);

struct whole_layer {
	struct registry_client *client; /* a duplicate: a connection of this layer's own */
	atomic_bool *cancel;            /* shared by the layers of one image */
	char *cache_dir;
	struct descriptor d;
	enum layer_compression compression;
	void (*progress)(const char *line);
	struct background_job job;
	/* What came of it. */
	struct layer *layer;
	bool fetched;
	int result;
	struct err err;
};

/* Fetches the blob while the scan reads it; the layer then reads the blob
 * verified under its name. */
static int fetch_and_scan(struct whole_layer *w, const char *path)
{
	_cleanup_free_ char *tmp = strdup_printf("%s.part.XXXXXX", path);
	if (!tmp)
		return -ENOMEM;
	struct arrival a;
	int r = arrival_init(&a, w->client, w->cache_dir, &w->d, path, tmp, &w->err);
	if (r < 0)
		return r;
	pthread_t fetcher;
	bool streaming = pthread_create(&fetcher, NULL, fetch_main, &a) == 0;
	struct err scan_err = { 0 };
	int scan_fd = streaming ? fcntl(a.tmp_fd, F_DUPFD_CLOEXEC, 3) : -1;
	int scanned = scan_fd < 0 ? -ESTALE
				  : layer_open_scan_through(w->d.digest, w->compression, scan_fd, (uint64_t)w->d.size,
							    &arriving_ops, &a, &w->layer, &scan_err);
	if (streaming)
		pthread_join(fetcher, NULL);
	else
		fetch_main(&a);
	if ((r = a.result) < 0) {
		w->err = a.err;
	} else if (scanned < 0 && scanned != -ESTALE && a.restarts == 0) {
		/* The bytes it read were the verified ones: the layer is bad. */
		w->err = scan_err;
		r = scanned;
	} else if (scanned < 0 || a.restarts > 0) {
		w->layer = layer_free(w->layer);
		r = layer_open_scan(w->d.digest, w->compression, TAKE_FD(a.final_fd), &w->layer, &w->err);
	} else {
		close(w->layer->blob_fd);
		w->layer->blob_fd = TAKE_FD(a.final_fd);
	}
	if (r < 0)
		w->layer = layer_free(w->layer);
	if (a.final_fd >= 0)
		close(a.final_fd);
	arrival_done(&a);
	return r;
}

static int open_whole(struct whole_layer *w)
{
	_cleanup_free_ char *path = cache_path(w->cache_dir, "blobs", w->d.digest);
	_cleanup_free_ char *index_path = cache_path(w->cache_dir, "index", w->d.digest);
	if (!path || !index_path)
		return -ENOMEM;
	int fd = cached_blob_open(w->cache_dir, &w->d, path);
	if (fd >= 0 && layer_open_saved(w->d.digest, w->compression, fd, index_path, &w->layer) == 0) {
		cache_note_used_path(index_path);
		return 0;
	}
	int r;
	if (fd >= 0) {
		if (w->progress) {
			char line[256];
			snprintf(line, sizeof(line), "indexing %s", w->d.digest);
			w->progress(line);
		}
		r = layer_open_scan(w->d.digest, w->compression, fd, &w->layer, &w->err);
	} else {
		w->fetched = true;
		turn_take(&fetch_turns);
		r = atomic_load(w->cancel) ? -ECANCELED : fetch_and_scan(w, path);
		turn_give_back(&fetch_turns);
	}
	if (r < 0)
		return r;
	/* A failure to save only costs the next mount a rescan. */
	struct stat st;
	if (layer_save(w->layer, index_path) == 0 && stat(index_path, &st) == 0)
		cache_note_stored((uint64_t)st.st_size);
	return 0;
}

static void *whole_layer_main(void *arg)
{
	struct whole_layer *w = arg;
	w->result = open_whole(w);
	/* The image cannot open: the other layers need not come either. */
	if (w->result < 0)
		atomic_store(w->cancel, true);
	return NULL;
}

int whole_layer_start(const struct registry_client *client, const char *cache_dir, const struct descriptor *d,
		      enum layer_compression compression, void (*progress)(const char *line), atomic_bool *cancel,
		      struct whole_layer **ret)
{
	struct whole_layer *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->cancel = cancel;
	w->client = registry_client_dup(client);
	w->cache_dir = strdup(cache_dir);
	w->d = (struct descriptor){ .digest = strdup(d->digest), .size = d->size };
	w->compression = compression;
	w->progress = progress;
	if (w->client)
		registry_client_cancel_on(w->client, cancel);
	if (!w->client || !w->cache_dir || !w->d.digest) {
		struct layer *none;
		bool fetched;
		whole_layer_finish(w, &none, &fetched, NULL);
		return -ENOMEM;
	}
	background_job_start(&w->job, whole_layer_main, w);
	*ret = w;
	return 0;
}

int whole_layer_finish(struct whole_layer *w, struct layer **ret, bool *ret_fetched, struct err *err)
{
	background_job_join(&w->job);
	int r = w->result;
	if (r < 0 && err)
		*err = w->err;
	*ret = TAKE_PTR(w->layer);
	*ret_fetched = w->fetched;
	registry_client_free(w->client);
	free(w->cache_dir);
	free(w->d.digest);
	free(w);
	return r;
}
