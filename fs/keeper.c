/* imgfs keeper: holds a mount's /dev/fuse connection and starts a new
 * server whenever the one serving it is gone while the mount is still
 * there; imgfs upgrade asks it for a new server from another binary.  It
 * does nothing else, so that it has nothing to crash on.  See takeover.h. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "imgfs.h"
#include "takeover.h"
#include "util.h"

#define KEEPER_FUSE_FD 3
#define KEEPER_CHANNEL_FD 4
#define KEEPER_STATE_FD 5
/* A server that dies this soon after its start, before it serves, is
 * started again after a pause that doubles up to the last. */
#define QUICK_DEATH_MS 2000
#define MAX_BACKOFF_MS 2000
/* Then the keeper gives up: the mount fails as it would without one. */
#define MAX_QUICK_DEATHS 30
#define UPGRADE_WAIT_S 120

struct keeper {
	const char *point;
	const char *cwd;     /* where the first server was started: its relative paths */
	char **restart_argv; /* after the program name, which restart_argv[-1] is */
	int state_fd;
	pid_t server;
	int server_pidfd, channel;
	bool server_ready;
	int64_t started_ms;
	unsigned quick_deaths;
	int binary_fd, fallback_binary_fd; /* the latter while an upgrade waits for its server */
	int listen_fd, client_fd;          /* the imgfs upgrade that waits for an answer */
	unsigned count;
	unsigned char init[TAKEOVER_INIT_MAX];
	size_t init_len;
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void socket_name(pid_t keeper, struct sockaddr_un *addr, socklen_t *len)
{
	*addr = (struct sockaddr_un){ .sun_family = AF_UNIX };
	/* Abstract: nothing to clean up after a keeper killed outright. */
	int n = snprintf(addr->sun_path + 1, sizeof(addr->sun_path) - 1, "imgfs-keeper-%d", (int)keeper);
	*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

/* Once the kernel let go of the connection (the mount was unmounted, or
 * aborted) nothing is left to serve. */
static bool mount_gone(void)
{
	struct pollfd p = { KEEPER_FUSE_FD, 0, 0 };
	return poll(&p, 1, 0) == 1 && (p.revents & (POLLERR | POLLNVAL));
}

static void answer_client(struct keeper *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void answer_client(struct keeper *k, const char *fmt, ...)
{
	if (k->client_fd < 0)
		return;
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	(void)send(k->client_fd, msg, strlen(msg), MSG_NOSIGNAL);
	close(k->client_fd);
	k->client_fd = -1;
}

static void hex_encode(const unsigned char *data, size_t len, char *out)
{
	for (size_t i = 0; i < len; i++)
		sprintf(out + 2 * i, "%02x", data[i]);
	out[2 * len] = '\0';
}

static int start_server(struct keeper *k)
{
	int pair[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0)
		return -errno;
	char hex[2 * TAKEOVER_INIT_MAX + 1], env[sizeof(hex) + 128];
	hex_encode(k->init, k->init_len, hex);
	snprintf(env, sizeof(env), "fuse=%d keeper=%d state=%d count=%u keeper_pid=%d init=%s", KEEPER_FUSE_FD,
		 KEEPER_CHANNEL_FD, k->state_fd >= 0 ? KEEPER_STATE_FD : -1, k->count, (int)getpid(), hex);
	pid_t pid = fork();
	if (pid == 0) {
		if (dup_for_exec(pair[1], KEEPER_CHANNEL_FD) < 0 || dup_for_exec(KEEPER_FUSE_FD, KEEPER_FUSE_FD) < 0 ||
		    (k->state_fd >= 0 && dup_for_exec(KEEPER_STATE_FD, KEEPER_STATE_FD) < 0) ||
		    setenv(TAKEOVER_ENV, env, 1) < 0)
			_exit(127);
		if (chdir(k->cwd) < 0 && chdir("/") < 0)
			_exit(127);
		execveat(k->binary_fd, "", k->restart_argv - 1, environ, AT_EMPTY_PATH);
		_exit(127);
	}
	int err = errno;
	close(pair[1]);
	if (pid < 0) {
		close(pair[0]);
		return -err;
	}
	k->server = pid;
	k->channel = pair[0];
	k->server_pidfd = (int)pidfd_open(pid, 0);
	k->server_ready = false;
	k->started_ms = now_ms();
	return k->server_pidfd < 0 ? -errno : 0;
}

/* One message of the server; false when none was waiting. */
static bool read_channel(struct keeper *k)
{
	unsigned char msg[1 + TAKEOVER_INIT_MAX];
	ssize_t n = recv(k->channel, msg, sizeof(msg), MSG_DONTWAIT);
	if (n <= 0) {
		if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
			close(k->channel);
			k->channel = -1;
		}
		return false;
	}
	if (msg[0] == 'I' && k->init_len == 0 && n > 1) {
		memcpy(k->init, msg + 1, (size_t)n - 1);
		k->init_len = (size_t)n - 1;
		k->server_ready = true;
	} else if (msg[0] == 'R') {
		k->server_ready = true;
		k->quick_deaths = 0;
		if (k->fallback_binary_fd >= 0) {
			close(k->fallback_binary_fd);
			k->fallback_binary_fd = -1;
			answer_client(k, "ok %d", (int)k->server);
		}
	}
	return true;
}

/* The server is gone: 0 when a new one serves, 1 when the keeper is done. */
static int server_gone(struct keeper *k)
{
	(void)waitpid(k->server, NULL, WNOHANG);
	close(k->server_pidfd);
	k->server_pidfd = -1;
	/* What it sent just before it died is still queued. */
	while (k->channel >= 0 && read_channel(k))
		;
	if (k->channel >= 0) {
		close(k->channel);
		k->channel = -1;
	}
	if (mount_gone()) {
		answer_client(k, "error the mount went away");
		return 1;
	}
	if (k->init_len == 0) {
		fprintf(stderr, "imgfs keeper: the server of \"%s\" died before the kernel started the session\n",
			k->point);
		return 1;
	}
	bool quick = !k->server_ready && now_ms() - k->started_ms < QUICK_DEATH_MS;
	if (!k->server_ready && k->fallback_binary_fd >= 0) {
		/* The new binary could not serve: back to the one that did. */
		close(k->binary_fd);
		k->binary_fd = k->fallback_binary_fd;
		k->fallback_binary_fd = -1;
		answer_client(k, "error the new server exited before it served; the mount stays with the old binary");
	} else if (quick && ++k->quick_deaths > MAX_QUICK_DEATHS) {
		fprintf(stderr, "imgfs keeper: giving up on \"%s\": its server keeps dying at start\n", k->point);
		return 1;
	}
	if (quick) {
		unsigned shift = k->quick_deaths < 5 ? k->quick_deaths : 5;
		int64_t pause = 60LL << shift;
		struct timespec ts = { 0, 0 };
		pause = pause > MAX_BACKOFF_MS ? MAX_BACKOFF_MS : pause;
		ts.tv_sec = pause / 1000;
		ts.tv_nsec = (long)(pause % 1000) * 1000000;
		nanosleep(&ts, NULL);
	}
	k->count++;
	int r = start_server(k);
	if (r < 0) {
		fprintf(stderr, "imgfs keeper: cannot start a server for \"%s\": %s\n", k->point, strerror(-r));
		return 1;
	}
	return 0;
}

static int receive_fd(int sock, char *buf, size_t size)
{
	char control[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { buf, size - 1 };
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control)
	};
	ssize_t n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	if (!c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof(int)))
		return -EBADMSG;
	int fd;
	memcpy(&fd, CMSG_DATA(c), sizeof(fd));
	return fd;
}

