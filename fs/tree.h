/* The merged tree: the layers of an image combined by the OCI layer rules
 * (whiteouts, opaque directories, replacement across types), with hardlinks
 * sharing one inode.
 *
 * Built once, then immutable: every lookup may run on any thread without a
 * lock, and inodes live as long as the tree, so FUSE forget needs no work.
 * The one exception is first_read, an atomic stamp for `imgfs record`. */
#pragma once

#include <stdatomic.h>
#include <stdio.h>
#include <sys/stat.h>

#include "layer.h"

struct tree_inode;

struct tree_dirent {
	char *name;
	struct tree_inode *inode;
};

struct tree_inode {
	uint64_t ino;
	uint32_t mode; /* S_IFMT | permissions */
	uint32_t uid, gid;
	uint32_t nlink;
	uint64_t size;
	int64_t mtime_sec;
	uint32_t mtime_nsec;
	uint32_t rdev_major, rdev_minor;
	bool opaque;                  /* overlayfs lower form: trusted.overlay.opaque=y */
	struct layer *layer;          /* NULL for directories no layer named */
	const struct entry *entry;    /* xattrs, symlink target, extents */
	struct tree_inode *parent;    /* directories only */
	struct tree_dirent *children; /* directories only, sorted by name */
	size_t n_children, allocated_children;
	struct tree_inode *next_all;
	atomic_uint first_read; /* order of the first read of this file, 0: never */
	/* Which TREE_RECORD_BLOCK blocks of the file were read, a bit each;
	 * allocated by the first read. */
	_Atomic(atomic_ullong *) read_map;
};

#define TREE_RECORD_BLOCK (64u << 10)

struct tree {
	struct tree_inode **inodes; /* by ino; inodes[1] is the root */
	size_t n_inodes;            /* highest ino + 1 */
	struct tree_inode *all;
	uint64_t total_size;
};

/* Merges layers[0] (bottom) .. layers[n-1] (top).  Errors name the layer. */
int tree_build(struct layer *const *layers, size_t n, struct tree **ret, struct err *err);
/* One layer alone in the form overlayfs takes as a lower layer: a whiteout
 * is a 0/0 character device of the name it hides, an opaque directory
 * carries trusted.overlay.opaque=y. */
int tree_build_lower(struct layer *l, struct tree **ret, struct err *err);
struct tree *tree_free(struct tree *t);

struct tree_inode *tree_get(const struct tree *t, uint64_t ino);
struct tree_inode *tree_lookup(const struct tree_inode *dir, const char *name);
void tree_stat(const struct tree_inode *i, struct stat *st);
/* The inode at a path ("/usr/bin/x" or "usr/bin/x"), following no symlink. */
struct tree_inode *tree_lookup_path(const struct tree *t, const char *path);
/* Writes the paths of the files read so far, one per line, in the order of
 * their first read; a file read in part has "\t@" and the parts read after
 * its path ("OFF+LEN,..." in bytes, whole TREE_RECORD_BLOCK blocks).
 * Returns how many. */
int tree_write_record(const struct tree *t, FILE *out);
/* Reads a regular file's bytes; 0 at or past its end, -EIO if the layer
 * could not deliver verified bytes.  The first read is recorded. */
ssize_t tree_read(const struct tree_inode *i, void *buf, size_t size, uint64_t off);
/* Who hears of a file's first read from its start: first_read as it begins
 * (its bytes may still be on their way), head once its first bytes are
 * in.  One set per process (NULL: no one), set before reads are served. */
struct tree_read_hooks {
	void (*first_read)(void *ctx, const struct tree_inode *i);
	void (*head)(void *ctx, const struct tree_inode *i, const void *head, size_t len);
	void *ctx;
};
void tree_set_read_hooks(const struct tree_read_hooks *hooks);
/* The inode at a path of the image, following symlinks as the kernel
 * would inside it (absolute targets from the image's root); NULL if there
 * is none or the links loop. */
struct tree_inode *tree_resolve_path(const struct tree *t, const char *path);
const struct xattr *tree_xattr(const struct tree_inode *i, const char *name);
/* Writes the NUL-separated xattr names into buf when it is large enough;
 * returns the length the list needs. */
size_t tree_list_xattrs(const struct tree_inode *i, char *buf, size_t size);
