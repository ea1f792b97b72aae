"""Test harness: a real docker-registry on loopback, an image writer of our
own, TAP output, and helpers to mount and compare trees.

Everything here runs against real programs: docker-registry (Debian's
package), imgfs itself, skopeo and umoci as the independent reference."""

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request

BUILD_DIR = os.environ.get("IMGFS_BUILD_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "build"))
IMGFS = os.environ.get("IMGFS_BIN", os.path.join(BUILD_DIR, "fs", "imgfs"))

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
    "docker-gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
}


# ---- TAP ---------------------------------------------------------------

class Tap:
    def __init__(self):
        self.n = 0
        self.failed = 0

    def ok(self, cond, name, detail=None):
        self.n += 1
        if not cond:
            self.failed += 1
        print(f"{'ok' if cond else 'not ok'} {self.n} - {name}", flush=True)
        if not cond and detail:
            for line in str(detail).splitlines()[:60]:
                print(f"# {line}", flush=True)
        return cond

    def skip_all(self, why):
        print(f"1..0 # SKIP {why}", flush=True)
        sys.exit(77)

    def done(self):
        print(f"1..{self.n}", flush=True)
        sys.exit(1 if self.failed else 0)


def digest_of(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---- registry ------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TlsFiles:
    """A CA made here with openssl, and a server certificate for 127.0.0.1
    signed by it; with client=True also a client pair the CA signed."""

    def __init__(self, workdir, client=False):
        self.dir = os.path.join(workdir, "tls")
        os.makedirs(self.dir, exist_ok=True)
        p = lambda name: os.path.join(self.dir, name)  # noqa: E731
        self.ca_cert, self.ca_key = p("ca.crt"), p("ca.key")
        self.server_cert, self.server_key = p("server.crt"), p("server.key")
        self.client_cert = p("client.cert") if client else None
        self.client_key = p("client.key") if client else None

        def run(*args):
            subprocess.run(["openssl", *args], check=True, capture_output=True)
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=imgfs test CA",
            "-keyout", self.ca_key, "-out", self.ca_cert)
        # registry.test resolves nowhere: a test reaches it through a proxy.
        san = "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:registry.test"
        pairs = [(self.server_cert, self.server_key, "/CN=127.0.0.1", san)]
        if client:
            pairs.append((self.client_cert, self.client_key, "/CN=imgfs test client", "extendedKeyUsage=clientAuth"))
        for cert, key, subject, ext in pairs:
            run("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", key, "-out", cert + ".csr")
            with open(cert + ".ext", "w") as f:
                f.write(ext + "\n")
            run("x509", "-req", "-in", cert + ".csr", "-CA", self.ca_cert, "-CAkey", self.ca_key,
                "-CAcreateserial", "-days", "2", "-extfile", cert + ".ext", "-out", cert)

    def install(self, certs_d_dir, host, client=True):
        """Puts the CA (and the client pair) where podman looks for HOST."""
        d = os.path.join(certs_d_dir, host)
        os.makedirs(d, exist_ok=True)
        shutil.copy(self.ca_cert, os.path.join(d, "ca.crt"))
        if client and self.client_cert:
            shutil.copy(self.client_cert, os.path.join(d, "client.cert"))
            shutil.copy(self.client_key, os.path.join(d, "client.key"))
        return d


