/* Per-container state:
 *   ROOT/containers/ID/launch.json   what launch knows of the container
 *   ROOT/containers/ID/config.json   the bundle; rootfs/ is the imgfs mount
 *   STORAGE/containers/ID/upper/     its writable layer, on persistent storage
 *                                    (/run, where ROOT is, is RAM on most hosts)
 *   ROOT/containers/ID/{attach,ctl,ctr.log,exit,pid,...}  the shim's (shim.h)
 *   ROOT/names/NAME -> ../containers/ID
 *   ROOT/runtime/                    the runtime's --root
 * A dangling name link is free: a container removed by its shim (--rm)
 * takes its directory with it. */
#include <dirent.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/pidfd.h>
#include <sys/wait.h>
#include <time.h>

#include "launch.h"
#include "shim.h"

char *state_root(const char *option)
{
	if (option && *option)
		return strdup(option);
	const char *env = getenv("LAUNCH_ROOT");
	if (env && *env)
		return strdup(env);
	if (geteuid() == 0)
		return strdup("/run/launch");
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	if (xdg && *xdg)
		return strdup_printf("%s/launch", xdg);
	return strdup_printf("/tmp/launch-%u", (unsigned)geteuid());
}

char *storage_root(const char *state_option)
{
	const char *env = getenv("LAUNCH_STORAGE");
	if (env && *env)
		return strdup(env);
	if ((state_option && *state_option) || ((env = getenv("LAUNCH_ROOT")) && *env))
		return strdup_printf("%s/storage", state_option && *state_option ? state_option : env);
	if (geteuid() == 0)
		return strdup("/var/lib/launch");
	const char *xdg = getenv("XDG_DATA_HOME");
	if (xdg && *xdg)
		return strdup_printf("%s/launch", xdg);
	const char *home = getenv("HOME");
	if (!home || home[0] != '/') {
		errno = ENOENT;
		return NULL;
	}
	return strdup_printf("%s/.local/share/launch", home);
}

char *runtime_root(const char *root)
{
	return strdup_printf("%s/runtime", root);
}

void container_done(struct container *c)
{
	free(c->id);
	free(c->dir);
	free(c->name);
	free(c->image);
	free(c->command);
	free(c->storage);
	free(c->image_digest);
	free(c->network);
	free(c->ports);
	*c = (struct container){ 0 };
}

int container_save(const struct container *c)
{
	struct json_object *o = json_object_new_object();
	if (!o)
		return -ENOMEM;
	json_object_object_add(o, "id", json_object_new_string(c->id));
	json_object_object_add(o, "name", json_object_new_string(c->name ? c->name : ""));
	json_object_object_add(o, "image", json_object_new_string(c->image ? c->image : ""));
	json_object_object_add(o, "command", json_object_new_string(c->command ? c->command : ""));
	json_object_object_add(o, "tty", json_object_new_boolean(c->tty));
	json_object_object_add(o, "interactive", json_object_new_boolean(c->interactive));
	json_object_object_add(o, "rm", json_object_new_boolean(c->remove));
	json_object_object_add(o, "created", json_object_new_int64(c->created));
	json_object_object_add(o, "daemon_pid", json_object_new_int64(c->daemon_pid));
	json_object_object_add(o, "keeper_pid", json_object_new_int64(c->keeper_pid));
	if (c->storage)
		json_object_object_add(o, "storage", json_object_new_string(c->storage));
	if (c->image_digest)
		json_object_object_add(o, "image_digest", json_object_new_string(c->image_digest));
	if (c->network)
		json_object_object_add(o, "network", json_object_new_string(c->network));
	if (c->ports)
		json_object_object_add(o, "ports", json_object_new_string(c->ports));
	const char *text = json_object_to_json_string(o);
	_cleanup_free_ char *path = strdup_printf("%s/launch.json", c->dir);
	int r = path && text ? write_file_replace(path, text, strlen(text)) : -ENOMEM;
	json_object_put(o);
	return r;
}

static char *json_string_of(struct json_object *o, const char *key)
{
	struct json_object *v;
	return json_object_object_get_ex(o, key, &v) ? strdup(json_object_get_string(v)) : strdup("");
}

