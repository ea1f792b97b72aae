/* podman's default seccomp profile into the OCI config.  The profile is the
 * containers/docker seccomp.json format (containers-common ships podman's
 * as /usr/share/containers/seccomp.json); a runtime wants the OCI
 * "linux.seccomp" object, for one architecture, one kernel and one set of
 * capabilities.  A rule applies when the container has every capability
 * its "includes" names and none its "excludes" names, when this machine's
 * architecture is in (not in) its arches, and when the kernel is at least
 * its minKernel, as podman and docker decide.
 *
 * On top of it, docker's rules for what podman's profile (containers-common
 * 0.50, Debian 12) leaves open: the kernel keyrings, which are not
 * namespaced (add_key from a container planted a key in the host's root
 * keyring), and new user namespaces, from which a container reaches code
 * that is otherwise root's alone (netfilter, mounts); unless the container
 * has CAP_SYS_ADMIN. */
#include "launch.h"

#include <json-c/json.h>
#include <sched.h>
#include <sys/utsname.h>

#if defined(__x86_64__)
#define NATIVE_ARCH "amd64"
#define NATIVE_SCMP "SCMP_ARCH_X86_64"
#elif defined(__aarch64__)
#define NATIVE_ARCH "arm64"
#define NATIVE_SCMP "SCMP_ARCH_AARCH64"
#elif defined(__i386__)
#define NATIVE_ARCH "x86"
#define NATIVE_SCMP "SCMP_ARCH_X86"
#elif defined(__s390x__)
#define NATIVE_ARCH "s390x"
#define NATIVE_SCMP "SCMP_ARCH_S390X"
#elif defined(__powerpc64__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define NATIVE_ARCH "ppc64le"
#define NATIVE_SCMP "SCMP_ARCH_PPC64LE"
#else
#error "no seccomp architecture name for this machine"
#endif

/* A profile is input: a list may be anything, and its members too. */
static size_t list_length(struct json_object *list)
{
	return json_object_is_type(list, json_type_array) ? json_object_array_length(list) : 0;
}

static const char *string_at(struct json_object *list, size_t i)
{
	struct json_object *s = json_object_array_get_idx(list, i);
	return json_object_is_type(s, json_type_string) ? json_object_get_string(s) : "";
}

static bool in_strings(struct json_object *list, const char *s)
{
	for (size_t i = 0; i < list_length(list); i++)
		if (strcmp(string_at(list, i), s) == 0)
			return true;
	return false;
}

static bool all_strings(struct json_object *list)
{
	for (size_t i = 0; i < list_length(list); i++)
		if (!json_object_is_type(json_object_array_get_idx(list, i), json_type_string))
			return false;
	return json_object_is_type(list, json_type_array);
}

static bool has_cap(const char *const *caps, size_t n_caps, const char *cap)
{
	for (size_t i = 0; i < n_caps; i++)
		if (strcmp(caps[i], cap) == 0)
			return true;
	return false;
}

/* "5.8" against the running kernel's release. */
static bool kernel_at_least(const char *version)
{
	struct utsname u;
	unsigned want_major = 0, want_minor = 0, major = 0, minor = 0;
	if (!version || sscanf(version, "%u.%u", &want_major, &want_minor) < 1)
		return true;
	if (uname(&u) < 0 || sscanf(u.release, "%u.%u", &major, &minor) < 1)
		return false;
	return major > want_major || (major == want_major && minor >= want_minor);
}

