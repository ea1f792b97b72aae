#!/usr/bin/env python3
"""Authentication, redirects and retries, through a registry front that
demands bearer tokens, in front of a real docker-registry."""

import base64
import json
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(__file__))
from authproxy import AuthProxy  # noqa: E402
from harness import Entry, Mount, Registry, Tap, make_tar, push_image, require_root_and_fuse, workspace  # noqa: E402
from images import deterministic_bytes  # noqa: E402
from test_lazy_lib import push_estargz  # noqa: E402

tap = Tap()
require_root_and_fuse(tap)

SECRET = "s3cr3t-pa55word"

with workspace() as work:
    reg = Registry(work)
    proxy = AuthProxy(reg.host, "alice", SECRET, fail_first={"/manifests/v1": [503, 429]})
    try:
        push_image(reg, "private/app", "v1", [(make_tar([Entry("hello", data=b"authenticated\n")]), "gzip"),
                                             (make_tar([Entry("second", data=b"2\n")]), "zstd")])
        ref = f"{proxy.front_host}/private/app:v1"
        cache = os.path.join(work, "cache")
        mnt = os.path.join(work, "mnt")
        env_backup = dict(os.environ)
        os.environ.pop("XDG_RUNTIME_DIR", None)
        os.environ["HOME"] = work

        m = Mount(ref, mnt, cache)
        tap.ok(not m.ok and "private/app" in m.stderr() and "HTTP 401" in m.stderr(),
               "without credentials the token server refuses, and the error says so", m.stderr())

        def write_auth(path, password):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump({"auths": {proxy.front_host: {
                    "auth": base64.b64encode(f"alice:{password}".encode()).decode()}}}, f)

        wrong = os.path.join(work, "wrong-auth.json")
        write_auth(wrong, "wrong-" + SECRET)
        os.environ["REGISTRY_AUTH_FILE"] = wrong
        m = Mount(ref, mnt, cache)
        tap.ok(not m.ok and SECRET not in m.stderr() and "alice" not in m.stderr(),
               "wrong credentials fail without printing them", m.stderr())
        del os.environ["REGISTRY_AUTH_FILE"]

        # ~/.docker/config.json, the last place looked at.
        write_auth(os.path.join(work, ".docker", "config.json"), SECRET)
        proxy.fail_first = {"/manifests/v1": [503, 429]}
        before = proxy.token_requests
        m = Mount(ref, mnt, cache)
        if tap.ok(m.ok, "bearer flow with credentials from ~/.docker/config.json", m.stderr()):
            with open(os.path.join(mnt, "hello"), "rb") as f:
                tap.ok(f.read() == b"authenticated\n", "content read through the authenticated registry")
            m.umount()
        tap.ok(proxy.fail_first["/manifests/v1"] == [], "503 and 429 answers were retried")
        tap.ok(proxy.token_requests - before == 1,
               "one token serves every request of the mount (cached until expiry)",
               proxy.token_requests - before)
        tap.ok(len(proxy.blob_host_auth_headers) >= 3, "blob downloads followed the redirect to another host",
               proxy.blob_host_auth_headers)
        tap.ok(all(h is None for h in proxy.blob_host_auth_headers),
               "the registry's Authorization header is never sent to the redirect target",
               proxy.blob_host_auth_headers)

        # $REGISTRY_AUTH_FILE takes precedence over ~/.docker/config.json.
        write_auth(os.path.join(work, ".docker", "config.json"), "stale")
        good = os.path.join(work, "good-auth.json")
        write_auth(good, SECRET)
        os.environ["REGISTRY_AUTH_FILE"] = good
        m = Mount(ref, mnt, os.path.join(work, "cache2"))
        tap.ok(m.ok, "credentials from $REGISTRY_AUTH_FILE come first", m.stderr())
        m.umount()

        # Lazy reads through the token front and its redirects, on several connections at once.
        first, second = deterministic_bytes(21, 3 << 20), deterministic_bytes(22, 3 << 20)
        push_estargz(reg, "private/lazy", "v1", [[Entry("first", data=first), Entry("second", data=second)]],
                     chunk_size=1 << 20)
        m = Mount(f"{proxy.front_host}/private/lazy:v1", mnt, os.path.join(work, "cache-lazy"), ["--prefetch=none"])
        if tap.ok(m.ok, "mount an eStargz image through the token front", m.stderr()):
            got = {}
            readers = [threading.Thread(target=lambda n=n: got.update({n: open(os.path.join(mnt, n), "rb").read()}))
                       for n in ("first", "second")]
            for t in readers:
                t.start()
            for t in readers:
                t.join()
            tap.ok(got.get("first") == first and got.get("second") == second,
                   "two files read at once, lazily, through tokens and redirects", {n: len(v) for n, v in got.items()})
            m.umount()
        os.environ.clear()
        os.environ.update(env_backup)
    finally:
        proxy.stop()
        reg.stop()

tap.done()
