#!/usr/bin/env python3
"""imgfs index push and lazy mounts of plain gzip, zstd and tar layers: the
index is stored as an OCI artifact referring to the image (tag fallback on
docker-registry, which has no referrers API), a clean cache then mounts the
unmodified image without fetching a layer whole, reads fetch verified spans
only, and corrupt spans or a corrupt index never yield wrong bytes.  The
last two cases damage the registry's copy of the image: they run last."""

import errno
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from imgfs_test.cases import Suite, run_file  # noqa: E402
from imgfs_test.faultproxy import FaultProxy  # noqa: E402
from imgfs_test.harness import (Entry, Mount, Registry, diff_snapshots, imgfs_stats, make_tar, push_image,  # noqa: E402
                                read_no_readahead, run, skopeo_umoci_unpack, snapshot, stats_after_prefetch, wait_until,
                                IMGFS)
from imgfs_test.images import deterministic_bytes, push_rich, python_package_tree  # noqa: E402
from imgfs_test.shaper import ShapedLink  # noqa: E402

suite = Suite()
BIG = deterministic_bytes(1, 8 << 20)  # usr/big.bin of the rich image


def read(path):
    with open(path, "rb") as f:
        return f.read()


def big_at(mnt, off, n=4096):
    """Whether n bytes at off of the mount's usr/big.bin are the right ones."""
    with open(f"{mnt}/usr/big.bin", "rb") as f:
        f.seek(off)
        return f.read(n) == BIG[off:off + n]


def errno_of_read(path):
    try:
        read(path)
    except OSError as e:
        return e.errno
    return 0


def index_request(t):
    _, _, body = t.reg._request("GET", f"/v2/test/rich/manifests/sha256-{t.manifest_digest.split(':')[1]}",
                                headers={"Accept": "application/vnd.oci.image.index.v1+json"})
    return json.loads(body)["manifests"]


