/* The OCI runtime spec (config.json) of a container, from the image config
 * and the options of `launch run`, as docker and podman write it. */
#include <fcntl.h>
#include <json-c/json.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#include "launch.h"

#define IMAGE_CONFIG_MAX (8u << 20)
#define ID_FILE_MAX (4u << 20)

/* ---- the image config --------------------------------------------------------- */

static void strv_free(char **v)
{
	for (char **p = v; p && *p; p++)
		free(*p);
	free(v);
}

static void strv_freep(char ***v)
{
	strv_free(*v);
}

static size_t strv_len(char *const *v)
{
	size_t n = 0;
	while (v && v[n])
		n++;
	return n;
}

/* A JSON array of strings, or NULL for null/absent; -EINVAL for anything else. */
static int json_strv(struct json_object *o, const char *key, char ***ret)
{
	struct json_object *a;
	*ret = NULL;
	if (!json_object_object_get_ex(o, key, &a) || json_object_is_type(a, json_type_null))
		return 0;
	if (!json_object_is_type(a, json_type_array))
		return -EINVAL;
	size_t n = json_object_array_length(a);
	char **v = calloc(n + 1, sizeof(char *));
	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		struct json_object *s = json_object_array_get_idx(a, i);
		if (!json_object_is_type(s, json_type_string) || !(v[i] = strdup(json_object_get_string(s)))) {
			strv_free(v);
			return json_object_is_type(s, json_type_string) ? -ENOMEM : -EINVAL;
		}
	}
	*ret = v;
	return 0;
}

static int json_str(struct json_object *o, const char *key, char **ret)
{
	struct json_object *s;
	*ret = NULL;
	if (!json_object_object_get_ex(o, key, &s) || json_object_is_type(s, json_type_null))
		return 0;
	if (!json_object_is_type(s, json_type_string))
		return -EINVAL;
	return (*ret = strdup(json_object_get_string(s))) ? 0 : -ENOMEM;
}

int image_process_parse(const char *json, size_t len, struct image_process *ret, struct err *err)
{
	if (len > IMAGE_CONFIG_MAX)
		return err_set(err, EFBIG, "image config is larger than %u bytes", IMAGE_CONFIG_MAX);
	struct json_tokener *tok = json_tokener_new();
	if (!tok)
		return -ENOMEM;
	struct json_object *root = json_tokener_parse_ex(tok, json, (int)len);
	enum json_tokener_error jerr = json_tokener_get_error(tok);
	json_tokener_free(tok);
	if (!root || jerr != json_tokener_success) {
		json_object_put(root);
		return err_set(err, EINVAL, "image config is not valid JSON: %s", json_tokener_error_desc(jerr));
	}
	struct image_process p = { 0 };
	struct json_object *cfg;
	int r = 0;
	if (!json_object_is_type(root, json_type_object))
		r = -EINVAL;
	else if (json_object_object_get_ex(root, "config", &cfg) && json_object_is_type(cfg, json_type_object)) {
		if ((r = json_strv(cfg, "Entrypoint", &p.entrypoint)) == 0 &&
		    (r = json_strv(cfg, "Cmd", &p.cmd)) == 0 && (r = json_strv(cfg, "Env", &p.env)) == 0 &&
		    (r = json_str(cfg, "WorkingDir", &p.workdir)) == 0)
			r = json_str(cfg, "User", &p.user);
	}
	json_object_put(root);
	if (r < 0) {
		image_process_done(&p);
		return r == -ENOMEM ? r : err_set(err, EINVAL, "image config: unexpected type in \"config\"");
	}
	*ret = p;
	return 0;
}

void image_process_done(struct image_process *p)
{
	strv_free(p->entrypoint);
	strv_free(p->cmd);
	strv_free(p->env);
	free(p->workdir);
	free(p->user);
	*p = (struct image_process){ 0 };
}

/* The entrypoint and command docker would run; single holds --entrypoint's. */
static void chosen_args(const struct image_process *img, const struct spec_options *o, char *single[2],
			char *const **ret_entry, char *const **ret_cmd)
{
	char *const *entry = img->entrypoint;
	char *const *cmd = o->command && o->command[0] ? o->command : img->cmd;
	if (o->entrypoint) {
		/* Docker: --entrypoint replaces the image's and drops its Cmd. */
		single[0] = (char *)o->entrypoint;
		single[1] = NULL;
		entry = o->entrypoint[0] ? single : NULL;
		if (!(o->command && o->command[0]))
			cmd = NULL;
	}
	*ret_entry = entry;
	*ret_cmd = cmd;
}

