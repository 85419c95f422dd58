"""The local cluster of deploy/local/cluster, started by a test: redis-server,
a real Apache Kafka broker (deploy/local/apache-kafka, log on disk), N
fanout-delivery and M fanout-ingest processes on fixed free ports, and nginx
in front, configured from the same template (deploy/local/nginx.conf.in).

Every member can be killed (-9), stopped with SIGTERM and restarted on the
same port (and, for Kafka, the same data), so that fault tests can take
pieces away while clients keep talking to nginx. Everything runs on
127.0.0.1 and is stopped by PID (fanout_test.Proc)."""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from fanout_test import (SOURCE_DIR, STATE_DIR, ApacheKafka, Proc, Redis, eventually, free_port, log,
                         make_jwt, scaled, start_service, wait_port)

SECRET = "e2e-secret-0123456789abcdef-0123456789"
API_KEY = "e2e-key"
TEMPLATE = os.path.join(SOURCE_DIR, "deploy", "local", "nginx.conf.in")


def render_nginx(template, out, values):
    """Writes the template with every @NAME@ replaced by values[NAME]."""
    with open(template) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace("@%s@" % k, v)
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise ValueError("unrendered placeholders in %s: %s" % (template, left))
    with open(out, "w") as f:
        f.write(text)


def http(addr, method, path, body=None, key=API_KEY, timeout=10.0, headers=None):
    """One HTTP request; returns (status, body text, headers dict). Never raises
    for an HTTP error status."""
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request("http://%s%s" % (addr, path), data=data, method=method)
    if key:
        req.add_header("Authorization", "Bearer " + key)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=scaled(timeout)) as r:
            return r.status, r.read().decode("utf-8", "replace"), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace"), dict(e.headers)


def parse_metrics(text):
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, val = line.rpartition(" ")
        try:
            out[name] = float(val)
        except ValueError:
            pass
    return out


