#!/usr/bin/env python3
"""Network faults between imgfs and the registry during lazy reads: a single
fault is retried and the read returns the right bytes; a persistent fault
gives EIO for the affected read only, never wrong bytes, and the daemon keeps
serving everything else."""

import errno
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from imgfs_test.faultproxy import MODES, MULTI_MODES, FaultProxy  # noqa: E402
from imgfs_test.cases import Suite, run_file  # noqa: E402
from imgfs_test.harness import (IMGFS, Entry, Mount, Registry, imgfs_stats, make_tar, processes_with,  # noqa: E402
                                push_image, read_no_readahead, run, snapshot,
                                stats_after_prefetch, wait_until)
from imgfs_test.images import deterministic_bytes  # noqa: E402
from imgfs_test.lazy import push_estargz  # noqa: E402

suite = Suite()

CHUNK = 1 << 20
BIG = deterministic_bytes(11, 24 * CHUNK)
ENTRIES = [Entry("big", data=BIG), Entry("small", data=b"small file\n")]
# Small files apart from each other in the blob: a prefetch list of every
# other one makes requests of several ranges (the gaps are larger than the
# 32 KiB that one range would rather take along).
MANY = [Entry("many", "dir"),
        *[Entry(f"many/f{i}", data=deterministic_bytes(100 + i, 3000 if i % 2 == 0 else 40000)) for i in range(40)]]
LISTED = [f"many/f{i}" for i in range(0, 40, 2)]


