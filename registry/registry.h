/* registry: references, the distribution API v2, authentication, digests.
 *
 * Knows nothing of FUSE, tar or containers.  Every function that talks to a
 * registry takes a `struct err *` and returns -errno; the message names the
 * reference or digest concerned and never contains credentials.
 *
 * A `struct registry_client` is not thread-safe: use one per thread. */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* ---- references -------------------------------------------------------- */

struct image_ref {
	char *domain;     /* "docker.io", "localhost:5000", "[::1]:5000" */
	char *repository; /* "library/busybox" */
	char *tag;        /* NULL when only a digest was given */
	char *digest;     /* "sha256:<64 hex>" or NULL */
};

/* Parses a reference the way docker and podman do: a short name normalises to
 * docker.io/library/NAME and a missing tag to "latest". */
int image_ref_parse(const char *text, struct image_ref *ret, struct err *err);
/* A deep copy; -ENOMEM. */
int image_ref_copy(const struct image_ref *from, struct image_ref *to);
void image_ref_done(struct image_ref *ref);
/* "domain/repository:tag@digest" in canonical form; caller frees. */
char *image_ref_format(const struct image_ref *ref);

/* ---- digests ----------------------------------------------------------- */

#define DIGEST_SHA256_LEN 71 /* "sha256:" + 64 hex, without NUL */

/* True for "sha256:" followed by exactly 64 lowercase hex digits. */
bool digest_is_valid(const char *digest);
void digest_sha256(const void *data, size_t len, char ret[DIGEST_SHA256_LEN + 1]);
/* The same as 32 bytes, as imgfs's own tables keep digests. */
void digest_sha256_raw(const void *data, size_t len, unsigned char ret[32]);

struct digester;
struct digester *digester_new(void);
void digester_update(struct digester *d, const void *data, size_t len);
/* Writes "sha256:<hex>" and resets the digester for reuse. */
void digester_final(struct digester *d, char ret[DIGEST_SHA256_LEN + 1]);
struct digester *digester_free(struct digester *d);

/* Standard base64 with padding; NULL when out of memory. */
char *base64_encode(const void *data, size_t len);
/* Decodes text (padding required where due); *ret is NUL-terminated for
 * callers that expect a string.  -EINVAL for anything that is not base64. */
int base64_decode(const char *text, size_t text_len, void **ret, size_t *ret_len);

/* ---- authentication ---------------------------------------------------- */

struct auth_challenge {
	char *scheme; /* "bearer", "basic" (lowercased) */
	char *realm;
	char *service;
	char *scope;
};

/* Parses the first challenge of a WWW-Authenticate header value. */
int auth_challenge_parse(const char *header, struct auth_challenge *ret);
void auth_challenge_done(struct auth_challenge *c);

/* Looks up "user:password" for an image name ("host[/namespace/repo]") as
 * podman does: in
 * $REGISTRY_AUTH_FILE alone when it is set, else in
 * $XDG_RUNTIME_DIR/containers/auth.json (/run/containers/UID/auth.json
 * without it), ~/.config/containers/auth.json and
 * $DOCKER_CONFIG/config.json (or ~/.docker/config.json); in each, the
 * registry's credHelpers entry, then the auths entry whose key names the
 * image most closely (host/namespace/repo before host/namespace before
 * host), then credsStore, a helper being run as docker-credential-NAME get
 * and asked for the host.  Returns 0 and *ret (caller frees)
 * when found, with *ret_source naming the file or helper (caller frees),
 * -ENOENT when not. */
int auth_lookup_credentials(const char *name, char **ret, char **ret_source);
/* The user name of credentials that hold an identity token (an OAuth2
 * refresh token) in place of a password, as docker's credential helpers
 * and auth files give them: exchanged at the registry's token server. */
#define IDENTITY_TOKEN_USER "<token>"
/* The file podman login writes: $REGISTRY_AUTH_FILE, else
 * $XDG_RUNTIME_DIR/containers/auth.json, else /run/containers/UID/auth.json. */
char *auth_default_file(void);
/* Stores "user:password" for registry (a host, or docker login's URL
 * forms) in file's auths, or removes it when credentials is NULL (-ENOENT
 * when it was not there); the file stays 0600. */
int auth_store_credentials(const char *file, const char *registry, const char *credentials, struct err *err);
/* The auths entry for domain in one JSON document (exposed for tests and
 * fuzzing). */
