/* The runtime spec launch writes: image config parsing, docker's rules for
 * entrypoint and command, the environment, mounts, limits, and user lookup
 * inside the image's root. */
#include <fcntl.h>
#include <json-c/json.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "launch.h"
#include "tap.h"

static const char *CONFIG =
    "{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"Entrypoint\":[\"/entry\",\"-x\"],"
    "\"Cmd\":[\"default\"],\"Env\":[\"PATH=/opt/bin\",\"KEEP=1\",\"OVER=image\"],\"WorkingDir\":\"/srv\","
    "\"User\":\"app\"}}";

static char *args_joined(const struct image_process *p, const struct spec_options *o)
{
	char **args;
	struct err err = { 0 };
	if (spec_args(p, o, &args, &err) < 0)
		return strdup(err.msg);
	size_t len = 1;
	for (char **a = args; *a; a++)
		len += strlen(*a) + 1;
	char *s = calloc(1, len);
	for (char **a = args; *a; a++) {
		if (a != args)
			strcat(s, " ");
		strcat(s, *a);
		free(*a);
	}
	free(args);
	return s;
}

static void test_parse_and_args(void)
{
	struct image_process p;
	struct err err = { 0 };
	ok(image_process_parse(CONFIG, strlen(CONFIG), &p, &err) == 0, "an image config parses");
	is_str(p.workdir, "/srv", "WorkingDir");
	is_str(p.user, "app", "User");

	char *none[] = { NULL };
	char *given[] = { (char *)"a", (char *)"b", NULL };
	struct spec_options o = { .command = none };
	char *s = args_joined(&p, &o);
	is_str(s, "/entry -x default", "Entrypoint + Cmd");
	free(s);
	o.command = given;
	s = args_joined(&p, &o);
	is_str(s, "/entry -x a b", "a command replaces Cmd only");
	free(s);
	o.entrypoint = "";
	s = args_joined(&p, &o);
	is_str(s, "a b", "--entrypoint \"\" clears the image's entrypoint");
	free(s);
	o.entrypoint = "/other";
	o.command = none;
	s = args_joined(&p, &o);
	is_str(s, "/other", "--entrypoint drops the image's Cmd");
	free(s);
	o.entrypoint = "";
	s = args_joined(&p, &o);
	ok(s && strstr(s, "no command"), "nothing to run is an error: %s", s);
	free(s);
	o.entrypoint = NULL;
	o.init_path = "/x/launch-init";
	s = args_joined(&p, &o);
	is_str(s, "/.launch-init -- /entry -x default", "--init runs the command under our init");
	free(s);
	image_process_done(&p);

	const char *bad[] = { "",
			      "{",
			      "[]",
			      "{\"config\":{\"Cmd\":\"not an array\"}}",
			      "{\"config\":{\"Env\":[1]}}",
			      "{\"config\":{\"WorkingDir\":7}}" };
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		struct err e = { 0 };
		ok(image_process_parse(bad[i], strlen(bad[i]), &p, &e) < 0 && e.code, "refused: %s (%s)", bad[i],
		   e.msg);
	}
	const char *minimal = "{\"config\":{\"Cmd\":null}}";
	ok(image_process_parse(minimal, strlen(minimal), &p, &err) == 0 && !p.cmd && !p.entrypoint,
	   "null Cmd is no Cmd");
	image_process_done(&p);
}

static struct json_object *build(const struct spec_options *o, struct err *err)
{
	struct image_process p;
	if (image_process_parse(CONFIG, strlen(CONFIG), &p, err) < 0)
		return NULL;
	char *json = NULL;
	int r = spec_build(&p, o, &json, err);
	image_process_done(&p);
	if (r < 0)
		return NULL;
	struct json_object *root = json_tokener_parse(json);
	free(json);
	return root;
}

static struct json_object *path(struct json_object *o, const char *a, const char *b)
{
	struct json_object *x = NULL, *y = NULL;
	if (!json_object_object_get_ex(o, a, &x))
		return NULL;
	if (!b)
		return x;
	return json_object_object_get_ex(x, b, &y) ? y : NULL;
}

