/* Layer scanning, random access through checkpoints, the saved index, and
 * the whiteout merge, on tar streams written here with libarchive. */
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <zstd.h>

#include "cache.h"
#include "chunked.h"
#include "demand.h"
#include "elf_head.h"
#include "file_groups.h"
#include "index_io.h"
#include "registry.h"
#include "scan.h"
#include "tar_stream.h"
#include "toc.h"
#include "toc_stream.h"
#include "windows_blob.h"
#include "remote_blob.h"
#include "tap.h"
#include "tree.h"

#define BIG_SIZE (12u << 20)

static unsigned char *big_data(void)
{
	/* Compressible but not trivially: gzip output spans several checkpoints. */
	unsigned char *d = malloc(BIG_SIZE);
	uint32_t x = 12345;
	for (size_t i = 0; i < BIG_SIZE; i++) {
		x = x * 1103515245 + 12345;
		d[i] = (unsigned char)((x >> 16) % 16 + 'a');
	}
	return d;
}

static int write_tar(enum layer_compression c, const unsigned char *big)
{
	int fd = memfd_create("layer", MFD_CLOEXEC);
	struct archive *a = archive_write_new();
	archive_write_set_format_pax(a);
	if (c == COMPRESSION_GZIP)
		archive_write_add_filter_gzip(a);
	else if (c == COMPRESSION_ZSTD)
		archive_write_add_filter_zstd(a);
	archive_write_open_fd(a, fd);

	struct archive_entry *e = archive_entry_new();
	archive_entry_set_pathname(e, "./dir/");
	archive_entry_set_filetype(e, AE_IFDIR);
	archive_entry_set_perm(e, 0750);
	archive_write_header(a, e);

	archive_entry_clear(e);
	archive_entry_set_pathname(e, "dir/small");
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0644);
	archive_entry_set_size(e, 5);
	archive_entry_set_mtime(e, 1700000000, 42);
	archive_entry_xattr_add_entry(e, "user.k", "val", 3);
	archive_write_header(a, e);
	archive_write_data(a, "hello", 5);

	archive_entry_clear(e);
	archive_entry_set_pathname(e, "/big");
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0600);
	archive_entry_set_size(e, BIG_SIZE);
	archive_write_header(a, e);
	archive_write_data(a, big, BIG_SIZE);

	archive_entry_clear(e);
	archive_entry_set_pathname(e, "link");
	archive_entry_set_filetype(e, AE_IFLNK);
	archive_entry_set_symlink(e, "/abs/target");
	archive_write_header(a, e);

	archive_entry_free(e);
	archive_write_close(a);
	archive_write_free(a);
	return fd;
}

static const struct entry *find(const struct layer *l, const char *path)
{
	for (size_t i = 0; i < l->n_entries; i++)
		if (strcmp(l->entries[i].path, path) == 0)
			return &l->entries[i];
	return NULL;
}

/* The index as it is pushed, one zstd frame: read as the saved form is; a
 * cut frame, or one that claims far more than its size, reads as absent. */
static void saved_compressed(const char *name, enum layer_compression c, int fd, const char *path,
			     const struct layer *l)
{
	_cleanup_free_ char *raw = NULL;
	size_t raw_len = 0;
	void *packed = NULL;
	size_t packed_len = 0;
	ok(read_file_capped(path, 1 << 30, &raw, &raw_len) == 0 &&
	       layer_index_compress(raw, raw_len, &packed, &packed_len) == 0 && packed_len < raw_len,
	   "%s: the index compresses", name);
	char zpath[] = "/tmp/imgfs-zindex-XXXXXX";
	int z = mkstemp(zpath);
	bool written = packed && write_full(z, packed, packed_len) == 0;
	struct layer *again = NULL;
	ok(written && layer_open_saved("sha256:test", c, dup(fd), zpath, &again) == 0 && again &&
	       again->n_entries == l->n_entries && again->n_checkpoints == l->n_checkpoints,
	   "%s: the compressed index loads as the saved one", name);
	if (again)
		layer_free(again);
	int dfd = dup(fd);
	ok(written && ftruncate(z, (off_t)packed_len - 1) == 0 &&
	       layer_open_saved("sha256:test", c, dfd, zpath, &again) == -ENOENT,
	   "%s: a cut frame reads as absent", name);
	close(dfd);
	free(packed);
	/* 1 MiB of zeros: far beyond the ratio an index has. */
	char *zeros = calloc(1, 1 << 20);
	size_t cap = ZSTD_compressBound(1 << 20);
	void *bomb = malloc(cap);
	size_t n = zeros && bomb ? ZSTD_compress(bomb, cap, zeros, 1 << 20, 1) : 0;
	void *none = NULL;
	ok(zeros && layer_index_compress(zeros, 1 << 20, &none, &packed_len) == -ERANGE && !none,
	   "%s: what compresses past the ratio a reader accepts is not compressed", name);
	dfd = dup(fd);
	ok(n && !ZSTD_isError(n) && ftruncate(z, 0) == 0 && pwrite(z, bomb, n, 0) == (ssize_t)n &&
	       layer_open_saved("sha256:test", c, dfd, zpath, &again) == -ENOENT,
	   "%s: a frame claiming 1 MiB from %zu bytes is refused", name, n);
	close(dfd);
	free(zeros);
	free(bomb);
	close(z);
	unlink(zpath);
}

/* ---- windows apart: the index a push sends --------------------------------- */

static struct {
	int blob_fd;
	const unsigned char *windows;
	size_t windows_len;
	unsigned window_reads;
} apart;

static int apart_read_blob(struct layer *l, void *buf, size_t len, uint64_t off)
{
	(void)l;
	return read_full_at(apart.blob_fd, buf, len, (off_t)off);
}

static int apart_read_window(struct layer *l, const struct checkpoint *cp, unsigned char *out)
{
	(void)l;
	apart.window_reads++;
	if (cp->window_at > apart.windows_len || cp->window_stored > apart.windows_len - cp->window_at)
		return -EIO;
	return window_unpack(cp, apart.windows + cp->window_at, cp->window_stored, out) < 0 ? -EIO : 0;
}

