/* The writable mount.  A node is one inode the kernel knows: an object of
 * UPPERDIR (held by an O_PATH descriptor, so renames never lose it) or an
 * object of the image that has not been copied up yet.  Everything written
 * into UPPERDIR goes through *at() calls relative to those descriptors with
 * O_NOFOLLOW, so a symlink in the upper layer is never followed out of it. */
#include "overlay.h"

#include <dirent.h>
#include <inttypes.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

/* Only this mount changes UPPERDIR (it holds the lock), and every change
 * passes through the kernel, which updates its caches itself. */
#define CACHE_TIMEOUT (24.0 * 3600)

/* ---- a small u64-keyed hash table ---------------------------------------- */

struct map_entry {
	uint64_t key, value;
	struct map_entry *next;
};

struct map {
	struct map_entry **buckets;
	size_t n_buckets, count;
};

static size_t map_slot(const struct map *m, uint64_t key)
{
	key ^= key >> 33;
	key *= 0xff51afd7ed558ccdULL;
	key ^= key >> 33;
	return (size_t)(key & (m->n_buckets - 1));
}

static struct map_entry *map_find(const struct map *m, uint64_t key)
{
	if (!m->n_buckets)
		return NULL;
	for (struct map_entry *e = m->buckets[map_slot(m, key)]; e; e = e->next)
		if (e->key == key)
			return e;
	return NULL;
}

static bool map_get(const struct map *m, uint64_t key, uint64_t *ret_value)
{
	struct map_entry *e = map_find(m, key);
	if (e)
		*ret_value = e->value;
	return e != NULL;
}

static int map_put(struct map *m, uint64_t key, uint64_t value)
{
	struct map_entry *e = map_find(m, key);
	if (e) {
		e->value = value;
		return 0;
	}
	if (m->count >= m->n_buckets) {
		size_t n = m->n_buckets ? m->n_buckets * 2 : 256;
		struct map_entry **b = calloc(n, sizeof(*b));
		if (!b)
			return -ENOMEM;
		struct map old = *m;
		m->buckets = b;
		m->n_buckets = n;
		for (size_t i = 0; i < old.n_buckets; i++)
			for (struct map_entry *x = old.buckets[i], *next; x; x = next) {
				next = x->next;
				size_t s = map_slot(m, x->key);
				x->next = b[s];
				b[s] = x;
			}
		free(old.buckets);
	}
	if (!(e = malloc(sizeof(*e))))
		return -ENOMEM;
	size_t s = map_slot(m, key);
	*e = (struct map_entry){ key, value, m->buckets[s] };
	m->buckets[s] = e;
	m->count++;
	return 0;
}

/* Removes key only while it still maps to value. */
static void map_del(struct map *m, uint64_t key, uint64_t value)
{
	if (!m->n_buckets)
		return;
	for (struct map_entry **p = &m->buckets[map_slot(m, key)]; *p; p = &(*p)->next)
		if ((*p)->key == key) {
			struct map_entry *e = *p;
			if (e->value != value)
				return;
			*p = e->next;
			free(e);
			m->count--;
			return;
		}
}

static void map_clear(struct map *m)
{
	for (size_t i = 0; i < m->n_buckets; i++)
		for (struct map_entry *e = m->buckets[i], *next; e; e = next) {
			next = e->next;
			free(e);
		}
	free(m->buckets);
	*m = (struct map){ 0 };
}

/* ---- nodes ---------------------------------------------------------------- */

struct node {
	struct node *parent; /* holds a count in parent->children; NULL for the root */
	char *name;          /* where the node was last seen: a directory's only name */
	/* The image object shown while nothing is in UPPERDIR, NULL for objects
	 * born in UPPERDIR. */
	const struct tree_inode *origin;
	/* Directories: the image directory merged into the listing, recomputed
	 * when merged_gen falls behind the overlay's (a directory moved). */
	const struct tree_inode *merged;
	unsigned merged_gen;
	bool opaque;
	int fd; /* O_PATH in UPPERDIR, -1 before copy-up */
	uint64_t upper_ino;
	uint64_t ino; /* st_ino: stable for the life of the mount, across copy-up */
	mode_t type;
	uint64_t lookups, children;
};

