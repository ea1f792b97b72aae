/* The writable mount: an upper directory on local disk over the image's
 * merged tree, kept in the on-disk format of an overlayfs upper directory
 * (whiteouts are 0:0 character devices, opaque directories carry the
 * trusted.overlay.opaque xattr, user.overlay.opaque when not root), so the
 * kernel's overlayfs over an unpack of the image shows the same tree.
 *
 * Locking: one mutex guards the node table and every change to UPPERDIR
 * (overlay_internal.h states the contract). */
#pragma once

#include "fuse_ops.h"

struct overlay;

/* Opens upper_dir (which must exist) and locks it against a second mount;
 * the lock lasts as long as the overlay.  The node ids and handles the
 * kernel is given are kept in state_fd (-1: in memory only) for a server
 * that takes the mount over (takeover.h); resume: this one does. */
int overlay_open(struct image *img, const char *upper_dir, int state_fd, bool resume, struct overlay **ret,
		 struct err *err);
struct overlay *overlay_free(struct overlay *ov);
/* The session that serves ov, so that it can tell the kernel what changed
 * behind its back. */
void overlay_set_session(struct overlay *ov, struct fuse_session *se);

extern const struct fuse_lowlevel_ops overlay_ops;
