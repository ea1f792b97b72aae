/* The store's journal of numbered nodes; see store_journal.h. */
#include "store_journal.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "util.h"

#define JOURNAL_MAGIC 0x316c6e726a676d69ULL /* "imgjrnl1" */
#define MAX_EVENTS (1u << 16)
#define MAX_SLOTS (1u << 20)

struct journal_header {
	uint64_t magic;
	uint64_t count;
	uint64_t full; /* an event was lost: nothing to replay from */
};

#define EVENTS_OFFSET 4096
#define USES_OFFSET (EVENTS_OFFSET + (size_t)MAX_EVENTS * sizeof(struct journal_event))
#define JOURNAL_SIZE (USES_OFFSET + (size_t)MAX_SLOTS * sizeof(atomic_uint))

struct store_journal {
	void *map;
	struct journal_header *header;
	struct journal_event *events;
	atomic_uint *uses;
};

int journal_open(int fd, bool resume, struct store_journal **ret)
{
	struct store_journal *j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	if (!(j->map = map_state_file(fd, JOURNAL_SIZE, resume))) {
		int r = -errno;
		free(j);
		return r;
	}
	j->header = j->map;
	j->events = (struct journal_event *)((char *)j->map + EVENTS_OFFSET);
	j->uses = (atomic_uint *)((char *)j->map + USES_OFFSET);
	if (resume && (j->header->magic != JOURNAL_MAGIC || j->header->count > MAX_EVENTS || j->header->full)) {
		journal_close(j);
		return -EBADMSG;
	}
	if (!resume)
		*j->header = (struct journal_header){ .magic = JOURNAL_MAGIC };
	*ret = j;
	return 0;
}

void journal_close(struct store_journal *j)
{
	if (!j)
		return;
	munmap(j->map, JOURNAL_SIZE);
	free(j);
}

int journal_append(struct store_journal *j, const struct journal_event *e)
{
	if (j->header->count >= MAX_EVENTS) {
		j->header->full = 1;
		return -ENOSPC;
	}
	j->events[j->header->count] = *e;
	/* The count last: a successor never replays half an event. */
	__atomic_store_n(&j->header->count, j->header->count + 1, __ATOMIC_RELEASE);
	return 0;
}

void journal_spoil(struct store_journal *j)
{
	j->header->full = 1;
}

bool journal_usable(const struct store_journal *j)
{
	return !j->header->full;
}

size_t journal_count(const struct store_journal *j)
{
	return (size_t)__atomic_load_n(&j->header->count, __ATOMIC_ACQUIRE);
}

const struct journal_event *journal_get(const struct store_journal *j, size_t i)
{
	return i < journal_count(j) ? &j->events[i] : NULL;
}

atomic_uint *journal_uses(struct store_journal *j, uint64_t slot)
{
	return slot < MAX_SLOTS ? &j->uses[slot] : NULL;
}
