/* The container's log; see ctr_log.h. */
#include "ctr_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "shim.h"
#include "util.h"

int ctr_log_open(struct ctr_log *log, const char *path, uint64_t size_max, const char *id)
{
	log->size_max = size_max;
	log->id = id;
	if ((log->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) < 0)
		return -errno;
	struct stat st;
	if (fstat(log->fd, &st) == 0)
		log->size = (uint64_t)st.st_size;
	if ((log->error_fd = open(SHIM_LOG_ERROR_FILE, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0)
		return -errno;
	int e = posix_fallocate(log->error_fd, 0, SHIM_LOG_ERROR_SIZE);
	return -e;
}

/* A failed log write is said once, in the state directory, where launch
 * logs finds it and says the log is incomplete; a later write that works
 * clears it. */
static void write_result(struct ctr_log *log, int errnum)
{
	if (errnum == log->last_errno)
		return;
	log->last_errno = errnum;
	/* Written into room taken when the log was opened: a full disk does
	 * not keep it from saying so.  All zeros: nothing to say. */
	char text[SHIM_LOG_ERROR_SIZE] = "";
	if (errnum)
		snprintf(text, sizeof(text), "%s\n", strerror(errnum));
	if (log->error_fd >= 0)
		(void)write_full_at(log->error_fd, text, sizeof(text), 0);
	if (errnum)
		fprintf(stderr, "launch-shim: cannot write the log of %s: %s\n", log->id, strerror(errnum));
}

static void record(struct ctr_log *log, int stream, const char *text, size_t len, bool full)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	struct tm tm;
	gmtime_r(&ts.tv_sec, &tm);
	char head[96];
	size_t n = strftime(head, sizeof(head), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(head + n, sizeof(head) - n, ".%09ldZ %s %c ", ts.tv_nsec, stream ? "stderr" : "stdout",
		 full ? 'F' : 'P');
	struct iovec iov[3] = { { head, strlen(head) }, { (void *)text, len }, { (void *)"\n", 1 } };
	size_t line_len = iov[0].iov_len + len + 1;
	/* podman's --log-size-max: the log is truncated and starts again. */
	if (log->size_max && log->size + line_len > log->size_max && ftruncate(log->fd, 0) == 0)
		log->size = 0;
	/* One writev per line keeps lines whole for a reader following the log. */
	ssize_t written = writev(log->fd, iov, 3);
	if (written >= 0)
		log->size += (uint64_t)written;
	write_result(log, written == (ssize_t)line_len ? 0 : written < 0 ? errno : EIO);
}

static void flush_stream(struct ctr_log *log, int stream)
{
	if (log->partial_len[stream]) {
		record(log, stream, log->partial[stream], log->partial_len[stream], false);
		log->partial_len[stream] = 0;
	}
}

void ctr_log_output(struct ctr_log *log, int stream, const char *data, size_t len)
{
	/* The output comes in the order it was written: the other stream's
	 * unfinished line goes first, so the log keeps that order. */
	flush_stream(log, !stream);
	char *buf = log->partial[stream];
	size_t *have = &log->partial_len[stream];
	for (size_t i = 0; i < len; i++) {
		if (data[i] == '\n') {
			record(log, stream, buf, *have, true);
			*have = 0;
			continue;
		}
		if (*have == sizeof(log->partial[stream])) {
			record(log, stream, buf, *have, false);
			*have = 0;
		}
		buf[(*have)++] = data[i];
	}
}

void ctr_log_flush(struct ctr_log *log)
{
	for (int s = 0; s < 2; s++)
		flush_stream(log, s);
}
