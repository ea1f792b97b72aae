/* The distribution API v2 over libcurl: manifests and blobs, with the bearer
 * token flow, retries and digest verification. */
#include "client_internal.h"
#include "curl_lib.h"
#include "response.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#define MAX_ATTEMPTS 5
#define MAX_RETRY_AFTER_SECONDS 30
#define TOKEN_MAX_SIZE (1u << 20)

static const char manifest_accept[] =
    "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json";

bool registry_host_is_loopback(const char *domain)
{
	char host[256];
	const char *end;
	if (domain[0] == '[') {
		end = strchr(domain, ']');
		if (!end)
			return false;
		domain++;
	} else {
		end = strchr(domain, ':');
		if (!end)
			end = domain + strlen(domain);
	}
	if ((size_t)(end - domain) >= sizeof(host))
		return false;
	memcpy(host, domain, (size_t)(end - domain));
	host[end - domain] = '\0';
	if (strcmp(host, "localhost") == 0)
		return true;
	struct in_addr a4;
	struct in6_addr a6;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, host, &a6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&a6);
	return false;
}

bool registry_host_is_insecure(const char *domain, char *const *insecure)
{
	for (char *const *p = insecure; p && *p; p++) {
		if (strcmp(*p, domain) == 0)
			return true;
		/* "host" covers every port of host. */
		size_t len = strlen(*p);
		if (!strchr(*p, ':') && strncmp(*p, domain, len) == 0 && domain[len] == ':')
			return true;
	}
	return false;
}

const char *registry_endpoint_host(const char *domain)
{
	/* docker.io names images; the API is served elsewhere, as every docker
	 * and podman client knows. */
	return strcmp(domain, "docker.io") == 0 ? "registry-1.docker.io" : domain;
}

static int copy_fallbacks(struct registry_client *c, const struct registry_endpoint *list, size_t n)
{
	if (n == 0)
		return 0;
	if (!(c->fallbacks = calloc(n, sizeof(*c->fallbacks))))
		return -ENOMEM;
	for (; c->n_fallbacks < n; c->n_fallbacks++) {
		c->fallbacks[c->n_fallbacks] = list[c->n_fallbacks];
		if (image_ref_copy(&list[c->n_fallbacks].ref, &c->fallbacks[c->n_fallbacks].ref) < 0)
			return -ENOMEM;
	}
	return 0;
}

/* Hosts that answered a TLS hello as a plain HTTP server would, in this
 * process.  A client made later for one of them speaks HTTP from its first
 * request: else each new connection (a mount opens several per layer)
 * first failed a TLS handshake, a round trip or more each. */
#define PLAIN_HOSTS_MAX 16
static pthread_mutex_t plain_hosts_lock = PTHREAD_MUTEX_INITIALIZER;
static char *plain_hosts[PLAIN_HOSTS_MAX];

/* Where host is in plain_hosts, else the first free slot, else
 * PLAIN_HOSTS_MAX; plain_hosts_lock is held. */
static size_t plain_host_slot_locked(const char *host)
{
	size_t i = 0;
	while (i < PLAIN_HOSTS_MAX && plain_hosts[i] && strcmp(plain_hosts[i], host) != 0)
		i++;
	return i;
}

static bool host_speaks_plain_http(const char *host)
{
	pthread_mutex_lock(&plain_hosts_lock);
	size_t i = plain_host_slot_locked(host);
	bool found = i < PLAIN_HOSTS_MAX && plain_hosts[i];
	pthread_mutex_unlock(&plain_hosts_lock);
	return found;
}

/* A host past PLAIN_HOSTS_MAX is learnt again by each client, as before. */
static void remember_plain_http(const char *host)
{
	pthread_mutex_lock(&plain_hosts_lock);
	size_t i = plain_host_slot_locked(host);
	if (i < PLAIN_HOSTS_MAX && !plain_hosts[i])
		plain_hosts[i] = strdup(host);
	pthread_mutex_unlock(&plain_hosts_lock);
}

