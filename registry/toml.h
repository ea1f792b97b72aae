/* A TOML subset reader for registries.conf (toml.c).  Private to registry/. */
#pragma once

#include <json-c/json.h>

#include "util.h"

/* Parses text (len bytes, NUL not needed) into a new json-c object; an
 * error names file and line. */
int toml_parse(const char *text, size_t len, const char *file, struct json_object **ret, struct err *err);

/* Reads and parses the file at path (at most max bytes); *ret is NULL when
 * there is no such file, which is no error. */
int toml_read_file(const char *path, size_t max, struct json_object **ret, struct err *err);
