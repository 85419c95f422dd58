"""podman for the container tests (test_image.py, test_compose.py): the
project's containers.conf, the image built by deploy/image/build (cached:
rebuilt only when its inputs changed), containers named per test run and
removed at exit whatever happened.

No podman, or a podman that cannot run a container here, is a failure with
the reason, never a skip: the image is a deliverable."""

import atexit
import os
import shutil
import subprocess
import time

import fanout_test as ft

CONF = os.path.join(ft.SOURCE_DIR, "deploy", "image", "containers.conf")
ENV = dict(os.environ, CONTAINERS_CONF=os.environ.get("CONTAINERS_CONF", CONF))
PREFIX = "fanout-test-%d-" % os.getpid()
_names = []


def podman(*args, timeout=120, check=True, env=None):
    assert shutil.which("podman"), (
        "podman not installed: deploy/install-deps.sh installs it (Debian's podman, runc)")
    r = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                       env=env or ENV)
    if check:
        assert r.returncode == 0, "podman %s -> %d\n%s%s" % (
            " ".join(args), r.returncode, r.stdout[-2000:], r.stderr[-4000:])
    return r


def build_image():
    """Runs deploy/image/build (a cold build takes minutes, a warm one a
    second); returns (tag, seconds)."""
    t0 = time.time()
    r = subprocess.run([os.path.join(ft.SOURCE_DIR, "deploy", "image", "build")],
                       capture_output=True, text=True, timeout=1500, env=ENV)
    assert r.returncode == 0, "deploy/image/build failed (%d):\n%s" % (
        r.returncode, r.stderr[-6000:])
    tag = r.stdout.strip().splitlines()[-1]
    ft.log("image %s ready in %.1f s" % (tag, time.time() - t0))
    return tag, time.time() - t0


def name(suffix):
    n = PREFIX + suffix
    _names.append(n)
    return n


def run_proc(label, suffix, argv, env=None):
    """A container in the foreground (`podman run --rm`, host network) as a
    ft.Proc: its stdout lines can be waited for, SIGTERM reaches the service
    (podman proxies signals), and it is removed at exit."""
    n = name(suffix)
    cmd = ["podman", "run", "--rm", "--name", n, "--network", "host"]
    for k, v in (env or {}).items():
        cmd += ["-e", k]  # the value from our environment: not in ps
    pr = ft.Proc(label, cmd + argv, env=dict(ENV, **(env or {})))
    pr.container = n
    return pr


def _cleanup():
    for n in _names:
        try:
            subprocess.run(["podman", "rm", "-f", "-t", "2", n], capture_output=True,
                           timeout=60, env=ENV)
        except Exception:
            pass


atexit.register(_cleanup)