int registry_client_new(const struct image_ref *ref, const struct registry_options *opts, struct registry_client **ret,
			struct err *err)
{
	struct registry_client *c = calloc(1, sizeof(*c));
	if (!c)
		return err_set(err, ENOMEM, "registry \"%s\": out of memory", ref->domain);
	c->insecure = opts->insecure || registry_host_is_insecure(ref->domain, opts->insecure_registries);
	c->loopback = registry_host_is_loopback(ref->domain);
	c->ref.domain = strdup(ref->domain);
	c->ref.repository = strdup(ref->repository);
	c->ref.tag = ref->tag ? strdup(ref->tag) : NULL;
	c->ref.digest = ref->digest ? strdup(ref->digest) : NULL;
	const char *host = registry_endpoint_host(ref->domain);
	c->plain_http = (c->insecure || c->loopback) && host_speaks_plain_http(host);
	c->base_url = strdup_printf("%s://%s", c->plain_http ? "http" : "https", host);
	c->platform = opts->platform;
	c->max_document_size = opts->max_document_size ? opts->max_document_size : MANIFEST_MAX_SIZE;
	c->stall_seconds = opts->stall_seconds > 0 ? opts->stall_seconds : 30;
	c->fetch_timeout = opts->fetch_timeout > 0 ? opts->fetch_timeout : 900;
	c->progress = opts->progress;
	c->waiting = opts->waiting;
	if (!c->ref.domain || !c->ref.repository || !c->base_url || (ref->tag && !c->ref.tag) ||
	    (ref->digest && !c->ref.digest)) {
		registry_client_free(c);
		return err_set(err, ENOMEM, "registry \"%s\": out of memory", ref->domain);
	}
	int r = tls_material_load(ref->domain, opts->cert_dir, &c->tls, err);
	if (r < 0) {
		registry_client_free(c);
		return r == -ENOMEM ? err_set(err, ENOMEM, "registry \"%s\": out of memory", ref->domain)
				    : err_wrap(err, "registry \"%s\"", ref->domain);
	}
	/* Auth files may hold credentials for a namespace or a repository. */
	_cleanup_free_ char *name =
	    *ref->repository ? strdup_printf("%s/%s", ref->domain, ref->repository) : strdup(ref->domain);
	if (!name || auth_lookup_credentials(name, &c->credentials, &c->credentials_source) < 0)
		c->credentials = c->credentials_source = NULL;
	c->opts = *opts;
	c->opts.fallbacks = NULL;
	c->opts.n_fallbacks = 0;
	if (copy_fallbacks(c, opts->fallbacks, opts->n_fallbacks) < 0) {
		registry_client_free(c);
		return err_set(err, ENOMEM, "registry \"%s\": out of memory", ref->domain);
	}
	*ret = c;
	return 0;
}

#define SWAP(a, b)                                                                                                     \
	do {                                                                                                           \
		__typeof__(a) swap_tmp = (a);                                                                          \
		(a) = (b);                                                                                             \
		(b) = swap_tmp;                                                                                        \
	} while (0)

int client_move_on(struct registry_client *c, struct err *err)
{
	if (c->next_fallback >= c->n_fallbacks)
		return -ENOENT;
	const struct registry_endpoint *ep = &c->fallbacks[c->next_fallback++];
	struct registry_options opts = c->opts;
	opts.insecure = ep->insecure;
	struct registry_client *n = NULL;
	int r = registry_client_new(&ep->ref, &opts, &n, err);
	if (r < 0)
		return r;
	SWAP(c->ref, n->ref);
	SWAP(c->base_url, n->base_url);
	SWAP(c->credentials, n->credentials);
	SWAP(c->credentials_source, n->credentials_source);
	SWAP(c->token, n->token);
	SWAP(c->token_expiry, n->token_expiry);
	SWAP(c->basic_auth, n->basic_auth);
	SWAP(c->insecure, n->insecure);
	SWAP(c->loopback, n->loopback);
	SWAP(c->endpoint_known, n->endpoint_known);
	SWAP(c->plain_http, n->plain_http);
	SWAP(c->single_ranges, n->single_ranges);
	SWAP(c->tls, n->tls);
	registry_client_free(n);
	c->fresh_connection = true;
	return 0;
}

struct registry_client *registry_client_dup(const struct registry_client *c)
{
	struct registry_client *d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->insecure = c->insecure;
	d->loopback = c->loopback;
	d->endpoint_known = c->endpoint_known;
	d->plain_http = c->plain_http;
	d->single_ranges = c->single_ranges;
	d->platform = c->platform;
	d->max_document_size = c->max_document_size;
	d->stall_seconds = c->stall_seconds;
	d->fetch_timeout = c->fetch_timeout;
	d->progress = c->progress;
	d->basic_auth = c->basic_auth;
	d->token_expiry = c->token_expiry;
	d->opts = c->opts;
	d->next_fallback = c->next_fallback;
	if (copy_fallbacks(d, c->fallbacks, c->n_fallbacks) < 0)
		return registry_client_free(d);
	d->ref.domain = strdup(c->ref.domain);
	d->ref.repository = strdup(c->ref.repository);
	d->ref.tag = c->ref.tag ? strdup(c->ref.tag) : NULL;
	d->ref.digest = c->ref.digest ? strdup(c->ref.digest) : NULL;
	d->base_url = strdup(c->base_url);
	d->credentials = c->credentials ? strdup(c->credentials) : NULL;
	d->credentials_source = c->credentials_source ? strdup(c->credentials_source) : NULL;
	d->token = c->token ? strdup(c->token) : NULL;
	if (tls_material_copy(&c->tls, &d->tls) < 0)
		return registry_client_free(d);
	if (!d->ref.domain || !d->ref.repository || !d->base_url || (c->ref.tag && !d->ref.tag) ||
	    (c->ref.digest && !d->ref.digest) || (c->credentials && !d->credentials) || (c->token && !d->token))
		return registry_client_free(d);
	return d;
}

struct registry_client *registry_client_split(struct registry_client *c)
{
	struct registry_client *d = registry_client_dup(c);
	if (d) {
		/* libcurl keeps a handle's connections with the handle. */
		d->curl = c->curl;
		d->fresh_connection = c->fresh_connection;
		c->curl = NULL;
		c->fresh_connection = false;
	}
	return d;
}

