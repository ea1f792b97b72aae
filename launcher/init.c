/* launch-init: pid 1 for `launch run --init`.  It runs the command as its
 * child, forwards every signal it can to it, reaps every orphan the kernel
 * hands it, and exits with the command's status.  Static: the image may
 * have no libc. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int first = 1;
	if (argc > 1 && strcmp(argv[1], "--") == 0)
		first = 2;
	if (first >= argc) {
		fprintf(stderr, "launch-init: no command\n");
		return 125;
	}
	sigset_t all, old;
	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, &old);
	pid_t child = fork();
	if (child < 0) {
		fprintf(stderr, "launch-init: cannot fork: %s\n", strerror(errno));
		return 125;
	}
	if (child == 0) {
		sigprocmask(SIG_SETMASK, &old, NULL);
		/* Its own process group, so a terminal's signals reach it as they would pid 1. */
		setpgid(0, 0);
		if (isatty(STDIN_FILENO))
			tcsetpgrp(STDIN_FILENO, getpgrp());
		execvp(argv[first], argv + first);
		fprintf(stderr, "launch-init: cannot run \"%s\": %s\n", argv[first], strerror(errno));
		_exit(errno == ENOENT ? 127 : 126);
	}
	for (;;) {
		int sig;
		if (sigwait(&all, &sig) != 0)
			continue;
		if (sig != SIGCHLD) {
			kill(child, sig);
			continue;
		}
		int status;
		pid_t pid;
		while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
			if (pid == child)
				return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	}
}
