/* launch-shim: the supervisor of one container, as conmon is for podman.
 *
 * Without a terminal it runs `RUNTIME run` in the foreground with pipes as
 * its stdio: one runtime process for the container's life instead of three
 * (create, start, delete), which is most of what a short container costs to
 * start.  With a terminal it runs `RUNTIME run --detach` with a console
 * socket, receives the pty master and becomes the container's parent (child
 * subreaper); a foreground runtime would want a terminal of its own to proxy.
 * With --wait-attach nothing is lost before the first attach: the foreground
 * runtime starts after it, and a terminal's output waits in the pty, unread.
 * The shim reports to the launcher over the sync pipe, and then, until the
 * container exits: logs its output, serves attach clients, applies window
 * sizes and forwards signals.  At the exit it drains the
 * output, records the exit code, deletes the container from the runtime and,
 * for --rm, removes everything it was given.  It knows nothing of images. */
#include "shim.h"

#include <fcntl.h>
#include <getopt.h>
#include <json-c/json.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>

#include "ctr_log.h"
#include "output_fs.h"
#include "shim_options.h"
#include "util.h"

#define MAX_CLIENTS 32
/* A client that takes no output for this long is dropped: it may hold the
 * container up, not the other clients or the shim. */
#define CLIENT_STALL_MS 5000
#define ATTACH_WAIT_MS 30000
#define CONSOLE_WAIT_MS 60000
#define SHIM_GO_WAIT_MS 120000

struct client {
	int fd;
	bool reading; /* false once it ended its stdin */
	/* A packet its socket had no room for: until it goes, no more output
	 * is read from the container (a client that does not read holds it
	 * up, as a full pipe would), for at most CLIENT_STALL_MS. */
	char *pending;
	size_t pending_len;
	int64_t pending_since_ms;
};

struct shim {
	struct options o;
	int sync_fd, listen_fd, ctl_fd, sig_fd;
	struct ctr_log log;
	int stdin_fd;             /* pipe write end or a duplicate of the pty master; -1 once closed */
	int out_fd[2];            /* stdout and stderr pipes, or the pty master as stdout */
	struct output_fs *output; /* or stdout and stderr as files, in the order written */
	struct client clients[MAX_CLIENTS];
	size_t n_clients;
	pid_t container_pid; /* 0 until the runtime reported it */
	pid_t runtime_pid;   /* the foreground `run`, when there is one */
	bool runtime_killed; /* it died of a signal: its state may be left behind */
	int exit_code;
	bool exited;
};

static const int forwarded_signals[] = { SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 };

