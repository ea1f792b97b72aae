#include "tree.h"

#include <limits.h>

#include <sys/sysmacros.h>

#define WHITEOUT_PREFIX ".wh."
#define OPAQUE_MARKER ".wh..wh..opq"

struct builder {
	struct tree *tree;
	struct tree_inode *root;
};

static struct tree_inode *inode_new(struct builder *b, uint32_t mode)
{
	struct tree_inode *i = calloc(1, sizeof(*i));
	if (!i)
		return NULL;
	i->mode = mode;
	i->next_all = b->tree->all;
	b->tree->all = i;
	return i;
}

static void inode_set_from_entry(struct tree_inode *i, struct layer *l, const struct entry *e)
{
	static const uint32_t type_bits[] = {
		[ENTRY_REG] = S_IFREG, [ENTRY_DIR] = S_IFDIR, [ENTRY_SYMLINK] = S_IFLNK,
		[ENTRY_CHR] = S_IFCHR, [ENTRY_BLK] = S_IFBLK, [ENTRY_FIFO] = S_IFIFO,
	};
	i->mode = type_bits[e->type] | (e->mode & 07777);
	i->uid = e->uid;
	i->gid = e->gid;
	i->mtime_sec = e->mtime_sec;
	i->mtime_nsec = e->mtime_nsec;
	i->rdev_major = e->rdev_major;
	i->rdev_minor = e->rdev_minor;
	i->size = e->type == ENTRY_SYMLINK ? strlen(e->link) : e->type == ENTRY_REG ? e->size : 0;
	i->layer = l;
	i->entry = e;
}

static ssize_t child_index(const struct tree_inode *dir, const char *name, size_t *ret_insert)
{
	size_t lo = 0, hi = dir->n_children;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(name, dir->children[mid].name);
		if (c == 0)
			return (ssize_t)mid;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	if (ret_insert)
		*ret_insert = lo;
	return -1;
}

struct tree_inode *tree_lookup(const struct tree_inode *dir, const char *name)
{
	if (!S_ISDIR(dir->mode))
		return NULL;
	ssize_t i = child_index(dir, name, NULL);
	return i < 0 ? NULL : dir->children[i].inode;
}

static void unlink_inode(struct tree_inode *i)
{
	if (S_ISDIR(i->mode)) {
		for (size_t k = 0; k < i->n_children; k++) {
			unlink_inode(i->children[k].inode);
			free(i->children[k].name);
		}
		i->n_children = 0;
	}
	if (i->nlink > 0)
		i->nlink--;
}

static void remove_child(struct tree_inode *dir, size_t idx)
{
	unlink_inode(dir->children[idx].inode);
	free(dir->children[idx].name);
	memmove(&dir->children[idx], &dir->children[idx + 1], (dir->n_children - idx - 1) * sizeof(*dir->children));
	dir->n_children--;
}

static int add_child(struct tree_inode *dir, const char *name, size_t len, struct tree_inode *child)
{
	_cleanup_free_ char *copy = strndup(name, len);
	size_t at = 0;
	if (!copy)
		return -ENOMEM;
	if (child_index(dir, copy, &at) >= 0)
		return -EEXIST;
	if (grow_array((void **)&dir->children, &dir->allocated_children, dir->n_children + 1, sizeof(*dir->children)) <
	    0)
		return -ENOMEM;
	memmove(&dir->children[at + 1], &dir->children[at], (dir->n_children - at) * sizeof(*dir->children));
	dir->children[at] = (struct tree_dirent){ TAKE_PTR(copy), child };
	dir->n_children++;
	child->nlink++;
	if (S_ISDIR(child->mode))
		child->parent = dir;
	return 0;
}

/* Walks to the directory that holds the last component of path, creating
 * (or, over a non-directory, replacing) missing parents as plain 0755 dirs.
 * *ret_name points into path. */
