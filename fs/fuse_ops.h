/* The FUSE low-level operations over an image's merged tree (read-only),
 * and the reply helpers the writable mount (overlay.h) shares with them. */
#pragma once

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include "image.h"
#include "imgfs.h"

/* The largest read or write one request carries, and the read-ahead the
 * mount asks for: an exec of a 2 MB binary then takes 3 round trips. */
#define FUSE_IO_MAX (1u << 20)

extern const struct fuse_lowlevel_ops imgfs_ops;

/* Answers getxattr with value (len bytes) for a caller who offered size bytes. */
void reply_xattr_value(fuse_req_t req, const void *value, size_t len, size_t size);
/* Answers a virtual xattr of the root and returns true, or returns false
 * without replying for any other inode or name. */
bool reply_virtual_xattr(fuse_req_t req, struct image *img, fuse_ino_t ino, const char *name, size_t size);
