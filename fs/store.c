/* The layer store's namespace over images opened with separate layers.
 *
 * Inodes: the store's own nodes (root, references, layer directories and
 * their info and blob files) are numbered from 1 in the order they appear;
 * the lower tree of the layer in slot k (k >= 1) is served as inodes
 * (k << 32) + tree inode.  Nodes are never removed while the store runs, so
 * the kernel's lookup counts need no bookkeeping.
 *
 * Locking: s->lock guards the node table and the slot table (both grow);
 * a reference's state is guarded by its own lock.  A reference is resolved
 * by a thread of its own, so that a lookup can stop waiting for it. */
#include "store.h"
#include "store_journal.h"
#include "takeover.h"

#include <json-c/json.h>
#include <sys/statvfs.h>
#include <time.h>

#include "layer.h"

#define TREE_SHIFT 32
/* A lookup that finds no layer asks the registry again what the reference
 * names (a tag moved, or the last try failed) at most this often. */
#define RETRY_SECONDS 5
#define CACHE_TIMEOUT (365.0 * 24 * 3600)

enum node_kind { NODE_ROOT, NODE_REF, NODE_LAYER, NODE_INFO, NODE_BLOB };

struct store_layer {
	struct store_image *image;
	size_t index; /* in image->img */
	fuse_ino_t dir_ino, info_ino, blob_ino;
	uint64_t slot;
	struct tree *tree; /* the layer alone, in overlayfs lower form */
	char *info;
	size_t info_len;
	atomic_uint *uses; /* in the journal, which outlives this server */
	atomic_uint own_uses;
	atomic_int blob_fd; /* the verified blob in the cache, -1 before its first open */
};

/* What one resolution of a reference named: an image and its layers. */
struct store_image {
	struct store_ref *ref;
	struct image *img;
	struct store_layer *layers;
	size_t n_layers;
	size_t n_served; /* n_layers, or 0 for an image whose layers failed */
};

/* A reference keeps every image it named while the store runs: podman may
 * use layers of each, under the same directory. */
struct store_ref {
	struct store *store;
	char *name; /* as looked up: base64 */
	char *text; /* the reference it encodes */
	fuse_ino_t ino;
	pthread_mutex_t lock;
	pthread_cond_t changed;
	bool resolving;
	bool thread_started;
	pthread_t thread;
	time_t last_attempt;
	struct store_image **images; /* oldest first */
	size_t n_images, allocated_images;
};

struct store_node {
	enum node_kind kind;
	void *object; /* struct store_ref or struct store_layer */
};

struct store {
	struct store_options opts;
	pthread_mutex_t lock;
	struct store_node *nodes; /* by ino; [0] unused, [1] the root */
	size_t n_nodes, allocated_nodes;
	struct store_layer **slots; /* [0] unused */
	size_t n_slots, allocated_slots;
	struct store_ref **refs;
	size_t n_refs, allocated_refs;
	struct store_journal *journal;
	bool replaying; /* a successor making the nodes the journal lists */
	char last_error[1024];
};

static struct store *store_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/* Adds a node under s->lock; 0 when out of memory. */
static fuse_ino_t node_add(struct store *s, enum node_kind kind, void *object)
{
	if (grow_array((void **)&s->nodes, &s->allocated_nodes, s->n_nodes + 1, sizeof(*s->nodes)) < 0 ||
	    s->n_nodes >= (1ull << TREE_SHIFT))
		return 0;
	s->nodes[s->n_nodes] = (struct store_node){ kind, object };
	return s->n_nodes++;
}

static bool node_get(struct store *s, fuse_ino_t ino, struct store_node *ret)
{
	pthread_mutex_lock(&s->lock);
	bool found = ino > 0 && ino < s->n_nodes;
	if (found)
		*ret = s->nodes[ino];
	pthread_mutex_unlock(&s->lock);
	return found;
}

/* The layer whose lower tree holds ino, and that tree inode; NULL for the
 * store's own nodes. */
static struct store_layer *tree_node(struct store *s, fuse_ino_t ino, struct tree_inode **ret)
{
	uint64_t slot = (uint64_t)ino >> TREE_SHIFT;
	pthread_mutex_lock(&s->lock);
	struct store_layer *l = slot > 0 && slot < s->n_slots ? s->slots[slot] : NULL;
	pthread_mutex_unlock(&s->lock);
	*ret = l ? tree_get(l->tree, ino & ((1ull << TREE_SHIFT) - 1)) : NULL;
	return *ret ? l : NULL;
}

