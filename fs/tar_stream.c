/* Decoders for the three layer compressions behind one cursor interface, and
 * random access into the uncompressed stream through checkpoints (the zran
 * technique for gzip: a saved inflate window every SPAN bytes of output). */
#include "tar_stream.h"

#include "cache.h"

#include <fcntl.h>
#include <inttypes.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <zlib.h>
#include <zstd.h>

#define GZIP_WINDOW_SIZE 32768u
/* Input pieces from a blob that is here (see DECODER_INPUT_PIECE): a
 * quarter as many reads while a whole layer is scanned. */
#define LOCAL_INPUT_PIECE (128u << 10)

struct cursor {
	struct layer *layer;
	enum layer_compression compression;
	uint64_t in_off; /* next compressed byte to read from the blob */
	uint64_t pos;    /* uncompressed offset of the next output byte */
	bool eof;
	bool valid;
	unsigned last_used;
	unsigned char *in_buf;
	size_t in_len, in_pos;
	/* gzip */
	z_stream z;
	bool z_ready;
	bool z_raw;
	/* zstd */
	ZSTD_DCtx *zstd;
	bool zstd_frame_done; /* at a frame boundary */
};

/* The compressed blob, from wherever the layer's source keeps it. */
static int blob_read(struct layer *l, void *buf, size_t len, uint64_t off)
{
	return l->ops->read_blob(l, buf, len, off);
}

int checkpoint_add(struct checkpoint_recorder *rec, const struct checkpoint *cp, const void *window, size_t len)
{
	if (grow_array((void **)&rec->checkpoints, &rec->allocated, rec->n + 1, sizeof(*cp)) < 0)
		return -ENOMEM;
	struct checkpoint *slot = &rec->checkpoints[rec->n];
	*slot = *cp;
	slot->window = NULL;
	slot->window_len = 0;
	if (len && rec->keep_window) {
		int r = rec->keep_window(rec->keep_ctx, slot, window, len);
		if (r < 0)
			return r;
	} else if (len) {
		slot->window = malloc(len);
		if (!slot->window)
			return -ENOMEM;
		memcpy(slot->window, window, len);
		slot->window_len = (uint32_t)len;
	}
	rec->n++;
	return 0;
}

static int fill_input(struct cursor *c)
{
	if (c->in_pos < c->in_len)
		return 1;
	if (c->in_off >= c->layer->blob_size)
		return 0;
	size_t want = c->layer->blob_fd >= 0 ? LOCAL_INPUT_PIECE : DECODER_INPUT_PIECE;
	if (c->layer->blob_size - c->in_off < want)
		want = (size_t)(c->layer->blob_size - c->in_off);
	int r = blob_read(c->layer, c->in_buf, want, (off_t)c->in_off);
	if (r < 0)
		return r == -ENODATA ? -EIO : r;
	c->in_len = want;
	c->in_pos = 0;
	c->in_off += want;
	return 1;
}

/* A raw checkpoint whose window is not in memory: its source fetches it. */
static bool window_elsewhere(const struct checkpoint *cp)
{
	return cp->raw && cp->window_len && !cp->window;
}

static bool span_copy(const struct layer *l, size_t idx, uint64_t span_start, void *buf, size_t len, uint64_t off);
static bool span_decoded(const struct layer *l, size_t idx);

/* cp's window from the span before it, when a read decoded that: the last
 * window_len bytes before a checkpoint are its window.  A file read on past
 * a checkpoint, or the next file of a directory, then costs no window. */
static bool window_from_span_before(const struct layer *l, const struct checkpoint *cp, unsigned char *out)
{
	size_t idx = (size_t)(cp - l->checkpoints);
	if (idx == 0 || cp->out - l->checkpoints[idx - 1].out < cp->window_len)
		return false;
	return span_copy(l, idx - 1, l->checkpoints[idx - 1].out, out, cp->window_len, cp->out - cp->window_len);
}

/* Whether starting at cp costs a request for its window.  Not when the
 * source has it at hand (fetched ahead with the blob after it), nor when
 * the span before it is decoded (its last bytes are the window); a cursor
 * behind is then not preferred, as it would need the blob between, which
 * nothing may have fetched. */
static bool window_costs_request(struct layer *l, const struct checkpoint *cp)
{
	return window_elsewhere(cp) && !(l->ops && l->ops->window_at_hand && l->ops->window_at_hand(l, cp)) &&
	       !(cp > l->checkpoints && span_decoded(l, (size_t)(cp - l->checkpoints) - 1));
}

