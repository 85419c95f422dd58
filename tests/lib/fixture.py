"""ctest fixtures: `fixture.py start NAME` starts a shared server detached,
waits until it is ready and writes $FANOUT_STATE_DIR/NAME.env (its address and
PID); `fixture.py stop NAME` stops it by that PID (TERM, then KILL).
NAME is redis, kafkadev or apachekafka."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import fanout_test as ft  # noqa: E402


def spawn(name, argv, ready, timeout):
    os.makedirs(os.path.join(ft.STATE_DIR, "logs"), exist_ok=True)
    logpath = os.path.join(ft.STATE_DIR, "logs", "fixture-%s.log" % name)
    outpath = logpath + ".stdout"
    with open(logpath, "wb") as err, open(outpath, "wb") as out:
        p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.time() + ft.scaled(timeout)
    pat = re.compile(ready, re.M)
    while time.time() < deadline:
        for path in (outpath, logpath):
            with open(path, "rb") as f:
                m = pat.search(f.read().decode("utf-8", "replace"))
            if m:
                return p.pid, m
        if p.poll() is not None:
            sys.exit("%s exited with %s; see %s" % (name, p.returncode, logpath))
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    sys.exit("%s not ready in time; see %s" % (name, logpath))


def start(name):
    os.makedirs(ft.STATE_DIR, exist_ok=True)
    if name == "redis":
        port = ft.free_port()
        d = tempfile.mkdtemp(prefix="fanout-redis-")
        pid, _ = spawn(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                              "--dir", d, "--save", "", "--appendonly", "no"],
                       r"Ready to accept connections", 15)
        env = {"FANOUT_REDIS": "127.0.0.1:%d" % port, "DIR": d}
    elif name == "kafkadev":
        pid, m = spawn(name, [ft.find_binary("fanout-kafka-dev"), "--partitions", "4"],
                       r"^bootstrap=(\S+)", 15)
        env = {"FANOUT_KAFKA": m.group(1)}
    elif name == "apachekafka":
        d = tempfile.mkdtemp(prefix="fanout-kafka-")
        script = os.path.join(ft.SOURCE_DIR, "deploy", "local", "apache-kafka")
        pid, m = spawn(name, [script, "--port", "0", "--data", d, "--partitions", "4"],
                       r"^bootstrap=(\S+)", 800)
        env = {"FANOUT_KAFKA": m.group(1), "DIR": d}
    else:
        sys.exit("unknown fixture %s" % name)
    env["PID"] = str(pid)
    with open(os.path.join(ft.STATE_DIR, name + ".env"), "w") as f:
        for k, v in env.items():
            f.write("%s=%s\n" % (k, v))
    print("fixture %s started: %s" % (name, env))


def gone(pid):
    """True once pid has exited (a zombie waiting for init counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def stop(name):
    path = os.path.join(ft.STATE_DIR, name + ".env")
    if not os.path.exists(path):
        print("fixture %s not running" % name)
        return
    env = ft.fixture_env(name)
    pid = int(env["PID"])
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.time() + 30
    while time.time() < deadline:
        if gone(pid):
            break
        time.sleep(0.05)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.unlink(path)
    if env.get("DIR", "").startswith(tempfile.gettempdir()):
        shutil.rmtree(env["DIR"], ignore_errors=True)
    print("fixture %s stopped" % name)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit("usage: fixture.py start|stop redis|kafkadev|apachekafka")
    (start if sys.argv[1] == "start" else stop)(sys.argv[2])
