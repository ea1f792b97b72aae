#!/usr/bin/env python3
"""Authentication, redirects and retries, through a registry front that
demands bearer tokens, in front of a real docker-registry."""

import base64
import json
import os
import subprocess
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from imgfs_test.authproxy import AuthProxy  # noqa: E402
from imgfs_test.cases import Suite, run_file  # noqa: E402
from imgfs_test.harness import IMGFS, Entry, Mount, Registry, make_tar, push_image  # noqa: E402
from imgfs_test.images import deterministic_bytes  # noqa: E402
from imgfs_test.lazy import push_estargz  # noqa: E402

suite = Suite()

SECRET = "s3cr3t-pa55word"


@suite.setup
def setup(t):
    t.reg = Registry(t.work)
    t.on_exit(t.reg.stop)
    t.proxy = AuthProxy(t.reg.host, "alice", SECRET)
    t.on_exit(t.proxy.stop)
    layers = [(make_tar([Entry("hello", data=b"authenticated\n")]), "gzip"),
              (make_tar([Entry("second", data=b"2\n")]), "zstd")]
    push_image(t.reg, "private/app", "v1", layers)
    t.ref = f"{t.proxy.front_host}/private/app:v1"
    t.mnt = os.path.join(t.work, "mnt")
    env_backup = dict(os.environ)
    t.on_exit(lambda: (os.environ.clear(), os.environ.update(env_backup)))
    os.environ.pop("XDG_RUNTIME_DIR", None)
    os.environ["HOME"] = t.work


def write_auth(t, path, password):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"auths": {t.proxy.front_host: {
            "auth": base64.b64encode(f"alice:{password}".encode()).decode()}}}, f)


def credentials(t, auth_file=None, docker_password=None):
    """Credentials where podman looks: $REGISTRY_AUTH_FILE, then ~/.docker/config.json."""
    os.environ.pop("REGISTRY_AUTH_FILE", None)
    config = os.path.join(t.work, ".docker", "config.json")
    if os.path.exists(config):
        os.unlink(config)
    if docker_password is not None:
        write_auth(t, config, docker_password)
    if auth_file is not None:
        path = os.path.join(t.work, "auth.json")
        write_auth(t, path, auth_file)
        os.environ["REGISTRY_AUTH_FILE"] = path


@suite.case
def no_credentials(t):
    credentials(t)
    m = Mount(t.ref, t.mnt, os.path.join(t.work, "cache-none"))
    t.tap.ok(not m.ok and "private/app" in m.stderr() and "HTTP 401" in m.stderr(),
             "without credentials the token server refuses, and the error says so", m.stderr())
    t.tap.ok("no credentials found" in m.stderr(), "  and that no credentials were found", m.stderr())


@suite.case
def wrong_credentials(t):
    credentials(t, auth_file="wrong-" + SECRET)
    m = Mount(t.ref, t.mnt, os.path.join(t.work, "cache-wrong"))
    t.tap.ok(not m.ok and SECRET not in m.stderr() and "alice" not in m.stderr(),
             "wrong credentials fail without printing them", m.stderr())
    t.tap.ok("credentials from " + os.environ.get("REGISTRY_AUTH_FILE", "?") in m.stderr(),
             "  the error names where the refused credentials came from", m.stderr())


@suite.case
def docker_config(t):
    """~/.docker/config.json, the last place looked at."""
    credentials(t, docker_password=SECRET)
    t.proxy.fail_first = {"/manifests/v1": [503, 429]}
    t.proxy.blob_host_auth_headers.clear()
    before = t.proxy.token_requests
    m = Mount(t.ref, t.mnt, os.path.join(t.work, "cache-docker"))
    if t.tap.ok(m.ok, "bearer flow with credentials from ~/.docker/config.json", m.stderr()):
        with open(os.path.join(t.mnt, "hello"), "rb") as f:
            t.tap.ok(f.read() == b"authenticated\n", "content read through the authenticated registry")
        m.umount()
    t.tap.ok(t.proxy.fail_first["/manifests/v1"] == [], "503 and 429 answers were retried")
    t.tap.ok(t.proxy.token_requests - before == 1,
             "one token serves every request of the mount (cached until expiry)", t.proxy.token_requests - before)
    t.tap.ok(len(t.proxy.blob_host_auth_headers) >= 3, "blob downloads followed the redirect to another host",
             t.proxy.blob_host_auth_headers)
    t.tap.ok(all(h is None for h in t.proxy.blob_host_auth_headers),
             "the registry's Authorization header is never sent to the redirect target",
             t.proxy.blob_host_auth_headers)


