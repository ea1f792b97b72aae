#include "registry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A registries.conf file, then what it says for a short and a full name. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct registries_conf *conf = registries_conf_new();
	if (!conf || registries_conf_parse(conf, (const char *)data, size, "fuzz.conf", NULL) < 0) {
		registries_conf_free(conf);
		return 0;
	}
	char **names = NULL;
	size_t n_names = 0;
	if (registries_conf_candidates(conf, "busybox:1", &names, &n_names, NULL) == 0) {
		for (size_t i = 0; i < n_names; i++) {
			struct image_ref ref;
			struct registry_endpoint *eps = NULL;
			size_t n_eps = 0;
			if (image_ref_parse(names[i], &ref, NULL) < 0)
				continue;
			if (registries_conf_endpoints(conf, &ref, &eps, &n_eps, NULL) == 0)
				registry_endpoints_free(eps, n_eps);
			image_ref_done(&ref);
		}
		registry_names_free(names, n_names);
	}
	registries_conf_free(conf);
	return 0;
}
