/* A minimal TAP producer for unit tests run by `meson test`. */
#pragma once

#include <stdio.h>
#include <string.h>

static int tap_count, tap_failed;

#define ok(cond, ...)                                                      \
	do {                                                               \
		tap_count++;                                               \
		if (!(cond)) {                                             \
			tap_failed++;                                      \
			printf("not ok %d - ", tap_count);                 \
		} else {                                                   \
			printf("ok %d - ", tap_count);                     \
		}                                                          \
		printf(__VA_ARGS__);                                       \
		printf("\n");                                              \
		if (!(cond))                                               \
			printf("#   failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
	} while (0)

#define is_str(got, want, ...)                                                        \
	do {                                                                          \
		const char *_g = (got), *_w = (want);                                 \
		bool _eq = (_g && _w) ? strcmp(_g, _w) == 0 : _g == _w;               \
		ok(_eq, __VA_ARGS__);                                                 \
		if (!_eq)                                                             \
			printf("#   got \"%s\", want \"%s\"\n", _g ? _g : "(null)", _w ? _w : "(null)"); \
	} while (0)

static inline int tap_done(void)
{
	printf("1..%d\n", tap_count);
	return tap_failed ? 1 : 0;
}