def read_at(path, chunk_index):
    """Reads one chunk's worth at the start of chunk chunk_index; bytes or errno."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.pread(fd, 4096, chunk_index * CHUNK)
        finally:
            os.close(fd)
    except OSError as e:
        return e.errno


os.environ["IMGFS_STALL_SECONDS"] = "2"


@suite.setup
def setup(t):
    t.reg = Registry(t.work)
    t.on_exit(t.reg.stop)
    t.proxy = FaultProxy(t.reg.host, stall_seconds=4)
    t.on_exit(t.proxy.stop)
    push_estargz(t.reg, "faults/app", "v1", [ENTRIES], chunk_size=CHUNK)
    push_estargz(t.reg, "faults/many", "v1", [MANY])
    push_image(t.reg, "faults/plain", "v1", [(make_tar(MANY[:10]), "gzip"), (make_tar(ENTRIES), "zstd")])


@suite.case
def several_ranges(t):
    proxy = t.proxy
    listing = os.path.join(t.work, "listed")
    with open(listing, "w") as f:
        f.write("".join(f"/{p}\n" for p in LISTED))
    for policy in (None, *MULTI_MODES):
        mnt = os.path.join(t.work, f"mnt-multi-{policy}")
        proxy.faults, proxy.always, proxy.multi, proxy.multi_requests = [], None, policy, 0
        m = Mount(f"{proxy.host}/faults/many:v1", mnt, os.path.join(t.work, f"cache-multi-{policy}"),
                  ["--prefetch=landmark", "--prefetch-list", listing])
        if not t.tap.ok(m.ok, f"several ranges, {policy or 'multipart'}: mount", m.stderr()):
            continue
        s = stats_after_prefetch(mnt)
        good = [p for p in LISTED if open(os.path.join(mnt, p), "rb").read() == MANY[1 + int(p[6:])].data]
        after = imgfs_stats(mnt)
        if policy is None:
            # Besides the footer and the TOC: at most one request per prefetch connection.
            t.tap.ok(len(good) == len(LISTED) and s["prefetch_done"] and s["range_requests"] <= 2 + 4 and
                     proxy.multi_requests >= 1 and after["range_requests"] == s["range_requests"],
                     f"{len(LISTED)} listed files apart from each other arrive in requests of several ranges",
                     (len(good), s, proxy.multi_requests))
        else:
            t.tap.ok(len(good) == len(LISTED) and s["prefetch_done"] and 1 <= proxy.multi_requests <= 4,
                     f"several ranges, {policy}: every listed file reads right", (len(good), s, proxy.multi_requests))
        m.umount()
    proxy.multi = None


def fault_case(mode):
    def case(t):
        proxy = t.proxy
        mnt = os.path.join(t.work, f"mnt-{mode}")
        proxy.faults, proxy.always, proxy.multi = [], None, None
        m = Mount(f"{proxy.host}/faults/app:v1", mnt, os.path.join(t.work, f"cache-{mode}"), ["--prefetch=none"])
        if not t.tap.ok(m.ok, f"{mode}: mount through the fault proxy", m.stderr()):
            return
        big = os.path.join(mnt, "big")
        proxy.faults = [mode]
        got = read_at(big, 3)
        t.tap.ok(got == BIG[3 * CHUNK:3 * CHUNK + 4096] and proxy.injected[-1:] == [mode],
                 f"{mode}: one fault is retried and the read returns the right bytes",
                 got if isinstance(got, int) else len(got))
        proxy.always = mode
        got = read_at(big, 10)
        t.tap.ok(got == errno.EIO, f"{mode}: a fault that persists gives EIO, not wrong bytes", got)
        proxy.always = None
        t.tap.ok(open(os.path.join(mnt, "small"), "rb").read() == b"small file\n",
                 f"{mode}: the daemon keeps serving other files")
        got = read_at(big, 10)
        t.tap.ok(got == BIG[10 * CHUNK:10 * CHUNK + 4096], f"{mode}: the failed chunk reads once the fault is gone",
                 got if isinstance(got, int) else len(got))
        m.umount()
    case.__name__ = f"fault_{mode}"
    return case


for fault in MODES:
    suite.case(fault_case(fault))


@suite.case
def fetch_timeout(t):
    """A registry that keeps sending a byte now and then is given up after --fetch-timeout, retries included."""
    proxy = t.proxy
    mnt = os.path.join(t.work, "mnt-fetch-timeout")
    proxy.faults, proxy.always, proxy.multi = [], None, None
    m = Mount(f"{proxy.host}/faults/app:v1", mnt, os.path.join(t.work, "cache-fetch-timeout"),
              ["--prefetch=none", "--fetch-timeout", "3"])
    if not t.tap.ok(m.ok, "mount with --fetch-timeout 3", m.stderr()):
        return
    proxy.always = "trickle"
    start = time.monotonic()
    got = read_at(os.path.join(mnt, "big"), 6)
    took = time.monotonic() - start
    proxy.always = None
    # The read's batch and then each of its chunks alone get 3 s each; the
    # trickle itself would take days.
    t.tap.ok(got == errno.EIO and 2.5 < took < 25, f"a trickling answer fails the read after {took:.1f} s", got)
    got = read_at(os.path.join(mnt, "big"), 6)
    t.tap.ok(got == BIG[6 * CHUNK:6 * CHUNK + 4096], "the same read works once the registry answers",
             got if isinstance(got, int) else len(got))
    m.umount()


@suite.case
def retry_after_on_503(t):
    """A 503 with Retry-After is retried after the time the registry asks for, not before."""
    proxy = t.proxy
    mnt = os.path.join(t.work, "mnt-retry-after")
    proxy.faults, proxy.always, proxy.multi = [], None, None
    m = Mount(f"{proxy.host}/faults/app:v1", mnt, os.path.join(t.work, "cache-retry-after"), ["--prefetch=none"])
    if not t.tap.ok(m.ok, "mount through the fault proxy", m.stderr()):
        return
    proxy.faults = ["503-retry-after-2"]
    start = time.monotonic()
    got = read_at(os.path.join(mnt, "big"), 5)
    took = time.monotonic() - start
    t.tap.ok(got == BIG[5 * CHUNK:5 * CHUNK + 4096] and took >= 1.9,
             f"the read waited {took:.1f} s (Retry-After: 2) and returned the right bytes",
             got if isinstance(got, int) else len(got))
    m.umount()


@suite.case
def stalled_read_holds_up_nothing(t):
    """On-demand reads use a connection each."""
    proxy = t.proxy
    mnt = os.path.join(t.work, "mnt-parallel")
    proxy.faults, proxy.always, proxy.multi = [], None, None
    m = Mount(f"{proxy.host}/faults/app:v1", mnt, os.path.join(t.work, "cache-parallel"), ["--prefetch=none"])
    if not t.tap.ok(m.ok, "parallel: mount through the fault proxy", m.stderr()):
        return
    stalled = {}
    injected = len(proxy.injected)
    proxy.faults = ["stall"]
    reader = threading.Thread(target=lambda: stalled.update(got=read_at(os.path.join(mnt, "big"), 7)))
    reader.start()
    wait_until(lambda: len(proxy.injected) != injected, 10)
    start = time.monotonic()
    small = open(os.path.join(mnt, "small"), "rb").read()
    took = time.monotonic() - start
    t.tap.ok(small == b"small file\n" and took < 1.5 and reader.is_alive(),
             "another file reads while a read of the big one stalls", (small, took))
    reader.join()
    t.tap.ok(stalled.get("got") == BIG[7 * CHUNK:7 * CHUNK + 4096], "and the stalled read is retried",
             stalled.get("got") if isinstance(stalled.get("got"), int) else None)
    m.umount()


@suite.case
def copy_up_holds_up_nothing(t):
    """A copy-up of a large lazy file through a stalled registry leaves the
    rest of the writable mount working."""
    proxy = t.proxy
    mnt = os.path.join(t.work, "mnt-copy-up")
    proxy.faults, proxy.always, proxy.multi = [], None, None
    m = Mount(f"{proxy.host}/faults/app:v1", mnt, os.path.join(t.work, "cache-copy-up"),
              ["--prefetch=none", "--upper", os.path.join(t.work, "upper-copy-up")])
    if not t.tap.ok(m.ok, "writable mount through the fault proxy", m.stderr()):
        return
    injected = len(proxy.injected)
    proxy.faults = ["stall"]
    done = {}

    def write_big():
        with open(os.path.join(mnt, "big"), "r+b") as f:  # copies the 24 MiB up, fetching it
            f.write(b"X")
        done["at"] = time.monotonic()
    writer = threading.Thread(target=write_big)
    writer.start()
    wait_until(lambda: len(proxy.injected) != injected, 10)
    start = time.monotonic()
    listing = sorted(os.listdir(mnt))
    small = open(os.path.join(mnt, "small"), "rb").read()
    with open(os.path.join(mnt, "new-file"), "wb") as f:
        f.write(b"made meanwhile")
    took = time.monotonic() - start
    t.tap.ok(listing == ["big", "small"] and small == b"small file\n" and took < 1 and writer.is_alive(),
             f"while the copy-up waits for the registry, ls, reads and a new file take {took:.2f} s", listing)
    writer.join()
    with open(os.path.join(mnt, "big"), "rb") as f:
        got = f.read()
    t.tap.ok(got == b"X" + BIG[1:], "the copied-up file holds the image's bytes and the write")
    m.umount()


@suite.case
def first_answer_of_every_blob_corrupt(t):
    """A broken CDN node: each blob's first answer has a flipped byte; the tree is exact anyway."""
    proxy = t.proxy
    proxy.faults, proxy.always, proxy.multi = [], None, None
    proxy.corrupt_first_of_each, proxy.corrupted_blobs = True, set()
    t.on_exit(lambda: setattr(proxy, "corrupt_first_of_each", False))
    for repo, files in (("faults/app", ENTRIES), ("faults/plain", MANY[:10] + ENTRIES)):
        mnt = os.path.join(t.work, "mnt-corrupt")
        before = len(proxy.corrupted_blobs)
        m = Mount(f"{proxy.host}/{repo}:v1", mnt, os.path.join(t.work, "cache-corrupt-" + repo.split("/")[1]))
        if not t.tap.ok(m.ok, f"{repo}: mounts though the first answer for each blob is corrupt", m.stderr()):
            continue
        want = {e.path: e.data for e in files if e.kind == "file"}
        got = {p: open(os.path.join(mnt, p), "rb").read() for p in want}
        names = sorted(snapshot(mnt))
        t.tap.ok(got == want and names == sorted(["."] + [e.path for e in files]),
                 f"{repo}: every file and every byte is the image's", names)
        t.tap.ok(len(proxy.corrupted_blobs) - before >= 2, f"{repo}: the corruption was injected",
                 proxy.corrupted_blobs)
        m.umount()