static int walk_parent(struct builder *b, const char *path, bool create, struct tree_inode **ret_dir,
		       const char **ret_name)
{
	struct tree_inode *dir = b->root;
	const char *p = path;
	for (;;) {
		const char *slash = strchr(p, '/');
		if (!slash)
			break;
		_cleanup_free_ char *name = strndup(p, (size_t)(slash - p));
		if (!name)
			return -ENOMEM;
		size_t at;
		ssize_t idx = child_index(dir, name, &at);
		struct tree_inode *next = idx >= 0 ? dir->children[idx].inode : NULL;
		if (!next || !S_ISDIR(next->mode)) {
			if (!create)
				return -ENOENT;
			if (next)
				remove_child(dir, (size_t)idx);
			next = inode_new(b, S_IFDIR | 0755);
			if (!next)
				return -ENOMEM;
			int r = add_child(dir, name, strlen(name), next);
			if (r < 0)
				return r;
		}
		dir = next;
		p = slash + 1;
	}
	*ret_dir = dir;
	*ret_name = p;
	return 0;
}

static struct tree_inode *find_path(struct builder *b, const char *path)
{
	if (!*path)
		return b->root;
	struct tree_inode *dir;
	const char *name;
	if (walk_parent(b, path, false, &dir, &name) < 0)
		return NULL;
	return tree_lookup(dir, name);
}

/* Whiteouts hide what the layers below put there, so they are applied before
 * the layer's own entries, whatever their order in the tar. */
static int apply_whiteouts(struct builder *b, const struct layer *l)
{
	for (size_t k = 0; k < l->n_entries; k++) {
		const struct entry *e = &l->entries[k];
		const char *base = path_base_name(e->path);
		if (!str_has_prefix(base, WHITEOUT_PREFIX))
			continue;
		size_t dir_len = (size_t)(base - e->path);
		_cleanup_free_ char *dir_path = strndup(e->path, dir_len ? dir_len - 1 : 0);
		if (!dir_path)
			return -ENOMEM;
		struct tree_inode *dir = find_path(b, dir_path);
		if (!dir || !S_ISDIR(dir->mode))
			continue;
		if (strcmp(base, OPAQUE_MARKER) == 0) {
			while (dir->n_children > 0)
				remove_child(dir, dir->n_children - 1);
			continue;
		}
		if (str_has_prefix(base, ".wh..wh."))
			continue; /* aufs bookkeeping, not a whiteout */
		ssize_t idx = child_index(dir, base + strlen(WHITEOUT_PREFIX), NULL);
		if (idx >= 0)
			remove_child(dir, (size_t)idx);
	}
	return 0;
}

static int apply_entry(struct builder *b, struct layer *l, const struct entry *e, struct err *err)
{
	struct tree_inode *dir;
	const char *name;
	int r;

	if (!*e->path) {
		if (e->type == ENTRY_DIR)
			inode_set_from_entry(b->root, l, e);
		return 0;
	}
	r = walk_parent(b, e->path, true, &dir, &name);
	if (r < 0)
		return r;
	size_t at;
	ssize_t idx = child_index(dir, name, &at);
	struct tree_inode *existing = idx >= 0 ? dir->children[idx].inode : NULL;

	if (e->type == ENTRY_DIR && existing && S_ISDIR(existing->mode)) {
		/* A directory seen again: its metadata changes, its children stay. */
		inode_set_from_entry(existing, l, e);
		return 0;
	}
	struct tree_inode *inode;
	if (e->type == ENTRY_HARDLINK) {
		inode = find_path(b, e->link);
		if (!inode || S_ISDIR(inode->mode))
			return err_set(err, EINVAL, "hardlink \"%s\" points to \"%s\", which is %s", e->path, e->link,
				       inode ? "a directory" : "not in the image");
		if (inode == existing)
			return 0;
	} else {
		inode = inode_new(b, 0);
		if (!inode)
			return -ENOMEM;
		inode_set_from_entry(inode, l, e);
	}
	if (existing)
		remove_child(dir, (size_t)idx);
	return add_child(dir, name, strlen(name), inode);
}

struct inode_table {
	struct tree_inode **v;
	size_t n, allocated;
};

