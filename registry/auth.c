/* WWW-Authenticate challenges and credentials from container auth files. */
#include "registry.h"

#include <ctype.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define AUTH_FILE_MAX_SIZE (1u << 20)

void auth_challenge_done(struct auth_challenge *c)
{
	free(c->scheme);
	free(c->realm);
	free(c->service);
	free(c->scope);
	memset(c, 0, sizeof(*c));
}

static const char *skip_space(const char *p)
{
	while (*p == ' ' || *p == '\t')
		p++;
	return p;
}

/* RFC 7235: challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
 * auth-param = token BWS "=" BWS ( token / quoted-string ).
 * Parses params until the next challenge starts or the string ends. */
int auth_challenge_parse(const char *header, struct auth_challenge *ret)
{
	struct auth_challenge c = { 0 };
	const char *p = skip_space(header);
	const char *start = p;
	int r = -EINVAL;

	while (*p && !isspace((unsigned char)*p) && *p != ',')
		p++;
	if (p == start)
		return -EINVAL;
	c.scheme = strndup(start, (size_t)(p - start));
	if (!c.scheme)
		return -ENOMEM;
	for (char *s = c.scheme; *s; s++)
		*s = (char)tolower((unsigned char)*s);

	for (;;) {
		p = skip_space(p);
		while (*p == ',')
			p = skip_space(p + 1);
		if (!*p)
			break;
		const char *name = p;
		while (*p && *p != '=' && *p != ',' && !isspace((unsigned char)*p))
			p++;
		size_t name_len = (size_t)(p - name);
		p = skip_space(p);
		if (*p != '=') {
			/* A bare token: the start of the next challenge. */
			break;
		}
		p = skip_space(p + 1);
		char *value;
		if (*p == '"') {
			p++;
			size_t cap = strlen(p) + 1, n = 0;
			value = malloc(cap);
			if (!value) {
				r = -ENOMEM;
				goto fail;
			}
			while (*p && *p != '"') {
				if (*p == '\\' && p[1])
					p++;
				value[n++] = *p++;
			}
			value[n] = '\0';
			if (*p != '"') {
				free(value);
				goto fail;
			}
			p++;
		} else {
			const char *v = p;
			while (*p && *p != ',' && !isspace((unsigned char)*p))
				p++;
			value = strndup(v, (size_t)(p - v));
			if (!value) {
				r = -ENOMEM;
				goto fail;
			}
		}
		char **slot = NULL;
		if (name_len == 5 && strncasecmp(name, "realm", 5) == 0)
			slot = &c.realm;
		else if (name_len == 7 && strncasecmp(name, "service", 7) == 0)
			slot = &c.service;
		else if (name_len == 5 && strncasecmp(name, "scope", 5) == 0)
			slot = &c.scope;
		if (slot) {
			free(*slot);
			*slot = value;
		} else {
			free(value);
		}
	}
	*ret = c;
	return 0;
fail:
	auth_challenge_done(&c);
	return r;
}

/* Docker Hub under the names auth files give it: docker login writes
 * "https://index.docker.io/v1/". */
static bool is_docker_hub(const char *host, size_t len)
{
	static const char *const names[] = { "docker.io", "index.docker.io", "registry-1.docker.io" };
	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		if (strlen(names[i]) == len && strncmp(host, names[i], len) == 0)
			return true;
	return false;
}

/* An auth file key or a login argument without its "https://" or "http://". */
static const char *without_scheme(const char *key)
{
	return str_has_prefix(key, "https://") ? key + 8 : str_has_prefix(key, "http://") ? key + 7 : key;
}

/* Whether key host a names the registry host b of an image. */
static bool same_host(const char *a, size_t a_len, const char *b, size_t b_len)
{
	if (b_len == strlen("docker.io") && strncmp(b, "docker.io", b_len) == 0 && is_docker_hub(a, a_len))
		return true;
	return a_len == b_len && strncmp(a, b, a_len) == 0;
}

/* How closely an auth file key names name ("host[/namespace[/repo]]"): 0
 * when it does not, 1 for the whole registry, more for a longer path.  Keys
 * are "host[:port]", "host/namespace[/repo]" (podman), or URLs such as
 * "https://host/v1/" (docker), which name the whole registry. */