static bool array_has(struct json_object *a, const char *s)
{
	for (size_t i = 0; a && i < json_object_array_length(a); i++)
		if (strcmp(json_object_get_string(json_object_array_get_idx(a, i)), s) == 0)
			return true;
	return false;
}

static void test_build(void)
{
	char *none[] = { NULL };
	char *env[] = { (char *)"OVER=cli", (char *)"NEW=2", NULL };
	char dir[] = "/tmp/imgfs-spec-XXXXXX";
	ok(mkdtemp(dir) != NULL, "a host directory for a volume");
	char vol[256], vol_ro[256];
	snprintf(vol, sizeof(vol), "%s:/data", dir);
	snprintf(vol_ro, sizeof(vol_ro), "%s:/ro:ro", dir);
	char *volumes[] = { vol, vol_ro, NULL };
	gid_t groups[] = { 10, 20 };
	struct spec_options o = { .command = none,
				  .env = env,
				  .tty = true,
				  .rows = 30,
				  .cols = 90,
				  .hostname = "box",
				  .volumes = volumes,
				  .uid = 1000,
				  .gid = 1000,
				  .groups = groups,
				  .n_groups = 2,
				  .home = "/home/app" };
	struct err err = { 0 };
	struct json_object *root = build(&o, &err);
	ok(root != NULL, "spec builds: %s", err.msg);
	struct json_object *process = path(root, "process", NULL);
	struct json_object *e = path(process, "env", NULL);
	ok(array_has(e, "PATH=/opt/bin") && array_has(e, "KEEP=1") && array_has(e, "OVER=cli") &&
	       array_has(e, "NEW=2") && !array_has(e, "OVER=image"),
	   "env: the image's, overridden by -e");
	ok(array_has(e, "TERM=xterm") && array_has(e, "HOSTNAME=box") && array_has(e, "HOME=/home/app"),
	   "env: TERM for a tty, HOSTNAME, HOME from passwd");
	is_str(json_object_get_string(path(process, "cwd", NULL)), "/srv", "cwd is the image's WorkingDir");
	ok(json_object_get_boolean(path(process, "terminal", NULL)) &&
	       json_object_get_int(path(path(process, "consoleSize", NULL), "height", NULL)) == 30,
	   "terminal and consoleSize for -t");
	ok(json_object_get_int(path(path(process, "user", NULL), "uid", NULL)) == 1000 &&
	       json_object_array_length(path(path(process, "user", NULL), "additionalGids", NULL)) == 2,
	   "user and supplementary groups");
	ok(json_object_get_boolean(path(process, "noNewPrivileges", NULL)), "no_new_privileges");
	ok(array_has(path(path(process, "capabilities", NULL), "bounding", NULL), "CAP_NET_BIND_SERVICE") &&
	       !array_has(path(path(process, "capabilities", NULL), "bounding", NULL), "CAP_SYS_ADMIN"),
	   "podman's default capabilities, not SYS_ADMIN");
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	struct json_object *limit = json_object_array_get_idx(path(process, "rlimits", NULL), 0);
	ok(limit && (rl.rlim_max == RLIM_INFINITY ||
		     (uint64_t)json_object_get_int64(path(limit, "hard", NULL)) <= rl.rlim_max),
	   "RLIMIT_NOFILE never above our hard limit");
	struct json_object *mounts = path(root, "mounts", NULL);
	bool proc = false, data = false, ro = false;
	for (size_t i = 0; i < json_object_array_length(mounts); i++) {
		struct json_object *m = json_object_array_get_idx(mounts, i);
		const char *dest = json_object_get_string(path(m, "destination", NULL));
		proc |= strcmp(dest, "/proc") == 0 && array_has(path(m, "options", NULL), "nosuid") &&
			array_has(path(m, "options", NULL), "nodev") && array_has(path(m, "options", NULL), "noexec");
		data |= strcmp(dest, "/data") == 0 && array_has(path(m, "options", NULL), "rw");
		ro |= strcmp(dest, "/ro") == 0 && array_has(path(m, "options", NULL), "ro");
	}
	ok(proc && data && ro, "mounts: /proc nosuid,nodev,noexec, the volumes with rw and ro");
	ok(array_has(path(path(root, "linux", NULL), "maskedPaths", NULL), "/sys/devices/virtual/powercap") &&
	       array_has(path(path(root, "linux", NULL), "maskedPaths", NULL), "/proc/kcore"),
	   "docker's masked paths, powercap included");
	ok(json_object_get_int64(path(path(path(root, "linux", NULL), "resources", NULL), "pids", NULL)) == 0 &&
	       !path(path(root, "linux", NULL), "seccomp", NULL),
	   "no limit and no filter unless asked (launch asks for podman's)");
	struct json_object *ns = path(path(root, "linux", NULL), "namespaces", NULL);
	ok(json_object_array_length(ns) == 5, "pid, mount, ipc, uts and network namespaces");
	json_object_put(root);

	o.host_network = true;
	root = build(&o, &err);
	ok(root && json_object_array_length(path(path(root, "linux", NULL), "namespaces", NULL)) == 4,
	   "--network host: no network namespace");
	json_object_put(root);
	o.host_network = false;

	char *bad_volume[] = { (char *)"relative:/x", NULL };
	o.volumes = bad_volume;
	ok(build(&o, &err) == NULL && strstr(err.msg, "relative"), "a relative volume is refused: %s", err.msg);
	char *bad_option[] = { vol_ro, NULL };
	snprintf(vol_ro, sizeof(vol_ro), "%s:/x:rx", dir);
	o.volumes = bad_option;
	ok(build(&o, &err) == NULL && strstr(err.msg, "rx"), "an unknown volume option is refused: %s", err.msg);
	o.volumes = NULL;
	o.workdir = "relative";
	ok(build(&o, &err) == NULL && strstr(err.msg, "relative"), "a relative -w is refused: %s", err.msg);
	o.workdir = NULL;
	char *empty_key[] = { (char *)"=x", NULL };
	o.env = empty_key;
	ok(build(&o, &err) == NULL && strstr(err.msg, "=x"), "-e =x is refused: %s", err.msg);
	rmdir(dir);
}

