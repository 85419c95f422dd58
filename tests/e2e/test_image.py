#!/usr/bin/python3
"""The container image (deploy/Dockerfile, built by deploy/image/build with
podman, cached by the hash of its inputs) runs the system: ingest and
delivery from the image, on the host network, against redis-server and the
embedded broker (fanout-kafka-dev) started on the host on free ports; a
token minted by the image's fanout-gentoken; one send and one broadcast
reach a WebSocket client (python3-websockets). Also: the image runs as a
non-root user, has a HEALTHCHECK that passes on both services, and prints
its size and the services' start time (the figures in README.md).

Needs podman (deploy/install-deps.sh); without it, or when podman cannot run
a container here, the test fails with the reason."""

import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import fanout_test as ft  # noqa: E402
import podman_lib as pl  # noqa: E402

import websockets  # noqa: E402

SECRET = "image-test-secret-0123456789abcdefghij"
API_KEY = "image-test-api-key"
IMAGE = "fanout:latest"
state = {}


def setup_module():
    tag, secs = pl.build_image()
    state["tag"], state["build_s"] = tag, secs
    state["redis"] = ft.Redis()
    state["kafka"] = ft.KafkaDev(partitions=4)


def inspect():
    r = pl.podman("image", "inspect", IMAGE)
    return json.loads(r.stdout)[0]


def test_image_user_healthcheck_size():
    info = inspect()
    cfg = info["Config"]
    user = cfg.get("User", "")
    assert user and user.split(":")[0] not in ("", "0", "root"), "image runs as %r" % user
    hc = (info.get("Config", {}).get("Healthcheck") or info.get("Healthcheck") or {})
    assert "fanout-healthcheck" in " ".join(hc.get("Test", [])), "no HEALTHCHECK: %r" % hc
    r = pl.podman("run", "--rm", "--network", "host", "--entrypoint", "id", IMAGE, "-u")
    assert r.stdout.strip() == "65532", r.stdout
    for b in ("fanout-ingest", "fanout-delivery", "fanout-gentoken"):
        r = pl.podman("run", "--rm", "--network", "host", IMAGE, b, "--help")
        assert "--" in r.stdout + r.stderr, (b, r.stdout, r.stderr)
    size = info["Size"]
    ft.log("FIGURE image %s size %.1f MB (podman image inspect .Size)" % (
        state["tag"], size / 1e6))


def api(addr, path, body):
    req = urllib.request.Request("http://%s%s" % (addr, path), method="POST",
                                 data=json.dumps(body).encode(),
                                 headers={"Authorization": "Bearer " + API_KEY,
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=ft.scaled(10)) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def healthy(pr):
    return pl.podman("healthcheck", "run", pr.container, check=False).returncode == 0


def start(kind, port, extra, env):
    t0 = time.time()
    pr = pl.run_proc("image-" + kind, kind, [IMAGE, "/usr/local/bin/fanout-" + kind,
                                              "--listen", "127.0.0.1:%d" % port, *extra], env=env)
    pr.wait_line(r"^listening=", timeout=60)
    ft.log("FIGURE fanout-%s from the image: listening %.2f s after podman run" % (
        kind, time.time() - t0))
    pr.addr = "127.0.0.1:%d" % port
    return pr


def test_send_and_broadcast_through_the_image():
    redis, kafka = state["redis"], state["kafka"]
    common = ["--redis", redis.addr, "--kafka", kafka.bootstrap, "--log-level", "info"]
    ing = start("ingest", ft.free_port(), common + ["--intake", "false"],
                {"FANOUT_API_KEYS": API_KEY})
    dlv = start("delivery", ft.free_port(), common + ["--server-id", "image-d1"],
                {"FANOUT_JWT_SECRET": SECRET})
    ft.eventually(lambda: healthy(ing) and healthy(dlv), timeout=30, interval=0.5,
                  what="HEALTHCHECK passes on both containers")
    # The token comes from the image's own minter, with the secret from the
    # environment as delivery reads it.
    r = pl.podman("run", "--rm", "--network", "host", "-e", "FANOUT_JWT_SECRET", IMAGE,
                  "fanout-gentoken", "--sub", "alice", "--rooms", "lobby", "--ttl-s", "600",
                  env=dict(pl.ENV, FANOUT_JWT_SECRET=SECRET))
    token = r.stdout.strip()
    assert token.count(".") == 2, r.stdout

    async def client():
        url = "ws://%s/ws?token=%s" % (dlv.addr, token)
        async with websockets.connect(url, open_timeout=ft.scaled(10)) as ws:
            await ws.send(json.dumps({"type": "join", "room": "lobby"}))
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), ft.scaled(10)))
                if m.get("type") == "joined":
                    break
            loop = asyncio.get_running_loop()

            async def wait_for(pred, what, timeout):
                deadline = time.time() + ft.scaled(timeout)
                while time.time() < deadline:
                    try:
                        m = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
                    except asyncio.TimeoutError:
                        continue
                    if pred(m):
                        return m
                raise AssertionError("%s: not received" % what)

            # The users group may still be settling: send until one arrives.
            got = None
            for i in range(20):
                st, body = await loop.run_in_executor(
                    None, api, ing.addr, "/v1/send", {"user": "alice", "data": {"s": i}})
                assert st == 202, (st, body)
                try:
                    got = await wait_for(lambda m: m.get("type") == "message" and
                                         "s" in (m.get("data") or {}), "send", 3)
                    break
                except AssertionError:
                    continue
            assert got is not None, "no send reached the client"
            # The rooms group starts a new partition at "latest": broadcast
            # until one arrives (each try is a new record).
            got = None
            for i in range(20):
                st, body = await loop.run_in_executor(
                    None, api, ing.addr, "/v1/broadcast", {"room": "lobby", "data": {"b": i}})
                assert st == 202, (st, body)
                try:
                    got = await wait_for(lambda m: m.get("room") == "lobby" and
                                         "b" in (m.get("data") or {}), "broadcast", 3)
                    break
                except AssertionError:
                    continue
            assert got is not None, "no broadcast reached the client"
            return got

    m = asyncio.run(client())
    ft.log("broadcast received: %s" % m)
    for pr in (dlv, ing):
        rc = pr.stop(timeout=30)
        assert rc == 0, "%s exited %s\n%s" % (pr.name, rc, pr.log_tail())


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)
