/* Copy-up: an image object made real in UPPERDIR, with its metadata, its
 * xattrs and (for files) its bytes, before its first change; hardlinks of
 * the image stay hardlinks.  See overlay_internal.h for the lock contract. */
#include "overlay_internal.h"

static struct timespec image_mtime(const struct tree_inode *i)
{
	return (struct timespec){ .tv_sec = i->mtime_sec, .tv_nsec = i->mtime_nsec };
}

static int set_image_xattrs(int fd, const struct tree_inode *i, bool path_fd)
{
	const struct entry *e = i->entry;
	char path[64];
	for (uint32_t k = 0; e && k < e->n_xattrs; k++) {
		const struct xattr *x = &e->xattrs[k];
		int r = path_fd ? setxattr(PROC_FD_PATH(path, fd), x->name, x->value, x->len, 0)
				: fsetxattr(fd, x->name, x->value, x->len, 0);
		if (r < 0)
			return -errno;
	}
	return 0;
}

/* Owner first: chown clears the setuid and setgid bits. */
static int set_image_meta_fd(int fd, const struct tree_inode *i)
{
	struct timespec ts[2] = { image_mtime(i), image_mtime(i) };
	if (fchown(fd, i->uid, i->gid) < 0 || fchmod(fd, i->mode & 07777) < 0)
		return -errno;
	int r = set_image_xattrs(fd, i, false);
	if (r < 0)
		return r;
	return futimens(fd, ts) < 0 ? -errno : 0;
}

static int copy_image_data(int fd, const struct tree_inode *i)
{
	_cleanup_free_ char *buf = malloc(FUSE_IO_MAX);
	if (!buf)
		return -ENOMEM;
	for (uint64_t off = 0; off < i->size;) {
		ssize_t n = tree_read(i, buf, FUSE_IO_MAX, off);
		if (n < 0)
			return (int)n;
		if (n == 0)
			return -EIO;
		/* Runs of zeros stay holes, as they were in a sparse layer entry. */
		bool zeros = true;
		for (ssize_t k = 0; k < n && zeros; k++)
			zeros = buf[k] == 0;
		if (!zeros) {
			ssize_t w = pwrite(fd, buf, (size_t)n, (off_t)off);
			if (w != n)
				return w < 0 ? -errno : -EIO;
		}
		off += (uint64_t)n;
	}
	return ftruncate(fd, (off_t)i->size) < 0 ? -errno : 0;
}

int link_fd_at(int fd, int dirfd, const char *name)
{
	if (linkat(fd, "", dirfd, name, AT_EMPTY_PATH) == 0)
		return 0;
	if (errno != ENOENT && errno != EPERM)
		return -errno;
	/* Without CAP_DAC_READ_SEARCH: through the descriptor's /proc path. */
	char path[64];
	return linkat(AT_FDCWD, PROC_FD_PATH(path, fd), dirfd, name, AT_SYMLINK_FOLLOW) < 0 ? -errno : 0;
}

/* Creates dirfd/name as a copy of the image object i.  A regular file is
 * written as an unnamed temporary file and linked in whole, so it never
 * shows half copied. */