static const struct layer_source_ops apart_ops = {
	.read_blob = apart_read_blob,
	.read_window = apart_read_window,
	.read_entry = tar_stream_read_entry,
	.free = tar_stream_release,
};

/* The index with its windows apart reads the same bytes, each read fetching
 * the one window it starts from, and a damaged window is an error. */
static void windows_apart(const char *name, enum layer_compression c, int fd, struct layer *l, const unsigned char *big)
{
	struct windows_blob w;
	unsigned char *windows = NULL;
	struct checkpoint *cps = NULL;
	size_t n_cps = 0;
	void *index = NULL;
	size_t index_len = 0;
	ok(windows_blob_build(l, "/tmp", &w, &cps, &n_cps) == 0 && n_cps >= 8 * l->n_checkpoints - 8 &&
	       layer_index_windows_apart(l, cps, n_cps, &index, &index_len) == 0,
	   "%s: %zu checkpoints with windows apart (%zu with windows inside), %zu bytes of windows", name, n_cps,
	   l->n_checkpoints, w.len);
	struct stat st;
	ok(w.fd >= 0 && fstat(w.fd, &st) == 0 && (size_t)st.st_size == w.len && st.st_nlink == 0,
	   "%s: the windows are in an unlinked file, not on the heap", name);
	char path[] = "/tmp/imgfs-index-XXXXXX";
	int tmp = mkstemp(path);
	ok(write_full(tmp, index, index_len) == 0, "%s: the index with windows apart is written", name);
	close(tmp);
	struct layer *again = NULL;
	int dfd = dup(fd);
	ok(layer_open_saved("sha256:test", c, dfd, path, &again) == -ENOENT,
	   "%s: a local blob does not take an index whose windows are elsewhere", name);
	close(dfd);
	ok(layer_open_saved("sha256:test", c, -1, path, &again) == 0 && again->n_checkpoints == n_cps &&
	       again->checkpoints[1].window == NULL && again->checkpoints[1].window_len == 32768,
	   "%s: it loads, its windows left to fetch", name);
	if (again) {
		/* A copy, to damage below: the blob's own map is read-only. */
		windows = malloc(w.len);
		if (windows)
			memcpy(windows, w.data, w.len);
		apart = (typeof(apart)){ .blob_fd = fd, .windows = windows, .windows_len = windows ? w.len : 0 };
		again->ops = &apart_ops;
		const struct entry *b2 = find(again, "big");
		unsigned char chunk[1000];
		ok(b2 && layer_read_entry(again, b2, chunk, 1000, 6000000) == 1000 &&
		       memcmp(chunk, big + 6000000, 1000) == 0 && apart.window_reads == 1,
		   "%s: a read 6 MB in reads the same bytes through one window", name);
		ok(layer_read_entry(again, b2, chunk, 1000, 3000000) == 1000 &&
		       memcmp(chunk, big + 3000000, 1000) == 0 && apart.window_reads == 2,
		   "%s: another one further back through its own window", name);
		/* The read above stopped at the end of its span, k - 1. */
		size_t k =
		    (size_t)(layer_checkpoint_before(again, b2->extents[0].stream_off + 3000000) - again->checkpoints) +
		    2;
		const struct checkpoint *ahead = &again->checkpoints[k], *between = &again->checkpoints[k - 1];
		ok(layer_read_entry(again, b2, chunk, 1000, ahead->out - b2->extents[0].stream_off + 10) == 1000 &&
		       memcmp(chunk, big + (ahead->out - b2->extents[0].stream_off + 10), 1000) == 0 &&
		       layer_read_entry(again, b2, chunk, 1000, between->out - b2->extents[0].stream_off) == 1000 &&
		       memcmp(chunk, big + (between->out - b2->extents[0].stream_off), 1000) == 0 &&
		       apart.window_reads == 2,
		   "%s: a read a span past where one stopped decodes on to it, and keeps the span between: no window",
		   name);
		/* Checkpoint 2 lies before every span decoded so far. */
		if (windows)
			windows[again->checkpoints[2].window_at + 20] ^= 1;
		ok(layer_read_entry(again, b2, chunk, 1000,
				    again->checkpoints[2].out - b2->extents[0].stream_off + 10) == -EIO,
		   "%s: a read that starts at a damaged window fails", name);
		layer_free(again);
	}
	unlink(path);
	free(index);
	free(cps);
	free(windows);
	windows_blob_done(&w);
}

