/* containers-registries.conf(5), read from the files podman reads and in
 * its order: [[registry]] prefixes (longest match, "*." wildcards) with
 * location, insecure, blocked and mirrors; unqualified-search-registries and
 * [aliases] for short names. */
#include "registry.h"
#include "toml.h"

#include <dirent.h>
#include <sys/stat.h>

#define CONF_FILE_MAX_SIZE (1u << 20)

enum mirror_pull { PULL_FROM_ALL, PULL_DIGEST_ONLY, PULL_TAG_ONLY };

struct conf_mirror {
	char *location;
	bool insecure;
	enum mirror_pull pull;
};

struct conf_registry {
	char *prefix, *location, *file;
	bool insecure, blocked, mirror_by_digest_only;
	struct conf_mirror *mirrors;
	size_t n_mirrors;
};

struct registries_conf {
	struct conf_registry *registries;
	size_t n_registries;
	struct json_object *search;  /* array of strings, or NULL */
	struct json_object *aliases; /* object of strings */
	/* short-name-aliases.conf, which podman writes and reads before the
	 * aliases of registries.conf. */
	struct json_object *cached_aliases;
};

static void conf_registry_done(struct conf_registry *r)
{
	free(r->prefix);
	free(r->location);
	free(r->file);
	for (size_t i = 0; i < r->n_mirrors; i++)
		free(r->mirrors[i].location);
	free(r->mirrors);
}

void registries_conf_free(struct registries_conf *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->n_registries; i++)
		conf_registry_done(&c->registries[i]);
	free(c->registries);
	json_object_put(c->search);
	json_object_put(c->aliases);
	json_object_put(c->cached_aliases);
	free(c);
}

static const char *get_string(struct json_object *o, const char *key)
{
	struct json_object *v;
	return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
		   ? json_object_get_string(v)
		   : NULL;
}

static bool get_bool(struct json_object *o, const char *key)
{
	struct json_object *v;
	return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_boolean) &&
	       json_object_get_boolean(v);
}

static int add_mirrors(struct conf_registry *reg, struct json_object *entry, const char *file, struct err *err)
{
	struct json_object *mirrors;
	if (!json_object_object_get_ex(entry, "mirror", &mirrors))
		return 0;
	if (!json_object_is_type(mirrors, json_type_array))
		return err_set(err, EINVAL, "%s: registry \"%s\": mirror must be [[registry.mirror]] tables", file,
			       reg->prefix);
	size_t n = json_object_array_length(mirrors);
	reg->mirrors = calloc(n ? n : 1, sizeof(*reg->mirrors));
	if (!reg->mirrors)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		struct json_object *m = json_object_array_get_idx(mirrors, i);
		const char *location = get_string(m, "location"), *pull = get_string(m, "pull-from-mirror");
		if (!location || !*location)
			return err_set(err, EINVAL, "%s: a mirror of registry \"%s\" has no location", file,
				       reg->prefix);
		struct conf_mirror *cm = &reg->mirrors[reg->n_mirrors];
		if (!pull || !*pull || strcmp(pull, "all") == 0)
			cm->pull = PULL_FROM_ALL;
		else if (strcmp(pull, "digest-only") == 0)
			cm->pull = PULL_DIGEST_ONLY;
		else if (strcmp(pull, "tag-only") == 0)
			cm->pull = PULL_TAG_ONLY;
		else
			return err_set(err, EINVAL,
				       "%s: mirror \"%s\": pull-from-mirror must be all, digest-only or "
				       "tag-only, not \"%s\"",
				       file, location, pull);
		if (!(cm->location = strdup(location)))
			return -ENOMEM;
		cm->insecure = get_bool(m, "insecure");
		reg->n_mirrors++;
	}
	return 0;
}