struct registry_client *registry_client_free(struct registry_client *c)
{
	if (!c)
		return NULL;
	if (c->curl)
		curl_lib_get(NULL)->easy_cleanup(c->curl);
	image_ref_done(&c->ref);
	tls_material_done(&c->tls);
	for (size_t i = 0; i < c->n_fallbacks; i++)
		image_ref_done(&c->fallbacks[i].ref);
	free(c->fallbacks);
	free(c->credentials_source);
	free(c->base_url);
	if (c->credentials) {
		explicit_bzero(c->credentials, strlen(c->credentials));
		free(c->credentials);
	}
	free(c->token);
	free(c);
	return NULL;
}

/* The client's libcurl handle, made for its first request (see curl_lib.h). */
static const struct curl_lib *client_curl(struct registry_client *c, struct err *err)
{
	const struct curl_lib *curl = curl_lib_get(err);
	if (curl && !c->curl && !(c->curl = curl->easy_init())) {
		err_set(err, ENOMEM, "cannot create a libcurl handle");
		return NULL;
	}
	return curl;
}

static bool curl_error_is_transient(CURLcode code)
{
	switch (code) {
	case CURLE_COULDNT_CONNECT:
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
		return true;
	default:
		return false;
	}
}

/* A request with no answer for this long is said to the user, once. */
#define WAIT_NOTICE_MS 5000

static long ms_since(const struct timespec *then, const struct timespec *now)
{
	return (now->tv_sec - then->tv_sec) * 1000 + (now->tv_nsec - then->tv_nsec) / 1000000;
}

static atomic_bool transfers_aborted;

void registry_abort_transfers(void)
{
	atomic_store(&transfers_aborted, true);
}

void registry_client_cancel_on(struct registry_client *c, const atomic_bool *flag)
{
	c->cancel = flag;
}

static bool given_up(const struct registry_client *c)
{
	return atomic_load(&transfers_aborted) || (c->cancel && atomic_load(c->cancel));
}

static int given_up_error(const char *what, struct err *err)
{
	return err_set(err, ECANCELED, "%s: given up%s", what,
		       atomic_load(&transfers_aborted) ? ", imgfs is shutting down" : "");
}

static int xferinfo_cb(void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
	(void)dltotal;
	(void)ultotal;
	(void)ulnow;
	struct registry_client *c = userdata;
	/* libcurl calls this at least once a second, data or not. */
	if (given_up(c))
		return 1;
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (dlnow == 0 && c->waiting && !c->wait_noticed && ms_since(&c->request_started, &now) >= WAIT_NOTICE_MS) {
		c->wait_noticed = true;
		c->waiting(c->request_what, ms_since(&c->request_started, &now) / 1000);
	}
	/* The end is reported once, after the digest is checked. */
	if (c->progress && c->progress_digest && dlnow > 0 && (uint64_t)dlnow < c->progress_total &&
	    ms_since(&c->progress_last, &now) >= 100) {
		c->progress_last = now;
		c->progress(c->progress_digest, (uint64_t)dlnow, c->progress_total);
	}
	return 0;
}

/* Between attempts: in slices, so that an abort ends the wait too. */
static void sleep_ms(const struct registry_client *c, long ms)
{
	for (long slice; ms > 0 && !given_up(c); ms -= slice) {
		slice = ms < 100 ? ms : 100;
		struct timespec ts = { .tv_sec = 0, .tv_nsec = slice * 1000000L };
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
	}
}

/* Appends to buf the subject and issuer of the certificate the server at
 * url presents, read on a connection that verifies nothing and sends no
 * request: what a user needs to tell a wrong CA from a wrong server. */
static void describe_peer_certificate(struct registry_client *c, const struct curl_lib *curl, const char *url,
				      char *buf, size_t size)
{
	curl->easy_reset(c->curl);
	curl->easy_setopt(c->curl, CURLOPT_URL, url);
	curl->easy_setopt(c->curl, CURLOPT_CONNECT_ONLY, 1L);
	curl->easy_setopt(c->curl, CURLOPT_SSL_VERIFYPEER, 0L);
	curl->easy_setopt(c->curl, CURLOPT_SSL_VERIFYHOST, 0L);
	curl->easy_setopt(c->curl, CURLOPT_CERTINFO, 1L);
	curl->easy_setopt(c->curl, CURLOPT_CONNECTTIMEOUT, 5L);
	curl->easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L);
	struct curl_certinfo *info = NULL;
	if (curl->easy_perform(c->curl) != CURLE_OK ||
	    curl->easy_getinfo(c->curl, CURLINFO_CERTINFO, &info) != CURLE_OK || !info || info->num_of_certs < 1)
		return;
	const char *subject = NULL, *issuer = NULL;
	for (struct curl_slist *l = info->certinfo[0]; l; l = l->next) {
		if (str_has_prefix(l->data, "Subject:"))
			subject = l->data + strlen("Subject:");
		else if (str_has_prefix(l->data, "Issuer:"))
			issuer = l->data + strlen("Issuer:");
	}
	size_t used = strlen(buf);
	if (subject)
		snprintf(buf + used, size - used, "; the registry's certificate is \"%s\", issued by \"%s\"", subject,
			 issuer ? issuer : "?");
	/* The connection is not reused for requests that verify. */
	curl->easy_reset(c->curl);
	c->fresh_connection = true;
}

