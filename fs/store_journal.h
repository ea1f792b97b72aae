/* What a store has numbered, for a server that takes it over (takeover.h).
 *
 * The store numbers its nodes in the order references appear and their
 * images resolve.  The journal records that order, in a shared memory
 * file the keeper holds, so that a successor makes the same nodes with the
 * same numbers: it replays each event, opening every image by the
 * name@digest it resolved to.  The per-layer "use" counts live there too. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum journal_kind { JOURNAL_REF = 1, JOURNAL_IMAGE };

struct journal_event {
	uint32_t kind;
	uint32_t n_layers;   /* image: its layers, a slot each */
	uint64_t ref_ino;    /* image: its reference's node */
	uint64_t first_slot; /* image: the slot of its first layer */
	uint32_t served;     /* image: 0 when its layers failed */
	uint32_t pad;
	char text[1000]; /* reference: its base64 name; image: name@digest */
};

struct store_journal;

/* Maps the journal in fd (-1: memory of its own); resume: one a server
 * before this one wrote. */
int journal_open(int fd, bool resume, struct store_journal **ret);
void journal_close(struct store_journal *j);
/* Appends e; -ENOSPC when the journal is full (the store then serves on,
 * and a successor will not take it over: journal_usable() says so). */
int journal_append(struct store_journal *j, const struct journal_event *e);
bool journal_usable(const struct store_journal *j);
/* Something could not be journaled: no successor will replay it. */
void journal_spoil(struct store_journal *j);
size_t journal_count(const struct store_journal *j);
const struct journal_event *journal_get(const struct store_journal *j, size_t i);
/* The "use" count of the layer in slot (shared with successors); NULL
 * past the last slot the journal keeps. */
atomic_uint *journal_uses(struct store_journal *j, uint64_t slot);
