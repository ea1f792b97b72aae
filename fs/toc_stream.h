/* An eStargz TOC member parsed as its bytes arrive: the parse of a large
 * TOC then ends with its download instead of starting there (private to
 * fs/). */
#pragma once

#include "layer.h"

/* The TOC is trusted through the digest a verified manifest annotates it
 * with: 0 if actual is want, else -EBADMSG saying both. */
int toc_digest_matches(const char *actual, const char *want, struct err *err);

struct toc_stream;
/* Parses the member that will arrive in gz (from its start) into l, which
 * must be fresh; toc_off is where the member starts in the blob. */
struct toc_stream *toc_stream_new(const unsigned char *gz, struct layer *l, uint64_t toc_off);
/* registry_fetch_range_streaming()'s arrived: got bytes of gz are in. */
void toc_stream_arrived(void *ctx, size_t got);
/* Once all of gz is in: 0 when l holds the TOC, its JSON verified against
 * toc_digest; -EAGAIN when the stream gave up (a shape it does not take,
 * a request tried again), l is then to be thrown away and the member read
 * whole; or the error (-EBADMSG: another digest).  *ret_verified: the JSON
 * matched toc_digest (an error after is the TOC's own). */
int toc_stream_finish(struct toc_stream *s, const char *toc_digest, bool *ret_verified, struct err *err);
struct toc_stream *toc_stream_free(struct toc_stream *s);
