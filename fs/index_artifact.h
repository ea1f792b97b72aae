/* The imgfs index of an image's plain layers, stored in its registry as an
 * OCI artifact that refers to the image manifest (private to fs/). */
#pragma once

#include "image.h"

#define IMGFS_INDEX_ARTIFACT_TYPE "application/vnd.imgfs.index.v1"
#define IMGFS_MEDIA_TYPE_LAYER_INDEX "application/vnd.imgfs.layer-index.v1"
#define IMGFS_MEDIA_TYPE_LAYER_SPANS "application/vnd.imgfs.layer-spans.v1"
#define IMGFS_INDEX_LAYER_ANNOTATION "io.imgfs.layer.digest"

/* The newest index artifact that refers to manifest_digest, verified by its
 * digest; -ENOENT when there is none. */
int index_artifact_find(struct registry_client *c, const char *manifest_digest, struct manifest *ret, struct err *err);
/* The artifact's blob of media_type for a layer, or NULL. */
const struct descriptor *index_artifact_blob(const struct manifest *artifact, const char *layer_digest,
					     const char *media_type);
/* Pushes the index of img's plain layers (indexed locally, blobs in the
 * cache) and makes the registry list it as a referrer of the image. */
int index_artifact_push(struct image *img, const struct image_ref *ref, const struct image_options *opts,
			char **ret_digest, struct err *err);
