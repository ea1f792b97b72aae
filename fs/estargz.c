/* eStargz layers: the table of contents instead of a scan, and file bytes
 * fetched a chunk at a time with Range requests.
 *
 * Trust chain: the manifest is verified by digest; its layer annotation gives
 * the TOC digest; the TOC (verified against it) gives each chunk's digest;
 * each fetched chunk is verified against that before it is cached or served. */
#include "archive_lib.h"
#include "decode.h"
#include "cache.h"
#include "remote_blob.h"
#include "registry.h"

#include <fcntl.h>
#include <libdeflate.h>
#include <sys/stat.h>
#include <zlib.h>
#include <zstd.h>

#define FOOTER_SIZE 51
#define LEGACY_FOOTER_SIZE 47
#define TOC_MAX_COMPRESSED (64u << 20)
#define TOC_MAX_SIZE (256u << 20)
#define CHUNK_FETCH_ATTEMPTS 3
/* Background fetches ask for runs of adjacent chunks up to this size. */
#define PREFETCH_BATCH_BYTES (8u << 20)
#define PREFETCH_BATCH_CHUNKS 1024
/* A read that must fetch also takes the adjacent chunks that follow, up to
 * this many compressed bytes: programs read neighbouring files together. */
#define READAHEAD_BYTES (128u << 10)
/* The layout version is in the name: a change of layout makes a new pack. */
#define PACK_NAME "%s/chunks/sha256/%s.v1.pack"
/* The parsed TOC, saved (chunked_layer_save). */
#define TOC_INDEX_NAME "%s/chunks/sha256/%s.toc"
/* Packs of one mount, when eviction keeps unlinking them (a cap smaller
 * than what the mount reads); the last one is kept on using beyond that.
 * Unlinked packs hold at most the chunks this mount read, until it ends. */
#define PACK_GENERATIONS 255
/* On-demand connections per layer: reads of different chunks fetch at the
 * same time, so that a slow or stalled read never holds up the others. */
#define DEMAND_CLIENTS 4

struct remote {
	enum layer_compression compression; /* of each chunk's member or frame */
	pthread_mutex_t lock; /* guards the counters, inflight, verified, packs and clients; never held across I/O */
	pthread_cond_t inflight_done, client_free, stores_done;
	/* Threads still storing the read-ahead part of an on-demand fetch. */
	size_t deferred_stores;
	/* The TOC this mount parsed, saved after the mount (layer_start_background). */
	char toc_unsaved[DIGEST_SHA256_LEN + 1];
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
	/* The layer's verified chunks, each at its slot in one sparse file
	 * (PACK_NAME): one file per chunk made ext4 inode allocation a third
	 * of a first start's CPU.  When eviction unlinks the pack, later
	 * chunks go to a new one; the old ones stay open for the chunks they
	 * hold, so a reader's descriptor is never closed under it. */
	char *pack_path, *toc_index_path;
	int packs[PACK_GENERATIONS];
	size_t n_packs;
	uint64_t *slot; /* by chunk order: offset in the pack */
	char digest[72];
	uint64_t bytes_fetched, requests, chunk_hits, chunk_misses, bytes_prefetched;
	/* Every chunk of the layer in blob order, for fetching neighbours together. */
	const struct chunk **by_offset;
	size_t n_chunks;
	/* By chunk order: 0, or 1 + the index in packs of the pack in which
	 * this process verified the chunk.  Packs are hashed again on first
	 * use, so the cache needs no fsync and no temporary files: a chunk
	 * torn by a crash, damaged since, or half written by another daemon
	 * (which writes the same verified bytes) is fetched again, never served. */
	uint8_t *verified;
	/* Chunks being fetched right now: a second reader waits for the first
	 * instead of fetching the same bytes again. */
	const struct chunk **inflight;
	size_t n_inflight, allocated_inflight;
};

void remote_free(struct remote *r)
{
	if (!r)
		return;
	/* The threads storing read-ahead chunks use r, its connections too
	 * (a chunk that fails to store is fetched again). */
	pthread_mutex_lock(&r->lock);
	while (r->deferred_stores)
		pthread_cond_wait(&r->stores_done, &r->lock);
	pthread_mutex_unlock(&r->lock);
	if (r->toc_saving)
		pthread_join(r->toc_saver, NULL);
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
	free(r->verified);
	free(r->slot);
	for (size_t i = 0; i < r->n_packs; i++)
		close(r->packs[i]);
	free(r->pack_path);
	free(r->toc_index_path);
	free(r);
}