static int container_load(const char *root, const char *id, struct container *ret)
{
	_cleanup_free_ char *dir = strdup_printf("%s/containers/%s", root, id);
	_cleanup_free_ char *path = dir ? strdup_printf("%s/launch.json", dir) : NULL;
	_cleanup_free_ char *data = NULL;
	size_t len;
	if (!path)
		return -ENOMEM;
	int r = read_file_capped(path, 1 << 20, &data, &len);
	if (r < 0)
		return r;
	struct json_object *o = json_tokener_parse(data), *v;
	if (!o)
		return -EBADMSG;
	struct container c = { .dir = TAKE_PTR(dir) };
	c.id = json_string_of(o, "id");
	c.name = json_string_of(o, "name");
	c.image = json_string_of(o, "image");
	c.command = json_string_of(o, "command");
	c.tty = json_object_object_get_ex(o, "tty", &v) && json_object_get_boolean(v);
	c.interactive = json_object_object_get_ex(o, "interactive", &v) && json_object_get_boolean(v);
	c.remove = json_object_object_get_ex(o, "rm", &v) && json_object_get_boolean(v);
	c.created = json_object_object_get_ex(o, "created", &v) ? (long)json_object_get_int64(v) : 0;
	c.daemon_pid = json_object_object_get_ex(o, "daemon_pid", &v) ? (long)json_object_get_int64(v) : 0;
	c.keeper_pid = json_object_object_get_ex(o, "keeper_pid", &v) ? (long)json_object_get_int64(v) : 0;
	/* Absent for a container made before the writable layers moved there. */
	if (json_object_object_get_ex(o, "storage", &v) && json_object_get_string_len(v) > 0)
		c.storage = strdup(json_object_get_string(v));
	if (json_object_object_get_ex(o, "image_digest", &v) && json_object_get_string_len(v) > 0)
		c.image_digest = strdup(json_object_get_string(v));
	if (json_object_object_get_ex(o, "network", &v) && json_object_get_string_len(v) > 0)
		c.network = strdup(json_object_get_string(v));
	if (json_object_object_get_ex(o, "ports", &v) && json_object_get_string_len(v) > 0)
		c.ports = strdup(json_object_get_string(v));
	json_object_put(o);
	if (!c.id || !c.name || !c.image || !c.command || strcmp(c.id, id) != 0) {
		container_done(&c);
		return -EBADMSG;
	}
	*ret = c;
	return 0;
}

static bool valid_key(const char *key)
{
	if (!*key || strlen(key) > 128 || key[0] == '.')
		return false;
	for (const char *p = key; *p; p++)
		if (!(('a' <= *p && *p <= 'z') || ('A' <= *p && *p <= 'Z') || ('0' <= *p && *p <= '9') || *p == '_' ||
		      *p == '.' || *p == '-'))
			return false;
	return true;
}

int container_find(const char *root, const char *key, struct container *ret, struct err *err)
{
	if (!valid_key(key))
		return err_set(err, ENOENT, "no such container: \"%s\"", key);
	_cleanup_free_ char *link = strdup_printf("%s/names/%s", root, key);
	char target[PATH_MAX];
	ssize_t n = link ? readlink(link, target, sizeof(target) - 1) : -1;
	if (n > 0) {
		target[n] = '\0';
		const char *id = strrchr(target, '/');
		if (id && container_load(root, id + 1, ret) == 0)
			return 0;
	}
	if (container_load(root, key, ret) == 0)
		return 0;
	/* A unique prefix of an id, as docker accepts. */
	_cleanup_free_ char *dir = strdup_printf("%s/containers", root);
	DIR *d = dir ? opendir(dir) : NULL;
	if (!d)
		return err_set(err, ENOENT, "no such container: \"%s\"", key);
	char *match = NULL;
	bool ambiguous = false;
	struct dirent *de;
	while ((de = readdir(d)))
		if (de->d_name[0] != '.' && str_has_prefix(de->d_name, key)) {
			ambiguous = match != NULL;
			free(match);
			match = strdup(de->d_name);
		}
	closedir(d);
	int r = -ENOENT;
	if (match && !ambiguous)
		r = container_load(root, match, ret);
	free(match);
	if (ambiguous)
		return err_set(err, EINVAL, "\"%s\" matches more than one container: give more of the id", key);
	return r < 0 ? err_set(err, ENOENT, "no such container: \"%s\"", key) : 0;
}

int container_list(const char *root, struct container **ret, size_t *ret_n)
{
	_cleanup_free_ char *dir = strdup_printf("%s/containers", root);
	struct container *v = NULL;
	size_t n = 0, allocated = 0;
	DIR *d = dir ? opendir(dir) : NULL;
	if (!d) {
		*ret = NULL;
		*ret_n = 0;
		return errno == ENOENT ? 0 : -errno;
	}
	struct dirent *de;
	while ((de = readdir(d))) {
		struct container c;
		if (de->d_name[0] == '.' || container_load(root, de->d_name, &c) < 0)
			continue;
		if (grow_array((void **)&v, &allocated, n + 1, sizeof(*v)) < 0) {
			container_done(&c);
			break;
		}
		v[n++] = c;
	}
	closedir(d);
	*ret = v;
	*ret_n = n;
	return 0;
}

