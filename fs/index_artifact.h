/* The imgfs index of an image's plain layers, stored in its registry as an
 * OCI artifact that refers to the image manifest (private to fs/). */
#pragma once

#include "image.h"

#define IMGFS_INDEX_ARTIFACT_TYPE "application/vnd.imgfs.index.v1"
#define IMGFS_MEDIA_TYPE_LAYER_INDEX "application/vnd.imgfs.layer-index.v1"
/* The same index as one zstd frame, fewer bytes for a mount to fetch: its
 * checkpoint windows are the layer's own uncompressed data.  An older
 * imgfs knows no such blob and fetches the layer whole. */
#define IMGFS_MEDIA_TYPE_LAYER_INDEX_ZSTD "application/vnd.imgfs.layer-index.v1+zstd"
/* The index with its checkpoints' windows in a blob of their own
 * (windows_blob.h), one zstd frame (or as it is, as above): a mount
 * fetches entries and checkpoints only, a read the one window it starts
 * from.  An older imgfs knows neither blob and fetches the layer whole. */
#define IMGFS_MEDIA_TYPE_LAYER_INDEX_V2 "application/vnd.imgfs.layer-index.v2"
#define IMGFS_MEDIA_TYPE_LAYER_WINDOWS "application/vnd.imgfs.layer-windows.v1"
#define IMGFS_MEDIA_TYPE_LAYER_SPANS "application/vnd.imgfs.layer-spans.v1"
#define IMGFS_INDEX_LAYER_ANNOTATION "io.imgfs.layer.digest"
/* A workload's files in the order it read them (imgfs record): what a
 * mount of the image prefetches first. */
#define IMGFS_PROFILE_ARTIFACT_TYPE "application/vnd.imgfs.profile.v1"
#define IMGFS_MEDIA_TYPE_PROFILE "application/vnd.imgfs.profile.v1+text"

/* The image manifest an artifact refers to. */
struct artifact_subject {
	const char *digest, *media_type;
	size_t size;
};

/* The newest artifact of artifact_type in c's repository that refers to
 * manifest_digest, verified by its digest; -ENOENT when there is none. */
int index_artifact_find(struct registry_client *c, const char *manifest_digest, const char *artifact_type,
			struct manifest *ret, struct err *err);
/* The same in c's repository, else in opts->index_repo (both asked at
 * once), in which case *ret_owned is a client of that repository (the
 * caller frees it) and err says why the index repository had none. */
int index_artifact_find_anywhere(struct registry_client *c, const struct image_options *opts,
				 const char *manifest_digest, const char *artifact_type, struct manifest *ret,
				 struct registry_client **ret_owned, struct err *err);
/* The artifact's blob of media_type for a layer, or NULL. */
const struct descriptor *index_artifact_blob(const struct manifest *artifact, const char *layer_digest,
					     const char *media_type);
/* Pushes the index of img's plain layers (indexed locally, blobs in the
 * cache) and makes the registry list it as a referrer of the image. */
int index_artifact_push(struct image *img, const struct image_ref *ref, const struct image_options *opts,
			char **ret_digest, struct err *err);
/* Pushes list (a profile) into repo's repository as an artifact that
 * refers to subject. */
int profile_artifact_push(const struct image_ref *repo, const struct artifact_subject *subject, const char *list,
			  size_t len, const struct image_options *opts, char **ret_digest, struct err *err);
