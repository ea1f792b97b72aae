/* imgfs: mount a registry image as a FUSE file system. */
#include "artifact_cmd.h"
#include "cache.h"
#include "cli.h"
#include "imgfs.h"
#include "index_artifact.h"
#include "login.h"
#include "overlay.h"
#include "store.h"
#include "takeover.h"

#include <dirent.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <limits.h>
#include <stdarg.h>
#include <malloc.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/pidfd.h>
#include <sys/wait.h>
#include <sys/xattr.h>

#define IMGFS_VERSION "0.1.0"
/* How long imgfs umount waits for the daemon to finish. */
#define DAEMON_EXIT_WAIT_MS 30000

static void usage(FILE *out)
{
	fprintf(out, "Usage: imgfs mount [OPTIONS] REF DIR\n"
		     "       imgfs store [OPTIONS] DIR   a layer store for podman and CRI-O\n"
		     "       imgfs umount DIR\n"
		     "       imgfs upgrade DIR            hand a live mount to this binary\n"
		     "       imgfs stats DIR\n"
		     "       imgfs index push [--cache DIR] [--platform P] [--insecure-registry H] REF\n"
		     "       imgfs record DIR [FILE]\n"
		     "       imgfs profile push [--index-repo REPO] REF FILE\n"
		     "       imgfs images | pull REF | rmi REF...   what the cache holds\n"
		     "       imgfs login [-u USER] [--password-stdin] REGISTRY | logout REGISTRY\n"
		     "\n"
		     "Mounts the image REF from its registry on DIR, fetching layer contents into\n"
		     "a shared cache instead of unpacking them.  The mount is read-only unless\n"
		     "--upper names a directory that keeps the changes.\n"
		     "\n"
		     "Options for mount:\n"
		     "  --cache DIR                 cache directory (default: $IMGFS_CACHE,\n"
		     "                              /var/lib/imgfs for root, else $XDG_CACHE_HOME/imgfs)\n"
		     "  --cache-size SIZE           keep the cache under SIZE (K, M, G, T suffixes),\n"
		     "                              evicting what was used least recently\n"
		     "  --upper UPPERDIR            make the mount writable, keeping every change in\n"
		     "                              UPPERDIR (an overlayfs upper directory; created\n"
		     "                              if missing; one mount at a time)\n"
		     "  --platform OS/ARCH[/VAR]    platform to pick from a multi-platform image\n"
		     "  --pull POLICY               always (default): ask the registry what REF names;\n"
		     "                              missing: only if this cache has not resolved REF\n"
		     "                              before; never: only from the cache\n"
		     "  --prefetch MODE             none, landmark (the eStargz prefetch set only) or\n"
		     "                              all (default: the prefetch set first, then the rest)\n"
		     "  --nonempty                  mount over a directory that holds files (they are\n"
		     "                              hidden while the image is mounted)\n"
		     "  --prefetch-list FILE        fetch the files FILE lists (one path per line, as\n"
		     "                              imgfs record writes) first, in place of the\n"
		     "                              image's own landmarks\n"
		     "  --insecure-registry HOST    TLS without verification, or plain HTTP, for\n"
		     "                              HOST[:PORT] (repeatable; also\n"
		     "                              $IMGFS_INSECURE_REGISTRIES, comma-separated);\n"
		     "                              loopback registries may answer in plain HTTP\n"
		     "  --cert-dir DIR              CAs (*.crt) and a client pair (*.cert, *.key) for\n"
		     "                              the registry, instead of its certs.d directory\n"
		     "  --index-repo REPO           also look for imgfs indexes and profiles in REPO\n"
		     "                              (REG/NAME; also $IMGFS_INDEX_REPO, imgfs.conf's\n"
		     "                              index-repository); index push stores them there\n"
		     "  --fetch-timeout SECONDS     give up a request after SECONDS, retries included\n"
		     "                              (default 900; also $IMGFS_FETCH_TIMEOUT)\n"
		     "  --resolve-timeout SECONDS   store: how long a lookup waits for a reference\n"
		     "                              to resolve before podman pulls it itself (10)\n"
		     "  -f, --foreground            stay in the foreground\n"
		     "  -d, --debug                 print FUSE requests (implies -f)\n"
		     "  -h, --help                  show this help\n"
		     "\n"
		     "imgfs index push fetches and indexes REF's plain gzip, zstd and tar layers,\n"
		     "then stores the index in REF's registry as an OCI artifact that refers to\n"
		     "the image, so that every later mount reads those layers lazily.\n"
		     "  --version                   show the version\n");
}

/* Decodes the octal escapes (\040 for a space) of a mountinfo field in place. */
static void mountinfo_unescape(char *s)
{
	char *out = s;
	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' && s[3] >= '0' &&
		    s[3] <= '7') {
			*out++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 3;
		} else {
			*out++ = *s;
		}
	}
	*out = '\0';
}

