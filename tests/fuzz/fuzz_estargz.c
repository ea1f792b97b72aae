/* eStargz: the footer parser on the first bytes, then the TOC parser on the
 * rest, then the merge of what it produced; and the TOC fed in two pieces
 * (toc_feed), which must agree with the whole parse whenever it finishes. */
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
	int whole = estargz_parse_toc(l, (const char *)data, size, 1u << 30, &err);
	struct layer *fed = layer_alloc("sha256:00", COMPRESSION_GZIP, -1);
	struct toc_feed *feed = fed ? toc_feed_new(fed, 1u << 30) : NULL;
	if (feed) {
		toc_feed_text(feed, (const char *)data, size ? size * data[0] / 256 : 0);
		if (toc_feed_finish(feed, (const char *)data, size, &err) == 0 &&
		    (whole != 0 || fed->n_entries != l->n_entries))
			__builtin_trap();
	}
	toc_feed_free(feed);
	layer_free(fed);
	if (whole == 0) {
		struct tree *t = NULL;
		if (tree_build(&l, 1, &t, &err) == 0)
			tree_free(t);
	}
	layer_free(l);
	return 0;
}
