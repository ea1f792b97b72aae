/* The lifecycle verbs: ps, logs, attach, exec, kill, wait, rm. */
#include <fcntl.h>
#include <getopt.h>
#include <json-c/json.h>
#include <poll.h>
#include <signal.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "launch.h"
#include "shim.h"

/* Options every verb takes: --root DIR. */
static const char *root_option;

static int find_or_complain(const char *root, const char *key, struct container *c)
{
	struct err err = { 0 };
	if (container_find(root, key, c, &err) < 0) {
		fprintf(stderr, "launch: %s\n", err.msg);
		return -1;
	}
	return 0;
}

/* Parses "--root DIR" and the verb's own options (getopt letters): flags[letter]
 * becomes its argument, or "" for an option without one. */
static int verb_options(int argc, char **argv, const char *letters, const struct option *extra, const char **flags)
{
	static const struct option base[] = { { "root", required_argument, NULL, 'R' }, { 0 } };
	struct option all[16];
	size_t n = 0;
	for (const struct option *p = extra; p && p->name; p++)
		all[n++] = *p;
	all[n++] = base[0];
	all[n] = (struct option){ 0 };
	_cleanup_free_ char *spec = strdup_printf("+%s", letters);
	int c;
	optind = 1;
	while (spec && (c = getopt_long(argc, argv, spec, all, NULL)) != -1) {
		if (c == 'R')
			root_option = optarg;
		else if (c == '?')
			return -EINVAL;
		else if (flags)
			flags[(unsigned char)c] = optarg ? optarg : "";
	}
	return optind;
}

/* What the runtime says of a container whose shim is gone. */
static bool shim_gone_running(const struct container *c)
{
	_cleanup_free_ char *root = state_root(root_option);
	_cleanup_free_ char *runtime = find_runtime(NULL);
	return root && runtime_running(root, runtime, c);
}

static const char *status_text(const struct container *c, char *buf, size_t size)
{
	int code = 0;
	switch (container_status(c, &code)) {
	case STATUS_EXITED:
		snprintf(buf, size, "Exited (%d)", code);
		break;
	case STATUS_RUNNING:
		snprintf(buf, size, "Up");
		break;
	case STATUS_SHIM_GONE:
		snprintf(buf, size, "%s (shim gone)", shim_gone_running(c) ? "Up" : "Unknown");
		break;
	default:
		snprintf(buf, size, "Created");
	}
	return buf;
}

/* docker's --format: {{.ID}} {{.Image}} {{.Command}} {{.Status}} {{.Names}}
 * {{.CreatedAt}}, and \\t and \\n escapes; values[] in that order. */
static void print_formatted(const char *format, const char *const values[6])
{
	static const char *const keys[] = { "{{.ID}}",     "{{.Image}}", "{{.Command}}",
					    "{{.Status}}", "{{.Names}}", "{{.CreatedAt}}" };
	for (const char *p = format; *p;) {
		size_t k = 0;
		while (k < ARRAY_SIZE(keys) && !str_has_prefix(p, keys[k]))
			k++;
		if (k < ARRAY_SIZE(keys)) {
			fputs(values[k] ? values[k] : "", stdout);
			p += strlen(keys[k]);
		} else if (p[0] == '\\' && (p[1] == 't' || p[1] == 'n')) {
			putchar(p[1] == 't' ? '\t' : '\n');
			p += 2;
		} else {
			putchar(*p++);
		}
	}
	putchar('\n');
}

static void print_container(const char *format, const struct container *c, const char *status)
{
	char created[32] = "", id[13];
	time_t t = (time_t)c->created;
	struct tm tm;
	if (localtime_r(&t, &tm))
		strftime(created, sizeof(created), "%Y-%m-%d %H:%M:%S", &tm);
	snprintf(id, sizeof(id), "%.12s", c->id);
	const char *const values[6] = { id, c->image, c->command, status, c->name, created };
	print_formatted(format, values);
}

