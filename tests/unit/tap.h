/* A minimal TAP producer for unit tests run by `meson test`. */
#pragma once

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static int tap_count, tap_failed;

/* Evaluates cond exactly once: tests pass calls with side effects. */
#define ok(cond, ...)                                                                                                  \
	do {                                                                                                           \
		bool _pass = (cond);                                                                                   \
		tap_count++;                                                                                           \
		if (!_pass)                                                                                            \
			tap_failed++;                                                                                  \
		printf("%s %d - ", _pass ? "ok" : "not ok", tap_count);                                                \
		printf(__VA_ARGS__);                                                                                   \
		printf("\n");                                                                                          \
		if (!_pass)                                                                                            \
			printf("#   failed at %s:%d: %s\n", __FILE__, __LINE__, #cond);                                \
	} while (0)

#define is_str(got, want, ...)                                                                                         \
	do {                                                                                                           \
		const char *_g = (got), *_w = (want);                                                                  \
		bool _eq = (_g && _w) ? strcmp(_g, _w) == 0 : _g == _w;                                                \
		ok(_eq, __VA_ARGS__);                                                                                  \
		if (!_eq)                                                                                              \
			printf("#   got \"%s\", want \"%s\"\n", _g ? _g : "(null)", _w ? _w : "(null)");               \
	} while (0)

/* A check that cannot run here, and why. */
#define skip(...)                                                                                                      \
	do {                                                                                                           \
		tap_count++;                                                                                           \
		printf("ok %d # SKIP ", tap_count);                                                                    \
		printf(__VA_ARGS__);                                                                                   \
		printf("\n");                                                                                          \
	} while (0)

static inline int tap_done(void)
{
	printf("1..%d\n", tap_count);
	return tap_failed ? 1 : 0;
}