/* The headers of lines that are not NULL; one that cannot be added is
 * left out, and the request then fails and says why. */
static struct curl_slist *header_list(const struct curl_lib *curl, const char *const *lines, size_t n)
{
	struct curl_slist *headers = NULL, *h;
	for (size_t i = 0; i < n; i++)
		if (lines[i] && (h = curl->slist_append(headers, lines[i])))
			headers = h;
	return headers;
}

/* Which schemes, and which TLS trust and identity, a request uses. */
static void set_transport_options(struct registry_client *c, const struct curl_lib *curl)
{
	bool http_ok = c->insecure || c->plain_http;
	curl->easy_setopt(c->curl, CURLOPT_REDIR_PROTOCOLS_STR, http_ok ? "http,https" : "https");
	curl->easy_setopt(c->curl, CURLOPT_PROTOCOLS_STR, http_ok ? "http,https" : "https");
	if (c->insecure) {
		curl->easy_setopt(c->curl, CURLOPT_SSL_VERIFYPEER, 0L);
		curl->easy_setopt(c->curl, CURLOPT_SSL_VERIFYHOST, 0L);
	}
	/* With OpenSSL, libcurl trusts this blob besides its default bundle;
	 * the blob is not copied: it lives as long as the client. */
	struct curl_blob ca = { .data = c->tls.ca_pem, .len = c->tls.ca_len, .flags = CURL_BLOB_NOCOPY };
	if (c->tls.ca_pem)
		curl->easy_setopt(c->curl, CURLOPT_CAINFO_BLOB, &ca);
	if (c->tls.client_cert) {
		curl->easy_setopt(c->curl, CURLOPT_SSLCERT, c->tls.client_cert);
		curl->easy_setopt(c->curl, CURLOPT_SSLKEY, c->tls.client_key);
	}
	/* Proxies as podman (Go's net/http) takes them: never for a loopback
	 * registry, and HTTP_PROXY in capitals too (libcurl reads only
	 * http_proxy for http://, against CGI's HTTP_PROXY header). */
	const char *http_proxy = getenv("HTTP_PROXY");
	if (c->loopback)
		curl->easy_setopt(c->curl, CURLOPT_NOPROXY, "*");
	else if (c->plain_http && !getenv("http_proxy") && http_proxy && *http_proxy)
		curl->easy_setopt(c->curl, CURLOPT_PROXY, http_proxy);
	if (c->fresh_connection) {
		curl->easy_setopt(c->curl, CURLOPT_FRESH_CONNECT, 1L);
		curl->easy_setopt(c->curl, CURLOPT_FORBID_REUSE, 1L);
	}
}

/* The progress callback: progress and wait notices, and the abort of
 * registry_abort_transfers(). */
static void watch_transfer(struct registry_client *c, const struct curl_lib *curl, const char *what)
{
	curl->easy_setopt(c->curl, CURLOPT_NOPROGRESS, 0L);
	curl->easy_setopt(c->curl, CURLOPT_XFERINFOFUNCTION, xferinfo_cb);
	curl->easy_setopt(c->curl, CURLOPT_XFERINFODATA, c);
	if ((c->progress && c->progress_digest) || c->waiting) {
		clock_gettime(CLOCK_MONOTONIC, &c->request_started);
		c->request_what = what;
		c->wait_noticed = false;
	}
}

/* Where a request that was redirected ended, for locations.h. */
static int note_redirect(struct registry_client *c, const struct curl_lib *curl, struct response *resp)
{
	char *effective = NULL;
	long redirects = 0;
	if (curl->easy_getinfo(c->curl, CURLINFO_REDIRECT_COUNT, &redirects) != CURLE_OK || redirects == 0 ||
	    curl->easy_getinfo(c->curl, CURLINFO_EFFECTIVE_URL, &effective) != CURLE_OK || !effective)
		return 0;
	return (resp->effective_url = strdup(effective)) ? 0 : -ENOMEM;
}

/* Performs one request with retries on transient failures.  Authorization is
 * passed as a header; libcurl (>= 7.58) does not send custom Authorization
 * headers to a different host when following a redirect, which is what keeps
 * registry tokens away from the object storage a blob redirects to. */
static int http_request(struct registry_client *c, const char *url, const char *accept, const char *authorization,
			const char *range, const struct upload *up, struct response *resp, const char *what,
			struct err *err)
{
	char errbuf[CURL_ERROR_SIZE];
	long backoff_ms = 200;
	const struct curl_lib *curl = client_curl(c, err);
	if (!curl)
		return err_wrap(err, "%s", what);