@suite.setup
def setup(t):
    t.reg = Registry(t.work)
    t.on_exit(t.reg.stop)
    t.manifest_digest, _ = push_rich(t.reg, "test/rich", "mixed", ["gzip", "zstd", "none"])
    push_rich(t.reg, "test/rich", "gzip", ["gzip", "gzip", "gzip"], docker=True)
    t.ref = f"{t.reg.host}/test/rich:mixed"
    t.mnt = os.path.join(t.work, "mnt")
    os.makedirs(t.mnt, exist_ok=True)  # a case run alone mounts there too
    t.push = run([IMGFS, "index", "push", "--cache", os.path.join(t.work, "cache-push"), t.ref])
    t.artifact = t.push.stdout.decode().strip()
    _, _, body = t.reg._request("GET", f"/v2/test/rich/manifests/{t.artifact}",
                                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    t.art = json.loads(body) if t.push.returncode == 0 else {"layers": []}
    t.want = lambda: t.once("want", lambda: snapshot(skopeo_umoci_unpack(t.reg, "test/rich:gzip", t.work)))


@suite.case
def index_push(t):
    t.tap.ok(t.push.returncode == 0 and t.artifact.startswith("sha256:"), "imgfs index push prints the artifact digest",
             t.push.stderr.decode())
    listed = index_request(t)
    t.tap.ok([(m["digest"], m.get("artifactType")) for m in listed] == [(t.artifact, "application/vnd.imgfs.index.v1")],
             "without a referrers API the sha256-<hex> tag lists the index", listed)
    kinds = sorted(d["mediaType"].split(".")[-1] for d in t.art["layers"])
    t.tap.ok(t.art.get("subject", {}).get("digest") == t.manifest_digest
             and kinds == ["v1"] * 3 + ["v1"] + ["v2"] * 3 and
             sum(d["mediaType"] == "application/vnd.imgfs.layer-windows.v1" for d in t.art["layers"]) == 1,
             "the artifact refers to the image and has an index and a span table per layer, and the windows"
             " of the gzip layer's checkpoints", (t.art.get("subject"), kinds))
    r = run([IMGFS, "index", "push", "--cache", os.path.join(t.work, "cache-push"), t.ref])
    t.tap.ok(r.returncode == 0 and len(index_request(t)) == 1, "pushing again lists it once")


@suite.case
def clean_cache_mount(t):
    """A clean cache mounts the unmodified image lazily from the first byte."""
    mnt = t.mnt
    m = Mount(t.ref, mnt, os.path.join(t.work, "cache-a"), ["--prefetch", "none"])
    if not t.tap.ok(m.ok, "mount on a clean cache", m.stderr()):
        return
    s = imgfs_stats(mnt)
    t.tap.ok(s["bytes_fetched_whole"] == 0 and s["bytes_fetched_ranges"] == 0 and s["layers_fetched_whole"] == 0
             and "fetched whole" not in m.stderr(), "mounting fetched no layer: only the index", (s, m.stderr()))
    t.tap.ok(read(f"{mnt}/usr/share/many/f1234") == b"file 1234\n", "a small file of the big gzip layer reads")
    s = imgfs_stats(mnt)
    t.tap.ok(0 < s["bytes_fetched_ranges"] <= 5 << 19 and s["range_requests"] <= 4,
             "reading it fetched a few verified spans (to the next checkpoint at most), not the 8.7 MB layer", s)
    t.tap.ok(big_at(mnt, 6 << 20), "a read in the middle of a large file")
    got = snapshot(mnt)
    t.tap.ok(got == t.want(), "the lazily mounted tree equals the unpack, entry by entry (gzip, zstd, tar layers)",
             diff_snapshots(t.want(), got))
    m.umount()


@suite.case
def not_lazy_is_said(t):
    """An image with neither TOCs nor an index is fetched whole, and the mount says so once."""
    ref = f"{t.reg.host}/test/rich:gzip"
    m = Mount(ref, t.mnt, os.path.join(t.work, "cache-whole"), ["--prefetch", "none"])
    if not t.tap.ok(m.ok, "mount an image without TOCs or index", m.stderr()):
        return
    s = imgfs_stats(t.mnt)
    m.umount()
    t.tap.ok(m.stderr().count("fetched whole") == 1 and "3 of 3 layers" in m.stderr()
             and f"imgfs index push {ref}" in m.stderr(),
             "one line says which layers were fetched whole and how to make them lazy", m.stderr())
    t.tap.ok(s["layers_fetched_whole"] == 3 and s["bytes_fetched_whole"] > 0, "imgfs stats counts them", s)


@suite.case
def record_then_prefetch_list(t):
    """imgfs record: the files a workload read become the next start's prefetch set."""
    mnt = t.mnt
    m = Mount(t.ref, mnt, os.path.join(t.work, "cache-f"), ["--prefetch", "none"])
    if not t.tap.ok(m.ok, "mount to record a workload", m.stderr()):
        return
    read(f"{mnt}/usr/share/many/f0500")
    read(f"{mnt}/etc/hostname")
    with open(f"{mnt}/usr/big.bin", "rb") as f:
        f.seek(3 << 20)
        f.read(100)
    read(f"{mnt}/usr/share/many/f0500")
    listing = os.path.join(t.work, "workload.list")
    r = run([IMGFS, "record", mnt, listing])
    lines = open(listing).read().splitlines() if r.returncode == 0 else r.stderr
    parts = lines[2].split("\t@")[1] if len(lines) == 3 and "\t@" in lines[2] else ""
    spans = [tuple(int(n) for n in p.split("+")) for p in parts.split(",") if p]
    t.tap.ok(lines[:2] == ["/usr/share/many/f0500", "/etc/hostname"] and lines[2].startswith("/usr/big.bin\t@"),
             "imgfs record lists the files read, in the order of their first read", lines)
    t.tap.ok(any(off <= 3 << 20 < off + n for off, n in spans) and 0 < sum(n for _, n in spans) < 8 << 20,
             "a file read in part is listed with the parts read (3 MiB in, not all 8 MiB)", spans)
    m.umount()
    m = Mount(t.ref, mnt, os.path.join(t.work, "cache-g"), ["--prefetch", "landmark", "--prefetch-list", listing])
    if not t.tap.ok(m.ok, "mount with --prefetch-list", m.stderr()):
        return
    before = stats_after_prefetch(mnt, 60)
    with open(f"{mnt}/usr/big.bin", "rb") as f:
        f.seek(3 << 20)
        part = f.read(100)
    ok_bytes = (read(f"{mnt}/usr/share/many/f0500") == b"file 500\n" and
                read(f"{mnt}/etc/hostname") == b"changed\n" and
                part == BIG[3 << 20:(3 << 20) + 100])
    after = imgfs_stats(mnt)
    t.tap.ok(before["prefetch_done"] and 0 < before["bytes_prefetched"] < before["image_size"] and ok_bytes and
             after["range_requests"] == before["range_requests"],
             "the listed files and parts were fetched ahead: reading them needs no request", (before, after))
    t.tap.ok(0 < before["range_requests"] * 2 <= before["bytes_prefetched"] // (64 << 10),
             "a run of missing 64 KiB spans is one request, not one each (and the windows, one)", before)
    t.tap.ok(read(f"{mnt}/usr/big.bin") == BIG and
             imgfs_stats(mnt)["range_requests"] > after["range_requests"],
             "the parts not listed were not: reading all of big.bin fetches", imgfs_stats(mnt))
    m.umount()


def record_listing(t, mnt, name):
    """A workload on the lazily mounted rich image, recorded: the listing's path."""
    read(f"{mnt}/usr/share/many/f0700")
    read(f"{mnt}/etc/hostname")
    with open(f"{mnt}/usr/big.bin", "rb") as f:
        f.read(100)
    listing = os.path.join(t.work, name)
    run([IMGFS, "record", mnt, listing])
    return listing


def prefetched_then_read(t, mnt):
    """(stats once the prefetch is done, whether reading what the workload
    of record_listing read then needed no request)."""
    before = stats_after_prefetch(mnt, 60)
    with open(f"{mnt}/usr/big.bin", "rb") as f:
        start = f.read(100)
    ok = (read(f"{mnt}/usr/share/many/f0700") == b"file 700\n" and read(f"{mnt}/etc/hostname") == b"changed\n"
          and start == BIG[:100])
    return before, ok and imgfs_stats(mnt)["range_requests"] == before["range_requests"]


@suite.case
def published_profile(t):
    """imgfs profile push: any later mount (clean cache, other host) prefetches
    the recorded files first, without --prefetch-list."""
    mnt = t.mnt
    m = Mount(t.ref, mnt, os.path.join(t.work, "cache-p1"), ["--prefetch", "none"])
    if not t.tap.ok(m.ok, "mount to record a workload", m.stderr()):
        return
    listing = record_listing(t, mnt, "profile.list")
    m.umount()
    r = run([IMGFS, "profile", "push", "--cache", os.path.join(t.work, "cache-p1"), t.ref, listing])
    t.tap.ok(r.returncode == 0 and r.stdout.decode().startswith("sha256:"), "imgfs profile push prints its digest",
             r.stderr)
    types = sorted(m_.get("artifactType") for m_ in index_request(t))
    t.tap.ok(types == ["application/vnd.imgfs.index.v1", "application/vnd.imgfs.profile.v1"],
             "the image's referrers list the profile beside the index", types)
    m = Mount(t.ref, mnt, os.path.join(t.work, "cache-p2"), ["--prefetch", "landmark"])
    if not t.tap.ok(m.ok, "a clean cache mounts with the default prefetch", m.stderr()):
        return
    before, no_requests = prefetched_then_read(t, mnt)
    t.tap.ok(0 < before["bytes_prefetched"] < before["image_size"] and no_requests,
             "the profile's files were fetched ahead: reading them needs no request", before)
    m.umount()


@suite.case
def foreign_index_repo(t):
    """An index and a profile of an image the user may not push next to, kept
    in a repository of their own (--index-repo, $IMGFS_INDEX_REPO, imgfs.conf)."""
    manifest_digest, _ = push_rich(t.reg, "vendor/app", "v1", ["gzip", "zstd", "gzip"])
    ref, repo = f"{t.reg.host}/vendor/app:v1", f"{t.reg.host}/mine/imgfs-index"
    r = run([IMGFS, "index", "push", "--cache", os.path.join(t.work, "cache-v"), "--index-repo", repo, ref])
    t.tap.ok(r.returncode == 0, "imgfs index push --index-repo", r.stderr)
    try:
        t.reg._request("GET", f"/v2/vendor/app/manifests/sha256-{manifest_digest.split(':')[1]}",
                       headers={"Accept": "application/vnd.oci.image.index.v1+json"})
        status = 200
    except urllib.error.HTTPError as e:
        status = e.code
    t.tap.ok(status == 404, "nothing was pushed next to the image", status)
    conf = os.path.join(t.work, "imgfs.conf")
    with open(conf, "w") as f:
        f.write(f'index-repository = "{repo}"\n')
    ways = [("--index-repo", ["--index-repo", repo], {}), ("$IMGFS_INDEX_REPO", [], {"IMGFS_INDEX_REPO": repo}),
            ("imgfs.conf", [], {"IMGFS_CONF": conf})]
    for i, (how, flags, env) in enumerate(ways):
        r = run([IMGFS, "mount", "--cache", os.path.join(t.work, f"cache-v{i}"), "--prefetch", "none", *flags, ref,
                 t.mnt], env={**os.environ, **env})
        if not t.tap.ok(r.returncode == 0, f"mount with the index repository from {how}", r.stderr):
            continue
        s = imgfs_stats(t.mnt)
        t.tap.ok(s["layers_fetched_whole"] == 0 and read(f"{t.mnt}/usr/share/many/f0001") == b"file 1\n"
                 and big_at(t.mnt, 6 << 20),
                 f"{how}: no layer fetched whole, files read through the index found there (and the window"
                 " of a checkpoint, from that repository)", s)
        run([IMGFS, "umount", t.mnt])
    m = Mount(ref, t.mnt, os.path.join(t.work, "cache-v9"), ["--prefetch", "none"])
    t.tap.ok(m.ok and imgfs_stats(t.mnt)["layers_fetched_whole"] == 3, "without it the layers are fetched whole")
    listing = record_listing(t, t.mnt, "vendor.list")
    m.umount()
    r = run([IMGFS, "profile", "push", "--index-repo", repo, "--cache", os.path.join(t.work, "cache-v9"), ref,
             listing])
    t.tap.ok(r.returncode == 0, "imgfs profile push --index-repo", r.stderr)
    m = Mount(ref, t.mnt, os.path.join(t.work, "cache-v10"), ["--prefetch", "landmark", "--index-repo", repo])
    if t.tap.ok(m.ok, "mount with the profile in the index repository", m.stderr()):
        before, no_requests = prefetched_then_read(t, t.mnt)
        t.tap.ok(before["bytes_prefetched"] > 0 and no_requests, "its files were prefetched", before)
        m.umount()
    m = Mount(ref, t.mnt, os.path.join(t.work, "cache-v11"), ["--prefetch", "all", "--index-repo", repo])
    if t.tap.ok(m.ok, "mount with the index repository and the background fetch of everything", m.stderr()):
        before = stats_after_prefetch(t.mnt, 60)["range_requests"]
        t.tap.ok(big_at(t.mnt, 6 << 20) and imgfs_stats(t.mnt)["range_requests"] == before,
                 "the background fetch brought the windows from the index repository too: a read in the"
                 " middle of a file makes no request", (before, imgfs_stats(t.mnt)))
        m.umount()


def windows_blob(t):
    return next(d for d in t.art["layers"] if d["mediaType"] == "application/vnd.imgfs.layer-windows.v1")


def republish(t, repo, image_repo, change):
    """The index artifact again, in repo, for a copy of the image pushed as
    image_repo:v1 (the same manifest digest, and no index beside it):
    change(descriptor, blob) gives each layer of the artifact as it is to be
    pushed, (descriptor, blob), or None to leave it out.  Returns the copy's
    manifest digest and the layers pushed."""
    copy_digest, _ = push_rich(t.reg, image_repo, "v1", ["gzip", "zstd", "none"])
    layers = []
    for d in t.art["layers"]:
        changed = change(d, read(t.reg.blob_path(d["digest"])))
        if changed:
            d, blob = changed
            layers.append(dict(d, size=len(blob), digest=t.reg.push_blob(repo, blob)))
    t.reg.push_blob(repo, read(t.reg.blob_path(t.art["config"]["digest"])))
    art_type = "application/vnd.oci.image.manifest.v1+json"
    body = json.dumps(dict(t.art, layers=layers)).encode()
    art = t.reg.push_manifest(repo, "republished", body, art_type)
    listing = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
               "manifests": [{"mediaType": art_type, "digest": art, "size": len(body),
                              "artifactType": "application/vnd.imgfs.index.v1"}]}
    t.reg.push_manifest(repo, f"sha256-{copy_digest.split(':')[1]}", listing, listing["mediaType"])
    return copy_digest, layers


