/* SHA-256 digests in the "sha256:<hex>" form the OCI specs use, and the
 * base64 that registries and eStargz TOCs carry.  Nettle, not libcrypto:
 * every imgfs mount hashes its manifest, and libcrypto took 1.4 ms to load
 * and 1.5 ms to initialise before the first digest, nettle 0.3 ms. */
#include "registry.h"

#include <nettle/base64.h>
#include <nettle/sha2.h>

struct digester {
	struct sha256_ctx ctx;
};

static void hex_digest(const uint8_t *md, char ret[DIGEST_SHA256_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	memcpy(ret, "sha256:", 7);
	for (int i = 0; i < SHA256_DIGEST_SIZE; i++) {
		ret[7 + 2 * i] = hex[md[i] >> 4];
		ret[8 + 2 * i] = hex[md[i] & 15];
	}
	ret[DIGEST_SHA256_LEN] = '\0';
}

void digest_sha256(const void *data, size_t len, char ret[DIGEST_SHA256_LEN + 1])
{
	struct digester d;
	sha256_init(&d.ctx);
	digester_update(&d, data, len);
	digester_final(&d, ret);
}

void digest_sha256_raw(const void *data, size_t len, unsigned char ret[32])
{
	struct sha256_ctx ctx;
	sha256_init(&ctx);
	sha256_update(&ctx, len, data);
	sha256_digest(&ctx, SHA256_DIGEST_SIZE, ret);
}

struct digester *digester_new(void)
{
	struct digester *d = malloc(sizeof(*d));
	if (d)
		sha256_init(&d->ctx);
	return d;
}

void digester_update(struct digester *d, const void *data, size_t len)
{
	sha256_update(&d->ctx, len, data);
}

void digester_final(struct digester *d, char ret[DIGEST_SHA256_LEN + 1])
{
	uint8_t md[SHA256_DIGEST_SIZE];
	sha256_digest(&d->ctx, sizeof(md), md); /* also resets the context */
	hex_digest(md, ret);
}

struct digester *digester_free(struct digester *d)
{
	free(d);
	return NULL;
}

char *base64_encode(const void *data, size_t len)
{
	char *out = malloc(BASE64_ENCODE_RAW_LENGTH(len) + 1);
	if (!out)
		return NULL;
	base64_encode_raw(out, len, data);
	out[BASE64_ENCODE_RAW_LENGTH(len)] = '\0';
	return out;
}

int base64_decode(const char *text, size_t text_len, void **ret, size_t *ret_len)
{
	struct base64_decode_ctx ctx;
	uint8_t *out = malloc(BASE64_DECODE_LENGTH(text_len) + 1);
	size_t len = BASE64_DECODE_LENGTH(text_len);
	if (!out)
		return -ENOMEM;
	base64_decode_init(&ctx);
	if (!base64_decode_update(&ctx, &len, out, text_len, text) || !base64_decode_final(&ctx)) {
		free(out);
		return -EINVAL;
	}
	out[len] = '\0';
	*ret = out;
	*ret_len = len;
	return 0;
}