@suite.case
def auth_file_first(t):
    """$REGISTRY_AUTH_FILE takes precedence over ~/.docker/config.json."""
    credentials(t, auth_file=SECRET, docker_password="stale")
    m = Mount(t.ref, t.mnt, os.path.join(t.work, "cache-authfile"))
    t.tap.ok(m.ok, "credentials from $REGISTRY_AUTH_FILE come first", m.stderr())
    m.umount()


def install_helper(t, name, password):
    """A docker-credential-NAME on PATH that answers for the front and logs what it was asked."""
    bindir = os.path.join(t.work, "helper-bin")
    os.makedirs(bindir, exist_ok=True)
    log = os.path.join(t.work, f"helper-{name}.log")
    path = os.path.join(bindir, f"docker-credential-{name}")
    with open(path, "w") as f:
        f.write(f"""#!/bin/sh
read -r server
echo "$1 $server" >> {log}
[ "$server" = "{t.proxy.front_host}" ] || {{ echo "credentials not found in native keychain" >&2; exit 1; }}
printf '{{"ServerURL":"%s","Username":"alice","Secret":"{password}"}}' "$server"
""")
    os.chmod(path, 0o755)
    if bindir not in os.environ["PATH"].split(":"):
        os.environ["PATH"] = bindir + ":" + os.environ["PATH"]
    return log


def write_config(t, path, config):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(config, f)


@suite.case
def credential_helpers(t):
    """credHelpers for the registry, before auths; credsStore for the rest (docker's protocol)."""
    credentials(t)
    log = install_helper(t, "imgfstest", SECRET)
    config = os.path.join(t.work, ".docker", "config.json")
    stale = {t.proxy.front_host: {"auth": base64.b64encode(b"alice:stale").decode()}}
    write_config(t, config, {"credHelpers": {t.proxy.front_host: "imgfstest"}, "auths": stale})
    m = Mount(t.ref, t.mnt, os.path.join(t.work, "cache-helper"))
    t.tap.ok(m.ok, "credHelpers: docker-credential-NAME get supplies the credentials", m.stderr())
    m.umount()
    t.tap.ok(SECRET not in m.stderr(), "the secret is not printed")
    with open(log) as f:
        t.tap.ok(f.read().split("\n")[0] == f"get {t.proxy.front_host}",
                 "the helper was asked with 'get' and the registry on stdin")
    write_config(t, config, {"credsStore": "imgfstest"})
    m = Mount(t.ref, t.mnt, os.path.join(t.work, "cache-store"))
    t.tap.ok(m.ok, "credsStore: the default helper for registries without an entry", m.stderr())
    m.umount()
    os.unlink(config)


