#!/usr/bin/env python3
"""Bad references, registry errors and hostile layers: one clear line on
stderr naming the object, a non-zero exit, no crash, no hang, nothing written
outside the cache."""

import errno
import gzip
import io
import json
import os
import socket
import subprocess
import signal
import sys
import tarfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from imgfs_test.cases import Suite, run_file  # noqa: E402
from imgfs_test.harness import (IMGFS, Entry, Mount, Registry, make_tar, push_image, compress,  # noqa: E402
                                LAYER_TYPES, MT_OCI_MANIFEST, MT_OCI_CONFIG, digest_of)

suite = Suite()


def one_clear_line(m, *needles):
    err = m.stderr().strip()
    lines = err.splitlines()
    return (not m.ok and m.result.returncode not in (-6, -11, 134, 139) and len(lines) == 1
            and lines[0].startswith("imgfs: ") and all(n in err for n in needles))


def push_raw_layer(reg, repo, tag, blob, media_type):
    """An image whose single layer is exactly `blob`, whatever it holds."""
    d = reg.push_blob(repo, blob)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [d]}}).encode()
    cd = reg.push_blob(repo, config)
    manifest = {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
                "config": {"mediaType": MT_OCI_CONFIG, "digest": cd, "size": len(config)},
                "layers": [{"mediaType": media_type, "digest": d, "size": len(blob)}]}
    reg.push_manifest(repo, tag, manifest, MT_OCI_MANIFEST)
    return d


def tar_header(name, size, typeflag=tarfile.REGTYPE):
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.type = typeflag
    return ti.tobuf(format=tarfile.GNU_FORMAT)


@suite.setup
def setup(t):
    t.reg = Registry(t.work)
    t.on_exit(t.reg.stop)
    t.cache = os.path.join(t.work, "cache")
    t.mnt = os.path.join(t.work, "mnt")
    t.mount = lambda ref, *extra: Mount(ref, t.mnt, t.cache, extra)


@suite.case
def malformed_refs(t):
    for bad in ("UPPER/case", "name:", "host:port:bad/x", "a@sha256:123", "x//y", ""):
        m = t.mount(bad)
        t.tap.ok(one_clear_line(m, f'"{bad}"', "invalid reference"), f"malformed reference {bad!r} is rejected",
                 m.stderr())


@suite.case
def missing_image(t):
    m = t.mount(f"{t.reg.host}/no/such:tag")
    t.tap.ok(one_clear_line(m, f"{t.reg.host}/no/such:tag", "manifest unknown"),
             "a missing image says manifest unknown and names the ref", m.stderr())


@suite.case
def error_line(t):
    """A program that drives imgfs reads its error from IMGFS_ERROR_FD, not from
    the words on stderr."""
    r, w = os.pipe()
    ref = f"{t.reg.host}/no/such:tag"
    p = subprocess.run([IMGFS, "mount", "--cache", t.cache, ref, t.mnt], env=dict(os.environ, IMGFS_ERROR_FD=str(w)),
                       pass_fds=(w,), capture_output=True, text=True, timeout=60)
    os.close(w)
    with os.fdopen(r) as f:
        line = f.read()
    t.tap.ok(p.returncode == 1 and line.startswith(f"{errno.ENOENT} ") and ref in line and "manifest unknown" in line
             and line.count("\n") == 1, "the error line has the errno (ENOENT) and the message naming the ref",
             f"exit {p.returncode}, line {line!r}")
    t.tap.ok(p.stderr == "", "the error goes to the error line instead of stderr", p.stderr)
    p = subprocess.run([IMGFS, "mount", "--prefetch", "sometimes", "x", t.mnt],
                       env=dict(os.environ, IMGFS_ERROR_FD="9"), capture_output=True, text=True, timeout=60)
    t.tap.ok(p.returncode == 2 and "invalid --prefetch" in p.stderr,
             "a usage error exits 2; an IMGFS_ERROR_FD that is not open is ignored", p.stderr)


@suite.case
def unreachable_registry(t):
    m = t.mount("127.0.0.1:1/nothing/listens:here")
    t.tap.ok(one_clear_line(m, "127.0.0.1:1/nothing/listens"), "an unreachable registry is a clear error",
             m.stderr())