@suite.case
def compressed_index(t):
    """The layer index goes up as one zstd frame without its checkpoints' windows, which
    lie in a blob of their own; an index an older imgfs pushed (windows inside, as
    it is) still mounts lazily."""
    indexes = [d for d in t.art["layers"] if d["mediaType"].startswith("application/vnd.imgfs.layer-index")]
    raw = []
    for d in indexes:
        r = subprocess.run(["zstd", "-dc"], input=read(t.reg.blob_path(d["digest"])), stdout=subprocess.PIPE)
        raw.append(r.stdout if r.returncode == 0 else b"")
    t.tap.ok(len(indexes) == 3 and all(d["mediaType"] == "application/vnd.imgfs.layer-index.v2" for d in indexes)
             and all(x.startswith(b"IMGFSIX2") for x in raw)
             and sum(d["size"] for d in indexes) * 2 < sum(len(x) for x in raw),
             "each layer index is a zstd frame, less than half its size",
             [(d["mediaType"], d["size"], len(x)) for d, x in zip(indexes, raw)])
    gzip_layer = windows_blob(t)["annotations"]["io.imgfs.layer.digest"]
    older_form = read(os.path.join(t.work, "cache-push", "index", "sha256", gzip_layer.split(":")[1]))
    gzip_index = next(d for d in indexes if d["annotations"]["io.imgfs.layer.digest"] == gzip_layer)
    t.tap.ok(older_form.startswith(b"IMGFSIX1") and gzip_index["size"] * 20 < len(older_form),
             "the gzip layer's index a mount fetches is a twentieth of the older form with its windows inside,"
             " although its checkpoints lie eight times closer", (gzip_index["size"], len(older_form)))
    # The same artifact as an older imgfs pushed it (its saved index as it is, no windows
    # blob), in the index repository of a copy of the image that has no index of its own
    # (one next to the image is looked for first).
    repo = "older/imgfs-index"

    def older(d, blob):
        if d in indexes:
            blob = read(os.path.join(t.work, "cache-push", "index", "sha256",
                                     d["annotations"]["io.imgfs.layer.digest"].split(":")[1]))
            return dict(d, mediaType="application/vnd.imgfs.layer-index.v1"), blob
        return None if d["mediaType"] == "application/vnd.imgfs.layer-windows.v1" else (d, blob)
    copy_digest, layers = republish(t, repo, "older/app", older)
    seen = len(t.reg.access_log())
    m = Mount(f"{t.reg.host}/older/app:v1", t.mnt, os.path.join(t.work, "cache-older"),
              ["--prefetch", "none", "--index-repo", f"{t.reg.host}/{repo}"])
    if t.tap.ok(m.ok, "mount with an index of the older form", m.stderr()):
        s = imgfs_stats(t.mnt)
        fetched = [d["digest"] for d in layers if d["mediaType"] == "application/vnd.imgfs.layer-index.v1"
                   and f"/v2/{repo}/blobs/{d['digest']}" in t.reg.access_log()[seen:]]
        t.tap.ok(copy_digest == t.manifest_digest and s["layers_fetched_whole"] == 0 and len(fetched) == 3 and
                 read(f"{t.mnt}/usr/share/many/f1234") == b"file 1234\n" and big_at(t.mnt, 6 << 20),
                 "no layer fetched whole: the three uncompressed indexes were fetched and read as before",
                 (s, fetched, m.stderr()))
        m.umount()


@suite.case
def window_fetched_with_the_read(t):
    """A read that starts decoding at a checkpoint fetches that checkpoint's window, one
    request beside the one for the bytes after it, and little it does not need."""
    m = Mount(t.ref, t.mnt, os.path.join(t.work, "cache-w"), ["--prefetch", "none"])
    if not t.tap.ok(m.ok, "mount on a clean cache", m.stderr()):
        return
    seen = len(t.reg.access_log())
    right = big_at(t.mnt, 6 << 20)
    s = imgfs_stats(t.mnt)
    log = t.reg.access_log()[seen:]
    windows = windows_blob(t)["digest"]
    t.tap.ok(right and log.count(f"/blobs/{windows} ") == 1 and
             s["range_requests"] == 2 and s["bytes_fetched_ranges"] < 1 << 20,
             "a read 6 MiB into an incompressible file: its window and the bytes after its checkpoint,"
             " two requests, under 1 MiB (with windows inside the index, checkpoints lay 2 MiB apart)", (s, log))
    m.umount()


