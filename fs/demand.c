/* Reads and the background fetch of whole layers: see demand.h. */
#include "demand.h"

#include <stdint.h>
#include <time.h>

/* The background fetch waits this long after the last read. */
#define DEMAND_QUIET_MS 200
#define DEMAND_POLL_MS 20

static atomic_int_least64_t last_demand_ms = -DEMAND_QUIET_MS;

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void demand_note(void)
{
	atomic_store_explicit(&last_demand_ms, now_ms(), memory_order_relaxed);
}

void demand_wait_quiet(const atomic_bool *stop)
{
	while (!atomic_load(stop) &&
	       now_ms() - atomic_load_explicit(&last_demand_ms, memory_order_relaxed) < DEMAND_QUIET_MS) {
		struct timespec pause = { 0, DEMAND_POLL_MS * 1000000L };
		nanosleep(&pause, NULL);
	}
}