@suite.case
def silent_registry(t):
    """A registry that accepts and never answers is said within seconds, not
    after minutes of silence."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    ref = f"127.0.0.1:{silent.getsockname()[1]}/quiet/image:v1"
    os.makedirs(t.mnt, exist_ok=True)
    p = subprocess.Popen([IMGFS, "mount", "--cache", t.cache, ref, t.mnt], stderr=subprocess.PIPE)
    try:
        start = time.monotonic()
        line = p.stderr.readline()
        took = time.monotonic() - start
        t.tap.ok(b"no answer from the registry" in line and ref.encode() in line and took < 15,
                 f"after {took:.1f} s: {line.decode().strip()}", line)
    finally:
        p.kill()
        p.wait()
        silent.close()


@suite.case
def corrupt_blob(t):
    """A blob corrupted in the registry's storage: same size, other bytes."""
    good = make_tar([Entry("f", data=b"A" * 10000)])
    push_image(t.reg, "bad/corrupt", "v1", [(good, "gzip")])
    layer_digest = digest_of(compress(good, "gzip"))
    path = t.reg.blob_path(layer_digest)
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0xFF
        f.seek(0)
        f.write(data)
    m = t.mount(f"{t.reg.host}/bad/corrupt:v1")
    t.tap.ok(one_clear_line(m, layer_digest, "does not match"), "a blob whose digest does not match is refused",
             m.stderr())
    blobs = os.path.join(t.cache, "blobs", "sha256")
    t.tap.ok(not os.path.exists(os.path.join(blobs, layer_digest.split(":")[1])),
             "the corrupt blob is not kept in the cache")


