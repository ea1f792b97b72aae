#!/usr/bin/env python3
"""Lazy eStargz layers: the tree from the TOC alone, file bytes fetched a
chunk at a time with Range requests, each chunk verified."""

import errno
import json
import os
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from imgfs_test import estargz  # noqa: E402
from imgfs_test.elf import ld_so_cache, shared_object  # noqa: E402
from imgfs_test.cases import Suite, run_file  # noqa: E402
from imgfs_test.faultproxy import FaultProxy  # noqa: E402
from imgfs_test.harness import (IMGFS, Entry, Mount, Registry, diff_snapshots, imgfs_stats, is_mounted,  # noqa: E402
                                make_tar, push_image, read_no_readahead, skopeo_copy, skopeo_umoci_unpack, snapshot,
                                stats_after_prefetch)
from imgfs_test.images import deterministic_bytes, python_package_tree  # noqa: E402
from imgfs_test.lazy import push_estargz  # noqa: E402

suite = Suite()

BIG = deterministic_bytes(7, 40 << 20)
LOWER = [Entry("etc", "dir"), Entry("etc/os-release", data=b"NAME=lazy\n"),
         Entry("big", "dir"), Entry("big/blob.bin", data=BIG, mode=0o600, uid=1000, gid=100),
         Entry("small.txt", data=b"just a few bytes\n"),
         Entry("many", "dir"), *[Entry(f"many/f{i}", data=b"%d\n" % i) for i in range(300)],
         Entry("link", "symlink", link="/etc/os-release", mode=0o777),
         Entry("hard", "hardlink", link="small.txt"),
         Entry("xattr", data=b"x", xattrs={"user.k": "v"}),
         Entry("fifo", "fifo"), Entry("null", "chr", dev=(1, 3), mode=0o666),
         Entry("gone", data=b"to be deleted")]
UPPER = [Entry(".wh.gone", data=b""), Entry("etc", "dir", mode=0o700),
         Entry("etc/os-release", data=b"NAME=lazy upper\n")]


def blob_bytes_served(reg, digest):
    """Bytes the registry sent for GETs of one blob, from its access log."""
    total = 0
    for line in reg.access_log().splitlines():
        m = re.search(r'"GET [^"]*/blobs/' + re.escape(digest) + r' HTTP/[0-9.]+" (\d+) (\d+)', line)
        if m:
            total += int(m.group(2))
    return total


TOP = sorted(["etc", "big", "small.txt", "many", "link", "hard", "xattr", "fifo", "null"])


def read(path):
    with open(path, "rb") as f:
        return f.read()


@suite.setup
def setup(t):
    t.reg = Registry(t.work)
    t.on_exit(t.reg.stop)
    t.big_layer = push_estargz(t.reg, "lazy/app", "v1", [LOWER, UPPER])[0]
    t.app = f"{t.reg.host}/lazy/app:v1"
    t.mnt = os.path.join(t.work, "mnt")
    t.cache_of = lambda name: os.path.join(t.work, f"cache-{name}")


@suite.case
def mount_fetches_only_the_toc(t):
    reg, mnt, big_layer = t.reg, t.mnt, t.big_layer
    m = Mount(t.app, mnt, t.cache_of("first"), ["--prefetch=none"])
    if not t.tap.ok(m.ok, "mount an eStargz image", m.stderr()):
        return
    t.tap.ok(blob_bytes_served(reg, big_layer["digest"]) < 64 << 10,
             "mounting fetched only the footer and the TOC of a %d-byte layer" % big_layer["size"],
             blob_bytes_served(reg, big_layer["digest"]))
    t.tap.ok(sorted(os.listdir(mnt)) == TOP, "the TOC and the landmark are not shown; the whiteout applies",
             os.listdir(mnt))
    t.tap.ok(read(os.path.join(mnt, "small.txt")) == b"just a few bytes\n", "read a small file")
    served = blob_bytes_served(reg, big_layer["digest"])
    t.tap.ok(served < 128 << 10, f"reading it fetched {served} bytes of a {big_layer['size']}-byte layer")
    s = imgfs_stats(mnt)
    t.tap.ok(s["bytes_fetched_whole"] == 0 and 0 < s["bytes_fetched_ranges"] < 128 << 10,
             "imgfs stats agrees: ranges only, and few bytes", s)
    with open(os.path.join(mnt, "big/blob.bin"), "rb") as f:
        f.seek(25 << 20)
        t.tap.ok(f.read(1 << 20) == BIG[25 << 20:26 << 20], "a read in the middle of a 40 MiB file")
    s2 = imgfs_stats(mnt)
    t.tap.ok(s2["bytes_fetched_ranges"] - s["bytes_fetched_ranges"] < 9 << 20,
             "it fetched the chunks it needed, not the file", s2)
    t.tap.ok(read(os.path.join(mnt, "etc/os-release")) == b"NAME=lazy upper\n", "the upper layer's file wins")
    m.umount()