static int number_inodes(struct inode_table *table, struct tree *t, struct tree_inode *dir)
{
	uint32_t subdirs = 0;
	for (size_t k = 0; k < dir->n_children; k++) {
		struct tree_inode *c = dir->children[k].inode;
		if (S_ISDIR(c->mode))
			subdirs++;
		if (c->ino)
			continue; /* another name of a hardlinked inode */
		if (grow_array((void **)&table->v, &table->allocated, table->n + 1, sizeof(*table->v)) < 0)
			return -ENOMEM;
		c->ino = table->n;
		table->v[table->n++] = c;
		if (S_ISREG(c->mode))
			t->total_size += c->size;
		if (S_ISDIR(c->mode)) {
			int r = number_inodes(table, t, c);
			if (r < 0)
				return r;
		}
	}
	dir->nlink = 2 + subdirs;
	return 0;
}

static int builder_init(struct builder *b)
{
	*b = (struct builder){ 0 };
	b->tree = calloc(1, sizeof(*b->tree));
	if (!b->tree)
		return -ENOMEM;
	b->root = inode_new(b, S_IFDIR | 0755);
	if (!b->root) {
		b->tree = tree_free(b->tree);
		return -ENOMEM;
	}
	return 0;
}

static int layer_failed(struct builder *b, const struct layer *l, int r, struct err *err)
{
	if (err && err->code)
		err_wrap(err, "layer %s", l->digest);
	else
		err_set(err, r, "layer %s: %s", l->digest, strerror(-r));
	b->tree = tree_free(b->tree);
	return r;
}

/* Depth-first numbering: ino 1 is the root, as FUSE wants. */
static int builder_finish(struct builder *b, struct tree **ret)
{
	struct inode_table table = { 0 };
	if (grow_array((void **)&table.v, &table.allocated, 2, sizeof(*table.v)) < 0) {
		tree_free(b->tree);
		return -ENOMEM;
	}
	table.v[0] = NULL;
	table.v[1] = b->root;
	table.n = 2;
	b->root->ino = 1;
	b->root->parent = b->root;
	int r = number_inodes(&table, b->tree, b->root);
	b->tree->inodes = table.v;
	b->tree->n_inodes = table.n;
	if (r < 0) {
		tree_free(b->tree);
		return r;
	}
	*ret = b->tree;
	return 0;
}

int tree_build(struct layer *const *layers, size_t n, struct tree **ret, struct err *err)
{
	struct builder b;
	int r = builder_init(&b);
	if (r < 0)
		return r;
	for (size_t i = 0; i < n; i++) {
		struct layer *l = layers[i];
		r = apply_whiteouts(&b, l);
		for (size_t k = 0; r >= 0 && k < l->n_entries; k++) {
			const struct entry *e = &l->entries[k];
			if (str_has_prefix(path_base_name(e->path), WHITEOUT_PREFIX))
				continue;
			r = apply_entry(&b, l, e, err);
		}
		if (r < 0)
			return layer_failed(&b, l, r, err);
	}
	return builder_finish(&b, ret);
}

/* A whiteout as overlayfs keeps it: the hidden name as a 0/0 character
 * device, or the opaque mark on its directory. */
static int apply_lower_whiteout(struct builder *b, const struct entry *e)
{
	struct tree_inode *dir;
	const char *base;
	int r = walk_parent(b, e->path, true, &dir, &base);
	if (r < 0)
		return r;
	if (strcmp(base, OPAQUE_MARKER) == 0) {
		dir->opaque = true;
		return 0;
	}
	const char *hidden = base + strlen(WHITEOUT_PREFIX);
	if (str_has_prefix(base, ".wh..wh.") || !*hidden || strcmp(hidden, ".") == 0 || strcmp(hidden, "..") == 0)
		return 0; /* aufs bookkeeping, or no name at all */
	struct tree_inode *whiteout = inode_new(b, S_IFCHR);
	if (!whiteout)
		return -ENOMEM;
	ssize_t idx = child_index(dir, hidden, NULL);
	if (idx >= 0)
		remove_child(dir, (size_t)idx);
	return add_child(dir, hidden, strlen(hidden), whiteout);
}

