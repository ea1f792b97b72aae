/* Reference, challenge, credential and manifest parsing. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "locations.h"
#include "registry.h"
#include "tap.h"

static void check_ref(const char *text, const char *domain, const char *repo, const char *tag, const char *digest)
{
	struct image_ref ref = { 0 };
	struct err err = { 0 };
	int r = image_ref_parse(text, &ref, &err);
	ok(r == 0, "parse \"%s\"", text);
	if (r < 0) {
		printf("#   %s\n", err.msg);
		return;
	}
	is_str(ref.domain, domain, "  domain of \"%s\"", text);
	is_str(ref.repository, repo, "  repository of \"%s\"", text);
	is_str(ref.tag, tag, "  tag of \"%s\"", text);
	is_str(ref.digest, digest, "  digest of \"%s\"", text);
	image_ref_done(&ref);
}

static void check_bad_ref(const char *text)
{
	struct image_ref ref = { 0 };
	struct err err = { 0 };
	int r = image_ref_parse(text, &ref, &err);
	char quoted[512];
	snprintf(quoted, sizeof(quoted), "\"%s\"", text);
	ok(r == -EINVAL && strstr(err.msg, quoted), "reject \"%s\" with a message quoting it (%s)", text, err.msg);
}

#define D64 "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static void test_refs(void)
{
	check_ref("busybox", "docker.io", "library/busybox", "latest", NULL);
	check_ref("library/busybox:1.36", "docker.io", "library/busybox", "1.36", NULL);
	check_ref("docker.io/busybox", "docker.io", "library/busybox", "latest", NULL);
	check_ref("user/app", "docker.io", "user/app", "latest", NULL);
	check_ref("localhost/app", "localhost", "app", "latest", NULL);
	check_ref("localhost:5000/ns/name:tag", "localhost:5000", "ns/name", "tag", NULL);
	check_ref("127.0.0.1:5000/a/b/c:v1.2-x_y", "127.0.0.1:5000", "a/b/c", "v1.2-x_y", NULL);
	check_ref("[::1]:5000/app", "[::1]:5000", "app", "latest", NULL);
	check_ref("quay.example/a__b/c--d.e:t", "quay.example", "a__b/c--d.e", "t", NULL);
	check_ref("name@" D64, "docker.io", "library/name", NULL, D64);
	check_ref("host:1/name:tag@" D64, "host:1", "name", "tag", D64);
	/* distribution/reference's normalisation of Docker Hub names */
	check_ref("index.docker.io/busybox", "docker.io", "library/busybox", "latest", NULL);
	check_ref("index.docker.io/user/app:1", "docker.io", "user/app", "1", NULL);
	check_ref("docker.io/library/busybox:1.36@" D64, "docker.io", "library/busybox", "1.36", D64);
	check_ref("registry-1.docker.io/busybox", "registry-1.docker.io", "busybox", "latest", NULL);
	is_str(registry_endpoint_host("docker.io"), "registry-1.docker.io",
	       "docker.io is served at Docker Hub's API host");
	is_str(registry_endpoint_host("quay.example:5000"), "quay.example:5000",
	       "other registries serve their own API");

	check_bad_ref("");
	check_bad_ref("UPPER");
	check_bad_ref("name:");
	check_bad_ref("name:-tag");
	check_bad_ref("a//b");
	check_bad_ref("/a");
	check_bad_ref("a/");
	check_bad_ref("a@sha256:abc");
	check_bad_ref("a@md5:0123");
	check_bad_ref("host:port/x");
	check_bad_ref("a_-b");
	check_bad_ref("-a");
	check_bad_ref("a/..");
	check_bad_ref("[zz]:1/a");
	check_bad_ref("bad host.com/a");

	struct image_ref ref;
	ok(image_ref_parse("x", &ref, NULL) == 0, "parse without an error object");
	char *s = image_ref_format(&ref);
	is_str(s, "docker.io/library/x:latest", "canonical form");
	free(s);
	image_ref_done(&ref);
}

static void test_challenges(void)
{
	struct auth_challenge c;
	ok(auth_challenge_parse("Bearer realm=\"https://auth.example/token\",service=\"registry.example\","
				"scope=\"repository:library/busybox:pull\"",
				&c) == 0,
	   "parse a bearer challenge");
	is_str(c.scheme, "bearer", "  scheme");
	is_str(c.realm, "https://auth.example/token", "  realm");
	is_str(c.service, "registry.example", "  service");
	is_str(c.scope, "repository:library/busybox:pull", "  scope");
	auth_challenge_done(&c);

	ok(auth_challenge_parse("basic  REALM=plain , charset=\"UTF-8\"", &c) == 0, "parse a basic challenge");
	is_str(c.scheme, "basic", "  scheme is lowercased");
	is_str(c.realm, "plain", "  unquoted value");
	ok(c.scope == NULL, "  no scope");
	auth_challenge_done(&c);

	ok(auth_challenge_parse("Bearer realm=\"a\\\"b\"", &c) == 0, "quoted-pair in a value");
	is_str(c.realm, "a\"b", "  escaped quote");
	auth_challenge_done(&c);

	ok(auth_challenge_parse("Bearer realm=\"unterminated", &c) == -EINVAL, "unterminated quote is an error");
	ok(auth_challenge_parse("", &c) == -EINVAL, "empty header is an error");
	ok(auth_challenge_parse("Bearer realm=\"x\", Basic realm=\"y\"", &c) == 0, "two challenges: the first wins");
	is_str(c.realm, "x", "  realm of the first");
	auth_challenge_done(&c);
}