int cmd_ps(int argc, char **argv)
{
	const char *flags[256] = { 0 };
	static const struct option opts[] = { { "all", no_argument, NULL, 'a' },
					      { "quiet", no_argument, NULL, 'q' },
					      { "format", required_argument, NULL, 'F' },
					      { 0 } };
	if (verb_options(argc, argv, "aq", opts, flags) < 0)
		return EXIT_LAUNCH_ERROR;
	_cleanup_free_ char *root = state_root(root_option);
	struct container *v;
	size_t n;
	if (!root || container_list(root, &v, &n) < 0) {
		fprintf(stderr, "launch: cannot list containers in \"%s\"\n", root ? root : "?");
		return EXIT_LAUNCH_ERROR;
	}
	const char *format = flags['F'];
	if (format && str_has_prefix(format, "table ")) {
		format += strlen("table ");
		static const char *const heads[6] = { "CONTAINER ID", "IMAGE", "COMMAND",
						      "STATUS",       "NAMES", "CREATED AT" };
		print_formatted(format, heads);
	} else if (!format && !flags['q']) {
		printf("%-14s%-32s%-24s%-22s%s\n", "CONTAINER ID", "IMAGE", "COMMAND", "STATUS", "NAMES");
	}
	for (size_t i = 0; i < n; i++) {
		char status[64];
		bool running = container_status(&v[i], NULL) == STATUS_RUNNING;
		status_text(&v[i], status, sizeof(status));
		if (!running && !flags['a'])
			;
		else if (flags['q'])
			printf("%.12s\n", v[i].id);
		else if (format)
			print_container(format, &v[i], status);
		else
			printf("%-14.12s%-32.31s%-24.23s%-22s%s\n", v[i].id, v[i].image, v[i].command, status,
			       v[i].name);
		container_done(&v[i]);
	}
	free(v);
	return 0;
}

/* Which records of a log launch logs prints, and how. */
struct log_view {
	char since[40];  /* records stamped before it are left out; "" for all */
	long tail;       /* only the last this many lines of the first print; < 0: all */
	bool timestamps; /* each line with the time the shim logged it */
};

/* "2026-12-02T14:44:16Z" (RFC 3339, or with a zone offset) or a duration
 * ago ("10m", "1h30m", "45s") into the log's own stamp form, which then
 * compares as text.  -EINVAL for anything else. */
static int parse_since(const char *text, char out[40])
{
	time_t t = 0;
	struct tm tm = { 0 };
	const char *end = strptime(text, "%Y-%m-%dT%H:%M:%S", &tm);
	if (end) {
		while (*end == '.' || (*end >= '0' && *end <= '9'))
			end++; /* fractions: whole seconds are enough */
		long offset = 0;
		int h, m;
		if ((*end == '+' || *end == '-') && sscanf(end + 1, "%d:%d", &h, &m) == 2)
			offset = (*end == '+' ? 1 : -1) * (h * 3600L + m * 60L);
		else if (*end != 'Z' && *end != '\0')
			return -EINVAL;
		t = timegm(&tm) - offset;
	} else {
		long seconds = 0;
		for (const char *p = text; *p;) {
			char *unit;
			long v = strtol(p, &unit, 10);
			if (unit == p || v < 0)
				return -EINVAL;
			seconds += v * (*unit == 'h' ? 3600 : *unit == 'm' ? 60 : *unit == 's' ? 1 : -1);
			if (!*unit || !strchr("hms", *unit))
				return -EINVAL;
			p = unit + 1;
		}
		t = time(NULL) - seconds;
	}
	struct tm utc;
	if (!gmtime_r(&t, &utc))
		return -EINVAL;
	strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &utc);
	return 0;
}

/* Prints the records of a k8s-file log from *offset on; returns false when
 * the file is gone. */