static void test_format(enum layer_compression c, const char *name, const unsigned char *big)
{
	int fd = write_tar(c, big);
	struct layer *l = NULL;
	struct err err = { 0 };
	int r = layer_open_scan("sha256:test", c, dup(fd), &l, &err);
	ok(r == 0, "%s: scan (%s)", name, err.msg);
	if (r < 0) {
		close(fd);
		return;
	}
	ok(l->n_entries == 4, "%s: four entries", name);
	const struct entry *dir = find(l, "dir"), *small = find(l, "dir/small"), *bige = find(l, "big"),
			   *link = find(l, "link");
	ok(dir && dir->type == ENTRY_DIR && dir->mode == 0750, "%s: ./dir/ normalises to dir", name);
	ok(small && small->size == 5 && small->mtime_sec == 1700000000 && small->mtime_nsec == 42,
	   "%s: size and mtime with nanoseconds", name);
	ok(small && small->n_xattrs == 1 && strcmp(small->xattrs[0].name, "user.k") == 0 && small->xattrs[0].len == 3 &&
	       memcmp(small->xattrs[0].value, "val", 3) == 0,
	   "%s: xattr", name);
	ok(link && link->type == ENTRY_SYMLINK && strcmp(link->link, "/abs/target") == 0,
	   "%s: absolute symlink target kept", name);
	if (c == COMPRESSION_GZIP)
		ok(l->n_checkpoints >= 4, "%s: %zu checkpoints over 12 MiB", name, l->n_checkpoints);

	char buf[8];
	ok(small && layer_read_entry(l, small, buf, sizeof(buf), 0) == 5 && memcmp(buf, "hello", 5) == 0,
	   "%s: read a small file", name);
	bool all_good = bige != NULL;
	unsigned char *chunk = malloc(300000);
	/* Backwards and forwards, so that cursors are reused and reset. */
	static const uint64_t offsets[] = { 11u << 20, 0, 5000000, 5000001, 2u << 20, (12u << 20) - 7, 7777777, 1 };
	for (size_t i = 0; all_good && i < ARRAY_SIZE(offsets); i++) {
		size_t want = 300000;
		if (offsets[i] + want > BIG_SIZE)
			want = BIG_SIZE - offsets[i];
		ssize_t n = layer_read_entry(l, bige, chunk, 300000, offsets[i]);
		if (n != (ssize_t)want || memcmp(chunk, big + offsets[i], want) != 0) {
			all_good = false;
			printf("#   read at %llu gave %zd\n", (unsigned long long)offsets[i], n);
		}
	}
	ok(all_good, "%s: random reads of a 12 MiB file return the right bytes", name);

	char path[] = "/tmp/imgfs-index-XXXXXX";
	int tmp = mkstemp(path);
	close(tmp);
	ok(layer_save(l, path) == 0, "%s: save the index", name);
	struct layer *again = NULL;
	ok(layer_open_saved("sha256:test", c, dup(fd), path, &again) == 0, "%s: load the saved index", name);
	if (again) {
		const struct entry *b2 = find(again, "big");
		ok(again->n_entries == l->n_entries && again->n_checkpoints == l->n_checkpoints && b2 &&
		       layer_read_entry(again, b2, chunk, 1000, 6000000) == 1000 &&
		       memcmp(chunk, big + 6000000, 1000) == 0,
		   "%s: the loaded index reads the same bytes", name);
		layer_free(again);
	}
	saved_compressed(name, c, fd, path, l);
	if (c == COMPRESSION_GZIP)
		windows_apart(name, c, fd, l, big);
	int dfd = dup(fd);
	ok(layer_open_saved("sha256:other", c, dfd, path, &again) == -ENOENT, "%s: an index of another layer is stale",
	   name);
	close(dfd);
	/* Damage one byte: the checksum must catch it. */
	int w = open(path, O_RDWR);
	char byte;
	pread(w, &byte, 1, 100);
	byte ^= 1;
	pwrite(w, &byte, 1, 100);
	close(w);
	dfd = dup(fd);
	ok(layer_open_saved("sha256:test", c, dfd, path, &again) == -ENOENT, "%s: a damaged index reads as absent",
	   name);
	close(dfd);
	unlink(path);
	free(chunk);
	layer_free(l);
	close(fd);
}

/* ---- merge ----------------------------------------------------------------- */

struct spec {
	const char *path;
	uint8_t type;
	const char *link;
	uint32_t mode;
};

static struct layer *fake_layer(const struct spec *specs, size_t n)
{
	struct layer *l = calloc(1, sizeof(*l));
	l->blob_fd = -1;
	pthread_mutex_init(&l->lock, NULL);
	strcpy(l->digest, "sha256:fake");
	l->entries = calloc(n, sizeof(struct entry));
	l->n_entries = n;
	for (size_t i = 0; i < n; i++) {
		l->entries[i].path = strdup(specs[i].path);
		l->entries[i].type = specs[i].type;
		l->entries[i].link = specs[i].link ? strdup(specs[i].link) : NULL;
		l->entries[i].mode = specs[i].mode ? specs[i].mode : 0644;
	}
	return l;
}

static struct tree_inode *at(struct tree *t, const char *path)
{
	struct tree_inode *i = tree_get(t, 1);
	_cleanup_free_ char *copy = strdup(path);
	char *save = NULL;
	for (char *c = strtok_r(copy, "/", &save); c && i; c = strtok_r(NULL, "/", &save))
		i = tree_lookup(i, c);
	return i;
}

static void test_merge(void)
{
	static const struct spec lower[] = {
		{ "a", ENTRY_DIR, NULL, 0755 }, { "a/x", ENTRY_REG },  { "a/y", ENTRY_REG },
		{ "o", ENTRY_DIR, NULL, 0755 }, { "o/1", ENTRY_REG },  { "o/sub", ENTRY_DIR },
		{ "o/sub/2", ENTRY_REG },       { "f2d", ENTRY_REG },  { "d2f", ENTRY_DIR },
		{ "d2f/c", ENTRY_REG },         { "h1", ENTRY_REG },   { "h2", ENTRY_HARDLINK, "h1" },
		{ "h3", ENTRY_HARDLINK, "h1" }, { "keep", ENTRY_REG },
	};
	static const struct spec upper[] = {
		/* The opaque marker comes after a new child: it still only hides lower ones. */
		{ "o/new", ENTRY_REG },
		{ "o/.wh..wh..opq", ENTRY_REG },
		{ "a/.wh.x", ENTRY_REG },
		{ "a/.wh.nothing", ENTRY_REG },
		{ "f2d", ENTRY_DIR, NULL, 0700 },
		{ "f2d/in", ENTRY_REG },
		{ "d2f", ENTRY_REG },
		{ ".wh.h2", ENTRY_REG },
		{ "a", ENTRY_DIR, NULL, 0711 },
		{ "implicit/deep/file", ENTRY_REG },
		{ ".wh..wh.plnk", ENTRY_REG },
	};
	struct layer *layers[2] = { fake_layer(lower, ARRAY_SIZE(lower)), fake_layer(upper, ARRAY_SIZE(upper)) };
	struct tree *t = NULL;
	struct err err = { 0 };
	ok(tree_build(layers, 2, &t, &err) == 0, "merge two layers (%s)", err.msg);
	if (!t)
		return;
	ok(!at(t, "a/x") && at(t, "a/y"), "a whiteout hides the lower name only");
	ok(at(t, "a") && (at(t, "a")->mode & 07777) == 0711 && at(t, "a")->n_children == 1,
	   "a directory seen again takes the new metadata and keeps its children");
	ok(at(t, "o") && at(t, "o")->n_children == 1 && at(t, "o/new"),
	   "an opaque directory shows only the upper children");
	ok(at(t, "f2d") && S_ISDIR(at(t, "f2d")->mode) && at(t, "f2d/in"), "a directory replaces a file");
	ok(at(t, "d2f") && S_ISREG(at(t, "d2f")->mode) && !at(t, "d2f/c"),
	   "a file replaces a directory and its subtree");
	ok(at(t, "h1") && at(t, "h1") == at(t, "h3") && at(t, "h1")->nlink == 2 && !at(t, "h2"),
	   "hardlinks share an inode, and nlink follows whiteouts");
	ok(at(t, "implicit/deep/file") && S_ISDIR(at(t, "implicit")->mode), "missing parents are created");
	ok(!at(t, ".wh..wh.plnk") && !at(t, "a/.wh.nothing"), "whiteout entries are never shown");
	ok(tree_get(t, 1)->nlink == 2 + 4, "root nlink counts its subdirectories (%u)", tree_get(t, 1)->nlink);
	bool unique = true;
	for (size_t i = 2; i < t->n_inodes; i++)
		for (size_t j = i + 1; j < t->n_inodes && j < i + 50; j++)
			if (t->inodes[i] == t->inodes[j])
				unique = false;
	ok(unique && t->inodes[1]->ino == 1, "inode numbers are unique and the root is 1");
	tree_free(t);

	static const struct spec dangling[] = { { "h", ENTRY_HARDLINK, "nope" } };
	struct layer *bad = fake_layer(dangling, 1);
	memset(&err, 0, sizeof(err));
	ok(tree_build(&bad, 1, &t, &err) == -EINVAL && strstr(err.msg, "sha256:fake") && strstr(err.msg, "\"h\""),
	   "a dangling hardlink names the layer and the entry (%s)", err.msg);
	layer_free(bad);
	layer_free(layers[0]);
	layer_free(layers[1]);
}