static int gzip_setup(struct cursor *c, const struct checkpoint *cp)
{
	int r;
	if (c->z_ready) {
		inflateEnd(&c->z);
		c->z_ready = false;
	}
	memset(&c->z, 0, sizeof(c->z));
	c->in_off = cp->in;
	c->in_len = c->in_pos = 0;
	c->z_raw = cp->raw;
	/* A window kept apart is asked for first: its source then requests
	 * the bytes after the checkpoint at the same time. */
	unsigned char fetched[GZIP_WINDOW_SIZE];
	const unsigned char *window = cp->window;
	if (window_elsewhere(cp)) {
		if (cp->window_len > sizeof(fetched))
			return -EIO;
		if (!window_from_span_before(c->layer, cp, fetched)) {
			if (!c->layer->ops || !c->layer->ops->read_window)
				return -EIO;
			if ((r = c->layer->ops->read_window(c->layer, cp, fetched)) < 0)
				return r;
		}
		window = fetched;
	}
	if (inflateInit2(&c->z, cp->raw ? -15 : 15 + 32) != Z_OK)
		return -ENOMEM;
	c->z_ready = true;
	if (cp->raw) {
		if (cp->bits) {
			/* The block starts inside the byte before cp->in. */
			unsigned char byte;
			r = blob_read(c->layer, &byte, 1, (off_t)cp->in - 1);
			if (r < 0)
				return r == -ENODATA ? -EIO : r;
			if (inflatePrime(&c->z, cp->bits, byte >> (8 - cp->bits)) != Z_OK)
				return -EIO;
		}
		if (cp->window_len && inflateSetDictionary(&c->z, window, cp->window_len) != Z_OK)
			return -EIO;
	}
	return 0;
}

/* A gzip stream may hold several members (eStargz is made of them).  After
 * one ends, decoding goes on with the next if its magic follows. */
static int gzip_next_member(struct cursor *c)
{
	if (c->z_raw) {
		/* A raw inflate stops before the 8-byte trailer. */
		for (int skip = 8; skip > 0;) {
			int r = fill_input(c);
			if (r <= 0)
				return r < 0 ? r : -EIO;
			size_t n = c->in_len - c->in_pos < (size_t)skip ? c->in_len - c->in_pos : (size_t)skip;
			c->in_pos += n;
			skip -= (int)n;
		}
	}
	int r = fill_input(c);
	if (r < 0)
		return r;
	if (r == 0)
		return 0;
	/* Need two bytes of magic; they may straddle the input buffer. */
	unsigned char magic[2];
	uint64_t at = c->in_off - (c->in_len - c->in_pos);
	if (at + 2 > c->layer->blob_size || blob_read(c->layer, magic, 2, (off_t)at) < 0 || magic[0] != 0x1f ||
	    magic[1] != 0x8b)
		return 0; /* trailing padding or garbage: gzip(1) ignores it too */
	inflateEnd(&c->z);
	memset(&c->z, 0, sizeof(c->z));
	if (inflateInit2(&c->z, 15 + 32) != Z_OK) {
		c->z_ready = false;
		return -ENOMEM;
	}
	c->z_raw = false;
	return 1;
}

/* Decodes up to len bytes; records checkpoints through rec when non-NULL. */
static ssize_t gzip_read(struct cursor *c, unsigned char *out, size_t len, struct checkpoint_recorder *rec)
{
	size_t produced = 0;
	while (produced < len && !c->eof) {
		int r = fill_input(c);
		if (r < 0)
			return r;
		if (r == 0)
			return -EIO; /* the stream ended before the deflate data did */
		c->z.next_in = c->in_buf + c->in_pos;
		c->z.avail_in = (uInt)(c->in_len - c->in_pos);
		c->z.next_out = out + produced;
		c->z.avail_out = (uInt)(len - produced);
		int zr = inflate(&c->z, rec ? Z_BLOCK : Z_NO_FLUSH);
		size_t used = (c->in_len - c->in_pos) - c->z.avail_in;
		size_t made = (len - produced) - c->z.avail_out;
		c->in_pos += used;
		produced += made;
		c->pos += made;
		if (zr == Z_STREAM_END) {
			r = gzip_next_member(c);
			if (r < 0)
				return r;
			if (r == 0)
				c->eof = true;
			continue;
		}
		if (zr == Z_BUF_ERROR && used == 0 && made == 0)
			continue; /* needs more input; fill_input will say if there is none */
		if (zr != Z_OK)
			return -EBADMSG;
		if (rec && (c->z.data_type & 128) && !(c->z.data_type & 64) && !(c->z.data_type & 256) &&
		    checkpoint_due(rec, c->pos)) {
			struct checkpoint cp = {
				.in = c->in_off - (c->in_len - c->in_pos),
				.out = c->pos,
				.bits = (uint8_t)(c->z.data_type & 7),
				.raw = true,
			};
			unsigned char window[GZIP_WINDOW_SIZE];
			uInt wlen = sizeof(window);
			if (inflateGetDictionary(&c->z, window, &wlen) != Z_OK)
				return -EIO;
			r = checkpoint_add(rec, &cp, window, wlen);
			if (r < 0)
				return r;
		}
	}
	return (ssize_t)produced;
}

