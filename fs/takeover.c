/* The server's side of a mount that outlives it: the session hooks that
 * keep or replay FUSE_INIT, the keeper's start, and the handover on
 * SIGUSR1.  See takeover.h. */
#include "takeover.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "util.h"

/* Protocol 7.40; this machine's headers are older than the kernel. */
#ifndef FUSE_NOTIFY_RESEND
#define FUSE_NOTIFY_RESEND 7
#endif

/* major, minor, max_readahead and flags: what every kernel sends. */
#define FUSE_INIT_IN_MIN 16

enum replay { REPLAY_NONE, REPLAY_PENDING, REPLAY_HANDED, REPLAY_DONE };

static struct {
	struct takeover *t;
	struct fuse_session *se;
	pthread_mutex_t lock;
	pthread_cond_t done;
	enum replay replay;
	uint64_t replay_unique;
	bool init_sent; /* the first server's FUSE_INIT went to the keeper */
	volatile sig_atomic_t handing_over;
} io = { .lock = PTHREAD_MUTEX_INITIALIZER, .done = PTHREAD_COND_INITIALIZER };

static int parse_hex(const char *hex, unsigned char *out, size_t max, size_t *ret_len)
{
	size_t n = strlen(hex);
	if (n % 2 || n / 2 > max)
		return -EINVAL;
	for (size_t i = 0; i < n / 2; i++) {
		unsigned v;
		if (sscanf(hex + 2 * i, "%2x", &v) != 1)
			return -EINVAL;
		out[i] = (unsigned char)v;
	}
	*ret_len = n / 2;
	return 0;
}

int takeover_from_env(struct takeover *t)
{
	*t = (struct takeover){ .fuse_fd = -1, .keeper_fd = -1, .state_fd = -1 };
	const char *env = getenv(TAKEOVER_ENV);
	if (!env)
		return 0;
	char hex[2 * TAKEOVER_INIT_MAX + 1];
	int keeper_pid;
	int n = sscanf(env, "fuse=%d keeper=%d state=%d count=%u keeper_pid=%d init=%512s", &t->fuse_fd, &t->keeper_fd,
		       &t->state_fd, &t->count, &keeper_pid, hex);
	unsetenv(TAKEOVER_ENV);
	if (n != 6 || t->fuse_fd < 3 || t->keeper_fd < 3 || t->state_fd < -1 ||
	    parse_hex(hex, t->init, sizeof(t->init), &t->init_len) < 0 ||
	    t->init_len < sizeof(struct fuse_in_header) + FUSE_INIT_IN_MIN ||
	    ((const struct fuse_in_header *)t->init)->opcode != FUSE_INIT)
		return -EINVAL;
	t->keeper_pid = keeper_pid;
	t->resuming = true;
	/* Given for this process only: nothing it starts may hold them. */
	const int given[] = { t->fuse_fd, t->keeper_fd, t->state_fd };
	for (size_t i = 0; i < ARRAY_SIZE(given); i++)
		if (given[i] >= 0)
			(void)fcntl(given[i], F_SETFD, FD_CLOEXEC);
	return 0;
}

size_t takeover_fds(const struct takeover *t, int *fds, size_t max)
{
	size_t n = 0;
	const int all[] = { t->fuse_fd, t->keeper_fd, t->state_fd };
	for (size_t i = 0; i < ARRAY_SIZE(all); i++)
		if (all[i] >= 0 && n < max)
			fds[n++] = all[i];
	return n;
}

