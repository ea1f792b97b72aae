#include "registry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = strndup((const char *)data, size);
	struct auth_challenge c;
	if (text && auth_challenge_parse(text, &c) == 0)
		auth_challenge_done(&c);
	char *cred = NULL;
	if (auth_credentials_from_json((const char *)data, size, "reg.example", &cred) == 0)
		free(cred);
	free(text);
	return 0;
}
