/* SHA-256 digests in the "sha256:<hex>" form the OCI specs use. */
#include "registry.h"

#include <openssl/evp.h>

struct digester {
	EVP_MD_CTX *ctx;
};

static void hex_digest(const unsigned char *md, char ret[DIGEST_SHA256_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	memcpy(ret, "sha256:", 7);
	for (int i = 0; i < 32; i++) {
		ret[7 + 2 * i] = hex[md[i] >> 4];
		ret[8 + 2 * i] = hex[md[i] & 15];
	}
	ret[DIGEST_SHA256_LEN] = '\0';
}

void digest_sha256(const void *data, size_t len, char ret[DIGEST_SHA256_LEN + 1])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;
	EVP_Digest(data, len, md, &md_len, EVP_sha256(), NULL);
	hex_digest(md, ret);
}

struct digester *digester_new(void)
{
	struct digester *d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->ctx = EVP_MD_CTX_new();
	if (!d->ctx || EVP_DigestInit_ex(d->ctx, EVP_sha256(), NULL) != 1)
		return digester_free(d);
	return d;
}

void digester_update(struct digester *d, const void *data, size_t len)
{
	EVP_DigestUpdate(d->ctx, data, len);
}

void digester_final(struct digester *d, char ret[DIGEST_SHA256_LEN + 1])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;
	EVP_DigestFinal_ex(d->ctx, md, &md_len);
	hex_digest(md, ret);
	EVP_DigestInit_ex(d->ctx, EVP_sha256(), NULL);
}

struct digester *digester_free(struct digester *d)
{
	if (d) {
		EVP_MD_CTX_free(d->ctx);
		free(d);
	}
	return NULL;
}
