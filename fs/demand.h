/* The workload and the background fetch of whole layers share the
 * registry's time, and on a small machine the CPU: each read of a lazy
 * layer notes itself, served from the cache or not, and the background
 * fetch waits until none came for a moment, so that it never slows the
 * start it is there to help.  Landmark prefetching does not wait: the
 * start needs those files (private to fs/). */
#pragma once

#include <stdatomic.h>

void demand_note(void);
/* Returns once no read came for 200 ms, or when *stop is set. */
void demand_wait_quiet(const atomic_bool *stop);
