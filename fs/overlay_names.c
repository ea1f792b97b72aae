/* Listings of merged directories, and the namespace operations of the
 * writable mount: making, removing and renaming names in the overlayfs
 * upper format (whiteouts, opaque directories).  See overlay_internal.h
 * for the lock contract. */
#include "overlay_internal.h"

void listing_free(struct listing *l)
{
	for (size_t k = 0; l && k < l->n; k++)
		free(l->v[k].name);
	if (l)
		free(l->v);
	free(l);
}

static int listing_add(struct listing *l, const char *name, uint64_t ino, mode_t type)
{
	if (grow_array((void **)&l->v, &l->allocated, l->n + 1, sizeof(*l->v)) < 0)
		return -ENOMEM;
	if (!(l->v[l->n].name = strdup(name)))
		return -ENOMEM;
	l->v[l->n].ino = ino;
	l->v[l->n].type = type;
	l->n++;
	return 0;
}

static int compare_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void name_set_clear(struct name_set *s)
{
	for (size_t k = 0; k < s->n; k++)
		free(s->v[k]);
	free(s->v);
}

int list_dir(struct overlay *ov, struct node *n, struct listing **ret)
{
	struct listing *l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	struct name_set upper = { 0 };
	const struct tree_inode *merged = node_merged(ov, n);
	int r = 0;
	if (n->fd >= 0) {
		int fd = openat(n->fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
		if (!d) {
			r = -errno;
			if (fd >= 0)
				close(fd);
			goto fail;
		}
		struct dirent *de;
		while ((errno = 0, de = readdir(d))) {
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
				continue;
			mode_t type = DTTOIF(de->d_type);
			struct stat st;
			if (de->d_type == DT_CHR || de->d_type == DT_UNKNOWN) {
				if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
					continue;
				type = st.st_mode & S_IFMT;
			}
			char *name = strdup(de->d_name);
			if (!name || grow_array((void **)&upper.v, &upper.allocated, upper.n + 1, sizeof(char *)) < 0) {
				free(name);
				r = -ENOMEM;
				break;
			}
			upper.v[upper.n++] = name;
			if ((de->d_type == DT_CHR || de->d_type == DT_UNKNOWN) && is_whiteout(&st))
				continue;
			const struct tree_inode *below =
			    S_ISDIR(type) && merged ? tree_lookup(merged, de->d_name) : NULL;
			uint64_t ino = ino_for_upper(ov, de->d_ino, below && S_ISDIR(below->mode) ? below->ino : 0);
			if ((r = listing_add(l, de->d_name, ino, type)) < 0)
				break;
		}
		if (r == 0 && errno)
			r = -errno;
		closedir(d);
		if (r < 0)
			goto fail;
		if (upper.n)
			qsort(upper.v, upper.n, sizeof(char *), compare_names);
	}
	for (size_t k = 0; merged && k < merged->n_children; k++) {
		const struct tree_dirent *c = &merged->children[k];
		if (upper.n && bsearch(&c->name, upper.v, upper.n, sizeof(char *), compare_names))
			continue;
		if ((r = listing_add(l, c->name, c->inode->ino, c->inode->mode & S_IFMT)) < 0)
			goto fail;
	}
	name_set_clear(&upper);
	*ret = l;
	return 0;
fail:
	name_set_clear(&upper);
	listing_free(l);
	return r;
}

static int dir_is_empty(struct overlay *ov, struct node *n)
{
	struct listing *l;
	int r = list_dir(ov, n, &l);
	if (r < 0)
		return r;
	r = l->n == 0 ? 0 : -ENOTEMPTY;
	listing_free(l);
	return r;
}

/* A directory about to be removed or replaced may hold whiteouts only. */
static int remove_whiteouts(int parent_fd, const char *name)
{
	int fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	int r = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		struct stat st;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && is_whiteout(&st) &&
		    unlinkat(dirfd(d), de->d_name, 0) < 0) {
			r = -errno;
			break;
		}
	}
	closedir(d);
	return r;
}

static void temp_name(struct overlay *ov, char *buf, size_t size)
{
	snprintf(buf, size, ".imgfs-tmp-%d-%" PRIu64, (int)getpid(), ov->tmp_counter++);
}

static int make_whiteout(int dirfd, const char *name)
{
	return mknodat(dirfd, name, S_IFCHR | 0, makedev(0, 0)) < 0 ? -errno : 0;
}