/* A later file's [[registry]] with the same prefix replaces the earlier. */
static int add_registry(struct registries_conf *c, struct json_object *entry, const char *file, struct err *err)
{
	struct conf_registry reg = { 0 };
	const char *prefix = get_string(entry, "prefix"), *location = get_string(entry, "location");
	if ((!prefix || !*prefix) && (!location || !*location))
		return err_set(err, EINVAL, "%s: a [[registry]] has neither prefix nor location", file);
	reg.prefix = strdup(prefix && *prefix ? prefix : location);
	reg.location = location && *location ? strdup(location) : NULL;
	reg.file = strdup(file);
	reg.insecure = get_bool(entry, "insecure");
	reg.blocked = get_bool(entry, "blocked");
	reg.mirror_by_digest_only = get_bool(entry, "mirror-by-digest-only");
	int r = reg.prefix && reg.file && (reg.location || !location || !*location) ? 0 : -ENOMEM;
	if (r == 0 && str_has_prefix(reg.prefix, "*.") && reg.location)
		r = err_set(err, EINVAL, "%s: registry \"%s\": a wildcard prefix cannot have a location", file,
			    reg.prefix);
	if (r == 0)
		r = add_mirrors(&reg, entry, file, err);
	if (r < 0) {
		conf_registry_done(&reg);
		return r;
	}
	for (size_t i = 0; i < c->n_registries; i++)
		if (strcmp(c->registries[i].prefix, reg.prefix) == 0) {
			conf_registry_done(&c->registries[i]);
			c->registries[i] = reg;
			return 0;
		}
	struct conf_registry *grown = realloc(c->registries, (c->n_registries + 1) * sizeof(*grown));
	if (!grown) {
		conf_registry_done(&reg);
		return -ENOMEM;
	}
	c->registries = grown;
	c->registries[c->n_registries++] = reg;
	return 0;
}

/* The strings of registries.KIND.registries in a version 1 file, or NULL. */
static struct json_object *version1_list(struct json_object *registries, const char *kind, const char *file,
					 struct err *err, int *r)
{
	struct json_object *table, *list;
	if (!json_object_object_get_ex(registries, kind, &table))
		return NULL;
	if (!json_object_object_get_ex(table, "registries", &list))
		return NULL;
	bool strings = json_object_is_type(list, json_type_array);
	for (size_t i = 0; strings && i < json_object_array_length(list); i++)
		strings = json_object_is_type(json_object_array_get_idx(list, i), json_type_string);
	if (!strings) {
		*r = err_set(err, EINVAL, "%s: [registries.%s] registries must be an array of strings", file, kind);
		return NULL;
	}
	return list;
}

/* The version 1 format, as containers/image still reads it:
 * [registries.search], [registries.insecure] and [registries.block], each
 * a list of registries. */
static int add_version1(struct registries_conf *c, struct json_object *registries, const char *file, struct err *err)
{
	int r = 0;
	if (!json_object_is_type(registries, json_type_object))
		return err_set(err, EINVAL, "%s: registries must be a table ([registries.search])", file);
	struct json_object *search = version1_list(registries, "search", file, err, &r);
	if (search) {
		json_object_put(c->search);
		c->search = json_object_get(search);
	}
	static const char *const kinds[] = { "insecure", "block" };
	for (size_t k = 0; r == 0 && k < ARRAY_SIZE(kinds); k++) {
		struct json_object *list = version1_list(registries, kinds[k], file, err, &r);
		for (size_t i = 0; list && r == 0 && i < json_object_array_length(list); i++) {
			struct json_object *entry = json_object_new_object();
			if (!entry ||
			    json_object_object_add(entry, "prefix",
						   json_object_get(json_object_array_get_idx(list, i))) < 0 ||
			    json_object_object_add(entry, k == 0 ? "insecure" : "blocked",
						   json_object_new_boolean(true)) < 0)
				r = -ENOMEM;
			else
				r = add_registry(c, entry, file, err);
			json_object_put(entry);
		}
	}
	return r;
}

