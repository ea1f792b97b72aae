#!/usr/bin/env python3
"""imgfs store under Debian's podman: containers/storage finds each layer in
the store (additionallayerstores) and runs containers from it lazily.  The
podman storage is the test's own (CONTAINERS_STORAGE_CONF)."""

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from imgfs_test.cases import Suite, run_file  # noqa: E402
from imgfs_test.harness import (Entry, Registry, is_mounted, make_tar, push_image, run,  # noqa: E402
                                skopeo_copy, skopeo_umoci_unpack, IMGFS)
from imgfs_test.images import busybox_layer, deterministic_bytes, rich_layers  # noqa: E402
from imgfs_test.lazy import push_estargz  # noqa: E402

suite = Suite()

BIG_FILES = 40  # of 1 MiB each, incompressible: a layer read lazily shows it
PODMAN_LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def big_entries():
    return [Entry("data", "dir")] + [Entry(f"data/f{i:02d}", data=deterministic_bytes(100 + i, 1 << 20))
                                     for i in range(BIG_FILES)]


def md5(data):
    return hashlib.md5(data).hexdigest()


def store_stats(store):
    out = run([IMGFS, "stats", store]).stdout.decode()
    return {k: (int(v) if v.isdigit() else v) for k, _, v in (line.partition(" ") for line in out.splitlines())}


def ref_dir(store, ref):
    return os.path.join(store, base64.b64encode(ref.encode()).decode())


class Store:
    def __init__(self, t, name, extra=(), env=None):
        self.dir = os.path.join(t.work, name)
        os.makedirs(self.dir, exist_ok=True)
        self.result = run([IMGFS, "store", "--cache", t.cache, *extra, self.dir],
                          env={**os.environ, **(env or {})})
        self.ok = self.result.returncode == 0

    def pid(self):
        return int(os.getxattr(self.dir, "user.imgfs.pid"))

    def stop(self):
        if is_mounted(self.dir):
            if run([IMGFS, "umount", self.dir]).returncode != 0:
                run(["umount", "-l", self.dir])


def podman(t, *args, timeout=180):
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": t.storage_conf}
    return run(["podman", *args], timeout=timeout, env=env)


def podman_run(t, image, *cmd):
    return podman(t, "run", "--rm", "--tls-verify=false", "--network", "none", *PODMAN_LIMITS, image, *cmd)


def layers_from_store(t):
    """How many layers podman's storage took from the store (not pulled)."""
    overlay = os.path.join(t.work, "graph", "overlay")
    if not os.path.isdir(overlay):
        return 0
    return sum(os.path.exists(os.path.join(overlay, d, "additionallayer")) for d in os.listdir(overlay)
               if os.path.isdir(os.path.join(overlay, d)))


@suite.setup
def setup(t):
    if not shutil.which("podman"):
        t.tap.skip_all("podman is not installed")
    t.reg = Registry(t.work)
    t.on_exit(t.reg.stop)
    t.cache = os.path.join(t.work, "cache")
    with open(shutil.which("busybox"), "rb") as f:
        busybox = f.read()

    def layers(name):
        """Layers of their own for each image: podman reuses a layer it has
        (by its uncompressed digest) instead of asking the store."""
        return ([Entry("bin", "dir"), Entry("bin/busybox", data=busybox, mode=0o755), Entry(name, data=b"x")],
                big_entries() + [Entry("data/image", data=name.encode())])
    t.estargz = push_estargz(t.reg, "store/estargz", "v1", layers("estargz"))
    push_estargz(t.reg, "store/own", "v1", layers("own"))
    push_image(t.reg, "store/plain", "v1", [(make_tar(x), "gzip") for x in layers("plain")])
    push_image(t.reg, "store/chunked-source", "v1", [(make_tar(x), "gzip") for x in layers("zstdchunked")])
    push_image(t.reg, "store/indexed", "v1", [(make_tar(x), "gzip") for x in layers("indexed")])
    push_image(t.reg, "store/indexed-zstd", "v1", [(make_tar(x), "zstd") for x in layers("indexed-zstd")])
    push_image(t.reg, "store/rich", "v1", [(x, "gzip") for x in [busybox_layer(), *rich_layers()]])
    policy = os.path.join(t.work, "policy.json")
    with open(policy, "w") as f:
        json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
    r = skopeo_copy(policy, f"docker://{t.reg.host}/store/chunked-source:v1",
                    f"docker://{t.reg.host}/store/zstdchunked:v1", ["--dest-compress-format", "zstd:chunked"])
    made = t.reg.get_manifest("store/zstdchunked", "v1") or {}
    layers_made = [d for d in made.get("layers", []) if set(d.get("annotations") or {}) &
                   {"io.github.containers.zstd-chunked.manifest-checksum",
                    "io.containers.zstd-chunked.manifest-checksum"}]
    t.tap.ok(r.returncode == 0 and len(layers_made) == 2, "skopeo pushes a zstd:chunked copy",
             (r.stderr, made.get("layers")))
    for repo in ("indexed", "indexed-zstd"):
        r = run([IMGFS, "index", "push", "--cache", os.path.join(t.work, "index-cache"),
                 f"{t.reg.host}/store/{repo}:v1"], timeout=300)
        t.tap.ok(r.returncode == 0, f"imgfs index push indexes store/{repo}", r.stderr)
    t.store = Store(t, "store", ["--prefetch", "none"])
    t.on_exit(lambda: t.store.stop())
    t.tap.ok(t.store.ok, "imgfs store mounts", t.store.result.stderr)
    t.storage_conf = os.path.join(t.work, "storage.conf")
    with open(t.storage_conf, "w") as f:
        f.write(f'[storage]\ndriver = "overlay"\ngraphroot = "{t.work}/graph"\nrunroot = "{t.work}/run"\n'
                f'[storage.options]\nadditionallayerstores = ["{t.store.dir}:ref"]\n')
    t.on_exit(lambda: podman(t, "rmi", "-a", "-f"))


