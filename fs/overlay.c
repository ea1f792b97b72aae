/* The writable mount's FUSE operations and its set-up; the node table,
 * copy-up and the namespace operations they stand on are declared in
 * overlay_internal.h, with the lock contract. */
#include "overlay_internal.h"

/* Only this mount changes UPPERDIR (it holds the lock), and every change
 * passes through the kernel, which updates its caches itself. */
#define CACHE_TIMEOUT (24.0 * 3600)

/* Fills e for n and counts the lookup the reply hands to the kernel;
 * ov->lock is held.  On failure n is released instead. */
static int count_entry(struct overlay *ov, struct node *n, struct fuse_entry_param *e)
{
	*e = (struct fuse_entry_param){ 0 };
	int r = node_stat(ov, n, &e->attr);
	if (r < 0) {
		node_unref(ov, n);
		return r;
	}
	n->lookups++;
	node_save(ov, n);
	e->ino = n->id;
	e->generation = 1;
	e->attr_timeout = CACHE_TIMEOUT;
	e->entry_timeout = CACHE_TIMEOUT;
	return 0;
}

static void reply_entry_of(fuse_req_t req, struct overlay *ov, struct node *n)
{
	struct fuse_entry_param e;
	int r = count_entry(ov, n, &e);
	pthread_mutex_unlock(&ov->lock);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_entry(req, &e);
}

static void unlock_reply_err(fuse_req_t req, struct overlay *ov, int r)
{
	pthread_mutex_unlock(&ov->lock);
	fuse_reply_err(req, r < 0 ? -r : r);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	/* The daemon writes as root, which keeps setuid bits: let the kernel,
	 * which knows the writer, clear them with a setattr. */
	conn->want &= ~FUSE_CAP_HANDLE_KILLPRIV;
	/* A symlink's target never changes (replacing it makes a new node):
	 * runc alone read the same one three times per start. */
	if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
		conn->want |= FUSE_CAP_CACHE_SYMLINKS;
	conn->max_write = FUSE_IO_MAX;
	conn->max_readahead = FUSE_READ_AROUND;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct overlay *ov = overlay_of(req);
	pthread_mutex_lock(&ov->lock);
	struct node *n;
	int r = resolve(ov, node_of(ov, parent), name, &n);
	if (r == -ENOENT) {
		pthread_mutex_unlock(&ov->lock);
		/* A negative entry: only this mount can create the name, through the kernel. */
		struct fuse_entry_param e = { .entry_timeout = CACHE_TIMEOUT };
		fuse_reply_entry(req, &e);
		return;
	}
	if (r < 0) {
		unlock_reply_err(req, ov, r);
		return;
	}
	reply_entry_of(req, ov, n);
}

static void forget_one(struct overlay *ov, fuse_ino_t ino, uint64_t nlookup)
{
	struct node *n = node_of(ov, ino);
	if (!n || n == ov->root)
		return;
	n->lookups -= nlookup < n->lookups ? nlookup : n->lookups;
	node_save(ov, n);
	node_unref(ov, n);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	struct overlay *ov = overlay_of(req);
	pthread_mutex_lock(&ov->lock);
	forget_one(ov, ino, nlookup);
	pthread_mutex_unlock(&ov->lock);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	struct overlay *ov = overlay_of(req);
	pthread_mutex_lock(&ov->lock);
	for (size_t k = 0; k < count; k++)
		forget_one(ov, forgets[k].ino, forgets[k].nlookup);
	pthread_mutex_unlock(&ov->lock);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	struct overlay *ov = overlay_of(req);
	struct stat st;
	pthread_mutex_lock(&ov->lock);
	int r = node_stat(ov, node_of(ov, ino), &st);
	pthread_mutex_unlock(&ov->lock);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_attr(req, &st, CACHE_TIMEOUT);
}

