/* See curl_lib.h. */
#include "curl_lib.h"

#include <dlfcn.h>
#include <pthread.h>

/* The soname of libcurl's ABI 4, which every libcurl >= 7.16 keeps. */
#define CURL_SONAME "libcurl.so.4"

static struct curl_lib lib;
static char load_error[512];
static bool loaded;
static pthread_once_t once = PTHREAD_ONCE_INIT;

#define LOAD(field, symbol)                                                            \
	do {                                                                           \
		if (!(*(void **)&lib.field = dlsym(handle, symbol))) {                  \
			snprintf(load_error, sizeof(load_error), "%s has no %s", CURL_SONAME, \
				 symbol);                                              \
			return;                                                        \
		}                                                                      \
	} while (0)

static void load(void)
{
	/* Never closed: libcurl keeps global state for the life of the process. */
	void *handle = dlopen(CURL_SONAME, RTLD_NOW | RTLD_LOCAL);
	if (!handle) {
		snprintf(load_error, sizeof(load_error), "cannot load %s: %s", CURL_SONAME, dlerror());
		return;
	}
	CURLcode (*global_init)(long flags);
	if (!(*(void **)&global_init = dlsym(handle, "curl_global_init"))) {
		snprintf(load_error, sizeof(load_error), "%s has no curl_global_init", CURL_SONAME);
		return;
	}
	LOAD(easy_init, "curl_easy_init");
	LOAD(easy_cleanup, "curl_easy_cleanup");
	LOAD(easy_reset, "curl_easy_reset");
	LOAD(easy_setopt, "curl_easy_setopt");
	LOAD(easy_getinfo, "curl_easy_getinfo");
	LOAD(easy_perform, "curl_easy_perform");
	LOAD(easy_strerror, "curl_easy_strerror");
	LOAD(easy_escape, "curl_easy_escape");
	LOAD(free, "curl_free");
	LOAD(slist_append, "curl_slist_append");
	LOAD(slist_free_all, "curl_slist_free_all");
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
