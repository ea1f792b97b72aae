/* The container's log; see ctr_log.h. */
#include "ctr_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
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

/* The records of one write go out in one write(2) of whole lines, stamped
 * with the time the write came: a line per write(2), as before, took the
 * shim longer than the container took to make the lines. */
static void write_batch(struct ctr_log *log)
{
	if (!log->batch_len)
		return;
	ssize_t written = write(log->fd, log->batch, log->batch_len);
	if (written >= 0)
		log->size += (uint64_t)written;
	write_result(log, written == (ssize_t)log->batch_len ? 0 : written < 0 ? errno : EIO);
	log->batch_len = 0;
}

static void record(struct ctr_log *log, int stream, const char *text, size_t len, bool full)
{
	char head[80];
	int n = snprintf(head, sizeof(head), "%s %s %c ", log->stamp, stream ? "stderr" : "stdout", full ? 'F' : 'P');
	size_t head_len = n > 0 ? (size_t)n : 0, record_len = head_len + len + 1;
	/* podman's --log-size-max: the log is truncated and starts again
	 * (what is pending would go with it). */
	if (log->size_max && log->size + log->batch_len + record_len > log->size_max && ftruncate(log->fd, 0) == 0) {
		log->size = 0;
		log->batch_len = 0;
	}
	if (log->batch_len + record_len > sizeof(log->batch))
		write_batch(log);
	memcpy(log->batch + log->batch_len, head, head_len);
	memcpy(log->batch + log->batch_len + head_len, text, len);
	log->batch[log->batch_len + head_len + len] = '\n';
	log->batch_len += record_len;
}

static void flush_stream(struct ctr_log *log, int stream)
{
	if (log->partial_len[stream]) {
		record(log, stream, log->partial[stream], log->partial_len[stream], false);
		log->partial_len[stream] = 0;
	}
}

static void stamp_now(struct ctr_log *log)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	struct tm tm;
	gmtime_r(&ts.tv_sec, &tm);
	size_t n = strftime(log->stamp, sizeof(log->stamp), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(log->stamp + n, sizeof(log->stamp) - n, ".%09ldZ", ts.tv_nsec);
}

void ctr_log_output(struct ctr_log *log, int stream, const char *data, size_t len)
{
	stamp_now(log);
	/* The output comes in the order it was written: the other stream's
	 * unfinished line goes first, so the log keeps that order. */
	flush_stream(log, !stream);
	char *buf = log->partial[stream];
	size_t *have = &log->partial_len[stream];
	for (const char *p = data, *end = data + len; p < end;) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		for (size_t seg = (size_t)((nl ? nl : end) - p); seg > 0;) {
			if (*have == sizeof(log->partial[stream])) {
				record(log, stream, buf, *have, false);
				*have = 0;
			}
			size_t room = sizeof(log->partial[stream]) - *have, n = seg < room ? seg : room;
			memcpy(buf + *have, p, n);
			*have += n;
			p += n;
			seg -= n;
		}
		if (nl) {
			record(log, stream, buf, *have, true);
			*have = 0;
			p = nl + 1;
		}
	}
	write_batch(log);
}

void ctr_log_flush(struct ctr_log *log)
{
	stamp_now(log);
	for (int s = 0; s < 2; s++)
		flush_stream(log, s);
	write_batch(log);
}