/* The file system type mounted on top at path ("fuse.imgfs"), from
 * mountinfo, or NULL: asking the mount itself would wait for its daemon. */
static char *mounted_type(const char *path)
{
	_cleanup_fclose_ FILE *f = fopen("/proc/self/mountinfo", "re");
	_cleanup_free_ char *line = NULL;
	char *type = NULL;
	size_t size = 0;
	while (f && getline(&line, &size, f) > 0) {
		char point[4097], fstype[256];
		/* ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER */
		const char *dash = strstr(line, " - ");
		if (!dash || sscanf(line, "%*d %*d %*s %*s %4096s", point) != 1 ||
		    sscanf(dash + 3, "%255s", fstype) != 1)
			continue;
		mountinfo_unescape(point);
		if (strcmp(point, path) == 0) {
			free(type);
			type = strdup(fstype); /* the last one is the mount on top */
		}
	}
	return type;
}

/* The kernel gives a FUSE mount 128 KiB of read-ahead whatever max_readahead
 * the daemon offers; FUSE_READ_AROUND says why more.  Only root may raise
 * it, through the mount's bdi in sysfs; for anyone else the default stays,
 * which is only slower.  The device comes from mountinfo: a stat() of the
 * mount would wait for this daemon, which does not serve requests yet. */
static void widen_readahead(const char *path)
{
	_cleanup_fclose_ FILE *f = geteuid() == 0 ? fopen("/proc/self/mountinfo", "re") : NULL;
	if (!f)
		return;
	unsigned major = 0, minor = 0;
	bool found = false;
	_cleanup_free_ char *line = NULL;
	size_t size = 0;
	while (getline(&line, &size, f) > 0) {
		unsigned maj, min;
		char point[4097];
		if (sscanf(line, "%*d %*d %u:%u %*s %4096s", &maj, &min, point) != 3)
			continue;
		mountinfo_unescape(point);
		/* The last match is the mount on top: ours. */
		if (strcmp(point, path) == 0) {
			major = maj;
			minor = min;
			found = true;
		}
	}
	if (!found)
		return;
	char sysfs[64], value[16];
	snprintf(sysfs, sizeof(sysfs), "/sys/class/bdi/%u:%u/read_ahead_kb", major, minor);
	int len = snprintf(value, sizeof(value), "%u", FUSE_READ_AROUND / 1024);
	_cleanup_close_ int fd = open(sysfs, O_WRONLY | O_CLOEXEC);
	if (fd >= 0)
		(void)!write(fd, value, (size_t)len);
}

struct mount_request {
	struct source_flags source;
	const char *ref, *dir, *upper, *prefetch_list;
	uint64_t cache_size;
	bool foreground, debug, nonempty;
	bool store; /* imgfs store DIR: no REF */
	unsigned resolve_timeout_ms;
	int n_options; /* argv[0 .. n_options - 1]: the command and its options */
	enum prefetch_mode prefetch;
	enum pull_policy pull;
};

