/* The container's log (SHIM_LOG_FILE), in podman's k8s-file form: one
 * record "TIME STREAM F|P TEXT\n" per line written, F for a whole line, P
 * for a part of one (a line longer than a record takes, or the output
 * switched to the other stream before the line ended). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CTR_LOG_RECORD_MAX 8192

struct ctr_log {
	int fd;
	int error_fd;      /* SHIM_LOG_ERROR_FILE, its room taken in advance */
	int last_errno;    /* the last failed write, reported once; 0 once writes work */
	uint64_t size;     /* what the log holds now */
	uint64_t size_max; /* podman's --log-size-max; 0: no bound */
	const char *id;    /* the container, for messages */
	char partial[2][CTR_LOG_RECORD_MAX];
	size_t partial_len[2];
	char stamp[40]; /* the time of the write being logged */
	char batch[64 << 10];
	size_t batch_len;
};

/* Opens the log at path for appending and SHIM_LOG_ERROR_FILE in the
 * current directory (the state directory).  Returns 0 or -errno. */
int ctr_log_open(struct ctr_log *log, const char *path, uint64_t size_max, const char *id);

/* What the container wrote to stream (0 stdout, 1 stderr). */
void ctr_log_output(struct ctr_log *log, int stream, const char *data, size_t len);

/* Records the lines still unfinished, at the end. */
void ctr_log_flush(struct ctr_log *log);
