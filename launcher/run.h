/* launch run's options: parsed in run_options.c, used by run.c (private to
 * launcher/). */
#pragma once

#include <stdbool.h>
#include <stdio.h>

#include "launch.h"

#define DEFAULT_DETACH_KEYS "ctrl-p,ctrl-q"

#define MAX_PORTS 32

struct run_options {
	struct spec_options spec;
	bool interactive, detach, remove, init;
	const char *name, *user, *network, *runtime, *root, *detach_keys;
	const char *pull;  /* as podman: "missing" unless asked */
	char **imgfs_args; /* passed through to imgfs mount */
	size_t n_imgfs_args, allocated_imgfs_args;
	char **env, **volumes;
	size_t n_env, allocated_env, n_volumes, allocated_volumes;
	const char *seccomp;  /* --security-opt seccomp=: a file, or "unconfined" */
	int64_t log_size_max; /* > 0: the log is truncated when it would grow past it */
	char *seccomp_text;
	struct port_mapping ports[MAX_PORTS];
	size_t n_ports;
	char *etc_hosts_path, *etc_resolv_path;
};

/* podman's default seccomp profile, from containers-common. */
#define DEFAULT_SECCOMP_PROFILE "/usr/share/containers/seccomp.json"
#define SECCOMP_PROFILE_MAX (4u << 20)

/* Parses launch run's arguments into o: the index of IMAGE, or -errno
 * after saying what was wrong. */
int parse_run_options(int argc, char **argv, struct run_options *o);
void strv_free_n(char **v, size_t n);
