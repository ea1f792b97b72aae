/* Fetching an image's layers into the content-addressed cache and indexing them.
 *
 * Cache layout (shared by every mount; each file is written under a
 * temporary name and renamed into place only once verified, so two daemons
 * filling the same cache never see half an object):
 *   blobs/sha256/<hex>   verified blobs (layers, configs, image manifests)
 *   index/sha256/<hex>   layer indexes (see index_io.c)
 *   decoded/sha256/<hex>-<start>-<len>   decoded spans of a layer (decode.c)
 *   refs/<hex>           what a reference resolved to for a platform (--pull) */
#include "image.h"
#include "cache.h"
#include "chunked.h"
#include "demand.h"
#include "elf_guess.h"
#include "index_artifact.h"
#include "index_io.h"
#include "remote_blob.h"
#include "scan.h"
#include "tar_stream.h"
#include "whole_layer.h"

#include <dirent.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <sys/resource.h>
#include <sys/stat.h>

#define CONFIG_MAX_SIZE (8u << 20)

char *image_default_cache_dir(void)
{
	const char *env = getenv("IMGFS_CACHE");
	if (env && *env)
		return strdup(env);
	if (geteuid() == 0)
		return strdup("/var/lib/imgfs");
	env = getenv("XDG_CACHE_HOME");
	if (env && *env)
		return strdup_printf("%s/imgfs", env);
	env = getenv("HOME");
	/* Never a shared directory such as /tmp: another user could own it first. */
	if (!env || env[0] != '/') {
		errno = ENOENT;
		return NULL;
	}
	return strdup_printf("%s/.cache/imgfs", env);
}

/* An image of one manifest is for the platform its config names: asked for
 * another one explicitly (--platform), that is an error naming both, not a
 * mount of binaries that will not run. */
static int check_config_platform(int config_fd, const struct platform *want, bool explicit, const char *ref_text,
				 struct err *err)
{
	if (!explicit)
		return 0;
	struct stat st;
	if (fstat(config_fd, &st) < 0 || st.st_size > CONFIG_MAX_SIZE)
		return 0;
	_cleanup_free_ char *buf = malloc((size_t)st.st_size + 1);
	if (!buf || read_full_at(config_fd, buf, (size_t)st.st_size, 0) < 0)
		return 0;
	buf[st.st_size] = '\0';
	struct json_object *config = json_tokener_parse(buf), *v;
	const char *os = config && json_object_object_get_ex(config, "os", &v) ? json_object_get_string(v) : NULL;
	const char *arch =
	    config && json_object_object_get_ex(config, "architecture", &v) ? json_object_get_string(v) : NULL;
	int r = 0;
	if (os && arch && (strcmp(os, want->os) != 0 || strcmp(arch, want->architecture) != 0))
		r = err_set(err, ENOENT, "image \"%s\" is for %s/%s, not for the platform asked for, %s/%s", ref_text,
			    os, arch, want->os, want->architecture);
	json_object_put(config);
	return r;
}

#define ESTARGZ_TOC_ANNOTATION "containerd.io/snapshot/stargz/toc.digest"
#define ZSTD_CHUNKED_POSITION "io.github.containers.zstd-chunked.manifest-position"
#define ZSTD_CHUNKED_CHECKSUM "io.github.containers.zstd-chunked.manifest-checksum"
#define ZSTD_CHUNKED_POSITION_OLD "io.containers.zstd-chunked.manifest-position"
#define ZSTD_CHUNKED_CHECKSUM_OLD "io.containers.zstd-chunked.manifest-checksum"