@suite.case
def tree_equals_umoci(t):
    """The whole tree against umoci's unpack of the same blobs (a valid gzip stream)."""
    mnt, cache = t.mnt, t.cache_of("tree")
    reference = skopeo_umoci_unpack(t.reg, "lazy/app:v1", t.work)
    root_times = os.stat(reference)
    for name in (estargz.TOC_NAME, ".no.prefetch.landmark"):
        os.unlink(os.path.join(reference, name))
    os.utime(reference, ns=(root_times.st_atime_ns, root_times.st_mtime_ns))
    m = Mount(t.app, mnt, cache, ["--prefetch=none"])
    if t.tap.ok(m.ok, "mount to read a file", m.stderr()):
        read(os.path.join(mnt, "small.txt"))
        m.umount()
    m = Mount(t.app, mnt, cache)
    if t.tap.ok(m.ok, "mount again on the same cache", m.stderr()):
        want, got = snapshot(reference), snapshot(mnt)
        t.tap.ok(got == want, "the lazy tree equals the skopeo+umoci unpack", diff_snapshots(want, got))
        s = imgfs_stats(mnt)
        t.tap.ok(s["cache_hits"] > 0, "chunks fetched by the first mount come from the cache", s)
        m.umount()


@suite.case
def damaged_cached_chunk(t):
    """A cached chunk damaged on disk is hashed on first use, dropped and fetched again."""
    mnt, cache = t.mnt, t.cache_of("damaged")
    m = Mount(t.app, mnt, cache, ["--prefetch=none"])
    if t.tap.ok(m.ok, "mount to cache a chunk", m.stderr()):
        read(os.path.join(mnt, "small.txt"))
        m.umount()
    chunk_dir = os.path.join(cache, "chunks", "sha256")
    packs = [p for p in os.listdir(chunk_dir) if p.endswith(".pack")]
    t.tap.ok(len(packs) == 2, "the chunks of each eStargz layer are kept in one file", packs)
    damaged = False
    for name in packs:
        with open(os.path.join(chunk_dir, name), "r+b") as f:
            at = f.read().find(b"just a few bytes\n")
            if at >= 0:
                f.seek(at)
                f.write(b"J")
                damaged = True
    t.tap.ok(damaged, "small.txt's chunk is in a pack")
    m = Mount(t.app, mnt, cache, ["--prefetch=none"])
    if t.tap.ok(m.ok, "mount over a cache with a damaged chunk", m.stderr()):
        t.tap.ok(read(os.path.join(mnt, "small.txt")) == b"just a few bytes\n",
                 "the damaged cached chunk is never served")
        t.tap.ok(imgfs_stats(mnt)["range_requests"] >= 1, "it was fetched again", imgfs_stats(mnt))
        m.umount()


@suite.case
def saved_toc(t):
    """The parsed TOC is saved: a later mount neither fetches nor parses it."""
    mnt, cache = t.mnt, t.cache_of("saved-toc")
    Mount(t.app, mnt, cache, ["--prefetch=none"]).umount()
    chunk_dir = os.path.join(cache, "chunks", "sha256")
    tocs = [p for p in os.listdir(chunk_dir) if p.endswith(".toc")]
    t.tap.ok(len(tocs) == 2, "each eStargz layer's parsed TOC is saved in the cache", tocs)
    m = Mount(t.app, mnt, cache, ["--prefetch=none"])
    if t.tap.ok(m.ok, "mount on a cache with the saved TOCs", m.stderr()):
        s = imgfs_stats(mnt)
        t.tap.ok(s["range_requests"] == 0 and sorted(os.listdir(mnt)) == TOP,
                 "the mount asked the registry for no footer and no TOC", s)
        m.umount()
    for name in tocs:
        with open(os.path.join(chunk_dir, name), "r+b") as f:
            f.seek(os.path.getsize(f.name) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x01]))
    m = Mount(t.app, mnt, cache, ["--prefetch=none"])
    if t.tap.ok(m.ok, "mount on a cache with damaged saved TOCs", m.stderr()):
        s = imgfs_stats(mnt)
        t.tap.ok(s["range_requests"] == 4 and sorted(os.listdir(mnt)) == TOP and
                 read(os.path.join(mnt, "etc/os-release")) == b"NAME=lazy upper\n",
                 "a damaged saved TOC reads as absent: footer and TOC are fetched again", s)
        m.umount()


@suite.case
def shared_members(t):
    """Small files that share a gzip member with the tar headers around them (innerOffset)."""
    mnt = t.mnt
    shared = [Entry("s", "dir"), *[Entry(f"s/small{i}", data=deterministic_bytes(200 + i, 100 + 300 * i))
                                   for i in range(10)],
              Entry("s/big", data=deterministic_bytes(300, 1 << 20)), Entry("s/last", data=b"after the big one\n")]
    push_estargz(t.reg, "lazy/shared", "v1", [shared], share_below=4096)
    m = Mount(f"{t.reg.host}/lazy/shared:v1", mnt, t.cache_of("shared"), ["--prefetch=none"])
    if t.tap.ok(m.ok, "mount an eStargz image whose small files share members", m.stderr()):
        wrong = [e.path for e in shared[1:] if read(os.path.join(mnt, e.path)) != e.data]
        t.tap.ok(not wrong and imgfs_stats(mnt)["range_requests"] >= 3,
                 "each file reads right, from inside its member", wrong)
        m.umount()


def settled_stats(mnt, key, seconds=10):
    """imgfs stats once key has stopped growing (background work done)."""
    deadline, last, s = time.monotonic() + seconds, None, imgfs_stats(mnt)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        s = imgfs_stats(mnt)
        if s.get(key) and s.get(key) == last:
            break
        last = s.get(key)
    return s