int auth_credentials_from_json(const char *json, size_t len, const char *name, char **ret);
/* What one auth file says for domain: credentials, or the name of the
 * helper to ask (credHelpers before auths before credsStore); -ENOENT. */
int auth_source_from_json(const char *json, size_t len, const char *name, char **ret_credentials, char **ret_helper);

/* ---- imgfs.conf ------------------------------------------------------------ */

/* The repository ("REG/NAME") where indexes and profiles of images a user
 * may not push next to are kept: imgfs.conf's index-repository, the file
 * being $IMGFS_CONF, else (not for root) $XDG_CONFIG_HOME/imgfs/imgfs.conf
 * or ~/.config/imgfs/imgfs.conf when it exists, else /etc/imgfs/imgfs.conf.
 * *ret is NULL when none is set or there is no file. */
int imgfs_conf_index_repository(char **ret, struct err *err);

/* ---- registries.conf ----------------------------------------------------- */

struct registries_conf;

/* containers-registries.conf(5) as podman reads it: $CONTAINERS_REGISTRIES_CONF,
 * else ~/.config/containers/registries.conf (which then replaces the system's
 * files), else /etc/containers/registries.conf; then the registries.conf.d
 * drop-ins of the system and of the user, in name order.  Missing files
 * are no error; a malformed one is, naming it and the line. */
int registries_conf_load(struct registries_conf **ret, struct err *err);
struct registries_conf *registries_conf_new(void);
/* Merges one file's text, as a later drop-in (exposed for tests, fuzzing). */
int registries_conf_parse(struct registries_conf *c, const char *text, size_t len, const char *file, struct err *err);
void registries_conf_free(struct registries_conf *c);

/* One place to ask for an image: a mirror, or the registry itself. */
struct registry_endpoint {
	struct image_ref ref; /* the name rewritten for this endpoint */
	bool insecure;
	bool mirror;
};

/* Where ref is fetched from, in order: the mirrors that serve it (by tag
 * or digest as configured), then the registry's location; an error when
 * the registry is blocked.  c may be NULL (ref alone). */
int registries_conf_endpoints(const struct registries_conf *c, const struct image_ref *ref,
			      struct registry_endpoint **ret, size_t *ret_n, struct err *err);
void registry_endpoints_free(struct registry_endpoint *list, size_t n);
/* The fully qualified names to try for a reference as the user wrote it:
 * itself when it names a registry; else its [aliases] entry; else one per
 * unqualified-search-registries entry; else itself (docker.io). */
int registries_conf_candidates(const struct registries_conf *c, const char *text, char ***ret, size_t *ret_n,
			       struct err *err);
void registry_names_free(char **list, size_t n);
/* Whether a reference as written starts with a registry host. */
bool image_ref_has_domain(const char *text);

/* ---- manifests ---------------------------------------------------------- */

#define MANIFEST_MAX_SIZE (4u << 20)

enum manifest_kind { MANIFEST_IMAGE, MANIFEST_INDEX };

struct descriptor {
	char *media_type;
	char *digest;
	int64_t size;
	char *artifact_type;               /* referrers: what kind of artifact */
	char *os, *architecture, *variant; /* index entries only */
	char **annotations;                /* key, value, key, value, ..., NULL */
};

struct manifest {
	enum manifest_kind kind;
	char *media_type;
	struct descriptor config;  /* image only */
	struct descriptor *layers; /* image: layers; index: manifests */
	size_t n_layers;
	size_t raw_size; /* bytes of the document, when fetched */
	char *raw;       /* the document itself, when fetched */
};

/* Parses a manifest or index.  content_type (may be NULL) is the HTTP
 * Content-Type, used when the document does not carry mediaType itself. */
int manifest_parse(const char *json, size_t len, const char *content_type, struct manifest *ret, struct err *err);
void manifest_done(struct manifest *m);
void descriptor_done(struct descriptor *d);
const char *descriptor_annotation(const struct descriptor *d, const char *key);

struct platform {
	char os[32], architecture[32], variant[32];
};
/* "os/arch[/variant]"; NULL text means the host's platform. */
int platform_parse(const char *text, struct platform *ret);
/* Index of the best matching entry of an index, or -ENOENT. */
int manifest_select_platform(const struct manifest *index, const struct platform *p);

/* ---- client ------------------------------------------------------------- */