static bool blob_is_cached(const struct image_options *opts, const struct descriptor *d)
{
	_cleanup_free_ char *path = cache_path(opts->cache_dir, "blobs", d->digest);
	struct stat st;
	return path && stat(path, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == d->size;
}

/* The profile an earlier mount found for this manifest, when its blob is
 * still in the cache. */
static void profile_from_record(struct image *img, const struct image_options *opts)
{
	_cleanup_free_ char *record = cache_path(opts->cache_dir, "profiles", img->manifest_digest);
	_cleanup_free_ char *digest = NULL;
	size_t len;
	struct stat st;
	if (!record || read_file_capped(record, 100, &digest, &len) < 0 || !digest_is_valid(digest))
		return;
	_cleanup_free_ char *path = cache_path(opts->cache_dir, "blobs", digest);
	if (path && stat(path, &st) == 0 && S_ISREG(st.st_mode))
		img->profile_path = TAKE_PTR(path);
}

/* The image's imgfs index artifact, looked up once, when a plain layer is
 * not in the cache; client is the one of the repository it came from. */
struct artifact_lookup {
	bool looked, found;
	struct manifest artifact;
	struct registry_client *client, *owned;
};

static const struct manifest *find_artifact(struct image *img, struct registry_client *client,
					    const struct image_options *opts, struct artifact_lookup *a)
{
	if (!a->looked) {
		a->looked = true;
		struct err err = { 0 };
		a->found = index_artifact_find_anywhere(client, opts, img->manifest_digest, IMGFS_INDEX_ARTIFACT_TYPE,
							&a->artifact, &a->owned, &err) == 0;
		a->client = a->owned ? a->owned : client;
		if (!a->found && err.code && opts->progress) {
			char line[1200];
			snprintf(line, sizeof(line), "no imgfs index: %s", err.msg);
			opts->progress(line);
		}
	}
	return a->found ? &a->artifact : NULL;
}

#define PROFILE_MAX_SIZE (16u << 20)

/* The published profile of the image, in the cache (img->profile_path);
 * one that cannot be used is ignored, with a notice saying why. */
static void find_profile(struct image *img, struct registry_client *client, const struct image_options *opts)
{
	struct manifest profile;
	struct registry_client *owned;
	struct err err = { 0 };
	int r = index_artifact_find_anywhere(client, opts, img->manifest_digest, IMGFS_PROFILE_ARTIFACT_TYPE, &profile,
					     &owned, &err);
	if (r == 0) {
		const struct descriptor *d = profile.n_layers == 1 ? &profile.layers[0] : NULL;
		int fd;
		bool cached;
		if (!d || strcmp(d->media_type, IMGFS_MEDIA_TYPE_PROFILE) != 0 || d->size > PROFILE_MAX_SIZE)
			r = err_set(&err, EBADMSG, "it is not one list of files of at most %u bytes", PROFILE_MAX_SIZE);
		else if ((r = blob_cache_fetch(owned ? owned : client, opts->cache_dir, d, &fd, &cached, &err)) == 0)
			close(fd);
		if (r == 0 && !(img->profile_path = cache_path(opts->cache_dir, "blobs", d->digest)))
			r = -ENOMEM;
		/* What a later mount that does not ask the registry (--pull missing) uses. */
		_cleanup_free_ char *record = cache_path(opts->cache_dir, "profiles", img->manifest_digest);
		if (r == 0 && record)
			(void)write_file_replace(record, d->digest, strlen(d->digest));
		manifest_done(&profile);
	}
	registry_client_free(owned);
	if (r < 0 && r != -ENOENT && opts->notice) {
		char line[1400];
		snprintf(line, sizeof(line), "ignoring the published profile of \"%s\": %s", img->ref_text,
			 err.code ? err.msg : strerror(-r));
		opts->notice(line);
	}
}

/* A blob fetched into the cache on a thread of its own. */
struct blob_into_cache {
	struct registry_client *client;
	const struct image_options *opts;
	const struct descriptor *d;
	int fd, r;
	struct err err;
	struct background_job job;
};

static void *blob_into_cache_main(void *arg)
{
	struct blob_into_cache *b = arg;
	bool cached;
	b->r = blob_cache_fetch(b->client, b->opts->cache_dir, b->d, &b->fd, &cached, &b->err);
	return NULL;
}

/* A plain layer read lazily through its pushed index: the index and the
 * span table come into the cache (verified by digest; both at once, a round
 * trip less), the blob stays in the registry. */
static int open_indexed_layer(struct registry_client *client, struct registry_client *index_client,
			      const struct image_options *opts, const struct descriptor *d,
			      enum layer_compression compression, const struct manifest *artifact, struct layer **ret,
			      struct err *err)
{
	/* The newest form this imgfs reads first: windows apart. */
	const struct descriptor *index = index_artifact_blob(artifact, d->digest, IMGFS_MEDIA_TYPE_LAYER_INDEX_V2);
	const struct descriptor *windows = index_artifact_blob(artifact, d->digest, IMGFS_MEDIA_TYPE_LAYER_WINDOWS);
	if (!index)
		index = index_artifact_blob(artifact, d->digest, IMGFS_MEDIA_TYPE_LAYER_INDEX_ZSTD);
	if (!index)
		index = index_artifact_blob(artifact, d->digest, IMGFS_MEDIA_TYPE_LAYER_INDEX);
	const struct descriptor *spans = index_artifact_blob(artifact, d->digest, IMGFS_MEDIA_TYPE_LAYER_SPANS);
	if (!index || !spans)
		return -ENOENT;
	if (!windows || strcmp(index->media_type, IMGFS_MEDIA_TYPE_LAYER_INDEX_V2) != 0)
		windows = NULL;
	struct blob_into_cache table_fetch = { .client = registry_client_dup(index_client), .opts = opts, .d = spans };
	if (table_fetch.client)
		background_job_start(&table_fetch.job, blob_into_cache_main, &table_fetch);
	int fd;
	bool cached;
	int r = blob_cache_fetch(index_client, opts->cache_dir, index, &fd, &cached, err);
	if (r == 0)
		close(fd);
	if (table_fetch.client) {
		background_job_join(&table_fetch.job);
		registry_client_free(table_fetch.client);
	} else {
		/* No second connection: the same fetch, after the index, on this one. */
		table_fetch.client = index_client;
		blob_into_cache_main(&table_fetch);
	}
	_cleanup_close_ int spans_fd = table_fetch.r == 0 ? table_fetch.fd : -1;
	if (r < 0)
		return err_wrap(err, "layer %s: its imgfs index", d->digest);
	if (table_fetch.r < 0) {
		if (err)
			*err = table_fetch.err;
		return err_wrap(err, "layer %s: the span table of its imgfs index", d->digest);
	}
	_cleanup_free_ char *index_path = cache_path(opts->cache_dir, "blobs", index->digest);
	_cleanup_free_ unsigned char *table = malloc((size_t)spans->size + 1);
	struct span_table st;
	if (!index_path || !table)
		return -ENOMEM;
	if (read_full_at(spans_fd, table, (size_t)spans->size, 0) < 0 ||
	    span_table_parse(table, (size_t)spans->size, d->digest, (uint64_t)d->size, &st) < 0)
		return err_set(err, EBADMSG, "layer %s: the span table %s of its imgfs index is not valid", d->digest,
			       spans->digest);
	struct layer *l = NULL;
	if (layer_open_saved(d->digest, compression, -1, index_path, &l) < 0 || l->blob_size != (uint64_t)d->size) {
		if (l)
			layer_free(l);
		return err_set(err, EBADMSG, "layer %s: its imgfs index %s does not describe it", d->digest,
			       index->digest);
	}
	/* The windows lie beside the index, which may be in another
	 * repository.  A layer's first read asks for a window and the blob at
	 * once: they take the connections open already. */
	struct windows_blob_ref windows_ref = { 0 };
	if (windows)
		windows_ref = (struct windows_blob_ref){ windows->digest, (uint64_t)windows->size,
							 registry_client_split(index_client) };
	struct registry_client *read_client = registry_client_split(client);
	struct registry_client *prefetch_client = registry_client_dup(client);
	r = read_client && prefetch_client && (!windows || windows_ref.client) ? 0 : -ENOMEM;
	if (r == 0) {
		r = remote_blob_attach(l, read_client, prefetch_client, opts->cache_dir, &st,
				       windows ? &windows_ref : NULL);
		if (r == -EBADMSG)
			r = err_set(err, EBADMSG, "layer %s: its imgfs index %s does not match its windows blob",
				    d->digest, index->digest);
		else if (r < 0)
			r = err_set(err, -r, "layer %s: %s", d->digest, strerror(-r));
	}
	if (r < 0) {
		registry_client_free(read_client);
		registry_client_free(prefetch_client);
		registry_client_free(windows_ref.client);
		layer_free(l);
		return r;
	}
	*ret = l;
	return 0;
}

/* A layer being opened on a thread of its own (finish_pending_layers()). */
struct pending_layer {
	struct chunked_open *chunked; /* eStargz, zstd:chunked: its TOC */
	struct whole_layer *whole;    /* plain, with no index: its blob */
};

struct config_job;
static int config_checked(struct config_job *c, struct err *err);

/* Opens an indexed plain layer into *ret, or starts opening the others
 * into *pending; one to fetch whole once config's check has passed. */
static int open_layer(struct image *img, const struct image_ref *ref, struct registry_client *client,
		      const struct image_options *opts, const struct descriptor *d, struct artifact_lookup *artifacts,
		      struct config_job *config, struct layer **ret, struct pending_layer *pending, struct err *err)
{
	enum layer_compression compression;
	if (layer_compression_from_media_type(d->media_type, &compression) < 0)
		return err_set(err, ENOTSUP, "layer %s has unsupported media type \"%s\"", d->digest, d->media_type);
	const char *toc_digest = descriptor_annotation(d, ESTARGZ_TOC_ANNOTATION);
	/* Both generations of the zstd:chunked annotations. */
	const char *zstd_position = descriptor_annotation(d, ZSTD_CHUNKED_POSITION);
	const char *zstd_checksum = descriptor_annotation(d, ZSTD_CHUNKED_CHECKSUM);
	if (!zstd_position || !zstd_checksum) {
		zstd_position = descriptor_annotation(d, ZSTD_CHUNKED_POSITION_OLD);
		zstd_checksum = descriptor_annotation(d, ZSTD_CHUNKED_CHECKSUM_OLD);
	}
	bool estargz = compression == COMPRESSION_GZIP && toc_digest && digest_is_valid(toc_digest);
	bool zstd_chunked = compression == COMPRESSION_ZSTD && zstd_position && zstd_checksum;
	if (opts->separate_layers) {
		struct image_layer_desc *desc = &img->descs[img->n_layers];
		desc->size = (uint64_t)d->size;
		if (!(desc->media_type = strdup(d->media_type)) ||
		    ((estargz || zstd_chunked) && !(desc->toc_digest = strdup(estargz ? toc_digest : zstd_checksum))))
			return -ENOMEM;
	}
	if (estargz || zstd_chunked) {
		/* Lazy: each layer gets its own connections, so layers open and fetch
		 * in parallel; the first takes the manifest's, open already. */
		struct registry_client *layer_client = registry_client_split(client), *prefetch_client;
		if (!layer_client)
			return -ENOMEM;
		int r = registry_client_new(ref, &opts->registry, &prefetch_client, err);
		if (r < 0) {
			registry_client_free(layer_client);
			return r;
		}
		return chunked_open_start(layer_client, prefetch_client, d->digest, (uint64_t)d->size,
					  zstd_chunked ? zstd_checksum : toc_digest,
					  zstd_chunked ? zstd_position : NULL, opts->cache_dir, &img->open_failed,
					  &pending->chunked);
	}
	const struct manifest *artifact;
	if (!opts->ignore_index_artifacts && !blob_is_cached(opts, d) &&
	    (artifact = find_artifact(img, client, opts, artifacts))) {
		struct err index_err = { 0 };
		int r = open_indexed_layer(client, artifacts->client, opts, d, compression, artifact, ret, &index_err);
		if (r == 0)
			return 0;
		/* An index found and not used is a warning, not progress: the
		 * user pays for it in a whole layer's bytes. */
		void (*say)(const char *line) = opts->notice ? opts->notice : opts->progress;
		if (index_err.code && say) {
			char line[1200];
			snprintf(line, sizeof(line), "fetching the layer whole: %s", index_err.msg);
			say(line);
		}
	}
	int r = config_checked(config, err);
	if (r < 0)
		return r;
	return whole_layer_start(client, opts->cache_dir, d, compression, opts->progress, &img->open_failed,
				 &pending->whole);
}

/* Waits for the layers being opened, all of them, and says why the first
 * that failed did (not a layer that gave up because another had failed).
 * After an error elsewhere (failed), those fetched whole give up at once. */
static int finish_pending_layers(struct image *img, struct pending_layer *pending, const struct descriptor *descs,
				 bool failed, struct err *err)
{
	if (failed)
		atomic_store(&img->open_failed, true);
	int r = 0;
	for (size_t i = 0; i < img->n_layers; i++) {
		if (!pending[i].whole && !pending[i].chunked)
			continue;
		bool fetched = false;
		struct err layer_err = { 0 };
		int wr = pending[i].chunked
			     ? chunked_open_finish(TAKE_PTR(pending[i].chunked), &img->layers[i], &layer_err)
			     : whole_layer_finish(TAKE_PTR(pending[i].whole), &img->layers[i], &fetched, &layer_err);
		if (wr < 0 && (r == 0 || (r == -ECANCELED && wr != -ECANCELED))) {
			r = wr;
			if (err)
				*err = layer_err;
		}
		if (wr == 0 && fetched) {
			img->bytes_fetched_whole += (uint64_t)descs[i].size;
			img->layers_fetched_whole++;
		}
	}
	return r;
}

int pull_policy_parse(const char *text, enum pull_policy *ret)
{
	static const char *const names[] = {
		[PULL_ALWAYS] = "always", [PULL_MISSING] = "missing", [PULL_NEVER] = "never"
	};
	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		if (strcmp(text, names[i]) == 0) {
			*ret = (enum pull_policy)i;
			return 0;
		}
	return -EINVAL;
}

/* refs/<sha256 of "REF PLATFORM">: one line, "<manifest digest> <media type>". */
static char *ref_record_path(const char *cache_dir, const struct image_ref *ref, const struct platform *p)
{
	_cleanup_free_ char *canonical = image_ref_format(ref);
	_cleanup_free_ char *key =
	    canonical ? strdup_printf("%s %s/%s/%s", canonical, p->os, p->architecture, p->variant) : NULL;
	if (!key)
		return NULL;
	char digest[DIGEST_SHA256_LEN + 1];
	digest_sha256(key, strlen(key), digest);
	return strdup_printf("%s/refs/%s", cache_dir, digest + strlen("sha256:"));
}

/* The image manifest digest names, from the cache, verified again by its
 * digest; -ENOENT when it is not there (or damaged, or not an image
 * manifest).  media_type NULL: the one the document names. */
static int load_cached_manifest(const struct image_options *opts, const char *digest, const char *media_type,
				struct manifest *ret, char **ret_digest)
{
	_cleanup_free_ char *blob_path = cache_path(opts->cache_dir, "blobs", digest);
	char *data = NULL;
	size_t len;
	if (!blob_path || read_file_capped(blob_path, MANIFEST_MAX_SIZE, &data, &len) < 0)
		return -ENOENT;
	char actual[DIGEST_SHA256_LEN + 1];
	digest_sha256(data, len, actual);
	struct manifest m;
	if (strcmp(actual, digest) != 0 || manifest_parse(data, len, media_type, &m, NULL) < 0) {
		free(data);
		return -ENOENT;
	}
	if (m.kind != MANIFEST_IMAGE || !(*ret_digest = strdup(digest))) {
		manifest_done(&m);
		free(data);
		return -ENOENT;
	}
	cache_note_used_path(blob_path);
	m.raw = data;
	m.raw_size = len;
	*ret = m;
	return 0;
}

/* The image manifest this cache resolved ref to before; -ENOENT when there
 * is none (or it is damaged or evicted). */
static int load_resolved_manifest(const struct image_options *opts, const char *record_path, struct manifest *ret,
				  char **ret_digest)
{
	_cleanup_free_ char *record = NULL;
	size_t record_len;
	if (!record_path || read_file_capped(record_path, 512, &record, &record_len) < 0)
		return -ENOENT;
	char digest[DIGEST_SHA256_LEN + 1], media_type[256];
	if (sscanf(record, "%71s %255s", digest, media_type) != 2 || !digest_is_valid(digest))
		return -ENOENT;
	return load_cached_manifest(opts, digest, media_type, ret, ret_digest);
}

/* Remembering is an optimisation: a failure only costs the next start a
 * round trip to the registry. */
static void keep_resolved_manifest(const struct image_options *opts, const char *record_path, const struct manifest *m,
				   const char *digest, const struct image_ref *ref)
{
	_cleanup_free_ char *blob_path = cache_path(opts->cache_dir, "blobs", digest);
	_cleanup_free_ char *canonical = image_ref_format(ref);
	const struct platform *p = &opts->registry.platform;
	/* "DIGEST MEDIA_TYPE REF OS/ARCH[/VARIANT]": the last two for imgfs images. */
	_cleanup_free_ char *record =
	    canonical
		? strdup_printf("%s %s %s %s/%s%s%s\n", digest, m->media_type ? m->media_type : MEDIA_TYPE_OCI_MANIFEST,
				canonical, p->os, p->architecture, *p->variant ? "/" : "", p->variant)
		: NULL;
	struct stat st;
	if (!record_path || !blob_path || !record || !m->raw)
		return;
	if (stat(blob_path, &st) < 0 || (size_t)st.st_size != m->raw_size) {
		if (write_file_atomic(blob_path, m->raw, m->raw_size) < 0)
			return;
		cache_note_stored(m->raw_size);
	}
	_cleanup_free_ char *old = NULL;
	size_t old_len;
	if (read_file_capped(record_path, 512, &old, &old_len) < 0 || strcmp(old, record) != 0)
		write_file_atomic(record_path, record, strlen(record));
}

static int prepare_cache(const char *cache_dir, struct err *err)
{
	static const char *const subdirs[] = { "blobs/sha256", "index/sha256", "decoded/sha256", "profiles/sha256",
					       "refs" };
	int r = cache_open_private(cache_dir, err);
	if (r < 0)
		return r;
	for (size_t i = 0; i < ARRAY_SIZE(subdirs); i++) {
		_cleanup_free_ char *p = strdup_printf("%s/%s", cache_dir, subdirs[i]);
		if (!p)
			return -ENOMEM;
		r = mkdir_parents(p, 0700);
		if (r < 0)
			return err_set(err, -r, "cannot create the cache directory \"%s\": %s", p, strerror(-r));
	}
	return 0;
}

/* The config is small; fetching it verifies the image is complete. */
static int load_config(struct image *img, struct registry_client *client, const struct image_options *opts,
		       const struct descriptor *config, struct err *err)
{
	if (config->size > CONFIG_MAX_SIZE)
		return err_set(err, EFBIG, "config %s of \"%s\" is larger than %u bytes", config->digest, img->ref_text,
			       CONFIG_MAX_SIZE);
	int config_fd;
	bool cached;
	int r = blob_cache_fetch(client, opts->cache_dir, config, &config_fd, &cached, err);
	if (r < 0)
		return r;
	r = check_config_platform(config_fd, &opts->registry.platform, opts->platform_explicit, img->ref_text, err);
	close(config_fd);
	if (r < 0)
		return r;
	_cleanup_free_ char *config_path = cache_path(opts->cache_dir, "blobs", config->digest);
	img->config_path = config_path ? realpath(config_path, NULL) : NULL;
	if (!img->config_path)
		return err_set(err, errno, "config %s: %s", config->digest, strerror(errno));
	return 0;
}

/* The config, fetched and checked while the layers start to open: a round
 * trip less before the TOCs and index lookups go out.  A layer about to be
 * fetched whole waits for it (config_checked()): a platform the config
 * refuses must stop the mount before that. */
struct config_job {
	struct image *img;
	struct registry_client *client; /* its own: the mount's is in use meanwhile */
	const struct image_options *opts;
	const struct descriptor *config;
	struct err err;
	int r;
	bool joined;
	struct background_job job;
};

static void *config_job_main(void *arg)
{
	struct config_job *c = arg;
	c->r = load_config(c->img, c->client, c->opts, c->config, &c->err);
	return NULL;
}

static void config_job_start(struct config_job *c, struct registry_client *mount_client)
{
	c->client = registry_client_dup(mount_client);
	if (c->client) {
		background_job_start(&c->job, config_job_main, c);
	} else {
		/* No second connection: here, on the mount's (not freed: joined). */
		c->client = mount_client;
		config_job_main(c);
		c->joined = true;
	}
}

/* Waits for the config job once; its result, its error into err. */
static int config_checked(struct config_job *c, struct err *err)
{
	if (!c->joined) {
		background_job_join(&c->job);
		c->client = registry_client_free(c->client);
		c->joined = true;
	}
	if (c->r < 0 && err)
		*err = c->err;
	return c->r;
}

/* What a reference resolved to: the qualified name (which the cache
 * records) and the endpoint that answered for it (a mirror, or the
 * registry's location), with a client for it. */
struct resolution {
	struct image_ref ref, source;
	/* The caller's options, with the endpoint's insecurity and the
	 * endpoints after it as fallbacks (which eps holds). */
	struct image_options opts;
	struct registry_endpoint *eps;
	size_t n_eps;
	struct registry_client *client;
	bool from_cache; /* the cache's record answered: no request was made */
};

static void resolution_done(struct resolution *res)
{
	image_ref_done(&res->ref);
	image_ref_done(&res->source);
	registry_client_free(res->client);
	registry_endpoints_free(res->eps, res->n_eps);
	*res = (struct resolution){ 0 };
}

/* Tries endpoint i of a candidate name (which res->eps holds): the cache's
 * record of it, or its manifest. */
static int try_endpoint(const char *name, size_t i, const struct image_options *opts, struct resolution *res,
			struct manifest *m, char **manifest_digest, struct err *err)
{
	const struct registry_endpoint *ep = &res->eps[i];
	res->opts = *opts;
	res->opts.registry.insecure = ep->insecure;
	res->opts.registry.fallbacks = ep + 1;
	res->opts.registry.n_fallbacks = res->n_eps - i - 1;
	int r = image_ref_parse(name, &res->ref, err);
	if (r == 0)
		r = image_ref_copy(&ep->ref, &res->source);
	if (r == 0)
		r = registry_client_new(&res->source, &res->opts.registry, &res->client, err);
	if (r < 0)
		return r;
	_cleanup_free_ char *record_path = ref_record_path(opts->cache_dir, &res->ref, &opts->registry.platform);
	/* A digest names one manifest for good: the cache's copy is it. */
	if (opts->pull != PULL_ALWAYS &&
	    ((res->ref.digest && load_cached_manifest(opts, res->ref.digest, NULL, m, manifest_digest) == 0) ||
	     load_resolved_manifest(opts, record_path, m, manifest_digest) == 0)) {
		res->from_cache = true;
		return 0;
	}
	if (opts->pull == PULL_NEVER)
		return err_set(err, ENOENT, "not in the cache \"%s\", and --pull never forbids asking the registry",
			       opts->cache_dir);
	r = registry_get_image_manifest(res->client, m, manifest_digest, err);
	if (r == 0)
		keep_resolved_manifest(opts, record_path, m, *manifest_digest, &res->ref);
	return r;
}

/* The names registries.conf gives ref_text, each at its endpoints in
 * order, until one answers; the error is the last endpoint's, so that a
 * mirror that is down does not hide why the registry itself failed. */
static int resolve_image(const char *ref_text, const struct image_options *opts, struct resolution *res,
			 struct manifest *m, char **manifest_digest, struct err *err)
{
	struct registries_conf *conf = NULL;
	char **names = NULL;
	size_t n_names = 0;
	int r = registries_conf_load(&conf, err);
	if (r == 0)
		r = registries_conf_candidates(conf, ref_text, &names, &n_names, err);
	for (size_t i = 0; r == 0 && i < n_names; i++) {
		struct image_ref ref = { 0 };
		r = image_ref_parse(names[i], &ref, err);
		if (r == 0)
			r = registries_conf_endpoints(conf, &ref, &res->eps, &res->n_eps, err);
		image_ref_done(&ref);
		for (size_t j = 0; r == 0 && j < res->n_eps; j++) {
			r = try_endpoint(names[i], j, opts, res, m, manifest_digest, err);
			if (r == 0)
				goto out;
			if (j + 1 < res->n_eps) {
				/* The next endpoint: the same name, a fresh start. */
				image_ref_done(&res->ref);
				image_ref_done(&res->source);
				res->client = registry_client_free(res->client);
				r = 0;
			}
		}
		if (r < 0 && i + 1 < n_names && r != -ENOMEM) {
			resolution_done(res);
			r = 0; /* the next search registry */
		}
	}
out:
	registry_names_free(names, n_names);
	registries_conf_free(conf);
	return r;
}

int image_resolve_manifest(const char *ref_text, const struct image_options *opts, struct artifact_subject_info *ret,
			   struct err *err)
{
	struct resolution res = { 0 };
	struct manifest m = { 0 };
	*ret = (struct artifact_subject_info){ 0 };
	int r = prepare_cache(opts->cache_dir, err);
	if (r == 0)
		r = resolve_image(ref_text, opts, &res, &m, &ret->digest, err);
	if (r == 0 && !(ret->media_type = strdup(m.media_type ? m.media_type : MEDIA_TYPE_OCI_MANIFEST)))
		r = -ENOMEM;
	ret->size = m.raw_size;
	manifest_done(&m);
	resolution_done(&res);
	if (r < 0 && err && err->code)
		err_wrap(err, "image \"%s\"", ref_text);
	return r;
}

/* The published profile needs nothing the layers' TOCs give: it is looked
 * up on a connection of its own while the layers open (referrers, artifact
 * manifest, list: three round trips the start no longer waits for).  The
 * config is not: a platform it refuses must stop the mount before a layer
 * is fetched whole. */
struct profile_lookup {
	struct image *img;
	const struct image_options *opts;
	struct registry_client *client, *owned;
	struct background_job job;
};

static void *profile_lookup_main(void *arg)
{
	struct profile_lookup *s = arg;
	find_profile(s->img, s->client, s->opts);
	return NULL;
}

/* Without a thread or a second connection, the same work, here and now. */
static void profile_lookup_start(struct profile_lookup *s, struct registry_client *client)
{
	s->owned = registry_client_dup(client);
	s->client = s->owned ? s->owned : client;
	if (s->owned)
		background_job_start(&s->job, profile_lookup_main, s);
	else
		profile_lookup_main(s);
}

/* Waits for it; again: nothing. */
static void profile_lookup_finish(struct profile_lookup *s)
{
	background_job_join(&s->job);
	s->owned = registry_client_free(s->owned);
}

/* name@digest: the image resolved, whatever its tag names later. */
static char *pinned_ref(const struct image_ref *ref, const char *digest)
{
	struct image_ref pinned = { .domain = ref->domain, .repository = ref->repository, .digest = (char *)digest };
	return image_ref_format(&pinned);
}

/* The layers that were fetched whole, and how the next mounts need not. */
static void say_fetched_whole(const struct image *img, const struct image_options *opts)
{
	if (!img->layers_fetched_whole || !opts->notice || opts->ignore_index_artifacts)
		return;
	char line[1024];
	snprintf(line, sizeof(line),
		 "%zu of %zu layers of \"%s\" have neither an eStargz/zstd:chunked TOC nor an imgfs index: "
		 "fetched whole (%.1f MB); \"imgfs index push %s\" makes the next mounts lazy",
		 img->layers_fetched_whole, img->n_layers, img->ref_text, img->bytes_fetched_whole / 1e6,
		 img->ref_text);
	opts->notice(line);
}

int image_open(const char *ref_text, const struct image_options *opts, struct image **ret, struct err *err)
{
	struct resolution res = { 0 };
	struct manifest m = { 0 };
	struct artifact_lookup artifacts = { 0 };
	struct profile_lookup lookup = { 0 };
	struct config_job config = { .joined = true };
	struct image *img = NULL;
	_cleanup_free_ struct pending_layer *pending = NULL;
	int r;

	r = prepare_cache(opts->cache_dir, err);
	if (r < 0)
		goto out;
	img = calloc(1, sizeof(*img));
	if (img)
		pthread_mutex_init(&img->blob_lock, NULL);
	if (!img || !(img->ref_text = strdup(ref_text)) || !(img->cache_dir = strdup(opts->cache_dir))) {
		r = -ENOMEM;
		goto out;
	}
	r = resolve_image(ref_text, opts, &res, &m, &img->manifest_digest, err);
	if (r < 0)
		goto out;
	if (!(img->pinned_ref = pinned_ref(&res.ref, img->manifest_digest))) {
		r = -ENOMEM;
		goto out;
	}
	struct registry_client *client = res.client;
	const struct image_ref *source = &res.source;
	opts = &res.opts;

	config = (struct config_job){ .img = img, .opts = opts, .config = &m.config };
	config_job_start(&config, client);
	lookup = (struct profile_lookup){ .img = img, .opts = opts };
	if (opts->find_profile && res.from_cache)
		profile_from_record(img, opts);
	else if (opts->find_profile)
		profile_lookup_start(&lookup, client);

	img->layers = calloc(m.n_layers ? m.n_layers : 1, sizeof(*img->layers));
	if (opts->separate_layers)
		img->descs = calloc(m.n_layers + 1, sizeof(*img->descs)); /* and one being filled */
	pending = calloc(m.n_layers ? m.n_layers : 1, sizeof(*pending));
	if (!img->layers || !pending || (opts->separate_layers && !img->descs)) {
		r = -ENOMEM;
		goto out;
	}
	img->manifest_size = m.raw_size;
	if (!(img->manifest_media_type = strdup(m.media_type ? m.media_type : MEDIA_TYPE_OCI_MANIFEST))) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < m.n_layers && r == 0; i++) {
		r = open_layer(img, source, client, opts, &m.layers[i], &artifacts, &config, &img->layers[i],
			       &pending[i], err);
		if (r == 0) {
			img->n_layers++;
			img->image_size += (uint64_t)m.layers[i].size;
		}
	}
	int checked = config_checked(&config, r < 0 ? NULL : err);
	if (r == 0)
		r = checked;
	int finished = finish_pending_layers(img, pending, m.layers, r < 0, r < 0 ? NULL : err);
	if (r == 0)
		r = finished;
	for (size_t i = 0; i < img->n_layers && r == 0; i++) {
		struct layer *l = img->layers[i];
		/* Only where the whole blob is here: a lazily read layer would keep
		 * several times the bytes it fetched. */
		if (l->compression != COMPRESSION_NONE && l->blob_fd >= 0 &&
		    !(l->decoded_prefix = cache_path(opts->cache_dir, "decoded", l->digest)))
			r = -ENOMEM;
	}
	if (r < 0)
		goto out;
	profile_lookup_finish(&lookup);
	if (opts->separate_layers)
		img->blob_client = TAKE_PTR(res.client);
	else if ((r = tree_build(img->layers, img->n_layers, &img->tree, err)) < 0)
		goto out;
	say_fetched_whole(img, opts);
	*ret = TAKE_PTR(img);
out:
	(void)config_checked(&config, NULL);
	profile_lookup_finish(&lookup);
	if (r < 0 && err && err->code)
		err_wrap(err, "image \"%s\"", ref_text);
	image_free(img);
	manifest_done(&m);
	if (artifacts.found)
		manifest_done(&artifacts.artifact);
	registry_client_free(artifacts.owned);
	resolution_done(&res);
	return r;
}

