#include "launch.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct image_process p;
	struct err err = { 0 };
	if (image_process_parse((const char *)data, size, &p, &err) == 0) {
		char *command[] = { (char *)"arg", NULL };
		struct spec_options o = { .command = command, .hostname = "h" };
		char *json = NULL;
		if (spec_build(&p, &o, &json, &err) == 0)
			free(json);
		image_process_done(&p);
	}
	return 0;
}
