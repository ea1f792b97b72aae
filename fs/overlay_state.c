/* The writable mount's node ids and file handles, kept where a successor
 * server finds them (takeover.h).
 *
 * The kernel names a node by the id this mount gave it and an open file by
 * its handle; a server that takes the mount over must answer to the same
 * ones.  Ids and handles are slots of tables in a shared memory file that
 * the keeper holds: every change to a node the kernel may know (its
 * name, parent, lookups, numbers, upper copy) is stored in its record
 * under ov->lock as it happens, so that the records are right at whatever
 * moment the server dies.  A successor rebuilds the nodes from them and
 * reopens their upper copies by name, from the root down; open files are
 * reopened on their first use. */
#include "overlay_internal.h"

#include <sys/mman.h>

#define STATE_MAGIC 0x31736667676d69ULL /* "imgfs1" */
#define MAX_NODES (1u << 22)
#define MAX_HANDLES (1u << 20)
#define MAX_INO_LOG (1u << 20)

enum { RECORD_UPPER = 1 };

struct node_record {
	uint64_t parent, ino, origin, lookups, upper_ino;
	uint32_t type, flags; /* type 0: a free slot */
	char name[NAME_MAX + 1];
};

struct handle_record {
	uint64_t node;
	int32_t flags;
	uint32_t kind;
};

/* upper st_ino -> reported st_ino, as ov->inos learns it; ino 0 forgets. */
struct ino_record {
	uint64_t upper_ino, ino;
};

struct state_header {
	uint64_t magic, next_ino, node_high, handle_high, ino_log_count;
};

#define HEADER_SIZE 4096
#define NODES_OFFSET HEADER_SIZE
#define HANDLES_OFFSET (NODES_OFFSET + (size_t)MAX_NODES * sizeof(struct node_record))
#define INO_LOG_OFFSET (HANDLES_OFFSET + (size_t)MAX_HANDLES * sizeof(struct handle_record))
#define STATE_SIZE (INO_LOG_OFFSET + (size_t)MAX_INO_LOG * sizeof(struct ino_record))

struct overlay_state {
	void *map;
	struct state_header *header;
	struct node_record *nodes;
	struct handle_record *handles;
	struct ino_record *ino_log;
	struct node **node_of; /* by id */
	void **open;           /* struct handle or struct listing, by handle */
	uint32_t *free_nodes, *free_handles;
	size_t n_free_nodes, n_free_handles, free_nodes_size, free_handles_size;
	pthread_mutex_t handles_lock;
	bool resumed;
};

/* ---- maps of node numbers -------------------------------------------------- */

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

bool map_get(const struct map *m, uint64_t key, uint64_t *ret_value)
{
	struct map_entry *e = map_find(m, key);
	if (e)
		*ret_value = e->value;
	return e != NULL;
}

int map_put(struct map *m, uint64_t key, uint64_t value)
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

void map_del(struct map *m, uint64_t key, uint64_t value)
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

void map_clear(struct map *m)
{
	for (size_t i = 0; i < m->n_buckets; i++)
		for (struct map_entry *e = m->buckets[i], *next; e; e = next) {
			next = e->next;
			free(e);
		}
	free(m->buckets);
	*m = (struct map){ 0 };
}

bool upper_is_opaque(struct overlay *ov, int fd)
{
	char path[64], value[4];
	ssize_t n = getxattr(PROC_FD_PATH(path, fd), ov->opaque_xattr, value, sizeof(value));
	return n == 1 && value[0] == 'y';
}

/* ---- node ids and handles -------------------------------------------------- */

static int push_free(uint32_t **v, size_t *n, size_t *size, uint32_t slot)
{
	int r = grow_array((void **)v, size, *n + 1, sizeof(**v));
	if (r == 0)
		(*v)[(*n)++] = slot;
	return r;
}

