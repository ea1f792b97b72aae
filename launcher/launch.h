/* launch: runs OCI containers whose root file system is an imgfs mount.
 *
 * The launcher drives `imgfs` and `launch-shim` as programs.  This header
 * joins its own parts: the runtime spec written from an image config
 * (spec.c), the per-container state (state.c), the attach client
 * (attach.c) and the verbs (run.c, verbs.c). */
#pragma once

#include <stdbool.h>
#include <limits.h>
#include <stddef.h>
#include <sys/types.h>

#include "util.h"

/* Exit codes of the launcher itself, as docker and podman use them. */
#define EXIT_LAUNCH_ERROR 125
#define EXIT_CANNOT_RUN 126
#define EXIT_NOT_FOUND 127

/* ---- the runtime spec ---------------------------------------------------- */

/* What the image config says about the process (config.config). */
struct image_process {
	char **entrypoint, **cmd, **env; /* NULL-terminated; NULL when unset */
	char *workdir, *user;
};

int image_process_parse(const char *json, size_t len, struct image_process *ret, struct err *err);
void image_process_done(struct image_process *p);

struct spec_options {
	char **command;         /* from the command line, may be empty */
	const char *entrypoint; /* --entrypoint: NULL unset, "" clears the image's */
	char **env;             /* -e and --env-file, in order, KEY=VAL or KEY (from our env) */
	const char *workdir, *hostname, *init_path;
	char **volumes; /* HOST:CTR[:ro|rw] */
	bool tty, host_network;
	unsigned short rows, cols;
	/* Resolved from -u and the image's /etc/passwd and /etc/group. */
	uid_t uid;
	gid_t gid;
	gid_t *groups;
	size_t n_groups;
	const char *home; /* for $HOME when neither image nor -e sets it */
	/* A seccomp profile in the containers/docker JSON format (podman's
	 * default, or --security-opt seccomp=FILE); NULL: unconfined. */
	const char *seccomp_profile;
	size_t seccomp_profile_len;
	int64_t pids_limit;   /* > 0: at most this many tasks */
	int64_t memory_limit; /* > 0: bytes */
	int64_t cpu_millis;   /* > 0: thousandths of a CPU (--cpus 1.5: 1500) */
	/* Host files bind-mounted on /etc/hosts and /etc/resolv.conf; NULL: the image's. */
	const char *etc_hosts, *etc_resolv;
};

#define LAUNCH_VERSION "0.1.0"
/* docker's PATH for an image that sets none. */
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#define CPU_PERIOD_US 100000
/* podman's default --pids-limit. */
#define DEFAULT_PIDS_LIMIT 2048

/* The OCI linux.seccomp object of a containers/docker seccomp profile (JSON
 * text), for a container with these capabilities on this machine. */
struct json_object;
int seccomp_from_profile(const char *json, size_t len, const char *const *caps, size_t n_caps, struct json_object **ret,
			 struct err *err);

/* The process args docker would run: entrypoint and command combined. */
int spec_args(const struct image_process *img, const struct spec_options *o, char ***ret, struct err *err);
/* The config.json text for runc/crun. */
int spec_build(const struct image_process *img, const struct spec_options *o, char **ret_json, struct err *err);

/* Whether command (a path, or a name looked up in path_env) is an
 * executable file inside rootfs_fd: 0, -ENOENT or -EACCES, as the runtime
 * will find it. */
int find_command(int rootfs_fd, const char *command, const char *path_env);

/* Starts reading what the runtime will read first from rootfs_fd: the
 * image's users and groups and the program it starts.  Only a hint. */
void spec_read_ahead(int rootfs_fd, const struct image_process *img, const struct spec_options *o);

/* Resolves USER[:GROUP] (names or numbers) through etc/passwd and etc/group
 * under rootfs_fd, never following a link out of it. */
int resolve_user(int rootfs_fd, const char *spec, uid_t *ret_uid, gid_t *ret_gid, gid_t **ret_groups,
		 size_t *ret_n_groups, char **ret_home, struct err *err);

/* ---- state ------------------------------------------------------------------ */

struct container {
	char *id, *dir, *name, *image, *command;
	char *storage;      /* STORAGE/containers/ID: its writable layer's directory */
	char *image_digest; /* of the image manifest its root file system is */
	bool tty, interactive, remove;
	long created;
	long daemon_pid; /* the imgfs daemon of its root file system */
	long keeper_pid; /* and the process that keeps its mount, 0: none */
	char *network;   /* --network, for start to connect it again */
	char *ports;     /* its -p mappings, space-separated */
};

