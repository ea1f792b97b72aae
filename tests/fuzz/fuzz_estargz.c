/* eStargz: the footer parser on the first bytes, then the TOC parser on the
 * rest, then the merge of what it produced. */
#include "chunked.h"
#include "toc.h"
#include "tree.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint64_t toc_off;
	if (size >= 51)
		estargz_parse_footer(data, 51, &toc_off);
	if (size >= 47)
		estargz_parse_footer(data, 47, &toc_off);
	struct layer *l = calloc(1, sizeof(*l));
	if (!l)
		return 0;
	l->blob_fd = -1;
	pthread_mutex_init(&l->lock, NULL);
	struct err err = { 0 };
	if (estargz_parse_toc(l, (const char *)data, size, 1u << 30, &err) == 0) {
		struct tree *t = NULL;
		if (tree_build(&l, 1, &t, &err) == 0)
			tree_free(t);
	}
	layer_free(l);
	return 0;
}
