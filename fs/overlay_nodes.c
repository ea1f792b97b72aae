/* The node table of the writable mount: nodes by kernel inode, by upper
 * inode and by image inode, and the lookups that fill it.  See
 * overlay_internal.h for the lock contract. */
#include "overlay_internal.h"

bool is_overlay_xattr(const char *name)
{
	return str_has_prefix(name, "trusted.overlay.") || str_has_prefix(name, "user.overlay.");
}

int set_opaque(struct overlay *ov, int fd)
{
	char path[64];
	return setxattr(PROC_FD_PATH(path, fd), ov->opaque_xattr, "y", 1, 0) < 0 ? -errno : 0;
}

const struct tree_inode *node_merged(struct overlay *ov, struct node *n)
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

const struct tree_inode *image_child(struct overlay *ov, struct node *parent, const char *name)
{
	const struct tree_inode *m = node_merged(ov, parent);
	return m ? tree_lookup(m, name) : NULL;
}

uint64_t ino_for_upper(struct overlay *ov, uint64_t upper_ino, uint64_t preferred)
{
	uint64_t v;
	if (map_get(&ov->inos, upper_ino, &v))
		return v;
	v = preferred ? preferred : ov->next_ino++;
	/* Without memory to remember it the number is only less stable. */
	if (map_put(&ov->inos, upper_ino, v) == 0)
		state_note_ino(ov, upper_ino, v);
	return v;
}

int node_rename_to(struct overlay *ov, struct node *n, struct node *parent, const char *name)
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
	node_save(ov, n);
	return 0;
}

static struct node *node_new(struct overlay *ov, struct node *parent, const char *name, mode_t type)
{
	struct node *n = calloc(1, sizeof(*n));
	if (!n || !(n->name = strdup(name))) {
		free(n);
		return NULL;
	}
	n->type = type;
	n->fd = -1;
	n->parent = parent;
	if (node_take_id(ov, n) < 0) {
		free(n->name);
		free(n);
		return NULL;
	}
	parent->children++;
	return n;
}

void node_unref(struct overlay *ov, struct node *n)
{
	while (n && n != ov->root && n->lookups == 0 && n->children == 0) {
		struct node *parent = n->parent;
		if (n->fd >= 0) {
			map_del(&ov->by_upper, n->upper_ino, (uintptr_t)n);
			struct stat st;
			/* Gone from disk: its number may come back for a new file. */
			if (fstat(n->fd, &st) == 0 && st.st_nlink == 0) {
				map_del(&ov->inos, n->upper_ino, n->ino);
				state_note_ino(ov, n->upper_ino, 0);
			}
			close(n->fd);
		} else if (n->origin) {
			map_del(&ov->by_image, n->origin->ino, (uintptr_t)n);
		}
		node_drop_id(ov, n);
		free(n->name);
		free(n);
		parent->children--;
		n = parent;
	}
}

int node_attach_upper(struct overlay *ov, struct node *n, int fd, const struct stat *st)
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
	node_save(ov, n);
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
	struct node *n = node_new(ov, parent, name, st.st_mode & S_IFMT);
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

int resolve(struct overlay *ov, struct node *parent, const char *name, struct node **ret)
{
	if (!parent)
		return -ESTALE;
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
		if (!(n = node_new(ov, parent, name, below->mode & S_IFMT)))
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

int node_stat(struct overlay *ov, struct node *n, struct stat *st)
{
	if (!n)
		return -ESTALE;
	if (n->fd >= 0) {
		if (fstat(n->fd, st) < 0)
			return -errno;
		/* As overlayfs: counting the subdirectories of both layers is
		 * not worth it, and 1 is what find and its kind take for "not
		 * known". */
		if (S_ISDIR(n->type) && !n->opaque && node_merged(ov, n))
			st->st_nlink = 1;
	} else {
		tree_stat(n->origin, st);
	}
	st->st_ino = n->ino;
	return 0;
}
