/* A registry's own CAs and client certificate, from the certs.d directories
 * that podman (containers/image) and docker read, with their rules: the
 * first of ~/.config/containers/certs.d/HOST[:PORT], /etc/containers/certs.d/…
 * and /etc/docker/certs.d/… that exists is the registry's directory; in it,
 * every *.crt is a CA (added to the system's), and a *.cert with the *.key
 * of the same name is the client's pair. */
#include "client_internal.h"

#include <dirent.h>
#include <sys/stat.h>

#define CA_FILE_MAX_SIZE (1u << 20)

static const char *const system_cert_dirs[] = { "/etc/containers/certs.d", "/etc/docker/certs.d" };

/* The registry's directory, or NULL (out of memory); it may not exist. */
static char *registry_cert_dir(const char *host, const char *cert_dir)
{
	if (cert_dir)
		return strdup(cert_dir);
	const char *home = getenv("HOME");
	char *path = NULL;
	for (size_t i = 0; i <= ARRAY_SIZE(system_cert_dirs); i++) {
		free(path);
		if (i == 0)
			path = home && *home ? strdup_printf("%s/.config/containers/certs.d/%s", home, host) : NULL;
		else
			path = strdup_printf("%s/%s", system_cert_dirs[i - 1], host);
		struct stat st;
		if (path && stat(path, &st) == 0)
			return path;
		if (i > 0 && !path)
			return NULL;
	}
	return path;
}

/* A name with something before its suffix: ".crt" alone is not a CA. */
static bool has_suffix(const char *name, const char *suffix)
{
	return strlen(name) > strlen(suffix) && str_has_suffix(name, suffix);
}

static int append_ca(struct tls_material *t, const char *path, struct err *err)
{
	_cleanup_free_ char *data = NULL;
	size_t len;
	int r = read_file_capped(path, CA_FILE_MAX_SIZE, &data, &len);
	if (r < 0)
		return err_set(err, -r, "cannot read CA certificate \"%s\": %s", path, strerror(-r));
	char *grown = realloc(t->ca_pem, t->ca_len + len + 2);
	if (!grown)
		return -ENOMEM;
	t->ca_pem = grown;
	memcpy(t->ca_pem + t->ca_len, data, len);
	t->ca_len += len;
	t->ca_pem[t->ca_len++] = '\n';
	t->ca_pem[t->ca_len] = '\0';
	char *files = strdup_printf("%s%s%s", t->ca_files ? t->ca_files : "", t->ca_files ? ", " : "", path);
	if (!files)
		return -ENOMEM;
	free(t->ca_files);
	t->ca_files = files;
	return 0;
}

static int set_client_pair(struct tls_material *t, const char *dir, const char *name, struct err *err)
{
	size_t stem = strlen(name) - strlen(".cert");
	_cleanup_free_ char *cert = strdup_printf("%s/%s", dir, name);
	_cleanup_free_ char *key = strdup_printf("%s/%.*s.key", dir, (int)stem, name);
	if (!cert || !key)
		return -ENOMEM;
	if (access(key, R_OK) < 0)
		return err_set(err, ENOENT, "client certificate \"%s\" has no key \"%s\"", cert, key);
	free(t->client_cert);
	free(t->client_key);
	t->client_cert = TAKE_PTR(cert);
	t->client_key = TAKE_PTR(key);
	return 0;
}

static int filter_visible(const struct dirent *d)
{
	return d->d_name[0] != '.';
}

int tls_material_load(const char *host, const char *cert_dir, struct tls_material *ret, struct err *err)
{
	*ret = (struct tls_material){ 0 };
	_cleanup_free_ char *dir = registry_cert_dir(host, cert_dir);
	if (!dir)
		return -ENOMEM;
	struct dirent **names = NULL;
	/* Sorted, so that which client pair wins does not depend on the file system. */
	int n = scandir(dir, &names, filter_visible, alphasort);
	if (n < 0) {
		if (errno == ENOENT && !cert_dir)
			return 0;
		return err_set(err, errno, "cannot read certificate directory \"%s\": %s", dir, strerror(errno));
	}
	int r = 0;
	for (int i = 0; i < n; i++) {
		const char *name = names[i]->d_name;
		if (r == 0 && has_suffix(name, ".crt")) {
			_cleanup_free_ char *path = strdup_printf("%s/%s", dir, name);
			r = path ? append_ca(ret, path, err) : -ENOMEM;
		} else if (r == 0 && has_suffix(name, ".cert")) {
			r = set_client_pair(ret, dir, name, err);
		} else if (r == 0 && has_suffix(name, ".key")) {
			_cleanup_free_ char *cert =
			    strdup_printf("%s/%.*s.cert", dir, (int)(strlen(name) - strlen(".key")), name);
			if (!cert)
				r = -ENOMEM;
			else if (access(cert, R_OK) < 0)
				r = err_set(err, ENOENT, "client key \"%s/%s\" has no certificate \"%s\"", dir, name,
					    cert);
		}
		free(names[i]);
	}
	free(names);
	if (r < 0)
		tls_material_done(ret);
	return r;
}

int tls_material_copy(const struct tls_material *from, struct tls_material *to)
{
	*to = (struct tls_material){ 0 };
	if (from->ca_pem && (to->ca_pem = malloc(from->ca_len + 1))) {
		memcpy(to->ca_pem, from->ca_pem, from->ca_len + 1);
		to->ca_len = from->ca_len;
	}
	to->ca_files = from->ca_files ? strdup(from->ca_files) : NULL;
	to->client_cert = from->client_cert ? strdup(from->client_cert) : NULL;
	to->client_key = from->client_key ? strdup(from->client_key) : NULL;
	if ((from->ca_pem && !to->ca_pem) || (from->ca_files && !to->ca_files) ||
	    (from->client_cert && !to->client_cert) || (from->client_key && !to->client_key)) {
		tls_material_done(to);
		return -ENOMEM;
	}
	return 0;
}

void tls_material_done(struct tls_material *t)
{
	free(t->ca_pem);
	free(t->ca_files);
	free(t->client_cert);
	free(t->client_key);
	*t = (struct tls_material){ 0 };
}