@suite.case
def lazy_kinds(t):
    """eStargz, zstd:chunked, indexed gzip and zstd images run lazily: a read of one
    1 MiB file fetches a small part of the 40 MiB layer (whole spans of an
    indexed layer, a few MiB each)."""
    for repo in ("estargz", "zstdchunked", "indexed", "indexed-zstd"):
        before = store_stats(t.store.dir)
        took_before = layers_from_store(t)
        r = podman_run(t, f"{t.reg.host}/store/{repo}:v1", "busybox", "md5sum", "/data/f05")
        after = store_stats(t.store.dir)
        out = r.stdout.decode().split()
        t.tap.ok(r.returncode == 0 and out[:1] == [md5(deterministic_bytes(105, 1 << 20))],
                 f"{repo}: podman run reads the file's bytes", r.stderr)
        t.tap.ok(layers_from_store(t) - took_before == 2 and after["layers_in_use"] - before["layers_in_use"] == 2,
                 f"{repo}: podman took both layers from the store and told it so", after)
        fetched = after["bytes_fetched_ranges"] - before["bytes_fetched_ranges"]
        t.tap.ok(after["bytes_fetched_whole"] == before["bytes_fetched_whole"] and fetched < 10 << 20,
                 f"{repo}: fetched {fetched} bytes of a {BIG_FILES} MiB layer, none whole", after)


@suite.case
def plain_layer_fetched_whole(t):
    """A plain layer with no index is fetched whole, and the store says so."""
    before = store_stats(t.store.dir)
    r = podman_run(t, f"{t.reg.host}/store/plain:v1", "busybox", "md5sum", "/data/f01")
    after = store_stats(t.store.dir)
    t.tap.ok(r.returncode == 0 and r.stdout.decode().split()[:1] == [md5(deterministic_bytes(101, 1 << 20))],
             "plain gzip: podman run reads the file", r.stderr)
    t.tap.ok(after["layers_fetched_whole"] - before["layers_fetched_whole"] == 2,
             "the store counts the layers it fetched whole", after)


def container_listing(t, image):
    script = ("busybox find / -xdev ! -path / | while read -r p; do busybox stat -c '%n|%F|%a|%u|%g' \"$p\"; "
              "[ -f \"$p\" ] && [ ! -L \"$p\" ] && busybox md5sum \"$p\"; done")
    r = podman_run(t, image, "busybox", "sh", "-c", script)
    lines = r.stdout.decode(errors="replace").splitlines()
    return r, lines


def unpack_listing(root):
    lines = []
    kinds = {0o040000: "directory", 0o100000: "regular file", 0o120000: "symbolic link", 0o020000:
             "character special file", 0o060000: "block special file", 0o010000: "fifo"}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = "/" + os.path.relpath(p, root)
            kind = kinds[st.st_mode & 0o170000]
            if kind == "regular file" and st.st_size == 0:
                kind = "regular empty file"
            lines.append(f"{rel}|{kind}|{st.st_mode & 0o7777:o}|{st.st_uid}|{st.st_gid}")
            if kind.startswith("regular"):
                with open(p, "rb") as f:
                    lines.append(f"{md5(f.read())}  {rel}")
    return lines


def comparable(lines):
    """What the image decides: podman's own mounts and files left out."""
    own = ("/dev", "/proc", "/sys", "/run", "/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/etc/mtab")

    def path_of(line):
        return line.split("|")[0] if "|" in line else line.split("  ", 1)[-1]
    return sorted(line for line in lines
                  if not any(path_of(line) == p or path_of(line).startswith(p + "/") for p in own))


