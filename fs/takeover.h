/* A mount that outlives the process serving it.
 *
 * A daemon mount is two processes: the server (imgfs mount or imgfs store,
 * which answers FUSE requests) and its keeper (imgfs keeper), a small
 * process that holds a second descriptor of the same /dev/fuse connection
 * and nothing else that matters.  The kernel keeps a connection while any
 * of its descriptors is open, so a server that dies (kill -9, a crash)
 * leaves the mount in place with its requests waiting; the keeper starts a
 * new server on the same descriptor, which resumes the session without a
 * second FUSE_INIT (the kernel sends it once: the new server is handed the
 * first one's, and its answer is dropped) and asks the kernel to resend
 * what the dead server had read and not answered (FUSE_NOTIFY_RESEND).
 * imgfs upgrade asks the keeper to do the same with another binary, after
 * the running server has finished what it was doing.
 *
 * What the new server must rebuild, it finds in the state descriptor the
 * keeper holds for it (the writable layer's node table, overlay.h); the
 * read-only tree numbers its inodes the same way every time.
 *
 * Wire between server and keeper (a SOCK_SEQPACKET pair): the server sends
 * "I" + the FUSE_INIT request it read, once, and "R" when it serves. */
#pragma once

#include "fuse_ops.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Handed from keeper to server in this variable: descriptors, counts and
 * the saved FUSE_INIT; unset once read. */
#define TAKEOVER_ENV "IMGFS_TAKEOVER"

/* A FUSE_INIT request is a header and fuse_init_in: well under this. */
#define TAKEOVER_INIT_MAX 256

struct takeover {
	bool resuming;  /* started by a keeper: the mount exists already */
	int fuse_fd;    /* the connection, -1 before the mount */
	int keeper_fd;  /* the channel to the keeper, -1 without one */
	int state_fd;   /* what the server keeps for its successor, -1 if nothing */
	unsigned count; /* how many servers served this mount before this one */
	pid_t keeper_pid;
	unsigned char init[TAKEOVER_INIT_MAX];
	size_t init_len;
};

/* Reads TAKEOVER_ENV (and unsets it): 0 with t->resuming set when this
 * server takes a mount over, 0 with it clear when there is nothing to take
 * over, -EINVAL when the variable is malformed. */
int takeover_from_env(struct takeover *t);
/* The descriptors of t, for a process that closes what it was not given. */
size_t takeover_fds(const struct takeover *t, int *fds, size_t max);

/* Serves se on t->fuse_fd through hooks that keep the first FUSE_INIT for
 * the keeper, or, when resuming, replay the saved one and then ask the
 * kernel to resend.  One session per process: the hooks' state is global,
 * as libfuse hands them only the file system's userdata. */
int takeover_attach(struct fuse_session *se, struct takeover *t);

/* Starts the keeper of the mount at point: restart_argv (NULL-ended,
 * without the program) is what a successor server runs with, in cwd (the
 * directory the command was given relative paths from).  Call it from the
 * server, after the mount, before any thread starts. */
int takeover_start_keeper(struct takeover *t, const char *point, const char *cwd, char *const *restart_argv);

/* SIGUSR1 makes the server stop reading, finish what it has read, and exit
 * without unmounting (imgfs upgrade).  True once it was asked to. */
void takeover_handle_handover(struct fuse_session *se);
bool takeover_handing_over(void);

/* Appends "takeovers N\nkeeper_pid P\n" (nothing without a keeper) to the
 * used bytes of imgfs stats in buf: the new length, or used when negative. */
int takeover_append_stats(char *buf, int used, size_t size);

/* The keeper process (imgfs keeper, started by takeover_start_keeper), and
 * imgfs upgrade DIR, which asks it for a new server from this binary. */
int keeper_main(int argc, char **argv);
int upgrade_main(int argc, char **argv);