static size_t auth_key_match(const char *key, const char *name)
{
	const char *bare = without_scheme(key);
	bool url = bare != key;
	key = bare;
	size_t key_host = strcspn(key, "/"), name_host = strcspn(name, "/");
	if (!same_host(key, key_host, name, name_host))
		return 0;
	const char *key_path = key + key_host, *name_path = name + name_host;
	if (url || !*key_path)
		return 1;
	size_t len = strlen(key_path);
	return strncmp(key_path, name_path, len) == 0 && (name_path[len] == '\0' || name_path[len] == '/') ? 1 + len
													   : 0;
}

/* The member of obj whose key names name most closely, or NULL. */
static struct json_object *best_match(struct json_object *obj, const char *name)
{
	struct json_object *best = NULL;
	size_t best_len = 0;
	json_object_object_foreach(obj, key, value)
	{
		size_t len = auth_key_match(key, name);
		if (len > best_len) {
			best = value;
			best_len = len;
		}
	}
	return best;
}

/* A JSON document of len bytes (no NUL needed): 0, -ENOMEM or -EINVAL. */
static int parse_json(const char *json, size_t len, struct json_object **ret)
{
	struct json_tokener *tok = json_tokener_new();
	if (!tok)
		return -ENOMEM;
	*ret = json_tokener_parse_ex(tok, json, (int)len);
	json_tokener_free(tok);
	return *ret ? 0 : -EINVAL;
}

int auth_credentials_from_json(const char *json, size_t len, const char *name, char **ret)
{
	struct json_object *root, *auths, *auth, *identity;
	int r = parse_json(json, len, &root);
	if (r < 0)
		return r;
	r = -ENOENT;
	struct json_object *entry =
	    json_object_object_get_ex(root, "auths", &auths) && json_object_is_type(auths, json_type_object)
		? best_match(auths, name)
		: NULL;
	if (!entry || !json_object_is_type(entry, json_type_object))
		goto out;
	/* docker login with a browser keeps an identity token, which wins. */
	if (json_object_object_get_ex(entry, "identitytoken", &identity) &&
	    json_object_is_type(identity, json_type_string) && *json_object_get_string(identity)) {
		*ret = strdup_printf(IDENTITY_TOKEN_USER ":%s", json_object_get_string(identity));
		r = *ret ? 0 : -ENOMEM;
		goto out;
	}
	if (!json_object_object_get_ex(entry, "auth", &auth) || !json_object_is_type(auth, json_type_string))
		goto out;
	const char *b64 = json_object_get_string(auth);
	size_t b64_len = strlen(b64);
	if (b64_len == 0 || b64_len % 4 != 0 || b64_len > 16384) {
		r = -EINVAL;
		goto out;
	}
	void *value;
	size_t n;
	if ((r = base64_decode(b64, b64_len, &value, &n)) < 0)
		goto out;
	char *decoded = value;
	if (!strchr(decoded, ':') || strlen(decoded) != n) {
		free(decoded);
		r = -EINVAL;
		goto out;
	}
	*ret = decoded;
	r = 0;
out:
	json_object_put(root);
	return r;
}