struct image *image_free(struct image *img)
{
	if (!img)
		return NULL;
	if (img->prefetch_running) {
		atomic_store(&img->prefetch_stop, true);
		pthread_join(img->prefetch_thread, NULL);
	}
	elf_guess_stop(img->elf_guess);
	tree_free(img->tree);
	/* The copies being written are what makes the next start quick. */
	decoded_keep_flush();
	for (size_t i = 0; i < img->n_layers; i++)
		layer_free(img->layers[i]);
	for (size_t i = 0; img->descs && i <= img->n_layers; i++) {
		free(img->descs[i].media_type);
		free(img->descs[i].toc_digest);
	}
	free(img->descs);
	registry_client_free(img->blob_client);
	pthread_mutex_destroy(&img->blob_lock);
	free(img->layers);
	free(img->manifest_digest);
	free(img->cache_dir);
	free(img->manifest_media_type);
	free(img->config_path);
	free(img->profile_path);
	free(img->ref_text);
	free(img->pinned_ref);
	free(img);
	return NULL;
}

int image_layer_blob(struct image *img, size_t i, int *ret_fd, struct err *err)
{
	if (i >= img->n_layers || !img->descs)
		return -ENOENT;
	if (img->layers[i]->blob_fd >= 0) {
		*ret_fd = fcntl(img->layers[i]->blob_fd, F_DUPFD_CLOEXEC, 3);
		return *ret_fd < 0 ? err_set(err, errno, "layer %s: %s", img->layers[i]->digest, strerror(errno)) : 0;
	}
	struct descriptor d = { .digest = img->layers[i]->digest, .size = (int64_t)img->descs[i].size };
	bool cached;
	pthread_mutex_lock(&img->blob_lock);
	int r = blob_cache_fetch(img->blob_client, img->cache_dir, &d, ret_fd, &cached, err);
	pthread_mutex_unlock(&img->blob_lock);
	return r;
}