static int read_number(const char *dir, const char *name, long *ret)
{
	_cleanup_free_ char *path = strdup_printf("%s/%s", dir, name);
	_cleanup_free_ char *data = NULL;
	size_t len;
	if (!path)
		return -ENOMEM;
	int r = read_file_capped(path, 64, &data, &len);
	if (r < 0)
		return r;
	char *end;
	*ret = strtol(data, &end, 10);
	return end == data ? -EBADMSG : 0;
}

#define EXIT_RECORD_KEEP_SECONDS (24 * 3600)

int container_removed_exit_code(const char *root, const struct container *c)
{
	_cleanup_free_ char *dir = strdup_printf("%s/%s", root, SHIM_EXITS_DIR);
	long code;
	if (!dir || read_number(dir, c->id, &code) < 0)
		return -ENOENT;
	return (int)code;
}

void exit_records_prune(const char *root)
{
	_cleanup_free_ char *dir = strdup_printf("%s/%s", root, SHIM_EXITS_DIR);
	DIR *d = dir ? opendir(dir) : NULL;
	if (!d)
		return;
	time_t now = time(NULL);
	for (struct dirent *de; (de = readdir(d));) {
		struct stat st;
		if (de->d_name[0] != '.' && fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    now - st.st_mtime > EXIT_RECORD_KEEP_SECONDS)
			(void)unlinkat(dirfd(d), de->d_name, 0);
	}
	closedir(d);
}