static int zstd_setup(struct cursor *c, const struct checkpoint *cp)
{
	if (!c->zstd && !(c->zstd = ZSTD_createDCtx()))
		return -ENOMEM;
	ZSTD_DCtx_reset(c->zstd, ZSTD_reset_session_only);
	/* Bound the window a hostile frame can make us allocate (128 MiB). */
	ZSTD_DCtx_setParameter(c->zstd, ZSTD_d_windowLogMax, 27);
	c->in_off = cp->in;
	c->in_len = c->in_pos = 0;
	c->zstd_frame_done = true;
	return 0;
}

static ssize_t zstd_read(struct cursor *c, unsigned char *out, size_t len, struct checkpoint_recorder *rec)
{
	size_t produced = 0;
	while (produced < len && !c->eof) {
		int r = fill_input(c);
		if (r < 0)
			return r;
		if (r == 0) {
			if (!c->zstd_frame_done)
				return -EIO; /* truncated frame */
			c->eof = true;
			break;
		}
		if (rec && c->zstd_frame_done && checkpoint_due(rec, c->pos)) {
			struct checkpoint cp = { .in = c->in_off - (c->in_len - c->in_pos), .out = c->pos };
			r = checkpoint_add(rec, &cp, NULL, 0);
			if (r < 0)
				return r;
		}
		ZSTD_inBuffer in = { c->in_buf, c->in_len, c->in_pos };
		ZSTD_outBuffer o = { out, len, produced };
		size_t zr = ZSTD_decompressStream(c->zstd, &o, &in);
		if (ZSTD_isError(zr))
			return -EBADMSG;
		c->in_pos = in.pos;
		c->pos += o.pos - produced;
		produced = o.pos;
		/* 0 means a frame was completely decoded and flushed. */
		c->zstd_frame_done = zr == 0;
	}
	return (ssize_t)produced;
}

static ssize_t plain_read(struct cursor *c, unsigned char *out, size_t len)
{
	uint64_t left = c->layer->blob_size - c->pos;
	if (len > left)
		len = (size_t)left;
	if (len == 0) {
		c->eof = true;
		return 0;
	}
	int r = blob_read(c->layer, out, len, (off_t)c->pos);
	if (r < 0)
		return r == -ENODATA ? -EIO : r;
	c->pos += len;
	return (ssize_t)len;
}

/* A cursor's setup and teardown, whether it stands alone (the scan) or sits
 * in a layer's cursor array. */
static int cursor_init(struct cursor *c, struct layer *l)
{
	c->layer = l;
	c->compression = l->compression;
	c->in_buf = malloc(LOCAL_INPUT_PIECE);
	return c->in_buf ? 0 : -ENOMEM;
}

static void cursor_release(struct cursor *c)
{
	if (c->z_ready)
		inflateEnd(&c->z);
	ZSTD_freeDCtx(c->zstd);
	free(c->in_buf);
}

struct cursor *cursor_new(struct layer *l)
{
	struct cursor *c = calloc(1, sizeof(*c));
	if (c && cursor_init(c, l) < 0) {
		free(c);
		return NULL;
	}
	return c;
}

void cursor_free(struct cursor *c)
{
	if (!c)
		return;
	cursor_release(c);
	free(c);
}

int cursor_seek_checkpoint(struct cursor *c, const struct checkpoint *cp)
{
	int r = 0;
	c->eof = false;
	c->pos = cp->out;
	c->valid = false;
	if (c->compression == COMPRESSION_GZIP)
		r = gzip_setup(c, cp);
	else if (c->compression == COMPRESSION_ZSTD)
		r = zstd_setup(c, cp);
	if (r == 0)
		c->valid = true;
	return r;
}

