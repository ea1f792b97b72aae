/* launch run's options, as docker and podman take them. */
#include "run.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

/* "512m", "1g", "1048576": bytes, with b, k, m, g suffixes as docker takes them. */
static int parse_memory(const char *text, int64_t *ret)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(text, &end, 10);
	if (errno || end == text || text[0] == '-')
		return -EINVAL;
	unsigned shift = 0;
	switch (*end) {
	case '\0':
	case 'b':
	case 'B':
		break;
	case 'k':
	case 'K':
		shift = 10;
		break;
	case 'm':
	case 'M':
		shift = 20;
		break;
	case 'g':
	case 'G':
		shift = 30;
		break;
	default:
		return -EINVAL;
	}
	if (*end && end[1] != '\0')
		return -EINVAL;
	if (v == 0 || v > (unsigned long long)INT64_MAX >> shift)
		return -EINVAL;
	*ret = (int64_t)(v << shift);
	return 0;
}

/* "1.5" CPUs: 1500 thousandths. */
static int parse_cpus(const char *text, int64_t *ret)
{
	char *end;
	errno = 0;
	double v = strtod(text, &end);
	if (errno || end == text || *end || !(v > 0) || v > 1e6)
		return -EINVAL;
	*ret = (int64_t)(v * 1000 + 0.5);
	return *ret > 0 ? 0 : -EINVAL;
}

/* The profile --security-opt names, or podman's default; none for "unconfined". */
static int load_seccomp_profile(struct run_options *o)
{
	const char *path = o->seccomp ? o->seccomp : DEFAULT_SECCOMP_PROFILE;
	if (strcmp(path, "unconfined") == 0)
		return 0;
	size_t len;
	int r = read_file_capped(path, SECCOMP_PROFILE_MAX, &o->seccomp_text, &len);
	if (r < 0) {
		fprintf(stderr, "launch run: cannot read the seccomp profile \"%s\": %s%s\n", path, strerror(-r),
			o->seccomp ? ""
				   : " (podman's default profile comes with containers-common; --security-opt "
				     "seccomp=unconfined runs without one)");
		return r;
	}
	o->spec.seccomp_profile = o->seccomp_text;
	o->spec.seccomp_profile_len = len;
	return 0;
}

static int strv_push(char ***v, size_t *n, size_t *allocated, const char *s)
{
	if (grow_array((void **)v, allocated, *n + 2, sizeof(char *)) < 0)
		return -ENOMEM;
	if (!((*v)[*n] = strdup(s)))
		return -ENOMEM;
	(*v)[++*n] = NULL;
	return 0;
}

void strv_free_n(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static int read_env_file(struct run_options *o, const char *path)
{
	_cleanup_fclose_ FILE *f = fopen(path, "re");
	if (!f) {
		fprintf(stderr, "launch: cannot read env file \"%s\": %s\n", path, strerror(errno));
		return -errno;
	}
	char line[8192];
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\r\n")] = '\0';
		const char *s = line + strspn(line, " \t");
		if (!*s || *s == '#')
			continue;
		if (strv_push(&o->env, &o->n_env, &o->allocated_env, s) < 0)
			return -ENOMEM;
	}
	return 0;
}

static void usage(FILE *out)
{
	fprintf(out, "Usage: launch run [OPTIONS] IMAGE [COMMAND [ARG...]]\n"
		     "\n"
		     "  -i, --interactive          keep stdin open\n"
		     "  -t, --tty                  allocate a pseudo-terminal\n"
		     "  -d, --detach               run in the background and print the container id\n"
		     "      --rm                   remove the container when it exits\n"
		     "      --name NAME            name the container\n"
		     "  -e, --env KEY[=VAL]        set an environment variable (repeatable)\n"
		     "      --env-file FILE        read KEY=VAL lines\n"
		     "  -w, --workdir DIR          working directory inside the container\n"
		     "  -u, --user USER[:GROUP]    user and group, names from the image's /etc/passwd, /etc/group\n"
		     "      --entrypoint CMD       override the image's entrypoint (\"\" clears it)\n"
		     "  -v, --volume HOST:CTR[:ro] bind mount a host directory\n"
		     "      --hostname NAME        the container's host name\n"
		     "      --network none|host|slirp4netns\n"
		     "                             a network namespace of its own with no link (none,\n"
		     "                             the default), the host's, or one slirp4netns connects\n"
		     "  -p, --publish [IP:]HOST:CTR[/tcp|udp]\n"
		     "                             publish a container port on the host (slirp4netns)\n"
		     "      --init                 run a small init as pid 1 that reaps zombies\n"
		     "      --security-opt seccomp=unconfined|FILE\n"
		     "                             seccomp profile (default: podman's,\n"
		     "                             " DEFAULT_SECCOMP_PROFILE ")\n"
		     "      --pids-limit N         at most N tasks (default: 2048; -1: no limit)\n"
		     "  -m, --memory SIZE          memory limit (b, k, m, g suffixes)\n"
		     "      --cpus N               CPU time limit, in CPUs (1.5: one and a half)\n"
		     "      --log-size-max SIZE    truncate the log when it would grow past SIZE\n"
		     "                             (b, k, m, g suffixes; -1, the default: no bound)\n"
		     "      --runtime PATH         OCI runtime (default: runc, else crun)\n"
		     "      --detach-keys KEYS     detach sequence (default: ctrl-p,ctrl-q)\n"
		     "      --root DIR             state directory (default: $LAUNCH_ROOT, /run/launch)\n"
		     "      --pull POLICY          missing (default): ask the registry only for an image\n"
		     "                             not in the cache; always; never\n"
		     "      --platform, --cache, --insecure-registry, --prefetch   as for imgfs mount\n");
}

