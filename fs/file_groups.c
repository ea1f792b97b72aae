/* Files grouped by a prefix of their path: see file_groups.h. */
#include "file_groups.h"

/* Groups by name (a shorter prefix first where one begins the other), then
 * by the caller's order; entries break ties, so the sort is stable. */
static int by_group_then_order(const void *a, const void *b)
{
	const struct file_group_key *x = a, *y = b;
	size_t xl = x->prefix_len, yl = y->prefix_len;
	int c = memcmp(x->e->path, y->e->path, xl < yl ? xl : yl);
	if (c || xl != yl)
		return c ? c : (xl < yl ? -1 : 1);
	if (x->order != y->order)
		return x->order < y->order ? -1 : 1;
	return (x->e > y->e) - (x->e < y->e);
}

static bool same_group(const struct file_group_key *x, const struct file_group_key *y)
{
	return x->prefix_len == y->prefix_len && !memcmp(x->e->path, y->e->path, x->prefix_len);
}

int file_groups_build(struct file_groups *g, const struct entry *entries, size_t n_entries, struct file_group_key *keys,
		      size_t n)
{
	*g = (struct file_groups){ .entries = entries, .n_entries = n_entries };
	if (n >= FILE_GROUPS_NOWHERE)
		return -EFBIG;
	size_t m = n ? n : 1;
	g->files = calloc(m, sizeof(*g->files));
	g->place = malloc((n_entries ? n_entries : 1) * sizeof(*g->place));
	g->first = calloc(m, sizeof(*g->first));
	g->end = calloc(m, sizeof(*g->end));
	g->prefix_len = calloc(m, sizeof(*g->prefix_len));
	if (!g->files || !g->place || !g->first || !g->end || !g->prefix_len) {
		file_groups_done(g);
		return -ENOMEM;
	}
	for (size_t i = 0; i < n_entries; i++)
		g->place[i] = FILE_GROUPS_NOWHERE;
	qsort(keys, n, sizeof(*keys), by_group_then_order);
	g->n_files = (uint32_t)n;
	for (uint32_t i = 0, first = 0; i < g->n_files; i++) {
		if (i > 0 && !same_group(&keys[i], &keys[first]))
			first = i;
		g->files[i] = keys[i].e;
		g->first[i] = first;
		g->prefix_len[i] = (uint32_t)keys[i].prefix_len;
		g->place[keys[i].e - entries] = i;
	}
	for (uint32_t i = g->n_files; i-- > 0;)
		g->end[i] = i + 1 == g->n_files || g->first[i + 1] != g->first[i] ? i + 1 : g->end[i + 1];
	return 0;
}

uint32_t file_groups_place(const struct file_groups *g, const struct entry *e)
{
	size_t index = (size_t)(e - g->entries);
	return index < g->n_entries ? g->place[index] : FILE_GROUPS_NOWHERE;
}

void file_groups_done(struct file_groups *g)
{
	free(g->files);
	free(g->place);
	free(g->first);
	free(g->end);
	free(g->prefix_len);
	*g = (struct file_groups){ 0 };
}