/* The string member key of object obj, or NULL. */
static const char *string_member(struct json_object *obj, const char *key)
{
	struct json_object *v;
	if (!obj || !json_object_is_type(obj, json_type_object) || !json_object_object_get_ex(obj, key, &v) ||
	    !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

int auth_source_from_json(const char *json, size_t len, const char *name, char **ret_credentials, char **ret_helper)
{
	*ret_credentials = *ret_helper = NULL;
	struct json_object *root;
	int r = parse_json(json, len, &root);
	if (r < 0)
		return r;
	r = -ENOENT;
	struct json_object *helpers, *helper;
	if (json_object_object_get_ex(root, "credHelpers", &helpers) &&
	    json_object_is_type(helpers, json_type_object) && (helper = best_match(helpers, name)) &&
	    json_object_is_type(helper, json_type_string)) {
		*ret_helper = strdup(json_object_get_string(helper));
		r = *ret_helper ? 0 : -ENOMEM;
		goto out;
	}
	r = auth_credentials_from_json(json, len, name, ret_credentials);
	const char *store = string_member(root, "credsStore");
	if (r == -ENOENT && store && *store) {
		*ret_helper = strdup(store);
		r = *ret_helper ? 0 : -ENOMEM;
	}
out:
	json_object_put(root);
	return r;
}

#define HELPER_OUTPUT_MAX (64u << 10)
#define HELPER_TIMEOUT_MS 10000

static bool helper_name_valid(const char *name)
{
	if (!*name || strlen(name) > 64)
		return false;
	for (const char *p = name; *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_' && *p != '.')
			return false;
	return true;
}

/* Runs docker-credential-HELPER get, the docker credential-helper protocol:
 * the registry on stdin, {"Username","Secret"} on stdout.  The secret never
 * passes through argv or the environment. */
static int ask_credential_helper(const char *helper, const char *domain, char **ret)
{
	if (!helper_name_valid(helper))
		return -EINVAL;
	_cleanup_free_ char *program = strdup_printf("docker-credential-%s", helper);
	if (!program)
		return -ENOMEM;
	int in[2], out[2];
	/* A socket for stdin: send() with MSG_NOSIGNAL cannot raise SIGPIPE. */
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in) < 0)
		return -errno;
	if (pipe2(out, O_CLOEXEC) < 0) {
		int e = errno;
		close(in[0]);
		close(in[1]);
		return -e;
	}
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in[1], STDIN_FILENO);
	posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
	char *argv[] = { program, (char *)"get", NULL };
	pid_t pid;
	int r = -posix_spawnp(&pid, program, &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(in[1]);
	close(out[1]);
	_cleanup_free_ char *output = NULL;
	size_t used = 0;
	if (r == 0) {
		(void)send(in[0], domain, strlen(domain), MSG_NOSIGNAL);
		shutdown(in[0], SHUT_WR);
		output = malloc(HELPER_OUTPUT_MAX + 1);
		for (;;) {
			struct pollfd p = { .fd = out[0], .events = POLLIN };
			if (!output || poll(&p, 1, HELPER_TIMEOUT_MS) <= 0) {
				kill(pid, SIGKILL);
				r = output ? -ETIMEDOUT : -ENOMEM;
				break;
			}
			ssize_t n = read(out[0], output + used, HELPER_OUTPUT_MAX - used);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0 || (used += (size_t)n) == HELPER_OUTPUT_MAX)
				break;
		}
		int status = 0;
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		if (r == 0 && (!WIFEXITED(status) || WEXITSTATUS(status) != 0))
			r = -ENOENT; /* "credentials not found", in the helper's words on its stderr */
	}
	close(in[0]);
	close(out[0]);
	if (r < 0)
		return r;
	output[used] = '\0';
	struct json_object *root = json_tokener_parse(output);
	const char *user = string_member(root, "Username"), *secret = string_member(root, "Secret");
	if (!user || !secret || !*user || !*secret)
		r = -ENOENT;
	else if (!(*ret = strdup_printf("%s:%s", user, secret)))
		r = -ENOMEM;
	json_object_put(root);
	explicit_bzero(output, used);
	return r;
}

