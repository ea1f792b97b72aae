/* launch: run containers from registry images on imgfs mounts. */
#include "launch.h"

static void usage(FILE *out)
{
	fprintf(out, "Usage: launch COMMAND [OPTIONS] ...\n"
		     "       launch IMAGE [COMMAND [ARG...]]      (launch run IMAGE ...)\n"
		     "\n"
		     "Commands:\n"
		     "  run [OPTIONS] IMAGE [COMMAND [ARG...]]  run a container (launch run --help)\n"
		     "  ps [-a] [-q] [--format TEMPLATE]        list running (all) containers\n"
		     "  logs [-f] [-t] [--tail N] [--since T] NAME|ID   a container's output\n"
		     "  attach [--detach-keys KEYS] NAME|ID     attach to a running container\n"
		     "  exec [-i] [-t] NAME|ID COMMAND [ARG...] run a command in a running container\n"
		     "  kill [-s SIGNAL] NAME|ID...             signal containers (default KILL)\n"
		     "  stop [-t SECONDS] NAME|ID...            SIGTERM, then SIGKILL after SECONDS (10)\n"
		     "  start [-a] [-i] NAME|ID                 run an exited container again (-a: attached)\n"
		     "  restart [-t SECONDS] NAME|ID...         stop, then start\n"
		     "  wait NAME|ID...                         wait for containers, print exit codes\n"
		     "  rm [-f] NAME|ID...                      remove containers (-f: running ones too)\n"
		     "  inspect NAME|ID...                      state, config, mounts and image, as JSON\n"
		     "  images | pull IMAGE | rmi IMAGE...      what the image cache holds (imgfs's)\n"
		     "  login [-u USER] [--password-stdin] REG  check and keep credentials, as podman login\n"
		     "  logout REGISTRY                         forget them\n"
		     "  version                                 print launch's version (also --version)\n"
		     "\n"
		     "Every command takes --root DIR (default: $LAUNCH_ROOT, /run/launch for root,\n"
		     "$XDG_RUNTIME_DIR/launch otherwise).  Exit status: the container's own, or 125\n"
		     "for an error of launch, 126 for a command that cannot be run, 127 for one that\n"
		     "does not exist.\n");
}

/* images, pull and rmi are imgfs's (the cache is its), and so are login
 * and logout (the credentials are what imgfs reads). */
static int cmd_imgfs(int argc, char **argv)
{
	_cleanup_free_ char *imgfs = find_helper("imgfs");
	if (!imgfs) {
		fprintf(stderr, "launch: cannot find the imgfs program next to launch or in $PATH\n");
		return EXIT_LAUNCH_ERROR;
	}
	char **args = calloc((size_t)argc + 2, sizeof(char *));
	if (!args)
		return EXIT_LAUNCH_ERROR;
	args[0] = imgfs;
	for (int i = 0; i < argc; i++)
		args[i + 1] = argv[i];
	execv(imgfs, args);
	fprintf(stderr, "launch: cannot run \"%s\": %s\n", imgfs, strerror(errno));
	free(args);
	return EXIT_LAUNCH_ERROR;
}

/* docker and podman verbs launch does not have: never image names. */
static const char *const foreign_verbs[] = {
	"build",  "commit", "container", "cp",      "create",  "diff",   "events", "export",  "history", "image",
	"import", "info",   "load",      "network", "pause",   "port",   "push",   "rename",  "save",    "search",
	"stats",  "system", "tag",       "top",     "unpause", "update", "volume", "compose",
};

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(int, char **);
		const char *usage;
	} verbs[] = {
		{ "run", cmd_run, NULL },
		{ "ps", cmd_ps, "ps [-a] [-q] [--format TEMPLATE]" },
		{ "logs", cmd_logs, "logs [-f] [-t] [--tail N] [--since TIME|DURATION] NAME|ID" },
		{ "attach", cmd_attach, "attach [--detach-keys KEYS] NAME|ID" },
		{ "exec", cmd_exec, "exec [-i] [-t] NAME|ID COMMAND [ARG...]" },
		{ "kill", cmd_kill, "kill [-s SIGNAL] NAME|ID..." },
		{ "stop", cmd_stop, "stop [-t SECONDS] NAME|ID..." },
		{ "wait", cmd_wait, "wait NAME|ID..." },
		{ "rm", cmd_rm, "rm [-f] NAME|ID..." },
		{ "inspect", cmd_inspect, "inspect NAME|ID..." },
		{ "start", cmd_start, "start [-a] [-i] NAME|ID" },
		{ "restart", cmd_restart, "restart [-t SECONDS] NAME|ID..." },
		{ "images", cmd_imgfs, NULL },
		{ "pull", cmd_imgfs, NULL },
		{ "rmi", cmd_imgfs, NULL },
		{ "login", cmd_imgfs, NULL },
		{ "logout", cmd_imgfs, NULL },
	};
	if (argc < 2) {
		usage(stderr);
		return EXIT_LAUNCH_ERROR;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
		usage(stdout);
		return 0;
	}
	if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
		printf("launch %s\n", LAUNCH_VERSION);
		return 0;
	}
	for (size_t i = 0; i < ARRAY_SIZE(verbs); i++) {
		if (strcmp(argv[1], verbs[i].name) != 0)
			continue;
		if (verbs[i].usage && argc > 2 && (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0)) {
			printf("Usage: launch %s\n", verbs[i].usage);
			return 0;
		}
		return verbs[i].fn(argc - 1, argv + 1);
	}
	for (size_t i = 0; i < ARRAY_SIZE(foreign_verbs); i++)
		if (strcmp(argv[1], foreign_verbs[i]) == 0) {
			fprintf(stderr,
				"launch: \"%s\" is a docker command that launch does not have; see launch --help\n",
				argv[1]);
			return EXIT_LAUNCH_ERROR;
		}
	/* Anything else is `launch run`'s options and image: `launch IMAGE ...`. */
	return cmd_run(argc, argv);
}