static void test_credentials(void)
{
	/* "user:pa:ss" */
	const char *json = "{\"auths\":{\"other.example\":{\"auth\":\"eDp5\"},"
			   "\"https://reg.example:5000/v1/\":{\"auth\":\"dXNlcjpwYTpzcw==\"}}}";
	char *cred = NULL;
	ok(auth_credentials_from_json(json, strlen(json), "reg.example:5000", &cred) == 0,
	   "credentials for a URL-shaped key");
	is_str(cred, "user:pa:ss", "  decoded user:password");
	free(cred);
	ok(auth_credentials_from_json(json, strlen(json), "reg.example", &cred) == -ENOENT,
	   "a host without the port does not match host:port");
	const char *hub = "{\"auths\":{\"https://index.docker.io/v1/\":{\"auth\":\"dXNlcjpwYTpzcw==\"}}}";
	ok(auth_credentials_from_json(hub, strlen(hub), "docker.io", &cred) == 0,
	   "docker login's Docker Hub key is docker.io's");
	free(cred);
	ok(auth_credentials_from_json(hub, strlen(hub), "index.docker.io.example", &cred) == -ENOENT,
	   "  and no other host's");
	ok(auth_credentials_from_json("{\"auths\":{\"h\":{\"auth\":\"!!!!\"}}}", 30, "h", &cred) == -EINVAL,
	   "invalid base64 is an error");
	ok(auth_credentials_from_json("{\"auths\":{\"h\":{\"auth\":\"bm9jb2xvbg==\"}}}", 37, "h", &cred) == -EINVAL,
	   "credentials without a colon are an error");
	ok(auth_credentials_from_json("not json", 8, "h", &cred) == -EINVAL, "malformed auth file");
	const char *nested = "{\"auths\":{\"r.example\":{\"auth\":\"aDpo\"},\"r.example/team\":{\"auth\":\"dDp0\"},"
			     "\"r.example/team/app\":{\"auth\":\"YTph\"},\"r.example/te\":{\"auth\":\"eDp4\"}}}";
	static const struct {
		const char *name, *want, *what;
	} specific[] = {
		{ "r.example/team/app", "a:a", "host/namespace/repo before host/namespace" },
		{ "r.example/team/other", "t:t", "host/namespace before host" },
		{ "r.example/teams/x", "h:h", "keys match whole path components" },
		{ "r.example", "h:h", "the host alone, for a login" },
	};
	for (size_t i = 0; i < sizeof(specific) / sizeof(specific[0]); i++) {
		cred = NULL;
		ok(auth_credentials_from_json(nested, strlen(nested), specific[i].name, &cred) == 0 && cred &&
		       strcmp(cred, specific[i].want) == 0,
		   "auths: %s (%s → %s)", specific[i].what, specific[i].name, cred ? cred : "none");
		free(cred);
	}
	const char *idt = "{\"auths\":{\"h\":{\"auth\":\"eDp5\",\"identitytoken\":\"rt-1\"}}}";
	ok(auth_credentials_from_json(idt, strlen(idt), "h", &cred) == 0 &&
	       strcmp(cred, IDENTITY_TOKEN_USER ":rt-1") == 0,
	   "an identitytoken wins over auth, as docker's");
	free(cred);

	char *helper = NULL;
	const char *all = "{\"credHelpers\":{\"h:5000\":\"pass\"},\"credsStore\":\"secretservice\","
			  "\"auths\":{\"h:5000\":{\"auth\":\"eDp5\"},\"a\":{\"auth\":\"eDp5\"}}}";
	ok(auth_source_from_json(all, strlen(all), "h:5000", &cred, &helper) == 0 && !cred && helper &&
	       strcmp(helper, "pass") == 0,
	   "credHelpers for the registry comes before auths");
	free(helper);
	ok(auth_source_from_json(all, strlen(all), "a", &cred, &helper) == 0 && cred && !helper &&
	       strcmp(cred, "x:y") == 0,
	   "auths comes before credsStore");
	free(cred);
	ok(auth_source_from_json(all, strlen(all), "other", &cred, &helper) == 0 && !cred && helper &&
	       strcmp(helper, "secretservice") == 0,
	   "credsStore for the rest");
	free(helper);
	ok(auth_source_from_json("{}", 2, "other", &cred, &helper) == -ENOENT && !cred && !helper,
	   "nothing for a registry the file does not know");
}

