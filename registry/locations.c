/* Where registries redirected the downloads of blobs: see locations.h. */
#include "locations.h"

#include <pthread.h>
#include <string.h>
#include <time.h>

#include "util.h"

/* Signed URLs last 10 to 60 minutes where registries say (S3's presigned
 * URLs up to a week, Docker Hub's CDN 20 minutes): one that expires sooner
 * costs a refused request and the round trip learnt back, no more. */
#define BLOB_LOCATION_TTL_SECONDS 300
/* The blobs of a few images' layers and their indexes. */
#define BLOB_LOCATIONS_MAX 64

struct blob_location {
	char *key; /* base_url, a space, the path */
	char *url;
	struct timespec learnt;
};

static pthread_mutex_t locations_lock = PTHREAD_MUTEX_INITIALIZER;
static struct blob_location locations[BLOB_LOCATIONS_MAX];

static char *location_key(const char *base_url, const char *path)
{
	return strdup_printf("%s %s", base_url, path);
}

/* The slot of key, else NULL; locations_lock is held. */
static struct blob_location *slot_locked(const char *key)
{
	for (size_t i = 0; i < BLOB_LOCATIONS_MAX; i++)
		if (locations[i].key && strcmp(locations[i].key, key) == 0)
			return &locations[i];
	return NULL;
}

static void clear_locked(struct blob_location *l)
{
	free(l->key);
	free(l->url);
	*l = (struct blob_location){ 0 };
}

char *blob_location_find(const char *base_url, const char *path)
{
	_cleanup_free_ char *key = location_key(base_url, path);
	if (!key)
		return NULL;
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	char *url = NULL;
	pthread_mutex_lock(&locations_lock);
	struct blob_location *l = slot_locked(key);
	if (l && now.tv_sec - l->learnt.tv_sec < BLOB_LOCATION_TTL_SECONDS)
		url = strdup(l->url);
	else if (l)
		clear_locked(l);
	pthread_mutex_unlock(&locations_lock);
	return url;
}

void blob_location_learn(const char *base_url, const char *path, const char *url)
{
	char *key = location_key(base_url, path), *copy = strdup(url);
	if (!key || !copy) {
		free(key);
		free(copy);
		return;
	}
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	pthread_mutex_lock(&locations_lock);
	/* Its own slot, else a free one, else the oldest. */
	struct blob_location *l = slot_locked(key);
	for (size_t i = 0; !l && i < BLOB_LOCATIONS_MAX; i++)
		if (!locations[i].key)
			l = &locations[i];
	if (!l) {
		l = &locations[0];
		for (size_t i = 1; i < BLOB_LOCATIONS_MAX; i++)
			if (locations[i].learnt.tv_sec < l->learnt.tv_sec)
				l = &locations[i];
	}
	clear_locked(l);
	*l = (struct blob_location){ key, copy, now };
	pthread_mutex_unlock(&locations_lock);
}

void blob_location_forget(const char *base_url, const char *path, const char *url)
{
	_cleanup_free_ char *key = location_key(base_url, path);
	if (!key)
		return;
	pthread_mutex_lock(&locations_lock);
	struct blob_location *l = slot_locked(key);
	/* Another thread may have learnt a newer one meanwhile. */
	if (l && strcmp(l->url, url) == 0)
		clear_locked(l);
	pthread_mutex_unlock(&locations_lock);
}
