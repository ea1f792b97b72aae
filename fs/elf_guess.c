/* The loader's next reads, fetched ahead: see elf_guess.h. */
#include "elf_guess.h"

#include "elf_head.h"

#include <elf.h>
#include <limits.h>

/* Each worker waits on one fetch at a time: three make a program's
 * libraries come in together, as its own reads would not. */
#define WORKERS 3
#define QUEUE_LEN 64
/* A start maps tens of libraries; past this the program is doing more
 * than starting, and guessing would only compete with it. */
#define MAX_FILES 256
#define HEAD_SIZE 4096
#define MAX_DYNAMIC (64u << 10)
#define MAX_LD_CACHE (1u << 20)
/* An object's dynamic section lies in its writable segment, near its end:
 * in a file larger than a chunk or two, the end is fetched beside the
 * head, not a round trip after it.  TAIL_LEN reaches the dynamic section
 * of most libraries where chunks are small (zstd:chunked). */
#define TAIL_FROM (1u << 20)
#define TAIL_LEN (64u << 10)
/* The end of a file whose first read has just begun waits this long, so
 * that the read's own request is the first on the link: the loader needs
 * the head first (it names the interpreter), and a request answered
 * before it would delay it by the end's bytes. */
#define TAIL_BEHIND_READ_NS 3000000L

/* What the guess did for a file, per inode number. */
enum {
	SEEN_HEAD = 1 << 0, /* its headers noted or queued */
	SEEN_TAIL = 1 << 1, /* its end queued */
};

struct elf_guess {
	const struct tree *tree;
	pthread_mutex_t lock; /* over the fields below */
	pthread_cond_t wake;
	struct guess_task {
		const struct tree_inode *inode;
		bool needed;      /* a library some object needs, not read yet */
		bool tail;        /* only its end to fetch */
		bool behind_read; /* the end of a file whose first read just began */
	} queue[QUEUE_LEN];
	size_t queue_head, queue_len;
	unsigned char *seen; /* per inode number: SEEN_* */
	unsigned taken;      /* files queued, at most MAX_FILES */
	bool stop;
	const struct tree_inode *ld_cache_inode; /* the image's /etc/ld.so.cache, NULL: none */
	atomic_bool cache_queued;                /* it was queued to be fetched */
	pthread_mutex_t cache_lock;              /* over the three below until cache_loaded */
	bool cache_loaded;
	unsigned char *ld_cache;
	size_t ld_cache_len;
	pthread_t threads[WORKERS];
	size_t n_threads;
	atomic_uint_least64_t guessed;
};

/* Queues i unless it was seen; the caller holds the lock. */
static bool enqueue_locked(struct elf_guess *g, const struct tree_inode *i, bool needed)
{
	if (i->ino >= g->tree->n_inodes || (g->seen[i->ino] & SEEN_HEAD) || g->taken >= MAX_FILES ||
	    g->queue_len == QUEUE_LEN)
		return false;
	g->seen[i->ino] |= SEEN_HEAD;
	g->taken++;
	g->queue[(g->queue_head + g->queue_len++) % QUEUE_LEN] = (struct guess_task){ .inode = i, .needed = needed };
	pthread_cond_signal(&g->wake);
	return true;
}

/* Queues the fetch of i's end, once, if i is large enough to have its
 * end in a chunk of its own; the caller holds the lock. */
static void enqueue_tail_locked(struct elf_guess *g, const struct tree_inode *i, bool behind_read)
{
	if (i->ino >= g->tree->n_inodes || (g->seen[i->ino] & SEEN_TAIL) || i->size < TAIL_FROM ||
	    g->taken >= MAX_FILES || g->queue_len == QUEUE_LEN)
		return;
	g->seen[i->ino] |= SEEN_TAIL;
	g->queue[(g->queue_head + g->queue_len++) % QUEUE_LEN] =
	    (struct guess_task){ .inode = i, .tail = true, .behind_read = behind_read };
	pthread_cond_signal(&g->wake);
}

