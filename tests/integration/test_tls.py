#!/usr/bin/env python3
"""Registries that speak TLS, on loopback too: a real docker-registry with a
CA and certificates that the test makes with openssl, trusted the way podman
trusts them (certs.d directories, --cert-dir), never by falling back to
plain HTTP."""

import os
import select
import shutil
import socket
import socketserver
import subprocess
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from imgfs_test.cases import Suite, run_file  # noqa: E402
from imgfs_test.harness import IMGFS, Entry, Mount, Registry, TlsFiles, make_tar, push_image  # noqa: E402

suite = Suite()


class ConnectProxy:
    """An HTTP CONNECT proxy on loopback that sends every tunnel to 127.0.0.1
    (the test's names resolve nowhere else) and records what was asked."""

    def __init__(self):
        self.targets = []
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                line = self.rfile.readline().decode(errors="replace").split()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                if len(line) < 2 or line[0] != "CONNECT":
                    self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                    return
                proxy.targets.append(line[1])
                upstream = socket.create_connection(("127.0.0.1", int(line[1].rsplit(":", 1)[1])))
                self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self.wfile.flush()
                ends = [self.connection, upstream]
                try:
                    while True:
                        ready, _, _ = select.select(ends, [], [], 30)
                        if not ready:
                            return
                        for end in ready:
                            data = end.recv(65536)
                            if not data:
                                return
                            (upstream if end is self.connection else self.connection).sendall(data)
                except OSError:
                    pass
                finally:
                    upstream.close()

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


CONTENT = b"served over TLS\n"


@suite.setup
def setup(t):
    t.tls = TlsFiles(t.work, client=True)
    t.reg = Registry(t.work, tls=t.tls, name="registry-tls")
    t.on_exit(t.reg.stop)
    push_image(t.reg, "secure/app", "v1", [(make_tar([Entry("hello", data=CONTENT)]), "gzip")])
    t.ref = f"{t.reg.host}/secure/app:v1"
    t.mnt = os.path.join(t.work, "mnt")
    env_backup = dict(os.environ)
    t.on_exit(lambda: (os.environ.clear(), os.environ.update(env_backup)))
    os.environ.pop("IMGFS_INSECURE_REGISTRIES", None)


