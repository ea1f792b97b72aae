/* launch run: mount the image with an upper layer of the container's own,
 * write the bundle, start the shim and attach to it (or print the id). */
#include <fcntl.h>
#include <limits.h>
#include <getopt.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>

#include "imgfs.h"
#include "launch.h"
#include "run.h"
#include "shim.h"

/* Where imgfs mount writes its error line (IMGFS_ERROR_FD_ENV). */
#define ERROR_LINE_FD 3
static int random_id(char id[65])
{
	unsigned char bytes[32];
	if (getrandom(bytes, sizeof(bytes), 0) != sizeof(bytes))
		return -errno;
	for (size_t i = 0; i < sizeof(bytes); i++)
		sprintf(id + 2 * i, "%02x", bytes[i]);
	return 0;
}

/* Reserves the name with a symlink; a dangling one belonged to a container
 * that its shim removed. */
static int reserve_name(const char *root, const char *name, const char *id)
{
	_cleanup_free_ char *link = strdup_printf("%s/names/%s", root, name);
	_cleanup_free_ char *target = strdup_printf("../containers/%s", id);
	if (!link || !target)
		return -ENOMEM;
	for (int attempt = 0; attempt < 2; attempt++) {
		if (symlink(target, link) == 0)
			return 0;
		if (errno != EEXIST)
			return -errno;
		struct stat st;
		if (stat(link, &st) == 0)
			return -EEXIST;
		unlink(link);
	}
	return -EEXIST;
}

/* The spec mounts procfs, a tmpfs and sysfs here (spec.c).  runc creates a
 * missing mount point through the mount, four FUSE round trips each; made
 * in the upper directory beforehand they cost nothing, and what covers them
 * hides their own attributes. */
static const char *const root_mount_points[] = { "proc", "dev", "sys" };

static int make_mount_points(const char *upper)
{
	if (mkdir(upper, 0755) < 0)
		return -errno;
	for (size_t i = 0; i < ARRAY_SIZE(root_mount_points); i++) {
		_cleanup_free_ char *path = strdup_printf("%s/%s", upper, root_mount_points[i]);
		if (!path)
			return -ENOMEM;
		if (mkdir(path, 0755) < 0)
			return -errno;
	}
	return 0;
}

/* Runs imgfs mount; on failure, *ret_errno and msg are the error imgfs
 * reported on its error line (IMGFS_ERROR_FD_ENV). */
/* Whether path is a mount point, from mountinfo: asking it would wait for a
 * daemon that may be gone. */
static bool is_mount_point(const char *path)
{
	_cleanup_fclose_ FILE *f = fopen("/proc/self/mountinfo", "re");
	_cleanup_free_ char *line = NULL;
	size_t size = 0;
	bool found = false;
	while (f && !found && getline(&line, &size, f) > 0) {
		char point[4097];
		found = sscanf(line, "%*d %*d %*s %*s %4096s", point) == 1 && strcmp(point, path) == 0;
	}
	return found;
}