static const char oci_manifest[] =
    "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
    "\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"" D64 "\",\"size\":7},"
    "\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+zstd\",\"digest\":\"" D64 "\","
    "\"size\":123,\"annotations\":{\"k\":\"v\"}}]}";

static void test_manifests(void)
{
	struct manifest m;
	struct err err = { 0 };
	ok(manifest_parse(oci_manifest, strlen(oci_manifest), NULL, &m, &err) == 0, "parse an OCI manifest");
	ok(m.kind == MANIFEST_IMAGE && m.n_layers == 1 && m.config.size == 7, "  kind, layers, config");
	is_str(m.layers[0].media_type, "application/vnd.oci.image.layer.v1.tar+zstd", "  layer media type");
	is_str(descriptor_annotation(&m.layers[0], "k"), "v", "  annotation");
	manifest_done(&m);

	const char *no_type =
	    "{\"schemaVersion\":2,\"manifests\":[{\"digest\":\"" D64 "\",\"size\":1,"
	    "\"platform\":{\"os\":\"linux\",\"architecture\":\"arm64\",\"variant\":\"v8\"}},"
	    "{\"digest\":\"" D64 "\",\"size\":2,\"platform\":{\"os\":\"linux\",\"architecture\":\"amd64\"}}]}";
	ok(manifest_parse(no_type, strlen(no_type), NULL, &m, &err) == 0 && m.kind == MANIFEST_INDEX,
	   "an index without mediaType is recognised by its shape");
	struct platform p;
	ok(platform_parse("linux/amd64", &p) == 0 && manifest_select_platform(&m, &p) == 1, "select linux/amd64");
	ok(platform_parse("linux/arm64", &p) == 0 && manifest_select_platform(&m, &p) == 0,
	   "linux/arm64 matches the v8 entry");
	ok(platform_parse("linux/arm64/v9", &p) == 0 && manifest_select_platform(&m, &p) == -ENOENT,
	   "linux/arm64/v9 matches nothing");
	ok(platform_parse("linux", &p) == -EINVAL && platform_parse("linux/", &p) == -EINVAL &&
	       platform_parse("a/b/c/d", &p) == -EINVAL,
	   "malformed platforms are rejected");
	manifest_done(&m);

	const char *docker_list = "{\"schemaVersion\":2,\"manifests\":[]}";
	ok(manifest_parse(docker_list, strlen(docker_list),
			  "application/vnd.docker.distribution.manifest.list.v2+json; charset=utf-8", &m, &err) == 0 &&
	       m.kind == MANIFEST_INDEX && m.n_layers == 0,
	   "Content-Type decides when the body has no mediaType");
	manifest_done(&m);

	static const char *const bad[] = {
		"",
		"[]",
		"{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\"}",
		"{\"mediaType\":\"text/plain\",\"layers\":[]}",
		"{\"layers\":[],\"config\":{\"digest\":\"sha256:00\",\"size\":1}}",
		"{\"layers\":[{}],\"config\":{\"digest\":\"" D64 "\",\"size\":1}}",
		"{\"layers\":[],\"config\":{\"digest\":\"" D64 "\",\"size\":-1}}",
		"{\"layers\":{},\"config\":{\"digest\":\"" D64 "\",\"size\":1}}",
		"{\"layers\":[]} trailing",
		"{\"layers\":[],\"config\":{\"digest\":\"" D64 "/../x\",\"size\":1}}",
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		memset(&err, 0, sizeof(err));
		int r = manifest_parse(bad[i], strlen(bad[i]), NULL, &m, &err);
		ok(r < 0 && err.msg[0], "reject bad manifest %zu (%s)", i, err.msg);
	}
	char *huge = malloc(MANIFEST_MAX_SIZE + 2);
	memset(huge, ' ', MANIFEST_MAX_SIZE + 1);
	huge[MANIFEST_MAX_SIZE + 1] = '\0';
	ok(manifest_parse(huge, MANIFEST_MAX_SIZE + 1, NULL, &m, &err) == -EFBIG, "a manifest over 4 MiB is refused");
	free(huge);
}

static void test_digests(void)
{
	char d[DIGEST_SHA256_LEN + 1];
	digest_sha256("abc", 3, d);
	is_str(d, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "sha256 of \"abc\"");
	struct digester *g = digester_new();
	digester_update(g, "a", 1);
	digester_update(g, "bc", 2);
	char d2[DIGEST_SHA256_LEN + 1];
	digester_final(g, d2);
	is_str(d2, d, "streaming digest equals the one-shot digest");
	digester_update(g, "abc", 3);
	digester_final(g, d2);
	is_str(d2, d, "a digester is reset by its final digest");
	digester_free(g);
	ok(digest_is_valid(d) && !digest_is_valid("sha256:ABC") && !digest_is_valid("sha512:00"), "digest validation");
	ok(registry_host_is_loopback("127.0.0.1:5000") && registry_host_is_loopback("localhost") &&
	       registry_host_is_loopback("[::1]:5000") && !registry_host_is_loopback("example.com") &&
	       !registry_host_is_loopback("127.0.0.1.example:5000"),
	   "loopback registries are told from others");
	ok(!registry_host_is_insecure("127.0.0.1:5000", NULL), "loopback is not insecure: TLS is verified there too");
	char *list[] = { (char *)"reg.lan", (char *)"other.lan:5000", NULL };
	ok(registry_host_is_insecure("reg.lan:443", list) && registry_host_is_insecure("other.lan:5000", list) &&
	       !registry_host_is_insecure("other.lan:6000", list),
	   "--insecure-registry HOST covers every port, HOST:PORT one");
}

