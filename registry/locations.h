/* Where registries redirected the downloads of blobs, in this process
 * (private to registry/).
 *
 * Registries that keep blobs in object storage or behind a CDN (Docker
 * Hub, the clouds' registries) answer every blob GET with a redirect to a
 * signed URL: a lazy read then costs two round trips, one to the registry
 * and one to the storage.  A range of a blob whose redirect was seen goes
 * to the storage directly; a URL that fails (expired, refused) is
 * forgotten and the read goes through the registry again. */
#pragma once

#include <stddef.h>

/* The signed URL the registry at base_url redirected downloads of path
 * (REPOSITORY/blobs/DIGEST: a URL signed for one repository is not used
 * for another) to, learnt less than five minutes ago; NULL: none (the
 * caller frees it). */
char *blob_location_find(const char *base_url, const char *path);
/* A GET of path at base_url ended at url. */
void blob_location_learn(const char *base_url, const char *path, const char *url);
/* url failed: it is asked no more. */
void blob_location_forget(const char *base_url, const char *path, const char *url);
