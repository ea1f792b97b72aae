/* Responses and their body writers: see response.h. */
#include "response.h"

#include <ctype.h>

static void headers_clear(struct response *r)
{
	free(r->www_authenticate);
	free(r->content_type);
	free(r->docker_digest);
	free(r->location);
	free(r->content_range);
	free(r->effective_url);
	r->www_authenticate = r->content_type = r->docker_digest = r->location = r->content_range = NULL;
	r->effective_url = NULL;
	r->retry_after = 0;
}

/* ---- memory --------------------------------------------------------------- */

static size_t memory_write(struct response *r, const char *buf, size_t len)
{
	size_t max = r->writer ? ERROR_BODY_MAX_SIZE : r->body_max;
	if (r->body_len + len > max) {
		r->too_big = true;
		return 0;
	}
	if (r->body_len + len + 1 > r->body_cap) {
		size_t cap = r->body_cap ? r->body_cap : 4096;
		while (cap < r->body_len + len + 1)
			cap *= 2;
		char *p = realloc(r->body, cap);
		if (!p)
			return 0;
		r->body = p;
		r->body_cap = cap;
	}
	memcpy(r->body + r->body_len, buf, len);
	r->body_len += len;
	r->body[r->body_len] = '\0';
	return len;
}

void response_to_memory(struct response *r, size_t max)
{
	*r = (struct response){ .body_max = max };
}

/* ---- a file, through a digester ------------------------------------------- */

static int file_start_over(struct response *r)
{
	if (ftruncate(r->file.fd, 0) < 0 || lseek(r->file.fd, 0, SEEK_SET) < 0)
		return -errno;
	if (r->file.digester) {
		char discard[DIGEST_SHA256_LEN + 1];
		digester_final(r->file.digester, discard);
	}
	r->file.written = 0;
	if (r->file.arrived)
		r->file.arrived(r->file.arrived_ctx, 0);
	return 0;
}

/* The first bytes of an attempt that asked to resume: a 206 from where the
 * file stops continues it; a 200 (the server ignored the Range) replaces
 * it; a range from anywhere else is dropped, and the short file makes the
 * caller fetch again from the start. */
static bool file_resume_answer(struct response *r)
{
	unsigned long long start;
	if (r->status == 206 && r->content_range && sscanf(r->content_range, " bytes %llu-", &start) == 1 &&
	    start == r->file.resume_from)
		return true;
	r->file.discarding = r->status == 206;
	int e = file_start_over(r);
	if (e < 0)
		r->write_errno = -e;
	return e == 0;
}

static size_t file_write(struct response *r, const char *buf, size_t len)
{
	if (!r->file.attempt_started) {
		r->file.attempt_started = true;
		if (r->file.resume_from && !file_resume_answer(r))
			return 0;
	}
	if (r->file.discarding)
		return len;
	if (r->file.max >= 0 && r->file.written + len > (uint64_t)r->file.max) {
		r->too_big = true;
		return 0;
	}
	int e = write_full(r->file.fd, buf, len);
	if (e < 0) {
		r->write_errno = -e;
		return 0;
	}
	if (r->file.digester)
		digester_update(r->file.digester, buf, len);
	r->file.written += len;
	if (r->file.arrived)
		r->file.arrived(r->file.arrived_ctx, r->file.written);
	return len;
}

/* A body broken off midway is continued, not fetched again: a layer of
 * hundreds of MB on a link that drops now and then would otherwise never
 * complete.  A complete body (its digest did not match) starts over. */
static int file_restart(struct response *r)
{
	r->file.attempt_started = r->file.discarding = false;
	r->file.resume_from = 0;
	if (r->file.written > 0 && r->file.max > 0 && r->file.written < (uint64_t)r->file.max) {
		r->file.resume_from = r->file.written;
		snprintf(r->resume_range, sizeof(r->resume_range), "Range: bytes=%llu-",
			 (unsigned long long)r->file.written);
		return 0;
	}
	return file_start_over(r);
}

static const struct body_writer file_writer = { .write = file_write, .restart = file_restart };

void response_to_file(struct response *r, int fd, int64_t max, struct digester *digester)
{
	*r = (struct response){ .writer = &file_writer, .file = { .fd = fd, .max = max, .digester = digester } };
}

/* ---- one range ------------------------------------------------------------ */

static size_t range_write(struct response *r, const char *buf, size_t len)
{
	size_t whole = len;
	if (r->status != 206 && r->status != 200)
		return memory_write(r, buf, len);
	/* A 200 means the server ignored the Range header: drop what comes
	 * before the range and stop once it has arrived. */
	if (r->status == 200 && r->range.skip > 0) {
		size_t drop = r->range.skip < len ? (size_t)r->range.skip : len;
		r->range.skip -= drop;
		buf += drop;
		len -= drop;
		if (len == 0)
			return whole;
	}
	size_t room = r->range.len - r->range.got;
	if (len > room) {
		if (r->status == 206) {
			r->too_big = true;
			return 0;
		}
		len = room;
	}
	memcpy(r->range.buf + r->range.got, buf, len);
	r->range.got += len;
	if (r->range.arrived)
		r->range.arrived(r->range.arrived_ctx, r->range.got);
	if (r->status == 200 && r->range.got == r->range.len) {
		r->stopped_early = true;
		return 0;
	}
	return whole;
}

