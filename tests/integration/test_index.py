#!/usr/bin/env python3
"""imgfs index push and lazy mounts of plain gzip, zstd and tar layers: the
index is stored as an OCI artifact referring to the image (tag fallback on
docker-registry, which has no referrers API), a clean cache then mounts the
unmodified image without fetching a layer whole, reads fetch verified spans
only, and corrupt spans or a corrupt index never yield wrong bytes."""

import errno
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import (Mount, Registry, Tap, diff_snapshots, imgfs_stats, require_root_and_fuse, run,  # noqa: E402
                     skopeo_umoci_unpack, snapshot, workspace, IMGFS)
from images import deterministic_bytes, push_rich  # noqa: E402

tap = Tap()
require_root_and_fuse(tap)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def errno_of_read(path):
    try:
        read(path)
    except OSError as e:
        return e.errno
    return 0


with workspace() as work:
    reg = Registry(work)
    try:
        manifest_digest, _ = push_rich(reg, "test/rich", "mixed", ["gzip", "zstd", "none"])
        push_rich(reg, "test/rich", "gzip", ["gzip", "gzip", "gzip"], docker=True)
        want = snapshot(skopeo_umoci_unpack(reg, "test/rich:gzip", work))
        ref = f"{reg.host}/test/rich:mixed"

        r = run([IMGFS, "index", "push", "--cache", os.path.join(work, "cache-push"), ref])
        artifact = r.stdout.decode().strip()
        tap.ok(r.returncode == 0 and artifact.startswith("sha256:"), "imgfs index push prints the artifact digest",
               r.stderr.decode())
        _, _, body = reg._request("GET", f"/v2/test/rich/manifests/sha256-{manifest_digest.split(':')[1]}",
                                  headers={"Accept": "application/vnd.oci.image.index.v1+json"})
        listed = json.loads(body)["manifests"]
        tap.ok([(m["digest"], m.get("artifactType")) for m in listed] == [(artifact, "application/vnd.imgfs.index.v1")],
               "without a referrers API the sha256-<hex> tag lists the index", listed)
        _, _, body = reg._request("GET", f"/v2/test/rich/manifests/{artifact}",
                                  headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        art = json.loads(body)
        tap.ok(art["subject"]["digest"] == manifest_digest and len(art["layers"]) == 6,
               "the artifact refers to the image and has an index and a span table per layer", art.get("subject"))
        r = run([IMGFS, "index", "push", "--cache", os.path.join(work, "cache-push"), ref])
        _, _, body = reg._request("GET", f"/v2/test/rich/manifests/sha256-{manifest_digest.split(':')[1]}",
                                  headers={"Accept": "application/vnd.oci.image.index.v1+json"})
        tap.ok(r.returncode == 0 and len(json.loads(body)["manifests"]) == 1, "pushing again lists it once")

        # -- a clean cache mounts the unmodified image lazily from the first byte
        mnt = os.path.join(work, "mnt")
        m = Mount(ref, mnt, os.path.join(work, "cache-a"), ["--prefetch", "none"])
        if tap.ok(m.ok, "mount on a clean cache", m.stderr()):
            s = imgfs_stats(mnt)
            tap.ok(s["bytes_fetched_whole"] == 0 and s["bytes_fetched_ranges"] == 0,
                   "mounting fetched no layer: only the index", s)
            tap.ok(read(f"{mnt}/usr/share/many/f1234") == b"file 1234\n", "a small file of the big gzip layer reads")
            s = imgfs_stats(mnt)
            tap.ok(0 < s["bytes_fetched_ranges"] <= 1 << 20 and s["range_requests"] <= 4,
                   "reading it fetched a few verified spans, not the 8 MiB layer", s)
            big = deterministic_bytes(1, 8 << 20)
            with open(f"{mnt}/usr/big.bin", "rb") as f:
                f.seek(6 << 20)
                tap.ok(f.read(4096) == big[6 << 20:(6 << 20) + 4096], "a read in the middle of a large file")
            got = snapshot(mnt)
            tap.ok(got == want, "the lazily mounted tree equals the unpack, entry by entry (gzip, zstd, tar layers)",
                   diff_snapshots(want, got))
            m.umount()

        # -- imgfs record: the files a workload read become the next start's prefetch set
        m = Mount(ref, mnt, os.path.join(work, "cache-f"), ["--prefetch", "none"])
        if tap.ok(m.ok, "mount to record a workload", m.stderr()):
            read(f"{mnt}/usr/share/many/f0500")
            read(f"{mnt}/etc/hostname")
            with open(f"{mnt}/usr/big.bin", "rb") as f:
                f.seek(3 << 20)
                f.read(100)
            read(f"{mnt}/usr/share/many/f0500")
            listing = os.path.join(work, "workload.list")
            r = run([IMGFS, "record", mnt, listing])
            lines = open(listing).read().splitlines() if r.returncode == 0 else r.stderr
            tap.ok(lines == ["/usr/share/many/f0500", "/etc/hostname", "/usr/big.bin"],
                   "imgfs record lists the files read, in the order of their first read", lines)
            m.umount()
            m = Mount(ref, mnt, os.path.join(work, "cache-g"), ["--prefetch", "landmark", "--prefetch-list", listing])
            if tap.ok(m.ok, "mount with --prefetch-list", m.stderr()):
                deadline = time.time() + 60
                while not imgfs_stats(mnt)["prefetch_done"] and time.time() < deadline:
                    time.sleep(0.1)
                before = imgfs_stats(mnt)
                ok_bytes = (read(f"{mnt}/usr/share/many/f0500") == b"file 500\n" and
                            read(f"{mnt}/etc/hostname") == b"changed\n" and
                            read(f"{mnt}/usr/big.bin") == deterministic_bytes(1, 8 << 20))
                after = imgfs_stats(mnt)
                tap.ok(before["prefetch_done"] and 0 < before["bytes_prefetched"] < before["image_size"] and ok_bytes and
                       after["range_requests"] == before["range_requests"],
                       "the listed files were fetched ahead: reading them needs no request", (before, after))
                m.umount()

        # -- a size cap on the cache: least recently used objects go, reads stay right
        cache_e = os.path.join(work, "cache-e")
        m = Mount(ref, mnt, cache_e, ["--prefetch", "none", "--cache-size", "1M"])
        if tap.ok(m.ok, "mount with --cache-size 1M", m.stderr()):
            got = snapshot(mnt)

            def cache_bytes():
                total = 0
                for sub in ("blobs", "chunks", "index"):
                    for dirpath, _, files in os.walk(os.path.join(cache_e, sub)):
                        total += sum(os.lstat(os.path.join(dirpath, f)).st_blocks * 512 for f in files)
                return total
            used = cache_bytes()
            tap.ok(got == want and used <= 1 << 20,
                   "reading the whole image (8.7 MB) through a 1 MiB cache: right bytes, cache within its cap",
                   (used, diff_snapshots(want, got)))
            m.umount()
        r = run([IMGFS, "mount", "--cache-size", "lots", ref, mnt])
        tap.ok(r.returncode == 2 and b"--cache-size" in r.stderr, "an invalid --cache-size is refused", r.stderr)

        # -- background fetch of the whole image fetches each span once
        m = Mount(ref, mnt, os.path.join(work, "cache-b"))
        if tap.ok(m.ok, "mount with the default background fetch", m.stderr()):
            deadline = time.time() + 120
            while not imgfs_stats(mnt)["prefetch_done"] and time.time() < deadline:
                time.sleep(0.2)
            s = imgfs_stats(mnt)
            tap.ok(s["prefetch_done"] == 1 and s["bytes_fetched_ranges"] <= s["image_size"] and
                   s["bytes_fetched_whole"] == 0, "the background fetch takes at most the image's size", s)
            before = imgfs_stats(mnt)["range_requests"]
            got = snapshot(mnt)
            tap.ok(got == want and imgfs_stats(mnt)["range_requests"] == before,
                   "afterwards every read is served from the cache", diff_snapshots(want, got))
            m.umount()

        # -- corrupt bytes from the registry: EIO, never wrong bytes
        with open(reg.blob_path(json.loads(reg._request(
                "GET", "/v2/test/rich/manifests/mixed",
                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})[2])["layers"][0]["digest"]), "r+b") as f:
            f.seek(5 << 20)
            data = f.read(16)
            f.seek(5 << 20)
            f.write(bytes(b ^ 0xff for b in data))
        m = Mount(ref, mnt, os.path.join(work, "cache-c"), ["--prefetch", "none"])
        if tap.ok(m.ok, "mount with a damaged layer in the registry", m.stderr()):
            tap.ok(errno_of_read(f"{mnt}/usr/big.bin") == errno.EIO, "a read through the damaged span fails with EIO")
            tap.ok(read(f"{mnt}/usr/share/many/f0007") == b"file 7\n", "files in intact spans still read")
            m.umount()

        # -- a damaged index is not used: the layer is fetched whole instead
        art_layers = art["layers"]
        spans = next(d for d in art_layers if d["mediaType"] == "application/vnd.imgfs.layer-spans.v1"
                     and d["annotations"]["io.imgfs.layer.digest"] != art_layers[0]["annotations"]["io.imgfs.layer.digest"])
        with open(reg.blob_path(spans["digest"]), "r+b") as f:
            f.seek(40)
            f.write(b"\0" * 8)
        m = Mount(ref, mnt, os.path.join(work, "cache-d"), ["--prefetch", "none"])
        if tap.ok(m.ok, "mount with a damaged span table in the registry", m.stderr()):
            s = imgfs_stats(mnt)
            tap.ok(s["bytes_fetched_whole"] > 0, "that layer was fetched whole, its index not trusted", s)
            tap.ok(read(f"{mnt}/etc/hostname") == b"changed\n", "and reads right")
            m.umount()
    finally:
        reg.stop()

sys.exit(tap.done())