static void accept_client(struct keeper *k)
{
	int c = accept4(k->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	if (c < 0)
		return;
	struct ucred cred;
	socklen_t len = sizeof(cred);
	/* A new binary runs with the keeper's rights: only its owner or root may name one. */
	if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || (cred.uid != 0 && cred.uid != geteuid())) {
		(void)send(c, "error permission denied", 23, MSG_NOSIGNAL);
		close(c);
		return;
	}
	struct timeval tv = { 5, 0 };
	(void)setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	char cmd[64];
	int fd = receive_fd(c, cmd, sizeof(cmd));
	if (fd < 0 || strcmp(cmd, "upgrade") != 0) {
		if (fd >= 0)
			close(fd);
		(void)send(c, "error expected \"upgrade\" and a binary", 37, MSG_NOSIGNAL);
		close(c);
		return;
	}
	if (k->client_fd >= 0 || k->fallback_binary_fd >= 0) {
		close(fd);
		(void)send(c, "error an upgrade is under way", 29, MSG_NOSIGNAL);
		close(c);
		return;
	}
	k->fallback_binary_fd = k->binary_fd;
	k->binary_fd = fd;
	k->client_fd = c;
	/* It finishes what it has read and exits without unmounting;
	 * server_gone() starts the new binary. */
	if (k->server_pidfd >= 0)
		(void)pidfd_send_signal(k->server_pidfd, SIGUSR1, NULL, 0);
}