/* Parses the options of imgfs mount: -1 to go on, else the exit code. */
static int mount_parse(int argc, char **argv, struct mount_request *req)
{
	enum {
		OPT_PREFETCH = OPT_OWN,
		OPT_UPPER,
		OPT_CACHE_SIZE,
		OPT_PREFETCH_LIST,
		OPT_PULL,
		OPT_NONEMPTY,
		OPT_RESOLVE_TIMEOUT
	};
	static const struct option options[] = {
		SOURCE_OPTIONS,
		{ "resolve-timeout", required_argument, NULL, OPT_RESOLVE_TIMEOUT },
		{ "pull", required_argument, NULL, OPT_PULL },
		{ "prefetch", required_argument, NULL, OPT_PREFETCH },
		{ "upper", required_argument, NULL, OPT_UPPER },
		{ "cache-size", required_argument, NULL, OPT_CACHE_SIZE },
		{ "prefetch-list", required_argument, NULL, OPT_PREFETCH_LIST },
		{ "nonempty", no_argument, NULL, OPT_NONEMPTY },
		{ "foreground", no_argument, NULL, 'f' },
		{ "debug", no_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c, r;
	optind = 1;
	while ((c = getopt_long(argc, argv, "+fdh", options, NULL)) != -1) {
		if ((r = source_flag(&req->source, c, optarg)) != 0) {
			if (r < 0)
				return report(-r, "out of memory");
			continue;
		}
		switch (c) {
		case OPT_UPPER:
			req->upper = optarg;
			break;
		case OPT_PREFETCH_LIST:
			req->prefetch_list = optarg;
			break;
		case OPT_NONEMPTY:
			req->nonempty = true;
			break;
		case OPT_RESOLVE_TIMEOUT: {
			char *end;
			double seconds = strtod(optarg, &end);
			if (*end || end == optarg || !(seconds >= 0 && seconds <= 3600))
				return report_usage("invalid --resolve-timeout \"%s\": expected seconds, 0 to 3600",
						    optarg);
			req->resolve_timeout_ms = (unsigned)(seconds * 1000);
			break;
		}
		case OPT_PULL:
			if (pull_policy_parse(optarg, &req->pull) < 0)
				return report_usage("invalid --pull \"%s\": expected always, missing or never", optarg);
			break;
		case OPT_CACHE_SIZE:
			if (cache_parse_size(optarg, &req->cache_size) < 0)
				return report_usage(
				    "invalid --cache-size \"%s\": expected bytes, or a number with K, M, "
				    "G or T",
				    optarg);
			break;
		case OPT_PREFETCH:
			if (strcmp(optarg, "none") == 0)
				req->prefetch = PREFETCH_NONE;
			else if (strcmp(optarg, "landmark") == 0)
				req->prefetch = PREFETCH_LANDMARK;
			else if (strcmp(optarg, "all") == 0)
				req->prefetch = PREFETCH_ALL;
			else
				return report_usage("invalid --prefetch \"%s\": expected none, landmark or all",
						    optarg);
			break;
		case 'f':
			req->foreground = true;
			break;
		case 'd':
			req->debug = req->foreground = true;
			break;
		case 'h':
			usage(stdout);
			return IMGFS_EXIT_OK;
		default:
			usage(stderr);
			return IMGFS_EXIT_USAGE;
		}
	}
	if (req->store && (req->upper || req->prefetch_list))
		return report_usage("imgfs store: --upper and --prefetch-list are for imgfs mount");
	if (argc - optind != (req->store ? 1 : 2)) {
		usage(stderr);
		return report_usage(req->store ? "imgfs store: expected DIR" : "imgfs mount: expected REF and DIR");
	}
	req->n_options = optind;
	req->ref = req->store ? "imgfs-store" : argv[optind];
	req->dir = argv[argc - 1];
	return -1;
}

/* What a mount holds while it is served; mount_server_done() releases
 * whatever of it was made, in reverse order. */
struct mount_server {
	struct image *img;
	struct overlay *overlay;
	struct store *store;
	struct fuse_args args;
	struct fuse_session *se;
	bool handlers, mounted;
};

static void mount_server_done(struct mount_server *s)
{
	if (s->mounted)
		fuse_session_unmount(s->se);
	if (s->handlers)
		fuse_remove_signal_handlers(s->se);
	if (s->se)
		fuse_session_destroy(s->se);
	/* No one reads any more: read-ahead and guesses on the wire are given
	 * up, not waited for (the threads that run them are joined below). */
	registry_abort_transfers();
	fuse_opt_free_args(&s->args);
	overlay_free(s->overlay);
	image_free(s->img);
	store_free(s->store);
}

/* A published profile replaces the image's own landmarks; one that names
 * none of the image's files is ignored, and said so. */
static void use_profile(struct image *img, const struct image_options *opts)
{
	struct err err = { 0 };
	size_t found = 0;
	int r = image_set_landmarks(img, img->profile_path, &found, &err);
	char line[1400];
	if (r < 0)
		snprintf(line, sizeof(line), "ignoring the published profile of \"%s\": %s", img->ref_text, err.msg);
	else if (found == 0)
		snprintf(line, sizeof(line), "ignoring the published profile of \"%s\": it names none of its files",
			 img->ref_text);
	else
		snprintf(line, sizeof(line), "prefetching the %zu files of the published profile of \"%s\" first",
			 found, img->ref_text);
	if (opts->notice && (r < 0 || found == 0))
		opts->notice(line);
	else if (opts->progress)
		opts->progress(line);
}

/* What a successor server needs lives in a memory file the keeper holds. */
static int keep_state(const struct mount_request *req, struct takeover *t, const char *name, struct err *err)
{
	if (req->foreground || t->resuming || (t->state_fd = memfd_create(name, MFD_CLOEXEC)) >= 0)
		return 0;
	return err_set(err, errno, "cannot keep the state of \"%s\" for a successor: %s", req->dir, strerror(errno));
}

/* The image, and the writable layer over it when asked for. */
static int mount_open_image(const struct mount_request *req, const struct image_options *opts, struct mount_server *s,
			    struct takeover *t, struct err *err)
{
	size_t listed;
	int r = image_open(req->ref, opts, &s->img, err);
	if (r == 0 && req->prefetch_list)
		r = image_set_landmarks(s->img, req->prefetch_list, &listed, err);
	else if (r == 0 && s->img->profile_path)
		use_profile(s->img, opts);
	if (r < 0 || !req->upper)
		return r;
	if ((r = mkdir_parents(req->upper, 0755)) < 0)
		return err_set(err, -r, "cannot create upper directory \"%s\": %s", req->upper, strerror(-r));
	if ((r = keep_state(req, t, "imgfs-overlay", err)) < 0)
		return r;
	return overlay_open(s->img, req->upper, t->state_fd, t->resuming, &s->overlay, err);
}

/* "fsname=" text for the image reference: the options' own separators
 * escaped, so that mount, df and findmnt show the reference. */
static void fsname_option(const char *ref, char *buf, size_t size)
{
	size_t n = 0;
	for (const char *p = ref; *p && n + 3 < size; p++) {
		if (*p == ',' || *p == '\\')
			buf[n++] = '\\';
		buf[n++] = *p;
	}
	buf[n] = '\0';
}

/* A mount point must not be a mount already (a second mount would hide the
 * first), nor hide files of its own unless asked to (--nonempty). */
static int check_mount_point(const char *point, bool nonempty, struct err *err)
{
	_cleanup_free_ char *type = mounted_type(point);
	if (type)
		return err_set(err, EBUSY, "\"%s\" is a mount point already (%s): unmount it first", point, type);
	DIR *d = opendir(point);
	if (!d)
		return err_set(err, errno, "cannot use the mount point \"%s\": %s", point, strerror(errno));
	bool empty = true;
	for (struct dirent *de; empty && (de = readdir(d));)
		empty = strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0;
	closedir(d);
	if (!empty && !nonempty)
		return err_set(
		    err, ENOTEMPTY,
		    "\"%s\" is not empty: the mount would hide what it holds (--nonempty mounts over it anyway)",
		    point);
	return 0;
}

/* Mounts the session on point; the mount exists when this returns. */
static int mount_attach(const struct mount_request *req, const char *point, const char *argv0, struct mount_server *s,
			struct takeover *t, struct err *err)
{
	char mount_opts[1024], fsname[700];
	fsname_option(req->ref, fsname, sizeof(fsname));
	/* The store takes "use" creates and rmdirs: not a read-only mount. */
	snprintf(mount_opts, sizeof(mount_opts), "%sdefault_permissions,fsname=%s,subtype=imgfs%s",
		 s->overlay || s->store ? "" : "ro,", fsname, geteuid() == 0 ? ",allow_other" : "");
	/* fuse_args wants them writable. */
	static char opt_flag[] = "-o", debug_flag[] = "-d";
	char *fuse_argv[] = { (char *)argv0, opt_flag, mount_opts, req->debug ? debug_flag : NULL, NULL };
	s->args = (struct fuse_args)FUSE_ARGS_INIT(req->debug ? 4 : 3, fuse_argv);
	if (s->store)
		s->se = fuse_session_new(&s->args, &store_ops, sizeof(store_ops), s->store);
	else if (s->overlay)
		s->se = fuse_session_new(&s->args, &overlay_ops, sizeof(overlay_ops), s->overlay);
	else
		s->se = fuse_session_new(&s->args, &imgfs_ops, sizeof(imgfs_ops), s->img);
	if (!s->se)
		return err_set(err, EIO, "cannot create the FUSE session for \"%s\"", req->ref);
	if (s->overlay)
		overlay_set_session(s->overlay, s->se);
	if (fuse_set_signal_handlers(s->se) != 0)
		return err_set(err, EIO, "cannot install signal handlers");
	s->handlers = true;
	takeover_handle_handover(s->se);
	if (t->resuming) {
		int r = takeover_attach(s->se, t);
		if (r == 0)
			s->mounted = true;
		return r < 0 ? err_set(err, -r, "cannot take over the mount on \"%s\": %s", point, strerror(-r)) : 0;
	}
	if (fuse_session_mount(s->se, point) != 0)
		return err_set(err, EIO, "cannot mount \"%s\" on \"%s\"", req->ref, point);
	s->mounted = true;
	widen_readahead(point);
	if (req->foreground)
		return 0;
	t->fuse_fd = fuse_session_fd(s->se);
	int r = takeover_attach(s->se, t);
	return r < 0 ? err_set(err, -r, "cannot serve the mount on \"%s\": %s", point, strerror(-r)) : 0;
}

/* Serves requests until the mount goes away; 0 when it went cleanly. */
static int mount_loop(struct mount_server *s)
{
	struct fuse_loop_config *cfg = fuse_loop_cfg_create();
	if (!cfg)
		return -ENOMEM;
	fuse_loop_cfg_set_clone_fd(cfg, 0);
	/* Each worker keeps a receive buffer of max_write (1 MiB): bound their number. */
	fuse_loop_cfg_set_max_threads(cfg, 8);
	int r = fuse_session_loop_mt(s->se, cfg) == 0 ? 0 : -EIO;
	fuse_loop_cfg_destroy(cfg);
	return r;
}

/* What the keeper runs a successor server with: this command's options,
 * and the image it resolved, from the cache. */
static char **restart_argv(const struct mount_request *req, char **argv, const struct mount_server *s,
			   const char *point)
{
	char **v = calloc((size_t)req->n_options + 6, sizeof(*v));
	if (!v)
		return NULL;
	size_t n = 0;
	for (int i = 0; i < req->n_options; i++)
		v[n++] = argv[i];
	if (s->img) {
		v[n++] = (char *)"--pull";
		v[n++] = (char *)"missing";
		v[n++] = s->img->pinned_ref;
	}
	v[n++] = (char *)point;
	return v;
}

/* A server of its own, in the background, with a keeper; or the successor
 * of one, which finds the mount made and itself in the background. */
static int mount_start(const struct mount_request *req, char **argv, struct mount_server *s, struct takeover *t,
		       const char *point, struct err *err)
{
	/* Before fuse_daemonize() moves to "/". */
	_cleanup_free_ char *cwd = getcwd(NULL, 0);
	if (t->resuming)
		return 0;
	/* The mount exists before the parent returns: the caller can use it at once. */
	if (fuse_daemonize(req->foreground) != 0)
		return err_set(err, EIO, "cannot go to the background");
	if (req->foreground)
		return 0;
	_cleanup_free_ char **v = restart_argv(req, argv, s, point);
	int r = v ? takeover_start_keeper(t, point, cwd, v) : -ENOMEM;
	/* Without a keeper the mount is served as before, only not past this process. */
	if (r < 0)
		fprintf(stderr, "imgfs: cannot start the keeper of \"%s\": %s\n", point, strerror(-r));
	return 0;
}

static int mount_serve(const struct mount_request *req, char **argv, struct image_options *opts, struct takeover *t)
{
	struct mount_server s = { 0 };
	struct err err = { 0 };
	/* Tests shorten it to exercise stalled connections quickly. */
	const char *stall = getenv("IMGFS_STALL_SECONDS");
	if (stall && *stall)
		opts->registry.stall_seconds = strtol(stall, NULL, 10);
	/* The mount point as the kernel will show it, taken before anything is
	 * mounted there: a lookup through our own mount (DIR/, DIR/..) would
	 * wait for this daemon, which does not serve yet.  A successor is given
	 * it, and must not look: the mount is there and nobody serves it. */
	_cleanup_free_ char *point = t->resuming ? strdup(req->dir) : realpath(req->dir, NULL);
	int r = point ? 0 : -errno;
	if (!point)
		err_set(&err, errno, "cannot use the mount point \"%s\": %s", req->dir, strerror(errno));
	else if (!t->resuming)
		r = check_mount_point(point, req->nonempty, &err);
	if (r == 0 && (r = cache_limit_init(opts->cache_dir, req->cache_size)) < 0)
		err_set(&err, -r, "cannot use the cache \"%s\": %s", opts->cache_dir, strerror(-r));
	if (r == 0 && req->store) {
		struct store_options so = { *opts, req->prefetch, req->resolve_timeout_ms };
		if ((r = keep_state(req, t, "imgfs-store", &err)) == 0)
			r = store_new(&so, t->state_fd, t->resuming, &s.store, &err);
	} else if (r == 0) {
		r = mount_open_image(req, opts, &s, t, &err);
	}
	if (r == 0)
		r = mount_attach(req, point, argv[0], &s, t, &err);
	if (r == 0)
		r = mount_start(req, argv, &s, t, point, &err);
	if (r == 0) {
		/* The caller reads it to its end: a daemon that kept it would
		 * make the caller wait for the unmount. */
		error_fd_close();
		if (s.img && image_start_background(s.img, req->prefetch) < 0)
			fprintf(stderr, "imgfs: cannot start the background fetch; files are fetched when read\n");
		r = mount_loop(&s);
	}
	/* Handed over: the mount stays for the next server. */
	if (takeover_handing_over())
		s.mounted = false;
	mount_server_done(&s);
	/* libfuse frees the mount point's name only when it unmounts, which a
	 * handover must not: nothing else is left, and a leak check at exit
	 * would only find that. */
	if (takeover_handing_over() && r == 0)
		_exit(IMGFS_EXIT_OK);
	if (r < 0 && err.code)
		report(err.code, "%s", err.msg);
	else if (r < 0)
		report(-r, "serving \"%s\" on \"%s\": %s", req->ref, req->dir, strerror(-r));
	return r < 0 ? IMGFS_EXIT_FAILED : IMGFS_EXIT_OK;
}

static int cmd_mount(int argc, char **argv, struct takeover *t)
{
	struct mount_request req = {
		.prefetch = PREFETCH_ALL,
		.pull = PULL_ALWAYS,
		.store = strcmp(argv[0], "store") == 0,
		.resolve_timeout_ms = 10000,
	};
	struct image_options opts = { 0 };
	int ret = mount_parse(argc, argv, &req);
	if (ret < 0 && (ret = source_flags_apply(&req.source, &opts)) == 0) {
		opts.pull = req.pull;
		opts.find_profile = !req.store && !req.prefetch_list && req.prefetch != PREFETCH_NONE;
		ret = mount_serve(&req, argv, &opts, t);
	}
	source_flags_done(&req.source);
	return ret;
}

/* Reads a virtual xattr of the mount on dir; says what failed, naming what. */
static ssize_t read_mount_xattr(const char *dir, const char *name, char *buf, size_t size, const char *what)
{
	ssize_t n = getxattr(dir, name, buf, size - 1);
	if (n < 0) {
		report(errno, "cannot read %s of \"%s\": %s", what, dir,
		       errno == ENODATA || errno == ENOTSUP ? "not an imgfs mount" : strerror(errno));
		return -1;
	}
	buf[n] = '\0';
	return n;
}

static int cmd_stats(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "Usage: imgfs stats DIR\n");
		return 2;
	}
	char buf[1024];
	ssize_t n = read_mount_xattr(argv[1], IMGFS_STATS_XATTR, buf, sizeof(buf), "statistics");
	if (n < 0)
		return 1;
	fwrite(buf, 1, (size_t)n, stdout);
	return 0;
}

