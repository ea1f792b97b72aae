/* What the imgfs commands share (cli.h). */
#include "cli.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>

/* IMGFS_ERROR_FD: where the one error line goes instead of stderr, until
 * it is written or the daemon detaches from its caller. */
static int error_fd = -1;

void error_fd_init(void)
{
	const char *env = getenv(IMGFS_ERROR_FD_ENV);
	char *end;
	long fd = env && *env ? strtol(env, &end, 10) : -1;
	if (fd > STDERR_FILENO && fd <= INT_MAX && *end == '\0' && fcntl((int)fd, F_GETFD) >= 0) {
		error_fd = (int)fd;
		(void)fcntl(error_fd, F_SETFD, FD_CLOEXEC);
	}
}

void error_fd_close(void)
{
	if (error_fd >= 0)
		close(error_fd);
	error_fd = -1;
}

static void vreport(int errnum, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
static void vreport(int errnum, const char *fmt, va_list ap)
{
	char msg[2048];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (error_fd < 0) {
		fprintf(stderr, "imgfs: %s\n", msg);
		return;
	}
	/* One line, whatever the message holds. */
	for (char *p = msg; *p; p++)
		if (*p == '\n')
			*p = ' ';
	dprintf(error_fd, "%d %s\n", errnum, msg);
	error_fd_close();
}

int report(int errnum, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vreport(errnum, fmt, ap);
	va_end(ap);
	return IMGFS_EXIT_FAILED;
}

int report_usage(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vreport(EINVAL, fmt, ap);
	va_end(ap);
	return IMGFS_EXIT_USAGE;
}

void progress_line(const char *line)
{
	fprintf(stderr, "imgfs: %s\n", line);
}

/* A registry that accepts and does not answer is retried for minutes
 * before it is an error: say so while it lasts. */
static void waiting_notice(const char *what, long seconds)
{
	fprintf(stderr, "imgfs: %s: no answer from the registry for %ld s; still waiting\n", what, seconds);
}

/* The blobs streaming at once (plain layers are fetched in parallel). */
static struct {
	pthread_mutex_t lock;
	struct transfer {
		char digest[20];
		uint64_t done, total;
	} blobs[16];
	size_t n;
} transfers = { .lock = PTHREAD_MUTEX_INITIALIZER };

static struct transfer *transfer_find(const char *digest)
{
	for (size_t i = 0; i < transfers.n; i++)
		if (strncmp(transfers.blobs[i].digest, digest, sizeof(transfers.blobs[i].digest) - 1) == 0)
			return &transfers.blobs[i];
	if (transfers.n == ARRAY_SIZE(transfers.blobs))
		return NULL;
	struct transfer *t = &transfers.blobs[transfers.n++];
	snprintf(t->digest, sizeof(t->digest), "%s", digest);
	return t;
}

/* On a terminal, one line redrawn in place: the blob streaming, or the
 * sum of those streaming at once; and a line of its own for each blob
 * fetched, once verified. */
static void transfer_progress(const char *digest, uint64_t done, uint64_t total)
{
	pthread_mutex_lock(&transfers.lock);
	struct transfer *t = transfer_find(digest);
	if (t && done >= total) {
		*t = transfers.blobs[--transfers.n];
		fprintf(stderr, "\rimgfs: fetching %.19s 100%% (%.1f of %.1f MB)\033[K\n", digest, done / 1e6,
			total / 1e6);
	} else if (t) {
		t->done = done;
		t->total = total;
	}
	uint64_t sum_done = 0, sum_total = 0;
	for (size_t i = 0; i < transfers.n; i++) {
		sum_done += transfers.blobs[i].done;
		sum_total += transfers.blobs[i].total;
	}
	unsigned percent = sum_total ? (unsigned)(sum_done * 100 / sum_total) : 100;
	if (transfers.n == 1)
		fprintf(stderr, "\rimgfs: fetching %.19s %3u%% (%.1f of %.1f MB)\033[K", transfers.blobs[0].digest,
			percent, sum_done / 1e6, sum_total / 1e6);
	else if (transfers.n > 1)
		fprintf(stderr, "\rimgfs: fetching %zu blobs %3u%% (%.1f of %.1f MB)\033[K", transfers.n, percent,
			sum_done / 1e6, sum_total / 1e6);
	pthread_mutex_unlock(&transfers.lock);
}

static int insecure_add(char ***list, size_t *n, const char *host)
{
	char **v = realloc(*list, (*n + 2) * sizeof(char *));
	if (!v)
		return -ENOMEM;
	*list = v;
	if (!(v[*n] = strdup(host)))
		return -ENOMEM;
	v[++*n] = NULL;
	return 0;
}

static void insecure_free(char **list)
{
	for (char **p = list; p && *p; p++)
		free(*p);
	free(list);
}

static int insecure_from_env(char ***list, size_t *n)
{
	const char *env = getenv("IMGFS_INSECURE_REGISTRIES");
	if (!env || !*env)
		return 0;
	_cleanup_free_ char *copy = strdup(env);
	char *save = NULL;
	for (char *tok = copy ? strtok_r(copy, ", ", &save) : NULL; tok; tok = strtok_r(NULL, ", ", &save))
		if (insecure_add(list, n, tok) < 0)
			return -ENOMEM;
	return copy ? 0 : -ENOMEM;
}

void error_fd_keep_only(const int *given, size_t n_given)
{
	int keep[8] = { error_fd };
	size_t n = 1;
	for (size_t i = 0; i < n_given && n < ARRAY_SIZE(keep); i++)
		keep[n++] = given[i];
	close_inherited_fds(keep, n);
}

int source_flag(struct source_flags *f, int c, const char *arg)
{
	switch (c) {
	case OPT_CACHE:
		free(f->cache_dir);
		return (f->cache_dir = strdup(arg)) ? 1 : -ENOMEM;
	case OPT_PLATFORM:
		f->platform = arg;
		return 1;
	case OPT_INSECURE:
		return insecure_add(&f->insecure, &f->n_insecure, arg) < 0 ? -ENOMEM : 1;
	case OPT_CERT_DIR:
		f->cert_dir = arg;
		return 1;
	case OPT_FETCH_TIMEOUT:
		f->fetch_timeout = arg;
		return 1;
	case OPT_INDEX_REPO:
		free(f->index_repo);
		return (f->index_repo = strdup(arg)) ? 1 : -ENOMEM;
	default:
		return 0;
	}
}

int source_flags_apply(struct source_flags *f, struct image_options *opts)
{
	if (insecure_from_env(&f->insecure, &f->n_insecure) < 0)
		return report(ENOMEM, "out of memory");
	opts->platform_explicit = f->platform != NULL;
	if (platform_parse(f->platform, &opts->registry.platform) < 0)
		return report_usage("invalid platform \"%s\": expected OS/ARCH[/VARIANT]", f->platform);
	if (!f->cache_dir && !(f->cache_dir = image_default_cache_dir()))
		return errno == ENOENT
			   ? report(ENOENT, "no cache directory: $HOME is not set; use --cache or $IMGFS_CACHE")
			   : report(ENOMEM, "out of memory");
	opts->cache_dir = f->cache_dir;
	opts->registry.insecure_registries = f->insecure;
	opts->registry.cert_dir = f->cert_dir;
	const char *timeout = f->fetch_timeout ? f->fetch_timeout : getenv("IMGFS_FETCH_TIMEOUT");
	if (timeout && *timeout) {
		char *end;
		long seconds = strtol(timeout, &end, 10);
		if (*end || seconds <= 0 || seconds > 86400)
			return report_usage("invalid fetch timeout \"%s\": expected seconds (1 to 86400)", timeout);
		opts->registry.fetch_timeout = seconds;
	}
	struct err err = { 0 };
	const char *repo_env = getenv("IMGFS_INDEX_REPO");
	if (!f->index_repo && repo_env && *repo_env && !(f->index_repo = strdup(repo_env)))
		return report(ENOMEM, "out of memory");
	if (!f->index_repo && imgfs_conf_index_repository(&f->index_repo, &err) < 0)
		return report(err.code, "%s", err.msg);
	struct image_ref repo = { 0 };
	if (f->index_repo && image_ref_parse(f->index_repo, &repo, &err) < 0)
		return report_usage("invalid index repository \"%s\": %s", f->index_repo, err.msg);
	image_ref_done(&repo);
	opts->index_repo = f->index_repo;
	if (isatty(STDERR_FILENO)) {
		opts->progress = progress_line;
		opts->registry.progress = transfer_progress;
	}
	opts->registry.waiting = waiting_notice;
	/* A program that drives imgfs (launch) owns its stderr unless a person watches it. */
	if (error_fd < 0 || isatty(STDERR_FILENO))
		opts->notice = progress_line;
	return 0;
}

void source_flags_done(struct source_flags *f)
{
	free(f->cache_dir);
	free(f->index_repo);
	insecure_free(f->insecure);
}