class Registry:
    """docker-registry on 127.0.0.1 with a throwaway configuration and storage."""

    def __init__(self, workdir, tls=None, name="registry", htpasswd=None, storage=None):
        """tls: a TlsFiles; the registry then serves HTTPS only.  htpasswd:
        (user, password) that docker-registry's basic auth (TLS only) accepts.
        storage: another registry's, to serve the same images."""
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.storage = storage or os.path.join(self.dir, "storage")
        self.scheme = "https" if tls else "http"
        self.ssl_context = None
        http_tls = ""
        if tls:
            import ssl
            self.ssl_context = ssl.create_default_context(cafile=tls.ca_cert)
            if tls.client_cert:
                self.ssl_context.load_cert_chain(tls.client_cert, tls.client_key)
            http_tls = f"""  tls:
    certificate: {tls.server_cert}
    key: {tls.server_key}
"""
            if tls.client_cert:
                http_tls += f"""    clientcas:
      - {tls.ca_cert}
"""
        auth = ""
        self.basic = None
        if htpasswd:
            path = os.path.join(self.dir, "htpasswd")
            line = subprocess.run(["htpasswd", "-Bbn", *htpasswd], check=True, capture_output=True).stdout
            with open(path, "wb") as f:
                f.write(line.strip() + b"\n")
            auth = f"""auth:
  htpasswd:
    realm: imgfs-test
    path: {path}
"""
            import base64
            self.basic = "Basic " + base64.b64encode(":".join(htpasswd).encode()).decode()
        config = os.path.join(self.dir, "config.yml")
        with open(config, "w") as f:
            f.write(f"""{auth}version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {self.storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{self.port}
{http_tls}""")
        self.log = open(os.path.join(self.dir, "registry.log"), "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", config], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.scheme}://{self.host}/v2/", timeout=2,
                                            context=self.ssl_context) as r:
                    if r.status == 200:
                        break
            except urllib.error.HTTPError as e:
                if e.code == 401 and self.basic:  # up, and asking for the credentials
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("docker-registry did not start; see " + self.log.name)
            time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def access_log(self):
        with open(self.log.name, "rb") as f:
            return f.read().decode(errors="replace")

    def _request(self, method, path, data=None, headers=None):
        headers = dict(headers or {})
        if self.basic:
            headers["Authorization"] = self.basic
        req = urllib.request.Request(f"{self.scheme}://{self.host}{path}", data=data, method=method,
                                     headers=headers)
        with urllib.request.urlopen(req, timeout=60, context=self.ssl_context) as r:
            return r.status, dict(r.headers), r.read()

    def get_manifest(self, repo, ref, accept="application/vnd.oci.image.manifest.v1+json"):
        """The manifest repo:ref names, parsed; None when there is none."""
        try:
            return json.loads(self._request("GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": accept})[2])
        except urllib.error.HTTPError:
            return None

    def push_blob(self, repo, data):
        digest = digest_of(data)
        try:
            self._request("HEAD", f"/v2/{repo}/blobs/{digest}")
            return digest
        except urllib.error.HTTPError:
            pass
        _, headers, _ = self._request("POST", f"/v2/{repo}/blobs/uploads/")
        location = headers["Location"]
        sep = "&" if "?" in location else "?"
        if location.startswith("/"):
            location = f"{self.scheme}://{self.host}{location}"
        put_headers = {"Content-Type": "application/octet-stream"}
        if self.basic:
            put_headers["Authorization"] = self.basic
        req = urllib.request.Request(f"{location}{sep}digest={digest}", data=data, method="PUT",
                                     headers=put_headers)
        with urllib.request.urlopen(req, timeout=120, context=self.ssl_context) as r:
            assert r.status == 201, r.status
        return digest

    def push_manifest(self, repo, ref, manifest, media_type):
        body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        self._request("PUT", f"/v2/{repo}/manifests/{ref}", data=body, headers={"Content-Type": media_type})
        return digest_of(body)

    def blob_path(self, digest):
        hexd = digest.split(":", 1)[1]
        return os.path.join(self.storage, "docker", "registry", "v2", "blobs", "sha256", hexd[:2], hexd, "data")


# ---- images -------------------------------------------------------------

class Entry:
    """One tar member.  kind: file dir symlink hardlink chr blk fifo."""

    def __init__(self, path, kind="file", data=b"", mode=None, uid=0, gid=0, mtime=1700000000,
                 link="", dev=(0, 0), xattrs=None):
        self.path, self.kind, self.data = path, kind, data
        self.mode = mode if mode is not None else (0o755 if kind == "dir" else 0o644)
        self.uid, self.gid, self.mtime, self.link, self.dev = uid, gid, mtime, link, dev
        self.xattrs = xattrs or {}


TAR_KINDS = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
             "fifo": tarfile.FIFOTYPE}


def tar_header(e):
    """The PAX header block(s) of one entry, without its data."""
    ti = tarfile.TarInfo(e.path)
    ti.type = TAR_KINDS[e.kind]
    ti.mode, ti.uid, ti.gid, ti.mtime = e.mode, e.uid, e.gid, e.mtime
    ti.uname = ti.gname = ""
    if e.kind in ("symlink", "hardlink"):
        ti.linkname = e.link
    if e.kind in ("chr", "blk"):
        ti.devmajor, ti.devminor = e.dev
    if e.xattrs:
        ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
    if e.kind == "file":
        ti.size = len(e.data)
    return ti.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def tar_padding(n):
    return b"\0" * ((-n) % 512)


def make_tar(entries):
    out = io.BytesIO()
    for e in entries:
        out.write(tar_header(e))
        if e.kind == "file":
            out.write(e.data)
            out.write(tar_padding(len(e.data)))
    out.write(b"\0" * 1024)
    return out.getvalue()


def compress(data, how):
    if how in ("gzip", "docker-gzip"):
        return gzip.compress(data, compresslevel=6, mtime=0)
    if how == "zstd":
        return subprocess.run(["zstd", "-q", "-c", "-3"], input=data, stdout=subprocess.PIPE, check=True).stdout
    if how == "none":
        return data
    raise ValueError(how)