ssize_t cursor_read(struct cursor *c, void *out, size_t len, struct checkpoint_recorder *rec)
{
	ssize_t n;
	if (!c->valid)
		return -EIO;
	switch (c->compression) {
	case COMPRESSION_GZIP:
		n = gzip_read(c, out, len, rec);
		break;
	case COMPRESSION_ZSTD:
		n = zstd_read(c, out, len, rec);
		break;
	default:
		n = plain_read(c, out, len);
		break;
	}
	if (n < 0)
		c->valid = false;
	return n;
}

uint64_t cursor_position(const struct cursor *c)
{
	return c->pos;
}

/* ---- random access -------------------------------------------------------- */

#define CURSORS_PER_LAYER 4
#define DISCARD_CHUNK (64u << 10)
/* Decoding 1 MiB costs a few milliseconds; fetching a window, a round trip. */
#define DECODE_ON_RATHER_THAN_FETCH (1u << 20)
/* ... and from a checkpoint whose window is at hand, over blob bytes that
 * are here or coming anyway, a little more: the decoded spans between are
 * kept, and are usually read next (tools/bench-link, foreign row: 1, 2 and
 * 4 MiB measured 4.45, 4.41 and 4.36 s, 124, 122 and 119 requests). */
#define DECODE_ON_RATHER_THAN_WINDOW (2u << 20)

/* Whether cursor c lies at most that far before off. */
static bool close_behind(const struct cursor *c, uint64_t off)
{
	return c->valid && c->pos <= off && off - c->pos <= DECODE_ON_RATHER_THAN_FETCH;
}

const struct checkpoint *layer_checkpoint_before(const struct layer *l, uint64_t off)
{
	size_t lo = 0, hi = l->n_checkpoints;
	/* checkpoints[0].out == 0 always; find the last with out <= off. */
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;
		if (l->checkpoints[mid].out <= off)
			lo = mid;
		else
			hi = mid;
	}
	return &l->checkpoints[lo];
}