/* Adds what one file's parsed TOML says; takes root. */
static int add_file(struct registries_conf *c, struct json_object *root, const char *file, struct err *err)
{
	struct json_object *v;
	int r = 0;
	if (json_object_object_get_ex(root, "registries", &v)) {
		r = add_version1(c, v, file, err);
		goto out;
	}
	if (json_object_object_get_ex(root, "registry", &v)) {
		if (!json_object_is_type(v, json_type_array)) {
			r = err_set(err, EINVAL, "%s: registry must be [[registry]] tables", file);
			goto out;
		}
		for (size_t i = 0; r == 0 && i < json_object_array_length(v); i++)
			r = add_registry(c, json_object_array_get_idx(v, i), file, err);
	}
	if (r == 0 && json_object_object_get_ex(root, "unqualified-search-registries", &v)) {
		bool strings = json_object_is_type(v, json_type_array);
		for (size_t i = 0; strings && i < json_object_array_length(v); i++)
			strings = json_object_is_type(json_object_array_get_idx(v, i), json_type_string);
		if (!strings) {
			r = err_set(err, EINVAL, "%s: unqualified-search-registries must be an array of strings", file);
			goto out;
		}
		json_object_put(c->search);
		c->search = json_object_get(v);
	}
	if (r == 0 && json_object_object_get_ex(root, "aliases", &v) && json_object_is_type(v, json_type_object)) {
		json_object_object_foreach(v, name, value)
		{
			if (!json_object_is_type(value, json_type_string)) {
				r = err_set(err, EINVAL, "%s: alias \"%s\" must be a string", file, name);
				goto out;
			}
			/* An empty value takes back an alias of an earlier file. */
			if (!*json_object_get_string(value))
				json_object_object_del(c->aliases, name);
			else if (json_object_object_add(c->aliases, name, json_object_get(value)) < 0)
				r = -ENOMEM;
		}
	}
out:
	json_object_put(root);
	return r;
}

int registries_conf_parse(struct registries_conf *c, const char *text, size_t len, const char *file, struct err *err)
{
	struct json_object *root = NULL;
	int r = toml_parse(text, len, file, &root, err);
	return r < 0 ? r : add_file(c, root, file, err);
}

struct registries_conf *registries_conf_new(void)
{
	struct registries_conf *c = calloc(1, sizeof(*c));
	if (c && !(c->aliases = json_object_new_object())) {
		free(c);
		c = NULL;
	}
	return c;
}

static int load_file(struct registries_conf *c, const char *path, struct err *err)
{
	struct json_object *root;
	int r = toml_read_file(path, CONF_FILE_MAX_SIZE, &root, err);
	/* No file: nothing to add. */
	return r < 0 || !root ? r : add_file(c, root, path, err);
}

static int conf_file_filter(const struct dirent *d)
{
	size_t n = strlen(d->d_name);
	return d->d_name[0] != '.' && n > 5 && strcmp(d->d_name + n - 5, ".conf") == 0;
}

static int load_drop_ins(struct registries_conf *c, const char *dir, struct err *err)
{
	struct dirent **names = NULL;
	int n = dir ? scandir(dir, &names, conf_file_filter, alphasort) : 0;
	if (n < 0)
		return errno == ENOENT ? 0 : err_set(err, errno, "cannot read \"%s\": %s", dir, strerror(errno));
	int r = 0;
	for (int i = 0; i < n; i++) {
		_cleanup_free_ char *path = strdup_printf("%s/%s", dir, names[i]->d_name);
		if (r == 0)
			r = path ? load_file(c, path, err) : -ENOMEM;
		free(names[i]);
	}
	free(names);
	return r;
}

/* podman's cache of the aliases a user chose: root's in /var/cache,
 * another user's under $XDG_CACHE_HOME (~/.cache). */