int spec_args(const struct image_process *img, const struct spec_options *o, char ***ret, struct err *err)
{
	char *single[2];
	char *const *entry, *const *cmd;
	chosen_args(img, o, single, &entry, &cmd);
	size_t n = strv_len(entry) + strv_len(cmd);
	if (n == 0)
		return err_set(err, EINVAL,
			       "no command: the image sets neither Entrypoint nor Cmd, and none was given");
	size_t extra = o->init_path ? 2 : 0;
	char **v = calloc(n + extra + 1, sizeof(char *));
	if (!v)
		return -ENOMEM;
	size_t k = 0;
	if (o->init_path) {
		v[k++] = strdup("/.launch-init");
		v[k++] = strdup("--");
	}
	for (size_t i = 0; i < strv_len(entry); i++)
		v[k++] = strdup(entry[i]);
	for (size_t i = 0; i < strv_len(cmd); i++)
		v[k++] = strdup(cmd[i]);
	for (size_t i = 0; i < k; i++)
		if (!v[i]) {
			for (size_t j = 0; j < k; j++)
				free(v[j]);
			free(v);
			return -ENOMEM;
		}
	*ret = v;
	return 0;
}

/* ---- users --------------------------------------------------------------------- */

static int open_in_root(int rootfs_fd, const char *path)
{
	/* O_NONBLOCK: an image's /etc/passwd may be a FIFO, whose open would
	 * wait for a writer for ever. */
	struct open_how how = { .flags = O_RDONLY | O_NONBLOCK | O_CLOEXEC,
				.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS };
	int fd = (int)syscall(SYS_openat2, rootfs_fd, path, &how, sizeof(how));
	if (fd >= 0 || errno != ENOSYS)
		return fd < 0 ? -errno : fd;
	/* Without openat2 (old kernels, valgrind): component by component,
	 * refusing any symlink or ".." on the way rather than following it. */
	int dir = fcntl(rootfs_fd, F_DUPFD_CLOEXEC, 3);
	for (const char *p = path; dir >= 0;) {
		while (*p == '/')
			p++;
		size_t len = strcspn(p, "/");
		char component[NAME_MAX + 1];
		if (len == 0 || len > NAME_MAX) {
			close(dir);
			return -ENOENT;
		}
		memcpy(component, p, len);
		component[len] = '\0';
		p += len;
		bool last = p[strspn(p, "/")] == '\0';
		int sub = strcmp(component, "..") == 0
			      ? (errno = EPERM, -1)
			      : openat(dir, component,
				       (last ? O_RDONLY | O_NONBLOCK : O_PATH | O_DIRECTORY) | O_NOFOLLOW | O_CLOEXEC);
		int saved = errno;
		close(dir);
		if (sub < 0)
			return -saved;
		if (last)
			return sub;
		dir = sub;
	}
	return -errno;
}

/* Opens command (a path, or a name looked up in path_env) as execvp would
 * find it inside rootfs_fd: its descriptor, -ENOENT or -EACCES. */
static int open_command(int rootfs_fd, const char *command, const char *path_env)
{
	if (!command || !*command)
		return -ENOENT;
	if (strchr(command, '/')) {
		int fd = open_in_root(rootfs_fd, command);
		struct stat st;
		if (fd < 0)
			return fd == -ENOTDIR || fd == -ELOOP ? -ENOENT : fd;
		int r = fstat(fd, &st) < 0 ? -errno : S_ISREG(st.st_mode) && (st.st_mode & 0111) ? fd : -EACCES;
		if (r < 0)
			close(fd);
		return r;
	}
	_cleanup_free_ char *dirs = strdup(path_env && *path_env ? path_env : DEFAULT_PATH);
	char *save = NULL;
	int found = -ENOENT;
	for (char *dir = dirs ? strtok_r(dirs, ":", &save) : NULL; dir; dir = strtok_r(NULL, ":", &save)) {
		_cleanup_free_ char *candidate = strdup_printf("%s/%s", dir, command);
		_cleanup_close_ int fd = candidate ? open_in_root(rootfs_fd, candidate) : -ENOMEM;
		struct stat st;
		if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
			continue;
		if (st.st_mode & 0111)
			return TAKE_FD(fd);
		found = -EACCES; /* as execvp: a later directory may have an executable one */
	}
	return found;
}

