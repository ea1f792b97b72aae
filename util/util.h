/* Shared helpers: ownership, errors, small file utilities.
 * This layer depends on nothing else in imgfs and on no external library. */
#pragma once

#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- ownership --------------------------------------------------------- */

static inline void freep(void *p)
{
	free(*(void **)p);
}
static inline void closep(int *fd)
{
	if (*fd >= 0) {
		int saved = errno;
		close(*fd);
		errno = saved;
	}
}
static inline void fclosep(FILE **f)
{
	if (*f)
		fclose(*f);
}

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _cleanup_free_ _cleanup_(freep)
#define _cleanup_close_ _cleanup_(closep)
#define _cleanup_fclose_ _cleanup_(fclosep)

/* Hands ownership out of a _cleanup_ variable. */
#define TAKE_PTR(p)                                                                                                    \
	({                                                                                                             \
		__typeof__(p) _tp = (p);                                                                               \
		(p) = NULL;                                                                                            \
		_tp;                                                                                                   \
	})
#define TAKE_FD(fd)                                                                                                    \
	({                                                                                                             \
		int _tf = (fd);                                                                                        \
		(fd) = -1;                                                                                             \
		_tf;                                                                                                   \
	})

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* ---- errors -------------------------------------------------------------
 * Functions that can fail for reasons a user must understand (a registry
 * answer, a corrupt layer) take a `struct err *` and return -errno.  The
 * message says what failed on which object; callers add context in front
 * with err_wrap() as the error travels up.  Library code never prints. */

struct err {
	int code; /* positive errno-style value, 0 when unset */
	char msg[1024];
};

/* Sets the error (if err is non-NULL) and returns -code. */
int err_set(struct err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Prefixes "context: " to the message already in err; returns -err->code. */
int err_wrap(struct err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- strings and memory ------------------------------------------------- */

/* asprintf that returns NULL on failure instead of leaving the pointer undefined. */
char *strdup_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
bool str_has_prefix(const char *s, const char *prefix);
bool str_has_suffix(const char *s, const char *suffix);
/* Of a '/'-separated path: its last component, and the length of what
 * comes before the '/' that starts it (0 for a path with none). */
const char *path_base_name(const char *path);
size_t path_dir_len(const char *path);
/* Grows *array to hold at least `want` elements of `size` bytes; -ENOMEM on failure. */
int grow_array(void **array, size_t *allocated, size_t want, size_t size);
/* Gives back what grow_array() reserved beyond n elements (kept if realloc fails). */
void shrink_array(void **array, size_t n, size_t size);

/* ---- files -------------------------------------------------------------- */

/* mkdir -p with mode 0700 for created components. */
int mkdir_parents(const char *path, mode_t mode);
/* Writes data to path through a temporary file in the same directory, fsyncs
 * and renames it into place, so readers see the old or the new whole file.
 * The file is 0600: what a caller means to share, it chmods. */
int write_file_atomic(const char *path, const void *data, size_t len);
/* The same without the fsync: readers never see half a file, but a crash of
 * the machine may lose it.  For runtime state that dies with the machine. */
int write_file_replace(const char *path, const void *data, size_t len);
/* Reads at most `cap` bytes of path; -EFBIG if the file is larger. */
int read_file_capped(const char *path, size_t cap, char **ret_data, size_t *ret_len);
int read_full_at(int fd, void *buf, size_t len, off_t off);
/* Closes every descriptor above stderr but those in keep (at most 16): a
 * daemon started from a shell holds whatever its caller had open, a lock
 * among them, for as long as it runs. */
void close_inherited_fds(const int *keep, size_t n_keep);
/* Sends sig to the process whose pid pid_path holds, if it still runs
 * the program comm (its /proc comm starts so). */
bool kill_recorded_process(const char *pid_path, const char *comm, int sig);
int write_full(int fd, const void *buf, size_t len);
/* Makes to a copy of from that an exec keeps (dup2 onto itself would not
 * clear FD_CLOEXEC); for a child about to exec. */
int dup_for_exec(int from, int to);
/* Runs fn(arg) on a thread nobody joins; false if none could start. */
bool start_detached_thread(void *(*fn)(void *), void *arg);

/* Work on a thread of its own, joined later; where no thread can start,
 * the same work is done at once, on the caller's. */
struct background_job {
	pthread_t thread;
	bool running;
};
void background_job_start(struct background_job *j, void *(*fn)(void *), void *arg);
void background_job_join(struct background_job *j);

/* At most limit holders at once, the others wait their turn. */
struct turns {
	pthread_mutex_t lock;
	pthread_cond_t free;
	unsigned taken, limit;
};
#define TURNS_INIT(n)                                                                                                  \
	{                                                                                                              \
		PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, (n)                                            \
	}
void turn_take(struct turns *t);
void turn_give_back(struct turns *t);
int write_full_at(int fd, const void *buf, size_t len, off_t off);
/* Maps size bytes of the memory file fd, shared with every other holder
 * of it, sizing the file first unless it was sized before (existing); fd -1
 * maps memory of the caller's own.  Sparse: only pages written take memory.
 * NULL (errno set) on failure; munmap(size) releases it. */
void *map_state_file(int fd, size_t size, bool existing);
/* rm -rf that never follows a symlink and never enters another mount. */
int remove_tree(const char *path);

/* ---- processes ------------------------------------------------------------ */

/* Now on clock, plus ms: the deadline of a pthread_cond_timedwait() on a
 * condition variable of that clock. */
void deadline_after(clockid_t clock, struct timespec *t, unsigned ms);
/* Waits up to timeout_ms for the process behind pidfd (see pidfd_open(2)) to
 * exit; false on a timeout, or when pidfd is -1. */
bool pidfd_wait_exit(int pidfd, int timeout_ms);

/* ---- libraries opened on first use -------------------------------------- */

/* A symbol to look up and where its address goes. */
struct dl_symbol {
	const char *name;
	void **address;
};
/* dlopen()s soname (never closed) and resolves every symbol.  On failure
 * returns -ELIBACC with the reason in errbuf; nothing is half set up that a
 * caller could use, as long as it checks the result. */
int dl_open_symbols(const char *soname, const struct dl_symbol *symbols, size_t n, char *errbuf, size_t size);
