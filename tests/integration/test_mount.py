#!/usr/bin/env python3
"""imgfs mount against a real registry, compared entry by entry with an
unpack of the same image by skopeo + umoci."""

import json
import os
import pty
import stat
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from imgfs_test.cases import Suite, run_file  # noqa: E402
from imgfs_test.harness import (Mount, Registry, compress, diff_snapshots, digest_of, is_mounted,  # noqa: E402
                                make_tar, Entry, push_image, run, skopeo_umoci_unpack, snapshot, IMGFS,
                                MT_OCI_INDEX)
from imgfs_test.images import busybox_layer, deterministic_bytes, push_rich  # noqa: E402

suite = Suite()


@suite.setup
def setup(t):
    t.reg = Registry(t.work)
    t.on_exit(t.reg.stop)
    push_rich(t.reg, "test/rich", "mixed", ["gzip", "zstd", "none"])
    push_rich(t.reg, "test/rich", "gzip", ["gzip", "gzip", "gzip"], docker=True)


@suite.case
def rich_equals_umoci(t):
    """The rich image, in mixed compressions, against umoci's unpack of its gzip twin."""
    reg, work = t.reg, t.work
    want = snapshot(skopeo_umoci_unpack(reg, "test/rich:gzip", work))
    for tag in ("mixed", "gzip"):
        m = Mount(f"{reg.host}/test/rich:{tag}", os.path.join(work, f"mnt-{tag}"), os.path.join(work, "cache"))
        if not t.tap.ok(m.ok, f"mount rich:{tag}", m.stderr()):
            continue
        t.tap.ok(is_mounted(m.dir), f"rich:{tag} is mounted when imgfs mount returns")
        dev = os.stat(m.dir).st_dev
        with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb") as f:
            readahead = f.read().strip()
        t.tap.ok(readahead == "512", f"rich:{tag} reads ahead 512 KiB, not the kernel's 128 KiB",
                 f"read_ahead_kb is {readahead}")
        got = snapshot(m.dir)
        t.tap.ok(got == want, f"rich:{tag} equals the skopeo+umoci unpack, entry by entry", diff_snapshots(want, got))
        m.umount()
        t.tap.ok(not is_mounted(m.dir), f"imgfs umount unmounts rich:{tag}")


