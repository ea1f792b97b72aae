/* The FUSE low-level operations over an image's merged tree (read-only). */
#pragma once

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include "image.h"

/* Virtual xattr of the mount's root that reports fetch statistics. */
#define IMGFS_STATS_XATTR "user.imgfs.stats"

extern const struct fuse_lowlevel_ops imgfs_ops;
