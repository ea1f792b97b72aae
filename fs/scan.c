/* Building a layer's index: decode the blob once, let libarchive parse the
 * tar stream, and record every entry and where its bytes sit. */
#include "scan.h"

#include "archive_lib.h"
#include "local_blob.h"
#include "tar_stream.h"

#include <sys/stat.h>

#define SCAN_BUFFER_SIZE (256u << 10)
#define CHECKPOINT_SPAN (2u << 20)
#define MAX_ENTRIES (4u << 20)
#define MAX_PATH_LEN 4096
#define MAX_XATTR_SIZE (64u << 10)
#define MAX_XATTRS 256

struct scan {
	const struct archive_lib *ar;
	struct layer *layer;
	struct cursor *cursor;
	struct checkpoint_recorder rec;
	unsigned char *buf;
	uint64_t limit;
	int error;
	size_t allocated_entries;
};

static la_ssize_t scan_read(struct archive *a, void *userdata, const void **ret_buf)
{
	struct scan *s = userdata;
	ssize_t n = cursor_read(s->cursor, s->buf, SCAN_BUFFER_SIZE, &s->rec);
	if (n < 0) {
		s->error = (int)n;
		s->ar->set_error(a, (int)-n, "decoding the layer failed");
		return ARCHIVE_FATAL;
	}
	if (cursor_position(s->cursor) > s->limit) {
		s->error = -EFBIG;
		s->ar->set_error(a, EFBIG, "the layer expands beyond %llu bytes", (unsigned long long)s->limit);
		return ARCHIVE_FATAL;
	}
	*ret_buf = s->buf;
	return n;
}

static int add_extent(struct entry *e, size_t *allocated, uint64_t file_off, uint64_t stream_off, uint64_t len)
{
	if (e->n_extents > 0) {
		struct extent *last = &e->extents[e->n_extents - 1];
		if (last->file_off + last->len == file_off && last->stream_off + last->len == stream_off) {
			last->len += len;
			return 0;
		}
	}
	if (grow_array((void **)&e->extents, allocated, e->n_extents + 1, sizeof(struct extent)) < 0)
		return -ENOMEM;
	e->extents[e->n_extents++] = (struct extent){ file_off, stream_off, len };
	return 0;
}

/* The entry's xattrs (PAX headers), bounded in number and size. */
static int read_xattrs(struct scan *s, struct archive_entry *ae, struct entry *e, struct err *err)
{
	int n_xattrs = s->ar->entry_xattr_reset(ae);
	if (n_xattrs > MAX_XATTRS)
		return err_set(err, EINVAL, "entry \"%s\" has more than %d xattrs", e->path, MAX_XATTRS);
	if (n_xattrs <= 0)
		return 0;
	e->xattrs = calloc((size_t)n_xattrs, sizeof(*e->xattrs));
	if (!e->xattrs)
		return -ENOMEM;
	const char *xname;
	const void *value;
	size_t size;
	while (s->ar->entry_xattr_next(ae, &xname, &value, &size) == ARCHIVE_OK && e->n_xattrs < (uint32_t)n_xattrs) {
		if (size > MAX_XATTR_SIZE || strlen(xname) > 255)
			return err_set(err, EINVAL, "entry \"%s\": xattr too large", e->path);
		/* bsdtar writes each xattr twice (LIBARCHIVE.xattr and
		 * SCHILY.xattr); libarchive reports both. The last one wins. */
		struct xattr *x = NULL;
		for (uint32_t k = 0; k < e->n_xattrs && !x; k++)
			if (strcmp(e->xattrs[k].name, xname) == 0)
				x = &e->xattrs[k];
		if (x) {
			free(x->value);
			x->value = NULL;
		} else {
			x = &e->xattrs[e->n_xattrs++];
			x->name = strdup(xname);
		}
		x->value = malloc(size ? size : 1);
		if (!x->name || !x->value)
			return -ENOMEM;
		memcpy(x->value, value, size);
		x->len = (uint32_t)size;
	}
	return 0;
}

/* Where a regular file's bytes sit in the stream: its extents (several
 * for a sparse file). */