def push_image(registry, repo, tag, layers, arch="amd64", docker=False, config_extra=None):
    """layers: list of (tar bytes, compression).  Returns the manifest digest."""
    descriptors, diff_ids = [], []
    for tar, how in layers:
        blob = compress(tar, how)
        d = registry.push_blob(repo, blob)
        mt = LAYER_TYPES["docker-gzip"] if docker and how == "gzip" else LAYER_TYPES[how]
        descriptors.append({"mediaType": mt, "digest": d, "size": len(blob)})
        diff_ids.append(digest_of(tar))
    config = {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids},
              "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}}
    config.update(config_extra or {})
    config_blob = json.dumps(config).encode()
    config_digest = registry.push_blob(repo, config_blob)
    manifest = {"schemaVersion": 2,
                "mediaType": MT_DOCKER_MANIFEST if docker else MT_OCI_MANIFEST,
                "config": {"mediaType": MT_DOCKER_CONFIG if docker else MT_OCI_CONFIG,
                           "digest": config_digest, "size": len(config_blob)},
                "layers": descriptors}
    body = json.dumps(manifest).encode()
    return registry.push_manifest(repo, tag, body, manifest["mediaType"]), len(body)


# ---- mounting -------------------------------------------------------------

def run(cmd, timeout=120, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, **kw)


def skopeo_copy(policy, src, dest, extra=(), timeout=300):
    """skopeo copy between two registries of the test, with a blob-info cache
    of its own: with root's (/var/lib/containers/cache, shared by every run)
    it may take blobs the destination registry already holds in another
    form for the copy (the gzip source of a zstd:chunked one), instead of
    compressing them as asked."""
    os.makedirs("/var/lib/containers/cache", exist_ok=True)
    copy = ["skopeo", "--policy", policy, "copy", "--src-tls-verify=false", "--dest-tls-verify=false", *extra,
            src, dest]
    return run(["unshare", "-m", "sh", "-c", 'mount -t tmpfs imgfs-test /var/lib/containers/cache && exec "$@"',
                "sh", *copy], timeout=timeout)


def imgfs_stats(mnt):
    """What `imgfs stats` prints for the mount on mnt, as a dict of integers."""
    out = run([IMGFS, "stats", mnt]).stdout.decode()
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def stats_after_prefetch(mnt, timeout=30):
    """imgfs_stats once the mount's prefetch is done, or timeout seconds passed."""
    deadline = time.time() + timeout
    while time.time() < deadline and not imgfs_stats(mnt)["prefetch_done"]:
        time.sleep(0.05)
    return imgfs_stats(mnt)


def wait_until(predicate, timeout):
    """predicate's first true value, looked at every 20 ms for timeout seconds;
    its last value when none came."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.02)


def read_no_readahead(path, off):
    """4 KiB at off with the kernel's read-ahead off: bytes or errno."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            return os.pread(fd, 4096, off)
        finally:
            os.close(fd)
    except OSError as e:
        return e.errno


class Mount:
    def __init__(self, ref, mountpoint, cache, extra=()):
        self.dir = mountpoint
        os.makedirs(mountpoint, exist_ok=True)
        self.result = run([IMGFS, "mount", "--cache", cache, *extra, ref, mountpoint])
        self.ok = self.result.returncode == 0

    def stderr(self):
        return self.result.stderr.decode(errors="replace")

    def umount(self):
        if self.ok:
            r = run([IMGFS, "umount", self.dir])
            if r.returncode != 0:
                run(["umount", "-l", self.dir])
            self.ok = False


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


# ---- tree comparison --------------------------------------------------------