static bool rule_applies(struct json_object *rule, const char *const *caps, size_t n_caps)
{
	struct json_object *includes = NULL, *excludes = NULL, *v;
	json_object_object_get_ex(rule, "includes", &includes);
	json_object_object_get_ex(rule, "excludes", &excludes);
	if (includes && json_object_object_get_ex(includes, "caps", &v))
		for (size_t i = 0; i < list_length(v); i++)
			if (!has_cap(caps, n_caps, string_at(v, i)))
				return false;
	if (includes && json_object_object_get_ex(includes, "arches", &v) && list_length(v) > 0 &&
	    !in_strings(v, NATIVE_ARCH))
		return false;
	if (includes && json_object_object_get_ex(includes, "minKernel", &v) &&
	    !kernel_at_least(json_object_get_string(v)))
		return false;
	if (excludes && json_object_object_get_ex(excludes, "caps", &v))
		for (size_t i = 0; i < list_length(v); i++)
			if (has_cap(caps, n_caps, string_at(v, i)))
				return false;
	if (excludes && json_object_object_get_ex(excludes, "arches", &v) && in_strings(v, NATIVE_ARCH))
		return false;
	return true;
}

/* Calls that the rules below decide instead of the profile's. */
static const char *const tightened[] = { "add_key", "keyctl", "request_key", "unshare", "clone", "clone3" };

static bool is_tightened(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(tightened); i++)
		if (strcmp(tightened[i], name) == 0)
			return true;
	return false;
}

/* The OCI form of one rule: names, action, errnoRet and args as they are,
 * less the tightened calls where it would allow them; NULL when no name
 * is left. */
static struct json_object *oci_rule(struct json_object *rule, bool tighten)
{
	struct json_object *names, *action, *v;
	json_object_object_get_ex(rule, "names", &names);
	json_object_object_get_ex(rule, "action", &action);
	bool allows = strcmp(json_object_get_string(action), "SCMP_ACT_ALLOW") == 0;
	struct json_object *kept = json_object_new_array();
	for (size_t i = 0; kept && i < json_object_array_length(names); i++) {
		struct json_object *name = json_object_array_get_idx(names, i);
		if (!(tighten && allows && is_tightened(json_object_get_string(name))))
			json_object_array_add(kept, json_object_get(name));
	}
	if (!kept || json_object_array_length(kept) == 0) {
		json_object_put(kept);
		return NULL;
	}
	struct json_object *out = json_object_new_object();
	json_object_object_add(out, "names", kept);
	static const char *const keys[] = { "action", "errnoRet", "args" };
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
		if (json_object_object_get_ex(rule, keys[i], &v) && v)
			json_object_object_add(out, keys[i], json_object_get(v));
	return out;
}

/* unshare and clone without CLONE_NEWUSER in their flags (the first
 * argument on this machine's architectures), EPERM with it; clone3, whose
 * flags a filter cannot read, answers ENOSYS so that libc falls back to
 * clone.  The keyring calls are left to the default action (ENOSYS). */
static struct json_object *flags_rule(const char *name, const char *action, int errno_ret, uint64_t masked_value)
{
	struct json_object *rule = json_object_new_object(), *names = json_object_new_array();
	struct json_object *args = json_object_new_array(), *arg = json_object_new_object();
	json_object_array_add(names, json_object_new_string(name));
	json_object_object_add(arg, "index", json_object_new_int(0));
	json_object_object_add(arg, "value", json_object_new_int64(CLONE_NEWUSER));
	json_object_object_add(arg, "valueTwo", json_object_new_int64((int64_t)masked_value));
	json_object_object_add(arg, "op", json_object_new_string("SCMP_CMP_MASKED_EQ"));
	json_object_array_add(args, arg);
	json_object_object_add(rule, "names", names);
	json_object_object_add(rule, "action", json_object_new_string(action));
	if (errno_ret)
		json_object_object_add(rule, "errnoRet", json_object_new_int(errno_ret));
	json_object_object_add(rule, "args", args);
	return rule;
}

