/* The container's stdout and stderr as two files of a FUSE mount the shim
 * serves.  With two pipes the order in which a container wrote to stdout
 * and to stderr is lost: both have data when the shim looks.  A write to
 * one of these files returns only once the shim has taken it, and every
 * write comes in on the one FUSE connection, so the shim sees them in the
 * order they were made.  Unlike a socket, the files open by name:
 * open("/dev/stdout") reopens them, as it reopens a pipe. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

struct output_fs;

/* Called for every write: stream 0 is stdout, 1 stderr.  Returns false
 * when it takes no more for now: the writers then wait until the next
 * output_fs_serve(). */
typedef bool (*output_sink)(void *ctx, int stream, const char *data, size_t len);

/* Mounts on dir (created here, an empty directory, removed again before
 * this returns; the mount is detached and lives on in the open files),
 * and opens the two streams for writing into fds[0] and fds[1], close-on-
 * exec, for the runtime.  Needs CAP_SYS_ADMIN.  Returns 0 or -errno. */
int output_fs_open(const char *dir, output_sink sink, void *ctx, struct output_fs **out, int fds[2]);

/* The descriptor to poll for requests. */
int output_fs_fd(const struct output_fs *ofs);

/* Serves the requests that wait, given what poll() said of output_fs_fd(),
 * and those that follow at once, for at most a few milliseconds; false
 * once no one holds a stream open: every writer is gone, as at the end of
 * a pipe. */
bool output_fs_serve(struct output_fs *ofs, short revents);

void output_fs_free(struct output_fs *ofs);
