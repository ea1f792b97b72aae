/* What the imgfs commands share: the one error line (on stderr, or on the
 * IMGFS_ERROR_FD of a program that drives imgfs), progress on a terminal,
 * and the options of every command that reaches a registry. */
#pragma once

#include <getopt.h>

#include "image.h"
#include "imgfs.h"

/* IMGFS_ERROR_FD, when the caller gave one. */
void error_fd_init(void);
/* Closes every descriptor but stdio, the error descriptor and the n_given
 * others the caller was handed on purpose. */
void error_fd_keep_only(const int *given, size_t n_given);
/* A daemon that detaches must not keep its caller waiting on it. */
void error_fd_close(void);

/* Says what failed, naming the object; returns the exit code of a failure. */
int report(int errnum, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The same for bad arguments. */
int report_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void progress_line(const char *line);

/* The options of every command that reaches a registry. */
enum { OPT_CACHE = 256, OPT_PLATFORM, OPT_INSECURE, OPT_CERT_DIR, OPT_FETCH_TIMEOUT, OPT_INDEX_REPO, OPT_OWN };
#define SOURCE_OPTIONS                                                                                                 \
	{ "cache", required_argument, NULL, OPT_CACHE }, { "platform", required_argument, NULL, OPT_PLATFORM },        \
	    { "insecure-registry", required_argument, NULL, OPT_INSECURE },                                            \
	    { "cert-dir", required_argument, NULL, OPT_CERT_DIR },                                                     \
	    { "fetch-timeout", required_argument, NULL, OPT_FETCH_TIMEOUT },                                           \
	{                                                                                                              \
		"index-repo", required_argument, NULL, OPT_INDEX_REPO                                                  \
	}

struct source_flags {
	char *cache_dir;
	char **insecure;
	size_t n_insecure;
	const char *platform;
	const char *cert_dir;
	const char *fetch_timeout;
	char *index_repo;
};

/* 1 when c was one of SOURCE_OPTIONS, 0 when not, -ENOMEM. */
int source_flag(struct source_flags *f, int c, const char *arg);
/* Puts the flags (and the environment's defaults) into opts; an exit code
 * when they do not make sense. */
int source_flags_apply(struct source_flags *f, struct image_options *opts);
void source_flags_done(struct source_flags *f);
