/* The writable mount's parts, shared by its files (private to overlay*.c):
 * the node table (overlay_nodes.c), copy-up (overlay_copyup.c), listings
 * and the namespace operations that create, remove and rename names
 * (overlay_names.c), and the FUSE operations over them (overlay.c).
 *
 * A node is one inode the kernel knows: an object of UPPERDIR (held by an
 * O_PATH descriptor, so renames never lose it) or an object of the image
 * that has not been copied up yet.  Everything written into UPPERDIR goes
 * through *at() calls relative to those descriptors with O_NOFOLLOW, so a
 * symlink in the upper layer is never followed out of it.
 *
 * The lock contract: ov->lock guards the node table (nodes, their names,
 * parents, counts, descriptors and the maps), ov->gen, ov->next_ino,
 * ov->tmp_counter, and every change to UPPERDIR.  Every function declared
 * here is called with ov->lock held, except listing_free() (a listing is a
 * snapshot owned by its open directory).  Reads and writes of open files
 * and listings of open directories go to their own descriptors or snapshots
 * without it.  The bytes of a file being copied up are copied (and fetched,
 * for a lazy layer) with the lock released: the node is marked copying
 * meanwhile, copy_up() of it waits on ov->copied, and the copy is linked
 * in under the lock, at wherever the node is then. */
#pragma once

#include "overlay.h"

#include <dirent.h>
#include <inttypes.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

/* Copy-ups that may run with ov->lock released at once; more wait. */
#define MAX_UNLOCKED_COPIES 16

struct map_entry {
	uint64_t key, value;
	struct map_entry *next;
};

struct map {
	struct map_entry **buckets;
	size_t n_buckets, count;
};

struct node {
	struct node *parent; /* holds a count in parent->children; NULL for the root */
	char *name;          /* where the node was last seen: a directory's only name */
	/* The image object shown while nothing is in UPPERDIR, NULL for objects
	 * born in UPPERDIR. */
	const struct tree_inode *origin;
	/* Directories: the image directory merged into the listing, recomputed
	 * when merged_gen falls behind the overlay's (a directory moved). */
	const struct tree_inode *merged;
	unsigned merged_gen;
	bool opaque;
	bool copying; /* a copy-up of its bytes runs without ov->lock: wait on ov->copied */
	int fd;       /* O_PATH in UPPERDIR, -1 before copy-up */
	uint64_t upper_ino;
	uint64_t ino; /* st_ino: stable for the life of the mount, across copy-up */
	mode_t type;
	uint64_t lookups, children;
	uint32_t id; /* the node id the kernel knows it by (overlay_state.c) */
};

struct overlay {
	struct image *img;
	pthread_mutex_t lock;
	pthread_cond_t copied; /* a node's copying ended */
	/* The nodes whose bytes are being copied up: their names change only
	 * once they are linked in (wait_name_copied()). */
	struct node *copying[MAX_UNLOCKED_COPIES];
	size_t n_copying;
	struct node *root;
	int lock_fd; /* holds the flock on UPPERDIR */
	const char *opaque_xattr;
	struct map by_upper; /* upper st_ino -> node */
	struct map by_image; /* image ino -> node not copied up yet */
	/* upper st_ino -> reported st_ino, kept for the life of the mount so
	 * that a copied-up file keeps the number it had in the image. */
	struct map inos;
	uint64_t next_ino;
	unsigned gen;
	uint64_t tmp_counter;
	struct fuse_session *se; /* for notifications to the kernel; NULL before the mount */
	struct overlay_state *state;
};

struct handle {
	int fd;                         /* upper file, -1 when reading the image */
	const struct tree_inode *image; /* read from here when fd < 0 */
};

/* The path through which the kernel reaches the object behind an O_PATH
 * descriptor, for the calls that have no *at() form (xattrs, reopen). */
#define PROC_FD_PATH(buf, fd) (snprintf((buf), sizeof(buf), "/proc/self/fd/%d", (fd)), (buf))

struct listing_entry {
	char *name;
	uint64_t ino;
	mode_t type;
};

struct listing {
	struct listing_entry *v;
	size_t n, allocated;
	uint64_t self_ino, parent_ino; /* what "." and ".." report */
};

struct name_set {
	char **v;
	size_t n, allocated;
};

struct make_request {
	uid_t uid; /* owner of the new object; (uid_t)-1 keeps it */
	gid_t gid;
	mode_t mode;
	dev_t rdev;
	const char *link; /* symlink target */
	int flags;        /* open flags for create */
	int fd;           /* create: the open file; link: the object to link */
};

typedef int make_fn(int dirfd, const char *name, struct make_request *m);

static inline struct overlay *overlay_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/* ---- node ids and handles a successor finds again (overlay_state.c) ------- */

/* Kinds of open files: an upper file, the image's bytes, a directory. */
enum { HANDLE_UPPER = 1, HANDLE_IMAGE, HANDLE_DIR };

/* Maps the tables, in the takeover state file fd (-1: memory of its own);
 * resume: the tables a server before this one left there. */
int state_open(struct overlay *ov, int fd, bool resume);
/* Rebuilds the nodes the records describe, after the root. */
int state_restore(struct overlay *ov);
void state_free(struct overlay *ov);
/* The node of a kernel node id; NULL for one this mount does not know. */
struct node *node_of(struct overlay *ov, fuse_ino_t id);
int node_take_id(struct overlay *ov, struct node *n);
/* Stores what a successor needs of n; after every change to it. */
void node_save(struct overlay *ov, struct node *n);
void node_drop_id(struct overlay *ov, struct node *n);
/* ov->inos learnt upper_ino -> ino (0: forgot it). */
void state_note_ino(struct overlay *ov, uint64_t upper_ino, uint64_t ino);
/* Handles are called for without ov->lock.  handle_put gives one for h
 * (struct handle, or struct listing for HANDLE_DIR); 0 when the table is
 * full. */
