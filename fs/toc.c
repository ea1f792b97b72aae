/* The table of contents of eStargz and zstd:chunked layers: its JSON, entry
 * by entry, into the layer's entries and their chunks.  json-c builds every
 * entry; a TOC over 1 MiB is parsed in two halves on two threads. */
#include "toc.h"

#include "registry.h"

#include <json-c/json.h>
#include <locale.h>
#include <pthread.h>

static const char *jstr(struct json_object *o, const char *key)
{
	struct json_object *v;
	return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
		   ? json_object_get_string(v)
		   : NULL;
}

static int64_t jint(struct json_object *o, const char *key)
{
	struct json_object *v;
	return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_int) ? json_object_get_int64(v)
											      : 0;
}

/* Days from 1970-01-01 to the date (proleptic Gregorian), by whole
 * 400-year eras.  Not timegm(): glibc takes its time-zone lock in every
 * call, once per entry here, and a large TOC is parsed on two threads
 * (with use_c_locale(), the bench image's 12.6 MB TOC parsed in 78 ms
 * instead of 86-99 ms). */
static int64_t days_from_civil(int64_t year, int month, int day)
{
	year -= month <= 2;
	int64_t era = (year >= 0 ? year : year - 399) / 400;
	int64_t year_of_era = year - era * 400;
	int64_t day_of_year = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1;
	int64_t day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
	return era * 146097 + day_of_era - 719468;
}

/* The number of n digits at *p after the separator sep (none if 0),
 * moving *p past them; -1, and *p not past the string, if they are not
 * there. */
static int take_field(const char **p, char sep, int n)
{
	if (sep) {
		if (**p != sep)
			return -1;
		(*p)++;
	}
	int v = 0;
	for (int i = 0; i < n; i++, (*p)++) {
		if (**p < '0' || **p > '9')
			return -1;
		v = v * 10 + (**p - '0');
	}
	return v;
}

/* RFC 3339, as Go writes it: 2006-01-02T15:04:05[.frac](Z|±hh:mm).
 * Anything else is the epoch. */
static void parse_time(const char *s, int64_t *ret_sec, uint32_t *ret_nsec)
{
	*ret_sec = 0;
	*ret_nsec = 0;
	if (!s)
		return;
	const char *p = s;
	int year = take_field(&p, 0, 4);
	int month = year < 0 ? -1 : take_field(&p, '-', 2);
	int day = month < 0 ? -1 : take_field(&p, '-', 2);
	int hour = day < 0 ? -1 : take_field(&p, 'T', 2);
	int minute = hour < 0 ? -1 : take_field(&p, ':', 2);
	int second = minute < 0 ? -1 : take_field(&p, ':', 2);
	if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second < 0 || second > 60)
		return;
	uint32_t nsec = 0;
	if (*p == '.') {
		int digits = 0;
		for (p++; *p >= '0' && *p <= '9'; p++)
			if (digits++ < 9)
				nsec = nsec * 10 + (uint32_t)(*p - '0');
		for (; digits < 9; digits++)
			nsec *= 10;
	}
	int64_t sec = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second;
	if ((*p == '+' || *p == '-') && strlen(p) >= 6) {
		int off = ((p[1] - '0') * 10 + (p[2] - '0')) * 3600 + ((p[4] - '0') * 10 + (p[5] - '0')) * 60;
		sec += *p == '+' ? -off : off;
	}
	*ret_sec = sec;
	*ret_nsec = nsec;
}