/* The state root: --root, $LAUNCH_ROOT, /run/launch (root) or
 * $XDG_RUNTIME_DIR/launch.  Caller frees. */
char *state_root(const char *option);
/* Finds a container by name, full id or unique id prefix. */
int container_find(const char *root, const char *key, struct container *ret, struct err *err);
int container_list(const char *root, struct container **ret, size_t *ret_n);
void container_done(struct container *c);
/* Writes launch.json of c into c->dir. */
int container_save(const struct container *c);

enum container_status { STATUS_CREATED, STATUS_RUNNING, STATUS_EXITED, STATUS_SHIM_GONE };
enum container_status container_status(const struct container *c, int *ret_exit_code);

/* True while pid is a live (not zombie) process whose name starts with program. */
bool process_alive(pid_t pid, const char *program);
/* Waits up to timeout_ms for the imgfs daemon of c to exit after its unmount. */
void wait_daemon_gone(const struct container *c, int timeout_ms);
/* A pidfd of the container's init (from the runtime's pid file), or -1. */
int container_init_pidfd(const struct container *c);

/* Removes what is left of a container: runtime state, mount, files, name. */
int container_remove(const char *root, const char *runtime, const struct container *c, struct err *err);

/* ---- helpers shared by the verbs ------------------------------------------- */

/* Finds a program next to the launcher (the build tree or the install
 * prefix) or in $PATH: imgfs, launch-shim, launch-init. */
char *find_helper(const char *name);
/* runc, else crun, from $PATH, unless the option names one. */
char *find_runtime(const char *option);
/* The exit code the shim of a --rm container left (ROOT/exits/ID), or
 * -ENOENT; records older than a day are pruned by exit_records_prune(). */
int container_removed_exit_code(const char *root, const struct container *c);
void exit_records_prune(const char *root);
/* When the shim is gone, the runtime still knows the container: whether it
 * runs, and how to signal it. */
bool runtime_running(const char *root, const char *runtime, const struct container *c);
int runtime_kill(const char *root, const char *runtime, const struct container *c, int sig);
char *runtime_root(const char *root);
/* Where writable layers live, persistent: $LAUNCH_STORAGE; ROOT/storage when
 * the state root was chosen (--root, $LAUNCH_ROOT); /var/lib/launch (root);
 * else $XDG_DATA_HOME/launch or ~/.local/share/launch.  Caller frees. */
char *storage_root(const char *state_option);

/* ---- attach ------------------------------------------------------------------- */

#define ATTACH_DETACHED (-1)

/* Relays the terminal (or stdin/stdout/stderr) to an attached socket until
 * the container exits (its exit code) or the user detaches
 * (ATTACH_DETACHED).  Negative errno on failure. */
int attach_session(int sock, const char *state_dir, bool tty, bool send_stdin, const char *detach_keys);
int attach_connect(const char *state_dir);
int parse_detach_keys(const char *spec, unsigned char *keys, size_t *n);

/* ---- verbs ------------------------------------------------------------------- */

int cmd_run(int argc, char **argv);
int cmd_ps(int argc, char **argv);
int cmd_logs(int argc, char **argv);
int cmd_attach(int argc, char **argv);
int cmd_exec(int argc, char **argv);
int cmd_kill(int argc, char **argv);
int cmd_wait(int argc, char **argv);
int cmd_rm(int argc, char **argv);
int cmd_stop(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_start(int argc, char **argv);
int cmd_restart(int argc, char **argv);

/* ---- network (network.c) ------------------------------------------------------- */

/* -p [IP:]HOST:CTR[/tcp|udp] */
struct port_mapping {
	char host_ip[64];
	unsigned host_port, ctr_port;
	char proto[4];
};
int port_mapping_parse(const char *text, struct port_mapping *ret);
/* In the state directory, bind-mounted over the container's own. */
#define NETWORK_HOSTS_FILE "hosts"
#define NETWORK_RESOLV_FILE "resolv.conf"
/* The hosts and resolv.conf of a container on slirp4netns, in dir: names
 * (its host name, its name) are its own address. */
int network_files(const char *dir, const char *names, struct err *err);
/* Connects the started container of state directory dir through
 * slirp4netns and publishes ports; network_stop() ends it. */
int network_start(const char *dir, const struct port_mapping *ports, size_t n_ports, struct err *err);
void network_stop(const char *dir);