class Service:
    """One fanout-ingest or fanout-delivery process on a fixed port: a restart
    comes back where nginx expects it."""

    def __init__(self, binary, name, port, args, env=None):
        self.binary = binary
        self.name = name
        self.port = port
        self.addr = "127.0.0.1:%d" % port
        self.args = list(args)
        self.env = env
        self.proc = None
        self.starts = 0
        self.logpaths = []

    def start(self):
        self.proc = start_service(self.binary, self.name,
                                  ["--listen", self.addr, *self.args], env=self.env)
        self.starts += 1
        self.logpaths.append(self.proc.logpath)
        return self

    def alive(self):
        return self.proc is not None and self.proc.alive()

    @property
    def pid(self):
        return self.proc.pid

    def kill9(self):
        log("kill -9 %s (pid %d)" % (self.name, self.proc.pid))
        self.proc.kill9()

    def sigterm(self):
        """Sends SIGTERM and returns at once (see wait_exit)."""
        log("SIGTERM %s (pid %d)" % (self.name, self.proc.pid))
        self.proc.signal(signal.SIGTERM)

    def wait_exit(self, timeout=30.0):
        return self.proc.wait_exit(timeout)

    def stop(self):
        if self.proc is not None:
            return self.proc.stop(timeout=20)
        return None

    def restart(self):
        if self.alive():
            self.stop()
        log("restarting %s on %s" % (self.name, self.addr))
        return self.start()

    def get(self, path, timeout=5.0):
        return http(self.addr, "GET", path, key=None, timeout=timeout)

    def ready(self):
        try:
            return self.get("/readyz", timeout=2.0)[0] == 200
        except OSError:
            return False

    def metrics(self):
        return parse_metrics(self.get("/metrics")[1])

    def log_text(self):
        try:
            with open(self.proc.logpath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


class Nginx:
    """Debian's nginx, non-daemon, with its own prefix, config, pid, logs and
    temp paths under dir; never the system one."""

    def __init__(self, dirpath, port, delivery_addrs, ingest_addrs):
        self.dir = dirpath
        self.port = port
        self.addr = "127.0.0.1:%d" % port
        os.makedirs(os.path.join(dirpath, "tmp"), exist_ok=True)
        self.conf = os.path.join(dirpath, "nginx.conf")
        render_nginx(TEMPLATE, self.conf, {
            "DIR": dirpath,
            "LISTEN": self.addr,
            "WORKERS": "1",
            "WORKER_CONNECTIONS": "8192",
            # Tests run nginx as one process (no master) so that stopping it by
            # PID stops all of it, also on the SIGKILL cleanup path.
            "USER_LINE": ("user root;\nmaster_process off;" if os.geteuid() == 0
                          else "master_process off;"),
            "DELIVERY_SERVERS": "\n".join(
                "        server %s max_fails=0;" % a for a in delivery_addrs),  # nginx.conf.in says why
            "INGEST_SERVERS": "\n".join(
                "        server %s max_fails=1 fail_timeout=2s;" % a for a in ingest_addrs),
        })
        t = subprocess.run(["nginx", "-t", "-p", dirpath, "-c", self.conf, "-e", "stderr"],
                           capture_output=True, text=True, timeout=30)
        if t.returncode != 0:
            raise RuntimeError("nginx -t failed:\n" + t.stderr)
        self.start()

    def start(self):
        self.proc = Proc("nginx", ["nginx", "-p", self.dir, "-c", self.conf, "-e", "stderr",
                                   "-g", "daemon off;"])
        wait_port("127.0.0.1", self.port, timeout=10)

    def stop(self):
        return self.proc.stop()

    def access_log(self):
        try:
            with open(os.path.join(self.dir, "nginx-access.log")) as f:
                return f.read()
        except OSError:
            return ""


class Cluster:
    """The whole topology. Members: self.redis, self.kafka, self.delivery
    (list of Service, server ids d1..dN), self.ingest (list), self.nginx."""

    def __init__(self, ndelivery=3, ningest=2, partitions=6, delivery_args=(), ingest_args=()):
        t0 = time.time()
        self.dir = tempfile.mkdtemp(prefix="fanout-e2e-")
        self.partitions = partitions
        self.redis = self.kafka = self.nginx = None
        self.delivery, self.ingest = [], []
        try:
            self._start(ndelivery, ningest, delivery_args, ingest_args)
        except BaseException:
            self.stop()
            raise
        log("cluster up in %.1fs: nginx %s, kafka %s, redis %s, delivery %s, ingest %s" % (
            time.time() - t0, self.addr, self.kafka.bootstrap, self.redis.addr,
            " ".join("%s=%s" % (s.server_id, s.addr) for s in self.delivery),
            " ".join(s.addr for s in self.ingest)))

    def _start(self, ndelivery, ningest, delivery_args, ingest_args):
        os.makedirs(os.path.join(self.dir, "redis"))
        self.redis = Redis(datadir=os.path.join(self.dir, "redis"))
        self.kafka = ApacheKafka(partitions=self.partitions,
                                 datadir=os.path.join(self.dir, "kafka"))
        common = ["--redis", self.redis.addr, "--kafka", self.kafka.bootstrap]
        for i in range(ndelivery):
            sid = "d%d" % (i + 1)
            s = Service("fanout-delivery", "delivery-" + sid, free_port(), [
                *common, "--server-id", sid, "--jwt-secret", SECRET,
                # A dead server's partitions move after the session timeout,
                # and its registry entries stop counting after the alive TTL.
                "--session-timeout-ms", "6000", "--alive-ttl-ms", "3000",
                "--drain-timeout-ms", "8000", *delivery_args])
            s.server_id = sid
            self.delivery.append(s)
        for i in range(ningest):
            self.ingest.append(Service("fanout-ingest", "ingest-%d" % (i + 1), free_port(), [
                *common, "--api-keys", API_KEY, *ingest_args]))
        for s in self.delivery + self.ingest:
            s.start()
        self.nginx = Nginx(os.path.join(self.dir, "nginx"), free_port(),
                           [s.addr for s in self.delivery], [s.addr for s in self.ingest])
        self.addr = self.nginx.addr
        self.wait_ready()

    # ---- readiness ---------------------------------------------------------

    def assignment(self):
        """{server id: fanout_delivery_assigned_partitions} of the live
        delivery servers (its users share + every rooms partition), or None
        if one does not answer."""
        out = {}
        for s in self.delivery:
            if s.alive():
                try:
                    out[s.server_id] = int(
                        s.metrics().get("fanout_delivery_assigned_partitions", 0))
                except OSError:
                    return None
        return out

    def balanced(self):
        """Every users partition owned once and, while there are at least as
        many partitions as servers, every live server owning some: the
        consumer group is not half-way through a join."""
        a = self.assignment()
        if not a:
            return False
        users = [n - self.partitions for n in a.values()]
        if min(users) < 0 or sum(users) != self.partitions:
            return False
        return self.partitions < len(a) or min(users) >= 1

    def wait_ready(self, timeout=60.0):
        """Every live service ready, every users partition owned by exactly one
        live delivery server and every rooms partition by each of them, and
        nginx answering."""
        for s in self.ingest + self.delivery:
            if s.alive():
                eventually(s.ready, timeout=timeout, interval=0.2, what="%s ready" % s.name)
        # Stable for a second: a group that is still forming passes through
        # states that look complete.
        def steady():
            if not self.balanced():
                return False
            time.sleep(1.0)
            return self.balanced()
        eventually(steady, timeout=timeout, interval=0.2,
                   what="a balanced consumer group (%s)" % self.assignment())
        eventually(lambda: http(self.addr, "GET", "/nginx-health", key=None)[0] == 200,
                   timeout=timeout, what="nginx")

    # ---- clients -------------------------------------------------------------

    def token(self, user, rooms=None, exp_in=3600):
        return make_jwt(SECRET, user, exp_in=exp_in, rooms=rooms)

    def ws_url(self, user, token, direct=None):
        """Through nginx (?user= picks the server), or straight to one delivery
        server (direct = a Service) to force connections to spread."""
        addr = direct.addr if direct is not None else self.addr
        return "ws://%s/ws?user=%s&token=%s" % (addr, user, token)

    def send(self, user, data, timeout=10.0):
        return http(self.addr, "POST", "/v1/send", {"user": user, "data": data}, timeout=timeout)

    def broadcast(self, room, data, timeout=10.0):
        return http(self.addr, "POST", "/v1/broadcast", {"room": room, "data": data},
                    timeout=timeout)

    def presence(self, user):
        st, body, _ = http(self.addr, "GET", "/v1/presence/" + user)
        return st, (json.loads(body) if st == 200 else body)

    def registry(self, user):
        """ws:connections:{user} as {conn id: server id}."""
        out = self.redis.cli("HGETALL", "ws:connections:" + user).split("\n")
        out = [x for x in out if x != ""]
        return dict(zip(out[0::2], out[1::2]))

    def registry_servers(self, users):
        """Server ids named by the registry entries of users, with counts."""
        count = {}
        for u in users:
            for sid in self.registry(u).values():
                count[sid] = count.get(sid, 0) + 1
        return count

    def alive_key(self, server_id):
        return self.redis.cli("EXISTS", "ws:alive:" + server_id) == "1"

    # ---- members ---------------------------------------------------------------

    def restart_redis(self, down_for=0.0):
        """redis-server stopped (SIGTERM; no persistence: it comes back empty)
        and started again on the same port after down_for seconds."""
        log("stopping redis-server (pid %d)" % self.redis.proc.pid)
        self.redis.stop()
        if down_for:
            time.sleep(down_for)
        self.redis.start()
        log("redis-server back on %s" % self.redis.addr)

    def kill9_kafka(self):
        log("kill -9 the Kafka broker (script pid %d)" % self.kafka.proc.pid)
        self.kafka.kill9()

    def restart_kafka(self):
        """The same port and data directory: the same log comes back."""
        self.kafka.start()
        log("Kafka broker back on %s" % self.kafka.bootstrap)

    def sanitizer_reports(self):
        """Sanitizer findings in the logs of every incarnation of every service."""
        found = []
        for s in self.delivery + self.ingest:
            for path in s.logpaths:
                try:
                    with open(path, "rb") as f:
                        text = f.read().decode("utf-8", "replace")
                except OSError:
                    continue
                for pat in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
                    i = text.find(pat)
                    if i >= 0:
                        found.append("%s (%s): %s" % (s.name, path, text[i:i + 300]))
        return found

    def shutdown_clean(self):
        """Stops every service with SIGTERM and returns the problems: an exit
        status other than 0, or a sanitizer report in any log."""
        problems = []
        for s in self.ingest + self.delivery:
            if s.alive():
                rc = s.stop()
                if rc != 0:
                    problems.append("%s exited %s on SIGTERM; log %s" % (s.name, rc,
                                                                         s.proc.logpath))
        problems += self.sanitizer_reports()
        self.stop()
        return problems

    def stop(self):
        """Stops whatever is running (also after a partial start), keeps the
        broker's and nginx's logs beside the services' (STATE_DIR/logs) and
        removes the cluster's temp dir (FANOUT_E2E_KEEP=1 keeps it)."""
        for s in [self.nginx] + self.ingest + self.delivery + [self.kafka, self.redis]:
            if s is None or (isinstance(s, Service) and not s.alive()):
                continue
            try:
                s.stop()
            except Exception as e:  # keep stopping the rest
                log("stopping %s: %r" % (getattr(s, "name", s), e))
        logs = os.path.join(STATE_DIR, "logs")
        stamp = int(time.time() * 1000)
        for src, name in ((("kafka", "server.log"), "kafka-server"),
                          (("nginx", "nginx-error.log"), "nginx-error"),
                          (("nginx", "nginx-access.log"), "nginx-access")):
            path = os.path.join(self.dir, *src)
            if os.path.exists(path):
                os.makedirs(logs, exist_ok=True)
                shutil.copy(path, os.path.join(logs, "%s-%d.log" % (name, stamp)))
        if os.environ.get("FANOUT_E2E_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)

