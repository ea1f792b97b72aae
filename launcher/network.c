/* --network slirp4netns and -p, as rootless podman does it: the container
 * keeps a network namespace of its own, which slirp4netns (a well-kept
 * user-mode network stack, Debian's package) connects to the outside and
 * into which it forwards the published ports, asked through its API socket.
 * The container sees 10.0.2.100, its gateway 10.0.2.2 and a DNS forwarder
 * at 10.0.2.3, as with podman. */
#include "launch.h"

#include <fcntl.h>
#include <json-c/json.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "shim.h"

#define SLIRP_API_SOCKET "slirp4netns.sock"
#define SLIRP_LOG_FILE "slirp4netns.log"
#define SLIRP_READY_MS 10000
#define SLIRP_DNS "10.0.2.3"
#define SLIRP_GUEST "10.0.2.100"

int port_mapping_parse(const char *text, struct port_mapping *ret)
{
	struct port_mapping p = { .proto = "tcp" };
	char copy[128];
	if (strlen(text) >= sizeof(copy))
		return -EINVAL;
	strcpy(copy, text);
	char *slash = strchr(copy, '/');
	if (slash) {
		*slash = '\0';
		if (strcmp(slash + 1, "tcp") != 0 && strcmp(slash + 1, "udp") != 0)
			return -EINVAL;
		snprintf(p.proto, sizeof(p.proto), "%s", slash + 1);
	}
	/* [IP:]HOST:CTR; an IPv6 address comes in brackets. */
	char *ctr = strrchr(copy, ':');
	if (!ctr)
		return -EINVAL;
	*ctr++ = '\0';
	char *host = strrchr(copy, ':');
	const char *ip = "0.0.0.0";
	if (host) {
		*host++ = '\0';
		ip = copy;
		size_t len = strlen(ip);
		if (len >= 2 && ip[0] == '[' && ip[len - 1] == ']') {
			copy[len - 1] = '\0';
			ip++;
		}
	} else {
		host = copy;
	}
	char *end;
	unsigned long h = strtoul(host, &end, 10);
	if (*end || h == 0 || h > 65535)
		return -EINVAL;
	unsigned long c = strtoul(ctr, &end, 10);
	if (*end || c == 0 || c > 65535 || !*ip || strlen(ip) >= sizeof(p.host_ip))
		return -EINVAL;
	snprintf(p.host_ip, sizeof(p.host_ip), "%s", ip);
	p.host_port = (unsigned)h;
	p.ctr_port = (unsigned)c;
	*ret = p;
	return 0;
}

int network_files(const char *dir, const char *names, struct err *err)
{
	_cleanup_free_ char *hosts_path = strdup_printf("%s/%s", dir, NETWORK_HOSTS_FILE);
	_cleanup_free_ char *resolv_path = strdup_printf("%s/%s", dir, NETWORK_RESOLV_FILE);
	_cleanup_free_ char *hosts = strdup_printf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
						   "%s\t%s\n",
						   SLIRP_GUEST, names);
	static const char resolv[] = "nameserver " SLIRP_DNS "\n";
	if (!hosts_path || !resolv_path || !hosts)
		return -ENOMEM;
	int r = write_file_replace(hosts_path, hosts, strlen(hosts));
	if (r == 0)
		r = write_file_replace(resolv_path, resolv, strlen(resolv));
	if (r == 0 && (chmod(hosts_path, 0644) < 0 || chmod(resolv_path, 0644) < 0))
		r = -errno;
	if (r < 0)
		return err_set(err, -r, "cannot write the network files of \"%s\": %s", dir, strerror(-r));
	return 0;
}

/* One request to the API socket of slirp4netns, reached through the state
 * directory's descriptor (its path may be longer than sun_path allows). */
static int slirp_request(const char *dir, const char *request, char *reply, size_t size)
{
	_cleanup_close_ int dirfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	_cleanup_close_ int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	if (dirfd < 0 || s < 0)
		return -errno;
	snprintf(addr.sun_path, sizeof(addr.sun_path), "/proc/self/fd/%d/%s", dirfd, SLIRP_API_SOCKET);
	if (connect(s, (struct sockaddr *)&addr, sizeof(addr)) < 0 || write_full(s, request, strlen(request)) < 0)
		return -errno;
	shutdown(s, SHUT_WR);
	size_t len = 0;
	ssize_t n;
	while (len < size - 1 && (n = read(s, reply + len, size - 1 - len)) > 0)
		len += (size_t)n;
	reply[len] = '\0';
	return 0;
}