@suite.case
def read_not_behind_background(t):
    """A read whose bytes a background request has claimed, when that
    request is late (the proxy holds it 5 s), fetches them itself: counted
    by requests, it returns while the background request is still held."""
    proxy = t.proxy
    proxy.faults, proxy.always, proxy.multi = [], None, None
    proxy.ranges, proxy.held_now = [], 0
    proxy.hold_large = (2 * CHUNK, 5)
    mnt = os.path.join(t.work, "mnt-behind")
    m = Mount(f"{proxy.host}/faults/app:v1", mnt, os.path.join(t.work, "cache-behind"), ["--prefetch=all"])
    try:
        if not t.tap.ok(m.ok, "mount with the background fetch", m.stderr()):
            return
        wait_until(lambda: proxy.held_now, 10)
        small_before = sum(1 for _, held in proxy.ranges if not held)
        got = read_at(os.path.join(mnt, "big"), 2)
        still_held = proxy.held_now
        small_after = sum(1 for _, held in proxy.ranges if not held)
        s = imgfs_stats(mnt)
        t.tap.ok(got == BIG[2 * CHUNK:2 * CHUNK + 4096] and still_held >= 1 and small_after > small_before and
                 s["reads_ahead_of_prefetch"] >= 1,
                 "a read in the range of a late background request makes its own request and returns first",
                 (got if isinstance(got, int) else len(got), still_held, small_before, small_after, s))
    finally:
        proxy.hold_large = None
        m.umount()


