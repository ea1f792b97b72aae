/* launch-shim's command line. */
#include "shim_options.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

void usage(FILE *out)
{
	fprintf(out, "Usage: launch-shim --id ID --state DIR --bundle DIR --runtime PATH --runtime-root DIR\n"
		     "                   [--terminal] [--stdin] [--leave-stdin-open] [--wait-attach]\n"
		     "                   [--rm [--unmount PATH] [--unlink PATH]] [--create-first]\n"
		     "Supervises one container; started by launch with a sync pipe on fd 3.\n");
}

int parse_options(int argc, char **argv, struct options *o)
{
	/* Each option sets one field: a string, or a flag. */
	struct field {
		const char *name;
		const char **text;
		bool *flag;
	};
	const struct field fields[] = {
		{ "id", &o->id, NULL },
		{ "state", &o->state, NULL },
		{ "bundle", &o->bundle, NULL },
		{ "runtime", &o->runtime, NULL },
		{ "runtime-root", &o->runtime_root, NULL },
		{ "unmount", &o->unmount, NULL },
		{ "unlink", &o->unlink_path, NULL },
		{ "remove-storage", &o->storage, NULL },
		{ "terminal", NULL, &o->terminal },
		{ "stdin", NULL, &o->stdin_open },
		{ "leave-stdin-open", NULL, &o->leave_stdin_open },
		{ "wait-attach", NULL, &o->wait_attach },
		{ "rm", NULL, &o->remove },
		{ "create-first", NULL, &o->create_first },
	};
	enum { O_LOG_SIZE_MAX = 256, O_FIELD };
	struct option opts[ARRAY_SIZE(fields) + 3];
	for (size_t i = 0; i < ARRAY_SIZE(fields); i++)
		opts[i] = (struct option){ fields[i].name, fields[i].text ? required_argument : no_argument, NULL,
					   O_FIELD + (int)i };
	opts[ARRAY_SIZE(fields)] = (struct option){ "log-size-max", required_argument, NULL, O_LOG_SIZE_MAX };
	opts[ARRAY_SIZE(fields) + 1] = (struct option){ "help", no_argument, NULL, 'h' };
	opts[ARRAY_SIZE(fields) + 2] = (struct option){ 0 };
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c >= O_FIELD && c < O_FIELD + (int)ARRAY_SIZE(fields)) {
			const struct field *f = &fields[c - O_FIELD];
			if (f->text)
				*f->text = optarg;
			else
				*f->flag = true;
		} else if (c == O_LOG_SIZE_MAX) {
			char *end;
			errno = 0;
			o->log_size_max = strtoull(optarg, &end, 10);
			if (errno || end == optarg || *end)
				return -EINVAL;
		} else if (c == 'h') {
			usage(stdout);
			exit(0);
		} else {
			return -EINVAL;
		}
	}
	if (optind != argc || !o->id || !o->state || !o->bundle || !o->runtime || !o->runtime_root)
		return -EINVAL;
	return 0;
}