size_t layer_checkpoints_before_in(const struct layer *l, uint64_t in)
{
	size_t lo = 0, hi = l->n_checkpoints;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (l->checkpoints[mid].in < in)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

void layer_compressed_range(const struct layer *l, uint64_t off, uint64_t len, uint64_t *ret_in, uint64_t *ret_end)
{
	if (l->compression == COMPRESSION_NONE || l->n_checkpoints == 0) {
		*ret_in = off;
		*ret_end = off + len;
		return;
	}
	const struct checkpoint *cp = layer_checkpoint_before(l, off);
	/* A block that starts inside a byte needs that byte too. */
	*ret_in = cp->in > 0 && cp->bits ? cp->in - 1 : cp->in;
	*ret_end = l->blob_size;
	for (size_t k = (size_t)(cp - l->checkpoints) + 1; k < l->n_checkpoints; k++)
		if (l->checkpoints[k].out >= off + len) {
			/* A decoder reads its input a piece at a time. */
			uint64_t end = l->checkpoints[k].in + DECODER_INPUT_PIECE;
			*ret_end = end < l->blob_size ? end : l->blob_size;
			break;
		}
}

/* Picks a cursor already positioned in [checkpoint, off], else the least
 * recently used one, reset to the checkpoint.  Caller holds l->lock. */
/* The cursor a decode from off (after checkpoint cp) goes on from, NULL
 * when it starts at cp: one between cp and off, else one a little behind
 * when cp's window is a request to its source (a read the kernel's
 * read-ahead sent ahead of the one before it, say).  Whether the source
 * has it at hand is asked only when such a cursor exists: it is a look
 * into the cache.  l->lock is held. */
static struct cursor *cursor_going_on(struct layer *l, const struct checkpoint *cp, uint64_t off)
{
	bool window_away = window_elsewhere(cp);
	struct cursor *behind = NULL;
	for (int i = 0; l->cursors && i < CURSORS_PER_LAYER; i++) {
		struct cursor *c = &l->cursors[i];
		if (c->valid && c->pos >= cp->out && c->pos <= off)
			return c;
		if (window_away && close_behind(c, off) && (!behind || c->pos > behind->pos))
			behind = c;
	}
	return behind && window_costs_request(l, cp) ? behind : NULL;
}

static int cursor_for(struct layer *l, uint64_t off, struct cursor **ret)
{
	const struct checkpoint *cp = layer_checkpoint_before(l, off);
	struct cursor *lru = NULL;
	int r;

	if (!l->cursors) {
		l->cursors = calloc(CURSORS_PER_LAYER, sizeof(struct cursor));
		if (!l->cursors)
			return -ENOMEM;
	}
	if ((*ret = cursor_going_on(l, cp, off)))
		return 0;
	for (int i = 0; i < CURSORS_PER_LAYER; i++) {
		struct cursor *c = &l->cursors[i];
		/* Prefer a slot never used, then the least recently used. */
		if (!lru || (lru->in_buf && (!c->in_buf || c->last_used < lru->last_used)))
			lru = c;
	}
	if (!lru->in_buf && cursor_init(lru, l) < 0)
		return -ENOMEM;
	r = cursor_seek_checkpoint(lru, cp);
	if (r < 0)
		return r;
	*ret = lru;
	return 0;
}

/* Decodes len bytes at off through the layer's cursors; l->lock is held. */
static int decode_locked(struct layer *l, void *buf, size_t len, uint64_t off)
{
	struct cursor *c;
	int r = cursor_for(l, off, &c);
	if (r < 0)
		return r;
	c->last_used = ++l->cursor_clock;
	while (c->pos < off) {
		unsigned char discard[DISCARD_CHUNK];
		uint64_t gap = off - c->pos;
		ssize_t n = cursor_read(c, discard, gap < sizeof(discard) ? (size_t)gap : sizeof(discard), NULL);
		if (n <= 0)
			return n < 0 ? (int)n : -EIO;
	}
	for (size_t done = 0; done < len;) {
		ssize_t n = cursor_read(c, (char *)buf + done, len - done, NULL);
		if (n <= 0)
			return n < 0 ? (int)n : -EIO;
		done += (size_t)n;
	}
	return 0;
}

static int decode_at(struct layer *l, void *buf, size_t len, uint64_t off)
{
	pthread_mutex_lock(&l->lock);
	int r = decode_locked(l, buf, len, off);
	pthread_mutex_unlock(&l->lock);
	return r;
}

/* ---- decoded spans ----------------------------------------------------------
 * Programs fault pages of mapped libraries in at random; without this, each
 * fault would decode from the checkpoint before it, about a span's worth.  A
 * small process-wide LRU of decoded spans turns that into one decode per span;
 * a layer that is here whole also keeps them in the cache (decoded_keep_later)
 * and reads them back from there, in this mount and the next.  span_lock
 * guards the list and every span's bytes while they are copied. */

#define SPAN_CACHE_BUDGET (24u << 20)
#define SPAN_CACHE_MAX_SPAN (4u << 20)

struct decoded_span {
	const struct layer *layer;
	size_t index;
	unsigned char *data;
	size_t len;
	uint64_t last_used;
	struct decoded_span *next;
};

static pthread_mutex_t span_lock = PTHREAD_MUTEX_INITIALIZER;
static struct decoded_span *spans;
static size_t span_bytes;
static uint64_t span_clock;

static void span_evict_locked(size_t need)
{
	while (spans && span_bytes + need > SPAN_CACHE_BUDGET) {
		struct decoded_span **victim = &spans;
		for (struct decoded_span **p = &spans; *p; p = &(*p)->next)
			if ((*p)->last_used < (*victim)->last_used)
				victim = p;
		struct decoded_span *v = *victim;
		*victim = v->next;
		span_bytes -= v->len;
		free(v->data);
		free(v);
	}
}

static void spans_drop(const struct layer *l)
{
	pthread_mutex_lock(&span_lock);
	for (struct decoded_span **p = &spans; *p;) {
		struct decoded_span *v = *p;
		if (v->layer != l) {
			p = &v->next;
			continue;
		}
		*p = v->next;
		span_bytes -= v->len;
		free(v->data);
		free(v);
	}
	pthread_mutex_unlock(&span_lock);
}

static bool span_decoded(const struct layer *l, size_t idx)
{
	bool found = false;
	pthread_mutex_lock(&span_lock);
	for (const struct decoded_span *v = spans; v && !found; v = v->next)
		found = v->layer == l && v->index == idx;
	pthread_mutex_unlock(&span_lock);
	return found;
}

/* Copies [off, off+len) of span idx out of the cache; false if it is not there. */
static bool span_copy(const struct layer *l, size_t idx, uint64_t span_start, void *buf, size_t len, uint64_t off)
{
	bool found = false;
	pthread_mutex_lock(&span_lock);
	for (struct decoded_span *v = spans; v; v = v->next)
		if (v->layer == l && v->index == idx) {
			memcpy(buf, v->data + (off - span_start), len);
			v->last_used = ++span_clock;
			found = true;
			break;
		}
	pthread_mutex_unlock(&span_lock);
	return found;
}

static char *decoded_path(const struct layer *l, uint64_t start, uint64_t end)
{
	return strdup_printf("%s-%" PRIu64 "-%" PRIu64, l->decoded_prefix, start, end - start);
}

/* Reads [off, off+len) of the span [start, end) from its kept copy; false
 * if there is none.  The copy was decoded from verified bytes and put in
 * place whole by rename, so its length is the only check it needs. */
static bool decoded_read(const struct layer *l, uint64_t start, uint64_t end, void *buf, size_t len, uint64_t off)
{
	if (!l->decoded_prefix)
		return false;
	_cleanup_free_ char *path = decoded_path(l, start, end);
	_cleanup_close_ int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0 || (uint64_t)st.st_size != end - start ||
	    !cache_object_stamp_valid(path, fd) || read_full_at(fd, buf, len, (off_t)(off - start)) < 0)
		return false;
	cache_note_used(fd);
	return true;
}