@suite.case
def identity_tokens(t):
    """An identity token, from an auth file or a helper's <token> user, is exchanged at the token server."""
    credentials(t)
    config = os.path.join(t.work, ".docker", "config.json")
    write_config(t, config, {"auths": {t.proxy.front_host: {"auth": "", "identitytoken": t.proxy.refresh_token}}})
    before = t.proxy.refresh_grants
    m = Mount(t.ref, t.mnt, os.path.join(t.work, "cache-identity"))
    t.tap.ok(m.ok and t.proxy.refresh_grants > before, "an auth file's identitytoken is exchanged (POST, "
             "refresh_token grant)", (m.stderr(), t.proxy.requests[-5:]))
    m.umount()
    t.tap.ok(not any(t.proxy.refresh_token in r for r in t.proxy.requests), "  the token never appears in a URL")
    log = install_helper(t, "idtoken", t.proxy.refresh_token)
    with open(os.path.join(os.path.dirname(log), "helper-bin", "docker-credential-idtoken")) as f:
        script = f.read().replace('"Username":"alice"', '"Username":"<token>"')
    with open(os.path.join(os.path.dirname(log), "helper-bin", "docker-credential-idtoken"), "w") as f:
        f.write(script)
    write_config(t, config, {"credHelpers": {t.proxy.front_host: "idtoken"}})
    before = t.proxy.refresh_grants
    m = Mount(t.ref, t.mnt, os.path.join(t.work, "cache-identity-helper"))
    t.tap.ok(m.ok and t.proxy.refresh_grants > before, "a helper's <token> user is an identity token", m.stderr())
    m.umount()
    os.unlink(config)


@suite.case
def containers_auth_json(t):
    """~/.config/containers/auth.json, where podman login writes without XDG_RUNTIME_DIR."""
    credentials(t)
    path = os.path.join(t.work, ".config", "containers", "auth.json")
    write_auth(t, path, SECRET)
    m = Mount(t.ref, t.mnt, os.path.join(t.work, "cache-containers-auth"))
    t.tap.ok(m.ok, "credentials from ~/.config/containers/auth.json", m.stderr())
    m.umount()
    os.unlink(path)
    other = os.path.join(t.work, "elsewhere")
    write_auth(t, os.path.join(other, "config.json"), SECRET)
    os.environ["DOCKER_CONFIG"] = other
    m = Mount(t.ref, t.mnt, os.path.join(t.work, "cache-docker-config"))
    del os.environ["DOCKER_CONFIG"]
    t.tap.ok(m.ok, "credentials from $DOCKER_CONFIG/config.json", m.stderr())
    m.umount()


@suite.case
def auth_file_alone(t):
    """A named auth file is the only one read, as podman's --authfile."""
    credentials(t, auth_file="wrong-" + SECRET, docker_password=SECRET)
    m = Mount(t.ref, t.mnt, os.path.join(t.work, "cache-alone"))
    t.tap.ok(not m.ok and "401" in m.stderr(),
             "with $REGISTRY_AUTH_FILE set, ~/.docker/config.json is not consulted", m.stderr())
    m.umount()


def login(t, program, password, *extra):
    return subprocess.run([*program, "login", "-u", "alice", "--password-stdin", *extra, t.proxy.front_host],
                          input=password.encode() + b"\n", capture_output=True, timeout=60)