@suite.case
def escaping_entry(t):
    escape = io.BytesIO()
    with tarfile.open(fileobj=escape, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("../../escaped")
        ti.size = 3
        tf.addfile(ti, io.BytesIO(b"bad"))
    d = push_raw_layer(t.reg, "bad/escape", "v1", escape.getvalue(), LAYER_TYPES["none"])
    m = t.mount(f"{t.reg.host}/bad/escape:v1")
    t.tap.ok(one_clear_line(m, d, "leaves the image root"), "a ../ entry is rejected naming the layer", m.stderr())
    t.tap.ok(not any(os.path.exists(os.path.join(p, "escaped")) for p in (t.work, os.path.dirname(t.work), "/tmp")),
             "nothing was written outside the cache")


@suite.case
def hardlink_to_missing(t):
    d = push_raw_layer(t.reg, "bad/hardlink", "v1", make_tar([Entry("h", "hardlink", link="missing")]),
                       LAYER_TYPES["none"])
    m = t.mount(f"{t.reg.host}/bad/hardlink:v1")
    t.tap.ok(one_clear_line(m, d, "missing"), "a hardlink to a missing entry is rejected", m.stderr())


@suite.case
def broken_streams(t):
    full = gzip.compress(make_tar([Entry("f", data=os.urandom(200000))]), mtime=0)
    d = push_raw_layer(t.reg, "bad/truncated", "v1", full[: len(full) // 2], LAYER_TYPES["gzip"])
    m = t.mount(f"{t.reg.host}/bad/truncated:v1")
    t.tap.ok(one_clear_line(m, d), "a truncated gzip layer is a clear error", m.stderr())

    d = push_raw_layer(t.reg, "bad/zstd", "v1", b"\x28\xb5\x2f\xfd" + os.urandom(5000), LAYER_TYPES["zstd"])
    m = t.mount(f"{t.reg.host}/bad/zstd:v1")
    t.tap.ok(one_clear_line(m, d), "a corrupt zstd layer is a clear error", m.stderr())

    d = push_raw_layer(t.reg, "bad/nottar", "v1", os.urandom(3000), LAYER_TYPES["none"])
    m = t.mount(f"{t.reg.host}/bad/nottar:v1")
    t.tap.ok(one_clear_line(m, d), "a layer that is not a tar stream is a clear error", m.stderr())


@suite.case
def absurd_tar_size(t):
    """A header that claims 1 TiB of data followed by a few bytes."""
    absurd = tar_header("huge", 1 << 40) + b"x" * 1024
    d = push_raw_layer(t.reg, "bad/absurd", "v1", absurd, LAYER_TYPES["none"])
    m = t.mount(f"{t.reg.host}/bad/absurd:v1")
    t.tap.ok(one_clear_line(m, d), "a tar header with an absurd size is a clear error", m.stderr())


@suite.case
def zstd_bomb(t):
    """1.5 GiB of zeros in a few hundred KiB, in entries that each look
    plausible, so only the bound on the whole stream stops it."""
    zstd = subprocess.Popen(["zstd", "-q", "-c", "-1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out = []
    reader = threading.Thread(target=lambda: out.append(zstd.stdout.read()))
    reader.start()
    zero = bytes(1 << 20)
    for i in range(3):
        zstd.stdin.write(tar_header(f"zeros{i}", 512 << 20))
        for _ in range(512):
            zstd.stdin.write(zero)
    zstd.stdin.write(bytes(1024))
    zstd.stdin.close()
    reader.join()
    zstd.wait()
    d = push_raw_layer(t.reg, "bad/bomb", "v1", out[0], LAYER_TYPES["zstd"])
    m = t.mount(f"{t.reg.host}/bad/bomb:v1")
    t.tap.ok(one_clear_line(m, d, "expands beyond"), "a decompression bomb is bounded", m.stderr())


@suite.case
def symlink_loop(t):
    """Symlink loops are data: the mount works and the kernel reports ELOOP."""
    push_image(t.reg, "bad/loop", "v1", [(make_tar([Entry("a", "symlink", link="b"),
                                                    Entry("b", "symlink", link="a")]), "gzip")])
    m = t.mount(f"{t.reg.host}/bad/loop:v1")
    if t.tap.ok(m.ok, "an image with a symlink loop mounts", m.stderr()):
        try:
            os.stat(os.path.join(t.mnt, "a"))
            t.tap.ok(False, "following a symlink loop fails with ELOOP")
        except OSError as e:
            t.tap.ok(e.errno == errno.ELOOP, "following a symlink loop fails with ELOOP", e)
        m.umount()


@suite.case
def oversized_manifest(t):
    """Served by the registry if it accepts one."""
    big = {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
           "config": {"mediaType": MT_OCI_CONFIG, "digest": digest_of(b"{}"), "size": 2},
           "layers": [], "annotations": {"pad": "x" * (5 << 20)}}
    t.reg.push_blob("bad/big", b"{}")
    try:
        t.reg.push_manifest("bad/big", "v1", big, MT_OCI_MANIFEST)
    except Exception as e:  # the registry itself refused it: nothing to serve
        t.tap.ok(True, f"a manifest over the size cap is refused (by the registry: {e})")
        return
    m = t.mount(f"{t.reg.host}/bad/big:v1")
    t.tap.ok(one_clear_line(m, "bad/big:v1", "larger than allowed"), "a manifest over the size cap is refused",
             m.stderr())


def mount_source(point):
    """The source mountinfo shows for the mount on point, or None."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == point:
                return fields[fields.index("-") + 2]
    return None


@suite.case
def mount_points(t):
    """DIR/ as tab completion writes it; a busy or non-empty DIR; what
    mount and df show."""
    push_image(t.reg, "good/small", "v1", [(make_tar([Entry("f", data=b"small\n")]), "gzip")])
    ref = f"{t.reg.host}/good/small:v1"
    mnt = os.path.join(t.work, "mnt-points")
    os.makedirs(mnt)
    r = subprocess.run([IMGFS, "mount", "--cache", t.cache, ref, mnt + "/"], capture_output=True, timeout=30)
    t.tap.ok(r.returncode == 0 and open(os.path.join(mnt, "f"), "rb").read() == b"small\n",
             "imgfs mount REF DIR/ (a trailing slash) mounts and returns", r.stderr)
    t.tap.ok(mount_source(mnt) == ref, "mount, df and findmnt show the image reference as the source",
             mount_source(mnt))
    again = Mount(ref, mnt, t.cache)
    t.tap.ok(not again.ok and "mount point already" in again.stderr() and mount_source(mnt) == ref,
             "a second mount on the same DIR is refused", again.stderr())
    r = subprocess.run([IMGFS, "umount", mnt + "/"], capture_output=True, timeout=30)
    t.tap.ok(r.returncode == 0 and mount_source(mnt) is None, "imgfs umount DIR/ unmounts", r.stderr)
    with open(os.path.join(mnt, "mine"), "w") as f:
        f.write("keep me")
    m = Mount(ref, mnt, t.cache)
    t.tap.ok(not m.ok and "not empty" in m.stderr() and "--nonempty" in m.stderr(),
             "a mount over a directory that holds files is refused, naming the option that allows it", m.stderr())
    m = Mount(ref, mnt, t.cache, ["--nonempty"])
    t.tap.ok(m.ok and os.listdir(mnt) == ["f"], "--nonempty mounts over it", m.stderr())
    m.umount()
    t.tap.ok(os.listdir(mnt) == ["mine"], "and the files are there again after the unmount")


@suite.case
def umount_only_imgfs(t):
    """imgfs umount refuses what is not an imgfs mount, and never hangs on a
    daemon that stopped answering."""
    r = subprocess.run(["unshare", "-m", "--propagation", "private", IMGFS, "umount", "/proc"],
                       capture_output=True, timeout=30)  # a namespace of its own: /proc stays whatever happens
    t.tap.ok(r.returncode == 1 and b"proc mount, not an imgfs one" in r.stderr,
             "imgfs umount /proc is refused", r.stderr)
    r = subprocess.run([IMGFS, "umount", t.work], capture_output=True, timeout=30)
    t.tap.ok(r.returncode == 1 and b"not a mount point" in r.stderr, "so is a directory that is no mount", r.stderr)
    push_image(t.reg, "good/stopped", "v1", [(make_tar([Entry("f", data=b"x")]), "gzip")])
    mnt = os.path.join(t.work, "mnt-stopped")
    m = Mount(f"{t.reg.host}/good/stopped:v1", mnt, t.cache)
    if not t.tap.ok(m.ok, "mount", m.stderr()):
        return
    pid = int(os.getxattr(mnt, "user.imgfs.pid"))
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        r = subprocess.run([IMGFS, "umount", mnt], capture_output=True, timeout=30)
        took = time.monotonic() - start
        t.tap.ok(r.returncode == 0 and b"does not answer" in r.stderr and mount_source(mnt) is None and took < 10,
                 f"a stopped daemon: umount detaches the mount lazily and says so ({took:.1f} s)", r.stderr)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGCONT)


run_file(suite)
