/* What every layer has, whatever its source: allocation, freeing, the read
 * path's entry point and the calls that reach the source's ops table. */
#include "layer.h"

#include <ctype.h>
#include <sys/stat.h>

#define MAX_PATH_LEN 4096
/* Decompression bombs: a layer may not expand beyond this ratio (gzip's
 * own maximum is about 1032:1) or the absolute limit. */
#define MAX_EXPANSION_RATIO 4096ull
#define MIN_EXPANSION_LIMIT (1ull << 30)
#define MAX_LAYER_TAR_SIZE (1ull << 40)

uint64_t layer_size_limit(uint64_t blob_size)
{
	if (blob_size > MAX_LAYER_TAR_SIZE / MAX_EXPANSION_RATIO)
		return MAX_LAYER_TAR_SIZE;
	uint64_t limit = blob_size * MAX_EXPANSION_RATIO;
	return limit < MIN_EXPANSION_LIMIT ? MIN_EXPANSION_LIMIT : limit;
}

int layer_compression_from_media_type(const char *media_type, enum layer_compression *ret)
{
	static const struct {
		const char *media_type;
		enum layer_compression compression;
	} table[] = {
		{ "application/vnd.oci.image.layer.v1.tar", COMPRESSION_NONE },
		{ "application/vnd.oci.image.layer.v1.tar+gzip", COMPRESSION_GZIP },
		{ "application/vnd.oci.image.layer.v1.tar+zstd", COMPRESSION_ZSTD },
		{ "application/vnd.oci.image.layer.nondistributable.v1.tar", COMPRESSION_NONE },
		{ "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", COMPRESSION_GZIP },
		{ "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", COMPRESSION_ZSTD },
		{ "application/vnd.docker.image.rootfs.diff.tar", COMPRESSION_NONE },
		{ "application/vnd.docker.image.rootfs.diff.tar.gzip", COMPRESSION_GZIP },
		{ "application/vnd.docker.image.rootfs.diff.tar.zstd", COMPRESSION_ZSTD },
		{ "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", COMPRESSION_GZIP },
	};
	for (size_t i = 0; i < ARRAY_SIZE(table); i++)
		if (strcmp(media_type, table[i].media_type) == 0) {
			*ret = table[i].compression;
			return 0;
		}
	return -ENOTSUP;
}

int path_normalise(const char *name, char **ret)
{
	size_t len = strlen(name);
	if (len > MAX_PATH_LEN)
		return -ENAMETOOLONG;
	char *out = malloc(len + 1);
	if (!out)
		return -ENOMEM;
	size_t n = 0;
	for (const char *p = name; *p;) {
		while (*p == '/')
			p++;
		const char *end = strchrnul(p, '/');
		size_t clen = (size_t)(end - p);
		if (clen == 0)
			break;
		if (clen == 1 && p[0] == '.') {
			p = end;
			continue;
		}
		if (clen == 2 && p[0] == '.' && p[1] == '.') {
			free(out);
			return -EINVAL;
		}
		if (n > 0)
			out[n++] = '/';
		memcpy(out + n, p, clen);
		n += clen;
		p = end;
	}
	out[n] = '\0';
	*ret = out;
	return 0;
}

static void entry_done(struct entry *e)
{
	free(e->prefetch_parts);
	free(e->path);
	free(e->link);
	for (uint32_t i = 0; i < e->n_xattrs; i++) {
		free(e->xattrs[i].name);
		free(e->xattrs[i].value);
	}
	free(e->xattrs);
	free(e->extents);
	free(e->chunks);
}

struct layer *layer_free(struct layer *l)
{
	if (!l)
		return NULL;
	/* First: its threads may still use the chunks, which live in the entries. */
	if (l->ops) {
		layer_stop_background(l);
		l->ops->free(l);
	}
	for (size_t i = 0; i < l->n_entries; i++)
		entry_done(&l->entries[i]);
	free(l->entries);
	for (size_t i = 0; i < l->n_checkpoints; i++)
		free(l->checkpoints[i].window);
	free(l->checkpoints);
	free(l->decoded_prefix);
	if (l->blob_fd >= 0)
		close(l->blob_fd);
	pthread_mutex_destroy(&l->lock);
	free(l);
	return NULL;
}

