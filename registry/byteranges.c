/* multipart/byteranges (RFC 9110, section 14.6): the answer to a Range
 * request for several ranges.  Parsed as it streams, so that a response
 * never has to fit in memory; each part's bytes go straight to the buffers
 * of the ranges they cover.  Parts must come in ascending order without
 * overlapping and inside the span asked for: then a range's byte count says
 * whether it is complete, and a hostile server cannot make us accept more
 * than we asked for. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "registry.h"

#define BOUNDARY_MAX 70    /* RFC 2046 */
#define LINE_MAX_LEN 1024  /* a header line, a delimiter, a line of preamble */
#define NON_DATA_MAX 65536 /* preamble and headers of one part together */

enum state { PREAMBLE, HEADERS, DATA, AFTER_DATA, END };

struct byteranges {
	struct byterange *ranges;
	size_t n;
	char boundary[BOUNDARY_MAX + 1];
	enum state state;
	char line[LINE_MAX_LEN];
	size_t line_len;
	size_t non_data; /* bytes outside part bodies since the last body */
	bool have_part_range;
	uint64_t part_pos, part_end; /* the part's body: [pos, end) in the blob */
	uint64_t floor;              /* where the next part may start */
	size_t cursor;               /* first range that may still take bytes */
};

/* "bytes FIRST-LAST/LENGTH", LENGTH perhaps "*", into [*start, *end). */
static int parse_content_range(const char *v, uint64_t *start, uint64_t *end)
{
	while (isspace((unsigned char)*v))
		v++;
	if (strncasecmp(v, "bytes", 5) != 0)
		return -EBADMSG;
	v += 5;
	while (isspace((unsigned char)*v))
		v++;
	if (!isdigit((unsigned char)*v))
		return -EBADMSG;
	char *p;
	errno = 0;
	unsigned long long first = strtoull(v, &p, 10);
	if (errno || *p != '-' || !isdigit((unsigned char)p[1]))
		return -EBADMSG;
	unsigned long long last = strtoull(p + 1, &p, 10);
	if (errno || *p != '/' || last < first || last == UINT64_MAX)
		return -EBADMSG;
	*start = first;
	*end = last + 1;
	return 0;
}

/* Starts a part covering [start, end) if it keeps to the rules above. */
static int begin_part(struct byteranges *b, uint64_t start, uint64_t end)
{
	uint64_t lo = b->ranges[0].off, hi = b->ranges[b->n - 1].off + b->ranges[b->n - 1].len;
	if (start < b->floor || start < lo || end > hi)
		return -EBADMSG;
	b->part_pos = start;
	b->part_end = end;
	b->floor = end;
	b->non_data = 0;
	b->state = DATA;
	return 0;
}

static void copy_body(struct byteranges *b, const unsigned char *data, size_t len)
{
	uint64_t pos = b->part_pos, end = pos + len;
	while (b->cursor < b->n && b->ranges[b->cursor].off + b->ranges[b->cursor].len <= pos)
		b->cursor++;
	for (size_t i = b->cursor; i < b->n && b->ranges[i].off < end; i++) {
		struct byterange *r = &b->ranges[i];
		uint64_t from = pos > r->off ? pos : r->off;
		uint64_t to = end < r->off + r->len ? end : r->off + r->len;
		if (from >= to)
			continue;
		memcpy(r->buf + (from - r->off), data + (from - pos), (size_t)(to - from));
		r->got += (size_t)(to - from);
	}
	b->part_pos = end;
}

static bool is_delimiter(const struct byteranges *b, const char *line, bool *closing)
{
	size_t bl = strlen(b->boundary);
	if (strncmp(line, "--", 2) != 0 || strncmp(line + 2, b->boundary, bl) != 0)
		return false;
	const char *rest = line + 2 + bl;
	*closing = strncmp(rest, "--", 2) == 0;
	if (*closing)
		rest += 2;
	/* Transport padding: linear white space after the boundary. */
	while (*rest == ' ' || *rest == '\t')
		rest++;
	return *rest == '\0';
}

