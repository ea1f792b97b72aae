#!/usr/bin/env python3
"""Registries that speak TLS, on loopback too: a real docker-registry with a
CA and certificates that the test makes with openssl, trusted the way podman
trusts them (certs.d directories, --cert-dir), never by falling back to
plain HTTP."""

import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from imgfs_test.cases import Suite, run_file  # noqa: E402
from imgfs_test.harness import Entry, Mount, Registry, TlsFiles, make_tar, push_image  # noqa: E402

suite = Suite()

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


run_file(suite)
