/* The pack store of a chunked layer: see pack.h. */
#include "pack.h"

#include <fcntl.h>
#include <sys/stat.h>

#include "cache.h"
#include "chunk_codec.h"
#include "registry.h"

/* The layout version is in the name: a change of layout makes a new pack. */
#define PACK_NAME "%s/chunks/sha256/%s.v1.pack"

static int open_pack(const char *path)
{
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	return fd < 0 ? -errno : fd;
}

int pack_store_open(struct pack_store *ps, const char *cache_dir, const char *digest,
		    enum layer_compression compression, struct err *err)
{
	*ps = (struct pack_store){ .compression = compression };
	pthread_mutex_init(&ps->lock, NULL);
	_cleanup_free_ char *dir = strdup_printf("%s/chunks/sha256", cache_dir);
	ps->path = strdup_printf(PACK_NAME, cache_dir, digest + 7);
	if (!dir || !ps->path)
		return -ENOMEM;
	int r = mkdir_parents(dir, 0700);
	if (r == 0 && (r = open_pack(ps->path)) >= 0) {
		ps->packs[ps->n_packs++] = r;
		r = 0;
	}
	if (r < 0)
		return err_set(err, r, "cannot open the chunk cache \"%s\": %s", ps->path, strerror(-r));
	return 0;
}

void pack_store_close(struct pack_store *ps)
{
	for (size_t i = 0; i < ps->n_mem; i++)
		free(ps->mem[i].data);
	free(ps->mem);
	for (size_t i = 0; i < ps->n_packs; i++)
		close(ps->packs[i]);
	free(ps->slot);
	free(ps->verified);
	free(ps->path);
	pthread_mutex_destroy(&ps->lock);
}

int pack_store_assign(struct pack_store *ps, const struct chunk *const *by_offset, size_t n_chunks)
{
	ps->verified = calloc(n_chunks ? n_chunks : 1, 1);
	ps->slot = calloc(n_chunks ? n_chunks : 1, sizeof(*ps->slot));
	if (!ps->verified || !ps->slot)
		return -ENOMEM;
	uint64_t next_slot = 0;
	for (size_t k = 0; k < n_chunks; k++) {
		struct chunk *c = (struct chunk *)by_offset[k];
		c->order = (uint32_t)k;
		ps->slot[k] = next_slot;
		next_slot += c->zeros ? 0 : c->size;
	}
	return 0;
}

int pack_verified(struct pack_store *ps, const struct chunk *c)
{
	pthread_mutex_lock(&ps->lock);
	int fd = ps->verified[c->order] ? ps->packs[ps->verified[c->order] - 1] : -1;
	pthread_mutex_unlock(&ps->lock);
	return fd;
}

/* A hole (nothing written at the slot) is known absent without reading. */
int pack_lookup(struct pack_store *ps, const struct chunk *c)
{
	int fd = pack_verified(ps, c);
	if (fd >= 0)
		return fd;
	pthread_mutex_lock(&ps->lock);
	size_t newest = ps->n_packs - 1;
	fd = ps->packs[newest];
	pthread_mutex_unlock(&ps->lock);
	off_t slot = (off_t)ps->slot[c->order];
	if (lseek(fd, slot, SEEK_DATA) != slot)
		return -ENOENT;
	_cleanup_free_ unsigned char *data = malloc(c->size ? c->size : 1);
	char actual[DIGEST_SHA256_LEN + 1];
	if (!data || read_full_at(fd, data, c->size, slot) < 0)
		return -ENOENT;
	digest_sha256(data, c->size, actual);
	if (strcmp(actual, c->digest) != 0)
		return -ENOENT;
	pthread_mutex_lock(&ps->lock);
	ps->verified[c->order] = (uint8_t)(newest + 1);
	pthread_mutex_unlock(&ps->lock);
	cache_note_used(fd);
	return fd;
}

/* The pack new chunks go to: a new one when eviction unlinked the last. */
static int pack_for_writing(struct pack_store *ps, size_t *ret_index)
{
	pthread_mutex_lock(&ps->lock);
	size_t newest = ps->n_packs - 1;
	int fd = ps->packs[newest];
	pthread_mutex_unlock(&ps->lock);
	struct stat st;
	if (fstat(fd, &st) < 0 || st.st_nlink > 0 || newest + 1 >= PACK_GENERATIONS) {
		*ret_index = newest;
		return fd;
	}
	int fresh = open_pack(ps->path);
	pthread_mutex_lock(&ps->lock);
	/* Unless another writer got there first. */
	if (fresh >= 0 && ps->n_packs == newest + 1) {
		ps->packs[ps->n_packs++] = fresh;
		fresh = -1;
	}
	newest = ps->n_packs - 1;
	fd = ps->packs[newest];
	pthread_mutex_unlock(&ps->lock);
	if (fresh >= 0)
		close(fresh);
	*ret_index = newest;
	return fd;
}

