#include "layer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The parts of a prefetch list line: what parses is ascending, apart and
 * not empty, so that a prefetch can walk them in one pass. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = strndup((const char *)data, size);
	struct file_part *parts = NULL;
	uint32_t n = 0;
	if (text && file_parts_parse(text, &parts, &n) == 0) {
		if (n == 0 || n > 4096)
			abort();
		for (uint32_t i = 0; i < n; i++)
			if (parts[i].len == 0 || parts[i].off + parts[i].len < parts[i].off ||
			    (i && parts[i].off < parts[i - 1].off + parts[i - 1].len))
				abort();
		free(parts);
	}
	free(text);
	return 0;
}