struct layer *layer_alloc(const char *digest, enum layer_compression compression, int blob_fd)
{
	struct stat st;
	struct layer *l = calloc(1, sizeof(*l));
	if (!l)
		return NULL;
	l->blob_fd = blob_fd;
	snprintf(l->digest, sizeof(l->digest), "%s", digest);
	l->compression = compression;
	pthread_mutex_init(&l->lock, NULL);
	if (blob_fd >= 0 && fstat(blob_fd, &st) == 0)
		l->blob_size = (uint64_t)st.st_size;
	return l;
}

ssize_t layer_read_entry(struct layer *l, const struct entry *e, void *buf, size_t len, uint64_t off)
{
	if (off >= e->size)
		return 0;
	if (len > e->size - off)
		len = (size_t)(e->size - off);
	if (!l->ops)
		return -EIO;
	return l->ops->read_entry(l, e, buf, len, off);
}

void layer_read_ahead_file(struct layer *l, const struct entry *e)
{
	if (l->blob_fd < 0 && l->ops && l->ops->read_ahead_file)
		l->ops->read_ahead_file(l, e);
}

void layer_first_read_begins(struct layer *l, const struct entry *e)
{
	if (l->blob_fd < 0 && l->ops && l->ops->first_read_begins)
		l->ops->first_read_begins(l, e);
}

void layer_get_stats(struct layer *l, struct layer_stats *ret)
{
	memset(ret, 0, sizeof(*ret));
	if (l->ops && l->ops->get_stats)
		l->ops->get_stats(l, ret);
}

int layer_prefetch(struct layer *l, bool only_landmark, const atomic_bool *stop)
{
	if (!l->ops || !l->ops->prefetch)
		return 0;
	return l->ops->prefetch(l, only_landmark, stop);
}

void layer_start_background(struct layer *l)
{
	if (l->ops && l->ops->start_background)
		l->ops->start_background(l);
}

void layer_stop_background(struct layer *l)
{
	if (l->ops && l->ops->stop_background)
		l->ops->stop_background(l);
}

bool entry_part_listed(const struct entry *e, uint64_t off, uint64_t len)
{
	if (!e->prefetch_parts)
		return true;
	for (uint32_t i = 0; i < e->n_prefetch_parts; i++)
		if (e->prefetch_parts[i].off < off + len && off < e->prefetch_parts[i].off + e->prefetch_parts[i].len)
			return true;
	return false;
}

#define MAX_FILE_PARTS 4096

int file_parts_parse(const char *text, struct file_part **ret, uint32_t *ret_n)
{
	struct file_part *parts = NULL;
	size_t n = 0, allocated = 0;
	const char *p = text;
	uint64_t last_end = 0;
	for (;;) {
		char *end;
		errno = 0;
		unsigned long long off = strtoull(p, &end, 10);
		if (end == p || *end != '+' || errno || !isdigit((unsigned char)*p))
			break;
		p = end + 1;
		unsigned long long len = strtoull(p, &end, 10);
		if (end == p || errno || !isdigit((unsigned char)*p) || len == 0 || off > UINT64_MAX - len ||
		    (n && off < last_end) || n == MAX_FILE_PARTS)
			break;
		if (grow_array((void **)&parts, &allocated, n + 1, sizeof(*parts)) < 0)
			break;
		parts[n++] = (struct file_part){ off, len };
		last_end = off + len;
		p = end;
		if (*p == '\0') {
			*ret = parts;
			*ret_n = (uint32_t)n;
			return 0;
		}
		if (*p++ != ',')
			break;
	}
	free(parts);
	return -EINVAL;
}