static void test_base64(void)
{
	char *text = base64_encode("user:pa\xffss", 10);
	is_str(text, "dXNlcjpwYf9zcw==", "base64 of a password with a byte over 127, padded");
	void *data = NULL;
	size_t len = 0;
	ok(text && base64_decode(text, strlen(text), &data, &len) == 0 && len == 10 &&
	       memcmp(data, "user:pa\xffss", 10) == 0,
	   "base64 decodes what it encoded");
	free(data);
	free(text);
	ok(base64_decode("", 0, &data, &len) == 0 && len == 0, "empty base64 is empty");
	free(data);
	ok(base64_decode("dXNlcg", 6, &data, &len) == -EINVAL, "base64 without its padding is refused");
	ok(base64_decode("dX*lcg==", 8, &data, &len) == -EINVAL, "a character outside base64 is refused");
}

/* The loader behind libcurl (registry/curl_lib.c) and libarchive (fs/archive_lib.c). */
static void test_dl_open_symbols(void)
{
	char err[256];
	size_t (*length)(const char *) = NULL;
	const struct dl_symbol present[] = { { "strlen", (void **)&length } };
	ok(dl_open_symbols("libc.so.6", present, 1, err, sizeof(err)) == 0 && length && length("abc") == 3,
	   "dl_open_symbols resolves a symbol of a library");
	void *missing_symbol;
	const struct dl_symbol absent[] = { { "imgfs_no_such_symbol", &missing_symbol } };
	ok(dl_open_symbols("libc.so.6", absent, 1, err, sizeof(err)) == -ELIBACC &&
	       strstr(err, "imgfs_no_such_symbol") && strstr(err, "libc.so.6"),
	   "a missing symbol is -ELIBACC, naming symbol and library (%s)", err);
	ok(dl_open_symbols("libimgfs-no-such-library.so.1", present, 1, err, sizeof(err)) == -ELIBACC &&
	       strstr(err, "libimgfs-no-such-library.so.1"),
	   "a missing library is -ELIBACC, named (%s)", err);
}

/* What imgfs umount and launch wait on for a process to be gone. */
static void test_pidfd_wait_exit(void)
{
	pid_t pid = fork();
	if (pid == 0) {
		pause();
		_exit(0);
	}
	int pidfd = pidfd_open(pid, 0);
	if (pidfd < 0 && errno == ENOSYS) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		skip("pidfd_open(2) is not available here (valgrind 3.19 does not know it)");
		return;
	}
	ok(pidfd >= 0 && !pidfd_wait_exit(pidfd, 50), "pidfd_wait_exit times out while the process runs");
	kill(pid, SIGKILL);
	ok(pidfd_wait_exit(pidfd, 5000), "pidfd_wait_exit returns once the process exited");
	waitpid(pid, NULL, 0);
	close(pidfd);
	ok(!pidfd_wait_exit(-1, 0), "pidfd_wait_exit without a pidfd waits for nothing");
}

/* Feeds body to a parser over ranges [10,14) and [20,26) of "0123...",
 * split at every byte when trickle; returns byteranges_finish or the error. */
static int parse_parts(const char *content_type, const char *body, bool trickle, struct byterange *ranges)
{
	static unsigned char a[4], b[6];
	memset(a, '.', sizeof(a));
	memset(b, '.', sizeof(b));
	ranges[0] = (struct byterange){ .off = 10, .len = 4, .buf = a };
	ranges[1] = (struct byterange){ .off = 20, .len = 6, .buf = b };
	struct byteranges *p = byteranges_new(content_type, ranges, 2);
	if (!p)
		return -EINVAL;
	size_t len = strlen(body);
	int r = 0;
	for (size_t i = 0; r == 0 && i < len; i += trickle ? 1 : len)
		r = byteranges_feed(p, body + i, trickle ? 1 : len);
	if (r == 0)
		r = byteranges_finish(p);
	byteranges_free(p);
	return r;
}