@suite.case
def progress_on_terminal(t):
    """On a terminal, a first mount shows how far each layer has streamed."""
    reg, work = t.reg, t.work
    tty_mnt = os.path.join(work, "mnt-tty")
    os.makedirs(tty_mnt)
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(IMGFS, [IMGFS, "mount", "--cache", os.path.join(work, "cache-tty"), f"{reg.host}/test/rich:gzip",
                         tty_mnt])
    shown = b""
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        shown += data
    os.waitpid(pid, 0)
    os.close(fd)
    layers = json.loads(reg._request("GET", "/v2/test/rich/manifests/gzip", headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json"})[2])["layers"]
    t.tap.ok(all(shown.count(f"\rimgfs: fetching {d['digest'][:19]} 100%".encode()) == 1 for d in layers),
             "on a terminal a progress line per layer, ending once at 100%", shown[-400:])
    run([IMGFS, "umount", tty_mnt])


@suite.case
def inherited_descriptors_closed(t):
    """A daemon started from a shell keeps nothing its caller had open: a
    lock taken around imgfs mount is free once the command returns."""
    reg, work = t.reg, t.work
    lock, mnt = os.path.join(work, "lock"), os.path.join(work, "mnt-lock")
    os.makedirs(mnt)
    r = run(["flock", lock, IMGFS, "mount", "--cache", os.path.join(work, "cache"), f"{reg.host}/test/rich:gzip",
             mnt])
    if not t.tap.ok(r.returncode == 0 and is_mounted(mnt), "mount under flock", r.stderr):
        return
    free = run(["flock", "-n", lock, "true"])
    pid = os.getxattr(mnt, "user.imgfs.pid").decode()
    kept = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    t.tap.ok(free.returncode == 0 and lock not in kept, "the lock is free while the mount is served", kept)
    run([IMGFS, "umount", mnt])


@suite.case
def spot_checks(t):
    """What the layer rules must produce, independent of umoci."""
    reg, work = t.reg, t.work
    cache = os.path.join(work, "cache-spot")
    for tag in ("mixed", "gzip"):
        Mount(f"{reg.host}/test/rich:{tag}", os.path.join(work, "mnt-spot"), cache).umount()
    m = Mount(f"{reg.host}/test/rich:mixed", os.path.join(work, "mnt-spot"), cache)
    if not t.tap.ok(m.ok, "second mount of rich:mixed (index cache)", m.stderr()):
        return
    d = m.dir
    t.tap.ok(not os.path.exists(f"{d}/gone") and not os.path.exists(f"{d}/gone-file"), "whiteouts hide lower entries")
    t.tap.ok(sorted(os.listdir(f"{d}/opq")) == ["upper"], "opaque directory hides lower children",
             os.listdir(f"{d}/opq"))
    t.tap.ok(os.path.isdir(f"{d}/file-to-dir") and os.path.isfile(f"{d}/dir-to-file"),
             "a later layer replaces a path of another type")
    st = os.stat(f"{d}/etc")
    t.tap.ok(stat.S_IMODE(st.st_mode) == 0o711 and int(st.st_mtime) == 1650000000,
             "directory metadata follows the upper layer")
    a, b = os.stat(f"{d}/usr/hard-a"), os.stat(f"{d}/usr/hard-b")
    t.tap.ok(a.st_ino == b.st_ino and a.st_nlink == 2,
             "hardlinks share an inode; a whiteout of one name lowers st_nlink", (a.st_nlink, b.st_nlink))
    t.tap.ok(os.stat(f"{d}/keep-hard-1").st_nlink == 1, "replacing a hardlinked name unlinks it")
    t.tap.ok(len(os.listdir(f"{d}/usr/share/many")) == 2000, "a 2000-entry directory lists whole")
    with open(f"{d}/usr/big.bin", "rb") as f:
        f.seek(5 << 20)
        chunk = f.read(4096)
    t.tap.ok(chunk == deterministic_bytes(1, 8 << 20)[5 << 20:(5 << 20) + 4096],
             "random read in the middle of an 8 MiB file")
    t.tap.ok(os.readlink(f"{d}/usr/link-abs") == "/etc/hostname", "absolute symlinks are kept verbatim")
    t.tap.ok(os.getxattr(f"{d}/xattr-file", "user.greeting") == b"hello", "xattrs from PAX headers")
    try:
        open(f"{d}/etc/hostname", "w")
        t.tap.ok(False, "writing is refused on a read-only mount")
    except OSError as e:
        t.tap.ok(e.errno in (30,), "writing is refused with EROFS", e)
    sv = os.statvfs(d)
    t.tap.ok(sv.f_files > 2000 and sv.f_blocks > (8 << 20) // 4096, "statfs reports the image's size",
             (sv.f_files, sv.f_blocks))
    idx = os.listdir(os.path.join(cache, "index", "sha256"))
    # 3 layers of rich:mixed, and rich:gzip shares its gzip base: 5 distinct layers.
    t.tap.ok(len([x for x in idx if "." not in x]) == 5, "layer indexes are cached by digest", idx)
    m.umount()


@suite.case
def sparse_and_gnu_names(t):
    """Sparse files (GNU tar's PAX sparse format) read back with their holes."""
    reg, work = t.reg, t.work
    src = os.path.join(work, "sparse-src")
    os.makedirs(src)
    with open(os.path.join(src, "sparse"), "wb") as f:
        for off in (0, 3 << 20, 9 << 20):
            f.seek(off)
            f.write(b"data at %d\n" % off)
        f.truncate(12 << 20)
    tar = subprocess.run(["tar", "--sparse", "--format=pax", "-C", src, "-cf", "-", "."], check=True,
                         stdout=subprocess.PIPE).stdout
    # A second layer in GNU format: long names and link targets in ././@LongLink entries.
    gnu_src = os.path.join(work, "gnu-src")
    long_dir = os.path.join(gnu_src, "g" * 120, "h" * 120)
    os.makedirs(long_dir)
    with open(os.path.join(long_dir, "f" * 150), "wb") as f:
        f.write(b"gnu long name\n")
    os.symlink("t" * 200, os.path.join(gnu_src, "long-target"))
    os.link(os.path.join(long_dir, "f" * 150), os.path.join(gnu_src, "hardlink-to-long"))
    gnu = subprocess.run(["tar", "--format=gnu", "-C", gnu_src, "-cf", "-", "."], check=True,
                         stdout=subprocess.PIPE).stdout
    push_image(reg, "test/sparse", "gzip", [(tar, "gzip"), (gnu, "gzip")])
    reference = skopeo_umoci_unpack(reg, "test/sparse:gzip", work)
    m = Mount(f"{reg.host}/test/sparse:gzip", os.path.join(work, "mnt-sparse"), os.path.join(work, "cache"))
    if t.tap.ok(m.ok, "mount an image with a sparse file", m.stderr()):
        want, got = snapshot(reference, with_mtime_dirs=False), snapshot(m.dir, with_mtime_dirs=False)
        t.tap.ok(got == want and got["sparse"]["size"] == 12 << 20 and len(got) >= 7,
                 "a sparse file and GNU long names read like umoci's unpack", diff_snapshots(want, got))
        m.umount()


@suite.case
def busybox_runs(t):
    """A real binary runs from the mount, and what was decoded is kept, so
    that the next start reads instead of inflating."""
    reg, work = t.reg, t.work
    cache = os.path.join(work, "cache-busybox")
    push_image(reg, "test/busybox", "latest", [(busybox_layer(), "gzip")])
    m = Mount(f"{reg.host}/test/busybox", os.path.join(work, "mnt-busybox"), cache)
    if t.tap.ok(m.ok, "mount busybox", m.stderr()):
        r = run(["chroot", m.dir, "/bin/sh", "-c", "echo hello from $(ls /etc/passwd)"])
        t.tap.ok(r.stdout == b"hello from /etc/passwd\n", "busybox runs from the mount (chroot)", r.stderr)
        m.umount()
    tar = busybox_layer()
    decoded_dir = os.path.join(cache, "decoded", "sha256")
    copies = [n for n in os.listdir(decoded_dir)
              if n.startswith(digest_of(compress(tar, "gzip"))[len("sha256:"):] + "-") and not n.endswith(".ok")]
    good = True
    for name in copies:
        start, length = (int(x) for x in name.split("-")[1:3])
        with open(os.path.join(decoded_dir, name), "rb") as f:
            good = good and f.read() == tar[start:start + length]
    t.tap.ok(copies and good, "the decoded spans read are kept in the cache, equal to the layer's tar", copies)
    if not copies:
        return
    path = os.path.join(decoded_dir, copies[0])
    size = os.path.getsize(path)
    os.truncate(path, size // 2)
    m = Mount(f"{reg.host}/test/busybox", os.path.join(work, "mnt-busybox"), cache)
    r = run(["chroot", m.dir, "/bin/sh", "-c", "echo hello from $(ls /etc/passwd)"]) if m.ok else None
    stderr = m.stderr()
    # Copies are written in the background; imgfs umount waits for them.
    m.umount()
    t.tap.ok(r and r.stdout == b"hello from /etc/passwd\n" and os.path.getsize(path) == size,
             "a damaged decoded copy is not used, and is decoded again", (os.path.getsize(path), size, stderr))
    # The same size, other bytes: its stamp no longer matches.
    with open(path, "r+b") as f:
        f.write(b"\0" * 4096)
    m = Mount(f"{reg.host}/test/busybox", os.path.join(work, "mnt-busybox"), cache)
    r = run(["chroot", m.dir, "/bin/sh", "-c", "echo hello from $(ls /etc/passwd)"]) if m.ok else None
    stderr = m.stderr()
    m.umount()
    with open(path, "rb") as f:
        start, length = (int(x) for x in copies[0].split("-")[1:3])
        again = f.read() == tar[start:start + length]
    t.tap.ok(r and r.stdout == b"hello from /etc/passwd\n" and again,
             "a decoded copy changed in place, at the same size, is not used either", stderr)


@suite.case
def pull_policy(t):
    """What a tag names is asked of the registry always, only once, or never."""
    reg, work = t.reg, t.work
    pull_cache = os.path.join(work, "cache-pull")

    def mount_pull(policy):
        m = Mount(f"{reg.host}/test/pull:v1", os.path.join(work, "mnt-pull"), pull_cache, ["--pull", policy])
        with open(f"{m.dir}/which", "rb") if m.ok else open(os.devnull, "rb") as f:
            text = f.read()
        m.umount()
        return m, text

    m, _ = mount_pull("never")
    t.tap.ok(not m.ok and "--pull never" in m.stderr() and "test/pull:v1" in m.stderr(),
             "--pull never, for a reference this cache never resolved, is a clear error", m.stderr())
    push_image(reg, "test/pull", "v1", [(make_tar([Entry("which", data=b"first\n")]), "gzip")])
    m, text = mount_pull("missing")
    t.tap.ok(text == b"first\n", "--pull missing asks the registry the first time", m.stderr())
    push_image(reg, "test/pull", "v1", [(make_tar([Entry("which", data=b"second\n")]), "gzip")])
    seen = len(reg.access_log())
    m, text = mount_pull("missing")
    t.tap.ok(text == b"first\n" and "/v2/test/pull/" not in reg.access_log()[seen:],
             "then it mounts what this cache resolved, without one request", reg.access_log()[seen:][-800:])
    m, text = mount_pull("never")
    t.tap.ok(text == b"first\n", "--pull never mounts from the cache alone", m.stderr())
    m, text = mount_pull("always")
    t.tap.ok(text == b"second\n", "--pull always (the default) sees the tag moved", m.stderr())
    m, text = mount_pull("missing")
    t.tap.ok(text == b"second\n", "and --pull missing follows what always found", m.stderr())


@suite.case
def multi_platform(t):
    """An OCI index with two platforms."""
    reg, work = t.reg, t.work
    cache = os.path.join(work, "cache")
    amd = push_image(reg, "test/multi", "amd64-only",
                     [(make_tar([Entry("which", data=b"amd64\n")]), "gzip")], arch="amd64")
    arm = push_image(reg, "test/multi", "arm64-only",
                     [(make_tar([Entry("which", data=b"arm64\n")]), "zstd")], arch="arm64")
    index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd[0], "size": amd[1],
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm[0], "size": arm[1],
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]}
    reg.push_manifest("test/multi", "latest", index, MT_OCI_INDEX)
    for platform, expect in (("linux/amd64", b"amd64\n"), ("linux/arm64", b"arm64\n"),
                             ("linux/arm64/v8", b"arm64\n")):
        m = Mount(f"{reg.host}/test/multi", os.path.join(work, "mnt-multi"), cache, ["--platform", platform])
        if t.tap.ok(m.ok, f"mount the index for {platform}", m.stderr()):
            with open(f"{m.dir}/which", "rb") as f:
                t.tap.ok(f.read() == expect, f"{platform} picks its own manifest")
            m.umount()
    m = Mount(f"{reg.host}/test/multi", os.path.join(work, "mnt-multi"), cache, ["--platform", "linux/s390x"])
    t.tap.ok(not m.ok and "no manifest for platform linux/s390x" in m.stderr() and
             "it has linux/amd64, linux/arm64/v8" in m.stderr(),
             "a platform the index lacks is a clear error naming those it has", m.stderr())
    m.umount()
    m = Mount(f"{reg.host}/test/multi:amd64-only", os.path.join(work, "mnt-multi"), cache,
              ["--platform", "linux/arm64"])
    t.tap.ok(not m.ok and "is for linux/amd64" in m.stderr() and "linux/arm64" in m.stderr(),
             "--platform linux/arm64 of an image made for linux/amd64 alone is refused, naming both", m.stderr())
    m.umount()
    m = Mount(f"{reg.host}/test/multi@{amd[0]}", os.path.join(work, "mnt-multi"), cache)
    t.tap.ok(m.ok, "mount by digest", m.stderr())
    m.umount()


run_file(suite)
