#!/usr/bin/env python3
"""containers-registries.conf(5) as podman reads it, through
$CONTAINERS_REGISTRIES_CONF: short names, a remapped docker.io/library,
mirrors (one down, one serving), blocked registries, aliases."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from imgfs_test.cases import Suite, run_file  # noqa: E402
from imgfs_test.faultproxy import FaultProxy  # noqa: E402
from imgfs_test.harness import Entry, Mount, Registry, free_port, make_tar, push_image  # noqa: E402
from imgfs_test.images import deterministic_bytes  # noqa: E402
from imgfs_test.lazy import push_estargz  # noqa: E402

suite = Suite()

PRIMARY = b"from the primary registry\n"
MIRRORED = b"from the mirror\n"


@suite.setup
def setup(t):
    t.reg = Registry(t.work, name="registry-primary")
    t.on_exit(t.reg.stop)
    t.mirror = Registry(t.work, name="registry-mirror")
    t.on_exit(t.mirror.stop)
    push_image(t.reg, "library/busybox", "latest", [(make_tar([Entry("whoami", data=PRIMARY)]), "gzip")])
    push_image(t.mirror, "library/busybox", "latest", [(make_tar([Entry("whoami", data=MIRRORED)]), "gzip")])
    t.dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    t.mnt = os.path.join(t.work, "mnt")
    env_backup = dict(os.environ)
    t.on_exit(lambda: (os.environ.clear(), os.environ.update(env_backup)))
    os.environ["HOME"] = t.work  # no user registries.conf or drop-ins


def conf(t, name, text):
    path = os.path.join(t.work, name + ".conf")
    with open(path, "w") as f:
        f.write(text)
    os.environ["CONTAINERS_REGISTRIES_CONF"] = path
    return path


def mount_whoami(t, ref, cache):
    m = Mount(ref, t.mnt, os.path.join(t.work, "cache-" + cache))
    got = None
    if m.ok:
        with open(os.path.join(t.mnt, "whoami"), "rb") as f:
            got = f.read()
        m.umount()
    return m, got


@suite.case
def docker_library_remapped(t):
    conf(t, "remap", f"""# as a site that keeps Docker Hub's official images in its own registry
unqualified-search-registries = ["docker.io"]

[[registry]]
prefix = "docker.io/library"
location = "{t.reg.host}/library"
""")
    for ref in ("busybox", "docker.io/library/busybox:latest", "index.docker.io/busybox"):
        m, got = mount_whoami(t, ref, "remap")
        t.tap.ok(got == PRIMARY, f"imgfs mount {ref} is served by the registry docker.io/library maps to",
                 m.stderr())


@suite.case
def mirror_down_then_primary(t):
    conf(t, "mirror-down", f"""unqualified-search-registries = ["docker.io"]
[[registry]]
prefix = "docker.io/library"
location = "{t.reg.host}/library"
[[registry.mirror]]
location = "{t.dead}/library"
""")
    m, got = mount_whoami(t, "busybox", "mirror-down")
    t.tap.ok(got == PRIMARY, "a mirror that is down: the primary serves", m.stderr())


@suite.case
def mirror_serves_first(t):
    conf(t, "mirror", f"""unqualified-search-registries = ["docker.io"]
[[registry]]
prefix = "docker.io/library"
location = "{t.dead}/library"
[[registry.mirror]]
location = "{t.mirror.host}/library"
""")
    m, got = mount_whoami(t, "busybox", "mirror")
    t.tap.ok(got == MIRRORED, "mirrors are asked before the primary (which is down here)", m.stderr())
    conf(t, "mirror-digest", f"""unqualified-search-registries = ["docker.io"]
[[registry]]
prefix = "docker.io/library"
location = "{t.dead}/library"
mirror-by-digest-only = true
[[registry.mirror]]
location = "{t.mirror.host}/library"
""")
    m, got = mount_whoami(t, "busybox", "mirror-digest")
    t.tap.ok(got is None and t.dead in m.stderr(),
             "mirror-by-digest-only: a tag goes to the primary alone", m.stderr())


@suite.case
def blocked_registry(t):
    path = conf(t, "blocked", f"""[[registry]]
prefix = "{t.reg.host}/library"
blocked = true
""")
    m, got = mount_whoami(t, f"{t.reg.host}/library/busybox", "blocked")
    t.tap.ok(got is None and "blocked" in m.stderr() and path in m.stderr(),
             "a blocked registry is refused, naming the file that blocks it", m.stderr())


@suite.case
def alias_and_search_order(t):
    conf(t, "alias", f"""unqualified-search-registries = ["{t.dead}", "{t.mirror.host}"]
