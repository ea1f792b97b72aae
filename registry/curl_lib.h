/* libcurl, loaded on first use rather than when a program starts.
 *
 * libcurl and the libraries it pulls in (TLS, LDAP, Kerberos, SSH, IDN...)
 * cost a process about 8 ms to map and relocate, more than a warm mount
 * takes otherwise, and a mount whose image is already in the cache never
 * talks to a registry.  So, as systemd does with its optional libraries,
 * the registry client opens libcurl with dlopen() the first time it sends a
 * request.  Private to registry/. */
#pragma once

#include <curl/curl.h>

#include "util.h"

struct curl_lib {
	CURL *(*easy_init)(void);
	void (*easy_cleanup)(CURL *curl);
	void (*easy_reset)(CURL *curl);
	CURLcode (*easy_setopt)(CURL *curl, CURLoption option, ...);
	CURLcode (*easy_getinfo)(CURL *curl, CURLINFO info, ...);
	CURLcode (*easy_perform)(CURL *curl);
	const char *(*easy_strerror)(CURLcode code);
	char *(*easy_escape)(CURL *curl, const char *string, int length);
	void (*free)(void *p);
	struct curl_slist *(*slist_append)(struct curl_slist *list, const char *string);
	void (*slist_free_all)(struct curl_slist *list);
};

/* Loads and initialises libcurl once per process; thread-safe.  Returns
 * NULL, with err saying why, when it cannot be loaded. */
const struct curl_lib *curl_lib_get(struct err *err);