static void test_byteranges(void)
{
	const char *ct = "multipart/byteranges; boundary=XyZ";
	const char *body = "--XyZ\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 10-13/99\r\n\r\n"
			   "ABCD\r\n--XyZ\r\nContent-Range: bytes 20-25/99\r\n\r\nEF\r\n--\r\n--XyZ--\r\n";
	struct byterange r[2];
	for (int trickle = 0; trickle < 2; trickle++) {
		int rc = parse_parts(ct, body, trickle, r);
		ok(rc == 0 && r[0].got == 4 && memcmp(r[0].buf, "ABCD", 4) == 0 && r[1].got == 6 &&
		       memcmp(r[1].buf, "EF\r\n--", 6) == 0,
		   "two parts land in their ranges, a body that looks like a delimiter included (%s)",
		   trickle ? "a byte at a time" : "at once");
	}
	ok(parse_parts("multipart/byteranges; boundary=\"XyZ\"", body, false, r) == 0 && r[1].got == 6,
	   "a quoted boundary");
	ok(parse_parts(ct, "preamble\r\n--XyZ\r\nContent-Range: bytes 10-21/99\r\n\r\nABCDEFGHIJKL\r\n--XyZ--", false,
		       r) == 0 &&
	       memcmp(r[0].buf, "ABCD", 4) == 0 && r[0].got == 4 && r[1].got == 2 && memcmp(r[1].buf, "KL", 2) == 0,
	   "a part the server coalesced fills what it covers, no more");
	ok(parse_parts(
	       ct,
	       "--XyZ\r\nContent-Range: bytes 10-13/99\r\n\r\nABCD\r\n--XyZ\r\nContent-Range: bytes 20-25/99\r\n\r\nEF",
	       false, r) == -EBADMSG &&
	       r[1].got == 2,
	   "a truncated body is an error, and the range keeps count of what came");
	ok(parse_parts(
	       ct,
	       "--XyZ\r\nContent-Range: bytes 20-25/99\r\n\r\nEFGHIJ\r\n--XyZ\r\nContent-Range: bytes 10-13/99\r\n\r\n",
	       false, r) == -EBADMSG,
	   "parts out of order are refused");
	ok(parse_parts(ct, "--XyZ\r\nContent-Range: bytes 0-13/99\r\n\r\n", false, r) == -EBADMSG,
	   "a part before the span asked for is refused");
	ok(parse_parts(ct, "--XyZ\r\nContent-Range: bytes 20-99/99\r\n\r\n", false, r) == -EBADMSG,
	   "a part past the span asked for is refused");
	ok(parse_parts(ct, "--XyZ\r\n\r\nABCD\r\n--XyZ--\r\n", false, r) == -EBADMSG,
	   "a part without Content-Range is refused");
	ok(parse_parts(ct, "--XyZ\r\nContent-Range: bytes 13-10/99\r\n\r\n", false, r) == -EBADMSG,
	   "a backwards Content-Range is refused");
	ok(parse_parts(ct, "--XyZ\r\nContent-Range: bytes 10-13/99\r\n\r\nABCDjunk\r\n--XyZ--\r\n", false, r) ==
	       -EBADMSG,
	   "bytes after a body other than a delimiter are refused");
	ok(parse_parts("application/octet-stream", body, false, r) == -EINVAL &&
	       parse_parts("multipart/byteranges", body, false, r) == -EINVAL,
	   "no parser without multipart/byteranges and a boundary");

	unsigned char one[6];
	struct byterange single[2] = { { .off = 20, .len = 6, .buf = one }, { .off = 40, .len = 1, .buf = one } };
	struct byteranges *p = byteranges_new_single(" bytes 20-25/*", single, 2);
	ok(p && byteranges_feed(p, "EFGHIJ", 6) == 0 && byteranges_finish(p) == 0 && single[0].got == 6 &&
	       single[1].got == 0,
	   "a single-range answer fills the first range and leaves the other missing");
	ok(p && byteranges_feed(p, "x", 1) == -EBADMSG, "a single range longer than its Content-Range is refused");
	byteranges_free(p);
	ok(!byteranges_new_single("bytes 20-25", single, 2) && !byteranges_new_single("bytes */99", single, 2),
	   "a Content-Range without a length, or unsatisfied, is no single part");
}

/* The endpoints conf gives name, as "host/repo" words joined by spaces. */
static char *endpoints_of(struct registries_conf *conf, const char *name)
{
	struct image_ref ref;
	struct registry_endpoint *eps = NULL;
	size_t n = 0;
	struct err err = { 0 };
	if (image_ref_parse(name, &ref, NULL) < 0)
		return strdup("bad ref");
	int r = registries_conf_endpoints(conf, &ref, &eps, &n, &err);
	image_ref_done(&ref);
	if (r < 0)
		return strdup(err.msg);
	char buf[1024] = "";
	for (size_t i = 0; i < n; i++)
		snprintf(buf + strlen(buf), sizeof(buf) - strlen(buf), "%s%s%s/%s", i ? " " : "",
			 eps[i].insecure ? "!" : "", eps[i].ref.domain, eps[i].ref.repository);
	registry_endpoints_free(eps, n);
	return strdup(buf);
}

static void check_endpoints(struct registries_conf *conf, const char *name, const char *want, const char *what)
{
	char *got = endpoints_of(conf, name);
	is_str(got, want, "%s", what);
	free(got);
}