static ssize_t mem_index_locked(const struct pack_store *ps, const struct chunk *c)
{
	for (size_t i = 0; i < ps->n_mem; i++)
		if (ps->mem[i].order == c->order)
			return (ssize_t)i;
	return -1;
}

/* Takes data (the verified bytes of c) when its write failed with err. */
static int keep_in_memory(struct pack_store *ps, const struct chunk *c, unsigned char *data, int err)
{
	if (c->size > PACK_MEMORY_MAX) {
		free(data);
		return err;
	}
	pthread_mutex_lock(&ps->lock);
	if (!ps->disk_full)
		fprintf(stderr,
			"imgfs: cannot write to the chunk cache \"%s\" (%s): serving verified chunks from memory\n",
			ps->path, strerror(-err));
	ps->disk_full = true;
	while (ps->n_mem && ps->mem_bytes + c->size > PACK_MEMORY_MAX) {
		size_t oldest = 0;
		for (size_t i = 1; i < ps->n_mem; i++)
			if (ps->mem[i].last_use < ps->mem[oldest].last_use)
				oldest = i;
		ps->mem_bytes -= ps->mem[oldest].size;
		free(ps->mem[oldest].data);
		ps->mem[oldest] = ps->mem[--ps->n_mem];
	}
	int r = 0;
	if (mem_index_locked(ps, c) >= 0) {
		free(data); /* another fetch kept it first */
	} else if (grow_array((void **)&ps->mem, &ps->allocated_mem, ps->n_mem + 1, sizeof(*ps->mem)) < 0) {
		free(data);
		r = -ENOMEM;
	} else {
		ps->mem[ps->n_mem++] = (struct mem_chunk){ c->order, data, c->size, ++ps->mem_clock };
		ps->mem_bytes += c->size;
	}
	pthread_mutex_unlock(&ps->lock);
	return r;
}

int pack_read_memory(struct pack_store *ps, const struct chunk *c, void *buf, uint64_t off, size_t len)
{
	pthread_mutex_lock(&ps->lock);
	ssize_t i = ps->n_mem ? mem_index_locked(ps, c) : -1;
	if (i >= 0 && off <= ps->mem[i].size && len <= ps->mem[i].size - off) {
		memcpy(buf, ps->mem[i].data + off, len);
		ps->mem[i].last_use = ++ps->mem_clock;
	}
	pthread_mutex_unlock(&ps->lock);
	return i >= 0 ? 0 : -ENOENT;
}

bool pack_in_memory(struct pack_store *ps, const struct chunk *c)
{
	pthread_mutex_lock(&ps->lock);
	bool found = ps->n_mem && mem_index_locked(ps, c) >= 0;
	pthread_mutex_unlock(&ps->lock);
	return found;
}

bool pack_disk_full(struct pack_store *ps)
{
	pthread_mutex_lock(&ps->lock);
	bool full = ps->disk_full;
	pthread_mutex_unlock(&ps->lock);
	return full;
}

int pack_store_chunk(struct pack_store *ps, const struct chunk *c, const unsigned char *comp, size_t comp_len)
{
	_cleanup_free_ unsigned char *data = malloc(c->size ? c->size : 1);
	if (!data)
		return -ENOMEM;
	if (chunk_decompress(ps->compression, comp, comp_len, c->inner_off, data, c->size) < 0)
		return -EBADMSG;
	char actual[DIGEST_SHA256_LEN + 1];
	digest_sha256(data, c->size, actual);
	if (strcmp(actual, c->digest) != 0)
		return -EBADMSG; /* never cache or serve bytes that do not match */
	size_t pack;
	int fd = pack_for_writing(ps, &pack);
	int r = write_full_at(fd, data, c->size, (off_t)ps->slot[c->order]);
	if (r < 0)
		return keep_in_memory(ps, c, TAKE_PTR(data), r);
	pthread_mutex_lock(&ps->lock);
	ps->verified[c->order] = (uint8_t)(pack + 1);
	pthread_mutex_unlock(&ps->lock);
	cache_note_stored(c->size);
	return 0;
}
