/* The container's stdout and stderr served as files; see output_fs.h.
 *
 * Two regular files (pipes and devices on FUSE would be the kernel's own,
 * not ours), opened with direct I/O so that every write comes to us, not
 * seekable, as a pipe is not, and without a flush on close: a dying
 * process's close would otherwise wait for the shim. */
#define FUSE_USE_VERSION 312
#include "output_fs.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Opening the files takes a lookup and an open that this process serves;
 * one that is not answered in this long means the connection is broken. */
#define OPEN_WAIT_MS 10000
/* A writer's next write often comes within microseconds of the reply to
 * its last: waiting for it here rather than in poll() saves the shim a
 * sleep and a wake-up per write, most of a round trip on a VM.  Bounded
 * by a slice, so that the event loop still serves signals and clients
 * while a container writes without pause. */
#define NEXT_WRITE_WAIT_NS 50000
#define SERVE_SLICE_NS 10000000

enum { STDOUT_INO = 2, STDERR_INO = 3 };
static const char *const stream_names[2] = { "stdout", "stderr" };

struct output_fs {
	struct fuse_session *se;
	struct fuse_buf buf;
	output_sink sink;
	void *ctx;
	bool paused;         /* the sink takes no more for now */
	struct stat attr[2]; /* runc chowns the container's stdio to its user */
};

static int stream_of(fuse_ino_t ino)
{
	return ino == STDOUT_INO ? 0 : ino == STDERR_INO ? 1 : -1;
}

static void root_attr(struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = FUSE_ROOT_ID;
	st->st_mode = S_IFDIR | 0755;
	st->st_nlink = 2;
}

static void ofs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct output_fs *ofs = fuse_req_userdata(req);
	for (int s = 0; s < 2; s++)
		if (parent == FUSE_ROOT_ID && strcmp(name, stream_names[s]) == 0) {
			struct fuse_entry_param e = { .ino = ofs->attr[s].st_ino,
						      .attr = ofs->attr[s],
						      .attr_timeout = 86400,
						      .entry_timeout = 86400 };
			fuse_reply_entry(req, &e);
			return;
		}
	fuse_reply_err(req, ENOENT);
}

static void ofs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)fi;
	struct output_fs *ofs = fuse_req_userdata(req);
	int s = stream_of(ino);
	struct stat root;
	root_attr(&root);
	fuse_reply_attr(req, s < 0 ? &root : &ofs->attr[s], 86400);
}

/* Owner and mode are kept; a size (O_TRUNC of a shell's "> /dev/stdout")
 * means nothing to a stream and is taken as done. */
static void ofs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
	(void)fi;
	struct output_fs *ofs = fuse_req_userdata(req);
	int s = stream_of(ino);
	if (s < 0) {
		fuse_reply_err(req, EPERM);
		return;
	}
	struct stat *st = &ofs->attr[s];
	if (to_set & FUSE_SET_ATTR_UID)
		st->st_uid = attr->st_uid;
	if (to_set & FUSE_SET_ATTR_GID)
		st->st_gid = attr->st_gid;
	if (to_set & FUSE_SET_ATTR_MODE)
		st->st_mode = S_IFREG | (attr->st_mode & 07777);
	fuse_reply_attr(req, st, 86400);
}

static void ofs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (stream_of(ino) < 0) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	fi->direct_io = 1;
	fi->nonseekable = 1;
	fi->noflush = 1;
	fuse_reply_open(req, fi);
}

/* A stream opened for reading too ("exec 1<>/dev/stdout") reads nothing. */
static void ofs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)ino, (void)size, (void)off, (void)fi;
	fuse_reply_buf(req, NULL, 0);
}

static void ofs_write(fuse_req_t req, fuse_ino_t ino, const char *data, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	(void)off, (void)fi;
	struct output_fs *ofs = fuse_req_userdata(req);
	int s = stream_of(ino);
	if (s < 0) {
		fuse_reply_err(req, EBADF);
		return;
	}
	/* The writer goes on while the shim logs what it wrote (as with a
	 * pipe); its next write is read only after this one is handled. */
	fuse_reply_write(req, size);
	if (!ofs->sink(ofs->ctx, s, data, size))
		ofs->paused = true;
}

static const struct fuse_lowlevel_ops output_ops = {
	.lookup = ofs_lookup,
	.getattr = ofs_getattr,
	.setattr = ofs_setattr,
	.open = ofs_open,
	.read = ofs_read,
	.write = ofs_write,
};

int output_fs_fd(const struct output_fs *ofs)
{
	return fuse_session_fd(ofs->se);
}

static int64_t monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t monotonic_ms(void)
{
	return monotonic_ns() / 1000000;
}

bool output_fs_serve(struct output_fs *ofs, short revents)
{
	ofs->paused = false;
	int64_t start = monotonic_ns(), last = start;
	for (;;) {
		/* The last writer gone (or the connection broken): reading would
		 * only make libfuse complain. */
		if (revents & (POLLERR | POLLHUP | POLLNVAL))
			return false;
		int64_t now = monotonic_ns();
		if (revents & POLLIN) {
			int r = fuse_session_receive_buf(ofs->se, &ofs->buf);
			if (fuse_session_exited(ofs->se))
				return false;
			if (r < 0 && r != -EAGAIN && r != -EINTR) {
				fprintf(stderr, "launch-shim: cannot read the container's output: %s\n", strerror(-r));
				return false;
			}
			if (r > 0) {
				fuse_session_process_buf(ofs->se, &ofs->buf);
				if (ofs->paused || now - start > SERVE_SLICE_NS)
					return true;
				last = monotonic_ns();
			}
		} else if (now - last > NEXT_WRITE_WAIT_NS) {
			return true;
		}
		struct pollfd p = { output_fs_fd(ofs), POLLIN, 0 };
		revents = poll(&p, 1, 0) > 0 ? p.revents : 0;
	}
}

