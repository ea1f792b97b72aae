/* Pushing blobs and manifests, and the referrers of a manifest (the
 * referrers API, or the tag schema of registries without it). */
#include "client_internal.h"

#include <json-c/json.h>

int registry_push_blob(struct registry_client *c, const void *data, size_t len, char ret_digest[72], struct err *err)
{
	char digest[DIGEST_SHA256_LEN + 1];
	digest_sha256(data, len, digest);
	char what[512];
	snprintf(what, sizeof(what), "blob %s of \"%s/%s\"", digest, c->ref.domain, c->ref.repository);
	_cleanup_free_ char *path = strdup_printf("%s/blobs/%s", c->ref.repository, digest);
	_cleanup_free_ char *start = strdup_printf("%s/blobs/uploads/", c->ref.repository);
	if (!path || !start)
		return -ENOMEM;
	struct response resp;
	response_to_memory(&resp, ERROR_BODY_MAX_SIZE);
	const struct upload head = { .method = "HEAD" };
	struct err ignored = { 0 };
	if (registry_request(c, path, NULL, NULL, &head, &resp, what, &ignored) == 0) {
		response_done(&resp);
		memcpy(ret_digest, digest, sizeof(digest));
		return 0;
	}
	const struct upload post = { .method = "POST" };
	int r = registry_request(c, start, NULL, NULL, &post, &resp, what, err);
	if (r == 0 && (resp.status != 202 || !resp.location))
		r = err_set(err, EPROTO, "%s: the registry did not start an upload (HTTP %ld)", what, resp.status);
	_cleanup_free_ char *location = r == 0 ? strdup(resp.location) : NULL;
	response_done(&resp);
	if (r < 0)
		return r;
	if (!location)
		return -ENOMEM;
	_cleanup_free_ char *put_url =
	    strdup_printf("%s%sdigest=%s", location, strchr(location, '?') ? "&" : "?", digest);
	if (!put_url)
		return -ENOMEM;
	const struct upload put = { .method = "PUT",
				    .content_type_header = "Content-Type: application/octet-stream",
				    .body = data,
				    .len = len };
	r = registry_request(c, put_url, NULL, NULL, &put, &resp, what, err);
	if (r == 0 && resp.status != 201)
		r = err_set(err, EPROTO, "%s: upload answered HTTP %ld instead of 201", what, resp.status);
	response_done(&resp);
	if (r == 0)
		memcpy(ret_digest, digest, sizeof(digest));
	return r;
}

int registry_put_manifest(struct registry_client *c, const char *reference, const char *media_type, const void *data,
			  size_t len, struct err *err)
{
	_cleanup_free_ char *path = strdup_printf("%s/manifests/%s", c->ref.repository, reference);
	_cleanup_free_ char *content_type = strdup_printf("Content-Type: %s", media_type);
	if (!path || !content_type)
		return -ENOMEM;
	char what[512];
	snprintf(what, sizeof(what), "manifest \"%s/%s%s%s\"", c->ref.domain, c->ref.repository,
		 str_has_prefix(reference, "sha256:") ? "@" : ":", reference);
	struct response resp;
	response_to_memory(&resp, ERROR_BODY_MAX_SIZE);
	const struct upload put = { .method = "PUT", .content_type_header = content_type, .body = data, .len = len };
	int r = registry_request(c, path, NULL, NULL, &put, &resp, what, err);
	response_done(&resp);
	return r;
}

int registry_get_manifest_by_digest(struct registry_client *c, const char *digest, struct manifest *ret,
				    struct err *err)
{
	char *got = NULL;
	int r = get_manifest(c, digest, digest, ret, &got, err);
	free(got);
	return r;
}

/* Keeps the entries of an index with this artifact type. */
static void filter_artifact_type(struct manifest *m, const char *artifact_type)
{
	size_t kept = 0;
	for (size_t i = 0; i < m->n_layers; i++) {
		struct descriptor *d = &m->layers[i];
		if (d->artifact_type && strcmp(d->artifact_type, artifact_type) == 0)
			m->layers[kept++] = *d;
		else
			descriptor_done(d);
	}
	m->n_layers = kept;
}