int auth_lookup_credentials(const char *name, char **ret, char **ret_source)
{
	*ret_source = NULL;
	/* A helper is asked for the registry, as docker asks it. */
	_cleanup_free_ char *host = strndup(name, strcspn(name, "/"));
	const char *files[4] = { 0 };
	_cleanup_free_ char *runtime_file = NULL, *user_file = NULL, *docker_file = NULL;
	const char *env, *home = getenv("HOME");

	/* podman's order; an auth file that is named is the only one read. */
	if ((env = getenv("REGISTRY_AUTH_FILE")) && *env) {
		files[0] = env;
	} else {
		files[0] = runtime_file = auth_default_file();
		if (home && *home)
			files[1] = user_file = strdup_printf("%s/.config/containers/auth.json", home);
		if ((env = getenv("DOCKER_CONFIG")) && *env)
			files[2] = docker_file = strdup_printf("%s/config.json", env);
		else if (home && *home)
			files[2] = docker_file = strdup_printf("%s/.docker/config.json", home);
	}

	for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
		_cleanup_free_ char *data = NULL, *helper = NULL;
		size_t len;
		if (!files[i] || read_file_capped(files[i], AUTH_FILE_MAX_SIZE, &data, &len) < 0)
			continue;
		int r = auth_source_from_json(data, len, name, ret, &helper);
		if (r == 0 && helper)
			r = host ? ask_credential_helper(helper, host, ret) : -ENOMEM;
		if (r == 0) {
			*ret_source = helper ? strdup_printf("docker-credential-%s (named in %s)", helper, files[i])
					     : strdup(files[i]);
			if (!*ret_source) {
				explicit_bzero(*ret, strlen(*ret));
				free(*ret);
				*ret = NULL;
				return -ENOMEM;
			}
		}
		if (r != -ENOENT)
			return r;
	}
	return -ENOENT;
}

char *auth_default_file(void)
{
	const char *env = getenv("REGISTRY_AUTH_FILE");
	if (env && *env)
		return strdup(env);
	if ((env = getenv("XDG_RUNTIME_DIR")) && *env)
		return strdup_printf("%s/containers/auth.json", env);
	return strdup_printf("/run/containers/%u/auth.json", (unsigned)getuid());
}

/* The key under which podman login stores a registry. */
static char *auth_key_for(const char *registry)
{
	const char *host = without_scheme(registry);
	size_t len = strcspn(host, "/");
	return is_docker_hub(host, len) ? strdup("docker.io") : strndup(host, len);
}

int auth_store_credentials(const char *file, const char *registry, const char *credentials, struct err *err)
{
	_cleanup_free_ char *key = auth_key_for(registry), *data = NULL, *dir = strdup(file);
	if (!key || !dir)
		return -ENOMEM;
	if (!*key)
		return err_set(err, EINVAL, "no registry named");
	size_t len = 0;
	int r = read_file_capped(file, AUTH_FILE_MAX_SIZE, &data, &len);
	if (r < 0 && r != -ENOENT)
		return err_set(err, -r, "cannot read \"%s\": %s", file, strerror(-r));
	struct json_object *root = r == 0 && len > 0 ? json_tokener_parse(data) : json_object_new_object(), *auths;
	if (!root || !json_object_is_type(root, json_type_object)) {
		json_object_put(root);
		return err_set(err, EINVAL, "\"%s\" is not an auth file (a JSON object)", file);
	}
	if (!json_object_object_get_ex(root, "auths", &auths) || !json_object_is_type(auths, json_type_object)) {
		auths = json_object_new_object();
		if (!auths || json_object_object_add(root, "auths", auths) < 0) {
			json_object_put(auths);
			json_object_put(root);
			return -ENOMEM;
		}
	}
	if (!credentials) {
		bool had = json_object_object_get_ex(auths, key, NULL);
		json_object_object_del(auths, key);
		if (!had) {
			json_object_put(root);
			return err_set(err, ENOENT, "not logged in to \"%s\" (in \"%s\")", key, file);
		}
	} else {
		_cleanup_free_ char *b64 = base64_encode(credentials, strlen(credentials));
		struct json_object *entry = json_object_new_object(), *value = b64 ? json_object_new_string(b64) : NULL;
		if (b64)
			explicit_bzero(b64, strlen(b64));
		if (!entry || !value || json_object_object_add(entry, "auth", value) < 0 ||
		    json_object_object_add(auths, key, entry) < 0) {
			json_object_put(value);
			json_object_put(entry);
			json_object_put(root);
			return -ENOMEM;
		}
	}
	const char *text = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY);
	r = 0;
	char *slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = '\0';
		r = mkdir_parents(dir, 0700);
	}
	if (r == 0)
		r = text ? write_file_atomic(file, text, strlen(text)) : -ENOMEM;
	if (text)
		explicit_bzero((char *)text, strlen(text));
	json_object_put(root);
	if (data)
		explicit_bzero(data, len);
	return r < 0 ? err_set(err, -r, "cannot write \"%s\": %s", file, strerror(-r)) : 0;
}
