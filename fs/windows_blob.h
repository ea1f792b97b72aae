/* The windows of a pushed index's checkpoints, kept apart from the index
 * (private to fs/).
 *
 * A gzip checkpoint needs the 32 KiB of output before it.  Inside the
 * index, every mount fetches every window, so checkpoints had to lie
 * 2 MiB apart and a read decoded up to 2 MiB of tar it did not want.  In
 * a blob of their own, each one zstd frame whose sha256 the index holds, a
 * read fetches the one window it starts from, and checkpoints can lie
 * WINDOWED_CHECKPOINT_SPAN apart. */
#pragma once

#include "layer.h"

#define WINDOWED_CHECKPOINT_SPAN (256u << 10)

/* The windows blob an index push builds, in an unlinked file: a large
 * image's is hundreds of megabytes, which the heap would hold until the
 * push ends and the page cache can give back. */
struct windows_blob {
	int fd;
	size_t len;
	const unsigned char *data; /* all of it, mapped by windows_blob_build() */
};

/* Decodes the layer's local blob once and records a checkpoint every
 * WINDOWED_CHECKPOINT_SPAN bytes of output into *ret, their windows into
 * w, in a file made in tmp_dir (gzip; other layers keep their checkpoints,
 * which need no window, and w stays empty).  The caller frees *ret and
 * calls windows_blob_done(w), on failure too. */
int windows_blob_build(struct layer *l, const char *tmp_dir, struct windows_blob *w, struct checkpoint **ret,
		       size_t *ret_n);
void windows_blob_done(struct windows_blob *w);

/* A window as the windows blob stores it (len bytes), checked against
 * cp's digest and unpacked into out (cp->window_len bytes); -EBADMSG when
 * it is not that window. */
int window_unpack(const struct checkpoint *cp, const void *stored, size_t len, unsigned char *out);
