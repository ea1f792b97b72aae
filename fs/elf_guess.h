/* What a starting program reads next, guessed from the ELF objects it
 * opens: the loader maps each object's writable segment and dynamic
 * section right after its headers, then opens every library in DT_NEEDED,
 * one after another.  When the first bytes of an ELF file on a chunked
 * lazy layer (eStargz, zstd:chunked) are read, workers fetch those parts
 * and those libraries (resolved in the image as the loader would:
 * RUNPATH, the image's /etc/ld.so.cache, the default directories), and
 * the libraries' own, on connections the program's reads do not wait
 * behind; a read of them then finds them fetched or in flight.  Layers
 * whose reads take turns (indexed plain layers) are left alone: there a
 * guess only delays the program (private to fs/). */
#pragma once

#include "tree.h"

struct elf_guess;

/* Starts the workers and makes the tree's first reads reach them (one tree
 * per process).  NULL when no layer of the tree is one to guess for, or on
 * failure: reads are then only slower. */
struct elf_guess *elf_guess_start(const struct tree *t);
/* Stops and frees it; call it once no read of the tree is in flight. */
void elf_guess_stop(struct elf_guess *g);
/* Libraries whose headers the guess read (fetching them) because an
 * object needs them. */
uint64_t elf_guess_count(const struct elf_guess *g);