static int mount_image(const struct run_options *o, const struct container *c, char *msg, size_t size)
{
	const char *image = c->image;
	_cleanup_free_ char *imgfs = find_helper("imgfs");
	_cleanup_free_ char *upper = strdup_printf("%s/upper", c->storage);
	_cleanup_free_ char *rootfs = strdup_printf("%s/rootfs", c->dir);
	if (!imgfs) {
		snprintf(msg, size, "cannot find the imgfs program next to launch or in $PATH");
		return -ENOENT;
	}
	if (!upper || !rootfs || mkdir(rootfs, 0755) < 0)
		return -errno;
	int r = make_mount_points(upper);
	if (r < 0) {
		snprintf(msg, size, "cannot create the upper directory \"%s\": %s", upper, strerror(-r));
		return r;
	}
	const char **argv = calloc(o->n_imgfs_args + 10, sizeof(char *));
	if (!argv)
		return -ENOMEM;
	size_t a = 0;
	argv[a++] = imgfs;
	argv[a++] = "mount";
	argv[a++] = "--pull";
	argv[a++] = o->pull;
	for (size_t i = 0; i < o->n_imgfs_args; i++)
		argv[a++] = o->imgfs_args[i];
	argv[a++] = "--upper";
	argv[a++] = upper;
	argv[a++] = image;
	argv[a++] = rootfs;
	int errpipe[2];
	if (pipe2(errpipe, O_CLOEXEC) < 0) {
		free(argv);
		return -errno;
	}
	pid_t pid = fork();
	if (pid == 0) {
		/* The error line comes on descriptor 3; what imgfs says for people
		 * goes where launch's own stderr goes. */
		char fd_text[16];
		snprintf(fd_text, sizeof(fd_text), "%d", ERROR_LINE_FD);
		if (dup2(errpipe[1], ERROR_LINE_FD) < 0 || setenv(IMGFS_ERROR_FD_ENV, fd_text, 1) < 0)
			_exit(127);
		execv(imgfs, (char *const *)argv);
		_exit(127);
	}
	free(argv);
	close(errpipe[1]);
	char line[1024];
	size_t len = 0;
	ssize_t n;
	while (len < sizeof(line) - 1 && (n = read(errpipe[0], line + len, sizeof(line) - 1 - len)) > 0)
		len += (size_t)n;
	line[len] = '\0';
	close(errpipe[0]);
	int status;
	if (pid < 0 || waitpid(pid, &status, 0) < 0)
		return -errno;
	if (WIFEXITED(status) && WEXITSTATUS(status) == IMGFS_EXIT_OK)
		return 0;
	line[strcspn(line, "\n")] = '\0';
	char *text;
	long code = strtol(line, &text, 10);
	if (text != line && *text == ' ') {
		snprintf(msg, size, "%s", text + 1);
		return code > 0 ? (int)-code : -EIO;
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
		snprintf(msg, size, "cannot run \"%s\"", imgfs);
	else
		snprintf(msg, size, "imgfs mount failed without saying why");
	return -EIO;
}

static int load_image_process(const char *rootfs, struct image_process *ret, struct err *err)
{
	char path[PATH_MAX];
	ssize_t n = getxattr(rootfs, IMGFS_CONFIG_XATTR, path, sizeof(path) - 1);
	if (n < 0)
		return err_set(err, errno, "cannot find the image config of the mount \"%s\": %s", rootfs,
			       strerror(errno));
	path[n] = '\0';
	_cleanup_free_ char *data = NULL;
	size_t len;
	int r = read_file_capped(path, 8 << 20, &data, &len);
	if (r < 0)
		return err_set(err, -r, "cannot read the image config \"%s\": %s", path, strerror(-r));
	return image_process_parse(data, len, ret, err);
}

static char *join_command(char **argv)
{
	size_t len = 1;
	for (char **a = argv; a && *a; a++)
		len += strlen(*a) + 1;
	char *s = calloc(1, len);
	for (char **a = argv; s && a && *a; a++) {
		if (a != argv)
			strcat(s, " ");
		strcat(s, *a);
	}
	return s;
}

/* -p mappings as launch.json keeps them: "[IP:]HOST:CTR/PROTO ...". */
static char *ports_text(const struct port_mapping *ports, size_t n)
{
	char buf[MAX_PORTS * 96] = "";
	for (size_t i = 0; i < n; i++)
		snprintf(buf + strlen(buf), sizeof(buf) - strlen(buf), "%s%s%s%u:%u/%s", i ? " " : "", ports[i].host_ip,
			 *ports[i].host_ip ? ":" : "", ports[i].host_port, ports[i].ctr_port, ports[i].proto);
	return strdup(buf);
}

static int ports_parse(const char *text, struct port_mapping *ports, size_t *n)
{
	*n = 0;
	_cleanup_free_ char *copy = text ? strdup(text) : NULL;
	char *save = NULL;
	for (char *tok = copy ? strtok_r(copy, " ", &save) : NULL; tok; tok = strtok_r(NULL, " ", &save))
		if (*n == MAX_PORTS || port_mapping_parse(tok, &ports[(*n)++]) < 0)
			return -EINVAL;
	return text && !copy ? -ENOMEM : 0;
}

/* The state directory, the name and the mount; on failure, what was made
 * is removed again and the message is in err. */
static int prepare(struct run_options *o, const char *image, const char *root, struct container *c, struct err *err)
{
	char id[65];
	int r = random_id(id);
	if (r < 0)
		return err_set(err, -r, "cannot make a container id: %s", strerror(-r));
	const char *subdirs[] = { "containers", "names", "runtime" };
	for (size_t i = 0; i < ARRAY_SIZE(subdirs); i++) {
		_cleanup_free_ char *p = strdup_printf("%s/%s", root, subdirs[i]);
		if (!p)
			return -ENOMEM;
		if ((r = mkdir_parents(p, 0700)) < 0)
			return err_set(err, -r, "cannot create the state directory \"%s\": %s", p, strerror(-r));
	}
	exit_records_prune(root);
	if (o->name && (!*o->name || strchr(o->name, '/') || o->name[0] == '.'))
		return err_set(err, EINVAL, "invalid container name \"%s\"", o->name);
	c->id = strdup(id);
	c->name = o->name ? strdup(o->name) : strdup_printf("c-%.12s", id);
	c->image = strdup(image);
	c->dir = strdup_printf("%s/containers/%s", root, id);
	_cleanup_free_ char *storage = storage_root(o->root);
	c->storage = storage ? strdup_printf("%s/containers/%s", storage, id) : NULL;
	c->tty = o->spec.tty;
	c->network = o->network ? strdup(o->network) : NULL;
	c->ports = o->n_ports ? ports_text(o->ports, o->n_ports) : NULL;
	if ((o->network && !c->network) || (o->n_ports && !c->ports))
		return -ENOMEM;
	c->interactive = o->interactive;
	c->remove = o->remove;
	c->created = (long)time(NULL);
	if (!c->id || !c->name || !c->image || !c->dir)
		return -ENOMEM;
	if (!c->storage)
		return err_set(err, errno, "no storage for the writable layer: %s (set $LAUNCH_STORAGE or $HOME)",
			       strerror(errno));
	if ((r = reserve_name(root, c->name, id)) < 0)
		return err_set(err, -r, "the container name \"%s\" is already in use", c->name);
	char msg[1024] = "";
	/* Recorded before anything is mounted: whatever happens to this run
	 * from here on, ps -a shows the container and rm -f removes it. */
	if (mkdir(c->dir, 0700) < 0)
		r = err_set(err, errno, "cannot create \"%s\": %s", c->dir, strerror(errno));
	else if ((r = container_save(c)) < 0)
		r = err_set(err, -r, "cannot record the container in \"%s\": %s", c->dir, strerror(-r));
	else if ((r = mkdir_parents(c->storage, 0700)) < 0)
		r = err_set(err, -r, "cannot create \"%s\": %s", c->storage, strerror(-r));
	else if ((r = mount_image(o, c, msg, sizeof(msg))) < 0)
		r = err_set(err, -r, "cannot mount image \"%s\": %s", image, *msg ? msg : strerror(-r));
	if (r == 0) {
		_cleanup_free_ char *rootfs = strdup_printf("%s/rootfs", c->dir);
		char pid[32];
		ssize_t n = rootfs ? getxattr(rootfs, IMGFS_PID_XATTR, pid, sizeof(pid) - 1) : -1;
		if (n > 0) {
			pid[n] = '\0';
			c->daemon_pid = strtol(pid, NULL, 10);
		}
		/* Its keeper outlives it by a moment: --rm and rm wait for both. */
		char stats[2048];
		n = rootfs ? getxattr(rootfs, IMGFS_STATS_XATTR, stats, sizeof(stats) - 1) : -1;
		const char *keeper = NULL;
		if (n > 0) {
			stats[n] = '\0';
			keeper = strstr(stats, "\nkeeper_pid ");
		}
		if (keeper)
			c->keeper_pid = strtol(keeper + strlen("\nkeeper_pid "), NULL, 10);
		char digest[80];
		n = rootfs ? getxattr(rootfs, IMGFS_MANIFEST_XATTR, digest, sizeof(digest) - 1) : -1;
		if (n > 0) {
			digest[n] = '\0';
			c->image_digest = strdup(digest);
		}
		(void)container_save(c); /* with the daemon, for rm -f to wait for it */
	}
	if (r < 0)
		(void)container_remove(root, NULL, c, NULL);
	return r;
}

static bool on_slirp(const struct run_options *o)
{
	return o->network && strcmp(o->network, "slirp4netns") == 0;
}

/* config.json from the image config and the options, and launch.json. */
static int write_bundle(struct run_options *o, struct container *c, struct err *err)
{
	if (on_slirp(o)) {
		/* The host name the container will have (see below), and its name. */
		char short_id[13];
		snprintf(short_id, sizeof(short_id), "%.12s", c->id);
		_cleanup_free_ char *names =
		    strdup_printf("%s %s", o->spec.hostname ? o->spec.hostname : short_id, c->name);
		int nr = names ? network_files(c->dir, names, err) : -ENOMEM;
		if (nr < 0)
			return nr;
		if (!o->etc_hosts_path)
			o->etc_hosts_path = strdup_printf("%s/%s", c->dir, NETWORK_HOSTS_FILE);
		if (!o->etc_resolv_path)
			o->etc_resolv_path = strdup_printf("%s/%s", c->dir, NETWORK_RESOLV_FILE);
		if (!o->etc_hosts_path || !o->etc_resolv_path)
			return -ENOMEM;
		o->spec.etc_hosts = o->etc_hosts_path;
		o->spec.etc_resolv = o->etc_resolv_path;
	}
	_cleanup_free_ char *rootfs = strdup_printf("%s/rootfs", c->dir);
	_cleanup_free_ char *config = strdup_printf("%s/config.json", c->dir);
	if (!rootfs || !config)
		return -ENOMEM;
	struct image_process img = { 0 };
	int r = load_image_process(rootfs, &img, err);
	if (r < 0)
		return r;
	_cleanup_close_ int rootfs_fd = open(rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC);
	_cleanup_free_ char *home = NULL, *init = NULL, *json = NULL;
	if (rootfs_fd < 0)
		r = err_set(err, errno, "cannot open \"%s\": %s", rootfs, strerror(errno));
	else {
		spec_read_ahead(rootfs_fd, &img, &o->spec);
		r = resolve_user(rootfs_fd, o->user ? o->user : img.user, &o->spec.uid, &o->spec.gid, &o->spec.groups,
				 &o->spec.n_groups, &home, err);
	}
	if (r == 0 && o->init && !(init = find_helper("launch-init")))
		r = err_set(err, ENOENT, "--init: cannot find the launch-init program next to launch");
	char hostname[13];
	snprintf(hostname, sizeof(hostname), "%.12s", c->id);
	struct spec_options spec = o->spec;
	spec.home = home;
	spec.init_path = init;
	if (!spec.hostname)
		spec.hostname = hostname;
	struct winsize ws;
	if (spec.tty && ioctl(STDIN_FILENO, TIOCGWINSZ, &ws) == 0) {
		spec.rows = ws.ws_row;
		spec.cols = ws.ws_col;
	}
	char **args = NULL;
	if (r == 0)
		r = spec_build(&img, &spec, &json, err);
	if (r == 0 && (r = spec_args(&img, &spec, &args, err)) == 0) {
		c->command = join_command(args);
		for (char **a = args; *a; a++)
			free(*a);
		free(args);
	}
	image_process_done(&img);
	if (r < 0)
		return r;
	if ((r = write_file_replace(config, json, strlen(json))) < 0 || (r = container_save(c)) < 0)
		return err_set(err, -r, "cannot write the bundle in \"%s\": %s", c->dir, strerror(-r));
	return 0;
}

struct shim_handle {
	pid_t pid;
	FILE *sync;
	int go_fd; /* --create-first: one byte here starts the container; -1: none */
};

static int start_shim(const struct run_options *o, const char *root, const struct container *c, const char *runtime,
		      struct shim_handle *ret, struct err *err)
{
	_cleanup_free_ char *shim = find_helper("launch-shim");
	_cleanup_free_ char *rt_root = runtime_root(root);
	_cleanup_free_ char *rootfs = strdup_printf("%s/rootfs", c->dir);
	_cleanup_free_ char *name_link = strdup_printf("%s/names/%s", root, c->name);
	if (!shim)
		return err_set(err, ENOENT, "cannot find the launch-shim program next to launch or in $PATH");
	if (!rt_root || !rootfs || !name_link)
		return -ENOMEM;
	const char *argv[32];
	char log_size_max[32];
	size_t a = 0;
	argv[a++] = shim;
	argv[a++] = "--id";
	argv[a++] = c->id;
	argv[a++] = "--state";
	argv[a++] = c->dir;
	argv[a++] = "--bundle";
	argv[a++] = c->dir;
	argv[a++] = "--runtime";
	argv[a++] = runtime;
	argv[a++] = "--runtime-root";
	argv[a++] = rt_root;
	if (o->spec.tty)
		argv[a++] = "--terminal";
	if (o->interactive)
		argv[a++] = "--stdin";
	if (!o->detach)
		argv[a++] = "--wait-attach";
	if (o->log_size_max > 0) {
		snprintf(log_size_max, sizeof(log_size_max), "%lld", (long long)o->log_size_max);
		argv[a++] = "--log-size-max";
		argv[a++] = log_size_max;
	}
	if (o->remove) {
		argv[a++] = "--rm";
		argv[a++] = "--unmount";
		argv[a++] = rootfs;
		argv[a++] = "--unlink";
		argv[a++] = name_link;
		argv[a++] = "--remove-storage";
		argv[a++] = c->storage;
	}
	/* slirp4netns joins the container's namespace before it runs. */
	if (on_slirp(o))
		argv[a++] = "--create-first";
	argv[a] = NULL;
	int sync[2], go[2] = { -1, -1 };
	if (pipe2(sync, O_CLOEXEC) < 0)
		return err_set(err, errno, "cannot start the shim: %s", strerror(errno));
	/* A socket, not a pipe: a go for a shim that died is an error, not a SIGPIPE. */
	if (on_slirp(o) && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, go) < 0) {
		close(sync[0]);
		close(sync[1]);
		return err_set(err, errno, "cannot start the shim: %s", strerror(errno));
	}
	ret->go_fd = -1;
	pid_t pid = fork();
	if (pid == 0) {
		if (dup2(sync[1], SHIM_SYNC_FD) < 0 || (go[0] >= 0 && dup2(go[0], SHIM_GO_FD) < 0))
			_exit(125);
		execv(shim, (char *const *)argv);
		dprintf(SHIM_SYNC_FD, "error 125 cannot run \"%s\": %s\n", shim, strerror(errno));
		_exit(125);
	}
	close(sync[1]);
	if (go[0] >= 0)
		close(go[0]);
	if (pid < 0) {
		close(sync[0]);
		if (go[1] >= 0)
			close(go[1]);
		return err_set(err, errno, "cannot start the shim: %s", strerror(errno));
	}
	ret->pid = pid;
	ret->go_fd = go[1];
	ret->sync = fdopen(sync[0], "r");
	if (!ret->sync) {
		close(sync[0]);
		return -ENOMEM;
	}
	return 0;
}

