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

/* The windows blob an index push builds. */
struct windows_blob {
	unsigned char *data;
	size_t len, cap;
};

/* Decodes the layer's local blob once and records a checkpoint every
 * WINDOWED_CHECKPOINT_SPAN bytes of output into *ret, their windows
 * appended to w (gzip; other layers keep their checkpoints, which need no
 * window).  The caller frees *ret and w->data. */
int windows_blob_build(struct layer *l, struct windows_blob *w, struct checkpoint **ret, size_t *ret_n);

/* A window as the windows blob stores it (len bytes), checked against
 * cp's digest and unpacked into out (cp->window_len bytes); -EBADMSG when
 * it is not that window. */
int window_unpack(const struct checkpoint *cp, const void *stored, size_t len, unsigned char *out);
