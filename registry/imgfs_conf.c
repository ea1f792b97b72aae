/* imgfs.conf: imgfs's own settings, in the TOML of registries.conf. */
#include "registry.h"

#include <sys/stat.h>

#include "toml.h"

#define IMGFS_CONF_MAX_SIZE (1 << 20)

static char *imgfs_conf_path(void)
{
	const char *env = getenv("IMGFS_CONF"), *config_home = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
	if (env && *env)
		return strdup(env);
	_cleanup_free_ char *user = config_home && *config_home ? strdup_printf("%s/imgfs/imgfs.conf", config_home)
				    : home && *home             ? strdup_printf("%s/.config/imgfs/imgfs.conf", home)
								: NULL;
	struct stat st;
	/* root's settings are the system's: a user's file is for other users. */
	if (user && geteuid() != 0 && stat(user, &st) == 0)
		return TAKE_PTR(user);
	return strdup("/etc/imgfs/imgfs.conf");
}

int imgfs_conf_index_repository(char **ret, struct err *err)
{
	*ret = NULL;
	_cleanup_free_ char *path = imgfs_conf_path();
	_cleanup_free_ char *data = NULL;
	size_t len;
	struct json_object *root = NULL, *v;
	int r = path ? read_file_capped(path, IMGFS_CONF_MAX_SIZE, &data, &len) : -ENOMEM;
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return err_set(err, -r, "cannot read \"%s\": %s", path, strerror(-r));
	if ((r = toml_parse(data, len, path, &root, err)) < 0)
		return r;
	if (json_object_object_get_ex(root, "index-repository", &v)) {
		struct image_ref ref = { 0 };
		if (!json_object_is_type(v, json_type_string))
			r = err_set(err, EINVAL, "%s: index-repository must be a string", path);
		else if (image_ref_parse(json_object_get_string(v), &ref, err) < 0)
			r = err_wrap(err, "%s: index-repository", path);
		else if (!(*ret = strdup(json_object_get_string(v))))
			r = -ENOMEM;
		image_ref_done(&ref);
	}
	json_object_put(root);
	return r;
}
