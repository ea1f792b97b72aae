/* Blobs: whole to memory or to a file, verified against their digest, and
 * byte ranges of them (one request for several where the registry allows). */
#include "client_internal.h"
#include "locations.h"
#include "response.h"

/* After bytes failed their digest: whether to fetch them again, and where:
 * on a new connection first, then at the next endpoint (a mirror that
 * serves bad bytes is left like one that is down). */
static bool fetch_again(struct registry_client *c, int *attempt, char **path, const char *digest)
{
	if (*attempt < DIGEST_ATTEMPTS) {
		c->fresh_connection = true;
		return true;
	}
	char *moved = client_move_on(c, NULL) == 0 ? strdup_printf("%s/blobs/%s", c->ref.repository, digest) : NULL;
	if (!moved)
		return false;
	free(*path);
	*path = moved;
	*attempt = 0;
	return true;
}

int registry_get_blob(struct registry_client *c, const char *digest, char **ret_data, size_t *ret_len, struct err *err)
{
	_cleanup_free_ char *path = strdup_printf("%s/blobs/%s", c->ref.repository, digest);
	if (!path)
		return -ENOMEM;
	char what[1024];
	snprintf(what, sizeof(what), "blob %s of \"%s/%s\"", digest, c->ref.domain, c->ref.repository);
	struct response resp;
	response_to_memory(&resp, c->max_document_size);
	int r;
	for (int attempt = 1;; attempt++) {
		r = registry_get(c, path, NULL, NULL, &resp, what, err);
		if (r < 0)
			goto out;
		char actual[DIGEST_SHA256_LEN + 1];
		digest_sha256(resp.body ? resp.body : "", resp.body_len, actual);
		if (strcmp(actual, digest) == 0)
			break;
		if (fetch_again(c, &attempt, &path, digest))
			continue;
		r = err_set(err, EBADMSG, "%s: content digest %s does not match (fetched %d times)", what, actual,
			    attempt);
		goto out;
	}
	if (!resp.body && !(resp.body = strdup(""))) {
		r = -ENOMEM;
		goto out;
	}
	*ret_data = TAKE_PTR(resp.body);
	*ret_len = resp.body_len;
out:
	response_done(&resp);
	return r;
}

int registry_fetch_blob_to_fd(struct registry_client *c, const char *digest, int64_t size, int fd, struct err *err)
{
	return registry_fetch_blob_streaming(c, digest, size, fd, NULL, NULL, err);
}

int registry_fetch_blob_streaming(struct registry_client *c, const char *digest, int64_t size, int fd,
				  void (*arrived)(void *ctx, uint64_t written), void *ctx, struct err *err)
{
	_cleanup_free_ char *path = strdup_printf("%s/blobs/%s", c->ref.repository, digest);
	char what[1024];
	snprintf(what, sizeof(what), "blob %s of \"%s/%s\"", digest, c->ref.domain, c->ref.repository);
	struct digester *d = digester_new();
	if (!path || !d) {
		digester_free(d);
		return -ENOMEM;
	}
	struct response resp;
	response_to_file(&resp, fd, size, d);
	resp.file.arrived = arrived;
	resp.file.arrived_ctx = ctx;
	c->progress_digest = digest;
	c->progress_total = (uint64_t)size;
	c->progress_last = (struct timespec){ 0 };
	int r;
	for (int attempt = 1;; attempt++) {
		r = registry_get(c, path, NULL, NULL, &resp, what, err);
		if (r < 0)
			break;
		char actual[DIGEST_SHA256_LEN + 1];
		digester_final(d, actual);
		if (resp.file.written == (uint64_t)size && strcmp(actual, digest) == 0)
			break;
		if (fetch_again(c, &attempt, &path, digest))
			continue;
		if (resp.file.written != (uint64_t)size)
			r = err_set(err, EBADMSG, "%s: got %llu bytes, the manifest says %lld (fetched %d times)", what,
				    (unsigned long long)resp.file.written, (long long)size, attempt);
		else
			r = err_set(err, EBADMSG, "%s: content digest %s does not match (fetched %d times)", what,
				    actual, attempt);
		break;
	}
	c->progress_digest = NULL;
	if (r == 0 && c->progress)
		c->progress(digest, resp.file.written, (uint64_t)size);
	response_done(&resp);
	digester_free(d);
	return r;
}

/* A GET of ranges of a blob (path: the registry's path of it): straight to
 * where the registry redirected it before (locations.h), else through the
 * registry, remembering where it redirects. */
static int get_ranges(struct registry_client *c, const char *path, const char *range, struct response *resp,
		      const char *what, struct err *err)
{
	_cleanup_free_ char *direct = blob_location_find(c->base_url, path);
	if (direct) {
		struct err ignored = { 0 };
		if (registry_get(c, direct, NULL, range, resp, what, &ignored) == 0)
			return 0;
		blob_location_forget(c->base_url, path, direct);
	}
	int r = registry_get(c, path, NULL, range, resp, what, err);
	if (r == 0 && resp->effective_url)
		blob_location_learn(c->base_url, path, resp->effective_url);
	return r;
}

int registry_fetch_range(struct registry_client *c, const char *digest, uint64_t off, size_t len, void *buf,
			 struct err *err)
{
	return registry_fetch_range_streaming(c, digest, off, len, buf, NULL, NULL, err);
}

