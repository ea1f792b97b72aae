/* The few facts of an ELF object the dynamic loader acts on first, read out
 * of untrusted bytes: where its segments lie, where its dynamic section is,
 * which libraries it needs; and the dynamic loader's cache (/etc/ld.so.cache)
 * that says where those libraries are.  Pure functions over buffers, for the
 * guess of what a starting program reads next (elf_guess.h) and for fuzzing
 * (private to fs/). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ELF_MAX_LOADS 16
#define ELF_MAX_NEEDED 32

struct elf_segment {
	uint64_t off, filesz, vaddr;
};

struct elf_layout {
	uint16_t machine;
	struct elf_segment loads[ELF_MAX_LOADS];
	unsigned n_loads;
	struct elf_segment dynamic; /* filesz 0: none (a static program) */
};

/* Parses the ELF header and program headers at the start of a file of
 * file_size bytes, which must all be in head[0, len): a 64-bit
 * little-endian executable or shared object.  -EINVAL for anything else. */
int elf_layout_parse(const void *head, size_t len, uint64_t file_size, struct elf_layout *ret);
/* Where the byte at vaddr lies in the file; UINT64_MAX if in no segment. */
uint64_t elf_vaddr_to_offset(const struct elf_layout *l, uint64_t vaddr);

struct elf_dynamic {
	uint64_t needed[ELF_MAX_NEEDED]; /* offsets in the string table */
	unsigned n_needed;
	uint64_t strtab_vaddr, strsz;
	uint64_t runpath; /* DT_RUNPATH, else DT_RPATH; UINT64_MAX: none */
};

/* Whether a file's base name is a shared library's as the loader and
 * ldconfig name them: ".so" at its end or before a version (".so.6",
 * "x.sock.so"), not inside a word (".sock", ".sort"). */
bool elf_name_is_library(const char *base);
/* Whether the file at path with permission bits mode may be an object the
 * loader maps, whose bytes may not say so yet: a program (executable) or
 * a file named as a shared library. */
bool elf_may_be_object(uint32_t mode, const char *path);

/* Parses a dynamic section's entries up to DT_NULL; -EINVAL when it has no
 * string table. */
int elf_dynamic_parse(const void *dyn, size_t len, struct elf_dynamic *ret);

/* The paths the loader's cache gives for the library soname built for
 * machine, in the cache's order: calls found(ctx, path) for each until it
 * returns true.  -EINVAL for a cache of another format or malformed. */
int ld_cache_lookup(const void *cache, size_t len, const char *soname, uint16_t machine,
		    bool (*found)(void *ctx, const char *path), void *ctx);
