/* Python packages of a layer: see py_package.h. */
#include "py_package.h"

#include <stdatomic.h>

#include "file_groups.h"

struct py_packages {
	/* The files of packages, by their topmost package then blob order;
	 * a group's prefix is its package's path. */
	struct file_groups files;
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
	struct py_packages *p = calloc(1, sizeof(*p));
	struct dir_ref *packages = malloc(n_packages * sizeof(*packages));
	struct file_group_key *keys = malloc(n_files * sizeof(*keys));
	if (!p || !packages || !keys) {
		free(p);
		free(packages);
		free(keys);
		return -ENOMEM;
	}
	n_packages = 0;
	for (size_t i = 0; i < n; i++)
		if (is_init(&entries[i]))
			packages[n_packages++] = (struct dir_ref){ entries[i].path, path_dir_len(entries[i].path) };
	qsort(packages, n_packages, sizeof(*packages), by_dir_ref);
	n_files = 0;
	for (size_t i = 0; i < n; i++) {
		size_t root = has_data(&entries[i]) ? package_root(packages, n_packages, entries[i].path) : 0;
		if (root)
			keys[n_files++] = (struct file_group_key){ &entries[i], root, i };
	}
	free(packages);
	int r = file_groups_build(&p->files, entries, n, keys, n_files);
	free(keys);
	if (r == 0 && !(p->guessed = calloc(n_files ? n_files : 1, sizeof(*p->guessed))))
		r = -ENOMEM;
	if (r < 0) {
		py_packages_free(p);
		return r;
	}
	*ret = p;
	return 0;
}

void py_packages_free(struct py_packages *p)
{
	if (!p)
		return;
	file_groups_done(&p->files);
	free(p->guessed);
	free(p);
}

bool py_package_first_read(struct py_packages *p, const struct entry *e)
{
	uint32_t at = p ? file_groups_place(&p->files, e) : FILE_GROUPS_NOWHERE;
	if (at == FILE_GROUPS_NOWHERE || !(str_has_suffix(e->path, ".py") || str_has_suffix(e->path, ".pyc")))
		return false;
	return atomic_exchange(&p->guessed[p->files.first[at]], 1) == 0;
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
	const struct file_groups *g = p ? &p->files : NULL;
	uint32_t at = g ? file_groups_place(g, e) : FILE_GROUPS_NOWHERE;
	if (at == FILE_GROUPS_NOWHERE)
		return 0;
	const char *kind = strchr(path_base_name(e->path), '.');
	size_t n = 0;
	for (uint32_t i = g->first[at]; i < g->end[at] && n < max; i++) {
		const char *path = g->files[i]->path;
		if (i != at && !in_tests(path + g->prefix_len[i]) &&
		    ((kind && str_has_suffix(path, kind)) || str_has_suffix(path, ".so")))
			out[n++] = g->files[i];
	}
	return n;
}