@suite.case
def neighbours_fetched_ahead(t):
    """A second read of a directory's small files that has to fetch brings
    the directory's other files in the background, on a connection of its
    own: a program reads a package's modules together.  One read does not
    (a program reads one file of many directories), nor do reads of large
    files.  The guess stays in that directory."""
    pkg = [Entry("pkg", "dir"), *[Entry(f"pkg/m{i:02}", data=deterministic_bytes(500 + i, 40000)) for i in range(30)]]
    other = [Entry("other", "dir"),
             *[Entry(f"other/o{i}", data=deterministic_bytes(600 + i, 40000)) for i in range(30)]]
    large = [Entry("large", "dir"),
             *[Entry(f"large/l{i}", data=deterministic_bytes(700 + i, 600000)) for i in range(4)]]
    push_estargz(t.reg, "lazy/dirs", "v1", [pkg + other + large])
    mnt = os.path.join(t.work, "mnt-dirs")
    m = Mount(f"{t.reg.host}/lazy/dirs:v1", mnt, t.cache_of("dirs"), ["--prefetch=none"])
    if not t.tap.ok(m.ok, "mount an image of three directories of 1.2 to 2.4 MB each", m.stderr()):
        return
    try:
        # The read-ahead of a miss (128 KiB of other files) takes the 3
        # files after m00; m29 is past it, and what follows m29 is other/.
        first = read(os.path.join(mnt, "pkg/m00"))
        once = settled_stats(mnt, "range_requests", seconds=2)
        last = read(os.path.join(mnt, "pkg/m29"))
        before = settled_stats(mnt, "bytes_speculated")
        wrong = [e.path for e in pkg[1:] if read(os.path.join(mnt, e.path)) != e.data]
        after = imgfs_stats(mnt)
        t.tap.ok(first == pkg[1].data and once.get("bytes_speculated", 0) == 0,
                 "one read of pkg/ guesses nothing", once)
        t.tap.ok(last == pkg[-1].data and not wrong and before.get("bytes_speculated", 0) > 0 and
                 after["range_requests"] == before["range_requests"],
                 "after a second read of pkg/ that fetched, every file of pkg/ reads right with no request "
                 "of its own", (wrong, before, after))
        t.tap.ok(read(os.path.join(mnt, "other/o29")) == other[-1].data and
                 imgfs_stats(mnt)["range_requests"] > after["range_requests"],
                 "a file of another directory was not guessed: its read fetches", imgfs_stats(mnt))
        guessed = settled_stats(mnt, "bytes_speculated", seconds=2)["bytes_speculated"]
        wrong = [e.path for e in large[1:] if read(os.path.join(mnt, e.path)) != e.data]
        t.tap.ok(not wrong and settled_stats(mnt, "range_requests", seconds=2)["bytes_speculated"] == guessed,
                 "reads of every large file of large/ guess nothing", (wrong, imgfs_stats(mnt)))
    finally:
        m.umount()


@suite.case
def layer_opens_on_manifest_connection(t):
    """A mount waits for the manifest, then for the layer's footer and TOC:
    those go out on the connection the manifest came on, not on one that
    must first be opened (a round trip, two with TLS).  Told by the
    proxy's connections."""
    proxy = FaultProxy(t.reg.host)
    mnt = os.path.join(t.work, "mnt-one-connection")
    m = Mount(f"{proxy.host}/lazy/app:v1", mnt, t.cache_of("one-connection"), ["--prefetch=none"])
    try:
        if not t.tap.ok(m.ok, "mount the two-layer image through a proxy", m.stderr()):
            return
        manifest = [port for port, path, _ in proxy.requests if "/manifests/" in path]
        ports_of_layer = {}
        for port, path, rng in proxy.requests:
            if "/blobs/" in path and rng:
                ports_of_layer.setdefault(path, []).append(port)
        on_manifest = [path for path, ports in ports_of_layer.items()
                       if len(ports) >= 2 and manifest and set(ports) == {manifest[0]}]
        t.tap.ok(len(manifest) == 1 and len(ports_of_layer) == 2 and len(on_manifest) == 1,
                 "one layer's footer and TOC came on the manifest's connection", proxy.requests)
    finally:
        m.umount()
        proxy.stop()


