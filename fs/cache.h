/* The size cap of the shared cache (imgfs mount --cache-size): objects are
 * evicted least recently used first.  A use is recorded in the object's
 * mtime, once per object and mount.  Eviction is safe at any time: an open
 * object stays readable until closed, and a missing one is fetched and
 * verified again.  Private to fs/. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* Makes cache_dir (and missing parents) 0700, or checks the one there: it
 * must be a directory owned by the caller that no one else may write; one
 * that others may read or enter is made 0700.  Errors say why. */
struct err;
int cache_open_private(const char *cache_dir, struct err *err);
/* A blob is hashed when it is stored and, later, whenever it is about to be
 * used unless it still carries the stamp of that check: the inode, size
 * and change time it had then (<cache>/verified/<hex>).  Any write to the
 * blob moves its change time, which no one but root can set back. */
bool cache_stamp_valid(const char *cache_dir, const char *digest, int fd);
void cache_stamp(const char *cache_dir, const char *digest, int fd);
/* The same for an object that has no digest of its own, derived from
 * verified ones by this daemon (a decoded span): the stamp is
 * "<object path>.ok", and an object without a valid one is not used. */
bool cache_object_stamp_valid(const char *object_path, int fd);
void cache_object_stamp(const char *object_path, int fd);
/* Sets the cap (0: none) and brings the cache under it now. */
int cache_limit_init(const char *cache_dir, uint64_t cap);
/* Called after a new object of this size went into the cache. */
void cache_note_stored(uint64_t bytes);
/* Records a use of the object open on fd, or at path. */
void cache_note_used(int fd);
void cache_note_used_path(const char *path);
/* "10G", "512M", "1048576": bytes, with binary K, M, G, T suffixes. */
int cache_parse_size(const char *text, uint64_t *ret);

/* "<cache_dir>/<kind>/sha256/<hex>" (caller frees): where the cache keeps an
 * object of that kind ("blobs", "index", ...) for a digest that
 * digest_is_valid() accepted, so that it holds no "/" or "..". */
char *cache_path(const char *cache_dir, const char *kind, const char *digest);
/* Where the cache keeps the saved index of a layer (caller frees). */
char *cache_index_path(const char *cache_dir, const char *layer_digest);