static void report(struct shim *sh, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report(struct shim *sh, const char *fmt, ...)
{
	if (sh->sync_fd < 0)
		return;
	char line[2048];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	for (int i = 0; i < n; i++)
		if (line[i] == '\n')
			line[i] = ' ';
	line[n++] = '\n';
	(void)write_full(sh->sync_fd, line, (size_t)n);
}

static char *state_path(const struct shim *sh, const char *name)
{
	return strdup_printf("%s/%s", sh->o.state, name);
}

/* ---- the runtime ------------------------------------------------------------ */

static pid_t spawn(const char *const argv[], int in, int out, int err_fd)
{
	pid_t pid = fork();
	if (pid != 0)
		return pid;
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if ((in >= 0 && dup2(in, 0) < 0) || (out >= 0 && dup2(out, 1) < 0) || (err_fd >= 0 && dup2(err_fd, 2) < 0))
		_exit(125);
	execvp(argv[0], (char *const *)argv);
	_exit(127);
}

static int wait_exit_status(pid_t pid)
{
	int status;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return status;
}

/* Starts `RUNTIME VERB [OPTION] ID`; its pid or -errno. */
static pid_t start_runtime(struct shim *sh, const char *verb, const char *option)
{
	_cleanup_free_ char *log = state_path(sh, SHIM_RUNTIME_LOG);
	if (!log)
		return -ENOMEM;
	const char *argv[12] = {
		sh->o.runtime, "--root", sh->o.runtime_root, "--log", log, "--log-format", "json", verb
	};
	size_t a = 8;
	if (option)
		argv[a++] = option;
	argv[a++] = sh->o.id;
	argv[a] = NULL;
	int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
	pid_t pid = spawn(argv, devnull, devnull, devnull);
	int saved = errno;
	if (devnull >= 0)
		close(devnull);
	return pid < 0 ? -saved : pid;
}

static int wait_runtime(pid_t pid)
{
	if (pid < 0)
		return pid;
	int status = wait_exit_status(pid);
	return status < 0 ? status : WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

/* Runs `RUNTIME VERB [OPTION] ID` and waits for it. */
static int run_runtime(struct shim *sh, const char *verb, const char *option)
{
	return wait_runtime(start_runtime(sh, verb, option));
}

/* The last error the runtime logged, with the exit code it stands for. */
static int runtime_error(struct shim *sh, char *msg, size_t size)
{
	snprintf(msg, size, "the runtime \"%s\" failed for container %s", sh->o.runtime, sh->o.id);
	_cleanup_free_ char *path = state_path(sh, SHIM_RUNTIME_LOG);
	_cleanup_free_ char *data = NULL;
	size_t len;
	if (!path || read_file_capped(path, 4 << 20, &data, &len) < 0)
		return 125;
	for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n")) {
		struct json_object *o = json_tokener_parse(line), *level, *text;
		if (o && json_object_object_get_ex(o, "level", &level) &&
		    strcmp(json_object_get_string(level), "error") == 0 && json_object_object_get_ex(o, "msg", &text))
			snprintf(msg, size, "%s", json_object_get_string(text));
		json_object_put(o);
	}
	/* runc and crun say "exec: ..." or "executable file not found" when the
	 * command is the problem, as docker maps it. */
	if (strstr(msg, "executable file not found") ||
	    (strstr(msg, "exec") && strstr(msg, "no such file or directory")))
		return 127;
	if (strstr(msg, "exec") && (strstr(msg, "permission denied") || strstr(msg, "is a directory")))
		return 126;
	return 125;
}

/* ---- the console socket ---------------------------------------------------------- */

static int listen_unix(const char *path, int type)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	strcpy(addr.sun_path, path);
	int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	unlink(path);
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, 16) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	return fd;
}

static int receive_fd(int sock)
{
	char byte;
	struct iovec iov = { &byte, 1 };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} control;
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof(control.buf)
	};
	if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) < 0)
		return -errno;
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	if (!c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof(int)))
		return -EBADMSG;
	int fd;
	memcpy(&fd, CMSG_DATA(c), sizeof(fd));
	return fd;
}

/* Waits for the runtime to hand over the pty master, or to fail first. */
static int accept_console(int listen_fd, pid_t runtime_pid, int *ret_status)
{
	for (int waited = 0; waited < CONSOLE_WAIT_MS; waited += 100) {
		struct pollfd p = { listen_fd, POLLIN, 0 };
		int n = poll(&p, 1, 100);
		if (n > 0) {
			_cleanup_close_ int conn = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
			return conn < 0 ? -errno : receive_fd(conn);
		}
		if (waitpid(runtime_pid, ret_status, WNOHANG) == runtime_pid)
			return -ECHILD;
	}
	return -ETIMEDOUT;
}

/* ---- output: log and attach clients ----------------------------------------------- */