static struct served_tree served_layer(const struct store_layer *l)
{
	return (struct served_tree){ l->tree, l->slot << TREE_SHIFT, l->dir_ino };
}

static void store_image_free(struct store_image *si)
{
	if (!si)
		return;
	for (size_t i = 0; i < si->n_layers; i++) {
		tree_free(si->layers[i].tree);
		free(si->layers[i].info);
		if (si->layers[i].blob_fd >= 0)
			close(si->layers[i].blob_fd);
	}
	free(si->layers);
	image_free(si->img);
	free(si);
}

static void ref_free(struct store_ref *r)
{
	pthread_mutex_lock(&r->lock);
	bool join = r->thread_started;
	pthread_mutex_unlock(&r->lock);
	if (join)
		pthread_join(r->thread, NULL);
	for (size_t i = 0; i < r->n_images; i++)
		store_image_free(r->images[i]);
	free(r->images);
	pthread_cond_destroy(&r->changed);
	pthread_mutex_destroy(&r->lock);
	free(r->name);
	free(r->text);
	free(r);
}

/* A store left to its resolution threads at exit stays reachable: it is
 * not lost, only not waited for. */
static struct store *left_running;

struct store *store_free(struct store *s)
{
	if (!s)
		return NULL;
	for (size_t i = 0; i < s->n_refs; i++) {
		pthread_mutex_lock(&s->refs[i]->lock);
		bool resolving = s->refs[i]->resolving;
		pthread_mutex_unlock(&s->refs[i]->lock);
		/* Only the exit of the process follows: a registry that hangs
		 * must not keep it (and imgfs umount) waiting for its timeout. */
		if (resolving) {
			left_running = s;
			return NULL;
		}
	}
	for (size_t i = 0; i < s->n_refs; i++)
		ref_free(s->refs[i]);
	free(s->refs);
	free(s->nodes);
	free(s->slots);
	journal_close(s->journal);
	pthread_mutex_destroy(&s->lock);
	free(s);
	return NULL;
}

/* The uids or gids a layer's files use, as containers/storage lists them
 * (uidset, gidset) to decide whether a user namespace can map them. */
static struct json_object *id_set(const struct tree *t, bool gids)
{
	struct json_object *set = json_object_new_array();
	for (const struct tree_inode *i = t->all; set && i; i = i->next_all) {
		uint32_t id = gids ? i->gid : i->uid;
		bool seen = false;
		for (size_t k = 0; k < json_object_array_length(set) && !seen; k++)
			seen = (uint32_t)json_object_get_int64(json_object_array_get_idx(set, k)) == id;
		if (!seen && json_object_array_length(set) < 4096)
			json_object_array_add(set, json_object_new_int64(id));
	}
	return set;
}

/* containers/storage's Layer JSON: what podman records of a layer it takes
 * from the store. */
static int layer_info(struct store_layer *sl, const char *diff_id)
{
	const struct image *img = sl->image->img;
	const struct layer *l = img->layers[sl->index];
	const struct image_layer_desc *d = &img->descs[sl->index];
	/* containers/storage's archive.Compression values. */
	int compression = l->compression == COMPRESSION_GZIP ? 2 : l->compression == COMPRESSION_ZSTD ? 4 : 0;
	uint64_t size = l->tar_size ? l->tar_size : sl->tree->total_size;
	struct json_object *o = json_object_new_object();
	if (!o)
		return -ENOMEM;
	json_object_object_add(o, "compressed-diff-digest", json_object_new_string(l->digest));
	json_object_object_add(o, "compressed-size", json_object_new_int64((int64_t)d->size));
	json_object_object_add(o, "diff-digest", json_object_new_string(diff_id));
	json_object_object_add(o, "diff-size", json_object_new_int64((int64_t)size));
	if (d->toc_digest)
		json_object_object_add(o, "toc-digest", json_object_new_string(d->toc_digest));
	json_object_object_add(o, "compression", json_object_new_int(compression));
	json_object_object_add(o, "uidset", id_set(sl->tree, false));
	json_object_object_add(o, "gidset", id_set(sl->tree, true));
	const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	sl->info = text ? strdup(text) : NULL;
	sl->info_len = sl->info ? strlen(sl->info) : 0;
	json_object_put(o);
	return sl->info ? 0 : -ENOMEM;
}

/* The config's rootfs.diff_ids: the uncompressed digests podman names
 * layers by. */
