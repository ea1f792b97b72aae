/* See curl_lib.h. */
#include "curl_lib.h"

#include <pthread.h>

/* The soname of libcurl's ABI 4, which every libcurl since 7.16 keeps. */
#define CURL_SONAME "libcurl.so.4"

static struct curl_lib lib;
static char load_error[512];
static bool loaded;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void load(void)
{
	CURLcode (*global_init)(long flags);
	const struct dl_symbol symbols[] = {
		{ "curl_global_init", (void **)&global_init },
		{ "curl_easy_init", (void **)&lib.easy_init },
		{ "curl_easy_cleanup", (void **)&lib.easy_cleanup },
		{ "curl_easy_reset", (void **)&lib.easy_reset },
		{ "curl_easy_setopt", (void **)&lib.easy_setopt },
		{ "curl_easy_getinfo", (void **)&lib.easy_getinfo },
		{ "curl_easy_perform", (void **)&lib.easy_perform },
		{ "curl_easy_strerror", (void **)&lib.easy_strerror },
		{ "curl_easy_escape", (void **)&lib.easy_escape },
		{ "curl_free", (void **)&lib.free },
		{ "curl_slist_append", (void **)&lib.slist_append },
		{ "curl_slist_free_all", (void **)&lib.slist_free_all },
	};
	if (dl_open_symbols(CURL_SONAME, symbols, ARRAY_SIZE(symbols), load_error, sizeof(load_error)) < 0)
		return;
	if (global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		snprintf(load_error, sizeof(load_error), "cannot initialise %s", CURL_SONAME);
		return;
	}
	loaded = true;
}

const struct curl_lib *curl_lib_get(struct err *err)
{
	pthread_once(&once, load);
	if (!loaded) {
		err_set(err, ELIBACC, "%s", load_error);
		return NULL;
	}
	return &lib;
}