int tree_build_lower(struct layer *l, struct tree **ret, struct err *err)
{
	struct builder b;
	int r = builder_init(&b);
	for (size_t k = 0; r >= 0 && k < l->n_entries; k++) {
		const struct entry *e = &l->entries[k];
		r = str_has_prefix(path_base_name(e->path), WHITEOUT_PREFIX) ? apply_lower_whiteout(&b, e)
									     : apply_entry(&b, l, e, err);
	}
	if (r < 0)
		return b.tree ? layer_failed(&b, l, r, err) : r;
	return builder_finish(&b, ret);
}

struct tree *tree_free(struct tree *t)
{
	if (!t)
		return NULL;
	for (struct tree_inode *i = t->all, *next; i; i = next) {
		next = i->next_all;
		for (size_t k = 0; k < i->n_children; k++)
			free(i->children[k].name);
		free(i->children);
		free(atomic_load(&i->read_map));
		free(i);
	}
	free(t->inodes);
	free(t);
	return NULL;
}

struct tree_inode *tree_get(const struct tree *t, uint64_t ino)
{
	if (ino == 0 || ino >= t->n_inodes)
		return NULL;
	return t->inodes[ino];
}

void tree_stat(const struct tree_inode *i, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = i->ino;
	st->st_mode = i->mode;
	st->st_nlink = i->nlink;
	st->st_uid = i->uid;
	st->st_gid = i->gid;
	st->st_size = (off_t)i->size;
	st->st_blksize = 4096;
	st->st_blocks = (blkcnt_t)((i->size + 511) / 512);
	st->st_rdev = makedev(i->rdev_major, i->rdev_minor);
	st->st_mtim.tv_sec = i->mtime_sec;
	st->st_mtim.tv_nsec = i->mtime_nsec;
	st->st_atim = st->st_mtim;
	st->st_ctim = st->st_mtim;
}

/* One clock for the process: a daemon serves one image. */
static atomic_uint read_clock;

static size_t read_map_words(const struct tree_inode *i)
{
	return (size_t)((i->size + (uint64_t)TREE_RECORD_BLOCK * 64 - 1) / ((uint64_t)TREE_RECORD_BLOCK * 64));
}

/* Notes blocks [off, off+size) as read; a map that cannot be allocated
 * only leaves the record saying "the whole file". */
static void note_read(const struct tree_inode *i, uint64_t off, size_t size)
{
	_Atomic(atomic_ullong *) *slot = (_Atomic(atomic_ullong *) *)&i->read_map;
	atomic_ullong *map = atomic_load(slot);
	if (!map) {
		atomic_ullong *fresh = calloc(read_map_words(i), sizeof(*fresh));
		if (!fresh)
			return;
		atomic_ullong *expected = NULL;
		if (atomic_compare_exchange_strong(slot, &expected, fresh)) {
			map = fresh;
		} else {
			free(fresh);
			map = expected;
		}
	}
	uint64_t end = off + size < i->size ? off + size : i->size;
	for (uint64_t b = off / TREE_RECORD_BLOCK; b * TREE_RECORD_BLOCK < end; b++)
		atomic_fetch_or(&map[b / 64], 1ull << (b % 64));
}

static struct tree_read_hooks read_hooks;

void tree_set_read_hooks(const struct tree_read_hooks *hooks)
{
	read_hooks = hooks ? *hooks : (struct tree_read_hooks){ 0 };
}