[aliases]
"primary-box" = "{t.reg.host}/library/busybox"
""")
    m, got = mount_whoami(t, "primary-box", "alias")
    t.tap.ok(got == PRIMARY, "an [aliases] entry names the image", m.stderr())
    m, got = mount_whoami(t, "library/busybox:latest", "search")
    t.tap.ok(got == MIRRORED, "unqualified-search-registries are tried in order", m.stderr())


@suite.case
def alias_cache_first(t):
    """podman's short-name-aliases.conf (root's, in /var/cache) wins over registries.conf's aliases."""
    # No test may reach beyond loopback: a name no alias resolves goes to a dead port.
    conf(t, "alias-cache", f"""unqualified-search-registries = ["{t.dead}"]
[aliases]
"cached-box" = "{t.mirror.host}/library/busybox"
""")
    path = "/var/cache/containers/short-name-aliases.conf"
    saved = open(path, "rb").read() if os.path.exists(path) else None
    os.makedirs(os.path.dirname(path), exist_ok=True)

    def restore():
        if saved is None:
            os.unlink(path)
        else:
            with open(path, "wb") as f:
                f.write(saved)
    t.on_exit(restore)
    with open(path, "w") as f:
        f.write(f'[aliases]\n  "cached-box" = "{t.reg.host}/library/busybox"\n')
    m, got = mount_whoami(t, "cached-box", "alias-cache")
    t.tap.ok(got == PRIMARY, "the alias podman cached wins over the registries.conf one", m.stderr())
    with open(path, "w") as f:
        f.write('[aliases]\n  "cached-box" = ""\n')
    m, got = mount_whoami(t, "cached-box", "alias-cache-reset")
    t.tap.ok(got is None and f"{t.dead}/cached-box" in m.stderr(),
             "an empty cached alias takes it back (the name goes to the search registries)", m.stderr())


@suite.case
def lazy_reads_move_to_the_next_endpoint(t):
    """A mirror that served the manifest goes down mid-mount: lazy reads go on at the primary."""
    mirror = Registry(t.work, name="registry-lazy-mirror")
    primary = Registry(t.work, name="registry-lazy-primary")
    t.on_exit(mirror.stop)
    t.on_exit(primary.stop)
    data = deterministic_bytes(7, 3 << 20)
    layers = [[Entry("data", data=data)]]
    pushed = [push_estargz(reg, "lib/lazyapp", "v1", layers, chunk_size=1 << 20) for reg in (mirror, primary)]
    t.tap.ok(pushed[0] == pushed[1], "the same eStargz image on the mirror and the primary")
    conf(t, "lazy-mirror", f"""[[registry]]
prefix = "lazy.example/app"
location = "{primary.host}/lib/lazyapp"
[[registry.mirror]]
location = "{mirror.host}/lib/lazyapp"
""")
    m = Mount("lazy.example/app:v1", t.mnt, os.path.join(t.work, "cache-lazy-failover"), ["--prefetch=none"])
    if not t.tap.ok(m.ok, "mounted from the mirror", m.stderr()):
        return
    with open(os.path.join(t.mnt, "data"), "rb") as f:
        first = f.read(4096)
        mirror.stop()
        f.seek(2 << 20)
        later = f.read(4096)
    m.umount()
    t.tap.ok(first == data[:4096] and later == data[2 << 20:(2 << 20) + 4096],
             "a read after the mirror went down returns the right bytes")
    t.tap.ok("/v2/lib/lazyapp/blobs/" + pushed[0][0]["digest"] in primary.access_log(),
             "  read from the primary", primary.access_log()[-400:])


@suite.case
def mirror_with_bad_bytes(t):
    """A mirror whose blobs never match their digests is left for the primary, as one that is down."""
    bad = FaultProxy(t.reg.host)
    t.on_exit(bad.stop)
    bad.corrupt_all_blobs = True
    conf(t, "mirror-bad", f"""unqualified-search-registries = ["docker.io"]
[[registry]]
prefix = "docker.io/library"
location = "{t.reg.host}/library"
[[registry.mirror]]
location = "{bad.host}/library"
""")
    m, got = mount_whoami(t, "busybox", "mirror-bad")
    t.tap.ok(got == PRIMARY and bad.corrupted_blobs, "bad bytes from the mirror: the primary's are used",
             (m.stderr(), bad.corrupted_blobs))


@suite.case
def malformed_conf(t):
    path = conf(t, "bad", "[[registry]]\nprefix = \"x\nblocked = yes\n")
    m, got = mount_whoami(t, "busybox", "bad")
    t.tap.ok(got is None and path in m.stderr() and "line 2" in m.stderr(),
             "a malformed registries.conf is named with its line", m.stderr())


run_file(suite)