struct overlay {
	struct image *img;
	pthread_mutex_t lock;
	struct node *root;
	int lock_fd; /* holds the flock on UPPERDIR */
	const char *opaque_xattr;
	struct map by_upper; /* upper st_ino -> node */
	struct map by_image; /* image ino -> node not copied up yet */
	/* upper st_ino -> reported st_ino, kept for the life of the mount so
	 * that a copied-up file keeps the number it had in the image. */
	struct map inos;
	uint64_t next_ino;
	unsigned gen;
	uint64_t tmp_counter;
};

struct handle {
	int fd;                           /* upper file, -1 when reading the image */
	const struct tree_inode *image;   /* read from here when fd < 0 */
};

static struct overlay *overlay_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static struct node *node_of(struct overlay *ov, fuse_ino_t ino)
{
	return ino == FUSE_ROOT_ID ? ov->root : (struct node *)(uintptr_t)ino;
}

static fuse_ino_t nodeid_of(struct overlay *ov, struct node *n)
{
	return n == ov->root ? FUSE_ROOT_ID : (fuse_ino_t)(uintptr_t)n;
}

static bool is_whiteout(const struct stat *st)
{
	return S_ISCHR(st->st_mode) && st->st_rdev == makedev(0, 0);
}

/* The path through which the kernel reaches the object behind an O_PATH
 * descriptor, for the calls that have no *at() form (xattrs, reopen). */
#define PROC_FD_PATH(buf, fd) (snprintf((buf), sizeof(buf), "/proc/self/fd/%d", (fd)), (buf))

static bool is_overlay_xattr(const char *name)
{
	return str_has_prefix(name, "trusted.overlay.") || str_has_prefix(name, "user.overlay.");
}

static bool upper_is_opaque(struct overlay *ov, int fd)
{
	char path[64], value[4];
	ssize_t n = getxattr(PROC_FD_PATH(path, fd), ov->opaque_xattr, value, sizeof(value));
	return n == 1 && value[0] == 'y';
}

static int set_opaque(struct overlay *ov, int fd)
{
	char path[64];
	return setxattr(PROC_FD_PATH(path, fd), ov->opaque_xattr, "y", 1, 0) < 0 ? -errno : 0;
}

static const struct tree_inode *node_merged(struct overlay *ov, struct node *n)
{
	if (!S_ISDIR(n->type) || !n->parent || n->merged_gen == ov->gen)
		return n->merged;
	/* Not copied up: it cannot have moved, its image directory is its listing. */
	if (n->fd < 0)
		return n->merged = n->origin;
	const struct tree_inode *pm = node_merged(ov, n->parent);
	const struct tree_inode *m = pm && !n->opaque ? tree_lookup(pm, n->name) : NULL;
	n->merged = m && S_ISDIR(m->mode) ? m : NULL;
	n->merged_gen = ov->gen;
	return n->merged;
}

/* The image object at parent/name, visible unless UPPERDIR hides it. */
static const struct tree_inode *image_child(struct overlay *ov, struct node *parent, const char *name)
{
	const struct tree_inode *m = node_merged(ov, parent);
	return m ? tree_lookup(m, name) : NULL;
}

static uint64_t ino_for_upper(struct overlay *ov, uint64_t upper_ino, uint64_t preferred)
{
	uint64_t v;
	if (map_get(&ov->inos, upper_ino, &v))
		return v;
	v = preferred ? preferred : ov->next_ino++;
	/* Without memory to remember it the number is only less stable. */
	(void)map_put(&ov->inos, upper_ino, v);
	return v;
}

static void node_unref(struct overlay *ov, struct node *n);

