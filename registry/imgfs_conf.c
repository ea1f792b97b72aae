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
	struct json_object *root = NULL, *v;
	int r = path ? toml_read_file(path, IMGFS_CONF_MAX_SIZE, &root, err) : -ENOMEM;
	if (r < 0 || !root)
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
