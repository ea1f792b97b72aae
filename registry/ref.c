/* Image references, following the grammar of the distribution project's
 * reference package that docker and podman share. */
#include "registry.h"

#include <ctype.h>

#define NAME_MAX_LEN 255

static bool is_lower_alnum(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* path-component := [a-z0-9]+ (separator [a-z0-9]+)*
 * separator      := [_.] | "__" | "-"+ */
static bool path_component_valid(const char *s, size_t len)
{
	size_t i = 0;
	if (len == 0 || !is_lower_alnum(s[0]) || !is_lower_alnum(s[len - 1]))
		return false;
	while (i < len) {
		if (is_lower_alnum(s[i])) {
			i++;
			continue;
		}
		size_t sep = i;
		if (s[i] == '.' || s[i] == '_') {
			i++;
			if (s[sep] == '_' && i < len && s[i] == '_')
				i++;
		} else if (s[i] == '-') {
			while (i < len && s[i] == '-')
				i++;
		} else {
			return false;
		}
		if (i >= len || !is_lower_alnum(s[i]))
			return false;
	}
	return true;
}

static bool domain_component_valid(const char *s, size_t len)
{
	if (len == 0 || !isalnum((unsigned char)s[0]) || !isalnum((unsigned char)s[len - 1]))
		return false;
	for (size_t i = 0; i < len; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '-')
			return false;
	return true;
}

static bool port_valid(const char *s, size_t len)
{
	if (len == 0 || len > 5)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!isdigit((unsigned char)s[i]))
			return false;
	return true;
}

/* domain := host (":" port)?; host := domain-components joined by "." | "[" ipv6 "]" */
static bool domain_valid(const char *s, size_t len)
{
	const char *end = s + len;
	const char *host_end;
	if (len > 0 && s[0] == '[') {
		const char *close = memchr(s, ']', len);
		if (!close || close == s + 1)
			return false;
		for (const char *p = s + 1; p < close; p++)
			if (!isxdigit((unsigned char)*p) && *p != ':' && *p != '.')
				return false;
		host_end = close + 1;
	} else {
		host_end = memchr(s, ':', len);
		if (!host_end)
			host_end = end;
		const char *p = s;
		while (p <= host_end) {
			const char *dot = memchr(p, '.', (size_t)(host_end - p));
			const char *comp_end = dot ? dot : host_end;
			if (!domain_component_valid(p, (size_t)(comp_end - p)))
				return false;
			p = comp_end + 1;
		}
	}
	if (host_end == end)
		return true;
	return *host_end == ':' && port_valid(host_end + 1, (size_t)(end - host_end - 1));
}

