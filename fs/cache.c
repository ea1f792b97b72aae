/* Least-recently-used eviction for the shared cache: see cache.h. */
#include "cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <time.h>

#include "util.h"

/* Evict down to this share of the cap, so that eviction does not run
 * again for every object that follows. */
#define LOW_WATER_PERCENT 90
/* A temporary file this old belongs to a writer that died. */
#define STALE_TEMP_SECONDS 3600

static const char *const object_dirs[] = { "blobs/sha256", "chunks/sha256", "index/sha256", "decoded/sha256" };

static struct {
	pthread_mutex_t lock;
	char *dir;
	uint64_t cap, estimate;
} limit = { .lock = PTHREAD_MUTEX_INITIALIZER };

struct object {
	struct timespec mtime;
	uint64_t size;
	char *path;
};

static int by_age(const void *a, const void *b)
{
	const struct object *x = a, *y = b;
	if (x->mtime.tv_sec != y->mtime.tv_sec)
		return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
	return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : x->mtime.tv_nsec > y->mtime.tv_nsec;
}

static bool is_temporary(const char *name)
{
	return name[0] == '.' || strstr(name, ".part") || strstr(name, ".tmp");
}

/* The stamp of an evicted blob ("<cache>/blobs/sha256/<hex>") goes with it. */
static void unlink_stamp(const char *object_path)
{
	const char *blobs = strstr(object_path, "/blobs/sha256/");
	if (!blobs)
		return;
	_cleanup_free_ char *stamp = strdup_printf("%.*s/verified/sha256/%s", (int)(blobs - object_path), object_path,
						   blobs + strlen("/blobs/sha256/"));
	if (stamp)
		(void)unlink(stamp);
}

/* Scans the cache and removes the oldest objects while it is over the cap;
 * limit.lock is held.  Returns the bytes left. */
static uint64_t evict_locked(void)
{
	struct object *v = NULL;
	size_t n = 0, allocated = 0;
	uint64_t total = 0;
	time_t now = time(NULL);
	for (size_t d = 0; d < ARRAY_SIZE(object_dirs); d++) {
		_cleanup_free_ char *dir = strdup_printf("%s/%s", limit.dir, object_dirs[d]);
		DIR *dh = dir ? opendir(dir) : NULL;
		if (!dh)
			continue;
		struct dirent *de;
		while ((de = readdir(dh))) {
			struct stat st;
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
			    fstatat(dirfd(dh), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
				continue;
			if (is_temporary(de->d_name)) {
				if (now - st.st_mtime > STALE_TEMP_SECONDS)
					unlinkat(dirfd(dh), de->d_name, 0);
				continue;
			}
			char *path = strdup_printf("%s/%s", dir, de->d_name);
			if (!path || grow_array((void **)&v, &allocated, n + 1, sizeof(*v)) < 0) {
				free(path);
				continue;
			}
			v[n++] = (struct object){ st.st_mtim, (uint64_t)st.st_blocks * 512, path };
			total += (uint64_t)st.st_blocks * 512;
		}
		closedir(dh);
	}
	if (total > limit.cap) {
		uint64_t target = limit.cap / 100 * LOW_WATER_PERCENT;
		qsort(v, n, sizeof(*v), by_age);
		for (size_t i = 0; i < n && total > target; i++)
			if (unlink(v[i].path) == 0) {
				total -= v[i].size;
				unlink_stamp(v[i].path);
			}
	}
	for (size_t i = 0; i < n; i++)
		free(v[i].path);
	free(v);
	return total;
}

int cache_limit_init(const char *cache_dir, uint64_t cap)
{
	pthread_mutex_lock(&limit.lock);
	free(limit.dir);
	limit.dir = cap ? strdup(cache_dir) : NULL;
	limit.cap = limit.dir ? cap : 0;
	if (limit.cap)
		limit.estimate = evict_locked();
	int r = cap && !limit.dir ? -ENOMEM : 0;
	pthread_mutex_unlock(&limit.lock);
	return r;
}

void cache_note_stored(uint64_t bytes)
{
	pthread_mutex_lock(&limit.lock);
	if (limit.cap) {
		limit.estimate += bytes;
		/* The estimate only grows between scans; a scan sets it right. */
		if (limit.estimate > limit.cap)
			limit.estimate = evict_locked();
	}
	pthread_mutex_unlock(&limit.lock);
}

void cache_note_used(int fd)
{
	if (limit.cap)
		(void)futimens(fd, NULL);
}

void cache_note_used_path(const char *path)
{
	if (limit.cap)
		(void)utimensat(AT_FDCWD, path, NULL, AT_SYMLINK_NOFOLLOW);
}

int cache_parse_size(const char *text, uint64_t *ret)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(text, &end, 10);
	if (end == text || errno || text[0] == '-')
		return -EINVAL;
	unsigned shift = 0;
	switch (*end) {
	case '\0':
		break;
	case 'k':
	case 'K':
		shift = 10;
		end++;
		break;
	case 'm':
	case 'M':
		shift = 20;
		end++;
		break;
	case 'g':
	case 'G':
		shift = 30;
		end++;
		break;
	case 't':
	case 'T':
		shift = 40;
		end++;
		break;
	default:
		return -EINVAL;
	}
	if (*end == 'i' || *end == 'B')
		end += *end == 'i' && end[1] == 'B' ? 2 : 1;
	if (*end || (shift && v > (UINT64_MAX >> shift)))
		return -EINVAL;
	*ret = (uint64_t)v << shift;
	return 0;
}

