/* The TOC member of an eStargz layer (a gzip member holding a tar of one
 * entry, stargz.index.json) inflated, hashed and parsed as it arrives:
 * libcurl's thread inflates and hashes, a thread of its own parses what
 * is in (toc_feed), and what it has not reached when the last byte is in
 * is parsed then, in two halves for a large rest.  Anything unusual gives
 * up, and the caller reads the member whole, as it did before. */
#include "toc_stream.h"

#include "registry.h"
#include "toc.h"

#include <zlib.h>

#define TAR_BLOCK 512
/* What the parser takes at a time: it looks for the stop between. */
#define PARSE_SLICE (256u << 10)

struct toc_stream {
	const unsigned char *gz; /* where the member's bytes arrive */
	size_t inflated_from;    /* of them, those inflated */
	z_stream z;
	bool z_open, z_done, gave_up;
	unsigned char header[TAR_BLOCK];
	size_t header_len;
	char *json; /* json_size bytes, allocated once the header is in */
	size_t json_size, json_len;
	struct digester *digester;
	struct toc_feed *feed;
	pthread_t parser;
	bool parser_started;
	pthread_mutex_t lock; /* over the two below */
	pthread_cond_t more;
	size_t ready; /* JSON bytes the parser may read */
	bool stop;
};

int toc_digest_matches(const char *actual, const char *want, struct err *err)
{
	if (strcmp(actual, want) != 0)
		return err_set(err, EBADMSG, "the TOC digest %s does not match the annotation %s", actual, want);
	return 0;
}

/* The size of stargz.index.json from the plain ustar header the eStargz
 * writers put before it; -1 for any other header. */
static int64_t toc_tar_header(const unsigned char *h)
{
	size_t name_len = strlen(TOC_NAME);
	if (memcmp(h + 257, "ustar", 5) != 0 || (h[156] != '0' && h[156] != '\0') || h[345] != '\0' ||
	    memcmp(h, TOC_NAME, name_len) != 0 || h[name_len] != '\0')
		return -1;
	int k = 124;
	while (k < 136 && h[k] == ' ')
		k++;
	uint64_t size = 0;
	for (; k < 136 && h[k] != '\0' && h[k] != ' '; k++) {
		if (h[k] < '0' || h[k] > '7' || size > TOC_MAX_SIZE)
			return -1;
		size = size * 8 + (uint64_t)(h[k] - '0');
	}
	return size <= TOC_MAX_SIZE ? (int64_t)size : -1;
}

static void *parser_main(void *arg)
{
	struct toc_stream *s = arg;
	size_t fed = 0;
	pthread_mutex_lock(&s->lock);
	for (;;) {
		while (!s->stop && s->ready == fed)
			pthread_cond_wait(&s->more, &s->lock);
		if (s->stop)
			break;
		fed = s->ready - fed > PARSE_SLICE ? fed + PARSE_SLICE : s->ready;
		pthread_mutex_unlock(&s->lock);
		toc_feed_text(s->feed, s->json, fed);
		pthread_mutex_lock(&s->lock);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

static void stop_parser(struct toc_stream *s)
{
	if (!s->parser_started)
		return;
	pthread_mutex_lock(&s->lock);
	s->stop = true;
	pthread_cond_signal(&s->more);
	pthread_mutex_unlock(&s->lock);
	pthread_join(s->parser, NULL);
	s->parser_started = false;
}

/* Where the next inflated bytes go: the header, the JSON, or (the tar's
 * padding and end blocks) nowhere kept. */
static void next_out(struct toc_stream *s, unsigned char *scratch, size_t scratch_len)
{
	if (s->header_len < TAR_BLOCK) {
		s->z.next_out = s->header + s->header_len;
		s->z.avail_out = (uInt)(TAR_BLOCK - s->header_len);
	} else if (s->json_len < s->json_size) {
		s->z.next_out = (Bytef *)s->json + s->json_len;
		s->z.avail_out =
		    (uInt)(s->json_size - s->json_len < UINT32_MAX ? s->json_size - s->json_len : UINT32_MAX);
	} else {
		s->z.next_out = scratch;
		s->z.avail_out = (uInt)scratch_len;
	}
}

/* Counts what inflate() wrote at out; false to give up. */
static bool took(struct toc_stream *s, const unsigned char *out, size_t n)
{
	if (s->header_len < TAR_BLOCK) {
		s->header_len += n;
		if (s->header_len < TAR_BLOCK)
			return true;
		int64_t size = toc_tar_header(s->header);
		if (size < 0 || !(s->json = malloc((size_t)size + 1)))
			return false;
		s->json_size = (size_t)size;
		s->parser_started = pthread_create(&s->parser, NULL, parser_main, s) == 0;
		return s->parser_started;
	}
	if (out == (const unsigned char *)s->json + s->json_len) {
		digester_update(s->digester, out, n);
		s->json_len += n;
		pthread_mutex_lock(&s->lock);
		s->ready = s->json_len;
		pthread_cond_signal(&s->more);
		pthread_mutex_unlock(&s->lock);
	}
	return true;
}

void toc_stream_arrived(void *ctx, size_t got)
{
	struct toc_stream *s = ctx;
	if (s->gave_up)
		return;
	if (got < s->inflated_from || (s->z_done && got > s->inflated_from)) {
		s->gave_up = true; /* tried again from the start, or a second member */
		return;
	}
	unsigned char scratch[TAR_BLOCK * 8];
	s->z.next_in = (Bytef *)(uintptr_t)(s->gz + s->inflated_from);
	s->z.avail_in = (uInt)(got - s->inflated_from);
	while (s->z.avail_in > 0 && !s->z_done && !s->gave_up) {
		next_out(s, scratch, sizeof(scratch));
		const unsigned char *out = s->z.next_out;
		uInt room = s->z.avail_out;
		int r = inflate(&s->z, Z_NO_FLUSH);
		s->z_done = r == Z_STREAM_END;
		s->gave_up = (r != Z_OK && r != Z_STREAM_END) || !took(s, out, room - s->z.avail_out);
	}
	s->inflated_from = got - s->z.avail_in;
	s->gave_up |= s->z_done && s->z.avail_in > 0;
}

struct toc_stream *toc_stream_new(const unsigned char *gz, struct layer *l, uint64_t toc_off)
{
	struct toc_stream *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->gz = gz;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->more, NULL);
	s->digester = digester_new();
	s->feed = toc_feed_new(l, toc_off);
	s->z_open = inflateInit2(&s->z, 16 + MAX_WBITS) == Z_OK;
	if (!s->digester || !s->feed || !s->z_open)
		return toc_stream_free(s);
	return s;
}

int toc_stream_finish(struct toc_stream *s, const char *toc_digest, bool *ret_verified, struct err *err)
{
	*ret_verified = false;
	stop_parser(s);
	if (s->gave_up || !s->z_done || !s->json || s->json_len != s->json_size)
		return -EAGAIN;
	char actual[DIGEST_SHA256_LEN + 1];
	digester_final(s->digester, actual);
	int r = toc_digest_matches(actual, toc_digest, err);
	if (r < 0)
		return r;
	*ret_verified = true;
	return toc_feed_finish(s->feed, s->json, s->json_size, err);
}

struct toc_stream *toc_stream_free(struct toc_stream *s)
{
	if (!s)
		return NULL;
	stop_parser(s);
	if (s->z_open)
		inflateEnd(&s->z);
	digester_free(s->digester);
	toc_feed_free(s->feed);
	free(s->json);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->more);
	free(s);
	return NULL;
}