int state_open(struct overlay *ov, int fd, bool resume)
{
	struct overlay_state *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	ov->state = s;
	pthread_mutex_init(&s->handles_lock, NULL);
	if (!(s->map = map_state_file(fd, STATE_SIZE, resume)))
		return -errno;
	s->header = s->map;
	s->nodes = (struct node_record *)((char *)s->map + NODES_OFFSET);
	s->handles = (struct handle_record *)((char *)s->map + HANDLES_OFFSET);
	s->ino_log = (struct ino_record *)((char *)s->map + INO_LOG_OFFSET);
	s->node_of = calloc(MAX_NODES, sizeof(*s->node_of));
	s->open = calloc(MAX_HANDLES, sizeof(*s->open));
	if (!s->node_of || !s->open)
		return -ENOMEM;
	if (resume) {
		if (s->header->magic != STATE_MAGIC || s->header->node_high > MAX_NODES ||
		    s->header->handle_high > MAX_HANDLES || s->header->ino_log_count > MAX_INO_LOG)
			return -EBADMSG;
		s->resumed = true;
		return 0;
	}
	*s->header = (struct state_header){ .magic = STATE_MAGIC, .node_high = FUSE_ROOT_ID + 1, .handle_high = 1 };
	return 0;
}

void state_free(struct overlay *ov)
{
	struct overlay_state *s = ov->state;
	if (!s)
		return;
	if (s->map)
		munmap(s->map, STATE_SIZE);
	free(s->node_of);
	free(s->open);
	free(s->free_nodes);
	free(s->free_handles);
	pthread_mutex_destroy(&s->handles_lock);
	free(s);
	ov->state = NULL;
}

struct node *node_of(struct overlay *ov, fuse_ino_t id)
{
	return id < ov->state->header->node_high ? ov->state->node_of[id] : NULL;
}

int node_take_id(struct overlay *ov, struct node *n)
{
	struct overlay_state *s = ov->state;
	uint32_t id;
	if (n == ov->root)
		id = FUSE_ROOT_ID;
	else if (s->n_free_nodes)
		id = s->free_nodes[--s->n_free_nodes];
	else if (s->header->node_high < MAX_NODES)
		id = (uint32_t)s->header->node_high++;
	else
		return -ENFILE;
	n->id = id;
	s->node_of[id] = n;
	node_save(ov, n);
	return 0;
}

void node_save(struct overlay *ov, struct node *n)
{
	struct node_record *r = &ov->state->nodes[n->id];
	r->parent = n->parent ? n->parent->id : 0;
	r->ino = n->ino;
	r->origin = n->origin ? n->origin->ino : 0;
	r->lookups = n->lookups;
	r->upper_ino = n->upper_ino;
	r->flags = n->fd >= 0 ? RECORD_UPPER : 0;
	snprintf(r->name, sizeof(r->name), "%s", n->name ? n->name : "");
	r->type = n->type;
}

void node_drop_id(struct overlay *ov, struct node *n)
{
	struct overlay_state *s = ov->state;
	s->nodes[n->id].type = 0;
	s->node_of[n->id] = NULL;
	/* Without memory to remember the slot it is only not reused. */
	(void)push_free(&s->free_nodes, &s->n_free_nodes, &s->free_nodes_size, n->id);
}

void state_note_ino(struct overlay *ov, uint64_t upper_ino, uint64_t ino)
{
	struct state_header *h = ov->state->header;
	h->next_ino = ov->next_ino;
	/* Past the log's end a successor only numbers a forgotten copied-up
	 * file anew. */
	if (h->ino_log_count < MAX_INO_LOG)
		ov->state->ino_log[h->ino_log_count++] = (struct ino_record){ upper_ino, ino };
}

