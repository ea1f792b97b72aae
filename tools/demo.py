#!/usr/bin/env python3
"""The main job, shown end to end on loopback: push an image to a local
registry, mount it with imgfs, look around and run a program from it, write
to it through an upper layer, and run it as a container with launch."""

import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from imgfs_test.harness import IMGFS, Registry, is_mounted, push_image, workspace  # noqa: E402
from imgfs_test.images import busybox_layer  # noqa: E402


def show(cmd):
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


with workspace("imgfs-demo-") as work:
    reg = Registry(work)
    try:
        ref = f"{reg.host}/demo/busybox:latest"
        push_image(reg, "demo/busybox", "latest", [(busybox_layer(), "gzip")])
        print(f"pushed {ref} to a docker-registry on {reg.host}")
        mnt = os.path.join(work, "mnt")
        os.makedirs(mnt)
        show([IMGFS, "mount", "--cache", os.path.join(work, "cache"), ref, mnt])
        assert is_mounted(mnt)
        show(["ls", "-l", mnt, os.path.join(mnt, "bin")])
        show(["chroot", mnt, "/bin/sh", "-c", "echo hello from busybox $(busybox | head -1 | cut -d' ' -f2)"])
        show(["df", "-h", mnt])
        show([IMGFS, "umount", mnt])

        upper = os.path.join(work, "upper")
        show([IMGFS, "mount", "--cache", os.path.join(work, "cache"), "--upper", upper, ref, mnt])
        show(["sh", "-c", f"echo written > {mnt}/tmp/note && rm {mnt}/etc/group && ls {mnt}/tmp {mnt}/etc"])
        show(["ls", "-l", os.path.join(upper, "tmp"), os.path.join(upper, "etc")])
        show([IMGFS, "umount", mnt])

        launch = os.path.join(os.path.dirname(os.path.dirname(IMGFS)), "launcher", "launch")
        os.environ.update(LAUNCH_ROOT=os.path.join(work, "launch"), IMGFS_CACHE=os.path.join(work, "cache"))
        show([launch, "run", "--rm", ref, "sh", "-c", "echo hello from a container; id; hostname"])

        if shutil.which("podman"):
            # podman's own storage, with imgfs as its additional layer store.
            store = os.path.join(work, "store")
            os.makedirs(store)
            conf = os.path.join(work, "storage.conf")
            with open(conf, "w") as f:
                f.write(f'[storage]\ndriver = "overlay"\ngraphroot = "{work}/podman"\nrunroot = "{work}/podman-run"\n'
                        f'[storage.options]\nadditionallayerstores = ["{store}:ref"]\n')
            os.environ["CONTAINERS_STORAGE_CONF"] = conf
            show([IMGFS, "store", "--cache", os.path.join(work, "cache"), store])
            show(["podman", "run", "--rm", "--tls-verify=false", "--network", "none", "--ulimit", "nofile=1024:1024",
                  "--ulimit", "nproc=1024:1024", ref, "sh", "-c", "echo hello from podman over imgfs store"])
            show([IMGFS, "stats", store])
            show(["podman", "rmi", "-a"])
            show([IMGFS, "umount", store])
        print("demo finished: the image was mounted, written to and run without being unpacked")
    finally:
        reg.stop()