@suite.case
def sequential_read_asks_ahead(t):
    """A reader going on through a large file finds the next bytes asked for before the
    request it reads from has ended, so the link does not wait a round trip between
    them; and no more is fetched than the file and a read-ahead."""
    # Slow enough that the reader, even under a sanitizer, is never the one behind.
    link = ShapedLink(t.reg.port, rtt=0.02, rate=2e6)
    t.on_exit(link.stop)
    gzip_layer = windows_blob(t)["annotations"]["io.imgfs.layer.digest"]
    m = Mount(f"{link.host}/test/rich:mixed", t.mnt, os.path.join(t.work, "cache-seq"), ["--prefetch", "none"])
    if not t.tap.ok(m.ok, "mount through a link with a 20 ms round trip", m.stderr()):
        return
    link.reset()
    with open(f"{t.mnt}/usr/big.bin", "rb") as f:
        right = f.read(4 << 20) == BIG[:4 << 20]
    blob = [r for r in link.log if f"/blobs/{gzip_layer} " in r["request"]]
    # A request still under way has no end yet.
    asked_ahead = sum(1 for a, b in zip(blob, blob[1:]) if a["end"] is None or b["start"] < a["end"])
    fetched = sum(r["bytes"] for r in blob)
    timeline = [(round(r["start"] - blob[0]["start"], 3), r["end"] and round(r["end"] - blob[0]["start"], 3),
                 r["bytes"]) for r in blob]
    # The read of its head asks for the rest of the file at once (file_read_on_after_its_head): a few requests.
    t.tap.ok(right and len(blob) >= 4 and asked_ahead * 3 >= len(blob) * 2 and fetched < (4 << 20) * 1.5,
             "reading the first 4 MiB of usr/big.bin, most of its requests went out before the one before them"
             " ended", (right, asked_ahead, fetched, timeline))
    # Those requests went out on several connections of their own (streams,
    # windows); only a mount's first connection tries TLS on this plain HTTP
    # registry, the others know it from that one.
    t.tap.ok(link.tls_hellos == 0 and asked_ahead > 0,
             "no connection the read opened first tried TLS on the plain HTTP registry", (link.tls_hellos, asked_ahead))
    m.umount()


def settled_stats(mnt, timeout=20):
    """imgfs_stats once no request has ended for half a second (what a read started runs on)."""
    deadline = time.time() + timeout
    last = imgfs_stats(mnt)
    while time.time() < deadline:
        time.sleep(0.5)
        now = imgfs_stats(mnt)
        if now["bytes_fetched_ranges"] == last["bytes_fetched_ranges"]:
            return now
        last = now
    return last


@suite.case
def file_read_on_after_its_head(t):
    """Once the head of a large file is read, the rest of it is fetched at once, in one
    request that no read waits for: a read further in then makes no request of its own."""
    m = Mount(t.ref, t.mnt, os.path.join(t.work, "cache-head"), ["--prefetch", "none"])
    if not t.tap.ok(m.ok, "mount on a clean cache", m.stderr()):
        return
    head = read_no_readahead(f"{t.mnt}/usr/big.bin", 0)
    before = settled_stats(t.mnt)
    later = read_no_readahead(f"{t.mnt}/usr/big.bin", 1 << 20)
    after = imgfs_stats(t.mnt)
    t.tap.ok(head == BIG[:4096] and later == BIG[1 << 20:(1 << 20) + 4096] and before["bytes_speculated"] > 1 << 20
             and after["range_requests"] == before["range_requests"],
             "after its first 4 KiB, a read 1 MiB into usr/big.bin needs no request", (before, after))
    m.umount()


def fault_proxy(t):
    """A FaultProxy in front of t.reg, stopped when the case ends."""
    proxy = FaultProxy(t.reg.host)
    t.on_exit(proxy.stop)
    return proxy


def mount_indexed(t, repo, entries, what, via=None, lower=None):
    """entries as a gzip image in repo (above a layer of lower, when given), indexed,
    mounted on t.mnt with no prefetch (through via, when given, a FaultProxy or ShapedLink
    of t.reg); None, reported as what, when that fails."""
    push_image(t.reg, repo, "v1", [(make_tar(layer), "gzip") for layer in (lower, entries) if layer])
    ref = f"{t.reg.host}/{repo}:v1"
    push = run([IMGFS, "index", "push", "--cache", os.path.join(t.work, "cache-push"), ref])
    m = Mount(f"{via.host}/{repo}:v1" if via else ref, t.mnt,
              os.path.join(t.work, "cache-" + repo.replace("/", "-")), ["--prefetch", "none"])
    return m if t.tap.ok(push.returncode == 0 and m.ok, what, (push.stderr, m.stderr())) else None


@suite.case
def libraries_read_on_with_windows(t):
    """A library's head read brings the rest of it and the windows of the
    checkpoints it crosses: the loader maps it and faults pages in here and
    there, and a fault far from where any decoder stopped asks for no window.
    A library of over 2 MiB of blob is not read on at all (its loading
    touches little of it): its head read brings nothing more."""
    # A quarter random: 5 MiB of tar in about 1.4 MB of blob.
    mid = b"".join(deterministic_bytes(950 + k, 1024) + bytes(3072) for k in range(5 << 8))
    large = deterministic_bytes(951, 3 << 20)
    entries = [Entry("usr", "dir"), Entry("usr/lib", "dir"), Entry("usr/lib/libmid.so.1", data=mid),
               Entry("usr/lib/liblarge.so.1", data=large)]
    proxy = fault_proxy(t)
    m = mount_indexed(t, "test/libraries", entries, "an image of a 5 MiB library in 1.4 MB of blob and a 3 MiB"
                      " incompressible one, indexed and mounted", proxy)
    if not m:
        return
    try:
        head = read_no_readahead(f"{t.mnt}/usr/lib/libmid.so.1", 0)
        settled_stats(t.mnt)
        asked = len(proxy.requests)
        fault = read_no_readahead(f"{t.mnt}/usr/lib/libmid.so.1", 4 << 20)
        settled_stats(t.mnt)
        again = proxy.requests[asked:]
        t.tap.ok(head == mid[:4096] and fault == mid[4 << 20:(4 << 20) + 4096] and not again,
                 "after libmid's head, a read 4 MiB in (3.7 MiB past any decoder) asks for nothing", again)
        head = read_no_readahead(f"{t.mnt}/usr/lib/liblarge.so.1", 0)
        before = settled_stats(t.mnt)
        fault = read_no_readahead(f"{t.mnt}/usr/lib/liblarge.so.1", 5 << 19)
        after = imgfs_stats(t.mnt)
        t.tap.ok(head == large[:4096] and fault == large[5 << 19:(5 << 19) + 4096] and
                 after["range_requests"] > before["range_requests"],
                 "liblarge's head read brought nothing more: a read 2.5 MiB in fetches", (before, after))
    finally:
        m.umount()


@suite.case
def guesses_keep_their_connections(t):
    """A package guess fetches its runs on several connections at once; the
    next guesses fetch on the same ones, not on new ones (each new one costs
    a round trip, two with TLS, before its first byte).  Told by the
    proxy's connections: after the first package's guess, the guesses of six
    more open none but what an on-demand read may (they opened two each
    before)."""
    def package(name, seed):
        # Three compiled modules 600 KB apart: three runs, too far apart for one request.
        cache = f"lib/{name}/__pycache__"
        entries = [Entry(f"lib/{name}", "dir"), Entry(cache, "dir"), Entry(f"lib/{name}/__init__.py", data=b"\n"),
                   Entry(f"{cache}/__init__.cpython-311.pyc", data=deterministic_bytes(seed, 20000))]
        for i in range(3):
            entries += [Entry(f"lib/{name}/data{i}.bin", data=deterministic_bytes(seed + 1 + i, 600000)),
                        Entry(f"{cache}/m{i}.cpython-311.pyc", data=deterministic_bytes(seed + 5 + i, 20000))]
        return entries
    names = ["one", "two", "three", "four", "five", "six", "seven"]
    entries = [Entry("lib", "dir")] + [e for i, name in enumerate(names) for e in package(name, 900 + 20 * i)]
    proxy = fault_proxy(t)
    m = mount_indexed(t, "test/packages", entries, "an image of seven packages, indexed, mounted through a proxy",
                      proxy)
    if not m:
        return
    try:
        want = {e.path: e.data for e in entries if e.data is not None}

        def first_module_then_guess(name):
            """Its first module read, and its guess settled; then its other modules read right."""
            path = f"lib/{name}/__pycache__/__init__.cpython-311.pyc"
            first = read(f"{t.mnt}/{path}") == want[path]
            settled_stats(t.mnt)
            return first and all(read(f"{t.mnt}/lib/{name}/__pycache__/m{i}.cpython-311.pyc") ==
                                 want[f"lib/{name}/__pycache__/m{i}.cpython-311.pyc"] for i in range(3))
        first = first_module_then_guess(names[0])
        seen = {port for port, _, _ in proxy.requests}
        before = len(proxy.requests)
        others = [first_module_then_guess(name) for name in names[1:]]
        new = {port for port, _, _ in proxy.requests[before:]} - seen
        t.tap.ok(first and all(others) and len(seen) >= 3 and len(new) <= 2,
                 "the next six packages' guesses came on the connections the first one opened",
                 (len(seen), new, proxy.requests[before:]))
    finally:
        m.umount()


