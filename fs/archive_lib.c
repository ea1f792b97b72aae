/* See archive_lib.h. */
#include "archive_lib.h"

#include <pthread.h>

/* libarchive's soname since 3.0. */
#define ARCHIVE_SONAME "libarchive.so.13"

static struct archive_lib lib;
static char load_error[512];
static bool loaded;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void load(void)
{
	/* clang-format off */
#define SYMBOL(field) { "archive_" #field, (void **)&lib.field }
	const struct dl_symbol symbols[] = {
		SYMBOL(read_new),	   SYMBOL(read_free),	      SYMBOL(read_support_filter_gzip),
		SYMBOL(read_support_format_tar), SYMBOL(read_open), SYMBOL(read_open_memory),
		SYMBOL(read_next_header),  SYMBOL(read_data),	      SYMBOL(read_data_block),
		SYMBOL(filter_bytes),	   SYMBOL(error_string),      SYMBOL(set_error),
		SYMBOL(entry_pathname),	   SYMBOL(entry_hardlink),    SYMBOL(entry_symlink),
		SYMBOL(entry_filetype),	   SYMBOL(entry_perm),	      SYMBOL(entry_uid),
		SYMBOL(entry_gid),	   SYMBOL(entry_size),	      SYMBOL(entry_mtime),
		SYMBOL(entry_mtime_nsec),  SYMBOL(entry_rdevmajor),   SYMBOL(entry_rdevminor),
		SYMBOL(entry_xattr_reset), SYMBOL(entry_xattr_next),
	};
	/* clang-format on */
#undef SYMBOL
	loaded = dl_open_symbols(ARCHIVE_SONAME, symbols, ARRAY_SIZE(symbols), load_error, sizeof(load_error)) == 0;
}

static void *preload_main(void *arg)
{
	(void)arg;
	pthread_once(&once, load);
	return NULL;
}

void archive_lib_preload(void)
{
	(void)start_detached_thread(preload_main, NULL);
}

const struct archive_lib *archive_lib_get(struct err *err)
{
	pthread_once(&once, load);
	if (!loaded) {
		err_set(err, ELIBACC, "%s", load_error);
		return NULL;
	}
	return &lib;
}