/* A file on a layer whose reads fetch, each on its own. */
static bool guessable(const struct tree_inode *i)
{
	return S_ISREG(i->mode) && i->layer && i->entry && i->layer->blob_fd < 0 && i->layer->ops &&
	       i->layer->ops->concurrent_reads;
}

/* A program's or library's first read has begun: its end goes out beside
 * its head, before the head says where its dynamic section is. */
static void note_first_read(void *ctx, const struct tree_inode *i)
{
	struct elf_guess *g = ctx;
	if (i->size < TAIL_FROM || !guessable(i) || !elf_may_be_object(i->mode, i->entry->path))
		return;
	pthread_mutex_lock(&g->lock);
	enqueue_tail_locked(g, i, true);
	pthread_mutex_unlock(&g->lock);
}

static void note_head(void *ctx, const struct tree_inode *i, const void *head, size_t len)
{
	struct elf_guess *g = ctx;
	if (len < SELFMAG || memcmp(head, ELFMAG, SELFMAG) != 0 || !guessable(i))
		return;
	/* Every dynamically linked program's loader reads the cache next; so
	 * does the guess, to find the libraries. */
	const struct tree_inode *cache = g->ld_cache_inode;
	pthread_mutex_lock(&g->lock);
	enqueue_locked(g, i, false);
	if (cache && guessable(cache) && !atomic_exchange(&g->cache_queued, true))
		enqueue_locked(g, cache, false);
	pthread_mutex_unlock(&g->lock);
}

/* Bytes of a file straight from its layer: a read here is no read of the
 * program's, so `imgfs record` does not list it. */
static ssize_t read_at(const struct tree_inode *i, void *buf, size_t len, uint64_t off)
{
	return layer_read_entry(i->layer, i->entry, buf, len, off);
}

/* The image's /etc/ld.so.cache, read once; NULL if it has none. */
static const unsigned char *ld_cache(struct elf_guess *g, size_t *ret_len)
{
	pthread_mutex_lock(&g->cache_lock);
	if (!g->cache_loaded) {
		const struct tree_inode *i = g->ld_cache_inode;
		unsigned char *buf =
		    i && S_ISREG(i->mode) && i->entry && i->size <= MAX_LD_CACHE ? malloc(i->size ? i->size : 1) : NULL;
		if (buf && read_at(i, buf, i->size, 0) == (ssize_t)i->size) {
			g->ld_cache = buf;
			g->ld_cache_len = i->size;
		} else {
			free(buf);
		}
		g->cache_loaded = true;
	}
	pthread_mutex_unlock(&g->cache_lock);
	*ret_len = g->ld_cache_len;
	return g->ld_cache;
}

struct candidate {
	const struct tree *tree;
	const struct tree_inode *found;
};

static bool try_path(void *ctx, const char *path)
{
	struct candidate *c = ctx;
	const struct tree_inode *i = tree_resolve_path(c->tree, path);
	if (i && S_ISREG(i->mode))
		c->found = i;
	return c->found != NULL;
}

/* A RUNPATH directory with $ORIGIN (or ${ORIGIN}) replaced by origin;
 * -EINVAL for the loader's other tokens, which depend on the host. */
static int expand_origin(const char *dir, size_t len, const char *origin, char *out, size_t size)
{
	size_t used = 0;
	for (size_t k = 0; k < len;) {
		const char *piece = dir + k;
		size_t n = 1;
		if (dir[k] == '$') {
			size_t token = len - k >= 7 && strncmp(dir + k, "$ORIGIN", 7) == 0     ? 7
				       : len - k >= 9 && strncmp(dir + k, "${ORIGIN}", 9) == 0 ? 9
											       : 0;
			if (!token)
				return -EINVAL;
			piece = origin;
			n = strlen(origin);
			k += token;
		} else {
			k++;
		}
		if (used + n >= size)
			return -ENAMETOOLONG;
		memcpy(out + used, piece, n);
		used += n;
	}
	out[used] = '\0';
	return 0;
}