int registry_fetch_range_streaming(struct registry_client *c, const char *digest, uint64_t off, size_t len, void *buf,
				   void (*arrived)(void *ctx, size_t got), void *ctx, struct err *err)
{
	if (len == 0)
		return 0;
	_cleanup_free_ char *path = strdup_printf("%s/blobs/%s", c->ref.repository, digest);
	char range[96], what[1024];
	snprintf(range, sizeof(range), "Range: bytes=%llu-%llu", (unsigned long long)off,
		 (unsigned long long)(off + len - 1));
	snprintf(what, sizeof(what), "blob %s of \"%s/%s\" bytes %llu-%llu", digest, c->ref.domain, c->ref.repository,
		 (unsigned long long)off, (unsigned long long)(off + len - 1));
	if (!path)
		return -ENOMEM;
	struct response resp;
	response_to_range(&resp, buf, len, off);
	resp.range.arrived = arrived;
	resp.range.arrived_ctx = ctx;
	int r = get_ranges(c, path, range, &resp, what, err);
	if (r == 0 && resp.range.got != len)
		r = err_set(err, EIO, "%s: got %zu bytes", what, resp.range.got);
	response_done(&resp);
	return r;
}

#define RANGES_PER_REQUEST 64 /* keeps the Range header near 2 KiB */

struct range_arrival {
	struct byterange *range;
	void (*arrived)(void *ctx);
	void *ctx;
};

static void range_arrived(void *ctx, size_t got)
{
	struct range_arrival *a = ctx;
	a->range->got = got;
	if (a->arrived)
		a->arrived(a->ctx);
}

/* Fetches the ranges that are not complete, one request each; returns how
 * many requests that took. */
static int fetch_ranges_alone(struct registry_client *c, const char *digest, struct byterange *ranges, size_t n,
			      void (*arrived)(void *ctx), void *ctx, struct err *err)
{
	int requests = 0;
	for (size_t i = 0; i < n; i++) {
		if (ranges[i].got == ranges[i].len)
			continue;
		struct range_arrival a = { &ranges[i], arrived, ctx };
		int r = registry_fetch_range_streaming(c, digest, ranges[i].off, ranges[i].len, ranges[i].buf,
						       range_arrived, &a, err);
		if (r < 0)
			return r;
		requests++;
	}
	return requests;
}

int registry_fetch_ranges(struct registry_client *c, const char *digest, struct byterange *ranges, size_t n,
			  struct err *err)
{
	return registry_fetch_ranges_streaming(c, digest, ranges, n, NULL, NULL, err);
}

int registry_fetch_ranges_streaming(struct registry_client *c, const char *digest, struct byterange *ranges, size_t n,
				    void (*arrived)(void *ctx), void *ctx, struct err *err)
{
	for (size_t i = 0; i < n; i++)
		ranges[i].got = 0;
	if (n > RANGES_PER_REQUEST) {
		int first = registry_fetch_ranges_streaming(c, digest, ranges, RANGES_PER_REQUEST, arrived, ctx, err);
		if (first < 0)
			return first;
		int rest = registry_fetch_ranges_streaming(c, digest, ranges + RANGES_PER_REQUEST,
							   n - RANGES_PER_REQUEST, arrived, ctx, err);
		return rest < 0 ? rest : first + rest;
	}
	if (n <= 1 || c->single_ranges)
		return fetch_ranges_alone(c, digest, ranges, n, arrived, ctx, err);

	_cleanup_free_ char *path = strdup_printf("%s/blobs/%s", c->ref.repository, digest);
	char header[32 + RANGES_PER_REQUEST * 42] = "Range: bytes=", what[1024];
	size_t used = strlen(header);
	for (size_t i = 0; i < n; i++) {
		if (ranges[i].len == 0 || (i > 0 && ranges[i].off < ranges[i - 1].off + ranges[i - 1].len))
			return err_set(err, EINVAL, "blob %s: ranges must be ascending, apart and not empty", digest);
		used += (size_t)snprintf(header + used, sizeof(header) - used, "%s%llu-%llu", i ? "," : "",
					 (unsigned long long)ranges[i].off,
					 (unsigned long long)(ranges[i].off + ranges[i].len - 1));
	}
	snprintf(what, sizeof(what), "blob %s of \"%s/%s\", %zu ranges from byte %llu", digest, c->ref.domain,
		 c->ref.repository, n, (unsigned long long)ranges[0].off);
	if (!path)
		return -ENOMEM;
	struct response resp;
	response_to_ranges(&resp, ranges, n);
	resp.multi.arrived = arrived;
	resp.multi.arrived_ctx = ctx;
	int r = get_ranges(c, path, header, &resp, what, err);
	/* A server that sent one range, or the whole blob, will do so again. */
	if (r == 0 && (resp.status == 200 || resp.content_range))
		c->single_ranges = true;
	response_done(&resp);
	if (r < 0)
		return r;
	int alone = fetch_ranges_alone(c, digest, ranges, n, arrived, ctx, err);
	return alone < 0 ? alone : 1 + alone;
}

int registry_check_credentials(const char *domain, const char *credentials, const struct registry_options *opts,
			       struct err *err)
{
	struct image_ref ref = { .domain = (char *)domain, .repository = (char *)"", .tag = (char *)"latest" };
	struct registry_client *c = NULL;
	int r = registry_client_new(&ref, opts, &c, err);
	if (r < 0)
		return r;
	if (c->credentials) {
		explicit_bzero(c->credentials, strlen(c->credentials));
		free(c->credentials);
	}
	c->credentials = credentials ? strdup(credentials) : NULL;
	free(c->credentials_source);
	c->credentials_source = strdup("the login");
	char what[512];
	snprintf(what, sizeof(what), "login to \"%s\"", domain);
	struct response resp;
	response_to_memory(&resp, 1u << 20);
	r = credentials && !c->credentials ? -ENOMEM : registry_request(c, "/v2/", NULL, NULL, NULL, &resp, what, err);
	response_done(&resp);
	registry_client_free(c);
	return r;
}