/* ---- kept copies, written off the read path ---------------------------------
 * Writing a decoded span costs a page-cache copy and a sync, right when a
 * first start is busiest; a thread at nice 19 does it instead, from a copy of
 * the span, and then drops the span from the memory LRU (its bytes are in the
 * page cache now).  Keeping a copy is an optimisation: a failure, or a queue
 * that is full, only costs a later decode.  Copies are synced before they
 * are renamed into place, as every cache object, so that a crash cannot
 * leave a copy of the right length with the wrong bytes. */

#define KEEP_PENDING_MAX (8u << 20)

struct keep_job {
	const struct layer *layer; /* compared, never followed: it may be gone */
	size_t index;
	char *path;
	unsigned char *data;
	size_t len;
	struct keep_job *next;
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t work, idle;
	struct keep_job *head, **tail;
	size_t pending_bytes;
	bool busy;
	pid_t thread_pid; /* threads do not survive fork: a child starts its own */
} keeper = { .lock = PTHREAD_MUTEX_INITIALIZER,
	     .work = PTHREAD_COND_INITIALIZER,
	     .idle = PTHREAD_COND_INITIALIZER,
	     .tail = &keeper.head };

static void span_forget(const struct layer *l, size_t idx)
{
	pthread_mutex_lock(&span_lock);
	for (struct decoded_span **p = &spans; *p; p = &(*p)->next)
		if ((*p)->layer == l && (*p)->index == idx) {
			struct decoded_span *v = *p;
			*p = v->next;
			span_bytes -= v->len;
			free(v->data);
			free(v);
			break;
		}
	pthread_mutex_unlock(&span_lock);
}

