/* A layer's files grouped by a prefix of their path (their directory, the
 * topmost package they are part of), each group's files in an order the
 * caller gives: the guesses fetch a group's files at a time, in that order
 * (speculate.c, py_package.c; private to fs/). */
#pragma once

#include "layer.h"

#define FILE_GROUPS_NOWHERE UINT32_MAX

struct file_group_key {
	const struct entry *e;
	size_t prefix_len; /* of e->path: what names its group */
	uint64_t order;    /* within the group */
};

struct file_groups {
	const struct entry *entries; /* the layer's, to number an entry */
	size_t n_entries;
	const struct entry **files; /* by group, then order */
	uint32_t n_files;
	uint32_t *place;       /* per entry: its index in files, FILE_GROUPS_NOWHERE if none */
	uint32_t *first, *end; /* per index in files: where its group's files start and end */
	uint32_t *prefix_len;  /* per index in files */
};

/* Groups the files keys[0, n) name, of entries[0, n_entries), which must
 * outlive g; sorts keys.  -EFBIG when n does not fit a place. */
int file_groups_build(struct file_groups *g, const struct entry *entries, size_t n_entries, struct file_group_key *keys,
		      size_t n);
/* e's index in g->files, FILE_GROUPS_NOWHERE when it is in no group. */
uint32_t file_groups_place(const struct file_groups *g, const struct entry *e);
void file_groups_done(struct file_groups *g);
