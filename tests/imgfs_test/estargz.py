"""A small eStargz writer: each file chunk starts a gzip member of its own,
a TOC (stargz.index.json) in its own member, and the 51-byte footer that
points at it.  Written from the format description, for the tests."""

import base64
import datetime
import gzip
import hashlib
import io
import json
import struct
import tarfile

TOC_NAME = "stargz.index.json"
TOC_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"


def _member(data):
    return gzip.compress(data, compresslevel=6, mtime=0)


def footer(toc_offset):
    extra = b"SG" + struct.pack("<H", 22) + (b"%016xSTARGZ" % toc_offset)
    header = b"\x1f\x8b\x08\x04" + b"\x00\x00\x00\x00" + b"\x00\xff" + struct.pack("<H", len(extra)) + extra
    # An empty final stored block, then CRC32 and ISIZE of nothing.
    body = b"\x01\x00\x00\xff\xff" + struct.pack("<II", 0, 0)
    f = header + body
    assert len(f) == 51, len(f)
    return f


def _modtime(mtime):
    return datetime.datetime.fromtimestamp(int(mtime), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build(entries, chunk_size=4 << 20, landmark_after=0, share_below=0, toc_members=1, entries_first=False):
    """entries: harness.Entry list; the first landmark_after of them form the
    prefetch set (0: none, and a .no.prefetch.landmark says so).  Files of
    share_below bytes or fewer share a member with the tar headers around
    them, found by innerOffset, as writers with a minimum chunk size do.
    toc_members > 1 splits the TOC's tar into that many gzip members;
    entries_first puts "entries" before "version" in the TOC's JSON.
    Returns (blob, toc_digest, diff_id, uncompressed_size)."""
    from .harness import tar_header, tar_padding  # the same tar encoding as the other images

    out = io.BytesIO()
    tar_all = io.BytesIO()
    toc = []
    pending = b""  # tar bytes not yet in a member

    def flush():
        nonlocal pending
        if pending:
            out.write(_member(pending))
            tar_all.write(pending)
            pending = b""

    from .harness import Entry
    items = list(entries)
    if landmark_after:
        items.insert(landmark_after, Entry(".prefetch.landmark", data=b"\x00"))
    else:
        items.insert(0, Entry(".no.prefetch.landmark", data=b"\x00"))
    for e in items:
        pending += tar_header(e)
        t = {"name": e.path, "type": {"file": "reg", "dir": "dir", "symlink": "symlink", "hardlink": "hardlink",
                                      "chr": "char", "blk": "block", "fifo": "fifo"}[e.kind],
             "mode": e.mode, "uid": e.uid, "gid": e.gid, "modtime": _modtime(e.mtime)}
        if e.kind in ("symlink", "hardlink"):
            t["linkName"] = e.link
        if e.kind in ("chr", "blk"):
            t["devMajor"], t["devMinor"] = e.dev
        if e.xattrs:
            t["xattrs"] = {k: base64.b64encode(v.encode()).decode() for k, v in e.xattrs.items()}
        if e.kind == "file":
            t["size"] = len(e.data)
            t["digest"] = "sha256:" + hashlib.sha256(e.data).hexdigest()
        toc.append(t)
        if e.kind == "file" and e.data and len(e.data) <= share_below:
            # The member that pending becomes starts where out ends now.
            t.update({"offset": out.tell(), "innerOffset": len(pending), "chunkOffset": 0, "chunkSize": len(e.data),
                      "chunkDigest": "sha256:" + hashlib.sha256(e.data).hexdigest()})
            pending += e.data + tar_padding(len(e.data))
        elif e.kind == "file" and e.data:
            flush()
            for i, start in enumerate(range(0, len(e.data), chunk_size)):
                piece = e.data[start:start + chunk_size]
                record = t if i == 0 else {"name": e.path, "type": "chunk"}
                record.update({"offset": out.tell(), "chunkOffset": start, "chunkSize": len(piece),
                               "chunkDigest": "sha256:" + hashlib.sha256(piece).hexdigest()})
                if i > 0:
                    toc.append(record)
                out.write(_member(piece))
                tar_all.write(piece)
            pending = tar_padding(len(e.data))
    flush()
    toc_json = json.dumps({"entries": toc, "version": 1} if entries_first else {"version": 1, "entries": toc}).encode()
    toc_offset = out.tell()
    toc_tar = io.BytesIO()
    with tarfile.open(fileobj=toc_tar, mode="w", format=tarfile.USTAR_FORMAT) as t:
        ti = tarfile.TarInfo(TOC_NAME)
        ti.size = len(toc_json)
        t.addfile(ti, io.BytesIO(toc_json))
    # The TOC member also carries the end-of-archive blocks (USTAR_FORMAT
    # writes them, padded to a record).
    toc_bytes = toc_tar.getvalue()
    cut = -(-len(toc_bytes) // toc_members)
    for start in range(0, len(toc_bytes), cut):
        out.write(_member(toc_bytes[start:start + cut]))
    tar_all.write(toc_tar.getvalue())
    out.write(footer(toc_offset))
    uncompressed = tar_all.getvalue()
    return (out.getvalue(), "sha256:" + hashlib.sha256(toc_json).hexdigest(),
            "sha256:" + hashlib.sha256(uncompressed).hexdigest(), len(uncompressed))


def file_offsets(blob):
    """{path: blob offset of its first chunk} from a layer's own TOC."""
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as t:
        toc = json.load(t.extractfile(TOC_NAME))
    return {e["name"]: e["offset"] for e in toc["entries"] if e["type"] == "reg" and "offset" in e}