static struct json_object *read_diff_ids(const struct image *img, struct err *err)
{
	struct json_object *config = json_object_from_file(img->config_path), *rootfs, *ids;
	if (config && json_object_object_get_ex(config, "rootfs", &rootfs) &&
	    json_object_object_get_ex(rootfs, "diff_ids", &ids) && json_object_is_type(ids, json_type_array) &&
	    json_object_array_length(ids) == img->n_layers) {
		json_object_get(ids);
		json_object_put(config);
		return ids;
	}
	json_object_put(config);
	err_set(err, EBADMSG, "config %s does not list one diff_id per layer", img->config_path);
	return NULL;
}

/* Each layer's lower tree and info, and its nodes and slot. */
static int image_add_layers(struct store *s, struct store_image *si, struct err *err)
{
	struct json_object *ids = read_diff_ids(si->img, err);
	if (!ids)
		return -EBADMSG;
	size_t n = si->img->n_layers;
	int ret = (si->layers = calloc(n ? n : 1, sizeof(*si->layers))) ? 0 : -ENOMEM;
	for (size_t i = 0; ret == 0 && i < n; i++, si->n_layers++) {
		struct store_layer *sl = &si->layers[i];
		const char *diff_id = json_object_get_string(json_object_array_get_idx(ids, i));
		*sl = (struct store_layer){ .image = si, .index = i, .blob_fd = -1 };
		sl->uses = &sl->own_uses;
		ret = tree_build_lower(si->img->layers[i], &sl->tree, err);
		if (ret == 0 && (!diff_id || !digest_is_valid(diff_id)))
			ret = err_set(err, EBADMSG, "layer %s has no valid diff_id in the config",
				      si->img->layers[i]->digest);
		if (ret == 0)
			ret = layer_info(sl, diff_id);
	}
	json_object_put(ids);
	if (ret < 0)
		return ret;
	pthread_mutex_lock(&s->lock);
	struct journal_event e = {
		.kind = JOURNAL_IMAGE, .n_layers = (uint32_t)n, .ref_ino = si->ref->ino, .first_slot = s->n_slots
	};
	ret = grow_array((void **)&s->slots, &s->allocated_slots, s->n_slots + n, sizeof(*s->slots));
	for (size_t i = 0; ret == 0 && i < n; i++) {
		struct store_layer *sl = &si->layers[i];
		sl->dir_ino = node_add(s, NODE_LAYER, sl);
		sl->info_ino = node_add(s, NODE_INFO, sl);
		sl->blob_ino = node_add(s, NODE_BLOB, sl);
		if (!sl->dir_ino || !sl->info_ino || !sl->blob_ino || sl->tree->n_inodes >= (1ull << TREE_SHIFT))
			ret = -ENOMEM;
		sl->slot = s->n_slots;
		s->slots[s->n_slots++] = sl;
		atomic_uint *shared = journal_uses(s->journal, sl->slot);
		if (shared)
			sl->uses = shared;
	}
	e.served = ret == 0;
	snprintf(e.text, sizeof(e.text), "%s", si->img->pinned_ref);
	if (!s->replaying)
		(void)journal_append(s->journal, &e);
	pthread_mutex_unlock(&s->lock);
	return ret;
}

/* Whether r already holds the image of this manifest (the tag did not move). */
static bool ref_has_manifest(const struct store_ref *r, const char *digest)
{
	for (size_t i = 0; i < r->n_images; i++)
		if (strcmp(r->images[i]->img->manifest_digest, digest) == 0)
			return true;
	return false;
}

static void note_error(struct store *s, const char *ref, struct err *err, int ret)
{
	if (!err->code)
		err_set(err, -ret, "%s: %s", ref, strerror(-ret));
	fprintf(stderr, "imgfs store: %s\n", err->msg);
	pthread_mutex_lock(&s->lock);
	snprintf(s->last_error, sizeof(s->last_error), "%s", err->msg);
	pthread_mutex_unlock(&s->lock);
}

/* r keeps si, served or not (its layers failed: slots may name them);
 * r->lock is held, or nothing else runs yet. */
static int ref_keep_image(struct store_ref *r, struct store_image *si, bool served)
{
	int ret = grow_array((void **)&r->images, &r->allocated_images, r->n_images + 1, sizeof(*r->images));
	if (ret == 0) {
		si->n_served = served ? si->n_layers : 0;
		r->images[r->n_images++] = si;
	}
	return ret;
}

/* Builds what the reference names now, without r->lock (lookups of its
 * older images go on meanwhile), and adds it unless r holds it already. */