def healthy_proxy(t):
    """The proxy with no fault left from an earlier case."""
    proxy = t.proxy
    proxy.faults, proxy.always, proxy.multi, proxy.hold_large, proxy.hold_whole = [], None, None, None, None
    proxy.corrupt_first_of_each = proxy.corrupt_all_blobs = False
    proxy.held_now = 0
    return proxy


@suite.case
def read_not_behind_read_ahead(t):
    """A read that must fetch takes the files after it in the same request;
    it returns once its own bytes are in, and so does a read of a file that
    came early in that request: counted by requests, both return while the
    proxy still holds the request's tail."""
    proxy = healthy_proxy(t)
    mnt = os.path.join(t.work, "mnt-read-ahead")
    m = Mount(f"{proxy.host}/faults/many:v1", mnt, os.path.join(t.work, "cache-read-ahead"), ["--prefetch=none"])
    try:
        if not t.tap.ok(m.ok, "mount an image of small files", m.stderr()):
            return
        proxy.hold_tail = (45000, 5)
        first = open(os.path.join(mnt, "many/f0"), "rb").read()
        held_after_first = proxy.held_now
        second = open(os.path.join(mnt, "many/f1"), "rb").read()
        held_after_second = proxy.held_now
        t.tap.ok(first == MANY[1].data and proxy.hold_tail is None and held_after_first == 1,
                 "the read that fetched returns before its read-ahead has all come", held_after_first)
        t.tap.ok(second == MANY[2].data and held_after_second == 1,
                 "a read of the next file, which came early in that request, returns too", held_after_second)
    finally:
        proxy.hold_tail = None
        m.umount()


