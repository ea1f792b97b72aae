/* Every operation answers with exactly one fuse_reply_*.  The tree is
 * immutable, so nothing here takes a lock and the kernel may cache entries,
 * attributes, directory listings and pages for as long as it likes. */
#include "fuse_ops.h"
#include "takeover.h"

#include <sys/statvfs.h>

/* The image never changes under the mount. */
#define CACHE_TIMEOUT (365.0 * 24 * 3600)

static struct image *image_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static struct tree_inode *inode_of(fuse_req_t req, fuse_ino_t ino)
{
	return tree_get(image_of(req)->tree, ino);
}

/* Set in init when the kernel can skip OPEN/OPENDIR: for an immutable tree
 * the replies carry nothing but "keep the cache", which is also what the
 * kernel assumes without them, so every open and close saves two round trips. */
static bool skip_open, skip_opendir;

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	if (conn->capable & FUSE_CAP_NO_OPEN_SUPPORT) {
		conn->want |= FUSE_CAP_NO_OPEN_SUPPORT;
		skip_open = true;
	}
	if (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) {
		conn->want |= FUSE_CAP_NO_OPENDIR_SUPPORT;
		skip_opendir = true;
	}
	if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
		conn->want |= FUSE_CAP_CACHE_SYMLINKS;
	/* Attribute changes never happen, so never drop cached pages for them. */
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	/* max_write also sets how many pages one read request may carry. */
	conn->max_write = FUSE_IO_MAX;
	conn->max_readahead = FUSE_READ_AROUND;
}

/* The merged tree is the whole mount: its inodes are the FUSE inodes. */
static struct served_tree served_image(fuse_req_t req)
{
	return (struct served_tree){ image_of(req)->tree, 0, FUSE_ROOT_ID };
}

void served_fill_entry(const struct served_tree *t, const struct tree_inode *i, struct fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	e->ino = t->base + i->ino;
	e->generation = 1;
	tree_stat(i, &e->attr);
	e->attr.st_ino = e->ino;
	e->attr_timeout = CACHE_TIMEOUT;
	e->entry_timeout = CACHE_TIMEOUT;
}

void served_lookup(fuse_req_t req, const struct served_tree *t, const struct tree_inode *dir, const char *name)
{
	if (!S_ISDIR(dir->mode)) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	struct fuse_entry_param e;
	struct tree_inode *child = tree_lookup(dir, name);
	if (!child) {
		/* A negative entry the kernel may keep: the name will never appear. */
		memset(&e, 0, sizeof(e));
		e.entry_timeout = CACHE_TIMEOUT;
		fuse_reply_entry(req, &e);
		return;
	}
	served_fill_entry(t, child, &e);
	fuse_reply_entry(req, &e);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct tree_inode *dir = inode_of(req, parent);
	struct served_tree t = served_image(req);
	if (!dir)
		fuse_reply_err(req, ENOENT);
	else
		served_lookup(req, &t, dir, name);
}

void forget_nothing(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	/* Inodes live as long as the tree: nothing to count. */
	(void)ino;
	(void)nlookup;
	fuse_reply_none(req);
}

void forget_multi_nothing(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	(void)count;
	(void)forgets;
	fuse_reply_none(req);
}

void served_getattr(fuse_req_t req, const struct served_tree *t, const struct tree_inode *i)
{
	struct stat st;
	tree_stat(i, &st);
	st.st_ino = t->base + i->ino;
	fuse_reply_attr(req, &st, CACHE_TIMEOUT);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	struct tree_inode *i = inode_of(req, ino);
	struct served_tree t = served_image(req);
	if (!i)
		fuse_reply_err(req, ENOENT);
	else
		served_getattr(req, &t, i);
}

void served_readlink(fuse_req_t req, const struct tree_inode *i)
{
	if (!S_ISLNK(i->mode) || !i->entry)
		fuse_reply_err(req, EINVAL);
	else
		fuse_reply_readlink(req, i->entry->link);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct tree_inode *i = inode_of(req, ino);
	if (!i)
		fuse_reply_err(req, ENOENT);
	else
		served_readlink(req, i);
}

