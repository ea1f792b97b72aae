/* libarchive, loaded on first use rather than when imgfs starts.
 *
 * Only indexing a layer and reading an eStargz table of contents parse tar;
 * a mount whose layer indexes are cached never does.  libarchive brings
 * libxml2, ICU and libstdc++ along, about 4 ms of every process start, so it
 * is opened with dlopen() like libcurl (registry/curl_lib.h).  Private to fs/. */
#pragma once

#include <archive.h>
#include <archive_entry.h>

#include "util.h"

struct archive_lib {
	struct archive *(*read_new)(void);
	int (*read_free)(struct archive *a);
	int (*read_support_filter_gzip)(struct archive *a);
	int (*read_support_format_tar)(struct archive *a);
	int (*read_open)(struct archive *a, void *client_data, archive_open_callback *open, archive_read_callback *read,
			 archive_close_callback *close);
	int (*read_open_memory)(struct archive *a, const void *buf, size_t size);
	int (*read_next_header)(struct archive *a, struct archive_entry **entry);
	la_ssize_t (*read_data)(struct archive *a, void *buf, size_t size);
	int (*read_data_block)(struct archive *a, const void **buf, size_t *size, la_int64_t *offset);
	la_int64_t (*filter_bytes)(struct archive *a, int filter);
	const char *(*error_string)(struct archive *a);
	void (*set_error)(struct archive *a, int code, const char *fmt, ...);
	const char *(*entry_pathname)(struct archive_entry *e);
	const char *(*entry_hardlink)(struct archive_entry *e);
	const char *(*entry_symlink)(struct archive_entry *e);
	__LA_MODE_T (*entry_filetype)(struct archive_entry *e);
	__LA_MODE_T (*entry_perm)(struct archive_entry *e);
	la_int64_t (*entry_uid)(struct archive_entry *e);
	la_int64_t (*entry_gid)(struct archive_entry *e);
	la_int64_t (*entry_size)(struct archive_entry *e);
	time_t (*entry_mtime)(struct archive_entry *e);
	long (*entry_mtime_nsec)(struct archive_entry *e);
	dev_t (*entry_rdevmajor)(struct archive_entry *e);
	dev_t (*entry_rdevminor)(struct archive_entry *e);
	int (*entry_xattr_reset)(struct archive_entry *e);
	int (*entry_xattr_next)(struct archive_entry *e, const char **name, const void **value, size_t *size);
};

/* Loads libarchive once per process; thread-safe.  NULL, with err saying
 * why, when it cannot be loaded. */
const struct archive_lib *archive_lib_get(struct err *err);
/* Starts loading libarchive on a thread of its own, for a caller that will
 * need it after some network round trips: a cold load reads libxml2 and
 * ICU from disk, about 50 ms.  Not while another library loads: the
 * dynamic loader does one at a time. */
void archive_lib_preload(void);