static void try_dir(struct candidate *c, const char *dir, const char *soname)
{
	char path[PATH_MAX];
	if (!c->found && snprintf(path, sizeof(path), "%s/%s", dir, soname) < (int)sizeof(path))
		try_path(c, path);
}

/* Where the loader finds soname for an object in directory origin (of
 * the image, absolute): its RUNPATH, the cache, the default directories. */
static const struct tree_inode *find_library(struct elf_guess *g, const char *soname, const char *origin,
					     const char *runpath, uint16_t machine)
{
	static const char *const x86_64[] = {
		"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"
	};
	static const char *const aarch64[] = {
		"/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"
	};
	static const char *const other[] = { "/lib", "/usr/lib" };
	struct candidate c = { .tree = g->tree };
	/* A name with a slash is a path from the program's working directory,
	 * which the image does not say. */
	if (strchr(soname, '/'))
		return NULL;
	for (const char *p = runpath; *p && !c.found;) {
		size_t n = strcspn(p, ":");
		char dir[PATH_MAX];
		if (expand_origin(p, n, origin, dir, sizeof(dir)) == 0)
			try_dir(&c, dir, soname);
		p += n + (p[n] == ':');
	}
	size_t len;
	const unsigned char *cache = c.found ? NULL : ld_cache(g, &len);
	if (cache)
		(void)ld_cache_lookup(cache, len, soname, machine, try_path, &c);
	const char *const *dirs = machine == EM_X86_64 ? x86_64 : machine == EM_AARCH64 ? aarch64 : other;
	size_t n_dirs = machine == EM_X86_64    ? ARRAY_SIZE(x86_64)
			: machine == EM_AARCH64 ? ARRAY_SIZE(aarch64)
						: ARRAY_SIZE(other);
	for (size_t k = 0; k < n_dirs; k++)
		try_dir(&c, dirs[k], soname);
	return c.found;
}

/* The string at off of a string table of strsz bytes at table. */
static int read_string(const struct tree_inode *i, uint64_t table, uint64_t strsz, uint64_t off, char *out, size_t size)
{
	if (off >= strsz)
		return -EINVAL;
	size_t len = strsz - off < size - 1 ? (size_t)(strsz - off) : size - 1;
	ssize_t n = read_at(i, out, len, table + off);
	if (n <= 0)
		return -EIO;
	out[n] = '\0';
	return strlen(out) < (size_t)n ? 0 : -EINVAL;
}

/* Reads i's headers and dynamic section (which fetches them) and queues
 * the libraries it needs. */
static void analyse(struct elf_guess *g, const struct tree_inode *i)
{
	unsigned char head[HEAD_SIZE];
	ssize_t n = read_at(i, head, sizeof(head), 0);
	struct elf_layout layout;
	if (n <= 0 || elf_layout_parse(head, (size_t)n, i->size, &layout) < 0 || layout.dynamic.filesz == 0)
		return;
	size_t dyn_len = layout.dynamic.filesz < MAX_DYNAMIC ? (size_t)layout.dynamic.filesz : MAX_DYNAMIC;
	_cleanup_free_ unsigned char *dyn = malloc(dyn_len);
	struct elf_dynamic d;
	if (!dyn || read_at(i, dyn, dyn_len, layout.dynamic.off) != (ssize_t)dyn_len ||
	    elf_dynamic_parse(dyn, dyn_len, &d) < 0)
		return;
	uint64_t strtab = elf_vaddr_to_offset(&layout, d.strtab_vaddr);
	if (strtab == UINT64_MAX)
		return;
	char runpath[1024] = "", origin[PATH_MAX];
	if (d.runpath != UINT64_MAX && read_string(i, strtab, d.strsz, d.runpath, runpath, sizeof(runpath)) < 0)
		runpath[0] = '\0';
	snprintf(origin, sizeof(origin), "/%.*s", (int)path_dir_len(i->entry->path), i->entry->path);
	for (unsigned k = 0; k < d.n_needed; k++) {
		char soname[256];
		const struct tree_inode *lib;
		if (read_string(i, strtab, d.strsz, d.needed[k], soname, sizeof(soname)) < 0 ||
		    !(lib = find_library(g, soname, origin, runpath, layout.machine)) || !guessable(lib))
			continue;
		pthread_mutex_lock(&g->lock);
		if (enqueue_locked(g, lib, true))
			enqueue_tail_locked(g, lib, false);
		pthread_mutex_unlock(&g->lock);
	}
}