ssize_t tree_read(const struct tree_inode *i, void *buf, size_t size, uint64_t off)
{
	if (!S_ISREG(i->mode) || !i->entry)
		return -EINVAL;
	/* The one field of a built tree that changes: inodes are never const objects. */
	atomic_uint *stamp = (atomic_uint *)&i->first_read;
	bool first = false;
	if (atomic_load_explicit(stamp, memory_order_relaxed) == 0) {
		unsigned expected = 0;
		first = atomic_compare_exchange_strong(stamp, &expected, atomic_fetch_add(&read_clock, 1) + 1);
	}
	if (off >= i->size || size == 0)
		return 0;
	note_read(i, off, size);
	if (first && off == 0) {
		layer_first_read_begins(i->layer, i->entry);
		if (read_hooks.first_read)
			read_hooks.first_read(read_hooks.ctx, i);
	}
	ssize_t n = layer_read_entry(i->layer, i->entry, buf, size, off);
	if (first && off == 0 && n > 0) {
		layer_read_ahead_file(i->layer, i->entry);
		if (read_hooks.head)
			read_hooks.head(read_hooks.ctx, i, buf, (size_t)n);
	}
	/* Never hand out bytes we could not decode or verify. */
	return n < 0 ? -EIO : n;
}

#define MAX_LINKS 40

struct tree_inode *tree_resolve_path(const struct tree *t, const char *path)
{
	/* The directories walked so far, for "..". */
	struct tree_inode *dirs[256] = { tree_get(t, 1) };
	size_t depth = 1;
	char pending[PATH_MAX];
	unsigned links = 0;
	if (!dirs[0] || snprintf(pending, sizeof(pending), "%s", path) >= (int)sizeof(pending))
		return NULL;
	char *rest = pending;
	while (*rest) {
		char *name = rest;
		char *slash = strchr(rest, '/');
		rest = slash ? slash + 1 : rest + strlen(rest);
		if (slash)
			*slash = '\0';
		if (!*name || strcmp(name, ".") == 0)
			continue;
		if (strcmp(name, "..") == 0) {
			depth -= depth > 1;
			continue;
		}
		struct tree_inode *child = S_ISDIR(dirs[depth - 1]->mode) ? tree_lookup(dirs[depth - 1], name) : NULL;
		if (!child)
			return NULL;
		if (S_ISLNK(child->mode)) {
			const char *target = child->entry ? child->entry->link : NULL;
			char next[PATH_MAX];
			if (!target || ++links > MAX_LINKS ||
			    snprintf(next, sizeof(next), "%s/%s", target, rest) >= (int)sizeof(next))
				return NULL;
			if (target[0] == '/')
				depth = 1;
			memcpy(pending, next, strlen(next) + 1);
			rest = pending;
			continue;
		}
		if (!*rest)
			return child;
		if (!S_ISDIR(child->mode) || depth == ARRAY_SIZE(dirs))
			return NULL;
		dirs[depth++] = child;
	}
	return dirs[depth - 1];
}

#define OVERLAY_OPAQUE_XATTR "trusted.overlay.opaque"
static const struct xattr opaque_xattr = { (char *)OVERLAY_OPAQUE_XATTR, (void *)"y", 1 };

const struct xattr *tree_xattr(const struct tree_inode *i, const char *name)
{
	if (i->opaque && strcmp(name, OVERLAY_OPAQUE_XATTR) == 0)
		return &opaque_xattr;
	const struct entry *e = i->entry;
	for (uint32_t k = 0; e && k < e->n_xattrs; k++)
		if (strcmp(e->xattrs[k].name, name) == 0)
			return &e->xattrs[k];
	return NULL;
}

size_t tree_list_xattrs(const struct tree_inode *i, char *buf, size_t size)
{
	const struct entry *e = i->entry;
	size_t total = i->opaque ? sizeof(OVERLAY_OPAQUE_XATTR) : 0;
	for (uint32_t k = 0; e && k < e->n_xattrs; k++)
		total += strlen(e->xattrs[k].name) + 1;
	if (!buf || size < total)
		return total;
	size_t used = 0;
	if (i->opaque) {
		memcpy(buf, OVERLAY_OPAQUE_XATTR, sizeof(OVERLAY_OPAQUE_XATTR));
		used = sizeof(OVERLAY_OPAQUE_XATTR);
	}
	for (uint32_t k = 0; e && k < e->n_xattrs; k++) {
		size_t len = strlen(e->xattrs[k].name) + 1;
		memcpy(buf + used, e->xattrs[k].name, len);
		used += len;
	}
	return total;
}