uint64_t handle_put(struct overlay *ov, fuse_ino_t node, int flags, unsigned kind, void *h);
/* The open file of fh if it is of that sort; NULL with *ret_reopen when a
 * server before this one opened it, and it is to be opened again. */
void *handle_peek(struct overlay *ov, uint64_t fh, bool dir, bool *ret_reopen);
/* What fh was opened as. */
bool handle_record(struct overlay *ov, uint64_t fh, fuse_ino_t *ret_node, int *ret_flags, unsigned *ret_kind);
/* Sets what fh holds, unless another thread did first: what it holds. */
void *handle_adopt(struct overlay *ov, uint64_t fh, void *h);
/* Removes fh from the table; what it held is the caller's. */
void *handle_take(struct overlay *ov, uint64_t fh);
/* What fh holds, now the caller's, its record kept for a successor. */
void *handle_detach(struct overlay *ov, uint64_t fh);
/* Handles are below this; handle_is_dir tells which kind one is. */
uint64_t handle_limit(struct overlay *ov);
bool handle_is_dir(struct overlay *ov, uint64_t fh);
/* map_* and upper_is_opaque() are in overlay_state.c too: the tables stand
 * on them. */

static inline bool is_whiteout(const struct stat *st)
{
	return S_ISCHR(st->st_mode) && st->st_rdev == makedev(0, 0);
}

/* ---- the node table (overlay_nodes.c) -------------------------------------- */

int map_put(struct map *m, uint64_t key, uint64_t value);
bool map_get(const struct map *m, uint64_t key, uint64_t *ret_value);
/* Removes key only while it still maps to value. */
void map_del(struct map *m, uint64_t key, uint64_t value);
void map_clear(struct map *m);
bool is_overlay_xattr(const char *name);
bool upper_is_opaque(struct overlay *ov, int fd);
int set_opaque(struct overlay *ov, int fd);
const struct tree_inode *node_merged(struct overlay *ov, struct node *n);
/* The image object at parent/name, visible unless UPPERDIR hides it. */
const struct tree_inode *image_child(struct overlay *ov, struct node *parent, const char *name);
uint64_t ino_for_upper(struct overlay *ov, uint64_t upper_ino, uint64_t preferred);
int node_rename_to(struct overlay *ov, struct node *n, struct node *parent, const char *name);
/* Frees nodes nobody references any more: not the kernel, not a child. */
void node_unref(struct overlay *ov, struct node *n);
/* Makes n the node of an UPPERDIR object (fd, O_PATH, taken over). */
int node_attach_upper(struct overlay *ov, struct node *n, int fd, const struct stat *st);
/* The node at parent/name in the merged view, with no lookup counted: the
 * caller counts one or hands it to node_unref(). */
int resolve(struct overlay *ov, struct node *parent, const char *name, struct node **ret);
int node_stat(struct overlay *ov, struct node *n, struct stat *st);

/* ---- copy-up (overlay_copyup.c) -------------------------------------------- */

int link_fd_at(int fd, int dirfd, const char *name);
/* Gives n an upper copy (with its bytes unless with_data is false, for a
 * file about to be truncated), copying its parents first.  For a file's
 * bytes it releases ov->lock: the caller may keep n and its parents (the
 * kernel holds them), nothing it looked up or checked in between. */
int copy_up(struct overlay *ov, struct node *n, bool with_data);
/* The same, never releasing ov->lock: for an operation that checked the
 * namespace before (a rename). */
int copy_up_holding_lock(struct overlay *ov, struct node *n, bool with_data);
/* Copies every image object under the upper directory dirfd that merged
 * shows there, so the directory can move away from the image below it. */
int copy_up_tree(struct overlay *ov, int dirfd, const struct tree_inode *merged);

/* ---- listings, and creating and removing names (overlay_names.c) ----------- */

void listing_free(struct listing *l);
/* The merged listing of directory n: its upper entries without whiteouts,
 * then the image's entries no upper entry hides. */
int list_dir(struct overlay *ov, struct node *n, struct listing **ret);
/* Makes parent/name with make(), owned by the caller.  Where a whiteout
 * hides an image entry of that name, the object is made under a temporary
 * name and swapped in, so the image entry never shows in between; a new
 * directory there is opaque. */
int make_entry(struct overlay *ov, struct node *parent, const char *name, make_fn *make, struct make_request *m,
	       struct node **ret);
int make_dir(int dirfd, const char *name, struct make_request *m);
int make_node(int dirfd, const char *name, struct make_request *m);
int make_symlink(int dirfd, const char *name, struct make_request *m);
int make_link(int dirfd, const char *name, struct make_request *m);
int make_file(int dirfd, const char *name, struct make_request *m);
/* Removes parent/name from the merged view: the upper object goes, and a
 * whiteout hides the image's entry of that name if there is one. */
int remove_entry(struct overlay *ov, struct node *parent, const char *name, bool dir);
/* Whether the node at dir/name is being copied up; wait_name_copied()
 * waits until it is not. */
bool name_copying(const struct overlay *ov, const struct node *dir, const char *name);
void wait_name_copied(struct overlay *ov, struct node *dir, const char *name);
int do_rename(struct overlay *ov, struct node *parent, const char *name, struct node *newparent, const char *newname,
	      unsigned flags);