static void fetch_tail(const struct tree_inode *i, bool behind_read)
{
	if (behind_read)
		nanosleep(&(struct timespec){ .tv_nsec = TAIL_BEHIND_READ_NS }, NULL);
	size_t len = i->size < TAIL_LEN ? (size_t)i->size : TAIL_LEN;
	_cleanup_free_ unsigned char *buf = malloc(len);
	if (buf)
		(void)read_at(i, buf, len, i->size - len);
}

static void *worker_main(void *arg)
{
	struct elf_guess *g = arg;
	pthread_mutex_lock(&g->lock);
	for (;;) {
		while (!g->stop && g->queue_len == 0)
			pthread_cond_wait(&g->wake, &g->lock);
		if (g->stop)
			break;
		struct guess_task task = g->queue[g->queue_head];
		g->queue_head = (g->queue_head + 1) % QUEUE_LEN;
		g->queue_len--;
		pthread_mutex_unlock(&g->lock);
		if (task.tail)
			fetch_tail(task.inode, task.behind_read);
		else
			analyse(g, task.inode);
		if (task.needed)
			atomic_fetch_add(&g->guessed, 1);
		pthread_mutex_lock(&g->lock);
	}
	pthread_mutex_unlock(&g->lock);
	return NULL;
}

struct elf_guess *elf_guess_start(const struct tree *t)
{
	bool any_guessable = false;
	for (const struct tree_inode *i = t->all; i && !any_guessable; i = i->next_all)
		any_guessable = guessable(i);
	if (!any_guessable)
		return NULL;
	struct elf_guess *g = calloc(1, sizeof(*g));
	if (!g || !(g->seen = calloc(t->n_inodes ? t->n_inodes : 1, 1))) {
		free(g);
		return NULL;
	}
	g->tree = t;
	g->ld_cache_inode = tree_resolve_path(t, "etc/ld.so.cache");
	pthread_mutex_init(&g->lock, NULL);
	pthread_mutex_init(&g->cache_lock, NULL);
	pthread_cond_init(&g->wake, NULL);
	for (; g->n_threads < WORKERS; g->n_threads++)
		if (pthread_create(&g->threads[g->n_threads], NULL, worker_main, g) != 0)
			break;
	if (g->n_threads == 0) {
		elf_guess_stop(g);
		return NULL;
	}
	tree_set_read_hooks(&(struct tree_read_hooks){ .first_read = note_first_read, .head = note_head, .ctx = g });
	return g;
}

void elf_guess_stop(struct elf_guess *g)
{
	if (!g)
		return;
	tree_set_read_hooks(NULL);
	pthread_mutex_lock(&g->lock);
	g->stop = true;
	pthread_cond_broadcast(&g->wake);
	pthread_mutex_unlock(&g->lock);
	for (size_t k = 0; k < g->n_threads; k++)
		pthread_join(g->threads[k], NULL);
	pthread_mutex_destroy(&g->lock);
	pthread_mutex_destroy(&g->cache_lock);
	pthread_cond_destroy(&g->wake);
	free(g->seen);
	free(g->ld_cache);
	free(g);
}

uint64_t elf_guess_count(const struct elf_guess *g)
{
	return g ? atomic_load(&g->guessed) : 0;
}
