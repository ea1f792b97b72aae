#!/usr/bin/env python3
"""imgfs mount --upper: file-system semantics of the writable mount (in the
spirit of pjdfstest: every operation, its success and its errno cases), the
overlayfs format of UPPERDIR checked against the kernel's overlayfs, kill -9
durability, the UPPERDIR lock and concurrent writers."""

import ctypes
import errno
import hashlib
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from imgfs_test.cases import Suite, run_file  # noqa: E402
from imgfs_test.harness import (IMGFS, Mount, Registry, as_user, diff_snapshots, is_mounted, run,  # noqa: E402
                                skopeo_umoci_unpack, snapshot)
from imgfs_test.images import deterministic_bytes, push_rich  # noqa: E402

suite = Suite()
tap = suite.tap

libc = ctypes.CDLL(None, use_errno=True)
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
AT_FDCWD = -100


def renameat2(old, new, flags):
    if libc.renameat2(AT_FDCWD, old.encode(), AT_FDCWD, new.encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), old)


def errno_of(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except OSError as e:
        return e.errno
    return 0


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write(path, data, mode="wb"):
    with open(path, mode) as f:
        f.write(data)


def is_whiteout(path):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def daemon_pid(mountpoint):
    """The pid of the server of the mount (not its keeper's)."""
    try:
        return int(os.getxattr(mountpoint, "user.imgfs.pid"))
    except OSError:
        return None


def semantics(d, upper):
    """Every operation against the mount d whose upper directory is upper."""
    # -- create / open flags
    fd = os.open(f"{d}/new-file", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.write(fd, b"hello")
    os.close(fd)
    st = os.stat(f"{d}/new-file")
    tap.ok(read(f"{d}/new-file") == b"hello" and stat.S_IMODE(st.st_mode) == 0o640,
           "create with O_CREAT|O_EXCL, write, read back, mode kept")
    tap.ok(errno_of(os.open, f"{d}/new-file", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST,
           "O_EXCL on an upper file: EEXIST")
    tap.ok(errno_of(os.open, f"{d}/etc/hostname", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST,
           "O_EXCL on an image file: EEXIST")
    fd = os.open(f"{d}/rw-file", os.O_CREAT | os.O_RDWR, 0o600)
    os.write(fd, b"abcdef")
    os.lseek(fd, 0, os.SEEK_SET)
    tap.ok(os.read(fd, 6) == b"abcdef", "read-after-write on one O_RDWR descriptor")
    os.close(fd)

    write(f"{d}/etc/hostname", b"truncated\n")
    tap.ok(read(f"{d}/etc/hostname") == b"truncated\n", "O_TRUNC of an image file replaces its content")
    tap.ok(stat.S_IMODE(os.stat(f"{d}/etc/hostname").st_mode) == 0o640,
           "copy-up keeps the image file's mode")
    write(f"{d}/usr/setuid", b"echo appended\n", "ab")
    tap.ok(read(f"{d}/usr/setuid") == b"#!/bin/sh\necho appended\n",
           "O_APPEND to an image file appends after its bytes")

    big = deterministic_bytes(1, 8 << 20)
    ino_before = os.stat(f"{d}/usr/big.bin").st_ino
    with open(f"{d}/usr/big.bin", "r+b") as f:
        f.seek(4 << 20)
        f.write(b"PATCH")
    want = big[:4 << 20] + b"PATCH" + big[(4 << 20) + 5:]
    st = os.stat(f"{d}/usr/big.bin")
    tap.ok(hashlib.sha256(read(f"{d}/usr/big.bin")).digest() == hashlib.sha256(want).digest(),
           "writing into the middle of an 8 MiB image file keeps the rest of it")
    tap.ok(st.st_uid == 1000 and st.st_gid == 1000 and stat.S_IMODE(st.st_mode) == 0o600,
           "copy-up keeps owner and group", (st.st_uid, st.st_gid, oct(st.st_mode)))
    tap.ok(st.st_ino == ino_before, "st_ino does not change at copy-up", (ino_before, st.st_ino))
    tap.ok(os.path.isfile(f"{upper}/usr/big.bin"), "the copy is in UPPERDIR")

    os.truncate(f"{d}/rw-file", 3)
    tap.ok(read(f"{d}/rw-file") == b"abc", "truncate shrinks")
    os.truncate(f"{d}/rw-file", 10)
    tap.ok(read(f"{d}/rw-file") == b"abc" + b"\0" * 7, "truncate grows with zeros")
    with open(f"{d}/rw-file", "r+b") as f:
        os.ftruncate(f.fileno(), 1)
        os.posix_fallocate(f.fileno(), 0, 1 << 20)
        os.fsync(f.fileno())
    tap.ok(os.stat(f"{d}/rw-file").st_size == 1 << 20, "ftruncate, fallocate and fsync on a descriptor")
    os.truncate(f"{d}/nsec", 0)
    tap.ok(read(f"{d}/nsec") == b"", "truncate to 0 of an image file")

    # -- directories
    os.mkdir(f"{d}/newdir", 0o750)
    tap.ok(stat.S_IMODE(os.stat(f"{d}/newdir").st_mode) == 0o750, "mkdir with its mode")
    tap.ok(errno_of(os.mkdir, f"{d}/newdir") == errno.EEXIST, "mkdir of an upper dir: EEXIST")
    tap.ok(errno_of(os.mkdir, f"{d}/usr") == errno.EEXIST, "mkdir of an image dir: EEXIST")
    tap.ok(errno_of(os.mkdir, f"{d}/no/such") == errno.ENOENT, "mkdir under a missing dir: ENOENT")
    tap.ok(errno_of(os.mkdir, f"{d}/empty/x") == errno.ENOTDIR, "mkdir under a file: ENOTDIR")
    tap.ok(errno_of(os.rmdir, f"{d}/usr/share") == errno.ENOTEMPTY, "rmdir of an image dir with entries: ENOTEMPTY")
    tap.ok(errno_of(os.rmdir, f"{d}/empty") == errno.ENOTDIR, "rmdir of a file: ENOTDIR")
    tap.ok(errno_of(os.rmdir, f"{d}/nothing-here") == errno.ENOENT, "rmdir of a missing name: ENOENT")
    os.rmdir(f"{d}/newdir")
    tap.ok(not os.path.exists(f"{d}/newdir") and not os.path.lexists(f"{upper}/newdir"),
           "rmdir of an upper dir removes it, no whiteout needed")
    os.unlink(f"{d}/opq/upper")
    tap.ok(errno_of(os.rmdir, f"{d}/file-to-dir") == errno.ENOTEMPTY,
           "rmdir with an image entry still showing: ENOTEMPTY")
    os.rmdir(f"{d}/opq")
    tap.ok(not os.path.exists(f"{d}/opq") and is_whiteout(f"{upper}/opq"),
           "rmdir of an emptied image dir leaves a 0:0 whiteout")
    os.mkdir(f"{d}/opq")
    tap.ok(os.listdir(f"{d}/opq") == [] and os.getxattr(f"{upper}/opq", "trusted.overlay.opaque") == b"y",
           "a new dir where an image dir was is empty and opaque")
    tap.ok(errno_of(os.getxattr, f"{d}/opq", "trusted.overlay.opaque") == errno.ENODATA and
           "trusted.overlay.opaque" not in os.listxattr(f"{d}/opq"),
           "the overlay's own xattrs do not show in the mount")
    tap.ok(errno_of(os.setxattr, f"{d}/usr", "trusted.overlay.opaque", b"y") == errno.EPERM,
           "setting an overlay xattr through the mount: EPERM")

    # -- unlink
    os.unlink(f"{d}/empty")
    tap.ok(not os.path.exists(f"{d}/empty") and is_whiteout(f"{upper}/empty"),
           "unlink of an image file leaves a whiteout")
    tap.ok(errno_of(os.unlink, f"{d}/empty") == errno.ENOENT, "unlink of a deleted name: ENOENT")
    tap.ok(errno_of(os.unlink, f"{d}/usr") in (errno.EISDIR, errno.EPERM), "unlink of a dir: EISDIR")
    os.unlink(f"{d}/etc/hostname")
    tap.ok(is_whiteout(f"{upper}/etc/hostname") and "hostname" not in os.listdir(f"{d}/etc"),
           "unlink of a copied-up image file turns it into a whiteout")
    write(f"{d}/empty", b"back")
    tap.ok(read(f"{d}/empty") == b"back" and os.path.isfile(f"{upper}/empty"),
           "a file created over a whiteout replaces it")

    # -- rename
    write(f"{d}/r1", b"one")
    os.rename(f"{d}/r1", f"{d}/r2")
    tap.ok(read(f"{d}/r2") == b"one" and not os.path.exists(f"{d}/r1"), "rename of an upper file")
    os.rename(f"{d}/xattr-file", f"{d}/usr/moved-xattr-file")
    tap.ok(read(f"{d}/usr/moved-xattr-file") == b"x\n" and not os.path.exists(f"{d}/xattr-file") and
           is_whiteout(f"{upper}/xattr-file") and
           os.getxattr(f"{d}/usr/moved-xattr-file", "user.greeting") == b"hello",
           "rename of an image file across dirs keeps content and xattrs, whiteout at the old name")
    os.rename(f"{d}/r2", f"{d}/usr/added-late")
    tap.ok(read(f"{d}/usr/added-late") == b"one", "rename over an existing image file replaces it")
    count = len(os.listdir(f"{d}/usr/share/many"))
    os.rename(f"{d}/usr/share/many", f"{d}/many-moved")
    tap.ok(len(os.listdir(f"{d}/many-moved")) == count == 2000 and not os.path.exists(f"{d}/usr/share/many") and
           read(f"{d}/many-moved/f1234") == b"file 1234\n",
           "rename of an image dir with 2000 entries moves all of them")
    write(f"{d}/many-moved/f0001", b"changed after move")
    tap.ok(read(f"{d}/many-moved/f0001") == b"changed after move", "a file in a moved dir can be written")
    write(f"{d}/x1", b"X1")
    tap.ok(errno_of(renameat2, f"{d}/x1", f"{d}/dev/null", RENAME_NOREPLACE) == errno.EEXIST,
           "RENAME_NOREPLACE over an image file: EEXIST")
    renameat2(f"{d}/x1", f"{d}/keep-hard-1", RENAME_EXCHANGE)
    tap.ok(read(f"{d}/x1") == b"k\n" and read(f"{d}/keep-hard-1") == b"X1",
           "RENAME_EXCHANGE of an upper and an image file")
    os.mkdir(f"{d}/xd")
    renameat2(f"{d}/xd", f"{d}/deep", RENAME_EXCHANGE)
    tap.ok(os.listdir(f"{d}/deep") == [] and len(os.listdir(f"{d}/xd")) == 1,
           "RENAME_EXCHANGE of an empty upper dir and an image dir")
    tap.ok(errno_of(os.rename, f"{d}/x1", f"{d}/usr") == errno.EISDIR, "rename of a file over a dir: EISDIR")
    tap.ok(errno_of(os.rename, f"{d}/xd", f"{d}/x1") == errno.ENOTDIR, "rename of a dir over a file: ENOTDIR")
    tap.ok(errno_of(os.rename, f"{d}/xd", f"{d}/usr") == errno.ENOTEMPTY,
           "rename of a dir over a non-empty dir: ENOTEMPTY")
    tap.ok(errno_of(os.rename, f"{d}/no-such", f"{d}/x2") == errno.ENOENT, "rename of a missing name: ENOENT")
    os.mkdir(f"{d}/empty-target")
    os.rename(f"{d}/file-to-dir", f"{d}/empty-target")
    tap.ok(os.listdir(f"{d}/empty-target") == ["inside"] and not os.path.exists(f"{d}/file-to-dir"),
           "rename of an image dir over an empty dir")

    # -- links
    os.symlink("../etc/motd", f"{d}/usr/new-link")
    tap.ok(os.readlink(f"{d}/usr/new-link") == "../etc/motd", "symlink and readlink")
    tap.ok(os.readlink(f"{d}/usr/link-abs") == "/etc/hostname", "readlink of an image symlink")
    tap.ok(errno_of(os.symlink, "x", f"{d}/usr/new-link") == errno.EEXIST, "symlink over an existing name: EEXIST")
    os.link(f"{d}/usr/setuid", f"{d}/hard-to-setuid")
    a, b = os.stat(f"{d}/usr/setuid"), os.stat(f"{d}/hard-to-setuid")
    tap.ok(a.st_ino == b.st_ino and b.st_nlink == 2,
           "link to a copied-up file shares its inode", (a.st_nlink, b.st_nlink))
    os.link(f"{d}/dev/pipe", f"{d}/hard-to-pipe")
    tap.ok(stat.S_ISFIFO(os.stat(f"{d}/hard-to-pipe").st_mode) and os.stat(f"{d}/dev/pipe").st_nlink == 2,
           "link to an image fifo copies it up and links it")
    write(f"{d}/hard-to-setuid", b"through the link\n")
    tap.ok(read(f"{d}/usr/setuid") == b"through the link\n", "a write through one name shows through the other")
    tap.ok(errno_of(os.link, f"{d}/usr", f"{d}/dirlink") == errno.EPERM, "link of a dir: EPERM")
    ha, hb = os.stat(f"{d}/usr/hard-a"), os.stat(f"{d}/usr/hard-b")
    write(f"{d}/usr/hard-a", b"rewritten\n", "r+b")
    tap.ok(read(f"{d}/usr/hard-b") == b"rewritten\ntent\n" and
           os.stat(f"{d}/usr/hard-b").st_ino == hb.st_ino == ha.st_ino,
           "image hardlinks stay linked after copy-up (as overlayfs with index=on)")
    tap.ok(os.stat(f"{upper}/usr/hard-a").st_ino == os.stat(f"{upper}/usr/hard-b").st_ino,
           "UPPERDIR holds the copied hardlinks as one inode")

    # -- special files
    os.mkfifo(f"{d}/fifo", 0o644)
    tap.ok(stat.S_ISFIFO(os.stat(f"{d}/fifo").st_mode), "mkfifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind(f"{d}/sock")
    s.close()
    tap.ok(stat.S_ISSOCK(os.stat(f"{d}/sock").st_mode), "bind of a unix socket creates a socket node")
    tap.ok(errno_of(os.mknod, f"{d}/fake-whiteout", stat.S_IFCHR | 0o600, os.makedev(0, 0)) == errno.EPERM,
           "mknod of a 0:0 device (a whiteout's shape): EPERM")
    os.mknod(f"{d}/chardev", stat.S_IFCHR | 0o600, os.makedev(1, 7))
    tap.ok(os.stat(f"{d}/chardev").st_rdev == os.makedev(1, 7), "mknod of a character device")

    # -- metadata
    ino = os.stat(f"{d}/dev/loop9", follow_symlinks=False).st_ino
    os.chmod(f"{d}/dev/loop9", 0o604)
    os.chown(f"{d}/dev/loop9", 12, 34)
    os.utime(f"{d}/dev/loop9", ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(f"{d}/dev/loop9")
    tap.ok((stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, st.st_rdev, st.st_ino) ==
           (0o604, 12, 34, 2_000_000_456, os.makedev(7, 9), ino),
           "chmod, chown, utimens of an image device", st)
    os.utime(f"{d}/usr/link-rel", ns=(5, 6_000_000_000), follow_symlinks=False)
    os.chown(f"{d}/usr/link-rel", 7, 8, follow_symlinks=False)
    st = os.lstat(f"{d}/usr/link-rel")
    tap.ok(st.st_mtime_ns == 6_000_000_000 and st.st_uid == 7 and os.readlink(f"{d}/usr/link-rel") == "../etc/hostname",
           "lchown and utimens without following an image symlink")
    os.setxattr(f"{d}/etc", "user.new", b"value")
    tap.ok(os.getxattr(f"{d}/etc", "user.new") == b"value" and "user.new" in os.listxattr(f"{d}/etc"),
           "setxattr, getxattr, listxattr on a copied-up dir")
    os.removexattr(f"{d}/usr/moved-xattr-file", "user.greeting")
    tap.ok(errno_of(os.getxattr, f"{d}/usr/moved-xattr-file", "user.greeting") == errno.ENODATA,
           "removexattr")
    tap.ok(errno_of(os.removexattr, f"{d}/usr/share", "user.none") == errno.ENODATA,
           "removexattr of a missing name: ENODATA")
    sv = os.statvfs(d)
    tap.ok(sv.f_bsize > 0 and sv.f_blocks > 0, "statfs answers for the upper's file system")

    # -- symlinks in UPPERDIR are never followed by the daemon
    outside = os.path.join(os.path.dirname(upper), "outside-target")
    write(outside, b"outside")
    os.chmod(outside, 0o644)
    os.symlink(outside, f"{d}/escape")
    os.chown(f"{d}/escape", 4321, 4321, follow_symlinks=False)
    os.utime(f"{d}/escape", ns=(1, 1), follow_symlinks=False)
    st = os.stat(outside)
    tap.ok(st.st_uid == 0 and st.st_mtime_ns != 1 and read(outside) == b"outside",
           "operations on a symlink in the mount leave its outside target alone")

    # -- permissions as the kernel checks them
    tap.ok(as_user(1001, lambda: read(f"{d}/usr/added-late")) == 0, "another user reads a 0644 file")
    tap.ok(as_user(1001, lambda: write(f"{d}/usr/added-late", b"no")) == errno.EACCES,
           "another user writing a root 0644 file: EACCES")
    tap.ok(as_user(1001, lambda: os.mkdir(f"{d}/etc/nope")) == errno.EACCES,
           "mkdir in a root 0711 dir as a user: EACCES")
    tap.ok(as_user(1001, lambda: write(f"{d}/tmpfile-user", b"x")) == errno.EACCES, "create in a root 0755 dir: EACCES")
    os.mkdir(f"{d}/shared")
    os.chmod(f"{d}/shared", 0o777)
    write(f"{d}/shared/setuid-prog", b"#!/bin/sh\n")
    os.chmod(f"{d}/shared/setuid-prog", 0o6777)
    code = as_user(1001, lambda: write(f"{d}/shared/setuid-prog", b"changed", "ab"))
    tap.ok(code == 0 and stat.S_IMODE(os.stat(f"{d}/shared/setuid-prog").st_mode) == 0o777,
           "a write by another user clears setuid and setgid", (code, oct(os.stat(f"{d}/shared/setuid-prog").st_mode)))
    code = as_user(1001, lambda: write(f"{d}/shared/mine", b"mine"))
    owners = [os.stat(p).st_uid if os.path.exists(p) else None for p in (f"{d}/shared/mine", f"{upper}/shared/mine")]
    tap.ok(code == 0 and owners == [1001, 1001], "a file created by a user is owned by that user", (code, owners))


def concurrent(d):
    errors = []

    def writer(k):
        try:
            for i in range(60):
                data = f"writer {k} item {i}\n".encode() * (i + 1)
                write(f"{d}/conc/w{k}-{i}", data)
                if read(f"{d}/conc/w{k}-{i}") != data:
                    errors.append(f"w{k}-{i} read back wrong")
                if i % 3 == 0:
                    os.rename(f"{d}/conc/w{k}-{i}", f"{d}/conc/r{k}-{i}")
                if i % 5 == 0:
                    os.unlink(f"{d}/conc/r{k}-{i}" if i % 3 == 0 else f"{d}/conc/w{k}-{i}")
        except OSError as e:
            errors.append(f"writer {k}: {e}")

    def reader():
        try:
            for _ in range(20):
                if read(f"{d}/many-moved/f0999") != b"file 999\n":
                    errors.append("image file read wrong")
                os.listdir(f"{d}/conc")
        except OSError as e:
            errors.append(f"reader: {e}")

    os.mkdir(f"{d}/conc")
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)] + \
              [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    alive = [t for t in threads if t.is_alive()]
    tap.ok(not alive and not errors, "6 writers and 3 readers at once: no deadlock, no error", errors[:5])
    names = set(os.listdir(f"{d}/conc"))
    want = set()
    for k in range(6):
        for i in range(60):
            if i % 5 == 0:
                continue
            want.add(f"r{k}-{i}" if i % 3 == 0 else f"w{k}-{i}")
    tap.ok(names == want, "every write, rename and unlink of the concurrent writers is there",
           sorted(names ^ want)[:10])


def overlay_equivalence(reg, work, upper, imgfs_view):
    reference = skopeo_umoci_unpack(reg, "test/rich:gzip", work)
    ovl_upper = os.path.join(work, "ovl-upper")
    ovl_work = os.path.join(work, "ovl-work")
    ovl_mnt = os.path.join(work, "ovl-mnt")
    # A copy, so the kernel's bookkeeping (index, work dir) never touches ours.
    subprocess.run(["cp", "-a", upper, ovl_upper], check=True)
    os.makedirs(ovl_work)
    os.makedirs(ovl_mnt)
    r = run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={reference},upperdir={ovl_upper},workdir={ovl_work}", ovl_mnt])
    if not tap.ok(r.returncode == 0, "the kernel's overlayfs mounts UPPERDIR over an unpack of the image",
                  r.stderr.decode(errors="replace")):
        return
    try:
        got = snapshot(ovl_mnt)
        tap.ok(got == imgfs_view, "overlayfs shows exactly the tree imgfs showed", diff_snapshots(imgfs_view, got))
    finally:
        run(["umount", ovl_mnt])


@suite.setup
def setup(t):
    os.chmod(t.work, 0o755)  # other users reach the mount in the permission tests
    t.reg = Registry(t.work)
    t.on_exit(t.reg.stop)
    t.cache = os.path.join(t.work, "cache")
    push_rich(t.reg, "test/rich", "gzip", ["gzip", "gzip", "gzip"], docker=True)
    t.ref = f"{t.reg.host}/test/rich:gzip"
    t.upper = os.path.join(t.work, "upper")
    t.mnt = os.path.join(t.work, "mnt")
    t.m = Mount(t.ref, t.mnt, t.cache, ["--upper", t.upper])
    t.on_exit(lambda: t.m.umount())
    if tap.ok(t.m.ok, "mount with --upper", t.m.stderr()):
        tap.ok(os.path.isdir(t.upper), "UPPERDIR is created when missing")


# The cases share one writable mount, each going on from the state the
# ones before it left; alone, each holds for a fresh UPPERDIR as well.

@suite.case
def second_mount_refused(t):
    second = Mount(t.ref, os.path.join(t.work, "mnt2"), t.cache, ["--upper", t.upper])
    tap.ok(not second.ok and "in use" in second.stderr() and t.upper in second.stderr(),
           "a second mount of the same UPPERDIR is refused with a clear error", second.stderr())
    second.umount()


@suite.case
def posix_semantics(t):
    semantics(t.mnt, t.upper)


@suite.case
def concurrent_writers(t):
    concurrent(t.mnt)


def raw_entries(path):
    """What getdents64 returns for path: {name: d_ino}, "." and ".." included."""
    SYS_getdents64 = {"x86_64": 217, "aarch64": 61}[os.uname().machine]
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    buf = ctypes.create_string_buffer(1 << 16)
    out = {}
    try:
        while True:
            n = libc.syscall(SYS_getdents64, fd, buf, len(buf))
            if n <= 0:
                break
            pos = 0
            while pos < n:
                ino, _, reclen = struct.unpack_from("QqH", buf, pos)
                name = buf.raw[pos + 19:pos + reclen].split(b"\0", 1)[0].decode()
                out[name] = ino
                pos += reclen
    finally:
        os.close(fd)
    return out


@suite.case
def directory_entries_and_links(t):
    """Entries carry real inode numbers, "." and ".." included (glibc and Go
    pass inode 0 on as a deleted entry); a merged directory reports the link
    count overlayfs reports."""
    d = os.path.join(t.mnt, "usr", "share")
    write(os.path.join(d, "made-here"), b"x")  # copies usr and usr/share up: both merged now
    got = raw_entries(d)
    want = {".": os.stat(d).st_ino, "..": os.stat(os.path.dirname(d)).st_ino}
    want.update((name, os.lstat(os.path.join(d, name)).st_ino) for name in os.listdir(d))
    tap.ok(all(got.get(k) == v and v != 0 for k, v in want.items()) and 0 not in got.values(),
           "every entry of a merged directory, . and .. too, has its inode number", (got.get("."), got.get(".."), want))
    root = raw_entries(t.mnt)
    tap.ok(root.get(".") == root.get("..") == os.stat(t.mnt).st_ino, "the root's . and .. are the root", root.get("."))
    tap.ok(os.stat(d).st_nlink == 1 and os.stat(os.path.join(t.mnt, "usr")).st_nlink == 1,
           "a merged directory reports one link, as overlayfs does", os.stat(d).st_nlink)


@suite.case
def remount_keeps_changes(t):
    view = snapshot(t.mnt)
    t.m.umount()
    tap.ok(not is_mounted(t.mnt), "unmount of the writable mount")
    t.m = Mount(t.ref, t.mnt, t.cache, ["--upper", t.upper])
    tap.ok(t.m.ok and snapshot(t.mnt) == view, "remounting the same UPPERDIR shows every change",
           t.m.stderr() if not t.m.ok else diff_snapshots(view, snapshot(t.mnt)))


@suite.case
def fsync_survives_kill(t):
    """What a program fsynced survives kill -9 of the daemon: the keeper's
    next server serves it on the same mount, and a new mount finds it too."""
    mnt = t.mnt
    with open(f"{mnt}/durable", "wb") as f:
        f.write(b"fsynced bytes\n")
        f.flush()
        os.fsync(f.fileno())
    pid = daemon_pid(mnt)
    if not tap.ok(pid is not None, "found the daemon of the mount"):
        return
    os.kill(pid, signal.SIGKILL)
    tap.ok(read(f"{mnt}/durable") == b"fsynced bytes\n" and daemon_pid(mnt) not in (None, pid),
           "after kill -9 of the daemon a new server serves the same mount, the file in it")
    run([IMGFS, "umount", mnt])
    t.m = Mount(t.ref, mnt, t.cache, ["--upper", t.upper])
    tap.ok(t.m.ok and read(f"{mnt}/durable") == b"fsynced bytes\n",
           "a file fsynced before kill -9 of the daemon is there after remount", t.m.stderr())


@suite.case
def overlayfs_equivalence(t):
    view = snapshot(t.mnt)
    t.m.umount()
    overlay_equivalence(t.reg, t.work, t.upper, view)


run_file(suite)
