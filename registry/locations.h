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

/* The signed URL the registry at base_url redirected downloads of digest
 * to, learnt less than BLOB_LOCATION_TTL_SECONDS ago; NULL: none (the
 * caller frees it). */
char *blob_location_find(const char *base_url, const char *digest);
/* A GET of digest at base_url ended at url. */
void blob_location_learn(const char *base_url, const char *digest, const char *url);
/* url failed: it is asked no more. */
void blob_location_forget(const char *base_url, const char *digest, const char *url);