void layer_get_stats(struct layer *l, struct layer_stats *ret)
{
	memset(ret, 0, sizeof(*ret));
	if (l->remote_blob)
		remote_blob_stats(l->remote_blob, ret);
	if (!l->remote)
		return;
	pthread_mutex_lock(&l->remote->lock);
	ret->bytes_fetched = l->remote->bytes_fetched;
	ret->requests = l->remote->requests;
	ret->chunk_hits = l->remote->chunk_hits;
	ret->chunk_misses = l->remote->chunk_misses;
	ret->bytes_prefetched = l->remote->bytes_prefetched;
	pthread_mutex_unlock(&l->remote->lock);
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

static int fetch(struct remote *r, uint64_t off, size_t len, void *buf, struct err *err)
{
	demand_note();
	size_t slot;
	struct registry_client *client = client_take(r, &slot);
	if (!client)
		return err_set(err, ENOMEM, "no connection for a read of layer %s", r->digest);
	int ret = registry_fetch_range(client, r->digest, off, len, buf, err);
	client_give_back(r, slot);
	if (ret == 0) {
		pthread_mutex_lock(&r->lock);
		r->bytes_fetched += len;
		r->requests++;
		pthread_mutex_unlock(&r->lock);
	}
	return ret;
}

static void count_prefetched(struct remote *r, uint64_t bytes, uint64_t requests)
{
	pthread_mutex_lock(&r->lock);
	r->bytes_fetched += bytes;
	r->bytes_prefetched += bytes;
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

/* Several ranges on the caller's own connection, as fetch_background. */
static int fetch_ranges_background(struct remote *r, struct registry_client *client, struct byterange *ranges,
				   size_t n, struct err *err)
{
	int requests = registry_fetch_ranges(client, r->digest, ranges, n, err);
	if (requests < 0)
		return requests;
	uint64_t bytes = 0;
	for (size_t i = 0; i < n; i++)
		bytes += ranges[i].len;
	count_prefetched(r, bytes, (uint64_t)requests);
	return 0;
}

/* Footer: a gzip member whose FEXTRA holds "%016x" of the TOC offset and
 * "STARGZ", behind the subfield id "SG" (legacy footers have no subfield). */
int estargz_parse_footer(const unsigned char *f, size_t n, uint64_t *ret_toc_off)
{
	const unsigned char *text;
	if (n == FOOTER_SIZE) {
		if (f[0] != 0x1f || f[1] != 0x8b || f[2] != 8 || !(f[3] & 4) || f[10] != 26 || f[11] != 0 ||
		    f[12] != 'S' || f[13] != 'G' || f[14] != 22 || f[15] != 0)
			return -EINVAL;
		text = f + 16;
	} else {
		if (f[0] != 0x1f || f[1] != 0x8b || f[2] != 8 || !(f[3] & 4) || f[10] != 22 || f[11] != 0)
			return -EINVAL;
		text = f + 12;
	}
	if (memcmp(text + 16, "STARGZ", 6) != 0)
		return -EINVAL;
	uint64_t v = 0;
	for (int i = 0; i < 16; i++) {
		int c = text[i];
		int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
		if (d < 0)
			return -EINVAL;
		v = v << 4 | (uint64_t)d;
	}
	*ret_toc_off = v;
	return 0;
}

#define GZIP_MIN_MEMBER 18 /* header and trailer */

/* The size of a gzip member's output (mod 2^32), from its trailer. */
static uint32_t gzip_isize(const unsigned char *member, size_t len)
{
	const unsigned char *t = member + len - 4;
	return (uint32_t)t[0] | (uint32_t)t[1] << 8 | (uint32_t)t[2] << 16 | (uint32_t)t[3] << 24;
}

/* The common case, a chunk that is one gzip member, in one call of
 * libdeflate: 2.3 times zlib's speed here, and inflating was most of the
 * daemon's CPU in a lazy start.  False when the member is not just the
 * chunk (its trailer gives its size) or libdeflate refuses it. */
static bool inflate_whole_member(const unsigned char *comp, size_t comp_len, uint64_t inner_off, unsigned char *out,
				 size_t size)
{
	if (inner_off != 0 || comp_len < GZIP_MIN_MEMBER || size == 0 || gzip_isize(comp, comp_len) != (uint32_t)size)
		return false;
	struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
	if (!d)
		return false;
	size_t in_used = 0, made = 0;
	enum libdeflate_result r = libdeflate_gzip_decompress_ex(d, comp, comp_len, out, size, &in_used, &made);
	libdeflate_free_decompressor(d);
	/* All of comp: a second member behind the first is not this case. */
	return r == LIBDEFLATE_SUCCESS && made == size && in_used == comp_len;
}

/* The TOC member inflated in one call: it is on the path of every first
 * mount.  NULL when it is not one gzip member; libarchive inflates it then. */
static unsigned char *inflate_toc_member(const unsigned char *gz, size_t len, size_t *ret_len)
{
	if (len < GZIP_MIN_MEMBER)
		return NULL;
	uint32_t size = gzip_isize(gz, len);
	if (size == 0 || size > TOC_MAX_SIZE + (1u << 20)) /* the TOC and its tar headers */
		return NULL;
	unsigned char *out = malloc(size);
	if (out && inflate_whole_member(gz, len, 0, out, size)) {
		*ret_len = size;
		return out;
	}
	free(out);
	return NULL;
}

/* The TOC member is a gzipped tar holding one entry, stargz.index.json. */
static int extract_toc(const void *gz, size_t len, char **ret_json, size_t *ret_len, struct err *err)
{
	const struct archive_lib *ar = archive_lib_get(err);
	if (!ar)
		return err_wrap(err, "cannot read the TOC");
	size_t tar_len = 0;
	_cleanup_free_ unsigned char *tar = inflate_toc_member(gz, len, &tar_len);
	struct archive *a = ar->read_new();
	struct archive_entry *ae;
	int r;
	if (!a)
		return -ENOMEM;
	ar->read_support_filter_gzip(a);
	ar->read_support_format_tar(a);
	if (ar->read_open_memory(a, tar ? (const void *)tar : gz, tar ? tar_len : len) != ARCHIVE_OK ||
	    ar->read_next_header(a, &ae) != ARCHIVE_OK) {
		r = err_set(err, EINVAL, "the TOC member is not a gzipped tar: %s", ar->error_string(a));
		goto out;
	}
	if (strcmp(ar->entry_pathname(ae), TOC_NAME) != 0 || ar->entry_size(ae) < 0 ||
	    ar->entry_size(ae) > TOC_MAX_SIZE) {
		r = err_set(err, EINVAL, "the TOC member holds \"%s\" (%lld bytes), not a " TOC_NAME " within bounds",
			    ar->entry_pathname(ae), (long long)ar->entry_size(ae));
		goto out;
	}
	size_t size = (size_t)ar->entry_size(ae);
	char *json = malloc(size + 1);
	if (!json) {
		r = -ENOMEM;
		goto out;
	}
	la_ssize_t got = ar->read_data(a, json, size);
	if (got != (la_ssize_t)size) {
		free(json);
		r = err_set(err, EINVAL, "the TOC is truncated");
		goto out;
	}
	json[size] = '\0';
	*ret_json = json;
	*ret_len = size;
	r = 0;
out:
	ar->read_free(a);
	return r;
}

static int cmp_chunk_offset(const void *a, const void *b)
{
	const struct chunk *x = *(const struct chunk *const *)a, *y = *(const struct chunk *const *)b;
	return x->comp_off < y->comp_off ? -1 : x->comp_off > y->comp_off;
}

static int open_pack(const char *path)
{
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
	return fd < 0 ? -errno : fd;
}

static int remote_new(struct registry_client *client, struct registry_client *prefetch_client, const char *digest,
		      enum layer_compression compression, const char *cache_dir, struct remote **ret, struct err *err)
{
	struct remote *rem = calloc(1, sizeof(*rem));
	if (!rem) {
		registry_client_free(client);
		registry_client_free(prefetch_client);
		return -ENOMEM;
	}
	pthread_mutex_init(&rem->lock, NULL);
	pthread_cond_init(&rem->inflight_done, NULL);
	pthread_cond_init(&rem->stores_done, NULL);
	pthread_cond_init(&rem->client_free, NULL);
	rem->clients[rem->n_clients++] = client;
	rem->prefetch_client = prefetch_client;
	rem->compression = compression;
	snprintf(rem->digest, sizeof(rem->digest), "%s", digest);
	_cleanup_free_ char *dir = strdup_printf("%s/chunks/sha256", cache_dir);
	rem->pack_path = strdup_printf(PACK_NAME, cache_dir, digest + 7);
	rem->toc_index_path = strdup_printf(TOC_INDEX_NAME, cache_dir, digest + 7);
	rem->template = registry_client_dup(client);
	if (!dir || !rem->pack_path || !rem->toc_index_path || !rem->template) {
		remote_free(rem);
		return -ENOMEM;
	}
	int r = mkdir_parents(dir, 0755);
	if (r == 0 && (r = open_pack(rem->pack_path)) >= 0) {
		rem->packs[rem->n_packs++] = r;
		r = 0;
	}
	if (r < 0) {
		r = err_set(err, r, "cannot open the chunk cache \"%s\": %s", rem->pack_path, strerror(-r));
		remote_free(rem);
		return r;
	}
	*ret = rem;
	return 0;
}

/* Parses a verified TOC into a new chunked layer served through rem, which
 * the layer owns on success and the caller still owns on failure. */
/* Numbers the layer's chunks in blob order, gives each its slot in the
 * pack, and hands the layer rem; on failure the caller keeps both. */
static int chunked_layer_attach(struct layer *l, struct remote *rem)
{
	/* Blob order, for fetching a chunk together with the ones after it. */
	for (size_t i = 0; i < l->n_entries; i++)
		rem->n_chunks += l->entries[i].n_chunks;
	rem->by_offset = calloc(rem->n_chunks ? rem->n_chunks : 1, sizeof(*rem->by_offset));
	rem->verified = calloc(rem->n_chunks ? rem->n_chunks : 1, 1);
	if (!rem->by_offset || !rem->verified)
		return -ENOMEM;
	size_t k = 0;
	for (size_t i = 0; i < l->n_entries; i++)
		for (uint32_t j = 0; j < l->entries[i].n_chunks; j++)
			rem->by_offset[k++] = &l->entries[i].chunks[j];
	qsort(rem->by_offset, rem->n_chunks, sizeof(*rem->by_offset), cmp_chunk_offset);
	rem->slot = calloc(rem->n_chunks ? rem->n_chunks : 1, sizeof(*rem->slot));
	if (!rem->slot)
		return -ENOMEM;
	/* Slots in blob order, so that neighbours fetched together are written
	 * together; zeros chunks take no room. */
	uint64_t next_slot = 0;
	for (k = 0; k < rem->n_chunks; k++) {
		struct chunk *c = (struct chunk *)rem->by_offset[k];
		c->order = (uint32_t)k;
		rem->slot[k] = next_slot;
		next_slot += c->zeros ? 0 : c->size;
	}
	l->remote = rem;
	return 0;
}

/* The layer from the TOC saved by an earlier mount: no fetch and no parse
 * (a 34,000-entry TOC takes a quarter of a second to parse).  -ENOENT when
 * there is none for this TOC digest. */
static int open_saved_toc(const char *digest, uint64_t blob_size, const char *toc_digest, struct remote *rem,
			  struct layer **ret)
{
	struct layer *l;
	int r = chunked_layer_open_saved(digest, toc_digest, rem->compression, blob_size, rem->toc_index_path, &l);
	if (r < 0)
		return r;
	r = chunked_layer_attach(l, rem);
	if (r < 0) {
		layer_free(l);
		return r;
	}
	*ret = l;
	return 0;
}

static void *toc_save_main(void *arg)
{
	const struct layer *l = arg;
	/* An optimisation: a failure costs the next mount a parse, no more. */
	(void)chunked_layer_save(l, l->remote->toc_unsaved, l->remote->toc_index_path);
	return NULL;
}

/* Saving a large TOC takes longer than the rest of a mount after the
 * parse: it is done on a thread, which remote_free() joins. */
void layer_start_background(struct layer *l)
{
	if (l->remote && l->remote->toc_unsaved[0] && !l->remote->toc_saving)
		l->remote->toc_saving = pthread_create(&l->remote->toc_saver, NULL, toc_save_main, l) == 0;
}

/* The layer from its verified TOC, which is then saved for the next mount. */
static int chunked_layer_new(const char *digest, uint64_t blob_size, struct remote *rem, const char *json,
			     size_t json_len, uint64_t toc_off, const char *toc_digest, struct layer **ret,
			     struct err *err)
{
	struct layer *l = layer_alloc(digest, rem->compression, -1);
	if (!l)
		return -ENOMEM;
	l->blob_size = blob_size;
	l->format = LAYER_CHUNKED;
	int r = estargz_parse_toc(l, json, json_len, toc_off, err);
	if (r == 0)
		r = chunked_layer_attach(l, rem);
	if (r < 0) {
		layer_free(l);
		return r;
	}
	snprintf(rem->toc_unsaved, sizeof(rem->toc_unsaved), "%s", toc_digest);
	*ret = l;
	return 0;
}

/* The TOC is trusted through the digest a verified manifest annotates it with. */
static int check_toc_digest(const void *data, size_t len, const char *want, struct err *err)
{
	char actual[DIGEST_SHA256_LEN + 1];
	digest_sha256(data, len, actual);
	if (strcmp(actual, want) != 0)
		return err_set(err, EBADMSG, "the TOC digest %s does not match the annotation %s", actual, want);
	return 0;
}

int estargz_open(struct registry_client *client, struct registry_client *prefetch_client, const char *digest,
		 uint64_t blob_size, const char *toc_digest, const char *cache_dir, struct layer **ret, struct err *err)
{
	struct remote *rem = NULL;
	_cleanup_free_ char *toc_gz = NULL, *json = NULL;
	size_t json_len = 0;
	int r = remote_new(client, prefetch_client, digest, COMPRESSION_GZIP, cache_dir, &rem, err);
	if (r < 0)
		goto fail;
	r = open_saved_toc(digest, blob_size, toc_digest, rem, ret);
	if (r != -ENOENT) {
		if (r == 0)
			return 0;
		goto fail;
	}

	unsigned char footer[FOOTER_SIZE];
	uint64_t toc_off = 0;
	size_t footer_len = FOOTER_SIZE;
	if (blob_size < FOOTER_SIZE)
		footer_len = LEGACY_FOOTER_SIZE;
	if (blob_size < footer_len) {
		r = err_set(err, EINVAL, "too small for an eStargz layer");
		goto fail;
	}
	archive_lib_preload(); /* for the TOC, while the footer and the TOC arrive */
	r = fetch(rem, blob_size - footer_len, footer_len, footer, err);
	if (r < 0)
		goto fail;
	if (estargz_parse_footer(footer, footer_len, &toc_off) < 0) {
		footer_len = LEGACY_FOOTER_SIZE;
		if (estargz_parse_footer(footer + (FOOTER_SIZE - LEGACY_FOOTER_SIZE), LEGACY_FOOTER_SIZE, &toc_off) < 0) {
			r = err_set(err, EINVAL, "no eStargz footer at the end of the blob");
			goto fail;
		}
	}
	if (toc_off >= blob_size - footer_len || blob_size - footer_len - toc_off > TOC_MAX_COMPRESSED) {
		r = err_set(err, EINVAL, "the eStargz footer points to an impossible TOC offset %llu",
			    (unsigned long long)toc_off);
		goto fail;
	}
	size_t toc_gz_len = (size_t)(blob_size - footer_len - toc_off);
	toc_gz = malloc(toc_gz_len);
	if (!toc_gz) {
		r = -ENOMEM;
		goto fail;
	}
	r = fetch(rem, toc_off, toc_gz_len, toc_gz, err);
	if (r < 0)
		goto fail;
	r = extract_toc(toc_gz, toc_gz_len, &json, &json_len, err);
	/* Peak memory matters more than a free() later: drop it now. */
	free(TAKE_PTR(toc_gz));
	if (r < 0)
		goto fail;
	r = check_toc_digest(json, json_len, toc_digest, err);
	if (r < 0)
		goto fail;
	r = chunked_layer_new(digest, blob_size, rem, json, json_len, toc_off, toc_digest, ret, err);
	if (r < 0)
		goto fail;
	return 0;
fail:
	remote_free(rem);
	if (err && err->code)
		err_wrap(err, "eStargz layer %s", digest);
	return r;
}

int zstd_chunked_open(struct registry_client *client, struct registry_client *prefetch_client, const char *digest,
		      uint64_t blob_size, const char *position, const char *toc_checksum, const char *cache_dir,
		      struct layer **ret, struct err *err)
{
	struct remote *rem = NULL;
	_cleanup_free_ unsigned char *compressed = NULL;
	_cleanup_free_ char *json = NULL;
	unsigned long long off, len, uncompressed;
	int kind, consumed = 0;
	int r = remote_new(client, prefetch_client, digest, COMPRESSION_ZSTD, cache_dir, &rem, err);
	if (r < 0)
		goto fail;
	if (sscanf(position, "%llu:%llu:%llu:%d%n", &off, &len, &uncompressed, &kind, &consumed) != 4 ||
	    position[consumed] != '\0' || kind != 1 || len == 0 || off >= blob_size || len > blob_size - off ||
	    len > TOC_MAX_COMPRESSED || uncompressed > TOC_MAX_SIZE || !digest_is_valid(toc_checksum)) {
		r = err_set(err, EINVAL, "invalid zstd:chunked manifest position \"%s\"", position);
		goto fail;
	}
	r = open_saved_toc(digest, blob_size, toc_checksum, rem, ret);
	if (r != -ENOENT) {
		if (r == 0)
			return 0;
		goto fail;
	}
	compressed = malloc((size_t)len);
	json = malloc((size_t)uncompressed + 1);
	if (!compressed || !json) {
		r = -ENOMEM;
		goto fail;
	}
	r = fetch(rem, off, (size_t)len, compressed, err);
	if (r < 0)
		goto fail;
	r = check_toc_digest(compressed, (size_t)len, toc_checksum, err);
	if (r < 0)
		goto fail;
	size_t n = ZSTD_decompress(json, (size_t)uncompressed, compressed, (size_t)len);
	if (ZSTD_isError(n) || n != uncompressed) {
		r = err_set(err, EINVAL, "the TOC does not decompress to %llu bytes", uncompressed);
		goto fail;
	}
	free(TAKE_PTR(compressed));
	json[n] = '\0';
	r = chunked_layer_new(digest, blob_size, rem, json, n, off, toc_checksum, ret, err);
	if (r < 0)
		goto fail;
	return 0;
fail:
	remote_free(rem);
	if (err && err->code)
		err_wrap(err, "zstd:chunked layer %s", digest);
	return r;
}

/* Decompresses the frame(s) in comp and takes size bytes from inner_off on. */
static int unzstd_chunk(const unsigned char *comp, size_t comp_len, uint64_t inner_off, unsigned char *out,
			size_t size)
{
	ZSTD_DCtx *d = ZSTD_createDCtx();
	if (!d)
		return -ENOMEM;
	ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, 27);
	unsigned char discard[16384];
	uint64_t skip = inner_off;
	size_t got = 0;
	ZSTD_inBuffer in = { comp, comp_len, 0 };
	int r = 0;
	while (got < size) {
		ZSTD_outBuffer o = skip > 0 ? (ZSTD_outBuffer){ discard, skip < sizeof(discard) ? (size_t)skip : sizeof(discard), 0 }
					    : (ZSTD_outBuffer){ out + got, size - got, 0 };
		size_t zr = ZSTD_decompressStream(d, &o, &in);
		if (ZSTD_isError(zr) || (o.pos == 0 && in.pos == in.size)) {
			r = -EIO;
			break;
		}
		if (skip > 0)
			skip -= o.pos;
		else
			got += o.pos;
	}
	ZSTD_freeDCtx(d);
	return r;
}

/* Inflates the member(s) in comp and takes size bytes from inner_off on. */
static int inflate_chunk(const unsigned char *comp, size_t comp_len, uint64_t inner_off, unsigned char *out,
			 size_t size)
{
	if (inflate_whole_member(comp, comp_len, inner_off, out, size))
		return 0;
	z_stream z = { 0 };
	if (inflateInit2(&z, 15 + 32) != Z_OK)
		return -ENOMEM;
	unsigned char discard[16384];
	uint64_t skip = inner_off;
	size_t got = 0;
	z.next_in = (unsigned char *)comp;
	z.avail_in = (uInt)comp_len;
	int r = 0;
	while (got < size) {
		if (skip > 0) {
			z.next_out = discard;
			z.avail_out = (uInt)(skip < sizeof(discard) ? skip : sizeof(discard));
		} else {
			z.next_out = out + got;
			z.avail_out = (uInt)(size - got);
		}
		uInt before = z.avail_out;
		int zr = inflate(&z, Z_NO_FLUSH);
		size_t made = before - z.avail_out;
		if (skip > 0)
			skip -= made;
		else
			got += made;
		if (zr == Z_STREAM_END) {
			if (got == size)
				break;
			/* Small files may share members: go on with the next one. */
			if (z.avail_in == 0 || inflateReset(&z) != Z_OK) {
				r = -EIO;
				break;
			}
			continue;
		}
		if (zr != Z_OK || (made == 0 && z.avail_in == 0)) {
			r = -EIO;
			break;
		}
	}
	inflateEnd(&z);
	return r;
}

/* The pack holding the chunk verified by this process, or -1. */
static int verified_pack(struct remote *rem, const struct chunk *c)
{
	pthread_mutex_lock(&rem->lock);
	int fd = rem->verified[c->order] ? rem->packs[rem->verified[c->order] - 1] : -1;
	pthread_mutex_unlock(&rem->lock);
	return fd;
}

/* The pack in which the chunk is cached and verified, or -ENOENT.  A chunk
 * this process has not verified yet is hashed first; a hole (nothing
 * written at its slot) is known absent without reading. */
static int chunk_cached(struct remote *rem, const struct chunk *c)
{
	int fd = verified_pack(rem, c);
	if (fd >= 0)
		return fd;
	pthread_mutex_lock(&rem->lock);
	size_t newest = rem->n_packs - 1;
	fd = rem->packs[newest];
	pthread_mutex_unlock(&rem->lock);
	off_t slot = (off_t)rem->slot[c->order];
	if (lseek(fd, slot, SEEK_DATA) != slot)
		return -ENOENT;
	_cleanup_free_ unsigned char *data = malloc(c->size ? c->size : 1);
	char actual[DIGEST_SHA256_LEN + 1];
	if (!data || read_full_at(fd, data, c->size, slot) < 0)
		return -ENOENT;
	digest_sha256(data, c->size, actual);
	if (strcmp(actual, c->digest) != 0)
		return -ENOENT;
	pthread_mutex_lock(&rem->lock);
	rem->verified[c->order] = (uint8_t)(newest + 1);
	pthread_mutex_unlock(&rem->lock);
	cache_note_used(fd);
	return fd;
}

/* Chunks are stored by slot, so a chunk is in flight as itself: another
 * with the same digest has its own slot to fill. */
static ssize_t inflight_index(const struct remote *rem, const struct chunk *c)
{
	for (size_t i = 0; i < rem->n_inflight; i++)
		if (rem->inflight[i] == c)
			return (ssize_t)i;
	return -1;
}

/* The pack new chunks go to: a new one when eviction unlinked the last. */
static int pack_for_writing(struct remote *rem, size_t *ret_index)
{
	pthread_mutex_lock(&rem->lock);
	size_t newest = rem->n_packs - 1;
	int fd = rem->packs[newest];
	pthread_mutex_unlock(&rem->lock);
	struct stat st;
	if (fstat(fd, &st) < 0 || st.st_nlink > 0 || newest + 1 >= PACK_GENERATIONS) {
		*ret_index = newest;
		return fd;
	}
	int fresh = open_pack(rem->pack_path);
	pthread_mutex_lock(&rem->lock);
	/* Unless another writer got there first. */
	if (fresh >= 0 && rem->n_packs == newest + 1) {
		rem->packs[rem->n_packs++] = fresh;
		fresh = -1;
	}
	newest = rem->n_packs - 1;
	fd = rem->packs[newest];
	pthread_mutex_unlock(&rem->lock);
	if (fresh >= 0)
		close(fresh);
	*ret_index = newest;
	return fd;
}

/* Inflates one chunk out of its compressed bytes, verifies it and writes it
 * at its slot in the pack.  -EBADMSG when the bytes do not match. */
static int chunk_store(struct remote *rem, const struct chunk *c, const unsigned char *comp, size_t comp_len)
{
	_cleanup_free_ unsigned char *data = malloc(c->size ? c->size : 1);
	if (!data)
		return -ENOMEM;
	int dr = rem->compression == COMPRESSION_ZSTD ? unzstd_chunk(comp, comp_len, c->inner_off, data, c->size)
						      : inflate_chunk(comp, comp_len, c->inner_off, data, c->size);
	if (dr < 0)
		return -EBADMSG;
	char actual[DIGEST_SHA256_LEN + 1];
	digest_sha256(data, c->size, actual);
	if (strcmp(actual, c->digest) != 0)
		return -EBADMSG; /* never cache or serve bytes that do not match */
	size_t pack;
	int fd = pack_for_writing(rem, &pack);
	int r = write_full_at(fd, data, c->size, (off_t)rem->slot[c->order]);
	if (r < 0)
		return r;
	pthread_mutex_lock(&rem->lock);
	rem->verified[c->order] = (uint8_t)(pack + 1);
	pthread_mutex_unlock(&rem->lock);
	cache_note_stored(c->size);
	return 0;
}

static bool chunk_bounds_valid(const struct chunk *c)
{
	return c->comp_end > c->comp_off && c->comp_end - c->comp_off <= CHUNK_MAX_SIZE * 2;
}

static bool chunk_claim(struct remote *rem, const struct chunk *c);
static void chunk_release(struct remote *rem, const struct chunk *c);

/* Marks the chunk as being fetched by the caller; rem->lock is held. */
static bool inflight_add_locked(struct remote *rem, const struct chunk *c)
{
	if (grow_array((void **)&rem->inflight, &rem->allocated_inflight, rem->n_inflight + 1,
		       sizeof(*rem->inflight)) < 0)
		return false;
	rem->inflight[rem->n_inflight++] = c;
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
				    : fetch(rem, c->comp_off, comp_len, comp, &err);
		if (fr < 0)
			return -EIO; /* the client already retried transient errors */
		int r = chunk_store(rem, c, comp, comp_len);
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
		if (!comp || chunk_store(rem, batch[i], comp + (batch[i]->comp_off - start),
					 (size_t)(batch[i]->comp_end - batch[i]->comp_off)) < 0)
			(void)chunk_fetch(rem, batch[i], bg);
		pthread_mutex_lock(&rem->lock);
		rem->chunk_misses++;
		pthread_mutex_unlock(&rem->lock);
		chunk_release(rem, batch[i]);
	}
}