static int add_port(const char *dir, const struct port_mapping *p, struct err *err)
{
	struct json_object *req = json_object_new_object(), *args = json_object_new_object();
	json_object_object_add(args, "proto", json_object_new_string(p->proto));
	json_object_object_add(args, "host_addr", json_object_new_string(p->host_ip));
	json_object_object_add(args, "host_port", json_object_new_int((int)p->host_port));
	json_object_object_add(args, "guest_port", json_object_new_int((int)p->ctr_port));
	json_object_object_add(req, "execute", json_object_new_string("add_hostfwd"));
	json_object_object_add(req, "arguments", args);
	char reply[1024];
	int r = slirp_request(dir, json_object_to_json_string(req), reply, sizeof(reply));
	json_object_put(req);
	struct json_object *answer = r == 0 ? json_tokener_parse(reply) : NULL, *v;
	bool ok = answer && json_object_object_get_ex(answer, "return", &v);
	json_object_put(answer);
	if (!ok)
		return err_set(err, r < 0 ? -r : EADDRINUSE, "cannot publish port %s:%u to %u/%s: %s", p->host_ip,
			       p->host_port, p->ctr_port, p->proto, r < 0 ? strerror(-r) : reply);
	return 0;
}

int network_start(const char *dir, const struct port_mapping *ports, size_t n_ports, struct err *err)
{
	long pid = 0;
	_cleanup_free_ char *pid_path = strdup_printf("%s/%s", dir, SHIM_PID_FILE);
	_cleanup_free_ char *text = NULL;
	size_t len;
	if (!pid_path || read_file_capped(pid_path, 64, &text, &len) < 0 || (pid = strtol(text, NULL, 10)) <= 1)
		return err_set(err, ESRCH, "cannot find the container's process in \"%s\" to connect it", dir);
	int ready[2];
	if (pipe2(ready, O_CLOEXEC) < 0)
		return err_set(err, errno, "cannot start slirp4netns: %s", strerror(errno));
	pid_t child = fork();
	if (child == 0) {
		/* Its own session, its output in the state directory, and no
		 * descriptor of ours but the one it reports readiness on. */
		setsid();
		int log = chdir(dir) == 0 ? open(SLIRP_LOG_FILE, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600) : -1;
		int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
		if (log < 0 || devnull < 0 || dup2(devnull, 0) < 0 || dup2(log, 1) < 0 || dup2(log, 2) < 0 ||
		    dup2(ready[1], 3) < 0)
			_exit(127);
		int keep = 3;
		close_inherited_fds(&keep, 1);
		char target[32];
		snprintf(target, sizeof(target), "%ld", pid);
		execlp("slirp4netns", "slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
		       "--ready-fd=3", "--api-socket=" SLIRP_API_SOCKET, target, "tap0", (char *)NULL);
		_exit(127);
	}
	close(ready[1]);
	if (child < 0) {
		close(ready[0]);
		return err_set(err, errno, "cannot start slirp4netns: %s", strerror(errno));
	}
	char pid_text[32];
	int n = snprintf(pid_text, sizeof(pid_text), "%d", (int)child);
	_cleanup_free_ char *slirp_pid = strdup_printf("%s/%s", dir, SHIM_NETWORK_PID_FILE);
	if (slirp_pid)
		(void)write_file_replace(slirp_pid, pid_text, (size_t)n);
	struct pollfd p = { ready[0], POLLIN, 0 };
	char byte;
	bool up = poll(&p, 1, SLIRP_READY_MS) > 0 && read(ready[0], &byte, 1) == 1;
	close(ready[0]);
	if (!up) {
		network_stop(dir);
		return err_set(err, EIO, "slirp4netns did not bring up the network of \"%s\" (see %s/%s)", dir, dir,
			       SLIRP_LOG_FILE);
	}
	for (size_t i = 0; i < n_ports; i++) {
		int r = add_port(dir, &ports[i], err);
		if (r < 0) {
			network_stop(dir);
			return r;
		}
	}
	return 0;
}

void network_stop(const char *dir)
{
	_cleanup_free_ char *path = strdup_printf("%s/%s", dir, SHIM_NETWORK_PID_FILE);
	if (path && kill_recorded_process(path, "slirp4netns", SIGTERM))
		(void)unlink(path);
}