int parse_run_options(int argc, char **argv, struct run_options *o)
{
	enum {
		O_RM = 256,
		O_NAME,
		O_ENV_FILE,
		O_ENTRYPOINT,
		O_HOSTNAME,
		O_NETWORK,
		O_INIT,
		O_RUNTIME,
		O_ROOT,
		O_DETACH_KEYS,
		O_PLATFORM,
		O_CACHE,
		O_INSECURE,
		O_PREFETCH,
		O_PULL,
		O_SECURITY_OPT,
		O_PIDS_LIMIT,
		O_CPUS,
		O_LOG_SIZE_MAX,
	};
	/* -p is "publish", as in docker. */
	static const struct option opts[] = {
		{ "interactive", no_argument, NULL, 'i' },
		{ "tty", no_argument, NULL, 't' },
		{ "detach", no_argument, NULL, 'd' },
		{ "rm", no_argument, NULL, O_RM },
		{ "name", required_argument, NULL, O_NAME },
		{ "env", required_argument, NULL, 'e' },
		{ "env-file", required_argument, NULL, O_ENV_FILE },
		{ "workdir", required_argument, NULL, 'w' },
		{ "user", required_argument, NULL, 'u' },
		{ "entrypoint", required_argument, NULL, O_ENTRYPOINT },
		{ "volume", required_argument, NULL, 'v' },
		{ "hostname", required_argument, NULL, O_HOSTNAME },
		{ "network", required_argument, NULL, O_NETWORK },
		{ "net", required_argument, NULL, O_NETWORK },
		{ "init", no_argument, NULL, O_INIT },
		{ "runtime", required_argument, NULL, O_RUNTIME },
		{ "root", required_argument, NULL, O_ROOT },
		{ "detach-keys", required_argument, NULL, O_DETACH_KEYS },
		{ "platform", required_argument, NULL, O_PLATFORM },
		{ "cache", required_argument, NULL, O_CACHE },
		{ "insecure-registry", required_argument, NULL, O_INSECURE },
		{ "prefetch", required_argument, NULL, O_PREFETCH },
		{ "pull", required_argument, NULL, O_PULL },
		{ "security-opt", required_argument, NULL, O_SECURITY_OPT },
		{ "pids-limit", required_argument, NULL, O_PIDS_LIMIT },
		{ "memory", required_argument, NULL, 'm' },
		{ "cpus", required_argument, NULL, O_CPUS },
		{ "log-size-max", required_argument, NULL, O_LOG_SIZE_MAX },
		{ "publish", required_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;
	optind = 1;
	o->spec.pids_limit = DEFAULT_PIDS_LIMIT;
	while ((c = getopt_long(argc, argv, "+itde:w:u:v:m:p:h", opts, NULL)) != -1) {
		int r = 0;
		const char *imgfs_flag = NULL;
		switch (c) {
		case 'i':
			o->interactive = true;
			break;
		case 't':
			o->spec.tty = true;
			break;
		case 'd':
			o->detach = true;
			break;
		case O_RM:
			o->remove = true;
			break;
		case O_NAME:
			o->name = optarg;
			break;
		case 'e':
			r = strv_push(&o->env, &o->n_env, &o->allocated_env, optarg);
			break;
		case O_ENV_FILE:
			r = read_env_file(o, optarg);
			break;
		case 'w':
			o->spec.workdir = optarg;
			break;
		case 'u':
			o->user = optarg;
			break;
		case O_ENTRYPOINT:
			o->spec.entrypoint = optarg;
			break;
		case 'v':
			r = strv_push(&o->volumes, &o->n_volumes, &o->allocated_volumes, optarg);
			break;
		case O_HOSTNAME:
			o->spec.hostname = optarg;
			break;
		case O_NETWORK:
			o->network = optarg;
			break;
		case O_INIT:
			o->init = true;
			break;
		case O_RUNTIME:
			o->runtime = optarg;
			break;
		case O_ROOT:
			o->root = optarg;
			break;
		case O_DETACH_KEYS:
			o->detach_keys = optarg;
			break;
		case O_PULL:
			o->pull = optarg;
			break;
		case O_SECURITY_OPT:
			if (!str_has_prefix(optarg, "seccomp=") || !optarg[strlen("seccomp=")]) {
				fprintf(stderr,
					"launch run: --security-opt \"%s\" is not supported: seccomp=unconfined or "
					"seccomp=FILE\n",
					optarg);
				return -EINVAL;
			}
			o->seccomp = optarg + strlen("seccomp=");
			break;
		case O_PIDS_LIMIT: {
			char *end;
			errno = 0;
			long long v = strtoll(optarg, &end, 10);
			if (errno || end == optarg || *end || v < -1) {
				fprintf(stderr, "launch run: invalid --pids-limit \"%s\": a number, -1 for none\n",
					optarg);
				return -EINVAL;
			}
			o->spec.pids_limit = v;
			break;
		}
		case 'm':
			if (parse_memory(optarg, &o->spec.memory_limit) < 0) {
				fprintf(stderr,
					"launch run: invalid --memory \"%s\": bytes, or a number with b, k, m or g\n",
					optarg);
				return -EINVAL;
			}
			break;
		case 'p':
			if (o->n_ports == MAX_PORTS || port_mapping_parse(optarg, &o->ports[o->n_ports]) < 0) {
				fprintf(stderr,
					"launch run: invalid -p \"%s\": [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]%s\n",
					optarg, o->n_ports == MAX_PORTS ? " (too many)" : "");
				return -EINVAL;
			}
			o->n_ports++;
			break;
		case O_LOG_SIZE_MAX:
			/* podman: -1 is no bound, as by default. */
			if (strcmp(optarg, "-1") == 0) {
				o->log_size_max = 0;
			} else if (parse_memory(optarg, &o->log_size_max) < 0) {
				fprintf(stderr,
					"launch run: invalid --log-size-max \"%s\": bytes, or a number with b, k, m "
					"or g; -1 for no bound\n",
					optarg);
				return -EINVAL;
			}
			break;
		case O_CPUS:
			if (parse_cpus(optarg, &o->spec.cpu_millis) < 0) {
				fprintf(stderr, "launch run: invalid --cpus \"%s\": a number of CPUs such as 1.5\n",
					optarg);
				return -EINVAL;
			}
			break;
		case O_PLATFORM:
			imgfs_flag = "--platform";
			break;
		case O_CACHE:
			imgfs_flag = "--cache";
			break;
		case O_INSECURE:
			imgfs_flag = "--insecure-registry";
			break;
		case O_PREFETCH:
			imgfs_flag = "--prefetch";
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			/* getopt said what was wrong; the whole usage would bury it. */
			fprintf(stderr, "Try 'launch run --help'.\n");
			return -EINVAL;
		}
		if (imgfs_flag &&
		    ((r = strv_push(&o->imgfs_args, &o->n_imgfs_args, &o->allocated_imgfs_args, imgfs_flag)) < 0 ||
		     (r = strv_push(&o->imgfs_args, &o->n_imgfs_args, &o->allocated_imgfs_args, optarg)) < 0))
			return r;
		if (r < 0)
			return r;
	}
	if (optind >= argc) {
		fprintf(stderr, "launch run: expected IMAGE\nTry 'launch run --help'.\n");
		return -EINVAL;
	}
	if (strcmp(o->pull, "always") != 0 && strcmp(o->pull, "missing") != 0 && strcmp(o->pull, "never") != 0) {
		fprintf(stderr, "launch run: invalid --pull \"%s\": expected always, missing or never\n", o->pull);
		return -EINVAL;
	}
	/* Published ports need a network that forwards them: rootless podman's. */
	if (o->n_ports && !o->network)
		o->network = "slirp4netns";
	if (o->network && strcmp(o->network, "none") != 0 && strcmp(o->network, "host") != 0 &&
	    strcmp(o->network, "slirp4netns") != 0) {
		fprintf(stderr, "launch run: --network \"%s\" is not supported: none, host or slirp4netns\n",
			o->network);
		return -EINVAL;
	}
	if (o->n_ports && strcmp(o->network, "slirp4netns") != 0) {
		fprintf(stderr, "launch run: -p needs --network slirp4netns, not %s\n", o->network);
		return -EINVAL;
	}
	unsigned char keys[16];
	size_t n_keys;
	if (o->detach_keys && *o->detach_keys && parse_detach_keys(o->detach_keys, keys, &n_keys) < 0) {
		fprintf(stderr, "launch run: invalid --detach-keys \"%s\": expected e.g. ctrl-p,ctrl-q\n",
			o->detach_keys);
		return -EINVAL;
	}
	if (load_seccomp_profile(o) < 0)
		return -EINVAL;
	o->spec.host_network = o->network && strcmp(o->network, "host") == 0;
	o->spec.env = o->env;
	o->spec.volumes = o->volumes;
	o->spec.command = argv + optind + 1;
	return optind;
}
