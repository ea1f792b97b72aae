#!/usr/bin/env python3
"""A mount outlives the process that serves it: kill -9 of the server under a
running runc container (20 times, at random moments) and imgfs upgrade to a
fresh copy of the binary; the container sees no error, no short read, no
changed inode number, its open files read and write on, and what it wrote is
all there.  A lazy read that waits on a fetch when the server dies completes
with the right bytes."""

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from imgfs_test.cases import Suite, run_file  # noqa: E402
from imgfs_test.harness import (IMGFS, LAUNCH, Entry, Mount, Registry, imgfs_stats, leave_no_containers,  # noqa: E402
                                make_tar, push_image, require_root_and_runc, run)
from imgfs_test.images import busybox_layer, deterministic_bytes  # noqa: E402
from imgfs_test.lazy import push_estargz  # noqa: E402
from imgfs_test.shaper import ShapedLink  # noqa: E402

suite = Suite(needs_root=False)
tap = suite.tap
require_root_and_runc(tap)
ENV = {}
BIG = deterministic_bytes(7, 3 << 20)
LINES = "".join(f"line {i}\n" for i in range(1, 200001)).encode()

# Every iteration: an image file read whole and its inode number checked,
# the next line of an image file held open since the start, an append to
# an upper file held open since the start, a file written and fsynced, and
# the longest time between two iterations, in centiseconds.
WORKLOAD = r"""
exp=$(md5sum < /data/big); ino=$(stat -c %i /data/big)
exec 3< /data/lines; exec 4>> /w/journal
i=0; max=0; read up _ < /proc/uptime; last=${up%.*}${up#*.}
while [ ! -e /w/stop ]; do
  i=$((i+1))
  [ "$(md5sum < /data/big)" = "$exp" ] || echo "BAD md5 $i"
  [ "$(stat -c %i /data/big)" = "$ino" ] || echo "BAD ino $i"
  read -r line <&3 || echo "BAD read $i"
  [ "$line" = "line $i" ] || echo "BAD line $i: $line"
  echo "$i" >&4 || echo "BAD append $i"
  f=/w/f$((i % 16))
  dd if=/dev/zero of=$f bs=4096 count=2 conv=fsync 2>/dev/null || echo "BAD dd $i"
  [ "$(stat -c %s $f)" = 8192 ] || echo "BAD size $i"
  read up _ < /proc/uptime; now=${up%.*}${up#*.}; d=$((now - last)); last=$now
  [ $d -gt $max ] && max=$d
done
echo "DONE $i $max"
"""