/* The files the workload on DIR read so far, in order: a prefetch list. */
static int cmd_record(int argc, char **argv)
{
	if (argc != 2 && argc != 3) {
		fprintf(stderr, "Usage: imgfs record DIR [FILE]\n");
		return 2;
	}
	char path[4096];
	if (read_mount_xattr(argv[1], IMGFS_RECORD_XATTR, path, sizeof(path), "the record") < 0)
		return 1;
	_cleanup_free_ char *data = NULL;
	size_t len;
	int r = read_file_capped(path, 256u << 20, &data, &len);
	if (r == 0 && argc == 3) {
		r = write_file_replace(argv[2], data, len);
		/* A file of the user's, as the shell would make it. */
		mode_t mask = umask(0);
		umask(mask);
		if (r == 0 && chmod(argv[2], 0666 & ~mask) < 0)
			r = -errno;
	} else if (r == 0)
		r = write_full(STDOUT_FILENO, data, len);
	if (r < 0)
		return report(-r, "cannot write the record of \"%s\": %s", argv[1], strerror(-r));
	return 0;
}

/* How long imgfs umount waits for a daemon to say its pid. */
#define DAEMON_ANSWER_WAIT_MS 2000

/* Pidfds of the daemon serving point and of its keeper, or -1: not ours,
 * dead, no keeper, or not answering within DAEMON_ANSWER_WAIT_MS
 * (*ret_hung).  Asked from a child, which a daemon that stopped answering
 * leaves waiting, and which a signal then ends (FUSE requests end on
 * SIGKILL). */