@suite.case
def read_ahead_mostly_of_the_file_read(t):
    """A read that must fetch takes the rest of its own file in the same
    request, up to 512 KiB, but only 128 KiB of the files after it: those
    are mostly not what the program reads next.  Counted by requests."""
    big = deterministic_bytes(800, 600000)
    small = [Entry(f"d/f{i}", data=deterministic_bytes(810 + i, 40000)) for i in range(8)]
    push_estargz(t.reg, "lazy/ahead", "v1", [[Entry("big.bin", data=big), Entry("d", "dir"), *small]],
                 chunk_size=64 << 10)
    mnt = os.path.join(t.work, "mnt-ahead")
    m = Mount(f"{t.reg.host}/lazy/ahead:v1", mnt, t.cache_of("ahead"), ["--prefetch=none"])
    if not t.tap.ok(m.ok, "mount an image of a 600 KB file in 64 KiB chunks and eight 40 KB files", m.stderr()):
        return
    try:
        head = read_no_readahead(os.path.join(mnt, "big.bin"), 0)
        one = settled_stats(mnt, "range_requests", seconds=1)["range_requests"]
        rest = [read_no_readahead(os.path.join(mnt, "big.bin"), off) for off in range(4096, 512 << 10, 64 << 10)]
        after_big = imgfs_stats(mnt)["range_requests"]
        t.tap.ok(head == big[:4096] and rest == [big[off:off + 4096] for off in range(4096, 512 << 10, 64 << 10)] and
                 after_big == one,
                 "a read of big.bin's first 4 KiB brought its first 512 KiB: no request for the rest",
                 (one, after_big))
        first = read(os.path.join(mnt, "d/f0"))
        n_first = settled_stats(mnt, "range_requests", seconds=1)["range_requests"]
        beside = [read(os.path.join(mnt, e.path)) for e in small[1:4]]
        n_beside = imgfs_stats(mnt)["range_requests"]
        further = read(os.path.join(mnt, "d/f4"))
        n_further = imgfs_stats(mnt)["range_requests"]
        t.tap.ok(first == small[0].data and beside == [e.data for e in small[1:4]] and n_beside == n_first,
                 "a read of d/f0 brought the three files after it (120 KB)", (n_first, n_beside))
        t.tap.ok(further == small[4].data and n_further > n_beside,
                 "the fourth file after it was not read ahead: its read fetches", (n_beside, n_further))
    finally:
        m.umount()


@suite.case
def package_fetched_ahead(t):
    """The first module of a Python package read brings the package's
    other modules of its kind (compiled for the same interpreter) and its
    extension modules, in its subpackages too, in the background: an
    interpreter imports a package's subpackages one after another.  Its
    tests, the sources beside compiled modules and directories outside a
    package are not guessed.  Counted by requests."""
    tree = python_package_tree()
    data = {e.path: e.data for e in tree if e.data is not None}
    push_estargz(t.reg, "lazy/package", "v1", [tree])
    mnt = os.path.join(t.work, "mnt-package")
    m = Mount(f"{t.reg.host}/lazy/package:v1", mnt, t.cache_of("package"), ["--prefetch=none"])
    if not t.tap.ok(m.ok, "mount an image with a Python package of a subpackage and tests", m.stderr()):
        return
    try:
        def reads_right(*paths):
            return all(read(os.path.join(mnt, p)) == data[p] for p in paths)
        first = reads_right("lib/app/__pycache__/__init__.cpython-311.pyc")
        before = settled_stats(mnt, "bytes_speculated")
        guessed = reads_right("lib/app/core/__pycache__/a.cpython-311.pyc",
                              "lib/app/core/__pycache__/b.cpython-311.pyc",
                              "lib/app/core/_speed.cpython-311-x86_64-linux-gnu.so")
        after = imgfs_stats(mnt)
        t.tap.ok(first and guessed and before.get("bytes_speculated", 0) > 0 and
                 after["range_requests"] == before["range_requests"],
                 "after the package's first module, its subpackage's compiled and extension modules read right "
                 "with no request of their own", (before, after))
        t.tap.ok(reads_right("lib/app/tests/__pycache__/test_a.cpython-311.pyc") and
                 imgfs_stats(mnt)["range_requests"] > after["range_requests"],
                 "the package's tests were not guessed: their read fetches", imgfs_stats(mnt))
        after = imgfs_stats(mnt)
        t.tap.ok(reads_right("lib/app/core/a.py") and imgfs_stats(mnt)["range_requests"] > after["range_requests"],
                 "a source beside its compiled module was not guessed: its read fetches", imgfs_stats(mnt))
        guessed = settled_stats(mnt, "bytes_speculated", seconds=2)["bytes_speculated"]
        plain = reads_right("lib/plain/__pycache__/p.cpython-311.pyc")
        t.tap.ok(plain and settled_stats(mnt, "range_requests", seconds=2)["bytes_speculated"] == guessed,
                 "the first module of a directory outside any package guesses nothing", imgfs_stats(mnt))
    finally:
        m.umount()