/* Symlinks inside an image resolve inside it: an absolute target from the
 * image's root, ".." never above it, loops and dead ends give NULL. */
static void test_resolve(void)
{
	static const struct spec specs[] = {
		{ "usr", ENTRY_DIR, NULL, 0755 },
		{ "usr/lib", ENTRY_DIR, NULL, 0755 },
		{ "usr/lib/libc.so.6", ENTRY_REG },
		{ "lib", ENTRY_SYMLINK, "usr/lib" },
		{ "etc", ENTRY_DIR, NULL, 0755 },
		{ "etc/alt", ENTRY_SYMLINK, "/lib/libc.so.6" },
		{ "usr/lib/up", ENTRY_SYMLINK, "../../../../etc/alt" },
		{ "loop1", ENTRY_SYMLINK, "loop2" },
		{ "loop2", ENTRY_SYMLINK, "/loop1" },
		{ "dead", ENTRY_SYMLINK, "/nowhere/x" },
	};
	struct layer *l = fake_layer(specs, ARRAY_SIZE(specs));
	struct tree *t = NULL;
	struct err err = { 0 };
	ok(tree_build(&l, 1, &t, &err) == 0, "a tree of symlinks (%s)", err.msg);
	if (!t) {
		layer_free(l);
		return;
	}
	struct tree_inode *libc = at(t, "usr/lib/libc.so.6");
	ok(libc && tree_resolve_path(t, "/lib/libc.so.6") == libc && tree_resolve_path(t, "etc/alt") == libc,
	   "a symlinked directory and an absolute target resolve in the image");
	ok(tree_resolve_path(t, "usr/lib/up") == libc, "\"..\" stops at the image's root");
	ok(tree_resolve_path(t, "/lib/") == at(t, "usr/lib") && tree_resolve_path(t, "") == tree_get(t, 1),
	   "a directory, and the root");
	ok(!tree_resolve_path(t, "loop1") && !tree_resolve_path(t, "dead") && !tree_resolve_path(t, "etc/alt/x") &&
	       !tree_resolve_path(t, "usr/none"),
	   "loops, dead links, a file as a directory and missing names resolve to nothing");
	tree_free(t);
	layer_free(l);
}

static void test_file_groups(void)
{
	struct entry entries[] = { { .path = (char *)"b/x" },  { .path = (char *)"a/y" },  { .path = (char *)"dir" },
				   { .path = (char *)"a/x" },  { .path = (char *)"ab/z" }, { .path = (char *)"b/w" },
				   { .path = (char *)"a/b/c" } };
	/* Grouped by directory; each group in the order given (here: reversed entry order). */
	struct file_group_key keys[ARRAY_SIZE(entries)];
	size_t n = 0;
	for (size_t i = 0; i < ARRAY_SIZE(entries); i++)
		if (i != 2)
			keys[n++] = (struct file_group_key){ &entries[i], path_dir_len(entries[i].path), 100 - i };
	struct file_groups g;
	ok(file_groups_build(&g, entries, ARRAY_SIZE(entries), keys, n) == 0, "group six files of seven entries");
	char order[128] = "";
	for (uint32_t i = 0; i < g.n_files; i++)
		snprintf(order + strlen(order), sizeof(order) - strlen(order), "%s%s[%u,%u)", i ? " " : "",
			 g.files[i]->path, g.first[i], g.end[i]);
	is_str(order, "a/x[0,2) a/y[0,2) a/b/c[2,3) ab/z[3,4) b/w[4,6) b/x[4,6)", "groups and their bounds");
	ok(file_groups_place(&g, &entries[2]) == FILE_GROUPS_NOWHERE && file_groups_place(&g, &entries[0]) == 5 &&
	       g.prefix_len[5] == 1,
	   "an entry left out has no place; b/x is the last, its group named by 1 byte");
	file_groups_done(&g);
}

static void test_library_names(void)
{
	static const char *const libraries[] = { "libc.so.6", "libz.so", "x.sock.so", "libq.so.1.2", ".so" };
	static const char *const others[] = { "x.sock", "data.sort", "libc.s", "so", "libc.sox", "" };
	for (size_t i = 0; i < ARRAY_SIZE(libraries); i++)
		ok(elf_name_is_library(libraries[i]), "\"%s\" names a library", libraries[i]);
	for (size_t i = 0; i < ARRAY_SIZE(others); i++)
		ok(!elf_name_is_library(others[i]), "\"%s\" names no library", others[i]);
	ok(elf_may_be_object(0755, "usr/bin/python3.11") && elf_may_be_object(0644, "usr/lib/libc.so.6") &&
	       !elf_may_be_object(0644, "usr/share/x.sock") && !elf_may_be_object(0644, "lib.so.d/data"),
	   "a program or a library's name may be an object; a data file's is not");
}