	struct timespec started;
	clock_gettime(CLOCK_MONOTONIC, &started);
	for (int attempt = 1;; attempt++) {
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		long left_ms = c->fetch_timeout * 1000 - ms_since(&started, &now);
		if (given_up(c))
			return given_up_error(what, err);
		if (left_ms <= 0)
			return err_set(err, ETIMEDOUT, "%s: no complete answer within %ld s (fetch timeout)", what,
				       c->fetch_timeout);
		int rr = response_restart(resp);
		if (rr < 0)
			return err_set(err, -rr, "%s: cannot start the response again: %s", what, strerror(-rr));
		const char *lines[] = { accept, authorization, resp->resume_range[0] ? resp->resume_range : range,
					up ? up->content_type_header : NULL };
		struct curl_slist *headers = header_list(curl, lines, ARRAY_SIZE(lines));

		curl->easy_reset(c->curl);
		errbuf[0] = '\0';
		curl->easy_setopt(c->curl, CURLOPT_URL, url);
		curl->easy_setopt(c->curl, CURLOPT_HTTPHEADER, headers);
		curl->easy_setopt(c->curl, CURLOPT_ERRORBUFFER, errbuf);
		curl->easy_setopt(c->curl, CURLOPT_FOLLOWLOCATION, 1L);
		curl->easy_setopt(c->curl, CURLOPT_MAXREDIRS, 10L);
		set_transport_options(c, curl);
		curl->easy_setopt(c->curl, CURLOPT_CONNECTTIMEOUT, 20L);
		/* A stalled transfer counts as a connection error. */
		curl->easy_setopt(c->curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
		curl->easy_setopt(c->curl, CURLOPT_LOW_SPEED_TIME, c->stall_seconds);
		curl->easy_setopt(c->curl, CURLOPT_TIMEOUT_MS, left_ms);
		curl->easy_setopt(c->curl, CURLOPT_USERAGENT, "imgfs/0.1");
		curl->easy_setopt(c->curl, CURLOPT_HEADERFUNCTION, response_header_cb);
		curl->easy_setopt(c->curl, CURLOPT_HEADERDATA, resp);
		curl->easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, response_body_cb);
		curl->easy_setopt(c->curl, CURLOPT_WRITEDATA, resp);
		curl->easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L);
		watch_transfer(c, curl, what);
		if (up && strcmp(up->method, "HEAD") == 0) {
			curl->easy_setopt(c->curl, CURLOPT_NOBODY, 1L);
		} else if (up) {
			/* Uploads are not redirected: a 307 would need the body again. */
			curl->easy_setopt(c->curl, CURLOPT_FOLLOWLOCATION, 0L);
			curl->easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)up->len);
			curl->easy_setopt(c->curl, CURLOPT_POSTFIELDS, up->body ? up->body : "");
			curl->easy_setopt(c->curl, CURLOPT_CUSTOMREQUEST, up->method);
		}
		CURLcode code = curl->easy_perform(c->curl);
		c->last_code = code;
		c->fresh_connection = false;
		curl->slist_free_all(headers);
		curl->easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &resp->status);
		if (code == CURLE_OK && note_redirect(c, curl, resp) < 0)
			return -ENOMEM;

		if (code == CURLE_ABORTED_BY_CALLBACK)
			return given_up_error(what, err);
		if (code == CURLE_WRITE_ERROR && resp->stopped_early)
			code = CURLE_OK;
		if (code == CURLE_WRITE_ERROR && resp->too_big)
			return err_set(err, EFBIG, "%s: response is larger than allowed", what);
		if (code == CURLE_WRITE_ERROR && resp->write_errno)
			return err_set(err, resp->write_errno, "%s: cannot write to the cache: %s", what,
				       strerror(resp->write_errno));
		bool transient =
		    code != CURLE_OK ? curl_error_is_transient(code) : resp->status == 429 || resp->status >= 500;
		if (!transient || attempt >= MAX_ATTEMPTS) {
			if (code == CURLE_PEER_FAILED_VERIFICATION) {
				char peer[600];
				snprintf(peer, sizeof(peer), "%s", errbuf[0] ? errbuf : curl->easy_strerror(code));
				describe_peer_certificate(c, curl, url, peer, sizeof(peer));
				return err_set(err, EIO,
					       "%s: %s: %s (trusted: the system's CAs%s%s; a registry's own CA belongs "
					       "in certs.d/%s/*.crt)",
					       what, url, peer, c->tls.ca_files ? ", " : "",
					       c->tls.ca_files ? c->tls.ca_files : "", c->ref.domain);
			}
			if (code != CURLE_OK)
				return err_set(err, EIO, "%s: %s", what,
					       errbuf[0] ? errbuf : curl->easy_strerror(code));
			return 0;
		}
		long wait_ms = backoff_ms;
		if ((resp->status == 429 || resp->status == 503) && resp->retry_after > 0)
			wait_ms = (resp->retry_after > MAX_RETRY_AFTER_SECONDS ? MAX_RETRY_AFTER_SECONDS
									       : resp->retry_after) *
				  1000L;
		sleep_ms(c, wait_ms);
		backoff_ms *= 2;
	}
}

/* The registry's {"errors":[{"code":..,"message":..}]} body, as one line. */
static void describe_error_body(const struct response *resp, char *buf, size_t size)
{
	buf[0] = '\0';
	if (!resp->body)
		return;
	struct json_object *root = json_tokener_parse(resp->body), *errors;
	if (root && json_object_object_get_ex(root, "errors", &errors) &&
	    json_object_is_type(errors, json_type_array) && json_object_array_length(errors) > 0) {
		struct json_object *e = json_object_array_get_idx(errors, 0), *v;
		const char *msg = NULL;
		if (json_object_is_type(e, json_type_object) && json_object_object_get_ex(e, "message", &v))
			msg = json_object_get_string(v);
		else if (json_object_is_type(e, json_type_object) && json_object_object_get_ex(e, "code", &v))
			msg = json_object_get_string(v);
		if (msg)
			snprintf(buf, size, "%s", msg);
	}
	json_object_put(root);
}