static bool print_log(const char *path, off_t *offset, struct log_view *view)
{
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	struct stat st;
	if (!f || fstat(fileno(f), &st) < 0)
		return false;
	/* --log-size-max truncated it: what is there now is new. */
	if (st.st_size < *offset)
		*offset = 0;
	if (fseeko(f, *offset, SEEK_SET) < 0)
		return false;
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	long skip = 0;
	if (view->tail >= 0) {
		long lines = 0;
		while ((len = getline(&line, &cap, f)) > 0)
			lines += line[len - 1] == '\n';
		skip = lines > view->tail ? lines - view->tail : 0;
		view->tail = -1; /* what follows later is printed whole */
		if (fseeko(f, *offset, SEEK_SET) < 0)
			return false;
	}
	while ((len = getline(&line, &cap, f)) > 0) {
		if (line[len - 1] != '\n')
			break; /* a record still being written: read it next time */
		*offset += len;
		line[--len] = '\0';
		/* TIME STREAM F|P TEXT */
		char *stream = strchr(line, ' ');
		char *tag = stream ? strchr(stream + 1, ' ') : NULL;
		char *text = tag ? strchr(tag + 1, ' ') : NULL;
		if (!text || (skip > 0 && skip--) || strncmp(line, view->since, strlen(view->since)) < 0)
			continue;
		FILE *out = strncmp(stream + 1, "stderr", 6) == 0 ? stderr : stdout;
		if (view->timestamps)
			fprintf(out, "%.*s ", (int)(stream - line), line);
		fputs(text + 1, out);
		if (tag[1] == 'F')
			fputc('\n', out);
		/* Line by line: where both streams go to one place, their lines
		 * arrive in the order they were written. */
		fflush(out);
	}
	free(line);
	fflush(stdout);
	fflush(stderr);
	return true;
}