void output_fs_free(struct output_fs *ofs)
{
	if (!ofs)
		return;
	if (ofs->se)
		fuse_session_destroy(ofs->se);
	free(ofs->buf.mem);
	free(ofs);
}

struct opener {
	const char *dir;
	int fds[2];
	int err;
	int done_fd; /* an eventfd, written once the opens returned */
};

/* On a thread of its own: the lookups and opens it makes are served by the
 * thread that started it. */
static void *open_streams(void *arg)
{
	struct opener *op = arg;
	for (int s = 0; s < 2 && !op->err; s++) {
		char path[4096];
		snprintf(path, sizeof(path), "%s/%s", op->dir, stream_names[s]);
		if ((op->fds[s] = open(path, O_WRONLY | O_CLOEXEC)) < 0)
			op->err = errno;
	}
	(void)eventfd_write(op->done_fd, 1);
	return NULL;
}

/* Serves the mount until the opener is done; false when it broke first. */
static bool serve_opener(struct output_fs *ofs, const struct opener *op)
{
	int64_t deadline = monotonic_ms() + OPEN_WAIT_MS;
	for (;;) {
		struct pollfd p[2] = { { output_fs_fd(ofs), POLLIN, 0 }, { op->done_fd, POLLIN, 0 } };
		int left = (int)(deadline - monotonic_ms());
		int n = poll(p, 2, left > 0 ? left : 0);
		if (n < 0 && errno != EINTR)
			return false;
		if (n == 0 || (p[0].revents && !output_fs_serve(ofs, p[0].revents)))
			return false;
		if (p[1].revents)
			return true;
	}
}

/* Mounts a session of its own on dir through a /dev/fuse descriptor that
 * libfuse then owns: it never learns a mount point it would unmount. */
static int mount_session(struct output_fs *ofs, const char *dir)
{
	int dev = open("/dev/fuse", O_RDWR | O_CLOEXEC);
	if (dev < 0)
		return -errno;
	char opts[128], devpath[32];
	snprintf(opts, sizeof(opts), "fd=%d,rootmode=40000,user_id=%u,group_id=%u,allow_other", dev, (unsigned)getuid(),
		 (unsigned)getgid());
	if (mount("launch-output", dir, "fuse.launch-output", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts) < 0) {
		int saved = errno;
		close(dev);
		return -saved;
	}
	static char argv0[] = "launch-shim";
	char *argv[] = { argv0, NULL };
	struct fuse_args args = FUSE_ARGS_INIT(1, argv);
	ofs->se = fuse_session_new(&args, &output_ops, sizeof(output_ops), ofs);
	fuse_opt_free_args(&args);
	snprintf(devpath, sizeof(devpath), "/dev/fd/%d", dev);
	if (!ofs->se || fuse_session_mount(ofs->se, devpath) != 0) {
		(void)umount2(dir, MNT_DETACH);
		close(dev);
		return -EIO;
	}
	(void)fcntl(dev, F_SETFL, O_NONBLOCK);
	return 0;
}

int output_fs_open(const char *dir, output_sink sink, void *ctx, struct output_fs **out, int fds[2])
{
	struct output_fs *ofs = calloc(1, sizeof(*ofs));
	if (!ofs)
		return -ENOMEM;
	ofs->sink = sink;
	ofs->ctx = ctx;
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	for (int s = 0; s < 2; s++)
		ofs->attr[s] = (struct stat){ .st_ino = STDOUT_INO + s,
					      .st_mode = S_IFREG | 0600,
					      .st_nlink = 1,
					      .st_uid = getuid(),
					      .st_gid = getgid(),
					      .st_atim = now,
					      .st_mtim = now,
					      .st_ctim = now };
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		int saved = errno;
		free(ofs);
		return -saved;
	}
	int r = mount_session(ofs, dir);
	if (r < 0) {
		(void)rmdir(dir);
		output_fs_free(ofs);
		return r;
	}
	struct opener op = { .dir = dir, .fds = { -1, -1 }, .done_fd = eventfd(0, EFD_CLOEXEC) };
	pthread_t thread;
	int e = op.done_fd < 0 ? errno : pthread_create(&thread, NULL, open_streams, &op);
	bool served = e == 0 && serve_opener(ofs, &op);
	/* Gone from the tree now; the open files keep it. */
	(void)umount2(dir, MNT_DETACH);
	(void)rmdir(dir);
	if (e == 0 && !served) {
		/* Closing the connection fails the opener's pending request. */
		fuse_session_destroy(ofs->se);
		ofs->se = NULL;
	}
	if (e == 0)
		pthread_join(thread, NULL);
	if (op.done_fd >= 0)
		close(op.done_fd);
	if (e != 0 || !served || op.err) {
		for (int s = 0; s < 2; s++)
			if (op.fds[s] >= 0)
				close(op.fds[s]);
		output_fs_free(ofs);
		return e ? -e : op.err ? -op.err : -EIO;
	}
	fds[0] = op.fds[0];
	fds[1] = op.fds[1];
	*out = ofs;
	return 0;
}