int image_format_stats(struct image *img, char *buf, size_t size)
{
	struct layer_stats total = { 0 };
	for (size_t i = 0; i < img->n_layers; i++) {
		struct layer_stats s;
		layer_get_stats(img->layers[i], &s);
		total.bytes_fetched += s.bytes_fetched;
		total.requests += s.requests;
		total.chunk_hits += s.chunk_hits;
		total.chunk_misses += s.chunk_misses;
		total.bytes_prefetched += s.bytes_prefetched;
		total.bytes_in_memory += s.bytes_in_memory;
		total.reads_ahead_of_prefetch += s.reads_ahead_of_prefetch;
		total.bytes_speculated += s.bytes_speculated;
	}
	int n = snprintf(buf, size,
			 "image_size %llu\n"
			 "bytes_fetched_whole %llu\n"
			 "layers_fetched_whole %zu\n"
			 "bytes_fetched_ranges %llu\n"
			 "range_requests %llu\n"
			 "cache_hits %llu\n"
			 "cache_misses %llu\n"
			 "bytes_prefetched %llu\n"
			 "bytes_in_memory %llu\n"
			 "reads_ahead_of_prefetch %llu\n"
			 "bytes_speculated %llu\n"
			 "libraries_guessed %llu\n"
			 "prefetch_done %d\n",
			 (unsigned long long)img->image_size, (unsigned long long)img->bytes_fetched_whole,
			 img->layers_fetched_whole, (unsigned long long)total.bytes_fetched,
			 (unsigned long long)total.requests, (unsigned long long)total.chunk_hits,
			 (unsigned long long)total.chunk_misses, (unsigned long long)total.bytes_prefetched,
			 (unsigned long long)total.bytes_in_memory, (unsigned long long)total.reads_ahead_of_prefetch,
			 (unsigned long long)total.bytes_speculated,
			 (unsigned long long)elf_guess_count(img->elf_guess), atomic_load(&img->prefetch_done) ? 1 : 0);
	return n < 0 || (size_t)n >= size ? -ERANGE : n;
}

