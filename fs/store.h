/* imgfs store: an additional layer store for containers/storage (podman,
 * CRI-O).  The FUSE namespace it serves:
 *
 *   <base64 of an image reference>/<layer digest>/diff   the layer alone,
 *                                                        overlayfs lower form
 *                                                 /info   containers/storage's
 *                                                        JSON of the layer
 *                                                 /blob   the compressed blob
 *
 * <layer digest> is the compressed blob's digest or its TOC digest.  An
 * O_CREAT of .../use takes a layer, an rmdir of the layer directory
 * releases it; both answer ENOENT, which is how containers/storage knows
 * the store counts them. */
#pragma once

#include "fuse_ops.h"

struct store_options {
	struct image_options image;
	enum prefetch_mode prefetch;
	/* How long a lookup waits for a reference to resolve; after it the
	 * lookup answers ENOENT (podman pulls the layer itself) while the
	 * resolution goes on for the next lookup. */
	unsigned resolve_timeout_ms;
};

struct store;

/* state_fd keeps what a successor needs to number nodes the same way
 * (-1: nothing, memory of its own); resume: this server is one. */
int store_new(const struct store_options *opts, int state_fd, bool resume, struct store **ret, struct err *err);
struct store *store_free(struct store *s);

extern const struct fuse_lowlevel_ops store_ops;