static int status_error(const struct registry_client *c, const struct response *resp, const char *what, struct err *err)
{
	char detail[256];
	describe_error_body(resp, detail, sizeof(detail));
	/* Which credentials were refused, never what they are. */
	if (resp->status == 401 || resp->status == 403) {
		size_t used = strlen(detail);
		snprintf(detail + used, sizeof(detail) - used, "%s(%s%s)", used ? " " : "unauthorized ",
			 c->credentials ? "credentials from " : "no credentials found",
			 c->credentials && c->credentials_source ? c->credentials_source : "");
	}
	int code = resp->status == 404 ? ENOENT : resp->status == 401 || resp->status == 403 ? EACCES : EIO;
	const char *fallback = resp->status == 404   ? "not found"
			       : resp->status == 401 ? "unauthorized"
			       : resp->status == 403 ? "denied"
			       : resp->status == 429 ? "too many requests"
						     : "unexpected response";
	return err_set(err, code, "%s: HTTP %ld: %s", what, resp->status, detail[0] ? detail : fallback);
}

char *url_escape(struct registry_client *c, const char *s)
{
	const struct curl_lib *curl = client_curl(c, NULL);
	char *e = curl ? curl->easy_escape(c->curl, s, 0) : NULL;
	char *r = e ? strdup(e) : NULL;
	if (e)
		curl->free(e);
	return r;
}

static int fetch_token(struct registry_client *c, const struct auth_challenge *ch, struct err *err)
{
	/* A login asks for no repository: a token for no scope proves the credentials. */
	_cleanup_free_ char *scope = ch->scope            ? strdup(ch->scope)
				     : *c->ref.repository ? strdup_printf("repository:%s:pull", c->ref.repository)
							  : strdup("");
	if (!scope || !ch->realm)
		return err_set(err, EACCES, "registry \"%s\" sent a bearer challenge without a realm", c->ref.domain);
	_cleanup_free_ char *escaped_scope = url_escape(c, scope);
	_cleanup_free_ char *escaped_service = ch->service ? url_escape(c, ch->service) : NULL;
	_cleanup_free_ char *url =
	    strdup_printf("%s%s%s%s%s%s%s", ch->realm, strchr(ch->realm, '?') ? "&" : "?", *scope ? "scope=" : "",
			  *scope && escaped_scope ? escaped_scope : "", *scope && escaped_service ? "&" : "",
			  escaped_service ? "service=" : "", escaped_service ? escaped_service : "");
	if (!url)
		return -ENOMEM;
	/* Token servers live on other hosts; plain HTTP only where the registry itself may use it. */
	if (!str_has_prefix(url, "https://") && !((c->insecure || c->plain_http) && str_has_prefix(url, "http://")))
		return err_set(err, EACCES, "registry \"%s\": refusing token realm that is not https", c->ref.domain);

	/* An identity token (docker's "<token>" user) is exchanged by OAuth2's
	 * refresh_token grant, in a POST: never in a URL, which servers log. */
	struct upload form = { 0 };
	_cleanup_free_ char *form_body = NULL;
	if (c->credentials && str_has_prefix(c->credentials, IDENTITY_TOKEN_USER ":")) {
		_cleanup_free_ char *token = url_escape(c, c->credentials + strlen(IDENTITY_TOKEN_USER ":"));
		form_body =
		    token ? strdup_printf("grant_type=refresh_token&client_id=imgfs&refresh_token=%s%s%s%s%s", token,
					  escaped_service ? "&service=" : "", escaped_service ? escaped_service : "",
					  *scope ? "&scope=" : "", *scope && escaped_scope ? escaped_scope : "")
			  : NULL;
		if (token)
			explicit_bzero(token, strlen(token));
		if (!form_body)
			return -ENOMEM;
		form = (struct upload){ .method = "POST",
					.content_type_header = "Content-Type: application/x-www-form-urlencoded",
					.body = form_body,
					.len = strlen(form_body) };
	}
	_cleanup_free_ char *authorization = NULL;
	if (c->credentials && !form_body) {
		_cleanup_free_ char *b64 = base64_encode(c->credentials, strlen(c->credentials));
		if (!b64)
			return -ENOMEM;
		authorization = strdup_printf("Authorization: Basic %s", b64);
		explicit_bzero(b64, strlen(b64));
	}
	struct response resp;
	response_to_memory(&resp, TOKEN_MAX_SIZE);
	char what[512];
	snprintf(what, sizeof(what), "token for \"%s/%s\"", c->ref.domain, c->ref.repository);
	int r = form_body ? http_request(c, ch->realm, NULL, NULL, NULL, &form, &resp, what, err)
			  : http_request(c, url, NULL, authorization, NULL, NULL, &resp, what, err);
	if (authorization)
		explicit_bzero(authorization, strlen(authorization));
	if (form_body)
		explicit_bzero(form_body, strlen(form_body));
	if (r < 0)
		goto out;
	if (resp.status != 200) {
		r = status_error(c, &resp, what, err);
		goto out;
	}
	struct json_object *root = json_tokener_parse(resp.body ? resp.body : ""), *v;
	const char *token = NULL;
	if (root && json_object_is_type(root, json_type_object)) {
		if (json_object_object_get_ex(root, "token", &v) && json_object_is_type(v, json_type_string))
			token = json_object_get_string(v);
		else if (json_object_object_get_ex(root, "access_token", &v) &&
			 json_object_is_type(v, json_type_string))
			token = json_object_get_string(v);
	}
	if (!token || !*token) {
		json_object_put(root);
		r = err_set(err, EACCES, "%s: the token server answered without a token", what);
		goto out;
	}
	long expires = 60;
	if (json_object_object_get_ex(root, "expires_in", &v) && json_object_get_int64(v) > 0)
		expires = (long)json_object_get_int64(v);
	free(c->token);
	c->token = strdup(token);
	/* Renew a little early so that a long transfer does not start with a dying token. */
	c->token_expiry = time(NULL) + (expires > 30 ? expires - 10 : expires);
	json_object_put(root);
	r = c->token ? 0 : -ENOMEM;
out:
	response_done(&resp);
	return r;
}

