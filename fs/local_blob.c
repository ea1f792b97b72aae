/* A verified blob in the cache, read with pread(): the source that every
 * layer fetched whole (or indexed by a scan) uses. */
#include "local_blob.h"

#include "tar_stream.h"

static int local_read_blob(struct layer *l, void *buf, size_t len, uint64_t off)
{
	return read_full_at(l->blob_fd, buf, len, (off_t)off);
}

static void local_free(struct layer *l)
{
	tar_stream_release(l);
}

static const struct layer_source_ops local_blob_ops = {
	.read_blob = local_read_blob,
	.read_entry = tar_stream_read_entry,
	.free = local_free,
};

void local_blob_attach(struct layer *l)
{
	l->ops = &local_blob_ops;
}