void served_open(fuse_req_t req, const struct tree_inode *i, struct fuse_file_info *fi)
{
	if (S_ISDIR(i->mode)) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	fi->keep_cache = 1;
	fi->noflush = 1;
	fuse_reply_open(req, fi);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct tree_inode *i = inode_of(req, ino);
	if (!i)
		fuse_reply_err(req, ENOENT);
	/* The kernel then opens every file itself, with FOPEN_KEEP_CACHE; the
	 * mount is MS_RDONLY, so the VFS refuses writes before they get here. */
	else if (skip_open && !S_ISDIR(i->mode) && (fi->flags & O_ACCMODE) == O_RDONLY && !(fi->flags & O_TRUNC))
		fuse_reply_err(req, ENOSYS);
	else
		served_open(req, i, fi);
}

void served_read(fuse_req_t req, const struct tree_inode *i, size_t size, off_t off)
{
	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (size > FUSE_IO_MAX)
		size = FUSE_IO_MAX;
	_cleanup_free_ char *buf = malloc(size ? size : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	ssize_t n = tree_read(i, buf, size, (uint64_t)off);
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else
		fuse_reply_buf(req, buf, (size_t)n);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	struct tree_inode *i = inode_of(req, ino);
	if (!i)
		fuse_reply_err(req, ENOENT);
	else
		served_read(req, i, size, off);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct tree_inode *i = inode_of(req, ino);
	if (!i) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (!S_ISDIR(i->mode)) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (skip_opendir) {
		/* The kernel's default then is FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR. */
		fuse_reply_err(req, ENOSYS);
		return;
	}
	fi->cache_readdir = 1;
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

/* Directory offsets: 1 and 2 follow "." and "..", k + 3 follows child k. */
void served_readdir(fuse_req_t req, const struct served_tree *t, const struct tree_inode *dir, size_t size, off_t off,
		    bool plus)
{
	if (!S_ISDIR(dir->mode)) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (size > FUSE_IO_MAX)
		size = FUSE_IO_MAX;
	_cleanup_free_ char *buf = malloc(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	size_t used = 0;
	for (off_t pos = off < 0 ? 0 : off; (size_t)pos < dir->n_children + 2; pos++) {
		const char *name;
		const struct tree_inode *child;
		if (pos == 0)
			name = ".", child = dir;
		else if (pos == 1)
			name = "..", child = dir->parent ? dir->parent : dir;
		else
			name = dir->children[pos - 2].name, child = dir->children[pos - 2].inode;
		/* The parent of a served tree's root is outside the tree. */
		fuse_ino_t ino = pos == 1 && dir->ino == 1 ? t->root_parent : t->base + child->ino;
		size_t n;
		if (plus) {
			struct fuse_entry_param e;
			served_fill_entry(t, child, &e);
			e.ino = e.attr.st_ino = ino;
			n = fuse_add_direntry_plus(req, buf + used, size - used, name, &e, pos + 1);
		} else {
			struct stat st = { .st_ino = ino, .st_mode = child->mode };
			n = fuse_add_direntry(req, buf + used, size - used, name, &st, pos + 1);
		}
		if (n > size - used)
			break;
		used += n;
	}
	fuse_reply_buf(req, buf, used);
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus)
{
	struct tree_inode *dir = inode_of(req, ino);
	struct served_tree t = served_image(req);
	if (!dir)
		fuse_reply_err(req, ENOENT);
	else
		served_readdir(req, &t, dir, size, off, plus);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	do_readdir(req, ino, size, off, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	do_readdir(req, ino, size, off, true);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

void reply_xattr_value(fuse_req_t req, const void *value, size_t len, size_t size)
{
	if (size == 0)
		fuse_reply_xattr(req, len);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, value, len);
}

void reply_pid_xattr(fuse_req_t req, size_t size)
{
	char pid[32];
	int n = snprintf(pid, sizeof(pid), "%d", (int)getpid());
	reply_xattr_value(req, pid, (size_t)n, size);
}

/* Whether the caller shares the daemon's mount namespace: a process on the
 * host, not in a container, which runs in a namespace of its own.  A pid
 * that was reused in between can only make this say no to a host process. */
static bool caller_on_host(fuse_req_t req)
{
	char path[64], theirs[64], ours[64];
	snprintf(path, sizeof(path), "/proc/%d/ns/mnt", (int)fuse_req_ctx(req)->pid);
	ssize_t a = readlink(path, theirs, sizeof(theirs) - 1);
	ssize_t b = readlink("/proc/self/ns/mnt", ours, sizeof(ours) - 1);
	return a > 0 && a == b && memcmp(theirs, ours, (size_t)a) == 0;
}

bool reply_virtual_xattr(fuse_req_t req, struct image *img, fuse_ino_t ino, const char *name, size_t size)
{
	/* listxattr does not show them, so copies of the tree never carry them along. */
	if (ino != FUSE_ROOT_ID)
		return false;
	/* What names host paths or pids, or makes the daemon write into the
	 * host's cache, is not for the container on this mount: to it these
	 * names do not exist. */
	bool host_only = strcmp(name, IMGFS_CONFIG_XATTR) == 0 || strcmp(name, IMGFS_PID_XATTR) == 0 ||
			 strcmp(name, IMGFS_RECORD_XATTR) == 0;
	if (host_only && !caller_on_host(req)) {
		fuse_reply_err(req, ENODATA);
		return true;
	}
	if (strcmp(name, IMGFS_MANIFEST_XATTR) == 0) {
		reply_xattr_value(req, img->manifest_digest, strlen(img->manifest_digest), size);
		return true;
	}
	if (strcmp(name, IMGFS_CONFIG_XATTR) == 0) {
		reply_xattr_value(req, img->config_path, strlen(img->config_path), size);
		return true;
	}
	if (strcmp(name, IMGFS_PID_XATTR) == 0) {
		reply_pid_xattr(req, size);
		return true;
	}
	if (strcmp(name, IMGFS_RECORD_XATTR) == 0) {
		/* Written on the size probe and again on the read that follows. */
		_cleanup_free_ char *path = NULL;
		int r = image_write_record(img, &path);
		if (r < 0)
			fuse_reply_err(req, -r);
		else
			reply_xattr_value(req, path, strlen(path), size);
		return true;
	}
	if (strcmp(name, IMGFS_STATS_XATTR) != 0)
		return false;
	char stats[1024];
	int n = takeover_append_stats(stats, image_format_stats(img, stats, sizeof(stats)), sizeof(stats));
	if (n < 0)
		fuse_reply_err(req, EIO);
	else
		reply_xattr_value(req, stats, (size_t)n, size);
	return true;
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct tree_inode *i = inode_of(req, ino);
	if (!i) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (!reply_virtual_xattr(req, image_of(req), ino, name, size))
		served_getxattr(req, i, name, size);
}

void served_getxattr(fuse_req_t req, const struct tree_inode *i, const char *name, size_t size)
{
	const struct xattr *x = tree_xattr(i, name);
	if (!x)
		fuse_reply_err(req, ENODATA);
	else
		reply_xattr_value(req, x->value, x->len, size);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct tree_inode *i = inode_of(req, ino);
	if (!i)
		fuse_reply_err(req, ENOENT);
	else
		served_listxattr(req, i, size);
}

void served_listxattr(fuse_req_t req, const struct tree_inode *i, size_t size)
{
	size_t total = tree_list_xattrs(i, NULL, 0);
	if (size == 0) {
		fuse_reply_xattr(req, total);
		return;
	}
	if (size < total) {
		fuse_reply_err(req, ERANGE);
		return;
	}
	_cleanup_free_ char *buf = malloc(total ? total : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	fuse_reply_buf(req, buf, tree_list_xattrs(i, buf, total));
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	(void)ino;
	const struct tree *t = image_of(req)->tree;
	struct statvfs st = {
		.f_bsize = 4096,
		.f_frsize = 4096,
		.f_blocks = (t->total_size + 4095) / 4096,
		.f_files = t->n_inodes - 1,
		.f_namemax = 255,
		.f_flag = ST_RDONLY,
	};
	fuse_reply_statfs(req, &st);
}

const struct fuse_lowlevel_ops imgfs_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = forget_nothing,
	.forget_multi = forget_multi_nothing,
	.getattr = op_getattr,
	.readlink = op_readlink,
	.open = op_open,
	.read = op_read,
	.release = op_release,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.releasedir = op_releasedir,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.statfs = op_statfs,
};
