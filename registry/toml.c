/* The part of TOML that containers-registries.conf(5) files use, read into
 * json-c objects: tables, arrays of tables, bare and quoted keys, basic and
 * literal strings, booleans, integers and (multi-line) arrays.  Anything
 * else is an error that names the line, never a guess. */
#include "toml.h"

#include <ctype.h>

#define TOML_MAX_DEPTH 16

struct cursor {
	const char *p, *end;
	int line;
	struct err *err;
	const char *file;
};

static int fail(struct cursor *c, const char *what)
{
	return err_set(c->err, EINVAL, "%s, line %d: %s", c->file, c->line, what);
}

static void skip_blank(struct cursor *c)
{
	while (c->p < c->end && (*c->p == ' ' || *c->p == '\t'))
		c->p++;
}

/* Spaces, newlines and comments, as allowed between array elements. */
static void skip_space_lines(struct cursor *c)
{
	for (;;) {
		skip_blank(c);
		if (c->p < c->end && *c->p == '#')
			while (c->p < c->end && *c->p != '\n')
				c->p++;
		if (c->p < c->end && (*c->p == '\n' || *c->p == '\r')) {
			if (*c->p == '\n')
				c->line++;
			c->p++;
			continue;
		}
		return;
	}
}

/* The rest of a line: only a comment may follow a key/value or a header. */
static int end_of_line(struct cursor *c)
{
	skip_blank(c);
	if (c->p < c->end && *c->p == '#')
		while (c->p < c->end && *c->p != '\n')
			c->p++;
	if (c->p < c->end && *c->p == '\r')
		c->p++;
	if (c->p < c->end && *c->p != '\n')
		return fail(c, "unexpected text after a value");
	return 0;
}

static int hex_value(char ch)
{
	return isdigit((unsigned char)ch) ? ch - '0' : isxdigit((unsigned char)ch) ? (tolower(ch) - 'a' + 10) : -1;
}

/* A "basic" or 'literal' string, on one line. */
static int parse_string(struct cursor *c, char **ret)
{
	char quote = *c->p++;
	size_t cap = 64, n = 0;
	_cleanup_free_ char *s = malloc(cap);
	if (!s)
		return -ENOMEM;
	if (c->p + 1 < c->end && c->p[0] == quote && c->p[1] == quote)
		return fail(c, "multi-line strings are not supported");
	for (;;) {
		if (c->p >= c->end || *c->p == '\n')
			return fail(c, "unterminated string");
		char ch = *c->p++;
		if (ch == quote)
			break;
		if (ch == '\\' && quote == '"') {
			if (c->p >= c->end)
				return fail(c, "unterminated string");
			char e = *c->p++;
			switch (e) {
			case 'n':
				ch = '\n';
				break;
			case 't':
				ch = '\t';
				break;
			case '"':
				ch = '"';
				break;
			case '\\':
				ch = '\\';
				break;
			case 'u': {
				int v = 0;
				for (int i = 0; i < 4; i++) {
					int h = c->p < c->end ? hex_value(*c->p++) : -1;
					if (h < 0)
						return fail(c, "bad \\u escape");
					v = v * 16 + h;
				}
				if (v == 0 || v > 0x7f)
					return fail(c, "only ASCII \\u escapes are supported");
				ch = (char)v;
				break;
			}
			default:
				return fail(c, "unknown escape in a string");
			}
		}
		if (n + 2 > cap) {
			char *grown = realloc(s, cap *= 2);
			if (!grown)
				return -ENOMEM;
			s = grown;
		}
		s[n++] = ch;
	}
	s[n] = '\0';
	*ret = TAKE_PTR(s);
	return 0;
}

static bool bare_key_char(char ch)
{
	return isalnum((unsigned char)ch) || ch == '_' || ch == '-';
}

static int parse_key(struct cursor *c, char **ret)
{
	skip_blank(c);
	if (c->p < c->end && (*c->p == '"' || *c->p == '\''))
		return parse_string(c, ret);
	const char *start = c->p;
	while (c->p < c->end && bare_key_char(*c->p))
		c->p++;
	if (c->p == start)
		return fail(c, "expected a key");
	*ret = strndup(start, (size_t)(c->p - start));
	return *ret ? 0 : -ENOMEM;
}

static int parse_value(struct cursor *c, struct json_object **ret, int depth);

static int parse_array(struct cursor *c, struct json_object **ret, int depth)
{
	c->p++; /* '[' */
	struct json_object *array = json_object_new_array();
	if (!array)
		return -ENOMEM;
	for (;;) {
		skip_space_lines(c);
		if (c->p < c->end && *c->p == ']') {
			c->p++;
			*ret = array;
			return 0;
		}
		struct json_object *v = NULL;
		int r = parse_value(c, &v, depth + 1);
		if (r == 0 && json_object_array_add(array, v) < 0) {
			json_object_put(v);
			r = -ENOMEM;
		}
		if (r < 0) {
			json_object_put(array);
			return r;
		}
		skip_space_lines(c);
		if (c->p < c->end && *c->p == ',')
			c->p++;
		else if (c->p >= c->end || *c->p != ']') {
			json_object_put(array);
			return fail(c, "expected ',' or ']' in an array");
		}
	}
}

