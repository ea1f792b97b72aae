/* Finding and verifying the table of contents of eStargz and zstd:chunked
 * layers: the footer, then the TOC with Range requests, verified against
 * the digest the verified manifest annotates the layer with; or the TOC an
 * earlier mount parsed and saved.  The layer then reads its chunks through
 * chunk_fetch.c. */
#include "chunked.h"

#include "archive_lib.h"
#include "chunk_codec.h"
#include "chunk_fetch.h"
#include "index_io.h"
#include "registry.h"
#include "toc.h"
#include "toc_stream.h"

#include <zstd.h>

#define FOOTER_SIZE 51
#define LEGACY_FOOTER_SIZE 47
#define TOC_MAX_COMPRESSED (64u << 20)
/* The parsed TOC, saved (chunked_layer_save). */
#define TOC_INDEX_NAME "%s/chunks/sha256/%s.toc"

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
	if (out && gzip_inflate_whole(gz, len, 0, out, size)) {
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

/* The layer from the TOC saved by an earlier mount: no fetch and no parse
 * (a 34,000-entry TOC takes a quarter of a second to parse).  -ENOENT when
 * there is none for this TOC digest. */
static int open_saved_toc(const char *digest, enum layer_compression compression, uint64_t blob_size,
			  const char *toc_digest, const char *toc_index_path, struct remote *rem, struct layer **ret)
{
	struct layer *l;
	int r = chunked_layer_open_saved(digest, toc_digest, compression, blob_size, toc_index_path, &l);
	if (r < 0)
		return r;
	r = chunked_attach(l, rem, NULL, NULL);
	if (r < 0) {
		layer_free(l);
		return r;
	}
	*ret = l;
	return 0;
}

/* A fresh layer of the verified TOC text json. */
static int layer_from_toc(const char *digest, enum layer_compression compression, uint64_t blob_size, const char *json,
			  size_t json_len, uint64_t toc_off, struct layer **ret, struct err *err)
{
	struct layer *l = layer_alloc(digest, compression, -1);
	if (!l)
		return -ENOMEM;
	l->blob_size = blob_size;
	int r = estargz_parse_toc(l, json, json_len, toc_off, err);
	if (r < 0) {
		layer_free(l);
		return r;
	}
	*ret = l;
	return 0;
}

/* The layer from its verified TOC, which is then saved for the next mount. */
static int chunked_layer_new(const char *digest, enum layer_compression compression, uint64_t blob_size,
			     struct remote *rem, const char *json, size_t json_len, uint64_t toc_off,
			     const char *toc_digest, const char *toc_index_path, struct layer **ret, struct err *err)
{
	struct layer *l = NULL;
	int r = layer_from_toc(digest, compression, blob_size, json, json_len, toc_off, &l, err);
	if (r == 0 && (r = chunked_attach(l, rem, toc_digest, toc_index_path)) < 0)
		layer_free(l);
	if (r == 0)
		*ret = l;
	return r;
}

static int check_toc_digest(const void *data, size_t len, const char *want, struct err *err)
{
	char actual[DIGEST_SHA256_LEN + 1];
	digest_sha256(data, len, actual);
	return toc_digest_matches(actual, want, err);
}

/* Bytes that fail their checks may come from a broken proxy or CDN node as
 * well as from a bad blob: a TOC is fetched again before it is an error.
 * Not one that matched its digest: that is the publisher's, and fails the
 * same way every time. */
#define TOC_FETCH_ATTEMPTS 2

/* How far a fetch of a TOC got, which says whether another is worth it. */
enum toc_got {
	TOC_GOT_NOTHING,  /* the request failed, and the client tried it again */
	TOC_GOT_BYTES,    /* bytes, not yet found to be the publisher's */
	TOC_GOT_VERIFIED, /* the JSON matched its digest */
};

/* The member in gz read whole (libarchive), verified and parsed. */
static int read_toc_member(const unsigned char *gz, size_t gz_len, const char *digest, uint64_t blob_size,
			   const char *toc_digest, uint64_t toc_off, struct layer **ret, enum toc_got *got,
			   struct err *err)
{
	_cleanup_free_ char *json = NULL;
	size_t json_len = 0;
	int r = extract_toc(gz, gz_len, &json, &json_len, err);
	if (r == 0)
		r = check_toc_digest(json, json_len, toc_digest, err);
	if (r < 0)
		return r;
	*got = TOC_GOT_VERIFIED;
	return layer_from_toc(digest, COMPRESSION_GZIP, blob_size, json, json_len, toc_off, ret, err);
}

/* The footer, then the TOC it points to, parsed as it arrives and
 * verified; *got says how far it got. */
static int fetch_estargz_toc(struct remote *rem, const char *digest, uint64_t blob_size, const char *toc_digest,
			     struct layer **ret, enum toc_got *got, struct err *err)
{
	unsigned char footer[FOOTER_SIZE];
	uint64_t toc_off = 0;
	size_t footer_len = FOOTER_SIZE;
	if (blob_size < FOOTER_SIZE)
		footer_len = LEGACY_FOOTER_SIZE;
	if (blob_size < footer_len)
		return err_set(err, EINVAL, "too small for an eStargz layer");
	int r = remote_fetch(rem, blob_size - footer_len, footer_len, footer, err);
	if (r < 0)
		return r;
	*got = TOC_GOT_BYTES;
	if (estargz_parse_footer(footer, footer_len, &toc_off) < 0) {
		footer_len = LEGACY_FOOTER_SIZE;
		if (estargz_parse_footer(footer + (FOOTER_SIZE - LEGACY_FOOTER_SIZE), LEGACY_FOOTER_SIZE, &toc_off) < 0)
			return err_set(err, EINVAL, "no eStargz footer at the end of the blob");
	}
	if (toc_off >= blob_size - footer_len || blob_size - footer_len - toc_off > TOC_MAX_COMPRESSED)
		return err_set(err, EINVAL, "the eStargz footer points to an impossible TOC offset %llu",
			       (unsigned long long)toc_off);
	size_t toc_gz_len = (size_t)(blob_size - footer_len - toc_off);
	_cleanup_free_ unsigned char *toc_gz = malloc(toc_gz_len);
	struct layer *l = layer_alloc(digest, COMPRESSION_GZIP, -1);
	struct toc_stream *stream = toc_gz && l ? toc_stream_new(toc_gz, l, toc_off) : NULL;
	if (!stream) {
		layer_free(l);
		return -ENOMEM;
	}
	l->blob_size = blob_size;
	*got = TOC_GOT_NOTHING;
	r = remote_fetch_streaming(rem, toc_off, toc_gz_len, toc_gz, toc_stream_arrived, stream, err);
	bool verified = false;
	if (r == 0) {
		*got = TOC_GOT_BYTES;
		r = toc_stream_finish(stream, toc_digest, &verified, err);
	}
	toc_stream_free(stream);
	if (verified)
		*got = TOC_GOT_VERIFIED;
	if (r == -EAGAIN) {
		layer_free(TAKE_PTR(l));
		r = read_toc_member(toc_gz, toc_gz_len, digest, blob_size, toc_digest, toc_off, &l, got, err);
	}
	if (r < 0) {
		layer_free(l);
		return r;
	}
	*ret = l;
	return 0;
}

int estargz_open(struct registry_client *client, struct registry_client *prefetch_client, const char *digest,
		 uint64_t blob_size, const char *toc_digest, const char *cache_dir, struct layer **ret, struct err *err)
{
	struct remote *rem = NULL;
	_cleanup_free_ char *toc_index_path = strdup_printf(TOC_INDEX_NAME, cache_dir, digest + 7);
	int r = remote_new(client, prefetch_client, digest, COMPRESSION_GZIP, cache_dir, &rem, err);
	if (r == 0 && !toc_index_path)
		r = -ENOMEM;
	if (r < 0)
		goto fail;
	r = open_saved_toc(digest, COMPRESSION_GZIP, blob_size, toc_digest, toc_index_path, rem, ret);
	if (r != -ENOENT) {
		if (r == 0)
			return 0;
		goto fail;
	}

	archive_lib_preload(); /* for a TOC not parsed as it arrives */
	struct layer *l = NULL;
	for (int attempt = 1; attempt <= TOC_FETCH_ATTEMPTS; attempt++) {
		enum toc_got got = TOC_GOT_NOTHING;
		r = fetch_estargz_toc(rem, digest, blob_size, toc_digest, &l, &got, err);
		if (r == 0 || r == -ENOMEM || got != TOC_GOT_BYTES)
			break;
	}
	if (r == 0) {
		r = chunked_attach(l, rem, toc_digest, toc_index_path);
		if (r < 0)
			layer_free(l);
	}
	if (r < 0)
		goto fail;
	*ret = l;
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
	_cleanup_free_ char *toc_index_path = strdup_printf(TOC_INDEX_NAME, cache_dir, digest + 7);
	unsigned long long off, len, uncompressed;
	int kind, consumed = 0;
	int r = remote_new(client, prefetch_client, digest, COMPRESSION_ZSTD, cache_dir, &rem, err);
	if (r == 0 && !toc_index_path)
		r = -ENOMEM;
	if (r < 0)
		goto fail;
	if (sscanf(position, "%llu:%llu:%llu:%d%n", &off, &len, &uncompressed, &kind, &consumed) != 4 ||
	    position[consumed] != '\0' || kind != 1 || len == 0 || off >= blob_size || len > blob_size - off ||
	    len > TOC_MAX_COMPRESSED || uncompressed > TOC_MAX_SIZE || !digest_is_valid(toc_checksum)) {
		r = err_set(err, EINVAL, "invalid zstd:chunked manifest position \"%s\"", position);
		goto fail;
	}
	r = open_saved_toc(digest, COMPRESSION_ZSTD, blob_size, toc_checksum, toc_index_path, rem, ret);
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
	size_t n = 0;
	for (int attempt = 1; attempt <= TOC_FETCH_ATTEMPTS; attempt++) {
		r = remote_fetch(rem, off, (size_t)len, compressed, err);
		if (r < 0)
			goto fail;
		r = check_toc_digest(compressed, (size_t)len, toc_checksum, err);
		if (r == 0) {
			n = ZSTD_decompress(json, (size_t)uncompressed, compressed, (size_t)len);
			if (ZSTD_isError(n) || n != uncompressed)
				r = err_set(err, EINVAL, "the TOC does not decompress to %llu bytes", uncompressed);
		}
		if (r == 0)
			break;
	}
	if (r < 0)
		goto fail;
	free(TAKE_PTR(compressed));
	json[n] = '\0';
	r = chunked_layer_new(digest, COMPRESSION_ZSTD, blob_size, rem, json, n, off, toc_checksum, toc_index_path, ret,
			      err);
	if (r < 0)
		goto fail;
	return 0;
fail:
	remote_free(rem);
	if (err && err->code)
		err_wrap(err, "zstd:chunked layer %s", digest);
	return r;
}

#define CONCURRENT_OPENS 8

struct chunked_open {
	struct registry_client *client, *prefetch_client;
	char *digest, *toc_digest, *position, *cache_dir;
	uint64_t blob_size;
	atomic_bool *failed;
	struct background_job job;
	struct layer *layer;
	int result;
	struct err err;
};

static struct turns open_turns = TURNS_INIT(CONCURRENT_OPENS);

static void *chunked_open_main(void *arg)
{
	struct chunked_open *o = arg;
	turn_take(&open_turns);
	/* The open functions own the clients from here, whatever comes of it. */
	if (o->position)
		o->result =
		    zstd_chunked_open(TAKE_PTR(o->client), TAKE_PTR(o->prefetch_client), o->digest, o->blob_size,
				      o->position, o->toc_digest, o->cache_dir, &o->layer, &o->err);
	else
		o->result = estargz_open(TAKE_PTR(o->client), TAKE_PTR(o->prefetch_client), o->digest, o->blob_size,
					 o->toc_digest, o->cache_dir, &o->layer, &o->err);
	if (o->result < 0)
		atomic_store(o->failed, true);
	turn_give_back(&open_turns);
	return NULL;
}

int chunked_open_start(struct registry_client *client, struct registry_client *prefetch_client, const char *digest,
		       uint64_t blob_size, const char *toc_digest, const char *position, const char *cache_dir,
		       atomic_bool *failed, struct chunked_open **ret)
{
	struct chunked_open *o = calloc(1, sizeof(*o));
	if (o) {
		*o = (struct chunked_open){
			.client = client, .prefetch_client = prefetch_client, .blob_size = blob_size, .failed = failed
		};
		o->digest = strdup(digest);
		o->toc_digest = strdup(toc_digest);
		o->position = position ? strdup(position) : NULL;
		o->cache_dir = strdup(cache_dir);
	}
	if (!o || !o->digest || !o->toc_digest || (position && !o->position) || !o->cache_dir) {
		if (o) {
			struct layer *none;
			chunked_open_finish(o, &none, NULL);
		} else {
			registry_client_free(client);
			registry_client_free(prefetch_client);
		}
		return -ENOMEM;
	}
	background_job_start(&o->job, chunked_open_main, o);
	*ret = o;
	return 0;
}

int chunked_open_finish(struct chunked_open *o, struct layer **ret, struct err *err)
{
	background_job_join(&o->job);
	int r = o->result;
	if (r < 0 && err)
		*err = o->err;
	*ret = TAKE_PTR(o->layer);
	registry_client_free(o->client);
	registry_client_free(o->prefetch_client);
	free(o->digest);
	free(o->toc_digest);
	free(o->position);
	free(o->cache_dir);
	free(o);
	return r;
}