static void drop_client(struct shim *sh, size_t k)
{
	close(sh->clients[k].fd);
	free(sh->clients[k].pending);
	sh->clients[k] = sh->clients[--sh->n_clients];
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sends client k its pending packet, waiting at most wait_ms for room.
 * Returns false when the client was dropped: it failed, or it has taken
 * nothing for CLIENT_STALL_MS. */
static bool client_flush(struct shim *sh, size_t k, int wait_ms)
{
	struct client *c = &sh->clients[k];
	while (c->pending) {
		if (send(c->fd, c->pending, c->pending_len, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0) {
			free(c->pending);
			c->pending = NULL;
			break;
		}
		int64_t stalled = now_ms() - c->pending_since_ms;
		if ((errno != EAGAIN && errno != EINTR) || stalled >= CLIENT_STALL_MS) {
			if (errno == EAGAIN)
				fprintf(stderr,
					"launch-shim: %s: an attached client took no output for %d ms: dropped\n",
					sh->o.id, CLIENT_STALL_MS);
			drop_client(sh, k);
			return false;
		}
		if (wait_ms <= 0)
			break;
		int slice = (int)(CLIENT_STALL_MS - stalled) < wait_ms ? (int)(CLIENT_STALL_MS - stalled) : wait_ms;
		struct pollfd p = { c->fd, POLLOUT, 0 };
		int64_t before = now_ms();
		(void)poll(&p, 1, slice);
		wait_ms -= (int)(now_ms() - before);
	}
	return true;
}

static bool any_client_stalled(const struct shim *sh)
{
	for (size_t k = 0; k < sh->n_clients; k++)
		if (sh->clients[k].pending)
			return true;
	return false;
}

/* How long the event loop may sleep before a stalled client is due to go. */
static int stall_timeout_ms(const struct shim *sh)
{
	int64_t soonest = -1, now = now_ms();
	for (size_t k = 0; k < sh->n_clients; k++) {
		if (!sh->clients[k].pending)
			continue;
		int64_t left = sh->clients[k].pending_since_ms + CLIENT_STALL_MS - now;
		if (soonest < 0 || left < soonest)
			soonest = left < 0 ? 0 : left;
	}
	return (int)soonest;
}

static void broadcast(struct shim *sh, int tag, const char *data, size_t len)
{
	char packet[SHIM_PACKET_MAX + 1];
	packet[0] = (char)tag;
	for (size_t off = 0; off < len || (len == 0 && off == 0); off += SHIM_PACKET_MAX) {
		size_t n = len - off < SHIM_PACKET_MAX ? len - off : SHIM_PACKET_MAX;
		memcpy(packet + 1, data + off, n);
		for (size_t k = 0; k < sh->n_clients;) {
			/* Only after the exit, when output is drained, can one be
			 * pending here: the event loop reads none while one is. */
			if (sh->clients[k].pending && !client_flush(sh, k, CLIENT_STALL_MS))
				continue;
			struct client *c = &sh->clients[k];
			if (!c->pending && send(c->fd, packet, n + 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
				if (errno != EAGAIN || !(c->pending = malloc(n + 1))) {
					drop_client(sh, k);
					continue;
				}
				memcpy(c->pending, packet, n + 1);
				c->pending_len = n + 1;
				c->pending_since_ms = now_ms();
			}
			k++;
		}
		if (len == 0)
			break;
	}
}

/* False while a client has no room: the container's output then waits. */
static bool output_written(void *ctx, int stream, const char *data, size_t len)
{
	struct shim *sh = ctx;
	ctr_log_output(&sh->log, stream, data, len);
	broadcast(sh, stream ? SHIM_TAG_STDERR : SHIM_TAG_STDOUT, data, len);
	return !any_client_stalled(sh);
}

/* Returns false at the end of the stream. */
static bool pump_output(struct shim *sh, int stream)
{
	char buf[SHIM_PACKET_MAX];
	ssize_t n = read(sh->out_fd[stream], buf, sizeof(buf));
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return true;
	if (n <= 0) {
		close(sh->out_fd[stream]);
		sh->out_fd[stream] = -1;
		return false;
	}
	output_written(sh, stream, buf, (size_t)n);
	return true;
}

/* Returns false once no one writes to the output files. */
static bool serve_output(struct shim *sh, short revents)
{
	if (output_fs_serve(sh->output, revents))
		return true;
	output_fs_free(sh->output);
	sh->output = NULL;
	return false;
}

static void close_stdin(struct shim *sh)
{
	if (sh->stdin_fd >= 0 && !sh->o.terminal) {
		close(sh->stdin_fd);
		sh->stdin_fd = -1;
	}
}

static void client_input(struct shim *sh, size_t k, short revents)
{
	struct client *c = &sh->clients[k];
	char buf[SHIM_PACKET_MAX];
	ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
	if (n < 0) {
		if (errno != EAGAIN && errno != EINTR)
			drop_client(sh, k);
		return;
	}
	if (n == 0) {
		/* A closed socket is a detach; a shut-down writing side is stdin's end. */
		if (revents & POLLHUP) {
			drop_client(sh, k);
			return;
		}
		c->reading = false;
		if (!sh->o.leave_stdin_open)
			close_stdin(sh);
		return;
	}
	if (sh->stdin_fd >= 0 && write_full(sh->stdin_fd, buf, (size_t)n) < 0)
		close_stdin(sh);
}

static void accept_client(struct shim *sh)
{
	int fd = accept4(sh->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return;
	if (sh->n_clients == MAX_CLIENTS) {
		close(fd);
		return;
	}
	sh->clients[sh->n_clients++] = (struct client){ .fd = fd, .reading = true };
}

static void ctl_input(struct shim *sh)
{
	char buf[256];
	ssize_t n = read(sh->ctl_fd, buf, sizeof(buf) - 1);
	if (n <= 0)
		return;
	buf[n] = '\0';
	char *save = NULL;
	for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		unsigned rows, cols;
		int sig;
		if (sscanf(line, "resize %u %u", &rows, &cols) == 2 && sh->o.terminal && sh->out_fd[0] >= 0) {
			struct winsize ws = { .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
			(void)ioctl(sh->out_fd[0], TIOCSWINSZ, &ws);
		} else if (sscanf(line, "kill %d", &sig) == 1 && sig > 0 && sig < NSIG && !sh->exited &&
			   sh->container_pid > 0) {
			(void)kill(sh->container_pid, sig);
		}
	}
}

static void signal_input(struct shim *sh)
{
	struct signalfd_siginfo si;
	if (read(sh->sig_fd, &si, sizeof(si)) != sizeof(si))
		return;
	if (si.ssi_signo != SIGCHLD) {
		if (!sh->exited && sh->container_pid > 0)
			(void)kill(sh->container_pid, (int)si.ssi_signo);
		return;
	}
	int status;
	pid_t pid;
	/* A foreground runtime exits with the container's code, 128+signal
	 * for a signal, as the container's own parent would see it. */
	pid_t parent = sh->runtime_pid ? sh->runtime_pid : sh->container_pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
		if (pid == parent && parent > 0) {
			sh->exited = true;
			sh->exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
			if (sh->runtime_pid && WIFSIGNALED(status)) {
				sh->runtime_killed = true;
				if (sh->container_pid > 0)
					(void)kill(sh->container_pid, SIGKILL);
			}
		}
}

/* Everything the container wrote before it exited is in the pipes or the
 * pty: read it all before the exit code goes out.  (A write to the output
 * files had been taken when it returned; what waits there is requests of
 * writers killed at the exit.) */
static void drain(struct shim *sh)
{
	for (int spins = 0; sh->output && spins < 100000; spins++) {
		struct pollfd p = { output_fs_fd(sh->output), POLLIN, 0 };
		if (poll(&p, 1, 50) <= 0 || !serve_output(sh, p.revents))
			break;
	}
	for (int s = 0; s < 2; s++) {
		if (sh->out_fd[s] < 0)
			continue;
		fcntl(sh->out_fd[s], F_SETFL, O_NONBLOCK);
		for (int spins = 0; sh->out_fd[s] >= 0 && spins < 100000; spins++) {
			struct pollfd p = { sh->out_fd[s], POLLIN, 0 };
			if (poll(&p, 1, 50) <= 0)
				break;
			if (!pump_output(sh, s))
				break;
		}
	}
	ctr_log_flush(&sh->log);
}

/* ---- lifecycle ---------------------------------------------------------------- */

static void finish(struct shim *sh)
{
	drain(sh);
	/* A writer the container left behind gets errors now, as at a closed pipe. */
	output_fs_free(sh->output);
	sh->output = NULL;
	char code[16];
	int n = snprintf(code, sizeof(code), "%d", sh->exit_code);
	_cleanup_free_ char *exit_path = state_path(sh, SHIM_EXIT_FILE);
	if (exit_path)
		(void)write_file_replace(exit_path, code, (size_t)n);
	broadcast(sh, SHIM_TAG_EXIT, code, (size_t)n);
	while (sh->n_clients)
		drop_client(sh, 0);
	/* The container's slirp4netns, which launch started, ends with it. */
	(void)kill_recorded_process(SHIM_NETWORK_PID_FILE, "slirp4netns", SIGTERM);
	/* A foreground runtime deleted the container itself when it exited. */
	pid_t deleting = !sh->runtime_pid || sh->runtime_killed ? start_runtime(sh, "delete", "--force") : -1;
	if (sh->o.remove) {
		/* The state directory is ROOT/containers/ID, and our cwd. */
		_cleanup_free_ char *exit_record = strdup_printf("../../%s/%s", SHIM_EXITS_DIR, sh->o.id);
		if (exit_record && (mkdir("../../" SHIM_EXITS_DIR, 0700) == 0 || errno == EEXIST))
			(void)write_file_replace(exit_record, code, (size_t)n);
		/* While the runtime deletes the stopped container, which needs
		 * neither: the mount's daemon leaves meanwhile. */
		if (sh->o.unmount)
			(void)umount2(sh->o.unmount, MNT_DETACH);
		if (sh->o.storage)
			(void)remove_tree(sh->o.storage);
	}
	(void)wait_runtime(deleting);
	if (sh->o.remove) {
		/* The runtime's log is in it. */
		(void)remove_tree(sh->o.state);
		if (sh->o.unlink_path)
			(void)unlink(sh->o.unlink_path);
	}
}

static void event_loop(struct shim *sh)
{
	while (!sh->exited || sh->out_fd[0] >= 0 || sh->out_fd[1] >= 0 || sh->output) {
		if (sh->exited) {
			finish(sh);
			return;
		}
		struct pollfd p[6 + MAX_CLIENTS];
		size_t n = 0;
		p[n++] = (struct pollfd){ sh->sig_fd, POLLIN, 0 };
		p[n++] = (struct pollfd){ sh->listen_fd, POLLIN, 0 };
		p[n++] = (struct pollfd){ sh->ctl_fd, POLLIN, 0 };
		/* While a client has no room, the container's output waits in its pipe. */
		bool stalled = any_client_stalled(sh);
		p[n++] = (struct pollfd){ stalled ? -1 : sh->out_fd[0], POLLIN, 0 };
		p[n++] = (struct pollfd){ stalled ? -1 : sh->out_fd[1], POLLIN, 0 };
		p[n++] = (struct pollfd){ stalled || !sh->output ? -1 : output_fs_fd(sh->output), POLLIN, 0 };
		size_t first_client = n;
		for (size_t k = 0; k < sh->n_clients; k++) {
			struct client *c = &sh->clients[k];
			short events = (short)((c->reading ? POLLIN : 0) | (c->pending ? POLLOUT : 0));
			p[n++] = (struct pollfd){ events ? c->fd : -1, events, 0 };
		}
		if (poll(p, n, stalled ? stall_timeout_ms(sh) : -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (p[0].revents)
			signal_input(sh);
		if (p[1].revents)
			accept_client(sh);
		if (p[2].revents)
			ctl_input(sh);
		for (int s = 0; s < 2; s++)
			if (p[3 + s].revents)
				pump_output(sh, s);
		if (p[5].revents)
			serve_output(sh, p[5].revents);
		/* Backwards: dropping a client moves the last one into its slot.
		 * A slot whose client changed since the poll (a failed send
		 * dropped it) has no events of its own this round. */
		for (size_t k = n - first_client; k-- > 0;) {
			if (k >= sh->n_clients || p[first_client + k].fd != sh->clients[k].fd)
				continue;
			short revents = p[first_client + k].revents;
			/* Also when the poll timed out: a client stalled too long goes. */
			if (sh->clients[k].pending && !client_flush(sh, k, 0))
				continue;
			if (revents & (POLLIN | POLLHUP | POLLERR))
				client_input(sh, k, revents);
		}
	}
	/* Both streams ended: wait for the exit itself. */
	while (!sh->exited) {
		struct pollfd p = { sh->sig_fd, POLLIN, 0 };
		if (poll(&p, 1, -1) > 0)
			signal_input(sh);
	}
	finish(sh);
}

static int setup_files(struct shim *sh)
{
	_cleanup_free_ char *pid_path = state_path(sh, SHIM_SHIM_PID_FILE);
	_cleanup_free_ char *ctl = state_path(sh, SHIM_CTL_FIFO);
	_cleanup_free_ char *log = state_path(sh, SHIM_LOG_FILE);
	if (!pid_path || !ctl || !log)
		return -ENOMEM;
	char pid[32];
	int n = snprintf(pid, sizeof(pid), "%d", (int)getpid());
	int r = write_file_replace(pid_path, pid, (size_t)n);
	if (r < 0)
		return r;
	/* Socket paths are short and relative: a state directory may be deeper
	 * than sun_path's 108 bytes allow. */
	if (chdir(sh->o.state) < 0)
		return -errno;
	if ((sh->listen_fd = listen_unix(SHIM_ATTACH_SOCKET, SOCK_SEQPACKET)) < 0)
		return sh->listen_fd;
	unlink(ctl);
	if (mkfifo(ctl, 0600) < 0)
		return -errno;
	/* Opened for writing too, so the fifo never reports end-of-file. */
	if ((sh->ctl_fd = open(ctl, O_RDWR | O_NONBLOCK | O_CLOEXEC)) < 0)
		return -errno;
	if ((r = ctr_log_open(&sh->log, log, sh->o.log_size_max, sh->o.id)) < 0)
		return r;
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	for (size_t i = 0; i < ARRAY_SIZE(forwarded_signals); i++)
		sigaddset(&set, forwarded_signals[i]);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0 || (sh->sig_fd = signalfd(-1, &set, SFD_CLOEXEC)) < 0)
		return -errno;
	return 0;
}

static int read_pid_file(struct shim *sh)
{
	_cleanup_free_ char *path = state_path(sh, SHIM_PID_FILE);
	_cleanup_free_ char *data = NULL;
	size_t len;
	if (!path || read_file_capped(path, 64, &data, &len) < 0)
		return -EIO;
	long pid = strtol(data, NULL, 10);
	return pid > 1 ? (int)pid : -EIO;
}

/* Runs `run --detach` (or `create`) with a console socket: the container
 * runs (or waits for start), and the shim holds the pty master it received. */
static int run_terminal_container(struct shim *sh)
{
	_cleanup_free_ char *pid_file = state_path(sh, SHIM_PID_FILE);
	_cleanup_free_ char *log = state_path(sh, SHIM_RUNTIME_LOG);
	const char *console = "console.sock"; /* relative to the state directory, our cwd */
	if (!pid_file || !log)
		return -ENOMEM;
	_cleanup_close_ int console_fd = listen_unix(console, SOCK_STREAM);
	_cleanup_close_ int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (console_fd < 0)
		return console_fd;
	const char *argv[20] = { sh->o.runtime, "--root", sh->o.runtime_root, "--log", log, "--log-format", "json" };
	size_t a = 7;
	if (sh->o.create_first) {
		argv[a++] = "create";
	} else {
		argv[a++] = "run";
		argv[a++] = "--detach";
	}
	const char *rest[] = {
		"--bundle", sh->o.bundle, "--pid-file", pid_file, "--console-socket", console, sh->o.id
	};
	for (size_t i = 0; i < ARRAY_SIZE(rest); i++)
		argv[a++] = rest[i];
	argv[a] = NULL;
	pid_t pid = spawn(argv, devnull, devnull, devnull);
	if (pid < 0)
		return -errno;
	int status = 0;
	int master = accept_console(console_fd, pid, &status);
	unlink(console);
	if (master == -ECHILD)
		return -EIO;
	if (master < 0) {
		kill(pid, SIGKILL);
		wait_exit_status(pid);
		return master;
	}
	sh->out_fd[0] = master;
	sh->stdin_fd = dup(master);
	if (status == 0)
		status = wait_exit_status(pid);
	if (status < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return -EIO;
	int cpid = read_pid_file(sh);
	if (cpid < 0)
		return cpid;
	sh->container_pid = cpid;
	return 0;
}

static void close_pair(int fds[2])
{
	for (int k = 0; k < 2; k++)
		if (fds[k] >= 0)
			close(fds[k]);
}

/* Waits for a runtime command that returns once the container exists,
 * serving the container's output meanwhile: the runtime changes the owner
 * of the container's stdio as it creates it, and that request waits for
 * the shim.  Only this pid is reaped: a container that exited already is
 * the event loop's to reap. */
static int wait_runtime_serving(struct shim *sh, pid_t pid)
{
	_cleanup_close_ int pidfd = pidfd_open(pid, 0);
	for (;;) {
		int status;
		pid_t w = waitpid(pid, &status, WNOHANG);
		if (w == pid)
			return status;
		if (w < 0 && errno != EINTR)
			return -errno;
		struct pollfd p[2] = { { pidfd, POLLIN, 0 },
				       { sh->output ? output_fs_fd(sh->output) : -1, POLLIN, 0 } };
		/* Without a pidfd: looked at every millisecond. */
		if (poll(p, 2, pidfd < 0 ? 1 : -1) < 0 && errno != EINTR)
			return -errno;
		if (p[1].revents)
			serve_output(sh, p[1].revents);
	}
}

/* The container's stdio: its stdout and stderr as the shim's files, or
 * pipes where those cannot be mounted; given[] are the ends it writes to. */
static int open_stdio(struct shim *sh, int given[2], int in[2])
{
	int r = output_fs_open("output", output_written, sh, &sh->output, given);
	if (r < 0) {
		/* Pipes still carry everything, only not the order across them. */
		fprintf(stderr,
			"launch-shim: %s: cannot serve the output as files (%s): pipes keep no order between "
			"stdout and stderr\n",
			sh->o.id, strerror(-r));
		int out[2] = { -1, -1 }, errp[2] = { -1, -1 };
		if (pipe2(out, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0) {
			r = -errno;
			close_pair(out);
			return r;
		}
		given[0] = out[1];
		given[1] = errp[1];
		sh->out_fd[0] = out[0];
		sh->out_fd[1] = errp[0];
	}
	if (sh->o.stdin_open && pipe2(in, O_CLOEXEC) < 0) {
		r = -errno;
		close_pair(given);
		return r;
	}
	return 0;
}

/* Runs the container with the stdio of open_stdio(), and waits until the
 * runtime has written the container's pid (it started) or has exited (it
 * failed: -EIO, the reason in its log).  Output files go to the container
 * as they are: `run --detach` (or `create`) hands its stdio down, where a
 * foreground `run` would copy it through pipes of its own. */
static int run_container(struct shim *sh)
{
	_cleanup_free_ char *pid_file = state_path(sh, SHIM_PID_FILE);
	_cleanup_free_ char *log = state_path(sh, SHIM_RUNTIME_LOG);
	if (!pid_file || !log)
		return -ENOMEM;
	int in[2] = { -1, -1 }, given[2] = { -1, -1 };
	int r = open_stdio(sh, given, in);
	if (r < 0)
		return r;
	bool foreground = !sh->o.create_first && !sh->output;
	const char *argv[16] = { sh->o.runtime, "--root", sh->o.runtime_root, "--log", log, "--log-format", "json" };
	size_t a = 7;
	argv[a++] = sh->o.create_first ? "create" : "run";
	if (!foreground && !sh->o.create_first)
		argv[a++] = "--detach";
	const char *rest[] = { "--bundle", sh->o.bundle, "--pid-file", pid_file, sh->o.id };
	for (size_t i = 0; i < ARRAY_SIZE(rest); i++)
		argv[a++] = rest[i];
	argv[a] = NULL;
	_cleanup_close_ int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
	pid_t pid = spawn(argv, in[0] >= 0 ? in[0] : devnull, given[0], given[1]);
	if (in[0] >= 0)
		close(in[0]);
	close_pair(given);
	sh->stdin_fd = in[1];
	if (pid < 0)
		return -errno;
	if (!foreground) {
		/* It returns once the container runs (or waits for start): the
		 * container is then the shim's child (subreaper), as with a
		 * terminal. */
		int status = wait_runtime_serving(sh, pid);
		if (status < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
			return -EIO;
		int cpid = read_pid_file(sh);
		if (cpid > 0)
			sh->container_pid = cpid;
		return cpid < 0 ? cpid : 0;
	}
	sh->runtime_pid = pid;
	for (;;) {
		int cpid = read_pid_file(sh);
		if (cpid > 0) {
			sh->container_pid = cpid;
			return 0;
		}
		if (sh->exited)
			return -EIO;
		/* Looked for every millisecond (the runtime renames the file into
		 * place), not watched with inotify: closing an inotify instance
		 * waits for an SRCU grace period, up to 15 ms here, which held up
		 * the shim while the container ran. */
		struct pollfd p = { sh->sig_fd, POLLIN, 0 };
		if (poll(&p, 1, 1) < 0 && errno != EINTR)
			return -errno;
		if (p.revents)
			signal_input(sh);
	}
}

/* Reports why the container did not start (-EIO: the runtime said why, in
 * its log) and removes what the runtime left; the shim's exit status. */
static int start_failed(struct shim *sh, int r)
{
	char msg[1024];
	int code = r == -EIO ? runtime_error(sh, msg, sizeof(msg)) : 125;
	if (r != -EIO)
		snprintf(msg, sizeof(msg), "cannot run container %s: %s", sh->o.id, strerror(-r));
	report(sh, "error %d %s", code, msg);
	/* What a foreground runtime printed is said in the report: not output. */
	if (sh->runtime_pid && !sh->exited) {
		kill(sh->runtime_pid, SIGKILL);
		wait_exit_status(sh->runtime_pid);
	}
	(void)run_runtime(sh, "delete", "--force");
	return 1;
}

/* "created PID", then the launcher's go (one byte on SHIM_GO_FD) and the
 * runtime's start.  No go (the launcher could not connect the network, or
 * died): the container never runs. */
static int start_when_told(struct shim *sh)
{
	report(sh, "created %d", (int)sh->container_pid);
	struct pollfd p = { SHIM_GO_FD, POLLIN, 0 };
	char go;
	int n = poll(&p, 1, SHIM_GO_WAIT_MS);
	bool told = n > 0 && read(SHIM_GO_FD, &go, 1) == 1;
	close(SHIM_GO_FD);
	if (!told)
		return n == 0 ? -ETIMEDOUT : -ECANCELED;
	return run_runtime(sh, "start", NULL);
}

static void wait_first_client(struct shim *sh)
{
	struct pollfd p = { sh->listen_fd, POLLIN, 0 };
	if (poll(&p, 1, ATTACH_WAIT_MS) > 0)
		accept_client(sh);
}

int main(int argc, char **argv)
{
	struct shim sh = { .sync_fd = -1,
			   .listen_fd = -1,
			   .ctl_fd = -1,
			   .log = { .fd = -1, .error_fd = -1 },
			   .sig_fd = -1,
			   .stdin_fd = -1,
			   .out_fd = { -1, -1 } };
	if (parse_options(argc, argv, &sh.o) < 0) {
		usage(stderr);
		return 2;
	}
	static const int given[] = { SHIM_SYNC_FD, SHIM_GO_FD };
	close_inherited_fds(given, sh.o.create_first ? 2 : 1);
	struct stat st;
	if (fstat(SHIM_SYNC_FD, &st) == 0) {
		sh.sync_fd = SHIM_SYNC_FD;
		fcntl(sh.sync_fd, F_SETFD, FD_CLOEXEC);
	}
	if (sh.o.create_first)
		fcntl(SHIM_GO_FD, F_SETFD, FD_CLOEXEC);
	/* Outlive the launcher, away from its terminal and its signals, and
	 * become the parent of the container when the runtime exits. */
	if (setsid() < 0 && errno != EPERM) {
		report(&sh, "error 125 cannot start a session for the shim of %s: %s", sh.o.id, strerror(errno));
		return 1;
	}
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) {
		report(&sh, "error 125 cannot become a subreaper for %s: %s", sh.o.id, strerror(errno));
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	int r = setup_files(&sh);
	if (r < 0) {
		report(&sh, "error 125 cannot set up the state of %s in \"%s\": %s", sh.o.id, sh.o.state, strerror(-r));
		return 1;
	}
	/* The shim's own complaints go to a file next to the log. */
	_cleanup_free_ char *shim_log = state_path(&sh, "shim.log");
	int devnull = open("/dev/null", O_RDWR);
	int errlog = shim_log ? open(shim_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600) : -1;
	if (devnull >= 0) {
		dup2(devnull, 0);
		dup2(devnull, 1);
		close(devnull);
	}
	if (errlog >= 0) {
		dup2(errlog, 2);
		close(errlog);
	}

	if (sh.o.terminal && (r = run_terminal_container(&sh)) < 0)
		return start_failed(&sh, r);
	report(&sh, "ready");
	if (sh.o.wait_attach)
		wait_first_client(&sh);
	if (!sh.o.terminal && (r = run_container(&sh)) < 0)
		return start_failed(&sh, r);
	if (sh.o.create_first && (r = start_when_told(&sh)) < 0)
		return start_failed(&sh, r);
	report(&sh, "started %d", (int)sh.container_pid);
	close(sh.sync_fd);
	sh.sync_fd = -1;
	event_loop(&sh);
	return 0;
}