static int parse_value(struct cursor *c, struct json_object **ret, int depth)
{
	skip_blank(c);
	if (depth > TOML_MAX_DEPTH)
		return fail(c, "arrays nested too deeply");
	if (c->p >= c->end)
		return fail(c, "expected a value");
	if (*c->p == '"' || *c->p == '\'') {
		_cleanup_free_ char *s = NULL;
		int r = parse_string(c, &s);
		if (r < 0)
			return r;
		return (*ret = json_object_new_string(s)) ? 0 : -ENOMEM;
	}
	if (*c->p == '[')
		return parse_array(c, ret, depth);
	static const struct {
		const char *word;
		bool value;
	} words[] = { { "true", true }, { "false", false } };
	for (size_t i = 0; i < ARRAY_SIZE(words); i++) {
		size_t len = strlen(words[i].word);
		if ((size_t)(c->end - c->p) >= len && strncmp(c->p, words[i].word, len) == 0 &&
		    (c->p + len == c->end || !bare_key_char(c->p[len]))) {
			c->p += len;
			return (*ret = json_object_new_boolean(words[i].value)) ? 0 : -ENOMEM;
		}
	}
	if (isdigit((unsigned char)*c->p) || *c->p == '-' || *c->p == '+') {
		char *stop;
		errno = 0;
		long long v = strtoll(c->p, &stop, 10);
		if (errno || stop == c->p || stop > c->end)
			return fail(c, "bad integer");
		c->p = stop;
		return (*ret = json_object_new_int64(v)) ? 0 : -ENOMEM;
	}
	return fail(c, "unsupported value (strings, booleans, integers and arrays are)");
}

/* Moves from root along a dotted header path; with new_element, the last
 * name is an array of tables that gets a new table. */
static int open_table(struct cursor *c, struct json_object *root, bool array_of_tables, struct json_object **ret)
{
	struct json_object *cur = root;
	for (;;) {
		_cleanup_free_ char *name = NULL;
		int r = parse_key(c, &name);
		if (r < 0)
			return r;
		skip_blank(c);
		bool last = c->p < c->end && *c->p == ']';
		struct json_object *next = NULL;
		if (!json_object_object_get_ex(cur, name, &next)) {
			next = last && array_of_tables ? json_object_new_array() : json_object_new_object();
			if (!next || json_object_object_add(cur, name, next) < 0) {
				json_object_put(next);
				return -ENOMEM;
			}
		}
		if (last && array_of_tables) {
			if (!json_object_is_type(next, json_type_array))
				return fail(c, "[[name]] of something that is not an array of tables");
			struct json_object *table = json_object_new_object();
			if (!table || json_object_array_add(next, table) < 0) {
				json_object_put(table);
				return -ENOMEM;
			}
			next = table;
		} else if (json_object_is_type(next, json_type_array)) {
			size_t n = json_object_array_length(next);
			next = n ? json_object_array_get_idx(next, n - 1) : NULL;
		}
		if (!next || !json_object_is_type(next, json_type_object))
			return fail(c, "a table header names a value that is not a table");
		cur = next;
		if (last) {
			c->p++;
			*ret = cur;
			return 0;
		}
		if (c->p >= c->end || *c->p != '.')
			return fail(c, "expected '.' or ']' in a table header");
		c->p++;
	}
}

static int parse_line(struct cursor *c, struct json_object *root, struct json_object **table)
{
	if (*c->p == '[') {
		bool array_of_tables = c->p + 1 < c->end && c->p[1] == '[';
		c->p += array_of_tables ? 2 : 1;
		int r = open_table(c, root, array_of_tables, table);
		if (r < 0)
			return r;
		if (array_of_tables && (c->p >= c->end || *c->p++ != ']'))
			return fail(c, "expected ']]'");
		return end_of_line(c);
	}
	_cleanup_free_ char *key = NULL;
	int r = parse_key(c, &key);
	if (r < 0)
		return r;
	skip_blank(c);
	if (c->p >= c->end || *c->p != '=')
		return fail(c, c->p < c->end && *c->p == '.' ? "dotted keys are not supported"
							     : "expected '=' after a key");
	c->p++;
	if (json_object_object_get_ex(*table, key, NULL))
		return fail(c, "a key is defined twice");
	struct json_object *v = NULL;
	if ((r = parse_value(c, &v, 0)) < 0)
		return r;
	if (json_object_object_add(*table, key, v) < 0) {
		json_object_put(v);
		return -ENOMEM;
	}
	return end_of_line(c);
}

int toml_parse(const char *text, size_t len, const char *file, struct json_object **ret, struct err *err)
{
	/* A copy ending in NUL, so that strtoll() stops inside it. */
	_cleanup_free_ char *copy = strndup(text, len);
	if (!copy)
		return -ENOMEM;
	struct cursor c = { .p = copy, .end = copy + strlen(copy), .line = 1, .err = err, .file = file };
	struct json_object *root = json_object_new_object(), *table = root;
	if (!root)
		return -ENOMEM;
	for (;;) {
		skip_space_lines(&c);
		if (c.p >= c.end)
			break;
		int r = parse_line(&c, root, &table);
		if (r < 0) {
			json_object_put(root);
			return r;
		}
	}
	*ret = root;
	return 0;
}

int toml_read_file(const char *path, size_t max, struct json_object **ret, struct err *err)
{
	_cleanup_free_ char *data = NULL;
	size_t len;
	*ret = NULL;
	int r = read_file_capped(path, max, &data, &len);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return err_set(err, -r, "cannot read \"%s\": %s", path, strerror(-r));
	return toml_parse(data, len, path, ret, err);
}
