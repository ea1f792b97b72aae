/* What a mount read, written as a prefetch list (`imgfs record`), and
 * prefetch lists read back: which files, in which order, and which parts
 * of a file read in part. */
#include "image.h"

#include <sys/stat.h>

#include "tree.h"

struct listed_file {
	struct entry *entry;
	struct file_part *parts; /* NULL: all of it */
	uint32_t n_parts;
};

int image_write_record(struct image *img, char **ret_path)
{
	_cleanup_free_ char *dir = strdup_printf("%s/records", img->cache_dir);
	_cleanup_free_ char *path = dir ? strdup_printf("%s/%s", dir, img->manifest_digest + strlen("sha256:")) : NULL;
	_cleanup_free_ char *text = NULL;
	size_t len = 0;
	if (!path)
		return -ENOMEM;
	int r = mkdir_parents(dir, 0700);
	if (r < 0)
		return r;
	FILE *f = open_memstream(&text, &len);
	if (!f)
		return -ENOMEM;
	r = tree_write_record(img->tree, f);
	if (fclose(f) != 0 && r >= 0)
		r = -ENOMEM;
	if (r >= 0)
		r = write_file_replace(path, text ? text : "", len);
	if (r < 0)
		return r;
	*ret_path = TAKE_PTR(path);
	return 0;
}

int image_set_landmarks(struct image *img, const char *list_path, size_t *ret_found, struct err *err)
{
	_cleanup_fclose_ FILE *f = fopen(list_path, "re");
	if (!f)
		return err_set(err, errno, "cannot read the prefetch list \"%s\": %s", list_path, strerror(errno));
	struct listed_file *listed = NULL;
	size_t found = 0, allocated = 0;
	char *line = NULL;
	size_t cap = 0;
	int r = 0;
	while (r == 0 && getline(&line, &cap, f) > 0) {
		line[strcspn(line, "\r\n")] = '\0';
		struct listed_file l = { 0 };
		/* A path that holds "\t@" itself is looked up whole if its tail
		 * does not parse as parts. */
		char *mark = strstr(line, "\t@");
		if (mark && file_parts_parse(mark + 2, &l.parts, &l.n_parts) == 0)
			*mark = '\0';
		struct tree_inode *i = line[0] ? tree_lookup_path(img->tree, line) : NULL;
		if (!i && mark && !l.parts) {
			*mark = '\0';
			i = line[0] ? tree_lookup_path(img->tree, line) : NULL;
		}
		/* The tree shares the layers' entries; until the mount serves, they are ours. */
		l.entry = i && S_ISREG(i->mode) && i->entry ? (struct entry *)i->entry : NULL;
		if (!l.entry || grow_array((void **)&listed, &allocated, found + 1, sizeof(*listed)) < 0) {
			r = l.entry ? -ENOMEM : 0;
			free(l.parts);
			continue;
		}
		listed[found++] = l;
	}
	free(line);
	/* A list that names none of the image's files leaves its own landmarks. */
	for (size_t i = 0; r == 0 && found && i < img->n_layers; i++)
		for (size_t k = 0; k < img->layers[i]->n_entries; k++) {
			struct entry *e = &img->layers[i]->entries[k];
			e->prefetch = false;
			e->prefetch_rank = 0;
			free(e->prefetch_parts);
			e->prefetch_parts = NULL;
			e->n_prefetch_parts = 0;
		}
	uint32_t rank = 0;
	for (size_t i = 0; i < found; i++) {
		struct entry *e = listed[i].entry;
		/* A file listed twice keeps its first place and parts. */
		if (r == 0 && !e->prefetch) {
			e->prefetch = true;
			e->prefetch_rank = ++rank;
			e->prefetch_parts = TAKE_PTR(listed[i].parts);
			e->n_prefetch_parts = listed[i].n_parts;
		}
		free(listed[i].parts);
	}
	free(listed);
	*ret_found = rank;
	return r;
}
