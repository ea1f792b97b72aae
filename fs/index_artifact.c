/* The imgfs index as an OCI artifact next to the image it describes: an
 * image manifest of artifactType IMGFS_INDEX_ARTIFACT_TYPE whose subject is
 * the image manifest, with two blobs per plain layer (the layer index of
 * index_io.c, and the span table of remote_blob.c), each annotated with the
 * layer digest.  A profile is the same with one blob, the list of files.
 * Registries with the referrers API list them there; for the others the
 * "sha256-<hex>" tag of the fallback scheme points to them.  In a
 * repository other than the image's (--index-repo) the tag is what finds
 * them: the subject names a manifest that repository does not hold. */
#include "index_artifact.h"

#include <json-c/json.h>

#include "index_io.h"
#include "remote_blob.h"
#include "windows_blob.h"

#define EMPTY_CONFIG "{}"
#define MEDIA_TYPE_EMPTY "application/vnd.oci.empty.v1+json"

int index_artifact_find(struct registry_client *c, const char *manifest_digest, const char *artifact_type,
			struct manifest *ret, struct err *err)
{
	struct manifest referrers;
	bool from_tag;
	int r = registry_get_referrers(c, manifest_digest, artifact_type, &referrers, &from_tag, err);
	if (r < 0)
		return r;
	/* The newest push is the last entry. */
	r = -ENOENT;
	for (size_t i = referrers.n_layers; i-- > 0 && r == -ENOENT;) {
		struct err one = { 0 };
		r = registry_get_manifest_by_digest(c, referrers.layers[i].digest, ret, &one);
		if (r == 0 && ret->kind != MANIFEST_IMAGE) {
			manifest_done(ret);
			r = -ENOENT;
		} else if (r < 0) {
			r = -ENOENT;
		}
	}
	manifest_done(&referrers);
	return r;
}

/* A client of the index repository, with none of the image's endpoints
 * (mirrors, insecurity) but the same credentials and certificates. */
static int index_repo_client(const struct image_options *opts, struct registry_client **ret, struct err *err)
{
	struct image_ref ref = { 0 };
	struct registry_options repo_opts = opts->registry;
	repo_opts.fallbacks = NULL;
	repo_opts.n_fallbacks = 0;
	repo_opts.insecure = false;
	int r = image_ref_parse(opts->index_repo, &ref, err);
	if (r == 0)
		r = registry_client_new(&ref, &repo_opts, ret, err);
	image_ref_done(&ref);
	return r;
}

/* An artifact looked up in the index repository (index_artifact_find_anywhere()). */
struct index_repo_lookup {
	const char *manifest_digest;
	const struct image_options *opts;
	const char *type;
	struct manifest found;
	struct registry_client *client;
	struct err err;
	int r;
	struct background_job job;
};

static void *index_repo_lookup_main(void *arg)
{
	struct index_repo_lookup *s = arg;
	s->r = index_repo_client(s->opts, &s->client, &s->err);
	if (s->r == 0)
		s->r = index_artifact_find(s->client, s->manifest_digest, s->type, &s->found, &s->err);
	if (s->r < 0)
		s->client = registry_client_free(s->client);
	return NULL;
}

int index_artifact_find_anywhere(struct registry_client *c, const struct image_options *opts,
				 const char *manifest_digest, const char *artifact_type, struct manifest *ret,
				 struct registry_client **ret_owned, struct err *err)
{
	*ret_owned = NULL;
	if (!opts->index_repo)
		return index_artifact_find(c, manifest_digest, artifact_type, ret, err);
	/* Both repositories at once: on a registry without the referrers API
	 * each lookup is two round trips, and an index repository is there
	 * because the image's own usually has none (one may not push to it). */
	struct index_repo_lookup other = { .manifest_digest = manifest_digest, .opts = opts, .type = artifact_type };
	background_job_start(&other.job, index_repo_lookup_main, &other);
	int r = index_artifact_find(c, manifest_digest, artifact_type, ret, err);
	background_job_join(&other.job);
	if (r == 0) {
		if (other.r == 0)
			manifest_done(&other.found);
		registry_client_free(other.client);
		return 0;
	}
	if (err)
		*err = other.err;
	if (other.r == 0) {
		*ret = other.found;
		*ret_owned = other.client;
	}
	return other.r;
}