static void write_at(const char *dir, const char *name, const char *text)
{
	char p[512];
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd >= 0) {
		(void)write_full(fd, text, strlen(text));
		close(fd);
	}
}

/* A profile in the containers/docker format, with every kind of rule
 * podman's default has. */
static const char *PROFILE =
    "{\"defaultAction\":\"SCMP_ACT_ERRNO\",\"defaultErrnoRet\":38,"
    "\"archMap\":[{\"architecture\":\"SCMP_ARCH_X86_64\",\"subArchitectures\":[\"SCMP_ARCH_X86\",\"SCMP_ARCH_X32\"]},"
    "{\"architecture\":\"SCMP_ARCH_AARCH64\",\"subArchitectures\":[\"SCMP_ARCH_ARM\"]}],"
    "\"syscalls\":["
    "{\"names\":[\"read\",\"write\",\"keyctl\",\"unshare\"],\"action\":\"SCMP_ACT_ALLOW\",\"args\":[]},"
    "{\"names\":[\"arch_prctl\"],\"action\":\"SCMP_ACT_ALLOW\",\"includes\":{\"arches\":[\"amd64\",\"x32\"]}},"
    "{\"names\":[\"s390_runtime_instr\"],\"action\":\"SCMP_ACT_ALLOW\",\"includes\":{\"arches\":[\"s390x\"]}},"
    "{\"names\":[\"chroot\"],\"action\":\"SCMP_ACT_ALLOW\",\"includes\":{\"caps\":[\"CAP_SYS_CHROOT\"]}},"
    "{\"names\":[\"chroot\"],\"action\":\"SCMP_ACT_ERRNO\",\"errnoRet\":1,\"excludes\":{\"caps\":[\"CAP_SYS_"
    "CHROOT\"]}},"
    "{\"names\":[\"bpf\"],\"action\":\"SCMP_ACT_ALLOW\",\"includes\":{\"caps\":[\"CAP_SYS_ADMIN\"]}},"
    "{\"names\":[\"bpf\"],\"action\":\"SCMP_ACT_ERRNO\",\"errnoRet\":1,\"excludes\":{\"caps\":[\"CAP_SYS_"
    "ADMIN\"]}},"
    "{\"names\":[\"future_call\"],\"action\":\"SCMP_ACT_ALLOW\",\"includes\":{\"minKernel\":\"99.0\"}}]}";