struct deferred_store {
	struct remote *rem;
	unsigned char *comp;
	uint64_t start;
	size_t n;
	const struct chunk *chunks[];
};

static void *deferred_store_main(void *arg)
{
	struct deferred_store *d = arg;
	struct remote *rem = d->rem;
	store_batch(rem, d->chunks, d->n, d->comp, d->start, NULL);
	free(d->comp);
	free(d);
	pthread_mutex_lock(&rem->lock);
	if (--rem->deferred_stores == 0)
		pthread_cond_broadcast(&rem->stores_done);
	pthread_mutex_unlock(&rem->lock);
	return NULL;
}

/* Stores batch[1..n) on a thread of its own; false if none could start. */
static bool store_later(struct remote *rem, const struct chunk **batch, size_t n, unsigned char *comp, uint64_t start)
{
	struct deferred_store *d = malloc(sizeof(*d) + (n - 1) * sizeof(d->chunks[0]));
	if (!d)
		return false;
	*d = (struct deferred_store){ .rem = rem, .comp = comp, .start = start, .n = n - 1 };
	memcpy(d->chunks, batch + 1, (n - 1) * sizeof(d->chunks[0]));
	pthread_mutex_lock(&rem->lock);
	rem->deferred_stores++;
	pthread_mutex_unlock(&rem->lock);
	pthread_t thread;
	pthread_attr_t attr;
	bool started = pthread_attr_init(&attr) == 0 && pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
		       pthread_create(&thread, &attr, deferred_store_main, d) == 0;
	pthread_attr_destroy(&attr);
	if (!started) {
		pthread_mutex_lock(&rem->lock);
		rem->deferred_stores--;
		pthread_mutex_unlock(&rem->lock);
		free(d);
	}
	return started;
}