static void test_paths(void)
{
	static const struct {
		const char *in, *out;
	} cases[] = {
		{ "./a/b/", "a/b" },
		{ "/abs//x/./y", "abs/x/y" },
		{ "./", "" },
		{ ".", "" },
		{ "a/../b", NULL },
		{ "..", NULL },
		{ "../x", NULL },
		{ "x/..", NULL },
		{ "..a/b..", "..a/b.." },
	};
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		char *out = NULL;
		int r = path_normalise(cases[i].in, &out);
		if (cases[i].out)
			is_str(r == 0 ? out : NULL, cases[i].out, "normalise \"%s\"", cases[i].in);
		else
			ok(r == -EINVAL, "\"%s\" leaves the root", cases[i].in);
		free(out);
	}
}

static void test_file_parts(void)
{
	struct file_part *parts = NULL;
	uint32_t n = 0;
	ok(file_parts_parse("0+65536,131072+10", &parts, &n) == 0 && n == 2 && parts[0].off == 0 &&
	       parts[0].len == 65536 && parts[1].off == 131072 && parts[1].len == 10,
	   "parts as imgfs record writes them");
	struct entry e = { .prefetch_parts = parts, .n_prefetch_parts = n };
	ok(entry_part_listed(&e, 60000, 10000) && entry_part_listed(&e, 131081, 100) &&
	       !entry_part_listed(&e, 65536, 65536) && !entry_part_listed(&e, 131082, 1),
	   "a range is wanted when it meets a part, and only then");
	free(parts);
	e = (struct entry){ 0 };
	ok(entry_part_listed(&e, 1ull << 40, 1), "no parts: the whole file is wanted");
	const char *bad[] = { "",
			      "5",
			      "5+",
			      "+5",
			      "5+0",
			      "5+5,7+1",
			      "9+1,2+1",
			      " 1+1",
			      "1+1,",
			      "1+-1",
			      "18446744073709551615+1",
			      "1+1 junk" };
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		parts = NULL;
		ok(file_parts_parse(bad[i], &parts, &n) == -EINVAL && !parts, "refused: \"%s\"", bad[i]);
	}
}

static void test_cache_sizes(void)
{
	uint64_t v = 0;
	ok(cache_parse_size("1048576", &v) == 0 && v == 1048576, "a size in bytes");
	ok(cache_parse_size("10G", &v) == 0 && v == 10ull << 30, "10G");
	ok(cache_parse_size("512MiB", &v) == 0 && v == 512ull << 20, "512MiB");
	ok(cache_parse_size("2k", &v) == 0 && v == 2048, "2k");
	const char *bad[] = { "", "lots", "-1", "1X", "99999999999T", "10 G" };
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		ok(cache_parse_size(bad[i], &v) == -EINVAL, "refused: \"%s\"", bad[i]);
}

static void test_span_table(void)
{
	char path[] = "/tmp/imgfs-spans-XXXXXX";
	int fd = mkstemp(path);
	unlink(path);
	unsigned char data[10000];
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (unsigned char)(i * 7);
	ok(fd >= 0 && write_full(fd, data, sizeof(data)) == 0, "a blob of 10000 bytes");
	const char *digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
	unsigned char *table;
	size_t len;
	struct span_table st;
	ok(span_table_build(fd, sizeof(data), digest, 4096, &table, &len) == 0, "span table of 4 KiB spans");
	ok(span_table_parse(table, len, digest, sizeof(data), &st) == 0 && st.n_spans == 3 && st.span_size == 4096,
	   "it parses back: 3 spans");
	ok(span_table_parse(table, len, digest, sizeof(data) + 1, &st) < 0, "refused for another blob size");
	const char *other = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
	ok(span_table_parse(table, len, other, sizeof(data), &st) < 0, "refused for another layer");
	ok(span_table_parse(table, len - 1, digest, sizeof(data), &st) < 0, "refused when truncated");
	for (size_t cut = 0; cut < len; cut += 7)
		(void)span_table_parse(table, cut, digest, sizeof(data), &st);
	ok(true, "every truncation parses without a crash");
	free(table);
	close(fd);
}

static double seconds_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The background fetch of whole layers waits while on-demand fetches come. */
static void test_demand_quiet(void)
{
	atomic_bool stop = false;
	double t = seconds_now();
	demand_wait_quiet(&stop);
	ok(seconds_now() - t < 0.1, "with no on-demand fetch, the background fetch does not wait");
	demand_note();
	t = seconds_now();
	demand_wait_quiet(&stop);
	double waited = seconds_now() - t;
	ok(waited >= 0.19, "after an on-demand fetch it waits for 200 ms of quiet: %.3f s", waited);
	demand_note();
	atomic_store(&stop, true);
	t = seconds_now();
	demand_wait_quiet(&stop);
	ok(seconds_now() - t < 0.1, "a stopped background fetch does not wait");
}

#define TOC_FILES 12000
#define TOC_BIG_CHUNKS 3000
#define TOC_DIGEST "\"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\""

/* A TOC over 1 MiB is parsed in two halves at once: the result must be the
 * one a single pass gives, whatever sits at the middle. */