static int copy_image_object(int dirfd, const char *name, const struct tree_inode *i, bool with_data)
{
	int r;
	struct timespec ts[2] = { image_mtime(i), image_mtime(i) };
	switch (i->mode & S_IFMT) {
	case S_IFREG: {
		_cleanup_close_ int fd = openat(dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
		if (fd < 0)
			return -errno;
		if (with_data && (r = copy_image_data(fd, i)) < 0)
			return r;
		if ((r = set_image_meta_fd(fd, i)) < 0)
			return r;
		return link_fd_at(fd, dirfd, name);
	}
	case S_IFDIR: {
		if (mkdirat(dirfd, name, 0700) < 0)
			return -errno;
		_cleanup_close_ int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		return set_image_meta_fd(fd, i);
	}
	case S_IFLNK:
		if (!i->entry || !i->entry->link)
			return -EIO;
		if (symlinkat(i->entry->link, dirfd, name) < 0)
			return -errno;
		/* Symlinks keep owner and times; their xattrs are not copied. */
		break;
	default:
		if (mknodat(dirfd, name, i->mode, makedev(i->rdev_major, i->rdev_minor)) < 0)
			return -errno;
		if (fchmodat(dirfd, name, i->mode & 07777, 0) < 0)
			return -errno;
		_cleanup_close_ int fd = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0 || (r = set_image_xattrs(fd, i, true)) < 0)
			return fd < 0 ? -errno : r;
		break;
	}
	if (fchownat(dirfd, name, i->uid, i->gid, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (!S_ISLNK(i->mode) && fchmodat(dirfd, name, i->mode & 07777, 0) < 0)
		return -errno;
	return utimensat(dirfd, name, ts, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
}

/* A copy-up adds to a directory without the program having changed it:
 * its times stay as they were, as overlayfs keeps them. */
static void restore_dir_times(int dirfd, const struct stat *before)
{
	char path[64];
	struct timespec ts[2] = { before->st_atim, before->st_mtim };
	(void)utimensat(AT_FDCWD, PROC_FD_PATH(path, dirfd), ts, 0);
}

static int copy_into(int dirfd, const char *name, const struct tree_inode *i, bool with_data)
{
	struct stat before;
	if (fstat(dirfd, &before) < 0)
		return -errno;
	int r = copy_image_object(dirfd, name, i, with_data);
	restore_dir_times(dirfd, &before);
	return r;
}

static const char *tree_name_in(const struct tree_inode *dir, const struct tree_inode *child)
{
	for (size_t k = 0; k < dir->n_children; k++)
		if (dir->children[k].inode == child)
			return dir->children[k].name;
	return NULL;
}

/* Links the upper copy (fd) of a hardlinked image file at `dir`/`name` when
 * the merged view still shows the image file there, creating the upper
 * directories on the way.  overlayfs with index=on keeps such links too. */
static int link_at_image_path(struct overlay *ov, int fd, const struct tree_inode *dir, const char *name)
{
	const struct tree_inode *chain[PATH_MAX / 2];
	size_t depth = 0;
	for (const struct tree_inode *d = dir; d->parent != d && depth < ARRAY_SIZE(chain); d = d->parent)
		chain[depth++] = d;
	_cleanup_close_ int cur = openat(ov->root->fd, ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (cur < 0)
		return -errno;
	while (depth--) {
		const struct tree_inode *d = chain[depth];
		const char *component = tree_name_in(d->parent, d);
		if (!component)
			return -EIO;
		int next = openat(cur, component, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		if (next < 0 && errno == ENOENT) {
			int r = copy_into(cur, component, d, false);
			if (r < 0)
				return r;
			next = openat(cur, component, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		}
		if (next < 0)
			return -errno;
		struct stat st;
		if (fstat(next, &st) < 0 || !S_ISDIR(st.st_mode) || upper_is_opaque(ov, next)) {
			/* Deleted, replaced or hidden: no image name shows there. */
			close(next);
			return 0;
		}
		close(cur);
		cur = next;
	}
	struct stat st;
	if (fstatat(cur, name, &st, AT_SYMLINK_NOFOLLOW) == 0 || errno != ENOENT)
		return 0;
	if (fstat(cur, &st) < 0)
		return -errno;
	int r = link_fd_at(fd, cur, name);
	restore_dir_times(cur, &st);
	return r;
}

static int link_image_siblings(struct overlay *ov, struct node *n, const struct tree_inode *file)
{
	const struct tree *t = ov->img->tree;
	for (size_t ino = 1; ino < t->n_inodes; ino++) {
		const struct tree_inode *d = t->inodes[ino];
		if (!d || !S_ISDIR(d->mode))
			continue;
		for (size_t k = 0; k < d->n_children; k++) {
			if (d->children[k].inode != file)
				continue;
			int r = link_at_image_path(ov, n->fd, d, d->children[k].name);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

/* Makes the UPPERDIR object at n's place (made by copy_into() when
 * missing) n's own.  made: whether this call created it. */
static int attach_upper(struct overlay *ov, struct node *n, bool made)
{
	int fd = openat(n->parent->fd, n->name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	int r;
	if (fstat(fd, &st) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	if (is_whiteout(&st)) {
		/* The name was deleted under a node that is still open. */
		close(fd);
		return -ENOENT;
	}
	if ((r = map_put(&ov->inos, st.st_ino, n->ino)) < 0) {
		close(fd);
		return r;
	}
	if ((r = node_attach_upper(ov, n, fd, &st)) < 0)
		return r;
	/* A directory that is now merged reports one link (node_stat()); the
	 * kernel keeps the attributes of the image's for a day otherwise, as
	 * nothing it sees changed them.  Only the attributes: no request comes
	 * back to this mount for that, so ov->lock may be held. */
	if (S_ISDIR(n->type) && ov->se)
		(void)fuse_lowlevel_notify_inval_inode(ov->se, n->id, -1, 0);
	if (made && S_ISREG(n->origin->mode) && n->origin->nlink > 1)
		return link_image_siblings(ov, n, n->origin);
	return 0;
}

/* A regular file's copy-up: its bytes copied into an unnamed file with
 * ov->lock released, as they may have to be fetched, then linked in. */
static int copy_up_file(struct overlay *ov, struct node *n)
{
	const struct tree_inode *origin = n->origin;
	int dirfd = fcntl(n->parent->fd, F_DUPFD_CLOEXEC, 3);
	if (dirfd < 0)
		return -errno;
	n->copying = true;
	ov->copying[ov->n_copying++] = n;
	pthread_mutex_unlock(&ov->lock);
	int tmp = openat(dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	int r = tmp < 0 ? -errno : copy_image_data(tmp, origin);
	if (r == 0)
		r = set_image_meta_fd(tmp, origin);
	pthread_mutex_lock(&ov->lock);
	n->copying = false;
	for (size_t i = 0; i < ov->n_copying; i++)
		if (ov->copying[i] == n)
			ov->copying[i] = ov->copying[--ov->n_copying];
	pthread_cond_broadcast(&ov->copied);
	close(dirfd);
	/* Where the node is now: a rename waited for the copy, an unlink
	 * left a whiteout at its name. */
	bool made = false;
	struct stat before;
	if (r == 0 && fstat(n->parent->fd, &before) < 0)
		r = -errno;
	if (r == 0) {
		r = link_fd_at(tmp, n->parent->fd, n->name);
		made = r == 0;
		restore_dir_times(n->parent->fd, &before);
		if (r == -EEXIST)
			r = 0; /* a directory move copied it already, or a whiteout: see attach_upper() */
	}
	if (tmp >= 0)
		close(tmp);
	return r < 0 ? r : attach_upper(ov, n, made);
}

bool name_copying(const struct overlay *ov, const struct node *dir, const char *name)
{
	for (size_t i = 0; i < ov->n_copying; i++)
		if (ov->copying[i]->parent == dir && strcmp(ov->copying[i]->name, name) == 0)
			return true;
	return false;
}

void wait_name_copied(struct overlay *ov, struct node *dir, const char *name)
{
	while (name_copying(ov, dir, name))
		pthread_cond_wait(&ov->copied, &ov->lock);
}

static int copy_up_node(struct overlay *ov, struct node *n, bool with_data, bool may_unlock)
{
	while (n->copying)
		pthread_cond_wait(&ov->copied, &ov->lock);
	if (n->fd >= 0)
		return 0;
	/* Too many already: this one is copied under the lock. */
	if (ov->n_copying == MAX_UNLOCKED_COPIES)
		may_unlock = false;
	if (!n->parent || !n->origin)
		return -EIO;
	int r = copy_up_node(ov, n->parent, true, false); /* a directory: never unlocks */
	if (r < 0)
		return r;
	bool made = false;
	int fd = openat(n->parent->fd, n->name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd >= 0)
		close(fd); /* a directory move already copied it: take that copy */
	else if (errno != ENOENT)
		return -errno;
	else if (may_unlock && with_data && S_ISREG(n->origin->mode) && n->origin->size > 0)
		return copy_up_file(ov, n);
	else if ((r = copy_into(n->parent->fd, n->name, n->origin, with_data)) < 0)
		return r;
	else
		made = true;
	return attach_upper(ov, n, made);
}

int copy_up(struct overlay *ov, struct node *n, bool with_data)
{
	return copy_up_node(ov, n, with_data, true);
}

int copy_up_holding_lock(struct overlay *ov, struct node *n, bool with_data)
{
	return copy_up_node(ov, n, with_data, false);
}

int copy_up_tree(struct overlay *ov, int dirfd, const struct tree_inode *merged)
{
	for (size_t k = 0; merged && k < merged->n_children; k++) {
		const char *name = merged->children[k].name;
		const struct tree_inode *child = merged->children[k].inode;
		struct stat st;
		int r;
		if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
			if (is_whiteout(&st) || !S_ISDIR(st.st_mode) || !S_ISDIR(child->mode))
				continue;
		} else if (errno != ENOENT) {
			return -errno;
		} else {
			if ((r = copy_into(dirfd, name, child, true)) < 0)
				return r;
			if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
				return -errno;
			if (!S_ISDIR(st.st_mode) && (r = map_put(&ov->inos, st.st_ino, child->ino)) < 0)
				return r;
			if (!S_ISDIR(child->mode))
				continue;
		}
		_cleanup_close_ int sub = openat(dirfd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (sub < 0)
			return -errno;
		if (!upper_is_opaque(ov, sub) && (r = copy_up_tree(ov, sub, child)) < 0)
			return r;
	}
	return 0;
}