static void *keeper_main(void *arg)
{
	(void)arg;
	(void)setpriority(PRIO_PROCESS, (id_t)gettid(), 19);
	pthread_mutex_lock(&keeper.lock);
	for (;;) {
		while (!keeper.head)
			pthread_cond_wait(&keeper.work, &keeper.lock);
		struct keep_job *job = keeper.head;
		if (!(keeper.head = job->next))
			keeper.tail = &keeper.head;
		keeper.busy = true;
		pthread_mutex_unlock(&keeper.lock);
		if (write_file_atomic(job->path, job->data, job->len) == 0) {
			_cleanup_close_ int fd = open(job->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
			if (fd >= 0)
				cache_object_stamp(job->path, fd);
			cache_note_stored(job->len);
			span_forget(job->layer, job->index);
		}
		pthread_mutex_lock(&keeper.lock);
		keeper.busy = false;
		keeper.pending_bytes -= job->len;
		if (!keeper.head)
			pthread_cond_broadcast(&keeper.idle);
		free(job->path);
		free(job->data);
		free(job);
	}
	return NULL;
}

/* Starts this process's keeper thread unless it runs; keeper.lock is held. */
static bool keeper_running_locked(void)
{
	if (keeper.thread_pid == getpid())
		return true;
	if (!start_detached_thread(keeper_main, NULL))
		return false;
	keeper.thread_pid = getpid();
	return true;
}

static void decoded_keep_later(const struct layer *l, size_t idx, uint64_t start, uint64_t end,
			       const unsigned char *data)
{
	if (!l->decoded_prefix)
		return;
	size_t len = (size_t)(end - start);
	/* The room is reserved under the lock; the span (up to 4 MiB) is copied
	 * outside it, so that neither other readers nor the keeper wait. */
	pthread_mutex_lock(&keeper.lock);
	bool room = keeper.pending_bytes + len <= KEEP_PENDING_MAX;
	for (struct keep_job *j = keeper.head; j && room; j = j->next)
		room = !(j->layer == l && j->index == idx);
	room = room && keeper_running_locked();
	if (room)
		keeper.pending_bytes += len;
	pthread_mutex_unlock(&keeper.lock);
	if (!room)
		return;
	char *path = decoded_path(l, start, end);
	unsigned char *copy = path ? malloc(len) : NULL;
	struct keep_job *job = copy ? malloc(sizeof(*job)) : NULL;
	if (job) {
		memcpy(copy, data, len);
		*job = (struct keep_job){ .layer = l, .index = idx, .path = path, .data = copy, .len = len };
	} else {
		free(path);
		free(copy);
	}
	pthread_mutex_lock(&keeper.lock);
	if (job) {
		*keeper.tail = job;
		keeper.tail = &job->next;
		pthread_cond_signal(&keeper.work);
	} else {
		keeper.pending_bytes -= len;
	}
	pthread_mutex_unlock(&keeper.lock);
}

void decoded_keep_flush(void)
{
	pthread_mutex_lock(&keeper.lock);
	while (keeper.thread_pid == getpid() && (keeper.head || keeper.busy))
		pthread_cond_wait(&keeper.idle, &keeper.lock);
	pthread_mutex_unlock(&keeper.lock);
}

static int span_read(struct layer *l, size_t idx, void *buf, size_t len, uint64_t off);

/* The nearest checkpoint before idx, within DECODE_ON_RATHER_THAN_WINDOW,
 * whose window costs no request, and from which the blob up to idx is here
 * or coming (a miss's request reads ahead past several checkpoints); idx
 * if there is none. */
static size_t window_free_start_before(struct layer *l, size_t idx)
{
	const struct checkpoint *cp = &l->checkpoints[idx];
	for (size_t j = idx; j-- > 0 && cp->out - l->checkpoints[j].out <= DECODE_ON_RATHER_THAN_WINDOW;) {
		const struct checkpoint *from = &l->checkpoints[j];
		if (window_costs_request(l, from))
			continue;
		bool coming = l->ops && l->ops->blob_coming &&
			      l->ops->blob_coming(l, from->in > 0 && from->bits ? from->in - 1 : from->in, cp->in);
		return coming ? j : idx;
	}
	return idx;
}

/* Where span idx would start decoding at its checkpoint, whose window is a
 * request away: the spans from one a cursor stopped at, or from a
 * checkpoint whose window is at hand, up to idx are decoded in order and
 * kept instead.  The kernel sends the reads of a file read through on
 * several threads, and one may come ahead of the one before it; a read
 * into the read-ahead of a miss finds the blob before it here; neither
 * should cost a window. */
static void decode_spans_before(struct layer *l, size_t idx)
{
	const struct checkpoint *cp = &l->checkpoints[idx];
	if (!window_elsewhere(cp))
		return;
	size_t from = idx;
	pthread_mutex_lock(&l->lock);
	for (int i = 0; l->cursors && i < CURSORS_PER_LAYER; i++) {
		const struct cursor *c = &l->cursors[i];
		if (c->pos >= cp->out || !close_behind(c, cp->out))
			continue;
		size_t j = (size_t)(layer_checkpoint_before(l, c->pos) - l->checkpoints);
		if (l->checkpoints[j].out == c->pos && (from == idx || j > from))
			from = j;
	}
	pthread_mutex_unlock(&l->lock);
	if (!window_costs_request(l, cp))
		return;
	if (from == idx)
		from = window_free_start_before(l, idx);
	if (from == idx)
		return;
	for (size_t j = from; j < idx; j++) {
		unsigned char one;
		if (span_read(l, j, &one, 1, l->checkpoints[j].out) < 0)
			return;
	}
}

/* What decoding span idx from its checkpoint reads from a source that
 * fetches (its window, its blob bytes), fetched before the layer's lock is
 * taken: a decode holds the lock, and the reads of other files (which the
 * kernel sends at once: a container's users, groups and program) waited
 * for this one's round trips before they could ask for their own. */
static void span_input_fetch(struct layer *l, size_t idx)
{
	const struct checkpoint *cp = &l->checkpoints[idx];
	if (!l->ops || !l->ops->blob_coming || !l->ops->bring_blob)
		return;
	pthread_mutex_lock(&l->lock);
	bool goes_on = cursor_going_on(l, cp, cp->out) != NULL;
	pthread_mutex_unlock(&l->lock);
	if (goes_on)
		return;
	unsigned char window[GZIP_WINDOW_SIZE];
	if (window_costs_request(l, cp) && cp->window_len <= sizeof(window) && l->ops->read_window)
		(void)l->ops->read_window(l, cp, window);
	uint64_t in = cp->in > 0 && cp->bits ? cp->in - 1 : cp->in;
	uint64_t end = idx + 1 < l->n_checkpoints ? l->checkpoints[idx + 1].in + DECODER_INPUT_PIECE : l->blob_size;
	/* A failure is the decode's to report. */
	(void)l->ops->bring_blob(l, in, end < l->blob_size ? end : l->blob_size);
}

static int span_read(struct layer *l, size_t idx, void *buf, size_t len, uint64_t off)
{
	uint64_t start = l->checkpoints[idx].out;
	uint64_t end = idx + 1 < l->n_checkpoints ? l->checkpoints[idx + 1].out : l->tar_size;
	if (end - start > SPAN_CACHE_MAX_SPAN)
		return decode_at(l, buf, len, off); /* one huge zstd frame, say */
	if (span_copy(l, idx, start, buf, len, off))
		return 0;
	if (decoded_read(l, start, end, buf, len, off))
		return 0;
	decode_spans_before(l, idx);
	span_input_fetch(l, idx);
	struct decoded_span *v = calloc(1, sizeof(*v));
	unsigned char *data = malloc((size_t)(end - start));
	if (!v || !data) {
		free(v);
		free(data);
		return decode_at(l, buf, len, off);
	}
	/* Spans are decoded and kept under l->lock: one another reader decoded
	 * meanwhile (decode_spans_before(), say) is found here, not decoded
	 * again from its checkpoint, which may cost a window. */
	pthread_mutex_lock(&l->lock);
	if (span_copy(l, idx, start, buf, len, off)) {
		pthread_mutex_unlock(&l->lock);
		free(v);
		free(data);
		return 0;
	}
	int r = decode_locked(l, data, (size_t)(end - start), start);
	if (r < 0) {
		pthread_mutex_unlock(&l->lock);
		free(v);
		free(data);
		return r;
	}
	memcpy(buf, data + (off - start), len);
	decoded_keep_later(l, idx, start, end, data);
	*v = (struct decoded_span){ .layer = l, .index = idx, .data = data, .len = (size_t)(end - start) };
	pthread_mutex_lock(&span_lock);
	span_evict_locked(v->len);
	v->last_used = ++span_clock;
	v->next = spans;
	spans = v;
	span_bytes += v->len;
	pthread_mutex_unlock(&span_lock);
	pthread_mutex_unlock(&l->lock);
	return 0;
}

int layer_read(struct layer *l, void *buf, size_t len, uint64_t off)
{
	if (off > l->tar_size || len > l->tar_size - off)
		return -EIO;
	if (l->compression == COMPRESSION_NONE)
		return blob_read(l, buf, len, (off_t)off) == 0 ? 0 : -EIO;
	while (len > 0) {
		const struct checkpoint *cp = layer_checkpoint_before(l, off);
		size_t idx = (size_t)(cp - l->checkpoints);
		uint64_t end = idx + 1 < l->n_checkpoints ? l->checkpoints[idx + 1].out : l->tar_size;
		size_t n = end - off < len ? (size_t)(end - off) : len;
		int r = span_read(l, idx, buf, n, off);
		if (r < 0)
			return r;
		buf = (char *)buf + n;
		off += n;
		len -= n;
	}
	return 0;
}

void tar_stream_release(struct layer *l)
{
	spans_drop(l);
	if (!l->cursors)
		return;
	for (int i = 0; i < CURSORS_PER_LAYER; i++)
		cursor_release(&l->cursors[i]);
	free(l->cursors);
	l->cursors = NULL;
}

ssize_t tar_stream_read_entry(struct layer *l, const struct entry *e, void *buf, size_t len, uint64_t off)
{
	memset(buf, 0, len);
	for (uint32_t i = 0; i < e->n_extents; i++) {
		const struct extent *x = &e->extents[i];
		uint64_t start = off > x->file_off ? off : x->file_off;
		uint64_t end = off + len < x->file_off + x->len ? off + len : x->file_off + x->len;
		if (start >= end)
			continue;
		int r = layer_read(l, (char *)buf + (start - off), (size_t)(end - start),
				   x->stream_off + (start - x->file_off));
		if (r < 0)
			return r;
	}
	return (ssize_t)len;
}
