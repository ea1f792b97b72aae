#include "util.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <dirent.h>
#include <signal.h>
#include <poll.h>
#include <pthread.h>
#include <sys/stat.h>

int err_set(struct err *err, int code, const char *fmt, ...)
{
	if (code < 0)
		code = -code;
	if (code == 0)
		code = EIO;
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
		err->code = code;
	}
	return -code;
}

int err_wrap(struct err *err, const char *fmt, ...)
{
	if (!err)
		return -EIO;
	char prefix[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	/* Shift the old message right; what no longer fits is cut at the end. */
	size_t plen = strlen(prefix), olen = strlen(err->msg);
	if (plen + 2 + olen >= sizeof(err->msg))
		olen = sizeof(err->msg) - plen - 3;
	memmove(err->msg + plen + 2, err->msg, olen);
	err->msg[plen + 2 + olen] = '\0';
	memcpy(err->msg, prefix, plen);
	memcpy(err->msg + plen, ": ", 2);
	if (err->code == 0)
		err->code = EIO;
	return -err->code;
}

char *strdup_printf(const char *fmt, ...)
{
	char *s = NULL;
	va_list ap;
	va_start(ap, fmt);
	int r = vasprintf(&s, fmt, ap);
	va_end(ap);
	return r < 0 ? NULL : s;
}

bool str_has_prefix(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

bool str_has_suffix(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);
	return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

const char *path_base_name(const char *path)
{
	const char *slash = strrchr(path, '/');
	return slash ? slash + 1 : path;
}

size_t path_dir_len(const char *path)
{
	const char *slash = strrchr(path, '/');
	return slash ? (size_t)(slash - path) : 0;
}

void shrink_array(void **array, size_t n, size_t size)
{
	if (!*array || n == 0)
		return;
	void *p = realloc(*array, n * size);
	if (p)
		*array = p;
}

int grow_array(void **array, size_t *allocated, size_t want, size_t size)
{
	if (want <= *allocated)
		return 0;
	size_t n = *allocated ? *allocated : 8;
	while (n < want) {
		if (n > SIZE_MAX / 2)
			return -ENOMEM;
		n *= 2;
	}
	if (n > SIZE_MAX / size)
		return -ENOMEM;
	void *p = realloc(*array, n * size);
	if (!p)
		return -ENOMEM;
	memset((char *)p + *allocated * size, 0, (n - *allocated) * size);
	*array = p;
	*allocated = n;
	return 0;
}

int mkdir_parents(const char *path, mode_t mode)
{
	_cleanup_free_ char *copy = strdup(path);
	if (!copy)
		return -ENOMEM;
	for (char *p = copy + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(copy, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(copy, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* Writes all of buf at off, or at the file position when off < 0 (pipes). */
static int write_all(int fd, const void *buf, size_t len, off_t off)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = off < 0 ? write(fd, p, len) : pwrite(fd, p, len, off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
		if (off >= 0)
			off += n;
	}
	return 0;
}

void *map_state_file(int fd, size_t size, bool existing)
{
	if (fd >= 0 && !existing && ftruncate(fd, (off_t)size) < 0)
		return NULL;
	void *map = fd >= 0
			? mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
			: mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	return map == MAP_FAILED ? NULL : map;
}

int dup_for_exec(int from, int to)
{
	if (from == to)
		return fcntl(to, F_SETFD, 0) < 0 ? -errno : 0;
	return dup2(from, to) < 0 ? -errno : 0;
}

int write_full(int fd, const void *buf, size_t len)
{
	return write_all(fd, buf, len, -1);
}

int write_full_at(int fd, const void *buf, size_t len, off_t off)
{
	return write_all(fd, buf, len, off);
}

int read_full_at(int fd, void *buf, size_t len, off_t off)
{
	char *p = buf;
	while (len > 0) {
		ssize_t n = pread(fd, p, len, off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -ENODATA;
		p += n;
		len -= (size_t)n;
		off += n;
	}
	return 0;
}

static int write_file_renamed(const char *path, const void *data, size_t len, bool durable)
{
	_cleanup_free_ char *tmp = strdup_printf("%s.tmp.XXXXXX", path);
	if (!tmp)
		return -ENOMEM;
	_cleanup_close_ int fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = write_full(fd, data, len);
	if (r == 0 && durable && fsync(fd) < 0)
		r = -errno;
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0)
		unlink(tmp);
	return r;
}

int write_file_atomic(const char *path, const void *data, size_t len)
{
	return write_file_renamed(path, data, len, true);
}

int write_file_replace(const char *path, const void *data, size_t len)
{
	return write_file_renamed(path, data, len, false);
}

int read_file_capped(const char *path, size_t cap, char **ret_data, size_t *ret_len)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	if ((uint64_t)st.st_size > cap)
		return -EFBIG;
	_cleanup_free_ char *data = malloc((size_t)st.st_size + 1);
	if (!data)
		return -ENOMEM;
	size_t got = 0;
	for (;;) {
		if (got == (size_t)st.st_size + 1)
			return -EFBIG; /* grew while we read it */
		ssize_t n = read(fd, data + got, (size_t)st.st_size + 1 - got);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	data[got] = '\0';
	*ret_len = got;
	*ret_data = TAKE_PTR(data);
	return 0;
}

/* A directory remove_tree() could not empty: it is not entered again. */
struct kept_dir {
	dev_t dev;
	ino_t ino;
};

static bool is_kept(const struct kept_dir *kept, size_t n, const struct stat *st)
{
	for (size_t i = 0; i < n; i++)
		if (kept[i].dev == st->st_dev && kept[i].ino == st->st_ino)
			return true;
	return false;
}

/* Removes what it can of the entries of the directory open on fd; enters
 * the first subdirectory it cannot unlink, returning its name (for the
 * caller to push) and leaving fd on it.  NULL when the directory is done
 * with; *err keeps the first failure. */
static char *remove_entries(int *fd, dev_t dev, const struct kept_dir *kept, size_t n_kept, int *err)
{
	int copy = dup(*fd);
	DIR *d = copy >= 0 ? fdopendir(copy) : NULL;
	if (!d) {
		if (copy >= 0)
			close(copy);
		*err = *err ? *err : errno;
		return NULL;
	}
	char *entered = NULL;
	for (struct dirent *de; !entered && (de = readdir(d));) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (unlinkat(*fd, de->d_name, 0) == 0 || errno == ENOENT)
			continue;
		if (errno != EISDIR) {
			*err = *err ? *err : errno;
			continue;
		}
		struct stat st;
		int child = openat(*fd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (child < 0 || fstat(child, &st) < 0 || st.st_dev != dev || is_kept(kept, n_kept, &st)) {
			/* Another file system mounted there is not ours to empty. */
			*err = *err ? *err : child < 0 ? errno : EBUSY;
			if (child >= 0)
				close(child);
			continue;
		}
		if (!(entered = strdup(de->d_name))) {
			close(child);
			*err = *err ? *err : ENOMEM;
			continue;
		}
		close(*fd);
		*fd = child;
	}
	closedir(d);
	return entered;
}

int remove_tree(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT                      ? 0
		       : errno == ENOTDIR || errno == ELOOP ? (unlink(path) < 0 ? -errno : 0)
							    : -errno;
	struct stat top;
	if (fstat(fd, &top) < 0) {
		close(fd);
		return -errno;
	}
	/* One descriptor and a stack of names, not one descriptor or one path
	 * per level: a tree nested past PATH_MAX, or past the descriptor
	 * limit, goes too. */
	char **names = NULL;
	size_t depth = 0, allocated = 0, n_kept = 0, kept_allocated = 0;
	struct kept_dir *kept = NULL;
	int err = 0;
	for (;;) {
		char *entered = remove_entries(&fd, top.st_dev, kept, n_kept, &err);
		if (entered) {
			if (grow_array((void **)&names, &allocated, depth + 1, sizeof(*names)) < 0) {
				free(entered);
				err = err ? err : ENOMEM;
				break;
			}
			names[depth++] = entered;
			continue;
		}
		if (depth == 0)
			break;
		struct stat here;
		int parent = openat(fd, "..", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (parent < 0 || fstat(fd, &here) < 0) {
			err = err ? err : errno;
			if (parent >= 0)
				close(parent);
			break;
		}
		close(fd);
		fd = parent;
		char *name = names[--depth];
		if (unlinkat(fd, name, AT_REMOVEDIR) < 0 && errno != ENOENT) {
			err = err ? err : errno;
			if (grow_array((void **)&kept, &kept_allocated, n_kept + 1, sizeof(*kept)) < 0) {
				free(name); /* cannot remember it: stop rather than enter it again */
				break;
			}
			kept[n_kept++] = (struct kept_dir){ here.st_dev, here.st_ino };
		}
		free(name);
	}
	close(fd);
	while (depth)
		free(names[--depth]);
	free(names);
	free(kept);
	if (rmdir(path) < 0 && errno != ENOENT)
		err = err ? err : errno;
	return -err;
}

void deadline_after(clockid_t clock, struct timespec *t, unsigned ms)
{
	clock_gettime(clock, t);
	t->tv_sec += ms / 1000;
	t->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (t->tv_nsec >= 1000000000L) {
		t->tv_sec++;
		t->tv_nsec -= 1000000000L;
	}
}

bool pidfd_wait_exit(int pidfd, int timeout_ms)
{
	struct pollfd p = { pidfd, POLLIN, 0 };
	int n;
	if (pidfd < 0)
		return false;
	while ((n = poll(&p, 1, timeout_ms)) < 0 && errno == EINTR)
		;
	return n > 0;
}

int dl_open_symbols(const char *soname, const struct dl_symbol *symbols, size_t n, char *errbuf, size_t size)
{
	void *handle = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
	if (!handle) {
		snprintf(errbuf, size, "cannot load %s: %s", soname, dlerror());
		return -ELIBACC;
	}
	for (size_t i = 0; i < n; i++)
		if (!(*symbols[i].address = dlsym(handle, symbols[i].name))) {
			snprintf(errbuf, size, "%s has no %s", soname, symbols[i].name);
			return -ELIBACC;
		}
	return 0;
}

static int compare_ints(const void *a, const void *b)
{
	int x = *(const int *)a, y = *(const int *)b;
	return x < y ? -1 : x > y;
}

void close_inherited_fds(const int *keep, size_t n_keep)
{
	int sorted[16];
	size_t n = 0;
	for (size_t i = 0; i < n_keep && n < ARRAY_SIZE(sorted); i++)
		if (keep[i] > STDERR_FILENO)
			sorted[n++] = keep[i];
	qsort(sorted, n, sizeof(sorted[0]), compare_ints);
	unsigned first = STDERR_FILENO + 1;
	for (size_t i = 0; i <= n; i++) {
		unsigned last = i < n ? (unsigned)sorted[i] - 1 : ~0u;
		if (first <= last && close_range(first, last, 0) < 0) {
			/* Without close_range (before Linux 5.9): one by one. */
			long max = sysconf(_SC_OPEN_MAX);
			for (long fd = first; fd <= (long)last && fd < max; fd++)
				close((int)fd);
		}
		if (i < n)
			first = (unsigned)sorted[i] + 1;
	}
}

bool kill_recorded_process(const char *pid_path, const char *comm, int sig)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	long pid;
	if (read_file_capped(pid_path, 64, &text, &len) < 0 || (pid = strtol(text, NULL, 10)) <= 1)
		return false;
	char name[64] = "", path[64];
	snprintf(path, sizeof(path), "/proc/%ld/comm", pid);
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	/* Only that program: the number may have been taken over since. */
	if (!f || !fgets(name, sizeof(name), f) || strncmp(name, comm, strlen(comm)) != 0)
		return false;
	return kill((pid_t)pid, sig) == 0;
}

void background_job_start(struct background_job *j, void *(*fn)(void *), void *arg)
{
	j->running = pthread_create(&j->thread, NULL, fn, arg) == 0;
	if (!j->running)
		fn(arg);
}

void background_job_join(struct background_job *j)
{
	if (j->running)
		pthread_join(j->thread, NULL);
	j->running = false;
}

void turn_take(struct turns *t)
{
	pthread_mutex_lock(&t->lock);
	while (t->taken >= t->limit)
		pthread_cond_wait(&t->free, &t->lock);
	t->taken++;
	pthread_mutex_unlock(&t->lock);
}

void turn_give_back(struct turns *t)
{
	pthread_mutex_lock(&t->lock);
	t->taken--;
	pthread_cond_signal(&t->free);
	pthread_mutex_unlock(&t->lock);
}

bool start_detached_thread(void *(*fn)(void *), void *arg)
{
	pthread_t thread;
	pthread_attr_t attr;
	bool started = pthread_attr_init(&attr) == 0 &&
		       pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
		       pthread_create(&thread, &attr, fn, arg) == 0;
	pthread_attr_destroy(&attr);
	return started;
}
