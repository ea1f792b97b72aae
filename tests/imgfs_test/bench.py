"""What the benchmarks share: the Debian image pushed as plain gzip
(bench/debian:v1), as eStargz (bench/debian-estargz:v1) and as eStargz laid
out for a workload (bench/debian-estargz-opt:v1), and cache dropping.  Not
a test; imported by tools/bench-*."""

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile

from . import estargz
from .harness import IMGFS, LAYER_TYPES, MT_OCI_CONFIG, MT_OCI_MANIFEST, Entry


def drop_caches():
    subprocess.run(["sync"])
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def tar_entries(tar_bytes):
    out = []
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as t:
        for m in t:
            kind = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir",
                    tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "chr",
                    tarfile.BLKTYPE: "blk", tarfile.FIFOTYPE: "fifo"}.get(m.type)
            if not kind:
                continue
            data = t.extractfile(m).read() if kind == "file" else b""
            out.append(Entry(m.name, kind, data=data, mode=m.mode, uid=m.uid, gid=m.gid, mtime=m.mtime,
                             link=m.linkname, dev=(m.devmajor, m.devminor)))
    return out


def push(reg, repo, blob, media_type, diff_id, annotations=None, config_extra=None):
    d = reg.push_blob(repo, blob)
    layer = {"mediaType": media_type, "digest": d, "size": len(blob)}
    if annotations:
        layer["annotations"] = annotations
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    config.update(config_extra or {})
    config = json.dumps(config).encode()
    manifest = {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                "config": {"mediaType": MT_OCI_CONFIG, "digest": reg.push_blob(repo, config), "size": len(config)},
                "layers": [layer]}
    reg.push_manifest(repo, "v1", manifest, MT_OCI_MANIFEST)
    return layer


def prioritized(entries, wanted):
    """The layout `ctr-remote image optimize` gives an eStargz layer: the
    regular files a workload read (wanted, in the order read) first, each
    after its parent directories, then everything else in its own order.
    Returns (entries, how many come before the prefetch landmark)."""
    by_path = {e.path.strip("/").removeprefix("./"): e for e in entries}
    first, placed = [], set()

    def place(path):
        parent = os.path.dirname(path)
        if parent and parent not in placed:
            place(parent)
        e = by_path.get(path)
        if e is not None and path not in placed:
            first.append(e)
            placed.add(path)

    for path in wanted:
        path = path.strip("/")
        if by_path.get(path) is not None and by_path[path].kind == "file":
            place(path)
    rest = [e for e in entries if e.path.strip("/").removeprefix("./") not in placed]
    return first + rest, len(first)


def rootfs_tar(rootfs):
    return subprocess.run(["tar", "--format=pax", "--numeric-owner", "-C", rootfs, "-cf", "-", "."], check=True,
                          stdout=subprocess.PIPE).stdout


def build_bench_images(reg, rootfs, config_extra=None):
    """Pushes the tree at rootfs twice; returns (tar size, gzip layer, eStargz layer)."""
    tar = rootfs_tar(rootfs)
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    gz = gzip.compress(tar, compresslevel=6, mtime=0)
    gz_layer = push(reg, "bench/debian", gz, LAYER_TYPES["gzip"], diff_id, config_extra=config_extra)
    blob, toc_digest, esgz_diff_id, size = estargz.build(tar_entries(tar))
    es_layer = push(reg, "bench/debian-estargz", blob, LAYER_TYPES["gzip"], esgz_diff_id,
                    {estargz.TOC_ANNOTATION: toc_digest, estargz.SIZE_ANNOTATION: str(size)}, config_extra)
    return len(tar), gz_layer, es_layer


def record_workload(reg, workload, work):
    """What `ctr-remote image optimize` does first: runs the workload on a
    lazy mount of bench/debian-estargz and records the files it read.
    Returns the path of the list."""
    mnt, listing = os.path.join(work, "record-mnt"), os.path.join(work, "workload.list")
    os.makedirs(mnt, exist_ok=True)
    subprocess.run([IMGFS, "mount", "--prefetch=none", "--cache", os.path.join(work, "record-cache"),
                    f"{reg.host}/bench/debian-estargz:v1", mnt], check=True)
    try:
        subprocess.run(["chroot", mnt, *workload], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([IMGFS, "record", mnt, listing], check=True)
    finally:
        subprocess.run([IMGFS, "umount", mnt], check=True)
    return listing


def listed_paths(listing):
    """The paths of a list imgfs record wrote, without the parts read."""
    with open(listing) as f:
        return [line.split("\t@")[0].strip() for line in f if line.strip()]


def opened_bytes(rootfs, listing):
    """The size of the files a recorded workload opened, whole."""
    return sum(os.lstat(os.path.join(rootfs, p.lstrip("/"))).st_size for p in listed_paths(listing))


def push_optimized_estargz(reg, rootfs, listing, config_extra=None):
    """bench/debian-estargz-opt: the tree at rootfs as eStargz with the files
    listing names first, then the prefetch landmark; returns the layer."""
    wanted = listed_paths(listing)
    entries, n_first = prioritized(tar_entries(rootfs_tar(rootfs)), wanted)
    blob, toc_digest, diff_id, size = estargz.build(entries, landmark_after=n_first)
    return push(reg, "bench/debian-estargz-opt", blob, LAYER_TYPES["gzip"], diff_id,
                {estargz.TOC_ANNOTATION: toc_digest, estargz.SIZE_ANNOTATION: str(size)}, config_extra)