static void *resolve_main(void *userdata)
{
	struct store_ref *r = userdata;
	struct store *s = r->store;
	struct err err = { 0 };
	struct store_image *si = calloc(1, sizeof(*si));
	int ret = si ? image_open(r->text, &s->opts.image, &si->img, &err) : -ENOMEM;
	pthread_mutex_lock(&r->lock);
	bool known = ret == 0 && ref_has_manifest(r, si->img->manifest_digest);
	pthread_mutex_unlock(&r->lock);
	if (ret == 0 && !known) {
		si->ref = r;
		ret = image_add_layers(s, si, &err);
		if (ret == 0 && image_start_background(si->img, s->opts.prefetch) < 0)
			fprintf(stderr, "imgfs store: %s: cannot start the background fetch\n", r->text);
	}
	if (ret < 0)
		note_error(s, r->text, &err, ret);
	pthread_mutex_lock(&r->lock);
	/* An image whose layers failed is kept unserved: slots may name them. */
	bool keep = si && (ret == 0 ? !known : si->n_layers > 0);
	if (!keep || ref_keep_image(r, si, ret == 0) < 0)
		store_image_free(si);
	r->resolving = false;
	pthread_cond_broadcast(&r->changed);
	pthread_mutex_unlock(&r->lock);
	return NULL;
}

static struct store_layer *layer_find(struct store_ref *r, const char *digest)
{
	for (size_t k = r->n_images; k-- > 0;) {
		struct store_image *si = r->images[k];
		for (size_t i = 0; i < si->n_served; i++) {
			const struct image_layer_desc *d = &si->img->descs[i];
			if (strcmp(si->img->layers[i]->digest, digest) == 0 ||
			    (d->toc_digest && strcmp(d->toc_digest, digest) == 0))
				return &si->layers[i];
		}
	}
	return NULL;
}

/* The layer of r named digest.  When none of r's images has it, asks the
 * registry again (at most every RETRY_SECONDS), and waits for the answer
 * at most the resolve timeout. */
static struct store_layer *ref_layer(struct store_ref *r, const char *digest)
{
	pthread_mutex_lock(&r->lock);
	struct store_layer *l = layer_find(r, digest);
	time_t now = time(NULL);
	if (!l && !r->resolving && now - r->last_attempt >= RETRY_SECONDS) {
		if (r->thread_started)
			pthread_join(r->thread, NULL);
		r->last_attempt = now;
		r->thread_started = r->resolving = pthread_create(&r->thread, NULL, resolve_main, r) == 0;
	}
	struct timespec deadline;
	deadline_after(CLOCK_REALTIME, &deadline, r->store->opts.resolve_timeout_ms);
	while (!l && r->resolving) {
		if (pthread_cond_timedwait(&r->changed, &r->lock, &deadline) == ETIMEDOUT)
			break;
		l = layer_find(r, digest);
	}
	pthread_mutex_unlock(&r->lock);
	return l;
}

/* The reference a root entry names: base64 of a reference podman could
 * pull; NULL (errno ENOENT) for any other name. */
static struct store_ref *ref_find(struct store *s, const char *name)
{
	for (size_t i = 0; i < s->n_refs; i++)
		if (strcmp(s->refs[i]->name, name) == 0)
			return s->refs[i];
	return NULL;
}

static struct store_ref *ref_get(struct store *s, const char *name)
{
	pthread_mutex_lock(&s->lock);
	struct store_ref *r = ref_find(s, name);
	pthread_mutex_unlock(&s->lock);
	if (r)
		return r;
	void *decoded = NULL;
	size_t len = 0;
	struct image_ref parsed = { 0 };
	if (base64_decode(name, strlen(name), &decoded, &len) < 0 || len == 0 || strlen(decoded) != len ||
	    image_ref_parse(decoded, &parsed, NULL) < 0) {
		free(decoded);
		return NULL;
	}
	image_ref_done(&parsed);
	r = calloc(1, sizeof(*r));
	if (!r || !(r->name = strdup(name))) {
		free(r);
		free(decoded);
		return NULL;
	}
	r->store = s;
	r->text = decoded;
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->changed, NULL);
	pthread_mutex_lock(&s->lock);
	struct store_ref *raced = ref_find(s, name);
	if (!raced && grow_array((void **)&s->refs, &s->allocated_refs, s->n_refs + 1, sizeof(*s->refs)) == 0 &&
	    (r->ino = node_add(s, NODE_REF, r)) != 0) {
		s->refs[s->n_refs++] = r;
		struct journal_event e = { .kind = JOURNAL_REF };
		snprintf(e.text, sizeof(e.text), "%s", name);
		/* A name too long for the journal: this store is served by this
		 * process alone. */
		if (!s->replaying && strlen(name) >= sizeof(e.text))
			journal_spoil(s->journal);
		else if (!s->replaying)
			(void)journal_append(s->journal, &e);
	}
	pthread_mutex_unlock(&s->lock);
	if (raced || !r->ino) {
		ref_free(r);
		return raced;
	}
	return r;
}