@suite.case
def read_ahead_decodes_on(t):
    """A read into what a miss's request read ahead, checkpoints past the one that miss
    started at, decodes on from there instead of asking for its checkpoint's window:
    the miss asks for its own window only, not for one per checkpoint its read-ahead
    crosses, and the later reads ask for nothing."""
    words = [b"layer", b"index", b"window", b"span", b"registry", b"mount", b"decode", b"cache", b"read", b"file"]

    def text(seed):
        rnd = random.Random(seed)
        return b" ".join(rnd.choice(words) for _ in range(6000))[:40000]
    texts = [text(i) for i in range(200)]
    entries = [Entry("docs", "dir")] + [Entry(f"docs/f{i:03d}.txt", data=d) for i, d in enumerate(texts)]
    proxy = fault_proxy(t)
    m = mount_indexed(t, "test/texts", entries, "an image of 200 text files, indexed, mounted through a proxy", proxy)
    if not m:
        return
    try:
        layer = t.reg.get_manifest("test/texts", "v1")["layers"][0]["digest"]
        before = len(proxy.requests)
        first = read(f"{t.mnt}/docs/f100.txt") == texts[100]
        settled_stats(t.mnt)
        asked = proxy.requests[before:]
        # f106, f112 and f118 lie 240, 490 and 730 KB of tar further: past one
        # to three checkpoints (every 256 KiB of tar), inside the read-ahead.
        later = [read(f"{t.mnt}/docs/f{i}.txt") == texts[i] for i in (106, 112, 118)]
        later_asked = proxy.requests[before + len(asked):]
        windows = [(path, rng) for _, path, rng in asked if rng and f"/blobs/{layer}" not in path]
        size = os.path.getsize(t.reg.blob_path(windows[0][0].rsplit("/", 1)[1])) if windows else 0
        # Checkpoints lie every 256 KiB of the 8 MB of tar: about 31 windows in the blob.
        one_window = size / (sum(len(d) + 512 for d in texts) / (256 << 10))
        spans = [r.split("=")[1].split("-") for r in (rng for _, rng in windows)]
        window_bytes = sum(int(b) - int(a) + 1 for a, b in spans)
        t.tap.ok(first and all(later) and len(windows) == 1 and window_bytes < 2 * one_window,
                 "the first read asked for one window", (window_bytes, one_window, asked))
        t.tap.ok(later_asked == [], "reads one to three checkpoints further asked for nothing", later_asked)
    finally:
        m.umount()