/* The rules of a converted profile for name: their actions, joined. */
static char *actions_for(struct json_object *seccomp, const char *name)
{
	char buf[256] = "";
	struct json_object *rules = path(seccomp, "syscalls", NULL);
	for (size_t i = 0; i < json_object_array_length(rules); i++) {
		struct json_object *r = json_object_array_get_idx(rules, i);
		if (array_has(path(r, "names", NULL), name))
			snprintf(buf + strlen(buf), sizeof(buf) - strlen(buf), "%s%s", buf[0] ? "," : "",
				 json_object_get_string(path(r, "action", NULL)));
	}
	return strdup(buf);
}

static void test_seccomp(void)
{
	const char *const chroot_caps[] = { "CAP_CHOWN", "CAP_SYS_CHROOT" };
	const char *const admin_caps[] = { "CAP_SYS_ADMIN" };
	struct json_object *s = NULL;
	struct err err = { 0 };
	ok(seccomp_from_profile(PROFILE, strlen(PROFILE), chroot_caps, 2, &s, &err) == 0, "a profile converts: %s",
	   err.msg);
	ok(strcmp(json_object_get_string(path(s, "defaultAction", NULL)), "SCMP_ACT_ERRNO") == 0 &&
	       json_object_get_int(path(s, "defaultErrnoRet", NULL)) == 38,
	   "the default action and errno are the profile's");
#if defined(__x86_64__)
	struct json_object *arches = path(s, "architectures", NULL);
	ok(json_object_array_length(arches) == 3 && array_has(arches, "SCMP_ARCH_X86_64") &&
	       array_has(arches, "SCMP_ARCH_X32") && !array_has(arches, "SCMP_ARCH_AARCH64"),
	   "the architectures are this machine's and its sub-architectures");
	_cleanup_free_ char *arch_prctl = actions_for(s, "arch_prctl");
	is_str(arch_prctl, "SCMP_ACT_ALLOW", "a rule for this architecture applies");
#endif
	_cleanup_free_ char *s390 = actions_for(s, "s390_runtime_instr");
	_cleanup_free_ char *chroot = actions_for(s, "chroot");
	_cleanup_free_ char *bpf = actions_for(s, "bpf");
	_cleanup_free_ char *future = actions_for(s, "future_call");
	_cleanup_free_ char *keyctl = actions_for(s, "keyctl");
	_cleanup_free_ char *unshare = actions_for(s, "unshare");
	_cleanup_free_ char *read = actions_for(s, "read");
	is_str(s390, "", "a rule for another architecture does not");
	is_str(chroot, "SCMP_ACT_ALLOW", "a capability the container has: its rule, not the exclusion's");
	is_str(bpf, "SCMP_ACT_ERRNO", "a capability it lacks: the exclusion's rule");
	is_str(future, "", "a rule for a later kernel does not apply");
	is_str(read, "SCMP_ACT_ALLOW", "plain rules apply");
	is_str(keyctl, "", "keyctl is left to the default (ENOSYS), as docker has it");
	is_str(unshare, "SCMP_ACT_ALLOW,SCMP_ACT_ERRNO", "unshare is allowed only without CLONE_NEWUSER");
	json_object_put(s);

	ok(seccomp_from_profile(PROFILE, strlen(PROFILE), admin_caps, 1, &s, &err) == 0, "with CAP_SYS_ADMIN");
	_cleanup_free_ char *admin_unshare = actions_for(s, "unshare");
	_cleanup_free_ char *admin_keyctl = actions_for(s, "keyctl");
	is_str(admin_unshare, "SCMP_ACT_ALLOW", "CAP_SYS_ADMIN keeps the profile's unshare");
	is_str(admin_keyctl, "SCMP_ACT_ALLOW", "and its keyctl");
	json_object_put(s);

	static const char *const bad[] = { "", "[]", "{\"syscalls\":[]}", "{\"defaultAction\":\"SCMP_ACT_ALLOW\"}",
					   "{\"defaultAction\":\"SCMP_ACT_ALLOW\",\"syscalls\":[{\"names\":1}]}" };
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		err = (struct err){ 0 };
		ok(seccomp_from_profile(bad[i], strlen(bad[i]), chroot_caps, 2, &s, &err) == -EINVAL && err.msg[0],
		   "a broken profile is refused: %s", err.msg);
	}
}