/* One Range request for a run of adjacent chunks the caller claimed; each is
 * verified on its own, and one that fails is fetched again alone.  Releases
 * the claims.  On demand, batch[0] is what the reader waits for: the chunks
 * read ahead after it are inflated, hashed and stored on another thread, so
 * that their work is not on the reader's path (a reader that wants one of
 * them waits for its claim as for any chunk in flight). */
static void fetch_batch(struct remote *rem, const struct chunk **batch, size_t n, struct registry_client *bg)
{
	uint64_t start = batch[0]->comp_off, end = batch[n - 1]->comp_end;
	unsigned char *comp = malloc((size_t)(end - start));
	struct err err = { 0 };
	if (comp && (bg ? fetch_background(rem, bg, start, (size_t)(end - start), comp, &err)
			: fetch(rem, start, (size_t)(end - start), comp, &err)) < 0) {
		free(comp);
		comp = NULL;
	}
	if (!bg && comp && n > 1) {
		store_batch(rem, batch, 1, comp, start, bg);
		if (store_later(rem, batch, n, comp, start))
			return;
		batch++;
		n--;
	}
	store_batch(rem, batch, n, comp, start, bg);
	free(comp);
}

/* Makes sure the chunk is in the cache, verified; returns the pack that
 * holds it, which stays open as long as rem.  Concurrent requests for one
 * chunk fetch it once.  Lock order: rem->lock is never held across
 * chunk_cached(), which takes it. */
