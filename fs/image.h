/* An image ready to serve: its layers fetched into the cache, indexed, and
 * merged into one tree. */
#pragma once

#include <stdatomic.h>

#include "registry.h"
#include "tree.h"

/* When a mount asks the registry what a reference names, as podman's --pull:
 * always; only when this cache has not resolved it before; or never. */
enum pull_policy { PULL_ALWAYS, PULL_MISSING, PULL_NEVER };

/* "always", "missing", "never"; -EINVAL for anything else. */
int pull_policy_parse(const char *text, enum pull_policy *ret);

struct image_options {
	const char *cache_dir;
	enum pull_policy pull;
	struct registry_options registry;
	/* Called with a line of progress (not an error) when non-NULL. */
	void (*progress)(const char *line);
	/* Called, when non-NULL, with what a user should know even when no
	 * one watches progress (a layer that cannot be read lazily). */
	void (*notice)(const char *line);
	/* Fetch plain layers whole even where the registry has an imgfs index
	 * for them (to build and push one). */
	bool ignore_index_artifacts;
	/* registry.platform was asked for, not the host's by default: an image
	 * of one manifest for another platform is then an error. */
	bool platform_explicit;
	/* Serve the layers one by one (imgfs store): no merged tree, and what
	 * the manifest says of each layer is kept in image.descs. */
	bool separate_layers;
	/* A repository ("REG/NAME") also searched for imgfs index artifacts and
	 * profiles, after the image's own; NULL: none. */
	const char *index_repo;
	/* Look for a published profile (imgfs profile push): img->profile_path. */
	bool find_profile;
};

/* A layer as the manifest describes it. */
struct image_layer_desc {
	char *media_type;
	/* The eStargz TOC or zstd:chunked manifest digest; NULL: neither. */
	char *toc_digest;
	uint64_t size;
};

struct image {
	char *ref_text;
	char *manifest_digest;
	char *pinned_ref; /* resolved name@manifest digest: what a successor server opens */
	char *manifest_media_type;
	size_t manifest_size;
	char *config_path;  /* the verified image config in the cache, absolute */
	char *profile_path; /* a published profile, verified, in the cache; NULL: none */
	char *cache_dir;
	struct layer **layers;
	size_t n_layers;
	struct tree *tree;              /* NULL with separate_layers */
	struct image_layer_desc *descs; /* separate_layers only, one per layer */
	/* separate_layers: where a layer's blob is fetched from, by one
	 * thread at a time (blob_lock). */
	struct registry_client *blob_client;
	pthread_mutex_t blob_lock;
	uint64_t image_size;          /* compressed layers, as the manifest says */
	uint64_t bytes_fetched_whole; /* blobs fetched whole by this mount */
	size_t layers_fetched_whole;  /* layers with no TOC or index, not in the cache */
	/* While it opens: a layer failed, and those fetched whole give up. */
	atomic_bool open_failed;

	struct elf_guess *elf_guess; /* NULL: nothing guessed */
	pthread_t prefetch_thread;
	bool prefetch_running;
	atomic_bool prefetch_stop, prefetch_done;
	enum prefetch_mode prefetch_mode;
};

/* Starts the layers' background work and the background fetch of lazy
 * layers.  Call it in the process that serves the mount (after
 * daemonizing: threads do not survive fork). */
int image_start_background(struct image *img, enum prefetch_mode mode);

/* "key value" lines: what this mount fetched and from where it was served. */
int image_format_stats(struct image *img, char *buf, size_t size);

int image_open(const char *ref_text, const struct image_options *opts, struct image **ret, struct err *err);
struct image *image_free(struct image *img);

/* What ref_text names, without opening its layers (imgfs profile push). */
struct artifact_subject_info {
	char *digest, *media_type;
	size_t size;
};
int image_resolve_manifest(const char *ref_text, const struct image_options *opts, struct artifact_subject_info *ret,
			   struct err *err);

/* The whole compressed blob of layer i, verified, from the cache, fetched
 * into it first when it is not there (separate_layers images only). */
int image_layer_blob(struct image *img, size_t i, int *ret_fd, struct err *err);

/* Writes the files read so far (see tree_write_record) to
 * <cache>/records/<manifest hex>; *ret_path (caller frees) names it. */
int image_write_record(struct image *img, char **ret_path);
/* Makes the files listed in list_path (one path per line) the prefetch
 * landmark set, in place of the layers' own; *ret_found counts those found. */
int image_set_landmarks(struct image *img, const char *list_path, size_t *ret_found, struct err *err);

/* The references this cache resolved, for imgfs images: fn gets each one's
 * canonical text ("<none>" for a record older than that), platform and
 * manifest digest. */
int image_refs_list(const char *cache_dir, void (*fn)(const char *ref, const char *platform, const char *digest));
/* Forgets what ref resolved to for platform (imgfs rmi): its blobs stay
 * until --cache-size evicts them. */
int image_ref_forget(const char *cache_dir, const char *ref_text, const struct platform *p, struct err *err);

/* The default cache: /var/lib/imgfs for root, else $XDG_CACHE_HOME/imgfs
 * (~/.cache/imgfs).  $IMGFS_CACHE overrides both.  Caller frees; NULL with
 * errno ENOENT when there is no home to put it in, ENOMEM. */
char *image_default_cache_dir(void);