@suite.case
def login_logout(t):
    """imgfs login checks the credentials and keeps them where podman login does; logout forgets them."""
    credentials(t)
    runtime = os.path.join(t.work, "runtime")
    os.makedirs(runtime, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = runtime
    auth = os.path.join(runtime, "containers", "auth.json")
    try:
        r = login(t, [IMGFS], "wrong-" + SECRET)
        t.tap.ok(r.returncode != 0 and b"401" in r.stderr and not os.path.exists(auth)
                 and SECRET.encode() not in r.stderr + r.stdout,
                 "a refused login says so and keeps nothing", r.stderr)
        launch = os.path.join(os.path.dirname(os.path.dirname(IMGFS)), "launcher", "launch")
        r = login(t, [launch], SECRET)
        t.tap.ok(r.returncode == 0 and b"Login Succeeded" in r.stdout and os.path.exists(auth),
                 "launch login writes $XDG_RUNTIME_DIR/containers/auth.json", r.stderr)
        t.tap.ok(os.path.exists(auth) and os.stat(auth).st_mode & 0o777 == 0o600, "  readable by its owner alone")
        m = Mount(t.ref, t.mnt, os.path.join(t.work, "cache-login"))
        t.tap.ok(m.ok, "a mount after login needs no other credentials", m.stderr())
        m.umount()
        r = subprocess.run([IMGFS, "logout", t.proxy.front_host], capture_output=True, timeout=30)
        with open(auth) as f:
            left = json.load(f)
        t.tap.ok(r.returncode == 0 and t.proxy.front_host not in left.get("auths", {}),
                 "logout removes the registry's entry", (r.stderr, left))
        m = Mount(t.ref, t.mnt, os.path.join(t.work, "cache-logout"))
        t.tap.ok(not m.ok and "401" in m.stderr(), "after logout the registry refuses again", m.stderr())
        r = subprocess.run([IMGFS, "login", "-u", "alice", t.proxy.front_host], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30)
        t.tap.ok(r.returncode == 2 and b"--password-stdin" in r.stderr,
                 "without a terminal, login asks for --password-stdin instead of a password in argv", r.stderr)
    finally:
        os.environ.pop("XDG_RUNTIME_DIR", None)


@suite.case
def lazy_through_token_front(t):
    """Lazy reads through the token front and its redirects, on several connections at once."""
    credentials(t, auth_file=SECRET)
    first, second = deterministic_bytes(21, 3 << 20), deterministic_bytes(22, 3 << 20)
    push_estargz(t.reg, "private/lazy", "v1", [[Entry("first", data=first), Entry("second", data=second)]],
                 chunk_size=1 << 20)
    m = Mount(f"{t.proxy.front_host}/private/lazy:v1", t.mnt, os.path.join(t.work, "cache-lazy"), ["--prefetch=none"])
    if t.tap.ok(m.ok, "mount an eStargz image through the token front", m.stderr()):
        got = {}
        readers = [threading.Thread(target=lambda n=n: got.update({n: open(os.path.join(t.mnt, n), "rb").read()}))
                   for n in ("first", "second")]
        for r in readers:
            r.start()
        for r in readers:
            r.join()
        t.tap.ok(got.get("first") == first and got.get("second") == second,
                 "two files read at once, lazily, through tokens and redirects", {n: len(v) for n, v in got.items()})
        m.umount()


@suite.case
def redirect_remembered(t):
    """A blob the registry redirected is read from where it was sent, without
    asking the registry again: one round trip a lazy read instead of two,
    against registries that keep blobs behind a CDN (Docker Hub).  A
    location that the storage refuses (expired) is learnt again through the
    registry, and the read succeeds."""
    credentials(t, auth_file=SECRET)
    files = [Entry(f"f{i}", data=deterministic_bytes(40 + i, 1 << 20)) for i in range(8)]
    push_estargz(t.reg, "private/redirected", "v1", [files], chunk_size=1 << 20)
    mnt = os.path.join(t.work, "mnt-redirected")
    m = Mount(f"{t.proxy.front_host}/private/redirected:v1", mnt, os.path.join(t.work, "cache-redirected"),
              ["--prefetch=none"])
    if not t.tap.ok(m.ok, "mount an eStargz image whose blobs the registry redirects", m.stderr()):
        return
    try:
        def blob_gets():
            return [p for p in t.proxy.requests if "/blobs/" in p]

        before, stored = len(blob_gets()), len(t.proxy.storage_requests)
        # One at a time, each a miss (1 MiB chunks, apart from the read-ahead).
        wrong = [e.path for e in files[::2] if read_file(os.path.join(mnt, e.path)) != e.data]
        ranges = [r for _, r in t.proxy.storage_requests[stored:] if r]
        t.tap.ok(not wrong and len(ranges) >= 4 and len(blob_gets()) - before <= 1,
                 "after the first, ranges of the blob go to the storage host, not the registry",
                 (wrong, len(ranges), blob_gets()[before:]))
        t.proxy.expire_locations()
        before = len(blob_gets())
        wrong = [e.path for e in files[1::2] if read_file(os.path.join(mnt, e.path)) != e.data]
        t.tap.ok(not wrong and len(blob_gets()) - before == 1,
                 "an expired location is learnt again through the registry, once", (wrong, blob_gets()[before:]))
    finally:
        m.umount()


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


run_file(suite)