bool process_alive(pid_t pid, const char *program)
{
	/* A zombie nobody reaped yet is as gone as a process can be. */
	char path[64], stat[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t len = fd >= 0 ? read(fd, stat, sizeof(stat) - 1) : -1;
	if (len <= 0)
		return false;
	stat[len] = '\0';
	const char *end = strrchr(stat, ')');
	if (!end || end[1] != ' ' || end[2] == 'Z' || end[2] == 'X')
		return false;
	/* Also not a stranger that got the number. */
	const char *name = strchr(stat, '(');
	size_t n = strlen(program) < 15 ? strlen(program) : 15;
	return name && strncmp(name + 1, program, n) == 0;
}

static void wait_imgfs_gone(long pid, int timeout_ms)
{
	/* A pidfd says when at once; polling costs a --rm run up to 10 ms. */
	if (pid > 1 && process_alive((pid_t)pid, "imgfs")) {
		_cleanup_close_ int pidfd = pidfd_open((pid_t)pid, 0);
		if (pidfd >= 0) {
			(void)pidfd_wait_exit(pidfd, timeout_ms);
			return;
		}
	}
	for (int waited = 0; pid > 1 && waited < timeout_ms && process_alive((pid_t)pid, "imgfs"); waited += 10) {
		struct timespec ts = { 0, 10 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}

void wait_daemon_gone(const struct container *c, int timeout_ms)
{
	/* The daemon leaves once the kernel lets go of the unmounted tree, and
	 * its keeper once the daemon and the connection are gone. */
	wait_imgfs_gone(c->daemon_pid, timeout_ms);
	wait_imgfs_gone(c->keeper_pid, timeout_ms);
}

int container_init_pidfd(const struct container *c)
{
	long pid;
	if (read_number(c->dir, SHIM_PID_FILE, &pid) < 0 || pid <= 1)
		return -1;
	return pidfd_open((pid_t)pid, 0);
}

enum container_status container_status(const struct container *c, int *ret_exit_code)
{
	long v;
	if (read_number(c->dir, SHIM_EXIT_FILE, &v) == 0) {
		if (ret_exit_code)
			*ret_exit_code = (int)v;
		return STATUS_EXITED;
	}
	if (read_number(c->dir, SHIM_SHIM_PID_FILE, &v) < 0)
		return STATUS_CREATED;
	return process_alive((pid_t)v, "launch-shim") ? STATUS_RUNNING : STATUS_SHIM_GONE;
}

static int run_quiet(const char *const argv[])
{
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		int devnull = open("/dev/null", O_RDWR);
		if (devnull >= 0) {
			dup2(devnull, 1);
			dup2(devnull, 2);
		}
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	int status;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

/* runc/crun state ID: its JSON on stdout, read to the end. */
static int runtime_state_json(const char *root, const char *runtime, const struct container *c, char *buf, size_t size)
{
	_cleanup_free_ char *rt_root = runtime_root(root);
	int out[2];
	if (!rt_root || pipe2(out, O_CLOEXEC) < 0)
		return -ENOMEM;
	pid_t pid = fork();
	if (pid == 0) {
		int devnull = open("/dev/null", O_RDWR);
		dup2(out[1], 1);
		if (devnull >= 0)
			dup2(devnull, 2);
		execlp(runtime, runtime, "--root", rt_root, "state", c->id, (char *)NULL);
		_exit(127);
	}
	close(out[1]);
	size_t len = 0;
	ssize_t n;
	while (pid > 0 && len < size - 1 && (n = read(out[0], buf + len, size - 1 - len)) > 0)
		len += (size_t)n;
	buf[len] = '\0';
	close(out[0]);
	int status;
	if (pid < 0)
		return -errno;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -ENOENT;
}

bool runtime_running(const char *root, const char *runtime, const struct container *c)
{
	char json[8192];
	/* Its status, as the runtime checked it (pid and start time): a pid
	 * file alone may name a process that took over the number. */
	if (!runtime || runtime_state_json(root, runtime, c, json, sizeof(json)) < 0)
		return false;
	struct json_object *state = json_tokener_parse(json), *status;
	bool running = state && json_object_object_get_ex(state, "status", &status) &&
		       strcmp(json_object_get_string(status), "running") == 0;
	json_object_put(state);
	return running;
}

int runtime_kill(const char *root, const char *runtime, const struct container *c, int sig)
{
	_cleanup_free_ char *rt_root = runtime_root(root);
	char signal_text[16];
	snprintf(signal_text, sizeof(signal_text), "%d", sig);
	if (!rt_root)
		return -ENOMEM;
	const char *argv[] = { runtime, "--root", rt_root, "kill", c->id, signal_text, NULL };
	return run_quiet(argv);
}

int container_remove(const char *root, const char *runtime, const struct container *c, struct err *err)
{
	_cleanup_free_ char *rt_root = runtime_root(root);
	_cleanup_free_ char *rootfs = strdup_printf("%s/rootfs", c->dir);
	if (!rt_root || !rootfs)
		return -ENOMEM;
	if (runtime) {
		const char *argv[] = { runtime, "--root", rt_root, "delete", "--force", c->id, NULL };
		(void)run_quiet(argv);
	}
	network_stop(c->dir);
	if (umount2(rootfs, MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT)
		return err_set(err, errno, "cannot unmount the root file system of %s at \"%s\": %s", c->id, rootfs,
			       strerror(errno));
	wait_daemon_gone(c, 5000);
	int r = c->storage ? remove_tree(c->storage) : 0;
	if (r < 0)
		return err_set(err, -r, "cannot remove \"%s\": %s", c->storage, strerror(-r));
	r = remove_tree(c->dir);
	if (r < 0)
		return err_set(err, -r, "cannot remove \"%s\": %s", c->dir, strerror(-r));
	if (c->name && *c->name) {
		_cleanup_free_ char *link = strdup_printf("%s/names/%s", root, c->name);
		if (link)
			unlink(link);
	}
	return 0;
}

static char *exe_dir(void)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return NULL;
	self[n] = '\0';
	char *slash = strrchr(self, '/');
	if (slash)
		*slash = '\0';
	return strdup(self);
}

static char *search_path(const char *name)
{
	const char *path = getenv("PATH");
	_cleanup_free_ char *copy = strdup(path && *path ? path : "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
	char *save = NULL;
	for (char *dir = copy ? strtok_r(copy, ":", &save) : NULL; dir; dir = strtok_r(NULL, ":", &save)) {
		char *candidate = strdup_printf("%s/%s", dir, name);
		if (candidate && access(candidate, X_OK) == 0)
			return candidate;
		free(candidate);
	}
	return NULL;
}

char *find_helper(const char *name)
{
	/* In the build tree the programs sit in sibling directories. */
	static const char *const places[] = { "", "../fs/", "../shim/", "../launcher/", "../libexec/imgfs/" };
	_cleanup_free_ char *dir = exe_dir();
	for (size_t i = 0; dir && i < ARRAY_SIZE(places); i++) {
		char *candidate = strdup_printf("%s/%s%s", dir, places[i], name);
		if (candidate && access(candidate, X_OK) == 0)
			return candidate;
		free(candidate);
	}
	return search_path(name);
}

char *find_runtime(const char *option)
{
	/* A path that is not a program is no runtime: the container is not to
	 * blame for it (it failed with 127 as if its command were missing). */
	if (option && *option && strchr(option, '/')) {
		struct stat st;
		if (stat(option, &st) < 0 || !S_ISREG(st.st_mode) || access(option, X_OK) < 0)
			return NULL;
		return strdup(option);
	}
	if (option && *option)
		return search_path(option);
	char *r = search_path("runc");
	return r ? r : search_path("crun");
}