static int node_rename_to(struct overlay *ov, struct node *n, struct node *parent, const char *name)
{
	if (n->parent == parent && n->name && strcmp(n->name, name) == 0)
		return 0;
	char *copy = strdup(name);
	if (!copy)
		return -ENOMEM;
	free(n->name);
	n->name = copy;
	if (n->parent != parent) {
		struct node *old = n->parent;
		parent->children++;
		n->parent = parent;
		old->children--;
		node_unref(ov, old);
	}
	n->merged_gen--; /* recompute the merge at the new place */
	return 0;
}

static struct node *node_new(struct node *parent, const char *name, mode_t type)
{
	struct node *n = calloc(1, sizeof(*n));
	if (!n || !(n->name = strdup(name))) {
		free(n);
		return NULL;
	}
	n->parent = parent;
	parent->children++;
	n->type = type;
	n->fd = -1;
	return n;
}

/* Frees nodes nobody references any more: not the kernel, not a child. */
static void node_unref(struct overlay *ov, struct node *n)
{
	while (n && n != ov->root && n->lookups == 0 && n->children == 0) {
		struct node *parent = n->parent;
		if (n->fd >= 0) {
			map_del(&ov->by_upper, n->upper_ino, (uintptr_t)n);
			struct stat st;
			/* Gone from disk: its number may come back for a new file. */
			if (fstat(n->fd, &st) == 0 && st.st_nlink == 0)
				map_del(&ov->inos, n->upper_ino, n->ino);
			close(n->fd);
		} else if (n->origin) {
			map_del(&ov->by_image, n->origin->ino, (uintptr_t)n);
		}
		free(n->name);
		free(n);
		parent->children--;
		n = parent;
	}
}

/* Makes n the node of an UPPERDIR object (fd, O_PATH, taken over). */
static int node_attach_upper(struct overlay *ov, struct node *n, int fd, const struct stat *st)
{
	int r = map_put(&ov->by_upper, st->st_ino, (uintptr_t)n);
	if (r < 0) {
		close(fd);
		return r;
	}
	if (n->origin)
		map_del(&ov->by_image, n->origin->ino, (uintptr_t)n);
	n->fd = fd;
	n->upper_ino = st->st_ino;
	n->opaque = S_ISDIR(st->st_mode) && upper_is_opaque(ov, fd);
	n->merged_gen = ov->gen - 1;
	return 0;
}

static int lookup_upper(struct overlay *ov, struct node *parent, const char *name, int fd, struct node **ret)
{
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	if (is_whiteout(&st)) {
		close(fd);
		return -ENOENT;
	}
	uint64_t v;
	if (map_get(&ov->by_upper, st.st_ino, &v)) {
		close(fd);
		struct node *n = (struct node *)(uintptr_t)v;
		int r = node_rename_to(ov, n, parent, name);
		if (r < 0)
			return r;
		*ret = n;
		return 0;
	}
	struct node *n = node_new(parent, name, st.st_mode & S_IFMT);
	if (!n) {
		close(fd);
		return -ENOMEM;
	}
	const struct tree_inode *below = S_ISDIR(st.st_mode) ? image_child(ov, parent, name) : NULL;
	if (below && !S_ISDIR(below->mode))
		below = NULL;
	n->ino = ino_for_upper(ov, st.st_ino, below ? below->ino : 0);
	int r = node_attach_upper(ov, n, fd, &st);
	if (r < 0) {
		node_unref(ov, n);
		return r;
	}
	*ret = n;
	return 0;
}

/* The node at parent/name in the merged view, with no lookup counted: the
 * caller counts one or hands it to node_unref(). */
