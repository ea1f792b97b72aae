/* imgfs index push REF and imgfs profile push REF FILE. */
#include "artifact_cmd.h"

#include "cli.h"
#include "index_artifact.h"

/* Artifacts go to the index repository when there is one, else next to
 * the image. */
static int target_repo(const char *ref_text, const struct image_options *opts, struct image_ref *ret, struct err *err)
{
	return image_ref_parse(opts->index_repo ? opts->index_repo : ref_text, ret, err);
}

static int push_index(const char *ref_text, const struct image_options *opts)
{
	struct err err = { 0 };
	struct image_ref repo = { 0 };
	struct image *img = NULL;
	_cleanup_free_ char *digest = NULL;
	int ret = IMGFS_EXIT_FAILED;
	if (target_repo(ref_text, opts, &repo, &err) < 0 || image_open(ref_text, opts, &img, &err) < 0 ||
	    index_artifact_push(img, &repo, opts, &digest, &err) < 0) {
		report(err.code ? err.code : ENOMEM, "cannot push the index of \"%s\": %s", ref_text,
		       err.code ? err.msg : "out of memory");
	} else {
		printf("%s\n", digest);
		ret = IMGFS_EXIT_OK;
	}
	image_free(img);
	image_ref_done(&repo);
	return ret;
}

#define PROFILE_FILE_MAX (16u << 20)

static int push_profile(const char *ref_text, const char *file, const struct image_options *opts)
{
	struct err err = { 0 };
	struct image_ref repo = { 0 };
	struct artifact_subject_info subject = { 0 };
	_cleanup_free_ char *list = NULL, *digest = NULL;
	size_t len = 0;
	int r = read_file_capped(file, PROFILE_FILE_MAX, &list, &len);
	if (r < 0)
		return report(-r, "cannot read the profile \"%s\": %s", file, strerror(-r));
	if (len == 0)
		return report(EINVAL, "the profile \"%s\" lists no file: run the workload on a mount first", file);
	r = target_repo(ref_text, opts, &repo, &err);
	if (r == 0)
		r = image_resolve_manifest(ref_text, opts, &subject, &err);
	if (r == 0) {
		struct artifact_subject s = { subject.digest, subject.media_type, subject.size };
		r = profile_artifact_push(&repo, &s, list, len, opts, &digest, &err);
	}
	if (r == 0)
		printf("%s\n", digest);
	else
		report(err.code ? err.code : -r, "cannot push the profile of \"%s\": %s", ref_text,
		       err.code ? err.msg : strerror(-r));
	free(subject.digest);
	free(subject.media_type);
	image_ref_done(&repo);
	return r == 0 ? IMGFS_EXIT_OK : IMGFS_EXIT_FAILED;
}

/* Parses SOURCE_OPTIONS and n_args arguments after "VERB push"; -1 to go
 * on, else the exit code. */
static int parse_push(int argc, char **argv, const char *usage_line, int n_args, struct source_flags *flags,
		      struct image_options *opts)
{
	static const struct option options[] = {
		SOURCE_OPTIONS,
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	if (argc < 2 || strcmp(argv[1], "push") != 0) {
		fprintf(stderr, "Usage: %s\n", usage_line);
		return IMGFS_EXIT_USAGE;
	}
	int c, r;
	optind = 1;
	while ((c = getopt_long(argc - 1, argv + 1, "+h", options, NULL)) != -1) {
		if ((r = source_flag(flags, c, optarg)) < 0)
			return report(-r, "out of memory");
		if (r > 0)
			continue;
		fprintf(c == 'h' ? stdout : stderr, "Usage: %s\n", usage_line);
		return c == 'h' ? IMGFS_EXIT_OK : IMGFS_EXIT_USAGE;
	}
	if (argc - 1 - optind != n_args)
		return report_usage("%s: expected %s", usage_line, n_args == 1 ? "REF" : "REF and FILE");
	r = source_flags_apply(flags, opts);
	return r == 0 ? -1 : r;
}

int cmd_index(int argc, char **argv)
{
	struct image_options opts = { .ignore_index_artifacts = true };
	struct source_flags flags = { 0 };
	int ret = parse_push(argc, argv, "imgfs index push [--cache DIR] [--index-repo REPO] REF", 1, &flags, &opts);
	if (ret < 0)
		ret = push_index(argv[argc - 1], &opts);
	source_flags_done(&flags);
	return ret;
}

int cmd_profile(int argc, char **argv)
{
	struct image_options opts = { 0 };
	struct source_flags flags = { 0 };
	int ret = parse_push(argc, argv, "imgfs profile push [--index-repo REPO] REF FILE", 2, &flags, &opts);
	if (ret < 0)
		ret = push_profile(argv[argc - 2], argv[argc - 1], &opts);
	source_flags_done(&flags);
	return ret;
}
