/* The registry client's state and its requests, for the files of registry/
 * that speak the API beside client.c (push.c). */
#pragma once

#include <time.h>

#include "curl_lib.h"
#include "registry.h"
#include "response.h"

/* A registry's own TLS trust and identity (tls.c). */
struct tls_material {
	char *ca_pem; /* the *.crt files, one after the other; NULL when none */
	size_t ca_len;
	char *ca_files; /* their paths, for error messages */
	char *client_cert, *client_key;
};

/* Loads what the certs.d directory of host ("host[:port]") holds, or of
 * cert_dir when it is not NULL (podman's --cert-dir); a registry without a
 * directory has no material. */
int tls_material_load(const char *host, const char *cert_dir, struct tls_material *ret, struct err *err);
/* A deep copy (for a client's duplicate); -ENOMEM. */
int tls_material_copy(const struct tls_material *from, struct tls_material *to);
void tls_material_done(struct tls_material *t);

struct registry_client {
	CURL *curl;
	struct image_ref ref;
	char *base_url;           /* "https://host:port", or "http://" once plain HTTP was settled on */
	char *credentials;        /* "user:password" or NULL */
	char *credentials_source; /* the file or helper they came from, for messages */
	char *token;              /* bearer token for the repository's pull scope */
	time_t token_expiry;
	bool basic_auth; /* the registry asked for basic credentials */
	struct platform platform;
	size_t max_document_size;
	bool insecure;             /* TLS unverified and plain HTTP allowed, as podman's insecure */
	bool loopback;             /* a loopback host: plain HTTP if it speaks no TLS, and no proxy */
	const atomic_bool *cancel; /* once set, this client's transfers give up (not copied by dup) */
	bool endpoint_known;       /* a request got through: no more falling back */
	bool plain_http;
	CURLcode last_code;    /* of the last transfer, to tell a TLS handshake failure */
	bool fresh_connection; /* the next request opens a connection of its own */
	struct tls_material tls;
	/* The options it was made with (their lists live as long as the
	 * process), and the endpoints it moves to when this one fails. */
	struct registry_options opts;
	struct registry_endpoint *fallbacks;
	size_t n_fallbacks, next_fallback;
	bool single_ranges; /* the server answered a multi-range request otherwise than in parts */
	long stall_seconds; /* a transfer with no progress this long is retried */
	long fetch_timeout; /* seconds a request may take, retries included */
	void (*progress)(const char *digest, uint64_t done, uint64_t total);
	const char *progress_digest; /* set while a blob streams to a file */
	uint64_t progress_total;
	struct timespec progress_last;
	/* A request that goes unanswered is said once (registry_options.waiting). */
	void (*waiting)(const char *what, long seconds);
	const char *request_what;
	struct timespec request_started;
	bool wait_noticed;
};

/* Bytes that fail their digest may come from a broken proxy or CDN node as
 * well as from a bad blob: they are fetched again, on a new connection. */
#define DIGEST_ATTEMPTS 2

struct upload {
	const char *method; /* "POST", "PUT", "HEAD" */
	const char *content_type_header;
	const void *body;
	size_t len;
};

/* After a request to this endpoint failed: the client becomes one for the
 * next fallback endpoint (its name, TLS material, credentials), keeping its
 * connection handle.  -ENOENT when there is none left. */
int client_move_on(struct registry_client *c, struct err *err);
/* NULL when out of memory or without libcurl: the request that follows
 * then fails and says why. */
char *url_escape(struct registry_client *c, const char *s);
/* A request to the registry (a path under /v2/, or a URL it gave us),
 * answering one authentication challenge if needed; a status other than
 * 2xx is an error that names what and the registry's own words. */
int registry_request(struct registry_client *c, const char *path_or_url, const char *accept, const char *range,
		     const struct upload *up, struct response *resp, const char *what, struct err *err);
int registry_get(struct registry_client *c, const char *path, const char *accept, const char *range,
		 struct response *resp, const char *what, struct err *err);
/* The manifest at reference (a tag or a digest), verified against
 * expected_digest or, without one, the registry's Docker-Content-Digest. */
int get_manifest(struct registry_client *c, const char *reference, const char *expected_digest, struct manifest *ret,
		 char **ret_digest, struct err *err);