@suite.case
def reads_of_two_files_ask_together(t):
    """Two files read at once each ask for their bytes and their windows at
    once: one read does not wait for the other's round trips before it asks
    for its own (a decode holds the layer's lock, so what it will read is
    fetched before; each window fetched at a time has a connection)."""
    first, second = deterministic_bytes(31, 3 << 20), deterministic_bytes(32, 3 << 20)
    proxy = fault_proxy(t)
    m = mount_indexed(t, "test/together", [Entry("a.bin", data=first), Entry("b.bin", data=second)],
                      "an image of two 3 MiB files, indexed, mounted through a proxy", proxy)
    if not m:
        return
    try:
        layer = t.reg.get_manifest("test/together", "v1")["layers"][0]["digest"]
        proxy.hold_large = (0, 1.0)  # every ranged read waits a second, as if far away
        seen = len(proxy.requests)
        events_seen = len(proxy.range_events)
        off = (1 << 20) + 4096
        results = {}

        def read_at(name, data):
            results[name] = read_no_readahead(f"{t.mnt}/{name}", off) == data[off:off + 4096]
        threads = [threading.Thread(target=read_at, args=(name, data))
                   for name, data in (("a.bin", first), ("b.bin", second))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        proxy.hold_large = None
        asks = proxy.requests[seen:]
        blob_asks = [rng for _, path, rng in asks if f"/blobs/{layer}" in path]
        window_asks = [rng for _, path, rng in asks if rng and f"/blobs/{layer}" not in path]
        events = proxy.range_events[events_seen:]
        first_answer = next((k for k, (what, _) in enumerate(events) if what == "answer"), len(events))

        def asked_before(ranges):
            return sum(1 for what, at in events[:first_answer] if what == "ask"
                       and any(rng.startswith(f"bytes={at}-") for rng in ranges))
        t.tap.ok(results == {"a.bin": True, "b.bin": True} and asked_before(blob_asks) >= 2
                 and len(window_asks) == 2 and asked_before(window_asks) == 2,
                 "both files' bytes and both their windows were asked for before the first came back",
                 (results, events, blob_asks, window_asks))
    finally:
        m.umount()


@suite.case
def read_beside_busy_streams_holds_none_up(t):
    """A read that finds every stream of its layer busy fetches on a connection of its
    own, and the reads whose streams answer meanwhile are served: its fetch holds none
    of them up (counted by which requests the proxy let go, not by time)."""
    size = 3 << 20
    bodies = {name: deterministic_bytes(40 + k, size) for k, name in enumerate("abcd")}
    proxy = fault_proxy(t)
    m = mount_indexed(t, "test/four", [Entry(f"{name}.bin", data=body) for name, body in bodies.items()],
                      "an image of four 3 MiB files, indexed, mounted through a proxy", proxy)
    if not m:
        return
    try:
        layer = t.reg.get_manifest("test/four", "v1")["layers"][0]["digest"]
        off = (1 << 20) + 4096

        def file_asked(first):
            # Incompressible files: a file's compressed bytes lie where its tar bytes do.
            return "abcd"[min(first // size, 3)]

        def blob_asks_of(names):
            return [rng for rng in proxy.ranges_asked(layer)
                    if file_asked(int(rng.split("=")[1].split("-")[0])) in names]
        held = set("abcd")
        proxy.open_gate(lambda path, first: f"/blobs/{layer}" in path and file_asked(first) in held)
        results = {}

        def read_at(name):
            results[name] = read_no_readahead(f"{t.mnt}/{name}.bin", off) == bodies[name][off:off + 4096]
        threads = {name: threading.Thread(target=read_at, args=(name,)) for name in "abcd"}
        for name in "abc":
            threads[name].start()
        streams_busy = wait_until(lambda: len(blob_asks_of("abc")) >= 3, 20)
        threads["d"].start()
        d_asked = wait_until(lambda: blob_asks_of("d"), 20)
        held = set("d")
        proxy.open_gate(lambda path, first: f"/blobs/{layer}" in path and file_asked(first) in held)
        for name in "abc":
            threads[name].join(20)
        served_while_d_held = {name: results.get(name) for name in "abc"}
        proxy.open_gate()
        threads["d"].join(20)
        t.tap.ok(streams_busy and d_asked and served_while_d_held == {"a": True, "b": True, "c": True}
                 and results.get("d") is True,
                 "three reads on the layer's streams were served while a fourth read's request was held",
                 (served_while_d_held, results, blob_asks_of("abcd")))
    finally:
        proxy.open_gate()
        m.umount()


@suite.case
def file_read_on_once_streams_free(t):
    """A file whose head is read while other reads hold the layer's streams (a start
    reads its users, groups and program at once) is still read on: its rest is asked
    for once a stream is free, and a read further in then makes no request of its own."""
    size = 3 << 20
    bodies = {name: deterministic_bytes(60 + k, size) for k, name in enumerate(("a", "b", "prog"))}
    proxy = fault_proxy(t)
    m = mount_indexed(t, "test/busy-head", [Entry(name, data=body) for name, body in bodies.items()],
                      "an image of three 3 MiB files, indexed, mounted through a proxy", proxy)
    if not m:
        return
    try:
        layer = t.reg.get_manifest("test/busy-head", "v1")["layers"][0]["digest"]
        blob_path = f"/blobs/{layer}"
        # Incompressible: a and b lie in the blob's first 6 MiB, the reads 1 MiB into them
        # ask from their checkpoints on, and prog's head decodes from at most one before it.
        proxy.open_gate(lambda path, first: blob_path in path and first < 2 * size - (1 << 20))
        off = (1 << 20) + 4096
        results = {}

        def read_at(name):
            results[name] = read_no_readahead(f"{t.mnt}/{name}", off) == bodies[name][off:off + 4096]
        readers = [threading.Thread(target=read_at, args=(name,)) for name in ("a", "b")]
        for reader in readers:
            reader.start()
        streams_busy = wait_until(lambda: len(proxy.ranges_asked(layer)) >= 2, 20)
        head = read_no_readahead(f"{t.mnt}/prog", 0) == bodies["prog"][:4096]
        proxy.open_gate()
        for reader in readers:
            reader.join(20)
        before = settled_stats(t.mnt)
        later = read_no_readahead(f"{t.mnt}/prog", 2 << 20) == bodies["prog"][2 << 20:(2 << 20) + 4096]
        after = imgfs_stats(t.mnt)
        t.tap.ok(streams_busy and head and later and results == {"a": True, "b": True}
                 and after["range_requests"] == before["range_requests"],
                 "prog's head read while a's and b's requests were held; a read 2 MiB into it later needed"
                 " no request", (results, before, after))
    finally:
        proxy.open_gate()
        m.umount()


@suite.case
def reads_at_once_ask_for_different_bytes(t):
    """A read whose read-ahead reaches bytes another read's request brings asks only for
    those before them: a start reads its users, groups and program at once, and the
    read of the first span asked for the next 512 KiB again."""
    early, late = deterministic_bytes(51, 20000), deterministic_bytes(52, 20000)
    # Incompressible: the late file lies a checkpoint or more past the early one.
    entries = [Entry("early", data=early), Entry("pad", data=deterministic_bytes(53, 300 << 10)),
               Entry("late", data=late)]
    proxy = fault_proxy(t)
    m = mount_indexed(t, "test/at-once", entries, "an image of two small files 300 KiB apart, indexed,"
                      " mounted through a proxy", proxy)
    if not m:
        return
    try:
        layer = t.reg.get_manifest("test/at-once", "v1")["layers"][0]["digest"]
        proxy.open_gate(lambda path, first: f"/blobs/{layer}" in path)
        results = {}

        def read_head(name, body):
            results[name] = read_no_readahead(f"{t.mnt}/{name}", 0) == body[:4096]
        late_reader = threading.Thread(target=read_head, args=("late", late))
        late_reader.start()
        late_asked = wait_until(lambda: len(proxy.ranges_asked(layer)) >= 1, 20)
        early_reader = threading.Thread(target=read_head, args=("early", early))
        early_reader.start()
        early_asked = wait_until(lambda: len(proxy.ranges_asked(layer)) >= 2, 20)
        proxy.open_gate()
        late_reader.join(20)
        early_reader.join(20)
        asks = proxy.ranges_asked(layer)
        spans = sorted(tuple(int(x) for x in rng.split("=")[1].split("-")) for rng in asks)
        apart = all(a[1] < b[0] for a, b in zip(spans, spans[1:]))
        t.tap.ok(late_asked and early_asked and results == {"late": True, "early": True} and apart,
                 "the two reads' requests asked for different bytes", (results, asks))
    finally:
        proxy.open_gate()
        m.umount()


@suite.case
def guess_paced_on_slow_link(t):
    """On a slow link a package guess asks in small requests, one at a time per
    connection, so that a miss asked for meanwhile waits behind little of it (the
    link is one queue); the package's modules still come, and their reads ask for
    nothing.  The link is known from what any layer fetched, before any transfer
    of over 1 MiB: the package's layer fetched nothing before its guess."""
    cache = "lib/slow/__pycache__"
    modules = {f"{cache}/m{i:02d}.cpython-311.pyc": deterministic_bytes(1100 + i, 60000) for i in range(20)}
    data_file = deterministic_bytes(1099, 640 << 10)
    entries = ([Entry("lib", "dir"), Entry("lib/slow", "dir"), Entry(cache, "dir"),
                Entry("lib/slow/__init__.py", data=b"\n"),
                Entry(f"{cache}/__init__.cpython-311.pyc", data=deterministic_bytes(1098, 20000))] +
               [Entry(path, data=body) for path, body in modules.items()])
    link = ShapedLink(t.reg.port, rtt=0.02, rate=2e6)
    t.on_exit(link.stop)
    data_layer = [Entry("lib", "dir"), Entry("lib/data.bin", data=data_file)]
    m = mount_indexed(t, "test/slow-package", entries, "a package image above a data layer, indexed, mounted"
                      " through a 2 MB/s link", link, lower=data_layer)
    if not m:
        return
    try:
        layer = t.reg.get_manifest("test/slow-package", "v1")["layers"][1]["digest"]
        # A file of the other layer read through first: the link's rate is known from its
        # transfers (of 512 KiB, the kernel's read-ahead, at most).
        warm = read(f"{t.mnt}/lib/data.bin") == data_file
        settled_stats(t.mnt)
        seen = len(link.log)
        first = read(f"{t.mnt}/{cache}/__init__.cpython-311.pyc") == deterministic_bytes(1098, 20000)
        settled_stats(t.mnt)
        guess = [r["bytes"] for r in link.log[seen:] if f"/blobs/{layer} " in r["request"]][1:]
        requests = imgfs_stats(t.mnt)["range_requests"]
        rest = all(read(f"{t.mnt}/{path}") == body for path, body in modules.items())
        t.tap.ok(warm and first and rest and imgfs_stats(t.mnt)["range_requests"] == requests,
                 "the package's modules read right with no request of their own")
        t.tap.ok(len(guess) >= 3 and max(guess) <= 256 << 10,
                 "its guess asked in several requests of at most 256 KiB", guess)
    finally:
        m.umount()


@suite.case
def package_fetched_ahead(t):
    """On a layer read through an index too, the first module of a Python package read
    brings the package's modules of its kind and its extension modules in the background,
    its tests left out: counted by requests."""
    tree = python_package_tree()
    data = {e.path: e.data for e in tree if e.data is not None}
    m = mount_indexed(t, "test/package", tree, "an image with a Python package, indexed and mounted")
    if not m:
        return

    def reads_right(*paths):
        return all(read(f"{t.mnt}/{p}") == data[p] for p in paths)
    first = reads_right("lib/app/__pycache__/__init__.cpython-311.pyc")
    before = settled_stats(t.mnt)
    guessed = reads_right("lib/app/core/__pycache__/a.cpython-311.pyc", "lib/app/core/__pycache__/b.cpython-311.pyc",
                          "lib/app/core/_speed.cpython-311-x86_64-linux-gnu.so")
    after = imgfs_stats(t.mnt)
    t.tap.ok(first and guessed and before["bytes_speculated"] > 0 and before["bytes_prefetched"] == 0 and
             after["range_requests"] == before["range_requests"],
             "after the package's first module, its subpackage's modules read right with no request of their own "
             "(counted as speculated, not prefetched)", (before, after))
    t.tap.ok(reads_right("lib/app/tests/__pycache__/test_a.cpython-311.pyc") and
             imgfs_stats(t.mnt)["range_requests"] > after["range_requests"],
             "the package's tests were not guessed: their read fetches", imgfs_stats(t.mnt))
    m.umount()


@suite.case
def read_ahead_stops_at_file_end(t):
    """Reading a large file through fetches up to its end, not into the file after it:
    that one is another file, which its own reads fetch if they come."""
    first, second = deterministic_bytes(2, 3 << 20), deterministic_bytes(3, 3 << 20)
    m = mount_indexed(t, "test/two", [Entry("a.bin", data=first), Entry("b.bin", data=second)],
                      "an image of two 3 MiB files, indexed and mounted")
    if not m:
        return
    whole = read(f"{t.mnt}/a.bin") == first
    fetched = settled_stats(t.mnt)["bytes_fetched_ranges"]
    # a.bin's bytes (incompressible: a little over 3 MiB in the blob), a decoder's input piece after
    # them and the window of the checkpoint its first read started at; a read-ahead into b.bin was 512 KiB.
    off = 256 << 10
    t.tap.ok(whole and len(first) < fetched < len(first) + (256 << 10)
             and read_no_readahead(f"{t.mnt}/b.bin", off) == second[off:off + 4096],
             "reading a.bin whole fetched less than 256 KiB past it", (fetched, len(first)))
    m.umount()


@suite.case
def listed_part_prefetched_whole(t):
    """A listed part that crosses several checkpoints is prefetched with the windows of
    each: a read in its middle (a page fault into a mapped library, say) makes no request."""
    listing = os.path.join(t.work, "part.list")
    with open(listing, "w") as f:
        f.write(f"/usr/big.bin\t@{1 << 20}+{2 << 20}\n")
    m = Mount(t.ref, t.mnt, os.path.join(t.work, "cache-lp"), ["--prefetch", "landmark", "--prefetch-list", listing])
    if not t.tap.ok(m.ok, "mount with a list of one 2 MiB part", m.stderr()):
        return
    before = stats_after_prefetch(t.mnt, 60)
    off = (5 << 19) + 12345
    middle = read_no_readahead(f"{t.mnt}/usr/big.bin", off)
    after = imgfs_stats(t.mnt)
    t.tap.ok(middle == BIG[off:off + 4096] and 0 < before["bytes_prefetched"]
             and after["range_requests"] == before["range_requests"],
             "a read 2.5 MiB into the file, 1.5 MiB into the part, needs no request", (before, after))
    m.umount()


@suite.case
def read_waits_for_prefetch(t):
    """A read of bytes that the prefetch is already fetching waits for them rather than
    fetch them a second time: no span crosses the link twice."""
    link = ShapedLink(t.reg.port, rtt=0.02, rate=8e6, fair=True)
    t.on_exit(link.stop)
    listing = os.path.join(t.work, "big.list")
    with open(listing, "w") as f:
        f.write("/usr/big.bin\n")
    m = Mount(f"{link.host}/test/rich:mixed", t.mnt, os.path.join(t.work, "cache-wait"),
              ["--prefetch", "landmark", "--prefetch-list", listing])
    if not t.tap.ok(m.ok, "mount through a link of 8 MB/s, prefetching usr/big.bin", m.stderr()):
        return
    gzip_layer = windows_blob(t)["annotations"]["io.imgfs.layer.digest"]
    deadline = time.time() + 10
    # The prefetch's first request for the layer's spans is on the link (its windows, fetched
    # and counted before it, are not enough: on a loaded machine the read came in between).
    while not any(f"/blobs/{gzip_layer} " in r["request"] for r in link.log) and time.time() < deadline:
        time.sleep(0.02)
    off = (2 << 20) + 4321
    middle = read_no_readahead(f"{t.mnt}/usr/big.bin", off)
    s = stats_after_prefetch(t.mnt, 60)
    fetched = sum(r["bytes"] for r in link.log if f"/blobs/{gzip_layer} " in r["request"])
    # The file is incompressible: its spans and the few before it from its checkpoint come to
    # little over its 8 MiB; a second fetch of the read's spans would add its read-ahead, 512 KiB.
    t.tap.ok(middle == BIG[off:off + 4096] and s["reads_ahead_of_prefetch"] == 0 and fetched < len(BIG) + (384 << 10),
             "a read 2 MiB into usr/big.bin, in the prefetch's first request, fetched nothing again", (fetched, s))
    m.umount()


@suite.case
def unusable_profile_ignored(t):
    """A profile whose blob is damaged, or that names none of the image's
    files, is ignored with a warning: the mount goes on."""
    push_rich(t.reg, "vendor/other", "v1", ["gzip", "gzip", "gzip"])
    ref = f"{t.reg.host}/vendor/other:v1"
    stranger = os.path.join(t.work, "stranger.list")
    with open(stranger, "w") as f:
        f.write("/not/in/this/image\n")
    r = run([IMGFS, "profile", "push", "--cache", os.path.join(t.work, "cache-o"), ref, stranger])
    m = Mount(ref, t.mnt, os.path.join(t.work, "cache-o1"), ["--prefetch", "landmark"])
    t.tap.ok(r.returncode == 0 and m.ok and "names none of its files" in m.stderr(),
             "a profile of files the image does not have is ignored, and said so", m.stderr())
    m.umount()
    listing = os.path.join(t.work, "other.list")
    with open(listing, "w") as f:
        f.write("/etc/hostname\n")
    r = run([IMGFS, "profile", "push", "--cache", os.path.join(t.work, "cache-o"), ref, listing])
    _, _, body = t.reg._request("GET", f"/v2/vendor/other/manifests/{r.stdout.decode().strip()}",
                                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    blob = t.reg.blob_path(json.loads(body)["layers"][0]["digest"])
    with open(blob, "wb") as f:
        f.write(b"/etc/hostnamX\n")  # same length, other bytes
    m = Mount(ref, t.mnt, os.path.join(t.work, "cache-o2"), ["--prefetch", "landmark"])
    t.tap.ok(m.ok and "ignoring the published profile" in m.stderr() and "does not match" in m.stderr(),
             "a profile whose bytes do not match its digest is ignored, and said so", m.stderr())
    m.umount()


@suite.case
def cache_size_cap(t):
    """Least recently used objects go, reads stay right."""
    mnt = t.mnt
    cache_e = os.path.join(t.work, "cache-e")
    m = Mount(t.ref, mnt, cache_e, ["--prefetch", "none", "--cache-size", "1M"])
    if t.tap.ok(m.ok, "mount with --cache-size 1M", m.stderr()):
        got = snapshot(mnt)

        def cache_bytes():
            total = 0
            for sub in ("blobs", "chunks", "index"):
                for dirpath, _, files in os.walk(os.path.join(cache_e, sub)):
                    total += sum(os.lstat(os.path.join(dirpath, f)).st_blocks * 512 for f in files)
            return total
        used = cache_bytes()
        t.tap.ok(got == t.want() and used <= 1 << 20,
                 "reading the whole image (8.7 MB) through a 1 MiB cache: right bytes, cache within its cap",
                 (used, diff_snapshots(t.want(), got)))
        m.umount()
    r = run([IMGFS, "mount", "--cache-size", "lots", t.ref, mnt])
    t.tap.ok(r.returncode == 2 and b"--cache-size" in r.stderr, "an invalid --cache-size is refused", r.stderr)


@suite.case
def full_cache_disk(t):
    """Verified spans the cache disk cannot take are read from memory, not EIO."""
    cache = os.path.join(t.work, "cache-full")
    os.makedirs(cache)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", cache], check=True)
    try:
        m = Mount(t.ref, t.mnt, cache, ["--prefetch", "none"])
        if t.tap.ok(m.ok, "mount with the cache on a 3 MiB disk", m.stderr()):
            got = read(f"{t.mnt}/usr/big.bin")
            s = imgfs_stats(t.mnt)
            t.tap.ok(got == BIG and s["bytes_in_memory"] > 0,
                     "an 8 MiB file of an indexed layer reads right through a full cache disk", s)
            m.umount()
    finally:
        subprocess.run(["umount", "-l", cache])


@suite.case
def background_fetch(t):
    """The background fetch of the whole image fetches each span once."""
    mnt = t.mnt
    m = Mount(t.ref, mnt, os.path.join(t.work, "cache-b"))
    if not t.tap.ok(m.ok, "mount with the default background fetch", m.stderr()):
        return
    s = stats_after_prefetch(mnt, 120)
    t.tap.ok(s["prefetch_done"] == 1 and s["bytes_fetched_ranges"] <= s["image_size"] + windows_blob(t)["size"] and
             s["bytes_fetched_whole"] == 0,
             "the background fetch takes at most the image's size and its checkpoints' windows", s)
    before = imgfs_stats(mnt)["range_requests"]
    got = snapshot(mnt)
    t.tap.ok(got == t.want() and imgfs_stats(mnt)["range_requests"] == before,
             "afterwards every read is served from the cache", diff_snapshots(t.want(), got))
    m.umount()


@suite.case
def mismatched_windows(t):
    """An index whose windows lie beyond its windows blob (a blob from another push, say)
    is not used: a warning names the layer, which is fetched whole and reads right."""
    def halved(d, blob):
        if d["mediaType"] == "application/vnd.imgfs.layer-windows.v1":
            return d, blob[:len(blob) // 2]
        return d, blob
    repo = "halved/imgfs-index"
    republish(t, repo, "halved/app", halved)
    gzip_layer = windows_blob(t)["annotations"]["io.imgfs.layer.digest"]
    m = Mount(f"{t.reg.host}/halved/app:v1", t.mnt, os.path.join(t.work, "cache-halved"),
              ["--prefetch", "none", "--index-repo", f"{t.reg.host}/{repo}"])
    if t.tap.ok(m.ok, "mount with an index that does not match its windows blob", m.stderr()):
        s = imgfs_stats(t.mnt)
        t.tap.ok(f"fetching the layer whole: layer {gzip_layer}: its imgfs index" in m.stderr() and
                 "does not match its windows blob" in m.stderr(), "a warning names the layer and what is wrong",
                 m.stderr())
        t.tap.ok(s["layers_fetched_whole"] == 1 and big_at(t.mnt, 6 << 20) and
                 read(f"{t.mnt}/usr/share/many/f1234") == b"file 1234\n",
                 "that layer alone is fetched whole, and reads right", s)
        m.umount()


@suite.case
def corrupt_span(t):
    """Corrupt bytes from the registry: EIO, never wrong bytes."""
    mnt = t.mnt
    with open(t.reg.blob_path(json.loads(t.reg._request(
            "GET", "/v2/test/rich/manifests/mixed",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})[2])["layers"][0]["digest"]), "r+b") as f:
        f.seek(5 << 20)
        data = f.read(16)
        f.seek(5 << 20)
        f.write(bytes(b ^ 0xff for b in data))
    m = Mount(t.ref, mnt, os.path.join(t.work, "cache-c"), ["--prefetch", "none"])
    if t.tap.ok(m.ok, "mount with a damaged layer in the registry", m.stderr()):
        t.tap.ok(errno_of_read(f"{mnt}/usr/big.bin") == errno.EIO, "a read through the damaged span fails with EIO")
        t.tap.ok(read(f"{mnt}/usr/share/many/f0007") == b"file 7\n", "files in intact spans still read")
        m.umount()


@suite.case
def damaged_windows(t):
    """Windows whose bytes are not the ones the index names: EIO, never wrong bytes."""
    with open(t.reg.blob_path(windows_blob(t)["digest"]), "r+b") as f:
        f.write(b"\0" * windows_blob(t)["size"])
    m = Mount(t.ref, t.mnt, os.path.join(t.work, "cache-dw"), ["--prefetch", "none"])
    if t.tap.ok(m.ok, "mount with a damaged windows blob in the registry", m.stderr()):
        with open(f"{t.mnt}/usr/share/many/f0001", "rb") as f:
            first = f.read()
        t.tap.ok(first == b"file 1\n", "a file decoded from the layer's start (no window) reads")
        try:
            with open(f"{t.mnt}/usr/big.bin", "rb") as f:
                f.seek(7 << 20)
                f.read(4096)
            got = 0
        except OSError as e:
            got = e.errno
        t.tap.ok(got == errno.EIO, "a read that starts at a checkpoint whose window is damaged fails with EIO", got)
        m.umount()


@suite.case
def damaged_index(t):
    """A damaged index is not used: the layer is fetched whole instead."""
    mnt = t.mnt
    art_layers = t.art["layers"]
    spans = next(d for d in art_layers if d["mediaType"] == "application/vnd.imgfs.layer-spans.v1"
                 and d["annotations"]["io.imgfs.layer.digest"] != art_layers[0]["annotations"]["io.imgfs.layer.digest"])
    with open(t.reg.blob_path(spans["digest"]), "r+b") as f:
        f.seek(40)
        f.write(b"\0" * 8)
    m = Mount(t.ref, mnt, os.path.join(t.work, "cache-d"), ["--prefetch", "none"])
    if t.tap.ok(m.ok, "mount with a damaged span table in the registry", m.stderr()):
        s = imgfs_stats(mnt)
        t.tap.ok(s["bytes_fetched_whole"] > 0, "that layer was fetched whole, its index not trusted", s)
        layer = spans["annotations"]["io.imgfs.layer.digest"]
        t.tap.ok(f"fetching the layer whole: layer {layer}: the span table of its imgfs index: blob {spans['digest']}"
                 in m.stderr(), "with a warning that names the layer and its damaged span table", m.stderr())
        t.tap.ok(read(f"{mnt}/etc/hostname") == b"changed\n", "and reads right")
        m.umount()


run_file(suite)