static char *large_toc(bool bad_entry_late, size_t *ret_len)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	uint64_t off = 0;
	fprintf(f, "{\"version\":1,\"entries\":[{\"name\":\"d/\",\"type\":\"dir\",\"mode\":493}");
	for (int i = 0; i < TOC_FILES; i++) {
		if (i == TOC_FILES / 2 - TOC_BIG_CHUNKS / 2) {
			/* A file whose "chunk" entries cover the middle of the text. */
			fprintf(f,
				",{\"name\":\"d/big\",\"type\":\"reg\",\"size\":%d,\"offset\":%" PRIu64
				",\"chunkSize\":100,\"chunkDigest\":" TOC_DIGEST "}",
				TOC_BIG_CHUNKS * 100, off += 100);
			for (int k = 1; k < TOC_BIG_CHUNKS; k++)
				fprintf(f,
					",{\"name\":\"d/big\",\"type\":\"chunk\",\"offset\":%" PRIu64
					",\"chunkOffset\":%d,\"chunkSize\":100,\"chunkDigest\":" TOC_DIGEST "}",
					off += 100, k * 100);
		}
		if (i == TOC_FILES * 3 / 4)
			fprintf(f,
				",{\"name\":\".prefetch.landmark\",\"type\":\"reg\",\"size\":1,\"offset\":%" PRIu64
				",\"chunkDigest\":" TOC_DIGEST "}",
				off += 100);
		/* Before the middle, for the scan that finds it to step over. */
		if (i == TOC_FILES / 8)
			fprintf(f, ",{\"name\":\"d/we\\\"ird},{[\",\"type\":\"fifo\"}");
		if (i == TOC_FILES * 7 / 8 && bad_entry_late)
			fprintf(f, ",{\"name\":\"d/sock\",\"type\":\"socket\"}");
		fprintf(f,
			",{\"name\":\"d/f%05d\",\"type\":\"reg\",\"size\":10,\"offset\":%" PRIu64
			",\"chunkDigest\":" TOC_DIGEST "}",
			i, off += 100);
	}
	fprintf(f, "]}");
	fclose(f);
	*ret_len = len;
	return text;
}

static bool same_entries(const struct layer *a, const struct layer *b)
{
	if (a->n_entries != b->n_entries)
		return false;
	for (size_t i = 0; i < a->n_entries; i++) {
		const struct entry *x = &a->entries[i], *y = &b->entries[i];
		if (strcmp(x->path, y->path) != 0 || x->type != y->type || x->mode != y->mode || x->size != y->size ||
		    x->landmark != y->landmark || x->prefetch != y->landmark || x->n_chunks != y->n_chunks)
			return false;
		for (uint32_t k = 0; k < x->n_chunks; k++) {
			const struct chunk *c = &x->chunks[k], *d = &y->chunks[k];
			if (c->file_off != d->file_off || c->size != d->size || c->comp_off != d->comp_off ||
			    c->comp_end != d->comp_end || c->inner_off != d->inner_off ||
			    strcmp(c->digest, d->digest) != 0)
				return false;
		}
	}
	return true;
}

/* The parsed TOC a mount saves for the next one (fs/index_io.c). */
static void test_saved_toc(struct layer *parsed)
{
	char dir[] = "/tmp/imgfs-test-toc-XXXXXX";
	if (!mkdtemp(dir)) {
		skip("no temporary directory");
		return;
	}
	_cleanup_free_ char *path = strdup_printf("%s/saved.toc", dir);
	const char *toc = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
	parsed->blob_size = 1ull << 40;
	/* A prefetch list for one mount changes the prefetch set, not the image's landmarks. */
	parsed->entries[1].prefetch = !parsed->entries[1].prefetch;
	ok(chunked_layer_save(parsed, toc, path) == 0, "the parsed TOC is saved");
	parsed->entries[1].prefetch = !parsed->entries[1].prefetch;
	struct layer *l = NULL;
	ok(chunked_layer_open_saved(parsed->digest, toc, COMPRESSION_GZIP, 1ull << 40, path, &l) == 0 && l &&
	       same_entries(parsed, l),
	   "read back, it has every entry and chunk, and the image's own landmarks");
	layer_free(l);
	ok(chunked_layer_open_saved(parsed->digest,
				    "sha256:2222222222222222222222222222222222222222222222222222222222222222",
				    COMPRESSION_GZIP, 1ull << 40, path, &l) == -ENOENT &&
	       chunked_layer_open_saved(parsed->digest, toc, COMPRESSION_ZSTD, 1ull << 40, path, &l) == -ENOENT &&
	       chunked_layer_open_saved(parsed->digest, toc, COMPRESSION_GZIP, 1ull << 39, path, &l) == -ENOENT,
	   "another TOC digest, compression or blob size finds none");
	int fd = open(path, O_RDWR);
	struct stat st;
	unsigned char byte = 0;
	ok(fd >= 0 && fstat(fd, &st) == 0 && pread(fd, &byte, 1, st.st_size / 2) == 1 &&
	       (byte ^= 1, pwrite(fd, &byte, 1, st.st_size / 2)) == 1 &&
	       chunked_layer_open_saved(parsed->digest, toc, COMPRESSION_GZIP, 1ull << 40, path, &l) == -ENOENT,
	   "a damaged saved TOC reads as absent");
	if (fd >= 0)
		close(fd);
	ok(truncate(path, st.st_size / 2) == 0 &&
	       chunked_layer_open_saved(parsed->digest, toc, COMPRESSION_GZIP, 1ull << 40, path, &l) == -ENOENT,
	   "a truncated one too");
	unlink(path);
	rmdir(dir);
}

static void test_toc_halves(void)
{
	size_t len;
	_cleanup_free_ char *toc = large_toc(false, &len);
	struct layer *l = layer_alloc("sha256:00", COMPRESSION_GZIP, -1);
	struct err err = { 0 };
	ok(len > (1u << 20) && estargz_parse_toc(l, toc, len, 1ull << 40, &err) == 0, "a %zu-byte TOC parses: %s", len,
	   err.msg);
	ok(l->n_entries == TOC_FILES + 3, "every entry, in order, the landmark hidden: %zu", l->n_entries);
	bool in_order = true, landmark_right = true;
	size_t big = 0, weird = 0;
	for (size_t i = 0, file = 0; i < l->n_entries; i++) {
		const struct entry *e = &l->entries[i];
		bool before_landmark = i < 3 + TOC_FILES * 3 / 4; /* the directory, d/big and the odd name */
		landmark_right = landmark_right && e->prefetch == before_landmark;
		if (strcmp(e->path, "d/big") == 0) {
			big = i;
		} else if (strcmp(e->path, "d/we\"ird},{[") == 0) {
			weird = i;
		} else if (i > 0) {
			char want[16];
			snprintf(want, sizeof(want), "d/f%05zu", file++);
			in_order = in_order && strcmp(e->path, want) == 0;
		}
	}
	ok(in_order, "the files come in TOC order across the halves");
	ok(landmark_right, "the prefetch landmark in the second half marks the entries before it");
	ok(big && l->entries[big].n_chunks == TOC_BIG_CHUNKS && l->entries[big].size == TOC_BIG_CHUNKS * 100,
	   "a file whose chunks straddle the middle keeps all %d of them", TOC_BIG_CHUNKS);
	ok(weird && l->entries[weird].type == ENTRY_FIFO, "a name with quotes and brackets does not confuse the split");
	test_saved_toc(l);
	layer_free(l);

	_cleanup_free_ char *bad = large_toc(true, &len);
	l = layer_alloc("sha256:00", COMPRESSION_GZIP, -1);
	err = (struct err){ 0 };
	ok(estargz_parse_toc(l, bad, len, 1ull << 40, &err) == -EINVAL &&
	       strstr(err.msg, "\"d/sock\" has unknown type"),
	   "an error in the second half is reported: %s", err.msg);
	layer_free(l);
}

