#include "registry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct manifest m;
	struct err err = { 0 };
	if (manifest_parse((const char *)data, size, NULL, &m, &err) == 0) {
		struct platform p;
		platform_parse(NULL, &p);
		manifest_select_platform(&m, &p);
		for (size_t i = 0; i < m.n_layers; i++)
			descriptor_annotation(&m.layers[i], "k");
		manifest_done(&m);
	}
	return 0;
}