/* Landmark files of every layer first (what the workload needs to start),
 * then, unless told otherwise, everything else. */
static void *prefetch_main(void *userdata)
{
	struct image *img = userdata;
	/* The landmarks are what the workload is about to read: at its priority. */
	for (size_t i = 0; i < img->n_layers && !atomic_load(&img->prefetch_stop); i++)
		layer_prefetch(img->layers[i], true, &img->prefetch_stop);
	/* The rest at low priority: this thread's nice value only (Linux threads
	 * have their own).  Not fatal if refused. */
	(void)setpriority(PRIO_PROCESS, (id_t)gettid(), 19);
	/* The workload starts right after the mount: give its first on-demand
	 * reads the time to show up before the first background request. */
	demand_note();
	if (img->prefetch_mode == PREFETCH_ALL)
		for (size_t i = 0; i < img->n_layers && !atomic_load(&img->prefetch_stop); i++)
			layer_prefetch(img->layers[i], false, &img->prefetch_stop);
	atomic_store(&img->prefetch_done, !atomic_load(&img->prefetch_stop));
	return NULL;
}

int image_start_background(struct image *img, enum prefetch_mode mode)
{
	for (size_t i = 0; i < img->n_layers; i++)
		layer_start_background(img->layers[i]);
	if (img->tree)
		img->elf_guess = elf_guess_start(img->tree);
	img->prefetch_mode = mode;
	if (mode == PREFETCH_NONE)
		return 0;
	int r = pthread_create(&img->prefetch_thread, NULL, prefetch_main, img);
	if (r != 0)
		return -r;
	img->prefetch_running = true;
	return 0;
}

