"""Helpers for fanout's integration tests: start real servers as child
processes on free loopback ports, wait for their readiness line with a
deadline, and stop them by PID (TERM, then KILL) whatever happens.

Used by every Python driver under tests/ (run with /usr/bin/python3, which
sees Debian's python3-websockets). Nothing here fakes Redis or Kafka."""

import atexit
import base64
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

SOURCE_DIR = os.environ.get("FANOUT_SOURCE_DIR",
                            os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
BUILD_DIR = os.environ.get("FANOUT_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))
STATE_DIR = os.environ.get("FANOUT_STATE_DIR", os.path.join(BUILD_DIR, "test-state"))
SCALE = float(os.environ.get("FANOUT_TIMEOUT_SCALE", "1"))

_procs = []


def scaled(seconds):
    """A timeout scaled for slow builds (sanitizers)."""
    return seconds * SCALE


def log(*args):
    print("[%s]" % time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_binary(name):
    """Finds an executable built by CMake anywhere in the build tree."""
    for root, _dirs, files in os.walk(BUILD_DIR):
        if name in files:
            path = os.path.join(root, name)
            if os.access(path, os.X_OK):
                return path
    raise FileNotFoundError("%s not found under %s (build first)" % (name, BUILD_DIR))


class Proc:
    """A child process whose stdout lines are collected (and echoed to a log
    file); `wait_line(regex)` waits for a readiness line."""

    def __init__(self, name, argv, env=None, cwd=None, logdir=None, group=False):
        """group=True: the process leads a process group of its own children
        (a launcher script and its JVM, say); SIGKILL from kill9() and the
        exit cleanup then goes to that whole group (by its id), so no child
        outlives the test."""
        self.name = name
        self.group = group
        self.argv = argv
        self.lines = []
        self.cond = threading.Condition()
        logdir = logdir or os.path.join(STATE_DIR, "logs")
        os.makedirs(logdir, exist_ok=True)
        self.logpath = os.path.join(logdir, "%s-%d.log" % (name, int(time.time() * 1000)))
        self.logfile = open(self.logpath, "wb")
        full_env = dict(os.environ)
        if env:
            full_env.update({k: str(v) for k, v in env.items()})
        if _on_embedded_kafka(argv) and "FANOUT_KAFKA_FETCH_WAIT_MS" not in full_env:
            # The embedded broker answers an empty fetch only after
            # fetch.wait.max.ms, even when a record arrives meanwhile: our
            # services' default (500 ms, for a real Kafka) would be latency.
            full_env["FANOUT_KAFKA_FETCH_WAIT_MS"] = "1"
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.logfile,
                                  stdin=subprocess.DEVNULL, env=full_env, cwd=cwd,
                                  start_new_session=True)
        self.pid = self.p.pid
        _procs.append(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.p.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.logfile.write(b"[stdout] " + raw)
            self.logfile.flush()
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_line(self, regex, timeout=10.0):
        """Returns the match of the first stdout line matching regex."""
        pat = re.compile(regex)
        deadline = time.time() + scaled(timeout)
        seen = 0
        with self.cond:
            while True:
                while seen < len(self.lines):
                    m = pat.search(self.lines[seen])
                    seen += 1
                    if m:
                        return m
                if self.p.poll() is not None and seen >= len(self.lines):
                    raise RuntimeError("%s exited (%s) before printing /%s/; log %s:\n%s" % (
                        self.name, self.p.returncode, regex, self.logpath, self.log_tail()))
                left = deadline - time.time()
                if left <= 0:
                    raise TimeoutError("%s did not print /%s/ in time; log %s:\n%s" % (
                        self.name, regex, self.logpath, self.log_tail()))
                self.cond.wait(min(left, 0.2))

    def log_count(self, regex):
        """How many lines of the log file (stderr, and stdout as "[stdout] ...")
        match regex."""
        pat = re.compile(regex.encode() if isinstance(regex, str) else regex)
        try:
            with open(self.logpath, "rb") as f:
                return sum(1 for ln in f if pat.search(ln))
        except OSError:
            return 0

    def log_tail(self, n=40):
        try:
            with open(self.logpath, "rb") as f:
                return b"".join(f.readlines()[-n:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def alive(self):
        return self.p.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def kill9(self):
        if self.group:
            _killpg(self.pid)
            self.group = False  # the group is gone: never signal that id again
        self.signal(signal.SIGKILL)
        self.p.wait()

    def stop(self, timeout=10.0):
        """SIGTERM, then SIGKILL after timeout. Returns the exit status."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.p.wait(scaled(timeout))
            except subprocess.TimeoutExpired:
                log("%s ignored SIGTERM; killing" % self.name)
                os.kill(self.pid, signal.SIGKILL)
                self.p.wait()
        self._reader.join(2)
        if self in _procs:
            _procs.remove(self)
        return self.p.returncode

    def wait_exit(self, timeout):
        return self.p.wait(scaled(timeout))


def _killpg(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _cleanup():
    for pr in list(reversed(_procs)):
        try:
            if getattr(pr, "group", False):
                _killpg(pr.pid)  # also when the leader is gone: its children may not be
            if pr.alive():
                os.kill(pr.pid, signal.SIGKILL)
                pr.p.wait(5)
        except Exception:
            pass


atexit.register(_cleanup)


def _on_term(signum, _frame):
    _cleanup()
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, _on_term)


def wait_port(host, port, timeout=10.0):
    deadline = time.time() + scaled(timeout)
    while time.time() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("nothing listens on %s:%d" % (host, port))


# ---- servers -----------------------------------------------------------------

class Redis:
    """requirepass: start with that password; cli() then authenticates."""

    def __init__(self, port=None, datadir=None, requirepass=None):
        self.port = port or free_port()
        self.dir = datadir or tempfile.mkdtemp(prefix="fanout-redis-")
        self.requirepass = requirepass
        self.start()

    def start(self):
        extra = ["--requirepass", self.requirepass] if self.requirepass else []
        self.proc = Proc("redis", ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                   "--dir", self.dir, "--save", "", "--appendonly", "no",
                                   "--daemonize", "no", "--protected-mode", "no", *extra])
        self.proc.wait_line(r"Ready to accept connections", timeout=10)
        self.addr = "127.0.0.1:%d" % self.port

    def stop(self):
        return self.proc.stop()

    def cli(self, *args):
        env = dict(os.environ)
        if self.requirepass:
            env["REDISCLI_AUTH"] = self.requirepass  # not on the command line
        return subprocess.run(["redis-cli", "-p", str(self.port), "--raw", *args], env=env,
                              capture_output=True, text=True, timeout=10).stdout.strip()


# Bootstrap addresses of embedded brokers (fanout-kafka-dev) this process
# knows: services started against one get --kafka-fetch-wait-ms 1 (Proc).
_embedded_kafka = set()


def _on_embedded_kafka(argv):
    name = os.path.basename(argv[0]) if argv else ""
    if name not in ("fanout-delivery", "fanout-ingest"):
        return False
    for i, a in enumerate(argv):
        v = argv[i + 1] if a == "--kafka" and i + 1 < len(argv) else (
            a[len("--kafka="):] if a.startswith("--kafka=") else None)
        if v is not None:
            return v in _embedded_kafka
    return os.environ.get("FANOUT_KAFKA") in _embedded_kafka


class KafkaDev:
    """The embedded broker (fanout-kafka-dev, librdkafka mock cluster)."""

    def __init__(self, partitions=4, brokers=1, extra=()):
        self.proc = Proc("kafka-dev", [find_binary("fanout-kafka-dev"), "--partitions",
                                       str(partitions), "--brokers", str(brokers), *extra])
        self.bootstrap = self.proc.wait_line(r"^bootstrap=(\S+)", timeout=10).group(1)
        _embedded_kafka.add(self.bootstrap)
        self.partitions = partitions

    def down(self):
        """Every broker down; returns once the broker logged it (the mock
        cluster applies the change before that line)."""
        self._switch(signal.SIGUSR1, r"msg=\"brokers down\"")

    def up(self):
        self._switch(signal.SIGUSR2, r"msg=\"brokers up\"")

    def _switch(self, sig, line):
        before = self.proc.log_count(line)
        self.proc.signal(sig)
        eventually(lambda: self.proc.log_count(line) > before, timeout=10,
                   what="kafka-dev: /%s/" % line)

    def stop(self):
        return self.proc.stop()


class ApacheKafka:
    """A real single-node KRaft broker from deploy/local/apache-kafka."""

    def __init__(self, partitions=4, port=None, datadir=None):
        self.port = port or free_port()
        self.datadir = datadir or tempfile.mkdtemp(prefix="fanout-kafka-")
        self.partitions = partitions
        self.start()

    def start(self):
        script = os.path.join(SOURCE_DIR, "deploy", "local", "apache-kafka")
        self.proc = Proc("apache-kafka", [script, "--port", str(self.port), "--data",
                                          self.datadir, "--partitions", str(self.partitions)],
                         group=True)
        self.bootstrap = self.proc.wait_line(r"^bootstrap=(\S+)", timeout=300).group(1)

    def kill9(self):
        """Kills the JVM itself (the script's child) and the script."""
        subprocess.run(["pkill", "-KILL", "-P", str(self.proc.pid)], check=False)
        self.proc.kill9()

    def stop(self):
        return self.proc.stop(timeout=30)


def fixture_env(name):
    """Reads the address a ctest fixture published (see tests/lib/fixture.py)."""
    path = os.path.join(STATE_DIR, name + ".env")
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            if k:
                out[k] = v
    if name == "kafkadev" and "FANOUT_KAFKA" in out:
        _embedded_kafka.add(out["FANOUT_KAFKA"])
    return out


# ---- our services ------------------------------------------------------------

def start_service(binary, name, args, env=None, wait=r"^listening=(\S+)"):
    pr = Proc(name, [find_binary(binary), *args], env=env)
    m = pr.wait_line(wait, timeout=20)
    pr.addr = m.group(1)
    host, _, port = pr.addr.rpartition(":")
    pr.host, pr.port = host, int(port)
    return pr


def metrics(addr, timeout=5.0):
    """GET http://addr/metrics (Prometheus text, either service) as
    {"name{labels}": value}."""
    with urllib.request.urlopen("http://%s/metrics" % addr, timeout=scaled(timeout)) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(\S+)\s+(\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


# ---- the partitioner (schemas/topics.md), from python3-xxhash ------------------

def partition_of(key, partitions):
    """The partition of a user or room key: XXH32 (seed 0) scaled onto the
    partition range. Debian's python3-xxhash, not the project's code, so
    the check is independent."""
    import xxhash
    if isinstance(key, str):
        key = key.encode()
    return (xxhash.xxh32_intdigest(key, seed=0) * partitions) >> 32


# ---- JWT ---------------------------------------------------------------------

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(secret, sub, exp_in=3600, rooms=None, alg="HS256", extra=None, header=None):
    hdr = header or {"alg": alg, "typ": "JWT"}
    claims = {"sub": sub, "exp": int(time.time()) + exp_in}
    if rooms is not None:
        claims["rooms"] = rooms
    if extra:
        claims.update(extra)
    signing = b64url(json.dumps(hdr).encode()) + "." + b64url(json.dumps(claims).encode())
    if alg == "none":
        return signing + "."
    key = secret.encode() if isinstance(secret, str) else secret
    sig = hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64url(sig)


# ---- a tiny runner -----------------------------------------------------------

class Skip(Exception):
    """Raised by a test that cannot run on this machine (a tool that
    deploy/install-deps.sh cannot provide here). The test is listed as SKIP
    with the reason, and a script with a skip and no failure exits
    SKIP_RETURN_CODE, which ctest shows as "Skipped", never "Passed"."""


SKIP_RETURN_CODE = 77  # tests/CMakeLists.txt gives every Python test this SKIP_RETURN_CODE


def run_tests(namespace, only=None):
    """Runs every test_* function in namespace (definition order); prints one
    line per test and 'N passed, N failed, N skipped'.

    Set-up is not a test: namespace may define setup_module() (start the
    stack the tests share) and teardown_module() (stop it). setup_module runs
    once before the first test; if it raises, no test runs and the script
    fails. teardown_module runs after the last test whatever happened.

    Exit status: 1 if anything failed, if a name in `only` is not a test
    here, or if no test ran at all (a run that checked nothing is not a
    pass); else SKIP_RETURN_CODE if a test raised Skip; else 0."""
    tests = [(n, f) for n, f in namespace.items() if n.startswith("test_") and callable(f)]
    if only:
        unknown = sorted(set(only) - {n for n, _ in tests})
        if unknown:
            print("FAIL no such test: %s" % ", ".join(unknown), flush=True)
            _cleanup()
            sys.exit(1)
        tests = [(n, f) for n, f in tests if n in only]
    if not tests:
        print("FAIL no test to run", flush=True)
        _cleanup()
        sys.exit(1)
    passed = failed = skipped = 0
    setup, teardown = namespace.get("setup_module"), namespace.get("teardown_module")
    try:
        if setup:
            t0 = time.time()
            setup()
            log("set-up done (%.1fs)" % (time.time() - t0))
    except Exception:
        print("FAIL set-up (setup_module): no test ran", flush=True)
        traceback.print_exc()
        failed = len(tests)
        tests = []
    for name, fn in tests:
        t0 = time.time()
        try:
            fn()
            passed += 1
            print("PASS %s (%.1fs)" % (name, time.time() - t0), flush=True)
        except Skip as e:
            skipped += 1
            print("SKIP %s: %s" % (name, e), flush=True)
        except Exception:
            failed += 1
            print("FAIL %s (%.1fs)" % (name, time.time() - t0), flush=True)
            traceback.print_exc()
    if teardown:
        try:
            teardown()
        except Exception:
            failed += 1
            print("FAIL tear-down (teardown_module)", flush=True)
            traceback.print_exc()
    _cleanup()
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped), flush=True)
    sys.exit(1 if failed else SKIP_RETURN_CODE if skipped else 0)


def partitions_spread(counts, total, partitions):
    """counts: the partitions each running server owns. True once they own
    `total` together and, when there are no more servers than `partitions`,
    each owns some: with the eager range assignor the first servers can hold
    all of them until a later one's join revokes everything once more."""
    return sum(counts) == total and (len(counts) > partitions or min(counts, default=0) >= 1)


def eventually(pred, timeout=10.0, interval=0.05, what="condition"):
    deadline = time.time() + scaled(timeout)
    last = None
    while time.time() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))


def joined_reply(m):
    """A `joined` reply without its position (checked to be there): what
    tests compare when they only care that the join worked."""
    assert isinstance(m, dict), m
    if m.get("type") == "joined":
        assert isinstance(m.get("pos"), str) and m["pos"], m
    return {k: v for k, v in m.items() if k in ("type", "room")}


def check_welcome(msg):
    """The first frame of every connection, as the contract says: a
    welcome with the user stream's position. Returns it."""
    assert isinstance(msg, dict) and msg.get("type") == "welcome" and \
        isinstance(msg.get("pos"), str), msg
    return msg


async def skip_welcome(ws):
    """Reads the first frame of a python-websockets connection, which the
    contract says is the welcome, and returns it."""
    import json as _json
    return check_welcome(_json.loads(await ws.recv()))