static int chunk_ready(struct layer *l, const struct chunk *c)
{
	struct remote *rem = l->remote;
	int fd;
	for (;;) {
		fd = chunk_cached(rem, c);
		if (fd >= 0) {
			pthread_mutex_lock(&rem->lock);
			rem->chunk_hits++;
			pthread_mutex_unlock(&rem->lock);
			return fd;
		}
		pthread_mutex_lock(&rem->lock);
		if (inflight_index(rem, c) < 0)
			break; /* ours to fetch; still locked */
		while (inflight_index(rem, c) >= 0)
			pthread_cond_wait(&rem->inflight_done, &rem->lock);
		pthread_mutex_unlock(&rem->lock);
		/* Whoever we waited for has cached it, or failed: look again. */
	}
	bool claimed = inflight_add_locked(rem, c);
	pthread_mutex_unlock(&rem->lock);
	if (!claimed)
		return -ENOMEM;
	if (!chunk_bounds_valid(c)) {
		chunk_release(rem, c);
		return -EIO;
	}
	const struct chunk *batch[64] = { c };
	size_t n = 1;
	uint64_t extra = 0;
	for (size_t k = (size_t)c->order + 1; k < rem->n_chunks && n < ARRAY_SIZE(batch); k++) {
		const struct chunk *next = rem->by_offset[k];
		uint64_t len = next->comp_end - next->comp_off;
		if (next->comp_off != batch[n - 1]->comp_end || !chunk_bounds_valid(next) ||
		    extra + len > READAHEAD_BYTES || !chunk_claim(rem, next))
			break;
		batch[n++] = next;
		extra += len;
	}
	fetch_batch(rem, batch, n, NULL);
	fd = verified_pack(rem, c);
	return fd < 0 ? -EIO : fd;
}

