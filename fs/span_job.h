/* Requests of several ranges for background fetches: runs of adjacent
 * chunks ("spans") of several files gathered into one multi-range request,
 * because a registry's cost per request dwarfs its cost per range
 * (docker-registry: about 4 ms of CPU against 1.3 ms).  Pure planning, no
 * I/O (private to fs/; chunk_fetch.c is its one user). */
#pragma once

#include "layer.h"
#include "registry.h"

#define JOB_SPANS 32
#define JOB_CHUNKS 256
#define JOB_BYTES (4u << 20)

struct span_job {
	const struct chunk *chunks[JOB_CHUNKS];
	size_t n_chunks;
	size_t first[JOB_SPANS]; /* where each span starts in chunks */
	size_t n_spans;
	uint64_t bytes;
};

bool span_job_has_room(const struct span_job *j, const struct chunk *c);
void span_job_add(struct span_job *j, const struct chunk *c);
/* Span s: its chunks are chunks[first[s] .. span_job_end(j, s)). */
size_t span_job_end(const struct span_job *j, size_t s);
/* The ranges to ask for, ascending, with range_of[s] the one that holds
 * span s and *ret_total their bytes.  Spans a little apart share a range:
 * the tar headers of the next file, in members of their own, lie between
 * the files of an image laid out for its workload, and a range costs the
 * registry more than a few KiB.  False when spans overlap (a hostile
 * TOC, or small files sharing a gzip member): the caller then fetches
 * them one by one. */
bool span_job_plan(const struct span_job *j, struct byterange ranges[JOB_SPANS], size_t range_of[JOB_SPANS],
		   size_t *ret_n_ranges, size_t *ret_total);