static int range_restart(struct response *r)
{
	r->range.got = 0;
	r->range.skip = r->range.off;
	return 0;
}

static const struct body_writer range_writer = { .write = range_write, .restart = range_restart };

void response_to_range(struct response *r, void *buf, size_t len, uint64_t off)
{
	*r = (struct response){ .writer = &range_writer, .range = { .buf = buf, .len = len, .off = off, .skip = off } };
}

/* ---- several ranges ------------------------------------------------------- */

/* Parts, or a single range, or (a 200) the whole blob, which is not worth
 * reading for a few ranges. */
static size_t ranges_write(struct response *r, const char *buf, size_t len)
{
	if (r->status != 206 && r->status != 200)
		return memory_write(r, buf, len);
	if (r->status == 206 && !r->multi.parser)
		r->multi.parser = r->content_range
				      ? byteranges_new_single(r->content_range, r->multi.ranges, r->multi.n)
				      : byteranges_new(r->content_type, r->multi.ranges, r->multi.n);
	if (r->status != 206 || !r->multi.parser || byteranges_feed(r->multi.parser, buf, len) < 0) {
		r->stopped_early = true;
		return 0;
	}
	if (r->multi.arrived)
		r->multi.arrived(r->multi.arrived_ctx);
	return len;
}

static int ranges_restart(struct response *r)
{
	byteranges_free(r->multi.parser);
	r->multi.parser = NULL;
	for (size_t i = 0; i < r->multi.n; i++)
		r->multi.ranges[i].got = 0;
	return 0;
}

static const struct body_writer ranges_writer = { .write = ranges_write, .restart = ranges_restart };

void response_to_ranges(struct response *r, struct byterange *ranges, size_t n)
{
	*r = (struct response){ .writer = &ranges_writer, .multi = { .ranges = ranges, .n = n } };
}

/* ---- the exchange --------------------------------------------------------- */

int response_restart(struct response *r)
{
	r->resume_range[0] = '\0';
	headers_clear(r);
	free(r->body);
	r->body = NULL;
	r->body_len = r->body_cap = 0;
	r->status = 0;
	r->too_big = r->stopped_early = false;
	r->write_errno = 0;
	return r->writer ? r->writer->restart(r) : 0;
}

void response_done(struct response *r)
{
	headers_clear(r);
	free(r->body);
	r->body = NULL;
	byteranges_free(r->multi.parser);
	r->multi.parser = NULL;
}

size_t response_header_cb(char *buf, size_t size, size_t n, void *userdata)
{
	struct response *r = userdata;
	size_t len = size * n;
	char **slot = NULL;
	size_t name_len = 0;

	/* A redirect or a 100-continue starts a new header block. */
	if (len > 5 && strncmp(buf, "HTTP/", 5) == 0) {
		headers_clear(r);
		const char *sp = memchr(buf, ' ', len);
		r->status = sp ? strtol(sp + 1, NULL, 10) : 0;
		return len;
	}
	if (len > 17 && strncasecmp(buf, "WWW-Authenticate:", 17) == 0)
		slot = &r->www_authenticate, name_len = 17;
	else if (len > 13 && strncasecmp(buf, "Content-Type:", 13) == 0)
		slot = &r->content_type, name_len = 13;
	else if (len > 22 && strncasecmp(buf, "Docker-Content-Digest:", 22) == 0)
		slot = &r->docker_digest, name_len = 22;
	else if (len > 9 && strncasecmp(buf, "Location:", 9) == 0)
		slot = &r->location, name_len = 9;
	else if (len > 14 && strncasecmp(buf, "Content-Range:", 14) == 0)
		slot = &r->content_range, name_len = 14;
	else if (len > 12 && strncasecmp(buf, "Retry-After:", 12) == 0) {
		char tmp[32];
		size_t l = len - 12 < sizeof(tmp) - 1 ? len - 12 : sizeof(tmp) - 1;
		memcpy(tmp, buf + 12, l);
		tmp[l] = '\0';
		r->retry_after = strtol(tmp, NULL, 10);
		return len;
	}
	if (!slot || *slot)
		return len;
	const char *v = buf + name_len, *end = buf + len;
	while (v < end && isspace((unsigned char)*v))
		v++;
	while (end > v && isspace((unsigned char)end[-1]))
		end--;
	*slot = strndup(v, (size_t)(end - v));
	return len;
}

/* The writer needs the status, which the header block gave before the body. */
size_t response_body_cb(char *buf, size_t size, size_t n, void *userdata)
{
	struct response *r = userdata;
	size_t len = size * n;
	if (r->writer && r->status >= 200 && r->status < 300)
		return r->writer->write(r, buf, len);
	return memory_write(r, buf, len);
}