static void add_tightened_rules(struct json_object *syscalls)
{
	static const char *const flag_checked[] = { "unshare", "clone" };
	for (size_t i = 0; i < ARRAY_SIZE(flag_checked); i++) {
		json_object_array_add(syscalls, flags_rule(flag_checked[i], "SCMP_ACT_ALLOW", 0, 0));
		json_object_array_add(syscalls, flags_rule(flag_checked[i], "SCMP_ACT_ERRNO", EPERM, CLONE_NEWUSER));
	}
	struct json_object *rule = json_object_new_object(), *names = json_object_new_array();
	json_object_array_add(names, json_object_new_string("clone3"));
	json_object_object_add(rule, "names", names);
	json_object_object_add(rule, "action", json_object_new_string("SCMP_ACT_ERRNO"));
	json_object_object_add(rule, "errnoRet", json_object_new_int(ENOSYS));
	json_object_array_add(syscalls, rule);
}

/* The native architecture and its sub-architectures, from archMap. */
static struct json_object *architectures(struct json_object *profile)
{
	struct json_object *out = json_object_new_array(), *map, *v;
	if (!out || !json_object_object_get_ex(profile, "archMap", &map) || !json_object_is_type(map, json_type_array))
		return out;
	for (size_t i = 0; i < json_object_array_length(map); i++) {
		struct json_object *entry = json_object_array_get_idx(map, i);
		if (!json_object_object_get_ex(entry, "architecture", &v) ||
		    !json_object_is_type(v, json_type_string) || strcmp(json_object_get_string(v), NATIVE_SCMP) != 0)
			continue;
		json_object_array_add(out, json_object_new_string(NATIVE_SCMP));
		if (json_object_object_get_ex(entry, "subArchitectures", &v))
			for (size_t k = 0; k < list_length(v); k++)
				if (*string_at(v, k))
					json_object_array_add(out, json_object_new_string(string_at(v, k)));
	}
	return out;
}

int seccomp_from_profile(const char *json, size_t len, const char *const *caps, size_t n_caps, struct json_object **ret,
			 struct err *err)
{
	struct json_tokener *tok = json_tokener_new();
	struct json_object *profile = tok ? json_tokener_parse_ex(tok, json, (int)len) : NULL, *v, *rules;
	json_tokener_free(tok);
	if (!profile || !json_object_is_type(profile, json_type_object) ||
	    !json_object_object_get_ex(profile, "defaultAction", &v) || !json_object_is_type(v, json_type_string) ||
	    !json_object_object_get_ex(profile, "syscalls", &rules) || !json_object_is_type(rules, json_type_array)) {
		json_object_put(profile);
		return err_set(err, EINVAL, "not a seccomp profile: it needs a defaultAction and a syscalls list");
	}
	bool tighten = !has_cap(caps, n_caps, "CAP_SYS_ADMIN");
	struct json_object *out = json_object_new_object();
	struct json_object *syscalls = json_object_new_array();
	json_object_object_add(out, "defaultAction", json_object_get(v));
	if (json_object_object_get_ex(profile, "defaultErrnoRet", &v))
		json_object_object_add(out, "defaultErrnoRet", json_object_get(v));
	json_object_object_add(out, "architectures", architectures(profile));
	for (size_t i = 0; i < json_object_array_length(rules); i++) {
		struct json_object *rule = json_object_array_get_idx(rules, i), *names, *action;
		if (!json_object_is_type(rule, json_type_object) || !json_object_object_get_ex(rule, "names", &names) ||
		    !all_strings(names) || !json_object_object_get_ex(rule, "action", &action) ||
		    !json_object_is_type(action, json_type_string)) {
			json_object_put(out);
			json_object_put(syscalls);
			json_object_put(profile);
			return err_set(err, EINVAL, "seccomp rule %zu has no list of names or no action", i);
		}
		struct json_object *oci = rule_applies(rule, caps, n_caps) ? oci_rule(rule, tighten) : NULL;
		if (oci)
			json_object_array_add(syscalls, oci);
	}
	if (tighten)
		add_tightened_rules(syscalls);
	json_object_object_add(out, "syscalls", syscalls);
	json_object_put(profile);
	*ret = out;
	return 0;
}