@suite.case
def rich_tree(t):
    """A multi-layer image with whiteouts, opaque directories and hardlinks,
    run by podman over the store, equals skopeo + umoci's unpack."""
    umoci = os.path.join(t.work, "umoci")
    os.makedirs(umoci, exist_ok=True)
    want = comparable(unpack_listing(skopeo_umoci_unpack(t.reg, "store/rich:v1", umoci)))
    r, lines = container_listing(t, f"{t.reg.host}/store/rich:v1")
    got = comparable(lines)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    t.tap.ok(r.returncode == 0 and got == want and len(want) > 2000,
             f"find / in the container equals the unpack ({len(want)} lines)",
             f"{r.stderr}\nmissing: {missing[:20]}\nextra: {extra[:20]}")


@suite.case
def store_files(t):
    """info, blob and the TOC digest name of a layer, as containers/storage reads them."""
    ref = f"{t.reg.host}/store/estargz:v1"
    layer = t.estargz[1]
    d = os.path.join(ref_dir(t.store.dir, ref), layer["digest"])
    with open(os.path.join(d, "info")) as f:
        info = json.load(f)
    config = json.loads(t.reg._request("GET", f"/v2/store/estargz/blobs/{config_digest(t, 'estargz')}")[2])
    t.tap.ok(info.get("compressed-diff-digest") == layer["digest"] and info.get("compressed-size") == layer["size"]
             and info.get("diff-digest") == config["rootfs"]["diff_ids"][1] and info.get("compression") == 2,
             "info names the layer's digests, size and compression", info)
    with open(os.path.join(d, "blob"), "rb") as f:
        blob = f.read()
    t.tap.ok("sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"], "blob is the compressed layer")
    toc = layer["annotations"]["containerd.io/snapshot/stargz/toc.digest"]
    by_toc = os.path.join(ref_dir(t.store.dir, ref), toc, "diff")
    t.tap.ok(os.path.isdir(by_toc) and sorted(os.listdir(os.path.join(by_toc, "data")))[:2] == ["f00", "f01"],
             "the layer's TOC digest names the same layer")