struct tree_inode *tree_lookup_path(const struct tree *t, const char *path)
{
	struct tree_inode *cur = tree_get(t, 1);
	_cleanup_free_ char *copy = strdup(path);
	char *save = NULL;
	for (char *c = copy ? strtok_r(copy, "/", &save) : NULL; c && cur; c = strtok_r(NULL, "/", &save))
		cur = S_ISDIR(cur->mode) ? tree_lookup(cur, c) : NULL;
	return copy ? cur : NULL;
}

struct record_item {
	unsigned order;
	char *path;
	const struct tree_inode *inode;
};

static int by_order(const void *a, const void *b)
{
	const struct record_item *x = a, *y = b;
	return x->order < y->order ? -1 : x->order > y->order;
}

struct record {
	struct record_item *v;
	size_t n, allocated;
	bool failed;
};

static void collect_reads(struct tree_inode *dir, char *path, size_t len, struct record *rec)
{
	for (size_t k = 0; k < dir->n_children && !rec->failed; k++) {
		struct tree_inode *c = dir->children[k].inode;
		size_t name_len = strlen(dir->children[k].name);
		if (len + 1 + name_len >= PATH_MAX)
			continue;
		path[len] = '/';
		memcpy(path + len + 1, dir->children[k].name, name_len + 1);
		unsigned order = atomic_load(&c->first_read);
		if (S_ISDIR(c->mode) && c->parent == dir) {
			collect_reads(c, path, len + 1 + name_len, rec);
		} else if (S_ISREG(c->mode) && order) {
			/* A hardlinked file is listed once, under the first name found. */
			bool seen = false;
			for (size_t j = 0; j < rec->n && !seen; j++)
				seen = rec->v[j].order == order;
			if (seen)
				continue;
			char *copy = strdup(path);
			if (!copy || grow_array((void **)&rec->v, &rec->allocated, rec->n + 1, sizeof(*rec->v)) < 0) {
				free(copy);
				rec->failed = true;
				return;
			}
			rec->v[rec->n++] = (struct record_item){ order, copy, c };
		}
	}
	path[len] = '\0';
}

static bool block_read(const atomic_ullong *map, uint64_t b)
{
	return atomic_load_explicit(&map[b / 64], memory_order_relaxed) & (1ull << (b % 64));
}

/* Nothing when the whole file was read (or the map is missing). */
static void write_parts_read(const struct tree_inode *i, FILE *out)
{
	const atomic_ullong *map = atomic_load(&i->read_map);
	uint64_t blocks = (i->size + TREE_RECORD_BLOCK - 1) / TREE_RECORD_BLOCK, b = 0;
	while (map && b < blocks && block_read(map, b))
		b++;
	if (!map || b == blocks)
		return;
	const char *sep = "\t@";
	for (b = 0; b < blocks; b++) {
		if (!block_read(map, b))
			continue;
		uint64_t first = b;
		while (b + 1 < blocks && block_read(map, b + 1))
			b++;
		uint64_t off = first * TREE_RECORD_BLOCK, end = (b + 1) * TREE_RECORD_BLOCK;
		fprintf(out, "%s%llu+%llu", sep, (unsigned long long)off,
			(unsigned long long)((end < i->size ? end : i->size) - off));
		sep = ",";
	}
}

int tree_write_record(const struct tree *t, FILE *out)
{
	struct record rec = { 0 };
	char path[PATH_MAX] = "";
	collect_reads(tree_get(t, 1), path, 0, &rec);
	if (rec.n)
		qsort(rec.v, rec.n, sizeof(*rec.v), by_order);
	for (size_t i = 0; i < rec.n; i++) {
		fputs(rec.v[i].path, out);
		write_parts_read(rec.v[i].inode, out);
		fputc('\n', out);
		free(rec.v[i].path);
	}
	free(rec.v);
	return rec.failed ? -ENOMEM : (int)rec.n;
}