static int keeper_loop(struct keeper *k)
{
	for (;;) {
		struct pollfd p[3] = {
			{ k->server_pidfd, POLLIN, 0 },
			{ k->channel, POLLIN, 0 },
			{ k->listen_fd, POLLIN, 0 },
		};
		if (poll(p, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			return 1;
		}
		if (p[1].revents)
			(void)read_channel(k);
		if (p[2].revents & POLLIN)
			accept_client(k);
		if (p[0].revents && server_gone(k) != 0)
			return 0;
	}
}

int keeper_main(int argc, char **argv)
{
	/* imgfs keeper SERVER_PID POINT STATE_FD CWD -- ARGS... */
	if (argc < 7 || strcmp(argv[5], "--") != 0) {
		fprintf(stderr, "imgfs keeper is started by imgfs mount and imgfs store, not by hand\n");
		return IMGFS_EXIT_USAGE;
	}
	/* What a successor runs: "imgfs" ARGS... */
	argv[5] = (char *)"imgfs";
	struct keeper k = {
		.point = argv[2],
		.cwd = argv[4],
		.restart_argv = argv + 6,
		.state_fd = atoi(argv[3]) >= 0 ? KEEPER_STATE_FD : -1,
		.server = (pid_t)atoi(argv[1]),
		.channel = KEEPER_CHANNEL_FD,
		.fallback_binary_fd = -1,
		.client_fd = -1,
	};
	int keep[] = { KEEPER_FUSE_FD, KEEPER_CHANNEL_FD, KEEPER_STATE_FD };
	close_inherited_fds(keep, k.state_fd >= 0 ? 3 : 2);
	for (int fd = 3; fd <= 5; fd++)
		(void)fcntl(fd, F_SETFD, FD_CLOEXEC);
	/* The descriptor it names is not a successor's: 3 is the connection. */
	unsetenv(IMGFS_ERROR_FD_ENV);
	signal(SIGINT, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	if (chdir("/") < 0)
		return 1;
	/* The binary this keeper runs: a successor server runs it too, even
	 * once a package upgrade replaced the file. */
	k.binary_fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	k.server_pidfd = (int)pidfd_open(k.server, 0);
	k.listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	struct sockaddr_un addr;
	socklen_t len;
	socket_name(getpid(), &addr, &len);
	if (k.binary_fd < 0 || k.server_pidfd < 0 || k.listen_fd < 0 ||
	    bind(k.listen_fd, (struct sockaddr *)&addr, len) < 0 || listen(k.listen_fd, 4) < 0) {
		fprintf(stderr, "imgfs keeper: cannot keep \"%s\": %s\n", k.point, strerror(errno));
		return 1;
	}
	return keeper_loop(&k);
}

/* "keeper_pid N" of the mount's stats, 0 when it has no keeper. */
static pid_t keeper_of(const char *dir)
{
	char stats[2048];
	ssize_t n = getxattr(dir, IMGFS_STATS_XATTR, stats, sizeof(stats) - 1);
	if (n <= 0)
		return 0;
	stats[n] = '\0';
	const char *line = strstr(stats, "keeper_pid ");
	return line ? (pid_t)atoi(line + strlen("keeper_pid ")) : 0;
}

int upgrade_main(int argc, char **argv)
{
	if (argc != 2 || argv[1][0] == '-') {
		fprintf(stderr, "Usage: imgfs upgrade DIR\n");
		return IMGFS_EXIT_USAGE;
	}
	const char *dir = argv[1];
	pid_t keeper = keeper_of(dir);
	if (keeper <= 0)
		return report(ENOTSUP,
			      "cannot upgrade \"%s\": not an imgfs mount served with a keeper (imgfs mount "
			      "or store without --foreground)",
			      dir);
	_cleanup_close_ int exe = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	_cleanup_close_ int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	struct sockaddr_un addr;
	socklen_t len;
	socket_name(keeper, &addr, &len);
	if (exe < 0 || sock < 0 || connect(sock, (struct sockaddr *)&addr, len) < 0)
		return report(errno, "cannot reach the keeper (pid %d) of \"%s\": %s", (int)keeper, dir,
			      strerror(errno));
	char control[CMSG_SPACE(sizeof(int))] = { 0 };
	char cmd[] = "upgrade";
	struct iovec iov = { cmd, strlen(cmd) };
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control)
	};
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &exe, sizeof(int));
	struct timeval tv = { UPGRADE_WAIT_S, 0 };
	(void)setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (sendmsg(sock, &mh, MSG_NOSIGNAL) < 0)
		return report(errno, "cannot ask the keeper of \"%s\" to upgrade: %s", dir, strerror(errno));
	char answer[512];
	ssize_t n = recv(sock, answer, sizeof(answer) - 1, 0);
	if (n <= 0)
		return report(n < 0 ? errno : EIO, "the keeper of \"%s\" did not answer the upgrade: %s", dir,
			      n < 0 ? strerror(errno) : "it closed the connection");
	answer[n] = '\0';
	if (strncmp(answer, "ok ", 3) != 0)
		return report(EIO, "cannot upgrade \"%s\": %s", dir,
			      strncmp(answer, "error ", 6) == 0 ? answer + 6 : answer);
	printf("%s is served by pid %s\n", dir, answer + 3);
	return IMGFS_EXIT_OK;
}