static int open_daemon_pidfds(const char *point, int *ret_keeper, bool *ret_hung)
{
	*ret_hung = false;
	*ret_keeper = -1;
	int pipefd[2];
	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return -1;
	pid_t child = fork();
	if (child == 0) {
		char pid[32], stats[2048], line[80];
		ssize_t n = getxattr(point, IMGFS_PID_XATTR, pid, sizeof(pid) - 1);
		ssize_t m = n > 0 ? getxattr(point, IMGFS_STATS_XATTR, stats, sizeof(stats) - 1) : -1;
		stats[m > 0 ? m : 0] = '\0';
		const char *keeper = strstr(stats, "keeper_pid ");
		if (n > 0) {
			pid[n] = '\0';
			int len = snprintf(line, sizeof(line), "%s %d", pid, keeper ? atoi(keeper + 11) : 0);
			(void)!write(pipefd[1], line, (size_t)len);
		}
		_exit(0);
	}
	close(pipefd[1]);
	char line[80] = "";
	struct pollfd p = { pipefd[0], POLLIN, 0 };
	ssize_t n = child > 0 && poll(&p, 1, DAEMON_ANSWER_WAIT_MS) > 0 ? read(pipefd[0], line, sizeof(line) - 1) : -1;
	close(pipefd[0]);
	if (child > 0 && n < 0 && p.revents == 0) {
		*ret_hung = true;
		kill(child, SIGKILL);
	}
	if (child > 0)
		(void)waitpid(child, NULL, 0);
	int server = 0, keeper = 0;
	if (n <= 0 || sscanf(line, "%d %d", &server, &keeper) < 1 || server <= 0)
		return -1;
	if (keeper > 0)
		*ret_keeper = pidfd_open(keeper, 0);
	return pidfd_open(server, 0);
}