int find_command(int rootfs_fd, const char *command, const char *path_env)
{
	int fd = open_command(rootfs_fd, command, path_env);
	if (fd < 0)
		return fd;
	close(fd);
	return 0;
}

static int read_in_root(int rootfs_fd, const char *path, char **ret)
{
	_cleanup_close_ int fd = open_in_root(rootfs_fd, path);
	if (fd < 0)
		return fd;
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EINVAL; /* a FIFO or a device: not a file of users */
	size_t cap = ID_FILE_MAX, len = 0;
	_cleanup_free_ char *buf = malloc(cap + 1);
	if (!buf)
		return -ENOMEM;
	for (;;) {
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		len += (size_t)n;
		if (len == cap)
			return -EFBIG;
	}
	buf[len] = '\0';
	*ret = TAKE_PTR(buf);
	return 0;
}

static bool parse_id(const char *s, unsigned long *ret)
{
	if (!*s)
		return false;
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (*end || errno || v > 0xfffffffeUL || s[0] == '-')
		return false;
	*ret = v;
	return true;
}

/* Splits "a:b:c..." in place into at most n fields; returns how many. */
static size_t split_fields(char *line, char **f, size_t n)
{
	size_t k = 0;
	f[k++] = line;
	for (char *p = line; *p && k < n; p++)
		if (*p == ':') {
			*p = '\0';
			f[k++] = p + 1;
		}
	return k;
}

static bool in_list(char *members, const char *name)
{
	char *save = NULL;
	for (char *m = strtok_r(members, ",", &save); m; m = strtok_r(NULL, ",", &save))
		if (strcmp(m, name) == 0)
			return true;
	return false;
}

int resolve_user(int rootfs_fd, const char *spec, uid_t *ret_uid, gid_t *ret_gid, gid_t **ret_groups,
		 size_t *ret_n_groups, char **ret_home, struct err *err)
{
	_cleanup_free_ char *copy = strdup(spec && *spec ? spec : "0");
	if (!copy)
		return -ENOMEM;
	char *group = strchr(copy, ':');
	if (group)
		*group++ = '\0';
	const char *user = *copy ? copy : "0";
	unsigned long uid = 0, gid = 0, num;
	bool have_gid = false, found_user = false;
	_cleanup_free_ char *user_name = NULL, *home = NULL;

	_cleanup_free_ char *passwd = NULL;
	int r = read_in_root(rootfs_fd, "/etc/passwd", &passwd);
	if (r < 0 && r != -ENOENT)
		return err_set(err, -r, "cannot read /etc/passwd of the image: %s", strerror(-r));
	bool numeric = parse_id(user, &num);
	char *save = NULL;
	for (char *line = passwd ? strtok_r(passwd, "\n", &save) : NULL; line; line = strtok_r(NULL, "\n", &save)) {
		char *f[7];
		unsigned long u, g;
		if (split_fields(line, f, 7) < 7 || !parse_id(f[2], &u) || !parse_id(f[3], &g))
			continue;
		if (numeric ? u == num : strcmp(f[0], user) == 0) {
			uid = u;
			gid = g;
			have_gid = found_user = true;
			if (!(user_name = strdup(f[0])) || !(home = strdup(f[5])))
				return -ENOMEM;
			break;
		}
	}
	if (!found_user) {
		if (!numeric)
			return err_set(err, ENOENT,
				       "unable to find user %s: no matching entries in the image's /etc/passwd", user);
		uid = num;
	}

	_cleanup_free_ char *groups_file = NULL;
	r = read_in_root(rootfs_fd, "/etc/group", &groups_file);
	if (r < 0 && r != -ENOENT)
		return err_set(err, -r, "cannot read /etc/group of the image: %s", strerror(-r));
	gid_t *groups = NULL;
	size_t n_groups = 0, allocated = 0;
	bool numeric_group = group && parse_id(group, &num);
	bool found_group = numeric_group;
	if (numeric_group) {
		gid = num;
		have_gid = true;
	}
	save = NULL;
	for (char *line = groups_file ? strtok_r(groups_file, "\n", &save) : NULL; line;
	     line = strtok_r(NULL, "\n", &save)) {
		char *f[4];
		unsigned long g;
		if (split_fields(line, f, 4) < 4 || !parse_id(f[2], &g))
			continue;
		if (group && !numeric_group && strcmp(f[0], group) == 0) {
			gid = g;
			have_gid = found_group = true;
		}
		/* Supplementary groups of a named user, as initgroups() makes them,
		 * unless a group was given. */
		if (!group && user_name && in_list(f[3], user_name) && (gid_t)g != (gid_t)gid) {
			if (grow_array((void **)&groups, &allocated, n_groups + 1, sizeof(gid_t)) < 0) {
				free(groups);
				return -ENOMEM;
			}
			groups[n_groups++] = (gid_t)g;
		}
	}
	if (!group && user_name && n_groups) {
		/* The primary group leads the list, as after a login. */
		if (grow_array((void **)&groups, &allocated, n_groups + 1, sizeof(gid_t)) < 0) {
			free(groups);
			return -ENOMEM;
		}
		memmove(groups + 1, groups, n_groups * sizeof(gid_t));
		groups[0] = (gid_t)gid;
		n_groups++;
	}
	if (group && !found_group) {
		free(groups);
		return err_set(err, ENOENT, "unable to find group %s: no matching entries in the image's /etc/group",
			       group);
	}
	*ret_uid = (uid_t)uid;
	*ret_gid = have_gid ? (gid_t)gid : 0;
	*ret_groups = groups;
	*ret_n_groups = n_groups;
	*ret_home = TAKE_PTR(home);
	return 0;
}