static bool tag_valid(const char *s)
{
	size_t len = strlen(s);
	if (len == 0 || len > 128)
		return false;
	if (!isalnum((unsigned char)s[0]) && s[0] != '_')
		return false;
	for (size_t i = 1; i < len; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-')
			return false;
	return true;
}

bool digest_is_valid(const char *digest)
{
	if (!str_has_prefix(digest, "sha256:") || strlen(digest) != DIGEST_SHA256_LEN)
		return false;
	for (const char *p = digest + 7; *p; p++)
		if (!isdigit((unsigned char)*p) && !(*p >= 'a' && *p <= 'f'))
			return false;
	return true;
}

void image_ref_done(struct image_ref *ref)
{
	free(ref->domain);
	free(ref->repository);
	free(ref->tag);
	free(ref->digest);
	memset(ref, 0, sizeof(*ref));
}

bool image_ref_has_domain(const char *text)
{
	/* The first component is a domain when it looks like a host. */
	const char *slash = strchr(text, '/');
	return slash && (memchr(text, '.', (size_t)(slash - text)) || memchr(text, ':', (size_t)(slash - text)) ||
			 (slash - text == 9 && strncmp(text, "localhost", 9) == 0) || text[0] == '[');
}

int image_ref_parse(const char *text, struct image_ref *ret, struct err *err)
{
	struct image_ref ref = { 0 };
	_cleanup_free_ char *copy = NULL;
	int r;

	if (!text || !*text)
		return err_set(err, EINVAL, "invalid reference \"\": empty");
	if (strlen(text) > 4096)
		return err_set(err, EINVAL, "invalid reference: longer than 4096 characters");
	copy = strdup(text);
	if (!copy)
		return -ENOMEM;

	char *at = strchr(copy, '@');
	if (at) {
		*at = '\0';
		if (!digest_is_valid(at + 1)) {
			r = err_set(err, EINVAL,
				    "invalid reference \"%s\": digest must be sha256:<64 lowercase hex digits>", text);
			goto fail;
		}
		ref.digest = strdup(at + 1);
	}

	char *remainder = copy;
	char *slash = strchr(copy, '/');
	if (image_ref_has_domain(copy)) {
		if (!domain_valid(copy, (size_t)(slash - copy))) {
			r = err_set(err, EINVAL, "invalid reference \"%s\": bad registry host", text);
			goto fail;
		}
		/* Docker Hub's old name is its name. */
		ref.domain = slash - copy == 15 && strncmp(copy, "index.docker.io", 15) == 0
				 ? strdup("docker.io")
				 : strndup(copy, (size_t)(slash - copy));
		remainder = slash + 1;
	} else {
		ref.domain = strdup("docker.io");
	}

	/* A tag is the part after a ':' in the last path component. */
	char *last = strrchr(remainder, '/');
	char *colon = strchr(last ? last : remainder, ':');
	if (colon) {
		*colon = '\0';
		if (!tag_valid(colon + 1)) {
			r = err_set(err, EINVAL, "invalid reference \"%s\": bad tag \"%s\"", text, colon + 1);
			goto fail;
		}
		ref.tag = strdup(colon + 1);
	}

	if (!*remainder) {
		r = err_set(err, EINVAL, "invalid reference \"%s\": missing repository name", text);
		goto fail;
	}
	for (char *p = remainder;;) {
		char *end = strchr(p, '/');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		if (!path_component_valid(p, len)) {
			r = err_set(err, EINVAL,
				    "invalid reference \"%s\": repository name must be lowercase letters, digits and "
				    "separators",
				    text);
			goto fail;
		}
		if (!end)
			break;
		p = end + 1;
	}

	if (strcmp(ref.domain, "docker.io") == 0 && !strchr(remainder, '/'))
		ref.repository = strdup_printf("library/%s", remainder);
	else
		ref.repository = strdup(remainder);
	if (!ref.tag && !ref.digest)
		ref.tag = strdup("latest");

	if (!ref.domain || !ref.repository || (!ref.tag && !ref.digest)) {
		r = -ENOMEM;
		goto fail;
	}
	if (strlen(ref.domain) + 1 + strlen(ref.repository) > NAME_MAX_LEN) {
		r = err_set(err, EINVAL, "invalid reference \"%s\": name longer than %d characters", text,
			    NAME_MAX_LEN);
		goto fail;
	}
	*ret = ref;
	return 0;
fail:
	image_ref_done(&ref);
	return r;
}

char *image_ref_format(const struct image_ref *ref)
{
	return strdup_printf("%s/%s%s%s%s%s", ref->domain, ref->repository, ref->tag ? ":" : "",
			     ref->tag ? ref->tag : "", ref->digest ? "@" : "", ref->digest ? ref->digest : "");
}

int image_ref_copy(const struct image_ref *from, struct image_ref *to)
{
	*to = (struct image_ref){ 0 };
	to->domain = strdup(from->domain);
	to->repository = strdup(from->repository);
	to->tag = from->tag ? strdup(from->tag) : NULL;
	to->digest = from->digest ? strdup(from->digest) : NULL;
	if (!to->domain || !to->repository || (from->tag && !to->tag) || (from->digest && !to->digest)) {
		image_ref_done(to);
		return -ENOMEM;
	}
	return 0;
}
