/* launch: run containers from registry images on imgfs mounts. */
#include "launch.h"

static void usage(FILE *out)
{
	fprintf(out, "Usage: launch COMMAND [OPTIONS] ...\n"
		     "       launch IMAGE [COMMAND [ARG...]]      (launch run IMAGE ...)\n"
		     "\n"
		     "Commands:\n"
		     "  run [OPTIONS] IMAGE [COMMAND [ARG...]]  run a container (launch run --help)\n"
		     "  ps [-a]                                 list running (all) containers\n"
		     "  logs [-f] NAME|ID                       print (and follow) a container's output\n"
		     "  attach [--detach-keys KEYS] NAME|ID     attach to a running container\n"
		     "  exec [-i] [-t] NAME|ID COMMAND [ARG...] run a command in a running container\n"
		     "  kill [-s SIGNAL] NAME|ID...             signal containers (default KILL)\n"
		     "  wait NAME|ID...                         wait for containers, print exit codes\n"
		     "  rm [-f] NAME|ID...                      remove containers (-f: running ones too)\n"
		     "\n"
		     "Every command takes --root DIR (default: $LAUNCH_ROOT, /run/launch for root,\n"
		     "$XDG_RUNTIME_DIR/launch otherwise).  Exit status: the container's own, or 125\n"
		     "for an error of launch, 126 for a command that cannot be run, 127 for one that\n"
		     "does not exist.\n");
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(int, char **);
	} verbs[] = {
		{ "run", cmd_run },   { "ps", cmd_ps },     { "logs", cmd_logs }, { "attach", cmd_attach },
		{ "exec", cmd_exec }, { "kill", cmd_kill }, { "wait", cmd_wait }, { "rm", cmd_rm },
	};
	if (argc < 2) {
		usage(stderr);
		return EXIT_LAUNCH_ERROR;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
		usage(stdout);
		return 0;
	}
	for (size_t i = 0; i < ARRAY_SIZE(verbs); i++)
		if (strcmp(argv[1], verbs[i].name) == 0)
			return verbs[i].fn(argc - 1, argv + 1);
	/* Anything else is `launch run`'s options and image: `launch IMAGE ...`. */
	return cmd_run(argc, argv);
}
