/* Python packages of a layer: see py_package.h. */
#include "py_package.h"

#include <stdatomic.h>

#define NOWHERE UINT32_MAX

struct py_packages {
	const struct entry *entries;
	size_t n_entries;
	uint32_t *place; /* per entry: its index in by_package, NOWHERE if in no package */
	/* The files of packages, by their topmost package then blob order. */
	const struct entry **by_package;
	uint32_t n_files;
	uint32_t *first, *end; /* per index in by_package: its package's files */
	uint32_t *root_len;    /* per index in by_package: the length of its package's path */
	atomic_uchar *guessed; /* per index of a package's first file */
};

/* A directory, named by a prefix of a path. */
struct dir_ref {
	const char *path;
	size_t len;
};

static int by_dir_ref(const void *a, const void *b)
{
	const struct dir_ref *x = a, *y = b;
	int c = memcmp(x->path, y->path, x->len < y->len ? x->len : y->len);
	return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* The length of the directory above the one path[0, len) names; 0 at the top. */
static size_t parent_len(const char *path, size_t len)
{
	while (len > 0 && path[len - 1] != '/')
		len--;
	return len ? len - 1 : 0;
}

static bool is_package(const struct dir_ref *packages, size_t n, const char *path, size_t len)
{
	const struct dir_ref key = { path, len };
	return len > 0 && bsearch(&key, packages, n, sizeof(*packages), by_dir_ref);
}

/* The length of the path of the topmost package the file at path is part
 * of, 0 for none. */
static size_t package_root(const struct dir_ref *packages, size_t n, const char *path)
{
	static const char cache_dir[] = "__pycache__";
	size_t dir = path_dir_len(path), parent = parent_len(path, dir);
	size_t name = parent ? parent + 1 : 0;
	if (dir - name == sizeof(cache_dir) - 1 && !memcmp(path + name, cache_dir, dir - name))
		dir = parent;
	size_t root = 0;
	for (; is_package(packages, n, path, dir); dir = parent_len(path, dir))
		root = dir;
	return root;
}

struct package_key {
	const struct entry *e;
	size_t root_len;
};

static int by_package_then_blob(const void *a, const void *b)
{
	const struct package_key *x = a, *y = b;
	int c = by_dir_ref(&(struct dir_ref){ x->e->path, x->root_len }, &(struct dir_ref){ y->e->path, y->root_len });
	return c ? c : (x->e > y->e) - (x->e < y->e);
}

static bool is_init(const struct entry *e)
{
	return !strcmp(path_base_name(e->path), "__init__.py");
}

static bool has_data(const struct entry *e)
{
	return e->type == ENTRY_REG && (e->n_chunks > 0 || e->n_extents > 0);
}

int py_packages_new(const struct entry *entries, size_t n, struct py_packages **ret)
{
	*ret = NULL;
	size_t n_packages = 0, n_files = 0;
	for (size_t i = 0; i < n; i++) {
		n_packages += is_init(&entries[i]);
		n_files += has_data(&entries[i]);
	}
	if (!n_packages || !n_files)
		return 0;
	if (n_files >= NOWHERE)
		return -EFBIG;
	struct py_packages *p = calloc(1, sizeof(*p));
	struct dir_ref *packages = malloc(n_packages * sizeof(*packages));
	struct package_key *keys = malloc(n_files * sizeof(*keys));
	if (p) {
		p->entries = entries;
		p->n_entries = n;
		p->place = malloc(n * sizeof(*p->place));
	}
	if (!p || !packages || !keys || !p->place) {
		free(packages);
		free(keys);
		py_packages_free(p);
		return -ENOMEM;
	}
	n_packages = 0;
	for (size_t i = 0; i < n; i++)
		if (is_init(&entries[i]))
			packages[n_packages++] = (struct dir_ref){ entries[i].path, path_dir_len(entries[i].path) };
	qsort(packages, n_packages, sizeof(*packages), by_dir_ref);
	for (size_t i = 0; i < n; i++) {
		p->place[i] = NOWHERE;
		size_t root = has_data(&entries[i]) ? package_root(packages, n_packages, entries[i].path) : 0;
		if (root)
			keys[p->n_files++] = (struct package_key){ &entries[i], root };
	}
	free(packages);
	qsort(keys, p->n_files, sizeof(*keys), by_package_then_blob);
	size_t m = p->n_files ? p->n_files : 1;
	p->by_package = calloc(m, sizeof(*p->by_package));
	p->first = calloc(m, sizeof(*p->first));
	p->end = calloc(m, sizeof(*p->end));
	p->root_len = calloc(m, sizeof(*p->root_len));
	p->guessed = calloc(m, sizeof(*p->guessed));
	if (!p->by_package || !p->first || !p->end || !p->root_len || !p->guessed) {
		free(keys);
		py_packages_free(p);
		return -ENOMEM;
	}
	for (uint32_t i = 0, first = 0; i < p->n_files; i++) {
		if (i > 0 && by_dir_ref(&(struct dir_ref){ keys[i].e->path, keys[i].root_len },
					&(struct dir_ref){ keys[first].e->path, keys[first].root_len }))
			first = i;
		p->by_package[i] = keys[i].e;
		p->first[i] = first;
		p->root_len[i] = (uint32_t)keys[i].root_len;
		p->place[keys[i].e - entries] = i;
	}
	free(keys);
	for (uint32_t i = p->n_files; i-- > 0;)
		p->end[i] = i + 1 == p->n_files || p->first[i + 1] != p->first[i] ? i + 1 : p->end[i + 1];
	*ret = p;
	return 0;
}

void py_packages_free(struct py_packages *p)
{
	if (!p)
		return;
	free(p->place);
	free(p->by_package);
	free(p->first);
	free(p->end);
	free(p->root_len);
	free(p->guessed);
	free(p);
}

/* Where e is in by_package, NOWHERE if it is in no package. */
static uint32_t place_of(const struct py_packages *p, const struct entry *e)
{
	size_t index = (size_t)(e - p->entries);
	return index < p->n_entries ? p->place[index] : NOWHERE;
}

bool py_package_first_read(struct py_packages *p, const struct entry *e)
{
	uint32_t at = p ? place_of(p, e) : NOWHERE;
	if (at == NOWHERE || !(str_has_suffix(e->path, ".py") || str_has_suffix(e->path, ".pyc")))
		return false;
	return atomic_exchange(&p->guessed[p->first[at]], 1) == 0;
}

/* Programs do not import their tests at start, and a package's tests are
 * often most of it (numpy's: half its compiled modules). */
static bool in_tests(const char *path_in_package)
{
	return strstr(path_in_package, "/tests/") || strstr(path_in_package, "/test/") ||
	       strstr(path_in_package, "/testing/");
}

size_t py_package_guess(const struct py_packages *p, const struct entry *e, const struct entry **out, size_t max)
{
	uint32_t at = p ? place_of(p, e) : NOWHERE;
	if (at == NOWHERE)
		return 0;
	const char *kind = strchr(path_base_name(e->path), '.');
	size_t n = 0;
	for (uint32_t i = p->first[at]; i < p->end[at] && n < max; i++) {
		const char *path = p->by_package[i]->path;
		if (i != at && !in_tests(path + p->root_len[i]) &&
		    ((kind && str_has_suffix(path, kind)) || str_has_suffix(path, ".so")))
			out[n++] = p->by_package[i];
	}
	return n;
}
