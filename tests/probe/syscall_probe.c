/* Run inside a container by test_launch: tries the system calls a
 * container must not make, and reads what the imgfs mount under it must
 * not tell it, and prints "NAME ERRNO" for each (0: it worked).  Static,
 * so that it runs in any image. */
#include <errno.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

static void report(const char *name, long r)
{
	printf("%s %d\n", name, r < 0 ? errno : 0);
}

int main(void)
{
	struct perf_event_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.type = PERF_TYPE_SOFTWARE;
	attr.size = sizeof(attr);
	attr.config = PERF_COUNT_SW_CPU_CLOCK;
	report("add_key", syscall(SYS_add_key, "user", "imgfs-probe", "x", 1, -4 /* KEY_SPEC_USER_KEYRING */));
	report("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -4, 0));
	report("unshare_user", syscall(SYS_unshare, CLONE_NEWUSER));
	report("perf_event_open", syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0));
	report("userfaultfd", syscall(SYS_userfaultfd, 0));
	report("bpf", syscall(SYS_bpf, 0, NULL, 0));
	char value[4096];
	report("xattr_pid", getxattr("/", "user.imgfs.pid", value, sizeof(value)));
	report("xattr_config_path", getxattr("/", "user.imgfs.config-path", value, sizeof(value)));
	report("xattr_record", getxattr("/", "user.imgfs.record", value, sizeof(value)));
	return 0;
}
