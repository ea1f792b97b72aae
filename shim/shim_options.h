/* launch-shim's options (private to shim/). */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct options {
	const char *id, *state, *bundle, *runtime, *runtime_root, *unmount, *unlink_path;
	const char *storage; /* removed with --rm: the container's writable layer */
	bool terminal, stdin_open, leave_stdin_open, wait_attach, remove;
	/* create, report "created PID", wait for the launcher's go on
	 * SHIM_GO_FD (it connects the network meanwhile), then start. */
	bool create_first;
	uint64_t log_size_max; /* 0: no bound */
};

void usage(FILE *out);
/* -EINVAL for a command line that is not launch-shim's. */
int parse_options(int argc, char **argv, struct options *o);
