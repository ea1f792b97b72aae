"""The images the tests build: a busybox image and a multi-layer image that
exercises every layer rule and entry type."""

import random
import shutil

from .harness import Entry, make_tar, push_image


def busybox_layer():
    return make_tar(busybox_entries())


def busybox_entries():
    busybox = shutil.which("busybox")
    with open(busybox, "rb") as f:
        data = f.read()
    entries = [Entry("bin", "dir"), Entry("bin/busybox", data=data, mode=0o755)]
    for applet in ("sh", "ls", "cat", "echo", "true", "false", "stty", "sleep", "id", "seq", "head", "wc",
                   "hostname", "touch", "env", "pwd"):
        entries.append(Entry(f"bin/{applet}", "symlink", link="busybox", mode=0o777))
    entries += [Entry("etc", "dir"),
                Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"),
                Entry("etc/group", data=b"root:x:0:\napp:x:1000:\nextra:x:2000:app\n"),
                Entry("tmp", "dir", mode=0o1777),
                Entry("root", "dir", mode=0o700)]
    return entries


def deterministic_bytes(seed, n):
    return random.Random(seed).randbytes(n)


def python_package_tree():
    """A Python package (lib/app) with a subpackage (core: compiled modules, a source, an
    extension module) and tests, and a directory of compiled modules outside any package;
    1 MiB of incompressible data between them keeps each apart from the read-ahead of a
    miss of the one before."""
    def pyc(path, seed):
        return Entry(path, data=deterministic_bytes(seed, 30000))

    def filler(path, seed):
        return Entry(path, data=deterministic_bytes(seed, 1 << 20))
    tree = [Entry(d, "dir") for d in ("lib", "lib/app", "lib/app/__pycache__", "lib/app/core",
                                      "lib/app/core/__pycache__", "lib/app/tests", "lib/app/tests/__pycache__",
                                      "lib/plain", "lib/plain/__pycache__")]
    return tree + [Entry("lib/app/__init__.py", data=b"from . import core\n"),
                   pyc("lib/app/__pycache__/__init__.cpython-311.pyc", 801), filler("lib/app/data.bin", 802),
                   Entry("lib/app/core/__init__.py", data=b"from . import a, b\n"),
                   pyc("lib/app/core/a.py", 803), pyc("lib/app/core/__pycache__/a.cpython-311.pyc", 804),
                   pyc("lib/app/core/__pycache__/b.cpython-311.pyc", 805),
                   Entry("lib/app/core/_speed.cpython-311-x86_64-linux-gnu.so", data=deterministic_bytes(806, 60000)),
                   filler("lib/app/core/data.bin", 807), Entry("lib/app/tests/__init__.py", data=b"\n"),
                   pyc("lib/app/tests/__pycache__/test_a.cpython-311.pyc", 808), filler("lib/app/tests/data.bin", 809),
                   pyc("lib/plain/__pycache__/p.cpython-311.pyc", 810), filler("lib/plain/data.bin", 811),
                   pyc("lib/plain/__pycache__/q.cpython-311.pyc", 812)]


def rich_layers():
    """Three layers; compressions are applied by the caller."""
    big_dir = [Entry("usr/share/many", "dir")]
    big_dir += [Entry(f"usr/share/many/f{i:04d}", data=f"file {i}\n".encode()) for i in range(2000)]
    long_component = "l" * 200
    base = [
        Entry("etc", "dir", mode=0o755, mtime=1600000000),
        Entry("etc/hostname", data=b"imgfs\n"),
        Entry("usr", "dir"), Entry("usr/share", "dir"),
        *big_dir,
        Entry("usr/big.bin", data=deterministic_bytes(1, 8 << 20), mode=0o600, uid=1000, gid=1000),
        Entry("usr/setuid", data=b"#!/bin/sh\n", mode=0o4755),
        Entry("usr/link-rel", "symlink", link="../etc/hostname", mode=0o777),
        Entry("usr/link-abs", "symlink", link="/etc/hostname", mode=0o777),
        Entry("usr/link-dangling", "symlink", link="/nowhere/at/all", mode=0o777),
        Entry("usr/hard-a", data=b"shared content\n"),
        Entry("usr/hard-b", "hardlink", link="usr/hard-a"),
        Entry("usr/hard-c", "hardlink", link="usr/hard-a"),
        Entry("dev", "dir"),
        Entry("dev/null", "chr", dev=(1, 3), mode=0o666),
        Entry("dev/loop9", "blk", dev=(7, 9), mode=0o660, gid=6),
        Entry("dev/pipe", "fifo", mode=0o600),
        Entry("xattr-file", data=b"x\n", xattrs={"user.greeting": "hello"}),
        Entry("deep", "dir"), Entry(f"deep/{long_component}", "dir"),
        Entry(f"deep/{long_component}/{long_component}", data=b"long path\n"),
        Entry("unicode-\u00e9\u00e8-\u65e5\u672c-\U0001F600", data=b"unicode\n"),
        Entry("opq", "dir"), Entry("opq/lower-1", data=b"1"), Entry("opq/lower-sub", "dir"),
        Entry("opq/lower-sub/x", data=b"x"),
        Entry("gone", "dir"), Entry("gone/child", data=b"c"),
        Entry("gone-file", data=b"g"),
        Entry("file-to-dir", data=b"file"),
        Entry("dir-to-file", "dir"), Entry("dir-to-file/child", data=b"c"),
        Entry("nsec", data=b"t", mtime=1700000000.123456789),
        Entry("empty", data=b""),
        Entry("keep-hard-1", data=b"k\n"), Entry("keep-hard-2", "hardlink", link="keep-hard-1"),
    ]
    middle = [
        Entry(".wh.gone", data=b""),
        Entry("opq", "dir", mode=0o750),
        Entry("opq/.wh..wh..opq", data=b""),
        Entry("opq/upper", data=b"upper"),
        Entry("file-to-dir", "dir"), Entry("file-to-dir/inside", data=b"now a dir"),
        Entry("dir-to-file", data=b"now a file"),
        Entry("etc", "dir", mode=0o711, mtime=1650000000),
        Entry("etc/hostname", data=b"changed\n", mode=0o640),
        Entry("usr", "dir"),
        Entry("usr/.wh.hard-c", data=b""),
        Entry("new-hard-1", data=b"new\n"), Entry("new-hard-2", "hardlink", link="new-hard-1"),
    ]
    top = [
        Entry(".wh.gone-file", data=b""),
        Entry("keep-hard-2", data=b"replaced, no longer linked\n"),
        Entry("usr", "dir"),
        Entry("usr/added-late", data=deterministic_bytes(2, 300000)),
    ]
    return [make_tar(base), make_tar(middle), make_tar(top)]


def push_rich(registry, repo, tag, compressions, docker=False):
    layers = list(zip(rich_layers(), compressions))
    return push_image(registry, repo, tag, layers, docker=docker)