static void send_to_keeper(char kind, const void *data, size_t len)
{
	if (!io.t || io.t->keeper_fd < 0)
		return;
	unsigned char msg[1 + TAKEOVER_INIT_MAX];
	msg[0] = (unsigned char)kind;
	if (len > TAKEOVER_INIT_MAX)
		return;
	if (len)
		memcpy(msg + 1, data, len);
	/* A keeper that is gone costs the mount its survival, not its service. */
	(void)send(io.t->keeper_fd, msg, 1 + len, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static void unlock_mutex(void *mutex)
{
	pthread_mutex_unlock(mutex);
}

/* A request from the kernel; the first FUSE_INIT goes to the keeper too. */
static ssize_t read_request(int fd, void *buf, size_t len)
{
	ssize_t n = read(fd, buf, len);
	if (n >= (ssize_t)sizeof(struct fuse_in_header) && (size_t)n <= TAKEOVER_INIT_MAX &&
	    ((const struct fuse_in_header *)buf)->opcode == FUSE_INIT &&
	    !__atomic_exchange_n(&io.init_sent, true, __ATOMIC_SEQ_CST))
		send_to_keeper('I', buf, (size_t)n);
	return n;
}

static ssize_t hook_read(int fd, void *buf, size_t len, void *userdata)
{
	(void)userdata;
	/* Every read of the session passes here: the lock only while a
	 * replay is under way. */
	enum replay replay = __atomic_load_n(&io.replay, __ATOMIC_ACQUIRE);
	if (replay == REPLAY_NONE || replay == REPLAY_DONE)
		return read_request(fd, buf, len);
	pthread_mutex_lock(&io.lock);
	if (io.replay == REPLAY_PENDING && len >= io.t->init_len) {
		__atomic_store_n(&io.replay, REPLAY_HANDED, __ATOMIC_RELEASE);
		memcpy(buf, io.t->init, io.t->init_len);
		pthread_mutex_unlock(&io.lock);
		return (ssize_t)io.t->init_len;
	}
	/* Nothing else may be processed before libfuse has taken the replayed
	 * FUSE_INIT: it answers EIO to any request before it. */
	pthread_cleanup_push(unlock_mutex, &io.lock);
	while (io.replay == REPLAY_HANDED)
		pthread_cond_wait(&io.done, &io.lock);
	pthread_cleanup_pop(1);
	return read_request(fd, buf, len);
}

/* Requests the dead server had read and not answered are on the kernel's
 * processing list: it queues them again, marked, and they are answered as
 * any other. */
static void ask_resend(int fd)
{
	struct fuse_out_header h = { .len = sizeof(h), .error = FUSE_NOTIFY_RESEND, .unique = 0 };
	if (write(fd, &h, sizeof(h)) != (ssize_t)sizeof(h))
		fprintf(stderr, "imgfs: the kernel cannot resend the requests the previous server had read: %s\n",
			strerror(errno));
}

static ssize_t hook_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	(void)userdata;
	if (__atomic_load_n(&io.replay, __ATOMIC_ACQUIRE) == REPLAY_HANDED && count > 0 &&
	    iov[0].iov_len >= sizeof(struct fuse_out_header) &&
	    ((const struct fuse_out_header *)iov[0].iov_base)->unique == io.replay_unique) {
		/* The kernel answered FUSE_INIT long ago: this answer is for
		 * libfuse's sake only. */
		ssize_t total = 0;
		for (int i = 0; i < count; i++)
			total += (ssize_t)iov[i].iov_len;
		ask_resend(fd);
		pthread_mutex_lock(&io.lock);
		__atomic_store_n(&io.replay, REPLAY_DONE, __ATOMIC_RELEASE);
		pthread_cond_broadcast(&io.done);
		pthread_mutex_unlock(&io.lock);
		send_to_keeper('R', NULL, 0);
		return total;
	}
	return writev(fd, iov, count);
}

int takeover_attach(struct fuse_session *se, struct takeover *t)
{
	static const struct fuse_custom_io hooks = { .read = hook_read, .writev = hook_writev };
	io.t = t;
	io.se = se;
	if (t->resuming) {
		__atomic_store_n(&io.replay, REPLAY_PENDING, __ATOMIC_RELEASE);
		io.replay_unique = ((const struct fuse_in_header *)t->init)->unique;
		io.init_sent = true;
	}
	/* libfuse closes the descriptor it serves: it gets one of its own. */
	int fd = fcntl(t->fuse_fd, F_DUPFD_CLOEXEC, 3);
	if (fd < 0)
		return -errno;
	int r = fuse_session_custom_io(se, &hooks, fd);
	if (r < 0)
		close(fd);
	return r;
}

int takeover_start_keeper(struct takeover *t, const char *point, const char *cwd, char *const *restart_argv)
{
	int pair[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0)
		return -errno;
	size_t n = 0;
	while (restart_argv[n])
		n++;
	const char **argv = calloc(n + 9, sizeof(*argv));
	if (!argv) {
		close(pair[0]);
		close(pair[1]);
		return -ENOMEM;
	}
	char server[32], state[16];
	snprintf(server, sizeof(server), "%d", (int)getpid());
	snprintf(state, sizeof(state), "%d", t->state_fd >= 0 ? 5 : -1);
	size_t a = 0;
	argv[a++] = "imgfs";
	argv[a++] = "keeper";
	argv[a++] = server;
	argv[a++] = point;
	argv[a++] = state;
	argv[a++] = cwd ? cwd : "/";
	argv[a++] = "--";
	for (size_t i = 0; i < n; i++)
		argv[a++] = restart_argv[i];
	pid_t pid = fork();
	if (pid == 0) {
		/* The keeper is given descriptors 3 (the connection), 4 (the
		 * channel) and 5 (the state), and holds nothing else. */
		/* Out of the way first: one may be where another goes. */
		int from[] = { t->fuse_fd, pair[1], t->state_fd };
		for (int i = 0; i < 3; i++)
			if (from[i] >= 0 && (from[i] = fcntl(from[i], F_DUPFD, 10)) < 0)
				_exit(127);
		for (int i = 0; i < 3; i++)
			if (from[i] >= 0 && dup_for_exec(from[i], 3 + i) < 0)
				_exit(127);
		execv("/proc/self/exe", (char *const *)argv);
		_exit(127);
	}
	int err = errno;
	free(argv);
	close(pair[1]);
	if (pid < 0) {
		close(pair[0]);
		return -err;
	}
	t->keeper_fd = pair[0];
	t->keeper_pid = pid;
	return 0;
}

static void on_handover(int sig)
{
	(void)sig;
	io.handing_over = 1;
	if (io.se)
		fuse_session_exit(io.se);
}

void takeover_handle_handover(struct fuse_session *se)
{
	io.se = se;
	struct sigaction sa = { .sa_handler = on_handover };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
}

bool takeover_handing_over(void)
{
	return io.handing_over != 0;
}

int takeover_append_stats(char *buf, int used, size_t size)
{
	if (used < 0 || !io.t || io.t->keeper_pid <= 0)
		return used;
	int n = snprintf(buf + used, size - (size_t)used, "takeovers %u\nkeeper_pid %d\n", io.t->count,
			 (int)io.t->keeper_pid);
	return n < 0 || (size_t)n >= size - (size_t)used ? -ENOSPC : used + n;
}
