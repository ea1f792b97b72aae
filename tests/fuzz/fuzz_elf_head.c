#include "elf_head.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool found(void *ctx, const char *path)
{
	size_t *n = ctx;
	if (strlen(path) > (size_t)1 << 20)
		abort();
	return ++*n > 4;
}

/* One input read three ways, as the guess reads a file and the image's
 * loader cache: what parses lies within the bytes given. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct elf_layout layout;
	if (elf_layout_parse(data, size, size, &layout) == 0) {
		if (layout.n_loads == 0 || layout.n_loads > ELF_MAX_LOADS)
			abort();
		for (unsigned k = 0; k < layout.n_loads; k++)
			if (layout.loads[k].off > size || layout.loads[k].filesz > size - layout.loads[k].off)
				abort();
		/* The middle of the first segment maps into some segment, within the file. */
		uint64_t vaddr = layout.loads[0].vaddr + layout.loads[0].filesz / 2;
		uint64_t off = elf_vaddr_to_offset(&layout, vaddr);
		if (layout.loads[0].filesz && vaddr >= layout.loads[0].vaddr && (off == UINT64_MAX || off >= size))
			abort();
	}
	struct elf_dynamic d;
	if (elf_dynamic_parse(data, size, &d) == 0 && d.n_needed > ELF_MAX_NEEDED)
		abort();
	size_t n = 0;
	char soname[64];
	size_t len = size < sizeof(soname) - 1 ? size : sizeof(soname) - 1;
	memcpy(soname, data, len);
	soname[len] = '\0';
	(void)ld_cache_lookup(data, size, soname, 62, found, &n);
	(void)ld_cache_lookup(data, size, "libc.so.6", 183, found, &n);
	return 0;
}
