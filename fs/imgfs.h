/* What the imgfs program promises the programs that drive it (launch, and
 * scripts): the virtual xattrs of a mount's root, the exit codes, and a
 * machine-readable error line.  The one header of fs/ that another
 * component includes; it declares no function. */
#pragma once

/* Virtual xattrs of the mount's root (not listed, so that copies of the
 * tree never carry them along). */
/* "key value" lines: what the mount fetched and from where it served. */
#define IMGFS_STATS_XATTR "user.imgfs.stats"
/* The digest of the image manifest the mount serves. */
#define IMGFS_MANIFEST_XATTR "user.imgfs.manifest-digest"
/* The path of the verified image config in the cache. */
#define IMGFS_CONFIG_XATTR "user.imgfs.config-path"
/* Reading it writes the list of files read so far into the cache and
 * answers with its path (imgfs record). */
#define IMGFS_RECORD_XATTR "user.imgfs.record"
/* The daemon's pid, for a caller that waits for it to be gone. */
#define IMGFS_PID_XATTR "user.imgfs.pid"

/* Exit codes of every imgfs command. */
#define IMGFS_EXIT_OK 0
#define IMGFS_EXIT_FAILED 1 /* the command failed; the error says why */
#define IMGFS_EXIT_USAGE 2  /* bad arguments or options */

/* With IMGFS_ERROR_FD=N in its environment, imgfs writes its error to
 * descriptor N instead of stderr, as one line: the errno value of the
 * failure (0 when there is none), a space, and the message, which names
 * what failed ("manifest \"host/repo:tag\": HTTP 404: manifest unknown"),
 * without the "imgfs: " of stderr.  It writes at most one such line. */
#define IMGFS_ERROR_FD_ENV "IMGFS_ERROR_FD"