const struct descriptor *index_artifact_blob(const struct manifest *artifact, const char *layer_digest,
					     const char *media_type)
{
	for (size_t i = 0; i < artifact->n_layers; i++) {
		const struct descriptor *d = &artifact->layers[i];
		const char *layer = descriptor_annotation(d, IMGFS_INDEX_LAYER_ANNOTATION);
		if (layer && strcmp(layer, layer_digest) == 0 && strcmp(d->media_type, media_type) == 0)
			return d;
	}
	return NULL;
}

static struct json_object *descriptor_json(const char *media_type, const char *digest, int64_t size,
					   const char *layer_digest)
{
	struct json_object *d = json_object_new_object();
	json_object_object_add(d, "mediaType", json_object_new_string(media_type));
	json_object_object_add(d, "digest", json_object_new_string(digest));
	json_object_object_add(d, "size", json_object_new_int64(size));
	if (layer_digest) {
		struct json_object *a = json_object_new_object();
		json_object_object_add(a, IMGFS_INDEX_LAYER_ANNOTATION, json_object_new_string(layer_digest));
		json_object_object_add(d, "annotations", a);
	}
	return d;
}

/* Pushes one blob of the index and adds its descriptor. */
static int push_part(struct registry_client *c, const struct layer *l, const char *media_type, const void *data,
		     size_t len, const char *what, struct json_object *layers, struct err *err)
{
	char digest[72];
	if (registry_push_blob(c, data, len, digest, err) < 0)
		return err_wrap(err, "layer %s: %s", l->digest, what);
	json_object_array_add(layers, descriptor_json(media_type, digest, (int64_t)len, l->digest));
	return 0;
}

/* The index, windows and span table of one layer, its windows built. */
static int push_layer_parts(struct registry_client *c, struct layer *l, const struct windows_blob *windows,
			    const struct checkpoint *cps, size_t n_cps, struct json_object *layers, struct err *err)
{
	_cleanup_free_ void *index = NULL;
	size_t index_len;
	int r;
	if ((r = layer_index_windows_apart(l, cps, n_cps, &index, &index_len)) < 0)
		return err_set(err, -r, "layer %s: cannot write its index: %s", l->digest, strerror(-r));
	_cleanup_free_ unsigned char *spans = NULL;
	size_t spans_len;
	r = span_table_build(l->blob_fd, l->blob_size, l->digest, SPAN_SIZE_DEFAULT, &spans, &spans_len);
	if (r < 0)
		return err_set(err, -r, "layer %s: cannot hash its spans: %s", l->digest, strerror(-r));
	_cleanup_free_ void *packed = NULL;
	size_t packed_len = 0;
	r = layer_index_compress(index, index_len, &packed, &packed_len);
	if (r < 0 && r != -ERANGE)
		return err_set(err, -r, "layer %s: cannot compress its index: %s", l->digest, strerror(-r));
	if ((r = push_part(c, l, IMGFS_MEDIA_TYPE_LAYER_INDEX_V2, packed ? packed : index,
			   packed ? packed_len : index_len, "index", layers, err)) < 0)
		return r;
	if (windows->len && (r = push_part(c, l, IMGFS_MEDIA_TYPE_LAYER_WINDOWS, windows->data, windows->len, "windows",
					   layers, err)) < 0)
		return r;
	return push_part(c, l, IMGFS_MEDIA_TYPE_LAYER_SPANS, spans, spans_len, "span table", layers, err);
}

/* Pushes the index, its windows and the span table of one layer; adds
 * their descriptors. */
static int push_layer(struct registry_client *c, struct layer *l, const char *tmp_dir, struct json_object *layers,
		      struct err *err)
{
	struct windows_blob windows;
	_cleanup_free_ struct checkpoint *cps = NULL;
	size_t n_cps = 0;
	int r = windows_blob_build(l, tmp_dir, &windows, &cps, &n_cps);
	if (r == 0)
		r = push_layer_parts(c, l, &windows, cps, n_cps, layers, err);
	else
		r = err_set(err, -r,
			    "layer %s: cannot decode it to place its checkpoints, their windows in a file in %s: %s",
			    l->digest, tmp_dir, strerror(-r));
	windows_blob_done(&windows);
	return r;
}