def config_digest(t, repo):
    _, _, body = t.reg._request("GET", f"/v2/store/{repo}/manifests/v1",
                                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    return json.loads(body)["config"]["digest"]


@suite.case
def rmi_and_run_again(t):
    """podman rmi releases the layers; the next run takes them again."""
    image = f"{t.reg.host}/store/estargz:v1"
    podman_run(t, image, "busybox", "true")
    before = store_stats(t.store.dir)["layers_in_use"]
    r = podman(t, "rmi", "-f", image)
    released = store_stats(t.store.dir)["layers_in_use"]
    t.tap.ok(r.returncode == 0 and released == before - 2, "podman rmi releases both layers",
             f"{before} -> {released}: {r.stderr}")
    r = podman_run(t, image, "busybox", "md5sum", "/data/f02")
    t.tap.ok(r.returncode == 0 and r.stdout.decode().split()[:1] == [md5(deterministic_bytes(102, 1 << 20))] and
             store_stats(t.store.dir)["layers_in_use"] == before, "and runs it again from the store", r.stderr)


@suite.case
def moved_tag(t):
    """A tag pushed again while the store runs: podman's next pull takes the
    new image's layers from the store too."""
    def push(version):
        files = [Entry("bin", "dir"), Entry("bin/busybox", data=open(shutil.which("busybox"), "rb").read(),
                                            mode=0o755), Entry("version", data=version)]
        push_estargz(t.reg, "store/moving", "latest", [files])
    image = f"{t.reg.host}/store/moving:latest"
    push(b"one\n")
    r = podman_run(t, image, "busybox", "cat", "/version")
    before = store_stats(t.store.dir)["layers_in_use"]
    t.tap.ok(r.returncode == 0 and r.stdout == b"one\n", "the first image of the tag runs", r.stderr)
    push(b"two\n")
    time.sleep(5.5)  # the store asks the registry again at most every 5 s
    r = podman(t, "run", "--rm", "--pull", "always", "--tls-verify=false", "--network", "none", *PODMAN_LIMITS,
               image, "busybox", "cat", "/version")
    t.tap.ok(r.returncode == 0 and r.stdout == b"two\n" and store_stats(t.store.dir)["layers_in_use"] == before + 1,
             "after the tag moved, the new layer comes from the store", (r.stderr, store_stats(t.store.dir)))


@suite.case
def names_that_are_not_images(t):
    """Names that are not a reference, or not a layer of it, answer ENOENT at once."""
    for name in ("not base64!", base64.b64encode(b"UPPER/case:x").decode(),
                 os.path.join(os.path.basename(ref_dir("", f"{t.reg.host}/store/estargz:v1")), "sha256:" + "0" * 64)):
        start = time.monotonic()
        t.tap.ok(not os.path.exists(os.path.join(t.store.dir, name, "diff")) and time.monotonic() - start < 2,
                 f"{name[:40]}: ENOENT at once")


@suite.case
def hanging_registry(t):
    """A registry that accepts and never answers: lookups give up after
    --resolve-timeout, in parallel, and podman is not held."""
    listeners = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        listeners.append(s)
    store = Store(t, "store-hang", ["--resolve-timeout", "2"], env={"IMGFS_STALL_SECONDS": "4"})
    try:
        t.tap.ok(store.ok, "a store with a 2 s resolve timeout mounts", store.result.stderr)
        results = {}

        def look(i, s):
            ref = f"127.0.0.1:{s.getsockname()[1]}/hang/img:v1"
            start = time.monotonic()
            exists = os.path.exists(os.path.join(ref_dir(store.dir, ref), "sha256:" + "1" * 64, "diff"))
            results[i] = (exists, time.monotonic() - start)
        threads = [threading.Thread(target=look, args=(i, s)) for i, s in enumerate(listeners)]
        start = time.monotonic()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        took = time.monotonic() - start
        t.tap.ok(all(not e for e, _ in results.values()) and 1.5 < took < 3.5,
                 f"two lookups of hanging references answer ENOENT together after the timeout ({took:.1f} s)",
                 results)
    finally:
        store.stop()
        for s in listeners:
            s.close()


@suite.case
def killed_store(t):
    """kill -9 of the store's server: its keeper starts another, which
    numbers every layer as before (podman's mounts of them read on), and
    the next podman run takes its layers from the store again; a store
    unmounted and started again on the same directory serves too."""
    image = f"{t.reg.host}/store/own:v1"
    r = podman_run(t, image, "busybox", "md5sum", "/data/f01")
    uses = store_stats(t.store.dir).get("layers_in_use")
    # Started before the kill, it looks its files up and reads them after it.
    reader = podman(t, "run", "-d", "--name", "reader", "--tls-verify=false", "--network", "none", *PODMAN_LIMITS,
                    image, "busybox", "sh", "-c", "sleep 2; busybox md5sum /data/f03 /data/f04")
    time.sleep(0.5)
    pid = t.store.pid()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if t.store.pid() != pid:
                break
        except OSError:
            pass
        time.sleep(0.02)
    stats = store_stats(t.store.dir)
    t.tap.ok(t.store.pid() != pid and stats.get("takeovers") == 1 and stats.get("layers_in_use") == uses,
             "after kill -9 a new server serves the store, with the layers' use counts", (pid, stats))
    waited = podman(t, "wait", "reader")
    logs = podman(t, "logs", "reader").stdout.decode().split()
    podman(t, "rm", "-f", "reader")
    t.tap.ok(reader.returncode == 0 and waited.stdout.decode().strip() == "0" and
             logs[0::2] == [md5(deterministic_bytes(103, 1 << 20)), md5(deterministic_bytes(104, 1 << 20))],
             "a container running on the store's layers reads files it had not opened, after the kill",
             (reader.stderr, waited.stdout, logs))
    r = podman(t, "rmi", "-f", image)
    released = store_stats(t.store.dir)["layers_in_use"]
    r = podman_run(t, image, "busybox", "md5sum", "/data/f02")
    t.tap.ok(r.returncode == 0 and r.stdout.decode().split()[:1] == [md5(deterministic_bytes(102, 1 << 20))] and
             uses and released == uses - 2 and store_stats(t.store.dir)["layers_in_use"] == uses,
             "podman rmi releases the layers through the new server, and the next run takes them from it again",
             (r.stderr, uses, released, store_stats(t.store.dir)))
    podman(t, "rmi", "-f", image)
    r = run([IMGFS, "umount", t.store.dir])
    t.tap.ok(r.returncode == 0 and not is_mounted(t.store.dir), "imgfs umount ends it", r.stderr)
    t.store = Store(t, "store", ["--prefetch", "none"])
    t.tap.ok(t.store.ok, "the store starts again on the same directory", t.store.result.stderr)
    r = podman_run(t, image, "busybox", "md5sum", "/data/f02")
    t.tap.ok(r.returncode == 0 and store_stats(t.store.dir)["layers_in_use"] == 2,
             "the next podman run takes its layers from the store again", (r.stderr, store_stats(t.store.dir)))


run_file(suite)