int registry_get_referrers(struct registry_client *c, const char *subject_digest, const char *artifact_type,
			   struct manifest *ret, bool *ret_from_tag, struct err *err)
{
	if (!digest_is_valid(subject_digest))
		return err_set(err, EINVAL, "invalid digest \"%s\"", subject_digest);
	_cleanup_free_ char *escaped = url_escape(c, artifact_type);
	_cleanup_free_ char *path =
	    strdup_printf("%s/referrers/%s?artifactType=%s", c->ref.repository, subject_digest, escaped ? escaped : "");
	if (!path)
		return -ENOMEM;
	char what[512];
	snprintf(what, sizeof(what), "referrers of %s in \"%s/%s\"", subject_digest, c->ref.domain, c->ref.repository);
	struct response resp;
	response_to_memory(&resp, MANIFEST_MAX_SIZE);
	struct err api_err = { 0 };
	int r = registry_get(c, path, "Accept: " MEDIA_TYPE_OCI_INDEX, NULL, &resp, what, &api_err);
	if (r == 0) {
		r = manifest_parse(resp.body ? resp.body : "", resp.body_len, resp.content_type, ret, err);
		response_done(&resp);
		if (r < 0)
			return err_wrap(err, "%s", what);
		if (ret->kind != MANIFEST_INDEX) {
			manifest_done(ret);
			return err_set(err, EPROTO, "%s: the registry answered with something that is not an index",
				       what);
		}
		filter_artifact_type(ret, artifact_type);
		*ret_from_tag = false;
		return 0;
	}
	response_done(&resp);
	if (r != -ENOENT)
		return err_set(err, -r, "%s", api_err.msg);
	/* No referrers API: the tag scheme, "sha256-<hex>" naming an index. */
	char tag[80];
	snprintf(tag, sizeof(tag), "sha256-%s", subject_digest + strlen("sha256:"));
	char *got = NULL;
	struct err tag_err = { 0 };
	r = get_manifest(c, tag, NULL, ret, &got, &tag_err);
	free(got);
	*ret_from_tag = true;
	if (r == -ENOENT) {
		*ret = (struct manifest){ .kind = MANIFEST_INDEX };
		return 0;
	}
	if (r < 0)
		return err_set(err, -r, "%s", tag_err.msg);
	if (ret->kind != MANIFEST_INDEX) {
		manifest_done(ret);
		return err_set(err, EPROTO, "%s: tag %s is not an index", what, tag);
	}
	filter_artifact_type(ret, artifact_type);
	return 0;
}

int registry_add_referrer_tag(struct registry_client *c, const char *subject_digest, const char *media_type,
			      const char *digest, int64_t size, const char *artifact_type, struct err *err)
{
	if (!digest_is_valid(subject_digest))
		return err_set(err, EINVAL, "invalid digest \"%s\"", subject_digest);
	char tag[80];
	snprintf(tag, sizeof(tag), "sha256-%s", subject_digest + strlen("sha256:"));
	_cleanup_free_ char *path = strdup_printf("%s/manifests/%s", c->ref.repository, tag);
	if (!path)
		return -ENOMEM;
	char what[512];
	snprintf(what, sizeof(what), "referrers tag %s of \"%s/%s\"", tag, c->ref.domain, c->ref.repository);
	struct response resp;
	response_to_memory(&resp, MANIFEST_MAX_SIZE);
	struct err get_err = { 0 };
	int r = registry_get(c, path, "Accept: " MEDIA_TYPE_OCI_INDEX, NULL, &resp, what, &get_err);
	if (r < 0 && r != -ENOENT) {
		response_done(&resp);
		return err_set(err, -r, "%s", get_err.msg);
	}
	struct json_object *index = r == 0 ? json_tokener_parse(resp.body ? resp.body : "") : NULL, *list;
	response_done(&resp);
	if (!index || !json_object_is_type(index, json_type_object) ||
	    !json_object_object_get_ex(index, "manifests", &list) || !json_object_is_type(list, json_type_array)) {
		json_object_put(index);
		index = json_object_new_object();
		list = json_object_new_array();
		json_object_object_add(index, "schemaVersion", json_object_new_int(2));
		json_object_object_add(index, "mediaType", json_object_new_string(MEDIA_TYPE_OCI_INDEX));
		json_object_object_add(index, "manifests", list);
	}
	struct json_object *kept = json_object_new_array();
	for (size_t i = 0; i < json_object_array_length(list); i++) {
		struct json_object *e = json_object_array_get_idx(list, i), *d;
		if (json_object_object_get_ex(e, "digest", &d) && json_object_is_type(d, json_type_string) &&
		    strcmp(json_object_get_string(d), digest) == 0)
			continue;
		json_object_array_add(kept, json_object_get(e));
	}
	struct json_object *entry = json_object_new_object();
	json_object_object_add(entry, "mediaType", json_object_new_string(media_type));
	json_object_object_add(entry, "digest", json_object_new_string(digest));
	json_object_object_add(entry, "size", json_object_new_int64(size));
	json_object_object_add(entry, "artifactType", json_object_new_string(artifact_type));
	json_object_array_add(kept, entry);
	json_object_object_add(index, "manifests", kept);
	const char *text =
	    json_object_to_json_string_ext(index, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
	r = text ? registry_put_manifest(c, tag, MEDIA_TYPE_OCI_INDEX, text, strlen(text), err) : -ENOMEM;
	json_object_put(index);
	return r;
}