/* Pushes an artifact of artifact_type with these layer descriptors that
 * refers to the subject manifest, and lists it under the subject's tag
 * where the registry has no referrers API. */
static int artifact_push(struct registry_client *c, const char *artifact_type, struct json_object *layers,
			 const struct artifact_subject *subject, char **ret_digest, struct err *err)
{
	char config_digest[72];
	int r = registry_push_blob(c, EMPTY_CONFIG, strlen(EMPTY_CONFIG), config_digest, err);
	if (r < 0) {
		json_object_put(layers);
		return err_wrap(err, "empty config");
	}
	struct json_object *m = json_object_new_object();
	json_object_object_add(m, "schemaVersion", json_object_new_int(2));
	json_object_object_add(m, "mediaType", json_object_new_string(MEDIA_TYPE_OCI_MANIFEST));
	json_object_object_add(m, "artifactType", json_object_new_string(artifact_type));
	json_object_object_add(m, "config",
			       descriptor_json(MEDIA_TYPE_EMPTY, config_digest, strlen(EMPTY_CONFIG), NULL));
	json_object_object_add(m, "layers", layers);
	json_object_object_add(m, "subject",
			       descriptor_json(subject->media_type, subject->digest, (int64_t)subject->size, NULL));
	const char *text = json_object_to_json_string_ext(m, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
	char digest[DIGEST_SHA256_LEN + 1];
	size_t len = text ? strlen(text) : 0;
	if (!text) {
		r = -ENOMEM;
	} else {
		digest_sha256(text, len, digest);
		r = registry_put_manifest(c, digest, MEDIA_TYPE_OCI_MANIFEST, text, len, err);
	}
	json_object_put(m);
	struct manifest referrers;
	bool from_tag = false;
	if (r == 0 &&
	    (r = registry_get_referrers(c, subject->digest, artifact_type, &referrers, &from_tag, err)) == 0) {
		manifest_done(&referrers);
		if (from_tag)
			r = registry_add_referrer_tag(c, subject->digest, MEDIA_TYPE_OCI_MANIFEST, digest, (int64_t)len,
						      artifact_type, err);
	}
	if (r == 0 && !(*ret_digest = strdup(digest)))
		r = -ENOMEM;
	return r;
}

int index_artifact_push(struct image *img, const struct image_ref *ref, const struct image_options *opts,
			char **ret_digest, struct err *err)
{
	struct registry_client *c = NULL;
	int r = registry_client_new(ref, &opts->registry, &c, err);
	if (r < 0)
		return r;
	struct json_object *layers = json_object_new_array();
	size_t pushed = 0;
	for (size_t i = 0; i < img->n_layers && r == 0; i++) {
		struct layer *l = img->layers[i];
		/* Only a whole blob can be indexed; chunked layers, read lazily,
		 * carry their own table of contents. */
		if (l->blob_fd < 0)
			continue;
		r = push_layer(c, l, opts->cache_dir, layers, err);
		pushed++;
	}
	if (r == 0 && pushed == 0)
		r = err_set(err, ENOENT, "image \"%s\" has no plain layer to index: its layers are lazy already",
			    img->ref_text);
	if (r < 0) {
		json_object_put(layers);
		registry_client_free(c);
		return r;
	}
	struct artifact_subject subject = { img->manifest_digest, img->manifest_media_type, img->manifest_size };
	r = artifact_push(c, IMGFS_INDEX_ARTIFACT_TYPE, layers, &subject, ret_digest, err);
	registry_client_free(c);
	return r;
}

int profile_artifact_push(const struct image_ref *repo, const struct artifact_subject *subject, const char *list,
			  size_t len, const struct image_options *opts, char **ret_digest, struct err *err)
{
	struct registry_client *c = NULL;
	int r = registry_client_new(repo, &opts->registry, &c, err);
	if (r < 0)
		return r;
	char digest[72];
	if ((r = registry_push_blob(c, list, len, digest, err)) < 0) {
		registry_client_free(c);
		return err_wrap(err, "profile");
	}
	struct json_object *layers = json_object_new_array();
	json_object_array_add(layers, descriptor_json(IMGFS_MEDIA_TYPE_PROFILE, digest, (int64_t)len, NULL));
	r = artifact_push(c, IMGFS_PROFILE_ARTIFACT_TYPE, layers, subject, ret_digest, err);
	registry_client_free(c);
	return r;
}
