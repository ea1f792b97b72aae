/* Guessing what a workload reads next from what it reads: when a read of a
 * chunked layer has to fetch, the files beside it (same directory) are
 * fetched in the background, on connections of their own, once per
 * directory, after its second miss of a small file, and within a byte
 * budget; and at the first miss of a module of a Python package (a
 * directory with an __init__.py), the modules of the whole package.
 * Programs read the files of one directory together (a package's modules,
 * a program's data files), and on a link with a real round trip a guess
 * that goes out with the miss saves the round trips the reads would have
 * made one after another (private to fs/; chunk_fetch.c is its one user). */
#pragma once

#include <stdatomic.h>

#include "layer.h"

struct registry_client;
struct speculation;

/* What the source does for the speculation; all may run on its threads. */
struct speculation_ops {
	void *ctx;
	/* A connection for one worker thread, NULL when none can be made. */
	struct registry_client *(*new_client)(void *ctx);
	/* Fetches the chunks of files in their order, at most per_file
	 * compressed bytes of each and budget in all; returns the bytes it
	 * claimed (what was cached or in flight is not counted). */
	uint64_t (*fetch)(void *ctx, const struct entry **files, size_t n, uint64_t per_file, uint64_t budget,
			  struct registry_client *client, const atomic_bool *stop);
};

/* Groups l's files by directory; l's entries must outlive it. */
int speculation_new(const struct layer *l, const struct speculation_ops *ops, struct speculation **ret);
/* Starts the worker threads: in the process that serves the mount. */
void speculation_start(struct speculation *s);
/* A read of e has to fetch (called as its request goes out): queue the
 * rest of its directory when this is its second small file to miss.
 * Cheap, never blocks on I/O. */
void speculation_note_miss(struct speculation *s, const struct entry *e);
/* The first read of e is about to be served: queue its package when it is
 * the package's first module read and not in the prefetch set (a profile
 * that lists it lists what its package's start reads).  A module found
 * fetched (by a neighbour's read-ahead) says no less than one that
 * misses.  Cheap, never blocks on I/O. */
void speculation_note_first_read(struct speculation *s, const struct entry *e);
/* Stops and joins the workers; a guess under way ends after its request. */
void speculation_stop(struct speculation *s);
void speculation_free(struct speculation *s);
