"""Minimal ELF shared objects and an ld.so.cache, written byte by byte, for
tests of what imgfs reads out of them: headers, a dynamic section naming
the libraries needed, a string table; the rest is filler."""

import struct

from .images import deterministic_bytes

PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_RUNPATH = 0, 1, 5, 10, 29
STRTAB_AT = 0x1000
EM_X86_64 = 62


def shared_object(size, dynamic_at, needed=(), runpath=None, seed=0):
    """A 64-bit x86-64 ET_DYN file of size bytes: one PT_LOAD over all of
    it at vaddr 0, its dynamic section at dynamic_at."""
    strtab = b"\0"
    entries = []
    for name in needed:
        entries.append((DT_NEEDED, len(strtab)))
        strtab += name.encode() + b"\0"
    if runpath is not None:
        entries.append((DT_RUNPATH, len(strtab)))
        strtab += runpath.encode() + b"\0"
    entries += [(DT_STRTAB, STRTAB_AT), (DT_STRSZ, len(strtab)), (DT_NULL, 0)]
    dynamic = b"".join(struct.pack("<qQ", tag, value) for tag, value in entries)
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 3, EM_X86_64, 1, 0, 64, 0, 0, 64, 56, 2, 64, 0, 0)
    phdrs = (struct.pack("<IIQQQQQQ", PT_LOAD, 5, 0, 0, 0, size, size, 0x1000) +
             struct.pack("<IIQQQQQQ", PT_DYNAMIC, 6, dynamic_at, dynamic_at, dynamic_at, len(dynamic), len(dynamic),
                         8))
    body = bytearray(deterministic_bytes(seed, size))
    for at, data in ((0, ehdr + phdrs), (STRTAB_AT, strtab), (dynamic_at, dynamic)):
        body[at:at + len(data)] = data
    return bytes(body)


def ld_so_cache(libraries):
    """An ld.so.cache (glibc's format since 2.32) mapping each
    (soname, path) for x86-64."""
    n = len(libraries)
    strings_at = 48 + 24 * n
    strings, entries = b"", b""
    for soname, path in libraries:
        key = strings_at + len(strings)
        strings += soname.encode() + b"\0"
        value = strings_at + len(strings)
        strings += path.encode() + b"\0"
        entries += struct.pack("<iIIIQ", 0x0303, key, value, 0, 0)
    header = b"glibc-ld.so.cache1.1" + struct.pack("<IIB3xI12x", n, len(strings), 0, 0)
    return header + entries + strings