static int resolve(struct overlay *ov, struct node *parent, const char *name, struct node **ret)
{
	if (!S_ISDIR(parent->type))
		return -ENOTDIR;
	if (strlen(name) > NAME_MAX)
		return -ENAMETOOLONG;
	if (parent->fd >= 0) {
		int fd = openat(parent->fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		if (fd >= 0)
			return lookup_upper(ov, parent, name, fd, ret);
		if (errno != ENOENT)
			return -errno;
	}
	const struct tree_inode *below = image_child(ov, parent, name);
	if (!below)
		return -ENOENT;
	uint64_t v;
	struct node *n;
	if (map_get(&ov->by_image, below->ino, &v)) {
		n = (struct node *)(uintptr_t)v;
		int r = node_rename_to(ov, n, parent, name);
		if (r < 0)
			return r;
	} else {
		if (!(n = node_new(parent, name, below->mode & S_IFMT)))
			return -ENOMEM;
		n->origin = below;
		n->merged = S_ISDIR(below->mode) ? below : NULL;
		n->merged_gen = ov->gen;
		n->ino = below->ino;
		if (map_put(&ov->by_image, below->ino, (uintptr_t)n) < 0) {
			node_unref(ov, n);
			return -ENOMEM;
		}
	}
	*ret = n;
	return 0;
}

static int node_stat(struct node *n, struct stat *st)
{
	if (n->fd >= 0) {
		if (fstat(n->fd, st) < 0)
			return -errno;
	} else {
		tree_stat(n->origin, st);
	}
	st->st_ino = n->ino;
	return 0;
}

/* ---- copy-up ---------------------------------------------------------------- */

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

static int link_fd_at(int fd, int dirfd, const char *name)
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

/* Gives n an upper copy (with its bytes unless with_data is false, for a
 * file about to be truncated), copying its parents first. */
static int copy_up(struct overlay *ov, struct node *n, bool with_data)
{
	if (n->fd >= 0)
		return 0;
	if (!n->parent || !n->origin)
		return -EIO;
	int r = copy_up(ov, n->parent, true);
	if (r < 0)
		return r;
	bool created = false;
	int fd = openat(n->parent->fd, n->name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT) {
		/* Otherwise a directory move already copied it: take that copy. */
		if ((r = copy_into(n->parent->fd, n->name, n->origin, with_data)) < 0)
			return r;
		created = true;
		fd = openat(n->parent->fd, n->name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	}
	if (fd < 0)
		return -errno;
	struct stat st;
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
	if (created && S_ISREG(n->origin->mode) && n->origin->nlink > 1)
		return link_image_siblings(ov, n, n->origin);
	return 0;
}

/* Copies every image object under the upper directory dirfd that merged
 * shows there, so the directory can move away from the image below it. */
static int copy_up_tree(struct overlay *ov, int dirfd, const struct tree_inode *merged)
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

/* ---- listings --------------------------------------------------------------- */

struct listing_entry {
	char *name;
	uint64_t ino;
	mode_t type;
};

struct listing {
	struct listing_entry *v;
	size_t n, allocated;
};

static void listing_free(struct listing *l)
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

struct name_set {
	char **v;
	size_t n, allocated;
};

static void name_set_clear(struct name_set *s)
{
	for (size_t k = 0; k < s->n; k++)
		free(s->v[k]);
	free(s->v);
}

/* The merged listing of directory n: its upper entries without whiteouts,
 * then the image's entries no upper entry hides. */
static int list_dir(struct overlay *ov, struct node *n, struct listing **ret)
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
			const struct tree_inode *below = S_ISDIR(type) && merged ? tree_lookup(merged, de->d_name) : NULL;
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

/* ---- creating and removing names ---------------------------------------------- */

static void temp_name(struct overlay *ov, char *buf, size_t size)
{
	snprintf(buf, size, ".imgfs-tmp-%d-%" PRIu64, (int)getpid(), ov->tmp_counter++);
}

static int make_whiteout(int dirfd, const char *name)
{
	return mknodat(dirfd, name, S_IFCHR | 0, makedev(0, 0)) < 0 ? -errno : 0;
}

struct make_request {
	uid_t uid;            /* owner of the new object; (uid_t)-1 keeps it */
	gid_t gid;
	mode_t mode;
	dev_t rdev;
	const char *link;     /* symlink target */
	int flags;            /* open flags for create */
	int fd;               /* create: the open file; link: the object to link */
};

typedef int make_fn(int dirfd, const char *name, struct make_request *m);

/* Makes parent/name with make(), owned by the caller.  Where a whiteout
 * hides an image entry of that name, the object is made under a temporary
 * name and swapped in, so the image entry never shows in between; a new
 * directory there is opaque. */
static int make_entry(struct overlay *ov, struct node *parent, const char *name, make_fn *make,
		      struct make_request *m, struct node **ret)
{
	if (!S_ISDIR(parent->type))
		return -ENOTDIR;
	if (strlen(name) > NAME_MAX)
		return -ENAMETOOLONG;
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

static int make_dir(int dirfd, const char *name, struct make_request *m)
{
	return mkdirat(dirfd, name, m->mode & 07777) < 0 ? -errno : 0;
}

static int make_node(int dirfd, const char *name, struct make_request *m)
{
	return mknodat(dirfd, name, m->mode, m->rdev) < 0 ? -errno : 0;
}

static int make_symlink(int dirfd, const char *name, struct make_request *m)
{
	return symlinkat(m->link, dirfd, name) < 0 ? -errno : 0;
}

static int make_link(int dirfd, const char *name, struct make_request *m)
{
	return link_fd_at(m->fd, dirfd, name);
}

static int make_file(int dirfd, const char *name, struct make_request *m)
{
	int flags = (m->flags & ~(O_TRUNC | O_NOCTTY)) | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
	m->fd = openat(dirfd, name, flags, m->mode & 07777);
	return m->fd < 0 ? -errno : 0;
}

/* Removes parent/name from the merged view: the upper object goes, and a
 * whiteout hides the image's entry of that name if there is one. */
static int remove_entry(struct overlay *ov, struct node *parent, const char *name, bool dir)
{
	struct node *n;
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
	int r = copy_up(ov, n, true);
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

static int do_rename(struct overlay *ov, struct node *parent, const char *name, struct node *newparent,
		     const char *newname, unsigned flags)
{
	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE))
		return -EINVAL;
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

/* ---- FUSE operations ------------------------------------------------------- */

/* Fills e for n and counts the lookup the reply hands to the kernel;
 * ov->lock is held.  On failure n is released instead. */
static int count_entry(struct overlay *ov, struct node *n, struct fuse_entry_param *e)
{
	*e = (struct fuse_entry_param){ 0 };
	int r = node_stat(n, &e->attr);
	if (r < 0) {
		node_unref(ov, n);
		return r;
	}
	n->lookups++;
	e->ino = nodeid_of(ov, n);
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
	conn->max_readahead = FUSE_IO_MAX;
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
	if (n == ov->root)
		return;
	n->lookups -= nlookup < n->lookups ? nlookup : n->lookups;
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
	int r = node_stat(node_of(ov, ino), &st);
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
	if ((to_set & FUSE_SET_ATTR_MODE) && !S_ISLNK(n->type) && chmod(PROC_FD_PATH(path, n->fd), attr->st_mode & 07777) < 0)
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
		if (h && h->fd >= 0 ? ftruncate(h->fd, attr->st_size) < 0 : truncate(PROC_FD_PATH(path, n->fd), attr->st_size) < 0)
			return -errno;
	}
	if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW))
		return set_times(n, h, attr, to_set);
	return 0;
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
	struct overlay *ov = overlay_of(req);
	struct node *n = node_of(ov, ino);
	const struct handle *h = fi ? (const struct handle *)(uintptr_t)fi->fh : NULL;
	struct stat st;
	pthread_mutex_lock(&ov->lock);
	int r = do_setattr(ov, n, h, attr, to_set);
	if (r == 0)
		r = node_stat(n, &st);
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

static void reply_open_handle(fuse_req_t req, struct fuse_file_info *fi, int fd, const struct tree_inode *image)
{
	struct handle *h = malloc(sizeof(*h));
	if (!h) {
		if (fd >= 0)
			close(fd);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	*h = (struct handle){ .fd = fd, .image = image };
	fi->fh = (uintptr_t)h;
	/* The image's bytes never change; an upper file's pages are only
	 * trusted until the next open. */
	fi->keep_cache = fd < 0;
	/* Locks are the kernel's own (no lock operations here): nothing to flush. */
	fi->noflush = 1;
	if (fuse_reply_open(req, fi) != 0) {
		if (fd >= 0)
			close(fd);
		free(h);
	}
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct overlay *ov = overlay_of(req);
	pthread_mutex_lock(&ov->lock);
	struct node *n = node_of(ov, ino);
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
		reply_open_handle(req, fi, fd, image);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi)
{
	struct overlay *ov = overlay_of(req);
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct make_request m = { .uid = ctx->uid, .gid = ctx->gid, .mode = S_IFREG | mode, .flags = fi->flags, .fd = -1 };
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
	if (!h) {
		close(m.fd);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	*h = (struct handle){ .fd = m.fd };
	fi->fh = (uintptr_t)h;
	fi->noflush = 1;
	if (fuse_reply_create(req, &e, fi) != 0) {
		close(m.fd);
		free(h);
	}
}

static struct handle *handle_of(struct fuse_file_info *fi)
{
	return (struct handle *)(uintptr_t)fi->fh;
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)ino;
	struct handle *h = handle_of(fi);
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
	struct handle *h = handle_of(fi);
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
	struct handle *h = handle_of(fi);
	if (h->fd < 0)
		fuse_reply_err(req, EBADF);
	else
		fuse_reply_err(req, fallocate(h->fd, mode, off, len) < 0 ? errno : 0);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	struct handle *h = handle_of(fi);
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
	struct handle *h = handle_of(fi);
	int r = 0;
	if (h->fd >= 0)
		r = (datasync ? fdatasync(h->fd) : fsync(h->fd)) < 0 ? errno : 0;
	fuse_reply_err(req, r);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	struct handle *h = handle_of(fi);
	if (h->fd >= 0)
		close(h->fd);
	free(h);
	fuse_reply_err(req, 0);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct overlay *ov = overlay_of(req);
	struct listing *l = NULL;
	pthread_mutex_lock(&ov->lock);
	struct node *n = node_of(ov, ino);
	int r = S_ISDIR(n->type) ? list_dir(ov, n, &l) : -ENOTDIR;
	pthread_mutex_unlock(&ov->lock);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	fi->fh = (uintptr_t)l;
	if (fuse_reply_open(req, fi) != 0)
		listing_free(l);
}

/* Offsets: 1 and 2 follow "." and "..", k + 3 follows entry k. */
static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)ino;
	const struct listing *l = (const struct listing *)(uintptr_t)fi->fh;
	if (size > FUSE_IO_MAX)
		size = FUSE_IO_MAX;
	_cleanup_free_ char *buf = malloc(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	size_t used = 0;
	for (off_t pos = off < 0 ? 0 : off; (size_t)pos < l->n + 2; pos++) {
		struct stat st = { .st_mode = S_IFDIR };
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
	listing_free((struct listing *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	(void)fi;
	struct overlay *ov = overlay_of(req);
	pthread_mutex_lock(&ov->lock);
	struct node *n = node_of(ov, ino);
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

/* ---- set-up ----------------------------------------------------------------- */

int overlay_open(struct image *img, const char *upper_dir, struct overlay **ret, struct err *err)
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
	if (r < 0) {
		overlay_free(ov);
		return err_set(err, -r, "upper directory \"%s\": out of memory", upper_dir);
	}
	ov->lock_fd = TAKE_FD(lock_fd);
	*ret = ov;
	return 0;
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
	if (ov->lock_fd >= 0)
		close(ov->lock_fd);
	pthread_mutex_destroy(&ov->lock);
	free(ov);
	return NULL;
}