@suite.case
def plain_layers_fetched_at_once(t):
    """The layers of an image with no index anywhere are fetched whole all
    at once, each on a connection of its own: counted by the proxy, which
    holds the tail of every whole blob for 2 s, both layers' answers are
    held at the same time (one after the other before).  The tree is exact."""
    proxy = healthy_proxy(t)
    proxy.hold_whole, proxy.whole_held_most = (4096, 2), 0
    mnt = os.path.join(t.work, "mnt-at-once")
    m = Mount(f"{proxy.host}/faults/plain:v1", mnt, os.path.join(t.work, "cache-at-once"))
    try:
        most = proxy.whole_held_most
        if not t.tap.ok(m.ok, "mount the plain image", m.stderr()):
            return
        want = {e.path: e.data for e in MANY[:10] + ENTRIES if e.kind == "file"}
        got = {p: open(os.path.join(mnt, p), "rb").read() for p in want}
        s = imgfs_stats(mnt)
        t.tap.ok(most == 2 and s["layers_fetched_whole"] == 2 and got == want,
                 "both layers streamed at once, and every file reads the image's bytes",
                 (most, s["layers_fetched_whole"], sorted(p for p in want if got[p] != want[p])))
    finally:
        proxy.hold_whole = None
        m.umount()


@suite.case
def whole_blob_resumed(t):
    """A whole layer whose answer breaks off halfway is continued from
    where it stopped (a Range request from that byte), not fetched again:
    the proxy sends the blob's bytes once, and the tree is exact."""
    proxy = healthy_proxy(t)
    big = 20 << 20
    proxy.cut_whole_once, proxy.blob_ranges, proxy.blob_bytes_sent = big, [], 0
    mnt = os.path.join(t.work, "mnt-resumed")
    m = Mount(f"{proxy.host}/faults/plain:v1", mnt, os.path.join(t.work, "cache-resumed"))
    try:
        cut, ranges, sent = proxy.cut_whole_once, list(proxy.blob_ranges), proxy.blob_bytes_sent
        if not t.tap.ok(m.ok, "mount the plain image though its large layer broke off halfway", m.stderr()):
            return
        want = {e.path: e.data for e in MANY[:10] + ENTRIES if e.kind == "file"}
        got = {p: open(os.path.join(mnt, p), "rb").read() for p in want}
        size = sum(imgfs_stats(mnt)[k] for k in ("bytes_fetched_whole",))
        resumed = [r for r in ranges if r and r.startswith("bytes=") and r.endswith("-")]
        t.tap.ok(cut is None and len(resumed) == 1 and int(resumed[0][6:-1]) > big // 2 and sent <= size + 4096
                 and got == want,
                 "the second request asks for the rest only; every byte crossed once; every file reads right",
                 (cut, ranges, sent, size, sorted(p for p in want if got[p] != want[p])))
    finally:
        proxy.cut_whole_once = None
        m.umount()


@suite.case
def failed_layer_stops_the_others(t):
    """A plain layer that cannot be fetched (the registry lost it) fails the
    mount at once, naming it: the layer below it, streaming at the same time
    and held by the proxy for 25 s, is given up, not waited for (one after
    the other, the mount failed only once that one had come)."""
    proxy = healthy_proxy(t)
    push_image(t.reg, "faults/lost", "v1", [(make_tar(ENTRIES), "zstd"), (make_tar(MANY[:10]), "gzip")])
    manifest = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"http://{t.reg.host}/v2/faults/lost/manifests/v1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})).read())
    big, small = manifest["layers"]
    proxy.hold_whole, proxy.missing_blobs = (4096, 25), {small["digest"]}
    mnt = os.path.join(t.work, "mnt-lost")
    start = time.monotonic()
    m = Mount(f"{proxy.host}/faults/lost:v1", mnt, os.path.join(t.work, "cache-lost"))
    took = time.monotonic() - start
    try:
        t.tap.ok(not m.ok and small["digest"] in m.stderr() and took < 10,
                 "the mount fails within seconds, naming the lost layer, not after the held one",
                 (m.ok, took, m.stderr()[-400:]))
    finally:
        proxy.hold_whole, proxy.missing_blobs = None, set()
        m.umount()


