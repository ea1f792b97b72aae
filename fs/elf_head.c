/* ELF headers and ld.so.cache, from bytes nobody vouched for: every offset
 * and count is checked against the buffer before it is used. */
#include "elf_head.h"

#include <elf.h>
#include <errno.h>
#include <string.h>

#include "util.h"

#define LD_CACHE_MAGIC "glibc-ld.so.cache1.1"
#define LD_CACHE_HEADER_SIZE 48
#define LD_CACHE_ENTRY_SIZE 24
/* ldconfig's flags: a libc6 library, and the ABI it was built for. */
#define LD_CACHE_ELF_LIBC6 0x0003
#define LD_CACHE_X8664_LIB64 0x0300
#define LD_CACHE_AARCH64_LIB64 0x0a00

static bool within(uint64_t off, uint64_t n, uint64_t len)
{
	return off <= len && n <= len - off;
}

int elf_layout_parse(const void *head, size_t len, uint64_t file_size, struct elf_layout *ret)
{
	Elf64_Ehdr eh;
	if (len < sizeof(eh))
		return -EINVAL;
	memcpy(&eh, head, sizeof(eh));
	if (memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64 ||
	    eh.e_ident[EI_DATA] != ELFDATA2LSB || (eh.e_type != ET_DYN && eh.e_type != ET_EXEC) ||
	    eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 || eh.e_phnum > 64 ||
	    !within(eh.e_phoff, (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr), len))
		return -EINVAL;
	*ret = (struct elf_layout){ .machine = eh.e_machine };
	for (unsigned k = 0; k < eh.e_phnum; k++) {
		Elf64_Phdr ph;
		memcpy(&ph, (const char *)head + eh.e_phoff + k * sizeof(ph), sizeof(ph));
		if (!within(ph.p_offset, ph.p_filesz, file_size))
			continue;
		struct elf_segment seg = { ph.p_offset, ph.p_filesz, ph.p_vaddr };
		if (ph.p_type == PT_LOAD && ret->n_loads < ELF_MAX_LOADS)
			ret->loads[ret->n_loads++] = seg;
		else if (ph.p_type == PT_DYNAMIC)
			ret->dynamic = seg;
	}
	return ret->n_loads ? 0 : -EINVAL;
}

uint64_t elf_vaddr_to_offset(const struct elf_layout *l, uint64_t vaddr)
{
	for (unsigned k = 0; k < l->n_loads; k++) {
		const struct elf_segment *s = &l->loads[k];
		if (vaddr >= s->vaddr && vaddr - s->vaddr < s->filesz)
			return s->off + (vaddr - s->vaddr);
	}
	return UINT64_MAX;
}

int elf_dynamic_parse(const void *dyn, size_t len, struct elf_dynamic *ret)
{
	*ret = (struct elf_dynamic){ .runpath = UINT64_MAX };
	uint64_t rpath = UINT64_MAX;
	bool strtab = false;
	for (size_t off = 0; off + sizeof(Elf64_Dyn) <= len; off += sizeof(Elf64_Dyn)) {
		Elf64_Dyn d;
		memcpy(&d, (const char *)dyn + off, sizeof(d));
		if (d.d_tag == DT_NULL)
			break;
		if (d.d_tag == DT_NEEDED && ret->n_needed < ELF_MAX_NEEDED)
			ret->needed[ret->n_needed++] = d.d_un.d_val;
		else if (d.d_tag == DT_STRTAB)
			ret->strtab_vaddr = d.d_un.d_ptr, strtab = true;
		else if (d.d_tag == DT_STRSZ)
			ret->strsz = d.d_un.d_val;
		else if (d.d_tag == DT_RUNPATH)
			ret->runpath = d.d_un.d_val;
		else if (d.d_tag == DT_RPATH)
			rpath = d.d_un.d_val;
	}
	/* The loader ignores DT_RPATH where there is a DT_RUNPATH. */
	if (ret->runpath == UINT64_MAX)
		ret->runpath = rpath;
	return strtab && ret->strsz ? 0 : -EINVAL;
}

static uint32_t read_u32(const unsigned char *p)
{
	uint32_t v;
	memcpy(&v, p, sizeof(v));
	return v;
}

/* The NUL-terminated string at off of the cache, or NULL. */
static const char *cache_string(const unsigned char *cache, size_t len, uint32_t off)
{
	if (off >= len || !memchr(cache + off, '\0', len - off))
		return NULL;
	return (const char *)cache + off;
}

static bool cache_flags_match(int32_t flags, uint16_t machine)
{
	if ((flags & 0xff) != LD_CACHE_ELF_LIBC6)
		return false;
	if (machine == EM_X86_64)
		return (flags & 0xff00) == LD_CACHE_X8664_LIB64;
	if (machine == EM_AARCH64)
		return (flags & 0xff00) == LD_CACHE_AARCH64_LIB64;
	return true;
}

int ld_cache_lookup(const void *cache, size_t len, const char *soname, uint16_t machine,
		    bool (*found)(void *ctx, const char *path), void *ctx)
{
	const unsigned char *c = cache;
	/* Only the format glibc has written alone since 2.32 (Debian 12). */
	if (len < LD_CACHE_HEADER_SIZE || memcmp(c, LD_CACHE_MAGIC, strlen(LD_CACHE_MAGIC)) != 0)
		return -EINVAL;
	uint32_t n = read_u32(c + 20);
	if (!within(LD_CACHE_HEADER_SIZE, (uint64_t)n * LD_CACHE_ENTRY_SIZE, len))
		return -EINVAL;
	for (uint32_t k = 0; k < n; k++) {
		const unsigned char *e = c + LD_CACHE_HEADER_SIZE + (size_t)k * LD_CACHE_ENTRY_SIZE;
		int32_t flags;
		memcpy(&flags, e, sizeof(flags));
		const char *key = cache_string(c, len, read_u32(e + 4));
		const char *value = cache_string(c, len, read_u32(e + 8));
		if (key && value && strcmp(key, soname) == 0 && cache_flags_match(flags, machine) && found(ctx, value))
			break;
	}
	return 0;
}

bool elf_name_is_library(const char *base)
{
	for (const char *so = strstr(base, ".so"); so; so = strstr(so + 1, ".so"))
		if (so[3] == '\0' || so[3] == '.')
			return true;
	return false;
}

bool elf_may_be_object(uint32_t mode, const char *path)
{
	return (mode & 0111) || elf_name_is_library(path_base_name(path));
}
