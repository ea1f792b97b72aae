#include <json-c/json.h>

#include "launch.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const caps[] = { "CAP_CHOWN", "CAP_SYS_CHROOT" };
	struct json_object *seccomp = NULL;
	struct err err = { 0 };
	if (seccomp_from_profile((const char *)data, size, caps, 2, &seccomp, &err) == 0)
		json_object_put(seccomp);
	return 0;
}