/* Asks for what the start of a container reads from its root, all at once:
 * on a lazy mount each is a round trip when read in turn (the users, the
 * groups, then the program the runtime executes).  The program goes first:
 * it is the most bytes, and the start waits for them last.  The kernel
 * reads ahead in the background; a file that cannot be opened is simply
 * not asked for. */
void spec_read_ahead(int rootfs_fd, const struct image_process *img, const struct spec_options *o)
{
	char *single[2];
	char *const *entry, *const *cmd;
	chosen_args(img, o, single, &entry, &cmd);
	const char *program = entry && entry[0] ? entry[0] : cmd ? cmd[0] : NULL;
	const char *path_env = NULL;
	for (char *const *e = img->env; e && *e; e++)
		if (str_has_prefix(*e, "PATH="))
			path_env = *e + strlen("PATH=");
	for (char *const *e = o->env; e && *e; e++)
		if (str_has_prefix(*e, "PATH="))
			path_env = *e + strlen("PATH=");
	int fds[] = { open_command(rootfs_fd, program, path_env), open_in_root(rootfs_fd, "/etc/passwd"),
		      open_in_root(rootfs_fd, "/etc/group") };
	for (size_t i = 0; i < ARRAY_SIZE(fds); i++) {
		struct stat st;
		if (fds[i] >= 0 && fstat(fds[i], &st) == 0 && S_ISREG(st.st_mode))
			(void)posix_fadvise(fds[i], 0, 0, POSIX_FADV_WILLNEED);
	}
	for (size_t i = 0; i < ARRAY_SIZE(fds); i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

/* ---- config.json ------------------------------------------------------------------ */

/* podman's default capability set. */
static const char *const default_caps[] = {
	"CAP_CHOWN",   "CAP_DAC_OVERRIDE", "CAP_FOWNER",  "CAP_FSETID", "CAP_KILL",       "CAP_NET_BIND_SERVICE",
	"CAP_SETFCAP", "CAP_SETGID",       "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT",
};

static const char *const masked_paths[] = {
	"/proc/acpi",       "/proc/kcore",       "/proc/keys",        "/proc/latency_stats",
	"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
	"/sys/firmware",    "/sys/fs/selinux",   "/sys/dev/block",    "/sys/devices/virtual/powercap",
};

static const char *const readonly_paths[] = {
	"/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
};

static struct json_object *string_array(const char *const *v, size_t n)
{
	struct json_object *a = json_object_new_array();
	for (size_t i = 0; a && i < n; i++)
		json_object_array_add(a, json_object_new_string(v[i]));
	return a;
}

static void add_mount(struct json_object *mounts, const char *dest, const char *type, const char *source,
		      const char *const *options, size_t n_options)
{
	struct json_object *m = json_object_new_object();
	json_object_object_add(m, "destination", json_object_new_string(dest));
	json_object_object_add(m, "type", json_object_new_string(type));
	json_object_object_add(m, "source", json_object_new_string(source));
	if (n_options)
		json_object_object_add(m, "options", string_array(options, n_options));
	json_object_array_add(mounts, m);
}

static bool env_has(struct json_object *env, const char *key)
{
	size_t klen = strlen(key);
	for (size_t i = 0; i < json_object_array_length(env); i++) {
		const char *e = json_object_get_string(json_object_array_get_idx(env, i));
		if (strncmp(e, key, klen) == 0 && e[klen] == '=')
			return true;
	}
	return false;
}

/* Sets KEY=VAL, replacing an earlier KEY. */
static void env_set(struct json_object *env, const char *entry)
{
	const char *eq = strchr(entry, '=');
	size_t klen = eq ? (size_t)(eq - entry) : strlen(entry);
	for (size_t i = 0; i < json_object_array_length(env); i++) {
		const char *e = json_object_get_string(json_object_array_get_idx(env, i));
		if (strncmp(e, entry, klen) == 0 && e[klen] == '=') {
			json_object_array_put_idx(env, i, json_object_new_string(entry));
			return;
		}
	}
	json_object_array_add(env, json_object_new_string(entry));
}

static int build_env(const struct image_process *img, const struct spec_options *o, struct json_object *env,
		     struct err *err)
{
	for (char **e = img->env; e && *e; e++)
		env_set(env, *e);
	if (!env_has(env, "PATH"))
		env_set(env, "PATH=" DEFAULT_PATH);
	if (o->tty && !env_has(env, "TERM"))
		env_set(env, "TERM=xterm");
	for (char **e = o->env; e && *e; e++) {
		if (**e == '=' || !**e)
			return err_set(err, EINVAL, "invalid environment variable \"%s\"", *e);
		if (strchr(*e, '=')) {
			env_set(env, *e);
			continue;
		}
		/* -e KEY: the launcher's own value, or nothing when it has none. */
		const char *v = getenv(*e);
		if (v) {
			_cleanup_free_ char *kv = strdup_printf("%s=%s", *e, v);
			if (!kv)
				return -ENOMEM;
			env_set(env, kv);
		}
	}
	if (!env_has(env, "HOSTNAME") && o->hostname) {
		_cleanup_free_ char *kv = strdup_printf("HOSTNAME=%s", o->hostname);
		if (!kv)
			return -ENOMEM;
		env_set(env, kv);
	}
	if (!env_has(env, "HOME")) {
		_cleanup_free_ char *kv = strdup_printf("HOME=%s", o->home && *o->home ? o->home : "/");
		if (!kv)
			return -ENOMEM;
		env_set(env, kv);
	}
	return 0;
}

static int add_volumes(const struct spec_options *o, struct json_object *mounts, struct err *err)
{
	for (char **v = o->volumes; v && *v; v++) {
		_cleanup_free_ char *copy = strdup(*v);
		if (!copy)
			return -ENOMEM;
		char *f[3];
		size_t n = split_fields(copy, f, 3);
		bool ro = false;
		if (n == 3) {
			if (strcmp(f[2], "ro") == 0)
				ro = true;
			else if (strcmp(f[2], "rw") != 0)
				return err_set(err, EINVAL, "volume \"%s\": unknown option \"%s\" (ro or rw)", *v,
					       f[2]);
		}
		if (n < 2 || f[0][0] != '/' || f[1][0] != '/')
			return err_set(err, EINVAL, "volume \"%s\": expected /HOST:/CONTAINER[:ro]", *v);
		char host[PATH_MAX];
		if (!realpath(f[0], host))
			return err_set(err, errno, "volume \"%s\": \"%s\": %s", *v, f[0], strerror(errno));
		const char *opts[] = { "rbind", ro ? "ro" : "rw" };
		add_mount(mounts, f[1], "bind", host, opts, 2);
	}
	return 0;
}

/* The process: terminal, user, arguments, environment, working directory,
 * capabilities and limits. */
static int spec_process(const struct image_process *img, const struct spec_options *o, char **args,
			struct json_object *process, struct err *err)
{
	struct json_object *env = json_object_new_array();
	if (!env)
		return -ENOMEM;
	json_object_object_add(process, "terminal", json_object_new_boolean(o->tty));
	if (o->tty && o->rows && o->cols) {
		struct json_object *size = json_object_new_object();
		json_object_object_add(size, "height", json_object_new_int(o->rows));
		json_object_object_add(size, "width", json_object_new_int(o->cols));
		json_object_object_add(process, "consoleSize", size);
	}
	struct json_object *user = json_object_new_object();
	json_object_object_add(user, "uid", json_object_new_int64(o->uid));
	json_object_object_add(user, "gid", json_object_new_int64(o->gid));
	if (o->n_groups) {
		struct json_object *groups = json_object_new_array();
		for (size_t i = 0; i < o->n_groups; i++)
			json_object_array_add(groups, json_object_new_int64(o->groups[i]));
		json_object_object_add(user, "additionalGids", groups);
	}
	json_object_object_add(process, "user", user);
	json_object_object_add(process, "args", string_array((const char *const *)args, strv_len(args)));
	json_object_object_add(process, "env", env);
	int r = build_env(img, o, env, err);
	if (r < 0)
		return r;
	const char *cwd = o->workdir && *o->workdir ? o->workdir : img->workdir && *img->workdir ? img->workdir : "/";
	if (cwd[0] != '/')
		return err_set(err, EINVAL, "working directory \"%s\" is not absolute", cwd);
	json_object_object_add(process, "cwd", json_object_new_string(cwd));
	struct json_object *caps = json_object_new_object();
	const char *sets[] = { "bounding", "effective", "permitted" };
	for (size_t i = 0; i < ARRAY_SIZE(sets); i++)
		json_object_object_add(caps, sets[i], string_array(default_caps, ARRAY_SIZE(default_caps)));
	json_object_object_add(process, "capabilities", caps);
	/* A runtime refuses a limit above the caller's hard limit. */
	struct rlimit rl = { 1048576, 1048576 };
	struct rlimit mine;
	if (getrlimit(RLIMIT_NOFILE, &mine) == 0 && mine.rlim_max != RLIM_INFINITY && mine.rlim_max < rl.rlim_max)
		rl.rlim_cur = rl.rlim_max = mine.rlim_max;
	struct json_object *limit = json_object_new_object();
	json_object_object_add(limit, "type", json_object_new_string("RLIMIT_NOFILE"));
	json_object_object_add(limit, "hard", json_object_new_int64((int64_t)rl.rlim_max));
	json_object_object_add(limit, "soft", json_object_new_int64((int64_t)rl.rlim_cur));
	struct json_object *limits = json_object_new_array();
	json_object_array_add(limits, limit);
	json_object_object_add(process, "rlimits", limits);
	json_object_object_add(process, "noNewPrivileges", json_object_new_boolean(true));

	return 0;
}

/* The file systems every container gets, the init and the volumes. */
static int spec_mounts(const struct spec_options *o, struct json_object *mounts, struct err *err)
{
	static const char *const dev_opts[] = { "nosuid", "strictatime", "mode=755", "size=65536k" };
	static const char *const pts_opts[] = {
		"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"
	};
	static const char *const shm_opts[] = { "nosuid", "noexec", "nodev", "mode=1777", "size=65536k" };
	static const char *const mq_opts[] = { "nosuid", "noexec", "nodev" };
	static const char *const sys_opts[] = { "nosuid", "noexec", "nodev", "ro" };
	static const char *const proc_opts[] = { "nosuid", "noexec", "nodev" };
	add_mount(mounts, "/proc", "proc", "proc", proc_opts, ARRAY_SIZE(proc_opts));
	add_mount(mounts, "/dev", "tmpfs", "tmpfs", dev_opts, ARRAY_SIZE(dev_opts));
	add_mount(mounts, "/dev/pts", "devpts", "devpts", pts_opts, ARRAY_SIZE(pts_opts));
	add_mount(mounts, "/dev/shm", "tmpfs", "shm", shm_opts, ARRAY_SIZE(shm_opts));
	add_mount(mounts, "/dev/mqueue", "mqueue", "mqueue", mq_opts, ARRAY_SIZE(mq_opts));
	add_mount(mounts, "/sys", "sysfs", "sysfs", sys_opts, ARRAY_SIZE(sys_opts));
	if (o->init_path) {
		static const char *const init_opts[] = { "bind", "ro", "nosuid", "nodev" };
		add_mount(mounts, "/.launch-init", "bind", o->init_path, init_opts, ARRAY_SIZE(init_opts));
	}
	static const char *const etc_opts[] = { "bind", "rprivate" };
	if (o->etc_hosts)
		add_mount(mounts, "/etc/hosts", "bind", o->etc_hosts, etc_opts, ARRAY_SIZE(etc_opts));
	if (o->etc_resolv)
		add_mount(mounts, "/etc/resolv.conf", "bind", o->etc_resolv, etc_opts, ARRAY_SIZE(etc_opts));
	return add_volumes(o, mounts, err);
}

/* Namespaces and the paths the container may not see or change. */
/* The cgroup limits: pids (podman's default), memory, CPU time. */
static struct json_object *spec_resources(const struct spec_options *o)
{
	struct json_object *resources = json_object_new_object();
	if (o->pids_limit > 0) {
		struct json_object *pids = json_object_new_object();
		json_object_object_add(pids, "limit", json_object_new_int64(o->pids_limit));
		json_object_object_add(resources, "pids", pids);
	}
	if (o->memory_limit > 0) {
		struct json_object *memory = json_object_new_object();
		json_object_object_add(memory, "limit", json_object_new_int64(o->memory_limit));
		json_object_object_add(resources, "memory", memory);
	}
	if (o->cpu_millis > 0) {
		/* --cpus 1.5: 150 ms of CPU time in every 100 ms. */
		struct json_object *cpu = json_object_new_object();
		json_object_object_add(cpu, "period", json_object_new_int64(CPU_PERIOD_US));
		json_object_object_add(cpu, "quota", json_object_new_int64(o->cpu_millis * (CPU_PERIOD_US / 1000)));
		json_object_object_add(resources, "cpu", cpu);
	}
	return resources;
}

/* Namespaces, limits, seccomp and the paths the container may not see or change. */
static int spec_linux(const struct spec_options *o, struct json_object *linux_, struct err *err)
{
	struct json_object *namespaces = json_object_new_array();
	const char *ns[] = { "pid", "mount", "ipc", "uts", "network" };
	for (size_t i = 0; i < ARRAY_SIZE(ns) - (o->host_network ? 1 : 0); i++) {
		struct json_object *n = json_object_new_object();
		json_object_object_add(n, "type", json_object_new_string(ns[i]));
		json_object_array_add(namespaces, n);
	}
	json_object_object_add(linux_, "namespaces", namespaces);
	json_object_object_add(linux_, "resources", spec_resources(o));
	json_object_object_add(linux_, "maskedPaths", string_array(masked_paths, ARRAY_SIZE(masked_paths)));
	json_object_object_add(linux_, "readonlyPaths", string_array(readonly_paths, ARRAY_SIZE(readonly_paths)));
	if (!o->seccomp_profile)
		return 0;
	struct json_object *seccomp;
	int r = seccomp_from_profile(o->seccomp_profile, o->seccomp_profile_len, default_caps, ARRAY_SIZE(default_caps),
				     &seccomp, err);
	if (r < 0)
		return r;
	json_object_object_add(linux_, "seccomp", seccomp);
	return 0;
}

int spec_build(const struct image_process *img, const struct spec_options *o, char **ret_json, struct err *err)
{
	_cleanup_(strv_freep) char **args = NULL;
	int r = spec_args(img, o, &args, err);
	if (r < 0)
		return r;
	struct json_object *root = json_object_new_object();
	struct json_object *process = json_object_new_object();
	struct json_object *mounts = json_object_new_array();
	struct json_object *linux_ = json_object_new_object();
	if (!root || !process || !mounts || !linux_) {
		json_object_put(root);
		json_object_put(process);
		json_object_put(mounts);
		json_object_put(linux_);
		return -ENOMEM;
	}
	json_object_object_add(root, "ociVersion", json_object_new_string("1.0.2"));
	json_object_object_add(root, "process", process);
	json_object_object_add(root, "mounts", mounts);
	json_object_object_add(root, "linux", linux_);
	if ((r = spec_process(img, o, args, process, err)) < 0)
		goto fail;
	struct json_object *rootfs = json_object_new_object();
	json_object_object_add(rootfs, "path", json_object_new_string("rootfs"));
	json_object_object_add(rootfs, "readonly", json_object_new_boolean(false));
	json_object_object_add(root, "root", rootfs);
	if (o->hostname)
		json_object_object_add(root, "hostname", json_object_new_string(o->hostname));

	if ((r = spec_mounts(o, mounts, err)) < 0)
		goto fail;
	if ((r = spec_linux(o, linux_, err)) < 0)
		goto fail;

	const char *text =
	    json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
	*ret_json = text ? strdup(text) : NULL;
	r = *ret_json ? 0 : -ENOMEM;
fail:
	json_object_put(root);
	return r;
}