static int handle_line(struct byteranges *b, const char *line)
{
	bool closing;
	switch (b->state) {
	case PREAMBLE:
	case AFTER_DATA:
		if (is_delimiter(b, line, &closing)) {
			b->state = closing ? END : HEADERS;
			b->have_part_range = false;
			return 0;
		}
		/* Between parts only the line break that ends a body may come. */
		return b->state == AFTER_DATA && line[0] != '\0' ? -EBADMSG : 0;
	case HEADERS:
		if (line[0] == '\0') {
			if (!b->have_part_range)
				return -EBADMSG;
			b->state = DATA;
			return 0;
		}
		if (strncasecmp(line, "Content-Range:", 14) == 0) {
			uint64_t start, end;
			if (b->have_part_range || parse_content_range(line + 14, &start, &end) < 0)
				return -EBADMSG;
			int r = begin_part(b, start, end);
			if (r < 0)
				return r;
			b->state = HEADERS; /* the body starts after the blank line */
			b->have_part_range = true;
		}
		return 0;
	case DATA: /* data is not split into lines */
	case END:
	default:
		break;
	}
	return 0;
}

struct byteranges *byteranges_new(const char *content_type, struct byterange *ranges, size_t n)
{
	if (!content_type || n == 0)
		return NULL;
	const char *v = content_type;
	while (isspace((unsigned char)*v))
		v++;
	if (strncasecmp(v, "multipart/byteranges", 20) != 0)
		return NULL;
	const char *param = strcasestr(v, "boundary=");
	if (!param)
		return NULL;
	param += 9;
	bool quoted = *param == '"';
	if (quoted)
		param++;
	size_t len = quoted ? strcspn(param, "\"") : strcspn(param, " \t;");
	if (len == 0 || len > BOUNDARY_MAX || (quoted && param[len] != '"'))
		return NULL;
	struct byteranges *b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	memcpy(b->boundary, param, len);
	b->ranges = ranges;
	b->n = n;
	byteranges_reset(b);
	return b;
}

struct byteranges *byteranges_new_single(const char *content_range, struct byterange *ranges, size_t n)
{
	uint64_t start, end;
	if (!content_range || n == 0 || parse_content_range(content_range, &start, &end) < 0)
		return NULL;
	struct byteranges *b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	b->ranges = ranges;
	b->n = n;
	byteranges_reset(b);
	if (begin_part(b, start, end) < 0) {
		free(b);
		return NULL;
	}
	b->boundary[0] = '\0'; /* no delimiters: the body is the part */
	return b;
}

void byteranges_reset(struct byteranges *b)
{
	for (size_t i = 0; i < b->n; i++)
		b->ranges[i].got = 0;
	b->state = PREAMBLE;
	b->line_len = 0;
	b->non_data = 0;
	b->have_part_range = false;
	b->floor = 0;
	b->cursor = 0;
}

int byteranges_feed(struct byteranges *b, const void *data, size_t len)
{
	const unsigned char *p = data;
	while (len > 0) {
		if (b->state == DATA) {
			uint64_t left = b->part_end - b->part_pos;
			size_t take = left < len ? (size_t)left : len;
			copy_body(b, p, take);
			p += take;
			len -= take;
			if (b->part_pos == b->part_end)
				b->state = b->boundary[0] ? AFTER_DATA : END;
			continue;
		}
		/* A single part has no epilogue; a multipart one's is ignored. */
		if (b->state == END && !b->boundary[0])
			return -EBADMSG;
		unsigned char ch = *p++;
		len--;
		if (++b->non_data > NON_DATA_MAX)
			return -EBADMSG;
		if (b->state == END)
			continue;
		if (ch != '\n') {
			if (b->line_len + 1 >= sizeof(b->line))
				return -EBADMSG;
			b->line[b->line_len++] = (char)ch;
			continue;
		}
		if (b->line_len > 0 && b->line[b->line_len - 1] == '\r')
			b->line_len--;
		b->line[b->line_len] = '\0';
		b->line_len = 0;
		int r = handle_line(b, b->line);
		if (r < 0)
			return r;
	}
	return 0;
}

int byteranges_finish(const struct byteranges *b)
{
	if (b->state == END)
		return 0;
	/* The closing delimiter may end the body without a line break. */
	bool closing;
	char last[LINE_MAX_LEN];
	memcpy(last, b->line, b->line_len);
	last[b->line_len] = '\0';
	return b->state == AFTER_DATA && is_delimiter(b, last, &closing) && closing ? 0 : -EBADMSG;
}

struct byteranges *byteranges_free(struct byteranges *b)
{
	free(b);
	return NULL;
}