static int read_extents(struct scan *s, struct archive *a, struct archive_entry *ae, struct entry *e, struct err *err)
{
	int r;
	int64_t size = s->ar->entry_size(ae);
	if (size < 0 || (uint64_t)size > s->limit)
		return err_set(err, EFBIG, "entry \"%s\" claims an impossible size %lld", e->path, (long long)size);
	e->size = (uint64_t)size;
	/* After s->ar->read_data_block() returns, the format has consumed the
	 * stream up to the start of the block it hands out: that position is
	 * where the block sits in the uncompressed stream. */
	size_t allocated = 0;
	for (;;) {
		const void *buf;
		size_t len;
		la_int64_t offset;
		r = s->ar->read_data_block(a, &buf, &len, &offset);
		if (r == ARCHIVE_EOF)
			break;
		if (r != ARCHIVE_OK && r != ARCHIVE_WARN)
			return err_set(err, s->error ? -s->error : EIO, "entry \"%s\": %s", e->path,
				       s->ar->error_string(a) ? s->ar->error_string(a) : "cannot read data");
		if (len == 0)
			continue;
		if (offset < 0 || (uint64_t)offset + len > e->size)
			return err_set(err, EINVAL, "entry \"%s\": data beyond its size", e->path);
		la_int64_t stream_off = s->ar->filter_bytes(a, 0);
		r = add_extent(e, &allocated, (uint64_t)offset, (uint64_t)stream_off, len);
		if (r < 0)
			return r;
	}
	return 0;
}

static int read_entry(struct scan *s, struct archive *a, struct archive_entry *ae, struct entry *e, struct err *err)
{
	const char *name = s->ar->entry_pathname(ae);
	int r;
	if (!name)
		return err_set(err, EINVAL, "an entry has no name");
	r = path_normalise(name, &e->path);
	if (r == -EINVAL)
		return err_set(err, EINVAL, "entry \"%s\" leaves the image root", name);
	if (r < 0)
		return err_set(err, -r, "entry \"%.200s...\": %s", name, strerror(-r));

	const char *hardlink = s->ar->entry_hardlink(ae);
	mode_t type = s->ar->entry_filetype(ae);
	if (hardlink) {
		e->type = ENTRY_HARDLINK;
		r = path_normalise(hardlink, &e->link);
		if (r < 0)
			return err_set(err, EINVAL, "hardlink \"%s\" points outside the image root (\"%s\")", e->path,
				       hardlink);
	} else if (type == AE_IFREG || type == 0) {
		e->type = ENTRY_REG;
	} else if (type == AE_IFDIR) {
		e->type = ENTRY_DIR;
	} else if (type == AE_IFLNK) {
		const char *target = s->ar->entry_symlink(ae);
		e->type = ENTRY_SYMLINK;
		if (!target || strlen(target) >= MAX_PATH_LEN)
			return err_set(err, EINVAL, "symlink \"%s\" has no valid target", e->path);
		/* Kept verbatim: the kernel resolves it inside the mount, never against the host. */
		e->link = strdup(target);
		if (!e->link)
			return -ENOMEM;
	} else if (type == AE_IFCHR) {
		e->type = ENTRY_CHR;
	} else if (type == AE_IFBLK) {
		e->type = ENTRY_BLK;
	} else if (type == AE_IFIFO) {
		e->type = ENTRY_FIFO;
	} else {
		return err_set(err, EINVAL, "entry \"%s\" has an unsupported type 0%o", e->path, (unsigned)type);
	}

	e->mode = s->ar->entry_perm(ae) & 07777;
	int64_t uid = s->ar->entry_uid(ae), gid = s->ar->entry_gid(ae);
	if (uid < 0 || uid > UINT32_MAX - 1 || gid < 0 || gid > UINT32_MAX - 1)
		return err_set(err, EINVAL, "entry \"%s\" has an invalid owner", e->path);
	e->uid = (uint32_t)uid;
	e->gid = (uint32_t)gid;
	e->mtime_sec = s->ar->entry_mtime(ae);
	e->mtime_nsec = (uint32_t)s->ar->entry_mtime_nsec(ae);
	if (e->type == ENTRY_CHR || e->type == ENTRY_BLK) {
		e->rdev_major = (uint32_t)s->ar->entry_rdevmajor(ae);
		e->rdev_minor = (uint32_t)s->ar->entry_rdevminor(ae);
	}

	r = read_xattrs(s, ae, e, err);
	if (r < 0)
		return r;

	if (e->type != ENTRY_REG)
		return 0;
	return read_extents(s, a, ae, e, err);
}