int cmd_logs(int argc, char **argv)
{
	const char *flags[256] = { 0 };
	static const struct option opts[] = { { "follow", no_argument, NULL, 'f' },
					      { "tail", required_argument, NULL, 'T' },
					      { "since", required_argument, NULL, 'S' },
					      { "timestamps", no_argument, NULL, 't' },
					      { 0 } };
	int first = verb_options(argc, argv, "ft", opts, flags);
	struct log_view view = { .tail = -1 };
	char *end = NULL;
	if (flags['T'] && strcmp(flags['T'], "all") != 0 && ((view.tail = strtol(flags['T'], &end, 10)) < 0 || *end))
		first = -1;
	if (flags['S'] && parse_since(flags['S'], view.since) < 0)
		first = -1;
	view.timestamps = flags['t'] != NULL;
	if (first < 0 || first != argc - 1) {
		fprintf(stderr, "Usage: launch logs [-f] [-t] [--tail N] [--since TIME|DURATION] NAME|ID\n");
		return EXIT_LAUNCH_ERROR;
	}
	_cleanup_free_ char *root = state_root(root_option);
	struct container c;
	if (!root || find_or_complain(root, argv[first], &c) < 0)
		return EXIT_LAUNCH_ERROR;
	_cleanup_free_ char *path = strdup_printf("%s/%s", c.dir, SHIM_LOG_FILE);
	off_t offset = 0;
	int ret = 0;
	bool exists = path && print_log(path, &offset, &view);
	while (exists && flags['f']) {
		enum container_status s = container_status(&c, NULL);
		if (s != STATUS_RUNNING && s != STATUS_CREATED) {
			print_log(path, &offset, &view); /* what came after the last look */
			break;
		}
		struct timespec ts = { 0, 100 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		exists = print_log(path, &offset, &view);
	}
	_cleanup_free_ char *error_path = strdup_printf("%s/%s", c.dir, SHIM_LOG_ERROR_FILE);
	_cleanup_free_ char *why = NULL;
	size_t why_len;
	if (error_path && read_file_capped(error_path, SHIM_LOG_ERROR_SIZE, &why, &why_len) == 0 && why_len && why[0]) {
		why[strcspn(why, "\n")] = '\0';
		fprintf(stderr, "launch: the log of %s is incomplete: writing it failed: %s\n", c.name, why);
	}
	container_done(&c);
	return ret;
}

int cmd_attach(int argc, char **argv)
{
	static const struct option opts[] = { { "detach-keys", required_argument, NULL, 'k' }, { 0 } };
	const char *flags[256] = { 0 };
	int first = verb_options(argc, argv, "", opts, flags);
	if (first < 0 || first != argc - 1) {
		fprintf(stderr, "Usage: launch attach [--detach-keys KEYS] NAME|ID\n");
		return EXIT_LAUNCH_ERROR;
	}
	const char *keys = flags['k'] ? flags['k'] : "ctrl-p,ctrl-q";
	_cleanup_free_ char *root = state_root(root_option);
	struct container c;
	if (!root || find_or_complain(root, argv[first], &c) < 0)
		return EXIT_LAUNCH_ERROR;
	int ret = EXIT_LAUNCH_ERROR;
	if (container_status(&c, NULL) != STATUS_RUNNING) {
		fprintf(stderr, "launch: container %s is not running\n", c.name);
	} else {
		int sock = attach_connect(c.dir);
		if (sock < 0) {
			fprintf(stderr, "launch: cannot attach to %s: %s\n", c.name, strerror(-sock));
		} else {
			int r = attach_session(sock, c.dir, c.tty, c.interactive, keys);
			close(sock);
			if (r == ATTACH_DETACHED) {
				fprintf(stderr, "\r\nlaunch: detached from %s\r\n", c.name);
				ret = 0;
			} else if (r >= 0) {
				ret = r;
			} else {
				int code;
				ret = container_status(&c, &code) == STATUS_EXITED ? code : EXIT_LAUNCH_ERROR;
			}
		}
	}
	container_done(&c);
	return ret;
}

/* find_command() in the container's root, with the PATH of its process. */
static int exec_command_check(const struct container *c, const char *command)
{
	_cleanup_free_ char *config = strdup_printf("%s/config.json", c->dir);
	_cleanup_free_ char *rootfs = strdup_printf("%s/rootfs", c->dir);
	_cleanup_free_ char *data = NULL;
	size_t len;
	if (!config || !rootfs || read_file_capped(config, 8 << 20, &data, &len) < 0)
		return 0; /* the runtime will say */
	struct json_object *spec = json_tokener_parse(data), *process, *env;
	const char *path_env = NULL;
	if (spec && json_object_object_get_ex(spec, "process", &process) &&
	    json_object_object_get_ex(process, "env", &env) && json_object_is_type(env, json_type_array))
		for (size_t i = 0; i < json_object_array_length(env); i++) {
			const char *e = json_object_get_string(json_object_array_get_idx(env, i));
			if (e && str_has_prefix(e, "PATH="))
				path_env = e + strlen("PATH=");
		}
	_cleanup_close_ int rootfs_fd = open(rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC);
	int r = rootfs_fd < 0 ? 0 : find_command(rootfs_fd, command, path_env);
	json_object_put(spec);
	return r;
}

int cmd_exec(int argc, char **argv)
{
	const char *flags[256] = { 0 };
	static const struct option opts[] = { { "interactive", no_argument, NULL, 'i' },
					      { "tty", no_argument, NULL, 't' },
					      { "runtime", required_argument, NULL, 'r' },
					      { 0 } };
	int first = verb_options(argc, argv, "it", opts, flags);
	if (first < 0 || argc - first < 2) {
		fprintf(stderr, "Usage: launch exec [-i] [-t] NAME|ID COMMAND [ARG...]\n");
		return EXIT_LAUNCH_ERROR;
	}
	_cleanup_free_ char *root = state_root(root_option);
	_cleanup_free_ char *runtime = find_runtime(flags['r'] ? flags['r'] : NULL);
	struct container c;
	if (!root || find_or_complain(root, argv[first], &c) < 0)
		return EXIT_LAUNCH_ERROR;
	if (!runtime || container_status(&c, NULL) != STATUS_RUNNING) {
		fprintf(stderr, "launch: %s\n", runtime ? "the container is not running" : "cannot find runc or crun");
		container_done(&c);
		return EXIT_LAUNCH_ERROR;
	}
	/* The runtime's own words for a command that is not there are a raw
	 * log line and 255: say it as run does, with 127 or 126. */
	const char *command = argv[first + 1];
	int found = exec_command_check(&c, command);
	if (found < 0) {
		fprintf(stderr, "launch: cannot run \"%s\" in %s: %s\n", command, c.name,
			found == -ENOENT ? "no such file in the container's $PATH" : "not an executable file");
		container_done(&c);
		return found == -ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_RUN;
	}
	_cleanup_free_ char *rt_root = runtime_root(root);
	size_t n = (size_t)(argc - first - 1);
	const char **args = calloc(n + 8, sizeof(char *));
	if (!args || !rt_root) {
		container_done(&c);
		return EXIT_LAUNCH_ERROR;
	}
	size_t a = 0;
	args[a++] = runtime;
	args[a++] = "--root";
	args[a++] = rt_root;
	args[a++] = "exec";
	if (flags['t'])
		args[a++] = "--tty";
	args[a++] = c.id;
	for (size_t i = 0; i < n; i++)
		args[a++] = argv[first + 1 + i];
	/* The runtime runs the process in the container with our stdio; without
	 * -i, stdin is empty. */
	if (!flags['i'] && !flags['t'])
		(void)freopen("/dev/null", "r", stdin);
	fflush(NULL);
	execv(runtime, (char *const *)args);
	fprintf(stderr, "launch: cannot run \"%s\": %s\n", runtime, strerror(errno));
	return EXIT_LAUNCH_ERROR;
}

static int parse_signal(const char *s)
{
	static const struct {
		const char *name;
		int sig;
	} names[] = { { "HUP", SIGHUP },   { "INT", SIGINT },    { "QUIT", SIGQUIT }, { "KILL", SIGKILL },
		      { "USR1", SIGUSR1 }, { "USR2", SIGUSR2 },  { "TERM", SIGTERM }, { "CONT", SIGCONT },
		      { "STOP", SIGSTOP }, { "WINCH", SIGWINCH } };
	if (str_has_prefix(s, "SIG"))
		s += 3;
	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		if (strcasecmp(s, names[i].name) == 0)
			return names[i].sig;
	char *end;
	long v = strtol(s, &end, 10);
	return *s && !*end && v > 0 && v < NSIG ? (int)v : -1;
}

static int send_kill(const struct container *c, int sig)
{
	_cleanup_free_ char *path = strdup_printf("%s/%s", c->dir, SHIM_CTL_FIFO);
	_cleanup_close_ int fd = path ? open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC) : -1;
	if (fd < 0)
		return -errno;
	char line[32];
	snprintf(line, sizeof(line), "kill %d\n", sig);
	return write_full(fd, line, strlen(line));
}