/* Feeds text[0, upto) to a fresh layer in pieces of 1 byte to 64 KiB, as
 * a download hands them over; the feed's finish result. */
static int feed_in_pieces(const char *text, size_t upto, struct layer **ret, struct err *err)
{
	struct layer *l = layer_alloc("sha256:00", COMPRESSION_GZIP, -1);
	struct toc_feed *f = l ? toc_feed_new(l, 1ull << 40) : NULL;
	int r = -ENOMEM;
	if (f) {
		for (size_t have = 0, piece = 1; have < upto; piece = piece * 3 % 65521 + 1) {
			have = have + piece < upto ? have + piece : upto;
			toc_feed_text(f, text, have);
		}
		r = toc_feed_finish(f, text, upto, err);
	}
	toc_feed_free(f);
	*ret = l;
	return r;
}

/* A TOC parsed as it arrives (toc_feed) is the TOC parsed whole; a shape
 * it does not take, or text it cannot, is left to the whole parse. */
static void test_toc_feed(void)
{
	size_t len;
	_cleanup_free_ char *toc = large_toc(false, &len);
	struct layer *whole = layer_alloc("sha256:00", COMPRESSION_GZIP, -1), *fed = NULL;
	struct err err = { 0 };
	int r = feed_in_pieces(toc, len, &fed, &err);
	ok(estargz_parse_toc(whole, toc, len, 1ull << 40, &err) == 0 && r == 0 && same_entries(whole, fed),
	   "a TOC fed in pieces of 1 byte to 64 KiB is the TOC parsed whole, landmark and chunks alike: %d %s", r,
	   err.msg);
	layer_free(fed);
	layer_free(whole);

	ok(feed_in_pieces(toc, len - 1, &fed, &err) == -EAGAIN, "text that ends early is left to the whole parse");
	layer_free(fed);

	_cleanup_free_ char *bad = large_toc(true, &len);
	ok(feed_in_pieces(bad, len, &fed, &err) == -EAGAIN, "so is an entry of a type it does not know");
	layer_free(fed);

	static const char *const other_shapes[] = {
		"{\"entries\":[],\"version\":1}",
		"{\"version\":1,\"entries\":[],\"extra\":{}}",
		"{\"version\":\"1\",\"entries\":[]}",
		"[{\"version\":1,\"entries\":[]}]",
	};
	bool all_left = true;
	for (size_t i = 0; i < ARRAY_SIZE(other_shapes); i++) {
		all_left = all_left && feed_in_pieces(other_shapes[i], strlen(other_shapes[i]), &fed, &err) == -EAGAIN;
		layer_free(fed);
	}
	ok(all_left, "keys in another order, keys after the entries, a quoted version, or no object are left to it");
	static const char empty[] = " {\"version\" : 1 ,\n\"entries\": [ ] } \n";
	ok(feed_in_pieces(empty, strlen(empty), &fed, &err) == 0 && fed->n_entries == 0,
	   "white space anywhere the writers might put it: %s", err.msg);
	layer_free(fed);
}

/* An eStargz TOC member: a gzipped tar of one entry, stargz.index.json,
 * written by libarchive in the given format (ustar, as the writers do). */
static unsigned char *toc_member(const char *json, size_t len, int format, size_t *ret_len)
{
	size_t cap = len + (1u << 20), used = 0;
	unsigned char *out = malloc(cap);
	struct archive *a = archive_write_new();
	struct archive_entry *e = archive_entry_new();
	archive_write_set_format(a, format);
	archive_write_add_filter_gzip(a);
	archive_write_set_bytes_in_last_block(a, 1);
	archive_entry_set_pathname(e, TOC_NAME);
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0644);
	archive_entry_set_size(e, (la_int64_t)len);
	bool ok = out && archive_write_open_memory(a, out, cap, &used) == ARCHIVE_OK &&
		  archive_write_header(a, e) == ARCHIVE_OK && archive_write_data(a, json, len) == (la_ssize_t)len &&
		  archive_write_close(a) == ARCHIVE_OK;
	archive_entry_free(e);
	archive_write_free(a);
	if (!ok) {
		free(out);
		return NULL;
	}
	*ret_len = used;
	return out;
}

/* Streams gz into a fresh layer, its bytes arriving in pieces (a request
 * tried again starts over at restart_at when it is not 0); *verified: its
 * JSON matched want. */
static int stream_toc(const unsigned char *gz, size_t len, size_t restart_at, const char *want, struct layer **ret,
		      bool *verified, struct err *err)
{
	*verified = false;
	struct layer *l = layer_alloc("sha256:00", COMPRESSION_GZIP, -1);
	struct toc_stream *s = l ? toc_stream_new(gz, l, 1ull << 40) : NULL;
	int r = -ENOMEM;
	if (s) {
		for (size_t got = 0, piece = 1; got < len; piece = piece * 5 % 16381 + 1) {
			got = got + piece < len ? got + piece : len;
			if (restart_at && got >= restart_at) {
				toc_stream_arrived(s, piece);
				restart_at = 0;
			}
			toc_stream_arrived(s, got);
		}
		r = toc_stream_finish(s, want, verified, err);
	}
	toc_stream_free(s);
	*ret = l;
	return r;
}

/* The TOC member parsed as it arrives is the member parsed whole; another
 * digest is refused; a request tried again is left to the whole read. */