static int load_alias_cache(struct registries_conf *c, struct err *err)
{
	const char *cache_home = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
	_cleanup_free_ char *path =
	    geteuid() == 0              ? strdup("/var/cache/containers/short-name-aliases.conf")
	    : cache_home && *cache_home ? strdup_printf("%s/containers/short-name-aliases.conf", cache_home)
	    : home && *home             ? strdup_printf("%s/.cache/containers/short-name-aliases.conf", home)
					: NULL;
	struct json_object *root = NULL, *aliases;
	int r = path ? toml_read_file(path, CONF_FILE_MAX_SIZE, &root, err) : 0;
	if (r < 0 || !root)
		return r;
	if (json_object_object_get_ex(root, "aliases", &aliases) && json_object_is_type(aliases, json_type_object))
		c->cached_aliases = json_object_get(aliases);
	json_object_put(root);
	return 0;
}

int registries_conf_load(struct registries_conf **ret, struct err *err)
{
	struct registries_conf *c = registries_conf_new();
	if (!c)
		return -ENOMEM;
	const char *env = getenv("CONTAINERS_REGISTRIES_CONF"), *home = getenv("HOME");
	_cleanup_free_ char *user_file =
	    home && *home ? strdup_printf("%s/.config/containers/registries.conf", home) : NULL;
	_cleanup_free_ char *user_dir =
	    home && *home ? strdup_printf("%s/.config/containers/registries.conf.d", home) : NULL;
	struct stat st;
	bool user_only = !(env && *env) && user_file && stat(user_file, &st) == 0;
	const char *main_file = env && *env ? env : user_only ? user_file : "/etc/containers/registries.conf";
	int r = load_file(c, main_file, err);
	/* As containers/image: a user's own registries.conf replaces the system's files and drop-ins. */
	if (r == 0 && !user_only)
		r = load_drop_ins(c, "/etc/containers/registries.conf.d", err);
	if (r == 0)
		r = load_drop_ins(c, user_dir, err);
	if (r == 0)
		r = load_alias_cache(c, err);
	if (r < 0) {
		registries_conf_free(c);
		return r;
	}
	*ret = c;
	return 0;
}

/* The length of name that prefix matches (at a component boundary), or 0. */
static size_t prefix_match(const char *prefix, const char *domain, const char *name)
{
	if (str_has_prefix(prefix, "*.")) {
		size_t host_len = strcspn(domain, ":"), suffix_len = strlen(prefix + 1);
		return host_len > suffix_len && strncmp(domain + host_len - suffix_len, prefix + 1, suffix_len) == 0
			   ? strlen(domain)
			   : 0;
	}
	size_t len = strlen(prefix);
	return strncmp(name, prefix, len) == 0 && (name[len] == '\0' || name[len] == '/') ? len : 0;
}

static int endpoint_add(struct registry_endpoint **list, size_t *n, const char *location, const char *rest,
			const struct image_ref *ref, bool insecure, bool mirror, struct err *err)
{
	_cleanup_free_ char *text = strdup_printf("%s%s", location, rest);
	if (!text)
		return -ENOMEM;
	struct image_ref rewritten = { 0 };
	/* The rewritten name is parsed as a full name: no docker.io default. */
	int r = image_ref_parse(text, &rewritten, err);
	if (r < 0)
		return err_wrap(err, "location \"%s\" for \"%s/%s\"", location, ref->domain, ref->repository);
	free(rewritten.tag);
	free(rewritten.digest);
	rewritten.tag = ref->tag ? strdup(ref->tag) : NULL;
	rewritten.digest = ref->digest ? strdup(ref->digest) : NULL;
	struct registry_endpoint *grown = realloc(*list, (*n + 1) * sizeof(*grown));
	if (!grown || (ref->tag && !rewritten.tag) || (ref->digest && !rewritten.digest)) {
		image_ref_done(&rewritten);
		if (grown)
			*list = grown;
		return -ENOMEM;
	}
	*list = grown;
	grown[(*n)++] = (struct registry_endpoint){ .ref = rewritten, .insecure = insecure, .mirror = mirror };
	return 0;
}