int image_refs_list(const char *cache_dir, void (*fn)(const char *ref, const char *platform, const char *digest))
{
	_cleanup_free_ char *dir = strdup_printf("%s/refs", cache_dir);
	DIR *d = dir ? opendir(dir) : NULL;
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	for (struct dirent *de; (de = readdir(d));) {
		if (de->d_name[0] == '.')
			continue;
		_cleanup_free_ char *path = strdup_printf("%s/%s", dir, de->d_name);
		_cleanup_free_ char *record = NULL;
		size_t len;
		char digest[DIGEST_SHA256_LEN + 1], media_type[256], ref[1024] = "<none>", platform[128] = "";
		if (path && read_file_capped(path, 2048, &record, &len) == 0 &&
		    sscanf(record, "%71s %255s %1023s %127s", digest, media_type, ref, platform) >= 2)
			fn(ref, platform, digest);
	}
	closedir(d);
	return 0;
}

int image_ref_forget(const char *cache_dir, const char *ref_text, const struct platform *p, struct err *err)
{
	struct image_ref ref = { 0 };
	int r = image_ref_parse(ref_text, &ref, err);
	if (r < 0)
		return r;
	_cleanup_free_ char *path = ref_record_path(cache_dir, &ref, p);
	image_ref_done(&ref);
	if (!path)
		return -ENOMEM;
	if (unlink(path) < 0)
		return err_set(err, errno, "image \"%s\" (%s/%s): %s", ref_text, p->os, p->architecture,
			       errno == ENOENT ? "not in this cache" : strerror(errno));
	return 0;
}