static char *authorization_header(struct registry_client *c)
{
	if (c->token && time(NULL) < c->token_expiry)
		return strdup_printf("Authorization: Bearer %s", c->token);
	if (c->basic_auth && c->credentials) {
		_cleanup_free_ char *b64 = base64_encode(c->credentials, strlen(c->credentials));
		if (!b64)
			return NULL;
		return strdup_printf("Authorization: Basic %s", b64);
	}
	return NULL;
}

/* After a failed first request: whether the registry is one that may be
 * spoken to in plain HTTP and did not speak TLS at all (a certificate that
 * fails verification is not that), in which case the client now uses HTTP. */
static bool speaks_plain_http(struct registry_client *c)
{
	if (c->endpoint_known || !(c->insecure || c->loopback) || c->plain_http ||
	    c->last_code != CURLE_SSL_CONNECT_ERROR)
		return false;
	_cleanup_free_ char *http_url = strdup_printf("http://%s", c->base_url + strlen("https://"));
	if (!http_url)
		return false;
	remember_plain_http(c->base_url + strlen("https://"));
	free(c->base_url);
	c->base_url = TAKE_PTR(http_url);
	c->plain_http = true;
	return true;
}

static int request_endpoint(struct registry_client *c, const char *path_or_url, const char *accept, const char *range,
			    const struct upload *up, struct response *resp, const char *what, struct err *err)
{
	_cleanup_free_ char *url = str_has_prefix(path_or_url, "http://") || str_has_prefix(path_or_url, "https://")
				       ? strdup(path_or_url)
				   : path_or_url[0] == '/' ? strdup_printf("%s%s", c->base_url, path_or_url)
							   : strdup_printf("%s/v2/%s", c->base_url, path_or_url);
	if (!url)
		return -ENOMEM;
	/* Credentials go only to the registry itself, not to where it sends uploads. */
	size_t base_len = strlen(c->base_url);
	bool own_host = strncmp(url, c->base_url, base_len) == 0 && (url[base_len] == '/' || url[base_len] == '\0');
	for (int round = 0;; round++) {
		_cleanup_free_ char *authorization = own_host ? authorization_header(c) : NULL;
		int r = http_request(c, url, accept, authorization, range, up, resp, what, err);
		if (authorization)
			explicit_bzero(authorization, strlen(authorization));
		if (r < 0 && own_host && speaks_plain_http(c)) {
			/* The URL changes only in its scheme: "https" → "http". */
			memmove(url + 4, url + 5, strlen(url + 5) + 1);
			round--;
			continue;
		}
		if (r < 0)
			return r;
		c->endpoint_known = true;
		if (resp->status != 401 || round > 0 || !own_host)
			break;
		struct auth_challenge ch = { 0 };
		if (!resp->www_authenticate || auth_challenge_parse(resp->www_authenticate, &ch) < 0)
			break;
		if (strcmp(ch.scheme, "bearer") == 0) {
			r = fetch_token(c, &ch, err);
			auth_challenge_done(&ch);
			if (r < 0)
				return err_wrap(err, "authenticating");
		} else if (strcmp(ch.scheme, "basic") == 0 && c->credentials &&
			   !str_has_prefix(c->credentials, IDENTITY_TOKEN_USER ":")) {
			auth_challenge_done(&ch);
			c->basic_auth = true;
		} else {
			auth_challenge_done(&ch);
			break;
		}
	}
	if (resp->status < 200 || resp->status >= 300)
		return status_error(c, resp, what, err);
	return 0;
}

/* Whether a failed request may be asked of the next endpoint: one about
 * the repository (not a URL the registry gave) that the endpoint could not
 * answer (no answer, 5xx, 429), not one it answered with "not found" or
 * "denied" (an optional lookup, as for an index artifact, gets those), nor
 * one that failed here. */
static bool may_move_on(const struct registry_client *c, const char *path, const struct response *resp, int r)
{
	size_t len = strlen(c->ref.repository);
	bool endpoint_failed = resp->status == 0 || resp->status >= 500 || resp->status == 429;
	return r < 0 && r != -ENOMEM && endpoint_failed && c->next_fallback < c->n_fallbacks && !resp->write_errno &&
	       !resp->too_big && strncmp(path, c->ref.repository, len) == 0 && path[len] == '/';
}