int registries_conf_endpoints(const struct registries_conf *c, const struct image_ref *ref,
			      struct registry_endpoint **ret, size_t *ret_n, struct err *err)
{
	_cleanup_free_ char *name = strdup_printf("%s/%s", ref->domain, ref->repository);
	if (!name)
		return -ENOMEM;
	const struct conf_registry *best = NULL;
	size_t best_len = 0;
	for (size_t i = 0; c && i < c->n_registries; i++) {
		size_t len = prefix_match(c->registries[i].prefix, ref->domain, name);
		if (len > best_len) {
			best = &c->registries[i];
			best_len = len;
		}
	}
	struct registry_endpoint *list = NULL;
	size_t n = 0;
	int r = 0;
	if (best && best->blocked) {
		r = err_set(err, EACCES, "registry \"%s\" is blocked by [[registry]] prefix \"%s\" in %s", ref->domain,
			    best->prefix, best->file);
		goto fail;
	}
	const char *rest = name + best_len;
	bool by_digest = ref->digest != NULL;
	for (size_t i = 0; best && i < best->n_mirrors; i++) {
		const struct conf_mirror *m = &best->mirrors[i];
		if ((!by_digest && (best->mirror_by_digest_only || m->pull == PULL_DIGEST_ONLY)) ||
		    (by_digest && m->pull == PULL_TAG_ONLY))
			continue;
		if ((r = endpoint_add(&list, &n, m->location, rest, ref, m->insecure, true, err)) < 0)
			goto fail;
	}
	const char *location = best && best->location ? best->location : NULL;
	r = location ? endpoint_add(&list, &n, location, rest, ref, best->insecure, false, err)
		     : endpoint_add(&list, &n, name, "", ref, best && best->insecure, false, err);
	if (r < 0)
		goto fail;
	*ret = list;
	*ret_n = n;
	return 0;
fail:
	registry_endpoints_free(list, n);
	return r;
}

void registry_endpoints_free(struct registry_endpoint *list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		image_ref_done(&list[i].ref);
	free(list);
}

int registries_conf_candidates(const struct registries_conf *c, const char *text, char ***ret, size_t *ret_n,
			       struct err *err)
{
	char **list = calloc(2 + (c && c->search ? json_object_array_length(c->search) : 0), sizeof(char *));
	size_t n = 0;
	if (!list)
		return -ENOMEM;
	if (image_ref_has_domain(text) || !c) {
		list[n++] = strdup(text);
	} else {
		/* The alias is looked up by the name without its tag or digest. */
		size_t name_len = strcspn(text, "@");
		const char *colon = memchr(text, ':', name_len);
		if (colon)
			name_len = (size_t)(colon - text);
		_cleanup_free_ char *name = strndup(text, name_len);
		const char *alias = !name ? NULL
				    : c->cached_aliases && get_string(c->cached_aliases, name)
					? get_string(c->cached_aliases, name)
					: get_string(c->aliases, name);
		if (alias && !*alias)
			alias = NULL; /* the cache's way to take an alias back */
		if (alias)
			list[n++] = strdup_printf("%s%s", alias, text + name_len);
		else if (c->search && json_object_array_length(c->search) > 0)
			for (size_t i = 0; i < json_object_array_length(c->search); i++)
				list[n++] = strdup_printf(
				    "%s/%s", json_object_get_string(json_object_array_get_idx(c->search, i)), text);
		else
			list[n++] = strdup(text);
	}
	for (size_t i = 0; i < n; i++)
		if (!list[i]) {
			registry_names_free(list, n);
			return err_set(err, ENOMEM, "out of memory");
		}
	*ret = list;
	*ret_n = n;
	return 0;
}

void registry_names_free(char **list, size_t n)
{
	for (size_t i = 0; list && i < n; i++)
		free(list[i]);
	free(list);
}