/* The next report of the shim: "ready", "started", or its error (message
 * in err, exit code returned). */
static int read_report(struct shim_handle *s, const char *expect, struct err *err)
{
	char line[2048];
	if (!fgets(line, sizeof(line), s->sync)) {
		err_set(err, EPIPE, "the shim exited without a report");
		return EXIT_LAUNCH_ERROR;
	}
	line[strcspn(line, "\n")] = '\0';
	int code;
	int at = 0;
	if (sscanf(line, "error %d %n", &code, &at) == 1 && at > 0) {
		err_set(err, EIO, "%s", line + at);
		return code > 0 && code < 256 ? code : EXIT_LAUNCH_ERROR;
	}
	if (!str_has_prefix(line, expect)) {
		err_set(err, EPROTO, "unexpected report from the shim: \"%s\"", line);
		return EXIT_LAUNCH_ERROR;
	}
	return 0;
}

static int wait_child(pid_t pid)
{
	int status;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return 0;
}

/* What a run made so far: run_abort() undoes it, whatever step failed. */
struct run {
	struct run_options o;
	char *root, *runtime;
	struct container c;
	bool prepared, bundle_written;
	struct shim_handle shim;
	int sock; /* the attach connection, -1 without one */
};

static void run_abort(struct run *run)
{
	if (run->shim.sync)
		fclose(run->shim.sync);
	run->shim.sync = NULL;
	if (run->shim.go_fd >= 0)
		close(run->shim.go_fd); /* a created container is not started */
	run->shim.go_fd = -1;
	if (run->shim.pid > 0) {
		/* A shim that waits for the bundle or for our attach would start
		 * the container after its timeout: it has nothing left to do. */
		if (!run->o.detach && run->sock < 0)
			kill(run->shim.pid, SIGKILL);
		if (run->sock >= 0)
			close(run->sock);
		run->sock = -1;
		wait_child(run->shim.pid);
	}
	if (run->prepared)
		(void)container_remove(run->root, run->bundle_written ? run->runtime : NULL, &run->c, NULL);
}