char *cache_path(const char *cache_dir, const char *kind, const char *digest)
{
	return strdup_printf("%s/%s/sha256/%s", cache_dir, kind, digest + strlen("sha256:"));
}

char *cache_index_path(const char *cache_dir, const char *layer_digest)
{
	return cache_path(cache_dir, "index", layer_digest);
}

int cache_open_private(const char *cache_dir, struct err *err)
{
	int r = mkdir_parents(cache_dir, 0700);
	if (r < 0)
		return err_set(err, -r, "cannot create the cache directory \"%s\": %s", cache_dir, strerror(-r));
	_cleanup_close_ int fd = open(cache_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0)
		return err_set(err, errno, "cannot open the cache directory \"%s\": %s", cache_dir, strerror(errno));
	if (st.st_uid != geteuid())
		return err_set(err, EPERM,
			       "the cache directory \"%s\" belongs to uid %u, not to you (uid %u): another user could "
			       "read or change what it holds; use --cache or $IMGFS_CACHE",
			       cache_dir, (unsigned)st.st_uid, (unsigned)geteuid());
	if (st.st_mode & (S_IWGRP | S_IWOTH))
		return err_set(err, EPERM, "the cache directory \"%s\" is writable by others (mode %04o)", cache_dir,
			       (unsigned)(st.st_mode & 07777));
	/* A cache made by an older imgfs was 0755: nothing in it is for others. */
	if ((st.st_mode & 077) && fchmod(fd, 0700) < 0)
		return err_set(err, errno, "cannot make the cache directory \"%s\" private: %s", cache_dir,
			       strerror(errno));
	return 0;
}

static char *stamp_path(const char *cache_dir, const char *digest)
{
	return cache_path(cache_dir, "verified", digest);
}

static bool stamp_of(int fd, char *buf, size_t size)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return false;
	snprintf(buf, size, "%llu %llu %lld %lld.%09ld\n", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino,
		 (long long)st.st_size, (long long)st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
	return true;
}

static bool stamp_matches(const char *path, int fd)
{
	char want[128];
	_cleanup_free_ char *have = NULL;
	size_t len;
	return path && stamp_of(fd, want, sizeof(want)) && read_file_capped(path, sizeof(want), &have, &len) == 0 &&
	       len == strlen(want) && memcmp(have, want, len) == 0;
}

static void stamp_write(const char *path, int fd)
{
	char stamp[128];
	if (path && stamp_of(fd, stamp, sizeof(stamp)))
		(void)write_file_replace(path, stamp, strlen(stamp));
}

bool cache_stamp_valid(const char *cache_dir, const char *digest, int fd)
{
	_cleanup_free_ char *path = stamp_path(cache_dir, digest);
	return stamp_matches(path, fd);
}

bool cache_object_stamp_valid(const char *object_path, int fd)
{
	_cleanup_free_ char *path = strdup_printf("%s.ok", object_path);
	return stamp_matches(path, fd);
}

void cache_object_stamp(const char *object_path, int fd)
{
	_cleanup_free_ char *path = strdup_printf("%s.ok", object_path);
	stamp_write(path, fd);
}

void cache_stamp(const char *cache_dir, const char *digest, int fd)
{
	_cleanup_free_ char *dir = strdup_printf("%s/verified/sha256", cache_dir);
	_cleanup_free_ char *path = stamp_path(cache_dir, digest);
	/* Without a stamp the blob is only hashed again next time. */
	if (dir && mkdir_parents(dir, 0700) == 0)
		stamp_write(path, fd);
}