static int decode_xattrs(struct json_object *o, struct entry *e)
{
	struct json_object *x;
	if (!json_object_object_get_ex(o, "xattrs", &x) || !json_object_is_type(x, json_type_object))
		return 0;
	size_t n = (size_t)json_object_object_length(x);
	if (n == 0)
		return 0;
	if (n > 256)
		return -EINVAL;
	e->xattrs = calloc(n, sizeof(*e->xattrs));
	if (!e->xattrs)
		return -ENOMEM;
	json_object_object_foreach(x, name, value)
	{
		if (!json_object_is_type(value, json_type_string))
			return -EINVAL;
		const char *b64 = json_object_get_string(value);
		size_t len = strlen(b64);
		if (len % 4 != 0 || len > (64u << 10) * 4 / 3 + 4)
			return -EINVAL;
		struct xattr *xa = &e->xattrs[e->n_xattrs++];
		if (!(xa->name = strdup(name)))
			return -ENOMEM;
		size_t got;
		int r = base64_decode(b64, len, &xa->value, &got);
		if (r < 0)
			return r;
		xa->len = (uint32_t)got;
	}
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static int add_chunk(struct entry *e, size_t *allocated, struct json_object *o, uint64_t toc_off, struct err *err)
{
	int64_t off = jint(o, "offset"), chunk_off = jint(o, "chunkOffset"), chunk_size = jint(o, "chunkSize"),
		inner = jint(o, "innerOffset"), end_off = jint(o, "endOffset");
	const char *digest = jstr(o, "chunkDigest"), *chunk_type = jstr(o, "chunkType");
	bool zeros = chunk_type && strcmp(chunk_type, "zeros") == 0;
	if (chunk_size == 0)
		chunk_size = (int64_t)e->size - chunk_off;
	if (zeros) {
		/* A hole: nothing stored, nothing to verify. */
		off = 0;
		digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
	}
	if (!digest && chunk_off == 0 && (uint64_t)chunk_size == e->size)
		digest = jstr(o, "digest");
	if (off < 0 || (uint64_t)off >= toc_off || chunk_off < 0 || chunk_size <= 0 || inner < 0 ||
	    (uint64_t)chunk_off > e->size || (uint64_t)chunk_size > e->size - (uint64_t)chunk_off ||
	    (!zeros && chunk_size > CHUNK_MAX_SIZE) || !digest || !digest_is_valid(digest) || end_off < 0 ||
	    (end_off > 0 && (end_off <= off || (uint64_t)end_off > toc_off)))
		return err_set(err, EINVAL, "TOC entry \"%s\" has an invalid chunk at %lld", e->path,
			       (long long)chunk_off);
	if (e->n_chunks > 0) {
		const struct chunk *last = &e->chunks[e->n_chunks - 1];
		if ((uint64_t)chunk_off != last->file_off + last->size)
			return err_set(err, EINVAL, "TOC entry \"%s\": chunks are not contiguous", e->path);
	} else if (chunk_off != 0) {
		return err_set(err, EINVAL, "TOC entry \"%s\": the first chunk does not start at 0", e->path);
	}
	if (grow_array((void **)&e->chunks, allocated, e->n_chunks + 1, sizeof(struct chunk)) < 0)
		return -ENOMEM;
	struct chunk *c = &e->chunks[e->n_chunks++];
	c->file_off = (uint64_t)chunk_off;
	c->size = (uint64_t)chunk_size;
	c->comp_off = (uint64_t)off;
	c->comp_end = zeros ? 0 : (uint64_t)end_off; /* eStargz: computed from the next offset */
	c->inner_off = (uint64_t)inner;
	c->zeros = zeros;
	snprintf(c->digest, sizeof(c->digest), "%s", digest);
	return 0;
}

static bool hidden_name(const char *path)
{
	return strcmp(path, TOC_NAME) == 0 || strcmp(path, ".prefetch.landmark") == 0 ||
	       strcmp(path, ".no.prefetch.landmark") == 0;
}

struct toc_parser {
	struct layer *layer;
	uint64_t toc_off;
	size_t allocated, chunk_allocated;
	struct entry *current_file; /* the regular file "chunk" entries continue */
	size_t landmark;            /* entries before it form the prefetch set */
	size_t index;
};

/* Adds one TOC entry (a JSON object) to the layer. */
/* The metadata of a new entry e, of TOC type type, and its first chunk. */
static int toc_entry_fill(struct toc_parser *tp, struct json_object *o, const char *type, struct entry *e,
			  struct err *err)
{
	int r;
	static const struct {
		const char *name;
		enum entry_type type;
	} types[] = { { "reg", ENTRY_REG },           { "dir", ENTRY_DIR },  { "symlink", ENTRY_SYMLINK },
		      { "hardlink", ENTRY_HARDLINK }, { "char", ENTRY_CHR }, { "block", ENTRY_BLK },
		      { "fifo", ENTRY_FIFO } };
	bool known = false;
	for (size_t k = 0; k < ARRAY_SIZE(types); k++)
		if (strcmp(type, types[k].name) == 0) {
			e->type = types[k].type;
			known = true;
		}
	if (!known)
		return err_set(err, EINVAL, "TOC entry \"%s\" has unknown type \"%s\"", e->path, type);
	e->mode = (uint32_t)jint(o, "mode") & 07777;
	int64_t uid = jint(o, "uid"), gid = jint(o, "gid");
	if (uid < 0 || uid >= UINT32_MAX || gid < 0 || gid >= UINT32_MAX)
		return err_set(err, EINVAL, "TOC entry \"%s\" has an invalid owner", e->path);
	e->uid = (uint32_t)uid;
	e->gid = (uint32_t)gid;
	parse_time(jstr(o, "modtime"), &e->mtime_sec, &e->mtime_nsec);
	e->rdev_major = (uint32_t)jint(o, "devMajor");
	e->rdev_minor = (uint32_t)jint(o, "devMinor");
	const char *link = jstr(o, "linkName");
	if (e->type == ENTRY_SYMLINK) {
		if (!link || strlen(link) >= 4096)
			return err_set(err, EINVAL, "TOC symlink \"%s\" has no valid target", e->path);
		e->link = strdup(link);
	} else if (e->type == ENTRY_HARDLINK) {
		if (!link || path_normalise(link, &e->link) < 0)
			return err_set(err, EINVAL, "TOC hardlink \"%s\" points outside the image root", e->path);
	}
	if ((e->type == ENTRY_SYMLINK || e->type == ENTRY_HARDLINK) && !e->link)
		return -ENOMEM;
	r = decode_xattrs(o, e);
	if (r < 0)
		return err_set(err, -r, "TOC entry \"%s\" has invalid xattrs", e->path);
	if (e->type == ENTRY_REG) {
		int64_t size = jint(o, "size");
		uint64_t limit = layer_size_limit(tp->layer->blob_size ? tp->layer->blob_size : tp->toc_off);
		if (size < 0 || (uint64_t)size > limit)
			return err_set(err, EFBIG,
				       "TOC entry \"%s\" claims an impossible size %lld (the layer decodes to at "
				       "most %llu bytes)",
				       e->path, (long long)size, (unsigned long long)limit);
		e->size = (uint64_t)size;
		tp->chunk_allocated = 0;
		if (size > 0) {
			r = add_chunk(e, &tp->chunk_allocated, o, tp->toc_off, err);
			if (r < 0)
				return r;
			tp->current_file = e;
		}
	}

	return 0;
}

static int toc_entry(struct toc_parser *tp, struct json_object *o, struct err *err)
{
	struct layer *l = tp->layer;
	size_t i = tp->index++;
	if (!json_object_is_type(o, json_type_object))
		return err_set(err, EINVAL, "TOC entry %zu is not an object", i);
	const char *name = jstr(o, "name"), *type = jstr(o, "type");
	if (!name || !type)
		return err_set(err, EINVAL, "TOC entry %zu has no name or type", i);
	if (strcmp(type, "chunk") == 0) {
		if (!tp->current_file)
			return err_set(err, EINVAL, "TOC chunk \"%s\" follows no regular file", name);
		return add_chunk(tp->current_file, &tp->chunk_allocated, o, tp->toc_off, err);
	}
	tp->current_file = NULL;
	_cleanup_free_ char *path = NULL;
	if (path_normalise(name, &path) < 0)
		return err_set(err, EINVAL, "TOC entry \"%s\" leaves the image root", name);
	if (strcmp(path, ".prefetch.landmark") == 0)
		tp->landmark = l->n_entries;
	if (hidden_name(path))
		return 0;
	/* The previous file is complete: give back its spare chunk slots now,
	 * so that they never add up during the parse. */
	if (l->n_entries)
		shrink_array((void **)&l->entries[l->n_entries - 1].chunks, l->entries[l->n_entries - 1].n_chunks,
			     sizeof(struct chunk));
	if (grow_array((void **)&l->entries, &tp->allocated, l->n_entries + 1, sizeof(struct entry)) < 0)
		return -ENOMEM;
	struct entry *e = &l->entries[l->n_entries++];
	memset(e, 0, sizeof(*e));
	e->path = TAKE_PTR(path);
	return toc_entry_fill(tp, o, type, e, err);
}

static const char *skip_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* Parses one JSON value at *p; *ret is NULL for JSON null. */
static int next_value(struct json_tokener *tok, const char **p, const char *end, struct json_object **ret)
{
	json_tokener_reset(tok);
	struct json_object *o = json_tokener_parse_ex(tok, *p, (int)(end - *p));
	if (json_tokener_get_error(tok) != json_tokener_success) {
		json_object_put(o);
		return -EINVAL;
	}
	*p += json_tokener_get_parse_end(tok);
	*ret = o;
	return 0;
}

/* Parses the entries array's elements from *p up to its ']', or up to stop
 * (the ',' before an element) when stop is not NULL.  first: *p is at the
 * first element, not at a ','.  -EINVAL without a message for bad JSON. */
static int parse_elements(struct toc_parser *tp, struct json_tokener *tok, const char **p, const char *end,
			  const char *stop, bool first, struct err *err)
{
	for (;; first = false) {
		*p = skip_ws(*p, end);
		if (*p == stop)
			return 0;
		if (*p < end && **p == ']') {
			(*p)++;
			return 0;
		}
		if (!first && (*p == end || *(*p)++ != ','))
			return -EINVAL;
		struct json_object *o = NULL;
		if (next_value(tok, p, end, &o) < 0)
			return -EINVAL;
		int r = toc_entry(tp, o, err);
		json_object_put(o);
		if (r < 0)
			return r;
	}
}

/* Where the JSON object at p ends, found without building it: strings are
 * skipped with their escapes, braces and brackets counted.  NULL if p is
 * not at an object or the text ends first; json-c judges the rest. */
static const char *skip_object(const char *p, const char *end)
{
	if (p == end || *p != '{')
		return NULL;
	int depth = 0;
	for (; p < end; p++) {
		if (*p == '"') {
			for (p++; p < end && *p != '"'; p++)
				if (*p == '\\')
					p++;
			if (p >= end)
				return NULL;
		} else if (*p == '{' || *p == '[') {
			depth++;
		} else if ((*p == '}' || *p == ']') && --depth == 0) {
			return p + 1;
		}
	}
	return NULL;
}

/* The ',' before the first element past the middle of the array text that
 * is not a "chunk" entry (those continue the file before them), and how
 * many elements come before it; NULL when there is none to split at. */
static const char *find_split(struct json_tokener *tok, const char *p, const char *end, size_t *ret_before)
{
	const char *middle = p + (end - p) / 2;
	size_t before = 0;
	for (;;) {
		p = skip_object(skip_ws(p, end), end);
		if (!p)
			return NULL;
		before++;
		const char *comma = skip_ws(p, end);
		if (comma == end || *comma != ',')
			return NULL;
		if (comma < middle) {
			p = comma + 1;
			continue;
		}
		const char *next = comma + 1;
		struct json_object *o = NULL;
		if (next_value(tok, &next, end, &o) < 0)
			return NULL;
		const char *type = jstr(o, "type");
		bool continues = type && strcmp(type, "chunk") == 0;
		json_object_put(o);
		if (!continues) {
			*ret_before = before;
			return comma;
		}
		p = comma + 1;
	}
}

/* json-c copies the calling thread's locale in every
 * json_tokener_parse_ex() (duplocale() and newlocale(), each a malloc under
 * glibc's process-wide locale lock), once per TOC entry here, unless that
 * locale is the C locale object, which both hand back untouched: the two
 * threads that parse a large TOC took turns in that lock.  Numbers in JSON
 * are read in the C locale anyway.  Returns what restore_locale() takes. */
static locale_t use_c_locale(void)
{
	locale_t c = newlocale(LC_ALL_MASK, "C", (locale_t)0);
	return c ? uselocale(c) : (locale_t)0;
}

static void restore_locale(locale_t before)
{
	if (before)
		freelocale(uselocale(before));
}

struct entries_half {
	struct toc_parser tp;
	const char *p, *end;
	int r;
	struct err err;
};

static void *parse_second_half(void *arg)
{
	struct entries_half *h = arg;
	locale_t before = use_c_locale();
	struct json_tokener *tok = json_tokener_new_ex(32);
	h->r = tok ? parse_elements(&h->tp, tok, &h->p, h->end, NULL, false, &h->err) : -ENOMEM;
	json_tokener_free(tok);
	restore_locale(before);
	return NULL;
}

/* Below this much text one thread parses the entries alone. */
#define PARALLEL_TOC_MIN (1u << 20)

/* Parses the elements of the entries array from *p, just past its '['.  A
 * large TOC is parsed in two halves at once (json-c builds every entry:
 * 0.27 s of a 0.37 s mount of a 34,000-entry TOC), the second into a
 * layer of its own whose entries are then appended. */
static int parse_entries(struct toc_parser *tp, struct json_tokener *tok, const char **p, const char *end,
			 struct err *err)
{
	size_t before = 0;
	const char *split = end - *p >= PARALLEL_TOC_MIN ? find_split(tok, *p, end, &before) : NULL;
	struct entries_half second = {
		.tp = { .toc_off = tp->toc_off, .landmark = SIZE_MAX, .index = tp->index + before },
		.p = split,
		.end = end
	};
	pthread_t thread;
	if (!split || !(second.tp.layer = layer_alloc(tp->layer->digest, tp->layer->compression, -1)) ||
	    pthread_create(&thread, NULL, parse_second_half, &second) != 0) {
		layer_free(second.tp.layer);
		return parse_elements(tp, tok, p, end, NULL, true, err);
	}
	int r = parse_elements(tp, tok, p, end, split, true, err);
	pthread_join(thread, NULL);
	struct layer *l = tp->layer, *tail = second.tp.layer;
	if (r == 0 && second.r < 0 && second.err.code && err)
		*err = second.err;
	if (r == 0)
		r = second.r;
	if (r == 0 && l->n_entries)
		shrink_array((void **)&l->entries[l->n_entries - 1].chunks, l->entries[l->n_entries - 1].n_chunks,
			     sizeof(struct chunk));
	if (r == 0 &&
	    grow_array((void **)&l->entries, &tp->allocated, l->n_entries + tail->n_entries, sizeof(struct entry)) < 0)
		r = -ENOMEM;
	if (r == 0) {
		if (second.tp.landmark != SIZE_MAX) /* the last landmark counts, as in one pass */
			tp->landmark = l->n_entries + second.tp.landmark;
		memcpy(l->entries + l->n_entries, tail->entries, tail->n_entries * sizeof(struct entry));
		l->n_entries += tail->n_entries;
		tail->n_entries = 0; /* moved, not freed */
		*p = second.p;
	}
	layer_free(tail);
	return r;
}

/* Walks {"version":..,"entries":[...]} one entry at a time, so that memory
 * holds the TOC text and one parsed entry, not a tree of the whole TOC. */
static int parse_toc_entries(struct toc_parser *tp, const char *json, size_t len, struct err *err)
{
	const char *p = json, *end = json + len;
	bool saw_entries = false;
	int r = -EINVAL;
	struct json_tokener *tok = json_tokener_new_ex(32);
	if (!tok)
		return -ENOMEM;
	p = skip_ws(p, end);
	if (p == end || *p++ != '{')
		goto bad;
	for (;;) {
		p = skip_ws(p, end);
		if (p < end && *p == '}')
			break;
		struct json_object *key = NULL;
		if (next_value(tok, &p, end, &key) < 0 || !json_object_is_type(key, json_type_string)) {
			json_object_put(key);
			goto bad;
		}
		bool is_entries = strcmp(json_object_get_string(key), "entries") == 0;
		json_object_put(key);
		p = skip_ws(p, end);
		if (p == end || *p++ != ':')
			goto bad;
		p = skip_ws(p, end);
		if (is_entries) {
			if (p == end || *p++ != '[')
				goto bad;
			saw_entries = true;
			r = parse_entries(tp, tok, &p, end, err);
			if (r == -EINVAL && (!err || !err->code))
				goto bad;
			if (r < 0)
				goto out;
		} else {
			struct json_object *ignored = NULL;
			if (next_value(tok, &p, end, &ignored) < 0)
				goto bad;
			json_object_put(ignored);
		}
		p = skip_ws(p, end);
		if (p < end && *p == ',') {
			p++;
			continue;
		}
		if (p < end && *p == '}')
			break;
		goto bad;
	}
	if (!saw_entries)
		goto bad;
	r = 0;
	goto out;
bad:
	r = err_set(err, EINVAL, "the TOC is not a JSON object with an \"entries\" array");
out:
	json_tokener_free(tok);
	return r;
}

/* Completes a layer whose entries are all parsed: the prefetch set, spare
 * memory given back, chunks checked against their files, members' ends. */
static int toc_finish(const struct toc_parser *tp, struct err *err)
{
	struct layer *l = tp->layer;
	uint64_t toc_off = tp->toc_off;
	size_t landmark = tp->landmark;
	for (size_t i = 0; landmark != SIZE_MAX && i < landmark; i++)
		l->entries[i].prefetch = l->entries[i].landmark = true;
	/* Most files have one chunk: what grow_array reserved would be most of
	 * the daemon's memory.  toc_entry() gave back every file's spare slots
	 * but the last one's. */
	shrink_array((void **)&l->entries, l->n_entries, sizeof(*l->entries));
	if (l->n_entries)
		shrink_array((void **)&l->entries[l->n_entries - 1].chunks, l->entries[l->n_entries - 1].n_chunks,
			     sizeof(struct chunk));
	/* Every chunk must cover its file exactly. */
	for (size_t i = 0; i < l->n_entries; i++) {
		struct entry *e = &l->entries[i];
		uint64_t covered =
		    e->n_chunks ? e->chunks[e->n_chunks - 1].file_off + e->chunks[e->n_chunks - 1].size : 0;
		if (e->type == ENTRY_REG && covered != e->size) {
			return err_set(err, EINVAL, "TOC entry \"%s\": chunks cover %llu of %llu bytes", e->path,
				       (unsigned long long)covered, (unsigned long long)e->size);
		}
	}
	/* A member ends where the next one starts (or where the TOC starts). */
	size_t n_offsets = 0, cap = 0;
	uint64_t *offsets = NULL;
	for (size_t i = 0; i < l->n_entries; i++)
		for (uint32_t k = 0; k < l->entries[i].n_chunks; k++) {
			if (grow_array((void **)&offsets, &cap, n_offsets + 2, sizeof(uint64_t)) < 0) {
				free(offsets);
				return -ENOMEM;
			}
			if (!l->entries[i].chunks[k].zeros)
				offsets[n_offsets++] = l->entries[i].chunks[k].comp_off;
		}
	if (grow_array((void **)&offsets, &cap, n_offsets + 1, sizeof(uint64_t)) < 0) {
		free(offsets);
		return -ENOMEM;
	}
	offsets[n_offsets++] = toc_off;
	qsort(offsets, n_offsets, sizeof(uint64_t), cmp_u64);
	for (size_t i = 0; i < l->n_entries; i++)
		for (uint32_t k = 0; k < l->entries[i].n_chunks; k++) {
			struct chunk *c = &l->entries[i].chunks[k];
			if (c->zeros || c->comp_end)
				continue;
			size_t lo = 0, hi = n_offsets;
			while (lo < hi) {
				size_t mid = (lo + hi) / 2;
				if (offsets[mid] <= c->comp_off)
					lo = mid + 1;
				else
					hi = mid;
			}
			c->comp_end = lo < n_offsets ? offsets[lo] : toc_off;
		}
	free(offsets);
	return 0;
}

int estargz_parse_toc(struct layer *l, const char *json, size_t len, uint64_t toc_off, struct err *err)
{
	struct toc_parser tp = { .layer = l, .toc_off = toc_off, .landmark = SIZE_MAX };
	locale_t before = use_c_locale();
	int r = parse_toc_entries(&tp, json, len, err);
	restore_locale(before);
	return r < 0 ? r : toc_finish(&tp, err);
}

struct toc_feed {
	struct toc_parser tp;
	struct json_tokener *tok;
	size_t at; /* where the text not parsed yet starts */
	enum { FEED_HEAD, FEED_ENTRIES, FEED_TAIL, FEED_GAVE_UP } state;
	bool first;
};

struct toc_feed *toc_feed_new(struct layer *l, uint64_t toc_off)
{
	struct toc_feed *f = calloc(1, sizeof(*f));
	if (!f)
		return NULL;
	f->tp = (struct toc_parser){ .layer = l, .toc_off = toc_off, .landmark = SIZE_MAX };
	f->first = true;
	f->tok = json_tokener_new_ex(32);
	if (!f->tok) {
		free(f);
		return NULL;
	}
	return f;
}

struct toc_feed *toc_feed_free(struct toc_feed *f)
{
	if (f) {
		json_tokener_free(f->tok);
		free(f);
	}
	return NULL;
}

/* Past lit (after white space) at p; NULL if the text says otherwise, or,
 * with *more set, if it has not come far enough to say. */
static const char *expect(const char *p, const char *end, const char *lit, bool *more)
{
	p = skip_ws(p, end);
	size_t n = strlen(lit), have = (size_t)(end - p);
	if (memcmp(p, lit, have < n ? have : n) != 0)
		return NULL;
	*more = have < n;
	return *more ? NULL : p + n;
}

/* Past the `{"version": N, "entries": [` that the eStargz and zstd:chunked
 * writers put first; other shapes are left to the whole parse. */
static const char *match_head(const char *p, const char *end, bool *more)
{
	if (!(p = expect(p, end, "{", more)) || !(p = expect(p, end, "\"version\"", more)) ||
	    !(p = expect(p, end, ":", more)))
		return NULL;
	const char *digits = p = skip_ws(p, end);
	while (p < end && *p >= '0' && *p <= '9')
		p++;
	*more = p == end;
	if (p == end || p == digits || !(p = expect(p, end, ",", more)) || !(p = expect(p, end, "\"entries\"", more)))
		return NULL;
	return (p = expect(p, end, ":", more)) ? expect(p, end, "[", more) : NULL;
}

/* The next whole element of the entries array at p into the layer; 0 when
 * the text does not hold it all yet, 1 when it was added, -1 to give up. */
static int feed_element(struct toc_feed *f, const char *p, const char *end, const char **ret_end)
{
	if (!f->first) {
		if (*p != ',')
			return -1;
		if ((p = skip_ws(p + 1, end)) == end)
			return 0;
	}
	if (*p != '{')
		return -1;
	const char *q = skip_object(p, end);
	if (!q)
		return 0;
	struct json_object *o = NULL;
	struct err ignored = { 0 };
	int r = next_value(f->tok, &p, q, &o) < 0 || p != q ? -1 : toc_entry(&f->tp, o, &ignored) < 0 ? -1 : 1;
	json_object_put(o);
	*ret_end = q;
	return r;
}

/* Moves past the head once the text holds it, or gives up. */
static void feed_head(struct toc_feed *f, const char *text, const char *end)
{
	bool more = false;
	const char *p = match_head(text, end, &more);
	if (p) {
		f->at = (size_t)(p - text);
		f->state = FEED_ENTRIES;
	} else if (!more) {
		f->state = FEED_GAVE_UP;
	}
}

void toc_feed_text(struct toc_feed *f, const char *text, size_t len)
{
	const char *end = text + len;
	if (f->state == FEED_HEAD)
		feed_head(f, text, end);
	locale_t before = f->state == FEED_ENTRIES ? use_c_locale() : (locale_t)0;
	while (f->state == FEED_ENTRIES) {
		const char *p = skip_ws(text + f->at, end), *next = NULL;
		if (p == end)
			break;
		if (*p == ']') {
			f->at = (size_t)(p + 1 - text);
			f->state = FEED_TAIL;
			break;
		}
		int r = feed_element(f, p, end, &next);
		if (r <= 0) {
			if (r < 0)
				f->state = FEED_GAVE_UP;
			break;
		}
		f->at = (size_t)(next - text);
		f->first = false;
	}
	restore_locale(before);
}

/* The rest of the entries array, from where the feed stopped, parsed as a
 * whole text is (two halves at once when it is large); false to give up. */
static bool parse_rest(struct toc_feed *f, const char *text, const char *end)
{
	const char *p = skip_ws(text + f->at, end);
	if (!f->first) {
		if (p == end || *p != ',' || (p = skip_ws(p + 1, end)) == end || *p == ']')
			return false;
	}
	struct err ignored = { 0 };
	locale_t before = use_c_locale();
	int r = parse_entries(&f->tp, f->tok, &p, end, &ignored);
	restore_locale(before);
	f->at = (size_t)(p - text);
	return r == 0;
}

int toc_feed_finish(struct toc_feed *f, const char *text, size_t len, struct err *err)
{
	const char *end = text + len;
	if (f->state == FEED_HEAD)
		feed_head(f, text, end);
	if (f->state == FEED_ENTRIES)
		f->state = parse_rest(f, text, end) ? FEED_TAIL : FEED_GAVE_UP;
	const char *p = f->state == FEED_TAIL ? skip_ws(text + f->at, end) : end;
	if (p == end || *p != '}' || skip_ws(p + 1, end) != end)
		return -EAGAIN;
	return toc_finish(&f->tp, err);
}
