/* imgfs login and logout, as podman's: the credentials are checked against
 * the registry, then kept in podman login's auth file (auth_default_file())
 * or --authfile.  A password comes from --password-stdin or a prompt with
 * echo off, never from argv. */
#include "login.h"

#include <getopt.h>
#include <termios.h>

#include "cli.h"
#include "imgfs.h"
#include "registry.h"

/* One line from f, without its newline; NULL at EOF or without memory. */
static char *read_line(FILE *f)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t n = getline(&line, &cap, f);
	if (n < 0) {
		free(line);
		return NULL;
	}
	while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		line[--n] = '\0';
	return line;
}

static char *prompt(const char *what, bool secret)
{
	struct termios saved, quiet;
	bool hide = secret && tcgetattr(STDIN_FILENO, &saved) == 0;
	fprintf(stderr, "%s: ", what);
	if (hide) {
		quiet = saved;
		quiet.c_lflag &= ~(tcflag_t)ECHO;
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
	}
	char *line = read_line(stdin);
	if (hide) {
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
		fputc('\n', stderr);
	}
	return line;
}

static void wipe_free(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

enum { OPT_AUTHFILE = OPT_OWN, OPT_PASSWORD_STDIN };

int login_main(int argc, char **argv)
{
	static const struct option options[] = {
		{ "username", required_argument, NULL, 'u' },
		{ "password-stdin", no_argument, NULL, OPT_PASSWORD_STDIN },
		{ "authfile", required_argument, NULL, OPT_AUTHFILE },
		{ "cert-dir", required_argument, NULL, OPT_CERT_DIR },
		{ "insecure-registry", required_argument, NULL, OPT_INSECURE },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	static const char usage[] = "Usage: imgfs login [-u USER] [--password-stdin] [--authfile FILE] "
				    "[--cert-dir DIR] [--insecure-registry HOST] REGISTRY\n";
	const char *user_arg = NULL, *authfile = NULL;
	char *insecure[2] = { NULL, NULL };
	struct registry_options opts = { 0 };
	bool password_stdin = false;
	int c;
	while ((c = getopt_long(argc, argv, "+u:h", options, NULL)) != -1) {
		switch (c) {
		case 'u':
			user_arg = optarg;
			break;
		case OPT_PASSWORD_STDIN:
			password_stdin = true;
			break;
		case OPT_AUTHFILE:
			authfile = optarg;
			break;
		case OPT_CERT_DIR:
			opts.cert_dir = optarg;
			break;
		case OPT_INSECURE:
			insecure[0] = optarg;
			break;
		case 'h':
			fputs(usage, stdout);
			return 0;
		default:
			fputs(usage, stderr);
			return IMGFS_EXIT_USAGE;
		}
	}
	if (optind + 1 != argc) {
		fputs(usage, stderr);
		return report_usage("login needs one REGISTRY");
	}
	opts.insecure_registries = insecure[0] ? insecure : NULL;
	const char *registry = argv[optind];
	bool tty = isatty(STDIN_FILENO);
	if (!user_arg && (password_stdin || !tty))
		return report_usage("login to \"%s\": give the user with -u (no terminal to ask on)", registry);
	if (!password_stdin && !tty)
		return report_usage("login to \"%s\": use --password-stdin (no terminal to ask on)", registry);
	_cleanup_free_ char *user = user_arg ? strdup(user_arg) : prompt("Username", false);
	char *password = password_stdin ? read_line(stdin) : prompt("Password", true);
	_cleanup_free_ char *file = authfile ? strdup(authfile) : auth_default_file();
	char *credentials = user && password ? strdup_printf("%s:%s", user, password) : NULL;
	wipe_free(password);
	if (!credentials || !file || !*user) {
		wipe_free(credentials);
		return report(EINVAL, "login to \"%s\": %s", registry,
			      user && !*user ? "no user name" : "no password given");
	}
	struct err err = { 0 };
	int r = registry_check_credentials(registry, credentials, &opts, &err);
	if (r == 0)
		r = auth_store_credentials(file, registry, credentials, &err);
	wipe_free(credentials);
	if (r < 0)
		return report(err.code ? err.code : -r, "login to \"%s\" failed: %s", registry,
			      err.code ? err.msg : strerror(-r));
	printf("Login Succeeded!\n");
	return 0;
}

int logout_main(int argc, char **argv)
{
	static const struct option options[] = {
		{ "authfile", required_argument, NULL, OPT_AUTHFILE },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	static const char usage[] = "Usage: imgfs logout [--authfile FILE] REGISTRY\n";
	const char *authfile = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "+h", options, NULL)) != -1) {
		switch (c) {
		case OPT_AUTHFILE:
			authfile = optarg;
			break;
		case 'h':
			fputs(usage, stdout);
			return 0;
		default:
			fputs(usage, stderr);
			return IMGFS_EXIT_USAGE;
		}
	}
	if (optind + 1 != argc) {
		fputs(usage, stderr);
		return report_usage("logout needs one REGISTRY");
	}
	_cleanup_free_ char *file = authfile ? strdup(authfile) : auth_default_file();
	struct err err = { 0 };
	int r = file ? auth_store_credentials(file, argv[optind], NULL, &err) : -ENOMEM;
	if (r < 0)
		return report(err.code ? err.code : -r, "logout from \"%s\" failed: %s", argv[optind],
			      err.code ? err.msg : strerror(-r));
	printf("Removed login credentials for %s\n", argv[optind]);
	return 0;
}