int make_entry(struct overlay *ov, struct node *parent, const char *name, make_fn *make, struct make_request *m,
	       struct node **ret)
{
	if (!parent)
		return -ESTALE;
	if (!S_ISDIR(parent->type))
		return -ENOTDIR;
	if (strlen(name) > NAME_MAX)
		return -ENAMETOOLONG;
	wait_name_copied(ov, parent, name);
	int r = copy_up(ov, parent, true);
	if (r < 0)
		return r;
	struct stat st;
	bool whiteout = false;
	if (fstatat(parent->fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		if (!is_whiteout(&st))
			return -EEXIST;
		whiteout = true;
	} else if (errno != ENOENT) {
		return -errno;
	} else if (image_child(ov, parent, name)) {
		return -EEXIST;
	}
	char tmp[64] = "";
	if (whiteout)
		temp_name(ov, tmp, sizeof(tmp));
	const char *target = whiteout ? tmp : name;
	if ((r = make(parent->fd, target, m)) < 0)
		return r;
	if (m->uid != (uid_t)-1) {
		struct stat pst;
		/* In a setgid directory the new object already has the group it needs. */
		gid_t gid = fstat(parent->fd, &pst) == 0 && (pst.st_mode & S_ISGID) ? (gid_t)-1 : m->gid;
		if (geteuid() == 0 && fchownat(parent->fd, target, m->uid, gid, AT_SYMLINK_NOFOLLOW) < 0)
			r = -errno;
	}
	if (r == 0 && whiteout) {
		bool dir = S_ISDIR(m->mode);
		if (dir) {
			_cleanup_close_ int fd = openat(parent->fd, tmp, O_PATH | O_NOFOLLOW | O_CLOEXEC);
			r = fd < 0 ? -errno : set_opaque(ov, fd);
		}
		/* rename() cannot put a directory over a device: exchange them. */
		if (r == 0 && renameat2(parent->fd, tmp, parent->fd, name, dir ? RENAME_EXCHANGE : 0) < 0)
			r = -errno;
		if (r == 0 && dir && unlinkat(parent->fd, tmp, 0) < 0)
			r = -errno;
	}
	if (r < 0) {
		unlinkat(parent->fd, target, S_ISDIR(m->mode) ? AT_REMOVEDIR : 0);
		return r;
	}
	return resolve(ov, parent, name, ret);
}

int make_dir(int dirfd, const char *name, struct make_request *m)
{
	return mkdirat(dirfd, name, m->mode & 07777) < 0 ? -errno : 0;
}

int make_node(int dirfd, const char *name, struct make_request *m)
{
	return mknodat(dirfd, name, m->mode, m->rdev) < 0 ? -errno : 0;
}

int make_symlink(int dirfd, const char *name, struct make_request *m)
{
	return symlinkat(m->link, dirfd, name) < 0 ? -errno : 0;
}

int make_link(int dirfd, const char *name, struct make_request *m)
{
	return link_fd_at(m->fd, dirfd, name);
}

int make_file(int dirfd, const char *name, struct make_request *m)
{
	int flags = (m->flags & ~(O_TRUNC | O_NOCTTY)) | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
	m->fd = openat(dirfd, name, flags, m->mode & 07777);
	return m->fd < 0 ? -errno : 0;
}

int remove_entry(struct overlay *ov, struct node *parent, const char *name, bool dir)
{
	struct node *n;
	if (!parent)
		return -ESTALE;
	wait_name_copied(ov, parent, name);
	int r = resolve(ov, parent, name, &n);
	if (r < 0)
		return r;
	if (dir && !S_ISDIR(n->type))
		r = -ENOTDIR;
	else if (!dir && S_ISDIR(n->type))
		r = -EISDIR;
	else if (dir)
		r = dir_is_empty(ov, n);
	node_unref(ov, n);
	if (r < 0 || (r = copy_up(ov, parent, true)) < 0)
		return r;
	bool hides_image = image_child(ov, parent, name) != NULL;
	struct stat st;
	bool in_upper = fstatat(parent->fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0;
	if (in_upper && dir && (r = remove_whiteouts(parent->fd, name)) < 0)
		return r;
	if (in_upper && hides_image && !dir) {
		/* One rename replaces the file by its whiteout. */
		char tmp[64];
		temp_name(ov, tmp, sizeof(tmp));
		if ((r = make_whiteout(parent->fd, tmp)) < 0)
			return r;
		if (renameat(parent->fd, tmp, parent->fd, name) < 0) {
			r = -errno;
			unlinkat(parent->fd, tmp, 0);
		}
		return r;
	}
	if (in_upper && unlinkat(parent->fd, name, dir ? AT_REMOVEDIR : 0) < 0)
		return -errno;
	return hides_image ? make_whiteout(parent->fd, name) : 0;
}

/* Gets n ready to appear as newparent/newname: copied up, and a directory
 * copied up whole when the image below it would not follow it there. */
static int prepare_move(struct overlay *ov, struct node *n, struct node *newparent, const char *newname)
{
	int r = copy_up_holding_lock(ov, n, true);
	if (r < 0 || !S_ISDIR(n->type))
		return r;
	const struct tree_inode *merged = node_merged(ov, n);
	if (merged && (r = copy_up_tree(ov, n->fd, merged)) < 0)
		return r;
	const struct tree_inode *below = image_child(ov, newparent, newname);
	if ((merged || (below && S_ISDIR(below->mode))) && !n->opaque) {
		if ((r = set_opaque(ov, n->fd)) < 0)
			return r;
		n->opaque = true;
	}
	return 0;
}

int do_rename(struct overlay *ov, struct node *parent, const char *name, struct node *newparent, const char *newname,
	      unsigned flags)
{
	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE))
		return -EINVAL;
	if (!parent || !newparent)
		return -ESTALE;
	while (name_copying(ov, parent, name) || name_copying(ov, newparent, newname))
		pthread_cond_wait(&ov->copied, &ov->lock);
	struct node *src = NULL, *dst = NULL;
	int r = resolve(ov, parent, name, &src);
	if (r < 0)
		return r;
	r = resolve(ov, newparent, newname, &dst);
	if (r == -ENOENT)
		r = (flags & RENAME_EXCHANGE) ? -ENOENT : 0;
	else if (r == 0 && (flags & RENAME_NOREPLACE))
		r = -EEXIST;
	if (r < 0 || src == dst)
		goto out;
	if (dst && !(flags & RENAME_EXCHANGE)) {
		if (S_ISDIR(src->type) && !S_ISDIR(dst->type))
			r = -ENOTDIR;
		else if (!S_ISDIR(src->type) && S_ISDIR(dst->type))
			r = -EISDIR;
		else if (S_ISDIR(dst->type))
			r = dir_is_empty(ov, dst);
		if (r < 0)
			goto out;
	}
	if ((r = copy_up(ov, parent, true)) < 0 || (r = copy_up(ov, newparent, true)) < 0)
		goto out;
	if ((r = prepare_move(ov, src, newparent, newname)) < 0)
		goto out;
	if ((flags & RENAME_EXCHANGE) && (r = prepare_move(ov, dst, parent, name)) < 0)
		goto out;
	if (flags & RENAME_EXCHANGE) {
		if (renameat2(parent->fd, name, newparent->fd, newname, RENAME_EXCHANGE) < 0)
			r = -errno;
	} else {
		struct stat st;
		if (dst && S_ISDIR(dst->type) && (r = remove_whiteouts(newparent->fd, newname)) < 0)
			goto out;
		bool dst_whiteout = fstatat(newparent->fd, newname, &st, AT_SYMLINK_NOFOLLOW) == 0 && is_whiteout(&st);
		if (dst_whiteout && S_ISDIR(src->type) && unlinkat(newparent->fd, newname, 0) < 0) {
			r = -errno;
			goto out;
		}
		bool leave_whiteout = image_child(ov, parent, name) != NULL;
		if (renameat2(parent->fd, name, newparent->fd, newname, leave_whiteout ? RENAME_WHITEOUT : 0) < 0) {
			if (!leave_whiteout || (errno != EINVAL && errno != EPERM))
				r = -errno;
			else if (renameat(parent->fd, name, newparent->fd, newname) < 0)
				r = -errno;
			else
				r = make_whiteout(parent->fd, name);
		}
	}
	if (r < 0)
		goto out;
	if ((r = node_rename_to(ov, src, newparent, newname)) == 0 && (flags & RENAME_EXCHANGE))
		r = node_rename_to(ov, dst, parent, name);
	if (S_ISDIR(src->type) || (dst && S_ISDIR(dst->type)))
		ov->gen++;
out:
	if (dst && dst != src)
		node_unref(ov, dst);
	node_unref(ov, src);
	return r;
}