static void test_users(void)
{
	char root[] = "/tmp/imgfs-users-XXXXXX";
	ok(mkdtemp(root) != NULL, "an image root");
	char etc[512], outside[512];
	snprintf(etc, sizeof(etc), "%s/etc", root);
	mkdir(etc, 0755);
	write_at(etc, "passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nbroken line\n");
	write_at(etc, "group", "root:x:0:\napp:x:1000:\nextra:x:2000:other,app\nwheel:x:10:other\n");
	int fd = open(root, O_PATH | O_DIRECTORY);
	uid_t uid;
	gid_t gid, *groups = NULL;
	size_t n;
	char *home = NULL;
	struct err err = { 0 };
	ok(resolve_user(fd, "app", &uid, &gid, &groups, &n, &home, &err) == 0 && uid == 1000 && gid == 1000 && n == 2 &&
	       groups[0] == 1000 && groups[1] == 2000 && strcmp(home, "/home/app") == 0,
	   "a user name: uid, gid, home, primary group and the groups that list it");
	free(groups);
	free(home);
	ok(resolve_user(fd, "app:extra", &uid, &gid, &groups, &n, &home, &err) == 0 && gid == 2000 && n == 0,
	   "USER:GROUP by names");
	free(groups);
	free(home);
	ok(resolve_user(fd, "4242:77", &uid, &gid, &groups, &n, &home, &err) == 0 && uid == 4242 && gid == 77,
	   "numbers need no entry");
	free(groups);
	free(home);
	ok(resolve_user(fd, "nobody", &uid, &gid, &groups, &n, &home, &err) == -ENOENT && strstr(err.msg, "nobody"),
	   "an unknown name: %s", err.msg);
	ok(resolve_user(fd, "app:nogroup", &uid, &gid, &groups, &n, &home, &err) == -ENOENT &&
	       strstr(err.msg, "nogroup"),
	   "an unknown group: %s", err.msg);

	/* An absolute symlink in the image resolves inside the image, never on the host. */
	snprintf(outside, sizeof(outside), "%s-outside", root);
	mkdir(outside, 0755);
	write_at(outside, "passwd", "evil:x:666:666::/:/bin/sh\n");
	char target[600], link_path[600];
	snprintf(target, sizeof(target), "%s/passwd", outside);
	snprintf(link_path, sizeof(link_path), "%s/passwd", etc);
	unlink(link_path);
	ok(symlink(target, link_path) == 0, "etc/passwd is an absolute symlink out of the root");
	ok(resolve_user(fd, "evil", &uid, &gid, &groups, &n, &home, &err) < 0, "the host file it names is not read");
	unlink(target);
	rmdir(outside);
	unlink(link_path);
	snprintf(link_path, sizeof(link_path), "%s/group", etc);
	unlink(link_path);
	rmdir(etc);
	rmdir(root);
	close(fd);
}

/* launch rm of a container whose files nest past PATH_MAX. */
static void test_remove_tree(void)
{
	char top[] = "/tmp/imgfs-tree-XXXXXX";
	ok(mkdtemp(top) != NULL, "a directory to remove");
	int fd = open(top, O_RDONLY | O_DIRECTORY);
	int levels = 0;
	for (; fd >= 0 && levels < 3000; levels++) {
		int file = openat(fd, "f", O_WRONLY | O_CREAT, 0600);
		if (file >= 0)
			close(file);
		if (mkdirat(fd, "d", 0700) < 0)
			break;
		int child = openat(fd, "d", O_RDONLY | O_DIRECTORY);
		close(fd);
		fd = child;
	}
	if (fd >= 0)
		close(fd);
	ok(levels == 3000, "3000 nested directories, 6000 bytes of path");
	ok(remove_tree(top) == 0 && access(top, F_OK) < 0, "remove_tree removes them all");
	ok(remove_tree(top) == 0, "a tree that is not there is removed already");
}

int main(void)
{
	test_remove_tree();
	test_seccomp();
	test_parse_and_args();
	test_build();
	test_users();
	return tap_done();
}