struct registry_options {
	/* Hosts ("host" or "host:port") spoken to without TLS verification, or
	 * over plain HTTP when they do not speak TLS. NULL-terminated, may be
	 * NULL. */
	char **insecure_registries;
	/* A directory of CAs (*.crt) and a client pair (*.cert, *.key) used for
	 * every registry instead of the certs.d directories; may be NULL. */
	const char *cert_dir;
	/* The registry is insecure whatever the list says (registries.conf). */
	bool insecure;
	/* Where to go on, in order, when a request to the registry fails: the
	 * other endpoints registries.conf gives the image.  Copied. */
	const struct registry_endpoint *fallbacks;
	size_t n_fallbacks;
	struct platform platform;
	/* Maximum bytes for a blob fetched to memory (configs). */
	size_t max_document_size;
	/* Seconds without progress before a transfer counts as failed and is
	 * retried; 0 means 30. */
	long stall_seconds;
	/* Seconds a request may take in all, retries included; 0 means 900. */
	long fetch_timeout;
	/* Called now and then while a blob streams to a file (at most every
	 * 100 ms, and once at its end), when non-NULL. */
	void (*progress)(const char *digest, uint64_t done, uint64_t total);
	/* Called once for a request that got no answer for a few seconds, when
	 * non-NULL: what it asks for ("manifest \"host/repo:tag\"") and for how
	 * long it has waited. */
	void (*waiting)(const char *what, long seconds);
};

struct registry_client;

/* Asks the registry's /v2/ with credentials ("user:password"), through the
 * bearer token flow if it has one, as a login does; 0 when it accepts them. */
int registry_check_credentials(const char *domain, const char *credentials, const struct registry_options *opts,
			       struct err *err);

int registry_client_new(const struct image_ref *ref, const struct registry_options *opts, struct registry_client **ret,
			struct err *err);
struct registry_client *registry_client_free(struct registry_client *c);
/* Makes every transfer of this process, in flight or to come, give up at
 * once (ECANCELED): for a daemon whose mount went away, so that a request
 * hanging on a slow link does not hold its exit until the fetch timeout. */
void registry_abort_transfers(void);
/* Makes this client's transfers, in flight or to come, give up
 * (ECANCELED) within a second of *flag being set, data or not: for work
 * that another thread's failure has made useless. */
void registry_client_cancel_on(struct registry_client *c, const atomic_bool *flag);
/* A second client for the same repository and options, with a connection
 * of its own (a client is not thread-safe: one per thread). */
struct registry_client *registry_client_dup(const struct registry_client *c);
/* As registry_client_dup(), but the copy takes c's open connection along
 * and c opens another when it next asks: where the copy's first request
 * is the one that waits, it saves a handshake (a round trip, and another
 * with TLS). */
struct registry_client *registry_client_split(struct registry_client *c);

/* Resolves ref to an image manifest: fetches it, verifies its digest, and
 * follows an index to the entry for the configured platform. *ret_digest is
 * the digest of the image manifest (caller frees). */
int registry_get_image_manifest(struct registry_client *c, struct manifest *ret, char **ret_digest, struct err *err);
/* Fetches a small blob (a config) into memory and verifies it. */
int registry_get_blob(struct registry_client *c, const char *digest, char **ret_data, size_t *ret_len, struct err *err);
/* Streams a blob into fd (truncated first), verifying size and digest; on
 * any mismatch the content of fd is garbage and an error is returned. */
int registry_fetch_blob_to_fd(struct registry_client *c, const char *digest, int64_t size, int fd, struct err *err);
/* As registry_fetch_blob_to_fd, and each time more bytes were written,
 * arrived(ctx, written) is called on the fetching thread: the file can be
 * read up to there while the rest is on its way, but nothing in it is
 * verified until this returns 0.  An attempt that starts the file over
 * (not one that continues it) calls arrived(ctx, 0) first. */
int registry_fetch_blob_streaming(struct registry_client *c, const char *digest, int64_t size, int fd,
				  void (*arrived)(void *ctx, uint64_t written), void *ctx, struct err *err);
/* Reads bytes [off, off+len) of a blob with an HTTP Range request.  The
 * bytes are NOT verified: the caller checks them against a digest it trusts
 * (a chunk digest from a verified table of contents, say). */
int registry_fetch_range(struct registry_client *c, const char *digest, uint64_t off, size_t len, void *buf,
			 struct err *err);
/* As registry_fetch_range, and each time more bytes came, arrived(ctx, got)
 * is called on the fetching thread with the bytes now in buf: what has
 * arrived can be used while the rest is on its way.  A request tried again
 * starts over: got goes back to 0 and buf is written again. */