def home(t, name):
    """A fresh $HOME, so that ~/.config/containers/certs.d is the test's."""
    path = os.path.join(t.work, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    os.environ["HOME"] = path
    return path


def reads_hello(t, m, what):
    if t.tap.ok(m.ok, what, m.stderr()):
        with open(os.path.join(t.mnt, "hello"), "rb") as f:
            t.tap.ok(f.read() == CONTENT, "  the file's bytes are the image's")
        m.umount()


@suite.case
def ca_in_user_certs_d(t):
    h = home(t, "home-certs-d")
    t.tls.install(os.path.join(h, ".config", "containers", "certs.d"), t.reg.host)
    reads_hello(t, Mount(t.ref, t.mnt, os.path.join(t.work, "cache-certs-d")),
                "a loopback registry with a CA and client pair in ~/.config/containers/certs.d/HOST:PORT")


@suite.case
def ca_missing_is_an_error(t):
    home(t, "home-empty")
    m = Mount(t.ref, t.mnt, os.path.join(t.work, "cache-no-ca"))
    err = m.stderr()
    print("# " + err.strip().replace("\n", "\n# "))
    t.tap.ok(not m.ok and "certificate" in err and t.reg.host in err and "certs.d" in err,
             "an untrusted certificate fails, naming the registry and where a CA belongs", err)
    t.tap.ok("CN = 127.0.0.1" in err and "imgfs test CA" in err,
             "the error shows the certificate's subject and issuer", err)
    t.tap.ok("HTTP 400" not in err and "http://" not in err,
             "no fall back to plain HTTP after a failed verification", err)
    m.umount()


@suite.case
def cert_dir_option(t):
    home(t, "home-cert-dir")
    d = os.path.join(t.work, "cert-dir")
    shutil.rmtree(d, ignore_errors=True)
    t.tls.install(t.work, "cert-dir")
    reads_hello(t, Mount(t.ref, t.mnt, os.path.join(t.work, "cache-cert-dir"), ["--cert-dir", d]),
                "--cert-dir DIR, as podman's, trusts DIR's CA and presents its client pair")


@suite.case
def client_certificate_required(t):
    h = home(t, "home-ca-only")
    t.tls.install(os.path.join(h, ".config", "containers", "certs.d"), t.reg.host, client=False)
    m = Mount(t.ref, t.mnt, os.path.join(t.work, "cache-ca-only"))
    print("# " + m.stderr().strip().replace("\n", "\n# "))
    t.tap.ok(not m.ok and t.reg.host in m.stderr(),
             "a registry that wants a client certificate refuses a client without one", m.stderr())
    m.umount()


@suite.case
def key_without_certificate(t):
    h = home(t, "home-stray-key")
    d = t.tls.install(os.path.join(h, ".config", "containers", "certs.d"), t.reg.host)
    os.unlink(os.path.join(d, "client.cert"))
    m = Mount(t.ref, t.mnt, os.path.join(t.work, "cache-stray-key"))
    t.tap.ok(not m.ok and "client.key" in m.stderr() and "client.cert" in m.stderr(),
             "a client key without its certificate is named, as podman does", m.stderr())
    m.umount()


@suite.case
def insecure_registry_skips_verification(t):
    home(t, "home-insecure")
    d = t.tls.install(t.work, "client-pair-only")
    os.unlink(os.path.join(d, "ca.crt"))
    reads_hello(t, Mount(t.ref, t.mnt, os.path.join(t.work, "cache-insecure"),
                         ["--insecure-registry", t.reg.host, "--cert-dir", d]),
                "--insecure-registry HOST: TLS without verification (no CA anywhere)")


@suite.case
def plain_http_loopback(t):
    """A loopback registry that speaks no TLS is still reached: TLS is tried first."""
    home(t, "home-plain")
    plain = Registry(t.work, name="registry-plain")
    t.on_exit(plain.stop)
    push_image(plain, "plain/app", "v1", [(make_tar([Entry("hello", data=CONTENT)]), "gzip")])
    reads_hello(t, Mount(f"{plain.host}/plain/app:v1", t.mnt, os.path.join(t.work, "cache-plain")),
                "a plain-HTTP registry on 127.0.0.1 without any option")


@suite.case
def htpasswd_basic_auth(t):
    """docker-registry's htpasswd (basic) auth behind TLS: credentials from an auth file, or from imgfs login."""
    h = home(t, "home-basic")
    secure = Registry(t.work, tls=t.tls, name="registry-basic", htpasswd=("bob", "b4sic-pa55"))
    t.on_exit(secure.stop)
    push_image(secure, "basic/app", "v1", [(make_tar([Entry("hello", data=CONTENT)]), "gzip")])
    t.tls.install(os.path.join(h, ".config", "containers", "certs.d"), secure.host)
    ref = f"{secure.host}/basic/app:v1"
    m = Mount(ref, t.mnt, os.path.join(t.work, "cache-basic-none"))
    t.tap.ok(not m.ok and "401" in m.stderr() and "no credentials found" in m.stderr(),
             "without credentials: 401, and the error says none were found", m.stderr())
    m.umount()
    auth = os.path.join(t.work, "basic-auth.json")
    os.environ["REGISTRY_AUTH_FILE"] = auth
    try:
        r = subprocess.run([IMGFS, "login", "-u", "bob", "--password-stdin", secure.host], input=b"b4sic-pa55\n",
                           capture_output=True, timeout=60)
        t.tap.ok(r.returncode == 0 and os.path.exists(auth), "imgfs login with basic auth over TLS", r.stderr)
        reads_hello(t, Mount(ref, t.mnt, os.path.join(t.work, "cache-basic")),
                    "a mount with the login's credentials (basic auth behind TLS)")
    finally:
        os.environ.pop("REGISTRY_AUTH_FILE", None)


@suite.case
def https_proxy_as_podman(t):
    """HTTPS_PROXY carries a registry's connections, NO_PROXY exempts it, and a loopback registry never uses it."""
    h = home(t, "home-proxy")
    name = f"registry.test:{t.reg.port}"  # resolves nowhere: only the proxy can reach it
    t.tls.install(os.path.join(h, ".config", "containers", "certs.d"), name)
    t.tls.install(os.path.join(h, ".config", "containers", "certs.d"), t.reg.host)
    proxy = ConnectProxy()
    t.on_exit(proxy.stop)
    os.environ["HTTPS_PROXY"] = proxy.url
    try:
        reads_hello(t, Mount(f"{name}/secure/app:v1", t.mnt, os.path.join(t.work, "cache-proxy")),
                    "HTTPS_PROXY: a registry reached through the proxy's CONNECT tunnel")
        t.tap.ok(name in proxy.targets, "  the proxy carried it", proxy.targets)
        os.environ["NO_PROXY"] = "registry.test"
        m = Mount(f"{name}/secure/app:v1", t.mnt, os.path.join(t.work, "cache-no-proxy"))
        t.tap.ok(not m.ok and "registry.test" in m.stderr(), "NO_PROXY: the registry is reached directly (and "
                 "here cannot be resolved)", m.stderr())
        m.umount()
        del os.environ["NO_PROXY"]
        before = len(proxy.targets)
        reads_hello(t, Mount(t.ref, t.mnt, os.path.join(t.work, "cache-loopback-proxy")),
                    "a registry on 127.0.0.1 is reached directly, as podman does, whatever HTTPS_PROXY says")
        t.tap.ok(len(proxy.targets) == before, "  the proxy saw nothing of it", proxy.targets)
    finally:
        os.environ.pop("HTTPS_PROXY", None)
        os.environ.pop("NO_PROXY", None)


run_file(suite)