static char *candidates_of(struct registries_conf *conf, const char *text)
{
	char **names = NULL, buf[1024] = "";
	size_t n = 0;
	if (registries_conf_candidates(conf, text, &names, &n, NULL) < 0)
		return strdup("error");
	for (size_t i = 0; i < n; i++)
		snprintf(buf + strlen(buf), sizeof(buf) - strlen(buf), "%s%s", i ? " " : "", names[i]);
	registry_names_free(names, n);
	return strdup(buf);
}

static void test_registries_conf(void)
{
	struct registries_conf *conf = registries_conf_new();
	const char *base = "unqualified-search-registries = ['a.example', \"b.example\"]\n"
			   "[[registry]]\n"
			   "prefix = \"docker.io\"\n"
			   "location = \"hub.example\"\n"
			   "[[registry]]\n"
			   "prefix = \"docker.io/library\"\n"
			   "location = \"lib.example/official\"\n"
			   "insecure = true\n"
			   "[[registry.mirror]]\n"
			   "location = \"m1.example/lib\"\n"
			   "[[registry.mirror]]\n"
			   "location = \"m2.example/lib\"\n"
			   "pull-from-mirror = \"digest-only\"\n"
			   "[[registry]]\n"
			   "prefix = \"*.blocked.example\"\n"
			   "blocked = true\n"
			   "[aliases]\n"
			   "\"box\" = \"quay.example/tools/box\"\n"
			   "\"gone\" = \"quay.example/gone\"\n";
	struct err err = { 0 };
	ok(conf && registries_conf_parse(conf, base, strlen(base), "base.conf", &err) == 0,
	   "parse a registries.conf (%s)", err.msg);
	check_endpoints(conf, "busybox", "m1.example/lib/busybox !lib.example/official/busybox",
			"the longest prefix wins; tag: mirrors that serve tags, then the location");
	check_endpoints(conf, "busybox@" D64,
			"m1.example/lib/busybox m2.example/lib/busybox !lib.example/official/busybox",
			"digest: every mirror, in order, then the location");
	check_endpoints(conf, "someone/app", "hub.example/someone/app", "a shorter prefix for what the longer misses");
	check_endpoints(conf, "docker.io/libraryx/a", "hub.example/libraryx/a", "prefixes match whole components");
	check_endpoints(conf, "reg.other/x", "reg.other/x", "no prefix: the registry itself");
	char *blocked = endpoints_of(conf, "a.blocked.example:5000/x");
	ok(strstr(blocked, "blocked") && strstr(blocked, "base.conf"), "a wildcard blocks every host below it (%s)",
	   blocked);
	free(blocked);
	check_endpoints(conf, "blocked.example/x", "blocked.example/x", "  but not the domain itself");

	char *c = candidates_of(conf, "box:1");
	is_str(c, "quay.example/tools/box:1", "an alias names a short name, keeping its tag");
	free(c);
	c = candidates_of(conf, "tool/x@" D64);
	is_str(c, "a.example/tool/x@" D64 " b.example/tool/x@" D64, "search registries, in order");
	free(c);
	c = candidates_of(conf, "localhost:5000/x");
	is_str(c, "localhost:5000/x", "a name with a registry is itself");
	free(c);

	const char *drop_in = "unqualified-search-registries = []\n"
			      "[[registry]]\n"
			      "prefix = \"docker.io\"\n"
			      "location = \"hub2.example\"\n"
			      "[aliases]\n"
			      "gone = ''\n";
	ok(registries_conf_parse(conf, drop_in, strlen(drop_in), "drop-in.conf", &err) == 0, "parse a drop-in");
	check_endpoints(conf, "someone/app", "hub2.example/someone/app", "a drop-in's prefix replaces the same prefix");
	c = candidates_of(conf, "gone");
	is_str(c, "gone", "an empty alias takes one back; an empty search list means docker.io");
	free(c);
	registries_conf_free(conf);
	conf = registries_conf_new();
	const char *v1 = "[registries.search]\nregistries = ['one.example', 'two.example']\n"
			 "[registries.insecure]\nregistries = ['lan.example:5000']\n"
			 "[registries.block]\nregistries = ['bad.example']\n";
	ok(registries_conf_parse(conf, v1, strlen(v1), "v1.conf", &err) == 0, "the version 1 format is read (%s)",
	   err.msg);
	c = candidates_of(conf, "x");
	is_str(c, "one.example/x two.example/x", "  [registries.search]");
	free(c);
	check_endpoints(conf, "lan.example:5000/x", "!lan.example:5000/x", "  [registries.insecure]");
	blocked = endpoints_of(conf, "bad.example/x");
	ok(strstr(blocked, "blocked") != NULL, "  [registries.block] (%s)", blocked);
	free(blocked);
	registries_conf_free(conf);
	c = candidates_of(NULL, "busybox");
	is_str(c, "busybox", "without a registries.conf, a short name is itself");
	free(c);

	static const struct {
		const char *text, *needle;
	} bad[] = {
		{ "a = 'x", "line 1: unterminated string" },
		{ "\n\n[[registry]]\nprefix = 1.5\n", "line 4" },
		{ "a.b = 1", "dotted keys" },
		{ "a = 1\na = 2", "line 2: a key is defined twice" },
		{ "[registries.search]\nregistries = [1]", "array of strings" },
		{ "[[registry]]\ninsecure = true", "neither prefix nor location" },
		{ "[[registry]]\nprefix = '*.x'\nlocation = 'y'", "wildcard" },
		{ "[[registry]]\nprefix = 'x'\n[[registry.mirror]]\nlocation = 'y'\npull-from-mirror = 'some'",
		  "pull-from-mirror" },
		{ "unqualified-search-registries = [1]", "array of strings" },
		{ "a = [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]", "nested" },
		{ "a = \"\\q\"", "escape" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct registries_conf *b = registries_conf_new();
		struct err e = { 0 };
		int r = registries_conf_parse(b, bad[i].text, strlen(bad[i].text), "bad.conf", &e);
		ok(r == -EINVAL && strstr(e.msg, bad[i].needle) && strstr(e.msg, "bad.conf"), "malformed: %s (%s)",
		   bad[i].needle, e.msg);
		registries_conf_free(b);
	}
}

/* The redirects remembered: by registry, repository and blob, forgotten only as the
 * URL that failed, the oldest given up when the table is full. */
static void test_blob_locations(void)
{
	const char *reg = "https://registry.test", *other = "https://mirror.test";
	blob_location_learn(reg, "r/blobs/sha256:aa", "https://cdn.test/aa?sig=1");
	char *url = blob_location_find(reg, "r/blobs/sha256:aa");
	char *elsewhere = blob_location_find(other, "r/blobs/sha256:aa");
	char *other_repo = blob_location_find(reg, "s/blobs/sha256:aa");
	ok(url && strcmp(url, "https://cdn.test/aa?sig=1") == 0 && !elsewhere && !other_repo,
	   "a learnt location is found for its registry, repository and blob only: %s", url ? url : "(none)");
	free(other_repo);
	free(url);
	free(elsewhere);
	blob_location_learn(reg, "r/blobs/sha256:aa", "https://cdn.test/aa?sig=2");
	blob_location_forget(reg, "r/blobs/sha256:aa", "https://cdn.test/aa?sig=1");
	url = blob_location_find(reg, "r/blobs/sha256:aa");
	ok(url && strcmp(url, "https://cdn.test/aa?sig=2") == 0,
	   "forgetting an older URL keeps the one learnt since: %s", url ? url : "(none)");
	free(url);
	blob_location_forget(reg, "r/blobs/sha256:aa", "https://cdn.test/aa?sig=2");
	url = blob_location_find(reg, "r/blobs/sha256:aa");
	ok(!url, "a URL that failed is forgotten");
	free(url);
	char digest[32], where[64];
	for (int i = 0; i <= 64; i++) {
		snprintf(digest, sizeof(digest), "r/blobs/sha256:%02d", i);
		snprintf(where, sizeof(where), "https://cdn.test/%02d", i);
		blob_location_learn(reg, digest, where);
	}
	char *first = blob_location_find(reg, "r/blobs/sha256:00"),
	     *last = blob_location_find(reg, "r/blobs/sha256:64");
	ok(!first && last && strcmp(last, "https://cdn.test/64") == 0,
	   "the 65th blob takes the place of the first learnt");
	free(first);
	free(last);
}

/* An HTTP server on loopback that answers ranged reads of one blob, each
 * in two writes 100 ms apart (the first of them cut off, its connection
 * closed, when cut_first is set), and anything else that looks like HTTP
 * with an empty 200; a connection that does not speak it (a TLS hello) is
 * closed.  One request per connection. */
struct range_server {
	int listen_fd;
	char host[32];
	const unsigned char *blob;
	size_t blob_len;
	bool cut_first;
	int blob_answers;
	pthread_t thread;
};

static bool write_all(int fd, const void *data, size_t len)
{
	for (const char *p = data; len > 0;) {
		ssize_t n = write(fd, p, len);
		if (n <= 0)
			return false;
		p += n;
		len -= (size_t)n;
	}
	return true;
}

static void range_server_answer(struct range_server *s, int fd)
{
	char req[4096] = "";
	size_t n = 0;
	while (n < sizeof(req) - 1 && !strstr(req, "\r\n\r\n")) {
		ssize_t k = read(fd, req + n, sizeof(req) - 1 - n);
		if (k <= 0)
			return;
		n += (size_t)k;
		req[n] = 0;
		if (strncmp(req, "GET ", n < 4 ? n : 4) != 0)
			return;
	}
	unsigned long long first, last;
	const char *range = strstr(req, "Range: bytes=");
	char head[256];
	if (!strstr(req, "/blobs/") || !range || sscanf(range, "Range: bytes=%llu-%llu", &first, &last) != 2 ||
	    last < first || last >= s->blob_len) {
		snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
		(void)write_all(fd, head, strlen(head));
		return;
	}
	size_t len = (size_t)(last - first + 1), half = len / 2;
	snprintf(head, sizeof(head),
		 "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %llu-%llu/%zu\r\nContent-Length: %zu\r\n"
		 "Connection: close\r\n\r\n",
		 first, last, s->blob_len, len);
	bool cut = s->cut_first && s->blob_answers == 0;
	s->blob_answers++;
	if (!write_all(fd, head, strlen(head)) || !write_all(fd, s->blob + first, half) || cut)
		return;
	usleep(100 * 1000);
	(void)write_all(fd, s->blob + first + half, len - half);
}

static void *range_server_main(void *arg)
{
	struct range_server *s = arg;
	for (;;) {
		int fd = accept(s->listen_fd, NULL, NULL);
		if (fd < 0)
			return NULL; /* shut down */
		range_server_answer(s, fd);
		close(fd);
	}
}

static bool range_server_start(struct range_server *s)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t addr_len = sizeof(addr);
	s->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s->listen_fd < 0 || bind(s->listen_fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
	    listen(s->listen_fd, 8) < 0 || getsockname(s->listen_fd, (struct sockaddr *)&addr, &addr_len) < 0)
		return false;
	snprintf(s->host, sizeof(s->host), "127.0.0.1:%u", ntohs(addr.sin_port));
	return pthread_create(&s->thread, NULL, range_server_main, s) == 0;
}