int registry_fetch_range_streaming(struct registry_client *c, const char *digest, uint64_t off, size_t len, void *buf,
				   void (*arrived)(void *ctx, size_t got), void *ctx, struct err *err);
/* One range of a blob to read: [off, off+len) into buf; got counts the
 * bytes that arrived. */
struct byterange {
	uint64_t off;
	size_t len;
	unsigned char *buf;
	size_t got;
};
/* Reads several ranges (ascending, not overlapping) of a blob.  Where the
 * server answers a multi-range request with multipart/byteranges, one
 * request serves them all: a registry pays a fixed cost per request that
 * is larger than the cost of a range.  Whatever it did not send, or a
 * server that does not do multipart at all (remembered by the client), is
 * fetched one range per request.  Returns the number of requests made.  As
 * registry_fetch_range, the bytes are NOT verified. */
int registry_fetch_ranges(struct registry_client *c, const char *digest, struct byterange *ranges, size_t n,
			  struct err *err);
/* As registry_fetch_ranges, and each time more bytes came, arrived(ctx) is
 * called on the fetching thread: each range's got counts the bytes of its
 * buf that are in, from its start where the server sends parts whole (a
 * caller verifies what it uses, as ever).  A request tried again starts
 * its ranges over: their got go back to 0 and their buf is written again. */
int registry_fetch_ranges_streaming(struct registry_client *c, const char *digest, struct byterange *ranges, size_t n,
				    void (*arrived)(void *ctx), void *ctx, struct err *err);

/* The streaming parser of multipart/byteranges bodies, for tests and
 * fuzzing.  NULL when content_type is not multipart/byteranges with a
 * boundary; byteranges_new_single() takes the body of a single-range 206
 * answer instead, by its Content-Range value. */
struct byteranges;
struct byteranges *byteranges_new(const char *content_type, struct byterange *ranges, size_t n);
struct byteranges *byteranges_new_single(const char *content_range, struct byterange *ranges, size_t n);
/* Forgets what arrived (for a retry): every got back to zero. */
void byteranges_reset(struct byteranges *b);
/* -EBADMSG for a malformed body or a part outside the rules: ascending,
 * not overlapping, within the span the ranges cover. */
int byteranges_feed(struct byteranges *b, const void *data, size_t len);
/* -EBADMSG unless the body ended where it should. */
int byteranges_finish(const struct byteranges *b);
struct byteranges *byteranges_free(struct byteranges *b);

/* ---- pushing and referrers (OCI distribution 1.1) ------------------------- */

#define MEDIA_TYPE_OCI_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define MEDIA_TYPE_OCI_INDEX "application/vnd.oci.image.index.v1+json"

/* Uploads a blob unless the registry has it; *ret_digest gets its digest. */
int registry_push_blob(struct registry_client *c, const void *data, size_t len, char ret_digest[72], struct err *err);
/* PUTs a manifest or index under reference (a tag or its digest). */
int registry_put_manifest(struct registry_client *c, const char *reference, const char *media_type, const void *data,
			  size_t len, struct err *err);
/* The referrers of subject_digest with this artifact type: the referrers API
 * where the registry has it, else the "sha256-<hex>" tag of the fallback
 * scheme.  *ret is an index (empty when there are none); *ret_from_tag says
 * which source answered, so that a writer knows what to update. */
int registry_get_referrers(struct registry_client *c, const char *subject_digest, const char *artifact_type,
			   struct manifest *ret, bool *ret_from_tag, struct err *err);
/* Adds a referrer to the "sha256-<hex>" tag index of subject_digest, for
 * registries without the referrers API (entries of other digests stay). */
int registry_add_referrer_tag(struct registry_client *c, const char *subject_digest, const char *media_type,
			      const char *digest, int64_t size, const char *artifact_type, struct err *err);
/* Fetches a manifest by digest and verifies it. */
int registry_get_manifest_by_digest(struct registry_client *c, const char *digest, struct manifest *ret,
				    struct err *err);

/* True when host ("host[:port]") is in the insecure list (podman's
 * --tls-verify=false): TLS without verification, and plain HTTP if the
 * registry does not speak TLS.  "host" covers every port of host. */
bool registry_host_is_insecure(const char *domain, char *const *insecure);
/* True for localhost and loopback addresses: these, too, may be spoken to
 * in plain HTTP when they do not speak TLS (verification stays on). */
bool registry_host_is_loopback(const char *domain);
/* Where the API of a registry domain is served (docker.io's is elsewhere). */
const char *registry_endpoint_host(const char *domain);