def snapshot(root, with_mtime_dirs=True):
    """Everything a user can observe of a tree, keyed by relative path."""
    out = {}
    inode_names = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [""] + sorted(dirnames) + sorted(filenames):
            if name == "" and dirpath != root:
                continue
            full = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            info = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode),
                    "uid": st.st_uid, "gid": st.st_gid}
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(full, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                info["size"] = st.st_size
                info["sha256"] = h.hexdigest()
                info["nlink"] = st.st_nlink
                inode_names.setdefault(st.st_ino, []).append(rel)
            if stat.S_ISLNK(st.st_mode):
                info["link"] = os.readlink(full)
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                info["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            if not stat.S_ISDIR(st.st_mode) or with_mtime_dirs:
                info["mtime"] = st.st_mtime_ns
            if not stat.S_ISLNK(st.st_mode):
                try:
                    info["xattrs"] = {k: os.getxattr(full, k, follow_symlinks=False)
                                      for k in sorted(os.listxattr(full, follow_symlinks=False))
                                      if k.startswith("user.")}
                except OSError:
                    info["xattrs"] = {}
            out[rel] = info
    # Hardlink identity: which names share an inode.
    for names in inode_names.values():
        group = tuple(sorted(names))
        for n in names:
            out[n]["links"] = group
    return out


def diff_snapshots(a, b, limit=40):
    lines = []
    for k in sorted(set(a) | set(b)):
        if k not in a:
            lines.append(f"only in reference: {k}")
        elif k not in b:
            lines.append(f"only in imgfs: {k}")
        elif a[k] != b[k]:
            keys = [x for x in set(a[k]) | set(b[k]) if a[k].get(x) != b[k].get(x)]
            lines.append(f"{k}: " + ", ".join(f"{x}: {a[k].get(x)!r} vs {b[k].get(x)!r}" for x in keys))
        if len(lines) >= limit:
            lines.append("...")
            break
    return "\n".join(lines)


def skopeo_umoci_unpack(registry, ref_path, workdir):
    """Reference unpack by independent tools: skopeo copy to an OCI layout, umoci unpack."""
    policy = os.path.join(workdir, "policy.json")
    with open(policy, "w") as f:
        json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
    layout = os.path.join(workdir, "oci")
    bundle = os.path.join(workdir, "bundle")
    shutil.rmtree(layout, ignore_errors=True)
    shutil.rmtree(bundle, ignore_errors=True)
    r = run(["skopeo", "--policy", policy, "copy", "--src-tls-verify=false",
             f"docker://{registry.host}/{ref_path}", f"oci:{layout}:ref"], timeout=300)
    if r.returncode != 0:
        raise RuntimeError("skopeo copy failed: " + r.stderr.decode(errors="replace"))
    r = run(["umoci", "unpack", "--image", f"{layout}:ref", bundle], timeout=300)
    if r.returncode != 0:
        raise RuntimeError("umoci unpack failed: " + r.stderr.decode(errors="replace"))
    return os.path.join(bundle, "rootfs")


@contextlib.contextmanager
def workspace(prefix="imgfs-test-"):
    d = tempfile.mkdtemp(prefix=prefix)
    try:
        yield d
    finally:
        # Never leave a mount behind, even when a test failed half-way.
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f if line.split()[4].startswith(d)]
        for m in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", m], stderr=subprocess.DEVNULL)
        shutil.rmtree(d, ignore_errors=True)


def as_user(uid, fn):
    """Runs fn in a child process with uid/gid uid; returns its errno (0 on success)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            fn()
        except OSError as e:
            code = e.errno
        except BaseException:
            code = 255
        os.write(w, bytes([code]))
        os._exit(0)
    os.close(w)
    data = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    return data[0] if data else 255


# launch, next to the imgfs under test.
LAUNCH = os.environ.get("LAUNCH_BIN", os.path.join(os.path.dirname(os.path.dirname(IMGFS)), "launcher", "launch"))


def require_root_and_runc(tap):
    """launch's tests: containers under the real runc, on FUSE mounts."""
    if os.geteuid() != 0:
        tap.skip_all("needs root (runc, FUSE mounts)")
    for tool in ("docker-registry", "runc"):
        if not shutil.which(tool):
            tap.skip_all(f"{tool} is not installed (tools/install-deps installs it)")


def mounts_under(path):
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(path)]


def processes_with(text):
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    out.append(int(p))
        except OSError:
            pass
    return out


def leave_no_containers(launch_root, mounts_below):
    """What a failed launch test may leave: the runtime's containers under
    launch_root, the mounts below mounts_below, processes naming launch_root."""
    runtime_root = os.path.join(launch_root, "runtime")
    listed = subprocess.run(["runc", "--root", runtime_root, "list", "-q"], capture_output=True, text=True)
    for cid in listed.stdout.split():
        subprocess.run(["runc", "--root", runtime_root, "delete", "--force", cid], capture_output=True)
    for m in sorted(mounts_under(mounts_below), reverse=True):
        subprocess.run(["umount", "-l", m])
    for pid in processes_with(launch_root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def require_root_and_fuse(tap):
    if os.geteuid() != 0:
        tap.skip_all("needs root (docker-registry on loopback, FUSE with allow_other, umoci as root)")
    if not os.path.exists("/dev/fuse"):
        tap.skip_all("no /dev/fuse")
    for tool in ("docker-registry", "skopeo", "umoci", "zstd"):
        if not shutil.which(tool):
            tap.skip_all(f"{tool} is not installed (tools/install-deps installs it)")
