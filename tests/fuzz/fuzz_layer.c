/* A layer blob: the first byte picks the compression, the rest is the blob.
 * Every file of a successfully scanned layer is then read whole and the tree
 * is built, so that bad extents or links show up as crashes. */
#include <sys/mman.h>

#include "index_io.h"
#include "scan.h"
#include "tar_stream.h"
#include "tree.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	enum layer_compression c = data[0] % 3;
	int fd = memfd_create("fuzz", MFD_CLOEXEC);
	if (fd < 0 || write_full(fd, data + 1, size - 1) < 0) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	struct layer *l = NULL;
	struct err err = { 0 };
	if (layer_open_scan("sha256:fuzz", c, fd, &l, &err) < 0)
		return 0;
	char buf[65536];
	for (size_t i = 0; i < l->n_entries; i++) {
		const struct entry *e = &l->entries[i];
		for (uint64_t off = 0; e->type == ENTRY_REG && off < e->size && off < (1u << 20); off += sizeof(buf))
			if (layer_read_entry(l, e, buf, sizeof(buf), off) < 0)
				break;
	}
	struct tree *t = NULL;
	if (tree_build(&l, 1, &t, &err) == 0)
		tree_free(t);
	layer_free(l);
	return 0;
}