/* Signals a running container through its shim or, without the shim,
 * through the runtime, which still holds it; -ESRCH when it does not run. */
static int signal_container(const char *root, const char *runtime, const struct container *c, int sig)
{
	enum container_status s = container_status(c, NULL);
	if (s == STATUS_RUNNING)
		return send_kill(c, sig);
	if (s == STATUS_SHIM_GONE && runtime_running(root, runtime, c))
		return runtime_kill(root, runtime, c, sig);
	return -ESRCH;
}

int cmd_kill(int argc, char **argv)
{
	const char *flags[256] = { 0 };
	static const struct option opts[] = { { "signal", required_argument, NULL, 's' }, { 0 } };
	int first = verb_options(argc, argv, "s:", opts, flags);
	if (first < 0 || first >= argc) {
		fprintf(stderr, "Usage: launch kill [-s SIGNAL] NAME|ID...\n");
		return EXIT_LAUNCH_ERROR;
	}
	int sig = flags['s'] ? parse_signal(flags['s']) : SIGKILL;
	if (sig < 0) {
		fprintf(stderr, "launch: invalid signal \"%s\"\n", flags['s']);
		return EXIT_LAUNCH_ERROR;
	}
	_cleanup_free_ char *root = state_root(root_option);
	_cleanup_free_ char *runtime = find_runtime(NULL);
	int ret = 0;
	for (int i = first; root && i < argc; i++) {
		struct container c;
		if (find_or_complain(root, argv[i], &c) < 0) {
			ret = EXIT_LAUNCH_ERROR;
			continue;
		}
		if (signal_container(root, runtime, &c, sig) < 0) {
			fprintf(stderr, "launch: container %s is not running\n", c.name);
			ret = EXIT_LAUNCH_ERROR;
		} else {
			printf("%s\n", argv[i]);
		}
		container_done(&c);
	}
	return ret;
}