@suite.case
def libraries_fetched_ahead(t):
    """The first read of a program's head brings what the loader reads
    next: the program's dynamic section and the libraries it needs, found
    as the loader finds them (RUNPATH with $ORIGIN through a symlink, the
    image's ld.so.cache, the default directories), and theirs in turn.
    Counted by requests: the loader's reads of them then make none.  The
    guess is no read of the program's: imgfs record does not list them."""
    mib = 1 << 20
    objects = {
        "usr/bin/app": shared_object(3 * mib, 5 * mib // 2, ["libfoo.so.1", "libbar.so.2", "libc.so.6"],
                                     "$ORIGIN/../lib/app", seed=701),
        "usr/lib/app/libfoo.so.1.0": shared_object(2 * mib, 3 * mib // 2, ["libbaz.so.3"], seed=702),
        "usr/lib/x86_64-linux-gnu/libbaz.so.3": shared_object(3 * mib // 2, 5 * mib // 4, seed=703),
        "opt/bar/libbar.so.2": shared_object(3 * mib // 2, 5 * mib // 4, seed=704),
    }
    dynamic_at = {"usr/bin/app": 5 * mib // 2, "usr/lib/app/libfoo.so.1.0": 3 * mib // 2}
    entries = [Entry(d, "dir") for d in ("etc", "opt", "opt/bar", "usr", "usr/bin", "usr/lib", "usr/lib/app",
                                         "usr/lib/x86_64-linux-gnu")]
    entries += [Entry(path, data=data, mode=0o755) for path, data in objects.items()]
    entries += [Entry("usr/lib/app/libfoo.so.1", "symlink", link="libfoo.so.1.0"),
                Entry("etc/ld.so.cache", data=ld_so_cache([("libbar.so.2", "/opt/bar/libbar.so.2")]))]
    push_estargz(t.reg, "lazy/elf", "v1", [entries], chunk_size=mib)
    mnt = os.path.join(t.work, "mnt-elf")
    m = Mount(f"{t.reg.host}/lazy/elf:v1", mnt, t.cache_of("elf"), ["--prefetch=none"])
    if not t.tap.ok(m.ok, "mount an image of a program and its libraries", m.stderr()):
        return
    try:
        fd = os.open(os.path.join(mnt, "usr/bin/app"), os.O_RDONLY)
        head = os.pread(fd, 832, 0)
        os.close(fd)
        deadline = time.monotonic() + 10
        while imgfs_stats(mnt).get("libraries_guessed", 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        before = imgfs_stats(mnt)
        listing = os.path.join(t.work, "elf.list")
        subprocess.run([IMGFS, "record", mnt, listing], check=True)
        recorded = [line.split("\t")[0] for line in open(listing)]
        t.tap.ok(head == objects["usr/bin/app"][:832] and before.get("libraries_guessed") == 3 and
                 recorded == ["/usr/bin/app"],
                 "reading the program's head guessed its three libraries; only the program is recorded",
                 (before.get("libraries_guessed"), recorded))
        wrong = []
        for path, data in objects.items():
            at = dynamic_at.get(path, len(data) * 5 // 6)
            with open(os.path.join(mnt, path), "rb") as f:
                if os.pread(f.fileno(), 832, 0) != data[:832] or os.pread(f.fileno(), 4096, at) != data[at:at + 4096]:
                    wrong.append(path)
        after = imgfs_stats(mnt)
        t.tap.ok(not wrong and after["range_requests"] == before["range_requests"],
                 "the loader's reads of the dynamic section and of each library's head and dynamic "
                 "section make no request", (wrong, before["range_requests"], after["range_requests"]))
    finally:
        m.umount()


def read_at(path, off, size=4096):
    with open(path, "rb") as f:
        return os.pread(f.fileno(), size, off)


def most_held_while(proxy, busy):
    """The most requests the proxy held at once while busy() was true."""
    most = 0
    while busy():
        most = max(most, proxy.held_now)
        time.sleep(0.01)
    return max(most, proxy.held_now)


@suite.case
def object_end_beside_head(t):
    """A large program's or library's end, where its dynamic section lies,
    is fetched beside its head rather than a round trip after it: the
    program's as its first read begins (its bytes cannot say yet that it
    is one), a needed library's as the guess of it goes out.  Counted by
    the requests a proxy holds at once (the old way: one after another)."""
    mib = 1 << 20
    program = shared_object(3 * mib, 5 * mib // 2, ["libq.so.1"], seed=711)
    library = shared_object(3 * mib, 5 * mib // 2, seed=712)
    entries = [Entry(d, "dir") for d in ("usr", "usr/bin", "usr/lib", "usr/lib/x86_64-linux-gnu")]
    entries += [Entry("usr/bin/prog", data=program, mode=0o755),
                Entry("usr/lib/x86_64-linux-gnu/libq.so.1", data=library)]
    push_estargz(t.reg, "lazy/ends", "v1", [entries], chunk_size=mib)
    proxy = FaultProxy(t.reg.host)
    proxy.hold_large = (256 << 10, 2)
    mnt = os.path.join(t.work, "mnt-ends")
    m = Mount(f"{proxy.host}/lazy/ends:v1", mnt, t.cache_of("ends"), ["--prefetch=none"])
    try:
        if not t.tap.ok(m.ok, "mount an image of a large program and library through a proxy", m.stderr()):
            return
        got = {}
        reader = threading.Thread(target=lambda: got.update(head=read_at(os.path.join(mnt, "usr/bin/prog"), 0)))
        reader.start()
        with_program = most_held_while(proxy, reader.is_alive)
        reader.join()
        deadline = time.monotonic() + 20
        with_library = most_held_while(
            proxy, lambda: imgfs_stats(mnt).get("libraries_guessed", 0) < 1 and time.monotonic() < deadline)
        t.tap.ok(got.get("head") == program[:4096] and with_program >= 2,
                 "the program's end was asked for while its head was still on its way", with_program)
        t.tap.ok(with_library >= 2, "the needed library's end went out beside its head", with_library)
        before = imgfs_stats(mnt)["range_requests"]
        right = read_at(os.path.join(mnt, "usr/lib/x86_64-linux-gnu/libq.so.1"), 5 * mib // 2) == \
            library[5 * mib // 2:5 * mib // 2 + 4096]
        t.tap.ok(right and imgfs_stats(mnt)["range_requests"] == before,
                 "the library's dynamic section then reads with no request", imgfs_stats(mnt))
    finally:
        m.umount()
        proxy.stop()


@suite.case
def background_fetch_yields(t):
    """The background fetch waits for reads to pause before it claims chunks: a
    read of a chunk it would fetch first is served on demand at once."""
    mnt = t.mnt
    m = Mount(t.app, mnt, t.cache_of("yield"), ["--prefetch=all"])
    if t.tap.ok(m.ok, "mount with the background fetch of everything", m.stderr()):
        with open(os.path.join(mnt, "big/blob.bin"), "rb") as f:
            first = f.read(4096)
        s = imgfs_stats(mnt)
        t.tap.ok(first == BIG[:4096] and s["bytes_prefetched"] == 0 and s["range_requests"] >= 1,
                 "the first chunk of the layer is read on demand while the background fetch waits", s)
        m.umount()


def read_error(path):
    try:
        return read(path) != BIG and "wrong bytes"
    except OSError as e:
        return e.errno


@suite.case
def corrupt_chunk_in_registry(t):
    """EIO for that chunk; the rest keeps working; nothing unverified is kept."""
    mnt, big_layer = t.mnt, t.big_layer
    path = t.reg.blob_path(big_layer["digest"])
    with open(path, "r+b") as f:
        f.seek(big_layer["size"] // 2)
        byte = f.read(1)
        f.seek(big_layer["size"] // 2)
        f.write(bytes([byte[0] ^ 0x55]))
    try:
        m = Mount(t.app, mnt, t.cache_of("fresh"), ["--prefetch=none"])
        if t.tap.ok(m.ok, "mount with a corrupt chunk in the registry (the TOC is intact)", m.stderr()):
            failed = read_error(os.path.join(mnt, "big/blob.bin"))
            t.tap.ok(failed == errno.EIO, "reading the corrupt chunk fails with EIO, never wrong bytes", failed)
            t.tap.ok(read(os.path.join(mnt, "small.txt")) == b"just a few bytes\n", "other files still read")
            m.umount()
        m = Mount(t.app, mnt, t.cache_of("fresh"), ["--prefetch=none"])
        if t.tap.ok(m.ok, "mount again on the cache of the failed read", m.stderr()):
            failed = read_error(os.path.join(mnt, "big/blob.bin"))
            t.tap.ok(failed == errno.EIO, "a new mount on that cache does not serve it either: EIO again", failed)
            m.umount()
    finally:
        with open(path, "r+b") as f:
            f.seek(big_layer["size"] // 2)
            f.write(byte)


@suite.case
def full_cache_disk(t):
    """A cache disk that fills up: verified chunks are served from memory,
    not EIO."""
    cache = t.cache_of("full-disk")
    os.makedirs(cache)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", cache], check=True)
    try:
        data = deterministic_bytes(12, 10 << 20)
        push_estargz(t.reg, "lazy/bigfile", "v1", [[Entry("ten", data=data)]], chunk_size=1 << 20)
        m = Mount(f"{t.reg.host}/lazy/bigfile:v1", t.mnt, cache, ["--prefetch=none"])
        if t.tap.ok(m.ok, "mount with the cache on a 4 MiB disk", m.stderr()):
            got = read(os.path.join(t.mnt, "ten"))
            s = imgfs_stats(t.mnt)
            t.tap.ok(got == data and s["bytes_in_memory"] > 0,
                     "a 10 MB file reads whole and right, what the disk could not take from memory",
                     (len(got), s))
            m.umount()
    finally:
        subprocess.run(["umount", "-l", cache])


@suite.case
def cache_cap(t):
    """A cap below what one mount reads: packs are evicted under the reader, reads stay right."""
    mnt, cache_cap = t.mnt, t.cache_of("cap")
    m = Mount(t.app, mnt, cache_cap, ["--prefetch=none", "--cache-size", "2M"])
    if t.tap.ok(m.ok, "mount an eStargz image with --cache-size 2M", m.stderr()):
        first = read(os.path.join(mnt, "big/blob.bin"))
        again = read(os.path.join(mnt, "big/blob.bin"))
        used = sum(os.lstat(os.path.join(d, f)).st_blocks * 512
                   for d, _, files in os.walk(cache_cap) for f in files)
        t.tap.ok(first == BIG and again == BIG and used <= 2 << 20,
                 "a 40 MiB file read twice through a 2 MiB cache: right bytes, cache within its cap",
                 (used, first == BIG, again == BIG))
        m.umount()


PREFETCHED = [Entry("boot", "dir"), Entry("boot/first", data=deterministic_bytes(3, 3 << 20)),
              Entry("boot/second", data=b"needed at start\n")]
REST = [Entry("later", data=deterministic_bytes(4, 20 << 20))]


def prefetch_image(t):
    """An image whose landmark comes after boot/: its layer descriptor."""
    return t.once("prefetch image", lambda: push_estargz(t.reg, "lazy/prefetch", "v1", [PREFETCHED + REST],
                                                         landmark_after=len(PREFETCHED))[0])


@suite.case
def prefetch_landmark_then_all(t):
    """The prefetch set first, then everything, each byte once."""
    mnt, layer = t.mnt, prefetch_image(t)
    m = Mount(f"{t.reg.host}/lazy/prefetch:v1", mnt, t.cache_of("landmark"), ["--prefetch=landmark"])
    if t.tap.ok(m.ok, "mount with --prefetch=landmark", m.stderr()):
        s = stats_after_prefetch(mnt)
        t.tap.ok(s["prefetch_done"] == 1 and (3 << 20) <= s["bytes_prefetched"] < (4 << 20),
                 "--prefetch=landmark fetches the files before the landmark only", s)
        m.umount()
    before = blob_bytes_served(t.reg, layer["digest"])
    m = Mount(f"{t.reg.host}/lazy/prefetch:v1", mnt, t.cache_of("all"))
    if t.tap.ok(m.ok, "mount with the default prefetch", m.stderr()):
        # Reads while the background fetch runs must not fetch anything twice.
        with open(os.path.join(mnt, "later"), "rb") as f:
            f.seek(17 << 20)
            t.tap.ok(f.read(4096) == REST[0].data[17 << 20:(17 << 20) + 4096], "an on-demand read during prefetch")
        s = stats_after_prefetch(mnt, 60)
        served = blob_bytes_served(t.reg, layer["digest"]) - before
        t.tap.ok(s["prefetch_done"] == 1 and served <= layer["size"],
                 f"the whole layer arrived in the background, nothing twice: {served} of {layer['size']} bytes", s)
        t.tap.ok(read(os.path.join(mnt, "later")) == REST[0].data, "the prefetched file reads whole")
        t.tap.ok(imgfs_stats(mnt)["bytes_fetched_ranges"] == s["bytes_fetched_ranges"],
                 "reads after the prefetch come from the cache")
        m.umount()


@suite.case
def prefetch_list(t):
    """A recorded list replaces the image's landmarks: fetched first, in the
    order read; the saved TOC keeps the image's own landmarks."""
    mnt = t.mnt
    prefetch_image(t)
    listing = os.path.join(t.work, "prefetch.list")
    with open(listing, "w") as f:
        f.write("/boot/second\n/later\n/not/in/the/image\n")
    m = Mount(f"{t.reg.host}/lazy/prefetch:v1", mnt, t.cache_of("list"),
              ["--prefetch=landmark", "--prefetch-list", listing])
    if t.tap.ok(m.ok, "mount with --prefetch-list", m.stderr()):
        s = stats_after_prefetch(mnt)
        good = (read(os.path.join(mnt, "later")) == REST[0].data and
                read(os.path.join(mnt, "boot", "second")) == b"needed at start\n")
        t.tap.ok(s["prefetch_done"] == 1 and (20 << 20) <= s["bytes_prefetched"] < (21 << 20) and good and
                 imgfs_stats(mnt)["range_requests"] == s["range_requests"],
                 "--prefetch-list fetches the listed files (not boot/first), on several connections", s)
        m.umount()
    m = Mount(f"{t.reg.host}/lazy/prefetch:v1", mnt, t.cache_of("list"), ["--prefetch=landmark"])
    if t.tap.ok(m.ok, "mount again without the list, on the same cache", m.stderr()):
        s = stats_after_prefetch(mnt)
        t.tap.ok(s["range_requests"] >= 1 and (3 << 20) <= s["bytes_prefetched"] < (4 << 20),
                 "the image's landmark (boot/first) is the prefetch set again", s)
        m.umount()


@suite.case
def prefetch_list_parts(t):
    """A list line may name parts of a file, as imgfs record writes for a file
    read in part: only the chunks that hold them are prefetched.  A line whose
    parts do not parse names the whole file."""
    mnt = t.mnt
    prefetch_image(t)
    listing = os.path.join(t.work, "parts.list")
    with open(listing, "w") as f:
        f.write(f"/later\t@{8 << 20}+65536\n/boot/second\t@not+parts\n")
    m = Mount(f"{t.reg.host}/lazy/prefetch:v1", mnt, t.cache_of("parts"),
              ["--prefetch=landmark", "--prefetch-list", listing])
    if not t.tap.ok(m.ok, "mount with a list naming a part of a file", m.stderr()):
        return
    try:
        s = stats_after_prefetch(mnt)
        with open(os.path.join(mnt, "later"), "rb") as f:
            f.seek(8 << 20)
            part = f.read(65536)
        second = read(os.path.join(mnt, "boot", "second"))
        after = imgfs_stats(mnt)
        t.tap.ok(s["prefetch_done"] == 1 and (4 << 20) <= s["bytes_prefetched"] < (5 << 20) and
                 part == REST[0].data[8 << 20:(8 << 20) + 65536] and second == b"needed at start\n" and
                 after["range_requests"] == s["range_requests"],
                 "the 4 MiB chunk of later that holds the part, and boot/second whole, were fetched ahead", s)
        t.tap.ok(read(os.path.join(mnt, "later")) == REST[0].data and
                 imgfs_stats(mnt)["range_requests"] > after["range_requests"],
                 "the rest of later was not: reading it fetches", imgfs_stats(mnt))
    finally:
        m.umount()


@suite.case
def huge_toc(t):
    """A large TOC is saved by the daemon after the mount, and completely before it exits."""
    mnt = t.mnt
    huge = [Entry("d", "dir"), *[Entry(f"d/f{i:05d}", data=b"%d\n" % i) for i in range(20000)]]
    push_estargz(t.reg, "lazy/huge", "v1", [huge])
    cache_huge = t.cache_of("huge")
    m = Mount(f"{t.reg.host}/lazy/huge:v1", mnt, cache_huge, ["--prefetch=none"])
    if t.tap.ok(m.ok, "mount an image with 20,000 files", m.stderr()):
        start = time.monotonic()
        m.umount()
        took = time.monotonic() - start
        saved = os.listdir(os.path.join(cache_huge, "chunks", "sha256"))
        t.tap.ok(took < 10 and not is_mounted(mnt) and sum(p.endswith(".toc") for p in saved) == 1 and
                 not any(".tmp." in p for p in saved),
                 f"unmounted at once ({took:.2f} s), with the TOC saved whole", saved)
    m = Mount(f"{t.reg.host}/lazy/huge:v1", mnt, cache_huge, ["--prefetch=none"])
    if t.tap.ok(m.ok, "mount it again", m.stderr()):
        t.tap.ok(imgfs_stats(mnt)["range_requests"] == 0 and len(os.listdir(os.path.join(mnt, "d"))) == 20000 and
                 read(os.path.join(mnt, "d", "f12345")) == b"12345\n",
                 "from the saved TOC: 20,000 files, and their bytes", imgfs_stats(mnt))
        m.umount()


@suite.case
def zstd_chunked(t):
    """zstd:chunked, as skopeo writes it, against the same image's plain tar mount."""
    reg, work, mnt = t.reg, t.work, t.mnt
    push_image(reg, "lazy/plain", "v1", [(make_tar(LOWER), "none"), (make_tar(UPPER), "none")])
    policy = os.path.join(work, "policy.json")
    with open(policy, "w") as f:
        json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
    r = skopeo_copy(policy, f"docker://{reg.host}/lazy/plain:v1", f"docker://{reg.host}/lazy/zstdchunked:v1",
                    ["--dest-compress-format", "zstd:chunked"])
    t.tap.ok(r.returncode == 0, "skopeo pushes a zstd:chunked copy", r.stderr)
    plain_mnt = os.path.join(work, "mnt-plain")
    p = Mount(f"{reg.host}/lazy/plain:v1", plain_mnt, t.cache_of("plain"))
    m = Mount(f"{reg.host}/lazy/zstdchunked:v1", mnt, t.cache_of("zc"), ["--prefetch=none"])
    if t.tap.ok(m.ok and p.ok, "mount the zstd:chunked image", m.stderr() + p.stderr()):
        s0 = imgfs_stats(m.dir)
        t.tap.ok(read(os.path.join(mnt, "small.txt")) == b"just a few bytes\n", "zstd:chunked: read a small file")
        s1 = imgfs_stats(m.dir)
        t.tap.ok(s0["bytes_fetched_whole"] == 0 and
                 s1["bytes_fetched_ranges"] - s0["bytes_fetched_ranges"] < 256 << 10,
                 "zstd:chunked: reading it fetched a small range, not the 40 MiB layer", s1)
        want, got = snapshot(plain_mnt), snapshot(mnt)
        t.tap.ok(got == want, "zstd:chunked tree equals the plain tar tree", diff_snapshots(want, got))
    m.umount()
    p.umount()


@suite.case
def unusual_toc(t):
    """A TOC split over several gzip members, or whose JSON names its entries
    before its version: a mount parses the TOC as it arrives only in the
    writers' usual shape, and reads any other whole once it is in."""
    for repo, what, shape in (("lazy/splittoc", "whose TOC spans two gzip members", {"toc_members": 2}),
                              ("lazy/entriesfirst", "whose TOC has its entries first", {"entries_first": True})):
        push_estargz(t.reg, repo, "v1", [LOWER[:2]], **shape)
        m = Mount(f"{t.reg.host}/{repo}:v1", t.mnt, t.cache_of(repo), ["--prefetch=none"])
        if t.tap.ok(m.ok, f"mount an eStargz layer {what}", m.stderr()):
            t.tap.ok(read(os.path.join(t.mnt, "etc/os-release")) == b"NAME=lazy\n", "and read from it")
            m.umount()


@suite.case
def bad_toc(t):
    push_estargz(t.reg, "lazy/badtoc", "v1", [LOWER[:2]], bad_toc=True)
    m = Mount(f"{t.reg.host}/lazy/badtoc:v1", t.mnt, t.cache_of("badtoc"))
    t.tap.ok(not m.ok and "TOC digest" in m.stderr() and "does not match" in m.stderr(),
             "a TOC that does not match its annotation is refused", m.stderr())


@suite.case
def refused_toc_fetched_once(t):
    """A TOC that matches its digest but describes what imgfs refuses (an
    entry that leaves the image root) is the publisher's, and fails the
    same way every time: the mount fails naming it after one fetch of the
    TOC, not two (a TOC that fails its digest is fetched again)."""
    push_estargz(t.reg, "lazy/escape", "v1", [[Entry("ok.txt", data=b"fine\n"), Entry("../evil", data=b"bad\n")]])
    proxy = FaultProxy(t.reg.host)
    mnt = os.path.join(t.work, "mnt-escape")
    try:
        m = Mount(f"{proxy.host}/lazy/escape:v1", mnt, t.cache_of("escape"), ["--prefetch=none"])
        ranged = [(path, rng) for _, path, rng in proxy.requests if "/blobs/" in path and rng]
        t.tap.ok(not m.ok and "leaves the image root" in m.stderr() and len(ranged) == 2 and
                 not os.path.exists(os.path.join(t.work, "evil")),
                 "refused naming the entry, after one request for the footer and one for the TOC",
                 (m.stderr(), ranged))
    finally:
        proxy.stop()


run_file(suite)