uint64_t handle_put(struct overlay *ov, fuse_ino_t node, int flags, unsigned kind, void *h)
{
	struct overlay_state *s = ov->state;
	uint64_t fh = 0;
	pthread_mutex_lock(&s->handles_lock);
	if (s->n_free_handles)
		fh = s->free_handles[--s->n_free_handles];
	else if (s->header->handle_high < MAX_HANDLES)
		fh = s->header->handle_high++;
	if (fh) {
		s->handles[fh] = (struct handle_record){ node, flags, kind };
		__atomic_store_n(&s->open[fh], h, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&s->handles_lock);
	return fh;
}

void *handle_peek(struct overlay *ov, uint64_t fh, bool dir, bool *ret_reopen)
{
	struct overlay_state *s = ov->state;
	*ret_reopen = false;
	if (fh == 0 || fh >= MAX_HANDLES)
		return NULL;
	void *h = __atomic_load_n(&s->open[fh], __ATOMIC_ACQUIRE);
	if (h)
		return dir == (s->handles[fh].kind == HANDLE_DIR) ? h : NULL;
	*ret_reopen = s->resumed && fh < s->header->handle_high && s->handles[fh].kind &&
		      (s->handles[fh].kind == HANDLE_DIR) == dir;
	return NULL;
}

bool handle_record(struct overlay *ov, uint64_t fh, fuse_ino_t *ret_node, int *ret_flags, unsigned *ret_kind)
{
	struct overlay_state *s = ov->state;
	pthread_mutex_lock(&s->handles_lock);
	bool found = fh < s->header->handle_high && s->handles[fh].kind;
	if (found) {
		*ret_node = s->handles[fh].node;
		*ret_flags = s->handles[fh].flags;
		*ret_kind = s->handles[fh].kind;
	}
	pthread_mutex_unlock(&s->handles_lock);
	return found;
}

void *handle_adopt(struct overlay *ov, uint64_t fh, void *h)
{
	struct overlay_state *s = ov->state;
	pthread_mutex_lock(&s->handles_lock);
	void *raced = s->open[fh];
	if (!raced)
		__atomic_store_n(&s->open[fh], h, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&s->handles_lock);
	return raced ? raced : h;
}

void *handle_detach(struct overlay *ov, uint64_t fh)
{
	void *h = ov->state->open[fh];
	ov->state->open[fh] = NULL;
	return h;
}

uint64_t handle_limit(struct overlay *ov)
{
	return ov->state && ov->state->open ? ov->state->header->handle_high : 0;
}

bool handle_is_dir(struct overlay *ov, uint64_t fh)
{
	return fh < MAX_HANDLES && ov->state->handles[fh].kind == HANDLE_DIR;
}

void *handle_take(struct overlay *ov, uint64_t fh)
{
	struct overlay_state *s = ov->state;
	if (fh == 0 || fh >= MAX_HANDLES)
		return NULL;
	pthread_mutex_lock(&s->handles_lock);
	void *h = s->open[fh];
	if (fh < s->header->handle_high && s->handles[fh].kind) {
		s->handles[fh].kind = 0;
		s->open[fh] = NULL;
		(void)push_free(&s->free_handles, &s->n_free_handles, &s->free_handles_size, (uint32_t)fh);
	}
	pthread_mutex_unlock(&s->handles_lock);
	return h;
}

/* ---- a successor's rebuild ------------------------------------------------- */

/* Opens n's upper copy by its name under its parent's; false when it is
 * not there any more (the server died in the middle of changing it). */
static bool reopen_upper(struct overlay *ov, struct node *n, unsigned depth)
{
	if (n->fd >= 0)
		return true;
	if (!n->parent || depth > 4096 || !reopen_upper(ov, n->parent, depth + 1))
		return false;
	int fd = openat(n->parent->fd, n->name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0 || st.st_ino != n->upper_ino) {
		if (fd >= 0)
			close(fd);
		return false;
	}
	n->fd = fd;
	n->opaque = S_ISDIR(st.st_mode) && upper_is_opaque(ov, fd);
	return true;
}

/* Whether n and every directory above it were found again. */
static bool usable(struct overlay *ov, const struct node *n, unsigned depth)
{
	if (n == ov->root)
		return true;
	if (!n->parent || depth > 4096 || !usable(ov, n->parent, depth + 1))
		return false;
	return (ov->state->nodes[n->id].flags & RECORD_UPPER) ? n->fd >= 0 : n->origin != NULL;
}

static void forget_node(struct overlay *ov, struct node *n)
{
	if (n->fd >= 0)
		close(n->fd);
	node_drop_id(ov, n);
	free(n->name);
	free(n);
}

int state_restore(struct overlay *ov)
{
	struct overlay_state *s = ov->state;
	struct state_header *h = s->header;
	const struct tree *tree = ov->img->tree;
	for (uint64_t id = FUSE_ROOT_ID + 1; id < h->node_high; id++) {
		struct node_record *r = &s->nodes[id];
		if (!r->type)
			continue;
		struct node *n = calloc(1, sizeof(*n));
		r->name[NAME_MAX] = '\0';
		if (!n || !(n->name = strdup(r->name))) {
			free(n);
			return -ENOMEM;
		}
		n->id = (uint32_t)id;
		n->type = r->type & S_IFMT;
		n->ino = r->ino;
		n->lookups = r->lookups;
		n->upper_ino = (r->flags & RECORD_UPPER) ? r->upper_ino : 0;
		n->origin = r->origin ? tree_get(tree, r->origin) : NULL;
		n->fd = -1;
		n->merged = S_ISDIR(n->type) ? n->origin : NULL;
		n->merged_gen = ov->gen - 1;
		s->node_of[id] = n;
	}
	for (uint64_t id = FUSE_ROOT_ID + 1; id < h->node_high; id++) {
		struct node *n = s->node_of[id];
		struct node *parent = n ? node_of(ov, s->nodes[id].parent) : NULL;
		if (n && parent && S_ISDIR(parent->type)) {
			n->parent = parent;
			parent->children++;
		}
	}
	for (uint64_t id = FUSE_ROOT_ID + 1; id < h->node_high; id++)
		if (s->node_of[id] && (s->nodes[id].flags & RECORD_UPPER))
			(void)reopen_upper(ov, s->node_of[id], 0);
	/* A node that cannot be found again is dropped: the kernel gets
	 * ESTALE for it, never another object's bytes. */
	_cleanup_free_ bool *keep = calloc(h->node_high, sizeof(*keep));
	if (!keep)
		return -ENOMEM;
	for (uint64_t id = FUSE_ROOT_ID + 1; id < h->node_high; id++)
		keep[id] = s->node_of[id] && usable(ov, s->node_of[id], 0);
	keep[FUSE_ROOT_ID] = true;
	for (uint64_t id = FUSE_ROOT_ID + 1; id < h->node_high; id++) {
		struct node *n = s->node_of[id];
		int r = 0;
		if (n && keep[id] && n->fd >= 0)
			r = map_put(&ov->by_upper, n->upper_ino, (uintptr_t)n);
		else if (n && keep[id])
			r = map_put(&ov->by_image, n->origin->ino, (uintptr_t)n);
		if (r < 0)
			return r;
	}
	for (uint64_t id = FUSE_ROOT_ID + 1; id < h->node_high; id++) {
		struct node *n = s->node_of[id];
		if (!n || keep[id])
			continue;
		if (n->parent && keep[n->parent->id])
			n->parent->children--;
		forget_node(ov, n);
	}
	for (uint64_t id = FUSE_ROOT_ID + 1; id < h->node_high; id++)
		if (!s->node_of[id] &&
		    push_free(&s->free_nodes, &s->n_free_nodes, &s->free_nodes_size, (uint32_t)id) < 0)
			return -ENOMEM;
	for (uint64_t i = 0; i < h->ino_log_count; i++) {
		const struct ino_record *e = &s->ino_log[i];
		uint64_t old;
		int r = e->ino ? map_put(&ov->inos, e->upper_ino, e->ino) : 0;
		if (!e->ino && map_get(&ov->inos, e->upper_ino, &old))
			map_del(&ov->inos, e->upper_ino, old);
		if (r < 0)
			return r;
	}
	if (h->next_ino > ov->next_ino)
		ov->next_ino = h->next_ino;
	for (uint64_t fh = 1; fh < h->handle_high; fh++)
		if (!s->handles[fh].kind &&
		    push_free(&s->free_handles, &s->n_free_handles, &s->free_handles_size, (uint32_t)fh) < 0)
			return -ENOMEM;
	return 0;
}