/* Claims the chunk for fetching unless it is cached or being fetched. */
static bool chunk_claim(struct remote *rem, const struct chunk *c)
{
	if (chunk_cached(rem, c) >= 0)
		return false;
	pthread_mutex_lock(&rem->lock);
	bool claimed = inflight_index(rem, c) < 0 && inflight_add_locked(rem, c);
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
			if (!chunk_bounds_valid(c) || !chunk_claim(rem, c))
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
/* A landmark request: runs of adjacent chunks ("spans") of several files in
 * one multi-range request, because a registry's cost per request dwarfs its
 * cost per range (docker-registry: about 4 ms of CPU against 1.3 ms). */
#define JOB_SPANS 32
#define JOB_CHUNKS 256
#define JOB_BYTES (4u << 20)
#define MERGE_GAP (32u << 10)

struct span_job {
	const struct chunk *chunks[JOB_CHUNKS];
	size_t n_chunks;
	size_t first[JOB_SPANS]; /* where each span starts in chunks */
	size_t n_spans;
	uint64_t bytes;
};

static bool job_extends(const struct span_job *j, const struct chunk *c)
{
	return j->n_chunks > 0 && j->chunks[j->n_chunks - 1]->comp_end == c->comp_off;
}

static bool job_has_room(const struct span_job *j, const struct chunk *c)
{
	if (j->n_chunks == 0)
		return true;
	return j->n_chunks < JOB_CHUNKS && (job_extends(j, c) || j->n_spans < JOB_SPANS) &&
	       j->bytes + (c->comp_end - c->comp_off) <= JOB_BYTES;
}

static void job_add(struct span_job *j, const struct chunk *c)
{
	if (!job_extends(j, c))
		j->first[j->n_spans++] = j->n_chunks;
	j->chunks[j->n_chunks++] = c;
	j->bytes += c->comp_end - c->comp_off;
}

static size_t span_end(const struct span_job *j, size_t s)
{
	return s + 1 < j->n_spans ? j->first[s + 1] : j->n_chunks;
}

struct span_ref {
	uint64_t off;
	size_t span;
};

static int by_span_offset(const void *a, const void *b)
{
	const struct span_ref *x = a, *y = b;
	return x->off < y->off ? -1 : x->off > y->off;
}

/* Fetches the job's claimed chunks and releases them.  Spans less than
 * MERGE_GAP apart share a range: the tar headers of the next file, in
 * members of their own, lie between the files of an image laid out for its
 * workload, and a range costs the registry more than a few KiB.  Spans
 * that a hostile TOC made overlap are fetched one by one. */
static void fetch_job(struct remote *rem, struct span_job *j, struct registry_client *client)
{
	struct span_ref order[JOB_SPANS];
	struct byterange ranges[JOB_SPANS];
	size_t range_of[JOB_SPANS], n_ranges = 0;
	for (size_t s = 0; s < j->n_spans; s++)
		order[s] = (struct span_ref){ .off = j->chunks[j->first[s]]->comp_off, .span = s };
	qsort(order, j->n_spans, sizeof(order[0]), by_span_offset);
	bool apart = true;
	size_t total = 0;
	for (size_t k = 0; apart && k < j->n_spans; k++) {
		size_t s = order[k].span;
		uint64_t off = order[k].off, end = j->chunks[span_end(j, s) - 1]->comp_end;
		struct byterange *last = n_ranges ? &ranges[n_ranges - 1] : NULL;
		apart = !last || off >= last->off + last->len;
		if (apart && last && off - (last->off + last->len) <= MERGE_GAP) {
			total += (size_t)(end - (last->off + last->len));
			last->len = (size_t)(end - last->off);
		} else {
			ranges[n_ranges++] = (struct byterange){ .off = off, .len = (size_t)(end - off) };
			total += (size_t)(end - off);
		}
		range_of[s] = n_ranges - 1;
	}
	unsigned char *buf = apart ? malloc(total) : NULL;
	for (size_t k = 0, used = 0; buf && k < n_ranges; used += ranges[k++].len)
		ranges[k].buf = buf + used;
	struct err err = { 0 };
	if (!buf || fetch_ranges_background(rem, client, ranges, n_ranges, &err) < 0)
		apart = false;
	/* In the order the files are wanted, not the order they arrived in. */
	for (size_t s = 0; s < j->n_spans; s++) {
		const struct chunk **span = &j->chunks[j->first[s]];
		size_t n = span_end(j, s) - j->first[s];
		const struct byterange *r = &ranges[range_of[s]];
		if (apart)
			store_batch(rem, span, n, r->buf + (span[0]->comp_off - r->off), span[0]->comp_off, client);
		else
			fetch_batch(rem, span, n, client);
	}
	free(buf);
	j->n_chunks = j->n_spans = 0;
	j->bytes = 0;
}

struct landmark_job {
	struct remote *rem;
	const struct entry **entries;
	size_t n;
	pthread_mutex_t lock; /* over next and next_chunk */
	size_t next;          /* the first entry no worker took yet */
	uint32_t next_chunk;  /* and its first chunk no worker took */
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
static void take_chunks(struct landmark_job *job, struct span_job *sj)
{
	pthread_mutex_lock(&job->lock);
	for (; job->next < job->n && !atomic_load(job->stop); job->next++, job->next_chunk = 0) {
		const struct entry *e = job->entries[job->next];
		for (; job->next_chunk < e->n_chunks; job->next_chunk++) {
			const struct chunk *c = &e->chunks[job->next_chunk];
			if (!chunk_bounds_valid(c))
				continue;
			if (!job_has_room(sj, c))
				goto full;
			if (chunk_claim(job->rem, c))
				job_add(sj, c);
		}
	}
full:
	pthread_mutex_unlock(&job->lock);
}

static void landmark_work(struct landmark_job *job, struct registry_client *client)
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
	struct landmark_job *job = arg;
	struct registry_client *client = registry_client_dup(job->rem->template);
	if (client)
		landmark_work(job, client);
	registry_client_free(client);
	return NULL;
}

int layer_prefetch(struct layer *l, bool only_landmark, const atomic_bool *stop)
{
	if (l->remote_blob && !only_landmark)
		return remote_blob_prefetch(l->remote_blob, stop);
	if (l->remote_blob) {
		/* A plain layer's landmarks come from a prefetch list: the spans
		 * the decoder will read for each listed file. */
		for (size_t i = 0; i < l->n_entries; i++) {
			const struct entry *e = &l->entries[i];
			for (uint32_t k = 0; e->prefetch && k < e->n_extents; k++) {
				uint64_t in, end;
				layer_compressed_range(l, e->extents[k].stream_off, e->extents[k].len, &in, &end);
				if (remote_blob_prefetch_range(l->remote_blob, in, end, stop) == -ECANCELED)
					return -ECANCELED;
			}
		}
		return 0;
	}
	if (l->format != LAYER_CHUNKED)
		return 0;
	_cleanup_free_ const struct entry **v = calloc(l->n_entries ? l->n_entries : 1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	size_t n = 0;
	for (size_t i = 0; i < l->n_entries; i++)
		if (!only_landmark || l->entries[i].prefetch)
			v[n++] = &l->entries[i];
	if (!only_landmark)
		return fetch_entries(l->remote, v, n, l->remote->prefetch_client, stop);
	/* The workload needs them in the order it read them, soon: in that
	 * order, on several connections. */
	qsort(v, n, sizeof(*v), by_rank);
	struct landmark_job job = { .rem = l->remote, .entries = v, .n = n, .stop = stop };
	pthread_mutex_init(&job.lock, NULL);
	pthread_t threads[LANDMARK_WORKERS - 1];
	size_t started = 0;
	for (; started < ARRAY_SIZE(threads) && n > started + 1; started++)
		if (pthread_create(&threads[started], NULL, landmark_thread, &job) != 0)
			break;
	landmark_work(&job, l->remote->prefetch_client);
	for (size_t i = 0; i < started; i++)
		pthread_join(threads[i], NULL);
	pthread_mutex_destroy(&job.lock);
	return atomic_load(stop) ? -ECANCELED : 0;
}

ssize_t chunked_read_entry(struct layer *l, const struct entry *e, void *buf, size_t len, uint64_t off)
{
	demand_note();
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
		int fd = chunk_ready(l, c);
		if (fd < 0)
			return fd;
		int r = read_full_at(fd, (char *)buf + (start - off), (size_t)(end - start),
				     (off_t)(l->remote->slot[c->order] + (start - c->file_off)));
		if (r < 0)
			return -EIO;
	}
	return (ssize_t)len;
}