/* DIR as mountinfo shows it, without looking DIR itself up (its daemon may
 * not answer): the real path of its parent, and its own name. */
static char *mount_point_of(const char *dir)
{
	_cleanup_free_ char *copy = strdup(dir);
	if (!copy)
		return NULL;
	size_t len = strlen(copy);
	while (len > 1 && copy[len - 1] == '/')
		copy[--len] = '\0';
	char *slash = strrchr(copy, '/');
	const char *name = slash ? slash + 1 : copy;
	if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0 || !*name)
		return realpath(dir, NULL);
	_cleanup_free_ char *parent = slash == copy ? strdup("/")
				      : slash       ? strndup(copy, (size_t)(slash - copy))
						    : strdup(".");
	_cleanup_free_ char *real_parent = parent ? realpath(parent, NULL) : NULL;
	if (!real_parent)
		return NULL;
	return strdup_printf("%s%s%s", real_parent, strcmp(real_parent, "/") == 0 ? "" : "/", name);
}

static int cmd_umount(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "Usage: imgfs umount DIR\n");
		return IMGFS_EXIT_USAGE;
	}
	_cleanup_free_ char *point = mount_point_of(argv[1]);
	if (!point)
		return report(errno, "cannot unmount \"%s\": %s", argv[1], strerror(errno));
	_cleanup_free_ char *type = mounted_type(point);
	if (!type)
		return report(EINVAL, "cannot unmount \"%s\": not a mount point", argv[1]);
	if (strcmp(type, "fuse.imgfs") != 0)
		return report(EINVAL, "cannot unmount \"%s\": it is a %s mount, not an imgfs one", argv[1], type);
	/* The daemon writes its last cache objects when the kernel lets go:
	 * waiting for it makes the cache complete once umount returns. */
	bool hung;
	int keeper;
	_cleanup_close_ int pidfd = open_daemon_pidfds(point, &keeper, &hung);
	_cleanup_close_ int keeper_pidfd = keeper;
	if (hung)
		fprintf(stderr, "imgfs: the daemon of \"%s\" does not answer: detaching the mount lazily\n", argv[1]);
	if (geteuid() == 0) {
		if (umount2(point, UMOUNT_NOFOLLOW | (hung ? MNT_DETACH : 0)) == 0) {
			(void)pidfd_wait_exit(pidfd, DAEMON_EXIT_WAIT_MS);
			(void)pidfd_wait_exit(keeper_pidfd, DAEMON_ANSWER_WAIT_MS);
			return IMGFS_EXIT_OK;
		}
		return report(errno, "cannot unmount \"%s\": %s", argv[1],
			      errno == EBUSY ? "it is in use (a process has a file or its cwd there)"
					     : strerror(errno));
	}
	pid_t pid = fork();
	if (pid < 0)
		return report(errno, "cannot unmount \"%s\": %s", argv[1], strerror(errno));
	if (pid == 0) {
		execlp("fusermount3", "fusermount3", hung ? "-uz" : "-u", "--", point, (char *)NULL);
		fprintf(stderr, "imgfs: cannot run fusermount3: %s\n", strerror(errno));
		_exit(127);
	}
	int status;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return report(0, "cannot unmount \"%s\": fusermount3 failed", argv[1]);
	(void)pidfd_wait_exit(pidfd, DAEMON_EXIT_WAIT_MS);
	(void)pidfd_wait_exit(keeper_pidfd, DAEMON_ANSWER_WAIT_MS);
	return IMGFS_EXIT_OK;
}