/* From the mount to a started container (attached unless -d); 0, or the
 * exit code of a failure, whose words are in err. */
static int run_connect(struct run *run, struct err *err);

static int run_start(struct run *run, const char *image, struct err *err)
{
	struct run_options *o = &run->o;
	if (!(run->root = state_root(o->root)))
		return EXIT_LAUNCH_ERROR;
	if (!(run->runtime = find_runtime(o->runtime))) {
		err_set(err, ENOENT, "cannot find the OCI runtime %s in $PATH",
			o->runtime ? o->runtime : "runc or crun");
		return EXIT_LAUNCH_ERROR;
	}
	if (prepare(o, image, run->root, &run->c, err) < 0)
		return EXIT_LAUNCH_ERROR;
	run->prepared = true;
	/* Attached and without a terminal, the shim starts the runtime only once
	 * we attach: it can start up while the bundle is written. */
	bool shim_first = !o->detach && !o->spec.tty;
	if (shim_first && start_shim(o, run->root, &run->c, run->runtime, &run->shim, err) < 0)
		return EXIT_LAUNCH_ERROR;
	if (write_bundle(o, &run->c, err) < 0)
		return EXIT_LAUNCH_ERROR;
	run->bundle_written = true;
	if (!shim_first && start_shim(o, run->root, &run->c, run->runtime, &run->shim, err) < 0)
		return EXIT_LAUNCH_ERROR;
	return run_connect(run, err);
}