static int set_times(struct node *n, const struct handle *h, const struct stat *attr, int to_set)
{
	struct timespec ts[2] = { { .tv_nsec = UTIME_OMIT }, { .tv_nsec = UTIME_OMIT } };
	if (to_set & FUSE_SET_ATTR_ATIME_NOW)
		ts[0].tv_nsec = UTIME_NOW;
	else if (to_set & FUSE_SET_ATTR_ATIME)
		ts[0] = attr->st_atim;
	if (to_set & FUSE_SET_ATTR_MTIME_NOW)
		ts[1].tv_nsec = UTIME_NOW;
	else if (to_set & FUSE_SET_ATTR_MTIME)
		ts[1] = attr->st_mtim;
	if (h && h->fd >= 0)
		return futimens(h->fd, ts) < 0 ? -errno : 0;
	if (S_ISLNK(n->type))
		return utimensat(n->parent->fd, n->name, ts, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
	char path[64];
	return utimensat(AT_FDCWD, PROC_FD_PATH(path, n->fd), ts, 0) < 0 ? -errno : 0;
}

static int do_setattr(struct overlay *ov, struct node *n, const struct handle *h, const struct stat *attr, int to_set)
{
	bool truncating = (to_set & FUSE_SET_ATTR_SIZE) && attr->st_size == 0 && S_ISREG(n->type);
	int r = copy_up(ov, n, !truncating);
	if (r < 0)
		return r;
	char path[64];
	if ((to_set & FUSE_SET_ATTR_MODE) && !S_ISLNK(n->type) &&
	    chmod(PROC_FD_PATH(path, n->fd), attr->st_mode & 07777) < 0)
		return -errno;
	if (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		uid_t uid = (to_set & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1;
		gid_t gid = (to_set & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1;
		if (fchownat(n->fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
	}
	if (to_set & FUSE_SET_ATTR_SIZE) {
		if (!S_ISREG(n->type))
			return -EINVAL;
		if (h && h->fd >= 0 ? ftruncate(h->fd, attr->st_size) < 0
				    : truncate(PROC_FD_PATH(path, n->fd), attr->st_size) < 0)
			return -errno;
	}
	if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW))
		return set_times(n, h, attr, to_set);
	return 0;
}

static void *handle_get(struct overlay *ov, uint64_t fh, bool dir);

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
	struct overlay *ov = overlay_of(req);
	const struct handle *h = fi ? handle_get(ov, fi->fh, false) : NULL;
	struct stat st;
	pthread_mutex_lock(&ov->lock);
	struct node *n = node_of(ov, ino);
	int r = n ? do_setattr(ov, n, h, attr, to_set) : -ESTALE;
	if (r == 0)
		r = node_stat(ov, n, &st);
	pthread_mutex_unlock(&ov->lock);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_attr(req, &st, CACHE_TIMEOUT);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct overlay *ov = overlay_of(req);
	char target[PATH_MAX + 1];
	pthread_mutex_lock(&ov->lock);
	struct node *n = node_of(ov, ino);
	if (!n) {
		unlock_reply_err(req, ov, -ESTALE);
		return;
	}
	int r = 0;
	if (!S_ISLNK(n->type)) {
		r = -EINVAL;
	} else if (n->fd >= 0) {
		ssize_t len = readlinkat(n->fd, "", target, sizeof(target) - 1);
		if (len < 0)
			r = -errno;
		else
			target[len] = '\0';
	} else if (n->origin->entry && n->origin->entry->link) {
		snprintf(target, sizeof(target), "%s", n->origin->entry->link);
	} else {
		r = -EIO;
	}
	pthread_mutex_unlock(&ov->lock);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_readlink(req, target);
}

static void make_and_reply(fuse_req_t req, fuse_ino_t parent, const char *name, make_fn *make, struct make_request *m)
{
	struct overlay *ov = overlay_of(req);
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	m->uid = ctx->uid;
	m->gid = ctx->gid;
	struct node *n;
	pthread_mutex_lock(&ov->lock);
	int r = make_entry(ov, node_of(ov, parent), name, make, m, &n);
	if (r < 0) {
		unlock_reply_err(req, ov, r);
		return;
	}
	reply_entry_of(req, ov, n);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	/* A 0:0 character device is how UPPERDIR says "deleted". */
	if (S_ISCHR(mode) && rdev == makedev(0, 0)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	struct make_request m = { .mode = mode, .rdev = rdev, .fd = -1 };
	make_and_reply(req, parent, name, make_node, &m);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct make_request m = { .mode = S_IFDIR | mode, .fd = -1 };
	make_and_reply(req, parent, name, make_dir, &m);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	struct make_request m = { .mode = S_IFLNK | 0777, .link = link, .fd = -1 };
	make_and_reply(req, parent, name, make_symlink, &m);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	struct overlay *ov = overlay_of(req);
	pthread_mutex_lock(&ov->lock);
	struct node *n = node_of(ov, ino), *linked;
	if (!n) {
		unlock_reply_err(req, ov, -ESTALE);
		return;
	}
	int r = copy_up(ov, n, true);
	struct make_request m = { .uid = (uid_t)-1, .gid = (gid_t)-1, .mode = n->type, .fd = n->fd };
	if (r == 0)
		r = make_entry(ov, node_of(ov, newparent), newname, make_link, &m, &linked);
	if (r < 0) {
		unlock_reply_err(req, ov, r);
		return;
	}
	reply_entry_of(req, ov, linked);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct overlay *ov = overlay_of(req);
	pthread_mutex_lock(&ov->lock);
	unlock_reply_err(req, ov, remove_entry(ov, node_of(ov, parent), name, false));
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct overlay *ov = overlay_of(req);
	pthread_mutex_lock(&ov->lock);
	unlock_reply_err(req, ov, remove_entry(ov, node_of(ov, parent), name, true));
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent, const char *newname,
		      unsigned int flags)
{
	struct overlay *ov = overlay_of(req);
	pthread_mutex_lock(&ov->lock);
	unlock_reply_err(req, ov, do_rename(ov, node_of(ov, parent), name, node_of(ov, newparent), newname, flags));
}

static int open_upper(int path_fd, int flags)
{
	char path[64];
	flags &= ~(O_CREAT | O_EXCL | O_NOCTTY | O_NOFOLLOW | O_TRUNC);
	int fd = open(PROC_FD_PATH(path, path_fd), flags | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

static void close_open(bool dir, void *h)
{
	if (dir) {
		listing_free(h);
	} else if (h) {
		struct handle *fh = h;
		if (fh->fd >= 0)
			close(fh->fd);
		free(fh);
	}
}

/* An open file of the server before this one, opened again as it was. */
static void *reopen_handle(struct overlay *ov, uint64_t fh)
{
	fuse_ino_t id;
	int flags;
	unsigned kind;
	if (!handle_record(ov, fh, &id, &flags, &kind))
		return NULL;
	pthread_mutex_lock(&ov->lock);
	struct node *n = node_of(ov, id);
	void *h = NULL;
	if (n && kind == HANDLE_DIR) {
		struct listing *l = NULL;
		if (S_ISDIR(n->type) && list_dir(ov, n, &l) == 0) {
			l->self_ino = n->ino;
			l->parent_ino = n->parent ? n->parent->ino : n->ino;
		}
		h = l;
	} else if (n && (kind == HANDLE_UPPER ? n->fd >= 0 : n->origin != NULL)) {
		int fd = kind == HANDLE_UPPER ? open_upper(n->fd, flags) : -1;
		struct handle *fh_open = fd >= 0 || kind != HANDLE_UPPER ? malloc(sizeof(*fh_open)) : NULL;
		if (fh_open)
			*fh_open = (struct handle){ .fd = fd, .image = n->origin };
		else if (fd >= 0)
			close(fd);
		h = fh_open;
	}
	pthread_mutex_unlock(&ov->lock);
	if (!h)
		return NULL;
	void *kept = handle_adopt(ov, fh, h);
	if (kept != h)
		close_open(kind == HANDLE_DIR, h);
	return kept;
}

static void *handle_get(struct overlay *ov, uint64_t fh, bool dir)
{
	bool reopen;
	void *h = handle_peek(ov, fh, dir, &reopen);
	return h || !reopen ? h : reopen_handle(ov, fh);
}

/* Gives the kernel a handle for h (struct handle, or struct listing for
 * HANDLE_DIR), which it holds from then on, or frees h. */
static bool give_handle(struct overlay *ov, fuse_ino_t ino, struct fuse_file_info *fi, unsigned kind, void *h)
{
	fi->fh = h ? handle_put(ov, ino, fi->flags, kind, h) : 0;
	if (!fi->fh)
		close_open(kind == HANDLE_DIR, h);
	return fi->fh != 0;
}

/* The kernel did not take the handle (the caller was interrupted). */
static void drop_handle(struct overlay *ov, uint64_t fh, bool dir)
{
	close_open(dir, handle_take(ov, fh));
}

static void reply_open_handle(fuse_req_t req, struct fuse_file_info *fi, fuse_ino_t ino, int fd,
			      const struct tree_inode *image)
{
	struct overlay *ov = overlay_of(req);
	struct handle *h = malloc(sizeof(*h));
	if (h)
		*h = (struct handle){ .fd = fd, .image = image };
	else if (fd >= 0)
		close(fd);
	if (!give_handle(ov, ino, fi, fd >= 0 ? HANDLE_UPPER : HANDLE_IMAGE, h)) {
		fuse_reply_err(req, h ? ENFILE : ENOMEM);
		return;
	}
	/* The image's bytes never change; an upper file's pages are only
	 * trusted until the next open. */
	fi->keep_cache = fd < 0;
	/* Locks are the kernel's own (no lock operations here): nothing to flush. */
	fi->noflush = 1;
	if (fuse_reply_open(req, fi) != 0)
		drop_handle(ov, fi->fh, false);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct overlay *ov = overlay_of(req);
	pthread_mutex_lock(&ov->lock);
	struct node *n = node_of(ov, ino);
	if (!n) {
		unlock_reply_err(req, ov, -ESTALE);
		return;
	}
	int r = 0, fd = -1;
	bool writing = (fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC);
	if (S_ISDIR(n->type))
		r = -EISDIR;
	else if (writing)
		r = copy_up(ov, n, !(fi->flags & O_TRUNC));
	if (r == 0 && n->fd >= 0) {
		fd = r = open_upper(n->fd, fi->flags);
		if (r >= 0 && (fi->flags & O_TRUNC) && ftruncate(fd, 0) < 0) {
			r = -errno;
			close(fd);
		}
	}
	const struct tree_inode *image = n->origin;
	pthread_mutex_unlock(&ov->lock);
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		reply_open_handle(req, fi, ino, fd, image);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi)
{
	struct overlay *ov = overlay_of(req);
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct make_request m = {
		.uid = ctx->uid, .gid = ctx->gid, .mode = S_IFREG | mode, .flags = fi->flags, .fd = -1
	};
	struct node *n;
	pthread_mutex_lock(&ov->lock);
	int r = make_entry(ov, node_of(ov, parent), name, make_file, &m, &n);
	struct fuse_entry_param e;
	if (r == 0)
		r = count_entry(ov, n, &e);
	if (r < 0) {
		if (m.fd >= 0)
			close(m.fd);
		unlock_reply_err(req, ov, r);
		return;
	}
	pthread_mutex_unlock(&ov->lock);
	struct handle *h = malloc(sizeof(*h));
	if (h)
		*h = (struct handle){ .fd = m.fd };
	else
		close(m.fd);
	/* The kernel holds the lookup it was counted, whatever the reply. */
	if (!give_handle(ov, e.ino, fi, HANDLE_UPPER, h)) {
		fuse_reply_err(req, h ? ENFILE : ENOMEM);
		return;
	}
	fi->noflush = 1;
	if (fuse_reply_create(req, &e, fi) != 0)
		drop_handle(ov, fi->fh, false);
}

static struct handle *handle_of(fuse_req_t req, struct fuse_file_info *fi)
{
	return handle_get(overlay_of(req), fi->fh, false);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)ino;
	struct handle *h = handle_of(req, fi);
	if (!h) {
		fuse_reply_err(req, EBADF);
		return;
	}
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
	ssize_t n = h->fd >= 0 ? pread(h->fd, buf, size, off) : tree_read(h->image, buf, size, (uint64_t)off);
	if (n < 0)
		fuse_reply_err(req, h->fd >= 0 ? errno : (int)-n);
	else
		fuse_reply_buf(req, buf, (size_t)n);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)ino;
	struct handle *h = handle_of(req, fi);
	if (!h) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if (h->fd < 0) {
		fuse_reply_err(req, EBADF);
		return;
	}
	ssize_t n = pwrite(h->fd, buf, size, off);
	if (n < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_write(req, (size_t)n);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len, struct fuse_file_info *fi)
{
	(void)ino;
	struct handle *h = handle_of(req, fi);
	if (!h) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if (h->fd < 0)
		fuse_reply_err(req, EBADF);
	else
		fuse_reply_err(req, fallocate(h->fd, mode, off, len) < 0 ? errno : 0);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	struct handle *h = handle_of(req, fi);
	if (!h) {
		fuse_reply_err(req, EBADF);
		return;
	}
	/* Closing a duplicate drops the POSIX locks, as close() by the caller would. */
	int r = 0;
	if (h->fd >= 0) {
		int dup_fd = dup(h->fd);
		r = dup_fd < 0 || close(dup_fd) < 0 ? errno : 0;
	}
	fuse_reply_err(req, r);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)ino;
	struct handle *h = handle_of(req, fi);
	if (!h) {
		fuse_reply_err(req, EBADF);
		return;
	}
	int r = 0;
	if (h->fd >= 0)
		r = (datasync ? fdatasync(h->fd) : fsync(h->fd)) < 0 ? errno : 0;
	fuse_reply_err(req, r);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	/* Not reopened if a server before this one opened it: never used again. */
	close_open(false, handle_take(overlay_of(req), fi->fh));
	fuse_reply_err(req, 0);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct overlay *ov = overlay_of(req);
	struct listing *l = NULL;
	pthread_mutex_lock(&ov->lock);
	struct node *n = node_of(ov, ino);
	if (!n) {
		unlock_reply_err(req, ov, -ESTALE);
		return;
	}
	int r = S_ISDIR(n->type) ? list_dir(ov, n, &l) : -ENOTDIR;
	if (r == 0) {
		l->self_ino = n->ino;
		l->parent_ino = n->parent ? n->parent->ino : n->ino;
	}
	pthread_mutex_unlock(&ov->lock);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	if (!give_handle(ov, ino, fi, HANDLE_DIR, l)) {
		fuse_reply_err(req, ENFILE);
		return;
	}
	if (fuse_reply_open(req, fi) != 0)
		drop_handle(ov, fi->fh, true);
}

/* Offsets: 1 and 2 follow "." and "..", k + 3 follows entry k. */
static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)ino;
	const struct listing *l = handle_get(overlay_of(req), fi->fh, true);
	if (!l) {
		fuse_reply_err(req, EBADF);
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
	for (off_t pos = off < 0 ? 0 : off; (size_t)pos < l->n + 2; pos++) {
		struct stat st = { .st_mode = S_IFDIR, .st_ino = pos == 0 ? l->self_ino : l->parent_ino };
		const char *name = pos == 0 ? "." : "..";
		if (pos >= 2) {
			name = l->v[pos - 2].name;
			st.st_ino = l->v[pos - 2].ino;
			st.st_mode = l->v[pos - 2].type;
		}
		size_t n = fuse_add_direntry(req, buf + used, size - used, name, &st, pos + 1);
		if (n > size - used)
			break;
		used += n;
	}
	fuse_reply_buf(req, buf, used);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	close_open(true, handle_take(overlay_of(req), fi->fh));
	fuse_reply_err(req, 0);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)fi;
	struct overlay *ov = overlay_of(req);
	pthread_mutex_lock(&ov->lock);
	struct node *n = node_of(ov, ino);
	if (!n) {
		unlock_reply_err(req, ov, -ESTALE);
		return;
	}
	/* Not copied up: nothing of it is in UPPERDIR to sync. */
	int fd = n->fd >= 0 ? open_upper(n->fd, O_RDONLY | O_DIRECTORY) : -EBADF;
	pthread_mutex_unlock(&ov->lock);
	int r = 0;
	if (fd >= 0) {
		r = (datasync ? fdatasync(fd) : fsync(fd)) < 0 ? errno : 0;
		close(fd);
	} else if (fd != -EBADF) {
		r = -fd;
	}
	fuse_reply_err(req, r);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	(void)ino;
	struct overlay *ov = overlay_of(req);
	struct statvfs st;
	if (fstatvfs(ov->root->fd, &st) < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_statfs(req, &st);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct overlay *ov = overlay_of(req);
	if (reply_virtual_xattr(req, ov->img, ino, name, size))
		return;
	if (is_overlay_xattr(name)) {
		fuse_reply_err(req, ENODATA);
		return;
	}
	pthread_mutex_lock(&ov->lock);
	struct node *n = node_of(ov, ino);
	if (!n) {
		unlock_reply_err(req, ov, -ESTALE);
		return;
	}
	if (n->fd < 0) {
		const struct xattr *x = tree_xattr(n->origin, name);
		pthread_mutex_unlock(&ov->lock);
		if (x)
			reply_xattr_value(req, x->value, x->len, size);
		else
			fuse_reply_err(req, ENODATA);
		return;
	}
	char path[64];
	_cleanup_free_ char *buf = size ? malloc(size) : NULL;
	ssize_t len = S_ISLNK(n->type) ? (errno = ENODATA, -1)
		      : size && !buf   ? (errno = ENOMEM, -1)
				       : getxattr(PROC_FD_PATH(path, n->fd), name, buf, size);
	int saved = errno;
	pthread_mutex_unlock(&ov->lock);
	if (len < 0)
		fuse_reply_err(req, saved);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)len);
	else
		fuse_reply_buf(req, buf, (size_t)len);
}

