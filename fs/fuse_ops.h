/* The FUSE low-level operations over an image's merged tree (read-only),
 * and the reply helpers the writable mount (overlay.h) shares with them. */
#pragma once

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include "image.h"
#include "imgfs.h"

/* The largest read or write one request carries. */
#define FUSE_IO_MAX (1u << 20)
/* The read-ahead the mount asks for, which is also how much a page fault
 * in a mapped file reads around itself: an exec of a 2 MB binary took 22
 * reads at the kernel's 128 KiB and 3 at 1 MiB, but a fault in a lazily
 * fetched library waits for all of it (tools/bench-link, shaped link:
 * estargz row 3.30 s at 512 KiB, 3.43 s at 1 MiB, 3.33 s at 256 KiB;
 * foreign row 4.32, 4.44 and 4.28 s; loopback no slower). */
#define FUSE_READ_AROUND (512u << 10)

extern const struct fuse_lowlevel_ops imgfs_ops;

/* Answers getxattr with value (len bytes) for a caller who offered size bytes. */
void reply_xattr_value(fuse_req_t req, const void *value, size_t len, size_t size);
/* The daemon's pid as an xattr value: imgfs umount waits for it to end. */
void reply_pid_xattr(fuse_req_t req, size_t size);
/* For file systems whose inodes outlive every lookup: no counting. */
void forget_nothing(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup);
void forget_multi_nothing(fuse_req_t req, size_t count, struct fuse_forget_data *forgets);

/* Answers a virtual xattr of the root and returns true, or returns false
 * without replying for any other inode or name. */
bool reply_virtual_xattr(fuse_req_t req, struct image *img, fuse_ino_t ino, const char *name, size_t size);

/* A tree served inside a larger FUSE namespace (the layer store serves one
 * per layer): tree inode k is FUSE inode base + k, and ".." of its root is
 * root_parent.  The served_* functions answer for one inode of it. */
struct served_tree {
	const struct tree *tree;
	uint64_t base;
	fuse_ino_t root_parent;
};

void served_fill_entry(const struct served_tree *t, const struct tree_inode *i, struct fuse_entry_param *e);
void served_lookup(fuse_req_t req, const struct served_tree *t, const struct tree_inode *dir, const char *name);
void served_getattr(fuse_req_t req, const struct served_tree *t, const struct tree_inode *i);
void served_readlink(fuse_req_t req, const struct tree_inode *i);
/* Read-only opens; a directory is EISDIR. */
void served_open(fuse_req_t req, const struct tree_inode *i, struct fuse_file_info *fi);
void served_read(fuse_req_t req, const struct tree_inode *i, size_t size, off_t off);
void served_readdir(fuse_req_t req, const struct served_tree *t, const struct tree_inode *dir, size_t size, off_t off,
		    bool plus);
void served_getxattr(fuse_req_t req, const struct tree_inode *i, const char *name, size_t size);
void served_listxattr(fuse_req_t req, const struct tree_inode *i, size_t size);