/* From a shim that was started to a started container: attached unless -d,
 * connected to the network asked for. */
static int run_connect(struct run *run, struct err *err)
{
	struct run_options *o = &run->o;
	int code = read_report(&run->shim, "ready", err);
	if (code != 0)
		return code;
	if (!o->detach) {
		/* The shim waits for this connection before it starts the container,
		 * so not one byte of output is missed. */
		int sock = attach_connect(run->c.dir);
		if (sock < 0) {
			err_set(err, -sock, "cannot attach to %s: %s", run->c.id, strerror(-sock));
			return EXIT_LAUNCH_ERROR;
		}
		run->sock = sock;
	}
	if (run->shim.go_fd >= 0) {
		/* The container exists and waits: its network comes first. */
		code = read_report(&run->shim, "created", err);
		if (code == 0 && network_start(run->c.dir, o->ports, o->n_ports, err) < 0)
			code = EXIT_LAUNCH_ERROR;
		if (code == 0 && send(run->shim.go_fd, "g", 1, MSG_NOSIGNAL) != 1) {
			err_set(err, errno, "cannot start %s: %s", run->c.id, strerror(errno));
			code = EXIT_LAUNCH_ERROR;
		}
		close(run->shim.go_fd);
		run->shim.go_fd = -1;
		if (code != 0)
			return code;
	}
	code = read_report(&run->shim, "started", err);
	fclose(run->shim.sync);
	run->shim.sync = NULL;
	return code;
}

