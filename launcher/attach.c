/* The attach client: the user's terminal (raw, for -t) or stdio on one side,
 * the shim's attach socket on the other.  Window-size changes and, without
 * a terminal, the signals the launcher receives go to the shim's control
 * fifo. */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>

#include "launch.h"
#include "shim.h"

int attach_connect(const char *state_dir)
{
	/* Through the directory's descriptor: the state directory may be deeper
	 * than sun_path's 108 bytes allow. */
	_cleanup_close_ int dir = open(state_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0)
		return -errno;
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	snprintf(addr.sun_path, sizeof(addr.sun_path), "/proc/self/fd/%d/%s", dir, SHIM_ATTACH_SOCKET);
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	return fd;
}

int parse_detach_keys(const char *spec, unsigned char *keys, size_t *n)
{
	*n = 0;
	_cleanup_free_ char *copy = strdup(spec);
	if (!copy)
		return -ENOMEM;
	char *save = NULL;
	for (char *k = strtok_r(copy, ",", &save); k; k = strtok_r(NULL, ",", &save)) {
		if (*n == 16)
			return -EINVAL;
		if (str_has_prefix(k, "ctrl-") && strlen(k) == 6) {
			char c = k[5];
			if (c >= 'a' && c <= 'z')
				keys[(*n)++] = (unsigned char)(c - 'a' + 1);
			else if (c == '@' || (c >= '[' && c <= '_'))
				keys[(*n)++] = (unsigned char)(c == '@' ? 0 : c - '@');
			else
				return -EINVAL;
		} else if (strlen(k) == 1) {
			keys[(*n)++] = (unsigned char)k[0];
		} else {
			return -EINVAL;
		}
	}
	return *n ? 0 : -EINVAL;
}

static void send_ctl(const char *state_dir, const char *line)
{
	_cleanup_free_ char *path = strdup_printf("%s/%s", state_dir, SHIM_CTL_FIFO);
	/* Non-blocking: with no shim reading, the open fails instead of hanging. */
	_cleanup_close_ int fd = path ? open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC) : -1;
	if (fd >= 0)
		(void)write_full(fd, line, strlen(line));
}

static void send_window_size(const char *state_dir)
{
	struct winsize ws;
	if (ioctl(STDIN_FILENO, TIOCGWINSZ, &ws) < 0 || ws.ws_row == 0)
		return;
	char line[64];
	snprintf(line, sizeof(line), "resize %u %u\n", ws.ws_row, ws.ws_col);
	send_ctl(state_dir, line);
}

struct detach_matcher {
	unsigned char keys[16];
	size_t n_keys, matched;
};

/* Passes through what is not the detach sequence; returns true when the
 * whole sequence was typed.  A partial match held back from one read is
 * sent once the next byte shows it was not the sequence. */
static bool filter_detach(struct detach_matcher *m, const unsigned char *in, size_t len, unsigned char *out,
			  size_t *out_len)
{
	*out_len = 0;
	for (size_t i = 0; i < len; i++) {
		if (m->n_keys && in[i] == m->keys[m->matched]) {
			if (++m->matched == m->n_keys)
				return true;
			continue;
		}
		memcpy(out + *out_len, m->keys, m->matched);
		*out_len += m->matched;
		m->matched = 0;
		if (m->n_keys && in[i] == m->keys[0]) {
			m->matched = 1;
			if (m->n_keys == 1)
				return true;
			continue;
		}
		out[(*out_len)++] = in[i];
	}
	return false;
}

int attach_session(int sock, const char *state_dir, bool tty, bool send_stdin, const char *detach_keys)
{
	struct detach_matcher m = { 0 };
	if (tty && detach_keys && *detach_keys && parse_detach_keys(detach_keys, m.keys, &m.n_keys) < 0)
		return -EINVAL;
	struct termios saved;
	bool raw = false;
	if (tty && isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &saved) == 0) {
		struct termios t = saved;
		cfmakeraw(&t);
		raw = tcsetattr(STDIN_FILENO, TCSANOW, &t) == 0;
	}
	sigset_t set, old;
	sigemptyset(&set);
	sigaddset(&set, SIGWINCH);
	if (!tty) {
		/* Without a terminal the user's ^C reaches us: forward it. */
		int forwarded[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 };
		for (size_t i = 0; i < ARRAY_SIZE(forwarded); i++)
			sigaddset(&set, forwarded[i]);
	}
	sigprocmask(SIG_BLOCK, &set, &old);
	int sig_fd = signalfd(-1, &set, SFD_CLOEXEC);
	if (tty)
		send_window_size(state_dir);

	int result = -EPIPE;
	bool stdin_open = send_stdin;
	for (;;) {
		struct pollfd p[3] = {
			{ sock, POLLIN, 0 },
			{ stdin_open ? STDIN_FILENO : -1, POLLIN, 0 },
			{ sig_fd, POLLIN, 0 },
		};
		if (poll(p, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			result = -errno;
			break;
		}
		if (p[2].revents & POLLIN) {
			struct signalfd_siginfo si;
			if (read(sig_fd, &si, sizeof(si)) == sizeof(si)) {
				if (si.ssi_signo == SIGWINCH) {
					send_window_size(state_dir);
				} else {
					char line[32];
					snprintf(line, sizeof(line), "kill %u\n", si.ssi_signo);
					send_ctl(state_dir, line);
				}
			}
		}
		if (p[1].revents) {
			unsigned char in[4096], out[4096 + 16];
			ssize_t n = read(STDIN_FILENO, in, sizeof(in));
			if (n <= 0) {
				/* End of stdin: half-close, the shim ends the container's stdin. */
				shutdown(sock, SHUT_WR);
				stdin_open = false;
			} else {
				size_t out_len;
				bool detach = filter_detach(&m, in, (size_t)n, out, &out_len);
				if (out_len && send(sock, out, out_len, MSG_NOSIGNAL) < 0)
					stdin_open = false;
				if (detach) {
					result = ATTACH_DETACHED;
					break;
				}
			}
		}
		if (p[0].revents) {
			char buf[SHIM_PACKET_MAX + 1];
			ssize_t n = recv(sock, buf, sizeof(buf), 0);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				result = -EPIPE; /* the shim went away without an exit code */
				break;
			}
			if (buf[0] == SHIM_TAG_EXIT) {
				buf[n] = '\0';
				result = atoi(buf + 1);
				break;
			}
			int fd = buf[0] == SHIM_TAG_STDERR ? STDERR_FILENO : STDOUT_FILENO;
			if (write_full(fd, buf + 1, (size_t)n - 1) < 0 && errno != EPIPE) {
				result = -errno;
				break;
			}
		}
	}
	if (raw)
		tcsetattr(STDIN_FILENO, TCSANOW, &saved);
	if (sig_fd >= 0)
		close(sig_fd);
	sigprocmask(SIG_SETMASK, &old, NULL);
	return result;
}
