/* Planning requests of several ranges: see span_job.h. */
#include "span_job.h"

#define MERGE_GAP (32u << 10)

static bool job_extends(const struct span_job *j, const struct chunk *c)
{
	return j->n_chunks > 0 && j->chunks[j->n_chunks - 1]->comp_end == c->comp_off;
}

bool span_job_has_room(const struct span_job *j, const struct chunk *c)
{
	if (j->n_chunks == 0)
		return true;
	return j->n_chunks < JOB_CHUNKS && (job_extends(j, c) || j->n_spans < JOB_SPANS) &&
	       j->bytes + (c->comp_end - c->comp_off) <= JOB_BYTES;
}

void span_job_add(struct span_job *j, const struct chunk *c)
{
	if (!job_extends(j, c))
		j->first[j->n_spans++] = j->n_chunks;
	j->chunks[j->n_chunks++] = c;
	j->bytes += c->comp_end - c->comp_off;
}

size_t span_job_end(const struct span_job *j, size_t s)
{
	return s + 1 < j->n_spans ? j->first[s + 1] : j->n_chunks;
}

struct span_ref {
	uint64_t off;
	size_t span;
};

static int by_span_offset(const void *a, const void *b)
{
	const struct span_ref *x = a, *y = b;
	return x->off < y->off ? -1 : x->off > y->off;
}

bool span_job_plan(const struct span_job *j, struct byterange ranges[JOB_SPANS], size_t range_of[JOB_SPANS],
		   size_t *ret_n_ranges, size_t *ret_total)
{
	struct span_ref order[JOB_SPANS];
	size_t n_ranges = 0, total = 0;
	for (size_t s = 0; s < j->n_spans; s++)
		order[s] = (struct span_ref){ .off = j->chunks[j->first[s]]->comp_off, .span = s };
	qsort(order, j->n_spans, sizeof(order[0]), by_span_offset);
	for (size_t k = 0; k < j->n_spans; k++) {
		size_t s = order[k].span;
		uint64_t off = order[k].off, end = j->chunks[span_job_end(j, s) - 1]->comp_end;
		struct byterange *last = n_ranges ? &ranges[n_ranges - 1] : NULL;
		if (last && off < last->off + last->len)
			return false;
		if (last && off - (last->off + last->len) <= MERGE_GAP) {
			total += (size_t)(end - (last->off + last->len));
			last->len = (size_t)(end - last->off);
		} else {
			ranges[n_ranges++] = (struct byterange){ .off = off, .len = (size_t)(end - off) };
			total += (size_t)(end - off);
		}
		range_of[s] = n_ranges - 1;
	}
	*ret_n_ranges = n_ranges;
	*ret_total = total;
	return true;
}