/* Attached to the started container until it exits or we detach. */
static int run_attached(struct run *run)
{
	struct run_options *o = &run->o;
	int r = attach_session(run->sock, run->c.dir, o->spec.tty, o->interactive, o->detach_keys);
	close(run->sock);
	run->sock = -1;
	if (r == ATTACH_DETACHED) {
		fprintf(stderr, "\r\nlaunch: detached from %s (launch attach %s)\r\n", run->c.name, run->c.name);
		return 0;
	}
	/* The shim finishes (runtime delete, and removal for --rm) before we
	 * return, as docker run --rm does: down to the mount's daemon. */
	wait_child(run->shim.pid);
	if (o->remove)
		wait_daemon_gone(&run->c, 5000);
	if (r >= 0)
		return r;
	int exit_code;
	if (container_status(&run->c, &exit_code) == STATUS_EXITED)
		return exit_code;
	fprintf(stderr, "launch: lost the connection to the shim of %s: %s\n", run->c.id, strerror(-r));
	return EXIT_LAUNCH_ERROR;
}

int cmd_run(int argc, char **argv)
{
	struct run run = { .o = { .detach_keys = DEFAULT_DETACH_KEYS, .pull = "missing" },
			   .shim = { .pid = -1, .go_fd = -1 },
			   .sock = -1 };
	struct err err = { 0 };
	int ret = EXIT_LAUNCH_ERROR;
	int first = parse_run_options(argc, argv, &run.o);
	if (first >= 0) {
		ret = run_start(&run, argv[first], &err);
		if (ret != 0) {
			fprintf(stderr, "launch: %s\n", err.code ? err.msg : "out of memory");
			run_abort(&run);
		} else if (run.o.detach) {
			printf("%s\n", run.c.id);
		} else {
			ret = run_attached(&run);
		}
	}
	free(run.root);
	free(run.runtime);
	container_done(&run.c);
	free(run.o.spec.groups);
	strv_free_n(run.o.env, run.o.n_env);
	strv_free_n(run.o.volumes, run.o.n_volumes);
	strv_free_n(run.o.imgfs_args, run.o.n_imgfs_args);
	free(run.o.seccomp_text);
	free(run.o.etc_hosts_path);
	free(run.o.etc_resolv_path);
	return ret;
}

