/* The on-disk form of a layer index, so that a second mount of an image does
 * not decode its layers again.  Little-endian, versioned, and closed by a
 * sha256 of everything before it: a damaged or foreign file reads as absent. */
#include "index_io.h"

#include "local_blob.h"
#include "registry.h"

#include <endian.h>
#include <sys/stat.h>
#include <zstd.h>

#define INDEX_MAGIC "IMGFSIX1"
/* The same with each checkpoint's window in a windows blob (windows_blob.h). */
#define INDEX_WINDOWS_APART_MAGIC "IMGFSIX2"
#define INDEX_MAX_FILE_SIZE (4ull << 30)
/* A pushed index may come as one zstd frame (IMGFS_MEDIA_TYPE_LAYER_INDEX_ZSTD,
 * and _V2).  Its checkpoint windows are layer data and compress 2-5x; a frame that
 * claims to expand far more is refused before its output is allocated,
 * and an index that compresses that well is pushed as it is. */
#define INDEX_ZSTD_MAX_RATIO 64
#define INDEX_ZSTD_LEVEL 12

struct wbuf {
	unsigned char *data;
	size_t len, cap;
	bool failed;
};

static void put(struct wbuf *b, const void *p, size_t n)
{
	if (b->failed || n == 0)
		return;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 65536;
		while (cap < b->len + n)
			cap *= 2;
		unsigned char *d = realloc(b->data, cap);
		if (!d) {
			b->failed = true;
			return;
		}
		b->data = d;
		b->cap = cap;
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

static void put_u32(struct wbuf *b, uint32_t v)
{
	v = htole32(v);
	put(b, &v, 4);
}

static void put_u64(struct wbuf *b, uint64_t v)
{
	v = htole64(v);
	put(b, &v, 8);
}

static void put_bytes(struct wbuf *b, const void *p, uint32_t n)
{
	put_u32(b, n);
	put(b, p, n);
}

static void put_str(struct wbuf *b, const char *s)
{
	if (!s) {
		put_u32(b, UINT32_MAX);
		return;
	}
	put_bytes(b, s, (uint32_t)strlen(s));
}

/* What a tar header says of an entry; the two formats share it. */
static void put_entry_header(struct wbuf *b, const struct entry *e)
{
	put_str(b, e->path);
	put_str(b, e->link);
	put_u32(b, e->type);
	put_u32(b, e->mode);
	put_u32(b, e->uid);
	put_u32(b, e->gid);
	put_u64(b, (uint64_t)e->mtime_sec);
	put_u32(b, e->mtime_nsec);
	put_u64(b, e->size);
	put_u32(b, e->rdev_major);
	put_u32(b, e->rdev_minor);
	put_u32(b, e->n_xattrs);
	for (uint32_t j = 0; j < e->n_xattrs; j++) {
		put_str(b, e->xattrs[j].name);
		put_bytes(b, e->xattrs[j].value, e->xattrs[j].len);
	}
}

/* Closes the bytes with the digest of what precedes them. */
static void put_closing_digest(struct wbuf *b)
{
	char digest[DIGEST_SHA256_LEN + 1];
	if (!b->failed)
		digest_sha256(b->data, b->len, digest);
	put(b, digest, DIGEST_SHA256_LEN);
}

/* Closes the file and writes it; a file torn by a crash reads as absent,
 * so durable is a choice. */
static int finish_and_write(struct wbuf *b, const char *path, bool durable)
{
	put_closing_digest(b);
	int r = b->failed ? -ENOMEM
		: durable ? write_file_atomic(path, b->data, b->len)
			  : write_file_replace(path, b->data, b->len);
	free(b->data);
	return r;
}

/* The form both magics share; with windows_apart a checkpoint says where
 * its window is, not what it is. */
static void put_layer_index(struct wbuf *b, const struct layer *l, const struct checkpoint *cps, size_t n_cps,
			    bool windows_apart)
{
	put(b, windows_apart ? INDEX_WINDOWS_APART_MAGIC : INDEX_MAGIC, 8);
	put_str(b, l->digest);
	put_u32(b, l->compression);
	put_u64(b, l->blob_size);
	put_u64(b, l->tar_size);
	put_u64(b, l->n_entries);
	for (size_t i = 0; i < l->n_entries; i++) {
		const struct entry *e = &l->entries[i];
		put_entry_header(b, e);
		put_u32(b, e->n_extents);
		for (uint32_t j = 0; j < e->n_extents; j++) {
			put_u64(b, e->extents[j].file_off);
			put_u64(b, e->extents[j].stream_off);
			put_u64(b, e->extents[j].len);
		}
	}
	put_u64(b, n_cps);
	for (size_t i = 0; i < n_cps; i++) {
		const struct checkpoint *c = &cps[i];
		put_u64(b, c->in);
		put_u64(b, c->out);
		put_u32(b, c->bits | (c->raw ? 0x100u : 0));
		if (!windows_apart) {
			put_bytes(b, c->window, c->window_len);
			continue;
		}
		put_u32(b, c->window_len);
		put_u64(b, c->window_at);
		put_u32(b, c->window_stored);
		put(b, c->window_sha256, 32);
	}
}

int layer_save(const struct layer *l, const char *index_path)
{
	struct wbuf b = { 0 };
	put_layer_index(&b, l, l->checkpoints, l->n_checkpoints, false);
	return finish_and_write(&b, index_path, true);
}

int layer_index_windows_apart(const struct layer *l, const struct checkpoint *cps, size_t n_cps, void **ret,
			      size_t *ret_len)
{
	struct wbuf b = { 0 };
	put_layer_index(&b, l, cps, n_cps, true);
	put_closing_digest(&b);
	if (b.failed) {
		free(b.data);
		return -ENOMEM;
	}
	*ret = b.data;
	*ret_len = b.len;
	return 0;
}

struct rbuf {
	const unsigned char *p, *end;
	bool bad;
};

static void get(struct rbuf *b, void *out, size_t n)
{
	if (b->bad || (size_t)(b->end - b->p) < n) {
		b->bad = true;
		memset(out, 0, n);
		return;
	}
	memcpy(out, b->p, n);
	b->p += n;
}

static uint32_t get_u32(struct rbuf *b)
{
	uint32_t v;
	get(b, &v, 4);
	return le32toh(v);
}

static uint64_t get_u64(struct rbuf *b)
{
	uint64_t v;
	get(b, &v, 8);
	return le64toh(v);
}

/* Returns a NUL-terminated copy; *ret_len gets the length.  NULL for an
 * absent string (and for errors, which also set b->bad). */
static void *get_bytes(struct rbuf *b, uint32_t *ret_len, bool allow_absent)
{
	uint32_t n = get_u32(b);
	if (n == UINT32_MAX && allow_absent)
		return NULL;
	if (b->bad || (size_t)(b->end - b->p) < n) {
		b->bad = true;
		return NULL;
	}
	char *s = malloc((size_t)n + 1);
	if (!s) {
		b->bad = true;
		return NULL;
	}
	memcpy(s, b->p, n);
	s[n] = '\0';
	b->p += n;
	if (ret_len)
		*ret_len = n;
	return s;
}

int layer_index_compress(const void *data, size_t len, void **ret, size_t *ret_len)
{
	size_t cap = ZSTD_compressBound(len);
	void *out = malloc(cap);
	if (!out)
		return -ENOMEM;
	size_t n = ZSTD_compress(out, cap, data, len, INDEX_ZSTD_LEVEL);
	if (ZSTD_isError(n) || len > (uint64_t)n * INDEX_ZSTD_MAX_RATIO) {
		free(out);
		return ZSTD_isError(n) ? -EIO : -ERANGE;
	}
	*ret = out;
	*ret_len = n;
	return 0;
}

/* One whole zstd frame into *data (replaced); false when it is not one, or
 * claims more than INDEX_ZSTD_MAX_RATIO times its size. */
static bool inflate_zstd_frame(char **data, size_t *len)
{
	unsigned long long size = ZSTD_getFrameContentSize(*data, *len);
	if (size == ZSTD_CONTENTSIZE_UNKNOWN || size == ZSTD_CONTENTSIZE_ERROR || size == 0 ||
	    size > (unsigned long long)*len * INDEX_ZSTD_MAX_RATIO || size > INDEX_MAX_FILE_SIZE ||
	    ZSTD_findFrameCompressedSize(*data, *len) != *len)
		return false;
	char *out = malloc((size_t)size);
	if (!out)
		return false;
	size_t n = ZSTD_decompress(out, (size_t)size, *data, *len);
	if (ZSTD_isError(n) || n != size) {
		free(out);
		return false;
	}
	free(*data);
	*data = out;
	*len = n;
	return true;
}

/* Reads a whole saved file whose magic and closing digest are right (a
 * pushed index, one zstd frame, inflated first); *b covers what lies
 * between them.  -ENOENT otherwise. */
static int read_saved(const char *path, const char *magic, const char *other_magic, char **ret_data, struct rbuf *b)
{
	char *data;
	size_t len;
	if (read_file_capped(path, INDEX_MAX_FILE_SIZE, &data, &len) < 0)
		return -ENOENT;
	static const unsigned char zstd_magic[4] = { 0x28, 0xb5, 0x2f, 0xfd };
	if (len >= 4 && memcmp(data, zstd_magic, 4) == 0 && !inflate_zstd_frame(&data, &len)) {
		free(data);
		return -ENOENT;
	}
	char actual[DIGEST_SHA256_LEN + 1];
	if (len < 8 + DIGEST_SHA256_LEN ||
	    (memcmp(data, magic, 8) != 0 && (!other_magic || memcmp(data, other_magic, 8) != 0)) ||
	    (digest_sha256(data, len - DIGEST_SHA256_LEN, actual),
	     memcmp(actual, data + len - DIGEST_SHA256_LEN, DIGEST_SHA256_LEN) != 0)) {
		free(data);
		return -ENOENT;
	}
	*b = (struct rbuf){ (unsigned char *)data + 8, (unsigned char *)data + len - DIGEST_SHA256_LEN, false };
	*ret_data = data;
	return 0;
}

/* The counterpart of put_entry_header(); false when the bytes are wrong. */
static bool get_entry_header(struct rbuf *b, struct entry *e)
{
	e->path = get_bytes(b, NULL, false);
	e->link = get_bytes(b, NULL, true);
	e->type = (uint8_t)get_u32(b);
	e->mode = get_u32(b);
	e->uid = get_u32(b);
	e->gid = get_u32(b);
	e->mtime_sec = (int64_t)get_u64(b);
	e->mtime_nsec = get_u32(b);
	e->size = get_u64(b);
	e->rdev_major = get_u32(b);
	e->rdev_minor = get_u32(b);
	uint32_t n_xattrs = get_u32(b);
	if (b->bad || !e->path || e->type > ENTRY_FIFO || n_xattrs > (size_t)(b->end - b->p) / 8)
		return false;
	if (n_xattrs && !(e->xattrs = calloc(n_xattrs, sizeof(struct xattr))))
		return false;
	for (uint32_t j = 0; j < n_xattrs && !b->bad; j++) {
		e->n_xattrs++;
		e->xattrs[j].name = get_bytes(b, NULL, false);
		e->xattrs[j].value = get_bytes(b, &e->xattrs[j].len, false);
	}
	return !b->bad;
}

int layer_open_saved(const char *digest, enum layer_compression compression, int blob_fd, const char *index_path,
		     struct layer **ret)
{
	_cleanup_free_ char *data = NULL;
	struct rbuf b;
	if (read_saved(index_path, INDEX_MAGIC, INDEX_WINDOWS_APART_MAGIC, &data, &b) < 0)
		return -ENOENT;
	/* Windows apart are fetched by a remote source, never a local blob's. */
	bool windows_apart = memcmp(data, INDEX_WINDOWS_APART_MAGIC, 8) == 0;
	if (windows_apart && blob_fd >= 0)
		return -ENOENT;
	struct layer *l = layer_alloc(digest, compression, blob_fd);
	if (!l)
		return -ENOMEM;
	_cleanup_free_ char *saved_digest = get_bytes(&b, NULL, false);
	uint32_t saved_compression = get_u32(&b);
	uint64_t saved_blob_size = get_u64(&b);
	l->tar_size = get_u64(&b);
	uint64_t n_entries = get_u64(&b);
	/* Without a local blob (a layer read from the registry) the caller
	 * checks the size against the manifest. */
	if (blob_fd < 0)
		l->blob_size = saved_blob_size;
	if (b.bad || !saved_digest || strcmp(saved_digest, digest) != 0 || saved_compression != compression ||
	    saved_blob_size != l->blob_size || n_entries > (uint64_t)(b.end - b.p) / 16)
		goto bad;
	l->entries = calloc(n_entries ? n_entries : 1, sizeof(struct entry));
	if (!l->entries)
		goto bad;
	for (uint64_t i = 0; i < n_entries && !b.bad; i++) {
		struct entry *e = &l->entries[i];
		l->n_entries++;
		if (!get_entry_header(&b, e))
			goto bad;
		uint32_t n_extents = get_u32(&b);
		if (b.bad || n_extents > (size_t)(b.end - b.p) / 24)
			goto bad;
		if (n_extents && !(e->extents = calloc(n_extents, sizeof(struct extent))))
			goto bad;
		e->n_extents = n_extents;
		for (uint32_t j = 0; j < n_extents; j++) {
			struct extent *x = &e->extents[j];
			x->file_off = get_u64(&b);
			x->stream_off = get_u64(&b);
			x->len = get_u64(&b);
			if (x->file_off > e->size || x->len > e->size - x->file_off || x->stream_off > l->tar_size ||
			    x->len > l->tar_size - x->stream_off)
				goto bad;
		}
	}
	uint64_t n_checkpoints = get_u64(&b);
	if (b.bad || n_checkpoints == 0 || n_checkpoints > (uint64_t)(b.end - b.p) / 20)
		goto bad;
	l->checkpoints = calloc(n_checkpoints, sizeof(struct checkpoint));
	if (!l->checkpoints)
		goto bad;
	for (uint64_t i = 0; i < n_checkpoints && !b.bad; i++) {
		struct checkpoint *c = &l->checkpoints[i];
		l->n_checkpoints++;
		c->in = get_u64(&b);
		c->out = get_u64(&b);
		uint32_t flags = get_u32(&b);
		c->bits = flags & 7;
		c->raw = flags & 0x100;
		if (windows_apart) {
			c->window_len = get_u32(&b);
			c->window_at = get_u64(&b);
			c->window_stored = get_u32(&b);
			get(&b, c->window_sha256, 32);
			/* A window is one zstd frame of at most 32 KiB. */
			if (c->window_len && (!c->raw || c->window_stored == 0 || c->window_stored > 65536))
				goto bad;
		} else {
			c->window = get_bytes(&b, &c->window_len, false);
		}
		if (c->window_len > 32768 || c->in > l->blob_size || (i > 0 && c->out <= l->checkpoints[i - 1].out) ||
		    (c->bits && c->in == 0))
			goto bad;
	}
	if (b.bad || b.p != b.end || l->checkpoints[0].out != 0)
		goto bad;
	if (blob_fd >= 0)
		local_blob_attach(l);
	*ret = l;
	return 0;
bad:
	l->blob_fd = -1; /* the caller keeps its fd when we decline */
	layer_free(l);
	return -ENOENT;
}

/* ---- chunked layers: the parsed table of contents --------------------- */

#define TOC_INDEX_MAGIC "IMGFSCX1"
#define ENTRY_LANDMARK 1u

int chunked_layer_save(const struct layer *l, const char *toc_digest, const char *path)
{
	struct wbuf b = { 0 };
	put(&b, TOC_INDEX_MAGIC, 8);
	put_str(&b, l->digest);
	put_str(&b, toc_digest);
	put_u32(&b, l->compression);
	put_u64(&b, l->blob_size);
	put_u64(&b, l->n_entries);
	for (size_t i = 0; i < l->n_entries; i++) {
		const struct entry *e = &l->entries[i];
		put_entry_header(&b, e);
		put_u32(&b, e->landmark ? ENTRY_LANDMARK : 0);
		put_u32(&b, e->n_chunks);
		for (uint32_t j = 0; j < e->n_chunks; j++) {
			const struct chunk *c = &e->chunks[j];
			put_u64(&b, c->file_off);
			put_u64(&b, c->size);
			put_u64(&b, c->comp_off);
			put_u64(&b, c->comp_end);
			put_u64(&b, c->inner_off);
			put_u32(&b, c->zeros);
			put_str(&b, c->digest);
		}
	}
	return finish_and_write(&b, path, false);
}

static bool get_chunk(struct rbuf *b, const struct entry *e, uint64_t blob_size, struct chunk *c)
{
	c->file_off = get_u64(b);
	c->size = get_u64(b);
	c->comp_off = get_u64(b);
	c->comp_end = get_u64(b);
	c->inner_off = get_u64(b);
	c->zeros = get_u32(b) != 0;
	_cleanup_free_ char *digest = get_bytes(b, NULL, false);
	if (b->bad || !digest || c->size > e->size || c->file_off > e->size - c->size)
		return false;
	if (c->zeros)
		return true;
	if (!digest_is_valid(digest) || c->comp_end <= c->comp_off || c->comp_end > blob_size)
		return false;
	memcpy(c->digest, digest, DIGEST_SHA256_LEN + 1);
	return true;
}

int chunked_layer_open_saved(const char *digest, const char *toc_digest, enum layer_compression compression,
			     uint64_t blob_size, const char *path, struct layer **ret)
{
	_cleanup_free_ char *data = NULL;
	struct rbuf b;
	if (read_saved(path, TOC_INDEX_MAGIC, NULL, &data, &b) < 0)
		return -ENOENT;
	struct layer *l = layer_alloc(digest, compression, -1);
	if (!l)
		return -ENOMEM;
	l->blob_size = blob_size;
	_cleanup_free_ char *saved_digest = get_bytes(&b, NULL, false);
	_cleanup_free_ char *saved_toc = get_bytes(&b, NULL, false);
	uint32_t saved_compression = get_u32(&b);
	uint64_t saved_blob_size = get_u64(&b);
	uint64_t n_entries = get_u64(&b);
	if (b.bad || !saved_digest || !saved_toc || strcmp(saved_digest, digest) != 0 ||
	    strcmp(saved_toc, toc_digest) != 0 || saved_compression != compression || saved_blob_size != blob_size ||
	    n_entries > (uint64_t)(b.end - b.p) / 16)
		goto bad;
	l->entries = calloc(n_entries ? n_entries : 1, sizeof(struct entry));
	if (!l->entries)
		goto bad;
	for (uint64_t i = 0; i < n_entries; i++) {
		struct entry *e = &l->entries[i];
		l->n_entries++;
		if (!get_entry_header(&b, e))
			goto bad;
		e->prefetch = e->landmark = get_u32(&b) & ENTRY_LANDMARK;
		uint32_t n_chunks = get_u32(&b);
		if (b.bad || n_chunks > (size_t)(b.end - b.p) / 44)
			goto bad;
		if (n_chunks && !(e->chunks = calloc(n_chunks, sizeof(struct chunk))))
			goto bad;
		for (; e->n_chunks < n_chunks; e->n_chunks++)
			if (!get_chunk(&b, e, blob_size, &e->chunks[e->n_chunks]))
				goto bad;
	}
	if (b.bad || b.p != b.end)
		goto bad;
	*ret = l;
	return 0;
bad:
	layer_free(l);
	return -ENOENT;
}