/* The commands imgfs images, pull and rmi: what the cache holds. */
static int image_command(int argc, char **argv, const char *usage_line, int (*fn)(int, char **, struct image_options *))
{
	static const struct option options[] = {
		SOURCE_OPTIONS,
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct image_options opts = { .pull = PULL_ALWAYS };
	struct source_flags flags = { 0 };
	int ret = -1, c, r;
	optind = 1;
	while (ret < 0 && (c = getopt_long(argc, argv, "+h", options, NULL)) != -1) {
		if ((r = source_flag(&flags, c, optarg)) < 0)
			ret = report(-r, "out of memory");
		else if (r == 0 && c == 'h')
			ret = (printf("Usage: %s\n", usage_line), IMGFS_EXIT_OK);
		else if (r == 0)
			ret = report_usage("usage: %s", usage_line);
	}
	if (ret < 0 && (ret = source_flags_apply(&flags, &opts)) == 0)
		ret = fn(argc - optind, argv + optind, &opts);
	source_flags_done(&flags);
	return ret;
}

static void print_ref(const char *ref, const char *platform, const char *digest)
{
	printf("%-60s %-16s %s\n", ref, platform, digest);
}

static int images_main(int argc, char **argv, struct image_options *opts)
{
	(void)argv;
	if (argc != 0)
		return report_usage("imgfs images takes no arguments");
	printf("%-60s %-16s %s\n", "REFERENCE", "PLATFORM", "DIGEST");
	int r = image_refs_list(opts->cache_dir, print_ref);
	return r < 0 ? report(-r, "cannot list the cache \"%s\": %s", opts->cache_dir, strerror(-r)) : IMGFS_EXIT_OK;
}

static int pull_main(int argc, char **argv, struct image_options *opts)
{
	if (argc != 1)
		return report_usage("imgfs pull: expected REF");
	struct err err = { 0 };
	struct image *img = NULL;
	if (image_open(argv[0], opts, &img, &err) < 0)
		return report(err.code ? err.code : ENOMEM, "%s", err.code ? err.msg : "out of memory");
	printf("%s\n", img->manifest_digest);
	image_free(img);
	return IMGFS_EXIT_OK;
}

static int rmi_main(int argc, char **argv, struct image_options *opts)
{
	if (argc < 1)
		return report_usage("imgfs rmi: expected REF...");
	int ret = IMGFS_EXIT_OK;
	for (int i = 0; i < argc; i++) {
		struct err err = { 0 };
		if (image_ref_forget(opts->cache_dir, argv[i], &opts->registry.platform, &err) < 0)
			ret = report(err.code, "%s", err.msg);
		else
			printf("Untagged: %s\n", argv[i]);
	}
	return ret;
}

int main(int argc, char **argv)
{
	/* Up to a dozen threads (FUSE workers, prefetch): one malloc arena per
	 * thread would keep a quarter of the daemon's memory in free lists.
	 * Two made the threads that parse a large TOC wait on each other's
	 * arena lock: the bench image's mount took 0.30-0.33 s, with four
	 * 0.18-0.23 s, and the daemon's memory after the workload was the same
	 * (26-27 MB). */
	mallopt(M_ARENA_MAX, 4);
	/* Decoded spans (1 to 4 MiB) come and go all the time.  glibc would
	 * raise its mmap threshold past them after the first free and carve
	 * them out of the heap, where freed spans leave holes that are never
	 * returned; a fixed threshold keeps them mapped, and given back. */
	mallopt(M_MMAP_THRESHOLD, 256 << 10);
	if (argc >= 2 && strcmp(argv[1], "keeper") == 0)
		return keeper_main(argc - 1, argv + 1);
	error_fd_init();
	struct takeover t;
	if (takeover_from_env(&t) < 0)
		return report(EINVAL, "malformed $%s", TAKEOVER_ENV);
	int given[4];
	error_fd_keep_only(given, takeover_fds(&t, given, ARRAY_SIZE(given)));
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (strcmp(argv[1], "mount") == 0 || strcmp(argv[1], "store") == 0)
		return cmd_mount(argc - 1, argv + 1, &t);
	if (strcmp(argv[1], "upgrade") == 0)
		return upgrade_main(argc - 1, argv + 1);
	if (strcmp(argv[1], "stats") == 0)
		return cmd_stats(argc - 1, argv + 1);
	if (strcmp(argv[1], "index") == 0)
		return cmd_index(argc - 1, argv + 1);
	if (strcmp(argv[1], "profile") == 0)
		return cmd_profile(argc - 1, argv + 1);
	if (strcmp(argv[1], "record") == 0)
		return cmd_record(argc - 1, argv + 1);
	if (strcmp(argv[1], "images") == 0)
		return image_command(argc - 1, argv + 1, "imgfs images [--cache DIR]", images_main);
	if (strcmp(argv[1], "pull") == 0)
		return image_command(argc - 1, argv + 1, "imgfs pull [--cache DIR] [--platform P] REF", pull_main);
	if (strcmp(argv[1], "rmi") == 0)
		return image_command(argc - 1, argv + 1, "imgfs rmi [--cache DIR] [--platform P] REF...", rmi_main);
	if (strcmp(argv[1], "umount") == 0 || strcmp(argv[1], "unmount") == 0)
		return cmd_umount(argc - 1, argv + 1);
	if (strcmp(argv[1], "login") == 0)
		return login_main(argc - 1, argv + 1);
	if (strcmp(argv[1], "logout") == 0)
		return logout_main(argc - 1, argv + 1);
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		usage(stdout);
		return 0;
	}
	if (strcmp(argv[1], "--version") == 0) {
		printf("imgfs %s\n", IMGFS_VERSION);
		return 0;
	}
	usage(stderr);
	return report_usage("unknown command \"%s\"", argv[1]);
}