/* Clears what the shim of an earlier run left: a new one writes them again.
 * The log goes on. */
static void clear_shim_state(const struct container *c)
{
	static const char *const files[] = { SHIM_EXIT_FILE,     SHIM_PID_FILE, SHIM_SHIM_PID_FILE,
					     SHIM_ATTACH_SOCKET, SHIM_CTL_FIFO, SHIM_NETWORK_PID_FILE };
	for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
		_cleanup_free_ char *path = strdup_printf("%s/%s", c->dir, files[i]);
		if (path)
			(void)unlink(path);
	}
}

/* docker start: a container that exited runs again, on its own writable
 * layer, attached with -a. */
int cmd_start(int argc, char **argv)
{
	static const struct option opts[] = { { "attach", no_argument, NULL, 'a' },
					      { "interactive", no_argument, NULL, 'i' },
					      { "root", required_argument, NULL, 'R' },
					      { 0 } };
	struct run run = { .o = { .detach_keys = DEFAULT_DETACH_KEYS, .pull = "missing", .detach = true },
			   .shim = { .pid = -1, .go_fd = -1 },
			   .sock = -1 };
	bool interactive = false;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "+ai", opts, NULL)) != -1) {
		if (c == 'a')
			run.o.detach = false;
		else if (c == 'i')
			interactive = true;
		else if (c == 'R')
			run.o.root = optarg;
		else
			optind = argc + 1;
	}
	if (optind != argc - 1) {
		fprintf(stderr, "Usage: launch start [-a] [-i] NAME|ID\n");
		return EXIT_LAUNCH_ERROR;
	}
	struct err err = { 0 };
	int ret = EXIT_LAUNCH_ERROR;
	char *rootfs = NULL;
	if (!(run.root = state_root(run.o.root)) || !(run.runtime = find_runtime(NULL)) ||
	    container_find(run.root, argv[optind], &run.c, &err) < 0) {
		fprintf(stderr, "launch: %s\n", err.code ? err.msg : "cannot find runc or crun");
		goto out;
	}
	enum container_status s = container_status(&run.c, NULL);
	if (s == STATUS_RUNNING || s == STATUS_SHIM_GONE) {
		fprintf(stderr, "launch: container %s is running already\n", run.c.name);
		goto out;
	}
	run.o.spec.tty = run.c.tty;
	/* Connected again as it was: run_connect starts slirp4netns for it. */
	run.o.network = run.c.network;
	if (ports_parse(run.c.ports, run.o.ports, &run.o.n_ports) < 0) {
		fprintf(stderr, "launch: container %s: its recorded ports \"%s\" are not valid\n", run.c.name,
			run.c.ports);
		goto out;
	}
	run.o.interactive = interactive && run.c.interactive;
	run.o.remove = run.c.remove;
	clear_shim_state(&run.c);
	/* The mount outlives the container's process; after a reboot it is
	 * made again, over the same writable layer. */
	rootfs = strdup_printf("%s/rootfs", run.c.dir);
	char msg[1024] = "";
	int r = rootfs && is_mount_point(rootfs) ? 0 : mount_image(&run.o, &run.c, msg, sizeof(msg));
	if (r < 0) {
		fprintf(stderr, "launch: cannot mount image \"%s\": %s\n", run.c.image, *msg ? msg : strerror(-r));
		goto out;
	}
	if (start_shim(&run.o, run.root, &run.c, run.runtime, &run.shim, &err) < 0 ||
	    (ret = run_connect(&run, &err)) != 0) {
		fprintf(stderr, "launch: %s\n", err.code ? err.msg : "out of memory");
		ret = ret ? ret : EXIT_LAUNCH_ERROR;
		/* Not prepared here: the container stays, only the shim goes. */
		run_abort(&run);
		goto out;
	}
	ret = run.o.detach ? (printf("%s\n", argv[optind]), 0) : run_attached(&run);
out:
	free(rootfs);
	free(run.root);
	free(run.runtime);
	container_done(&run.c);
	return ret;
}