@suite.case
def umount_during_fetch(t):
    """imgfs umount while a read-ahead request hangs on the link: the daemon
    gives the request up and leaves at once, not when the fetch times out."""
    proxy = healthy_proxy(t)
    # The read-ahead of a/small takes b/big, the next chunk of the blob, in
    # the same request; in a directory of its own b/big is no guess of a/'s.
    # With the files of one directory this failed now and then, and it did
    # once with this image too (see the wait below): why is not known.
    # b/big stays within the 128 KiB a read-ahead takes of other files.
    small, big = deterministic_bytes(31, 3000), deterministic_bytes(32, 100000)
    layer = [Entry("a", "dir"), Entry("a/small", data=small), Entry("b", "dir"), Entry("b/big", data=big)]
    push_estargz(t.reg, "faults/held", "v1", [layer])
    mnt = os.path.join(t.work, "mnt-umount-held")
    m = Mount(f"{proxy.host}/faults/held:v1", mnt, os.path.join(t.work, "cache-umount-held"), ["--prefetch=none"])
    try:
        if not t.tap.ok(m.ok, "mount an image of two files", m.stderr()):
            return
        proxy.hold_tail, proxy.hold_every_tail = (45000, 25), True
        first = open(os.path.join(mnt, "a/small"), "rb").read()
        # The read-ahead usually comes in the read's own request, whose tail
        # is held before the read returns; under a sanitizer in CI it once
        # came in a request of its own, after the read.
        wait_until(lambda: proxy.held_now, 10)
        held = proxy.held_now
        start = time.monotonic()
        r = run([IMGFS, "umount", mnt])
        took = time.monotonic() - start
        left = processes_with(mnt)
        t.tap.ok(first == small and held >= 1 and r.returncode == 0 and took < 5 and left == [],
                 "umount returns in seconds, the daemon gone, while the read-ahead is held for 25 s",
                 (held, r, took, left))
        m.ok = r.returncode != 0
    finally:
        proxy.hold_tail, proxy.hold_every_tail = None, False
        m.umount()


@suite.case
def indexed_interval_in_one_request(t):
    """A plain gzip layer read through its index: a read decodes the stream
    from a checkpoint to the next, and those bytes come in one request,
    decoded as they arrive; a request cut short midway still gives the
    right bytes."""
    proxy = healthy_proxy(t)
    push_image(t.reg, "faults/indexed", "v1", [(make_tar(ENTRIES), "gzip")])
    pushed = subprocess.run([IMGFS, "index", "push", "--cache", os.path.join(t.work, "cache-index-push"),
                             f"{t.reg.host}/faults/indexed:v1"], capture_output=True)
    if not t.tap.ok(pushed.returncode == 0, "imgfs index push of a plain gzip image", pushed.stderr):
        return
    mnt = os.path.join(t.work, "mnt-indexed")
    m = Mount(f"{proxy.host}/faults/indexed:v1", mnt, os.path.join(t.work, "cache-indexed"), ["--prefetch=none"])
    try:
        if not t.tap.ok(m.ok and imgfs_stats(mnt)["layers_fetched_whole"] == 0, "mount it lazily", m.stderr()):
            return
        # At 4 KiB: a first read at a file's start would also ask for the
        # rest of the file (test_index: file_read_on_after_its_head).
        got = read_no_readahead(os.path.join(mnt, "big"), 4096)
        s = imgfs_stats(mnt)
        t.tap.ok(got == BIG[4096:8192] and s["range_requests"] == 1 and s["bytes_fetched_ranges"] >= 256 << 10,
                 "the first read's stream to the next checkpoint (256 KiB of incompressible tar) came in one"
                 " request", s)
        proxy.faults = ["truncate"]
        got = read_no_readahead(os.path.join(mnt, "big"), 10 * CHUNK)
        t.tap.ok(got == BIG[10 * CHUNK:10 * CHUNK + 4096] and proxy.injected[-1:] == ["truncate"],
                 "a request cut short midway: the read still returns the right bytes", (proxy.injected, s))
    finally:
        proxy.faults = []
        m.umount()


run_file(suite)
