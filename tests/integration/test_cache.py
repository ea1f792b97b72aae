#!/usr/bin/env python3
"""The cache is private and verified: no other user reads it, a cache that
another user owns or may write is refused, and a cached object changed on
disk is fetched again instead of used."""

import errno
import json
import os
import stat
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from imgfs_test.cases import Suite, run_file  # noqa: E402
from imgfs_test.harness import Entry, IMGFS, Mount, Registry, as_user, make_tar, push_image, run  # noqa: E402

suite = Suite()
OTHER_UID = 1001
SECRET = b"root:$6$secret-hash:19000:0:99999:7:::\n"


@suite.setup
def setup(t):
    os.chmod(t.work, 0o755)  # another user may reach the caches below, if their modes let them
    t.reg = Registry(t.work)
    t.on_exit(t.reg.stop)
    t.config_extra = {"config": {"Cmd": ["/bin/true"], "Env": ["PATH=/bin"]}}
    push_image(t.reg, "test/private", "v1",
               [(make_tar([Entry("etc", "dir"), Entry("etc/shadow", data=SECRET, mode=0o600)]), "gzip")],
               config_extra=t.config_extra)
    t.ref = f"{t.reg.host}/test/private:v1"
    t.mnt = os.path.join(t.work, "mnt")


def layer_digest(t):
    manifest = t.reg._request("GET", "/v2/test/private/manifests/v1",
                              headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})[2]
    return json.loads(manifest)["layers"][0]["digest"]


def walk(root):
    for d, dirs, files in os.walk(root):
        yield d
        for f in files:
            yield os.path.join(d, f)


@suite.case
def nothing_readable_by_others(t):
    cache = os.path.join(t.work, "cache-private")
    m = Mount(t.ref, t.mnt, cache)
    if not t.tap.ok(m.ok, "mount", m.stderr()):
        return
    m.umount()
    open_to_others = [p for p in walk(cache) if os.lstat(p).st_mode & 0o077]
    t.tap.ok(not open_to_others and stat.S_IMODE(os.stat(cache).st_mode) == 0o700,
             "every directory of the cache is 0700 and every object 0600", open_to_others[:10])
    layer = os.path.join(cache, "blobs", "sha256", layer_digest(t).split(":")[1])
    t.tap.ok(as_user(OTHER_UID, lambda: open(layer, "rb").read()) == errno.EACCES and
             as_user(OTHER_UID, lambda: os.listdir(cache)) == errno.EACCES,
             "another user can neither list the cache nor read a layer blob in it")


@suite.case
def old_open_cache_made_private(t):
    cache = os.path.join(t.work, "cache-old")
    os.makedirs(cache, mode=0o755)
    os.chmod(cache, 0o755)
    m = Mount(t.ref, t.mnt, cache)
    t.tap.ok(m.ok and stat.S_IMODE(os.stat(cache).st_mode) == 0o700,
             "a cache directory that others could enter (an older imgfs made it 0755) is made 0700", m.stderr())
    m.umount()


@suite.case
def foreign_cache_refused(t):
    cache = os.path.join(t.work, "cache-foreign")
    os.makedirs(cache, mode=0o700)
    os.chown(cache, OTHER_UID, OTHER_UID)
    m = Mount(t.ref, t.mnt, cache)
    t.tap.ok(not m.ok and cache in m.stderr() and f"uid {OTHER_UID}" in m.stderr() and
             not os.path.exists(os.path.join(cache, "blobs")),
             "a cache directory owned by another user is refused, naming it and its owner", m.stderr())
    m.umount()


@suite.case
def writable_cache_refused(t):
    cache = os.path.join(t.work, "cache-writable")
    os.makedirs(cache)
    os.chmod(cache, 0o773)
    m = Mount(t.ref, t.mnt, cache)
    t.tap.ok(not m.ok and "writable by others" in m.stderr() and cache in m.stderr(),
             "a cache directory others may write is refused", m.stderr())
    m.umount()


@suite.case
def no_home_no_tmp(t):
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_CACHE_HOME", "IMGFS_CACHE")}
    r = as_user_run(["/usr/bin/env", "-i", *[f"{k}={v}" for k, v in env.items() if k == "PATH"], IMGFS, "mount",
                     t.ref, t.mnt])
    t.tap.ok(r.returncode == 1 and b"$HOME" in r.stderr and not os.path.exists("/tmp/.cache/imgfs"),
             "without $HOME a user gets a clear error, not a cache in /tmp", r.stderr)


def as_user_run(argv):
    """argv as OTHER_UID, with nothing of ours in its environment."""
    def drop():
        os.setgroups([])
        os.setgid(OTHER_UID)
        os.setuid(OTHER_UID)
    return run(argv, preexec_fn=drop)


@suite.case
def changed_config_fetched_again(t):
    """A same-size edit of a cached config does not change the container's command."""
    cache = os.path.join(t.work, "cache-edit")
    m = Mount(t.ref, t.mnt, cache)
    if not t.tap.ok(m.ok, "mount to fill the cache", m.stderr()):
        return
    config_path = os.getxattr(t.mnt, "user.imgfs.config-path").decode()
    original = open(config_path, "rb").read()
    m.umount()
    edited = original.replace(b"/bin/true", b"/bin/evil")
    t.tap.ok(len(edited) == len(original) and edited != original, "the edit keeps the size")
    with open(config_path, "r+b") as f:
        f.write(edited)
    m = Mount(t.ref, t.mnt, cache, ["--pull", "never"])
    if t.tap.ok(m.ok, "mount again on the cache with the edited config", m.stderr()):
        served = open(os.getxattr(t.mnt, "user.imgfs.config-path").decode(), "rb").read()
        t.tap.ok(served == original and json.loads(served)["config"]["Cmd"] == ["/bin/true"],
                 "the changed config was not used: it was fetched again", served[:200])
        m.umount()


@suite.case
def changed_layer_fetched_again(t):
    cache = os.path.join(t.work, "cache-layer")
    Mount(t.ref, t.mnt, cache).umount()
    layer = os.path.join(cache, "blobs", "sha256", layer_digest(t).split(":")[1])
    original = open(layer, "rb").read()
    with open(layer, "r+b") as f:
        f.seek(len(original) // 2)
        f.write(bytes([original[len(original) // 2] ^ 0xff]))
    for sub in ("index", "decoded"):  # so that the layer is read from its blob
        d = os.path.join(cache, sub, "sha256")
        for n in os.listdir(d):
            os.unlink(os.path.join(d, n))
    m = Mount(t.ref, t.mnt, cache)
    if t.tap.ok(m.ok, "mount on the cache with a damaged layer blob", m.stderr()):
        t.tap.ok(open(os.path.join(t.mnt, "etc/shadow"), "rb").read() == SECRET and
                 open(layer, "rb").read() == original,
                 "the damaged blob was fetched again and the file reads right")
        m.umount()


run_file(suite)