int registry_request(struct registry_client *c, const char *path_or_url, const char *accept, const char *range,
		     const struct upload *up, struct response *resp, const char *what, struct err *err)
{
	_cleanup_free_ char *path = strdup(path_or_url);
	if (!path)
		return -ENOMEM;
	int r = request_endpoint(c, path, accept, range, up, resp, what, err);
	while (may_move_on(c, path, resp, r)) {
		/* The path names the repository, which differs from endpoint to endpoint. */
		_cleanup_free_ char *rest = strdup(path + strlen(c->ref.repository));
		if (!rest)
			return -ENOMEM;
		int moved = client_move_on(c, err);
		if (moved < 0)
			return moved == -ENOENT ? r : moved;
		free(path);
		if (!(path = strdup_printf("%s%s", c->ref.repository, rest)))
			return -ENOMEM;
		r = request_endpoint(c, path, accept, range, up, resp, what, err);
	}
	return r;
}

int registry_get(struct registry_client *c, const char *path, const char *accept, const char *range,
		 struct response *resp, const char *what, struct err *err)
{
	return registry_request(c, path, accept, range, NULL, resp, what, err);
}

int get_manifest(struct registry_client *c, const char *reference, const char *expected_digest, struct manifest *ret,
		 char **ret_digest, struct err *err)
{
	_cleanup_free_ char *path = strdup_printf("%s/manifests/%s", c->ref.repository, reference);
	_cleanup_free_ char *name = strdup_printf("%s/%s", c->ref.domain, c->ref.repository);
	char what[1024];
	snprintf(what, sizeof(what), "manifest \"%s%s%s\"", name ? name : "",
		 str_has_prefix(reference, "sha256:") ? "@" : ":", reference);
	struct response resp;
	response_to_memory(&resp, MANIFEST_MAX_SIZE);
	char digest[DIGEST_SHA256_LEN + 1];
	int r;
	for (int attempt = 1;; attempt++) {
		r = registry_get(c, path, manifest_accept, NULL, &resp, what, err);
		if (r < 0)
			goto out;
		digest_sha256(resp.body ? resp.body : "", resp.body_len, digest);
		const char *want = expected_digest ? expected_digest : resp.docker_digest;
		if (!want || !str_has_prefix(want, "sha256:") || strcmp(want, digest) == 0)
			break;
		if (attempt < DIGEST_ATTEMPTS) {
			c->fresh_connection = true;
			continue;
		}
		r = err_set(err, EBADMSG, "%s: content digest %s does not match %s (fetched %d times)", what, digest,
			    want, attempt);
		goto out;
	}
	r = manifest_parse(resp.body ? resp.body : "", resp.body_len, resp.content_type, ret, err);
	if (r < 0) {
		err_wrap(err, "%s", what);
		goto out;
	}
	ret->raw_size = resp.body_len;
	ret->raw = TAKE_PTR(resp.body);
	*ret_digest = strdup(digest);
	if (!*ret_digest) {
		manifest_done(ret);
		r = -ENOMEM;
	}
out:
	response_done(&resp);
	return r;
}

int registry_get_image_manifest(struct registry_client *c, struct manifest *ret, char **ret_digest, struct err *err)
{
	struct manifest m;
	char *digest = NULL;
	const char *reference = c->ref.digest ? c->ref.digest : c->ref.tag;
	int r = get_manifest(c, reference, c->ref.digest, &m, &digest, err);
	if (r < 0)
		return r;
	if (m.kind == MANIFEST_INDEX) {
		int i = manifest_select_platform(&m, &c->platform);
		if (i < 0) {
			char has[512] = "";
			for (size_t k = 0; k < m.n_layers && strlen(has) < sizeof(has) - 64; k++) {
				const struct descriptor *d = &m.layers[k];
				if (d->os && d->architecture)
					snprintf(has + strlen(has), sizeof(has) - strlen(has), "%s%s/%s%s%s",
						 *has ? ", " : "", d->os, d->architecture, d->variant ? "/" : "",
						 d->variant ? d->variant : "");
			}
			r = err_set(err, ENOENT, "image \"%s/%s\" has no manifest for platform %s/%s%s%s (it has %s)",
				    c->ref.domain, c->ref.repository, c->platform.os, c->platform.architecture,
				    *c->platform.variant ? "/" : "", c->platform.variant, *has ? has : "none");
			manifest_done(&m);
			free(digest);
			return r;
		}
		_cleanup_free_ char *child = strdup(m.layers[i].digest);
		manifest_done(&m);
		free(digest);
		digest = NULL;
		if (!child)
			return -ENOMEM;
		r = get_manifest(c, child, child, &m, &digest, err);
		if (r < 0)
			return r;
		if (m.kind != MANIFEST_IMAGE) {
			manifest_done(&m);
			free(digest);
			return err_set(err, EINVAL, "manifest \"%s/%s@%s\": an index may not point at another index",
				       c->ref.domain, c->ref.repository, child);
		}
	}
	*ret = m;
	*ret_digest = digest;
	return 0;
}