/* Waits for the exit file; -ENOENT if the container vanished (--rm). */
/* The exit code, once there is one; -ENOENT when the container is gone
 * without one, -ESRCH when it ended without its shim to record it. */
static int wait_exit(const char *root, struct container *c, int timeout_ms)
{
	_cleanup_free_ char *runtime = find_runtime(NULL);
	for (int waited = 0; timeout_ms < 0 || waited < timeout_ms; waited += 50) {
		int code;
		switch (container_status(c, &code)) {
		case STATUS_EXITED:
			return code;
		case STATUS_SHIM_GONE:
			if (!runtime_running(root, runtime, c))
				return access(c->dir, F_OK) == 0 ? -ESRCH : -ENOENT;
			break;
		default:
			/* Removed (--rm): the shim left its exit code behind. */
			if (access(c->dir, F_OK) < 0)
				return container_removed_exit_code(root, c);
			break;
		}
		struct timespec ts = { 0, 50 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	return -ETIMEDOUT;
}

int cmd_wait(int argc, char **argv)
{
	int first = verb_options(argc, argv, "", NULL, NULL);
	if (first < 0 || first >= argc) {
		fprintf(stderr, "Usage: launch wait NAME|ID...\n");
		return EXIT_LAUNCH_ERROR;
	}
	_cleanup_free_ char *root = state_root(root_option);
	int ret = 0;
	for (int i = first; root && i < argc; i++) {
		struct container c;
		if (find_or_complain(root, argv[i], &c) < 0) {
			ret = EXIT_LAUNCH_ERROR;
			continue;
		}
		int code = wait_exit(root, &c, -1);
		if (code < 0) {
			fprintf(stderr, "launch: container %s ended without an exit code (%s)\n", c.name,
				strerror(-code));
			ret = EXIT_LAUNCH_ERROR;
		} else {
			printf("%d\n", code);
		}
		container_done(&c);
	}
	return ret;
}

int cmd_rm(int argc, char **argv)
{
	const char *flags[256] = { 0 };
	static const struct option opts[] = { { "force", no_argument, NULL, 'f' }, { 0 } };
	int first = verb_options(argc, argv, "f", opts, flags);
	if (first < 0 || first >= argc) {
		fprintf(stderr, "Usage: launch rm [-f] NAME|ID...\n");
		return EXIT_LAUNCH_ERROR;
	}
	_cleanup_free_ char *root = state_root(root_option);
	_cleanup_free_ char *runtime = find_runtime(NULL);
	int ret = 0;
	for (int i = first; root && i < argc; i++) {
		struct container c;
		struct err err = { 0 };
		if (find_or_complain(root, argv[i], &c) < 0) {
			ret = EXIT_LAUNCH_ERROR;
			continue;
		}
		enum container_status s = container_status(&c, NULL);
		bool orphan = s == STATUS_SHIM_GONE && runtime_running(root, runtime, &c);
		if ((s == STATUS_RUNNING || orphan) && !flags['f']) {
			fprintf(stderr, "launch: container %s is running%s: stop it first or use rm -f\n", c.name,
				orphan ? " (its shim is gone)" : "");
			ret = EXIT_LAUNCH_ERROR;
			container_done(&c);
			continue;
		}
		if (orphan) {
			(void)runtime_kill(root, runtime, &c, SIGKILL);
			for (int waited = 0; waited < 10000 && runtime_running(root, runtime, &c); waited += 50) {
				struct timespec ts = { 0, 50 * 1000 * 1000 };
				nanosleep(&ts, NULL);
			}
		}
		if (s == STATUS_RUNNING) {
			/* The shim drains, records the exit and deletes the runtime state.
			 * The init's own exit (and with it its pid namespace's) is
			 * waited for too: rm -f returns with the container's processes
			 * gone, whatever the shim managed. */
			_cleanup_close_ int init = container_init_pidfd(&c);
			(void)send_kill(&c, SIGKILL);
			(void)wait_exit(root, &c, 10000);
			if (init >= 0 && pidfd_send_signal(init, SIGKILL, NULL, 0) == 0)
				(void)pidfd_wait_exit(init, 10000);
		}
		if (container_remove(root, runtime, &c, &err) < 0) {
			fprintf(stderr, "launch: %s\n", err.msg);
			ret = EXIT_LAUNCH_ERROR;
		} else {
			printf("%s\n", argv[i]);
		}
		container_done(&c);
	}
	return ret;
}

/* docker's and podman's stop: SIGTERM, then SIGKILL once -t seconds passed. */
/* stop, and restart (which starts each container again once stopped). */
static int stop_or_restart(int argc, char **argv, bool restart)
{
	const char *flags[256] = { 0 };
	static const struct option opts[] = { { "time", required_argument, NULL, 't' }, { 0 } };
	int first = verb_options(argc, argv, "t:", opts, flags);
	char *end = NULL;
	long seconds = flags['t'] ? strtol(flags['t'], &end, 10) : 10;
	if (first < 0 || first >= argc || (flags['t'] && (*end || seconds < 0))) {
		fprintf(stderr, "Usage: launch %s [-t SECONDS] NAME|ID...\n", restart ? "restart" : "stop");
		return EXIT_LAUNCH_ERROR;
	}
	_cleanup_free_ char *root = state_root(root_option);
	_cleanup_free_ char *runtime = find_runtime(NULL);
	int ret = 0;
	for (int i = first; root && i < argc; i++) {
		struct container c;
		if (find_or_complain(root, argv[i], &c) < 0) {
			ret = EXIT_LAUNCH_ERROR;
			continue;
		}
		if (signal_container(root, runtime, &c, SIGTERM) == 0 &&
		    wait_exit(root, &c, (int)seconds * 1000) == -ETIMEDOUT) {
			(void)signal_container(root, runtime, &c, SIGKILL);
			(void)wait_exit(root, &c, 10000);
		}
		container_done(&c);
		if (restart) {
			/* launch start prints the name. */
			char *start_argv[] = { (char *)"start", (char *)"--root", root, argv[i], NULL };
			int r = cmd_start(4, start_argv);
			ret = r ? r : ret;
		} else {
			/* A container that is not running is stopped already, as docker has it. */
			printf("%s\n", argv[i]);
		}
	}
	return ret;
}

int cmd_stop(int argc, char **argv)
{
	return stop_or_restart(argc, argv, false);
}

int cmd_restart(int argc, char **argv)
{
	return stop_or_restart(argc, argv, true);
}

static struct json_object *json_string_or_null(const char *s)
{
	return s ? json_object_new_string(s) : NULL;
}

/* What docker inspect shows of a container, in its key names. */
static struct json_object *inspect_one(const char *root, const struct container *c)
{
	struct json_object *o = json_object_new_object(), *state = json_object_new_object();
	int code = 0;
	enum container_status s = container_status(c, &code);
	_cleanup_free_ char *runtime = find_runtime(NULL);
	bool running = s == STATUS_RUNNING || (s == STATUS_SHIM_GONE && runtime_running(root, runtime, c));
	static const char *const names[] = { "created", "running", "exited", "unknown" };
	const char *status = running ? "running" : names[s == STATUS_EXITED ? 2 : s == STATUS_CREATED ? 0 : 3];
	long pid = 0;
	_cleanup_free_ char *pid_path = strdup_printf("%s/%s", c->dir, SHIM_PID_FILE);
	_cleanup_free_ char *pid_text = NULL;
	size_t len;
	if (running && pid_path && read_file_capped(pid_path, 64, &pid_text, &len) == 0)
		pid = strtol(pid_text, NULL, 10);
	json_object_object_add(state, "Status", json_object_new_string(status));
	json_object_object_add(state, "Running", json_object_new_boolean(running));
	json_object_object_add(state, "ExitCode", json_object_new_int(s == STATUS_EXITED ? code : 0));
	json_object_object_add(state, "Pid", json_object_new_int64(pid));
	json_object_object_add(o, "Id", json_object_new_string(c->id));
	json_object_object_add(o, "Name", json_object_new_string(c->name));
	char created[32] = "";
	time_t t = (time_t)c->created;
	struct tm tm;
	if (gmtime_r(&t, &tm))
		strftime(created, sizeof(created), "%Y-%m-%dT%H:%M:%SZ", &tm);
	json_object_object_add(o, "Created", json_object_new_string(created));
	json_object_object_add(o, "State", state);
	json_object_object_add(o, "Image", json_object_new_string(c->image));
	json_object_object_add(o, "ImageDigest", json_string_or_null(c->image_digest));
	/* The bundle's process and mounts, as the runtime got them. */
	_cleanup_free_ char *config_path = strdup_printf("%s/config.json", c->dir);
	_cleanup_free_ char *config_text = NULL;
	struct json_object *spec = config_path && read_file_capped(config_path, 8 << 20, &config_text, &len) == 0
				       ? json_tokener_parse(config_text)
				       : NULL,
			   *v;
	struct json_object *config = json_object_new_object();
	if (spec && json_object_object_get_ex(spec, "process", &v)) {
		struct json_object *field;
		if (json_object_object_get_ex(v, "args", &field))
			json_object_object_add(config, "Cmd", json_object_get(field));
		if (json_object_object_get_ex(v, "env", &field))
			json_object_object_add(config, "Env", json_object_get(field));
		if (json_object_object_get_ex(v, "cwd", &field))
			json_object_object_add(config, "WorkingDir", json_object_get(field));
		if (json_object_object_get_ex(v, "terminal", &field))
			json_object_object_add(config, "Tty", json_object_get(field));
	}
	if (spec && json_object_object_get_ex(spec, "hostname", &v))
		json_object_object_add(config, "Hostname", json_object_get(v));
	json_object_object_add(o, "Config", config);
	json_object_object_add(o, "Mounts",
			       spec && json_object_object_get_ex(spec, "mounts", &v) ? json_object_get(v)
										     : json_object_new_array());
	json_object_put(spec);
	struct json_object *storage = json_object_new_object();
	_cleanup_free_ char *merged = strdup_printf("%s/rootfs", c->dir);
	_cleanup_free_ char *upper = c->storage ? strdup_printf("%s/upper", c->storage) : NULL;
	json_object_object_add(storage, "Name", json_object_new_string("imgfs"));
	json_object_object_add(storage, "MergedDir", json_string_or_null(merged));
	json_object_object_add(storage, "UpperDir", json_string_or_null(upper));
	json_object_object_add(o, "GraphDriver", storage);
	_cleanup_free_ char *log = strdup_printf("%s/%s", c->dir, SHIM_LOG_FILE);
	json_object_object_add(o, "LogPath", json_string_or_null(log));
	return o;
}

int cmd_inspect(int argc, char **argv)
{
	int first = verb_options(argc, argv, "", NULL, NULL);
	if (first < 0 || first >= argc) {
		fprintf(stderr, "Usage: launch inspect NAME|ID...\n");
		return EXIT_LAUNCH_ERROR;
	}
	_cleanup_free_ char *root = state_root(root_option);
	struct json_object *all = json_object_new_array();
	int ret = 0;
	for (int i = first; root && i < argc; i++) {
		struct container c;
		if (find_or_complain(root, argv[i], &c) < 0) {
			ret = EXIT_LAUNCH_ERROR;
			continue;
		}
		json_object_array_add(all, inspect_one(root, &c));
		container_done(&c);
	}
	puts(json_object_to_json_string_ext(all, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(all);
	return ret;
}