/* The upper object's xattr names without the overlay's own. */
static ssize_t list_upper_xattrs(int fd, char **ret)
{
	char path[64];
	ssize_t len = listxattr(PROC_FD_PATH(path, fd), NULL, 0);
	if (len < 0)
		return -errno;
	_cleanup_free_ char *all = malloc((size_t)len + 1);
	char *kept = malloc((size_t)len + 1);
	if (!all || !kept) {
		free(kept);
		return -ENOMEM;
	}
	if ((len = listxattr(path, all, (size_t)len)) < 0) {
		free(kept);
		return -errno;
	}
	size_t used = 0;
	for (ssize_t k = 0; k < len; k += (ssize_t)strlen(all + k) + 1)
		if (!is_overlay_xattr(all + k)) {
			size_t n = strlen(all + k) + 1;
			memcpy(kept + used, all + k, n);
			used += n;
		}
	*ret = kept;
	return (ssize_t)used;
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct overlay *ov = overlay_of(req);
	_cleanup_free_ char *list = NULL;
	ssize_t len;
	pthread_mutex_lock(&ov->lock);
	struct node *n = node_of(ov, ino);
	if (!n) {
		unlock_reply_err(req, ov, -ESTALE);
		return;
	}
	if (n->fd < 0) {
		len = (ssize_t)tree_list_xattrs(n->origin, NULL, 0);
		if ((list = malloc((size_t)len + 1)))
			tree_list_xattrs(n->origin, list, (size_t)len);
		else
			len = -ENOMEM;
	} else if (S_ISLNK(n->type)) {
		len = 0;
	} else {
		len = list_upper_xattrs(n->fd, &list);
	}
	pthread_mutex_unlock(&ov->lock);
	if (len < 0)
		fuse_reply_err(req, (int)-len);
	else
		reply_xattr_value(req, list, (size_t)len, size);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size, int flags)
{
	struct overlay *ov = overlay_of(req);
	if (is_overlay_xattr(name)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	pthread_mutex_lock(&ov->lock);
	struct node *n = node_of(ov, ino);
	if (!n) {
		unlock_reply_err(req, ov, -ESTALE);
		return;
	}
	int r = copy_up(ov, n, true);
	char path[64];
	if (r == 0 && S_ISLNK(n->type))
		r = -EPERM;
	if (r == 0 && setxattr(PROC_FD_PATH(path, n->fd), name, value, size, flags) < 0)
		r = -errno;
	unlock_reply_err(req, ov, r);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct overlay *ov = overlay_of(req);
	if (is_overlay_xattr(name)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	pthread_mutex_lock(&ov->lock);
	struct node *n = node_of(ov, ino);
	if (!n) {
		unlock_reply_err(req, ov, -ESTALE);
		return;
	}
	int r = 0;
	if (n->fd < 0 && !tree_xattr(n->origin, name))
		r = -ENODATA; /* nothing to remove: no reason to copy up */
	if (r == 0)
		r = copy_up(ov, n, true);
	char path[64];
	if (r == 0 && S_ISLNK(n->type))
		r = -ENODATA;
	if (r == 0 && removexattr(PROC_FD_PATH(path, n->fd), name) < 0)
		r = -errno;
	unlock_reply_err(req, ov, r);
}

const struct fuse_lowlevel_ops overlay_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.readlink = op_readlink,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.symlink = op_symlink,
	.rename = op_rename,
	.link = op_link,
	.open = op_open,
	.read = op_read,
	.write = op_write,
	.flush = op_flush,
	.release = op_release,
	.fsync = op_fsync,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.releasedir = op_releasedir,
	.fsyncdir = op_fsyncdir,
	.statfs = op_statfs,
	.setxattr = op_setxattr,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.removexattr = op_removexattr,
	.create = op_create,
	.fallocate = op_fallocate,
};

int overlay_open(struct image *img, const char *upper_dir, int state_fd, bool resume, struct overlay **ret,
		 struct err *err)
{
	_cleanup_close_ int lock_fd = open(upper_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (lock_fd < 0)
		return err_set(err, errno, "upper directory \"%s\": %s", upper_dir, strerror(errno));
	if (flock(lock_fd, LOCK_EX | LOCK_NB) < 0)
		return err_set(err, errno == EWOULDBLOCK ? EBUSY : errno, "upper directory \"%s\": %s", upper_dir,
			       errno == EWOULDBLOCK ? "in use by another imgfs mount" : strerror(errno));
	_cleanup_close_ int root_fd = open(upper_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	struct stat st;
	if (root_fd < 0 || fstat(root_fd, &st) < 0)
		return err_set(err, errno, "upper directory \"%s\": %s", upper_dir, strerror(errno));
	/* One O_PATH descriptor per upper inode the kernel holds. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	/* The kernel applied the caller's umask to every mode it sends. */
	umask(0);

	struct overlay *ov = calloc(1, sizeof(*ov));
	struct node *root = calloc(1, sizeof(*root));
	if (!ov || !root) {
		free(ov);
		free(root);
		return err_set(err, ENOMEM, "upper directory \"%s\": out of memory", upper_dir);
	}
	pthread_mutex_init(&ov->lock, NULL);
	pthread_cond_init(&ov->copied, NULL);
	ov->img = img;
	ov->opaque_xattr = geteuid() == 0 ? "trusted.overlay.opaque" : "user.overlay.opaque";
	ov->next_ino = img->tree->n_inodes + 1;
	ov->root = root;
	root->type = S_IFDIR;
	root->origin = tree_get(img->tree, FUSE_ROOT_ID);
	root->ino = FUSE_ROOT_ID;
	root->lookups = 1;
	root->fd = TAKE_FD(root_fd);
	root->upper_ino = st.st_ino;
	root->opaque = upper_is_opaque(ov, root->fd);
	root->merged = root->opaque ? NULL : root->origin;
	int r = map_put(&ov->by_upper, st.st_ino, (uintptr_t)root);
	if (r == 0)
		r = map_put(&ov->inos, st.st_ino, FUSE_ROOT_ID);
	if (r == 0)
		r = state_open(ov, state_fd, resume);
	if (r == 0)
		r = node_take_id(ov, root);
	if (r == 0 && resume)
		r = state_restore(ov);
	if (r < 0) {
		overlay_free(ov);
		return err_set(err, -r, "upper directory \"%s\": %s", upper_dir,
			       r == -EBADMSG ? "the state the previous server left is damaged" : strerror(-r));
	}
	ov->lock_fd = TAKE_FD(lock_fd);
	*ret = ov;
	return 0;
}

void overlay_set_session(struct overlay *ov, struct fuse_session *se)
{
	ov->se = se;
}

struct overlay *overlay_free(struct overlay *ov)
{
	if (!ov)
		return NULL;
	/* Nodes the kernel never forgot (it does not at unmount) go with their maps. */
	for (size_t i = 0; i < ov->by_upper.n_buckets; i++)
		for (struct map_entry *e = ov->by_upper.buckets[i]; e; e = e->next) {
			struct node *n = (struct node *)(uintptr_t)e->value;
			close(n->fd);
			free(n->name);
			free(n);
		}
	for (size_t i = 0; i < ov->by_image.n_buckets; i++)
		for (struct map_entry *e = ov->by_image.buckets[i]; e; e = e->next) {
			struct node *n = (struct node *)(uintptr_t)e->value;
			free(n->name);
			free(n);
		}
	map_clear(&ov->by_upper);
	map_clear(&ov->by_image);
	map_clear(&ov->inos);
	/* The records stay: a server that takes over reopens what the
	 * kernel still holds open. */
	for (uint64_t fh = 1; fh < handle_limit(ov); fh++)
		close_open(handle_is_dir(ov, fh), handle_detach(ov, fh));
	state_free(ov);
	if (ov->lock_fd >= 0)
		close(ov->lock_fd);
	pthread_mutex_destroy(&ov->lock);
	pthread_cond_destroy(&ov->copied);
	free(ov);
	return NULL;
}