static void test_toc_stream(void)
{
	size_t len, gz_len = 0;
	_cleanup_free_ char *toc = large_toc(false, &len);
	_cleanup_free_ unsigned char *gz = toc_member(toc, len, ARCHIVE_FORMAT_TAR_USTAR, &gz_len);
	char digest[DIGEST_SHA256_LEN + 1];
	digest_sha256(toc, len, digest);
	struct layer *whole = layer_alloc("sha256:00", COMPRESSION_GZIP, -1), *streamed = NULL;
	struct err err = { 0 };
	bool verified;
	int r = gz ? stream_toc(gz, gz_len, 0, digest, &streamed, &verified, &err) : -ENOMEM;
	ok(estargz_parse_toc(whole, toc, len, 1ull << 40, &err) == 0 && r == 0 && verified &&
	       same_entries(whole, streamed),
	   "a %zu-byte TOC member arriving in pieces is the TOC parsed whole: %d %s", gz_len, r, err.msg);
	layer_free(streamed);
	layer_free(whole);

	err = (struct err){ 0 };
	ok(gz &&
	       stream_toc(gz, gz_len, 0, "sha256:0000000000000000000000000000000000000000000000000000000000000000",
			  &streamed, &verified, &err) == -EBADMSG &&
	       !verified && strstr(err.msg, "does not match the annotation"),
	   "another digest is refused, saying both: %s", err.msg);
	layer_free(streamed);
	ok(gz && stream_toc(gz, gz_len, gz_len / 2, digest, &streamed, &verified, &err) == -EAGAIN && !verified,
	   "a request tried again from the start is left to the whole read");
	layer_free(streamed);
	_cleanup_free_ unsigned char *pax = toc_member(toc, len, ARCHIVE_FORMAT_TAR_PAX_RESTRICTED, &gz_len);
	err = (struct err){ 0 };
	ok(pax && stream_toc(pax, gz_len, 0, digest, &streamed, &verified, &err) == 0,
	   "a pax tar with no extended header (a plain ustar one) streams too: %s", err.msg);
	layer_free(streamed);
}

/* A TOC may not declare a file larger than its layer can decode to: a
 * 2^62-byte file of zeros chunks would make a copy-up loop for ever. */
static void test_toc_size_bound(void)
{
	static const char toc[] =
	    "{\"version\":1,\"entries\":[{\"name\":\"huge\",\"type\":\"reg\",\"size\":4611686018427387904,"
	    "\"chunkType\":\"zeros\",\"chunkSize\":4611686018427387904}]}";
	struct layer *l = layer_alloc("sha256:00", COMPRESSION_ZSTD, -1);
	struct err err = { 0 };
	l->blob_size = 1 << 20;
	int r = estargz_parse_toc(l, toc, strlen(toc), 1 << 19, &err);
	ok(r == -EFBIG && strstr(err.msg, "\"huge\" claims an impossible size"),
	   "a TOC file of 2^62 bytes in a 1 MiB layer is refused: %s", err.msg);
	layer_free(l);
	static const char fits[] = "{\"version\":1,\"entries\":[{\"name\":\"sparse\",\"type\":\"reg\",\"size\":"
				   "1073741824,\"chunkType\":\"zeros\",\"chunkSize\":1073741824}]}";
	l = layer_alloc("sha256:00", COMPRESSION_ZSTD, -1);
	l->blob_size = 1 << 20;
	err = (struct err){ 0 };
	ok(estargz_parse_toc(l, fits, strlen(fits), 1 << 19, &err) == 0 && l->n_entries == 1 &&
	       l->entries[0].size == 1u << 30,
	   "a 1 GiB sparse file of zeros in the same layer is not: %s", err.msg);
	layer_free(l);
}

/* Modification times as Go writes them, and what is not one (the epoch). */
static void test_toc_times(void)
{
	static const struct {
		const char *modtime;
		int64_t sec;
		uint32_t nsec;
	} cases[] = {
		{ "2006-01-02T15:04:05Z", 1136214245, 0 },
		{ "2006-01-02T15:04:05.5+01:00", 1136214245 - 3600, 500000000 },
		{ "2006-01-02T15:04:05.123456789123-00:30", 1136214245 + 1800, 123456789 },
		{ "1969-12-31T23:59:59Z", -1, 0 },
		{ "2024-02-29T00:00:00Z", 1709164800, 0 },
		{ "1600-03-01T00:00:00Z", -11670912000, 0 },
		{ "2006-1-02T15:04:05Z", 0, 0 },
		{ "2006-13-02T15:04:05Z", 0, 0 },
		{ "2006-01-02", 0, 0 },
		{ "", 0, 0 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char toc[256];
		snprintf(toc, sizeof(toc),
			 "{\"version\":1,\"entries\":[{\"name\":\"d\",\"type\":\"dir\",\"modtime\":\"%s\"}]}",
			 cases[i].modtime);
		struct layer *l = layer_alloc("sha256:00", COMPRESSION_GZIP, -1);
		struct err err = { 0 };
		int r = estargz_parse_toc(l, toc, strlen(toc), 1 << 19, &err);
		ok(r == 0 && l->n_entries == 1 && l->entries[0].mtime_sec == cases[i].sec &&
		       l->entries[0].mtime_nsec == cases[i].nsec,
		   "modtime \"%s\" is %lld.%09u: %lld.%09u", cases[i].modtime, (long long)cases[i].sec, cases[i].nsec,
		   r == 0 && l->n_entries ? (long long)l->entries[0].mtime_sec : -99LL,
		   r == 0 && l->n_entries ? l->entries[0].mtime_nsec : 0);
		layer_free(l);
	}
}

int main(void)
{
	test_toc_times();
	test_toc_size_bound();
	test_cache_sizes();
	test_file_parts();
	test_span_table();
	unsigned char *big = big_data();
	test_format(COMPRESSION_NONE, "plain", big);
	test_format(COMPRESSION_GZIP, "gzip", big);
	test_format(COMPRESSION_ZSTD, "zstd", big);
	free(big);
	test_merge();
	test_resolve();
	test_paths();
	test_library_names();
	test_file_groups();
	test_toc_halves();
	test_toc_feed();
	test_toc_stream();
	test_demand_quiet();
	return tap_done();
}
