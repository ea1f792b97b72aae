/* A pushed imgfs index comes from the registry: its layer index and span
 * table parsers get hostile bytes.  The saved indexes of the cache get them
 * too, though a wrong closing digest stops most before they are parsed. */
#include <sys/mman.h>

#include "index_io.h"
#include "remote_blob.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define LAYER "sha256:0000000000000000000000000000000000000000000000000000000000000000"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct span_table st;
	(void)span_table_parse(data, size, LAYER, 10000, &st);
	int fd = memfd_create("index", MFD_CLOEXEC);
	if (fd < 0)
		return 0;
	if (write_full(fd, data, size) == 0) {
		char path[64];
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		struct layer *l = NULL;
		if (layer_open_saved(LAYER, COMPRESSION_GZIP, -1, path, &l) == 0)
			layer_free(l);
		if (chunked_layer_open_saved(LAYER, LAYER, COMPRESSION_GZIP, 1 << 20, path, &l) == 0)
			layer_free(l);
	}
	close(fd);
	return 0;
}