/* Every entry of the tar stream into s->layer. */
static int scan_entries(struct scan *s, struct archive *a, struct err *err)
{
	struct layer *l = s->layer;
	for (;;) {
		struct archive_entry *ae;
		int ar = s->ar->read_next_header(a, &ae);
		if (ar == ARCHIVE_EOF)
			return 0;
		if (ar == ARCHIVE_RETRY)
			continue;
		if (ar != ARCHIVE_OK && ar != ARCHIVE_WARN) {
			/* A FAILED entry header still leaves the stream position unknown
			 * for what follows, so both FAILED and FATAL end the scan. */
			return err_set(err, s->error ? -s->error : EINVAL, "corrupt tar stream after %zu entries: %s",
				       l->n_entries, s->ar->error_string(a) ? s->ar->error_string(a) : "unknown error");
		}
		if (l->n_entries >= MAX_ENTRIES)
			return err_set(err, EFBIG, "more than %u entries", MAX_ENTRIES);
		if (grow_array((void **)&l->entries, &s->allocated_entries, l->n_entries + 1, sizeof(struct entry)) < 0)
			return -ENOMEM;
		struct entry *e = &l->entries[l->n_entries];
		memset(e, 0, sizeof(*e));
		l->n_entries++;
		int r = read_entry(s, a, ae, e, err);
		if (r < 0)
			return r;
	}
}

/* Decodes to the end: the stream must be whole even past the tar end
 * marker, and within the expansion limit. */
static int scan_to_end(struct scan *s, struct err *err)
{
	for (;;) {
		ssize_t n = cursor_read(s->cursor, s->buf, SCAN_BUFFER_SIZE, &s->rec);
		if (n < 0)
			return err_set(err, (int)-n, "the compressed stream is corrupt or truncated");
		if (n == 0)
			return 0;
		if (cursor_position(s->cursor) > s->limit)
			return err_set(err, EFBIG, "the layer expands beyond %llu bytes", (unsigned long long)s->limit);
	}
}

int layer_open_scan(const char *digest, enum layer_compression compression, int blob_fd, struct layer **ret,
		    struct err *err)
{
	return layer_open_scan_through(digest, compression, blob_fd, UINT64_MAX, NULL, NULL, ret, err);
}

int layer_open_scan_through(const char *digest, enum layer_compression compression, int blob_fd, uint64_t blob_size,
			    const struct layer_source_ops *reading, void *source, struct layer **ret, struct err *err)
{
	struct scan s = { .rec.span = CHECKPOINT_SPAN, .ar = archive_lib_get(err) };
	struct archive *a = NULL;
	int r;

	if (!s.ar) {
		close(blob_fd);
		return err_wrap(err, "cannot index layer %s", digest);
	}

	s.layer = layer_alloc(digest, compression, blob_fd);
	if (!s.layer) {
		close(blob_fd);
		return -ENOMEM;
	}
	struct layer *l = s.layer;
	if (reading) {
		l->ops = reading;
		l->source = source;
	} else {
		local_blob_attach(l);
	}
	if (blob_size != UINT64_MAX)
		l->blob_size = blob_size;
	s.limit = layer_size_limit(l->blob_size);
	s.buf = malloc(SCAN_BUFFER_SIZE);
	s.cursor = cursor_new(l);
	if (!s.buf || !s.cursor) {
		r = -ENOMEM;
		goto out;
	}
	struct checkpoint start = { 0 };
	r = checkpoint_add(&s.rec, &start, NULL, 0);
	if (r < 0)
		goto out;
	r = cursor_seek_checkpoint(s.cursor, &start);
	if (r < 0)
		goto out;

	a = s.ar->read_new();
	if (!a) {
		r = -ENOMEM;
		goto out;
	}
	s.ar->read_support_format_tar(a);
	if (s.ar->read_open(a, &s, NULL, scan_read, NULL) != ARCHIVE_OK) {
		r = err_set(err, s.error ? -s.error : EINVAL, "not a tar stream: %s", s.ar->error_string(a));
		goto out;
	}
	r = scan_entries(&s, a, err);
	if (r == 0)
		r = scan_to_end(&s, err);
	if (r < 0)
		goto out;
	l->tar_size = cursor_position(s.cursor);
	shrink_array((void **)&l->entries, l->n_entries, sizeof(*l->entries));
	for (size_t i = 0; i < l->n_entries; i++)
		shrink_array((void **)&l->entries[i].extents, l->entries[i].n_extents, sizeof(struct extent));
	l->checkpoints = TAKE_PTR(s.rec.checkpoints);
	l->n_checkpoints = s.rec.n;
	s.rec.n = 0;
	local_blob_attach(l);
	l->source = NULL;
	*ret = TAKE_PTR(s.layer);
	r = 0;
out:
	if (a)
		s.ar->read_free(a);
	cursor_free(s.cursor);
	free(s.buf);
	for (size_t i = 0; i < s.rec.n; i++)
		free(s.rec.checkpoints[i].window);
	free(s.rec.checkpoints);
	if (r < 0 && err && err->code)
		err_wrap(err, "layer %s", digest);
	if (s.layer) {
		local_blob_attach(s.layer);
		s.layer->source = NULL;
	}
	layer_free(s.layer);
	return r;
}