/* A successor makes the nodes its predecessor made, in the same order,
 * so that every number the kernel holds names the same thing again. */
static int store_replay(struct store *s, struct err *err)
{
	struct image_options opts = s->opts.image;
	opts.pull = PULL_MISSING; /* name@digest: the cache has it */
	int r = 0;
	s->replaying = true;
	for (size_t i = 0; r == 0 && i < journal_count(s->journal); i++) {
		const struct journal_event *e = journal_get(s->journal, i);
		char text[sizeof(e->text)];
		snprintf(text, sizeof(text), "%.*s", (int)sizeof(e->text) - 1, e->text);
		struct store_node n;
		if (e->kind == JOURNAL_REF) {
			if (!ref_get(s, text))
				r = err_set(err, EBADMSG, "journal: cannot name the reference \"%s\" again", text);
			continue;
		}
		if (e->kind != JOURNAL_IMAGE || !node_get(s, e->ref_ino, &n) || n.kind != NODE_REF) {
			r = err_set(err, EBADMSG, "journal: event %zu names no reference", i);
			break;
		}
		struct store_image *si = calloc(1, sizeof(*si));
		r = si ? image_open(text, &opts, &si->img, err) : -ENOMEM;
		if (r == 0) {
			si->ref = n.object;
			r = image_add_layers(s, si, err);
		}
		if (r == 0 && (si->n_layers != e->n_layers || (si->n_layers && si->layers[0].slot != e->first_slot)))
			r = err_set(err, EBADMSG, "journal: \"%s\" does not have the layers it had", text);
		struct store_ref *ref = si ? si->ref : NULL;
		if (r == 0 && ref_keep_image(ref, si, e->served) == 0) {
			if (image_start_background(si->img, s->opts.prefetch) < 0)
				fprintf(stderr, "imgfs store: %s: cannot start the background fetch\n", text);
		} else {
			store_image_free(si);
			r = r < 0 ? r : -ENOMEM;
		}
	}
	s->replaying = false;
	return r;
}

int store_new(const struct store_options *opts, int state_fd, bool resume, struct store **ret, struct err *err)
{
	struct store *s = calloc(1, sizeof(*s));
	if (!s)
		return err_set(err, ENOMEM, "cannot start the store: out of memory");
	s->opts = *opts;
	s->opts.image.separate_layers = true;
	pthread_mutex_init(&s->lock, NULL);
	s->n_nodes = 1;
	s->n_slots = 1;
	int r = node_add(s, NODE_ROOT, NULL) == FUSE_ROOT_ID &&
			grow_array((void **)&s->slots, &s->allocated_slots, 1, sizeof(*s->slots)) == 0
		    ? 0
		    : err_set(err, ENOMEM, "cannot start the store: out of memory");
	if (r == 0 && (r = journal_open(state_fd, resume, &s->journal)) < 0)
		err_set(err, -r, "cannot start the store: its journal: %s",
			r == -EBADMSG ? "the previous server left it damaged or full" : strerror(-r));
	if (r == 0 && resume)
		r = store_replay(s, err);
	if (r < 0) {
		store_free(s);
		return r;
	}
	*ret = s;
	return 0;
}

static void node_stat(struct store *s, fuse_ino_t ino, const struct store_node *n, struct stat *st)
{
	(void)s;
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_nlink = 1;
	st->st_blksize = 4096;
	const struct store_layer *l = n->object;
	switch (n->kind) {
	default:
	case NODE_ROOT:
	case NODE_REF:
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
		break;
	case NODE_LAYER:
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 3;
		break;
	case NODE_INFO:
		st->st_mode = S_IFREG | 0444;
		st->st_size = (off_t)l->info_len;
		break;
	case NODE_BLOB:
		st->st_mode = S_IFREG | 0444;
		st->st_size = (off_t)l->image->img->descs[l->index].size;
		break;
	}
	st->st_blocks = (st->st_size + 511) / 512;
}

/* An answer the kernel must not keep: the name may exist on the next
 * lookup (a reference that resolves later, a store restarted). */