def launch(*args, timeout=60):
    return subprocess.run([LAUNCH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, env=ENV)


def server_pid(mnt):
    return int(os.getxattr(mnt, "user.imgfs.pid"))


@suite.setup
def setup(t):
    t.reg = Registry(t.work)
    t.on_exit(t.reg.stop)
    t.root = os.path.join(t.work, "launch-root")
    ENV.update(os.environ, LAUNCH_ROOT=t.root, IMGFS_CACHE=os.path.join(t.work, "cache"))

    t.on_exit(lambda: leave_no_containers(t.root, t.work))
    data = make_tar([Entry("data", "dir"), Entry("data/big", data=BIG), Entry("data/lines", data=LINES),
                     Entry("w", "dir")])
    push_image(t.reg, "takeover/app", "v1", [(busybox_layer(), "gzip"), (data, "gzip")],
               config_extra={"config": {"Env": ["PATH=/bin"]}})
    t.img = f"{t.reg.host}/takeover/app:v1"


def wait_takeover(mnt, old_pid, timeout=10):
    """The pid of the server that followed old_pid, and how long it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            pid = server_pid(mnt)
            if pid != old_pid:
                return pid, time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.01)
    return None, timeout


def run_workload(t, name, disturb):
    """Runs WORKLOAD in a container, calls disturb(rootfs), stops it; its
    output lines, and what is left in its writable layer."""
    r = launch("run", "-d", "--name", name, t.img, "sh", "-c", WORKLOAD)
    if not tap.ok(r.returncode == 0, f"{name}: the container starts", r.stderr):
        return None, None
    cid = r.stdout.decode().strip()
    rootfs = os.path.join(t.root, "containers", cid, "rootfs")
    time.sleep(0.5)
    disturb(rootfs)
    time.sleep(0.5)
    with open(os.path.join(rootfs, "w", "stop"), "w"):
        pass
    waited = launch("wait", name, timeout=60)
    logs = launch("logs", name).stdout.decode().splitlines()
    with open(os.path.join(rootfs, "w", "journal")) as f:
        journal = f.read().split()
    launch("rm", "-f", name)
    tap.ok(waited.returncode == 0 and waited.stdout.decode().strip() == "0", f"{name}: the container exits 0",
           (waited.stdout, waited.stderr))
    return logs, journal


def check_workload(name, logs, journal, what):
    done = [line for line in logs if line.startswith("DONE ")]
    bad = [line for line in logs if line.startswith("BAD")]
    iterations = int(done[0].split()[1]) if done else 0
    pause = int(done[0].split()[2]) / 100 if done else None
    tap.ok(done and not bad and iterations > 20, f"{name}: the container saw no error over {iterations} "
           f"iterations {what}; longest pause it saw: {pause} s", bad[:5] or logs[-5:])
    tap.ok(journal == [str(i) for i in range(1, iterations + 1)],
           f"{name}: every append through the file it held open is in its writable layer, in order",
           (len(journal), iterations))
    return pause


@suite.case
def kill_under_container(t):
    """kill -9 of the server 20 times at random moments under a running container."""
    rng = random.Random(15)
    takeovers, waits = [], []

    def disturb(rootfs):
        for _ in range(20):
            time.sleep(rng.uniform(0.05, 0.4))
            pid = server_pid(rootfs)
            os.kill(pid, signal.SIGKILL)
            new, took = wait_takeover(rootfs, pid)
            waits.append(took)
            if new is None:
                break
        takeovers.append(imgfs_stats(rootfs).get("takeovers"))

    logs, journal = run_workload(t, "killed", disturb)
    if logs is None:
        return
    check_workload("killed", logs, journal, "while its server was killed 20 times")
    tap.ok(takeovers == [20] and max(waits) < 2, f"imgfs stats counts 20 takeovers; each took at most "
           f"{max(waits):.3f} s", (takeovers, waits))


@suite.case
def upgrade_under_container(t):
    """imgfs upgrade to a fresh copy of the binary, three times, with a kill between."""
    copies = []
    for k in range(2):
        path = os.path.join(t.work, f"imgfs-copy-{k}")
        shutil.copy(IMGFS, path)
        copies.append(path)
    served_by = []

    def disturb(rootfs):
        for k, binary in enumerate([copies[0], copies[1], copies[0]]):
            r = run([binary, "upgrade", rootfs], timeout=60)
            pid = server_pid(rootfs)
            served_by.append((r.returncode, os.path.realpath(f"/proc/{pid}/exe"), r.stderr))
            if k == 1:
                os.kill(pid, signal.SIGKILL)
                wait_takeover(rootfs, pid)
                served_by.append((0, os.path.realpath(f"/proc/{server_pid(rootfs)}/exe"), b"after kill"))
            time.sleep(0.3)

    logs, journal = run_workload(t, "upgraded", disturb)
    if logs is None:
        return
    check_workload("upgraded", logs, journal, "while its server was upgraded three times")
    expected = [copies[0], copies[1], copies[1], copies[0]]
    tap.ok([s[0] for s in served_by] == [0] * 4 and [s[1] for s in served_by] == expected,
           "imgfs upgrade hands the mount to the binary that ran it; a server killed after it is "
           "followed by the same binary", served_by)


@suite.case
def killed_during_fetch(t):
    """A lazy read that waits on a slow fetch when the server dies completes
    with the right bytes, from the next server."""
    data = deterministic_bytes(21, 8 << 20)
    push_estargz(t.reg, "takeover/lazy", "v1", [[Entry("big", data=data)]], chunk_size=4 << 20)
    link = ShapedLink(t.reg.port, rtt=0.02, rate=2e6)
    t.on_exit(link.stop)
    mnt = os.path.join(t.work, "lazy")
    m = Mount(f"{link.host}/takeover/lazy:v1", mnt, os.path.join(t.work, "cache-lazy"), ["--prefetch", "none"])
    if not tap.ok(m.ok, "lazy mount through a 2 MB/s link", m.stderr()):
        return
    t.on_exit(m.umount)
    result = {}

    def reader():
        with open(os.path.join(mnt, "big"), "rb") as f:
            f.seek(5 << 20)
            try:
                result["bytes"] = f.read(1 << 20)
            except OSError as e:
                result["error"] = e
    before = link.counters()["requests"]
    th = threading.Thread(target=reader)
    th.start()
    deadline = time.monotonic() + 10
    while link.counters()["requests"] == before and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    pid = server_pid(mnt)
    fetching = th.is_alive()
    os.kill(pid, signal.SIGKILL)
    th.join(60)
    tap.ok(fetching and result.get("bytes") == data[5 << 20:6 << 20],
           "the read that waited on a fetch when the server was killed returns the right bytes after the "
           "takeover", (fetching, result.get("error"), len(result.get("bytes") or b"")))
    tap.ok(imgfs_stats(mnt).get("takeovers") == 1, "and the mount says it was taken over once")


@suite.case
def relative_paths(t):
    """A mount made with relative paths (cache, upper directory) from some
    directory is taken over with the same paths, from that directory."""
    mnt = os.path.join(t.work, "rel-mnt")
    os.makedirs(mnt)
    r = run([IMGFS, "mount", "--cache", "rel-cache", "--upper", "rel-upper", t.img, "rel-mnt"], cwd=t.work)
    if not tap.ok(r.returncode == 0, "mount with relative paths", r.stderr):
        return
    with open(os.path.join(mnt, "w", "kept"), "w") as f:
        f.write("kept\n")
    pid = server_pid(mnt)
    os.kill(pid, signal.SIGKILL)
    new, _ = wait_takeover(mnt, pid)
    with open(os.path.join(mnt, "w", "kept")) as f:
        kept = f.read()
    cwd = os.path.realpath(f"/proc/{new}/cwd") if new else None
    tap.ok(new and kept == "kept\n" and os.path.isfile(os.path.join(t.work, "rel-upper", "w", "kept")),
           "the next server serves the same upper directory and cache", (new, kept, cwd))
    run([IMGFS, "umount", mnt])


@suite.case
def keeper_leaves_with_the_mount(t):
    """imgfs umount ends the server and its keeper; upgrade of a foreground
    mount says why it cannot."""
    mnt = os.path.join(t.work, "plain")
    m = Mount(t.img, mnt, os.path.join(t.work, "cache"))
    if not tap.ok(m.ok, "mount", m.stderr()):
        return
    keeper = imgfs_stats(mnt).get("keeper_pid")
    r = run([IMGFS, "umount", mnt])
    try:
        with open(f"/proc/{keeper}/stat") as f:
            gone = f.read().split()[2] == "Z"
    except OSError:
        gone = True
    tap.ok(r.returncode == 0 and keeper and gone, "imgfs umount returns once the keeper left with the mount",
           r.stderr)
    fg = subprocess.Popen([IMGFS, "mount", "-f", "--cache", os.path.join(t.work, "cache"), t.img, mnt],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(os.path.join(mnt, "data")) and time.monotonic() < deadline:
        time.sleep(0.05)
    r = run([IMGFS, "upgrade", mnt])
    tap.ok(r.returncode == 1 and b"keeper" in r.stderr and b"--foreground" in r.stderr,
           "imgfs upgrade of a foreground mount says it has no keeper", r.stderr)
    run([IMGFS, "umount", mnt])
    fg.wait(10)


run_file(suite)
