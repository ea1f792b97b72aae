#include "registry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = strndup((const char *)data, size);
	struct image_ref ref;
	struct err err = { 0 };
	if (text && image_ref_parse(text, &ref, &err) == 0) {
		char *s = image_ref_format(&ref);
		/* What we print must parse back to the same reference. */
		struct image_ref again;
		if (!s || image_ref_parse(s, &again, NULL) != 0)
			abort();
		if (strcmp(again.domain, ref.domain) || strcmp(again.repository, ref.repository))
			abort();
		image_ref_done(&again);
		free(s);
		image_ref_done(&ref);
	}
	free(text);
	return 0;
}
