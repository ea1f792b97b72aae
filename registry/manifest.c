/* OCI image manifests and indexes, Docker schema2 manifests and manifest lists. */
#include "registry.h"

#include <json-c/json.h>
#include <sys/utsname.h>

#define MAX_LAYERS 1024
#define MAX_INDEX_ENTRIES 4096
#define MAX_ANNOTATIONS 256

static const char *const image_types[] = {
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.v2+json",
};
static const char *const index_types[] = {
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
};

static bool in_list(const char *s, const char *const *list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(s, list[i]) == 0)
			return true;
	return false;
}

static const char *get_string(struct json_object *obj, const char *key)
{
	struct json_object *v;
	if (!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

void descriptor_done(struct descriptor *d)
{
	free(d->media_type);
	free(d->digest);
	free(d->artifact_type);
	free(d->os);
	free(d->architecture);
	free(d->variant);
	if (d->annotations)
		for (char **p = d->annotations; *p; p++)
			free(*p);
	free(d->annotations);
	memset(d, 0, sizeof(*d));
}

void manifest_done(struct manifest *m)
{
	descriptor_done(&m->config);
	for (size_t i = 0; i < m->n_layers; i++)
		descriptor_done(&m->layers[i]);
	free(m->layers);
	free(m->media_type);
	free(m->raw);
	memset(m, 0, sizeof(*m));
}

const char *descriptor_annotation(const struct descriptor *d, const char *key)
{
	if (!d->annotations)
		return NULL;
	for (char **p = d->annotations; p[0] && p[1]; p += 2)
		if (strcmp(p[0], key) == 0)
			return p[1];
	return NULL;
}

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

static int descriptor_parse(struct json_object *obj, bool want_platform, struct descriptor *ret, const char *what,
			    struct err *err)
{
	struct descriptor d = { 0 };
	struct json_object *size, *platform, *annotations;
	int r;

	if (!json_object_is_type(obj, json_type_object))
		return err_set(err, EINVAL, "%s is not an object", what);
	const char *media_type = get_string(obj, "mediaType");
	const char *digest = get_string(obj, "digest");
	if (!digest || !digest_is_valid(digest))
		return err_set(err, EINVAL, "%s has no valid sha256 digest", what);
	if (!json_object_object_get_ex(obj, "size", &size) || !json_object_is_type(size, json_type_int) ||
	    json_object_get_int64(size) < 0)
		return err_set(err, EINVAL, "%s (%s) has no valid size", what, digest);
	d.size = json_object_get_int64(size);
	d.digest = strdup(digest);
	d.media_type = strdup(media_type ? media_type : "");
	const char *artifact_type = get_string(obj, "artifactType");
	d.artifact_type = artifact_type ? strdup(artifact_type) : NULL;
	if (!d.digest || !d.media_type || (artifact_type && !d.artifact_type)) {
		r = -ENOMEM;
		goto fail;
	}
	if (want_platform && json_object_object_get_ex(obj, "platform", &platform) &&
	    json_object_is_type(platform, json_type_object)) {
		d.os = dup_or_null(get_string(platform, "os"));
		d.architecture = dup_or_null(get_string(platform, "architecture"));
		d.variant = dup_or_null(get_string(platform, "variant"));
	}
	if (json_object_object_get_ex(obj, "annotations", &annotations) &&
	    json_object_is_type(annotations, json_type_object)) {
		size_t n = (size_t)json_object_object_length(annotations), i = 0;
		if (n > MAX_ANNOTATIONS) {
			r = err_set(err, EINVAL, "%s (%s) has more than %d annotations", what, digest, MAX_ANNOTATIONS);
			goto fail;
		}
		d.annotations = calloc(2 * n + 1, sizeof(char *));
		if (!d.annotations) {
			r = -ENOMEM;
			goto fail;
		}
		json_object_object_foreach(annotations, key, value)
		{
			if (!json_object_is_type(value, json_type_string))
				continue;
			d.annotations[i] = strdup(key);
			d.annotations[i + 1] = strdup(json_object_get_string(value));
			if (!d.annotations[i] || !d.annotations[i + 1]) {
				r = -ENOMEM;
				goto fail;
			}
			i += 2;
		}
	}
	*ret = d;
	return 0;
fail:
	descriptor_done(&d);
	return r;
}

int manifest_parse(const char *json, size_t len, const char *content_type, struct manifest *ret, struct err *err)
{
	struct manifest m = { 0 };
	struct json_object *root = NULL, *list;
	int r;

	if (len > MANIFEST_MAX_SIZE)
		return err_set(err, EFBIG, "manifest is larger than %u bytes", MANIFEST_MAX_SIZE);
	struct json_tokener *tok = json_tokener_new_ex(64);
	if (!tok)
		return -ENOMEM;
	root = json_tokener_parse_ex(tok, json, (int)len);
	bool complete =
	    root && json_tokener_get_error(tok) == json_tokener_success && json_tokener_get_parse_end(tok) == len;
	json_tokener_free(tok);
	if (!complete || !json_object_is_type(root, json_type_object)) {
		r = err_set(err, EINVAL, "manifest is not a JSON object");
		goto fail;
	}

	const char *media_type = get_string(root, "mediaType");
	if (!media_type && content_type) {
		/* Strip parameters such as "; charset=utf-8". */
		size_t n = strcspn(content_type, "; ");
		for (size_t i = 0; i < ARRAY_SIZE(image_types); i++)
			if (strlen(image_types[i]) == n && strncmp(content_type, image_types[i], n) == 0)
				media_type = image_types[i];
		for (size_t i = 0; i < ARRAY_SIZE(index_types); i++)
			if (strlen(index_types[i]) == n && strncmp(content_type, index_types[i], n) == 0)
				media_type = index_types[i];
	}
	if (!media_type) {
		/* OCI allows omitting mediaType; the shape tells. */
		if (json_object_object_get_ex(root, "manifests", NULL))
			media_type = index_types[0];
		else if (json_object_object_get_ex(root, "layers", NULL))
			media_type = image_types[0];
	}
	if (!media_type) {
		r = err_set(err, EINVAL, "manifest has no mediaType and is neither an image manifest nor an index");
		goto fail;
	}
	if (in_list(media_type, image_types, ARRAY_SIZE(image_types)))
		m.kind = MANIFEST_IMAGE;
	else if (in_list(media_type, index_types, ARRAY_SIZE(index_types)))
		m.kind = MANIFEST_INDEX;
	else {
		r = err_set(err, ENOTSUP, "unsupported manifest media type \"%s\"", media_type);
		goto fail;
	}
	m.media_type = strdup(media_type);
	if (!m.media_type) {
		r = -ENOMEM;
		goto fail;
	}

	if (m.kind == MANIFEST_IMAGE) {
		struct json_object *config;
		if (!json_object_object_get_ex(root, "config", &config)) {
			r = err_set(err, EINVAL, "image manifest has no config");
			goto fail;
		}
		r = descriptor_parse(config, false, &m.config, "config descriptor", err);
		if (r < 0)
			goto fail;
	}
	const char *list_key = m.kind == MANIFEST_IMAGE ? "layers" : "manifests";
	size_t max = m.kind == MANIFEST_IMAGE ? MAX_LAYERS : MAX_INDEX_ENTRIES;
	if (!json_object_object_get_ex(root, list_key, &list) || !json_object_is_type(list, json_type_array)) {
		r = err_set(err, EINVAL, "manifest has no \"%s\" array", list_key);
		goto fail;
	}
	size_t n = json_object_array_length(list);
	if (n > max) {
		r = err_set(err, EINVAL, "manifest lists %zu %s, more than %zu", n, list_key, max);
		goto fail;
	}
	m.layers = calloc(n ? n : 1, sizeof(*m.layers));
	if (!m.layers) {
		r = -ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < n; i++) {
		char what[64];
		snprintf(what, sizeof(what), "%s[%zu]", list_key, i);
		r = descriptor_parse(json_object_array_get_idx(list, i), m.kind == MANIFEST_INDEX, &m.layers[i], what,
				     err);
		if (r < 0)
			goto fail;
		m.n_layers++;
	}
	json_object_put(root);
	*ret = m;
	return 0;
fail:
	json_object_put(root);
	manifest_done(&m);
	return r;
}

static void host_platform(struct platform *p)
{
	struct utsname u;
	const char *arch = "amd64", *variant = "";
	if (uname(&u) == 0) {
		if (strcmp(u.machine, "x86_64") == 0)
			arch = "amd64";
		else if (strcmp(u.machine, "aarch64") == 0)
			arch = "arm64", variant = "v8";
		else if (strncmp(u.machine, "armv7", 5) == 0)
			arch = "arm", variant = "v7";
		else if (strcmp(u.machine, "i686") == 0 || strcmp(u.machine, "i386") == 0)
			arch = "386";
		else if (strcmp(u.machine, "ppc64le") == 0 || strcmp(u.machine, "s390x") == 0 ||
			 strcmp(u.machine, "riscv64") == 0)
			arch = u.machine;
	}
	snprintf(p->os, sizeof(p->os), "linux");
	snprintf(p->architecture, sizeof(p->architecture), "%.31s", arch);
	snprintf(p->variant, sizeof(p->variant), "%s", variant);
}

int platform_parse(const char *text, struct platform *ret)
{
	struct platform p = { 0 };
	if (!text) {
		host_platform(ret);
		return 0;
	}
	const char *s1 = strchr(text, '/');
	if (!s1 || s1 == text || (size_t)(s1 - text) >= sizeof(p.os))
		return -EINVAL;
	const char *s2 = strchr(s1 + 1, '/');
	size_t arch_len = s2 ? (size_t)(s2 - s1 - 1) : strlen(s1 + 1);
	if (arch_len == 0 || arch_len >= sizeof(p.architecture))
		return -EINVAL;
	if (s2 && (strlen(s2 + 1) == 0 || strlen(s2 + 1) >= sizeof(p.variant) || strchr(s2 + 1, '/')))
		return -EINVAL;
	memcpy(p.os, text, (size_t)(s1 - text));
	memcpy(p.architecture, s1 + 1, arch_len);
	if (s2)
		strcpy(p.variant, s2 + 1);
	*ret = p;
	return 0;
}

int manifest_select_platform(const struct manifest *index, const struct platform *p)
{
	int fallback = -ENOENT;
	for (size_t i = 0; i < index->n_layers; i++) {
		const struct descriptor *d = &index->layers[i];
		if (!d->os || !d->architecture || strcmp(d->os, p->os) != 0 ||
		    strcmp(d->architecture, p->architecture) != 0)
			continue;
		const char *variant = d->variant ? d->variant : "";
		if (strcmp(variant, p->variant) == 0)
			return (int)i;
		/* An entry without a variant serves any variant, as containers/image does. */
		if (fallback < 0 && (!*variant || !*p->variant))
			fallback = (int)i;
	}
	return fallback;
}