static void reply_absent(fuse_req_t req)
{
	struct fuse_entry_param e = { 0 };
	fuse_reply_entry(req, &e);
}

static void reply_node(fuse_req_t req, struct store *s, fuse_ino_t ino)
{
	struct store_node n;
	struct fuse_entry_param e = { .ino = ino, .generation = 1 };
	if (!node_get(s, ino, &n)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	node_stat(s, ino, &n, &e.attr);
	e.attr_timeout = e.entry_timeout = CACHE_TIMEOUT;
	fuse_reply_entry(req, &e);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	if (conn->capable & FUSE_CAP_CACHE_SYMLINKS)
		conn->want |= FUSE_CAP_CACHE_SYMLINKS;
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	conn->max_write = FUSE_IO_MAX;
	conn->max_readahead = FUSE_IO_MAX;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct store *s = store_of(req);
	struct store_node n;
	struct tree_inode *dir;
	struct store_layer *l = tree_node(s, parent, &dir);
	if (l) {
		struct served_tree t = served_layer(l);
		served_lookup(req, &t, dir, name);
		return;
	}
	if (!node_get(s, parent, &n)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (n.kind == NODE_ROOT) {
		struct store_ref *r = ref_get(s, name);
		if (r)
			reply_node(req, s, r->ino);
		else
			reply_absent(req);
	} else if (n.kind == NODE_REF) {
		l = ref_layer(n.object, name);
		if (l)
			reply_node(req, s, l->dir_ino);
		else
			reply_absent(req);
	} else if (n.kind == NODE_LAYER) {
		l = n.object;
		if (strcmp(name, "diff") == 0) {
			struct served_tree t = served_layer(l);
			struct fuse_entry_param e;
			served_fill_entry(&t, tree_get(l->tree, FUSE_ROOT_ID), &e);
			fuse_reply_entry(req, &e);
		} else if (strcmp(name, "info") == 0 || strcmp(name, "blob") == 0) {
			reply_node(req, s, strcmp(name, "info") == 0 ? l->info_ino : l->blob_ino);
		} else {
			reply_absent(req);
		}
	} else {
		fuse_reply_err(req, ENOTDIR);
	}
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	struct store *s = store_of(req);
	struct tree_inode *i;
	struct store_layer *l = tree_node(s, ino, &i);
	struct store_node n;
	if (l) {
		struct served_tree t = served_layer(l);
		served_getattr(req, &t, i);
	} else if (node_get(s, ino, &n)) {
		struct stat st;
		node_stat(s, ino, &n, &st);
		fuse_reply_attr(req, &st, CACHE_TIMEOUT);
	} else {
		fuse_reply_err(req, ENOENT);
	}
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct tree_inode *i;
	if (tree_node(store_of(req), ino, &i))
		served_readlink(req, i);
	else
		fuse_reply_err(req, EINVAL);
}

/* The blob is read whole or not at all (podman push, save): fetched and
 * verified once, on its first open, and kept open while the store runs. */
static int layer_blob_fd(struct store_layer *l)
{
	int fd = atomic_load(&l->blob_fd);
	if (fd >= 0)
		return fd;
	struct err err = { 0 };
	int r = image_layer_blob(l->image->img, l->index, &fd, &err);
	if (r < 0) {
		fprintf(stderr, "imgfs store: %s\n", err.code ? err.msg : strerror(-r));
		return r;
	}
	int none = -1;
	if (!atomic_compare_exchange_strong(&l->blob_fd, &none, fd)) {
		close(fd);
		fd = none;
	}
	return fd;
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct store *s = store_of(req);
	struct tree_inode *i;
	struct store_node n;
	if (tree_node(s, ino, &i)) {
		served_open(req, i, fi);
		return;
	}
	if (!node_get(s, ino, &n)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (n.kind != NODE_INFO && n.kind != NODE_BLOB) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	fi->keep_cache = 1;
	int r = n.kind == NODE_BLOB ? layer_blob_fd(n.object) : 0;
	if (r < 0)
		fuse_reply_err(req, EIO);
	else
		fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	struct store *s = store_of(req);
	struct tree_inode *i;
	struct store_node n;
	if (tree_node(s, ino, &i)) {
		served_read(req, i, size, off);
		return;
	}
	if (!node_get(s, ino, &n) || (n.kind != NODE_INFO && n.kind != NODE_BLOB) || off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	struct store_layer *l = n.object;
	if (n.kind == NODE_INFO) {
		size_t start = (uint64_t)off < l->info_len ? (size_t)off : l->info_len;
		fuse_reply_buf(req, l->info + start, size < l->info_len - start ? size : l->info_len - start);
		return;
	}
	if (size > FUSE_IO_MAX)
		size = FUSE_IO_MAX;
	/* Opened by a server before this one, maybe: the descriptor is the layer's. */
	int fd = layer_blob_fd(l);
	_cleanup_free_ char *buf = fd >= 0 ? malloc(size ? size : 1) : NULL;
	ssize_t got = buf ? pread(fd, buf, size, off) : -1;
	if (got < 0)
		fuse_reply_err(req, fd < 0 ? EIO : buf ? errno : ENOMEM);
	else
		fuse_reply_buf(req, buf, (size_t)got);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

/* Adds one entry; false when the buffer is full. */
static bool add_dirent(fuse_req_t req, char *buf, size_t size, size_t *used, const char *name, fuse_ino_t ino,
		       mode_t mode, off_t next)
{
	struct stat st = { .st_ino = ino, .st_mode = mode };
	size_t n = fuse_add_direntry(req, buf + *used, size - *used, name, &st, next);
	if (n > size - *used)
		return false;
	*used += n;
	return true;
}

/* The store's own directories: a reference lists the layers it resolved
 * to (without waiting for it), a layer its three names. */
static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)fi;
	struct store *s = store_of(req);
	struct tree_inode *dir;
	struct store_layer *l = tree_node(s, ino, &dir);
	struct store_node n;
	if (l) {
		struct served_tree t = served_layer(l);
		served_readdir(req, &t, dir, size, off, false);
		return;
	}
	if (!node_get(s, ino, &n) || n.kind == NODE_INFO || n.kind == NODE_BLOB) {
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
	off_t pos = off < 0 ? 0 : off;
	if (pos == 0 && add_dirent(req, buf, size, &used, ".", ino, S_IFDIR, 1))
		pos = 1;
	if (pos == 1 && add_dirent(req, buf, size, &used, "..", FUSE_ROOT_ID, S_IFDIR, 2))
		pos = 2;
	if (n.kind == NODE_REF) {
		/* What the reference named last: listing every image would repeat
		 * the layers they share. */
		struct store_ref *r = n.object;
		pthread_mutex_lock(&r->lock);
		struct store_image *si = NULL;
		for (size_t k = 0; k < r->n_images; k++)
			si = r->images[k]->n_served ? r->images[k] : si;
		for (; si && (size_t)pos - 2 < si->n_served; pos++)
			if (!add_dirent(req, buf, size, &used, si->img->layers[pos - 2]->digest,
					si->layers[pos - 2].dir_ino, S_IFDIR, pos + 1))
				break;
		pthread_mutex_unlock(&r->lock);
	} else if (n.kind == NODE_LAYER) {
		l = n.object;
		static const char *const names[] = { "diff", "info", "blob" };
		fuse_ino_t inos[] = { (l->slot << TREE_SHIFT) + FUSE_ROOT_ID, l->info_ino, l->blob_ino };
		for (; (size_t)pos - 2 < ARRAY_SIZE(names); pos++)
			if (!add_dirent(req, buf, size, &used, names[pos - 2], inos[pos - 2],
					pos == 2 ? S_IFDIR : S_IFREG, pos + 1))
				break;
	}
	fuse_reply_buf(req, buf, used);
}

static int format_stats(struct store *s, char *buf, size_t size)
{
	uint64_t refs_ready = 0, layers = 0, uses = 0, whole = 0, bytes_whole = 0, ranges = 0, requests = 0;
	/* References are never freed while the store runs, and a reference's
	 * lock is never taken under s->lock. */
	pthread_mutex_lock(&s->lock);
	size_t n_refs = s->n_refs;
	_cleanup_free_ struct store_ref **refs = malloc((n_refs ? n_refs : 1) * sizeof(*refs));
	if (refs && n_refs)
		memcpy(refs, s->refs, n_refs * sizeof(*refs));
	char last_error[sizeof(s->last_error)];
	memcpy(last_error, s->last_error, sizeof(last_error));
	pthread_mutex_unlock(&s->lock);
	if (!refs)
		return -ENOMEM;
	for (size_t i = 0; i < n_refs; i++) {
		struct store_ref *r = refs[i];
		pthread_mutex_lock(&r->lock);
		bool served = false;
		for (size_t j = 0; j < r->n_images; j++) {
			struct store_image *si = r->images[j];
			served = served || si->n_served;
			layers += si->n_served;
			whole += si->img->layers_fetched_whole;
			bytes_whole += si->img->bytes_fetched_whole;
			for (size_t k = 0; k < si->n_served; k++) {
				struct layer_stats st;
				layer_get_stats(si->img->layers[k], &st);
				ranges += st.bytes_fetched;
				requests += st.requests;
				uses += (uint64_t)atomic_load(si->layers[k].uses);
			}
		}
		refs_ready += served;
		pthread_mutex_unlock(&r->lock);
	}
	int n = snprintf(buf, size,
			 "refs %zu\nrefs_resolved %llu\nlayers %llu\nlayers_in_use %llu\nlayers_fetched_whole %llu\n"
			 "bytes_fetched_whole %llu\nbytes_fetched_ranges %llu\nrange_requests %llu\n%s%s%s",
			 n_refs, (unsigned long long)refs_ready, (unsigned long long)layers, (unsigned long long)uses,
			 (unsigned long long)whole, (unsigned long long)bytes_whole, (unsigned long long)ranges,
			 (unsigned long long)requests, *last_error ? "last_error " : "", last_error,
			 *last_error ? "\n" : "");
	return n < 0 || (size_t)n >= size ? -ERANGE : n;
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct store *s = store_of(req);
	struct tree_inode *i;
	if (tree_node(s, ino, &i)) {
		served_getxattr(req, i, name, size);
		return;
	}
	if (ino == FUSE_ROOT_ID && strcmp(name, IMGFS_PID_XATTR) == 0) {
		reply_pid_xattr(req, size); /* imgfs umount waits for this process to end */
		return;
	}
	if (ino != FUSE_ROOT_ID || strcmp(name, IMGFS_STATS_XATTR) != 0) {
		fuse_reply_err(req, ENODATA);
		return;
	}
	char stats[2048];
	int n = takeover_append_stats(stats, format_stats(s, stats, sizeof(stats)), sizeof(stats));
	if (n < 0)
		fuse_reply_err(req, EIO);
	else
		reply_xattr_value(req, stats, (size_t)n, size);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct tree_inode *i;
	if (tree_node(store_of(req), ino, &i))
		served_listxattr(req, i, size);
	else if (size == 0)
		fuse_reply_xattr(req, 0);
	else
		fuse_reply_buf(req, NULL, 0);
}

/* containers/storage takes a layer by creating "use" in its directory and
 * expects ENOENT from a store that counts it. */
static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi)
{
	(void)mode;
	(void)fi;
	struct store_node n;
	if (node_get(store_of(req), parent, &n) && n.kind == NODE_LAYER && strcmp(name, "use") == 0) {
		atomic_fetch_add(((struct store_layer *)n.object)->uses, 1);
		fuse_reply_err(req, ENOENT);
		return;
	}
	fuse_reply_err(req, EROFS);
}

/* ... and releases it by removing the layer's directory. */
static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct store_node n;
	struct store_layer *l = NULL;
	if (node_get(store_of(req), parent, &n) && n.kind == NODE_REF) {
		struct store_ref *r = n.object;
		pthread_mutex_lock(&r->lock);
		l = layer_find(r, name);
		pthread_mutex_unlock(&r->lock);
	}
	if (l && atomic_load(l->uses) > 0)
		atomic_fetch_sub(l->uses, 1);
	fuse_reply_err(req, l ? ENOENT : EROFS);
}

static void op_refuse_entry(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	(void)parent;
	(void)name;
	fuse_reply_err(req, EROFS);
}

static void op_refuse_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	(void)mode;
	op_refuse_entry(req, parent, name);
}

static void op_refuse_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
	(void)ino;
	(void)attr;
	(void)to_set;
	(void)fi;
	fuse_reply_err(req, EROFS);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	(void)ino;
	struct statvfs st = { .f_bsize = 4096, .f_frsize = 4096, .f_namemax = 255 };
	fuse_reply_statfs(req, &st);
}

const struct fuse_lowlevel_ops store_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = forget_nothing,
	.forget_multi = forget_multi_nothing,
	.getattr = op_getattr,
	.readlink = op_readlink,
	.open = op_open,
	.read = op_read,
	.release = op_release,
	.readdir = op_readdir,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.create = op_create,
	.rmdir = op_rmdir,
	.unlink = op_refuse_entry,
	.mkdir = op_refuse_mkdir,
	.setattr = op_refuse_setattr,
	.statfs = op_statfs,
};
