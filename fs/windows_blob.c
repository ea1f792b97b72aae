/* Building the windows blob of a pushed index, and checking a window read
 * back from it. */
#include "windows_blob.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <zstd.h>

#include "registry.h"
#include "tar_stream.h"

#define WINDOW_ZSTD_LEVEL 3
#define DECODE_BUFFER_SIZE (256u << 10)

/* A checkpoint_recorder's keep_window. */
static int keep_window(void *ctx, struct checkpoint *slot, const void *window, size_t len)
{
	struct windows_blob *w = ctx;
	size_t bound = ZSTD_compressBound(len);
	_cleanup_free_ unsigned char *packed = malloc(bound);
	if (!packed)
		return -ENOMEM;
	size_t n = ZSTD_compress(packed, bound, window, len, WINDOW_ZSTD_LEVEL);
	if (ZSTD_isError(n))
		return -EIO;
	int r = write_full_at(w->fd, packed, n, (off_t)w->len);
	if (r < 0)
		return r;
	slot->window_len = (uint32_t)len;
	slot->window_at = w->len;
	slot->window_stored = (uint32_t)n;
	digest_sha256_raw(packed, n, slot->window_sha256);
	w->len += n;
	return 0;
}

/* An unlinked file in dir: O_TMPFILE where the file system has it. */
static int unlinked_file(const char *dir)
{
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR))
		return fd < 0 ? -errno : fd;
	_cleanup_free_ char *path = strdup_printf("%s/.windows-XXXXXX", dir);
	if (!path)
		return -ENOMEM;
	fd = mkostemp(path, O_CLOEXEC);
	if (fd < 0)
		return -errno;
	unlink(path);
	return fd;
}

void windows_blob_done(struct windows_blob *w)
{
	if (w->data)
		munmap((void *)w->data, w->len);
	if (w->fd >= 0)
		close(w->fd);
	*w = (struct windows_blob){ .fd = -1 };
}

static int copy_checkpoints(const struct layer *l, struct checkpoint **ret, size_t *ret_n)
{
	struct checkpoint *cps = calloc(l->n_checkpoints ? l->n_checkpoints : 1, sizeof(*cps));
	if (!cps)
		return -ENOMEM;
	for (size_t i = 0; i < l->n_checkpoints; i++) {
		cps[i] = l->checkpoints[i];
		cps[i].window = NULL; /* only gzip checkpoints have one */
		cps[i].window_len = 0;
	}
	*ret = cps;
	*ret_n = l->n_checkpoints;
	return 0;
}

int windows_blob_build(struct layer *l, const char *tmp_dir, struct windows_blob *w, struct checkpoint **ret,
		       size_t *ret_n)
{
	*w = (struct windows_blob){ .fd = -1 };
	if (l->compression != COMPRESSION_GZIP)
		return copy_checkpoints(l, ret, ret_n);
	int fd = unlinked_file(tmp_dir);
	if (fd < 0)
		return fd;
	w->fd = fd;
	struct checkpoint_recorder rec = { .span = WINDOWED_CHECKPOINT_SPAN,
					   .keep_window = keep_window,
					   .keep_ctx = w };
	struct checkpoint start = { 0 };
	_cleanup_free_ unsigned char *buf = malloc(DECODE_BUFFER_SIZE);
	struct cursor *c = cursor_new(l);
	int r = buf && c ? checkpoint_add(&rec, &start, NULL, 0) : -ENOMEM;
	if (r == 0)
		r = cursor_seek_checkpoint(c, &start);
	for (ssize_t n = 1; r == 0 && n > 0;)
		if ((n = cursor_read(c, buf, DECODE_BUFFER_SIZE, &rec)) < 0)
			r = (int)n;
	/* The blob is the one indexed: it decodes to the same length. */
	if (r == 0 && cursor_position(c) != l->tar_size)
		r = -EIO;
	cursor_free(c);
	if (r == 0 && w->len) {
		void *map = mmap(NULL, w->len, PROT_READ, MAP_SHARED, w->fd, 0);
		if (map == MAP_FAILED)
			r = -errno;
		else
			w->data = map;
	}
	if (r < 0) {
		free(rec.checkpoints);
		return r;
	}
	*ret = rec.checkpoints;
	*ret_n = rec.n;
	return 0;
}

int window_unpack(const struct checkpoint *cp, const void *stored, size_t len, unsigned char *out)
{
	unsigned char got[32];
	digest_sha256_raw(stored, len, got);
	if (len != cp->window_stored || memcmp(got, cp->window_sha256, 32) != 0 ||
	    ZSTD_getFrameContentSize(stored, len) != cp->window_len)
		return -EBADMSG;
	size_t n = ZSTD_decompress(out, cp->window_len, stored, len);
	return ZSTD_isError(n) || n != cp->window_len ? -EBADMSG : 0;
}