static void range_server_stop(struct range_server *s)
{
	shutdown(s->listen_fd, SHUT_RDWR);
	pthread_join(s->thread, NULL);
	close(s->listen_fd);
}

/* What arrived() was told, call by call. */
struct arrivals {
	size_t got[64];
	size_t n;
	bool went_back;
};

static void note_arrival(void *ctx, size_t got)
{
	struct arrivals *a = ctx;
	if (a->n > 0 && got < a->got[a->n - 1])
		a->went_back = true;
	if (a->n < sizeof(a->got) / sizeof(a->got[0]))
		a->got[a->n++] = got;
}

static struct registry_client *range_client(const struct range_server *s)
{
	char text[128];
	snprintf(text, sizeof(text), "%s/test/ranges:v1", s->host);
	struct image_ref ref = { 0 };
	struct registry_options opts = { .stall_seconds = 5, .fetch_timeout = 30 };
	struct err err = { 0 };
	struct registry_client *c = NULL;
	if (image_ref_parse(text, &ref, &err) == 0 && registry_client_new(&ref, &opts, &c, &err) < 0)
		c = NULL;
	image_ref_done(&ref);
	return c;
}

/* A ranged read hands over its bytes as they come, and one cut off midway
 * is asked for again and starts over. */
static void test_range_streaming(void)
{
	size_t blob_len = 300000, off = 1000, len = 200000;
	unsigned char *blob = malloc(blob_len), *buf = calloc(1, len);
	struct range_server s = { .blob = blob, .blob_len = blob_len };
	if (!blob || !buf || !range_server_start(&s)) {
		ok(false, "an HTTP server on loopback for the ranged reads");
		free(blob);
		free(buf);
		return;
	}
	for (size_t i = 0; i < blob_len; i++)
		blob[i] = (unsigned char)(i * 7 + i / 251);
	struct registry_client *c = range_client(&s);
	struct arrivals seen = { 0 };
	struct err err = { 0 };
	int r = c ? registry_fetch_range_streaming(c, D64, off, len, buf, note_arrival, &seen, &err) : -EINVAL;
	ok(r == 0 && memcmp(buf, blob + off, len) == 0 && seen.n >= 2 && seen.got[0] < len &&
	       seen.got[seen.n - 1] == len && !seen.went_back,
	   "a ranged read answered in two pieces: %zu calls, the first with %zu of %zu bytes (%s)", seen.n,
	   seen.n ? seen.got[0] : 0, len, r < 0 ? err.msg : "no error");
	registry_client_free(c);

	s.cut_first = true;
	s.blob_answers = 0;
	memset(buf, 0, len);
	c = range_client(&s);
	seen = (struct arrivals){ 0 };
	r = c ? registry_fetch_range_streaming(c, D64, off, len, buf, note_arrival, &seen, &err) : -EINVAL;
	ok(r == 0 && memcmp(buf, blob + off, len) == 0 && s.blob_answers == 2 && seen.went_back &&
	       seen.got[seen.n - 1] == len,
	   "a ranged read cut off midway is asked for again and starts over: %d answers (%s)", s.blob_answers,
	   r < 0 ? err.msg : "no error");
	registry_client_free(c);
	range_server_stop(&s);
	free(blob);
	free(buf);
}

int main(void)
{
	test_blob_locations();
	test_byteranges();
	test_range_streaming();
	test_pidfd_wait_exit();
	test_dl_open_symbols();
	test_refs();
	test_challenges();
	test_credentials();
	test_manifests();
	test_digests();
	test_base64();
	test_registries_conf();
	return tap_done();
}
